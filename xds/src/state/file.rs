//! The state file: the operator overrides of a single control plane, as one JSON file written
//! atomically (R14).

use std::path::{Path, PathBuf};

use tracing::info;

use crate::store::Overrides;

/// Why the state file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read state file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("state file {} is not valid: {error} (fix or remove it; it holds the operator overrides)", path.display())]
    Invalid {
        path: PathBuf,
        error: serde_json::Error,
    },
}

/// The overrides the file holds; none when it does not exist yet.
pub fn load(path: &Path) -> Result<Overrides, FileError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let o = Overrides::from_state_json(&bytes).map_err(|error| FileError::Invalid {
                path: path.to_path_buf(),
                error,
            })?;
            info!(path = %path.display(), clusters = o.clusters.len(), "operator overrides loaded");
            Ok(o)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Overrides::default()),
        Err(error) => Err(FileError::Read {
            path: path.to_path_buf(),
            error,
        }),
    }
}

/// Writes the state file atomically: a temporary file, flushed, renamed over it (R14).
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    // Make the rename itself durable; not every platform lets a directory be opened.
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::OperatorRequest;

    #[test]
    fn the_file_is_written_atomically_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(load(&path).unwrap(), Overrides::default());
        let o = Overrides::default().with(&OperatorRequest {
            cluster: "c".into(),
            address: "1.1.1.1:1".into(),
            operation: crate::store::Operation::SetWeight(3),
        });
        write(&path, &o.to_state_json()).unwrap();
        assert_eq!(load(&path).unwrap(), o);
        assert!(!dir.path().join("state.json.tmp").exists());
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(load(&path), Err(FileError::Invalid { .. })));
    }
}
