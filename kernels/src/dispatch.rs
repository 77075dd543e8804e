//! Kernel selection: CPU features are detected once per process and the matching table of
//! function pointers is built; `SPILLWAY_KERNELS=scalar|neon|dotprod|avx2|avx512` forces a
//! path.
//!
//! [`Kernels`] is the only way to reach the SIMD code. Its constructor verifies that the CPU
//! has every feature the chosen path was compiled for, which is the safety argument for
//! each `unsafe` call below.

use std::fmt;
use std::sync::OnceLock;

use crate::dot::scalar;
use crate::formats::*;
use crate::ops;

/// Environment variable that forces a kernel path.
pub const ENV_KERNELS: &str = "SPILLWAY_KERNELS";

/// A family of kernels compiled for one instruction-set level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// Portable Rust, the reference every other path is tested against.
    Scalar,
    /// x86_64 with AVX2, FMA and F16C.
    Avx2,
    /// x86_64 with AVX-512 F, BW, VL and VNNI on top of AVX2, FMA and F16C (Intel Ice Lake
    /// and later, AMD Zen 4 and later): `vpdpbusd` matrix–matrix kernels for prefill and
    /// decode alike (narrow tiles for a few tokens); the float dots and quantizers of AVX2.
    Avx512,
    /// aarch64 Advanced SIMD (every ARMv8-A core: Cortex-A53/A72, Pi 3/4).
    Neon,
    /// aarch64 NEON plus the ARMv8.2 dot-product instructions (Cortex-A55/A76/A78: Pi 5,
    /// RK3588, Jetson Orin).
    Dotprod,
}

impl KernelPath {
    /// Every path, slowest first.
    pub const ALL: [KernelPath; 5] = [
        KernelPath::Scalar,
        KernelPath::Neon,
        KernelPath::Dotprod,
        KernelPath::Avx2,
        KernelPath::Avx512,
    ];

    /// The name used by `SPILLWAY_KERNELS` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Scalar => "scalar",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512 => "avx512",
            KernelPath::Neon => "neon",
            KernelPath::Dotprod => "dotprod",
        }
    }

    /// Parses a `SPILLWAY_KERNELS` value.
    pub fn from_name(name: &str) -> Option<KernelPath> {
        KernelPath::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            KernelPath::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512 => {
                KernelPath::Avx2.is_supported()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            KernelPath::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            KernelPath::Dotprod => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The paths this CPU supports, slowest first.
    pub fn supported() -> Vec<KernelPath> {
        KernelPath::ALL
            .into_iter()
            .filter(|p| p.is_supported())
            .collect()
    }

    /// The fastest path this CPU supports.
    pub fn best() -> KernelPath {
        KernelPath::supported()
            .pop()
            .expect("the scalar path is always supported")
    }

    /// What the path needs from the CPU, for error messages.
    fn requirement(self) -> &'static str {
        match self {
            KernelPath::Scalar => "nothing",
            KernelPath::Avx2 => "an x86_64 CPU with AVX2, FMA and F16C",
            KernelPath::Avx512 => {
                "an x86_64 CPU with AVX-512 F, BW, VL and VNNI (and AVX2, FMA, F16C)"
            }
            KernelPath::Neon => "an aarch64 CPU (NEON)",
            KernelPath::Dotprod => "an aarch64 CPU with the dot-product extension (ARMv8.2+)",
        }
    }
}

impl fmt::Display for KernelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a kernel path could not be selected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    #[error(
        "{ENV_KERNELS}={value:?} is not a kernel path (expected one of scalar, neon, dotprod, avx2, avx512)"
    )]
    UnknownPath { value: String },
    #[error(
        "kernel path {path} needs {needs}; this CPU ({cpu}) does not have it (supported here: {supported})"
    )]
    Unsupported {
        path: KernelPath,
        needs: &'static str,
        cpu: String,
        supported: String,
    },
}

/// A matrix–matrix kernel: `out[r * nt + t] = dot(w row r, x row t)` for the
/// `nr = w.len() / bpr` weight rows and `nt = x.len() / bpr` activation rows, each `bpr`
/// blocks long. Paths without one use their dot product for every pair.
pub(crate) type GemmFn<W, A> = unsafe fn(&[W], &[A], usize, &mut [f32]);

