//! The writer and the reader agree: every value type (nested arrays included) and every
//! tensor comes back as written, at aligned offsets.

use spillway_gguf::{Gguf, GgufError, GgufWriter, MetaValue, TensorPlan, ValueRef, ValueType};
use spillway_kernels::GgmlType;

#[test]
fn written_files_read_back_exactly() {
    let meta = vec![
        (
            "general.architecture".to_string(),
            MetaValue::String("llama".into()),
        ),
        ("general.alignment".to_string(), MetaValue::U32(64)),
        ("t.u8".to_string(), MetaValue::U8(200)),
        ("t.i8".to_string(), MetaValue::I8(-5)),
        ("t.u16".to_string(), MetaValue::U16(60000)),
        ("t.i16".to_string(), MetaValue::I16(-300)),
        ("t.u32".to_string(), MetaValue::U32(4_000_000_000)),
        ("t.i32".to_string(), MetaValue::I32(-70000)),
        ("t.f32".to_string(), MetaValue::F32(1e-5)),
        ("t.bool".to_string(), MetaValue::Bool(true)),
        ("t.u64".to_string(), MetaValue::U64(u64::MAX)),
        ("t.i64".to_string(), MetaValue::I64(i64::MIN)),
        ("t.f64".to_string(), MetaValue::F64(-2.5)),
        (
            "t.strs".to_string(),
            MetaValue::strings(["a", "", "ünïcödé"]),
        ),
        (
            "t.nested".to_string(),
            MetaValue::Array(
                ValueType::Array,
                vec![
                    MetaValue::Array(ValueType::I32, vec![MetaValue::I32(1), MetaValue::I32(2)]),
                    MetaValue::Array(ValueType::I32, vec![]),
                ],
            ),
        ),
    ];
    let tensors = vec![
        TensorPlan::new("a", GgmlType::F32, &[3]),
        TensorPlan::new("b", GgmlType::Q4_0, &[64, 2]),
        TensorPlan::new("c", GgmlType::Q6_K, &[256, 1, 1, 1]),
    ];
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| {
            (0..t.n_bytes().unwrap())
                .map(|i| (i * 7 + 1) as u8)
                .collect()
        })
        .collect();
    let mut w = GgufWriter::new(Vec::new(), &meta, tensors.clone()).unwrap();
    for (t, d) in tensors.iter().zip(&data) {
        if t.name == "b" {
            // In parts, as synth writes large tensors.
            let (x, y) = d.split_at(7);
            w.write_part(&t.name, x).unwrap();
            assert_write_err(w.write_tensor(&t.name, y), "a partial tensor is pending");
            w.write_part(&t.name, y).unwrap();
        } else {
            w.write_tensor(&t.name, d).unwrap();
        }
    }
    let bytes = w.finish().unwrap();

    let g = Gguf::parse(bytes.as_slice()).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.metadata_len(), meta.len());
    assert_eq!(g.get("t.u8"), Some(ValueRef::U8(200)));
    assert_eq!(g.get("t.i64"), Some(ValueRef::I64(i64::MIN)));
    assert_eq!(g.get("t.f32").unwrap().as_f32(), Some(1e-5));
    assert_eq!(g.get("t.bool").unwrap().as_bool(), Some(true));
    let strs: Vec<&str> = g
        .get("t.strs")
        .unwrap()
        .as_array()
        .unwrap()
        .strings()
        .unwrap()
        .collect();
    assert_eq!(strs, ["a", "", "ünïcödé"]);
    let nested = g.get("t.nested").unwrap().as_array().unwrap();
    let inner: Vec<usize> = nested.iter().map(|v| v.as_array().unwrap().len()).collect();
    assert_eq!(inner, [2, 0]);
    let keys: Vec<&str> = g.metadata().map(|(k, _)| k).collect();
    assert_eq!(keys[0], "general.architecture");
    assert_eq!(keys.len(), meta.len());
    for (t, d) in tensors.iter().zip(&data) {
        let info = g.tensor(&t.name).unwrap();
        assert_eq!(info.dims, t.dims);
        assert_eq!(info.ggml_type, t.ggml_type);
        assert_eq!(info.file_offset % 64, 0);
        assert_eq!(g.tensor_bytes(info), d.as_slice());
    }
    assert!(g.weights("b").is_ok());
    let r = g.weights("zzz");
    assert!(
        matches!(&r, Err(GgufError::NoTensor(n)) if n == "zzz"),
        "{r:?}"
    );
}

#[test]
fn the_writer_refuses_what_the_reader_would() {
    let t = |name: &str, ty, dims: &[u64]| vec![TensorPlan::new(name, ty, dims)];
    assert_write_err(
        GgufWriter::new(Vec::new(), &[], t("x", GgmlType::Q4_0, &[33])),
        "x: row length 33 is not whole Q4_0 blocks",
    );
    assert_write_err(
        GgufWriter::new(Vec::new(), &[], t("x", GgmlType::F32, &[1, 1, 1, 1, 1])),
        "x: dimensions [1, 1, 1, 1, 1] are not 1 to 4 positive values",
    );
    assert_write_err(
        GgufWriter::new(Vec::new(), &[], t(&"n".repeat(64), GgmlType::F32, &[1])),
        "is empty, too long or repeated",
    );
    let dup = vec![
        ("k".to_string(), MetaValue::U8(1)),
        ("k".to_string(), MetaValue::U8(2)),
    ];
    assert_write_err(
        GgufWriter::new(Vec::new(), &dup, vec![]),
        "empty or duplicate key \"k\"",
    );
    let mut w = GgufWriter::new(Vec::new(), &[], t("x", GgmlType::F32, &[2])).unwrap();
    assert_write_err(
        w.write_tensor("y", &[0; 8]),
        "expected tensor \"x\" next, got \"y\"",
    );
    assert_write_err(w.write_tensor("x", &[0; 4]), "x: 4 bytes given, 8 expected");
    // More than the tensor's size.
    assert_write_err(
        w.write_part("x", &[0; 12]),
        "x: 12 bytes written, only 8 expected",
    );
    w.write_part("x", &[0; 4]).unwrap();
    // Half a tensor is not a file.
    assert_write_err(w.finish(), "only 0 of 1 tensors were written");
}

/// `r` is the writer's refusal ([`GgufError::Write`]) and its message contains `want`.
#[track_caller]
fn assert_write_err<T: std::fmt::Debug>(r: Result<T, GgufError>, want: &str) {
    assert!(
        matches!(&r, Err(GgufError::Write(m)) if m.contains(want)),
        "{r:?} does not say {want:?}"
    );
}

#[test]
fn every_fixture_model_parses() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/models");
    let dir = std::env::var_os("SPILLWAY_FIXTURES")
        .map(|f| std::path::PathBuf::from(f).join("models"))
        .unwrap_or(dir);
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let g = spillway_gguf::GgufFile::open(&path).unwrap();
        assert_eq!(
            g.get("general.architecture").unwrap().as_str(),
            Some("mistral3")
        );
        for t in g.tensors() {
            if t.ggml_type.is_supported() {
                assert_eq!(g.weights(&t.name).unwrap().n_bytes() as u64, t.n_bytes);
            }
        }
        g.advise(spillway_gguf::Advice::Random).unwrap();
        n += 1;
    }
    assert_eq!(n, 8);
}
