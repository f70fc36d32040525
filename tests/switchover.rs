//! Planned switchover end to end (issue 12): `pcp_promote_node -s` with
//! pgha-failover as pgpool's failover_command and no follow command, and
//! `pgha-switchover`, each with a writer through pgpool and the split-brain
//! watcher: no acknowledged write lost, every node attached, the old
//! primary a streaming standby on the new timeline; a switchover back; and
//! refusals that leave the cluster as it was.

use std::time::{Duration, Instant};

use crate::util::lab::{Lab, LabOptions, role, upstream};
use crate::util::watch::{SplitBrainWatcher, Writer, assert_none_lost};

const T: Duration = Duration::from_secs(30);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `pcp_promote_node -s -n NODE` on the app host: what an operator types.
fn pcp_promote(lab: &Lab, node: u32) -> std::process::Output {
    let (app, n) = (lab.addr("app"), node.to_string());
    lab.exec(
        "app",
        &[
            "pcp_promote_node",
            "-w",
            "-s",
            "-h",
            &app,
            "-p",
            "9898",
            "-U",
            "pgpool",
            "-n",
            &n,
        ],
    )
}

/// pgha-switchover on the app host, as postgres (pgpool's user).
fn switchover(lab: &Lab, args: &[&str]) -> std::process::Output {
    let bin = lab.bin("pgha-switchover");
    let mut argv = vec![bin.as_str()];
    argv.extend_from_slice(args);
    lab.exec("app", &argv)
}

/// Waits until pgpool shows every node up, `primary` as the primary.
fn wait_all_attached(lab: &Lab, nodes: u32, primary: u32) {
    for n in 0..nodes {
        let want = if n == primary { "primary" } else { "standby" };
        lab.wait_observing(&format!("pgpool: node {n} up as {want}"), T, || {
            match lab.pcp_node(n) {
                Ok(i) if i.status == "up" && i.role == want => Ok(()),
                other => Err(other),
            }
        });
    }
}

/// Every node but `primary` streams from it on `tl`.
fn wait_all_streaming(lab: &Lab, primary: &str, tl: u32) {
    lab.wait_primary(primary, tl, T);
    for h in lab.pg_hosts() {
        if h != primary {
            lab.wait_streams(&h, primary, tl, T);
        }
    }
}

/// The longest time between two acknowledged writes while `during` runs:
/// the write outage as the application sees it (measured, not waited on).
fn longest_gap<R>(writer: &Writer, during: impl FnOnce() -> R) -> (R, Duration) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let gap = s.spawn(|| {
            let (mut last, mut seen, mut worst) = (Instant::now(), writer.count(), Duration::ZERO);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let c = writer.count();
                if c != seen {
                    worst = worst.max(last.elapsed());
                    (last, seen) = (Instant::now(), c);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            worst
        });
        let r = during();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (r, gap.join().unwrap())
    })
}

/// pgha's progress lines and pgpool's own failover lines, for the timings
/// (`--nocapture` shows them).
fn print_timeline(lab: &Lab) {
    for l in lab.pgpool_log().lines().filter(|l| {
        l.starts_with("pgha-")
            || [
                "execute command",
                "failover done",
                "Failover done",
                "find_primary",
                "promote",
            ]
            .iter()
            .any(|k| l.contains(k))
    }) {
        eprintln!("  | {l}");
    }
}

#[test]
fn pcp_promote_node_switchover_loses_nothing_and_the_old_primary_rejoins() {
    let lab = Lab::up(LabOptions::default());
    let watcher = SplitBrainWatcher::start(&lab);
    let writer = Writer::start(&lab);
    writer.wait_more(&lab, 20, "a few acknowledged writes", T);
    let asked = Instant::now();
    let ((), gap) = longest_gap(&writer, || {
        let out = pcp_promote(&lab, 1);
        assert!(out.status.success(), "{}", text(&out.stderr));
        lab.wait_primary("pg1", 2, T);
        writer.wait_more(&lab, 20, "writes through pgpool to resume", T);
    });
    wait_all_streaming(&lab, "pg1", 2);
    wait_all_attached(&lab, 3, 1);
    eprintln!(
        "pcp_promote_node -s: every node streaming and attached {:.2}s after the request; longest gap between acknowledged writes {:.2}s",
        asked.elapsed().as_secs_f64(),
        gap.as_secs_f64()
    );
    let acked = writer.stop();
    print_timeline(&lab);
    assert_none_lost(&lab, "pg1", &acked);
    let log = lab.pgpool_log();
    assert!(
        log.contains("pgha-failover: OK: switchover from node 0"),
        "{log}"
    );
    let failed = format!("node 0 ({}:5432) failed", lab.addr("pg0"));
    assert!(!log.contains(&failed), "{log}");
    assert!(log.contains("verify: replayed up to"), "{log}");
    // The old primary came back without pg_rewind's work: a clean stop.
    assert!(
        log.contains("no rewind required") || !log.contains("rewound"),
        "{log}"
    );
    watcher.assert_never_two_primaries();
}