/// A path's matrix–matrix kernels for one weight format.
#[derive(Clone, Copy)]
pub(crate) struct Gemm<W: 'static, A: 'static> {
    /// For tiles of any number of tokens (prefill).
    wide: GemmFn<W, A>,
    /// For tiles of at most 1, 2 and 4 tokens, where the path has them: the same
    /// arithmetic per (row, token) as `wide` with fewer tokens per register group, so every
    /// output equals `wide`'s bit for bit, at a cost that does not assume many tokens.
    narrow: Option<[GemmFn<W, A>; 3]>,
}

impl<W, A> Gemm<W, A> {
    /// A path with one kernel for every tile.
    #[allow(dead_code)] // Used by the tables of some targets only.
    const fn wide(wide: GemmFn<W, A>) -> Gemm<W, A> {
        Gemm { wide, narrow: None }
    }

    /// A path with narrow kernels for 1, 2 and 4 tokens besides the wide one.
    #[allow(dead_code)] // Used by the tables of some targets only.
    const fn with_narrow(wide: GemmFn<W, A>, narrow: [GemmFn<W, A>; 3]) -> Gemm<W, A> {
        Gemm {
            wide,
            narrow: Some(narrow),
        }
    }

    /// The kernel for a tile of `tokens` tokens.
    fn for_tokens(&self, tokens: usize) -> GemmFn<W, A> {
        match (self.narrow, tokens) {
            (Some([one, _, _]), 1) => one,
            (Some([_, two, _]), 2) => two,
            (Some([_, _, four]), 3 | 4) => four,
            _ => self.wide,
        }
    }
}

/// One path's functions. The pointers are `unsafe fn` because the SIMD ones require CPU
/// features; [`Kernels::new`] only builds a table whose features are present.
#[derive(Clone, Copy)]
struct Table {
    dot_f32: unsafe fn(&[f32], &[f32]) -> f32,
    dot_f16: unsafe fn(&[f16], &[f32]) -> f32,
    dot_bf16: unsafe fn(&[bf16], &[f32]) -> f32,
    dot_q8_0: unsafe fn(&[BlockQ8_0], &[BlockQ8_0]) -> f32,
    dot_q4_0: unsafe fn(&[BlockQ4_0], &[BlockQ8_0]) -> f32,
    dot_q4_k: unsafe fn(&[BlockQ4K], &[BlockQ8K]) -> f32,
    dot_q5_k: unsafe fn(&[BlockQ5K], &[BlockQ8K]) -> f32,
    dot_q6_k: unsafe fn(&[BlockQ6K], &[BlockQ8K]) -> f32,
    quantize_q8_0: unsafe fn(&[f32], &mut [BlockQ8_0]),
    quantize_q8_k: unsafe fn(&[f32], &mut [BlockQ8K]),
    gemm_q8_0: Option<Gemm<BlockQ8_0, BlockQ8_0>>,
    gemm_q4_0: Option<Gemm<BlockQ4_0, BlockQ8_0>>,
    gemm_q4_k: Option<Gemm<BlockQ4K, BlockQ8K>>,
    gemm_q5_k: Option<Gemm<BlockQ5K, BlockQ8K>>,
    gemm_q6_k: Option<Gemm<BlockQ6K, BlockQ8K>>,
    axpy_f16: unsafe fn(f32, &[f16], &mut [f32]),
    axpy_q8_0: unsafe fn(f32, &[BlockQ8_0], &mut [f32]),
    rmsnorm: unsafe fn(&[f32], &[f32], f32, &mut [f32]),
    softmax: unsafe fn(&mut [f32]),
    silu_mul: unsafe fn(&mut [f32], &[f32]),
}

const SCALAR: Table = Table {
    dot_f32: scalar::dot_f32,
    dot_f16: scalar::dot_f16,
    dot_bf16: scalar::dot_bf16,
    dot_q8_0: scalar::dot_q8_0,
    dot_q4_0: scalar::dot_q4_0,
    dot_q4_k: scalar::dot_q4_k,
    dot_q5_k: scalar::dot_q5_k,
    dot_q6_k: scalar::dot_q6_k,
    quantize_q8_0: scalar::quantize_q8_0,
    quantize_q8_k: scalar::quantize_q8_k,
    gemm_q8_0: None,
    gemm_q4_0: None,
    gemm_q4_k: None,
    gemm_q5_k: None,
    gemm_q6_k: None,
    axpy_f16: scalar::axpy_f16,
    axpy_q8_0: scalar::axpy_q8_0,
    rmsnorm: ops::reference::rmsnorm,
    softmax: ops::reference::softmax,
    silu_mul: ops::reference::silu_mul,
};

