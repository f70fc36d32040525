//! Decisions computed from observed state, with no I/O, so every branch is
//! unit-tested: what `pgha-failover` must do given what each node says.
//!
//! The rules (README, "Safety rules"):
//! - a node is dead only when shown to be: any answer from a server proves
//!   it lives, and a node that answers but cannot be asked what it is might
//!   be a writable primary;
//! - promote only when the failed node is known to have been the primary
//!   (`%P`, or seen as one: it answered as a primary, the standbys stream
//!   from it or are configured to follow it, or every other live node is a
//!   standby) and no other node might be a writable primary; a failed
//!   primary that may be alive is fenced first, or nothing is promoted;
//! - never promote a standby that has less WAL than another reachable one
//!   (unless `[failover] maximum_lag` allows it); with synchronous
//!   replication, only when the standbys seen provably include one holding
//!   every acknowledged commit;
//! - "already promoted" only for a primary on the newest timeline; an old
//!   primary that came back on an older one is refused and named.

pub mod standby;
pub mod sync;

use serde::Serialize;

use crate::config::{CandidatePolicy, FencePolicy, SyncAfterPolicy, SyncUnprovenPolicy};
use crate::postgres::Lsn;
pub use sync::SyncAfter;
use sync::{Member, SyncRule};

/// What pgha saw of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// It answered SQL and is out of recovery.
    Primary { timeline: u32, lsn: Option<Lsn> },
    /// It answered SQL and is in recovery.
    Standby {
        timeline: u32,
        /// The highest received or replayed LSN.
        lsn: Option<Lsn>,
        /// The node it is streaming from right now, when a known backend.
        upstream: Option<u32>,
        /// The node its `primary_conninfo` names, when a known backend.
        follows: Option<u32>,
    },
    /// Something answered at its address but pgha cannot ask it what it
    /// is (login refused, too many clients, starting up, ...): alive, role
    /// unknown.
    Answers(String),
    /// Nothing answered (connection refused, or no reply in time).
    Silent(String),
}

/// One node, reduced to what the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: u32,
    /// `backend_application_nameN`: the name synchronous replication knows
    /// it by.
    pub name: Option<String>,
    pub seen: Seen,
    /// Its `synchronous_standby_names`, when it answered.
    pub sync: Option<String>,
}

impl NodeView {
    fn position(&self) -> Option<(u32, Option<Lsn>)> {
        match &self.seen {
            Seen::Primary { timeline, lsn } | Seen::Standby { timeline, lsn, .. } => {
                Some((*timeline, *lsn))
            }
            _ => None,
        }
    }
    fn is_standby(&self) -> bool {
        matches!(self.seen, Seen::Standby { .. })
    }
    fn lsn_text(&self) -> String {
        match self.position() {
            Some((_, Some(l))) => l.to_string(),
            _ => "?".into(),
        }
    }
}

/// Whether the failed node may still be running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "evidence")]
pub enum Liveness {
    /// No probe reached it.
    Dead,
    /// Something still reaches it; the evidence says what.
    Alive(String),
}

/// What pgpool told `pgha-failover`, and the policies.
#[derive(Debug, Clone)]
pub struct FailoverInput {
    /// `%d`.
    pub failed: u32,
    /// `%m`, pgpool's new main node: the lowest live id, a tie-breaker
    /// only. `None` when unknown (negative).
    pub new_main: Option<u32>,
    /// `%P`, when given and known (not negative).
    pub old_primary: Option<u32>,
    pub candidate_policy: CandidatePolicy,
    pub fence_policy: FencePolicy,
    /// Probes of the failed node beyond its own SQL answer.
    pub failed_liveness: Liveness,
    /// `[failover] maximum_lag`, bytes.
    pub max_lag: u64,
    pub sync_unproven: SyncUnprovenPolicy,
    pub sync_after: SyncAfterPolicy,
    /// The node `pgha-switchover` asked pgpool to make the primary, read
    /// from the marker it leaves in the state directory; `None` without
    /// one (or a stale one).
    pub switchover_to: Option<u32>,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Decision {
    /// A standby failed; the primary is `primary` (if one was seen).
    StandbyFailed {
        node: u32,
        primary: Option<u32>,
        why: String,
    },
    /// The primary on the newest timeline is not the failed node (an
    /// earlier or concurrent run promoted it): only make the others follow.
    AlreadyPromoted {
        primary: u32,
        timeline: u32,
        sync: SyncAfter,
    },
    /// Promote `candidate`; first stop `fence` if set.
    Promote {
        candidate: u32,
        reason: String,
        fence: Option<u32>,
        /// Where the candidate's WAL ends: the new timeline's switch point.
        switch_point: Option<Lsn>,
        /// Standbys with WAL past the switch point: never repointed.
        ahead: Vec<u32>,
        /// What may be lost, when a policy let pgha promote without proof.
        risk: Option<String>,
        sync: SyncAfter,
    },
    /// A planned switchover (`pcp_promote_node -s`, or `pgha-switchover`):
    /// the primary `old` answers pgha as a primary and pgpool detached it
    /// to make `candidate` the primary. Stop `old` cleanly, prove that
    /// `candidate` received its shutdown checkpoint, promote, repoint the
    /// others, and start `old` again as a standby.
    Switchover {
        old: u32,
        candidate: u32,
        reason: String,
        sync: SyncAfter,
    },
    /// Acting would be unsafe; change nothing.
    Refuse { reason: String },
}

/// What the failed node was, and why pgha thinks so.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Primary(String),
    Standby(String),
    Unknown(String),
}

