//! Running a pipeline: every step whose inputs are ready starts at once (a
//! `FuturesUnordered`), conditions select rows, fallbacks stand in for failed steps.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use kiln_core::Tensor;
use tracing::Instrument;

use super::{Action, Fallback, Pipeline, Source, Step, StepTrace, ops, rows};
use kiln_serving::EngineError;
use kiln_serving::metrics::Protocol;
use kiln_serving::{InferRequest, Span};

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

/// Puts a step's name on its error, keeping the kind (and so the status code).
fn in_step(step: &str, e: EngineError) -> EngineError {
    let say = |m: String| format!("pipeline step '{step}': {m}");
    match e {
        EngineError::Validation(v) => EngineError::InvalidRequest(say(v.to_string())),
        EngineError::InvalidRequest(m) => EngineError::InvalidRequest(say(m)),
        EngineError::Overloaded(m) => EngineError::Overloaded(say(m)),
        EngineError::Timeout(m) => EngineError::Timeout(say(m)),
        EngineError::Unavailable(m) => EngineError::Unavailable(say(m)),
        // A step's model unloaded, failed or not yet ready: the pipeline cannot answer now.
        EngineError::NotReady(m) => EngineError::Unavailable(say(m)),
        e @ (EngineError::ModelNotFound(_) | EngineError::LoadFailed { .. } | EngineError::VersionNotFound { .. }) => {
            EngineError::Unavailable(say(e.to_string()))
        }
        other => EngineError::Backend(format!("pipeline step '{step}' failed: {other}")),
    }
}

/// What every step of one run shares.
#[derive(Clone, Copy)]
struct Context<'a> {
    protocol: Protocol,
    deadline: Option<Instant>,
    /// When the pipeline started (steps' `kiln_trace` offsets).
    started: Instant,
    /// A sampled request's span: steps hang under it.
    span: Option<&'a Span>,
}

/// Ops on more elements than this run on tokio's blocking pool, not on the executor.
const INLINE_OP_ELEMENTS: usize = 64 * 1024;

impl Pipeline {
    /// Runs the pipeline on validated inputs; returns the requested outputs and the trace.
    pub async fn run(
        &self,
        inputs: Vec<Tensor>,
        wanted: &[String],
        protocol: Protocol,
        timeout: Option<Duration>,
        span: Option<&Span>,
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
                running.push(self.run_step(i, args, condition, Context { protocol, deadline, started, span }));
            }
            let Some((i, result, mut entry)) = running.next().await else { break };
            let step = &self.steps[i];
            if let Some((primary, primary_error)) = standing_in.remove(&i) {
                match result {
                    Ok(outs) => {
                        entry.outcome = "fallback";
                        self.metrics[i].finished("fallback", entry.duration);
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
                    self.metrics[i].finished(entry.outcome, entry.duration);
                    results[i] = Some(outs);
                    trace.push(entry);
                }
                Err(e) => {
                    entry.outcome = "error";
                    self.metrics[i].finished("error", entry.duration);
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
        span: Option<&Span>,
    ) -> Result<Vec<Tensor>, EngineError> {
        match &step.action {
            Action::Op(op) => {
                // Small tensors take microseconds: inline. Big ones (up to the 16M-element
                // request limit) would hold an executor thread for milliseconds: blocking pool.
                let elements: usize = args.iter().map(|t| t.data.len()).sum();
                if elements <= INLINE_OP_ELEMENTS {
                    return ops::run(op, &args).map_err(EngineError::from);
                }
                let op = op.clone();
                tokio::task::spawn_blocking(move || ops::run(&op, &args))
                    .await
                    .map_err(|e| EngineError::Backend(format!("pipeline op task failed: {e}")))?
                    .map_err(EngineError::from)
            }
            Action::Remote(remote) => remote.call(args, &step.wanted, deadline, span).await,
            Action::LocalLlm(llm) => llm.call(&*self.resolver, args, protocol, deadline).await,
            Action::Model { name, version } => {
                let model = self.resolver.resolve(name, version.as_deref())?;
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let timeout = match (left, step.timeout) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                model
                    .infer(InferRequest {
                        inputs: args,
                        outputs: step.wanted.clone(),
                        timeout,
                        protocol,
                        trace: false,
                        span: span.cloned(),
                    })
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
        context: Context<'_>,
    ) -> (usize, Result<Vec<Tensor>, EngineError>, StepTrace) {
        let Context { protocol, deadline, started: pipeline_start, span: parent } = context;
        let step = &self.steps[i];
        let start = Instant::now();
        let span = tracing::debug_span!("pipeline_step", pipeline = %self.name, step = %step.name);
        let mut spanned = parent.map(|p| {
            let mut s = p.child(format!("step {}", step.name));
            s.set("kiln.pipeline", self.name.as_str());
            s.set("kiln.step", step.name.as_str());
            s
        });
        let inner = spanned.as_ref().map(|s| s.span().clone());
        let inner = inner.as_ref();
        let mut outcome = "success";
        let result = async {
            let rows = args.first().and_then(|t| t.shape.first().copied()).unwrap_or(0);
            let mask = match &condition {
                None => None,
                Some((pred, negate)) => {
                    let mask = rows::selected_rows(pred, *negate).map_err(EngineError::from)?;
                    (!mask.iter().all(|&m| m)).then_some(mask)
                }
            };
            let Some(mask) = mask else {
                return self
                    .execute(step, args, protocol, deadline, inner)
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
                    .map_err(EngineError::from)?;
                let got = self
                    .execute(step, taken, protocol, deadline, inner)
                    .await
                    .or_else(|e| self.constants(step, e, selected, &mut outcome))?;
                Some(got)
            };
            step.produces
                .iter()
                .filter(|spec| step.wanted.contains(&spec.name))
                .map(|spec| {
                    let part = answered.as_ref().and_then(|a| a.iter().find(|t| t.name == spec.name));
                    rows::put_rows(part, spec, &mask).map_err(EngineError::from)
                })
                .collect()
        }
        .instrument(span)
        .await;
        if let Some(s) = spanned.as_mut() {
            s.set("kiln.step.outcome", outcome);
            if let Err(e) = &result {
                s.fail(e);
                if let Some(Fallback::Step(j)) = step.fallback {
                    s.event("fallback", vec![("kiln.fallback", self.steps[j].name.as_str().into())]);
                }
            } else if outcome == "constant" {
                s.event("fallback", vec![("kiln.fallback", "constants".into())]);
            }
        }
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
            .map(|spec| rows::constant(spec, &values[&spec.name], rows).map_err(EngineError::from))
            .collect()
    }
}
