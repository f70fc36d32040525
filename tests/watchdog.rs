//! Issue 13: three pgpool hosts held together by pgpool-II's watchdog
//! (`lab.sh up --pgpools 3`: `app`, `app1`, `app2`, heartbeat lifecheck,
//! `failover_when_quorum_exists` and `failover_require_consensus` on). The
//! cluster forms with one leader, a failover of the primary is decided by a
//! quorum and run once (pgpool runs `failover_command` on the leader only),
//! and losing the leader's host elects another.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::check::{Watch, get, sample};
use crate::util::lab::{Lab, LabOptions, WatchdogView, role, settle_pid, the_other};
use crate::util::watch::{SplitBrainWatcher, Writer, assert_none_lost};

const T: Duration = Duration::from_secs(60);

fn three_pgpools() -> Lab {
    Lab::up(LabOptions {
        pgpools: 3,
        ..LabOptions::default()
    })
}

/// Every member in `hosts` sees a leader among `hosts`, the same one, with
/// quorum, `alive` other members alive, and is itself leader or standby.
/// Returns the leader's host name, or what was seen.
fn agreed_leader(lab: &Lab, hosts: &[String], alive: u32) -> Result<String, String> {
    let mut leaders = BTreeSet::new();
    for h in hosts {
        let v = lab.watchdog_info(h)?;
        let ok = v.has_quorum()
            && v.alive_remotes == alive
            && matches!(v.own_state(), "LEADER" | "STANDBY")
            && v.member(&lab.addr(h)).is_some();
        if !ok {
            return Err(format!(
                "{h}: {} {} {} alive",
                v.own_state(),
                v.quorum,
                v.alive_remotes
            ));
        }
        leaders.insert(v.leader().unwrap_or("none").to_string());
    }
    let [leader] = leaders.iter().collect::<Vec<_>>()[..] else {
        return Err(format!("leaders seen: {leaders:?}"));
    };
    match lab.host_at(leader) {
        Some(h) if hosts.contains(&h) => Ok(h),
        _ => Err(format!("leader {leader} is not one of {hosts:?}")),
    }
}

/// The member's view names exactly one leader, the one agreed on.
fn assert_one_leader(v: &WatchdogView, leader_addr: &str, from: &str) {
    let leaders: Vec<&str> = v
        .members
        .iter()
        .filter(|m| m.state == "LEADER")
        .map(|m| m.host.as_str())
        .collect();
    assert_eq!(leaders, [leader_addr], "{from} sees: {}", v.raw);
}

/// Promotions pgha-failover journaled on each pgpool host (its state dir,
/// `/var/lib/postgresql/pgha` there).
fn promotions_by_host(lab: &Lab) -> Vec<(String, usize)> {
    lab.pgpool_hosts()
        .into_iter()
        .map(|h| {
            let journal = lab.host_dir(&h).join("home/pgha/journal.jsonl");
            let n = std::fs::read_to_string(journal)
                .unwrap_or_default()
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).expect("journal line is JSON")
                })
                .filter(|e| e["step"] == "promote" && e["outcome"] == "done")
                .count();
            (h, n)
        })
        .collect()
}

/// The pgpool host whose pgha-failover journaled the promotion; panics
/// unless there was exactly one across all hosts.
fn the_one_promoter(lab: &Lab) -> String {
    let by_host = promotions_by_host(lab);
    let total: usize = by_host.iter().map(|(_, n)| n).sum();
    assert_eq!(
        total, 1,
        "exactly one promotion; journaled per pgpool host: {by_host:?}"
    );
    by_host.into_iter().find(|(_, n)| *n == 1).unwrap().0
}

/// A write through `host`'s pgpool into table `wd` of database app.
fn write_via(lab: &Lab, host: &str, id: u32) -> Result<String, String> {
    lab.pgpool_sql_on(host, &format!("insert into wd values ({id}, '{host}')"))
}

fn create_table(lab: &Lab) {
    lab.pgpool_sql("create table wd (id int primary key, via text)")
        .expect("create table through app's pgpool");
}

/// pgpool's status of a usable backend: `up`, or `waiting` (up, but no
/// client session of this pgpool has connected to it since its status
/// last changed: what a member that took no query since a failover shows).
fn usable(status: &str) -> bool {
    matches!(status, "up" | "waiting")
}

