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
    /// How the lock is held (the warnings at acquire time say it to the
    /// operator; the tests read it).
    #[cfg_attr(not(test), allow(dead_code))]
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

/// Past this size `journal.jsonl` is renamed to `journal.jsonl.1` (the
/// previous `.1` is replaced) before the next line is written: the journal
/// keeps at most about twice this much.
pub const JOURNAL_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// One line of the journal.
///
/// Every line has these fields; a line may add structured ones
/// (`fields`, flattened): the decision of an `observe` step (`decision`,
/// `candidate`, `reason`, `fence`, `timeline`, ... as [`crate::plan`]
/// serializes it), and on the `run` line that ends every run `kind`,
/// `phase`, `started_ms`, `blocked_ms`, `message`.
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
    /// `done`, `skipped` (already done), `failed`, `refused`, `planned`;
    /// on a `run` line the run's outcome (`promoted`, `refused`, ...).
    pub outcome: &'a str,
    pub detail: &'a str,
    pub ms: u64,
    #[serde(flatten)]
    pub fields: Fields,
}

/// What became of one step, as its journal line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// It changed something.
    Done,
    /// It was done already (every step checks first).
    Skipped,
    Failed,
    /// Acting would have been unsafe; nothing changed.
    Refused,
}

impl Mark {
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Done => "done",
            Mark::Skipped => "skipped",
            Mark::Failed => "failed",
            Mark::Refused => "refused",
        }
    }
}

/// One journal entry about a step.
#[derive(Debug, Clone)]
pub struct Step<'a> {
    pub name: &'a str,
    /// The node (id, host) the step was about.
    pub node: Option<(u32, &'a str)>,
    pub mark: Mark,
    pub detail: &'a str,
    pub elapsed: Duration,
    pub fields: Fields,
}

impl<'a> Step<'a> {
    pub fn new(name: &'a str, mark: Mark, detail: &'a str, elapsed: Duration) -> Step<'a> {
        Step {
            name,
            node: None,
            mark,
            detail,
            elapsed,
            fields: Fields::new(),
        }
    }
}

/// Structured fields of a journal line.
pub type Fields = serde_json::Map<String, serde_json::Value>;

/// A decision (a `serde` enum tagged `action`, as [`crate::plan::Decision`]
/// and follow's plan are) as journal fields: the tag becomes `decision`,
/// every other field is kept as it is, secrets masked.
pub fn decision_fields(decision: &impl Serialize) -> Fields {
    let mut out = Fields::new();
    match serde_json::to_value(decision) {
        Ok(serde_json::Value::Object(map)) => {
            for (k, v) in map {
                let k = if k == "action" {
                    "decision".to_string()
                } else {
                    k
                };
                out.insert(k, mask_value(v));
            }
        }
        Ok(serde_json::Value::String(s)) => {
            out.insert("decision".into(), serde_json::Value::String(s));
        }
        _ => {}
    }
    out
}

fn mask_value(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(crate::text::mask_secrets(&s)),
        Value::Array(a) => Value::Array(a.into_iter().map(mask_value).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, mask_value(v))).collect()),
        other => other,
    }
}

/// Append-only JSON-lines log of actions in `STATE_DIR/journal.jsonl`.
#[derive(Debug, Clone)]
pub struct Journal {
    pub path: PathBuf,
    command: &'static str,
    max_bytes: u64,
}

impl Journal {
    pub fn new(dir: &Path, command: &'static str) -> Journal {
        Journal {
            path: dir.join("journal.jsonl"),
            command,
            max_bytes: JOURNAL_MAX_BYTES,
        }
    }

    /// Record one step. A journal that cannot be written is logged, not
    /// fatal: failing a failover because of a full disk for the log would
    /// be worse. Commands do not call this: [`crate::exec::Exec`] does, for
    /// every step it runs.
    pub fn record(&self, s: &Step<'_>) {
        self.write(s, s.mark.as_str());
    }

