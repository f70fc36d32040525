//! `pgha-check --status`: the cluster at a glance. One row per backend
//! (pgpool's view from PCP, PostgreSQL's own, lag, upstream, ssh) with what
//! is wrong and the command that fixes it, then the last runs from the
//! journal, and with pgpool's watchdog its members. Read-only: every node is asked at once, each probe bounded by
//! the configured timeouts (`postgres.connect_timeout` and
//! `query_timeout`, `pcp.timeout`, `ssh.connect_timeout`).
//!
//! What is wrong, and the fix, is decided by [`advise`], a pure function.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::cluster::{self, Node, Observed, Topology};
use crate::error::{Error, Result};
use crate::lineage::HistoryEntry;
use crate::pgpool::ops;
use crate::pgpool::pcp::{NodeInfo, PcpClient};
use crate::pgpool::watchdog::WatchdogInfo;
use crate::postgres::{Lsn, NodeState};
use crate::report::Summary;
use crate::state::{self, Run};
use crate::steps;

/// How many runs of the journal the status shows.
const RUNS_SHOWN: usize = 8;

/// The whole status, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Status {
    /// When it was taken (UTC).
    taken_at: String,
    /// How long it took.
    took_ms: u64,
    /// The current primary: on the newest timeline, alone there.
    primary: Option<u32>,
    /// Why pgpool's view is missing, when PCP did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pcp_error: Option<String>,
    pub(crate) nodes: Vec<Row>,
    /// Number of nodes with a problem.
    problems: usize,
    /// The last runs of pgha, newest last.
    runs: Vec<Run>,
    /// pgpool's watchdog (members, leader, quorum) when it is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) watchdog: Option<WatchdogInfo>,
    /// Why the watchdog's view is missing, when it is on and PCP failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    watchdog_error: Option<String>,
}

/// One backend.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) id: u32,
    /// `host:port` pgpool and pgha connect to.
    pub(crate) address: String,
    /// pgpool's status (`up`, `waiting`, `down`, `quarantine`).
    pub(crate) pgpool_status: Option<String>,
    /// pgpool's role (`primary`, `standby`).
    pgpool_role: Option<String>,
    /// What PostgreSQL says.
    pub(crate) role: Role,
    pub(crate) timeline: Option<u32>,
    current_lsn: Option<Lsn>,
    receive_lsn: Option<Lsn>,
    replay_lsn: Option<Lsn>,
    /// Bytes of WAL the standby has not received from the primary.
    pub(crate) lag_bytes: Option<u64>,
    /// `pg_stat_replication.replay_lag` on the primary, in seconds.
    pub(crate) lag_seconds: Option<f64>,
    /// The node it streams from.
    upstream: Option<u32>,
    /// `pg_stat_replication.sync_state` on the primary.
    sync_state: Option<String>,
    /// Whether pgha reaches it over ssh (`true` on it).
    ssh: Option<bool>,
    /// Why PostgreSQL did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// What is wrong, `None` when nothing is.
    pub(crate) problem: Option<String>,
    /// The command (or action) that fixes it.
    fix: Option<String>,
}

/// What PostgreSQL says a node is, as `--json` and the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    Primary,
    Standby,
    /// No answer.
    Down,
    /// Answers, but pgha cannot log in.
    Unknown,
}

impl Role {
    /// Every role, in the order the metrics list them.
    pub(crate) const ALL: [Role; 4] = [Role::Primary, Role::Standby, Role::Down, Role::Unknown];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Down => "down",
            Role::Unknown => "unknown",
        }
    }
}

/// PostgreSQL's view of a node, reduced to what [`advise`] needs.
#[derive(Debug, Clone, PartialEq)]
enum Pg {
    Primary {
        timeline: u32,
    },
    Standby {
        timeline: u32,
        upstream: Option<u32>,
        lag: Option<u64>,
    },
    /// Answers "the database system is starting up" (or shutting down):
    /// alive, on its way, nothing to fix yet.
    StartingUp,
    /// Answers, but pgha cannot use it.
    Answers,
    /// No answer.
    Silent,
}

impl Pg {
    fn role(&self) -> Role {
        match self {
            Pg::Primary { .. } => Role::Primary,
            Pg::Standby { .. } => Role::Standby,
            Pg::StartingUp | Pg::Answers => Role::Unknown,
            Pg::Silent => Role::Down,
        }
    }
}

