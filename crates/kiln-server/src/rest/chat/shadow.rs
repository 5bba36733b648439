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

impl Prompt {
    fn tokens(self, llm: &LlmModel) -> Result<Vec<kiln_llm::Token>, kiln_llm::LlmError> {
        match self {
            Prompt::Chat { messages, kwargs } => llm.chat_prompt_with(&messages, &[], &kwargs),
            Prompt::Text(text) => llm.text_prompt(&text),
        }
    }
}

/// A request's shadow, ready to run once the caller's answer is known.
pub(super) struct Shadow {
    model: kiln_serving::ModelHandle,
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
        Some(Shadow { model, llm, rollout, prompt: prompt(), params: params.clone() })
    }

    /// Runs the shadow (through the lifecycle: `infer::send_llm_to_shadow`) and counts whether
    /// its text equals `answer`.
    pub fn send(self, answer: String) {
        let Shadow { model, llm, rollout, prompt, params } = self;
        let shadow = crate::infer::LlmShadow { model, llm, rollout, params };
        crate::infer::send_llm_to_shadow(shadow, move |llm| prompt.tokens(llm), answer);
    }
}
