//! `pgha-follow`: make one node stream from the current primary, then
//! attach it in pgpool. What pgpool-II 4.x runs as `follow_primary_command`
//! after a primary failover, once per node it marked down (the failed old
//! primary and detached nodes included), one at a time, ignoring the exit
//! status:
//!
//! ```text
//! follow_primary_command = '/usr/bin/pgha-follow %d --new-primary %m --old-primary %P'
//! ```
//!
//! (`%d` the node, `%m` the new main node, which is the new primary, `%P`
//! the old primary.) It also runs by hand: `pgha-follow NODE` finds the
//! primary by looking (and by asking pgpool when two servers claim it).
//!
//! Observe, decide ([`decide`], pure and unit-tested), then act, each step
//! checking first whether it is done:
//! - streams from the primary on its timeline: wait until the lag is under
//!   `[follow] max_lag`, attach;
//! - a standby whose WAL is a prefix of the primary's: give it the history
//!   file, repoint it (reload on 13+), wait until it streams, attach;
//! - WAL that diverged (an old primary, or a standby ahead of the switch
//!   point) or a repoint that does not lead to streaming: `pg_rewind`
//!   ([`crate::rejoin`]); an old primary only with `[follow]
//!   rejoin_old_primary`;
//! - no rewind possible (no data checksums, no `wal_log_hints`) or it
//!   failed: `pg_basebackup` only with `[follow] rebuild`, else stop and say
//!   what to run;
//! - not running, unreachable, another cluster's server: skip, change
//!   nothing, say why.
//!
//! `pgha-attach` ([`crate::attach`]) uses the same observation and
//! decision in its own [`Mode`]s.

use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

use crate::cli::{Common, FollowArgs};
use crate::cluster::{self, Node, Observed, Topology};
use crate::error::{Error, Result};
use crate::exec::Did;
use crate::pgpool::ops;
use crate::pgpool::pcp;
use crate::postgres::{Lsn, NodeState};
use crate::rejoin::{self, HistoryEntry, Rewound, ServerStatus};
use crate::remote::Remote;
use crate::report::{Outcome, Summary};
use crate::state::{Journal, Lock};
use crate::steps::{self, budget};

/// Which command asks, and so how far it may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `pgha-follow`: repoint, rewind a standby; an old primary only with
    /// `[follow] rejoin_old_primary`.
    Follow { rejoin_old_primary: bool },
    /// `pgha-attach`: only attach a node that is a healthy standby already.
    Attach,
    /// `pgha-attach --rejoin`: make any node but the primary a standby,
    /// an old primary included.
    Rejoin,
}

/// The node to act on, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetView {
    /// Neither SQL nor ssh reach it (or ssh finds a server SQL cannot use).
    Unreachable { why: String },
    /// Its host answers ssh and no server runs there.
    Stopped { why: String },
    /// It answers SQL.
    Running(RunningView),
}

/// A running node, reduced to what the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningView {
    pub in_recovery: bool,
    pub timeline: u32,
    /// The end of its WAL: replayed on a standby, written on a primary.
    pub lsn: Option<Lsn>,
    /// The node it streams from right now, when that is a known backend.
    pub streaming_from: Option<u32>,
    /// `received_tli` of its WAL receiver.
    pub received_tli: Option<u32>,
    pub system_identifier: u64,
    /// `data_checksums` or `wal_log_hints`: what `pg_rewind` requires.
    pub rewind_possible: bool,
}

/// The current primary, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryView {
    pub id: u32,
    pub timeline: u32,
    /// `pg_current_wal_lsn()`.
    pub lsn: Option<Lsn>,
    pub system_identifier: u64,
    /// Its timeline history file, parsed (empty on timeline 1).
    pub history: Vec<HistoryEntry>,
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone)]
pub struct FollowInput {
    pub node: u32,
    pub mode: Mode,
    /// `%P` when given.
    pub old_primary: Option<u32>,
    pub primary: PrimaryView,
    pub target: TargetView,
    /// pgpool has it attached; `None` when pgpool could not be asked.
    pub attached: Option<bool>,
    /// `[follow] max_lag`, bytes.
    pub max_lag: u64,
    /// `[follow] rebuild`.
    pub rebuild_allowed: bool,
    /// `--discard-wal`: a standby with WAL the primary lacks may be
    /// rewound, discarding that WAL.
    pub discard_wal: bool,
}

/// What to do, with the reason an operator reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Plan {
    /// Streams from the primary, lag under the bound, attached.
    NothingToDo { reason: String },
    /// Streams from the primary: wait for the lag if needed, attach.
    Attach { reason: String },
    /// Repoint, wait until it streams (rewind if it does not), attach.
    Repoint { reason: String },
    /// Stop it if running, `pg_rewind`, configure, start, wait, attach.
    Rewind { reason: String, stop_first: bool },
    /// Stop it if running, `pg_basebackup`, configure, start, wait, attach.
    Rebuild { reason: String, stop_first: bool },
    /// Change nothing.
    Refuse { reason: String },
}

impl Plan {
    /// The plan stops the node's server.
    pub fn stops_node(&self) -> bool {
        matches!(
            self,
            Plan::Rewind {
                stop_first: true,
                ..
            } | Plan::Rebuild {
                stop_first: true,
                ..
            }
        )
    }
}

