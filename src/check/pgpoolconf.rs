//! `pgpool.conf` itself, and the cluster as a whole:
//!
//! - `failover_command` and `follow_primary_command` run pgha's binaries,
//!   which exist here, with arguments those binaries accept (checked with
//!   their own command-line definitions after substituting pgpool's `%`
//!   placeholders);
//! - exactly one primary;
//! - every standby streams from it under the `application_name` that
//!   `backend_application_nameN` says, or pgpool shows no replication state
//!   (and pgpool 4.3 cannot tell which standby lags);
//! - a watchdog of an even number of pgpool nodes with
//!   `enable_consensus_with_half_votes`, or without
//!   `failover_when_quorum_exists`, can split brain.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use clap::Parser;

use super::{Finding, SqlFacts, subject};
use crate::cli::{FailoverArgs, FollowArgs};
use crate::cluster::{Node, Topology};
use crate::pgpool::conf::PgpoolConf;
use crate::postgres;

/// pgpool's placeholders, each replaced by a value of the right shape.
const PLACEHOLDERS: [(&str, &str); 12] = [
    ("%d", "0"),
    ("%h", "127.0.0.2"),
    ("%p", "5432"),
    ("%D", "/var/lib/postgresql/data"),
    ("%m", "1"),
    ("%H", "127.0.0.3"),
    ("%M", "0"),
    ("%P", "0"),
    ("%r", "5432"),
    ("%R", "/var/lib/postgresql/data"),
    ("%N", "127.0.0.2"),
    ("%S", "5432"),
];

/// A command line with pgpool's placeholders filled in with sample values.
fn substitute(cmd: &str) -> String {
    let mut out = String::with_capacity(cmd.len());
    let mut rest = cmd;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("%%") {
            out.push('%');
            rest = t;
        } else if let Some((p, v)) = PLACEHOLDERS.iter().find(|(p, _)| tail.starts_with(p)) {
            out.push_str(v);
            rest = &tail[p.len()..];
        } else {
            out.push('%');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Split a command line into words as `sh` would for a simple command:
/// single and double quotes, backslash escapes. `None` for anything that
/// needs a real shell (pipes, `;`, `&&`, redirections, `$`).
fn shell_words(s: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => cur.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => cur.push(chars.next()?),
                        '$' | '`' => return None,
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next()?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            ';' | '|' | '&' | '<' | '>' | '$' | '`' | '(' | ')' => return None,
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Some(words)
}

/// The program `words` runs, skipping a leading `env` and `NAME=value`.
fn program(words: &[String]) -> Option<(usize, &str)> {
    let mut i = 0;
    if words.first().map(String::as_str) == Some("env")
        || words.first().is_some_and(|w| w.ends_with("/env"))
    {
        i = 1;
    }
    while words
        .get(i)
        .is_some_and(|w| w.contains('=') && !w.starts_with('-'))
    {
        i += 1;
    }
    words.get(i).map(|w| (i, w.as_str()))
}

fn executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where `prog` is: itself when it has a `/`, else the first match on
/// `PATH`.
fn locate(prog: &str) -> Option<PathBuf> {
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        return executable(&p).then_some(p);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(prog))
            .find(|p| executable(p))
    })
}

/// Check one pgpool command setting (`key`) that must run `binary`, whose
/// arguments `parse` validates. `example` is a good setting.
fn command(
    conf: &PgpoolConf,
    key: &str,
    binary: &str,
    example: &str,
    required: bool,
    parse: impl Fn(&[String]) -> Result<(), String>,
) -> Finding {
    let value = conf.get(key).unwrap_or("").trim();
    let at = at(conf, key);
    let fix = format!("set {key} = '{example}' in {}", conf.path.display());
    let fail = |message: String, fix: String| Finding::fail(key, "pgpool", message, fix);
    if value.is_empty() {
        return if required {
            fail(
                format!("{key} is empty ({at}): pgpool will never run {binary}"),
                fix,
            )
        } else {
            Finding::pass(
                key,
                "pgpool",
                format!("{key} not set: pgha-failover repoints the standbys itself"),
            )
        };
    }
    let Some(words) = shell_words(&substitute(value)) else {
        return fail(
            format!("{key} = '{value}' ({at}) is a shell pipeline, not a plain call of {binary}"),
            fix,
        );
    };
    let Some((i, prog)) = program(&words) else {
        return fail(format!("{key} ({at}) runs nothing"), fix);
    };
    let base = prog.rsplit('/').next().unwrap_or(prog);
    if base != binary {
        return fail(
            format!("{key} = '{value}' ({at}) runs {prog}, not {binary}"),
            fix,
        );
    }
    let Some(path) = locate(prog) else {
        return fail(
            format!("{key} ({at}) runs {prog}, which is not an executable file on this host"),
            format!("install pgha on this host (it provides /usr/bin/{binary}), or {fix}"),
        );
    };
    if let Err(e) = parse(&words[i..]) {
        return fail(
            format!("{key} = '{value}' ({at}): {binary} would refuse its arguments: {e}"),
            fix,
        );
    }
    Finding::pass(
        key,
        "pgpool",
        format!("{key} runs {} with arguments it accepts", path.display()),
    )
}

