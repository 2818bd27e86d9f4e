//! The workers' own metrics on clusterd's scrape. A scrape sends a [`GatherRequest`]; the
//! supervisor asks every ready worker through its link, without blocking its dispatcher (a
//! gather task per request, `crate::supervisor::gather`), and answers with a [`WorkerScrape`]
//! made by [`merge`]: SDK workers' texts labelled with `worker` and merged per family
//! ([`super::exposition`]), Node workers' prom-client answers aggregated as
//! `AggregatorRegistry.clusterMetrics()` does ([`super::prom_client`]).

/// One scrape's request for the workers' metrics, answered by the supervisor.
#[derive(Debug)]
pub struct GatherRequest {
    /// When the answer is due: a worker that has not answered by then is left out and counted.
    pub deadline: tokio::time::Instant,
    /// Where the supervisor sends the gathered metrics.
    pub reply: tokio::sync::oneshot::Sender<WorkerScrape>,
}

/// The workers' metrics for one scrape, in the Prometheus text format 0.0.4, already labelled and
/// aggregated (each family once, with its HELP and TYPE).
#[derive(Debug, Default)]
pub struct WorkerScrape {
    /// Exposition text to append after clusterd's own families (may be empty).
    pub text: String,
    /// Workers asked that did not answer in time (or answered garbage).
    pub missed: u32,
}

/// How long a scrape through the control socket (`clusterd metrics`) waits for the workers.
pub const CONTROL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// Gather requests waiting for the dispatcher; a scrape that finds the queue full waits for room
/// (within its own time bound: the control socket's answer timeout).
pub const GATHER_QUEUE: usize = 16;

/// The largest prom-client answer (the whole IPC message) accepted from one Node worker, in bytes.
pub const MAX_NODE_METRICS_MESSAGE: usize = 4 * 1024 * 1024;

/// What one worker answered.
#[derive(Debug)]
pub enum WorkerMetrics {
    /// An SDK worker's exposition text (not parsed yet).
    Text(String),
    /// A Node worker's prom-client metrics (`getMetricsAsJSON()` of its registries).
    PromClient(Vec<super::prom_client::Metric>),
    /// An answer that cannot be used: the worker counts as missed.
    Failed(String),
}

/// An SDK worker's metrics answer, put together from its `Metrics` frames. The declared length
/// is checked against [`MAX_METRICS`](clusterd_worker::protocol::MAX_METRICS) before anything is
/// kept; one answer is assembled at a time (a frame of another answer starts afresh).
#[derive(Debug, Default)]
pub struct Assembly {
    current: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    id: u32,
    total: usize,
    text: Vec<u8>,
    /// Refused (over the limit, or broken): its further chunks are dropped.
    refused: bool,
}

impl Assembly {
    /// Takes one frame; returns the answer once it is whole, or as soon as it is refused.
    pub fn add(&mut self, chunk: clusterd_worker::protocol::MetricsChunk) -> Option<WorkerMetrics> {
        use clusterd_worker::protocol::MAX_METRICS;
        let clusterd_worker::protocol::MetricsChunk { id, total, chunk } = chunk;
        let total = total as usize;
        if !matches!(&self.current, Some(p) if p.id == id && p.total == total) {
            if total > MAX_METRICS {
                self.current = Some(Partial { id, total, text: Vec::new(), refused: true });
                return Some(WorkerMetrics::Failed(format!(
                    "its metrics are {total} bytes, over the limit of {MAX_METRICS}"
                )));
            }
            self.current = Some(Partial { id, total, text: Vec::with_capacity(total), refused: false });
        }
        let partial = self.current.as_mut().filter(|p| !p.refused)?;
        if partial.text.len() + chunk.len() > partial.total {
            partial.refused = true;
            partial.text = Vec::new();
            return Some(WorkerMetrics::Failed("its metrics chunks are longer than the length it declared".into()));
        }
        partial.text.extend_from_slice(&chunk);
        if partial.text.len() < partial.total {
            return None;
        }
        let text = std::mem::take(&mut partial.text);
        self.current = None;
        Some(match String::from_utf8(text) {
            Ok(text) => WorkerMetrics::Text(text),
            Err(_) => WorkerMetrics::Failed("its metrics are not UTF-8".to_owned()),
        })
    }
}

