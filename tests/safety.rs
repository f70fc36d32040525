//! The safety rules end to end (README, "Safety rules"), each fault built
//! by the test itself on a real lab, with a split-brain watcher sampling
//! every node every 50 ms and, where writes matter, a writer through
//! pgpool whose acknowledged commits must all survive:
//! - a primary that lives but refuses pgha's login, next to a dead
//!   standby, the recipe's `%d %M %m` form: nothing promoted;
//! - synchronous replication with the lowest-id standby lagging: the
//!   standby holding every acknowledged commit is promoted;
//! - one synchronous standby: writes come back after the failover;
//! - an old primary that came back on an older timeline: refused;
//! - a fence that cannot be proven: refused;
//! - the overall deadline cuts a run off with a report.

use std::time::Duration;

use crate::util::lab::{Lab, LabOptions, role, the_other};
use crate::util::watch::{SplitBrainWatcher, Writer, assert_none_lost};

const T: Duration = Duration::from_secs(30);

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// pgha-failover run by hand on the app host, as pgpool would.
fn failover(lab: &Lab, args: &[&str]) -> std::process::Output {
    let bin = lab.bin("pgha-failover");
    let mut argv = vec![bin.as_str()];
    argv.extend_from_slice(args);
    lab.exec("app", &argv)
}

/// The last line pgha-failover printed about `node` in pgpool's log.
fn final_line_for(lab: &Lab, node: u32) -> Option<String> {
    lab.pgpool_log()
        .lines()
        .filter(|l| l.starts_with("pgha-failover: "))
        .rfind(|l| l.contains(&format!("node {node} (")))
        .map(str::to_string)
}

fn set_failover_option(lab: &Lab, line: &str) {
    let path = lab.host_dir("app").join("etc-pgha/pgha.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen("[failover]\n", &format!("[failover]\n{line}\n"), 1);
    std::fs::write(&path, text).unwrap();
}

/// Scenario 1: the primary is alive and serves pgpool but rejects pgha's
/// own user; a standby dies; pgpool calls `pgha-failover 2 0 0`.
#[test]
fn a_primary_refusing_pghas_login_and_a_dead_standby_promote_nothing() {
    let lab = Lab::up(LabOptions {
        failover_command: Some("@BIN@/pgha-failover %d %M %m".into()),
        ..LabOptions::default()
    });
    let watcher = SplitBrainWatcher::start(&lab);
    let writer = Writer::start(&lab);
    // pgha logs in as postgres over TCP; pgpool and the standbys use
    // other users.
    let hba = lab.host_dir("pg0").join("home/15/main/pg_hba.conf");
    let text = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all postgres 127.0.0.0/8 reject\n{text}"),
    )
    .unwrap();
    lab.psql("pg0", "select pg_reload_conf()");
    let probe = failover(&lab, &["2", "0", "0", "--dry-run"]);
    assert!(
        stderr(&probe).contains("answers, but pgha cannot use it"),
        "pgha must see node 0 alive but refusing: {}",
        stderr(&probe)
    );
    writer.wait_more(&lab, 10, "writes before the fault", T);

    lab.kill_host("pg2");
    let line = lab.wait_observing("pgha-failover's final line for node 2", T, || {
        final_line_for(&lab, 2).ok_or_else(|| lab.pgpool_log())
    });
    assert!(
        line.contains("no promotion") && !line.contains("promoted node"),
        "{line}"
    );
    writer.wait_more(&lab, 10, "writes after the standby died", T);
    assert_eq!(
        role(&lab, "pg0").unwrap(),
        (true, 1),
        "pg0 stays the primary"
    );
    assert!(!role(&lab, "pg1").unwrap().0, "pg1 stays a standby");
    let acked = writer.stop();
    watcher.assert_never_two_primaries();
    assert_none_lost(&lab, "pg0", &acked);
}

