//! File watching with debounce: notices in-place edits, atomic renames and Kubernetes' `..data`
//! symlink swaps of files by watching their directories, or watches given directories; a burst
//! of events is one change. Used by the control plane (its resource directory) and the Legate
//! proxy (its config and TLS files); each names its own debounce interval.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use notify::RecursiveMode;
use notify::Watcher as _;
use tokio::sync::mpsc;
use tracing::warn;

/// However busy a directory is, a change is reported at most this long after its first event
/// (or after one debounce interval, when that is longer).
pub const MAX_DELAY: Duration = Duration::from_millis(500);

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
    /// entry, which a watch on the file itself would miss. Only events on the files' own
    /// names, and on the `..`-prefixed entries Kubernetes swaps under a mounted ConfigMap or
    /// Secret, count: other files in the same directory (a log, say) are ignored. Events
    /// closer together than `debounce` are one change.
    pub fn new<P: AsRef<Path>>(files: &[P], debounce: Duration) -> notify::Result<Changes> {
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .map(|f| match f.as_ref().parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        let names: BTreeSet<OsString> = files
            .iter()
            .filter_map(|f| f.as_ref().file_name().map(ToOwned::to_owned))
            .collect();
        Changes::start(
            dirs.iter()
                .map(|d| (d.as_path(), RecursiveMode::NonRecursive)),
            debounce,
            Some(names),
        )
    }

    /// Watches each directory, recursively or not; every entry in them counts. Events closer
    /// together than `debounce` are one change.
    pub fn watch<'a>(
        dirs: impl IntoIterator<Item = (&'a Path, RecursiveMode)>,
        debounce: Duration,
    ) -> notify::Result<Changes> {
        Changes::start(dirs, debounce, None)
    }

    fn start<'a>(
        dirs: impl IntoIterator<Item = (&'a Path, RecursiveMode)>,
        debounce: Duration,
        names: Option<BTreeSet<OsString>>,
    ) -> notify::Result<Changes> {
        let (tx, events) = mpsc::unbounded_channel();
        let relevant = move |e: &notify::Event| {
            let Some(names) = &names else { return true };
            e.paths.iter().any(|p| {
                p.file_name()
                    .is_some_and(|n| names.contains(n) || n.to_string_lossy().starts_with(".."))
            })
        };
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(e) if e.kind.is_access() || !relevant(&e) => {}
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

    /// Waits for the next change, then for the burst it starts to settle, but no longer than
    /// [`MAX_DELAY`] after its first event; false once the watch has ended.
    pub async fn next(&mut self) -> bool {
        if self.events.recv().await.is_none() {
            return false;
        }
        let latest = tokio::time::Instant::now() + MAX_DELAY.max(self.debounce);
        loop {
            let quiet = (tokio::time::Instant::now() + self.debounce).min(latest);
            match tokio::time::timeout_at(quiet, self.events.recv()).await {
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
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const DEBOUNCE: Duration = Duration::from_millis(200);

    /// The next change, or false if none comes within a generous bound (so a missed event
    /// fails the test instead of hanging it).
    async fn change(rx: &mut Changes) -> bool {
        tokio::time::timeout(Duration::from_secs(10), rx.next())
            .await
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn notices_edit_rename_and_symlink_swap() {
        let dir = std::env::temp_dir().join(format!("legate-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cert.pem");
        std::fs::write(&file, "one").unwrap();
        let mut rx = Changes::new(&[file.display().to_string()], DEBOUNCE).unwrap();

        std::fs::write(&file, "two").unwrap();
        assert!(change(&mut rx).await, "in-place edit");

        let tmp = dir.join("cert.pem.tmp");
        std::fs::write(&tmp, "three").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        assert!(change(&mut rx).await, "atomic rename");

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
        assert!(change(&mut rx2).await, "symlink swap");
        assert_eq!(std::fs::read_to_string(dir.join("tls.crt")).unwrap(), "b");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn other_files_in_the_directory_neither_count_nor_delay_a_change() {
        let dir = std::env::temp_dir().join(format!("legate-watch-busy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("legate.yaml");
        std::fs::write(&file, "one").unwrap();
        let mut rx = Changes::new(&[&file], DEBOUNCE).unwrap();

        // An access log in the same directory, written steadily for a bounded while.
        let log = dir.join("access.log");
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let (log, done) = (log.clone(), done.clone());
            tokio::spawn(async move {
                for i in 0..400 {
                    std::fs::write(&log, format!("line {i}\n")).unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                done.store(true, Ordering::SeqCst);
            })
        };
        // Log writes alone are no change.
        let quiet = tokio::time::timeout(MAX_DELAY * 2, rx.next()).await;
        assert!(
            quiet.is_err(),
            "writes to another file reported as a change"
        );

        // An edit of the file is reported while the log keeps changing, not after it stops.
        std::fs::write(&file, "two").unwrap();
        assert!(change(&mut rx).await, "the edit is reported");
        assert!(
            !done.load(Ordering::SeqCst),
            "the edit waited for the other file's writes to stop"
        );
        writer.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
