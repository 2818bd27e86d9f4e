//! `--metrics`: the real binary, real workers and real clients, scraped with a Prometheus text
//! parser (see `support::Metrics`); every figure checked follows from what the test did, and
//! agrees with `clusterd status --json`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use support::*;

/// The families clusterd always serves, whatever it did.
const ALWAYS: [&str; 22] = [
    "clusterd_workers",
    "clusterd_connections_accepted_total",
    "clusterd_connections_handed_off_total",
    "clusterd_worker_connections_given_back_total",
    "clusterd_worker_connections",
    "clusterd_worker_at_capacity",
    "clusterd_worker_rss_bytes",
    "clusterd_sessions",
    "clusterd_handoff_seconds",
    "clusterd_bus_messages_total",
    "clusterd_bus_dropped_total",
    "clusterd_reloads_total",
    "clusterd_workers_replaced_total",
    "clusterd_proxy_refused_total",
    "clusterd_worker_scrapes_missed_total",
    "clusterd_info",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
];

/// `GET path` on the worker pool (a sticky session is opened by the test worker's `/open`).
fn request(addr: std::net::SocketAddr, path: &str) -> Response {
    let response = get(addr, path);
    assert_eq!(response.code, 200, "GET {path}: {}", response.body);
    response
}

/// Per worker slot: (connections, restarts, sessions) as `status --json` says, rows of one slot
/// added up.
fn per_slot(status: &Value) -> std::collections::BTreeMap<String, (f64, f64, f64)> {
    let mut slots = std::collections::BTreeMap::new();
    for w in status["workers"].as_array().unwrap() {
        let entry = slots.entry(w["id"].to_string()).or_insert((0.0, 0.0, 0.0));
        entry.0 += w["connections"].as_f64().unwrap();
        entry.1 = w["restarts"].as_f64().unwrap();
        entry.2 += w["sessions"].as_f64().unwrap();
    }
    slots
}

/// The workers, connections, restarts and sessions of a scrape are those of `status --json`
/// taken around it (the test holds the pool still meanwhile).
fn assert_agree(metrics: &Metrics, status: &Value) {
    for state in ["starting", "ready", "draining", "backoff", "exited"] {
        let rows = status["workers"].as_array().unwrap().iter().filter(|w| w["state"] == state).count();
        assert_eq!(metrics.value("clusterd_workers", &[("state", state)]), Some(rows as f64), "workers {state}");
    }
    assert_eq!(metrics.value("clusterd_sessions", &[]), status["sessions"].as_f64(), "sessions");
    for (slot, (connections, restarts, _)) in per_slot(status) {
        assert_eq!(
            metrics.value("clusterd_worker_connections", &[("worker", &slot)]),
            Some(connections),
            "connections of worker {slot}"
        );
        let counted: f64 = metrics
            .samples("clusterd_worker_restarts_total")
            .iter()
            .filter(|s| s.labels.get("worker") == Some(slot.as_str()))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) => v,
                ref other => panic!("restarts_total is a counter: {other:?}"),
            })
            .sum();
        assert_eq!(counted, restarts, "restarts of worker {slot} over every reason");
    }
}

