//! Making a node a standby again when repointing is not enough: stop and
//! start it over ssh, `pg_rewind` it from the primary, or rebuild it with
//! `pg_basebackup` where `[follow] rebuild` allows; in both cases the
//! node keeps its own configuration files (`postgresql.conf`,
//! `postgresql.auto.conf`, `pg_hba.conf`, `pg_ident.conf`), which both
//! tools overwrite with the source's.
//!
//! Every step looks first whether it is done: a stopped server is not
//! stopped again, and a data directory that `pg_rewind` or
//! `pg_basebackup` finished but that never started since (its
//! `backup_label` says so) is not rewound again: a second `pg_rewind`
//! would first run crash recovery on it and write WAL the primary never
//! had.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tracing::info;

use crate::cluster::{Node, Topology};
use crate::error::{Error, Result};
use crate::pgconf::{conf_value, standby_settings};
use crate::postgres;
use crate::remote::{self, Remote, RemoteError};
use crate::steps::{self, budget};

/// What `pg_ctl status` says about a node's data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerStatus {
    /// A postmaster runs on it (exit 0).
    Running,
    /// No server runs (exit 3).
    Stopped,
    /// No data directory there, or not one pg_ctl can read (exit 4).
    NoDataDirectory,
}

/// `pg_ctl status` on the node over ssh, bounded by `[ssh]
/// command_timeout`.
pub(crate) async fn server_status(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    deadline: Instant,
) -> Result<ServerStatus> {
    let t = budget(deadline, topo.config.ssh.command_timeout);
    let out = steps::pg_ctl(topo, remote, node, &["status"], t).await?;
    match out.status {
        0 => Ok(ServerStatus::Running),
        3 => Ok(ServerStatus::Stopped),
        4 => Ok(ServerStatus::NoDataDirectory),
        s => Err(Error::Step(format!(
            "pg_ctl status on {} exited {s}: {}",
            node.label(),
            out.stderr_str().trim()
        ))),
    }
}

/// Prove that ssh to the node reaches the very server pgha talks to with
/// SQL (the same `postmaster.pid`), before stopping anything: a wrong
/// `[nodes.N] ssh_host` must never stop, rewind or delete another server.
pub(crate) async fn same_server(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    deadline: Instant,
) -> Result<()> {
    let target = topo.pg_target(node);
    let step = format!("identify the server of {}", node.label());
    let client = postgres::connect(&target)
        .await
        .map_err(|e| Error::step(&step, e))?;
    let by_sql = postgres::read_binary_file(&client, &target, "postmaster.pid")
        .await
        .map_err(|e| Error::step(&step, e))?;
    let path = node
        .data_dir()?
        .join("postmaster.pid")
        .display()
        .to_string();
    let t = budget(deadline, topo.config.ssh.command_timeout);
    let by_ssh = remote
        .read_file(&node.ssh_host, &path, t)
        .await
        .map_err(|e| Error::step(&step, e))?;
    // The first line is the pid, the third the start time (epoch).
    let key = |b: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(b)
            .lines()
            .take(3)
            .map(str::to_string)
            .collect()
    };
    if key(&by_sql) != key(&by_ssh) || by_sql.is_empty() {
        return Err(Error::Refused(format!(
            "ssh to {} finds {path} of another server than SQL to {}:{} does: check [nodes.{}] ssh_host and backend_data_directory{}; nothing was changed",
            node.ssh_host, node.host, node.port, node.id, node.id
        )));
    }
    Ok(())
}

/// Stop the node's server (`pg_ctl stop -m fast`, then `-m immediate` if
/// that does not finish). Returns what happened.
pub(crate) async fn stop(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    deadline: Instant,
) -> Result<String> {
    if server_status(topo, remote, node, deadline).await? != ServerStatus::Running {
        return Ok("was not running".into());
    }
    let t = budget(deadline, topo.config.ssh.command_timeout);
    let first = match steps::stop_server(topo, remote, node, "fast", t).await {
        Ok(steps::Stop::Stopped) => return Ok("stopped (pg_ctl stop -m fast)".into()),
        Ok(steps::Stop::NotRunning) => return Ok("was not running".into()),
        Ok(steps::Stop::Failed(why)) => why,
        Err(e) => e.to_string(),
    };
    let t = budget(deadline, topo.config.ssh.command_timeout);
    match steps::stop_server(topo, remote, node, "immediate", t).await? {
        steps::Stop::Stopped | steps::Stop::NotRunning => Ok(format!(
            "stopped (pg_ctl stop -m immediate, since -m fast {first})"
        )),
        steps::Stop::Failed(why) => Err(Error::Step(format!(
            "stop {}: pg_ctl stop -m fast {first}; -m immediate {why}",
            node.label()
        ))),
    }
}

/// `exited STATUS: STDERR` of a remote command, for error messages.
fn exited(out: &remote::Output) -> String {
    format!("exited {}: {}", out.status, out.stderr_str().trim())
}

