//! Sentences per second of the same encoder two ways: an ONNX export (`model.onnx` + tokenizer)
//! and the Hugging Face folder (`model.safetensors`, built into an ONNX graph by kiln), on the
//! same sentences, one intra-op thread, batches of 32, interleaved rounds.
//!   cargo run --release -p kiln-text --example encoder_rate -- ONNX_DIR HF_DIR [ROUNDS]

use std::path::PathBuf;
use std::time::Instant;

use kiln_core::{ModelInstance, Tensor, TensorData};
use kiln_text::hf::HfModel;
use kiln_text::{TextModel, TextSettings};

fn sentences() -> Vec<String> {
    let words = [
        "card",
        "payment",
        "declined",
        "transfer",
        "account",
        "fee",
        "statement",
        "loan",
        "branch",
        "mobile",
        "app",
        "password",
        "reset",
        "limit",
        "international",
        "savings",
        "interest",
        "overdraft",
        "fraud",
        "alert",
    ];
    (0..256)
        .map(|i| {
            let len = 6 + (i * 7) % 40;
            (0..len).map(|j| words[(i * 3 + j * 5) % words.len()]).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

fn rate(model: &TextModel, texts: &[String]) -> f64 {
    let mut instance = model.instantiate().expect("instance");
    let start = Instant::now();
    for chunk in texts.chunks(32) {
        let input = Tensor::new(
            "text",
            vec![chunk.len()],
            TensorData::Bytes(chunk.iter().map(|t| t.as_bytes().to_vec()).collect()),
        )
        .expect("tensor");
        instance.run(&[input], &["embedding".into()]).expect("run");
    }
    texts.len() as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let onnx_dir = PathBuf::from(&args[1]);
    let hf_dir = PathBuf::from(&args[2]);
    let rounds: usize = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(3);
    kiln_backend_ort::runtime::ensure(None).expect("ONNX Runtime");
    let settings = TextSettings::default();
    let onnx = TextModel::load(&onnx_dir.join("model.onnx"), &onnx_dir.join("tokenizer.json"), settings.clone())
        .expect("onnx");
    let hf = HfModel::read(&hf_dir).expect("hf");
    let hf = TextModel::from_encoder(hf.onnx, &hf.tokenizer, settings).expect("hf model");
    let texts = sentences();
    rate(&onnx, &texts[..64]);
    rate(&hf, &texts[..64]);
    let (mut a, mut b) = (0.0, 0.0);
    for round in 0..rounds {
        let x = rate(&onnx, &texts);
        let y = rate(&hf, &texts);
        println!("round {round}: onnx export {x:.0} sentences/s, hf folder {y:.0} sentences/s, ratio {:.2}", y / x);
        a += x;
        b += y;
    }
    println!("total: hf folder / onnx export = {:.2}x", b / a);
}
