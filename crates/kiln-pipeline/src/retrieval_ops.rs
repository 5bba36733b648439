//! The ops that sit between a collection step and what follows it: `format` (each row's text
//! from a template and the row's values: an LLM prompt from the question and the passages
//! retrieved for it), `json_field` (a number out of each JSON payload: features for a ranking
//! model) and `gather` (each row's values at the positions another step chose: the ids of the
//! top-ranked candidates).

use crate::error::StepError;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use kiln_core::{DataType, Tensor, TensorData, TensorSpec};
use minijinja::value::Value;
use minijinja::{Environment, UndefinedBehavior};

const TEMPLATE: &str = "format";

/// A `format` op's template, compiled once at load time. Its syntax is Jinja2's (minijinja):
/// `{{ question }}`, `{% for p in passages %}…{% endfor %}`, plus a `from_json` filter that
/// turns a payload string into an object (`(p | from_json).text`).
pub struct FormatTemplate {
    source: String,
    env: Environment<'static>,
    /// The variables the template reads: each must be an input of the step.
    reads: BTreeSet<String>,
}

impl FormatTemplate {
    pub fn new(source: &str) -> Result<Self, String> {
        let mut env = Environment::new();
        // A value the row does not have (a misspelt attribute of a payload) fails the request
        // instead of printing nothing into a prompt.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_trim_blocks(true);
        env.add_filter("from_json", from_json);
        env.add_template_owned(TEMPLATE, source.to_string()).map_err(|e| format!("template: {}", describe(&e)))?;
        let template = env.get_template(TEMPLATE).map_err(|e| format!("template: {}", describe(&e)))?;
        let globals: BTreeSet<&str> = env.globals().map(|(name, _)| name).collect();
        let reads =
            template.undeclared_variables(false).into_iter().filter(|name| !globals.contains(name.as_str())).collect();
        Ok(FormatTemplate { source: source.to_string(), env, reads })
    }

    /// Load-time check: the template reads only the step's inputs, each holding one value or
    /// one list per row.
    pub fn output_specs(&self, step: &str, inputs: &[(String, TensorSpec)]) -> Result<Vec<TensorSpec>, String> {
        let names: Vec<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
        if let Some(unknown) = self.reads.iter().find(|r| !names.contains(&r.as_str())) {
            return Err(format!("step '{step}': the template reads '{unknown}', but the step's inputs are {names:?}"));
        }
        for (name, spec) in inputs {
            if !(1..=2).contains(&spec.shape.len()) {
                return Err(format!(
                    "step '{step}': format input '{name}' must be [N] (one value per row) or [N, k] (a list per row), not {:?}",
                    spec.shape
                ));
            }
        }
        let rows = inputs.first().and_then(|(_, s)| s.shape.first().copied()).unwrap_or(-1);
        Ok(vec![TensorSpec { name: "output".into(), datatype: DataType::Bytes, shape: vec![rows] }])
    }

    /// The variables the template reads.
    pub fn reads(&self) -> impl Iterator<Item = &str> {
        self.reads.iter().map(String::as_str)
    }

    /// Each row's text, BYTES `[N]`.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, StepError> {
        let out = self.render_rows(inputs)?;
        let rows = out.len();
        Tensor::new("output", vec![rows], TensorData::Bytes(out.into_iter().map(String::into_bytes).collect()))
            .map(|t| vec![t])
            .map_err(StepError::from)
    }

    /// Each row's text.
    pub fn render_rows(&self, inputs: &[Tensor]) -> Result<Vec<String>, StepError> {
        let rows = inputs.first().and_then(|t| t.shape.first().copied()).unwrap_or(0);
        if let Some(t) = inputs.iter().find(|t| t.shape.first() != Some(&rows)) {
            return Err(StepError::Input(format!(
                "format: input '{}' has {:?} rows, the first input has {rows}",
                t.name,
                t.shape.first()
            )));
        }
        let template =
            self.env.get_template(TEMPLATE).map_err(|e| StepError::Input(format!("format: {}", describe(&e))))?;
        let mut out = Vec::with_capacity(rows);
        for row in 0..rows {
            let context: Vec<(&str, Value)> = inputs.iter().map(|t| (t.name.as_str(), row_value(t, row))).collect();
            let text = template
                .render(Value::from_iter(context))
                .map_err(|e| StepError::Input(format!("format: row {row}: {}", describe(&e))))?;
            out.push(text);
        }
        Ok(out)
    }
}

