//! The test worker's modes that push the bus to its bounds (see the flags in `test_worker.rs`):
//! many subscriptions, channel names too long (through the SDK, and raw, past it), and many
//! requests in flight.

use std::time::{Duration, Instant};

use clusterd_worker::bus_protocol::{BusFromWorker, encode_frame};
use futures_util::StreamExt;

use super::say;

/// What these modes were asked to do.
#[derive(Default)]
pub struct LimitFlags {
    /// `--bus-sub-many PREFIX N`: subscribe to `PREFIX0` .. `PREFIX{N-1}` and keep them.
    pub sub_many: Option<(String, usize)>,
    /// `--bus-long-name N`: try a channel name of N bytes through the SDK.
    pub long_name: Option<usize>,
    /// `--bus-raw-subscribe N`: write a Subscribe frame for a name of N bytes past the SDK.
    pub raw_subscribe: Option<usize>,
    /// `--bus-ask-many CH N TIMEOUT_MS`: N requests to the subscribers of CH, all at once.
    pub ask_many: Option<(String, usize, u64)>,
}

impl LimitFlags {
    /// Takes `flag` (and its values) if it is one of these modes.
    pub fn parse<'a>(&mut self, flag: &str, it: &mut impl Iterator<Item = &'a String>) -> bool {
        let mut next = || it.next().cloned().unwrap_or_else(|| panic!("{flag} needs a value"));
        let num = |s: String| s.parse::<usize>().unwrap_or_else(|_| panic!("{flag}: not a number: {s}"));
        match flag {
            "--bus-sub-many" => self.sub_many = Some((next(), num(next()))),
            "--bus-long-name" => self.long_name = Some(num(next())),
            "--bus-raw-subscribe" => self.raw_subscribe = Some(num(next())),
            "--bus-ask-many" => self.ask_many = Some((next(), num(next()), num(next()) as u64)),
            _ => return false,
        }
        true
    }
}

/// Runs the modes asked for; returns at once (their work goes on in tasks).
pub async fn run(worker: &clusterd_worker::Worker, flags: &LimitFlags) {
    if let Some(len) = flags.raw_subscribe {
        let mut frame = Vec::new();
        encode_frame(&BusFromWorker::Subscribe { channel: "x".repeat(len) }, &mut frame).expect("encode");
        let sent = nix::sys::socket::send(
            clusterd_worker::bus_protocol::BUS_FD,
            &frame,
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        );
        say(&format!("bus raw subscribe len={len} sent={sent:?}"));
    }
    if flags.sub_many.is_none() && flags.long_name.is_none() && flags.ask_many.is_none() {
        return;
    }
    let bus = worker.bus().expect("bus");
    if let Some(len) = flags.long_name {
        let name = "x".repeat(len);
        let outcome = |r: Result<(), clusterd_worker::Error>| r.map_or_else(|e| format!("err({e})"), |()| "ok".into());
        let subscribe = outcome(bus.subscribe(&name).await.map(std::mem::forget));
        let publish = outcome(bus.publish(&name, b"p".to_vec()).await);
        let count = outcome(bus.subscribers(&name).await.map(drop));
        say(&format!("bus long name len={len} subscribe={subscribe} publish={publish} subscribers={count}"));
    }
    if let Some((prefix, n)) = flags.sub_many.clone() {
        tokio::spawn(subscribe_many(bus.clone(), prefix, n));
    }
    if let Some((channel, n, timeout_ms)) = flags.ask_many.clone() {
        let bus = bus.clone();
        tokio::spawn(async move {
            while bus.subscribers(&channel).await.expect("count") < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let timeout = Duration::from_millis(timeout_ms);
            let started = Instant::now();
            let mut asks: futures_util::stream::FuturesUnordered<_> = (0..n)
                .map(|_| {
                    let bus = bus.clone();
                    let channel = channel.clone();
                    async move { bus.request_with_timeout(Some(&channel), b"q".to_vec(), timeout).await }
                })
                .collect();
            let (mut answered, mut all_missing) = (0usize, 0usize);
            while let Some(answers) = asks.next().await {
                let answers = answers.expect("request");
                answered += 1;
                if answers.answers.is_empty() && !answers.missing.is_empty() {
                    all_missing += 1;
                }
                if answered % 256 == 0 || answered == n {
                    say(&format!(
                        "bus ask-many answered={answered} all_missing={all_missing} ms={}",
                        started.elapsed().as_millis()
                    ));
                }
            }
        });
    }
}

/// `--bus-sub-many`: subscribes, then says how it went.
async fn subscribe_many(bus: clusterd_worker::Bus, prefix: String, n: usize) {
    let (mut ok, mut refused, mut error) = (0usize, 0usize, String::new());
    let mut kept = Vec::new();
    for i in 0..n {
        match bus.subscribe(&format!("{prefix}{i}")).await {
            Ok(subscription) => {
                kept.push(subscription);
                ok += 1;
            }
            Err(e) => {
                refused += 1;
                if error.is_empty() {
                    error = e.to_string();
                }
            }
        }
    }
    // Every subscription frame is queued; one question more, answered after them all, says
    // that clusterd has taken them (and whether it took the last).
    let last = bus.subscribers(&format!("{prefix}{}", n.saturating_sub(1))).await.expect("count");
    let shown: String = prefix.chars().take(8).collect();
    say(&format!("bus subscribed many prefix={shown} ok={ok} refused={refused} last_count={last} error={error}"));
    std::mem::forget(kept);
}
