//! Gathering the workers' own metrics for one scrape.

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
