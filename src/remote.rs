//! ssh to the nodes: one multiplexed master connection per host, strict host
//! keys, every remote command shell-quoted and bounded on both ends.
//!
//! pgpool waits for `failover_command` to return, so no remote step may hang:
//! - connecting is bounded by ssh's `ConnectTimeout` and, around the whole
//!   handshake and authentication, by a local timer;
//! - every command runs remotely under `timeout -k 2 <secs>` (GNU coreutils),
//!   so the remote process dies when its time is up even if this side is gone,
//!   and the local ssh client is killed a little later if no answer came;
//! - a master whose host stops answering dies after `ServerAliveInterval` ×
//!   (`ServerAliveCountMax` + 1) seconds.
//!
//! The masters are driven by the `openssh` crate (the system `ssh` with a
//! `ControlMaster` socket). Each `Remote` writes a small ssh configuration file
//! (`ssh -F`) into the control directory for the one option the crate cannot
//! set (`ServerAliveCountMax`); it then includes `~/.ssh/config` and
//! `/etc/ssh/ssh_config`, so everything else behaves as plain `ssh` does, while
//! the options on the command line (strict host keys, batch mode, user, port,
//! key, known_hosts, timeouts) take precedence over anything in those files.

use std::collections::HashMap;
use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write as _};
use std::num::NonZeroUsize;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Stdio as StdStdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Seconds between the `TERM` that `timeout` sends at the deadline and the
/// `KILL` that follows when the command ignores it (`timeout -k`).
const KILL_AFTER_SECS: u64 = 2;

/// How long after the deadline the local ssh client may take to report the
/// remote `timeout`'s verdict before it is killed and its master presumed
/// dead. A command that ignores TERM may outlast it; `timeout -k` still
/// kills it remotely [`KILL_AFTER_SECS`] after the deadline.
const LOCAL_GRACE: Duration = Duration::from_secs(1);

/// Slack on top of `ConnectTimeout` for the local timer around the whole
/// connect, so that ssh usually reports its own, more precise, error first.
const CONNECT_GRACE: Duration = Duration::from_millis(500);

/// `ServerAliveCountMax`: unanswered keepalives before a master gives up.
const SERVER_ALIVE_COUNT_MAX: u32 = 2;

/// `ControlPersist`: an idle master exits after this long, so that a master
/// orphaned by a killed pgha process does not stay forever. A later command
/// transparently opens a new one.
const MASTER_IDLE_SECS: usize = 60;

/// Longest control directory whose sockets still fit a unix socket path
/// (104 bytes on the strictest systems): openssh adds
/// `/.ssh-connectionXXXXXX/master` (29 bytes) and ssh a 17-byte temporary
/// suffix while binding.
const CONTROL_DIR_MAX: usize = 104 - 29 - 17;

/// Marker of ssh's fallback when the control socket is gone: openssh points
/// multiplexed clients at host `none`, port 9, so nothing ran remotely.
const MASTER_GONE: &str = "Could not resolve hostname none";

/// Longest command shown in error messages.
const SHOWN_MAX: usize = 160;

/// Lines of remote stderr kept in [`RemoteError::Failed`].
const STDERR_LINES: usize = 5;

/// How pgha reaches the nodes over ssh: the settings of `pgha.toml`'s ssh
/// section, applied to every host.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// Remote login (`ssh -l`), usually `postgres`.
    pub user: String,
    /// sshd port (`ssh -p`).
    pub port: u16,
    /// Private key (`ssh -i`, with `IdentitiesOnly=yes`); `None` uses ssh's
    /// default keys of the local user.
    pub identity_file: Option<PathBuf>,
    /// `UserKnownHostsFile`; `None` means `~/.ssh/known_hosts`. Host keys are
    /// always checked strictly (`StrictHostKeyChecking=yes`): an unknown or
    /// changed key refuses the connection.
    pub known_hosts_file: Option<PathBuf>,
    /// `ConnectTimeout` (rounded up to whole seconds, at least 1), also the
    /// `ServerAliveInterval` of the masters and, plus half a second, the
    /// local bound on the whole connect.
    pub connect_timeout: Duration,
    /// Directory for the `ControlMaster` sockets, created (mode 0700) when
    /// missing, refused when another user could write it. Keep it short:
    /// socket paths are limited to about 100 bytes, so at most 58 bytes
    /// here. `None`: a private directory of this user, see
    /// [`default_control_dirs`].
    pub control_dir: Option<PathBuf>,
}

/// What a remote command did: its exit status and everything it printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Remote exit code. 255 is also what ssh reports when the remote process
    /// was killed by a signal (the multiplexing protocol cannot tell them
    /// apart); -1 when the local ssh client itself was killed by a signal.
    pub status: i32,
    /// Everything the command wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything the command wrote to stderr.
    pub stderr: Vec<u8>,
    /// Time from the call to its end, connecting included.
    pub elapsed: Duration,
}

impl Output {
    /// stdout as text (invalid UTF-8 replaced), for parsing tool output.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (invalid UTF-8 replaced), for messages.
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Whether the remote command exited with status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// Why a remote operation did not complete. Every variant names the host;
/// the messages carry the time spent and, for ssh failures, ssh's own words
/// plus a hint of what to fix.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    /// No usable master connection: refused, unanswered, host key unknown or
    /// changed, key not accepted, or the connection died under a command.
    #[error("ssh to {host} failed after {after:.1?}: {message}")]
    Connect {
        /// The host as given to [`Remote`].
        host: String,
        /// ssh's message, shortened, with a hint where the fix is obvious.
        message: String,
        /// Time spent.
        after: Duration,
    },
    /// The command exceeded its time: killed remotely by `timeout`, or no
    /// answer came back before the local bound.
    #[error("ssh {host}: `{command}` timed out after {after:.1?}")]
    Timeout {
        /// The host as given to [`Remote`].
        host: String,
        /// The command, shortened.
        command: String,
        /// Time spent.
        after: Duration,
    },
    /// The command ran and exited non-zero (only from the checking calls).
    #[error("ssh {host}: `{command}` exited with status {status} after {elapsed:.1?}: {stderr}")]
    Failed {
        /// The host as given to [`Remote`].
        host: String,
        /// The command, shortened.
        command: String,
        /// Its exit status (see [`Output::status`]).
        status: i32,
        /// The last lines of its stderr.
        stderr: String,
        /// Time spent.
        elapsed: Duration,
    },
    /// A local problem: the ssh client cannot run, the control directory is
    /// unusable, a path or argument cannot be sent, data did not arrive intact.
    #[error("ssh {host}: {message}")]
    Io {
        /// The host as given to [`Remote`].
        host: String,
        /// What went wrong.
        message: String,
    },
}

/// ssh access to the nodes, shared by all the steps of one pgha run.
///
/// One master connection per host, opened on first use and reused by all
/// callers, concurrent ones included (pgha's rule: one ssh connection per host
/// for all its steps). A master that died (idle exit, host restarted) is
/// replaced on the next command.
pub struct Remote {
    opts: SshOptions,
    hosts: Mutex<HashMap<String, Arc<HostSlot>>>,
    files: Mutex<Files>,
}

