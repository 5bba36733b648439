//! Built-in transforms of pipeline steps: small tensor functions over FP32/INT64 data,
//! row-wise along the first dimension.

use crate::error::StepError;
use kiln_core::{DataType, Tensor, TensorData, TensorSpec};

/// A transform and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Softmax over the last axis of an FP32 `[N, C]`.
    Softmax,
    /// Index of the largest value of each row: FP32 `[N, C]` -> INT64 `[N]`.
    Argmax,
    /// The k largest of each row: outputs `values` FP32 `[N, k]` and `indices` INT64 `[N, k]`.
    TopK(usize),
    /// 1 where column `column` of an FP32 `[N, C]` (or the value of an FP32 `[N]`) is at least
    /// the threshold, else 0: INT64 `[N]`.
    Threshold { value: f64, column: Option<usize> },
    /// Numeric conversion.
    Cast(DataType),
    /// FP32 tensors joined along the last axis.
    Concat,
    /// Columns of the last axis of an FP32 `[N, C]`.
    Select(Vec<usize>),
    /// Element-wise mean of FP32 tensors of one shape.
    Mean,
    /// Element-wise weighted mean (weights normalized to sum 1).
    WeightedMean(Vec<f64>),
    /// Most common INT64 label per row across inputs (ties: the smallest label).
    MajorityVote,
    /// Row-wise choice: inputs `[condition, a, b]`; each row from `a` where the condition
    /// (BOOL or integer, non-zero = true) holds, else from `b`. Joins two conditional branches.
    Where,
    /// Each row's text from a template and the row's values (named inputs): BYTES `[N]`.
    Format(super::retrieval_ops::SharedTemplate),
    /// The number at a field path of each BYTES JSON value: FP32 of the same shape.
    JsonField(String),
    /// The string at a field path of each BYTES JSON value: BYTES of the same shape (`null`,
    /// a search's padding, and a missing field give "").
    JsonText(String),
    /// Inputs `[values [N, k], positions [N, m]]`: each row's values at its positions.
    Gather,
}

impl std::fmt::Display for Op {
    /// As pipeline.toml spells it, with its parameters.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[f64]| v.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        match self {
            Op::Softmax => f.write_str("softmax"),
            Op::Argmax => f.write_str("argmax"),
            Op::TopK(k) => write!(f, "top_k k={k}"),
            Op::Threshold { value, column: Some(c) } => write!(f, "threshold {value} on column {c}"),
            Op::Threshold { value, column: None } => write!(f, "threshold {value}"),
            Op::Cast(dt) => write!(f, "cast to {dt}"),
            Op::Concat => f.write_str("concat"),
            Op::Select(columns) => write!(f, "select columns {columns:?}"),
            Op::Mean => f.write_str("mean"),
            Op::WeightedMean(w) => write!(f, "weighted_mean [{}]", list(w)),
            Op::MajorityVote => f.write_str("majority_vote"),
            Op::Where => f.write_str("where"),
            Op::Format(_) => f.write_str("format"),
            Op::JsonField(path) => write!(f, "json_field {path}"),
            Op::JsonText(path) => write!(f, "json_text {path}"),
            Op::Gather => f.write_str("gather"),
        }
    }
}

/// The output names of an op.
pub fn output_names(op: &Op) -> Vec<&'static str> {
    match op {
        Op::TopK(_) => vec!["values", "indices"],
        _ => vec!["output"],
    }
}

fn fp32_rows<'a>(t: &'a Tensor, what: &str) -> Result<(&'a [f32], usize, usize), StepError> {
    let TensorData::Fp32(v) = &t.data else {
        return Err(StepError::Input(format!("{what} needs FP32 input, '{}' is {}", t.name, t.datatype())));
    };
    match t.shape.as_slice() {
        [n, c] => Ok((v, *n, *c)),
        [n] => Ok((v, *n, 1)),
        other => Err(StepError::Input(format!("{what} needs [N, C] or [N], '{}' has shape {other:?}", t.name))),
    }
}

fn tensor(name: &str, shape: Vec<usize>, data: TensorData) -> Result<Tensor, StepError> {
    Ok(Tensor::new(name, shape, data)?)
}

