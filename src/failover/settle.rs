//! The detached `--settle` phase, off pgpool's clock: copy the history
//! file, wait until each standby streams from the new primary on its
//! timeline, make sure pgpool has it attached, then prove that a commit
//! returns.

use std::time::Instant;

use tracing::{error, info, warn};

use crate::cli::FailoverArgs;
use crate::cluster::{self, Node, Observed, Topology};
use crate::error::{Error, Result};
use crate::exec::{Did, Exec};
use crate::postgres::NodeState;
use crate::report::{Outcome, Summary};
use crate::state::{Journal, Lock};
use crate::steps;

/// Run the detached phase for the primary `--settle-primary` names.
pub(super) async fn run(
    topo: &Topology,
    args: &FailoverArgs,
    deadline: Instant,
) -> Result<Summary> {
    let mut summary = Summary {
        outcome: Outcome::Settled,
        node: u32::try_from(args.failed_node).ok(),
        ..Summary::default()
    };
    let Some(_lock) = Lock::try_acquire(&topo.config.state_dir, "settle")? else {
        summary.message = "another pgha is settling the standbys already".into();
        return Ok(summary);
    };
    super::fault::delay("settle").await;
    if let Some(why) = crate::pgpool::ops::why_not_leader(topo, deadline).await {
        return Err(Error::Refused(format!(
            "not settling the standbys: {why}; the watchdog's leader does"
        )));
    }
    let Some(pid) = args.settle_primary else {
        return Err(Error::Usage(
            "--settle needs --settle-primary (it is started by pgha-failover itself)".into(),
        ));
    };
    let observed = observe_others(topo, args.failed_node).await;
    let (primary, pstate) = the_primary(topo, &observed, pid)?;
    summary.new_primary = Some(primary.id);
    summary.timeline = Some(pstate.timeline);
    let history = history(topo, primary, pstate, &mut summary).await;
    let standbys = followers(&observed, primary, pstate, history.as_deref(), &mut summary);
    let journal = Journal::new(&topo.config.state_dir, "failover");
    let remote = topo.remote();
    let x = Exec {
        topo,
        remote: &remote,
        journal: &journal,
        deadline,
    };
    let to = Upstream {
        primary,
        timeline: pstate.timeline,
        history: history.as_deref(),
        repoint: &args.settle_repoint,
    };
    let old = match args.settle_rejoin {
        Some(id) => Some(topo.node(i64::from(id))?),
        None => None,
    };
    let done = settle_all(&x, &standbys, &to, old, args).await;
    remote.close().await;
    let (settled, rejoined) = done?;
    for r in settled {
        if let Err(e) = r {
            summary.errors.push(e.to_string());
        }
    }
    let streaming = standbys.len().saturating_sub(summary.errors.len());
    prove_commit(topo, primary, deadline, &mut summary).await;
    summary.message = format!(
        "{streaming} standby(s) streaming from {} on timeline {} and attached",
        primary.label(),
        pstate.timeline
    );
    match (old, rejoined) {
        (Some(n), Some(Ok(()))) => {
            summary.message += &format!(
                "; switchover: the old primary {} streams from {} and is attached",
                n.label(),
                primary.label()
            )
        }
        (_, Some(Err(e))) => summary.errors.push(e.to_string()),
        _ => {}
    }
    summary.into_result()
}

/// Each standby settled, and the old primary rejoined after a switchover,
/// all at once; stopped when this host stops leading pgpool's watchdog.
async fn settle_all(
    x: &Exec<'_>,
    standbys: &[&Observed],
    to: &Upstream<'_>,
    old: Option<&Node>,
    args: &FailoverArgs,
) -> Result<(Vec<Result<bool>>, Option<Result<()>>)> {
    let tasks = standbys.iter().map(|o| settle_one(x, o, to));
    let rejoin = async {
        match old {
            Some(n) => Some(rejoin_old_primary(x, n, args).await),
            None => None,
        }
    };
    let work = async {
        super::fault::delay("settling").await;
        tokio::join!(futures::future::join_all(tasks), rejoin)
    };
    tokio::select! {
        done = work => Ok(done),
        why = leadership_lost(x.topo, x.deadline) => Err(Error::Refused(format!(
            "stopped settling the standbys: {why}; the new leader's pgha-failover settles them"
        ))),
    }
}

/// Resolves, with why, once this host stops leading pgpool's watchdog;
/// never without a watchdog. Asked every second.
async fn leadership_lost(topo: &Topology, deadline: Instant) -> String {
    if !topo.pgpool.is_on("use_watchdog") {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        if let Some(why) = crate::pgpool::ops::why_not_leader(topo, deadline).await {
            return why;
        }
    }
}

