//! The Ministral 3 forward pass, top to bottom, as `docs/ministral3.md` states it:
//!
//! ```text
//! x = token_embd[id]
//! for each layer:
//!     h = rmsnorm(x) * attn_norm
//!     q, k, v = Wq h, Wk h, Wv h;  rope(q, k, pos);  q *= temperature(pos)
//!     per head: softmax(q·K / sqrt(d)) · V over the cache (GQA: kv head = head / group)
//!     x += Wo heads
//!     h = rmsnorm(x) * ffn_norm
//!     x += Wdown(silu(Wgate h) * Wup h)
//! logits = Wout (rmsnorm(x) * output_norm)
//! ```
//!
//! Several tokens go through together (prefill): every matrix multiplies all of them in one
//! pass over its weights (matrix–matrix kernels); one token at a time is decode (matrix–vector).
//! All buffers are sized in [`Forward::new`]; `eval` allocates nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use spillway_kernels::formats::{BlockQ8_0, QK, f16};
use spillway_kernels::matmul::{ActFormat, Activations, Matrix, matmul};
use spillway_kernels::ops::{self, RopeTable, attention_temperature};
use spillway_kernels::{Kernels, ThreadPool};

use super::config::ModelConfig;

use super::kv::{KvCache, RowRef};
use super::memory::KvType;
use super::weights::ModelWeights;

/// Threads and kernels a forward pass runs on.
#[derive(Debug)]
pub struct Compute {
    pub pool: ThreadPool,
    pub kernels: &'static Kernels,
    /// Transformer layers evaluated so far (all calls): a sign of life during a long
    /// prompt, which can take minutes on a small board before its first token (the
    /// service's watchdog reads it).
    pub layers_done: Arc<AtomicU64>,
}

impl Compute {
    pub fn new(pool: ThreadPool, kernels: &'static Kernels) -> Compute {
        Compute {
            pool,
            kernels,
            layers_done: Arc::default(),
        }
    }
}

/// Which positions' logits to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsFor {
    /// The last token's only (generation).
    Last,
    /// Every token's (scoring, tests); needs a [`Forward`] built with `all_logits`.
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    #[error("token id {id} is outside the vocabulary (0..{n_vocab})")]
    BadToken { id: u32, n_vocab: usize },
    #[error("context full: {needed} positions needed, the cache holds {capacity}")]
    ContextFull { needed: usize, capacity: usize },
    #[error("no tokens to evaluate")]
    Empty,
    #[error("{n} tokens with every position's logits, but this evaluator holds at most {max}")]
    TooManyLogitRows { n: usize, max: usize },
    #[error("the KV cache was made for another context size or model")]
    CacheMismatch,
    #[error("the thread pool has {pool} threads; this evaluator was sized for {sized}")]
    ThreadMismatch { pool: usize, sized: usize },
}

/// One input vector (per token) quantized, lazily and once, into each activation format
/// the matrices that read it need.
#[derive(Debug)]
struct Inputs {
    acts: [Option<Activations>; 3],
    fresh: [bool; 3],
}

fn slot(f: ActFormat) -> usize {
    match f {
        ActFormat::F32 => 0,
        ActFormat::Q8_0 => 1,
        ActFormat::Q8K => 2,
    }
}

impl Inputs {
    fn new(cols: usize, rows: usize, formats: impl IntoIterator<Item = ActFormat>) -> Inputs {
        let mut acts = [None, None, None];
        for f in formats {
            acts[slot(f)].get_or_insert_with(|| Activations::new(f, cols, rows));
        }
        Inputs {
            acts,
            fresh: [false; 3],
        }
    }

    /// The input changed: every format must be re-made from it.
    fn invalidate(&mut self) {
        self.fresh = [false; 3];
    }

    fn get(&mut self, f: ActFormat, kernels: &Kernels, x: &[f32]) -> &Activations {
        let i = slot(f);
        let a = self.acts[i]
            .as_mut()
            .expect("formats were collected from the model's matrices");
        if !self.fresh[i] {
            a.set(kernels, x);
            self.fresh[i] = true;
        }
        a
    }

    fn bytes(&self) -> usize {
        self.acts.iter().flatten().map(|a| a.footprint()).sum()
    }
}

/// `y = W x` for the `n` rows of `x`, quantizing `x` for `W` if not done yet.
fn mm(c: &Compute, w: &Matrix<'_>, input: &mut Inputs, x: &[f32], y: &mut [f32]) {
    let a = input.get(w.act_format(), c.kernels, x);
    matmul(&c.pool, c.kernels, w, a, y);
}

