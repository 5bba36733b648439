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

/// The typed field that holds a datatype's values.
fn field_of(dt: DataType) -> &'static str {
    match dt {
        DataType::Bool => "bool_contents",
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int_contents",
        DataType::Int64 => "int64_contents",
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => "uint_contents",
        DataType::Uint64 => "uint64_contents",
        DataType::Fp16 | DataType::Fp32 => "fp32_contents",
        DataType::Fp64 => "fp64_contents",
        DataType::Bytes => "bytes_contents",
    }
}

/// The typed fields that hold values, with how many.
fn filled(c: &InferTensorContents) -> Vec<(&'static str, usize)> {
    [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect()
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
        (Some(_), Some(contents)) if !filled(&contents).is_empty() => {
            return Err(DecodeError(format!(
                "input '{name}' has both raw_input_contents and typed contents ({}); send one or the other",
                filled(&contents).iter().map(|(f, _)| *f).collect::<Vec<_>>().join(", ")
            )));
        }
        (Some(bytes), _) => v2::decode_binary(&name, dt, count, bytes)?,
        (None, Some(contents)) => {
            let expected = field_of(dt);
            let others: Vec<String> = filled(&contents)
                .into_iter()
                .filter(|(f, _)| *f != expected)
                .map(|(f, n)| format!("{f} holds {n}"))
                .collect();
            if !others.is_empty() {
                return Err(DecodeError(format!(
                    "input '{name}' is {dt}: its values go in {expected}, but {}",
                    others.join(" and ")
                )));
            }
            let data = from_contents(&name, dt, contents)?;
            if data.len() != count {
                return Err(DecodeError(format!(
                    "input '{name}': the shape needs {count} elements, but {expected} holds {}",
                    data.len()
                )));
            }
            data
        }
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
    Ok(Tensor::new(name, shape, data)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_in_the_wrong_field_or_beside_raw_bytes_are_named() {
        let fp64 = InferTensorContents { fp64_contents: vec![1.0, 2.0], ..Default::default() };
        let e = decode_tensor("x".into(), "FP32", &[2], None, Some(fp64.clone())).expect_err("wrong field");
        assert_eq!(e.0, "input 'x' is FP32: its values go in fp32_contents, but fp64_contents holds 2");
        let raw = 1.0f64.to_le_bytes().iter().chain(2.0f64.to_le_bytes().iter()).copied().collect::<Vec<u8>>();
        let e = decode_tensor("x".into(), "FP64", &[2], Some(&raw), Some(fp64.clone())).expect_err("both");
        assert_eq!(
            e.0,
            "input 'x' has both raw_input_contents and typed contents (fp64_contents); send one or the other"
        );
        let ok =
            decode_tensor("x".into(), "FP64", &[2], Some(&raw), Some(InferTensorContents::default())).expect("raw");
        assert_eq!(ok.data, TensorData::Fp64(vec![1.0, 2.0]));
        let e = decode_tensor("x".into(), "FP64", &[3], None, Some(fp64)).expect_err("short");
        assert_eq!(e.0, "input 'x': the shape needs 3 elements, but fp64_contents holds 2");
    }
}
