//! kiln-llm: generative LLMs (GGUF files) run in-process on llama.cpp, through the
//! `llama-cpp-2` bindings, with continuous batching.
//!
//! An [`LlmModel`] is one loaded GGUF and one llama.cpp context with a sequence slot per
//! concurrent request (`max_sequences`). Its [`scheduler`] thread owns that context: every step
//! it admits waiting requests into free slots, puts one token of each generating sequence and
//! a chunk of each new prompt into one batch, decodes it, samples each sequence's next token
//! and sends the text to the request's [`Generation`]. A request joins at the next step, a
//! finished one frees its slot at once, and a request whose [`Generation`] is dropped (the
//! client left) is removed before the next step: no token is computed for nobody.
//!
//! It owns prompt construction too: the model's own chat template ([`template`]) and the
//! tokenizer. It knows nothing of HTTP, JSON APIs or repositories.

mod budget;
mod builtin_templates;
pub mod constraint;
mod generation;
pub mod metrics;
mod outbox;
mod prompt;
pub mod reasoning;
pub mod request;
mod sampling;
mod scheduler;
mod settings;
pub mod template;
pub mod text;
mod tool_syntax;
pub mod tools;
mod worker;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

pub use budget::set_memory_budget;
pub use constraint::{Constraint, Grammar};
pub use generation::{Completion, Event, FinishReason, Generation, TokenLogprob, TopLogprob, Usage};
pub use llama_cpp_2::token::LlamaToken as Token;
pub use scheduler::stop_all;
pub use settings::{GenerateParams, LlmSettings, MAX_TOP_LOGPROBS, Shaping, TEMPLATE_NAMES, TemplateChoice};
pub use template::{ChatTemplate, Message, ROLES};

/// Why an LLM call or load failed; the server maps each to a status code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    #[error("{0}")]
    Load(String),
    #[error("the prompt has {prompt} tokens, but the model's context is {context} tokens")]
    PromptTooLong { prompt: usize, context: usize },
    /// Refused before rendering or tokenizing: the request cannot fit, whatever its tokens.
    #[error("{0}")]
    PromptTooLarge(String),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("{waiting} requests are already waiting for a sequence slot (max_queue_size); try again later")]
    Overloaded { waiting: usize },
    #[error("the chat template refused the messages: {0}")]
    Template(String),
    /// A grammar or JSON schema that cannot be compiled or enforced.
    #[error("{0}")]
    Grammar(String),
    #[error("the model is shutting down")]
    ShuttingDown,
    /// No room under `--llm-memory-budget` to load the model now (every loaded model is busy).
    #[error("{0}")]
    NoRoom(String),
    #[error("llama.cpp failed: {0}")]
    Engine(String),
}

/// What the model file says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmInfo {
    pub architecture: String,
    pub parameters: u64,
    pub file_bytes: u64,
    /// Tokens per sequence this model serves with.
    pub context_length: usize,
    /// The context the model was trained with.
    pub trained_context: usize,
    pub max_sequences: usize,
    pub has_chat_template: bool,
    /// Where the chat template comes from: `gguf`, `builtin:<name>` or `file:<name>`; empty
    /// when there is none.
    pub chat_template: String,
    /// Whether generating sequences share decode steps (each is decoded alone in a process
    /// without [`BATCH_INVARIANT_ENV`]).
    pub batched_steps: bool,
    /// Whether a later prompt starts from a kept prompt's KV cells (`[llm] prefix_cache`).
    pub prefix_cache: bool,
}

/// A request on its way to the scheduler.
struct Pending {
    prompt: Vec<LlamaToken>,
    max_tokens: usize,
    sampling: scheduler::Sampling,
    stop: Vec<String>,
    constraint: Option<Constraint>,
    logprobs: Option<usize>,
    sink: outbox::Sink,
    queued_at: Instant,
    _waiting: metrics::Waiting,
}

/// How requests reach a model's scheduler.
enum Residency {
    /// Loaded for as long as the model is served.
    Always(worker::Running),
    /// Under `--llm-memory-budget`: loaded on demand, unloaded when idle and room is needed.
    Budgeted(Arc<budget::Resident>),
}

/// One loaded GGUF model serving requests. Dropping it stops admitting; sequences already
/// running finish (their clients hold the [`Generation`]s), then the scheduler thread exits.
pub struct LlmModel {
    model: Arc<LlamaModel>,
    template: Option<ChatTemplate>,
    settings: LlmSettings,
    info: LlmInfo,
    residency: Residency,
    metrics: Arc<metrics::LlmMetrics>,
    /// Built on a thread of its own at load (it walks the whole vocabulary: ~0.7 s for SmolLM2's
    /// 49k tokens), so that the first constrained request does not pay for it; a request that
    /// comes sooner waits for it.
    grammars: Arc<OnceLock<Result<constraint::GrammarCompiler, LlmError>>>,
    /// What prompt building checks before it renders or tokenizes.
    bounds: prompt::Bounds,
}

