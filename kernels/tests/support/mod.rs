//! Test support: locating `../shared/fixtures`, a minimal GGUF tensor reader and a
//! deterministic random stream.
//!
//! The reader trusts its input (it only ever sees the fixtures) and exists so the kernel
//! tests can compare against llama.cpp's files without depending on the daemon crate,
//! which holds the real, hardened reader.

#![allow(dead_code, unreachable_pub, unused_imports)]

use std::collections::HashMap;

pub use spillway_e2e::fixtures;

pub struct FixtureTensor {
    pub ggml_type: u32,
    pub dims: Vec<u64>,
    pub data: Vec<u8>,
}

/// Reads every tensor of a GGUF file (name -> type, dims, bytes).
pub fn read_gguf_tensors(path: &std::path::Path) -> HashMap<String, FixtureTensor> {
    let buf = std::fs::read(path).unwrap();
    let mut pos = 0usize;
    let mut take = |n: usize| {
        let s = &buf[pos..pos + n];
        pos += n;
        s
    };
    let u32_ = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap());
    let u64_ = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap());
    assert_eq!(take(4), b"GGUF");
    let _version = u32_(take(4));
    let n_tensors = u64_(take(8));
    let n_kv = u64_(take(8));
    let mut alignment = 32u64;
    fn skip_value(ty: u32, take: &mut dyn FnMut(usize) -> Vec<u8>) -> Option<u64> {
        let fixed = |t: u32| match t {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        };
        match ty {
            8 => {
                let n = u64::from_le_bytes(take(8).try_into().unwrap());
                take(n as usize);
                None
            }
            9 => {
                let et = u32::from_le_bytes(take(4).try_into().unwrap());
                let n = u64::from_le_bytes(take(8).try_into().unwrap());
                for _ in 0..n {
                    skip_value(et, take);
                }
                None
            }
            4 => Some(u64::from(u32::from_le_bytes(take(4).try_into().unwrap()))),
            t => {
                take(fixed(t).unwrap());
                None
            }
        }
    }
    let mut take_vec = |n: usize| take(n).to_vec();
    for _ in 0..n_kv {
        let klen = u64_(&take_vec(8)) as usize;
        let key = String::from_utf8(take_vec(klen)).unwrap();
        let ty = u32_(&take_vec(4));
        let v = skip_value(ty, &mut take_vec);
        if key == "general.alignment" {
            alignment = v.unwrap();
        }
    }
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let nlen = u64_(&take_vec(8)) as usize;
        let name = String::from_utf8(take_vec(nlen)).unwrap();
        let nd = u32_(&take_vec(4));
        let dims: Vec<u64> = (0..nd).map(|_| u64_(&take_vec(8))).collect();
        let ty = u32_(&take_vec(4));
        let off = u64_(&take_vec(8));
        infos.push((name, dims, ty, off));
    }
    let data_start = (pos as u64).div_ceil(alignment) * alignment;
    let mut offsets: Vec<u64> = infos.iter().map(|i| i.3).collect();
    offsets.push(buf.len() as u64 - data_start);
    offsets.sort();
    infos
        .into_iter()
        .map(|(name, dims, ty, off)| {
            let t = spillway_kernels::GgmlType::from_id(ty).unwrap();
            let n: u64 = dims.iter().product();
            let bytes = t.bytes_for(n).unwrap() as usize;
            let start = (data_start + off) as usize;
            let data = buf[start..start + bytes].to_vec();
            (
                name,
                FixtureTensor {
                    ggml_type: ty,
                    dims,
                    data,
                },
            )
        })
        .collect()
}

/// A little-endian f32 file as values.
pub fn read_f32_file(path: &std::path::Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// A deterministic pseudo-random stream (xorshift), for reproducible fixed cases.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}
