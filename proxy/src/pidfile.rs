//! The pid file of `legate run --pid-file`, and `legate upgrade`, which signals the process
//! it names and waits for the upgrade's new process to take the file over.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("{path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: {text:?} is not a pid")]
    NotAPid { path: String, text: String },
    #[error("cannot signal pid {pid}: {source}")]
    Signal { pid: u32, source: io::Error },
    #[error("pid {old} could not start its new process and serves on (its log says why)")]
    Failed { old: u32 },
    #[error("pid {old} exited, and no new process took {path} over")]
    Gone { old: u32, path: String },
    #[error(
        "no new process took {path} over within {limit:?}; pid {old} serves on (its log says why)"
    )]
    TimedOut {
        old: u32,
        path: String,
        limit: Duration,
    },
}

/// Writes `pid` to `path` atomically (a file beside it, named for the writer, renamed over
/// it).
pub fn write(path: &Path, pid: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Removes `path` if it still names `pid` (an upgrade's new process has rewritten it).
pub fn remove_if_ours(path: &Path, pid: u32) {
    if read(path).is_ok_and(|p| p == pid) {
        let _ = std::fs::remove_file(path);
    }
}

/// The pid in `path`.
pub fn read(path: &Path) -> Result<u32, PidFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PidFileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    text.trim().parse().map_err(|_| PidFileError::NotAPid {
        path: path.display().to_string(),
        text: text.trim().to_owned(),
    })
}

/// Sends SIGUSR2 to the process `path` names and waits, at most `limit`, until another
/// live process has written its pid there. Returns the old and the new pid. The old process
/// writes the file again, with its own pid, when the upgrade fails: that ends the wait too.
pub fn upgrade(path: &Path, limit: Duration) -> Result<(u32, u32), PidFileError> {
    let (old, before) = read_stamped(path)?;
    let signal_error = |source: io::Error| PidFileError::Signal { pid: old, source };
    let target = i32::try_from(old)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| signal_error(io::Error::from(io::ErrorKind::InvalidInput)))?;
    rustix::process::kill_process(target, Signal::USR2).map_err(|e| signal_error(e.into()))?;
    let deadline = Instant::now() + limit;
    let shown = path.display().to_string();
    loop {
        match read_stamped(path) {
            Ok((new, _)) if new != old && alive(new) => return Ok((old, new)),
            Ok((same, stamp)) if same == old && stamp != before => {
                return Err(PidFileError::Failed { old })
            }
            _ => {}
        }
        if !alive(old) {
            // It may have handed over and exited between two looks at the file.
            return match read(path) {
                Ok(new) if new != old && alive(new) => Ok((old, new)),
                _ => Err(PidFileError::Gone { old, path: shown }),
            };
        }
        if Instant::now() >= deadline {
            return Err(PidFileError::TimedOut {
                old,
                path: shown,
                limit,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Which file this is: its inode and change time, from the open file itself, so the pid
/// and the stamp belong to one and the same file even while it is being replaced.
type Stamp = (u64, i64, i64);

/// The pid in `path` and the stamp of the file it was read from.
fn read_stamped(path: &Path) -> Result<(u32, Stamp), PidFileError> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;
    let failed = |source| PidFileError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(failed)?;
    let meta = file.metadata().map_err(failed)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(failed)?;
    let pid = text.trim().parse().map_err(|_| PidFileError::NotAPid {
        path: path.display().to_string(),
        text: text.trim().to_owned(),
    })?;
    Ok((pid, (meta.ino(), meta.ctime(), meta.ctime_nsec())))
}

fn alive(pid: u32) -> bool {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_read_and_removed_only_by_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("legate.pid");
        write(&path, 41).unwrap();
        assert_eq!(read(&path).unwrap(), 41);
        remove_if_ours(&path, 42);
        assert!(path.exists(), "another pid's file stays");
        remove_if_ours(&path, 41);
        assert!(!path.exists());
        std::fs::write(&path, "x\n").unwrap();
        assert!(matches!(read(&path), Err(PidFileError::NotAPid { .. })));
    }
}
