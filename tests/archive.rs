//! Standbys that restore archived WAL over scp from their upstream's
//! archive (the lab's default, as pgpool's follow_primary.sh.sample writes
//! it): after a failover every standby's restore_command names the new
//! primary, a silent old primary does not hold the promotion hostage, and a
//! standby that needs WAL the new primary no longer keeps catches up from
//! the new archive.

use std::time::Duration;

use crate::util::lab::{Lab, LabOptions, role};
use crate::util::watch::{SplitBrainWatcher, Writer, assert_none_lost};

const T: Duration = Duration::from_secs(45);
/// The seconds pgha's promote step took, from its progress line.
fn promote_seconds(log: &str) -> Option<f64> {
    log.lines().find_map(|l| {
        let rest = l.split("promote: accepts writes on timeline ").nth(1)?;
        rest.split(" (").nth(1)?.strip_suffix("s)")?.parse().ok()
    })
}

/// Write four segments on the primary `new`, wait until `first` is in its
/// archive, and checkpoint twice so that its pg_wal no longer has it (the
/// lab runs with wal_keep_size = 0 here): `who` can get it only from the
/// archive.
fn archive_away(lab: &Lab, new: &str, first: &str, who: &str) {
    for i in 0..4 {
        lab.try_psql_db(
            new,
            "app",
            &format!("create table if not exists filler(x int); insert into filler select generate_series(1, 1000); select {i}"),
        )
        .unwrap();
        lab.psql(new, "select pg_switch_wal()");
    }
    let archive = lab.host_dir(new).join("home/archive").join(first);
    lab.wait_until(&format!("{first} archived on {new}"), T, || {
        archive.exists().then_some(())
    });
    lab.psql(new, "checkpoint");
    lab.psql(new, "checkpoint");
    let in_pg_wal = lab.host_dir(new).join("home/15/main/pg_wal").join(first);
    assert!(
        !in_pg_wal.exists(),
        "{first} must be gone from {new}'s pg_wal, so that {who} needs the archive"
    );
}

#[test]
fn a_silent_primary_fails_over_and_every_restore_command_follows_the_new_primary() {
    let lab = Lab::up(LabOptions::default());
    let old = lab.psql("pg1", "show restore_command");
    assert!(
        old.starts_with("scp ") && old.contains(&lab.repl_addr("pg0")),
        "the standbys restore over scp from pg0: {old}"
    );
    let watcher = SplitBrainWatcher::start(&lab);
    let writer = Writer::start(&lab);
    writer.wait_more(&lab, 10, "writes before the fault", T);
    // Every packet to the primary dropped: a powered-off host.
    lab.blackhole(&lab.repl_addr("pg0"));
    lab.blackhole(&lab.addr("pg0"));
    let new = lab.wait_new_primary(2, T);
    let other = if new == "pg1" { "pg2" } else { "pg1" };
    lab.wait_streams(other, &new, 2, T);
    writer.wait_more(&lab, 10, "writes through pgpool after the failover", T);
    let acked = writer.stop();
    watcher.assert_never_two_primaries();
    assert_none_lost(&lab, &new, &acked);
    let want = lab.repl_addr(&new);
    // The settle phase lets a standby switch to streaming with its
    // restore_command paused, then puts back the one pointed at the new
    // primary.
    for h in [other, new.as_str()] {
        lab.wait_observing(
            &format!("{h}'s restore_command to fetch from {new} ({want})"),
            T,
            || {
                let cmd = lab.psql(h, "show restore_command");
                if cmd.contains(&format!(" {want}:")) && !cmd.contains(&lab.repl_addr("pg0")) {
                    Ok(())
                } else {
                    Err(cmd)
                }
            },
        );
    }
    // The promote step is not held by scp attempts against the silent host
    // (each would cost the 3 s ConnectTimeout of the lab's restore_command).
    let log = lab.pgpool_log();
    let took = promote_seconds(&log).expect("pgha's promote line");
    assert!(took < 3.0, "the promote step took {took}s: {log}");
}

