//! pgha-follow end to end: pgpool-II running it as follow_primary_command
//! after a real failover (2 and 3 standbys), by hand twice (the second run
//! has nothing to do), and a standby that cannot be rewound (rebuilt with
//! pg_basebackup only when [follow] rebuild allows it). Assertions are on
//! what the cluster is afterwards: upstreams, timelines, rows, pgpool's
//! node status, the data directories. The helpers here also serve
//! `attach.rs`.

use std::time::{Duration, Instant};

use crate::util::cmd::{Cmd, Run};
use crate::util::lab::{Lab, LabOptions, lab_sh, node_id, the_other};

pub(crate) const T: Duration = Duration::from_secs(30);

/// The line the pgha docs recommend for pgpool's follow_primary_command.
pub(crate) const FOLLOW_COMMAND: &str = "@BIN@/pgha-follow %d --new-primary %m --old-primary %P";

/// A pgha binary run by postgres on the app host, as pgpool runs it, with
/// the lab's /etc/pgha/pgha.toml unless `args` say otherwise.
pub(crate) fn pgha(lab: &Lab, bin: &str, args: &[&str]) -> Run {
    let b = lab.bin(bin);
    let mut argv = vec!["exec", lab.name.as_str(), "app", "--", b.as_str()];
    argv.extend_from_slice(args);
    Cmd::program(lab_sh())
        .args(argv)
        .timeout(Duration::from_secs(120))
        .run()
}

pub(crate) use crate::util::lab::upstream;

/// `pg_is_in_recovery()` on `host`.
pub(crate) fn in_recovery(lab: &Lab, host: &str) -> bool {
    lab.psql(host, "select pg_is_in_recovery()") == "t"
}

/// The timeline a primary writes on.
pub(crate) fn primary_timeline(lab: &Lab, host: &str) -> u32 {
    let hex = lab.psql(
        host,
        "select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
    );
    u32::from_str_radix(&hex, 16).unwrap_or_else(|_| panic!("timeline of {host}: {hex:?}"))
}

/// When the server on `host` started: unchanged means not restarted.
pub(crate) fn started_at(lab: &Lab, host: &str) -> String {
    lab.psql(host, "select pg_postmaster_start_time()")
}

/// Asserts that `host` streams from `primary`'s replication address on
/// `tl` and that pgpool has it attached as a standby.
#[track_caller]
pub(crate) fn assert_follows(lab: &Lab, host: &str, primary: &str, tl: u32) {
    let node = node_id(host);
    assert!(in_recovery(lab, host), "{host} is not in recovery");
    let up = upstream(lab, host);
    assert_eq!(
        up,
        Some((lab.repl_addr(primary), tl)),
        "{host} should stream from {primary} ({}) on timeline {tl}",
        lab.repl_addr(primary)
    );
    let info = lab
        .pcp_node(node)
        .unwrap_or_else(|e| panic!("pcp node {node}: {e}"));
    assert!(
        ["up", "waiting"].contains(&info.status.as_str()) && info.role == "standby",
        "pgpool should have node {node} attached as a standby: {}",
        info.raw
    );
}

/// Wait until a row is visible on `host` (database app).
pub(crate) fn wait_row(lab: &Lab, host: &str, table: &str, v: &str) {
    let q = format!("select count(*) from {table} where v = '{v}'");
    lab.wait_observing(&format!("row {v} on {host}"), T, || {
        match lab.try_psql_db(host, "app", &q) {
            Ok(c) if c == "1" => Ok(()),
            other => Err(other),
        }
    });
}

/// Write through pgpool, retrying while pgpool fails over; returns the
/// time it took.
pub(crate) fn write_through_pgpool(lab: &Lab, sql: &str) -> Duration {
    let t = Instant::now();
    lab.wait_observing(&format!("pgpool to accept {sql}"), T, || {
        lab.pgpool_sql(sql)
    });
    t.elapsed()
}

/// Kill the primary's host, wait until a standby was promoted and pgpool
/// accepts writes on it again; returns the new primary.
fn failover_under_pgpool(lab: &Lab) -> String {
    lab.pgpool_sql("create table rows (v text primary key)")
        .unwrap();
    lab.pgpool_sql("insert into rows values ('before')")
        .unwrap();
    for k in 1..=lab.standbys {
        wait_row(lab, &format!("pg{k}"), "rows", "before");
    }
    lab.kill_host("pg0");
    write_through_pgpool(lab, "insert into rows values ('after')");
    lab.wait_new_primary(2, Duration::ZERO)
}

