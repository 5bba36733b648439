//! A model's settings and what a request may set.

use crate::builtin_templates;
use crate::constraint::Constraint;

/// A model's settings, from config.toml and kiln's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmSettings {
    /// CPU threads llama.cpp uses for a step.
    pub threads: usize,
    /// Tokens of context per sequence (prompt + completion); `None` = the model's training
    /// context, capped at 4096.
    pub context_length: Option<u32>,
    /// Sequences decoded together (continuous batching); more wait in the queue.
    pub max_sequences: usize,
    /// Requests that may wait for a sequence slot before new ones are refused.
    pub max_queue_size: usize,
    /// Defaults for requests that do not say.
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    /// Layers offloaded to a GPU (needs a GPU build: the `cuda` feature); 0 = CPU only.
    pub gpu_layers: u32,
    /// llama.cpp's flash attention. Off by default, as in llama-cpp-python: its different
    /// summation order changes greedy texts, and the prototype's texts are what kiln matches.
    pub flash_attention: bool,
    /// Keep a finished request's prompt in its slot's KV cache and start a later prompt that
    /// begins the same way (a shared system prompt) from there.
    pub prefix_cache: bool,
    /// Parse special-token text (`<|im_start|>`, `[INST]`…) inside message *content* as
    /// control tokens, as llama.cpp's server and Hugging Face do. Off by default: content is
    /// tokenized as plain text, so a user's message (or a pipeline input in a prompt) cannot
    /// open a system turn; the template's own text is parsed either way.
    pub special_tokens_in_content: bool,
    /// The chat template to use instead of the GGUF's (or where it has none).
    pub chat_template: Option<TemplateChoice>,
}

/// `[llm] chat_template`: one of kiln's built-in templates, or a Jinja file's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateChoice {
    /// A built-in name ([`TEMPLATE_NAMES`]).
    Named(String),
    /// A Jinja template read from the model folder.
    File { name: String, source: String },
}

/// The built-in chat template names `[llm] chat_template` accepts.
pub const TEMPLATE_NAMES: [&str; 5] = builtin_templates::NAMES;

impl Default for LlmSettings {
    fn default() -> Self {
        LlmSettings {
            threads: 2,
            context_length: None,
            max_sequences: 4,
            max_queue_size: 64,
            max_tokens: 256,
            temperature: 1.0,
            top_p: 1.0,
            gpu_layers: 0,
            flash_attention: false,
            prefix_cache: true,
            special_tokens_in_content: false,
            chat_template: None,
        }
    }
}

/// What a caller may set per request; `None` takes the model's default.
#[derive(Debug, Clone, Default)]
pub struct GenerateParams {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Same seed + same request = same text. `None` = a random seed.
    pub seed: Option<u32>,
    /// Generation ends before any of these; they are not part of the text.
    pub stop: Vec<String>,
    /// The text must match this grammar ([`LlmModel::constrain`]); it ends when the grammar
    /// is complete.
    pub constraint: Option<Constraint>,
    /// Penalties, biases and llama.cpp's extra filters.
    pub shaping: Shaping,
    /// Report each generated token's log-probability and this many most likely alternatives
    /// ([`Event::Logprobs`]); `None` reports none.
    pub logprobs: Option<usize>,
}

/// Most alternatives a request may ask for per token (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// What changes the token distribution beyond temperature and top-p (OpenAI's penalties and
/// `logit_bias`, llama.cpp's `top_k`, `min_p`, `repeat_penalty`). The default changes nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shaping {
    /// OpenAI's, -2 to 2: subtracted once from a token that appeared in the last 64 tokens.
    pub presence_penalty: Option<f32>,
    /// OpenAI's, -2 to 2: subtracted per appearance in the last 64 tokens.
    pub frequency_penalty: Option<f32>,
    /// llama.cpp's: logits of recent tokens divided (positive) or multiplied by it; 1 = none.
    pub repeat_penalty: Option<f32>,
    /// llama.cpp's: sample among the k most likely tokens only (0 = all).
    pub top_k: Option<u32>,
    /// llama.cpp's: drop tokens less likely than `min_p` × the most likely one's.
    pub min_p: Option<f32>,
    /// (token id, bias added to its logit); -100 bans a token.
    pub logit_bias: Vec<(i32, f32)>,
}

impl Shaping {
    /// Whether any repetition penalty is on.
    pub fn penalizes(&self) -> bool {
        self.presence_penalty.is_some_and(|p| p != 0.0)
            || self.frequency_penalty.is_some_and(|p| p != 0.0)
            || self.repeat_penalty.is_some_and(|p| p != 1.0)
    }
}
