//! PLACEHOLDER (being written): forwards to scalar.
use crate::dot::scalar;
use crate::formats::*;
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    scalar::dot_f32(w, x)
}
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    scalar::dot_f16(w, x)
}
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    scalar::dot_bf16(w, x)
}
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn dot_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    scalar::dot_q8_0(w, x)
}
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn dot_q4_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    scalar::dot_q4_0(w, x)
}
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn dot_q4_k(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
    scalar::dot_q4_k(w, x)
}
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn dot_q5_k(w: &[BlockQ5K], x: &[BlockQ8K]) -> f32 {
    scalar::dot_q5_k(w, x)
}
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn dot_q6_k(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
    scalar::dot_q6_k(w, x)
}
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn quantize_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    scalar::quantize_q8_0(x, y)
}
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn quantize_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
    scalar::quantize_q8_k(x, y)
}
