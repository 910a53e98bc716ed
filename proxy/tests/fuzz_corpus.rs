//! Replays the fuzz seed corpus through the config parser on stable: none may panic.

use std::path::Path;

#[test]
fn corpus_never_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/config_parse");
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut replayed = 0;
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if !path.is_file() {
            continue;
        }
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        // The fuzz target skips non-UTF-8 input; so does the replay.
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = legate::config::parse(text);
            replayed += 1;
        }
    }
    assert!(replayed > 0, "{} holds no corpus files", dir.display());
}
