#![no_main]
//! See `clusterd_parsers::fuzzing::bus_frame`; findings are replayed from `fuzz/regressions/bus_frame/`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| clusterd_parsers::fuzzing::bus_frame(data));
