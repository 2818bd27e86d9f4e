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

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, mpsc as std_mpsc};

use clusterd_worker::bus_protocol::BUS_FD;
use clusterd_worker::protocol::IPC_FD;
use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::{Notify, oneshot};

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

/// What to start.
pub struct SpawnSpec {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    /// The worker's end of the IPC socket; it becomes fd 3 in the worker and is closed here.
    pub ipc: OwnedFd,
    /// The worker's end of the bus socket, if it has one; it becomes fd 4 in the worker and is
    /// closed here.
    pub bus: Option<OwnedFd>,
}

/// A started worker process.
pub struct Spawned {
    pub pid: Pid,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Resolves with the status once the reaper has reaped the process.
    pub exit: oneshot::Receiver<WaitStatus>,
}

struct Job {
    spec: SpawnSpec,
    reply: oneshot::Sender<io::Result<Spawned>>,
}

/// The handle to the spawner thread.
#[derive(Clone)]
pub struct Spawner {
    jobs: std_mpsc::Sender<Job>,
}

impl Spawner {
    /// Starts a process; fails with the OS error when `exec` fails (missing program, no permission).
    pub async fn spawn(&self, spec: SpawnSpec) -> io::Result<Spawned> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { spec, reply }).map_err(|_| io::Error::other("the spawner thread is gone"))?;
        answer.await.map_err(|_| io::Error::other("the spawner thread dropped the request"))?
    }
}

/// Starts the spawner thread and returns its handle and the reaper.
pub fn start() -> io::Result<(Spawner, Reaper)> {
    let registry: Registry = Arc::default();
    let (jobs, queue) = std_mpsc::channel::<Job>();
    let thread_registry = Arc::clone(&registry);
    std::thread::Builder::new().name("clusterd-spawner".into()).spawn(move || {
        for job in queue {
            let result = spawn_one(&thread_registry, job.spec);
            let _ = job.reply.send(result);
        }
    })?;
    Ok((Spawner { jobs }, Reaper { registry, wake: Arc::new(Notify::new()) }))
}

fn spawn_one(registry: &Registry, spec: SpawnSpec) -> io::Result<Spawned> {
    let mut command = Command::new(&spec.program);
    command.args(&spec.args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for var in PRIVATE_ENV {
        command.env_remove(var);
    }
    command.envs(spec.env.iter().map(|(k, v)| (k, v)));
    let ipc = spec.ipc.as_raw_fd();
    let bus = spec.bus.as_ref().map_or(-1, |fd| fd.as_raw_fd());
    let parent = nix::unistd::getpid().as_raw();
    // SAFETY: the closure runs in the forked child before exec and makes only async-signal-safe
    // calls (setpgid, prctl, getppid, raise, fcntl, dup2, sigemptyset, pthread_sigmask); it
    // allocates nothing and touches no lock. The IPC fd goes to 3 before the bus fd goes to 4:
    // if the IPC fd was 4, it is no longer needed when 4 is overwritten.
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
            Ok(())
        });
    }
    let mut registered = lock(registry);
    let mut child = command.spawn()?;
    let pid = Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
    let (tx, exit) = oneshot::channel();
    registered.insert(pid.as_raw(), tx);
    drop(registered);
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
