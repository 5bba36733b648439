//! A reasoning model's answer split into its thoughts and its answer: the text between
//! `<think>` and `</think>` is OpenAI-style `reasoning_content` (the field llama.cpp's server and
//! DeepSeek's API use), the rest is `content`. A prompt that ends inside `<think>` (DeepSeek R1's
//! template opens it) starts in the thoughts. Streamed text is split piece by piece, holding back
//! only what may be the start of a tag.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace yet: the answer may still open with `<think>`.
    Start,
    Thinking,
    Answer,
}

/// Splits a generated text into (reasoning, content) as it comes.
#[derive(Debug, Clone)]
pub struct ThinkSplit {
    state: State,
    held: String,
    /// Whitespace right after a tag is neither thoughts nor answer.
    after_tag: bool,
}

/// Text for `reasoning_content` and for `content`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    pub reasoning: String,
    pub content: String,
}

impl ThinkSplit {
    /// `thinking`: the prompt ended inside `<think>`.
    pub fn new(thinking: bool) -> ThinkSplit {
        ThinkSplit {
            state: if thinking { State::Thinking } else { State::Start },
            held: String::new(),
            after_tag: true,
        }
    }

    /// Adds a piece; returns what can be told now.
    pub fn push(&mut self, piece: &str) -> Split {
        self.held.push_str(piece);
        let mut out = Split::default();
        loop {
            match self.state {
                State::Start => {
                    let trimmed = self.held.trim_start();
                    if let Some(rest) = trimmed.strip_prefix(OPEN) {
                        self.held = rest.to_string();
                        self.state = State::Thinking;
                        self.after_tag = true;
                    } else if OPEN.starts_with(trimmed) {
                        return out; // may still become `<think>`
                    } else {
                        self.state = State::Answer;
                        self.after_tag = false;
                    }
                }
                State::Thinking | State::Answer if self.after_tag => {
                    let trimmed = self.held.trim_start();
                    if trimmed.is_empty() {
                        self.held.clear();
                        return out;
                    }
                    self.held = trimmed.to_string();
                    self.after_tag = false;
                }
                State::Thinking => match self.held.find(CLOSE) {
                    Some(at) => {
                        out.reasoning.push_str(&self.held[..at]);
                        self.held = self.held[at + CLOSE.len()..].to_string();
                        self.state = State::Answer;
                        self.after_tag = true;
                    }
                    None => {
                        let keep = partial_suffix(&self.held, CLOSE);
                        let cut = self.held.len() - keep;
                        out.reasoning.push_str(&self.held[..cut]);
                        self.held.drain(..cut);
                        return out;
                    }
                },
                State::Answer => {
                    out.content.push_str(&self.held);
                    self.held.clear();
                    return out;
                }
            }
        }
    }

    /// The end of the text: whatever was held back.
    pub fn finish(&mut self) -> Split {
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Thinking => Split { reasoning: held, content: String::new() },
            State::Start | State::Answer => Split { reasoning: String::new(), content: held },
        }
    }

    /// A whole text at once.
    pub fn split(text: &str, thinking: bool) -> Split {
        let mut splitter = ThinkSplit::new(thinking);
        let mut out = splitter.push(text);
        let rest = splitter.finish();
        out.reasoning.push_str(&rest.reasoning);
        out.content.push_str(&rest.content);
        out
    }
}

/// The length of the longest end of `text` that is a proper start of `tag`.
fn partial_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&n| text.len() >= n && text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thoughts_and_answer_split_whole_and_piece_by_piece() {
        let text = "<think>\nThe user wants 4.\n</think>\n\nIt is 4.";
        let want = Split { reasoning: "The user wants 4.\n".into(), content: "It is 4.".into() };
        assert_eq!(ThinkSplit::split(text, false), want);
        for size in 1..6 {
            let mut s = ThinkSplit::new(false);
            let mut got = Split::default();
            let chars: Vec<char> = text.chars().collect();
            for piece in chars.chunks(size).map(|c| c.iter().collect::<String>()).chain([String::new()]) {
                let out = s.push(&piece);
                got.reasoning.push_str(&out.reasoning);
                got.content.push_str(&out.content);
            }
            let rest = s.finish();
            got.reasoning.push_str(&rest.reasoning);
            got.content.push_str(&rest.content);
            assert_eq!(got, want, "pieces of {size}");
        }
        // The prompt opened the thoughts; an answer without them; thoughts cut short.
        assert_eq!(ThinkSplit::split("hmm</think>Yes", true), Split { reasoning: "hmm".into(), content: "Yes".into() });
        assert_eq!(
            ThinkSplit::split("Hello <think>", false),
            Split { reasoning: String::new(), content: "Hello <think>".into() }
        );
        assert_eq!(
            ThinkSplit::split("<think>still going</thi", false),
            Split { reasoning: "still going</thi".into(), content: String::new() }
        );
        assert_eq!(ThinkSplit::split("<thi", false), Split { reasoning: String::new(), content: "<thi".into() });
    }
}
