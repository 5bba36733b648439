//! A `[rollout]` shadow for LLMs: after the caller has its answer, the shadow version generates
//! for the same request on a task of its own — its own template renders the messages — and its
//! text is compared with the caller's first choice (exact text agreement), counted on the
//! rollout like a v2 shadow's answers. Never delays, fails or answers the request; bounded by
//! the rollout's slots (dropped and counted past them).

use std::sync::Arc;

use kiln_engine::rollout::Rollout;
use kiln_llm::{GenerateParams, LlmModel, Message};

use crate::state::AppState;

/// What the shadow renders with its own model.
pub(super) enum Prompt {
    Chat { messages: Vec<Message>, kwargs: kiln_llm::template::TemplateKwargs },
    Text(String),
}

/// A request's shadow, ready to run once the caller's answer is known.
pub(super) struct Shadow {
    llm: Arc<LlmModel>,
    rollout: Arc<Rollout>,
    prompt: Prompt,
    params: GenerateParams,
}

impl Shadow {
    /// The shadow of a request `answered` ran, when its model has one that is an LLM. Requests
    /// with a grammar (response format, tools) are not shadowed: the grammar is compiled for the
    /// answering model's vocabulary.
    pub fn of(
        state: &AppState,
        answered: &kiln_serving::ModelHandle,
        params: &GenerateParams,
        prompt: impl FnOnce() -> Prompt,
    ) -> Option<Shadow> {
        if params.constraint.is_some() {
            return None;
        }
        let (model, rollout) = state.engine.shadow(answered)?;
        let llm = model.runs::<Arc<LlmModel>>()?.clone();
        Some(Shadow { llm, rollout, prompt: prompt(), params: params.clone() })
    }

    /// Runs the shadow and counts whether its text equals `answer` (a failure counts as failed).
    pub fn send(self, answer: String) {
        let Some(slot) = self.rollout.try_send() else { return };
        tokio::spawn(async move {
            let _slot = slot;
            let Shadow { llm, rollout, prompt, params } = self;
            let renderer = llm.clone();
            let tokens = tokio::task::spawn_blocking(move || match prompt {
                Prompt::Chat { messages, kwargs } => renderer.chat_prompt_with(&messages, &[], &kwargs),
                Prompt::Text(text) => renderer.text_prompt(&text),
            })
            .await;
            let text = match tokens {
                Ok(Ok(tokens)) => match llm.generate(tokens, &params) {
                    Ok(generation) => generation.complete().await.ok().map(|c| c.text),
                    Err(_) => None,
                },
                _ => None,
            };
            rollout.count(text.map(|t| t == answer));
        });
    }
}
