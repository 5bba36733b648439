//! Protocol-buffer text format (what Triton's `config.pbtxt` is written in), read into a tree
//! of named fields without a schema: `name: value`, `name { ... }`, `name: { ... }`,
//! `name: [v, ...]`, `#` comments, `,`/`;` separators, quoted strings with escapes. What the
//! fields mean is `triton_config`'s business; this module only knows the syntax, and every
//! syntax error carries its line and column.

/// One value.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A number, identifier (enum value, `true`) or string, as written (strings unescaped).
    Scalar(Scalar),
    Message(Vec<Field>),
    List(Vec<Node>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Word(String),
    Text(String),
}

/// `name: value` where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub value: Node,
    pub line: usize,
    pub column: usize,
}

/// Parses a whole file as a message.
pub fn parse(text: &str) -> Result<Vec<Field>, String> {
    let mut p = Parser { chars: text.chars().collect(), at: 0, line: 1, column: 1 };
    let fields = p.message(false)?;
    Ok(fields)
}

struct Parser {
    chars: Vec<char>,
    at: usize,
    line: usize,
    column: usize,
}

impl Parser {
    fn error(&self, what: impl std::fmt::Display) -> String {
        format!("line {}, column {}: {what}", self.line, self.column)
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    /// Skips whitespace and comments.
    fn space(&mut self) {
        while let Some(c) = self.peek() {
            if c == '#' {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.bump();
                }
            } else if c.is_whitespace() {
                self.bump();
            } else {
                break;
            }
        }
    }

    /// Fields until `}` (nested) or the end of the text (top level).
    fn message(&mut self, nested: bool) -> Result<Vec<Field>, String> {
        let mut fields = Vec::new();
        loop {
            self.space();
            match self.peek() {
                None if nested => return Err(self.error("the text ends inside a '{' block")),
                None => return Ok(fields),
                Some('}') if nested => {
                    self.bump();
                    return Ok(fields);
                }
                Some(',' | ';') => {
                    self.bump();
                }
                Some(c) if c.is_alphabetic() || c == '_' || c == '[' => fields.push(self.field()?),
                Some(c) => return Err(self.error(format!("expected a field name, found '{c}'"))),
            }
        }
    }

    fn field(&mut self) -> Result<Field, String> {
        let (line, column) = (self.line, self.column);
        let name = if self.peek() == Some('[') {
            // An extension or Any type URL: `[type.googleapis.com/...]`, kept as written.
            let mut name = String::new();
            while let Some(c) = self.bump() {
                name.push(c);
                if c == ']' {
                    break;
                }
            }
            name
        } else {
            self.word()
        };
        self.space();
        let value = match self.peek() {
            Some(':') => {
                self.bump();
                self.space();
                self.value()?
            }
            // A message or a list of messages may follow the name without ':'.
            Some('{' | '<' | '[') => self.value()?,
            Some(c) => return Err(self.error(format!("expected ':' or '{{' after '{name}', found '{c}'"))),
            None => return Err(self.error(format!("the text ends after '{name}'"))),
        };
        Ok(Field { name, value, line, column })
    }

    fn word(&mut self) -> String {
        let mut word = String::new();
        while let Some(c) = self.peek() {
            if c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '+') {
                word.push(c);
                self.bump();
            } else {
                break;
            }
        }
        word
    }

    fn value(&mut self) -> Result<Node, String> {
        match self.peek() {
            Some('{') => {
                self.bump();
                Ok(Node::Message(self.message(true)?))
            }
            Some('<') => {
                self.bump();
                let fields = self.angle_message()?;
                Ok(Node::Message(fields))
            }
            Some('[') => {
                self.bump();
                let mut items = Vec::new();
                loop {
                    self.space();
                    match self.peek() {
                        Some(']') => {
                            self.bump();
                            return Ok(Node::List(items));
                        }
                        Some(',') => {
                            self.bump();
                        }
                        None => return Err(self.error("the text ends inside a '[' list")),
                        _ => items.push(self.value()?),
                    }
                }
            }
            Some('"' | '\'') => Ok(Node::Scalar(Scalar::Text(self.string()?))),
            Some(c) if c.is_alphanumeric() || matches!(c, '-' | '+' | '.' | '_') => {
                let word = self.word();
                Ok(Node::Scalar(Scalar::Word(word)))
            }
            Some(c) => Err(self.error(format!("expected a value, found '{c}'"))),
            None => Err(self.error("expected a value, found the end of the text")),
        }
    }

    /// `< ... >`, the older spelling of a message block.
    fn angle_message(&mut self) -> Result<Vec<Field>, String> {
        let mut fields = Vec::new();
        loop {
            self.space();
            match self.peek() {
                Some('>') => {
                    self.bump();
                    return Ok(fields);
                }
                Some(',' | ';') => {
                    self.bump();
                }
                None => return Err(self.error("the text ends inside a '<' block")),
                _ => fields.push(self.field()?),
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let quote = self.bump().unwrap_or('"');
        let mut out = String::new();
        loop {
            match self.bump() {
                None | Some('\n') => return Err(self.error("a string is not closed on its line")),
                Some(c) if c == quote => break,
                Some('\\') => match self.bump() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some(c @ ('\\' | '"' | '\'')) => out.push(c),
                    Some(c) => return Err(self.error(format!("unknown escape '\\{c}' in a string"))),
                    None => return Err(self.error("a string is not closed")),
                },
                Some(c) => out.push(c),
            }
        }
        // Adjacent strings concatenate, as in C.
        self.space();
        if matches!(self.peek(), Some('"' | '\'')) {
            out.push_str(&self.string()?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triton_shapes() {
        let text = r#"
            name: "m"  # the model
            platform: "onnxruntime_onnx"
            max_batch_size: 8
            input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ] } ]
            instance_group [ { count: 2 kind: KIND_CPU } ]
            dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
            parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
        "#;
        let fields = parse(text).expect("parses");
        let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["name", "platform", "max_batch_size", "input", "instance_group", "dynamic_batching", "parameters"]
        );
        assert_eq!(fields[0].value, Node::Scalar(Scalar::Text("m".into())));
        assert_eq!((fields[2].line, fields[2].column), (4, 13));
        let Node::List(inputs) = &fields[3].value else { panic!("a list") };
        let Node::Message(x) = &inputs[0] else { panic!("a message") };
        assert_eq!(x[2].value, Node::List(vec![Node::Scalar(Scalar::Word("4".into()))]));
    }

    #[test]
    fn errors_say_where() {
        assert_eq!(
            parse("name: \"m\"\nmax_batch_size 8").unwrap_err(),
            "line 2, column 16: expected ':' or '{' after 'max_batch_size', found '8'"
        );
        assert!(parse("input [ { name: \"x\" ").unwrap_err().starts_with("line 1"));
        assert!(parse("name: \"open").unwrap_err().contains("not closed"));
        assert!(parse("= 3").unwrap_err().contains("expected a field name"));
        assert_eq!(parse("a: 'x' \"y\"").expect("ok")[0].value, Node::Scalar(Scalar::Text("xy".into())));
    }
}