/// Decide what to do with the node. Pure: every branch is unit-tested.
pub fn decide(i: &FollowInput) -> Plan {
    let n = i.node;
    let p = &i.primary;
    let pid = p.id;
    if n == pid {
        let extra = match i.mode {
            Mode::Rejoin => "; --rejoin is for a failed old primary or a standby",
            _ => "",
        };
        return Plan::Refuse {
            reason: format!(
                "node {n} is the current primary (timeline {}): there is nothing for it to follow{extra}; nothing was changed",
                p.timeline
            ),
        };
    }
    let t = match &i.target {
        TargetView::Unreachable { why } => {
            let next = match i.mode {
                Mode::Follow { .. } => format!("pgha-follow {n}"),
                Mode::Attach => format!("pgha-attach {n}"),
                Mode::Rejoin => format!("pgha-attach --rejoin {n}"),
            };
            return Plan::Refuse {
                reason: format!(
                    "cannot reach node {n}: {why}; nothing was changed; when it is back, run {next}"
                ),
            };
        }
        TargetView::Stopped { why } => {
            return match i.mode {
                Mode::Attach => Plan::Refuse {
                    reason: format!(
                        "node {n} is not running ({why}); nothing was changed; start it and run pgha-attach {n} again, or run pgha-attach --rejoin {n} to make it a standby of node {pid} first"
                    ),
                },
                Mode::Follow {
                    rejoin_old_primary: true,
                } if i.old_primary == Some(n) => Plan::Rewind {
                    reason: format!(
                        "node {n} is the old primary and stopped ({why}); [follow] rejoin_old_primary is on: rewind it from node {pid}, start it as a standby"
                    ),
                    stop_first: false,
                },
                Mode::Follow { .. } => Plan::Refuse {
                    reason: format!(
                        "node {n} is not running ({why}): skipped; start it and run pgha-follow {n}, or pgha-attach --rejoin {n} if it is an old primary"
                    ),
                },
                Mode::Rejoin => Plan::Rewind {
                    reason: format!(
                        "node {n} is stopped ({why}): rewind it from node {pid} (pg_rewind finds out whether it diverged), start it as a standby"
                    ),
                    stop_first: false,
                },
            };
        }
        TargetView::Running(t) => t,
    };
    if t.system_identifier != p.system_identifier {
        return Plan::Refuse {
            reason: format!(
                "node {n} has database system identifier {} but the primary node {pid} has {}: it is not a copy of this cluster (a wrong backend address, or a server made by initdb); nothing was changed; check backend_hostname{n} or rebuild it by hand",
                t.system_identifier, p.system_identifier
            ),
        };
    }
    let at = |l: Option<Lsn>| l.map(|l| format!(" at {l}")).unwrap_or_default();
    if !t.in_recovery {
        let what = format!(
            "node {n} is a primary on timeline {}{} next to the current primary node {pid} (timeline {}): an old primary that came back",
            t.timeline,
            at(t.lsn),
            p.timeline
        );
        return match i.mode {
            Mode::Attach => Plan::Refuse {
                reason: format!(
                    "{what}; attaching it would give pgpool two primaries; nothing was changed; to make it a standby of node {pid} run pgha-attach --rejoin {n}"
                ),
            },
            Mode::Follow {
                rejoin_old_primary: false,
            } => Plan::Refuse {
                reason: format!(
                    "{what}: left alone since [follow] rejoin_old_primary is off; nothing was changed; to make it a standby of node {pid} run pgha-attach --rejoin {n}"
                ),
            },
            _ => rewind_or_rebuild(i, t, what),
        };
    }
    let streams = t.streaming_from == Some(pid) && t.received_tli == Some(p.timeline);
    if streams {
        let lag = match (p.lsn, t.lsn) {
            (Some(pl), Some(tl)) => tl.bytes_behind(pl),
            _ => 0,
        };
        let state = format!(
            "node {n} streams from node {pid} on timeline {} ({lag} bytes behind)",
            p.timeline
        );
        if lag <= i.max_lag {
            return match i.attached {
                Some(true) => Plan::NothingToDo {
                    reason: format!("{state} and is attached in pgpool: nothing to do"),
                },
                _ => Plan::Attach {
                    reason: format!("{state}: attach it in pgpool"),
                },
            };
        }
        return match i.mode {
            Mode::Attach => Plan::Refuse {
                reason: format!(
                    "{state}, more than [follow] max_lag ({} bytes); nothing was changed; wait and run pgha-attach {n} again, or run pgha-follow {n}, which waits for it",
                    i.max_lag
                ),
            },
            _ => Plan::Attach {
                reason: format!(
                    "{state}: wait until it is within [follow] max_lag ({} bytes), attach it in pgpool",
                    i.max_lag
                ),
            },
        };
    }
    let state = match t.streaming_from {
        Some(u) => format!("it streams from node {u}"),
        None => "it does not stream".to_string(),
    };
    let lineage = rejoin::check_lineage(&p.history, p.timeline, p.lsn, t.timeline, t.lsn);
    match (i.mode, lineage) {
        (Mode::Attach, Ok(())) => Plan::Refuse {
            reason: format!(
                "node {n} is a standby on timeline {}{} that does not stream from the current primary node {pid} (timeline {}; {state}); nothing was changed; run pgha-follow {n}",
                t.timeline,
                at(t.lsn),
                p.timeline
            ),
        },
        (Mode::Attach, Err(why)) => Plan::Refuse {
            reason: format!(
                "node {n} is a standby that cannot follow node {pid}: {why}; nothing was changed; its WAL past the switch point exists on no other node: to keep it, make node {n} the primary instead; to discard it, run pgha-attach --rejoin {n} --discard-wal"
            ),
        },
        (_, Err(why)) if !i.discard_wal => Plan::Refuse {
            reason: format!(
                "node {n} is a standby that cannot follow node {pid}: {why}; that WAL exists on no other node and may hold acknowledged commits, and rewinding it would discard it; nothing was changed; to keep it, make node {n} the primary instead (e.g. stop node {pid} and run pgha-failover); to discard it, run the same command again with --discard-wal"
            ),
        },
        (_, Ok(())) => Plan::Repoint {
            reason: format!(
                "node {n} is a standby on timeline {}{} and {state}; its WAL is a prefix of node {pid}'s: repoint it to node {pid}",
                t.timeline,
                at(t.lsn)
            ),
        },
        (_, Err(why)) => rewind_or_rebuild(
            i,
            t,
            format!("node {n} is a standby that cannot follow node {pid}: {why}"),
        ),
    }
}

