//! libFuzzer's entry for `nixmesh_fuzz::wire`; see that module for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixmesh_fuzz::wire::check(data));
