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
    run_to_exit(args, env, dir)
}

/// Arguments, environment, and a part of the expected message.
type BadInput<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_usage_and_configuration_exit_2_with_one_clear_line_and_start_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("unknown.toml"), "workers = 2\nworkres = 3\n").unwrap();
    std::fs::write(dir.path().join("badgrace.toml"), "workers = 2\n\ngrace = \"soon\"\n").unwrap();
    std::fs::write(dir.path().join("broken.toml"), "workers = [\n").unwrap();
    std::fs::write(dir.path().join("nocmd.toml"), "command = [\"/no/such\"]\n").unwrap();
    let control = dir.path().join("c.sock");
    let control = control.to_str().unwrap();
    let cases: &[BadInput] = &[
        (
            &["--config", "nocmd.toml"],
            &[],
            "clusterd: config file nocmd.toml, line 1, key `command`: /no/such is not an executable file",
        ),
        (&["--workers", "0", "--", "true"], &[], "at least 1 worker"),
        (&["--workers", "lots", "--", "true"], &[], "a number or `auto`"),
        (&["--grace", "5x", "--", "true"], &[], "unknown unit"),
        (&["--ready-timeout", "0s", "--", "true"], &[], "clusterd: --ready-timeout: must be 1ms to 24h, not 0s"),
        (&["--workers", "2"], &[], "no worker program"),
        (&["--", "/no/such/program"], &[], "not an executable file"),
        (&["--", "no-such-program-anywhere"], &[], "not found in PATH"),
        (&["--balance", "fastest", "--", "true"], &[], "invalid value 'fastest'"),
        (&["--frobnicate", "--", "true"], &[], "unexpected argument '--frobnicate'"),
        (
            &["--config", "unknown.toml", "--", "true"],
            &[],
            "clusterd: config file unknown.toml, line 2, key `workres`: unknown field `workres` (config/clusterd.toml lists every key)",
        ),
        (
            &["--config", "badgrace.toml", "--", "true"],
            &[],
            "clusterd: config file badgrace.toml, line 3, key `grace`: invalid duration \"soon\"",
        ),
        (&["--config", "broken.toml", "--", "true"], &[], "clusterd: config file broken.toml, line 1"),
        (&["--config", "missing.toml", "--", "true"], &[], "cannot read config file"),
        (
            &["--", "true"],
            &[("CLUSTERD_GRACE", "5x")],
            "clusterd: invalid value '5x' for CLUSTERD_GRACE: invalid duration",
        ),
        (&["--", "true"], &[("CLUSTERD_WORKERS", "0")], "for CLUSTERD_WORKERS: the pool needs at least 1 worker"),
        (&["--sniff-bytes", "10", "--", "true"], &[], "clusterd: --sniff-bytes: must be 256 to 16384, not 10"),
        (&["--session-ttl", "0", "--", "true"], &[], "clusterd: --session-ttl: must be 1ms to 24h, not 0s"),
        (&["--listen", "nowhere", "--", "true"], &[], "is not PORT, HOST:PORT, [V6]:PORT or unix:/path"),
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
        assert!(lines <= 2, "{args:?}: at most two lines, got {lines}: {stderr}");
    }
}

