//! kiln-text: text models. It owns tokenization (Hugging Face `tokenizers`, from a model's
//! `tokenizer.json`, with kiln's own truncation and padding instead of whatever the file has
//! baked in), running a transformer encoder on ONNX Runtime, and pooling its token states into
//! one normalized vector per text.
//!
//! A [`TextEmbedder`] is a [`ModelInstance`]: `text` BYTES `[n]` in, `embedding` FP32
//! `[n, dim]` and `token_count` INT64 `[n]` out. It runs on the model's worker threads, so
//! tokenization never touches the async executor. Within a (dynamically batched) call, texts
//! are sorted by length and cut into sub-batches bounded by a token budget and by padding
//! waste, so one long text does not pad thirty short ones.
//!
//! It knows nothing of repositories or protocols.

use std::path::Path;

pub mod hf;
mod rerank;

pub use rerank::{DOCUMENT_INPUT, QUERY_INPUT, RerankModel, Reranker, SCORE_OUTPUT};

use kiln_backend_ort::{PreparedModel, SessionOptions};
use kiln_core::{
    BackendError, DataType, ModelInstance, ModelSignature, Tensor, TensorData, TensorDataRef, TensorSpec, TensorView,
};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// The name of the text input and of the outputs.
pub const TEXT_INPUT: &str = "text";
pub const EMBEDDING_OUTPUT: &str = "embedding";
pub const TOKEN_COUNT_OUTPUT: &str = "token_count";

/// How token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean over the real (unpadded) tokens — sentence-transformers' default.
    Mean,
    /// The first token's state ([CLS]).
    Cls,
}

/// Settings of a text embedding model.
#[derive(Debug, Clone, PartialEq)]
pub struct TextSettings {
    pub pooling: Pooling,
    /// L2-normalize each embedding.
    pub normalize: bool,
    /// Tokens per text, special tokens included; longer texts are truncated.
    pub max_length: usize,
    /// Tokens (padding included) per encoder run.
    pub max_batch_tokens: usize,
    /// Longest text accepted, in UTF-8 bytes.
    pub max_input_bytes: usize,
    pub intra_threads: usize,
}

impl Default for TextSettings {
    fn default() -> Self {
        TextSettings {
            pooling: Pooling::Mean,
            normalize: true,
            max_length: 256,
            max_batch_tokens: 16_384,
            max_input_bytes: 64 * 1024,
            intra_threads: 1,
        }
    }
}

/// Loads and configures a tokenizer: kiln's truncation, no padding (kiln pads per batch).
pub fn load_tokenizer(path: &Path, max_length: usize) -> Result<Tokenizer, BackendError> {
    let mut tokenizer = Tokenizer::from_file(path)
        .map_err(|e| BackendError::Load(format!("cannot read tokenizer {}: {e}", path.display())))?;
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            direction: TruncationDirection::Right,
            stride: 0,
        }))
        .map_err(|e| BackendError::Load(format!("tokenizer truncation: {e}")))?;
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

/// Cuts texts sorted by token count (shortest first) into runs: a cut where the token budget
/// (padding included) or the padding waste (the longest text more than 1.5x the shortest of a
/// run) says so. Returns `[start, end)` ranges.
pub(crate) fn length_groups(sorted_lengths: &[usize], max_batch_tokens: usize) -> Vec<(usize, usize)> {
    let mut groups = Vec::new();
    let mut start = 0;
    while start < sorted_lengths.len() {
        let shortest = sorted_lengths[start].max(1);
        let mut end = start + 1;
        while end < sorted_lengths.len() {
            let longest = sorted_lengths[end];
            if longest * (end + 1 - start) > max_batch_tokens || longest * 2 > shortest * 3 + 8 {
                break;
            }
            end += 1;
        }
        groups.push((start, end));
        start = end;
    }
    groups
}

