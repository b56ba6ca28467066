//! Continuous batching: one thread per loaded model runs every active sequence of that model
//! step by step. A step is one [`CpuModel::step`]: every decoding sequence's next token
//! together (one pass over the weights for the whole batch) plus a bounded chunk of waiting
//! prompts, so a long prompt is prefilled over several steps instead of freezing the streams.
//! Sequences join and leave between steps; each has its own KV cache, sampler, stop strings
//! and text decoder, so a greedy request gets the same tokens alone or in a batch.
//!
//! The scheduler knows nothing of HTTP: a job carries an [`EventSink`] that the server turns
//! into a response, and that says when its client has gone (the slot is freed at the next
//! step).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};

use super::model::Sequence;
use super::sampler::{Sampler, SamplerOptions};
use super::session::LoadedModel;
use super::tokenizer::StreamDecoder;

/// What a sequence tells its client.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Finished text (never half a character, never part of a stop string).
    Text(String),
    /// The end; no event follows.
    Done(Finish),
    /// The engine failed on this sequence; no event follows.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An eos token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The server is shutting down.
    Cancelled,
}

impl FinishReason {
    /// OpenAI's `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length | FinishReason::Cancelled => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Where a sequence's events go.
pub trait EventSink: Send {
    /// Delivers `event`; false once nobody listens (the client hung up).
    fn send(&mut self, event: Event) -> bool;
    /// True once nobody listens: the sequence is dropped at the next step.
    fn is_closed(&self) -> bool;
}

/// One generation request.
pub struct Job {
    /// The prompt's token ids (not empty).
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampler: SamplerOptions,
    /// Strings that end the generation; the text stops before them.
    pub stop: Vec<String>,
    pub sink: Box<dyn EventSink>,
}

#[derive(Debug, Clone, Copy)]
pub struct SchedulerOptions {
    /// Sequences decoding at once.
    pub max_batch: usize,
    /// Jobs waiting for a place in the batch; past this, [`Scheduler::submit`] refuses.
    pub max_queue: usize,
    /// Prompt tokens prefilled per step (the step's added latency for running streams).
    pub prefill_chunk: usize,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            max_batch: 8,
            max_queue: 64,
            prefill_chunk: 256,
        }
    }
}

/// Why a job was not taken.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("{in_flight} requests are running or queued for this model (the limit is {limit}); retry later")]
    Busy { in_flight: usize, limit: usize },
    #[error("the model's worker has stopped")]
    Stopped,
}

enum Message {
    Job(Job, Ticket),
    CancelAll,
}

/// Counts a job as in flight until it is dropped, whichever way it ends.
struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a scheduler has done (for /health and the tests that check batching happened).
#[derive(Debug, Default)]
pub struct SchedulerStats {
    /// Steps run.
    pub steps: AtomicUsize,
    /// The most sequences that decoded together in one step.
    pub peak_batch: AtomicUsize,
    /// Tokens sampled, every sequence together.
    pub tokens_generated: AtomicUsize,
}

/// The batching loop of one model, on its own thread. Dropping the scheduler lets the thread
/// finish what it has and exit, unmapping the weights when it was the last holder.
pub struct Scheduler {
    jobs: Mutex<Sender<Message>>,
    in_flight: Arc<AtomicUsize>,
    limit: usize,
    pub stats: Arc<SchedulerStats>,
}

impl Scheduler {
    pub fn start(model: Arc<LoadedModel>, opts: SchedulerOptions) -> std::io::Result<Scheduler> {
        let opts = SchedulerOptions {
            max_batch: opts.max_batch.max(1),
            prefill_chunk: opts.prefill_chunk.max(1),
            ..opts
        };
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(SchedulerStats::default());
        let batcher = Batcher::new(model, opts, stats.clone());
        std::thread::Builder::new()
            .name("mlxk-batch".into())
            .spawn(move || batcher.run(rx))?;
        Ok(Scheduler {
            jobs: Mutex::new(tx),
            in_flight: Arc::new(AtomicUsize::new(0)),
            limit: opts.max_batch + opts.max_queue,
            stats,
        })
    }

