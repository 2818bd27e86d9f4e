//! Gathering the workers' metrics for a scrape: the dispatcher hands a [`GatherRequest`] and the
//! handles of the ready workers to a task of its own ([`start`]), which asks each worker's task,
//! waits until every one answered or the deadline passed, merges and replies. Each worker's task
//! keeps its questions in flight in [`Asks`] and asks through its link.
//!
//! ```text
//!   scrape ─► GatherRequest ─► dispatcher ─► gather task ─► Command::Metrics ─► worker task ─► link ─► worker
//!                                                 ▲                                  │
//!                                                 └──────────── Answer ◄─────────────┘ (Said::Metrics)
//! ```
//!
//! Nothing is polled: a worker is asked only when a scrape asks, and a silent one costs the scrape
//! its deadline, never more, and is counted in [`WorkerScrape::missed`].

use std::collections::VecDeque;

use tokio::sync::mpsc;

use super::link::Link;
use super::worker::{Command, Handle};
use crate::metrics::workers::{GatherRequest, WorkerMetrics, WorkerScrape, merge};
use crate::worker_link::Asked;

/// Questions in flight per worker; past that, the oldest is given up (its scrape counts it missed).
const MAX_ASKS_IN_FLIGHT: usize = 4;

/// A Node worker that has never answered is taken for one without prom-client's cluster support
/// (no `AggregatorRegistry` in the worker) after this many unanswered questions, and is not asked
/// again: scrapes neither wait for it nor count it.
const NODE_SILENT_AFTER: u32 = 3;

/// A worker task's answer to a gather task.
#[derive(Debug)]
pub struct Answer {
    pub slot: u32,
    /// `None`: the worker has no metrics to give (it is not counted as missed).
    pub metrics: Option<WorkerMetrics>,
}

/// Starts the gather task of one scrape: `asked` are the ready workers (slot, task handle).
pub fn start(asked: Vec<(u32, Handle)>, request: GatherRequest) {
    tokio::spawn(async move {
        let (tx, mut rx) = mpsc::channel(asked.len().max(1));
        let mut waiting = 0u32;
        let mut missed = 0u32;
        for (slot, handle) in &asked {
            if handle.try_send(Command::Metrics { slot: *slot, reply: tx.clone() }) {
                waiting += 1;
            } else {
                missed += 1;
            }
        }
        drop(tx);
        let mut answers = Vec::with_capacity(asked.len());
        while waiting > 0 {
            match tokio::time::timeout_at(request.deadline, rx.recv()).await {
                Ok(Some(Answer { slot, metrics })) => {
                    waiting -= 1;
                    if let Some(metrics) = metrics {
                        answers.push((slot, metrics));
                    }
                }
                // Every task that held the question is gone, or the deadline passed.
                Ok(None) | Err(_) => break,
            }
        }
        let scrape: WorkerScrape = merge(answers, missed + waiting);
        let _ = request.reply.send(scrape);
    });
}

/// One worker task's metrics questions in flight.
#[derive(Debug, Default)]
pub struct Asks {
    pending: VecDeque<(u32, u32, mpsc::Sender<Answer>)>,
    next_id: u32,
    /// The worker answered at least once.
    answered: bool,
    /// Questions in a row that found no answer.
    unanswered: u32,
    /// It was found not to answer (Node, [`NODE_SILENT_AFTER`]), and said so once.
    silent: bool,
}

impl Asks {
    /// Asks the worker for its metrics on behalf of a scrape.
    pub async fn ask(&mut self, link: &mut Link, slot: u32, reply: mpsc::Sender<Answer>) {
        // Questions whose scrape is over went unanswered.
        let before = self.pending.len();
        self.pending.retain(|(_, _, reply)| !reply.is_closed());
        self.unanswered += (before - self.pending.len()) as u32;
        if !link.declares_metrics() && !self.answered && self.unanswered >= NODE_SILENT_AFTER {
            if !self.silent {
                self.silent = true;
                tracing::info!(
                    worker = slot,
                    "the worker never answered prom-client's metrics request ({NODE_SILENT_AFTER} times): it does not \
                     seem to use prom-client's AggregatorRegistry; it is not asked again"
                );
            }
            let _ = reply.try_send(Answer { slot, metrics: None });
            return;
        }
        if self.pending.len() >= MAX_ASKS_IN_FLIGHT {
            self.pending.pop_front();
            self.unanswered += 1;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        match link.ask_metrics(id).await {
            Asked::Sent => self.pending.push_back((id, slot, reply)),
            Asked::Nothing => {
                let _ = reply.try_send(Answer { slot, metrics: None });
            }
            Asked::Failed => {
                let failed = WorkerMetrics::Failed("the request could not be sent".to_owned());
                let _ = reply.try_send(Answer { slot, metrics: Some(failed) });
            }
        }
    }

    /// The worker answered question `id` (an answer to a question given up is dropped).
    pub fn answered(&mut self, id: u32, metrics: WorkerMetrics) {
        self.answered = true;
        self.unanswered = 0;
        if let Some(at) = self.pending.iter().position(|(asked, _, _)| *asked == id)
            && let Some((_, slot, reply)) = self.pending.remove(at)
        {
            let _ = reply.try_send(Answer { slot, metrics: Some(metrics) });
        }
    }
}
