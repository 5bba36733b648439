//! kiln as a library: load the demo repository and compose its models in code — the fraud
//! ensemble of examples/models/fraud_ensemble/pipeline.toml, written with `PipelineBuilder`.
//!
//!     cargo run -p kiln-engine --example ensemble [-- REPO]
//!
//! Needs ONNX Runtime (run scripts/setup-venv.sh first, or set ORT_DYLIB_PATH).

use std::path::PathBuf;

use kiln_core::{DataType, Tensor, TensorData};
use kiln_engine::Engine;
use kiln_pipeline::PipelineBuilder;
use kiln_pipeline::ops::Op;
use kiln_serving::Protocol;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let repo = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/models"));
    kiln_backend_ort::runtime::ensure(None)?;
    let engine = Engine::load_repository(&repo)?;

    let pipeline = PipelineBuilder::new()
        .input("input", DataType::Fp32, vec![-1, 30])
        .model("gbc", "fraud", &[("input", "input")])
        .model("lr", "fraud_lr", &[("input", "input")])
        .op("blend", Op::WeightedMean(vec![0.7, 0.3]), &["gbc.probabilities", "lr.probabilities"])
        .op("decide", Op::Threshold { value: 0.5, column: Some(1) }, &["blend.output"])
        .output("label", "decide.output")
        .output("probabilities", "blend.output")
        .build(engine.resolver())?;

    let rows = vec![0.1f32; 2 * 30];
    let input = Tensor::new("input", vec![2, 30], TensorData::Fp32(rows))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    let (outputs, trace) = runtime.block_on(pipeline.run(
        vec![input],
        &["label".into(), "probabilities".into()],
        Protocol::InProcess,
        None,
        None,
    ))?;
    for t in &outputs {
        println!("{} {:?} = {:?}", t.name, t.shape, t.data);
    }
    for step in &trace {
        println!(
            "  step {:<8} started at {:>6} µs, took {:>6} µs",
            step.step,
            step.start.as_micros(),
            step.duration.as_micros()
        );
    }
    Ok(())
}
