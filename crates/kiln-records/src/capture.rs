//! What a request hands the log: its tensors, encoded once into one compact binary blob (the
//! row's `inputs_bin` / `outputs_bin`), at most up to the byte cap. The REST API turns a blob
//! back into the JSON document `{name: {datatype, shape, data}}` when a row is read.
//!
//! The blob (format 1, all integers unsigned LEB128 varints unless said otherwise):
//!
//! ```text
//! blob   := 0x01 tensor*
//! tensor := len name  datatype(1 byte)  ndim dim*  kept(1 byte: 1 = data follows, 0 = cut)  [len data]
//! ```
//!
//! `datatype` is the type's position in the v2 list (0 BOOL, 1 UINT8, 2 UINT16, 3 UINT32,
//! 4 UINT64, 5 INT8, 6 INT16, 7 INT32, 8 INT64, 9 FP16, 10 FP32, 11 FP64, 12 BYTES); `data` is the elements as the v2 binary
//! extension sends them (little-endian; BYTES as 4-byte length-prefixed items). A request pays
//! for one allocation: the size is known exactly before anything is copied, and when the data
//! would pass the cap only the names and shapes are kept.

use kiln_core::{DataType, Tensor, TensorData};
use kiln_protocol::v2::{JsonData, append_binary, binary_len, decode_binary};
use serde_json::{Map, Value};

/// The blob format this version writes.
const FORMAT: u8 = 1;

/// The kept tensors of one side (inputs or outputs) of a request, encoded.
#[derive(Debug, Clone)]
pub struct Captured {
    blob: Vec<u8>,
    /// The data was left out (over the cap).
    cut: bool,
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn varint_len(n: u64) -> usize {
    (64 - n.max(1).leading_zeros() as usize).div_ceil(7)
}

/// The bytes `tensor` takes in a blob: (without its data, its data alone).
fn encoded_len(tensor: &Tensor) -> (usize, usize) {
    let name = tensor.name.len();
    let dims: usize = tensor.shape.iter().map(|&d| varint_len(d as u64)).sum();
    let head = varint_len(name as u64) + name + 1 + varint_len(tensor.shape.len() as u64) + dims + 1;
    let data = binary_len(&tensor.data);
    (head, varint_len(data as u64) + data)
}

/// A datatype's one-byte code: its position in [`DataType::ALL`] (fixed for format 1).
fn datatype_code(datatype: DataType) -> u8 {
    DataType::ALL.iter().position(|&d| d == datatype).unwrap_or_default() as u8
}

fn put_tensor(out: &mut Vec<u8>, tensor: &Tensor, with_data: bool) {
    put_varint(out, tensor.name.len() as u64);
    out.extend_from_slice(tensor.name.as_bytes());
    out.push(datatype_code(tensor.datatype()));
    put_varint(out, tensor.shape.len() as u64);
    for &d in &tensor.shape {
        put_varint(out, d as u64);
    }
    out.push(u8::from(with_data));
    if with_data {
        put_varint(out, binary_len(&tensor.data) as u64);
        append_binary(&tensor.data, out);
    }
}

/// `tensors` as a blob, data included whatever its size.
pub fn encode<'a>(tensors: impl Iterator<Item = &'a Tensor>) -> Vec<u8> {
    let mut blob = vec![FORMAT];
    for t in tensors {
        put_tensor(&mut blob, t, true);
    }
    blob
}

impl Captured {
    /// Encodes `tensors` when the blob fits in `max_bytes`; otherwise their names and shapes.
    pub fn new<'a>(tensors: impl Iterator<Item = &'a Tensor> + Clone, max_bytes: usize) -> Captured {
        let (heads, data) = tensors.clone().map(encoded_len).fold((1, 0), |(h, d), (th, td)| (h + th, d + td));
        let cut = heads + data > max_bytes;
        let mut blob = Vec::with_capacity(if cut { heads } else { heads + data });
        blob.push(FORMAT);
        for t in tensors {
            put_tensor(&mut blob, t, !cut);
        }
        Captured { blob, cut }
    }

    /// The blob's bytes.
    pub fn len(&self) -> usize {
        self.blob.len()
    }

    /// Never: a blob holds at least its format byte.
    pub fn is_empty(&self) -> bool {
        self.blob.is_empty()
    }

    /// The blob, and whether the data was cut.
    pub fn into_parts(self) -> (Vec<u8>, bool) {
        (self.blob, self.cut)
    }
}

