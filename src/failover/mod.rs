//! `pgha-failover`: what pgpool-II runs as `failover_command`.
//!
//! Observe, decide ([`crate::plan::decide`]), then act: fence, promote, copy
//! the history file and repoint the other standbys, and return to pgpool; a
//! detached `--settle` run ([`settle`]) then waits for the standbys to
//! stream and attaches them. Every step checks first whether it is done
//! already.

mod fault;
mod liveness;
mod settle;
mod switchover;

pub use switchover::{
    ControlData, Marker, parse_controldata, read_marker, remove_marker, write_marker,
};

use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use crate::claim::Claim;
use crate::cli::FailoverArgs;
use crate::cluster::{self, Node, Observed, Topology};
use crate::error::{Error, Result};
use crate::exec::{Did, Exec};
use crate::pgpool::ops;
use crate::plan::{self, Decision, FailoverInput, Liveness, SyncAfter};
use crate::postgres::NodeState;
use crate::report::Outcome;
pub use crate::report::Summary;
use crate::state::{Fields, Journal, Lock};
use crate::steps;

/// Run `pgha-failover` as the arguments say.
pub async fn run(args: &FailoverArgs) -> Result<Summary> {
    let start = Instant::now();
    let started = SystemTime::now();
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
        let res = settle::run(&topo, args, deadline).await;
        Journal::new(&topo.config.state_dir, "failover").run_end(
            "failover",
            "settle",
            res.as_ref(),
            started,
            start.elapsed(),
        );
        return res;
    }
    if args.new_main == -1 {
        return Ok(Summary {
            node: u32::try_from(args.failed_node).ok(),
            outcome: Outcome::NoNodeAlive,
            message: format!(
                "{} failed and pgpool found no live node (%m = -1): nothing to promote; when a node is back, run pgha-attach NODE",
                failed.label()
            ),
            ..Summary::default()
        });
    }
    if let Some(why) = ops::why_not_leader(&topo, deadline).await {
        return Err(Error::Refused(format!(
            "{why}; nothing changed: only the watchdog's leader with quorum acts on a failover (pcp_watchdog_info -v names it), and pgpool runs failover_command there"
        )));
    }
    let journal = Journal::new(&topo.config.state_dir, "failover");
    let (_lock, claim) = match args.common.dry_run {
        true => (None, None),
        false => {
            let lock = Lock::acquire(
                &topo.config.state_dir,
                "failover",
                steps::budget(deadline, topo.config.failover.deadline),
            )?;
            (Some(lock), Some(tokio::sync::OnceCell::new()))
        }
    };
    let remote = topo.remote();
    let ctx = Ctx {
        x: Exec {
            topo: &topo,
            remote: &remote,
            journal: &journal,
            deadline,
        },
        failed: &failed,
        silent: std::cell::Cell::new(false),
        claim,
    };
    let res = main_phase(&ctx, args, start).await;
    remote.close().await;
    if !args.common.dry_run {
        let kind = run_kind(res.as_ref().ok().and_then(|s| s.plan.as_ref()), failed.id);
        journal.run_end(kind, "main", res.as_ref(), started, start.elapsed());
    }
    res
}

/// The part pgpool waits for, bounded by `failover.deadline` whatever the
/// steps' own timeouts add up to; then the detached phase is started.
async fn main_phase(ctx: &Ctx<'_>, args: &FailoverArgs, start: Instant) -> Result<Summary> {
    let mut summary = Summary {
        node: u32::try_from(args.failed_node).ok(),
        ..Summary::default()
    };
    let acting = act(ctx, args, &mut summary);
    let result = match tokio::time::timeout_at(ctx.x.deadline.into(), acting).await {
        Ok(r) => r,
        Err(_) => Err(deadline_reached(ctx.x.topo, &summary)),
    };
    summary.blocked_ms = start.elapsed().as_millis() as u64;
    if !args.common.dry_run && !summary.message.is_empty() {
        summary.message += &format!("; pgpool waited {:.2}s", start.elapsed().as_secs_f64());
    }
    // Settle whatever could be repointed, even when another standby failed.
    if !args.common.dry_run
        && matches!(
            summary.outcome,
            Outcome::Promoted | Outcome::AlreadyPromoted | Outcome::SwitchedOver
        )
        && let Some(p) = summary.new_primary
    {
        // After a switchover the old primary rejoins as a standby there.
        let rejoin = match &summary.plan {
            Some(Decision::Switchover { old, .. }) => Some(*old),
            _ => None,
        };
        spawn_settle(args, p, rejoin, &summary.repoint_later);
    }
    result.map(|()| summary)
}

