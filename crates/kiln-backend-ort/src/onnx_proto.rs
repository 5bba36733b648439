//! Just enough of the ONNX protobuf format to inspect a model and to rewrite scikit-learn's
//! `ZipMap` output, working on the wire format directly.
//!
//! Decoding into generated structs and encoding again would silently drop every field the
//! structs do not declare; walking the wire format copies each field we do not touch byte
//! for byte, so the rewritten model is the original one but for the edited fields.
//!
//! Field numbers are those of `onnx.proto` (ModelProto, GraphProto, NodeProto, ...).

use std::collections::BTreeMap;

/// A malformed protobuf message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid ONNX model: {0}")]
pub struct ProtoError(String);

#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32,
}

#[derive(Debug, Clone, Copy)]
struct Field<'a> {
    number: u32,
    value: Value<'a>,
    /// The whole field (key and payload), for verbatim copies.
    raw: &'a [u8],
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, ProtoError> {
    let mut result = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos).ok_or_else(|| ProtoError("truncated varint".into()))?;
        *pos += 1;
        result |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(result);
        }
    }
    Err(ProtoError("varint longer than 10 bytes".into()))
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], ProtoError> {
    let end = pos.checked_add(n).filter(|&e| e <= buf.len()).ok_or_else(|| ProtoError("truncated field".into()))?;
    let slice = &buf[*pos..end];
    *pos = end;
    Ok(slice)
}

fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>, ProtoError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let key = read_varint(buf, &mut pos)?;
        let number = u32::try_from(key >> 3).map_err(|_| ProtoError("field number out of range".into()))?;
        let value = match key & 7 {
            0 => Value::Varint(read_varint(buf, &mut pos)?),
            1 => {
                take(buf, &mut pos, 8)?;
                Value::Fixed64
            }
            2 => {
                let len = usize::try_from(read_varint(buf, &mut pos)?)
                    .map_err(|_| ProtoError("length out of range".into()))?;
                Value::Bytes(take(buf, &mut pos, len)?)
            }
            5 => {
                take(buf, &mut pos, 4)?;
                Value::Fixed32
            }
            other => return Err(ProtoError(format!("unsupported wire type {other}"))),
        };
        out.push(Field { number, value, raw: &buf[start..pos] });
    }
    Ok(out)
}

pub(crate) fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn write_bytes(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    write_varint(out, (u64::from(number) << 3) | 2);
    write_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

pub(crate) fn write_uint(out: &mut Vec<u8>, number: u32, v: u64) {
    write_varint(out, u64::from(number) << 3);
    write_varint(out, v);
}

fn string_of(field: &Field<'_>) -> Option<String> {
    match field.value {
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

fn bytes_of<'a>(field: &Field<'a>) -> Result<&'a [u8], ProtoError> {
    match field.value {
        Value::Bytes(b) => Ok(b),
        _ => Err(ProtoError(format!("field {} should be length-delimited", field.number))),
    }
}

// ModelProto
const MODEL_IR_VERSION: u32 = 1;
const MODEL_PRODUCER_NAME: u32 = 2;
const MODEL_PRODUCER_VERSION: u32 = 3;
const MODEL_GRAPH: u32 = 7;
const MODEL_OPSET_IMPORT: u32 = 8;
// OperatorSetIdProto
const OPSET_DOMAIN: u32 = 1;
const OPSET_VERSION: u32 = 2;
// GraphProto
const GRAPH_NODE: u32 = 1;
const GRAPH_OUTPUT: u32 = 12;
// NodeProto
const NODE_INPUT: u32 = 1;
const NODE_OUTPUT: u32 = 2;
const NODE_NAME: u32 = 3;
const NODE_OP_TYPE: u32 = 4;
const NODE_ATTRIBUTE: u32 = 5;
const NODE_DOMAIN: u32 = 7;
// AttributeProto
const ATTR_NAME: u32 = 1;
const ATTR_INTS: u32 = 8;
const ATTR_STRINGS: u32 = 9;
// ValueInfoProto
const VALUE_INFO_NAME: u32 = 1;
const VALUE_INFO_TYPE: u32 = 2;
// TypeProto / TypeProto.Tensor / TensorShapeProto / Dimension
const TYPE_TENSOR: u32 = 1;
const TENSOR_ELEM_TYPE: u32 = 1;
const TENSOR_SHAPE: u32 = 2;
const SHAPE_DIM: u32 = 1;
const DIM_VALUE: u32 = 1;
const DIM_PARAM: u32 = 2;
const ONNX_FLOAT: u64 = 1;

/// What `kiln inspect` shows about a model file beyond its inputs and outputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelSummary {
    pub ir_version: u64,
    pub producer: String,
    /// (domain, version); the default domain is shown as `ai.onnx`.
    pub opsets: Vec<(String, u64)>,
    /// Operator counts of the main graph, keyed by `domain:op_type` (`op_type` alone for
    /// the default domain).
    pub ops: BTreeMap<String, usize>,
}