/// Scratch space and precomputed tables for evaluating up to `max_batch` tokens at a time.
#[derive(Debug)]
pub struct Forward {
    cfg: ModelConfig,
    n_ctx: usize,
    max_batch: usize,
    max_logit_rows: usize,
    threads: usize,
    x: Vec<f32>,
    xb: Vec<f32>,
    xb2: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    hb: Vec<f32>,
    hb2: Vec<f32>,
    logits: Vec<f32>,
    in_x: Inputs,
    in_att: Inputs,
    in_ff: Inputs,
    /// Attention scores, `n_ctx` per thread.
    scores: Vec<f32>,
    /// Queries quantized for a Q8_0 key cache.
    q8: Vec<BlockQ8_0>,
    rope: RopeTable,
}

/// The activation formats each input needs: (x into wq/wk/wv/gate/up/output, attention
/// output into wo, feed-forward into w_down).
fn input_formats(w: &ModelWeights) -> [Vec<ActFormat>; 3] {
    let fmt = |s| w.matrix(s).act_format();
    let mut x: Vec<ActFormat> = w
        .layers
        .iter()
        .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.w_gate, &l.w_up])
        .chain([&w.output])
        .map(fmt)
        .collect();
    let mut att: Vec<ActFormat> = w.layers.iter().map(|l| fmt(&l.wo)).collect();
    let mut ff: Vec<ActFormat> = w.layers.iter().map(|l| fmt(&l.w_down)).collect();
    for v in [&mut x, &mut att, &mut ff] {
        v.sort_by_key(|&f| slot(f));
        v.dedup();
    }
    [x, att, ff]
}

impl Forward {
    /// Bytes [`Forward::new`] would allocate with the same arguments (for memory plans made
    /// before allocating anything).
    pub fn estimate_bytes(
        w: &ModelWeights,
        n_ctx: usize,
        max_batch: usize,
        all_logits: bool,
        threads: usize,
    ) -> usize {
        let c = &w.config;
        let b = max_batch.max(1);
        let (e, qd, kd, vd, od, ff) = (
            c.n_embd,
            c.n_head * c.head_dim_k,
            c.n_head_kv * c.head_dim_k,
            c.n_head_kv * c.head_dim_v,
            c.n_head * c.head_dim_v,
            c.n_ff,
        );
        let logit_rows = if all_logits { b } else { 1 };
        let floats = b * (3 * e + qd + kd + vd + od + 2 * ff)
            + logit_rows * c.n_vocab
            + threads.max(1) * n_ctx;
        let q8 = (b * qd).div_ceil(QK) * size_of::<BlockQ8_0>();
        let [fx, fa, ff_] = input_formats(w);
        let inputs = fx.iter().map(|f| f.row_bytes(e)).sum::<usize>()
            + fa.iter().map(|f| f.row_bytes(od)).sum::<usize>()
            + ff_.iter().map(|f| f.row_bytes(ff)).sum::<usize>();
        let rope = 2 * 4 * n_ctx * (c.rope.n_dims / 2);
        floats * 4 + q8 + inputs * b + rope
    }

    /// Buffers for contexts up to `n_ctx` tokens, `max_batch` tokens per pass, on `threads`
    /// threads; `all_logits` keeps room for every token's logits (else only the last's).
    pub fn new(
        w: &ModelWeights,
        n_ctx: usize,
        max_batch: usize,
        all_logits: bool,
        threads: usize,
    ) -> Forward {
        let c = &w.config;
        let b = max_batch.max(1);
        let (e, qd, kd, vd, od, ff) = (
            c.n_embd,
            c.n_head * c.head_dim_k,
            c.n_head_kv * c.head_dim_k,
            c.n_head_kv * c.head_dim_v,
            c.n_head * c.head_dim_v,
            c.n_ff,
        );
        let [fx, fa, ff_] = input_formats(w);
        let in_x = Inputs::new(e, b, fx);
        let in_att = Inputs::new(od, b, fa);
        let in_ff = Inputs::new(ff, b, ff_);
        let max_logit_rows = if all_logits { b } else { 1 };
        Forward {
            cfg: c.clone(),
            n_ctx,
            max_batch: b,
            max_logit_rows,
            threads: threads.max(1),
            x: vec![0.0; b * e],
            xb: vec![0.0; b * e],
            xb2: vec![0.0; b * e],
            q: vec![0.0; b * qd],
            k: vec![0.0; b * kd],
            v: vec![0.0; b * vd],
            att: vec![0.0; b * od],
            hb: vec![0.0; b * ff],
            hb2: vec![0.0; b * ff],
            logits: vec![0.0; max_logit_rows * c.n_vocab],
            in_x,
            in_att,
            in_ff,
            scores: vec![0.0; threads.max(1) * n_ctx],
            q8: vec![
                BlockQ8_0 {
                    d: f16::ZERO,
                    qs: [0; QK],
                };
                (b * qd).div_ceil(QK)
            ],
            rope: RopeTable::new(&c.rope, n_ctx as u32),
        }
    }

