//! pgha-check end to end: a healthy lab passes; each fault issue 5 names is
//! caught with a message naming the host pair or the path, and the fix; the
//! watch mode serves /health and /metrics and sees a broken mesh.
//!
//! What is real and what is simulated: every fault is made on the real lab
//! (files of the hosts' homes edited, servers restarted). The lab's initdb
//! enables data checksums, so `wal_log_hints = off` alone must pass (the
//! checksums let pg_rewind work); the failing combination is made real by
//! disabling the checksums of a stopped standby with `pg_checksums
//! --disable`, and is also covered by the unit test
//! `settings::tests::rewind_needs_hints_or_checksums`.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::cmd::Cmd;
use crate::util::lab::{Lab, LabOptions, lab_sh};

const T: Duration = Duration::from_secs(30);

/// `pgha-check ARGS` on the app host, as postgres (as pgpool's systemd
/// unit would run it).
fn check(lab: &Lab, args: &[&str]) -> (Option<i32>, String, String) {
    let bin = lab.bin("pgha-check");
    let mut argv = vec![bin.as_str()];
    argv.extend_from_slice(args);
    let o: Output = lab.exec("app", &argv);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The line of check `check` at `node`, e.g. ("ssh", "node1->node2").
fn line<'a>(stdout: &'a str, check: &str, node: &str) -> Option<&'a str> {
    stdout.lines().find(|l| {
        let mut w = l.split_whitespace();
        w.next();
        w.next() == Some(check) && w.next() == Some(node)
    })
}

/// Run the check, expect exactly the failures `failing` (check, node) and
/// return their lines.
#[track_caller]
fn expect_failures(lab: &Lab, failing: &[(&str, &str)]) -> Vec<String> {
    let (code, out, err) = check(lab, &[]);
    let failed: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    let what = format!("exit {code:?}\n--- stdout ---\n{out}\n--- stderr ---\n{err}");
    if failing.is_empty() {
        assert_eq!(code, Some(0), "a healthy lab must pass: {what}");
        assert!(failed.is_empty(), "{what}");
        assert!(err.contains("pgha-check: OK: all "), "{what}");
        return vec![];
    }
    assert_eq!(code, Some(1), "expected exit 1 (FAILED): {what}");
    assert!(err.contains("failover could not work"), "{what}");
    let mut lines = Vec::new();
    for (c, n) in failing {
        let l = line(&out, c, n).unwrap_or_else(|| panic!("no line for {c} {n}: {what}"));
        assert!(l.starts_with("FAIL"), "{c} {n} should fail: {what}");
        assert!(l.contains(" -- fix: "), "a failure without a fix: {l}");
        lines.push(l.to_string());
    }
    assert_eq!(
        failed.len(),
        failing.len(),
        "expected only {failing:?} to fail: {what}"
    );
    lines
}

fn home(lab: &Lab, host: &str) -> PathBuf {
    lab.host_dir(host).join("home")
}

/// Rewrite a file without the lines matching `drop`; returns the original
/// text so the test can put it back (owner and mode are kept).
fn remove_lines(path: &Path, drop: impl Fn(&str) -> bool) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !drop(l))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(kept, text, "nothing to remove in {}", path.display());
    std::fs::write(path, kept).unwrap();
    text
}

fn pg_ctl(lab: &Lab, host: &str, action: &str) {
    let o = lab.exec(
        host,
        &[
            "pg_ctl",
            "-D",
            "/var/lib/postgresql/15/main",
            "-l",
            "/var/lib/postgresql/15/pgha-postgresql.log",
            "-w",
            "-t",
            "30",
            action,
        ],
    );
    assert!(o.status.success(), "pg_ctl {action} on {host}: {o:?}");
}

/// Wait until `host` streams from pg0 again (after a restart).
fn wait_streaming(lab: &Lab, host: &str) {
    let sql = format!(
        "select count(*) from pg_stat_replication where application_name = '{host}' and state = 'streaming'"
    );
    lab.wait_observing(&format!("{host} streaming from pg0"), T, || {
        match lab.try_psql("pg0", &sql) {
            Ok(n) if n == "1" => Ok(()),
            other => Err(other),
        }
    });
}