impl fmt::Debug for FormatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FormatTemplate").field("source", &self.source).finish_non_exhaustive()
    }
}

impl PartialEq for FormatTemplate {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// A shared template: ops are cloned into blocking tasks.
pub type SharedTemplate = Arc<FormatTemplate>;

/// minijinja's message with the template line it points at.
fn describe(e: &minijinja::Error) -> String {
    match (e.detail(), e.line()) {
        (Some(detail), Some(line)) => format!("{} (line {line}): {detail}", e.kind()),
        (None, Some(line)) => format!("{} (line {line})", e.kind()),
        (Some(detail), None) => format!("{}: {detail}", e.kind()),
        (None, None) => e.kind().to_string(),
    }
}

fn from_json(text: &str) -> Result<Value, minijinja::Error> {
    serde_json::from_str::<serde_json::Value>(text).map(|v| Value::from_serialize(&v)).map_err(|e| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, format!("from_json: not JSON ({e})"))
    })
}

/// Row `row` of a `[N]`/`[N, 1]` tensor as one value, of a `[N, k]` tensor as a list.
fn row_value(t: &Tensor, row: usize) -> Value {
    let width: usize = t.shape.iter().skip(1).product();
    let one = |i: usize| element(&t.data, i);
    if t.shape.len() == 1 || (t.shape.len() == 2 && width == 1) {
        one(row)
    } else {
        Value::from((row * width..(row + 1) * width).map(one).collect::<Vec<_>>())
    }
}

fn element(data: &TensorData, i: usize) -> Value {
    // f32 through its shortest decimal, so 0.3 prints as 0.3 and not 0.30000001192092896.
    let short = |x: f32| x.to_string().parse::<f64>().unwrap_or(f64::from(x));
    match data {
        TensorData::Bool(v) => Value::from(v[i]),
        TensorData::Uint8(v) => Value::from(v[i]),
        TensorData::Uint16(v) => Value::from(v[i]),
        TensorData::Uint32(v) => Value::from(v[i]),
        TensorData::Uint64(v) => Value::from(v[i]),
        TensorData::Int8(v) => Value::from(v[i]),
        TensorData::Int16(v) => Value::from(v[i]),
        TensorData::Int32(v) => Value::from(v[i]),
        TensorData::Int64(v) => Value::from(v[i]),
        TensorData::Fp16(v) => Value::from(short(v[i].to_f32())),
        TensorData::Fp32(v) => Value::from(short(v[i])),
        TensorData::Fp64(v) => Value::from(v[i]),
        TensorData::Bytes(v) => Value::from(String::from_utf8_lossy(&v[i]).into_owned()),
    }
}

/// `json_field`: the number at `path` (dots for nested objects) in each BYTES JSON value, FP32
/// of the same shape. `null`, a missing field and the padding payload of a short search result
/// give NaN; a field that is there but not a number fails the request.
pub fn json_field(path: &str, inputs: &[Tensor]) -> Result<Vec<Tensor>, StepError> {
    let [t] = inputs else { return Err(StepError::Input("json_field takes one input".into())) };
    let TensorData::Bytes(values) = &t.data else {
        return Err(StepError::Input(format!("json_field needs BYTES JSON, '{}' is {}", t.name, t.datatype())));
    };
    let keys: Vec<&str> = path.split('.').collect();
    let mut out = Vec::with_capacity(values.len());
    for (i, raw) in values.iter().enumerate() {
        let parsed = match field_fast(raw, &keys) {
            Some(found) => found,
            None => {
                let doc: serde_json::Value = serde_json::from_slice(raw).map_err(|e| {
                    StepError::Input(format!("json_field: value {i} of '{}' is not JSON ({e})", t.name))
                })?;
                keys.iter().try_fold(&doc, |v, key| v.get(*key)).cloned()
            }
        };
        out.push(match parsed.as_ref() {
            None | Some(serde_json::Value::Null) => f32::NAN,
            Some(serde_json::Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN) as f32,
            Some(serde_json::Value::Bool(b)) => f32::from(u8::from(*b)),
            Some(other) => {
                let kind = match other {
                    serde_json::Value::String(_) => "a string",
                    serde_json::Value::Array(_) => "an array",
                    _ => "an object",
                };
                return Err(StepError::Input(format!(
                    "json_field '{path}': value {i} of '{}' is {kind}, not a number",
                    t.name
                )));
            }
        });
    }
    Tensor::new("output", t.shape.clone(), TensorData::Fp32(out)).map(|t| vec![t]).map_err(StepError::from)
}

