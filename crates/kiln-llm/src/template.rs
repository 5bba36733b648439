//! Chat messages → the prompt text a model was trained on, with the model's own Jinja chat
//! template (GGUF metadata `tokenizer.chat_template`), rendered by minijinja with Python's
//! string methods (`.strip()`, `.startswith()`…) that Hugging Face templates use.

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value, context};
use serde::Serialize;
use serde::ser::SerializeMap;

use crate::LlmError;
use crate::tools::{Tool, ToolCall, ToolSyntax};

/// Extra template variables a request passes (`chat_template_kwargs`).
pub type TemplateKwargs = serde_json::Map<String, serde_json::Value>;

/// The variables kiln sets for every render, which `chat_template_kwargs` may not replace.
pub const RESERVED_VARIABLES: [&str; 5] = ["messages", "add_generation_prompt", "tools", "bos_token", "eos_token"];

/// One chat message, as OpenAI's API carries it (text content parts only). A template sees it
/// as Hugging Face's `apply_chat_template` does: `content` a string or the list of text parts
/// it came as, `tool_calls` with their arguments as objects, `tool_call_id`, `name`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub role: String,
    /// The text (the parts joined, when it came as parts).
    pub content: String,
    /// The content's text parts, when it came as OpenAI's list of parts.
    pub parts: Vec<String>,
    /// An assistant's earlier calls.
    pub tool_calls: Vec<ToolCall>,
    /// The call a tool result answers.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message { role: role.into(), content: content.into(), ..Message::default() }
    }

    /// Every text a template may write out of it (for the bounds and content marking).
    pub(crate) fn texts(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.content.as_str())
            .chain(self.tool_calls.iter().flat_map(|c| [c.name.as_str(), c.arguments.as_str()]))
    }
}

impl Serialize for Message {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Part<'a> {
            r#type: &'static str,
            text: &'a str,
        }
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("role", &self.role)?;
        if self.parts.is_empty() {
            map.serialize_entry("content", &self.content)?;
        } else {
            let parts: Vec<Part<'_>> = self.parts.iter().map(|text| Part { r#type: "text", text }).collect();
            map.serialize_entry("content", &parts)?;
        }
        if !self.tool_calls.is_empty() {
            let calls: Vec<serde_json::Value> = self.tool_calls.iter().map(call_json).collect();
            map.serialize_entry("tool_calls", &calls)?;
        }
        if let Some(id) = &self.tool_call_id {
            map.serialize_entry("tool_call_id", id)?;
        }
        if let Some(name) = &self.name {
            map.serialize_entry("name", name)?;
        }
        map.end()
    }
}

/// The roles a chat template is written for.
pub const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// A compiled chat template and the special-token texts it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// The template renders `tools` itself (it names them); otherwise kiln describes them in the
    /// system prompt.
    takes_tools: bool,
    /// The call syntax the template writes and teaches.
    syntax: ToolSyntax,
    /// The template knows `<think>` (a reasoning model's thoughts before its answer).
    reasoning: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

const NAME: &str = "chat_template";

/// minijinja instructions one render may run (a real template spends tens per message; the
/// messages are already bounded by the context length).
const RENDER_FUEL: u64 = 20_000_000;

