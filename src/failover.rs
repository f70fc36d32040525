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
use crate::plan::{self, Decision, FailoverInput, Liveness, SyncAfter};
use crate::remote::Remote;
pub use crate::report::Summary;
use crate::state::{Journal, Lock};
use crate::steps;

/// A fault-injection point for tests: `PGHA_FAULT=crash-after:STEP` kills
/// the process with SIGKILL right after STEP, as a power cut would. Only in
/// debug builds (the end-to-end tests run those): in a release build no
/// environment variable can make pgha-failover kill itself mid-failover.
#[cfg(debug_assertions)]
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

/// A delay point for tests (debug builds only): `PGHA_FAULT=delay-STEP:MS` sleeps MS
/// milliseconds at STEP, so a test can look at a phase while it runs.
#[cfg(debug_assertions)]
async fn fault_delay(step: &str) {
    let Ok(f) = std::env::var("PGHA_FAULT") else {
        return;
    };
    let Some(ms) = f
        .strip_prefix("delay-")
        .and_then(|r| r.strip_prefix(step))
        .and_then(|r| r.strip_prefix(':'))
        .and_then(|ms| ms.parse::<u64>().ok())
    else {
        return;
    };
    warn!("PGHA_FAULT: sleeping {ms}ms at {step}");
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
/// Release builds: no fault hook.
#[cfg(not(debug_assertions))]
fn fault_point(_step: &str) {}

/// Release builds: no delay hook.
#[cfg(not(debug_assertions))]
async fn fault_delay(_step: &str) {}

/// Run `pgha-failover` as the arguments say.
pub async fn run(args: &FailoverArgs) -> Result<Summary> {
    let start = Instant::now();
    let started = std::time::SystemTime::now();
    let topo = Topology::load(args.common.config.as_deref())?;
    let deadline = start + topo.config.failover.deadline;
    let failed = topo.node(args.failed_node)?.clone();
    // Negative ids are pgpool's "unknown"; only real ones must exist.
    for id in [args.new_main, args.old_main]
        .into_iter()
        .chain(args.old_primary)
        .filter(|id| *id >= 0)
    {
        topo.node(id)?;
    }
    if args.settle {
        let res = settle(&topo, args, deadline).await;
        Journal::new(&topo.config.state_dir, "failover").run_end(
            "failover",
            "settle",
            res.as_ref(),
            started,
            start.elapsed(),
        );
        return res;
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
    let ctx = Ctx {
        topo: &topo,
        remote: &remote,
        journal: &journal,
        failed: &failed,
        deadline,
    };
    // The one overall bound: whatever a step's own timeouts add up to,
    // pgpool gets its command back by failover.deadline.
    let result = match tokio::time::timeout_at(deadline.into(), act(&ctx, args, &mut summary)).await
    {
        Ok(r) => r,
        Err(_) => Err(Error::Step(format!(
            "failover.deadline ({}) reached while {}; done by then: {}; run the same pgha-failover again to finish (it does only what is missing)",
            crate::config::format_duration(topo.config.failover.deadline),
            if summary.step.is_empty() {
                "starting"
            } else {
                summary.step.as_str()
            },
            if summary.done.is_empty() {
                "nothing".to_string()
            } else {
                summary.done.join(", ")
            }
        ))),
    };
    summary.blocked_ms = start.elapsed().as_millis() as u64;
    if !args.common.dry_run && !summary.message.is_empty() {
        summary.message += &format!("; pgpool waited {:.2}s", start.elapsed().as_secs_f64());
    }
    // Settle whatever could be repointed, even when another standby failed.
    if !args.common.dry_run
        && matches!(summary.outcome.as_str(), "promoted" | "already_promoted")
        && let Some(p) = summary.new_primary
    {
        spawn_settle(args, p);
    }
    remote.close().await;
    let res = result.map(|()| summary);
    if !args.common.dry_run {
        let kind = run_kind(res.as_ref().ok().and_then(|s| s.plan.as_ref()), failed.id);
        journal.run_end(kind, "main", res.as_ref(), started, start.elapsed());
    }
    res
}

/// What a run was, for the journal's `run` line and the metrics: a
/// `switchover` when the failed primary was alive and pgha fenced it
/// (`pcp_promote_node -s`, or a primary pgpool detached while it ran), a
/// `failover` when a standby was promoted (or an earlier run's promotion
/// finished), `standby_failed`, or `refused`.
pub fn run_kind(plan: Option<&Decision>, failed: u32) -> &'static str {
    match plan {
        Some(Decision::Promote { fence: Some(f), .. }) if *f == failed => "switchover",
        Some(Decision::Promote { .. } | Decision::AlreadyPromoted { .. }) => "failover",
        Some(Decision::StandbyFailed { .. }) => "standby_failed",
        Some(Decision::Refuse { .. }) | None => "refused",
    }
}

/// What every step of one run needs.
struct Ctx<'a> {
    topo: &'a Topology,
    remote: &'a Remote,
    journal: &'a Journal,
    /// The node pgpool reported failed (`%d`).
    failed: &'a Node,
    deadline: Instant,
}

