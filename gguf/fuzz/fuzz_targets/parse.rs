//! Feeds arbitrary bytes to the GGUF parser. It must return Ok or Err, never panic, hang or
//! allocate without bound; whatever it accepts must be internally consistent (every tensor
//! inside the file, every value decodable).
#![no_main]

use libfuzzer_sys::fuzz_target;
use spillway_gguf::Gguf;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = Gguf::parse(data) {
        for t in g.tensors() {
            assert!(t.file_offset + t.n_bytes <= data.len() as u64);
            assert_eq!(g.tensor_bytes(t).len() as u64, t.n_bytes);
            let _ = g.weights(&t.name);
        }
        for (key, value) in g.metadata() {
            assert!(!key.is_empty());
            if let Some(a) = value.as_array() {
                assert!(a.iter().count() <= a.len());
            }
            assert!(g.get(key).is_some());
        }
    }
});
