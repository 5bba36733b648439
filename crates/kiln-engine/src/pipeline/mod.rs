//! Pipelines: several models and transforms called in sequence or in parallel, declared in
//! `REPO/<name>/pipeline.toml` and served exactly like a model.
//!
//! A step's inputs name pipeline inputs (`input`) or other steps' outputs (`step.output`).
//! The graph is checked when it loads — unknown references, cycles, and datatype/shape
//! mismatches between steps are load errors naming the step — and every step starts as soon as
//! the steps it reads have finished, so independent steps run concurrently. Model steps go
//! through the model's own queue and batcher, resolved at call time (a reloaded model is used
//! by the pipelines that name it). Remote steps ([`remote`]) call other servers under a
//! [`resilience::Policy`]; any step may run on the rows a condition selects (`when` /
//! `unless`) and may have a fallback (another step, or constants).

pub mod ops;
pub mod remote;
pub mod resilience;
pub mod rows;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use kiln_core::{DataType, ModelSignature, Tensor, TensorSpec};
use serde::Deserialize;
use tracing::Instrument;

use crate::{EngineError, InferRequest, ModelHandle, Protocol};
use ops::Op;
use remote::{EmbeddingsSpec, LlmSpec, RemoteSpec, RemoteStep};
use resilience::{Guard, Policy};
use rows::Constant;

/// The file that makes a repository folder a pipeline.
pub const PIPELINE_FILE: &str = "pipeline.toml";

/// Finds models by name when a pipeline runs (and when it is validated).
pub trait ModelResolver: Send + Sync {
    fn resolve(&self, name: &str, version: Option<&str>) -> Result<ModelHandle, EngineError>;
}

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
    records: Option<crate::config::RecordsConfig>,
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

/// Where a value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    Input(String),
    Step { step: usize, output: String },
}

/// A remote call before validation (the guard is made with the pipeline's name).
#[derive(Debug, Clone)]
pub enum RemoteDraft {
    /// A model on another KServe v2 server, with the outputs it answers.
    Kserve(RemoteSpec, Vec<TensorSpec>),
    Llm(LlmSpec),
    Embeddings(EmbeddingsSpec),
}

#[derive(Debug, Clone)]
enum DraftAction {
    Model { name: String, version: Option<String> },
    Op(Op),
    Remote(RemoteDraft, Policy),
}

#[derive(Debug, Clone)]
enum Action {
    Model { name: String, version: Option<String> },
    Op(Op),
    Remote(Arc<RemoteStep>),
}

#[derive(Debug, Clone)]
enum Fallback {
    Step(usize),
    Constants(BTreeMap<String, Constant>),
}

#[derive(Debug, Clone)]
struct Step {
    name: String,
    action: Action,
    /// (name the step sees, source).
    inputs: Vec<(String, Source)>,
    /// Run only on the rows this selects (`true` = `unless`, the negation).
    condition: Option<(Source, bool)>,
    fallback: Option<Fallback>,
    /// A step that is only some other step's fallback: it runs when that one fails.
    dormant: bool,
    /// A model step's own deadline.
    timeout: Option<Duration>,
    /// Output names the pipeline needs from this step (model steps ask only for those).
    wanted: Vec<String>,
    /// What the step produces (for filler rows and constants).
    produces: Vec<TensorSpec>,
}

impl Step {
    fn sources(&self) -> impl Iterator<Item = &Source> {
        self.inputs.iter().map(|(_, s)| s).chain(self.condition.iter().map(|(s, _)| s))
    }
}

/// The value a source names, renamed to what its reader calls it. Sources are validated at
/// load time and steps run in dependency order; a model reloaded since with other outputs is
/// the one way a value can be missing, and that is an error, not a panic.
fn fetch(src: &Source, name: &str, inputs: &[Tensor], results: &[Option<Vec<Tensor>>]) -> Result<Tensor, EngineError> {
    let found = match src {
        Source::Input(n) => inputs.iter().find(|t| &t.name == n),
        Source::Step { step, output } => results[*step].as_ref().and_then(|r| r.iter().find(|t| &t.name == output)),
    };
    let mut t = found.cloned().ok_or_else(|| {
        EngineError::Backend(format!(
            "pipeline value for '{name}' is missing (was a step's model reloaded with other outputs?)"
        ))
    })?;
    t.name = name.to_string();
    Ok(t)
}

/// How long one step took, for `kiln_trace`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepTrace {
    pub step: String,
    /// From the pipeline's start.
    pub start: Duration,
    pub duration: Duration,
    /// `success`, `error` (its fallback answered), `fallback` (it answered for a failed step),
    /// `constant` (failed; constants answered) or `skipped` (its condition selected no row).
    pub outcome: &'static str,
}

/// A step before validation.
#[derive(Debug, Clone)]
struct DraftStep {
    name: String,
    action: DraftAction,
    /// (name the step sees, reference).
    inputs: Vec<(String, String)>,
    /// (reference, negated).
    condition: Option<(String, bool)>,
    fallback: Option<FallbackSpec>,
    timeout: Option<Duration>,
}

/// Builds a pipeline in code — the same graphs as pipeline.toml, for Rust applications that
/// embed kiln and compose model calls. References are `"input"` or `"step.output"`;
/// `when`, `unless`, `fallback` and `policy` apply to the step added last.
///
/// ```text
/// let pipeline = PipelineBuilder::new()
///     .input("input", DataType::Fp32, vec![-1, 30])
///     .model("gbc", "fraud", &[("input", "input")])
///     .model("lr", "fraud_lr", &[("input", "input")])
///     .op("blend", Op::WeightedMean(vec![0.7, 0.3]), &["gbc.probabilities", "lr.probabilities"])
///     .output("probabilities", "blend.output")
///     .build(engine.resolver())?;
/// ```
#[derive(Debug, Clone)]
pub struct PipelineBuilder {
    name: String,
    inputs: Vec<TensorSpec>,
    steps: Vec<DraftStep>,
    outputs: Vec<(String, String)>,
}