    /// Queues `job`; it joins the batch when a place is free.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        let taken = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            });
        if let Err(in_flight) = taken {
            return Err(SubmitError::Busy {
                in_flight,
                limit: self.limit,
            });
        }
        let ticket = Ticket(self.in_flight.clone());
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Message::Job(job, ticket))
            .map_err(|_| SubmitError::Stopped)
    }

    /// Requests running or waiting.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Ends every running and waiting job (`FinishReason::Cancelled`) at the next step.
    pub fn cancel_all(&self) {
        let _ = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Message::CancelAll);
    }
}

/// A job in the batch.
struct Slot {
    job: Job,
    /// Released before the end is sent: a client that has its answer may submit again at once.
    ticket: Option<Ticket>,
    seq: Sequence,
    /// Prompt tokens run so far.
    fed: usize,
    /// The token to run next once the prompt is in.
    last: u32,
    /// Prompt and generated tokens (the repetition penalty's window).
    history: Vec<u32>,
    generated: usize,
    sampler: Sampler,
    decoder: StreamDecoder,
    stops: StopText,
    /// The sink refused an event: the client has gone.
    gone: bool,
}

struct Batcher {
    loaded: Arc<LoadedModel>,
    opts: SchedulerOptions,
    stats: Arc<SchedulerStats>,
    waiting: VecDeque<(Job, Ticket)>,
    slots: Vec<Slot>,
}

impl Batcher {
    fn new(
        loaded: Arc<LoadedModel>,
        opts: SchedulerOptions,
        stats: Arc<SchedulerStats>,
    ) -> Batcher {
        Batcher {
            loaded,
            opts,
            stats,
            waiting: VecDeque::new(),
            slots: Vec::new(),
        }
    }

