//! A pipeline built in code over the real demo models equals the combination computed by
//! hand from the models' own answers, gets the same load-time checks as pipeline.toml, and
//! composes remote steps, policies, fallbacks and conditions.

use std::path::PathBuf;

use kiln_core::{DataType, Tensor, TensorData, TensorSpec};
use kiln_engine::Engine;
use kiln_pipeline::ops::Op;
use kiln_pipeline::remote::{RemoteSpec, Transport};
use kiln_pipeline::resilience::Policy;
use kiln_pipeline::{FallbackSpec, PipelineBuilder, RemoteDraft};
use kiln_serving::{InferRequest, Protocol};

fn rows() -> Tensor {
    let text =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/fixtures/fraud.json"))
            .expect("fixture");
    let fx: serde_json::Value = serde_json::from_str(&text).expect("json");
    let rows = fx["inputs"].as_array().expect("rows");
    let data: Vec<f32> =
        rows.iter().flat_map(|r| r.as_array().expect("row").iter().map(|v| v.as_f64().expect("num") as f32)).collect();
    Tensor::new("input", vec![rows.len(), 30], TensorData::Fp32(data)).expect("tensor")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_pipeline_equals_the_hand_combination() {
    kiln_backend_ort::runtime::ensure(None).expect("ONNX Runtime (run scripts/setup-venv.sh)");
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/models");
    let engine =
        tokio::task::spawn_blocking(move || Engine::load_repository(&repo)).await.expect("join").expect("loads");
    let pipeline = PipelineBuilder::new()
        .input("input", DataType::Fp32, vec![-1, 30])
        .model("gbc", "fraud", &[("input", "input")])
        .model("lr", "fraud_lr", &[("input", "input")])
        .op("blend", Op::WeightedMean(vec![0.7, 0.3]), &["gbc.probabilities", "lr.probabilities"])
        .output("probabilities", "blend.output")
        .build(engine.resolver())
        .expect("valid");
    let x = rows();
    let (out, trace) =
        pipeline.run(vec![x.clone()], &["probabilities".into()], Protocol::InProcess, None, None).await.expect("runs");
    assert_eq!(trace.len(), 3);
    let proba = |model: &str| {
        let engine = engine.clone();
        let x = x.clone();
        let model = model.to_string();
        async move {
            let r = engine
                .infer(
                    &model,
                    None,
                    InferRequest { inputs: vec![x], outputs: vec!["probabilities".into()], ..Default::default() },
                )
                .await
                .expect("infer");
            let TensorData::Fp32(v) = r.outputs[0].data.clone() else { panic!("fp32") };
            v
        }
    };
    let (gbc, lr) = (proba("fraud").await, proba("fraud_lr").await);
    let TensorData::Fp32(got) = &out[0].data else { panic!("fp32") };
    for ((g, a), b) in got.iter().zip(&gbc).zip(&lr) {
        assert!((f64::from(*g) - (0.7 * f64::from(*a) + 0.3 * f64::from(*b))).abs() < 1e-6);
    }

    let err = PipelineBuilder::new()
        .input("input", DataType::Fp32, vec![-1, 30])
        .model("gbc", "fraud", &[("input", "input")])
        .op("s", Op::Softmax, &["gbc.label"])
        .output("o", "s.output")
        .build(engine.resolver())
        .err()
        .expect("type error");
    assert_eq!(err, "step 's': softmax needs FP32, input 'label' is INT64");

    // A remote step (nothing listens on port 1) with a policy, falling back to the local model,
    // and a conditional step: only the rows the local model calls fraud get the blend.
    let remote = RemoteDraft::Kserve(
        RemoteSpec {
            url: "http://127.0.0.1:1".into(),
            model: "fraud".into(),
            version: None,
            protocol: Transport::Rest,
        },
        vec![
            TensorSpec { name: "label".into(), datatype: DataType::Int64, shape: vec![-1] },
            TensorSpec { name: "probabilities".into(), datatype: DataType::Fp32, shape: vec![-1, 2] },
        ],
    );
    let pipeline = PipelineBuilder::new()
        .named("resilient")
        .input("input", DataType::Fp32, vec![-1, 30])
        .remote("far", remote, &[("input", "input")])
        .policy(Policy { retries: 0, ..Policy::defaults(false) })
        .fallback(FallbackSpec::Step("near".into()))
        .model("near", "fraud", &[("input", "input")])
        .model("lr", "fraud_lr", &[("input", "input")])
        .when("far.label")
        .output("label", "far.label")
        .output("lr_probabilities", "lr.probabilities")
        .build(engine.resolver())
        .expect("valid");
    let (out, trace) = pipeline
        .run(vec![x], &["label".into(), "lr_probabilities".into()], Protocol::InProcess, None, None)
        .await
        .expect("falls back");
    let outcomes: Vec<(&str, &str)> = trace.iter().map(|t| (t.step.as_str(), t.outcome)).collect();
    assert!(outcomes.contains(&("far", "error")) && outcomes.contains(&("near", "fallback")), "{outcomes:?}");
    let TensorData::Int64(labels) = &out[0].data else { panic!("int64") };
    let TensorData::Fp32(lr_p) = &out[1].data else { panic!("fp32") };
    for (row, label) in labels.iter().enumerate() {
        let p = &lr_p[row * 2..row * 2 + 2];
        if *label == 0 {
            assert_eq!(p, [0.0, 0.0], "row {row} was not selected, so it is filler");
        } else {
            assert!((p[0] + p[1] - 1.0).abs() < 1e-5, "row {row} ran");
        }
    }
    assert!(labels.contains(&1) && labels.contains(&0), "the fixture mixes both classes");
}
