//! `hello_direct`: the `hello` example's HTTP server without clusterd, for comparisons. The same
//! axum app and the same answer, but it binds the port itself and accepts on it with a
//! `tokio::net::TcpListener`; there is no SDK, so the worker id and generation are 0:
//!
//! ```text
//! cargo build --release --workspace --bins --examples
//! target/release/examples/hello_direct 127.0.0.1:3000 2   # address, Tokio worker threads (default 2)
//! curl http://127.0.0.1:3000/    # hello from worker 0 (pid 4242, generation 0), you are 127.0.0.1:51234
//! ```
//!
//! `cargo bench --bench handoff` runs it beside `clusterd --listen … -- hello`. It stops on
//! `SIGTERM` or `SIGINT`, finishing the requests in flight.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:3000").parse()?;
    let threads: usize = match args.next() {
        Some(n) => n.parse().map_err(|e| format!("bad thread count {n:?}: {e}"))?,
        None => 2,
    };
    if threads == 0 {
        return Err("the thread count must be at least 1".into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?;
    runtime.block_on(serve(addr))
}

async fn serve(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new().route("/", get(hello));
    println!("direct server listening on http://{}/", listener.local_addr()?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(stop).await?;
    println!("direct server stopped");
    Ok(())
}

async fn hello(ConnectInfo(client): ConnectInfo<SocketAddr>) -> String {
    format!("hello from worker {} (pid {}, generation {}), you are {client}\n", 0, std::process::id(), 0)
}
