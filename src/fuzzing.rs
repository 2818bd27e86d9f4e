//! One function per fuzz target: what `fuzz/fuzz_targets/<target>.rs` feeds its input to, and what
//! `tests/fuzz_regressions.rs` replays every file of `fuzz/regressions/<target>/` through. Each
//! function must return for any input; a panic (or an abort, a hang) is a finding.

use std::path::Path;

use clusterd_worker::bus_protocol::{
    BusFromWorker, BusToWorker, FrameBuffer, decode_body, parse_message, parse_publish,
};
use clusterd_worker::protocol::{FromWorker, ToWorker};

use crate::node::frame::{FrameDecoder, Mode};

/// A target's function: any input, no fault.
pub type Target = fn(&[u8]);

/// The targets, by name (the names of `fuzz/fuzz_targets/*.rs` and `fuzz/regressions/*`).
pub const TARGETS: &[(&str, Target)] = &[
    ("sniff", sniff),
    ("ipc_frame", ipc_frame),
    ("bus_frame", bus_frame),
    ("node_json", node_json),
    ("node_v8", node_v8),
    ("control", control),
    ("config", config),
    ("metrics_head", metrics_head),
    ("worker_metrics", worker_metrics),
];

/// The request sniffer: the first bytes of a connection, at every limit the option allows.
pub fn sniff(data: &[u8]) {
    let limit = data.len().clamp(256, 16 * 1024);
    let _ = crate::sniff::sniff(data, limit);
    let _ = crate::sniff::session_id(data);
    let _ = crate::sniff::request_length(data);
}

/// A native IPC frame, as clusterd (from a worker) and the SDK (from clusterd) decode it.
pub fn ipc_frame(data: &[u8]) {
    let _ = clusterd_worker::codec::decode::<FromWorker>(data);
    let _ = clusterd_worker::codec::decode::<ToWorker>(data);
}

/// A bus stream: split into frames, each parsed the ways both sides parse it.
pub fn bus_frame(data: &[u8]) {
    let mut frames = FrameBuffer::new();
    frames.extend(data);
    while let Ok(Some(body)) = frames.next_body() {
        if let Some(Ok(publish)) = parse_publish(&body) {
            let _ = (publish.channel, publish.payload.len(), publish.echo);
        }
        if let Some(Ok(message)) = parse_message(&body) {
            let _ = message;
        }
        let _ = decode_body::<BusFromWorker>(&body);
        let _ = decode_body::<BusToWorker>(&body);
    }
}

/// Node's `json` channel: lines of JSON, decoded, re-encoded, and read by field.
pub fn node_json(data: &[u8]) {
    node_frames(Mode::Json, data);
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(value) = crate::node::json::from_json(text)
    {
        let _ = crate::node::json::to_json(&value);
    }
}

/// Node's `advanced` channel: V8 serialization, decoded, re-encoded, and read by field.
pub fn node_v8(data: &[u8]) {
    node_frames(Mode::Advanced, data);
    if let Ok(value) = crate::node::v8::deserialize(data) {
        let again = crate::node::v8::serialize(&value);
        let _ = crate::node::v8::deserialize(&again);
    }
    let _ = crate::node::v8::select(data, &[&["type"], &["data", "workerId"]]);
}

fn node_frames(mode: Mode, data: &[u8]) {
    let mut decoder = FrameDecoder::with_max_frame(mode, 1024 * 1024);
    decoder.feed(data);
    while let Ok(Some(frame)) = decoder.next_frame() {
        let _ = frame.decode();
        let _ = frame.select(&[&["cmd"], &["source"], &["type"], &["data", "workerId"]]);
    }
    let _ = decoder.finish();
}

/// A control socket request line (and a reply, as the client reads it).
pub fn control(data: &[u8]) {
    let _ = serde_json::from_slice::<crate::control::proto::ControlRequest>(data);
    let _ = serde_json::from_slice::<crate::control::proto::ControlReply>(data);
}

/// A worker's metrics answer: as an SDK worker's text (parsed, merged with itself as a second
/// worker, rendered), and as a Node worker's prom-client answer in JSON (read, aggregated twice
/// over, rendered).
pub fn worker_metrics(data: &[u8]) {
    use crate::metrics::{exposition, prom_client};
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(families) = exposition::parse(text) {
        let mut merger = exposition::Merger::default();
        merger.add(0, &families);
        merger.add(1, &families);
        let mut out = String::new();
        merger.render(&mut out);
        // What clusterd prints is valid for its own parser.
        assert!(exposition::parse(&out).is_ok(), "the merged text does not parse:\n{out}");
    }
    if let Ok(value) = crate::node::json::from_json(text)
        && let Ok(metrics) = prom_client::parse_answer(&value)
    {
        let mut out = String::new();
        prom_client::render(&prom_client::aggregate(&[metrics.clone(), metrics]), &mut out);
    }
}

/// A config file's text.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::parse_file_text(Path::new("fuzz.toml"), text);
    }
}

/// A scrape's request head, as the `--metrics` server reads it.
pub fn metrics_head(data: &[u8]) {
    let _ = crate::metrics::head::parse_head(data);
}
