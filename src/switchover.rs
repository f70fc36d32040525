//! `pgha-switchover`: a planned switchover driven through pgpool-II.
//!
//! Preflight ([`preflight`], pure over what was observed), then one PCP
//! request (`pcp_promote_node -s`): pgpool detaches the primary and runs
//! `pgha-failover`, whose switchover arm ([`crate::plan::Decision::Switchover`])
//! stops the old primary cleanly, proves the target holds its last WAL,
//! promotes it, and starts the old primary again as a standby. This
//! command leaves a marker for it in the state directory, then waits until
//! pgpool and every node say it is done.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::cli::SwitchoverArgs;
use crate::cluster::{self, Node, Observed, Topology};
use crate::error::{Error, Result};
use crate::exec::{Did, Exec};
use crate::pgpool::ops;
use crate::pgpool::pcp::NodeInfo;
use crate::postgres::NodeState;
use crate::report::{Outcome, Summary};
use crate::state::{Journal, Lock};
use crate::steps;

/// One node as the preflight sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u32,
    /// What it answered: `None` when it did not.
    pub primary: Option<bool>,
    pub timeline: u32,
    /// The primary's current LSN, a standby's received (or replayed) one.
    pub lsn: Option<u64>,
    /// A standby streams from the primary.
    pub streams_from_primary: bool,
    /// pgpool has it attached.
    pub attached: bool,
}

/// What the preflight decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub from: u32,
    pub to: u32,
    pub timeline: u32,
    /// Bytes the target lags behind the primary.
    pub lag: u64,
}

/// Decide the switchover from what was seen, or refuse (nothing changed).
pub fn preflight(
    members: &[Member],
    to: Option<u32>,
    max_lag: u64,
) -> std::result::Result<Plan, String> {
    if let Some(m) = members.iter().find(|m| m.primary.is_none()) {
        return Err(format!(
            "node {} does not answer: a switchover needs every node present (a missing standby could not follow, and could be the one holding a commit); nothing was changed",
            m.id
        ));
    }
    let primaries: Vec<&Member> = members.iter().filter(|m| m.primary == Some(true)).collect();
    let p = match primaries.as_slice() {
        [p] => *p,
        [] => {
            return Err(
                "no node is a primary: nothing to switch over from; nothing was changed".into(),
            );
        }
        more => {
            let ids: Vec<String> = more.iter().map(|m| m.id.to_string()).collect();
            return Err(format!(
                "nodes {} are all primaries: split brain; nothing was changed",
                ids.join(", ")
            ));
        }
    };
    if let Some(m) = members.iter().find(|m| !m.attached) {
        return Err(format!(
            "pgpool has node {} detached: attach it first (pgha-attach {}), a switchover needs every node; nothing was changed",
            m.id, m.id
        ));
    }
    let behind = |m: &Member| match (p.lsn, m.lsn) {
        (Some(a), Some(b)) => a.saturating_sub(b),
        _ => u64::MAX,
    };
    let standbys = members.iter().filter(|m| m.primary == Some(false));
    let target = match to {
        Some(t) if t == p.id => {
            return Err(format!(
                "node {t} is the primary already: nothing to do; nothing was changed"
            ));
        }
        Some(t) => members
            .iter()
            .find(|m| m.id == t)
            .ok_or_else(|| format!("there is no node {t}; nothing was changed"))?,
        None => standbys
            .filter(|m| m.streams_from_primary && m.timeline == p.timeline)
            .min_by_key(|m| (behind(m), m.id))
            .ok_or("no standby streams from the primary: nothing to switch over to; nothing was changed")?,
    };
    if !target.streams_from_primary || target.timeline != p.timeline {
        return Err(format!(
            "node {} does not stream from the primary node {} on timeline {}: it could not receive the last WAL; nothing was changed; run pgha-follow {} first",
            target.id, p.id, p.timeline, target.id
        ));
    }
    let lag = behind(target);
    if lag > max_lag {
        return Err(format!(
            "node {} lags {} behind the primary node {}, more than --max-lag {max_lag}: the write outage would last until it caught up; nothing was changed; wait and run it again, or raise --max-lag",
            target.id,
            if lag == u64::MAX {
                "an unknown amount".to_string()
            } else {
                format!("{lag} bytes")
            },
            p.id
        ));
    }
    Ok(Plan {
        from: p.id,
        to: target.id,
        timeline: p.timeline,
        lag,
    })
}

