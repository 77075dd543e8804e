//! Metadata value types and zero-copy views of values inside a GGUF file.

use std::fmt;

/// The GGUF metadata value types, numbered as in the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<ValueType> {
        Some(match id {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        match self {
            ValueType::U8 => 0,
            ValueType::I8 => 1,
            ValueType::U16 => 2,
            ValueType::I16 => 3,
            ValueType::U32 => 4,
            ValueType::I32 => 5,
            ValueType::F32 => 6,
            ValueType::Bool => 7,
            ValueType::String => 8,
            ValueType::Array => 9,
            ValueType::U64 => 10,
            ValueType::I64 => 11,
            ValueType::F64 => 12,
        }
    }

    /// The spec's name of the type (`UINT8`, ..., `FLOAT64`).
    pub fn spec_name(self) -> &'static str {
        match self {
            ValueType::U8 => "UINT8",
            ValueType::I8 => "INT8",
            ValueType::U16 => "UINT16",
            ValueType::I16 => "INT16",
            ValueType::U32 => "UINT32",
            ValueType::I32 => "INT32",
            ValueType::F32 => "FLOAT32",
            ValueType::Bool => "BOOL",
            ValueType::String => "STRING",
            ValueType::Array => "ARRAY",
            ValueType::U64 => "UINT64",
            ValueType::I64 => "INT64",
            ValueType::F64 => "FLOAT64",
        }
    }

    /// Encoded size of one value of a fixed-size type; `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<usize> {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => Some(1),
            ValueType::U16 | ValueType::I16 => Some(2),
            ValueType::U32 | ValueType::I32 | ValueType::F32 => Some(4),
            ValueType::U64 | ValueType::I64 | ValueType::F64 => Some(8),
            ValueType::String | ValueType::Array => None,
        }
    }

    /// The fewest bytes a value of this type can occupy (a string is at least its 8-byte
    /// length; an array at least its 4-byte element type and 8-byte count).
    pub(crate) fn min_size(self) -> usize {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            t => t.fixed_size().unwrap_or(1),
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.spec_name())
    }
}

/// A metadata value, borrowed from the file's bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueRef<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(&'a str),
    U64(u64),
    I64(i64),
    F64(f64),
    Array(ArrayRef<'a>),
}

impl<'a> ValueRef<'a> {
    pub fn value_type(&self) -> ValueType {
        match self {
            ValueRef::U8(_) => ValueType::U8,
            ValueRef::I8(_) => ValueType::I8,
            ValueRef::U16(_) => ValueType::U16,
            ValueRef::I16(_) => ValueType::I16,
            ValueRef::U32(_) => ValueType::U32,
            ValueRef::I32(_) => ValueType::I32,
            ValueRef::F32(_) => ValueType::F32,
            ValueRef::Bool(_) => ValueType::Bool,
            ValueRef::Str(_) => ValueType::String,
            ValueRef::U64(_) => ValueType::U64,
            ValueRef::I64(_) => ValueType::I64,
            ValueRef::F64(_) => ValueType::F64,
            ValueRef::Array(_) => ValueType::Array,
        }
    }

    /// Any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            ValueRef::U8(v) => Some(v.into()),
            ValueRef::U16(v) => Some(v.into()),
            ValueRef::U32(v) => Some(v.into()),
            ValueRef::U64(v) => Some(v),
            ValueRef::I8(v) => u64::try_from(v).ok(),
            ValueRef::I16(v) => u64::try_from(v).ok(),
            ValueRef::I32(v) => u64::try_from(v).ok(),
            ValueRef::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type, as i64 when it fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            ValueRef::I8(v) => Some(v.into()),
            ValueRef::I16(v) => Some(v.into()),
            ValueRef::I32(v) => Some(v.into()),
            ValueRef::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// A float type (f64 values narrowed).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            ValueRef::F32(v) => Some(v),
            ValueRef::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            ValueRef::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            ValueRef::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<ArrayRef<'a>> {
        match *self {
            ValueRef::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// An array value: element type, count, and the encoded elements (already validated).
#[derive(Clone, Copy, PartialEq)]
pub struct ArrayRef<'a> {
    pub(crate) elem: ValueType,
    pub(crate) len: usize,
    pub(crate) bytes: &'a [u8],
}

impl fmt::Debug for ArrayRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}; {}]", self.elem, self.len)
    }
}

