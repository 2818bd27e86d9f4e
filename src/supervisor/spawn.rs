//! Starting worker processes, and reaping every child: one registry, two sides.
//!
//! clusterd reaps every child itself (it is a subreaper, and may be PID 1), so workers are started
//! with `std::process::Command`, never `tokio::process` (whose own `wait` would race our
//! `waitpid(-1)`). The spawner and the reaper share one lock: the spawner holds it across `spawn`
//! and the registration of the pid, and the reaper holds it across its `waitpid` loop, so a worker
//! that dies at once is never reaped before its exit can be routed to its task, and std's own wait
//! on a failed `exec` never meets a child we already took.
//!
//! Workers are spawned from one dedicated thread that lives as long as clusterd: the kernel sends
//! the parent-death signal when the *thread* that forked exits, not the process.
//!
//! The child executes the program with its own `execve` (see `Exec`), so the error `spawn` returns
//! is the kernel's, which the dispatcher uses to tell a program that cannot be executed from
//! clusterd's own shortage of fds, memory or processes. Before that it joins the pool's cgroup
//! when the guard has one (`guard.rs`).

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, mpsc as std_mpsc};

use clusterd_worker::bus_protocol::BUS_FD;
use clusterd_worker::protocol::IPC_FD;
use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::{Notify, oneshot};

use super::guard::Guard;
use crate::worker_link::{SpawnSpec, Spawned};

/// Variables that belong to clusterd alone and never reach a worker (`CLUSTERD_BRIDGE` may hold
/// the Redis password).
const PRIVATE_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "CLUSTERD_BRIDGE",
];

/// pid → where its exit status goes.
type Registry = Arc<Mutex<HashMap<i32, oneshot::Sender<WaitStatus>>>>;

fn lock(registry: &Registry) -> MutexGuard<'_, HashMap<i32, oneshot::Sender<WaitStatus>>> {
    registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the child passes to `execve`, built in the parent: after the fork, the child of a
/// multi-threaded process may not allocate.
struct Exec {
    /// Where to look for the program, in order (one path when it has a slash, else each `PATH`
    /// directory's entry), as `execvp` searches.
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    argv_ptrs: Pointers,
    envp_ptrs: Pointers,
}

/// A null-terminated array of pointers into the `CString`s of the same [`Exec`].
struct Pointers(Vec<*const libc::c_char>);

// SAFETY: the pointers point into `CString`s owned by the same `Exec`, whose heap buffers never
// move or change while it lives; they are only read, by `execve` in the forked child.
unsafe impl Send for Pointers {}
// SAFETY: as for `Send`: shared read-only data.
unsafe impl Sync for Pointers {}

impl Exec {
    fn new(spec: &SpawnSpec) -> io::Result<Self> {
        let c = |s: &std::ffi::OsStr| {
            CString::new(s.as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in an argument"))
        };
        let program = spec.program.as_os_str();
        let candidates = if program.as_bytes().contains(&b'/') {
            vec![c(program)?]
        } else {
            // An unset PATH searches what glibc's execvp does; an empty entry is the current dir.
            let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
            let mut out = Vec::new();
            for dir in path.as_bytes().split(|&b| b == b':') {
                let dir = if dir.is_empty() { b".".as_slice() } else { dir };
                let mut full = dir.to_vec();
                full.push(b'/');
                full.extend_from_slice(program.as_bytes());
                out.push(c(std::ffi::OsStr::from_bytes(&full))?);
            }
            out
        };
        let argv = std::iter::once(program)
            .chain(spec.args.iter().map(OsString::as_os_str))
            .map(c)
            .collect::<io::Result<Vec<_>>>()?;
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| !PRIVATE_ENV.iter().any(|p| k == p) && !spec.env.iter().any(|(n, _)| k == n.as_str()))
            .collect();
        env.extend(spec.env.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))));
        let envp = env
            .iter()
            .map(|(k, v)| {
                let mut pair = k.clone();
                pair.push("=");
                pair.push(v);
                c(&pair)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let pointers = |strings: &[CString]| {
            Pointers(strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect())
        };
        let (argv_ptrs, envp_ptrs) = (pointers(&argv), pointers(&envp));
        Ok(Self { candidates, argv, envp, argv_ptrs, envp_ptrs })
    }

    /// Executes the program; returns only with the error of the failed `execve`, the way
    /// `execvp` reports a search (EACCES if a candidate was denied, else ENOENT), but never
    /// running the file through a shell. Async-signal-safe: no allocation.
    fn run(&self) -> io::Error {
        let _ = (&self.argv, &self.envp); // owned here so that the pointers stay valid
        let mut denied = false;
        for path in &self.candidates {
            // SAFETY: a NUL-terminated path, and null-terminated arrays of pointers to
            // NUL-terminated strings that `self` owns.
            unsafe { libc::execve(path.as_ptr(), self.argv_ptrs.0.as_ptr(), self.envp_ptrs.0.as_ptr()) };
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::ENOENT | libc::ENOTDIR) if self.candidates.len() > 1 => {}
                Some(libc::EACCES) if self.candidates.len() > 1 => denied = true,
                _ => return error,
            }
        }
        io::Error::from_raw_os_error(if denied { libc::EACCES } else { libc::ENOENT })
    }
}

struct Job {
    spec: SpawnSpec,
    reply: oneshot::Sender<io::Result<Spawned>>,
}

/// The handle to the spawner thread.
#[derive(Clone)]
pub struct Spawner {
    jobs: std_mpsc::Sender<Job>,
    guard: Arc<Guard>,
}

