//! The workers' own metrics, gathered on request through the control socket (`clusterd metrics`,
//! the same gather that `--metrics` appends to clusterd's own): SDK workers labelled with
//! `worker`, frozen and garbage-speaking workers left out and counted, and Node workers that use
//! prom-client aggregated exactly as `AggregatorRegistry.clusterMetrics()` in a Node primary.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// One gather through the control socket: (text, missed).
fn gather(cluster: &Cluster) -> (String, u64) {
    let reply = cluster.request(r#"{"command":"metrics"}"#).expect("a reply to metrics");
    assert_eq!(reply["ok"], true, "{reply}");
    (reply["metrics"].as_str().expect("metrics text").to_owned(), reply["missed"].as_u64().expect("missed"))
}

/// The sample lines of `text` whose name is `name`.
fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines().filter(|l| !l.starts_with('#') && l.split(['{', ' ']).next() == Some(name)).collect()
}

#[test]
fn sdk_workers_metrics_carry_a_worker_label_and_merge_per_family() {
    let mut cluster = Cluster::start(&["--workers", "2"], &["--metrics"]);
    cluster.wait_ready(2);
    // A worker says it has metrics right after its start; wait until both did.
    let (text, missed) = wait_until("both workers' metrics", || {
        let (text, missed) = gather(&cluster);
        (samples(&text, "app_hits_total").len() == 2).then_some((text, missed))
    });
    assert_eq!(missed, 0, "{text}");
    assert_eq!(text.matches("# TYPE app_hits_total counter\n").count(), 1, "one family:\n{text}");
    assert_eq!(text.matches("# HELP app_hits_total Hits.\n").count(), 1, "one HELP:\n{text}");
    assert_eq!(
        samples(&text, "app_hits_total"),
        ["app_hits_total{worker=\"0\",kind=\"test\"} 1", "app_hits_total{worker=\"1\",kind=\"test\"} 2"]
    );
    // `process_*` is clusterd's own: the workers' family is renamed.
    assert!(samples(&text, "process_open_fds").is_empty(), "{text}");
    assert_eq!(samples(&text, "worker_process_open_fds").len(), 2, "{text}");

    // The same through the subcommand an operator runs.
    let out = std::process::Command::new(CLUSTERD)
        .args(["metrics", "--control"])
        .arg(&cluster.control)
        .output()
        .expect("clusterd metrics");
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(samples(&printed, "app_hits_total").len(), 2, "{printed}");
    assert!(out.stderr.is_empty(), "nothing missed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_metrics_scrape_carries_the_workers_families_after_clusterds_own() {
    let mut cluster = Cluster::start(&["--workers", "2", "--metrics", "127.0.0.1:0"], &["--metrics"]);
    cluster.wait_ready(2);
    let at = metrics_addr(&cluster);
    let scraped = wait_until("both workers' metrics on GET /metrics", || {
        let scraped = scrape(&at);
        (samples(&scraped.text, "app_hits_total").len() == 2).then_some(scraped)
    });
    // The whole body, clusterd's families and the workers', is one valid exposition.
    assert_eq!(scraped.value("app_hits_total", &[("worker", "0"), ("kind", "test")]), Some(1.0), "{}", scraped.text);
    assert_eq!(scraped.value("app_hits_total", &[("worker", "1"), ("kind", "test")]), Some(2.0), "{}", scraped.text);
    assert_eq!(scraped.value("clusterd_worker_scrapes_missed_total", &[]), Some(0.0), "{}", scraped.text);
    assert!(scraped.text.find("clusterd_workers").unwrap() < scraped.text.find("app_hits_total").unwrap());
    assert_eq!(scraped.text.matches("# TYPE process_open_fds ").count(), 1, "{}", scraped.text);
}

#[test]
fn a_frozen_worker_is_left_out_and_counted_and_the_gather_returns_by_its_deadline() {
    let mut cluster = Cluster::start(&["--workers", "2"], &["--metrics"]);
    let status = cluster.wait_ready(2);
    wait_until("both workers' metrics", || (samples(&gather(&cluster).0, "app_hits_total").len() == 2).then_some(()));
    let frozen = worker_pid(&status, 1);
    let stop = |signal| nix::sys::signal::kill(nix::unistd::Pid::from_raw(frozen), signal).expect("signal worker");
    stop(nix::sys::signal::Signal::SIGSTOP);
    let started = Instant::now();
    let out = std::process::Command::new(CLUSTERD)
        .args(["metrics", "--control"])
        .arg(&cluster.control)
        .output()
        .expect("clusterd metrics");
    let took = started.elapsed();
    stop(nix::sys::signal::Signal::SIGCONT);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(samples(&text, "app_hits_total"), ["app_hits_total{worker=\"0\",kind=\"test\"} 1"], "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 worker did not answer in time"),
        "counted: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The deadline is 2 s; the margin is for a loaded machine, far below a stalled scrape.
    assert!(took < Duration::from_secs(6), "the gather took {took:?}");
    // Thawed, it answers the next scrape (its late answer to the last one is dropped).
    wait_until("the thawed worker's metrics", || {
        let (text, missed) = gather(&cluster);
        (missed == 0 && samples(&text, "app_hits_total").len() == 2).then_some(())
    });
}

#[test]
fn a_worker_that_answers_garbage_is_left_out_and_counted_and_clusterd_keeps_running() {
    let mut cluster = Cluster::start(&["--workers", "1"], &["--metrics-garbage"]);
    cluster.wait_ready(1);
    let (text, missed) = wait_until("the garbage answer to be counted", || {
        let (text, missed) = gather(&cluster);
        (missed == 1).then_some((text, missed))
    });
    assert_eq!((text.as_str(), missed), ("", 1));
    let status = cluster.status().expect("clusterd still answers");
    assert_eq!(status["workers"][0]["state"], "ready", "the worker is not replaced for it: {status}");
    assert_eq!(status["workers"][0]["restarts"], 0, "{status}");
}

/// A text of many frames is put together whole; one over the 1 MiB bound is left out, at once.
#[test]
fn large_metrics_travel_in_chunks_and_oversized_ones_are_left_out() {
    // About 120 KiB: three frames.
    let mut cluster = Cluster::start(&["--workers", "1"], &["--metrics-lines", "5000"]);
    cluster.wait_ready(1);
    let text = wait_until("the large answer", || {
        let (text, missed) = gather(&cluster);
        (missed == 0 && !text.is_empty()).then_some(text)
    });
    let lines = samples(&text, "app_line");
    assert_eq!(lines.len(), 5000);
    assert_eq!(lines[4999], "app_line{worker=\"0\",n=\"4999\"} 4999");
    drop(cluster);

    // About 1.5 MiB.
    let mut cluster = Cluster::start(&["--workers", "1"], &["--metrics-lines", "60000"]);
    cluster.wait_ready(1);
    let started = Instant::now();
    wait_until("the oversized answer to be counted", || (gather(&cluster) == (String::new(), 1)).then_some(()));
    assert!(started.elapsed() < Duration::from_secs(2), "refused at once, not at the deadline");
}

#[test]
fn workers_without_metrics_are_not_asked_and_not_counted() {
    let mut cluster = Cluster::start(&["--workers", "2"], &[]);
    cluster.wait_ready(2);
    let started = Instant::now();
    let (text, missed) = gather(&cluster);
    assert_eq!((text.as_str(), missed), ("", 0));
    assert!(started.elapsed() < Duration::from_secs(2), "nothing to wait for: {:?}", started.elapsed());
}

/// The families the test's Node worker registers itself (prom-client's default metrics differ
/// between two runs by nature).
const OURS: [&str; 3] = ["app_requests_total", "app_queue_depth", "app_latency_seconds"];

/// The text of the families in `OURS`, each as prom-client prints it (HELP, TYPE, values).
fn our_families(text: &str) -> String {
    text.split("\n\n")
        .filter(|family| OURS.iter().any(|name| family.starts_with(&format!("# HELP {name} "))))
        .map(|family| family.trim_end_matches('\n'))
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn node_available() -> bool {
    std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// A Node worker without prom-client's cluster support never answers: its first scrapes wait for
/// the deadline and count it, then it is no longer asked and scrapes return at once.
#[test]
fn a_node_worker_that_never_answers_is_no_longer_asked_after_three_scrapes() {
    assert!(node_available(), "node is needed (see README, 'Before you start')");
    let dir = node_dir();
    let script = dir.join("workers/prom-worker.cjs");
    let mut cluster = Builder::new()
        .args(&["--workers", "1", "--protocol", "node"])
        .program(&["node", script.to_str().expect("utf-8 path")])
        .env("NODE_PATH", dir.join("node_modules").to_str().expect("utf-8"))
        .env("NO_AGGREGATOR", "1")
        .start();
    cluster.wait_ready(1);
    for scrape in 1..=3 {
        assert_eq!(gather(&cluster), (String::new(), 1), "scrape {scrape}");
    }
    let started = Instant::now();
    assert_eq!(gather(&cluster), (String::new(), 0), "no longer asked");
    assert!(started.elapsed() < Duration::from_secs(1), "nothing waited for: {:?}", started.elapsed());
    cluster.output.wait_contains("does not seem to use prom-client's AggregatorRegistry");
}

#[test]
fn node_workers_with_prom_client_are_aggregated_as_a_node_primary_does() {
    assert!(node_available(), "node is needed (see README, 'Before you start')");
    let dir = node_dir();
    assert!(dir.join("node_modules/prom-client").exists(), "run `npm ci --prefix tests/node`");
    let script = dir.join("workers/prom-worker.cjs");
    let script = script.to_str().expect("utf-8 path");
    for serialization in ["advanced", "json"] {
        // Each worker counts 2 + its slot requests, its queue depth is 10 × (slot + 1) (aggregated
        // with `max`), and it observes 0.05 s and 2 s in a histogram.
        let mut cluster = Builder::new()
            .args(&["--workers", "3", "--protocol", "node", "--serialization", serialization])
            .program(&["node", script])
            .env("NODE_PATH", dir.join("node_modules").to_str().expect("utf-8"))
            .start();
        cluster.wait_ready(3);
        let (ours, missed) = wait_until("the three workers' metrics", || {
            let (text, missed) = gather(&cluster);
            text.contains("app_requests_total 9").then(|| (our_families(&text), missed))
        });
        assert_eq!(missed, 0);

        // The same worker script under a real Node cluster primary with prom-client's
        // AggregatorRegistry.
        let out = std::process::Command::new("node")
            .arg(script)
            .env("PRIMARY", "1")
            .env("WORKERS", "3")
            .env("SERIALIZATION", serialization)
            .env("NODE_PATH", dir.join("node_modules"))
            .output()
            .expect("node primary");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let node = our_families(&String::from_utf8_lossy(&out.stdout));
        assert!(node.contains("# TYPE app_latency_seconds histogram"), "{node}");
        assert!(node.contains("app_requests_total 9"), "summed across workers: {node}");
        assert!(node.contains("app_queue_depth 30"), "max across workers: {node}");
        assert_eq!(ours, node, "clusterd's aggregation differs from prom-client's ({serialization})");
    }
}
