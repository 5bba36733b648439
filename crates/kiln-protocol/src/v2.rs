//! The KServe v2 / Open Inference Protocol REST encoding: JSON tensors and the binary tensor
//! extension, both ways. Pure functions over bytes, so every edge case is unit-testable.

use half::f16;
use kiln_core::{DataType, Tensor, TensorData, element_count};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The header that says how many leading body bytes are the JSON part (binary extension).
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A decoding failure; the message names the tensor and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

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
    Tensor::new(input.name, shape, data).map_err(DecodeError)
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

/// Encodes an inference request with every input in the binary extension and every named
/// output asked for in binary (exact floats, no JSON parsing of numbers): the JSON header and
/// the whole body, whose first `header.len()` bytes are the header.
pub fn encode_request(inputs: &[Tensor], outputs: &[String]) -> (usize, Vec<u8>) {
    let encoded: Vec<Vec<u8>> = inputs.iter().map(|t| encode_binary(&t.data)).collect();
    let header = serde_json::json!({
        "inputs": inputs.iter().zip(&encoded).map(|(t, bytes)| serde_json::json!({
            "name": t.name,
            "shape": t.shape,
            "datatype": t.datatype().as_str(),
            "parameters": {"binary_data_size": bytes.len()},
        })).collect::<Vec<_>>(),
        "outputs": outputs.iter().map(|o| serde_json::json!({"name": o, "parameters": {"binary_data": true}})).collect::<Vec<_>>(),
        "parameters": {"binary_data_output": true},
    });
    // Serializing a json! value cannot fail.
    let mut body = serde_json::to_vec(&header).unwrap_or_default();
    let header_len = body.len();
    for bytes in encoded {
        body.extend_from_slice(&bytes);
    }
    (header_len, body)
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

/// The binary encoding of a tensor's elements (little-endian; BYTES length-prefixed).
pub fn encode_binary(data: &TensorData) -> Vec<u8> {
    macro_rules! le {
        ($v:expr) => {
            $v.iter().flat_map(|x| x.to_le_bytes()).collect()
        };
    }
    match data {
        TensorData::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
        TensorData::Uint8(v) => v.clone(),
        TensorData::Int8(v) => v.iter().map(|&x| x as u8).collect(),
        TensorData::Uint16(v) => le!(v),
        TensorData::Int16(v) => le!(v),
        TensorData::Fp16(v) => le!(v),
        TensorData::Uint32(v) => le!(v),
        TensorData::Int32(v) => le!(v),
        TensorData::Fp32(v) => le!(v),
        TensorData::Uint64(v) => le!(v),
        TensorData::Int64(v) => le!(v),
        TensorData::Fp64(v) => le!(v),
        TensorData::Bytes(items) => {
            let mut out = Vec::with_capacity(items.iter().map(|i| i.len() + 4).sum());
            for item in items {
                out.extend_from_slice(&(item.len() as u32).to_le_bytes());
                out.extend_from_slice(item);
            }
            out
        }
    }
}

/// The JSON `data` array of a tensor, serialized straight from the typed elements (FP32
/// keeps its shortest f32 spelling). Non-finite floats become `null` (JSON has no NaN, and
/// SQL JSON types refuse the bare tokens; the decoder reads `null` in a float tensor as NaN).
/// v2 responses write them as Triton does, as bare `NaN`/`Infinity`/`-Infinity` tokens.
pub struct JsonData<'a>(pub &'a TensorData);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            TensorData::Bool(v) => v.serialize(serializer),
            TensorData::Uint8(v) => v.serialize(serializer),
            TensorData::Uint16(v) => v.serialize(serializer),
            TensorData::Uint32(v) => v.serialize(serializer),
            TensorData::Uint64(v) => v.serialize(serializer),
            TensorData::Int8(v) => v.serialize(serializer),
            TensorData::Int16(v) => v.serialize(serializer),
            TensorData::Int32(v) => v.serialize(serializer),
            TensorData::Int64(v) => v.serialize(serializer),
            TensorData::Fp16(v) => serializer.collect_seq(v.iter().map(|x| x.to_f32())),
            TensorData::Fp32(v) => v.serialize(serializer),
            TensorData::Fp64(v) => v.serialize(serializer),
            TensorData::Bytes(v) => serializer.collect_seq(v.iter().map(|b| String::from_utf8_lossy(b))),
        }
    }
}