/// Decide what a failover must do.
pub fn decide(input: &FailoverInput, nodes: &[NodeView]) -> Decision {
    let failed = input.failed;
    let others: Vec<&NodeView> = nodes.iter().filter(|n| n.id != failed).collect();
    let primaries: Vec<&NodeView> = others
        .iter()
        .copied()
        .filter(|n| matches!(n.seen, Seen::Primary { .. }))
        .collect();
    if primaries.len() > 1 {
        let ids: Vec<String> = primaries.iter().map(|n| n.id.to_string()).collect();
        return Decision::Refuse {
            reason: format!(
                "nodes {} are all writable primaries: split brain already; nothing was changed; stop all but one by hand, then run pgha-attach --rejoin for the others",
                ids.join(", ")
            ),
        };
    }
    let role = failed_role(input, nodes);
    if let Some(p) = primaries.first() {
        return with_primary(input, nodes, p, role);
    }
    if let Some(d) = switchover(input, nodes) {
        return d;
    }
    match role {
        Role::Standby(why) => Decision::StandbyFailed {
            node: failed,
            primary: None,
            why,
        },
        Role::Unknown(why) => Decision::Refuse {
            reason: format!(
                "cannot tell whether node {failed} was the primary: {why}; nothing was changed; pass %P to pgha-failover (--old-primary %P in failover_command) or make every node answer pgha, then run it again"
            ),
        },
        Role::Primary(why) => promote(input, nodes, &why),
    }
}

/// A planned switchover, when the evidence says so: the failed node
/// answered pgha itself as a primary (pgpool detached a live primary:
/// `pcp_promote_node -s`, or a detach by hand), pgpool's `%m` is a
/// standby on its timeline, every other node answered, and either
/// `pgha-switchover` left its marker naming `%m` or `failover.fence`
/// allows stopping a live primary. A primary that is alive but does not
/// answer pgha is never one: that stays the fence-or-refuse path.
fn switchover(input: &FailoverInput, nodes: &[NodeView]) -> Option<Decision> {
    let failed = input.failed;
    let old = nodes.iter().find(|n| n.id == failed)?;
    let Seen::Primary { timeline, .. } = old.seen else {
        return None;
    };
    let c = input.new_main.filter(|c| *c != failed)?;
    let cand = nodes.iter().find(|n| n.id == c)?;
    let Seen::Standby { timeline: ctl, .. } = cand.seen else {
        return None;
    };
    if ctl != timeline || !unclear_nodes(nodes, failed).is_empty() {
        return None;
    }
    if nodes
        .iter()
        .any(|n| n.id != failed && matches!(n.seen, Seen::Silent(_)))
    {
        // A standby that does not answer may be one pgpool's %m skipped
        // for a reason: let the ordinary rules decide.
        return None;
    }
    let asked = input.switchover_to == Some(c);
    if !asked && input.fence_policy == FencePolicy::Abort {
        return None;
    }
    let why = if asked {
        format!("pgha-switchover asked pgpool to make node {c} the primary")
    } else {
        format!(
            "node {failed} still answers as the primary and pgpool detached it with node {c} as the new main (pcp_promote_node -s)"
        )
    };
    let live: Vec<&str> = nodes
        .iter()
        .filter(|n| n.id != c)
        .filter_map(|n| n.name.as_deref())
        .collect();
    let sync = match cand.sync.as_deref().map(SyncRule::parse) {
        Some(Ok(Some(rule))) => sync::after_promotion(
            &rule,
            cand.name.as_deref(),
            &live,
            input.sync_after == SyncAfterPolicy::Relax,
        ),
        _ => SyncAfter::Satisfied,
    };
    Some(Decision::Switchover {
        old: failed,
        candidate: c,
        reason: format!("planned switchover: {why}"),
        sync,
    })
}

/// The newest timeline any node was seen on.
fn newest_timeline(nodes: &[NodeView]) -> u32 {
    nodes
        .iter()
        .filter_map(|n| n.position().map(|(tl, _)| tl))
        .max()
        .unwrap_or(0)
}

fn failed_role(input: &FailoverInput, nodes: &[NodeView]) -> Role {
    let failed = input.failed;
    match nodes.iter().find(|n| n.id == failed).map(|n| &n.seen) {
        Some(Seen::Primary { .. }) => return Role::Primary("it still answers as a primary".into()),
        Some(Seen::Standby { .. }) => return Role::Standby("it answers as a standby".into()),
        _ => {}
    }
    if let Some(p) = input.old_primary {
        return if p == failed {
            Role::Primary(format!("pgpool names it the old primary (%P = {p})"))
        } else {
            Role::Standby(format!("pgpool names node {p} the old primary (%P)"))
        };
    }
    let standbys = || {
        nodes.iter().filter_map(|n| match &n.seen {
            Seen::Standby {
                upstream, follows, ..
            } => Some((n.id, *upstream, *follows)),
            _ => None,
        })
    };
    let list = |v: Vec<String>| v.join(", ");
    // Streaming right now is the strongest evidence, then configuration.
    for (what, pick) in [
        ("streams from", 1usize),
        ("is configured to follow (primary_conninfo)", 2usize),
    ] {
        let of = |(_, up, fo): (u32, Option<u32>, Option<u32>)| if pick == 1 { up } else { fo };
        let to_failed: Vec<String> = standbys()
            .filter(|s| of(*s) == Some(failed))
            .map(|s| format!("node {}", s.0))
            .collect();
        let to_other: Vec<String> = standbys()
            .filter_map(|s| {
                of(s)
                    .filter(|u| *u != failed)
                    .map(|u| format!("node {} {what} node {u}", s.0))
            })
            .collect();
        match (to_failed.is_empty(), to_other.is_empty()) {
            (false, true) => {
                return Role::Primary(format!("{} {what} it", list(to_failed)));
            }
            (true, false) => return Role::Standby(list(to_other)),
            (false, false) => {
                return Role::Unknown(format!(
                    "the standbys disagree: {} {what} it, {}",
                    list(to_failed),
                    list(to_other)
                ));
            }
            (true, true) => {}
        }
    }
    // By elimination: a cluster has a primary, and every other node that
    // answered is a standby.
    let unclear: Vec<String> = nodes
        .iter()
        .filter(|n| n.id != failed)
        .filter_map(|n| match &n.seen {
            Seen::Answers(why) => {
                Some(format!("node {} answers but cannot be asked ({why})", n.id))
            }
            Seen::Silent(_) => Some(format!("node {} does not answer", n.id)),
            _ => None,
        })
        .collect();
    if unclear.is_empty() && standbys().next().is_some() {
        return Role::Primary("every other node is a standby".into());
    }
    Role::Unknown(if unclear.is_empty() {
        "no standby answers".into()
    } else {
        unclear.join("; ")
    })
}

