//! Fuzz target: `inputs::host_check` (see `fuzz/inputs.rs`) must never panic, whatever the bytes.
#![no_main]

#[path = "../inputs.rs"]
mod inputs;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = inputs::host_check(data);
});
