//! An LLM step's prompt: one template syntax for the whole pipeline.toml — Jinja (minijinja),
//! as the `format` op's: `{{ ticket }}`, `{% if … %}`. The older `{ticket}` placeholders
//! (with `{{` / `}}` for a literal brace) still load, with a warning naming the step, for one
//! release.

use kiln_core::{Tensor, TensorData};

use super::retrieval_ops::FormatTemplate;
use kiln_serving::EngineError;

/// A compiled prompt.
#[derive(Debug)]
pub(super) enum PromptTemplate {
    Jinja(Box<FormatTemplate>),
    /// `{name}` placeholders (deprecated).
    Legacy(Vec<Part>),
}

impl PromptTemplate {
    /// Compiles a step's prompt. Text with a `{name}` placeholder is the older syntax (a
    /// warning says so); anything else is Jinja.
    pub(super) fn new(source: &str, step: &str) -> Result<Self, String> {
        if let Ok(parts) = parse_template(source)
            && parts.iter().any(|p| matches!(p, Part::Var(_)))
        {
            tracing::warn!(
                step,
                "the prompt's {{name}} placeholders are the old syntax: write {{{{ name }}}} (Jinja, as format \
                 templates); {{name}} is accepted for this release only"
            );
            return Ok(PromptTemplate::Legacy(parts));
        }
        FormatTemplate::new(source).map(|t| PromptTemplate::Jinja(Box::new(t))).map_err(|e| format!("prompt {e}"))
    }

    /// The variables the prompt reads (each must be an input of the step).
    pub(super) fn reads(&self) -> Vec<String> {
        match self {
            PromptTemplate::Jinja(t) => t.reads().map(str::to_string).collect(),
            PromptTemplate::Legacy(parts) => parts
                .iter()
                .filter_map(|p| match p {
                    Part::Var(v) => Some(v.clone()),
                    Part::Text(_) => None,
                })
                .collect(),
        }
    }

    /// Each row's prompt, from the row's input values.
    pub(super) fn rows(&self, args: &[Tensor]) -> Result<Vec<String>, EngineError> {
        match self {
            PromptTemplate::Jinja(t) => t.render_rows(args).map_err(EngineError::from),
            PromptTemplate::Legacy(parts) => row_prompts(parts, args),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Part {
    Text(String),
    Var(String),
}

fn parse_template(template: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("the prompt has an unclosed '{{{name}'")),
                    }
                }
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(Part::Var(name.trim().to_string()));
            }
            '}' => return Err("the prompt has a lone '}' (write '}}' for a brace)".into()),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(parts)
}

/// Element `row` of a one-value-per-row tensor, as prompt text.
fn row_text(t: &Tensor, row: usize) -> String {
    match &t.data {
        TensorData::Bool(v) => v[row].to_string(),
        TensorData::Uint8(v) => v[row].to_string(),
        TensorData::Uint16(v) => v[row].to_string(),
        TensorData::Uint32(v) => v[row].to_string(),
        TensorData::Uint64(v) => v[row].to_string(),
        TensorData::Int8(v) => v[row].to_string(),
        TensorData::Int16(v) => v[row].to_string(),
        TensorData::Int32(v) => v[row].to_string(),
        TensorData::Int64(v) => v[row].to_string(),
        TensorData::Fp16(v) => v[row].to_string(),
        TensorData::Fp32(v) => v[row].to_string(),
        TensorData::Fp64(v) => v[row].to_string(),
        TensorData::Bytes(v) => String::from_utf8_lossy(&v[row]).into_owned(),
    }
}

/// Each row's prompt: the template with the row's input values.
fn row_prompts(template: &[Part], args: &[Tensor]) -> Result<Vec<String>, EngineError> {
    let rows = args.first().and_then(|t| t.shape.first().copied()).unwrap_or(0);
    if let Some(t) = args.iter().find(|t| t.data.len() != rows) {
        return Err(EngineError::InvalidRequest(format!(
            "input '{}' has {} values for {rows} rows",
            t.name,
            t.data.len()
        )));
    }
    Ok((0..rows)
        .map(|row| {
            template
                .iter()
                .map(|p| match p {
                    Part::Text(t) => t.clone(),
                    Part::Var(v) => args.iter().find(|t| &t.name == v).map(|t| row_text(t, row)).unwrap_or_default(),
                })
                .collect()
        })
        .collect())
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        assert_eq!(
            parse_template("Hi {name}, {{literal}} {x}").expect("ok"),
            vec![
                Part::Text("Hi ".into()),
                Part::Var("name".into()),
                Part::Text(", {literal} ".into()),
                Part::Var("x".into())
            ]
        );
        assert!(parse_template("open {x").unwrap_err().contains("unclosed"));
        assert!(parse_template("a } b").unwrap_err().contains("lone"));
    }

    #[test]
    fn jinja_is_the_syntax_and_the_old_one_still_loads() {
        let ticket = Tensor::new("ticket", vec![2], TensorData::Bytes(vec![b"a".to_vec(), b"b".to_vec()])).expect("t");
        let jinja = PromptTemplate::new("Reply to: \"{{ ticket }}\"", "draft").expect("jinja");
        assert!(matches!(jinja, PromptTemplate::Jinja(_)));
        assert_eq!(jinja.reads(), vec!["ticket".to_string()]);
        assert_eq!(jinja.rows(std::slice::from_ref(&ticket)).expect("rows"), ["Reply to: \"a\"", "Reply to: \"b\""]);
        let old = PromptTemplate::new("Reply to: \"{ticket}\"", "draft").expect("legacy");
        assert!(matches!(old, PromptTemplate::Legacy(_)));
        assert_eq!(old.rows(&[ticket]).expect("rows"), ["Reply to: \"a\"", "Reply to: \"b\""]);
        assert!(PromptTemplate::new("{{ oops", "x").unwrap_err().starts_with("prompt template:"));
    }
}
