//! The chat example's page in a real browser: Debian's Chromium, driven by npm `playwright-core`
//! (`tests/browser/chat.mjs`), against clusterd and two `chat` workers. Both are installed by
//! `scripts/test` (`scripts/install-chromium`, `npm ci --prefix tests/browser`).
//!
//! Set `CLUSTERD_TEST_SCREENSHOTS=<dir>` to keep the screenshots the script takes (desktop and
//! phone viewports, before and after the kill); otherwise they go to the test's temp dir.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;

/// Where Debian puts its Chromium; `CHROMIUM` overrides it (the script reads the same variable).
const CHROMIUM: &str = "/usr/bin/chromium";

fn browser_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: run ./scripts/test (it installs it), or `npm ci --prefix tests/browser`"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| CHROMIUM.to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run ./scripts/test (it installs it), or `scripts/install-chromium` as root"
    );
    dir
}

/// One JSON line of the script; its whole output so far on a failure.
fn next_line(lines: &mut impl Iterator<Item = std::io::Result<String>>, seen: &mut Vec<String>) -> Value {
    let line = lines
        .next()
        .unwrap_or_else(|| panic!("the browser script ended early; it said:\n{}", seen.join("\n")))
        .expect("read the browser script's output");
    seen.push(line.clone());
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON from the browser script: {line}"))
}

#[test]
fn two_browser_pages_on_different_workers_keep_chatting_through_a_worker_kill() {
    let script = browser_dir().join("chat.mjs");
    let chat = PathBuf::from(CLUSTERD).parent().unwrap().join("examples").join("chat");
    assert!(chat.exists(), "{} is missing: `cargo test` builds the examples", chat.display());
    let mut c =
        Builder::new().args(&["--workers", "2", "--listen", "127.0.0.1:0"]).program(&[chat.to_str().unwrap()]).start();
    let status = c.wait_ready(2);
    let url = format!("http://{}", listen_addr(&status));
    let screenshots =
        std::env::var_os("CLUSTERD_TEST_SCREENSHOTS").map_or_else(|| c.dir.path().to_owned(), PathBuf::from);
    std::fs::create_dir_all(&screenshots).expect("create the screenshot dir");

    let mut node = Command::new("node")
        .arg(&script)
        .arg(&url)
        .arg(&screenshots)
        .arg(c.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node (Node.js) must be installed to run the browser test");
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();

    // Two pages on two workers have chatted; the desktop page's worker must die now.
    let kill = next_line(&mut lines, &mut seen);
    assert_eq!(kill["phase"], "kill", "{kill}");
    let (slot, pid) = (kill["worker"].as_u64().unwrap(), kill["pid"].as_i64().unwrap() as i32);
    let before = c.status().expect("status");
    assert_eq!(worker_pid(&before, slot), pid, "the page names the pid of its worker: {before:#}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).expect("kill the page's worker");
    writeln!(node.stdin.as_mut().unwrap(), "killed").unwrap();

    // The page reconnected to a live worker, sent what was typed meanwhile, and chatted on.
    let result = next_line(&mut lines, &mut seen);
    assert!(node.wait().unwrap().success() && result["ok"] == true, "{result:#}\n{}", c.stderr_dump());
    let after = result["desktop"][1]["pid"].as_i64().unwrap() as i32;
    assert_ne!(after, pid, "served by a live worker after the kill: {result}");

    // clusterd replaced the killed worker in its slot.
    let status = c.wait_status("the killed worker replaced", |s| {
        s["workers"].as_array().unwrap().iter().any(|w| w["id"] == slot && w["state"] == "ready" && w["pid"] != pid)
    });
    assert_eq!(worker(&status, slot)["restarts"], 1, "{status:#}");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}
