//! The KServe v2 / Open Inference Protocol REST encoding: JSON tensors and the binary tensor
//! extension, both ways. Pure functions over bytes, so every edge case is unit-testable.

use half::f16;
use kiln_core::{DataType, Tensor, TensorData, element_count};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The header that says how many leading body bytes are the JSON part (binary extension).
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A decoding failure; the message names the tensor and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

impl From<kiln_core::ShapeError> for DecodeError {
    fn from(e: kiln_core::ShapeError) -> Self {
        DecodeError(e.to_string())
    }
}

fn fail<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(msg.into()))
}

#[derive(Debug, Deserialize)]
struct RequestJson<'a> {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(borrow)]
    inputs: Vec<InputJson<'a>>,
    #[serde(default)]
    outputs: Option<Vec<OutputJson>>,
}

#[derive(Debug, Deserialize)]
struct InputJson<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    /// Kept as text until the datatype is known: a flat array of numbers then parses straight
    /// into the tensor's element type, with no JSON value per element.
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// One requested output and how the client wants it encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    pub name: String,
    pub binary: bool,
    /// The classification extension's `classification` parameter, as sent (the server checks
    /// it is a positive integer).
    pub classification: Option<i128>,
}

/// A decoded inference request.
#[derive(Debug, Clone)]
pub struct DecodedRequest {
    /// Echoed back in the response.
    pub id: Option<String>,
    /// Passed through to the response.
    pub parameters: Option<Map<String, Value>>,
    pub inputs: Vec<Tensor>,
    /// Empty = all outputs.
    pub outputs: Vec<RequestedOutput>,
    /// `binary_data_output`: outputs not listed explicitly come back binary.
    pub binary_by_default: bool,
}

