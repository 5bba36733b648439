//! numpy ↔ kiln tensors: inputs borrowed from numpy arrays in place (copied only when their
//! layout needs it), pandas DataFrames split into a model's named inputs, outputs handed to
//! numpy without a copy.

use kiln_core::{DataType, ModelSignature, Tensor, TensorData, TensorDataRef, TensorView};
use numpy::{PyArray1, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyBytes, PyDict, PyList, PyString};

use crate::kiln_err;

/// Input elements for one call: borrowed from numpy, or copied when the layout needs it.
pub(crate) enum Held<'py> {
    Bool(numpy::PyReadonlyArrayDyn<'py, bool>),
    U8(numpy::PyReadonlyArrayDyn<'py, u8>),
    U16(numpy::PyReadonlyArrayDyn<'py, u16>),
    U32(numpy::PyReadonlyArrayDyn<'py, u32>),
    U64(numpy::PyReadonlyArrayDyn<'py, u64>),
    I8(numpy::PyReadonlyArrayDyn<'py, i8>),
    I16(numpy::PyReadonlyArrayDyn<'py, i16>),
    I32(numpy::PyReadonlyArrayDyn<'py, i32>),
    I64(numpy::PyReadonlyArrayDyn<'py, i64>),
    F16(numpy::PyReadonlyArrayDyn<'py, half::f16>),
    F32(numpy::PyReadonlyArrayDyn<'py, f32>),
    F64(numpy::PyReadonlyArrayDyn<'py, f64>),
    Owned(TensorData),
}

pub(crate) struct Input<'py> {
    name: String,
    shape: Vec<usize>,
    held: Held<'py>,
}

pub(crate) fn numpy_dtype(datatype: DataType) -> &'static str {
    match datatype {
        DataType::Bool => "bool",
        DataType::Uint8 => "uint8",
        DataType::Uint16 => "uint16",
        DataType::Uint32 => "uint32",
        DataType::Uint64 => "uint64",
        DataType::Int8 => "int8",
        DataType::Int16 => "int16",
        DataType::Int32 => "int32",
        DataType::Int64 => "int64",
        DataType::Fp16 => "float16",
        DataType::Fp32 => "float32",
        DataType::Fp64 => "float64",
        DataType::Bytes => "object",
    }
}

pub(crate) fn hold<'py>(name: &str, value: &Bound<'py, PyAny>, expected: Option<DataType>) -> PyResult<Input<'py>> {
    let py = value.py();
    // Lists and scalars carry no dtype: they become arrays of the dtype the model declares.
    // numpy arrays keep theirs, and a mismatch is an error (no silent conversion).
    let array: Bound<'py, PyUntypedArray> = match value.cast::<PyUntypedArray>() {
        Ok(a) => a.clone(),
        Err(_) => {
            let dtype = expected.map(numpy_dtype);
            py.import("numpy")?.call_method1("asarray", (value, dtype))?.cast_into::<PyUntypedArray>()?
        }
    };
    let shape = array.shape().to_vec();
    let dtype = array.dtype();
    // C-contiguous arrays are borrowed in place; other layouts (Fortran order, strides) are
    // copied here, once, in row-major order. (`as_slice` alone also accepts Fortran order,
    // whose memory is not row-major.)
    macro_rules! try_dtype {
        ($t:ty, $variant:ident, $data:ident) => {
            if dtype.is_equiv_to(&numpy::dtype::<$t>(py)) {
                let readonly = array.cast::<PyArrayDyn<$t>>()?.readonly();
                let held = if readonly.is_c_contiguous() {
                    Held::$variant(readonly)
                } else {
                    Held::Owned(TensorData::$data(readonly.as_array().iter().copied().collect()))
                };
                return Ok(Input { name: name.to_string(), shape, held });
            }
        };
    }
    try_dtype!(f32, F32, Fp32);
    try_dtype!(f64, F64, Fp64);
    try_dtype!(i64, I64, Int64);
    try_dtype!(i32, I32, Int32);
    try_dtype!(bool, Bool, Bool);
    try_dtype!(u8, U8, Uint8);
    try_dtype!(u16, U16, Uint16);
    try_dtype!(u32, U32, Uint32);
    try_dtype!(u64, U64, Uint64);
    try_dtype!(i8, I8, Int8);
    try_dtype!(i16, I16, Int16);
    try_dtype!(half::f16, F16, Fp16);
    let kind = dtype.kind();
    if matches!(kind, b'O' | b'U' | b'S') {
        // Text: str elements become UTF-8, bytes elements stay as they are.
        let flat = array.call_method0("ravel")?.call_method0("tolist")?;
        let items = flat.cast::<PyList>()?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if let Ok(s) = item.cast::<PyString>() {
                out.push(s.to_str()?.as_bytes().to_vec());
            } else if let Ok(b) = item.cast::<PyBytes>() {
                out.push(b.as_bytes().to_vec());
            } else {
                return Err(kiln_err(format!(
                    "input '{name}': element {i} is a {}, not str or bytes",
                    item.get_type().name()?
                )));
            }
        }
        return Ok(Input { name: name.to_string(), shape, held: Held::Owned(TensorData::Bytes(out)) });
    }
    Err(kiln_err(format!(
        "input '{name}': numpy dtype {} has no KServe v2 datatype (use bool, (u)int8-64, float16/32/64 or str/bytes)",
        dtype.str()?
    )))
}

impl<'py> Input<'py> {
    /// Borrows the elements (C-contiguous numpy memory, or the copy `hold` made).
    pub(crate) fn view(&self) -> PyResult<TensorView<'_>> {
        let contiguous = |e: numpy::AsSliceError| kiln_err(format!("input '{}': {e}", self.name));
        let data = match &self.held {
            Held::Bool(a) => TensorDataRef::Bool(a.as_slice().map_err(contiguous)?),
            Held::U8(a) => TensorDataRef::Uint8(a.as_slice().map_err(contiguous)?),
            Held::U16(a) => TensorDataRef::Uint16(a.as_slice().map_err(contiguous)?),
            Held::U32(a) => TensorDataRef::Uint32(a.as_slice().map_err(contiguous)?),
            Held::U64(a) => TensorDataRef::Uint64(a.as_slice().map_err(contiguous)?),
            Held::I8(a) => TensorDataRef::Int8(a.as_slice().map_err(contiguous)?),
            Held::I16(a) => TensorDataRef::Int16(a.as_slice().map_err(contiguous)?),
            Held::I32(a) => TensorDataRef::Int32(a.as_slice().map_err(contiguous)?),
            Held::I64(a) => TensorDataRef::Int64(a.as_slice().map_err(contiguous)?),
            Held::F16(a) => TensorDataRef::Fp16(a.as_slice().map_err(contiguous)?),
            Held::F32(a) => TensorDataRef::Fp32(a.as_slice().map_err(contiguous)?),
            Held::F64(a) => TensorDataRef::Fp64(a.as_slice().map_err(contiguous)?),
            Held::Owned(d) => d.as_ref(),
        };
        Ok(TensorView { name: &self.name, shape: self.shape.clone(), data })
    }
}

pub(crate) fn to_numpy<'py>(py: Python<'py>, tensor: Tensor) -> PyResult<Bound<'py, PyAny>> {
    let shape = tensor.shape;
    macro_rules! arr {
        ($v:expr) => {
            PyArray1::from_vec(py, $v).reshape(shape)?.into_any()
        };
    }
    Ok(match tensor.data {
        TensorData::Bool(v) => arr!(v),
        TensorData::Uint8(v) => arr!(v),
        TensorData::Uint16(v) => arr!(v),
        TensorData::Uint32(v) => arr!(v),
        TensorData::Uint64(v) => arr!(v),
        TensorData::Int8(v) => arr!(v),
        TensorData::Int16(v) => arr!(v),
        TensorData::Int32(v) => arr!(v),
        TensorData::Int64(v) => arr!(v),
        TensorData::Fp16(v) => arr!(v),
        TensorData::Fp32(v) => arr!(v),
        TensorData::Fp64(v) => arr!(v),
        TensorData::Bytes(items) => {
            // ONNX strings are text: give Python str objects, as scikit-learn's labels are.
            let objects: Vec<Py<PyAny>> = items
                .into_iter()
                .map(|b| PyString::new(py, &String::from_utf8_lossy(&b)).into_any().unbind())
                .collect();
            PyArray1::from_vec(py, objects).reshape(shape)?.into_any()
        }
    })
}

/// A pandas DataFrame (duck-typed: no pandas import) as inputs. When the model's inputs are
/// among its columns (as `kiln.export` makes them from a DataFrame), each column becomes its
/// input, converted to the declared datatype and shaped [N, 1] when the input is 2-D; a model
/// with one matrix input takes the whole frame, columns in order. A missing value in a text
/// column is an error: a string tensor has no missing value, and "nan" would be a category.
pub(crate) fn frame_inputs<'py>(
    model: &str,
    signature: &ModelSignature,
    frame: &Bound<'py, PyAny>,
) -> PyResult<Vec<Input<'py>>> {
    let py = frame.py();
    let numpy = py.import("numpy")?;
    let columns: Vec<String> = frame.getattr("columns")?.call_method0("tolist")?.extract().unwrap_or_default();
    let missing: Vec<&str> =
        signature.inputs.iter().map(|s| s.name.as_str()).filter(|n| !columns.iter().any(|c| c == n)).collect();
    if !missing.is_empty() {
        if let [only] = signature.inputs.as_slice() {
            let dtype = numpy_dtype(only.datatype);
            let matrix = frame.call_method("to_numpy", (), Some(&[("dtype", dtype)].into_py_dict(py)?))?;
            return Ok(vec![hold(&only.name, &matrix, Some(only.datatype))?]);
        }
        let quoted = |names: &[&str]| names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ");
        let have: Vec<&str> = columns.iter().map(String::as_str).collect();
        return Err(kiln_err(format!(
            "model '{model}' takes inputs {}; the DataFrame has no column {} (its columns: {})",
            quoted(&signature.inputs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>()),
            quoted(&missing),
            quoted(&have)
        )));
    }
    signature
        .inputs
        .iter()
        .map(|spec| {
            let mut column = frame.get_item(&spec.name)?;
            if spec.datatype == DataType::Bytes {
                let nulls: usize = column.call_method0("isna")?.call_method0("sum")?.extract()?;
                if nulls > 0 {
                    return Err(kiln_err(format!(
                        "input '{}': the DataFrame column has {nulls} missing values; a text input has none",
                        spec.name
                    )));
                }
                column = column.call_method1("astype", ("str",))?;
            }
            let values = column.call_method0("to_numpy")?;
            let mut array = numpy.call_method1("asarray", (values, numpy_dtype(spec.datatype)))?;
            if spec.shape.len() == 2 {
                array = array.call_method1("reshape", (-1, 1))?;
            }
            hold(&spec.name, &array, Some(spec.datatype))
        })
        .collect()
}

pub(crate) fn is_frame(x: &Bound<'_, PyAny>) -> bool {
    ["columns", "dtypes", "iloc"].iter().all(|a| x.hasattr(*a).unwrap_or(false))
}

/// An array (for a one-input model), a dict of name -> array, or a pandas DataFrame, as inputs.
pub(crate) fn collect_inputs<'py>(
    model: &str,
    signature: &ModelSignature,
    x: &Bound<'py, PyAny>,
) -> PyResult<Vec<Input<'py>>> {
    if is_frame(x) {
        return frame_inputs(model, signature, x);
    }
    if let Ok(dict) = x.cast::<PyDict>() {
        return dict
            .iter()
            .map(|(k, v)| {
                let name = k.extract::<String>()?;
                let expected = signature.inputs.iter().find(|s| s.name == name).map(|s| s.datatype);
                hold(&name, &v, expected)
            })
            .collect();
    }
    match signature.inputs.as_slice() {
        [only] => Ok(vec![hold(&only.name, x, Some(only.datatype))?]),
        many => Err(kiln_err(format!(
            "model '{model}' has {} inputs {:?}: pass a dict of name -> array",
            many.len(),
            signature.input_names()
        ))),
    }
}
