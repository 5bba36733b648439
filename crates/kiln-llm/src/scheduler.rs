//! The continuous-batching loop: one thread per model owns the llama.cpp context and runs
//! steps. A step admits waiting requests into free sequence slots, drops sequences whose
//! client left, builds one batch — the last sampled token of every generating sequence and a
//! chunk of every new prompt, up to `n_batch` tokens — decodes it and samples each sequence
//! that got logits.
//!
//! The KV cache is per sequence (`kv_unified = false`): a sequence's attention never spans
//! another's cells, so what it generates does not depend on who it shares steps with.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use crate::constraint::Constraint;
use crate::metrics::{Active, LlmMetrics, SequenceOutcome};
use crate::sampling;
pub(crate) use crate::sampling::Sampling;
use crate::text::{Piece, TextStream};
use crate::{Event, FinishReason, LlmError, Pending, Usage};

/// Most tokens one step decodes (prompt chunks and generating tokens together).
pub(crate) const STEP_TOKENS: usize = 512;

/// Fewest tokens a copy of another slot's cells must save (a copy moves the whole KV stream).
const MIN_COPY_GAIN: usize = 32;

/// With flash attention, prompts are decoded in blocks of this many tokens from position 0 and
/// kept prompts reused in whole blocks: flash attention's sums for a prompt row depend on the
/// rows sharing its micro-batch, so only the same cuts give the same numbers (llama-cpp-python
/// with `n_batch = n_ubatch = 64` cuts alike).
pub(crate) const FLASH_BLOCK: usize = 64;

#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub threads: usize,
    pub context_length: usize,
    pub max_sequences: usize,
    pub flash_attention: bool,
    pub prefix_cache: bool,
    /// The model's sliding attention window (0: none). Its KV cache keeps only the window's
    /// cells for those layers, so a kept prompt is reusable only while the cells the next
    /// tokens attend to are still there.
    pub sliding_window: usize,
    /// Requests the channel holds: waiting ones and those about to take a free slot.
    pub channel: usize,
    /// Whether ggml's kernels give a row the same result in any batch (see
    /// `crate::BATCH_INVARIANT_ENV`).
    pub batch_invariant: bool,
}

impl Limits {
    /// Whether generating sequences share decode steps.
    pub(crate) fn batched(&self) -> bool {
        self.max_sequences > 1 && self.batch_invariant
    }
}

/// Every scheduler thread of the process, so that [`stop_all`] can end them before exit: a
/// process that exits while llama.cpp computes a step tears its static state down under the
/// running thread (a crash, not a clean exit).
pub(crate) static SCHEDULERS: Mutex<Vec<(Arc<AtomicBool>, JoinHandle<()>)>> = Mutex::new(Vec::new());

/// How long an idle scheduler sleeps before it looks at its stop flag again.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Ends every scheduler: running sequences fail with "shutting down" at the end of the current
/// step, and the threads are joined (their contexts freed). Call it before the process exits.
pub fn stop_all() {
    let schedulers = std::mem::take(&mut *SCHEDULERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    for (stop, _) in &schedulers {
        stop.store(true, Ordering::Relaxed);
    }
    for (_, thread) in schedulers {
        let _ = thread.join();
    }
}

/// One request in a sequence slot.
struct Sequence {
    id: i32,
    prompt: Vec<LlamaToken>,
    /// Prompt tokens already decoded.
    fed: usize,
    /// The token to decode next once the prompt is in.
    next: Option<LlamaToken>,
    /// Where that token goes in the sequence.
    position: i32,
    /// The index of this sequence's logits in the batch just decoded.
    logits_at: Option<i32>,
    /// Set when it ended during this step; retired at the step's end.
    finished: Option<SequenceOutcome>,
    sampler: LlamaSampler,
    /// The grammar the text must follow, if any.
    constraint: Option<Constraint>,
    /// Alternatives to report per token, when log-probabilities were asked for.
    logprobs: Option<usize>,
    text: TextStream,
    max_tokens: usize,
    generated: usize,
    sink: crate::outbox::Sink,
    queued_at: Instant,
    last_token_at: Option<Instant>,
    active: Active,
}

pub(crate) struct Scheduler<'m> {
    model: &'m LlamaModel,
    context: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    metrics: Arc<LlmMetrics>,
    free: Vec<i32>,
    running: Vec<Sequence>,
    /// Per slot id: the prompt tokens whose KV cells the slot still holds.
    kept: Vec<Vec<LlamaToken>>,
    prefix_cache: bool,
    /// `Some(FLASH_BLOCK)` with flash attention: prompts cut in aligned blocks (see there).
    block: Option<usize>,
    sliding_window: usize,
    /// Generating sequences' next tokens are decoded in one batch; otherwise each in a batch of
    /// its own (see `start`).
    pub(crate) batched: bool,
    context_length: usize,
    piece: Vec<u8>,
}

