use half::f16;

use crate::DataType;

/// The elements of a tensor, flattened in row-major order, one variant per v2 datatype.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp16(Vec<f16>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    /// Arbitrary byte strings (ONNX `string` tensors hold UTF-8 text).
    Bytes(Vec<Vec<u8>>),
}

impl TensorData {
    /// The datatype of these elements.
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Uint8(_) => DataType::Uint8,
            TensorData::Uint16(_) => DataType::Uint16,
            TensorData::Uint32(_) => DataType::Uint32,
            TensorData::Uint64(_) => DataType::Uint64,
            TensorData::Int8(_) => DataType::Int8,
            TensorData::Int16(_) => DataType::Int16,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp16(_) => DataType::Fp16,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::Bool(v) => v.len(),
            TensorData::Uint8(v) => v.len(),
            TensorData::Uint16(v) => v.len(),
            TensorData::Uint32(v) => v.len(),
            TensorData::Uint64(v) => v.len(),
            TensorData::Int8(v) => v.len(),
            TensorData::Int16(v) => v.len(),
            TensorData::Int32(v) => v.len(),
            TensorData::Int64(v) => v.len(),
            TensorData::Fp16(v) => v.len(),
            TensorData::Fp32(v) => v.len(),
            TensorData::Fp64(v) => v.len(),
            TensorData::Bytes(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Joins tensors' elements end to end (the batcher's merge along the first dimension).
    /// `None` when the parts do not all have one datatype, or there are none.
    pub fn concat(parts: &[&TensorData]) -> Option<TensorData> {
        let first = parts.first()?;
        macro_rules! join {
            ($variant:ident) => {{
                let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
                for part in parts {
                    let TensorData::$variant(v) = part else { return None };
                    out.extend_from_slice(v);
                }
                TensorData::$variant(out)
            }};
        }
        Some(match first {
            TensorData::Bool(_) => join!(Bool),
            TensorData::Uint8(_) => join!(Uint8),
            TensorData::Uint16(_) => join!(Uint16),
            TensorData::Uint32(_) => join!(Uint32),
            TensorData::Uint64(_) => join!(Uint64),
            TensorData::Int8(_) => join!(Int8),
            TensorData::Int16(_) => join!(Int16),
            TensorData::Int32(_) => join!(Int32),
            TensorData::Int64(_) => join!(Int64),
            TensorData::Fp16(_) => join!(Fp16),
            TensorData::Fp32(_) => join!(Fp32),
            TensorData::Fp64(_) => join!(Fp64),
            TensorData::Bytes(_) => join!(Bytes),
        })
    }

    /// `len` zeros of a datatype (false for BOOL, empty strings for BYTES): warm-up inputs,
    /// filler rows.
    pub fn zeros(datatype: DataType, len: usize) -> TensorData {
        match datatype {
            DataType::Bool => TensorData::Bool(vec![false; len]),
            DataType::Uint8 => TensorData::Uint8(vec![0; len]),
            DataType::Uint16 => TensorData::Uint16(vec![0; len]),
            DataType::Uint32 => TensorData::Uint32(vec![0; len]),
            DataType::Uint64 => TensorData::Uint64(vec![0; len]),
            DataType::Int8 => TensorData::Int8(vec![0; len]),
            DataType::Int16 => TensorData::Int16(vec![0; len]),
            DataType::Int32 => TensorData::Int32(vec![0; len]),
            DataType::Int64 => TensorData::Int64(vec![0; len]),
            DataType::Fp16 => TensorData::Fp16(vec![f16::ZERO; len]),
            DataType::Fp32 => TensorData::Fp32(vec![0.0; len]),
            DataType::Fp64 => TensorData::Fp64(vec![0.0; len]),
            DataType::Bytes => TensorData::Bytes(vec![Vec::new(); len]),
        }
    }

    /// Elements `start..end` (the batcher's split back per request).
    pub fn slice(&self, start: usize, end: usize) -> TensorData {
        match self {
            TensorData::Bool(v) => TensorData::Bool(v[start..end].to_vec()),
            TensorData::Uint8(v) => TensorData::Uint8(v[start..end].to_vec()),
            TensorData::Uint16(v) => TensorData::Uint16(v[start..end].to_vec()),
            TensorData::Uint32(v) => TensorData::Uint32(v[start..end].to_vec()),
            TensorData::Uint64(v) => TensorData::Uint64(v[start..end].to_vec()),
            TensorData::Int8(v) => TensorData::Int8(v[start..end].to_vec()),
            TensorData::Int16(v) => TensorData::Int16(v[start..end].to_vec()),
            TensorData::Int32(v) => TensorData::Int32(v[start..end].to_vec()),
            TensorData::Int64(v) => TensorData::Int64(v[start..end].to_vec()),
            TensorData::Fp16(v) => TensorData::Fp16(v[start..end].to_vec()),
            TensorData::Fp32(v) => TensorData::Fp32(v[start..end].to_vec()),
            TensorData::Fp64(v) => TensorData::Fp64(v[start..end].to_vec()),
            TensorData::Bytes(v) => TensorData::Bytes(v[start..end].to_vec()),
        }
    }
}

