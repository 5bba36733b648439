//! Hugging Face model folders served as they are: `config.json` + `model.safetensors` +
//! `tokenizer.json` (and, for sentence-transformers, `modules.json`, `1_Pooling/config.json`,
//! `sentence_bert_config.json`).
//!
//! The encoder is rebuilt as an ONNX graph in memory from config.json and the safetensors
//! weights ([`kiln_backend_ort::onnx_build`]) and runs on the same ONNX Runtime as exported
//! models: no torch export, and no second inference engine to compile and keep in step. The
//! graph is BERT's (BERT, MiniLM, RoBERTa, XLM-RoBERTa, MPNet, DistilBERT: they differ in weight names, the
//! position offset, token types and MPNet's relative position bias), with an optional
//! sequence-classification head for cross-encoders (rerankers).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_core::BackendError;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::Pooling;

mod graph;
use graph::{build_graph, position_offset};

/// The weights file of a Hugging Face folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The model description of a Hugging Face folder.
pub const CONFIG_FILE: &str = "config.json";

/// Whether `dir` looks like a Hugging Face model folder.
pub fn is_hf_folder(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file() && dir.join(WEIGHTS_FILE).is_file()
}

/// What the folder's head computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// Token states `[batch, seq, hidden]` (embeddings are pooled from them).
    Encoder,
    /// One logit per label `[batch, labels]` (a cross-encoder / classifier).
    Classifier { labels: Vec<String> },
}

/// A Hugging Face folder turned into an ONNX encoder, with the settings the folder states.
pub struct HfModel {
    /// The ONNX model's bytes.
    pub onnx: Vec<u8>,
    pub tokenizer: PathBuf,
    pub head: Head,
    /// `architectures[0]` of config.json (or the model type).
    pub architecture: String,
    /// From `1_Pooling/config.json` (sentence-transformers); `None` when the folder says nothing.
    pub pooling: Option<Pooling>,
    /// Whether `modules.json` ends in a Normalize module; `None` without modules.json.
    pub normalize: Option<bool>,
    /// `sentence_bert_config.json`'s `max_seq_length`, else what the position table allows.
    pub max_length: usize,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_types() -> usize {
    2
}

#[derive(Debug, Deserialize)]
struct EncoderConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: String,
    // DistilBERT names them dim, n_heads, n_layers, hidden_dim and activation.
    #[serde(alias = "dim")]
    hidden_size: usize,
    #[serde(alias = "n_heads")]
    num_attention_heads: usize,
    #[serde(alias = "n_layers")]
    num_hidden_layers: usize,
    #[serde(alias = "hidden_dim")]
    intermediate_size: usize,
    #[serde(default = "default_act", alias = "activation")]
    hidden_act: String,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    max_position_embeddings: usize,
    #[serde(default = "default_types")]
    type_vocab_size: usize,
    pad_token_id: Option<i64>,
    position_embedding_type: Option<String>,
    id2label: Option<BTreeMap<String, String>>,
    relative_attention_num_buckets: Option<usize>,
}

/// The architectures kiln builds, by family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Bert,
    Roberta,
    /// MPNet: RoBERTa's embeddings (no token types), T5-style relative position buckets added to
    /// every layer's attention scores.
    Mpnet,
    /// DistilBERT: BERT's blocks under other names, no token types, a ReLU classification head.
    Distilbert,
}

const ENCODERS: &[(&str, Family, bool)] = &[
    ("BertModel", Family::Bert, false),
    ("BertForMaskedLM", Family::Bert, false),
    ("BertForSequenceClassification", Family::Bert, true),
    ("RobertaModel", Family::Roberta, false),
    ("RobertaForMaskedLM", Family::Roberta, false),
    ("RobertaForSequenceClassification", Family::Roberta, true),
    ("XLMRobertaModel", Family::Roberta, false),
    ("XLMRobertaForMaskedLM", Family::Roberta, false),
    ("XLMRobertaForSequenceClassification", Family::Roberta, true),
    ("MPNetModel", Family::Mpnet, false),
    ("MPNetForMaskedLM", Family::Mpnet, false),
    ("DistilBertModel", Family::Distilbert, false),
    ("DistilBertForMaskedLM", Family::Distilbert, false),
    ("DistilBertForSequenceClassification", Family::Distilbert, true),
];

