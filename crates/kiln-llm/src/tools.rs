//! Tool calling. A chat template that takes `tools` renders them (and earlier calls and results)
//! itself, and the model answers in its family's call syntax ([`ToolSyntax`]); for a template
//! that does not, the tools are described in the system prompt and a call is text in the Hermes
//! form many open models are trained on:
//!
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! ```
//!
//! [`grammar`] builds the Lark grammar that makes a call well-formed in the syntax — a declared
//! name, arguments valid against that tool's parameters schema — so a call always parses. The
//! model decides whether to call (`auto`); kiln never runs a tool. [`parse`] reads a finished
//! answer and [`CallStream`] a streamed one, piece by piece, as OpenAI's tool-call deltas.

use serde_json::{Value, json};

use crate::constraint::{Grammar, json_layout};
pub use crate::tool_syntax::ToolSyntax;
use crate::{LlmError, Message};

/// Most calls in one answer with `parallel_tool_calls`: a small model that repeats a call stops
/// there, not at `max_tokens` in the middle of one.
pub const MAX_CALLS: usize = 8;

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// A JSON schema of an object: the arguments.
    pub parameters: Value,
}

/// OpenAI's `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// The model answers with text or calls.
    #[default]
    Auto,
    /// The model answers with text; the tools are not offered.
    None,
    /// The model calls one or more tools.
    Required,
    /// The model calls this tool.
    Function(String),
}

/// A call found in the model's answer, or an assistant's earlier call in a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as JSON text (what OpenAI's `function.arguments` carries).
    pub arguments: String,
    /// The caller's id of an earlier call (empty for a new one).
    pub id: String,
    /// An earlier call as the request wrote it (a template sees its keys in their order).
    pub source: Option<Value>,
}

/// A tool or an earlier tool call that a request describes wrongly (the caller prefixes where).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    #[error("'{0}' is not a function name (1 to 64 of a-z, A-Z, 0-9, _ and -)")]
    BadName(String),
    #[error("'parameters' must describe an object (\"type\": \"object\"), not {0}")]
    NotAnObject(Value),
    #[error("'parameters' must be a JSON schema object, got {0}")]
    NotASchema(Value),
    #[error("'{0}' is required")]
    Missing(&'static str),
    #[error("'function.arguments' is a JSON string, got {0}")]
    ArgumentsNotText(Value),
}

/// OpenAI's rule for function names, which keeps them safe inside the grammar's literals.
pub fn check_name(name: &str) -> Result<(), ToolError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(ToolError::BadName(name.to_string())) }
}

/// A tool's parameters as the grammar uses them: no schema is an object without fields; a
/// schema must describe an object.
pub fn parameters_schema(parameters: Option<Value>) -> Result<Value, ToolError> {
    match parameters {
        None => Ok(json!({"type": "object", "properties": {}, "additionalProperties": false})),
        Some(Value::Object(schema)) => match schema.get("type") {
            None => Ok(Value::Object(schema)),
            Some(Value::String(t)) if t == "object" => Ok(Value::Object(schema)),
            Some(other) => Err(ToolError::NotAnObject(other.clone())),
        },
        Some(other) => Err(ToolError::NotASchema(other)),
    }
}

/// The system-prompt text that offers `tools` to the model.
pub fn instructions(tools: &[Tool]) -> String {
    let mut text =
        String::from("You can call functions to answer. They are described here as JSON schemas:\n<tools>\n");
    for tool in tools {
        let mut function = serde_json::Map::new();
        function.insert("name".into(), json!(tool.name));
        if let Some(d) = &tool.description {
            function.insert("description".into(), json!(d));
        }
        function.insert("parameters".into(), tool.parameters.clone());
        text.push_str(&json!({"type": "function", "function": function}).to_string());
        text.push('\n');
    }
    text.push_str(
        "</tools>\nTo call a function, answer only with\n<tool_call>\n{\"name\": <function name>, \"arguments\": \
         <the arguments as a JSON object>}\n</tool_call>\nOtherwise answer the user directly.",
    );
    text
}