impl Spawner {
    /// Starts a process; fails with the OS error when `exec` fails (missing program, no permission).
    pub async fn spawn(&self, spec: SpawnSpec) -> io::Result<Spawned> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { spec, reply }).map_err(|_| io::Error::other("the spawner thread is gone"))?;
        answer.await.map_err(|_| io::Error::other("the spawner thread dropped the request"))?
    }

    /// The worker led process group `pid`, which has now been swept: the guard may forget it.
    pub fn swept(&self, pid: Pid) {
        self.guard.swept(pid);
    }
}

/// Starts the spawner thread and returns its handle and the reaper. Every worker joins what
/// `guard` keeps from outliving clusterd.
pub fn start(guard: Arc<Guard>) -> io::Result<(Spawner, Reaper)> {
    let registry: Registry = Arc::default();
    let (jobs, queue) = std_mpsc::channel::<Job>();
    let thread_registry = Arc::clone(&registry);
    let thread_guard = Arc::clone(&guard);
    std::thread::Builder::new().name("clusterd-spawner".into()).spawn(move || {
        for job in queue {
            let result = spawn_one(&thread_registry, &thread_guard, job.spec);
            let _ = job.reply.send(result);
        }
    })?;
    let guard_pid = guard.pid();
    Ok((Spawner { jobs, guard }, Reaper { registry, wake: Arc::new(Notify::new()), guard_pid }))
}

fn spawn_one(registry: &Registry, guard: &Guard, spec: SpawnSpec) -> io::Result<Spawned> {
    // `std` would exec with `execvp`, whose libc runs a file that is neither ELF nor `#!` through
    // `/bin/sh` instead of failing with ENOEXEC: a stray data file would become a shell script
    // that exits 127 in a crash loop. So the child calls `execve` itself (from `pre_exec`, after
    // std has set up stdio), and the kernel's own error comes back from `spawn`.
    let exec = Exec::new(&spec)?;
    let mut command = Command::new(&spec.program);
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let ipc = spec.ipc.as_raw_fd();
    let bus = spec.bus.as_ref().map_or(-1, |fd| fd.as_raw_fd());
    let parent = nix::unistd::getpid().as_raw();
    let cgroup_procs = guard.procs_fd().unwrap_or(-1);
    // SAFETY: the closure runs in the forked child before exec and makes only async-signal-safe
    // calls (setpgid, prctl, getppid, raise, write, fcntl, dup2, sigemptyset, pthread_sigmask,
    // execve);
    // it allocates nothing and touches no lock (`exec` was built in the parent). The IPC fd goes
    // to 3 before the bus fd goes to 4: if the IPC fd was 4, it is no longer needed when 4 is
    // overwritten.
    unsafe {
        command.pre_exec(move || {
            // Its own process group: clusterd signals the whole worker tree, and a Ctrl-C on
            // clusterd's terminal reaches clusterd only, which then drains in order.
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // No worker outlives a SIGKILLed clusterd.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // clusterd died between fork and prctl: the signal will never come.
                libc::raise(libc::SIGKILL);
            }
            if cgroup_procs >= 0 {
                // Into the pool's cgroup before the program runs, so that everything it starts is
                // there too. Best effort: clusterd writes the pid again after the spawn, and says so
                // if that fails.
                libc::write(cgroup_procs, b"0".as_ptr().cast(), 1);
            }
            // The bus socket must not sit where the IPC socket goes: move it away first.
            let mut bus = bus;
            if bus == IPC_FD {
                bus = libc::fcntl(bus, libc::F_DUPFD_CLOEXEC, 10);
                if bus < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (fd, target) in [(ipc, IPC_FD), (bus, BUS_FD)] {
                if fd < 0 {
                    continue;
                }
                if fd == target {
                    // dup2 onto itself would keep close-on-exec: clear it instead.
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Err(exec.run())
        });
    }
    let mut registered = lock(registry);
    let mut child = command.spawn()?;
    let pid = Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
    let (tx, exit) = oneshot::channel();
    registered.insert(pid.as_raw(), tx);
    drop(registered);
    guard.started(pid);
    let stdout = child.stdout.take().map(OwnedFd::from).ok_or_else(|| io::Error::other("no stdout pipe"))?;
    let stderr = child.stderr.take().map(OwnedFd::from).ok_or_else(|| io::Error::other("no stderr pipe"))?;
    // `child` is dropped without waiting: the reaper owns the waiting. The worker's end of the
    // IPC socket is dropped (closed) here with `spec`.
    Ok(Spawned { pid, stdout, stderr, exit })
}

/// Reaps every child of clusterd: workers (routing their status to their task) and orphans that
/// were reparented to clusterd as subreaper or PID 1.
#[derive(Clone)]
pub struct Reaper {
    registry: Registry,
    wake: Arc<Notify>,
    /// The pool guard, a child of clusterd that must live as long as clusterd.
    guard_pid: Option<Pid>,
}

impl Reaper {
    /// Called from the signal task on SIGCHLD; coalesces.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs forever: reaps on every wake.
    pub async fn run(self) {
        loop {
            self.reap_all();
            self.wake.notified().await;
        }
    }

    /// Reaps every child that has ended; returns how many.
    pub fn reap_all(&self) -> usize {
        let mut registered = lock(&self.registry);
        let mut reaped = 0;
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return reaped,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    reaped += 1;
                    match registered.remove(&pid.as_raw()) {
                        Some(tx) => {
                            let _ = tx.send(status);
                        }
                        None if Some(pid) == self.guard_pid => tracing::warn!(
                            pid = pid.as_raw(),
                            ?status,
                            "the pool guard ended: what a worker starts can now outlive a SIGKILLed clusterd"
                        ),
                        None => tracing::debug!(pid = pid.as_raw(), ?status, "reaped an orphan"),
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    tracing::warn!(%errno, "waitpid failed");
                    return reaped;
                }
            }
        }
    }
}
