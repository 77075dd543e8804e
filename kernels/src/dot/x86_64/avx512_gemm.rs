//! Matrix–matrix kernels of the `avx512` path: `out[r * nt + t] = dot(w row r, x row t)`
//! with AVX-512 VNNI, each weight block unpacked once for all the tokens of a tile. They
//! serve prefill (module [`wide`]) and decode (modules [`one`], [`two`], [`four`]: the
//! same per-token arithmetic in register groups of 1, 2 and 4 tokens, so a decode token's
//! result is the same bits whether it is multiplied alone, with other sequences' tokens or
//! in a prompt tile).
//!
//! # Layout: one weight row per i32 lane
//!
//! A pass covers [`ROWS`] = 16 weight rows and up to 128 tokens (the
//! caller, [`crate::matmul`](mod@crate::matmul), hands out exactly such tiles). The 16 rows' weights are
//! transposed ("repacked") into vectors whose i32 lane `r` holds four consecutive weight
//! bytes of row `r`, unpacked to one byte per value: for a 256-value chunk of the rows,
//! 64 vectors, 4 KiB, which stay in L1. One `vpdpbusd` then multiplies such a vector by
//! four activation bytes of one token broadcast to every lane (an embedded `{1to16}`
//! broadcast straight from the activation block, no shuffles) and adds the four products
//! into each row's lane: 64 multiply-adds per instruction, with no horizontal reduction
//! anywhere, because a lane never mixes rows, tokens or blocks. Block and sub-block sums
//! come out exact, one per lane, ready for their scales.
//!
//! The repacking costs a few instructions per 16 bytes of weights and is shared by all
//! the tokens of the pass; each activation block is read straight from its row.
//!
//! # Register tile: 16 rows x 8 tokens
//!
//! The wide micro-kernel keeps 8 tokens' accumulators in registers: per four
//! weight bytes, one load of the repacked vector feeds eight `vpdpbusd` (eight
//! independent dependency chains hide the instruction's latency). With the per-token
//! float (or, for the k-quants, i32 sub-block) accumulators that is at most 8 + 8 + 8 of
//! the 32 zmm registers, leaving room for the weight vector, scales and broadcasts, so
//! nothing spills. The float accumulators of all the tokens of a pass live in a tile (one
//! zmm per token, lane = row) that is written back once per pass.
//!
//! The narrow kernels run the same micro-kernels with 1, 2 or 4 tokens per group (and
//! per pass): with one token, a repacked vector feeds one `vpdpbusd`, and the repacking
//! (a transpose per 16 bytes of each row) becomes most of the work, which at about five
//! bytes of weights per instruction still leaves a decode step bound by memory.
//!
//! # Formats
//!
//! `vpdpbusd` multiplies unsigned bytes (the weights) by signed bytes (the activations):
//!
//! - **Q4_0**: nibbles 0..15 as they are; `sum((q - 8) * x) = sum(q * x) - 8 * sum(x)`,
//!   and `sum(x)` of each activation block (computed once per pass for 8 blocks at a time
//!   and all tokens) seeds the accumulator as `-8 * sum(x)`.
//! - **Q8_0**: weights flipped to `w + 128` (unsigned, exact even for -128); the seed is
//!   `-128 * sum(x)`.
//! - **Q4_K / Q5_K**: nibbles (plus Q5_K's fifth bit, added with a byte mask) are
//!   unsigned already. Each 32-value sub-block's sum is multiplied by its 6-bit scale
//!   (`vpmulld`, the scales of the 16 rows in one vector) into a per-token i32 sum; the
//!   mins term `sum_j min_j * (bsums[2j] + bsums[2j+1])` is eight `vpdpwssd` of
//!   broadcast `bsums` pairs against the rows' mins.
//! - **Q6_K**: values 0..63 unsigned; 16-value sub-blocks with signed scales, and the
//!   `-32` offset is eight `vpdpwssd` of the `bsums` against `-32 * scale` pairs,
//!   accumulated into the same i32 sum, so it is exactly the reference's `sumi`.
//!
//! Every block (super-block) then adds `f32(sumi) * (d_w * d_x)` to its token's float
//! accumulator with one FMA, the scale product rounded as the reference rounds it (Q4_K and
//! Q5_K also subtract `f32(summ) * (dmin * d_x)`), so each output is the scalar
//! reference's sum of the same per-block terms, in the same block order.
//!
//! # Overflow
//!
//! `vpdpbusd`/`vpdpwssd` accumulate in i32 without saturation; the largest sums are
//! Q6_K's (`128 * 63 * 128 * 256` plus the offset term `32 * 128 * 2048 * 16`, below
//! `2^30`) and Q5_K's (`63 * 31 * 128 * 256 < 2^26`).
//!
//! # Shapes
//!
//! Any `nr, nt >= 1`: rows past the last (in a pass of fewer than 16) and tokens past the
//! last (in a group of fewer than 8) repeat the last valid row or token, and their results
//! are never written out. Nothing allocates; the buffers are on the stack (about 14 KiB).