/// Issue 14, item 7: values that were accepted and then panicked at run time (a grace of 9.2e18 s
/// at SIGTERM, the sniff timeout on every connection), a config file read forever, boolean
/// variables beyond `true`/`false`, an empty control path (exit 1), an unbounded bus queue.
#[test]
fn out_of_bounds_values_and_unreadable_config_files_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty-control.toml"), "workers = 1\ncontrol = \"\"\n").unwrap();
    std::fs::write(dir.path().join("huge-queue.toml"), "bus_queue = 18446744073709551615\n").unwrap();
    std::fs::write(dir.path().join("big.toml"), vec![b'#'; 2 * 1024 * 1024]).unwrap();
    let control = dir.path().join("c.sock");
    let control = control.to_str().unwrap();
    let huge = "9223372036854775807s";
    let cases: &[BadInput] = &[
        (&["--grace", huge, "--", "true"], &[], "clusterd: --grace: must be 0s to 24h, not 2562047788015215h30m7s"),
        (&["--sniff-timeout", huge, "--", "true"], &[], "clusterd: --sniff-timeout: must be 1ms to 24h, not"),
        (&["--ready-timeout", huge, "--", "true"], &[], "clusterd: --ready-timeout: must be 1ms to 24h"),
        (&["--requests-timeout", huge, "--", "true"], &[], "clusterd: --requests-timeout: must be 1ms to 24h"),
        (
            &["--heartbeat-timeout", huge, "--", "true"],
            &[],
            "clusterd: --heartbeat-timeout: must be 0 (off) or 300ms to 24h",
        ),
        (&["--stable-after", huge, "--", "true"], &[], "clusterd: --stable-after: must be 0s to 24h"),
        (&["--session-ttl", huge, "--", "true"], &[], "clusterd: --session-ttl: must be 1ms to 24h"),
        (&["--", "true"], &[("CLUSTERD_GRACE", "25h")], "clusterd: CLUSTERD_GRACE: must be 0s to 24h, not 25h"),
        (
            &["--config", "/dev/zero", "--", "true"],
            &[],
            "clusterd: cannot read config file /dev/zero: not a regular file",
        ),
        (&["--config", ".", "--", "true"], &[], "clusterd: cannot read config file .: not a regular file"),
        (&["--config", "big.toml", "--", "true"], &[], "larger than the limit of 1048576 bytes"),
        (
            &["--", "true"],
            &[("CLUSTERD_NO_LOG_PREFIX", "yes")],
            "invalid value 'yes' for CLUSTERD_NO_LOG_PREFIX (possible values: true, false)",
        ),
        (&["--", "true"], &[("CLUSTERD_NO_LOG_PREFIX", "1")], "invalid value '1' for CLUSTERD_NO_LOG_PREFIX"),
        (
            &["--config", "empty-control.toml", "--", "true"],
            &[],
            "clusterd: config file empty-control.toml, line 2, key `control`: an empty path",
        ),
        (
            &["--config", "huge-queue.toml", "--", "true"],
            &[],
            "clusterd: config file huge-queue.toml, line 1, key `bus_queue`: must be 2097152 (2 MiB) to 1073741824 (1 GiB) bytes, not 18446744073709551615",
        ),
        (&["--bus-queue", "18446744073709551615", "--", "true"], &[], "clusterd: --bus-queue: must be 2097152 (2 MiB)"),
        (&["--", "true"], &[("CLUSTERD_BUS_QUEUE", "1")], "clusterd: CLUSTERD_BUS_QUEUE: must be 2097152 (2 MiB)"),
    ];
    for (args, env, expected) in cases {
        // The config file's own control path must be the one that counts in its case.
        let mut full =
            if args.iter().any(|a| a.ends_with("control.toml")) { vec![] } else { vec!["--control", control] };
        full.extend_from_slice(args);
        let (code, stderr) = run(&full, env, dir.path());
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?} {env:?}: expected {expected:?} in {stderr:?}");
        assert!(!std::path::Path::new(control).exists(), "{args:?}: nothing may be started");
        // clap's own errors add a usage line; clusterd's checks are one line.
        assert!(stderr.lines().count() <= 2, "{args:?}: short: {stderr}");
    }
}