/// Waits until every host in `hosts` shows backend `node` usable (or
/// `down` when `up` is false), with role `role` when given.
fn wait_node_on_all(lab: &Lab, hosts: &[String], node: u32, up: bool, role: Option<&str>) {
    let want = if up { "up" } else { "down" };
    for h in hosts {
        lab.wait_observing(
            &format!("pgpool on {h}: node {node} {want} {}", role.unwrap_or("")),
            T,
            || match lab.pcp_node_on(h, node) {
                Ok(n)
                    if (if up {
                        usable(&n.status)
                    } else {
                        n.status == "down"
                    }) && role.is_none_or(|r| n.role == r) =>
                {
                    Ok(())
                }
                other => Err(other),
            },
        );
    }
}

/// Waits until pg1 or pg2 is primary on timeline 2 and a write through
/// one of the pgpools of `via` is acknowledged (ids from `*id` on);
/// returns that pgpool host and the new primary.
fn first_write_on_new_primary(
    lab: &Lab,
    via: &[String],
    id: &mut u32,
    what: &str,
    timeout: Duration,
) -> (String, &'static str) {
    lab.wait_observing(what, timeout, || {
        let new = ["pg1", "pg2"]
            .into_iter()
            .find(|h| role(lab, h) == Ok((true, 2)))
            .ok_or("no new primary yet")?;
        for h in via {
            *id += 1;
            if write_via(lab, h, *id).is_ok() {
                return Ok((h.clone(), new));
            }
        }
        Err("no pgpool took the write")
    })
}

#[test]
fn three_pgpools_form_one_watchdog_cluster() {
    let lab = three_pgpools();
    let hosts = lab.pgpool_hosts();
    assert_eq!(hosts, ["app", "app1", "app2"]);
    // lab.sh up waited for this; it must hold when asked again.
    let leader = agreed_leader(&lab, &hosts, 2).unwrap_or_else(|e| panic!("no agreed leader: {e}"));
    for h in &hosts {
        let v = lab.watchdog_info(h).unwrap();
        assert_eq!(v.members.len(), 3, "{h}: {}", v.raw);
        assert_eq!(v.members[0].host, lab.addr(h), "{h} lists itself first");
        assert_one_leader(&v, &lab.addr(&leader), h);
        assert!(
            v.members.iter().all(|m| m.membership == "MEMBER"),
            "{}",
            v.raw
        );
    }
    eprintln!("watchdog leader: {leader}");

    create_table(&lab);
    for (id, h) in (1..).zip(&hosts) {
        write_via(&lab, h, id).unwrap_or_else(|e| panic!("write through {h}'s pgpool: {e}"));
    }
    for h in &hosts {
        let seen = lab
            .pgpool_sql_on(h, "select string_agg(via, ',' order by id) from wd")
            .unwrap();
        assert_eq!(seen, "app,app1,app2", "rows read through {h}'s pgpool");
    }
    assert_eq!(
        lab.try_psql_db("pg0", "app", "select count(*) from wd")
            .unwrap(),
        "3"
    );
    // Every member's pgpool shows the same backends: pg0 primary, the
    // standbys standby, all up.
    for node in 0..=lab.standbys {
        let role = if node == 0 { "primary" } else { "standby" };
        for h in &hosts {
            let n = lab.pcp_node_on(h, node).unwrap();
            assert!(usable(&n.status) && n.role == role, "{h}: {}", n.raw);
        }
    }
}

