//! `chat`: the classic Socket.IO chat, on axum + socketioxide, served by several workers through
//! clusterd. The page at `/` says which worker serves it; a message sent with `"chat message"` is
//! emitted to every client, on every worker (`io.emit`).
//!
//! The page (`examples/chat/index.html`) uses the official `socket.io-client` browser bundle,
//! vendored in `examples/chat/` with its license (see the README there) and served at
//! `/assets/socket.io-<version>.min.js`, so the example needs no download. It shows the worker that
//! serves its Socket.IO connection and updates it after a reconnection; a message typed while
//! disconnected waits in the client's queue and is sent once reconnected.
//!
//! ```text
//! cargo build --release --workspace --bins --examples
//! target/release/clusterd --listen 127.0.0.1:3000 -- target/release/examples/chat
//! # open http://127.0.0.1:3000/ in two browser tabs
//! ```
//!
//! The SDK's `SessionLayer` makes Engine.IO sessions sticky: long-polling clients always reach the
//! worker that holds their session. The SDK's cluster adapter carries `io.emit` over clusterd's bus
//! to the clients of every worker.
//!
//! Events: `"chat message"` (string, broadcast; acknowledged with `true` once emitted when the
//! client asks for an acknowledgement, as the page does), `"whoami"` (ack: `{worker, pid,
//! transport}`), `"join"` (room name; ack), `"room message"` (room, text: to that room's
//! clients), `"clients"` (ack: how many clients all workers have, from `fetch_sockets`),
//! `"sockets"` (ack: the ids of all the clients of all workers), `"ask all"` (any value; ack:
//! `{answers, errors}`, the answers of every client of every worker to a `"question"` with that
//! value, from a broadcast with acknowledgements).
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `warn`).

use std::io::IsTerminal;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::serve::ListenerExt;
use clusterd_worker::{ClientAddr, ClusterAdapter, SessionLayer, Worker, cluster_adapter};
use futures_util::StreamExt;
use serde_json::{Value, json};
use socketioxide::adapter::Emitter;
use socketioxide::extract::{AckSender, Data, SocketRef};
use tracing_subscriber::EnvFilter;

/// socketioxide's adapter over clusterd's bus: emits reach every worker's clients.
type Adapter = ClusterAdapter<Emitter>;
type SocketIo = socketioxide::SocketIo<Adapter>;

/// How long `"ask all"` waits for the clients' answers.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// The version of the vendored `socket.io-client` bundle (`scripts/vendor-socket.io-client`).
/// The page loads it from a path with the version in it, so a browser may keep it for a year and
/// still never runs an old copy after an update. The path is outside `/socket.io/`, where
/// socketioxide answers.
const SOCKET_IO_CLIENT_VERSION: &str = "4.8.4";
/// How long browsers may keep the versioned bundle, and the icon.
const BUNDLE_CACHE: &str = "public, max-age=31536000, immutable";
const ICON_CACHE: &str = "public, max-age=86400";

/// The page, the bundle and the icon, compiled into the example.
const PAGE: &str = include_str!("chat/index.html");
const CLIENT_BUNDLE: &str = include_str!("chat/socket.io.min.js");
const FAVICON: &str = include_str!("chat/favicon.svg");

