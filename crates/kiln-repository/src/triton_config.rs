//! Triton's `config.pbtxt` as kiln's [`ModelConfig`], for a model folder that has one and no
//! config.toml: a Triton repository serves unchanged. The fields kiln honours are mapped; every
//! other field is named in the returned list (the caller warns once per model) — nothing is
//! dropped silently. A model kiln cannot serve as the file describes (another platform) is an
//! error that says so; an ensemble becomes the text of a kiln pipeline ([`ensemble_pipeline`]).

use kiln_core::DataType;

use crate::config::{ModelConfig, TensorOverride, VersionPolicy};
use crate::pbtxt::{Field, Node, Scalar};

/// The file name Triton reads.
pub const FILE: &str = "config.pbtxt";

/// A parsed config.pbtxt: kiln's settings and the fields it does not apply.
#[derive(Debug, Clone, PartialEq)]
pub struct TritonConfig {
    pub config: ModelConfig,
    pub ignored: Vec<String>,
}

pub fn parse(text: &str) -> Result<TritonConfig, String> {
    let fields = crate::pbtxt::parse(text)?;
    let mut config = ModelConfig::default();
    let mut ignored = Vec::new();
    let mut instances = None::<usize>;
    let mut batching = false;
    let mut max_batch = 0usize;
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    for f in &fields {
        match f.name.as_str() {
            "name" => config.name = Some(text_of(f)?),
            "platform" => match text_of(f)?.as_str() {
                "onnxruntime_onnx" => {}
                "ensemble" => {
                    return Err(at(
                        f,
                        "ensembles (platform \"ensemble\") are not supported yet: write a kiln pipeline.toml",
                    ));
                }
                other => {
                    return Err(at(
                        f,
                        format!("kiln serves ONNX models (platform \"onnxruntime_onnx\"), not \"{other}\""),
                    ));
                }
            },
            "backend" => match text_of(f)?.as_str() {
                "onnxruntime" => config.backend = Some("onnxruntime".into()),
                other => {
                    return Err(at(f, format!("kiln serves ONNX models (backend \"onnxruntime\"), not \"{other}\"")));
                }
            },
            "max_batch_size" => max_batch = usize::try_from(integer(f)?).map_err(|_| at(f, "must not be negative"))?,
            "input" => inputs.extend(items(f)),
            "output" => outputs.extend(items(f)),
            "dynamic_batching" => {
                batching = true;
                for d in message(f)? {
                    match d.name.as_str() {
                        "max_queue_delay_microseconds" => {
                            config.max_queue_delay_us =
                                Some(u64::try_from(integer(d)?).map_err(|_| at(d, "must not be negative"))?);
                        }
                        other => ignored.push(format!("dynamic_batching.{other}")),
                    }
                }
            }
            "instance_group" => {
                for group in items(f) {
                    let mut count = 1usize;
                    for g in message_node(group, f)? {
                        match g.name.as_str() {
                            "count" => {
                                count = usize::try_from(integer(g)?).map_err(|_| at(g, "must be at least 1"))?;
                            }
                            "kind" if matches!(word_of(g).as_deref(), Some("KIND_CPU" | "KIND_AUTO")) => {}
                            "kind" => ignored.push(format!(
                                "instance_group.kind = {} (kiln runs on the CPU)",
                                word_of(g).unwrap_or_default()
                            )),
                            "name" => {}
                            other => ignored.push(format!("instance_group.{other}")),
                        }
                    }
                    *instances.get_or_insert(0) += count;
                }
            }
            "version_policy" => config.version_policy = Some(version_policy(f)?),
            "parameters" => {
                for p in items(f) {
                    let entry = message_node(p, f)?;
                    let key = entry.iter().find(|e| e.name == "key").map(text_of).transpose()?.unwrap_or_default();
                    let value = entry
                        .iter()
                        .find(|e| e.name == "value")
                        .map(|v| {
                            message(v)
                                .and_then(|m| m.iter().find(|s| s.name == "string_value").map(text_of).transpose())
                        })
                        .transpose()?
                        .flatten()
                        .unwrap_or_default();
                    match key.as_str() {
                        "intra_op_thread_count" => {
                            config.threads = Some(
                                value
                                    .parse()
                                    .map_err(|_| at(f, format!("intra_op_thread_count '{value}' is not a number")))?,
                            );
                        }
                        other => ignored.push(format!("parameters.{other}")),
                    }
                }
            }
            other => ignored.push(other.to_string()),
        }
    }
    for (list, kind, target) in [(&inputs, "input", &mut config.inputs), (&outputs, "output", &mut config.outputs)] {
        for node in list.iter() {
            target.push(tensor(node, kind, max_batch, &mut ignored)?);
        }
    }
    if max_batch > 0 {
        config.max_batch_size = Some(max_batch);
    }
    config.dynamic_batching = Some(batching && max_batch > 0);
    config.instances = instances;
    let mut seen = std::collections::HashSet::new();
    ignored.retain(|name| seen.insert(name.clone()));
    Ok(TritonConfig { config, ignored })
}

