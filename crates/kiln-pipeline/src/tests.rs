//! Pipelines of transforms only: parsing, validation messages, order, conditions, fallbacks.

use kiln_core::{DataType, Tensor};

use super::*;
use kiln_serving::ModelHandle;
use kiln_serving::metrics::Protocol;

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
    let x = Tensor::new("x", vec![2, 3], kiln_core::TensorData::Fp32(vec![1.0, 3.0, 2.0, 0.0, -1.0, 5.0])).expect("t");
    let (out, trace) =
        pipeline.run(vec![x], &["label".into(), "top2".into()], Protocol::InProcess, None, None).await.expect("runs");
    assert_eq!(out[0].data, kiln_core::TensorData::Int64(vec![1, 2]));
    assert_eq!(out[1].data, kiln_core::TensorData::Int64(vec![1, 2, 2, 0]));
    let start = |s: &str| trace.iter().find(|t| t.step == s).expect("traced").start;
    assert!(start("p") <= start("best") && start("p") <= start("top"));
}

#[tokio::test]
async fn format_and_gather_read_named_inputs_from_the_file() {
    let pipeline = parse(
        "[[inputs]]\nname=\"names\"\ndatatype=\"BYTES\"\nshape=[-1, 3]\n\
         [[steps]]\nname=\"top\"\nop=\"top_k\"\nk=2\ninputs=[\"x\"]\n\
         [[steps]]\nname=\"picked\"\nop=\"gather\"\ninputs=[\"names\", \"top.indices\"]\n\
         [[steps]]\nname=\"say\"\nop=\"format\"\ninputs={best=\"picked.output\", score=\"top.values\"}\n\
         template=\"{{ best | join(', ') }} ({{ score[0] }})\"\n\
         [[outputs]]\nname=\"text\"\nfrom=\"say.output\"\n",
    )
    .expect("valid");
    assert_eq!(pipeline.signature.outputs[0].datatype, DataType::Bytes);
    let x = fp32(&[[0.5, 3.0, 2.0]]);
    let names = Tensor::new(
        "names",
        vec![1, 3],
        kiln_core::TensorData::Bytes(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]),
    )
    .expect("t");
    let (out, _) = pipeline.run(vec![x, names], &["text".into()], Protocol::InProcess, None, None).await.expect("runs");
    assert_eq!(out[0].data, kiln_core::TensorData::Bytes(vec![b"b, c (3.0)".to_vec()]));
    let errors = [
        ("inputs=[\"x\"]\ntemplate=\"{{ x }}\"", "a format step's inputs are a table"),
        ("inputs={y=\"x\"}\ntemplate=\"{{ x }}\"", "the template reads 'x', but the step's inputs are [\"y\"]"),
        ("inputs={x=\"x\"}", "op 'format' needs 'template'"),
        ("inputs={x=\"x\"}\ntemplate=\"{% if x %}\"", "template: syntax error (line 1)"),
    ];
    for (step, needle) in errors {
        let body =
            format!("[[steps]]\nname=\"f\"\nop=\"format\"\n{step}\n[[outputs]]\nname=\"o\"\nfrom=\"f.output\"\n");
        let err = parse(&body).err().unwrap_or_default();
        assert!(err.contains(needle), "expected '{needle}' in '{err}'");
    }
    let err = parse("[[steps]]\nname=\"s\"\nop=\"softmax\"\ninputs=[\"x\"]\nfield=\"a\"\n[[outputs]]\nname=\"o\"\nfrom=\"s.output\"\n").err().unwrap_or_default();
    assert!(err.contains("'field' is for the 'json_field' op, not 'softmax'"), "{err}");
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
        pipeline.run(vec![x], &["merged".into(), "max".into()], Protocol::InProcess, None, None).await.expect("runs");
    assert_eq!(out[0].data, kiln_core::TensorData::Int64(vec![1, 0]));
    // b ran on row 1 only; row 0 is filler.
    assert_eq!(out[1].data, kiln_core::TensorData::Int64(vec![0, 7]));
    // Nothing hot: branch a is skipped, not run.
    let x = fp32(&[[0.0, 5.0, 1.0]]);
    let (_, trace_cold) =
        pipeline.run(vec![x], &["merged".into()], Protocol::InProcess, None, None).await.expect("runs");
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
        constants.run(vec![x.clone()], &["label".into()], Protocol::InProcess, None, None).await.expect("falls back");
    assert_eq!(out[0].data, kiln_core::TensorData::Int64(vec![-1, -1]));
    assert_eq!(trace[0].outcome, "constant");

    let mismatch = parse(&format!(
        "{DEAD_REMOTE}fallback=\"local\"\n[[steps]]\nname=\"local\"\nop=\"argmax\"\ninputs=[\"x\"]\n\
         [[outputs]]\nname=\"label\"\nfrom=\"r.label\"\n"
    ));
    assert!(
        mismatch.err().unwrap_or_default().contains("its fallback 'local' has no output 'label' (it has [\"output\"])")
    );

    let remote = DEAD_REMOTE.replace("name=\"label\"", "name=\"output\"");
    let step = parse(&format!(
        "{remote}fallback=\"local\"\n[[steps]]\nname=\"local\"\nop=\"argmax\"\ninputs=[\"x\"]\n\
         [[outputs]]\nname=\"label\"\nfrom=\"r.output\"\n"
    ))
    .expect("valid");
    let (out, trace) = step.run(vec![x], &["label".into()], Protocol::InProcess, None, None).await.expect("falls back");
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