impl ChatTemplate {
    /// Compiles `source`; an invalid template is a load error of the model.
    pub fn new(source: &str, bos_token: String, eos_token: String) -> Result<Self, LlmError> {
        let mut env = Environment::new();
        // As Hugging Face's apply_chat_template (and llama.cpp) render: a block tag's own line
        // break and leading indentation are not output.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // A bound on the instructions one render may run: a template that loops over the
        // messages inside a loop over the messages must not buy seconds of CPU per request.
        env.set_fuel(Some(RENDER_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        // Hugging Face's apply_chat_template gives templates today's date this way (Llama 3.x
        // writes it into the system turn).
        env.add_function("strftime_now", |format: String| -> Result<String, minijinja::Error> {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            strftime(&format, now.as_secs())
        });
        // Hugging Face's `tojson`: Python's json.dumps (", " and ": ", keys in their order,
        // non-ASCII as is), not minijinja's HTML-safe compact form.
        env.add_filter(
            "tojson",
            |value: Value, indent: Option<usize>, kwargs: Kwargs| -> Result<String, minijinja::Error> {
                let indent = match indent {
                    Some(n) => Some(n),
                    None => kwargs.get::<Option<usize>>("indent")?,
                };
                let mut out = String::new();
                python_json(&value, indent, 0, &mut out)?;
                Ok(out)
            },
        );
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| LlmError::Load(format!("it does not compile: {e}")))?;
        let takes_tools = source.contains("tools");
        let syntax = if takes_tools { ToolSyntax::of_template(source) } else { ToolSyntax::Hermes };
        let reasoning = source.contains("<think>");
        Ok(ChatTemplate { env, bos_token, eos_token, takes_tools, syntax, reasoning })
    }

    /// Whether the template renders the request's tools itself.
    pub fn takes_tools(&self) -> bool {
        self.takes_tools
    }

    /// The syntax the model writes calls in.
    pub fn syntax(&self) -> ToolSyntax {
        self.syntax
    }

    /// Whether the template marks a reasoning model's thoughts with `<think>`.
    pub fn reasoning(&self) -> bool {
        self.reasoning
    }

    /// The prompt for `messages`, ending where the assistant's answer starts; `tools` (OpenAI's
    /// function list) go to a template that takes them — none is `tools = none`, as
    /// apply_chat_template passes it.
    pub fn render(&self, messages: &[Message], tools: &[Tool]) -> Result<String, LlmError> {
        self.render_with(messages, tools, &TemplateKwargs::new())
    }

    /// [`ChatTemplate::render`] with more variables for the template (`chat_template_kwargs`,
    /// e.g. `enable_thinking`); they cannot replace the ones apply_chat_template sets.
    pub fn render_with(
        &self,
        messages: &[Message],
        tools: &[Tool],
        kwargs: &TemplateKwargs,
    ) -> Result<String, LlmError> {
        let template = self.env.get_template(NAME).map_err(|e| LlmError::Template(e.to_string()))?;
        let tools: Option<Vec<serde_json::Value>> = (!tools.is_empty()).then(|| tools.iter().map(tool_json).collect());
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                tools => tools,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
                ..Value::from_serialize(kwargs)
            })
            .map_err(|e| {
                // raise_exception's message is the template's own refusal: pass it on as is.
                let detail = e.detail().map(str::to_string).unwrap_or_else(|| e.to_string());
                LlmError::Template(detail)
            })
    }
}

/// An earlier call as a template sees it: the request's object, keys in their order, with the
/// arguments as an object (templates write `arguments | tojson`, as Hugging Face passes them).
fn call_json(call: &ToolCall) -> serde_json::Value {
    let arguments =
        serde_json::from_str(&call.arguments).unwrap_or_else(|_| serde_json::Value::String(call.arguments.clone()));
    let mut value = call.source.clone().unwrap_or_else(
        || serde_json::json!({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}),
    );
    if let Some(function) = value.get_mut("function").and_then(serde_json::Value::as_object_mut) {
        function.insert("arguments".into(), arguments);
    }
    value
}

/// A tool as OpenAI's request carries it (and Hugging Face templates expect).
fn tool_json(tool: &Tool) -> serde_json::Value {
    let mut function = serde_json::Map::new();
    function.insert("name".into(), tool.name.clone().into());
    if let Some(d) = &tool.description {
        function.insert("description".into(), d.clone().into());
    }
    function.insert("parameters".into(), tool.parameters.clone());
    serde_json::json!({"type": "function", "function": function})
}

/// `value` as Python's `json.dumps(value, ensure_ascii=False, indent=indent)` writes it.
fn python_json(value: &Value, indent: Option<usize>, depth: usize, out: &mut String) -> Result<(), minijinja::Error> {
    let line = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_separator = if indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(f) = value.as_i64().is_none().then(|| f64::try_from(value.clone()).ok()).flatten() {
                // Python writes floats with a fraction part (1.0), and inf / nan by name.
                if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 {
                    out.push_str(&format!("{f:.1}"));
                } else if f.is_nan() {
                    out.push_str("NaN");
                } else if f.is_infinite() {
                    out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                } else {
                    out.push_str(&f.to_string());
                }
            } else {
                out.push_str(&value.to_string());
            }
        }
        ValueKind::String | ValueKind::Bytes => python_string(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator);
                }
                line(out, depth + 1);
                python_json(item, indent, depth + 1, out)?;
            }
            line(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = value.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator);
                }
                line(out, depth + 1);
                python_string(&key.to_string(), out);
                out.push_str(": ");
                python_json(&value.get_item(key)?, indent, depth + 1, out)?;
            }
            line(out, depth);
            out.push('}');
        }
        _ => {
            return Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: cannot write {value}")));
        }
    }
    Ok(())
}