    fn run(mut self, rx: Receiver<Message>) {
        let mut open = true;
        loop {
            if self.slots.is_empty() && self.waiting.is_empty() {
                if !open {
                    return;
                }
                // Nothing to do: sleep until a job comes (or the scheduler is dropped).
                match rx.recv() {
                    Ok(m) => self.take(m),
                    Err(_) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(m) => self.take(m),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.slots.retain(|s| !s.gone && !s.job.sink.is_closed());
            self.admit();
            if !self.slots.is_empty() {
                self.step();
            }
        }
    }

    fn take(&mut self, m: Message) {
        match m {
            Message::Job(job, ticket) => self.waiting.push_back((job, ticket)),
            Message::CancelAll => {
                for (mut job, ticket) in self.waiting.drain(..) {
                    drop(ticket);
                    job.sink.send(Event::Done(Finish {
                        reason: FinishReason::Cancelled,
                        prompt_tokens: job.prompt.len(),
                        completion_tokens: 0,
                    }));
                }
                for mut s in self.slots.drain(..) {
                    s.finish(&self.loaded, FinishReason::Cancelled);
                }
            }
        }
    }

    /// Moves waiting jobs into free places of the batch (skipping those already abandoned).
    fn admit(&mut self) {
        while self.slots.len() < self.opts.max_batch {
            let Some((job, ticket)) = self.waiting.pop_front() else {
                break;
            };
            if job.sink.is_closed() {
                continue;
            }
            if job.prompt.is_empty() || job.max_tokens == 0 {
                let mut job = job;
                drop(ticket);
                job.sink.send(Event::Failed(
                    "a request needs a prompt of at least one token and max_tokens of at least 1"
                        .into(),
                ));
                continue;
            }
            let mut seq = Sequence::new(&self.loaded.model);
            // Room for the prompt and a first stretch of the answer; the cache grows after.
            seq.reserve(job.prompt.len() + job.max_tokens.min(1024) + 1);
            self.slots.push(Slot {
                sampler: Sampler::new(job.sampler.clone()),
                stops: StopText::new(job.stop.clone()),
                history: job.prompt.clone(),
                job,
                ticket: Some(ticket),
                seq,
                fed: 0,
                last: 0,
                generated: 0,
                decoder: StreamDecoder::default(),
                gone: false,
            });
        }
    }

    /// One step: every decoding slot's next token and up to `prefill_chunk` prompt tokens,
    /// then sampling for every slot that got logits.
    fn step(&mut self) {
        let mut budget = self.opts.prefill_chunk;
        // (slot index, prompt tokens run) of the slots in this step.
        let mut ran: Vec<(usize, usize)> = Vec::with_capacity(self.slots.len());
        let mut work = Vec::with_capacity(self.slots.len());
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Slot {
                seq,
                job,
                fed,
                last,
                ..
            } = slot;
            let rest = job.prompt.len() - *fed;
            if rest > 0 {
                if budget == 0 {
                    continue;
                }
                let mut n = rest.min(budget);
                // Never leave a single prompt token for the next step: the prompt runs in
                // chunks of several rows, as `mlxk run` prefills it.
                if rest - n == 1 {
                    n = rest;
                }
                budget = budget.saturating_sub(n);
                ran.push((i, n));
                work.push((seq, &job.prompt[*fed..*fed + n]));
            } else {
                ran.push((i, 0));
                work.push((seq, std::slice::from_ref(&*last)));
            }
        }
        let decodes = ran.iter().filter(|&&(_, prompt)| prompt == 0).count();
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.stats.peak_batch.fetch_max(decodes, Ordering::Relaxed);
        if let Err(e) = self.loaded.model.step(&mut work) {
            drop(work);
            for &(i, _) in &ran {
                let slot = &mut self.slots[i];
                slot.ticket = None;
                slot.job.sink.send(Event::Failed(e.to_string()));
                slot.gone = true;
            }
            return;
        }
        drop(work);
        for (i, prompt_run) in ran {
            let slot = &mut self.slots[i];
            slot.fed += prompt_run;
            if slot.fed < slot.job.prompt.len() {
                continue;
            }
            let logits = self.loaded.model.logits(&slot.seq);
            let token = slot.sampler.sample(logits, &slot.history);
            self.stats.tokens_generated.fetch_add(1, Ordering::Relaxed);
            if let Some(reason) = slot.accept(&self.loaded, token) {
                slot.finish(&self.loaded, reason);
            }
        }
        self.slots.retain(|s| !s.gone);
    }
}

impl Slot {
    /// Takes the sampled `token`: the end if it is an eos id, completes a stop string or
    /// reaches `max_tokens`; else its text goes out and it runs next step.
    fn accept(&mut self, loaded: &LoadedModel, token: u32) -> Option<FinishReason> {
        if loaded.eos.contains(&token) {
            return Some(FinishReason::Stop);
        }
        self.generated += 1;
        self.history.push(token);
        self.last = token;
        let piece = self.decoder.push(&loaded.tok, token);
        if !piece.is_empty() {
            let (text, stopped) = self.stops.push(&piece);
            self.emit(text);
            if stopped {
                return Some(FinishReason::Stop);
            }
        }
        (self.generated >= self.job.max_tokens).then_some(FinishReason::Length)
    }

    fn emit(&mut self, text: String) {
        if !text.is_empty() && !self.gone && !self.job.sink.send(Event::Text(text)) {
            self.gone = true;
        }
    }

    /// Sends what is held back (unless a stop string ended it) and the end; the slot leaves.
    fn finish(&mut self, loaded: &LoadedModel, reason: FinishReason) {
        if !self.stops.stopped {
            let rest = self.decoder.finish(&loaded.tok);
            let (mut text, stopped) = self.stops.push(&rest);
            if !stopped {
                text.push_str(&self.stops.rest());
            }
            self.emit(text);
        }
        self.ticket = None;
        if !self.gone {
            self.job.sink.send(Event::Done(Finish {
                reason,
                prompt_tokens: self.job.prompt.len(),
                completion_tokens: self.generated,
            }));
        }
        self.gone = true;
    }
}

/// Generated text checked against the stop strings: what can be sent is sent, a tail that may
/// still become a stop string is held back, and a completed stop string ends the text just
/// before it.
pub(crate) struct StopText {
    stops: Vec<String>,
    text: String,
    sent: usize,
    stopped: bool,
}

impl StopText {
    pub(crate) fn new(stops: Vec<String>) -> StopText {
        StopText {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            text: String::new(),
            sent: 0,
            stopped: false,
        }
    }