fn with_primary(input: &FailoverInput, nodes: &[NodeView], p: &NodeView, role: Role) -> Decision {
    let failed = input.failed;
    let Some((ptl, _)) = p.position() else {
        unreachable!("a primary has a position")
    };
    let newest = newest_timeline(nodes);
    if ptl < newest {
        let on_newest: Vec<String> = nodes
            .iter()
            .filter(|n| n.position().is_some_and(|(tl, _)| tl == newest))
            .map(|n| format!("node {}", n.id))
            .collect();
        return Decision::Refuse {
            reason: format!(
                "node {} is a primary on timeline {ptl}, but {} on timeline {newest}: it is an old primary that came back, not the current one; nothing was changed (nothing is made to follow it, nothing is promoted next to it); stop it, or make it a standby with pgha-attach --rejoin {} once a primary runs on timeline {newest}, then run pgha-failover again",
                p.id,
                on_newest.join(", "),
                p.id
            ),
        };
    }
    if let Some(f) = nodes.iter().find(|n| n.id == failed)
        && matches!(f.seen, Seen::Primary { .. })
    {
        return Decision::Refuse {
            reason: format!(
                "node {failed} still answers as a primary next to the primary node {}: split brain already; nothing was changed; stop one of them by hand",
                p.id
            ),
        };
    }
    let answers: Vec<String> = unclear_nodes(nodes, failed);
    match role {
        Role::Standby(why) => Decision::StandbyFailed {
            node: failed,
            primary: Some(p.id),
            why,
        },
        Role::Primary(_) | Role::Unknown(_) if !answers.is_empty() => Decision::Refuse {
            reason: format!(
                "{}: it might be a newer primary; nothing was changed; fix pgha's login there (pg_hba.conf, password, max_connections), then run pgha-failover again",
                answers.join("; ")
            ),
        },
        Role::Unknown(why)
            if nodes.iter().all(|n| match n.seen {
                Seen::Standby {
                    timeline, upstream, ..
                } => timeline == ptl && upstream == Some(p.id),
                _ => true,
            }) =>
        {
            // Every standby follows the primary already: whatever node
            // `failed` was, nothing is left to do.
            Decision::StandbyFailed {
                node: failed,
                primary: Some(p.id),
                why,
            }
        }
        Role::Primary(_) | Role::Unknown(_) => Decision::AlreadyPromoted {
            primary: p.id,
            timeline: ptl,
            sync: sync_after(input, nodes, p, &[]),
        },
    }
}

fn unclear_nodes(nodes: &[NodeView], failed: u32) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| n.id != failed)
        .filter_map(|n| match &n.seen {
            Seen::Answers(why) => Some(format!(
                "node {} answers but pgha cannot ask it what it is ({why})",
                n.id
            )),
            _ => None,
        })
        .collect()
}

fn promote(input: &FailoverInput, nodes: &[NodeView], why_primary: &str) -> Decision {
    promotion(input, nodes, why_primary).unwrap_or_else(|reason| Decision::Refuse { reason })
}

/// The promotion, or (as the error) the reason for refusing it.
fn promotion(
    input: &FailoverInput,
    nodes: &[NodeView],
    why_primary: &str,
) -> Result<Decision, String> {
    let failed = input.failed;
    let answers = unclear_nodes(nodes, failed);
    if !answers.is_empty() {
        return Err(format!(
            "the primary (node {failed}) failed, but {}: it might be a writable primary, and promoting next to it could make two; nothing was changed; fix pgha's login there (pg_hba.conf, password, max_connections), then run pgha-failover again",
            answers.join("; ")
        ));
    }
    let failed_view = nodes.iter().find(|n| n.id == failed);
    let fence = fence_for(input, failed_view)?;
    let candidates: Vec<&NodeView> = nodes
        .iter()
        .filter(|n| n.id != failed && n.is_standby())
        .collect();
    let Some(best) = candidates.iter().copied().max_by_key(|n| n.position()) else {
        return Err(format!(
            "the primary (node {failed}) failed and no standby answers: nothing can be promoted; nothing was changed"
        ));
    };
    let rules = sync_rules(nodes)?;
    let (proofs, risk) = sync_proofs(input, nodes, &rules, best)?;
    // The allowed lag: none under synchronous replication (only the most
    // advanced standby is sure to hold every acknowledged commit).
    let max_lag = if rules.is_empty() { input.max_lag } else { 0 };
    let chosen = choose(input, &candidates, best, max_lag);
    let mut reason = candidate_reason(input, &candidates, chosen, best, max_lag);
    reason = format!("{reason}; node {failed} was the primary: {why_primary}");
    if !proofs.is_empty() {
        reason = format!("{reason}; {}", proofs.join("; "));
    }
    let chosen_pos = chosen.position();
    let ahead: Vec<u32> = candidates
        .iter()
        .filter(|n| n.id != chosen.id && n.position() > chosen_pos)
        .map(|n| n.id)
        .collect();
    Ok(Decision::Promote {
        candidate: chosen.id,
        reason,
        fence,
        switch_point: chosen_pos.and_then(|(_, l)| l),
        sync: sync_after(input, nodes, chosen, &ahead),
        ahead,
        risk,
    })
}

