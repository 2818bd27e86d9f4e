//! `hello`: the smallest real worker. An axum HTTP server on the clusterd SDK whose `GET /` names
//! the worker that answered:
//!
//! ```text
//! cargo build --release --examples
//! target/release/clusterd --workers auto -- target/release/examples/hello 127.0.0.1:3000
//! curl http://127.0.0.1:3000/    # hello from worker 1 (pid 4242, generation 1)
//! ```
//!
//! Until clusterd owns the listening socket (connection handoff), every worker binds the same
//! address with `SO_REUSEPORT` and the kernel spreads new connections over them. The worker
//! reports ready once it listens, and on clusterd's drain request stops accepting, finishes the
//! requests in flight and exits.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use clusterd_worker::Worker;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args().nth(1).as_deref().unwrap_or("127.0.0.1:3000").parse()?;
    let worker = Worker::from_env()?;
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    let app = Router::new().route("/", get(hello)).with_state(worker.clone());
    worker.ready().await?;
    println!("worker {} listening on http://{addr}/", worker.id());
    let drain = worker.drain_token();
    axum::serve(listener, app).with_graceful_shutdown(async move { drain.cancelled().await }).await?;
    println!("worker {} drained", worker.id());
    Ok(())
}

async fn hello(State(worker): State<Worker>) -> String {
    format!("hello from worker {} (pid {}, generation {})\n", worker.id(), std::process::id(), worker.generation())
}
