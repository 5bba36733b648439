//! Chat messages → the prompt text a model was trained on, with the model's own Jinja chat
//! template (GGUF metadata `tokenizer.chat_template`), rendered by minijinja with Python's
//! string methods (`.strip()`, `.startswith()`…) that Hugging Face templates use.

use minijinja::{Environment, ErrorKind, context};
use serde::Serialize;

use crate::LlmError;

/// One chat message, as OpenAI's API carries it (text content only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// The roles a chat template is written for.
pub const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// A compiled chat template and the special-token texts it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
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
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| LlmError::Load(format!("it does not compile: {e}")))?;
        Ok(ChatTemplate { env, bos_token, eos_token })
    }

    /// The prompt for `messages`, ending where the assistant's answer starts.
    pub fn render(&self, messages: &[Message]) -> Result<String, LlmError> {
        let template = self.env.get_template(NAME).map_err(|e| LlmError::Template(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                // As apply_chat_template without tools: defined and none, so `tools is not none`
                // and `if tools` are false.
                tools => Option::<()>::None,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| {
                // raise_exception's message is the template's own refusal: pass it on as is.
                let detail = e.detail().map(str::to_string).unwrap_or_else(|| e.to_string());
                LlmError::Template(detail)
            })
    }
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
        assert_eq!(t.render(&[message("user", "a"), message("user", "b")]).unwrap(), "[a]\n[b]\n");
    }

    #[test]
    fn templates_see_tools_as_none_and_today_through_strftime_now() {
        let t = ChatTemplate::new(
            "{% if tools is not none %}T{% else %}N{% endif %}{% if tools %}t{% endif %}|{{ strftime_now('%Y') | length }}",
            String::new(),
            String::new(),
        )
        .unwrap();
        assert_eq!(t.render(&[message("user", "x")]).unwrap(), "N|4");
    }

    fn message(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}\
        {{ '<|im_start|>system\\nYou are helpful<|im_end|>\\n' }}{% endif %}\
        {{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}\
        {% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_a_default_system_prompt() {
        let t = ChatTemplate::new(CHATML, "<s>".into(), "</s>".into()).unwrap();
        let prompt = t.render(&[message("user", "Hi")]).unwrap();
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
        assert_eq!(t.render(&[message("user", "  hello ")]).unwrap(), "<s>hello");
        let err = t.render(&[message("system", "x")]).unwrap_err().to_string();
        assert!(err.contains("roles must start with user"), "{err}");
    }

    #[test]
    fn a_broken_template_is_a_load_error() {
        let err = ChatTemplate::new("{% for %}", String::new(), String::new()).unwrap_err();
        assert!(matches!(err, LlmError::Load(_)), "{err}");
    }
}
