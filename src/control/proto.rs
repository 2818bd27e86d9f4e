//! The control socket's wire format: one JSON object per line each way.
//!
//! Request: `{"command":"status"}`, `{"command":"stop"}`, `{"command":"reload"}`,
//! `{"command":"scale","workers":4}`, `{"command":"metrics"}`. Reply: `{"ok":true,"status":{...}}` or
//! `{"ok":true}` or `{"ok":true,"message":"reloading to generation 2"}` or
//! `{"ok":true,"metrics":"<exposition text>","missed":0}` or `{"ok":false,"error":"..."}`.

use serde::{Deserialize, Serialize};

use crate::status::Status;

/// The longest request line accepted, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase", deny_unknown_fields)]
pub enum ControlRequest {
    Status,
    Stop,
    Reload,
    Scale {
        workers: u32,
    },
    /// The workers' own metrics, gathered now.
    Metrics,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlReply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What an accepted request started, for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The workers' metrics (text format 0.0.4), for `metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Workers asked for their metrics that did not answer in time (or answered garbage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<u32>,
}

impl ControlReply {
    pub fn ok() -> Self {
        Self { ok: true, status: None, error: None, message: None, metrics: None, missed: None }
    }
    pub fn message(message: String) -> Self {
        Self { message: Some(message), ..Self::ok() }
    }
    pub fn status(status: Status) -> Self {
        Self { status: Some(status), ..Self::ok() }
    }
    pub fn metrics(text: String, missed: u32) -> Self {
        Self { metrics: Some(text), missed: Some(missed), ..Self::ok() }
    }
    pub fn error(message: impl Into<String>) -> Self {
        Self { ok: false, error: Some(message.into()), ..Self::ok() }
    }
}
