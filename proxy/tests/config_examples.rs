//! Every shipped example config (`config-examples/*.yaml`, and the one in docs/config.md) is valid.

use std::path::{Path, PathBuf};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config-examples");
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_is_valid() {
    let files = examples();
    assert!(!files.is_empty(), "config-examples/ has no *.yaml files");
    let mut failures = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        if let Err(errors) = legate::config::parse(&text) {
            failures.push(format!("{}:\n{errors}", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "invalid examples:\n{}",
        failures.join("\n\n")
    );
}

#[test]
fn the_reference_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let start = text
        .find("## Full example")
        .and_then(|at| {
            text[at..]
                .find("```yaml\n")
                .map(|i| at + i + "```yaml\n".len())
        })
        .expect("docs/config.md has a ```yaml block under \"## Full example\"");
    let end = text[start..]
        .find("```")
        .map(|i| start + i)
        .expect("the example block is closed");
    if let Err(errors) = legate::config::parse(&text[start..end]) {
        panic!("the full example in docs/config.md is invalid:\n{errors}");
    }
}
