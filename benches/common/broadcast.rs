//! Broadcast phases over the chat example, measured by the bench's own Socket.IO clients
//! ([`super::sio_client`]): a few clients send `chat message` events, every client counts the
//! broadcasts it receives, and a phase records deliveries, their rate and latency.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::sio_client::{BROADCAST_PREFIX, Client, OP_TEXT, Receiver, chat_message, client_frame};

/// Each phase may take this long; broadcasts that have not reached every client by then are
/// missing from it.
pub const PHASE_TIMEOUT: Duration = Duration::from_secs(60);
/// At most this many broadcasts in flight in a [`Pace::Rate`] phase.
pub const PACED_BACKLOG: usize = 64;

/// How a phase sends.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as broadcasts complete, at most this many in flight.
    Window(usize),
    /// At this rate per second, at most [`PACED_BACKLOG`] in flight.
    Rate(f64),
}

/// What the clients measured in one phase.
#[derive(Debug, Default, Clone)]
pub struct Phase {
    pub broadcasts: usize,
    /// Broadcasts that reached every client before the deadline.
    pub completed: usize,
    pub deliveries: u64,
    /// First send → last receipt.
    pub seconds: f64,
    /// Latency percentiles and maximum, µs.
    pub p50: u32,
    pub p99: u32,
    pub max: u32,
}

impl Phase {
    /// Deliveries per second.
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 { self.deliveries as f64 / self.seconds } else { 0.0 }
    }

    /// Every broadcast reached each of `clients`.
    pub fn complete(&self, clients: usize) -> bool {
        self.completed == self.broadcasts && self.deliveries == (self.broadcasts * clients) as u64
    }
}

/// What every client task shares (one thread: `Cell`s and `RefCell`s, never borrowed across an
/// await).
pub struct Shared {
    base: Instant,
    clients: u32,
    /// The phase being measured; deliveries tagged with another one are counted as stale.
    phase: Cell<u64>,
    /// For each broadcast of the phase, the clients that have yet to receive it.
    remaining: RefCell<Vec<u32>>,
    completed: Cell<usize>,
    deliveries: Cell<u64>,
    last_receipt_us: Cell<u64>,
    latencies: RefCell<Vec<u32>>,
    stale: Cell<u64>,
    unexpected: Cell<u64>,
    /// The first few unexpected messages, cut to `sample_chars` bytes.
    samples: RefCell<Vec<String>>,
    max_samples: usize,
    sample_chars: usize,
    /// Woken when a broadcast has reached every client.
    progress: Notify,
}

impl Receiver for Shared {
    fn now_us(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn on_text(&self, text: &[u8], now_us: u64, out: &mut Vec<u8>) {
        if let Some(rest) = text.strip_prefix(BROADCAST_PREFIX) {
            if self.on_broadcast(rest, now_us).is_none() {
                self.unexpected(text);
            }
        } else if text == b"2" {
            // Engine.IO ping.
            out.extend(client_frame(OP_TEXT, b"3"));
        } else {
            self.unexpected(text);
        }
    }
}

impl Shared {
    /// For `clients` clients; keeps up to `max_samples` unexpected messages, cut to `sample_chars`.
    pub fn new(clients: usize, max_samples: usize, sample_chars: usize) -> Self {
        Self {
            base: Instant::now(),
            clients: u32::try_from(clients).expect("client count"),
            phase: Cell::new(0),
            remaining: RefCell::new(Vec::new()),
            completed: Cell::new(0),
            deliveries: Cell::new(0),
            last_receipt_us: Cell::new(0),
            latencies: RefCell::new(Vec::new()),
            stale: Cell::new(0),
            unexpected: Cell::new(0),
            samples: RefCell::new(Vec::new()),
            max_samples,
            sample_chars,
            progress: Notify::new(),
        }
    }

    /// Deliveries of an earlier phase.
    pub fn stale(&self) -> u64 {
        self.stale.get()
    }

    /// Messages that were neither a broadcast of the phase nor a ping.
    pub fn unexpected_count(&self) -> u64 {
        self.unexpected.get()
    }

    pub fn samples(&self) -> Vec<String> {
        self.samples.borrow().clone()
    }

    /// `<phase>:<seq>:<sent µs>:xxx…"]`; `None` if malformed or a duplicate.
    fn on_broadcast(&self, rest: &[u8], now_us: u64) -> Option<()> {
        let mut fields = rest.splitn(4, |&b| b == b':');
        let mut number = || -> Option<u64> { std::str::from_utf8(fields.next()?).ok()?.parse().ok() };
        let (phase, seq, sent) = (number()?, number()?, number()?);
        if phase != self.phase.get() {
            self.stale.set(self.stale.get() + 1);
            return Some(());
        }
        let mut remaining = self.remaining.borrow_mut();
        let left = remaining.get_mut(usize::try_from(seq).ok()?)?;
        *left = left.checked_sub(1)?;
        if *left == 0 {
            self.completed.set(self.completed.get() + 1);
            self.progress.notify_one();
        }
        self.deliveries.set(self.deliveries.get() + 1);
        self.last_receipt_us.set(now_us);
        self.latencies.borrow_mut().push(u32::try_from(now_us.saturating_sub(sent)).unwrap_or(u32::MAX));
        Some(())
    }