use core::arch::x86_64::*;
use core::array::from_fn;

use super::avx2::{load_16bit_x8, load_i8x32, load_u8x16, transpose_sum8};
use super::gemm_common::{BLOCKS32, blk, gemm_passes, piece};
use super::gemm_formats::{gemm_entry_points, gemm_repack};
use crate::formats::*;

/// Weight rows per register tile: one per i32 lane of a zmm register.
const ROWS: usize = 16;

/// Four bytes (`chunk` `j` of a block's values) as an i32 broadcast to every lane.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn bcast4(q: &[i8], j: usize) -> __m512i {
    let (c, _) = q.as_chunks::<4>();
    _mm512_set1_epi32(i32::from_le_bytes(c[j].map(|b| b as u8)))
}

/// Two consecutive `bsums` (pair `j`) as an i32 broadcast to every lane.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn bcast_bsums(b: &BlockQ8K, j: usize) -> __m512i {
    let (c, _) = b.bsums.as_chunks::<2>();
    let [lo, hi] = c[j];
    _mm512_set1_epi32(i32::from(lo as u16) | (i32::from(hi) << 16))
}

/// Sixteen f16 scales (one per row) as f32 lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn f16x16(h: [f16; ROWS]) -> __m512 {
    let (c, _) = h.as_chunks::<8>();
    let v = _mm256_set_m128i(load_16bit_x8(&c[1]), load_16bit_x8(&c[0]));
    _mm512_cvtph_ps(v)
}

/// `_mm512_set1_epi8` for a byte written as `u8`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn splat8(v: u8) -> __m512i {
    _mm512_set1_epi8(v as i8)
}

/// The 16-byte pieces `p[r]` of the 16 rows, transposed: lane `r` of output `j` is bytes
/// `4j..4j + 4` of `p[r]`. Four 128-bit loads per input vector (rows `i, i+4, i+8, i+12`
/// in its four 128-bit lanes), then a 4x4 dword transpose within each 128-bit lane, which
/// puts row `4 * lane + i` at position `4 * lane + i`: the natural order.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn transpose16x4(p: [&[u8; 16]; ROWS]) -> [__m512i; 4] {
    let quad = |i: usize| {
        let v = _mm512_castsi128_si512(load_u8x16(p[i]));
        let v = _mm512_inserti32x4::<1>(v, load_u8x16(p[i + 4]));
        let v = _mm512_inserti32x4::<2>(v, load_u8x16(p[i + 8]));
        _mm512_inserti32x4::<3>(v, load_u8x16(p[i + 12]))
    };
    let (a, b, c, d) = (quad(0), quad(1), quad(2), quad(3));
    let ab_lo = _mm512_unpacklo_epi32(a, b);
    let ab_hi = _mm512_unpackhi_epi32(a, b);
    let cd_lo = _mm512_unpacklo_epi32(c, d);
    let cd_hi = _mm512_unpackhi_epi32(c, d);
    [
        _mm512_unpacklo_epi64(ab_lo, cd_lo),
        _mm512_unpackhi_epi64(ab_lo, cd_lo),
        _mm512_unpacklo_epi64(ab_hi, cd_hi),
        _mm512_unpackhi_epi64(ab_hi, cd_hi),
    ]
}