    /// Bytes of scratch this evaluator holds.
    pub fn scratch_bytes(&self) -> usize {
        let f = [
            &self.x,
            &self.xb,
            &self.xb2,
            &self.q,
            &self.k,
            &self.v,
            &self.att,
            &self.hb,
            &self.hb2,
            &self.logits,
            &self.scores,
        ]
        .iter()
        .map(|v| v.len() * 4)
        .sum::<usize>();
        f + self.q8.len() * size_of::<BlockQ8_0>()
            + self.in_x.bytes()
            + self.in_att.bytes()
            + self.in_ff.bytes()
            + 2 * 4 * self.rope.len() * (self.cfg.rope.n_dims / 2)
    }

    /// Tokens per pass.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Evaluates `tokens` at the positions following those already in `kv`, appends their
    /// keys and values to it, and returns the logits asked for (`n_vocab` per row).
    pub fn eval(
        &mut self,
        w: &ModelWeights,
        kv: &mut KvCache,
        tokens: &[u32],
        want: LogitsFor,
        c: &Compute,
    ) -> Result<&mut [f32], ForwardError> {
        if tokens.is_empty() {
            return Err(ForwardError::Empty);
        }
        if kv.capacity() > self.n_ctx {
            return Err(ForwardError::CacheMismatch);
        }
        if c.pool.threads() > self.threads {
            return Err(ForwardError::ThreadMismatch {
                pool: c.pool.threads(),
                sized: self.threads,
            });
        }
        if want == LogitsFor::All && tokens.len() > self.max_logit_rows {
            return Err(ForwardError::TooManyLogitRows {
                n: tokens.len(),
                max: self.max_logit_rows,
            });
        }
        let needed = kv.len() + tokens.len();
        if needed > kv.capacity() {
            return Err(ForwardError::ContextFull {
                needed,
                capacity: kv.capacity(),
            });
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= self.cfg.n_vocab) {
            return Err(ForwardError::BadToken {
                id,
                n_vocab: self.cfg.n_vocab,
            });
        }
        let chunks = tokens.len().div_ceil(self.max_batch);
        for (i, chunk) in tokens.chunks(self.max_batch).enumerate() {
            let last = i + 1 == chunks;
            self.pass(w, kv, chunk, last.then_some(want), c);
        }
        let rows = match want {
            LogitsFor::Last => 1,
            LogitsFor::All => tokens.len(),
        };
        Ok(&mut self.logits[..rows * self.cfg.n_vocab])
    }

