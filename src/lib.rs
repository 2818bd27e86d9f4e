//! Not an API: the pure parsers of the `clusterd` binary, compiled once more as a small library so
//! that the fuzz targets (`fuzz/`) and the replay of what they found (`tests/fuzz_regressions.rs`)
//! can call them. The binary declares these modules itself and does not use this library. A module
//! listed here must compile on its own with the others listed here (no sockets, no runtime).

#![doc(hidden)]

pub mod bridge {
    pub mod channels;
    pub mod codec;
    pub mod options;
    pub mod status;
    pub use status::BridgeStatus;
}
pub mod cli;
pub mod config;
pub mod duration;
pub mod fuzzing;
pub mod sniff;
pub mod status;
pub mod values;

pub mod control {
    pub mod proto;
}

pub mod metrics {
    pub mod exposition;
    pub mod head;
    pub mod prom_client;
}

pub mod node {
    pub mod frame;
    pub mod json;
    pub mod v8;
    pub mod value;
}
