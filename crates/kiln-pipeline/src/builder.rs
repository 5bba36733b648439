//! [`PipelineBuilder`]: the same graphs as pipeline.toml, drafted in code.

use std::sync::Arc;
use std::time::Duration;

use kiln_core::{DataType, TensorSpec};

use super::file::FallbackSpec;
use super::ops::Op;
use super::resilience::Policy;
use super::{DraftAction, ModelResolver, Pipeline, RemoteDraft};

/// A step before validation.
#[derive(Debug, Clone)]
pub(super) struct DraftStep {
    pub(super) name: String,
    pub(super) action: DraftAction,
    /// (name the step sees, reference).
    pub(super) inputs: Vec<(String, String)>,
    /// (reference, negated).
    pub(super) condition: Option<(String, bool)>,
    pub(super) fallback: Option<FallbackSpec>,
    pub(super) timeout: Option<Duration>,
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
    pub(super) name: String,
    pub(super) inputs: Vec<TensorSpec>,
    pub(super) steps: Vec<DraftStep>,
    pub(super) outputs: Vec<(String, String)>,
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