/// One node's facts for [`advise`].
#[derive(Debug, Clone, PartialEq)]
struct Facts {
    id: u32,
    pg: Pg,
    /// Attached in pgpool; `None` when PCP did not answer.
    attached: Option<bool>,
    /// Reached over ssh; `None` when not probed.
    ssh: Option<bool>,
    /// A standby with WAL the primary never had: why (see
    /// [`crate::lineage::check_lineage`]).
    diverged: Option<String>,
}

/// The primaries seen.
#[derive(Debug, Clone, PartialEq)]
enum Primary {
    None,
    /// `(id, timeline)` of the one primary on the newest timeline.
    One(u32, u32),
    /// Several primaries on the newest timeline.
    Split(Vec<u32>, u32),
}

/// The current primary among `facts`: the one on the newest timeline.
fn primary_of(facts: &[Facts]) -> Primary {
    let prim: Vec<(u32, u32)> = facts
        .iter()
        .filter_map(|f| match f.pg {
            Pg::Primary { timeline } => Some((f.id, timeline)),
            _ => None,
        })
        .collect();
    let Some(newest) = prim.iter().map(|p| p.1).max() else {
        return Primary::None;
    };
    let top: Vec<u32> = prim.iter().filter(|p| p.1 == newest).map(|p| p.0).collect();
    if top.len() == 1 {
        Primary::One(top[0], newest)
    } else {
        Primary::Split(top, newest)
    }
}

/// What is wrong with a node and the fix: `None` when nothing is.
fn advise(f: &Facts, primary: &Primary, max_lag: u64) -> Option<(String, String)> {
    let n = f.id;
    let w = |p: String, fix: String| Some((p, fix));
    match (&f.pg, primary) {
        (Pg::Silent, Primary::One(p, _)) if *p != n => w(
            "down: no answer (never start it by hand: an old primary would come back writable)"
                .into(),
            format!(
                "once its host is up: pgha-attach --rejoin {n} (starts it as a standby of node {p})"
            ),
        ),
        (Pg::Silent, _) => w("down: no answer".into(), "start it".into()),
        (Pg::StartingUp, _) => w(
            "starting up: it accepts no connection until recovery reaches a consistent state".into(),
            "wait; if it stays so for minutes, read its server log (it may be replaying a lot of WAL or waiting for a WAL file)".into(),
        ),
        (Pg::Answers, _) => w(
            "answers, but pgha cannot log in or ask it".into(),
            "pgha-check names the login or setting to fix".into(),
        ),
        (Pg::Primary { timeline }, Primary::Split(ids, _)) => w(
            format!(
                "split brain: nodes {} are writable primaries on timeline {timeline}",
                join(ids)
            ),
            format!("stop all but one, then pgha-attach --rejoin {n} for each other"),
        ),
        (Pg::Primary { timeline }, Primary::One(p, ptl)) if *p != n => w(
            format!(
                "an old primary that came back (timeline {timeline}; node {p} is the primary on timeline {ptl})"
            ),
            format!("pgha-attach --rejoin {n}"),
        ),
        (Pg::Primary { .. }, _) if f.attached == Some(false) => w(
            "the primary is detached in pgpool: no writes go through pgpool".into(),
            format!("pcp_attach_node -n {n}"),
        ),
        (Pg::Standby { .. }, Primary::None) => w(
            "a standby with no primary to follow".into(),
            "see pgpool's log: pgha-failover promotes one when pgpool detaches the primary".into(),
        ),
        (Pg::Standby { .. }, Primary::Split(ids, _)) => w(
            format!("cannot follow one primary: nodes {} all are", join(ids)),
            "resolve the split brain first".into(),
        ),
        (Pg::Standby { .. }, Primary::One(p, _)) if f.diverged.is_some() => w(
            format!(
                "cannot follow node {p}: {}; that WAL exists on no other node and may hold acknowledged commits",
                f.diverged.as_deref().unwrap_or_default()
            ),
            format!(
                "pgha-follow {n} --discard-wal (rewinds it; to keep that WAL, make node {n} the primary instead)"
            ),
        ),
        (
            Pg::Standby {
                timeline, upstream, ..
            },
            Primary::One(p, ptl),
        ) if *upstream != Some(*p) || timeline < ptl => {
            let what = match upstream {
                Some(u) if u != p => {
                    format!("streams from node {u}, not from the primary node {p}")
                }
                _ if timeline < ptl => {
                    format!(
                        "on timeline {timeline}, not streaming from the primary node {p} (timeline {ptl})"
                    )
                }
                _ => format!("not streaming from the primary node {p}"),
            };
            w(what, format!("pgha-follow {n}"))
        }
        (Pg::Standby { lag: Some(l), .. }, Primary::One(p, _)) if *l > max_lag => w(
            format!("lags {l} bytes behind node {p} (follow.max_lag {max_lag})"),
            format!(
                "find what holds it back (network, node {p}'s walsender, disk); pgha-attach {n} once it caught up"
            ),
        ),
        (Pg::Standby { .. }, _) if f.attached == Some(false) => w(
            "a healthy standby pgpool has detached".into(),
            format!("pgha-attach {n}"),
        ),
        _ if f.ssh == Some(false) => w(
            "pgha cannot reach it over ssh: a failover could not fence or repoint it".into(),
            "pgha-check shows the key or host key to fix".into(),
        ),
        _ => None,
    }
}

