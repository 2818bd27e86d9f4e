//! The pool guard: no process of the pool outlives clusterd, however clusterd ends.
//!
//! Workers die with clusterd by their parent-death signal, but what a worker started does not.
//! So at start clusterd forks a small *guard* process (while it is still single-threaded), which
//! holds the read end of a pipe whose only write end is clusterd's. When clusterd ends, by any
//! exit or by `SIGKILL`, the kernel closes that end, the guard reads EOF, kills what is left of
//! the pool, and exits. The guard leads its own process group, ignores `TERM`/`INT`/`HUP`/`QUIT`,
//! and keeps no fd of clusterd's but the pipe and stderr.
//!
//! What the guard kills depends on what the OS allows, chosen once at start:
//! - **cgroup** (cgroup v2 with `cgroup.kill`, Linux 5.14, and a cgroup clusterd may create below
//!   its own: root, or a delegated subtree such as systemd's `Delegate=yes`): every worker joins
//!   `<clusterd's cgroup>/clusterd.<pid>.pool` before it executes its program, so everything it
//!   starts is there too, whatever process group or session it makes. The guard writes
//!   `cgroup.kill` and removes the cgroup.
//! - **process groups** otherwise: clusterd tells the guard each worker's process group as it
//!   starts and after it was swept; the guard kills the groups still known. A descendant that
//!   left its worker's group (`setsid`, `setpgid`) is not covered.
//!
//! ```text
//!   clusterd ──pipe (pgids, or nothing)──► guard ──EOF──► cgroup.kill, or SIGKILL to each group
//!      │ fork+exec (pre_exec: join the cgroup)
//!      ▼
//!   worker ──► its children (in the cgroup / in the worker's group)
//! ```

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigHandler, Signal, killpg, signal};
use nix::unistd::{ForkResult, Pid, fork, pipe2};

/// How long the guard waits for a killed cgroup to empty before it removes it.
const CGROUP_EMPTY_WAIT: Duration = Duration::from_secs(5);

/// Which mechanism keeps the pool from outliving clusterd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    /// The pool's own cgroup, killed with `cgroup.kill`.
    Cgroup(PathBuf),
    /// The workers' process groups; `why` says why no cgroup could be used.
    ProcessGroups { why: String },
    /// No guard process could be started: workers still die by their parent-death signal.
    ParentDeathOnly { why: String },
}

/// clusterd's side of the guard.
#[derive(Debug)]
pub struct Guard {
    mechanism: Mechanism,
    /// `cgroup.procs` of the pool's cgroup, open for writing (cgroup mode).
    procs: Option<File>,
    /// The pipe to the guard (process-group mode); non-blocking, so clusterd never waits on it.
    tell: Option<File>,
    /// The write end of the pipe in any mode: while it is open, the guard waits.
    _alive: Option<OwnedFd>,
    /// The guard process, a child of clusterd.
    pid: Option<Pid>,
}

