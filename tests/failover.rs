//! pgha-failover end to end: real pgpool-II running it as failover_command,
//! real PostgreSQL servers, real sshd; assertions on what the cluster is
//! afterwards (roles, timelines, upstreams, rows, pgpool's node status).

use std::time::{Duration, Instant};

use crate::util::lab::{Lab, LabOptions, role, settle_pid, the_other, upstream};
use crate::util::watch::{SplitBrainWatcher, Writer, assert_none_lost};

const T: Duration = Duration::from_secs(30);

fn wait_pcp_up(lab: &Lab, node: u32, role: &str) {
    lab.wait_observing(
        &format!("pgpool: node {node} up as {role}"),
        T,
        || match lab.pcp_node(node) {
            Ok(n) if n.status == "up" && n.role == role => Ok(()),
            other => Err(other),
        },
    );
}

/// pgha-failover run by hand on the app host, as pgpool would (user postgres).
fn failover(lab: &Lab, args: &[&str], env: &[(&str, &str)]) -> (std::process::Output, Duration) {
    let bin = lab.bin("pgha-failover");
    let mut argv: Vec<String> = vec!["env".into()];
    argv.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    argv.push(bin);
    argv.extend(args.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let t = Instant::now();
    let out = lab.exec("app", &argv);
    (out, t.elapsed())
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn promotions(lab: &Lab) -> usize {
    lab.journal()
        .iter()
        .filter(|e| e["step"] == "promote" && e["outcome"] == "done")
        .count()
}

/// Change a [failover] setting of the lab's pgha.toml (on the app host).
fn set_failover_option(lab: &Lab, line: &str) {
    let path = lab.host_dir("app").join("etc-pgha/pgha.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen("[failover]\n", &format!("[failover]\n{line}\n"), 1);
    std::fs::write(&path, text).unwrap();
}

/// A lab whose pgpool only detaches (failover_command does nothing), so the
/// test runs pgha-failover itself.
fn passive_lab(standbys: u32) -> Lab {
    Lab::up(LabOptions {
        standbys,
        failover_command: Some("/bin/true".into()),
        ..LabOptions::default()
    })
}

fn kill_primary_and_wait_detached(lab: &Lab) {
    lab.kill_host("pg0");
    lab.wait_detached(0, T);
}

#[test]
fn primary_killed_pgpool_fails_over_and_no_acknowledged_write_is_lost() {
    let lab = Lab::up(LabOptions {
        sync: true,
        ..LabOptions::default()
    });
    let watcher = SplitBrainWatcher::start(&lab);
    // With synchronous replication (ANY 1), only the most advanced standby
    // is sure to hold every acknowledged commit.
    set_failover_option(&lab, "candidate = \"most_advanced\"");
    // A writer through pgpool records every id whose commit was acknowledged.
    let writer = Writer::start(&lab);
    writer.wait_more(&lab, 20, "a few acknowledged writes", T);
    let killed = Instant::now();
    lab.kill_host("pg0");
    writer.wait_more(&lab, 20, "writes through pgpool to resume", T);
    eprintln!(
        "writes resumed {:.2}s after the kill",
        killed.elapsed().as_secs_f64()
    );
    let acked = writer.stop();

    let new = lab.wait_new_primary(2, T);
    let (other, new_id, other_id) = the_other(&new);
    lab.wait_streams(other, &new, 2, T);
    wait_pcp_up(&lab, new_id, "primary");
    wait_pcp_up(&lab, other_id, "standby");
    assert_eq!(lab.pcp_node(0).unwrap().status, "down");

    assert_none_lost(&lab, &new, &acked);
    lab.pgpool_sql("insert into acked values (1000000)")
        .unwrap();
    assert_eq!(
        lab.try_psql_db(other, "app", "select 1").unwrap(),
        "1",
        "the other standby answers"
    );
    // The new timeline's history file was put in the other standby's archive.
    lab.wait_until("00000002.history in the standby's archive", T, || {
        lab.host_dir(other)
            .join("home/archive/00000002.history")
            .exists()
            .then_some(())
    });
    let log = lab.pgpool_log();
    assert!(log.contains("pgha-failover: OK:"), "{log}");
    assert_eq!(promotions(&lab), 1);
    // The journal reads like data: the promote and repoint entries carry
    // the timeline and the upstream as fields.
    let j = lab.journal();
    let entry = |step: &str| {
        j.iter()
            .find(|e| e["step"] == step && e["outcome"] == "done")
    };
    let promote = entry("promote").expect("a promote entry");
    assert_eq!(promote["timeline"], 2, "{promote}");
    let repoint = entry("repoint").expect("a repoint entry");
    assert_eq!(repoint["upstream"], new_id, "{repoint}");
    assert_eq!(repoint["timeline"], 2, "{repoint}");
    // A commit may wait for the other standby (ANY 1 lists it): it was
    // repointed before pgpool was told, by the run pgpool waited for.
    let main = j
        .iter()
        .find(|e| e["step"] == "run" && e["phase"] == "main")
        .expect("the main run's line");
    assert_eq!(repoint["pid"], main["pid"], "{repoint}");
    assert!(!log.contains("in the background (no commit waits"), "{log}");
    watcher.assert_never_two_primaries();
}

#[test]
fn rerun_changes_nothing_and_standby_failure_promotes_nothing() {
    let lab = Lab::up(LabOptions::default());
    let watcher = SplitBrainWatcher::start(&lab);
    lab.kill_host("pg0");
    let new = lab.wait_new_primary(2, T);
    let (other, new_id, other_id) = the_other(&new);
    lab.wait_streams(other, &new, 2, T);
    wait_pcp_up(&lab, other_id, "standby");
    // Asynchronous replication: no commit waits for the other standby, so
    // pgpool did not wait for its repoint either; the detached phase did it.
    let log = lab.pgpool_log();
    assert!(
        log.contains(&format!("repointing node {other_id} in the background")),
        "{log}"
    );
    let settle = lab.wait_until("the detached phase's run line", T, || {
        lab.journal()
            .into_iter()
            .find(|e| e["step"] == "run" && e["phase"] == "settle")
    });
    let j = lab.journal();
    let repoint = j
        .iter()
        .find(|e| e["step"] == "repoint" && e["node"] == other_id && e["outcome"] == "done")
        .expect("a repoint entry for the other standby");
    assert_eq!(
        repoint["pid"], settle["pid"],
        "repointed by the detached phase: {repoint}"
    );
    assert_eq!(repoint["upstream"], new_id, "{repoint}");

    // The same call again: nothing to do, and it says so.
    let (out, _) = failover(
        &lab,
        &["0", "0", &new_id.to_string(), "--old-primary", "0"],
        &[],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("already the primary"), "{err}");
    assert!(err.contains("already streams from it"), "{err}");
    assert_eq!(role(&lab, &new).unwrap(), (true, 2));
    assert_eq!(role(&lab, other).unwrap(), (false, 2));
    assert_eq!(promotions(&lab), 1);

    // Now a standby dies: pgpool calls pgha-failover for it; no promotion.
    lab.kill_host(other);
    let call = format!("standby node {other_id}");
    lab.wait_until(&format!("pgpool's call for node {other_id}"), T, || {
        lab.pgpool_log().contains(&call).then_some(())
    });
    let log = lab.pgpool_log();
    assert!(log.contains("failed: recorded, no promotion"), "{log}");
    assert_eq!(role(&lab, &new).unwrap(), (true, 2));
    assert_eq!(promotions(&lab), 1);
    lab.pgpool_sql("create table still_writable(x int)")
        .unwrap();
    watcher.assert_never_two_primaries();
}

#[test]
fn no_node_alive_does_nothing() {
    let lab = passive_lab(1);
    let (out, _) = failover(&lab, &["0", "0", "-1"], &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("no live node") && err.contains("nothing to promote"),
        "{err}"
    );
    assert_eq!(role(&lab, "pg0").unwrap(), (true, 1));
    assert_eq!(role(&lab, "pg1").unwrap(), (false, 1));
    assert!(lab.journal().is_empty());
}

#[test]
fn concurrent_runs_promote_once() {
    let lab = passive_lab(2);
    let watcher = SplitBrainWatcher::start(&lab);
    kill_primary_and_wait_detached(&lab);
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let name = lab.name.clone();
            let bin = lab.bin("pgha-failover");
            std::thread::spawn(move || {
                std::process::Command::new(crate::util::lab::lab_sh())
                    .args(["exec", &name, "app", "--", &bin, "0", "0", "1"])
                    .output()
                    .unwrap()
            })
        })
        .collect();
    for r in runs {
        let out = r.join().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let new = lab.wait_new_primary(2, Duration::ZERO);
    let (other, _, _) = the_other(&new);
    assert!(!role(&lab, other).unwrap().0, "one primary: {new}");
    lab.wait_streams(other, &new, 2, T);
    assert_eq!(promotions(&lab), 1);
    watcher.assert_never_two_primaries();
}

/// Two pgpool hosts' runs for the same failure: their lock files cannot
/// see each other (here: two state directories), so the cluster claim on
/// the nodes must serialise them. The second waits, then finds the first's
/// primary and promotes nothing.
#[test]
fn runs_from_two_hosts_promote_once() {
    let lab = passive_lab(2);
    let watcher = SplitBrainWatcher::start(&lab);
    let etc = lab.host_dir("app").join("etc-pgha");
    let toml = std::fs::read_to_string(etc.join("pgha.toml")).unwrap();
    let other = toml.replace("/var/lib/postgresql/pgha\"", "/var/lib/postgresql/pgha-b\"");
    assert_ne!(toml, other, "the lab's pgha.toml sets state_dir");
    std::fs::write(etc.join("pgha-b.toml"), other).unwrap();
    kill_primary_and_wait_detached(&lab);
    let held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1885825121 AND objid = 1 AND granted";
    let at = &lab;
    let (first, second) = std::thread::scope(|s| {
        let first = s.spawn(move || {
            failover(
                at,
                &["0", "0", "1", "--old-primary", "0"],
                &[("PGHA_FAULT", "delay-claimed:3000")],
            )
            .0
        });
        at.wait_until("the first run holds the cluster claim on pg1", T, || {
            (at.psql("pg1", held) == "1").then_some(())
        });
        let b = [
            "0",
            "0",
            "2",
            "--old-primary",
            "0",
            "--config",
            "/etc/pgha/pgha-b.toml",
        ];
        let second = s.spawn(move || failover(at, &b, &[]).0);
        (first.join().unwrap(), second.join().unwrap())
    });
    assert!(first.status.success(), "{}", stderr(&first));
    let err = stderr(&second);
    assert!(second.status.success(), "{err}");
    assert!(
        err.contains("waiting for the cluster claim: node 1's session pid"),
        "{err}"
    );
    assert!(
        err.contains("pgha-failover 0 via pgpool"),
        "the holder is named: {err}"
    );
    assert!(err.contains("already"), "the second run converges: {err}");
    let new = lab.wait_new_primary(2, Duration::ZERO);
    let (other, _, _) = the_other(&new);
    assert!(!role(&lab, other).unwrap().0, "{other} was not promoted");
    lab.wait_streams(other, &new, 2, T);
    let b = lab.journal_in("pgha-b");
    let step = |name: &str, outcome: &str| {
        b.iter()
            .any(|e| e["step"] == name && e["outcome"] == outcome)
    };
    assert!(
        !step("promote", "done"),
        "the second run promoted nothing: {b:?}"
    );
    assert!(step("claim", "done"), "the wait is in its journal: {b:?}");
    assert_eq!(promotions(&lab), 1);
    watcher.assert_never_two_primaries();
}

#[test]
fn blackholed_standby_costs_its_timeout_and_the_others_still_follow() {
    let lab = passive_lab(3);
    let watcher = SplitBrainWatcher::start(&lab);
    kill_primary_and_wait_detached(&lab);
    let dark = lab.addr("pg3");
    lab.blackhole(&dark);
    lab.blackhole(&lab.repl_addr("pg3"));
    let (out, took) = failover(&lab, &["0", "0", "1"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "a step failed: {err}");
    // The run's own last line (the detached settle phase may print after it).
    let last = err
        .lines()
        .rfind(|l| l.starts_with("pgha-failover: "))
        .unwrap_or_default();
    assert!(last.starts_with("pgha-failover: FAILED: "), "{err}");
    assert!(
        last.contains(&dark),
        "the last line names the blackholed host: {last}"
    );
    // The lab's connect timeout is 2 s; the deadline is 50 s.
    assert!(took < Duration::from_secs(15), "took {took:?}: {err}");
    let new = lab.wait_new_primary(2, Duration::ZERO);
    lab.wait_streams(the_other(&new).0, &new, 2, T);
    watcher.assert_never_two_primaries();
}

#[test]
fn pgpool_cut_off_from_the_primary_never_makes_two_primaries() {
    let lab = Lab::up(LabOptions::default());
    let watcher = SplitBrainWatcher::start(&lab);
    // pgpool (and pgha on its host) lose pg0's address; the standbys keep
    // streaming from pg0's replication address.
    lab.blackhole(&lab.addr("pg0"));
    lab.wait_until(
        "pgpool's failover of node 0",
        Duration::from_secs(60),
        || lab.pgpool_log().contains("pgha-failover: ").then_some(()),
    );
    let new = lab.wait_new_primary(2, T);
    lab.wait_streams(the_other(&new).0, &new, 2, T);
    watcher.assert_never_two_primaries();
    let log = lab.pgpool_log();
    assert!(log.contains("may still be alive"), "{log}");
    assert!(log.contains("fencing node 0"), "{log}");
    assert!(role(&lab, "pg0").is_err(), "the old primary was stopped");
}

#[test]
fn most_advanced_picks_the_standby_with_more_wal() {
    let lab = Lab::up(LabOptions::default());
    let watcher = SplitBrainWatcher::start(&lab);
    set_failover_option(&lab, "candidate = \"most_advanced\"");
    // pg1 stops receiving; pg2 gets more WAL.
    lab.psql("pg1", "alter system set primary_conninfo = ''");
    lab.psql("pg1", "select pg_reload_conf()");
    lab.wait_until("pg1 to stop streaming", T, || {
        upstream(&lab, "pg1").is_none().then_some(())
    });
    lab.psql(
        "pg0",
        "create table more(x int); insert into more select generate_series(1, 1000)",
    );
    let lsn = lab.psql("pg0", "select pg_current_wal_lsn()");
    lab.wait_until("pg2 to receive it", T, || {
        let r = lab.psql(
            "pg2",
            &format!("select pg_last_wal_receive_lsn() >= '{lsn}'"),
        );
        (r == "t").then_some(())
    });
    lab.kill_host("pg0");
    lab.wait_primary("pg2", 2, T);
    assert_eq!(lab.psql("pg2", "select count(*) from more"), "1000");
    let log = lab.pgpool_log();
    assert!(
        log.contains("promoting node 2") && log.contains("most advanced"),
        "{log}"
    );
    // pg1 had no primary_conninfo at all; it now follows pg2.
    lab.wait_streams("pg1", "pg2", 2, T);
    assert_eq!(lab.psql("pg1", "select count(*) from more"), "1000");
    watcher.assert_never_two_primaries();
}

#[test]
fn killed_after_promotion_the_rerun_finishes_the_job() {
    let lab = passive_lab(2);
    let watcher = SplitBrainWatcher::start(&lab);
    kill_primary_and_wait_detached(&lab);
    let (out, _) = failover(
        &lab,
        &["0", "0", "1"],
        &[("PGHA_FAULT", "crash-after:promote")],
    );
    assert!(
        !out.status.success(),
        "the fault killed it: {}",
        stderr(&out)
    );
    let new = lab.wait_new_primary(2, Duration::ZERO);
    let (other, _, other_id) = the_other(&new);
    assert!(
        upstream(&lab, other).is_none_or(|(_, tl)| tl == 1),
        "{other} not repointed yet"
    );

    let (out, _) = failover(&lab, &["0", "0", "1"], &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("already the primary"), "{err}");
    assert!(
        err.contains(&format!("node {other_id}")) && err.contains("repointed"),
        "{err}"
    );
    lab.wait_streams(other, &new, 2, T);
    assert_eq!(role(&lab, &new).unwrap(), (true, 2), "no second promotion");
    assert_eq!(promotions(&lab), 1);
    wait_pcp_up(&lab, other_id, "standby");
    watcher.assert_never_two_primaries();
}

/// Killed between the promote and putting back the candidate's
/// restore_command (paused so that a promote request is not held by an scp
/// to the dead host's archive): the new primary is left with the paused
/// command, which still names the one it stands for, and the rerun puts
/// it back, pointed at the new primary's own archive. Found by the fault
/// campaign: a new primary left without one could not be rewound later
/// ("restore_command is not set in the target cluster").
#[test]
fn killed_while_promoting_the_rerun_puts_restore_command_back() {
    let lab = passive_lab(2);
    let old = lab.psql("pg1", "show restore_command");
    assert!(old.contains(&lab.repl_addr("pg0")), "scp layout: {old}");
    kill_primary_and_wait_detached(&lab);
    let (out, _) = failover(
        &lab,
        &["0", "0", "1"],
        &[("PGHA_FAULT", "crash-after:promoting")],
    );
    assert!(
        !out.status.success(),
        "the fault killed it: {}",
        stderr(&out)
    );
    let new = lab.wait_new_primary(2, Duration::ZERO);
    let paused = lab.psql(&new, "show restore_command");
    assert!(
        paused.starts_with("exit 1 # paused by pgha") && paused.contains(&lab.repl_addr("pg0")),
        "{paused}"
    );

    let (out, _) = failover(&lab, &["0", "0", "1"], &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("already the primary") && err.contains("restore_command put back"),
        "{err}"
    );
    let own = lab.psql(&new, "show restore_command");
    assert_eq!(
        own,
        old.replace(&lab.repl_addr("pg0"), &lab.repl_addr(&new)),
        "its own archive's command"
    );
    let (other, _, _) = the_other(&new);
    lab.wait_streams(other, &new, 2, T);
    let theirs = lab.psql(other, "show restore_command");
    assert_eq!(theirs, own, "{other} fetches from {new}'s archive");
    assert!(
        lab.journal()
            .iter()
            .any(|l| l["step"] == "restore_command" && l["outcome"] == "done"),
        "the journal has the step"
    );
    assert_eq!(promotions(&lab), 1);
}

/// Killed after pausing the candidate's restore_command, before its
/// promote request was handled, and the old primary's host back at once:
/// the start guard sees no newer timeline yet, only the paused command, and
/// keeps the old primary down. Found by the fault campaign (seed 5, three
/// pgpools): pgha-failover killed 0.08 s into its run, the old host
/// restarted a second later and started as the primary it was, and the
/// candidate, which handles a promote request only between restore_command
/// attempts, became a second primary 1 s after that.
#[test]
fn killed_before_the_promotion_the_old_primary_back_is_refused_until_the_rerun() {
    let lab = passive_lab(2);
    let watcher = SplitBrainWatcher::start(&lab);
    kill_primary_and_wait_detached(&lab);
    let (out, _) = failover(
        &lab,
        &["0", "0", "1"],
        &[("PGHA_FAULT", "crash-after:paused")],
    );
    assert!(
        !out.status.success(),
        "the fault killed it: {}",
        stderr(&out)
    );
    assert!(!role(&lab, "pg1").unwrap().0, "not promoted");
    let paused = lab.psql("pg1", "show restore_command");
    assert!(paused.starts_with("exit 1 # paused by pgha"), "{paused}");

    let o = lab.restart_host("pg0");
    let err = stderr(&o);
    assert!(
        err.contains("REFUSED")
            && err.contains(&format!(
                "the restore_command of node 1 ({}:5432) is paused by pgha",
                lab.addr("pg1")
            ))
            && err.contains("PostgreSQL was not started")
            && err.contains("then pgha-attach --rejoin 0"),
        "{err}"
    );
    assert!(
        role(&lab, "pg0").is_err(),
        "pg0 runs after the guard refused it"
    );

    let (out, _) = failover(&lab, &["0", "0", "1"], &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(role(&lab, "pg1").unwrap(), (true, 2));
    crate::follow::pgha(&lab, "pgha-attach", &["--rejoin", "0"])
        .success()
        .stderr_contains("attached");
    lab.wait_streams("pg0", "pg1", 2, T);
    lab.wait_streams("pg2", "pg1", 2, T);
    assert_eq!(promotions(&lab), 1);
    watcher.assert_never_two_primaries();
}

/// A switchover (the old primary still answers) whose candidate is
/// promoted by someone else while it waits for the shutdown checkpoint:
/// the old primary, stopped cleanly, stays stopped instead of being started
/// again as a second primary. Found by the fault campaign: a rerun of a
/// killed pgha-failover took the old primary restarted meanwhile for a
/// switchover, and the promote request of the killed run was handled
/// while it verified.
#[test]
fn a_switchover_whose_candidate_was_promoted_meanwhile_leaves_the_old_primary_stopped() {
    let lab = passive_lab(2);
    let watcher = SplitBrainWatcher::start(&lab);
    let bin = lab.bin("pgha-failover");
    let argv = ["env", "PGHA_FAULT=delay-verify:3000", &bin, "0", "0", "1"];
    let (out, ()) = std::thread::scope(|s| {
        let run = s.spawn(|| lab.exec("app", &argv));
        lab.wait_observing("the switchover to stop pg0", T, || {
            match role(&lab, "pg0") {
                Err(e) => Ok(e),
                Ok(r) => Err(r),
            }
        });
        let o = lab.exec(
            "pg1",
            &[
                "pg_ctl",
                "-D",
                "/var/lib/postgresql/15/main",
                "promote",
                "-w",
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (run.join().unwrap(), ())
    });
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("node 1 (")
            && err.contains("is no longer a standby")
            && err.contains("node 0 (")
            && err.contains("stays stopped")
            && err.contains("pgha-attach --rejoin 0"),
        "{err}"
    );
    assert!(role(&lab, "pg0").is_err(), "pg0 was started again: {err}");
    assert!(role(&lab, "pg1").unwrap().0, "pg1 is the primary");
    crate::follow::pgha(&lab, "pgha-attach", &["--rejoin", "0"])
        .success()
        .stderr_contains("attached");
    lab.wait_streams("pg0", "pg1", 2, T);
    assert_eq!(promotions(&lab), 0, "this run promoted nothing");
    watcher.assert_never_two_primaries();
}

#[test]
fn bad_input_changes_nothing() {
    let lab = passive_lab(1);
    let (out, _) = failover(&lab, &["0", "1"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let (out, _) = failover(&lab, &["7", "0", "1"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown node id 7"),
        "{}",
        stderr(&out)
    );
    let (out, _) = failover(
        &lab,
        &["0", "0", "1", "--config", "/nonexistent/pgha.toml"],
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/nonexistent/pgha.toml"),
        "{}",
        stderr(&out)
    );
    assert_eq!(role(&lab, "pg0").unwrap(), (true, 1));
    assert_eq!(role(&lab, "pg1").unwrap(), (false, 1));
    assert!(lab.journal().is_empty(), "nothing recorded");
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let lab = passive_lab(2);
    kill_primary_and_wait_detached(&lab);
    let (out, _) = failover(&lab, &["0", "0", "1", "--dry-run", "--json"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["outcome"], "dry_run", "{summary}");
    assert_eq!(summary["plan"]["action"], "promote", "{summary}");
    // pg1 unless pg2 received more WAL before pg0 died.
    let candidate = summary["plan"]["candidate"].as_u64().unwrap_or_default();
    assert!([1, 2].contains(&candidate), "{summary}");
    assert!(
        stderr(&out).contains(&format!("plan (nothing changed): promote node {candidate}")),
        "{}",
        stderr(&out)
    );
    assert!(!role(&lab, "pg1").unwrap().0, "pg1 is still a standby");
    assert!(!role(&lab, "pg2").unwrap().0);
    assert!(lab.journal().is_empty(), "a dry run records nothing");
}

#[test]
fn a_primary_that_still_answers_is_stopped_first_or_left_alone() {
    // pgpool is told the primary failed while pgha still reaches it (as
    // when only pgpool's own path broke).
    let lab = passive_lab(2);
    let watcher = SplitBrainWatcher::start(&lab);
    set_failover_option(&lab, "fence = \"abort\"");
    let (out, _) = failover(&lab, &["0", "0", "1"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("REFUSED") && err.contains("may still be alive"),
        "{err}"
    );
    assert_eq!(role(&lab, "pg0").unwrap(), (true, 1), "untouched");
    assert_eq!(role(&lab, "pg1").unwrap(), (false, 1), "untouched");

    // The default policy hands over as a planned switchover (issue 12):
    // a clean stop over ssh, proof that pg1 has its last WAL, promotion,
    // and the old primary back as a standby.
    let path = lab.host_dir("app").join("etc-pgha/pgha.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("fence = \"abort\"\n", "")).unwrap();
    let (out, _) = failover(&lab, &["0", "0", "1"], &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("stop: switchover: stopped (-m fast)") && err.contains("verify: replayed"),
        "{err}"
    );
    assert_eq!(role(&lab, "pg1").unwrap(), (true, 2));
    lab.wait_streams("pg2", "pg1", 2, T);
    lab.wait_streams("pg0", "pg1", 2, T);
    watcher.assert_never_two_primaries();
}

/// A primary behind a lossy link: only every 10th SYN sent to it gets
/// through (connections already open are untouched). One connection
/// attempt per probe would mostly meet a dropped SYN, which the kernel
/// resends only after a second, and take the live primary for dead; a
/// fresh attempt every 100 ms finds it alive every time.
#[test]
fn a_primary_behind_a_lossy_link_is_never_taken_for_dead() {
    let lab = passive_lab(2);
    set_failover_option(&lab, "fence = \"abort\"");
    for addr in [lab.addr("pg0"), lab.repl_addr("pg0")] {
        lab.syn_loss(&addr, Some(10));
    }
    for run in 1..=3 {
        let (out, took) = failover(&lab, &["0", "0", "1"], &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(4), "run {run}: {err}");
        assert!(
            err.contains("REFUSED") && err.contains("may still be alive"),
            "run {run}: {err}"
        );
        eprintln!("run {run}: refused as alive in {:.2}s", took.as_secs_f64());
    }
    for addr in [lab.addr("pg0"), lab.repl_addr("pg0")] {
        lab.syn_loss(&addr, None);
    }
    assert_eq!(role(&lab, "pg0").unwrap(), (true, 1), "pg0 untouched");
    assert_eq!(role(&lab, "pg1").unwrap(), (false, 1), "nothing promoted");
}

/// The detached settle phase keeps none of the descriptors pgpool's child
/// had (its listening sockets among them): pgpool restarted while it runs
/// binds its ports again, and the standbys are still attached.
#[test]
fn the_settle_phase_holds_no_pgpool_socket_and_pgpool_restarts_meanwhile() {
    let lab = Lab::up(LabOptions {
        failover_command: Some(
            "env PGHA_FAULT=delay-settle:8000 @BIN@/pgha-failover %d %M %m --old-primary %P".into(),
        ),
        ..LabOptions::default()
    });
    let watcher = SplitBrainWatcher::start(&lab);
    lab.kill_host("pg0");
    let pid = lab.wait_observing("the settle phase to start", T, || {
        settle_pid(&lab.pgpool_log()).ok_or(())
    });
    let fds = |pid: &str| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read_link(e.path()).ok())
                    .map(|p| p.display().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let pgpool_pid = std::fs::read_to_string(lab.host_dir("app").join("run/pgpool.pid")).unwrap();
    // pgpool writes its pid padded with NULs.
    let pgpool_pid: String = pgpool_pid
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let pgpool_fds = fds(&pgpool_pid);
    let pgpool_sockets: Vec<&String> = pgpool_fds
        .iter()
        .filter(|f| f.starts_with("socket:"))
        .collect();
    assert!(!pgpool_sockets.is_empty(), "pgpool listens: {pgpool_fds:?}");
    let mine = fds(&pid.to_string());
    assert!(!mine.is_empty(), "the settle phase (pid {pid}) runs");
    let shared: Vec<&String> = mine.iter().filter(|f| pgpool_sockets.contains(f)).collect();
    assert!(
        shared.is_empty(),
        "settle (pid {pid}) holds pgpool's sockets {shared:?}: {mine:?}"
    );
    assert!(
        !mine
            .iter()
            .any(|f| f.contains("pool_passwd") || f.contains("pgpool.conf")),
        "settle (pid {pid}) holds pgpool's files: {mine:?}"
    );
    // pgpool restarts while settle still sleeps.
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    lab.start_pgpool();
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "settle still runs after the restart"
    );
    let new = lab.wait_new_primary(2, T);
    let (other, _, other_id) = the_other(&new);
    lab.wait_streams(other, &new, 2, T);
    wait_pcp_up(&lab, other_id, "standby");
    lab.pgpool_sql("create table after_restart(x int)").unwrap();
    watcher.assert_never_two_primaries();
}
