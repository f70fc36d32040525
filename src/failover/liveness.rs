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

/// The probes, started as early as each can be: SQL and TCP on the failed
/// node's addresses at once, with the observation; from every standby
/// found to list a WAL receiver from the failed node (a receiver's
/// "streaming" lingers for wal_receiver_timeout after its primary went
/// silent), a TCP connect to that address as soon as the other nodes are
/// observed, while the failed node's own answer may still be pending.
struct Early {
    /// `Some(why)`: an address answered.
    answers: Vec<Option<String>>,
    reach: Vec<Reach>,
}

/// What one node's connect check to one address of the failed node said.
struct Reach {
    node: u32,
    addr: String,
    port: u16,
    /// `Some(why)`: it connected, or its check proved nothing.
    alive: Option<String>,
}

/// Run the observations (`own`, the failed node's; `others`, every other
/// node's) with the probes started as [`Early`] says, then judge the failed
/// node's liveness. A killed primary's standbys notice at once and list no
/// receiver: then no ssh connection is opened at all, and nothing competes
/// with the promotion for the CPU.
pub(super) async fn while_observing(
    topo: &Topology,
    remote: &Remote,
    failed: &Node,
    deadline: Instant,
    own: impl std::future::Future<Output = Observed>,
    others: impl std::future::Future<Output = Vec<Observed>>,
) -> (Observed, Vec<Observed>, Liveness) {
    let mut answers = Box::pin(futures::future::join_all(address_probes(topo, failed)));
    let (mut answered, mut own_seen) = (None, None);
    let mut own = std::pin::pin!(own);
    let mut others = std::pin::pin!(others);
    let observed = loop {
        tokio::select! {
            o = &mut others => break o,
            o = &mut own, if own_seen.is_none() => own_seen = Some(o),
            v = &mut answers, if answered.is_none() => answered = Some(v),
        }
    };
    let (own, early) = {
        let mut reach = Box::pin(reach_checks(topo, remote, failed, &observed, deadline));
        let mut reached = None;
        let own = match own_seen {
            Some(o) => o,
            None => loop {
                tokio::select! {
                    o = &mut own => break o,
                    v = &mut answers, if answered.is_none() => answered = Some(v),
                    v = &mut reach, if reached.is_none() => reached = Some(v),
                }
            },
        };
        // A failed node that answers SQL as a primary is alive: the other
        // probes would only delay a planned switchover.
        if own.ok().is_some_and(|s| !s.in_recovery) {
            (own, None)
        } else {
            let answers = match answered {
                Some(v) => v,
                None => answers.await,
            };
            let reach = match reached {
                Some(v) => v,
                None => reach.await,
            };
            (own, Some(Early { answers, reach }))
        }
    };
    let Some(early) = early else {
        let live = Liveness::Alive("it answers SQL as a primary".into());
        return (own, observed, live);
    };
    let live = conclude(topo, remote, failed, &observed, early, deadline).await;
    (own, observed, live)
}

/// How the failed node is asked with SQL: its connect bounded by
/// `failover.liveness_timeout` too (pgpool found it unreachable already).
pub(super) fn failed_target(topo: &Topology, failed: &Node) -> crate::postgres::PgTarget {
    let mut t = topo.pg_target(failed);
    t.connect_timeout = t.connect_timeout.min(topo.config.failover.liveness_timeout);
    t
}

/// The first look again, for a failed node the fence could not stop for
/// sure: every other node observed anew, the failed node's own answer and
/// every probe, by the same rules. `Dead` only when none of them shows it
/// alive now.
pub(super) async fn recheck(
    topo: &Topology,
    remote: &Remote,
    failed: &Node,
    deadline: Instant,
) -> Liveness {
    let own = crate::cluster::observe_with(failed, failed_target(topo, failed));
    let others = futures::future::join_all(
        topo.nodes
            .iter()
            .filter(|n| n.id != failed.id)
            .map(|n| crate::cluster::observe_node(topo, n)),
    );
    let (own, _, live) = while_observing(topo, remote, failed, deadline, own, others).await;
    match (&live, &own.state) {
        (Liveness::Dead, Ok(s)) => Liveness::Alive(format!(
            "it answers SQL as a {}",
            if s.in_recovery { "standby" } else { "primary" }
        )),
        (Liveness::Dead, Err(e)) if own.answered => Liveness::Alive(format!("it answers ({e})")),
        _ => live,
    }
}

/// From every node that lists a WAL receiver from the failed one, a TCP
/// connect to the address it streamed from.
async fn reach_checks(
    topo: &Topology,
    remote: &Remote,
    failed: &Node,
    observed: &[Observed],
    deadline: Instant,
) -> Vec<Reach> {
    let checks = observed.iter().filter_map(|o| {
        let (addr, port) = receiver_from(failed, o)?;
        Some(async move {
            let label = o.node.label();
            let ssh = &o.node.ssh_host;
            let alive = connect_check(topo, remote, ssh, &label, &addr, port, deadline).await;
            Reach {
                node: o.node.id,
                addr,
                port,
                alive,
            }
        })
    });
    futures::future::join_all(checks).await
}

