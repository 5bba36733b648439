//! Triton's model configuration of a served version (`GET .../config` over REST, the
//! `ModelConfig` RPC over gRPC), worked out once for both transports.

use kiln_serving::ServedModel;

/// What kiln runs models with, in Triton's words.
pub(crate) const PLATFORM: &str = "onnxruntime_onnx";
pub(crate) const BACKEND: &str = "onnxruntime";

/// One input or output as Triton's configuration describes it.
pub(crate) struct ConfigTensor<'a> {
    pub name: &'a str,
    /// Triton's enum name: `TYPE_FP32`, `TYPE_STRING` for BYTES, ….
    pub data_type: String,
    /// Without the batch dimension when the model batches (Triton's implicit batch dimension).
    pub dims: Vec<i64>,
    pub labels: Option<&'a [String]>,
}

/// A served version's configuration.
pub(crate) struct ConfigView<'a> {
    pub name: &'a str,
    pub max_batch_size: usize,
    pub inputs: Vec<ConfigTensor<'a>>,
    pub outputs: Vec<ConfigTensor<'a>>,
    pub instances: usize,
    /// The batching window in µs, when dynamic batching is on.
    pub dynamic_batching_delay_us: Option<u64>,
}

pub(crate) fn view(model: &ServedModel) -> ConfigView<'_> {
    ConfigView {
        name: &model.name,
        max_batch_size: model.settings.max_batch_size,
        inputs: model.signature.inputs.iter().map(|s| tensor(model, s)).collect(),
        outputs: model.signature.outputs.iter().map(|s| tensor(model, s)).collect(),
        instances: model.settings.instances,
        dynamic_batching_delay_us: model
            .settings
            .dynamic_batching
            .then(|| u64::try_from(model.settings.max_queue_delay.as_micros()).unwrap_or(u64::MAX)),
    }
}

fn tensor<'a>(model: &'a ServedModel, spec: &'a kiln_core::TensorSpec) -> ConfigTensor<'a> {
    let batched = model.settings.max_batch_size > 0;
    let dims: Vec<i64> = if batched { spec.shape.iter().skip(1).copied().collect() } else { spec.shape.clone() };
    let datatype = match spec.datatype.as_str() {
        "BYTES" => "STRING",
        other => other,
    };
    ConfigTensor {
        name: &spec.name,
        data_type: format!("TYPE_{datatype}"),
        dims,
        labels: model.labels.get(&spec.name).map(Vec::as_slice),
    }
}