fn rewind_or_rebuild(i: &FollowInput, t: &RunningView, what: String) -> Plan {
    let (n, pid) = (i.node, i.primary.id);
    if t.rewind_possible {
        Plan::Rewind {
            reason: format!("{what}: stop it, rewind it from node {pid}, start it as a standby"),
            stop_first: true,
        }
    } else if i.rebuild_allowed {
        Plan::Rebuild {
            reason: format!(
                "{what}; it cannot be rewound (neither data checksums nor wal_log_hints = on) and [follow] rebuild is on: stop it, rebuild it from node {pid} with pg_basebackup"
            ),
            stop_first: true,
        }
    } else {
        Plan::Refuse {
            reason: format!(
                "{what}, and it cannot be rewound: pg_rewind needs data checksums or wal_log_hints = on and node {n} has neither; nothing was changed or deleted; to rebuild it from node {pid} with pg_basebackup set rebuild = true in the [follow] section of pgha.toml and run pgha-follow {n} again (the old data directory is moved aside when there is room), or rebuild it by hand; wal_log_hints = on makes later rewinds possible"
            ),
        }
    }
}

/// One short description of a plan, for progress lines and `--dry-run`.
pub fn describe(plan: &Plan) -> String {
    match plan {
        Plan::NothingToDo { reason } => reason.clone(),
        Plan::Attach { reason } => reason.clone(),
        Plan::Repoint { reason } => format!(
            "{reason}; wait until it streams on the primary's timeline (rewind it if it does not), attach it in pgpool"
        ),
        Plan::Rewind { reason, .. } => {
            format!("{reason}; wait until it streams, attach it in pgpool")
        }
        Plan::Rebuild { reason, .. } => {
            format!("{reason}; wait until it streams, attach it in pgpool")
        }
        Plan::Refuse { reason } => format!("refuse: {reason}"),
    }
}