/// Elements of a v2 JSON response: as [`JsonData`], except that with `markers` a non-finite
/// float is written as a marker that `nonfinite::restore_tokens` turns into a bare `NaN`,
/// `Infinity` or `-Infinity` (Triton's way; `JsonData` writes null, which SQL JSON accepts).
struct WireData<'a> {
    data: &'a TensorData,
    markers: bool,
}

/// One float of a [`WireData`].
enum WireFloat {
    F32(f32),
    F64(f64),
}

impl Serialize for WireFloat {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            WireFloat::F32(x) if x.is_finite() => serializer.serialize_f32(x),
            WireFloat::F64(x) if x.is_finite() => serializer.serialize_f64(x),
            WireFloat::F32(x) => serializer.serialize_str(crate::nonfinite::marker_for(f64::from(x))),
            WireFloat::F64(x) => serializer.serialize_str(crate::nonfinite::marker_for(x)),
        }
    }
}

impl Serialize for WireData<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.data {
            TensorData::Fp16(v) if self.markers => serializer.collect_seq(v.iter().map(|x| WireFloat::F32(x.to_f32()))),
            TensorData::Fp32(v) if self.markers => serializer.collect_seq(v.iter().map(|&x| WireFloat::F32(x))),
            TensorData::Fp64(v) if self.markers => serializer.collect_seq(v.iter().map(|&x| WireFloat::F64(x))),
            other => JsonData(other).serialize(serializer),
        }
    }
}

/// Whether a tensor holds a float JSON cannot write as a number.
fn has_nonfinite(data: &TensorData) -> bool {
    match data {
        TensorData::Fp16(v) => v.iter().any(|x| !x.is_finite()),
        TensorData::Fp32(v) => v.iter().any(|x| !x.is_finite()),
        TensorData::Fp64(v) => v.iter().any(|x| !x.is_finite()),
        _ => false,
    }
}

#[derive(Serialize)]
struct OutputJsonOut<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<WireData<'a>>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<&'a Map<String, Value>>,
    outputs: Vec<OutputJsonOut<'a>>,
}

/// An encoded response: the JSON header and, when any output is binary, the bytes after it.
#[derive(Debug, Clone)]
pub struct EncodedResponse {
    pub json: Vec<u8>,
    /// Empty when every output is JSON.
    pub binary: Vec<u8>,
}

/// Encodes outputs (already in the order to answer) as the protocol's response.
pub fn encode_response(
    model_name: &str,
    model_version: u64,
    id: Option<&str>,
    parameters: Option<&Map<String, Value>>,
    outputs: &[(Tensor, bool)],
) -> EncodedResponse {
    let mut binary = Vec::new();
    // Non-finite floats go out as bare tokens, unless some text could pass for a marker.
    let markers = outputs.iter().any(|(t, as_binary)| !as_binary && has_nonfinite(&t.data))
        && !outputs.iter().any(|(t, _)| match &t.data {
            TensorData::Bytes(items) => items.iter().any(|b| crate::nonfinite::could_collide(b)),
            _ => false,
        });
    let encoded = outputs
        .iter()
        .map(|(tensor, as_binary)| {
            let (parameters, data) = if *as_binary {
                let bytes = encode_binary(&tensor.data);
                let size = bytes.len();
                binary.extend_from_slice(&bytes);
                (Some(BinarySize { binary_data_size: size }), None)
            } else {
                (None, Some(WireData { data: &tensor.data, markers }))
            };
            OutputJsonOut {
                name: &tensor.name,
                datatype: tensor.datatype().as_str(),
                shape: &tensor.shape,
                parameters,
                data,
            }
        })
        .collect();
    let response =
        ResponseJson { model_name, model_version: model_version.to_string(), id, parameters, outputs: encoded };
    // Serializing these types cannot fail: every map key is a string.
    let json = serde_json::to_vec(&response).unwrap_or_default();
    let json = if markers { crate::nonfinite::restore_tokens(json) } else { json };
    EncodedResponse { json, binary }
}