/// `json_text`: the string at a field path of each JSON value (a passage's text out of a search's
/// payloads, for a reranker); `null` and a missing field give "".
pub fn json_text(path: &str, inputs: &[Tensor]) -> Result<Vec<Tensor>, StepError> {
    let [t] = inputs else { return Err(StepError::Input("json_text takes one input".into())) };
    let TensorData::Bytes(values) = &t.data else {
        return Err(StepError::Input(format!("json_text needs BYTES JSON, '{}' is {}", t.name, t.datatype())));
    };
    let keys: Vec<&str> = path.split('.').collect();
    let mut out = Vec::with_capacity(values.len());
    for (i, raw) in values.iter().enumerate() {
        let doc: serde_json::Value = serde_json::from_slice(raw)
            .map_err(|e| StepError::Input(format!("json_text: value {i} of '{}' is not JSON ({e})", t.name)))?;
        out.push(match keys.iter().try_fold(&doc, |v, key| v.get(*key)) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(s)) => s.clone().into_bytes(),
            Some(_) => {
                return Err(StepError::Input(format!("json_text '{path}': value {i} of '{}' is not a string", t.name)));
            }
        });
    }
    Tensor::new("output", t.shape.clone(), TensorData::Bytes(out)).map(|t| vec![t]).map_err(StepError::from)
}

/// The value at `keys` of an object, reading only the objects on the path (the other fields
/// stay unparsed text); `None` when the borrowed fast path cannot read it (not an object,
/// escaped keys), and the caller parses the whole value instead.
fn field_fast(raw: &[u8], keys: &[&str]) -> Option<Option<serde_json::Value>> {
    use serde_json::value::RawValue;
    let (first, rest) = keys.split_first()?;
    let object: std::collections::HashMap<&str, &RawValue> = serde_json::from_slice(raw).ok()?;
    match object.get(first) {
        None => Some(None),
        Some(inner) if rest.is_empty() => serde_json::from_str(inner.get()).ok().map(Some),
        Some(inner) if inner.get().starts_with('{') => field_fast(inner.get().as_bytes(), rest),
        // A path through a value that is not an object finds nothing.
        Some(_) => Some(None),
    }
}

pub fn json_field_specs(step: &str, inputs: &[TensorSpec]) -> Result<Vec<TensorSpec>, String> {
    let [t] = inputs else { return Err(format!("step '{step}': json_field takes one input")) };
    if t.datatype != DataType::Bytes {
        return Err(format!("step '{step}': json_field needs BYTES JSON, input '{}' is {}", t.name, t.datatype));
    }
    Ok(vec![TensorSpec { name: "output".into(), datatype: DataType::Fp32, shape: t.shape.clone() }])
}

