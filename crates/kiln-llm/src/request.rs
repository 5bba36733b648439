//! OpenAI's chat request shapes as kiln-llm's types: `messages` (with earlier tool calls and
//! tool results), `response_format`, `tools` and `tool_choice`, each checked with an error that
//! names the parameter — shared by the server's `/v1/chat/completions` and the Python bridge's
//! `kiln.LLM`. JSON in, types out: no transport.

use serde_json::Value;

use crate::constraint::Grammar;
use crate::tools::{self, Tool, ToolChoice};
use crate::{Constraint, LlmError, LlmModel, Message};

/// A refused parameter: what is wrong, and which request field (OpenAI's `param`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParamError {
    pub message: String,
    pub param: &'static str,
}

impl ParamError {
    pub fn invalid(message: impl Into<String>, param: &'static str) -> Self {
        ParamError { message: message.into(), param }
    }
}

/// What the answer must follow: the response format, or — tools offered — the tool-call grammar
/// (whose text alternative is the response format's schema when there is one).
pub fn answer_grammar(
    format: Option<&Grammar>,
    tools: &[Tool],
    choice: &ToolChoice,
    parallel: bool,
    syntax: tools::ToolSyntax,
) -> Option<Grammar> {
    if tools.is_empty() || *choice == ToolChoice::None {
        return format.cloned();
    }
    let answer = match format {
        Some(Grammar::JsonObject) => Some(serde_json::json!({"type": "object"})),
        Some(Grammar::JsonSchema(schema)) => Some(schema.clone()),
        _ => None,
    };
    tools::grammar(tools, choice, parallel, answer.as_ref(), syntax)
}

impl LlmModel {
    /// Compiles [`answer_grammar`] for this model. A schema llguidance cannot enforce is a
    /// [`ParamError`] naming where it is: `response_format`, or which tool's parameters.
    /// CPU work: call it off the async executor.
    pub fn compile_answer(
        &self,
        format: Option<&Grammar>,
        tools: &[Tool],
        choice: &ToolChoice,
        parallel: bool,
    ) -> Result<Option<Constraint>, ParamError> {
        let Some(grammar) = answer_grammar(format, tools, choice, parallel, self.tool_syntax()) else {
            return Ok(None);
        };
        let offered = !tools.is_empty() && *choice != ToolChoice::None;
        let invalid = |param: &'static str, at: String, e: LlmError| {
            ParamError::invalid(format!("{at} cannot be enforced: {e}"), param)
        };
        if offered {
            // The grammar holds every schema: check each alone first, to say which failed.
            for (i, tool) in tools.iter().enumerate() {
                tools::check_tool(self, tool)
                    .map_err(|e| invalid("tools", format!("tools[{i}].function.parameters"), e))?;
            }
            if let Some(format) = format {
                self.constrain(format).map_err(|e| invalid("response_format", "response_format".into(), e))?;
            }
        }
        let param = if offered { "tools" } else { "response_format" };
        self.constrain(&grammar).map(Some).map_err(|e| invalid(param, param.into(), e))
    }
}