#[test]
fn pgha_switchover_moves_the_primary_and_back() {
    let lab = Lab::up(LabOptions::default());
    let watcher = SplitBrainWatcher::start(&lab);
    let writer = Writer::start(&lab);
    writer.wait_more(&lab, 20, "a few acknowledged writes", T);

    let t = Instant::now();
    let (out, gap) = longest_gap(&writer, || switchover(&lab, &["--to", "2"]));
    let took = t.elapsed();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("pgha-switchover: OK: switchover from node 0") && err.contains("to node 2"),
        "{err}"
    );
    // The checkpoint before the request, so the clean stop writes little.
    assert!(err.contains(": checkpoint: checkpoint done"), "{err}");
    // pgha-failover stopped the old primary through the ssh master
    // pgha-switchover lent it (same user): no handshake while writes wait.
    let log = lab.pgpool_log();
    assert!(
        log.contains("node 0 (") && log.contains("ssh through pgha-switchover's connection"),
        "pgha-failover opened its own ssh connection: {log}"
    );
    eprintln!(
        "pgha-switchover --to 2: done in {:.2}s; longest gap between acknowledged writes {:.2}s",
        took.as_secs_f64(),
        gap.as_secs_f64()
    );
    // It returned once all was done: no waiting here.
    assert_eq!(role(&lab, "pg2").unwrap(), (true, 2));
    for h in ["pg0", "pg1"] {
        let (from, tl) = upstream(&lab, h).unwrap_or_else(|| panic!("{h} streams"));
        assert!(
            [lab.addr("pg2"), lab.repl_addr("pg2")].contains(&from) && tl == 2,
            "{h} streams from {from} on {tl}"
        );
    }
    wait_all_attached(&lab, 3, 2);
    writer.wait_more(&lab, 20, "writes after the switchover", T);

    // And back to node 0, the same way.
    let t = Instant::now();
    let (out, gap) = longest_gap(&writer, || switchover(&lab, &["--to", "0"]));
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    eprintln!(
        "pgha-switchover --to 0: done in {:.2}s; longest gap between acknowledged writes {:.2}s",
        t.elapsed().as_secs_f64(),
        gap.as_secs_f64()
    );
    wait_all_streaming(&lab, "pg0", 3);
    wait_all_attached(&lab, 3, 0);
    writer.wait_more(&lab, 20, "writes after the switchover back", T);
    let acked = writer.stop();
    assert_none_lost(&lab, "pg0", &acked);
    watcher.assert_never_two_primaries();
}

/// The cluster is what it was: pg0 primary on timeline 1, both standbys
/// streaming from it, everything attached.
fn assert_unchanged(lab: &Lab) {
    assert_eq!(role(lab, "pg0").unwrap(), (true, 1));
    wait_all_streaming(lab, "pg0", 1);
    wait_all_attached(lab, 3, 0);
}