/// `gather`: inputs `[values [N, k], positions [N, m]]` (INT64 or INT32, 0-based, as `top_k`'s
/// `indices`): each row's values at its positions, `[N, m]`, of the values' type.
pub fn gather(inputs: &[Tensor]) -> Result<Vec<Tensor>, StepError> {
    let [values, positions] = inputs else { return Err(StepError::Input("gather takes [values, positions]".into())) };
    let ([n, k], [pn, m]) = (values.shape.as_slice(), positions.shape.as_slice()) else {
        return Err(StepError::Input(format!(
            "gather needs values [N, k] and positions [N, m], got {:?} and {:?}",
            values.shape, positions.shape
        )));
    };
    if n != pn {
        return Err(StepError::Input(format!("gather: '{}' has {n} rows, '{}' has {pn}", values.name, positions.name)));
    }
    let at: Vec<i64> = match &positions.data {
        TensorData::Int64(v) => v.clone(),
        TensorData::Int32(v) => v.iter().map(|&p| i64::from(p)).collect(),
        other => {
            return Err(StepError::Input(format!(
                "gather's positions must be INT64 or INT32, '{}' is {}",
                positions.name,
                other.datatype()
            )));
        }
    };
    let mut parts = Vec::with_capacity(n * m);
    for (i, &p) in at.iter().enumerate() {
        let Some(col) = usize::try_from(p).ok().filter(|&c| c < *k) else {
            return Err(StepError::Input(format!(
                "gather: position {p} (row {}) is out of range for {k} columns",
                i / m
            )));
        };
        let start = (i / m) * k + col;
        parts.push(values.data.slice(start, start + 1));
    }
    let data = TensorData::concat(&parts.iter().collect::<Vec<_>>())
        .unwrap_or_else(|| TensorData::zeros(values.datatype(), 0));
    Tensor::new("output", vec![*n, *m], data).map(|t| vec![t]).map_err(StepError::from)
}

