//! `pgha-check --status` end to end (issue 14): one lab taken through a
//! detached standby, a lagging one (its walsender stopped on the primary,
//! as in `safety.rs`) and a failover; at each stage the JSON is parsed and
//! checked against the cluster, the table names the fix, and `/metrics` of
//! `--watch` counts the failover.

use std::time::Duration;

use serde_json::Value;

use crate::check::{Watch, get, sample};
use crate::util::lab::{Lab, LabOptions};

const T: Duration = Duration::from_secs(30);

/// `pgha-check --status ARGS` on the app host, as postgres: (exit, stdout).
fn status(lab: &Lab, args: &[&str]) -> (Option<i32>, String, String) {
    let bin = lab.bin("pgha-check");
    let mut argv = vec![bin.as_str(), "--status"];
    argv.extend_from_slice(args);
    let o = lab.exec("app", &argv);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The JSON status, polled until `ok` accepts it.
#[track_caller]
fn json_until(lab: &Lab, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    lab.wait_observing(what, T, || {
        let (_, out, err) = status(lab, &["--json"]);
        let v: Value = serde_json::from_str(out.trim()).map_err(|e| format!("{e}: {out}{err}"))?;
        if ok(&v) { Ok(v) } else { Err(out) }
    })
}

fn node(v: &Value, id: u64) -> &Value {
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .unwrap()
}

/// The value of the first sample whose line starts with `prefix`.
fn first(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

fn pcp(lab: &Lab, tool: &str, id: &str) {
    let app = lab.addr("app");
    let out = lab.exec(
        "app",
        &[
            tool, "-w", "-h", &app, "-p", "9898", "-U", "pgpool", "-n", id,
        ],
    );
    assert!(
        out.status.success(),
        "{tool}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn status_shows_each_fault_with_its_fix_and_metrics_count_the_failover() {
    let lab = Lab::up(LabOptions::default());

    // Healthy: exit 0, a primary, two streaming standbys, nothing to fix.
    let v = json_until(&lab, "a healthy status", |v| {
        v["problems"] == 0 && v["nodes"].as_array().is_some_and(|n| n.len() == 3)
    });
    assert_eq!(v["primary"], 0);
    for id in [1, 2] {
        let n = node(&v, id);
        assert_eq!(n["role"], "standby", "{n}");
        assert_eq!(n["upstream"], 0, "{n}");
        assert_eq!(n["timeline"], 1, "{n}");
        assert_eq!(n["pgpool_status"], "up", "{n}");
        assert_eq!(n["ssh"], true, "{n}");
        assert_eq!(n["sync_state"], "async", "{n}");
        assert!(
            n["receive_lsn"].as_str().is_some_and(|l| l.contains('/')),
            "{n}"
        );
    }
    assert_eq!(node(&v, 0)["pgpool_role"], "primary");
    let (code, table, err) = status(&lab, &[]);
    assert_eq!(code, Some(0), "{table}{err}");
    assert!(table.starts_with("id  address"), "{table}");
    assert!(!table.contains('\x1b'), "no colour without a tty: {table}");
    assert!(table.contains("nothing to fix"), "{table}");
    assert!(
        err.contains("pgha-check: OK: 3 nodes, primary node 0"),
        "{err}"
    );
    println!("--- healthy ---\n{table}");

    // Detached in pgpool: pgha-attach 2.
    pcp(&lab, "pcp_detach_node", "2");
    let v = json_until(&lab, "node 2 shown detached", |v| {
        node(v, 2)["fix"] == "pgha-attach 2"
    });
    assert_eq!(node(&v, 2)["pgpool_status"], "down");
    let (code, table, _) = status(&lab, &[]);
    assert_eq!(code, Some(1), "{table}");
    assert!(table.contains("detached -- fix: pgha-attach 2"), "{table}");
    pcp(&lab, "pcp_attach_node", "2");
    json_until(&lab, "node 2 attached again", |v| v["problems"] == 0);

    // Lagging: pg1's walsender stopped, writes on the primary.
    let pid = lab.psql(
        "pg0",
        "select pid from pg_stat_replication where application_name = 'pg1'",
    );
    assert!(!pid.is_empty());
    assert!(lab.exec("pg0", &["kill", "-STOP", &pid]).status.success());
    lab.psql(
        "pg0",
        "create table lagged as select g, repeat('x', 200) from generate_series(1, 200000) g",
    );
    let v = json_until(&lab, "node 1 shown lagging", |v| {
        node(v, 1)["problem"]
            .as_str()
            .is_some_and(|p| p.starts_with("lags "))
    });
    assert!(node(&v, 1)["lag_bytes"].as_u64().unwrap() > 16 << 20, "{v}");
    assert!(node(&v, 2)["problem"].is_null(), "{v}");
    println!("--- lagging ---\n{}", status(&lab, &[]).1);
    assert!(lab.exec("pg0", &["kill", "-CONT", &pid]).status.success());
    json_until(&lab, "node 1 caught up", |v| v["problems"] == 0);

    // Metrics before and after a failover.
    let listen = format!("{}:9187", lab.addr("app"));
    let _watch = Watch::start(&lab, &listen);
    let promoted = "pgha_failovers_total{outcome=\"promoted\"}";
    let before = lab.wait_observing("metrics with node gauges", T, || {
        let (_, m) = get(&listen, "/metrics")?;
        match first(&m, "pgha_node_timeline{node=\"0\"") {
            Some(_) => Ok(m),
            None => Err(m),
        }
    });
    assert_eq!(sample(&before, promoted), None, "{before}");
    assert_eq!(
        sample(&before, "pgha_seconds_since_last_failover"),
        Some(-1.0)
    );

    // The primary's host dies: pgpool runs pgha-failover, node 1 is
    // promoted (or node 2, if it received more WAL before pg0 died).
    lab.kill_host("pg0");
    let v = json_until(&lab, "a standby primary, the other following it", |v| {
        let Some(new) = v["primary"].as_u64().filter(|p| [1, 2].contains(p)) else {
            return false;
        };
        let other = node(v, 3 - new);
        other["upstream"] == new && other["problem"].is_null()
    });
    let new = v["primary"].as_u64().unwrap();
    let old = node(&v, 0);
    assert_eq!(old["role"], "down", "{old}");
    let rejoin = format!(
        "once its host is up: pgha-attach --rejoin 0 (starts it as a standby of node {new})"
    );
    assert_eq!(old["fix"], rejoin, "{old}");
    assert_eq!(node(&v, new)["timeline"], 2);
    let runs = v["runs"].as_array().unwrap();
    let last = runs.iter().rev().find(|r| r["phase"] == "main").unwrap();
    assert_eq!(
        (&last["command"], &last["outcome"]),
        (&"failover".into(), &"promoted".into()),
        "{v}"
    );
    assert!(last["blocked_ms"].as_u64().is_some(), "{last}");
    let (_, table, _) = status(&lab, &[]);
    assert!(
        table.contains(&format!(
            "never start it by hand: an old primary would come back writable) -- fix: {rejoin}"
        )),
        "{table}"
    );
    assert!(table.contains("failover node 0  promoted"), "{table}");
    println!("--- after the failover ---\n{table}");

    let after = lab.wait_observing("metrics counting the failover", T, || {
        let (_, m) = get(&listen, "/metrics")?;
        if sample(&m, promoted) == Some(1.0)
            && first(&m, &format!("pgha_node_timeline{{node=\"{new}\"")) == Some(2.0)
        {
            Ok(m)
        } else {
            Err(m)
        }
    });
    let blocked = sample(&after, "pgha_last_failover_blocked_seconds").unwrap();
    let total = sample(&after, "pgha_last_failover_total_seconds").unwrap();
    assert!(blocked > 0.0 && total >= blocked, "{after}");
    assert!(sample(&after, "pgha_seconds_since_last_failover").unwrap() >= 0.0);
    assert!(
        after.contains(&format!(
            "pgha_node_role{{node=\"0\",address=\"{}:5432\",role=\"down\"}} 1",
            lab.addr("pg0")
        )),
        "{after}"
    );
}

/// A standby that kept streaming from an old primary past the switch point
/// (as when the old primary comes back before pgha repointed it; found by
/// the fault campaign) is named diverged, with the one command that makes
/// it follow: a rewind that discards that WAL, asked for on purpose. A
/// plain `pgha-follow` refuses it, so naming that would send the operator
/// round in a loop.
#[test]
fn a_standby_that_followed_an_old_primary_is_named_with_the_rewind() {
    let lab = Lab::up(LabOptions {
        failover_command: Some("/bin/true".into()),
        ..LabOptions::default()
    });
    // pg1 promoted on its own; pg0 stays primary of timeline 1 and pg2
    // goes on streaming from it, past pg1's switch point.
    assert_eq!(lab.psql("pg1", "select pg_promote()"), "t");
    lab.wait_primary("pg1", 2, T);
    lab.psql(
        "pg0",
        "create table after_the_fork as select generate_series(1, 1000) g",
    );
    let lsn = lab.psql("pg0", "select pg_current_wal_lsn()");
    lab.wait_until("pg2 to receive pg0's WAL past the fork", T, || {
        let r = lab.psql(
            "pg2",
            &format!("select pg_last_wal_receive_lsn() >= '{lsn}'"),
        );
        (r == "t").then_some(())
    });
    // The old primary goes away again.
    let data = "/var/lib/postgresql/15/main";
    let out = lab.exec("pg0", &["pg_ctl", "-D", data, "stop", "-m", "fast", "-w"]);
    assert!(out.status.success(), "{out:?}");

    let v = json_until(&lab, "pg2 named diverged from pg1", |v| {
        v["primary"] == 1
            && node(v, 2)["fix"]
                .as_str()
                .is_some_and(|f| f.starts_with("pgha-follow 2 --discard-wal"))
    });
    let problem = node(&v, 2)["problem"].as_str().unwrap_or_default();
    assert!(problem.starts_with("cannot follow node 1"), "{problem}");
    assert_eq!(
        node(&v, 0)["fix"],
        "once its host is up: pgha-attach --rejoin 0 (starts it as a standby of node 1)"
    );
    println!(
        "--- a standby that followed the old primary ---\n{}",
        status(&lab, &[]).1
    );

    let plain = crate::follow::pgha(&lab, "pgha-follow", &["2"]);
    assert!(!plain.status().success(), "{}", plain.stderr());
    assert!(
        plain.stderr().contains("--discard-wal"),
        "{}",
        plain.stderr()
    );
    let named = crate::follow::pgha(&lab, "pgha-follow", &["2", "--discard-wal"]);
    assert!(named.status().success(), "{}", named.stderr());
    lab.wait_streams("pg2", "pg1", 2, T);
    json_until(&lab, "pg2 following pg1, nothing to fix there", |v| {
        node(v, 2)["upstream"] == 1 && node(v, 2)["problem"].is_null()
    });
}