/// Decodes a request body. `header_length` is the `Inference-Header-Content-Length` value
/// when the client used the binary extension.
pub fn decode_request(body: &[u8], header_length: Option<usize>) -> Result<DecodedRequest, DecodeError> {
    let (json_part, mut binary) = match header_length {
        Some(n) if n > body.len() => {
            return fail(format!("Inference-Header-Content-Length is {n}, but the body has only {} bytes", body.len()));
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let marked = crate::nonfinite::to_markers(json_part);
    let json_part = marked.as_deref().unwrap_or(json_part);
    let request: RequestJson =
        serde_json::from_slice(json_part).map_err(|e| DecodeError(format!("malformed inference request JSON: {e}")))?;
    let id = match request.id {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => return fail(format!("'id' must be a string, got {other}")),
    };
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        inputs.push(decode_tensor(input, &mut binary)?);
    }
    if !binary.is_empty() {
        return fail(format!("{} bytes of binary data follow the inputs that no input claims", binary.len()));
    }
    let binary_by_default =
        request.parameters.as_ref().and_then(|p| p.get("binary_data_output")).and_then(Value::as_bool).unwrap_or(false);
    let outputs = request
        .outputs
        .unwrap_or_default()
        .into_iter()
        .map(|o| {
            let binary = o
                .parameters
                .as_ref()
                .and_then(|p| p.get("binary_data"))
                .and_then(Value::as_bool)
                .unwrap_or(binary_by_default);
            let classification = match o.parameters.as_ref().and_then(|p| p.get("classification")) {
                None => None,
                Some(v) => Some(v.as_i64().map(i128::from).ok_or_else(|| {
                    DecodeError(format!(
                        "output '{}': parameter 'classification' must be a positive integer, got {v}",
                        o.name
                    ))
                })?),
            };
            Ok(RequestedOutput { name: o.name, binary, classification })
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    Ok(DecodedRequest { id, parameters: request.parameters, inputs, outputs, binary_by_default })
}

/// Decodes one tensor of a request or response, taking its binary bytes (if any) from the
/// front of `binary`.
fn decode_tensor(input: InputJson<'_>, binary: &mut &[u8]) -> Result<Tensor, DecodeError> {
    let datatype: DataType = input.datatype.parse().map_err(|e| DecodeError(format!("input '{}': {e}", input.name)))?;
    let mut shape = Vec::with_capacity(input.shape.len());
    for &d in &input.shape {
        match usize::try_from(d) {
            Ok(d) => shape.push(d),
            Err(_) => {
                return fail(format!("input '{}': shape {:?} has a negative dimension", input.name, input.shape));
            }
        }
    }
    let count = element_count(&shape)
        .ok_or_else(|| DecodeError(format!("input '{}': shape {shape:?} is too large", input.name)))?;
    let binary_size = input.parameters.as_ref().and_then(|p| p.get("binary_data_size"));
    let data = match (binary_size, input.data) {
        (Some(size), None) => {
            let size = size.as_u64().and_then(|s| usize::try_from(s).ok()).ok_or_else(|| {
                DecodeError(format!("input '{}': binary_data_size must be a non-negative integer", input.name))
            })?;
            if size > binary.len() {
                return fail(format!(
                    "input '{}': binary_data_size is {size}, but only {} bytes of binary data are left in the body",
                    input.name,
                    binary.len()
                ));
            }
            let (chunk, rest) = binary.split_at(size);
            *binary = rest;
            decode_binary(&input.name, datatype, count, chunk)?
        }
        (None, Some(data)) => decode_json_text(&input.name, datatype, count, data.get())?,
        (Some(_), Some(_)) => return fail(format!("input '{}' has both 'data' and binary_data_size", input.name)),
        (None, None) => return fail(format!("input '{}' has neither 'data' nor binary_data_size", input.name)),
    };
    Ok(Tensor::new(input.name, shape, data)?)
}

#[derive(Debug, Deserialize)]
struct ResponseJsonIn<'a> {
    #[serde(borrow)]
    outputs: Vec<InputJson<'a>>,
}

/// Decodes an inference response (what a client receives): its outputs, JSON or binary.
/// Error messages say "output" where the request decoder says "input".
pub fn decode_response(body: &[u8], header_length: Option<usize>) -> Result<Vec<Tensor>, DecodeError> {
    let rename = |e: DecodeError| DecodeError(e.0.replacen("input '", "output '", 1));
    let (json_part, mut binary) = match header_length {
        Some(n) if n > body.len() => {
            return fail(format!("Inference-Header-Content-Length is {n}, but the body has only {} bytes", body.len()));
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let marked = crate::nonfinite::to_markers(json_part);
    let json_part = marked.as_deref().unwrap_or(json_part);
    let response: ResponseJsonIn = serde_json::from_slice(json_part)
        .map_err(|e| DecodeError(format!("malformed inference response JSON: {e}")))?;
    let mut outputs = Vec::with_capacity(response.outputs.len());
    for output in response.outputs {
        outputs.push(decode_tensor(output, &mut binary).map_err(rename)?);
    }
    if !binary.is_empty() {
        return fail(format!("{} bytes of binary data follow the outputs that no output claims", binary.len()));
    }
    Ok(outputs)
}

/// Decodes one tensor's elements from the binary encoding (little-endian; BYTES as 4-byte
/// length-prefixed items); `count` is the number of elements the shape needs.
pub fn decode_binary(name: &str, datatype: DataType, count: usize, bytes: &[u8]) -> Result<TensorData, DecodeError> {
    let Some(size) = datatype.element_size() else {
        return decode_binary_strings(name, count, bytes);
    };
    let expected = count.saturating_mul(size);
    if bytes.len() != expected {
        return fail(format!(
            "input '{name}': {datatype} with {count} elements needs {expected} bytes, but binary_data_size is {}",
            bytes.len()
        ));
    }
    macro_rules! le {
        ($t:ty, $n:literal, $variant:ident) => {
            TensorData::$variant(
                bytes
                    .chunks_exact($n)
                    .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunks_exact yields exact chunks")))
                    .collect(),
            )
        };
    }
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
        DataType::Uint8 => TensorData::Uint8(bytes.to_vec()),
        DataType::Int8 => TensorData::Int8(bytes.iter().map(|&b| b as i8).collect()),
        DataType::Uint16 => le!(u16, 2, Uint16),
        DataType::Int16 => le!(i16, 2, Int16),
        DataType::Fp16 => TensorData::Fp16(bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]])).collect()),
        DataType::Uint32 => le!(u32, 4, Uint32),
        DataType::Int32 => le!(i32, 4, Int32),
        DataType::Fp32 => le!(f32, 4, Fp32),
        DataType::Uint64 => le!(u64, 8, Uint64),
        DataType::Int64 => le!(i64, 8, Int64),
        DataType::Fp64 => le!(f64, 8, Fp64),
        DataType::Bytes => unreachable!("BYTES has no fixed element size"),
    })
}

