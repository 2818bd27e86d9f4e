//! `relay_worker`: the worker of `benches/relay.rs`. One publisher sends `RELAY_COUNT` messages of
//! `RELAY_SIZE` bytes on the bus channel "bench"; every other worker subscribes and measures.
//!
//! ```text
//! cargo build --release --workspace --bins --examples
//! RELAY_SIZE=100 RELAY_COUNT=200000 target/release/clusterd --workers 3 -- target/release/examples/relay_worker
//! ```
//!
//! Role: `RELAY_ROLE=publisher|subscriber` when set, otherwise the worker in slot 0 publishes and
//! the others subscribe (clusterd gives every worker the same environment). Subscribers subscribe,
//! then report ready; the publisher reports ready, waits (bounded) until `count - 1` workers
//! subscribe, then publishes. Each payload starts with its send time, 8 bytes little-endian,
//! nanoseconds since the Unix epoch (`SystemTime`: one clock for every process). A subscriber
//! prints `relay done received=N elapsed_ms=E p50_us=P p99_us=Q` once it has all messages (or
//! after [`IDLE_TIMEOUT`] without one), where E runs from the first message's send time to the
//! last receipt. Then both wait for clusterd's drain.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clusterd_worker::Worker;

const CHANNEL: &str = "bench";
/// How long the publisher waits for the subscribers.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(20);
/// A subscriber gives up when no message came for this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds on the environment's figures.
const MAX_COUNT: u64 = 10_000_000;
const MAX_SIZE: usize = 16 * 1024 * 1024;

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The `q` quantile (0..=1) of sorted values.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let worker = Worker::from_env()?;
    let size = usize::try_from(env_number("RELAY_SIZE", 100))?.clamp(8, MAX_SIZE);
    let count = env_number("RELAY_COUNT", 10_000).clamp(1, MAX_COUNT);
    let publisher = match std::env::var("RELAY_ROLE").as_deref() {
        Ok("publisher") => true,
        Ok("subscriber") => false,
        Ok(other) => return Err(format!("RELAY_ROLE must be publisher or subscriber, not {other:?}").into()),
        Err(_) => worker.id() == 0,
    };
    let bus = worker.bus()?;
    if publisher {
        worker.ready().await?;
        publish(&worker, &bus, size, count).await?;
    } else {
        let mut subscription = bus.subscribe(CHANNEL).await?;
        worker.ready().await?;
        let mut latencies = Vec::with_capacity(usize::try_from(count)?);
        let mut first_sent = None;
        let mut last = now_ns();
        while (latencies.len() as u64) < count {
            let message = match tokio::time::timeout(IDLE_TIMEOUT, subscription.next()).await {
                Ok(Some(message)) => message,
                Ok(None) => return Err("the bus closed".into()),
                Err(_) => {
                    eprintln!("relay: no message for {IDLE_TIMEOUT:?}; giving up after {}", latencies.len());
                    break;
                }
            };
            last = now_ns();
            let sent = message.payload.get(..8).and_then(|b| b.try_into().ok()).map_or(last, u64::from_le_bytes);
            first_sent.get_or_insert(sent);
            latencies.push(last.saturating_sub(sent));
        }
        let elapsed_ns = last.saturating_sub(first_sent.unwrap_or(last));
        latencies.sort_unstable();
        println!(
            "relay done received={} elapsed_ms={:.3} p50_us={:.1} p99_us={:.1}",
            latencies.len(),
            elapsed_ns as f64 / 1e6,
            quantile(&latencies, 0.50) as f64 / 1e3,
            quantile(&latencies, 0.99) as f64 / 1e3,
        );
        // Kept until clusterd's drain: the relay must not lose a member mid-run.
        worker.drain_token().cancelled().await;
        drop(subscription);
        return Ok(());
    }
    worker.drain_token().cancelled().await;
    Ok(())
}

/// Waits for the other workers to subscribe, then publishes `count` messages of `size` bytes.
async fn publish(
    worker: &Worker,
    bus: &clusterd_worker::Bus,
    size: usize,
    count: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let wanted = worker.count().saturating_sub(1);
    let deadline = tokio::time::Instant::now() + SUBSCRIBE_TIMEOUT;
    loop {
        let subscribers = bus.subscribers(CHANNEL).await?;
        if subscribers >= wanted {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(
                format!("only {subscribers} of {wanted} workers subscribed within {SUBSCRIBE_TIMEOUT:?}").into()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = now_ns();
    let mut payload = vec![0xa5u8; size];
    for _ in 0..count {
        payload[..8].copy_from_slice(&now_ns().to_le_bytes());
        bus.publish(CHANNEL, payload.clone()).await?;
    }
    println!("relay published count={count} size={size} elapsed_ms={:.3}", (now_ns() - started) as f64 / 1e6);
    Ok(())
}