/// The node to stop before promoting: the failed primary when it may be
/// alive, unless `failover.fence = "abort"` refuses instead.
fn fence_for(input: &FailoverInput, failed_view: Option<&NodeView>) -> Result<Option<u32>, String> {
    let failed = input.failed;
    let alive = match (failed_view.map(|n| &n.seen), &input.failed_liveness) {
        (Some(Seen::Primary { .. }), _) => Some("it still answers SQL as a primary".to_string()),
        (Some(Seen::Answers(why)), _) => Some(format!("it answers ({why})")),
        (_, Liveness::Alive(why)) => Some(why.clone()),
        _ => None,
    };
    match (alive, input.fence_policy) {
        (None, _) => Ok(None),
        (Some(why), FencePolicy::Abort) => Err(format!(
            "the old primary (node {failed}) may still be alive ({why}) and failover.fence is \"abort\": not promoting; nothing was changed; stop it by hand, then run pgha-failover again"
        )),
        (Some(_), FencePolicy::Stop) => Ok(Some(failed)),
    }
}

/// Every distinct `synchronous_standby_names` seen: each must be proven.
fn sync_rules(nodes: &[NodeView]) -> Result<Vec<SyncRule>, String> {
    let mut rules: Vec<SyncRule> = Vec::new();
    for n in nodes {
        let Some(raw) = n.sync.as_deref() else {
            continue;
        };
        match SyncRule::parse(raw) {
            Ok(Some(r)) if !rules.iter().any(|x| x.raw == r.raw) => rules.push(r),
            Ok(_) => {}
            Err(e) => return Err(format!("node {}: {e}; nothing was changed", n.id)),
        }
    }
    Ok(rules)
}

/// For each rule, the proof that a standby seen holds every acknowledged
/// commit; without one, refuse or (`sync_unproven = "promote"`) carry the
/// risk into the decision.
fn sync_proofs(
    input: &FailoverInput,
    nodes: &[NodeView],
    rules: &[SyncRule],
    best: &NodeView,
) -> Result<(Vec<String>, Option<String>), String> {
    let failed = input.failed;
    let members: Vec<Member> = nodes
        .iter()
        .filter(|n| n.id != failed)
        .map(|n| Member {
            id: n.id,
            name: n.name.as_deref(),
            seen_standby: n.is_standby(),
        })
        .collect();
    let failed_name = nodes
        .iter()
        .find(|n| n.id == failed)
        .and_then(|n| n.name.as_deref());
    let (mut proofs, mut unproven) = (Vec::new(), Vec::new());
    for r in rules {
        match sync::holds_every_ack(r, failed_name, &members) {
            (true, text) => proofs.push(text),
            (false, text) => unproven.push(text),
        }
    }
    if unproven.is_empty() {
        return Ok((proofs, None));
    }
    match input.sync_unproven {
        SyncUnprovenPolicy::Refuse => Err(format!(
            "{}: pgha cannot prove that any standby it sees holds every acknowledged commit, so promoting could lose some; nothing was changed; bring the missing standbys back (or make them answer pgha) and run pgha-failover again, or set sync_unproven = \"promote\" in [failover] to promote the most advanced standby seen ({} at {}) and accept that loss",
            unproven.join("; "),
            best.id,
            best.lsn_text()
        )),
        SyncUnprovenPolicy::Promote => Ok((
            proofs,
            Some(format!(
                "{}; [failover] sync_unproven = \"promote\": promoting the most advanced standby seen; acknowledged commits that only the unseen standbys hold are lost",
                unproven.join("; ")
            )),
        )),
    }
}

/// The candidate: among the standbys on the best timeline within
/// `max_lag` of the best, pgpool's choice (`candidate = "pgpool"`) or the
/// most advanced.
fn choose<'a>(
    input: &FailoverInput,
    candidates: &[&'a NodeView],
    best: &NodeView,
    max_lag: u64,
) -> &'a NodeView {
    let (best_tl, best_lsn) = best.position().expect("a standby has a position");
    let behind = |n: &NodeView| -> u64 {
        match (n.position(), best_lsn) {
            (Some((_, Some(l))), Some(b)) => l.bytes_behind(b),
            (Some((_, None)), Some(b)) => b.0,
            _ => 0,
        }
    };
    let eligible: Vec<&NodeView> = candidates
        .iter()
        .copied()
        .filter(|n| n.position().is_some_and(|(tl, _)| tl == best_tl) && behind(n) <= max_lag)
        .collect();
    match input.candidate_policy {
        // pgpool's choice when it is eligible; else the most advanced.
        CandidatePolicy::Pgpool => eligible
            .iter()
            .copied()
            .find(|n| input.new_main == Some(n.id))
            .unwrap_or_else(|| pick_most_advanced(&eligible, input.new_main)),
        CandidatePolicy::MostAdvanced => pick_most_advanced(&eligible, input.new_main),
    }
}

fn pick_most_advanced<'a>(eligible: &[&'a NodeView], new_main: Option<u32>) -> &'a NodeView {
    eligible
        .iter()
        .copied()
        .max_by(|a, b| {
            a.position()
                .cmp(&b.position())
                // On a tie prefer pgpool's choice, then the lowest id.
                .then((Some(a.id) == new_main).cmp(&(Some(b.id) == new_main)))
                .then(b.id.cmp(&a.id))
        })
        .expect("the most advanced standby is always eligible")
}

