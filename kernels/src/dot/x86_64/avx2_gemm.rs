//! Matrix–matrix (prefill) kernels of the `avx2` path: `out[r * nt + t] = dot(w row r,
//! x row t)` with AVX2 only (no AVX-512, no VNNI), each weight block unpacked once for
//! many tokens.
//!
//! # Layout: one weight row per i32 lane
//!
//! The same scheme as [`super::avx512_gemm`], on 256-bit registers: eight weight rows are
//! transposed ("repacked") into vectors whose i32 lane `r` holds four consecutive weight
//! values of row `r`, one unsigned byte each. `vpmaddubsw` multiplies such a vector by
//! four activation bytes of one token broadcast to every lane (`vpbroadcastd` from the
//! activation block) and adds adjacent products into i16 lanes; a lane pair never mixes
//! rows, tokens or blocks, so no horizontal reduction is needed anywhere. Several such
//! products are summed on i16 lanes while they provably fit (see "Overflow") and then
//! widened by one `vpmaddwd`, which for the k-quants also applies the sub-block scale
//! (both i16 halves of a lane carry the row's scale).
//!
//! # Tiles and register budget
//!
//! The micro-kernel covers 8 rows x [`GROUP`] = 4 tokens: four i16 accumulators, four
//! i32 (or, for Q8_0, four more i16) accumulators, the weight vector, the broadcast and
//! the constants fit the 16 ymm registers. Each token's float accumulator (lane = row)
//! lives in the pass's float tile and is updated once per block.
//!
//! Passes cover up to 64 rows (eight row groups; the Q4_0/Q8_0 activation sums of a chunk
//! are computed once and shared by all of them) by 128 tokens (each row group's repacked
//! chunk is shared by 32 token groups). The caller, [`crate::matmul`](mod@crate::matmul), hands out tiles of
//! exactly that size.
//!
//! This path decodes with the AVX2 dots, not with narrow (1- and 2-token) variants of
//! these kernels as the `avx512` path does: built the same way (micro-kernels generic over
//! the token group, entry points expanded once per group), they were measured slower than
//! the dots for one Q4_0 sequence (3B, 2 threads, Xeon: tg 7.55 against 8.21 tokens/s;
//! Q4_K_M 7.94 against 7.54; four streams 23.1 against 14.0).
//!
//! # Formats
//!
//! - **Q4_0**: nibbles 0..15; the `-8` offset is `-8 * sum(x)` per activation block,
//!   which seeds the block's i32 sum.
//! - **Q8_0**: a signed byte is split as `w + 128 = 16 * hi + lo` with `lo` and `hi`
//!   nibbles (0..15), so both halves go through `vpmaddubsw` without saturating, and the
//!   `-128 * sum(x)` term seeds the sum. This is exact for every byte, -128 included.
//! - **Q4_K / Q5_K / Q6_K**: unsigned values as in the AVX-512 kernels; each sub-block's
//!   i16 partial sums are widened and scaled by `vpmaddwd` against the scale pair, the mins
//!   (Q4_K/Q5_K) and the `-32` offset (Q6_K) come from the activations' `bsums` with one
//!   `vpmaddwd` per `bsums` pair.
//!
//! Each block then adds `f32(sumi) * (d_w * d_x)` (minus `f32(summ) * (dmin * d_x)`) to
//! its token's float accumulator, the scale product rounded as the reference rounds it.
//!
//! # Overflow
//!
//! `vpmaddubsw` pairs with activations in -128..127 are at most `2 * 15 * 128 = 3840` for
//! nibbles, `2 * 31 * 128 = 7936` for Q5_K and `2 * 63 * 128 = 16128` for Q6_K; the i16
//! sums therefore add at most 8 nibble products (30720), 4 Q5_K products (31744) or 2
//! Q6_K products (32256) before widening. The i32 sums are bounded as in the AVX-512
//! kernels (below `2^30`).
//!
//! # Shapes
//!
//! Any `nr, nt >= 1`: rows and tokens past the last repeat the last valid one and their
//! results are never written out. Nothing allocates; the buffers are on the stack (about
//! 40 KiB, most of it the float tile).

use core::arch::x86_64::*;
use core::array::from_fn;

use super::avx2::{load_16bit_x8, load_i8x32, load_u8x16, splat_u8, transpose_sum8};
use super::gemm_common::{BLOCKS32, blk, gemm_passes, piece};
use super::gemm_formats::{gemm_entry_points, gemm_repack};
use crate::formats::*;

