//! Arbitrary bytes as a bearer token: none may verify, none may crash the verifier.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keystone::fuzz::token_verifier(data));