/// BYTES in the binary extension: each element is a 4-byte little-endian length and then
/// that many bytes.
fn decode_binary_strings(name: &str, count: usize, mut bytes: &[u8]) -> Result<TensorData, DecodeError> {
    // Each element needs at least its 4-byte length: bound the allocation by the body.
    let mut items = Vec::with_capacity(count.min(bytes.len() / 4));
    while !bytes.is_empty() {
        if bytes.len() < 4 {
            return fail(format!("input '{name}': BYTES element {} has a truncated length prefix", items.len()));
        }
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        bytes = &bytes[4..];
        if len > bytes.len() {
            return fail(format!(
                "input '{name}': BYTES element {} declares {len} bytes, but only {} are left",
                items.len(),
                bytes.len()
            ));
        }
        items.push(bytes[..len].to_vec());
        bytes = &bytes[len..];
    }
    if items.len() != count {
        return fail(format!(
            "input '{name}': the shape needs {count} BYTES elements, but the binary data holds {}",
            items.len()
        ));
    }
    Ok(TensorData::Bytes(items))
}

/// Flattens nested JSON arrays (the protocol allows both flat and nested `data`). Nested data
/// must be a regular grid: every array at one depth holds as many elements, and every value sits
/// at the same depth — `[[1, 2], [3, [4]]]` is refused, not read as four values.
fn flatten<'a>(name: &str, value: &'a Value, count: usize, out: &mut Vec<&'a Value>) -> Result<(), DecodeError> {
    let mut grid = Grid { lengths: Vec::new(), leaf_depth: None };
    grid.walk(name, value, 0, count, out)
}

/// What [`flatten`] has seen of the nesting so far.
struct Grid {
    /// The length of the arrays at each depth.
    lengths: Vec<usize>,
    /// The depth of the values.
    leaf_depth: Option<usize>,
}

impl Grid {
    fn walk<'a>(
        &mut self,
        name: &str,
        value: &'a Value,
        depth: usize,
        count: usize,
        out: &mut Vec<&'a Value>,
    ) -> Result<(), DecodeError> {
        match value {
            Value::Array(items) => {
                match self.lengths.get(depth) {
                    Some(&n) if n != items.len() => {
                        return fail(format!(
                            "input '{name}': 'data' is ragged: arrays at depth {depth} hold {n} and {} elements",
                            items.len()
                        ));
                    }
                    Some(_) => {}
                    None => self.lengths.push(items.len()),
                }
                for item in items {
                    self.walk(name, item, depth + 1, count, out)?;
                }
            }
            scalar => {
                match self.leaf_depth {
                    Some(d) if d != depth => {
                        return fail(format!(
                            "input '{name}': 'data' is ragged: values at depths {d} and {depth} (element {})",
                            out.len()
                        ));
                    }
                    _ => self.leaf_depth = Some(depth),
                }
                if out.len() == count {
                    return fail(format!("input '{name}': 'data' holds more elements than the shape's {count}"));
                }
                out.push(scalar);
            }
        }
        Ok(())
    }
}

/// `data` as JSON text. The common case — a flat array of numbers that fit the datatype, as
/// many as the shape needs — parses directly into the element type; anything else (nested
/// arrays, nulls for NaN, out-of-range or mistyped elements, a wrong count) goes through
/// [`decode_json`], which accepts what the protocol allows and names what is wrong.
fn decode_json_text(name: &str, datatype: DataType, count: usize, text: &str) -> Result<TensorData, DecodeError> {
    fn flat<T: serde::de::DeserializeOwned>(text: &str, count: usize) -> Option<Vec<T>> {
        serde_json::from_str::<Vec<T>>(text).ok().filter(|v| v.len() == count)
    }
    let fast = match datatype {
        // serde reads a number past f32's range as infinity: such data takes the slow path,
        // which refuses it by position.
        DataType::Fp32 => flat::<f32>(text, count).filter(|v| v.iter().all(|x| x.is_finite())).map(TensorData::Fp32),
        DataType::Fp64 => flat::<f64>(text, count).map(TensorData::Fp64),
        DataType::Int64 => flat::<i64>(text, count).map(TensorData::Int64),
        DataType::Int32 => flat::<i32>(text, count).map(TensorData::Int32),
        _ => None,
    };
    if let Some(data) = fast {
        return Ok(data);
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| DecodeError(format!("input '{name}': malformed 'data': {e}")))?;
    decode_json(name, datatype, count, &value)
}