/// The texts of a BYTES input (any shape) and its shape: each valid UTF-8 and at most
/// `max_input_bytes`; errors name the input and the text.
pub(crate) fn text_input<'a>(
    inputs: &'a [TensorView<'a>],
    name: &str,
    max_input_bytes: usize,
) -> Result<(Vec<&'a str>, Vec<usize>), BackendError> {
    let input = inputs
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| BackendError::InvalidInput(format!("missing input '{name}'")))?;
    let TensorDataRef::Bytes(items) = input.data else {
        return Err(BackendError::InvalidInput(format!("input '{name}' must be BYTES")));
    };
    let texts = items
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if b.len() > max_input_bytes {
                return Err(BackendError::InvalidInput(format!(
                    "input '{name}': text {i} is {} bytes, over the limit of {max_input_bytes} (max_input_bytes)",
                    b.len()
                )));
            }
            std::str::from_utf8(b)
                .map_err(|e| BackendError::InvalidInput(format!("input '{name}': text {i} is not valid UTF-8 ({e})")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((texts, input.shape.clone()))
}

/// Runs an encoder on rows of (token ids, type ids) padded to the longest (`input_ids`,
/// `attention_mask` and, when it takes them, `token_type_ids`); returns its first output and
/// the padded length.
pub(crate) fn run_padded(
    encoder: &mut dyn ModelInstance,
    output: &str,
    has_token_types: bool,
    rows: &[(&[u32], &[u32])],
) -> Result<(Vec<Tensor>, usize), BackendError> {
    let seq = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(1).max(1);
    let n = rows.len();
    let mut ids = vec![0i64; n * seq];
    let mut mask = vec![0i64; n * seq];
    let mut types = vec![0i64; n * seq];
    for (row, (row_ids, row_types)) in rows.iter().enumerate() {
        for (t, (&id, &ty)) in row_ids.iter().zip(row_types.iter()).enumerate() {
            ids[row * seq + t] = i64::from(id);
            types[row * seq + t] = i64::from(ty);
            mask[row * seq + t] = 1;
        }
    }
    let shape = vec![n, seq];
    let mut views = vec![
        TensorView { name: "input_ids", shape: shape.clone(), data: TensorDataRef::Int64(&ids) },
        TensorView { name: "attention_mask", shape: shape.clone(), data: TensorDataRef::Int64(&mask) },
    ];
    if has_token_types {
        views.push(TensorView { name: "token_type_ids", shape, data: TensorDataRef::Int64(&types) });
    }
    Ok((encoder.run_views(&views, &[output.to_string()])?, seq))
}

/// A loaded text embedding model: the tokenizer and the prepared encoder, from which
/// instances are made.
pub struct TextModel {
    tokenizer: Tokenizer,
    encoder: PreparedModel,
    settings: TextSettings,
    dim: usize,
    /// The encoder's inputs that kiln feeds.
    has_token_types: bool,
}

impl TextModel {
    /// Loads an encoder with inputs `input_ids`, `attention_mask` (and optionally
    /// `token_type_ids`), int64 `[batch, seq]`, whose first output is `[batch, seq, dim]`.
    pub fn load(model: &Path, tokenizer: &Path, settings: TextSettings) -> Result<Self, BackendError> {
        let bytes =
            std::fs::read(model).map_err(|e| BackendError::Load(format!("cannot read {}: {e}", model.display())))?;
        Self::from_encoder(bytes, tokenizer, settings)
    }

    /// [`TextModel::load`] from the encoder's bytes (e.g. built by [`hf::HfModel`]).
    pub fn from_encoder(bytes: Vec<u8>, tokenizer: &Path, settings: TextSettings) -> Result<Self, BackendError> {
        let encoder = PreparedModel::new(bytes, SessionOptions { intra_threads: settings.intra_threads })?;
        let names: Vec<&str> = encoder.signature.inputs.iter().map(|s| s.name.as_str()).collect();
        for needed in ["input_ids", "attention_mask"] {
            if !names.contains(&needed) {
                return Err(BackendError::Load(format!(
                    "the encoder has inputs {names:?}; a text model needs '{needed}'"
                )));
            }
        }
        if let Some(other) = names.iter().find(|n| !["input_ids", "attention_mask", "token_type_ids"].contains(n)) {
            return Err(BackendError::Load(format!("the encoder has an input '{other}' kiln cannot fill")));
        }
        let output =
            encoder.signature.outputs.first().ok_or_else(|| BackendError::Load("the encoder has no outputs".into()))?;
        let dim = match output.shape.as_slice() {
            [_, _, d] if *d > 0 => *d as usize,
            other => {
                return Err(BackendError::Load(format!(
                    "the encoder's first output '{}' has shape {other:?}; expected [batch, seq, dim]",
                    output.name
                )));
            }
        };
        let has_token_types = names.contains(&"token_type_ids");
        let tokenizer = load_tokenizer(tokenizer, settings.max_length)?;
        Ok(TextModel { tokenizer, encoder, settings, dim, has_token_types })
    }

    /// What the text model declares to clients.
    pub fn signature(&self) -> ModelSignature {
        ModelSignature {
            inputs: vec![TensorSpec { name: TEXT_INPUT.into(), datatype: DataType::Bytes, shape: vec![-1] }],
            outputs: vec![
                TensorSpec {
                    name: EMBEDDING_OUTPUT.into(),
                    datatype: DataType::Fp32,
                    shape: vec![-1, self.dim as i64],
                },
                TensorSpec { name: TOKEN_COUNT_OUTPUT.into(), datatype: DataType::Int64, shape: vec![-1] },
            ],
        }
    }

    /// One more independent instance (its own ONNX Runtime session).
    pub fn instantiate(&self) -> Result<TextEmbedder, BackendError> {
        Ok(TextEmbedder {
            tokenizer: self.tokenizer.clone(),
            encoder: Box::new(self.encoder.instantiate()?),
            encoder_output: self.encoder.signature.outputs[0].name.clone(),
            settings: self.settings.clone(),
            dim: self.dim,
            has_token_types: self.has_token_types,
        })
    }

    /// Token ids of one text, as the model sees them (for tests and debugging).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, BackendError> {
        let encoding =
            self.tokenizer.encode(text, true).map_err(|e| BackendError::Run(format!("tokenization: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }
}

/// One text-embedding instance.
pub struct TextEmbedder {
    tokenizer: Tokenizer,
    encoder: Box<dyn ModelInstance>,
    encoder_output: String,
    settings: TextSettings,
    dim: usize,
    has_token_types: bool,
}

struct Encoded {
    ids: Vec<u32>,
    types: Vec<u32>,
}

impl TextEmbedder {
    /// Runs one padded sub-batch and pools it into `out` (rows in `order`).
    fn run_group(&mut self, group: &[(usize, &Encoded)], out: &mut [f32]) -> Result<(), BackendError> {
        let rows: Vec<(&[u32], &[u32])> = group.iter().map(|(_, e)| (&e.ids[..], &e.types[..])).collect();
        let (result, seq) = run_padded(&mut *self.encoder, &self.encoder_output, self.has_token_types, &rows)?;
        let n = group.len();
        let states = match result.first().map(|t| &t.data) {
            Some(TensorData::Fp32(v)) if v.len() == n * seq * self.dim => v,
            _ => return Err(BackendError::Run("the encoder's output is not FP32 [batch, seq, dim]".into())),
        };
        for (row, (index, e)) in group.iter().enumerate() {
            let target = &mut out[index * self.dim..(index + 1) * self.dim];
            let tokens = e.ids.len().max(1);
            match self.settings.pooling {
                Pooling::Cls => target.copy_from_slice(&states[row * seq * self.dim..row * seq * self.dim + self.dim]),
                Pooling::Mean => {
                    target.fill(0.0);
                    for t in 0..e.ids.len() {
                        let start = (row * seq + t) * self.dim;
                        for (acc, v) in target.iter_mut().zip(&states[start..start + self.dim]) {
                            *acc += v;
                        }
                    }
                    target.iter_mut().for_each(|x| *x /= tokens as f32);
                }
            }
            if self.settings.normalize {
                let norm = target.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                target.iter_mut().for_each(|x| *x /= norm);
            }
        }
        Ok(())
    }
}

impl ModelInstance for TextEmbedder {
    fn run(&mut self, inputs: &[Tensor], outputs: &[String]) -> Result<Vec<Tensor>, BackendError> {
        let views: Vec<TensorView<'_>> = inputs.iter().map(Tensor::view).collect();
        self.run_views(&views, outputs)
    }

    fn run_views(&mut self, inputs: &[TensorView<'_>], outputs: &[String]) -> Result<Vec<Tensor>, BackendError> {
        let (texts, _) = text_input(inputs, TEXT_INPUT, self.settings.max_input_bytes)?;
        let encodings = self
            .tokenizer
            .encode_batch(texts.clone(), true)
            .map_err(|e| BackendError::Run(format!("tokenization failed: {e}")))?;
        let encoded: Vec<Encoded> =
            encodings.iter().map(|e| Encoded { ids: e.get_ids().to_vec(), types: e.get_type_ids().to_vec() }).collect();
        let mut embeddings = vec![0f32; texts.len() * self.dim];
        let mut order: Vec<(usize, &Encoded)> = encoded.iter().enumerate().collect();
        order.sort_by_key(|(_, e)| e.ids.len());
        let lengths: Vec<usize> = order.iter().map(|(_, e)| e.ids.len()).collect();
        for (start, end) in length_groups(&lengths, self.settings.max_batch_tokens) {
            self.run_group(&order[start..end], &mut embeddings)?;
        }
        let counts: Vec<i64> = encoded.iter().map(|e| e.ids.len() as i64).collect();
        outputs
            .iter()
            .map(|name| match name.as_str() {
                EMBEDDING_OUTPUT => {
                    Tensor::new(name.clone(), vec![texts.len(), self.dim], TensorData::Fp32(embeddings.clone()))
                        .map_err(BackendError::from)
                }
                TOKEN_COUNT_OUTPUT => Tensor::new(name.clone(), vec![texts.len()], TensorData::Int64(counts.clone()))
                    .map_err(BackendError::from),
                other => Err(BackendError::Run(format!("a text model has no output '{other}'"))),
            })
            .collect()
    }
}
