//! Timeline lineage: the history files a promotion writes
//! (`0000000N.history`) and whether a node's WAL is a prefix of the
//! primary's, so that it can simply follow it, or has diverged. Pure.

use crate::postgres::{Lsn, NodeState};

/// One line of a timeline history file (`00000002.history`): the
/// timeline that was left and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HistoryEntry {
    /// The parent timeline (the one that ended).
    pub parent_tli: u32,
    /// The WAL position where the history switched away from it.
    pub switch_point: Lsn,
}

/// Parse a timeline history file: `parentTLI <tab> switchpoint <tab>
/// reason` per line; blank and `#` lines are skipped, as the server does.
pub(crate) fn parse_history(text: &str) -> Vec<HistoryEntry> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let mut f = l.split_whitespace();
            let parent_tli = f.next()?.parse().ok()?;
            let switch_point = f.next()?.parse().ok()?;
            Some(HistoryEntry {
                parent_tli,
                switch_point,
            })
        })
        .collect()
}

/// Why the standby in `standby` cannot simply follow the primary in
/// `primary`, whose timeline's history is `history` (as
/// `steps::timeline_history` reads it, empty when unread): `None` for a
/// node not in recovery, or when the history of a timeline past 1 is
/// unknown.
pub(crate) fn diverged(
    history: &[HistoryEntry],
    primary: &NodeState,
    standby: &NodeState,
) -> Option<String> {
    if !standby.in_recovery || (primary.timeline > 1 && history.is_empty()) {
        return None;
    }
    check_lineage(
        history,
        primary.timeline,
        primary.current_lsn,
        standby.timeline,
        standby.best_lsn(),
    )
    .err()
}

/// Whether a node on timeline `node_tli` at `node_lsn` can simply stream
/// from a primary on `primary_tli` whose history is `history`: `Ok` when
/// its WAL is a prefix of the primary's, `Err` with the reason when it has
/// WAL the primary never had (it kept writing after the switch point, as
/// an old primary does, or it is on a timeline the primary does not
/// descend from) and must be rewound.
pub(crate) fn check_lineage(
    history: &[HistoryEntry],
    primary_tli: u32,
    primary_lsn: Option<Lsn>,
    node_tli: u32,
    node_lsn: Option<Lsn>,
) -> std::result::Result<(), String> {
    if node_tli == primary_tli {
        return match (node_lsn, primary_lsn) {
            (Some(n), Some(p)) if n > p => Err(format!(
                "it is at {n} on timeline {node_tli}, ahead of the primary ({p}) on the same timeline"
            )),
            _ => Ok(()),
        };
    }
    if node_tli > primary_tli {
        return Err(format!(
            "it is on timeline {node_tli}, newer than the primary's timeline {primary_tli}"
        ));
    }
    let Some(e) = history.iter().find(|e| e.parent_tli == node_tli) else {
        return Err(format!(
            "its timeline {node_tli} is not in the history of the primary's timeline {primary_tli}"
        ));
    };
    match node_lsn {
        Some(n) if n > e.switch_point => Err(format!(
            "its WAL diverged: it is at {n} on timeline {node_tli}, past {}, where the primary's history left timeline {node_tli}",
            e.switch_point
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    #[test]
    fn history_files_parse() {
        let h = parse_history(
            "1\t0/4018470\tno recovery target specified\n\n# c\n2\t0/5000A0\tbefore 2000-01-01\n",
        );
        assert_eq!(
            h,
            vec![
                HistoryEntry {
                    parent_tli: 1,
                    switch_point: lsn("0/4018470")
                },
                HistoryEntry {
                    parent_tli: 2,
                    switch_point: lsn("0/5000A0")
                },
            ]
        );
        assert!(parse_history("garbage\n").is_empty());
    }

    #[test]
    fn lineage_tells_behind_from_diverged() {
        let h = parse_history("1\t0/4018470\tx\n2\t0/6000000\ty\n");
        // A standby left behind on the old timeline can follow.
        assert!(check_lineage(&h, 3, Some(lsn("0/7000000")), 1, Some(lsn("0/4018470"))).is_ok());
        assert!(check_lineage(&h, 3, Some(lsn("0/7000000")), 1, Some(lsn("0/4000000"))).is_ok());
        // An old primary that wrote past the switch point cannot.
        let e =
            check_lineage(&h, 3, Some(lsn("0/7000000")), 1, Some(lsn("0/40184E8"))).unwrap_err();
        assert!(e.contains("past 0/4018470"), "{e}");
        assert!(check_lineage(&h, 3, Some(lsn("0/7000000")), 2, Some(lsn("0/6000001"))).is_err());
        assert!(check_lineage(&h, 3, Some(lsn("0/7000000")), 2, Some(lsn("0/6000000"))).is_ok());
        // Timelines the primary never had.
        assert!(
            check_lineage(&h, 3, None, 4, None)
                .unwrap_err()
                .contains("newer")
        );
        assert!(
            check_lineage(&h[..1], 2, None, 5, None)
                .unwrap_err()
                .contains("newer")
        );
        let h2 = parse_history("1\t0/3000000\tx\n");
        assert!(
            check_lineage(&h2, 3, None, 2, None)
                .unwrap_err()
                .contains("not in the history")
        );
        // Same timeline: only ahead of the primary is diverged.
        assert!(check_lineage(&h, 3, Some(lsn("0/7000000")), 3, Some(lsn("0/7000000"))).is_ok());
        assert!(check_lineage(&h, 3, Some(lsn("0/7000000")), 3, Some(lsn("0/7000001"))).is_err());
        assert!(check_lineage(&[], 1, Some(lsn("0/7000000")), 1, None).is_ok());
    }
}
