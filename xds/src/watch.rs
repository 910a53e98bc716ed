//! File watching with debounce: notices in-place edits, atomic renames and Kubernetes' `..data`
//! symlink swaps of files by watching their directories, or watches given directories; a burst
//! of events is one change. Used by the control plane (its resource directory) and the Legate
//! proxy (its config and TLS files); each names its own debounce interval.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use notify::RecursiveMode;
use notify::Watcher as _;
use tokio::sync::mpsc;
use tracing::warn;

/// Changes to a set of files or directories, until dropped.
pub struct Changes {
    _watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<()>,
    debounce: Duration,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Changes")
    }
}

impl Changes {
    /// Watches the directory of each file. A symlink swap or rename replaces the directory
    /// entry, which a watch on the file itself would miss. Events closer together than
    /// `debounce` are one change.
    pub fn new<P: AsRef<Path>>(files: &[P], debounce: Duration) -> notify::Result<Changes> {
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .map(|f| match f.as_ref().parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        Changes::watch(
            dirs.iter()
                .map(|d| (d.as_path(), RecursiveMode::NonRecursive)),
            debounce,
        )
    }

    /// Watches each directory, recursively or not. Events closer together than `debounce`
    /// are one change.
    pub fn watch<'a>(
        dirs: impl IntoIterator<Item = (&'a Path, RecursiveMode)>,
        debounce: Duration,
    ) -> notify::Result<Changes> {
        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(e) if e.kind.is_access() => {}
                Ok(_) => {
                    let _ = tx.send(());
                }
                Err(e) => warn!(error = %e, "file watch error"),
            })?;
        for (dir, mode) in dirs {
            watcher.watch(dir, mode)?;
        }
        Ok(Changes {
            _watcher: watcher,
            events,
            debounce,
        })
    }

    /// Waits for the next change, then for the burst it starts to settle; false once the
    /// watch has ended.
    pub async fn next(&mut self) -> bool {
        if self.events.recv().await.is_none() {
            return false;
        }
        loop {
            match tokio::time::timeout(self.debounce, self.events.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return false,
                Err(_) => return true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBOUNCE: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn notices_edit_rename_and_symlink_swap() {
        let dir = std::env::temp_dir().join(format!("legate-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cert.pem");
        std::fs::write(&file, "one").unwrap();
        let mut rx = Changes::new(&[file.display().to_string()], DEBOUNCE).unwrap();

        std::fs::write(&file, "two").unwrap();
        assert!(rx.next().await, "in-place edit");

        let tmp = dir.join("cert.pem.tmp");
        std::fs::write(&tmp, "three").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        assert!(rx.next().await, "atomic rename");

        // Kubernetes: cert.pem -> ..data/cert.pem, and ..data is swapped to a new directory.
        let v1 = dir.join("..v1");
        let v2 = dir.join("..v2");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v1.join("tls.crt"), "a").unwrap();
        std::fs::write(v2.join("tls.crt"), "b").unwrap();
        std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
        let mut rx2 = Changes::new(&[dir.join("tls.crt")], DEBOUNCE).unwrap();
        std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert!(rx2.next().await, "symlink swap");
        assert_eq!(std::fs::read_to_string(dir.join("tls.crt")).unwrap(), "b");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
