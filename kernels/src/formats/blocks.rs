//! `#[repr(C)]` block structs, byte-for-byte the layouts of `ggml-common.h`.
//!
//! Each struct derives [`bytemuck::Pod`], so GGUF bytes can be viewed as `&[Block…]` without
//! copying and without `unsafe` here; the derive also proves there is no padding, and the
//! `const` asserts below pin the sizes to GGML's.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::GgmlType;

/// Elements per block of the legacy 32-wide formats (Q4_0, Q8_0).
pub const QK: usize = 32;
/// Elements per k-quant super-block.
pub const QK_K: usize = 256;
/// Bytes of packed 6-bit scales and mins in Q4_K and Q5_K.
pub const K_SCALE_SIZE: usize = 12;

/// 4-bit weights, one scale per 32 values: `x = (q - 8) * d`.
/// Byte `j` holds element `j` in its low nibble and element `j + 16` in its high nibble.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; QK / 2],
}

/// 8-bit values, one scale per 32 values: `x = q * d`. A weight format and the activation
/// format paired with Q4_0 and Q8_0 weights.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}

/// 4-bit k-quant: 8 sub-blocks of 32 with 6-bit scales and mins:
/// `x = d * scale_j * q - dmin * min_j`.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}

/// 5-bit k-quant: Q4_K plus one high bit per value in `qh`.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// 6-bit k-quant: 16 sub-blocks of 16 with signed 8-bit scales: `x = d * scale_j * (q - 32)`.
/// The low 4 bits of each value are in `ql`, the high 2 in `qh`.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

/// 8-bit activations for k-quant dot products: f32 scale, and the sums of each 16 values
/// (`bsums`) so the k-quant mins can be applied without touching the values again.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(size_of::<BlockQ4_0>() == 18);
const _: () = assert!(size_of::<BlockQ8_0>() == 34);
const _: () = assert!(size_of::<BlockQ4K>() == 144);
const _: () = assert!(size_of::<BlockQ5K>() == 176);
const _: () = assert!(size_of::<BlockQ6K>() == 210);
const _: () = assert!(size_of::<BlockQ8K>() == 292);

/// A block (or scalar) type that can be the storage of a weight row.
pub trait WeightBlock: Pod + Send + Sync + 'static {
    /// The GGML type this storage represents.
    const TYPE: GgmlType;
    /// Values per block.
    const ELEMS: usize;
}

macro_rules! weight_block {
    ($t:ty, $ty:expr, $n:expr) => {
        impl WeightBlock for $t {
            const TYPE: GgmlType = $ty;
            const ELEMS: usize = $n;
        }
        const _: () = assert!(size_of::<$t>() == $ty.block_bytes_const());
    };
}

weight_block!(f32, GgmlType::F32, 1);
weight_block!(f16, GgmlType::F16, 1);
weight_block!(half::bf16, GgmlType::BF16, 1);
weight_block!(BlockQ8_0, GgmlType::Q8_0, QK);
weight_block!(BlockQ4_0, GgmlType::Q4_0, QK);
weight_block!(BlockQ4K, GgmlType::Q4_K, QK_K);
weight_block!(BlockQ5K, GgmlType::Q5_K, QK_K);
weight_block!(BlockQ6K, GgmlType::Q6_K, QK_K);

impl GgmlType {
    /// `block_bytes` for the supported types, usable in `const` assertions.
    const fn block_bytes_const(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
            _ => 0,
        }
    }
}

/// Unpacks the 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block
/// (`get_scale_min_k4` in GGML).
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// All eight (scale, min) pairs of a Q4_K/Q5_K block.
#[inline(always)]
pub fn scales_mins_k4(q: &[u8; K_SCALE_SIZE]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        (sc[j], mn[j]) = scale_min_k4(j, q);
    }
    (sc, mn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_structs_agree() {
        for t in GgmlType::all().filter(|t| t.is_supported()) {
            assert_eq!(t.block_bytes(), t.block_bytes_const(), "{t}");
        }
        assert_eq!(GgmlType::Q8_K.block_bytes(), size_of::<BlockQ8K>());
    }
}
