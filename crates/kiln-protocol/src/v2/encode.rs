//! Encoding v2 REST bodies: responses (JSON tensors or the binary extension) for the server,
//! requests (all binary) for kiln's own client.

use kiln_core::{Tensor, TensorData};
use serde::{Serialize, Serializer};

use super::*;

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

/// The binary encoding of a tensor's elements (little-endian; BYTES length-prefixed).
pub fn encode_binary(data: &TensorData) -> Vec<u8> {
    let mut out = Vec::with_capacity(binary_len(data));
    append_binary(data, &mut out);
    out
}

/// How many bytes [`encode_binary`] writes for `data`.
pub fn binary_len(data: &TensorData) -> usize {
    match (data, data.datatype().element_size()) {
        (TensorData::Bytes(items), _) => items.iter().map(|i| i.len() + 4).sum(),
        (_, size) => data.len() * size.unwrap_or(1),
    }
}

/// [`encode_binary`] appended to `out` (no allocation of its own).
pub fn append_binary(data: &TensorData, out: &mut Vec<u8>) {
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match data {
        TensorData::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        TensorData::Uint8(v) => out.extend_from_slice(v),
        TensorData::Int8(v) => out.extend(v.iter().map(|&x| x as u8)),
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
            for item in items {
                out.extend_from_slice(&(item.len() as u32).to_le_bytes());
                out.extend_from_slice(item);
            }
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