/// Every node but the failed one: asking a silent one would cost the
/// whole connect timeout before any standby is helped.
async fn observe_others(topo: &Topology, failed: i64) -> Vec<Observed> {
    futures::future::join_all(
        topo.nodes
            .iter()
            .filter(|n| i64::from(n.id) != failed)
            .map(|n| cluster::observe_node(topo, n)),
    )
    .await
}

/// The node the run promoted, never "the first node not in recovery" (an
/// old primary that came back is one too).
fn the_primary<'o>(
    topo: &Topology,
    observed: &'o [Observed],
    pid: u32,
) -> Result<(&'o Node, &'o NodeState)> {
    observed
        .iter()
        .find(|o| o.node.id == pid)
        .and_then(|o| o.ok().filter(|s| !s.in_recovery).map(|s| (&o.node, s)))
        .ok_or_else(|| match topo.node(i64::from(pid)) {
            Ok(n) => Error::Step(format!(
                "settle: {} does not answer as a primary any more; run pgha-failover again",
                n.label()
            )),
            Err(e) => e,
        })
}

/// The new timeline's history file, read from the primary; it goes to
/// every standby's WAL directory and archive here: a streaming standby
/// fetches it from the primary by itself, the copy serves restores.
async fn history(
    topo: &Topology,
    primary: &Node,
    pstate: &NodeState,
    summary: &mut Summary,
) -> Option<Vec<u8>> {
    if pstate.timeline <= 1 {
        return None;
    }
    match steps::read_history(topo, primary, pstate, pstate.timeline).await {
        Ok(h) => Some(h),
        Err(e) => {
            warn!("{e}");
            summary.errors.push(e.to_string());
            None
        }
    }
}

/// The standbys to wait for. One with WAL the new primary lacks cannot
/// stream from it: it was left alone, and waiting for it would only time
/// out.
fn followers<'o>(
    observed: &'o [Observed],
    primary: &Node,
    pstate: &NodeState,
    history: Option<&[u8]>,
    summary: &mut Summary,
) -> Vec<&'o Observed> {
    let entries = history
        .map(|h| crate::lineage::parse_history(&String::from_utf8_lossy(h)))
        .unwrap_or_default();
    observed
        .iter()
        .filter(|o| o.node.id != primary.id)
        .filter(|o| {
            let Some(s) = o.ok().filter(|s| s.in_recovery) else {
                return false;
            };
            if history.is_none() {
                return true;
            }
            let lineage = crate::lineage::check_lineage(
                &entries,
                pstate.timeline,
                pstate.current_lsn,
                s.timeline,
                s.best_lsn(),
            );
            let Err(why) = lineage else { return true };
            let e = format!(
                "{} cannot follow {}: {why}; left alone (pgha-follow {} --discard-wal would rewind it)",
                o.node.label(),
                primary.label(),
                o.node.id
            );
            error!("{e}");
            summary.errors.push(e);
            false
        })
        .collect()
}

/// What the standbys settle on.
struct Upstream<'a> {
    primary: &'a Node,
    timeline: u32,
    /// The new timeline's history file, to copy.
    history: Option<&'a [u8]>,
    /// The standbys to repoint first (the main phase left them).
    repoint: &'a [u32],
}

/// One standby: repointed if the main phase left it, streaming from the
/// primary, then attached in pgpool.
async fn settle_one(x: &Exec<'_>, o: &Observed, to: &Upstream<'_>) -> Result<bool> {
    let n = &o.node;
    let (primary, timeline) = (to.primary, to.timeline);
    let restore = match o.ok() {
        Some(st) if to.repoint.contains(&n.id) => Some(repoint(x, n, st, to).await?),
        _ => None,
    };
    let work = async {
        let waited = stream(x, o, to, restore.as_deref()).await?;
        info!(
            "{}: streams from {} on timeline {timeline} (waited {:.2}s)",
            n.label(),
            primary.label(),
            waited.as_secs_f64()
        );
        crate::pgpool::ops::attach(x.topo, n, x.deadline).await
    };
    x.step("settle", Some(n), work, |attached| {
        Did::new(
            *attached,
            if *attached {
                "attached"
            } else {
                "attached already"
            },
        )
    })
    .await
}

/// Point a standby the main phase left at the new primary (its
/// `primary_conninfo` and `restore_command`); returns the
/// `restore_command` it has now.
async fn repoint(x: &Exec<'_>, n: &Node, st: &NodeState, to: &Upstream<'_>) -> Result<String> {
    let (primary, timeline) = (to.primary, to.timeline);
    let work = super::repoint_node(x, n, st, primary, timeline);
    let (_, _, restore) = x
        .step("repoint", Some(n), work, |(how, note, _)| {
            super::repoint_did(how, note, primary, timeline)
        })
        .await?;
    Ok(restore)
}