fn candidate_reason(
    input: &FailoverInput,
    candidates: &[&NodeView],
    chosen: &NodeView,
    best: &NodeView,
    max_lag: u64,
) -> String {
    let others: Vec<String> = candidates
        .iter()
        .filter(|c| c.id != chosen.id)
        .map(|c| format!("node {} at {}", c.id, c.lsn_text()))
        .collect();
    let vs = if others.is_empty() {
        String::new()
    } else {
        format!("; {}", others.join(", "))
    };
    let at = chosen.lsn_text();
    let main = input.new_main;
    if Some(chosen.id) == main {
        return if chosen.position() == best.position() {
            format!(
                "pgpool's new main node (%m = {}), with the most WAL ({at}{vs})",
                chosen.id
            )
        } else {
            format!(
                "pgpool's new main node (%m = {}) at {at}, within [failover] maximum_lag ({max_lag} bytes) of the most advanced ({} at {})",
                chosen.id,
                best.id,
                best.lsn_text()
            )
        };
    }
    let why_not_main = match main.and_then(|m| candidates.iter().find(|c| c.id == m)) {
        Some(m) if input.candidate_policy == CandidatePolicy::Pgpool => format!(
            "; pgpool's new main node {} has less WAL ({}) and [failover] maximum_lag is {max_lag} bytes",
            m.id,
            m.lsn_text()
        ),
        None if input.candidate_policy == CandidatePolicy::Pgpool => match main {
            Some(m) => format!("; pgpool's new main node {m} is not a standby pgha sees"),
            None => "; pgpool named no new main node".into(),
        },
        _ => String::new(),
    };
    format!(
        "most advanced standby (timeline {}, {at}{vs}){why_not_main}",
        chosen.position().map(|p| p.0).unwrap_or(0)
    )
}