/// The error of a run cut off by `failover.deadline`: what it was doing,
/// what it had done, and that running it again finishes the rest.
fn deadline_reached(topo: &Topology, summary: &Summary) -> Error {
    let doing = match summary.step.as_str() {
        "" => "starting",
        s => s,
    };
    let done = match summary.done.as_slice() {
        [] => "nothing".to_string(),
        d => d.join(", "),
    };
    Error::Step(format!(
        "failover.deadline ({}) reached while {doing}; done by then: {done}; run the same pgha-failover again to finish (it does only what is missing)",
        crate::config::format_duration(topo.config.failover.deadline),
    ))
}

/// What a run was, for the journal's `run` line and the metrics: a
/// `switchover` when the failed primary was alive and pgha stopped it
/// (a planned switchover, `pcp_promote_node -s`; or a live primary pgha
/// could not ask and fenced), a `failover` when a standby was promoted (or
/// an earlier run's promotion finished), `standby_failed`, or `refused`.
pub fn run_kind(plan: Option<&Decision>, failed: u32) -> &'static str {
    match plan {
        Some(Decision::Switchover { .. }) => "switchover",
        Some(Decision::Promote { fence: Some(f), .. }) if *f == failed => "switchover",
        Some(Decision::Promote { .. } | Decision::AlreadyPromoted { .. }) => "failover",
        Some(Decision::StandbyFailed { .. }) => "standby_failed",
        Some(Decision::Refuse { .. }) | None => "refused",
    }
}

/// What every step of one run needs.
struct Ctx<'a> {
    x: Exec<'a>,
    /// The node pgpool reported failed (`%d`).
    failed: &'a Node,
    /// The failed node gave no answer at all within the liveness timeout
    /// (a powered-off host, a cut network), as opposed to refusing at once
    /// (a killed server): restore_command attempts against it hang.
    silent: std::cell::Cell<bool>,
    /// The cluster claim (none in a dry run): taken while the failed node
    /// is probed, held until the run ends; its sessions observe the others.
    claim: Option<tokio::sync::OnceCell<Claim>>,
}

/// Observe every node (and probe the failed one), decide, then carry out
/// the decision.
async fn act(ctx: &Ctx<'_>, args: &FailoverArgs, summary: &mut Summary) -> Result<()> {
    let (topo, failed) = (ctx.x.topo, ctx.failed);
    let t0 = Instant::now();
    summary.step = "observing the nodes".into();
    // The node pgha-switchover asked pgpool to promote, when its marker
    // names the failed node: a planned switchover.
    let marker = read_marker(&topo.config.state_dir, topo.config.failover.deadline)
        .filter(|m| i64::from(m.from) == args.failed_node);
    let switchover_to = marker.as_ref().map(|m| m.to);
    let planned = marker.map(|m| Planned {
        ssh_master: m.ssh_master,
    });
    let (observed, live) = observe(ctx, planned.as_ref()).await?;
    record_claim_wait(ctx);
    let views: Vec<plan::NodeView> = observed.iter().map(|o| o.view(topo)).collect();
    let input = failover_input(topo, args, live, switchover_to);
    let decision = plan::decide(&input, &views);
    if let (Liveness::Alive(why), Decision::Promote { .. } | Decision::Refuse { .. }) =
        (&input.failed_liveness, &decision)
    {
        warn!("{} may still be alive: {why}", failed.label());
    }
    summary.plan = Some(decision.clone());
    let plan = describe_decision(topo, &decision);
    if args.common.dry_run {
        if let Decision::Refuse { .. } = decision {
            return Err(Error::Refused(format!("plan (nothing changed): {plan}")));
        }
        summary.outcome = Outcome::DryRun;
        summary.message = format!("plan (nothing changed): {plan}");
        return Ok(());
    }
    let fields = crate::state::decision_fields(&decision);
    let seen = format!("{} nodes observed", observed.len());
    ctx.x
        .record("observe", None, &Did::done(seen), t0.elapsed(), fields);
    info!("plan: {plan}");
    match decision {
        Decision::Refuse { reason } => {
            let e = Error::Refused(reason);
            ctx.x.failed("decide", Some(failed), &e, t0.elapsed());
            Err(e)
        }
        Decision::StandbyFailed { primary, why, .. } => {
            standby_failed(ctx, primary, &why, summary).await
        }
        Decision::AlreadyPromoted { primary, sync, .. } => {
            already_promoted(ctx, ctx.x.node(primary)?, &sync, &observed, summary).await
        }
        Decision::Switchover {
            old,
            candidate,
            reason,
            sync,
        } => {
            let s = switchover::Switch {
                old: ctx.x.node(old)?,
                candidate: ctx.x.node(candidate)?,
                reason,
                sync,
            };
            switchover::run(ctx, &s, &observed, summary).await
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
            let p = Promotion {
                candidate: ctx.x.node(candidate)?,
                reason,
                fence,
                ahead,
                risk,
                sync,
            };
            promote(ctx, &p, &observed, summary).await
        }
    }
}

