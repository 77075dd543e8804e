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
//! Several tokens go through together: every matrix multiplies all of them in one pass over
//! its weights. They may belong to several sequences, each with its own KV cache and
//! position ([`Forward::step`]): a prompt chunk of one (matrix–matrix kernels) next to the
//! single decoded tokens of others (dot kernels), so decoding N sequences streams the
//! weights once, not N times. Every row's arithmetic depends on that row alone (its
//! sequence's cache, its kind), never on what else is in the pass: a sequence batched with
//! others computes exactly what it computes alone.
//!
//! All buffers are sized in [`Forward::new`]; `eval` and `step` allocate nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use spillway_kernels::formats::{BlockQ8_0, QK, f16};
use spillway_kernels::matmul::{ActFormat, Activations, Matrix, matmul_rows};
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
    #[error("{n} tokens in one pass, but this evaluator holds at most {max}")]
    TooManyRows { n: usize, max: usize },
    #[error(
        "a pass names KV cache {cache} twice or out of range, or puts prompt rows after decoded ones"
    )]
    BadChunks { cache: usize },
}

/// How a sequence's rows go through the matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowKind {
    /// Prompt tokens: the matrix–matrix kernels, whatever their number.
    Prompt,
    /// A generated token: the dot kernels.
    Decode,
}

/// One sequence's part of a [`Forward::step`].
#[derive(Clone, Copy, Debug)]
pub struct SeqChunk<'a> {
    /// Its KV cache: an index into the caches given to the step.
    pub cache: usize,
    /// Tokens at the positions following those already in its cache.
    pub tokens: &'a [u32],
    pub kind: RowKind,
    /// Compute the logits of its last token.
    pub logits: bool,
}

/// Where a row of a pass comes from.
#[derive(Clone, Copy, Debug, Default)]
struct RowOf {
    cache: u32,
    pos: u32,
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

/// `y = W x` for the `n` rows of `x`, quantizing `x` for `W` if not done yet; rows
/// `..tiled` through the matrix–matrix kernels, the rest through the dot kernels (or all
/// of them through the matrix–matrix kernels, on paths that decode with them).
fn mm(c: &Compute, w: &Matrix<'_>, input: &mut Inputs, x: &[f32], tiled: usize, y: &mut [f32]) {
    let a = input.get(w.act_format(), c.kernels, x);
    matmul_rows(&c.pool, c.kernels, w, a, tiled, y);
}

/// Scratch space and precomputed tables for evaluating up to `max_batch` tokens at a time.
#[derive(Debug)]
pub struct Forward {
    cfg: ModelConfig,
    n_ctx: usize,
    max_batch: usize,
    max_logit_rows: usize,
    threads: usize,
    /// The cache and position of each row of the current pass.
    rows: Vec<RowOf>,
    /// The rows whose logits the current pass computes.
    logit_rows: Vec<usize>,
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

/// The widths of one token's vectors: the embedding, queries, keys, values, the attention
/// output and the feed-forward hidden layer.
struct Widths {
    e: usize,
    qd: usize,
    kd: usize,
    vd: usize,
    od: usize,
    ff: usize,
}

impl Widths {
    fn of(c: &ModelConfig) -> Widths {
        Widths {
            e: c.n_embd,
            qd: c.n_head * c.head_dim_k,
            kd: c.n_head_kv * c.head_dim_k,
            vd: c.n_head_kv * c.head_dim_v,
            od: c.n_head * c.head_dim_v,
            ff: c.n_ff,
        }
    }
}

/// Rows of logits an evaluator keeps: every row's, or one per sequence.
fn logit_rows(max_batch: usize, max_seqs: usize, all_logits: bool) -> usize {
    let seqs = max_seqs.clamp(1, max_batch);
    if all_logits { max_batch } else { seqs }
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
        max_seqs: usize,
        all_logits: bool,
        threads: usize,
    ) -> usize {
        let c = &w.config;
        let b = max_batch.max(1);
        let Widths {
            e,
            qd,
            kd,
            vd,
            od,
            ff,
        } = Widths::of(c);
        let logit_rows = logit_rows(b, max_seqs, all_logits);
        let floats = b * (3 * e + qd + kd + vd + od + 2 * ff)
            + logit_rows * c.n_vocab
            + threads.max(1) * n_ctx;
        let q8 = (b * qd).div_ceil(QK) * size_of::<BlockQ8_0>();
        let [fx, fa, ff_] = input_formats(w);
        let inputs = fx.iter().map(|f| f.row_bytes(e)).sum::<usize>()
            + fa.iter().map(|f| f.row_bytes(od)).sum::<usize>()
            + ff_.iter().map(|f| f.row_bytes(ff)).sum::<usize>();
        let rope = 2 * 4 * n_ctx * (c.rope.n_dims / 2);
        let tables = b * size_of::<RowOf>() + logit_rows * size_of::<usize>();
        floats * 4 + q8 + inputs * b + rope + tables
    }

