//! `pgha-check`: prove, before pgpool-II starts, that a failover could work.
//!
//! The classic recipe asks the operator to try ssh by hand between pairs of
//! hosts and to create archive directories; when one of them is wrong,
//! failover fails at 3 a.m. This command checks all of it at once, every
//! probe in parallel and bounded by the configured timeouts:
//!
//! - [`mesh`]: the ssh edges failover needs, derived from the configuration
//!   (this host to every node, every node to every other node), each tried
//!   from its real source host, key-only with strict host keys;
//! - [`node`]: on every node, over ssh, the PostgreSQL binaries pgha calls,
//!   the data directory and the archive directory;
//! - [`settings`]: the server settings failover relies on (`wal_level`,
//!   `hot_standby`, `max_wal_senders`, `wal_log_hints` or checksums, the
//!   archive commands);
//! - [`logins`]: pgha's superuser, the replication user (from each node, as
//!   a standby would connect), pgpool's `health_check_user` and
//!   `sr_check_user`, and PCP;
//! - [`pgpoolconf`]: `pgpool.conf` itself (the commands point at pgha,
//!   `backend_application_nameN` match the standbys, watchdog quorum);
//! - [`status`]: `--status`, the cluster at a glance with the fix for
//!   each node, and the last runs from the journal;
//! - [`watch`]: `--watch`, the loop and its `/health` and `/metrics`.
//!
//! Every check ends in one [`Finding`]: ok, or FAIL with the fix to apply.
//! The exit status is 0 only when every check passed.

mod guard;
mod logins;
mod members;
mod mesh;
mod node;
mod pgpoolconf;
mod settings;
mod status;
mod watch;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio_postgres::Client;

use crate::cli::CheckArgs;
use crate::cluster::{Node, Topology};
use crate::error::{Error, Result};
use crate::postgres::{self, NodeState, PgTarget};
use crate::report::Summary;

/// The outcome of one check: what was found and, when it failed, what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Finding {
    /// What was checked (`ssh`, `archive_dir`, `wal_level`, `pcp_login`,
    /// ...): the `check` label of the `pgha_check_ok` metric.
    check: String,
    /// Where: `pgpool` (this host), `node1`, an ssh edge `node1->node2`,
    /// `cluster`: the `node` label of the metric.
    node: String,
    /// Passed.
    ok: bool,
    /// What was found, naming the hosts, paths and settings involved.
    message: String,
    /// For a failure: the change that makes it pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

impl Finding {
    /// A check that passed.
    fn pass(check: &str, node: &str, message: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            node: node.into(),
            ok: true,
            message: message.into(),
            fix: None,
        }
    }

    /// A check that failed, with its fix.
    fn fail(
        check: &str,
        node: &str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            check: check.into(),
            node: node.into(),
            ok: false,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }

    /// The line printed for this finding: `ok` or `FAIL`, the check, where,
    /// what was found and, for a failure, the fix.
    fn line(&self) -> String {
        let verdict = if self.ok { "ok" } else { "FAIL" };
        let mut s = format!(
            "{verdict:<4} {:<22} {:<14} {}",
            self.check, self.node, self.message
        );
        if let Some(fix) = &self.fix {
            s.push_str(" -- fix: ");
            s.push_str(fix);
        }
        s
    }
}

/// Every finding of one run, as printed with `--json` and served by
/// `--watch`.
#[derive(Debug, Clone, Serialize)]
struct Report {
    /// `ok` when every check passed, else `failed`.
    outcome: String,
    /// Number of checks that passed.
    passed: usize,
    /// Number of checks that failed.
    failed: usize,
    /// Wall time of the whole run.
    duration_ms: u64,
    /// When the run ended, seconds since the Unix epoch.
    finished_at: f64,
    /// One entry per check, in a stable order.
    checks: Vec<Finding>,
}

impl Report {
    /// A report of `checks` that took `took`.
    fn new(checks: Vec<Finding>, took: Duration) -> Report {
        let failed = checks.iter().filter(|f| !f.ok).count();
        Report {
            outcome: if failed == 0 { "ok" } else { "failed" }.into(),
            passed: checks.len() - failed,
            failed,
            duration_ms: took.as_millis() as u64,
            finished_at: unix_now(),
            checks,
        }
    }

    /// Whether failover could work: no check failed.
    fn passing(&self) -> bool {
        self.failed == 0 && !self.checks.is_empty()
    }

    /// One line: counts, time, and the failed checks by name.
    fn summary(&self) -> String {
        let secs = self.duration_ms as f64 / 1000.0;
        if self.passing() {
            return format!(
                "all {} checks passed in {secs:.1}s: failover can work",
                self.passed
            );
        }
        let names: Vec<String> = self
            .checks
            .iter()
            .filter(|f| !f.ok)
            .map(|f| format!("{} {}", f.check, f.node))
            .collect();
        format!(
            "{} of {} checks FAILED in {secs:.1}s, failover could not work: {}",
            self.failed,
            self.checks.len(),
            names.join(", ")
        )
    }
}