#[cfg(target_arch = "x86_64")]
const AVX2: Table = {
    use crate::dot::x86_64::{avx2, avx2_gemm};
    Table {
        dot_f32: avx2::dot_f32,
        dot_f16: avx2::dot_f16,
        dot_bf16: avx2::dot_bf16,
        dot_q8_0: avx2::dot_q8_0,
        dot_q4_0: avx2::dot_q4_0,
        dot_q4_k: avx2::dot_q4_k,
        dot_q5_k: avx2::dot_q5_k,
        dot_q6_k: avx2::dot_q6_k,
        quantize_q8_0: avx2::quantize_q8_0,
        quantize_q8_k: avx2::quantize_q8_k,
        gemm_q8_0: Some(Gemm::wide(avx2_gemm::gemm_q8_0)),
        gemm_q4_0: Some(Gemm::wide(avx2_gemm::gemm_q4_0)),
        gemm_q4_k: Some(Gemm::wide(avx2_gemm::gemm_q4_k)),
        gemm_q5_k: Some(Gemm::wide(avx2_gemm::gemm_q5_k)),
        gemm_q6_k: Some(Gemm::wide(avx2_gemm::gemm_q6_k)),
        axpy_f16: ops::avx2::axpy_f16,
        axpy_q8_0: ops::avx2::axpy_q8_0,
        rmsnorm: ops::avx2::rmsnorm,
        softmax: ops::avx2::softmax,
        silu_mul: ops::avx2::silu_mul,
    }
};

/// The AVX2 table with VNNI matrix–matrix kernels, wide ones for prefill and narrow ones
/// (1, 2, 4 tokens) for decode: every row of a product, one sequence's token or a batch of
/// them, goes through the same per-token arithmetic, so batching never changes a result.
/// Measured against the AVX2 dots on a Xeon with AVX-512 VNNI (3B, 2 threads): one
/// sequence decodes 12% faster on Q4_0 and 31% on Q4_K_M, and four sequences decode 3.2
/// times as many tokens per second as one. (VNNI single-row *dots* were measured slower
/// than AVX2's on an earlier machine: the row-transposed layout is what makes VNNI pay.)
#[cfg(target_arch = "x86_64")]
const AVX512: Table = {
    use crate::dot::x86_64::avx512_gemm::{four, one, two, wide};
    Table {
        gemm_q8_0: Some(Gemm::with_narrow(
            wide::gemm_q8_0,
            [one::gemm_q8_0, two::gemm_q8_0, four::gemm_q8_0],
        )),
        gemm_q4_0: Some(Gemm::with_narrow(
            wide::gemm_q4_0,
            [one::gemm_q4_0, two::gemm_q4_0, four::gemm_q4_0],
        )),
        gemm_q4_k: Some(Gemm::with_narrow(
            wide::gemm_q4_k,
            [one::gemm_q4_k, two::gemm_q4_k, four::gemm_q4_k],
        )),
        gemm_q5_k: Some(Gemm::with_narrow(
            wide::gemm_q5_k,
            [one::gemm_q5_k, two::gemm_q5_k, four::gemm_q5_k],
        )),
        gemm_q6_k: Some(Gemm::with_narrow(
            wide::gemm_q6_k,
            [one::gemm_q6_k, two::gemm_q6_k, four::gemm_q6_k],
        )),
        ..AVX2
    }
};