/// Every node, and whether the failed one still lives. The liveness probes
/// start with the observation and run while the failed node's own answer
/// is pending: a silent primary costs one timeout, not two or three in a
/// row. pgpool found it unreachable already: it is asked only as long as a
/// liveness probe may take.
/// What pgha-switchover's marker says of the switchover it asked for.
struct Planned {
    /// Its ssh master to the failed node, lent for the stop.
    ssh_master: Option<std::path::PathBuf>,
}

async fn observe(ctx: &Ctx<'_>, planned: Option<&Planned>) -> Result<(Vec<Observed>, Liveness)> {
    let (topo, failed) = (ctx.x.topo, ctx.failed);
    let ft = liveness::failed_target(topo, failed);
    let others: Vec<&Node> = topo.nodes.iter().filter(|n| n.id != failed.id).collect();
    let (x, deadline) = (&ctx.x, ctx.x.deadline);
    let claim_failed = std::cell::RefCell::new(None);
    let others_observed = async {
        let claim = match claim(ctx).await {
            Ok(c) => c,
            Err(e) => {
                claim_failed.replace(Some(e));
                return Vec::new();
            }
        };
        futures::future::join_all(others.iter().map(|n| async move {
            match claim {
                Some(c) => c.observe(topo, n).await,
                None => cluster::observe_node(topo, n).await,
            }
        }))
        .await
    };
    // A switchover that pgha-switchover asked for (`planned`) stops the
    // failed node over ssh next: its master opens while the nodes are
    // observed, within the liveness bound (a node that died meanwhile costs
    // no more).
    // It uses pgha-switchover's master when lent one.
    let lt = topo.config.failover.liveness_timeout;
    let warm = async {
        let Some(planned) = planned else { return };
        let host = &failed.ssh_host;
        if let Some(ctl) = &planned.ssh_master
            && x.remote.adopt(host, ctl, lt).await
        {
            info!(
                "{}: ssh through pgha-switchover's connection",
                failed.label()
            );
            return;
        }
        let _ = tokio::time::timeout(lt, x.remote.warm(host)).await;
    };
    let own = async { tokio::join!(cluster::observe_with(failed, ft), warm).0 };
    let (failed_obs, mut observed, live) =
        liveness::while_observing(topo, x.remote, failed, deadline, own, others_observed).await;
    if let Some(e) = claim_failed.into_inner() {
        return Err(e);
    }
    ctx.silent.set(
        failed_obs.state.is_err() && !failed_obs.answered && failed_obs.took >= lt.mul_f64(0.9),
    );
    observed.push(failed_obs);
    observed.sort_by_key(|o| o.node.id);
    for o in &observed {
        info!("{}", o.describe(topo));
    }
    Ok((observed, live))
}

/// The cluster claim, taken on first use (`None` in a dry run).
async fn claim<'c>(ctx: &'c Ctx<'_>) -> Result<Option<&'c Claim>> {
    let Some(cell) = &ctx.claim else {
        return Ok(None);
    };
    let (topo, failed) = (ctx.x.topo, ctx.failed);
    let who = format!("pgha-failover {} via {}", failed.id, topo.pgpool_address());
    let take = || async {
        let c = Claim::take(topo, failed.id, &who, ctx.x.deadline).await?;
        fault::delay("claimed").await;
        Ok::<_, Error>(c)
    };
    cell.get_or_try_init(take).await.map(Some)
}

/// A wait for another run's cluster claim, in the journal.
fn record_claim_wait(ctx: &Ctx<'_>) {
    let Some(c) = ctx.claim.as_ref().and_then(|c| c.get()) else {
        return;
    };
    if !c.waited.is_zero() {
        let did = Did::done(format!(
            "waited {:.2}s for another pgha run's cluster claim",
            c.waited.as_secs_f64()
        ));
        ctx.x.record("claim", None, &did, c.waited, Fields::new());
    }
}