impl Default for PipelineBuilder {
    fn default() -> Self {
        PipelineBuilder { name: "pipeline".into(), inputs: Vec::new(), steps: Vec::new(), outputs: Vec::new() }
    }
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, r)| ((*k).to_string(), (*r).to_string())).collect()
}

impl PipelineBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The name metrics and logs use (default "pipeline").
    #[must_use]
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// Declares a pipeline input.
    #[must_use]
    pub fn input(mut self, name: &str, datatype: DataType, shape: Vec<i64>) -> Self {
        self.inputs.push(TensorSpec { name: name.into(), datatype, shape });
        self
    }

    fn push(mut self, name: &str, action: DraftAction, inputs: Vec<(String, String)>) -> Self {
        self.steps.push(DraftStep {
            name: name.into(),
            action,
            inputs,
            condition: None,
            fallback: None,
            timeout: None,
        });
        self
    }

    /// A step calling a served model; `inputs` maps the model's input names to references.
    #[must_use]
    pub fn model(self, step: &str, model: &str, inputs: &[(&str, &str)]) -> Self {
        self.push(step, DraftAction::Model { name: model.into(), version: None }, owned(inputs))
    }

    /// A built-in transform over references, in order.
    #[must_use]
    pub fn op(self, step: &str, op: Op, inputs: &[&str]) -> Self {
        let inputs = inputs.iter().map(|r| ((*r).to_string(), (*r).to_string())).collect();
        self.push(step, DraftAction::Op(op), inputs)
    }

    /// A step calling another server (KServe v2 model, LLM or embeddings endpoint) with the
    /// default policy of its kind.
    #[must_use]
    pub fn remote(self, step: &str, remote: RemoteDraft, inputs: &[(&str, &str)]) -> Self {
        let policy = Policy::defaults(matches!(remote, RemoteDraft::Llm(_)));
        self.push(step, DraftAction::Remote(remote, policy), owned(inputs))
    }

    /// The last step's call policy (remote steps only).
    #[must_use]
    pub fn policy(mut self, policy: Policy) -> Self {
        if let Some(DraftStep { action: DraftAction::Remote(_, p), .. }) = self.steps.last_mut() {
            *p = policy;
        }
        self
    }

    /// The last step runs only on the rows where `condition` holds.
    #[must_use]
    pub fn when(mut self, condition: &str) -> Self {
        if let Some(s) = self.steps.last_mut() {
            s.condition = Some((condition.into(), false));
        }
        self
    }

    /// The last step runs only on the rows where `condition` does not hold.
    #[must_use]
    pub fn unless(mut self, condition: &str) -> Self {
        if let Some(s) = self.steps.last_mut() {
            s.condition = Some((condition.into(), true));
        }
        self
    }

    /// What answers for the last step when it fails.
    #[must_use]
    pub fn fallback(mut self, fallback: FallbackSpec) -> Self {
        if let Some(s) = self.steps.last_mut() {
            s.fallback = Some(fallback);
        }
        self
    }

    /// Declares a pipeline output read from a reference.
    #[must_use]
    pub fn output(mut self, name: &str, from: &str) -> Self {
        self.outputs.push((name.into(), from.into()));
        self
    }

    /// Validates the graph exactly as a pipeline.toml is validated.
    pub fn build(self, resolver: Arc<dyn ModelResolver>) -> Result<Pipeline, String> {
        Pipeline::assemble(&self, resolver)
    }
}

/// A validated pipeline.
pub struct Pipeline {
    name: String,
    /// The `[records]` policy of pipeline.toml (the default for pipelines built in code).
    pub records: crate::config::RecordsPolicy,
    steps: Vec<Step>,
    outputs: Vec<(String, Source)>,
    pub signature: ModelSignature,
    resolver: Arc<dyn ModelResolver>,
}

fn parse_ref(
    reference: &str,
    names: &HashMap<&str, usize>,
    inputs: &[TensorSpec],
    step: &str,
) -> Result<Source, String> {
    if let Some((s, out)) = reference.split_once('.') {
        return match names.get(s) {
            Some(&i) => Ok(Source::Step { step: i, output: out.to_string() }),
            None => Err(format!("step '{step}' reads '{reference}', but there is no step '{s}'")),
        };
    }
    if inputs.iter().any(|i| i.name == reference) {
        Ok(Source::Input(reference.to_string()))
    } else {
        Err(format!(
            "step '{step}' reads '{reference}', which is neither a pipeline input {:?} nor a 'step.output'",
            inputs.iter().map(|i| &i.name).collect::<Vec<_>>()
        ))
    }
}

