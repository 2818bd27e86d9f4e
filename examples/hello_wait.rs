//! `hello_wait`: `hello` whose answer waits, as a handler that queries a database does. `GET
//! /?ms=N` answers after N milliseconds (at most `MAX_WAIT_MS`), so that a drain can begin while
//! a response is in flight; the drain tests of pipelining clients use it.
//!
//! ```text
//! target/release/clusterd --listen 127.0.0.1:3000 -- target/release/examples/hello_wait
//! curl 'http://127.0.0.1:3000/?ms=50'    # hello from worker 0 (pid 4242, generation 1) after 50 ms
//! ```

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::Uri;
use axum::routing::get;
use clusterd_worker::{ClientAddr, Worker};

/// The longest a request may ask to wait.
const MAX_WAIT_MS: u64 = 10_000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let worker = Worker::from_env()?;
    let app = Router::new().route("/", get(hello)).with_state(worker.clone());
    let listener = worker.listener()?;
    worker.ready().await?;
    let drain = worker.drain_token();
    axum::serve(listener, app.into_make_service_with_connect_info::<ClientAddr>())
        .with_graceful_shutdown(async move { drain.cancelled().await })
        .await?;
    worker.drained().await;
    Ok(())
}

async fn hello(State(worker): State<Worker>, uri: Uri) -> String {
    let ms = uri
        .query()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("ms=")))
        .and_then(|ms| ms.parse::<u64>().ok())
        .unwrap_or(0)
        .min(MAX_WAIT_MS);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!(
        "hello from worker {} (pid {}, generation {}) after {ms} ms\n",
        worker.id(),
        std::process::id(),
        worker.generation()
    )
}