#[test]
fn metrics_follow_handoffs_sessions_a_kill_and_a_reload_and_agree_with_status() {
    let mut c =
        Cluster::start(&["--workers", "2", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"], &["--serve"]);
    let status = c.wait_ready(2);
    let addr = listen_addr(&status);
    let listener = status["listen"][0].as_str().unwrap().to_owned();
    let metrics_at = metrics_addr(&c);

    let first = scrape(&metrics_at);
    for name in ALWAYS {
        assert!(
            first.scrape.samples.iter().any(|s| s.metric == name || s.metric == format!("{name}_count")),
            "{name} is served:\n{}",
            first.text
        );
    }
    assert!(first.text.contains("# TYPE clusterd_handoff_seconds histogram"), "{}", first.text);
    assert_eq!(first.value("clusterd_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
    assert!(first.value("process_open_fds", &[]).unwrap() > 3.0);
    assert!(first.value("process_resident_memory_bytes", &[]).unwrap() > 1e6);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let started = first.value("process_start_time_seconds", &[]).unwrap();
    assert!((now - 120.0..=now + 1.0).contains(&started), "clusterd started {started}, now is {now}");
    assert_eq!(first.value("clusterd_connections_accepted_total", &[("listener", &listener)]), Some(0.0));
    assert_agree(&first, &c.status().unwrap());

    // Six requests, each on its own connection, and two sticky sessions.
    const N: usize = 6;
    for i in 0..N - 2 {
        request(addr, &format!("/n{i}"));
    }
    request(addr, "/open?sid=metrics-a");
    request(addr, "/open?sid=metrics-b");
    // Every answer came back: each connection was handed off. The counts of closed connections
    // reach the dispatcher a moment later.
    let status = c.wait_status("the connections closed", |s| {
        s["sessions"] == 2 && s["workers"].as_array().unwrap().iter().all(|w| w["connections"] == 0)
    });
    let m = scrape(&metrics_at);
    assert_eq!(m.value("clusterd_connections_accepted_total", &[("listener", &listener)]), Some(N as f64));
    assert_eq!(m.sum("clusterd_connections_handed_off_total"), N as f64, "{}", m.text);
    let handed_in_status: f64 =
        status["workers"].as_array().unwrap().iter().map(|w| w["handed_off"].as_f64().unwrap()).sum();
    assert_eq!(handed_in_status, N as f64, "status counts the same handoffs");
    assert_eq!(m.value("clusterd_handoff_seconds_count", &[]), Some(N as f64), "one observation per handoff");
    let buckets = match &m.sample("clusterd_handoff_seconds", &[]).expect("the histogram").value {
        prometheus_parse::Value::Histogram(buckets) => buckets.clone(),
        other => panic!("a histogram: {other:?}"),
    };
    assert_eq!(buckets.iter().find(|b| b.less_than.is_infinite()).map(|b| b.count), Some(N as f64));
    assert!(m.value("clusterd_handoff_seconds_sum", &[]).unwrap() > 0.0);
    assert_eq!(m.value("clusterd_sessions", &[]), Some(2.0));
    for worker in ["0", "1"] {
        assert!(m.value("clusterd_worker_rss_bytes", &[("worker", worker)]).unwrap() > 1e6, "RSS of worker {worker}");
        assert_eq!(m.value("clusterd_worker_at_capacity", &[("worker", worker)]), Some(0.0));
    }
    assert_agree(&m, &c.status().unwrap());

    // kill -9 of worker 0: one restart, for a signal clusterd did not send.
    let victim = worker_pid(&status, 0);
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    let status = c.wait_status("worker 0 restarted and ready", |s| {
        let w = worker(s, 0);
        w["restarts"] == 1 && w["state"] == "ready" && w["pid"] != victim
    });
    assert_eq!(worker(&status, 0)["restart_reasons"]["signal"], 1, "{status:#}");
    let m = scrape(&metrics_at);
    assert_eq!(m.value("clusterd_worker_restarts_total", &[("worker", "0"), ("reason", "signal")]), Some(1.0));
    assert_eq!(m.samples("clusterd_worker_restarts_total").len(), 1, "no other restart:\n{}", m.text);
    // The killed worker's session went with it.
    assert_eq!(m.value("clusterd_sessions", &[]), status["sessions"].as_f64());
    assert_agree(&m, &c.status().unwrap());

    // A rolling reload that completes.
    let reply = c.request(r#"{"command":"reload"}"#).expect("reload answered");
    assert_eq!(reply["ok"], true, "{reply}");
    c.wait_status("generation 2 ready", |s| {
        s["phase"] == "ready"
            && s["generation"] == 2
            && s["workers"].as_array().unwrap().len() == 2
            && s["workers"].as_array().unwrap().iter().all(|w| w["state"] == "ready" && w["generation"] == 2)
    });
    let m = scrape(&metrics_at);
    assert_eq!(m.value("clusterd_reloads_total", &[("result", "ok")]), Some(1.0));
    assert_eq!(m.value("clusterd_reloads_total", &[("result", "aborted")]), Some(0.0));
    assert_eq!(m.value("clusterd_generation", &[]), Some(2.0));
    assert_eq!(m.value("clusterd_workers", &[("state", "ready")]), Some(2.0));
    // Handoffs are counted by slot, across the slot's processes.
    assert_eq!(m.sum("clusterd_connections_handed_off_total"), N as f64);
    // Every request came on a connection of its own, closed before the reload: none was given
    // back, and both slots have their series (tests/keepalive*.rs count real handbacks).
    for worker in ["0", "1"] {
        assert_eq!(m.value("clusterd_worker_connections_given_back_total", &[("worker", worker)]), Some(0.0));
    }
    assert_agree(&m, &c.status().unwrap());
    // Without workers' metrics gathered, nothing is missed.
    assert_eq!(m.value("clusterd_worker_scrapes_missed_total", &[]), Some(0.0));

    // Scaled down to one worker: slot 1's series are gone with the slot.
    let reply = c.request(r#"{"command":"scale","workers":1}"#).expect("scale answered");
    assert_eq!(reply["ok"], true, "{reply}");
    c.wait_status("one worker", |s| s["workers"].as_array().unwrap().len() == 1);
    let m = scrape(&metrics_at);
    for name in [
        "clusterd_worker_connections",
        "clusterd_worker_rss_bytes",
        "clusterd_connections_handed_off_total",
        "clusterd_worker_connections_given_back_total",
    ] {
        assert!(
            m.samples(name).iter().all(|s| s.labels.get("worker") == Some("0")),
            "{name} of slot 0 only:\n{}",
            m.text
        );
    }
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0));
}

/// Anything but `GET /metrics` gets 404 (405 for another method); a scraper that sends nothing
/// holds up no other scrape, and a crowd of them is turned away at once rather than queued.
#[test]
fn other_requests_get_404_and_silent_scrapers_hold_nothing() {
    let mut c = Cluster::start(&["--workers", "1", "--metrics", "127.0.0.1:0"], &[]);
    c.wait_ready(1);
    let at = metrics_addr(&c);
    let (code, _, _) = http_exchange(&at, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(code, 404);
    let (code, _, _) = http_exchange(&at, "GET /metrics/x HTTP/1.1\r\n\r\n");
    assert_eq!(code, 404);
    let (code, headers, _) = http_exchange(&at, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(code, 405);
    assert!(headers.iter().any(|(k, v)| k == "allow" && v == "GET"), "{headers:?}");
    let (code, _, _) = http_exchange(&at, "\x16\x03\x01 not http\r\n\r\n");
    assert_eq!(code, 400);
    // OpenMetrics is asked for: the answer is still 0.0.4 (README: why), and says so.
    let (code, headers, _) = http_exchange(
        &at,
        "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
    );
    assert_eq!(code, 200);
    assert!(headers.iter().any(|(k, v)| k == "content-type" && v.contains("version=0.0.4")), "{headers:?}");

    // One silent scraper: the next scrape is answered at once.
    let silent = TcpStream::connect(&at).unwrap();
    let started = Instant::now();
    scrape(&at);
    assert!(started.elapsed() < Duration::from_secs(3), "a scrape beside a silent one took {:?}", started.elapsed());

    // Slow scrapers (a request line, then nothing) take every one of the 8 places: a ninth is
    // closed at once (not left waiting), and once the head timeout has closed theirs, scrapes
    // are served again. (A silent one is not even accepted at first: TCP_DEFER_ACCEPT.)
    let slow = |_| {
        let mut s = TcpStream::connect(&at).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: slow\r\n").unwrap();
        s
    };
    let crowd: Vec<TcpStream> = (0..8).map(slow).collect();
    let placed = Instant::now();
    wait_until("the slow scrapers accepted", || {
        let mut probe = TcpStream::connect(&at).unwrap();
        probe.set_read_timeout(Some(TIMEOUT)).unwrap();
        let _ = probe.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
        let mut answer = Vec::new();
        let _ = probe.read_to_end(&mut answer);
        answer.is_empty().then_some(())
    });
    assert!(placed.elapsed() < Duration::from_secs(4), "the places were taken within the head timeout");
    let mut turned_away = TcpStream::connect(&at).unwrap();
    turned_away.set_read_timeout(Some(TIMEOUT)).unwrap();
    // The request may or may not be written before clusterd closes the socket.
    let _ = turned_away.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
    let mut answer = Vec::new();
    let started = Instant::now();
    let _ = turned_away.read_to_end(&mut answer);
    assert!(answer.is_empty(), "no answer while every place is taken: {}", String::from_utf8_lossy(&answer));
    assert!(started.elapsed() < Duration::from_secs(3), "closed at once, not after {:?}", started.elapsed());
    for mut s in crowd.into_iter().chain([silent]) {
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "a silent scraper is closed without an answer");
    }
    scrape(&at);
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0));
}

#[test]
fn metrics_on_a_unix_socket_removed_at_exit() {
    let b = Builder::new().args(&["--workers", "1"]);
    let path = b.dir().join("metrics.sock");
    let mut c = b.args(&["--metrics", &format!("unix:{}", path.display())]).start();
    c.wait_ready(1);
    assert_eq!(metrics_addr(&c), format!("unix:{}", path.display()));
    let m = scrape(&format!("unix:{}", path.display()));
    assert_eq!(m.value("clusterd_workers", &[("state", "ready")]), Some(1.0));
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0));
    assert!(!path.exists(), "the socket file is removed on exit");
}

/// Runs clusterd with a worker to its exit; returns (code, stderr).
fn run(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> (Option<i32>, String) {
    let control = dir.join("control.sock");
    let mut all = vec!["--control", control.to_str().expect("a UTF-8 temporary path")];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--", WORKER]);
    run_to_exit(&all, env, dir)
}

/// Arguments, environment, and how the error names the option.
type BadInput<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_metrics_addresses_exit_2_and_an_address_in_use_exits_1_before_any_worker() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "metrics = \"nowhere\"\n").unwrap();
    let long = format!("unix:/{}", "x".repeat(120));
    let cases: [BadInput; 6] = [
        (&["--metrics", "nowhere"], &[], "--metrics: "),
        (&["--metrics", "127.0.0.1:99999"], &[], "--metrics: "),
        (&["--metrics", "unix:"], &[], "--metrics: "),
        (&["--metrics", &long], &[], "--metrics: "),
        (&[], &[("CLUSTERD_METRICS", "[::1]")], "CLUSTERD_METRICS: "),
        (&["--config", "bad.toml"], &[], "line 1, key `metrics`"),
    ];
    for (args, env, names) in cases {
        let (code, stderr) = run(args, env, dir.path());
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(names), "{args:?} {env:?} names the option ({names}): {stderr}");
    }

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run(&["--workers", "1", "--metrics", &addr], &[], dir.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--metrics") && stderr.contains(&addr), "{stderr}");
    assert!(!stderr.contains("worker started"), "no worker started: {stderr}");
    let line = stderr.lines().find(|l| l.contains("--metrics")).unwrap();
    assert!(line.contains("in use"), "the reason, once: {line}");
}

