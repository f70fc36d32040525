//! Decisions computed from observed state, with no I/O, so every branch is
//! unit-tested: what `pgha-failover` must do given what each node says.

use serde::Serialize;

use crate::config::{CandidatePolicy, FencePolicy};
use crate::postgres::Lsn;

/// What one node looked like, reduced to what the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: u32,
    /// It answered a SQL connection.
    pub reachable: bool,
    pub in_recovery: bool,
    pub timeline: u32,
    /// Current LSN of a primary; the highest received or replayed of a standby.
    pub lsn: Option<Lsn>,
    /// The node it is streaming from right now, when that is a known backend.
    pub upstream: Option<u32>,
}

/// Whether the failed node may still be running as a primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "evidence")]
pub enum Liveness {
    /// Neither pgha nor any standby can reach it.
    Dead,
    /// Something still reaches it; the evidence says what.
    Alive(String),
}

/// What pgpool told `pgha-failover`, and the policies.
#[derive(Debug, Clone)]
pub struct FailoverInput {
    /// `%d`.
    pub failed: u32,
    /// `%m`; `None` when pgpool passed -1 (no node alive).
    pub new_main: Option<u32>,
    /// `%P` when given.
    pub old_primary: Option<u32>,
    /// `%M`, pgpool's old main node (-1 given as `None`).
    pub old_main: Option<u32>,
    pub candidate_policy: CandidatePolicy,
    pub fence_policy: FencePolicy,
    pub failed_liveness: Liveness,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Decision {
    /// pgpool found no live node: there is nothing to promote.
    NoNodeAlive,
    /// A standby failed; the primary is `primary` (if one is reachable).
    StandbyFailed { node: u32, primary: Option<u32> },
    /// A primary other than the failed node already runs (an earlier or
    /// concurrent run promoted it): only make sure the others follow it.
    AlreadyPromoted { primary: u32, timeline: u32 },
    /// Promote `candidate`; first stop `fence` if set.
    Promote {
        candidate: u32,
        reason: String,
        fence: Option<u32>,
    },
    /// Acting would be unsafe; change nothing.
    Refuse { reason: String },
}

/// Decide what a failover must do.
pub fn decide(input: &FailoverInput, nodes: &[NodeView]) -> Decision {
    let Some(new_main) = input.new_main else {
        return Decision::NoNodeAlive;
    };
    let failed = input.failed;
    let view = |id: u32| nodes.iter().find(|n| n.id == id);
    let failed_view = view(failed);

    let primaries: Vec<&NodeView> = nodes
        .iter()
        .filter(|n| n.reachable && !n.in_recovery && n.id != failed)
        .collect();
    if primaries.len() > 1 {
        let ids: Vec<String> = primaries.iter().map(|n| n.id.to_string()).collect();
        return Decision::Refuse {
            reason: format!(
                "nodes {} are all writable primaries: split brain already; stop all but one by hand, then run pgha-attach",
                ids.join(", ")
            ),
        };
    }

    let failed_is_standby = failed_view.is_some_and(|f| f.reachable && f.in_recovery)
        || input.old_primary.is_some_and(|p| p != failed);

    if let Some(p) = primaries.first() {
        if failed_is_standby {
            return Decision::StandbyFailed {
                node: failed,
                primary: Some(p.id),
            };
        }
        // Without %P, pgpool's old main node (%M) is the best hint: in
        // streaming replication mode it is the primary.
        if input.old_primary.is_none() && input.old_main.is_some_and(|m| m != failed) {
            return Decision::StandbyFailed {
                node: failed,
                primary: Some(p.id),
            };
        }
        return Decision::AlreadyPromoted {
            primary: p.id,
            timeline: p.timeline,
        };
    }

    if failed_is_standby {
        // A standby failed and no primary answers: not ours to fix here.
        return Decision::StandbyFailed {
            node: failed,
            primary: None,
        };
    }

    // The failed node was (or must be taken as) the primary.
    let fence = match (&input.failed_liveness, input.fence_policy) {
        (Liveness::Dead, _) => None,
        (Liveness::Alive(why), FencePolicy::Abort) => {
            return Decision::Refuse {
                reason: format!(
                    "the old primary (node {failed}) may still be alive ({why}) and failover.fence is \"abort\": not promoting; stop it by hand, then run pgha-failover again"
                ),
            };
        }
        (Liveness::Alive(_), FencePolicy::Stop) => Some(failed),
    };

    let candidates: Vec<&NodeView> = nodes
        .iter()
        .filter(|n| n.reachable && n.in_recovery && n.id != failed)
        .collect();
    if candidates.is_empty() {
        return Decision::Refuse {
            reason: format!(
                "the primary (node {failed}) failed and no standby answers: nothing can be promoted"
            ),
        };
    }
    let most_advanced = || {
        candidates
            .iter()
            .copied()
            .max_by(|a, b| {
                (a.timeline, a.lsn)
                    .cmp(&(b.timeline, b.lsn))
                    // On a tie prefer pgpool's choice, then the lowest id.
                    .then((a.id == new_main).cmp(&(b.id == new_main)))
                    .then(b.id.cmp(&a.id))
            })
            .expect("candidates is not empty")
    };
    let fmt_lsn = |n: &NodeView| n.lsn.map(|l| l.to_string()).unwrap_or_else(|| "?".into());
    let (candidate, reason) = match input.candidate_policy {
        CandidatePolicy::Pgpool => match candidates.iter().find(|n| n.id == new_main) {
            Some(n) => (n.id, format!("pgpool's new main node (%m = {new_main})")),
            None => {
                let n = most_advanced();
                (
                    n.id,
                    format!(
                        "pgpool's new main node {new_main} is not a reachable standby; node {} has the most WAL ({})",
                        n.id,
                        fmt_lsn(n)
                    ),
                )
            }
        },
        CandidatePolicy::MostAdvanced => {
            let n = most_advanced();
            let others: Vec<String> = candidates
                .iter()
                .filter(|c| c.id != n.id)
                .map(|c| format!("node {} at {}", c.id, fmt_lsn(c)))
                .collect();
            let vs = if others.is_empty() {
                String::new()
            } else {
                format!(" vs {}", others.join(", "))
            };
            (
                n.id,
                format!(
                    "most advanced standby (timeline {}, {}{vs})",
                    n.timeline,
                    fmt_lsn(n)
                ),
            )
        }
    };
    Decision::Promote {
        candidate,
        reason,
        fence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary(id: u32, tl: u32, lsn: u64) -> NodeView {
        NodeView {
            id,
            reachable: true,
            in_recovery: false,
            timeline: tl,
            lsn: Some(Lsn(lsn)),
            upstream: None,
        }
    }
    fn standby(id: u32, tl: u32, lsn: u64, upstream: Option<u32>) -> NodeView {
        NodeView {
            id,
            reachable: true,
            in_recovery: true,
            timeline: tl,
            lsn: Some(Lsn(lsn)),
            upstream,
        }
    }
    fn down(id: u32) -> NodeView {
        NodeView {
            id,
            reachable: false,
            in_recovery: false,
            timeline: 0,
            lsn: None,
            upstream: None,
        }
    }
    fn input(failed: u32, new_main: Option<u32>) -> FailoverInput {
        FailoverInput {
            failed,
            new_main,
            old_primary: None,
            old_main: Some(0),
            candidate_policy: CandidatePolicy::Pgpool,
            fence_policy: FencePolicy::Stop,
            failed_liveness: Liveness::Dead,
        }
    }

    #[test]
    fn no_node_alive() {
        assert_eq!(decide(&input(0, None), &[down(0)]), Decision::NoNodeAlive);
    }

    #[test]
    fn dead_primary_promotes_pgpools_choice() {
        let nodes = [down(0), standby(1, 1, 100, None), standby(2, 1, 200, None)];
        match decide(&input(0, Some(1)), &nodes) {
            Decision::Promote {
                candidate: 1,
                fence: None,
                reason,
            } => assert!(reason.contains("pgpool"), "{reason}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn most_advanced_picks_more_wal() {
        let mut i = input(0, Some(1));
        i.candidate_policy = CandidatePolicy::MostAdvanced;
        let nodes = [down(0), standby(1, 1, 100, None), standby(2, 1, 200, None)];
        match decide(&i, &nodes) {
            Decision::Promote {
                candidate: 2,
                reason,
                ..
            } => assert!(reason.contains("node 1 at 0/64"), "{reason}"),
            d => panic!("{d:?}"),
        }
        // A tie goes to pgpool's choice.
        let nodes = [down(0), standby(1, 1, 100, None), standby(2, 1, 100, None)];
        assert!(matches!(
            decide(&i, &nodes),
            Decision::Promote { candidate: 1, .. }
        ));
    }

    #[test]
    fn unreachable_pgpool_choice_falls_back_to_most_advanced() {
        let nodes = [down(0), down(1), standby(2, 1, 200, None)];
        match decide(&input(0, Some(1)), &nodes) {
            Decision::Promote {
                candidate: 2,
                reason,
                ..
            } => assert!(reason.contains("not a reachable standby"), "{reason}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn alive_old_primary_is_fenced_or_refused() {
        let mut i = input(0, Some(1));
        i.failed_liveness = Liveness::Alive("node 2 streams from it".into());
        let nodes = [
            down(0),
            standby(1, 1, 100, Some(0)),
            standby(2, 1, 100, Some(0)),
        ];
        assert!(matches!(
            decide(&i, &nodes),
            Decision::Promote {
                candidate: 1,
                fence: Some(0),
                ..
            }
        ));
        i.fence_policy = FencePolicy::Abort;
        match decide(&i, &nodes) {
            Decision::Refuse { reason } => assert!(reason.contains("node 2 streams"), "{reason}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn standby_failure_promotes_nothing() {
        // The failed standby still answers in recovery.
        let nodes = [
            primary(0, 1, 100),
            standby(1, 1, 100, Some(0)),
            standby(2, 1, 90, Some(0)),
        ];
        assert_eq!(
            decide(&input(2, Some(0)), &nodes),
            Decision::StandbyFailed {
                node: 2,
                primary: Some(0)
            }
        );
        // The failed standby is dead; %P says the primary is node 0.
        let nodes = [primary(0, 1, 100), standby(1, 1, 100, Some(0)), down(2)];
        let mut i = input(2, Some(0));
        i.old_primary = Some(0);
        assert_eq!(
            decide(&i, &nodes),
            Decision::StandbyFailed {
                node: 2,
                primary: Some(0)
            }
        );
        // No %P, failed node dead, pgpool's old main was the primary.
        assert_eq!(
            decide(&input(2, Some(0)), &nodes),
            Decision::StandbyFailed {
                node: 2,
                primary: Some(0)
            }
        );
        // No primary answers at all.
        let nodes = [down(0), standby(1, 1, 100, None), standby(2, 1, 100, None)];
        let mut i = input(2, Some(1));
        i.old_primary = Some(0);
        assert_eq!(
            decide(&i, &nodes),
            Decision::StandbyFailed {
                node: 2,
                primary: None
            }
        );
    }

    #[test]
    fn second_run_sees_the_promotion() {
        let nodes = [down(0), primary(1, 2, 300), standby(2, 1, 200, None)];
        assert_eq!(
            decide(&input(0, Some(1)), &nodes),
            Decision::AlreadyPromoted {
                primary: 1,
                timeline: 2
            }
        );
        // With %P the answer is the same even when everyone follows already.
        let nodes = [down(0), primary(1, 2, 300), standby(2, 2, 300, Some(1))];
        let mut i = input(0, Some(1));
        i.old_primary = Some(0);
        assert_eq!(
            decide(&i, &nodes),
            Decision::AlreadyPromoted {
                primary: 1,
                timeline: 2
            }
        );
    }

    #[test]
    fn old_main_tells_a_rerun_from_a_standby_failure() {
        // Everyone already follows node 1; node 0 was the old main (%M):
        // a rerun after the promotion, not a standby failure.
        let nodes = [down(0), primary(1, 2, 300), standby(2, 2, 300, Some(1))];
        assert_eq!(
            decide(&input(0, Some(1)), &nodes),
            Decision::AlreadyPromoted {
                primary: 1,
                timeline: 2
            }
        );
        let mut i = input(2, Some(1));
        i.old_main = Some(1);
        let nodes = [down(0), primary(1, 2, 300), down(2)];
        assert_eq!(
            decide(&i, &nodes),
            Decision::StandbyFailed {
                node: 2,
                primary: Some(1)
            }
        );
    }

    #[test]
    fn two_primaries_are_refused() {
        let nodes = [down(0), primary(1, 2, 300), primary(2, 2, 300)];
        assert!(matches!(
            decide(&input(0, Some(1)), &nodes),
            Decision::Refuse { .. }
        ));
    }

    #[test]
    fn no_standby_left() {
        let nodes = [down(0), down(1)];
        match decide(&input(0, Some(1)), &nodes) {
            Decision::Refuse { reason } => assert!(reason.contains("no standby"), "{reason}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn higher_timeline_wins_over_lsn() {
        let mut i = input(0, Some(1));
        i.candidate_policy = CandidatePolicy::MostAdvanced;
        let nodes = [down(0), standby(1, 1, 500, None), standby(2, 2, 100, None)];
        assert!(matches!(
            decide(&i, &nodes),
            Decision::Promote { candidate: 2, .. }
        ));
    }
}
