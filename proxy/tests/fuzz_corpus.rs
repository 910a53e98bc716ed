//! Replays the fuzz seed corpora (`fuzz/corpus/<target>/`) on stable, through the same input
//! readers the fuzz targets use (`fuzz/inputs.rs`): no seed panics, every `valid-*` seed is
//! accepted and every `broken-*` seed refused.

#![allow(clippy::unwrap_used)]

use std::path::Path;

#[path = "../../fuzz/inputs.rs"]
mod inputs;

/// Every seed of `target`: (file name, bytes).
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut seeds: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "{} holds no seeds", dir.display());
    seeds
}

/// Replays `target`'s seeds through `read`, holding each to its name's promise.
fn replay(target: &str, read: fn(&[u8]) -> Result<(), String>) {
    for (name, data) in seeds(target) {
        let result = read(&data);
        if name.starts_with("valid-") {
            assert!(result.is_ok(), "{target}/{name}: {result:?}");
        } else if name.starts_with("broken-") {
            assert!(result.is_err(), "{target}/{name} was accepted");
        }
    }
}

#[test]
fn config_seeds_never_panic() {
    for (name, data) in seeds("config_parse") {
        // The fuzz target skips non-UTF-8 input; so does the replay.
        if let Ok(text) = std::str::from_utf8(&data) {
            let result = legate::config::parse(text);
            if name.starts_with("valid-") {
                assert!(result.is_ok(), "{name}: {:?}", result.err());
            } else if name.starts_with("broken-") {
                assert!(result.is_err(), "{name} was accepted");
            }
        }
    }
}

#[test]
fn postgres_first_message_seeds() {
    replay("postgres_first", inputs::postgres_first);
}

#[test]
fn postgres_health_reply_seeds() {
    replay("postgres_reply", inputs::postgres_reply);
}

#[test]
fn path_normalisation_seeds() {
    replay("path_normalize", inputs::path_normalize);
}

#[test]
fn host_check_seeds() {
    replay("host_check", inputs::host_check);
}

#[test]
fn control_plane_store_seeds() {
    replay("xds_store", inputs::xds_store);
}

#[test]
fn operator_api_seeds() {
    replay("operator_api", inputs::operator_api);
}