/// With `--bridge`, its counters are served: down while Redis is unreachable, then connected,
/// with the reconnection counted.
#[test]
fn the_bridge_counters_are_served_and_a_reconnect_is_counted() {
    let mut redis = Redis::start();
    redis.stop();
    let url = redis.url();
    let mut c = Cluster::start(&["--workers", "1", "--metrics", "127.0.0.1:0", "--bridge", &url], &[]);
    c.wait_ready(1);
    let at = metrics_addr(&c);
    c.wait_status("the bridge down", |s| s["bridge"]["state"] == "down");
    let m = scrape(&at);
    assert_eq!(m.value("clusterd_bridge_connected", &[]), Some(0.0), "{}", m.text);
    assert_eq!(m.value("clusterd_bridge_reconnects_total", &[]), Some(0.0));
    assert_eq!(m.value("clusterd_bridge_refused_total", &[]), Some(0.0));
    assert_eq!(m.value("clusterd_bridge_hosts", &[]), Some(1.0));
    redis.restart();
    let m = wait_until("the bridge connected in the metrics", || {
        let m = scrape(&at);
        (m.value("clusterd_bridge_connected", &[]) == Some(1.0)).then_some(m)
    });
    assert_eq!(m.value("clusterd_bridge_reconnects_total", &[]), Some(1.0), "{}", m.text);
    let status = c.status().unwrap();
    assert_eq!(status["bridge"]["reconnects"], 1, "{status:#}");
    for name in ["published", "received", "dropped", "malformed"] {
        let counted = m.value(&format!("clusterd_bridge_{name}_total"), &[]).expect("a bridge counter");
        assert!(counted <= status["bridge"][name].as_f64().unwrap(), "{name} counted before status was read");
    }
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0));
}