impl Ctx<'_> {
    fn node(&self, id: u32) -> Result<&Node> {
        self.topo.node(i64::from(id))
    }
}

/// Observe every node (and probe the failed one), decide, then carry out
/// the decision.
async fn act(ctx: &Ctx<'_>, args: &FailoverArgs, summary: &mut Summary) -> Result<()> {
    let (topo, failed) = (ctx.topo, ctx.failed);
    let t0 = Instant::now();
    summary.step = "observing the nodes".into();
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
        let live = liveness(topo, ctx.remote, failed, &obs, ctx.deadline).await;
        (obs, live)
    };
    let (failed_obs, (mut observed, live)) = tokio::join!(cluster::observe_with(failed, ft), rest);
    observed.push(failed_obs);
    observed.sort_by_key(|o| o.node.id);
    for o in &observed {
        info!("{}", o.describe(topo));
    }
    let views: Vec<plan::NodeView> = observed.iter().map(|o| o.view(topo)).collect();
    let fc = &topo.config.failover;
    let input = FailoverInput {
        failed: failed.id,
        new_main: u32::try_from(args.new_main).ok(),
        old_primary: args.old_primary.and_then(|p| u32::try_from(p).ok()),
        candidate_policy: fc.candidate,
        fence_policy: fc.fence,
        failed_liveness: live,
        max_lag: fc.maximum_lag,
        sync_unproven: fc.sync_unproven,
        sync_after: fc.sync_after_promote,
    };
    let decision = plan::decide(&input, &views);
    if let (Liveness::Alive(why), Decision::Promote { .. } | Decision::Refuse { .. }) =
        (&input.failed_liveness, &decision)
    {
        warn!("{} may still be alive: {why}", failed.label());
    }
    summary.plan = Some(decision.clone());
    if args.common.dry_run {
        let plan = describe_decision(topo, &decision);
        if let Decision::Refuse { .. } = decision {
            return Err(Error::Refused(format!("plan (nothing changed): {plan}")));
        }
        summary.outcome = "dry_run".into();
        summary.message = format!("plan (nothing changed): {plan}");
        return Ok(());
    }
    ctx.journal.record_fields(
        "observe",
        None,
        None,
        "done",
        "",
        t0.elapsed(),
        crate::state::decision_fields(&decision),
    );
    info!("plan: {}", describe_decision(topo, &decision));
    match decision {
        Decision::Refuse { reason } => {
            ctx.journal.record(
                "decide",
                Some(failed.id),
                Some(&failed.host),
                "refused",
                &reason,
                t0.elapsed(),
            );
            Err(Error::Refused(reason))
        }
        Decision::StandbyFailed { node, primary, why } => {
            standby_failed(ctx, node, primary, &why, summary).await
        }
        Decision::AlreadyPromoted { primary, sync, .. } => {
            let p = ctx.node(primary)?.clone();
            let st = answer_of(&observed, &p)?;
            info!(
                "{} is already the primary on timeline {}: nothing to promote",
                p.label(),
                st.timeline
            );
            ctx.journal.record(
                "promote",
                Some(p.id),
                Some(&p.host),
                "skipped",
                "already primary",
                Duration::ZERO,
            );
            summary.outcome = "already_promoted".into();
            let cannot_follow = diverged_standbys(ctx, &p, &st, &observed).await;
            let writes = apply_sync(ctx, &p, &sync, summary).await;
            follow_phase(ctx, &p, &st, &observed, &cannot_follow, summary).await?;
            writes
        }
        Decision::Promote {
            candidate,
            reason,
            fence,
            ahead,
            risk,
            sync,
            ..
        } => {
            if let Some(f) = fence {
                fence_step(ctx, ctx.node(f)?, summary).await?;
            }
            let c = ctx.node(candidate)?.clone();
            let cstate = answer_of(&observed, &c)?;
            if let Some(r) = &risk {
                warn!("{r}");
            }
            // Promotion runs restore_command too (for timeline history
            // files, for the last segment): with one that reaches a silent
            // host, or makes an ssh connection per file, that costs seconds.
            // On 14+ the candidate promotes with none (reload), any attempt
            // in flight cut short; afterwards it gets one pointed at its own
            // archive, so a later rejoin repoints it like any standby.
            let quiet = cstate.server_version_num >= 140000 && !cstate.restore_command.is_empty();
            if quiet
                && let Err(e) =
                    steps::set_restore_command(topo, &c, cstate.server_version_num, "").await
            {
                warn!("{e}");
            }
            let promoted = promote_step(ctx, &c, &cstate, &reason, quiet, summary).await;
            if quiet {
                let own = match crate::restore::retarget(
                    &cstate.restore_command,
                    topo.config.postgres.restore_command.as_deref(),
                    &topo.nodes,
                    &c,
                ) {
                    crate::restore::Retarget::Set(cmd) => cmd,
                    _ => cstate.restore_command.clone(),
                };
                if let Err(e) =
                    steps::set_restore_command(topo, &c, cstate.server_version_num, &own).await
                {
                    warn!("{e}");
                }
            }
            let timeline = promoted?;
            fault_point("promote");
            summary.outcome = "promoted".into();
            // No need to ask again: it is out of recovery on `timeline`.
            let st = crate::postgres::NodeState {
                in_recovery: false,
                timeline,
                wal_receiver: None,
                ..cstate
            };
            let writes = apply_sync(ctx, &c, &sync, summary).await;
            let skip: Vec<(u32, String)> = ahead
                .iter()
                .map(|id| {
                    (
                        *id,
                        format!(
                            "it has more WAL than the new primary {} (its switch point): repointing it would fail and pg_rewind would discard WAL that exists nowhere else",
                            c.label()
                        ),
                    )
                })
                .collect();
            follow_phase(ctx, &c, &st, &observed, &skip, summary).await?;
            if let Some(r) = risk {
                summary.message += &format!("; WARNING: {r}");
            }
            writes
        }
    }
}