fn join(ids: &[u32]) -> String {
    ids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Take the status of `topo`: every node, PCP and ssh at once.
pub(crate) async fn collect(topo: &Topology) -> Status {
    let start = Instant::now();
    let remote = topo.remote();
    let ssh_bound = topo.config.ssh.connect_timeout;
    let ssh = futures::future::join_all(topo.nodes.iter().map(|n| {
        let remote = &remote;
        async move {
            // Bounded twice: ssh's own ConnectTimeout, and `true` itself.
            let r =
                tokio::time::timeout(ssh_bound * 2, remote.run(&n.ssh_host, &["true"], ssh_bound))
                    .await;
            matches!(r, Ok(Ok(o)) if o.success())
        }
    }));
    let wd = ops::watchdog(topo, Instant::now() + topo.config.pcp.timeout * 2);
    let (observed, pcp, ssh, wd) =
        tokio::join!(cluster::observe_all(topo), pgpool_view(topo), ssh, wd);
    remote.close().await;
    let observed = reread_primary(topo, observed).await;
    let history = primary_history(topo, &observed).await;
    let lines = state::read_journal(&topo.config.state_dir);
    let mut runs = state::runs(&lines);
    let skip = runs.len().saturating_sub(RUNS_SHOWN);
    runs.drain(..skip);
    let mut status = build(topo, &observed, &history, pcp, &ssh, runs, start.elapsed());
    match wd {
        Ok(w) => status.watchdog = w,
        Err(e) => status.watchdog_error = Some(e.to_string()),
    }
    status
}

/// The history of the one primary's timeline (see
/// [`steps::timeline_history`]); empty with no single primary.
async fn primary_history(topo: &Topology, observed: &[Observed]) -> Vec<HistoryEntry> {
    let mut primaries = observed
        .iter()
        .filter_map(|o| Some((&o.node, o.ok().filter(|s| !s.in_recovery)?)));
    match (primaries.next(), primaries.next()) {
        (Some((node, st)), None) => steps::timeline_history(topo, node, st).await,
        _ => Vec::new(),
    }
}

/// pgpool's view of every backend over one PCP session.
async fn pgpool_view(topo: &Topology) -> std::result::Result<Vec<NodeInfo>, String> {
    let t = topo.pcp_target().map_err(|e| e.to_string())?;
    // Connect plus one request each, each within pcp.timeout.
    let bound = t.timeout * (topo.nodes.len() as u32 + 1);
    let work = async {
        let mut c = PcpClient::connect(&t).await.map_err(|e| e.to_string())?;
        let mut v = Vec::new();
        for n in &topo.nodes {
            v.push(c.node_info(n.id).await.map_err(|e| e.to_string())?);
        }
        c.close().await;
        Ok(v)
    };
    tokio::time::timeout(bound, work).await.unwrap_or_else(|_| {
        Err(format!(
            "pcp at {}:{}: no answer within {:?}",
            t.host, t.port, bound
        ))
    })
}

/// The one primary read again, after every standby was: each standby's
/// LSN is then compared with a primary LSN read later than its own, and a
/// standby that received WAL the primary wrote between two concurrent
/// reads is not taken for one ahead of the primary on its timeline (under
/// a writer, the fault campaign saw healthy standbys advised
/// `pgha-follow N --discard-wal`). Kept as it was when the second read
/// fails or finds no primary.
async fn reread_primary(topo: &Topology, mut observed: Vec<Observed>) -> Vec<Observed> {
    let primaries: Vec<usize> = observed
        .iter()
        .enumerate()
        .filter(|(_, o)| o.ok().is_some_and(|s| !s.in_recovery))
        .map(|(i, _)| i)
        .collect();
    if let [i] = primaries[..] {
        let again = cluster::observe_node(topo, &observed[i].node).await;
        if again.ok().is_some_and(|s| !s.in_recovery) {
            observed[i] = again;
        }
    }
    observed
}

/// The status from what was observed (pure).
fn build(
    topo: &Topology,
    observed: &[Observed],
    history: &[HistoryEntry],
    pcp: std::result::Result<Vec<NodeInfo>, String>,
    ssh: &[bool],
    runs: Vec<Run>,
    took: Duration,
) -> Status {
    let (infos, pcp_error) = match pcp {
        Ok(v) => (v, None),
        Err(e) => (vec![], Some(e)),
    };
    let mut facts: Vec<Facts> = observed
        .iter()
        .enumerate()
        .map(|(i, o)| Facts {
            id: o.node.id,
            pg: pg_of(topo, o, observed),
            attached: infos.iter().find(|x| x.id == o.node.id).map(|x| x.is_up()),
            ssh: ssh.get(i).copied(),
            diverged: None,
        })
        .collect();
    let primary = primary_of(&facts);
    let pstate = match primary {
        Primary::One(p, _) => observed
            .iter()
            .find(|o| o.node.id == p)
            .and_then(|o| o.ok()),
        _ => None,
    };
    if let Some(p) = pstate {
        for (f, o) in facts.iter_mut().zip(observed) {
            f.diverged = o.ok().and_then(|s| crate::lineage::diverged(history, p, s));
        }
    }
    let rows: Vec<Row> = observed
        .iter()
        .zip(&facts)
        .map(|(o, f)| {
            let info = infos.iter().find(|x| x.id == o.node.id);
            let advice = advise(f, &primary, topo.config.follow.max_lag);
            row(o, f, info, pstate, advice)
        })
        .collect();
    Status {
        taken_at: state::rfc3339(SystemTime::now()),
        took_ms: took.as_millis() as u64,
        primary: match primary {
            Primary::One(p, _) => Some(p),
            _ => None,
        },
        pcp_error,
        problems: rows.iter().filter(|r| r.problem.is_some()).count(),
        nodes: rows,
        runs,
        watchdog: None,
        watchdog_error: None,
    }
}

/// One node's row: what was observed of it (`o`, `f`), pgpool's view
/// (`info`), the primary's (`pstate`) and the advice.
fn row(
    o: &Observed,
    f: &Facts,
    info: Option<&NodeInfo>,
    pstate: Option<&NodeState>,
    advice: Option<(String, String)>,
) -> Row {
    let s = o.ok();
    let replica = pstate.zip(s).and_then(|(p, _)| replica_of(&o.node, p));
    let (problem, fix) = advice.unzip();
    Row {
        id: o.node.id,
        address: format!("{}:{}", o.node.host, o.node.port),
        pgpool_status: info.map(|x| x.status_name().to_string()),
        pgpool_role: info.map(|x| x.role.clone()),
        role: f.pg.role(),
        timeline: s.map(|s| s.timeline),
        current_lsn: s.and_then(|s| s.current_lsn),
        receive_lsn: s.and_then(|s| s.receive_lsn),
        replay_lsn: s.and_then(|s| s.replay_lsn),
        lag_bytes: match f.pg {
            Pg::Standby { lag, .. } => lag,
            Pg::Primary { .. } => Some(0),
            _ => None,
        },
        lag_seconds: replica
            .and_then(|r| r.replay_lag_ms)
            .map(|ms| ms as f64 / 1000.0),
        upstream: match f.pg {
            Pg::Standby { upstream, .. } => upstream,
            _ => None,
        },
        sync_state: replica.map(|r| r.sync_state.clone()),
        ssh: f.ssh,
        error: o.state.as_ref().err().cloned(),
        problem,
        fix,
    }
}

fn pg_of(topo: &Topology, o: &Observed, all: &[Observed]) -> Pg {
    match &o.state {
        Ok(s) if !s.in_recovery => Pg::Primary {
            timeline: s.timeline,
        },
        Ok(s) => {
            let upstream = cluster::upstream_of(topo, s);
            // Behind the primary it streams from, else behind the newest
            // primary seen.
            let primary_lsn = upstream
                .and_then(|u| all.iter().find(|x| x.node.id == u))
                .or_else(|| {
                    all.iter()
                        .filter(|x| x.ok().is_some_and(|p| !p.in_recovery))
                        .max_by_key(|x| x.ok().map(|p| p.timeline))
                })
                .and_then(|x| x.ok())
                .filter(|p| !p.in_recovery)
                .and_then(|p| p.current_lsn);
            Pg::Standby {
                timeline: s.timeline,
                upstream,
                lag: primary_lsn
                    .zip(s.best_lsn())
                    .map(|(p, me)| me.bytes_behind(p)),
            }
        }
        Err(e) if o.answered && starting_up(e) => Pg::StartingUp,
        Err(_) if o.answered => Pg::Answers,
        Err(_) => Pg::Silent,
    }
}

/// Whether a refused connection says the server is on its way up or down
/// (SQLSTATE 57P03's messages) rather than refusing pgha.
fn starting_up(error: &str) -> bool {
    [
        "the database system is starting up",
        "the database system is shutting down",
        "the database system is not yet accepting connections",
        "the database system is not accepting connections",
    ]
    .iter()
    .any(|m| error.contains(m))
}

/// The primary's `pg_stat_replication` row for `node`: by
/// `application_name`, else by address.
fn replica_of<'a>(node: &Node, primary: &'a NodeState) -> Option<&'a crate::postgres::Replica> {
    primary
        .replicas
        .iter()
        .find(|r| node.application_name.as_deref() == Some(r.application_name.as_str()))
        .or_else(|| {
            primary.replicas.iter().find(|r| {
                r.client_addr
                    .as_deref()
                    .is_some_and(|a| node.addresses().contains(&a))
            })
        })
}