/// Start the node's server (`pg_ctl start -w -l LOG`), waiting until it
/// accepts connections, bounded by `[failover] follow_timeout`.
pub(crate) async fn start(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    deadline: Instant,
) -> Result<String> {
    if server_status(topo, remote, node, deadline).await? == ServerStatus::Running {
        return Ok("already running".into());
    }
    let log = steps::pg_ctl_log(topo, node)?;
    let t = budget(deadline, topo.config.failover.follow_timeout);
    let out = steps::pg_ctl(topo, remote, node, &["start", "-w", "-l", &log], t).await?;
    if !out.success() {
        let why = exited(&out);
        return Err(Error::Step(format!(
            "start {}: pg_ctl start {why}; see {log} there",
            node.label()
        )));
    }
    Ok(format!("started (log {log})"))
}

/// Where a node's own configuration files wait while `pg_rewind` or
/// `pg_basebackup` replace them: beside the data directory, outside it.
fn saved_config_dir(node: &Node) -> Result<String> {
    let data = node.data_dir()?;
    let parent = data.parent().unwrap_or(data);
    Ok(parent.join("pgha-saved-config").display().to_string())
}

/// The configuration files a data directory may hold that are the node's
/// own: the tools copy the source's over them.
const CONFIG_FILES: [&str; 5] = [
    "postgresql.conf",
    "postgresql.auto.conf",
    "pg_hba.conf",
    "pg_ident.conf",
    "recovery.conf",
];

/// Copy the node's configuration files out of its data directory. A copy
/// still marked pending (an earlier run stopped before restoring it) is
/// kept: the data directory may hold the source's files by now.
pub(crate) async fn save_config(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    deadline: Instant,
) -> Result<String> {
    let what = format!("save the configuration of {} to", node.label());
    let (dir, said) = config_script(topo, remote, node, deadline, &what, |data, b| {
        let files = CONFIG_FILES.join(" ");
        format!(
            "set -e; mkdir -p {b}; chmod 700 {b}; \
             if [ -e {b}/.pending ]; then echo kept; exit 0; fi; \
             rm -f {b}/*.conf; \
             for f in {files}; do if [ -f {data}/$f ]; then cp -p {data}/$f {b}/$f; fi; done; \
             sync {b} 2>/dev/null || true; touch {b}/.pending; echo saved"
        )
    })
    .await?;
    Ok(if said.trim() == "kept" {
        format!("kept the copy in {dir} from an unfinished earlier run")
    } else {
        format!("saved to {dir}")
    })
}

/// Run `script` on `node` over ssh within `[ssh] command_timeout`; an ssh
/// failure or a non-zero exit is an error naming `what`, the exit status
/// and what the script said on stderr.
async fn script_ok(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    what: &str,
    script: &str,
    deadline: Instant,
) -> Result<remote::Output> {
    let t = budget(deadline, topo.config.ssh.command_timeout);
    let out = remote
        .run_script(&node.ssh_host, script, t)
        .await
        .map_err(|e| Error::step(what, e))?;
    if !out.success() {
        return Err(Error::Step(format!("{what}: {}", exited(&out))));
    }
    Ok(out)
}

/// Run the script `make(data, saved)` (the data directory and
/// [`saved_config_dir`], quoted for the shell) with [`script_ok`], `what`
/// followed by that directory naming it. Returns the directory and what
/// the script printed.
async fn config_script(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    deadline: Instant,
    what: &str,
    make: impl FnOnce(&str, &str) -> String,
) -> Result<(String, String)> {
    let data = remote::quote(&node.data_dir()?.display().to_string());
    let dir = saved_config_dir(node)?;
    let script = make(&data, &remote::quote(&dir));
    let what = format!("{what} {dir}");
    let out = script_ok(topo, remote, node, &what, &script, deadline).await?;
    Ok((dir, out.stdout_str()))
}

/// Put the saved configuration files back into the data directory and
/// clear the pending mark. Nothing saved: nothing to do.
pub(crate) async fn restore_config(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    deadline: Instant,
) -> Result<String> {
    let what = &format!("restore the configuration of {} from", node.label());
    let (dir, _) = config_script(topo, remote, node, deadline, what, |data, b| {
        format!(
            "set -e; [ -d {b} ] || {{ echo none; exit 0; }}; \
             for f in {b}/*.conf; do if [ -f \"$f\" ]; then cp -p \"$f\" {data}/; fi; done; \
             rm -f {b}/.pending; echo restored"
        )
    })
    .await?;
    Ok(format!("own configuration files restored from {dir}"))
}

/// `BACKUP METHOD` of the data directory's `backup_label`, if it has one:
/// `pg_rewind` or `streamed` (pg_basebackup) means that tool finished and
/// the server has not started since.
pub(crate) async fn backup_label_method(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    deadline: Instant,
) -> Result<Option<String>> {
    let path = node.data_dir()?.join("backup_label");
    let text = read_if_exists(topo, remote, node, &path, deadline).await?;
    Ok(label_method(&text))
}

