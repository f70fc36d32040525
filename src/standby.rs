//! Making one node a streaming standby of the current primary and attaching
//! it in pgpool: the engine behind `pgha-follow` and `pgha-attach`.
//!
//! Observe the node and the primary, decide
//! ([`crate::plan::standby::decide`], pure), then act, each step checking
//! first whether it is done: repoint it, or rewind it, or rebuild it
//! ([`crate::reinit`]), wait until it streams and catches up, attach it.
//! Every step runs through [`Exec::step`]: its progress line, journal
//! entry and timing.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use crate::cluster::{self, Node, Observed, Topology};
use crate::error::{Error, Result};
use crate::exec::{Did, Exec};
use crate::lineage::{self, HistoryEntry};
use crate::pgpool::ops;
use crate::pgpool::pcp;
use crate::plan::standby::{
    FollowInput, Mode, Plan, PrimaryView, RunningView, TargetView, decide, describe,
};
use crate::postgres::NodeState;
use crate::reinit::{self, Rewound, ServerStatus};
use crate::report::{Outcome, Summary};
use crate::state::{self, Fields, Journal, Lock};
use crate::steps::{self, budget};

/// What a command asks of the engine.
pub(crate) struct Request {
    pub(crate) node: Node,
    pub(crate) mode: Mode,
    /// pgpool's `%m`, the new primary, when known.
    pub(crate) new_primary: Option<u32>,
    /// pgpool's `%P`, the old primary, when known.
    pub(crate) old_primary: Option<u32>,
    /// `--discard-wal`: WAL only this node has may be discarded.
    pub(crate) discard_wal: bool,
    pub(crate) dry_run: bool,
    /// The command, for the journal: `follow` or `attach`.
    pub(crate) command: &'static str,
}

/// How long a standby started with its restore_command paused may go
/// without it (see [`reinit::Unpause`]): it streams within a fraction of
/// this when the primary still has the WAL it needs.
const QUIET_START: Duration = Duration::from_secs(3);

/// A node id from pgpool (`%m`, `%P`), negative meaning unknown, checked
/// against the backends.
pub(crate) fn pgpool_node(topo: &Topology, id: Option<i64>) -> Result<Option<u32>> {
    match id {
        Some(i) if i >= 0 => Ok(Some(topo.node(i)?.id)),
        _ => Ok(None),
    }
}

/// Run the request within `[follow] deadline`, journaling its end.
pub(crate) async fn run(topo: &Topology, req: &Request) -> Result<Summary> {
    let start = Instant::now();
    let started = SystemTime::now();
    let journal = Journal::new(&topo.config.state_dir, req.command);
    if !req.dry_run
        && let Err(e) = state::ensure_dir(&topo.config.state_dir)
    {
        warn!("{e}");
    }
    let remote = topo.remote();
    let x = Exec {
        topo,
        remote: &remote,
        journal: &journal,
        deadline: start + topo.config.follow.deadline,
    };
    let mut summary = Summary {
        node: Some(req.node.id),
        ..Summary::default()
    };
    let res = act(&x, req, &mut summary).await;
    remote.close().await;
    summary.blocked_ms = start.elapsed().as_millis() as u64;
    let res = res.map(|()| summary);
    if !req.dry_run {
        journal.run_end(req.command, "main", res.as_ref(), started, start.elapsed());
    }
    res
}

/// Observe, decide, take the lock, look again, make it stream, attach it.
async fn act(x: &Exec<'_>, req: &Request, summary: &mut Summary) -> Result<()> {
    let t0 = Instant::now();
    let (obs, plan) = look(x, req).await?;
    obs.note(summary);
    let did = Did::done(describe(&plan));
    let fields = state::decision_fields(&plan);
    x.record("observe", Some(&req.node), &did, t0.elapsed(), fields);
    if req.dry_run {
        return dry_run(&obs, &plan, summary);
    }
    info!("plan: {}", describe(&plan));
    detach_first(x, &req.node, &obs, &plan).await?;
    let mut lock = lock_for(x, &plan)?;
    let (obs, plan) = match lock {
        // Another pgha may have acted while we waited for the lock.
        Some(_) => look(x, req).await?,
        None => (obs, plan),
    };
    obs.note(summary);
    if settled(x, &req.node, &plan, t0, summary)? {
        return Ok(());
    }
    let s = Standby {
        x,
        node: &req.node,
        primary: &obs.primary,
        pstate: &obs.pstate,
    };
    let made = s
        .make(&obs.input, &plan)
        .await
        .map_err(|h| h.into_error(req.node.id))?;
    s.attach(made, &mut lock, summary).await
}

