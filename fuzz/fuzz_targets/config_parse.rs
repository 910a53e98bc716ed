//! Fuzz target: `legate::config::parse` must never panic, and a rejection must say why.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Config files are text; non-UTF-8 bytes are rejected when the file is read.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(errors) = legate::config::parse(text) {
            assert!(
                !errors.0.is_empty(),
                "a rejected config must report an error"
            );
        }
    }
});