/// The table and the runs, as printed; `colour` adds ANSI colours.
fn render(s: &Status, colour: bool) -> String {
    let mut out = table(s, colour);
    if let Some(e) = &s.pcp_error {
        out.push_str(&format!("pgpool's view is missing: {e}\n"));
    }
    out.push_str(&members(s));
    out.push_str(&format!(
        "\nlast runs (journal, newest last):\n{}",
        if s.runs.is_empty() { "  none\n" } else { "" }
    ));
    for r in &s.runs {
        out.push_str(&run_line(r));
    }
    out.push_str(&format!(
        "\n{} at {} in {:.2}s\n",
        summary_line(s),
        s.taken_at,
        s.took_ms as f64 / 1000.0
    ));
    out
}

/// The pgpool members under the watchdog, a line each; nothing without
/// a watchdog.
fn members(s: &Status) -> String {
    if let Some(e) = &s.watchdog_error {
        return format!("\npgpool members: the watchdog's view is missing: {e}\n");
    }
    let Some(w) = &s.watchdog else {
        return String::new();
    };
    let quorum = if w.has_quorum() {
        "quorum"
    } else {
        "NO QUORUM: no failover can happen"
    };
    let mut out = format!(
        "\npgpool members (watchdog, leader {}, {quorum}):\n",
        w.leader_name
    );
    for m in w.members() {
        let here = if m.id == w.local.id {
            "  (this host)"
        } else {
            ""
        };
        out.push_str(&format!(
            "  {:>2}  {:<22} {}{here}\n",
            m.id, m.host, m.state_name
        ));
    }
    out
}

