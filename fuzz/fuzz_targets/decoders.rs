//! Arbitrary bytes into the request decoders and validators (see `keystone::fuzz::decoders`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keystone::fuzz::decoders(data));