/// The state a node answered with, or an error naming it.
fn answer_of(observed: &[Observed], node: &Node) -> Result<crate::postgres::NodeState> {
    observed
        .iter()
        .find(|o| o.node.id == node.id)
        .and_then(|o| o.ok().cloned())
        .ok_or_else(|| Error::Step(format!("{} stopped answering", node.label())))
}

/// A standby failed: record it, drop its slot if configured; nothing else.
async fn standby_failed(
    ctx: &Ctx<'_>,
    node: u32,
    primary: Option<u32>,
    why: &str,
    summary: &mut Summary,
) -> Result<()> {
    let (topo, failed) = (ctx.topo, ctx.failed);
    summary.outcome = "standby_failed".into();
    summary.new_primary = primary;
    let mut msg = format!(
        "standby {} failed: recorded, no promotion ({why})",
        failed.label()
    );
    if let (true, Some(p)) = (topo.config.failover.replication_slots, primary) {
        let slot = steps::slot_name(failed);
        let pn = ctx.node(p)?;
        match steps::drop_slot(topo, pn, &slot).await {
            Ok(true) => msg += &format!("; dropped its replication slot {slot} on {}", pn.label()),
            Ok(false) => msg += &format!("; no replication slot {slot} on {}", pn.label()),
            Err(e) => {
                summary.errors.push(e.to_string());
                msg += &format!("; could not drop slot {slot}: {e}");
            }
        }
    }
    ctx.journal.record(
        "standby_failed",
        Some(node),
        Some(&failed.host),
        "done",
        &msg,
        Duration::ZERO,
    );
    summary.message = msg;
    Ok(())
}

