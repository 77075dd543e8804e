//! Random corruption of valid files never panics: every mutated file is either accepted
//! (the corruption hit tensor data or left the header valid) or refused with an error.
//! Every accepted file's tensors must still lie inside the file.

use proptest::prelude::*;
use spillway_gguf::{Gguf, GgufError};

fn base_files() -> Vec<Vec<u8>> {
    let dir = spillway_e2e::fixtures();
    [
        "malformed/VALID-base.gguf",
        "models/tiny-q4_k_m.gguf",
        "models/tiny-q4_0.gguf",
    ]
    .iter()
    .map(|p| std::fs::read(dir.join(p)).unwrap())
    .collect()
}

fn check(bytes: &[u8]) {
    if let Ok(g) = Gguf::parse(bytes) {
        for t in g.tensors() {
            assert!(t.file_offset + t.n_bytes <= bytes.len() as u64);
            assert_eq!(g.tensor_bytes(t).len() as u64, t.n_bytes);
        }
        for (k, v) in g.metadata() {
            assert!(!k.is_empty());
            if let Some(a) = v.as_array() {
                assert!(a.iter().count() <= a.len());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Mutations concentrated on the header, where every count and offset lives.
    #[test]
    fn mutated_headers_never_panic(
        which in 0usize..3,
        edits in proptest::collection::vec((0usize..4096, any::<u8>()), 1..12),
        truncate in proptest::option::of(0usize..8192),
    ) {
        let files = base_files();
        let mut bytes = files[which].clone();
        for (at, v) in edits {
            let i = at % bytes.len();
            bytes[i] = v;
        }
        if let Some(t) = truncate {
            bytes.truncate(t.min(bytes.len()));
        }
        check(&bytes);
    }

    /// Integers planted at 8-byte boundaries: the shape of a count, length or offset.
    #[test]
    fn planted_integers_never_panic(
        which in 0usize..3,
        at in 0usize..512,
        value in prop_oneof![any::<u64>(), Just(u64::MAX), Just(1u64 << 63), 0u64..1_000_000],
    ) {
        let files = base_files();
        let mut bytes = files[which].clone();
        let i = (at * 4) % (bytes.len() - 8);
        bytes[i..i + 8].copy_from_slice(&value.to_le_bytes());
        check(&bytes);
    }
}

#[test]
fn every_truncation_of_the_header_is_refused() {
    let bytes = std::fs::read(spillway_e2e::fixtures().join("models/tiny-q4_k_m.gguf")).unwrap();
    let g = Gguf::parse(bytes.as_slice()).unwrap();
    let last_tensor_end = g
        .tensors()
        .iter()
        .map(|t| t.file_offset + t.n_bytes)
        .max()
        .unwrap();
    for len in (0..g.data_offset() as usize).chain([last_tensor_end as usize - 1]) {
        // Each refusal says the file is short: a field cut off, counts that the rest of
        // the file cannot hold, or tensor data past its end.
        let r = Gguf::parse(&bytes[..len]);
        let says_short = match &r {
            Err(GgufError::Truncated { .. }) => true,
            Err(GgufError::Invalid { problem, .. }) => problem.contains("cannot fit in the"),
            Err(GgufError::Tensor { problem, .. }) => {
                problem.contains("runs past the end of the file")
            }
            _ => false,
        };
        assert!(says_short, "truncated to {len} bytes: {:?}", r.err());
    }
}
