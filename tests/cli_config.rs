//! The command line, the config file, the environment, and the control socket.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;

use nix::sys::signal::Signal;
use support::*;

/// Runs clusterd to completion with a scrubbed environment; returns (code, stderr).
fn run(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> (Option<i32>, String) {
    let mut child = Command::new(CLUSTERD)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .current_dir(dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_until("clusterd to exit on bad input", || child.try_wait().unwrap());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status.code(), stderr)
}

/// Arguments, environment, and a part of the expected message.
type BadInput<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_usage_and_configuration_exit_2_with_one_clear_line_and_start_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("unknown.toml"), "workers = 2\nworkres = 3\n").unwrap();
    std::fs::write(dir.path().join("badgrace.toml"), "grace = \"soon\"\n").unwrap();
    std::fs::write(dir.path().join("broken.toml"), "workers = [\n").unwrap();
    let control = dir.path().join("c.sock");
    let control = control.to_str().unwrap();
    let cases: &[BadInput] = &[
        (&["--workers", "0", "--", "true"], &[], "at least 1 worker"),
        (&["--workers", "lots", "--", "true"], &[], "a number or `auto`"),
        (&["--grace", "5x", "--", "true"], &[], "unknown unit"),
        (&["--ready-timeout", "0s", "--", "true"], &[], "--ready-timeout"),
        (&["--workers", "2"], &[], "no worker program"),
        (&["--", "/no/such/program"], &[], "not an executable file"),
        (&["--", "no-such-program-anywhere"], &[], "not found in PATH"),
        (&["--balance", "fastest", "--", "true"], &[], "invalid value 'fastest'"),
        (&["--frobnicate", "--", "true"], &[], "unexpected argument '--frobnicate'"),
        (&["--config", "unknown.toml", "--", "true"], &[], "unknown field `workres`"),
        (&["--config", "badgrace.toml", "--", "true"], &[], "invalid duration"),
        (&["--config", "broken.toml", "--", "true"], &[], "broken.toml"),
        (&["--config", "missing.toml", "--", "true"], &[], "cannot read config file"),
        (&["--", "true"], &[("CLUSTERD_GRACE", "5x")], "unknown unit"),
        (&["--", "true"], &[("CLUSTERD_WORKERS", "0")], "at least 1 worker"),
        (&["--sniff-bytes", "10", "--", "true"], &[], "must be 256 to 16384"),
        (&["--session-ttl", "0", "--", "true"], &[], "--session-ttl"),
        (&["--listen", "nowhere", "--", "true"], &[], "not HOST:PORT"),
        (&["--protocol", "node", "--serialization", "yaml", "--", "true"], &[], "invalid value 'yaml'"),
    ];
    for (args, env, expected) in cases {
        let mut full = vec!["--control", control];
        full.extend_from_slice(args);
        let (code, stderr) = run(&full, env, dir.path());
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?} {env:?}: expected {expected:?} in {stderr:?}");
        assert!(!std::path::Path::new(control).exists(), "{args:?}: nothing may be started");
        let lines = stderr.lines().filter(|l| !l.trim().is_empty()).count();
        assert!(lines <= 4, "{args:?}: a short message, got {lines} lines: {stderr}");
    }
}

#[test]
fn precedence_is_command_line_then_environment_then_file_then_default() {
    let b = Builder::new();
    let file = b.dir().join("clusterd.toml");
    std::fs::write(&file, "workers = 3\ngrace = \"7s\"\n").unwrap();
    let file = file.to_str().unwrap().to_owned();
    let count =
        |c: &mut Cluster| c.wait_status("workers", |s| s["phase"] == "ready")["workers"].as_array().unwrap().len();

    let mut c = b.args(&["--config", &file]).start();
    assert_eq!(count(&mut c), 3, "file over default");
    c.signal(Signal::SIGTERM);
    c.output.wait_contains("grace=Some(7s)");
    assert_eq!(c.wait_exit().code(), Some(0));

    let mut c = Builder::new().args(&["--config", &file]).env("CLUSTERD_WORKERS", "2").start();
    assert_eq!(count(&mut c), 2, "environment over file");
    drop(c);

    let mut c = Builder::new().args(&["--config", &file, "--workers", "1"]).env("CLUSTERD_WORKERS", "2").start();
    assert_eq!(count(&mut c), 1, "command line over environment");
    drop(c);

    let mut c = Builder::new().args(&["--workers", "auto"]).start();
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(count(&mut c), cpus, "auto = the CPUs this process may use");
    c.output.wait_contains("auto: the CPUs this process may use");
}