/// The conversation as the chat template sees it when tools are in play: the tool offer joins
/// the system message (or becomes one), an assistant's earlier calls are written as calls, and
/// tool results become a user message of `<tool_response>` blocks (consecutive results
/// together).
pub fn conversation(messages: Vec<Message>, tools: &[Tool]) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len() + 1);
    let mut messages = messages.into_iter().peekable();
    if !tools.is_empty() {
        let offer = instructions(tools);
        let content = match messages.next_if(|m| m.role == "system") {
            Some(system) => format!("{}\n\n{offer}", system.content),
            None => offer,
        };
        out.push(Message::new("system", content));
    }
    let mut previous_was_tool = false;
    for mut message in messages {
        if !message.tool_calls.is_empty() {
            let calls: Vec<String> =
                std::mem::take(&mut message.tool_calls).iter().map(|c| render_call(&c.name, &c.arguments)).collect();
            let calls = calls.join("\n");
            message.content = if message.content.is_empty() { calls } else { format!("{}\n{calls}", message.content) };
            message.parts.clear();
        }
        let is_tool = message.role == "tool";
        if is_tool {
            let block = format!("<tool_response>\n{}\n</tool_response>", message.content);
            match out.last_mut() {
                Some(last) if previous_was_tool => {
                    last.content.push('\n');
                    last.content.push_str(&block);
                }
                _ => out.push(Message::new("user", block)),
            }
        } else {
            out.push(message);
        }
        previous_was_tool = is_tool;
    }
    out
}

/// An earlier call, as the assistant's text in the conversation (Hermes form).
pub fn render_call(name: &str, arguments: &str) -> String {
    let arguments = serde_json::from_str::<Value>(arguments)
        .map(|v| crate::constraint::to_layout(&v))
        .unwrap_or_else(|_| arguments.to_string());
    let p = ToolSyntax::Hermes.parts();
    format!("{}{name}{}{arguments}{}", p.call_open, p.args_key, p.call_close)
}

