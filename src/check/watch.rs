//! `pgha-check --watch`: check again every `--interval` and serve the last
//! result on `--listen`, so that monitoring sees a broken mesh before an
//! incident does.
//!
//! - `GET /health`: 200 when the last run passed, 503 otherwise (also
//!   before the first run ends); the body is the summary line, then the
//!   failed checks.
//! - `GET /metrics`: Prometheus text format: `pgha_check_ok{check,node}`
//!   (1 passed, 0 failed), `pgha_check_last_run_timestamp_seconds`,
//!   `pgha_check_duration_seconds`, `pgha_checks_failed`; from the journal
//!   ([`history_metrics`]) `pgha_failovers_total`, `pgha_switchovers_total`,
//!   `pgha_refusals_total`, `pgha_runs_total` and the last failover's
//!   times; from a `--status` round each interval ([`node_metrics`])
//!   `pgha_node_role`, `_timeline`, `_lag_bytes`, `_lag_seconds`,
//!   `_pgpool_attached`, `_problem`.
//!
//! The listener is a few lines of HTTP/1.1 on tokio (one request per
//! connection, `Connection: close`), bound to a loopback address only: the
//! findings name hosts, users and paths, which are nobody else's business.
//! Put a reverse proxy in front to expose them further.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use super::status::{Role, Row, Status};
use super::{Finding, Report};
use crate::cli::CheckArgs;
use crate::cluster::Topology;
use crate::error::{Error, Result};
use crate::pgpool::watchdog::WatchdogInfo;
use crate::report::Summary;
use crate::state::Run;

/// Longest request head read; anything longer is refused.
const MAX_REQUEST: usize = 8 * 1024;

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The `--listen` address, refused unless it is a loopback address.
fn loopback_listen(s: &str) -> Result<SocketAddr> {
    let addr: SocketAddr = s.parse().map_err(|_| {
        Error::Usage(format!(
            "--listen {s:?}: expected IP:PORT, e.g. 127.0.0.1:9187 or [::1]:9187"
        ))
    })?;
    if !addr.ip().is_loopback() {
        return Err(Error::Usage(format!(
            "--listen {s}: {} is not a loopback address; pgha-check serves /health and /metrics \
             on loopback only (127.0.0.0/8 or ::1), since they name hosts, users and paths: use \
             e.g. 127.0.0.1:{} and a reverse proxy if the monitoring runs elsewhere",
            addr.ip(),
            addr.port()
        )));
    }
    Ok(addr)
}

/// The last report and status, shared between the check loop and the
/// listener.
type Shared = Arc<RwLock<Last>>;

/// What the listener serves.
#[derive(Debug, Clone, Default)]
struct Last {
    report: Option<Report>,
    status: Option<Status>,
    /// Every run in the journal (counters come from all of them).
    runs: Vec<Run>,
}

/// Run the watch loop until SIGTERM or SIGINT.
pub(crate) async fn run(args: &CheckArgs) -> Result<Summary> {
    let every = args.interval.as_deref().unwrap_or("30s");
    let interval = super::positive_duration("--interval", every)?;
    let addr = loopback_listen(&args.listen)?;
    // A configuration that cannot be read at start is an error, not a
    // failing check: the operator sees it at once.
    Topology::load(args.common.config.as_deref())?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Usage(format!("--listen {addr}: cannot listen: {e}")))?;
    info!("serving /health and /metrics on http://{addr}, checking every {every}");
    let shared: Shared = Arc::new(RwLock::new(Last::default()));
    tokio::spawn(serve(listener, shared.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Step(format!("cannot watch for SIGTERM: {e}")))?;
    let mut runs = 0u64;
    loop {
        let last = tokio::select! {
            r = round(args) => r,
            _ = stopped(&mut term) => break,
        };
        runs += 1;
        if let Some(report) = &last.report {
            log_report(report);
        }
        *shared.write().unwrap_or_else(|e| e.into_inner()) = last;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped(&mut term) => break,
        }
    }
    Ok(Summary {
        outcome: crate::report::Outcome::Stopped,
        message: format!("watch stopped after {runs} runs"),
        ..Summary::default()
    })
}

