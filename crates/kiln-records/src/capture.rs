//! What a request hands the log: its tensors copied — at most up to the byte cap — and
//! formatted as JSON later, by the writer, never on the request path.
//!
//! A request pays for one bounded copy: before copying, [`Captured::new`] computes the fewest
//! bytes the tensors' JSON could take (every element at its shortest spelling); when even that
//! is over the cap, only the shapes are kept and nothing is copied. The writer then
//! serializes through a writer that stops at the cap, so a row's JSON never grows past it.

use std::io::Write;

use kiln_core::{DataType, Tensor, TensorData};
use kiln_protocol::v2::JsonData;

/// The kept tensors of one side (inputs or outputs) of a request.
#[derive(Debug, Clone)]
pub struct Captured {
    tensors: Vec<CapturedTensor>,
    max_bytes: usize,
    /// The data was left out already at capture.
    cut: bool,
}

#[derive(Debug, Clone)]
struct CapturedTensor {
    name: String,
    datatype: DataType,
    shape: Vec<usize>,
    data: Option<TensorData>,
}

/// The shortest JSON an element of this type can take, separator included.
fn min_element_bytes(datatype: DataType) -> usize {
    match datatype {
        DataType::Bool => 5,                                   // true,
        DataType::Fp16 | DataType::Fp32 | DataType::Fp64 => 4, // 0.0,
        DataType::Bytes => 3,                                  // "",
        _ => 2,                                                // 0,
    }
}

impl Captured {
    /// Copies `tensors` when their JSON can fit in `max_bytes`; otherwise keeps their shapes.
    pub fn new<'a>(tensors: impl Iterator<Item = &'a Tensor> + Clone, max_bytes: usize) -> Captured {
        let least: usize = tensors
            .clone()
            .map(|t| t.name.len() + 40 + t.data.len().saturating_mul(min_element_bytes(t.datatype())))
            .fold(0, usize::saturating_add);
        let cut = least > max_bytes;
        let tensors = tensors
            .map(|t| CapturedTensor {
                name: t.name.clone(),
                datatype: t.datatype(),
                shape: t.shape.clone(),
                data: (!cut).then(|| t.data.clone()),
            })
            .collect();
        Captured { tensors, max_bytes, cut }
    }

    /// `{name: {datatype, shape, data}}`, or only the shapes past the cap (`true` = cut).
    pub fn render(&self) -> (String, bool) {
        if !self.cut {
            let mut out = Capped { buffer: Vec::with_capacity(256), limit: self.max_bytes };
            if serde_json::to_writer(&mut out, &Document { tensors: &self.tensors, data: true }).is_ok() {
                return (String::from_utf8(out.buffer).unwrap_or_default(), false);
            }
        }
        // Shapes alone are small; they are written whole.
        let text = serde_json::to_string(&Document { tensors: &self.tensors, data: false }).unwrap_or_default();
        (text, true)
    }
}

/// The predicted label per row, copied from the label output; formatted by the writer.
#[derive(Debug, Clone)]
pub struct Labels(TensorData);

impl Labels {
    /// Labels are integer or string classes; other types have none.
    pub fn new(data: &TensorData) -> Option<Labels> {
        matches!(data, TensorData::Int64(_) | TensorData::Int32(_) | TensorData::Bytes(_)).then(|| Labels(data.clone()))
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

struct Document<'a> {
    tensors: &'a [CapturedTensor],
    data: bool,
}

#[derive(serde::Serialize)]
struct TensorJson<'a> {
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

impl serde::Serialize for Document<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.tensors.iter().map(|t| {
            let data = if self.data { t.data.as_ref().map(JsonData) } else { None };
            (t.name.as_str(), TensorJson { datatype: t.datatype.as_str(), shape: &t.shape, data })
        }))
    }
}

/// A `Write` that fails once more than `limit` bytes are written: serialization stops there
/// instead of building the whole text first.
struct Capped {
    buffer: Vec<u8>,
    limit: usize,
}

impl Write for Capped {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.buffer.len() + bytes.len() > self.limit {
            return Err(std::io::Error::other("over the prediction log's max_bytes"));
        }
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
        let (text, cut) = Captured::new(std::iter::once(&t), 1000).render();
        assert!(!cut);
        assert_eq!(text, r#"{"x":{"datatype":"FP32","shape":[3,1],"data":[0.0,1.0,2.0]}}"#);
    }

    #[test]
    fn tensors_past_the_cap_keep_their_shapes_without_a_copy() {
        let t = tensor(65_536);
        let captured = Captured::new(std::iter::once(&t), 65_536);
        assert!(captured.cut, "decided before copying");
        assert!(captured.tensors[0].data.is_none());
        assert_eq!(captured.render(), (r#"{"x":{"datatype":"FP32","shape":[65536,1]}}"#.to_string(), true));
    }

    #[test]
    fn the_writer_stops_at_the_cap() {
        // Fits by the lower bound (4 bytes an element) but not once written (~8 bytes each).
        let t = Tensor::new("x", vec![100], TensorData::Fp32(vec![0.123_456; 100])).expect("tensor");
        let captured = Captured::new(std::iter::once(&t), 600);
        assert!(!captured.cut);
        let (text, cut) = captured.render();
        assert!(cut);
        assert_eq!(text, r#"{"x":{"datatype":"FP32","shape":[100]}}"#);
    }

    #[test]
    fn labels_render_as_strings() {
        let labels = Labels::new(&TensorData::Int64(vec![1, 0])).expect("int labels");
        assert_eq!(labels.render().as_deref(), Some(r#"["1","0"]"#));
        assert!(Labels::new(&TensorData::Fp32(vec![0.5])).is_none());
    }
}
