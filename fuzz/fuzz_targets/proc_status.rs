#![no_main]
// The body is stasis_fuzz_harness's, also run on the seed corpus by `cargo test`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| stasis_fuzz_harness::procfs::status(data));