/// A named tensor with a concrete shape, as carried by an inference request or response.
/// A tensor whose shape and elements disagree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("tensor '{name}': shape {shape:?} holds more elements than fit in memory")]
    TooLarge { name: String, shape: Vec<usize> },
    #[error("tensor '{name}': shape {shape:?} needs {expected} elements, but {given} were given")]
    Count { name: String, shape: Vec<usize>, expected: usize, given: usize },
}

fn check_count(name: &str, shape: &[usize], given: usize) -> Result<(), ShapeError> {
    let expected =
        element_count(shape).ok_or_else(|| ShapeError::TooLarge { name: name.to_string(), shape: shape.to_vec() })?;
    if expected != given {
        return Err(ShapeError::Count { name: name.to_string(), shape: shape.to_vec(), expected, given });
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    /// Builds a tensor after checking that `shape` holds exactly as many elements as `data`.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: TensorData) -> Result<Self, ShapeError> {
        let name = name.into();
        check_count(&name, &shape, data.len())?;
        Ok(Tensor { name, shape, data })
    }

    /// The datatype of the elements.
    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }
}

/// Borrowed elements of a tensor: lets callers that own the memory (numpy arrays in the
/// Python bridge) feed a backend without copying.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TensorDataRef<'a> {
    Bool(&'a [bool]),
    Uint8(&'a [u8]),
    Uint16(&'a [u16]),
    Uint32(&'a [u32]),
    Uint64(&'a [u64]),
    Int8(&'a [i8]),
    Int16(&'a [i16]),
    Int32(&'a [i32]),
    Int64(&'a [i64]),
    Fp16(&'a [f16]),
    Fp32(&'a [f32]),
    Fp64(&'a [f64]),
    Bytes(&'a [Vec<u8>]),
}

impl TensorDataRef<'_> {
    pub fn len(&self) -> usize {
        match self {
            TensorDataRef::Bool(v) => v.len(),
            TensorDataRef::Uint8(v) => v.len(),
            TensorDataRef::Uint16(v) => v.len(),
            TensorDataRef::Uint32(v) => v.len(),
            TensorDataRef::Uint64(v) => v.len(),
            TensorDataRef::Int8(v) => v.len(),
            TensorDataRef::Int16(v) => v.len(),
            TensorDataRef::Int32(v) => v.len(),
            TensorDataRef::Int64(v) => v.len(),
            TensorDataRef::Fp16(v) => v.len(),
            TensorDataRef::Fp32(v) => v.len(),
            TensorDataRef::Fp64(v) => v.len(),
            TensorDataRef::Bytes(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the elements.
    pub fn to_owned_data(&self) -> TensorData {
        match *self {
            TensorDataRef::Bool(v) => TensorData::Bool(v.to_vec()),
            TensorDataRef::Uint8(v) => TensorData::Uint8(v.to_vec()),
            TensorDataRef::Uint16(v) => TensorData::Uint16(v.to_vec()),
            TensorDataRef::Uint32(v) => TensorData::Uint32(v.to_vec()),
            TensorDataRef::Uint64(v) => TensorData::Uint64(v.to_vec()),
            TensorDataRef::Int8(v) => TensorData::Int8(v.to_vec()),
            TensorDataRef::Int16(v) => TensorData::Int16(v.to_vec()),
            TensorDataRef::Int32(v) => TensorData::Int32(v.to_vec()),
            TensorDataRef::Int64(v) => TensorData::Int64(v.to_vec()),
            TensorDataRef::Fp16(v) => TensorData::Fp16(v.to_vec()),
            TensorDataRef::Fp32(v) => TensorData::Fp32(v.to_vec()),
            TensorDataRef::Fp64(v) => TensorData::Fp64(v.to_vec()),
            TensorDataRef::Bytes(v) => TensorData::Bytes(v.to_vec()),
        }
    }
}

impl TensorData {
    /// Borrows the elements.
    pub fn as_ref(&self) -> TensorDataRef<'_> {
        match self {
            TensorData::Bool(v) => TensorDataRef::Bool(v),
            TensorData::Uint8(v) => TensorDataRef::Uint8(v),
            TensorData::Uint16(v) => TensorDataRef::Uint16(v),
            TensorData::Uint32(v) => TensorDataRef::Uint32(v),
            TensorData::Uint64(v) => TensorDataRef::Uint64(v),
            TensorData::Int8(v) => TensorDataRef::Int8(v),
            TensorData::Int16(v) => TensorDataRef::Int16(v),
            TensorData::Int32(v) => TensorDataRef::Int32(v),
            TensorData::Int64(v) => TensorDataRef::Int64(v),
            TensorData::Fp16(v) => TensorDataRef::Fp16(v),
            TensorData::Fp32(v) => TensorDataRef::Fp32(v),
            TensorData::Fp64(v) => TensorDataRef::Fp64(v),
            TensorData::Bytes(v) => TensorDataRef::Bytes(v),
        }
    }
}

/// A named tensor whose elements are borrowed.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub shape: Vec<usize>,
    pub data: TensorDataRef<'a>,
}

impl<'a> TensorView<'a> {
    /// Builds a view after checking that `shape` holds exactly as many elements as `data`.
    pub fn new(name: &'a str, shape: Vec<usize>, data: TensorDataRef<'a>) -> Result<Self, ShapeError> {
        check_count(name, &shape, data.len())?;
        Ok(TensorView { name, shape, data })
    }
}

impl Tensor {
    /// Borrows this tensor as a view.
    pub fn view(&self) -> TensorView<'_> {
        TensorView { name: &self.name, shape: self.shape.clone(), data: self.data.as_ref() }
    }
}

/// What validation needs to know of an input, owned or borrowed.
pub trait TensorLike {
    fn tensor_name(&self) -> &str;
    fn tensor_shape(&self) -> &[usize];
    fn tensor_datatype(&self) -> DataType;
}

impl TensorLike for Tensor {
    fn tensor_name(&self) -> &str {
        &self.name
    }
    fn tensor_shape(&self) -> &[usize] {
        &self.shape
    }
    fn tensor_datatype(&self) -> DataType {
        self.datatype()
    }
}

impl TensorLike for TensorView<'_> {
    fn tensor_name(&self) -> &str {
        self.name
    }
    fn tensor_shape(&self) -> &[usize] {
        &self.shape
    }
    fn tensor_datatype(&self) -> DataType {
        match self.data {
            TensorDataRef::Bool(_) => DataType::Bool,
            TensorDataRef::Uint8(_) => DataType::Uint8,
            TensorDataRef::Uint16(_) => DataType::Uint16,
            TensorDataRef::Uint32(_) => DataType::Uint32,
            TensorDataRef::Uint64(_) => DataType::Uint64,
            TensorDataRef::Int8(_) => DataType::Int8,
            TensorDataRef::Int16(_) => DataType::Int16,
            TensorDataRef::Int32(_) => DataType::Int32,
            TensorDataRef::Int64(_) => DataType::Int64,
            TensorDataRef::Fp16(_) => DataType::Fp16,
            TensorDataRef::Fp32(_) => DataType::Fp32,
            TensorDataRef::Fp64(_) => DataType::Fp64,
            TensorDataRef::Bytes(_) => DataType::Bytes,
        }
    }
}

/// Product of the dimensions, or `None` when it overflows `usize`.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_and_slice_are_inverse() {
        let a = TensorData::Int64(vec![1, 2, 3]);
        let b = TensorData::Int64(vec![4]);
        let joined = TensorData::concat(&[&a, &b]).expect("same type");
        assert_eq!(joined, TensorData::Int64(vec![1, 2, 3, 4]));
        assert_eq!(joined.slice(0, 3), a);
        assert_eq!(joined.slice(3, 4), b);
        let s = TensorData::Bytes(vec![b"x".to_vec()]);
        assert_eq!(TensorData::concat(&[&a, &s]), None);
        assert_eq!(TensorData::concat(&[]), None);
    }

    #[test]
    fn new_checks_element_count() {
        let t = Tensor::new("x", vec![2, 3], TensorData::Fp32(vec![0.0; 6])).expect("valid");
        assert_eq!(t.datatype(), DataType::Fp32);
        let err = Tensor::new("x", vec![2, 3], TensorData::Fp32(vec![0.0; 5])).unwrap_err();
        assert_eq!(err, ShapeError::Count { name: "x".into(), shape: vec![2, 3], expected: 6, given: 5 });
        assert_eq!(err.to_string(), "tensor 'x': shape [2, 3] needs 6 elements, but 5 were given");
        let err = Tensor::new("x", vec![usize::MAX, 3], TensorData::Fp32(vec![])).unwrap_err();
        assert!(matches!(err, ShapeError::TooLarge { .. }), "{err}");
    }
}