impl std::fmt::Debug for LlmModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmModel").field("info", &self.info).finish_non_exhaustive()
    }
}

/// The environment ggml must start with for a sequence's logits not to depend on the batch it
/// is decoded in: `GGML_CPU_TILED_MM=0`. ggml's tiled K-quant matmul (on by default) takes over
/// from 8 rows on and sums in another order than the one-row kernel, so a Q4_K model's greedy
/// text would change with how many sequences share its decode step (Gemma 3 270M Q4_K_M: by up
/// to 0.2 in a logprob). Off, it cost nothing measurable (llama-server, Gemma 3, 1 and 8 streams).
/// ggml reads it once, at its first matmul: the binary and the Python bridge set it before any
/// thread starts; a process that did not gets its LLMs' sequences decoded one at a time.
pub const BATCH_INVARIANT_ENV: (&str, &str) = ("GGML_CPU_TILED_MM", "0");

/// Whether this process runs ggml with [`BATCH_INVARIANT_ENV`].
fn batch_invariant() -> bool {
    static INVARIANT: OnceLock<bool> = OnceLock::new();
    *INVARIANT.get_or_init(|| {
        let (name, value) = BATCH_INVARIANT_ENV;
        let set = std::env::var(name).is_ok_and(|v| v == value);
        if !set {
            tracing::warn!(
                "{name} is not {value}: ggml's tiled matmul makes logits depend on the batch, so each LLM \
                 sequence is decoded alone"
            );
        }
        set
    })
}

/// llama.cpp's process-wide state: initialized once, never freed.
fn backend() -> Result<&'static LlamaBackend, LlmError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp's own logging goes to tracing (target llama-cpp-2), not stderr.
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| LlmError::Load(format!("cannot initialize llama.cpp: {e}")))
}

/// The messages and tools a template renders: as they are for a template that takes tools; for
/// one that does not, kiln's Hermes conversation (tools described in the system prompt, earlier
/// calls and results as text) and no tools.
fn conversation<'m, 't>(
    template: &ChatTemplate,
    messages: &'m [Message],
    tools: &'t [tools::Tool],
) -> (std::borrow::Cow<'m, [Message]>, &'t [tools::Tool]) {
    let plain = |m: &Message| m.role != "tool" && m.tool_calls.is_empty();
    if template.takes_tools() {
        (std::borrow::Cow::Borrowed(messages), tools)
    } else if tools.is_empty() && messages.iter().all(plain) {
        (std::borrow::Cow::Borrowed(messages), &[])
    } else {
        (std::borrow::Cow::Owned(tools::conversation(messages.to_vec(), tools)), &[])
    }
}

/// Loads a GGUF file's weights (or only its vocabulary and metadata).
fn load_weights(
    backend: &LlamaBackend,
    file: &Path,
    gpu_layers: u32,
    vocab_only: bool,
) -> Result<LlamaModel, LlmError> {
    // (llama-cpp-2 asserts the file exists in debug builds: say it instead.)
    if !file.is_file() {
        return Err(LlmError::Load(format!("{} does not exist or is not a file", file.display())));
    }
    let params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers).with_vocab_only(vocab_only);
    LlamaModel::load_from_file(backend, file, &params)
        .map_err(|e| LlmError::Load(format!("{} is not a model llama.cpp can load: {e}", file.display())))
}

/// The refusal of a chat request to a model without a chat template.
fn no_template() -> LlmError {
    LlmError::Template(format!(
        "the model's GGUF has no chat template: set [llm] chat_template in its config.toml ({} or a .jinja file), \
         or use /v1/completions with a prompt",
        TEMPLATE_NAMES.join(", ")
    ))
}

