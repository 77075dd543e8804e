//! What the two x86_64 GEMM paths, [`super::avx2_gemm`] (8 rows x 4 tokens per register
//! tile) and [`super::avx512_gemm`] (16 rows x 8 tokens), share: the unchecked access to
//! rows, tokens and blocks, the prefetching of the rows, and, in the [`gemm_passes`] macro,
//! the activation sums and scales of Q4_0/Q8_0, the write-back of the float tile and the
//! pass loops.
//!
//! The feature-independent pieces are generic functions, the tile shape a const parameter.
//! The pieces that use vector instructions are written once in [`gemm_passes`] and expanded
//! by each path with its target features and its float vector type, as `gemm_tiles!` is on
//! aarch64: a function only inlines into a caller compiled with its features, and the pass
//! loops call the micro-kernels through closures, so they must be compiled with the path's
//! features themselves.
//!
//! Not shared: the repacking and the micro-kernels. Most of them differ in substance:
//! AVX-512 multiplies with VNNI (`vpdpbusd`/`vpdpwssd`, exact in i32) where AVX2 chains
//! `vpmaddubsw` on i16 lanes and widens with `vpmaddwd` (hence its nibble-split Q8_0 and
//! i16 scale pairs), and it merges Q5_K's fifth bit and converts the k-quants' scales with
//! mask registers and AVX-512 conversions that AVX2 does not have. The rest (the Q6_K bit
//! merging, the float steps of the k-quant micro-kernels, the broadcasts) is the same
//! arithmetic on registers of different widths, spelled with different intrinsics
//! (`_mm256_*`, `_mm512_*`); sharing it would take a layer of width-generic wrappers over
//! those intrinsics, more machinery than the few lines it would save.

/// Q4_0/Q8_0 blocks per chunk of a pass (256 values, like one k-quant super-block).
pub(super) const BLOCKS32: usize = 8;

/// Block `b` of a row.
///
/// # Safety
/// `b < row.len()`.
#[inline(always)]
pub(super) unsafe fn blk<T>(row: &[T], b: usize) -> &T {
    debug_assert!(b < row.len());
    // SAFETY: the caller guarantees `b < row.len()`.
    unsafe { row.get_unchecked(b) }
}

/// Row `i` of a matrix of rows of `bpr` blocks.
///
/// # Safety
/// `(i + 1) * bpr <= m.len()`.
#[inline(always)]
pub(super) unsafe fn row_of<T>(m: &[T], i: usize, bpr: usize) -> &[T] {
    debug_assert!((i + 1) * bpr <= m.len());
    // SAFETY: the caller guarantees the range is in bounds.
    unsafe { m.get_unchecked(i * bpr..(i + 1) * bpr) }
}

/// The rows `r0..r0 + N` of `w`, the ones past `nr` replaced by row `nr - 1`.
///
/// # Safety
/// `w.len() == nr * bpr` and `r0 < nr`.
#[inline(always)]
pub(super) unsafe fn row_set<T, const N: usize>(
    w: &[T],
    bpr: usize,
    r0: usize,
    nr: usize,
) -> [&[T]; N] {
    // SAFETY: `(r0 + i).min(nr - 1) < nr`, so the row is inside `w`.
    core::array::from_fn(|i| unsafe { row_of(w, (r0 + i).min(nr - 1), bpr) })
}

/// The token rows `t0..t0 + G * NG` of `x` in `NG` groups of `G`, the ones past `nt`
/// replaced by row `nt - 1`.
///
/// # Safety
/// `x.len() == nt * bpr` and `t0 < nt`.
#[inline(always)]
pub(super) unsafe fn token_set<T, const G: usize, const NG: usize>(
    x: &[T],
    bpr: usize,
    t0: usize,
    nt: usize,
) -> [[&[T]; G]; NG] {
    use core::array::from_fn;
    // SAFETY: `(t0 + ..).min(nt - 1) < nt`, so the row is inside `x`.
    from_fn(|g| from_fn(|i| unsafe { row_of(x, (t0 + g * G + i).min(nt - 1), bpr) }))
}

/// Piece `g` (16 bytes) of an array of `N` bytes.
#[inline(always)]
pub(super) fn piece<const N: usize>(a: &[u8; N], g: usize) -> &[u8; 16] {
    &a.as_chunks::<16>().0[g]
}

