//! Taking ownership of the inherited IPC fd: the SDK's only `unsafe`.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{SockType, getsockopt, sockopt};

use crate::error::Error;

/// Takes ownership of `fd` after checking that it is an open `SOCK_SEQPACKET` socket, and marks it
/// close-on-exec so that processes the worker spawns do not inherit it.
///
/// The caller must call this at most once per process for a given fd: the fd number comes from
/// the environment that clusterd set, and nothing else in the process should claim it.
pub(crate) fn take_ipc_fd(fd: RawFd) -> Result<OwnedFd, Error> {
    take_socket_fd(fd, SockType::SeqPacket)
}

/// As [`take_ipc_fd`], for a socket of type `expected` (the bus is a stream socket).
pub(crate) fn take_socket_fd(fd: RawFd, expected: SockType) -> Result<OwnedFd, Error> {
    // Check that the fd is open before claiming it, so that a bogus number never produces an
    // OwnedFd that would close somebody else's descriptor later.
    let flags = nix::fcntl::fcntl(
        // SAFETY: the borrow lives only for this call and the fd is not closed meanwhile.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .map_err(|errno| Error::BadIpcFd { fd, reason: format!("not an open fd ({errno})") })?;
    // SAFETY: the fd is open (checked above), the environment gives it to this process's SDK, and
    // `Worker::from_env` is the only code that takes it, once (guarded by a process-wide flag).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    match getsockopt(&owned, sockopt::SockType) {
        Ok(kind) if kind == expected => {}
        Ok(other) => {
            // Not ours to close: give the fd back untouched.
            std::mem::forget(owned);
            return Err(Error::BadIpcFd { fd, reason: format!("socket type is {other:?}, not {expected:?}") });
        }
        Err(errno) => {
            std::mem::forget(owned);
            return Err(Error::BadIpcFd { fd, reason: format!("not a socket ({errno})") });
        }
    }
    let cloexec = nix::fcntl::FdFlag::from_bits_truncate(flags) | nix::fcntl::FdFlag::FD_CLOEXEC;
    nix::fcntl::fcntl(&owned, nix::fcntl::FcntlArg::F_SETFD(cloexec))
        .map_err(|errno| Error::BadIpcFd { fd, reason: format!("cannot set close-on-exec ({errno})") })?;
    Ok(owned)
}