/// Every standby left streams from `new` on its new timeline and is
/// attached, with the row written after the failover; pgha-follow said so
/// in pgpool's log for the dead old primary (skipped) and for each node it
/// ran for.
fn assert_all_follow(lab: &Lab, new: &str) {
    let tl = primary_timeline(lab, new);
    assert!(tl >= 2, "{new} on timeline {tl}");
    for k in (1..=lab.standbys).filter(|&k| k != node_id(new)) {
        let h = format!("pg{k}");
        lab.wait_observing(&format!("{h} to follow {new} and be attached"), T, || {
            let info = lab.pcp_node(k)?;
            match upstream(lab, &h) {
                Some((a, t))
                    if a == lab.repl_addr(new)
                        && t == tl
                        && ["up", "waiting"].contains(&info.status.as_str()) =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?} / {}", info.raw)),
            }
        });
        assert_follows(lab, &h, new, tl);
        wait_row(lab, &h, "rows", "after");
    }
    // pgpool ran pgha-follow for the old primary, which it had to skip.
    lab.wait_observing("pgha-follow's line about node 0 in pgpool's log", T, || {
        let log = lab.pgpool_log();
        if log
            .lines()
            .any(|l| l.contains("pgha-follow: REFUSED") && l.contains("cannot reach node 0"))
        {
            Ok(())
        } else {
            Err(log
                .lines()
                .filter(|l| l.contains("pgha-follow"))
                .map(str::to_string)
                .collect::<Vec<_>>())
        }
    });
    let info = lab.pcp_node(0).unwrap();
    assert_eq!(
        info.status, "down",
        "the dead old primary stays detached: {}",
        info.raw
    );
}

#[test]
fn pgpool_runs_follow_after_failover_two_standbys() {
    // The whole pgha stack: pgha-failover promotes and repoints,
    // pgha-follow (run by pgpool for every node it marked down) checks and
    // attaches.
    let lab = Lab::up(LabOptions {
        standbys: 2,
        follow_command: Some(FOLLOW_COMMAND.into()),
        ..LabOptions::default()
    });
    let new = failover_under_pgpool(&lab);
    assert_all_follow(&lab, &new);
    // By hand again: nothing left to do, nothing restarted.
    let (other, _, other_id) = the_other(&new);
    let before = started_at(&lab, other);
    let r = pgha(&lab, "pgha-follow", &[&other_id.to_string()]);
    r.success().stderr_contains("nothing to do");
    assert_eq!(
        started_at(&lab, other),
        before,
        "a rerun must not restart {other}"
    );
    assert_follows(&lab, other, &new, primary_timeline(&lab, &new));
}