/// Wait until the standby streams. One not streaming yet sits in
/// restore_command attempts (each an ssh connection in the scp layout, the
/// one in flight perhaps to a silent host) and switches to streaming only
/// between them. On 14+ it waits with none (reload), the attempt in flight
/// cut short; the command it had (pointed at the new primary already) is
/// put back afterwards, also when the wait fails: `restore`, when this
/// phase just repointed it, else the one observed.
async fn stream(
    x: &Exec<'_>,
    o: &Observed,
    to: &Upstream<'_>,
    restore: Option<&str>,
) -> Result<std::time::Duration> {
    let (topo, n) = (x.topo, &o.node);
    let (primary, timeline, history) = (to.primary, to.timeline, to.history);
    let pending = o.ok().filter(|s| {
        !s.is_streaming_from(&primary.replication_host) && !s.is_streaming_from(&primary.host)
    });
    let quiet = pending
        .filter(|s| s.server_version_num >= 140000 && !s.restore_command.is_empty())
        .map(|s| {
            let cmd = restore.unwrap_or_else(|| crate::restore::original(&s.restore_command));
            (s.server_version_num, cmd.to_string())
        });
    if let Some((v, cmd)) = &quiet
        && let Err(e) = steps::pause_restore(topo, n, *v, cmd).await
    {
        warn!("{e}");
    }
    if pending.is_some() {
        match steps::interrupt_restore(topo, x.remote, n, x.deadline).await {
            Ok(0) => {}
            Ok(k) => info!(
                "{}: cut short {k} restore_command attempt(s) in flight",
                n.label()
            ),
            Err(e) => warn!("{e}"),
        }
    }
    let followed = async {
        if let (Some(h), Some(st)) = (history, o.ok()) {
            // A standby that streams fetches the history file from the
            // primary by itself; the copy serves restores from the archive.
            // A copy that fails (a full archive disk) is said, and the
            // standby is waited for all the same.
            match steps::put_history(topo, x.remote, n, st, timeline, h, x.deadline).await {
                Ok(copied) => {
                    for path in copied {
                        info!("{}: {path} written and verified (md5)", n.label());
                    }
                }
                Err(e) => warn!(
                    "{}: {e}; it gets the history file from the primary when it streams, but a restore from its own archive would lack it: once there is room, copy it there from the primary's archive",
                    n.label()
                ),
            }
        }
        steps::wait_streaming(topo, n, primary, timeline, x.deadline).await
    }
    .await;
    if let Some((v, cmd)) = &quiet
        && let Err(e) = steps::set_restore_command(topo, n, *v, cmd).await
    {
        error!("{e}; set restore_command = '{cmd}' there by hand (ALTER SYSTEM, reload)");
    }
    followed
}

/// After a switchover: make the old primary (stopped cleanly by the main
/// phase) a standby of the new primary and attach it, with
/// `pgha-attach --rejoin`, the one command that turns an old primary into
/// a standby (pg_rewind only finds "no rewind required" after a clean
/// stop). Run as the installed sibling binary, bounded by the deadline;
/// its progress lines go to the same stderr.
async fn rejoin_old_primary(x: &Exec<'_>, old: &Node, args: &FailoverArgs) -> Result<()> {
    let work = async {
        let exe = std::env::current_exe()
            .map_err(|e| Error::Step(format!("cannot find my own executable: {e}")))?;
        let attach = exe.with_file_name("pgha-attach");
        let mut cmd = tokio::process::Command::new(&attach);
        cmd.arg(old.id.to_string()).arg("--rejoin");
        if let Some(c) = &args.common.config {
            cmd.arg("--config").arg(c);
        }
        if args.common.verbose {
            cmd.arg("--verbose");
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        let what = format!("{} {} --rejoin", attach.display(), old.id);
        let status = tokio::time::timeout_at(x.deadline.into(), cmd.status())
            .await
            .map_err(|_| Error::Step(format!("{what}: cut off by the deadline")))?
            .map_err(|e| Error::Step(format!("{what}: {e}")))?;
        match status.code() {
            Some(0) => Ok(()),
            c => Err(Error::Step(format!(
                "{what} exited {}: the old primary {} did not rejoin (its reason is in the line above); run pgha-attach --rejoin {} when it can",
                c.map(|c| c.to_string())
                    .unwrap_or_else(|| "on a signal".into()),
                old.label(),
                old.id
            ))),
        }
    };
    x.step("rejoin", Some(old), work, |()| {
        Did::done(
            "switchover: started again as a standby of the new primary, streaming and attached",
        )
    })
    .await
}

/// The proof that writes work: a commit, synchronous replication
/// included, returns.
async fn prove_commit(topo: &Topology, primary: &Node, deadline: Instant, summary: &mut Summary) {
    let bound = steps::budget(deadline, topo.config.failover.follow_timeout);
    match steps::commit_returns(topo, primary, bound).await {
        Ok(took) => info!(
            "{}: a test commit returned in {:.3}s",
            primary.label(),
            took.as_secs_f64()
        ),
        Err(e) => {
            error!("{e}");
            summary.errors.push(e.to_string());
        }
    }
}
