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

pub mod error;
pub mod ops;
mod prompt;
pub mod remote;
pub mod resilience;
pub mod retrieval_ops;
pub mod rows;

mod builder;
mod file;
mod graph;
mod llm_answer;
mod local_llm;
mod run;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_core::{ModelSignature, TensorSpec};

pub use builder::PipelineBuilder;
pub use error::StepError;
pub use file::FallbackSpec;
use kiln_serving::EngineError;
use kiln_serving::{InferRequest, InferResponse, ServedModel};
use local_llm::LocalLlmStep;
use ops::Op;
use remote::{EmbeddingsSpec, LlmSpec, RemoteSpec, RemoteStep};
use resilience::Policy;
use rows::Constant;

pub use kiln_repository::layout::PIPELINE_FILE;

pub use kiln_serving::{ModelResolver, StepTrace};

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

// A load-time draft, built once per pipeline: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum DraftAction {
    Model { name: String, version: Option<String> },
    Op(Op),
    Remote(RemoteDraft, Policy),
}

#[derive(Debug, Clone)]
enum Action {
    Model {
        name: String,
        version: Option<String>,
    },
    Op(Op),
    Remote(Arc<RemoteStep>),
    /// An `llm` step on an LLM of this repository.
    LocalLlm(Arc<LocalLlmStep>),
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

/// A validated pipeline.
pub struct Pipeline {
    name: String,
    /// The `[records]` policy of pipeline.toml (the default for pipelines built in code).
    pub records: kiln_repository::config::RecordsPolicy,
    steps: Vec<Step>,
    /// Each step's metric handles, registered at load (same index as `steps`).
    metrics: Vec<kiln_serving::metrics::StepMetrics>,
    outputs: Vec<(String, Source)>,
    pub signature: ModelSignature,
    resolver: Arc<dyn ModelResolver>,
}

/// Whether two declared shapes can hold the same tensor (-1 matches any size).
pub(crate) fn shapes_fit(want: &[i64], got: &[i64]) -> bool {
    want.len() == got.len() && want.iter().zip(got).all(|(w, g)| *w < 0 || *g < 0 || w == g)
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
                    Action::LocalLlm(_) => "llm",
                },
                detail: match &step.action {
                    Action::Model { name, version: Some(v) } => format!("{name} v{v}"),
                    Action::Model { name, version: None } => name.clone(),
                    Action::Op(op) => op.to_string(),
                    Action::Remote(remote) => remote.describe(),
                    Action::LocalLlm(llm) => llm.describe(),
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
    /// The models the pipeline calls, each with the version its step names (None: the
    /// newest ready one).
    pub fn dependencies(&self) -> Vec<(String, Option<String>)> {
        self.steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Model { name, version } => Some((name.clone(), version.clone())),
                Action::LocalLlm(llm) => Some((llm.model().to_string(), None)),
                _ => None,
            })
            .collect()
    }

    /// Names of the models the pipeline calls.
    pub fn models(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Model { name, .. } => Some(name.clone()),
                Action::LocalLlm(llm) => Some(llm.model().to_string()),
                _ => None,
            })
            .collect()
    }
}

/// A pipeline as the executor of a served version: its steps call other models' executors (it
/// has no queue of its own), all under the request's timeout.
struct PipelineExecutor(std::sync::Arc<Pipeline>);

impl kiln_serving::Executor for PipelineExecutor {
    fn kind(&self) -> kiln_serving::ExecutorKind {
        kiln_serving::ExecutorKind::Pipeline
    }

    fn run<'a>(
        &'a self,
        model: &'a ServedModel,
        request: InferRequest,
    ) -> kiln_serving::BoxFuture<'a, Result<InferResponse, EngineError>> {
        Box::pin(async move {
            let admitted = model.admit(&request)?;
            let timeout = admitted.timeout;
            let run = self.0.run(request.inputs, &admitted.outputs, request.protocol, timeout, request.span.as_ref());
            let (outputs, trace) = match timeout {
                Some(limit) => tokio::time::timeout(limit, run)
                    .await
                    .map_err(|_| kiln_serving::timeout_error(&model.name, model.version, limit))??,
                None => run.await?,
            };
            model.stats.record_execution(admitted.rows as u64);
            let trace = if request.trace { trace } else { Vec::new() };
            Ok(InferResponse { model_name: model.name.clone(), model_version: model.version, outputs, trace })
        })
    }

    fn dependencies(&self) -> Vec<(String, Option<String>)> {
        self.0.dependencies()
    }

    fn runs(&self) -> Option<&dyn std::any::Any> {
        Some(&self.0)
    }
}

/// Serves a pipeline under a model's name (version 1); the dashboard finds the
/// `Arc<Pipeline>` with `ServedModel::runs`.
pub fn serve(name: String, pipeline: Pipeline, settings: kiln_serving::ServingSettings) -> ServedModel {
    let signature = pipeline.signature.clone();
    ServedModel::with_executor(name, 1, signature, settings, PipelineExecutor(std::sync::Arc::new(pipeline)))
}