#[cfg(target_arch = "aarch64")]
const NEON: Table = {
    use crate::dot::aarch64::{float, neon, neon_gemm, quantize};
    Table {
        dot_f32: float::dot_f32,
        dot_f16: float::dot_f16,
        dot_bf16: float::dot_bf16,
        dot_q8_0: neon::dot_q8_0,
        dot_q4_0: neon::dot_q4_0,
        dot_q4_k: neon::dot_q4_k,
        dot_q5_k: neon::dot_q5_k,
        dot_q6_k: neon::dot_q6_k,
        quantize_q8_0: quantize::quantize_q8_0,
        quantize_q8_k: quantize::quantize_q8_k,
        gemm_q8_0: Some(Gemm::wide(neon_gemm::gemm_q8_0)),
        gemm_q4_0: Some(Gemm::wide(neon_gemm::gemm_q4_0)),
        gemm_q4_k: Some(Gemm::wide(neon_gemm::gemm_q4_k)),
        gemm_q5_k: Some(Gemm::wide(neon_gemm::gemm_q5_k)),
        gemm_q6_k: Some(Gemm::wide(neon_gemm::gemm_q6_k)),
        axpy_f16: ops::fast::axpy_f16,
        axpy_q8_0: ops::fast::axpy_q8_0,
        rmsnorm: ops::fast::rmsnorm,
        softmax: ops::fast::softmax,
        silu_mul: ops::fast::silu_mul,
    }
};

#[cfg(target_arch = "aarch64")]
const DOTPROD: Table = {
    use crate::dot::aarch64::{dotprod, dotprod_gemm};
    Table {
        dot_q8_0: dotprod::dot_q8_0,
        dot_q4_0: dotprod::dot_q4_0,
        dot_q4_k: dotprod::dot_q4_k,
        dot_q5_k: dotprod::dot_q5_k,
        dot_q6_k: dotprod::dot_q6_k,
        gemm_q8_0: Some(Gemm::wide(dotprod_gemm::gemm_q8_0)),
        gemm_q4_0: Some(Gemm::wide(dotprod_gemm::gemm_q4_0)),
        gemm_q4_k: Some(Gemm::wide(dotprod_gemm::gemm_q4_k)),
        gemm_q5_k: Some(Gemm::wide(dotprod_gemm::gemm_q5_k)),
        gemm_q6_k: Some(Gemm::wide(dotprod_gemm::gemm_q6_k)),
        ..NEON
    }
};

/// The kernels of one path, safe to call: built only when the CPU supports the path.
#[derive(Clone, Copy)]
pub struct Kernels {
    path: KernelPath,
    table: Table,
}

impl fmt::Debug for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernels").field("path", &self.path).finish()
    }
}

