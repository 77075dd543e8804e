//! Probes a deployed binary runs on its own board: a self-check of the selected kernels
//! against the scalar reference, and throughput measurements (matrix–vector bandwidth next
//! to a sequential-read roofline). `spillway kernels` and the criterion benchmark use them.
//!
//! The self-check is a smoke test for a CPU we never saw (a miscompiled or mis-detected
//! feature shows up here); the exhaustive property tests live in `tests/`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use crate::dispatch::Kernels;
use crate::formats::*;
use crate::matmul::{Activations, Matrix, matmul};
use crate::pool::ThreadPool;

/// A small deterministic generator (xorshift64), so probes are reproducible.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    pub fn fill_bytes(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// Bytes with 64-byte-aligned storage (GGUF tensor data is aligned; SIMD loads like it).
#[derive(Clone, Debug)]
pub struct AlignedBytes {
    lines: Vec<[u64; 8]>,
    len: usize,
}

impl AlignedBytes {
    pub fn zeroed(len: usize) -> AlignedBytes {
        AlignedBytes {
            lines: vec![[0u64; 8]; len.div_ceil(64)],
            len,
        }
    }

    pub fn copy_of(bytes: &[u8]) -> AlignedBytes {
        let mut a = AlignedBytes::zeroed(bytes.len());
        a.bytes_mut().copy_from_slice(bytes);
        a
    }

    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

/// A `rows x cols` matrix of random but valid blocks of `ty`: random quant bits with small
/// finite scales (throughput does not depend on the values; NaN scales would be unrealistic).
pub fn random_weights(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> AlignedBytes {
    let n = rows * cols;
    let bytes = ty
        .bytes_for(n as u64)
        .expect("cols must be a whole number of blocks") as usize;
    let mut out = AlignedBytes::zeroed(bytes);
    let scale = |rng: &mut Rng| f16::from_f32(0.001 + 0.01 * rng.unit().abs());
    match ty {
        GgmlType::F32 => {
            for v in bytemuck::cast_slice_mut::<u8, f32>(out.bytes_mut()) {
                *v = rng.unit();
            }
        }
        GgmlType::F16 => {
            for v in bytemuck::cast_slice_mut::<u8, f16>(out.bytes_mut()) {
                *v = f16::from_f32(rng.unit());
            }
        }
        GgmlType::BF16 => {
            for v in bytemuck::cast_slice_mut::<u8, bf16>(out.bytes_mut()) {
                *v = bf16::from_f32(rng.unit());
            }
        }
        GgmlType::Q4_0 => {
            rng.fill_bytes(out.bytes_mut());
            for b in bytemuck::cast_slice_mut::<u8, BlockQ4_0>(out.bytes_mut()) {
                b.d = scale(rng);
            }
        }
        GgmlType::Q8_0 => {
            rng.fill_bytes(out.bytes_mut());
            for b in bytemuck::cast_slice_mut::<u8, BlockQ8_0>(out.bytes_mut()) {
                b.d = scale(rng);
            }
        }
        GgmlType::Q4_K => {
            rng.fill_bytes(out.bytes_mut());
            for b in bytemuck::cast_slice_mut::<u8, BlockQ4K>(out.bytes_mut()) {
                (b.d, b.dmin) = (scale(rng), scale(rng));
            }
        }
        GgmlType::Q5_K => {
            rng.fill_bytes(out.bytes_mut());
            for b in bytemuck::cast_slice_mut::<u8, BlockQ5K>(out.bytes_mut()) {
                (b.d, b.dmin) = (scale(rng), scale(rng));
            }
        }
        GgmlType::Q6_K => {
            rng.fill_bytes(out.bytes_mut());
            for b in bytemuck::cast_slice_mut::<u8, BlockQ6K>(out.bytes_mut()) {
                b.d = scale(rng);
            }
        }
        other => panic!("{other} is not a supported weight format"),
    }
    out
}

/// Reads every byte and returns a checksum, so nothing is optimised away: the read side of
/// the roofline. Uses the widest loads the CPU has (AVX2 on x86_64, NEON on aarch64), since
/// narrower ones can fall short of what the memory delivers.
pub fn read_all(bytes: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected just now.
        return unsafe { read_all_avx2(bytes) };
    }
    read_all_lanes(bytes)
}

/// [`read_all_lanes`] compiled for AVX2: 256-bit loads.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn read_all_avx2(bytes: &[u8]) -> u64 {
    read_all_lanes(bytes)
}