// ------------------------------------------------------------------ Q4_0 and Q8_0

/// A chunk of up to eight 32-value blocks of the 16 rows, repacked.
struct Packed32 {
    /// Block `i`, bytes `4j..4j + 4`: `q[8i + j]`, lane = row.
    q: [__m512i; 8 * BLOCKS32],
    /// Block `i`'s weight scales, lane = row.
    d: [__m512; BLOCKS32],
}

impl Packed32 {
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    #[inline]
    fn new() -> Packed32 {
        Packed32 {
            q: [_mm512_setzero_si512(); 8 * BLOCKS32],
            d: [_mm512_setzero_ps(); BLOCKS32],
        }
    }
}

/// The sums of the eight activation blocks' values, one per lane (for the seeds of
/// `prepare_acts`): one `vpdpbusd` by ones per block, then a transposing reduction.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn act_sums(blocks: &[&BlockQ8_0; BLOCKS32]) -> __m256i {
    let ones = _mm256_set1_epi8(1);
    let z = _mm256_setzero_si256();
    transpose_sum8(from_fn(|i| {
        _mm256_dpbusd_epi32(z, ones, load_i8x32(&blocks[i].qs))
    }))
}

/// The eight activation blocks' scales as f32 lanes: gathered straight from the blocks
/// when they are a whole chunk (`chunk`, eight consecutive blocks), else from `blocks`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn act_scales(chunk: &[BlockQ8_0], blocks: &[&BlockQ8_0; BLOCKS32]) -> __m256 {
    const { assert!(size_of::<BlockQ8_0>() == 34) };
    if let Ok(run) = <&[BlockQ8_0; BLOCKS32]>::try_from(chunk) {
        // The dword at the start of each block (its `d` and two quants), low halves kept.
        let idx = _mm256_setr_epi32(0, 34, 68, 102, 136, 170, 204, 238);
        let base = run.as_ptr().cast::<i32>();
        // SAFETY: byte `34 * i` of `run` starts block `i` (34-byte blocks), so the eight
        // gathered dwords are the first four bytes of the eight blocks of `run`.
        let d = unsafe { _mm256_i32gather_epi32::<1>(base, idx) };
        _mm256_cvtph_ps(_mm256_cvtepi32_epi16(d))
    } else {
        _mm256_cvtph_ps(load_16bit_x8(&blocks.map(|b| b.d)))
    }
}

/// The micro-kernel shared by Q4_0 and Q8_0: 16 rows x 8 tokens over the chunk's blocks,
/// added into the tokens' float accumulators `ft`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn micro32<const G: usize>(
    pw: &Packed32,
    seed: &[[i32; BLOCKS32]; G],
    dx: &[[f32; BLOCKS32]; G],
    toks: &[&[BlockQ8_0]; G],
    b0: usize,
    nb: usize,
    ft: &mut [__m512; G],
) {
    let mut fa = *ft;
    for i in 0..nb.min(BLOCKS32) {
        // SAFETY: `b0 + i < b0 + nb <= bpr == row.len()`.
        let xb: [&BlockQ8_0; G] = from_fn(|t| unsafe { blk(toks[t], b0 + i) });
        let mut acc: [__m512i; G] = from_fn(|t| _mm512_set1_epi32(seed[t][i]));
        for j in 0..8 {
            let wj = pw.q[8 * i + j];
            for t in 0..G {
                acc[t] = _mm512_dpbusd_epi32(acc[t], wj, bcast4(&xb[t].qs, j));
            }
        }
        for t in 0..G {
            let s = _mm512_mul_ps(pw.d[i], _mm512_set1_ps(dx[t][i]));
            fa[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[t]), s, fa[t]);
        }
    }
    *ft = fa;
}