/// Weight rows per register tile: one per i32 lane of a ymm register.
const ROWS: usize = 8;
/// Row groups per pass of the Q4_0/Q8_0 kernels (they share the activation sums).
const ROW_GROUPS: usize = 8;
/// Tokens per pass.
const PASS_TOKENS: usize = 128;
/// Tokens per register group of the micro-kernel.
const GROUP: usize = 4;
/// Groups per pass.
const GROUPS: usize = PASS_TOKENS / GROUP;

gemm_passes!("avx2,fma,f16c", __m256, _mm256_setzero_ps, _mm256_storeu_ps);

/// Four bytes (chunk `j` of a block's values) as an i32 broadcast to every lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn bcast4(q: &[i8], j: usize) -> __m256i {
    let (c, _) = q.as_chunks::<4>();
    _mm256_set1_epi32(i32::from_le_bytes(c[j].map(|b| b as u8)))
}

/// Two consecutive `bsums` (pair `j`) as an i32 broadcast to every lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn bcast_bsums(b: &BlockQ8K, j: usize) -> __m256i {
    let (c, _) = b.bsums.as_chunks::<2>();
    let [lo, hi] = c[j];
    _mm256_set1_epi32(i32::from(lo as u16) | (i32::from(hi) << 16))
}

/// Eight f16 scales (one per row) as f32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn f16x8(h: [f16; ROWS]) -> __m256 {
    _mm256_cvtph_ps(load_16bit_x8(&h))
}

/// The 16-byte pieces `p[r]` of the 8 rows, transposed: lane `r` of output `j` is bytes
/// `4j..4j + 4` of `p[r]` (rows `i` and `i + 4` in the two 128-bit lanes of input `i`,
/// then a 4x4 dword transpose within each 128-bit lane, which leaves the rows in order).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn transpose8x4(p: [&[u8; 16]; ROWS]) -> [__m256i; 4] {
    let pair = |i: usize| _mm256_set_m128i(load_u8x16(p[i + 4]), load_u8x16(p[i]));
    let (a, b, c, d) = (pair(0), pair(1), pair(2), pair(3));
    let ab_lo = _mm256_unpacklo_epi32(a, b);
    let ab_hi = _mm256_unpackhi_epi32(a, b);
    let cd_lo = _mm256_unpacklo_epi32(c, d);
    let cd_hi = _mm256_unpackhi_epi32(c, d);
    [
        _mm256_unpacklo_epi64(ab_lo, cd_lo),
        _mm256_unpackhi_epi64(ab_lo, cd_lo),
        _mm256_unpacklo_epi64(ab_hi, cd_hi),
        _mm256_unpackhi_epi64(ab_hi, cd_hi),
    ]
}

// ------------------------------------------------------------------ Q4_0 and Q8_0

/// A chunk of up to eight 32-value blocks of 8 rows, repacked: block `i`, values
/// `4j..4j + 4` in `q[8i + j]`; for Q8_0 `q` holds the low nibbles and `hi` the high
/// nibbles plus 8.
struct Packed32 {
    q: [__m256i; 8 * BLOCKS32],
    hi: [__m256i; 8 * BLOCKS32],
    d: [__m256; BLOCKS32],
}

impl Packed32 {
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn new() -> Packed32 {
        let z = _mm256_setzero_si256();
        Packed32 {
            q: [z; 8 * BLOCKS32],
            hi: [z; 8 * BLOCKS32],
            d: [_mm256_setzero_ps(); BLOCKS32],
        }
    }
}

/// The sums of the eight activation blocks' values, one per lane (for the seeds of
/// `prepare_acts`): `vpmaddubsw` by ones and `vpmaddwd` by ones per block, then a
/// transposing reduction.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn act_sums(blocks: &[&BlockQ8_0; BLOCKS32]) -> __m256i {
    let ones8 = splat_u8(1);
    let ones16 = _mm256_set1_epi16(1);
    transpose_sum8(from_fn(|i| {
        let pairs = _mm256_maddubs_epi16(ones8, load_i8x32(&blocks[i].qs));
        _mm256_madd_epi16(pairs, ones16)
    }))
}

/// The eight activation blocks' scales as f32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn act_scales(_chunk: &[BlockQ8_0], blocks: &[&BlockQ8_0; BLOCKS32]) -> __m256 {
    f16x8(blocks.map(|b| b.d))
}

