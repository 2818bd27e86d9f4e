#![no_main]
//! See `clusterd_parsers::fuzzing::sniff`; findings are replayed from `fuzz/regressions/sniff/`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| clusterd_parsers::fuzzing::sniff(data));