/// Reads a blob back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.0.split_first().ok_or("the blob ends inside a number")?;
            self.0 = rest;
            n |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err("a number in the blob is longer than 64 bits".into())
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let len = usize::try_from(self.varint()?).map_err(|_| format!("{what}: length too large"))?;
        if len > self.0.len() {
            return Err(format!("{what}: {len} bytes declared, {} left", self.0.len()));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    fn text(&mut self, what: &str) -> Result<&'a str, String> {
        std::str::from_utf8(self.bytes(what)?).map_err(|_| format!("{what} is not UTF-8"))
    }
}

/// One tensor read from a blob: its data is `None` when it was cut at the cap.
#[derive(Debug)]
pub struct Stored {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<usize>,
    pub data: Option<TensorData>,
}

/// The tensors of a blob, in order.
pub fn decode(blob: &[u8]) -> Result<Vec<Stored>, String> {
    let (&format, rest) = blob.split_first().ok_or("an empty tensor blob")?;
    if format != FORMAT {
        return Err(format!("tensor blob format {format} is not one this kiln reads ({FORMAT})"));
    }
    let mut r = Reader(rest);
    let mut out = Vec::new();
    while !r.0.is_empty() {
        let name = r.text("a tensor name")?.to_string();
        let (&code, rest) = r.0.split_first().ok_or("the blob ends before a datatype")?;
        r.0 = rest;
        let datatype =
            *DataType::ALL.get(usize::from(code)).ok_or_else(|| format!("tensor '{name}': datatype code {code}"))?;
        let ndim = r.varint()?;
        if ndim > 64 {
            return Err(format!("tensor '{name}': {ndim} dimensions"));
        }
        let shape = (0..ndim).map(|_| r.varint().map(|d| d as usize)).collect::<Result<Vec<_>, _>>()?;
        let (&kept, rest) = r.0.split_first().ok_or("the blob ends before a data flag")?;
        r.0 = rest;
        let data = if kept == 1 {
            let bytes = r.bytes("tensor data")?;
            let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or("shape overflows")?;
            Some(decode_binary(&name, datatype, count, bytes).map_err(|e| e.0)?)
        } else {
            None
        };
        out.push(Stored { name, datatype, shape, data });
    }
    Ok(out)
}

/// A blob as the API shows it: `{name: {datatype, shape, data}}` (no `data` when it was cut).
pub fn to_json(blob: &[u8]) -> Result<Value, String> {
    let mut doc = Map::new();
    for t in decode(blob)? {
        let mut entry = Map::new();
        entry.insert("datatype".into(), Value::from(t.datatype.as_str()));
        entry.insert("shape".into(), Value::from(t.shape));
        if let Some(data) = &t.data {
            entry.insert("data".into(), serde_json::to_value(JsonData(data)).map_err(|e| e.to_string())?);
        }
        doc.insert(t.name, Value::Object(entry));
    }
    Ok(Value::Object(doc))
}

/// The predicted label per row, copied from the label output; formatted by the writer.
#[derive(Debug, Clone)]
pub struct Labels(TensorData);

impl Labels {
    /// Labels are integer or string classes; other types have none.
    pub fn new(data: &TensorData) -> Option<Labels> {
        matches!(data, TensorData::Int64(_) | TensorData::Int32(_) | TensorData::Bytes(_)).then(|| Labels(data.clone()))
    }

    /// About the bytes the labels hold.
    pub fn len(&self) -> usize {
        kiln_protocol::v2::binary_len(&self.0)
    }