/// One `input`/`output` entry: Triton's `dims` leave out the batch dimension when
/// `max_batch_size` > 0; kiln's shapes include it.
fn tensor(node: &Node, kind: &str, max_batch: usize, ignored: &mut Vec<String>) -> Result<TensorOverride, String> {
    let Node::Message(fields) = node else {
        return Err(format!("each {kind} is a {{ name: ..., data_type: ..., dims: [...] }} block"));
    };
    let mut out = TensorOverride { name: String::new(), datatype: None, shape: None, batch_dimension: None };
    let mut reshaped = None;
    for f in fields {
        match f.name.as_str() {
            "name" => out.name = text_of(f)?,
            "data_type" => {
                let word = word_of(f).ok_or_else(|| at(f, "data_type is a TYPE_… name"))?;
                let name = word.strip_prefix("TYPE_").unwrap_or(&word);
                let name = if name == "STRING" { "BYTES" } else { name };
                out.datatype = Some(name.parse::<DataType>().map_err(|_| at(f, format!("unknown data_type {word}")))?);
            }
            "dims" => {
                let dims = items(f).iter().map(|d| integer_node(d, f)).collect::<Result<Vec<i64>, _>>()?;
                out.shape = Some(batched(max_batch, dims));
            }
            "reshape" => {
                // The model's own shape (Triton reshapes between it and `dims`): kiln serves
                // the model's shape, and says so.
                let shape = message(f)?.iter().find(|x| x.name == "shape");
                let dims = match shape {
                    Some(x) => items(x).iter().map(|d| integer_node(d, x)).collect::<Result<Vec<i64>, _>>()?,
                    None => Vec::new(),
                };
                reshaped = Some(dims);
            }
            other => ignored.push(format!("{kind}.{other}")),
        }
    }
    if let Some(dims) = reshaped {
        out.shape = Some(batched(max_batch, dims));
        ignored.push(format!("{kind}.reshape (kiln serves '{}' in the model's own shape)", out.name));
    }
    if out.name.is_empty() {
        return Err(format!("an {kind} has no name"));
    }
    Ok(out)
}

/// Triton's `dims` as kiln's shape: with `max_batch_size` > 0 the batch dimension is implicit.
fn batched(max_batch: usize, dims: Vec<i64>) -> Vec<i64> {
    if max_batch == 0 {
        return dims;
    }
    std::iter::once(-1).chain(dims).collect()
}

fn version_policy(f: &Field) -> Result<VersionPolicy, String> {
    let policy = message(f)?;
    match policy.first().map(|p| p.name.as_str()) {
        Some("latest") => {
            let n =
                message(&policy[0])?.iter().find(|x| x.name == "num_versions").map(integer).transpose()?.unwrap_or(1);
            Ok(VersionPolicy::Latest(usize::try_from(n).map_err(|_| at(f, "num_versions must be at least 1"))?))
        }
        Some("all") => Ok(VersionPolicy::All(true)),
        Some("specific") => {
            let versions = message(&policy[0])?
                .iter()
                .filter(|x| x.name == "versions")
                .flat_map(|x| items(x).into_iter().map(move |n| integer_node(n, x)))
                .map(|v| v.and_then(|v| u64::try_from(v).map_err(|_| "versions are positive".to_string())))
                .collect::<Result<Vec<u64>, _>>()?;
            Ok(VersionPolicy::Specific(versions))
        }
        _ => Err(at(
            f,
            "version_policy is { latest { num_versions: N } }, { all { } } or { specific { versions: [...] } }",
        )),
    }
}

