//! gRPC tensor decoding shared by the server (requests) and the client (responses).

use kiln_core::{DataType, Tensor, TensorData, element_count};

use crate::proto::InferTensorContents;
use crate::v2::{self, DecodeError};

fn narrow<T: TryFrom<S>, S: Copy + std::fmt::Display>(
    name: &str,
    dt: DataType,
    values: &[S],
) -> Result<Vec<T>, DecodeError> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            T::try_from(v)
                .map_err(|_| DecodeError(format!("input '{name}': element {i} ({v}) is out of range for {dt}")))
        })
        .collect()
}

/// Decodes typed `contents` (the protocol's per-type repeated fields).
fn from_contents(name: &str, dt: DataType, c: InferTensorContents) -> Result<TensorData, DecodeError> {
    Ok(match dt {
        DataType::Bool => TensorData::Bool(c.bool_contents),
        DataType::Int8 => TensorData::Int8(narrow(name, dt, &c.int_contents)?),
        DataType::Int16 => TensorData::Int16(narrow(name, dt, &c.int_contents)?),
        DataType::Int32 => TensorData::Int32(c.int_contents),
        DataType::Int64 => TensorData::Int64(c.int64_contents),
        DataType::Uint8 => TensorData::Uint8(narrow(name, dt, &c.uint_contents)?),
        DataType::Uint16 => TensorData::Uint16(narrow(name, dt, &c.uint_contents)?),
        DataType::Uint32 => TensorData::Uint32(c.uint_contents),
        DataType::Uint64 => TensorData::Uint64(c.uint64_contents),
        // The protocol has no FP16 field; fp32_contents are converted.
        DataType::Fp16 => TensorData::Fp16(c.fp32_contents.iter().map(|&x| half::f16::from_f32(x)).collect()),
        DataType::Fp32 => TensorData::Fp32(c.fp32_contents),
        DataType::Fp64 => TensorData::Fp64(c.fp64_contents),
        DataType::Bytes => TensorData::Bytes(c.bytes_contents.into_iter().map(|b| b.to_vec()).collect()),
    })
}

/// One tensor from its gRPC parts: raw bytes (`raw_input_contents` / `raw_output_contents`)
/// when present, typed contents otherwise. Messages name the tensor as an input.
pub fn decode_tensor(
    name: String,
    datatype: &str,
    wire_shape: &[i64],
    raw: Option<&[u8]>,
    contents: Option<InferTensorContents>,
) -> Result<Tensor, DecodeError> {
    let dt: DataType = datatype.parse().map_err(|e| DecodeError(format!("input '{name}': {e}")))?;
    let mut shape = Vec::with_capacity(wire_shape.len());
    for &d in wire_shape {
        shape.push(
            usize::try_from(d)
                .map_err(|_| DecodeError(format!("input '{name}': shape {wire_shape:?} has a negative dimension")))?,
        );
    }
    let count =
        element_count(&shape).ok_or_else(|| DecodeError(format!("input '{name}': shape {shape:?} is too large")))?;
    let data = match (raw, contents) {
        (Some(bytes), _) => v2::decode_binary(&name, dt, count, bytes)?,
        (None, Some(contents)) => from_contents(&name, dt, contents)?,
        (None, None) => {
            return Err(DecodeError(format!("input '{name}' has no data: send raw_input_contents or typed contents")));
        }
    };
    if data.len() != count {
        return Err(DecodeError(format!(
            "input '{name}': the shape needs {count} elements, but the contents hold {}",
            data.len()
        )));
    }
    Tensor::new(name, shape, data).map_err(DecodeError)
}

/// The input tensors of a `ModelInferRequest`: `raw_input_contents`, when sent, holds one
/// entry per input, in order; otherwise each input carries typed `contents`.
pub fn decode_inputs(
    inputs: Vec<crate::proto::model_infer_request::InferInputTensor>,
    raw_input_contents: &[bytes::Bytes],
) -> Result<Vec<Tensor>, DecodeError> {
    if !raw_input_contents.is_empty() && raw_input_contents.len() != inputs.len() {
        return Err(DecodeError(format!(
            "raw_input_contents has {} entries for {} inputs; send one per input, in order",
            raw_input_contents.len(),
            inputs.len()
        )));
    }
    inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| {
            decode_tensor(
                input.name,
                &input.datatype,
                &input.shape,
                raw_input_contents.get(i).map(|b| &b[..]),
                input.contents,
            )
        })
        .collect()
}

/// A request's `timeout` parameter: a positive integer of microseconds (as v2 REST's).
pub fn timeout_parameter(
    parameters: &std::collections::HashMap<String, crate::proto::InferParameter>,
) -> Result<Option<std::time::Duration>, DecodeError> {
    use crate::proto::infer_parameter::ParameterChoice as Choice;
    match parameters.get("timeout").and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(Choice::Int64Param(us)) if *us > 0 => Ok(Some(std::time::Duration::from_micros(*us as u64))),
        Some(Choice::Uint64Param(us)) if *us > 0 => Ok(Some(std::time::Duration::from_micros(*us))),
        Some(other) => {
            Err(DecodeError(format!("parameter 'timeout' must be a positive integer of microseconds, got {other:?}")))
        }
    }
}

/// Whether a request asks for a pipeline's step trace (`kiln_trace: true`).
pub fn trace_parameter(parameters: &std::collections::HashMap<String, crate::proto::InferParameter>) -> bool {
    use crate::proto::infer_parameter::ParameterChoice as Choice;
    matches!(parameters.get("kiln_trace").and_then(|p| p.parameter_choice.as_ref()), Some(Choice::BoolParam(true)))
}