/// Prefetches block `b` of each row (if the rows have one), `blocks` blocks long, one
/// prefetch per cache line: used on the rows' next blocks while the current ones are
/// computed on, since the rows of a tile are more concurrent streams than the hardware
/// prefetchers follow.
#[target_feature(enable = "sse")]
#[inline]
pub(super) fn prefetch_rows<T, const N: usize>(rows: &[&[T]; N], b: usize, blocks: usize) {
    use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    for row in rows {
        if b < row.len() {
            let p = row.as_ptr().wrapping_add(b).cast::<i8>();
            let mut off = 0;
            while off < blocks * size_of::<T>() {
                // A prefetch never faults, so the address (possibly past the end) need not
                // be valid.
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off));
                off += 64;
            }
        }
    }
}

/// Prefetches blocks `b..b + blocks` of rows `r0..r0 + n` of `w` (those below `nr`), one
/// prefetch per cache line: called during a pass's last steps on the rows of the next pass,
/// whose first blocks would otherwise all miss at once when it starts (measured: a tenth of
/// a decode product's time on rows of 3072 values).
#[target_feature(enable = "sse")]
#[inline]
pub(super) fn prefetch_next_rows<T>(
    w: &[T],
    bpr: usize,
    r0: usize,
    n: usize,
    nr: usize,
    b: usize,
    blocks: usize,
) {
    for r in r0..(r0 + n).min(nr) {
        if let Some(row) = w.get(r * bpr..(r + 1) * bpr) {
            prefetch_rows(&[row], b, blocks);
        }
    }
}

