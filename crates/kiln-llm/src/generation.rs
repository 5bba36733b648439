//! What a request gets back: events as the text is generated, and the finished completion.

use crate::LlmError;
use crate::outbox;

/// One generated token's log-probability (natural log, under the model's raw distribution:
/// before biases, penalties and filters) and the most likely alternatives at its place.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's text (lossy where a token is part of a UTF-8 character: see `bytes`).
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// Most likely first, as many as asked.
    pub top: Vec<TopLogprob>,
}

/// An alternative token at a place.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FinishReason {
    /// The model ended its answer, or a stop string came.
    #[default]
    Stop,
    /// `max_tokens` or the context ran out.
    Length,
}

impl FinishReason {
    /// OpenAI's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// What a [`Generation`] yields, in order: text pieces, then exactly one `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Text(String),
    /// The log-probabilities of the tokens whose text comes next (only when asked for); they
    /// come before that text.
    Logprobs(Vec<TokenLogprob>),
    Done {
        reason: FinishReason,
        usage: Usage,
    },
    Failed(LlmError),
}

/// One request's output as it is generated. Dropping it cancels the request: the scheduler
/// frees its sequence slot before the next step.
#[derive(Debug)]
pub struct Generation {
    pub prompt_tokens: usize,
    events: outbox::Events,
    logprobs: bool,
}

impl Generation {
    pub(crate) fn new(prompt_tokens: usize, events: outbox::Events, logprobs: bool) -> Generation {
        Generation { prompt_tokens, events, logprobs }
    }

    /// Whether it reports [`Event::Logprobs`] (the request asked for them).
    pub fn reports_logprobs(&self) -> bool {
        self.logprobs
    }

    /// The next event; `None` only after `Done`/`Failed` was taken.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// [`Generation::next`] for a thread outside any async runtime (it blocks until the next
    /// event; the Python bridge calls it with the GIL released).
    pub fn next_blocking(&mut self) -> Option<Event> {
        self.events.blocking_recv()
    }

    /// [`Generation::complete`], blocking the calling thread.
    pub fn complete_blocking(mut self) -> Result<Completion, LlmError> {
        let mut completion = Completion::default();
        while let Some(event) = self.next_blocking() {
            if let Some(end) = completion.take(event) {
                return end;
            }
        }
        Err(LlmError::ShuttingDown)
    }

    /// Waits for the whole text.
    pub async fn complete(mut self) -> Result<Completion, LlmError> {
        let mut completion = Completion::default();
        while let Some(event) = self.next().await {
            if let Some(end) = completion.take(event) {
                return end;
            }
        }
        Err(LlmError::ShuttingDown)
    }
}

/// A finished request. Two are equal when their texts, reasons, usage and logprobs are (not
/// their timing).
#[derive(Debug, Clone, Default)]
pub struct Completion {
    pub text: String,
    pub reason: FinishReason,
    pub usage: Usage,
    /// Per generated token, when the request asked ([`GenerateParams::logprobs`]).
    pub logprobs: Vec<TokenLogprob>,
    /// When the first text (or token) arrived: the time to first token.
    pub first_token: Option<std::time::Instant>,
}

impl PartialEq for Completion {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
            && self.reason == other.reason
            && self.usage == other.usage
            && self.logprobs == other.logprobs
    }
}

impl Completion {
    /// Adds an event to what is gathered; the end gives the whole completion (or the error).
    pub fn take(&mut self, event: Event) -> Option<Result<Completion, LlmError>> {
        match event {
            Event::Text(piece) => {
                self.first_token.get_or_insert_with(std::time::Instant::now);
                self.text.push_str(&piece);
            }
            Event::Logprobs(tokens) => {
                self.first_token.get_or_insert_with(std::time::Instant::now);
                self.logprobs.extend(tokens);
            }
            Event::Done { reason, usage } => {
                self.reason = reason;
                self.usage = usage;
                return Some(Ok(std::mem::take(self)));
            }
            Event::Failed(error) => return Some(Err(error)),
        }
        None
    }
}
