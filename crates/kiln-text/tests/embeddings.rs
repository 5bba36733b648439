//! The text embedder against sentence-transformers' reference embeddings for
//! all-MiniLM-L6-v2 (team data in ../shared; skipped with a message when absent), including
//! the sort-and-split path: one call mixing short texts and 256-token texts must give each
//! text the embedding it gets alone.

use std::path::PathBuf;

use kiln_core::{ModelInstance, Tensor, TensorData};
use kiln_text::{TextModel, TextSettings};

fn shared() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/all-minilm-l6-v2");
    if dir.join("model.onnx").is_file() {
        Some(dir)
    } else {
        eprintln!("skipped: all-MiniLM-L6-v2 is not at {} (team data in ../shared)", dir.display());
        None
    }
}

fn embed(model: &TextModel, texts: &[String]) -> Vec<Vec<f32>> {
    let mut instance = model.instantiate().expect("instance");
    let input = Tensor::new(
        "text",
        vec![texts.len()],
        TensorData::Bytes(texts.iter().map(|t| t.as_bytes().to_vec()).collect()),
    )
    .expect("tensor");
    let out = instance.run(&[input], &["embedding".into(), "token_count".into()]).expect("run");
    let TensorData::Fp32(v) = &out[0].data else { panic!("not fp32") };
    v.chunks(384).map(<[f32]>::to_vec).collect()
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * y).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y.powi(2)).sum::<f64>().sqrt();
    dot / na / nb
}

#[test]
fn embeddings_match_sentence_transformers_in_any_grouping() {
    let Some(dir) = shared() else { return };
    kiln_backend_ort::runtime::ensure(None).expect("ONNX Runtime (run scripts/setup-venv.sh)");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference_embeddings.json")).expect("read"))
            .expect("json");
    let sentences: Vec<String> = serde_json::from_value(reference["sentences"].clone()).expect("sentences");
    let want: Vec<Vec<f64>> = serde_json::from_value(reference["embeddings"].clone()).expect("embeddings");
    // A small token budget forces many sub-batches; a large one few.
    for budget in [300, 100_000] {
        let settings = TextSettings { max_batch_tokens: budget, ..TextSettings::default() };
        let model = TextModel::load(&dir.join("model.onnx"), &dir.join("tokenizer.json"), settings).expect("load");
        assert_eq!(model.signature().outputs[0].shape, vec![-1, 384]);
        let got = embed(&model, &sentences);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let c = cosine(g, w);
            assert!(c >= 0.9999, "sentence {i} ({:?}): cosine {c}", sentences[i]);
        }
        let alone = embed(&model, &sentences[..1]);
        assert!(cosine(&alone[0], &got[0].iter().map(|&x| f64::from(x)).collect::<Vec<_>>()) > 0.999_999);
    }
    let model =
        TextModel::load(&dir.join("model.onnx"), &dir.join("tokenizer.json"), TextSettings::default()).expect("load");
    assert_eq!(model.token_ids("").expect("ids"), vec![101, 102]);
    assert_eq!(model.token_ids(&"word ".repeat(400)).expect("ids").len(), 256);
}

#[test]
fn bad_text_is_refused_clearly() {
    let Some(dir) = shared() else { return };
    kiln_backend_ort::runtime::ensure(None).expect("runtime");
    let settings = TextSettings { max_input_bytes: 10, ..TextSettings::default() };
    let model = TextModel::load(&dir.join("model.onnx"), &dir.join("tokenizer.json"), settings).expect("load");
    let mut instance = model.instantiate().expect("instance");
    let long = Tensor::new("text", vec![1], TensorData::Bytes(vec![vec![b'x'; 11]])).expect("tensor");
    let err = instance.run(&[long], &["embedding".into()]).expect_err("too long");
    assert!(err.to_string().contains("over the limit of 10 (max_input_bytes)"), "{err}");
    let bad = Tensor::new("text", vec![1], TensorData::Bytes(vec![vec![0xff]])).expect("tensor");
    let err = instance.run(&[bad], &["embedding".into()]).expect_err("not utf-8");
    assert!(err.to_string().contains("is not valid UTF-8"), "{err}");
    let err = TextModel::load(&dir.join("tokenizer.json"), &dir.join("tokenizer.json"), TextSettings::default())
        .err()
        .expect("not a model");
    assert!(err.to_string().contains("cannot load model"), "{err}");
}