pub fn gather_specs(step: &str, inputs: &[TensorSpec]) -> Result<Vec<TensorSpec>, String> {
    let [values, positions] = inputs else { return Err(format!("step '{step}': gather takes [values, positions]")) };
    if values.shape.len() != 2 || positions.shape.len() != 2 {
        return Err(format!(
            "step '{step}': gather needs values [N, k] and positions [N, m], got {:?} and {:?}",
            values.shape, positions.shape
        ));
    }
    if !matches!(positions.datatype, DataType::Int64 | DataType::Int32) {
        return Err(format!(
            "step '{step}': gather's positions must be INT64 or INT32, '{}' is {}",
            positions.name, positions.datatype
        ));
    }
    Ok(vec![TensorSpec {
        name: "output".into(),
        datatype: values.datatype,
        shape: vec![values.shape[0], positions.shape[1]],
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(name: &str, shape: Vec<usize>, v: &[&str]) -> Tensor {
        Tensor::new(name, shape, TensorData::Bytes(v.iter().map(|s| s.as_bytes().to_vec()).collect())).expect("tensor")
    }

    fn spec(name: &str, datatype: DataType, shape: Vec<i64>) -> (String, TensorSpec) {
        (name.into(), TensorSpec { name: name.into(), datatype, shape })
    }

    #[test]
    fn format_builds_each_rows_prompt_from_its_values_and_lists() {
        let t = FormatTemplate::new(
            "Q: {{ question }}\n{% for p in passages if p != 'null' %}[{{ ids[loop.index0] }}] {{ (p | from_json).text }} ({{ scores[loop.index0] }})\n{% endfor %}",
        )
        .expect("template");
        let question = bytes("question", vec![2], &["reset pin?", "card lost?"]);
        let ids = bytes("ids", vec![2, 2], &["a", "b", "c", ""]);
        let passages = bytes(
            "passages",
            vec![2, 2],
            &[r#"{"text":"Go to settings."}"#, r#"{"text":"Call us."}"#, r#"{"text":"Freeze it."}"#, "null"],
        );
        let scores = Tensor::new("scores", vec![2, 2], TensorData::Fp32(vec![0.9, 0.3, 0.7, f32::NAN])).expect("t");
        let out = t.run(&[question, ids, passages, scores]).expect("run");
        let TensorData::Bytes(text) = &out[0].data else { panic!("bytes") };
        assert_eq!(String::from_utf8_lossy(&text[0]), "Q: reset pin?\n[a] Go to settings. (0.9)\n[b] Call us. (0.3)\n");
        assert_eq!(String::from_utf8_lossy(&text[1]), "Q: card lost?\n[c] Freeze it. (0.7)\n");
    }

    #[test]
    fn format_says_what_is_wrong_at_load_and_at_run_time() {
        let err = FormatTemplate::new("{% for p in passages %}").expect_err("unclosed");
        assert!(err.to_string().contains("syntax error") && err.to_string().contains("line 1"), "{err}");
        let t = FormatTemplate::new("{{ questoin }} {{ range(2) | length }}").expect("template");
        let err = t.output_specs("prompt", &[spec("question", DataType::Bytes, vec![-1])]).expect_err("typo");
        assert!(err.to_string().contains("reads 'questoin'") && err.to_string().contains("[\"question\"]"), "{err}");
        let t = FormatTemplate::new("{{ x }}").expect("template");
        let err = t.output_specs("prompt", &[spec("x", DataType::Fp32, vec![-1, 2, 3])]).expect_err("rank 3");
        assert!(err.to_string().contains("'x' must be [N]"), "{err}");
        let ok = t.output_specs("prompt", &[spec("x", DataType::Fp32, vec![-1, 2])]).expect("ok");
        assert_eq!((ok[0].datatype, ok[0].shape.clone()), (DataType::Bytes, vec![-1]));
        let t = FormatTemplate::new("{{ (p | from_json).txet }}").expect("template");
        let err = t.run(&[bytes("p", vec![1], &[r#"{"text":"x"}"#])]).expect_err("strict");
        assert!(err.to_string().contains("row 0") && err.to_string().contains("undefined"), "{err}");
        let err = t.run(&[bytes("p", vec![1], &["{not json"])]).expect_err("json");
        assert!(err.to_string().contains("from_json: not JSON"), "{err}");
    }

    #[test]
    fn json_field_reads_numbers_and_pads_with_nan() {
        let p = bytes(
            "payloads",
            vec![1, 4],
            &[r#"{"price": 9.5}"#, r#"{"meta": {"rank": 2}}"#, "null", r#"{"price": null}"#],
        );
        let out = json_field("price", std::slice::from_ref(&p)).expect("run");
        let TensorData::Fp32(v) = &out[0].data else { panic!("fp32") };
        assert_eq!((out[0].shape.clone(), v[0]), (vec![1, 4], 9.5));
        assert!(v[1].is_nan() && v[2].is_nan() && v[3].is_nan());
        let nested = json_field("meta.rank", std::slice::from_ref(&p)).expect("run");
        assert_eq!(nested[0].data.slice(1, 2), TensorData::Fp32(vec![2.0]));
        // An escaped key (the borrowed fast path cannot hold it) and a path through a number.
        let odd = bytes("p", vec![3], &[r#"{"pr\u0069ce": 3}"#, r#"{"price": {"eur": 4}}"#, r#"{"meta": 1}"#]);
        let out = json_field("price", std::slice::from_ref(&odd)).expect_err("object");
        assert!(out.to_string().contains("value 1 of 'p' is an object"), "{out}");
        let euro = json_field("price.eur", std::slice::from_ref(&odd)).expect("run");
        let TensorData::Fp32(v) = &euro[0].data else { panic!("fp32") };
        assert!(v[0].is_nan() && v[1] == 4.0 && v[2].is_nan());
        let first = json_field("price", &[bytes("p", vec![1], &[r#"{"pr\u0069ce": 3}"#])]).expect("run");
        assert_eq!(first[0].data, TensorData::Fp32(vec![3.0]));
        assert!(json_field("meta.rank", &[odd]).expect("run")[0].data.slice(2, 3) != TensorData::Fp32(vec![1.0]));
        let err = json_field("price", &[bytes("payloads", vec![1], &[r#"{"price": "cheap"}"#])]).expect_err("string");
        assert!(err.to_string().contains("value 0 of 'payloads' is a string, not a number"), "{err}");
    }

    #[test]
    fn gather_picks_each_rows_positions() {
        let ids = bytes("ids", vec![2, 3], &["a", "b", "c", "d", "e", "f"]);
        let at = Tensor::new("indices", vec![2, 2], TensorData::Int64(vec![2, 0, 1, 1])).expect("t");
        let out = gather(&[ids.clone(), at]).expect("run");
        assert_eq!(out[0].shape, vec![2, 2]);
        assert_eq!(out[0].data, TensorData::Bytes(vec![b"c".to_vec(), b"a".to_vec(), b"e".to_vec(), b"e".to_vec()]));
        let bad = Tensor::new("indices", vec![2, 1], TensorData::Int64(vec![0, 3])).expect("t");
        let err = gather(&[ids, bad]).expect_err("range");
        assert!(err.to_string().contains("position 3 (row 1) is out of range for 3 columns"), "{err}");
    }
}
