//! `clusterd status|stop|reload|scale`: one request to a running clusterd's control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use super::proto::{ControlReply, ControlRequest};
use crate::cli::Command;

/// Runs a subcommand; the error says what went wrong (exit 1).
pub fn run(command: Command, control: &Path) -> anyhow::Result<()> {
    let (request, json) = match command {
        Command::Status { json, watch: Some(interval) } => return super::watch::run(control, interval, json),
        Command::Status { json, watch: None } => (ControlRequest::Status, json),
        Command::Stop => (ControlRequest::Stop, false),
        Command::Reload => (ControlRequest::Reload, false),
        Command::Scale { workers } => (ControlRequest::Scale { workers }, false),
        Command::Metrics => (ControlRequest::Metrics, false),
    };
    let reply = send(control, &request)?;
    if !reply.ok {
        bail!("{}", reply.error.unwrap_or_else(|| "refused, with no reason given".into()));
    }
    if let Some(text) = reply.metrics {
        print!("{text}");
        match reply.missed.unwrap_or(0) {
            0 => {}
            1 => eprintln!("clusterd: 1 worker did not answer in time (or answered garbage): left out"),
            n => eprintln!("clusterd: {n} workers did not answer in time (or answered garbage): left out"),
        }
        return Ok(());
    }
    match (reply.status, json) {
        (Some(status), true) => println!("{}", serde_json::to_string(&status)?),
        (Some(status), false) => print!("{}", status.to_table()),
        (None, _) => println!("{}", reply.message.as_deref().unwrap_or("ok")),
    }
    Ok(())
}

pub fn send(control: &Path, request: &ControlRequest) -> anyhow::Result<ControlReply> {
    let mut stream = UnixStream::connect(control)
        .with_context(|| format!("cannot reach clusterd at {} (is it running? pass --control)", control.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    stream.set_write_timeout(Some(Duration::from_secs(15)))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).context("no answer from clusterd")?;
    serde_json::from_str(&answer).with_context(|| format!("unreadable answer from clusterd: {answer:?}"))
}
