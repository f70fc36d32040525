//! Observers that run beside a fault: a split-brain watcher that asks every
//! node whether it is writable every 50 ms, and a writer that inserts
//! through pgpool and remembers every commit that was acknowledged.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::lab::{Lab, lab_sh};

/// Samples every PostgreSQL node of a lab every 50 ms, all at once, over a
/// persistent connection each (as user `pgpool`, which the lab trusts from
/// loopback, on the replication address first: pgha's own login may be
/// refused by a test, and the main address may be blackholed), and records
/// every sample in which two nodes were writable primaries at once.
pub struct SplitBrainWatcher {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(u64, Vec<String>)>>,
}

impl SplitBrainWatcher {
    pub fn start(lab: &Lab) -> SplitBrainWatcher {
        let stop = Arc::new(AtomicBool::new(false));
        let hosts: Vec<(String, Vec<String>)> = lab
            .pg_hosts()
            .into_iter()
            .map(|h| {
                let addrs = vec![lab.repl_addr(&h), lab.addr(&h)];
                (h, addrs)
            })
            .collect();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime for the watcher");
            rt.block_on(watch(hosts, flag))
        });
        SplitBrainWatcher {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops sampling; panics if two nodes were ever writable at once, or
    /// if no sample was taken at all.
    pub fn assert_never_two_primaries(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let (samples, overlaps) = self
            .handle
            .take()
            .expect("joined once")
            .join()
            .expect("the watcher thread panicked");
        assert!(samples > 0, "the split-brain watcher took no sample");
        assert!(
            overlaps.is_empty(),
            "two writable primaries at once, in {} of {samples} samples: {:?}",
            overlaps.len(),
            &overlaps[..overlaps.len().min(5)]
        );
        eprintln!("split-brain watcher: {samples} samples, never two primaries");
    }
}

impl Drop for SplitBrainWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

const SAMPLE_EVERY: Duration = Duration::from_millis(50);
const ASK_WITHIN: Duration = Duration::from_millis(300);

async fn watch(hosts: Vec<(String, Vec<String>)>, stop: Arc<AtomicBool>) -> (u64, Vec<String>) {
    let mut clients: Vec<Option<tokio_postgres::Client>> = hosts.iter().map(|_| None).collect();
    let mut overlaps = Vec::new();
    let mut samples = 0u64;
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        let asks = hosts
            .iter()
            .zip(clients.iter_mut())
            .map(|((_, addrs), client)| ask(addrs, client));
        let writable: Vec<bool> = futures::future::join_all(asks).await;
        samples += 1;
        let names: Vec<&str> = hosts
            .iter()
            .zip(&writable)
            .filter(|(_, w)| **w)
            .map(|((h, _), _)| h.as_str())
            .collect();
        if names.len() > 1 {
            overlaps.push(format!(
                "{:.2}s: {} writable",
                start.elapsed().as_secs_f64(),
                names.join(" and ")
            ));
        }
        tokio::time::sleep(SAMPLE_EVERY.saturating_sub(round.elapsed())).await;
    }
    (samples, overlaps)
}

/// Whether the node is a writable primary right now; unreachable counts as
/// not writable (it cannot take writes from anyone either).
async fn ask(addrs: &[String], client: &mut Option<tokio_postgres::Client>) -> bool {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = None;
        for a in addrs {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host(a)
                .port(5432)
                .user("pgpool")
                .dbname("postgres")
                .application_name("split-brain-watcher")
                .connect_timeout(ASK_WITHIN);
            if let Ok(Ok((c, conn))) =
                tokio::time::timeout(ASK_WITHIN, cfg.connect(tokio_postgres::NoTls)).await
            {
                tokio::spawn(conn);
                *client = Some(c);
                break;
            }
        }
    }
    let Some(c) = client.as_ref() else {
        return false;
    };
    match tokio::time::timeout(ASK_WITHIN, c.query_one("select pg_is_in_recovery()", &[])).await {
        Ok(Ok(row)) => !row.get::<_, bool>(0),
        _ => {
            *client = None;
            false
        }
    }
}

/// Inserts increasing ids into table `acked` of database `app` through
/// pgpool, one `psql` per insert (a new client connection each, as
/// short-lived application sessions do), and records the ids whose commit
/// returned success.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u32>>>,
    handle: Option<JoinHandle<()>>,
}

impl Writer {
    /// Creates the table (through pgpool) and starts writing.
    pub fn start(lab: &Lab) -> Writer {
        Writer::start_on(lab, "app")
    }

    /// The same through the pgpool of pgpool host `host` (`app`, `app1`,
    /// ... in a lab with several).
    pub fn start_on(lab: &Lab, host: &str) -> Writer {
        lab.pgpool_sql_on(host, "create table if not exists acked(id int primary key)")
            .unwrap();
        let acked = Arc::new(Mutex::new(Vec::<u32>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (acked, stop) = (acked.clone(), stop.clone());
            let (name, host) = (lab.name.clone(), host.to_string());
            let app = lab.addr(&host);
            std::thread::spawn(move || {
                let mut id = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    id += 1;
                    let sql = format!("insert into acked values ({id})");
                    let out = std::process::Command::new(lab_sh())
                        .args([
                            "exec", &name, &host, "--", "timeout", "20", "psql", "-X", "-q",
                        ])
                        .args(["-h", &app, "-p", "9999", "-U", "app", "-d", "app"])
                        .args(["-v", "ON_ERROR_STOP=1", "-c", &sql])
                        .output();
                    if out.is_ok_and(|o| o.status.success()) {
                        acked.lock().unwrap().push(id);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Writer {
            stop,
            acked,
            handle: Some(handle),
        }
    }

    /// How many commits were acknowledged so far.
    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `n` more commits than now are acknowledged: writes flow.
    pub fn wait_more(&self, lab: &Lab, n: usize, what: &str, timeout: Duration) {
        let before = self.count();
        lab.wait_until(what, timeout, || (self.count() >= before + n).then_some(()));
    }

    /// Stops writing and returns every acknowledged id.
    pub fn stop(mut self) -> Vec<u32> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("the writer thread panicked");
        }
        self.acked.lock().unwrap().clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Asserts that every acknowledged id is in table `acked` on `host` (the
/// primary the cluster ended with).
pub fn assert_none_lost(lab: &Lab, host: &str, acked: &[u32]) {
    let have: BTreeSet<u32> = lab
        .try_psql_db(host, "app", "select id from acked")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let lost: Vec<&u32> = acked.iter().filter(|i| !have.contains(i)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes missing on {host}: {lost:?}",
        lost.len(),
        acked.len()
    );
    eprintln!("{} acknowledged writes, none lost on {host}", acked.len());
}
