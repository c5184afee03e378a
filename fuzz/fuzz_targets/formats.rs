//! libFuzzer's entry for `nixmesh_fuzz::formats`; see that module for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixmesh_fuzz::formats::check(data));