fn decode_json(name: &str, datatype: DataType, count: usize, data: &Value) -> Result<TensorData, DecodeError> {
    let mut flat = Vec::with_capacity(count.min(1 << 20));
    flatten(name, data, count, &mut flat)?;
    if flat.len() != count {
        return fail(format!("input '{name}': the shape needs {count} elements, but 'data' holds {}", flat.len()));
    }
    let bad = |i: usize, v: &Value| {
        let shown = v.as_str().and_then(crate::nonfinite::token_of).map_or_else(|| v.to_string(), str::to_string);
        DecodeError(format!("input '{name}': element {i} ({shown}) is not a valid {datatype}"))
    };
    macro_rules! ints {
        ($t:ty, $variant:ident) => {
            TensorData::$variant(
                flat.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_i64()
                            .and_then(|x| <$t>::try_from(x).ok())
                            .or_else(|| v.as_u64().and_then(|x| <$t>::try_from(x).ok()))
                            .ok_or_else(|| bad(i, v))
                    })
                    .collect::<Result<_, _>>()?,
            )
        };
    }
    macro_rules! floats {
        ($conv:expr, $finite:expr, $variant:ident) => {
            TensorData::$variant(
                flat.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        // NaN, Infinity and -Infinity come as bare tokens (now markers); older
                        // kiln wrote non-finite floats as null: read null back as NaN.
                        let x = match v {
                            Value::Null => Some(f64::NAN),
                            Value::String(s) => crate::nonfinite::from_marker(s),
                            _ => v.as_f64(),
                        };
                        let x = x.ok_or_else(|| bad(i, v))?;
                        // A finite number that becomes infinite is out of the type's range.
                        let y = $conv(x);
                        if x.is_finite() && !$finite(&y) {
                            return Err(DecodeError(format!(
                                "input '{name}': element {i} ({v}) is out of range for {datatype}"
                            )));
                        }
                        Ok(y)
                    })
                    .collect::<Result<_, _>>()?,
            )
        };
    }
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(
            flat.iter().enumerate().map(|(i, v)| v.as_bool().ok_or_else(|| bad(i, v))).collect::<Result<_, _>>()?,
        ),
        DataType::Uint8 => ints!(u8, Uint8),
        DataType::Uint16 => ints!(u16, Uint16),
        DataType::Uint32 => ints!(u32, Uint32),
        DataType::Uint64 => ints!(u64, Uint64),
        DataType::Int8 => ints!(i8, Int8),
        DataType::Int16 => ints!(i16, Int16),
        DataType::Int32 => ints!(i32, Int32),
        DataType::Int64 => ints!(i64, Int64),
        DataType::Fp16 => floats!(|x: f64| f16::from_f64(x), |y: &f16| y.is_finite(), Fp16),
        DataType::Fp32 => floats!(|x: f64| x as f32, |y: &f32| y.is_finite(), Fp32),
        DataType::Fp64 => floats!(|x: f64| x, |y: &f64| y.is_finite(), Fp64),
        DataType::Bytes => TensorData::Bytes(
            flat.iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .filter(|s| crate::nonfinite::from_marker(s).is_none())
                        .map(|s| s.as_bytes().to_vec())
                        .ok_or_else(|| bad(i, v))
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// The request-level `timeout` parameter (microseconds, Triton's meaning).
pub fn timeout_parameter(parameters: Option<&Map<String, Value>>) -> Result<Option<std::time::Duration>, DecodeError> {
    match parameters.and_then(|p| p.get("timeout")) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            v.as_u64().filter(|&us| us > 0).map(|us| Some(std::time::Duration::from_micros(us))).ok_or_else(|| {
                DecodeError(format!("parameter 'timeout' must be a positive integer of microseconds, got {v}"))
            })
        }
    }
}

mod encode;
pub use encode::*;

#[cfg(test)]
mod tests;
