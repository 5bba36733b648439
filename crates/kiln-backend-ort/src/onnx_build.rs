//! Writes an ONNX model from code: a graph of standard (and `com.microsoft`) operators with its
//! weights as initializers, encoded straight to the protobuf wire format that ONNX Runtime
//! loads from memory. kiln-text builds transformer encoders with it from Hugging Face folders
//! (config.json + safetensors), so those run on the same runtime as exported ONNX files.
//!
//! Field numbers are those of `onnx.proto`.

use crate::onnx_proto::{write_bytes, write_uint, write_varint};

const IR_VERSION: u64 = 8;

/// An ONNX element type (`TensorProto.DataType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    Float = 1,
    Int32 = 6,
    Int64 = 7,
}

/// One dimension of a declared input or output.
#[derive(Debug, Clone, Copy)]
pub enum Dim<'a> {
    Fixed(i64),
    Named(&'a str),
}

/// A node attribute.
#[derive(Debug, Clone, Copy)]
pub enum Attr<'a> {
    Int(&'a str, i64),
    Float(&'a str, f32),
    Ints(&'a str, &'a [i64]),
}

/// A graph under construction. Node outputs are named by the builder (`n0`, `n1`, ...);
/// initializers and graph inputs keep the names they are given.
#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<u8>,
    initializers: Vec<u8>,
    inputs: Vec<u8>,
    outputs: Vec<u8>,
    next: usize,
    uses_microsoft: bool,
}

