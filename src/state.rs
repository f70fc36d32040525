//! pgha's state directory: the lock that serialises invocations on one host
//! and the journal of every action taken (JSON lines).

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::{Error, Result};

/// An exclusive `flock(2)` on `STATE_DIR/NAME.lock`, released on drop (and by
/// the kernel if the process dies), so a crashed run never leaves it stuck.
///
/// A state directory that cannot be written must not stop a failover
/// (a full or read-only disk, a wrong owner after a restore). The lock is
/// only a courtesy between runs on this host: every step looks at the
/// cluster first and does only what is missing, so two runs at once still
/// promote once. So, safest first:
/// 1. open (creating) the lock file read-write;
/// 2. else open the existing lock file read-only: `flock` works on any open
///    file, so runs on this host are still serialised;
/// 3. else run unlocked, with a loud warning saying what to fix.
///
/// Refusing to run would turn a broken disk into no failover at all, which
/// is the one outcome pgha exists to prevent.
#[derive(Debug)]
pub struct Lock {
    _file: Option<File>,
    pub path: PathBuf,
    /// How the lock is held.
    pub mode: LockMode,
}

/// How [`Lock`] holds its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// The lock file opened read-write.
    Exclusive,
    /// The existing lock file, opened read-only: still an exclusive flock.
    ReadOnly,
    /// No lock could be taken; the run goes on unlocked.
    Unlocked,
}

fn state_err(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::State {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Create the state directory if needed (mode 0750), and refuse one that
/// is a symbolic link, owned by someone else or writable by others
/// ([`crate::files::private_dir_problem`]): whoever can write it could plant
/// a FIFO or a link as the journal or the lock.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if fs::symlink_metadata(dir).is_err() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(|e| {
                state_err(
                    dir,
                    format!(
                        "cannot create it ({e}); create it writable by the user pgpool runs as"
                    ),
                )
            })?;
    }
    match crate::files::private_dir_problem(dir) {
        Some(problem) => Err(state_err(dir, problem)),
        None => Ok(()),
    }
}

/// Open an existing or new file in the state directory without following
/// links and without blocking, and insist it is a regular file.
fn open_state_file(path: &Path, opts: &mut OpenOptions) -> std::io::Result<File> {
    let file = opts
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a regular file ({})", crate::files::kind(&meta)),
        ));
    }
    if std::os::unix::fs::MetadataExt::nlink(&meta) > 1 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it has other hard links; remove it (pgha recreates it)",
        ));
    }
    Ok(file)
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
        let path = dir.join(format!("{name}.lock"));
        let (file, mode) = match Self::open(dir, &path) {
            Ok(opened) => opened,
            Err(why) => {
                tracing::warn!(
                    "RUNNING WITHOUT A LOCK: {why}; another pgha on this host may act at the same time (each step still checks the cluster first); fix the state directory (pgha-check says how)"
                );
                return Ok(Some(Lock {
                    _file: None,
                    path,
                    mode: LockMode::Unlocked,
                }));
            }
        };
        if mode == LockMode::ReadOnly {
            tracing::warn!(
                "{} is read-only here: locked through a read-only descriptor; fix the state directory so the journal can be written",
                path.display()
            );
        }
        let start = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => {
                    return Ok(Some(Lock {
                        _file: Some(file),
                        path,
                        mode,
                    }));
                }
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(state_err(&path, e)),
            }
            match wait {
                Some(w) if start.elapsed() < w => std::thread::sleep(LOCK_POLL),
                _ => return Ok(None),
            }
        }
    }

    /// The lock file, read-write if possible, else read-only; or why
    /// neither worked.
    fn open(dir: &Path, path: &Path) -> std::result::Result<(File, LockMode), String> {
        if let Err(e) = ensure_dir(dir) {
            // A directory that is not private is unsafe to open files in;
            // one that cannot be created leaves nothing to open.
            return Err(e.to_string());
        }
        let rw = open_state_file(
            path,
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600),
        );
        let rw_err = match rw {
            Ok(f) => return Ok((f, LockMode::Exclusive)),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                return Err(format!("{}: {e}", path.display()));
            }
            Err(e) => e,
        };
        match open_state_file(path, OpenOptions::new().read(true)) {
            Ok(f) => Ok((f, LockMode::ReadOnly)),
            Err(e) => Err(format!(
                "cannot open {} for writing ({rw_err}) nor for reading ({e})",
                path.display()
            )),
        }
    }
}