/// Defines, in the module that expands it, the parts of a GEMM path that are the same for
/// both x86_64 paths but for the register width, compiled with the target features
/// `$feat`: `Acts32`, `prepare_acts` (the Q4_0/Q8_0 activation sums and scales), `scatter`
/// (the write-back of a float tile), and the pass loops `gemm32` (Q4_0/Q8_0) and `gemm_k`
/// (the k-quants). `$f32s` is the float vector of a row group (one lane per row), `$zero`
/// and `$store` its `setzero` and unaligned `storeu` intrinsics.
///
/// The expanding module must import `core::arch::x86_64::*`, `crate::formats::*` and
/// [`BLOCKS32`], and define:
///
/// - the tile shape: `ROWS` (lanes of `$f32s`), `ROW_GROUPS` (row groups per Q4_0/Q8_0
///   pass), `PASS_TOKENS`, `GROUP` (tokens per micro-kernel call) and
///   `GROUPS = PASS_TOKENS / GROUP`;
/// - the repacked weights `Packed32` (a chunk of Q4_0/Q8_0 blocks) and `PackedK` (a
///   k-quant super-block), each with a `new()`;
/// - `act_sums(&[&BlockQ8_0; BLOCKS32]) -> __m256i`: the sums of the eight activation
///   blocks' values, one per lane;
/// - `act_scales(chunk: &[BlockQ8_0], &[&BlockQ8_0; BLOCKS32]) -> __m256`: their scales as
///   f32 (`chunk` is the `nb` blocks themselves, the array the same padded to eight with
///   the last one).
macro_rules! gemm_passes {
    ($feat:literal, $f32s:ty, $zero:ident, $store:ident) => {
        /// Per token of a pass and block of a chunk: the accumulator seed
        /// (`-offset * sum(x)`) and `f32(d_x)`.
        struct Acts32 {
            seed: [[[i32; BLOCKS32]; GROUP]; GROUPS],
            dx: [[[f32; BLOCKS32]; GROUP]; GROUPS],
        }

        /// Fills `acts` for blocks `b0..b0 + nb` of every token. `SHIFT` is log2 of the
        /// weights' offset (3 for Q4_0's 8, 7 for Q8_0's 128).
        #[target_feature(enable = $feat)]
        #[inline]
        fn prepare_acts<const SHIFT: i32>(
            toks: &[[&[BlockQ8_0]; GROUP]; GROUPS],
            groups: usize,
            b0: usize,
            nb: usize,
            acts: &mut Acts32,
        ) {
            use $crate::dot::x86_64::gemm_common::blk;
            let z = _mm256_setzero_si256();
            for (g, group) in toks.iter().enumerate().take(groups) {
                for (t, row) in group.iter().enumerate() {
                    // SAFETY: `b0 + nb <= bpr == row.len()`.
                    let chunk = unsafe { row.get_unchecked(b0..b0 + nb) };
                    let blocks: [&BlockQ8_0; BLOCKS32] = core::array::from_fn(|i| {
                        // SAFETY: `min(i, nb - 1) < nb == chunk.len()`.
                        unsafe { blk(chunk, i.min(nb - 1)) }
                    });
                    let sums = act_sums(&blocks);
                    let seed = _mm256_sub_epi32(z, _mm256_slli_epi32::<SHIFT>(sums));
                    // SAFETY: `seed[g][t]` is 32 writable bytes; `storeu` has no alignment
                    // requirement.
                    unsafe { _mm256_storeu_si256(acts.seed[g][t].as_mut_ptr().cast(), seed) };
                    let dx = act_scales(chunk, &blocks);
                    // SAFETY: `dx[g][t]` is 32 writable bytes; `storeu` has no alignment
                    // requirement.
                    unsafe { _mm256_storeu_ps(acts.dx[g][t].as_mut_ptr(), dx) };
                }
            }
        }

        /// Writes the float tile of one row group (`ft[t]`, lane = row) to
        /// `out[(r0 + r) * nt + t0 + t]`.
        #[target_feature(enable = $feat)]
        #[inline]
        fn scatter(
            ft: &[$f32s; PASS_TOKENS],
            out: &mut [f32],
            r0: usize,
            nr: usize,
            t0: usize,
            nt: usize,
        ) {
            const { assert!(size_of::<$f32s>() == ROWS * size_of::<f32>()) };
            let (rows, toks) = ((nr - r0).min(ROWS), (nt - t0).min(PASS_TOKENS));
            for (t, v) in ft.iter().enumerate().take(toks) {
                let mut lanes = [0f32; ROWS];
                // SAFETY: `lanes` is `ROWS` writable floats, the size of a vector (asserted
                // above); `storeu` has no alignment requirement.
                unsafe { $store(lanes.as_mut_ptr(), *v) };
                for (r, &value) in lanes.iter().enumerate().take(rows) {
                    if let Some(o) = out.get_mut((r0 + r) * nt + t0 + t) {
                        *o = value;
                    }
                }
            }
        }

        /// The pass loop shared by Q4_0 and Q8_0: passes of up to `ROW_GROUPS` row groups
        /// by `PASS_TOKENS` tokens. Per chunk of `BLOCKS32` blocks, the activations' sums
        /// and scales are prepared once for all the pass's tokens, then each row group is
        /// repacked (`repack`) and multiplied by every token group (`micro`: the weights,
        /// the group's seeds and scales and token rows, the chunk's first block and length,
        /// the group's float accumulators).
        ///
        /// # Safety
        /// `bpr > 0`, `w.len() == nr * bpr`, `x.len() == nt * bpr`, `out.len() == nr * nt`.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn gemm32<W, const SHIFT: i32>(
            w: &[W],
            x: &[BlockQ8_0],
            bpr: usize,
            out: &mut [f32],
            repack: impl Fn(&[&[W]; ROWS], usize, usize, &mut Packed32),
            micro: impl Fn(
                &Packed32,
                &[[i32; BLOCKS32]; GROUP],
                &[[f32; BLOCKS32]; GROUP],
                &[&[BlockQ8_0]; GROUP],
                usize,
                usize,
                &mut [$f32s; GROUP],
            ),
        ) {
            use $crate::dot::x86_64::gemm_common::{
                prefetch_next_rows, prefetch_rows, row_set, token_set,
            };
            let (nr, nt) = (w.len() / bpr, x.len() / bpr);
            let mut pw = Packed32::new();
            let mut acts = Acts32 {
                seed: [[[0; BLOCKS32]; GROUP]; GROUPS],
                dx: [[[0.0; BLOCKS32]; GROUP]; GROUPS],
            };
            let mut ft = [[$zero(); PASS_TOKENS]; ROW_GROUPS];
            for r0 in (0..nr).step_by(ROWS * ROW_GROUPS) {
                let row_groups = (nr - r0).min(ROWS * ROW_GROUPS).div_ceil(ROWS);
                // SAFETY: every `(r0 + ROWS * k).min(nr - 1)` is below `nr`, and
                // `w.len() == nr * bpr` (this function's contract).
                let rows: [[&[W]; ROWS]; ROW_GROUPS] = core::array::from_fn(|k| unsafe {
                    row_set(w, bpr, (r0 + ROWS * k).min(nr - 1), nr)
                });
                for t0 in (0..nt).step_by(PASS_TOKENS) {
                    // SAFETY: `t0 < nt` and `x.len() == nt * bpr`.
                    let toks = unsafe { token_set(x, bpr, t0, nt) };
                    let groups = (nt - t0).min(PASS_TOKENS).div_ceil(GROUP);
                    for f in ft.iter_mut().take(row_groups) {
                        f.fill($zero());
                    }
                    for b0 in (0..bpr).step_by(BLOCKS32) {
                        let nb = (bpr - b0).min(BLOCKS32);
                        if b0 + BLOCKS32 >= bpr {
                            let next = r0 + ROWS * ROW_GROUPS;
                            prefetch_next_rows(w, bpr, next, ROWS * ROW_GROUPS, nr, 0, BLOCKS32);
                        }
                        prepare_acts::<SHIFT>(&toks, groups, b0, nb, &mut acts);
                        for (rg, ftr) in rows.iter().zip(ft.iter_mut()).take(row_groups) {
                            prefetch_rows(rg, b0 + BLOCKS32, BLOCKS32);
                            repack(rg, b0, nb, &mut pw);
                            let (ftg, _) = ftr.as_chunks_mut::<GROUP>();
                            for (g, fg) in ftg.iter_mut().enumerate().take(groups) {
                                micro(&pw, &acts.seed[g], &acts.dx[g], &toks[g], b0, nb, fg);
                            }
                        }
                    }
                    for (k, ftr) in ft.iter().enumerate().take(row_groups) {
                        scatter(ftr, out, r0 + ROWS * k, nr, t0, nt);
                    }
                }
            }
        }

        /// The pass loop of the k-quants: passes of one row group by `PASS_TOKENS` tokens;
        /// per super-block, repack the rows' blocks once (`repack`), then run the
        /// micro-kernel (`micro`) over the pass's token groups.
        ///
        /// # Safety
        /// `bpr > 0`, `w.len() == nr * bpr`, `x.len() == nt * bpr`, `out.len() == nr * nt`.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn gemm_k<W>(
            w: &[W],
            x: &[BlockQ8K],
            bpr: usize,
            out: &mut [f32],
            repack: impl Fn(&[&W; ROWS], &mut PackedK),
            micro: impl Fn(&PackedK, &[&BlockQ8K; GROUP], &mut [$f32s; GROUP]),
        ) {
            use core::array::from_fn;
            use $crate::dot::x86_64::gemm_common::{
                blk, prefetch_next_rows, prefetch_rows, row_set, token_set,
            };
            let (nr, nt) = (w.len() / bpr, x.len() / bpr);
            let mut pk = PackedK::new();
            for r0 in (0..nr).step_by(ROWS) {
                // SAFETY: `r0 < nr` and `w.len() == nr * bpr` (this function's contract).
                let rows: [&[W]; ROWS] = unsafe { row_set(w, bpr, r0, nr) };
                for t0 in (0..nt).step_by(PASS_TOKENS) {
                    // SAFETY: `t0 < nt` and `x.len() == nt * bpr`.
                    let toks: [[&[BlockQ8K]; GROUP]; GROUPS] = unsafe { token_set(x, bpr, t0, nt) };
                    let groups = (nt - t0).min(PASS_TOKENS).div_ceil(GROUP);
                    let mut ft = [$zero(); PASS_TOKENS];
                    for b in 0..bpr {
                        // SAFETY: `b < bpr`, the length of every row.
                        let blocks: [&W; ROWS] = from_fn(|r| unsafe { blk(rows[r], b) });
                        // Two super-blocks ahead, into the next pass's rows at the end.
                        match (b + 2).checked_sub(bpr) {
                            None => prefetch_rows(&rows, b + 2, 1),
                            Some(next_b) => {
                                prefetch_next_rows(w, bpr, r0 + ROWS, ROWS, nr, next_b, 1)
                            }
                        }
                        repack(&blocks, &mut pk);
                        let (ftg, _) = ft.as_chunks_mut::<GROUP>();
                        for (g, fg) in ftg.iter_mut().enumerate().take(groups) {
                            // SAFETY: `b < bpr`, the length of every token row.
                            let xb: [&BlockQ8K; GROUP] = from_fn(|t| unsafe { blk(toks[g][t], b) });
                            micro(&pk, &xb, fg);
                        }
                    }
                    scatter(&ft, out, r0, nr, t0, nt);
                }
            }
        }
    };
}
pub(super) use gemm_passes;
