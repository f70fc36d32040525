//! `pgha-check --start-guard N`: run on node N's own host just before its
//! PostgreSQL starts (systemd `ExecStartPre`), so that an old primary whose
//! host reboots after a failover does not come back as a second writable
//! primary.
//!
//! pgha acts over ssh from the pgpool hosts; while a host is down it can
//! do nothing there, and the moment that host boots, its PostgreSQL would
//! start from the unit and accept writes from any client that connects to
//! it directly. pgpool never attaches it again by itself, but nothing else
//! stops it. The guard is the node's own say before the server starts:
//!
//! - a data directory that starts as a standby (`standby.signal`, or a
//!   `recovery.conf` with `standby_mode` before 12) may always start: a
//!   standby accepts no writes;
//! - one that would start as a primary is refused when another node
//!   answers on a newer timeline, or as a primary on the same or a newer
//!   one: the cluster moved on without it. The fix is `pgha-attach
//!   --rejoin N`, which makes it a standby of the current primary (with
//!   `pg_rewind` when it diverged) and starts it past this guard, since it
//!   then starts as a standby;
//! - when no other node answers at all (the whole cluster booting after a
//!   power cut), it may start: nothing shows that another node took over,
//!   and refusing there would keep the only primary down. The line says so.
//!
//! `pgha-check --fence N` is its running half, for an old primary that
//! returns without a restart (a cut network heals, a frozen host runs on):
//! every 250ms, when the local server answers as a primary (over its unix
//! socket, which a cut network does not reach) and another node answers
//! on a newer timeline, it stops the server (`pg_ctl stop -m immediate`)
//! and names the same rejoin. Only a newer timeline counts there: of two
//! primaries on one timeline, each would stop itself. And a primary that
//! reaches no other node and no pgpool stops before a standby could be
//! promoted in its place (pgpool's soonest detection plus pgha-failover's
//! liveness probes, less two fence rounds): the cut may heal before anyone
//! could tell it, and clients on its side of the cut would write to it.
//!
//! The guard is read-only and bounded: one connection attempt per other node, all at
//! once (`[postgres] connect_timeout` and `query_timeout`), and reading the
//! local data directory.

use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::cli::CheckArgs;
use crate::cluster::{Node, Topology};
use crate::error::{Error, Result};
use crate::failover::parse_controldata;
use crate::postgres;
use crate::report::{Outcome, Summary};

/// How the local data directory would start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Local {
    /// As a standby; the file that makes it one.
    Standby(&'static str),
    /// As a primary, last on this timeline.
    Primary { timeline: u32 },
}

/// What another node answered, or why it did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    Answered {
        primary: bool,
        timeline: u32,
        /// A standby whose `restore_command` pgha paused: a failover or
        /// switchover away from the old primary is promoting or repointing
        /// it, or was killed while it did.
        paused: bool,
    },
    Silent(String),
}

/// The guard's decision: start (why) or refuse (why, and the fix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Start(String),
    Refuse(String),
}

/// `--start-guard N`: OK when node N may start, refused (exit 4) when it
/// would come up as a second primary; a data directory pg_controldata
/// cannot read is a failed step (exit 1), so the unit does not start either.
pub async fn run(args: &CheckArgs, id: u32) -> Result<Summary> {
    let topo = Topology::load(args.common.config.as_deref())?;
    let me = topo.node(i64::from(id))?;
    let data = me.data_dir()?;
    let local = local_state(&topo, data).map_err(|e| {
        Error::Step(format!(
            "start guard of {}: {e}; fix the data directory (backend_data_directory{} or [nodes.{}] data_directory) or the [postgres] bin_dir",
            me.label(),
            me.id,
            me.id
        ))
    })?;
    let peers = if matches!(local, Local::Standby(_)) {
        Vec::new()
    } else {
        ask_the_others(&topo, me, true).await
    };
    match decide(me, &local, &peers) {
        Verdict::Start(why) => Ok(Summary {
            outcome: Outcome::Ok,
            message: why,
            ..Summary::default()
        }),
        Verdict::Refuse(why) => Err(Error::Refused(why)),
    }
}

