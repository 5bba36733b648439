//! Constrained decoding: a grammar (a JSON schema, or a Lark grammar that embeds schemas) is
//! compiled by `llguidance` against the model's vocabulary into a [`Constraint`], which the
//! scheduler consults before every token: tokens that would leave the grammar get no
//! probability at all, so the text always belongs to the grammar — whatever the model.
//!
//! JSON is generated compactly (`", "` between items, `": "` after keys, no other whitespace):
//! free whitespace lets a small model loop on newlines, and a fixed shape makes streamed output
//! easy to follow. A schema keyword llguidance cannot enforce is a compile error naming it, never
//! a silently looser constraint.

use std::sync::Arc;

use llguidance::api::{GrammarWithLexer, TopLevelGrammar};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};

use crate::LlmError;

/// What a request's output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON value valid against this JSON schema.
    JsonSchema(Value),
    /// A Lark grammar (llguidance's dialect); `%json { ... }` rules embed schemas.
    Lark(String),
}

impl Grammar {
    fn compile(&self) -> TopLevelGrammar {
        match self {
            Grammar::JsonObject => TopLevelGrammar::from_json_schema(compact(json!({"type": "object"}))),
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(compact(schema.clone())),
            Grammar::Lark(source) => {
                TopLevelGrammar { grammars: vec![GrammarWithLexer::from_lark(source.clone())], max_tokens: None }
            }
        }
    }
}

/// The JSON layout options kiln generates with, as llguidance's `x-guidance` keyword. A schema
/// that sets its own `x-guidance` keeps its settings.
pub fn json_layout() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

/// `value` as JSON text in kiln's layout (`", "` and `": "`, as Python's `json.dumps` writes).
pub fn to_layout(value: &Value) -> String {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, Layout);
    match serde::Serialize::serialize(value, &mut serializer) {
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        Err(_) => value.to_string(),
    }
}

/// serde_json's compact output with a space after `,` and `:`.
struct Layout;

impl serde_json::ser::Formatter for Layout {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

fn compact(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema {
        let layout = map.entry("x-guidance").or_insert_with(|| json!({}));
        if let (Value::Object(options), Value::Object(defaults)) = (layout, json_layout()) {
            for (key, value) in defaults {
                options.entry(key).or_insert(value);
            }
        }
    }
    schema
}

/// Compiles grammars for one model's vocabulary (built once per model: it walks the whole
/// vocabulary).
pub(crate) struct GrammarCompiler {
    factory: ParserFactory,
}

impl GrammarCompiler {
    pub(crate) fn new(model: &llama_cpp_2::model::LlamaModel) -> Result<Self, LlmError> {
        let tok_env = llama_cpp_2::sampling::LlamaSampler::llguidance_tok_env(model);
        let mut factory = ParserFactory::new_simple(&tok_env)
            .map_err(|e| LlmError::Load(format!("cannot prepare constrained decoding: {e}")))?;
        factory.quiet();
        Ok(GrammarCompiler { factory })
    }

    pub(crate) fn compile(&self, grammar: &Grammar) -> Result<Constraint, LlmError> {
        let refused = |detail: String| {
            let detail = one_line(&detail);
            let recursive = match grammar {
                Grammar::JsonSchema(schema) => recursive_ref(schema),
                _ => None,
            };
            LlmError::Grammar(match recursive {
                Some(at) => format!(
                    "the schema is recursive ($ref '{at}' refers back to itself), which kiln cannot enforce: {detail}"
                ),
                None => detail,
            })
        };
        let parser = self.factory.create_parser(grammar.compile()).map_err(|e| refused(clean(&e)))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            return Err(refused(error));
        }
        Ok(Constraint { matcher: Box::new(matcher), grammar: Arc::new(grammar.clone()) })
    }
}

/// Longest compile error passed on: llguidance may append its parser's state to a message.
const MAX_ERROR_CHARS: usize = 300;

/// An error's first line, at most [`MAX_ERROR_CHARS`] characters.
fn one_line(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default().trim();
    match first.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => format!("{}…", &first[..cut]),
        None => first.to_string(),
    }
}

/// The first local `$ref` (`#/...`) of `schema` that is reached again while it is being
/// expanded: the schema describes unbounded nesting.
pub(crate) fn recursive_ref(schema: &Value) -> Option<String> {
    fn walk<'a>(root: &'a Value, node: &'a Value, expanding: &mut Vec<&'a str>, budget: &mut usize) -> Option<String> {
        if *budget == 0 {
            return None;
        }
        *budget -= 1;
        match node {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref")
                    && let Some(pointer) = target.strip_prefix('#')
                {
                    if expanding.contains(&target.as_str()) {
                        return Some(target.clone());
                    }
                    if let Some(referred) = root.pointer(pointer) {
                        expanding.push(target);
                        let found = walk(root, referred, expanding, budget);
                        expanding.pop();
                        if found.is_some() {
                            return found;
                        }
                    }
                }
                map.iter().filter(|(k, _)| *k != "$ref").find_map(|(_, v)| walk(root, v, expanding, budget))
            }
            Value::Array(items) => items.iter().find_map(|v| walk(root, v, expanding, budget)),
            _ => None,
        }
    }
    // Bounded: a schema whose references fan out must not cost more than this many visits.
    let mut budget = 100_000;
    walk(schema, schema, &mut Vec::new(), &mut budget)
}

/// llguidance's messages carry a chain of contexts ("failed to compile JSON schema: ..."); keep
/// them all on one line.
fn clean(error: &anyhow::Error) -> String {
    format!("{error:#}").replace('\n', " ")
}

/// A compiled grammar's state for one generation: which tokens may come next.
pub struct Constraint {
    matcher: Box<Matcher>,
    grammar: Arc<Grammar>,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("grammar", &self.grammar).finish_non_exhaustive()
    }
}

impl Clone for Constraint {
    /// A fresh copy in the same state (for the rows of one request that share a schema).
    fn clone(&self) -> Self {
        Constraint { matcher: Box::new(self.matcher.deep_clone()), grammar: self.grammar.clone() }
    }
}

impl Constraint {
    pub fn grammar(&self) -> &Grammar {
        &self.grammar
    }

    /// The tokens allowed next (the end-of-sequence token only once the grammar is complete).
    pub(crate) fn allowed(&mut self) -> Result<toktrie::SimpleVob, LlmError> {
        self.matcher.compute_mask_or_eos().map_err(|e| LlmError::Grammar(clean(&e)))
    }

    /// Advances past a sampled token.
    pub(crate) fn advance(&mut self, token: u32) -> Result<(), LlmError> {
        self.matcher.consume_token(token).map_err(|e| LlmError::Grammar(clean(&e)))
    }

    /// The grammar is complete and admits nothing more: the text is done.
    pub(crate) fn finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recursive_refs_are_named_and_others_are_not() {
        let tree = json!({"$defs": {"node": {"type": "object", "properties": {
            "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}}, "$ref": "#/$defs/node"});
        assert_eq!(recursive_ref(&tree).as_deref(), Some("#/$defs/node"));
        let shared = json!({"$defs": {"point": {"type": "object"}}, "type": "object", "properties": {
            "a": {"$ref": "#/$defs/point"}, "b": {"$ref": "#/$defs/point"}}});
        assert_eq!(recursive_ref(&shared), None);
        assert_eq!(one_line("first line\nstate: ..."), "first line");
        assert_eq!(one_line(&"x".repeat(400)).chars().count(), MAX_ERROR_CHARS + 1);
    }
}
