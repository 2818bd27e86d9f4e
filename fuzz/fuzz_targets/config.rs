#![no_main]
//! See `clusterd_parsers::fuzzing::config`; findings are replayed from `fuzz/regressions/config/`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| clusterd_parsers::fuzzing::config(data));