fn op_of(s: &StepFile) -> Result<Op, String> {
    let name = s.op.as_deref().unwrap_or_default();
    let missing = |what: &str| format!("step '{}': op '{name}' needs '{what}'", s.name);
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
        other => {
            return Err(format!(
                "step '{}': unknown op '{other}' (softmax, argmax, top_k, threshold, cast, concat, select, mean, weighted_mean, majority_vote, where)",
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

/// Whether two declared shapes can hold the same tensor (-1 matches any size).
pub(crate) fn shapes_fit(want: &[i64], got: &[i64]) -> bool {
    want.len() == got.len() && want.iter().zip(got).all(|(w, g)| *w < 0 || *g < 0 || w == g)
}

/// Puts a step's name on its error, keeping the kind (and so the status code).
fn in_step(step: &str, e: EngineError) -> EngineError {
    let say = |m: String| format!("pipeline step '{step}': {m}");
    match e {
        EngineError::Validation(v) => EngineError::InvalidRequest(say(v.to_string())),
        EngineError::InvalidRequest(m) => EngineError::InvalidRequest(say(m)),
        EngineError::Overloaded(m) => EngineError::Overloaded(say(m)),
        EngineError::Timeout(m) => EngineError::Timeout(say(m)),
        EngineError::Unavailable(m) => EngineError::Unavailable(say(m)),
        other => EngineError::Backend(format!("pipeline step '{step}' failed: {other}")),
    }
}

/// One step of a pipeline as a reader (the dashboard) sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepView {
    pub name: String,
    /// `model`, `op`, `remote`.
    pub kind: &'static str,
    /// What it runs: the model (and version), the op, or the remote endpoint.
    pub detail: String,
    /// What it reads: pipeline inputs by name, other steps' outputs as `step.output`.
    pub reads: Vec<String>,
    /// `when`/`unless` condition, as written (`unless x` for the negation).
    pub condition: Option<String>,
    /// The fallback step's name, or `constants`.
    pub fallback: Option<String>,
    /// Only runs as another step's fallback.
    pub dormant: bool,
}

impl Pipeline {
    /// The steps in the order they were declared, with what each reads.
    /// A source as pipeline.toml writes it: an input's name, or `step.output`.
    fn source_name(&self, source: &Source) -> String {
        match source {
            Source::Input(name) => name.clone(),
            Source::Step { step, output } => format!("{}.{output}", self.steps[*step].name),
        }
    }

    pub fn steps_view(&self) -> Vec<StepView> {
        let show = |source: &Source| self.source_name(source);
        self.steps
            .iter()
            .map(|step| StepView {
                name: step.name.clone(),
                kind: match step.action {
                    Action::Model { .. } => "model",
                    Action::Op(_) => "op",
                    Action::Remote(_) => "remote",
                },
                detail: match &step.action {
                    Action::Model { name, version: Some(v) } => format!("{name} v{v}"),
                    Action::Model { name, version: None } => name.clone(),
                    Action::Op(op) => op.to_string(),
                    Action::Remote(remote) => remote.describe(),
                },
                reads: step.inputs.iter().map(|(_, source)| show(source)).collect(),
                condition: step
                    .condition
                    .as_ref()
                    .map(|(source, negated)| format!("{}{}", if *negated { "unless " } else { "when " }, show(source))),
                fallback: step.fallback.as_ref().map(|f| match f {
                    Fallback::Step(i) => self.steps[*i].name.clone(),
                    Fallback::Constants(_) => "constants".to_string(),
                }),
                dormant: step.dormant,
            })
            .collect()
    }

    /// The pipeline's outputs and the `step.output` (or input) each is read from.
    pub fn outputs_view(&self) -> Vec<(String, String)> {
        self.outputs.iter().map(|(name, source)| (name.clone(), self.source_name(source))).collect()
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
        let config = crate::config::ModelConfig { records, ..Default::default() };
        pipeline.records = config.records_policy(&pipeline.signature)?;
        Ok(pipeline)
    }

    /// Validates a drafted graph (from pipeline.toml or a [`PipelineBuilder`]).
    fn assemble(draft: &PipelineBuilder, resolver: Arc<dyn ModelResolver>) -> Result<Pipeline, String> {
        if draft.steps.is_empty() {
            return Err("the pipeline has no steps".into());
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, d) in draft.steps.iter().enumerate() {
            if d.name.is_empty() || d.name.contains('.') {
                return Err(format!("step name '{}' must be non-empty and contain no '.'", d.name));
            }
            if names.insert(&d.name, i).is_some() {
                return Err(format!("two steps are named '{}'", d.name));
            }
        }
        let file_inputs = &draft.inputs;
        let mut steps = Vec::new();
        for d in &draft.steps {
            let inputs = d
                .inputs
                .iter()
                .map(|(k, r)| Ok((k.clone(), parse_ref(r, &names, file_inputs, &d.name)?)))
                .collect::<Result<Vec<_>, String>>()?;
            let condition = match &d.condition {
                Some((r, negate)) => Some((parse_ref(r, &names, file_inputs, &d.name)?, *negate)),
                None => None,
            };
            let action = match &d.action {
                DraftAction::Model { name, version } => Action::Model { name: name.clone(), version: version.clone() },
                DraftAction::Op(op) => Action::Op(op.clone()),
                DraftAction::Remote(remote, policy) => {
                    let guard = Guard::new(&draft.name, &d.name, policy.clone());
                    Action::Remote(Arc::new(match remote {
                        RemoteDraft::Kserve(spec, outputs) => {
                            RemoteStep::kserve(spec.clone(), outputs.clone(), guard, &d.name)?
                        }
                        RemoteDraft::Llm(spec) => RemoteStep::llm(spec.clone(), guard, &d.name)?,
                        RemoteDraft::Embeddings(spec) => RemoteStep::embeddings(spec.clone(), guard, &d.name)?,
                    }))
                }
            };
            let fallback = match &d.fallback {
                None => None,
                Some(FallbackSpec::Step(other)) => {
                    let &j = names.get(other.as_str()).ok_or_else(|| {
                        format!("step '{}': its fallback '{other}' is not a step of the pipeline", d.name)
                    })?;
                    if j == steps.len() {
                        return Err(format!("step '{}' cannot be its own fallback", d.name));
                    }
                    Some(Fallback::Step(j))
                }
                Some(FallbackSpec::Constants(c)) => Some(Fallback::Constants(c.clone())),
            };
            steps.push(Step {
                name: d.name.clone(),
                action,
                inputs,
                condition,
                fallback,
                dormant: false,
                timeout: d.timeout,
                wanted: Vec::new(),
                produces: Vec::new(),
            });
        }
        // Fallback steps run only for the step they stand in for.
        let mut fallback_of: HashMap<usize, usize> = HashMap::new();
        for (i, s) in steps.iter().enumerate() {
            if let Some(Fallback::Step(j)) = s.fallback
                && let Some(other) = fallback_of.insert(j, i)
            {
                return Err(format!(
                    "step '{}' is the fallback of both '{}' and '{}'; give each its own",
                    steps[j].name, steps[other].name, s.name
                ));
            }
        }
        for &j in fallback_of.keys() {
            steps[j].dormant = true;
        }
        // Order: every step after the steps it reads (Kahn); a leftover means a cycle.
        let mut order = Vec::new();
        let mut done = vec![false; steps.len()];
        while order.len() < steps.len() {
            let next = (0..steps.len()).find(|&i| {
                !done[i]
                    && steps[i].sources().all(|src| {
                        matches!(src, Source::Step { step, .. } if done[*step]) || matches!(src, Source::Input(_))
                    })
            });
            match next {
                Some(i) => {
                    done[i] = true;
                    order.push(i);
                }
                None => {
                    let stuck: Vec<&str> =
                        (0..steps.len()).filter(|&i| !done[i]).map(|i| steps[i].name.as_str()).collect();
                    return Err(format!("the steps {stuck:?} form a cycle"));
                }
            }
        }
        // A fallback must not wait on the step it stands in for.
        for (&j, &i) in &fallback_of {
            let mut seen = HashSet::new();
            let mut stack = vec![j];
            while let Some(k) = stack.pop() {
                if k == i {
                    return Err(format!(
                        "step '{}' is the fallback of '{}' but depends on it",
                        steps[j].name, steps[i].name
                    ));
                }
                for src in steps[k].sources() {
                    if let Source::Step { step, .. } = src
                        && seen.insert(*step)
                    {
                        stack.push(*step);
                    }
                }
            }
        }
        // Types, in order.
        let mut produced: HashMap<usize, Vec<TensorSpec>> = HashMap::new();
        let spec_of =
            |src: &Source, produced: &HashMap<usize, Vec<TensorSpec>>, step: &str| -> Result<TensorSpec, String> {
                match src {
                    Source::Input(n) => {
                        Ok(file_inputs.iter().find(|i| &i.name == n).cloned().expect("checked by parse_ref"))
                    }
                    Source::Step { step: i, output } => {
                        produced[i].iter().find(|o| &o.name == output).cloned().ok_or_else(|| {
                            format!(
                                "step '{step}' reads '{}.{output}', but step '{}' has outputs {:?}",
                                steps[*i].name,
                                steps[*i].name,
                                produced[i].iter().map(|o| &o.name).collect::<Vec<_>>()
                            )
                        })
                    }
                }
            };
        for &i in &order {
            let step = &steps[i];
            let input_specs: Vec<TensorSpec> =
                step.inputs.iter().map(|(_, src)| spec_of(src, &produced, &step.name)).collect::<Result<_, _>>()?;
            if let Some((src, _)) = &step.condition {
                let c = spec_of(src, &produced, &step.name)?;
                if !rows::is_condition(&c) {
                    return Err(format!(
                        "step '{}': its condition must be BOOL or an integer, [N] or [N, 1] (got {} {:?})",
                        step.name, c.datatype, c.shape
                    ));
                }
            }
            let outputs = match &step.action {
                Action::Op(op) => ops::output_specs(op, &step.name, &input_specs)?,
                Action::Remote(remote) => {
                    let named: Vec<(String, TensorSpec)> =
                        step.inputs.iter().map(|(k, _)| k.clone()).zip(input_specs.iter().cloned()).collect();
                    remote.output_specs(&step.name, &named)?
                }
                Action::Model { name, version } => {
                    let model = resolver
                        .resolve(name, version.as_deref())
                        .map_err(|e| format!("step '{}': model '{name}': {e}", step.name))?;
                    for want in &model.signature.inputs {
                        let Some(((_, _), got)) =
                            step.inputs.iter().zip(&input_specs).find(|((k, _), _)| k == &want.name)
                        else {
                            return Err(format!(
                                "step '{}': model '{name}' needs input '{}', which the step does not give",
                                step.name, want.name
                            ));
                        };
                        if got.datatype != want.datatype || !shapes_fit(&want.shape, &got.shape) {
                            return Err(format!(
                                "step '{}': model '{name}' input '{}' expects {} {:?}, but gets {} {:?}",
                                step.name, want.name, want.datatype, want.shape, got.datatype, got.shape
                            ));
                        }
                    }
                    if let Some((k, _)) =
                        step.inputs.iter().find(|(k, _)| !model.signature.inputs.iter().any(|s| &s.name == k))
                    {
                        return Err(format!("step '{}': model '{name}' has no input '{k}'", step.name));
                    }
                    model.signature.outputs.clone()
                }
            };
            produced.insert(i, outputs);
        }
        let mut signature = ModelSignature { inputs: draft.inputs.clone(), outputs: Vec::new() };
        let mut outputs = Vec::new();
        for (out_name, from) in &draft.outputs {
            let src = parse_ref(from, &names, file_inputs, &format!("output {out_name}"))?;
            let mut spec = spec_of(&src, &produced, &format!("output {out_name}"))?;
            spec.name = out_name.clone();
            signature.outputs.push(spec);
            outputs.push((out_name.clone(), src));
        }
        // What each step must produce: what later steps and the outputs read.
        let reads: Vec<Source> = steps
            .iter()
            .flat_map(|s| s.sources().cloned().collect::<Vec<_>>())
            .chain(outputs.iter().map(|(_, s)| s.clone()))
            .collect();
        for src in reads {
            if let Source::Step { step, output } = src {
                if steps[step].dormant {
                    return Err(format!(
                        "step '{}' is a fallback (it runs only when its step fails), so no step or output may read it",
                        steps[step].name
                    ));
                }
                if !steps[step].wanted.contains(&output) {
                    steps[step].wanted.push(output);
                }
            }
        }
        for (&j, &i) in &fallback_of {
            let wanted = steps[i].wanted.clone();
            for w in &wanted {
                let need = produced[&i].iter().find(|o| &o.name == w).expect("wanted outputs exist");
                match produced[&j].iter().find(|o| &o.name == w) {
                    Some(got) if got.datatype == need.datatype => {}
                    Some(got) => {
                        return Err(format!(
                            "step '{}': its fallback '{}' answers '{w}' as {}, but it is {}",
                            steps[i].name, steps[j].name, got.datatype, need.datatype
                        ));
                    }
                    None => {
                        return Err(format!(
                            "step '{}': its fallback '{}' has no output '{w}' (it has {:?})",
                            steps[i].name,
                            steps[j].name,
                            produced[&j].iter().map(|o| &o.name).collect::<Vec<_>>()
                        ));
                    }
                }
            }
            steps[j].wanted = wanted;
            // A fallback answers for the same rows as its step.
            if steps[j].condition.is_none() {
                steps[j].condition = steps[i].condition.clone();
            }
        }
        for (i, step) in steps.iter_mut().enumerate() {
            step.produces = produced[&i].clone();
            let wanted_specs = step.produces.iter().filter(|p| step.wanted.contains(&p.name));
            if step.condition.is_some() {
                for spec in wanted_specs.clone() {
                    if spec.shape.is_empty() || spec.shape.iter().skip(1).any(|d| *d < 0) {
                        return Err(format!(
                            "step '{}' runs on selected rows, so its output '{}' needs a fixed row shape (has {:?})",
                            step.name, spec.name, spec.shape
                        ));
                    }
                }
            }
            if let Some(Fallback::Constants(values)) = &step.fallback {
                for spec in wanted_specs {
                    let value = values.get(&spec.name).ok_or_else(|| {
                        format!("step '{}': its fallback gives no constant for output '{}'", step.name, spec.name)
                    })?;
                    rows::constant(spec, value, 0).map_err(|e| format!("step '{}': fallback: {e}", step.name))?;
                }
            }
        }
        if let Some(unused) = steps.iter().find(|s| s.wanted.is_empty()) {
            return Err(format!("step '{}' is read by no step and no output", unused.name));
        }
        let mut ordered = Vec::with_capacity(steps.len());
        let position: HashMap<usize, usize> = order.iter().enumerate().map(|(pos, &i)| (i, pos)).collect();
        let renumber = |src: &mut Source| {
            if let Source::Step { step: s, .. } = src {
                *s = position[s];
            }
        };
        for &i in &order {
            let mut step = steps[i].clone();
            for (_, src) in &mut step.inputs {
                renumber(src);
            }
            if let Some((src, _)) = &mut step.condition {
                renumber(src);
            }
            if let Some(Fallback::Step(j)) = &mut step.fallback {
                *j = position[j];
            }
            ordered.push(step);
        }
        for (_, src) in &mut outputs {
            renumber(src);
        }
        Ok(Pipeline {
            name: draft.name.clone(),
            records: crate::config::RecordsPolicy::default(),
            steps: ordered,
            outputs,
            signature,
            resolver,
        })
    }

    /// Names of the models the pipeline calls.
    pub fn models(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Model { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    /// Runs the pipeline on validated inputs; returns the requested outputs and the trace.
    pub async fn run(
        &self,
        inputs: Vec<Tensor>,
        wanted: &[String],
        protocol: Protocol,
        timeout: Option<Duration>,
    ) -> Result<(Vec<Tensor>, Vec<StepTrace>), EngineError> {
        let started = Instant::now();
        let deadline = timeout.map(|t| started + t);
        let n = self.steps.len();
        let mut results: Vec<Option<Vec<Tensor>>> = vec![None; n];
        let mut launched = vec![false; n];
        // A dormant fallback step runs once the step it stands in for failed; (that step, its error).
        let mut standing_in: HashMap<usize, (usize, EngineError)> = HashMap::new();
        let mut trace = Vec::new();
        let mut running = FuturesUnordered::new();
        loop {
            for (i, step) in self.steps.iter().enumerate() {
                let ready = step.sources().all(|src| {
                    matches!(src, Source::Input(_))
                        || matches!(src, Source::Step { step, .. } if results[*step].is_some())
                });
                if launched[i] || (step.dormant && !standing_in.contains_key(&i)) || !ready {
                    continue;
                }
                launched[i] = true;
                let args: Vec<Tensor> = step
                    .inputs
                    .iter()
                    .map(|(name, src)| fetch(src, name, &inputs, &results))
                    .collect::<Result<_, _>>()?;
                let condition = match &step.condition {
                    Some((src, negate)) => Some((fetch(src, "condition", &inputs, &results)?, *negate)),
                    None => None,
                };
                running.push(self.run_step(i, args, condition, protocol, deadline, started));
            }
            let Some((i, result, mut entry)) = running.next().await else { break };
            let step = &self.steps[i];
            if let Some((primary, primary_error)) = standing_in.remove(&i) {
                match result {
                    Ok(outs) => {
                        entry.outcome = "fallback";
                        crate::metrics::pipeline_step(&self.name, &step.name, "fallback", entry.duration);
                        results[primary] = Some(outs);
                        trace.push(entry);
                    }
                    Err(e) => {
                        return Err(in_step(
                            &self.steps[primary].name,
                            match primary_error {
                                EngineError::Timeout(m) => {
                                    EngineError::Timeout(format!("{m}; its fallback '{}' failed too: {e}", step.name))
                                }
                                other => EngineError::Unavailable(format!(
                                    "{other}; its fallback '{}' failed too: {e}",
                                    step.name
                                )),
                            },
                        ));
                    }
                }
                continue;
            }
            match result {
                Ok(outs) => {
                    crate::metrics::pipeline_step(&self.name, &step.name, entry.outcome, entry.duration);
                    results[i] = Some(outs);
                    trace.push(entry);
                }
                Err(e) => {
                    entry.outcome = "error";
                    crate::metrics::pipeline_step(&self.name, &step.name, "error", entry.duration);
                    trace.push(entry);
                    match step.fallback {
                        Some(Fallback::Step(j)) => {
                            tracing::warn!(pipeline = %self.name, step = %step.name, fallback = %self.steps[j].name, error = %e, "step failed; running its fallback");
                            standing_in.insert(j, (i, e));
                        }
                        _ => return Err(in_step(&step.name, e)),
                    }
                }
            }
        }
        let outputs = wanted
            .iter()
            .map(|name| {
                let (_, src) = self
                    .outputs
                    .iter()
                    .find(|(n, _)| n == name)
                    .ok_or_else(|| EngineError::InvalidRequest(format!("the pipeline has no output '{name}'")))?;
                fetch(src, name, &inputs, &results)
            })
            .collect::<Result<Vec<_>, _>>()?;
        trace.sort_by_key(|t| t.start);
        Ok((outputs, trace))
    }

    /// What a step does with its (possibly row-selected) inputs.
    async fn execute(
        &self,
        step: &Step,
        args: Vec<Tensor>,
        protocol: Protocol,
        deadline: Option<Instant>,
    ) -> Result<Vec<Tensor>, EngineError> {
        match &step.action {
            Action::Op(op) => ops::run(op, &args).map_err(EngineError::InvalidRequest),
            Action::Remote(remote) => remote.call(args, &step.wanted, deadline).await,
            Action::Model { name, version } => {
                let model = self.resolver.resolve(name, version.as_deref())?;
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let timeout = match (left, step.timeout) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                model
                    .infer(InferRequest { inputs: args, outputs: step.wanted.clone(), timeout, protocol, trace: false })
                    .await
                    .map(|r| r.outputs)
            }
        }
    }

    async fn run_step(
        &self,
        i: usize,
        args: Vec<Tensor>,
        condition: Option<(Tensor, bool)>,
        protocol: Protocol,
        deadline: Option<Instant>,
        pipeline_start: Instant,
    ) -> (usize, Result<Vec<Tensor>, EngineError>, StepTrace) {
        let step = &self.steps[i];
        let start = Instant::now();
        let span = tracing::debug_span!("pipeline_step", pipeline = %self.name, step = %step.name);
        let mut outcome = "success";
        let result = async {
            let rows = args.first().and_then(|t| t.shape.first().copied()).unwrap_or(0);
            let mask = match &condition {
                None => None,
                Some((pred, negate)) => {
                    let mask = rows::selected_rows(pred, *negate).map_err(EngineError::InvalidRequest)?;
                    (!mask.iter().all(|&m| m)).then_some(mask)
                }
            };
            let Some(mask) = mask else {
                return self
                    .execute(step, args, protocol, deadline)
                    .await
                    .or_else(|e| self.constants(step, e, rows, &mut outcome));
            };
            let selected = mask.iter().filter(|&&m| m).count();
            let answered = if selected == 0 {
                outcome = "skipped";
                None
            } else {
                let taken = args
                    .iter()
                    .map(|t| rows::take_rows(t, &mask))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(EngineError::InvalidRequest)?;
                let got = self
                    .execute(step, taken, protocol, deadline)
                    .await
                    .or_else(|e| self.constants(step, e, selected, &mut outcome))?;
                Some(got)
            };
            step.produces
                .iter()
                .filter(|spec| step.wanted.contains(&spec.name))
                .map(|spec| {
                    let part = answered.as_ref().and_then(|a| a.iter().find(|t| t.name == spec.name));
                    rows::put_rows(part, spec, &mask).map_err(EngineError::Backend)
                })
                .collect()
        }
        .instrument(span)
        .await;
        let duration = start.elapsed();
        (i, result, StepTrace { step: step.name.clone(), start: start - pipeline_start, duration, outcome })
    }

    /// The constant fallback's answer for `rows` rows, or the error when there is none.
    fn constants(
        &self,
        step: &Step,
        error: EngineError,
        rows: usize,
        outcome: &mut &'static str,
    ) -> Result<Vec<Tensor>, EngineError> {
        let Some(Fallback::Constants(values)) = &step.fallback else { return Err(error) };
        tracing::warn!(pipeline = %self.name, step = %step.name, %error, "step failed; answering with its constants");
        *outcome = "constant";
        step.produces
            .iter()
            .filter(|spec| step.wanted.contains(&spec.name))
            .map(|spec| rows::constant(spec, &values[&spec.name], rows).map_err(EngineError::Backend))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pipelines made of transforms only: no model is ever resolved.
    struct NoModels;

    impl ModelResolver for NoModels {
        fn resolve(&self, name: &str, _: Option<&str>) -> Result<ModelHandle, EngineError> {
            Err(EngineError::ModelNotFound(name.to_string()))
        }
    }

    const HEAD: &str = "[[inputs]]\nname = \"x\"\ndatatype = \"FP32\"\nshape = [-1, 3]\n";

    fn parse(body: &str) -> Result<Pipeline, String> {
        Pipeline::parse("p", &format!("{HEAD}{body}"), Arc::new(NoModels))
    }

    #[test]
    fn validation_names_the_problem() {
        let cases = [
            (
                "[[steps]]\nname=\"s\"\nop=\"softmax\"\ninputs=[\"y\"]\n[[outputs]]\nname=\"o\"\nfrom=\"s.output\"\n",
                "step 's' reads 'y', which is neither a pipeline input",
            ),
            (
                "[[steps]]\nname=\"s\"\nop=\"frobnicate\"\ninputs=[\"x\"]\n[[outputs]]\nname=\"o\"\nfrom=\"s.output\"\n",
                "unknown op 'frobnicate'",
            ),
            (
                "[[steps]]\nname=\"s\"\nop=\"top_k\"\ninputs=[\"x\"]\n[[outputs]]\nname=\"o\"\nfrom=\"s.values\"\n",
                "op 'top_k' needs 'k'",
            ),
            (
                "[[steps]]\nname=\"s\"\nop=\"softmax\"\ninputs=[\"x\"]\n[[steps]]\nname=\"t\"\nop=\"argmax\"\ninputs=[\"x\"]\n[[outputs]]\nname=\"o\"\nfrom=\"s.output\"\n",
                "step 't' is read by no step and no output",
            ),
            (
                "[[steps]]\nname=\"s\"\nop=\"softmax\"\ninputs=[\"x\"]\n[[outputs]]\nname=\"o\"\nfrom=\"s.nothing\"\n",
                "reads 's.nothing', but step 's' has outputs [\"output\"]",
            ),
            (
                "[[steps]]\nname=\"s\"\nop=\"select\"\ncolumns=[5]\ninputs=[\"x\"]\n[[outputs]]\nname=\"o\"\nfrom=\"s.output\"\n",
                "select column 5 is out of range for 3 columns",
            ),
            (
                "[[steps]]\nname=\"m\"\nmodel=\"fraud\"\ninputs={input=\"x\"}\n[[outputs]]\nname=\"o\"\nfrom=\"m.label\"\n",
                "step 'm': model 'fraud': unknown model 'fraud'",
            ),
            (
                "[[steps]]\nname=\"a.b\"\nop=\"softmax\"\ninputs=[\"x\"]\n[[outputs]]\nname=\"o\"\nfrom=\"x\"\n",
                "must be non-empty and contain no '.'",
            ),
            ("[[steps]]\nname=\"s\"\nop=\"softmax\"\ninputs=[\"x\"]\ntypo=1\n", "unknown field `typo`"),
        ];
        for (body, needle) in cases {
            let err = parse(body).err().unwrap_or_default();
            assert!(err.contains(needle), "expected '{needle}' in '{err}'");
        }
    }

    #[tokio::test]
    async fn transforms_run_in_dependency_order() {
        let pipeline = parse(
            "[[steps]]\nname=\"p\"\nop=\"softmax\"\ninputs=[\"x\"]\n\
             [[steps]]\nname=\"best\"\nop=\"argmax\"\ninputs=[\"p.output\"]\n\
             [[steps]]\nname=\"top\"\nop=\"top_k\"\nk=2\ninputs=[\"p.output\"]\n\
             [[outputs]]\nname=\"label\"\nfrom=\"best.output\"\n[[outputs]]\nname=\"top2\"\nfrom=\"top.indices\"\n",
        )
        .expect("valid");
        assert_eq!(pipeline.signature.outputs[0].datatype, DataType::Int64);
        let x =
            Tensor::new("x", vec![2, 3], kiln_core::TensorData::Fp32(vec![1.0, 3.0, 2.0, 0.0, -1.0, 5.0])).expect("t");
        let (out, trace) =
            pipeline.run(vec![x], &["label".into(), "top2".into()], Protocol::InProcess, None).await.expect("runs");
        assert_eq!(out[0].data, kiln_core::TensorData::Int64(vec![1, 2]));
        assert_eq!(out[1].data, kiln_core::TensorData::Int64(vec![1, 2, 2, 0]));
        let start = |s: &str| trace.iter().find(|t| t.step == s).expect("traced").start;
        assert!(start("p") <= start("best") && start("p") <= start("top"));
    }

    fn fp32(rows: &[[f32; 3]]) -> Tensor {
        let n = rows.len();
        Tensor::new("x", vec![n, 3], kiln_core::TensorData::Fp32(rows.concat())).expect("tensor")
    }

    #[tokio::test]
    async fn conditional_branches_run_on_their_rows() {
        let pipeline = parse(
            "[[steps]]\nname=\"hot\"\nop=\"threshold\"\nthreshold=1.0\ncolumn=0\ninputs=[\"x\"]\n\
             [[steps]]\nname=\"a\"\nop=\"argmax\"\ninputs=[\"x\"]\nwhen=\"hot.output\"\n\
             [[steps]]\nname=\"b\"\nop=\"top_k\"\nk=1\ninputs=[\"x\"]\nunless=\"hot.output\"\n\
             [[steps]]\nname=\"b1\"\nop=\"cast\"\ndatatype=\"INT64\"\ninputs=[\"b.values\"]\n\
             [[steps]]\nname=\"sel\"\nop=\"select\"\ncolumns=[0]\ninputs=[\"b.values\"]\n\
             [[steps]]\nname=\"merged\"\nop=\"where\"\ninputs=[\"hot.output\", \"a.output\", \"bi.output\"]\n\
             [[steps]]\nname=\"bi\"\nop=\"argmax\"\ninputs=[\"sel.output\"]\n\
             [[outputs]]\nname=\"merged\"\nfrom=\"merged.output\"\n[[outputs]]\nname=\"max\"\nfrom=\"b1.output\"\n",
        )
        .expect("valid");
        // Row 0 is hot (x0 >= 1): argmax of x. Row 1 is not: the top value, via branch b.
        let x = fp32(&[[2.0, 5.0, 1.0], [0.0, 7.0, 3.0]]);
        let (out, trace) =
            pipeline.run(vec![x], &["merged".into(), "max".into()], Protocol::InProcess, None).await.expect("runs");
        assert_eq!(out[0].data, kiln_core::TensorData::Int64(vec![1, 0]));
        // b ran on row 1 only; row 0 is filler.
        assert_eq!(out[1].data, kiln_core::TensorData::Int64(vec![0, 7]));
        // Nothing hot: branch a is skipped, not run.
        let x = fp32(&[[0.0, 5.0, 1.0]]);
        let (_, trace_cold) = pipeline.run(vec![x], &["merged".into()], Protocol::InProcess, None).await.expect("runs");
        let outcome = |t: &[StepTrace], s: &str| t.iter().find(|e| e.step == s).map(|e| e.outcome);
        assert_eq!(outcome(&trace, "a"), Some("success"));
        assert_eq!(outcome(&trace_cold, "a"), Some("skipped"));
    }

    /// A remote step whose server refuses connections (nothing listens on port 1).
    const DEAD_REMOTE: &str = "[[steps]]\nname=\"r\"\nremote={url=\"http://127.0.0.1:1\", model=\"m\"}\n\
        inputs={x=\"x\"}\noutputs=[{name=\"label\", datatype=\"INT64\", shape=[-1]}]\nretries=0\n";

    #[tokio::test]
    async fn failed_steps_fall_back() {
        let constants =
            parse(&format!("{DEAD_REMOTE}fallback={{label=-1}}\n[[outputs]]\nname=\"label\"\nfrom=\"r.label\"\n"))
                .expect("valid");
        let x = fp32(&[[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]);
        let (out, trace) =
            constants.run(vec![x.clone()], &["label".into()], Protocol::InProcess, None).await.expect("falls back");
        assert_eq!(out[0].data, kiln_core::TensorData::Int64(vec![-1, -1]));
        assert_eq!(trace[0].outcome, "constant");

        let mismatch = parse(&format!(
            "{DEAD_REMOTE}fallback=\"local\"\n[[steps]]\nname=\"local\"\nop=\"argmax\"\ninputs=[\"x\"]\n\
             [[outputs]]\nname=\"label\"\nfrom=\"r.label\"\n"
        ));
        assert!(
            mismatch
                .err()
                .unwrap_or_default()
                .contains("its fallback 'local' has no output 'label' (it has [\"output\"])")
        );

        let remote = DEAD_REMOTE.replace("name=\"label\"", "name=\"output\"");
        let step = parse(&format!(
            "{remote}fallback=\"local\"\n[[steps]]\nname=\"local\"\nop=\"argmax\"\ninputs=[\"x\"]\n\
             [[outputs]]\nname=\"label\"\nfrom=\"r.output\"\n"
        ))
        .expect("valid");
        let (out, trace) = step.run(vec![x], &["label".into()], Protocol::InProcess, None).await.expect("falls back");
        assert_eq!(out[0].data, kiln_core::TensorData::Int64(vec![2, 0]));
        let outcomes: Vec<(&str, &str)> = trace.iter().map(|t| (t.step.as_str(), t.outcome)).collect();
        assert_eq!(outcomes, vec![("r", "error"), ("local", "fallback")]);
    }

    #[test]
    fn conditions_and_fallbacks_are_validated() {
        let cases = [
            (
                "[[steps]]\nname=\"s\"\nop=\"softmax\"\ninputs=[\"x\"]\nwhen=\"x\"\n[[outputs]]\nname=\"o\"\nfrom=\"s.output\"\n",
                "its condition must be BOOL or an integer, [N] or [N, 1] (got FP32 [-1, 3])",
            ),
            (
                "[[steps]]\nname=\"s\"\nop=\"softmax\"\ninputs=[\"x\"]\nfallback=\"t\"\n[[steps]]\nname=\"t\"\nop=\"softmax\"\ninputs=[\"s.output\"]\n[[outputs]]\nname=\"o\"\nfrom=\"s.output\"\n",
                "step 't' is the fallback of 's' but depends on it",
            ),
            (
                "[[steps]]\nname=\"s\"\nop=\"softmax\"\ninputs=[\"x\"]\nfallback=\"t\"\n[[steps]]\nname=\"t\"\nop=\"softmax\"\ninputs=[\"x\"]\n[[outputs]]\nname=\"o\"\nfrom=\"t.output\"\n",
                "step 't' is a fallback (it runs only when its step fails), so no step or output may read it",
            ),
            (
                "[[steps]]\nname=\"s\"\nop=\"softmax\"\ninputs=[\"x\"]\nfallback={nothing=1}\n[[outputs]]\nname=\"o\"\nfrom=\"s.output\"\n",
                "its fallback gives no constant for output 'output'",
            ),
            (
                "[[steps]]\nname=\"s\"\nop=\"argmax\"\ninputs=[\"x\"]\nfallback={output=\"none\"}\n[[outputs]]\nname=\"o\"\nfrom=\"s.output\"\n",
                "does not fit output 'output' (INT64)",
            ),
            (
                "[[steps]]\nname=\"s\"\nop=\"softmax\"\ninputs=[\"x\"]\nretries=3\n[[outputs]]\nname=\"o\"\nfrom=\"s.output\"\n",
                "'retries' is for remote, llm and embeddings steps",
            ),
            (
                "[[steps]]\nname=\"r\"\nllm={url=\"http://127.0.0.1:1/v1\", model=\"m\", prompt=\"hi {who}\"}\ninputs={x=\"x\"}\n[[outputs]]\nname=\"o\"\nfrom=\"r.text\"\n",
                "LLM input 'x' must hold one value per row",
            ),
            (
                "[[steps]]\nname=\"r\"\nremote={url=\"http://127.0.0.1:1\", model=\"m\"}\ninputs={x=\"x\"}\n[[outputs]]\nname=\"o\"\nfrom=\"r.y\"\n",
                "a remote step declares its outputs",
            ),
            (
                "[[steps]]\nname=\"r\"\nllm={url=\"http://127.0.0.1:1/v1\", model=\"m\", prompt=\"hi\", api_key_env=\"KILN_TEST_UNSET_KEY\"}\ninputs={}\n[[outputs]]\nname=\"o\"\nfrom=\"r.text\"\n",
                "api_key_env names 'KILN_TEST_UNSET_KEY', which is not set",
            ),
        ];
        for (body, needle) in cases {
            let err = parse(body).err().unwrap_or_default();
            assert!(err.contains(needle), "expected '{needle}' in '{err}'");
        }
    }
}