/// The `BACKUP METHOD:` line of a `backup_label`.
fn label_method(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("BACKUP METHOD:"))
        .map(|m| m.trim().to_string())
}

/// Major version of the data directory (`PG_VERSION`), as
/// `server_version_num` would start: `15` gives 150000, `9.6` 90600.
async fn data_version(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    deadline: Instant,
) -> Result<u32> {
    let path = node.data_dir()?.join("PG_VERSION").display().to_string();
    let t = budget(deadline, topo.config.ssh.command_timeout);
    let text = remote
        .read_file(&node.ssh_host, &path, t)
        .await
        .map_err(|e| Error::step(&format!("read {path} on {}", node.label()), e))?;
    parse_pg_version(&String::from_utf8_lossy(&text))
        .ok_or_else(|| Error::Step(format!("{path} on {} holds no version", node.label())))
}

/// `PG_VERSION` text to a `server_version_num`-like number.
fn parse_pg_version(text: &str) -> Option<u32> {
    let t = text.trim();
    let mut it = t.split('.');
    let major: u32 = it.next()?.parse().ok()?;
    match it.next() {
        Some(minor) if major < 10 => Some(major * 10000 + minor.parse::<u32>().ok()? * 100),
        None if major >= 10 => Some(major * 10000),
        _ => None,
    }
}

/// The libpq conninfo `pg_rewind --source-server` uses to read the
/// primary: pgha's superuser (password from the node's `.pgpass`), the
/// primary's replication address, which the nodes reach.
fn source_conninfo(topo: &Topology, primary: &Node) -> String {
    let pg = &topo.config.postgres;
    let mut kv = BTreeMap::new();
    kv.insert("host".to_string(), primary.replication_host.clone());
    kv.insert("port".to_string(), primary.port.to_string());
    kv.insert("user".to_string(), pg.user.clone());
    kv.insert("dbname".to_string(), pg.database.clone());
    kv.insert(
        "connect_timeout".to_string(),
        pg.connect_timeout.as_secs().max(1).to_string(),
    );
    kv.insert("application_name".to_string(), "pgha-rewind".to_string());
    crate::pgconf::format_conninfo(&kv)
}

/// `pg_rewind` arguments for a server of version `version_num`:
/// `--restore-target-wal` (13+, when it has one) lets it fetch the node's
/// missing WAL with its own `restore_command`.
fn pg_rewind_args(
    bin: &str,
    data: &str,
    source: &str,
    version_num: u32,
    restore: bool,
) -> Vec<String> {
    let mut v = vec![
        bin.to_string(),
        "-D".to_string(),
        data.to_string(),
        format!("--source-server={source}"),
    ];
    if version_num >= 130000 && restore {
        v.push("--restore-target-wal".to_string());
    }
    v
}

/// Why `pg_rewind` failed, in words an operator can act on.
fn explain_rewind_failure(stderr: &str) -> String {
    let s = stderr.trim();
    let last = s
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if s.contains("wal_log_hints") || s.contains("data checksums") {
        format!(
            "{last}: the node has neither data checksums nor wal_log_hints = on, so it cannot be rewound; \
             set wal_log_hints = on (a restart) so that later rewinds work"
        )
    } else if s.contains("shut down cleanly") {
        format!("{last}: start and stop the server once cleanly, then run again")
    } else if s.contains("could not connect") || s.contains("connection to server") {
        format!(
            "{last}: the node cannot log in to the primary as the pgha superuser (check its .pgpass and the primary's pg_hba.conf)"
        )
    } else if s.contains("same timeline") || s.contains("no rewind required") {
        "no rewind required".to_string()
    } else if last.is_empty() {
        "pg_rewind failed without a message".to_string()
    } else {
        last.to_string()
    }
}

/// What [`rewind`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rewound {
    /// `pg_rewind` copied the changed blocks.
    Done(String),
    /// `pg_rewind` found the node's WAL a prefix of the primary's.
    NotNeeded,
    /// An earlier run rewound (or copied) it and it has not started since.
    AlreadyDone,
}

