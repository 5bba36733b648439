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
        // A bound on the instructions one render may run: a template that loops over the
        // messages inside a loop over the messages must not buy seconds of CPU per request.
        env.set_fuel(Some(RENDER_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| LlmError::Load(format!("the GGUF's chat template does not compile: {e}")))?;
        Ok(ChatTemplate { env, bos_token, eos_token })
    }

    /// The prompt for `messages`, ending where the assistant's answer starts.
    pub fn render(&self, messages: &[Message]) -> Result<String, LlmError> {
        let template = self.env.get_template(NAME).map_err(|e| LlmError::Template(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
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

#[cfg(test)]
mod tests {
    use super::*;

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