/// A JSON string as Python writes it with `ensure_ascii=False`.
fn python_string(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// `unix_secs` (UTC) formatted with the C `strftime` codes templates use: `%Y %y %m %d %e %B
/// %b %A %a %H %M %S %j %%`; another code is a template error naming it.
fn strftime(format: &str, unix_secs: u64) -> Result<String, minijinja::Error> {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    // Days since 1970-01-01 → the civil date (proleptic Gregorian; Howard Hinnant's method).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334][(month - 1) as usize];
    let yday = before + day + i64::from(leap && month > 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: unsupported code %{}", other.map(String::from).unwrap_or_default()),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_dates_as_c_does() {
        // 2024-07-26 13:25:09 UTC, a Friday, day 208 of a leap year.
        let t = 1_722_000_309;
        assert_eq!(strftime("%d %b %Y", t).unwrap(), "26 Jul 2024");
        assert_eq!(strftime("%A %B %e, %y %H:%M:%S %j %%", t).unwrap(), "Friday July 26, 24 13:25:09 208 %");
        assert_eq!(strftime("%Y-%m-%d %a", 0).unwrap(), "1970-01-01 Thu");
        assert_eq!(strftime("%Y-%m-%d", 951_782_400).unwrap(), "2000-02-29");
        assert!(strftime("%Q", t).unwrap_err().to_string().contains("%Q"));
    }

    #[test]
    fn block_tags_leave_no_line_breaks_or_indentation_as_in_hugging_face() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}",
            String::new(),
            String::new(),
        )
        .unwrap();
        assert_eq!(t.render(&[message("user", "a"), message("user", "b")], &[]).unwrap(), "[a]\n[b]\n");
    }

    #[test]
    fn templates_see_tools_as_none_and_today_through_strftime_now() {
        let t = ChatTemplate::new(
            "{% if tools is not none %}T{% else %}N{% endif %}{% if tools %}t{% endif %}|{{ strftime_now('%Y') | length }}",
            String::new(),
            String::new(),
        )
        .unwrap();
        assert_eq!(t.render(&[message("user", "x")], &[]).unwrap(), "N|4");
    }

    fn message(role: &str, content: &str) -> Message {
        Message::new(role, content)
    }

    #[test]
    fn tojson_writes_what_pythons_json_dumps_writes() {
        let t = ChatTemplate::new("{{ x | tojson }}|{{ x | tojson(indent=2) }}", String::new(), String::new()).unwrap();
        let env_value = serde_json::json!({"b": [1, 2.5, 3.0], "a": "é\"<\n", "c": {}, "d": null, "e": true});
        let rendered = t.env.get_template(NAME).unwrap().render(context! { x => env_value }).unwrap();
        assert_eq!(
            rendered,
            "{\"b\": [1, 2.5, 3.0], \"a\": \"é\\\"<\\n\", \"c\": {}, \"d\": null, \"e\": true}|{\n  \"b\": [\n    1,\n    2.5,\n    3.0\n  ],\n  \"a\": \"é\\\"<\\n\",\n  \"c\": {},\n  \"d\": null,\n  \"e\": true\n}"
        );
    }

    #[test]
    fn messages_reach_templates_as_hugging_face_passes_them() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{% if m.content is string %}{{ m.content }}{% else %}{% for p in m.content %}[{{ p.text }}]{% endfor %}{% endif %}\
             {% for c in m.tool_calls or [] %}<{{ c.function.name }} {{ c.function.arguments | tojson }} {{ c.id }}>{% endfor %}{% endfor %}\
             {% for tool in tools %}{{ tool.function.name }}{% endfor %}",
            String::new(),
            String::new(),
        )
        .unwrap();
        assert!(t.takes_tools() && t.syntax() == ToolSyntax::Hermes && !t.reasoning());
        let parts = Message { parts: vec!["a".into(), "b".into()], ..message("user", "ab") };
        let call = ToolCall { name: "f".into(), arguments: "{\"x\": 1}".into(), id: "c1".into(), source: None };
        let calls = Message { tool_calls: vec![call], ..message("assistant", "") };
        let tool = Tool { name: "g".into(), description: None, parameters: serde_json::json!({"type": "object"}) };
        assert_eq!(t.render(&[parts, calls], &[tool]).unwrap(), "[a][b]<f {\"x\": 1} c1>g");
    }

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}\
        {{ '<|im_start|>system\\nYou are helpful<|im_end|>\\n' }}{% endif %}\
        {{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}\
        {% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_a_default_system_prompt() {
        let t = ChatTemplate::new(CHATML, "<s>".into(), "</s>".into()).unwrap();
        let prompt = t.render(&[message("user", "Hi")], &[]).unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let source = "{% if messages[0].role != 'user' %}{{ raise_exception('roles must start with user') }}{% endif %}\
            {{ bos_token }}{{ messages[0].content.strip() }}";
        let t = ChatTemplate::new(source, "<s>".into(), "</s>".into()).unwrap();
        assert_eq!(t.render(&[message("user", "  hello ")], &[]).unwrap(), "<s>hello");
        let err = t.render(&[message("system", "x")], &[]).unwrap_err().to_string();
        assert!(err.contains("roles must start with user"), "{err}");
    }

    #[test]
    fn a_broken_template_is_a_load_error() {
        let err = ChatTemplate::new("{% for %}", String::new(), String::new()).unwrap_err();
        assert!(matches!(err, LlmError::Load(_)), "{err}");
    }
}