/// `pg_rewind` the stopped node from `primary`: a `CHECKPOINT` on the
/// primary first (right after a promotion its control file still names
/// the old timeline, and pg_rewind reads it), then pg_rewind over ssh on
/// the node, bounded by `[follow] rewind_timeout`. The node's configuration
/// files must be saved before and restored after (see [`save_config`]).
pub(crate) async fn rewind(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    primary: &Node,
    deadline: Instant,
) -> Result<Rewound> {
    // pg_rewind or pg_basebackup (`streamed`) finished and the server has
    // not started since: rewinding again would first run crash recovery
    // on it, writing WAL the primary never had.
    if matches!(
        backup_label_method(topo, remote, node, deadline)
            .await?
            .as_deref(),
        Some("pg_rewind" | "streamed")
    ) {
        return Ok(Rewound::AlreadyDone);
    }
    let target = topo.pg_target(primary);
    let client = postgres::connect(&target)
        .await
        .map_err(|e| Error::step(&format!("checkpoint {}", primary.label()), e))?;
    postgres::checkpoint(&client, &target)
        .await
        .map_err(|e| Error::step(&format!("checkpoint {}", primary.label()), e))?;
    drop(client);
    let version = data_version(topo, remote, node, deadline).await?;
    let bin = topo
        .config
        .postgres
        .bin_dir
        .join("pg_rewind")
        .display()
        .to_string();
    let data = node.data_dir()?.display().to_string();
    let restore = version >= 130000 && restore_for_rewind(topo, remote, node, deadline).await?;
    let args = pg_rewind_args(
        &bin,
        &data,
        &source_conninfo(topo, primary),
        version,
        restore,
    );
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = budget(deadline, topo.config.follow.rewind_timeout);
    let out = remote
        .run(&node.ssh_host, &argv, t)
        .await
        .map_err(|e| Error::step(&format!("pg_rewind {}", node.label()), e))?;
    let err = out.stderr_str();
    if !out.success() {
        return Err(Error::Step(format!(
            "pg_rewind {} from {} exited {} after {:.1}s: {}",
            node.label(),
            primary.label(),
            out.status,
            out.elapsed.as_secs_f64(),
            explain_rewind_failure(&err)
        )));
    }
    if err.contains("no rewind required") {
        return Ok(Rewound::NotNeeded);
    }
    let diverged = err
        .lines()
        .find(|l| l.contains("diverged at"))
        .map(|l| l.trim_start_matches("pg_rewind: ").trim().to_string())
        .unwrap_or_else(|| "rewound".into());
    Ok(Rewound::Done(diverged))
}

/// Configure the stopped node as a standby of `primary`: its
/// `primary_conninfo` (the one it had, with host and port replaced; see
/// [`steps::follow_conninfo`]) in `postgresql.auto.conf` and
/// `standby.signal` (12+), or in `recovery.conf` (before 12), with its
/// `restore_command` pointed at the primary's archive and, when
/// `pause_restore` (14+), written paused: see [`Unpause`].
pub(crate) async fn configure_standby(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    primary: &Node,
    slot: Option<&str>,
    pause_restore: bool,
    deadline: Instant,
) -> Result<Configured> {
    let step = format!(
        "configure {} as a standby of {}",
        node.label(),
        primary.label()
    );
    let version = data_version(topo, remote, node, deadline).await?;
    let data = node.data_dir()?;
    let file = if version >= 120000 {
        "postgresql.auto.conf"
    } else {
        "recovery.conf"
    };
    let text = read_if_exists(topo, remote, node, &data.join(file), deadline).await?;
    let setting = async |key| stopped_setting(topo, remote, node, &text, key, deadline).await;
    let current = setting("primary_conninfo").await?;
    let conninfo = crate::pgconf::follow_conninfo(
        current.as_deref().filter(|c| !c.is_empty()),
        primary,
        &topo.config.postgres.replication_user,
        node.application_name.as_deref(),
    );
    // Its restore_command, pointed at the primary's archive too.
    let current = setting("restore_command").await?;
    let restore = retarget_restore(topo, node, primary, current.as_deref());
    let new = standby_settings(&text, &conninfo, restore.as_deref(), slot, version);
    // 14+ reads restore_command on reload: the standby starts with it
    // paused, so that its startup process streams at once instead of
    // trying the archive first (an scp each for the history files and the
    // segment it stands at: ~2 s in the scp layout), and gets `new` back
    // soon after it starts (see `Unpause`).
    let effective = restore
        .clone()
        .or(current)
        .filter(|r| !r.trim().is_empty() && crate::restore::unpaused(r).is_none());
    let unpause = match effective {
        Some(original) if pause_restore && version >= 140000 => Some(Unpause {
            file: data.join(file).display().to_string(),
            text: new.clone(),
            original,
        }),
        _ => None,
    };
    let written = match &unpause {
        Some(u) => {
            let paused = crate::restore::paused(&u.original);
            standby_settings(&text, &conninfo, Some(&paused), slot, version)
        }
        None => new,
    };
    let t = budget(deadline, topo.config.ssh.command_timeout);
    write_standby(remote, node, data, file, &written, version, t)
        .await
        .map_err(|e| Error::step(&step, e))?;
    Ok(Configured { conninfo, unpause })
}

/// What [`configure_standby`] wrote.
#[derive(Debug, Clone)]
pub(crate) struct Configured {
    /// Its `primary_conninfo`.
    pub conninfo: String,
    /// How to give it back the `restore_command` it was written without;
    /// `None` when none was paused (before 14, or no restore_command).
    pub unpause: Option<Unpause>,
}