/// Repacks blocks `b0..b0 + nb` of 16 Q4_0 rows: nibbles as bytes 0..15, low nibbles
/// (values 0..16) in `q[8i..8i + 4]`, high nibbles (values 16..32) in `q[8i + 4..8i + 8]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn repack_q4_0(rows: &[&[BlockQ4_0]; ROWS], b0: usize, nb: usize, pw: &mut Packed32) {
    let m = splat8(0x0F);
    for i in 0..nb.min(BLOCKS32) {
        // SAFETY: `b0 + i < bpr`, the length of every row.
        let blocks: [&BlockQ4_0; ROWS] = from_fn(|r| unsafe { blk(rows[r], b0 + i) });
        let cols = transpose16x4(blocks.map(|b| &b.qs));
        for (j, c) in cols.into_iter().enumerate() {
            pw.q[8 * i + j] = _mm512_and_si512(c, m);
            pw.q[8 * i + 4 + j] = _mm512_and_si512(_mm512_srli_epi16::<4>(c), m);
        }
        pw.d[i] = f16x16(blocks.map(|b| b.d));
    }
}

/// Repacks blocks `b0..b0 + nb` of 16 Q8_0 rows as `w + 128` (unsigned).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn repack_q8_0(rows: &[&[BlockQ8_0]; ROWS], b0: usize, nb: usize, pw: &mut Packed32) {
    let flip = splat8(0x80);
    for i in 0..nb.min(BLOCKS32) {
        // SAFETY: `b0 + i < bpr`, the length of every row.
        let blocks: [&BlockQ8_0; ROWS] = from_fn(|r| unsafe { blk(rows[r], b0 + i) });
        let bytes: [&[u8; 32]; ROWS] = blocks.map(|b| bytemuck::cast_ref(&b.qs));
        for half in 0..2 {
            let cols = transpose16x4(bytes.map(|b| piece(b, half)));
            for (j, c) in cols.into_iter().enumerate() {
                pw.q[8 * i + 4 * half + j] = _mm512_xor_si512(c, flip);
            }
        }
        pw.d[i] = f16x16(blocks.map(|b| b.d));
    }
}

// ------------------------------------------------------------------ k-quants

/// One super-block of the 16 rows, repacked.
struct PackedK {
    /// Values `4c..4c + 4` of the super-block: `q[c]`, lane = row.
    q: [__m512i; 64],
    /// Sub-block scales as i32 lanes (8 for Q4_K/Q5_K, 16 for Q6_K).
    sc: [__m512i; 16],
    /// Per `bsums` pair `j`: the two i16 factors (Q4_K/Q5_K: `min_j` twice; Q6_K:
    /// `-32 * scale_2j`, `-32 * scale_2j+1`).
    pairs: [__m512i; 8],
    d: __m512,
    dmin: __m512,
}

impl PackedK {
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    #[inline]
    fn new() -> PackedK {
        PackedK {
            q: [_mm512_setzero_si512(); 64],
            sc: [_mm512_setzero_si512(); 16],
            pairs: [_mm512_setzero_si512(); 8],
            d: _mm512_setzero_ps(),
            dmin: _mm512_setzero_ps(),
        }
    }
}