    /// No label at all.
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }

    /// A JSON array of strings, one per row.
    pub fn render(&self) -> Option<String> {
        let values: Vec<String> = match &self.0 {
            TensorData::Int64(v) => v.iter().map(ToString::to_string).collect(),
            TensorData::Int32(v) => v.iter().map(ToString::to_string).collect(),
            TensorData::Bytes(v) => v.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect(),
            _ => return None,
        };
        serde_json::to_string(&values).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(n: usize) -> Tensor {
        Tensor::new("x", vec![n, 1], TensorData::Fp32((0..n).map(|i| i as f32).collect())).expect("tensor")
    }

    #[test]
    fn small_tensors_are_kept_whole() {
        let t = tensor(3);
        let (blob, cut) = Captured::new(std::iter::once(&t), 1000).into_parts();
        assert!(!cut);
        // format, name, datatype, shape, flag, 12 bytes of data
        assert_eq!(blob.len(), 1 + 2 + 1 + 3 + 1 + 1 + 12);
        assert_eq!(
            to_json(&blob).expect("decodes").to_string(),
            r#"{"x":{"datatype":"FP32","shape":[3,1],"data":[0.0,1.0,2.0]}}"#
        );
    }

    #[test]
    fn tensors_past_the_cap_keep_their_names_and_shapes() {
        let t = tensor(65_536);
        let (blob, cut) = Captured::new(std::iter::once(&t), 65_536).into_parts();
        assert!(cut);
        assert!(blob.len() < 20, "no data copied: {} bytes", blob.len());
        assert_eq!(to_json(&blob).expect("decodes").to_string(), r#"{"x":{"datatype":"FP32","shape":[65536,1]}}"#);
        // Exactly at the cap still fits.
        let t = tensor(10);
        let whole = encode(std::iter::once(&t)).len();
        assert!(!Captured::new(std::iter::once(&t), whole).cut);
        assert!(Captured::new(std::iter::once(&t), whole - 1).cut);
    }

    #[test]
    fn every_datatype_round_trips() {
        let tensors = [
            Tensor::new("b", vec![2], TensorData::Bool(vec![true, false])),
            Tensor::new("i8", vec![2], TensorData::Int8(vec![-1, 7])),
            Tensor::new("u16", vec![1], TensorData::Uint16(vec![65_535])),
            Tensor::new("i64", vec![2, 1], TensorData::Int64(vec![i64::MIN, 300])),
            Tensor::new("f64", vec![1], TensorData::Fp64(vec![0.1])),
            Tensor::new("s", vec![2], TensorData::Bytes(vec![b"caf\xc3\xa9".to_vec(), Vec::new()])),
            Tensor::new("long name ".repeat(20), vec![0, 3], TensorData::Fp32(Vec::new())),
        ]
        .map(|t| t.expect("tensor"));
        let blob = encode(tensors.iter());
        let back = decode(&blob).expect("decodes");
        assert_eq!(back.len(), tensors.len());
        for (t, s) in tensors.iter().zip(&back) {
            assert_eq!((&t.name, t.datatype(), &t.shape), (&s.name, s.datatype, &s.shape));
            assert_eq!(Some(&t.data), s.data.as_ref());
        }
    }

    #[test]
    fn damaged_blobs_are_errors_not_panics() {
        let blob = encode(std::iter::once(&tensor(4)));
        for n in 0..blob.len() {
            assert!(decode(&blob[..n]).is_err() || n == 1, "a blob cut at {n} bytes");
        }
        assert!(decode(&[9]).expect_err("unknown format").contains("format 9"));
        let mut wrong = blob.clone();
        wrong[3] = 13; // FP32 -> no type
        assert!(decode(&wrong).is_err());
    }

    #[test]
    fn labels_render_as_strings() {
        let labels = Labels::new(&TensorData::Int64(vec![1, 0])).expect("int labels");
        assert_eq!(labels.render().as_deref(), Some(r#"["1","0"]"#));
        assert!(Labels::new(&TensorData::Fp32(vec![0.5])).is_none());
    }
}