/// The columns of the table.
const HEAD: [&str; 13] = [
    "id",
    "address",
    "pgpool",
    "role",
    "tl",
    "current",
    "received",
    "replayed",
    "lag",
    "upstream",
    "sync",
    "ssh",
    "problem / fix",
];

/// The header and a line per node, in aligned columns: bold, then red for
/// a node with a problem, green for the others.
fn table(s: &Status, colour: bool) -> String {
    let mut rows: Vec<Vec<String>> = vec![HEAD.iter().map(|h| h.to_string()).collect()];
    rows.extend(s.nodes.iter().map(cells));
    let widths: Vec<usize> = (0..HEAD.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        let line = line.trim_end().to_string();
        let bad = i > 0 && s.nodes[i - 1].problem.is_some();
        match (colour, i) {
            (true, 0) => out.push_str(&format!("\x1b[1m{line}\x1b[0m\n")),
            (true, _) if bad => out.push_str(&format!("\x1b[31m{line}\x1b[0m\n")),
            (true, _) => out.push_str(&format!("\x1b[32m{line}\x1b[0m\n")),
            _ => out.push_str(&format!("{line}\n")),
        }
    }
    out
}

/// A node's cells, in the order of [`HEAD`]; `-` for what is not known.
fn cells(r: &Row) -> Vec<String> {
    let dash = || "-".to_string();
    let opt = |v: Option<String>| v.unwrap_or_else(dash);
    let lag = match (r.lag_bytes, r.lag_seconds) {
        (Some(b), Some(t)) => format!("{b}B/{t:.1}s"),
        (Some(b), None) => format!("{b}B"),
        _ => dash(),
    };
    vec![
        r.id.to_string(),
        r.address.clone(),
        match (&r.pgpool_status, &r.pgpool_role) {
            (Some(st), Some(ro)) => format!("{st} {ro}"),
            _ => "?".into(),
        },
        r.role.as_str().to_string(),
        opt(r.timeline.map(|t| t.to_string())),
        opt(r.current_lsn.map(|l| l.to_string())),
        opt(r.receive_lsn.map(|l| l.to_string())),
        opt(r.replay_lsn.map(|l| l.to_string())),
        lag,
        opt(r.upstream.map(|u| format!("node {u}"))),
        opt(r.sync_state.clone()),
        match r.ssh {
            Some(true) => "ok".into(),
            Some(false) => "FAIL".into(),
            None => dash(),
        },
        match (&r.problem, &r.fix) {
            (Some(p), Some(f)) => format!("{p} -- fix: {f}"),
            _ => "ok".into(),
        },
    ]
}