    fn write(&self, s: &Step<'_>, outcome: &str) {
        let detail = crate::text::mask_secrets(s.detail);
        let entry = Entry {
            ts: rfc3339(SystemTime::now()),
            pid: std::process::id(),
            command: self.command,
            step: s.name,
            node: s.node.map(|(id, _)| id),
            host: s.node.map(|(_, h)| h).filter(|h| !h.is_empty()),
            outcome,
            detail: &detail,
            ms: s.elapsed.as_millis() as u64,
            fields: s.fields.clone(),
        };
        let mut line = match serde_json::to_string(&entry) {
            Ok(l) => l,
            Err(_) => return,
        };
        line.push('\n');
        if let Err(e) = self.append(line.as_bytes()) {
            tracing::warn!("cannot append to journal {}: {e}", self.path.display());
        }
    }

    /// The line that ends a run: its outcome (`outcome` of the summary,
    /// or `refused`/`failed`/`error`), what kind of run it was, when it
    /// started and how long it and pgpool's wait took.
    pub fn run_end(
        &self,
        kind: &str,
        phase: &str,
        res: std::result::Result<&crate::report::Summary, &Error>,
        started: SystemTime,
        elapsed: Duration,
    ) {
        let (outcome, message, blocked) = match res {
            Ok(s) => (s.outcome, s.message.clone(), Some(s.blocked_ms)),
            Err(e) => (e.outcome(), format!("{e:#}"), None),
        };
        let mut f = Fields::new();
        f.insert("kind".into(), kind.into());
        f.insert("phase".into(), phase.into());
        let started_ms = started
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        f.insert("started_ms".into(), started_ms.into());
        if phase == "main" {
            let b = blocked.unwrap_or(elapsed.as_millis() as u64);
            f.insert("blocked_ms".into(), b.into());
        }
        f.insert("message".into(), crate::text::mask_secrets(&message).into());
        // The node the run was about (pgpool's %d for pgha-failover).
        let node = res.ok().and_then(|s| s.node);
        let step = Step {
            node: node.map(|id| (id, "")),
            fields: f,
            ..Step::new("run", Mark::Done, "", elapsed)
        };
        self.write(&step, outcome.as_str());
    }

    /// One `write(2)` of the whole line with `O_APPEND`, so concurrent runs
    /// never interleave; never through a link, never blocking on a FIFO,
    /// regular files only. Rotates first when the line would take the file
    /// past [`JOURNAL_MAX_BYTES`].
    fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let opts = || {
            let mut o = OpenOptions::new();
            o.create(true).append(true).mode(0o640);
            o
        };
        let mut f = open_state_file(&self.path, &mut opts())?;
        if f.metadata()?.len() + line.len() as u64 > self.max_bytes {
            self.rotate(&f);
            f = open_state_file(&self.path, &mut opts())?;
        }
        f.write_all(line)
    }

    /// Rename the full journal to `journal.jsonl.1`. Under an flock of the
    /// full file, and only if the path still names that file: of two runs
    /// that both find it full, one renames it and the other sees the new
    /// file and keeps writing.
    fn rotate(&self, full: &File) {
        use std::os::unix::fs::MetadataExt as _;
        if full.try_lock().is_err() {
            return;
        }
        let same = match (full.metadata(), fs::symlink_metadata(&self.path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if same {
            let old = rotated(&self.path);
            if let Err(e) = fs::rename(&self.path, &old) {
                tracing::warn!(
                    "cannot rotate journal {} to {}: {e}",
                    self.path.display(),
                    old.display()
                );
            }
        }
        let _ = full.unlock();
    }
}

/// `journal.jsonl.1`, where a full journal goes.
pub fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// One journal line as read back: old lines (with only `detail`) and new
/// ones (with structured fields) alike.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, Serialize)]
#[serde(default)]
pub struct Line {
    pub ts: String,
    pub pid: u32,
    pub command: String,
    pub step: String,
    pub node: Option<u32>,
    pub host: Option<String>,
    pub outcome: String,
    pub detail: String,
    pub ms: u64,
    #[serde(flatten)]
    pub fields: Fields,
}

/// Every readable line of the journal in `dir`, oldest first
/// (`journal.jsonl.1` then `journal.jsonl`); lines that do not parse are
/// skipped. Each file is read through [`open_state_file`] (no links, no
/// FIFOs) and at most twice [`JOURNAL_MAX_BYTES`] of it.
pub fn read_journal(dir: &Path) -> Vec<Line> {
    use std::io::Read as _;
    let path = dir.join("journal.jsonl");
    let mut out = Vec::new();
    for p in [rotated(&path), path] {
        let Ok(f) = open_state_file(&p, OpenOptions::new().read(true)) else {
            continue;
        };
        let mut text = String::new();
        let mut bytes = Vec::new();
        if f.take(2 * JOURNAL_MAX_BYTES)
            .read_to_end(&mut bytes)
            .is_err()
        {
            continue;
        }
        text.push_str(&String::from_utf8_lossy(&bytes));
        out.extend(parse_lines(&text));
    }
    out
}

/// The journal lines of `text` that parse.
pub fn parse_lines(text: &str) -> Vec<Line> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        .filter(|l| !l.command.is_empty())
        .collect()
}