impl<'a> ArrayRef<'a> {
    pub fn elem_type(&self) -> ValueType {
        self.elem
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements, decoded one by one.
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter {
            elem: self.elem,
            left: self.len,
            rest: self.bytes,
        }
    }

    /// The elements as strings, if this is a string array.
    pub fn strings(&self) -> Option<impl Iterator<Item = &'a str> + 'a> {
        (self.elem == ValueType::String).then(|| self.iter().filter_map(|v| v.as_str()))
    }

    /// Element `i` of a fixed-size-type array, without walking the others.
    pub fn get(&self, i: usize) -> Option<ValueRef<'a>> {
        let size = self.elem.fixed_size()?;
        if i >= self.len {
            return None;
        }
        let at = i.checked_mul(size)?;
        decode_value(self.elem, &mut &self.bytes[at..]).ok()
    }
}

/// Iterator over an [`ArrayRef`]'s elements.
#[derive(Clone, Debug)]
pub struct ArrayIter<'a> {
    elem: ValueType,
    left: usize,
    rest: &'a [u8],
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = ValueRef<'a>;

    fn next(&mut self) -> Option<ValueRef<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The parser validated every element, so decoding cannot fail; if it somehow did,
        // ending the iteration is safer than panicking.
        match decode_value(self.elem, &mut self.rest) {
            Ok(v) => Some(v),
            Err(()) => {
                self.left = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], ()> {
    if buf.len() < n {
        return Err(());
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

fn take_array<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N], ()> {
    take(buf, N).map(|s| s.try_into().expect("take returned N bytes"))
}

/// Decodes one already-validated value (used by the iterators; the parser validates with
/// its own, error-reporting walk).
pub(crate) fn decode_value<'a>(ty: ValueType, buf: &mut &'a [u8]) -> Result<ValueRef<'a>, ()> {
    Ok(match ty {
        ValueType::U8 => ValueRef::U8(take_array::<1>(buf)?[0]),
        ValueType::I8 => ValueRef::I8(take_array::<1>(buf)?[0] as i8),
        ValueType::U16 => ValueRef::U16(u16::from_le_bytes(take_array(buf)?)),
        ValueType::I16 => ValueRef::I16(i16::from_le_bytes(take_array(buf)?)),
        ValueType::U32 => ValueRef::U32(u32::from_le_bytes(take_array(buf)?)),
        ValueType::I32 => ValueRef::I32(i32::from_le_bytes(take_array(buf)?)),
        ValueType::F32 => ValueRef::F32(f32::from_le_bytes(take_array(buf)?)),
        ValueType::Bool => ValueRef::Bool(take_array::<1>(buf)?[0] != 0),
        ValueType::U64 => ValueRef::U64(u64::from_le_bytes(take_array(buf)?)),
        ValueType::I64 => ValueRef::I64(i64::from_le_bytes(take_array(buf)?)),
        ValueType::F64 => ValueRef::F64(f64::from_le_bytes(take_array(buf)?)),
        ValueType::String => {
            let n = usize::try_from(u64::from_le_bytes(take_array(buf)?)).map_err(|_| ())?;
            ValueRef::Str(std::str::from_utf8(take(buf, n)?).map_err(|_| ())?)
        }
        ValueType::Array => {
            let elem = ValueType::from_id(u32::from_le_bytes(take_array(buf)?)).ok_or(())?;
            let len = usize::try_from(u64::from_le_bytes(take_array(buf)?)).map_err(|_| ())?;
            let start = *buf;
            let mut walk = ArrayIter {
                elem,
                left: len,
                rest: start,
            };
            for _ in 0..len {
                decode_value(elem, &mut walk.rest)?;
            }
            let used = start.len() - walk.rest.len();
            *buf = walk.rest;
            ValueRef::Array(ArrayRef {
                elem,
                len,
                bytes: &start[..used],
            })
        }
    })
}