/// `pgha-check` as the arguments say: one run (or `--watch`).
///
/// Without `--json` every finding is printed on stdout, one line each; with
/// it, the [`Report`] as one JSON object. The summary goes to the caller,
/// which prints it last on stderr.
pub async fn run(args: &CheckArgs) -> Result<Summary> {
    if args.watch {
        return watch::run(args).await;
    }
    if args.status {
        return status::run(args).await;
    }
    if let Some(id) = args.start_guard {
        return guard::run(args, id).await;
    }
    if let Some(id) = args.fence {
        return guard::fence(args, id).await;
    }
    let topo = Topology::load(args.common.config.as_deref())?;
    if args.common.dry_run {
        let plan = plan(&topo);
        if !args.common.json {
            for line in &plan {
                println!("would check: {line}");
            }
        }
        return Ok(Summary {
            outcome: crate::report::Outcome::DryRun,
            message: format!("{} checks planned, nothing was run", plan.len()),
            ..Summary::default()
        });
    }
    let report = check(&topo).await;
    if args.common.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        for f in &report.checks {
            println!("{}", f.line());
        }
    }
    if report.passing() {
        Ok(Summary {
            outcome: crate::report::Outcome::Ok,
            message: report.summary(),
            ..Summary::default()
        })
    } else {
        Err(Error::Step(report.summary()))
    }
}

/// What a run would check, one line per check, without connecting anywhere
/// (`--dry-run`).
fn plan(topo: &Topology) -> Vec<String> {
    let mut out = vec![format!(
        "pgpool.conf {}: failover_command, follow_primary_command, watchdog",
        topo.pgpool.path.display()
    )];
    out.push(format!(
        "state_dir {} writable",
        topo.config.state_dir.display()
    ));
    for e in mesh::edges(topo) {
        out.push(format!("ssh {}", e.describe()));
    }
    for n in &topo.nodes {
        out.push(format!(
            "{}: binaries in {}, data directory, archive directory, settings, logins",
            n.label(),
            topo.config.postgres.bin_dir.display()
        ));
    }
    out.push("pcp login".into());
    if topo.pgpool.is_on("use_watchdog") {
        out.push("watchdog: a leader with quorum, every member in it".into());
        for m in members::other_members(&topo.pgpool) {
            out.push(format!(
                "pgpool member {m}: same backends, commands and pgha.toml (over ssh)"
            ));
        }
    }
    out
}

/// What one node said over SQL, as pgha's superuser.
#[derive(Debug, Clone)]
struct SqlFacts {
    /// The state pgha's other commands observe.
    state: NodeState,
    /// `rolsuper` of the login role.
    superuser: bool,
    /// The settings of [`settings::NAMES`], by name (`pg_settings.setting`).
    settings: BTreeMap<String, String>,
    /// Set when the connect needed a second try, saying why.
    note: Option<String>,
}

/// Run every check once against `topo`.
async fn check(topo: &Topology) -> Report {
    let start = Instant::now();
    let remote = topo.remote();
    let sql = futures::future::join_all(topo.nodes.iter().map(|n| sql_facts(topo, n)));
    let probes =
        futures::future::join_all(topo.nodes.iter().map(|n| node::probe(topo, &remote, n)));
    let (sql, probes, pcp, pool_users, members) = tokio::join!(
        sql,
        probes,
        logins::pcp(topo),
        logins::pgpool_users(topo),
        members::findings(topo, &remote)
    );
    remote.close().await;

    let sql: Vec<(Node, std::result::Result<SqlFacts, String>)> =
        topo.nodes.iter().cloned().zip(sql).collect();
    let mut findings = Vec::new();
    findings.extend(pgpoolconf::commands(topo));
    findings.push(pgpoolconf::watchdog(&topo.pgpool));
    findings.extend(members);
    findings.push(state_dir(&topo.config.state_dir));
    if let Some(dir) = &topo.config.ssh.control_dir {
        findings.push(control_dir(dir));
    }
    findings.push(pcp);
    findings.push(pgpoolconf::primary(&sql));
    for (n, probe) in topo.nodes.iter().zip(&probes) {
        let facts = sql
            .iter()
            .find(|(m, _)| m.id == n.id)
            .and_then(|(_, f)| f.as_ref().ok());
        findings.extend(node::findings(topo, n, probe, facts, &sql));
    }
    for (n, facts) in &sql {
        findings.extend(logins::superuser(topo, n, facts));
        findings.extend(settings::findings(topo, n, facts));
        if let Some(f) = pgpoolconf::application_name(n, &sql) {
            findings.push(f);
        }
    }
    findings.extend(pool_users);
    Report::new(findings, start.elapsed())
}

