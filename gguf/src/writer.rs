//! Writing GGUF v3 files: the header first (so every tensor's offset is fixed before any data
//! is produced), then the tensors in order, each padded to the alignment. Models far larger
//! than RAM can be streamed this way.

use std::collections::HashSet;
use std::io::Write;

use spillway_kernels::GgmlType;

use crate::error::GgufError;
use crate::parse::{DEFAULT_ALIGNMENT, MAX_ALIGNMENT, MAX_DIMS, MAX_TENSOR_NAME_LEN};
use crate::value::ValueType;

/// A metadata value to write.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    U64(u64),
    I64(i64),
    F64(f64),
    /// Elements must all be of the stated type.
    Array(ValueType, Vec<MetaValue>),
}

impl MetaValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::String(_) => ValueType::String,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F64(_) => ValueType::F64,
            MetaValue::Array(..) => ValueType::Array,
        }
    }

    /// An array of strings.
    pub fn strings<S: Into<String>>(items: impl IntoIterator<Item = S>) -> MetaValue {
        MetaValue::Array(
            ValueType::String,
            items
                .into_iter()
                .map(|s| MetaValue::String(s.into()))
                .collect(),
        )
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), GgufError> {
        match self {
            MetaValue::U8(v) => out.push(*v),
            MetaValue::I8(v) => out.push(*v as u8),
            MetaValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::Bool(v) => out.push(u8::from(*v)),
            MetaValue::String(s) => write_str(out, s),
            MetaValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::Array(elem, items) => {
                out.extend_from_slice(&elem.id().to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    if item.value_type() != *elem {
                        return Err(GgufError::Write(format!(
                            "array of {elem} holds a {}",
                            item.value_type()
                        )));
                    }
                    item.encode(out)?;
                }
            }
        }
        Ok(())
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A tensor to be written: name, type and GGML-order dimensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorPlan {
    pub name: String,
    pub ggml_type: GgmlType,
    pub dims: Vec<u64>,
}

impl TensorPlan {
    pub fn new(name: impl Into<String>, ggml_type: GgmlType, dims: &[u64]) -> TensorPlan {
        TensorPlan {
            name: name.into(),
            ggml_type,
            dims: dims.to_vec(),
        }
    }

    /// Bytes of data.
    pub fn n_bytes(&self) -> Result<u64, GgufError> {
        let n = self
            .dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| GgufError::Write(format!("{}: element count overflows", self.name)))?;
        self.ggml_type.bytes_for(n).ok_or_else(|| {
            GgufError::Write(format!(
                "{}: {n} elements are not whole {} blocks",
                self.name, self.ggml_type
            ))
        })
    }
}