/// Sums 64-byte lines as independent u64 lanes, which compilers turn into wide loads.
#[inline(always)]
fn read_all_lanes(bytes: &[u8]) -> u64 {
    let lines = bytes.len() / 128 * 128;
    let words: &[u64] = bytemuck::cast_slice(&bytes[..lines]);
    let mut acc = [0u64; 16];
    for c in words.chunks_exact(16) {
        for i in 0..16 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    acc.iter().fold(0, |a, &b| a.wrapping_add(b))
}

/// Reads `bytes` once with every thread of `pool`, each a contiguous share.
pub fn parallel_read(pool: &ThreadPool, bytes: &[u8]) {
    pool.run(|i, n| {
        let share = bytes.len() / n / 128 * 128;
        let end = if i + 1 == n {
            bytes.len()
        } else {
            (i + 1) * share
        };
        black_box(read_all(&bytes[i * share..end]));
    });
}

/// Repeats `f` until `min_time` has passed (at least 3 times, after one warm-up call) and
/// returns the fastest call's duration: the least disturbed estimate on a noisy board.
pub fn best_time(min_time: Duration, mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < 3 || start.elapsed() < min_time {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        runs += 1;
    }
    best
}

/// Sequential-read bandwidth in GB/s (1e9 bytes/s) over a buffer of `bytes` bytes.
pub fn measure_read_gbps(pool: &ThreadPool, bytes: usize, min_time: Duration) -> f64 {
    let mut rng = Rng::new(11);
    let mut buf = AlignedBytes::zeroed(bytes);
    rng.fill_bytes(buf.bytes_mut());
    let t = best_time(min_time, || parallel_read(pool, buf.bytes()));
    bytes as f64 / t.as_nanos() as f64
}

/// Matrix–vector throughput in weight GB/s for a `rows x cols` matrix of `ty`, cycling over
/// copies that together span at least `working_set` bytes (so they come from DRAM).
pub fn measure_matvec_gbps(
    pool: &ThreadPool,
    kernels: &Kernels,
    ty: GgmlType,
    (rows, cols): (usize, usize),
    working_set: usize,
    min_time: Duration,
) -> f64 {
    let mut rng = Rng::new(7);
    let one = random_weights(ty, rows, cols, &mut rng);
    let copies: Vec<AlignedBytes> = (0..working_set.div_ceil(one.len).max(1))
        .map(|_| one.clone())
        .collect();
    drop(one);
    let mats: Vec<Matrix<'_>> = copies
        .iter()
        .map(|c| Matrix::new(Weights::from_bytes(ty, c.bytes()).unwrap(), rows, cols).unwrap())
        .collect();
    let xf: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
    let mut x = Activations::new(mats[0].act_format(), cols, 1);
    x.set(kernels, &xf);
    let mut y = vec![0.0f32; rows];
    let mut i = 0;
    let t = best_time(min_time, || {
        matmul(pool, kernels, &mats[i], &x, &mut y);
        i = (i + 1) % mats.len();
        black_box(&y);
    });
    mats[0].weights().n_bytes() as f64 / t.as_nanos() as f64
}

/// One failed comparison of the self-check.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckFailure {
    pub kernel: &'static str,
    pub got: f32,
    pub want: f32,
    pub budget: f64,
}

impl std::fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: got {}, scalar reference {}, allowed error {:e}",
            self.kernel, self.got, self.want, self.budget
        )
    }
}

