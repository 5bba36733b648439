//! A request body's fields, parsed one by one into what the engine takes: sampling, stop
//! strings, streaming, the response format, tools and the messages. Whatever no parser took is
//! an unknown parameter, refused by name.

use kiln_engine::kiln_llm::tools::{self, Tool, ToolChoice};
use kiln_engine::kiln_llm::{self, GenerateParams, Grammar, Message};
use serde_json::{Map, Value, json};

use super::Api;
use crate::error::{ApiError, OpenAiError};

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

    fn boolean(&mut self, name: &'static str) -> Result<Option<bool>, OpenAiError> {
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
}

impl Options {
    /// Tools are offered to the model (some were given and `tool_choice` is not `none`).
    pub fn tools_offered(&self) -> bool {
        !self.tools.is_empty() && self.tool_choice != ToolChoice::None
    }
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
    fields.only("n", &[json!(1)], "kiln generates one choice per request; send several requests")?;
    fields.only("presence_penalty", &[json!(0), json!(0.0)], "kiln applies no penalties")?;
    fields.only("frequency_penalty", &[json!(0), json!(0.0)], "kiln applies no penalties")?;
    fields.only("logit_bias", &[json!({})], "kiln applies no logit bias")?;
    match api {
        Api::Chat => {
            fields.only("logprobs", &[json!(false)], "log probabilities are not returned")?;
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
            fields.only("logprobs", &[json!(0)], "log probabilities are not returned")?;
            fields.only("echo", &[json!(false)], "the prompt is not repeated")?;
            fields.only("best_of", &[json!(1)], "kiln generates one choice per request")?;
            fields.only("suffix", &[], "insertion is not supported")?;
        }
    }
    // Accepted and not used, as OpenAI's own server treats them for this purpose.
    let _ = fields.string("user")?;
    let format = response_format(fields.take("response_format"))?;
    let (tools, tool_choice, parallel_tool_calls) = match api {
        Api::Chat => {
            let tools = tool_list(fields.take("tools"))?;
            let choice = tool_choice(fields.take("tool_choice"), &tools)?;
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
        },
        stream,
        include_usage,
        format,
        tools,
        tool_choice,
        parallel_tool_calls,
    })
}

/// `response_format`: text, any JSON object, or JSON valid against a schema.
fn response_format(value: Option<Value>) -> Result<Option<Grammar>, OpenAiError> {
    let bad = |why: String| OpenAiError::invalid(why, "response_format");
    let Some(value) = value else { return Ok(None) };
    let Value::Object(mut format) = value else {
        return Err(bad(format!("'response_format' must be an object, got {value}")));
    };
    let kind = match format.remove("type") {
        Some(Value::String(t)) => t,
        _ => return Err(bad("'response_format.type' is required: text, json_object or json_schema".into())),
    };
    let grammar = match kind.as_str() {
        "text" => None,
        "json_object" => Some(Grammar::JsonObject),
        "json_schema" => {
            let Some(Value::Object(mut spec)) = format.remove("json_schema") else {
                return Err(
                    bad("'response_format.json_schema' is required: {\"name\": ..., \"schema\": {...}}".into()),
                );
            };
            let schema = match spec.remove("schema") {
                Some(schema @ Value::Object(_)) => schema,
                Some(other) => {
                    return Err(bad(format!("'response_format.json_schema.schema' must be an object, got {other}")));
                }
                None => return Err(bad("'response_format.json_schema.schema' is required".into())),
            };
            for (key, value) in spec {
                match (key.as_str(), &value) {
                    ("name" | "description", Value::String(_)) | ("strict", Value::Bool(_) | Value::Null) => {}
                    ("name" | "description" | "strict", _) => {
                        return Err(bad(format!("'response_format.json_schema.{key}' has the wrong type: {value}")));
                    }
                    _ => return Err(bad(format!("'response_format.json_schema.{key}' is not a known field"))),
                }
            }
            // kiln always enforces the schema; `strict: false` asks for less, never for more.
            Some(Grammar::JsonSchema(schema))
        }
        other => {
            return Err(bad(format!(
                "'response_format.type' = '{other}' is not one of text, json_object, json_schema"
            )));
        }
    };
    if let Some(key) = format.keys().next() {
        return Err(bad(format!("'response_format.{key}' is not a known field")));
    }
    Ok(grammar)
}

/// `tools`: functions with a name, a description and a parameters schema.
fn tool_list(value: Option<Value>) -> Result<Vec<Tool>, OpenAiError> {
    let items = match value {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(OpenAiError::invalid(format!("'tools' must be a list, got {other}"), "tools")),
    };
    let mut tools: Vec<Tool> = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let bad = |why: String| OpenAiError::invalid(format!("tools[{i}]: {why}"), "tools");
        let Value::Object(mut tool) = item else { return Err(bad("must be an object".into())) };
        match tool.remove("type") {
            Some(Value::String(t)) if t == "function" => {}
            Some(other) => return Err(bad(format!("'type' must be \"function\", got {other}"))),
            None => return Err(bad("'type' is required (\"function\")".into())),
        }
        let Some(Value::Object(mut function)) = tool.remove("function") else {
            return Err(bad("'function' is required: {\"name\": ..., \"parameters\": {...}}".into()));
        };
        if let Some(key) = tool.keys().next() {
            return Err(bad(format!("'{key}' is not a known field")));
        }
        let name = match function.remove("name") {
            Some(Value::String(n)) => n,
            _ => return Err(bad("'function.name' is required".into())),
        };
        tools::check_name(&name).map_err(|e| bad(format!("function.name {e}")))?;
        if tools.iter().any(|t| t.name == name) {
            return Err(bad(format!("two tools are named '{name}'")));
        }
        let description = match function.remove("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d),
            Some(other) => return Err(bad(format!("'function.description' must be a string, got {other}"))),
        };
        let parameters = tools::parameters_schema(function.remove("parameters").filter(|v| !v.is_null()))
            .map_err(|e| bad(format!("function.{e}")))?;
        match function.remove("strict") {
            None | Some(Value::Null | Value::Bool(_)) => {}
            Some(other) => return Err(bad(format!("'function.strict' must be true or false, got {other}"))),
        }
        if let Some(key) = function.keys().next() {
            return Err(bad(format!("'function.{key}' is not a known field")));
        }
        tools.push(Tool { name, description, parameters });
    }
    Ok(tools)
}