/// Lark string literal (JSON string syntax).
fn literal(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

/// The grammar of an answer under `choice`, calls in `syntax`: `None` when the model answers
/// freely. `answer` is the grammar of a text answer when `auto` lets the model choose (a
/// response format's JSON schema), `None` for free text.
pub fn grammar(
    tools: &[Tool],
    choice: &ToolChoice,
    parallel: bool,
    answer: Option<&Value>,
    syntax: ToolSyntax,
) -> Option<Grammar> {
    let offered: Vec<&Tool> = match choice {
        ToolChoice::None => return None,
        ToolChoice::Function(name) => tools.iter().filter(|t| &t.name == name).collect(),
        ToolChoice::Auto | ToolChoice::Required => tools.iter().collect(),
    };
    if offered.is_empty() {
        return None;
    }
    let p = syntax.parts();
    let mut lark = String::new();
    // Up to MAX_CALLS calls, separated (nested optionals: plain Lark).
    let more = if parallel { MAX_CALLS - 1 } else { 0 };
    let separated = format!(" ({} call", literal(p.separator));
    let mut calls = format!("call{}{}", separated.repeat(more), ")?".repeat(more));
    for (edge, before) in [(p.open, true), (p.close, false)] {
        if !edge.is_empty() {
            calls = if before { format!("{} {calls}", literal(edge)) } else { format!("{calls} {}", literal(edge)) };
        }
    }
    match (choice, answer) {
        (ToolChoice::Auto, None) => {
            // Text that does not open like a call: the first character decides.
            let first = regex_class_char(syntax.first_char());
            lark.push_str(&format!("start: TEXT | calls\ncalls: {calls}\nTEXT: /[^{first}][\\s\\S]*/\n"));
        }
        (ToolChoice::Auto, Some(schema)) => {
            lark.push_str(&format!("start: answer | calls\ncalls: {calls}\nanswer: %json {}\n", layout(schema)));
        }
        _ => lark.push_str(&format!("start: {calls}\n")),
    }
    let alternatives: Vec<String> = (0..offered.len()).map(|i| format!("call_{i}")).collect();
    lark.push_str(&format!("call: {}\n", alternatives.join(" | ")));
    for (i, tool) in offered.iter().enumerate() {
        let open = format!("{}{}{}", p.call_open, tool.name, p.args_key);
        lark.push_str(&format!(
            "call_{i}: {} args_{i} {}\nargs_{i}: %json {}\n",
            literal(&open),
            literal(p.call_close),
            layout(&tool.parameters)
        ));
    }
    Some(Grammar::Lark(lark))
}

/// A character inside a regex character class.
fn regex_class_char(c: char) -> String {
    if matches!(c, '[' | ']' | '\\' | '^' | '-' | '/') { format!("\\{c}") } else { c.to_string() }
}

/// A schema with kiln's JSON layout, as Lark's `%json` takes it.
fn layout(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Value::Object(map) = &mut schema {
        map.entry("x-guidance").or_insert_with(json_layout);
    }
    schema
}

/// Checks a tool's parameters schema alone, so that an error names the tool.
pub fn check_tool(model: &crate::LlmModel, tool: &Tool) -> Result<(), LlmError> {
    model.constrain(&Grammar::JsonSchema(tool.parameters.clone())).map(|_| ())
}

/// The calls of a finished answer in `syntax`; `None` when it is a text answer. A call cut
/// short (the token limit) keeps the arguments generated so far.
pub fn parse(text: &str, syntax: ToolSyntax) -> Option<Vec<ToolCall>> {
    if !text.starts_with(syntax.first_char()) {
        return None;
    }
    let calls: Vec<ToolCall> = scan(text, syntax)
        .into_iter()
        .filter_map(|c| {
            c.name.map(|name| ToolCall {
                name: name.to_string(),
                arguments: c.arguments.to_string(),
                ..ToolCall::default()
            })
        })
        .collect();
    (!calls.is_empty()).then_some(calls)
}

/// A call as far as the text goes.
#[derive(Debug, PartialEq)]
struct Partial<'t> {
    /// Known once its closing quote came.
    name: Option<&'t str>,
    arguments: &'t str,
}

/// Every call in `text`, the last one possibly incomplete. The grammar fixes the layout, so the
/// name is the text between the fixed keys and the arguments end where their braces balance.
fn scan(text: &str, syntax: ToolSyntax) -> Vec<Partial<'_>> {
    let p = syntax.parts();
    let mut calls = Vec::new();
    let Some(mut rest) = text.strip_prefix(p.open) else { return calls };
    while let Some(after_open) = rest.strip_prefix(p.call_open) {
        let Some(end) = after_open.find('"') else {
            calls.push(Partial { name: None, arguments: "" });
            break;
        };
        let name = &after_open[..end];
        let Some(arguments) = after_open[end..].strip_prefix(p.args_key) else {
            calls.push(Partial { name: Some(name), arguments: "" });
            break;
        };
        let length = json_value_length(arguments);
        calls.push(Partial { name: Some(name), arguments: &arguments[..length.unwrap_or(arguments.len())] });
        let Some(length) = length else { break };
        let Some(next) = arguments[length..].strip_prefix(p.call_close) else { break };
        rest = next.strip_prefix(p.separator).unwrap_or(next);
    }
    calls
}

/// The length of the JSON object at the start of `text`, `None` while it is unfinished.
fn json_value_length(text: &str) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, c) in text.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' | '[' => depth += 1,
            '}' | ']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// What a streamed answer adds, in OpenAI's terms.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    Content(String),
    /// A new call: its index among the answer's calls and its function name.
    CallStart {
        index: usize,
        name: String,
    },
    /// More of call `index`'s arguments text.
    Arguments {
        index: usize,
        text: String,
    },
}

/// Follows a streamed answer under a tool grammar and says what each piece adds.
#[derive(Debug, Default)]
pub struct CallStream {
    syntax: ToolSyntax,
    text: String,
    calls: Option<bool>,
    /// Per call: arguments bytes already sent.
    sent: Vec<usize>,
}