fn at(f: &Field, what: impl std::fmt::Display) -> String {
    format!("line {}, column {}: '{}': {what}", f.line, f.column, f.name)
}

/// A repeated field's entries: `name: [a, b]` or `name { } name { }` (one field each).
fn items(f: &Field) -> Vec<&Node> {
    match &f.value {
        Node::List(items) => items.iter().collect(),
        other => vec![other],
    }
}

fn message(f: &Field) -> Result<&[Field], String> {
    message_node(&f.value, f)
}

fn message_node<'n>(node: &'n Node, f: &Field) -> Result<&'n [Field], String> {
    match node {
        Node::Message(fields) => Ok(fields),
        _ => Err(at(f, "expected a { ... } block")),
    }
}

fn text_of(f: &Field) -> Result<String, String> {
    match &f.value {
        Node::Scalar(Scalar::Text(s)) => Ok(s.clone()),
        _ => Err(at(f, "expected a quoted string")),
    }
}

fn word_of(f: &Field) -> Option<String> {
    match &f.value {
        Node::Scalar(Scalar::Word(w)) => Some(w.clone()),
        _ => None,
    }
}

fn integer(f: &Field) -> Result<i64, String> {
    integer_node(&f.value, f)
}

fn integer_node(node: &Node, f: &Field) -> Result<i64, String> {
    match node {
        Node::Scalar(Scalar::Word(w)) => w.parse().map_err(|_| at(f, format!("'{w}' is not an integer"))),
        _ => Err(at(f, "expected an integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_triton_onnx_config_maps_to_kiln_settings() {
        let text = r#"
name: "digits_mlp"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ { name: "input" data_type: TYPE_FP32 dims: [ 64 ] } ]
output [
  { name: "label" data_type: TYPE_INT64 dims: [ 1 ] reshape: { shape: [ ] } },
  { name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" }
]
instance_group [ { count: 2 kind: KIND_CPU }, { count: 1 kind: KIND_GPU } ]
dynamic_batching { max_queue_delay_microseconds: 200 preferred_batch_size: [ 16, 32 ] }
version_policy: { latest { num_versions: 2 } }
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
parameters { key: "cudnn_conv_algo_search" value: { string_value: "1" } }
optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "openvino" } ] } }
"#;
        let t = parse(text).expect("parses");
        let c = &t.config;
        assert_eq!(c.name.as_deref(), Some("digits_mlp"));
        assert_eq!((c.max_batch_size, c.dynamic_batching, c.max_queue_delay_us), (Some(64), Some(true), Some(200)));
        assert_eq!((c.instances, c.threads), (Some(3), Some(2)));
        assert_eq!(c.version_policy, Some(VersionPolicy::Latest(2)));
        assert_eq!(c.inputs[0].shape, Some(vec![-1, 64]));
        assert_eq!(c.inputs[0].datatype, Some(DataType::Fp32));
        assert_eq!(c.outputs[0].shape, Some(vec![-1]));
        assert_eq!(
            t.ignored,
            [
                "instance_group.kind = KIND_GPU (kiln runs on the CPU)",
                "dynamic_batching.preferred_batch_size",
                "parameters.cudnn_conv_algo_search",
                "optimization",
                "output.reshape (kiln serves 'label' in the model's own shape)",
                "output.label_filename",
            ]
        );
    }

    #[test]
    fn no_batching_and_refusals() {
        let t = parse(
            "backend: \"onnxruntime\"\nmax_batch_size: 0\ninput { name: \"x\" data_type: TYPE_STRING dims: [ 1 ] }",
        )
        .expect("parses");
        assert_eq!(t.config.dynamic_batching, Some(false));
        assert_eq!(t.config.inputs[0].shape, Some(vec![1]));
        assert_eq!(t.config.inputs[0].datatype, Some(DataType::Bytes));
        assert!(parse("platform: \"tensorrt_plan\"").unwrap_err().contains("not \"tensorrt_plan\""));
        assert!(parse("backend: \"python\"").unwrap_err().contains("line 1, column 1"));
        assert!(parse("platform: \"ensemble\"").unwrap_err().contains("pipeline.toml"));
        assert!(parse("max_batch_size: \"8\"").unwrap_err().contains("expected an integer"));
        assert_eq!(
            parse("version_policy: { specific { versions: [1, 3] } }").expect("ok").config.version_policy,
            Some(VersionPolicy::Specific(vec![1, 3]))
        );
    }
}