    /// Buffers for one sequence of up to `n_ctx` tokens, `max_batch` tokens per pass, on
    /// `threads` threads; `all_logits` keeps room for every token's logits (else only the
    /// last's).
    pub fn new(
        w: &ModelWeights,
        n_ctx: usize,
        max_batch: usize,
        all_logits: bool,
        threads: usize,
    ) -> Forward {
        Forward::for_sequences(w, n_ctx, max_batch, 1, all_logits, threads)
    }

    /// Buffers for passes over up to `max_seqs` sequences ([`Forward::step`]) of up to
    /// `n_ctx` tokens each, `max_batch` tokens per pass in all.
    pub fn for_sequences(
        w: &ModelWeights,
        n_ctx: usize,
        max_batch: usize,
        max_seqs: usize,
        all_logits: bool,
        threads: usize,
    ) -> Forward {
        let c = &w.config;
        let b = max_batch.max(1);
        let Widths {
            e,
            qd,
            kd,
            vd,
            od,
            ff,
        } = Widths::of(c);
        let [fx, fa, ff_] = input_formats(w);
        let in_x = Inputs::new(e, b, fx);
        let in_att = Inputs::new(od, b, fa);
        let in_ff = Inputs::new(ff, b, ff_);
        let max_logit_rows = logit_rows(b, max_seqs, all_logits);
        Forward {
            cfg: c.clone(),
            n_ctx,
            max_batch: b,
            max_logit_rows,
            threads: threads.max(1),
            rows: Vec::with_capacity(b),
            logit_rows: Vec::with_capacity(max_logit_rows),
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
            + self.rows.capacity() * size_of::<RowOf>()
            + self.logit_rows.capacity() * size_of::<usize>()
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
    /// keys and values to it, and returns the logits asked for (`n_vocab` per row). Passes
    /// of several tokens use the matrix–matrix kernels, a single token the dot kernels.
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
        self.check(c, std::slice::from_ref(kv))?;
        if want == LogitsFor::All && tokens.len() > self.max_logit_rows {
            return Err(ForwardError::TooManyLogitRows {
                n: tokens.len(),
                max: self.max_logit_rows,
            });
        }
        self.check_tokens(kv, tokens)?;
        let caches = std::slice::from_mut(kv);
        let chunks = tokens.len().div_ceil(self.max_batch);
        for (i, chunk) in tokens.chunks(self.max_batch).enumerate() {
            let last = i + 1 == chunks;
            let kind = if chunk.len() == 1 {
                RowKind::Decode
            } else {
                RowKind::Prompt
            };
            let seq = [SeqChunk {
                cache: 0,
                tokens: chunk,
                kind,
                logits: last,
            }];
            self.layout(&seq, caches);
            self.logit_rows.clear();
            if last {
                match want {
                    LogitsFor::Last => self.logit_rows.push(chunk.len() - 1),
                    LogitsFor::All => self.logit_rows.extend(0..chunk.len()),
                }
            }
            self.pass(w, caches, &seq, c, want == LogitsFor::All);
        }
        let rows = match want {
            LogitsFor::Last => 1,
            LogitsFor::All => tokens.len(),
        };
        Ok(&mut self.logits[..rows * self.cfg.n_vocab])
    }

    /// One pass over several sequences: each chunk's tokens at the positions following
    /// those already in its cache (`caches[chunk.cache]`, each cache at most once), prompt
    /// chunks before decoded ones. Returns the logits of the last token of every chunk that
    /// asks for them, in chunk order (`n_vocab` each).
    ///
    /// A chunk's results do not depend on the other chunks: a sequence stepped with others
    /// produces bit for bit what it produces stepped alone.
    pub fn step<C>(
        &mut self,
        w: &ModelWeights,
        caches: &mut [C],
        chunks: &[SeqChunk<'_>],
        c: &Compute,
    ) -> Result<&mut [f32], ForwardError>
    where
        C: AsRef<KvCache> + AsMut<KvCache> + Sync,
    {
        if chunks.iter().all(|ch| ch.tokens.is_empty()) {
            return Err(ForwardError::Empty);
        }
        self.check(c, caches)?;
        let n: usize = chunks.iter().map(|ch| ch.tokens.len()).sum();
        if n > self.max_batch {
            return Err(ForwardError::TooManyRows {
                n,
                max: self.max_batch,
            });
        }
        let with_logits = chunks.iter().filter(|ch| ch.logits).count();
        if with_logits > self.max_logit_rows {
            return Err(ForwardError::TooManyLogitRows {
                n: with_logits,
                max: self.max_logit_rows,
            });
        }
        for (i, ch) in chunks.iter().enumerate() {
            let bad = || ForwardError::BadChunks { cache: ch.cache };
            let kv = caches.get(ch.cache).ok_or_else(bad)?.as_ref();
            if ch.tokens.is_empty()
                || chunks[..i].iter().any(|o| o.cache == ch.cache)
                || (ch.kind == RowKind::Prompt
                    && chunks[..i].iter().any(|o| o.kind == RowKind::Decode))
            {
                return Err(bad());
            }
            self.check_tokens(kv, ch.tokens)?;
        }
        self.layout(chunks, caches);
        self.logit_rows.clear();
        let mut row = 0;
        for ch in chunks {
            row += ch.tokens.len();
            if ch.logits {
                self.logit_rows.push(row - 1);
            }
        }
        self.pass(w, caches, chunks, c, false);
        Ok(&mut self.logits[..with_logits * self.cfg.n_vocab])
    }

    /// What every pass needs of the caches and the thread pool.
    fn check<C: AsRef<KvCache>>(&self, c: &Compute, caches: &[C]) -> Result<(), ForwardError> {
        if caches.iter().any(|kv| kv.as_ref().capacity() > self.n_ctx) {
            return Err(ForwardError::CacheMismatch);
        }
        if c.pool.threads() > self.threads {
            return Err(ForwardError::ThreadMismatch {
                pool: c.pool.threads(),
                sized: self.threads,
            });
        }
        Ok(())
    }

    /// Room in `kv` for `tokens`, and ids inside the vocabulary.
    fn check_tokens(&self, kv: &KvCache, tokens: &[u32]) -> Result<(), ForwardError> {
        let needed = kv.len() + tokens.len();
        if needed > kv.capacity() {
            return Err(ForwardError::ContextFull {
                needed,
                capacity: kv.capacity(),
            });
        }
        self.check_ids(tokens)
    }

    /// Every id inside the vocabulary.
    pub fn check_ids(&self, tokens: &[u32]) -> Result<(), ForwardError> {
        match tokens.iter().find(|&&id| id as usize >= self.cfg.n_vocab) {
            Some(&id) => Err(ForwardError::BadToken {
                id,
                n_vocab: self.cfg.n_vocab,
            }),
            None => Ok(()),
        }
    }

    /// Fills the row table: each chunk's rows in order, at the positions after its cache's.
    fn layout<C: AsRef<KvCache>>(&mut self, chunks: &[SeqChunk<'_>], caches: &[C]) {
        self.rows.clear();
        for ch in chunks {
            let pos0 = caches[ch.cache].as_ref().len();
            self.rows.extend((0..ch.tokens.len()).map(|t| RowOf {
                cache: ch.cache as u32,
                pos: (pos0 + t) as u32,
            }));
        }
    }

    /// One pass of the rows laid out in `self.rows` (checked: at most `max_batch`, room in
    /// every cache), computing the logits of `self.logit_rows`, tiled if `tiled_logits`.
    fn pass<C>(
        &mut self,
        w: &ModelWeights,
        caches: &mut [C],
        chunks: &[SeqChunk<'_>],
        c: &Compute,
        tiled_logits: bool,
    ) where
        C: AsRef<KvCache> + AsMut<KvCache> + Sync,
    {
        let cfg = &self.cfg;
        let k = c.kernels;
        let n = self.rows.len();
        // Prompt rows come first: they go through the matrix–matrix kernels.
        let tiled: usize = chunks
            .iter()
            .filter(|ch| ch.kind == RowKind::Prompt)
            .map(|ch| ch.tokens.len())
            .sum();
        let (hd_k, hd_v) = (cfg.head_dim_k, cfg.head_dim_v);
        let (n_head, n_kv) = (cfg.n_head, cfg.n_head_kv);
        let Widths {
            e,
            qd,
            kd,
            vd,
            od,
            ff,
        } = Widths::of(cfg);
        let group = n_head / n_kv;
        let scale = 1.0 / (hd_k as f32).sqrt();
        let q8_keys = caches
            .first()
            .is_some_and(|kv| kv.as_ref().kv_type() == KvType::Q8_0);

        // x = token_embd[id]
        let embd = w.matrix(&w.token_embd);
        let ids = chunks.iter().flat_map(|ch| ch.tokens);
        for (t, &id) in ids.enumerate() {
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
                tiled,
                &mut self.q[..n * qd],
            );
            mm(
                c,
                &w.matrix(&lw.wk),
                &mut self.in_x,
                xb,
                tiled,
                &mut self.k[..n * kd],
            );
            mm(
                c,
                &w.matrix(&lw.wv),
                &mut self.in_x,
                xb,
                tiled,
                &mut self.v[..n * vd],
            );

            for (t, row) in self.rows.iter().enumerate() {
                let pos = row.pos as usize;
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
                caches[row.cache as usize].as_mut().write(
                    l,
                    pos,
                    kk,
                    &self.v[t * vd..(t + 1) * vd],
                );
            }
            if q8_keys {
                k.quantize_q8_0(&self.q[..n * qd], &mut self.q8[..n * qd / QK]);
            }

            // Every (row, head) pair attends over its own sequence's positions 0..=its own,
            // on any thread.
            let (caches_ref, rows, q_all, q8_all) = (&*caches, &self.rows, &self.q, &self.q8);
            c.pool.for_each_chunk(
                &mut self.att[..n * od],
                hd_v,
                &mut self.scores,
                self.n_ctx,
                |idx, out, sc| {
                    let (t, h) = (idx / n_head, idx % n_head);
                    let RowOf { cache, pos } = rows[t];
                    let kv_ref = caches_ref[cache as usize].as_ref();
                    let (pos, g) = (pos as usize, h / group);
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
                tiled,
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
                tiled,
                &mut self.hb[..n * ff],
            );
            mm(
                c,
                &w.matrix(&lw.w_up),
                &mut self.in_x,
                xb,
                tiled,
                &mut self.hb2[..n * ff],
            );
            k.silu_mul(&mut self.hb[..n * ff], &self.hb2[..n * ff]);
            self.in_ff.invalidate();
            mm(
                c,
                &w.matrix(&lw.w_down),
                &mut self.in_ff,
                &self.hb[..n * ff],
                tiled,
                &mut self.xb2[..n * e],
            );
            ops::add_assign(&mut self.x[..n * e], &self.xb2[..n * e]);
        }
        for ch in chunks {
            let kv = caches[ch.cache].as_mut();
            kv.set_len(kv.len() + ch.tokens.len());
        }

        // ---- logits = Wout (rmsnorm(x) * output_norm), for the rows asked
        let rows = self.logit_rows.len();
        if rows == 0 {
            return;
        }
        for (r, &t) in self.logit_rows.iter().enumerate() {
            k.rmsnorm(
                &self.x[t * e..(t + 1) * e],
                &w.output_norm,
                cfg.rms_eps,
                &mut self.xb[r * e..(r + 1) * e],
            );
        }
        self.in_x.invalidate();
        let v = cfg.n_vocab;
        let tiled = if tiled_logits && rows > 1 { rows } else { 0 };
        mm(
            c,
            &w.matrix(&w.output),
            &mut self.in_x,
            &self.xb[..rows * e],
            tiled,
            &mut self.logits[..rows * v],
        );
    }
}

impl AsRef<KvCache> for KvCache {
    fn as_ref(&self) -> &KvCache {
        self
    }
}

impl AsMut<KvCache> for KvCache {
    fn as_mut(&mut self) -> &mut KvCache {
        self
    }
}