/// Where `key` is set: `pgpool.conf:LINE`, or the file when it is not.
fn at(conf: &PgpoolConf, key: &str) -> String {
    match conf.line_of(key) {
        Some(l) => format!("{}:{l}", conf.path.display()),
        None => conf.path.display().to_string(),
    }
}

/// A `failover_command` that does not pass `%P` leaves pgha to infer the
/// old primary from the survivors (`%m` and `%M` are only the lowest live
/// node ids), and it refuses when they cannot tell: fail it.
fn needs_old_primary(conf: &PgpoolConf, f: Finding) -> Finding {
    let value = conf.get("failover_command").unwrap_or("");
    if !f.ok || value.contains("%P") {
        return f;
    }
    let at = at(conf, "failover_command");
    Finding::fail(
        "failover_command",
        "pgpool",
        format!(
            "failover_command = '{}' ({at}) does not pass %P: pgha cannot be told which node was the primary (%m and %M are only the lowest live node ids) and must refuse whenever the surviving nodes do not tell",
            value.trim()
        ),
        format!(
            "add --old-primary %P: failover_command = '{} --old-primary %P'",
            value.trim()
        ),
    )
}

fn clap_error(e: clap::Error) -> String {
    e.to_string()
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string()
}

/// `failover_command` and `follow_primary_command`.
pub(crate) fn commands(topo: &Topology) -> Vec<Finding> {
    vec![
        needs_old_primary(
            &topo.pgpool,
            command(
                &topo.pgpool,
                "failover_command",
                "pgha-failover",
                "/usr/bin/pgha-failover %d %M %m --old-primary %P",
                true,
                |w| {
                    FailoverArgs::try_parse_from(w)
                        .map(|_| ())
                        .map_err(clap_error)
                },
            ),
        ),
        command(
            &topo.pgpool,
            "follow_primary_command",
            "pgha-follow",
            "/usr/bin/pgha-follow %d --new-primary %m --old-primary %P",
            false,
            |w| {
                FollowArgs::try_parse_from(w)
                    .map(|_| ())
                    .map_err(clap_error)
            },
        ),
    ]
}

/// The number of pgpool nodes a watchdog setting describes: `hostnameN`
/// (pgpool 4.2 and later), else this node plus `other_pgpool_hostnameN`.
fn watchdog_nodes(conf: &PgpoolConf) -> usize {
    let count = |prefix: &str| {
        (0..128)
            .filter(|i| {
                conf.get(&format!("{prefix}{i}"))
                    .is_some_and(|v| !v.trim().is_empty())
            })
            .count()
    };
    match count("hostname") {
        0 => 1 + count("other_pgpool_hostname"),
        n => n,
    }
}

/// Watchdog quorum: an even number of pgpool nodes with
/// `enable_consensus_with_half_votes = on`, or
/// `failover_when_quorum_exists = off`, lets two halves fail over each on
/// their own.
pub(crate) fn watchdog(conf: &PgpoolConf) -> Finding {
    if !conf.is_on("use_watchdog") {
        return Finding::pass(
            "watchdog",
            "pgpool",
            "use_watchdog = off: one pgpool decides alone",
        );
    }
    let n = watchdog_nodes(conf);
    let half = conf.is_on("enable_consensus_with_half_votes");
    let quorum = conf.get("failover_when_quorum_exists").is_none()
        || conf.is_on("failover_when_quorum_exists");
    if !quorum {
        return Finding::fail(
            "watchdog",
            "pgpool",
            format!(
                "watchdog with {n} pgpool nodes and failover_when_quorum_exists = off: a pgpool cut off from the others still fails over: split brain"
            ),
            "set failover_when_quorum_exists = on in pgpool.conf",
        );
    }
    if n.is_multiple_of(2) && half {
        return Finding::fail(
            "watchdog",
            "pgpool",
            format!(
                "watchdog with {n} pgpool nodes (an even number) and enable_consensus_with_half_votes = on: \
                 a network split into two halves gives each half a quorum, both may promote: split brain"
            ),
            "add a pgpool node (an odd number of nodes), or set enable_consensus_with_half_votes = off",
        );
    }
    let note = if n.is_multiple_of(2) {
        ", half-vote consensus off (a half cannot fail over alone)"
    } else {
        ""
    };
    Finding::pass(
        "watchdog",
        "pgpool",
        format!("watchdog with {n} pgpool nodes{note}"),
    )
}

