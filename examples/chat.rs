//! `chat`: the classic Socket.IO chat, on axum + socketioxide, served by several workers through
//! clusterd. The page at `/` says which worker serves it; a message sent with `"chat message"` is
//! emitted to every client, on every worker (`io.emit`).
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
//! Events: `"chat message"` (string, broadcast), `"whoami"` (ack: `{worker, pid, transport}`),
//! `"join"` (room name; ack), `"room message"` (room, text: to that room's clients),
//! `"clients"` (ack: how many clients all workers have, from `fetch_sockets`), `"sockets"` (ack:
//! the ids of all the clients of all workers), `"ask all"` (any value; ack: `{answers, errors}`,
//! the answers of every client of every worker to a `"question"` with that value, from a
//! broadcast with acknowledgements).
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `warn`).

use std::io::IsTerminal;
use std::time::Duration;

use axum::Router;
use axum::response::Html;
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
        socket.on("chat message", async |io: SocketIo, Data::<String>(text): Data<String>| {
            let _ = io.emit("chat message", &text).await;
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
    let page = PAGE.replace("{worker}", &id.to_string()).replace("{pid}", &pid.to_string());
    let app = Router::new()
        .route("/", get(move || async move { Html(page) }))
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
    println!("worker {id} drained");
    Ok(())
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

/// The chat page, with a small Socket.IO client over WebSocket (Engine.IO 4, Socket.IO 5) so that
/// the example needs no JavaScript download.
const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>clusterd chat</title>
<style>
  body { font: 16px system-ui, sans-serif; margin: 0; display: flex; flex-direction: column; height: 100vh; }
  header { padding: .5rem 1rem; background: #223; color: #eee; }
  #messages { flex: 1; overflow-y: auto; list-style: none; margin: 0; padding: 0; }
  #messages li { padding: .4rem 1rem; border-bottom: 1px solid #eee; }
  form { display: flex; padding: .5rem; gap: .5rem; background: #f4f4f4; }
  input { flex: 1; padding: .5rem; font: inherit; }
</style>
</head>
<body>
<header>clusterd chat: this page came from worker {worker} (pid {pid}); <span id="state">connecting</span></header>
<ul id="messages"></ul>
<form id="form"><input id="input" autocomplete="off" placeholder="Say something"><button>Send</button></form>
<script>
const messages = document.getElementById("messages"), state = document.getElementById("state");
function show(text) { const li = document.createElement("li"); li.textContent = text; messages.appendChild(li); li.scrollIntoView(); }
let ws, acks = {}, nextAck = 0;
function emit(event, data, ack) {
  let id = "";
  if (ack) { id = String(nextAck++); acks[id] = ack; }
  ws.send("42" + id + JSON.stringify(data === undefined ? [event] : [event, data]));
}
function connect() {
  ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/socket.io/?EIO=4&transport=websocket");
  ws.onmessage = (m) => {
    const p = m.data;
    if (p[0] === "0") ws.send("40");                       // Engine.IO open: join the default namespace
    else if (p === "2") ws.send("3");                       // ping -> pong
    else if (p.startsWith("40")) emit("whoami", undefined, (me) => { state.textContent = "connected to worker " + me.worker + " (pid " + me.pid + ")"; });
    else if (p.startsWith("42")) { const [event, text] = JSON.parse(p.slice(2)); if (event === "chat message") show(text); }
    else if (p.startsWith("43")) { const i = p.indexOf("["); const cb = acks[p.slice(2, i)]; delete acks[p.slice(2, i)]; if (cb) cb(...JSON.parse(p.slice(i))); }
  };
  ws.onclose = () => { state.textContent = "disconnected, reconnecting"; setTimeout(connect, 1000); };
}
connect();
document.getElementById("form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = document.getElementById("input");
  if (input.value) { emit("chat message", input.value); input.value = ""; }
});
</script>
</body>
</html>
"#;