/// What one look at the cluster gave.
pub(crate) struct Observation {
    pub input: FollowInput,
    pub primary: Node,
    pub pstate: NodeState,
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
        if let Some(o) = primaries.iter().find(|o| o.node.id == p) {
            return Ok(o);
        }
        let why = match observed.iter().find(|o| o.node.id == p).map(|o| &o.state) {
            Some(Ok(_)) => "is in recovery".to_string(),
            Some(Err(e)) => format!("does not answer ({e})"),
            None => "is unknown".to_string(),
        };
        return Err(Error::Refused(format!(
            "the new primary named by --new-primary, node {p}, {why}: no primary to follow; nothing was changed"
        )));
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

/// Look at the cluster and build the decision's input.
pub(crate) async fn observe(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    mode: Mode,
    new_primary: Option<u32>,
    old_primary: Option<u32>,
    deadline: Instant,
) -> Result<Observation> {
    let (observed, pgpool) = tokio::join!(
        cluster::observe_all(topo),
        ops::every_node_info(topo, deadline)
    );
    let pgpool = match pgpool {
        Ok(v) => Some(v),
        Err(e) => {
            warn!("pgpool's view is unknown: {e}");
            None
        }
    };
    for o in &observed {
        info!("{}", o.describe(topo));
    }
    let p = choose_primary(&observed, pgpool.as_deref(), new_primary)?;
    let primary = p.node.clone();
    let pstate = p.ok().cloned().expect("a chosen primary answered");
    let history = if pstate.timeline > 1 {
        match steps::read_history(topo, &primary, &pstate, pstate.timeline).await {
            Ok(h) => rejoin::parse_history(&String::from_utf8_lossy(&h)),
            Err(e) => {
                // Without it every older timeline looks foreign: a node
                // that could be repointed is rewound instead, never the
                // other way round.
                warn!("{e}: taking every node on an older timeline as diverged");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    let mine = observed
        .iter()
        .find(|o| o.node.id == node.id)
        .expect("observe_all covers every node");
    let target = match &mine.state {
        Ok(s) => TargetView::Running(RunningView {
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
        }),
        Err(sql) if node.id == primary.id => TargetView::Unreachable { why: sql.clone() },
        Err(sql) => match rejoin::server_status(topo, remote, node, deadline).await {
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
        },
    };
    let attached = pgpool
        .as_ref()
        .and_then(|v| v.iter().find(|i| i.id == node.id))
        .map(|i| i.is_up());
    let input = FollowInput {
        node: node.id,
        mode,
        old_primary,
        primary: PrimaryView {
            id: primary.id,
            timeline: pstate.timeline,
            lsn: pstate.current_lsn,
            system_identifier: pstate.system_identifier,
            history,
        },
        target,
        attached,
        max_lag: topo.config.follow.max_lag,
        rebuild_allowed: topo.config.follow.rebuild,
        discard_wal: false,
    };
    Ok(Observation {
        input,
        primary,
        pstate,
    })
}

/// Acting on one node.
struct Exec<'a> {
    x: crate::exec::Exec<'a>,
    topo: &'a Topology,
    remote: &'a Remote,
    node: &'a Node,
    primary: &'a Node,
    pstate: &'a NodeState,
    deadline: Instant,
}

impl Exec<'_> {
    /// Run one step about the node: progress line and journal entry either way.
    async fn step<T>(
        &self,
        name: &str,
        fut: impl std::future::Future<Output = Result<T>>,
        detail: impl FnOnce(&T) -> (bool, String),
    ) -> Result<T> {
        self.x
            .step(name, Some(self.node), fut, |v| {
                let (did, d) = detail(v);
                Did::new(did, d)
            })
            .await
    }

    fn slot(&self) -> Option<String> {
        self.topo
            .config
            .failover
            .replication_slots
            .then(|| steps::slot_name(self.node))
    }

    async fn ensure_slot(&self) -> Result<()> {
        if let Some(slot) = self.slot() {
            self.step(
                "slot",
                steps::ensure_slot(self.topo, self.primary, &slot),
                |c| {
                    (
                        *c,
                        format!(
                            "replication slot {slot} on {} {}",
                            self.primary.label(),
                            if *c { "created" } else { "exists" }
                        ),
                    )
                },
            )
            .await?;
        }
        Ok(())
    }

    async fn wait_streaming(&self) -> Result<Duration> {
        let tl = self.pstate.timeline;
        self.step(
            "wait_streaming",
            steps::wait_streaming(self.topo, self.node, self.primary, tl, self.deadline),
            |w| {
                (
                    true,
                    format!(
                        "streams from {} on timeline {tl} (waited {:.2}s)",
                        self.primary.label(),
                        w.as_secs_f64()
                    ),
                )
            },
        )
        .await
    }

    /// Copy the primary's history file of `tl` to the node's WAL directory
    /// and archive unless identical copies are there.
    async fn give_history(&self, tl: u32) -> Result<()> {
        let h = steps::read_history(self.topo, self.primary, self.pstate, tl).await?;
        let st = cluster::observe_node(self.topo, self.node)
            .await
            .state
            .map_err(|e| Error::Step(format!("{}: {e}", self.node.label())))?;
        self.step(
            "history",
            steps::put_history(
                self.topo,
                self.remote,
                self.node,
                &st,
                tl,
                &h,
                self.deadline,
            ),
            |p| {
                if p.is_empty() {
                    (false, "history file there already".into())
                } else {
                    (true, format!("wrote {}", p.join(", ")))
                }
            },
        )
        .await?;
        Ok(())
    }

    /// Repoint; if it does not stream then, rewind (or rebuild).
    async fn repoint_path(
        &self,
        rewind_possible: bool,
        rebuild_allowed: bool,
    ) -> Result<(Outcome, String)> {
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
            self.step(
                "slot",
                steps::set_primary_slot_name(self.topo, self.node, &slot),
                |c| (*c, format!("primary_slot_name = {slot}")),
            )
            .await?;
        }
        let st = cluster::observe_node(self.topo, self.node)
            .await
            .state
            .map_err(|e| Error::Step(format!("{}: {e}", self.node.label())))?;
        let how = self
            .step(
                "repoint",
                steps::repoint(
                    self.topo,
                    self.remote,
                    self.node,
                    &st,
                    self.primary,
                    tl,
                    self.deadline,
                ),
                |r| {
                    let d = match r {
                        steps::Repointed::AlreadyFollowing => "already streams from it",
                        steps::Repointed::AlreadyPointed => "already points at it",
                        steps::Repointed::Reloaded => "repointed (reload)",
                        steps::Repointed::Restarted => "repointed (restart)",
                    };
                    (
                        matches!(r, steps::Repointed::Reloaded | steps::Repointed::Restarted),
                        format!("{d} to {}", self.primary.label()),
                    )
                },
            )
            .await?;
        self.follow_archive(&st).await;
        match self.wait_streaming().await {
            Ok(_) => Ok(match how {
                steps::Repointed::Restarted => {
                    (Outcome::Repointed, "repointed (restart)".to_string())
                }
                steps::Repointed::Reloaded => {
                    (Outcome::Repointed, "repointed (reload)".to_string())
                }
                _ => (
                    Outcome::Attached,
                    "it pointed at the primary already".to_string(),
                ),
            }),
            Err(e) if rewind_possible => {
                warn!("{}: {e}; rewinding it instead", self.node.label());
                self.rewind_path(true, rebuild_allowed).await
            }
            Err(e) if rebuild_allowed => {
                warn!(
                    "{}: {e}; it cannot be rewound, rebuilding it",
                    self.node.label()
                );
                self.rebuild_path(true).await
            }
            Err(e) => Err(Error::Step(format!(
                "{e}; it cannot be rewound (no data checksums, no wal_log_hints) and [follow] rebuild is off: nothing more was done"
            ))),
        }
    }

    /// Point its `restore_command` at the primary's archive, and cut short
    /// an attempt still reaching another node (a silent old primary would
    /// hold its switch to streaming for ssh's connect timeout). Trouble
    /// here is reported, not fatal: streaming does not need the archive.
    async fn follow_archive(&self, st: &crate::postgres::NodeState) {
        match steps::retarget_restore(self.topo, self.node, st, self.primary).await {
            Ok(None) => {}
            Ok(Some((old, new, _))) => {
                info!(
                    "{}: restore_command fetches from {}'s archive now: {new}",
                    self.node.label(),
                    self.primary.label()
                );
                let elsewhere = crate::restore::source_of(&old, &self.topo.nodes)
                    .is_some_and(|n| n.id != self.primary.id);
                if elsewhere
                    && let Err(e) =
                        steps::interrupt_restore(self.topo, self.remote, self.node, self.deadline)
                            .await
                {
                    warn!("{e}");
                }
            }
            Err(e) => warn!("{e}"),
        }
    }

    /// Stop it when running, after proving ssh reaches the server pgha
    /// observed and pgpool no longer sends it clients.
    async fn stop_if_running(&self) -> Result<()> {
        let status =
            rejoin::server_status(self.topo, self.remote, self.node, self.deadline).await?;
        if status != ServerStatus::Running {
            return Ok(());
        }
        rejoin::same_server(self.topo, self.remote, self.node, self.deadline).await?;
        if let Ok(info) = ops::node_info(self.topo, self.node, self.deadline).await
            && info.is_up()
        {
            return Err(Error::Refused(format!(
                "{} is attached in pgpool again: not stopping it under pgpool's clients; run the command again",
                self.node.label()
            )));
        }
        self.step(
            "stop",
            rejoin::stop(self.topo, self.remote, self.node, self.deadline),
            |d| (true, d.clone()),
        )
        .await?;
        Ok(())
    }

    /// Configure the stopped node as a standby, start it, wait until it
    /// streams.
    async fn start_as_standby(&self) -> Result<()> {
        self.step(
            "restore_config",
            rejoin::restore_config(self.topo, self.remote, self.node, self.deadline),
            |d| (true, d.clone()),
        )
        .await?;
        self.ensure_slot().await?;
        let slot = self.slot();
        self.step(
            "configure",
            rejoin::configure_standby(
                self.topo,
                self.remote,
                self.node,
                self.primary,
                slot.as_deref(),
                self.deadline,
            ),
            |c| {
                (
                    true,
                    format!(
                        "standby of {}: primary_conninfo = {c}",
                        self.primary.label()
                    ),
                )
            },
        )
        .await?;
        let tl = self.pstate.timeline;
        self.step(
            "stale_history",
            rejoin::set_aside_stale_history(self.topo, self.remote, self.node, tl, self.deadline),
            |v| {
                if v.is_empty() {
                    (false, format!("no history file of a timeline after {tl}"))
                } else {
                    (
                        true,
                        format!(
                            "renamed to *.pgha-stale (timelines node {} never had): {}",
                            self.primary.id,
                            v.join(", ")
                        ),
                    )
                }
            },
        )
        .await?;
        self.step(
            "start",
            rejoin::start(self.topo, self.remote, self.node, self.deadline),
            |d| (true, d.clone()),
        )
        .await?;
        self.wait_streaming().await?;
        Ok(())
    }

    async fn rewind_path(
        &self,
        stop_first: bool,
        rebuild_allowed: bool,
    ) -> Result<(Outcome, String)> {
        if stop_first {
            self.stop_if_running().await?;
        } else if rejoin::server_status(self.topo, self.remote, self.node, self.deadline).await?
            == ServerStatus::Running
        {
            return Err(Error::Refused(format!(
                "{} started meanwhile: run the command again",
                self.node.label()
            )));
        }
        self.step(
            "save_config",
            rejoin::save_config(self.topo, self.remote, self.node, self.deadline),
            |d| (true, d.clone()),
        )
        .await?;
        let rewound = self
            .step(
                "rewind",
                rejoin::rewind(
                    self.topo,
                    self.remote,
                    self.node,
                    self.primary,
                    self.deadline,
                ),
                |r| match r {
                    Rewound::Rewound(d) => (
                        true,
                        format!("pg_rewind from {}: {d}", self.primary.label()),
                    ),
                    Rewound::NotNeeded => (false, "pg_rewind: no rewind required".into()),
                    Rewound::AlreadyDone => (
                        false,
                        "rewound or copied by an earlier run, not started since".into(),
                    ),
                },
            )
            .await;
        let how = match rewound {
            Ok(Rewound::Rewound(d)) => format!("rewound ({d})"),
            Ok(Rewound::NotNeeded) => "restarted as a standby (no rewind was required)".into(),
            Ok(Rewound::AlreadyDone) => {
                "started as a standby (rewound or copied by an earlier run)".into()
            }
            Err(e) => {
                let restored =
                    rejoin::restore_config(self.topo, self.remote, self.node, self.deadline).await;
                if let Err(r) = restored {
                    warn!("{}: {r}", self.node.label());
                }
                if rebuild_allowed {
                    warn!(
                        "{}: {e}; [follow] rebuild is on: rebuilding it",
                        self.node.label()
                    );
                    return self.rebuild_path(false).await;
                }
                return Err(Error::Step(format!(
                    "{e}; {} was left stopped and nothing was deleted; to rebuild it from {} with pg_basebackup set rebuild = true in the [follow] section of pgha.toml and run pgha-attach --rejoin {} (or rebuild it by hand)",
                    self.node.label(),
                    self.primary.label(),
                    self.node.id
                )));
            }
        };
        self.start_as_standby().await?;
        Ok((Outcome::Rewound, how))
    }

    async fn rebuild_path(&self, stop_first: bool) -> Result<(Outcome, String)> {
        if stop_first {
            self.stop_if_running().await?;
        }
        self.step(
            "save_config",
            rejoin::save_config(self.topo, self.remote, self.node, self.deadline),
            |d| (true, d.clone()),
        )
        .await?;
        let label =
            rejoin::backup_label_method(self.topo, self.remote, self.node, self.deadline).await?;
        let how = if label.as_deref() == Some("streamed") {
            let did = Did::skipped("copied by an earlier run, not started since");
            let fields = crate::state::Fields::new();
            self.x
                .record("rebuild", Some(self.node), &did, Duration::ZERO, fields);
            "started as a standby (copied by an earlier run)".to_string()
        } else {
            let d = self
                .step(
                    "rebuild",
                    rejoin::rebuild(
                        self.topo,
                        self.remote,
                        self.node,
                        self.primary,
                        self.deadline,
                    ),
                    |d| (true, d.clone()),
                )
                .await?;
            format!("rebuilt ({d})")
        };
        self.start_as_standby().await?;
        Ok((Outcome::Rebuilt, how))
    }
}

/// Run `pgha-follow` as the arguments say.
pub async fn run(args: &FollowArgs) -> Result<Summary> {
    let topo = Topology::load(args.common.config.as_deref())?;
    let mode = Mode::Follow {
        rejoin_old_primary: topo.config.follow.rejoin_old_primary,
    };
    let hints = Hints {
        new_primary: args.new_primary,
        old_primary: args.old_primary,
        discard_wal: args.discard_wal,
    };
    run_mode(&topo, args.node, mode, &hints, &args.common, "follow").await
}

/// What the caller knows beyond the node: pgpool's `%m` and `%P`, and
/// whether WAL only that node has may be discarded.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hints {
    pub new_primary: Option<i64>,
    pub old_primary: Option<i64>,
    pub discard_wal: bool,
}

