#![no_main]
//! See `clusterd_parsers::fuzzing::worker_metrics`; findings are replayed from `fuzz/regressions/worker_metrics/`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| clusterd_parsers::fuzzing::worker_metrics(data));