/// Connect to `node` as pgha does and read what the checks need.
async fn sql_facts(topo: &Topology, node: &Node) -> std::result::Result<SqlFacts, String> {
    let t = topo.pg_target(node);
    // A connect that times out once on a loaded host is tried again before
    // it counts: a preflight that flaps is a preflight nobody trusts.
    let mut note = None;
    let client = match postgres::connect(&t).await {
        Err(e @ postgres::PgError::Timeout { .. }) => {
            note = Some(format!("answered on the second try; the first {e}"));
            postgres::connect(&t).await.map_err(|e| e.to_string())?
        }
        other => other.map_err(|e| e.to_string())?,
    };
    let state = postgres::observe(&client, &t)
        .await
        .map_err(|e| e.to_string())?;
    let (superuser, settings) = read_settings(&client, &t).await?;
    Ok(SqlFacts {
        state,
        superuser,
        settings,
        note,
    })
}

async fn read_settings(
    client: &Client,
    t: &PgTarget,
) -> std::result::Result<(bool, BTreeMap<String, String>), String> {
    let names: Vec<&str> = settings::NAMES.to_vec();
    let bound = |what: &str| {
        format!(
            "postgresql at {}:{}: {what} timed out after {:?}",
            t.host, t.port, t.query_timeout
        )
    };
    tracing::debug!("sql {}:{}: pg_settings query", t.host, t.port);
    let rows = tokio::time::timeout(
        t.query_timeout,
        client.query(
            "SELECT name, setting FROM pg_settings WHERE name = ANY($1)",
            &[&names],
        ),
    )
    .await
    .map_err(|_| bound("pg_settings query"))?
    .map_err(|e| {
        format!(
            "postgresql at {}:{}: pg_settings query: {e}",
            t.host, t.port
        )
    })?;
    let mut settings = BTreeMap::new();
    for r in rows {
        let name: String = r.try_get(0).map_err(|e| e.to_string())?;
        let value: Option<String> = r.try_get(1).map_err(|e| e.to_string())?;
        settings.insert(name, value.unwrap_or_default());
    }
    tracing::debug!("sql {}:{}: pg_roles query", t.host, t.port);
    let row = tokio::time::timeout(
        t.query_timeout,
        client.query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        ),
    )
    .await
    .map_err(|_| bound("pg_roles query"))?
    .map_err(|e| format!("postgresql at {}:{}: pg_roles query: {e}", t.host, t.port))?;
    let superuser: bool = row.try_get(0).map_err(|e| e.to_string())?;
    Ok((superuser, settings))
}

/// pgha-failover keeps its lock and journal in `state_dir` on this host: it
/// must be creatable and writable by the user pgpool runs the commands as
/// (this one, when pgha-check runs as that user).
fn state_dir(dir: &Path) -> Finding {
    let me = local_user();
    let shown = dir.display();
    let fix = format!(
        "install -d -o {me} -m 0750 {shown} (or set state_dir in pgha.toml to a directory {me} may write)"
    );
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Finding::fail(
            "state_dir",
            "pgpool",
            format!("state_dir {shown} cannot be created by {me}: {e}"),
            fix,
        );
    }
    if let Some(problem) = crate::files::private_dir_problem(dir) {
        return Finding::fail(
            "state_dir",
            "pgpool",
            format!(
                "state_dir {shown} is unsafe: {problem}; pgha-failover would run unlocked and without a journal"
            ),
            format!("chown {me} {shown} && chmod 0750 {shown} (a real directory, not a link)"),
        );
    }
    let probe = dir.join(format!(".pgha-check.{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Finding::pass(
                "state_dir",
                "pgpool",
                format!("state_dir {shown} is writable by {me}"),
            )
        }
        Err(e) => Finding::fail(
            "state_dir",
            "pgpool",
            format!("state_dir {shown} is not writable by {me}: {e}"),
            fix,
        ),
    }
}

/// A configured `ssh.control_dir` holds the ssh master sockets and their
/// config files: another user who can write there (or swap it through a
/// link) can plant FIFOs and links under the names pgha uses, and every ssh
/// step would then fail. A missing directory is fine: pgha creates it 0700.
fn control_dir(dir: &Path) -> Finding {
    let me = local_user();
    let shown = dir.display();
    if std::fs::symlink_metadata(dir).is_err() {
        return Finding::pass(
            "control_dir",
            "pgpool",
            format!("ssh.control_dir {shown} does not exist yet; pgha creates it, mode 0700"),
        );
    }
    match crate::files::private_dir_problem(dir) {
        None => Finding::pass(
            "control_dir",
            "pgpool",
            format!("ssh.control_dir {shown} is private to {me}"),
        ),
        Some(problem) => Finding::fail(
            "control_dir",
            "pgpool",
            format!(
                "ssh.control_dir {shown} is unsafe: {problem}; every ssh step of a failover would fail"
            ),
            format!(
                "rm {shown} if it is a link, then install -d -o {me} -m 0700 {shown} (or remove ssh.control_dir from pgha.toml to use a private default)"
            ),
        ),
    }
}