#[test]
fn killed_primary_with_three_pgpools_fails_over_once() {
    let lab = three_pgpools();
    let hosts = lab.pgpool_hosts();
    let leader = agreed_leader(&lab, &hosts, 2).unwrap();
    create_table(&lab);
    let watcher = SplitBrainWatcher::start(&lab);
    let member = hosts.iter().find(|h| **h != leader).unwrap();
    let writer = Writer::start_on(&lab, member);
    writer.wait_more(&lab, 10, "writes through a member that does not lead", T);
    let killed = Instant::now();
    lab.kill_host("pg0");

    // The first write that any member's pgpool acknowledges, with pg1 or pg2
    // primary on timeline 2.
    let mut id = 100;
    let what = "a write through a pgpool on a new primary";
    let (via, new) = first_write_on_new_primary(&lab, &hosts, &mut id, what, T);
    eprintln!(
        "first write through {via}'s pgpool {:.2}s after the kill, {new} primary",
        killed.elapsed().as_secs_f64()
    );
    let (other, new_id, other_id) = the_other(new);
    wait_node_on_all(&lab, &hosts, new_id, true, Some("primary"));
    wait_node_on_all(&lab, &hosts, 0, false, None);
    lab.wait_streams(other, new, 2, T);
    wait_node_on_all(&lab, &hosts, other_id, true, Some("standby"));
    for (id, h) in (1000..).zip(&hosts) {
        write_via(&lab, h, id)
            .unwrap_or_else(|e| panic!("write through {h}'s pgpool after the failover: {e}"));
    }

    let primaries: Vec<&str> = ["pg1", "pg2"]
        .into_iter()
        .filter(|h| matches!(role(&lab, h), Ok((true, _))))
        .collect();
    assert_eq!(primaries, [new], "exactly one read-write node");
    assert!(lab.try_psql("pg0", "select 1").is_err(), "pg0 is dead");
    // pgpool runs failover_command on the watchdog leader only.
    let promoter = the_one_promoter(&lab);
    assert_eq!(
        promoter, leader,
        "pgha-failover ran on {promoter}, the leader is {leader}"
    );
    let log = lab.pgpool_log_on(&leader);
    assert!(
        log.contains("pgha-failover: OK:"),
        "{leader}'s pgpool log: {log}"
    );
    writer.wait_more(&lab, 10, "writes through the member after the failover", T);
    assert_none_lost(&lab, new, &writer.stop());
    watcher.assert_never_two_primaries();
}

#[test]
fn leader_host_killed_the_cluster_elects_another() {
    let lab = three_pgpools();
    let hosts = lab.pgpool_hosts();
    let leader = agreed_leader(&lab, &hosts, 2).unwrap();
    create_table(&lab);
    let rest: Vec<String> = hosts.iter().filter(|h| **h != leader).cloned().collect();
    // pgha-check --watch on a member that survives: its /metrics show the
    // watchdog as that member sees it.
    let listen = format!("{}:9187", lab.addr(&rest[0]));
    let _watch = Watch::start_on(&lab, &rest[0], &listen);
    let member_state = |m: &str, host: &str| -> Option<String> {
        let prefix = format!(
            "pgha_watchdog_member{{member=\"{}\",state=\"",
            lab.addr(host)
        );
        m.lines()
            .find_map(|l| Some(l.strip_prefix(&prefix)?.split('"').next()?.to_string()))
    };
    lab.wait_observing("/metrics: quorum, and the leader as LEADER", T, || {
        let (_, m) = get(&listen, "/metrics")?;
        match (
            sample(&m, "pgha_watchdog_quorum_status"),
            member_state(&m, &leader),
        ) {
            (Some(q), Some(s)) if q == 1.0 && s == "LEADER" => Ok(()),
            seen => Err(format!("{seen:?}")),
        }
    });
    let killed = Instant::now();
    lab.kill_host(&leader);

    let new_leader = lab.wait_observing(
        &format!("{rest:?} to elect a leader with quorum after {leader} died"),
        T,
        || agreed_leader(&lab, &rest, 1),
    );
    eprintln!(
        "{new_leader} leads {:.2}s after {leader} was killed",
        killed.elapsed().as_secs_f64()
    );
    assert_ne!(new_leader, leader);
    for h in &rest {
        let v = lab.watchdog_info(h).unwrap();
        assert_one_leader(&v, &lab.addr(&new_leader), h);
        let dead = v
            .member(&lab.addr(&leader))
            .expect("the killed member is listed");
        assert!(
            matches!(dead.state.as_str(), "LOST" | "DEAD" | "SHUTDOWN"),
            "{h} sees the killed {leader} as {}",
            dead.state
        );
    }
    for (id, h) in (1..).zip(&rest) {
        lab.wait_observing(&format!("a write through {h}'s pgpool"), T, || {
            write_via(&lab, h, id)
        });
    }
    // The metrics follow: the new leader LEADER, the killed one gone, the
    // quorum still there (two of three).
    lab.wait_observing("/metrics: the new leader, the old one lost", T, || {
        let (_, m) = get(&listen, "/metrics")?;
        let seen = (
            sample(&m, "pgha_watchdog_quorum_status"),
            member_state(&m, &new_leader),
            member_state(&m, &leader),
        );
        match &seen {
            (Some(q), Some(new), Some(old))
                if *q == 1.0
                    && new == "LEADER"
                    && matches!(old.as_str(), "LOST" | "DEAD" | "SHUTDOWN") =>
            {
                Ok(())
            }
            _ => Err(format!("{seen:?}")),
        }
    });
    // Losing a pgpool is no backend failure: pg0 stays the primary, up in
    // both survivors, and nothing was promoted.
    wait_node_on_all(&lab, &rest, 0, true, Some("primary"));
    assert_eq!(role(&lab, "pg0"), Ok((true, 1)));
    let by_host = promotions_by_host(&lab);
    assert!(
        by_host.iter().all(|(_, n)| *n == 0),
        "promotions: {by_host:?}"
    );
}

