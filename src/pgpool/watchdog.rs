//! pgpool-II's watchdog as PCP reports it (`pcp_watchdog_info`, request
//! `W`): the members, their states, the leader and the quorum. pgha adds no
//! consensus of its own: it asks its local pgpool whether this host is the
//! leader with quorum before it changes anything.

use serde::{Deserialize, Serialize};

/// pgpool's `QuorumStatus`: 1 quorum exists, 0 "on the edge" (half the
/// votes, which count only with `enable_consensus_with_half_votes`), -1
/// lost, -2 no leader known. pgpool itself acts on >= 0 (`watchdog.c`).
pub const QUORUM_ON_THE_EDGE: i32 = 0;

/// `WD_STATES` index of a leader (`wd_state_names`: 4 = "LEADER"; 4.1 and
/// older said "MASTER").
const STATE_LEADER: i32 = 4;

/// The watchdog cluster seen from one pgpool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WatchdogInfo {
    pub quorum_status: i32,
    /// Members needed for quorum (`NodesRequireForQuorum`; -1 if absent).
    pub nodes_for_quorum: i32,
    /// Members alive beside the leader, as the leader counts them.
    pub alive: i32,
    /// `LeaderNodeName` ("Not Set" without a leader).
    pub leader_name: String,
    pub leader_host: String,
    /// The asked pgpool itself (pgpool lists it first), then the others.
    pub local: Member,
    pub others: Vec<Member>,
}

/// One watchdog member.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Member {
    /// `pgpool_node_id`.
    #[serde(rename(deserialize = "ID"))]
    pub id: i32,
    #[serde(rename(deserialize = "NodeName"))]
    pub name: String,
    #[serde(rename(deserialize = "HostName"))]
    pub host: String,
    #[serde(rename(deserialize = "PgpoolPort"), default)]
    pub pgpool_port: i32,
    #[serde(rename(deserialize = "State"))]
    pub state: i32,
    /// "LEADER", "STANDBY", "LOST", "SHUTDOWN", ...
    #[serde(rename(deserialize = "StateName"))]
    pub state_name: String,
}

#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "QuorumStatus")]
    quorum_status: i32,
    #[serde(rename = "NodesRequireForQuorum", default = "unknown")]
    nodes_for_quorum: i32,
    #[serde(rename = "AliveNodeCount", default)]
    alive: i32,
    #[serde(rename = "LeaderNodeName")]
    leader_name: String,
    #[serde(rename = "LeaderHostName", default)]
    leader_host: String,
    #[serde(rename = "WatchdogNodes")]
    nodes: Vec<Member>,
}

fn unknown() -> i32 {
    -1
}

impl WatchdogInfo {
    /// The JSON after `CommandComplete` in pgpool's `w` reply to a `W`
    /// request for every member (index -1).
    pub fn parse(json: &str) -> Result<WatchdogInfo, String> {
        let w: Wire = serde_json::from_str(json).map_err(|e| format!("watchdog info: {e}"))?;
        let mut nodes = w.nodes.into_iter();
        let local = nodes
            .next()
            .ok_or_else(|| "watchdog info lists no member".to_string())?;
        Ok(WatchdogInfo {
            quorum_status: w.quorum_status,
            nodes_for_quorum: w.nodes_for_quorum,
            alive: w.alive,
            leader_name: w.leader_name,
            leader_host: w.leader_host,
            local,
            others: nodes.collect(),
        })
    }

    /// Whether pgpool itself would act: a leader is known and quorum is
    /// not lost.
    pub fn has_quorum(&self) -> bool {
        self.quorum_status >= QUORUM_ON_THE_EDGE
    }

    /// Whether the asked pgpool is the leader.
    pub fn local_is_leader(&self) -> bool {
        self.local.state == STATE_LEADER
    }

