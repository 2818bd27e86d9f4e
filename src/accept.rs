//! The accept path's own system calls, the only `unsafe` of the listeners.
//!
//! Tokio's `accept` registers every accepted socket with epoll (and the handoff deregisters it),
//! and its first read waits for the reactor's event even when the request is already there
//! (`TCP_DEFER_ACCEPT` makes it so for most connections). Calling `accept4` and `recv` directly
//! lets the listener route such a connection with two system calls and no registration; only a
//! connection whose first bytes have not arrived is registered with the reactor.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::socket::{SockaddrLike, SockaddrStorage};

/// Accepts one connection, non-blocking (as the reactor and the workers want it) and
/// close-on-exec, with its peer's address from the same call. `WouldBlock` when none is waiting.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<(OwnedFd, Option<SockaddrStorage>)> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `listener` is an open fd for the call's duration; `storage` is writable for `len`
    // bytes, and the kernel writes at most `len` bytes to it and the address's length to `len`.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            storage.as_mut_ptr().cast(),
            &raw mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the kernel initialised `len` bytes of `storage` (zeroed beyond), a socket address of
    // the family it names; `from_raw` checks the family and the length against it.
    let peer = unsafe { SockaddrStorage::from_raw(storage.as_ptr().cast(), Some(len)) };
    Ok((fd, peer))
}

/// Reads what has already arrived on `fd` into the spare capacity of `buf` (no zeroing), at most
/// `want` bytes, without waiting: `WouldBlock` when nothing has.
pub fn recv_now(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
    buf.reserve_exact(want);
    let spare = buf.spare_capacity_mut();
    let room = want.min(spare.len());
    // SAFETY: `spare` is writable memory of at least `room` bytes owned by `buf`, and `fd` is open
    // for the call's duration.
    let n = unsafe { libc::recv(fd.as_raw_fd(), spare.as_mut_ptr().cast(), room, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = usize::try_from(n).expect("recv returns a length or -1");
    // SAFETY: the kernel wrote `n` ≤ `room` bytes into the spare capacity, right after the
    // initialised part.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Registers a listening socket with the reactor, for readability only.
pub fn watch(listener: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` owns the fd: it stays open, and is not replaced, until the `AsyncFd`
    // deregisters it and closes it on drop.
    let registered =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE) };
    registered.map_err(|refused| refused.into_parts().1)
}
