//! A request body's fields, parsed one by one into what the engine takes: sampling, stop
//! strings, streaming, the response format, tools and the messages. Whatever no parser took is
//! an unknown parameter, refused by name.

use kiln_llm::request::{response_format, tool_choice, tool_list};
use kiln_llm::tools::{Tool, ToolChoice};
use kiln_llm::{GenerateParams, Grammar, Shaping};
use serde_json::{Map, Value, json};

use super::{Api, param_error};

/// Most choices one request may ask for (`n`); a model serves at most `max_sequences` at once.
const MAX_CHOICES: i64 = 16;
/// OpenAI's limit for the completions API's `logprobs`.
const MAX_COMPLETION_LOGPROBS: i64 = 5;
use crate::error::{ApiError, OpenAiError};
use kiln_llm::MAX_TOP_LOGPROBS;

/// A request body's fields, taken one by one so that whatever is left is an unknown
/// parameter, refused by name.
pub(super) struct Fields(Map<String, Value>);

impl Fields {
    pub(super) fn parse(body: &[u8]) -> Result<Self, OpenAiError> {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(Fields(map)),
            Ok(_) => Err(OpenAiError::invalid("the request body must be a JSON object", "body")),
            Err(e) => Err(OpenAiError::invalid(format!("malformed request: {e}"), "body")),
        }
    }

    /// A field, with JSON null treated as absent.
    pub(super) fn take(&mut self, name: &str) -> Option<Value> {
        self.0.remove(name).filter(|v| !v.is_null())
    }

    fn number(&mut self, name: &'static str, range: std::ops::RangeInclusive<f64>) -> Result<Option<f64>, OpenAiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if range.contains(&x) => Ok(Some(x)),
                _ => Err(OpenAiError::invalid(
                    format!("'{name}' must be between {} and {}, got {n}", range.start(), range.end()),
                    name,
                )),
            },
            Some(other) => Err(OpenAiError::invalid(format!("'{name}' must be a number, got {other}"), name)),
        }
    }

    fn integer(&mut self, name: &'static str, min: i64) -> Result<Option<i64>, OpenAiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(x) if x >= min => Ok(Some(x)),
                _ => Err(OpenAiError::invalid(format!("'{name}' must be an integer of at least {min}, got {n}"), name)),
            },
            Some(other) => Err(OpenAiError::invalid(format!("'{name}' must be an integer, got {other}"), name)),
        }
    }

    pub(super) fn boolean(&mut self, name: &'static str) -> Result<Option<bool>, OpenAiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(OpenAiError::invalid(format!("'{name}' must be true or false, got {other}"), name)),
        }
    }

    pub(super) fn string(&mut self, name: &'static str) -> Result<Option<String>, OpenAiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(OpenAiError::invalid(format!("'{name}' must be a string, got {other}"), name)),
        }
    }

    /// A parameter kiln accepts only at its no-op value (`allowed`).
    fn only(&mut self, name: &'static str, allowed: &[Value], what: &str) -> Result<(), OpenAiError> {
        match self.take(name) {
            Some(v) if !allowed.contains(&v) => {
                Err(OpenAiError::invalid(format!("'{name}' = {v} is not supported: {what}"), name))
            }
            _ => Ok(()),
        }
    }

    /// Refuses whatever no `take` consumed.
    pub(super) fn finish(self) -> Result<(), OpenAiError> {
        match self.0.keys().next() {
            None => Ok(()),
            Some(key) => Err(OpenAiError {
                error: ApiError::bad_request(format!("unrecognized request argument: '{key}'")),
                param: None,
            }),
        }
    }
}

/// What both endpoints share: sampling, stop strings, streaming, the response format; tools
/// for chat.
pub(super) struct Options {
    pub params: GenerateParams,
    pub stream: bool,
    pub include_usage: bool,
    /// `response_format` other than text.
    pub format: Option<Grammar>,
    pub tools: Vec<Tool>,
    pub tool_choice: ToolChoice,
    pub parallel_tool_calls: bool,
    /// Choices to generate (`n`), each in a sequence slot of its own.
    pub n: usize,
}

impl Options {
    /// Tools are offered to the model (some were given and `tool_choice` is not `none`).
    pub fn tools_offered(&self) -> bool {
        !self.tools.is_empty() && self.tool_choice != ToolChoice::None
    }
}

/// The penalties, biases and llama.cpp's filters (kiln-llm's one parser, shared with the Python
/// bridge).
fn shaping(fields: &mut Fields) -> Result<Shaping, OpenAiError> {
    kiln_llm::request::shaping(|name| fields.take(name)).map_err(param_error)
}

/// Refuses `logit_bias` token ids outside the model's vocabulary.
pub(super) fn check_logit_bias(options: &Options, vocab_size: usize) -> Result<(), OpenAiError> {
    kiln_llm::request::check_logit_bias(&options.params.shaping, vocab_size).map_err(param_error)
}