/// With `--dry-run`: the plan, and nothing changed. A refusal is a
/// refusal with `--dry-run` too (exit 4), as in pgha-failover: a script
/// asking "would this act?" must see it.
fn dry_run(obs: &Observation, plan: &Plan, summary: &mut Summary) -> Result<()> {
    if let Plan::Refuse { .. } = plan {
        return Err(Error::Refused(format!(
            "plan (nothing changed): {}",
            describe(plan)
        )));
    }
    let detach = if plan.stops_node() && obs.input.attached == Some(true) {
        "detach it in pgpool first; "
    } else {
        ""
    };
    summary.outcome = Outcome::DryRun;
    summary.message = format!("plan (nothing changed): {detach}{}", describe(plan));
    Ok(())
}

/// Detach a node the plan stops while pgpool sends it clients. Before
/// taking the lock: pgpool runs failover_command for the detached node,
/// and pgha-failover takes the same lock.
async fn detach_first(x: &Exec<'_>, node: &Node, obs: &Observation, plan: &Plan) -> Result<()> {
    if plan.stops_node() && obs.input.attached == Some(true) {
        x.step(
            "detach",
            Some(node),
            ops::detach(x.topo, node, x.deadline),
            |_| Did::done("detached in pgpool before stopping it"),
        )
        .await?;
    }
    Ok(())
}

/// The lock pgha-failover takes, for a plan that changes something,
/// waited for within `failover.deadline`.
fn lock_for(x: &Exec<'_>, plan: &Plan) -> Result<Option<Lock>> {
    Ok(match plan {
        Plan::Refuse { .. } | Plan::NothingToDo { .. } => None,
        _ => Some(Lock::acquire(
            &x.topo.config.state_dir,
            "failover",
            budget(x.deadline, x.topo.config.failover.deadline),
        )?),
    })
}

