//! clusterd's preload for Node.js workers (`--node-preload`, on by default): `preload.cjs`, shipped
//! inside the binary, written at start to a private directory (mode 0700, the file 0600, removed
//! when clusterd exits) and given to every Node worker as `--require <file>` in `NODE_OPTIONS`
//! (after whatever `NODE_OPTIONS` the operator set).
//!
//! Why: Node's `cluster` has no way for a draining worker to give a kept-alive connection back,
//! and Node 19+ closes idle ones at once when its server closes, under their clients' next
//! requests. The preload, told of the drain by clusterd before Node's `disconnect`
//! (`NODE_CLUSTERD_DRAIN`), gives them back with `process.send(message, handle)` (see
//! `link.rs`), and ends upgraded sockets (WebSockets) and long-polling Engine.IO sessions one by
//! one over the spread. Inert until then, except for remembering the sockets of `http.Server`s
//! and the sessions of engine.io's servers.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The preload's source.
pub const SOURCE: &str = include_str!("preload.cjs");

/// The preload could not be written: Node workers run without it (logged once).
#[derive(Debug, thiserror::Error)]
#[error("cannot write the Node preload in {dir}: {source}")]
pub struct PreloadError {
    dir: PathBuf,
    source: std::io::Error,
}

/// The written preload; its directory is removed when this is dropped.
#[derive(Debug)]
pub struct Preload {
    _dir: tempfile::TempDir,
    /// `NODE_OPTIONS` for the workers: the operator's, then `--require <file>`.
    node_options: OsString,
}

impl Preload {
    /// Writes the preload in `$XDG_RUNTIME_DIR`, else the temp dir.
    pub fn write() -> Result<Self, PreloadError> {
        let parent = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let error = |source| PreloadError { dir: parent.clone(), source };
        // A random name, created 0700 (tempfile's default follows the umask).
        let dir = tempfile::Builder::new()
            .prefix("clusterd-node-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(&parent)
            .map_err(error)?;
        let path = dir.path().join("preload.cjs");
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(error)?;
        file.write_all(SOURCE.as_bytes()).map_err(error)?;
        let node_options = node_options(std::env::var_os("NODE_OPTIONS"), &path);
        Ok(Self { _dir: dir, node_options })
    }

    /// `NODE_OPTIONS` for every Node worker.
    pub fn node_options(&self) -> &OsString {
        &self.node_options
    }
}

/// The operator's `NODE_OPTIONS` (if any), then `--require "<path>"`, quoted as Node reads
/// `NODE_OPTIONS` (double quotes, backslash escapes), so that a path with spaces works.
fn node_options(operator: Option<OsString>, path: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut value = operator.map(OsString::into_vec).unwrap_or_default();
    if !value.is_empty() {
        value.push(b' ');
    }
    value.extend_from_slice(b"--require \"");
    for &byte in path.as_os_str().as_bytes() {
        if byte == b'"' || byte == b'\\' {
            value.push(b'\\');
        }
        value.push(byte);
    }
    value.push(b'"');
    OsString::from_vec(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_node_options_come_first_and_the_path_is_quoted() {
        let path = Path::new("/run/user/1000/clusterd-node-x/pre \"load\".cjs");
        assert_eq!(
            node_options(Some("--max-old-space-size=512".into()), path),
            OsString::from(
                "--max-old-space-size=512 --require \"/run/user/1000/clusterd-node-x/pre \\\"load\\\".cjs\""
            )
        );
        assert_eq!(node_options(None, Path::new("/tmp/p.cjs")), OsString::from("--require \"/tmp/p.cjs\""));
    }

    #[test]
    fn the_preload_is_private_and_goes_with_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let preload = Preload::write().expect("written");
        let dir = preload._dir.path().to_owned();
        let file = dir.join("preload.cjs");
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), SOURCE);
        drop(preload);
        assert!(!dir.exists());
    }
}
