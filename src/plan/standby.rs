//! What to do with one node that should be a standby of the current
//! primary, computed from what was observed, with no I/O, so that every
//! branch is unit-tested: the decision behind `pgha-follow` and
//! `pgha-attach` (see [`crate::standby`], which observes and acts).
//!
//! - streams from the primary on its timeline: wait until the lag is under
//!   `[follow] max_lag`, attach;
//! - a standby whose WAL is a prefix of the primary's: repoint it;
//! - WAL that diverged (an old primary, or a standby ahead of the switch
//!   point): `pg_rewind`; an old primary only with `[follow]
//!   rejoin_old_primary` or `--rejoin`, WAL only a standby has only with
//!   `--discard-wal`;
//! - no rewind possible (no data checksums, no `wal_log_hints`):
//!   `pg_basebackup` only with `[follow] rebuild`;
//! - not running, unreachable, another cluster's server: refuse.

use serde::Serialize;

use crate::lineage::{HistoryEntry, check_lineage};
use crate::postgres::Lsn;

/// Which command asks, and so how far it may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
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
pub(crate) enum TargetView {
    /// Neither SQL nor ssh reach it (or ssh finds a server SQL cannot use).
    Unreachable { why: String },
    /// Its host answers ssh and no server runs there.
    Stopped { why: String },
    /// It answers SQL.
    Running(RunningView),
}

/// A running node, reduced to what the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunningView {
    pub(crate) in_recovery: bool,
    pub(crate) timeline: u32,
    /// The end of its WAL: replayed on a standby, written on a primary.
    pub(crate) lsn: Option<Lsn>,
    /// The node it streams from right now, when that is a known backend.
    pub(crate) streaming_from: Option<u32>,
    /// `received_tli` of its WAL receiver.
    pub(crate) received_tli: Option<u32>,
    pub(crate) system_identifier: u64,
    /// `data_checksums` or `wal_log_hints`: what `pg_rewind` requires.
    pub(crate) rewind_possible: bool,
}

/// The current primary, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PrimaryView {
    pub(crate) id: u32,
    pub(crate) timeline: u32,
    /// `pg_current_wal_lsn()`.
    pub(crate) lsn: Option<Lsn>,
    pub(crate) system_identifier: u64,
    /// Its timeline history file, parsed (empty on timeline 1).
    pub(crate) history: Vec<HistoryEntry>,
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone)]
pub(crate) struct FollowInput {
    pub(crate) node: u32,
    pub(crate) mode: Mode,
    /// `%P` when given.
    pub(crate) old_primary: Option<u32>,
    pub(crate) primary: PrimaryView,
    pub(crate) target: TargetView,
    /// pgpool has it attached; `None` when pgpool could not be asked.
    pub(crate) attached: Option<bool>,
    /// `[follow] max_lag`, bytes.
    pub(crate) max_lag: u64,
    /// `[follow] rebuild`.
    pub(crate) rebuild_allowed: bool,
    /// `--discard-wal`: a standby with WAL the primary lacks may be
    /// rewound, discarding that WAL.
    pub(crate) discard_wal: bool,
}

