//! A collection served over KServe v2, so tritonclient, gRPC and pipeline steps search it like
//! any model: `query` FP32 [N, dim] — or `text` BYTES [N] when the collection has an embedder
//! or a keyword index — with optional `k` INT32/INT64 [1], `filter` BYTES [1] (a JSON filter
//! object) and `weights` FP32 [2] (keyword, vector weights of a hybrid search), answering
//! `ids` BYTES [N, k], `scores` FP32 [N, k] and `payloads` BYTES [N, k] (JSON text). Rows with
//! fewer than k matches are padded with id "", score NaN and payload "null".

use std::sync::Arc;

use kiln_core::{DataType, ModelSignature, Tensor, TensorData, TensorSpec};

use kiln_collection::{Collection, CollectionError, Filter, Weights};
use kiln_serving::EngineError;
use kiln_serving::metrics::Protocol;
use kiln_serving::{InferRequest, ModelResolver, ServedModel};

/// Rows one v2 request may search for.
pub const MAX_ROWS: usize = 1024;

/// What a collection declares: its query input(s) and the three outputs.
pub fn signature(collection: &Collection) -> ModelSignature {
    let spec = |name: &str, datatype, shape: Vec<i64>| TensorSpec { name: name.into(), datatype, shape };
    let mut inputs = vec![spec("query", DataType::Fp32, vec![-1, collection.config.dim as i64])];
    if collection.config.embedder.is_some() || collection.has_keywords() {
        inputs.push(spec("text", DataType::Bytes, vec![-1]));
    }
    ModelSignature {
        inputs,
        outputs: vec![
            spec("ids", DataType::Bytes, vec![-1, -1]),
            spec("scores", DataType::Fp32, vec![-1, -1]),
            spec("payloads", DataType::Bytes, vec![-1, -1]),
        ],
    }
}

fn invalid(e: CollectionError) -> EngineError {
    match e {
        CollectionError::Invalid(m) => EngineError::InvalidRequest(m),
        CollectionError::Loading(_) => EngineError::NotReady(e.to_string()),
        CollectionError::Index(m) => EngineError::Backend(m),
        CollectionError::Timeout(_) => EngineError::Timeout(e.to_string()),
    }
}

/// Embeds texts with the collection's embedder (a `text_embedding` model resolved now, so a
/// reload of it applies).
pub async fn embed(
    collection: &Collection,
    resolver: &dyn ModelResolver,
    texts: Vec<Vec<u8>>,
    protocol: Protocol,
    deadline: Option<std::time::Instant>,
    span: Option<&kiln_serving::Span>,
) -> Result<Vec<Vec<f32>>, EngineError> {
    let Some(name) = &collection.config.embedder else {
        return Err(EngineError::InvalidRequest(format!(
            "collection '{}' has no embedder ([index] embedder): send vectors",
            collection.name
        )));
    };
    let model = resolver.resolve(name, None)?;
    let rows = texts.len();
    let input = Tensor::new("text", vec![rows], TensorData::Bytes(texts))
        .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
    let request = InferRequest {
        inputs: vec![input],
        outputs: vec![kiln_text::EMBEDDING_OUTPUT.to_string()],
        // The embedding is part of the search: it gets what is left of the search's deadline.
        timeout: deadline.map(|d| d.saturating_duration_since(std::time::Instant::now())),
        protocol,
        trace: false,
        span: span.cloned(),
    };
    // Boxed: a collection's infer awaits another model's infer (the future type would recurse).
    let answer = Box::pin(model.infer(request)).await?;
    vectors_of(collection, name, answer.outputs.into_iter().next(), rows)
}