/// Streams a GGUF v3 file: header on construction, then tensors in plan order.
#[derive(Debug)]
pub struct GgufWriter<W: Write> {
    out: W,
    alignment: u64,
    plans: Vec<(TensorPlan, u64)>,
    next: usize,
    /// Bytes of the next tensor already written (by `write_part`).
    part_written: u64,
    /// Bytes written so far (for padding).
    pos: u64,
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header for `metadata` and `tensors` and returns a writer expecting the
    /// tensors' data in the same order.
    pub fn new(
        mut out: W,
        metadata: &[(String, MetaValue)],
        tensors: Vec<TensorPlan>,
    ) -> Result<GgufWriter<W>, GgufError> {
        let mut alignment = DEFAULT_ALIGNMENT;
        let mut keys = HashSet::new();
        let mut head = Vec::new();
        head.extend_from_slice(crate::MAGIC);
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            if key.is_empty() || !keys.insert(key.as_str()) {
                return Err(GgufError::Write(format!("empty or duplicate key {key:?}")));
            }
            if key == "general.alignment" {
                alignment = match value {
                    MetaValue::U32(a) if a.is_power_of_two() && u64::from(*a) <= MAX_ALIGNMENT => {
                        u64::from(*a)
                    }
                    _ => {
                        return Err(GgufError::Write(
                            "general.alignment must be a UINT32 power of two".into(),
                        ));
                    }
                };
            }
            write_str(&mut head, key);
            head.extend_from_slice(&value.value_type().id().to_le_bytes());
            value.encode(&mut head)?;
        }
        let mut plans = Vec::with_capacity(tensors.len());
        let mut offset = 0u64;
        let mut names = HashSet::new();
        for t in tensors {
            if t.name.is_empty()
                || t.name.len() as u64 > MAX_TENSOR_NAME_LEN
                || !names.insert(t.name.clone())
            {
                return Err(GgufError::Write(format!(
                    "tensor name {:?} is empty, too long or repeated",
                    t.name
                )));
            }
            if t.dims.is_empty() || t.dims.len() > MAX_DIMS as usize || t.dims.contains(&0) {
                return Err(GgufError::Write(format!(
                    "{}: dimensions {:?} are not 1 to 4 positive values",
                    t.name, t.dims
                )));
            }
            if t.dims[0] % t.ggml_type.block_elems() as u64 != 0 {
                return Err(GgufError::Write(format!(
                    "{}: row length {} is not whole {} blocks",
                    t.name, t.dims[0], t.ggml_type
                )));
            }
            let n_bytes = t.n_bytes()?;
            write_str(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            plans.push((t, offset));
            offset = (offset + n_bytes).div_ceil(alignment) * alignment;
        }
        out.write_all(&head)?;
        let mut w = GgufWriter {
            out,
            alignment,
            plans,
            next: 0,
            part_written: 0,
            pos: head.len() as u64,
        };
        w.pad()?;
        Ok(w)
    }

    fn pad(&mut self) -> Result<(), GgufError> {
        let target = self.pos.div_ceil(self.alignment) * self.alignment;
        let zeros = [0u8; 64];
        while self.pos < target {
            let n = ((target - self.pos) as usize).min(zeros.len());
            self.out.write_all(&zeros[..n])?;
            self.pos += n as u64;
        }
        Ok(())
    }

    /// Writes the data of the next tensor, which must be named `name` and be exactly its size.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<(), GgufError> {
        if self.part_written != 0 {
            return Err(GgufError::Write(format!(
                "{name}: a partial tensor is pending"
            )));
        }
        let expected = self.expect(name)?;
        if expected != data.len() as u64 {
            return Err(GgufError::Write(format!(
                "{name}: {} bytes given, {expected} expected",
                data.len()
            )));
        }
        self.write_part(name, data)
    }

    /// Appends `part` to the data of the next tensor, `name`: large tensors can be produced
    /// and written in pieces. The tensor is complete when its size has been written.
    pub fn write_part(&mut self, name: &str, part: &[u8]) -> Result<(), GgufError> {
        let expected = self.expect(name)?;
        let total = self.part_written + part.len() as u64;
        if total > expected {
            return Err(GgufError::Write(format!(
                "{name}: {total} bytes written, only {expected} expected"
            )));
        }
        self.out.write_all(part)?;
        self.pos += part.len() as u64;
        self.part_written = total;
        if total == expected {
            self.part_written = 0;
            self.next += 1;
            if self.next < self.plans.len() {
                self.pad()?;
            }
        }
        Ok(())
    }

    /// The size of the next tensor, checking that it is `name`.
    fn expect(&self, name: &str) -> Result<u64, GgufError> {
        let (plan, _) = self.plans.get(self.next).ok_or_else(|| {
            GgufError::Write(format!("{name}: every planned tensor was already written"))
        })?;
        if plan.name != name {
            return Err(GgufError::Write(format!(
                "expected tensor {:?} next, got {name:?}",
                plan.name
            )));
        }
        plan.n_bytes()
    }

    /// Checks that every tensor was written and returns the output.
    pub fn finish(mut self) -> Result<W, GgufError> {
        if self.next != self.plans.len() || self.part_written != 0 {
            return Err(GgufError::Write(format!(
                "only {} of {} tensors were written",
                self.next,
                self.plans.len()
            )));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}