/// Exactly one primary among the nodes that answered.
pub(crate) fn primary(sql: &[(Node, Result<SqlFacts, String>)]) -> Finding {
    let primaries: Vec<&Node> = sql
        .iter()
        .filter(|(_, f)| f.as_ref().is_ok_and(|f| !f.state.in_recovery))
        .map(|(n, _)| n)
        .collect();
    let labels = |v: &[&Node]| v.iter().map(|n| n.label()).collect::<Vec<_>>().join(", ");
    match primaries.as_slice() {
        [] => Finding::fail(
            "primary",
            "cluster",
            "no primary among the nodes that answered",
            "start the primary, or promote a standby (pgha-failover) and repoint the others (pgha-follow)",
        ),
        [p] => Finding::pass(
            "primary",
            "cluster",
            format!("{} is the one primary", p.label()),
        ),
        many => Finding::fail(
            "primary",
            "cluster",
            format!("{} all accept writes: split brain", labels(many)),
            "stop every primary but the newest, then rejoin the others (pgha-attach --rejoin NODE)",
        ),
    }
}

/// The `application_name` a standby's walreceiver uses: `application_name`
/// of its `primary_conninfo`, else `cluster_name`, else `walreceiver`.
fn effective_application_name(facts: &SqlFacts) -> String {
    if let Some(a) = facts
        .state
        .primary_conninfo
        .as_deref()
        .map(postgres::parse_conninfo)
        .and_then(|kv| kv.get("application_name").cloned())
        .filter(|a| !a.is_empty())
    {
        return a;
    }
    facts
        .settings
        .get("cluster_name")
        .filter(|c| !c.is_empty())
        .cloned()
        .unwrap_or_else(|| "walreceiver".into())
}

/// For a standby: it streams from the primary as `backend_application_nameN`.
pub(crate) fn application_name(
    node: &Node,
    sql: &[(Node, Result<SqlFacts, String>)],
) -> Option<Finding> {
    let facts = sql.iter().find(|(n, _)| n.id == node.id)?.1.as_ref().ok()?;
    if !facts.state.in_recovery {
        return None;
    }
    let name = effective_application_name(facts);
    if let Some(f) = unnamed_in_pgpool(node, &name) {
        return Some(f);
    }
    let primary = sql
        .iter()
        .filter_map(|(n, f)| f.as_ref().ok().map(|f| (n, f)))
        .find(|(_, f)| !f.state.in_recovery);
    let Some((pn, pf)) = primary else {
        return Some(Finding::fail(
            "application_name",
            &subject(node),
            format!(
                "{} streams as '{name}', but there is no primary to stream from",
                node.label()
            ),
            "see check primary",
        ));
    };
    Some(streams_from(node, &name, pn, pf))
}

/// `backend_application_nameN` is not the `name` the standby streams as.
fn unnamed_in_pgpool(node: &Node, name: &str) -> Option<Finding> {
    let key = format!("backend_application_name{}", node.id);
    let fail = |message: String, fix: String| {
        Some(Finding::fail(
            "application_name",
            &subject(node),
            message,
            fix,
        ))
    };
    match &node.application_name {
        None => fail(
            format!("{key} is not set; {} streams as '{name}'", node.label()),
            format!("set {key} = '{name}' in pgpool.conf"),
        ),
        Some(a) if *a != name => fail(
            format!(
                "{key} = '{a}', but {} streams as '{name}': pgpool cannot see its replication state",
                node.label()
            ),
            format!(
                "set {key} = '{name}' in pgpool.conf, or application_name={a} in the standby's primary_conninfo"
            ),
        ),
        Some(_) => None,
    }
}