    /// One pass of `n <= max_batch` tokens; computes logits if `want` is set.
    fn pass(
        &mut self,
        w: &ModelWeights,
        kv: &mut KvCache,
        tokens: &[u32],
        want: Option<LogitsFor>,
        c: &Compute,
    ) {
        let cfg = &self.cfg;
        let k = c.kernels;
        let n = tokens.len();
        let pos0 = kv.len();
        let (e, hd_k, hd_v) = (cfg.n_embd, cfg.head_dim_k, cfg.head_dim_v);
        let (n_head, n_kv) = (cfg.n_head, cfg.n_head_kv);
        let (qd, kd, vd, od, ff) = (
            n_head * hd_k,
            n_kv * hd_k,
            n_kv * hd_v,
            n_head * hd_v,
            cfg.n_ff,
        );
        let group = n_head / n_kv;
        let scale = 1.0 / (hd_k as f32).sqrt();

        // x = token_embd[id]
        let embd = w.matrix(&w.token_embd);
        for (t, &id) in tokens.iter().enumerate() {
            embd.dequantize_row(id as usize, &mut self.x[t * e..(t + 1) * e]);
        }

        for (l, lw) in w.layers.iter().enumerate() {
            c.layers_done.fetch_add(1, Ordering::Relaxed);
            // ---- attention
            for t in 0..n {
                let r = t * e..(t + 1) * e;
                k.rmsnorm(
                    &self.x[r.clone()],
                    &lw.attn_norm,
                    cfg.rms_eps,
                    &mut self.xb[r],
                );
            }
            self.in_x.invalidate();
            let xb = &self.xb[..n * e];
            mm(
                c,
                &w.matrix(&lw.wq),
                &mut self.in_x,
                xb,
                &mut self.q[..n * qd],
            );
            mm(
                c,
                &w.matrix(&lw.wk),
                &mut self.in_x,
                xb,
                &mut self.k[..n * kd],
            );
            mm(
                c,
                &w.matrix(&lw.wv),
                &mut self.in_x,
                xb,
                &mut self.v[..n * vd],
            );

            for t in 0..n {
                let pos = pos0 + t;
                let q = &mut self.q[t * qd..(t + 1) * qd];
                let kk = &mut self.k[t * kd..(t + 1) * kd];
                self.rope.apply(q, hd_k, pos);
                self.rope.apply(kk, hd_k, pos);
                if let Some(temp) = cfg.temperature {
                    ops::scale(
                        q,
                        attention_temperature(pos as u32, temp.original_context, temp.scale),
                    );
                }
                kv.write(l, pos, kk, &self.v[t * vd..(t + 1) * vd]);
            }
            if kv.kv_type() == KvType::Q8_0 {
                k.quantize_q8_0(&self.q[..n * qd], &mut self.q8[..n * qd / QK]);
            }

            // Every (token, head) pair attends over positions 0..=its own, on any thread.
            let (kv_ref, q_all, q8_all) = (&*kv, &self.q, &self.q8);
            c.pool.for_each_chunk(
                &mut self.att[..n * od],
                hd_v,
                &mut self.scores,
                self.n_ctx,
                |idx, out, sc| {
                    let (t, h) = (idx / n_head, idx % n_head);
                    let (pos, g) = (pos0 + t, h / group);
                    let s = &mut sc[..=pos];
                    let qh = &q_all[t * qd + h * hd_k..t * qd + (h + 1) * hd_k];
                    let q8h = &q8_all[(t * qd + h * hd_k) / QK..(t * qd + (h + 1) * hd_k) / QK];
                    for (i, si) in s.iter_mut().enumerate() {
                        *si = scale
                            * match kv_ref.key(l, i, g, hd_k) {
                                RowRef::F16(key) => k.dot_f16(key, qh),
                                RowRef::Q8_0(key) => k.dot_q8_0(key, q8h),
                            };
                    }
                    k.softmax(s);
                    out.fill(0.0);
                    for (i, &a) in s.iter().enumerate() {
                        match kv_ref.value(l, i, g, hd_v) {
                            RowRef::F16(val) => k.axpy_f16(a, val, out),
                            RowRef::Q8_0(val) => k.axpy_q8_0(a, val, out),
                        }
                    }
                },
            );

            self.in_att.invalidate();
            mm(
                c,
                &w.matrix(&lw.wo),
                &mut self.in_att,
                &self.att[..n * od],
                &mut self.xb2[..n * e],
            );
            ops::add_assign(&mut self.x[..n * e], &self.xb2[..n * e]);

            // ---- feed-forward (SwiGLU)
            for t in 0..n {
                let r = t * e..(t + 1) * e;
                k.rmsnorm(
                    &self.x[r.clone()],
                    &lw.ffn_norm,
                    cfg.rms_eps,
                    &mut self.xb[r],
                );
            }
            self.in_x.invalidate();
            let xb = &self.xb[..n * e];
            mm(
                c,
                &w.matrix(&lw.w_gate),
                &mut self.in_x,
                xb,
                &mut self.hb[..n * ff],
            );
            mm(
                c,
                &w.matrix(&lw.w_up),
                &mut self.in_x,
                xb,
                &mut self.hb2[..n * ff],
            );
            k.silu_mul(&mut self.hb[..n * ff], &self.hb2[..n * ff]);
            self.in_ff.invalidate();
            mm(
                c,
                &w.matrix(&lw.w_down),
                &mut self.in_ff,
                &self.hb[..n * ff],
                &mut self.xb2[..n * e],
            );
            ops::add_assign(&mut self.x[..n * e], &self.xb2[..n * e]);
        }
        kv.set_len(pos0 + n);

        // ---- logits = Wout (rmsnorm(x) * output_norm)
        let Some(want) = want else { return };
        let first = match want {
            LogitsFor::Last => n - 1,
            LogitsFor::All => 0,
        };
        let rows = n - first;
        for (r, t) in (first..n).enumerate() {
            k.rmsnorm(
                &self.x[t * e..(t + 1) * e],
                &w.output_norm,
                cfg.rms_eps,
                &mut self.xb[r * e..(r + 1) * e],
            );
        }
        self.in_x.invalidate();
        let v = cfg.n_vocab;
        mm(
            c,
            &w.matrix(&w.output),
            &mut self.in_x,
            &self.xb[..rows * e],
            &mut self.logits[..rows * v],
        );
    }
}
