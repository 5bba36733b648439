//! Chat templates kiln ships for GGUFs that carry none (a base model such as Gemma 3 270M) or
//! carry one the operator wants to replace: `[llm] chat_template = "<name>"`. Each writes the
//! turn markers its family was trained on; a system message goes where the family puts it
//! (its own turn, or folded into the first user turn when the family has no system role).

/// The names `[llm] chat_template` accepts besides a `.jinja` file.
pub const NAMES: [&str; 5] = ["chatml", "llama3", "gemma", "mistral", "phi3"];

/// ChatML (`<|im_start|>role … <|im_end|>`): Qwen, SmolLM, Hermes and many fine-tunes.
const CHATML: &str = "\
{%- for message in messages -%}
{{ '<|im_start|>' ~ message.role ~ '\\n' ~ message.content ~ '<|im_end|>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}";

/// Llama 3.x headers (`<|start_header_id|>role<|end_header_id|>`, turns end with `<|eot_id|>`).
const LLAMA3: &str = "\
{{- bos_token -}}
{%- for message in messages -%}
{{ '<|start_header_id|>' ~ message.role ~ '<|end_header_id|>\\n\\n' ~ message.content | trim ~ '<|eot_id|>' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}";

/// Gemma (`<start_of_turn>user|model … <end_of_turn>`): no system role, so system text opens
/// the next user turn.
const GEMMA: &str = "\
{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
{%- if message.role == 'system' -%}
{%- set ns.system = ns.system ~ message.content ~ '\\n\\n' -%}
{%- else -%}
{%- set role = 'model' if message.role == 'assistant' else message.role -%}
{{ '<start_of_turn>' ~ role ~ '\\n' ~ (ns.system ~ message.content) | trim ~ '<end_of_turn>\\n' }}
{%- set ns.system = '' -%}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}";

/// Mistral instruct (`[INST] … [/INST]`, answers end with the end-of-sequence token): no system
/// role, so system text opens the next user turn.
const MISTRAL: &str = "\
{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
{%- if message.role == 'system' -%}
{%- set ns.system = ns.system ~ message.content ~ '\\n\\n' -%}
{%- elif message.role == 'user' -%}
{{ '[INST] ' ~ (ns.system ~ message.content) | trim ~ ' [/INST]' }}
{%- set ns.system = '' -%}
{%- elif message.role == 'assistant' -%}
{{ message.content | trim ~ eos_token }}
{%- else -%}
{{ raise_exception('the mistral template has no role ' ~ message.role) }}
{%- endif -%}
{%- endfor -%}";

/// Phi-3 (`<|role|>\n … <|end|>\n`).
const PHI3: &str = "\
{%- for message in messages -%}
{{ '<|' ~ message.role ~ '|>\\n' ~ message.content ~ '<|end|>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}";

/// The source of the built-in template `name`.
pub fn source(name: &str) -> Option<&'static str> {
    match name {
        "chatml" => Some(CHATML),
        "llama3" => Some(LLAMA3),
        "gemma" => Some(GEMMA),
        "mistral" => Some(MISTRAL),
        "phi3" => Some(PHI3),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{ChatTemplate, Message};

    fn render(name: &str, messages: &[(&str, &str)]) -> String {
        let source = source(name).expect("built in");
        let t = ChatTemplate::new(source, "<bos>".into(), "<eos>".into()).expect("compiles");
        let messages: Vec<Message> = messages.iter().map(|(r, c)| Message::new(*r, *c)).collect();
        t.render(&messages, &[]).expect("renders")
    }

    const CHAT: [(&str, &str); 4] =
        [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Sky?")];

    #[test]
    fn every_name_has_a_template_that_compiles() {
        for name in NAMES {
            render(name, &CHAT);
        }
        assert!(source("vicuna").is_none());
    }

    #[test]
    fn each_family_writes_its_own_turns() {
        assert_eq!(
            render("chatml", &CHAT),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n\
             <|im_start|>user\nSky?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            render("llama3", &CHAT),
            "<bos><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n\
             Hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n\
             Sky?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(
            render("gemma", &CHAT),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n\
             <start_of_turn>user\nSky?<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(render("mistral", &CHAT), "<bos>[INST] Be brief.\n\nHi [/INST]Hello!<eos>[INST] Sky? [/INST]");
        assert_eq!(
            render("phi3", &CHAT),
            "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n<|user|>\nSky?<|end|>\n<|assistant|>\n"
        );
    }
}
