//! Validation: a drafted graph (from pipeline.toml or a [`PipelineBuilder`]) becomes a
//! [`Pipeline`] — names, references, fallbacks, order, types, what each step must produce —
//! one function per phase, each failing with a message that names the step.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kiln_core::{DataType, ModelSignature, TensorSpec};

use super::DraftAction;
use super::builder::PipelineBuilder;
use super::file::FallbackSpec;
use super::remote::RemoteStep;
use super::resilience::Guard;
use super::{
    Action, Fallback, LocalLlmStep, ModelResolver, Op, Pipeline, RemoteDraft, Source, Step, ops, rows, shapes_fit,
};

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

impl Pipeline {
    /// Validates a drafted graph, phase by phase.
    pub(super) fn assemble(draft: &PipelineBuilder, resolver: Arc<dyn ModelResolver>) -> Result<Pipeline, String> {
        if draft.steps.is_empty() {
            return Err("the pipeline has no steps".into());
        }
        let names = step_names(draft)?;
        let mut steps = resolve_steps(draft, &names)?;
        let fallback_of = mark_fallbacks(&mut steps)?;
        let order = dependency_order(&steps)?;
        check_fallbacks_are_independent(&steps, &fallback_of)?;
        let produced = output_types(&steps, &order, &draft.inputs, resolver.as_ref())?;
        let (signature, outputs) = pipeline_outputs(draft, &names, &steps, &produced)?;
        mark_wanted(&mut steps, &outputs)?;
        match_fallback_outputs(&mut steps, &fallback_of, &produced)?;
        check_step_outputs(&mut steps, &produced)?;
        let (steps, outputs) = in_order(&steps, outputs, &order);
        let metrics = steps.iter().map(|s| kiln_serving::metrics::StepMetrics::new(&draft.name, &s.name)).collect();
        Ok(Pipeline {
            name: draft.name.clone(),
            records: kiln_repository::config::RecordsPolicy::default(),
            steps,
            metrics,
            outputs,
            signature,
            resolver,
        })
    }
}

/// Step names are unique, non-empty and dot-free (`step.output` must parse).
fn step_names(draft: &PipelineBuilder) -> Result<HashMap<&str, usize>, String> {
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, d) in draft.steps.iter().enumerate() {
        if d.name.is_empty() || d.name.contains('.') {
            return Err(format!("step name '{}' must be non-empty and contain no '.'", d.name));
        }
        if names.insert(&d.name, i).is_some() {
            return Err(format!("two steps are named '{}'", d.name));
        }
    }
    Ok(names)
}

/// References resolved to sources, remote steps given their guards, fallbacks to indexes.
fn resolve_steps(draft: &PipelineBuilder, names: &HashMap<&str, usize>) -> Result<Vec<Step>, String> {
    let file_inputs = &draft.inputs;
    let mut steps = Vec::new();
    for d in &draft.steps {
        let inputs = d
            .inputs
            .iter()
            .map(|(k, r)| Ok((k.clone(), parse_ref(r, names, file_inputs, &d.name)?)))
            .collect::<Result<Vec<_>, String>>()?;
        let condition = match &d.condition {
            Some((r, negate)) => Some((parse_ref(r, names, file_inputs, &d.name)?, *negate)),
            None => None,
        };
        let action = match &d.action {
            DraftAction::Model { name, version } => Action::Model { name: name.clone(), version: version.clone() },
            DraftAction::Op(op) => Action::Op(op.clone()),
            DraftAction::Remote(RemoteDraft::Llm(spec), policy) if spec.url.is_none() => {
                Action::LocalLlm(Arc::new(LocalLlmStep::new(spec.clone(), policy.timeout, &d.name)?))
            }
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
    Ok(steps)
}

/// Fallback steps run only for the step they stand in for: each is dormant and serves one
/// step. Returns fallback → the step it serves.
fn mark_fallbacks(steps: &mut [Step]) -> Result<HashMap<usize, usize>, String> {
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
    Ok(fallback_of)
}

/// Every step after the steps it reads (Kahn); a leftover means a cycle.
fn dependency_order(steps: &[Step]) -> Result<Vec<usize>, String> {
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
                let stuck: Vec<&str> = (0..steps.len()).filter(|&i| !done[i]).map(|i| steps[i].name.as_str()).collect();
                return Err(format!("the steps {stuck:?} form a cycle"));
            }
        }
    }
    Ok(order)
}

