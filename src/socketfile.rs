//! Unix socket files that clusterd creates (its control socket, `unix:` listeners): a file left by
//! a process that died is replaced, a live one is never taken over, and anything that is not a
//! socket is never deleted.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// Why a socket file cannot be created at a path.
#[derive(Debug)]
pub enum Occupied {
    /// A running process answers on it.
    InUse,
    /// The path is something else than a socket.
    NotASocket,
    /// The check itself failed.
    Io(io::Error),
}

/// Makes `path` free for a new socket: removes a socket file nobody answers on (connecting is
/// refused). Returns whether it removed one.
pub fn clear_stale(path: &Path) -> Result<bool, Occupied> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => Err(Occupied::NotASocket),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Err(Occupied::InUse),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map(|()| true).map_err(Occupied::Io)
            }
            Err(e) => Err(Occupied::Io(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Occupied::Io(e)),
    }
}