/// Reads the header fields and operator counts of a model.
pub fn summarize(model: &[u8]) -> Result<ModelSummary, ProtoError> {
    let mut summary = ModelSummary::default();
    let mut producer_version = String::new();
    let mut saw_graph = false;
    for field in fields(model)? {
        match (field.number, field.value) {
            (MODEL_IR_VERSION, Value::Varint(v)) => summary.ir_version = v,
            (MODEL_PRODUCER_NAME, _) => summary.producer = string_of(&field).unwrap_or_default(),
            (MODEL_PRODUCER_VERSION, _) => producer_version = string_of(&field).unwrap_or_default(),
            (MODEL_OPSET_IMPORT, Value::Bytes(b)) => {
                let mut domain = String::new();
                let mut version = 0;
                for f in fields(b)? {
                    match (f.number, f.value) {
                        (OPSET_DOMAIN, _) => domain = string_of(&f).unwrap_or_default(),
                        (OPSET_VERSION, Value::Varint(v)) => version = v,
                        _ => {}
                    }
                }
                if domain.is_empty() {
                    domain = "ai.onnx".into();
                }
                summary.opsets.push((domain, version));
            }
            (MODEL_GRAPH, Value::Bytes(graph)) => {
                saw_graph = true;
                for node in fields(graph)?.iter().filter(|f| f.number == GRAPH_NODE) {
                    let (op_type, domain) = node_op(bytes_of(node)?)?;
                    let key =
                        if domain.is_empty() || domain == "ai.onnx" { op_type } else { format!("{domain}:{op_type}") };
                    *summary.ops.entry(key).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    if !saw_graph {
        return Err(ProtoError("no graph".into()));
    }
    if !producer_version.is_empty() {
        summary.producer = format!("{} {producer_version}", summary.producer);
    }
    Ok(summary)
}

fn node_op(node: &[u8]) -> Result<(String, String), ProtoError> {
    let mut op_type = String::new();
    let mut domain = String::new();
    for f in fields(node)? {
        match f.number {
            NODE_OP_TYPE => op_type = string_of(&f).unwrap_or_default(),
            NODE_DOMAIN => domain = string_of(&f).unwrap_or_default(),
            _ => {}
        }
    }
    Ok((op_type, domain))
}

/// A `ZipMap` that [`rewrite_zipmaps`] replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipMapRewrite {
    /// The graph output that was a `sequence<map<_, float>>` and is now `float [N, classes]`.
    pub output: String,
    /// The class labels in column order, as text.
    pub labels: Vec<String>,
}

/// A model after [`rewrite_zipmaps`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrittenModel {
    pub bytes: Vec<u8>,
    pub rewrites: Vec<ZipMapRewrite>,
}

/// Replaces every `ai.onnx.ml` `ZipMap` node that feeds a graph output by an `Identity`, so
/// the output becomes the FP32 probability tensor `[N, n_classes]` that went into the
/// ZipMap. Returns the rewritten model (or `None` when it has no ZipMap) and what changed.
pub fn rewrite_zipmaps(model: &[u8]) -> Result<Option<RewrittenModel>, ProtoError> {
    let model_fields = fields(model)?;
    let Some(graph_field) = model_fields.iter().find(|f| f.number == MODEL_GRAPH) else {
        return Err(ProtoError("no graph".into()));
    };
    let graph = bytes_of(graph_field)?;
    let graph_fields = fields(graph)?;

    let mut rewrites = Vec::new();
    let mut new_graph = Vec::with_capacity(graph.len());
    for field in &graph_fields {
        if field.number == GRAPH_NODE
            && let Some((node, rewrite)) = rewrite_node(bytes_of(field)?)?
        {
            write_bytes(&mut new_graph, GRAPH_NODE, &node);
            rewrites.push(rewrite);
            continue;
        }
        if field.number != GRAPH_OUTPUT {
            new_graph.extend_from_slice(field.raw);
        }
    }
    if rewrites.is_empty() {
        return Ok(None);
    }
    // Outputs go after the nodes in the rebuilt graph; field order does not matter to
    // protobuf, and repeated fields keep their relative order.
    for field in graph_fields.iter().filter(|f| f.number == GRAPH_OUTPUT) {
        let info = bytes_of(field)?;
        let name = fields(info)?.iter().find(|f| f.number == VALUE_INFO_NAME).and_then(string_of).unwrap_or_default();
        match rewrites.iter().find(|r| r.output == name) {
            Some(rewrite) => {
                let mut value_info = Vec::new();
                write_bytes(&mut value_info, VALUE_INFO_NAME, name.as_bytes());
                write_bytes(&mut value_info, VALUE_INFO_TYPE, &float_matrix_type(rewrite.labels.len()));
                write_bytes(&mut new_graph, GRAPH_OUTPUT, &value_info);
            }
            None => new_graph.extend_from_slice(field.raw),
        }
    }

    let mut new_model = Vec::with_capacity(model.len());
    let mut has_default_opset = false;
    for field in &model_fields {
        match field.number {
            MODEL_GRAPH => write_bytes(&mut new_model, MODEL_GRAPH, &new_graph),
            MODEL_OPSET_IMPORT => {
                let domain = fields(bytes_of(field)?)?
                    .iter()
                    .find(|f| f.number == OPSET_DOMAIN)
                    .and_then(string_of)
                    .unwrap_or_default();
                has_default_opset |= domain.is_empty() || domain == "ai.onnx";
                new_model.extend_from_slice(field.raw);
            }
            _ => new_model.extend_from_slice(field.raw),
        }
    }
    if !has_default_opset {
        // Identity needs the default domain; opset 13 has it for every tensor type we use.
        let mut opset = Vec::new();
        write_bytes(&mut opset, OPSET_DOMAIN, b"");
        write_uint(&mut opset, OPSET_VERSION, 13);
        write_bytes(&mut new_model, MODEL_OPSET_IMPORT, &opset);
    }
    Ok(Some(RewrittenModel { bytes: new_model, rewrites }))
}

/// `TypeProto { tensor_type { elem_type: FLOAT, shape { dim { dim_param: "N" } dim { dim_value: classes } } } }`
fn float_matrix_type(classes: usize) -> Vec<u8> {
    let mut batch = Vec::new();
    write_bytes(&mut batch, DIM_PARAM, b"N");
    let mut columns = Vec::new();
    write_uint(&mut columns, DIM_VALUE, classes as u64);
    let mut shape = Vec::new();
    write_bytes(&mut shape, SHAPE_DIM, &batch);
    write_bytes(&mut shape, SHAPE_DIM, &columns);
    let mut tensor = Vec::new();
    write_uint(&mut tensor, TENSOR_ELEM_TYPE, ONNX_FLOAT);
    write_bytes(&mut tensor, TENSOR_SHAPE, &shape);
    let mut ty = Vec::new();
    write_bytes(&mut ty, TYPE_TENSOR, &tensor);
    ty
}

fn rewrite_node(node: &[u8]) -> Result<Option<(Vec<u8>, ZipMapRewrite)>, ProtoError> {
    let node_fields = fields(node)?;
    let (op_type, domain) = node_op(node)?;
    if op_type != "ZipMap" || domain != "ai.onnx.ml" {
        return Ok(None);
    }
    let inputs: Vec<&Field<'_>> = node_fields.iter().filter(|f| f.number == NODE_INPUT).collect();
    let outputs: Vec<&Field<'_>> = node_fields.iter().filter(|f| f.number == NODE_OUTPUT).collect();
    let (&[input], &[output]) = (inputs.as_slice(), outputs.as_slice()) else {
        return Err(ProtoError("ZipMap node must have one input and one output".into()));
    };
    let mut labels = Vec::new();
    for attr in node_fields.iter().filter(|f| f.number == NODE_ATTRIBUTE) {
        let attr_fields = fields(bytes_of(attr)?)?;
        let name = attr_fields.iter().find(|f| f.number == ATTR_NAME).and_then(string_of).unwrap_or_default();
        for f in &attr_fields {
            match (name.as_str(), f.number, f.value) {
                ("classlabels_int64s", ATTR_INTS, Value::Varint(v)) => labels.push((v as i64).to_string()),
                ("classlabels_int64s", ATTR_INTS, Value::Bytes(packed)) => {
                    let mut pos = 0;
                    while pos < packed.len() {
                        labels.push((read_varint(packed, &mut pos)? as i64).to_string());
                    }
                }
                ("classlabels_strings", ATTR_STRINGS, _) => labels.push(string_of(f).unwrap_or_default()),
                _ => {}
            }
        }
    }
    if labels.is_empty() {
        return Err(ProtoError("ZipMap node has no class labels".into()));
    }
    let mut new_node = Vec::new();
    new_node.extend_from_slice(input.raw);
    new_node.extend_from_slice(output.raw);
    if let Some(name) = node_fields.iter().find(|f| f.number == NODE_NAME) {
        new_node.extend_from_slice(name.raw);
    }
    write_bytes(&mut new_node, NODE_OP_TYPE, b"Identity");
    let output_name = string_of(output).unwrap_or_default();
    Ok(Some((new_node, ZipMapRewrite { output: output_name, labels })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut buf = Vec::new();
            write_varint(&mut buf, v);
            let mut pos = 0;
            assert_eq!(read_varint(&buf, &mut pos), Ok(v));
            assert_eq!(pos, buf.len());
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(summarize(b"this is not an ONNX model\n").is_err());
        assert!(summarize(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(summarize(&[]).is_err());
        assert!(rewrite_zipmaps(&[0x3a, 0x05, 0x01]).is_err());
    }
}
