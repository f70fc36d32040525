//! The steps every command is made of, each written once: fence, promote,
//! copy the timeline history, repoint, wait for streaming, attach. Each step
//! first looks whether it is already done and then does only what is missing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::cluster::{Node, Topology};
use crate::error::{Error, Result};

use crate::postgres::{self, NodeState};
use crate::remote::{self, Remote};

/// Time left before `deadline`, capped at `step` (never zero, so a bounded
/// call still gets a chance to report its own timeout).
pub fn budget(deadline: Instant, step: Duration) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .min(step)
        .max(Duration::from_millis(100))
}

/// How a server of this version is promoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromoteMethod {
    /// `SELECT pg_promote(true, N)`: 12 and later, no ssh needed.
    SqlPgPromote,
    /// `pg_ctl promote` over ssh: 9.1 to 11.
    PgCtlPromote,
}

impl PromoteMethod {
    pub fn for_version(server_version_num: u32) -> PromoteMethod {
        if server_version_num >= 120000 {
            PromoteMethod::SqlPgPromote
        } else {
            PromoteMethod::PgCtlPromote
        }
    }
}

/// How a standby of this version takes a new `primary_conninfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepointMethod {
    /// `ALTER SYSTEM` + `pg_reload_conf()`: 13 and later restart the
    /// walreceiver on reload, so the standby never leaves pgpool.
    AlterSystemReload,
    /// `ALTER SYSTEM` + restart: 12 reads `primary_conninfo` only at start.
    AlterSystemRestart,
    /// Rewrite `recovery.conf` + restart: before 12.
    RecoveryConfRestart,
}

impl RepointMethod {
    pub fn for_version(server_version_num: u32) -> RepointMethod {
        match server_version_num {
            v if v >= 130000 => RepointMethod::AlterSystemReload,
            v if v >= 120000 => RepointMethod::AlterSystemRestart,
            _ => RepointMethod::RecoveryConfRestart,
        }
    }
}

/// Name of a timeline's history file (`00000002.history`).
pub fn history_file_name(timeline: u32) -> String {
    format!("{timeline:08X}.history")
}

/// WAL directory name inside the data directory (`pg_xlog` before 10).
pub fn wal_dir(server_version_num: u32) -> &'static str {
    if server_version_num >= 100000 {
        "pg_wal"
    } else {
        "pg_xlog"
    }
}

/// Run `pg_ctl` on a node over ssh, with `-t` and the remote timeout bounded.
pub async fn pg_ctl(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    args: &[&str],
    timeout: Duration,
) -> Result<remote::Output> {
    let bin = topo.config.postgres.bin_dir.join("pg_ctl");
    let data = node.data_dir()?.display().to_string();
    let secs = timeout.as_secs().max(1).to_string();
    let mut argv: Vec<&str> = vec![bin.to_str().unwrap_or("pg_ctl"), "-D", &data, "-t", &secs];
    argv.extend_from_slice(args);
    remote
        .run(&node.ssh_host, &argv, timeout + Duration::from_secs(2))
        .await
        .map_err(|e| Error::step(&format!("pg_ctl {} on {}", args.join(" "), node.label()), e))
}

/// The log file `pg_ctl -l` writes to when pgha starts a server: beside the
/// data directory, so the ssh channel never waits on the server's output.
pub fn pg_ctl_log(topo: &Topology, node: &Node) -> Result<String> {
    let data = node.data_dir()?;
    let parent = data.parent().unwrap_or(data);
    Ok(parent
        .join(&topo.config.postgres.log_file)
        .display()
        .to_string())
}

/// How [`fence`] stops the node first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceStop {
    /// `-m fast`, then `-m immediate` if that fails: a switchover, whose
    /// walsenders must send the shutdown checkpoint.
    Clean,
    /// `-m immediate` only: a failover. The candidate was chosen from the
    /// positions pgha observed; a clean stop would then still send the
    /// shutdown checkpoint (and anything unsent) to the standbys that are
    /// connected, and a standby that got it and the candidate did not
    /// has diverged from the new primary (seen by the fault campaign
    /// after a frozen primary resumed: that standby then could not be
    /// rewound, its own WAL recycled).
    Immediate,
}

/// Stop the old primary so that it can never accept writes next to the new
/// one, and prove it: after `pg_ctl stop` (or its "no server running"),
/// every address of the node is probed again, and a node that still
/// accepts connections is stopped again with `-m immediate`. One budget,
/// `[failover] promote_timeout`, covers it all. Success means: no address
/// of the node accepts connections any more.
pub async fn fence(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    deadline: Instant,
    how: FenceStop,
) -> Result<String> {
    let end = Instant::now() + budget(deadline, topo.config.failover.promote_timeout);
    let lt = topo.config.failover.liveness_timeout;
    let mut hosts = vec![node.ssh_host.clone()];
    for a in node.addresses() {
        if !hosts.iter().any(|h| h == a) {
            hosts.push(a.to_string());
        }
    }
    let mut tried: Vec<String> = Vec::new();
    let modes: &[&str] = match how {
        FenceStop::Clean => &["fast", "immediate"],
        FenceStop::Immediate => &["immediate"],
    };
    for &mode in modes {
        // A fast shutdown may wait for standbys that are gone: give it half
        // the budget, then stop it without waiting.
        let left = end.saturating_duration_since(Instant::now());
        let t = if mode == "fast" { left / 2 } else { left }.max(Duration::from_millis(500));
        let mut said = None;
        for host in &hosts {
            let mut n = node.clone();
            n.ssh_host = host.clone();
            match stop_server(topo, remote, &n, mode, t).await {
                Ok(Stop::Stopped) => {
                    said = Some(format!("stopped (-m {mode}) over ssh to {host}"));
                    break;
                }
                Ok(Stop::NotRunning) => {
                    said = Some(format!("pg_ctl over ssh to {host} finds no server running"));
                    break;
                }
                Ok(Stop::Failed(why)) => {
                    tried.push(format!("pg_ctl stop -m {mode} on {host} {why}"))
                }
                Err(e) => tried.push(e.to_string()),
            }
        }
        let Some(said) = said else { continue };
        let still = still_listening(node, lt).await;
        if still.is_empty() {
            return Ok(format!(
                "{said}; no address of it ({}) accepts connections any more",
                node.addresses().join(", ")
            ));
        }
        tried.push(format!(
            "{said}, yet {} still accept(s) connections{}",
            still.join(", "),
            if mode == "fast" {
                "; trying -m immediate"
            } else {
                ""
            }
        ));
        warn!(
            "{}: {}",
            node.label(),
            tried.last().map(String::as_str).unwrap_or("")
        );
    }
    Err(Error::Refused(format!(
        "could not stop the old primary {} for sure: {}; it may still accept writes, so nothing was promoted (if pg_ctl finds no server, check backend_data_directory{} or [nodes.{}] data_directory). Stop it by hand (or power it off), then run pgha-failover again",
        node.label(),
        tried.join("; "),
        node.id,
        node.id
    )))
}