/// Issue 15, item 3: a forgotten `--`, a mistyped subcommand and every invalid `scale` argument
/// get two lines and the same exit status; the tip shows the corrected command.
#[test]
fn usage_mistakes_get_a_tip_with_the_corrected_command() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["--workers", "2", "--listen", "127.0.0.1:3000", "node", "server.js"],
            "clusterd: unexpected argument 'node' found",
            "tip: the worker program goes after `--`: clusterd --workers 2 --listen 127.0.0.1:3000 -- node server.js",
        ),
        (
            &["-w", "2", "./my server", "--port", "3"],
            "clusterd: unexpected argument './my server' found",
            "tip: the worker program goes after `--`: clusterd -w 2 -- './my server' --port 3",
        ),
        (&["stauts"], "clusterd: unexpected argument 'stauts' found", "tip: the subcommand is `clusterd status`"),
        (&["scale", "0"], "clusterd: invalid value '0' for '<WORKERS>': 0 is not in 1..=1024", "usage:"),
        (&["scale", "5000"], "clusterd: invalid value '5000' for '<WORKERS>': 5000 is not in 1..=1024", "usage:"),
        (&["scale", "two"], "clusterd: invalid value 'two' for '<WORKERS>'", "usage:"),
        (&["-w"], "clusterd: a value is required for '--workers <N|auto>' but none was supplied", "usage:"),
        (
            &["--protocol", "nod", "--", "true"],
            "clusterd: invalid value 'nod' for '--protocol <PROTOCOL>' (possible values: auto, native, node)",
            "tip: a similar value exists: 'node'",
        ),
    ];
    for (args, first, second) in cases {
        let (code, stderr) = run(args, &[], dir.path());
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 2, "{args:?}: two lines: {stderr}");
        assert!(lines[0].starts_with(first), "{args:?}: expected {first:?}, got {:?}", lines[0]);
        assert!(lines[1].starts_with(second), "{args:?}: expected {second:?}, got {:?}", lines[1]);
        assert!(!lines[0].contains("possible values: )"), "{args:?}: {}", lines[0]);
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
        for key in ["id", "pid", "state", "generation", "restarts", "connections", "sessions", "given_back"] {
            assert!(w.get(key).is_some(), "worker lacks {key}: {w}");
        }
    }
    let (code, table, _) = cli(&["status"]);
    assert_eq!(code, Some(0));
    assert!(table.contains("phase ready") && table.contains("2/2 workers ready"), "{table}");
    assert!(!table.contains("given back"), "no given-back line while no worker gave any back: {table}");
    // --control before the subcommand works too; an option of a run does not belong there.
    let out = Command::new(CLUSTERD).arg("--control").arg(&control).arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(CLUSTERD).args(["-w", "3", "status", "--control"]).arg(&control).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`workers` is an option of a run"));

    let (code, _, stderr) = cli(&["scale", "0"]);
    assert_eq!(code, Some(2), "an invalid argument is bad usage, like every other");
    assert!(stderr.starts_with("clusterd: invalid value '0' for '<WORKERS>': 0 is not in 1..=1024"), "{stderr}");
    let reply = control_request(&control, r#"{"command":"scale","workers":0}"#).unwrap();
    assert_eq!(reply["error"], "the pool size must be 1 to 1024, not 0", "the server checks too");

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

/// A port the kernel just gave out and took back: free for the next bind (port 0 cannot show
/// what a bare port or a host name binds).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Issue 15, item 3: `--listen 3000` listens on every interface (IPv4, and IPv6 where the host
/// has it, said at start), `--listen localhost:3000` on what the name resolves to.
#[test]
fn listen_takes_a_bare_port_and_a_host_name() {
    let port = free_port();
    let mut c =
        Builder::new().args(&["--workers", "1", "--listen", &port.to_string()]).worker_args(&["--serve"]).start();
    let status = c.wait_ready(1);
    // What the host offers decides, and clusterd says what it chose.
    let said = c.output.wait_contains(&format!("--listen {port}: all "));
    let both = format!("all interfaces, 0.0.0.0:{port} (IPv4) and [::]:{port} (IPv6)");
    let expected: Vec<String> = if said.contains(&both) {
        vec![format!("0.0.0.0:{port}"), format!("[::]:{port}")]
    } else {
        assert!(said.contains(&format!("all IPv4 interfaces, 0.0.0.0:{port} (this host has no IPv6)")), "{said}");
        vec![format!("0.0.0.0:{port}")]
    };
    assert_eq!(status["listen"], serde_json::json!(expected));
    assert_eq!(get(format!("127.0.0.1:{port}").parse().unwrap(), "/").code, 200);
    if expected.len() == 2 && std::net::TcpStream::connect(format!("[::1]:{port}")).is_ok() {
        assert_eq!(get(format!("[::1]:{port}").parse().unwrap(), "/").code, 200);
    }
    drop(c);

    let port = free_port();
    let mut c = Builder::new()
        .args(&["--workers", "1", "--listen", &format!("localhost:{port}")])
        .worker_args(&["--serve"])
        .start();
    let status = c.wait_ready(1);
    let resolved: Vec<String> = std::net::ToSocketAddrs::to_socket_addrs(&("localhost", port))
        .unwrap()
        .filter(|a| a.is_ipv4() || std::net::TcpListener::bind((a.ip(), 0)).is_ok())
        .map(|a| a.to_string())
        .collect();
    let listen: Vec<String> =
        status["listen"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();
    for addr in &resolved {
        assert!(listen.contains(addr), "{addr} in {listen:?}");
    }
    c.output.wait_contains(&format!("--listen localhost:{port}: "));
    assert_eq!(get(listen_addr(&status), "/").code, 200);
}
