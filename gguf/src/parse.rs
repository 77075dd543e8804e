//! The validating parser: walks the header once, checks every count, length, type, shape
//! and offset against the bytes actually present before using it, and records where each
//! key, value and tensor lives. Nothing is copied except tensor names (at most 63 bytes
//! each); memory use is proportional to the number of keys and tensors, each of which must
//! occupy real bytes of the file.

use std::collections::HashSet;
use std::ops::Range;

use spillway_kernels::GgmlType;

use crate::error::GgufError;
use crate::value::ValueType;

/// GGUF's magic bytes.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Largest `general.alignment` accepted.
pub const MAX_ALIGNMENT: u64 = 1 << 16;
/// Longest key the spec allows.
pub const MAX_KEY_LEN: u64 = 65_535;
/// Tensor names must be shorter than GGML's `GGML_MAX_NAME` (64, with the terminator).
pub const MAX_TENSOR_NAME_LEN: u64 = 63;
/// GGML tensors have at most four dimensions.
pub const MAX_DIMS: u32 = 4;
/// Arrays of arrays nest at most this deep.
pub const MAX_ARRAY_DEPTH: u32 = 4;

/// The smallest possible key/value pair: an 8-byte key length, a 1-byte key, a 4-byte
/// type and a 1-byte value.
const MIN_KV_BYTES: u64 = 14;
/// The smallest possible tensor info: name length (8) + 1-byte name + n_dims (4) + one
/// dim (8) + type (4) + offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 33;

/// Where one key/value pair lives in the file.
#[derive(Clone, Debug)]
pub(crate) struct KvEntry {
    pub key: Range<usize>,
    pub ty: ValueType,
    /// The encoded value (for arrays: element type, count, elements).
    pub value: Range<usize>,
}

/// One tensor's description, validated against the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub ggml_type: GgmlType,
    /// Dimensions in GGML order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Absolute offset of the data in the file.
    pub file_offset: u64,
    /// Size of the data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Rows (the product of every dimension but the first) and row length.
    pub fn rows_cols(&self) -> (u64, u64) {
        let cols = self.dims[0];
        (self.n_elements() / cols, cols)
    }
}

/// The parsed header.
#[derive(Clone, Debug)]
pub(crate) struct Header {
    pub version: u32,
    pub alignment: u64,
    pub data_offset: u64,
    pub kvs: Vec<KvEntry>,
    pub tensors: Vec<TensorInfo>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn invalid(&self, at: usize, what: impl Into<String>, problem: impl Into<String>) -> GgufError {
        GgufError::Invalid {
            offset: at as u64,
            what: what.into(),
            problem: problem.into(),
        }
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                offset: self.pos as u64,
                what: what(),
                need: n,
                have: self.remaining(),
            });
        }
        let n = n as usize; // <= remaining, which is a usize
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// A length-prefixed UTF-8 string of at most `max` bytes.
    fn string(&mut self, max: u64, what: &dyn Fn() -> String) -> Result<&'a str, GgufError> {
        let at = self.pos;
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > max {
            return Err(self.invalid(
                at,
                what(),
                format!("length {len} exceeds the limit of {max} bytes"),
            ));
        }
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map_err(|e| self.invalid(at + 8, what(), format!("not valid UTF-8 ({e})")))
    }

    /// Validates one value of type `ty` and moves past it.
    fn skip_value(
        &mut self,
        ty: ValueType,
        depth: u32,
        what: &dyn Fn() -> String,
    ) -> Result<(), GgufError> {
        let at = self.pos;
        match ty {
            ValueType::String => {
                self.string(self.remaining(), what)?;
            }
            ValueType::Bool => {
                let b = self.take(1, what)?[0];
                if b > 1 {
                    return Err(self.invalid(
                        at,
                        what(),
                        format!("boolean byte is {b}, not 0 or 1"),
                    ));
                }
            }
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.invalid(
                        at,
                        what(),
                        format!("arrays nest deeper than {MAX_ARRAY_DEPTH} levels"),
                    ));
                }
                let type_id = self.u32(&|| format!("element type of {}", what()))?;
                let elem = ValueType::from_id(type_id).ok_or_else(|| {
                    self.invalid(at, what(), format!("unknown array element type {type_id}"))
                })?;
                let len = self.u64(&|| format!("length of {}", what()))?;
                // Bound the count by the bytes left before looping over it.
                let min = elem.min_size() as u64;
                if len > self.remaining() / min {
                    return Err(self.invalid(
                        at,
                        what(),
                        format!(
                            "{len} {elem} elements cannot fit in the {} bytes that remain",
                            self.remaining()
                        ),
                    ));
                }
                match elem.fixed_size() {
                    Some(_) if elem != ValueType::Bool => {
                        self.take(len * min, what)?;
                    }
                    _ => {
                        for i in 0..len {
                            self.skip_value(elem, depth + 1, &|| {
                                format!("element {i} of {}", what())
                            })?;
                        }
                    }
                }
            }
            fixed => {
                self.take(fixed.fixed_size().expect("scalar") as u64, what)?;
            }
        }
        Ok(())
    }
}