/// A fallback must not wait on the step it stands in for.
fn check_fallbacks_are_independent(steps: &[Step], fallback_of: &HashMap<usize, usize>) -> Result<(), String> {
    for (&j, &i) in fallback_of {
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
    Ok(())
}

/// The declared type of a source, or which outputs the named step has.
fn spec_of(
    src: &Source,
    produced: &HashMap<usize, Vec<TensorSpec>>,
    steps: &[Step],
    inputs: &[TensorSpec],
    reader: &str,
) -> Result<TensorSpec, String> {
    match src {
        Source::Input(n) => inputs
            .iter()
            .find(|i| &i.name == n)
            .cloned()
            .ok_or_else(|| format!("{reader} reads '{n}', which is not a pipeline input")),
        Source::Step { step: i, output } => produced[i].iter().find(|o| &o.name == output).cloned().ok_or_else(|| {
            format!(
                "{reader} reads '{}.{output}', but step '{}' has outputs {:?}",
                steps[*i].name,
                steps[*i].name,
                produced[i].iter().map(|o| &o.name).collect::<Vec<_>>()
            )
        }),
    }
}

/// What every step produces, checked in order against what it reads: ops and remote steps
/// by their own rules, model steps against the model the resolver serves now.
fn output_types(
    steps: &[Step],
    order: &[usize],
    inputs: &[TensorSpec],
    resolver: &dyn ModelResolver,
) -> Result<HashMap<usize, Vec<TensorSpec>>, String> {
    let mut produced: HashMap<usize, Vec<TensorSpec>> = HashMap::new();
    for &i in order {
        let step = &steps[i];
        let reader = format!("step '{}'", step.name);
        let input_specs: Vec<TensorSpec> = step
            .inputs
            .iter()
            .map(|(_, src)| spec_of(src, &produced, steps, inputs, &reader))
            .collect::<Result<_, _>>()?;
        if let Some((src, _)) = &step.condition {
            let c = spec_of(src, &produced, steps, inputs, &reader)?;
            if !rows::is_condition(&c) {
                return Err(format!(
                    "step '{}': its condition must be BOOL or an integer, [N] or [N, 1] (got {} {:?})",
                    step.name, c.datatype, c.shape
                ));
            }
        }
        let outputs = match &step.action {
            Action::Op(op @ Op::Format(_)) => {
                let named: Vec<TensorSpec> = step
                    .inputs
                    .iter()
                    .zip(&input_specs)
                    .map(|((key, _), spec)| TensorSpec { name: key.clone(), ..spec.clone() })
                    .collect();
                ops::output_specs(op, &step.name, &named)?
            }
            Action::Op(op) => ops::output_specs(op, &step.name, &input_specs)?,
            Action::Remote(remote) => {
                let named: Vec<(String, TensorSpec)> =
                    step.inputs.iter().map(|(k, _)| k.clone()).zip(input_specs.iter().cloned()).collect();
                remote.output_specs(&step.name, &named)?
            }
            Action::LocalLlm(llm) => {
                let named: Vec<(String, TensorSpec)> =
                    step.inputs.iter().map(|(k, _)| k.clone()).zip(input_specs.iter().cloned()).collect();
                llm.output_specs(&step.name, &named, resolver)?
            }
            Action::Model { name, version } => {
                model_step_outputs(step, name, version.as_deref(), &input_specs, resolver)?
            }
        };
        produced.insert(i, outputs);
    }
    Ok(produced)
}

/// A model step gives every input its model needs, with a fitting type, and nothing else.
fn model_step_outputs(
    step: &Step,
    name: &str,
    version: Option<&str>,
    input_specs: &[TensorSpec],
    resolver: &dyn ModelResolver,
) -> Result<Vec<TensorSpec>, String> {
    let model = resolver.resolve(name, version).map_err(|e| format!("step '{}': model '{name}': {e}", step.name))?;
    if model.is_collection() {
        return collection_step_outputs(step, name, input_specs, &model.signature);
    }
    for want in &model.signature.inputs {
        let Some(((_, _), got)) = step.inputs.iter().zip(input_specs).find(|((k, _), _)| k == &want.name) else {
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
    if let Some((k, _)) = step.inputs.iter().find(|(k, _)| !model.signature.inputs.iter().any(|s| &s.name == k)) {
        return Err(format!("step '{}': model '{name}' has no input '{k}'", step.name));
    }
    Ok(model.signature.outputs.clone())
}

/// A collection step gives `query` (or `text`, with an embedder) and may give `k` and
/// `filter`; it answers `ids`, `scores` and `payloads`.
fn collection_step_outputs(
    step: &Step,
    name: &str,
    input_specs: &[TensorSpec],
    signature: &kiln_core::ModelSignature,
) -> Result<Vec<TensorSpec>, String> {
    // Its signature declares `query` [-1, dim], and `text` only when it has an embedder.
    let declared = |key: &str| signature.inputs.iter().find(|s| s.name == key);
    let embeds = declared("text").is_some();
    let mut queries = 0;
    for ((key, _), got) in step.inputs.iter().zip(input_specs) {
        let fits = match key.as_str() {
            "query" => {
                declared("query").is_some_and(|q| got.datatype == q.datatype && shapes_fit(&q.shape, &got.shape))
            }
            "text" if embeds => got.datatype == DataType::Bytes && got.shape.len() == 1,
            "k" => matches!(got.datatype, DataType::Int64 | DataType::Int32),
            "filter" => got.datatype == DataType::Bytes,
            other => {
                return Err(format!(
                    "step '{}': collection '{name}' takes 'query'{}, 'k' and 'filter', not '{other}'",
                    step.name,
                    if embeds { " or 'text'" } else { "" }
                ));
            }
        };
        if !fits {
            return Err(format!(
                "step '{}': collection '{name}' input '{key}' cannot take {} {:?}",
                step.name, got.datatype, got.shape
            ));
        }
        queries += usize::from(key == "query" || key == "text");
    }
    if queries != 1 {
        return Err(format!("step '{}': collection '{name}' needs exactly one of 'query' and 'text'", step.name));
    }
    Ok(signature.outputs.clone())
}

/// The pipeline's signature and where each output is read from.
fn pipeline_outputs(
    draft: &PipelineBuilder,
    names: &HashMap<&str, usize>,
    steps: &[Step],
    produced: &HashMap<usize, Vec<TensorSpec>>,
) -> Result<(ModelSignature, Vec<(String, Source)>), String> {
    let mut signature = ModelSignature { inputs: draft.inputs.clone(), outputs: Vec::new() };
    let mut outputs = Vec::new();
    for (out_name, from) in &draft.outputs {
        let reader = format!("output {out_name}");
        let src = parse_ref(from, names, &draft.inputs, &reader)?;
        let mut spec = spec_of(&src, produced, steps, &draft.inputs, &format!("step '{reader}'"))?;
        spec.name = out_name.clone();
        signature.outputs.push(spec);
        outputs.push((out_name.clone(), src));
    }
    Ok((signature, outputs))
}

/// What each step must produce: what later steps and the outputs read. Nothing reads a
/// dormant fallback directly.
fn mark_wanted(steps: &mut [Step], outputs: &[(String, Source)]) -> Result<(), String> {
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
    Ok(())
}

/// A fallback step answers every output wanted of its step, with the same datatypes, for the
/// same rows.
fn match_fallback_outputs(
    steps: &mut [Step],
    fallback_of: &HashMap<usize, usize>,
    produced: &HashMap<usize, Vec<TensorSpec>>,
) -> Result<(), String> {
    for (&j, &i) in fallback_of {
        let wanted = steps[i].wanted.clone();
        for w in &wanted {
            let need = produced[&i]
                .iter()
                .find(|o| &o.name == w)
                .ok_or_else(|| format!("step '{}' has no output '{w}'", steps[i].name))?;
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
        if steps[j].condition.is_none() {
            steps[j].condition = steps[i].condition.clone();
        }
    }
    Ok(())
}

/// Conditional steps have fixed row shapes (filler rows are made for the rest); constant
/// fallbacks cover every wanted output; every step is read by something.
fn check_step_outputs(steps: &mut [Step], produced: &HashMap<usize, Vec<TensorSpec>>) -> Result<(), String> {
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
    Ok(())
}

/// The steps in dependency order, every index renumbered to match.
fn in_order(steps: &[Step], mut outputs: Vec<(String, Source)>, order: &[usize]) -> (Vec<Step>, Vec<(String, Source)>) {
    let position: HashMap<usize, usize> = order.iter().enumerate().map(|(pos, &i)| (i, pos)).collect();
    let renumber = |src: &mut Source| {
        if let Source::Step { step: s, .. } = src {
            *s = position[s];
        }
    };
    let mut ordered = Vec::with_capacity(steps.len());
    for &i in order {
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
    (ordered, outputs)
}