/// Whether the data directory starts as a standby, else its timeline:
/// the newest of the control file's checkpoint timeline and the timeline
/// history files in `pg_wal` (a server promoted and stopped before its
/// first checkpoint on the new timeline still has the old one in
/// `pg_control`).
fn local_state(topo: &Topology, data: &Path) -> std::result::Result<Local, String> {
    if data.join("standby.signal").exists() {
        return Ok(Local::Standby("standby.signal"));
    }
    if standby_recovery_conf(data) {
        return Ok(Local::Standby("recovery.conf (standby_mode = on)"));
    }
    let bin = topo.config.postgres.bin_dir.join("pg_controldata");
    let out = std::process::Command::new(&bin)
        .arg("-D")
        .arg(data)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} -D {} exited {}: {}",
            bin.display(),
            data.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let cd = parse_controldata(&String::from_utf8_lossy(&out.stdout))?;
    let history = newest_history(&data.join("pg_wal")).unwrap_or(0);
    Ok(Local::Primary {
        timeline: cd.timeline.max(history),
    })
}

/// The highest timeline of a `NNNNNNNN.history` file in `dir`.
fn newest_history(dir: &Path) -> Option<u32> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let hex = name.strip_suffix(".history")?;
            (hex.len() == 8).then(|| u32::from_str_radix(hex, 16).ok())?
        })
        .max()
}

/// Every other node's role and timeline, asked at once.
async fn ask_the_others<'a>(topo: &'a Topology, me: &Node, loud: bool) -> Vec<(&'a Node, Seen)> {
    let others: Vec<&Node> = topo.nodes.iter().filter(|n| n.id != me.id).collect();
    let asks = others.iter().map(|n| async move {
        let t = topo.pg_target(n);
        let bound = t.connect_timeout + t.query_timeout + Duration::from_secs(1);
        match tokio::time::timeout(bound, postgres::observe_target(&t)).await {
            Ok(Ok(s)) => Seen::Answered {
                primary: !s.in_recovery,
                timeline: s.timeline,
                paused: s.in_recovery && crate::restore::unpaused(&s.restore_command).is_some(),
            },
            Ok(Err(e)) => Seen::Silent(e.to_string()),
            Err(_) => Seen::Silent(format!("no answer within {bound:?}")),
        }
    });
    let seen = futures::future::join_all(asks).await;
    for (n, s) in others.iter().zip(&seen).filter(|_| loud) {
        match s {
            Seen::Answered {
                primary,
                timeline,
                paused,
            } => info!(
                "{}: {} on timeline {timeline}{}",
                n.label(),
                if *primary { "primary" } else { "standby" },
                if *paused {
                    ", its restore_command paused by pgha"
                } else {
                    ""
                }
            ),
            Seen::Silent(why) => warn!("{}: no answer: {why}", n.label()),
        }
    }
    others.into_iter().zip(seen).collect()
}