#[derive(Default)]
struct HostSlot {
    state: tokio::sync::Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    session: Option<Arc<Session>>,
    /// `session` is another process's master ([`Remote::adopt`]): never
    /// closed here.
    borrowed: bool,
    /// The last failed connect, handed to the callers that were waiting for
    /// it instead of making each of them wait for its own timeout.
    failure: Option<(Instant, RemoteError)>,
}

#[derive(Default)]
struct Files {
    /// The control directory in use, once chosen.
    dir: Option<PathBuf>,
    created_dir: bool,
    config: Option<PathBuf>,
}

static CONFIG_SEQ: AtomicU64 = AtomicU64::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one run of the local ssh client returned.
struct Raw {
    status: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Remote {
    /// Prepare access with these options; nothing is touched until the first
    /// command to a host.
    pub fn new(opts: SshOptions) -> Remote {
        Remote {
            opts,
            hosts: Mutex::new(HashMap::new()),
            files: Mutex::new(Files::default()),
        }
    }

    /// Run `argv` on `host`: every argument quoted with [`quote`], the whole
    /// wrapped in `timeout -k 2 <secs>` remotely and bounded locally by the
    /// same time plus a small grace. A non-zero exit is not an error here: it
    /// is in [`Output::status`].
    pub async fn run(
        &self,
        host: &str,
        argv: &[&str],
        timeout: Duration,
    ) -> Result<Output, RemoteError> {
        let inner = self.argv_command(host, argv)?;
        self.exec(host, &shorten(&join(argv)), &inner, timeout, None)
            .await
    }

    /// Run a shell script (built by the caller with [`quote`]) through
    /// `sh -c` on `host`, under the same bounds as [`Remote::run`].
    pub async fn run_script(
        &self,
        host: &str,
        script: &str,
        timeout: Duration,
    ) -> Result<Output, RemoteError> {
        let inner = self.script_command(host, script)?;
        self.exec(host, &shorten(script), &inner, timeout, None)
            .await
    }

    /// Like [`Remote::run`], but a non-zero exit becomes
    /// [`RemoteError::Failed`] with the last lines of stderr.
    pub async fn check(
        &self,
        host: &str,
        argv: &[&str],
        timeout: Duration,
    ) -> Result<Output, RemoteError> {
        let out = self.run(host, argv, timeout).await?;
        checked(host, &shorten(&join(argv)), out)
    }

    /// The contents of `path` on `host` (`cat`).
    pub async fn read_file(
        &self,
        host: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<Vec<u8>, RemoteError> {
        Ok(self
            .check(host, &["cat", "--", path], timeout)
            .await?
            .stdout)
    }

    /// Replace `path` on `host` atomically with `data` and permissions
    /// `mode`: the data goes over stdin into a temporary file in the same
    /// directory, which is fsynced, checked against the MD5 of `data`,
    /// given its mode and renamed over `path`; the directory is then fsynced.
    /// Readers see the old file or the new one, never a partial one.
    pub async fn write_file(
        &self,
        host: &str,
        path: &str,
        data: &[u8],
        mode: u32,
        timeout: Duration,
    ) -> Result<(), RemoteError> {
        self.write_verified(host, path, data, mode, timeout)
            .await
            .map(|_| ())
    }

    /// Open the master for `host` now, so that a command soon after does
    /// not wait for ssh's handshake. A failure is kept as a command's would
    /// be; a command asked later connects again.
    pub async fn warm(&self, host: &str) -> Result<(), RemoteError> {
        self.session(host).await.map(|_| ())
    }

    /// The control socket of the master to `host`, opened first when
    /// needed, for another pgha process of this user to [`Remote::adopt`]
    /// while this `Remote` keeps it open: pgha-switchover lends its master
    /// to the old primary to the pgha-failover that pgpool starts, which
    /// then stops that node without an ssh handshake of its own.
    pub async fn lend(&self, host: &str) -> Result<PathBuf, RemoteError> {
        let session = self.session(host).await?;
        Ok(session.control_socket().to_path_buf())
    }

    /// Use for `host` the master another pgha process lent ([`Remote::lend`],
    /// control socket `ctl`), when the socket belongs to this user in a
    /// directory only this user may write, and the master answers `ssh -O
    /// check` within `bound`. The master stays its owner's: this `Remote`
    /// never closes it, and opens its own once it is gone. Returns whether
    /// it is in use.
    pub async fn adopt(&self, host: &str, ctl: &Path, bound: Duration) -> bool {
        if !lendable(ctl) {
            return false;
        }
        let slot = self.slot(host);
        let mut state = slot.state.lock().await;
        if state.session.is_some() {
            return false;
        }
        let session = Session::resume(ctl.into(), None);
        match tokio::time::timeout(bound, session.check()).await {
            Ok(Ok(())) => {
                state.session = Some(Arc::new(session));
                state.borrowed = true;
                true
            }
            _ => false,
        }
    }

    /// Close every master (`ssh -O exit`) and remove the control directory
    /// if this `Remote` created it. Commands still running on a master are
    /// cut off. The `Remote` stays usable: later commands reconnect. Dropping
    /// a `Remote` does the same, best effort.
    pub async fn close(&self) {
        let slots: Vec<Arc<HostSlot>> = lock(&self.hosts).drain().map(|(_, s)| s).collect();
        let bound = Duration::from_secs(whole_secs(self.opts.connect_timeout));
        for slot in slots {
            let mut state = slot.state.lock().await;
            let Some(session) = state.session.take() else {
                continue;
            };
            if std::mem::take(&mut state.borrowed) {
                // Its owner closes it; a resumed session does nothing on drop.
                continue;
            }
            drop(state);
            cleanup::remove(session.control_socket());
            match Arc::try_unwrap(session) {
                Ok(session) => {
                    let _ = tokio::time::timeout(bound, session.close()).await;
                }
                Err(shared) => {
                    // Still held by a running command: stop the master now;
                    // the directory goes when the last holder drops it.
                    let _ = tokio::time::timeout(bound, exit_master(shared.control_socket())).await;
                }
            }
        }
        self.remove_files();
    }

    fn argv_command(&self, host: &str, argv: &[&str]) -> Result<String, RemoteError> {
        if argv.is_empty() {
            return Err(io_error(host, "empty command".to_string()));
        }
        if let Some(arg) = argv.iter().find(|a| a.contains('\0')) {
            return Err(io_error(
                host,
                format!(
                    "argument {:?} contains a NUL byte, which ssh cannot pass",
                    shorten(arg)
                ),
            ));
        }
        Ok(join(argv))
    }

    fn script_command(&self, host: &str, script: &str) -> Result<String, RemoteError> {
        if script.contains('\0') {
            return Err(io_error(
                host,
                format!(
                    "script `{}` contains a NUL byte, which ssh cannot pass",
                    shorten(script)
                ),
            ));
        }
        Ok(format!("sh -c {}", quote(script)))
    }

    async fn write_verified(
        &self,
        host: &str,
        path: &str,
        data: &[u8],
        mode: u32,
        timeout: Duration,
    ) -> Result<String, RemoteError> {
        let Some((dir, base)) = split_path(path) else {
            return Err(io_error(
                host,
                format!("cannot write {path:?}: not a file path"),
            ));
        };
        let expected = md5_hex(data);
        let script = write_script(path, dir, base, mode, &expected);
        let shown = format!(
            "write {path} ({} bytes, mode {:04o})",
            data.len(),
            mode & 0o7777
        );
        let inner = self.script_command(host, &script)?;
        let out = self.exec(host, &shown, &inner, timeout, Some(data)).await?;
        let out = checked(host, &shown, out)?;
        let got = out.stdout_str().trim().to_string();
        if got != expected {
            return Err(io_error(
                host,
                format!("{shown}: md5sum on {host} says {got:?}, the data sent has {expected}"),
            ));
        }
        Ok(got)
    }

    /// Run one wrapped command with both bounds; see [`Remote::run`].
    async fn exec(
        &self,
        host: &str,
        shown: &str,
        inner: &str,
        timeout: Duration,
        stdin: Option<&[u8]>,
    ) -> Result<Output, RemoteError> {
        let start = Instant::now();
        let secs = whole_secs(timeout);
        let wrapped = wrap(inner, secs);
        // `-v`: every remote command in full, as quoted for the remote
        // shell (masked like every log line).
        tracing::debug!("ssh {host}: {wrapped}");
        let local_bound = Duration::from_secs(secs) + LOCAL_GRACE;
        let mut reconnected = false;
        loop {
            let session = self.session(host).await?;
            let attempt = tokio::time::timeout(local_bound, spawn(&session, &wrapped, stdin)).await;
            let raw = match attempt {
                Err(_) => {
                    // The remote `timeout` should have answered by now: the
                    // connection is presumably dead, do not reuse it.
                    self.forget(host, &session).await;
                    return Err(RemoteError::Timeout {
                        host: host.to_string(),
                        command: shown.to_string(),
                        after: start.elapsed(),
                    });
                }
                Ok(Err(message)) => return Err(io_error(host, format!("`{shown}`: {message}"))),
                Ok(Ok(raw)) => raw,
            };
            let elapsed = start.elapsed();
            if raw.status == 255 {
                if !reconnected && String::from_utf8_lossy(&raw.stderr).contains(MASTER_GONE) {
                    // The master was gone before the command started: nothing
                    // ran, so it is safe to run it once more on a new master.
                    self.forget(host, &session).await;
                    reconnected = true;
                    continue;
                }
                self.check_master(host, &session, shown, &raw.stderr, elapsed)
                    .await?;
            }
            // 124: TERM at the deadline worked; 137 or 255 (timeout re-raises
            // the KILL on itself): the command had to be killed.
            if matches!(raw.status, 124 | 137 | 255) && elapsed >= Duration::from_secs(secs) {
                return Err(RemoteError::Timeout {
                    host: host.to_string(),
                    command: shown.to_string(),
                    after: elapsed,
                });
            }
            return Ok(Output {
                status: raw.status,
                stdout: raw.stdout,
                stderr: raw.stderr,
                elapsed,
            });
        }
    }

    /// After an exit of 255 (ssh's own failure, or the command's): is the
    /// master still alive? If not, the connection was lost mid-command.
    async fn check_master(
        &self,
        host: &str,
        session: &Arc<Session>,
        shown: &str,
        stderr: &[u8],
        elapsed: Duration,
    ) -> Result<(), RemoteError> {
        let bound = Duration::from_secs(whole_secs(self.opts.connect_timeout));
        let alive = match tokio::time::timeout(bound, session.check()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => error_chain(&e),
            Err(_) => "the master does not answer `ssh -O check`".to_string(),
        };
        self.forget(host, session).await;
        let mut message = format!(
            "connection lost during `{shown}`: {}",
            clean_ssh_message(&alive)
        );
        let stderr = last_lines(stderr, STDERR_LINES);
        if !stderr.is_empty() {
            message.push_str(&format!(" (ssh: {stderr})"));
        }
        Err(RemoteError::Connect {
            host: host.to_string(),
            message,
            after: elapsed,
        })
    }

    fn slot(&self, host: &str) -> Arc<HostSlot> {
        lock(&self.hosts)
            .entry(host.to_string())
            .or_default()
            .clone()
    }

    /// The master for `host`, opened if there is none (or it has exited).
    async fn session(&self, host: &str) -> Result<Arc<Session>, RemoteError> {
        let asked = Instant::now();
        let slot = self.slot(host);
        let mut state = slot.state.lock().await;
        if let Some(session) = &state.session {
            if session.control_socket().exists() {
                return Ok(session.clone());
            }
            // The master exited (idle, or its host went away) and removed its
            // socket: replace it.
            state.session = None;
            state.borrowed = false;
        }
        if let Some((at, error)) = &state.failure
            && *at >= asked
        {
            return Err(error.clone());
        }
        match self.connect(host).await {
            Ok(session) => {
                let session = Arc::new(session);
                state.session = Some(session.clone());
                state.failure = None;
                Ok(session)
            }
            Err(error) => {
                state.failure = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// Stop using `session` for `host` (if it is still the current one); it
    /// is closed when the last running command drops it.
    async fn forget(&self, host: &str, session: &Arc<Session>) {
        let slot = self.slot(host);
        let mut state = slot.state.lock().await;
        if state
            .session
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            state.session = None;
            state.borrowed = false;
        }
    }

    async fn connect(&self, host: &str) -> Result<Session, RemoteError> {
        let start = Instant::now();
        // The openssh crate puts the destination after its options with no
        // `--`: a host starting with `-` would be an option. Hosts are
        // checked when the configuration is loaded; this is the last guard.
        if host.is_empty() {
            return Err(io_error(host, "refusing to ssh to an empty host".into()));
        }
        if let Some(problem) = crate::text::host_problem(host) {
            return Err(io_error(
                host,
                format!("refusing to ssh to {host:?}: {problem}"),
            ));
        }
        if let Some(key) = &self.opts.identity_file
            && let Err(e) = std::fs::File::open(key)
        {
            // ssh only warns on its stderr, which the master does not keep.
            return Err(RemoteError::Connect {
                host: host.to_string(),
                message: format!(
                    "cannot read the identity file {}: {e}; hint: {}",
                    key.display(),
                    self.hint(host, "Identity file not accessible")
                        .unwrap_or_default()
                ),
                after: start.elapsed(),
            });
        }
        let (dir, config) = self.prepare_files(host)?;
        let secs = whole_secs(self.opts.connect_timeout);
        let builder = self.builder(&dir, &config, secs);
        let bound = Duration::from_secs(secs) + CONNECT_GRACE;
        match tokio::time::timeout(bound, builder.connect(host)).await {
            Ok(Ok(session)) => {
                tracing::debug!(host, elapsed = ?start.elapsed(), "ssh master connected");
                cleanup::add_socket(session.control_socket(), Duration::from_secs(secs));
                Ok(session)
            }
            Ok(Err(e)) => {
                let text = match &e {
                    openssh::Error::Connect(inner) => inner.to_string(),
                    other => error_chain(other),
                };
                let message = clean_ssh_message(&text);
                let message = match self.hint(host, &message) {
                    Some(hint) => format!("{message}; hint: {hint}"),
                    None => message,
                };
                Err(RemoteError::Connect {
                    host: host.to_string(),
                    message,
                    after: start.elapsed(),
                })
            }
            Err(_) => Err(RemoteError::Connect {
                host: host.to_string(),
                message: format!(
                    "no completed ssh handshake within {secs}s (ConnectTimeout); hint: {}",
                    self.unreachable_hint(host, secs)
                ),
                after: start.elapsed(),
            }),
        }
    }

    /// The master's ssh options: strict host keys, ConnectTimeout and
    /// ServerAliveInterval of `[ssh] connect_timeout`, our control
    /// directory and configuration file.
    fn builder(&self, dir: &Path, config: &Path, secs: u64) -> SessionBuilder {
        let mut builder = SessionBuilder::default();
        builder
            .user(self.opts.user.clone())
            .port(self.opts.port)
            .known_hosts_check(KnownHosts::Strict)
            .connect_timeout(Duration::from_secs(secs))
            .server_alive_interval(Duration::from_secs(secs))
            .control_directory(dir)
            .control_persist(ControlPersist::IdleFor(
                NonZeroUsize::new(MASTER_IDLE_SECS).expect("non-zero"),
            ))
            .config_file(config);
        if let Some(key) = &self.opts.identity_file {
            builder.keyfile(key);
        }
        if let Some(known_hosts) = &self.opts.known_hosts_file {
            builder.user_known_hosts_file(known_hosts);
        }
        builder
    }

    /// Choose (and create) the control directory and write this
    /// `Remote`'s ssh configuration file in it; returns both paths.
    fn prepare_files(&self, host: &str) -> Result<(PathBuf, PathBuf), RemoteError> {
        let mut files = lock(&self.files);
        if let (Some(dir), Some(config)) = (&files.dir, &files.config)
            && config.exists()
        {
            return Ok((dir.clone(), config.clone()));
        }
        let (dir, created) = match &files.dir {
            Some(dir) => (dir.clone(), false),
            None => {
                let chosen = match &self.opts.control_dir {
                    Some(dir) => configured_control_dir(dir),
                    None => default_control_dir(),
                };
                chosen.map_err(|message| io_error(host, message))?
            }
        };
        if created {
            files.created_dir = true;
            cleanup::add_dir(&dir);
        }
        files.dir = Some(dir.clone());
        let config = write_config_file(&dir).map_err(|message| io_error(host, message))?;
        cleanup::add_file(&config);
        files.config = Some(config.clone());
        Ok((dir, config))
    }

    fn remove_files(&self) {
        let mut files = lock(&self.files);
        if let Some(config) = files.config.take() {
            let _ = std::fs::remove_file(&config);
            cleanup::remove(&config);
        }
        if std::mem::take(&mut files.created_dir)
            && let Some(dir) = files.dir.take()
        {
            // Only if empty: a master still in use keeps its directory there.
            let _ = std::fs::remove_dir(&dir);
            cleanup::remove(&dir);
        }
    }

    fn known_hosts_shown(&self) -> String {
        match &self.opts.known_hosts_file {
            Some(p) => p.display().to_string(),
            None => "~/.ssh/known_hosts".to_string(),
        }
    }

    fn unreachable_hint(&self, host: &str, secs: u64) -> String {
        format!(
            "{host} port {} did not answer within {secs}s: the host is down or drops packets",
            self.opts.port
        )
    }

    /// What to fix, for the ssh failures whose cause is clear.
    fn hint(&self, host: &str, message: &str) -> Option<String> {
        let port = self.opts.port;
        let here = local_hostname();
        let me = local_user();
        let known_hosts = self.known_hosts_shown();
        let host_spec = if port == 22 {
            host.to_string()
        } else {
            format!("[{host}]:{port}")
        };
        let key = match &self.opts.identity_file {
            Some(k) => k.display().to_string(),
            None => format!("the default key of {me}"),
        };
        let user = &self.opts.user;
        let secs = whole_secs(self.opts.connect_timeout);
        let m = message.to_ascii_lowercase();
        let hint = if m.contains("identification has changed")
            || m.contains("has changed and you have")
        {
            format!(
                "the host key of {host} is not the one in {known_hosts} of {me} on {here}: if {host} \
                 was reinstalled, remove the old key (ssh-keygen -R '{host_spec}' -f {known_hosts}) \
                 and add the new one after checking its fingerprint; otherwise suspect an impostor"
            )
        } else if m.contains("host key verification failed") || m.contains("host key is known") {
            format!(
                "add the host key of {host} to {known_hosts} of {me} on {here} (get it with \
                 ssh-keyscan -p {port} {host} and check its fingerprint on {host})"
            )
        } else if m.contains("unprotected private key") || m.contains("bad permissions") {
            format!("make the key {key} readable by {me} only (chmod 600)")
        } else if m.contains("not accessible") || m.contains("no such identity") {
            format!("the key {key} is missing or unreadable for {me} on {here}")
        } else if m.contains("permission denied (") {
            format!(
                "the key {key} is not accepted for {user}@{host}: add its public key to \
                 ~{user}/.ssh/authorized_keys on {host}"
            )
        } else if m.contains("connection refused") {
            format!("nothing listens on {host} port {port}: is sshd running there?")
        } else if m.contains("timed out") {
            self.unreachable_hint(host, secs)
        } else if m.contains("no route to host") || m.contains("network is unreachable") {
            format!("{host} is unreachable from {here}")
        } else if m.contains("could not resolve hostname") {
            format!("{host} is not a name {here} can resolve: use its address or fix /etc/hosts")
        } else {
            return None;
        };
        Some(hint)
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        // Dropping a master runs `ssh -O exit` and removes its directory.
        drop(std::mem::take(
            self.hosts.get_mut().unwrap_or_else(PoisonError::into_inner),
        ));
        self.remove_files();
    }
}

/// What must not outlive a run killed by a signal: `systemctl stop` and
/// pgpool's shutdown send SIGTERM, which skips every destructor. The ssh
/// masters are told to exit, then the files and directories pgha made in
/// the control directory are removed, then the process exits 128 + signal.
mod cleanup {
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, Once};
    use std::time::Duration;

    #[derive(Default)]
    struct Registry {
        /// Control sockets of live masters, with the bound for `-O exit`.
        sockets: Vec<(PathBuf, Duration)>,
        /// Files pgha created.
        files: Vec<PathBuf>,
        /// Directories pgha created, removed with what is inside.
        dirs: Vec<PathBuf>,
    }

    static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);
    static HANDLER: Once = Once::new();

    fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut g = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        f(g.get_or_insert_with(Registry::default))
    }

    pub fn add_file(p: &Path) {
        install();
        with(|r| r.files.push(p.to_path_buf()));
    }

    pub fn add_dir(p: &Path) {
        install();
        with(|r| r.dirs.push(p.to_path_buf()));
    }

    pub fn add_socket(p: &Path, bound: Duration) {
        install();
        with(|r| r.sockets.push((p.to_path_buf(), bound)));
    }

    /// Forget `p` (removed normally, or a master closed).
    pub fn remove(p: &Path) {
        with(|r| {
            r.files.retain(|f| f != p);
            r.dirs.retain(|d| d != p);
            r.sockets.retain(|(s, _)| s != p);
        });
    }

    /// Listen for TERM, INT and HUP once per process, where a tokio runtime
    /// runs (every pgha binary).
    fn install() {
        HANDLER.call_once(|| {
            let Ok(handle) = tokio::runtime::Handle::try_current() else {
                return;
            };
            handle.spawn(async {
                use tokio::signal::unix::{SignalKind, signal};
                let kinds = [
                    (SignalKind::terminate(), libc::SIGTERM, "SIGTERM"),
                    (SignalKind::interrupt(), libc::SIGINT, "SIGINT"),
                    (SignalKind::hangup(), libc::SIGHUP, "SIGHUP"),
                ];
                let mut waits = Vec::new();
                for (kind, number, name) in kinds {
                    if let Ok(mut s) = signal(kind) {
                        waits.push(Box::pin(async move {
                            s.recv().await;
                            (number, name)
                        }));
                    }
                }
                if waits.is_empty() {
                    return;
                }
                let ((number, name), _, _) = futures::future::select_all(waits).await;
                run();
                eprintln!(
                    "pgha[{}]: stopped by {name}; ssh masters closed and control files removed",
                    std::process::id()
                );
                std::process::exit(128 + number);
            });
        });
    }

    /// Close the masters and remove what pgha created, synchronously.
    pub fn run() {
        let r = REGISTRY
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        for (socket, bound) in &r.sockets {
            exit_master_blocking(socket, *bound);
            if let Some(dir) = socket.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        for f in &r.files {
            let _ = std::fs::remove_file(f);
        }
        for d in &r.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// `ssh -S SOCKET -O exit -- none`, killed after `bound`.
    fn exit_master_blocking(socket: &Path, bound: Duration) {
        use std::process::{Command, Stdio};
        let Ok(mut child) = Command::new("ssh")
            .arg("-S")
            .arg(socket)
            .args(["-O", "exit", "--", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            return;
        };
        let start = std::time::Instant::now();
        while start.elapsed() < bound {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(bound / 50);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Run the wrapped command once on `session`, feeding `stdin` and collecting
/// both outputs concurrently (a full pipe must not block the remote side).
async fn spawn(session: &Session, command: &str, stdin: Option<&[u8]>) -> Result<Raw, String> {
    let mut cmd = session.raw_command(command);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .await
        .map_err(|e| format!("cannot start the local ssh client: {}", error_chain(&e)))?;
    let input = child.stdin().take();
    let output = child.stdout().take();
    let errors = child.stderr().take();
    let feed = async move {
        if let (Some(mut input), Some(data)) = (input, stdin) {
            input.write_all(data).await?;
            input.flush().await?;
        }
        Ok::<_, io::Error>(())
    };
    let read_out = async move {
        let mut buf = Vec::new();
        if let Some(mut r) = output {
            r.read_to_end(&mut buf).await?;
        }
        Ok::<_, io::Error>(buf)
    };
    let read_err = async move {
        let mut buf = Vec::new();
        if let Some(mut r) = errors {
            r.read_to_end(&mut buf).await?;
        }
        Ok::<_, io::Error>(buf)
    };
    let (fed, stdout, stderr) = tokio::join!(feed, read_out, read_err);
    let stdout = stdout.map_err(|e| format!("reading stdout: {e}"))?;
    let stderr = stderr.map_err(|e| format!("reading stderr: {e}"))?;
    let status = match child.wait().await {
        Ok(status) => status.code().unwrap_or(-1),
        Err(openssh::Error::RemoteProcessTerminated) => 255,
        Err(openssh::Error::Remote(e)) if e.kind() == io::ErrorKind::NotFound => 127,
        Err(e) => {
            return Err(format!(
                "waiting for the local ssh client: {}",
                error_chain(&e)
            ));
        }
    };
    if let Err(e) = fed
        && status == 0
    {
        return Err(format!("the remote command stopped reading its input: {e}"));
    }
    Ok(Raw {
        status,
        stdout,
        stderr,
    })
}

/// `ssh -O exit` on a control socket, for a master that is still shared.
async fn exit_master(socket: &Path) {
    let _ = tokio::process::Command::new("ssh")
        .arg("-S")
        .arg(socket)
        .args(["-O", "exit", "--", "none"])
        .stdin(StdStdio::null())
        .stdout(StdStdio::null())
        .stderr(StdStdio::null())
        .kill_on_drop(true)
        .status()
        .await;
}

/// Whether `ctl` may be a master lent by this user: a socket owned by the
/// effective user, in a directory that is this user's and that nobody else
/// may write (ssh's client does not check who runs the master it talks to).
fn lendable(ctl: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    let me = crate::files::euid();
    let Ok(socket) = std::fs::symlink_metadata(ctl) else {
        return false;
    };
    let Some(dir) = ctl.parent() else {
        return false;
    };
    let Ok(dir) = std::fs::symlink_metadata(dir) else {
        return false;
    };
    socket.file_type().is_socket()
        && socket.uid() == me
        && dir.is_dir()
        && dir.uid() == me
        && dir.mode() & 0o022 == 0
}

/// Where the control sockets go when `ssh.control_dir` is not set, best
/// first: `$XDG_RUNTIME_DIR/pgha`, then `/run/user/UID/pgha` (both
/// private to the user by construction, on tmpfs, and short). When neither
/// exists (system users such as `postgres` seldom have one), a new
/// `/tmp/pgha-XXXXXX` is created for each run ([`make_temp_dir`]): a random
/// name made exclusively with mode 0700, so nothing another user planted
/// in `/tmp` can be in the way.
pub fn default_control_dirs(xdg_runtime_dir: Option<&Path>, uid: u32) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(xdg) = xdg_runtime_dir.filter(|p| p.is_absolute()) {
        v.push(xdg.join("pgha"));
    }
    let run = PathBuf::from(format!("/run/user/{uid}/pgha"));
    if !v.contains(&run) {
        v.push(run);
    }
    v
}

/// The first usable [`default_control_dirs`] entry whose parent is a
/// private directory, or a fresh temporary one; `true` when pgha created
/// it (and removes it at the end).
fn default_control_dir() -> Result<(PathBuf, bool), String> {
    let xdg = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    for dir in default_control_dirs(xdg.as_deref(), crate::files::euid()) {
        let parent_ok = dir
            .parent()
            .is_some_and(|p| crate::files::private_dir_problem(p).is_none());
        if !parent_ok || dir.as_os_str().len() > CONTROL_DIR_MAX {
            continue;
        }
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(_) => continue,
        }
        if crate::files::private_dir_problem(&dir).is_none() {
            return Ok((dir, false));
        }
    }
    make_temp_dir(Path::new("/tmp"), "pgha-")
        .map(|d| (d, true))
        .map_err(|e| format!("cannot create a private control directory in /tmp: {e}; set ssh.control_dir to a directory only this user may write"))
}

/// `ssh.control_dir` as configured: created (0700) when missing, and
/// refused unless private to this user.
fn configured_control_dir(dir: &Path) -> Result<(PathBuf, bool), String> {
    let len = dir.as_os_str().len();
    if len > CONTROL_DIR_MAX {
        return Err(format!(
            "control directory {} is {len} bytes long: the ssh control sockets inside it \
             would exceed the unix socket path limit; use one of at most \
             {CONTROL_DIR_MAX} bytes",
            dir.display()
        ));
    }
    let mut created = false;
    if std::fs::symlink_metadata(dir).is_err() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create control directory {}: {e}", dir.display()))?;
        created = true;
    }
    if let Some(problem) = crate::files::private_dir_problem(dir) {
        return Err(format!(
            "ssh.control_dir {} is not private: {problem} (or remove ssh.control_dir to use a private default)",
            dir.display()
        ));
    }
    Ok((dir.to_path_buf(), created))
}

/// A new directory `PARENT/PREFIXxxxxxx` with a random name, mode 0700,
/// made by `mkdtemp(3)` (exclusive: it never reuses what exists).
pub fn make_temp_dir(parent: &Path, prefix: &str) -> io::Result<PathBuf> {
    use std::os::unix::ffi::OsStringExt as _;
    let mut template = parent
        .join(format!("{prefix}XXXXXX"))
        .into_os_string()
        .into_vec();
    template.push(0);
    // SAFETY: `template` is a writable NUL-terminated buffer that mkdtemp
    // fills in place.
    let p = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
    if p.is_null() {
        return Err(io::Error::last_os_error());
    }
    template.pop();
    Ok(PathBuf::from(std::ffi::OsString::from_vec(template)))
}

/// Write the `ssh -F` file in `dir`: created exclusively (`O_EXCL`) and
/// never through a link (`O_NOFOLLOW`), so nothing planted under its name
/// (a FIFO, a link to another file) is opened.
fn write_config_file(dir: &Path) -> Result<PathBuf, String> {
    let mut last = None;
    for _ in 0..3 {
        let config = dir.join(format!(
            "pgha-{}-{}.ssh_config",
            std::process::id(),
            CONFIG_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&config);
        match opened {
            Ok(mut f) => {
                return f
                    .write_all(ssh_config_text().as_bytes())
                    .map(|()| config.clone())
                    .map_err(|e| format!("cannot write {}: {e}", config.display()));
            }
            // Left by a killed run whose pid came back: take the next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some((config, e)),
            Err(e) => return Err(format!("cannot create {}: {e}", config.display())),
        }
    }
    let (config, e) = last.expect("tried at least once");
    Err(format!("cannot create {}: {e}", config.display()))
}

/// The file passed with `ssh -F`: options the `openssh` crate has no setter
/// for, then the usual configuration files (first value wins in ssh, and the
/// command line comes before all of them).
fn ssh_config_text() -> String {
    format!(
        "# written by pgha for its ssh masters; removed when pgha exits\n\
         ServerAliveCountMax {SERVER_ALIVE_COUNT_MAX}\n\
         Include ~/.ssh/config\n\
         Include /etc/ssh/ssh_config\n"
    )
}

/// Quote `s` as one word for a POSIX shell: unchanged when it has only
/// characters no shell treats specially, otherwise in single quotes (inside
/// which only `'` needs care: `'\''`). The remote side of ssh always goes
/// through the login shell, so every argument needs this.
pub fn quote(s: &str) -> String {
    let safe = |b: u8| b.is_ascii_alphanumeric() || b"_./:=@%+,-".contains(&b);
    if !s.is_empty() && s.bytes().all(safe) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// `argv` as one shell command line, each word [`quote`]d. A first word
/// containing `=` is quoted too, or the shell would take it for a variable
/// assignment.
pub fn join(argv: &[&str]) -> String {
    argv.iter()
        .enumerate()
        .map(|(i, a)| {
            if i == 0 && a.contains('=') {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                quote(a)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `timeout` in whole seconds, rounded up, at least 1 (`timeout 0` would
/// mean no limit).
fn whole_secs(timeout: Duration) -> u64 {
    let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    secs.max(1)
}

/// The remote command line: `inner` (already quoted) under `timeout`, which
/// sends TERM to the whole process group at the deadline and KILL
/// [`KILL_AFTER_SECS`] later.
fn wrap(inner: &str, secs: u64) -> String {
    format!("timeout -k {KILL_AFTER_SECS} {secs} {inner}")
}

/// `Ok` when `out` succeeded, else [`RemoteError::Failed`].
fn checked(host: &str, shown: &str, out: Output) -> Result<Output, RemoteError> {
    if out.success() {
        return Ok(out);
    }
    let stderr = last_lines(&out.stderr, STDERR_LINES);
    Err(RemoteError::Failed {
        host: host.to_string(),
        command: shown.to_string(),
        status: out.status,
        stderr: if stderr.is_empty() {
            "(no stderr)".to_string()
        } else {
            stderr
        },
        elapsed: out.elapsed,
    })
}

/// Directory and file name of a remote file path.
fn split_path(path: &str) -> Option<(&str, &str)> {
    let (dir, base) = match path.rsplit_once('/') {
        Some(("", base)) => ("/", base),
        Some((dir, base)) => (dir, base),
        None => (".", path),
    };
    if base.is_empty() || base == "." || base == ".." {
        return None;
    }
    Some((dir, base))
}

/// The remote side of an atomic, verified write; the data arrives on stdin.
fn write_script(path: &str, dir: &str, base: &str, mode: u32, md5: &str) -> String {
    let (qpath, qdir) = (quote(path), quote(dir));
    let tmp = format!("{qdir}/{}", quote(&format!(".{base}.pgha-tmp")));
    format!(
        "umask 077\n\
         t={tmp}.$$\n\
         trap 'rm -f -- \"$t\"' EXIT\n\
         trap 'exit 129' HUP\n\
         trap 'exit 130' INT\n\
         trap 'exit 143' TERM\n\
         if [ -d {qpath} ]; then printf '%s: is a directory\\n' {qpath} >&2; exit 1; fi\n\
         cat > \"$t\" || exit 1\n\
         sync -- \"$t\" || exit 1\n\
         s=$(md5sum < \"$t\") || exit 1\n\
         s=${{s%% *}}\n\
         printf '%s\\n' \"$s\"\n\
         if [ \"$s\" != {md5} ]; then printf 'checksum mismatch: %s has %s, expected %s\\n' \"$t\" \"$s\" {md5} >&2; exit 1; fi\n\
         chmod {mode:o} \"$t\" || exit 1\n\
         mv -f -- \"$t\" {qpath} || exit 1\n\
         sync -- {qdir}\n",
        mode = mode & 0o7777,
    )
}

fn md5_hex(data: &[u8]) -> String {
    crate::text::md5_hex(&[data])
}

/// One line of at most [`SHOWN_MAX`] characters for messages.
fn shorten(s: &str) -> String {
    let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= SHOWN_MAX {
        return flat;
    }
    let mut cut: String = flat.chars().take(SHOWN_MAX - 1).collect();
    cut.push('…');
    cut
}

/// The last `n` non-empty lines of `bytes`, on one line.
fn last_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// ssh's stderr on one line: banners of `@` and the "ssh: " prefixes dropped,
/// the last lines (where ssh states its conclusion) kept.
fn clean_ssh_message(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim())
        .map(|l| l.strip_prefix("ssh: ").unwrap_or(l))
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '@'))
        .filter(|l| !l.starts_with("Warning: Permanently added"))
        .collect();
    let kept = lines[lines.len().saturating_sub(2)..].join(" | ");
    if kept.is_empty() {
        "ssh exited without a message".to_string()
    } else {
        kept
    }
}

/// An error and its sources, `: `-separated (openssh puts ssh's own message in
/// the source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn io_error(host: &str, message: String) -> RemoteError {
    RemoteError::Io {
        host: host.to_string(),
        message,
    }
}

/// Name of the local effective user, for hints.
fn local_user() -> String {
    // SAFETY: getpwuid_r writes only into `pwd` and `buf`, both owned here and
    // large enough as declared; `result` is checked before use.
    unsafe {
        let uid = libc::geteuid();
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc == 0 && !result.is_null() && !pwd.pw_name.is_null() {
            std::ffi::CStr::from_ptr(pwd.pw_name)
                .to_string_lossy()
                .into_owned()
        } else {
            format!("uid {uid}")
        }
    }
}

/// Name of this machine, for hints.
fn local_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "this host".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `sh` makes of `line`, one word per line (via printf).
    fn sh_words(line: &str) -> Vec<String> {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("for w in {line}; do printf '%s\\0' \"$w\"; done"))
            .output()
            .expect("sh runs");
        assert!(out.status.success(), "{:?}", out);
        let text = String::from_utf8(out.stdout).unwrap();
        text.split_terminator('\0').map(str::to_string).collect()
    }

    #[test]
    fn quote_leaves_safe_words_alone() {
        assert_eq!(quote("abc"), "abc");
        assert_eq!(
            quote("/var/lib/postgresql/15/main"),
            "/var/lib/postgresql/15/main"
        );
        assert_eq!(
            quote("host=127.0.0.2,port=5432"),
            "host=127.0.0.2,port=5432"
        );
        assert_eq!(quote("a%b+c@d:e-f_g"), "a%b+c@d:e-f_g");
    }

    #[test]
    fn quote_wraps_everything_else() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("a\nb"), "'a\nb'");
        assert_eq!(quote("$HOME"), "'$HOME'");
        assert_eq!(quote("`id`"), "'`id`'");
        assert_eq!(quote("~"), "'~'");
        assert_eq!(quote("*"), "'*'");
        assert_eq!(quote("'"), "''\\'''");
        assert_eq!(quote("é"), "'é'");
    }

    #[test]
    fn quoted_words_survive_a_real_shell() {
        let nasty = [
            "",
            "it's",
            "a b",
            "two\nlines",
            "$HOME",
            "${x:-y}",
            "`id`",
            "$(id)",
            "\\",
            "\"",
            "''",
            "a;b|c&d>e<f",
            "*",
            "-n",
            "tab\there",
            "ünï",
        ];
        let line = nasty.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ");
        assert_eq!(sh_words(&line), nasty);
    }

    #[test]
    fn join_quotes_each_word() {
        assert_eq!(
            join(&["pg_ctl", "-D", "/data dir", "promote"]),
            "pg_ctl -D '/data dir' promote"
        );
        assert_eq!(join(&["echo", "", "x"]), "echo '' x");
        assert_eq!(join(&[]), "");
    }

    #[test]
    fn join_keeps_a_first_word_with_equals_from_being_an_assignment() {
        assert_eq!(join(&["a=b", "c=d"]), "'a=b' c=d");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(join(&["PATH=/nonexistent", "true"]))
            .output()
            .unwrap();
        assert!(!out.status.success(), "ran as an assignment: {out:?}");
    }

    #[test]
    fn timeouts_round_up_to_whole_seconds() {
        assert_eq!(whole_secs(Duration::ZERO), 1);
        assert_eq!(whole_secs(Duration::from_millis(1)), 1);
        assert_eq!(whole_secs(Duration::from_secs(1)), 1);
        assert_eq!(whole_secs(Duration::from_millis(1001)), 2);
        assert_eq!(whole_secs(Duration::from_millis(4500)), 5);
        assert_eq!(whole_secs(Duration::from_secs(30)), 30);
    }

    #[test]
    fn wrapper_puts_the_command_under_timeout() {
        let line = join(&["sleep", "10"]);
        assert_eq!(
            wrap(&line, whole_secs(Duration::from_millis(2500))),
            "timeout -k 2 3 sleep 10"
        );
        assert_eq!(
            wrap(&line, whole_secs(Duration::ZERO)),
            "timeout -k 2 1 sleep 10"
        );
        let script = format!("sh -c {}", quote("echo 'x'; exit 3"));
        assert_eq!(
            wrap(&script, 7),
            "timeout -k 2 7 sh -c 'echo '\\''x'\\''; exit 3'"
        );
    }

    #[test]
    fn wrapped_script_runs_and_keeps_its_status() {
        let script = format!("sh -c {}", quote("printf '%s' \"it's $((1+1))\"; exit 3"));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(wrap(&script, 5))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"it's 2");
    }

    #[test]
    fn paths_split_into_directory_and_name() {
        assert_eq!(split_path("/a/b/c.history"), Some(("/a/b", "c.history")));
        assert_eq!(split_path("/c"), Some(("/", "c")));
        assert_eq!(split_path("c"), Some((".", "c")));
        assert_eq!(split_path("a dir/c"), Some(("a dir", "c")));
        assert_eq!(split_path("/a/"), None);
        assert_eq!(split_path("/a/.."), None);
        assert_eq!(split_path(""), None);
    }

    #[test]
    fn write_script_replaces_atomically_and_checks_the_sum() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("it's a file");
        std::fs::write(&target, "old").unwrap();
        let path = target.to_str().unwrap();
        let (d, b) = split_path(path).unwrap();
        let data = b"new contents\n";
        let run = |md5: &str| {
            let mut child = std::process::Command::new("sh")
                .arg("-c")
                .arg(write_script(path, d, b, 0o640, md5))
                .stdin(StdStdio::piped())
                .stdout(StdStdio::piped())
                .stderr(StdStdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(data).unwrap();
            child.wait_with_output().unwrap()
        };
        let bad = run("00000000000000000000000000000000");
        assert!(!bad.status.success());
        assert!(String::from_utf8_lossy(&bad.stderr).contains("checksum mismatch"));
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        let good = run(&md5_hex(data));
        assert!(good.status.success(), "{good:?}");
        assert_eq!(String::from_utf8_lossy(&good.stdout).trim(), md5_hex(data));
        assert_eq!(std::fs::read(&target).unwrap(), data);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o640);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "temporary file left behind: {left:?}");
    }

