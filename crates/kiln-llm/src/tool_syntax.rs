//! The text of a tool call in the forms model families are trained on, chosen from the chat
//! template: Hermes / Qwen `<tool_call>` blocks (kiln's fallback for templates that say
//! nothing of tools), Llama 3.x JSON with `parameters`, Mistral's `[TOOL_CALLS]` list and
//! Granite's `<|tool_call|>` list. Each is fixed text around `name` and the arguments object,
//! so one grammar builder and one scanner serve them all.

/// A family's call syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToolSyntax {
    /// `<tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>`, one block per call.
    #[default]
    Hermes,
    /// `{"name": "f", "parameters": {...}}` (Llama 3.1 / 3.2 JSON tool calling).
    Llama3,
    /// `[TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]`.
    Mistral,
    /// `<|tool_call|>[{"name": "f", "arguments": {...}}, ...]` (IBM Granite 3.x).
    Granite,
}

/// The fixed text of a syntax: `open`, then calls — each `call_open` name `args_key` arguments
/// `call_close` — separated by `separator`, then `close`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parts {
    pub open: &'static str,
    pub call_open: &'static str,
    pub args_key: &'static str,
    pub call_close: &'static str,
    pub separator: &'static str,
    pub close: &'static str,
}

impl ToolSyntax {
    /// The syntax a chat template writes earlier calls in (or teaches in its tool prompt);
    /// Hermes when it says nothing of tools.
    pub fn of_template(source: &str) -> ToolSyntax {
        if source.contains("[TOOL_CALLS]") {
            ToolSyntax::Mistral
        } else if source.contains("<|tool_call|>") {
            ToolSyntax::Granite
        } else if source.contains("<tool_call>") {
            ToolSyntax::Hermes
        } else if source.contains("<|start_header_id|>") && source.contains("\"parameters\"") {
            ToolSyntax::Llama3
        } else {
            ToolSyntax::Hermes
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ToolSyntax::Hermes => "hermes",
            ToolSyntax::Llama3 => "llama3",
            ToolSyntax::Mistral => "mistral",
            ToolSyntax::Granite => "granite",
        }
    }

    pub(crate) fn parts(self) -> Parts {
        const NAME: &str = "{\"name\": \"";
        const ARGUMENTS: &str = "\", \"arguments\": ";
        match self {
            ToolSyntax::Hermes => Parts {
                open: "",
                call_open: "<tool_call>\n{\"name\": \"",
                args_key: ARGUMENTS,
                call_close: "}\n</tool_call>",
                separator: "\n",
                close: "",
            },
            ToolSyntax::Llama3 => Parts {
                open: "",
                call_open: NAME,
                args_key: "\", \"parameters\": ",
                call_close: "}",
                separator: "\n",
                close: "",
            },
            ToolSyntax::Mistral => Parts {
                open: "[TOOL_CALLS][",
                call_open: NAME,
                args_key: ARGUMENTS,
                call_close: "}",
                separator: ", ",
                close: "]",
            },
            ToolSyntax::Granite => Parts {
                open: "<|tool_call|>[",
                call_open: NAME,
                args_key: ARGUMENTS,
                call_close: "}",
                separator: ", ",
                close: "]",
            },
        }
    }

    /// The character every answer of calls starts with (a text answer must start otherwise).
    pub(crate) fn first_char(self) -> char {
        let p = self.parts();
        p.open.chars().chain(p.call_open.chars()).next().unwrap_or('<')
    }

    /// An OpenAI tool-call id in the form the family's template accepts (Mistral's checks for
    /// nine letters and digits).
    pub fn call_id(self) -> String {
        match self {
            ToolSyntax::Mistral => (0..9).map(|_| fastrand::alphanumeric()).collect(),
            _ => format!("call_{:024x}", fastrand::u128(..) >> 32),
        }
    }

    /// The id of an answer's call `index`, deterministic (the Python bridge's), in the form the
    /// family's template accepts back.
    pub fn numbered_call_id(self, index: usize) -> String {
        match self {
            ToolSyntax::Mistral => format!("call{index:05}"),
            _ => format!("call_{index}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_name_their_syntax() {
        assert_eq!(ToolSyntax::of_template("{{ '[TOOL_CALLS]' }}"), ToolSyntax::Mistral);
        assert_eq!(ToolSyntax::of_template("<tool_call>\n{{ x }}"), ToolSyntax::Hermes);
        assert_eq!(ToolSyntax::of_template("<|tool_call|>"), ToolSyntax::Granite);
        assert_eq!(
            ToolSyntax::of_template("<|start_header_id|>{\"name\": function name, \"parameters\": dict}"),
            ToolSyntax::Llama3
        );
        assert_eq!(ToolSyntax::of_template("{{ messages }}"), ToolSyntax::Hermes);
        assert_eq!(ToolSyntax::Mistral.call_id().len(), 9);
        assert!(ToolSyntax::Mistral.call_id().chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(ToolSyntax::Llama3.first_char(), '{');
        assert_eq!(ToolSyntax::Mistral.first_char(), '[');
    }
}