/// The rules of the module doc, on what was seen.
pub(crate) fn decide(me: &Node, local: &Local, peers: &[(&Node, Seen)]) -> Verdict {
    let timeline = match local {
        Local::Standby(file) => {
            return Verdict::Start(format!(
                "{} may start: it starts as a standby ({file}), which accepts no writes",
                me.label()
            ));
        }
        Local::Primary { timeline } => *timeline,
    };
    let ahead = ahead_of(peers, timeline, true);
    if !ahead.is_empty() {
        let primary = peers.iter().find_map(|(n, s)| match s {
            Seen::Answered { primary: true, .. } => Some(n.id.to_string()),
            _ => None,
        });
        let of = primary.map_or("the current primary".to_string(), |p| format!("node {p}"));
        return Verdict::Refuse(format!(
            "{} would start as a primary on timeline {timeline}, but {}: the cluster failed over without it, and starting it would make a second writable primary. PostgreSQL was not started. Make it a standby of {of}: from a pgpool host, pgha-attach --rejoin {}",
            me.label(),
            ahead.join(", "),
            me.id
        ));
    }
    let promoting: Vec<String> = peers
        .iter()
        .filter(|(_, s)| matches!(s, Seen::Answered { paused: true, .. }))
        .map(|(n, _)| n.label())
        .collect();
    if !promoting.is_empty() {
        // A promote request in flight shows no newer timeline yet: the
        // candidate handles it only between its restore_command attempts
        // (an scp to this very host, dead until now, may still be waiting
        // out its connect timeout). pgha pauses that command first, and
        // only to promote or repoint a standby away from the old primary.
        return Verdict::Refuse(format!(
            "{} would start as a primary on timeline {timeline}, but the restore_command of {} is paused by pgha: a failover or switchover away from this node is under way, or was interrupted (a promote request may still be pending), and starting it could make a second writable primary. PostgreSQL was not started. From a pgpool host: finish the failover (run again the pgha-failover command pgpool's log shows for this node; pgha-check --status names what is left), then pgha-attach --rejoin {}",
            me.label(),
            promoting.join(", "),
            me.id
        ));
    }
    let answered = peers
        .iter()
        .filter(|(_, s)| matches!(s, Seen::Answered { .. }))
        .count();
    if answered == 0 && !peers.is_empty() {
        return Verdict::Start(format!(
            "{} may start as the primary it was (timeline {timeline}): no other node answered, so nothing shows that another took over",
            me.label()
        ));
    }
    Verdict::Start(format!(
        "{} may start as the primary it was (timeline {timeline}): {} of {} other nodes answered, none on a newer timeline or as a primary",
        me.label(),
        answered,
        peers.len()
    ))
}

/// The other nodes that show the cluster moved past `timeline`: on a newer
/// one, or (`same_primary`) a primary on the same one. A running server
/// is fenced on a newer timeline only: two primaries on one timeline
/// would each stop themselves.
fn ahead_of(peers: &[(&Node, Seen)], timeline: u32, same_primary: bool) -> Vec<String> {
    peers
        .iter()
        .filter_map(|(n, s)| match s {
            Seen::Answered {
                primary,
                timeline: t,
                ..
            } if *t > timeline || (same_primary && *primary && *t >= timeline) => {
                let role = if *primary { "the primary" } else { "a standby" };
                Some(format!("{} answers as {role} on timeline {t}", n.label()))
            }
            _ => None,
        })
        .collect()
}

/// `--fence N`: every `--interval` (default 250ms), a [`fence_round`], until
/// SIGTERM or SIGINT.
pub async fn fence(args: &CheckArgs, id: u32) -> Result<Summary> {
    let every = args.interval.as_deref().unwrap_or("250ms");
    let interval = super::positive_duration("--interval", every)?;
    let topo = Topology::load(args.common.config.as_deref())?;
    let me = topo.node(i64::from(id))?.clone();
    let data = me.data_dir()?.to_path_buf();
    let detection = pgpool_soonest_detection(&topo, me.id);
    let lease = isolation_lease(detection, topo.config.failover.liveness_timeout, interval);
    let witnesses = witnesses(&topo, &me);
    let from = own_address(&me).await;
    info!(
        "fencing {}: every {every}, stop it when it runs as a primary and another node answers on a newer timeline, or when it has reached none of {} for {lease:.2?} (pgpool's health check may find a silent backend dead {detection:.2?} after it goes silent, and pgha-failover then probes it for {:.2?} before it promotes a standby)",
        me.label(),
        witnesses
            .iter()
            .map(|(h, p)| format!("{h}:{p}"))
            .collect::<Vec<_>>()
            .join(", "),
        topo.config.failover.liveness_timeout,
    );
    let mut last_reached = Instant::now();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Step(format!("cannot watch for SIGTERM: {e}")))?;
    let mut stops = 0u32;
    loop {
        tokio::select! {
            fenced = fence_round(&topo, &me, &data, &witnesses, from, lease, &mut last_reached) => stops += u32::from(fenced),
            _ = super::watch::stopped(&mut term) => break,
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = super::watch::stopped(&mut term) => break,
        }
    }
    Ok(Summary {
        outcome: Outcome::Stopped,
        message: format!(
            "fence of {} stopped; it stopped the server {stops} times",
            me.label()
        ),
        ..Summary::default()
    })
}