/// Whether a model folder is a Triton ensemble: no config.toml, and a config.pbtxt with
/// `platform: "ensemble"`.
pub fn is_ensemble(model_dir: &std::path::Path) -> bool {
    if model_dir.join(crate::layout::CONFIG_FILE).is_file() {
        return false;
    }
    let Ok(text) = std::fs::read_to_string(model_dir.join(FILE)) else { return false };
    crate::pbtxt::parse(&text)
        .is_ok_and(|fields| fields.iter().any(|f| f.name == "platform" && text_of(f).is_ok_and(|p| p == "ensemble")))
}

/// A Triton ensemble (`platform: "ensemble"`, `ensemble_scheduling { step [...] }`) as the text
/// of the kiln pipeline.toml that runs it: the ensemble's inputs and outputs, one model step per
/// Triton step (its `input_map`/`output_map` become the step's inputs and the sources of later
/// steps and outputs). Fields kiln does not apply are returned for the warning.
pub fn ensemble_pipeline(text: &str) -> Result<(String, Vec<String>), String> {
    let fields = crate::pbtxt::parse(text)?;
    let mut ignored = Vec::new();
    let mut max_batch = 0usize;
    let (mut inputs, mut outputs, mut steps) = (Vec::new(), Vec::new(), Vec::new());
    for f in &fields {
        match f.name.as_str() {
            "name" | "platform" => {}
            "max_batch_size" => max_batch = usize::try_from(integer(f)?).map_err(|_| at(f, "must not be negative"))?,
            "input" => inputs.extend(items(f)),
            "output" => outputs.extend(items(f)),
            "ensemble_scheduling" => {
                for s in message(f)? {
                    match s.name.as_str() {
                        "step" => steps.extend(items(s).into_iter().map(|node| (node, s))),
                        other => ignored.push(format!("ensemble_scheduling.{other}")),
                    }
                }
            }
            other => ignored.push(other.to_string()),
        }
    }
    if steps.is_empty() {
        return Err("an ensemble needs ensemble_scheduling { step [ ... ] }".into());
    }
    let tensor_table = |node: &Node, kind: &str, ignored: &mut Vec<String>| -> Result<toml::Value, String> {
        let t = tensor(node, kind, max_batch, ignored)?;
        let datatype = t.datatype.ok_or_else(|| format!("ensemble {kind} '{}' has no data_type", t.name))?;
        let shape = t.shape.ok_or_else(|| format!("ensemble {kind} '{}' has no dims", t.name))?;
        let mut table = toml::Table::new();
        table.insert("name".into(), t.name.into());
        table.insert("datatype".into(), datatype.as_str().into());
        table.insert("shape".into(), toml::Value::Array(shape.into_iter().map(toml::Value::from).collect()));
        Ok(toml::Value::Table(table))
    };
    let input_tables = inputs.iter().map(|n| tensor_table(n, "input", &mut ignored)).collect::<Result<Vec<_>, _>>()?;
    let input_names: Vec<String> =
        input_tables.iter().filter_map(|t| t.get("name").and_then(toml::Value::as_str).map(str::to_string)).collect();
    // First pass: each step's name and which ensemble tensor each of its outputs produces.
    struct Step {
        name: String,
        model: String,
        version: Option<String>,
        reads: Vec<(String, String)>,
    }
    let mut producer: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut planned = Vec::new();
    for (i, (node, at_field)) in steps.iter().enumerate() {
        let mut step = Step { name: String::new(), model: String::new(), version: None, reads: Vec::new() };
        let mut writes = Vec::new();
        for s in message_node(node, at_field)? {
            match s.name.as_str() {
                "model_name" => step.model = text_of(s)?,
                "model_version" => {
                    let v = integer(s)?;
                    step.version = (v >= 0).then(|| v.to_string());
                }
                "input_map" | "output_map" => {
                    for entry in items(s) {
                        let pair = message_node(entry, s)?;
                        let get = |k: &str| pair.iter().find(|p| p.name == k).map(text_of).transpose();
                        let (Some(key), Some(value)) = (get("key")?, get("value")?) else {
                            return Err(at(s, "each map entry is { key: \"...\" value: \"...\" }"));
                        };
                        if s.name == "input_map" { step.reads.push((key, value)) } else { writes.push((key, value)) }
                    }
                }
                other => ignored.push(format!("ensemble_scheduling.step.{other}")),
            }
        }
        if step.model.is_empty() {
            return Err(at(at_field, format!("step {i} has no model_name")));
        }
        step.name = format!("step{i}_{}", step.model);
        for (model_output, tensor) in writes {
            if producer.insert(tensor.clone(), format!("{}.{model_output}", step.name)).is_some() {
                return Err(format!("ensemble tensor '{tensor}' is written by two steps"));
            }
        }
        planned.push(step);
    }
    let source = |tensor: &str| -> Result<String, String> {
        if input_names.iter().any(|n| n == tensor) {
            return Ok(tensor.to_string());
        }
        producer
            .get(tensor)
            .cloned()
            .ok_or_else(|| format!("ensemble tensor '{tensor}' is neither an ensemble input nor a step's output"))
    };
    let mut step_tables = Vec::new();
    for step in &planned {
        let mut table = toml::Table::new();
        table.insert("name".into(), step.name.clone().into());
        table.insert("model".into(), step.model.clone().into());
        if let Some(v) = &step.version {
            table.insert("version".into(), v.clone().into());
        }
        let mut reads = toml::Table::new();
        for (model_input, tensor) in &step.reads {
            reads.insert(model_input.clone(), source(tensor)?.into());
        }
        table.insert("inputs".into(), toml::Value::Table(reads));
        step_tables.push(toml::Value::Table(table));
    }
    let mut output_tables = Vec::new();
    for node in &outputs {
        let t = tensor(node, "output", max_batch, &mut ignored)?;
        let mut table = toml::Table::new();
        table.insert("from".into(), source(&t.name)?.into());
        table.insert("name".into(), t.name.into());
        output_tables.push(toml::Value::Table(table));
    }
    let mut file = toml::Table::new();
    file.insert("inputs".into(), toml::Value::Array(input_tables));
    file.insert("steps".into(), toml::Value::Array(step_tables));
    file.insert("outputs".into(), toml::Value::Array(output_tables));
    let text = toml::to_string(&file).map_err(|e| format!("cannot write the ensemble as a pipeline: {e}"))?;
    let mut seen = std::collections::HashSet::new();
    ignored.retain(|name| seen.insert(name.clone()));
    Ok((text, ignored))
}

