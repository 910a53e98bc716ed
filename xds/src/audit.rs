//! The audit log: one JSON line per operator change (who, what, when, before and after),
//! on disk before the change is persisted, and read back for `GET /v1/audit`.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{json, Value};

/// Entries `GET /v1/audit` returns unless asked for another number.
pub const DEFAULT_LIMIT: usize = 100;
/// The most it returns at once.
pub const MAX_LIMIT: usize = 10_000;

/// The append-only log file, and its latest entries in memory (what `GET /v1/audit` reads).
///
/// Entries are written under the store lock (one change at a time), so an entry for a change
/// that then fails is the file's last and can be cut off again ([`AuditLog::undo`]).
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: File,
    next_id: u64,
    /// The latest [`MAX_LIMIT`] entries, oldest first.
    recent: VecDeque<Value>,
}

/// Where an entry was written, to take it back.
#[derive(Debug, Clone, Copy)]
pub struct Recorded {
    pub id: u64,
    offset: u64,
}

/// Why the log cannot be opened or written; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {}: {error}", path.display())]
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot write audit log {}: {error}", path.display())]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// One change as the operator API describes it; [`AuditLog::record`] adds `id` and `time`.
#[derive(Debug, Clone)]
pub struct Change {
    /// [`crate::access::Client::who`].
    pub who: Value,
    pub operation: String,
    /// What it changes: a cluster and address, or a group, route table and route.
    pub target: Value,
    pub before: Value,
    pub after: Value,
}

