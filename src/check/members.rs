//! pgha-check under pgpool's watchdog: the watchdog as it is now (a
//! leader, quorum, every member in the cluster), and every other pgpool
//! host agreeing with this one, read over ssh: the backends and the two
//! commands in its `pgpool.conf`, and its `pgha.toml`. Any member may become
//! the leader that runs pgha-failover, so a member that differs fails over
//! differently.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use super::Finding;
use crate::cluster::Topology;
use crate::pgpool::conf::PgpoolConf;
use crate::pgpool::ops;
use crate::pgpool::watchdog::WatchdogInfo;
use crate::remote::Remote;

/// The findings of this module; none without a watchdog.
pub(super) async fn findings(topo: &Topology, remote: &Remote) -> Vec<Finding> {
    if !topo.pgpool.is_on("use_watchdog") {
        return Vec::new();
    }
    let deadline = Instant::now() + topo.config.pcp.timeout * 2;
    let mut out = vec![match ops::watchdog(topo, deadline).await {
        Ok(Some(w)) => live(&w),
        Ok(None) => return Vec::new(),
        Err(e) => Finding::fail(
            "watchdog_live",
            "pgpool",
            format!("cannot ask the local pgpool's watchdog: {e}"),
            "start pgpool here, and check [pcp] in pgha.toml (pcp_watchdog_info -v must answer)",
        ),
    }];
    let members = other_members(&topo.pgpool);
    let reads = members.iter().map(|host| agreement(topo, remote, host));
    out.extend(futures::future::join_all(reads).await);
    out
}

/// A leader with quorum, and every member in the cluster.
fn live(w: &WatchdogInfo) -> Finding {
    let missing: Vec<String> = w
        .members()
        .filter(|m| !matches!(m.state_name.as_str(), "LEADER" | "STANDBY"))
        .map(|m| format!("{} ({})", m.name, m.state_name))
        .collect();
    if !w.has_quorum() || matches!(w.leader_name.as_str(), "" | "Not Set") {
        return Finding::fail(
            "watchdog_live",
            "pgpool",
            format!(
                "{}: no failover can happen (pgpool quarantines failed nodes instead)",
                w.describe()
            ),
            "start pgpool on the members that are down, or reconnect the cut-off ones, until a majority sees each other",
        );
    }
    if !missing.is_empty() {
        return Finding::fail(
            "watchdog_live",
            "pgpool",
            format!(
                "{}; not in the cluster: {} (quorum holds, but one more loss stops failover)",
                w.describe(),
                missing.join(", ")
            ),
            "start pgpool on those members (pcp_watchdog_info -v there says why they left)",
        );
    }
    Finding::pass("watchdog_live", "pgpool", w.describe())
}