/// A pgha command run by hand on `host` as postgres: (exit code, stdout,
/// stderr).
fn run_on(lab: &Lab, host: &str, bin: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let bin = lab.bin(bin);
    let mut argv = vec![bin.as_str()];
    argv.extend_from_slice(args);
    let out = lab.exec(host, &argv);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Only the watchdog's leader acts: pgha-failover run by hand on another
/// member refuses and changes nothing; pgha-check there sees the watchdog
/// and the other members' configurations, and --status lists the members.
#[test]
fn a_member_that_does_not_lead_refuses_and_check_sees_every_member() {
    let lab = three_pgpools();
    let hosts = lab.pgpool_hosts();
    let leader = agreed_leader(&lab, &hosts, 2).unwrap();
    let member = hosts.iter().find(|h| **h != leader).unwrap().clone();
    let args = ["0", "0", "1", "--old-primary", "0"];
    let (code, _, err) = run_on(&lab, &member, "pgha-failover", &args);
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("is STANDBY in pgpool's watchdog, not its leader"),
        "{err}"
    );
    assert!(err.contains("nothing changed"), "{err}");
    assert_eq!(role(&lab, "pg0"), Ok((true, 1)), "pg0 is still the primary");
    assert_eq!(role(&lab, "pg1"), Ok((false, 1)), "pg1 is still a standby");
    assert!(promotions_by_host(&lab).iter().all(|(_, n)| *n == 0));

    let (code, out, err) = run_on(&lab, &member, "pgha-check", &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let live = out
        .lines()
        .find(|l| l.contains("watchdog_live"))
        .unwrap_or_default();
    assert!(
        live.starts_with("ok") && live.contains("quorum exists"),
        "{out}"
    );
    let agree: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("member_config"))
        .collect();
    assert_eq!(agree.len(), 2, "the two other members: {out}");
    assert!(agree.iter().all(|l| l.starts_with("ok")), "{out}");

    // A member whose failover_command differs is named, with the key.
    let conf = lab.host_dir(&leader).join("etc-pgpool2/pgpool.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, text.replace("--old-primary %P", "")).unwrap();
    let (code, out, _) = run_on(&lab, &member, "pgha-check", &[]);
    assert_ne!(code, Some(0), "{out}");
    let bad = out
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains("member_config"))
        .unwrap_or_else(|| panic!("no member_config failure: {out}"));
    assert!(
        bad.contains(&lab.addr(&leader)) && bad.contains("failover_command"),
        "{bad}"
    );
    std::fs::write(&conf, text).unwrap();

    let (code, out, err) = run_on(&lab, &member, "pgha-check", &["--status"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("pgpool members (watchdog, leader"), "{out}");
    for h in &hosts {
        assert!(out.contains(&lab.addr(h)), "{h} listed: {out}");
    }
    let (_, json, _) = run_on(&lab, &member, "pgha-check", &["--status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("--status --json");
    assert_eq!(v["watchdog"]["local"]["host"], lab.addr(&member));
    assert_eq!(v["watchdog"]["others"].as_array().unwrap().len(), 2);

    // pgha-follow and pgha-attach work from any member: PCP requests go to
    // the local pgpool, which hands them to the leader.
    let (code, _, err) = run_on(&lab, &member, "pgha-follow", &["2"]);
    assert_eq!(code, Some(0), "pgha-follow 2 on {member}: {err}");
    lab.pcp_on(&member, &["pcp_detach_node"], &["-n", "2"])
        .unwrap_or_else(|e| panic!("pcp_detach_node -n 2 on {member}: {e}"));
    wait_node_on_all(&lab, &hosts, 2, false, None);
    let (code, _, err) = run_on(&lab, &member, "pgha-attach", &["2"]);
    assert_eq!(code, Some(0), "pgha-attach 2 on {member}: {err}");
    wait_node_on_all(&lab, &hosts, 2, true, Some("standby"));
    assert!(promotions_by_host(&lab).iter().all(|(_, n)| *n == 0));
}

/// The leader's host dies while its pgha-failover runs (`at`: "claimed",
/// holding the cluster claim before anything changed, or "promoted", right
/// after the promote). The new leader runs failover_command again for the
/// same node: exactly one node is promoted, one new timeline, writes come
/// back through a surviving pgpool and every surviving node is attached
/// on every surviving member.
fn leader_dies_during_failover(at: &str) {
    let lab = Lab::up(LabOptions {
        pgpools: 3,
        failover_command: Some(format!(
            "env PGHA_FAULT=delay-{at}:5000 @BIN@/pgha-failover %d %M %m --old-primary %P"
        )),
        ..LabOptions::default()
    });
    let hosts = lab.pgpool_hosts();
    let leader = agreed_leader(&lab, &hosts, 2).unwrap();
    let rest: Vec<String> = hosts.iter().filter(|h| **h != leader).cloned().collect();
    create_table(&lab);
    let watcher = SplitBrainWatcher::start(&lab);
    // Acknowledged writes through a member that survives.
    let writer = Writer::start_on(&lab, &rest[0]);
    writer.wait_more(&lab, 10, "writes through a member", T);
    lab.kill_host("pg0");
    let journal = lab.host_dir(&leader).join("home/pgha/journal.jsonl");
    let step = if at == "claimed" {
        "\"step\":\"observe\""
    } else {
        "\"step\":\"promote\""
    };
    let in_delay = |text: &str| match at {
        // Claimed: the claim is held on pg1, nothing observed yet.
        "claimed" => !text.contains(step),
        _ => text.contains(step),
    };
    lab.wait_until(&format!("the leader {leader}'s pgha-failover at {at}"), T, || {
        let text = std::fs::read_to_string(&journal).unwrap_or_default();
        let claimed = lab
            .try_psql("pg1", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1885825121 AND granted")
            .is_ok_and(|n| n == "1");
        (claimed && in_delay(&text)).then_some(())
    });
    lab.kill_host(&leader);
    let killed = Instant::now();

    let mut id = 0;
    let what = "a write through a surviving pgpool on a new primary";
    let (via, new) = first_write_on_new_primary(&lab, &rest, &mut id, what, T * 2);
    eprintln!(
        "{at}: first write through {via} {:.2}s after the leader {leader} was killed; {new} primary",
        killed.elapsed().as_secs_f64()
    );
    let (other, new_id, other_id) = the_other(new);
    lab.wait_streams(other, new, 2, T);
    wait_node_on_all(&lab, &rest, new_id, true, Some("primary"));
    wait_node_on_all(&lab, &rest, other_id, true, Some("standby"));
    assert_eq!(
        role(&lab, other),
        Ok((false, 2)),
        "{other} follows on timeline 2"
    );
    writer.wait_more(&lab, 10, "writes through the member after the failover", T);
    assert_none_lost(&lab, new, &writer.stop());
    let promoted_on = &the_one_promoter(&lab);
    match at {
        "claimed" => assert_ne!(promoted_on, &leader, "the old leader died before promoting"),
        _ => assert_eq!(
            promoted_on, &leader,
            "the old leader promoted, the new one converged"
        ),
    }
    watcher.assert_never_two_primaries();
}

#[test]
fn leader_killed_holding_the_claim_before_the_promote_one_promotion() {
    leader_dies_during_failover("claimed");
}

#[test]
fn leader_killed_right_after_the_promote_the_new_leader_converges() {
    leader_dies_during_failover("promoted");
}

/// The leader's host freezes (SIGSTOP: no answer, no death). The other two
/// elect a leader and fail the killed primary over; when the old leader
/// runs again it finds itself outvoted, and nothing more is promoted.
#[test]
fn paused_leader_the_others_fail_over_and_it_promotes_nothing_when_it_wakes() {
    let lab = three_pgpools();
    let hosts = lab.pgpool_hosts();
    let leader = agreed_leader(&lab, &hosts, 2).unwrap();
    let rest: Vec<String> = hosts.iter().filter(|h| **h != leader).cloned().collect();
    create_table(&lab);
    let watcher = SplitBrainWatcher::start(&lab);
    lab.pause_host(&leader);
    let new_leader = lab.wait_observing(
        &format!("{rest:?} to elect a leader while {leader} is frozen"),
        T,
        || agreed_leader(&lab, &rest, 1),
    );
    lab.kill_host("pg0");
    let mut id = 0;
    let via = [new_leader.clone()];
    let what = "a write through a pgpool on a new primary";
    let (_, new) = first_write_on_new_primary(&lab, &via, &mut id, what, T);
    lab.resume_host(&leader);
    lab.wait_observing(&format!("{leader} to rejoin under {new_leader}"), T, || {
        agreed_leader(&lab, &hosts, 2)
    });
    let (other, _, _) = the_other(new);
    lab.wait_streams(other, new, 2, T);
    assert_ne!(
        the_one_promoter(&lab),
        leader,
        "the frozen leader promoted nothing"
    );
    for h in &hosts {
        lab.wait_observing(&format!("a write through {h}'s pgpool"), T, || {
            id += 1;
            write_via(&lab, h, id)
        });
    }
    watcher.assert_never_two_primaries();
}

/// The leader loses its quorum while its detached settle phase runs (both
/// other pgpool hosts die): the settle phase stops within seconds, says
/// why in pgpool's log and journals a refused run, instead of attaching
/// standbys for a pgpool that can no longer show it leads.
#[test]
fn settle_stops_and_says_why_when_the_leader_loses_its_quorum() {
    let lab = Lab::up(LabOptions {
        pgpools: 3,
        // The settle phase sits at its work for a minute: long enough to
        // see it stop, and it never ends by itself within the test.
        failover_command: Some(
            "env PGHA_FAULT=delay-settling:60000 @BIN@/pgha-failover %d %M %m --old-primary %P"
                .into(),
        ),
        ..LabOptions::default()
    });
    let hosts = lab.pgpool_hosts();
    let leader = agreed_leader(&lab, &hosts, 2).unwrap();
    let watcher = SplitBrainWatcher::start(&lab);
    lab.kill_host("pg0");
    let pid = lab.wait_observing(&format!("{leader}'s settle phase to start"), T, || {
        settle_pid(&lab.pgpool_log_on(&leader)).ok_or(())
    });
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "settle (pid {pid}) runs"
    );
    let cut = Instant::now();
    for h in hosts.iter().filter(|h| **h != leader) {
        lab.kill_host(h);
    }
    let line = lab.wait_observing("the settle phase to stop and say why", T, || {
        let log = lab.pgpool_log_on(&leader);
        log.lines()
            .find(|l| l.contains("stopped settling the standbys"))
            .map(str::to_string)
            .ok_or_else(|| log.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
    });
    eprintln!(
        "settle stopped {:.2}s after the other members died: {line}",
        cut.elapsed().as_secs_f64()
    );
    assert!(
        line.starts_with("pgha-failover (settle): REFUSED: stopped settling the standbys: ")
            && line.contains("without quorum")
            && line.contains("the new leader's pgha-failover settles them"),
        "{line}"
    );
    lab.wait_until(&format!("settle (pid {pid}) to exit"), T, || {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
    let journal = lab.host_dir(&leader).join("home/pgha/journal.jsonl");
    let journal = std::fs::read_to_string(journal).unwrap_or_default();
    let settle: Vec<serde_json::Value> = journal
        .lines()
        .map(|l| serde_json::from_str(l).expect("journal line is JSON"))
        .filter(|e: &serde_json::Value| e["step"] == "run" && e["phase"] == "settle")
        .collect();
    assert!(
        settle.len() == 1 && settle[0]["outcome"] == "refused",
        "one refused settle run in {leader}'s journal: {settle:?}"
    );
    // The main phase had promoted one standby; nothing more happened.
    let promoted: Vec<&str> = ["pg1", "pg2"]
        .into_iter()
        .filter(|h| matches!(role(&lab, h), Ok((true, 2))))
        .collect();
    assert_eq!(promoted.len(), 1, "one new primary: {promoted:?}");
    watcher.assert_never_two_primaries();
}

/// One pgpool host cut off from the two others (the nodes it still
/// reaches): it loses its quorum and the others elect a leader. When the
/// primary dies only their side fails over; pgha-failover run on the
/// cut-off host refuses although it too sees the primary dead. Once the
/// cut heals the member rejoins and shows the new primary.
#[test]
fn a_pgpool_host_cut_off_from_the_others_acts_on_nothing() {
    let lab = three_pgpools();
    let hosts = lab.pgpool_hosts();
    let cut_off = agreed_leader(&lab, &hosts, 2).unwrap();
    let rest: Vec<String> = hosts.iter().filter(|h| **h != cut_off).cloned().collect();
    let peers: Vec<&str> = rest.iter().map(String::as_str).collect();
    create_table(&lab);
    let watcher = SplitBrainWatcher::start(&lab);
    let writer = Writer::start_on(&lab, &rest[0]);
    writer.wait_more(&lab, 10, "writes through a member", T);
    lab.cut(&cut_off, &peers);
    let new_leader = lab.wait_observing(
        &format!("{rest:?} to elect a leader with {cut_off} cut off"),
        T,
        || agreed_leader(&lab, &rest, 1),
    );
    lab.wait_observing(&format!("{cut_off} to see it has no quorum"), T, || {
        let v = lab.watchdog_info(&cut_off)?;
        if v.has_quorum() {
            Err(format!("{} {}", v.own_state(), v.quorum))
        } else {
            Ok(())
        }
    });
    eprintln!("{cut_off} cut off; {new_leader} leads the other two");

    lab.kill_host("pg0");
    let mut id = 100;
    let what = "a write through the majority's pgpool on a new primary";
    let (via, new) = first_write_on_new_primary(&lab, &rest, &mut id, what, T);
    eprintln!("first write through {via}, {new} primary");
    let (code, _, err) = run_on(
        &lab,
        &cut_off,
        "pgha-failover",
        &["0", "0", "1", "--old-primary", "0"],
    );
    assert_eq!(code, Some(4), "refused on {cut_off}: {err}");
    assert!(
        err.contains("without quorum") && err.contains("nothing changed"),
        "{err}"
    );
    let (other, new_id, other_id) = the_other(new);
    lab.wait_streams(other, new, 2, T);
    wait_node_on_all(&lab, &rest, new_id, true, Some("primary"));
    wait_node_on_all(&lab, &rest, other_id, true, Some("standby"));
    writer.wait_more(&lab, 10, "writes through the member after the failover", T);

    lab.heal(&cut_off, &peers);
    lab.wait_observing("the three pgpools to agree on a leader again", T, || {
        agreed_leader(&lab, &hosts, 2)
    });
    let rejoined = [cut_off.clone()];
    wait_node_on_all(&lab, &rejoined, new_id, true, Some("primary"));
    wait_node_on_all(&lab, &rejoined, other_id, true, Some("standby"));
    wait_node_on_all(&lab, &rejoined, 0, false, None);
    for h in &hosts {
        lab.wait_observing(&format!("a write through {h}'s pgpool"), T, || {
            id += 1;
            write_via(&lab, h, id)
        });
    }
    assert_none_lost(&lab, new, &writer.stop());
    assert_ne!(
        the_one_promoter(&lab),
        cut_off,
        "the cut-off member promoted nothing"
    );
    watcher.assert_never_two_primaries();
}