/// One run of the journal, as listed under the table.
fn run_line(r: &Run) -> String {
    let what = match (r.command.as_str(), r.phase.as_str()) {
        ("failover", "settle") => "failover (settle)".to_string(),
        (c, _) => c.to_string(),
    };
    let node = r.node.map(|n| format!(" node {n}")).unwrap_or_default();
    let blocked = r
        .blocked_ms
        .filter(|_| r.command == "failover")
        .map(|b| format!(", pgpool waited {:.2}s", b as f64 / 1000.0))
        .unwrap_or_default();
    format!(
        "  {}  {what}{node}  {}  {:.2}s{blocked}\n",
        r.when,
        r.outcome,
        r.ms as f64 / 1000.0
    )
}

fn summary_line(s: &Status) -> String {
    let primary = s
        .primary
        .map(|p| format!("primary node {p}"))
        .unwrap_or_else(|| "no primary".into());
    if s.problems == 0 {
        format!("{} nodes, {primary}, nothing to fix", s.nodes.len())
    } else {
        format!(
            "{} nodes, {primary}, {} need attention",
            s.nodes.len(),
            s.problems
        )
    }
}

/// `pgha-check --status [--every DURATION]`.
pub(crate) async fn run(args: &crate::cli::CheckArgs) -> Result<Summary> {
    let every = args
        .every
        .as_deref()
        .map(|e| super::positive_duration("--every", e))
        .transpose()?;
    let tty = std::io::stdout().is_terminal();
    loop {
        let topo = Topology::load(args.common.config.as_deref())?;
        let s = collect(&topo).await;
        if args.common.json {
            println!("{}", serde_json::to_string(&s).unwrap_or_default());
        } else {
            // Redraw in place on a terminal: home, clear, the frame.
            let clear = if tty && every.is_some() {
                "\x1b[H\x1b[2J"
            } else {
                ""
            };
            print!("{clear}{}", render(&s, tty));
        }
        let Some(every) = every else {
            let line = summary_line(&s);
            return if s.problems == 0 {
                Ok(Summary {
                    outcome: crate::report::Outcome::Ok,
                    message: line,
                    ..Summary::default()
                })
            } else {
                Err(Error::Step(line))
            };
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => {
                return Ok(Summary {
                    outcome: crate::report::Outcome::Stopped,
                    message: "status stopped".into(),
                    ..Summary::default()
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(id: u32, pg: Pg) -> Facts {
        Facts {
            id,
            pg,
            attached: Some(true),
            ssh: Some(true),
            diverged: None,
        }
    }

    fn standby(up: Option<u32>, tl: u32, lag: u64) -> Pg {
        Pg::Standby {
            timeline: tl,
            upstream: up,
            lag: Some(lag),
        }
    }

    const P: Primary = Primary::One(1, 2);
    const MAX: u64 = 1000;

    fn fix(x: &Facts, p: &Primary) -> String {
        advise(x, p, MAX)
            .map(|a| a.1)
            .unwrap_or_else(|| "ok".into())
    }

    #[test]
    fn the_primary_is_the_newest_and_alone() {
        let a = f(0, Pg::Primary { timeline: 1 });
        let b = f(1, Pg::Primary { timeline: 2 });
        assert_eq!(primary_of(&[a.clone(), b.clone()]), Primary::One(1, 2));
        let c = f(2, Pg::Primary { timeline: 2 });
        assert_eq!(primary_of(&[a, b, c]), Primary::Split(vec![1, 2], 2));
        assert_eq!(primary_of(&[f(0, Pg::Silent)]), Primary::None);
    }

    #[test]
    fn healthy_nodes_need_nothing() {
        assert_eq!(fix(&f(1, Pg::Primary { timeline: 2 }), &P), "ok");
        assert_eq!(fix(&f(2, standby(Some(1), 2, 10)), &P), "ok");
    }

    #[test]
    fn a_silent_node_is_rejoined_never_started_by_hand() {
        assert_eq!(
            fix(&f(0, Pg::Silent), &P),
            "once its host is up: pgha-attach --rejoin 0 (starts it as a standby of node 1)"
        );
        let (p, _) = advise(&f(0, Pg::Silent), &P, MAX).unwrap();
        assert!(
            p.starts_with("down") && p.contains("never start it by hand"),
            "{p}"
        );
        assert_eq!(fix(&f(0, Pg::Silent), &Primary::None), "start it");
    }

    #[test]
    fn a_node_that_answers_but_cannot_be_used() {
        assert!(fix(&f(0, Pg::Answers), &P).contains("pgha-check"));
    }

    #[test]
    fn a_node_starting_up_is_waited_for_not_fixed() {
        assert!(starting_up(
            "db error: FATAL: the database system is starting up"
        ));
        assert!(!starting_up(
            "db error: FATAL: password authentication failed for user \"pgha\""
        ));
        let (p, fix_) = advise(&f(0, Pg::StartingUp), &P, MAX).unwrap();
        assert!(p.starts_with("starting up"), "{p}");
        assert!(fix_.starts_with("wait"), "{fix_}");
    }

    #[test]
    fn an_old_primary_is_rejoined() {
        let old = f(0, Pg::Primary { timeline: 1 });
        assert_eq!(fix(&old, &P), "pgha-attach --rejoin 0");
        assert!(advise(&old, &P, MAX).unwrap().0.contains("old primary"));
    }

    #[test]
    fn split_brain_is_named() {
        let s = Primary::Split(vec![0, 1], 2);
        let (p, fx) = advise(&f(0, Pg::Primary { timeline: 2 }), &s, MAX).unwrap();
        assert!(p.contains("split brain: nodes 0, 1"), "{p}");
        assert!(fx.contains("pgha-attach --rejoin 0"), "{fx}");
        assert!(fix(&f(2, standby(Some(0), 2, 0)), &s).contains("split brain"));
    }

    #[test]
    fn a_detached_primary_is_attached() {
        let mut p = f(1, Pg::Primary { timeline: 2 });
        p.attached = Some(false);
        assert_eq!(fix(&p, &P), "pcp_attach_node -n 1");
    }

    #[test]
    fn a_standby_without_primary() {
        assert!(fix(&f(2, standby(None, 1, 0)), &Primary::None).contains("pgpool's log"));
    }

    #[test]
    fn a_standby_not_following_the_primary_is_followed() {
        assert_eq!(fix(&f(2, standby(Some(0), 2, 0)), &P), "pgha-follow 2");
        assert_eq!(fix(&f(2, standby(None, 2, 0)), &P), "pgha-follow 2");
        let (p, fx) = advise(&f(2, standby(Some(1), 1, 0)), &P, MAX).unwrap();
        assert_eq!(fx, "pgha-follow 2");
        assert!(p.contains("timeline 1"), "{p}");
    }

    #[test]
    fn a_diverged_standby_is_rewound_only_on_purpose() {
        let mut x = f(2, standby(Some(0), 1, 0));
        x.diverged = Some("on timeline 1 past the switch point 0/3000000".into());
        let (p, fx) = advise(&x, &P, MAX).unwrap();
        assert!(
            p.contains("cannot follow node 1")
                && p.contains("switch point")
                && p.contains("acknowledged"),
            "{p}"
        );
        assert!(fx.starts_with("pgha-follow 2 --discard-wal"), "{fx}");
    }

    #[test]
    fn a_lagging_standby_is_named_with_its_lag() {
        let (p, fx) = advise(&f(2, standby(Some(1), 2, 5000)), &P, MAX).unwrap();
        assert!(p.contains("lags 5000 bytes behind node 1"), "{p}");
        assert!(fx.contains("pgha-attach 2 once it caught up"), "{fx}");
    }

    #[test]
    fn a_healthy_detached_standby_is_attached() {
        let mut s = f(2, standby(Some(1), 2, 0));
        s.attached = Some(false);
        assert_eq!(fix(&s, &P), "pgha-attach 2");
        // Unknown to pgpool (PCP down): nothing claimed.
        s.attached = None;
        assert_eq!(fix(&s, &P), "ok");
    }

    #[test]
    fn ssh_that_fails_is_reported_last() {
        let mut s = f(2, standby(Some(1), 2, 0));
        s.ssh = Some(false);
        assert!(fix(&s, &P).contains("pgha-check"));
    }

    #[test]
    fn the_table_has_a_row_per_node_and_the_runs() {
        let row = |id, problem: Option<&str>| Row {
            id,
            address: format!("127.0.0.{}:5432", id + 2),
            pgpool_status: Some("up".into()),
            pgpool_role: Some("standby".into()),
            role: Role::Standby,
            timeline: Some(2),
            current_lsn: None,
            receive_lsn: Some(Lsn(0x3000060)),
            replay_lsn: Some(Lsn(0x3000060)),
            lag_bytes: Some(0),
            lag_seconds: Some(0.001),
            upstream: Some(1),
            sync_state: Some("async".into()),
            ssh: Some(true),
            error: None,
            problem: problem.map(str::to_string),
            fix: problem.map(|_| "pgha-attach 2".to_string()),
        };
        let s = Status {
            taken_at: "2026-12-01T00:00:00.000Z".into(),
            took_ms: 120,
            primary: Some(1),
            pcp_error: None,
            nodes: vec![row(0, None), row(2, Some("detached"))],
            problems: 1,
            runs: vec![],
            watchdog: None,
            watchdog_error: None,
        };
        let t = render(&s, false);
        assert!(t.lines().next().unwrap().starts_with("id  address"), "{t}");
        assert!(t.contains("detached -- fix: pgha-attach 2"), "{t}");
        assert!(t.contains("0B/0.0s"), "{t}");
        assert!(t.contains("none"), "{t}");
        assert!(t.contains("1 need attention"), "{t}");
        assert!(!t.contains('\x1b'));
        assert!(render(&s, true).contains("\x1b[31m"));
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["nodes"][1]["fix"], "pgha-attach 2");
        assert_eq!(j["nodes"][0]["receive_lsn"], "0/3000060");
        assert!(
            !t.contains("pgpool members"),
            "no watchdog, no members: {t}"
        );
        let json = r#"{"QuorumStatus":-1,"NodesRequireForQuorum":1,"AliveNodeCount":0,"LeaderNodeName":"a:9999 Linux app","WatchdogNodes":[{"ID":0,"State":4,"NodeName":"a:9999 Linux app","HostName":"127.0.0.20","StateName":"LEADER"},{"ID":1,"State":8,"NodeName":"b:9999 Linux app1","HostName":"127.0.0.21","StateName":"LOST"}]}"#;
        let mut s = s;
        s.watchdog = Some(WatchdogInfo::parse(json).unwrap());
        let t = render(&s, false);
        assert!(t.contains("leader a:9999 Linux app, NO QUORUM"), "{t}");
        assert!(t.contains("127.0.0.21             LOST"), "{t}");
        assert!(
            t.contains("127.0.0.20             LEADER  (this host)"),
            "{t}"
        );
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["watchdog"]["others"][0]["state_name"], "LOST");
    }
}