/// A refusal (the error) or nothing to do (`true`): the run ends here.
fn settled(
    x: &Exec<'_>,
    node: &Node,
    plan: &Plan,
    t0: Instant,
    summary: &mut Summary,
) -> Result<bool> {
    match plan {
        Plan::Refuse { reason } => {
            let e = Error::Refused(reason.clone());
            x.failed("decide", Some(node), &e, t0.elapsed());
            Err(e)
        }
        Plan::NothingToDo { reason } => {
            let did = Did::skipped(reason.clone());
            x.record("decide", Some(node), &did, t0.elapsed(), Fields::new());
            summary.outcome = Outcome::NothingToDo;
            summary.message = reason.clone();
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// What one look at the cluster gave.
struct Observation {
    input: FollowInput,
    primary: Node,
    pstate: NodeState,
}

impl Observation {
    fn note(&self, summary: &mut Summary) {
        summary.new_primary = Some(self.primary.id);
        summary.timeline = Some(self.pstate.timeline);
    }
}

/// Observe and decide.
async fn look(x: &Exec<'_>, req: &Request) -> Result<(Observation, Plan)> {
    let obs = observe(x, req).await?;
    let plan = decide(&obs.input);
    Ok((obs, plan))
}

/// Look at the cluster and build the decision's input.
async fn observe(x: &Exec<'_>, req: &Request) -> Result<Observation> {
    let topo = x.topo;
    let (observed, pgpool) = tokio::join!(
        cluster::observe_all(topo),
        ops::every_node_info(topo, x.deadline)
    );
    let pgpool = pgpool
        .inspect_err(|e| warn!("pgpool's view is unknown: {e}"))
        .ok();
    for o in &observed {
        info!("{}", o.describe(topo));
    }
    let p = choose_primary(&observed, pgpool.as_deref(), req.new_primary)?;
    let primary = p.node.clone();
    let pstate = p.ok().cloned().expect("a chosen primary answered");
    let mine = observed
        .iter()
        .find(|o| o.node.id == req.node.id)
        .expect("observe_all covers every node");
    let input = FollowInput {
        node: req.node.id,
        mode: req.mode,
        old_primary: req.old_primary,
        primary: PrimaryView {
            id: primary.id,
            timeline: pstate.timeline,
            lsn: pstate.current_lsn,
            system_identifier: pstate.system_identifier,
            history: primary_history(topo, &primary, &pstate).await,
        },
        target: target_view(x, mine, primary.id).await,
        attached: pgpool
            .as_ref()
            .and_then(|v| v.iter().find(|i| i.id == req.node.id))
            .map(|i| i.is_up()),
        max_lag: topo.config.follow.max_lag,
        rebuild_allowed: topo.config.follow.rebuild,
        discard_wal: req.discard_wal,
    };
    Ok(Observation {
        input,
        primary,
        pstate,
    })
}

/// The primary's timeline history, parsed (empty on timeline 1).
async fn primary_history(topo: &Topology, primary: &Node, st: &NodeState) -> Vec<HistoryEntry> {
    if st.timeline <= 1 {
        return Vec::new();
    }
    match steps::read_history(topo, primary, st, st.timeline).await {
        Ok(h) => lineage::parse_history(&String::from_utf8_lossy(&h)),
        Err(e) => {
            // Without it every older timeline looks foreign: a node that
            // could be repointed is rewound instead, never the other way
            // round.
            warn!("{e}: taking every node on an older timeline as diverged");
            Vec::new()
        }
    }
}

/// The node as the decision sees it; one that SQL does not reach is asked
/// over ssh whether a server runs there.
async fn target_view(x: &Exec<'_>, mine: &Observed, primary: u32) -> TargetView {
    let node = &mine.node;
    let sql = match &mine.state {
        Ok(s) => return TargetView::Running(running_view(x.topo, s)),
        Err(sql) if node.id == primary => {
            return TargetView::Unreachable { why: sql.clone() };
        }
        Err(sql) => sql,
    };
    match reinit::server_status(x.topo, x.remote, node, x.deadline).await {
        Ok(ServerStatus::Stopped) => TargetView::Stopped {
            why: "pg_ctl status over ssh: no server running".into(),
        },
        Ok(ServerStatus::NoDataDirectory) => TargetView::Stopped {
            why: "pg_ctl status over ssh: no data directory".into(),
        },
        Ok(ServerStatus::Running) => TargetView::Unreachable {
            why: format!("a server runs there but SQL fails: {sql}"),
        },
        Err(e) => TargetView::Unreachable {
            why: format!("SQL: {sql}; ssh: {e}"),
        },
    }
}

fn running_view(topo: &Topology, s: &NodeState) -> RunningView {
    RunningView {
        in_recovery: s.in_recovery,
        timeline: s.timeline,
        lsn: if s.in_recovery {
            s.replay_lsn.or(s.receive_lsn)
        } else {
            s.current_lsn
        },
        streaming_from: cluster::upstream_of(topo, s),
        received_tli: s.wal_receiver.as_ref().map(|r| r.received_tli),
        system_identifier: s.system_identifier,
        rewind_possible: s.data_checksums || s.wal_log_hints,
    }
}

/// The current primary: `--new-primary` when given (it must answer as a
/// primary), else the one node that answers as a primary, else the one of
/// them pgpool routes writes to.
fn choose_primary<'a>(
    observed: &'a [Observed],
    pgpool: Option<&[pcp::NodeInfo]>,
    new_primary: Option<u32>,
) -> Result<&'a Observed> {
    let primaries: Vec<&Observed> = observed
        .iter()
        .filter(|o| o.ok().is_some_and(|s| !s.in_recovery))
        .collect();
    if let Some(p) = new_primary {
        return named_primary(observed, &primaries, p);
    }
    match primaries.len() {
        0 => Err(Error::Refused(
            "no node answers as a primary: nothing to follow; nothing was changed".into(),
        )),
        1 => Ok(primaries[0]),
        _ => {
            let ids: Vec<String> = primaries.iter().map(|o| o.node.id.to_string()).collect();
            let chosen = pgpool.and_then(|v| {
                v.iter()
                    .find(|i| i.is_up() && i.role == "primary")
                    .and_then(|i| primaries.iter().find(|o| o.node.id == i.id))
            });
            chosen.copied().ok_or_else(|| {
                Error::Refused(format!(
                    "nodes {} all answer as primaries and pgpool does not say which one is current: give --new-primary or stop all but one by hand; nothing was changed",
                    ids.join(", ")
                ))
            })
        }
    }
}

/// `--new-primary p`, which must answer as a primary.
fn named_primary<'a>(
    observed: &'a [Observed],
    primaries: &[&'a Observed],
    p: u32,
) -> Result<&'a Observed> {
    if let Some(o) = primaries.iter().find(|o| o.node.id == p) {
        return Ok(o);
    }
    let why = match observed.iter().find(|o| o.node.id == p).map(|o| &o.state) {
        Some(Ok(_)) => "is in recovery".to_string(),
        Some(Err(e)) => format!("does not answer ({e})"),
        None => "is unknown".to_string(),
    };
    Err(Error::Refused(format!(
        "the new primary named by --new-primary, node {p}, {why}: no primary to follow; nothing was changed"
    )))
}

/// What a path to streaming made of the node: the outcome, and how it
/// got there for the final line (empty when it streamed already).
struct Made {
    outcome: Outcome,
    how: String,
}

/// Where a path to streaming got.
type Walk = std::result::Result<Made, Halt>;

/// How a path to streaming stopped: the error, and whether its message
/// names the command that finishes the work already.
struct Halt {
    error: Error,
    names_next: bool,
}