fn load_error(dir: &Path, message: impl std::fmt::Display) -> BackendError {
    BackendError::Load(format!("{}: {message}", dir.display()))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, BackendError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).map(Some).map_err(|e| BackendError::Load(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(BackendError::Load(format!("cannot read {}: {e}", path.display()))),
    }
}

#[derive(Deserialize)]
struct Module {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

/// Reads sentence-transformers' description of the pipeline: pooling and normalization.
fn sentence_transformers(dir: &Path) -> Result<(Option<Pooling>, Option<bool>), BackendError> {
    let Some(modules) = read_json::<Vec<Module>>(&dir.join("modules.json"))? else {
        return Ok((None, None));
    };
    let normalize = modules.iter().any(|m| m.kind.ends_with(".Normalize"));
    let pooling_path = modules.iter().find(|m| m.kind.ends_with(".Pooling")).map(|m| dir.join(&m.path));
    let pooling = match pooling_path {
        None => None,
        Some(path) => {
            let file = path.join("config.json");
            let config: PoolingConfig = read_json(&file)?.ok_or_else(|| {
                BackendError::Load(format!("modules.json names a Pooling module but {} is missing", file.display()))
            })?;
            match (
                config.pooling_mode_cls_token,
                config.pooling_mode_mean_tokens,
                config.pooling_mode_max_tokens,
                config.pooling_mode_mean_sqrt_len_tokens,
            ) {
                (true, false, false, false) => Some(Pooling::Cls),
                (false, true, false, false) => Some(Pooling::Mean),
                _ => {
                    return Err(BackendError::Load(format!(
                        "{}: kiln pools by pooling_mode_mean_tokens or pooling_mode_cls_token (exactly one); \
                         max, mean_sqrt_len and combined modes are not supported",
                        file.display()
                    )));
                }
            }
        }
    };
    Ok((pooling, Some(normalize)))
}

/// The weights, read once, converted to FP32 on access and checked against config.json.
struct Weights<'a> {
    tensors: &'a SafeTensors<'a>,
    prefix: String,
    dir: &'a Path,
}

impl Weights<'_> {
    fn has(&self, name: &str) -> bool {
        self.tensors.tensor(&format!("{}{name}", self.prefix)).is_ok()
    }

    /// A tensor by its name under the model prefix, of exactly `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, BackendError> {
        let full = format!("{}{name}", self.prefix);
        let view = self.tensors.tensor(&full).map_err(|_| {
            load_error(
                self.dir,
                format!("{WEIGHTS_FILE} has no tensor '{full}', which config.json's architecture needs"),
            )
        })?;
        if view.shape() != shape {
            return Err(load_error(
                self.dir,
                format!(
                    "{WEIGHTS_FILE}: tensor '{full}' has shape {:?}, but config.json implies {shape:?}",
                    view.shape()
                ),
            ));
        }
        let data = view.data();
        Ok(match view.dtype() {
            Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => {
                return Err(load_error(
                    self.dir,
                    format!("{WEIGHTS_FILE}: tensor '{full}' is {other:?}; kiln reads F32, F16 and BF16 weights"),
                ));
            }
        })
    }

    /// A LayerNorm's scale and shift (`weight`/`bias`, or the older `gamma`/`beta`).
    fn layer_norm(&self, name: &str, hidden: usize) -> Result<(Vec<f32>, Vec<f32>), BackendError> {
        if self.has(&format!("{name}.gamma")) {
            Ok((self.get(&format!("{name}.gamma"), &[hidden])?, self.get(&format!("{name}.beta"), &[hidden])?))
        } else {
            Ok((self.get(&format!("{name}.weight"), &[hidden])?, self.get(&format!("{name}.bias"), &[hidden])?))
        }
    }

    /// A linear layer's weight `[out, in]` transposed to `[in, out]` (for MatMul) and its bias.
    fn linear(&self, name: &str, inputs: usize, outputs: usize) -> Result<(Vec<f32>, Vec<f32>), BackendError> {
        let w = self.get(&format!("{name}.weight"), &[outputs, inputs])?;
        let b = self.get(&format!("{name}.bias"), &[outputs])?;
        Ok((transpose(&w, outputs, inputs), b))
    }
}

fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

impl HfModel {
    /// Reads a Hugging Face folder and builds its ONNX encoder.
    pub fn read(dir: &Path) -> Result<HfModel, BackendError> {
        let config: EncoderConfig =
            read_json(&dir.join(CONFIG_FILE))?.ok_or_else(|| load_error(dir, format!("no {CONFIG_FILE}")))?;
        let architecture = config.architectures.first().cloned().unwrap_or_else(|| config.model_type.clone());
        let (family, classifier) = ENCODERS
            .iter()
            .find(|(name, _, _)| *name == architecture)
            .map(|(_, f, c)| (*f, *c))
            .or(match config.model_type.as_str() {
                "bert" if config.architectures.is_empty() => Some((Family::Bert, false)),
                "roberta" | "xlm-roberta" if config.architectures.is_empty() => Some((Family::Roberta, false)),
                "mpnet" if config.architectures.is_empty() => Some((Family::Mpnet, false)),
                "distilbert" if config.architectures.is_empty() => Some((Family::Distilbert, false)),
                _ => None,
            })
            .ok_or_else(|| {
                load_error(
                    dir,
                    format!(
                        "config.json architectures {:?} (model_type '{}') is not supported; kiln builds {}",
                        config.architectures,
                        config.model_type,
                        ENCODERS.iter().map(|(n, _, _)| *n).collect::<Vec<_>>().join(", ")
                    ),
                )
            })?;
        if let Some(kind) = config.position_embedding_type.as_deref().filter(|k| *k != "absolute") {
            return Err(load_error(
                dir,
                format!("config.json position_embedding_type '{kind}' is not supported (absolute only)"),
            ));
        }
        if config.num_attention_heads == 0 || !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            return Err(load_error(
                dir,
                format!(
                    "config.json: hidden_size {} is not a multiple of num_attention_heads {}",
                    config.hidden_size, config.num_attention_heads
                ),
            ));
        }
        let tokenizer = dir.join("tokenizer.json");
        if !tokenizer.is_file() {
            return Err(load_error(
                dir,
                "no tokenizer.json (kiln reads the fast tokenizer's file, as Hugging Face saves it)",
            ));
        }
        let file = dir.join(WEIGHTS_FILE);
        let bytes =
            std::fs::read(&file).map_err(|e| BackendError::Load(format!("cannot read {}: {e}", file.display())))?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| load_error(dir, format!("{WEIGHTS_FILE}: {e}")))?;
        let prefix = tensors
            .names()
            .into_iter()
            .find_map(|n| n.strip_suffix("embeddings.word_embeddings.weight").map(str::to_string))
            .ok_or_else(|| load_error(dir, format!("{WEIGHTS_FILE} has no '*embeddings.word_embeddings.weight'")))?;
        let weights = Weights { tensors: &tensors, prefix, dir };
        let labels = if classifier {
            let labels: Vec<String> = match &config.id2label {
                Some(map) => {
                    let mut pairs: Vec<(usize, String)> =
                        map.iter().filter_map(|(k, v)| k.parse().ok().map(|i| (i, v.clone()))).collect();
                    pairs.sort();
                    pairs.into_iter().map(|(_, v)| v).collect()
                }
                None => vec!["LABEL_0".into()],
            };
            Some(labels)
        } else {
            None
        };
        let onnx = build_graph(&config, family, labels.as_ref().map(Vec::len), &weights)?;
        let (pooling, normalize) = sentence_transformers(dir)?;
        #[derive(Deserialize)]
        struct SentenceBert {
            max_seq_length: Option<usize>,
        }
        let offset = position_offset(&config, family);
        let positions = config.max_position_embeddings.saturating_sub(offset as usize);
        let max_length = read_json::<SentenceBert>(&dir.join("sentence_bert_config.json"))?
            .and_then(|s| s.max_seq_length)
            .unwrap_or(positions)
            .min(positions);
        let head = match labels {
            Some(labels) => Head::Classifier { labels },
            None => Head::Encoder,
        };
        Ok(HfModel { onnx, tokenizer, head, architecture, pooling, normalize, max_length })
    }
}
