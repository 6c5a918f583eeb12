#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fastlayers_fuzz::checks::pool(data));
