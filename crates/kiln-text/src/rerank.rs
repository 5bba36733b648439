//! Cross-encoders (rerankers): a query and a document tokenized as one pair, one relevance
//! logit out. A [`Reranker`] is a [`ModelInstance`]: `query` BYTES `[n]` and `document` BYTES
//! `[n, k]` in (query i is paired with each of row i's k documents), `score` FP32 `[n, k]` (the
//! raw logit) and `token_count` INT64 `[n, k]` out, so it batches, logs and serves like any
//! other model — and takes a search's `[n, k]` passages in a pipeline as they are. An empty
//! document (a search's padding, when it found fewer than k) scores -inf and is not run.

use std::path::Path;

use kiln_backend_ort::{PreparedModel, SessionOptions};
use kiln_core::{BackendError, DataType, ModelInstance, ModelSignature, Tensor, TensorData, TensorSpec, TensorView};
use tokenizers::{EncodeInput, Tokenizer};

use crate::{TOKEN_COUNT_OUTPUT, TextSettings, length_groups, load_tokenizer, run_padded, text_input};

pub const QUERY_INPUT: &str = "query";
pub const DOCUMENT_INPUT: &str = "document";
pub const SCORE_OUTPUT: &str = "score";

/// A loaded cross-encoder, from which instances are made.
pub struct RerankModel {
    tokenizer: Tokenizer,
    encoder: PreparedModel,
    settings: TextSettings,
    has_token_types: bool,
}

impl RerankModel {
    /// A classifier encoder (inputs `input_ids`, `attention_mask`[, `token_type_ids`]; first
    /// output `[batch, 1]` logits) and its tokenizer.
    pub fn from_encoder(bytes: Vec<u8>, tokenizer: &Path, settings: TextSettings) -> Result<Self, BackendError> {
        let encoder = PreparedModel::new(bytes, SessionOptions { intra_threads: settings.intra_threads })?;
        let output =
            encoder.signature.outputs.first().ok_or_else(|| BackendError::Load("the encoder has no outputs".into()))?;
        if output.shape.len() != 2 || output.shape[1] != 1 {
            return Err(BackendError::Load(format!(
                "a reranker answers one relevance logit per pair; this classifier's output '{}' has shape {:?} \
                 (config.json id2label should have one label)",
                output.name, output.shape
            )));
        }
        let has_token_types = encoder.signature.inputs.iter().any(|s| s.name == "token_type_ids");
        let tokenizer = load_tokenizer(tokenizer, settings.max_length)?;
        Ok(RerankModel { tokenizer, encoder, settings, has_token_types })
    }

    pub fn signature(&self) -> ModelSignature {
        let spec = |name: &str, datatype, shape: Vec<i64>| TensorSpec { name: name.into(), datatype, shape };
        ModelSignature {
            inputs: vec![
                spec(QUERY_INPUT, DataType::Bytes, vec![-1]),
                spec(DOCUMENT_INPUT, DataType::Bytes, vec![-1, -1]),
            ],
            outputs: vec![
                spec(SCORE_OUTPUT, DataType::Fp32, vec![-1, -1]),
                spec(TOKEN_COUNT_OUTPUT, DataType::Int64, vec![-1, -1]),
            ],
        }
    }

    pub fn instantiate(&self) -> Result<Reranker, BackendError> {
        Ok(Reranker {
            tokenizer: self.tokenizer.clone(),
            encoder: Box::new(self.encoder.instantiate()?),
            encoder_output: self.encoder.signature.outputs[0].name.clone(),
            settings: self.settings.clone(),
            has_token_types: self.has_token_types,
        })
    }
}

/// One cross-encoder instance.
pub struct Reranker {
    tokenizer: Tokenizer,
    encoder: Box<dyn ModelInstance>,
    encoder_output: String,
    settings: TextSettings,
    has_token_types: bool,
}

impl ModelInstance for Reranker {
    fn run(&mut self, inputs: &[Tensor], outputs: &[String]) -> Result<Vec<Tensor>, BackendError> {
        let views: Vec<TensorView<'_>> = inputs.iter().map(Tensor::view).collect();
        self.run_views(&views, outputs)
    }

    fn run_views(&mut self, inputs: &[TensorView<'_>], outputs: &[String]) -> Result<Vec<Tensor>, BackendError> {
        let (queries, query_shape) = text_input(inputs, QUERY_INPUT, self.settings.max_input_bytes)?;
        let (documents, shape) = text_input(inputs, DOCUMENT_INPUT, self.settings.max_input_bytes)?;
        let per_query = match (query_shape.as_slice(), shape.as_slice()) {
            ([n], [m, k]) if n == m => *k,
            _ => {
                return Err(BackendError::InvalidInput(format!(
                    "input '{QUERY_INPUT}' must be [n] and '{DOCUMENT_INPUT}' [n, k] (each query's documents), not \
                     {query_shape:?} and {shape:?}"
                )));
            }
        };
        // Pairs to run: every non-empty document with its row's query.
        let live: Vec<usize> = (0..documents.len()).filter(|&i| !documents[i].is_empty()).collect();
        let pairs: Vec<EncodeInput<'_>> = live.iter().map(|&i| (queries[i / per_query], documents[i]).into()).collect();
        let encodings = self
            .tokenizer
            .encode_batch(pairs, true)
            .map_err(|e| BackendError::Run(format!("tokenization failed: {e}")))?;
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let lengths: Vec<usize> = order.iter().map(|&i| encodings[i].get_ids().len()).collect();
        let mut scores = vec![0f32; encodings.len()];
        let total = documents.len();
        for (start, end) in length_groups(&lengths, self.settings.max_batch_tokens) {
            let group = &order[start..end];
            let rows: Vec<(&[u32], &[u32])> =
                group.iter().map(|&i| (encodings[i].get_ids(), encodings[i].get_type_ids())).collect();
            let (result, _) = run_padded(&mut *self.encoder, &self.encoder_output, self.has_token_types, &rows)?;
            let n = group.len();
            let logits = match result.first().map(|t| &t.data) {
                Some(TensorData::Fp32(v)) if v.len() == n => v,
                _ => return Err(BackendError::Run("the classifier's output is not FP32 [batch, 1]".into())),
            };
            for (row, &i) in group.iter().enumerate() {
                scores[i] = logits[row];
            }
        }
        let mut all_scores = vec![f32::NEG_INFINITY; total];
        let mut counts = vec![0i64; total];
        for (j, &i) in live.iter().enumerate() {
            all_scores[i] = scores[j];
            counts[i] = encodings[j].get_ids().len() as i64;
        }
        outputs
            .iter()
            .map(|name| match name.as_str() {
                SCORE_OUTPUT => Tensor::new(name.clone(), shape.clone(), TensorData::Fp32(all_scores.clone()))
                    .map_err(BackendError::from),
                TOKEN_COUNT_OUTPUT => Tensor::new(name.clone(), shape.clone(), TensorData::Int64(counts.clone()))
                    .map_err(BackendError::from),
                other => Err(BackendError::Run(format!("a reranker has no output '{other}'"))),
            })
            .collect()
    }
}