/// The planner's input: pgpool's arguments, the policies, the liveness.
fn failover_input(
    topo: &Topology,
    args: &FailoverArgs,
    live: Liveness,
    switchover_to: Option<u32>,
) -> FailoverInput {
    let fc = &topo.config.failover;
    FailoverInput {
        failed: u32::try_from(args.failed_node).unwrap_or(u32::MAX),
        new_main: u32::try_from(args.new_main).ok(),
        old_primary: args.old_primary.and_then(|p| u32::try_from(p).ok()),
        candidate_policy: fc.candidate,
        fence_policy: fc.fence,
        failed_liveness: live,
        max_lag: fc.maximum_lag,
        sync_unproven: fc.sync_unproven,
        sync_after: fc.sync_after_promote,
        switchover_to,
    }
}

/// The state a node answered with, or an error naming it.
fn answer_of(observed: &[Observed], node: &Node) -> Result<NodeState> {
    observed
        .iter()
        .find(|o| o.node.id == node.id)
        .and_then(|o| o.ok().cloned())
        .ok_or_else(|| Error::Step(format!("{} stopped answering", node.label())))
}

/// A standby failed: record it, drop its slot if configured; nothing else.
async fn standby_failed(
    ctx: &Ctx<'_>,
    primary: Option<u32>,
    why: &str,
    summary: &mut Summary,
) -> Result<()> {
    let failed = ctx.failed;
    summary.outcome = Outcome::StandbyFailed;
    summary.new_primary = primary;
    let mut msg = format!(
        "standby {} failed: recorded, no promotion ({why})",
        failed.label()
    );
    if let (true, Some(p)) = (ctx.x.topo.config.failover.replication_slots, primary) {
        msg += &drop_slot(ctx, ctx.x.node(p)?, summary).await;
    }
    let did = Did::done(msg.clone());
    ctx.x.record(
        "standby_failed",
        Some(failed),
        &did,
        Duration::ZERO,
        Fields::new(),
    );
    summary.message = msg;
    Ok(())
}

/// Drop the failed standby's replication slot on the primary, so that the
/// primary does not keep WAL for it; returns a note for the message.
async fn drop_slot(ctx: &Ctx<'_>, primary: &Node, summary: &mut Summary) -> String {
    let slot = steps::slot_name(ctx.failed);
    match steps::drop_slot(ctx.x.topo, primary, &slot).await {
        Ok(true) => format!(
            "; dropped its replication slot {slot} on {}",
            primary.label()
        ),
        Ok(false) => format!("; no replication slot {slot} on {}", primary.label()),
        Err(e) => {
            summary.errors.push(e.to_string());
            format!("; could not drop slot {slot}: {e}")
        }
    }
}

/// An earlier run promoted a standby already: finish what it left.
async fn already_promoted(
    ctx: &Ctx<'_>,
    p: &Node,
    sync: &SyncAfter,
    observed: &[Observed],
    summary: &mut Summary,
) -> Result<()> {
    let st = answer_of(observed, p)?;
    let did = Did::skipped(format!(
        "already the primary on timeline {}: nothing to promote",
        st.timeline
    ));
    ctx.x
        .record("promote", Some(p), &did, Duration::ZERO, Fields::new());
    summary.outcome = Outcome::AlreadyPromoted;
    unpause_restore(ctx, p, &st).await;
    let cannot_follow = diverged_standbys(ctx, p, &st, observed).await;
    let writes = apply_sync(ctx, p, sync, summary).await;
    follow_phase(ctx, p, &st, observed, &cannot_follow, None, summary).await?;
    writes
}

/// A decision to promote, with the candidate looked up.
struct Promotion<'a> {
    candidate: &'a Node,
    reason: String,
    fence: Option<u32>,
    ahead: Vec<u32>,
    risk: Option<String>,
    sync: SyncAfter,
}

