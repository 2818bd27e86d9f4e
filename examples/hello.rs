//! `hello`: the smallest real worker. An axum HTTP server on the clusterd SDK whose `GET /` names
//! the worker that answered:
//!
//! ```text
//! cargo build --release --workspace --bins --examples
//! target/release/clusterd --listen 127.0.0.1:3000 -- target/release/examples/hello
//! curl http://127.0.0.1:3000/    # hello from worker 1 (pid 4242, generation 1), you are 127.0.0.1:51234
//! ```
//!
//! clusterd owns the listening socket; every connection it accepts arrives here through
//! `worker.listener()`, which is an `axum::serve::Listener`. The worker reports ready once it
//! serves, and on clusterd's drain request stops taking connections, finishes the requests in
//! flight and exits.

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::routing::get;
use clusterd_worker::{ClientAddr, Worker};

// One thread per worker process: clusterd runs one worker per CPU, as a Node.js cluster does.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let worker = Worker::from_env()?;
    let app = Router::new().route("/", get(hello)).with_state(worker.clone());
    let listener = worker.listener()?;
    worker.ready().await?;
    println!("worker {} serving", worker.id());
    let drain = worker.drain_token();
    axum::serve(listener, app.into_make_service_with_connect_info::<ClientAddr>())
        .with_graceful_shutdown(async move { drain.cancelled().await })
        .await?;
    // Kept-alive connections go back to clusterd, WebSockets end one by one: wait for them.
    worker.drained().await;
    println!("worker {} drained", worker.id());
    Ok(())
}

async fn hello(State(worker): State<Worker>, ConnectInfo(client): ConnectInfo<ClientAddr>) -> String {
    format!(
        "hello from worker {} (pid {}, generation {}), you are {client}\n",
        worker.id(),
        std::process::id(),
        worker.generation()
    )
}
