#![no_main]
//! See `clusterd_parsers::fuzzing::metrics_head`; findings are replayed from
//! `fuzz/regressions/metrics_head/`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| clusterd_parsers::fuzzing::metrics_head(data));