/// Fence if asked, promote, make commits possible, repoint the others.
async fn promote(
    ctx: &Ctx<'_>,
    p: &Promotion<'_>,
    observed: &[Observed],
    summary: &mut Summary,
) -> Result<()> {
    if let Some(f) = p.fence {
        fence_step(ctx, ctx.x.node(f)?, summary).await?;
    }
    let c = p.candidate;
    let cstate = answer_of(observed, c)?;
    if let Some(r) = &p.risk {
        warn!("{r}");
    }
    let timeline = promote_quietly(ctx, c, &cstate, &p.reason, summary).await?;
    fault::point("promote");
    fault::delay("promoted").await;
    summary.outcome = Outcome::Promoted;
    let st = as_primary(cstate, timeline);
    let writes = apply_sync(ctx, c, &p.sync, summary).await;
    let commits_wait = sync_setting(&st, &p.sync, &writes);
    let skip: Vec<(u32, String)> = p
        .ahead
        .iter()
        .map(|id| {
            (*id, format!(
                "it has more WAL than the new primary {} (its switch point): repointing it would fail and pg_rewind would discard WAL that exists nowhere else",
                c.label()
            ))
        })
        .collect();
    follow_phase(ctx, c, &st, observed, &skip, Some(&commits_wait), summary).await?;
    if let Some(r) = &p.risk {
        summary.message += &format!("; WARNING: {r}");
    }
    writes
}

/// A promoted candidate's state, without asking it again: out of recovery
/// on `timeline`, no WAL receiver.
fn as_primary(cstate: NodeState, timeline: u32) -> NodeState {
    NodeState {
        in_recovery: false,
        timeline,
        wal_receiver: None,
        ..cstate
    }
}

/// Promotion runs restore_command too (for timeline history files, for the
/// last segment): with one that reaches a silent host, or makes an ssh
/// connection per file, that costs seconds. On 14+ the candidate promotes
/// with none (reload), any attempt in flight cut short; afterwards it gets
/// one pointed at its own archive, so a later rejoin repoints it like any
/// standby.
async fn promote_quietly(
    ctx: &Ctx<'_>,
    c: &Node,
    cstate: &NodeState,
    reason: &str,
    summary: &mut Summary,
) -> Result<u32> {
    let topo = ctx.x.topo;
    let version = cstate.server_version_num;
    let quiet = version >= 140000 && !cstate.restore_command.is_empty();
    if quiet && let Err(e) = steps::pause_restore(topo, c, version, &cstate.restore_command).await {
        warn!("{e}");
    }
    fault::point("paused");
    let promoted = promote_step(ctx, c, cstate, reason, quiet, summary).await;
    fault::point("promoting");
    if quiet {
        let own = own_restore(topo, c, &cstate.restore_command);
        if let Err(e) = steps::set_restore_command(topo, c, version, &own).await {
            warn!("{e}");
        }
    }
    promoted
}

/// The `restore_command` a new primary keeps: its own archive's (read only
/// when it is a standby again, and by pg_rewind when it rejoins).
fn own_restore(topo: &Topology, p: &Node, cmd: &str) -> String {
    let template = topo.config.postgres.restore_command.as_deref();
    match crate::restore::retarget(cmd, template, &topo.nodes, p) {
        crate::restore::Retarget::Set(own) => own,
        _ => crate::restore::original(cmd).to_string(),
    }
}

/// Put back the primary's `restore_command` that a run killed while it
/// promoted left paused ([`crate::restore::paused`]). Trouble here is
/// reported, not fatal: a primary does not read it.
async fn unpause_restore(ctx: &Ctx<'_>, p: &Node, st: &NodeState) {
    if crate::restore::unpaused(&st.restore_command).is_none() {
        return;
    }
    let own = own_restore(ctx.x.topo, p, &st.restore_command);
    let set = steps::set_restore_command(ctx.x.topo, p, st.server_version_num, &own);
    let put = ctx.x.step("restore_command", Some(p), set, |_| {
        Did::done(format!(
            "restore_command put back (an interrupted run left it paused): {own}"
        ))
    });
    if let Err(e) = put.await {
        warn!("{e}; set restore_command = '{own}' there by hand (ALTER SYSTEM, reload)");
    }
}

/// Stop a failed primary that may still be alive, and prove it stopped.
/// When it cannot be stopped for sure, it is looked at again by the first
/// look's rules ([`liveness::recheck`]): a node that answered then and died
/// since (a host powered off while pgha observed it, a network cut) is as
/// dead as one that never answered, and is failed over; one that still
/// looks alive is refused.
async fn fence_step(ctx: &Ctx<'_>, node: &Node, summary: &mut Summary) -> Result<()> {
    summary.step = format!("fencing {}", node.label());
    info!("fencing {}: stopping it before promoting", node.label());
    let x = &ctx.x;
    let fence = steps::fence(
        x.topo,
        x.remote,
        node,
        x.deadline,
        steps::FenceStop::Immediate,
    );
    match x
        .step("fence", Some(node), fence, |how| Did::done(how.clone()))
        .await
    {
        Ok(_) => {
            summary.done.push(format!("fenced {}", node.label()));
            Ok(())
        }
        Err(Error::Refused(why)) => {
            let t0 = Instant::now();
            info!(
                "{}: not stopped for sure; looking at it again as at first (every address, and from the standbys that listed it)",
                node.label()
            );
            match liveness::recheck(x.topo, x.remote, node, x.deadline).await {
                Liveness::Dead => {
                    let did = Did::done(format!(
                        "it died since the first look: no address of it answers and no standby reaches it any more; promoting without the fence ({why})"
                    ));
                    warn!("{}: {}", node.label(), did.what);
                    x.record("recheck", Some(node), &did, t0.elapsed(), Fields::new());
                    summary
                        .done
                        .push(format!("found {} dead on a second look", node.label()));
                    Ok(())
                }
                Liveness::Alive(alive) => {
                    let e = Error::Refused(format!("{why} (looked at again: {alive})"));
                    x.failed("recheck", Some(node), &e, t0.elapsed());
                    Err(e)
                }
            }
        }
        Err(e) => Err(e),
    }
}