/// Scenario 2: `ANY 1` synchronous replication; pg1 (pgpool's new main,
/// the lowest id) stops receiving, pg2 confirms every commit; the primary
/// dies. The default candidate policy must promote pg2.
#[test]
fn synchronous_replication_with_a_lagging_lowest_standby_loses_nothing() {
    let lab = Lab::up(LabOptions {
        sync: true,
        ..LabOptions::default()
    });
    let watcher = SplitBrainWatcher::start(&lab);
    let writer = Writer::start(&lab);
    writer.wait_more(&lab, 5, "writes before the fault", T);
    // Hold back exactly pg1's WAL: stop its walsender on the primary.
    let pid = lab.psql(
        "pg0",
        "select pid from pg_stat_replication where application_name = 'pg1'",
    );
    assert!(!pid.is_empty(), "pg1 streams from pg0");
    let out = lab.exec("pg0", &["kill", "-STOP", &pid]);
    assert!(out.status.success(), "{}", stderr(&out));
    writer.wait_more(&lab, 30, "writes acknowledged by pg2 alone", T);
    let (l1, l2) = (
        lab.psql("pg1", "select pg_last_wal_receive_lsn()"),
        lab.psql("pg2", "select pg_last_wal_receive_lsn()"),
    );
    assert_eq!(
        lab.psql("pg2", &format!("select '{l2}'::pg_lsn > '{l1}'::pg_lsn")),
        "t",
        "pg1 ({l1}) must lag behind pg2 ({l2})"
    );

    lab.kill_host("pg0");
    lab.wait_primary("pg2", 2, T);
    writer.wait_more(&lab, 10, "writes through pgpool after the failover", T);
    lab.wait_streams("pg1", "pg2", 2, T);
    let acked = writer.stop();
    watcher.assert_never_two_primaries();
    assert_none_lost(&lab, "pg2", &acked);
    let log = lab.pgpool_log();
    assert!(
        log.contains("promoting node 2") && log.contains("pgpool's new main node 1 has less WAL"),
        "{log}"
    );
    assert_eq!(role(&lab, "pg1").unwrap(), (false, 2));
}

/// Scenario 3: one standby, synchronous replication on every node: after
/// the failover the new primary's own setting waits for the dead one.
#[test]
fn one_synchronous_standby_writes_come_back_after_the_failover() {
    let lab = Lab::up(LabOptions {
        standbys: 1,
        sync: true,
        ..LabOptions::default()
    });
    assert_eq!(
        lab.psql("pg1", "show synchronous_standby_names"),
        "ANY 1 (pg0,pg1)"
    );
    let watcher = SplitBrainWatcher::start(&lab);
    let writer = Writer::start(&lab);
    writer.wait_more(&lab, 10, "writes before the fault", T);
    lab.kill_host("pg0");
    lab.wait_primary("pg1", 2, T);
    writer.wait_more(&lab, 20, "writes through pgpool after the failover", T);
    let acked = writer.stop();
    watcher.assert_never_two_primaries();
    assert_none_lost(&lab, "pg1", &acked);
    assert_eq!(lab.psql("pg1", "show synchronous_standby_names"), "");
    let line = lab.wait_observing("pgha-failover's final line for node 0", T, || {
        final_line_for(&lab, 0).ok_or_else(|| lab.pgpool_log())
    });
    assert!(
        line.starts_with("pgha-failover: OK:")
            && line.contains("synchronous_standby_names relaxed from 'ANY 1 (pg0,pg1)' to ''"),
        "{line}"
    );
}