#[test]
fn status_and_stop_subcommands_talk_to_the_control_socket() {
    let mut c = Cluster::start(&["--workers", "2"], &[]);
    c.wait_ready(2);
    let mode = std::fs::metadata(&c.control).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the control socket is private");

    let control = c.control.clone();
    let cli = |args: &[&str]| {
        let out = Command::new(CLUSTERD).args(args).arg("--control").arg(&control).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, json, _) = cli(&["status", "--json"]);
    assert_eq!(code, Some(0));
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["pid"], c.pid());
    assert_eq!(status["phase"], "ready");
    assert_eq!(status["generation"], 1);
    assert!(status["listen"].as_array().unwrap().is_empty());
    for w in status["workers"].as_array().unwrap() {
        for key in ["id", "pid", "state", "generation", "restarts", "connections", "sessions"] {
            assert!(w.get(key).is_some(), "worker lacks {key}: {w}");
        }
    }
    let (code, table, _) = cli(&["status"]);
    assert_eq!(code, Some(0));
    assert!(table.contains("phase ready") && table.contains("2/2 workers ready"), "{table}");
    // --control before the subcommand works too; an option of a run does not belong there.
    let out = Command::new(CLUSTERD).arg("--control").arg(&control).arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(CLUSTERD).args(["-w", "3", "status", "--control"]).arg(&control).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`workers` is an option of a run"));

    let (code, _, stderr) = cli(&["scale", "0"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("the pool size must be 1 to 1024, not 0"), "{stderr}");

    let (code, out, _) = cli(&["stop"]);
    assert_eq!((code, out.trim()), (Some(0), "ok"));
    assert_eq!(c.wait_exit().code(), Some(0));
    assert!(!c.control.exists(), "the control socket is removed on exit");

    let (code, _, stderr) = cli(&["status"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot reach clusterd"), "{stderr}");
}

#[test]
fn malformed_oversized_and_silent_control_clients_get_errors_and_harm_nothing() {
    let mut c = Cluster::start(&["--workers", "1"], &[]);
    c.wait_ready(1);
    let reply = control_request(&c.control, "this is not json").unwrap();
    assert_eq!(reply["ok"], false);
    assert!(reply["error"].as_str().unwrap().contains("malformed request"), "{reply}");
    let reply = control_request(&c.control, r#"{"command":"explode"}"#).unwrap();
    assert_eq!(reply["ok"], false);

    // 100 KiB without a newline: refused at the 64 KiB limit.
    let mut stream = UnixStream::connect(&c.control).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = stream.write_all(&vec![b'{'; 100 * 1024]);
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.contains("request over 65536 bytes"), "{answer}");

    // A silent client holds only its own connection.
    let _silent = UnixStream::connect(&c.control).unwrap();
    assert_eq!(c.status().unwrap()["phase"], "ready");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0));
}

#[test]
fn a_stale_control_socket_is_replaced_and_a_live_one_is_not_stolen() {
    let b = Builder::new().args(&["--workers", "1"]);
    let path = b.dir().join("control.sock");
    drop(UnixListener::bind(&path).unwrap()); // the file of a dead clusterd
    let mut c = b.start();
    c.wait_ready(1);
    c.output.wait_contains("replacing a stale control socket");

    let (code, stderr) = run(&["--control", path.to_str().unwrap(), "--workers", "1", "--", WORKER], &[], c.dir.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("in use by a running clusterd"), "{stderr}");
    assert_eq!(c.status().unwrap()["phase"], "ready", "the first clusterd keeps its socket");

    let file = c.dir.path().join("plain-file");
    std::fs::write(&file, "keep me").unwrap();
    let (code, stderr) = run(&["--control", file.to_str().unwrap(), "--", WORKER], &[], c.dir.path());
    assert_eq!(code, Some(1));
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0));
}

#[test]
fn the_sdk_says_clearly_when_a_program_was_not_started_by_clusterd() {
    let out = Command::new(WORKER).env_clear().output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("CLUSTERD_IPC_FD is not set: this program must be started by clusterd"), "{stdout}");
}

#[test]
fn the_example_config_file_is_valid() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/config/clusterd.toml");
    let mut c = Builder::new()
        .args(&["--config", file, "--workers", "1", "--ready-on", "spawn"])
        .program(&["sleep", "1000"])
        .start();
    c.wait_ready(1);
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
}