fn value_info(name: &str, elem: Elem, dims: &[Dim<'_>]) -> Vec<u8> {
    let mut shape = Vec::new();
    for dim in dims {
        let mut d = Vec::new();
        match dim {
            Dim::Fixed(v) => write_uint(&mut d, 1, *v as u64),
            Dim::Named(p) => write_bytes(&mut d, 2, p.as_bytes()),
        }
        write_bytes(&mut shape, 1, &d);
    }
    let mut tensor = Vec::new();
    write_uint(&mut tensor, 1, elem as u64);
    write_bytes(&mut tensor, 2, &shape);
    let mut ty = Vec::new();
    write_bytes(&mut ty, 1, &tensor);
    let mut info = Vec::new();
    write_bytes(&mut info, 1, name.as_bytes());
    write_bytes(&mut info, 2, &ty);
    info
}

fn attribute(attr: &Attr<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    match attr {
        Attr::Int(name, v) => {
            write_bytes(&mut out, 1, name.as_bytes());
            write_uint(&mut out, 3, *v as u64);
            write_uint(&mut out, 20, 2);
        }
        Attr::Float(name, v) => {
            write_bytes(&mut out, 1, name.as_bytes());
            write_varint(&mut out, (2 << 3) | 5);
            out.extend_from_slice(&v.to_le_bytes());
            write_uint(&mut out, 20, 1);
        }
        Attr::Ints(name, values) => {
            write_bytes(&mut out, 1, name.as_bytes());
            for v in *values {
                write_uint(&mut out, 8, *v as u64);
            }
            write_uint(&mut out, 20, 7);
        }
    }
    out
}

impl GraphBuilder {
    pub fn new() -> Self {
        GraphBuilder::default()
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, elem: Elem, dims: &[Dim<'_>]) {
        let info = value_info(name, elem, dims);
        write_bytes(&mut self.inputs, 11, &info);
    }

    /// Declares a graph output: `value` (a node output) is published under `name`.
    pub fn output(&mut self, value: &str, name: &str, elem: Elem, dims: &[Dim<'_>]) {
        self.push_node("", "Identity", &[value], &[name.to_string()], &[]);
        let info = value_info(name, elem, dims);
        write_bytes(&mut self.outputs, 12, &info);
    }

    /// An FP32 initializer.
    pub fn weight(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        let mut bytes = Vec::with_capacity(data.len() * 4);
        for v in data {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.raw_initializer(name, Elem::Float, dims, &bytes);
        name.to_string()
    }

    /// An INT64 initializer (shapes, axes, indices).
    pub fn int64s(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        let mut bytes = Vec::with_capacity(data.len() * 8);
        for v in data {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.raw_initializer(name, Elem::Int64, dims, &bytes);
        name.to_string()
    }

    fn raw_initializer(&mut self, name: &str, elem: Elem, dims: &[usize], raw: &[u8]) {
        let mut tensor = Vec::with_capacity(raw.len() + name.len() + 32);
        for d in dims {
            write_uint(&mut tensor, 1, *d as u64);
        }
        write_uint(&mut tensor, 2, elem as u64);
        write_bytes(&mut tensor, 8, name.as_bytes());
        write_bytes(&mut tensor, 9, raw);
        write_bytes(&mut self.initializers, 5, &tensor);
    }

    /// A standard-domain node with one output; returns the output's name.
    pub fn op(&mut self, op_type: &str, inputs: &[&str], attrs: &[Attr<'_>]) -> String {
        self.node("", op_type, inputs, 1, attrs).pop().unwrap_or_default()
    }

    /// A `com.microsoft` node (ONNX Runtime's contrib operators) with one output.
    pub fn ms_op(&mut self, op_type: &str, inputs: &[&str], attrs: &[Attr<'_>]) -> String {
        self.uses_microsoft = true;
        self.node("com.microsoft", op_type, inputs, 1, attrs).pop().unwrap_or_default()
    }

    /// A node with `outputs` outputs; an empty input name is an omitted optional input.
    pub fn node(
        &mut self,
        domain: &str,
        op_type: &str,
        inputs: &[&str],
        outputs: usize,
        attrs: &[Attr<'_>],
    ) -> Vec<String> {
        let names: Vec<String> = (0..outputs)
            .map(|_| {
                self.next += 1;
                format!("n{}", self.next)
            })
            .collect();
        self.push_node(domain, op_type, inputs, &names, attrs);
        names
    }

    fn push_node(&mut self, domain: &str, op_type: &str, inputs: &[&str], outputs: &[String], attrs: &[Attr<'_>]) {
        let mut node = Vec::new();
        for input in inputs {
            write_bytes(&mut node, 1, input.as_bytes());
        }
        for output in outputs {
            write_bytes(&mut node, 2, output.as_bytes());
        }
        write_bytes(&mut node, 3, format!("{op_type}_{}", outputs.first().map_or("", String::as_str)).as_bytes());
        write_bytes(&mut node, 4, op_type.as_bytes());
        for attr in attrs {
            write_bytes(&mut node, 5, &attribute(attr));
        }
        if !domain.is_empty() {
            write_bytes(&mut node, 7, domain.as_bytes());
        }
        write_bytes(&mut self.nodes, 1, &node);
    }

    /// The model's bytes: IR version 8, ONNX opset `opset` (and `com.microsoft` 1 when used).
    pub fn finish(self, name: &str, opset: u64) -> Vec<u8> {
        let mut graph = Vec::with_capacity(self.nodes.len() + self.initializers.len() + 1024);
        graph.extend_from_slice(&self.nodes);
        write_bytes(&mut graph, 2, name.as_bytes());
        graph.extend_from_slice(&self.initializers);
        graph.extend_from_slice(&self.inputs);
        graph.extend_from_slice(&self.outputs);
        let mut model = Vec::with_capacity(graph.len() + 256);
        write_uint(&mut model, 1, IR_VERSION);
        write_bytes(&mut model, 2, b"kiln");
        let mut onnx = Vec::new();
        write_bytes(&mut onnx, 1, b"");
        write_uint(&mut onnx, 2, opset);
        write_bytes(&mut model, 8, &onnx);
        if self.uses_microsoft {
            let mut ms = Vec::new();
            write_bytes(&mut ms, 1, b"com.microsoft");
            write_uint(&mut ms, 2, 1);
            write_bytes(&mut model, 8, &ms);
        }
        write_bytes(&mut model, 7, &graph);
        model
    }
}