/// Q4_0 / Q8_0 micro-kernel: 8 rows x 4 tokens over the chunk's blocks, into `ft`.
/// `SPLIT` is set for Q8_0 (two nibble halves per value).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
#[allow(clippy::too_many_arguments)]
fn micro32<const SPLIT: bool>(
    pw: &Packed32,
    seed: &[[i32; BLOCKS32]; GROUP],
    dx: &[[f32; BLOCKS32]; GROUP],
    toks: &[&[BlockQ8_0]; GROUP],
    b0: usize,
    nb: usize,
    ft: &mut [__m256; GROUP],
) {
    let ones16 = _mm256_set1_epi16(1);
    let sixteen16 = _mm256_set1_epi16(16);
    for i in 0..nb.min(BLOCKS32) {
        // SAFETY: `b0 + i < b0 + nb <= bpr == row.len()`.
        let xb: [&BlockQ8_0; GROUP] = from_fn(|t| unsafe { blk(toks[t], b0 + i) });
        let z = _mm256_setzero_si256();
        let mut lo = [z; GROUP];
        let mut hi = [z; GROUP];
        for j in 0..8 {
            let wl = pw.q[8 * i + j];
            for t in 0..GROUP {
                let x = bcast4(&xb[t].qs, j);
                lo[t] = _mm256_add_epi16(lo[t], _mm256_maddubs_epi16(wl, x));
                if SPLIT {
                    let wh = pw.hi[8 * i + j];
                    hi[t] = _mm256_add_epi16(hi[t], _mm256_maddubs_epi16(wh, x));
                }
            }
        }
        for t in 0..GROUP {
            let mut acc = _mm256_add_epi32(
                _mm256_set1_epi32(seed[t][i]),
                _mm256_madd_epi16(lo[t], ones16),
            );
            if SPLIT {
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(hi[t], sixteen16));
            }
            let s = _mm256_mul_ps(pw.d[i], _mm256_set1_ps(dx[t][i]));
            ft[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), s, ft[t]);
        }
    }
}

/// Repacks blocks `b0..b0 + nb` of 8 Q4_0 rows (nibbles as bytes 0..15).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn repack_q4_0(rows: &[&[BlockQ4_0]; ROWS], b0: usize, nb: usize, pw: &mut Packed32) {
    let m = splat_u8(0x0F);
    for i in 0..nb.min(BLOCKS32) {
        // SAFETY: `b0 + i < bpr`, the length of every row.
        let blocks: [&BlockQ4_0; ROWS] = from_fn(|r| unsafe { blk(rows[r], b0 + i) });
        let cols = transpose8x4(blocks.map(|b| &b.qs));
        for (j, c) in cols.into_iter().enumerate() {
            pw.q[8 * i + j] = _mm256_and_si256(c, m);
            pw.q[8 * i + 4 + j] = _mm256_and_si256(_mm256_srli_epi16::<4>(c), m);
        }
        pw.d[i] = f16x8(blocks.map(|b| b.d));
    }
}

/// Repacks blocks `b0..b0 + nb` of 8 Q8_0 rows as nibbles: `w + 128 = 16 * hi + lo`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn repack_q8_0(rows: &[&[BlockQ8_0]; ROWS], b0: usize, nb: usize, pw: &mut Packed32) {
    let (flip, m) = (splat_u8(0x80), splat_u8(0x0F));
    for i in 0..nb.min(BLOCKS32) {
        // SAFETY: `b0 + i < bpr`, the length of every row.
        let blocks: [&BlockQ8_0; ROWS] = from_fn(|r| unsafe { blk(rows[r], b0 + i) });
        let bytes: [&[u8; 32]; ROWS] = blocks.map(|b| bytemuck::cast_ref(&b.qs));
        for half in 0..2 {
            let cols = transpose8x4(bytes.map(|b| piece(b, half)));
            for (j, c) in cols.into_iter().enumerate() {
                let u = _mm256_xor_si256(c, flip);
                pw.q[8 * i + 4 * half + j] = _mm256_and_si256(u, m);
                pw.hi[8 * i + 4 * half + j] = _mm256_and_si256(_mm256_srli_epi16::<4>(u), m);
            }
        }
        pw.d[i] = f16x8(blocks.map(|b| b.d));
    }
}

// ------------------------------------------------------------------ k-quants

/// One super-block of 8 rows, repacked: values `4c..4c + 4` in `q[c]`.
struct PackedK {
    q: [__m256i; 64],
    /// Sub-block scales as i16 pairs (the scale in both halves of the lane).
    sc: [__m256i; 16],
    /// Per `bsums` pair: Q4_K/Q5_K `(min_j, min_j)`, Q6_K `(-32 scale_2j, -32 scale_2j+1)`.
    pairs: [__m256i; 8],
    d: __m256,
    dmin: __m256,
}

