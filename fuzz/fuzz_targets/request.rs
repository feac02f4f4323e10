//! Request bodies: the job spec (JSON), `/classify`'s JSON body (base64 images), and both
//! endpoints' `multipart/form-data` readers. The first byte picks which.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    petal_fuzz_support::request(data);
});

#[path = "support.rs"]
mod petal_fuzz_support;