/// Runs an op on its inputs.
pub fn run(op: &Op, inputs: &[Tensor]) -> Result<Vec<Tensor>, StepError> {
    let first = inputs.first().ok_or(StepError::Input("an op needs at least one input".into()))?;
    match op {
        Op::Format(template) => template.run(inputs),
        Op::JsonField(path) => super::retrieval_ops::json_field(path, inputs),
        Op::JsonText(path) => super::retrieval_ops::json_text(path, inputs),
        Op::Gather => super::retrieval_ops::gather(inputs),
        Op::Where => {
            let [cond, a, b] = inputs else { return Err(StepError::Input("where takes [condition, a, b]".into())) };
            let mask = super::rows::selected_rows(cond, false)?;
            if a.shape != b.shape || a.datatype() != b.datatype() {
                return Err(StepError::Input(format!(
                    "where needs '{}' and '{}' alike: {} {:?} vs {} {:?}",
                    a.name,
                    b.name,
                    a.datatype(),
                    a.shape,
                    b.datatype(),
                    b.shape
                )));
            }
            if a.shape.first() != Some(&mask.len()) {
                return Err(StepError::Input(format!(
                    "where: '{}' has {:?} rows, but the condition has {}",
                    a.name,
                    a.shape.first(),
                    mask.len()
                )));
            }
            let w: usize = a.shape.iter().skip(1).product();
            let parts: Vec<TensorData> = mask
                .iter()
                .enumerate()
                .map(
                    |(r, &pick_a)| {
                        if pick_a { a.data.slice(r * w, (r + 1) * w) } else { b.data.slice(r * w, (r + 1) * w) }
                    },
                )
                .collect();
            let data = TensorData::concat(&parts.iter().collect::<Vec<_>>())
                .unwrap_or_else(|| TensorData::zeros(a.datatype(), 0));
            Ok(vec![tensor("output", a.shape.clone(), data)?])
        }
        Op::Softmax => {
            let (v, n, c) = fp32_rows(first, "softmax")?;
            let mut out = Vec::with_capacity(v.len());
            for row in v.chunks(c.max(1)) {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f32> = row.iter().map(|x| (x - max).exp()).collect();
                let sum: f32 = exps.iter().sum();
                out.extend(exps.iter().map(|e| e / sum));
            }
            Ok(vec![tensor("output", vec![n, c], TensorData::Fp32(out))?])
        }
        Op::Argmax => {
            let (v, n, c) = fp32_rows(first, "argmax")?;
            let out = v
                .chunks(c.max(1))
                .map(|row| {
                    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
                        as i64
                })
                .collect();
            Ok(vec![tensor("output", vec![n], TensorData::Int64(out))?])
        }
        Op::TopK(k) => {
            let (v, n, c) = fp32_rows(first, "top_k")?;
            let k = (*k).min(c);
            let (mut values, mut indices) = (Vec::with_capacity(n * k), Vec::with_capacity(n * k));
            for row in v.chunks(c.max(1)) {
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                for &i in &order[..k] {
                    values.push(row[i]);
                    indices.push(i as i64);
                }
            }
            Ok(vec![
                tensor("values", vec![n, k], TensorData::Fp32(values))?,
                tensor("indices", vec![n, k], TensorData::Int64(indices))?,
            ])
        }
        Op::Threshold { value, column } => {
            let (v, n, c) = fp32_rows(first, "threshold")?;
            let col = column.unwrap_or(c - 1);
            if col >= c {
                return Err(StepError::Input(format!("threshold column {col} is out of range for {c} columns")));
            }
            let out = v.chunks(c.max(1)).map(|row| i64::from(f64::from(row[col]) >= *value)).collect();
            Ok(vec![tensor("output", vec![n], TensorData::Int64(out))?])
        }
        Op::Cast(to) => {
            let values: Vec<f64> = match &first.data {
                TensorData::Fp32(v) => v.iter().map(|&x| f64::from(x)).collect(),
                TensorData::Fp64(v) => v.clone(),
                TensorData::Int64(v) => v.iter().map(|&x| x as f64).collect(),
                TensorData::Int32(v) => v.iter().map(|&x| f64::from(x)).collect(),
                TensorData::Bool(v) => v.iter().map(|&x| f64::from(u8::from(x))).collect(),
                other => return Err(StepError::Input(format!("cast cannot read {}", other.datatype()))),
            };
            let data = match to {
                DataType::Fp32 => TensorData::Fp32(values.iter().map(|&x| x as f32).collect()),
                DataType::Fp64 => TensorData::Fp64(values),
                DataType::Int64 => TensorData::Int64(values.iter().map(|&x| x as i64).collect()),
                DataType::Int32 => TensorData::Int32(values.iter().map(|&x| x as i32).collect()),
                DataType::Bool => TensorData::Bool(values.iter().map(|&x| x != 0.0).collect()),
                other => return Err(StepError::Input(format!("cast cannot produce {other}"))),
            };
            Ok(vec![tensor("output", first.shape.clone(), data)?])
        }
        Op::Concat => {
            let parts: Vec<(&[f32], usize, usize)> =
                inputs.iter().map(|t| fp32_rows(t, "concat")).collect::<Result<_, _>>()?;
            let n = parts[0].1;
            if parts.iter().any(|p| p.1 != n) {
                return Err(StepError::Input("concat inputs have different numbers of rows".into()));
            }
            let width: usize = parts.iter().map(|p| p.2).sum();
            let mut out = Vec::with_capacity(n * width);
            for r in 0..n {
                for (v, _, c) in &parts {
                    out.extend_from_slice(&v[r * c..(r + 1) * c]);
                }
            }
            Ok(vec![tensor("output", vec![n, width], TensorData::Fp32(out))?])
        }
        Op::Select(columns) => {
            let (v, n, c) = fp32_rows(first, "select")?;
            if let Some(bad) = columns.iter().find(|&&i| i >= c) {
                return Err(StepError::Input(format!("select column {bad} is out of range for {c} columns")));
            }
            let out = v.chunks(c.max(1)).flat_map(|row| columns.iter().map(move |&i| row[i])).collect();
            Ok(vec![tensor("output", vec![n, columns.len()], TensorData::Fp32(out))?])
        }
        Op::Mean | Op::WeightedMean(_) => {
            let weights: Vec<f64> = match op {
                Op::WeightedMean(w) => w.clone(),
                _ => vec![1.0; inputs.len()],
            };
            if weights.len() != inputs.len() {
                return Err(StepError::Input(format!("{} weights for {} inputs", weights.len(), inputs.len())));
            }
            let total: f64 = weights.iter().sum();
            let mut out = vec![0f64; first.data.len()];
            for (t, w) in inputs.iter().zip(&weights) {
                let TensorData::Fp32(v) = &t.data else {
                    return Err(StepError::Input(format!("mean needs FP32, '{}' is {}", t.name, t.datatype())));
                };
                if t.shape != first.shape {
                    return Err(StepError::Input(format!("mean needs one shape: {:?} vs {:?}", first.shape, t.shape)));
                }
                for (o, x) in out.iter_mut().zip(v) {
                    *o += f64::from(*x) * w / total;
                }
            }
            Ok(vec![tensor("output", first.shape.clone(), TensorData::Fp32(out.iter().map(|&x| x as f32).collect()))?])
        }
        Op::MajorityVote => {
            let columns: Vec<&[i64]> = inputs
                .iter()
                .map(|t| match &t.data {
                    TensorData::Int64(v) if t.shape.len() == 1 => Ok(v.as_slice()),
                    _ => Err(StepError::Input(format!(
                        "majority_vote needs INT64 [N] labels, '{}' is {} {:?}",
                        t.name,
                        t.datatype(),
                        t.shape
                    ))),
                })
                .collect::<Result<_, _>>()?;
            let n = columns[0].len();
            if columns.iter().any(|c| c.len() != n) {
                return Err(StepError::Input("majority_vote inputs have different numbers of rows".into()));
            }
            let out = (0..n)
                .map(|r| {
                    let mut votes: Vec<i64> = columns.iter().map(|c| c[r]).collect();
                    votes.sort_unstable();
                    let mut best = (votes[0], 0);
                    let mut i = 0;
                    while i < votes.len() {
                        let j = votes[i..].iter().take_while(|&&v| v == votes[i]).count();
                        if j > best.1 {
                            best = (votes[i], j);
                        }
                        i += j;
                    }
                    best.0
                })
                .collect();
            Ok(vec![tensor("output", vec![n], TensorData::Int64(out))?])
        }
    }
}

