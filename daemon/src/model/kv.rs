//! The KV cache: every layer's keys and values for each position of one sequence, stored
//! as f16 (default, what llama.cpp stores) or Q8_0 (half the memory). Allocated once, for a
//! fixed number of positions, when a session is created; nothing grows afterwards.

use spillway_kernels::formats::{BlockQ8_0, QK, f16, quantize_row_q8_0};

use super::config::ModelConfig;
use super::memory::KvType;

/// One layer's keys or values: `n_ctx` rows of `dim` values.
#[derive(Clone, Debug)]
enum Rows {
    F16(Vec<f16>),
    Q8_0(Vec<BlockQ8_0>),
}

/// A borrowed row (or part of one: a head).
#[derive(Clone, Copy, Debug)]
pub enum RowRef<'a> {
    F16(&'a [f16]),
    Q8_0(&'a [BlockQ8_0]),
}

impl Rows {
    fn new(ty: KvType, n_ctx: usize, dim: usize) -> Rows {
        match ty {
            KvType::F16 => Rows::F16(vec![f16::ZERO; n_ctx * dim]),
            KvType::Q8_0 => Rows::Q8_0(vec![
                BlockQ8_0 {
                    d: f16::ZERO,
                    qs: [0; QK],
                };
                n_ctx * dim / QK
            ]),
        }
    }

    fn write(&mut self, pos: usize, values: &[f32]) {
        let dim = values.len();
        match self {
            Rows::F16(v) => {
                for (o, &x) in v[pos * dim..(pos + 1) * dim].iter_mut().zip(values) {
                    *o = f16::from_f32(x);
                }
            }
            Rows::Q8_0(v) => {
                quantize_row_q8_0(values, &mut v[pos * dim / QK..(pos + 1) * dim / QK])
            }
        }
    }

    /// Values `start..start + len` of row `pos` (`dim` values per row).
    fn part(&self, pos: usize, dim: usize, start: usize, len: usize) -> RowRef<'_> {
        let at = pos * dim + start;
        match self {
            Rows::F16(v) => RowRef::F16(&v[at..at + len]),
            Rows::Q8_0(v) => RowRef::Q8_0(&v[at / QK..(at + len) / QK]),
        }
    }
}

/// Why a KV cache cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("a Q8_0 KV cache needs head sizes that are multiples of 32 (this model's are {k}/{v})")]
    Q8Heads { k: usize, v: usize },
}

/// Keys and values of one sequence.
#[derive(Clone, Debug)]
pub struct KvCache {
    ty: KvType,
    n_ctx: usize,
    k_dim: usize,
    v_dim: usize,
    k: Vec<Rows>,
    v: Vec<Rows>,
    /// Positions `0..len` hold valid entries.
    len: usize,
}

impl KvCache {
    /// A cache for `n_ctx` positions of `cfg`'s model.
    pub fn new(cfg: &ModelConfig, ty: KvType, n_ctx: usize) -> Result<KvCache, KvError> {
        if ty == KvType::Q8_0
            && (!cfg.head_dim_k.is_multiple_of(QK) || !cfg.head_dim_v.is_multiple_of(QK))
        {
            return Err(KvError::Q8Heads {
                k: cfg.head_dim_k,
                v: cfg.head_dim_v,
            });
        }
        let k_dim = cfg.n_head_kv * cfg.head_dim_k;
        let v_dim = cfg.n_head_kv * cfg.head_dim_v;
        Ok(KvCache {
            ty,
            n_ctx,
            k_dim,
            v_dim,
            k: (0..cfg.n_layer)
                .map(|_| Rows::new(ty, n_ctx, k_dim))
                .collect(),
            v: (0..cfg.n_layer)
                .map(|_| Rows::new(ty, n_ctx, v_dim))
                .collect(),
            len: 0,
        })
    }

    pub fn kv_type(&self) -> KvType {
        self.ty
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.n_ctx
    }

    /// Positions currently held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets positions `n..` (to reuse a shared prefix, or start over).
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    /// Marks positions `..n` as holding valid entries (after the forward pass wrote them).
    pub(crate) fn set_len(&mut self, n: usize) {
        assert!(n <= self.n_ctx);
        self.len = n;
    }

    /// Bytes of storage.
    pub fn bytes(&self) -> usize {
        let per_pos = self.ty.bytes_for((self.k_dim + self.v_dim) as u64) as usize;
        per_pos * self.n_ctx * self.k.len()
    }

    pub(crate) fn write(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        debug_assert!(k.len() == self.k_dim && v.len() == self.v_dim);
        self.k[layer].write(pos, k);
        self.v[layer].write(pos, v);
    }

    /// Key of kv-head `head` (of size `head_dim`) at `pos` in `layer`.
    pub(crate) fn key(&self, layer: usize, pos: usize, head: usize, head_dim: usize) -> RowRef<'_> {
        self.k[layer].part(pos, self.k_dim, head * head_dim, head_dim)
    }

    /// Value of kv-head `head` (of size `head_dim`) at `pos` in `layer`.
    pub(crate) fn value(
        &self,
        layer: usize,
        pos: usize,
        head: usize,
        head_dim: usize,
    ) -> RowRef<'_> {
        self.v[layer].part(pos, self.v_dim, head * head_dim, head_dim)
    }
}