pub(super) fn options(fields: &mut Fields, api: Api) -> Result<Options, OpenAiError> {
    // OpenAI's newer name wins when a client sends both.
    let legacy = fields.integer("max_tokens", 1)?;
    let max_tokens = fields.integer("max_completion_tokens", 1)?.or(legacy);
    let temperature = fields.number("temperature", 0.0..=2.0)?;
    let top_p = fields.number("top_p", 0.0..=1.0)?;
    if top_p == Some(0.0) {
        return Err(OpenAiError::invalid("'top_p' must be greater than 0", "top_p"));
    }
    // OpenAI's seed is any 64-bit integer; llama.cpp's is 32 bits: fold, keeping both halves.
    let seed = match fields.take("seed") {
        None => None,
        Some(Value::Number(n)) if n.as_i64().is_some() => {
            let bits = n.as_i64().unwrap_or_default() as u64;
            Some((bits ^ (bits >> 32)) as u32)
        }
        Some(other) => return Err(OpenAiError::invalid(format!("'seed' must be an integer, got {other}"), "seed")),
    };
    let stop = match fields.take("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) if items.len() <= 4 => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(OpenAiError::invalid(format!("'stop' holds strings, got {other}"), "stop")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(OpenAiError::invalid("'stop' must be a string or a list of up to 4 strings", "stop")),
    };
    let stream = fields.boolean("stream")?.unwrap_or(false);
    let include_usage = match fields.take("stream_options") {
        None => false,
        Some(Value::Object(mut o)) => {
            let include = match o.remove("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => b,
                Some(other) => {
                    return Err(OpenAiError::invalid(
                        format!("'stream_options.include_usage' must be true or false, got {other}"),
                        "stream_options",
                    ));
                }
            };
            if let Some(key) = o.keys().next() {
                return Err(OpenAiError::invalid(format!("'stream_options.{key}' is not supported"), "stream_options"));
            }
            if !stream {
                return Err(OpenAiError::invalid("'stream_options' needs 'stream': true", "stream_options"));
            }
            include
        }
        Some(other) => {
            return Err(OpenAiError::invalid(
                format!("'stream_options' must be an object, got {other}"),
                "stream_options",
            ));
        }
    };
    let n = fields.integer("n", 1)?.unwrap_or(1);
    if n > MAX_CHOICES {
        return Err(OpenAiError::invalid(format!("'n' must be at most {MAX_CHOICES}, got {n}"), "n"));
    }
    let shaping = shaping(fields)?;
    let logprobs = match api {
        Api::Chat => {
            let wanted = fields.boolean("logprobs")?.unwrap_or(false);
            let top = fields.integer("top_logprobs", 0)?;
            match (wanted, top) {
                (_, Some(k)) if k > MAX_TOP_LOGPROBS as i64 => {
                    return Err(OpenAiError::invalid(
                        format!("'top_logprobs' must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
                        "top_logprobs",
                    ));
                }
                (false, Some(_)) => {
                    return Err(OpenAiError::invalid("'top_logprobs' needs 'logprobs': true", "top_logprobs"));
                }
                (true, top) => Some(top.unwrap_or(0) as usize),
                (false, None) => None,
            }
        }
        Api::Completion => match fields.integer("logprobs", 0)? {
            Some(k) if k > MAX_COMPLETION_LOGPROBS => {
                return Err(OpenAiError::invalid(
                    format!("'logprobs' must be between 0 and {MAX_COMPLETION_LOGPROBS}, got {k}"),
                    "logprobs",
                ));
            }
            k => k.map(|k| k as usize),
        },
    };
    match api {
        Api::Chat => {
            for name in ["functions", "function_call"] {
                if fields.take(name).is_some() {
                    return Err(OpenAiError::invalid(
                        format!("'{name}' is OpenAI's deprecated form: send 'tools' and 'tool_choice'"),
                        name,
                    ));
                }
            }
        }
        Api::Completion => {
            fields.only("echo", &[json!(false)], "the prompt is not repeated")?;
            fields.only("best_of", &[json!(1)], "kiln generates one choice per request")?;
            fields.only("suffix", &[], "insertion is not supported")?;
        }
    }
    // Accepted and not used, as OpenAI's own server treats them for this purpose.
    let _ = fields.string("user")?;
    let format = response_format(fields.take("response_format")).map_err(param_error)?;
    let (tools, tool_choice, parallel_tool_calls) = match api {
        Api::Chat => {
            let tools = tool_list(fields.take("tools")).map_err(param_error)?;
            let choice = tool_choice(fields.take("tool_choice"), &tools).map_err(param_error)?;
            // One call per answer unless asked (as llama.cpp's server): small models repeat a call
            // when more may follow.
            let parallel = fields.boolean("parallel_tool_calls")?.unwrap_or(false);
            (tools, choice, parallel)
        }
        Api::Completion => (Vec::new(), ToolChoice::None, false),
    };
    Ok(Options {
        params: GenerateParams {
            max_tokens: max_tokens.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            temperature: temperature.map(|t| t as f32),
            top_p: top_p.map(|p| p as f32),
            seed,
            stop,
            constraint: None,
            shaping,
            logprobs,
        },
        stream,
        include_usage,
        format,
        tools,
        tool_choice,
        parallel_tool_calls,
        n: n as usize,
    })
}