/// What an op produces for inputs of these declarations (load-time validation).
pub fn output_specs(op: &Op, step: &str, inputs: &[TensorSpec]) -> Result<Vec<TensorSpec>, String> {
    let fail = |msg: String| Err(format!("step '{step}': {msg}"));
    let first = match inputs.first() {
        Some(f) => f,
        None => return fail("needs at least one input".into()),
    };
    let need = |t: &TensorSpec, dt: DataType, what: &str| -> Result<(), String> {
        if t.datatype != dt {
            return Err(format!("step '{step}': {what} needs {dt}, input '{}' is {}", t.name, t.datatype));
        }
        Ok(())
    };
    let rows = first.shape.first().copied().unwrap_or(-1);
    let cols = if first.shape.len() == 2 { first.shape[1] } else { 1 };
    let spec = |name: &str, datatype: DataType, shape: Vec<i64>| TensorSpec { name: name.into(), datatype, shape };
    Ok(match op {
        // The template's variables are the step's input names: the graph passes them as the specs' names.
        Op::Format(template) => {
            let named: Vec<(String, TensorSpec)> = inputs.iter().map(|s| (s.name.clone(), s.clone())).collect();
            return template.output_specs(step, &named);
        }
        Op::JsonField(_) => return super::retrieval_ops::json_field_specs(step, inputs),
        Op::JsonText(_) => {
            let mut specs = super::retrieval_ops::json_field_specs(step, inputs)?;
            specs[0].datatype = DataType::Bytes;
            return Ok(specs);
        }
        Op::Gather => return super::retrieval_ops::gather_specs(step, inputs),
        Op::Where => {
            let [cond, a, b] = inputs else { return fail("where takes [condition, a, b]".into()) };
            if !super::rows::is_condition(cond) {
                return fail(format!(
                    "where's condition '{}' must be BOOL or an integer, [N] or [N, 1] (got {} {:?})",
                    cond.name, cond.datatype, cond.shape
                ));
            }
            if a.datatype != b.datatype || !super::shapes_fit(&a.shape, &b.shape) {
                return fail(format!(
                    "where needs both branches alike: '{}' is {} {:?}, '{}' is {} {:?}",
                    a.name, a.datatype, a.shape, b.name, b.datatype, b.shape
                ));
            }
            vec![spec("output", a.datatype, a.shape.clone())]
        }
        Op::Softmax => {
            need(first, DataType::Fp32, "softmax")?;
            vec![spec("output", DataType::Fp32, first.shape.clone())]
        }
        Op::Argmax => {
            need(first, DataType::Fp32, "argmax")?;
            vec![spec("output", DataType::Int64, vec![rows])]
        }
        Op::TopK(k) => {
            need(first, DataType::Fp32, "top_k")?;
            vec![
                spec("values", DataType::Fp32, vec![rows, *k as i64]),
                spec("indices", DataType::Int64, vec![rows, *k as i64]),
            ]
        }
        Op::Threshold { column, .. } => {
            need(first, DataType::Fp32, "threshold")?;
            if let Some(c) = column
                && cols >= 0
                && *c as i64 >= cols
            {
                return fail(format!("threshold column {c} is out of range for {cols} columns"));
            }
            vec![spec("output", DataType::Int64, vec![rows])]
        }
        Op::Cast(to) => vec![spec("output", *to, first.shape.clone())],
        Op::Concat => {
            let mut width = 0i64;
            for t in inputs {
                need(t, DataType::Fp32, "concat")?;
                let c = if t.shape.len() == 2 { t.shape[1] } else { 1 };
                width = if width < 0 || c < 0 { -1 } else { width + c };
            }
            vec![spec("output", DataType::Fp32, vec![rows, width])]
        }
        Op::Select(columns) => {
            need(first, DataType::Fp32, "select")?;
            if let Some(bad) = columns.iter().find(|&&i| cols >= 0 && i as i64 >= cols) {
                return fail(format!("select column {bad} is out of range for {cols} columns"));
            }
            vec![spec("output", DataType::Fp32, vec![rows, columns.len() as i64])]
        }
        Op::Mean | Op::WeightedMean(_) => {
            if let Op::WeightedMean(w) = op
                && w.len() != inputs.len()
            {
                return fail(format!("{} weights for {} inputs", w.len(), inputs.len()));
            }
            for t in inputs {
                need(t, DataType::Fp32, "mean")?;
                if !super::shapes_fit(&first.shape, &t.shape) {
                    return fail(format!("mean needs one shape: {:?} vs {:?}", first.shape, t.shape));
                }
            }
            vec![spec("output", DataType::Fp32, first.shape.clone())]
        }
        Op::MajorityVote => {
            for t in inputs {
                need(t, DataType::Int64, "majority_vote")?;
            }
            vec![spec("output", DataType::Int64, vec![rows])]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp32(name: &str, shape: Vec<usize>, v: Vec<f32>) -> Tensor {
        Tensor::new(name, shape, TensorData::Fp32(v)).expect("tensor")
    }

    #[test]
    fn ops_compute_what_they_say() {
        let p = fp32("p", vec![2, 2], vec![0.2, 0.8, 0.9, 0.1]);
        let q = fp32("q", vec![2, 2], vec![0.6, 0.4, 0.5, 0.5]);
        let out = run(&Op::WeightedMean(vec![3.0, 1.0]), &[p.clone(), q.clone()]).expect("mean");
        let TensorData::Fp32(v) = &out[0].data else { panic!() };
        let want = [0.3, 0.7, 0.8, 0.2];
        assert!(v.iter().zip(want).all(|(a, b)| (f64::from(*a) - b).abs() < 1e-6), "{v:?}");
        assert_eq!(run(&Op::Argmax, std::slice::from_ref(&p)).expect("argmax")[0].data, TensorData::Int64(vec![1, 0]));
        assert_eq!(
            run(&Op::Threshold { value: 0.5, column: Some(1) }, std::slice::from_ref(&p)).expect("threshold")[0].data,
            TensorData::Int64(vec![1, 0])
        );
        let soft = run(&Op::Softmax, &[fp32("x", vec![1, 2], vec![0.0, 0.0])]).expect("softmax");
        assert_eq!(soft[0].data, TensorData::Fp32(vec![0.5, 0.5]));
        let top = run(&Op::TopK(1), std::slice::from_ref(&q)).expect("top_k");
        assert_eq!(top[1].data, TensorData::Int64(vec![0, 0]));
        let cat = run(&Op::Concat, &[p.clone(), q.clone()]).expect("concat");
        assert_eq!(cat[0].shape, vec![2, 4]);
        assert_eq!(
            run(&Op::Select(vec![1]), std::slice::from_ref(&p)).expect("select")[0].data,
            TensorData::Fp32(vec![0.8, 0.1])
        );
        let votes = [vec![1, 0, 2], vec![1, 2, 0], vec![0, 2, 1]]
            .map(|v| Tensor::new("l", vec![3], TensorData::Int64(v)).expect("t"));
        assert_eq!(run(&Op::MajorityVote, &votes).expect("vote")[0].data, TensorData::Int64(vec![1, 2, 0]));
        assert_eq!(
            run(&Op::Cast(DataType::Fp32), &[votes[0].clone()]).expect("cast")[0].data,
            TensorData::Fp32(vec![1.0, 0.0, 2.0])
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let labels = Tensor::new("l", vec![2], TensorData::Int64(vec![1, 0])).expect("t");
        let err = run(&Op::Softmax, std::slice::from_ref(&labels)).expect_err("int");
        assert!(matches!(err, StepError::Input(_)) && err.to_string().contains("needs FP32"), "{err}");
        let spec = TensorSpec { name: "l".into(), datatype: DataType::Int64, shape: vec![-1] };
        let err = output_specs(&Op::Mean, "avg", &[spec]).expect_err("int");
        assert_eq!(err, "step 'avg': mean needs FP32, input 'l' is INT64");
    }
}