/// Run `pgha-switchover` as the arguments say.
pub async fn run(args: &SwitchoverArgs) -> Result<Summary> {
    let start = Instant::now();
    let started = std::time::SystemTime::now();
    let topo = Topology::load(args.common.config.as_deref())?;
    let deadline = start + Duration::from_secs(args.timeout);
    let to = match args.to {
        Some(t) => Some(topo.node(t)?.id),
        None => None,
    };
    let journal = Journal::new(&topo.config.state_dir, "switchover");
    let remote = topo.remote();
    let x = Exec {
        topo: &topo,
        remote: &remote,
        journal: &journal,
        deadline,
    };
    let res = drive(&x, args, to).await;
    remote.close().await;
    if !args.common.dry_run {
        crate::failover::remove_marker(&topo.config.state_dir);
        journal.run_end("switchover", "main", res.as_ref(), started, start.elapsed());
    }
    res
}

async fn drive(x: &Exec<'_>, args: &SwitchoverArgs, to: Option<u32>) -> Result<Summary> {
    let topo = x.topo;
    let t0 = Instant::now();
    let observe = check(topo, to, args.max_lag, x.deadline);
    let plan = match observe.await {
        Ok(p) => p,
        Err(e) => {
            x.failed("preflight", None, &e, t0.elapsed());
            return Err(e);
        }
    };
    let (from, target) = (x.node(plan.from)?, x.node(plan.to)?);
    let text = describe(&plan, from, target);
    let mut summary = Summary {
        node: Some(plan.from),
        ..Summary::default()
    };
    if args.common.dry_run {
        summary.outcome = Outcome::DryRun;
        summary.message = format!("plan (nothing changed): {text}");
        return Ok(summary);
    }
    x.record(
        "preflight",
        None,
        &Did::done(format!("ok: {text}")),
        t0.elapsed(),
        crate::state::Fields::new(),
    );
    let asked = Instant::now();
    let timeline = request_and_wait(x, &plan, from, target, asked).await?;
    summary.outcome = Outcome::SwitchedOver;
    summary.new_primary = Some(target.id);
    summary.timeline = Some(timeline);
    summary.message = format!(
        "switchover from {} to {} on timeline {timeline} in {:.2}s: every node streams and is attached, {} as a standby",
        from.label(),
        target.label(),
        asked.elapsed().as_secs_f64(),
        from.label()
    );
    info!("{}", summary.message);
    Ok(summary)
}

/// The plan, in words.
fn describe(plan: &Plan, from: &Node, target: &Node) -> String {
    format!(
        "switch the primary from {} to {} (it lags {} bytes, timeline {}): pcp_promote_node -s -n {}; pgha-failover stops {} cleanly, verifies {} has its last WAL, promotes it and starts {} again as a standby; wait until every node streams on timeline {} and is attached",
        from.label(),
        target.label(),
        plan.lag,
        plan.timeline,
        target.id,
        from.label(),
        target.label(),
        from.label(),
        plan.timeline + 1
    )
}

/// Ask pgpool for the switchover, wait until the target is the primary
/// and every node streams and is attached; returns the new timeline.
async fn request_and_wait(
    x: &Exec<'_>,
    plan: &Plan,
    from: &Node,
    target: &Node,
    asked: Instant,
) -> Result<u32> {
    let (_, master) = tokio::join!(checkpoint(x, from), lend_master(x, from));
    crate::failover::write_marker(&x.topo.config.state_dir, from.id, target.id, master)?;
    let request = ops::promote_switchover(x.topo, target, x.deadline);
    x.step("request", Some(target), request, |()| {
        Did::done(format!(
            "pgpool accepted the switchover (pcp_promote_node -s -n {})",
            target.id
        ))
    })
    .await?;
    let since_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let promoted = wait_promoted(x, from, target, plan.timeline, since_ms);
    let timeline = match x
        .step("promoted", Some(target), promoted, |tl| {
            Did::done(format!(
                "the primary on timeline {tl}, {:.2}s after the request",
                asked.elapsed().as_secs_f64()
            ))
        })
        .await
    {
        Ok(tl) => tl,
        Err(e) => return Err(aborted(x, from, e).await),
    };
    let settled = wait_settled(x, target, timeline);
    x.step("settled", None, settled, |()| {
        Did::done(format!(
            "every node streams from {} on timeline {timeline} and is attached in pgpool, {:.2}s after the request",
            target.label(),
            asked.elapsed().as_secs_f64()
        ))
    })
    .await?;
    Ok(timeline)
}

/// The ssh master to the old primary, opened now and lent to the
/// pgha-failover pgpool starts (through the marker): its clean stop then
/// waits for no ssh handshake while writes through pgpool are held. `None`
/// (it opens its own) when ssh does not answer within the connect timeout.
async fn lend_master(x: &Exec<'_>, from: &Node) -> Option<std::path::PathBuf> {
    match x.remote.lend(&from.ssh_host).await {
        Ok(ctl) => Some(ctl),
        Err(e) => {
            warn!(
                "{}: {e}; pgha-failover will open its own ssh connection",
                from.label()
            );
            None
        }
    }
}