/// One round: when the local server would be a primary (running, no
/// standby.signal) and no witness has answered since `last_reached` (the
/// start of the last round in which one did: the cut may have begun just
/// after it) for `lease`, or when it answers as a primary and another node
/// answers on a newer timeline, stop it. Returns whether it stopped it.
async fn fence_round(
    topo: &Topology,
    me: &Node,
    data: &Path,
    witnesses: &[(String, u16)],
    from: Option<std::net::IpAddr>,
    lease: Duration,
    last_reached: &mut Instant,
) -> bool {
    let round = Instant::now();
    if !running_primary(topo, data) {
        *last_reached = round;
        return false;
    }
    if !witnesses.is_empty() && !reaches_any(witnesses, from).await {
        let silent = last_reached.elapsed();
        if silent < lease {
            return false;
        }
        *last_reached = Instant::now();
        warn!(
            "{} runs as a primary but has reached no other node and no pgpool for {:.2}s, as long as it may ({lease:.2?}) before pgpool and pgha-failover could have promoted a standby; stopping it (pg_ctl stop -m immediate) so that no client writes to a second primary",
            me.label(),
            silent.as_secs_f64()
        );
        report_stop(topo, me, data, "once the network is back: if another node was promoted, from a pgpool host pgha-attach --rejoin N; if none was, start it again (the start guard lets it)").await;
        return true;
    }
    *last_reached = round;
    let t = local_target(topo, me, data);
    let bound = t.connect_timeout + t.query_timeout;
    let mine = match tokio::time::timeout(bound, postgres::observe_target(&t)).await {
        Ok(Ok(s)) if !s.in_recovery => s,
        _ => return false,
    };
    let peers = ask_the_others(topo, me, false).await;
    let ahead = ahead_of(&peers, mine.timeline, false);
    if ahead.is_empty() {
        return false;
    }
    warn!(
        "{} answers as a primary on timeline {}, but {}: the cluster failed over without it; stopping it (pg_ctl stop -m immediate) so that no client writes to it",
        me.label(),
        mine.timeline,
        ahead.join(", ")
    );
    report_stop(
        topo,
        me,
        data,
        "make it a standby: from a pgpool host, pgha-attach --rejoin N",
    )
    .await;
    true
}

/// How to reach the local server with SQL: its unix socket, from
/// `postmaster.pid` (line 4 the port, line 5 the first socket directory),
/// so that it is seen even when its network address is cut off; else its
/// backend address.
fn local_target(topo: &Topology, me: &Node, data: &Path) -> postgres::PgTarget {
    let pid = std::fs::read_to_string(data.join("postmaster.pid")).unwrap_or_default();
    let lines: Vec<&str> = pid.lines().collect();
    let port = lines.get(3).and_then(|p| p.trim().parse::<u16>().ok());
    match (lines.get(4).map(|d| d.trim()), port) {
        (Some(dir), Some(port)) if dir.starts_with('/') => {
            postgres::PgTarget::new(dir, port, &topo.config.postgres)
        }
        _ => topo.pg_target(me),
    }
}

/// Stop the local server and say what happened and what to do (`next`,
/// with N for the node id).
async fn report_stop(topo: &Topology, me: &Node, data: &Path, next: &str) {
    let next = next.replace(" N", &format!(" {}", me.id));
    match stop_local(topo, data).await {
        Ok(()) => warn!("FENCED: {} stopped. Next: {next}", me.label()),
        Err(e) => tracing::error!(
            "could not stop {}: {e}; stop it by hand (pg_ctl -D {} stop -m immediate), then {next}",
            me.label(),
            data.display()
        ),
    }
}