    #[test]
    fn md5_matches_md5sum() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn long_commands_are_shortened_to_one_line() {
        assert_eq!(shorten("a\n  b\tc"), "a b c");
        let long = "x".repeat(500);
        let s = shorten(&long);
        assert_eq!(s.chars().count(), SHOWN_MAX);
        assert!(s.ends_with('…'));
    }

    #[test]
    fn stderr_keeps_the_last_lines() {
        assert_eq!(last_lines(b"1\n2\n\n3\n4\n5\n6\n", 5), "2 | 3 | 4 | 5 | 6");
        assert_eq!(last_lines(b"", 5), "");
    }

    #[test]
    fn ssh_messages_lose_banners_and_keep_the_conclusion() {
        let changed = "@@@@@@@@@@@\r\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n@@@@@@@@@@@\r\n\
                       IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\r\n\
                       Offending ED25519 key in /k:1\r\n\
                       Host key for 127.0.0.2 has changed and you have requested strict checking.\r\n\
                       Host key verification failed.\r\n";
        let m = clean_ssh_message(changed);
        assert!(m.ends_with("Host key verification failed."), "{m}");
        assert!(!m.contains("@@"), "{m}");
        assert_eq!(
            clean_ssh_message("ssh: connect to host 127.0.0.9 port 22: Connection refused\n"),
            "connect to host 127.0.0.9 port 22: Connection refused"
        );
        assert_eq!(clean_ssh_message(""), "ssh exited without a message");
    }

