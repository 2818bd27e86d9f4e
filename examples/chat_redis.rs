//! `chat_redis`: the chat's Socket.IO events with socketioxide-redis's own `RedisAdapter` in every
//! worker, straight to Redis (two connections per worker), instead of the SDK's adapter over
//! clusterd's bus. It is the way to run several hosts without clusterd's bridge: the peer of the
//! bridge's interop test (a plain socketioxide-redis server on the same Redis) and the baseline of
//! its benchmark. Run it under clusterd (the SDK hands it its connections and keeps sessions
//! sticky) with `REDIS_URL` set; socketioxide-redis needs RESP3, so the URL ends in
//! `?protocol=resp3`.
//!
//! Events: `"chat message"` (string, `io.emit`), `"whoami"` (ack: `{worker, pid, transport}`), `"clients"`
//! (ack: `fetch_sockets` count), `"ask all"` (ack: `{answers, errors}` of a `"question"` broadcast
//! with acknowledgements).

use std::time::Duration;

use clusterd_worker::{ClientAddr, SessionLayer, Worker};
use futures_util::StreamExt;
use serde_json::{Value, json};
use socketioxide::adapter::Emitter;
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide_redis::{RedisAdapter, RedisAdapterCtr};

type Adapter = RedisAdapter<Emitter>;
type SocketIo = socketioxide::SocketIo<Adapter>;

/// How long `"ask all"` waits for the clients' answers.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let worker = Worker::from_env()?;
    let (id, pid) = (worker.id(), std::process::id());
    let url = std::env::var("REDIS_URL").map_err(|_| "REDIS_URL is not set (redis://host:port?protocol=resp3)")?;
    let client = redis::Client::open(url)?;
    let adapter = RedisAdapterCtr::new_with_redis(&client).await?;
    let (io_layer, io) = socketioxide::SocketIo::builder().with_adapter::<Adapter>(adapter).build_layer();
    io.ns("/", async move |socket: SocketRef<Adapter>| {
        socket.on("chat message", async |io: SocketIo, Data::<String>(text): Data<String>| {
            let _ = io.emit("chat message", &text).await;
        });
        socket.on("clients", async |io: SocketIo, ack: AckSender<Adapter>| {
            let count = io.fetch_sockets().await.map_or(0, |sockets| sockets.len());
            let _ = ack.send(&count);
        });
        socket.on("ask all", async |io: SocketIo, Data::<Value>(question): Data<Value>, ack: AckSender<Adapter>| {
            let (mut answers, mut errors) = (Vec::new(), Vec::new());
            match io.timeout(ASK_TIMEOUT).emit_with_ack::<_, Value>("question", &question).await {
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
            let _ = ack.send(&json!({ "answers": answers, "errors": errors }));
        });
        socket.on("whoami", async move |socket: SocketRef<Adapter>, ack: AckSender<Adapter>| {
            let transport = format!("{:?}", socket.transport_type()).to_lowercase();
            let _ = ack.send(&json!({ "worker": id, "pid": pid, "transport": transport }));
        });
    })
    .await?;
    let app = axum::Router::new().layer(io_layer).layer(SessionLayer::new(worker.clone()));
    let listener = worker.listener()?;
    worker.ready().await?;
    let drain = worker.drain_token();
    axum::serve(listener, app.into_make_service_with_connect_info::<ClientAddr>())
        .with_graceful_shutdown(async move { drain.cancelled().await })
        .await?;
    // Kept-alive connections go back to clusterd, WebSockets end one by one: wait for them.
    worker.drained().await;
    Ok(())
}
