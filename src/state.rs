//! pgha's state directory: the lock that serialises invocations on one host
//! and the journal of every action taken (JSON lines).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::{Error, Result};

/// An exclusive `flock(2)` on `STATE_DIR/NAME.lock`, released on drop (and by
/// the kernel if the process dies), so a crashed run never leaves it stuck.
#[derive(Debug)]
pub struct Lock {
    _file: File,
    pub path: PathBuf,
}

fn state_err(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::State {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Create the state directory if needed (mode 0750).
pub fn ensure_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|e| {
            state_err(
                dir,
                format!("cannot create it ({e}); create it writable by the user pgpool runs as"),
            )
        })
}

impl Lock {
    /// Wait up to `wait` for the lock; another pgha holding it longer is an
    /// error naming the lock file.
    pub fn acquire(dir: &Path, name: &str, wait: Duration) -> Result<Lock> {
        Self::take(dir, name, Some(wait))?.ok_or_else(|| {
            state_err(
                &dir.join(format!("{name}.lock")),
                format!(
                    "still locked by another pgha after {:.1}s (see `fuser` on it)",
                    wait.as_secs_f64()
                ),
            )
        })
    }

    /// Take the lock only if it is free right now.
    pub fn try_acquire(dir: &Path, name: &str) -> Result<Option<Lock>> {
        Self::take(dir, name, None)
    }

    fn take(dir: &Path, name: &str, wait: Option<Duration>) -> Result<Option<Lock>> {
        ensure_dir(dir)?;
        let path = dir.join(format!("{name}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o640)
            .open(&path)
            .map_err(|e| state_err(&path, e))?;
        let start = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Some(Lock { _file: file, path })),
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(state_err(&path, e)),
            }
            match wait {
                Some(w) if start.elapsed() < w => std::thread::sleep(Duration::from_millis(20)),
                _ => return Ok(None),
            }
        }
    }
}

/// One line of the journal.
#[derive(Debug, Clone, Serialize)]
pub struct Entry<'a> {
    pub ts: String,
    pub pid: u32,
    pub command: &'a str,
    pub step: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<&'a str>,
    /// `done`, `skipped` (already done), `failed`, `planned`.
    pub outcome: &'a str,
    pub detail: &'a str,
    pub ms: u64,
}

/// Append-only JSON-lines log of actions in `STATE_DIR/journal.jsonl`.
#[derive(Debug, Clone)]
pub struct Journal {
    pub path: PathBuf,
    command: &'static str,
}

impl Journal {
    pub fn new(dir: &Path, command: &'static str) -> Journal {
        Journal {
            path: dir.join("journal.jsonl"),
            command,
        }
    }

    /// Record one action. A journal that cannot be written is logged, not
    /// fatal: failing a failover because of a full disk for the log would
    /// be worse.
    pub fn record(
        &self,
        step: &str,
        node: Option<u32>,
        host: Option<&str>,
        outcome: &str,
        detail: &str,
        elapsed: Duration,
    ) {
        let entry = Entry {
            ts: rfc3339(SystemTime::now()),
            pid: std::process::id(),
            command: self.command,
            step,
            node,
            host,
            outcome,
            detail,
            ms: elapsed.as_millis() as u64,
        };
        let line = match serde_json::to_string(&entry) {
            Ok(l) => l,
            Err(_) => return,
        };
        let res = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&self.path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = res {
            tracing::warn!("cannot append to journal {}: {e}", self.path.display());
        }
    }
}

/// UTC timestamp `2026-11-25T18:30:00.123Z` without a date crate.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_631_400_123);
        assert_eq!(rfc3339(t), "2026-11-25T18:30:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let a = Lock::acquire(dir.path(), "failover", Duration::from_millis(10)).unwrap();
        assert!(Lock::try_acquire(dir.path(), "failover").unwrap().is_none());
        let err = Lock::acquire(dir.path(), "failover", Duration::from_millis(50)).unwrap_err();
        assert!(err.to_string().contains("still locked"), "{err}");
        drop(a);
        assert!(Lock::try_acquire(dir.path(), "failover").unwrap().is_some());
    }

    #[test]
    fn journal_appends_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path(), "failover");
        j.record(
            "promote",
            Some(1),
            Some("127.0.0.3"),
            "done",
            "timeline 2",
            Duration::from_millis(120),
        );
        j.record(
            "repoint",
            Some(2),
            None,
            "skipped",
            "already",
            Duration::ZERO,
        );
        let text = fs::read_to_string(&j.path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["step"], "promote");
        assert_eq!(lines[0]["node"], 1);
        assert_eq!(lines[0]["ms"], 120);
        assert_eq!(lines[1]["outcome"], "skipped");
        assert!(lines[1].get("host").is_none());
    }
}