/// `tool_choice`: `auto` (the default with tools), `none`, `required` or one named function.
fn tool_choice(value: Option<Value>, tools: &[Tool]) -> Result<ToolChoice, OpenAiError> {
    let bad = |why: String| OpenAiError::invalid(why, "tool_choice");
    let choice = match value {
        None => return Ok(if tools.is_empty() { ToolChoice::None } else { ToolChoice::Auto }),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => return Err(bad(format!("'tool_choice' = '{other}' is not auto, none, required or a function"))),
        },
        Some(Value::Object(o)) => {
            let name = o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
            match (o.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(name)) => ToolChoice::Function(name.to_string()),
                _ => {
                    return Err(bad(
                        "a named 'tool_choice' is {\"type\": \"function\", \"function\": {\"name\": ...}}".into(),
                    ));
                }
            }
        }
        Some(other) => return Err(bad(format!("'tool_choice' must be a string or an object, got {other}"))),
    };
    match &choice {
        ToolChoice::None => {}
        _ if tools.is_empty() => return Err(bad("'tool_choice' needs 'tools'".into())),
        ToolChoice::Function(name) if !tools.iter().any(|t| &t.name == name) => {
            return Err(bad(format!("'tool_choice' names '{name}', which is not among the tools")));
        }
        _ => {}
    }
    Ok(choice)
}

/// `messages`: roles the template knows, text content (a string or text parts); an assistant's
/// earlier `tool_calls` and `tool` results, written the way kiln offers tools to the model.
pub(super) fn messages(value: Option<Value>) -> Result<Vec<Message>, OpenAiError> {
    let items = match value {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => return Err(OpenAiError::invalid("'messages' is empty", "messages")),
        None => return Err(OpenAiError::invalid("'messages' is required", "messages")),
        Some(other) => return Err(OpenAiError::invalid(format!("'messages' must be a list, got {other}"), "messages")),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let bad = |why: String| OpenAiError::invalid(format!("messages[{i}]: {why}"), "messages");
            let Value::Object(mut m) = item else { return Err(bad("must be an object".into())) };
            let role = match m.remove("role") {
                Some(Value::String(r)) => r,
                _ => return Err(bad("'role' is required (system, user, assistant or tool)".into())),
            };
            // OpenAI's newer name for the system role.
            let role = if role == "developer" { "system".to_string() } else { role };
            if !kiln_llm::ROLES.contains(&role.as_str()) && role != "tool" {
                return Err(bad(format!("role '{role}' is not supported (system, user, assistant or tool)")));
            }
            let calls = match m.remove("tool_calls") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(calls)) if role == "assistant" => calls
                    .iter()
                    .enumerate()
                    .map(|(k, c)| earlier_call(c).map_err(|e| bad(format!("tool_calls[{k}]: {e}"))))
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err(bad("'tool_calls' is a list, on assistant messages only".into())),
            };
            let content = match m.remove("content") {
                Some(Value::String(s)) => s,
                Some(Value::Array(parts)) => parts
                    .into_iter()
                    .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(text)) => Ok(text.to_string()),
                        _ => Err(bad(format!("only text content parts are supported, got {p}"))),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join(""),
                None | Some(Value::Null) if !calls.is_empty() => String::new(),
                None | Some(Value::Null) => return Err(bad("'content' is required".into())),
                Some(other) => return Err(bad(format!("'content' must be a string, got {other}"))),
            };
            m.remove("name");
            if role == "tool" {
                match m.remove("tool_call_id") {
                    Some(Value::String(_)) | None => {}
                    Some(other) => return Err(bad(format!("'tool_call_id' must be a string, got {other}"))),
                }
            }
            if let Some(key) = m.keys().next() {
                return Err(bad(format!("'{key}' is not supported")));
            }
            let content = if calls.is_empty() {
                content
            } else {
                let calls = calls.join("\n");
                if content.is_empty() { calls } else { format!("{content}\n{calls}") }
            };
            Ok(Message { role, content })
        })
        .collect()
}

/// An assistant's earlier call, as the model wrote it.
fn earlier_call(call: &Value) -> Result<String, String> {
    let function = call.get("function").ok_or("'function' is required")?;
    let name = function.get("name").and_then(Value::as_str).ok_or("'function.name' is required")?;
    let arguments = match function.get("arguments") {
        Some(Value::String(a)) => a.clone(),
        None | Some(Value::Null) => "{}".to_string(),
        Some(other) => return Err(format!("'function.arguments' is a JSON string, got {other}")),
    };
    Ok(tools::render_call(name, &arguments))
}