/// Whether the local data directory has a running server that is (or
/// would end up) a primary: `pg_ctl status` says a server runs, and no
/// standby.signal (or standby recovery.conf) is there. Local, no network:
/// it holds while the host is cut off.
fn running_primary(topo: &Topology, data: &Path) -> bool {
    let runs = std::process::Command::new(topo.config.postgres.bin_dir.join("pg_ctl"))
        .arg("-D")
        .arg(data)
        .arg("status")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    runs && !data.join("standby.signal").exists() && !standby_recovery_conf(data)
}

/// A `recovery.conf` with `standby_mode` on (before 12).
fn standby_recovery_conf(data: &Path) -> bool {
    std::fs::read_to_string(data.join("recovery.conf")).is_ok_and(|text| {
        crate::pgconf::conf_value(&text, "standby_mode")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "on" | "true" | "yes" | "1"))
    })
}

/// The soonest pgpool's health check can find a silent backend dead: a
/// check that starts as the backend goes silent fails after
/// (1 + `health_check_max_retries`) x `health_check_timeout` +
/// retries x `health_check_retry_delay` (the node's own `...N` setting
/// first); `health_check_period` may add nothing. With the health check
/// off, 30s.
fn pgpool_soonest_detection(topo: &Topology, id: u32) -> Duration {
    let get = |key: &str, default: u64| {
        let conf = &topo.pgpool;
        conf.get(&format!("{key}{id}"))
            .or_else(|| conf.get(key))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(default)
    };
    if get("health_check_period", 0) == 0 {
        return Duration::from_secs(30);
    }
    let (timeout, retries, delay) = (
        get("health_check_timeout", 20),
        get("health_check_max_retries", 0),
        get("health_check_retry_delay", 1),
    );
    Duration::from_secs((1 + retries) * timeout + retries * delay)
}

/// How long a primary may reach no witness before the fence stops it: no
/// standby is promoted before pgpool finds the primary dead (`detection`,
/// at the soonest) and pgha-failover has probed it for `liveness` more;
/// the stop must begin before that. Counted from the start of the last
/// round that reached a witness, the stop begins at most one round
/// (`interval` + [`REACH_WITHIN`]) after the lease ends, and takes about
/// one more (an immediate stop), so two rounds come off. Never less than
/// one round.
fn isolation_lease(detection: Duration, liveness: Duration, interval: Duration) -> Duration {
    let round = interval + REACH_WITHIN;
    (detection + liveness).saturating_sub(2 * round).max(round)
}

/// How long a fence round waits for a witness to answer at the TCP level.
const REACH_WITHIN: Duration = Duration::from_millis(250);

/// What an isolated node tries to reach: every other node's SQL port,
/// and every pgpool of pgpool.conf (its listen address, and the watchdog
/// members: `hostnameN`/`pgpool_portN`, or `other_pgpool_hostnameN`).
fn witnesses(topo: &Topology, me: &Node) -> Vec<(String, u16)> {
    let conf = &topo.pgpool;
    let port = |key: &str| conf.get(key).and_then(|v| v.trim().parse().ok());
    let mut out: Vec<(String, u16)> = topo
        .nodes
        .iter()
        .filter(|n| n.id != me.id)
        .map(|n| (n.host.clone(), n.port))
        .collect();
    let mut pgpool = |host: Option<&str>, p: Option<u16>| {
        let host = host
            .map(|h| h.trim().trim_matches('\'').to_string())
            .unwrap_or_default();
        for h in host.split(',').map(str::trim) {
            // Wildcards and loopback names mean this host, not the pgpool's.
            let local = matches!(
                h,
                "" | "*" | "0.0.0.0" | "::" | "localhost" | "127.0.0.1" | "::1"
            );
            if !local && !out.iter().any(|(x, q)| x == h && Some(*q) == p) {
                out.push((h.to_string(), p.unwrap_or(9999)));
            }
        }
    };
    pgpool(conf.get("listen_addresses"), port("port"));
    for m in 0..16 {
        pgpool(
            conf.get(&format!("hostname{m}")),
            port(&format!("pgpool_port{m}")),
        );
        pgpool(
            conf.get(&format!("other_pgpool_hostname{m}")),
            port(&format!("other_pgpool_port{m}")),
        );
    }
    out
}