/// Parses and validates the header of a GGUF file held in `buf` (the whole file).
pub(crate) fn parse(buf: &[u8]) -> Result<Header, GgufError> {
    let mut r = Reader { buf, pos: 0 };
    let magic = r.take(4, &|| "magic".into())?;
    if magic != MAGIC {
        return Err(GgufError::Magic {
            found: String::from_utf8_lossy(magic).into_owned(),
        });
    }
    let version = r.u32(&|| "version".into())?;
    match version {
        2 | 3 => {}
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => return Err(GgufError::BigEndian),
        v => return Err(GgufError::Version(v)),
    }
    let n_tensors = r.u64(&|| "tensor count".into())?;
    let n_kv = r.u64(&|| "metadata count".into())?;
    // Every pair and every tensor info occupies bytes: refuse counts the file cannot hold
    // before allocating or looping.
    if n_kv > r.remaining() / MIN_KV_BYTES {
        return Err(r.invalid(
            16,
            "metadata count",
            format!(
                "{n_kv} key/value pairs cannot fit in the {} bytes that remain",
                r.remaining()
            ),
        ));
    }
    let after_kvs = r.remaining().saturating_sub(n_kv * MIN_KV_BYTES);
    if n_tensors > after_kvs / MIN_TENSOR_INFO_BYTES {
        return Err(r.invalid(
            8,
            "tensor count",
            format!(
                "{n_tensors} tensor infos cannot fit in the {} bytes that remain",
                r.remaining()
            ),
        ));
    }

    let mut kvs = Vec::with_capacity(n_kv as usize);
    let mut keys = HashSet::with_capacity(n_kv as usize);
    let mut alignment = DEFAULT_ALIGNMENT;
    for i in 0..n_kv {
        let key_at = r.pos;
        let key = r.string(MAX_KEY_LEN, &|| format!("key of metadata pair #{i}"))?;
        if key.is_empty() {
            return Err(r.invalid(key_at, format!("key of metadata pair #{i}"), "empty key"));
        }
        let key_range = key_at + 8..r.pos;
        if !keys.insert(key) {
            return Err(r.invalid(key_at, format!("key {key:?}"), "duplicate key"));
        }
        let type_at = r.pos;
        let type_id = r.u32(&|| format!("type of key {key:?}"))?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| {
            r.invalid(
                type_at,
                format!("key {key:?}"),
                format!("unknown value type {type_id}"),
            )
        })?;
        let value_at = r.pos;
        r.skip_value(ty, 0, &|| format!("value of key {key:?}"))?;
        if key == "general.alignment" {
            let value = &buf[value_at..r.pos];
            alignment = match (ty, value) {
                (ValueType::U32, v) => {
                    u64::from(u32::from_le_bytes(v.try_into().expect("4 bytes")))
                }
                _ => {
                    return Err(r.invalid(
                        value_at,
                        "key \"general.alignment\"",
                        format!("must be UINT32, is {ty}"),
                    ));
                }
            };
            if alignment == 0 || !alignment.is_power_of_two() || alignment > MAX_ALIGNMENT {
                return Err(r.invalid(
                    value_at,
                    "key \"general.alignment\"",
                    format!("{alignment} is not a power of two between 1 and {MAX_ALIGNMENT}"),
                ));
            }
        }
        kvs.push(KvEntry {
            key: key_range,
            ty,
            value: value_at..r.pos,
        });
    }

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let info_at = r.pos;
        let name = r.string(MAX_TENSOR_NAME_LEN, &|| format!("name of tensor #{i}"))?;
        let what = || format!("tensor {name:?}");
        if name.is_empty() {
            return Err(r.invalid(info_at, format!("tensor #{i}"), "empty name"));
        }
        if !names.insert(name) {
            return Err(r.invalid(info_at, what(), "duplicate tensor name"));
        }
        let n_dims = r.u32(&|| format!("dimension count of {}", what()))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(r.invalid(
                info_at,
                what(),
                format!("{n_dims} dimensions; GGML tensors have 1 to {MAX_DIMS}"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        let mut n_elements: u64 = 1;
        for d in 0..n_dims {
            let dim = r.u64(&|| format!("dimension {d} of {}", what()))?;
            if dim == 0 || dim > i64::MAX as u64 {
                return Err(r.invalid(
                    info_at,
                    what(),
                    format!("dimension {d} is {dim}; it must be between 1 and 2^63-1"),
                ));
            }
            n_elements = n_elements
                .checked_mul(dim)
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| r.invalid(info_at, what(), "element count overflows 2^63-1"))?;
            dims.push(dim);
        }
        let type_at = r.pos;
        let type_id = r.u32(&|| format!("type of {}", what()))?;
        let ggml_type = GgmlType::from_id(type_id)
            .ok_or_else(|| r.invalid(type_at, what(), format!("unknown GGML type id {type_id}")))?;
        let block = ggml_type.block_elems() as u64;
        if dims[0] % block != 0 {
            return Err(r.invalid(
                info_at,
                what(),
                format!(
                    "row length {} is not a multiple of the {ggml_type} block size {block}",
                    dims[0]
                ),
            ));
        }
        let n_bytes = ggml_type
            .bytes_for(n_elements)
            .ok_or_else(|| r.invalid(info_at, what(), "byte size overflows"))?;
        let offset = r.u64(&|| format!("data offset of {}", what()))?;
        if offset % alignment != 0 {
            return Err(r.invalid(
                info_at,
                what(),
                format!("data offset {offset} is not a multiple of the alignment {alignment}"),
            ));
        }
        tensors.push(TensorInfo {
            name: name.to_owned(),
            ggml_type,
            dims,
            offset,
            file_offset: 0,
            n_bytes,
        });
    }

    // The data section starts at the next multiple of the alignment.
    let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    for t in &mut tensors {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(s), Some(e)) if e <= file_len => t.file_offset = s,
            _ => {
                return Err(GgufError::Tensor {
                    name: t.name.clone(),
                    problem: format!(
                        "data at offset {} + {} bytes runs past the end of the file ({} bytes of tensor data present)",
                        t.offset,
                        t.n_bytes,
                        file_len.saturating_sub(data_offset)
                    ),
                });
            }
        }
    }
    // No two tensors may share bytes.
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        if pair[0].offset + pair[0].n_bytes > pair[1].offset {
            return Err(GgufError::Tensor {
                name: pair[1].name.clone(),
                problem: format!("data overlaps tensor {:?}", pair[0].name),
            });
        }
    }

    Ok(Header {
        version,
        alignment,
        data_offset,
        kvs,
        tensors,
    })
}