/// What to do, with the reason an operator reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub(crate) enum Plan {
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
    pub(crate) fn stops_node(&self) -> bool {
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
pub(crate) fn decide(i: &FollowInput) -> Plan {
    let p = &i.primary;
    if i.node == p.id {
        return the_primary(i);
    }
    let t = match &i.target {
        TargetView::Unreachable { why } => return unreachable(i, why),
        TargetView::Stopped { why } => return stopped(i, why),
        TargetView::Running(t) => t,
    };
    if t.system_identifier != p.system_identifier {
        return foreign(i, t);
    }
    if !t.in_recovery {
        return old_primary(i, t);
    }
    if t.streaming_from == Some(p.id) && t.received_tli == Some(p.timeline) {
        return streaming(i, t);
    }
    not_streaming(i, t)
}

/// ` at LSN`, when known.
fn at(l: Option<Lsn>) -> String {
    l.map(|l| format!(" at {l}")).unwrap_or_default()
}

fn the_primary(i: &FollowInput) -> Plan {
    let extra = match i.mode {
        Mode::Rejoin => "; --rejoin is for a failed old primary or a standby",
        _ => "",
    };
    Plan::Refuse {
        reason: format!(
            "node {} is the current primary (timeline {}): there is nothing for it to follow{extra}; nothing was changed",
            i.node, i.primary.timeline
        ),
    }
}

fn unreachable(i: &FollowInput, why: &str) -> Plan {
    let n = i.node;
    let next = match i.mode {
        Mode::Follow { .. } => format!("pgha-follow {n}"),
        Mode::Attach => format!("pgha-attach {n}"),
        Mode::Rejoin => format!("pgha-attach --rejoin {n}"),
    };
    Plan::Refuse {
        reason: format!(
            "cannot reach node {n}: {why}; nothing was changed; when it is back, run {next}"
        ),
    }
}

fn stopped(i: &FollowInput, why: &str) -> Plan {
    let (n, pid) = (i.node, i.primary.id);
    match i.mode {
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
    }
}

fn foreign(i: &FollowInput, t: &RunningView) -> Plan {
    let (n, p) = (i.node, &i.primary);
    Plan::Refuse {
        reason: format!(
            "node {n} has database system identifier {} but the primary node {} has {}: it is not a copy of this cluster (a wrong backend address, or a server made by initdb); nothing was changed; check backend_hostname{n} or rebuild it by hand",
            t.system_identifier, p.id, p.system_identifier
        ),
    }
}

/// A node out of recovery next to the current primary.
fn old_primary(i: &FollowInput, t: &RunningView) -> Plan {
    let (n, pid) = (i.node, i.primary.id);
    let what = format!(
        "node {n} is a primary on timeline {}{} next to the current primary node {pid} (timeline {}): an old primary that came back",
        t.timeline,
        at(t.lsn),
        i.primary.timeline
    );
    match i.mode {
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
    }
}

/// A standby that streams from the primary on its timeline.
fn streaming(i: &FollowInput, t: &RunningView) -> Plan {
    let (n, p) = (i.node, &i.primary);
    let lag = match (p.lsn, t.lsn) {
        (Some(pl), Some(tl)) => tl.bytes_behind(pl),
        _ => 0,
    };
    let state = format!(
        "node {n} streams from node {} on timeline {} ({lag} bytes behind)",
        p.id, p.timeline
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
    match i.mode {
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
    }
}

/// A standby that does not stream from the primary: repoint it when its
/// WAL is a prefix of the primary's, else rewind it (if WAL only it has
/// may go).
fn not_streaming(i: &FollowInput, t: &RunningView) -> Plan {
    let (n, p) = (i.node, &i.primary);
    let pid = p.id;
    let state = match t.streaming_from {
        Some(u) => format!("it streams from node {u}"),
        None => "it does not stream".to_string(),
    };
    let lineage = check_lineage(&p.history, p.timeline, p.lsn, t.timeline, t.lsn);
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
pub(crate) fn describe(plan: &Plan) -> String {
    match plan {
        Plan::NothingToDo { reason } => reason.clone(),
        Plan::Attach { reason } => reason.clone(),
        Plan::Repoint { reason } => format!(
            "{reason}; wait until it streams on the primary's timeline (rewind it if it does not), attach it in pgpool"
        ),
        Plan::Rewind { reason, .. } | Plan::Rebuild { reason, .. } => {
            format!("{reason}; wait until it streams, attach it in pgpool")
        }
        Plan::Refuse { reason } => format!("refuse: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lineage::parse_history;

    fn lsn(s: &str) -> Option<Lsn> {
        Some(s.parse().unwrap())
    }

    fn primary() -> PrimaryView {
        PrimaryView {
            id: 1,
            timeline: 2,
            lsn: lsn("0/5000000"),
            system_identifier: 42,
            history: parse_history("1\t0/4018470\tno recovery target specified\n"),
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
}