/// A standby configured with its `restore_command` paused: the settings
/// file to write back, then reload. No SQL: a standby that is not
/// consistent yet (it may need the archive to become so), or that runs
/// with `hot_standby = off`, takes no connection but does take SIGHUP.
#[derive(Debug, Clone)]
pub(crate) struct Unpause {
    file: String,
    text: String,
    /// The command it gets back.
    pub original: String,
}

/// Give a standby started with its `restore_command` paused the command
/// back: rewrite its settings file, `pg_ctl reload`.
pub(crate) async fn unpause_restore(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    u: &Unpause,
    deadline: Instant,
) -> Result<String> {
    let step = format!("give {} its restore_command back", node.label());
    let t = budget(deadline, topo.config.ssh.command_timeout);
    remote
        .write_file(&node.ssh_host, &u.file, u.text.as_bytes(), 0o600, t)
        .await
        .map_err(|e| Error::step(&step, e))?;
    let out = steps::pg_ctl(topo, remote, node, &["reload"], t).await?;
    if !out.success() {
        return Err(Error::Step(format!(
            "{step}: pg_ctl reload {}",
            exited(&out)
        )));
    }
    Ok(format!("restore_command = '{}' again", u.original))
}

/// The value of `key` in the stopped node's configuration: in `text` (its
/// `postgresql.auto.conf`, or `recovery.conf` before 12) when set there,
/// else in its `postgresql.conf`.
async fn stopped_setting(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    text: &str,
    key: &str,
    deadline: Instant,
) -> Result<Option<String>> {
    if let Some(v) = conf_value(text, key) {
        return Ok(Some(v));
    }
    let main = node.data_dir()?.join("postgresql.conf");
    let main = read_if_exists(topo, remote, node, &main, deadline).await?;
    Ok(conf_value(&main, key))
}

/// Whether pg_rewind can fetch the stopped node's missing WAL with its
/// `restore_command` (`--restore-target-wal`, 13+): not when it has none
/// (pg_rewind would stop at once, "restore_command is not set in the
/// target cluster"). One left paused by an interrupted pgha run
/// ([`crate::restore::paused`]) is put back first, in its
/// `postgresql.auto.conf`.
async fn restore_for_rewind(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    deadline: Instant,
) -> Result<bool> {
    let auto = node.data_dir()?.join("postgresql.auto.conf");
    let text = read_if_exists(topo, remote, node, &auto, deadline).await?;
    let Some(cmd) = stopped_setting(topo, remote, node, &text, "restore_command", deadline).await?
    else {
        return Ok(false);
    };
    if let Some(original) = crate::restore::unpaused(&cmd) {
        let fixed = crate::pgconf::set_conf(&text, "restore_command", original);
        let t = budget(deadline, topo.config.ssh.command_timeout);
        let path = auto.display().to_string();
        remote
            .write_file(&node.ssh_host, &path, fixed.as_bytes(), 0o600, t)
            .await
            .map_err(|e| Error::step(&format!("put back restore_command in {path}"), e))?;
        info!(
            "{}: restore_command put back (an interrupted run left it paused): {original}",
            node.label()
        );
        return Ok(!original.trim().is_empty());
    }
    Ok(!cmd.trim().is_empty())
}

/// A file of the node's data directory over ssh, empty when it is not
/// there, within `[ssh] command_timeout`.
async fn read_if_exists(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    path: &Path,
    deadline: Instant,
) -> Result<String> {
    let path = path.display().to_string();
    let t = budget(deadline, topo.config.ssh.command_timeout);
    let script = format!("cat {} 2>/dev/null || true", remote::quote(&path));
    remote
        .run_script(&node.ssh_host, &script, t)
        .await
        .map(|o| o.stdout_str())
        .map_err(|e| Error::step(&format!("read {path} on {}", node.label()), e))
}

/// The node's `restore_command`, pointed at `primary`'s archive; `None`
/// to leave it as it is.
fn retarget_restore(
    topo: &Topology,
    node: &Node,
    primary: &Node,
    current: Option<&str>,
) -> Option<String> {
    match crate::restore::retarget(
        current.unwrap_or(""),
        topo.config.postgres.restore_command.as_deref(),
        &topo.nodes,
        primary,
    ) {
        crate::restore::Retarget::Set(c) => Some(c),
        crate::restore::Retarget::Keep => None,
        crate::restore::Retarget::Ambiguous(why) => {
            tracing::warn!("{}: {why}", node.label());
            None
        }
    }
}

/// Write the standby settings `text` to `file` and, on 12+, create
/// `standby.signal` and remove `recovery.signal`.
async fn write_standby(
    remote: &Remote,
    node: &Node,
    data: &Path,
    file: &str,
    text: &str,
    version: u32,
    t: Duration,
) -> std::result::Result<(), RemoteError> {
    let path = data.join(file).display().to_string();
    remote
        .write_file(&node.ssh_host, &path, text.as_bytes(), 0o600, t)
        .await?;
    if version >= 120000 {
        let signal = data.join("standby.signal").display().to_string();
        remote
            .write_file(&node.ssh_host, &signal, b"", 0o600, t)
            .await?;
        let recovery = data.join("recovery.signal").display().to_string();
        remote
            .run(&node.ssh_host, &["rm", "-f", &recovery], t)
            .await?;
    }
    Ok(())
}