/// Merges the answers (slot, metrics) of one scrape; `missed` counts the workers that did not
/// answer in time, to which the unusable answers are added.
pub fn merge(mut answers: Vec<(u32, WorkerMetrics)>, mut missed: u32) -> WorkerScrape {
    answers.sort_by_key(|(slot, _)| *slot);
    let mut texts = Vec::new();
    let mut prom = Vec::new();
    for (slot, answer) in answers {
        match answer {
            WorkerMetrics::Text(text) => texts.push((slot, text)),
            WorkerMetrics::PromClient(metrics) => prom.push(metrics),
            WorkerMetrics::Failed(why) => {
                tracing::debug!(worker = slot, "left out of the scrape: {why}");
                missed += 1;
            }
        }
    }
    let mut parsed = Vec::new();
    for (slot, text) in &texts {
        match super::exposition::parse(text) {
            Ok(families) => parsed.push((*slot, families)),
            Err(error) => {
                tracing::debug!(worker = slot, %error, "left out of the scrape: its metrics text is invalid");
                missed += 1;
            }
        }
    }
    let mut text = String::new();
    let mut merger = super::exposition::Merger::default();
    for (slot, families) in &parsed {
        merger.add(*slot, families);
    }
    merger.render(&mut text);
    if merger.conflicts > 0 {
        tracing::debug!(
            families = merger.conflicts,
            "workers' families left out: another worker gave their name another type"
        );
    }
    super::prom_client::render(&super::prom_client::aggregate(&prom), &mut text);
    WorkerScrape { text, missed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusterd_worker::protocol::{MAX_METRICS, MetricsChunk};

    fn chunk(id: u32, total: usize, bytes: &[u8]) -> MetricsChunk {
        MetricsChunk { id, total: total as u32, chunk: bytes.to_vec() }
    }

    #[test]
    fn chunks_make_one_answer_and_bad_ones_are_refused() {
        let mut assembly = Assembly::default();
        assert!(assembly.add(chunk(1, 7, b"hits")).is_none());
        assert!(matches!(assembly.add(chunk(1, 7, b" 1\n")), Some(WorkerMetrics::Text(t)) if t == "hits 1\n"));
        assert!(matches!(assembly.add(chunk(2, 0, b"")), Some(WorkerMetrics::Text(t)) if t.is_empty()));
        // Over the limit: refused at its first frame, its other chunks dropped.
        assert!(matches!(assembly.add(chunk(3, MAX_METRICS + 1, b"")), Some(WorkerMetrics::Failed(_))));
        assert!(assembly.add(chunk(3, MAX_METRICS + 1, b"more")).is_none());
        // Longer than declared, and not UTF-8.
        assert!(matches!(assembly.add(chunk(4, 2, b"abc")), Some(WorkerMetrics::Failed(_))));
        assert!(assembly.add(chunk(4, 2, b"a")).is_none());
        assert!(matches!(assembly.add(chunk(5, 2, b"\xff\xfe")), Some(WorkerMetrics::Failed(_))));
        // A frame of another answer starts afresh (the one before was given up).
        assert!(assembly.add(chunk(6, 4, b"ab")).is_none());
        assert!(matches!(assembly.add(chunk(7, 1, b"x")), Some(WorkerMetrics::Text(t)) if t == "x"));
    }

    #[test]
    fn garbage_and_failures_count_as_missed() {
        let answers = vec![
            (2, WorkerMetrics::Text("# TYPE hits counter\nhits 2\n".into())),
            (0, WorkerMetrics::Text("# TYPE hits counter\nhits 1\n".into())),
            (1, WorkerMetrics::Text("hits{ 1\n".into())),
            (3, WorkerMetrics::Failed("no".into())),
        ];
        let scrape = merge(answers, 1);
        assert_eq!(scrape.missed, 3);
        assert_eq!(scrape.text, "# TYPE hits counter\nhits{worker=\"0\"} 1\nhits{worker=\"2\"} 2\n");
    }
}