/// `CHECKPOINT` on the primary before pgpool is asked: the shutdown
/// checkpoint that pgha-failover's clean stop waits for then writes only
/// what changed since, while writes through pgpool are held (repmgr's
/// switchover does the same). A checkpoint that fails or outlasts
/// `query_timeout` changes nothing: the shutdown checkpoint does that work.
async fn checkpoint(x: &Exec<'_>, from: &Node) {
    let t = Instant::now();
    match steps::execute_node(x.topo, from, "CHECKPOINT", "CHECKPOINT").await {
        Ok(()) => x.record(
            "checkpoint",
            Some(from),
            &Did::done("checkpoint done, so the clean stop writes little while writes wait"),
            t.elapsed(),
            crate::state::Fields::new(),
        ),
        Err(e) => warn!(
            "{}: checkpoint: {e}; going on: the shutdown checkpoint will write it all while writes through pgpool wait (grant pg_checkpoint, 15+, or use a superuser)",
            from.label()
        ),
    }
}

/// Observe every node and pgpool, take and drop the failover lock, decide.
async fn check(topo: &Topology, to: Option<u32>, max_lag: u64, deadline: Instant) -> Result<Plan> {
    for lock in ["failover", "settle"] {
        if Lock::try_acquire(&topo.config.state_dir, lock)?.is_none() {
            return Err(Error::Refused(format!(
                "a failover is running ({} is held): nothing was changed; run it again when it is done",
                topo.config.state_dir.join(format!("{lock}.lock")).display()
            )));
        }
    }
    let (observed, pool) = tokio::join!(
        cluster::observe_all(topo),
        ops::every_node_info(topo, deadline)
    );
    let pool = pool?;
    let members = members(topo, &observed, &pool);
    preflight(&members, to, max_lag).map_err(Error::Refused)
}

/// The preflight's view of each node.
fn members(topo: &Topology, observed: &[Observed], pool: &[NodeInfo]) -> Vec<Member> {
    let primary = observed
        .iter()
        .find(|o| o.ok().is_some_and(|s| !s.in_recovery))
        .map(|o| &o.node);
    observed
        .iter()
        .map(|o| {
            let s = o.ok();
            let attached = attached(topo, pool, o.node.id);
            Member {
                id: o.node.id,
                primary: s.map(|s| !s.in_recovery),
                timeline: s.map(|s| s.timeline).unwrap_or(0),
                lsn: s.and_then(NodeState::best_lsn).map(|l| l.0),
                streams_from_primary: match (s, primary) {
                    (Some(s), Some(p)) => streams_from(s, p),
                    _ => false,
                },
                attached,
            }
        })
        .collect()
}

/// pgpool has node `id` attached (`pool` is in the order of the backends).
fn attached(topo: &Topology, pool: &[NodeInfo], id: u32) -> bool {
    topo.nodes
        .iter()
        .position(|n| n.id == id)
        .and_then(|i| pool.get(i))
        .is_some_and(NodeInfo::is_up)
}

fn streams_from(s: &NodeState, p: &Node) -> bool {
    s.in_recovery && (s.is_streaming_from(&p.host) || s.is_streaming_from(&p.replication_host))
}