/// A node id from pgpool (`%m`, `%P`), negative meaning unknown, checked
/// against the backends.
fn optional_node(topo: &Topology, id: Option<i64>) -> Result<Option<u32>> {
    match id {
        None => Ok(None),
        Some(i) if i < 0 => Ok(None),
        Some(i) => Ok(Some(topo.node(i)?.id)),
    }
}

/// The command shared by `pgha-follow` and `pgha-attach`: observe, decide,
/// act on node `node_id` in `mode`.
pub(crate) async fn run_mode(
    topo: &Topology,
    node_id: i64,
    mode: Mode,
    hints: &Hints,
    common: &Common,
    command: &'static str,
) -> Result<Summary> {
    let start = Instant::now();
    let started = std::time::SystemTime::now();
    let deadline = start + topo.config.follow.deadline;
    let node = topo.node(node_id)?.clone();
    let new_primary = optional_node(topo, hints.new_primary)?;
    let old_primary = optional_node(topo, hints.old_primary)?;
    let journal = Journal::new(&topo.config.state_dir, command);
    if !common.dry_run
        && let Err(e) = crate::state::ensure_dir(&topo.config.state_dir)
    {
        warn!("{e}");
    }
    let remote = topo.remote();
    let mut summary = Summary {
        node: Some(node.id),
        ..Summary::default()
    };
    let res = act(
        topo,
        &remote,
        &node,
        mode,
        new_primary,
        old_primary,
        hints.discard_wal,
        common,
        &journal,
        deadline,
        &mut summary,
    )
    .await;
    remote.close().await;
    summary.blocked_ms = start.elapsed().as_millis() as u64;
    let res = res.map(|()| summary);
    if !common.dry_run {
        journal.run_end(command, "main", res.as_ref(), started, start.elapsed());
    }
    res
}