    fn remote() -> Remote {
        Remote::new(SshOptions {
            user: "postgres".into(),
            port: 2222,
            identity_file: Some("/k/id_ed25519".into()),
            known_hosts_file: Some("/k/known_hosts".into()),
            connect_timeout: Duration::from_millis(2500),
            control_dir: Some("/tmp/pgha-test".into()),
        })
    }

    #[test]
    fn hints_name_what_to_fix() {
        let r = remote();
        let h = r.hint("127.0.0.2", "No ED25519 host key is known for [127.0.0.2]:2222 and you have requested strict checking. | Host key verification failed.").unwrap();
        assert!(
            h.contains("add the host key of 127.0.0.2 to /k/known_hosts of "),
            "{h}"
        );
        let h = r.hint("127.0.0.2", "Host key for [127.0.0.2]:2222 has changed and you have requested strict checking. | Host key verification failed.").unwrap();
        assert!(
            h.contains("ssh-keygen -R '[127.0.0.2]:2222' -f /k/known_hosts"),
            "{h}"
        );
        let h = r
            .hint(
                "127.0.0.2",
                "postgres@127.0.0.2: Permission denied (publickey).",
            )
            .unwrap();
        assert!(
            h.contains("/k/id_ed25519")
                && h.contains("~postgres/.ssh/authorized_keys on 127.0.0.2"),
            "{h}"
        );
        let h = r
            .hint(
                "127.0.0.2",
                "connect to host 127.0.0.2 port 2222: Connection timed out",
            )
            .unwrap();
        assert!(h.contains("within 3s"), "{h}");
        assert!(
            r.hint(
                "127.0.0.2",
                "connect to host 127.0.0.2 port 2222: Connection refused"
            )
            .unwrap()
            .contains("sshd")
        );
        assert!(r.hint("127.0.0.2", "something new").is_none());
    }