/// One run of a pgha command as the journal tells it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    /// When it started (UTC, as the journal's `ts`).
    pub when: String,
    /// Unix time in ms of the start.
    pub started_ms: u64,
    /// `failover`, `follow`, `attach`.
    pub command: String,
    pub pid: u32,
    /// `failover`, `switchover`, `standby_failed`, ... (empty on old lines).
    pub kind: String,
    /// `main`, or `settle` for pgha-failover's detached phase.
    pub phase: String,
    /// The run's outcome: a summary outcome (`promoted`, `attached`, ...),
    /// `refused`, `failed`; for old journals without a `run` line the
    /// worst step outcome.
    pub outcome: String,
    pub node: Option<u32>,
    /// Wall time of the run.
    pub ms: u64,
    /// How long pgpool waited (pgha-failover's main phase).
    pub blocked_ms: Option<u64>,
    pub message: String,
}

/// The runs in `lines`, oldest first: the lines of one process (command
/// and pid) make one run; its `run` line, when there is one, says the
/// outcome and the times, otherwise they are inferred from the steps.
pub fn runs(lines: &[Line]) -> Vec<Run> {
    let mut groups: Vec<Vec<&Line>> = Vec::new();
    let mut open: std::collections::HashMap<(&str, u32), usize> = Default::default();
    for l in lines {
        let key = (l.command.as_str(), l.pid);
        match open.get(&key) {
            // A run ends at its `run` line: a reused pid is another run.
            Some(&i) if groups[i].last().is_some_and(|p| p.step != "run") => groups[i].push(l),
            _ => {
                open.insert(key, groups.len());
                groups.push(vec![l]);
            }
        }
    }
    groups.iter().map(|g| run_of(g)).collect()
}