impl CallStream {
    pub fn new(syntax: ToolSyntax) -> Self {
        CallStream { syntax, ..Self::default() }
    }

    /// Whether the answer turned out to be calls (`None` before its first character).
    pub fn is_calls(&self) -> Option<bool> {
        self.calls
    }

    pub fn push(&mut self, piece: &str) -> Vec<Delta> {
        self.text.push_str(piece);
        let calls = match self.calls {
            Some(c) => c,
            None if self.text.is_empty() => return Vec::new(),
            None => {
                let calls = self.text.starts_with(self.syntax.first_char());
                self.calls = Some(calls);
                if !calls {
                    return vec![Delta::Content(self.text.clone())];
                }
                true
            }
        };
        if !calls {
            return if piece.is_empty() { Vec::new() } else { vec![Delta::Content(piece.to_string())] };
        }
        let mut deltas = Vec::new();
        for (index, call) in scan(&self.text, self.syntax).into_iter().enumerate() {
            let Some(name) = call.name else { break };
            if index == self.sent.len() {
                self.sent.push(0);
                deltas.push(Delta::CallStart { index, name: name.to_string() });
            }
            let sent = self.sent[index];
            if call.arguments.len() > sent {
                deltas.push(Delta::Arguments { index, text: call.arguments[sent..].to_string() });
                self.sent[index] = call.arguments.len();
            }
        }
        deltas
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Tool {
        Tool {
            name: "get_weather".into(),
            description: Some("Weather now".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        }
    }

    #[test]
    fn finished_answers() {
        let one = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Pa}ris\"}}\n</tool_call>";
        assert_eq!(
            parse(one, ToolSyntax::Hermes),
            Some(vec![ToolCall {
                name: "get_weather".into(),
                arguments: "{\"city\": \"Pa}ris\"}".into(),
                ..ToolCall::default()
            }])
        );
        let two = format!("{one}\n{}", render_call("f", "{}"));
        assert_eq!(parse(&two, ToolSyntax::Hermes).map(|c| c.len()), Some(2));
        assert_eq!(parse("It is sunny.", ToolSyntax::Hermes), None);
        // Cut by the token limit: what came so far.
        let cut = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"ci";
        assert_eq!(parse(cut, ToolSyntax::Hermes).expect("a call")[0].arguments, "{\"ci");
    }

    #[test]
    fn streamed_answers_give_openai_deltas() {
        let text = format!("{}\n{}", render_call("get_weather", r#"{"city":"Oslo"}"#), render_call("f", "{}"));
        let mut stream = CallStream::new(ToolSyntax::Hermes);
        let mut deltas = Vec::new();
        // Piece by piece, three characters at a time.
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(3) {
            deltas.extend(stream.push(&piece.iter().collect::<String>()));
        }
        let mut names = Vec::new();
        let mut arguments = vec![String::new(); 2];
        for d in deltas {
            match d {
                Delta::CallStart { index, name } => {
                    assert_eq!(index, names.len());
                    names.push(name);
                }
                Delta::Arguments { index, text } => arguments[index].push_str(&text),
                Delta::Content(c) => panic!("content {c:?} in a call"),
            }
        }
        assert_eq!(names, ["get_weather", "f"]);
        assert_eq!(arguments, [r#"{"city": "Oslo"}"#, "{}"]);
        let mut text_answer = CallStream::new(ToolSyntax::Hermes);
        assert_eq!(text_answer.push(""), vec![]);
        assert_eq!(text_answer.push("Hi"), vec![Delta::Content("Hi".into())]);
        assert_eq!(text_answer.push(" <b>"), vec![Delta::Content(" <b>".into())]);
        assert_eq!(text_answer.is_calls(), Some(false));
    }

    #[test]
    fn conversation_with_tools() {
        let messages = vec![
            Message::new("system", "Be brief."),
            Message::new("user", "Weather in Oslo?"),
            Message {
                tool_calls: vec![ToolCall {
                    name: "get_weather".into(),
                    arguments: r#"{"city": "Oslo"}"#.into(),
                    id: "c1".into(),
                    source: None,
                }],
                ..Message::new("assistant", "")
            },
            Message::new("tool", "-3 C"),
            Message::new("tool", "snow"),
        ];
        let out = conversation(messages, &[weather()]);
        assert_eq!(out.len(), 4);
        assert_eq!(out[2].content, render_call("get_weather", r#"{"city": "Oslo"}"#));
        assert!(out[2].tool_calls.is_empty());
        assert!(out[0].content.starts_with("Be brief.\n\nYou can call functions"));
        assert!(out[0].content.contains("\"name\":\"get_weather\""));
        assert_eq!(out[3].role, "user");
        assert_eq!(out[3].content, "<tool_response>\n-3 C\n</tool_response>\n<tool_response>\nsnow\n</tool_response>");
    }

    #[test]
    fn grammars_per_choice() {
        let tools = [weather()];
        assert_eq!(grammar(&tools, &ToolChoice::None, true, None, ToolSyntax::Hermes), None);
        let Some(Grammar::Lark(auto)) = grammar(&tools, &ToolChoice::Auto, true, None, ToolSyntax::Hermes) else {
            panic!("lark")
        };
        assert!(auto.starts_with("start: TEXT | calls\ncalls: call"), "{auto}");
        let Some(Grammar::Lark(required)) = grammar(&tools, &ToolChoice::Required, false, None, ToolSyntax::Hermes)
        else {
            panic!("lark")
        };
        assert!(required.starts_with("start: call\n"));
        assert_eq!(grammar(&tools, &ToolChoice::Function("other".into()), true, None, ToolSyntax::Hermes), None);
        assert!(check_name("get_weather").is_ok());
        assert!(check_name("bad name").is_err());
        assert!(parameters_schema(Some(json!({"type": "string"}))).is_err());
        assert!(parameters_schema(None).is_ok());
    }

    #[test]
    fn every_syntax_parses_and_streams_its_own_calls() {
        let cases = [
            (
                ToolSyntax::Llama3,
                "{\"name\": \"f\", \"parameters\": {\"a\": 1}}\n{\"name\": \"g\", \"parameters\": {}}",
            ),
            (
                ToolSyntax::Mistral,
                "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"a\": 1}}, {\"name\": \"g\", \"arguments\": {}}]",
            ),
            (
                ToolSyntax::Granite,
                "<|tool_call|>[{\"name\": \"f\", \"arguments\": {\"a\": 1}}, {\"name\": \"g\", \"arguments\": {}}]",
            ),
        ];
        for (syntax, text) in cases {
            let calls = parse(text, syntax).expect("calls");
            assert_eq!(
                calls.iter().map(|c| (c.name.as_str(), c.arguments.as_str())).collect::<Vec<_>>(),
                [("f", "{\"a\": 1}"), ("g", "{}")],
                "{syntax:?}"
            );
            let mut stream = CallStream::new(syntax);
            let mut arguments = vec![String::new(); 2];
            let mut names = Vec::new();
            for c in text.chars() {
                for d in stream.push(&c.to_string()) {
                    match d {
                        Delta::CallStart { name, .. } => names.push(name),
                        Delta::Arguments { index, text } => arguments[index].push_str(&text),
                        Delta::Content(c) => panic!("content {c:?}"),
                    }
                }
            }
            assert_eq!(
                (names, arguments),
                (vec!["f".to_string(), "g".into()], vec!["{\"a\": 1}".to_string(), "{}".into()])
            );
            assert_eq!(parse("Hello", syntax), None);
            let Some(Grammar::Lark(lark)) = grammar(&[weather()], &ToolChoice::Auto, true, None, syntax) else {
                panic!("lark")
            };
            assert!(lark.contains(&format!("TEXT: /[^{}]", regex_class_char(syntax.first_char()))), "{lark}");
        }
    }
}