impl LlmModel {
    /// Loads `file` and starts its scheduler thread. `name` and `version` label its metrics.
    /// Blocking (reads the whole file): call it off the async executor.
    pub fn load(name: &str, version: u64, file: &Path, settings: LlmSettings) -> Result<Self, LlmError> {
        let backend = backend()?;
        if settings.max_sequences == 0 || settings.threads == 0 {
            return Err(LlmError::Load("max_sequences and threads must be at least 1".into()));
        }
        let budget = budget::current();
        // Under a budget only the vocabulary stays loaded here; the weights load with the scheduler.
        let model = load_weights(backend, file, settings.gpu_layers, budget.is_some())?;
        // A vocabulary-only load (under a budget) has no hyperparameters: read the metadata.
        let trained = match model.n_ctx_train() {
            0 => budget::meta_u64(&model, "context_length").and_then(|n| usize::try_from(n).ok()).unwrap_or(0),
            n => n as usize,
        };
        let context_length = match settings.context_length {
            Some(n) => n as usize,
            None => trained.clamp(1, 4096),
        };
        if context_length < 16 {
            return Err(LlmError::Load(format!("context_length {context_length} is too small (at least 16)")));
        }
        let vocab = model.vocab();
        let piece = |t: LlamaToken| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
        let (source, origin) = match &settings.chat_template {
            Some(TemplateChoice::Named(name)) => {
                let source = builtin_templates::source(name).ok_or_else(|| {
                    LlmError::Load(format!(
                        "chat_template '{name}' is not a built-in template ({}) nor a .jinja file",
                        TEMPLATE_NAMES.join(", ")
                    ))
                })?;
                (Some(source.to_string()), format!("builtin:{name}"))
            }
            Some(TemplateChoice::File { name, source }) => (Some(source.clone()), format!("file:{name}")),
            None => match model.chat_template(None) {
                Ok(source) => {
                    let source = source.to_string().map_err(|e| LlmError::Load(format!("chat template: {e}")))?;
                    (Some(source), "gguf".to_string())
                }
                Err(_) => (None, String::new()),
            },
        };
        let template = match source {
            Some(source) => {
                Some(ChatTemplate::new(&source, piece(vocab.bos()), piece(vocab.eos())).map_err(|e| match e {
                    LlmError::Load(m) => LlmError::Load(format!("chat template ({origin}): {m}")),
                    other => other,
                })?)
            }
            None => None,
        };
        let info = LlmInfo {
            architecture: model.meta_val_str("general.architecture").unwrap_or_default(),
            parameters: model.n_params(),
            file_bytes: std::fs::metadata(file).map(|m| m.len()).unwrap_or(0),
            context_length,
            trained_context: trained,
            max_sequences: settings.max_sequences,
            has_chat_template: template.is_some(),
            chat_template: origin,
            batched_steps: false,
            prefix_cache: settings.prefix_cache,
        };
        let sliding_window = model
            .meta_val_str(&format!("{}.attention.sliding_window", info.architecture))
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let model = Arc::new(model);
        let metrics = Arc::new(metrics::LlmMetrics::new(name, version));
        let limits = scheduler::Limits {
            threads: settings.threads,
            context_length,
            max_sequences: settings.max_sequences,
            flash_attention: settings.flash_attention,
            prefix_cache: info.prefix_cache,
            sliding_window,
            channel: settings.max_sequences + settings.max_queue_size,
            batch_invariant: batch_invariant(),
        };
        let batched = limits.batched();
        let thread_name = format!("kiln-llm-{name}-v{version}");
        let residency = match budget {
            None => {
                let weights = model.clone();
                let load: worker::Load = Box::new(move || Ok(weights));
                Residency::Always(worker::start(backend, load, limits, metrics.clone(), thread_name, Vec::new(), true)?)
            }
            Some(budget) => {
                let bytes = budget::estimate(
                    &model,
                    info.file_bytes,
                    context_length * settings.max_sequences,
                    settings.max_sequences,
                );
                let (file, gpu_layers, for_start) = (file.to_path_buf(), settings.gpu_layers, metrics.clone());
                let starter = Arc::new(move |after: Vec<Arc<std::sync::atomic::AtomicBool>>, wait: bool| {
                    let file = file.clone();
                    let load: worker::Load =
                        Box::new(move || load_weights(backend, &file, gpu_layers, false).map(Arc::new));
                    worker::start(backend, load, limits.clone(), for_start.clone(), thread_name.clone(), after, wait)
                });
                let on_demand = starter.clone();
                let resident = Arc::new(budget::Resident::new(
                    name.to_string(),
                    bytes,
                    budget,
                    metrics.clone(),
                    Box::new(move |after| on_demand(after, false)),
                ));
                budget.register(&resident, || starter(Vec::new(), true))?;
                Residency::Budgeted(resident)
            }
        };
        let info = LlmInfo { batched_steps: batched, ..info };
        tracing::info!(
            model = name,
            version,
            parameters = info.parameters,
            context_length,
            max_sequences = settings.max_sequences,
            "LLM loaded"
        );
        let grammars = Arc::new(OnceLock::new());
        let (index, for_index) = (grammars.clone(), model.clone());
        let indexing = std::thread::Builder::new().name(format!("kiln-llm-{name}-grammar")).spawn(move || {
            index.get_or_init(|| constraint::GrammarCompiler::new(&for_index));
        });
        if let Err(e) = indexing {
            tracing::warn!(model = name, "cannot index the vocabulary ahead (the first constrained request will): {e}");
        }
        let bounds = prompt::Bounds::of(&model.vocab(), context_length);
        Ok(LlmModel { model, template, settings, info, residency, metrics, grammars, bounds })
    }

