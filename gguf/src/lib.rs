//! GGUF for Spillway: a reader that never trusts the file, and a writer.
//!
//! A GGUF file is a header (magic, version, counts), metadata key/value pairs, tensor infos
//! (name, dimensions, type, offset), then the aligned tensor data. llama.cpp's parser has had
//! a run of heap overflows from counts, lengths, dimensions and offsets taken at face value;
//! this one is immune by construction:
//!
//! - every count and length is checked against the bytes that remain *before* it is used to
//!   allocate or loop, and all size arithmetic is checked;
//! - types, dimensions (1 to 4, each > 0), element counts (a whole number of blocks per row),
//!   alignment (a power of two, bounded), nesting depth, UTF-8, key and tensor-name
//!   uniqueness are validated, and every tensor's bytes must lie inside the file, aligned,
//!   without overlapping another's;
//! - nothing is copied but tensor names: strings, arrays and tensor data are views into the
//!   file's bytes (a memory mapping, for [`GgufFile`]).
//!
//! Errors name the offset, the key or tensor, and the rule broken. Model-level checks (which
//! keys and tensors an architecture needs) live with the model, in the `spillway` crate.

mod error;
mod file;
mod parse;
mod value;
mod writer;

use spillway_kernels::formats::Weights;

pub use error::GgufError;
pub use file::{Advice, GgufFile, Mapping};
pub use parse::{
    DEFAULT_ALIGNMENT, MAGIC, MAX_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS, MAX_KEY_LEN,
    MAX_TENSOR_NAME_LEN, TensorInfo,
};
pub use value::{ArrayIter, ArrayRef, ValueRef, ValueType};
pub use writer::{GgufWriter, MetaValue, TensorPlan};

use value::decode_value;

/// A parsed GGUF file over any byte container: `Vec<u8>`, `&[u8]`, or a [`Mapping`].
#[derive(Debug)]
pub struct Gguf<B> {
    data: B,
    header: parse::Header,
}

impl<B: AsRef<[u8]>> Gguf<B> {
    /// Parses and validates `data`, which must hold the whole file.
    pub fn parse(data: B) -> Result<Gguf<B>, GgufError> {
        let header = parse::parse(data.as_ref())?;
        Ok(Gguf { data, header })
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// Alignment of tensor data (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.data.as_ref()
    }

    /// The underlying container.
    pub fn inner(&self) -> &B {
        &self.data
    }

    fn key_str(&self, kv: &parse::KvEntry) -> &str {
        // Validated as UTF-8 by the parser.
        std::str::from_utf8(&self.bytes()[kv.key.clone()]).unwrap_or_default()
    }

    fn value_of(&self, kv: &parse::KvEntry) -> Option<ValueRef<'_>> {
        decode_value(kv.ty, &mut &self.bytes()[kv.value.clone()]).ok()
    }

    /// Number of metadata pairs.
    pub fn metadata_len(&self) -> usize {
        self.header.kvs.len()
    }

    /// Metadata pairs in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, ValueRef<'_>)> {
        self.header
            .kvs
            .iter()
            .filter_map(|kv| Some((self.key_str(kv), self.value_of(kv)?)))
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<ValueRef<'_>> {
        let kv = self
            .header
            .kvs
            .iter()
            .find(|kv| &self.bytes()[kv.key.clone()] == key.as_bytes())?;
        self.value_of(kv)
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's bytes (validated to lie inside the file).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let start = t.file_offset as usize;
        &self.bytes()[start..start + t.n_bytes as usize]
    }

    /// A zero-copy typed view of the tensor named `name`, refusing types without kernels.
    pub fn weights(&self, name: &str) -> Result<Weights<'_>, GgufError> {
        let t = self
            .tensor(name)
            .ok_or_else(|| GgufError::NoTensor(name.to_owned()))?;
        Weights::from_bytes(t.ggml_type, self.tensor_bytes(t)).map_err(|source| GgufError::Format {
            name: name.to_owned(),
            source,
        })
    }

    /// Total bytes of tensor data.
    pub fn tensor_data_bytes(&self) -> u64 {
        self.header.tensors.iter().map(|t| t.n_bytes).sum()
    }
}
