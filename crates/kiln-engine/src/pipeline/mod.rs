//! Pipelines: several models and transforms called in sequence or in parallel, declared in
//! `REPO/<name>/pipeline.toml` and served exactly like a model.
//!
//! A step's inputs name pipeline inputs (`input`) or other steps' outputs (`step.output`).
//! The graph is checked when it loads — unknown references, cycles, and datatype/shape
//! mismatches between steps are load errors naming the step — and every step starts as soon as
//! the steps it reads have finished, so independent steps run concurrently. Model steps go
//! through the model's own queue and batcher, resolved at call time (a reloaded model is used
//! by the pipelines that name it).

pub mod ops;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use kiln_core::{DataType, ModelSignature, Tensor, TensorSpec};
use serde::Deserialize;
use tracing::Instrument;

use crate::{EngineError, InferRequest, ModelHandle, Protocol};
use ops::Op;

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
    /// Model steps: model input name -> reference.
    Named(BTreeMap<String, String>),
    /// Transforms: references in order.
    List(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    name: String,
    model: Option<String>,
    version: Option<String>,
    op: Option<String>,
    inputs: StepInputs,
    weights: Option<Vec<f64>>,
    threshold: Option<f64>,
    column: Option<usize>,
    columns: Option<Vec<usize>>,
    k: Option<usize>,
    datatype: Option<DataType>,
}

/// Where a value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    Input(String),
    Step { step: usize, output: String },
}

#[derive(Debug, Clone)]
enum Action {
    Model { name: String, version: Option<String> },
    Op(Op),
}

#[derive(Debug, Clone)]
struct Step {
    name: String,
    action: Action,
    /// (name the step sees, source).
    inputs: Vec<(String, Source)>,
    /// Output names the pipeline needs from this step (model steps ask only for those).
    wanted: Vec<String>,
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
    pub outcome: &'static str,
}

/// Builds a pipeline in code — the same graphs as pipeline.toml, for Rust applications that
/// embed kiln and compose model calls. References are `"input"` or `"step.output"`.
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
/// A step before validation: name, what it does, and (name it sees, reference) per input.
type DraftStep = (String, Action, Vec<(String, String)>);

#[derive(Debug, Clone, Default)]
pub struct PipelineBuilder {
    inputs: Vec<TensorSpec>,
    steps: Vec<DraftStep>,
    outputs: Vec<(String, String)>,
}

impl PipelineBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a pipeline input.
    #[must_use]
    pub fn input(mut self, name: &str, datatype: DataType, shape: Vec<i64>) -> Self {
        self.inputs.push(TensorSpec { name: name.into(), datatype, shape });
        self
    }

    /// A step calling a served model; `inputs` maps the model's input names to references.
    #[must_use]
    pub fn model(mut self, step: &str, model: &str, inputs: &[(&str, &str)]) -> Self {
        let inputs = inputs.iter().map(|(k, r)| ((*k).to_string(), (*r).to_string())).collect();
        self.steps.push((step.into(), Action::Model { name: model.into(), version: None }, inputs));
        self
    }

    /// A built-in transform over references, in order.
    #[must_use]
    pub fn op(mut self, step: &str, op: Op, inputs: &[&str]) -> Self {
        let inputs = inputs.iter().map(|r| ((*r).to_string(), (*r).to_string())).collect();
        self.steps.push((step.into(), Action::Op(op), inputs));
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
        other => {
            return Err(format!(
                "step '{}': unknown op '{other}' (softmax, argmax, top_k, threshold, cast, concat, select, mean, weighted_mean, majority_vote)",
                s.name
            ));
        }
    })
}

fn shapes_fit(want: &[i64], got: &[i64]) -> bool {
    want.len() == got.len() && want.iter().zip(got).all(|(w, g)| *w < 0 || *g < 0 || w == g)
}

impl Pipeline {
    /// Parses and validates a pipeline.toml. Model steps are checked against the models the
    /// resolver serves now.
    pub fn parse(text: &str, resolver: Arc<dyn ModelResolver>) -> Result<Pipeline, String> {
        let file: PipelineFile = toml::from_str(text).map_err(|e| format!("pipeline.toml: {e}"))?;
        let mut draft = PipelineBuilder::new();
        draft.inputs = file.inputs;
        draft.outputs = file.outputs.into_iter().map(|o| (o.name, o.from)).collect();
        for s in &file.steps {
            let action = match (&s.model, &s.op) {
                (Some(m), None) => Action::Model { name: m.clone(), version: s.version.clone() },
                (None, Some(_)) => Action::Op(op_of(s)?),
                _ => return Err(format!("step '{}' needs exactly one of 'model' or 'op'", s.name)),
            };
            let inputs = match (&action, &s.inputs) {
                (Action::Model { .. }, StepInputs::Named(map)) => {
                    map.iter().map(|(k, r)| (k.clone(), r.clone())).collect()
                }
                (Action::Op(_), StepInputs::List(list)) => list.iter().map(|r| (r.clone(), r.clone())).collect(),
                (Action::Model { .. }, StepInputs::List(_)) => {
                    return Err(format!(
                        "step '{}': a model step's inputs are a table {{ model_input = \"ref\" }}",
                        s.name
                    ));
                }
                (Action::Op(_), StepInputs::Named(_)) => {
                    return Err(format!("step '{}': an op's inputs are a list [\"ref\", ...]", s.name));
                }
            };
            draft.steps.push((s.name.clone(), action, inputs));
        }
        Pipeline::assemble(&draft, resolver)
    }

