#![no_main]
//! See `clusterd_parsers::fuzzing::node_json`; findings are replayed from `fuzz/regressions/node_json/`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| clusterd_parsers::fuzzing::node_json(data));
