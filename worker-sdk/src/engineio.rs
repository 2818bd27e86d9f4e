//! Sticky Engine.IO sessions (socketioxide, or any tower HTTP service that speaks Engine.IO).
//!
//! socketioxide creates the Engine.IO session id itself and has no hook for it, so this layer
//! watches the HTTP traffic instead:
//!
//! - On a polling handshake (`GET ...?EIO=4&transport=polling` without `sid`), it reads the
//!   session id from the open packet in the response body and reports it to clusterd with
//!   [`Worker::session_open`](crate::Worker::session_open), **before** the response leaves. The
//!   client cannot send a request with that id before clusterd knows where it lives.
//! - A later request of a session that lives on another worker can come on a kept-alive
//!   connection that clusterd routed here by its first request. The SDK's connection gives such
//!   a connection back to clusterd, which routes it to the session's owner (see
//!   `PROTOCOL.md`, "Handing a connection back"); this layer only has to report the sessions.
//!
//! - With [`SessionLayer::track`], it also watches socketioxide's sockets, which carry the
//!   Engine.IO session id (socketioxide gives a namespace socket its Engine.IO session's id):
//!   a session that appears without a polling handshake (a WebSocket-only client, whose id
//!   travels inside the WebSocket) is reported open, and every session that ends (the client
//!   left, or its ping timed out) is reported closed within [`SESSION_SWEEP`]. So clusterd counts
//!   every live session, whatever its transport, and forgets an ended one at once instead of
//!   after `--session-ttl`.
//!
//! ```ignore
//! let (io_layer, io) = socketioxide::SocketIo::new_layer();
//! let app = axum::Router::new()
//!     .layer(io_layer)
//!     .layer(clusterd_worker::SessionLayer::new(worker.clone()).track(io.clone()));
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

use crate::Worker;

/// The error type of the bodies this layer returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The largest handshake body read to find the session id.
const MAX_HANDSHAKE: usize = 16 * 1024;

/// How often [`SessionLayer::track`] compares socketioxide's live sessions with the ones reported:
/// the most an ended session stays counted.
pub const SESSION_SWEEP: std::time::Duration = std::time::Duration::from_millis(250);

/// How long a session reported at its polling handshake may stay out of every namespace before
/// [`SessionLayer::track`] counts it ended. A client connects its namespace right after the
/// handshake; one that left before a sweep saw it there would otherwise stay counted. A slow client
/// that connects later is reported again at the next sweep.
pub const NAMESPACE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// A tower layer that makes Engine.IO sessions sticky under clusterd (see the module docs).
#[derive(Clone, Debug)]
pub struct SessionLayer {
    worker: Worker,
}

impl SessionLayer {
    /// The layer for this worker.
    pub fn new(worker: Worker) -> Self {
        Self { worker }
    }

    /// Watches `io`'s sockets (every namespace) every [`SESSION_SWEEP`] until the worker drains,
    /// so that every session is reported whatever its transport and closed when it ends (see the
    /// module docs). A session reported at its polling handshake but not in any namespace is
    /// counted ended after [`NAMESPACE_GRACE`] (and reported again if it shows up later). Must be
    /// called inside a Tokio runtime.
    pub fn track<A: socketioxide::adapter::Adapter>(self, io: socketioxide::SocketIo<A>) -> Self {
        tokio::spawn(track(self.worker.clone(), io));
        self
    }
}

/// The body of [`SessionLayer::track`].
async fn track<A: socketioxide::adapter::Adapter>(worker: Worker, io: socketioxide::SocketIo<A>) {
    use std::collections::{HashMap, HashSet};
    let mut tick = tokio::time::interval(SESSION_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Held sessions seen in a namespace: gone from all of them means ended.
    let mut seen: HashSet<Box<str>> = HashSet::new();
    // Held sessions never seen in a namespace yet, since when.
    let mut waiting: HashMap<Box<str>, tokio::time::Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = worker.draining() => return,
        }
        let live: HashSet<String> =
            io.nsps().into_iter().flat_map(|ns| ns.sockets()).map(|socket| socket.id.to_string()).collect();
        let held = worker.held_sessions();
        let now = tokio::time::Instant::now();
        for sid in &held {
            if live.contains(&**sid) {
                waiting.remove(sid);
                seen.insert(sid.clone());
            } else if seen.remove(sid)
                || now.duration_since(*waiting.entry(sid.clone()).or_insert(now)) >= NAMESPACE_GRACE
            {
                waiting.remove(sid);
                worker.session_close(sid);
            }
        }
        let held: HashSet<&str> = held.iter().map(|s| &**s).collect();
        seen.retain(|sid| held.contains(&**sid));
        waiting.retain(|sid, _| held.contains(&**sid));
        for sid in live.iter().filter(|sid| !held.contains(sid.as_str())) {
            // A session without a polling handshake: WebSocket only. Its client already has its id,
            // and it lives on its one connection, so nothing waits for clusterd's ack.
            worker.hold_session(sid);
            seen.insert(sid.as_str().into());
            let (worker, sid) = (worker.clone(), sid.clone());
            tokio::spawn(async move {
                if let Err(error) = worker.session_open(&sid).await {
                    tracing::warn!(%error, sid, "cannot report a session to clusterd");
                }
            });
        }
    }
}

