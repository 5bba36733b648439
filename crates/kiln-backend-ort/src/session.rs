//! Turning ONNX bytes into ready sessions, and kiln tensors into ONNX Runtime values and back.

use std::collections::BTreeMap;
use std::sync::Arc;

use half::f16;
use kiln_core::{
    BackendError, DataType, ModelInstance, ModelSignature, Tensor, TensorData, TensorDataRef, TensorSpec, TensorView,
};
use ort::session::{Session, SessionInputValue, builder::GraphOptimizationLevel};
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};

use crate::onnx_proto;
use crate::runtime;

/// How each session of a model is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// ONNX Runtime intra-op threads per session (per instance). 1 is fastest for small
    /// models on few cores: parallelism comes from several instances.
    pub intra_threads: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { intra_threads: 1 }
    }
}

/// A model file checked and made servable: the bytes sessions are built from (ZipMap
/// outputs already rewritten) and what the model declares.
#[derive(Debug, Clone)]
pub struct PreparedModel {
    bytes: Arc<Vec<u8>>,
    pub signature: ModelSignature,
    /// Class labels per output, taken from rewritten ZipMaps.
    pub labels: BTreeMap<String, Vec<String>>,
    /// What kiln changed to serve the model, for the operator (logged at load time as info).
    pub notices: Vec<String>,
    pub options: SessionOptions,
}

/// How the tool that made a model leaves its ZipMap out, when kiln knows (`producer` is the
/// ONNX `producer_name`, maybe followed by its version). Other converters (onnxmltools,
/// CatBoost) get no advice: kiln's rewrite is the way for them.
fn zipmap_advice(producer: &str) -> Option<&'static str> {
    match producer.split_whitespace().next() {
        Some("skl2onnx") => Some("Export with skl2onnx options={id(model): {\"zipmap\": False}} to skip this rewrite."),
        _ => None,
    }
}

impl PreparedModel {
    /// Checks a model and reads its signature. The runtime must have been initialised
    /// ([`runtime::init`]).
    pub fn new(bytes: Vec<u8>, options: SessionOptions) -> Result<Self, BackendError> {
        let mut labels = BTreeMap::new();
        let mut notices = Vec::new();
        let bytes = match onnx_proto::rewrite_zipmaps(&bytes).map_err(|e| BackendError::Load(e.to_string()))? {
            Some(rewritten) => {
                let producer = onnx_proto::summarize(&bytes).map(|s| s.producer).unwrap_or_default();
                for rewrite in rewritten.rewrites {
                    notices.push(format!(
                        "output '{}' is a ZipMap (sequence<map>), which the v2 protocol cannot carry; \
                         kiln serves it as an FP32 tensor [batch, {}] with columns in class order {:?}.{}",
                        rewrite.output,
                        rewrite.labels.len(),
                        rewrite.labels,
                        zipmap_advice(&producer).map(|a| format!(" {a}")).unwrap_or_default()
                    ));
                    labels.insert(rewrite.output, rewrite.labels);
                }
                rewritten.bytes
            }
            None => bytes,
        };
        let session = build_session(&bytes, options)?;
        let signature = ModelSignature {
            inputs: session.inputs().iter().map(|o| spec(o.name(), o.dtype())).collect::<Result<_, _>>()?,
            outputs: session.outputs().iter().map(|o| spec(o.name(), o.dtype())).collect::<Result<_, _>>()?,
        };
        Ok(PreparedModel { bytes: Arc::new(bytes), signature, labels, notices, options })
    }

    /// Builds one more independent session of this model.
    pub fn instantiate(&self) -> Result<OrtInstance, BackendError> {
        Ok(OrtInstance { session: build_session(&self.bytes, self.options)? })
    }
}

fn build_session(bytes: &[u8], options: SessionOptions) -> Result<Session, BackendError> {
    let env =
        runtime::environment().ok_or_else(|| BackendError::Load("ONNX Runtime is not initialised".to_string()))?;
    let load = |e: ort::Error| BackendError::Load(e.to_string());
    Session::builder(env)
        .map_err(load)?
        // The same level as the onnxruntime Python package uses by default (ORT_ENABLE_ALL),
        // so kiln runs the graph the prototype ran.
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| load(e.into()))?
        .with_intra_threads(options.intra_threads.max(1))
        .map_err(|e| load(e.into()))?
        .with_inter_threads(1)
        .map_err(|e| load(e.into()))?
        .commit_from_memory(bytes)
        .map_err(load)
}

fn datatype(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn spec(name: &str, ty: &ValueType) -> Result<TensorSpec, BackendError> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => {
            let datatype = datatype(*ty).ok_or_else(|| {
                BackendError::Unsupported(format!("'{name}' has element type {ty:?}, which has no KServe v2 datatype"))
            })?;
            Ok(TensorSpec { name: name.to_string(), datatype, shape: shape.iter().map(|&d| d.max(-1)).collect() })
        }
        other => Err(BackendError::Unsupported(format!(
            "'{name}' is a {other:?}, not a tensor; the KServe v2 protocol carries tensors only"
        ))),
    }
}

/// One ONNX Runtime session: owned by one worker thread.
pub struct OrtInstance {
    session: Session,
}