/// Rename (never delete) the timeline history files of timelines newer
/// than `primary_tli` in the node's `pg_wal` and `[postgres] archive_dir`
/// to `*.history.pgha-stale`. A node that was promoted on its own left
/// such files; with `recovery_target_timeline = 'latest'` the standby
/// would pick that timeline, which the primary never had, and refuse to
/// start ("requested timeline N is not a child of this server's
/// history"). Returns the files renamed.
pub(crate) async fn set_aside_stale_history(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    primary_tli: u32,
    deadline: Instant,
) -> Result<Vec<String>> {
    let version = data_version(topo, remote, node, deadline).await?;
    let mut dirs = vec![
        node.data_dir()?
            .join(steps::wal_dir(version))
            .display()
            .to_string(),
    ];
    if let Some(a) = &topo.config.postgres.archive_dir {
        dirs.push(a.display().to_string());
    }
    let dirs: Vec<String> = dirs.iter().map(|d| remote::quote(d)).collect();
    let script = format!(
        "for d in {}; do [ -d \"$d\" ] || continue; \
         for f in \"$d\"/*.history; do [ -f \"$f\" ] || continue; \
         b=$(basename \"$f\" .history); \
         case \"$b\" in ????????) ;; *) continue ;; esac; \
         case \"$b\" in *[!0-9A-Fa-f]*) continue ;; esac; \
         if [ $((0x$b)) -gt {primary_tli} ]; then mv \"$f\" \"$f.pgha-stale\" && echo \"$f\"; fi; \
         done; done",
        dirs.join(" ")
    );
    let what = format!("set aside stale history files on {}", node.label());
    let out = script_ok(topo, remote, node, &what, &script, deadline).await?;
    Ok(out.stdout_str().lines().map(str::to_string).collect())
}

/// Free space, space needed and what the old data directory holds, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Space {
    /// Free on the data directory's filesystem (`df -Pk`), for its owner.
    avail_kb: u64,
    /// A fresh copy of the primary: its databases, a tenth more and 64 MiB
    /// of WAL.
    need_kb: u64,
    /// The old data directory (`du -sk`), 0 when there is none.
    old_kb: u64,
}

/// What happens to the old data directory before `pg_basebackup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OldData {
    /// No old data directory.
    None,
    /// Room for the new copy next to the old one: rename it aside.
    MoveAside,
    /// Room only once the old one is gone: delete it.
    Delete,
}

/// Decide from `space` whether the old data directory can be kept; `Err`
/// when even deleting it leaves too little room.
fn old_data_plan(space: &Space) -> std::result::Result<OldData, String> {
    if space.old_kb == 0 && space.avail_kb >= space.need_kb {
        return Ok(OldData::None);
    }
    if space.avail_kb >= space.need_kb {
        return Ok(OldData::MoveAside);
    }
    if space.avail_kb + space.old_kb >= space.need_kb {
        return Ok(OldData::Delete);
    }
    Err(format!(
        "not enough space: a copy of the primary needs about {} MiB, {} MiB are free and the old data directory holds {} MiB",
        space.need_kb / 1024,
        space.avail_kb / 1024,
        space.old_kb / 1024
    ))
}

/// KiB available from `df -Pk` output (fourth column of the last line).
fn parse_df_avail(text: &str) -> Option<u64> {
    text.lines().last()?.split_whitespace().nth(3)?.parse().ok()
}

/// Rebuild the stopped node from `primary` with `pg_basebackup` (`-X
/// stream -c fast`, as the replication user, password from the node's
/// `.pgpass`), bounded by the overall deadline. Only after proving that
/// the node is not the primary and no server runs on its data directory,
/// and that there is room: the old data directory is moved aside when
/// space allows and deleted only when it does not. Returns what was done.
pub(crate) async fn rebuild(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    primary: &Node,
    deadline: Instant,
) -> Result<String> {
    let step = format!("rebuild {} from {}", node.label(), primary.label());
    let on = On {
        topo,
        remote,
        node,
        deadline,
        step: &step,
    };
    on.refuse_unless_replaceable(primary).await?;
    let space = on.space(primary).await?;
    let plan = old_data_plan(&space)
        .map_err(|why| Error::Refused(format!("{step}: {why}; nothing was deleted")))?;
    let what_old = on.clear_old_data(plan, space.avail_kb).await?;
    on.basebackup(primary, &what_old).await
}

/// One node's data directory being replaced, and the step's name for
/// errors.
struct On<'a> {
    topo: &'a Topology,
    remote: &'a Remote,
    node: &'a Node,
    deadline: Instant,
    step: &'a str,
}