impl<S> tower_layer::Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService { inner, worker: self.worker.clone() }
    }
}

/// The service of [`SessionLayer`].
#[derive(Clone, Debug)]
pub struct SessionService<S> {
    inner: S,
    worker: Worker,
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for SessionService<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<UnsyncBoxBody<Bytes, BoxError>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let kind = Kind::of(request.uri().query().unwrap_or(""));
        // The clone that was driven to readiness serves this call (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let worker = self.worker.clone();
        Box::pin(async move {
            let response = inner.call(request).await?;
            if kind != Kind::Handshake {
                return Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()));
            }
            let (parts, body) = response.into_parts();
            if !parts.status.is_success() || body.size_hint().lower() > MAX_HANDSHAKE as u64 {
                return Ok(Response::from_parts(parts, body.map_err(Into::into).boxed_unsync()));
            }
            let bytes = match http_body_util::Limited::new(body, MAX_HANDSHAKE).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(error) => {
                    tracing::warn!(%error, "cannot read an Engine.IO handshake response");
                    Bytes::new()
                }
            };
            if let Some(sid) = open_packet_sid(&bytes)
                && let Err(error) = worker.session_open(sid).await
            {
                // The session still works while its client stays on this connection's worker;
                // clusterd balances its next request instead of routing it here.
                tracing::warn!(%error, sid, "cannot register the session with clusterd");
            }
            Ok(Response::from_parts(parts, Full::new(bytes).map_err(|never| match never {}).boxed_unsync()))
        })
    }
}

/// What kind of Engine.IO request a query string makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A polling request that opens a session: no `sid`.
    Handshake,
    /// A polling request of an open session.
    Polling,
    /// Anything else (WebSocket, other routes).
    Other,
}

impl Kind {
    fn of(query: &str) -> Self {
        let mut engine_io = false;
        let mut polling = false;
        let mut sid = false;
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "EIO" => engine_io = true,
                "transport" => polling = value == "polling",
                "sid" => sid = true,
                _ => {}
            }
        }
        match (engine_io && polling, sid) {
            (true, false) => Self::Handshake,
            (true, true) => Self::Polling,
            (false, _) => Self::Other,
        }
    }
}

/// The `sid` of an Engine.IO open packet (`0{"sid":"...",...}`), the first packet of a polling
/// handshake response (v4 separates packets with 0x1e; v3 prefixes a length).
fn open_packet_sid(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("0{")? + 1;
    let open = &text[start..];
    let at = open.find("\"sid\"")? + 5;
    let rest = open[at..].trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    let sid = &rest[..rest.find('"')?];
    (!sid.is_empty() && sid.len() <= 64 && sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then_some(sid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_kinds() {
        assert_eq!(Kind::of("EIO=4&transport=polling&t=abc"), Kind::Handshake);
        assert_eq!(Kind::of("EIO=4&transport=polling&sid=CucdsEyTiqO-9vwA"), Kind::Polling);
        assert_eq!(Kind::of("EIO=4&transport=websocket"), Kind::Other);
        assert_eq!(Kind::of("EIO=4&transport=websocket&sid=x"), Kind::Other);
        assert_eq!(Kind::of(""), Kind::Other);
        assert_eq!(Kind::of("transport=polling"), Kind::Other);
    }

    #[test]
    fn sid_of_open_packets() {
        let v4 = br#"0{"sid":"CucdsEyTiqO-9vwA","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":100000}"#;
        assert_eq!(open_packet_sid(v4), Some("CucdsEyTiqO-9vwA"));
        let v3 = br#"96:0{"sid":"uOKvLkhAjSpgMRGjAAAB","upgrades":["websocket"],"pingInterval":25000}2:40"#;
        assert_eq!(open_packet_sid(v3), Some("uOKvLkhAjSpgMRGjAAAB"));
        assert_eq!(open_packet_sid(br#"0{"sid" : "spaced_1"}"#), Some("spaced_1"));
        for bad in [
            &b""[..],
            b"0{}",
            b"4hello",
            br#"0{"sid":""}"#,
            br#"0{"sid":"a b"}"#,
            br#"0{"sid":"unterminated"#,
            b"\xff\xfe",
        ] {
            assert_eq!(open_packet_sid(bad), None, "{bad:?}");
        }
    }
}