#[allow(clippy::too_many_arguments)]
async fn act(
    topo: &Topology,
    remote: &Remote,
    node: &Node,
    mode: Mode,
    new_primary: Option<u32>,
    old_primary: Option<u32>,
    discard_wal: bool,
    common: &Common,
    journal: &Journal,
    deadline: Instant,
    summary: &mut Summary,
) -> Result<()> {
    let t0 = Instant::now();
    let mut obs = observe(topo, remote, node, mode, new_primary, old_primary, deadline).await?;
    obs.input.discard_wal = discard_wal;
    let mut plan = decide(&obs.input);
    summary.new_primary = Some(obs.primary.id);
    summary.timeline = Some(obs.pstate.timeline);
    let x = crate::exec::Exec {
        topo,
        remote,
        journal,
        deadline,
    };
    x.record(
        "observe",
        Some(node),
        &Did::done(describe(&plan)),
        t0.elapsed(),
        crate::state::decision_fields(&plan),
    );
    if common.dry_run {
        let detach = if plan.stops_node() && obs.input.attached == Some(true) {
            "detach it in pgpool first; "
        } else {
            ""
        };
        // A refusal is a refusal with --dry-run too (exit 4), as in
        // pgha-failover: a script asking "would this act?" must see it.
        if let Plan::Refuse { .. } = plan {
            return Err(Error::Refused(format!(
                "plan (nothing changed): {}",
                describe(&plan)
            )));
        }
        summary.outcome = Outcome::DryRun;
        summary.message = format!("plan (nothing changed): {detach}{}", describe(&plan));
        return Ok(());
    }
    info!("plan: {}", describe(&plan));
    if plan.stops_node() && obs.input.attached == Some(true) {
        // Before taking the lock: pgpool runs failover_command for the
        // detached node, and pgha-failover takes the same lock.
        x.step(
            "detach",
            Some(node),
            ops::detach(topo, node, deadline),
            |_| Did::done("detached in pgpool before stopping it"),
        )
        .await?;
    }
    let mut lock = match plan {
        Plan::Refuse { .. } | Plan::NothingToDo { .. } => None,
        _ => Some(Lock::acquire(
            &topo.config.state_dir,
            "failover",
            budget(deadline, topo.config.failover.deadline),
        )?),
    };
    if lock.is_some() {
        // Another pgha may have acted while we waited for the lock.
        obs = observe(topo, remote, node, mode, new_primary, old_primary, deadline).await?;
        obs.input.discard_wal = discard_wal;
        plan = decide(&obs.input);
    }
    summary.new_primary = Some(obs.primary.id);
    summary.timeline = Some(obs.pstate.timeline);
    match &plan {
        Plan::Refuse { reason } => {
            let e = Error::Refused(reason.clone());
            x.failed("decide", Some(node), &e, t0.elapsed());
            return Err(e);
        }
        Plan::NothingToDo { reason } => {
            x.record(
                "decide",
                Some(node),
                &Did::skipped(reason.clone()),
                t0.elapsed(),
                crate::state::Fields::new(),
            );
            summary.outcome = Outcome::NothingToDo;
            summary.message = reason.clone();
            return Ok(());
        }
        _ => {}
    }
    let exec = Exec {
        x,
        topo,
        remote,
        node,
        primary: &obs.primary,
        pstate: &obs.pstate,
        deadline,
    };
    let rewind_possible = matches!(&obs.input.target, TargetView::Running(t) if t.rewind_possible);
    let rebuild_allowed = obs.input.rebuild_allowed;
    let made = match &plan {
        Plan::Attach { .. } => Ok((Outcome::Attached, String::new())),
        Plan::Repoint { .. } => exec.repoint_path(rewind_possible, rebuild_allowed).await,
        Plan::Rewind { stop_first, .. } => exec.rewind_path(*stop_first, rebuild_allowed).await,
        Plan::Rebuild { stop_first, .. } => exec.rebuild_path(*stop_first).await,
        Plan::Refuse { .. } | Plan::NothingToDo { .. } => unreachable!("handled above"),
    };
    // Every step checks first whether it is done: running again after
    // fixing the cause picks up where this run stopped (pgha-follow skips
    // a stopped node, hence --rejoin).
    let (outcome, how) = made.map_err(|e| match e {
        Error::Step(m) if !m.contains("pgha-attach --rejoin") => Error::Step(format!(
            "{m}; once fixed, run pgha-attach --rejoin {} to finish",
            node.id
        )),
        other => other,
    })?;
    if outcome != Outcome::Attached {
        summary.repointed.push(node.id);
    }
    let max_lag = topo.config.follow.max_lag;
    let lag = exec
        .step(
            "caught_up",
            steps::wait_caught_up(topo, node, &obs.primary, max_lag, deadline),
            |l| {
                (
                    false,
                    format!(
                        "{l} bytes behind {} (max_lag {max_lag})",
                        obs.primary.label()
                    ),
                )
            },
        )
        .await?;
    // The node streams: the rest is pgpool's; let a failover run meanwhile.
    lock.take();
    let attached = exec
        .step("attach", ops::attach(topo, node, deadline), |a| {
            (
                *a,
                if *a {
                    "attach requested".into()
                } else {
                    "attached already".into()
                },
            )
        })
        .await?;
    exec.step(
        "pgpool_up",
        ops::wait_status(topo, node, true, deadline),
        |w| {
            (
                false,
                format!("pgpool shows it up (after {:.2}s)", w.as_secs_f64()),
            )
        },
    )
    .await?;
    summary.outcome = outcome;
    let how = if how.is_empty() {
        String::new()
    } else {
        format!("{how}; ")
    };
    summary.message = format!(
        "{} {how}streams from {} on timeline {} ({lag} bytes behind) and is {} in pgpool",
        node.label(),
        obs.primary.label(),
        obs.pstate.timeline,
        if attached {
            "attached"
        } else {
            "attached already"
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(s: &str) -> Option<Lsn> {
        Some(s.parse().unwrap())
    }

    fn primary() -> PrimaryView {
        PrimaryView {
            id: 1,
            timeline: 2,
            lsn: lsn("0/5000000"),
            system_identifier: 42,
            history: rejoin::parse_history("1\t0/4018470\tno recovery target specified\n"),
        }
    }

    fn standby(tl: u32, at: &str, from: Option<u32>) -> TargetView {
        TargetView::Running(RunningView {
            in_recovery: true,
            timeline: tl,
            lsn: lsn(at),
            streaming_from: from,
            received_tli: from.map(|_| tl),
            system_identifier: 42,
            rewind_possible: true,
        })
    }

    fn zombie(at: &str) -> TargetView {
        TargetView::Running(RunningView {
            in_recovery: false,
            timeline: 1,
            lsn: lsn(at),
            streaming_from: None,
            received_tli: None,
            system_identifier: 42,
            rewind_possible: true,
        })
    }

    fn input(node: u32, mode: Mode, target: TargetView) -> FollowInput {
        FollowInput {
            node,
            mode,
            old_primary: Some(0),
            primary: primary(),
            target,
            attached: Some(false),
            max_lag: 16 * 1024 * 1024,
            rebuild_allowed: false,
            discard_wal: true,
        }
    }

    const FOLLOW: Mode = Mode::Follow {
        rejoin_old_primary: false,
    };
    const FOLLOW_OLD: Mode = Mode::Follow {
        rejoin_old_primary: true,
    };

    fn refusal(p: Plan) -> String {
        match p {
            Plan::Refuse { reason } => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_primary_itself_is_refused() {
        for mode in [FOLLOW, Mode::Attach, Mode::Rejoin] {
            let r = refusal(decide(&input(1, mode, zombie("0/5000000"))));
            assert!(r.contains("node 1 is the current primary"), "{r}");
        }
        assert!(refusal(decide(&input(1, Mode::Rejoin, zombie("0/1")))).contains("--rejoin"));
    }

    #[test]
    fn streaming_standby_is_attached_once() {
        let mut i = input(2, FOLLOW, standby(2, "0/5000000", Some(1)));
        assert!(matches!(decide(&i), Plan::Attach { .. }));
        i.attached = None;
        assert!(matches!(decide(&i), Plan::Attach { .. }));
        i.attached = Some(true);
        match decide(&i) {
            Plan::NothingToDo { reason } => assert!(reason.contains("nothing to do"), "{reason}"),
            other => panic!("{other:?}"),
        }
        i.mode = Mode::Attach;
        assert!(matches!(decide(&i), Plan::NothingToDo { .. }));
        i.mode = Mode::Rejoin;
        assert!(matches!(decide(&i), Plan::NothingToDo { .. }));
    }

    #[test]
    fn lag_over_the_bound_waits_or_refuses() {
        let mut i = input(2, Mode::Attach, standby(2, "0/4FFFF00", Some(1)));
        i.max_lag = 0x80;
        let r = refusal(decide(&i));
        assert!(
            r.contains("256 bytes behind") && r.contains("max_lag"),
            "{r}"
        );
        i.mode = FOLLOW;
        match decide(&i) {
            Plan::Attach { reason } => assert!(reason.contains("wait until"), "{reason}"),
            other => panic!("{other:?}"),
        }
        i.max_lag = 0x100;
        i.mode = Mode::Attach;
        assert!(matches!(decide(&i), Plan::Attach { .. }));
    }

    #[test]
    fn standby_behind_the_switch_is_repointed() {
        // Still on timeline 1, at the switch point, streaming from nobody.
        let i = input(2, FOLLOW, standby(1, "0/4018470", None));
        assert!(matches!(decide(&i), Plan::Repoint { .. }));
        // Streaming from the wrong node on the right timeline.
        let i = input(3, FOLLOW, standby(2, "0/4FF0000", Some(2)));
        match decide(&i) {
            Plan::Repoint { reason } => assert!(reason.contains("streams from node 2"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // pgha-attach only tells what to run.
        let r = refusal(decide(&input(
            2,
            Mode::Attach,
            standby(1, "0/4018470", None),
        )));
        assert!(r.contains("run pgha-follow 2"), "{r}");
    }

    #[test]
    fn diverged_standby_is_rewound_or_rebuilt_or_refused() {
        let mut i = input(2, FOLLOW, standby(1, "0/4018500", None));
        assert!(matches!(
            decide(&i),
            Plan::Rewind {
                stop_first: true,
                ..
            }
        ));
        let r = refusal(decide(&FollowInput {
            mode: Mode::Attach,
            ..i.clone()
        }));
        assert!(
            r.contains("pgha-attach --rejoin 2") && r.contains("diverged"),
            "{r}"
        );
        if let TargetView::Running(t) = &mut i.target {
            t.rewind_possible = false;
        }
        let r = refusal(decide(&i));
        assert!(
            r.contains("cannot be rewound") && r.contains("nothing was changed or deleted"),
            "{r}"
        );
        assert!(
            r.contains("rebuild = true") && r.contains("pgha-follow 2"),
            "{r}"
        );
        i.rebuild_allowed = true;
        assert!(matches!(
            decide(&i),
            Plan::Rebuild {
                stop_first: true,
                ..
            }
        ));
        // A timeline the primary never had.
        let mut i = input(2, FOLLOW, standby(3, "0/4000000", None));
        assert!(matches!(decide(&i), Plan::Rewind { .. }));
        // Without --discard-wal, WAL that exists nowhere else is kept.
        i.discard_wal = false;
        let r = refusal(decide(&i));
        assert!(
            r.contains("exists on no other node") && r.contains("--discard-wal"),
            "{r}"
        );
        let r = refusal(decide(&FollowInput {
            mode: Mode::Rejoin,
            ..i.clone()
        }));
        assert!(r.contains("nothing was changed"), "{r}");
    }

    #[test]
    fn old_primary_is_rejoined_only_when_allowed() {
        let r = refusal(decide(&input(0, Mode::Attach, zombie("0/40184E8"))));
        assert!(
            r.contains("an old primary that came back") && r.contains("pgha-attach --rejoin 0"),
            "{r}"
        );
        assert!(r.contains("two primaries"), "{r}");
        let r = refusal(decide(&input(0, FOLLOW, zombie("0/40184E8"))));
        assert!(r.contains("rejoin_old_primary is off"), "{r}");
        for mode in [FOLLOW_OLD, Mode::Rejoin] {
            assert!(matches!(
                decide(&input(0, mode, zombie("0/40184E8"))),
                Plan::Rewind {
                    stop_first: true,
                    ..
                }
            ));
        }
        let plan = decide(&input(0, Mode::Rejoin, zombie("0/40184E8")));
        assert!(plan.stops_node());
    }

    #[test]
    fn stopped_nodes() {
        let stopped = TargetView::Stopped {
            why: "pg_ctl status: no server running".into(),
        };
        let r = refusal(decide(&input(2, FOLLOW, stopped.clone())));
        assert!(r.contains("skipped") && r.contains("pgha-follow 2"), "{r}");
        // The stopped old primary (fenced by pgha-failover) with the policy on.
        assert!(matches!(
            decide(&input(0, FOLLOW_OLD, stopped.clone())),
            Plan::Rewind {
                stop_first: false,
                ..
            }
        ));
        // ... but only the old primary.
        assert!(matches!(
            decide(&input(2, FOLLOW_OLD, stopped.clone())),
            Plan::Refuse { .. }
        ));
        assert!(matches!(
            decide(&input(2, Mode::Rejoin, stopped.clone())),
            Plan::Rewind {
                stop_first: false,
                ..
            }
        ));
        let r = refusal(decide(&input(2, Mode::Attach, stopped)));
        assert!(r.contains("not running") && r.contains("--rejoin 2"), "{r}");
        assert!(
            !decide(&input(
                2,
                Mode::Rejoin,
                TargetView::Stopped { why: String::new() }
            ))
            .stops_node()
        );
    }

    #[test]
    fn unreachable_and_foreign_nodes_are_refused() {
        let u = TargetView::Unreachable {
            why: "SQL: timed out; ssh: timed out".into(),
        };
        for (mode, next) in [
            (FOLLOW, "pgha-follow 2"),
            (Mode::Attach, "pgha-attach 2"),
            (Mode::Rejoin, "pgha-attach --rejoin 2"),
        ] {
            let r = refusal(decide(&input(2, mode, u.clone())));
            assert!(
                r.contains("cannot reach node 2")
                    && r.contains(next)
                    && r.contains("nothing was changed"),
                "{r}"
            );
        }
        let mut t = standby(2, "0/5000000", Some(1));
        if let TargetView::Running(r) = &mut t {
            r.system_identifier = 7;
        }
        for mode in [FOLLOW, Mode::Rejoin] {
            let r = refusal(decide(&input(2, mode, t.clone())));
            assert!(
                r.contains("system identifier 7") && r.contains("has 42"),
                "{r}"
            );
        }
    }

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
