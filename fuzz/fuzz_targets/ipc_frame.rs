#![no_main]
//! See `clusterd_parsers::fuzzing::ipc_frame`; findings are replayed from `fuzz/regressions/ipc_frame/`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| clusterd_parsers::fuzzing::ipc_frame(data));