    /// Every member, the asked one first.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        std::iter::once(&self.local).chain(&self.others)
    }

    /// Why this pgpool host must not act, or `None` when it is the leader
    /// with quorum.
    pub fn why_not_leader(&self) -> Option<String> {
        if !self.local_is_leader() {
            let leader = match self.leader_name.as_str() {
                "" | "Not Set" => "no leader is elected yet".to_string(),
                name => format!("the leader is {name}"),
            };
            return Some(format!(
                "this pgpool ({}) is {} in pgpool's watchdog, not its leader ({leader})",
                self.local.name, self.local.state_name
            ));
        }
        if !self.has_quorum() {
            return Some(format!(
                "this pgpool ({}) leads pgpool's watchdog without quorum ({} of its {} members alive, {} needed): it may be cut off from the others",
                self.local.name,
                self.alive + 1,
                self.others.len() + 1,
                self.nodes_for_quorum.max(1),
            ));
        }
        None
    }

    /// One line for logs: the leader, the quorum, every member's state.
    pub fn describe(&self) -> String {
        let members: Vec<String> = self
            .members()
            .map(|m| format!("{} {}", m.name, m.state_name))
            .collect();
        format!(
            "watchdog: leader {}, quorum {}, members: {}",
            self.leader_name,
            match self.quorum_status {
                1 => "exists",
                0 => "on the edge",
                -1 => "lost",
                _ => "unknown (no leader)",
            },
            members.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply as pgpool 4.7's `get_node_list_json` writes it, trimmed.
    fn reply(local_state: (i32, &str), leader: &str, quorum: i32) -> String {
        format!(
            r#"{{"RemoteNodeCount":2,"MemberRemoteNodeCount":2,"NodesRequireForQuorum":2,
            "QuorumStatus":{quorum},"AliveNodeCount":1,"Escalated":0,
            "LeaderNodeName":"{leader}","LeaderHostName":"127.0.101.21","NodeCount":3,
            "WatchdogNodes":[
             {{"ID":0,"State":{},"Membership":0,"MembershipString":"MEMBER","NodeName":"127.0.101.20:9999 Linux app","HostName":"127.0.101.20","StateName":"{}","DelegateIP":"","WdPort":9010,"PgpoolPort":9999,"Priority":1}},
             {{"ID":1,"State":4,"NodeName":"127.0.101.21:9999 Linux app1","HostName":"127.0.101.21","StateName":"LEADER","PgpoolPort":9999}},
             {{"ID":2,"State":8,"NodeName":"127.0.101.22:9999 Linux app2","HostName":"127.0.101.22","StateName":"LOST","PgpoolPort":9999}}]}}"#,
            local_state.0, local_state.1
        )
    }

    #[test]
    fn a_standby_member_names_the_leader() {
        let w =
            WatchdogInfo::parse(&reply((7, "STANDBY"), "127.0.101.21:9999 Linux app1", 1)).unwrap();
        assert_eq!(w.local.id, 0);
        assert_eq!(w.others.len(), 2);
        assert!(!w.local_is_leader());
        let why = w.why_not_leader().unwrap();
        assert!(why.contains("is STANDBY"), "{why}");
        assert!(
            why.contains("the leader is 127.0.101.21:9999 Linux app1"),
            "{why}"
        );
        assert!(w.describe().contains("app2 LOST"), "{}", w.describe());
    }

    #[test]
    fn the_leader_with_quorum_may_act_and_without_may_not() {
        let leader = "127.0.101.20:9999 Linux app";
        let w = WatchdogInfo::parse(&reply((4, "LEADER"), leader, 1)).unwrap();
        assert_eq!(w.why_not_leader(), None);
        let w = WatchdogInfo::parse(&reply((4, "LEADER"), leader, 0)).unwrap();
        assert_eq!(w.why_not_leader(), None, "pgpool acts on the edge too");
        let alone = reply((4, "LEADER"), leader, -1)
            .replace("\"AliveNodeCount\":1", "\"AliveNodeCount\":0");
        let w = WatchdogInfo::parse(&alone).unwrap();
        let why = w.why_not_leader().unwrap();
        assert!(why.contains("without quorum"), "{why}");
        // NodesRequireForQuorum counts the members needed, this one too.
        assert!(
            why.contains("(1 of its 3 members alive, 2 needed)"),
            "{why}"
        );
    }

    #[test]
    fn no_leader_yet_is_said_so() {
        let w = WatchdogInfo::parse(&reply((6, "STANDING FOR LEADER"), "Not Set", -2)).unwrap();
        let why = w.why_not_leader().unwrap();
        assert!(why.contains("no leader is elected yet"), "{why}");
    }

    #[test]
    fn broken_replies_are_errors() {
        assert!(WatchdogInfo::parse("not json").is_err());
        let empty = r#"{"QuorumStatus":1,"LeaderNodeName":"x","WatchdogNodes":[]}"#;
        assert!(
            WatchdogInfo::parse(empty)
                .unwrap_err()
                .contains("no member")
        );
    }
}