    fn unexpected(&self, text: &[u8]) {
        self.unexpected.set(self.unexpected.get() + 1);
        let mut samples = self.samples.borrow_mut();
        if samples.len() < self.max_samples {
            samples.push(String::from_utf8_lossy(&text[..text.len().min(self.sample_chars)]).into_owned());
        }
    }

    /// Starts phase `id` of `broadcasts`.
    fn begin(&self, id: u64, broadcasts: usize) {
        self.phase.set(id);
        *self.remaining.borrow_mut() = vec![self.clients; broadcasts];
        self.completed.set(0);
        self.deliveries.set(0);
        self.last_receipt_us.set(0);
        self.latencies.borrow_mut().clear();
    }
}

/// Phase `id`: `count` broadcasts of `size`-byte texts, paced by `pace`, the senders taking turns;
/// returns when every client has every broadcast or at the phase's deadline.
pub async fn broadcast(
    shared: &Shared,
    senders: &[mpsc::UnboundedSender<Vec<u8>>],
    (id, count): (u64, usize),
    pace: Pace,
    size: usize,
) -> Result<Phase, String> {
    shared.begin(id, count);
    let start = tokio::time::Instant::now();
    let deadline = start + PHASE_TIMEOUT;
    let first_send_us = shared.now_us();
    let window = match pace {
        Pace::Window(window) => window,
        Pace::Rate(_) => PACED_BACKLOG,
    };
    let mut sent = 0;
    'sending: while sent < count {
        if let Pace::Rate(rate) = pace {
            tokio::time::sleep_until(start + Duration::from_secs_f64(sent as f64 / rate)).await;
        }
        while sent - shared.completed.get() >= window {
            if tokio::time::timeout_at(deadline, shared.progress.notified()).await.is_err() {
                break 'sending;
            }
        }
        let frame = client_frame(OP_TEXT, &chat_message(id, sent as u64, shared.now_us(), size));
        senders[sent % senders.len()].send(frame).map_err(|_| "a sender's connection is gone".to_owned())?;
        sent += 1;
    }
    while shared.completed.get() < count {
        if tokio::time::timeout_at(deadline, shared.progress.notified()).await.is_err() {
            break;
        }
    }
    let mut latencies = std::mem::take(&mut *shared.latencies.borrow_mut());
    latencies.sort_unstable();
    let at = |q: f64| -> u32 {
        let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len().max(1));
        latencies.get(rank - 1).copied().unwrap_or(0)
    };
    Ok(Phase {
        broadcasts: count,
        completed: shared.completed.get(),
        deliveries: shared.deliveries.get(),
        seconds: shared.last_receipt_us.get().saturating_sub(first_send_us) as f64 / 1e6,
        p50: at(0.50),
        p99: at(0.99),
        max: latencies.last().copied().unwrap_or(0),
    })
}

/// Runs every client (those at the indices `senders` write what their sender is given, in that
/// order), then `phases` with the shared state and the senders; a client that fails (the server
/// closed it, a bad frame) ends the run at once. Stops the clients when the phases are done.
pub async fn run_clients<T>(
    clients: Vec<Client>,
    shared: Rc<Shared>,
    senders: &[usize],
    phases: impl AsyncFnOnce(&Shared, &[mpsc::UnboundedSender<Vec<u8>>]) -> Result<T, String>,
) -> Result<T, String> {
    let stop = CancellationToken::new();
    let mut txs = vec![None; senders.len()];
    let mut tasks = tokio::task::JoinSet::new();
    for (i, client) in clients.into_iter().enumerate() {
        let outgoing = senders.iter().position(|&s| s == i).map(|slot| {
            let (tx, rx) = mpsc::unbounded_channel();
            txs[slot] = Some(tx);
            rx
        });
        tasks.spawn_local(client.run(Rc::clone(&shared), outgoing, stop.clone()));
    }
    let txs: Vec<_> = txs.into_iter().flatten().collect();
    let result = tokio::select! {
        outcome = phases(&shared, &txs) => outcome?,
        Some(ended) = tasks.join_next() => {
            let why = ended.map_err(|e| e.to_string()).and_then(|r| r).err().unwrap_or_else(|| "ended".into());
            return Err(format!("a client stopped during the run: {why}"));
        }
    };
    stop.cancel();
    while let Some(ended) = tasks.join_next().await {
        ended.map_err(|e| e.to_string())?.map_err(|e| format!("a client failed: {e}"))?;
    }
    Ok(result)
}
