//! The way a generation's events travel from the scheduler thread to its reader, bounded: the
//! scheduler never waits for a reader, and a reader that falls behind costs one growing text
//! piece (at most the request's own output, `max_tokens` tokens), never a queue of events.
//! Text the reader has not taken yet is appended to the piece waiting for it; the end (`Done` or
//! `Failed`) is held in one slot. So an outbox holds at most one `Text` and one end, whatever the
//! token rate or the reader's pace.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::Event;

#[derive(Default)]
struct Outbox {
    text: String,
    /// Log-probabilities of the tokens behind `text` (and of tokens whose text is held back),
    /// when the request asked: at most one per generated token.
    logprobs: Vec<crate::TokenLogprob>,
    end: Option<Event>,
    /// The end was taken: the reader has seen everything.
    finished: bool,
    /// The scheduler's end was dropped without an end (the thread stopped).
    sender_gone: bool,
    /// The reader was dropped: the request is cancelled.
    reader_gone: bool,
}

#[derive(Default)]
struct Shared {
    outbox: Mutex<Outbox>,
    /// Wakes an async reader (one permit is kept if it is not waiting yet).
    ready: Notify,
    /// Wakes a blocking reader.
    ready_blocking: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self) {
        self.ready.notify_one();
        self.ready_blocking.notify_all();
    }
}

/// A new outbox: the scheduler's end and the reader's.
pub(crate) fn outbox() -> (Sink, Events) {
    let shared = Arc::new(Shared::default());
    (Sink(shared.clone()), Events(shared))
}

/// The scheduler's end. Sending never blocks and never fails.
pub(crate) struct Sink(Arc<Shared>);

impl Sink {
    /// Adds an event: text joins the piece not yet taken; an end is kept once (a later end is
    /// ignored: a generation ends once).
    pub(crate) fn send(&self, event: Event) {
        {
            let mut outbox = self.0.lock();
            match event {
                Event::Text(piece) => outbox.text.push_str(&piece),
                Event::Logprobs(tokens) => outbox.logprobs.extend(tokens),
                end if outbox.end.is_none() && !outbox.finished => outbox.end = Some(end),
                _ => return,
            }
        }
        self.0.wake();
    }

    /// Whether the reader is gone (the client left): the sequence is cancelled.
    pub(crate) fn is_closed(&self) -> bool {
        self.0.lock().reader_gone
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.0.lock().sender_gone = true;
        self.0.wake();
    }
}

/// The reader's end, inside a [`crate::Generation`]. Dropping it cancels the request.
pub(crate) struct Events(Arc<Shared>);

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}

/// What a reader takes now: the text waiting, else the end, else nothing yet (`None`) or
/// nothing ever again (`Some(None)`).
fn take(outbox: &mut Outbox) -> Option<Option<Event>> {
    if !outbox.logprobs.is_empty() {
        return Some(Some(Event::Logprobs(std::mem::take(&mut outbox.logprobs))));
    }
    if !outbox.text.is_empty() {
        return Some(Some(Event::Text(std::mem::take(&mut outbox.text))));
    }
    if let Some(end) = outbox.end.take() {
        outbox.finished = true;
        return Some(Some(end));
    }
    (outbox.finished || outbox.sender_gone).then_some(None)
}

impl Events {
    /// The next event; `None` after the end was taken (or when the scheduler stopped).
    pub(crate) async fn recv(&mut self) -> Option<Event> {
        loop {
            if let Some(next) = take(&mut self.0.lock()) {
                return next;
            }
            // A wake-up between the check and this wait leaves a permit: none is lost.
            self.0.ready.notified().await;
        }
    }

    /// [`Events::recv`], blocking the calling thread.
    pub(crate) fn blocking_recv(&mut self) -> Option<Event> {
        let mut outbox = self.0.lock();
        loop {
            if let Some(next) = take(&mut outbox) {
                return next;
            }
            outbox = self.0.ready_blocking.wait(outbox).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.0.lock().reader_gone = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FinishReason, LlmError, Usage};

    fn done() -> Event {
        Event::Done { reason: FinishReason::Length, usage: Usage { prompt_tokens: 1, completion_tokens: 3 } }
    }

    #[test]
    fn a_reader_that_falls_behind_gets_one_piece_and_then_the_end() {
        let (sink, mut events) = outbox();
        for piece in ["a", "b", "c"] {
            sink.send(Event::Text(piece.into()));
        }
        sink.send(done());
        sink.send(Event::Failed(LlmError::ShuttingDown));
        assert_eq!(events.blocking_recv(), Some(Event::Text("abc".into())));
        assert_eq!(events.blocking_recv(), Some(done()));
        assert_eq!(events.blocking_recv(), None);
        assert_eq!(events.blocking_recv(), None);
    }

    #[test]
    fn a_dropped_reader_closes_the_sink_and_a_dropped_sink_ends_the_reader() {
        let (sink, events) = outbox();
        assert!(!sink.is_closed());
        drop(events);
        assert!(sink.is_closed());
        let (sink, mut events) = outbox();
        sink.send(Event::Text("x".into()));
        drop(sink);
        assert_eq!(events.blocking_recv(), Some(Event::Text("x".into())));
        assert_eq!(events.blocking_recv(), None);
    }

    #[tokio::test]
    async fn an_async_reader_wakes_for_text_sent_from_another_thread() {
        let (sink, mut events) = outbox();
        let sender = std::thread::spawn(move || {
            for i in 0..1000 {
                sink.send(Event::Text(format!("{i},")));
            }
            sink.send(done());
        });
        let mut text = String::new();
        loop {
            match events.recv().await {
                Some(Event::Text(piece)) => text.push_str(&piece),
                Some(end) => {
                    assert_eq!(end, done());
                    break;
                }
                None => panic!("ended without Done"),
            }
        }
        sender.join().expect("sender");
        let want: String = (0..1000).map(|i| format!("{i},")).collect();
        assert_eq!(text, want);
        assert_eq!(events.recv().await, None);
    }
}