/// Stop a failed primary that may still be alive, and prove it stopped.
async fn fence_step(ctx: &Ctx<'_>, node: &Node, summary: &mut Summary) -> Result<()> {
    let t = Instant::now();
    summary.step = format!("fencing {}", node.label());
    info!("fencing {}: stopping it before promoting", node.label());
    match steps::fence(ctx.topo, ctx.remote, node, ctx.deadline).await {
        Ok(how) => {
            info!(
                "{}: {how} ({:.2}s)",
                node.label(),
                t.elapsed().as_secs_f64()
            );
            ctx.journal.record(
                "fence",
                Some(node.id),
                Some(&node.host),
                "done",
                &how,
                t.elapsed(),
            );
            summary.done.push(format!("fenced {}", node.label()));
            Ok(())
        }
        Err(e) => {
            ctx.journal.record(
                "fence",
                Some(node.id),
                Some(&node.host),
                "failed",
                &e.to_string(),
                t.elapsed(),
            );
            Err(e)
        }
    }
}

/// Promote the candidate and wait until it accepts writes.
async fn promote_step(
    ctx: &Ctx<'_>,
    c: &Node,
    cstate: &crate::postgres::NodeState,
    reason: &str,
    cut_restore: bool,
    summary: &mut Summary,
) -> Result<u32> {
    summary.step = format!("promoting {}", c.label());
    info!("promoting {}: {reason}", c.label());
    let t = Instant::now();
    let timeline =
        match steps::promote(ctx.topo, ctx.remote, c, cstate, cut_restore, ctx.deadline).await {
            Ok(tl) => tl,
            Err(e) => {
                ctx.journal.record(
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
    ctx.journal.record(
        "promote",
        Some(c.id),
        Some(&c.host),
        "done",
        &format!("timeline {timeline}"),
        t.elapsed(),
    );
    summary
        .done
        .push(format!("promoted {} on timeline {timeline}", c.label()));
    Ok(timeline)
}

/// Make the new primary's `synchronous_standby_names` one its standbys can
/// meet, or report that commits block. Returns the run's verdict on
/// writes: an error when they block.
async fn apply_sync(
    ctx: &Ctx<'_>,
    p: &Node,
    sync: &SyncAfter,
    summary: &mut Summary,
) -> Result<()> {
    match sync {
        SyncAfter::Satisfied => Ok(()),
        SyncAfter::Relax { from, to, why } => {
            summary.step = format!("relaxing synchronous_standby_names on {}", p.label());
            let t = Instant::now();
            match steps::set_sync_standby_names(ctx.topo, p, to).await {
                Ok(()) => {
                    let what = format!(
                        "synchronous_standby_names relaxed from '{from}' to '{to}' on {} ({why}; [failover] sync_after_promote = \"relax\"){}",
                        p.label(),
                        if to.is_empty() {
                            ": commits no longer wait for a standby until you set it back"
                        } else {
                            ""
                        }
                    );
                    warn!("{what}");
                    ctx.journal.record(
                        "sync",
                        Some(p.id),
                        Some(&p.host),
                        "done",
                        &what,
                        t.elapsed(),
                    );
                    summary.done.push(format!(
                        "relaxed synchronous_standby_names on {}",
                        p.label()
                    ));
                    summary.notes.push(format!(
                        "{what}; once the standbys are back: ALTER SYSTEM SET synchronous_standby_names = '{from}' on node {} and SELECT pg_reload_conf()",
                        p.id
                    ));
                    Ok(())
                }
                Err(e) => {
                    ctx.journal.record(
                        "sync",
                        Some(p.id),
                        Some(&p.host),
                        "failed",
                        &e.to_string(),
                        t.elapsed(),
                    );
                    Err(Error::Step(format!(
                        "writes through {} block: {why}, and relaxing it failed: {e}",
                        p.label()
                    )))
                }
            }
        }
        SyncAfter::Blocks { setting, why } => Err(Error::Step(format!(
            "writes through {} block: {why}; [failover] sync_after_promote = \"keep\" leaves it so; commits resume when a listed standby streams from it, or at once after ALTER SYSTEM SET synchronous_standby_names = '' (asynchronous) and SELECT pg_reload_conf() there (was '{setting}')",
            p.label()
        ))),
    }
}

/// Point a standby's `restore_command` at the archive of the primary it
/// now follows (one SQL round trip; an attempt still in flight is cut
/// short by the settle phase, off pgpool's clock). Returns a note for the
/// progress line; trouble here is reported, and does not undo the repoint.
async fn follow_archive(
    ctx: &Ctx<'_>,
    n: &Node,
    st: &crate::postgres::NodeState,
    upstream: &Node,
) -> String {
    match steps::retarget_restore(ctx.topo, n, st, upstream).await {
        Ok(None) => String::new(),
        Ok(Some((_, _, how))) => format!(
            "; restore_command fetches from {}'s archive now{}",
            upstream.label(),
            match how {
                steps::RestoreApplied::Reloaded => " (reload)",
                steps::RestoreApplied::AtRestart =>
                    " (from its next start: 12 and 13 read it only then)",
            }
        ),
        Err(e) => {
            warn!("{e}");
            format!("; restore_command left as it was: {e}")
        }
    }
}

/// Standbys that cannot follow `primary` without losing WAL: on an older
/// timeline past the switch point in its history, or ahead of it on its
/// own. Read from the primary's history file; when it cannot be read,
/// none are excluded here (the repoint itself never rewinds).
async fn diverged_standbys(
    ctx: &Ctx<'_>,
    primary: &Node,
    pstate: &crate::postgres::NodeState,
    observed: &[Observed],
) -> Vec<(u32, String)> {
    let history = if pstate.timeline > 1 {
        match steps::read_history(ctx.topo, primary, pstate, pstate.timeline).await {
            Ok(h) => crate::rejoin::parse_history(&String::from_utf8_lossy(&h)),
            Err(e) => {
                warn!("{e}");
                return Vec::new();
            }
        }
    } else {
        Vec::new()
    };
    observed
        .iter()
        .filter(|o| o.node.id != primary.id)
        .filter_map(|o| {
            let s = o.ok().filter(|s| s.in_recovery)?;
            crate::rejoin::check_lineage(
                &history,
                pstate.timeline,
                pstate.current_lsn,
                s.timeline,
                s.best_lsn(),
            )
            .err()
            .map(|why| (o.node.id, why))
        })
        .collect()
}

/// Copy the history file to, and repoint, every other reachable standby,
/// all at once, but those in `skip` (with the reason). One standby's
/// failure is reported and does not stop the others.
async fn follow_phase(
    ctx: &Ctx<'_>,
    primary: &Node,
    pstate: &crate::postgres::NodeState,
    observed: &[Observed],
    skip: &[(u32, String)],
    summary: &mut Summary,
) -> Result<()> {
    let (topo, failed) = (ctx.topo, ctx.failed);
    let timeline = pstate.timeline;
    summary.new_primary = Some(primary.id);
    summary.timeline = Some(timeline);
    summary.step = format!("repointing the standbys to {}", primary.label());
    let others: Vec<&Observed> = observed
        .iter()
        .filter(|o| o.node.id != primary.id && o.node.id != failed.id)
        .collect();
    let tasks = others.iter().map(|o| async move {
        let n = &o.node;
        let t = Instant::now();
        if let Some((_, why)) = skip.iter().find(|(id, _)| *id == n.id) {
            return (
                n.id,
                Err(Error::Step(format!(
                    "{} not repointed: {why}; it may hold commits the new primary lacks: to keep them, make it the primary instead (stop {}, then pgha-failover {} ... with it as the only standby left), or to discard them run pgha-follow {} --discard-wal",
                    n.label(),
                    primary.label(),
                    primary.id,
                    n.id
                ))),
                t.elapsed(),
            );
        }
        let st = match &o.state {
            Ok(s) if s.in_recovery => s,
            Ok(_) => {
                return (
                    n.id,
                    Err(Error::Step(format!("{} is not a standby: left alone", n.label()))),
                    t.elapsed(),
                );
            }
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
        let r = async {
            let how = steps::repoint(topo, ctx.remote, n, st, primary, timeline, ctx.deadline).await?;
            let note = follow_archive(ctx, n, st, primary).await;
            Ok::<_, Error>((how, note))
        }
        .await;
        (n.id, r, t.elapsed())
    });
    let results = futures::future::join_all(tasks).await;
    for (id, r, took) in results {
        let n = ctx.node(id)?;
        match r {
            Ok((how, note)) => {
                let what = format!("{}{note}", how.describe());
                let what = what.as_str();
                info!("{}: {what} ({:.3}s)", n.label(), took.as_secs_f64());
                let outcome = if how.changed() {
                    summary.repointed.push(id);
                    "done"
                } else {
                    "skipped"
                };
                ctx.journal
                    .record("repoint", Some(id), Some(&n.host), outcome, what, took);
            }
            Err(e) => {
                error!("{e}");
                ctx.journal.record(
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
    if !summary.repointed.is_empty() {
        summary.done.push(format!(
            "repointed {}",
            summary
                .repointed
                .iter()
                .map(|i| format!("node {i}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
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
    for note in &summary.notes {
        summary.message += &format!("; {note}");
    }
    if !summary.errors.is_empty() {
        return Err(Error::Step(format!(
            "{}; but: {}",
            summary.message,
            summary.errors.join("; ")
        )));
    }
    Ok(())
}

/// Is the failed node perhaps still running? Every probe runs at once,
/// each bounded by `failover.liveness_timeout`: SQL on its other addresses
/// (the replication network may still reach it), a TCP connect to every
/// address (a hung or paused server still completes the handshake), and,
/// from each standby that still lists a WAL receiver from it, a TCP connect
/// to its port (a receiver's "streaming" lingers for wal_receiver_timeout
/// after its primary went silent). Any answer means alive; a standby that
/// cannot be asked counts as alive too: death must be shown.
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
        let port = failed.port;
        probes.push(Box::pin(async move {
            crate::postgres::tcp_accepts(addr, port, lt)
                .await
                .then(|| format!("{addr}:{port} still accepts TCP connections"))
        }));
        if addr == failed.host {
            continue; // asked with SQL there already
        }
        let mut t = topo.pg_target_at(failed, addr);
        t.connect_timeout = t.connect_timeout.min(lt);
        probes.push(Box::pin(async move {
            match crate::postgres::observe_target(&t).await {
                Ok(s) => Some(format!(
                    "it answers SQL on {addr}:{port} as a {}",
                    if s.in_recovery { "standby" } else { "primary" }
                )),
                Err(e) if e.answered() => Some(format!("it answers on {addr}:{port} ({e})")),
                Err(_) => None,
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
        // Exit 0: connected; 1: refused or unreachable; 124: no answer in
        // time. Anything else (no bash, no timeout) proves nothing.
        let script = format!(
            "timeout {:.3} bash -c {}; echo \"rc=$?\"",
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
                Ok(out) => match probe_exit(&out.stdout_str()) {
                    Some(0) => Some(format!(
                        "{label} streams from it and can still connect to {sender}:{port}"
                    )),
                    Some(1 | 124) => {
                        info!(
                            "{label} still lists a wal receiver from {sender}, but cannot connect to {sender}:{port} within {:.1}s: taking it as gone",
                            lt.as_secs_f64()
                        );
                        None
                    }
                    other => Some(format!(
                        "{label} streams from it and its check of {sender}:{port} proved nothing (exit {}: {})",
                        other.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
                        out.stderr_str().trim()
                    )),
                },
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

/// The exit status a liveness script reported on its last `rc=N` line.
fn probe_exit(stdout: &str) -> Option<i32> {
    stdout
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("rc="))
        .and_then(|c| c.parse().ok())
}

fn describe_decision(topo: &Topology, d: &Decision) -> String {
    let label = |id: u32| {
        topo.node(i64::from(id))
            .map(|n| n.label())
            .unwrap_or_else(|_| format!("node {id}"))
    };
    let sync = |s: &SyncAfter| match s {
        SyncAfter::Satisfied => String::new(),
        SyncAfter::Relax { from, to, .. } => {
            format!("; relax synchronous_standby_names from '{from}' to '{to}'")
        }
        SyncAfter::Blocks { setting, .. } => {
            format!("; keep synchronous_standby_names '{setting}' (writes will block)")
        }
    };
    match d {
        Decision::StandbyFailed { node, why, .. } => format!(
            "{} is a failed standby ({why}): record it, promote nothing",
            label(*node)
        ),
        Decision::AlreadyPromoted {
            primary,
            timeline,
            sync: s,
        } => format!(
            "{} is already primary on timeline {timeline}: make the other standbys follow it{}",
            label(*primary),
            sync(s)
        ),
        Decision::Promote {
            candidate,
            reason,
            fence,
            ahead,
            sync: s,
            ..
        } => {
            let f = fence
                .map(|f| format!("stop {} first (it may be alive), then ", label(f)))
                .unwrap_or_default();
            let a = if ahead.is_empty() {
                String::new()
            } else {
                format!(
                    "; leave {} alone (more WAL than the candidate)",
                    ahead
                        .iter()
                        .map(|i| label(*i))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            format!(
                "{f}promote {} ({reason}), copy the history file to and repoint the other standbys, attach them{a}{}",
                label(*candidate),
                sync(s)
            )
        }
        Decision::Refuse { reason } => format!("refuse: {reason}"),
    }
}

/// Start the detached `--settle` phase: a new session, not waited for, so
/// pgpool gets its failover_command back now. Its stderr still goes to
/// pgpool's log.
fn spawn_settle(args: &FailoverArgs, primary: u32) {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        warn!("cannot find my own executable: standbys will not be attached automatically");
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(args.failed_node.to_string())
        .arg(args.old_main.to_string())
        .arg(args.new_main.to_string())
        .arg("--settle")
        .arg("--settle-primary")
        .arg(primary.to_string());
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
    // A new session, and none of the descriptors pgpool left open in its
    // child (its listening sockets, pool_passwd, ...): held by a process
    // that outlives the failover, they would keep a restarted pgpool from
    // binding its ports. Only stderr stays: it is pgpool's log.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
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
    fault_delay("settle").await;
    let journal = Journal::new(&topo.config.state_dir, "failover");
    let Some(pid) = args.settle_primary else {
        return Err(Error::Usage(
            "--settle needs --settle-primary (it is started by pgha-failover itself)".into(),
        ));
    };
    // The failed node is left out: asking a silent one would cost the
    // whole connect timeout before any standby is helped.
    let observed = futures::future::join_all(
        topo.nodes
            .iter()
            .filter(|n| i64::from(n.id) != args.failed_node)
            .map(|n| cluster::observe_node(topo, n)),
    )
    .await;
    // Work from the node the run promoted, never from "the first node not
    // in recovery" (an old primary that came back is one too).
    let Some(p) = observed
        .iter()
        .find(|o| o.node.id == pid && o.ok().is_some_and(|s| !s.in_recovery))
    else {
        return Err(Error::Step(format!(
            "settle: {} does not answer as a primary any more; run pgha-failover again",
            topo.node(i64::from(pid))?.label()
        )));
    };
    let primary = p.node.clone();
    let timeline = p.ok().map(|s| s.timeline).unwrap_or(0);
    summary.new_primary = Some(primary.id);
    summary.timeline = Some(timeline);
    let mut standbys: Vec<&Observed> = observed
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
    // A standby with WAL the new primary lacks cannot stream from it:
    // it was left alone, and waiting for it would only time out.
    if let (Some(h), Some(ps)) = (&history, p.ok()) {
        let entries = crate::rejoin::parse_history(&String::from_utf8_lossy(h));
        standbys.retain(|o| {
            let Some(s) = o.ok() else { return true };
            match crate::rejoin::check_lineage(&entries, timeline, ps.current_lsn, s.timeline, s.best_lsn()) {
                Ok(()) => true,
                Err(why) => {
                    let e = format!(
                        "{} cannot follow {}: {why}; left alone (pgha-follow {} --discard-wal would rewind it)",
                        o.node.label(),
                        primary.label(),
                        o.node.id
                    );
                    error!("{e}");
                    summary.errors.push(e);
                    false
                }
            }
        });
    }
    let remote = topo.remote();
    let tasks = standbys.iter().map(|o| {
        let (primary, history, remote) = (&primary, &history, &remote);
        async move {
            let n = &o.node;
            // A standby not streaming yet sits in restore_command attempts
            // (each an ssh connection in the scp layout, the one in flight
            // perhaps to a silent host) and switches to streaming only
            // between them. On 14+ it waits with none (reload), the attempt
            // in flight cut short; the command it had (pointed at the new
            // primary already) is put back afterwards, also when the wait
            // fails.
            let pending = o.ok().filter(|s| {
                !s.is_streaming_from(&primary.replication_host)
                    && !s.is_streaming_from(&primary.host)
            });
            let quiet = pending
                .filter(|s| s.server_version_num >= 140000 && !s.restore_command.is_empty())
                .map(|s| (s.server_version_num, s.restore_command.clone()));
            if let Some((v, _)) = &quiet
                && let Err(e) = steps::set_restore_command(topo, n, *v, "").await
            {
                warn!("{e}");
            }
            if pending.is_some() {
                match steps::interrupt_restore(topo, remote, n, deadline).await {
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
                    let copied =
                        steps::put_history(topo, remote, n, st, timeline, h, deadline).await?;
                    for path in copied {
                        info!("{}: {path} written and verified (md5)", n.label());
                    }
                }
                steps::wait_streaming(topo, n, primary, timeline, deadline).await
            }
            .await;
            if let Some((v, cmd)) = &quiet
                && let Err(e) = steps::set_restore_command(topo, n, *v, cmd).await
            {
                error!("{e}; set restore_command = '{cmd}' there by hand (ALTER SYSTEM, reload)");
            }
            let waited = followed?;
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
    let streaming = standbys.len().saturating_sub(summary.errors.len());
    // The proof that writes work: a commit, synchronous replication
    // included, returns.
    match steps::commit_returns(
        topo,
        &primary,
        steps::budget(deadline, topo.config.failover.follow_timeout),
    )
    .await
    {
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
    summary.message = format!(
        "{streaming} standby(s) streaming from {} on timeline {timeline} and attached",
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
