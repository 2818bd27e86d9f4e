//! Faults that must not take the service down or make clusterd lie (issue 14): kill storms, a
//! program that cannot be executed, clusterd's own fd exhaustion, workers whose descendants would
//! outlive clusterd, and the words used for each.

mod support;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;

/// One `GET /` on a new connection; `None` when the connection failed or broke (its worker was
/// killed while it served, or no worker was ready).
fn try_get(addr: std::net::SocketAddr) -> Option<u16> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").ok()?;
    read_response(&mut stream).map(|r| r.code)
}

/// A small xorshift generator: the test prints its seed, so a failing order can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The regression of issue 14, item 4: a worker killed from outside after it was ready is not a
/// failed start. By default the storm is short and fast, with a long `--stable-after` and a low
/// crash-loop limit, so that the code before the fix gives up within it (each slot is killed far
/// more than 3 times, always while younger than 60 s). `CLUSTERD_KILL_STORM_SECS=60` runs the
/// issue's own scenario instead: a kill every 2 s for that long, with the default limits.
#[test]
fn a_kill_storm_of_ready_workers_never_ends_clusterd() {
    let long = std::env::var("CLUSTERD_KILL_STORM_SECS").ok().and_then(|s| s.parse::<u64>().ok());
    let (duration, every, mut args) = match long {
        Some(secs) => (Duration::from_secs(secs), Duration::from_secs(2), vec![]),
        None => (
            Duration::from_secs(6),
            Duration::from_millis(300),
            vec!["--stable-after", "60s", "--crash-loop-limit", "3"],
        ),
    };
    args.extend(["--workers", "2", "--listen", "127.0.0.1:0"]);
    let mut c = Cluster::start(&args, &["--serve"]);
    let addr = listen_addr(&c.wait_ready(2));

    // The load: a bounded loop of requests, each on a new connection, until the storm ends.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, refused, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, refused, failed) =
            (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&refused), Arc::clone(&failed));
        std::thread::spawn(move || {
            for _ in 0..1_000_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match try_get(addr) {
                    Some(200) => ok.fetch_add(1, Ordering::Relaxed),
                    // No worker was ready at that moment: clusterd answers at once.
                    Some(503) => refused.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("kill storm: seed {seed}, a kill every {every:?} for {duration:?}");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < duration {
        if let Ok(Some(exit)) = c.child.try_wait() {
            panic!("clusterd exited ({exit}) after {kills} kills (seed {seed}); output:\n{}", c.stderr_dump());
        }
        let ready: Vec<i32> = c.status().map_or_else(Vec::new, |s| {
            s["workers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["state"] == "ready")
                .filter_map(|w| w["pid"].as_i64())
                .map(|p| p as i32)
                .collect()
        });
        if !ready.is_empty() {
            let victim = ready[(rng.next() % ready.len() as u64) as usize];
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), Signal::SIGKILL).is_ok() {
                kills += 1;
            }
        }
        // The storm's rate, not a wait for an event.
        std::thread::sleep(every);
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let min_kills = duration.as_millis() / every.as_millis() / 2;
    assert!(kills as u128 >= min_kills, "only {kills} kills landed (seed {seed})");

    let status = c.wait_ready(2);
    assert_eq!(status["phase"], "ready");
    let restarts: u64 = status["workers"].as_array().unwrap().iter().map(|w| w["restarts"].as_u64().unwrap()).sum();
    assert!(restarts >= kills, "{restarts} restarts for {kills} kills");
    for id in 0..2 {
        assert_eq!(worker(&status, id)["crash_loop"], false, "a killed ready worker is not a crash loop");
    }
    let (ok, refused, failed) =
        (ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "kill storm: {kills} kills, {restarts} restarts; requests: {ok} answered, {refused} got 503 (no worker ready), {failed} broken"
    );
    assert!(ok > 0, "the load got answers during the storm");
    assert_eq!(try_get(addr), Some(200), "the pool serves after the storm");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}