/// Is the failed node perhaps still running? Death must be shown: any
/// answer to the early probes, or from a standby that still lists a WAL
/// receiver from it a connect check that succeeded or proved nothing (one
/// the early probes did not cover is made now), means alive.
async fn conclude(
    topo: &Topology,
    remote: &Remote,
    failed: &Node,
    observed: &[Observed],
    early: Early,
    deadline: Instant,
) -> Liveness {
    if let Some(why) = early.answers.into_iter().flatten().next() {
        return Liveness::Alive(why);
    }
    let mut late: Vec<Probe<'_>> = Vec::new();
    for o in observed {
        let Some((sender, port)) = receiver_from(failed, o) else {
            continue;
        };
        let seen = early
            .reach
            .iter()
            .find(|r| r.node == o.node.id && r.addr == sender && r.port == port);
        match seen {
            Some(r) => {
                if let Some(why) = &r.alive {
                    return Liveness::Alive(why.clone());
                }
            }
            None => late.extend(receiver_probe(topo, remote, failed, o, deadline)),
        }
    }
    futures::future::join_all(late)
        .await
        .into_iter()
        .flatten()
        .next()
        .map(Liveness::Alive)
        .unwrap_or(Liveness::Dead)
}

/// The address and port of the failed node a standby's WAL receiver still
/// says it streams from.
fn receiver_from(failed: &Node, o: &Observed) -> Option<(String, u16)> {
    let r = o.ok().and_then(|s| s.wal_receiver.as_ref())?;
    let sender = r.sender_host.clone()?;
    if !r.streaming() || !failed.addresses().contains(&sender.as_str()) {
        return None;
    }
    Some((sender, r.sender_port.unwrap_or(failed.port)))
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
    topo: &'a Topology,
    remote: &'a Remote,
    failed: &Node,
    o: &'a Observed,
    deadline: Instant,
) -> Option<Probe<'a>> {
    let (sender, port) = receiver_from(failed, o)?;
    let label = o.node.label();
    Some(Box::pin(async move {
        connect_check(
            topo,
            remote,
            &o.node.ssh_host,
            &label,
            &sender,
            port,
            deadline,
        )
        .await
    }))
}

/// From `ssh_host`: a TCP connect to `addr:port`, bounded by
/// `failover.liveness_timeout`. `Some(why)` when it connected or the check
/// proved nothing.
async fn connect_check(
    topo: &Topology,
    remote: &Remote,
    ssh_host: &str,
    label: &str,
    addr: &str,
    port: u16,
    deadline: Instant,
) -> Option<String> {
    let lt = topo.config.failover.liveness_timeout;
    let script = connect_script(addr, port, lt);
    let t = steps::budget(
        deadline,
        topo.config.ssh.connect_timeout + lt + Duration::from_secs(1),
    );
    let at = format!("{addr}:{port}");
    match remote.run_script(ssh_host, &script, t).await {
        Ok(out) => verdict(
            label,
            &at,
            probe_exit(&out.stdout_str()),
            out.stderr_str().trim(),
            lt,
        ),
        Err(e) => Some(format!("{label} could not be asked to check {at} ({e})")),
    }
}

/// The shell a standby runs to check `addr:port`: a fresh connection
/// attempt every [`crate::postgres::SYN_EVERY`] (a lost SYN is resent by
/// the kernel only after a second), each in the background; the first that
/// connects exits 0, the first refused 1, and `timeout` exits 124 (killing
/// the whole process group, pending attempts included) when none answered
/// within `lt`. Its exit status is printed as `rc=N`.
fn connect_script(addr: &str, port: u16, lt: Duration) -> String {
    let every = crate::postgres::SYN_EVERY.as_secs_f64();
    let attempts = format!(
        "trap 'exit 0' USR1; trap 'exit 1' USR2; \
         while :; do \
         ( if : 3<>/dev/tcp/{addr}/{port}; then kill -USR1 $$; else kill -USR2 $$; fi ) >/dev/null 2>&1 & \
         sleep {every:.3}; done"
    );
    format!(
        "timeout {:.3} bash -c {}; echo \"rc=$?\"",
        lt.as_secs_f64(),
        crate::remote::quote(&attempts)
    )
}

/// What the exit of a standby's connect check says. 0: connected; 1:
/// refused or unreachable; 124: no answer in time. Anything else (no bash,
/// no timeout) proves nothing, so the node counts as alive.
fn verdict(from: &str, at: &str, exit: Option<i32>, stderr: &str, lt: Duration) -> Option<String> {
    match exit {
        Some(0) => Some(format!("{from} can still connect to {at}")),
        Some(1 | 124) => {
            info!(
                "{from} cannot connect to {at} within {:.1}s",
                lt.as_secs_f64()
            );
            None
        }
        other => Some(format!(
            "{from}'s check of {at} proved nothing (exit {}: {stderr})",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(script: &str) -> Option<i32> {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .expect("sh runs");
        probe_exit(&String::from_utf8_lossy(&out.stdout))
    }

    /// The standby's connect check: 0 when something listens, 1 when the
    /// port refuses, each well within the bound.
    #[test]
    fn the_connect_script_tells_a_listener_from_a_refusal() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let lt = Duration::from_secs(2);
        let start = std::time::Instant::now();
        assert_eq!(run(&connect_script("127.0.0.1", port, lt)), Some(0));
        drop(l);
        assert_eq!(run(&connect_script("127.0.0.1", port, lt)), Some(1));
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_check_that_proves_nothing_counts_as_alive() {
        let lt = Duration::from_secs(1);
        assert!(verdict("node 1", "a:1", Some(0), "", lt).is_some());
        assert!(verdict("node 1", "a:1", Some(1), "", lt).is_none());
        assert!(verdict("node 1", "a:1", Some(124), "", lt).is_none());
        assert!(verdict("node 1", "a:1", Some(127), "no bash", lt).is_some());
        assert!(verdict("node 1", "a:1", None, "", lt).is_some());
    }
}