#[test]
fn refusals_change_nothing() {
    let lab = Lab::up(LabOptions::default());
    let watcher = SplitBrainWatcher::start(&lab);

    let out = switchover(&lab, &["--dry-run"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("plan (nothing changed): switch the primary from node 0"),
        "{err}"
    );

    // A failover running (its lock held on this host).
    let bin = lab.bin("pgha-switchover");
    let out = lab.sh(
        "app",
        &format!(
            "mkdir -p /var/lib/postgresql/pgha && exec flock /var/lib/postgresql/pgha/failover.lock {bin} --to 1"
        ),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("a failover is running"), "{err}");

    // A lagging target: pg0's walsender for pg1 stopped while pg0 writes.
    let pid = lab.psql(
        "pg0",
        "select pid from pg_stat_replication where application_name = 'pg1'",
    );
    assert!(!pid.is_empty(), "pg1's walsender on pg0");
    lab.sh("pg0", &format!("kill -STOP {pid}"));
    lab.psql(
        "pg0",
        "create table filler as select g, repeat('x', 100) from generate_series(1, 20000) g",
    );
    let out = switchover(&lab, &["--to", "1", "--max-lag", "65536"]);
    lab.sh("pg0", &format!("kill -CONT {pid}"));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("node 1 lags") && err.contains("--max-lag 65536"),
        "{err}"
    );
    assert_unchanged(&lab);

    // A missing standby.
    let stop = lab.sh(
        "pg2",
        "pg_ctl -D /var/lib/postgresql/15/main stop -m fast -w >/dev/null",
    );
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    // pgpool notices the stopped standby and runs pgha-failover for it,
    // which pgha-switchover refuses to run beside ("a failover is
    // running"): wait until that is over, to test the missing standby.
    lab.wait_detached(2, T);
    lab.wait_until("pgha-failover for node 2 to end", T, || {
        let free = lab.sh(
            "app",
            "flock -n /var/lib/postgresql/pgha/failover.lock true",
        );
        free.status.success().then_some(())
    });
    let out = switchover(&lab, &["--to", "1"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("node 2 does not answer") || err.contains("pgpool has node 2 detached"),
        "{err}"
    );
    assert_eq!(
        role(&lab, "pg0").unwrap(),
        (true, 1),
        "pg0 still the primary"
    );
    assert!(!role(&lab, "pg1").unwrap().0, "pg1 still a standby");
    lab.wait_observing("pgpool: node 0 up as primary", T, || {
        match lab.pcp_node(0) {
            Ok(i) if i.status == "up" && i.role == "primary" => Ok(()),
            other => Err(other),
        }
    });
    watcher.assert_never_two_primaries();
}

/// A switchover whose candidate cannot be shown to hold the old primary's
/// last WAL record (its replay paused, so it never replays past the
/// shutdown checkpoint) is aborted after the clean stop: nothing is
/// promoted, the old primary runs again as the primary it was, and once
/// attached back (as the refusal says) the cluster is as it was, with no
/// acknowledged write lost.
#[test]
fn a_switchover_aborted_after_the_stop_leaves_the_cluster_as_it_was() {
    let lab = Lab::up(LabOptions::default());
    let watcher = SplitBrainWatcher::start(&lab);
    let writer = Writer::start(&lab);
    writer.wait_more(&lab, 10, "writes before the switchover", T);
    assert_eq!(lab.psql("pg1", "select pg_wal_replay_pause()"), "");

    let out = pcp_promote(&lab, 1);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = lab.wait_observing("pgha-failover's refusal of the switchover", T, || {
        let log = lab.pgpool_log();
        match log
            .lines()
            .find(|l| l.contains("switchover aborted, nothing promoted"))
        {
            Some(l) => Ok(l.to_string()),
            None => Err(log.lines().rev().take(5).collect::<Vec<_>>().join("\n")),
        }
    });
    assert!(
        line.contains("REFUSED") && line.contains("pcp_attach_node -n 0"),
        "{line}"
    );
    assert_eq!(
        role(&lab, "pg0").unwrap(),
        (true, 1),
        "pg0 the primary again"
    );
    assert!(!role(&lab, "pg1").unwrap().0, "pg1 still a standby");

    assert_eq!(lab.psql("pg1", "select pg_wal_replay_resume()"), "");
    let app = lab.addr("app");
    let attach = lab.exec(
        "app",
        &[
            "pcp_attach_node",
            "-w",
            "-h",
            &app,
            "-p",
            "9898",
            "-U",
            "pgpool",
            "-n",
            "0",
        ],
    );
    assert!(attach.status.success(), "{}", text(&attach.stderr));
    assert_unchanged(&lab);
    writer.wait_more(&lab, 10, "writes through pgpool after the abort", T);
    let acked = writer.stop();
    assert_none_lost(&lab, "pg0", &acked);
    watcher.assert_never_two_primaries();
}

/// Found by the fault campaign: with PostgreSQL's default `wal_keep_size
/// = 0` and no slot, the shutdown of a switchover switches to a new WAL
/// segment and its checkpoint removes the archived one while a walsender
/// still sends its tail ("requested WAL segment ... has already been
/// removed"); the standbys never get the shutdown checkpoint and the
/// switchover is aborted (two of the first four campaign switchovers).
/// The race needs a walsender still behind when the archiver has copied
/// the switched segment; this lab does not make it on demand (three legs
/// without the fix passed here), so the test holds pgha to the
/// protection: each leg starts right after `pg_switch_wal()` (the
/// shutdown's switch then leaves a nearly whole segment to send),
/// pgha-failover raises wal_keep_size for each stop in the running server
/// only, three switchovers in a row succeed, and the old primaries come
/// back with the operator's wal_keep_size.
#[test]
fn a_switchover_on_postgresql_defaults_keeps_the_wal_its_walsenders_send() {
    let lab = Lab::up(LabOptions {
        wal_keep_size: Some("0"),
        ..LabOptions::default()
    });
    let watcher = SplitBrainWatcher::start(&lab);
    let writer = Writer::start(&lab);
    writer.wait_more(&lab, 20, "a few acknowledged writes", T);
    let mut from = "pg0".to_string();
    for (tl, to) in [(2, 2u32), (3, 0), (4, 1)] {
        lab.psql(&from, "select pg_switch_wal()");
        writer.wait_more(&lab, 5, "writes in the new segment", T);
        let out = switchover(&lab, &["--to", &to.to_string()]);
        let err = text(&out.stderr);
        if !out.status.success() {
            print_timeline(&lab);
        }
        assert!(
            out.status.success(),
            "switchover from {from} to node {to}: {err}"
        );
        let new = format!("pg{to}");
        wait_all_streaming(&lab, &new, tl);
        wait_all_attached(&lab, 3, to);
        // Back with the operator's value: nothing was left in
        // postgresql.auto.conf.
        assert_eq!(
            lab.psql(&from, "show wal_keep_size"),
            "0",
            "{from} after the switchover"
        );
        writer.wait_more(&lab, 20, "writes after the switchover", T);
        from = new;
    }
    let log = lab.pgpool_log();
    assert!(
        log.matches("keep_wal: wal_keep_size raised from 0MB")
            .count()
            >= 3,
        "pgha-failover raised wal_keep_size for each stop:\n{log}"
    );
    let acked = writer.stop();
    assert_none_lost(&lab, "pg1", &acked);
    watcher.assert_never_two_primaries();
}