/// Bus traffic is counted: 50 messages published and relayed to a subscriber, none dropped.
#[test]
fn bus_messages_are_counted() {
    let script = format!(
        "case \"$CLUSTERD_WORKER_ID\" in 0) exec {WORKER} --bus-sub news --bus-pub news 50 --bus-wait 2 ;; \
         *) exec {WORKER} --bus-sub news ;; esac"
    );
    let mut c =
        Builder::new().args(&["--workers", "2", "--metrics", "127.0.0.1:0"]).program(&["sh", "-c", &script]).start();
    c.wait_ready(2);
    let at = metrics_addr(&c);
    c.output.wait_contains("[w0] bus published 50");
    wait_until("worker 1 to receive the 50 messages", || {
        c.output.snapshot().iter().any(|l| l.starts_with("[w1] bus got from=0 n=49")).then_some(())
    });
    let m = scrape(&at);
    // The 50 publishes, and the subscriptions and whatever else the workers said on the bus.
    let messages = m.value("clusterd_bus_messages_total", &[]).unwrap();
    assert!((52.0..1000.0).contains(&messages), "bus frames counted: {messages}\n{}", m.text);
    assert_eq!(m.value("clusterd_bus_dropped_total", &[]), Some(0.0));
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0));
}

/// A worker recycled after `--max-connections` is counted by reason, as `status` counts it.
#[test]
fn a_recycled_worker_is_counted_by_reason() {
    let mut c = Cluster::start(
        &[
            "--workers",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--max-connections",
            "3",
            "--lifetime-jitter",
            "0",
        ],
        &["--serve"],
    );
    let status = c.wait_ready(1);
    let addr = listen_addr(&status);
    let at = metrics_addr(&c);
    for i in 0..3 {
        request(addr, &format!("/r{i}"));
    }
    let status = c.wait_status("the worker recycled", |s| {
        s["replaced"]["connections"] == 1 && s["workers"].as_array().unwrap().iter().all(|w| w["state"] == "ready")
    });
    let m = scrape(&at);
    assert_eq!(m.value("clusterd_workers_replaced_total", &[("reason", "connections")]), Some(1.0), "{}", m.text);
    assert_eq!(m.value("clusterd_workers_replaced_total", &[("reason", "health")]), Some(0.0));
    // A recycled worker retires, it does not restart.
    assert!(m.samples("clusterd_worker_restarts_total").is_empty(), "{}", m.text);
    assert_eq!(worker(&status, 0)["restarts"], 0);
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0));
}