fn input_value<'a>(tensor: &TensorView<'a>, strings: &'a [String]) -> Result<SessionInputValue<'a>, ort::Error> {
    let shape: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
    Ok(match tensor.data {
        TensorDataRef::Bool(v) => TensorRef::from_array_view((shape, v))?.into(),
        TensorDataRef::Uint8(v) => TensorRef::from_array_view((shape, v))?.into(),
        TensorDataRef::Uint16(v) => TensorRef::from_array_view((shape, v))?.into(),
        TensorDataRef::Uint32(v) => TensorRef::from_array_view((shape, v))?.into(),
        TensorDataRef::Uint64(v) => TensorRef::from_array_view((shape, v))?.into(),
        TensorDataRef::Int8(v) => TensorRef::from_array_view((shape, v))?.into(),
        TensorDataRef::Int16(v) => TensorRef::from_array_view((shape, v))?.into(),
        TensorDataRef::Int32(v) => TensorRef::from_array_view((shape, v))?.into(),
        TensorDataRef::Int64(v) => TensorRef::from_array_view((shape, v))?.into(),
        TensorDataRef::Fp16(v) => TensorRef::from_array_view((shape, v))?.into(),
        TensorDataRef::Fp32(v) => TensorRef::from_array_view((shape, v))?.into(),
        TensorDataRef::Fp64(v) => TensorRef::from_array_view((shape, v))?.into(),
        TensorDataRef::Bytes(_) => ort::value::Tensor::from_string_array((shape, strings))?.into(),
    })
}

fn output_tensor(name: &str, value: &DynValue) -> Result<Tensor, BackendError> {
    let run = |e: ort::Error| BackendError::Run(format!("output '{name}': {e}"));
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(BackendError::Unsupported(format!("output '{name}' is not a tensor")));
    };
    macro_rules! copy {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(run)?;
            (shape.iter().map(|&d| d.max(0) as usize).collect::<Vec<_>>(), TensorData::$variant(data.to_vec()))
        }};
    }
    let (shape, data) = match ty {
        TensorElementType::Bool => copy!(bool, Bool),
        TensorElementType::Uint8 => copy!(u8, Uint8),
        TensorElementType::Uint16 => copy!(u16, Uint16),
        TensorElementType::Uint32 => copy!(u32, Uint32),
        TensorElementType::Uint64 => copy!(u64, Uint64),
        TensorElementType::Int8 => copy!(i8, Int8),
        TensorElementType::Int16 => copy!(i16, Int16),
        TensorElementType::Int32 => copy!(i32, Int32),
        TensorElementType::Int64 => copy!(i64, Int64),
        TensorElementType::Float16 => copy!(f16, Fp16),
        TensorElementType::Float32 => copy!(f32, Fp32),
        TensorElementType::Float64 => copy!(f64, Fp64),
        TensorElementType::String => {
            let (shape, strings) = value.try_extract_strings().map_err(run)?;
            (
                shape.iter().map(|&d| d.max(0) as usize).collect(),
                TensorData::Bytes(strings.into_iter().map(String::into_bytes).collect()),
            )
        }
        other => return Err(BackendError::Unsupported(format!("output '{name}' has element type {other:?}"))),
    };
    Ok(Tensor::new(name, shape, data)?)
}

impl ModelInstance for OrtInstance {
    fn run(&mut self, inputs: &[Tensor], outputs: &[String]) -> Result<Vec<Tensor>, BackendError> {
        let views: Vec<TensorView<'_>> = inputs.iter().map(Tensor::view).collect();
        self.run_views(&views, outputs)
    }

    fn run_views(&mut self, inputs: &[TensorView<'_>], outputs: &[String]) -> Result<Vec<Tensor>, BackendError> {
        // ONNX string tensors hold UTF-8 text: check BYTES inputs before handing them over.
        let mut texts: Vec<Vec<String>> = Vec::with_capacity(inputs.len());
        for tensor in inputs {
            let mut strs = Vec::new();
            if let TensorDataRef::Bytes(items) = tensor.data {
                for (i, item) in items.iter().enumerate() {
                    let text = std::str::from_utf8(item).map_err(|e| {
                        BackendError::InvalidInput(format!(
                            "input '{}': element {i} is not valid UTF-8 text ({e}); ONNX string tensors hold text",
                            tensor.name
                        ))
                    })?;
                    // The C API takes each string as a NUL-terminated C string: a NUL inside
                    // one cannot be carried, and ort would fail the whole run.
                    if let Some(at) = item.iter().position(|&b| b == 0) {
                        let per_row = tensor.shape.iter().skip(1).product::<usize>().max(1);
                        return Err(BackendError::InvalidInput(format!(
                            "input '{}': row {} (element {i}) holds a NUL byte at byte {at}; ONNX Runtime string \
                             tensors cannot carry NUL",
                            tensor.name,
                            i / per_row
                        )));
                    }
                    strs.push(text.to_owned());
                }
            }
            texts.push(strs);
        }
        let values = inputs
            .iter()
            .zip(&texts)
            .map(|(t, strs)| Ok((t.name, input_value(t, strs)?)))
            .collect::<Result<Vec<_>, ort::Error>>()
            .map_err(|e| BackendError::Run(e.to_string()))?;
        let results = self.session.run(values).map_err(|e| BackendError::Run(e.to_string()))?;
        outputs
            .iter()
            .map(|name| {
                let value = results
                    .get(name.as_str())
                    .ok_or_else(|| BackendError::Run(format!("the model produced no output '{name}'")))?;
                output_tensor(name, value)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::zipmap_advice;

    #[test]
    fn zipmap_advice_fits_the_producer() {
        assert!(zipmap_advice("skl2onnx 1.19.1").is_some_and(|a| a.contains("skl2onnx options")));
        assert_eq!(zipmap_advice("OnnxMLTools 1.14.0"), None, "skl2onnx's option is not how onnxmltools drops it");
        assert_eq!(zipmap_advice("CatBoost"), None);
        assert_eq!(zipmap_advice(""), None);
    }
}