    /// Adds `piece`; returns the text that can go out and whether a stop string was completed.
    pub(crate) fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.text.push_str(piece);
        if self.stops.is_empty() {
            let out = self.text[self.sent..].to_string();
            self.sent = self.text.len();
            return (out, false);
        }
        // A stop string can only start in the held-back tail or the new piece.
        let mut from = self.sent;
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = first_stop {
            let out = self.text[self.sent..at.max(self.sent)].to_string();
            self.sent = self.text.len();
            self.stopped = true;
            return (out, true);
        }
        // Hold back the longest tail that is the start of a stop string.
        let tail = &self.text[self.sent..];
        let held = self
            .stops
            .iter()
            .flat_map(|s| s.char_indices().skip(1).map(move |(k, _)| &s[..k]))
            .filter(|prefix| tail.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let upto = self.text.len() - held;
        let out = self.text[self.sent..upto].to_string();
        self.sent = upto;
        (out, false)
    }

    /// The held-back tail, at the end of the generation.
    pub(crate) fn rest(&mut self) -> String {
        let out = self.text[self.sent..].to_string();
        self.sent = self.text.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sampler::SamplerOptions;
    use crate::testkit::{llama_model_files, LlamaSpec};
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    /// Events into a channel; `closed` plays the client hanging up.
    struct TestSink {
        tx: mpsc::Sender<Event>,
        closed: Arc<AtomicBool>,
    }

    impl EventSink for TestSink {
        fn send(&mut self, event: Event) -> bool {
            !self.closed.load(Ordering::Relaxed) && self.tx.send(event).is_ok()
        }
        fn is_closed(&self) -> bool {
            self.closed.load(Ordering::Relaxed)
        }
    }

    /// A tiny model without eos ids: a job ends at its max_tokens (or when cancelled).
    fn endless() -> (tempfile::TempDir, Arc<LoadedModel>) {
        let dir = tempfile::tempdir().unwrap();
        let spec = LlamaSpec {
            std: 0.3,
            seed: 23,
            ..LlamaSpec::default()
        };
        for (name, bytes) in llama_model_files(&spec, 1, false, "mlx") {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let model = crate::store::spec::resolve_any(None, dir.path().to_str().unwrap()).unwrap();
        let mut loaded = LoadedModel::load(&model).unwrap();
        loaded.eos.clear();
        (dir, Arc::new(loaded))
    }

    fn job(prompt: &[u32], max_tokens: usize) -> (Job, mpsc::Receiver<Event>, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel();
        let closed = Arc::new(AtomicBool::new(false));
        let sink = TestSink {
            tx,
            closed: closed.clone(),
        };
        let job = Job {
            prompt: prompt.to_vec(),
            max_tokens,
            sampler: SamplerOptions {
                temperature: 0.0,
                ..SamplerOptions::openai()
            },
            stop: Vec::new(),
            sink: Box::new(sink),
        };
        (job, rx, closed)
    }

    /// The text and the end of a job (a minute at most: a hang is a failure, not a wait).
    fn answer(rx: &mpsc::Receiver<Event>) -> (String, Finish) {
        let mut text = String::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(60)).expect("an event") {
                Event::Text(t) => text.push_str(&t),
                Event::Done(f) => return (text, f),
                Event::Failed(m) => panic!("failed: {m}"),
            }
        }
    }