/// The Q4_K/Q5_K `d`, `dmin`, scales and mins of 16 blocks, from their first 16 bytes
/// (`d`, `dmin`, the 12 packed scale bytes) transposed: dword 0 of a row is `d | dmin <<
/// 16`, dwords 1..3 are the scale bytes `q[0..4]`, `q[4..8]`, `q[8..12]`. The 6-bit
/// unpacking of `scale_min_k4` then runs on all 16 rows at once, four sub-blocks per
/// vector (one per byte of each lane).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn k4_meta(head: [&[u8; 16]; ROWS], pk: &mut PackedK) {
    let [dd, s0, s1, s2] = transpose16x4(head);
    pk.d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dd));
    pk.dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(dd)));
    let (m6, m4, top2) = (splat8(0x3F), splat8(0x0F), splat8(0x30));
    // Bytes j of each lane: scale / min of sub-block j (lo) and j + 4 (hi).
    let sc_lo = _mm512_and_si512(s0, m6);
    let mn_lo = _mm512_and_si512(s1, m6);
    let sc_hi = _mm512_or_si512(
        _mm512_and_si512(s2, m4),
        _mm512_and_si512(_mm512_srli_epi16::<2>(s0), top2),
    );
    let mn_hi = _mm512_or_si512(
        _mm512_and_si512(_mm512_srli_epi16::<4>(s2), m4),
        _mm512_and_si512(_mm512_srli_epi16::<2>(s1), top2),
    );
    let byte = _mm512_set1_epi32(0xFF);
    let pair = |m: __m512i| _mm512_or_si512(m, _mm512_slli_epi32::<16>(m));
    macro_rules! lane_byte {
        ($v:expr, $j:literal) => {
            _mm512_and_si512(_mm512_srli_epi32::<{ 8 * $j }>($v), byte)
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
    pk.pairs[0] = pair(lane_byte!(mn_lo, 0));
    pk.pairs[1] = pair(lane_byte!(mn_lo, 1));
    pk.pairs[2] = pair(lane_byte!(mn_lo, 2));
    pk.pairs[3] = pair(lane_byte!(mn_lo, 3));
    pk.pairs[4] = pair(lane_byte!(mn_hi, 0));
    pk.pairs[5] = pair(lane_byte!(mn_hi, 1));
    pk.pairs[6] = pair(lane_byte!(mn_hi, 2));
    pk.pairs[7] = pair(lane_byte!(mn_hi, 3));
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn repack_q4_k(blocks: &[&BlockQ4K; ROWS], pk: &mut PackedK) {
    k4_nibbles(blocks.map(|b| &b.qs), &mut pk.q);
    k4_meta(
        blocks.map(|b| piece(bytemuck::cast_ref::<_, [u8; 144]>(b), 0)),
        pk,
    );
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn repack_q5_k(blocks: &[&BlockQ5K; ROWS], pk: &mut PackedK) {
    k4_nibbles(blocks.map(|b| &b.qs), &mut pk.q);
    // qh byte l, bit s: the fifth bit of value l of sub-block s.
    let h = q5_k_high_bits(blocks);
    let sixteen = splat8(16);
    for s in 0..8 {
        let bit = splat8(1 << s);
        for (j, &hj) in h.iter().enumerate() {
            let k = _mm512_test_epi8_mask(hj, bit);
            let q = pk.q[8 * s + j];
            pk.q[8 * s + j] = _mm512_mask_add_epi8(q, k, q, sixteen);
        }
    }
    k4_meta(
        blocks.map(|b| piece(bytemuck::cast_ref::<_, [u8; 176]>(b), 0)),
        pk,
    );
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn repack_q6_k(blocks: &[&BlockQ6K; ROWS], pk: &mut PackedK) {
    q6_k_values(blocks, &mut pk.q);
    pk.sc = q6_k_scales(blocks);
    pk.pairs = q6_k_pairs(&pk.sc);
    pk.d = f16x16(blocks.map(|b| b.d));
}

/// `SUB` sub-blocks of `64 / SUB` four-byte chunks each: the exact `sum_s scale_s *
/// sum(q * x)` of 16 rows x 8 tokens.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn k_sums<const SUB: usize, const G: usize>(pk: &PackedK, xb: &[&BlockQ8K; G]) -> [__m512i; G] {
    let per = 64 / SUB;
    let z = _mm512_setzero_si512();
    let mut sumi = [z; G];
    for s in 0..SUB {
        let mut acc = [z; G];
        for j in 0..per {
            let c = per * s + j;
            let wc = pk.q[c];
            for t in 0..G {
                acc[t] = _mm512_dpbusd_epi32(acc[t], wc, bcast4(&xb[t].qs, c));
            }
        }
        for t in 0..G {
            sumi[t] = _mm512_add_epi32(sumi[t], _mm512_mullo_epi32(acc[t], pk.sc[s]));
        }
    }
    sumi
}

/// `acc + sum_j pairs_j . (bsums[2j], bsums[2j + 1])` per token.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn bsums_term<const G: usize>(
    pk: &PackedK,
    xb: &[&BlockQ8K; G],
    mut acc: [__m512i; G],
) -> [__m512i; G] {
    for j in 0..8 {
        for t in 0..G {
            acc[t] = _mm512_dpwssd_epi32(acc[t], pk.pairs[j], bcast_bsums(xb[t], j));
        }
    }
    acc
}

/// Q4_K/Q5_K micro-kernel: one super-block of 16 rows x 8 tokens into `ft`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn micro_k4<const G: usize>(pk: &PackedK, xb: &[&BlockQ8K; G], ft: &mut [__m512; G]) {
    let sumi = k_sums::<8, G>(pk, xb);
    let summ = bsums_term(pk, xb, [_mm512_setzero_si512(); G]);
    for t in 0..G {
        let dx = _mm512_set1_ps(xb[t].d);
        let f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi[t]), _mm512_mul_ps(pk.d, dx), ft[t]);
        ft[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(summ[t]), _mm512_mul_ps(pk.dmin, dx), f);
    }
}

