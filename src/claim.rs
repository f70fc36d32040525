//! The cluster claim: one pgha run changes the nodes' roles at a time,
//! whichever pgpool host it runs on.
//!
//! Under pgpool's watchdog a new leader runs `failover_command` again for
//! the same node while the old leader's pgha may still be running on its
//! own host, where no lock file of this host can see it. So the claim lives
//! in the cluster itself: a session advisory lock, `pg_try_advisory_lock`
//! of [`KEY`], taken on every node that answers (the failed one aside) and
//! held by the open sessions for as long as the run acts. Advisory locks
//! work on hot standbys and survive a promotion. A second run waits until
//! the first lets go, then observes afresh through the same sessions and
//! finds what the first did (a primary already promoted: it converges, and
//! nothing is promoted twice).
//!
//! A run whose host dies cannot leave the claim behind for long: its
//! sessions ask the server for TCP keepalives and a user timeout, so the
//! server drops them, and the lock, within seconds (on loopback at once).
//! The claim is taken in one round (all or none, released on a partial
//! take), so two runs cannot hold halves of it and wait on each other.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};
use tracing::{info, warn};

use crate::cluster::{self, Node, Observed, Topology};
use crate::error::{Error, Result};
use crate::postgres::{self, PgError, PgTarget};

/// The advisory lock's two keys: "pgha" in ASCII, then 1 for the roles.
pub const KEY: (i32, i32) = (0x7067_6861, 1);

/// Server-side settings of a claim session: the server notices a dead
/// holder after about 2 + 3 × 1 s of silence, or 5 s of unacknowledged data.
const SESSION_SETUP: &str = "SET tcp_keepalives_idle = 2; SET tcp_keepalives_interval = 1; \
     SET tcp_keepalives_count = 3; SET tcp_user_timeout = 5000";

/// The claim, held while this value lives (dropping it closes the
/// sessions, which releases the locks).
pub struct Claim {
    sessions: BTreeMap<u32, (Client, PgTarget)>,
    /// Nodes that could not be connected to, with why and how long it took.
    unreachable: BTreeMap<u32, (PgError, Duration)>,
    /// How long this run waited for another run's claim (zero when none
    /// held it).
    pub waited: Duration,
}

impl Claim {
    /// Takes the claim on every node but `except`, waiting for another run
    /// to let go until `deadline`; REFUSED (nothing changed) at the
    /// deadline, naming the session that holds it.
    pub async fn take(topo: &Topology, except: u32, who: &str, deadline: Instant) -> Result<Claim> {
        let start = Instant::now();
        let nodes: Vec<&Node> = topo.nodes.iter().filter(|n| n.id != except).collect();
        let mut claim = Claim::connect(topo, &nodes, who).await;
        let mut said = false;
        loop {
            let held_by = match claim.try_all().await {
                None => break,
                Some(holder) => holder,
            };
            if !said {
                warn!("waiting for the cluster claim: {held_by}");
                said = true;
            }
            if Instant::now() + pause() >= deadline {
                return Err(Error::Refused(format!(
                    "another pgha run holds the cluster claim after {:.1}s of waiting: {held_by}; nothing changed here. If no pgha run is going (pgha-check --status shows the runs), end that session with pg_terminate_backend(pid) on that node and run this again",
                    start.elapsed().as_secs_f64()
                )));
            }
            tokio::time::sleep(pause()).await;
        }
        if said {
            claim.waited = start.elapsed();
            info!(
                "took the cluster claim after waiting {:.2}s",
                claim.waited.as_secs_f64()
            );
        }
        Ok(claim)
    }

    async fn connect(topo: &Topology, nodes: &[&Node], who: &str) -> Claim {
        let tries = nodes.iter().map(|n| async move {
            let mut t = topo.pg_target(n);
            t.application_name = who.chars().take(63).collect();
            let start = Instant::now();
            let r = match postgres::connect(&t).await {
                Ok(c) => setup(&c, &t).await.map(|()| c),
                Err(e) => Err(e),
            };
            (n.id, r.map(|c| (c, t)), start.elapsed())
        });
        let mut claim = Claim {
            sessions: BTreeMap::new(),
            unreachable: BTreeMap::new(),
            waited: Duration::ZERO,
        };
        for (id, r, took) in futures::future::join_all(tries).await {
            match r {
                Ok(s) => {
                    claim.sessions.insert(id, s);
                }
                Err(e) => {
                    claim.unreachable.insert(id, (e, took));
                }
            }
        }
        claim
    }

    /// One round: the lock on every session, or none and who holds it.
    /// A session that fails here is given up (the node is then observed
    /// as unreachable).
    async fn try_all(&mut self) -> Option<String> {
        let tries = self
            .sessions
            .iter()
            .map(|(id, (c, t))| async move { (*id, try_lock(c, t).await) });
        let results = futures::future::join_all(tries).await;
        let (mut busy, mut got) = (None, Vec::new());
        for (id, r) in results {
            match r {
                Ok(true) => got.push(id),
                Ok(false) => busy = busy.or(Some(id)),
                Err(e) => {
                    // Dropping the session closes it.
                    self.sessions.remove(&id);
                    self.unreachable.insert(id, (e, Duration::ZERO));
                }
            }
        }
        let busy = busy?;
        for id in got {
            if let Some((c, t)) = self.sessions.get(&id) {
                let _ = unlock(c, t).await;
            }
        }
        let (c, t) = &self.sessions[&busy];
        Some(holder(c, t, busy).await)
    }