    #[test]
    fn jobs_in_one_batch_get_what_each_gets_alone() {
        let (_dir, model) = endless();
        let opts = SchedulerOptions {
            max_batch: 4,
            max_queue: 4,
            prefill_chunk: 8,
        };
        let prompts: [(&[u32], usize); 4] = [
            (&[1, 2, 3], 12),
            (&[9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11, 12, 13], 20),
            (&[42], 7),
            (&[5, 5, 5, 5], 16),
        ];
        let alone: Vec<(String, Finish)> = prompts
            .iter()
            .map(|(p, n)| {
                let s = Scheduler::start(model.clone(), opts).unwrap();
                let (j, rx, _) = job(p, *n);
                s.submit(j).unwrap();
                answer(&rx)
            })
            .collect();
        let s = Scheduler::start(model.clone(), opts).unwrap();
        let receivers: Vec<_> = prompts
            .iter()
            .map(|(p, n)| {
                let (j, rx, closed) = job(p, *n);
                s.submit(j).unwrap();
                (rx, closed)
            })
            .collect();
        for (i, (rx, _)) in receivers.iter().enumerate() {
            let (text, finish) = answer(rx);
            assert_eq!((&text, &finish), (&alone[i].0, &alone[i].1), "job {i}");
            assert_eq!(finish.reason, FinishReason::Length);
            assert_eq!(finish.completion_tokens, prompts[i].1);
            assert_eq!(finish.prompt_tokens, prompts[i].0.len());
        }
        assert!(s.stats.peak_batch.load(Ordering::Relaxed) >= 2);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn a_client_gone_frees_its_place_and_the_queue_is_bounded() {
        let (_dir, model) = endless();
        let s = Scheduler::start(
            model,
            SchedulerOptions {
                max_batch: 1,
                max_queue: 1,
                prefill_chunk: 64,
            },
        )
        .unwrap();
        let (long, long_rx, long_gone) = job(&[1, 2, 3], usize::MAX);
        s.submit(long).unwrap();
        // The long job runs (text arrives), the next one waits, a third is refused.
        assert!(matches!(
            long_rx.recv_timeout(Duration::from_secs(60)),
            Ok(Event::Text(_))
        ));
        let (next, next_rx, _) = job(&[4, 5], 5);
        s.submit(next).unwrap();
        let (third, _, _) = job(&[6], 5);
        assert_eq!(
            s.submit(third).unwrap_err(),
            SubmitError::Busy {
                in_flight: 2,
                limit: 2
            }
        );
        // Its client gone, the long job leaves; the waiting one runs to its end.
        long_gone.store(true, Ordering::Relaxed);
        let (_, finish) = answer(&next_rx);
        assert_eq!(finish.completion_tokens, 5);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while s.in_flight() != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "in flight: {}",
                s.in_flight()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn cancel_all_ends_running_and_waiting_jobs() {
        let (_dir, model) = endless();
        let s = Scheduler::start(
            model,
            SchedulerOptions {
                max_batch: 1,
                max_queue: 4,
                prefill_chunk: 64,
            },
        )
        .unwrap();
        let (running, running_rx, _) = job(&[1, 2, 3], usize::MAX);
        let (waiting, waiting_rx, _) = job(&[4], usize::MAX);
        s.submit(running).unwrap();
        s.submit(waiting).unwrap();
        s.cancel_all();
        for rx in [&running_rx, &waiting_rx] {
            assert_eq!(answer(rx).1.reason, FinishReason::Cancelled);
        }
    }

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut s = StopText::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (text, stopped) = s.push(p);
            out.push_str(&text);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&s.rest());
        (out, false)
    }

    #[test]
    fn stop_strings_end_the_text_before_them_across_pieces() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(
            run(&["END"], &["ab", "cE", "N", "Dx"]),
            ("abc".into(), true)
        );
        // A held-back start that does not become a stop string is sent after all.
        assert_eq!(run(&["END"], &["aE", "N", "x"]), ("aENx".into(), false));
        assert_eq!(run(&["END"], &["aEN"]), ("aEN".into(), false));
        // The earliest of several stops wins; one inside a piece cuts it.
        assert_eq!(run(&["yz", "b"], &["abcyz"]), ("a".into(), true));
        assert_eq!(run(&["\n\n"], &["line\n", "\nnext"]), ("line".into(), true));
        // Multi-byte text and stops: nothing is ever cut inside a character.
        assert_eq!(run(&["é!"], &["café", "!"]), ("caf".into(), true));
        assert_eq!(run(&["éé"], &["ééé"]), ("".into(), true));
        assert_eq!(run(&[""], &["x"]), ("x".into(), false));
    }
}
