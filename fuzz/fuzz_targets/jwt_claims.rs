//! The JWT-claims reader: any text (a token from a file, the environment or a refresh answer) never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|token: &str| {
    let _ = issettled_proxy::token::jwt::claims(token);
});