impl On<'_> {
    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::step(self.step, e)
    }

    /// Not the current primary, and no server on that data directory.
    async fn refuse_unless_replaceable(&self, primary: &Node) -> Result<()> {
        let (node, step) = (self.node, self.step);
        if node.id == primary.id
            || (node.ssh_host == primary.ssh_host && node.data_dir == primary.data_dir)
        {
            return Err(Error::Refused(format!(
                "{step}: {} is (or shares the host and data directory of) the current primary; nothing was deleted",
                node.label()
            )));
        }
        let status = server_status(self.topo, self.remote, node, self.deadline).await?;
        if status == ServerStatus::Running {
            return Err(Error::Refused(format!(
                "{step}: a server still runs on {}'s data directory; nothing was deleted",
                node.label()
            )));
        }
        if postgres::observe_target(&self.topo.pg_target(node))
            .await
            .is_ok()
        {
            return Err(Error::Refused(format!(
                "{step}: {}:{} still answers SQL although pg_ctl status says no server runs there: check [nodes.{}] ssh_host; nothing was deleted",
                node.host, node.port, node.id
            )));
        }
        Ok(())
    }

    /// Room for a copy of `primary`: its databases' size, what is free
    /// beside the data directory, what the old one holds.
    async fn space(&self, primary: &Node) -> Result<Space> {
        let (node, step) = (self.node, self.step);
        let rows = steps::query_node(
            self.topo,
            primary,
            "size of the databases",
            "SELECT sum(pg_database_size(oid))::int8 FROM pg_database",
            &[],
        )
        .await?;
        let bytes: i64 = rows
            .first()
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .unwrap_or(0);
        let need_kb = (bytes.max(0) as u64 / 1024) * 11 / 10 + 64 * 1024;
        let data = node.data_dir()?.display().to_string();
        let parent = node
            .data_dir()?
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/".into());
        let t = budget(self.deadline, self.topo.config.ssh.command_timeout);
        let df = self
            .remote
            .check(&node.ssh_host, &["df", "-Pk", &parent], t)
            .await
            .map_err(|e| self.err(e))?;
        let avail_kb = parse_df_avail(&df.stdout_str()).ok_or_else(|| {
            Error::Step(format!(
                "{step}: cannot read df -Pk {parent}: {}",
                df.stdout_str().trim()
            ))
        })?;
        let du_script = format!(
            "if [ -d {d} ]; then du -sk {d} | cut -f1; else echo 0; fi",
            d = remote::quote(&data)
        );
        let du = self
            .remote
            .run_script(&node.ssh_host, &du_script, t)
            .await
            .map_err(|e| self.err(e))?;
        let old_kb: u64 = du.stdout_str().trim().parse().unwrap_or(0);
        Ok(Space {
            avail_kb,
            need_kb,
            old_kb,
        })
    }

    /// The old data directory out of the way, as `plan` says.
    async fn clear_old_data(&self, plan: OldData, avail_kb: u64) -> Result<String> {
        let node = self.node;
        let data = node.data_dir()?.display().to_string();
        match plan {
            OldData::None => Ok("no old data directory".to_string()),
            OldData::MoveAside => {
                let aside = format!("{data}.pgha-old-{}", compact_now());
                let t = budget(self.deadline, self.topo.config.ssh.command_timeout);
                self.remote
                    .check(&node.ssh_host, &["mv", &data, &aside], t)
                    .await
                    .map_err(|e| self.err(e))?;
                info!("{}: old data directory moved to {aside}", node.label());
                Ok(format!("old data directory moved to {aside}"))
            }
            OldData::Delete => {
                let t = budget(self.deadline, self.topo.config.follow.rebuild_timeout);
                self.remote
                    .check(&node.ssh_host, &["rm", "-rf", "--", &data], t)
                    .await
                    .map_err(|e| self.err(e))?;
                info!(
                    "{}: old data directory {data} deleted ({} MiB free were too few to keep it)",
                    node.label(),
                    avail_kb / 1024
                );
                Ok(format!(
                    "old data directory deleted (too little room to keep it: {} MiB free)",
                    avail_kb / 1024
                ))
            }
        }
    }

    /// `pg_basebackup` from `primary` into the emptied data directory,
    /// bounded by `[follow] rebuild_timeout`.
    async fn basebackup(&self, primary: &Node, what_old: &str) -> Result<String> {
        let topo = self.topo;
        let bin = topo.config.postgres.bin_dir.join("pg_basebackup");
        let bin = bin.display().to_string();
        let data = self.node.data_dir()?.display().to_string();
        let port = primary.port.to_string();
        let argv = [
            bin.as_str(),
            "-D",
            &data,
            "-h",
            &primary.replication_host,
            "-p",
            &port,
            "-U",
            &topo.config.postgres.replication_user,
            "-X",
            "stream",
            "-c",
            "fast",
            "-w",
        ];
        let t = budget(self.deadline, topo.config.follow.rebuild_timeout);
        let out = self
            .remote
            .run(&self.node.ssh_host, &argv, t)
            .await
            .map_err(|e| self.err(e))?;
        if !out.success() {
            return Err(Error::Step(format!(
                "{}: pg_basebackup exited {} after {:.1}s ({what_old}): {}",
                self.step,
                out.status,
                out.elapsed.as_secs_f64(),
                out.stderr_str().trim()
            )));
        }
        Ok(format!(
            "pg_basebackup from {} in {:.1}s; {what_old}",
            primary.label(),
            out.elapsed.as_secs_f64()
        ))
    }
}