/// Wait until `target` is the primary on a newer timeline and pgpool says
/// so. Ends early when pgha-failover gave up (the old primary runs as a
/// primary again after pgpool detached it).
async fn wait_promoted(
    x: &Exec<'_>,
    from: &Node,
    target: &Node,
    tl: u32,
    since_ms: u64,
) -> Result<u32> {
    let topo = x.topo;
    let mut old_detached = false;
    loop {
        let (t, o) = tokio::join!(
            cluster::observe_node(topo, target),
            cluster::observe_node(topo, from)
        );
        if let Some(s) = t.ok().filter(|s| !s.in_recovery && s.timeline > tl) {
            let info = ops::node_info(topo, target, x.deadline).await?;
            if info.is_up() && info.role == "primary" {
                return Ok(s.timeline);
            }
        } else if !old_detached {
            old_detached = ops::node_info(topo, from, x.deadline)
                .await
                .is_ok_and(|i| !i.is_up());
        } else if o.ok().is_some_and(|s| !s.in_recovery) && failover_gave_up(topo, since_ms) {
            return Err(Error::Refused(format!(
                "pgha-failover aborted the switchover (see its REFUSED line in pgpool's log): {} was started again as the primary, {} is still a standby",
                from.label(),
                target.label()
            )));
        }
        if Instant::now() >= x.deadline {
            return Err(Error::Step(format!(
                "{} is not the primary in pgpool after --timeout; see pgpool's log (the failover_command's lines)",
                target.label()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// pgha-failover's run for this request (started at `since_ms` or
/// later) was refused: its switchover aborted.
fn failover_gave_up(topo: &Topology, since_ms: u64) -> bool {
    let lines = crate::state::read_journal(&topo.config.state_dir);
    crate::state::runs(&lines)
        .iter()
        .rev()
        .find(|r| r.command == "failover" && r.phase == "main" && r.started_ms >= since_ms)
        .is_some_and(|r| r.outcome == "refused")
}

/// The switchover was aborted: the old primary runs again; attach it back
/// in pgpool so that writes go to it, and return the refusal.
async fn aborted(x: &Exec<'_>, from: &Node, e: Error) -> Error {
    if !matches!(e, Error::Refused(_)) {
        return e;
    }
    let back = ops::attach(x.topo, from, x.deadline);
    match x
        .step("attach", Some(from), back, |_| {
            Did::done("attached back in pgpool as the primary (switchover aborted)")
        })
        .await
    {
        Ok(_) => e,
        Err(a) => Error::Refused(format!("{e}; attaching it back failed too: {a}")),
    }
}

/// Wait until every node streams from `primary` on `timeline` and pgpool
/// has every node attached.
async fn wait_settled(x: &Exec<'_>, primary: &Node, timeline: u32) -> Result<()> {
    let topo = x.topo;
    loop {
        let (observed, pool) = tokio::join!(
            cluster::observe_all(topo),
            ops::every_node_info(topo, x.deadline)
        );
        let pool = pool?;
        let pending: Vec<String> = observed
            .iter()
            .filter(|o| o.node.id != primary.id)
            .filter_map(|o| {
                let streams = o
                    .ok()
                    .is_some_and(|s| streams_from(s, primary) && s.timeline == timeline);
                let up = attached(topo, &pool, o.node.id);
                match (streams, up) {
                    (true, true) => None,
                    (false, _) => Some(format!("{} not streaming yet", o.node.label())),
                    (true, false) => Some(format!("{} not attached yet", o.node.label())),
                }
            })
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= x.deadline {
            return Err(Error::Step(format!(
                "the switchover is done but after --timeout {}; the settle phase of pgha-failover may still finish it (pgha-check --status shows where it stands)",
                pending.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary(id: u32, lsn: u64) -> Member {
        Member {
            id,
            primary: Some(true),
            timeline: 1,
            lsn: Some(lsn),
            streams_from_primary: false,
            attached: true,
        }
    }
    fn standby(id: u32, lsn: u64) -> Member {
        Member {
            id,
            primary: Some(false),
            timeline: 1,
            lsn: Some(lsn),
            streams_from_primary: true,
            attached: true,
        }
    }

    #[test]
    fn the_least_lagging_standby_is_the_default_target() {
        let m = [primary(0, 1000), standby(1, 900), standby(2, 990)];
        let p = preflight(&m, None, 1024).unwrap();
        assert_eq!((p.from, p.to, p.lag, p.timeline), (0, 2, 10, 1));
        let m = [primary(0, 1000), standby(1, 1000), standby(2, 1000)];
        assert_eq!(
            preflight(&m, None, 0).unwrap().to,
            1,
            "lowest id among equals"
        );
        assert_eq!(preflight(&m, Some(2), 0).unwrap().to, 2);
    }

    #[test]
    fn a_lagging_target_is_refused() {
        let m = [primary(0, 10_000), standby(1, 100), standby(2, 10_000)];
        let e = preflight(&m, Some(1), 1024).unwrap_err();
        assert!(
            e.contains("lags 9900 bytes") && e.contains("--max-lag 1024"),
            "{e}"
        );
        assert!(preflight(&m, Some(1), 10_000).is_ok());
    }

    #[test]
    fn a_missing_or_detached_standby_is_refused() {
        let mut gone = standby(2, 1000);
        gone.primary = None;
        let e = preflight(&[primary(0, 1000), standby(1, 1000), gone], None, 1024).unwrap_err();
        assert!(e.contains("node 2 does not answer"), "{e}");
        let mut detached = standby(2, 1000);
        detached.attached = false;
        let e = preflight(&[primary(0, 1000), standby(1, 1000), detached], None, 1024).unwrap_err();
        assert!(e.contains("pgpool has node 2 detached"), "{e}");
    }

    #[test]
    fn a_target_that_does_not_stream_or_is_the_primary_is_refused() {
        let mut s = standby(1, 1000);
        s.streams_from_primary = false;
        let e = preflight(&[primary(0, 1000), s, standby(2, 1000)], Some(1), 1024).unwrap_err();
        assert!(e.contains("does not stream"), "{e}");
        let e = preflight(&[primary(0, 1000), standby(1, 1000)], Some(0), 1024).unwrap_err();
        assert!(e.contains("primary already"), "{e}");
        let e = preflight(&[primary(0, 1000), primary(1, 1000)], None, 1024).unwrap_err();
        assert!(e.contains("split brain"), "{e}");
    }
}
