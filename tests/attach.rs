//! pgha-attach end to end: an old primary that comes back by itself after
//! a failover is refused (nothing changes, pgpool keeps writing to the new
//! primary only); `--rejoin` makes it a standby of the new primary with
//! every row written since; bad targets (no such node, the primary
//! itself, an unreachable node) are refused and left untouched; every
//! command run twice ends in the same state and says there is nothing to
//! do.

use crate::follow::{
    T, assert_follows, in_recovery, pgha, primary_timeline, started_at, upstream, wait_row,
    write_through_pgpool,
};
use crate::util::lab::{Lab, LabOptions};
use crate::util::watch::SplitBrainWatcher;

/// pg0 and one standby (so that pg1 is the one promoted; with two, the one
/// with more WAL would be), with `pgha-check --fence` on every node when
/// `fence` (pgha-fence.service), and a table with a row on both.
fn two_node_lab(fence: bool) -> Lab {
    let lab = Lab::up(LabOptions {
        standbys: 1,
        fence,
        ..LabOptions::default()
    });
    lab.pgpool_sql("create table rows (v text primary key)")
        .unwrap();
    lab.pgpool_sql("insert into rows values ('before')")
        .unwrap();
    wait_row(&lab, "pg1", "rows", "before");
    lab
}

/// pg0's server crashes (immediate stop); its host and sshd stay.
fn crash_pg0(lab: &Lab) {
    let data = "/var/lib/postgresql/15/main";
    let o = lab.exec("pg0", &["pg_ctl", "-D", data, "stop", "-m", "immediate"]);
    assert!(
        o.status.success(),
        "crash pg0: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Whether a server runs on pg0's data directory (`pg_ctl status` exit 0;
/// 3 is none).
fn pg0_runs(lab: &Lab) -> bool {
    let data = "/var/lib/postgresql/15/main";
    let code = lab
        .exec("pg0", &["pg_ctl", "-D", data, "status"])
        .status
        .code();
    assert!(
        matches!(code, Some(0 | 3)),
        "pg_ctl status on pg0 exited {code:?}"
    );
    code == Some(0)
}

/// A lab after pg0's server crashed (immediate stop: its host and sshd
/// stay), pgpool failed over to pg1 with pgha-failover, and pg0 was
/// started again by itself: a zombie primary on the old timeline with WAL
/// the new primary never had (its end-of-recovery checkpoint). One
/// standby, so that pg1 is the one promoted (with two, the one with more
/// WAL would be).
fn zombie_lab() -> Lab {
    let lab = two_node_lab(false);
    crash_pg0(&lab);
    write_through_pgpool(&lab, "insert into rows values ('after-failover')");
    lab.wait_observing("pgpool: pg1 primary, pg0 down", T, || {
        let (p0, p1) = (lab.pcp_node(0)?, lab.pcp_node(1)?);
        if p1.role == "primary" && p1.status == "up" && p0.status == "down" {
            Ok(())
        } else {
            Err(format!("{} / {}", p0.raw, p1.raw))
        }
    });
    assert!(!in_recovery(&lab, "pg1"));
    lab.start_pg("pg0");
    assert!(
        !in_recovery(&lab, "pg0"),
        "pg0 should be back as a (zombie) primary"
    );
    lab
}

/// Writes go to pg1 only: a row written through pgpool is on pg1 and never
/// on pg0.
fn assert_writes_go_to_pg1_only(lab: &Lab, v: &str) {
    lab.pgpool_sql(&format!("insert into rows values ('{v}')"))
        .unwrap();
    let q = format!("select count(*) from rows where v = '{v}'");
    assert_eq!(
        lab.try_psql_db("pg1", "app", &q).as_deref(),
        Ok("1"),
        "{v} is not on pg1"
    );
    assert_eq!(
        lab.try_psql_db("pg0", "app", &q).as_deref(),
        Ok("0"),
        "{v} reached the zombie pg0"
    );
}

#[test]
fn zombie_old_primary_is_refused_and_nothing_changes() {
    let lab = zombie_lab();
    let started = started_at(&lab, "pg0");
    let r = pgha(&lab, "pgha-attach", &["0"]);
    r.code(4)
        .stderr_contains("REFUSED")
        .stderr_contains("an old primary that came back")
        .stderr_contains("pgha-attach --rejoin 0");
    // pgha-follow without [follow] rejoin_old_primary leaves it alone too.
    pgha(
        &lab,
        "pgha-follow",
        &["0", "--new-primary", "1", "--old-primary", "0"],
    )
    .code(4)
    .stderr_contains("rejoin_old_primary is off");
    // --dry-run of a refusal is a refusal too (exit 4), for both commands.
    pgha(&lab, "pgha-attach", &["0", "--dry-run"])
        .code(4)
        .stderr_contains("REFUSED: plan (nothing changed)");
    pgha(
        &lab,
        "pgha-follow",
        &["0", "--new-primary", "1", "--old-primary", "0", "--dry-run"],
    )
    .code(4)
    .stderr_contains("REFUSED: plan (nothing changed)");
    // --dry-run of the rejoin says what it would do, and does nothing.
    pgha(&lab, "pgha-attach", &["--rejoin", "0", "--dry-run"])
        .success()
        .stderr_contains("plan (nothing changed)")
        .stderr_contains("rewind it from node 1");
    // Nothing changed: pg0 still the same primary process on timeline 1,
    // detached in pgpool; pgpool routes writes to pg1 only.
    assert_eq!(started_at(&lab, "pg0"), started, "pg0 was restarted");
    assert!(!in_recovery(&lab, "pg0"));
    assert_eq!(primary_timeline(&lab, "pg0"), 1);
    let info = lab.pcp_node(0).unwrap();
    assert_eq!(info.status, "down", "{}", info.raw);
    assert_eq!(lab.pcp_node(1).unwrap().role, "primary");
    assert_writes_go_to_pg1_only(&lab, "while-zombie");
    assert!(
        !lab.journal()
            .iter()
            .any(|e| e["command"] == "attach" && e["outcome"] == "done" && e["step"] != "observe"),
        "pgha-attach recorded an action: {:?}",
        lab.journal()
    );
}

#[test]
fn rejoin_makes_the_old_primary_a_standby_with_every_row() {
    let lab = zombie_lab();
    lab.pgpool_sql("insert into rows values ('after-1'), ('after-2')")
        .unwrap();
    let r = pgha(&lab, "pgha-attach", &["--rejoin", "0"]);
    r.success()
        .stderr_contains("rewound")
        .stderr_contains("attached");
    let tl = primary_timeline(&lab, "pg1");
    assert_eq!(tl, 2);
    assert_follows(&lab, "pg0", "pg1", tl);
    // Every row written since the failover is on it, and new ones arrive.
    lab.pgpool_sql("insert into rows values ('after-rejoin')")
        .unwrap();
    wait_row(&lab, "pg0", "rows", "after-rejoin");
    for v in ["before", "after-failover", "after-1", "after-2"] {
        let q = format!("select count(*) from rows where v = '{v}'");
        assert_eq!(
            lab.try_psql_db("pg0", "app", &q).as_deref(),
            Ok("1"),
            "{v} missing on pg0"
        );
    }
    // Its own configuration survived pg_rewind (which copies pg1's
    // postgresql.auto.conf, whose primary_conninfo pointed at pg0 itself).
    let auto = std::fs::read_to_string(
        lab.host_dir("pg0")
            .join("home/15/main/postgresql.auto.conf"),
    )
    .unwrap();
    assert!(
        auto.contains(&format!("host=''{}''", lab.repl_addr("pg1")))
            && !auto.contains(&lab.repl_addr("pg0")),
        "{auto}"
    );
    let j = lab.journal();
    for step in ["stop", "rewind", "configure", "start", "attach"] {
        assert!(
            j.iter()
                .any(|e| e["command"] == "attach" && e["step"] == step && e["node"] == 0),
            "journal lacks {step}: {j:?}"
        );
    }

    // Twice: the same end state, nothing done, nothing restarted.
    let started = started_at(&lab, "pg0");
    pgha(&lab, "pgha-attach", &["--rejoin", "0"])
        .success()
        .stderr_contains("nothing to do");
    pgha(&lab, "pgha-attach", &["0"])
        .success()
        .stderr_contains("nothing to do");
    assert_eq!(started_at(&lab, "pg0"), started, "a rerun restarted pg0");
    assert_follows(&lab, "pg0", "pg1", tl);
}

/// An old primary whose restore_command an interrupted pgha run left
/// paused (found by the fault campaign: the new primary of a run killed
/// while it promoted, which later failed and had to rejoin): the rejoin
/// rewinds it and leaves it with the original command, pointed at the new
/// primary's archive.
#[test]
fn rejoin_puts_back_a_paused_restore_command() {
    let lab = zombie_lab();
    let original = lab.psql("pg0", "show restore_command");
    assert!(
        original.contains(&lab.repl_addr("pg1")) || original.contains(&lab.repl_addr("pg0")),
        "{original}"
    );
    let paused =
        format!("exit 1 # paused by pgha while it promotes or repoints this node, was: {original}");
    lab.psql(
        "pg0",
        &format!(
            "alter system set restore_command = '{}'",
            paused.replace('\'', "''")
        ),
    );
    lab.psql("pg0", "select pg_reload_conf()");
    lab.pgpool_sql("insert into rows values ('after-1')")
        .unwrap();
    let r = pgha(&lab, "pgha-attach", &["--rejoin", "0"]);
    r.success()
        .stderr_contains("restore_command put back")
        .stderr_contains("rewound")
        .stderr_contains("attached");
    assert_follows(&lab, "pg0", "pg1", 2);
    let now = lab.psql("pg0", "show restore_command");
    assert!(
        !now.starts_with("exit 1")
            && now.contains(&lab.repl_addr("pg1"))
            && !now.contains(&lab.repl_addr("pg0")),
        "{now}"
    );
    wait_row(&lab, "pg0", "rows", "after-1");
}

/// A reboot of the old primary's host after a failover: its PostgreSQL
/// unit runs the start guard first (`lab.sh restart-host` does the same),
/// which refuses to start a second primary and names the rejoin; the
/// rejoin makes it a standby, and from then on a reboot starts it (as a
/// standby) without a word from the operator.
#[test]
fn a_rebooted_old_primary_stays_down_until_the_rejoin() {
    let lab = two_node_lab(false);
    lab.kill_host("pg0");
    write_through_pgpool(&lab, "insert into rows values ('after-failover')");
    assert_eq!(primary_timeline(&lab, "pg1"), 2);

    let pg1 = format!("node 1 ({}:5432)", lab.addr("pg1"));
    let o = lab.restart_host("pg0");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("REFUSED")
            && err.contains(&format!("{pg1} answers as the primary on timeline 2"))
            && err.contains("would start as a primary on timeline 1")
            && err.contains("PostgreSQL was not started")
            && err.contains("pgha-attach --rejoin 0"),
        "{err}"
    );
    assert!(
        !pg0_runs(&lab),
        "pg0's PostgreSQL runs after the guard refused it"
    );
    // The guard run again by hand says the same, and changes nothing.
    let again = lab.exec(
        "pg0",
        &[
            &lab.bin("pgha-check"),
            "-c",
            "/etc/pgha/pgha.toml",
            "--start-guard",
            "0",
        ],
    );
    assert_eq!(
        again.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(!pg0_runs(&lab));
    write_through_pgpool(&lab, "insert into rows values ('while-down')");

    pgha(&lab, "pgha-attach", &["--rejoin", "0"])
        .success()
        .stderr_contains("attached");
    assert_follows(&lab, "pg0", "pg1", 2);
    wait_row(&lab, "pg0", "rows", "after-failover");

    // A standby now: the next reboot starts it, and it streams again.
    lab.kill_host("pg0");
    let o = lab.restart_host("pg0");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("OK: node 0") && err.contains("starts as a standby (standby.signal)"),
        "{err}"
    );
    assert!(in_recovery(&lab, "pg0"));
    lab.pgpool_sql("insert into rows values ('after-reboot')")
        .unwrap();
    wait_row(&lab, "pg0", "rows", "after-reboot");
}

/// A lab of pg0 and one standby, with `pgha-check --fence` on every node
/// (pgha-fence.service), and a table with a row on both.
fn fenced_lab() -> Lab {
    let lab = two_node_lab(true);
    assert!(
        fence_log(&lab, "pg0").contains("fencing node 0"),
        "the fence does not run on pg0: {}",
        fence_log(&lab, "pg0")
    );
    lab
}

fn fence_log(lab: &Lab, h: &str) -> String {
    std::fs::read_to_string(lab.host_dir(h).join("home/pgha-fence.log")).unwrap_or_default()
}

/// Waits until the fence on pg0 has stopped its server; returns its log.
fn wait_fenced(lab: &Lab) -> String {
    lab.wait_observing("the fence on pg0 to stop its server", T, || {
        let log = fence_log(lab, "pg0");
        if log.contains("FENCED") {
            Ok(())
        } else {
            Err(log)
        }
    });
    assert!(!pg0_runs(lab), "pg0's server runs after the fence");
    fence_log(lab, "pg0")
}

/// After the fence: pg1 still the primary and never fenced, and the rejoin
/// makes pg0 a standby with every row, which the fence leaves running.
fn rejoin_after_the_fence(lab: &Lab) {
    assert!(!in_recovery(lab, "pg1"), "pg1 is no longer the primary");
    assert!(
        !fence_log(lab, "pg1").contains("FENCED"),
        "{}",
        fence_log(lab, "pg1")
    );
    pgha(lab, "pgha-attach", &["--rejoin", "0"])
        .success()
        .stderr_contains("attached");
    assert_follows(lab, "pg0", "pg1", 2);
    write_through_pgpool(lab, "insert into rows values ('after-rejoin')");
    wait_row(lab, "pg0", "rows", "after-failover");
    wait_row(lab, "pg0", "rows", "after-rejoin");
    assert!(in_recovery(lab, "pg0"));
    assert_eq!(
        fence_log(lab, "pg0").matches("FENCED").count(),
        1,
        "{}",
        fence_log(lab, "pg0")
    );
}

/// A primary cut off from every other host (`lab.sh cut`: both ways, all
/// addresses) stops itself once it has reached no other node and no pgpool for as long as
/// pgpool takes to find it dead (health_check_period 1 + timeout 2 in the
/// lab), so that when the network heals no client finds a second primary.
#[test]
fn a_cut_off_primary_stops_itself_and_stays_down_when_the_cut_heals() {
    let lab = fenced_lab();
    // The test's own connections come from outside the cut: it sees pg0
    // writable for as long as clients on pg0's side of the cut would.
    let watcher = SplitBrainWatcher::start(&lab);
    let cut = std::time::Instant::now();
    lab.cut("pg0", &["pg1", "app"]);
    let log = wait_fenced(&lab);
    eprintln!(
        "pg0 stopped itself {:.1}s after the cut",
        cut.elapsed().as_secs_f64()
    );
    assert_eq!(lab.wait_new_primary(2, T), "pg1");
    write_through_pgpool(&lab, "insert into rows values ('after-failover')");
    // The fence stops pg0 before pgpool and pgha-failover could promote
    // pg1 (pgpool's soonest detection 2s + liveness_timeout 1s, less two
    // fence rounds): never two writable primaries.
    watcher.assert_never_two_primaries();
    assert!(
        log.contains("reached no other node and no pgpool for")
            && log.contains("as long as it may (2.00s)")
            && log.contains("FENCED: node 0")
            && log.contains("pgha-attach --rejoin 0"),
        "{log}"
    );
    lab.heal("pg0", &["pg1", "app"]);
    // Healed: still down (the fence does not start anything), and pgpool
    // writes to pg1 only.
    write_through_pgpool(&lab, "insert into rows values ('after-heal')");
    assert!(!pg0_runs(&lab));
    rejoin_after_the_fence(&lab);
}

/// A primary whose two addresses are blackholed (every packet to them
/// dropped: pgpool and the other nodes reach it no more; from another
/// address of its host it could still send, and the fence once did): the
/// fence probes from the node's own address, hears nothing back, and stops
/// it before pgpool and pgha-failover promote pg1. Found by the fault
/// campaign (seed 500, fault 316): the old primary still writable when the
/// blackhole lifted after pg1's promotion.
#[test]
fn a_blackholed_primary_is_stopped_before_a_standby_is_promoted() {
    let lab = fenced_lab();
    let watcher = SplitBrainWatcher::start(&lab);
    let addrs = [lab.addr("pg0"), lab.repl_addr("pg0")];
    for a in &addrs {
        lab.blackhole(a);
    }
    assert_eq!(lab.wait_new_primary(2, T), "pg1");
    let ran_at_promotion = pg0_runs(&lab);
    for a in &addrs {
        lab.unblackhole(a);
    }
    let log = wait_fenced(&lab);
    assert!(
        !ran_at_promotion,
        "pg0 still ran when pg1 was promoted: {log}"
    );
    assert!(
        log.contains("reached no other node and no pgpool for") && log.contains("FENCED: node 0"),
        "{log}"
    );
    write_through_pgpool(&lab, "insert into rows values ('after-failover')");
    watcher.assert_never_two_primaries();
    rejoin_after_the_fence(&lab);
}

/// An old primary that runs again after a failover without its unit (an
/// operator's pg_ctl start, so no start guard) is stopped by the fence
/// within seconds of answering, naming the primary on the newer timeline.
#[test]
fn an_old_primary_started_by_hand_after_a_failover_is_fenced() {
    let lab = fenced_lab();
    crash_pg0(&lab);
    write_through_pgpool(&lab, "insert into rows values ('after-failover')");
    assert_eq!(primary_timeline(&lab, "pg1"), 2);
    assert!(
        !fence_log(&lab, "pg0").contains("FENCED"),
        "{}",
        fence_log(&lab, "pg0")
    );
    let started = std::time::Instant::now();
    lab.start_pg_briefly("pg0");
    let log = wait_fenced(&lab);
    eprintln!(
        "pg0 fenced {:.1}s after it started",
        started.elapsed().as_secs_f64()
    );
    let pg1 = format!("node 1 ({}:5432)", lab.addr("pg1"));
    assert!(
        log.contains("answers as a primary on timeline 1")
            && log.contains(&format!("{pg1} answers as the primary on timeline 2"))
            && log.contains("FENCED: node 0")
            && log.contains("pgha-attach --rejoin 0"),
        "{log}"
    );
    rejoin_after_the_fence(&lab);
}

#[test]
fn bad_targets_are_refused_and_left_untouched() {
    let lab = Lab::up(LabOptions::default());
    // A node id pgpool.conf does not define: usage error.
    for (bin, args) in [
        ("pgha-attach", vec!["7"]),
        ("pgha-attach", vec!["--rejoin", "7"]),
        ("pgha-follow", vec!["7"]),
    ] {
        pgha(&lab, bin, &args)
            .code(2)
            .stderr_contains("unknown node id 7")
            .stderr_contains("defines backends 0, 1, 2");
    }
    // The current primary given to --rejoin.
    let started = started_at(&lab, "pg0");
    pgha(&lab, "pgha-attach", &["--rejoin", "0"])
        .code(4)
        .stderr_contains("node 0 is the current primary");
    assert_eq!(started_at(&lab, "pg0"), started);
    assert!(!in_recovery(&lab, "pg0"));
    lab.pgpool_sql("create table rows (v text primary key)")
        .unwrap();
    lab.pgpool_sql("insert into rows values ('still-writable')")
        .unwrap();

    // An unreachable node: every packet to pg2's address is dropped (SQL
    // and ssh time out); its replication address still works.
    let started2 = started_at(&lab, "pg2");
    let addr = lab.addr("pg2");
    lab.blackhole(&addr);
    let results: Vec<_> = [
        ("pgha-attach", vec!["--rejoin", "2"]),
        ("pgha-follow", vec!["2"]),
        ("pgha-attach", vec!["2"]),
    ]
    .into_iter()
    .map(|(bin, args)| (bin, pgha(&lab, bin, &args)))
    .collect();
    lab.unblackhole(&addr);
    for (bin, r) in &results {
        r.code(4)
            .stderr_contains("cannot reach node 2")
            .stderr_contains("nothing was changed");
        assert!(r.elapsed < T, "{bin} took {:?}", r.elapsed);
    }
    assert_eq!(started_at(&lab, "pg2"), started2, "pg2 was restarted");
    assert!(in_recovery(&lab, "pg2"));
    assert_eq!(
        upstream(&lab, "pg2").map(|u| u.0),
        Some(lab.repl_addr("pg0"))
    );
    wait_row(&lab, "pg2", "rows", "still-writable");
    assert!(
        !lab.journal().iter().any(|e| ["attach", "follow"]
            .contains(&e["command"].as_str().unwrap_or(""))
            && e["outcome"] == "done"
            && e["step"] != "observe"),
        "an action was recorded: {:?}",
        lab.journal()
    );
}