/// Whether any witness answers at the TCP level within [`REACH_WITHIN`]:
/// a connection, or a refusal (a host that sends a reset is reachable).
/// Sent from `from`, the node's own address when it is local: the answer
/// must come back to the address pgpool and the other nodes reach it on.
/// A host with several addresses would otherwise send from whichever the
/// kernel picks, and a node whose own address nobody reaches any more
/// (every packet to it dropped) would still count as reached.
async fn reaches_any(witnesses: &[(String, u16)], from: Option<std::net::IpAddr>) -> bool {
    let probes = witnesses
        .iter()
        .map(|(h, p)| tokio::time::timeout(REACH_WITHIN, reach(h, *p, from)));
    futures::future::join_all(probes)
        .await
        .into_iter()
        .any(|r| r.unwrap_or(false))
}

/// One TCP connect to `host:port` from `from` (when of the same family);
/// true when it connects or is refused.
async fn reach(host: &str, port: u16, from: Option<std::net::IpAddr>) -> bool {
    let Ok(Some(to)) = tokio::net::lookup_host((host, port))
        .await
        .map(|mut a| a.next())
    else {
        return false;
    };
    let Ok(socket) = socket_for(to.ip()) else {
        return false;
    };
    if let Some(ip) = from.filter(|ip| ip.is_ipv4() == to.is_ipv4()) {
        // Not bindable (no longer a local address): send from any.
        let _ = socket.bind(std::net::SocketAddr::new(ip, 0));
    }
    match socket.connect(to).await {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
    }
}