#[test]
fn pgpool_runs_follow_after_failover_three_standbys_promote_only() {
    // failover_command only promotes (as pgpool's sample failover.sh
    // does), so pgha-follow alone must repoint and attach every standby.
    let lab = Lab::up(LabOptions {
        standbys: 3,
        failover_command: Some(format!(
            "ssh -o BatchMode=yes %H {}/pg_ctl -D /var/lib/postgresql/15/main promote -w",
            crate::util::lab::pg_bin()
        )),
        follow_command: Some(FOLLOW_COMMAND.into()),
        ..LabOptions::default()
    });
    // pgpool's own promote of %H: always its new main node, pg1.
    let new = failover_under_pgpool(&lab);
    assert_eq!(new, "pg1", "pgpool promotes its new main node");
    assert_all_follow(&lab, &new);
    let log = lab.pgpool_log();
    for k in [2, 3] {
        assert!(
            log.contains(&format!("pgha-follow: OK: node {k} ("))
                && log.contains("repointed (reload)"),
            "pgha-follow should have repointed node {k}:\n{}",
            log.lines()
                .filter(|l| l.contains("pgha-follow"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let j = lab.journal();
    for k in [2, 3] {
        assert!(
            j.iter().any(|e| e["command"] == "follow"
                && e["step"] == "repoint"
                && e["node"] == k
                && e["outcome"] == "done"),
            "journal has no repoint of node {k}: {j:?}"
        );
    }
    let r = pgha(&lab, "pgha-follow", &["3", "--json"]);
    r.success();
    let v: serde_json::Value =
        serde_json::from_str(r.stdout().trim()).expect("--json prints one object");
    assert_eq!(v["outcome"], "nothing_to_do", "{v}");
    assert_eq!(v["new_primary"], 1, "{v}");
}

/// Make standby pg2 impossible to rewind and diverged: no data checksums
/// (`pg_checksums --disable`), `wal_log_hints = off`, then promoted on its
/// own (a new timeline the primary never had) with a row written there,
/// and started as a standby again. That is exactly what pg_rewind refuses
/// ("target server needs to use either data checksums or wal_log_hints =
/// on"): the prerequisite is really absent, visible to pgha before it
/// touches anything, not faked.
fn make_unrewindable(lab: &Lab) {
    let d = "/var/lib/postgresql/15/main";
    let ok = |host: &str, argv: &[&str]| {
        let o = lab.exec(host, argv);
        assert!(
            o.status.success(),
            "{argv:?} on {host}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    lab.psql("pg2", "alter system set wal_log_hints = off");
    ok("pg2", &["pg_ctl", "-D", d, "stop", "-m", "fast", "-w"]);
    ok("pg2", &["pg_checksums", "--disable", "-D", d]);
    lab.start_pg("pg2");
    lab.psql("pg2", "select pg_promote()");
    lab.wait_until("pg2 promoted", T, || {
        (!in_recovery(lab, "pg2")).then_some(())
    });
    lab.try_psql_db("pg2", "app", "insert into rows values ('diverged')")
        .unwrap();
    ok("pg2", &["pg_ctl", "-D", d, "stop", "-m", "fast", "-w"]);
    ok("pg2", &["touch", &format!("{d}/standby.signal")]);
    lab.start_pg("pg2");
    assert_eq!(
        lab.psql("pg2", "select pg_is_in_recovery(), current_setting('data_checksums'), current_setting('wal_log_hints')"),
        "t|off|off"
    );
}

#[test]
fn unrewindable_standby_is_rebuilt_only_when_allowed() {
    let lab = Lab::up(LabOptions {
        standbys: 2,
        pgpool: false,
        ..LabOptions::default()
    });
    lab.try_psql_db(
        "pg0",
        "app",
        "create table rows (v text primary key); alter table rows owner to app; insert into rows values ('before')",
    )
    .unwrap();
    wait_row(&lab, "pg2", "rows", "before");
    make_unrewindable(&lab);
    lab.start_pgpool();
    let home = lab.host_dir("pg2").join("home/15");
    let aside = || -> Vec<String> {
        std::fs::read_dir(&home)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("main.pgha-old"))
            .collect()
    };

    // Its own timeline holds WAL nothing else has: without --discard-wal
    // it is kept, and pgha says how to keep or discard it.
    let started = started_at(&lab, "pg2");
    pgha(&lab, "pgha-follow", &["2"])
        .code(4)
        .stderr_contains("exists on no other node")
        .stderr_contains("--discard-wal");
    // Rebuild off (the default): refused before anything is touched.
    let r = pgha(&lab, "pgha-follow", &["2", "--discard-wal"]);
    r.code(4)
        .stderr_contains("cannot be rewound")
        .stderr_contains("nothing was changed or deleted")
        .stderr_contains("rebuild = true")
        .stderr_contains("pgha-follow 2");
    assert_eq!(
        started_at(&lab, "pg2"),
        started,
        "pg2 must not have been stopped"
    );
    assert_eq!(
        lab.try_psql_db(
            "pg2",
            "app",
            "select count(*) from rows where v = 'diverged'"
        )
        .as_deref(),
        Ok("1"),
        "pg2's data must be untouched"
    );
    assert!(
        aside().is_empty(),
        "nothing may be moved aside: {:?}",
        aside()
    );
    // --dry-run with the policy on says what it would do and does nothing.
    let cfg = "/var/lib/postgresql/pgha-rebuild.toml";
    let text = std::fs::read_to_string(lab.host_dir("app").join("etc-pgha/pgha.toml")).unwrap();
    std::fs::write(
        lab.host_dir("app").join("home/pgha-rebuild.toml"),
        format!("{text}\n[follow]\nrebuild = true\n"),
    )
    .unwrap();
    pgha(
        &lab,
        "pgha-follow",
        &["2", "--discard-wal", "--config", cfg, "--dry-run"],
    )
    .success()
    .stderr_contains("plan (nothing changed)")
    .stderr_contains("pg_basebackup");
    assert_eq!(started_at(&lab, "pg2"), started);

    // Rebuild on: pg_basebackup, the old data directory kept aside.
    pgha(
        &lab,
        "pgha-follow",
        &["2", "--discard-wal", "--config", cfg],
    )
    .success()
    .stderr_contains("rebuilt");
    lab.pgpool_sql("insert into rows values ('after-rebuild')")
        .unwrap();
    wait_row(&lab, "pg2", "rows", "after-rebuild");
    assert_follows(&lab, "pg2", "pg0", 1);
    assert_eq!(
        lab.try_psql_db(
            "pg2",
            "app",
            "select count(*) from rows where v = 'diverged'"
        )
        .as_deref(),
        Ok("0"),
        "the diverged row must be gone with the rebuild"
    );
    assert_eq!(
        aside().len(),
        1,
        "the old data directory should be moved aside: {:?}",
        aside()
    );
    let old = home.join(&aside()[0]);
    assert!(
        old.join("PG_VERSION").exists(),
        "{} is not the old data directory",
        old.display()
    );
    // pg2 kept its own configuration (its wal_log_hints = off) and points
    // at the primary under its own application_name.
    let auto = std::fs::read_to_string(home.join("main/postgresql.auto.conf")).unwrap();
    assert!(auto.contains("wal_log_hints = 'off'"), "{auto}");
    assert!(
        auto.contains(&format!("host=''{}''", lab.repl_addr("pg0")))
            && auto.contains("application_name=''pg2''"),
        "{auto}"
    );
    // Twice: nothing to do.
    pgha(&lab, "pgha-follow", &["2", "--config", cfg])
        .success()
        .stderr_contains("nothing to do");
    assert_eq!(aside().len(), 1);
}