impl<'m> Scheduler<'m> {
    pub(crate) fn new(
        model: &'m LlamaModel,
        context: LlamaContext<'m>,
        limits: &Limits,
        metrics: Arc<LlmMetrics>,
    ) -> Self {
        let ids = i32::try_from(limits.max_sequences).unwrap_or(i32::MAX);
        Scheduler {
            model,
            context,
            batch: LlamaBatch::new(STEP_TOKENS, ids),
            metrics,
            // Lowest ids first (popped from the end).
            free: (0..ids).rev().collect(),
            running: Vec::new(),
            kept: vec![Vec::new(); limits.max_sequences],
            prefix_cache: limits.prefix_cache,
            block: limits.flash_attention.then_some(FLASH_BLOCK),
            sliding_window: limits.sliding_window,
            batched: false,
            context_length: limits.context_length,
            piece: Vec::with_capacity(32),
        }
    }

    pub(crate) fn run(mut self, requests: &Receiver<Pending>, stop: &AtomicBool) {
        let mut open = true;
        loop {
            if stop.load(Ordering::Relaxed) {
                for sequence in std::mem::take(&mut self.running) {
                    sequence.sink.send(Event::Failed(LlmError::ShuttingDown));
                    self.retire(sequence, SequenceOutcome::Failed);
                }
                return;
            }
            self.drop_cancelled();
            if self.running.is_empty() {
                if !open {
                    return;
                }
                match requests.recv_timeout(IDLE_POLL) {
                    Ok(pending) => self.admit(pending),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            while open && !self.free.is_empty() {
                match requests.try_recv() {
                    Ok(pending) => self.admit(pending),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    /// Removes sequences whose client is gone, freeing their slots and KV cells.
    fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].sink.is_closed() {
                let sequence = self.running.swap_remove(i);
                self.retire(sequence, SequenceOutcome::Cancelled);
            } else {
                i += 1;
            }
        }
    }

    fn admit(&mut self, pending: Pending) {
        // A client that left while queued costs nothing.
        if pending.sink.is_closed() {
            self.metrics.ended(SequenceOutcome::Cancelled);
            return;
        }
        let Some((id, reused)) = self.take_slot(&pending.prompt) else {
            // `run` admits only while a slot is free.
            pending.sink.send(Event::Failed(LlmError::Engine("no free sequence slot".into())));
            return;
        };
        self.metrics.prompt_tokens.increment(pending.prompt.len() as u64);
        self.metrics.cached_prompt_tokens.increment(reused as u64);
        let position = i32::try_from(reused).unwrap_or(i32::MAX);
        let mut sampler = pending.sampling.sampler();
        // Penalties count the prompt's tokens too, as llama.cpp's server does.
        if pending.sampling.shaping.penalizes() {
            sampler.accept_many(&pending.prompt);
        }
        self.running.push(Sequence {
            id,
            prompt: pending.prompt,
            fed: reused,
            next: None,
            position,
            logits_at: None,
            finished: None,
            sampler,
            constraint: pending.constraint,
            logprobs: pending.logprobs,
            text: TextStream::new(pending.stop),
            max_tokens: pending.max_tokens,
            generated: 0,
            sink: pending.sink,
            queued_at: pending.queued_at,
            last_token_at: None,
            active: self.metrics.activate(),
        });
    }

    /// A free slot for `prompt` and how many of its first tokens that slot's KV cache already
    /// holds: the slot whose kept prompt shares the longest prefix with it (a shared system
    /// prompt is decoded once, not per request), else the lowest free id. The rest of the
    /// slot's cache is dropped. At least the prompt's last two tokens are decoded again.
    fn take_slot(&mut self, prompt: &[LlamaToken]) -> Option<(i32, usize)> {
        let mut best: Option<(usize, usize)> = None; // (index in free, shared tokens)
        if self.prefix_cache {
            for (at, &id) in self.free.iter().enumerate() {
                let kept = &self.kept[usize::try_from(id).unwrap_or_default()];
                let shared = kept.iter().zip(prompt).take_while(|(a, b)| a == b).count();
                // Two tokens at least are decoded again: a one-token batch takes other kernels
                // (llama.cpp's attention sums in another order for n = 1), and the first
                // token's logits must be those of a fresh prompt.
                let shared = self.reusable(shared, prompt.len());
                if shared > 0 && self.window_held(id, shared) && best.is_none_or(|(_, n)| shared > n) {
                    best = Some((at, shared));
                }
            }
        }
        let (id, mut shared) = match best {
            Some((at, shared)) => (self.free.remove(at), shared),
            None => (self.free.pop()?, 0),
        };
        let slot = usize::try_from(id).unwrap_or_default();
        self.kept[slot].truncate(shared);
        if let Some((donor, longer)) = self.donor(id, prompt, shared) {
            // Another slot holds more of this prompt (a system prompt another request decoded):
            // copy its cells here rather than decode them again.
            if self.context.copy_kv_cache_seq(donor, id, None, None).is_ok() {
                self.metrics.copied_prefixes.increment(1);
                self.kept[slot] = prompt[..longer].to_vec();
                shared = longer;
            }
        }
        let dropped = match u32::try_from(shared) {
            Ok(p0) => self.context.kv_cache_seq_rm(id, Some(p0), None).is_ok(),
            Err(_) => false,
        };
        if dropped {
            Some((id, shared))
        } else {
            self.kept[slot].clear();
            let _ = self.context.clear_kv_cache_seq(u32::try_from(id).ok(), None, None);
            Some((id, 0))
        }
    }

    /// A slot other than `id` — free with a kept prompt, or running with its prompt decoded so
    /// far — whose cells hold a longer start of `prompt` than `shared` by enough to be worth
    /// copying its KV stream; with how many tokens it gives. With a sliding window, only a slot
    /// that still holds the window those tokens' continuation attends to.
    fn donor(&self, id: i32, prompt: &[LlamaToken], shared: usize) -> Option<(i32, usize)> {
        if !self.prefix_cache {
            return None;
        }
        let common = |tokens: &[LlamaToken]| {
            self.reusable(tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count(), prompt.len())
        };
        let free =
            self.free.iter().map(|&other| (other, common(&self.kept[usize::try_from(other).unwrap_or_default()])));
        let running = self.running.iter().map(|s| (s.id, common(&s.prompt[..s.fed])));
        free.chain(running)
            .filter(|&(other, n)| other != id && n >= shared + MIN_COPY_GAIN && self.window_held(other, n))
            .max_by_key(|&(_, n)| n)
    }

    /// How many of a prompt's `len` tokens may come from cells holding its first `common`: all
    /// but the last two (a one-token chunk takes other kernels without flash attention, and
    /// the first token's logits must be a fresh prompt's); with flash attention, whole blocks
    /// only, short of the block holding the last token.
    fn reusable(&self, common: usize, len: usize) -> usize {
        match self.block {
            None => common.min(len.saturating_sub(2)),
            Some(block) => {
                let n = common.min(len.saturating_sub(1));
                n - n % block
            }
        }
    }

    /// Whether slot `id` still holds the cells a prompt continuing at `shared` attends to: with
    /// a sliding window, every position from `shared - window` on (the window's layers drop
    /// older cells as a sequence grows — reusing the prompt without them would change the
    /// text, so the prompt is decoded afresh instead).
    fn window_held(&self, id: i32, shared: usize) -> bool {
        if self.sliding_window == 0 {
            return true;
        }
        let lowest = self.context.kv_cache_seq_pos_min(id);
        let needed = shared.saturating_sub(self.sliding_window);
        lowest >= 0 && usize::try_from(lowest).is_ok_and(|lowest| lowest <= needed)
    }

    /// One step: the next token of every generating sequence in one batch, then chunks of new
    /// prompts, each in a batch of its own.
    ///
    /// A prompt is decoded alone, in chunks of at most `STEP_TOKENS` tokens — exactly as when it
    /// is the only request — because llama.cpp's kernels differ with the shape of a batch (a
    /// one-token chunk and a longer one sum in different orders): what a sequence generates must
    /// not depend on who else is being served. Generating sequences contribute one token each,
    /// solo or together.
    fn step(&mut self) {
        // llama.cpp puts sequences with per-sequence KV streams into one micro-batch only when
        // their ids come in increasing, consecutive order: keep the batch in id order.
        self.running.sort_unstable_by_key(|s| s.id);
        let mut generating = 0;
        for i in 0..self.running.len() {
            let s = &mut self.running[i];
            let Some(token) = s.next else { continue };
            if !self.batched || generating == 0 {
                self.batch.clear();
            }
            let at = self.batch.n_tokens();
            if self.batch.add(token, s.position, &[s.id], true).is_ok() {
                s.logits_at = Some(at);
                s.position += 1;
                generating += 1;
                if !self.batched {
                    // A model whose batched logits differ from its solo ones: one batch each.
                    self.decode_and_sample();
                }
            }
        }
        if generating > 0 {
            self.metrics.step_sequences.record(if self.batched { generating as f64 } else { 1.0 });
            if self.batched {
                self.decode_and_sample();
            }
        }
        // New prompts, one chunk each (with flash attention's blocks, as many blocks as fit), until
        // this step has taken STEP_TOKENS prompt tokens.
        let mut budget = STEP_TOKENS;
        for i in 0..self.running.len() {
            loop {
                let s = &mut self.running[i];
                if budget == 0 || s.next.is_some() || s.finished.is_some() || s.fed == s.prompt.len() {
                    break;
                }
                self.batch.clear();
                let left = s.prompt.len() - s.fed;
                let take = match self.block {
                    // Always the same cuts: the block from `fed` (a multiple of the block) on.
                    Some(block) => left.min(block - s.fed % block),
                    None => {
                        let mut take = left.min(STEP_TOKENS);
                        // Never leave a one-token chunk: it would take other kernels than the rest.
                        if left - take == 1 {
                            take -= 1;
                        }
                        take
                    }
                };
                for k in 0..take {
                    let last = s.fed + k + 1 == s.prompt.len();
                    let at = self.batch.n_tokens();
                    if self.batch.add(s.prompt[s.fed + k], s.position, &[s.id], last).is_err() {
                        break;
                    }
                    if last {
                        s.logits_at = Some(at);
                    }
                    s.position += 1;
                }
                s.fed += take;
                budget = budget.saturating_sub(take);
                self.decode_and_sample();
                if self.block.is_none() {
                    break;
                }
            }
        }
        let mut i = 0;
        while i < self.running.len() {
            match self.running[i].finished {
                Some(outcome) => {
                    let sequence = self.running.swap_remove(i);
                    self.retire(sequence, outcome);
                }
                None => i += 1,
            }
        }
    }

    /// Decodes the batch and samples every sequence that has logits in it.
    fn decode_and_sample(&mut self) {
        if let Err(e) = self.context.decode(&mut self.batch) {
            tracing::error!("llama.cpp decode failed: {e}");
            for s in self.running.iter_mut().filter(|s| s.logits_at.is_some() || s.next.is_none()) {
                s.sink.send(Event::Failed(LlmError::Engine(e.to_string())));
                s.logits_at = None;
                s.finished = Some(SequenceOutcome::Failed);
            }
            return;
        }
        let now = Instant::now();
        for i in 0..self.running.len() {
            if let Some(reason) = self.sample(i, now) {
                self.running[i].finished = Some(SequenceOutcome::Finished(reason));
            }
            self.running[i].logits_at = None;
        }
    }

    /// Samples sequence `i`'s next token if it got logits in the batch just decoded; `Some`
    /// when it is done.
    fn sample(&mut self, i: usize, now: Instant) -> Option<FinishReason> {
        let s = &mut self.running[i];
        let at = s.logits_at?;
        let token = match s.constraint.as_mut() {
            None => s.sampler.sample(&self.context, at),
            Some(constraint) => {
                match sampling::constrained_sample(self.model, &self.context, at, &mut s.sampler, constraint) {
                    Ok(token) => token,
                    Err(error) => {
                        tracing::warn!("constrained decoding failed: {error}");
                        s.sink.send(Event::Failed(error));
                        s.finished = Some(SequenceOutcome::Failed);
                        return None;
                    }
                }
            }
        };
        match s.last_token_at {
            None => self.metrics.first_token(now - s.queued_at),
            Some(previous) => self.metrics.inter_token.record((now - previous).as_secs_f64()),
        }
        s.last_token_at = Some(now);
        let vocab = self.model.vocab();
        let reason = if vocab.is_eog(token) {
            send_text(&s.sink, s.text.finish());
            Some(FinishReason::Stop)
        } else {
            s.generated += 1;
            self.metrics.generated_tokens.increment(1);
            self.piece.clear();
            vocab.token_to_piece_into(token, &mut self.piece, false, None);
            if let Some(top) = s.logprobs {
                // The raw distribution, as llama.cpp's server reports it (sampling copies the
                // logits; they are as decoded).
                let chosen = usize::try_from(token.0).unwrap_or(usize::MAX);
                let (logprob, top) = sampling::logprobs(self.context.get_logits_ith(at), chosen, top);
                let top = top
                    .into_iter()
                    .map(|(t, logprob)| {
                        let bytes = vocab.token_to_piece(LlamaToken(i32::try_from(t).unwrap_or_default()), false, None);
                        crate::TopLogprob { token: String::from_utf8_lossy(&bytes).into_owned(), bytes, logprob }
                    })
                    .collect();
                let bytes = self.piece.clone();
                s.sink.send(Event::Logprobs(vec![crate::TokenLogprob {
                    token: String::from_utf8_lossy(&bytes).into_owned(),
                    bytes,
                    logprob,
                    top,
                }]));
            }
            match s.text.push(&self.piece) {
                Piece::Stopped(text) => {
                    send_text(&s.sink, text);
                    Some(FinishReason::Stop)
                }
                Piece::Text(text) => {
                    send_text(&s.sink, text);
                    let full = s.prompt.len() + s.generated >= self.context_length;
                    if s.constraint.as_ref().is_some_and(Constraint::finished) {
                        // The grammar is complete: nothing but the end could follow.
                        send_text(&s.sink, s.text.finish());
                        Some(FinishReason::Stop)
                    } else {
                        (s.generated >= s.max_tokens || full).then_some(FinishReason::Length)
                    }
                }
            }
        };
        match reason {
            Some(FinishReason::Length) => send_text(&s.sink, s.text.finish()),
            Some(FinishReason::Stop) => {}
            None => s.next = Some(token),
        }
        if let Some(reason) = reason {
            let usage = Usage { prompt_tokens: s.prompt.len(), completion_tokens: s.generated };
            // Counted before the caller hears of it: a client that has its answer sees it in
            // kiln_llm_sequences_total, and finds the model idle (a budget may unload it).
            self.metrics.ended(SequenceOutcome::Finished(reason));
            s.active.end();
            s.sink.send(Event::Done { reason, usage });
        }
        reason
    }

    /// Frees a sequence's slot and KV cells.
    fn retire(&mut self, sequence: Sequence, outcome: SequenceOutcome) {
        // The slot keeps the KV cells of the prompt tokens decoded (for a later prompt with the
        // same start); generated tokens' cells go — they were computed one at a time, and a
        // prompt's cells must be what decoding that prompt computes.
        let slot = usize::try_from(sequence.id).unwrap_or_default();
        let keep = if self.prefix_cache && outcome != SequenceOutcome::Failed { sequence.fed } else { 0 };
        let kept = u32::try_from(keep).ok().filter(|_| keep > 0);
        let removed = match kept {
            Some(p0) => self.context.kv_cache_seq_rm(sequence.id, Some(p0), None).is_ok(),
            None => false,
        };
        self.kept[slot].clear();
        if removed {
            self.kept[slot].extend_from_slice(&sequence.prompt[..keep]);
        } else if let Ok(id) = u32::try_from(sequence.id)
            && let Err(e) = self.context.clear_kv_cache_seq(Some(id), None, None)
        {
            tracing::warn!("cannot clear sequence {id}'s KV cache: {e}");
        }
        // A finished sequence was counted when its caller was told (see above).
        if !matches!(outcome, SequenceOutcome::Finished(_)) {
            self.metrics.ended(outcome);
        }
        // Lowest free id next (popped from the end), so running ids stay consecutive.
        let at = self.free.partition_point(|&id| id > sequence.id);
        self.free.insert(at, sequence.id);
        // Its `Active` guard lowers the active-sequence gauge.
        drop(sequence);
    }
}

fn send_text(sink: &crate::outbox::Sink, text: String) {
    if !text.is_empty() {
        sink.send(Event::Text(text));
    }
}