/// The other members' addresses (`hostnameN`), this host's own left out:
/// the one `pgpool_node_id` beside pgpool.conf names, else the one equal to
/// `listen_addresses`.
pub(super) fn other_members(conf: &PgpoolConf) -> Vec<String> {
    let own_id = conf
        .path
        .parent()
        .map(|d| d.join("pgpool_node_id"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.trim().parse::<usize>().ok());
    let own_addr = conf.listen_address();
    (0..128)
        .filter_map(|i| Some((i, conf.get(&format!("hostname{i}"))?.trim().to_string())))
        .filter(|(i, h)| !h.is_empty() && Some(*i) != own_id)
        .filter(|(_, h)| own_id.is_some() || Some(h) != own_addr.as_ref())
        .map(|(_, h)| h)
        .collect()
}

/// One member's pgpool.conf and pgha.toml against this host's.
async fn agreement(topo: &Topology, remote: &Remote, host: &str) -> Finding {
    let t = topo.config.ssh.connect_timeout + Duration::from_secs(5);
    let pool_path = topo.pgpool.path.display().to_string();
    let toml_path = topo
        .config
        .source
        .clone()
        .unwrap_or_else(crate::config::Config::default_path);
    let toml_path = toml_path.display().to_string();
    let (pool, toml) = tokio::join!(
        remote.read_file(host, &pool_path, t),
        remote.read_file(host, &toml_path, t)
    );
    let subject = format!("member {host}");
    let (pool, toml) = match (pool, toml) {
        (Ok(p), Ok(t)) => (p, t),
        (Err(e), _) | (_, Err(e)) => {
            return Finding::fail(
                "member_config",
                &subject,
                format!(
                    "cannot read {pool_path} and {toml_path} on pgpool member {host} over ssh: {e}"
                ),
                format!(
                    "let this host ssh to {host} as [ssh] user (key-only, host key known), as to the nodes"
                ),
            );
        }
    };
    let local_toml = topo
        .config
        .source
        .as_deref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let theirs = String::from_utf8_lossy(&pool);
    let mut diffs = match PgpoolConf::parse(Path::new(&pool_path), &theirs) {
        Ok(c) => pgpool_diffs(&topo.pgpool, &c),
        Err(e) => vec![format!("its pgpool.conf does not parse: {e}")],
    };
    diffs.extend(toml_diffs(&local_toml, &String::from_utf8_lossy(&toml)));
    if diffs.is_empty() {
        return Finding::pass(
            "member_config",
            &subject,
            format!("pgpool member {host} has the same backends, commands and pgha.toml"),
        );
    }
    Finding::fail(
        "member_config",
        &subject,
        format!(
            "pgpool member {host} differs from this host: {}; whichever member leads runs failover with its own",
            diffs.join("; ")
        ),
        format!("make {pool_path} and {toml_path} on {host} say what they say here"),
    )
}

/// The settings of pgpool.conf every member must share: the backends and
/// the two commands pgha is run by.
const SHARED: &[&str] = &[
    "backend_clustering_mode",
    "failover_command",
    "follow_primary_command",
    "failover_when_quorum_exists",
    "failover_require_consensus",
    "enable_consensus_with_half_votes",
];

fn pgpool_diffs(ours: &PgpoolConf, theirs: &PgpoolConf) -> Vec<String> {
    let mut out = Vec::new();
    for key in SHARED {
        if ours.get(key) != theirs.get(key) {
            out.push(format!(
                "{key} is {} there, {} here",
                shown(theirs.get(key)),
                shown(ours.get(key))
            ));
        }
    }
    let ids: BTreeSet<u32> = ours
        .backends
        .iter()
        .chain(&theirs.backends)
        .map(|b| b.id)
        .collect();
    for id in ids {
        let (a, b) = (ours.backend(id), theirs.backend(id));
        let same = match (a, b) {
            (Some(a), Some(b)) => {
                (&a.hostname, a.port, &a.data_directory) == (&b.hostname, b.port, &b.data_directory)
            }
            _ => false,
        };
        if !same {
            let d = |b: Option<&crate::pgpool::conf::Backend>| match b {
                Some(b) => format!("{}:{}", b.hostname, b.port),
                None => "absent".into(),
            };
            out.push(format!("backend {id} is {} there, {} here", d(b), d(a)));
        }
    }
    out
}

fn shown(v: Option<&str>) -> String {
    match v {
        Some(v) => format!("'{v}'"),
        None => "unset".into(),
    }
}

/// pgha.toml: every setting alike, as parsed (comments, order and layout
/// may differ); the differing keys are named.
fn toml_diffs(ours: &str, theirs: &str) -> Vec<String> {
    let parse = |s: &str| s.parse::<toml::Table>();
    let (a, b) = match (parse(ours), parse(theirs)) {
        (Ok(a), Ok(b)) => (a, b),
        (_, Err(e)) => return vec![format!("its pgha.toml does not parse: {e}")],
        (Err(_), _) => return Vec::new(),
    };
    let mut keys = Vec::new();
    differing(
        "",
        &toml::Value::Table(a),
        &toml::Value::Table(b),
        &mut keys,
    );
    match keys.is_empty() {
        true => Vec::new(),
        false => vec![format!("pgha.toml differs in {}", keys.join(", "))],
    }
}

fn differing(at: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
    match (a, b) {
        (toml::Value::Table(x), toml::Value::Table(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(v), Some(w)) => differing(&path, v, w, out),
                    _ => out.push(path),
                }
            }
        }
        _ if a != b => out.push(at.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> PgpoolConf {
        PgpoolConf::parse(Path::new("/nonexistent/pgpool.conf"), text).unwrap()
    }

    #[test]
    fn the_other_members_leave_this_host_out() {
        let c = conf(
            "listen_addresses = '127.0.0.21'\nhostname0 = '127.0.0.20'\nhostname1 = '127.0.0.21'\nhostname2 = '127.0.0.22'\nbackend_hostname0 = '127.0.0.2'\n",
        );
        assert_eq!(other_members(&c), ["127.0.0.20", "127.0.0.22"]);
    }

    #[test]
    fn differing_backends_and_commands_are_named() {
        let a = conf(
            "backend_hostname0 = '127.0.0.2'\nbackend_hostname1 = '127.0.0.3'\nfailover_command = 'pgha-failover %d %M %m --old-primary %P'\n",
        );
        let b = conf(
            "backend_hostname0 = '127.0.0.2'\nbackend_hostname1 = '127.0.0.4'\nfailover_command = '/etc/pgpool2/failover.sh %d'\n",
        );
        let d = pgpool_diffs(&a, &b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d[0].contains("failover_command is '/etc/pgpool2/failover.sh %d' there"),
            "{d:?}"
        );
        assert!(
            d[1].contains("backend 1 is 127.0.0.4:5432 there, 127.0.0.3:5432 here"),
            "{d:?}"
        );
        assert!(pgpool_diffs(&a, &a).is_empty());
    }

    #[test]
    fn pgha_toml_compares_settings_not_layout() {
        let a = "# here\n[failover]\ndeadline = \"50s\"\n[postgres]\nuser = \"postgres\"\n";
        let b = "[postgres]\nuser = \"postgres\" # same\n\n[failover]\ndeadline = \"50s\"\n";
        assert!(toml_diffs(a, b).is_empty());
        let c = "[postgres]\nuser = \"postgres\"\n[failover]\ndeadline = \"20s\"\nmaximum_lag = \"1MB\"\n";
        assert_eq!(
            toml_diffs(a, c),
            ["pgha.toml differs in failover.deadline, failover.maximum_lag"]
        );
        assert!(toml_diffs(a, "[x")[0].contains("does not parse"));
    }
}
