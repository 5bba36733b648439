//! An LLM served through the engine's own interface (`ServedModel::infer`), so v2 REST, gRPC,
//! tritonclient and pipelines reach it like any model: `text_input` BYTES `[n]` holds `n` raw
//! prompts (Triton's LLM convention: no chat template), `text_output` BYTES `[n]` their
//! completions, generated concurrently as `n` sequences with the model's default settings.

use std::sync::Arc;
use std::time::Duration;

use kiln_core::{DataType, ModelSignature, Tensor, TensorData, TensorSpec};
use kiln_llm::{GenerateParams, LlmModel};

use kiln_serving::EngineError;
use kiln_serving::ServedModel;

pub const TEXT_INPUT: &str = "text_input";
pub const TEXT_OUTPUT: &str = "text_output";

pub(crate) fn signature() -> ModelSignature {
    let spec = |name: &str| TensorSpec { name: name.into(), datatype: DataType::Bytes, shape: vec![-1] };
    ModelSignature { inputs: vec![spec(TEXT_INPUT)], outputs: vec![spec(TEXT_OUTPUT)] }
}

/// Runs every prompt row as its own sequence and waits for all (dropping this future cancels
/// them all: their `Generation`s go with it).
async fn run(
    model: &ServedModel,
    llm: &Arc<LlmModel>,
    inputs: Vec<Tensor>,
    timeout: Option<Duration>,
) -> Result<Vec<Tensor>, EngineError> {
    let prompts = match inputs.into_iter().next().map(|t| t.data) {
        Some(TensorData::Bytes(rows)) => rows,
        _ => return Err(EngineError::InvalidRequest(format!("'{TEXT_INPUT}' must be a BYTES tensor"))),
    };
    // Every row is a sequence at once: more rows than slots + queue could never be admitted.
    let most = llm.settings().max_sequences + llm.settings().max_queue_size;
    if prompts.len() > most {
        return Err(EngineError::InvalidRequest(format!(
            "'{TEXT_INPUT}' has {} rows; model '{}' generates at most {most} at once (max_sequences {} + \
             max_queue_size {}): send fewer rows per request",
            prompts.len(),
            model.name,
            llm.settings().max_sequences,
            llm.settings().max_queue_size
        )));
    }
    // Tokenizing grows with the text: off the async executor.
    let tokenizer = llm.clone();
    let prompts = tokio::task::spawn_blocking(move || {
        prompts
            .iter()
            .enumerate()
            .map(|(i, prompt)| {
                let text = std::str::from_utf8(prompt)
                    .map_err(|e| EngineError::InvalidRequest(format!("'{TEXT_INPUT}'[{i}] is not UTF-8: {e}")))?;
                tokenizer.text_prompt(text).map_err(|e| row_error(i, e))
            })
            .collect::<Result<Vec<_>, EngineError>>()
    })
    .await
    .map_err(|e| EngineError::Backend(format!("tokenizing failed: {e}")))??;
    let mut generations = Vec::with_capacity(prompts.len());
    for (i, tokens) in prompts.into_iter().enumerate() {
        let generation = llm.generate(tokens, &GenerateParams::default()).map_err(|e| row_error(i, e))?;
        generations.push(generation.complete());
    }
    let all = futures_util::future::try_join_all(generations);
    let completions = match timeout {
        Some(limit) => tokio::time::timeout(limit, all)
            .await
            .map_err(|_| kiln_serving::timeout_error(&model.name, model.version, limit))??,
        None => all.await?,
    };
    let rows = completions.len();
    let texts = completions.into_iter().map(|c| c.text.into_bytes()).collect();
    Ok(vec![
        Tensor::new(TEXT_OUTPUT, vec![rows], TensorData::Bytes(texts))
            .map_err(|e| EngineError::Backend(e.to_string()))?,
    ])
}

/// A row's refusal, naming the row.
fn row_error(i: usize, e: kiln_llm::LlmError) -> EngineError {
    match EngineError::from(e) {
        EngineError::InvalidRequest(m) => EngineError::InvalidRequest(format!("'{TEXT_INPUT}'[{i}]: {m}")),
        other => other,
    }
}

/// An LLM as the executor of a served version: its own scheduler thread and sequence slots
/// (continuous batching).
struct LlmExecutor(Arc<LlmModel>);

impl kiln_serving::Executor for LlmExecutor {
    fn kind(&self) -> kiln_serving::ExecutorKind {
        kiln_serving::ExecutorKind::Llm
    }

    fn run<'a>(
        &'a self,
        model: &'a ServedModel,
        request: kiln_serving::InferRequest,
    ) -> kiln_serving::BoxFuture<'a, Result<kiln_serving::InferResponse, EngineError>> {
        Box::pin(async move {
            let admitted = model.admit(&request)?;
            let outputs = run(model, &self.0, request.inputs, admitted.timeout).await?;
            Ok(model.response(outputs))
        })
    }

    fn queue_depth(&self) -> usize {
        self.0.queue_depth()
    }

    fn runs(&self) -> Option<&dyn std::any::Any> {
        Some(&self.0)
    }
}

/// Serves a generative LLM: `text_input` BYTES `[n]` → `text_output` BYTES `[n]` over v2;
/// chat and completions find the `Arc<LlmModel>` with `ServedModel::runs`.
pub fn serve(name: String, version: u64, llm: LlmModel, settings: kiln_serving::ServingSettings) -> ServedModel {
    ServedModel::with_executor(name, version, signature(), settings, LlmExecutor(Arc::new(llm)))
}