/// `response_format`: text, any JSON object, or JSON valid against a schema.
pub fn response_format(value: Option<Value>) -> Result<Option<Grammar>, ParamError> {
    let bad = |why: String| ParamError::invalid(why, "response_format");
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
pub fn tool_list(value: Option<Value>) -> Result<Vec<Tool>, ParamError> {
    let items = match value {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(ParamError::invalid(format!("'tools' must be a list, got {other}"), "tools")),
    };
    let mut tools: Vec<Tool> = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let bad = |why: String| ParamError::invalid(format!("tools[{i}]: {why}"), "tools");
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
pub fn tool_choice(value: Option<Value>, tools: &[Tool]) -> Result<ToolChoice, ParamError> {
    let bad = |why: String| ParamError::invalid(why, "tool_choice");
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
pub fn messages(value: Option<Value>) -> Result<Vec<Message>, ParamError> {
    let items = match value {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => return Err(ParamError::invalid("'messages' is empty", "messages")),
        None => return Err(ParamError::invalid("'messages' is required", "messages")),
        Some(other) => return Err(ParamError::invalid(format!("'messages' must be a list, got {other}"), "messages")),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let bad = |why: String| ParamError::invalid(format!("messages[{i}]: {why}"), "messages");
            let Value::Object(mut m) = item else { return Err(bad("must be an object".into())) };
            let role = match m.remove("role") {
                Some(Value::String(r)) => r,
                _ => return Err(bad("'role' is required (system, user, assistant or tool)".into())),
            };
            // OpenAI's newer name for the system role.
            let role = if role == "developer" { "system".to_string() } else { role };
            if !crate::ROLES.contains(&role.as_str()) && role != "tool" {
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
            let (content, parts) = match m.remove("content") {
                Some(Value::String(s)) => (s, Vec::new()),
                Some(Value::Array(parts)) => {
                    let parts = parts
                        .into_iter()
                        .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                            (Some("text"), Some(text)) => Ok(text.to_string()),
                            _ => Err(bad(format!("only text content parts are supported, got {p}"))),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    (parts.concat(), parts)
                }
                None | Some(Value::Null) if !calls.is_empty() => (String::new(), Vec::new()),
                None | Some(Value::Null) => return Err(bad("'content' is required".into())),
                Some(other) => return Err(bad(format!("'content' must be a string, got {other}"))),
            };
            let name = match m.remove("name") {
                None | Some(Value::Null) => None,
                Some(Value::String(n)) => Some(n),
                Some(other) => return Err(bad(format!("'name' must be a string, got {other}"))),
            };
            let mut tool_call_id = None;
            if role == "tool" {
                match m.remove("tool_call_id") {
                    Some(Value::String(id)) => tool_call_id = Some(id),
                    // OpenAI refuses a tool result that does not say which call it answers.
                    None | Some(Value::Null) => {
                        return Err(bad(
                            "'tool_call_id' is required on a tool message (the id of the call it answers)".into(),
                        ));
                    }
                    Some(other) => return Err(bad(format!("'tool_call_id' must be a string, got {other}"))),
                }
            }
            if let Some(key) = m.keys().next() {
                return Err(bad(format!("'{key}' is not supported")));
            }
            Ok(Message { role, content, parts, tool_calls: calls, tool_call_id, name })
        })
        .collect()
}

/// `chat_template_kwargs` (llama.cpp's server and vLLM's extension): more variables for the chat
/// template, such as `enable_thinking`; the ones kiln sets cannot be replaced.
pub fn template_kwargs(value: Option<Value>) -> Result<crate::template::TemplateKwargs, ParamError> {
    let param = "chat_template_kwargs";
    match value {
        None | Some(Value::Null) => Ok(Default::default()),
        Some(Value::Object(map)) => {
            match map.keys().find(|k| crate::template::RESERVED_VARIABLES.contains(&k.as_str())) {
                Some(key) => {
                    Err(ParamError::invalid(format!("'{param}.{key}' is set by kiln and cannot be replaced"), param))
                }
                None => Ok(map),
            }
        }
        Some(other) => Err(ParamError::invalid(format!("'{param}' must be an object, got {other}"), param)),
    }
}

/// The names [`shaping`] reads.
pub const SHAPING: [&str; 6] =
    ["presence_penalty", "frequency_penalty", "repeat_penalty", "top_k", "min_p", "logit_bias"];

/// OpenAI's `presence_penalty`, `frequency_penalty` and `logit_bias`, and llama.cpp's
/// `repeat_penalty`, `top_k` and `min_p`, as the server and the Python bridge take them (`None`
/// or JSON null: not set). Token ids are checked against the vocabulary by [`check_logit_bias`].
pub fn shaping(mut get: impl FnMut(&'static str) -> Option<Value>) -> Result<crate::Shaping, ParamError> {
    let mut number = |name: &'static str, low: f64, high: f64| -> Result<Option<f32>, ParamError> {
        match get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if (low..=high).contains(&x) => Ok(Some(x as f32)),
                _ => Err(ParamError::invalid(format!("'{name}' must be between {low} and {high}, got {n}"), name)),
            },
            Some(other) => Err(ParamError::invalid(format!("'{name}' must be a number, got {other}"), name)),
        }
    };
    let presence_penalty = number("presence_penalty", -2.0, 2.0)?;
    let frequency_penalty = number("frequency_penalty", -2.0, 2.0)?;
    let repeat_penalty = number("repeat_penalty", 0.0, 10.0)?;
    if repeat_penalty == Some(0.0) {
        return Err(ParamError::invalid("'repeat_penalty' must be greater than 0 (1 = none)", "repeat_penalty"));
    }
    let min_p = number("min_p", 0.0, 1.0)?;
    let top_k = match get("top_k") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(k) => Some(u32::try_from(k).unwrap_or(u32::MAX)),
            None => {
                return Err(ParamError::invalid(format!("'top_k' must be an integer of at least 0, got {n}"), "top_k"));
            }
        },
        Some(other) => return Err(ParamError::invalid(format!("'top_k' must be an integer, got {other}"), "top_k")),
    };
    let logit_bias = match get("logit_bias") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(map)) => {
            if map.len() > 1024 {
                return Err(ParamError::invalid("'logit_bias' holds at most 1024 tokens", "logit_bias"));
            }
            let mut out = Vec::with_capacity(map.len());
            for (key, value) in map {
                let token = key.parse::<i32>().ok().filter(|t| *t >= 0).ok_or_else(|| {
                    ParamError::invalid(format!("'logit_bias' keys are token ids, not '{key}'"), "logit_bias")
                })?;
                let bias = value.as_f64().filter(|b| (-100.0..=100.0).contains(b)).ok_or_else(|| {
                    ParamError::invalid(
                        format!("'logit_bias.{key}' must be a number from -100 to 100, got {value}"),
                        "logit_bias",
                    )
                })?;
                out.push((token, bias as f32));
            }
            out
        }
        Some(other) => {
            return Err(ParamError::invalid(
                format!("'logit_bias' must be an object of token ids to biases, got {other}"),
                "logit_bias",
            ));
        }
    };
    Ok(crate::Shaping { presence_penalty, frequency_penalty, repeat_penalty, top_k, min_p, logit_bias })
}