/// Compares `kernels` with the scalar reference on realistic data for every format and
/// operation: row lengths of the 3B model and a ragged one, weights quantized by the
/// reference quantizers. Returns the failures (empty when the kernels are sound).
pub fn self_check(kernels: &Kernels) -> Vec<CheckFailure> {
    let scalar = Kernels::scalar();
    let mut failures = Vec::new();
    let mut check = |kernel: &'static str, got: f32, want: f32, magnitude: f64, rel: f64| {
        let budget = rel * magnitude + 1e-30;
        let err = (f64::from(got) - f64::from(want)).abs();
        // A NaN result fails too.
        if err.is_nan() || err > budget {
            failures.push(CheckFailure {
                kernel,
                got,
                want,
                budget,
            });
        }
    };
    let mut rng = Rng::new(0x5e1f);
    for cols in [256, 3072, 9216] {
        let w: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
        let x: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
        let mag: f64 = w
            .iter()
            .zip(&x)
            .map(|(&a, &b)| f64::from(a * b).abs())
            .sum();
        for (ty, name) in [
            (GgmlType::F32, "F32·F32"),
            (GgmlType::F16, "F16·F32"),
            (GgmlType::BF16, "BF16·F32"),
            (GgmlType::Q8_0, "Q8_0·Q8_0"),
            (GgmlType::Q4_0, "Q4_0·Q8_0"),
            (GgmlType::Q4_K, "Q4_K·Q8_K"),
            (GgmlType::Q5_K, "Q5_K·Q8_K"),
            (GgmlType::Q6_K, "Q6_K·Q8_K"),
        ] {
            let bytes = quantize_to_bytes(ty, &w).expect("supported");
            let m = Matrix::new(Weights::from_bytes(ty, &bytes).expect("valid"), 1, cols)
                .expect("one row");
            // Both sides use the scalar activation quantizer, to compare the dots alone.
            let mut act = Activations::new(m.act_format(), cols, 1);
            act.set(&scalar, &x);
            let pool = ThreadPool::new(crate::pool::PoolConfig::with_threads(1))
                .expect("a one-thread pool spawns nothing");
            let (mut a, mut b) = ([0.0f32], [0.0f32]);
            matmul(&pool, kernels, &m, &act, &mut a);
            matmul(&pool, &scalar, &m, &act, &mut b);
            check(name, a[0], b[0], mag, 1e-4);
        }
        // Activation quantizers, through a dot with fixed weights.
        let ones = vec![1.0f32; cols];
        for (ty, name) in [
            (GgmlType::Q8_0, "quantize Q8_0"),
            (GgmlType::Q4_K, "quantize Q8_K"),
        ] {
            let bytes = quantize_to_bytes(ty, &ones).expect("supported");
            let m = Matrix::new(Weights::from_bytes(ty, &bytes).expect("valid"), 1, cols)
                .expect("one row");
            let pool =
                ThreadPool::new(crate::pool::PoolConfig::with_threads(1)).expect("no threads");
            let (mut a, mut b) = ([0.0f32], [0.0f32]);
            let mut act = Activations::new(m.act_format(), cols, 1);
            act.set(kernels, &x);
            matmul(&pool, &scalar, &m, &act, &mut a);
            act.set(&scalar, &x);
            matmul(&pool, &scalar, &m, &act, &mut b);
            let xmag: f64 = x.iter().map(|&v| f64::from(v.abs())).sum();
            check(name, a[0], b[0], xmag, 2e-2);
        }
        // f32 operations.
        let norm_w: Vec<f32> = (0..cols).map(|i| 1.0 + (i % 3) as f32).collect();
        let (mut a, mut b) = (vec![0.0; cols], vec![0.0; cols]);
        kernels.rmsnorm(&x, &norm_w, 1e-5, &mut a);
        scalar.rmsnorm(&x, &norm_w, 1e-5, &mut b);
        for (&g, &r) in a.iter().zip(&b) {
            check("rmsnorm", g, r, f64::from(r.abs()), 1e-5);
        }
        let (mut a, mut b) = (x.clone(), x.clone());
        kernels.softmax(&mut a);
        scalar.softmax(&mut b);
        for (&g, &r) in a.iter().zip(&b) {
            check("softmax", g, r, f64::from(r.abs()), 1e-5);
        }
        let (mut a, mut b) = (w.clone(), w.clone());
        kernels.silu_mul(&mut a, &x);
        scalar.silu_mul(&mut b, &x);
        for (&g, &r) in a.iter().zip(&b) {
            check("silu_mul", g, r, f64::from(r.abs()) + 1e-12, 1e-5);
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::KernelPath;

    #[test]
    fn every_supported_path_passes_the_self_check() {
        for p in KernelPath::supported() {
            let failures = self_check(&Kernels::new(p).unwrap());
            assert!(failures.is_empty(), "{p}: {failures:?}");
        }
    }

    #[test]
    fn random_weights_are_valid_and_finite() {
        let mut rng = Rng::new(3);
        for ty in GgmlType::all().filter(|t| t.is_supported()) {
            let b = random_weights(ty, 4, 256, &mut rng);
            let w = Weights::from_bytes(ty, b.bytes()).unwrap();
            let mut out = vec![0.0; w.n_elements()];
            w.dequantize(&mut out);
            assert!(out.iter().all(|v| v.is_finite()), "{ty}");
        }
    }
}