impl Guard {
    /// Chooses the mechanism and forks the guard. Call while clusterd is single-threaded: the
    /// guard is a fork of clusterd that runs on without `exec`.
    pub fn start() -> Self {
        let threads = std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count);
        if threads != 1 {
            // A fork that runs on without exec is only sound in a single-threaded process.
            let why = format!("clusterd has {threads} threads at start, not 1: no guard forked");
            return Self::unguarded(why);
        }
        let cgroup = create_cgroup(std::process::id());
        let (read, write) = match pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(ends) => ends,
            Err(errno) => {
                let why = format!("cannot create its pipe: {errno}");
                if let Ok(cg) = &cgroup {
                    let _ = std::fs::remove_dir(&cg.dir);
                }
                return Self::unguarded(why);
            }
        };
        // SAFETY: clusterd is single-threaded here (no runtime, no spawner thread yet), so the
        // child may run ordinary Rust code: no other thread can hold a lock or be mid-allocation.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                drop(write);
                let kill = cgroup.ok().map(|cg| (cg.kill, cg.dir));
                watch(read, kill)
            }
            Ok(ForkResult::Parent { child }) => {
                drop(read);
                let _ = nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
                match cgroup {
                    Ok(cg) => Self {
                        mechanism: Mechanism::Cgroup(cg.dir),
                        procs: Some(cg.procs),
                        tell: None,
                        _alive: Some(write),
                        pid: Some(child),
                    },
                    Err(why) => Self {
                        mechanism: Mechanism::ProcessGroups { why },
                        procs: None,
                        tell: write.try_clone().ok().map(File::from),
                        _alive: Some(write),
                        pid: Some(child),
                    },
                }
            }
            Err(errno) => {
                if let Ok(cg) = &cgroup {
                    let _ = std::fs::remove_dir(&cg.dir);
                }
                let why = format!("cannot fork the guard: {errno}");
                Self::unguarded(why)
            }
        }
    }

    /// No guard: workers die with clusterd by their parent-death signal only.
    fn unguarded(why: String) -> Self {
        Self { mechanism: Mechanism::ParentDeathOnly { why }, procs: None, tell: None, _alive: None, pid: None }
    }

    pub fn mechanism(&self) -> &Mechanism {
        &self.mechanism
    }

    /// The guard process, if one runs: the reaper reports its end, which leaves the pool unguarded.
    pub fn pid(&self) -> Option<Pid> {
        self.pid
    }

    /// The fd of the pool's `cgroup.procs`, for a new worker to join it in `pre_exec` (by writing
    /// `0`, which moves the writer) before it executes its program.
    pub fn procs_fd(&self) -> Option<RawFd> {
        self.procs.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// A worker was started (as the leader of process group `pid`).
    pub fn started(&self, pid: Pid) {
        if let Some(mut procs) = self.procs.as_ref() {
            // Already done by the worker itself unless that failed; a second write is a no-op.
            if let Err(error) = procs.write_all(pid.as_raw().to_string().as_bytes())
                && error.raw_os_error() != Some(libc::ESRCH)
            {
                tracing::warn!(pid = pid.as_raw(), %error, "a worker could not join the pool's cgroup");
            }
        }
        self.tell(pid.as_raw());
    }

    /// A worker's process group was swept after the worker was reaped: nothing to kill there.
    pub fn swept(&self, pid: Pid) {
        self.tell(-pid.as_raw());
    }

    fn tell(&self, record: i32) {
        if let Some(mut pipe) = self.tell.as_ref() {
            // 4 bytes are written whole or not at all (under PIPE_BUF); a full pipe means the
            // guard is stuck, and clusterd does not wait for it.
            let _ = pipe.write(&record.to_ne_bytes());
        }
    }

    /// At the end of a run, every worker reaped: removes the pool's cgroup if it is empty (the
    /// guard does it too, unless it was killed).
    pub fn finish(&self) {
        if let Mechanism::Cgroup(dir) = &self.mechanism {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// The one line said at start: what is active, and what is not covered.
    pub fn describe(&self) -> String {
        match &self.mechanism {
            Mechanism::Cgroup(dir) => format!(
                "pool cleanup: cgroup {} (cgroup.kill): no process of the pool outlives clusterd",
                dir.display()
            ),
            Mechanism::ProcessGroups { why } => format!(
                "pool cleanup: the workers' process groups, killed by a guard process when clusterd ends \
                 (no cgroup: {why}); a process that leaves its worker's process group (setsid, setpgid) \
                 can outlive a SIGKILLed clusterd"
            ),
            Mechanism::ParentDeathOnly { why } => format!(
                "pool cleanup: parent-death signal only ({why}); what a worker starts can outlive a SIGKILLed clusterd"
            ),
        }
    }
}

/// The pool's cgroup, created below clusterd's own.
struct Cgroup {
    dir: PathBuf,
    procs: File,
    kill: File,
}

/// Creates `<clusterd's cgroup>/clusterd.<pid>.pool` in the cgroup v2 hierarchy, or says why not.
fn create_cgroup(pid: u32) -> Result<Cgroup, String> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let mount = cgroup2_mount(&mountinfo).ok_or("no cgroup v2 hierarchy is mounted")?;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let own = cgroups.lines().find_map(|l| l.strip_prefix("0::")).ok_or("clusterd is in no cgroup v2 cgroup")?;
    let parent = mount.join(own.trim_start_matches('/'));
    let dir = parent.join(format!("clusterd.{pid}.pool"));
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let open =
        |name: &str| std::fs::OpenOptions::new().write(true).open(dir.join(name)).map_err(|e| format!("{name}: {e}"));
    match (open("cgroup.procs"), open("cgroup.kill")) {
        (Ok(procs), Ok(kill)) => Ok(Cgroup { dir, procs, kill }),
        (Err(why), _) | (_, Err(why)) => {
            let _ = std::fs::remove_dir(&dir);
            Err(format!("{} has no usable {why} (cgroup.kill needs Linux 5.14)", dir.display()))
        }
    }
}

/// The mount point of the cgroup v2 hierarchy, from `/proc/self/mountinfo`.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        mount.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// The guard's life: wait for clusterd to end, kill what is left of the pool, exit. Never returns.
fn watch(read: OwnedFd, kill: Option<(File, PathBuf)>) -> ! {
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGPIPE] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    let _ = nix::sys::prctl::set_name(c"clusterd-guard");
    let mut keep = vec![read.as_raw_fd(), 2];
    if let Some((file, _)) = &kill {
        keep.push(file.as_raw_fd());
    }
    close_all_but(&keep);
    let mut pipe = File::from(read);
    let mut groups: HashSet<i32> = HashSet::new();
    let mut buf = [0u8; 4096];
    let mut pending = Vec::new();
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                let whole = pending.len() / 4 * 4;
                for record in pending[..whole].chunks_exact(4) {
                    let value = i32::from_ne_bytes([record[0], record[1], record[2], record[3]]);
                    if value > 0 {
                        groups.insert(value);
                    } else {
                        groups.remove(&-value);
                    }
                }
                pending.drain(..whole);
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    match kill {
        Some((file, dir)) => kill_cgroup(file, &dir),
        None => {
            for group in &groups {
                if killpg(Pid::from_raw(*group), Signal::SIGKILL).is_ok() {
                    eprintln!("clusterd-guard: clusterd is gone; killed what was left of process group {group}");
                }
            }
        }
    }
    // SAFETY: ends this process at once, without running clusterd's exit handlers (this is a fork).
    unsafe { libc::_exit(0) }
}