/// A short description of the CPU's relevant features, for reports and errors.
pub fn cpu_summary() -> String {
    let mut feats: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, on) in [
            ("sse4.2", std::arch::is_x86_feature_detected!("sse4.2")),
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("f16c", std::arch::is_x86_feature_detected!("f16c")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            ("avx512bw", std::arch::is_x86_feature_detected!("avx512bw")),
            ("avx512vl", std::arch::is_x86_feature_detected!("avx512vl")),
            (
                "avx512vnni",
                std::arch::is_x86_feature_detected!("avx512vnni"),
            ),
        ] {
            if on {
                feats.push(name);
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        for (name, on) in [
            ("neon", std::arch::is_aarch64_feature_detected!("neon")),
            ("fp16", std::arch::is_aarch64_feature_detected!("fp16")),
            (
                "dotprod",
                std::arch::is_aarch64_feature_detected!("dotprod"),
            ),
            ("i8mm", std::arch::is_aarch64_feature_detected!("i8mm")),
            ("sve", std::arch::is_aarch64_feature_detected!("sve")),
        ] {
            if on {
                feats.push(name);
            }
        }
    }
    format!("{} [{}]", std::env::consts::ARCH, feats.join(" "))
}

impl Kernels {
    /// The kernels of `path`, or an error naming what the CPU lacks.
    pub fn new(path: KernelPath) -> Result<Kernels, DispatchError> {
        if !path.is_supported() {
            return Err(DispatchError::Unsupported {
                path,
                needs: path.requirement(),
                cpu: cpu_summary(),
                supported: KernelPath::supported()
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let table = match path {
            KernelPath::Scalar => SCALAR,
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 => AVX2,
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512 => AVX512,
            #[cfg(target_arch = "aarch64")]
            KernelPath::Neon => NEON,
            #[cfg(target_arch = "aarch64")]
            KernelPath::Dotprod => DOTPROD,
            #[allow(unreachable_patterns)]
            _ => unreachable!("is_supported() is false for paths of other architectures"),
        };
        Ok(Kernels { path, table })
    }

    /// The scalar reference kernels.
    pub fn scalar() -> Kernels {
        Kernels {
            path: KernelPath::Scalar,
            table: SCALAR,
        }
    }

    /// The fastest kernels this CPU supports.
    pub fn best() -> Kernels {
        Kernels::new(KernelPath::best()).expect("best() only returns supported paths")
    }

    /// Kernels for the path named by `value` (a `SPILLWAY_KERNELS` value), or the best path
    /// when `value` is `None` or empty.
    pub fn from_override(value: Option<&str>) -> Result<Kernels, DispatchError> {
        match value.map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(Kernels::best()),
            Some(v) => {
                let path = KernelPath::from_name(v).ok_or_else(|| DispatchError::UnknownPath {
                    value: v.to_string(),
                })?;
                Kernels::new(path)
            }
        }
    }

    /// Which path these kernels belong to.
    pub fn path(&self) -> KernelPath {
        self.path
    }
}

/// The process-wide kernels: chosen once, on first call, from CPU features and
/// `SPILLWAY_KERNELS`. Later calls return the same table (or the same error).
pub fn select() -> Result<&'static Kernels, DispatchError> {
    static SELECTED: OnceLock<Result<Kernels, DispatchError>> = OnceLock::new();
    SELECTED
        .get_or_init(|| Kernels::from_override(std::env::var(ENV_KERNELS).ok().as_deref()))
        .as_ref()
        .map_err(Clone::clone)
}

// SAFETY (for every `unsafe` call in this impl): `self.table` was chosen by `Kernels::new`
// (or is the scalar table, which has no requirements) only after `is_supported()` confirmed
// the CPU has the features the table's functions were compiled for. The functions' other
// precondition, equal lengths, is asserted right before each call.
impl Kernels {
    #[inline]
    pub fn dot_f32(&self, w: &[f32], x: &[f32]) -> f32 {
        assert_eq!(w.len(), x.len());
        // SAFETY: see the impl comment.
        unsafe { (self.table.dot_f32)(w, x) }
    }

    #[inline]
    pub fn dot_f16(&self, w: &[f16], x: &[f32]) -> f32 {
        assert_eq!(w.len(), x.len());
        // SAFETY: see the impl comment.
        unsafe { (self.table.dot_f16)(w, x) }
    }

    #[inline]
    pub fn dot_bf16(&self, w: &[bf16], x: &[f32]) -> f32 {
        assert_eq!(w.len(), x.len());
        // SAFETY: see the impl comment.
        unsafe { (self.table.dot_bf16)(w, x) }
    }

    #[inline]
    pub fn dot_q8_0(&self, w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
        assert_eq!(w.len(), x.len());
        // SAFETY: see the impl comment.
        unsafe { (self.table.dot_q8_0)(w, x) }
    }

    #[inline]
    pub fn dot_q4_0(&self, w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
        assert_eq!(w.len(), x.len());
        // SAFETY: see the impl comment.
        unsafe { (self.table.dot_q4_0)(w, x) }
    }

    #[inline]
    pub fn dot_q4_k(&self, w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
        assert_eq!(w.len(), x.len());
        // SAFETY: see the impl comment.
        unsafe { (self.table.dot_q4_k)(w, x) }
    }

    #[inline]
    pub fn dot_q5_k(&self, w: &[BlockQ5K], x: &[BlockQ8K]) -> f32 {
        assert_eq!(w.len(), x.len());
        // SAFETY: see the impl comment.
        unsafe { (self.table.dot_q5_k)(w, x) }
    }

    #[inline]
    pub fn dot_q6_k(&self, w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
        assert_eq!(w.len(), x.len());
        // SAFETY: see the impl comment.
        unsafe { (self.table.dot_q6_k)(w, x) }
    }

    /// Whether this path multiplies decode tokens with its matrix–matrix kernels too: it has
    /// narrow ones, for tiles of a few tokens, for every quantized format. Then every row of
    /// a product, prompt or decode, gets the matrix–matrix kernel's value, whatever the
    /// number of rows; otherwise decode rows use the dot products.
    pub fn decode_by_gemm(&self) -> bool {
        let t = &self.table;
        [
            t.gemm_q8_0.is_some_and(|g| g.narrow.is_some()),
            t.gemm_q4_0.is_some_and(|g| g.narrow.is_some()),
            t.gemm_q4_k.is_some_and(|g| g.narrow.is_some()),
            t.gemm_q5_k.is_some_and(|g| g.narrow.is_some()),
            t.gemm_q6_k.is_some_and(|g| g.narrow.is_some()),
        ]
        .into_iter()
        .all(|narrow| narrow)
    }

    /// `out[r * nt + t] = dot(w row r, x row t)` over F32 rows of `bpr` values.
    pub fn gemm_f32(&self, w: &[f32], x: &[f32], bpr: usize, out: &mut [f32]) {
        gemm_by_dots(w, x, bpr, out, |a, b| self.dot_f32(a, b))
    }

    /// The same over F16 weight rows.
    pub fn gemm_f16(&self, w: &[f16], x: &[f32], bpr: usize, out: &mut [f32]) {
        gemm_by_dots(w, x, bpr, out, |a, b| self.dot_f16(a, b))
    }

    /// The same over BF16 weight rows.
    pub fn gemm_bf16(&self, w: &[bf16], x: &[f32], bpr: usize, out: &mut [f32]) {
        gemm_by_dots(w, x, bpr, out, |a, b| self.dot_bf16(a, b))
    }

    /// The same over Q8_0 rows of `bpr` blocks.
    pub fn gemm_q8_0(&self, w: &[BlockQ8_0], x: &[BlockQ8_0], bpr: usize, out: &mut [f32]) {
        self.gemm_with(self.table.gemm_q8_0, w, x, bpr, out, |a, b| {
            self.dot_q8_0(a, b)
        })
    }

    /// The same over Q4_0 weight rows.
    pub fn gemm_q4_0(&self, w: &[BlockQ4_0], x: &[BlockQ8_0], bpr: usize, out: &mut [f32]) {
        self.gemm_with(self.table.gemm_q4_0, w, x, bpr, out, |a, b| {
            self.dot_q4_0(a, b)
        })
    }

    /// The same over Q4_K weight rows.
    pub fn gemm_q4_k(&self, w: &[BlockQ4K], x: &[BlockQ8K], bpr: usize, out: &mut [f32]) {
        self.gemm_with(self.table.gemm_q4_k, w, x, bpr, out, |a, b| {
            self.dot_q4_k(a, b)
        })
    }

    /// The same over Q5_K weight rows.
    pub fn gemm_q5_k(&self, w: &[BlockQ5K], x: &[BlockQ8K], bpr: usize, out: &mut [f32]) {
        self.gemm_with(self.table.gemm_q5_k, w, x, bpr, out, |a, b| {
            self.dot_q5_k(a, b)
        })
    }

    /// The same over Q6_K weight rows.
    pub fn gemm_q6_k(&self, w: &[BlockQ6K], x: &[BlockQ8K], bpr: usize, out: &mut [f32]) {
        self.gemm_with(self.table.gemm_q6_k, w, x, bpr, out, |a, b| {
            self.dot_q6_k(a, b)
        })
    }

    /// `out[r * nt + t] = dot(w row r, x row t)` through this path's matrix–matrix kernel
    /// `gemm` (the one for the tile's token count), or through `dot` if it has none.
    fn gemm_with<W, A>(
        &self,
        gemm: Option<Gemm<W, A>>,
        w: &[W],
        x: &[A],
        bpr: usize,
        out: &mut [f32],
        dot: impl Fn(&[W], &[A]) -> f32,
    ) {
        match gemm {
            Some(g) if gemm_shape(w.len(), x.len(), bpr, out.len()) => {
                let f = g.for_tokens(x.len() / bpr);
                // SAFETY: see the impl comment (`gemm` is one of `self.table`'s kernels);
                // `gemm_shape` checks the lengths.
                unsafe { f(w, x, bpr, out) }
            }
            _ => gemm_by_dots(w, x, bpr, out, dot),
        }
    }

    /// Quantizes activations to Q8_0 (`x.len() == 32 * y.len()`).
    #[inline]
    pub fn quantize_q8_0(&self, x: &[f32], y: &mut [BlockQ8_0]) {
        assert_eq!(x.len(), QK * y.len());
        // SAFETY: see the impl comment.
        unsafe { (self.table.quantize_q8_0)(x, y) }
    }

    /// Quantizes activations to Q8_K (`x.len() == 256 * y.len()`).
    #[inline]
    pub fn quantize_q8_k(&self, x: &[f32], y: &mut [BlockQ8K]) {
        assert_eq!(x.len(), QK_K * y.len());
        // SAFETY: see the impl comment.
        unsafe { (self.table.quantize_q8_k)(x, y) }
    }

    /// `y += a * x` for an f16 row (`x.len() == y.len()`).
    #[inline]
    pub fn axpy_f16(&self, a: f32, x: &[f16], y: &mut [f32]) {
        assert_eq!(x.len(), y.len());
        // SAFETY: see the impl comment.
        unsafe { (self.table.axpy_f16)(a, x, y) }
    }

    /// `y += a * x` for a Q8_0 row (`32 * x.len() == y.len()`).
    #[inline]
    pub fn axpy_q8_0(&self, a: f32, x: &[BlockQ8_0], y: &mut [f32]) {
        assert_eq!(QK * x.len(), y.len());
        // SAFETY: see the impl comment.
        unsafe { (self.table.axpy_q8_0)(a, x, y) }
    }

    /// `out = x / sqrt(mean(x^2) + eps) * weight`.
    #[inline]
    pub fn rmsnorm(&self, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        assert!(x.len() == weight.len() && x.len() == out.len());
        // SAFETY: see the impl comment.
        unsafe { (self.table.rmsnorm)(x, weight, eps, out) }
    }

    /// In-place softmax. `-inf` entries (masked positions) become exactly 0.
    #[inline]
    pub fn softmax(&self, x: &mut [f32]) {
        // SAFETY: see the impl comment (no length precondition).
        unsafe { (self.table.softmax)(x) }
    }

    /// `gate = silu(gate) * up`, the SwiGLU combination.
    #[inline]
    pub fn silu_mul(&self, gate: &mut [f32], up: &[f32]) {
        assert_eq!(gate.len(), up.len());
        // SAFETY: see the impl comment.
        unsafe { (self.table.silu_mul)(gate, up) }
    }
}

/// Whether `w` and `x` are whole rows of `bpr` blocks and `out` holds one value per pair.
/// Panics otherwise: a caller passing mismatched buffers is a bug, as for the dots.
fn gemm_shape(w: usize, x: usize, bpr: usize, out: usize) -> bool {
    assert!(
        bpr > 0 && w.is_multiple_of(bpr) && x.is_multiple_of(bpr) && out == (w / bpr) * (x / bpr),
        "gemm: {w} and {x} blocks are not whole rows of {bpr} with {out} outputs"
    );
    true
}

/// The reference matrix–matrix product: one dot product per (row, token) pair.
fn gemm_by_dots<W, A>(
    w: &[W],
    x: &[A],
    bpr: usize,
    out: &mut [f32],
    dot: impl Fn(&[W], &[A]) -> f32,
) {
    gemm_shape(w.len(), x.len(), bpr, out.len());
    let nt = x.len() / bpr;
    for (r, wr) in w.chunks_exact(bpr).enumerate() {
        for (t, xt) in x.chunks_exact(bpr).enumerate() {
            out[r * nt + t] = dot(wr, xt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in KernelPath::ALL {
            assert_eq!(KernelPath::from_name(p.name()), Some(p));
        }
        assert_eq!(KernelPath::from_name(" AVX2 "), Some(KernelPath::Avx2));
        assert_eq!(KernelPath::from_name("AVX512"), Some(KernelPath::Avx512));
        assert_eq!(KernelPath::from_name("sse"), None);
    }

    #[test]
    fn override_is_validated() {
        assert_eq!(
            Kernels::from_override(None).unwrap().path(),
            KernelPath::best()
        );
        assert_eq!(
            Kernels::from_override(Some("")).unwrap().path(),
            KernelPath::best()
        );
        assert_eq!(
            Kernels::from_override(Some("scalar")).unwrap().path(),
            KernelPath::Scalar
        );
        let err = Kernels::from_override(Some("sse9")).unwrap_err();
        assert!(matches!(err, DispatchError::UnknownPath { .. }), "{err}");
        // A path of the other architecture is always refused, with a reason.
        #[cfg(target_arch = "x86_64")]
        let foreign = "dotprod";
        #[cfg(target_arch = "aarch64")]
        let foreign = "avx2";
        let err = Kernels::from_override(Some(foreign)).unwrap_err();
        assert!(err.to_string().contains("needs"), "{err}");
    }
}
