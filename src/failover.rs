//! `pgha-failover`: what pgpool-II runs as `failover_command`.
//!
//! Observe, decide ([`crate::plan::decide`]), then act: fence, promote, copy
//! the history file and repoint the other standbys, and return to pgpool; a
//! detached `--settle` run then waits for the standbys to stream and
//! attaches them. Every step checks first whether it is done already.

use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::cli::FailoverArgs;
use crate::cluster::{self, Node, Observed, Topology};
use crate::error::{Error, Result};
use crate::plan::{self, Decision, FailoverInput, Liveness};
use crate::remote::Remote;
pub use crate::report::Summary;
use crate::state::{Journal, Lock};
use crate::steps::{self, Repointed};

/// A fault-injection point for tests: `PGHA_FAULT=crash-after:STEP` kills
/// the process with SIGKILL right after STEP, as a power cut would.
fn fault_point(step: &str) {
    if let Ok(f) = std::env::var("PGHA_FAULT")
        && f.strip_prefix("crash-after:") == Some(step)
    {
        warn!("PGHA_FAULT: killing myself after {step}");
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Run `pgha-failover` as the arguments say.
pub async fn run(args: &FailoverArgs) -> Result<Summary> {
    let start = Instant::now();
    let topo = Topology::load(args.common.config.as_deref())?;
    let deadline = start + topo.config.failover.deadline;
    let failed = topo.node(args.failed_node)?.clone();
    if args.new_main != -1 {
        topo.node(args.new_main)?;
    }
    if args.old_main != -1 {
        topo.node(args.old_main)?;
    }
    if let Some(p) = args.old_primary.filter(|p| *p != -1) {
        topo.node(p)?;
    }
    if args.settle {
        return settle(&topo, args, deadline).await;
    }
    let mut summary = Summary {
        node: args.failed_node,
        ..Summary::default()
    };
    if args.new_main == -1 {
        summary.outcome = "no_node_alive".into();
        summary.message = format!(
            "{} failed and pgpool found no live node (%m = -1): nothing to promote; when a node is back, run pgha-attach NODE",
            failed.label()
        );
        return Ok(summary);
    }
    let journal = Journal::new(&topo.config.state_dir, "failover");
    let _lock = if args.common.dry_run {
        None
    } else {
        let l = Lock::acquire(
            &topo.config.state_dir,
            "failover",
            steps::budget(deadline, topo.config.failover.deadline),
        )?;
        Some(l)
    };
    let remote = topo.remote();
    let result = act(
        &topo,
        &remote,
        args,
        &failed,
        &journal,
        deadline,
        &mut summary,
    )
    .await;
    summary.blocked_ms = start.elapsed().as_millis() as u64;
    if !args.common.dry_run && !summary.message.is_empty() {
        summary.message += &format!("; pgpool waited {:.2}s", start.elapsed().as_secs_f64());
    }
    // Settle whatever could be repointed, even when another standby failed.
    if !args.common.dry_run && matches!(summary.outcome.as_str(), "promoted" | "already_promoted") {
        spawn_settle(args);
    }
    remote.close().await;
    result.map(|()| summary)
}

async fn act(
    topo: &Topology,
    remote: &Remote,
    args: &FailoverArgs,
    failed: &Node,
    journal: &Journal,
    deadline: Instant,
    summary: &mut Summary,
) -> Result<()> {
    let t0 = Instant::now();
    // pgpool found the failed node unreachable already: ask it only as long
    // as a liveness probe may take.
    let lt = topo.config.failover.liveness_timeout;
    let mut ft = topo.pg_target(failed);
    ft.connect_timeout = ft.connect_timeout.min(lt);
    let rest = async {
        let obs = futures::future::join_all(
            topo.nodes
                .iter()
                .filter(|n| n.id != failed.id)
                .map(|n| cluster::observe_node(topo, n)),
        )
        .await;
        // Probe whether the failed node still lives now, while its own
        // answer is pending: a silent primary then costs one timeout, not
        // two in a row.
        let live = liveness(topo, remote, failed, &obs, deadline).await;
        (obs, live)
    };
    let (failed_obs, (mut observed, mut live)) =
        tokio::join!(cluster::observe_with(failed, ft), rest);
    if failed_obs.ok().is_some_and(|s| !s.in_recovery) {
        // pgpool lost it, but pgha reaches it: the surest sign of life.
        live = Liveness::Alive(format!(
            "it answers SQL on {}:{} as a primary",
            failed.host, failed.port
        ));
    }
    observed.push(failed_obs);
    observed.sort_by_key(|o| o.node.id);
    for o in &observed {
        info!("{}", o.describe(topo));
    }
    let views: Vec<plan::NodeView> = observed.iter().map(|o| o.view(topo)).collect();
    let input = FailoverInput {
        failed: failed.id,
        new_main: u32::try_from(args.new_main).ok(),
        old_primary: args.old_primary.and_then(|p| u32::try_from(p).ok()),
        old_main: u32::try_from(args.old_main).ok(),
        candidate_policy: topo.config.failover.candidate,
        fence_policy: topo.config.failover.fence,
        failed_liveness: live,
    };
    let decision = plan::decide(&input, &views);
    if let (Liveness::Alive(why), Decision::Promote { .. } | Decision::Refuse { .. }) =
        (&input.failed_liveness, &decision)
    {
        warn!("{} may still be alive: {why}", failed.label());
    }
    summary.plan = Some(decision.clone());
    if args.common.dry_run {
        summary.outcome = "dry_run".into();
        summary.message = format!(
            "plan (nothing changed): {}",
            describe_decision(topo, &decision)
        );
        return Ok(());
    }
    journal.record(
        "observe",
        None,
        None,
        "done",
        &format!("{decision:?}"),
        t0.elapsed(),
    );
    info!("plan: {}", describe_decision(topo, &decision));
    match decision {
        Decision::NoNodeAlive => {
            summary.outcome = "no_node_alive".into();
            summary.message = "pgpool found no live node: nothing to promote".into();
            Ok(())
        }
        Decision::Refuse { reason } => {
            journal.record(
                "decide",
                Some(failed.id),
                Some(&failed.host),
                "refused",
                &reason,
                t0.elapsed(),
            );
            Err(Error::Refused(reason))
        }
        Decision::StandbyFailed { node, primary } => {
            summary.outcome = "standby_failed".into();
            summary.new_primary = primary;
            let mut msg = format!("standby {} failed: recorded, no promotion", failed.label());
            if let (true, Some(p)) = (topo.config.failover.replication_slots, primary) {
                let slot = steps::slot_name(failed);
                let pn = topo.node(i64::from(p))?;
                match steps::drop_slot(topo, pn, &slot).await {
                    Ok(true) => {
                        msg += &format!("; dropped its replication slot {slot} on {}", pn.label())
                    }
                    Ok(false) => msg += &format!("; no replication slot {slot} on {}", pn.label()),
                    Err(e) => {
                        summary.errors.push(e.to_string());
                        msg += &format!("; could not drop slot {slot}: {e}");
                    }
                }
            }
            journal.record(
                "standby_failed",
                Some(node),
                Some(&failed.host),
                "done",
                &msg,
                t0.elapsed(),
            );
            summary.message = msg;
            Ok(())
        }
        Decision::AlreadyPromoted { primary, .. } => {
            let p = topo.node(i64::from(primary))?.clone();
            let st = observed
                .iter()
                .find(|o| o.node.id == primary)
                .and_then(|o| o.ok().cloned())
                .ok_or_else(|| Error::Step(format!("{} stopped answering", p.label())))?;
            info!(
                "{} is already the primary on timeline {}: nothing to promote",
                p.label(),
                st.timeline
            );
            journal.record(
                "promote",
                Some(p.id),
                Some(&p.host),
                "skipped",
                "already primary",
                Duration::ZERO,
            );
            summary.outcome = "already_promoted".into();
            follow_phase(
                topo, remote, failed, &p, &st, &observed, journal, deadline, summary,
            )
            .await
        }
        Decision::Promote {
            candidate,
            reason,
            fence,
        } => {
            if let Some(f) = fence {
                let fnode = topo.node(i64::from(f))?;
                let t = Instant::now();
                info!("fencing {}: stopping it before promoting", fnode.label());
                match steps::fence(topo, remote, fnode, deadline).await {
                    Ok(how) => {
                        info!(
                            "{}: {how} ({:.2}s)",
                            fnode.label(),
                            t.elapsed().as_secs_f64()
                        );
                        journal.record(
                            "fence",
                            Some(f),
                            Some(&fnode.host),
                            "done",
                            &how,
                            t.elapsed(),
                        );
                    }
                    Err(e) => {
                        journal.record(
                            "fence",
                            Some(f),
                            Some(&fnode.host),
                            "failed",
                            &e.to_string(),
                            t.elapsed(),
                        );
                        return Err(e);
                    }
                }
            }
            let c = topo.node(i64::from(candidate))?.clone();
            let cstate = observed
                .iter()
                .find(|o| o.node.id == candidate)
                .and_then(|o| o.ok().cloned())
                .ok_or_else(|| Error::Step(format!("{} stopped answering", c.label())))?;
            info!("promoting {}: {reason}", c.label());
            let t = Instant::now();
            let timeline = match steps::promote(topo, remote, &c, &cstate, deadline).await {
                Ok(tl) => tl,
                Err(e) => {
                    journal.record(
                        "promote",
                        Some(c.id),
                        Some(&c.host),
                        "failed",
                        &e.to_string(),
                        t.elapsed(),
                    );
                    return Err(e);
                }
            };
            info!(
                "{} promoted: accepts writes on timeline {timeline} ({:.3}s)",
                c.label(),
                t.elapsed().as_secs_f64()
            );
            journal.record(
                "promote",
                Some(c.id),
                Some(&c.host),
                "done",
                &format!("timeline {timeline}"),
                t.elapsed(),
            );
            fault_point("promote");
            summary.outcome = "promoted".into();
            // No need to ask again: it is out of recovery on `timeline`.
            let st = crate::postgres::NodeState {
                in_recovery: false,
                timeline,
                wal_receiver: None,
                ..cstate
            };
            follow_phase(
                topo, remote, failed, &c, &st, &observed, journal, deadline, summary,
            )
            .await
        }
    }
}

/// Copy the history file to, and repoint, every other reachable standby,
/// all at once. One standby's failure is reported and does not stop the
/// others.
#[allow(clippy::too_many_arguments)]
async fn follow_phase(
    topo: &Topology,
    remote: &Remote,
    failed: &Node,
    primary: &Node,
    pstate: &crate::postgres::NodeState,
    observed: &[Observed],
    journal: &Journal,
    deadline: Instant,
    summary: &mut Summary,
) -> Result<()> {
    let timeline = pstate.timeline;
    summary.new_primary = Some(primary.id);
    summary.timeline = Some(timeline);
    let others: Vec<&Observed> = observed
        .iter()
        .filter(|o| o.node.id != primary.id && o.node.id != failed.id)
        .collect();
    let tasks = others.iter().map(|o| {
        async move {
            let n = &o.node;
            let t = Instant::now();
            let st = match &o.state {
                Ok(s) if s.in_recovery => s,
                Ok(_) => return (n.id, Err(Error::Step(format!("{} is not a standby: left alone", n.label()))), t.elapsed()),
                Err(e) => {
                    return (
                        n.id,
                        Err(Error::Step(format!(
                            "{} did not answer ({e}): not repointed; when it is back run pgha-follow {}",
                            n.label(),
                            n.id
                        ))),
                        t.elapsed(),
                    );
                }
            };
            let r = steps::repoint(topo, remote, n, st, primary, timeline, deadline).await;
            (n.id, r, t.elapsed())
        }
    });
    let results = futures::future::join_all(tasks).await;
    for (id, r, took) in results {
        let n = topo.node(i64::from(id))?;
        match r {
            Ok(how) => {
                let what = match how {
                    Repointed::AlreadyFollowing => "already streams from it",
                    Repointed::AlreadyPointed => "already points at it",
                    Repointed::Reloaded => "repointed (reload)",
                    Repointed::Restarted => "repointed (restart)",
                };
                info!("{}: {what} ({:.3}s)", n.label(), took.as_secs_f64());
                let outcome = match how {
                    Repointed::Reloaded | Repointed::Restarted => {
                        summary.repointed.push(id);
                        "done"
                    }
                    _ => "skipped",
                };
                journal.record("repoint", Some(id), Some(&n.host), outcome, what, took);
            }
            Err(e) => {
                error!("{e}");
                journal.record(
                    "repoint",
                    Some(id),
                    Some(&n.host),
                    "failed",
                    &e.to_string(),
                    took,
                );
                summary.errors.push(e.to_string());
            }
        }
    }
    let verb = if summary.outcome == "promoted" {
        "promoted"
    } else {
        "already primary:"
    };
    summary.message = format!(
        "{} failed; {verb} {} on timeline {timeline}; repointed {}; standbys settle in the background",
        failed.label(),
        primary.label(),
        if summary.repointed.is_empty() {
            "none".to_string()
        } else {
            summary
                .repointed
                .iter()
                .map(|i| format!("node {i}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    if !summary.errors.is_empty() {
        return Err(Error::Step(format!(
            "{}; but: {}",
            summary.message,
            summary.errors.join("; ")
        )));
    }
    Ok(())
}

/// Is the failed node perhaps still running as a primary? Every probe runs
/// at once, each bounded by `failover.liveness_timeout`: its other
/// addresses over SQL (the replication network may still reach it), and,
/// from each standby that still lists a WAL receiver from it, a TCP connect
/// to its port (a receiver's "streaming" lingers for wal_receiver_timeout
/// after its primary went silent). Any answer means alive; a standby that
/// cannot be asked counts as alive too.
async fn liveness(
    topo: &Topology,
    remote: &Remote,
    failed: &Node,
    observed: &[Observed],
    deadline: Instant,
) -> Liveness {
    use futures::future::BoxFuture;
    let lt = topo.config.failover.liveness_timeout;
    let mut probes: Vec<BoxFuture<'_, Option<String>>> = Vec::new();
    for addr in failed.addresses() {
        if addr == failed.host {
            continue; // asked there already
        }
        let mut t = topo.pg_target_at(failed, addr);
        t.connect_timeout = t.connect_timeout.min(lt);
        let port = failed.port;
        probes.push(Box::pin(async move {
            match crate::postgres::observe_target(&t).await {
                Ok(s) if !s.in_recovery => {
                    Some(format!("it answers SQL on {addr}:{port} as a primary"))
                }
                _ => None,
            }
        }));
    }
    for o in observed {
        let Some(r) = o.ok().and_then(|s| s.wal_receiver.as_ref()) else {
            continue;
        };
        let Some(sender) = r.sender_host.as_deref() else {
            continue;
        };
        if r.status != "streaming" || !failed.addresses().contains(&sender) {
            continue;
        }
        let port = r.sender_port.unwrap_or(failed.port);
        let script = format!(
            "exec timeout {:.3} bash -c {}",
            lt.as_secs_f64(),
            crate::remote::quote(&format!("exec 3<>/dev/tcp/{sender}/{port}"))
        );
        let t = steps::budget(
            deadline,
            topo.config.ssh.connect_timeout + lt + Duration::from_secs(1),
        );
        let label = o.node.label();
        let ssh_host = o.node.ssh_host.clone();
        probes.push(Box::pin(async move {
            match remote.run_script(&ssh_host, &script, t).await {
                Ok(out) if out.status == 0 => Some(format!(
                    "{label} streams from it and can still connect to {sender}:{port}"
                )),
                Ok(_) => {
                    info!(
                        "{label} still lists a wal receiver from {sender}, but cannot connect to {sender}:{port} within {:.1}s: taking it as gone",
                        lt.as_secs_f64()
                    );
                    None
                }
                Err(e) => Some(format!(
                    "{label} streams from it and could not be asked to check ({e})"
                )),
            }
        }));
    }
    futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .next()
        .map(Liveness::Alive)
        .unwrap_or(Liveness::Dead)
}

fn describe_decision(topo: &Topology, d: &Decision) -> String {
    let label = |id: u32| {
        topo.node(i64::from(id))
            .map(|n| n.label())
            .unwrap_or_else(|_| format!("node {id}"))
    };
    match d {
        Decision::NoNodeAlive => "no node alive: nothing to do".into(),
        Decision::StandbyFailed { node, .. } => format!(
            "{} is a failed standby: record it, promote nothing",
            label(*node)
        ),
        Decision::AlreadyPromoted { primary, timeline } => format!(
            "{} is already primary on timeline {timeline}: make the other standbys follow it",
            label(*primary)
        ),
        Decision::Promote {
            candidate,
            reason,
            fence,
        } => {
            let f = fence
                .map(|f| format!("stop {} first (it may be alive), then ", label(f)))
                .unwrap_or_default();
            format!(
                "{f}promote {} ({reason}), copy the history file to and repoint the other standbys, attach them",
                label(*candidate)
            )
        }
        Decision::Refuse { reason } => format!("refuse: {reason}"),
    }
}

/// Start the detached `--settle` phase: a new session, not waited for, so
/// pgpool gets its failover_command back now. Its stderr still goes to
/// pgpool's log.
fn spawn_settle(args: &FailoverArgs) {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        warn!("cannot find my own executable: standbys will not be attached automatically");
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(args.failed_node.to_string())
        .arg(args.old_main.to_string())
        .arg(args.new_main.to_string())
        .arg("--settle");
    if let Some(p) = args.old_primary {
        cmd.arg("--old-primary").arg(p.to_string());
    }
    if let Some(c) = &args.common.config {
        cmd.arg("--config").arg(c);
    }
    if args.common.verbose {
        cmd.arg("--verbose");
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(child) => info!("settling in the background (pid {})", child.id()),
        Err(e) => {
            warn!("cannot start the background phase ({e}): run pgha-attach for each standby")
        }
    }
}

/// The detached phase: wait until each standby streams from the primary on
/// its timeline, then make sure pgpool has it attached.
async fn settle(topo: &Topology, args: &FailoverArgs, deadline: Instant) -> Result<Summary> {
    let mut summary = Summary {
        outcome: "settled".into(),
        node: args.failed_node,
        ..Summary::default()
    };
    let Some(_lock) = Lock::try_acquire(&topo.config.state_dir, "settle")? else {
        summary.message = "another pgha is settling the standbys already".into();
        return Ok(summary);
    };
    let journal = Journal::new(&topo.config.state_dir, "failover");
    let observed = cluster::observe_all(topo).await;
    let Some(p) = observed.iter().find(|o| {
        o.ok().is_some_and(|s| !s.in_recovery) && i64::from(o.node.id) != args.failed_node
    }) else {
        return Err(Error::Step("settle: no primary answers".into()));
    };
    let primary = p.node.clone();
    let timeline = p.ok().map(|s| s.timeline).unwrap_or(0);
    summary.new_primary = Some(primary.id);
    summary.timeline = Some(timeline);
    let standbys: Vec<&Observed> = observed
        .iter()
        .filter(|o| o.node.id != primary.id && i64::from(o.node.id) != args.failed_node)
        .filter(|o| o.ok().is_some_and(|s| s.in_recovery))
        .collect();
    // The history file goes to every standby's WAL directory and archive
    // here, off pgpool's clock: a streaming standby fetches it from the
    // primary by itself; the copy serves restores from the archive.
    let history = match (timeline > 1, p.ok()) {
        (true, Some(ps)) => match steps::read_history(topo, &primary, ps, timeline).await {
            Ok(h) => Some(h),
            Err(e) => {
                warn!("{e}");
                summary.errors.push(e.to_string());
                None
            }
        },
        _ => None,
    };
    let remote = topo.remote();
    let tasks = standbys.iter().map(|o| {
        let (primary, history, remote) = (&primary, &history, &remote);
        async move {
            let n = &o.node;
            if let (Some(h), Some(st)) = (history, o.ok()) {
                let copied = steps::put_history(topo, remote, n, st, timeline, h, deadline).await?;
                for path in copied {
                    info!("{}: {path} written and verified (md5)", n.label());
                }
            }
            let waited = steps::wait_streaming(topo, n, primary, timeline, deadline).await?;
            info!(
                "{}: streams from {} on timeline {timeline} (waited {:.2}s)",
                n.label(),
                primary.label(),
                waited.as_secs_f64()
            );
            let attached = steps::attach(topo, n, deadline).await?;
            Ok::<_, Error>((n.id, attached))
        }
    });
    for (o, r) in standbys.iter().zip(futures::future::join_all(tasks).await) {
        match r {
            Ok((id, attached)) => {
                let d = if attached {
                    "attached"
                } else {
                    "attached already"
                };
                journal.record(
                    "settle",
                    Some(id),
                    Some(&o.node.host),
                    "done",
                    d,
                    Duration::ZERO,
                );
            }
            Err(e) => {
                error!("{e}");
                journal.record(
                    "settle",
                    Some(o.node.id),
                    Some(&o.node.host),
                    "failed",
                    &e.to_string(),
                    Duration::ZERO,
                );
                summary.errors.push(e.to_string());
            }
        }
    }
    remote.close().await;
    summary.message = format!(
        "{} standby(s) streaming from {} on timeline {timeline} and attached",
        standbys.len() - summary.errors.len(),
        primary.label()
    );
    if summary.errors.is_empty() {
        Ok(summary)
    } else {
        Err(Error::Step(format!(
            "{}; but: {}",
            summary.message,
            summary.errors.join("; ")
        )))
    }
}