    #[test]
    fn errors_read_as_one_line_with_context() {
        let e = RemoteError::Failed {
            host: "127.0.0.3".into(),
            command: "cat -- /x".into(),
            status: 1,
            stderr: "cat: /x: No such file or directory".into(),
            elapsed: Duration::from_millis(1234),
        };
        assert_eq!(
            e.to_string(),
            "ssh 127.0.0.3: `cat -- /x` exited with status 1 after 1.2s: cat: /x: No such file or directory"
        );
        let e = RemoteError::Timeout {
            host: "127.0.0.3".into(),
            command: "sleep 100".into(),
            after: Duration::from_millis(3050),
        };
        assert_eq!(
            e.to_string(),
            "ssh 127.0.0.3: `sleep 100` timed out after 3.0s"
        );
    }

    #[tokio::test]
    async fn bad_arguments_fail_before_any_connection() {
        let r = remote();
        let e = r
            .run("127.0.0.2", &[], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, RemoteError::Io { .. }), "{e}");
        let e = r
            .run("127.0.0.2", &["echo", "a\0b"], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");
        let e = r
            .write_file("127.0.0.2", "/tmp/", b"x", 0o600, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not a file path"), "{e}");
    }

    #[test]
    fn only_this_users_socket_in_a_private_directory_is_lendable() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let ctl = dir.path().join("master");
        assert!(!lendable(&ctl), "missing");
        std::fs::write(&ctl, b"").unwrap();
        assert!(!lendable(&ctl), "a regular file");
        std::fs::remove_file(&ctl).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(&ctl).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(lendable(&ctl));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(!lendable(&ctl), "a directory others may write");
    }