#[cfg(test)]
mod ensemble_tests {
    use super::*;

    #[test]
    fn an_ensemble_becomes_a_pipeline() {
        let text = r#"
name: "blend"
platform: "ensemble"
max_batch_size: 16
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 30 ] } ]
output [ { name: "P_GB" data_type: TYPE_FP32 dims: [ 2 ] }, { name: "P_LR" data_type: TYPE_FP32 dims: [ 2 ] } ]
ensemble_scheduling {
  step [
    { model_name: "fraud" model_version: -1
      input_map { key: "input" value: "IN" } output_map { key: "probabilities" value: "P_GB" } },
    { model_name: "fraud_lr" model_version: 1
      input_map { key: "input" value: "IN" } output_map { key: "probabilities" value: "P_LR" } }
  ]
}
"#;
        let (toml_text, ignored) = ensemble_pipeline(text).expect("an ensemble");
        assert!(ignored.is_empty(), "{ignored:?}");
        let file: toml::Table = toml::from_str(&toml_text).expect("valid toml");
        assert_eq!(file["inputs"][0]["shape"].as_array().map(Vec::len), Some(2));
        assert_eq!(file["steps"][1]["version"].as_str(), Some("1"));
        assert_eq!(file["steps"][0]["inputs"]["input"].as_str(), Some("IN"));
        assert_eq!(file["outputs"][1]["from"].as_str(), Some("step1_fraud_lr.probabilities"));
        let dangling = text.replace(
            "value: \"IN\" } output_map { key: \"probabilities\" value: \"P_LR\"",
            "value: \"NOPE\" } output_map { key: \"probabilities\" value: \"P_LR\"",
        );
        assert!(ensemble_pipeline(&dangling).unwrap_err().contains("'NOPE'"));
    }
}
