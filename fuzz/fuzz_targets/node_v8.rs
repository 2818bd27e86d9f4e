#![no_main]
//! See `clusterd_parsers::fuzzing::node_v8`; findings are replayed from `fuzz/regressions/node_v8/`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| clusterd_parsers::fuzzing::node_v8(data));