/// Promote the candidate and wait until it accepts writes.
async fn promote_step(
    ctx: &Ctx<'_>,
    c: &Node,
    cstate: &NodeState,
    reason: &str,
    cut_restore: bool,
    summary: &mut Summary,
) -> Result<u32> {
    summary.step = format!("promoting {}", c.label());
    info!("promoting {}: {reason}", c.label());
    let x = &ctx.x;
    let promote = steps::promote(x.topo, x.remote, c, cstate, cut_restore, x.deadline);
    let timeline = x
        .step("promote", Some(c), promote, |tl| {
            Did::done(format!("accepts writes on timeline {tl}")).with("timeline", *tl)
        })
        .await?;
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
        SyncAfter::Relax { from, to, why } => relax_sync(ctx, p, (from, to, why), summary).await,
        SyncAfter::Blocks { setting, why } => Err(Error::Step(format!(
            "writes through {} block: {why}; [failover] sync_after_promote = \"keep\" leaves it so; commits resume when a listed standby streams from it, or at once after ALTER SYSTEM SET synchronous_standby_names = '' (asynchronous) and SELECT pg_reload_conf() there (was '{setting}')",
            p.label()
        ))),
    }
}

/// `[failover] sync_after_promote = "relax"`: set the new primary's
/// `synchronous_standby_names` to what its standbys can meet, and tell the
/// operator how to set it back.
async fn relax_sync(
    ctx: &Ctx<'_>,
    p: &Node,
    (from, to, why): (&str, &str, &str),
    summary: &mut Summary,
) -> Result<()> {
    summary.step = format!("relaxing synchronous_standby_names on {}", p.label());
    let what = format!(
        "synchronous_standby_names relaxed from '{from}' to '{to}' on {} ({why}; [failover] sync_after_promote = \"relax\"){}",
        p.label(),
        if to.is_empty() {
            ": commits no longer wait for a standby until you set it back"
        } else {
            ""
        }
    );
    let set = steps::set_sync_standby_names(ctx.x.topo, p, to);
    ctx.x
        .step("sync", Some(p), set, |_| Did::done(what.clone()))
        .await
        .map_err(|e| {
            Error::Step(format!(
                "writes through {} block: {why}, and relaxing it failed: {e}",
                p.label()
            ))
        })?;
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

/// Point a standby's `restore_command` at the archive of the primary it
/// now follows (one SQL round trip; an attempt still in flight is cut
/// short by the settle phase, off pgpool's clock). Returns a note for the
/// progress line and the command it has now; trouble here is reported, and
/// does not undo the repoint.
async fn follow_archive(
    topo: &Topology,
    n: &Node,
    st: &NodeState,
    upstream: &Node,
) -> (String, String) {
    let had = crate::restore::original(&st.restore_command).to_string();
    match steps::retarget_restore(topo, n, st, upstream).await {
        Ok(None) => (String::new(), had),
        Ok(Some((_, now, how))) => (
            format!(
                "; restore_command fetches from {}'s archive now{}",
                upstream.label(),
                match how {
                    steps::RestoreApplied::Reloaded => " (reload)",
                    steps::RestoreApplied::AtRestart =>
                        " (from its next start: 12 and 13 read it only then)",
                }
            ),
            now,
        ),
        Err(e) => {
            warn!("{e}");
            (format!("; restore_command left as it was: {e}"), had)
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
    pstate: &NodeState,
    observed: &[Observed],
) -> Vec<(u32, String)> {
    let history = steps::timeline_history(ctx.x.topo, primary, pstate).await;
    observed
        .iter()
        .filter(|o| o.node.id != primary.id)
        .filter_map(|o| {
            let why = crate::lineage::diverged(&history, pstate, o.ok()?)?;
            Some((o.node.id, why))
        })
        .collect()
}

/// The new primary's `synchronous_standby_names` once `sync` was applied
/// (`applied`: the verdict of [`apply_sync`]; a relax that failed left the
/// setting it had).
pub(super) fn sync_setting(pstate: &NodeState, sync: &SyncAfter, applied: &Result<()>) -> String {
    match (sync, applied) {
        (SyncAfter::Relax { to, .. }, Ok(())) => to.clone(),
        _ => pstate.synchronous_standby_names.clone(),
    }
}

/// Repoint every other reachable standby, all at once, but those in
/// `skip` (with the reason). One standby's failure is reported and does
/// not stop the others. With `commits_wait` (the new primary's
/// `synchronous_standby_names`), only the standbys a commit may wait for
/// are repointed before pgpool is told; the others are left to the
/// detached phase (`summary.repoint_later`), so what pgpool waits for does
/// not grow with the number of standbys. Without it (a rerun finishing an
/// earlier one), all of them now.
async fn follow_phase(
    ctx: &Ctx<'_>,
    primary: &Node,
    pstate: &NodeState,
    observed: &[Observed],
    skip: &[(u32, String)],
    commits_wait: Option<&str>,
    summary: &mut Summary,
) -> Result<()> {
    let timeline = pstate.timeline;
    summary.new_primary = Some(primary.id);
    summary.timeline = Some(timeline);
    summary.step = format!("repointing the standbys to {}", primary.label());
    let (mut others, mut later) = (Vec::new(), Vec::new());
    for o in observed
        .iter()
        .filter(|o| o.node.id != primary.id && o.node.id != ctx.failed.id)
    {
        let now = commits_wait
            .is_none_or(|s| crate::plan::sync::may_confirm(s, o.node.application_name.as_deref()));
        // Whatever keeps a standby from being repointed is said now.
        match now || repointable(o, primary, skip).is_err() {
            true => others.push(o),
            false => later.push(o.node.id),
        }
    }
    summary.repoint_later = later;
    let tasks = others
        .iter()
        .map(|o| repoint_one(ctx, o, primary, timeline, skip));
    for (o, r) in others.iter().zip(futures::future::join_all(tasks).await) {
        match r {
            Ok(true) => summary.repointed.push(o.node.id),
            Ok(false) => {}
            Err(e) => summary.errors.push(e.to_string()),
        }
    }
    if !summary.repointed.is_empty() {
        summary
            .done
            .push(format!("repointed {}", node_list(&summary.repointed)));
    }
    let verb = match summary.outcome {
        Outcome::Promoted => "promoted",
        _ => "already primary:",
    };
    let repointed = match summary.repoint_later.as_slice() {
        [] => format!("repointed {}", node_list(&summary.repointed)),
        later => {
            let it = |k: usize| if k == 1 { "it" } else { "them" };
            let now = match summary.repointed.as_slice() {
                [] => String::new(),
                done => format!(
                    "repointed {} (a commit may wait for {}); ",
                    node_list(done),
                    it(done.len())
                ),
            };
            format!(
                "{now}repointing {} in the background (no commit waits for {})",
                node_list(later),
                it(later.len())
            )
        }
    };
    summary.message = match summary.outcome {
        Outcome::SwitchedOver => format!(
            "switchover from {} to {} on timeline {timeline}: stopped cleanly, every commit verified on the new primary; {repointed}; the old primary rejoins as a standby and the standbys settle in the background",
            ctx.failed.label(),
            primary.label(),
        ),
        _ => format!(
            "{} failed; {verb} {} on timeline {timeline}; {repointed}; standbys settle in the background",
            ctx.failed.label(),
            primary.label(),
        ),
    };
    for note in &summary.notes {
        summary.message += &format!("; {note}");
    }
    summary.errors()
}

/// Repoint one standby at the new primary; `Ok(true)` when it changed.
async fn repoint_one(
    ctx: &Ctx<'_>,
    o: &Observed,
    primary: &Node,
    timeline: u32,
    skip: &[(u32, String)],
) -> Result<bool> {
    let x = &ctx.x;
    let n = &o.node;
    let work = async {
        let st = repointable(o, primary, skip)?;
        let (how, mut note, _) = repoint_node(x, n, st, primary, timeline).await?;
        if how.changed() && ctx.silent.get() && !st.restore_command.is_empty() {
            note += &cut_restore(ctx, n).await;
        }
        Ok::<_, Error>((how, note))
    };
    let (how, _) = x
        .step("repoint", Some(n), work, |(how, note)| {
            repoint_did(how, note, primary, timeline)
        })
        .await?;
    Ok(how.changed())
}

/// Point a standby's `primary_conninfo` and `restore_command` at
/// `primary`: how, a note for the progress line, and the
/// `restore_command` it has now.
pub(super) async fn repoint_node(
    x: &Exec<'_>,
    n: &Node,
    st: &NodeState,
    primary: &Node,
    timeline: u32,
) -> Result<(steps::Repointed, String, String)> {
    let how = steps::repoint(x.topo, x.remote, n, st, primary, timeline, x.deadline).await?;
    let (note, restore) = follow_archive(x.topo, n, st, primary).await;
    Ok((how, note, restore))
}

/// The progress line and journal entry of a repoint.
pub(super) fn repoint_did(
    how: &steps::Repointed,
    note: &str,
    primary: &Node,
    timeline: u32,
) -> Did {
    Did::new(how.changed(), format!("{}{note}", how.describe()))
        .with("upstream", primary.id)
        .with("timeline", timeline)
}

/// A repointed standby that is not streaming acts on its new
/// `primary_conninfo` only between `restore_command` attempts, and with a
/// silent old primary the one in flight may wait seconds for it (an `scp`
/// waits for ssh's connect timeout): cut it short, on the ssh session the
/// liveness probes opened. (Against a killed host an attempt fails at
/// once, and an ssh round trip would only delay pgpool.) Returns a note for the progress line; trouble is only reported
/// (the settle phase tries again).
async fn cut_restore(ctx: &Ctx<'_>, n: &Node) -> String {
    let x = &ctx.x;
    match steps::interrupt_restore(x.topo, x.remote, n, x.deadline).await {
        Ok(0) => String::new(),
        Ok(k) => format!("; cut short {k} restore_command attempt(s) in flight"),
        Err(e) => {
            warn!("{e}");
            String::new()
        }
    }
}

/// The state of a standby that may be repointed, or why it may not.
fn repointable<'o>(
    o: &'o Observed,
    primary: &Node,
    skip: &[(u32, String)],
) -> Result<&'o NodeState> {
    let n = &o.node;
    if let Some((_, why)) = skip.iter().find(|(id, _)| *id == n.id) {
        return Err(Error::Step(format!(
            "{} not repointed: {why}; it may hold commits the new primary lacks: to keep them, make it the primary instead (stop {}, then pgha-failover {} ... with it as the only standby left), or to discard them run pgha-follow {} --discard-wal",
            n.label(),
            primary.label(),
            primary.id,
            n.id
        )));
    }
    match &o.state {
        Ok(s) if s.in_recovery => Ok(s),
        Ok(_) => Err(Error::Step(format!(
            "{} is not a standby: left alone",
            n.label()
        ))),
        Err(e) => Err(Error::Step(format!(
            "{} did not answer ({e}): not repointed; when it is back run pgha-follow {}",
            n.label(),
            n.id
        ))),
    }
}

/// `node 1, node 2`, or `none`.
fn node_list(ids: &[u32]) -> String {
    match ids {
        [] => "none".to_string(),
        ids => ids
            .iter()
            .map(|i| format!("node {i}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
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
        Decision::Switchover {
            old,
            candidate,
            reason,
            sync: s,
        } => format!(
            "switchover ({reason}): stop {} cleanly (pg_ctl stop -m fast), verify {} replayed its shutdown checkpoint, promote {}, repoint the other standbys, start {} again as a standby of {} and attach every node{}",
            label(*old),
            label(*candidate),
            label(*candidate),
            label(*old),
            label(*candidate),
            sync(s)
        ),
        Decision::Refuse { reason } => format!("refuse: {reason}"),
    }
}

/// Start the detached `--settle` phase: a new session, not waited for, so
/// pgpool gets its failover_command back now. Its stderr still goes to
/// pgpool's log.
fn spawn_settle(args: &FailoverArgs, primary: u32, rejoin: Option<u32>, repoint: &[u32]) {
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
    if let Some(r) = rejoin {
        cmd.arg("--settle-rejoin").arg(r.to_string());
    }
    if !repoint.is_empty() {
        let ids: Vec<String> = repoint.iter().map(u32::to_string).collect();
        cmd.arg("--settle-repoint").arg(ids.join(","));
    }
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
