//! Block formats against independent references: gguf-py's dequantization of llama.cpp's
//! tensors (bit-exact), and llama-quantize's bytes (our reference quantizers must reproduce
//! them from the f32 model).

mod support;

use spillway_kernels::GgmlType;
use spillway_kernels::formats::{Weights, quantize_to_bytes};
use support::*;

#[test]
fn dequantization_equals_gguf_py_bit_for_bit() {
    let dir = fixtures();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("golden/dequant-index.json")).unwrap())
            .unwrap();
    let index = index.as_object().unwrap();
    assert!(index.len() >= 12, "the index lists every format twice");
    let mut seen_types = std::collections::BTreeSet::new();
    for (golden, info) in index {
        let model = dir.join(info["model"].as_str().unwrap());
        let tensor = info["tensor"].as_str().unwrap();
        let tensors = read_gguf_tensors(&model);
        let t = &tensors[tensor];
        let ty = GgmlType::from_id(t.ggml_type).unwrap();
        assert_eq!(ty.name(), info["ggml_type"].as_str().unwrap());
        seen_types.insert(ty.name());
        let w = Weights::from_bytes(ty, &t.data).unwrap();
        let mut out = vec![0.0f32; w.n_elements()];
        w.dequantize(&mut out);
        let want = read_f32_file(&dir.join(golden));
        assert_eq!(out.len(), want.len(), "{golden}");
        let mismatches = out
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            mismatches, 0,
            "{golden}: {mismatches} values differ in their bits"
        );
    }
    for ty in ["F16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"] {
        assert!(seen_types.contains(ty), "no golden covered {ty}");
    }
}

/// Quantizing the f32 model's tensors must give exactly the bytes llama-quantize wrote.
#[test]
fn reference_quantizers_reproduce_llama_quantize() {
    let dir = fixtures();
    let f32_model = read_gguf_tensors(&dir.join("models/tiny-f32.gguf"));
    let mut checked = std::collections::BTreeMap::<&str, usize>::new();
    for variant in ["f16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"] {
        let model = read_gguf_tensors(&dir.join(format!("models/tiny-{variant}.gguf")));
        for (name, t) in &model {
            let ty = GgmlType::from_id(t.ggml_type).unwrap();
            if ty == GgmlType::F32 {
                continue;
            }
            let src = &f32_model[name];
            assert_eq!(src.dims, t.dims, "{variant} {name}");
            let x: Vec<f32> = src
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let ours = quantize_to_bytes(ty, &x).unwrap();
            let differing = ours.iter().zip(&t.data).filter(|(a, b)| a != b).count();
            assert_eq!(
                differing,
                0,
                "{variant} {name} ({ty}): {differing} of {} bytes differ from llama-quantize",
                ours.len()
            );
            *checked.entry(ty.name()).or_default() += 1;
        }
    }
    for ty in ["F16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"] {
        assert!(
            checked.contains_key(ty),
            "no tensor of type {ty} was checked: {checked:?}"
        );
    }
}