/// How often a waiting [`Lock::acquire`] tries again (a poll interval, not
/// a timeout: the wait is bounded by its caller's deadline).
const LOCK_POLL: Duration = Duration::from_millis(20);

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
        let detail = crate::text::mask_secrets(detail);
        let entry = Entry {
            ts: rfc3339(SystemTime::now()),
            pid: std::process::id(),
            command: self.command,
            step,
            node,
            host,
            outcome,
            detail: &detail,
            ms: elapsed.as_millis() as u64,
        };
        let line = match serde_json::to_string(&entry) {
            Ok(l) => l,
            Err(_) => return,
        };
        // Never through a link, never blocking on a FIFO, regular files
        // only; one write(2) per line so concurrent runs do not interleave.
        let res = open_state_file(
            &self.path,
            OpenOptions::new().create(true).append(true).mode(0o640),
        )
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
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

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn an_unusable_state_directory_means_unlocked_not_failed() {
        let d = tempfile::tempdir().unwrap();
        // Writable by others: refused for files, the run goes on unlocked.
        let shared = d.path().join("shared");
        fs::create_dir(&shared).unwrap();
        chmod(&shared, 0o777);
        let l = Lock::acquire(&shared, "failover", Duration::from_millis(10)).unwrap();
        assert_eq!(l.mode, LockMode::Unlocked);
        assert!(!shared.join("failover.lock").exists());
        let e = ensure_dir(&shared).unwrap_err();
        assert!(e.to_string().contains("lets other users write"), "{e}");

        // Under a file: cannot be created at all.
        let file = d.path().join("file");
        fs::write(&file, "").unwrap();
        let l = Lock::try_acquire(&file.join("state"), "settle")
            .unwrap()
            .unwrap();
        assert_eq!(l.mode, LockMode::Unlocked);

        // A FIFO or a link as the lock file: never opened, never blocks.
        let private = d.path().join("private");
        fs::create_dir(&private).unwrap();
        chmod(&private, 0o700);
        mkfifo(&private.join("failover.lock"));
        let l = Lock::acquire(&private, "failover", Duration::from_millis(10)).unwrap();
        assert_eq!(l.mode, LockMode::Unlocked);
        std::os::unix::fs::symlink(&file, private.join("settle.lock")).unwrap();
        let l = Lock::acquire(&private, "settle", Duration::from_millis(10)).unwrap();
        assert_eq!(l.mode, LockMode::Unlocked);
        assert_eq!(fs::read(&file).unwrap(), b"");

        // A symlinked state directory is refused as well.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&private, &link).unwrap();
        assert!(
            ensure_dir(&link)
                .unwrap_err()
                .to_string()
                .contains("symbolic link")
        );
    }

    #[test]
    fn a_read_only_lock_file_still_locks() {
        if crate::files::euid() == 0 {
            // root writes through any mode; the read-only path is for the
            // unprivileged user pgpool runs as. Open it read-only directly.
            let d = tempfile::tempdir().unwrap();
            fs::write(d.path().join("x.lock"), "").unwrap();
            let f =
                open_state_file(&d.path().join("x.lock"), OpenOptions::new().read(true)).unwrap();
            f.try_lock().unwrap();
            let g =
                open_state_file(&d.path().join("x.lock"), OpenOptions::new().read(true)).unwrap();
            assert!(g.try_lock().is_err(), "a read-only flock is exclusive");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("failover.lock"), "").unwrap();
        chmod(&d.path().join("failover.lock"), 0o400);
        chmod(d.path(), 0o500);
        let a = Lock::acquire(d.path(), "failover", Duration::from_millis(10)).unwrap();
        assert_eq!(a.mode, LockMode::ReadOnly);
        assert!(Lock::try_acquire(d.path(), "failover").unwrap().is_none());
        chmod(d.path(), 0o700);
    }

    #[test]
    fn the_journal_never_blocks_never_follows_links_and_masks_secrets() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::new(d.path(), "failover");
        j.record(
            "repoint",
            Some(2),
            None,
            "done",
            "primary_conninfo 'host=127.0.0.3 user=repl password=s3cret'",
            Duration::ZERO,
        );
        let text = fs::read_to_string(&j.path).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("password=********"), "{text}");

        // A FIFO in its place: the record is dropped with a warning, at once.
        fs::remove_file(&j.path).unwrap();
        mkfifo(&j.path);
        j.record("promote", Some(1), None, "done", "", Duration::ZERO);
        // A link in its place: the target is never written.
        fs::remove_file(&j.path).unwrap();
        let target = d.path().join("target");
        fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, &j.path).unwrap();
        j.record("promote", Some(1), None, "done", "", Duration::ZERO);
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        // Nor a hard link to another file.
        fs::remove_file(&j.path).unwrap();
        fs::hard_link(&target, &j.path).unwrap();
        j.record("promote", Some(1), None, "done", "", Duration::ZERO);
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
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