impl From<Error> for Halt {
    fn from(error: Error) -> Halt {
        Halt {
            error,
            names_next: false,
        }
    }
}

impl Halt {
    /// Every step checks first whether it is done: running again after
    /// fixing the cause picks up where this run stopped (pgha-follow skips
    /// a stopped node, hence --rejoin).
    fn into_error(self, node: u32) -> Error {
        match self.error {
            Error::Step(m) if !self.names_next => Error::Step(format!(
                "{m}; once fixed, run pgha-attach --rejoin {node} to finish"
            )),
            e => e,
        }
    }
}

/// Acting on one node, once the primary is known.
struct Standby<'a> {
    x: &'a Exec<'a>,
    node: &'a Node,
    primary: &'a Node,
    pstate: &'a NodeState,
}

impl Standby<'_> {
    async fn step<T>(
        &self,
        name: &str,
        fut: impl Future<Output = Result<T>>,
        describe: impl FnOnce(&T) -> Did,
    ) -> Result<T> {
        self.x.step(name, Some(self.node), fut, describe).await
    }

    /// A step that always changes something and says what.
    async fn did(&self, name: &str, fut: impl Future<Output = Result<String>>) -> Result<String> {
        self.step(name, fut, |d| Did::done(d.clone())).await
    }

    /// The node's state now, by SQL.
    async fn state(&self) -> Result<NodeState> {
        cluster::observe_node(self.x.topo, self.node)
            .await
            .state
            .map_err(|e| Error::Step(format!("{}: {e}", self.node.label())))
    }

    /// Follow the plan until the node streams from the primary.
    async fn make(&self, input: &FollowInput, plan: &Plan) -> Walk {
        let rewind_possible = matches!(&input.target, TargetView::Running(t) if t.rewind_possible);
        let rebuild_allowed = input.rebuild_allowed;
        match plan {
            Plan::Attach { .. } => Ok(Made {
                outcome: Outcome::Attached,
                how: String::new(),
            }),
            Plan::Repoint { .. } => {
                self.repoint_path(rewind_possible, rebuild_allowed, input.discard_wal)
                    .await
            }
            Plan::Rewind { stop_first, .. } => self.rewind_path(*stop_first, rebuild_allowed).await,
            Plan::Rebuild { stop_first, .. } => self.rebuild_path(*stop_first).await,
            Plan::Refuse { .. } | Plan::NothingToDo { .. } => unreachable!("settled before"),
        }
    }

    /// The node streams: wait until it caught up, attach it, say so.
    async fn attach(
        &self,
        made: Made,
        lock: &mut Option<Lock>,
        summary: &mut Summary,
    ) -> Result<()> {
        let (topo, node, deadline) = (self.x.topo, self.node, self.x.deadline);
        if made.outcome != Outcome::Attached {
            summary.repointed.push(node.id);
        }
        let max_lag = topo.config.follow.max_lag;
        let caught_up = steps::wait_caught_up(topo, node, self.primary, max_lag, deadline);
        let lag = self
            .step("caught_up", caught_up, |l| {
                Did::skipped(format!(
                    "{l} bytes behind {} (max_lag {max_lag})",
                    self.primary.label()
                ))
            })
            .await?;
        // The node streams: the rest is pgpool's; let a failover run meanwhile.
        lock.take();
        let attached = self
            .step("attach", ops::attach(topo, node, deadline), |a| {
                Did::new(
                    *a,
                    if *a {
                        "attach requested"
                    } else {
                        "attached already"
                    },
                )
            })
            .await?;
        let up = ops::wait_status(topo, node, true, deadline);
        self.step("pgpool_up", up, |w| {
            Did::skipped(format!(
                "pgpool shows it up (after {:.2}s)",
                w.as_secs_f64()
            ))
        })
        .await?;
        summary.message = self.final_line(&made.how, lag, attached);
        summary.outcome = made.outcome;
        Ok(())
    }

    fn final_line(&self, how: &str, lag: u64, attached: bool) -> String {
        let how = if how.is_empty() {
            String::new()
        } else {
            format!("{how}; ")
        };
        format!(
            "{} {how}streams from {} on timeline {} ({lag} bytes behind) and is {} in pgpool",
            self.node.label(),
            self.primary.label(),
            self.pstate.timeline,
            if attached {
                "attached"
            } else {
                "attached already"
            }
        )
    }

    /// `[failover] replication_slots`: the node's slot on the primary.
    fn slot(&self) -> Option<String> {
        self.x
            .topo
            .config
            .failover
            .replication_slots
            .then(|| steps::slot_name(self.node))
    }

    async fn ensure_slot(&self) -> Result<()> {
        let Some(slot) = self.slot() else {
            return Ok(());
        };
        let p = self.primary;
        self.step("slot", steps::ensure_slot(self.x.topo, p, &slot), |c| {
            let how = if *c { "created" } else { "exists" };
            Did::new(
                *c,
                format!("replication slot {slot} on {} {how}", p.label()),
            )
        })
        .await?;
        Ok(())
    }

    async fn wait_streaming(&self) -> Result<Duration> {
        let tl = self.pstate.timeline;
        let (topo, p) = (self.x.topo, self.primary);
        let wait = steps::wait_streaming(topo, self.node, p, tl, self.x.deadline);
        self.step("wait_streaming", wait, |w| {
            Did::done(format!(
                "streams from {} on timeline {tl} (waited {:.2}s)",
                p.label(),
                w.as_secs_f64()
            ))
        })
        .await
    }

    /// Repoint; if it does not stream then, rewind (or rebuild); not when
    /// the primary is gone, nor for WAL only this node has without
    /// `--discard-wal`.
    async fn repoint_path(
        &self,
        rewind_possible: bool,
        rebuild_allowed: bool,
        discard_wal: bool,
    ) -> Walk {
        self.before_repoint().await?;
        let how = self.repoint().await?;
        let e = match self.wait_streaming().await {
            Ok(_) if how.changed() => {
                return Ok(Made {
                    outcome: Outcome::Repointed,
                    how: how.describe().to_string(),
                });
            }
            Ok(_) => {
                return Ok(Made {
                    outcome: Outcome::Attached,
                    how: "it pointed at the primary already".to_string(),
                });
            }
            Err(e) => e,
        };
        let label = self.node.label();
        match &e {
            // No rewind can help: it needs the primary that is gone.
            Error::PrimaryGone(_) => return Err(e.into()),
            // A rewind discards WAL that exists nowhere else: only when asked.
            Error::Diverged(_) if !discard_wal => return Err(e.into()),
            _ => {}
        }
        if rewind_possible {
            warn!("{label}: {e}; rewinding it instead");
            self.rewind_path(true, rebuild_allowed).await
        } else if rebuild_allowed {
            warn!("{label}: {e}; it cannot be rewound, rebuilding it");
            self.rebuild_path(true).await
        } else {
            Err(Error::Step(format!(
                "{e}; it cannot be rewound (no data checksums, no wal_log_hints) and [follow] rebuild is off: nothing more was done"
            ))
            .into())
        }
    }

    /// The history file, the replication slot and `primary_slot_name`.
    async fn before_repoint(&self) -> Result<()> {
        let tl = self.pstate.timeline;
        if tl > 1 {
            // A streaming standby fetches the history file from the primary
            // by itself; the copy serves restores from the archive, so a
            // failure here is reported, not fatal.
            if let Err(e) = self.give_history(tl).await {
                warn!("{}: {e}", self.node.label());
            }
        }
        self.ensure_slot().await?;
        if let Some(slot) = self.slot() {
            let set = steps::set_primary_slot_name(self.x.topo, self.node, &slot);
            self.step("slot", set, |c| {
                Did::new(*c, format!("primary_slot_name = {slot}"))
            })
            .await?;
        }
        Ok(())
    }

    /// Point its `primary_conninfo` (and its archive) at the primary.
    async fn repoint(&self) -> Result<steps::Repointed> {
        let x = self.x;
        let st = self.state().await?;
        let tl = self.pstate.timeline;
        let repoint = steps::repoint(
            x.topo,
            x.remote,
            self.node,
            &st,
            self.primary,
            tl,
            x.deadline,
        );
        let how = self
            .step("repoint", repoint, |r| {
                Did::new(
                    r.changed(),
                    format!("{} to {}", r.describe(), self.primary.label()),
                )
            })
            .await?;
        self.follow_archive(&st).await;
        Ok(how)
    }

    /// Copy the primary's history file of `tl` to the node's WAL directory
    /// and archive unless identical copies are there.
    async fn give_history(&self, tl: u32) -> Result<()> {
        let x = self.x;
        let h = steps::read_history(x.topo, self.primary, self.pstate, tl).await?;
        let st = self.state().await?;
        let put = steps::put_history(x.topo, x.remote, self.node, &st, tl, &h, x.deadline);
        self.step("history", put, |p| {
            if p.is_empty() {
                Did::skipped("history file there already")
            } else {
                Did::done(format!("wrote {}", p.join(", ")))
            }
        })
        .await?;
        Ok(())
    }

    /// Point its `restore_command` at the primary's archive, and cut short
    /// an attempt still reaching another node (a silent old primary would
    /// hold its switch to streaming for ssh's connect timeout). Trouble
    /// here is reported, not fatal: streaming does not need the archive.
    async fn follow_archive(&self, st: &NodeState) {
        let (x, node, p) = (self.x, self.node, self.primary);
        match steps::retarget_restore(x.topo, node, st, p).await {
            Ok(None) => {}
            Ok(Some((old, new, _))) => {
                info!(
                    "{}: restore_command fetches from {}'s archive now: {new}",
                    node.label(),
                    p.label()
                );
                let elsewhere =
                    crate::restore::source_of(&old, &x.topo.nodes).is_some_and(|n| n.id != p.id);
                if elsewhere
                    && let Err(e) =
                        steps::interrupt_restore(x.topo, x.remote, node, x.deadline).await
                {
                    warn!("{e}");
                }
            }
            Err(e) => warn!("{e}"),
        }
    }

    async fn server_status(&self) -> Result<ServerStatus> {
        let x = self.x;
        reinit::server_status(x.topo, x.remote, self.node, x.deadline).await
    }

    /// Stop it when running, after proving ssh reaches the server pgha
    /// observed and pgpool no longer sends it clients.
    async fn stop_if_running(&self) -> Result<()> {
        let (x, node) = (self.x, self.node);
        if self.server_status().await? != ServerStatus::Running {
            return Ok(());
        }
        reinit::same_server(x.topo, x.remote, node, x.deadline).await?;
        if let Ok(info) = ops::node_info(x.topo, node, x.deadline).await
            && info.is_up()
        {
            return Err(Error::Refused(format!(
                "{} is attached in pgpool again: not stopping it under pgpool's clients; run the command again",
                node.label()
            )));
        }
        self.did("stop", reinit::stop(x.topo, x.remote, node, x.deadline))
            .await?;
        Ok(())
    }

    /// Stop it (`stop_first`), or make sure it is still stopped.
    async fn stopped(&self, stop_first: bool) -> Result<()> {
        if stop_first {
            return self.stop_if_running().await;
        }
        if self.server_status().await? == ServerStatus::Running {
            return Err(Error::Refused(format!(
                "{} started meanwhile: run the command again",
                self.node.label()
            )));
        }
        Ok(())
    }

    async fn save_config(&self) -> Result<()> {
        let x = self.x;
        let save = reinit::save_config(x.topo, x.remote, self.node, x.deadline);
        self.did("save_config", save).await?;
        Ok(())
    }

    /// Configure the stopped node as a standby, start it, wait until it
    /// streams. `quiet`: start it with its restore_command paused (14+),
    /// only when its pg_wal holds no WAL of a timeline the primary left
    /// (not after pg_rewind rewound it).
    async fn start_as_standby(&self, quiet: bool) -> Result<()> {
        let (x, node) = (self.x, self.node);
        let restore = reinit::restore_config(x.topo, x.remote, node, x.deadline);
        self.did("restore_config", restore).await?;
        self.ensure_slot().await?;
        let configured = self.configure(quiet).await?;
        self.set_aside_stale_history().await?;
        let start = self.did("start", reinit::start(x.topo, x.remote, node, x.deadline));
        let Some(unpause) = configured.unpause else {
            start.await?;
            self.wait_streaming().await?;
            return Ok(());
        };
        // Started with restore_command paused: it streams at once when the
        // primary still has the WAL it needs. Whatever happens, it gets the
        // command back by QUIET_START, even while pg_ctl still waits (a
        // node that needs archived WAL to become consistent).
        let quiet_until = std::cmp::min(x.deadline, Instant::now() + QUIET_START);
        let mut start = std::pin::pin!(start);
        let early = tokio::select! {
            r = &mut start => Some(r),
            () = tokio::time::sleep_until(quiet_until.into()) => None,
        };
        if early.is_none() {
            let why = "not consistent yet, it may need the archive";
            let given = self.unpause_restore(&unpause, why).await;
            start.await?;
            if let Err(e) = given {
                // Too early for pg_ctl reload (no postmaster.pid yet, say):
                // once more now that it runs.
                warn!("{}: {e}; trying again", node.label());
                self.unpause_restore(&unpause, "started").await?;
            }
            self.wait_streaming().await?;
            return Ok(());
        }
        early.expect("checked")?;
        let (topo, p, tl) = (x.topo, self.primary, self.pstate.timeline);
        let streamed = steps::wait_streaming(topo, node, p, tl, quiet_until).await;
        let why = if streamed.is_ok() {
            "started with restore_command paused and streams"
        } else {
            "does not stream yet, it may need the archive"
        };
        self.unpause_restore(&unpause, why).await?;
        match streamed {
            Ok(w) => self.record_streaming(w),
            Err(_) => {
                self.wait_streaming().await?;
            }
        }
        Ok(())
    }

    /// Give a standby started with its restore_command paused the command
    /// back. An error fails the run: a standby left paused could not fetch
    /// archived WAL when streaming breaks.
    async fn unpause_restore(&self, u: &reinit::Unpause, why: &str) -> Result<()> {
        let (x, node) = (self.x, self.node);
        let give = reinit::unpause_restore(x.topo, x.remote, node, u, x.deadline);
        self.step("restore_command", give, |d| Did::done(format!("{why}: {d}")))
            .await
            .map_err(|e| {
                Error::Step(format!(
                    "{e}; its restore_command is still paused by pgha: run pgha-attach --rejoin {} again, or on {} run ALTER SYSTEM SET restore_command = '{}' and SELECT pg_reload_conf()",
                    node.id,
                    node.label(),
                    u.original.replace('\'', "''")
                ))
            })?;
        Ok(())
    }

    fn record_streaming(&self, w: Duration) {
        let (tl, p) = (self.pstate.timeline, self.primary);
        let did = Did::done(format!(
            "streams from {} on timeline {tl} (waited {:.2}s)",
            p.label(),
            w.as_secs_f64()
        ));
        let fields = crate::state::Fields::new();
        self.x
            .record("wait_streaming", Some(self.node), &did, w, fields);
    }

    async fn configure(&self, quiet: bool) -> Result<reinit::Configured> {
        let (x, p) = (self.x, self.primary);
        let slot = self.slot();
        let configure = reinit::configure_standby(
            x.topo,
            x.remote,
            self.node,
            p,
            slot.as_deref(),
            quiet,
            x.deadline,
        );
        self.step("configure", configure, |c| {
            let paused = if c.unpause.is_some() {
                "; restore_command paused until it streams"
            } else {
                ""
            };
            Did::done(format!(
                "standby of {}: primary_conninfo = {}{paused}",
                p.label(),
                c.conninfo
            ))
        })
        .await
    }

    async fn set_aside_stale_history(&self) -> Result<()> {
        let x = self.x;
        let tl = self.pstate.timeline;
        let set_aside =
            reinit::set_aside_stale_history(x.topo, x.remote, self.node, tl, x.deadline);
        self.step("stale_history", set_aside, |v| {
            if v.is_empty() {
                Did::skipped(format!("no history file of a timeline after {tl}"))
            } else {
                Did::done(format!(
                    "renamed to *.pgha-stale (timelines node {} never had): {}",
                    self.primary.id,
                    v.join(", ")
                ))
            }
        })
        .await?;
        Ok(())
    }

    async fn rewind_path(&self, stop_first: bool, rebuild_allowed: bool) -> Walk {
        self.stopped(stop_first).await?;
        self.save_config().await?;
        let rewound = match self.rewind().await {
            Ok(r) => r,
            Err(e) => return self.rewind_failed(e, rebuild_allowed).await,
        };
        let how = match &rewound {
            Rewound::Done(d) => format!("rewound ({d})"),
            Rewound::NotNeeded => "restarted as a standby (no rewind was required)".into(),
            Rewound::AlreadyDone => {
                "started as a standby (rewound or copied by an earlier run)".into()
            }
        };
        // A rewound node's pg_wal may still hold the segment it diverged
        // in, with its own records after the switch point: without its
        // restore_command, recovery would read that segment when the new
        // timeline's copy is not in pg_wal (found with a new primary that
        // had recycled it: the node replayed the diverged records).
        let quiet = matches!(rewound, Rewound::NotNeeded);
        self.start_as_standby(quiet).await?;
        Ok(Made {
            outcome: Outcome::Rewound,
            how,
        })
    }

    async fn rewind(&self) -> Result<Rewound> {
        let (x, p) = (self.x, self.primary);
        let rewind = reinit::rewind(x.topo, x.remote, self.node, p, x.deadline);
        self.step("rewind", rewind, |r| match r {
            Rewound::Done(d) => Did::done(format!("pg_rewind from {}: {d}", p.label())),
            Rewound::NotNeeded => Did::skipped("pg_rewind: no rewind required"),
            Rewound::AlreadyDone => {
                Did::skipped("rewound or copied by an earlier run, not started since")
            }
        })
        .await
    }

    /// `pg_rewind` failed: put its configuration back, then rebuild it
    /// where `[follow] rebuild` allows, else say what to run.
    async fn rewind_failed(&self, e: Error, rebuild_allowed: bool) -> Walk {
        let (x, node) = (self.x, self.node);
        if let Err(r) = reinit::restore_config(x.topo, x.remote, node, x.deadline).await {
            warn!("{}: {r}", node.label());
        }
        if rebuild_allowed {
            warn!(
                "{}: {e}; [follow] rebuild is on: rebuilding it",
                node.label()
            );
            return self.rebuild_path(false).await;
        }
        Err(Halt {
            error: Error::Step(format!(
                "{e}; {} was left stopped and nothing was deleted; to rebuild it from {} with pg_basebackup set rebuild = true in the [follow] section of pgha.toml and run pgha-attach --rejoin {} (or rebuild it by hand)",
                node.label(),
                self.primary.label(),
                node.id
            )),
            names_next: true,
        })
    }

    async fn rebuild_path(&self, stop_first: bool) -> Walk {
        let (x, node) = (self.x, self.node);
        if stop_first {
            self.stop_if_running().await?;
        }
        self.save_config().await?;
        let label = reinit::backup_label_method(x.topo, x.remote, node, x.deadline).await?;
        let how = if label.as_deref() == Some("streamed") {
            let did = Did::skipped("copied by an earlier run, not started since");
            x.record("rebuild", Some(node), &did, Duration::ZERO, Fields::new());
            "started as a standby (copied by an earlier run)".to_string()
        } else {
            let rebuild = reinit::rebuild(x.topo, x.remote, node, self.primary, x.deadline);
            format!("rebuilt ({})", self.did("rebuild", rebuild).await?)
        };
        // A copy of the primary holds no WAL of another timeline.
        self.start_as_standby(true).await?;
        Ok(Made {
            outcome: Outcome::Rebuilt,
            how,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(id: u32, state: std::result::Result<bool, &str>) -> Observed {
        let node = Node {
            id,
            host: format!("127.0.0.{}", id + 2),
            port: 5432,
            data_dir: None,
            ssh_host: format!("127.0.0.{}", id + 2),
            replication_host: format!("127.0.0.{}", id + 2),
            application_name: None,
        };
        let state = state
            .map(|in_recovery| NodeState {
                host: node.host.clone(),
                port: 5432,
                server_version_num: 150000,
                in_recovery,
                timeline: 1,
                current_lsn: None,
                receive_lsn: None,
                replay_lsn: None,
                wal_receiver: None,
                primary_conninfo: None,
                system_identifier: 42,
                data_directory: String::new(),
                wal_log_hints: true,
                data_checksums: true,
                replicas: vec![],
                synchronous_standby_names: String::new(),
                synchronous_commit: "on".into(),
                restore_command: String::new(),
            })
            .map_err(str::to_string);
        Observed {
            node,
            answered: state.is_ok(),
            state,
            took: Duration::ZERO,
        }
    }

    fn info(id: u32, up: bool, role: &str) -> pcp::NodeInfo {
        pcp::NodeInfo {
            id,
            hostname: String::new(),
            port: 5432,
            status: if up {
                pcp::NodeStatus::Up
            } else {
                pcp::NodeStatus::Down
            },
            quarantine: false,
            actual_status: None,
            weight: 0.5,
            role: role.into(),
            actual_role: None,
            replication_delay: 0,
            replication_delay_by_time: false,
            replication_state: String::new(),
            replication_sync_state: String::new(),
            last_status_change: String::new(),
            last_status_change_epoch: 0,
        }
    }

    #[test]
    fn the_primary_is_found() {
        let obs = vec![
            observed(0, Ok(false)),
            observed(1, Ok(false)),
            observed(2, Ok(true)),
        ];
        // Two primaries: pgpool says which one it routes writes to.
        let pg = vec![
            info(0, false, "standby"),
            info(1, true, "primary"),
            info(2, true, "standby"),
        ];
        assert_eq!(choose_primary(&obs, Some(&pg), None).unwrap().node.id, 1);
        let e = choose_primary(&obs, None, None).unwrap_err().to_string();
        assert!(e.contains("nodes 0, 1 all answer as primaries"), "{e}");
        // --new-primary wins, but must be a primary.
        assert_eq!(choose_primary(&obs, Some(&pg), Some(0)).unwrap().node.id, 0);
        let e = choose_primary(&obs, None, Some(2)).unwrap_err().to_string();
        assert!(e.contains("node 2, is in recovery"), "{e}");
        let obs = vec![
            observed(0, Err("refused")),
            observed(1, Ok(false)),
            observed(2, Ok(true)),
        ];
        assert_eq!(choose_primary(&obs, None, None).unwrap().node.id, 1);
        let e = choose_primary(&obs, None, Some(0)).unwrap_err().to_string();
        assert!(e.contains("does not answer (refused)"), "{e}");
        let obs = vec![observed(0, Err("refused")), observed(2, Ok(true))];
        assert!(
            choose_primary(&obs, None, None)
                .unwrap_err()
                .to_string()
                .contains("no node answers as a primary")
        );
    }
}
