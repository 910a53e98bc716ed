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

/// The append-only log file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    /// The open file and the next entry's id.
    file: Mutex<(File, u64)>,
}

/// Why the log cannot be opened, written or read; each names the file.
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
    #[error("cannot read audit log {}: {error}", path.display())]
    Read {
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
    /// Opens (or creates) the log for appending; entries continue the ids found in it.
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
        for line in BufReader::new(&file).lines() {
            let line = line.map_err(error)?;
            if let Some(id) = serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| v["id"].as_u64())
            {
                last_id = last_id.max(id);
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
            file: Mutex::new((file, last_id + 1)),
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a change, flushed to disk, and returns its id. Blocking.
    pub fn record(&self, change: &Change) -> Result<u64, AuditError> {
        let mut file = self.lock();
        let id = file.1;
        let entry = json!({
            "id": id,
            "time": now(),
            "who": change.who,
            "operation": change.operation,
            "target": change.target,
            "before": change.before,
            "after": change.after,
        });
        self.append(&mut file.0, &entry)?;
        file.1 += 1;
        Ok(id)
    }

    /// Notes that change `id` was not applied, and why. Blocking.
    pub fn record_failure(&self, id: u64, error: &str) -> Result<(), AuditError> {
        let mut file = self.lock();
        self.append(
            &mut file.0,
            &json!({ "id": id, "time": now(), "failed": error }),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (File, u64)> {
        self.file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn append(&self, file: &mut File, entry: &Value) -> Result<(), AuditError> {
        let mut line = entry.to_string();
        line.push('\n');
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|error| AuditError::Write {
                path: self.path.clone(),
                error,
            })
    }

    /// The last `limit` changes, oldest first; a change that was not applied carries
    /// `failed`. Lines that are not entries are skipped. Blocking.
    pub fn read(&self, limit: usize) -> Result<Vec<Value>, AuditError> {
        let error = |error| AuditError::Read {
            path: self.path.clone(),
            error,
        };
        let file = File::open(&self.path).map_err(error)?;
        let mut entries: VecDeque<Value> = VecDeque::new();
        let mut failures: BTreeMap<u64, Value> = BTreeMap::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(error)?;
            let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let Some(id) = entry["id"].as_u64() else {
                continue;
            };
            if let Some(failed) = entry.get("failed") {
                failures.insert(id, failed.clone());
                continue;
            }
            entries.push_back(entry);
            if entries.len() > limit {
                entries.pop_front();
            }
        }
        Ok(entries
            .into_iter()
            .map(|mut e| {
                if let Some(failed) = e["id"].as_u64().and_then(|id| failures.remove(&id)) {
                    e["failed"] = failed;
                }
                e
            })
            .collect())
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
        assert_eq!(log.record(&change("depool")).unwrap(), 1);
        assert_eq!(log.record(&change("pool")).unwrap(), 2);
        log.record_failure(2, "cannot write state file").unwrap();
        drop(log);

        // A torn last line, as after a crash mid-write, is skipped and does not glue.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"id":3,"time":"#).unwrap();
        drop(f);
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.record(&change("set-weight")).unwrap(), 3);

        let entries = log.read(DEFAULT_LIMIT).unwrap();
        let ops: Vec<&str> = entries
            .iter()
            .map(|e| e["operation"].as_str().unwrap())
            .collect();
        assert_eq!(ops, ["depool", "pool", "set-weight"]);
        assert_eq!(entries[0]["after"], json!({ "pooled": false }));
        assert_eq!(entries[0]["who"]["peer"], "127.0.0.1:1");
        assert!(entries[0]["time"].as_str().unwrap().ends_with('Z'));
        assert!(entries[0].get("failed").is_none());
        assert_eq!(entries[1]["failed"], "cannot write state file");
        let last = log.read(1).unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0]["id"], 3);
    }

    #[test]
    fn an_unopenable_log_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("audit.jsonl");
        let e = AuditLog::open(&path).unwrap_err();
        assert!(e.to_string().contains("missing/audit.jsonl"), "{e}");
    }
}