fn kill_cgroup(mut kill: File, dir: &Path) {
    let events = dir.join("cgroup.events");
    let populated = || std::fs::read_to_string(&events).map(|t| t.lines().any(|l| l == "populated 1")).unwrap_or(false);
    if populated() {
        eprintln!("clusterd-guard: clusterd is gone; killing what is left in {}", dir.display());
        let _ = kill.write_all(b"1");
        let deadline = Instant::now() + CGROUP_EMPTY_WAIT;
        while populated() && Instant::now() < deadline {
            // Polls the kernel's own count: nothing else to wait on in this process.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    drop(kill);
    let _ = std::fs::remove_dir(dir);
}

/// Closes every fd of this process except `keep`.
fn close_all_but(keep: &[RawFd]) {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<RawFd> = entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    for fd in fds.into_iter().filter(|fd| !keep.contains(fd)) {
        // A raw close: the number of the read_dir handle itself, in the list, is closed already
        // (EBADF, ignored), and nothing in this process uses the others again.
        let _ = nix::unistd::close(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_in_hybrid_and_unified_layouts() {
        let hybrid = "31 1 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                      42 31 0:39 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory";
        assert_eq!(cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "30 24 0:27 / /sys/fs/cgroup rw,nosuid,nodev shared:4 - cgroup2 cgroup2 rw,nsdelegate";
        assert_eq!(cgroup2_mount(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount("42 31 0:39 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory"), None);
    }
}
