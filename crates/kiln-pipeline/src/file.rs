//! pipeline.toml: the file's shape (serde, `deny_unknown_fields`) and its translation into a
//! [`PipelineBuilder`] draft, which `graph` then validates like a graph built in code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_core::{DataType, TensorSpec};
use serde::Deserialize;

use super::DraftAction;
use super::builder::DraftStep;
use super::ops::Op;
use super::remote::{EmbeddingsSpec, LlmSpec, RemoteSpec};
use super::resilience::Policy;
use super::retrieval_ops::FormatTemplate;
use super::rows::Constant;
use super::{ModelResolver, Pipeline, PipelineBuilder, RemoteDraft};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<OutputFile>,
    steps: Vec<StepFile>,
    /// What the prediction log keeps of the pipeline's requests (as in a model's config.toml).
    records: Option<kiln_repository::config::RecordsConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputFile {
    name: String,
    from: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum StepInputs {
    /// Model and remote steps: input name -> reference.
    Named(BTreeMap<String, String>),
    /// Transforms: references in order.
    List(Vec<String>),
}

/// What a step falls back to when it fails.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum FallbackSpec {
    /// Another step of the pipeline, run only then, whose outputs stand in for this step's.
    Step(String),
    /// A constant per output name, repeated for every row.
    Constants(BTreeMap<String, Constant>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    name: String,
    model: Option<String>,
    version: Option<String>,
    op: Option<String>,
    remote: Option<RemoteSpec>,
    llm: Option<LlmSpec>,
    embeddings: Option<EmbeddingsSpec>,
    inputs: StepInputs,
    /// A remote model's outputs.
    outputs: Option<Vec<TensorSpec>>,
    weights: Option<Vec<f64>>,
    threshold: Option<f64>,
    column: Option<usize>,
    columns: Option<Vec<usize>>,
    k: Option<usize>,
    datatype: Option<DataType>,
    /// The `format` op's template (Jinja2 syntax).
    template: Option<String>,
    /// The `json_field` op's field path.
    field: Option<String>,
    when: Option<String>,
    unless: Option<String>,
    fallback: Option<FallbackSpec>,
    timeout_ms: Option<u64>,
    retries: Option<u32>,
    backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    concurrency: Option<usize>,
    breaker_failures: Option<u32>,
    breaker_cooldown_ms: Option<u64>,
}

fn op_of(s: &StepFile) -> Result<Op, String> {
    let name = s.op.as_deref().unwrap_or_default();
    let missing = |what: &str| format!("step '{}': op '{name}' needs '{what}'", s.name);
    for (field, set, owner) in
        [("template", s.template.is_some(), "format"), ("field", s.field.is_some(), "json_field")]
    {
        if set && name != owner && !(field == "field" && name == "json_text") {
            return Err(format!("step '{}': '{field}' is for the '{owner}' op, not '{name}'", s.name));
        }
    }
    Ok(match name {
        "softmax" => Op::Softmax,
        "argmax" => Op::Argmax,
        "top_k" => Op::TopK(s.k.ok_or_else(|| missing("k"))?),
        "threshold" => Op::Threshold { value: s.threshold.ok_or_else(|| missing("threshold"))?, column: s.column },
        "cast" => Op::Cast(s.datatype.ok_or_else(|| missing("datatype"))?),
        "concat" => Op::Concat,
        "select" => Op::Select(s.columns.clone().ok_or_else(|| missing("columns"))?),
        "mean" => Op::Mean,
        "weighted_mean" => Op::WeightedMean(s.weights.clone().ok_or_else(|| missing("weights"))?),
        "majority_vote" => Op::MajorityVote,
        "where" => Op::Where,
        "format" => {
            let source = s.template.as_deref().ok_or_else(|| missing("template"))?;
            let template = FormatTemplate::new(source).map_err(|e| format!("step '{}': {e}", s.name))?;
            Op::Format(Arc::new(template))
        }
        "json_field" => Op::JsonField(s.field.clone().ok_or_else(|| missing("field"))?),
        "json_text" => Op::JsonText(s.field.clone().ok_or_else(|| missing("field"))?),
        "gather" => Op::Gather,
        other => {
            return Err(format!(
                "step '{}': unknown op '{other}' (softmax, argmax, top_k, threshold, cast, concat, select, mean, weighted_mean, majority_vote, where, format, json_field, json_text, gather)",
                s.name
            ));
        }
    })
}

/// The call policy of a remote step from its file fields over the kind's defaults.
fn policy_of(s: &StepFile, slow: bool) -> Policy {
    let d = Policy::defaults(slow);
    let ms = Duration::from_millis;
    Policy {
        timeout: s.timeout_ms.map_or(d.timeout, ms),
        retries: s.retries.unwrap_or(d.retries),
        backoff: s.backoff_ms.map_or(d.backoff, ms),
        max_backoff: s.max_backoff_ms.map_or(d.max_backoff, ms),
        concurrency: s.concurrency.unwrap_or(d.concurrency),
        breaker_failures: s.breaker_failures.unwrap_or(d.breaker_failures),
        breaker_cooldown: s.breaker_cooldown_ms.map_or(d.breaker_cooldown, ms),
    }
}

impl Pipeline {
    /// Parses and validates a pipeline.toml. Model steps are checked against the models the
    /// resolver serves now; remote servers are not called at load time.
    pub fn parse(name: &str, text: &str, resolver: Arc<dyn ModelResolver>) -> Result<Pipeline, String> {
        let file: PipelineFile = toml::from_str(text).map_err(|e| format!("pipeline.toml: {e}"))?;
        let records = file.records.clone();
        let mut draft = PipelineBuilder::new().named(name);
        draft.inputs = file.inputs;
        draft.outputs = file.outputs.into_iter().map(|o| (o.name, o.from)).collect();
        for s in file.steps {
            let kinds =
                [s.model.is_some(), s.op.is_some(), s.remote.is_some(), s.llm.is_some(), s.embeddings.is_some()];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return Err(format!(
                    "step '{}' needs exactly one of 'model', 'op', 'remote', 'llm' or 'embeddings'",
                    s.name
                ));
            }
            if s.op.is_none() && (s.template.is_some() || s.field.is_some()) {
                return Err(format!("step '{}': 'template' and 'field' are for the format and json_field ops", s.name));
            }
            let action = if let Some(m) = &s.model {
                DraftAction::Model { name: m.clone(), version: s.version.clone() }
            } else if s.op.is_some() {
                DraftAction::Op(op_of(&s)?)
            } else if let Some(r) = &s.remote {
                DraftAction::Remote(
                    RemoteDraft::Kserve(r.clone(), s.outputs.clone().unwrap_or_default()),
                    policy_of(&s, false),
                )
            } else if let Some(l) = &s.llm {
                DraftAction::Remote(RemoteDraft::Llm(l.clone()), policy_of(&s, true))
            } else if let Some(e) = &s.embeddings {
                DraftAction::Remote(RemoteDraft::Embeddings(e.clone()), policy_of(&s, false))
            } else {
                unreachable!("one kind is set")
            };
            let remote = matches!(action, DraftAction::Remote(..));
            let local_model = matches!(action, DraftAction::Model { .. });
            if !remote {
                let retry_fields = [
                    ("retries", s.retries.is_some()),
                    ("backoff_ms", s.backoff_ms.is_some()),
                    ("max_backoff_ms", s.max_backoff_ms.is_some()),
                    ("concurrency", s.concurrency.is_some()),
                    ("breaker_failures", s.breaker_failures.is_some()),
                    ("breaker_cooldown_ms", s.breaker_cooldown_ms.is_some()),
                    ("outputs", s.outputs.is_some()),
                ];
                if let Some((field, _)) = retry_fields.iter().find(|(_, set)| *set) {
                    return Err(format!("step '{}': '{field}' is for remote, llm and embeddings steps", s.name));
                }
                if s.timeout_ms.is_some() && !local_model {
                    return Err(format!("step '{}': 'timeout_ms' is for model and remote steps", s.name));
                }
            }
            let inputs = match (&action, &s.inputs) {
                (DraftAction::Op(Op::Format(_)), StepInputs::Named(map)) => {
                    map.iter().map(|(k, r)| (k.clone(), r.clone())).collect()
                }
                (DraftAction::Op(Op::Format(_)), StepInputs::List(_)) => {
                    return Err(format!(
                        "step '{}': a format step's inputs are a table {{ variable = \"ref\" }}: the template's names",
                        s.name
                    ));
                }
                (DraftAction::Op(_), StepInputs::List(list)) => list.iter().map(|r| (r.clone(), r.clone())).collect(),
                (DraftAction::Op(_), StepInputs::Named(_)) => {
                    return Err(format!("step '{}': an op's inputs are a list [\"ref\", ...]", s.name));
                }
                (_, StepInputs::Named(map)) => map.iter().map(|(k, r)| (k.clone(), r.clone())).collect(),
                (_, StepInputs::List(_)) => {
                    return Err(format!(
                        "step '{}': a model or remote step's inputs are a table {{ input_name = \"ref\" }}",
                        s.name
                    ));
                }
            };
            let condition = match (s.when, s.unless) {
                (Some(_), Some(_)) => return Err(format!("step '{}' has both 'when' and 'unless'", s.name)),
                (Some(w), None) => Some((w, false)),
                (None, Some(u)) => Some((u, true)),
                (None, None) => None,
            };
            let timeout = if local_model { s.timeout_ms.map(Duration::from_millis) } else { None };
            draft.steps.push(DraftStep { name: s.name, action, inputs, condition, fallback: s.fallback, timeout });
        }
        let mut pipeline = Pipeline::assemble(&draft, resolver)?;
        let config = kiln_repository::config::ModelConfig { records, ..Default::default() };
        pipeline.records = config.records_policy(&pipeline.signature)?;
        Ok(pipeline)
    }
}