// One thread per worker process: clusterd runs one worker per CPU.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let worker = Worker::from_env()?;
    let (id, pid) = (worker.id(), std::process::id());
    let (io_layer, io) =
        socketioxide::SocketIo::builder().with_adapter::<Adapter>(cluster_adapter(&worker)?).build_layer();
    io.ns("/", async move |socket: SocketRef<Adapter>| {
        // The acknowledgement tells the page's client that the message was taken, so that it does
        // not send it again after a reconnection (clients that ask for none get none).
        socket.on("chat message", async |io: SocketIo, Data::<String>(text): Data<String>, ack: AckSender<Adapter>| {
            let emitted = io.emit("chat message", &text).await.is_ok();
            let _ = ack.send(&emitted);
        });
        // Rooms and the socket list work across workers too (the cluster adapter).
        socket.on(
            "join",
            async |socket: SocketRef<Adapter>, Data::<String>(room): Data<String>, ack: AckSender<Adapter>| {
                socket.join(room);
                let _ = ack.send(&"joined");
            },
        );
        socket.on(
            "room message",
            async |io: SocketIo, Data::<(String, String)>((room, text)): Data<(String, String)>| {
                let _ = io.to(room).emit("room message", &text).await;
            },
        );
        socket.on("clients", async |io: SocketIo, ack: AckSender<Adapter>| {
            let count = io.fetch_sockets().await.map_or(0, |sockets| sockets.len());
            let _ = ack.send(&count);
        });
        socket.on("sockets", async |io: SocketIo, ack: AckSender<Adapter>| {
            let ids: Vec<String> = io
                .fetch_sockets()
                .await
                .map(|sockets| sockets.iter().map(|s| s.data().id.to_string()).collect())
                .unwrap_or_default();
            let _ = ack.send(&ids);
        });
        // A broadcast with acknowledgements: every client, on every worker, answers.
        socket.on("ask all", async |io: SocketIo, Data::<Value>(question): Data<Value>, ack: AckSender<Adapter>| {
            let _ = ack.send(&ask_all(&io, &question).await);
        });
        socket.on("whoami", async move |socket: SocketRef<Adapter>, ack: AckSender<Adapter>| {
            let transport = format!("{:?}", socket.transport_type()).to_lowercase();
            let _ = ack.send(&serde_json::json!({ "worker": id, "pid": pid, "transport": transport }));
        });
    })
    .await?;
    let client_js = format!("/assets/socket.io-{SOCKET_IO_CLIENT_VERSION}.min.js");
    if !CLIENT_BUNDLE.contains(&format!("Socket.IO v{SOCKET_IO_CLIENT_VERSION}\n")) {
        return Err(format!(
            "examples/chat/socket.io.min.js is not socket.io-client {SOCKET_IO_CLIENT_VERSION}: \
             update SOCKET_IO_CLIENT_VERSION in examples/chat.rs"
        )
        .into());
    }
    let page =
        PAGE.replace("{worker}", &id.to_string()).replace("{pid}", &pid.to_string()).replace("{client_js}", &client_js);
    let app = Router::new()
        .route("/", get(move || async move { Html(page) }))
        .route(&client_js, get(|| async { asset("text/javascript; charset=utf-8", BUNDLE_CACHE, CLIENT_BUNDLE) }))
        // Browsers ask for /favicon.ico on their own: answer it too, rather than with a 404.
        .route("/favicon.svg", get(|| async { asset("image/svg+xml", ICON_CACHE, FAVICON) }))
        .route("/favicon.ico", get(|| async { asset("image/svg+xml", ICON_CACHE, FAVICON) }))
        .layer(io_layer)
        .layer(SessionLayer::new(worker.clone()).track(io.clone()));
    // Socket.IO writes a WebSocket frame per message: without TCP_NODELAY, a frame written right
    // after another waits for the client's delayed ACK (40 ms stalls). clusterd leaves socket
    // options to the application (unless run with --tcp-nodelay), so the chat asks for it.
    let listener = worker.listener()?.tap_io(|connection| {
        let _ = connection.set_nodelay(true);
    });
    worker.ready().await?;
    println!("worker {id} serving the chat");
    let drain = worker.drain_token();
    axum::serve(listener, app.into_make_service_with_connect_info::<ClientAddr>())
        .with_graceful_shutdown(async move { drain.cancelled().await })
        .await?;
    // Kept-alive connections go back to clusterd, WebSockets end one by one: wait for them.
    worker.drained().await;
    println!("worker {id} drained");
    Ok(())
}

/// A static file, with its type and how long browsers may keep it.
///
/// Its connection stays open: a browser sends its Socket.IO polling requests on whatever idle
/// connection it has to the origin, and when one of them belongs to a session of another worker,
/// the SDK gives the connection back to clusterd, which routes it to that worker (see
/// PROTOCOL.md, "Handing a connection back").
fn asset(content_type: &'static str, cache: &'static str, body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, cache)], body)
}

/// Asks every client `"question"` and gathers the answers: `{answers: [..], errors: [..]}`.
async fn ask_all(io: &SocketIo, question: &Value) -> Value {
    let (mut answers, mut errors) = (Vec::new(), Vec::new());
    match io.timeout(ASK_TIMEOUT).emit_with_ack::<_, Value>("question", question).await {
        Ok(stream) => {
            let mut stream = std::pin::pin!(stream);
            while let Some((sid, answer)) = stream.next().await {
                match answer {
                    Ok(answer) => answers.push(answer),
                    Err(error) => errors.push(format!("{sid}: {error}")),
                }
            }
        }
        Err(error) => errors.push(error.to_string()),
    }
    json!({ "answers": answers, "errors": errors })
}