/// Q6_K micro-kernel: one super-block of 16 rows x 8 tokens into `ft`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn micro_q6_k<const G: usize>(pk: &PackedK, xb: &[&BlockQ8K; G], ft: &mut [__m512; G]) {
    let sumi = bsums_term(pk, xb, k_sums::<16, G>(pk, xb));
    for t in 0..G {
        let s = _mm512_mul_ps(pk.d, _mm512_set1_ps(xb[t].d));
        ft[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi[t]), s, ft[t]);
    }
}

gemm_repack! {
    features: "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    vector: __m512i,
    transpose: transpose16x4,
    splat8: splat8,
    zero: _mm512_setzero_si512,
    set1_32: _mm512_set1_epi32,
    and: _mm512_and_si512,
    or: _mm512_or_si512,
    sub32: _mm512_sub_epi32,
    srli16: _mm512_srli_epi16,
    slli16: _mm512_slli_epi16,
    srai32: _mm512_srai_epi32,
    slli32: _mm512_slli_epi32,
}

/// Defines module `$name`: the pass loops and `gemm_*` entry points for register groups of
/// `$group` tokens and passes of `$pass`.
macro_rules! entry_points_for_group {
    (
        $(#[$doc:meta])* $name:ident,
        group: $group:literal,
        pass: $pass:literal,
        row_groups: $row_groups:literal $(,)?
    ) => {
        $(#[$doc])*
        pub(crate) mod $name {
            use super::*;

            /// Tokens per pass (the float tile).
            const PASS_TOKENS: usize = $pass;
            /// Tokens per register group of the micro-kernel.
            const GROUP: usize = $group;
            /// Groups per pass.
            const GROUPS: usize = PASS_TOKENS / GROUP;
            /// Row groups of [`ROWS`] per pass of the Q4_0/Q8_0 kernels, which share the
            /// activation sums of a chunk among them (the k-quants' passes are one row
            /// group).
            const ROW_GROUPS: usize = $row_groups;

            gemm_passes!(
                "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
                __m512,
                _mm512_setzero_ps,
                _mm512_storeu_ps
            );

            gemm_entry_points! {
                features: "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
                needs: "AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C",
                micro: {
                    q4_0: micro32::<GROUP>,
                    q8_0: micro32::<GROUP>,
                    q4_k: micro_k4::<GROUP>,
                    q5_k: micro_k4::<GROUP>,
                    q6_k: micro_q6_k::<GROUP>,
                },
            }
        }
    };
}

entry_points_for_group!(
    /// Prefill tiles: 8 tokens per micro-kernel call, passes of 128.
    wide, group: 8, pass: 128, row_groups: 4
);
entry_points_for_group!(
    /// One token (decode of one sequence).
    one, group: 1, pass: 1, row_groups: 1
);
entry_points_for_group!(
    /// Two tokens.
    two, group: 2, pass: 2, row_groups: 1
);
entry_points_for_group!(
    /// Three or four tokens.
    four, group: 4, pass: 4, row_groups: 1
);