/// `20261125T183000Z`: a suffix for the moved-aside data directory.
fn compact_now() -> String {
    crate::state::rfc3339(std::time::SystemTime::now())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(15)
        .collect::<String>()
        + "Z"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_labels() {
        assert_eq!(parse_pg_version("15\n"), Some(150000));
        assert_eq!(parse_pg_version("9.6"), Some(90600));
        assert_eq!(parse_pg_version("9"), None);
        assert_eq!(parse_pg_version(""), None);
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: pg_rewind\nBACKUP FROM: standby\n";
        assert_eq!(label_method(label).as_deref(), Some("pg_rewind"));
        assert_eq!(label_method(""), None);
    }

    #[test]
    fn rewind_arguments() {
        let a = pg_rewind_args("/b/pg_rewind", "/d", "host='h' port='5432'", 150000, true);
        assert_eq!(
            a,
            [
                "/b/pg_rewind",
                "-D",
                "/d",
                "--source-server=host='h' port='5432'",
                "--restore-target-wal"
            ]
        );
        let a = pg_rewind_args("/b/pg_rewind", "/d", "host=h", 120000, true);
        assert!(!a.iter().any(|x| x == "--restore-target-wal"));
        // No restore_command: with the flag pg_rewind would stop at once.
        let a = pg_rewind_args("/b/pg_rewind", "/d", "host=h", 150000, false);
        assert!(!a.iter().any(|x| x == "--restore-target-wal"));
    }

    #[test]
    fn rewind_failures_explained() {
        let e = explain_rewind_failure(
            "pg_rewind: error: target server needs to use either data checksums or \"wal_log_hints = on\"\n",
        );
        assert!(
            e.contains("cannot be rewound") && e.contains("wal_log_hints"),
            "{e}"
        );
        let e =
            explain_rewind_failure("pg_rewind: error: target server must be shut down cleanly\n");
        assert!(e.contains("cleanly"), "{e}");
        let e = explain_rewind_failure(
            "pg_rewind: error: could not connect to server: connection refused\n",
        );
        assert!(e.contains(".pgpass"), "{e}");
        assert_eq!(
            explain_rewind_failure(""),
            "pg_rewind failed without a message"
        );
        assert_eq!(explain_rewind_failure("a\nb: c\n\n"), "b: c");
    }

    #[test]
    fn space_decides_what_happens_to_old_data() {
        let s = |avail_kb, need_kb, old_kb| Space {
            avail_kb,
            need_kb,
            old_kb,
        };
        assert_eq!(old_data_plan(&s(100, 50, 0)), Ok(OldData::None));
        assert_eq!(old_data_plan(&s(100, 50, 40)), Ok(OldData::MoveAside));
        assert_eq!(old_data_plan(&s(30, 50, 40)), Ok(OldData::Delete));
        let e = old_data_plan(&s(3 * 1024, 50 * 1024, 4 * 1024)).unwrap_err();
        assert!(e.contains("needs about 50 MiB, 3 MiB are free"), "{e}");
        assert!(old_data_plan(&s(10, 50, 0)).is_err());
        assert_eq!(
            parse_df_avail(
                "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/vda 264212084 14500164 80785724 16% /var/lib/postgresql\n"
            ),
            Some(80785724)
        );
        assert_eq!(parse_df_avail(""), None);
        assert_eq!(compact_now().len(), 16);
    }

    #[test]
    fn rewind_reads_the_primary_where_the_nodes_reach_it() {
        let topo = crate::cluster::Topology::from_parts(
            crate::config::Config::default(),
            crate::pgpool::conf::PgpoolConf::parse(
                std::path::Path::new("pgpool.conf"),
                "backend_hostname0 = '127.0.0.2'\nbackend_port0 = 5433\n",
            )
            .unwrap(),
        );
        let mut p = topo.nodes[0].clone();
        p.replication_host = "127.0.1.2".into();
        let kv = postgres::parse_conninfo(&source_conninfo(&topo, &p));
        assert_eq!(kv["host"], "127.0.1.2");
        assert_eq!(kv["port"], "5433");
        assert_eq!(kv["user"], "postgres");
        assert_eq!(kv["dbname"], "postgres");
    }
}
