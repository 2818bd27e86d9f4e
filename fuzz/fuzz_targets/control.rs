#![no_main]
//! See `clusterd_parsers::fuzzing::control`; findings are replayed from `fuzz/regressions/control/`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| clusterd_parsers::fuzzing::control(data));