/// Now, in seconds since the Unix epoch (0 before it).
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The value of a duration option (`--interval`, `--every`): more than 0s.
fn positive_duration(flag: &str, value: &str) -> Result<Duration> {
    let d = crate::config::parse_duration(value)
        .map_err(|e| Error::Usage(format!("{flag} {value}: {e}")))?;
    if d.is_zero() {
        return Err(Error::Usage(format!("{flag} must be more than 0s")));
    }
    Ok(d)
}

/// The user this process runs as, for messages (`USER`, else `LOGNAME`).
fn local_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("uid {}", unsafe { libc::geteuid() }))
}

/// `node1`, the `node` label of a node's findings.
fn subject(node: &Node) -> String {
    format!("node{}", node.id)
}

/// "node 1 (127.0.0.3)": a node named by the address pgha sshes to.
fn ssh_label(node: &Node) -> String {
    format!("node {} ({})", node.id, node.ssh_host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_ok_or_fail_with_the_fix() {
        let ok = Finding::pass("ssh", "pgpool->node1", "key login");
        assert!(ok.line().starts_with("ok   ssh "), "{}", ok.line());
        assert!(!ok.line().contains("fix"));
        let bad = Finding::fail("archive_dir", "node2", "missing", "mkdir it");
        assert!(bad.line().starts_with("FAIL archive_dir"), "{}", bad.line());
        assert!(
            bad.line().ends_with("missing -- fix: mkdir it"),
            "{}",
            bad.line()
        );
    }

    #[test]
    fn a_report_passes_only_without_failures() {
        let r = Report::new(
            vec![
                Finding::pass("ssh", "pgpool->node0", "ok"),
                Finding::fail("ssh", "node1->node2", "denied", "add key"),
            ],
            Duration::from_millis(1234),
        );
        assert!(!r.passing());
        assert_eq!((r.passed, r.failed), (1, 1));
        assert_eq!(r.outcome, "failed");
        let s = r.summary();
        assert!(s.contains("1 of 2 checks FAILED in 1.2s"), "{s}");
        assert!(s.ends_with("ssh node1->node2"), "{s}");
        let r = Report::new(
            vec![Finding::pass("ssh", "pgpool->node0", "ok")],
            Duration::from_millis(10),
        );
        assert!(r.passing());
        assert!(r.summary().starts_with("all 1 checks passed"));
        // Nothing checked proves nothing.
        assert!(!Report::new(vec![], Duration::ZERO).passing());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["checks"][0]["check"], "ssh");
        assert!(json["checks"][0].get("fix").is_none());
    }

    #[test]
    fn state_dir_is_created_and_written() {
        let d = tempfile::tempdir().unwrap();
        let f = state_dir(&d.path().join("a/b"));
        assert!(f.ok, "{f:?}");
        assert!(d.path().join("a/b").is_dir());
        assert_eq!(std::fs::read_dir(d.path().join("a/b")).unwrap().count(), 0);
        let file = d.path().join("file");
        std::fs::write(&file, "").unwrap();
        let f = state_dir(&file.join("sub"));
        assert!(!f.ok);
        assert!(f.message.contains("cannot be created"), "{f:?}");
        assert!(f.fix.unwrap().contains("install -d"));
        use std::os::unix::fs::PermissionsExt as _;
        let shared = d.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let f = state_dir(&shared);
        assert!(!f.ok);
        assert!(f.message.contains("unsafe: its mode 0777"), "{f:?}");
        assert!(f.fix.unwrap().contains("chmod 0750"));
    }

    #[test]
    fn control_dir_must_be_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        assert!(control_dir(&d.path().join("missing")).ok);
        let own = d.path().join("own");
        std::fs::create_dir(&own).unwrap();
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(control_dir(&own).ok);
        let shared = d.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let f = control_dir(&shared);
        assert!(!f.ok);
        assert!(f.message.contains("mode 1777"), "{f:?}");
        assert!(f.fix.unwrap().contains("-m 0700"));
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&own, &link).unwrap();
        let f = control_dir(&link);
        assert!(!f.ok && f.message.contains("symbolic link"), "{f:?}");
        if crate::files::euid() == 0 {
            let theirs = d.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            let f = control_dir(&theirs);
            assert!(!f.ok && f.message.contains("owned by uid 65534"), "{f:?}");
        }
    }
}