    /// Validates a drafted graph (from pipeline.toml or a [`PipelineBuilder`]).
    fn assemble(draft: &PipelineBuilder, resolver: Arc<dyn ModelResolver>) -> Result<Pipeline, String> {
        if draft.steps.is_empty() {
            return Err("the pipeline has no steps".into());
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, (name, _, _)) in draft.steps.iter().enumerate() {
            if name.is_empty() || name.contains('.') {
                return Err(format!("step name '{name}' must be non-empty and contain no '.'"));
            }
            if names.insert(name, i).is_some() {
                return Err(format!("two steps are named '{name}'"));
            }
        }
        let file_inputs = &draft.inputs;
        let mut steps = Vec::new();
        for (name, action, refs) in &draft.steps {
            let inputs = refs
                .iter()
                .map(|(k, r)| Ok((k.clone(), parse_ref(r, &names, file_inputs, name)?)))
                .collect::<Result<Vec<_>, String>>()?;
            steps.push(Step { name: name.clone(), action: action.clone(), inputs, wanted: Vec::new() });
        }
        // Order: every step after the steps it reads (Kahn); a leftover means a cycle.
        let mut order = Vec::new();
        let mut done = vec![false; steps.len()];
        while order.len() < steps.len() {
            let next = (0..steps.len()).find(|&i| {
                !done[i]
                    && steps[i].inputs.iter().all(|(_, src)| {
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
            let outputs = match &step.action {
                Action::Op(op) => ops::output_specs(op, &step.name, &input_specs)?,
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
            .flat_map(|s| s.inputs.iter().map(|(_, src)| src.clone()))
            .chain(outputs.iter().map(|(_, s)| s.clone()))
            .collect();
        for src in reads {
            if let Source::Step { step, output } = src
                && !steps[step].wanted.contains(&output)
            {
                steps[step].wanted.push(output);
            }
        }
        if let Some(unused) = steps.iter().find(|s| s.wanted.is_empty()) {
            return Err(format!("step '{}' is read by no step and no output", unused.name));
        }
        let mut ordered = Vec::with_capacity(steps.len());
        let position: HashMap<usize, usize> = order.iter().enumerate().map(|(pos, &i)| (i, pos)).collect();
        for &i in &order {
            let mut step = steps[i].clone();
            for (_, src) in &mut step.inputs {
                if let Source::Step { step: s, .. } = src {
                    *s = position[s];
                }
            }
            ordered.push(step);
        }
        for (_, src) in &mut outputs {
            if let Source::Step { step: s, .. } = src {
                *s = position[s];
            }
        }
        Ok(Pipeline { steps: ordered, outputs, signature, resolver })
    }

    /// Names of the models the pipeline calls.
    pub fn models(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Model { name, .. } => Some(name.clone()),
                Action::Op(_) => None,
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
        let mut results: Vec<Option<Vec<Tensor>>> = vec![None; self.steps.len()];
        let mut launched = vec![false; self.steps.len()];
        let mut trace = Vec::new();
        let mut running = FuturesUnordered::new();
        loop {
            for (i, step) in self.steps.iter().enumerate() {
                if launched[i]
                    || !step.inputs.iter().all(|(_, src)| {
                        matches!(src, Source::Input(_))
                            || matches!(src, Source::Step { step, .. } if results[*step].is_some())
                    })
                {
                    continue;
                }
                launched[i] = true;
                let args: Vec<Tensor> = step
                    .inputs
                    .iter()
                    .map(|(name, src)| fetch(src, name, &inputs, &results))
                    .collect::<Result<_, _>>()?;
                running.push(self.run_step(i, args, protocol, timeout, started));
            }
            let Some((i, result, entry)) = running.next().await else { break };
            trace.push(entry);
            match result {
                Ok(outs) => results[i] = Some(outs),
                Err(e) => {
                    return Err(match e {
                        EngineError::Validation(v) => {
                            EngineError::InvalidRequest(format!("pipeline step '{}': {v}", self.steps[i].name))
                        }
                        EngineError::InvalidRequest(m) => {
                            EngineError::InvalidRequest(format!("pipeline step '{}': {m}", self.steps[i].name))
                        }
                        EngineError::Overloaded(m) => {
                            EngineError::Overloaded(format!("pipeline step '{}': {m}", self.steps[i].name))
                        }
                        EngineError::Timeout(m) => {
                            EngineError::Timeout(format!("pipeline step '{}': {m}", self.steps[i].name))
                        }
                        other => {
                            EngineError::Backend(format!("pipeline step '{}' failed: {other}", self.steps[i].name))
                        }
                    });
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

    async fn run_step(
        &self,
        i: usize,
        args: Vec<Tensor>,
        protocol: Protocol,
        timeout: Option<Duration>,
        pipeline_start: Instant,
    ) -> (usize, Result<Vec<Tensor>, EngineError>, StepTrace) {
        let step = &self.steps[i];
        let start = Instant::now();
        let span = tracing::debug_span!("pipeline_step", step = %step.name);
        let result = async {
            match &step.action {
                Action::Op(op) => ops::run(op, &args).map_err(EngineError::InvalidRequest),
                Action::Model { name, version } => match self.resolver.resolve(name, version.as_deref()) {
                    Ok(model) => model
                        .infer(InferRequest {
                            inputs: args,
                            outputs: step.wanted.clone(),
                            timeout,
                            protocol,
                            trace: false,
                        })
                        .await
                        .map(|r| r.outputs),
                    Err(e) => Err(e),
                },
            }
        }
        .instrument(span)
        .await;
        let duration = start.elapsed();
        crate::metrics::pipeline_step(&step.name, result.is_ok(), duration);
        let outcome = if result.is_ok() { "success" } else { "error" };
        (i, result, StepTrace { step: step.name.clone(), start: start - pipeline_start, duration, outcome })
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
        Pipeline::parse(&format!("{HEAD}{body}"), Arc::new(NoModels))
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
}
