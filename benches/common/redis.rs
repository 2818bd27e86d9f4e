//! A private `redis-server` for the benches that need one (`bridge`): a fresh instance on a free
//! loopback port in a temporary directory, stopped on drop; and `/proc` figures of it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `redis-server` may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Redis {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts one (with persistence off); exits the bench with a message when `redis-server` is
    /// missing (scripts/install-redis installs it).
    pub fn start() -> Self {
        let Some(server) = super::find_in_path("redis-server") else {
            eprintln!("error: `redis-server` is not in PATH; run scripts/install-redis");
            std::process::exit(1);
        };
        let dir = tempfile::Builder::new().prefix("clusterd-bench-redis-").tempdir().expect("a temporary directory");
        let port = super::free_port();
        let mut command = Command::new(server);
        command
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        super::die_with_bench(&mut command);
        let mut child = command.spawn().expect("cannot start redis-server");
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                panic!("redis-server did not accept connections on port {port} within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Self { port, child, _dir: dir }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid out of range")
    }

    /// The clients connected now (`CLIENT LIST`), this query's own connection not counted.
    pub fn clients(&self) -> usize {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "CLIENT", "LIST"])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.contains("cmd=client")).count()
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
