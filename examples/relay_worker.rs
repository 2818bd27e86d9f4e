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
//! subscribe, prints `relay start`, then publishes. Each payload starts with its send time, 8 bytes little-endian,
//! nanoseconds since the Unix epoch (`SystemTime`: one clock for every process). A subscriber
//! prints `relay done received=N elapsed_ms=E p50_us=P p99_us=Q` once it has all messages (or
//! after [`IDLE_TIMEOUT`] without one), where E runs from the first message's send time to the
//! last receipt. Then both wait for clusterd's drain.
//!
//! For latency rather than throughput (benches/bridge.rs): `RELAY_CHANNEL` picks the channel (a
//! bridged one, such as `socket.io-request#/#`, crosses hosts under `--bridge`), `RELAY_RATE`
//! paces the publisher at that many messages a second (unpaced when unset), and
//! `RELAY_SUBSCRIBERS` is how many subscribers the publisher waits for (`count - 1` when unset;
//! subscribers on other hosts count, as the bus counts them).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clusterd_worker::Worker;

const CHANNEL: &str = "bench";
/// The longest channel name accepted from `RELAY_CHANNEL`.
const MAX_CHANNEL: usize = 256;
/// The most messages a second `RELAY_RATE` may ask for.
const MAX_RATE: u64 = 1_000_000;
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
    let channel = std::env::var("RELAY_CHANNEL").unwrap_or_else(|_| CHANNEL.to_owned());
    if channel.is_empty() || channel.len() > MAX_CHANNEL {
        return Err(format!("RELAY_CHANNEL must be 1 to {MAX_CHANNEL} bytes").into());
    }
    let bus = worker.bus()?;
    if publisher {
        worker.ready().await?;
        let wanted = env_number("RELAY_SUBSCRIBERS", u64::from(worker.count().saturating_sub(1)));
        let rate = std::env::var("RELAY_RATE").ok().and_then(|v| v.parse::<u64>().ok()).map(|r| r.clamp(1, MAX_RATE));
        let publishing = Publishing { channel: &channel, size, count, wanted, rate };
        publish(&bus, &publishing).await?;
    } else {
        let mut subscription = bus.subscribe(&channel).await?;
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

/// What the publisher sends, where, and when.
struct Publishing<'a> {
    channel: &'a str,
    size: usize,
    count: u64,
    /// Subscribers to wait for before the first message.
    wanted: u64,
    /// Messages a second, or as fast as the bus takes them.
    rate: Option<u64>,
}

/// Waits for the subscribers, then publishes `count` messages of `size` bytes.
async fn publish(bus: &clusterd_worker::Bus, what: &Publishing<'_>) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = tokio::time::Instant::now() + SUBSCRIBE_TIMEOUT;
    loop {
        let subscribers = bus.subscribers(what.channel).await?;
        if subscribers as u64 >= what.wanted {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "only {subscribers} of {} workers subscribed within {SUBSCRIBE_TIMEOUT:?}",
                what.wanted
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut pace = what.rate.map(|rate| {
        let mut pace = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        pace
    });
    // The bench reads clusterd's CPU time at this line: what it spent starting is not the relay's.
    println!("relay start count={} size={}", what.count, what.size);
    let started = now_ns();
    let mut payload = vec![0xa5u8; what.size];
    for _ in 0..what.count {
        if let Some(pace) = &mut pace {
            pace.tick().await;
        }
        payload[..8].copy_from_slice(&now_ns().to_le_bytes());
        bus.publish(what.channel, payload.clone()).await?;
    }
    println!(
        "relay published count={} size={} elapsed_ms={:.3}",
        what.count,
        what.size,
        (now_ns() - started) as f64 / 1e6
    );
    Ok(())
}