/// Ends at SIGTERM or SIGINT.
pub(super) async fn stopped(term: &mut tokio::signal::unix::Signal) {
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// One round: the checks, a `--status` and the journal, with the
/// configuration read afresh (an unreadable one is a failed check).
async fn round(args: &CheckArgs) -> Last {
    match Topology::load(args.common.config.as_deref()) {
        Ok(topo) => {
            let (report, status) = tokio::join!(super::check(&topo), super::status::collect(&topo));
            let runs = crate::state::runs(&crate::state::read_journal(&topo.config.state_dir));
            Last {
                report: Some(report),
                status: Some(status),
                runs,
            }
        }
        Err(e) => Last {
            report: Some(Report::new(
                vec![Finding::fail(
                    "config",
                    "pgpool",
                    format!("{e:#}"),
                    "fix the configuration file named in the message",
                )],
                Duration::ZERO,
            )),
            status: None,
            runs: vec![],
        },
    }
}

/// The round's summary in the log, after its failed checks.
fn log_report(report: &Report) {
    if report.passing() {
        info!("{}", report.summary());
    } else {
        for f in report.checks.iter().filter(|f| !f.ok) {
            warn!("{}", f.line());
        }
        warn!("{}", report.summary());
    }
}

async fn serve(listener: TcpListener, shared: Shared) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(stream, shared.clone()));
            }
            Err(e) => {
                warn!("accept on the health listener failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(mut stream: TcpStream, shared: Shared) {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > MAX_REQUEST {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    if !matches!(
        tokio::time::timeout(REQUEST_TIMEOUT, read).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let response = {
        let last = shared.read().unwrap_or_else(|e| e.into_inner());
        respond(&buf, &last)
    };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
}

/// The whole HTTP response to the request head `req`.
fn respond(req: &[u8], last: &Last) -> Vec<u8> {
    let report = last.report.as_ref();
    let head = String::from_utf8_lossy(req);
    let mut first = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if req.len() > MAX_REQUEST {
        return http(
            431,
            "Request Header Fields Too Large",
            "text/plain",
            "request too large\n",
            true,
        );
    }
    let with_body = method != "HEAD";
    if method != "GET" && method != "HEAD" {
        return http(
            405,
            "Method Not Allowed",
            "text/plain",
            "only GET and HEAD\n",
            true,
        );
    }
    match path {
        "/health" => {
            let (code, reason, body) = health(report);
            http(code, reason, "text/plain; charset=utf-8", &body, with_body)
        }
        "/metrics" => http(
            200,
            "OK",
            "text/plain; version=0.0.4; charset=utf-8",
            &(metrics(report)
                + &history_metrics(&last.runs, super::unix_now())
                + &node_metrics(last.status.as_ref())),
            with_body,
        ),
        _ => http(
            404,
            "Not Found",
            "text/plain",
            "try /health or /metrics\n",
            with_body,
        ),
    }
}

fn http(code: u16, reason: &str, ctype: &str, body: &str, with_body: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// `/health`: status and body.
fn health(report: Option<&Report>) -> (u16, &'static str, String) {
    match report {
        None => (
            503,
            "Service Unavailable",
            "no check has completed yet\n".to_string(),
        ),
        Some(r) => {
            let mut body = r.summary();
            body.push('\n');
            for f in r.checks.iter().filter(|f| !f.ok) {
                body.push_str(&f.line());
                body.push('\n');
            }
            if r.passing() {
                (200, "OK", body)
            } else {
                (503, "Service Unavailable", body)
            }
        }
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `/metrics` in the Prometheus text exposition format.
fn metrics(report: Option<&Report>) -> String {
    let mut out = String::new();
    out.push_str(
        "# HELP pgha_check_ok Whether the check passed in the last run (1) or failed (0).\n\
         # TYPE pgha_check_ok gauge\n",
    );
    if let Some(r) = report {
        for f in &r.checks {
            out.push_str(&format!(
                "pgha_check_ok{{check=\"{}\",node=\"{}\"}} {}\n",
                label(&f.check),
                label(&f.node),
                u8::from(f.ok)
            ));
        }
    }
    let (ts, dur, failed) = match report {
        Some(r) => (r.finished_at, r.duration_ms as f64 / 1000.0, r.failed),
        None => (0.0, 0.0, 0),
    };
    out.push_str(&format!(
        "# HELP pgha_check_last_run_timestamp_seconds When the last run ended (Unix time; 0: none yet).\n\
         # TYPE pgha_check_last_run_timestamp_seconds gauge\n\
         pgha_check_last_run_timestamp_seconds {ts:.3}\n\
         # HELP pgha_check_duration_seconds How long the last run took.\n\
         # TYPE pgha_check_duration_seconds gauge\n\
         pgha_check_duration_seconds {dur:.3}\n\
         # HELP pgha_checks_failed Number of checks that failed in the last run.\n\
         # TYPE pgha_checks_failed gauge\n\
         pgha_checks_failed {failed}\n"
    ));
    out
}

/// A detached phase belongs to the run that started it when it starts
/// this soon after that run ended (it is spawned as the run ends).
const SETTLE_STARTS_WITHIN_MS: u64 = 5_000;

/// Label sets (`a="x",b="y"`, empty for none) and their values.
type Rows = Vec<(String, String)>;

fn sample(out: &mut String, name: &str, help: &str, kind: &str, rows: &[(String, String)]) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    for (labels, v) in rows {
        if labels.is_empty() {
            out.push_str(&format!("{name} {v}\n"));
        } else {
            out.push_str(&format!("{name}{{{labels}}} {v}\n"));
        }
    }
}

/// Metrics from what happened (the journal's runs), at `now` (Unix
/// seconds): counters of failovers, switchovers and refusals by outcome,
/// of every run by command and outcome, and the last failover's times.
/// The counters restart when the journal rotates past its bound (a
/// counter reset, which `rate()` and `increase()` handle).
fn history_metrics(runs: &[Run], now: f64) -> String {
    let main: Vec<&Run> = runs.iter().filter(|r| r.phase != "settle").collect();
    let mut out = String::new();
    run_counters(&mut out, &main);
    last_failover(&mut out, &LastFailover::of(runs, &main, now));
    out
}

/// The rows of a counter: how many of `main` match `pred`, by `key`.
fn count(main: &[&Run], pred: impl Fn(&Run) -> bool, key: impl Fn(&Run) -> String) -> Rows {
    let mut m: BTreeMap<String, u64> = BTreeMap::new();
    for r in main.iter().filter(|r| pred(r)) {
        *m.entry(key(r)).or_default() += 1;
    }
    m.into_iter().map(|(k, v)| (k, v.to_string())).collect()
}

/// The counters of the runs' main phases.
fn run_counters(out: &mut String, main: &[&Run]) {
    let by_outcome = |r: &Run| format!("outcome=\"{}\"", label(&r.outcome));
    sample(
        out,
        "pgha_failovers_total",
        "pgha-failover runs that promoted (or finished a promotion), by outcome.",
        "counter",
        &count(
            main,
            |r| r.command == "failover" && r.kind == "failover",
            by_outcome,
        ),
    );
    sample(
        out,
        "pgha_switchovers_total",
        "pgha-failover runs for a primary that was alive (fenced, then a standby promoted), by outcome.",
        "counter",
        &count(
            main,
            |r| r.command == "failover" && r.kind == "switchover",
            by_outcome,
        ),
    );
    sample(
        out,
        "pgha_refusals_total",
        "Runs that refused to act (nothing changed), by command.",
        "counter",
        &count(
            main,
            |r| r.outcome == "refused",
            |r| format!("command=\"{}\"", label(&r.command)),
        ),
    );
    sample(
        out,
        "pgha_runs_total",
        "Every run in the journal, by command and outcome.",
        "counter",
        &count(
            main,
            |_| true,
            |r| {
                format!(
                    "command=\"{}\",outcome=\"{}\"",
                    label(&r.command),
                    label(&r.outcome)
                )
            },
        ),
    );
}

/// The times of the last failover or switchover, in seconds.
struct LastFailover {
    /// When it started (Unix time; 0: none).
    started: f64,
    /// How long pgpool waited for it.
    blocked: f64,
    /// From its start to the end of its detached phase.
    total: f64,
    /// Since its main phase ended (-1: none).
    since: f64,
}

impl LastFailover {
    fn of(runs: &[Run], main: &[&Run], now: f64) -> LastFailover {
        let last = main.iter().rev().find(|r| {
            r.command == "failover" && matches!(r.kind.as_str(), "failover" | "switchover")
        });
        let Some(r) = last else {
            return LastFailover {
                started: 0.0,
                blocked: 0.0,
                total: 0.0,
                since: -1.0,
            };
        };
        let start = r.started_ms as f64 / 1000.0;
        let end_main = start + r.ms as f64 / 1000.0;
        // The detached phase it started, if it ran: the total ends there.
        let end = runs
            .iter()
            .filter(|s| s.phase == "settle" && s.started_ms >= r.started_ms)
            .filter(|s| s.started_ms <= r.started_ms + r.ms + SETTLE_STARTS_WITHIN_MS)
            .map(|s| (s.started_ms + s.ms) as f64 / 1000.0)
            .next()
            .unwrap_or(end_main);
        LastFailover {
            started: start,
            blocked: r.blocked_ms.unwrap_or(r.ms) as f64 / 1000.0,
            total: end - start,
            since: (now - end_main).max(0.0),
        }
    }
}

/// The gauges of the last failover.
fn last_failover(out: &mut String, last: &LastFailover) {
    let one = |v: f64| vec![(String::new(), format!("{v:.3}"))];
    sample(
        out,
        "pgha_last_failover_timestamp_seconds",
        "When the last failover or switchover started (Unix time; 0: none in the journal).",
        "gauge",
        &one(last.started),
    );
    sample(
        out,
        "pgha_last_failover_blocked_seconds",
        "How long pgpool waited for the last failover's pgha-failover.",
        "gauge",
        &one(last.blocked),
    );
    sample(
        out,
        "pgha_last_failover_total_seconds",
        "The last failover from its start to the end of its detached phase (standbys following and attached).",
        "gauge",
        &one(last.total),
    );
    sample(
        out,
        "pgha_seconds_since_last_failover",
        "Seconds since the last failover ended (-1: none in the journal).",
        "gauge",
        &one(last.since),
    );
}

/// Per-node gauges from the last `--status` round.
fn node_metrics(status: Option<&Status>) -> String {
    let mut out = String::new();
    let nodes = status.map(|s| s.nodes.as_slice()).unwrap_or_default();
    let l = |r: &Row| format!("node=\"{}\",address=\"{}\"", r.id, label(&r.address));
    let rows = |f: &dyn Fn(&Row) -> Option<String>| {
        nodes
            .iter()
            .filter_map(|r| f(r).map(|v| (l(r), v)))
            .collect::<Vec<_>>()
    };
    let mut roles = Vec::new();
    for r in nodes {
        for role in Role::ALL {
            roles.push((
                format!("{},role=\"{}\"", l(r), role.as_str()),
                u8::from(r.role == role).to_string(),
            ));
        }
    }
    sample(
        &mut out,
        "pgha_node_role",
        "What the node says it is (1 for its role): primary, standby, down (no answer), unknown.",
        "gauge",
        &roles,
    );
    sample(
        &mut out,
        "pgha_node_timeline",
        "The node's timeline.",
        "gauge",
        &rows(&|r| r.timeline.map(|t| t.to_string())),
    );
    sample(
        &mut out,
        "pgha_node_lag_bytes",
        "Bytes of WAL the standby has not received from the primary.",
        "gauge",
        &rows(&|r| r.lag_bytes.map(|b| b.to_string())),
    );
    sample(
        &mut out,
        "pgha_node_lag_seconds",
        "pg_stat_replication.replay_lag on the primary.",
        "gauge",
        &rows(&|r| r.lag_seconds.map(|s| format!("{s:.3}"))),
    );
    sample(
        &mut out,
        "pgha_node_pgpool_attached",
        "Attached in pgpool (status up or waiting).",
        "gauge",
        &rows(&|r| {
            r.pgpool_status
                .as_ref()
                .map(|s| u8::from(s == "up" || s == "waiting").to_string())
        }),
    );
    sample(
        &mut out,
        "pgha_node_problem",
        "1 when --status finds something to fix on the node.",
        "gauge",
        &rows(&|r| Some(u8::from(r.problem.is_some()).to_string())),
    );
    out.push_str(&watchdog_metrics(status.and_then(|s| s.watchdog.as_ref())));
    out
}

/// pgpool's watchdog: its quorum status (1 exists, 0 on the edge, -1 lost,
/// -2 no leader) and each member's state; nothing without a watchdog.
fn watchdog_metrics(w: Option<&WatchdogInfo>) -> String {
    let Some(w) = w else {
        return String::new();
    };
    let mut out = String::new();
    sample(
        &mut out,
        "pgha_watchdog_quorum_status",
        "pgpool's watchdog quorum: 1 exists, 0 on the edge, -1 lost, -2 no leader.",
        "gauge",
        &[(String::new(), w.quorum_status.to_string())],
    );
    let members: Vec<(String, String)> = w
        .members()
        .map(|m| {
            let label = format!("member=\"{}\",state=\"{}\"", m.host, m.state_name);
            (label, "1".to_string())
        })
        .collect();
    sample(
        &mut out,
        "pgha_watchdog_member",
        "Each pgpool member's watchdog state (LEADER, STANDBY, LOST, SHUTDOWN, ...).",
        "gauge",
        &members,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report::new(
            vec![
                Finding::pass("ssh", "pgpool->node0", "ok"),
                Finding::fail("ssh", "node1->node2", "missing authorized key", "append"),
            ],
            Duration::from_millis(1500),
        )
    }

    fn last(r: &Report) -> Last {
        Last {
            report: Some(r.clone()),
            ..Last::default()
        }
    }

    fn run(kind: &str, phase: &str, outcome: &str, started_ms: u64, ms: u64) -> Run {
        Run {
            when: String::new(),
            started_ms,
            command: "failover".into(),
            pid: 1,
            kind: kind.into(),
            phase: phase.into(),
            outcome: outcome.into(),
            node: Some(0),
            ms,
            blocked_ms: (phase == "main").then_some(ms),
            message: String::new(),
        }
    }

    #[test]
    fn metrics_from_what_happened() {
        let none = history_metrics(&[], 100.0);
        assert!(
            none.contains("pgha_seconds_since_last_failover -1.000\n"),
            "{none}"
        );
        assert!(
            none.contains("# TYPE pgha_failovers_total counter\n"),
            "{none}"
        );
        let runs = vec![
            run("refused", "main", "refused", 1_000, 10),
            run("failover", "main", "promoted", 10_000, 50),
            run("failover", "settle", "settled", 10_060, 300),
            run("switchover", "main", "promoted", 20_000, 200),
            run("failover", "main", "failed", 30_000, 1500),
            run("failover", "main", "promoted", 40_000, 80),
        ];
        let m = history_metrics(&runs, 50.0);
        assert!(
            m.contains("pgha_failovers_total{outcome=\"promoted\"} 2\n"),
            "{m}"
        );
        assert!(
            m.contains("pgha_failovers_total{outcome=\"failed\"} 1\n"),
            "{m}"
        );
        assert!(
            m.contains("pgha_switchovers_total{outcome=\"promoted\"} 1\n"),
            "{m}"
        );
        assert!(
            m.contains("pgha_refusals_total{command=\"failover\"} 1\n"),
            "{m}"
        );
        assert!(
            m.contains("pgha_last_failover_timestamp_seconds 40.000\n"),
            "{m}"
        );
        assert!(
            m.contains("pgha_last_failover_blocked_seconds 0.080\n"),
            "{m}"
        );
        assert!(
            m.contains("pgha_seconds_since_last_failover 9.920\n"),
            "{m}"
        );
        // The settle phase of an earlier run is not the last one's.
        assert!(
            m.contains("pgha_last_failover_total_seconds 0.080\n"),
            "{m}"
        );
        let m = history_metrics(&runs[..3], 50.0);
        assert!(
            m.contains("pgha_last_failover_total_seconds 0.360\n"),
            "{m}"
        );
        for l in m.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.rsplit_once(' ').unwrap().1.parse::<f64>().is_ok(), "{l}");
        }
        assert!(node_metrics(None).contains("# TYPE pgha_node_role gauge"));
        assert!(!node_metrics(None).contains("pgha_watchdog"));
        let json = r#"{"QuorumStatus":1,"LeaderNodeName":"a","WatchdogNodes":[{"ID":0,"State":7,"NodeName":"b","HostName":"127.0.0.21","StateName":"STANDBY"}]}"#;
        let w = WatchdogInfo::parse(json).unwrap();
        let m = watchdog_metrics(Some(&w));
        assert!(m.contains("pgha_watchdog_quorum_status 1\n"), "{m}");
        assert!(
            m.contains("pgha_watchdog_member{member=\"127.0.0.21\",state=\"STANDBY\"} 1\n"),
            "{m}"
        );
    }

    #[test]
    fn only_loopback_is_served() {
        assert!(loopback_listen("127.0.0.1:9187").is_ok());
        assert!(loopback_listen("127.0.101.20:9187").is_ok());
        assert!(loopback_listen("[::1]:9187").is_ok());
        let e = loopback_listen("0.0.0.0:9187").unwrap_err();
        assert!(
            e.to_string().contains("0.0.0.0 is not a loopback address"),
            "{e}"
        );
        assert_eq!(e.exit_code(), crate::exit::USAGE);
        assert!(loopback_listen("[::]:9187").is_err());
        assert!(
            loopback_listen("localhost:9187")
                .unwrap_err()
                .to_string()
                .contains("expected IP:PORT")
        );
    }

    #[test]
    fn metrics_in_prometheus_text() {
        let m = metrics(Some(&report()));
        assert!(
            m.contains("pgha_check_ok{check=\"ssh\",node=\"pgpool->node0\"} 1\n"),
            "{m}"
        );
        assert!(
            m.contains("pgha_check_ok{check=\"ssh\",node=\"node1->node2\"} 0\n"),
            "{m}"
        );
        assert!(m.contains("pgha_checks_failed 1\n"), "{m}");
        assert!(m.contains("pgha_check_duration_seconds 1.500\n"), "{m}");
        assert!(m.contains("# TYPE pgha_check_last_run_timestamp_seconds gauge\n"));
        // Every sample line is NAME{labels} VALUE or NAME VALUE.
        for l in m.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = l.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
        let empty = metrics(None);
        assert!(empty.contains("pgha_check_last_run_timestamp_seconds 0.000"));
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn http_routes() {
        let r = report();
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        let h = text(respond(
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
            &last(&r),
        ));
        assert!(h.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{h}");
        assert!(h.contains("1 of 2 checks FAILED"), "{h}");
        assert!(h.contains("FAIL ssh"), "{h}");
        let body_len = h.split("\r\n\r\n").nth(1).unwrap().len();
        assert!(
            h.contains(&format!("Content-Length: {body_len}\r\n")),
            "{h}"
        );
        let ok = Report::new(
            vec![Finding::pass("ssh", "pgpool->node0", "ok")],
            Duration::ZERO,
        );
        let h = text(respond(b"GET /health HTTP/1.1\r\n\r\n", &last(&ok)));
        assert!(h.starts_with("HTTP/1.1 200 OK\r\n"), "{h}");
        let h = text(respond(b"GET /health HTTP/1.1\r\n\r\n", &Last::default()));
        assert!(h.starts_with("HTTP/1.1 503"), "{h}");
        let m = text(respond(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", &last(&r)));
        assert!(
            m.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4"),
            "{m}"
        );
        let head = text(respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", &last(&r)));
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        assert!(
            text(respond(b"POST /health HTTP/1.1\r\n\r\n", &Last::default()))
                .starts_with("HTTP/1.1 405")
        );
        assert!(
            text(respond(b"GET / HTTP/1.1\r\n\r\n", &Last::default())).starts_with("HTTP/1.1 404")
        );
        assert!(
            text(respond(&vec![b'a'; MAX_REQUEST + 1], &Last::default()))
                .starts_with("HTTP/1.1 431")
        );
    }

    #[tokio::test]
    async fn serves_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared: Shared = Arc::new(RwLock::new(last(&report())));
        tokio::spawn(serve(listener, shared.clone()));
        let get = |path: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/health").await.starts_with("HTTP/1.1 503"));
        *shared.write().unwrap() = last(&Report::new(
            vec![Finding::pass("ssh", "pgpool->node0", "ok")],
            Duration::ZERO,
        ));
        assert!(get("/health").await.starts_with("HTTP/1.1 200"));
        assert!(get("/metrics").await.contains("pgha_checks_failed 0"));
    }
}