    /// Tokens in the vocabulary (ids run from 0 to this, exclusive).
    pub fn vocab_size(&self) -> usize {
        usize::try_from(self.model.n_vocab()).unwrap_or(0)
    }

    pub fn info(&self) -> &LlmInfo {
        &self.info
    }

    pub fn settings(&self) -> &LlmSettings {
        &self.settings
    }

    /// Requests waiting for a sequence slot now.
    pub fn queue_depth(&self) -> usize {
        self.metrics.waiting()
    }

    /// Sequences being generated now.
    pub fn active_sequences(&self) -> usize {
        self.metrics.active()
    }

    /// The prompt text the chat template makes of `messages` (what [`LlmModel::chat_prompt`]
    /// tokenizes), within the same bounds; for checking a template (`POST /apply-template`).
    pub fn apply_template(
        &self,
        messages: &[Message],
        tools: &[tools::Tool],
        kwargs: &template::TemplateKwargs,
    ) -> Result<String, LlmError> {
        let template = self.template.as_ref().ok_or_else(no_template)?;
        self.bounds.check_messages(messages)?;
        let (messages, tools) = conversation(template, messages, tools);
        template.render_with(&messages, tools, kwargs)
    }

    /// The syntax this model writes tool calls in (its template's; Hermes otherwise).
    pub fn tool_syntax(&self) -> tools::ToolSyntax {
        self.template.as_ref().map(ChatTemplate::syntax).unwrap_or_default()
    }

    /// Whether the chat template marks thoughts with `<think>` (a reasoning model).
    pub fn reasons(&self) -> bool {
        self.template.as_ref().is_some_and(ChatTemplate::reasoning)
    }

    /// Whether a chat prompt ends inside `<think>` (the template opened the thoughts): the
    /// answer then starts with them.
    pub fn opens_thinking(&self, prompt: &[LlamaToken]) -> bool {
        let tail = &prompt[prompt.len().saturating_sub(4)..];
        let text = self.model.vocab().detokenize(tail, false, true);
        String::from_utf8_lossy(&text).trim_end().ends_with("<think>")
    }

    /// Renders chat messages with the model's template and tokenizes the prompt (special
    /// tokens in the template's text are parsed as such — in message content only with
    /// `special_tokens_in_content`; no BOS is added beyond what the template writes).
    /// A request that cannot fit the context is refused before any rendering: more messages
    /// than context tokens, or more text than the context's tokens can hold. CPU work that
    /// grows with the messages: call it off the async executor.
    pub fn chat_prompt(&self, messages: &[Message], tools: &[tools::Tool]) -> Result<Vec<LlamaToken>, LlmError> {
        self.chat_prompt_with(messages, tools, &template::TemplateKwargs::new())
    }

    /// [`LlmModel::chat_prompt`] with extra template variables (`chat_template_kwargs`).
    pub fn chat_prompt_with(
        &self,
        messages: &[Message],
        tools: &[tools::Tool],
        kwargs: &template::TemplateKwargs,
    ) -> Result<Vec<LlamaToken>, LlmError> {
        let template = self.template.as_ref().ok_or_else(no_template)?;
        self.bounds.check_messages(messages)?;
        let vocab = self.model.vocab();
        let (messages, tools) = conversation(template, messages, tools);
        let messages = &messages[..];
        if !self.settings.special_tokens_in_content && self.bounds.holds_special_text(messages) {
            let marked = template.render_with(&prompt::mark_contents(messages), tools, kwargs)?;
            self.bounds.check_text(&marked)?;
            let mut tokens = Vec::new();
            for (text, is_content) in prompt::split_marked(&marked) {
                tokens.extend(vocab.tokenize(text.as_bytes(), false, !is_content));
            }
            return Ok(tokens);
        }
        let text = template.render_with(messages, tools, kwargs)?;
        self.bounds.check_text(&text)?;
        Ok(vocab.tokenize(text.as_bytes(), false, true))
    }