    /// The claim's open session to node `id`, if it connected.
    pub fn session(&self, id: u32) -> Option<(&Client, &PgTarget)> {
        self.sessions.get(&id).map(|(c, t)| (c, t))
    }

    /// Why node `id` could not be connected to, if it could not.
    pub fn unreachable(&self, id: u32) -> Option<&(PgError, Duration)> {
        self.unreachable.get(&id)
    }
}

impl Claim {
    /// Observe `node` through the claim's session (no second connect);
    /// a node the claim could not reach is observed as that failure.
    pub async fn observe(&self, topo: &Topology, node: &Node) -> Observed {
        let start = Instant::now();
        let (state, answered) = match (self.session(node.id), self.unreachable(node.id)) {
            (Some((c, t)), _) => match postgres::observe(c, t).await {
                Ok(s) => (Ok(s), true),
                Err(e) => (Err(e.to_string()), e.answered()),
            },
            (None, Some((e, took))) => {
                return Observed {
                    node: node.clone(),
                    state: Err(e.to_string()),
                    answered: e.answered(),
                    took: *took,
                };
            }
            (None, None) => return cluster::observe_node(topo, node).await,
        };
        Observed {
            node: node.clone(),
            state,
            answered,
            took: start.elapsed(),
        }
    }
}

/// 100 to 300 ms, different in each run, so two runs that keep meeting
/// part again.
fn pause() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_millis(100 + u64::from(nanos % 200))
}

async fn setup(c: &Client, t: &PgTarget) -> std::result::Result<(), PgError> {
    let what = "SET tcp_keepalives_* (claim session)";
    postgres::bounded(c, t, what, t.query_timeout, c.batch_execute(SESSION_SETUP)).await
}

async fn try_lock(c: &Client, t: &PgTarget) -> std::result::Result<bool, PgError> {
    let sql = format!("SELECT pg_try_advisory_lock({}, {})", KEY.0, KEY.1);
    let rows = postgres::bounded(
        c,
        t,
        "pg_try_advisory_lock",
        t.query_timeout,
        c.simple_query(&sql),
    )
    .await?;
    Ok(first_value(&rows).as_deref() == Some("t"))
}

async fn unlock(c: &Client, t: &PgTarget) -> std::result::Result<(), PgError> {
    let sql = format!("SELECT pg_advisory_unlock({}, {})", KEY.0, KEY.1);
    postgres::bounded(
        c,
        t,
        "pg_advisory_unlock",
        t.query_timeout,
        c.batch_execute(&sql),
    )
    .await
}

/// Who holds the claim on node `id`, from `pg_locks` and
/// `pg_stat_activity` there.
async fn holder(c: &Client, t: &PgTarget, id: u32) -> String {
    let sql = format!(
        "SELECT a.pid || ' ' || coalesce(host(a.client_addr), 'local') || ' ' || \
         extract(epoch FROM now() - a.backend_start)::int || ' ' || a.application_name \
         FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE l.locktype = 'advisory' AND l.classid = {} AND l.objid = {} AND l.granted LIMIT 1",
        KEY.0 as u32, KEY.1
    );
    let rows = postgres::bounded(
        c,
        t,
        "who holds the claim",
        t.query_timeout,
        c.simple_query(&sql),
    )
    .await;
    match rows.ok().as_deref().and_then(first_value) {
        Some(v) => describe_holder(id, &v),
        None => format!("held on node {id} by a session that ended meanwhile"),
    }
}

/// "pid addr seconds application_name" as one sentence.
fn describe_holder(id: u32, v: &str) -> String {
    let mut f = v.splitn(4, ' ');
    let (pid, addr, secs, app) = (
        f.next().unwrap_or("?"),
        f.next().unwrap_or("?"),
        f.next().unwrap_or("?"),
        f.next().unwrap_or(""),
    );
    format!("node {id}'s session pid {pid} from {addr} ('{app}', for {secs}s) holds it")
}

fn first_value(rows: &[SimpleQueryMessage]) -> Option<String> {
    rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_reads_as_a_sentence() {
        let s = describe_holder(
            2,
            "4711 127.0.0.1 3 pgha-failover via pgpool 127.0.101.21:9999",
        );
        assert_eq!(
            s,
            "node 2's session pid 4711 from 127.0.0.1 ('pgha-failover via pgpool 127.0.101.21:9999', for 3s) holds it"
        );
    }

    #[test]
    fn pauses_stay_between_100_and_300_ms() {
        for _ in 0..50 {
            let p = pause();
            assert!(p >= Duration::from_millis(100) && p < Duration::from_millis(300));
        }
    }

    #[test]
    fn the_key_spells_pgha() {
        assert_eq!(&KEY.0.to_be_bytes(), b"pgha");
    }
}