#[test]
fn check_passes_on_a_healthy_lab_and_names_each_fault() {
    let lab = Lab::up(LabOptions::default());
    let (pg0, pg1, pg2) = (lab.addr("pg0"), lab.addr("pg1"), lab.addr("pg2"));

    // Healthy: every check passes, fast; --json says the same.
    let start = Instant::now();
    expect_failures(&lab, &[]);
    let took = start.elapsed();
    eprintln!("pgha-check on a healthy 3-node lab: {took:.1?}");
    // A loose bound against regressions (the checks run in parallel; about
    // 1-2 s here), not a benchmark.
    assert!(took < Duration::from_secs(10), "pgha-check took {took:?}");
    let (code, out, _) = check(&lab, &["--json"]);
    assert_eq!(code, Some(0));
    let report: serde_json::Value =
        serde_json::from_str(out.lines().next().unwrap_or("")).expect("--json prints the report");
    assert_eq!(report["outcome"], "ok", "{report}");
    assert_eq!(report["failed"], 0);
    let checks = report["checks"].as_array().unwrap();
    for (c, n) in [
        ("ssh", "pgpool->node0"),
        ("ssh", "node1->node2"),
        ("replication_login", "node2->node1"),
        ("archive_dir", "node1"),
        ("rewind", "node2"),
        ("pcp_login", "pgpool"),
        ("application_name", "node1"),
        ("health_check_login", "node0"),
        ("sr_check_login", "node2"),
        ("failover_command", "pgpool"),
    ] {
        assert!(
            checks
                .iter()
                .any(|x| x["check"] == c && x["node"] == n && x["ok"] == true),
            "no passing {c} {n} in {report}"
        );
    }

    // 1. A missing authorized key between two standbys: pg1's key gone from
    //    pg2's authorized_keys.
    let ak = home(&lab, "pg2").join(".ssh/authorized_keys");
    let saved = remove_lines(&ak, |l| l.ends_with("postgres@pg1"));
    let l = expect_failures(&lab, &[("ssh", "node1->node2")]).remove(0);
    assert!(
        l.contains(&format!(
            "node 1 ({pg1}) -> node 2 ({pg2}): missing authorized key"
        )),
        "{l}"
    );
    assert!(l.contains("Permission denied (publickey)"), "{l}");
    assert!(
        l.contains(&format!(
            "to ~postgres/.ssh/authorized_keys on node 2 ({pg2})"
        )),
        "{l}"
    );
    std::fs::write(&ak, saved).unwrap();

    // 2. An unknown host key: pg0's entry gone from pg2's known_hosts (an
    //    edge between nodes), then pg1's from the app host's (pgpool's own
    //    edge; the node's other checks cannot run then).
    let kh = home(&lab, "pg2").join(".ssh/known_hosts");
    let saved = remove_lines(&kh, |l| l.starts_with(&format!("{pg0},")));
    let l = expect_failures(&lab, &[("ssh", "node2->node0")]).remove(0);
    assert!(
        l.contains(&format!(
            "node 2 ({pg2}) -> node 0 ({pg0}): unknown host key"
        )),
        "{l}"
    );
    assert!(
        l.contains(&format!(
            "fix: on node 2 ({pg2}) as postgres: ssh-keyscan {pg0} >> ~postgres/.ssh/known_hosts"
        )),
        "{l}"
    );
    std::fs::write(&kh, saved).unwrap();
    let kh = home(&lab, "app").join(".ssh/known_hosts");
    let saved = remove_lines(&kh, |l| l.starts_with(&format!("{pg1},")));
    let lines = expect_failures(&lab, &[("ssh", "pgpool->node1"), ("node_checks", "node1")]);
    assert!(
        lines[0].contains(&format!("this host -> node 1 ({pg1}): unknown host key")),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("ssh-keyscan"), "{}", lines[0]);
    std::fs::write(&kh, saved).unwrap();

    // 3. A missing archive directory on pg1.
    let archive = home(&lab, "pg1").join("archive");
    let away = home(&lab, "pg1").join("archive.away");
    std::fs::rename(&archive, &away).unwrap();
    let l = expect_failures(&lab, &[("archive_dir", "node1")]).remove(0);
    assert!(
        l.contains(&format!(
            "archive directory /var/lib/postgresql/archive does not exist on node 1 ({pg1})"
        )),
        "{l}"
    );
    assert!(
        l.contains("fix: on node 1")
            && l.contains("install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/archive"),
        "{l}"
    );
    std::fs::rename(&away, &archive).unwrap();

    // 4. An archive directory postgres cannot write: root's, mode 0755.
    let root_owned = |path: &Path| {
        let o = Command::new("chown")
            .arg("root:root")
            .arg(path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let o = Command::new("chmod").arg("755").arg(path).output().unwrap();
        assert!(o.status.success(), "{o:?}");
    };
    root_owned(&archive);
    let l = expect_failures(&lab, &[("archive_dir", "node1")]).remove(0);
    assert!(
        l.contains(&format!(
            "archive directory /var/lib/postgresql/archive on node 1 ({pg1}) is not writable by postgres (owner root, mode 0755)"
        )),
        "{l}"
    );
    assert!(l.contains("Permission denied"), "{l}");
    assert!(
        l.contains("chown postgres:postgres /var/lib/postgresql/archive"),
        "{l}"
    );
    let o = Command::new("chown")
        .arg("postgres:postgres")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(o.status.success());

    // 5. A wrong PCP password in the app host's .pcppass.
    let pcppass = home(&lab, "app").join(".pcppass");
    let saved = std::fs::read_to_string(&pcppass).unwrap();
    let (head, _) = saved.trim_end().rsplit_once(':').unwrap();
    std::fs::write(&pcppass, format!("{head}:not-the-password\n")).unwrap();
    let l = expect_failures(&lab, &[("pcp_login", "pgpool")]).remove(0);
    assert!(
        l.contains("wrong password in /var/lib/postgresql/.pcppass"),
        "{l}"
    );
    assert!(l.contains("pcp.conf"), "{l}");
    std::fs::write(&pcppass, saved).unwrap();

    // 6. wal_log_hints off on pg2: still fine with the lab's checksums...
    lab.psql("pg2", "alter system set wal_log_hints = off");
    pg_ctl(&lab, "pg2", "restart");
    wait_streaming(&lab, "pg2");
    let (code, out, err) = check(&lab, &[]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let l = line(&out, "rewind", "node2").unwrap();
    assert!(
        l.starts_with("ok") && l.contains("wal_log_hints off, data checksums on"),
        "{l}"
    );
    // ...but not without them: checksums disabled on the stopped standby.
    pg_ctl(&lab, "pg2", "stop");
    let o = lab.exec(
        "pg2",
        &[
            "pg_checksums",
            "--disable",
            "-D",
            "/var/lib/postgresql/15/main",
        ],
    );
    assert!(o.status.success(), "pg_checksums --disable: {o:?}");
    pg_ctl(&lab, "pg2", "start");
    wait_streaming(&lab, "pg2");
    let l = expect_failures(&lab, &[("rewind", "node2")]).remove(0);
    assert!(
        l.contains("wal_log_hints off and data checksums off: pg_rewind refuses to run"),
        "{l}"
    );
    assert!(l.contains("fix: set wal_log_hints = on"), "{l}");
    lab.psql("pg2", "alter system reset wal_log_hints");
    pg_ctl(&lab, "pg2", "restart");
    wait_streaming(&lab, "pg2");

    // Everything repaired: passing again.
    expect_failures(&lab, &[]);
}

/// Before pgpool starts (the order systemd gives them), PCP cannot be
/// logged in to: the `.pcppass` password is compared with `pcp.conf`.
#[test]
fn preflight_passes_before_pgpool_starts() {
    let lab = Lab::up(LabOptions {
        pgpool: false,
        ..LabOptions::default()
    });
    let (code, out, err) = check(&lab, &[]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let l = line(&out, "pcp_login", "pgpool").unwrap();
    assert!(
        l.starts_with("ok")
            && l.contains("does not answer")
            && l.contains("matches /etc/pgpool2/pcp.conf for pgpool"),
        "{l}"
    );
    let pcppass = home(&lab, "app").join(".pcppass");
    let saved = std::fs::read_to_string(&pcppass).unwrap();
    let (head, _) = saved.trim_end().rsplit_once(':').unwrap();
    std::fs::write(&pcppass, format!("{head}:not-the-password\n")).unwrap();
    let l = expect_failures(&lab, &[("pcp_login", "pgpool")]).remove(0);
    assert!(
        l.contains("does not match the md5 in /etc/pgpool2/pcp.conf"),
        "{l}"
    );
    std::fs::write(&pcppass, saved).unwrap();
}

/// One HTTP GET to `addr`: (status code, body).
pub(crate) fn get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not HTTP: {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((code, body.to_string()))
}

/// The value of one sample of /metrics.
pub(crate) fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

/// `pgha-check --watch` started on a pgpool host; stopped (SIGTERM by
/// pid) when dropped.
pub(crate) struct Watch<'a> {
    pub(crate) lab: &'a Lab,
    pub(crate) host: String,
    pub(crate) child: Child,
}

impl Watch<'_> {
    /// `pgha-check --watch --interval 1s --listen LISTEN` on the app host,
    /// stopped when dropped.
    pub(crate) fn start<'a>(lab: &'a Lab, listen: &str) -> Watch<'a> {
        Watch::start_on(lab, "app", listen)
    }

    /// The same on pgpool host `host`.
    pub(crate) fn start_on<'a>(lab: &'a Lab, host: &str, listen: &str) -> Watch<'a> {
        let script = format!(
            "echo $$ >/tmp/pgha-watch.pid; exec {} --watch --interval 1s --listen {listen}",
            lab.bin("pgha-check")
        );
        let child = Command::new(lab_sh())
            .args(["exec", &lab.name, host, "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Watch {
            lab,
            host: host.to_string(),
            child,
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let pid = self.lab.host_dir(&self.host).join("tmp/pgha-watch.pid");
        let pid = std::fs::read_to_string(pid).unwrap_or_default();
        if let Ok(pid) = pid.trim().parse::<i32>() {
            // SAFETY: kill(2) on a pid this test started; no memory involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.child.wait();
    }
}

#[test]
fn watch_serves_health_and_metrics_and_sees_a_broken_mesh() {
    let lab = Lab::up(LabOptions::default());
    let listen = format!("{}:9187", lab.addr("app"));
    let _watch = Watch::start(&lab, &listen);
    let edge = "pgha_check_ok{check=\"ssh\",node=\"node1->node2\"}";

    let healthy = |what: &str| {
        lab.wait_observing(what, T, || {
            let (code, body) = get(&listen, "/health")?;
            let (_, m) = get(&listen, "/metrics")?;
            if code == 200
                && sample(&m, edge) == Some(1.0)
                && sample(&m, "pgha_checks_failed") == Some(0.0)
            {
                Ok(m)
            } else {
                Err(format!("{code} {body}"))
            }
        })
    };
    let m = healthy("/health 200 and the node1->node2 edge at 1");
    let first_run = sample(&m, "pgha_check_last_run_timestamp_seconds").unwrap();
    assert!(first_run > 0.0, "{m}");
    assert!(
        sample(&m, "pgha_check_duration_seconds").unwrap() > 0.0,
        "{m}"
    );
    assert!(m.contains("# TYPE pgha_check_ok gauge"), "{m}");

    // Break the mesh between the standbys; the next run must see it.
    let ak = home(&lab, "pg2").join(".ssh/authorized_keys");
    let saved = remove_lines(&ak, |l| l.ends_with("postgres@pg1"));
    let body = lab.wait_observing("the node1->node2 edge at 0 and /health 503", T, || {
        let (code, body) = get(&listen, "/health")?;
        let (_, m) = get(&listen, "/metrics")?;
        if code == 503
            && sample(&m, edge) == Some(0.0)
            && sample(&m, "pgha_checks_failed") == Some(1.0)
        {
            Ok(body)
        } else {
            Err(format!("{code} {:?}", sample(&m, edge)))
        }
    });
    assert!(body.contains("ssh node1->node2"), "{body}");
    assert!(body.contains("missing authorized key"), "{body}");

    // Repaired: healthy again, from a later run.
    std::fs::write(&ak, saved).unwrap();
    let m = healthy("/health 200 again after the repair");
    assert!(sample(&m, "pgha_check_last_run_timestamp_seconds").unwrap() > first_run);
    let (code, _) = get(&listen, "/nothing").unwrap();
    assert_eq!(code, 404);
}

#[test]
fn watch_refuses_a_non_loopback_listen_address() {
    let r = Cmd::new("pgha-check")
        .args(["--watch", "--listen", "0.0.0.0:9187"])
        .env("PGHA_CONFIG", "/nonexistent/pgha.toml")
        .timeout(Duration::from_secs(10))
        .run();
    r.code(2)
        .stderr_contains("0.0.0.0 is not a loopback address")
        .stderr_contains("loopback only");
    Cmd::new("pgha-check")
        .args(["--watch", "--interval", "soon"])
        .timeout(Duration::from_secs(10))
        .run()
        .code(2)
        .stderr_contains("--interval soon");
}
