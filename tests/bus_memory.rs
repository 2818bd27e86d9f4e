//! clusterd's memory for the bus stays within the bound the README states ("Limits and
//! guarantees"), whatever is published past a worker that does not read.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use clusterd_worker::bus_protocol::MAX_BUS_FRAME;
use support::*;

const MIB: u64 = 1024 * 1024;
const KIB: u64 = 1024;

/// The README's bound on clusterd's bus memory for `workers` workers and `--bus-queue`:
/// 64 MiB + workers × (128 KiB + max(2 × bus_queue, 33 MiB)).
fn bus_memory_bound(workers: u64, bus_queue: u64) -> u64 {
    64 * MIB + workers * (128 * KIB + (2 * bus_queue).max(33 * MIB))
}

/// Every size up to the largest payload one frame carries (the frame limit less a message's head).
const SIZES: &str = "1000,65536,1048576,33554000";

#[test]
fn a_gibibyte_published_past_a_stuck_reader_keeps_clusterd_within_its_bus_memory_bound() {
    const { assert!(33_554_000 + 64 < MAX_BUS_FRAME, "the largest payload fits a frame") };
    let bus_queue = 2 * MIB;
    // Worker 0 subscribes, then blocks its only thread; worker 1 reads everything; workers 2 and 3
    // each publish 512 MiB, in messages of every size, once both subscribers are there.
    let publisher = format!("--bus-pub flood 0 --bus-wait 2 --bus-flood {} {SIZES}", 512 * MIB);
    let script = format!(
        "case \"$CLUSTERD_WORKER_ID\" in 0) exec {WORKER} --bus-sub flood --freeze ;; 1) exec {WORKER} --bus-tally flood \
         ;; *) exec {WORKER} {publisher} ;; esac"
    );
    // Two workers first, to measure clusterd before anything is published; then two more.
    let mut c = Builder::new()
        .args(&["--workers", "2", "--bus-queue", &bus_queue.to_string()])
        .program(&["sh", "-c", &script])
        .start();
    c.wait_ready(2);
    c.output.wait_contains("[w0] freezing");
    let pid = c.pid();
    let (baseline, _) = memory_of(pid);
    scale(&c, 4);

    // VmHWM is the kernel's own peak; the samples are only for the report.
    let done = Arc::new(AtomicBool::new(false));
    let peak_sampled = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (Arc::clone(&done), Arc::clone(&peak_sampled));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(memory_of(pid).0, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let flooded = |id: u32| {
        c.output.wait_for_within(Duration::from_secs(90), &format!("worker {id} to publish 512 MiB"), |l| {
            l.starts_with(&format!("[w{id}] bus flooded"))
        })
    };
    let (two, three) = (flooded(2), flooded(3));
    let messages =
        |line: &str| -> usize { line.rsplit("messages=").next().and_then(|n| n.parse().ok()).expect("count") };
    let expected = [(2, messages(&two)), (3, messages(&three))];
    for (from, count) in expected {
        wait_until(&format!("worker 1 to get the {count} messages of worker {from}"), || {
            let prefix = format!("[w1] bus tally from={from} ");
            (c.output.snapshot().iter().filter(|l| l.starts_with(&prefix)).count() == count).then_some(())
        });
    }
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let (rss, hwm) = memory_of(pid);
    let bound = bus_memory_bound(4, bus_queue);
    let report = format!(
        "clusterd before: {} MiB, after: {} MiB, peak sampled: {} MiB, VmHWM: {} MiB, bound: {} MiB above before",
        baseline / MIB,
        rss / MIB,
        peak_sampled.load(Ordering::Relaxed) / MIB,
        hwm / MIB,
        bound / MIB
    );
    eprintln!("{report}");
    assert!(hwm <= baseline + bound, "over the bus memory bound: {report}");
    let status = c.status().expect("status");
    assert_eq!(worker(&status, 1)["dropped"], 0, "the reading worker lost nothing");
    assert!(worker(&status, 0)["dropped"].as_u64() > Some(0), "the stuck worker's losses are counted");
}

/// `clusterd scale N` over the control socket.
fn scale(c: &Cluster, workers: u32) {
    let reply = c.request(&format!(r#"{{"command":"scale","workers":{workers}}}"#)).expect("a reply to scale");
    assert!(reply.get("error").is_none(), "scale refused: {reply}");
}

#[test]
fn adapter_messages_past_a_stuck_node_worker_keep_clusterd_within_its_bus_memory_bound() {
    let bus_queue = 2 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let start = dir.path().join("start");
    let script = node_dir().join("workers/flood-worker.cjs");
    // Worker 0 blocks its event loop; worker 1 reads; workers 2 and 3 each send 256 MiB of
    // cluster-adapter messages (which go to every other worker) once the file `start` exists.
    // This checks the bound for Node workers; it is no regression test: the Node relay drops for
    // a full queue instead of waiting, so its input did not pile up before the budget either.
    let mut c = Builder::new()
        .args(&["--protocol", "node", "--workers", "4", "--bus-queue", &bus_queue.to_string()])
        .program(&["node", script.to_str().unwrap()])
        .env("FLOOD_TOTAL", &(256 * MIB).to_string())
        .env("FLOOD_SIZES", "1000,65536,1048576,8388608")
        .env("FLOOD_START", start.to_str().unwrap())
        .start();
    c.wait_ready(4);
    c.output.wait_contains("[w0] blocking");
    let pid = c.pid();
    let (baseline, _) = memory_of(pid);
    std::fs::write(&start, b"go").unwrap();
    let flooded = |id: u32| {
        c.output.wait_for_within(Duration::from_secs(90), &format!("worker {id} to send 256 MiB"), |l| {
            l.starts_with(&format!("[w{id}] flooded"))
        })
    };
    let (two, three) = (flooded(2), flooded(3));
    let messages =
        |line: &str| -> usize { line.rsplit("messages=").next().and_then(|n| n.parse().ok()).expect("count") };
    // The Node relay drops for a reader whose queue is full instead of waiting (see "Node.js
    // workers"): every message reached worker 1 or is counted as dropped for it.
    let sent = messages(&two) + messages(&three);
    let output = c.output.clone();
    c.wait_status("every message of the flood received or counted by worker 1", |s| {
        let got = lines_starting(&output, "[w1] got from=");
        got + worker(s, 1)["dropped"].as_u64().unwrap_or(0) as usize == sent
    });
    let (rss, hwm) = memory_of(pid);
    // The README's bound, with the 33 MiB more of each Node worker.
    let bound = bus_memory_bound(4, bus_queue) + 4 * 33 * MIB;
    let report = format!(
        "clusterd before: {} MiB, after: {} MiB, VmHWM: {} MiB, bound: {} MiB above before",
        baseline / MIB,
        rss / MIB,
        hwm / MIB,
        bound / MIB
    );
    eprintln!("{report}");
    assert!(hwm <= baseline + bound, "over the bus memory bound: {report}");
    let status = c.status().expect("status");
    assert!(worker(&status, 0)["dropped"].as_u64() > Some(0), "the stuck worker's losses are counted");
}

/// Lines that start with `prefix`.
fn lines_starting(output: &Lines, prefix: &str) -> usize {
    output.snapshot().iter().filter(|l| l.starts_with(prefix)).count()
}

#[test]
fn answers_over_the_held_limit_count_as_missing_and_the_asker_still_gets_its_answers() {
    // Workers 1 and 2 each answer with 20 MiB: together more than the 31 MiB clusterd holds for
    // the answers being gathered, and more than one frame to the asker could carry.
    let answerer = format!("--bus-sub q --bus-answer --bus-answer-bytes {}", 20 * MIB);
    let script = format!(
        "case \"$CLUSTERD_WORKER_ID\" in 0) exec {WORKER} --bus-sub q --bus-ask --bus-wait 3 ;; *) exec {WORKER} \
         {answerer} ;; esac"
    );
    let mut c = Builder::new().args(&["--workers", "3"]).program(&["sh", "-c", &script]).start();
    c.wait_ready(3);
    let line = c.output.wait_contains("[w0] bus answers");
    assert!(
        line.contains("from=[1] missing=[2]") || line.contains("from=[2] missing=[1]"),
        "one answer held, the other counted missing: {line}"
    );
    let status = c.wait_ready(3);
    for id in 0..3 {
        assert_eq!(worker(&status, id)["restarts"], 0, "no worker replaced: {status}");
    }
}