/// Refuses `logit_bias` token ids outside a vocabulary of `vocab_size` tokens.
pub fn check_logit_bias(shaping: &crate::Shaping, vocab_size: usize) -> Result<(), ParamError> {
    match shaping.logit_bias.iter().find(|(t, _)| usize::try_from(*t).is_ok_and(|t| t >= vocab_size)) {
        Some((token, _)) => Err(ParamError::invalid(
            format!("'logit_bias': token {token} is not in the model's vocabulary of {vocab_size} tokens"),
            "logit_bias",
        )),
        None => Ok(()),
    }
}

/// An assistant's earlier call.
fn earlier_call(call: &Value) -> Result<tools::ToolCall, tools::ToolError> {
    use tools::ToolError;
    let function = call.get("function").ok_or(ToolError::Missing("function"))?;
    let name = function.get("name").and_then(Value::as_str).ok_or(ToolError::Missing("function.name"))?;
    let arguments = match function.get("arguments") {
        Some(Value::String(a)) => a.clone(),
        None | Some(Value::Null) => "{}".to_string(),
        Some(other) => return Err(ToolError::ArgumentsNotText(other.clone())),
    };
    let id = call.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    Ok(tools::ToolCall { name: name.to_string(), arguments, id, source: Some(call.clone()) })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn response_formats() {
        assert_eq!(response_format(None), Ok(None));
        assert_eq!(response_format(Some(json!({"type": "text"}))), Ok(None));
        assert_eq!(response_format(Some(json!({"type": "json_object"}))), Ok(Some(Grammar::JsonObject)));
        let schema = json!({"type": "object"});
        assert_eq!(
            response_format(Some(json!({"type": "json_schema",
                "json_schema": {"name": "x", "strict": true, "schema": schema}}))),
            Ok(Some(Grammar::JsonSchema(schema)))
        );
        for (bad, words) in [
            (json!("json"), "must be an object"),
            (json!({"type": "yaml"}), "'yaml'"),
            (json!({"type": "json_schema"}), "json_schema' is required"),
            (json!({"type": "json_schema", "json_schema": {"schema": []}}), "must be an object"),
            (json!({"type": "json_schema", "json_schema": {"schema": {}, "strict": "yes"}}), "strict"),
            (json!({"type": "json_object", "extra": 1}), "extra"),
        ] {
            let e = response_format(Some(bad.clone())).unwrap_err();
            assert_eq!(e.param, "response_format");
            assert!(e.message.contains(words), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn tools_and_choices() {
        let tools = tool_list(Some(json!([{"type": "function", "function": {"name": "f", "description": "d"}}])))
            .expect("a tool");
        assert_eq!(tools[0].parameters["type"], "object");
        assert_eq!(tool_choice(None, &tools), Ok(ToolChoice::Auto));
        assert_eq!(tool_choice(None, &[]), Ok(ToolChoice::None));
        assert_eq!(
            tool_choice(Some(json!({"type": "function", "function": {"name": "f"}})), &tools),
            Ok(ToolChoice::Function("f".into()))
        );
        assert!(tool_choice(Some(json!("required")), &[]).unwrap_err().message.contains("needs 'tools'"));
        assert!(tool_choice(Some(json!({"type": "function", "function": {"name": "g"}})), &tools).is_err());
        let e = tool_list(Some(json!([{"type": "function", "function": {"name": "f"}},
                                      {"type": "function", "function": {"name": "f"}}])))
        .unwrap_err();
        assert!(e.message.starts_with("tools[1]: two tools"), "{}", e.message);
        let e =
            tool_list(Some(json!([{"type": "function", "function": {"name": "f", "parameters": []}}]))).unwrap_err();
        assert!(e.message.contains("tools[0]: function.'parameters'"), "{}", e.message);
    }

    #[test]
    fn a_tool_result_must_name_its_call() {
        let e = messages(Some(json!([{"role": "user", "content": "hi"}, {"role": "tool", "content": "-3 C"}])))
            .unwrap_err();
        assert_eq!(e.param, "messages");
        assert_eq!(
            e.message,
            "messages[1]: 'tool_call_id' is required on a tool message (the id of the call it answers)"
        );
    }

    #[test]
    fn messages_with_calls_and_results() {
        let m = messages(Some(json!([
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "in Oslo?"}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "-3 C"},
        ])))
        .expect("messages");
        assert_eq!(m[0].role, "system");
        assert_eq!(m[1].content, "Weather in Oslo?");
        assert_eq!(m[1].parts, ["Weather ", "in Oslo?"]);
        assert_eq!(m[2].tool_calls[0].name, "w");
        assert_eq!(m[2].tool_calls[0].id, "c1");
        assert_eq!(m[3].tool_call_id.as_deref(), Some("c1"));
        assert_eq!(m[3].role, "tool");
        for bad in [
            json!([]),
            json!([{"role": "robot", "content": "x"}]),
            json!([{"role": "user"}]),
            json!([{"role": "user", "content": "x", "tool_calls": []}]),
        ] {
            assert_eq!(messages(Some(bad)).unwrap_err().param, "messages");
        }
    }
}