/// The same, with `sync_after_promote = "keep"`: the run must not say OK
/// while commits block, and must say how to unblock them.
#[test]
fn keeping_synchronous_replication_reports_blocked_writes() {
    let lab = Lab::up(LabOptions {
        standbys: 1,
        sync: true,
        failover_command: Some("/bin/true".into()),
        ..LabOptions::default()
    });
    set_failover_option(&lab, "sync_after_promote = \"keep\"");
    lab.kill_host("pg0");
    lab.wait_detached(0, T);
    let watcher = SplitBrainWatcher::start(&lab);
    let out = failover(&lab, &["0", "0", "1", "--old-primary", "0"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err
        .lines()
        .rfind(|l| l.starts_with("pgha-failover: "))
        .unwrap_or_default();
    assert!(
        last.starts_with("pgha-failover: FAILED: writes through node 1")
            && last.contains("block")
            && last.contains("synchronous_standby_names = ''"),
        "{err}"
    );
    assert_eq!(
        role(&lab, "pg1").unwrap(),
        (true, 2),
        "promoted all the same"
    );
    assert_eq!(
        lab.psql("pg1", "show synchronous_standby_names"),
        "ANY 1 (pg0,pg1)",
        "kept as configured"
    );
    watcher.assert_never_two_primaries();
}

/// Scenario 4: an old primary that came back on timeline 1 (pgpool keeps
/// it detached) when the real primary, on timeline 2, fails.
#[test]
fn a_stale_old_primary_is_refused_when_the_new_primary_fails() {
    let lab = Lab::up(LabOptions {
        failover_command: Some("/bin/true".into()),
        ..LabOptions::default()
    });
    // pg0's server crashes (its host stays up, to start it again later).
    let o = lab.exec(
        "pg0",
        &[
            "pg_ctl",
            "-D",
            "/var/lib/postgresql/15/main",
            "stop",
            "-m",
            "immediate",
        ],
    );
    assert!(o.status.success(), "crash pg0: {}", stderr(&o));
    lab.wait_detached(0, T);
    let out = failover(&lab, &["0", "0", "1", "--old-primary", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let new = lab.wait_new_primary(2, T);
    let (other, new_id, other_id) = the_other(&new);
    lab.wait_streams(other, &new, 2, T);
    // pg0 comes back as it was: a primary on timeline 1, detached.
    lab.start_pg("pg0");
    assert_eq!(role(&lab, "pg0").unwrap(), (true, 1));
    lab.kill_host(&new);
    lab.wait_detached(new_id, T);
    let watcher = SplitBrainWatcher::start(&lab);
    let (n, o) = (new_id.to_string(), other_id.to_string());
    let (n, o) = (n.as_str(), o.as_str());
    for args in [&[n, "0", o, "--old-primary", n][..], &[n, "0", "0"][..]] {
        let out = failover(&lab, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {err}");
        assert!(
            err.contains("REFUSED")
                && err.contains("node 0 is a primary on timeline 1")
                && err.contains("old primary that came back"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(role(&lab, "pg0").unwrap(), (true, 1), "pg0 untouched");
    assert!(!role(&lab, other).unwrap().0, "{other} not promoted");
    let conninfo = lab.psql(other, "show primary_conninfo");
    assert!(
        !conninfo.contains(&lab.repl_addr("pg0")) && !conninfo.contains(&lab.addr("pg0")),
        "{other} must not be pointed at the stale pg0: {conninfo}"
    );
    watcher.assert_never_two_primaries();
}

/// The fence must be proven: `pg_ctl stop` finding no server in the
/// configured data directory is no proof when the node still answers.
#[test]
fn a_fence_that_cannot_be_proven_promotes_nothing() {
    let lab = Lab::up(LabOptions {
        failover_command: Some("/bin/true".into()),
        ..LabOptions::default()
    });
    // A wrong data directory for node 0 in pgpool.conf (read by pgha): one
    // that looks like a cluster, where pg_ctl finds no server running.
    let decoy = lab.host_dir("pg0").join("home/15/decoy");
    std::fs::create_dir_all(&decoy).unwrap();
    std::fs::write(decoy.join("PG_VERSION"), "15\n").unwrap();
    let conf = lab.host_dir("app").join("etc-pgpool2/pgpool.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        text.replacen(
            "backend_data_directory0 = '/var/lib/postgresql/15/main'",
            "backend_data_directory0 = '/var/lib/postgresql/15/decoy'",
            1,
        ),
    )
    .unwrap();
    let watcher = SplitBrainWatcher::start(&lab);
    let out = failover(&lab, &["0", "0", "1", "--old-primary", "0"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("could not stop the old primary")
            && err.contains("still accept(s) connections")
            && err.contains("backend_data_directory0"),
        "{err}"
    );
    assert!(err.contains("-m immediate"), "escalated: {err}");
    assert_eq!(role(&lab, "pg0").unwrap(), (true, 1), "pg0 untouched");
    assert!(!role(&lab, "pg1").unwrap().0, "nothing promoted");
    watcher.assert_never_two_primaries();
}

/// `failover.deadline` bounds the whole run, whatever the steps' own
/// timeouts add up to, and the report says what was done by then.
#[test]
fn the_overall_deadline_cuts_a_run_off_with_a_report() {
    let lab = Lab::up(LabOptions {
        failover_command: Some("/bin/true".into()),
        ..LabOptions::default()
    });
    lab.kill_host("pg0");
    lab.wait_detached(0, T);
    // pg2 is blackholed after it was seen: its repoint waits for the
    // connect timeout (2s), longer than the whole deadline left.
    let path = lab.host_dir("app").join("etc-pgha/pgha.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("deadline = \"50s\""), "{text}");
    std::fs::write(
        &path,
        text.replace("deadline = \"50s\"", "deadline = \"1500ms\""),
    )
    .unwrap();
    let dark = [lab.addr("pg2"), lab.repl_addr("pg2")];
    for a in &dark {
        lab.blackhole(a);
    }
    let start = std::time::Instant::now();
    let out = failover(&lab, &["0", "0", "1", "--old-primary", "0"]);
    let took = start.elapsed();
    let err = stderr(&out);
    for a in &dark {
        lab.unblackhole(a);
    }
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("failover.deadline (") && err.contains("reached while observing the nodes"),
        "{err}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}: {err}");
}