impl PackedK {
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn new() -> PackedK {
        let z = _mm256_setzero_si256();
        PackedK {
            q: [z; 64],
            sc: [z; 16],
            pairs: [z; 8],
            d: _mm256_setzero_ps(),
            dmin: _mm256_setzero_ps(),
        }
    }
}

/// `v` (i32 lanes within i16 range) in both i16 halves of each lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn twice(v: __m256i) -> __m256i {
    _mm256_or_si256(
        _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF)),
        _mm256_slli_epi32::<16>(v),
    )
}

/// The Q4_K/Q5_K scales and mins of 8 blocks from their transposed 12 scale bytes (the
/// 6-bit unpacking of `scale_min_k4` on all rows at once), and `d`, `dmin`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn k4_meta(head: [&[u8; 16]; ROWS], d: [f16; ROWS], dmin: [f16; ROWS], pk: &mut PackedK) {
    let [_, s0, s1, s2] = transpose8x4(head);
    let (m6, m4, top2) = (splat_u8(0x3F), splat_u8(0x0F), splat_u8(0x30));
    let sc_lo = _mm256_and_si256(s0, m6);
    let mn_lo = _mm256_and_si256(s1, m6);
    let sc_hi = _mm256_or_si256(
        _mm256_and_si256(s2, m4),
        _mm256_and_si256(_mm256_srli_epi16::<2>(s0), top2),
    );
    let mn_hi = _mm256_or_si256(
        _mm256_and_si256(_mm256_srli_epi16::<4>(s2), m4),
        _mm256_and_si256(_mm256_srli_epi16::<2>(s1), top2),
    );
    let byte = _mm256_set1_epi32(0xFF);
    macro_rules! lane_byte {
        ($v:expr, $j:literal) => {
            twice(_mm256_and_si256(_mm256_srli_epi32::<{ 8 * $j }>($v), byte))
        };
    }
    pk.sc[0] = lane_byte!(sc_lo, 0);
    pk.sc[1] = lane_byte!(sc_lo, 1);
    pk.sc[2] = lane_byte!(sc_lo, 2);
    pk.sc[3] = lane_byte!(sc_lo, 3);
    pk.sc[4] = lane_byte!(sc_hi, 0);
    pk.sc[5] = lane_byte!(sc_hi, 1);
    pk.sc[6] = lane_byte!(sc_hi, 2);
    pk.sc[7] = lane_byte!(sc_hi, 3);
    pk.pairs[0] = lane_byte!(mn_lo, 0);
    pk.pairs[1] = lane_byte!(mn_lo, 1);
    pk.pairs[2] = lane_byte!(mn_lo, 2);
    pk.pairs[3] = lane_byte!(mn_lo, 3);
    pk.pairs[4] = lane_byte!(mn_hi, 0);
    pk.pairs[5] = lane_byte!(mn_hi, 1);
    pk.pairs[6] = lane_byte!(mn_hi, 2);
    pk.pairs[7] = lane_byte!(mn_hi, 3);
    pk.d = f16x8(d);
    pk.dmin = f16x8(dmin);
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn repack_q4_k(blocks: &[&BlockQ4K; ROWS], pk: &mut PackedK) {
    k4_nibbles(blocks.map(|b| &b.qs), &mut pk.q);
    let head = blocks.map(|b| piece(bytemuck::cast_ref::<_, [u8; 144]>(b), 0));
    k4_meta(head, blocks.map(|b| b.d), blocks.map(|b| b.dmin), pk);
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn repack_q5_k(blocks: &[&BlockQ5K; ROWS], pk: &mut PackedK) {
    k4_nibbles(blocks.map(|b| &b.qs), &mut pk.q);
    let h = q5_k_high_bits(blocks);
    // qh byte l, bit s: the fifth bit of value l of sub-block s, moved to bit 4.
    let sixteen = splat_u8(16);
    for s in 0..8 {
        let bit = splat_u8(1 << s);
        for (j, &hj) in h.iter().enumerate() {
            let set = _mm256_cmpeq_epi8(_mm256_and_si256(hj, bit), bit);
            pk.q[8 * s + j] = _mm256_or_si256(pk.q[8 * s + j], _mm256_and_si256(set, sixteen));
        }
    }
    let head = blocks.map(|b| piece(bytemuck::cast_ref::<_, [u8; 176]>(b), 0));
    k4_meta(head, blocks.map(|b| b.d), blocks.map(|b| b.dmin), pk);
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn repack_q6_k(blocks: &[&BlockQ6K; ROWS], pk: &mut PackedK) {
    q6_k_values(blocks, &mut pk.q);
    let sc = q6_k_scales(blocks);
    pk.pairs = q6_k_pairs(&sc);
    for (j, &s) in sc.iter().enumerate() {
        pk.sc[j] = twice(s);
    }
    pk.d = f16x8(blocks.map(|b| b.d));
}

/// The exact `sum_s scale_s * sum(q * x)` of 8 rows x 4 tokens over `SUB` sub-blocks of
/// `64 / SUB` four-byte chunks, summing `PART` chunks on i16 lanes before each widening.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn k_sums<const SUB: usize, const PART: usize>(
    pk: &PackedK,
    xb: &[&BlockQ8K; GROUP],
) -> [__m256i; GROUP] {
    let per = 64 / SUB;
    let z = _mm256_setzero_si256();
    let mut sumi = [z; GROUP];
    for s in 0..SUB {
        for p in 0..per / PART {
            let mut acc = [z; GROUP];
            for j in 0..PART {
                let c = per * s + PART * p + j;
                let wc = pk.q[c];
                for t in 0..GROUP {
                    let prod = _mm256_maddubs_epi16(wc, bcast4(&xb[t].qs, c));
                    acc[t] = _mm256_add_epi16(acc[t], prod);
                }
            }
            for t in 0..GROUP {
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(acc[t], pk.sc[s]));
            }
        }
    }
    sumi
}