#[test]
fn a_standby_that_needs_archived_wal_catches_up_from_the_new_primarys_archive() {
    let lab = Lab::up(LabOptions::default());
    lab.kill_host("pg0");
    let new = lab.wait_new_primary(2, T);
    let other = if new == "pg1" { "pg2" } else { "pg1" };
    lab.wait_streams(other, &new, 2, T);
    let data = "/var/lib/postgresql/15/main";
    let out = lab.exec(other, &["pg_ctl", "-D", data, "stop", "-m", "fast", "-w"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The new primary keeps no WAL for it and recycles what it archived.
    lab.psql(&new, "alter system set wal_keep_size = 0");
    lab.psql(&new, "select pg_reload_conf()");
    let first = lab.psql(&new, "select pg_walfile_name(pg_current_wal_lsn())");
    archive_away(&lab, &new, &first, other);
    let target = lab.psql(&new, "select pg_current_wal_lsn()");
    lab.start_pg(other);
    lab.wait_until(&format!("{other} to replay up to {target}"), T, || {
        (lab.psql(
            other,
            &format!("select pg_last_wal_replay_lsn() >= '{target}'"),
        ) == "t")
            .then_some(())
    });
    lab.wait_streams(other, &new, 2, T);
    assert!(
        lab.pg_log(other).contains("restored log file"),
        "{other} must have restored from {new}'s archive: {}",
        lab.pg_log(other)
    );
    assert_eq!(role(&lab, other).unwrap(), (false, 2));
}

/// The journal of the app host's pgha state directory.
/// A full archive disk on both standbys (writing anything there fails with
/// ENOSPC) when the primary dies: the failover and its detached phase
/// complete (the history file the detached phase copies into the other
/// standby's archive does not fit: a warning, not a failure), no
/// acknowledged write is lost, and once there is room again the new
/// primary archives again. Its archive_command copies to a temporary name
/// and renames it, so an attempt cut short by the full disk leaves nothing
/// under the final name that would refuse every later attempt.
#[test]
fn a_full_archive_disk_neither_stops_the_failover_nor_archiving_for_good() {
    let lab = Lab::up(LabOptions::default());
    let watcher = SplitBrainWatcher::start(&lab);
    let writer = Writer::start(&lab);
    writer.wait_more(&lab, 10, "writes before the fault", T);
    lab.fill_archive("pg1");
    lab.fill_archive("pg2");
    lab.kill_host("pg0");
    let new = lab.wait_new_primary(2, T);
    let other = if new == "pg1" { "pg2" } else { "pg1" };
    lab.wait_streams(other, &new, 2, T);
    writer.wait_more(&lab, 10, "writes through pgpool after the failover", T);
    let settle = lab.wait_until("the detached phase's run line", T, || {
        lab.journal()
            .into_iter()
            .find(|e| e["step"] == "run" && e["phase"] == "settle")
    });
    assert_eq!(settle["outcome"], "settled", "{settle}");
    let log = lab.pgpool_log();
    assert!(
        log.contains("a restore from its own archive would lack it"),
        "the detached phase says the history file did not fit: {log}"
    );
    // The new primary cannot archive while its disk is full.
    lab.try_psql_db(&new, "app", "create table if not exists filler(x int); insert into filler select generate_series(1, 1000)")
        .unwrap();
    let segment = lab.psql(&new, "select pg_walfile_name(pg_current_wal_lsn())");
    lab.psql(&new, "select pg_switch_wal()");
    lab.wait_until(
        &format!("{new}'s archiver to fail on the full disk"),
        T,
        || (lab.psql(&new, "select failed_count > 0 from pg_stat_archiver") == "t").then_some(()),
    );
    let archived = lab.host_dir(&new).join("home/archive").join(&segment);
    assert!(!archived.exists(), "{segment} archived on a full disk");
    lab.unfill_archive(&new);
    lab.wait_until(
        &format!("{segment} archived on {new} once there is room"),
        T,
        || archived.exists().then_some(()),
    );
    let acked = writer.stop();
    watcher.assert_never_two_primaries();
    assert_none_lost(&lab, &new, &acked);
}

/// Found by the fault campaign (its final check: the last primary did not
/// archive a fresh segment within 60 s; the archiver failed on an old
/// segment again and again). `pgha-attach --rejoin` rewinds the old
/// primary, and pg_rewind copies the new primary's WAL files into it with
/// no archive status; once that node is the primary again, its
/// checkpoints offer them to the archiver, and those its own archive holds
/// already (it archived them as the first primary) were refused by `test
/// ! -f` for good, every later segment waiting behind them. The lab's
/// archive_command (README's) accepts an identical file (`|| cmp -s`).
/// PostgreSQL's default wal_keep_size = 0 lets the checkpoint offer them
/// at once.
#[test]
fn a_rejoined_old_primary_archives_again_once_it_is_the_primary_again() {
    let lab = Lab::up(LabOptions {
        wal_keep_size: Some("0"),
        ..LabOptions::default()
    });
    let writer = Writer::start(&lab);
    writer.wait_more(&lab, 10, "writes before the fault", T);
    // Segments pg0 archives itself as the first primary.
    for _ in 0..2 {
        lab.psql("pg0", "select pg_switch_wal()");
        writer.wait_more(&lab, 5, "writes in the next segment", T);
    }
    lab.wait_until("pg0 to archive its switched segments", T, || {
        (lab.psql("pg0", "select archived_count >= 2 from pg_stat_archiver") == "t").then_some(())
    });
    lab.kill_host("pg0");
    let new = lab.wait_new_primary(2, T);
    lab.restart_host("pg0");
    let rejoin = crate::follow::pgha(&lab, "pgha-attach", &["--rejoin", "0"]);
    rejoin.success();
    // Back to pg0, the primary again.
    let to0 = crate::follow::pgha(&lab, "pgha-switchover", &["--to", "0"]);
    to0.success();
    lab.wait_primary("pg0", 3, T);
    // WAL moves on; the checkpoint offers the rewound files to the archiver.
    for _ in 0..2 {
        writer.wait_more(&lab, 5, "writes on pg0", T);
        lab.psql("pg0", "select pg_switch_wal()");
    }
    lab.psql("pg0", "checkpoint");
    let segment = lab.psql("pg0", "select pg_walfile_name(pg_current_wal_lsn())");
    writer.wait_more(&lab, 5, "writes in the last segment", T);
    lab.psql("pg0", "select pg_switch_wal()");
    let archived = lab.host_dir("pg0").join("home/archive").join(&segment);
    lab.wait_observing(&format!("{segment} archived on pg0"), T, || {
        if archived.exists() {
            Ok(())
        } else {
            Err(lab.psql(
                "pg0",
                "select failed_count || ' failed, last ' || coalesce(last_failed_wal, '-') from pg_stat_archiver",
            ))
        }
    });
    assert_eq!(
        lab.psql("pg0", "select failed_count from pg_stat_archiver"),
        "0",
        "pg0's archiver failed on a file offered again (new primary was {new})"
    );
    let acked = writer.stop();
    assert_none_lost(&lab, "pg0", &acked);
}

/// An old primary that can become consistent after pg_rewind only with WAL
/// that nothing but the new primary's archive still holds (the new
/// primary checkpointed it away: PostgreSQL's default wal_keep_size = 0),
/// while its own pg_wal still holds the segment it diverged in, with its
/// own records after the switch point. pgha starts a node with its
/// restore_command paused (to stream at once) only when no rewind was
/// done: paused, recovery read that local segment instead of the new
/// timeline's (found by the fault campaign: the node replayed its
/// diverged records, "record with incorrect prev-link", and never became
/// consistent).
#[test]
fn a_rejoined_old_primary_that_needs_the_archive_to_be_consistent_starts() {
    let lab = Lab::up(LabOptions {
        wal_keep_size: Some("0"),
        ..LabOptions::default()
    });
    lab.kill_host("pg0");
    let new = lab.wait_new_primary(2, T);
    // The segment of the timeline switch: pg_rewind leaves pg0 needing it.
    let history = std::fs::read_to_string(
        lab.host_dir(&new)
            .join("home/15/main/pg_wal/00000002.history"),
    )
    .unwrap();
    let switch = history
        .lines()
        .find_map(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no switch point in {new}'s history: {history}"))
        .to_string();
    // + 1: pg_walfile_name names the segment a record ending at a segment
    // boundary is in, and the new timeline may begin at one.
    let first = lab.psql(
        &new,
        &format!("select pg_walfile_name('{switch}'::pg_lsn + 1)"),
    );
    archive_away(&lab, &new, &first, "pg0");
    lab.restart_host("pg0");
    crate::follow::pgha(&lab, "pgha-attach", &["--rejoin", "0"])
        .success()
        .stderr_contains("rewound")
        .stderr_contains("attached")
        .stderr_lacks("restore_command paused");
    lab.wait_streams("pg0", &new, 2, T);
    let log = lab.pg_log("pg0");
    assert!(
        log.contains(&format!("restored log file \"{first}\"")) && !log.contains("prev-link"),
        "pg0 must have restored {first} from {new}'s archive, and replayed no WAL of its own after the switch point: {log}"
    );
    let now = lab.psql("pg0", "show restore_command");
    assert!(
        !now.starts_with("exit 1") && now.contains(&lab.repl_addr(&new)),
        "pg0's restore_command: {now}"
    );
}