/// The primary `pn` (`pf`) lists the standby `node`, as `name`, streaming.
fn streams_from(node: &Node, name: &str, pn: &Node, pf: &SqlFacts) -> Finding {
    let here = subject(node);
    let key = format!("backend_application_name{}", node.id);
    match pf
        .state
        .replicas
        .iter()
        .find(|r| r.application_name == name)
    {
        Some(r) if r.state == "streaming" => Finding::pass(
            "application_name",
            &here,
            format!(
                "{} streams from {} as '{name}' ({key}), {}",
                node.label(),
                pn.label(),
                r.sync_state
            ),
        ),
        Some(r) => Finding::fail(
            "application_name",
            &here,
            format!(
                "{} is in state {} on {}, not streaming",
                node.label(),
                r.state,
                pn.label()
            ),
            format!(
                "wait for it to catch up, or look at the server log of {}",
                node.label()
            ),
        ),
        None => Finding::fail(
            "application_name",
            &here,
            format!(
                "{} is not streaming from the primary {} (no '{name}' in its pg_stat_replication)",
                node.label(),
                pn.label()
            ),
            format!(
                "look at the server log of {}; then pgha-follow {} makes it follow the primary",
                node.label(),
                node.id
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::{NodeState, Replica};
    use std::collections::BTreeMap;

    fn conf(text: &str) -> PgpoolConf {
        PgpoolConf::parse(
            Path::new("/etc/pgpool2/pgpool.conf"),
            &format!("backend_hostname0 = '127.0.0.2'\n{text}"),
        )
        .unwrap()
    }

    #[test]
    fn placeholders_and_words() {
        assert_eq!(substitute("x %d %M %m %% %z"), "x 0 0 1 % %z");
        assert_eq!(
            shell_words("/usr/bin/pgha-failover 0 ' 1' \"a b\" c\\ d").unwrap(),
            vec!["/usr/bin/pgha-failover", "0", " 1", "a b", "c d"]
        );
        assert!(shell_words("a | b").is_none());
        assert!(shell_words("a > /log").is_none());
        assert!(shell_words("'unterminated").is_none());
        let w = shell_words("env PGHA_CONFIG=/x /usr/bin/pgha-follow 1").unwrap();
        assert_eq!(program(&w), Some((2, "/usr/bin/pgha-follow")));
    }

    #[test]
    fn commands_must_run_pgha_with_valid_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("pgha-failover");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let b = bin.display();
        let check = |text: &str| {
            let t = Topology::from_parts(crate::config::Config::default(), conf(text));
            commands(&t).remove(0)
        };
        let f = check(&format!(
            "failover_command = '{b} %d %M %m --old-primary %P'"
        ));
        assert!(f.ok, "{f:?}");
        let f = check(&format!("failover_command = '{b} %d %M %m'"));
        assert!(!f.ok, "{f:?}");
        assert!(f.message.contains("does not pass %P"), "{}", f.message);
        assert!(
            f.fix.as_deref().unwrap().ends_with("%m --old-primary %P'"),
            "{f:?}"
        );
        let f = check(&format!("failover_command = '{b} %d %M'"));
        assert!(!f.ok);
        assert!(
            f.message.contains("would refuse its arguments"),
            "{}",
            f.message
        );
        let f = check("failover_command = '/etc/pgpool2/failover.sh %d %M %m'");
        assert!(
            f.message
                .contains("runs /etc/pgpool2/failover.sh, not pgha-failover"),
            "{}",
            f.message
        );
        assert!(f.fix.unwrap().contains("/usr/bin/pgha-failover %d %M %m"));
        let f = check("failover_command = '/nonexistent/pgha-failover %d %M %m'");
        assert!(
            f.message.contains("not an executable file"),
            "{}",
            f.message
        );
        let f = check("");
        assert!(
            f.message.starts_with("failover_command is empty"),
            "{}",
            f.message
        );
        // follow_primary_command is optional.
        let t = Topology::from_parts(crate::config::Config::default(), conf(""));
        assert!(commands(&t)[1].ok);
    }

    #[test]
    fn watchdog_split_brain() {
        assert!(watchdog(&conf("use_watchdog = off")).ok);
        let two = "use_watchdog = on\nhostname0 = 'a'\nhostname1 = 'b'\n";
        assert_eq!(watchdog_nodes(&conf(two)), 2);
        assert!(watchdog(&conf(two)).ok);
        let f = watchdog(&conf(&format!(
            "{two}enable_consensus_with_half_votes = on\n"
        )));
        assert!(!f.ok);
        assert!(
            f.message.contains("2 pgpool nodes (an even number)"),
            "{}",
            f.message
        );
        let three = format!("{two}hostname2 = 'c'\nenable_consensus_with_half_votes = on\n");
        assert!(watchdog(&conf(&three)).ok);
        let old = "use_watchdog = on\nother_pgpool_hostname0 = 'b'\nenable_consensus_with_half_votes = on\n";
        assert_eq!(watchdog_nodes(&conf(old)), 2);
        assert!(!watchdog(&conf(old)).ok);
        let f = watchdog(&conf(&format!(
            "{}failover_when_quorum_exists = off\n",
            "use_watchdog = on\nhostname0 = 'a'\nhostname1 = 'b'\nhostname2 = 'c'\n"
        )));
        assert!(!f.ok);
    }

    fn state(in_recovery: bool, replicas: Vec<Replica>, conninfo: Option<&str>) -> SqlFacts {
        SqlFacts {
            state: NodeState {
                host: "h".into(),
                port: 5432,
                server_version_num: 150000,
                in_recovery,
                timeline: 1,
                current_lsn: None,
                receive_lsn: None,
                replay_lsn: None,
                wal_receiver: None,
                primary_conninfo: conninfo.map(String::from),
                system_identifier: 1,
                data_directory: "/d".into(),
                wal_log_hints: true,
                data_checksums: true,
                replicas,
                synchronous_standby_names: String::new(),
                synchronous_commit: "on".into(),
                restore_command: String::new(),
            },
            superuser: true,
            settings: BTreeMap::from([("cluster_name".to_string(), "pg1".to_string())]),
            note: None,
        }
    }

    fn node(id: u32, app: Option<&str>) -> Node {
        Node {
            id,
            host: format!("127.0.0.{}", id + 2),
            port: 5432,
            data_dir: None,
            ssh_host: format!("127.0.0.{}", id + 2),
            replication_host: format!("127.0.0.{}", id + 2),
            application_name: app.map(String::from),
        }
    }

    #[test]
    fn application_names_match_what_the_standby_streams_as() {
        let rep = |name: &str| Replica {
            application_name: name.into(),
            client_addr: None,
            state: "streaming".into(),
            sync_state: "async".into(),
            replay_lsn: None,
            replay_lag_ms: None,
        };
        let p = node(0, Some("pg0"));
        let s = node(1, Some("pg1"));
        let sql = vec![
            (p.clone(), Ok(state(false, vec![rep("pg1")], None))),
            (
                s.clone(),
                Ok(state(true, vec![], Some("host=a port=5432 user=repl"))),
            ),
        ];
        assert!(application_name(&p, &sql).is_none());
        let f = application_name(&s, &sql).unwrap();
        assert!(f.ok, "{f:?}");
        assert!(primary(&sql).ok);

        // primary_conninfo's application_name wins over cluster_name.
        let sql2 = vec![
            sql[0].clone(),
            (
                s.clone(),
                Ok(state(true, vec![], Some("host=a application_name=other"))),
            ),
        ];
        let f = application_name(&s, &sql2).unwrap();
        assert!(!f.ok);
        assert!(
            f.message
                .contains("backend_application_name1 = 'pg1', but node 1"),
            "{}",
            f.message
        );
        assert!(f.message.contains("streams as 'other'"), "{}", f.message);

        let unnamed = node(1, None);
        let sql3 = vec![sql[0].clone(), (unnamed.clone(), sql[1].1.clone())];
        let f = application_name(&unnamed, &sql3).unwrap();
        assert_eq!(
            f.fix.unwrap(),
            "set backend_application_name1 = 'pg1' in pgpool.conf"
        );

        // Not in pg_stat_replication: not streaming.
        let sql4 = vec![(p.clone(), Ok(state(false, vec![], None))), sql[1].clone()];
        let f = application_name(&s, &sql4).unwrap();
        assert!(
            f.message.contains("is not streaming from the primary"),
            "{}",
            f.message
        );

        // Two primaries.
        let sql5 = vec![sql[0].clone(), (s.clone(), Ok(state(false, vec![], None)))];
        assert!(primary(&sql5).message.contains("split brain"));
        let sql6: Vec<(Node, Result<SqlFacts, String>)> = vec![(p, Err("down".into()))];
        assert!(!primary(&sql6).ok);
    }
}