/// What one `pg_ctl stop -m MODE -w` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    Stopped,
    /// pg_ctl exits 3 when no server runs on that data directory.
    NotRunning,
    /// How it exited otherwise.
    Failed(String),
}

/// `pg_ctl stop -m MODE -w` on the node, bounded by `t`: the one way pgha
/// stops a server (the fence and a rejoin both use it, `fast` first, then
/// `immediate`).
pub async fn stop_server(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    mode: &str,
    t: Duration,
) -> Result<Stop> {
    let out = pg_ctl(topo, remote, node, &["stop", "-m", mode, "-w"], t).await?;
    Ok(if out.success() {
        Stop::Stopped
    } else if out.status == 3 || out.stderr_str().contains("Is server running?") {
        Stop::NotRunning
    } else {
        Stop::Failed(format!(
            "exited {}: {}",
            out.status,
            out.stderr_str().trim()
        ))
    })
}

/// The addresses of `node` where something still accepts a TCP connection
/// on its port, each probe bounded by `within`, all at once.
pub async fn still_listening(node: &Node, within: Duration) -> Vec<String> {
    let probes = node.addresses().into_iter().map(|a| async move {
        postgres::tcp_accepts(a, node.port, within)
            .await
            .then(|| format!("{a}:{}", node.port))
    });
    futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Set `synchronous_standby_names` on `node` (`ALTER SYSTEM`, where it
/// overrides postgresql.conf, then `pg_reload_conf()`): how a new primary
/// whose listed standbys are gone is made to accept commits again.
pub async fn set_sync_standby_names(topo: &Topology, node: &Node, value: &str) -> Result<()> {
    let literal = postgres::quote_literal(value)
        .ok_or_else(|| Error::Usage(format!("synchronous_standby_names {value:?} holds a NUL")))?;
    execute_node(
        topo,
        node,
        "ALTER SYSTEM SET synchronous_standby_names",
        &format!("ALTER SYSTEM SET synchronous_standby_names = {literal}"),
    )
    .await?;
    execute_node(topo, node, "pg_reload_conf()", "SELECT pg_reload_conf()").await
}

/// How a `restore_command` change was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreApplied {
    /// `ALTER SYSTEM` and reload (14 and later read it on reload).
    Reloaded,
    /// `ALTER SYSTEM` only: 12 and 13 read it at the next start.
    AtRestart,
}

/// Point `node`'s `restore_command` at `upstream`'s archive
/// ([`crate::restore::retarget`]); returns the command it had, the one it
/// has now and how it was applied, or `None` when nothing needed to change.
/// Before 12 (`recovery.conf`) nothing is changed.
pub async fn retarget_restore(
    topo: &Topology,
    node: &Node,
    state: &NodeState,
    upstream: &Node,
) -> Result<Option<(String, String, RestoreApplied)>> {
    if state.server_version_num < 120000 {
        return Ok(None);
    }
    let current = state.restore_command.as_str();
    let want = match crate::restore::retarget(
        current,
        topo.config.postgres.restore_command.as_deref(),
        &topo.nodes,
        upstream,
    ) {
        crate::restore::Retarget::Keep => return Ok(None),
        crate::restore::Retarget::Set(c) => c,
        crate::restore::Retarget::Ambiguous(why) => {
            return Err(Error::Step(format!("{}: {why}", node.label())));
        }
    };
    let applied = set_restore_command(topo, node, state.server_version_num, &want).await?;
    Ok(Some((current.to_string(), want, applied)))
}

/// `ALTER SYSTEM SET restore_command`, then a reload where the server
/// reads it on reload (14 and later).
pub async fn set_restore_command(
    topo: &Topology,
    node: &Node,
    server_version_num: u32,
    value: &str,
) -> Result<RestoreApplied> {
    let literal = postgres::quote_literal(value)
        .ok_or_else(|| Error::Usage(format!("restore_command {value:?} holds a NUL")))?;
    execute_node(
        topo,
        node,
        "ALTER SYSTEM SET restore_command",
        &format!("ALTER SYSTEM SET restore_command = {literal}"),
    )
    .await?;
    if server_version_num >= 140000 {
        execute_node(topo, node, "pg_reload_conf()", "SELECT pg_reload_conf()").await?;
        Ok(RestoreApplied::Reloaded)
    } else {
        Ok(RestoreApplied::AtRestart)
    }
}

/// Pause `node`'s `restore_command` (`original`, what it has now) while a
/// promote request or a new upstream waits for it (14+ reads it on
/// reload): see [`crate::restore::paused`]. Put back with
/// [`set_restore_command`].
pub async fn pause_restore(
    topo: &Topology,
    node: &Node,
    server_version_num: u32,
    original: &str,
) -> Result<RestoreApplied> {
    let paused = crate::restore::paused(original);
    set_restore_command(topo, node, server_version_num, &paused).await
}

/// Cut short the `restore_command` a standby's startup process is running
/// right now (an `scp` to a silent host waits for ssh's connect timeout,
/// and the startup process acts on a promote request or a new
/// `primary_conninfo` only between attempts). The children of the shell
/// it runs are stopped (SIGTERM), never the shell itself: a shell killed
/// by a signal is fatal to the startup process, an `scp` killed under
/// `|| exit 1` is a missing file. Returns how many it stopped.
pub async fn interrupt_restore(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    deadline: Instant,
) -> Result<u32> {
    let data = node.data_dir()?.display().to_string();
    let script = format!(
        "pm=$(head -1 {} 2>/dev/null) || exit 0; n=0; \
         for st in $(pgrep -P \"$pm\"); do \
           tr '\\0' ' ' </proc/$st/cmdline 2>/dev/null | grep -q startup || continue; \
           for sh in $(pgrep -P \"$st\"); do \
             for c in $(pgrep -P \"$sh\"); do kill -TERM \"$c\" && n=$((n+1)); done; \
           done; \
         done; echo \"stopped=$n\"",
        remote::quote(&format!("{data}/postmaster.pid"))
    );
    let t = budget(deadline, topo.config.ssh.command_timeout);
    let out = remote
        .run_script(&node.ssh_host, &script, t)
        .await
        .map_err(|e| Error::step(&format!("interrupt restore_command on {}", node.label()), e))?;
    Ok(out
        .stdout_str()
        .lines()
        .find_map(|l| l.strip_prefix("stopped="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0))
}

/// Prove that a commit on `node` returns, synchronous replication
/// included (what an application's write waits for), within `within`.
/// Assigning an xid alone does not notice a commit that waits for a
/// standby that is gone.
pub async fn commit_returns(topo: &Topology, node: &Node, within: Duration) -> Result<Duration> {
    let target = topo.pg_target(node);
    let step = format!("test commit on {}", node.label());
    let client = postgres::connect(&target)
        .await
        .map_err(|e| Error::step(&step, e))?;
    let t = Instant::now();
    // The transaction must write WAL before its commit (a catalog row of a
    // temporary table does): one that only took an xid commits
    // asynchronously and never waits for a standby.
    let sql = "BEGIN; SET LOCAL synchronous_commit = on; \
               CREATE TEMPORARY TABLE pgha_commit_check (x int) ON COMMIT DROP; COMMIT";
    match postgres::bounded(&client, &target, &step, within, client.batch_execute(sql)).await {
        Ok(()) => Ok(t.elapsed()),
        // The commit stays, locally; bounded() stopped the wait on the
        // server too.
        Err(postgres::PgError::Timeout { .. }) => Err(Error::Step(format!(
            "writes through {} block: a test commit did not return within {:.1}s (synchronous_standby_names waits for a standby that does not confirm); check pg_stat_replication there",
            node.label(),
            within.as_secs_f64()
        ))),
        Err(e) => Err(Error::step(&step, e)),
    }
}

/// Promote `node` and wait until it accepts writes. Returns its new
/// timeline. With `cut_restore`, the `restore_command` attempt the startup
/// process is in when the request is sent is cut short
/// ([`interrupt_restore`]), so that it acts on the request at once.
pub async fn promote(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    state: &NodeState,
    cut_restore: bool,
    deadline: Instant,
) -> Result<u32> {
    let t = budget(deadline, topo.config.failover.promote_timeout);
    let target = topo.pg_target(node);
    match PromoteMethod::for_version(state.server_version_num) {
        PromoteMethod::SqlPgPromote => {
            let client = postgres::connect(&target)
                .await
                .map_err(|e| Error::step(&format!("promote {}", node.label()), e))?;
            let secs = t.as_secs().clamp(1, 3600) as u32;
            // Signal only, then poll below every 10 ms: pg_promote(true)
            // and `pg_ctl promote -w` both poll at 100 ms steps.
            let sent = postgres::promote(&client, &target, false, secs)
                .await
                .map_err(|e| Error::step(&format!("promote {}", node.label()), e))?;
            if !sent {
                return Err(Error::Step(format!(
                    "promote {}: pg_promote() could not signal the server; see the server log there",
                    node.label()
                )));
            }
        }
        PromoteMethod::PgCtlPromote => {
            let out = pg_ctl(topo, remote, node, &["promote", "-w"], t).await?;
            if !out.success() {
                return Err(Error::Step(format!(
                    "promote {}: pg_ctl promote exited {}: {}",
                    node.label(),
                    out.status,
                    out.stderr_str().trim()
                )));
            }
        }
    }
    // The cut runs beside the wait and never delays it: when the server
    // is out of recovery first, it is dropped.
    let interrupt = async {
        if cut_restore {
            match interrupt_restore(topo, remote, node, deadline).await {
                Ok(0) => {}
                Ok(k) => info!(
                    "{}: cut short {k} restore_command attempt(s) in flight, so the promote request is handled now",
                    node.label()
                ),
                Err(e) => warn!("{e}"),
            }
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        r = wait_promoted(topo, node, state, t) => r,
        () = interrupt => unreachable!("pending never completes"),
    }
}

/// Wait until `node` is out of recovery and accepts writes, sending the
/// promote request again while it is not (see below). Returns its timeline.
async fn wait_promoted(
    topo: &Topology,
    node: &Node,
    state: &NodeState,
    t: Duration,
) -> Result<u32> {
    let target = topo.pg_target(node);
    // Proof that it accepts writes: out of recovery and able to assign an xid.
    let client = postgres::connect(&target)
        .await
        .map_err(|e| Error::step(&format!("check promoted {}", node.label()), e))?;
    let start = Instant::now();
    let end = start + t;
    // A promote request the startup process has not acted on within
    // RESIGNAL is sent again (each pg_promote() rewrites the signal file and
    // signals the postmaster once more): a request that arrives while the
    // startup process is between its checks must not wait for its next
    // wakeup (wal_retrieve_retry_interval, 5 s by default).
    const RESIGNAL: Duration = Duration::from_millis(100);
    let mut resend_at = start + RESIGNAL;
    loop {
        let s = postgres::observe(&client, &target)
            .await
            .map_err(|e| Error::step(&format!("check promoted {}", node.label()), e))?;
        if s.in_recovery
            && Instant::now() >= resend_at
            && PromoteMethod::for_version(state.server_version_num) == PromoteMethod::SqlPgPromote
        {
            info!(
                "{}: still in recovery {:.2}s after the promote request: signalling again",
                node.label(),
                start.elapsed().as_secs_f64()
            );
            let secs = t.as_secs().clamp(1, 3600) as u32;
            if let Err(e) = postgres::promote(&client, &target, false, secs).await {
                debug!("{}: second promote request: {e}", node.label());
            }
            resend_at = Instant::now() + RESIGNAL;
        }
        if !s.in_recovery {
            postgres::accepts_writes(&client, &target)
                .await
                .map_err(|e| Error::step(&format!("write check on {}", node.label()), e))?;
            return Ok(s.timeline);
        }
        if Instant::now() > end {
            return Err(Error::Step(format!(
                "promote {}: still in recovery after {:.1}s",
                node.label(),
                t.as_secs_f64()
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The history file of `timeline` as the new primary has it.
pub async fn read_history(
    topo: &Topology,
    primary: &Node,
    state: &NodeState,
    timeline: u32,
) -> Result<Vec<u8>> {
    let target = topo.pg_target(primary);
    let name = format!(
        "{}/{}",
        wal_dir(state.server_version_num),
        history_file_name(timeline)
    );
    let client = postgres::connect(&target)
        .await
        .map_err(|e| Error::step(&format!("read {name} on {}", primary.label()), e))?;
    postgres::read_binary_file(&client, &target, &name)
        .await
        .map_err(|e| Error::step(&format!("read {name} on {}", primary.label()), e))
}

/// The parsed history of the primary's timeline, to tell the standbys
/// that diverged from it ([`crate::lineage::diverged`]): empty on timeline
/// 1, and when it cannot be read (reported; then none is called diverged).
pub async fn timeline_history(
    topo: &Topology,
    primary: &Node,
    state: &NodeState,
) -> Vec<crate::lineage::HistoryEntry> {
    if state.timeline < 2 {
        return Vec::new();
    }
    match read_history(topo, primary, state, state.timeline).await {
        Ok(h) => crate::lineage::parse_history(&String::from_utf8_lossy(&h)),
        Err(e) => {
            tracing::warn!("{e}");
            Vec::new()
        }
    }
}

/// Put a history file into a standby's WAL directory and archive, unless an
/// identical copy is there already; verified by md5 on the standby.
pub async fn put_history(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    state: &NodeState,
    timeline: u32,
    data: &[u8],
    deadline: Instant,
) -> Result<Vec<String>> {
    let want = crate::text::md5_hex(&[data]);
    let name = history_file_name(timeline);
    let mut dirs = vec![node.data_dir()?.join(wal_dir(state.server_version_num))];
    if let Some(a) = &topo.config.postgres.archive_dir {
        dirs.push(a.clone());
    }
    let mut done = Vec::new();
    for dir in dirs {
        let path = dir.join(&name).display().to_string();
        let t = budget(deadline, topo.config.ssh.command_timeout);
        let have = remote
            .run(&node.ssh_host, &["md5sum", &path], t)
            .await
            .map_err(|e| Error::step(&format!("history file on {}", node.label()), e))?;
        if have.success() && have.stdout_str().split_whitespace().next() == Some(want.as_str()) {
            debug!("{}: {path} already there", node.label());
            continue;
        }
        remote
            .write_file(&node.ssh_host, &path, data, 0o600, t)
            .await
            .map_err(|e| Error::step(&format!("copy {name} to {}", node.label()), e))?;
        let check = remote
            .run(&node.ssh_host, &["md5sum", &path], t)
            .await
            .map_err(|e| Error::step(&format!("verify {name} on {}", node.label()), e))?;
        let got = check.stdout_str();
        if got.split_whitespace().next() != Some(want.as_str()) {
            return Err(Error::Step(format!(
                "copy {name} to {}: checksum mismatch at {path} (want {want}, got {})",
                node.label(),
                got.trim()
            )));
        }
        done.push(path);
    }
    Ok(done)
}

/// Outcome of a repoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repointed {
    /// Already streaming from the primary on its timeline.
    AlreadyFollowing,
    /// Already configured to follow it; it will reconnect by itself.
    AlreadyPointed,
    /// `primary_conninfo` changed and applied by reload.
    Reloaded,
    /// Changed and applied by restarting the standby.
    Restarted,
}

impl Repointed {
    /// The progress-line text of this outcome.
    pub fn describe(&self) -> &'static str {
        match self {
            Repointed::AlreadyFollowing => "already streams from it",
            Repointed::AlreadyPointed => "already points at it",
            Repointed::Reloaded => "repointed (reload)",
            Repointed::Restarted => "repointed (restart)",
        }
    }

    /// Whether the node's configuration was changed.
    pub fn changed(&self) -> bool {
        matches!(self, Repointed::Reloaded | Repointed::Restarted)
    }
}

/// Make `node` stream from `primary`.
pub async fn repoint(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    state: &NodeState,
    primary: &Node,
    timeline: u32,
    deadline: Instant,
) -> Result<Repointed> {
    let streaming_from_primary = state.wal_receiver.as_ref().is_some_and(|r| {
        r.streaming()
            && r.received_tli == timeline
            && r.sender_host
                .as_deref()
                .is_some_and(|h| primary.addresses().contains(&h))
    });
    if streaming_from_primary {
        return Ok(Repointed::AlreadyFollowing);
    }
    let current = state.primary_conninfo.as_deref().filter(|c| !c.is_empty());
    if crate::pgconf::points_at(current, primary) {
        return Ok(Repointed::AlreadyPointed);
    }
    let conninfo = crate::pgconf::follow_conninfo(
        current,
        primary,
        &topo.config.postgres.replication_user,
        node.application_name.as_deref(),
    );
    let what = format!("repoint {} to {}", node.label(), primary.label());
    let t = budget(deadline, topo.config.ssh.command_timeout);
    let method = RepointMethod::for_version(state.server_version_num);
    let set = match method {
        RepointMethod::AlterSystemReload | RepointMethod::AlterSystemRestart => {
            alter_primary_conninfo(topo, remote, node, conninfo, t).await
        }
        RepointMethod::RecoveryConfRestart => write_recovery_conf(remote, node, &conninfo, t).await,
    };
    set.map_err(|e| Error::step(&what, e))?;
    if method == RepointMethod::AlterSystemReload {
        return Ok(Repointed::Reloaded);
    }
    let log = pg_ctl_log(topo, node)?;
    let argv = ["restart", "-m", "fast", "-w", "-l", &log];
    let out = pg_ctl(topo, remote, node, &argv, t).await?;
    if !out.success() {
        return Err(Error::Step(format!(
            "{what}: pg_ctl restart exited {}: {}",
            out.status,
            out.stderr_str().trim()
        )));
    }
    Ok(Repointed::Restarted)
}

/// 12+: `ALTER SYSTEM SET primary_conninfo` (and a reload). The server
/// logs a reloaded setting's new value: a password inside primary_conninfo
/// goes to the standby's passfile instead, where libpq finds it.
async fn alter_primary_conninfo(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    mut conninfo: String,
    t: Duration,
) -> std::result::Result<(), String> {
    let mut kv = postgres::parse_conninfo(&conninfo);
    if let Some(password) = kv.remove("password") {
        password_to_passfile(topo, remote, node, &kv, &password, t)
            .await
            .map_err(|e| e.to_string())?;
        conninfo = crate::pgconf::format_conninfo(&kv);
    }
    let target = topo.pg_target(node);
    let client = postgres::connect(&target)
        .await
        .map_err(|e| e.to_string())?;
    postgres::set_primary_conninfo(&client, &target, &conninfo)
        .await
        .map_err(|e| e.to_string())
}

/// 11 and older: `primary_conninfo` in `recovery.conf` (read at start).
async fn write_recovery_conf(
    remote: &Remote,
    node: &Node,
    conninfo: &str,
    t: Duration,
) -> std::result::Result<(), String> {
    let path = node
        .data_dir()
        .map_err(|e| e.to_string())?
        .join("recovery.conf")
        .display()
        .to_string();
    let text = remote
        .read_file(&node.ssh_host, &path, t)
        .await
        .map_err(|e| e.to_string())?;
    let new = crate::pgconf::rewrite_recovery_conf(&String::from_utf8_lossy(&text), conninfo);
    remote
        .write_file(&node.ssh_host, &path, new.as_bytes(), 0o600, t)
        .await
        .map_err(|e| e.to_string())
}

/// Put `password` for the replication connection `kv` describes into the
/// standby's passfile (`passfile` in the conninfo, else the ssh user's
/// `~/.pgpass`, the server's own user), as the first line that matches,
/// unless a matching line gives it already. Mode 0600; the password goes
/// over stdin, never on a command line.
async fn password_to_passfile(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    kv: &BTreeMap<String, String>,
    password: &str,
    t: Duration,
) -> Result<()> {
    let host = kv.get("host").map(String::as_str).unwrap_or("localhost");
    let port = kv.get("port").map(String::as_str).unwrap_or("5432");
    let user = kv
        .get("user")
        .map(String::as_str)
        .unwrap_or(&topo.config.postgres.replication_user);
    let path = match kv.get("passfile") {
        Some(p) => p.clone(),
        None => {
            let out = remote
                .run_script(&node.ssh_host, "printf '%s' \"$HOME\"", t)
                .await
                .map_err(|e| Error::step(&format!("home directory on {}", node.label()), e))?;
            format!("{}/.pgpass", out.stdout_str().trim_end())
        }
    };
    let script = format!("cat {} 2>/dev/null || true", remote::quote(&path));
    let text = remote
        .run_script(&node.ssh_host, &script, t)
        .await
        .map_err(|e| Error::step(&format!("read {path} on {}", node.label()), e))?
        .stdout_str();
    if postgres::pgpass_match(&text, host, port, "replication", user).as_deref() == Some(password) {
        return Ok(());
    }
    let esc = |v: &str| v.replace('\\', "\\\\").replace(':', "\\:");
    let line = format!(
        "{}:{}:replication:{}:{}\n",
        esc(host),
        esc(port),
        esc(user),
        esc(password)
    );
    remote
        .write_file(
            &node.ssh_host,
            &path,
            format!("{line}{text}").as_bytes(),
            0o600,
            t,
        )
        .await
        .map_err(|e| Error::step(&format!("write {path} on {}", node.label()), e))?;
    info!(
        "{}: the replication password moved from primary_conninfo to {path}",
        node.label()
    );
    Ok(())
}

/// Wait until `node` streams from `primary` on `timeline`. Ends early,
/// rather than at `[failover] follow_timeout`, when waiting longer cannot
/// help: [`Error::PrimaryGone`] when `primary` has not answered for
/// [`PRIMARY_SILENT_FOR`] or no longer answers as the primary of
/// `timeline` (a failover since); [`Error::Diverged`] when `node` has been
/// past the point where the primary's history left its timeline for
/// [`DIVERGED_FOR`] (WAL the primary never had: it cannot stream, and only
/// a rewind that discards that WAL makes it a standby again).
pub async fn wait_streaming(
    topo: &Topology,
    node: &Node,
    primary: &Node,
    timeline: u32,
    deadline: Instant,
) -> Result<Duration> {
    let start = Instant::now();
    let end = Instant::now() + budget(deadline, topo.config.failover.follow_timeout);
    let target = topo.pg_target(node);
    let mut watch = PrimaryWatch::new(topo, primary, timeline);
    let mut diverged_since: Option<Instant> = None;
    let mut last = String::from("not observed yet");
    while Instant::now() < end {
        match postgres::observe_target(&target).await {
            Ok(s) => {
                if let Some(r) = &s.wal_receiver {
                    let from_primary = r
                        .sender_host
                        .as_deref()
                        .is_some_and(|h| primary.addresses().contains(&h));
                    if r.streaming() && r.received_tli == timeline && from_primary {
                        return Ok(start.elapsed());
                    }
                    last = format!(
                        "wal receiver {} from {} on timeline {}",
                        r.status,
                        r.sender_host.as_deref().unwrap_or("?"),
                        r.received_tli
                    );
                } else {
                    last = if s.in_recovery {
                        "no wal receiver running".into()
                    } else {
                        "it is not in recovery (a primary)".into()
                    };
                }
                match watch.diverged(&s) {
                    Some(why) => {
                        let since = *diverged_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= DIVERGED_FOR {
                            return Err(Error::Diverged(format!(
                                "{} cannot stream from {}: {why}; pg_rewind would discard that WAL, which exists on no other node: to keep it, make node {} the primary instead; to discard it, pgha-follow {} --discard-wal",
                                node.label(),
                                primary.label(),
                                node.id,
                                node.id
                            )));
                        }
                    }
                    None => diverged_since = None,
                }
            }
            Err(e) => last = e.to_string(),
        }
        if let Some(gone) = watch.gone().await {
            return Err(Error::PrimaryGone(format!(
                "{} does not stream from {} on timeline {timeline} after {:.1}s ({last}), and waiting longer cannot help: {gone}",
                node.label(),
                primary.label(),
                start.elapsed().as_secs_f64()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Error::Step(format!(
        "{} does not stream from {} on timeline {timeline} after {:.1}s: {last}",
        node.label(),
        primary.label(),
        start.elapsed().as_secs_f64()
    )))
}

/// How long the primary a standby waits for may stay silent before the
/// wait ends: a standby cannot stream from a primary that died.
pub const PRIMARY_SILENT_FOR: Duration = Duration::from_secs(2);

/// How long a standby may be seen past the fork before the wait ends: its
/// WAL receiver may still be writing what the old primary sent last.
pub const DIVERGED_FOR: Duration = Duration::from_secs(1);

/// How often [`wait_streaming`] asks the primary whether it still is one.
const ASK_PRIMARY_EVERY: Duration = Duration::from_millis(500);

/// The primary a standby is waiting for, asked every
/// [`ASK_PRIMARY_EVERY`]: whether it still answers as the primary of the
/// timeline, and its timeline's history, to tell a standby that diverged.
struct PrimaryWatch<'a> {
    topo: &'a Topology,
    primary: &'a Node,
    timeline: u32,
    asked: Option<Instant>,
    answered: Instant,
    state: Option<NodeState>,
    history: Option<Vec<crate::lineage::HistoryEntry>>,
}

impl<'a> PrimaryWatch<'a> {
    fn new(topo: &'a Topology, primary: &'a Node, timeline: u32) -> Self {
        PrimaryWatch {
            topo,
            primary,
            timeline,
            asked: None,
            answered: Instant::now(),
            state: None,
            history: None,
        }
    }

    /// `Some(why)` when the primary is gone: silent for
    /// [`PRIMARY_SILENT_FOR`], or answering as something else. Asks it at
    /// most every [`ASK_PRIMARY_EVERY`], each ask bounded by that too.
    async fn gone(&mut self) -> Option<String> {
        if self.asked.is_some_and(|t| t.elapsed() < ASK_PRIMARY_EVERY) {
            return None;
        }
        self.asked = Some(Instant::now());
        let t = self.topo.pg_target(self.primary);
        match tokio::time::timeout(ASK_PRIMARY_EVERY, postgres::observe_target(&t)).await {
            Ok(Ok(s)) if !s.in_recovery && s.timeline == self.timeline => {
                self.answered = Instant::now();
                if self.history.is_none() {
                    self.history = Some(timeline_history(self.topo, self.primary, &s).await);
                }
                self.state = Some(s);
                None
            }
            Ok(Ok(s)) => Some(format!(
                "{} now answers as a {} on timeline {} (a failover since?)",
                self.primary.label(),
                if s.in_recovery { "standby" } else { "primary" },
                s.timeline
            )),
            _ if self.answered.elapsed() >= PRIMARY_SILENT_FOR => Some(format!(
                "{} has not answered for {:.1}s: the next failover's follow_primary_command repoints this standby",
                self.primary.label(),
                self.answered.elapsed().as_secs_f64()
            )),
            _ => None,
        }
    }

    /// Why `standby`, on an older timeline, cannot follow the primary: it
    /// is past the point where the primary's history left its timeline.
    /// `None` until the primary's history is known, and for a standby on
    /// the primary's timeline (the primary's last answer may be up to
    /// [`ASK_PRIMARY_EVERY`] old, so "ahead of it" proves nothing).
    fn diverged(&self, standby: &NodeState) -> Option<String> {
        let (p, h) = (self.state.as_ref()?, self.history.as_ref()?);
        if standby.timeline >= p.timeline {
            return None;
        }
        crate::lineage::diverged(h, p, standby)
    }
}

/// Drop a standby's replication slot on the primary, if it exists.
pub async fn drop_slot(topo: &Topology, primary: &Node, slot: &str) -> Result<bool> {
    let target = topo.pg_target(primary);
    let client = postgres::connect(&target)
        .await
        .map_err(|e| Error::step(&format!("drop slot {slot} on {}", primary.label()), e))?;
    postgres::drop_replication_slot(&client, &target, slot)
        .await
        .map_err(|e| Error::step(&format!("drop slot {slot} on {}", primary.label()), e))
}

/// The replication slot name pgha uses for a node: its
/// `backend_application_nameN`, else its host, made a valid slot name.
pub fn slot_name(node: &Node) -> String {
    let base = node
        .application_name
        .clone()
        .unwrap_or_else(|| node.host.clone());
    base.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Bytes of WAL `standby` has yet to replay to reach where `primary` is
/// (`pg_current_wal_lsn()` minus `pg_last_wal_replay_lsn()`); `None` when
/// either position is unknown. What `[follow] max_lag` bounds.
pub fn replay_lag(primary: &NodeState, standby: &NodeState) -> Option<u64> {
    let p = primary.current_lsn?;
    let s = standby.replay_lsn.or(standby.receive_lsn)?;
    Some(s.bytes_behind(p))
}

/// Wait until `node` has replayed to within `max_lag` bytes of `primary`
/// (bounded by `[failover] follow_timeout`). Returns the last lag seen.
pub async fn wait_caught_up(
    topo: &Topology,
    node: &Node,
    primary: &Node,
    max_lag: u64,
    deadline: Instant,
) -> Result<u64> {
    let start = Instant::now();
    let end = start + budget(deadline, topo.config.failover.follow_timeout);
    let (pt, nt) = (topo.pg_target(primary), topo.pg_target(node));
    loop {
        let last = match (
            postgres::observe_target(&pt).await,
            postgres::observe_target(&nt).await,
        ) {
            (Ok(p), Ok(s)) => match replay_lag(&p, &s) {
                Some(lag) if lag <= max_lag => return Ok(lag),
                Some(lag) => format!("{lag} bytes behind"),
                None => "replay position unknown".to_string(),
            },
            (Err(e), _) | (_, Err(e)) => e.to_string(),
        };
        if Instant::now() >= end {
            return Err(Error::Step(format!(
                "{} has not caught up with {} within {:.1}s ({last}; [follow] max_lag is {max_lag} bytes): not attached; run pgha-attach {} once it has",
                node.label(),
                primary.label(),
                start.elapsed().as_secs_f64(),
                node.id
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Run one statement on `node` (extended protocol, parameters allowed),
/// bounded by `[postgres] connect_timeout` and `query_timeout`; returns
/// the rows. For the odd query no step of [`crate::postgres`] covers.
pub async fn query_node(
    topo: &Topology,
    node: &Node,
    what: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>> {
    let target = topo.pg_target(node);
    let step = format!("{what} on {}", node.label());
    let client = postgres::connect(&target)
        .await
        .map_err(|e| Error::step(&step, e))?;
    let rows = client.query(sql, params);
    postgres::bounded(&client, &target, &step, target.query_timeout, rows)
        .await
        .map_err(|e| Error::Step(e.to_string()))
}

/// Run one statement on `node` with the simple protocol (what `ALTER
/// SYSTEM` and `CHECKPOINT` need), bounded like [`query_node`].
pub async fn execute_node(topo: &Topology, node: &Node, what: &str, sql: &str) -> Result<()> {
    let target = topo.pg_target(node);
    let step = format!("{what} on {}", node.label());
    let client = postgres::connect(&target)
        .await
        .map_err(|e| Error::step(&step, e))?;
    let done = client.batch_execute(sql);
    postgres::bounded(&client, &target, &step, target.query_timeout, done)
        .await
        .map_err(|e| Error::Step(e.to_string()))
}

/// What [`hold_wal_for_stop`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalHold {
    /// `wal_keep_size` (MB) keeps enough already.
    Enough(u64),
    /// Raised from `from` to `to` MB in the running server; the file has
    /// the operator's value again (`file_restored`), applied at the next
    /// reload or start.
    Raised {
        from: u64,
        to: u64,
        file_restored: bool,
    },
}

/// Before the clean stop of a switchover: make the old primary keep the
/// WAL its walsenders still have to send. With `archive_mode` on, the
/// shutdown switches to a new WAL segment, then writes the shutdown
/// checkpoint, which removes every archived segment before the new one
/// unless `wal_keep_size` or a slot keeps it. A walsender still sending
/// the switched segment's tail then fails ("requested WAL segment ... has
/// already been removed") and the standbys never receive the shutdown
/// checkpoint: the switchover must be aborted. Seen with `wal_keep_size =
/// 0` (PostgreSQL's default) and no slot, once in two switchovers under
/// load.
///
/// `behind`: bytes the candidate has yet to receive. When `wal_keep_size`
/// is below that plus two segments, it is raised in the running server
/// only: `ALTER SYSTEM SET`, reload, wait until a new session sees it,
/// then the file is put back as it was, without a reload, so the next
/// start has the operator's value.
pub async fn hold_wal_for_stop(topo: &Topology, node: &Node, behind: u64) -> Result<WalHold> {
    let target = topo.pg_target(node);
    let step = format!("keep WAL for the stop on {}", node.label());
    let err = |e: postgres::PgError| Error::Step(e.to_string());
    let client = postgres::connect(&target)
        .await
        .map_err(|e| Error::step(&step, e))?;
    let q = client.query(
        "select s.setting::bigint, coalesce(s.sourcefile, ''), \
         (select setting::bigint from pg_settings where name = 'wal_segment_size') \
         from pg_settings s where s.name = 'wal_keep_size'",
        &[],
    );
    let rows = postgres::bounded(&client, &target, &step, target.query_timeout, q)
        .await
        .map_err(err)?;
    let row = rows
        .first()
        .ok_or_else(|| Error::Step(format!("{step}: no wal_keep_size in pg_settings")))?;
    let (keep_mb, source, segment): (i64, String, i64) = (row.get(0), row.get(1), row.get(2));
    let keep_mb = keep_mb.max(0) as u64;
    let need_mb = (behind + 2 * segment.max(1) as u64).div_ceil(1024 * 1024);
    if keep_mb >= need_mb {
        return Ok(WalHold::Enough(keep_mb));
    }
    let set = format!("ALTER SYSTEM SET wal_keep_size = '{need_mb}MB'");
    let raise = async {
        client.batch_execute(&set).await?;
        client.batch_execute("SELECT pg_reload_conf()").await
    };
    postgres::bounded(&client, &target, &step, target.query_timeout, raise)
        .await
        .map_err(err)?;
    // A new session forks from the postmaster, which has read the file
    // and signalled the checkpointer by the time it shows the new value.
    let end = Instant::now() + Duration::from_secs(1);
    loop {
        let seen = query_node(
            topo,
            node,
            "read wal_keep_size",
            "select setting::bigint from pg_settings where name = 'wal_keep_size'",
            &[],
        )
        .await?
        .first()
        .map(|r| r.get::<_, i64>(0).max(0) as u64)
        .unwrap_or(0);
        if seen >= need_mb {
            break;
        }
        if Instant::now() >= end {
            return Err(Error::Step(format!(
                "{step}: wal_keep_size still {seen}MB 1s after the reload"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let back = if source.ends_with("postgresql.auto.conf") {
        format!("ALTER SYSTEM SET wal_keep_size = '{keep_mb}MB'")
    } else {
        "ALTER SYSTEM RESET wal_keep_size".to_string()
    };
    let restored = postgres::bounded(
        &client,
        &target,
        &step,
        target.query_timeout,
        client.batch_execute(&back),
    )
    .await;
    if let Err(e) = &restored {
        warn!(
            "{}: {step}: putting postgresql.auto.conf back failed ({e}): it keeps wal_keep_size = '{need_mb}MB' (harmless: {need_mb}MB more WAL kept); {back} there to undo",
            node.label()
        );
    }
    Ok(WalHold::Raised {
        from: keep_mb,
        to: need_mb,
        file_restored: restored.is_ok(),
    })
}

/// Create the physical replication slot `slot` on `primary` unless it
/// exists (`pg_create_physical_replication_slot(slot, true)`, reserving
/// WAL at once). Returns whether it was created.
pub async fn ensure_slot(topo: &Topology, primary: &Node, slot: &str) -> Result<bool> {
    let rows = query_node(
        topo,
        primary,
        &format!("create replication slot {slot}"),
        "SELECT pg_create_physical_replication_slot($1, true) FROM (SELECT 1) s \
         WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
        &[&slot],
    )
    .await?;
    Ok(!rows.is_empty())
}

/// Set `primary_slot_name` on a running standby (`ALTER SYSTEM` and
/// reload, which applies it on 13+) unless it is set already. Returns
/// whether it changed.
pub async fn set_primary_slot_name(topo: &Topology, node: &Node, slot: &str) -> Result<bool> {
    let rows = query_node(
        topo,
        node,
        "read primary_slot_name",
        "SELECT current_setting('primary_slot_name', true)",
        &[],
    )
    .await?;
    let current: Option<String> = rows.first().and_then(|r| r.get(0));
    if current.as_deref() == Some(slot) {
        return Ok(false);
    }
    let literal = postgres::quote_literal(slot)
        .ok_or_else(|| Error::Usage(format!("slot name {slot:?} holds a NUL")))?;
    // ALTER SYSTEM refuses a transaction block: simple protocol, one
    // statement per round trip.
    let set = format!("ALTER SYSTEM SET primary_slot_name = {literal}");
    execute_node(topo, node, "ALTER SYSTEM SET primary_slot_name", &set).await?;
    execute_node(topo, node, "pg_reload_conf()", "SELECT pg_reload_conf()").await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgconf::{follow_conninfo, points_at, rewrite_recovery_conf};

    fn node(id: u32, host: &str, repl: &str) -> Node {
        Node {
            id,
            host: host.into(),
            port: 5432,
            data_dir: Some("/var/lib/postgresql/15/main".into()),
            ssh_host: host.into(),
            replication_host: repl.into(),
            application_name: Some(format!("pg{id}")),
        }
    }

    #[test]
    fn methods_by_version() {
        assert_eq!(
            PromoteMethod::for_version(150018),
            PromoteMethod::SqlPgPromote
        );
        assert_eq!(
            PromoteMethod::for_version(110000),
            PromoteMethod::PgCtlPromote
        );
        assert_eq!(
            RepointMethod::for_version(180000),
            RepointMethod::AlterSystemReload
        );
        assert_eq!(
            RepointMethod::for_version(130000),
            RepointMethod::AlterSystemReload
        );
        assert_eq!(
            RepointMethod::for_version(120005),
            RepointMethod::AlterSystemRestart
        );
        assert_eq!(
            RepointMethod::for_version(90124),
            RepointMethod::RecoveryConfRestart
        );
        assert_eq!(wal_dir(90124), "pg_xlog");
        assert_eq!(wal_dir(150000), "pg_wal");
        assert_eq!(history_file_name(2), "00000002.history");
        assert_eq!(history_file_name(26), "0000001A.history");
    }

    #[test]
    fn conninfo_keeps_what_the_operator_set() {
        let p = node(1, "127.0.0.3", "127.0.1.3");
        let c = follow_conninfo(
            Some(
                "user=repl passfile='/var/lib/postgresql/.pgpass' host=127.0.1.2 port=5432 sslmode=prefer application_name=pg2",
            ),
            &p,
            "other",
            Some("ignored"),
        );
        let kv = postgres::parse_conninfo(&c);
        assert_eq!(kv["host"], "127.0.1.3");
        assert_eq!(kv["port"], "5432");
        assert_eq!(kv["user"], "repl");
        assert_eq!(kv["passfile"], "/var/lib/postgresql/.pgpass");
        assert_eq!(kv["application_name"], "pg2");
        assert_eq!(kv["sslmode"], "prefer");
        assert!(c.starts_with("host='127.0.1.3' port='5432'"), "{c}");
        // Nothing set before: user and application_name are filled in.
        let kv = postgres::parse_conninfo(&follow_conninfo(None, &p, "repl", Some("pg2")));
        assert_eq!(kv["user"], "repl");
        assert_eq!(kv["application_name"], "pg2");
        // Quotes and backslashes survive.
        let c = follow_conninfo(Some("password='it\\'s' options='-c a=b'"), &p, "r", None);
        let kv = postgres::parse_conninfo(&c);
        assert_eq!(kv["password"], "it's");
        assert_eq!(kv["options"], "-c a=b");
    }

    #[test]
    fn points_at_any_address_of_the_primary() {
        let p = node(1, "127.0.0.3", "127.0.1.3");
        assert!(points_at(Some("host=127.0.1.3 port=5432 user=repl"), &p));
        assert!(points_at(Some("host=127.0.0.3 user=repl"), &p));
        assert!(!points_at(Some("host=127.0.0.2 port=5432"), &p));
        assert!(!points_at(Some("host=127.0.0.3 port=5433"), &p));
        assert!(!points_at(None, &p));
    }

    #[test]
    fn recovery_conf_rewrite() {
        let old = "standby_mode = 'on'\nprimary_conninfo = 'host=127.0.0.2 port=5432'\nrestore_command = 'cp /a/%f %p'\ntrigger_file = '/tmp/pgsql.trigger'";
        let new = crate::pgconf::rewrite_recovery_conf(old, "host='127.0.0.3' user='repl'");
        assert_eq!(
            new,
            "standby_mode = 'on'\nprimary_conninfo = 'host=''127.0.0.3'' user=''repl'''\nrestore_command = 'cp /a/%f %p'\ntrigger_file = '/tmp/pgsql.trigger'\n"
        );
        let added = rewrite_recovery_conf("standby_mode = 'on'\n", "host=x");
        assert!(added.ends_with("primary_conninfo = 'host=x'\n"), "{added}");
    }

    #[test]
    fn slot_names_are_valid() {
        let mut n = node(2, "127.0.0.4", "127.0.0.4");
        assert_eq!(slot_name(&n), "pg2");
        n.application_name = None;
        assert_eq!(slot_name(&n), "127_0_0_4");
    }

    #[test]
    fn budget_is_capped_and_never_zero() {
        let d = Instant::now() + Duration::from_secs(10);
        assert_eq!(budget(d, Duration::from_secs(3)), Duration::from_secs(3));
        let past = Instant::now() - Duration::from_secs(1);
        assert_eq!(
            budget(past, Duration::from_secs(3)),
            Duration::from_millis(100)
        );
    }

    fn state(
        in_recovery: bool,
        current: Option<&str>,
        replay: Option<&str>,
        receive: Option<&str>,
    ) -> NodeState {
        let l = |s: Option<&str>| s.map(|s| s.parse().unwrap());
        NodeState {
            host: "127.0.0.2".into(),
            port: 5432,
            server_version_num: 150000,
            in_recovery,
            timeline: 2,
            current_lsn: l(current),
            receive_lsn: l(receive),
            replay_lsn: l(replay),
            wal_receiver: None,
            primary_conninfo: None,
            system_identifier: 1,
            data_directory: String::new(),
            wal_log_hints: true,
            data_checksums: false,
            replicas: vec![],
            synchronous_standby_names: String::new(),
            synchronous_commit: "on".into(),
            restore_command: String::new(),
        }
    }

    #[test]
    fn replay_lag_in_bytes() {
        let p = state(false, Some("0/5000100"), None, None);
        assert_eq!(
            replay_lag(&p, &state(true, None, Some("0/5000000"), Some("0/5000100"))),
            Some(0x100)
        );
        // Ahead (observed a moment later): no lag, not a wrap-around.
        assert_eq!(
            replay_lag(&p, &state(true, None, Some("0/5000200"), None)),
            Some(0)
        );
        // Nothing replayed yet: what it received.
        assert_eq!(
            replay_lag(&p, &state(true, None, None, Some("0/5000080"))),
            Some(0x80)
        );
        assert_eq!(replay_lag(&p, &state(true, None, None, None)), None);
        assert_eq!(replay_lag(&state(true, None, None, None), &p), None);
    }
}
