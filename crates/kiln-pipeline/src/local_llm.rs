//! An `llm` step without a `url`: `model` names an LLM of this repository (`kind = "llm"`),
//! called in-process through that model's own queue — its sequences batch continuously with
//! every other caller's (chat API, v2, other pipelines). `json_outputs` become a JSON schema
//! the answer is held to by constrained decoding, so the step cannot fail to parse.

use std::time::{Duration, Instant};

use kiln_core::{Tensor, TensorSpec};

use super::ModelResolver;
use super::prompt::PromptTemplate;
use super::remote::{LlmSpec, llm_output_specs};
use crate::llm_answer::answer_schema;
use kiln_serving::EngineError;
use kiln_serving::metrics::Protocol;

/// A local LLM step, validated.
#[derive(Debug)]
// Without the `llm` feature the step loads but cannot run: its settings go unread.
#[cfg_attr(not(feature = "llm"), allow(dead_code))]
pub struct LocalLlmStep {
    spec: LlmSpec,
    template: PromptTemplate,
    /// The answer's schema when the step has `json_outputs`.
    schema: Option<serde_json::Value>,
    /// The step's own deadline (`timeout_ms`, else the LLM default).
    timeout: Duration,
}

impl LocalLlmStep {
    pub fn new(spec: LlmSpec, timeout: Duration, step: &str) -> Result<Self, String> {
        let here = |e: String| format!("step '{step}': {e}");
        if spec.api_key_env.is_some() {
            return Err(here("'api_key_env' is for an LLM at a 'url'; a local model needs none".into()));
        }
        if spec.response_format.as_deref().is_some_and(|f| f != "json_schema") {
            return Err(here(
                "a local LLM step always holds json_outputs to their schema: leave out response_format".into(),
            ));
        }
        let template = PromptTemplate::new(&spec.prompt, step).map_err(here)?;
        let schema =
            if spec.json_outputs.is_empty() { None } else { Some(answer_schema(&spec.json_outputs).map_err(here)?) };
        Ok(LocalLlmStep { spec, template, schema, timeout })
    }

    pub fn describe(&self) -> String {
        format!("local LLM '{}'", self.spec.model)
    }

    /// The model name, for the pipeline's list of the models it calls.
    pub fn model(&self) -> &str {
        &self.spec.model
    }

    /// Checks that the model is an LLM of the repository and what the step produces.
    pub fn output_specs(
        &self,
        step: &str,
        inputs: &[(String, TensorSpec)],
        resolver: &dyn ModelResolver,
    ) -> Result<Vec<TensorSpec>, String> {
        let model = resolver
            .resolve(&self.spec.model, None)
            .map_err(|e| format!("step '{step}': model '{}': {e}", self.spec.model))?;
        if !model.is_llm() {
            return Err(format!(
                "step '{step}': model '{}' is not an LLM (kind = \"llm\"); give the step a 'url' to call a server",
                self.spec.model
            ));
        }
        llm_output_specs(&self.spec, &self.template, step, inputs)
    }

    /// Generates every row's answer concurrently on the model's scheduler.
    #[cfg(feature = "llm")]
    pub async fn call(
        &self,
        resolver: &dyn ModelResolver,
        args: Vec<Tensor>,
        protocol: Protocol,
        deadline: Option<Instant>,
    ) -> Result<Vec<Tensor>, EngineError> {
        use kiln_llm::{GenerateParams, Grammar};

        let model = resolver.resolve(&self.spec.model, None)?;
        let llm = model.runs::<std::sync::Arc<kiln_llm::LlmModel>>().cloned().ok_or_else(|| {
            EngineError::InvalidRequest(format!("model '{}' is not an LLM (kind = \"llm\")", self.spec.model))
        })?;
        let prompts = self.template.rows(&args)?;
        let constraint = match &self.schema {
            None => None,
            Some(schema) => {
                let (llm, grammar) = (llm.clone(), Grammar::JsonSchema(schema.clone()));
                let compiled = tokio::task::spawn_blocking(move || llm.constrain(&grammar))
                    .await
                    .map_err(|e| EngineError::Backend(format!("grammar compilation failed: {e}")))??;
                Some(compiled)
            }
        };
        let params = GenerateParams {
            max_tokens: self.spec.max_tokens,
            temperature: self.spec.temperature.map(|t| t as f32),
            constraint,
            ..GenerateParams::default()
        };
        // Counted on the model however it ends (a dropped future counts as cancelled).
        let tracked = kiln_serving::ServedModel::track(&model, protocol);
        let result = self.generate_rows(&llm, prompts, &params, deadline).await;
        tracked.end(kiln_serving::metrics::Outcome::of(&result));
        result
    }

    /// Queues every row's prompt, waits for all within the deadline, reads the JSON fields.
    #[cfg(feature = "llm")]
    async fn generate_rows(
        &self,
        llm: &std::sync::Arc<kiln_llm::LlmModel>,
        prompts: Vec<String>,
        params: &kiln_llm::GenerateParams,
        deadline: Option<Instant>,
    ) -> Result<Vec<Tensor>, EngineError> {
        use kiln_llm::Message;

        use crate::llm_answer::llm_outputs;

        // Rendering and tokenizing grow with the inputs: off the async executor.
        let (tokenizer, system) = (llm.clone(), self.spec.system.clone());
        let prompts = tokio::task::spawn_blocking(move || {
            prompts
                .into_iter()
                .map(|prompt| {
                    let mut messages = Vec::with_capacity(2);
                    if let Some(system) = &system {
                        messages.push(Message::new("system", system.clone()));
                    }
                    messages.push(Message::new("user", prompt));
                    tokenizer.chat_prompt(&messages, &[])
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| EngineError::Backend(format!("{}: rendering the prompts failed: {e}", self.describe())))??;
        let mut generations = Vec::with_capacity(prompts.len());
        for tokens in prompts {
            generations.push(llm.generate(tokens, params)?.complete());
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let limit = left.map_or(self.timeout, |l| l.min(self.timeout));
        let completions =
            tokio::time::timeout(limit, futures_util::future::try_join_all(generations)).await.map_err(|_| {
                EngineError::Timeout(format!("{}: no answer within {} ms", self.describe(), limit.as_millis()))
            })??;
        let answers = completions
            .into_iter()
            .map(|c| {
                let fields = crate::llm_answer::parse_fields(&c.text, &self.spec.json_outputs)
                    .map_err(|e| EngineError::Backend(format!("{}: {e}", self.describe())))?;
                Ok((c.text, fields))
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        llm_outputs(&self.spec.json_outputs, answers, &self.describe())
    }

    /// Without the `llm` feature (the Python bridge) no model is an LLM: the step cannot load.
    #[cfg(not(feature = "llm"))]
    pub async fn call(
        &self,
        _: &dyn ModelResolver,
        _: Vec<Tensor>,
        _: Protocol,
        _: Option<Instant>,
    ) -> Result<Vec<Tensor>, EngineError> {
        Err(EngineError::Backend(format!("{}: this build of kiln has no LLM engine", self.describe())))
    }
}