/// `acc + sum_j pairs_j . (bsums[2j], bsums[2j + 1])` per token.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn bsums_term(
    pk: &PackedK,
    xb: &[&BlockQ8K; GROUP],
    mut acc: [__m256i; GROUP],
) -> [__m256i; GROUP] {
    for j in 0..8 {
        for t in 0..GROUP {
            let m = _mm256_madd_epi16(pk.pairs[j], bcast_bsums(xb[t], j));
            acc[t] = _mm256_add_epi32(acc[t], m);
        }
    }
    acc
}

/// Q4_K/Q5_K micro-kernel (`PART`: chunks summed on i16 lanes).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn micro_k4<const PART: usize>(pk: &PackedK, xb: &[&BlockQ8K; GROUP], ft: &mut [__m256; GROUP]) {
    let sumi = k_sums::<8, PART>(pk, xb);
    let summ = bsums_term(pk, xb, [_mm256_setzero_si256(); GROUP]);
    for t in 0..GROUP {
        let dx = _mm256_set1_ps(xb[t].d);
        let f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[t]), _mm256_mul_ps(pk.d, dx), ft[t]);
        ft[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(summ[t]), _mm256_mul_ps(pk.dmin, dx), f);
    }
}

/// Q6_K micro-kernel.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn micro_q6_k(pk: &PackedK, xb: &[&BlockQ8K; GROUP], ft: &mut [__m256; GROUP]) {
    let sumi = bsums_term(pk, xb, k_sums::<16, 2>(pk, xb));
    for t in 0..GROUP {
        let s = _mm256_mul_ps(pk.d, _mm256_set1_ps(xb[t].d));
        ft[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[t]), s, ft[t]);
    }
}

gemm_repack! {
    features: "avx2,fma,f16c",
    vector: __m256i,
    transpose: transpose8x4,
    splat8: splat_u8,
    zero: _mm256_setzero_si256,
    set1_32: _mm256_set1_epi32,
    and: _mm256_and_si256,
    or: _mm256_or_si256,
    sub32: _mm256_sub_epi32,
    srli16: _mm256_srli_epi16,
    slli16: _mm256_slli_epi16,
    srai32: _mm256_srai_epi32,
    slli32: _mm256_slli_epi32,
}

gemm_entry_points! {
    features: "avx2,fma,f16c",
    needs: "AVX2, FMA and F16C",
    micro: {
        q4_0: micro32::<false>,
        // `w + 128 = 16 * hi + lo`, so `sum(w * x) = sum(lo * x) + 16 * sum(hi * x) - 128 * sum(x)`.
        q8_0: micro32::<true>,
        q4_k: micro_k4::<8>,
        q5_k: micro_k4::<4>,
        q6_k: micro_q6_k,
    },
}
