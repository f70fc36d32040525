//! Is the failed node perhaps still running? Death must be shown: every
//! probe runs at once, each bounded by `failover.liveness_timeout`, and any
//! answer (or a probe that cannot be made) means alive.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tracing::info;

use crate::cluster::{Node, Observed, Topology};
use crate::plan::Liveness;
use crate::remote::Remote;
use crate::steps;

/// A probe: `Some(why)` when it found the node alive.
type Probe<'a> = BoxFuture<'a, Option<String>>;

/// SQL on the failed node's other addresses (the replication network may
/// still reach it), a TCP connect to every address (a hung or paused
/// server still completes the handshake), and, from each standby that
/// still lists a WAL receiver from it, a TCP connect to its port (a
/// receiver's "streaming" lingers for wal_receiver_timeout after its
/// primary went silent).
pub(super) async fn probe(
    topo: &Topology,
    remote: &Remote,
    failed: &Node,
    observed: &[Observed],
    deadline: Instant,
) -> Liveness {
    let mut probes = address_probes(topo, failed);
    probes.extend(
        observed
            .iter()
            .filter_map(|o| receiver_probe(topo, remote, failed, o, deadline)),
    );
    futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .next()
        .map(Liveness::Alive)
        .unwrap_or(Liveness::Dead)
}

/// TCP on every address of the failed node, SQL on those it was not asked
/// on already.
fn address_probes<'a>(topo: &Topology, failed: &'a Node) -> Vec<Probe<'a>> {
    let lt = topo.config.failover.liveness_timeout;
    let mut probes: Vec<Probe<'a>> = Vec::new();
    for addr in failed.addresses() {
        let port = failed.port;
        probes.push(Box::pin(async move {
            crate::postgres::tcp_accepts(addr, port, lt)
                .await
                .then(|| format!("{addr}:{port} still accepts TCP connections"))
        }));
        if addr == failed.host {
            continue; // asked with SQL there already
        }
        let mut t = topo.pg_target_at(failed, addr);
        t.connect_timeout = t.connect_timeout.min(lt);
        probes.push(Box::pin(async move {
            match crate::postgres::observe_target(&t).await {
                Ok(s) => Some(format!(
                    "it answers SQL on {addr}:{port} as a {}",
                    if s.in_recovery { "standby" } else { "primary" }
                )),
                Err(e) if e.answered() => Some(format!("it answers on {addr}:{port} ({e})")),
                Err(_) => None,
            }
        }));
    }
    probes
}

/// From a standby whose WAL receiver still says it streams from the failed
/// node: can it still connect to the failed node's port?
fn receiver_probe<'a>(
    topo: &Topology,
    remote: &'a Remote,
    failed: &Node,
    o: &Observed,
    deadline: Instant,
) -> Option<Probe<'a>> {
    let r = o.ok().and_then(|s| s.wal_receiver.as_ref())?;
    let sender = r.sender_host.clone()?;
    if !r.streaming() || !failed.addresses().contains(&sender.as_str()) {
        return None;
    }
    let lt = topo.config.failover.liveness_timeout;
    let port = r.sender_port.unwrap_or(failed.port);
    let script = format!(
        "timeout {:.3} bash -c {}; echo \"rc=$?\"",
        lt.as_secs_f64(),
        crate::remote::quote(&format!("exec 3<>/dev/tcp/{sender}/{port}"))
    );
    let t = steps::budget(
        deadline,
        topo.config.ssh.connect_timeout + lt + Duration::from_secs(1),
    );
    let label = o.node.label();
    let ssh_host = o.node.ssh_host.clone();
    Some(Box::pin(async move {
        let from = format!("{label} lists a WAL receiver from it and");
        let at = format!("{sender}:{port}");
        match remote.run_script(&ssh_host, &script, t).await {
            Ok(out) => verdict(
                &from,
                &at,
                probe_exit(&out.stdout_str()),
                out.stderr_str().trim(),
                lt,
            ),
            Err(e) => Some(format!("{from} could not be asked to check ({e})")),
        }
    }))
}

/// What the exit of a standby's connect check says. 0: connected; 1:
/// refused or unreachable; 124: no answer in time. Anything else (no bash,
/// no timeout) proves nothing, so the node counts as alive.
fn verdict(from: &str, at: &str, exit: Option<i32>, stderr: &str, lt: Duration) -> Option<String> {
    match exit {
        Some(0) => Some(format!("{from} can still connect to {at}")),
        Some(1 | 124) => {
            info!(
                "{from} cannot connect to {at} within {:.1}s: taking it as gone",
                lt.as_secs_f64()
            );
            None
        }
        other => Some(format!(
            "{from} its check of {at} proved nothing (exit {}: {stderr})",
            other.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
        )),
    }
}

/// The exit status a liveness script reported on its last `rc=N` line.
fn probe_exit(stdout: &str) -> Option<i32> {
    stdout
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("rc="))
        .and_then(|c| c.parse().ok())
}