/// Whether writes will go through once `primary` leads and the other
/// standbys (but those in `skip`) follow it.
fn sync_after(
    input: &FailoverInput,
    nodes: &[NodeView],
    primary: &NodeView,
    skip: &[u32],
) -> SyncAfter {
    let Some(Ok(Some(rule))) = primary.sync.as_deref().map(SyncRule::parse) else {
        return SyncAfter::Satisfied;
    };
    let live: Vec<&str> = nodes
        .iter()
        .filter(|n| {
            n.id != primary.id && n.id != input.failed && n.is_standby() && !skip.contains(&n.id)
        })
        .filter_map(|n| n.name.as_deref())
        .collect();
    sync::after_promotion(
        &rule,
        primary.name.as_deref(),
        &live,
        input.sync_after == SyncAfterPolicy::Relax,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(n: u64) -> Option<Lsn> {
        Some(Lsn(n))
    }
    fn primary(id: u32, tl: u32, at: u64) -> NodeView {
        NodeView {
            id,
            name: Some(format!("pg{id}")),
            seen: Seen::Primary {
                timeline: tl,
                lsn: lsn(at),
            },
            sync: Some(String::new()),
        }
    }
    fn standby(id: u32, tl: u32, at: u64, upstream: Option<u32>) -> NodeView {
        NodeView {
            id,
            name: Some(format!("pg{id}")),
            seen: Seen::Standby {
                timeline: tl,
                lsn: lsn(at),
                upstream,
                follows: upstream,
            },
            sync: Some(String::new()),
        }
    }
    /// A standby no longer streaming, still configured to follow `follows`.
    fn orphan(id: u32, tl: u32, at: u64, follows: Option<u32>) -> NodeView {
        let mut n = standby(id, tl, at, None);
        if let Seen::Standby { follows: f, .. } = &mut n.seen {
            *f = follows;
        }
        n
    }
    /// A standby that answers and streams (the old primary's sync peer).
    fn sync_peer(id: u32) -> NodeView {
        standby(id, 1, 100, Some(0))
    }
    fn down(id: u32) -> NodeView {
        NodeView {
            id,
            name: Some(format!("pg{id}")),
            seen: Seen::Silent("connection refused".into()),
            sync: None,
        }
    }
    fn refuses(id: u32) -> NodeView {
        NodeView {
            id,
            name: Some(format!("pg{id}")),
            seen: Seen::Answers("FATAL: pg_hba.conf rejects connection".into()),
            sync: None,
        }
    }
    fn with_sync(mut v: NodeView, s: &str) -> NodeView {
        v.sync = Some(s.into());
        v
    }
    fn input(failed: u32, new_main: Option<u32>) -> FailoverInput {
        FailoverInput {
            failed,
            new_main,
            old_primary: None,
            candidate_policy: CandidatePolicy::Pgpool,
            fence_policy: FencePolicy::Stop,
            failed_liveness: Liveness::Dead,
            max_lag: 0,
            sync_unproven: SyncUnprovenPolicy::Refuse,
            sync_after: SyncAfterPolicy::Relax,
            switchover_to: None,
        }
    }
    fn refusal(d: Decision) -> String {
        match d {
            Decision::Refuse { reason } => reason,
            d => panic!("expected a refusal, got {d:?}"),
        }
    }
    fn promoted(d: &Decision) -> u32 {
        match d {
            Decision::Promote { candidate, .. } => *candidate,
            d => panic!("expected a promotion, got {d:?}"),
        }
    }

    #[test]
    fn dead_primary_promotes_pgpools_choice_among_equals() {
        let nodes = [
            down(0),
            orphan(1, 1, 100, Some(0)),
            orphan(2, 1, 100, Some(0)),
        ];
        let d = decide(&input(0, Some(1)), &nodes);
        assert_eq!(promoted(&d), 1);
        match d {
            Decision::Promote {
                reason,
                fence: None,
                ahead,
                ..
            } => {
                assert!(
                    reason.contains("pgpool's new main node (%m = 1), with the most WAL"),
                    "{reason}"
                );
                assert!(reason.contains("configured to follow"), "{reason}");
                assert!(ahead.is_empty());
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_lagging_pgpool_choice_is_passed_over() {
        // pgpool names node 1 (lowest id), but node 2 has more WAL.
        let nodes = [
            down(0),
            orphan(1, 1, 100, Some(0)),
            orphan(2, 1, 200, Some(0)),
        ];
        let d = decide(&input(0, Some(1)), &nodes);
        assert_eq!(promoted(&d), 2);
        let Decision::Promote { reason, .. } = d else {
            unreachable!()
        };
        assert!(
            reason.contains("pgpool's new main node 1 has less WAL (0/64)"),
            "{reason}"
        );
        // Within an allowed lag, pgpool's choice stands; node 2 is then
        // ahead of the switch point and must not be repointed.
        let mut i = input(0, Some(1));
        i.max_lag = 100;
        let d = decide(&i, &nodes);
        assert_eq!(promoted(&d), 1);
        let Decision::Promote {
            ahead,
            switch_point,
            ..
        } = d
        else {
            unreachable!()
        };
        assert_eq!(ahead, [2]);
        assert_eq!(switch_point, lsn(100));
    }

    #[test]
    fn most_advanced_picks_more_wal_and_ties_go_to_pgpool() {
        let mut i = input(0, Some(2));
        i.candidate_policy = CandidatePolicy::MostAdvanced;
        i.max_lag = 1000;
        let nodes = [
            down(0),
            orphan(1, 1, 300, Some(0)),
            orphan(2, 1, 200, Some(0)),
        ];
        assert_eq!(promoted(&decide(&i, &nodes)), 1);
        let nodes = [
            down(0),
            orphan(1, 1, 100, Some(0)),
            orphan(2, 1, 100, Some(0)),
        ];
        assert_eq!(promoted(&decide(&i, &nodes)), 2);
    }

    #[test]
    fn higher_timeline_wins_over_lsn() {
        let nodes = [
            down(0),
            orphan(1, 1, 500, Some(0)),
            orphan(2, 2, 100, Some(0)),
        ];
        assert_eq!(promoted(&decide(&input(0, Some(1)), &nodes)), 2);
    }

    #[test]
    fn unreachable_pgpool_choice_falls_back_to_most_advanced() {
        let nodes = [down(0), down(1), orphan(2, 1, 200, Some(0))];
        let d = decide(&input(0, Some(1)), &nodes);
        assert_eq!(promoted(&d), 2);
        let Decision::Promote { reason, .. } = d else {
            unreachable!()
        };
        assert!(reason.contains("not a standby pgha sees"), "{reason}");
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
        assert!(refusal(decide(&i, &nodes)).contains("node 2 streams"));
    }

    #[test]
    fn a_failed_primary_that_answers_but_refuses_pgha_is_fenced() {
        let mut i = input(0, Some(1));
        i.old_primary = Some(0);
        let nodes = [
            refuses(0),
            standby(1, 1, 100, None),
            standby(2, 1, 100, None),
        ];
        assert!(matches!(
            decide(&i, &nodes),
            Decision::Promote { fence: Some(0), .. }
        ));
    }

    /// pgpool detached a primary that answers pgha (`pcp_promote_node -s`,
    /// or a detach by hand): a planned switchover to `%m`, with a clean
    /// stop and proof instead of a fence.
    #[test]
    fn a_detached_primary_that_answers_is_switched_over_to_new_main() {
        let nodes = [
            primary(0, 1, 100),
            standby(1, 1, 90, Some(0)),
            standby(2, 1, 100, Some(0)),
        ];
        match decide(&input(0, Some(1)), &nodes) {
            Decision::Switchover {
                old: 0,
                candidate: 1,
                reason,
                sync: SyncAfter::Satisfied,
            } => assert!(reason.contains("pcp_promote_node -s"), "{reason}"),
            d => panic!("{d:?}"),
        }
        // pgha-switchover's marker names the target: said so.
        let mut i = input(0, Some(2));
        i.switchover_to = Some(2);
        match decide(&i, &nodes) {
            Decision::Switchover {
                candidate: 2,
                reason,
                ..
            } => assert!(reason.contains("pgha-switchover asked"), "{reason}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn fence_abort_refuses_an_unasked_switchover_but_not_an_asked_one() {
        let nodes = [
            primary(0, 1, 100),
            standby(1, 1, 100, Some(0)),
            standby(2, 1, 100, Some(0)),
        ];
        let mut i = input(0, Some(1));
        i.fence_policy = FencePolicy::Abort;
        assert!(refusal(decide(&i, &nodes)).contains("may still be alive"));
        i.switchover_to = Some(1);
        assert!(matches!(
            decide(&i, &nodes),
            Decision::Switchover { candidate: 1, .. }
        ));
    }

    #[test]
    fn no_switchover_without_a_clear_picture() {
        // %m is not a standby on the primary's timeline, or another node
        // does not answer: the ordinary rules (fence, then promote).
        let fenced = |d: Decision| matches!(d, Decision::Promote { fence: Some(0), .. });
        let nodes = [
            primary(0, 2, 100),
            standby(1, 1, 100, None),
            standby(2, 2, 100, Some(0)),
        ];
        assert!(fenced(decide(&input(0, Some(1)), &nodes)), "older timeline");
        let nodes = [primary(0, 1, 100), standby(1, 1, 100, Some(0)), down(2)];
        assert!(fenced(decide(&input(0, Some(1)), &nodes)), "node 2 silent");
        // A primary that does not answer pgha is never switched over.
        let mut i = input(0, Some(1));
        i.failed_liveness = Liveness::Alive("accepts TCP".into());
        let nodes = [
            down(0),
            standby(1, 1, 100, Some(0)),
            standby(2, 1, 100, Some(0)),
        ];
        assert!(fenced(decide(&i, &nodes)));
        let nodes = [
            refuses(0),
            standby(1, 1, 100, Some(0)),
            standby(2, 1, 100, Some(0)),
        ];
        assert!(fenced(decide(&i, &nodes)));
    }

    #[test]
    fn a_switchover_counts_the_old_primary_among_the_sync_standbys() {
        let mut c = standby(1, 1, 100, Some(0));
        c.sync = Some("ANY 1 (pg0, pg2)".into());
        let nodes = [primary(0, 1, 100), c, sync_peer(2)];
        match decide(&input(0, Some(1)), &nodes) {
            Decision::Switchover { sync, .. } => assert_eq!(sync, SyncAfter::Satisfied),
            d => panic!("{d:?}"),
        }
    }

    /// Scenario 1 of the safety issue: the primary refuses pgha's login, a
    /// standby dies, pgpool calls `pgha-failover 2 0 0`.
    #[test]
    fn a_dead_standby_next_to_a_primary_that_refuses_pgha_promotes_nothing() {
        let nodes = [refuses(0), standby(1, 1, 100, Some(0)), down(2)];
        match decide(&input(2, Some(0)), &nodes) {
            Decision::StandbyFailed {
                node: 2,
                primary: None,
                why,
            } => {
                assert!(why.contains("node 1 streams from node 0"), "{why}")
            }
            d => panic!("{d:?}"),
        }
        // The standby's receiver already gave up: its configuration still
        // names node 0.
        let nodes = [refuses(0), orphan(1, 1, 100, Some(0)), down(2)];
        assert!(matches!(
            decide(&input(2, Some(0)), &nodes),
            Decision::StandbyFailed { .. }
        ));
        // Nothing tells: refuse rather than guess.
        let nodes = [refuses(0), orphan(1, 1, 100, None), down(2)];
        let why = refusal(decide(&input(2, Some(0)), &nodes));
        assert!(
            why.contains("cannot tell whether node 2 was the primary"),
            "{why}"
        );
        assert!(why.contains("node 0 answers but cannot be asked"), "{why}");
    }

    #[test]
    fn a_node_that_answers_but_cannot_be_asked_blocks_promotion() {
        let mut i = input(0, Some(1));
        i.old_primary = Some(0);
        let nodes = [down(0), standby(1, 1, 100, None), refuses(2)];
        let why = refusal(decide(&i, &nodes));
        assert!(
            why.contains("node 2 answers but pgha cannot ask")
                && why.contains("might be a writable primary"),
            "{why}"
        );
    }

    #[test]
    fn new_main_and_old_main_never_say_who_the_primary_was() {
        // %m = 0 names the live primary (the lowest live id) when a
        // standby fails; without %P the decision rests on what the nodes say.
        let nodes = [primary(0, 1, 100), standby(1, 1, 100, Some(0)), down(2)];
        assert!(matches!(
            decide(&input(2, Some(0)), &nodes),
            Decision::StandbyFailed {
                node: 2,
                primary: Some(0),
                ..
            }
        ));
        // Unknown %m (negative) changes nothing.
        assert!(matches!(
            decide(&input(2, None), &nodes),
            Decision::StandbyFailed {
                node: 2,
                primary: Some(0),
                ..
            }
        ));
    }

    #[test]
    fn standby_failure_promotes_nothing() {
        // The failed standby still answers in recovery.
        let nodes = [
            primary(0, 1, 100),
            standby(1, 1, 100, Some(0)),
            standby(2, 1, 90, Some(0)),
        ];
        assert!(matches!(
            decide(&input(2, Some(0)), &nodes),
            Decision::StandbyFailed {
                node: 2,
                primary: Some(0),
                ..
            }
        ));
        // %P says the primary is node 0, which does not answer: nothing to do.
        let nodes = [down(0), orphan(1, 1, 100, Some(0)), down(2)];
        let mut i = input(2, Some(1));
        i.old_primary = Some(0);
        assert!(matches!(
            decide(&i, &nodes),
            Decision::StandbyFailed {
                node: 2,
                primary: None,
                ..
            }
        ));
    }

    #[test]
    fn by_elimination_the_failed_node_was_the_primary() {
        // No receiver streams, no conninfo names a backend: every other
        // node is a standby, so the failed one was the primary.
        let nodes = [down(0), orphan(1, 1, 100, None), orphan(2, 1, 100, None)];
        assert_eq!(promoted(&decide(&input(0, Some(1)), &nodes)), 1);
        // A silent other node could have been the primary: refuse.
        let nodes = [down(0), orphan(1, 1, 100, None), down(2)];
        assert!(refusal(decide(&input(0, Some(1)), &nodes)).contains("node 2 does not answer"));
    }

    #[test]
    fn standbys_that_disagree_are_refused() {
        let nodes = [
            down(0),
            orphan(1, 1, 100, Some(0)),
            orphan(2, 1, 100, Some(3)),
            down(3),
        ];
        assert!(refusal(decide(&input(0, Some(1)), &nodes)).contains("disagree"));
    }

    #[test]
    fn second_run_sees_the_promotion() {
        let mut i = input(0, Some(1));
        i.old_primary = Some(0);
        let nodes = [down(0), primary(1, 2, 300), orphan(2, 1, 200, Some(0))];
        assert!(matches!(
            decide(&i, &nodes),
            Decision::AlreadyPromoted {
                primary: 1,
                timeline: 2,
                ..
            }
        ));
        // Without %P: node 2 still follows the failed node, so it was the
        // primary and node 1 took over.
        assert!(matches!(
            decide(&input(0, Some(1)), &nodes),
            Decision::AlreadyPromoted {
                primary: 1,
                timeline: 2,
                ..
            }
        ));
        // Everyone follows node 1 already.
        let nodes = [down(0), primary(1, 2, 300), standby(2, 2, 300, Some(1))];
        assert!(matches!(
            decide(&i, &nodes),
            Decision::AlreadyPromoted { primary: 1, .. }
        ));
        assert!(matches!(
            decide(&input(0, Some(1)), &nodes),
            Decision::StandbyFailed {
                primary: Some(1),
                ..
            }
        ));
    }

    /// Scenario 4: an old primary came back on timeline 1 (pgpool keeps it
    /// detached); then the real primary, on timeline 2, fails.
    #[test]
    fn a_stale_old_primary_is_never_taken_for_the_promoted_one() {
        let nodes = [primary(0, 1, 500), down(1), orphan(2, 2, 400, Some(1))];
        let why = refusal(decide(&input(1, Some(2)), &nodes));
        assert!(
            why.contains("node 0 is a primary on timeline 1")
                && why.contains("old primary that came back"),
            "{why}"
        );
        let mut i = input(1, Some(2));
        i.old_primary = Some(1);
        assert!(refusal(decide(&i, &nodes)).contains("pgha-attach --rejoin 0"));
    }

    #[test]
    fn two_primaries_are_refused() {
        let nodes = [down(0), primary(1, 2, 300), primary(2, 2, 300)];
        assert!(refusal(decide(&input(0, Some(1)), &nodes)).contains("split brain"));
        let nodes = [
            primary(0, 2, 300),
            primary(1, 2, 300),
            standby(2, 2, 300, Some(1)),
        ];
        assert!(refusal(decide(&input(0, Some(1)), &nodes)).contains("still answers as a primary"));
    }

    #[test]
    fn no_standby_left() {
        let mut i = input(0, Some(1));
        i.old_primary = Some(0);
        assert!(refusal(decide(&i, &[down(0), down(1)])).contains("no standby answers"));
    }

    /// Scenario 2: ANY 1 (pg1, pg2); pg1 (pgpool's %m) did not receive the
    /// last writes, pg2 did.
    #[test]
    fn synchronous_replication_promotes_the_standby_holding_every_ack() {
        let s = "ANY 1 (pg1, pg2)";
        let nodes = [
            down(0),
            with_sync(orphan(1, 1, 100, Some(0)), s),
            with_sync(orphan(2, 1, 200, Some(0)), s),
        ];
        let mut i = input(0, Some(1));
        i.max_lag = 1 << 20; // ignored under synchronous replication
        let d = decide(&i, &nodes);
        assert_eq!(promoted(&d), 2);
        let Decision::Promote {
            reason,
            risk,
            ahead,
            ..
        } = d
        else {
            unreachable!()
        };
        assert!(reason.contains("pgha sees 2 of them"), "{reason}");
        assert_eq!((risk, ahead), (None, vec![]));
    }

    #[test]
    fn synchronous_replication_without_proof_refuses_or_promotes_by_policy() {
        let s = "ANY 1 (pg1, pg2)";
        let nodes = [down(0), with_sync(orphan(1, 1, 100, Some(0)), s), down(2)];
        let mut i = input(0, Some(1));
        i.old_primary = Some(0);
        let why = refusal(decide(&i, &nodes));
        assert!(
            why.contains("not seen: pg2") && why.contains("sync_unproven"),
            "{why}"
        );
        i.sync_unproven = SyncUnprovenPolicy::Promote;
        match decide(&i, &nodes) {
            Decision::Promote {
                candidate: 1,
                risk: Some(r),
                ..
            } => assert!(r.contains("are lost"), "{r}"),
            d => panic!("{d:?}"),
        }
        // ANY 2 of three with one unseen is still proven.
        let s = "ANY 2 (pg1, pg2, pg3)";
        let nodes = [
            down(0),
            with_sync(orphan(1, 1, 100, Some(0)), s),
            with_sync(orphan(2, 1, 100, Some(0)), s),
            down(3),
        ];
        let mut i = input(0, Some(1));
        i.old_primary = Some(0);
        assert_eq!(promoted(&decide(&i, &nodes)), 1);
    }

    #[test]
    fn a_setting_that_does_not_parse_is_refused() {
        let nodes = [
            down(0),
            with_sync(orphan(1, 1, 100, Some(0)), "ANY 1 pg1"),
            orphan(2, 1, 100, Some(0)),
        ];
        assert!(refusal(decide(&input(0, Some(1)), &nodes)).contains("synchronous_standby_names"));
    }

    /// Scenario 3: one standby, synchronous replication on every node.
    #[test]
    fn writes_would_block_after_promotion_so_the_setting_is_relaxed_or_reported() {
        let s = "ANY 1 (pg0, pg1)";
        let nodes = [down(0), with_sync(orphan(1, 1, 100, Some(0)), s)];
        match decide(&input(0, Some(1)), &nodes) {
            Decision::Promote {
                candidate: 1,
                sync: SyncAfter::Relax { from, to, .. },
                ..
            } => {
                assert_eq!((from.as_str(), to.as_str()), (s, ""));
            }
            d => panic!("{d:?}"),
        }
        let mut i = input(0, Some(1));
        i.sync_after = SyncAfterPolicy::Keep;
        assert!(matches!(
            decide(&i, &nodes),
            Decision::Promote {
                sync: SyncAfter::Blocks { .. },
                ..
            }
        ));
        // Two standbys: the other one will confirm commits.
        let nodes = [
            down(0),
            with_sync(orphan(1, 1, 100, Some(0)), "ANY 1 (pg0, pg1, pg2)"),
            with_sync(orphan(2, 1, 100, Some(0)), "ANY 1 (pg0, pg1, pg2)"),
        ];
        assert!(matches!(
            decide(&input(0, Some(1)), &nodes),
            Decision::Promote {
                sync: SyncAfter::Satisfied,
                ..
            }
        ));
        // A rerun checks the same for the primary it finds.
        let mut i = input(0, Some(1));
        i.old_primary = Some(0);
        let nodes = [down(0), with_sync(primary(1, 2, 300), "ANY 1 (pg0, pg1)")];
        assert!(matches!(
            decide(&i, &nodes),
            Decision::AlreadyPromoted {
                sync: SyncAfter::Relax { .. },
                ..
            }
        ));
    }
}
