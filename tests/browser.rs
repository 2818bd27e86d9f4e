//! The chat example's page in a real browser: Debian's Chromium, driven by npm `playwright-core`
//! (`tests/browser/chat.mjs`), against clusterd and two `chat` workers. Both are installed by
//! `scripts/test` (`scripts/install-chromium`, `npm ci --prefix tests/browser`).
//!
//! A second test checks, without a browser, what the first relies on: the page, its bundle and its
//! icon are served, and each closes its connection.
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

/// One `GET` on a new connection that asks to be kept alive, as a browser's does: the status,
/// the header lines (lowercase) and the body.
fn get_keep_alive(addr: std::net::SocketAddr, target: &str) -> (u16, Vec<String>, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(stream, "GET {target} HTTP/1.1\r\nHost: test\r\nConnection: keep-alive\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap_or_else(|e| panic!("reading the response to {target}: {e}"));
        if line.trim().is_empty() {
            break;
        }
        lines.push(line.trim().to_ascii_lowercase());
    }
    let code = lines[0].split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status line");
    let length: usize = lines
        .iter()
        .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()))
        .expect("a content-length");
    let mut body = vec![0; length];
    std::io::Read::read_exact(&mut reader, &mut body).expect("the body");
    (code, lines, String::from_utf8(body).expect("a text body"))
}

/// What the browser test relies on, checked without a browser: the page names the vendored
/// bundle, which is served, the icon is there (no 404), and every one of these responses closes
/// its connection (a browser would otherwise send a Socket.IO polling request on it, to the
/// wrong worker).
#[test]
fn the_chat_page_its_client_bundle_and_its_icon_are_served_and_close_their_connections() {
    let chat = PathBuf::from(CLUSTERD).parent().unwrap().join("examples").join("chat");
    assert!(chat.exists(), "{} is missing: `cargo test` builds the examples", chat.display());
    let mut c =
        Builder::new().args(&["--workers", "1", "--listen", "127.0.0.1:0"]).program(&[chat.to_str().unwrap()]).start();
    let addr = listen_addr(&c.wait_ready(1));

    let header = |lines: &[String], name: &str| {
        lines.iter().find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_owned())).unwrap_or_default()
    };
    let (code, head, page) = get_keep_alive(addr, "/");
    assert_eq!((code, header(&head, "content-type").as_str()), (200, "text/html; charset=utf-8"));
    assert!(page.contains(r#"<meta name="viewport" content="width=device-width"#), "{page}");
    let bundle = page.split(r#"<script src=""#).nth(1).and_then(|s| s.split('"').next()).expect("a script src");
    assert!(bundle.starts_with("/assets/socket.io-") && bundle.ends_with(".min.js"), "{bundle}");
    let icon = page.split(r#"<link rel="icon" href=""#).nth(1).and_then(|s| s.split('"').next()).expect("an icon");
    let mut closes = vec![("page", header(&head, "connection"))];

    let (code, head, js) = get_keep_alive(addr, bundle);
    assert_eq!((code, header(&head, "content-type").as_str()), (200, "text/javascript; charset=utf-8"));
    assert!(js.starts_with("/*!\n * Socket.IO v"), "the official bundle: {}", &js[..80.min(js.len())]);
    closes.push(("bundle", header(&head, "connection")));
    for path in [icon, "/favicon.ico"] {
        let (code, head, _) = get_keep_alive(addr, path);
        assert_eq!((code, header(&head, "content-type").as_str()), (200, "image/svg+xml"), "{path}");
        closes.push((path, header(&head, "connection")));
    }
    for (what, connection) in closes {
        assert_eq!(connection, "close", "the {what} keeps its connection open");
    }
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}