    #[tokio::test]
    async fn an_unanswering_lent_master_is_not_adopted() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let ctl = dir.path().join("master");
        // A socket nobody accepts on: `ssh -O check` fails.
        drop(std::os::unix::net::UnixListener::bind(&ctl).unwrap());
        let remote = remote();
        assert!(
            !remote
                .adopt("127.0.0.1", &ctl, Duration::from_secs(3))
                .await
        );
    }

    #[tokio::test]
    async fn a_too_long_control_dir_is_refused_with_its_length() {
        let mut opts = remote().opts.clone();
        opts.identity_file = None;
        opts.control_dir = Some(PathBuf::from(format!("/tmp/{}", "d".repeat(80))));
        let r = Remote::new(opts);
        let e = r
            .run("127.0.0.2", &["true"], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("85 bytes long"), "{e}");
    }

    #[tokio::test]
    async fn a_missing_identity_file_is_named_before_ssh_runs() {
        let r = remote();
        let e = r
            .run("127.0.0.2", &["true"], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, RemoteError::Connect { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("cannot read the identity file /k/id_ed25519"),
            "{e}"
        );
    }

    #[test]
    fn remote_is_send_and_sync() {
        fn both<T: Send + Sync>() {}
        both::<Remote>();
        both::<RemoteError>();
    }
}