fn run_of(g: &[&Line]) -> Run {
    let first = g[0];
    let start_of = |l: &Line| parse_rfc3339(&l.ts).map(|t| t.saturating_sub(l.ms));
    let started = g.iter().filter_map(|l| start_of(l)).min().unwrap_or(0);
    let end = g
        .iter()
        .filter_map(|l| parse_rfc3339(&l.ts))
        .max()
        .unwrap_or(started);
    let node = g.iter().find_map(|l| l.node);
    let str_field = |l: &Line, k: &str| {
        l.fields
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let num_field = |l: &Line, k: &str| l.fields.get(k).and_then(|v| v.as_u64());
    let decision = g
        .iter()
        .find_map(|l| l.fields.get("decision").and_then(|v| v.as_str()));
    if let Some(r) = g.iter().rev().find(|l| l.step == "run") {
        let started_ms = num_field(r, "started_ms").unwrap_or(started);
        return Run {
            when: rfc3339(UNIX_EPOCH + Duration::from_millis(started_ms)),
            started_ms,
            command: first.command.clone(),
            pid: first.pid,
            kind: str_field(r, "kind"),
            phase: str_field(r, "phase"),
            outcome: r.outcome.clone(),
            node: r.node.or(node),
            ms: r.ms,
            blocked_ms: num_field(r, "blocked_ms"),
            message: str_field(r, "message"),
        };
    }
    // An old journal, or a run that died before its last line.
    let worst = ["failed", "refused"]
        .into_iter()
        .find(|o| g.iter().any(|l| l.outcome == *o))
        .map(str::to_string);
    let promoted = g.iter().any(|l| l.step == "promote" && l.outcome == "done");
    let outcome = worst.unwrap_or_else(|| if promoted { "promoted" } else { "done" }.into());
    let last = g[g.len() - 1];
    Run {
        when: rfc3339(UNIX_EPOCH + Duration::from_millis(started)),
        started_ms: started,
        command: first.command.clone(),
        pid: first.pid,
        kind: match decision {
            Some("standby_failed") => "standby_failed".into(),
            _ if promoted => "failover".into(),
            _ => String::new(),
        },
        phase: if g.iter().any(|l| l.step == "settle") {
            "settle"
        } else {
            "main"
        }
        .into(),
        outcome,
        node,
        ms: end.saturating_sub(started),
        blocked_ms: None,
        message: if last.detail.starts_with(|c: char| c.is_ascii_uppercase()) {
            // An old `{:?}` decision says little to a reader.
            String::new()
        } else {
            last.detail.clone()
        },
    }
}

/// Milliseconds since the epoch of a timestamp [`rfc3339`] wrote.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    let ms = if b.get(19) == Some(&b'.') {
        n(20..23)?
    } else {
        0
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t = ((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms;
    u64::try_from(t).ok()
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

    /// One step line, as [`crate::exec::Exec`] writes it.
    fn rec(
        j: &Journal,
        step: &str,
        node: Option<u32>,
        host: Option<&str>,
        mark: &str,
        detail: &str,
        elapsed: Duration,
    ) {
        let mark = match mark {
            "done" => Mark::Done,
            "skipped" => Mark::Skipped,
            _ => Mark::Failed,
        };
        j.record(&Step {
            node: node.map(|n| (n, host.unwrap_or(""))),
            ..Step::new(step, mark, detail, elapsed)
        });
    }

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
        rec(
            &j,
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
        rec(&j, "promote", Some(1), None, "done", "", Duration::ZERO);
        // A link in its place: the target is never written.
        fs::remove_file(&j.path).unwrap();
        let target = d.path().join("target");
        fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, &j.path).unwrap();
        rec(&j, "promote", Some(1), None, "done", "", Duration::ZERO);
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        // Nor a hard link to another file.
        fs::remove_file(&j.path).unwrap();
        fs::hard_link(&target, &j.path).unwrap();
        rec(&j, "promote", Some(1), None, "done", "", Duration::ZERO);
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
    }

    #[test]
    fn journal_appends_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path(), "failover");
        rec(
            &j,
            "promote",
            Some(1),
            Some("127.0.0.3"),
            "done",
            "timeline 2",
            Duration::from_millis(120),
        );
        rec(
            &j,
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

    #[test]
    fn timestamps_parse_back() {
        for ms in [0u64, 951_782_400_000, 1_795_631_400_123, 4_102_444_799_999] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(ms));
        }
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00.000Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn decisions_become_fields() {
        let d = crate::plan::Decision::Refuse {
            reason: "host=x password=s3cret".into(),
        };
        let f = decision_fields(&d);
        assert_eq!(f["decision"], "refuse");
        assert!(!f["reason"].as_str().unwrap().contains("s3cret"));
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path(), "failover");
        j.record(&Step {
            fields: f,
            ..Step::new("observe", Mark::Done, "", Duration::ZERO)
        });
        let l = &read_journal(dir.path())[0];
        assert_eq!(l.step, "observe");
        assert_eq!(l.fields["decision"], "refuse");
    }

    #[test]
    fn the_journal_rotates_past_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::new(dir.path(), "failover");
        j.max_bytes = 1000;
        for i in 0..30 {
            rec(&j, "step", Some(i), None, "done", "x", Duration::ZERO);
        }
        let now = fs::metadata(&j.path).unwrap().len();
        let old = fs::metadata(rotated(&j.path)).unwrap().len();
        assert!(now <= 1000 && old <= 1000 && old > 800, "{now} {old}");
        // Both files are read back, oldest first, each line whole.
        let lines = read_journal(dir.path());
        assert!(lines.len() >= 8, "{}", lines.len());
        assert_eq!(lines.last().unwrap().node, Some(29));
        let nodes: Vec<u32> = lines.iter().filter_map(|l| l.node).collect();
        assert!(nodes.windows(2).all(|w| w[0] + 1 == w[1]), "{nodes:?}");
    }

    #[test]
    fn concurrent_writers_never_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let long = "y".repeat(3000);
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let (dir, long) = (dir.path(), &long);
                s.spawn(move || {
                    let j = Journal::new(dir, "follow");
                    for _ in 0..50 {
                        rec(&j, "step", Some(t), None, "done", long, Duration::ZERO);
                    }
                });
            }
        });
        let text = fs::read_to_string(dir.path().join("journal.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 200);
        assert_eq!(parse_lines(&text).len(), 200);
    }

    #[test]
    fn runs_from_new_and_old_lines() {
        let text = concat!(
            // An old run: only `detail`, no `run` line.
            r#"{"ts":"2026-11-25T18:30:00.100Z","pid":7,"command":"failover","step":"observe","outcome":"done","detail":"Promote { candidate: 1, reason: \"x\", fence: None }","ms":100}"#,
            "\n",
            r#"{"ts":"2026-11-25T18:30:00.300Z","pid":7,"command":"failover","step":"promote","node":1,"host":"h","outcome":"done","detail":"timeline 2","ms":150}"#,
            "\n",
            "not json\n",
            // A new one that was refused.
            r#"{"ts":"2026-11-25T19:00:00.050Z","pid":9,"command":"failover","step":"observe","outcome":"done","detail":"","ms":40,"decision":"refuse","reason":"r"}"#,
            "\n",
            r#"{"ts":"2026-11-25T19:00:00.060Z","pid":9,"command":"failover","step":"run","outcome":"refused","detail":"","ms":60,"kind":"refused","phase":"main","started_ms":1795633200000,"blocked_ms":60,"message":"REFUSED"}"#,
            "\n",
            // The same pid again later: another run.
            r#"{"ts":"2026-11-26T08:00:00.000Z","pid":9,"command":"failover","step":"run","outcome":"promoted","detail":"","ms":90,"kind":"switchover","phase":"main","started_ms":1795680000000,"blocked_ms":90,"message":"ok"}"#,
            "\n",
        );
        let r = runs(&parse_lines(text));
        assert_eq!(r.len(), 3, "{r:#?}");
        assert_eq!(
            (r[0].outcome.as_str(), r[0].kind.as_str(), r[0].ms),
            ("promoted", "failover", 300)
        );
        assert_eq!(r[0].when, "2026-11-25T18:30:00.000Z");
        assert_eq!(r[0].message, "timeline 2");
        assert_eq!(
            (r[1].outcome.as_str(), r[1].blocked_ms),
            ("refused", Some(60))
        );
        assert_eq!(r[2].kind, "switchover");
    }

    #[test]
    fn a_run_line_ends_every_run() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path(), "failover");
        let s = crate::report::Summary {
            outcome: crate::report::Outcome::Promoted,
            message: "node 0 failed".into(),
            blocked_ms: 80,
            ..Default::default()
        };
        j.run_end(
            "failover",
            "main",
            Ok(&s),
            SystemTime::now(),
            Duration::from_millis(85),
        );
        let e = Error::Refused("unsafe".into());
        j.run_end(
            "refused",
            "main",
            Err(&e),
            SystemTime::now(),
            Duration::from_millis(5),
        );
        let r = runs(&read_journal(dir.path()));
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].outcome.as_str(), r[0].blocked_ms),
            ("promoted", Some(80))
        );
        assert_eq!(
            (r[1].outcome.as_str(), r[1].blocked_ms),
            ("refused", Some(5))
        );
        assert_eq!(r[1].message, "unsafe");
    }
}