#[cfg(test)]
mod tests {
    #[test]
    fn out_of_range_floats_and_ragged_data_are_refused_by_position() {
        let one = |data: &str, shape: &str, datatype: &str| {
            let body =
                format!(r#"{{"inputs":[{{"name":"x","shape":{shape},"datatype":"{datatype}","data":{data}}}]}}"#);
            decode_request(body.as_bytes(), None).map(|r| r.inputs[0].data.clone())
        };
        let e = one("[1.0, 1e39]", "[2]", "FP32").expect_err("out of range");
        assert_eq!(e.0, "input 'x': element 1 (1e+39) is out of range for FP32");
        let e = one("[[1.0], [-1e39]]", "[2, 1]", "FP32").expect_err("out of range");
        assert_eq!(e.0, "input 'x': element 1 (-1e+39) is out of range for FP32");
        let e = one("[70000.0]", "[1]", "FP16").expect_err("out of range");
        assert_eq!(e.0, "input 'x': element 0 (70000.0) is out of range for FP16");
        assert_eq!(one("[1e39]", "[1]", "FP64").expect("fits"), TensorData::Fp64(vec![1e39]));
        assert_eq!(one("[Infinity]", "[1]", "FP32").expect("explicit"), TensorData::Fp32(vec![f32::INFINITY]));
        let ragged = format!("[[{}], [{}, [1]]]", ["1"; 30].join(","), ["1"; 29].join(","));
        let e = one(&ragged, "[2, 30]", "FP32").expect_err("ragged");
        assert_eq!(e.0, "input 'x': 'data' is ragged: values at depths 2 and 3 (element 59)");
        let e = one("[[1, 2], [3]]", "[3]", "INT64").expect_err("ragged");
        assert_eq!(e.0, "input 'x': 'data' is ragged: arrays at depth 1 hold 2 and 1 elements");
        assert_eq!(one("[[1, 2], [3, 4]]", "[2, 2]", "INT64").expect("grid"), TensorData::Int64(vec![1, 2, 3, 4]));
    }

    use super::*;
    use serde_json::json;

    fn decode(text: &str) -> Result<DecodedRequest, DecodeError> {
        decode_request(text.as_bytes(), None)
    }

    #[test]
    fn json_tensors_flat_and_nested() {
        let req =
            decode(r#"{"id":"a","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3.5,4]]}]}"#)
                .expect("valid");
        assert_eq!(req.id.as_deref(), Some("a"));
        assert_eq!(req.inputs[0].data, TensorData::Fp32(vec![1.0, 2.0, 3.5, 4.0]));
        let req =
            decode(r#"{"inputs":[{"name":"s","shape":[2],"datatype":"BYTES","data":["a","é"]}]}"#).expect("valid");
        assert_eq!(req.inputs[0].data, TensorData::Bytes(vec![b"a".to_vec(), "é".as_bytes().to_vec()]));
    }

    #[test]
    fn precise_json_errors() {
        let err =
            decode(r#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5]}]}"#).unwrap_err();
        assert_eq!(err.0, "input 'x': the shape needs 6 elements, but 'data' holds 5");
        let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"UINT8","data":[300]}]}"#).unwrap_err();
        assert_eq!(err.0, "input 'x': element 0 (300) is not a valid UINT8");
        let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[1.5]}]}"#).unwrap_err();
        assert_eq!(err.0, "input 'x': element 0 (1.5) is not a valid INT32");
        let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FLOAT","data":[1]}]}"#).unwrap_err();
        assert!(err.0.starts_with("input 'x': unknown datatype 'FLOAT'"), "{}", err.0);
        let err = decode(r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#).unwrap_err();
        assert!(err.0.contains("negative dimension"), "{}", err.0);
        let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1,2,3]}]}"#).unwrap_err();
        assert!(err.0.contains("more elements than the shape's 1"), "{}", err.0);
        let err = decode("{\"inputs\": [").unwrap_err();
        assert!(err.0.starts_with("malformed inference request JSON"), "{}", err.0);
        let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#).unwrap_err();
        assert!(err.0.contains("neither 'data' nor binary_data_size"), "{}", err.0);
        let huge =
            format!(r#"{{"inputs":[{{"name":"x","shape":[{},{}],"datatype":"FP32","data":[1]}}]}}"#, u64::MAX / 2, 8);
        assert!(decode(&huge).unwrap_err().0.contains("too large"));
    }

    fn binary_body(header: &str, data: &[u8]) -> Vec<u8> {
        let mut body = header.as_bytes().to_vec();
        body.extend_from_slice(data);
        body
    }

    #[test]
    fn binary_tensors() {
        let header = r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},{"name":"s","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":11}}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let mut data = Vec::new();
        data.extend_from_slice(&1.5f32.to_le_bytes());
        data.extend_from_slice(&(-2.0f32).to_le_bytes());
        data.extend_from_slice(&encode_binary(&TensorData::Bytes(vec![b"abc".to_vec(), vec![]])));
        let req = decode_request(&binary_body(header, &data), Some(header.len())).expect("valid");
        assert_eq!(req.inputs[0].data, TensorData::Fp32(vec![1.5, -2.0]));
        assert_eq!(req.inputs[1].data, TensorData::Bytes(vec![b"abc".to_vec(), vec![]]));
        assert_eq!(req.outputs, vec![RequestedOutput { name: "y".into(), binary: true, classification: None }]);
    }

    #[test]
    fn binary_errors() {
        let header = r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let err = decode_request(&binary_body(header, &[0; 5]), Some(header.len())).unwrap_err();
        assert_eq!(err.0, "input 'x': binary_data_size is 8, but only 5 bytes of binary data are left in the body");
        let err = decode_request(&binary_body(header, &[0; 12]), Some(header.len())).unwrap_err();
        assert!(err.0.contains("4 bytes of binary data follow"), "{}", err.0);
        let err = decode_request(header.as_bytes(), Some(10_000)).unwrap_err();
        assert!(err.0.contains("Inference-Header-Content-Length is 10000"), "{}", err.0);
        let big = r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":18446744073709551615}}]}"#;
        let err = decode_request(&binary_body(big, &[0; 8]), Some(big.len())).unwrap_err();
        assert!(err.0.contains("only 8 bytes"), "{}", err.0);
        let wrong = r#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let err = decode_request(&binary_body(wrong, &[0; 8]), Some(wrong.len())).unwrap_err();
        assert_eq!(err.0, "input 'x': FP32 with 3 elements needs 12 bytes, but binary_data_size is 8");
        let s = r#"{"inputs":[{"name":"s","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}"#;
        let err = decode_request(&binary_body(s, &[200, 0, 0, 0, 1, 2]), Some(s.len())).unwrap_err();
        assert!(err.0.contains("declares 200 bytes"), "{}", err.0);
    }

    #[test]
    fn every_datatype_survives_binary_encoding() {
        let all = [
            TensorData::Bool(vec![true, false]),
            TensorData::Uint8(vec![0, 255]),
            TensorData::Uint16(vec![1, 65535]),
            TensorData::Uint32(vec![1, u32::MAX]),
            TensorData::Uint64(vec![1, u64::MAX]),
            TensorData::Int8(vec![-128, 127]),
            TensorData::Int16(vec![-1, i16::MAX]),
            TensorData::Int32(vec![i32::MIN, 7]),
            TensorData::Int64(vec![i64::MIN, 7]),
            TensorData::Fp16(vec![f16::from_f32(0.5), f16::from_f32(-2.0)]),
            TensorData::Fp32(vec![0.1, f32::MAX]),
            TensorData::Fp64(vec![0.1, f64::MIN]),
            TensorData::Bytes(vec![b"x".to_vec(), vec![0, 159]]),
        ];
        for data in all {
            let dt = data.datatype();
            let bytes = encode_binary(&data);
            assert_eq!(decode_binary("t", dt, 2, &bytes).expect("decodes"), data, "{dt}");
        }
    }

    #[test]
    fn response_json_and_binary() {
        let y = Tensor::new("y", vec![2], TensorData::Fp32(vec![0.25, 1.0])).expect("tensor");
        let l = Tensor::new("l", vec![2], TensorData::Int64(vec![1, 0])).expect("tensor");
        let r = encode_response("m", 3, Some("req-1"), None, &[(y.clone(), false), (l.clone(), true)]);
        let v: Value = serde_json::from_slice(&r.json).expect("json");
        assert_eq!(v["model_version"], "3");
        assert_eq!(v["id"], "req-1");
        assert_eq!(v["outputs"][0]["data"], json!([0.25, 1.0]));
        assert_eq!(v["outputs"][1]["parameters"]["binary_data_size"], 16);
        assert_eq!(r.binary, encode_binary(&l.data));
    }

    #[test]
    fn nan_and_infinity_as_bare_tokens_both_ways() {
        let body = r#"{"inputs":[{"name":"x","shape":[4],"datatype":"FP32","data":[NaN,Infinity,-Infinity,0.5]},
            {"name":"s","shape":[1],"datatype":"BYTES","data":["NaN"]}]}"#;
        let req = decode(body).expect("Python's json.dumps writes these tokens");
        let TensorData::Fp32(x) = &req.inputs[0].data else { panic!("fp32") };
        assert!(x[0].is_nan());
        assert_eq!(x[1..], [f32::INFINITY, f32::NEG_INFINITY, 0.5]);
        assert_eq!(req.inputs[1].data, TensorData::Bytes(vec![b"NaN".to_vec()]), "a string stays a string");
        let err = decode(r#"{"inputs":[{"name":"i","shape":[1],"datatype":"INT64","data":[NaN]}]}"#).unwrap_err();
        assert_eq!(err.0, "input 'i': element 0 (NaN) is not a valid INT64");
        let err = decode(r#"{"inputs":[{"name":"s","shape":[1],"datatype":"BYTES","data":[Infinity]}]}"#).unwrap_err();
        assert_eq!(err.0, "input 's': element 0 (Infinity) is not a valid BYTES");

        let y = Tensor::new("y", vec![3], TensorData::Fp64(vec![f64::NAN, -1.5, f64::NEG_INFINITY])).expect("tensor");
        let h = Tensor::new("h", vec![1], TensorData::Fp16(vec![half::f16::INFINITY])).expect("tensor");
        let r = encode_response("m", 1, None, None, &[(y, false), (h, false)]);
        let text = String::from_utf8(r.json.clone()).expect("utf-8");
        assert!(text.contains(r#""data":[NaN,-1.5,-Infinity]"#), "{text}");
        assert!(text.contains(r#""data":[Infinity]"#), "{text}");
        let back = decode_response(&r.json, None).expect("kiln reads its own answer");
        assert!(matches!(&back[0].data, TensorData::Fp64(v) if v[0].is_nan() && v[1..] == [-1.5, f64::NEG_INFINITY]));
    }

    #[test]
    fn client_side_round_trip() {
        let x = Tensor::new("x", vec![1, 2], TensorData::Fp32(vec![0.1, f32::NAN])).expect("tensor");
        let s = Tensor::new("s", vec![1], TensorData::Bytes(vec![b"hi".to_vec()])).expect("tensor");
        let (header_len, body) = encode_request(&[x.clone(), s.clone()], &["y".into()]);
        let req = decode_request(&body, Some(header_len)).expect("a server decodes it");
        assert_eq!(req.inputs[1], s);
        assert!(matches!(&req.inputs[0].data, TensorData::Fp32(v) if v[0] == 0.1 && v[1].is_nan()));
        assert_eq!(req.outputs, vec![RequestedOutput { name: "y".into(), binary: true, classification: None }]);
        let r = encode_response("m", 1, None, None, &[(s.clone(), true), (x.clone(), false)]);
        let mut answer = r.json.clone();
        answer.extend_from_slice(&r.binary);
        let outputs = decode_response(&answer, Some(r.json.len())).expect("decodes");
        assert_eq!(outputs[0], s);
        let err =
            decode_response(b"{\"outputs\":[{\"name\":\"y\",\"shape\":[2],\"datatype\":\"FP32\",\"data\":[1]}]}", None)
                .unwrap_err();
        assert_eq!(err.0, "output 'y': the shape needs 2 elements, but 'data' holds 1");
    }
}