/// The same, on the calling thread (loading a folder's points file at start).
pub fn embed_blocking(
    collection: &Collection,
    model: &kiln_serving::ModelHandle,
    texts: &[String],
) -> Result<Vec<Vec<f32>>, String> {
    let name = collection.config.embedder.clone().unwrap_or_default();
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(256) {
        let rows = chunk.len();
        let bytes = chunk.iter().map(|t| t.as_bytes().to_vec()).collect();
        let input = Tensor::new("text", vec![rows], TensorData::Bytes(bytes)).map_err(|e| e.to_string())?;
        let request = InferRequest {
            inputs: vec![input],
            outputs: vec![kiln_text::EMBEDDING_OUTPUT.to_string()],
            timeout: None,
            protocol: Protocol::InProcess,
            trace: false,
            span: None,
        };
        let answer = model.infer_blocking(request).map_err(|e| e.to_string())?;
        out.extend(vectors_of(collection, &name, answer.outputs.into_iter().next(), rows).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

fn vectors_of(
    collection: &Collection,
    embedder: &str,
    output: Option<Tensor>,
    rows: usize,
) -> Result<Vec<Vec<f32>>, EngineError> {
    let Some(Tensor { data: TensorData::Fp32(values), shape, .. }) = output else {
        return Err(EngineError::Backend(format!("embedder '{embedder}' answered no FP32 embedding")));
    };
    let dim = collection.config.dim;
    if shape != [rows, dim] {
        return Err(EngineError::InvalidRequest(format!(
            "embedder '{embedder}' makes vectors of shape {shape:?}; collection '{}' has dim {dim}",
            collection.name
        )));
    }
    Ok(values.chunks(dim).map(<[f32]>::to_vec).collect())
}

/// Answers one v2 request; a graph search waits for a search context until `deadline` at most
/// (the caller bounds the whole call by the same deadline).
pub async fn run(
    collection: &Arc<Collection>,
    resolver: &dyn ModelResolver,
    request: InferRequest,
    deadline: Option<std::time::Instant>,
) -> Result<Vec<Tensor>, EngineError> {
    let mut query = None;
    let mut text = None;
    let mut k = collection.config.default_k();
    let mut filter = None;
    let mut weights = Weights::default();
    for input in request.inputs {
        match (input.name.as_str(), input.data) {
            ("query", TensorData::Fp32(values)) => query = Some((input.shape, values)),
            ("text", TensorData::Bytes(values)) => text = Some((input.shape, values)),
            ("k", TensorData::Int64(v)) if v.len() == 1 => k = usize::try_from(v[0]).unwrap_or(0),
            ("k", TensorData::Int32(v)) if v.len() == 1 => k = usize::try_from(v[0]).unwrap_or(0),
            ("filter", TensorData::Bytes(v)) if v.len() == 1 => {
                let value: serde_json::Value = serde_json::from_slice(&v[0])
                    .map_err(|e| EngineError::InvalidRequest(format!("input 'filter' is not JSON: {e}")))?;
                filter = Some(Filter::parse(&value).map_err(invalid)?);
            }
            ("weights", TensorData::Fp32(v)) if v.len() == 2 => weights = Weights { text: v[0], vector: v[1] },
            (name @ ("query" | "text" | "k" | "filter" | "weights"), data) => {
                let want = match name {
                    "query" => "FP32 [N, dim]",
                    "text" => "BYTES [N]",
                    "k" => "INT64 or INT32 [1]",
                    "weights" => "FP32 [2] (keyword weight, vector weight)",
                    _ => "BYTES [1] (a JSON filter object)",
                };
                return Err(EngineError::InvalidRequest(format!(
                    "input '{name}' must be {want}, not {} {:?}",
                    data.datatype(),
                    input.shape
                )));
            }
            (other, _) => {
                return Err(EngineError::InvalidRequest(format!(
                    "collection '{}' takes inputs 'query' and/or 'text', 'k', 'filter' and 'weights', not '{other}'",
                    collection.name
                )));
            }
        }
    }
    collection.check_k(k).map_err(invalid)?;
    weights.check().map_err(invalid)?;
    let keywords = collection.has_keywords() && weights.text > 0.0;
    let texts: Option<Vec<Vec<u8>>> = match text {
        None => None,
        Some((shape, _)) if shape.len() != 1 => {
            return Err(EngineError::InvalidRequest(format!("input 'text' has shape {shape:?}; it takes [N]")));
        }
        Some((_, texts)) => Some(texts),
    };
    let vectors: Option<Vec<Vec<f32>>> = match (query, &texts) {
        (Some((shape, values)), _) => {
            let dim = collection.config.dim;
            if shape.len() != 2 || shape[1] != dim {
                return Err(EngineError::InvalidRequest(format!(
                    "input 'query' has shape {shape:?}; collection '{}' takes [N, {dim}]",
                    collection.name
                )));
            }
            if texts.is_some() && !collection.has_keywords() {
                return Err(EngineError::InvalidRequest(format!(
                    "send 'query' or 'text', not both (collection '{}' has no keyword index: [index] text_field)",
                    collection.name
                )));
            }
            Some(values.chunks(dim).map(<[f32]>::to_vec).collect())
        }
        // Text is embedded unless the search is keywords only.
        (None, Some(texts)) if collection.config.embedder.is_some() && (!keywords || weights.vector > 0.0) => {
            Some(embed(collection, resolver, texts.clone(), request.protocol, deadline, request.span.as_ref()).await?)
        }
        (None, Some(_)) if keywords => None,
        (None, Some(_)) if !collection.has_keywords() => {
            return Err(EngineError::InvalidRequest(format!(
                "collection '{}' has no embedder ([index] embedder) and no keyword index ([index] text_field): \
                 send vectors",
                collection.name
            )));
        }
        (None, _) => {
            return Err(EngineError::InvalidRequest(format!(
                "collection '{}' needs input 'query' FP32 [N, {}]{}",
                collection.name,
                collection.config.dim,
                if collection.config.embedder.is_some() || collection.has_keywords() {
                    " or 'text' BYTES [N]"
                } else {
                    ""
                }
            )));
        }
    };
    let texts: Option<Vec<String>> = match texts.filter(|_| keywords) {
        None => None,
        Some(texts) => Some(
            texts
                .into_iter()
                .enumerate()
                .map(|(i, t)| {
                    String::from_utf8(t)
                        .map_err(|e| EngineError::InvalidRequest(format!("input 'text'[{i}] is not UTF-8: {e}")))
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let rows = vectors.as_ref().map_or(0, Vec::len).max(texts.as_ref().map_or(0, Vec::len));
    if let (Some(v), Some(t)) = (&vectors, &texts)
        && v.len() != t.len()
    {
        return Err(EngineError::InvalidRequest(format!(
            "inputs 'query' ({} rows) and 'text' ({} rows) must have the same number of rows",
            v.len(),
            t.len()
        )));
    }
    if rows == 0 || rows > MAX_ROWS {
        return Err(EngineError::InvalidRequest(format!("a search takes 1 to {MAX_ROWS} query rows, not {rows}")));
    }
    let mut span = request.span.as_ref().map(|s| {
        let mut span = s.child("search");
        span.set("kiln.collection", collection.name.as_str());
        span.set("kiln.search.rows", rows);
        span.set("kiln.search.k", k);
        span
    });
    let searched = Arc::clone(collection);
    let results = tokio::task::spawn_blocking(move || {
        let mut vectors = vectors.map(Vec::into_iter);
        let mut texts = texts.map(Vec::into_iter);
        (0..rows)
            .map(|row| {
                let vector = match vectors.as_mut().and_then(Iterator::next) {
                    Some(v) => Some(searched.prepare_vector(&format!("query row {row}"), v)?),
                    None => None,
                };
                let text = texts.as_mut().and_then(Iterator::next);
                searched.search_hybrid(vector.as_deref(), text.as_deref(), weights, k, filter.as_ref(), deadline)
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|_| EngineError::Backend("the search panicked".into()))?
    .map_err(invalid);
    if let (Some(span), Err(e)) = (span.as_mut(), &results) {
        span.fail(e);
    }
    drop(span);
    let results = results?;
    let mut ids = Vec::with_capacity(rows * k);
    let mut scores = Vec::with_capacity(rows * k);
    let mut payloads = Vec::with_capacity(rows * k);
    for hits in results {
        let found = hits.len();
        for hit in hits {
            ids.push(hit.id.into_bytes());
            scores.push(hit.score);
            payloads.push(hit.payload_text.map_or_else(|| b"null".to_vec(), |p| p.as_bytes().to_vec()));
        }
        for _ in found..k {
            ids.push(Vec::new());
            scores.push(f32::NAN);
            payloads.push(b"null".to_vec());
        }
    }
    let shape = vec![rows, k];
    let all = [
        ("ids", TensorData::Bytes(ids)),
        ("scores", TensorData::Fp32(scores)),
        ("payloads", TensorData::Bytes(payloads)),
    ];
    let wanted: Vec<&str> = if request.outputs.is_empty() {
        vec!["ids", "scores", "payloads"]
    } else {
        request.outputs.iter().map(String::as_str).collect()
    };
    let mut outputs = Vec::new();
    for name in wanted {
        let Some((_, data)) = all.iter().find(|(n, _)| *n == name) else {
            return Err(EngineError::InvalidRequest(format!(
                "collection '{}' has outputs 'ids', 'scores' and 'payloads', not '{name}'",
                collection.name
            )));
        };
        outputs.push(Tensor::new(name, shape.clone(), data.clone()).map_err(|e| EngineError::Backend(e.to_string()))?);
    }
    Ok(outputs)
}

/// A collection as the executor of a served version: searched in memory on tokio's blocking
/// pool; `resolver` finds its embedder at call time (so a reload of it applies).
struct CollectionExecutor {
    collection: Arc<Collection>,
    resolver: Arc<dyn ModelResolver>,
}

impl kiln_serving::Executor for CollectionExecutor {
    fn kind(&self) -> kiln_serving::ExecutorKind {
        kiln_serving::ExecutorKind::Collection
    }

    fn run<'a>(
        &'a self,
        model: &'a ServedModel,
        request: InferRequest,
    ) -> kiln_serving::BoxFuture<'a, Result<kiln_serving::InferResponse, EngineError>> {
        Box::pin(async move {
            // Its inputs are alternatives (`query` or `text`, optional `k`/`filter`): checked in
            // `run`. The request's deadline (or request_timeout_ms) bounds the embedding, the
            // wait for a search slot and the search.
            let limit = request.timeout.or(model.settings.request_timeout);
            let deadline = limit.map(|l| std::time::Instant::now() + l);
            let search = run(&self.collection, self.resolver.as_ref(), request, deadline);
            let outputs = match limit {
                Some(limit) => tokio::time::timeout(limit, search)
                    .await
                    .map_err(|_| kiln_serving::timeout_error(&model.name, model.version, limit))??,
                None => search.await?,
            };
            model.stats.record_execution(outputs.first().and_then(|t| t.shape.first()).copied().unwrap_or(0) as u64);
            Ok(model.response(outputs))
        })
    }

    fn dependencies(&self) -> Vec<(String, Option<String>)> {
        self.collection.config.embedder.iter().map(|e| (e.clone(), None)).collect()
    }

    fn refusal(&self, model: &ServedModel) -> Option<String> {
        (!self.collection.is_ready()).then(|| format!("collection '{}' is loading its points", model.name))
    }

    fn runs(&self) -> Option<&dyn std::any::Any> {
        Some(&self.collection)
    }
}

/// Serves a vector collection (version 1); REST upserts find the `Arc<Collection>` with
/// `ServedModel::runs`.
pub fn served(
    collection: Arc<Collection>,
    resolver: Arc<dyn ModelResolver>,
    settings: kiln_serving::ServingSettings,
) -> ServedModel {
    let (name, signature) = (collection.name.clone(), signature(&collection));
    ServedModel::with_executor(name, 1, signature, settings, CollectionExecutor { collection, resolver })
}