impl AuditLog {
    /// Opens (or creates) the log for appending; entries continue the ids found in it. Lines
    /// that are not entries (torn by a crash, not UTF-8) are skipped.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let error = |error| AuditError::Open {
            path: path.to_path_buf(),
            error,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(error)?;
        let mut last_id = 0;
        let mut recent: VecDeque<Value> = VecDeque::new();
        let mut failures: BTreeMap<u64, Value> = BTreeMap::new();
        for line in BufReader::new(&file).split(b'\n') {
            let line = line.map_err(error)?;
            let Ok(entry) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            let Some(id) = entry["id"].as_u64() else {
                continue;
            };
            last_id = last_id.max(id);
            if let Some(failed) = entry.get("failed") {
                failures.insert(id, failed.clone());
                continue;
            }
            recent.push_back(entry);
            if recent.len() > MAX_LIMIT {
                recent.pop_front();
            }
        }
        for entry in &mut recent {
            if let Some(failed) = entry["id"].as_u64().and_then(|id| failures.remove(&id)) {
                entry["failed"] = failed;
            }
        }
        // A line cut short (the machine stopped mid-write) stays on a line of its own.
        let len = file.seek(SeekFrom::End(0)).map_err(error)?;
        if len > 0 {
            let mut last = [0u8];
            file.seek(SeekFrom::Start(len - 1)).map_err(error)?;
            file.read_exact(&mut last).map_err(error)?;
            if last[0] != b'\n' {
                file.write_all(b"\n").map_err(error)?;
            }
        }
        Ok(AuditLog {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                file,
                next_id: last_id + 1,
                recent,
            }),
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a change, flushed to disk. On an error nothing of it stays in the file (and
    /// its id is not used again). Blocking.
    pub fn record(&self, change: &Change) -> Result<Recorded, AuditError> {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        let entry = json!({
            "id": id,
            "time": now(),
            "who": change.who,
            "operation": change.operation,
            "target": change.target,
            "before": change.before,
            "after": change.after,
        });
        let mut line = entry.to_string();
        line.push('\n');
        let file = &mut inner.file;
        let written = file.metadata().map(|m| m.len()).and_then(|offset| {
            file.write_all(line.as_bytes())
                .and_then(|()| file.sync_data())
                .map(|()| offset)
                .inspect_err(|_| {
                    let _ = file.set_len(offset).and_then(|()| file.sync_data());
                })
        });
        let offset = written.map_err(|error| AuditError::Write {
            path: self.path.clone(),
            error,
        })?;
        inner.recent.push_back(entry);
        if inner.recent.len() > MAX_LIMIT {
            inner.recent.pop_front();
        }
        Ok(Recorded { id, offset })
    }

    /// Takes back the entry `recorded` for a change that was not applied: cuts it off the
    /// file (it is the last: changes are recorded one at a time), or, if that fails, marks
    /// it failed with `reason`. Blocking.
    pub fn undo(&self, recorded: Recorded, reason: &str) -> Result<(), AuditError> {
        let mut inner = self.lock();
        let file = &mut inner.file;
        let cut = file
            .set_len(recorded.offset)
            .and_then(|()| file.sync_data());
        let result = match cut {
            Ok(()) => {
                inner
                    .recent
                    .retain(|e| e["id"].as_u64() != Some(recorded.id));
                return Ok(());
            }
            Err(_) => {
                let mut line =
                    json!({ "id": recorded.id, "time": now(), "failed": reason }).to_string();
                line.push('\n');
                file.write_all(line.as_bytes())
                    .and_then(|()| file.sync_data())
            }
        };
        if let Some(e) = inner
            .recent
            .iter_mut()
            .find(|e| e["id"].as_u64() == Some(recorded.id))
        {
            e["failed"] = Value::from(reason);
        }
        result.map_err(|error| AuditError::Write {
            path: self.path.clone(),
            error,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The last `limit` changes (at most [`MAX_LIMIT`]), oldest first; one that was not
    /// applied and could not be cut off carries `failed`.
    pub fn read(&self, limit: usize) -> Vec<Value> {
        let inner = self.lock();
        let skip = inner.recent.len().saturating_sub(limit);
        inner.recent.iter().skip(skip).cloned().collect()
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(operation: &str) -> Change {
        Change {
            who: json!({ "peer": "127.0.0.1:1" }),
            operation: operation.into(),
            target: json!({ "cluster": "tiles", "address": "10.0.0.1:80" }),
            before: Value::Null,
            after: json!({ "pooled": false }),
        }
    }

    #[test]
    fn entries_are_appended_with_ids_that_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.record(&change("depool")).unwrap().id, 1);
        let pool = log.record(&change("pool")).unwrap();
        assert_eq!(pool.id, 2);
        // Not applied: taken back, from memory and from the file.
        log.undo(pool, "cannot write state file").unwrap();
        assert_eq!(log.read(DEFAULT_LIMIT).len(), 1);
        drop(log);

        // A torn last line, as after a crash mid-write (here cut inside a multibyte
        // character), is skipped and does not glue; a failure marker folds into its entry.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"id\":1,\"failed\":\"disk\"}\n").unwrap();
        f.write_all(&"{\"id\":3,\"who\":\"é".as_bytes()[..16])
            .unwrap();
        drop(f);
        let log = AuditLog::open(&path).unwrap();
        let next = log.record(&change("set-weight")).unwrap();
        assert_eq!(next.id, 2, "after the last entry the file holds");

        let entries = log.read(DEFAULT_LIMIT);
        let ops: Vec<&str> = entries
            .iter()
            .map(|e| e["operation"].as_str().unwrap())
            .collect();
        assert_eq!(ops, ["depool", "set-weight"]);
        assert_eq!(entries[0]["after"], json!({ "pooled": false }));
        assert_eq!(entries[0]["who"]["peer"], "127.0.0.1:1");
        assert!(entries[0]["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(entries[0]["failed"], "disk");
        assert!(entries[1].get("failed").is_none());
        let last = log.read(1);
        assert_eq!(last.len(), 1);
        assert_eq!(last[0]["id"], 2);
        drop(log);
        // What memory shows is what the file holds.
        let reopened = AuditLog::open(&path).unwrap();
        assert_eq!(reopened.read(DEFAULT_LIMIT), entries);
    }

    #[test]
    fn an_unopenable_log_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("audit.jsonl");
        let e = AuditLog::open(&path).unwrap_err();
        assert!(e.to_string().contains("missing/audit.jsonl"), "{e}");
    }
}