/// A TCP socket of `ip`'s family.
fn socket_for(ip: std::net::IpAddr) -> std::io::Result<tokio::net::TcpSocket> {
    match ip {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
}

/// The node's own address to probe from: `host` resolved, when this host
/// can bind it; `None` (any address) otherwise, and the log says so.
async fn own_address(me: &Node) -> Option<std::net::IpAddr> {
    let ip = tokio::net::lookup_host((me.host.as_str(), 0))
        .await
        .ok()?
        .next()?
        .ip();
    let socket = socket_for(ip).ok()?;
    match socket.bind(std::net::SocketAddr::new(ip, 0)) {
        Ok(()) => Some(ip),
        Err(e) => {
            info!(
                "{}: cannot send from {ip} ({e}): the isolation probes go from any address",
                me.label()
            );
            None
        }
    }
}

/// `pg_ctl stop -m immediate` on the local data directory. A fenced
/// server is one the cluster has moved on from: what it would still write
/// is WAL no standby should take. A fast stop writes a shutdown checkpoint
/// (and ends its segment) and sends it to every walsender still
/// connected, so a standby that had already moved to the new primary's
/// timeline could receive it first and be left past the fork; an
/// immediate stop writes nothing and ends every session at once. The
/// rejoin replays the crash recovery it leaves (pg_rewind does, from 13).
async fn stop_local(topo: &Topology, data: &Path) -> std::result::Result<(), String> {
    let bin = topo.config.postgres.bin_dir.join("pg_ctl");
    let run = tokio::process::Command::new(&bin)
        .arg("-D")
        .arg(data)
        .args(["stop", "-m", "immediate", "-t", "10"])
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(15), run).await {
        Ok(Ok(o)) if o.status.success() => Ok(()),
        Ok(Ok(o)) => Err(format!(
            "{} stop -m immediate exited {}: {}",
            bin.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(Err(e)) => Err(format!("{}: {e}", bin.display())),
        Err(_) => Err(format!(
            "{} stop -m immediate took more than 15s",
            bin.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u32) -> Node {
        Node {
            id,
            host: format!("127.0.0.{}", 10 + id),
            port: 5432,
            data_dir: None,
            ssh_host: format!("127.0.0.{}", 10 + id),
            replication_host: format!("127.0.0.{}", 10 + id),
            application_name: None,
        }
    }

    fn answered(primary: bool, timeline: u32) -> Seen {
        Seen::Answered {
            primary,
            timeline,
            paused: false,
        }
    }

    #[test]
    fn an_old_primary_is_refused_while_pgha_promotes_a_standby_of_its_timeline() {
        // pgha-failover paused node 1's restore_command and asked it to
        // promote, then was killed; node 1 is still a standby on timeline 3.
        let (n1, n2) = (node(1), node(2));
        let paused = Seen::Answered {
            primary: false,
            timeline: 3,
            paused: true,
        };
        let peers = [(&n1, paused), (&n2, answered(false, 3))];
        let v = decide(&node(0), &Local::Primary { timeline: 3 }, &peers);
        let Verdict::Refuse(why) = v else {
            panic!("{v:?}")
        };
        assert!(
            why.contains("the restore_command of node 1 (127.0.0.11:5432) is paused by pgha"),
            "{why}"
        );
        assert!(why.contains("PostgreSQL was not started"), "{why}");
        assert!(why.ends_with("pgha-attach --rejoin 0"), "{why}");
        // Without the pause, the same cluster lets it start.
        let peers = [(&n1, answered(false, 3)), (&n2, answered(false, 3))];
        let v = decide(&node(0), &Local::Primary { timeline: 3 }, &peers);
        assert!(matches!(v, Verdict::Start(_)), "{v:?}");
    }

    #[test]
    fn a_standby_always_starts_without_asking() {
        let v = decide(&node(0), &Local::Standby("standby.signal"), &[]);
        assert!(
            matches!(v, Verdict::Start(ref s) if s.contains("standby.signal")),
            "{v:?}"
        );
    }

    #[test]
    fn an_old_primary_is_refused_when_another_primary_is_on_a_newer_timeline() {
        let (n1, n2) = (node(1), node(2));
        let peers = [(&n1, answered(true, 4)), (&n2, answered(false, 4))];
        let v = decide(&node(0), &Local::Primary { timeline: 3 }, &peers);
        let Verdict::Refuse(why) = v else {
            panic!("{v:?}")
        };
        assert!(
            why.contains("node 1 (127.0.0.11:5432) answers as the primary on timeline 4"),
            "{why}"
        );
        assert!(why.contains("a standby on timeline 4"), "{why}");
        assert!(why.contains("standby of node 1"), "{why}");
        assert!(why.ends_with("pgha-attach --rejoin 0"), "{why}");
    }

    #[test]
    fn a_newer_standby_alone_is_enough_to_refuse() {
        // The new primary is down too, but a standby already follows it.
        let (n1, n2) = (node(1), node(2));
        let peers = [
            (&n1, Seen::Silent("refused".into())),
            (&n2, answered(false, 5)),
        ];
        let v = decide(&node(0), &Local::Primary { timeline: 4 }, &peers);
        let Verdict::Refuse(why) = v else {
            panic!("{v:?}")
        };
        assert!(why.contains("standby of the current primary"), "{why}");
    }

    #[test]
    fn a_running_primary_is_fenced_on_a_newer_timeline_only() {
        let (n1, n2) = (node(1), node(2));
        let same = [(&n1, answered(true, 2)), (&n2, answered(false, 2))];
        assert!(ahead_of(&same, 2, false).is_empty());
        assert_eq!(ahead_of(&same, 2, true).len(), 1);
        let newer = [(&n1, answered(true, 3)), (&n2, Seen::Silent("x".into()))];
        assert_eq!(
            ahead_of(&newer, 2, false),
            ["node 1 (127.0.0.11:5432) answers as the primary on timeline 3"]
        );
    }

    fn topo(pgpool_conf: &str) -> Topology {
        let text = format!(
            "backend_hostname0 = '127.0.0.10'\nbackend_hostname1 = '127.0.0.11'\n{pgpool_conf}"
        );
        let p = crate::pgpool::conf::PgpoolConf::parse(Path::new("pgpool.conf"), &text).unwrap();
        Topology::from_parts(crate::config::Config::default(), p)
    }

    #[test]
    fn pgpools_soonest_detection_leaves_out_the_period() {
        let t = topo(
            "health_check_period = 1\nhealth_check_timeout = 2\nhealth_check_max_retries = 0\n",
        );
        assert_eq!(pgpool_soonest_detection(&t, 0), Duration::from_secs(2));
        // Retries, their delay, and a per-node setting.
        let t = topo(
            "health_check_period = 5\nhealth_check_timeout = 3\nhealth_check_timeout1 = 1\n\
             health_check_max_retries = 2\nhealth_check_retry_delay = 1\n",
        );
        assert_eq!(pgpool_soonest_detection(&t, 0), Duration::from_secs(9 + 2));
        assert_eq!(pgpool_soonest_detection(&t, 1), Duration::from_secs(3 + 2));
        // The health check off: pgpool finds a silent node only through clients.
        assert_eq!(
            pgpool_soonest_detection(&topo(""), 0),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn the_lease_ends_two_rounds_before_a_standby_could_be_promoted() {
        let ms = Duration::from_millis;
        // The lab: detection 2s, liveness 1s, rounds of 250ms + 250ms.
        assert_eq!(isolation_lease(ms(2000), ms(1000), ms(250)), ms(2000));
        // A slow fence interval eats into it, never below one round.
        assert_eq!(isolation_lease(ms(2000), ms(1000), ms(1000)), ms(1250));
        assert_eq!(isolation_lease(ms(1000), ms(100), ms(1000)), ms(1250));
    }

    #[test]
    fn the_witnesses_are_the_other_nodes_and_every_pgpool() {
        let t = topo(
            "listen_addresses = '127.0.0.20'\nport = 9999\n\
             hostname0 = '127.0.0.20'\npgpool_port0 = 9999\nhostname1 = '127.0.0.21'\npgpool_port1 = 9999\n",
        );
        let me = t.nodes[0].clone();
        let w = witnesses(&t, &me);
        let w: Vec<String> = w.iter().map(|(h, p)| format!("{h}:{p}")).collect();
        assert_eq!(w, ["127.0.0.11:5432", "127.0.0.20:9999", "127.0.0.21:9999"]);
        // A wildcard or loopback listen address names no pgpool host.
        let t = topo("listen_addresses = '*'\n");
        assert_eq!(witnesses(&t, &me).len(), 1);
        let t = topo("listen_addresses = 'localhost'\n");
        assert_eq!(witnesses(&t, &me).len(), 1);
    }

    #[test]
    fn a_primary_on_the_same_timeline_is_refused_too() {
        let n1 = node(1);
        let v = decide(
            &node(0),
            &Local::Primary { timeline: 2 },
            &[(&n1, answered(true, 2))],
        );
        assert!(matches!(v, Verdict::Refuse(_)), "{v:?}");
    }

    #[test]
    fn its_own_standbys_and_an_older_primary_let_it_start() {
        // node 2 is a stale primary from before; node 0 is the newer one.
        let (n1, n2) = (node(1), node(2));
        let peers = [(&n1, answered(false, 3)), (&n2, answered(true, 2))];
        let v = decide(&node(0), &Local::Primary { timeline: 3 }, &peers);
        let Verdict::Start(why) = v else {
            panic!("{v:?}")
        };
        assert!(why.contains("2 of 2 other nodes answered"), "{why}");
    }

    #[test]
    fn nobody_answering_lets_it_start_and_says_so() {
        let n1 = node(1);
        let v = decide(
            &node(0),
            &Local::Primary { timeline: 3 },
            &[(&n1, Seen::Silent("timeout".into()))],
        );
        let Verdict::Start(why) = v else {
            panic!("{v:?}")
        };
        assert!(why.contains("no other node answered"), "{why}");
    }

    #[test]
    fn the_newest_history_file_counts() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "00000002.history",
            "0000000A.history",
            "000000030000000000000004",
            "x.history",
        ] {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        assert_eq!(newest_history(d.path()), Some(10));
        assert_eq!(newest_history(&d.path().join("missing")), None);
    }
}