    /// Compiles `grammar` for this model: the [`Constraint`] goes in [`GenerateParams`]. A
    /// schema or grammar llguidance cannot enforce is [`LlmError::Grammar`], naming what.
    /// CPU work (milliseconds for a typical schema; the first call per model also indexes the
    /// vocabulary): call it off the async executor.
    pub fn constrain(&self, grammar: &Grammar) -> Result<Constraint, LlmError> {
        let compiler = self.grammars.get_or_init(|| constraint::GrammarCompiler::new(&self.model));
        let started = Instant::now();
        let compiled = compiler.as_ref().map_err(Clone::clone)?.compile(grammar);
        self.metrics.grammar_compile.record(started.elapsed().as_secs_f64());
        compiled
    }

    /// Token ids of `text` (`/tokenize`): with the model's BOS when `add_special`; special-token
    /// text parsed as such when `parse_special`. Bounded like a prompt.
    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<i32>, LlmError> {
        self.bounds.check_text(text)?;
        Ok(self.model.vocab().tokenize(text.as_bytes(), add_special, parse_special).into_iter().map(|t| t.0).collect())
    }

    /// The text of token ids (`/detokenize`), special tokens written out; `None` when an id is
    /// not in the vocabulary.
    pub fn detokenize(&self, tokens: &[i32]) -> Option<String> {
        let n = self.model.n_vocab();
        if tokens.iter().any(|&t| t < 0 || t >= n) {
            return None;
        }
        let tokens: Vec<LlamaToken> = tokens.iter().map(|&t| LlamaToken(t)).collect();
        Some(String::from_utf8_lossy(&self.model.vocab().detokenize(&tokens, false, true)).into_owned())
    }

    /// Tokenizes a raw prompt, with the BOS token when the model asks for one; a text longer
    /// than the context's tokens can hold is refused before tokenizing.
    pub fn text_prompt(&self, text: &str) -> Result<Vec<LlamaToken>, LlmError> {
        self.bounds.check_text(text)?;
        Ok(self.model.vocab().tokenize(text.as_bytes(), true, true))
    }

    /// Queues a request. Errors at once when the prompt does not fit the context or the
    /// queue is full; otherwise the [`Generation`] yields the text as it comes.
    pub fn generate(&self, prompt: Vec<LlamaToken>, params: &GenerateParams) -> Result<Generation, LlmError> {
        let context = self.info.context_length;
        if prompt.is_empty() {
            return Err(LlmError::EmptyPrompt);
        }
        if prompt.len() >= context {
            return Err(LlmError::PromptTooLong { prompt: prompt.len(), context });
        }
        let wanted = params.max_tokens.unwrap_or(self.settings.max_tokens) as usize;
        let max_tokens = wanted.min(context - prompt.len());
        let sampling = scheduler::Sampling {
            temperature: params.temperature.unwrap_or(self.settings.temperature),
            top_p: params.top_p.unwrap_or(self.settings.top_p),
            seed: params.seed.unwrap_or_else(|| fastrand::u32(..)),
            shaping: params.shaping.clone(),
            n_vocab: self.model.n_vocab(),
        };
        // The channel holds both the requests waiting for a slot and those about to take a
        // free one (the scheduler admits between steps): refuse only past slots + queue.
        let capacity = self.settings.max_sequences + self.settings.max_queue_size;
        if self.metrics.waiting() + self.metrics.active() >= capacity {
            return Err(LlmError::Overloaded { waiting: self.settings.max_queue_size });
        }
        let (sink, events) = outbox::outbox();
        let prompt_tokens = prompt.len();
        let logprobs = params.logprobs.is_some();
        let pending = Pending {
            prompt,
            max_tokens,
            sampling,
            stop: params.stop.clone(),
            constraint: params.constraint.clone(),
            logprobs: params.logprobs.map(|k| k.min(MAX_TOP_LOGPROBS)),
            sink,
            queued_at: Instant::now(),
            _waiting: self.metrics.wait(),
        };
        match &self.residency {
            Residency::Always(running) => running.send(pending)?,
            Residency::Budgeted(resident) => resident.send(pending)?,
        }
        Ok(Generation::new(prompt_tokens, events, logprobs))
    }

    /// Whether the weights are loaded now (always, unless under `--llm-memory-budget`).
    pub fn is_loaded(&self) -> bool {
        match &self.residency {
            Residency::Always(_) => true,
            Residency::Budgeted(resident) => resident.is_loaded(),
        }
    }

    /// The memory the budget counts for this model (weights, KV cache, buffers); `None` when no
    /// budget is set.
    pub fn budgeted_bytes(&self) -> Option<u64> {
        match &self.residency {
            Residency::Always(_) => None,
            Residency::Budgeted(resident) => Some(resident.bytes),
        }
    }
}
