//! What pgha needs on every node, looked at over ssh in one short script per
//! node: the PostgreSQL binaries it calls (`pg_ctl`, `pg_rewind`,
//! `pg_basebackup`, `psql`) in `[postgres] bin_dir` with the server's major
//! version, the data directory (`backend_data_directoryN`) owned by the ssh
//! user, the archive directory (`[postgres] archive_dir`) existing, writable
//! by that user and not full. The same script tries the node's own edges of
//! the mesh ([`super::mesh`]) and its replication logins
//! ([`super::logins::replication`]) in parallel, so one ssh session per node
//! does it all.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::mesh::{self, Edge, SshContext};
use super::{Finding, SqlFacts, logins, ssh_label, subject};
use crate::cluster::{Node, Topology};
use crate::remote::{Remote, quote};

/// The binaries pgha runs on a node, all from `[postgres] bin_dir`.
const BINARIES: [&str; 4] = ["pg_ctl", "pg_rewind", "pg_basebackup", "psql"];

/// Less free space than this in the archive directory fails the check: a
/// few dozen 16 MB WAL segments, so that the archive does not fill up
/// during the first hours after a failover.
const MIN_ARCHIVE_FREE_BYTES: u64 = 512 << 20;

/// A directory's owner and permission bits (`stat -c '%U %a'`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct DirInfo {
    /// Owner's user name.
    owner: String,
    /// Permission bits (`0o700`).
    mode: u32,
}

/// The archive directory as the ssh user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Archive {
    /// Nothing at that path.
    Missing,
    /// Something other than a directory.
    NotDir,
    /// A directory.
    Dir {
        /// Owner and mode; `None` when `stat` said nothing readable.
        info: Option<DirInfo>,
        /// `None` when creating and removing a file there worked, else
        /// what `mktemp` said.
        write_error: Option<String>,
        /// Free space for unprivileged users, in KiB (`df -Pk`).
        avail_kib: Option<u64>,
    },
}

/// What the script found on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Facts {
    /// Each of [`BINARIES`] with the first line of its `--version`, `None`
    /// when it is not executable.
    binaries: Vec<(String, Option<String>)>,
    /// The data directory: `None` not asked, `Some(None)` missing.
    data_dir: Option<Option<DirInfo>>,
    /// `PG_VERSION` in the data directory.
    pg_version: Option<String>,
    /// The archive directory, when one is configured.
    archive: Option<Archive>,
    /// ssh to other nodes, by node id: exit status and output.
    hops: BTreeMap<u32, (i32, String)>,
    /// Replication logins to other nodes, by node id: exit status, output.
    repl: BTreeMap<u32, (i32, String)>,
}

/// Everything learnt about one node over ssh.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    /// ssh from this host: how long the key login took, or ssh's words and
    /// exit status.
    connect: Result<Duration, (String, i32)>,
    /// The script's findings, or why it did not run.
    facts: Result<Facts, String>,
}

/// Log in to `node` from this host, then run the probe script there.
pub(crate) async fn probe(topo: &Topology, remote: &Remote, node: &Node) -> Probe {
    let ctx = SshContext::of(topo);
    let connect_bound = topo.config.ssh.connect_timeout + Duration::from_secs(2);
    let start = Instant::now();
    let login = || async {
        match remote.run(&node.ssh_host, &["true"], connect_bound).await {
            Ok(out) if out.success() => Ok(start.elapsed()),
            Ok(out) => Err((out.stderr_str(), out.status)),
            Err(e) => Err(mesh::remote_failure(&e)),
        }
    };
    // A timeout is tried once more before it counts (a loaded host, a lost
    // SYN); a refused key or host key is not.
    let connect = match login().await {
        Err((text, status)) if mesh::classify(&text, status) == mesh::SshFailure::Unreachable => {
            login().await
        }
        other => other,
    };
    if connect.is_err() {
        return Probe {
            connect,
            facts: Err(format!(
                "not checked: ssh from this host to {} failed (see check ssh pgpool->{})",
                ssh_label(node),
                subject(node)
            )),
        };
    }
    let script = script(topo, node, &ctx);
    let bound =
        Duration::from_secs(2 * ctx.connect_secs + 8) + topo.config.postgres.connect_timeout;
    let facts = match remote.run_script(&node.ssh_host, &script, bound).await {
        Ok(out) if out.success() => Ok(parse(&out.stdout_str())),
        Ok(out) => Err(format!(
            "the check script on {} exited with status {}: {}",
            ssh_label(node),
            out.status,
            mesh::one_line(&out.stderr_str())
        )),
        Err(e) => Err(e.to_string()),
    };
    Probe { connect, facts }
}

/// The script run on `node` (as the ssh user, through `sh -c`). It prints
/// one tab-separated record per line; see [`parse`].
fn script(topo: &Topology, node: &Node, ctx: &SshContext) -> String {
    let pg = &topo.config.postgres;
    let shown =
        |d: Option<&std::path::PathBuf>| d.map(|d| d.display().to_string()).unwrap_or_default();
    let mut s = format!(
        "b={} d={} a={}\n",
        quote(&pg.bin_dir.display().to_string()),
        quote(&shown(node.data_dir.as_ref())),
        quote(&shown(pg.archive_dir.as_ref()))
    );
    s.push_str(&local_probes());
    let peers: Vec<&Node> = topo.nodes.iter().filter(|n| n.id != node.id).collect();
    for p in &peers {
        s.push_str(&peer_probes(topo, p, ctx));
    }
    s.push_str("wait\n");
    for p in &peers {
        for kind in ["hop", "repl"] {
            s.push_str(&format!(
                "printf '{kind}\\t{id}\\t%s\\t%s\\n' \"$(cat \"$w/{kind}.{id}.rc\" 2>/dev/null)\" \"$(tr '\\t\\r\\n' '  |' <\"$w/{kind}.{id}\" 2>/dev/null)\"\n",
                id = p.id
            ));
        }
    }
    s
}

/// The part of [`script`] about the node itself: binaries in `$b`, the
/// data directory `$d`, the archive directory `$a`; then the work
/// directory `$w` and the `psql` the peer probes use.
fn local_probes() -> String {
    format!(
        r#"for t in {bins}; do
  if [ -x "$b/$t" ]; then
    printf 'bin\t%s\t%s\n' "$t" "$("$b/$t" --version 2>&1 | head -n 1 | tr '\t' ' ')"
  else
    printf 'bin\t%s\t\n' "$t"
  fi
done
if [ -n "$d" ]; then
  if [ -d "$d" ]; then
    printf 'data\t%s\n' "$(stat -c '%U %a' -- "$d")"
    printf 'pgversion\t%s\n' "$(cat -- "$d/PG_VERSION" 2>/dev/null)"
  else
    printf 'data\tmissing\n'
  fi
fi
if [ -n "$a" ]; then
  if [ ! -e "$a" ]; then
    printf 'archive\tmissing\n'
  elif [ ! -d "$a" ]; then
    printf 'archive\tnotdir\n'
  else
    printf 'archive\t%s\n' "$(stat -c '%U %a' -- "$a")"
    if t=$(mktemp -p "$a" .pgha-check.XXXXXX 2>&1); then
      rm -f -- "$t"
      printf 'archive_write\tok\n'
    else
      printf 'archive_write\t%s\n' "$(printf '%s' "$t" | tr '\t\n' '  ')"
    fi
    printf 'archive_free\t%s\n' "$(df -Pk -- "$a" | awk 'NR == 2 {{ print $4 }}')"
  fi
fi
w=$(mktemp -d) || exit 1
trap 'rm -rf -- "$w"' EXIT
psql=$b/psql
[ -x "$psql" ] || psql=psql
"#,
        bins = BINARIES.join(" ")
    )
}

/// The two background jobs of [`script`] for peer `p`: the ssh edge to it
/// and the replication login to it, each tried once more after a timeout
/// (status 124, or ssh's or libpq's own), their output and status left in
/// `$w`.
fn peer_probes(topo: &Topology, p: &Node, ctx: &SshContext) -> String {
    let pg = &topo.config.postgres;
    let hop_secs = 2 * ctx.connect_secs + 2;
    let pg_secs = mesh::whole_secs(pg.connect_timeout).max(2);
    let argv: Vec<String> = mesh::hop_argv(&p.ssh_host, ctx)
        .iter()
        .map(|a| quote(a))
        .collect();
    let conninfo = logins::replication_conninfo(p, &pg.replication_user, pg_secs);
    format!(
        "(h() {{ timeout -k 1 {hop_secs} {} </dev/null >\"$w/hop.{id}\" 2>&1; }}; h; rc=$?; \
         if [ $rc = 124 ] || grep -q 'timed out' \"$w/hop.{id}\"; then h; rc=$?; fi; \
         echo $rc >\"$w/hop.{id}.rc\") &\n\
         (r() {{ timeout -k 1 {} \"$psql\" -X -w -A -t -d {} -c IDENTIFY_SYSTEM </dev/null >\"$w/repl.{id}\" 2>&1; }}; r; rc=$?; \
         if [ $rc = 124 ] || grep -q 'timeout expired' \"$w/repl.{id}\"; then r; rc=$?; fi; \
         echo $rc >\"$w/repl.{id}.rc\") &\n",
        argv.join(" "),
        pg_secs + 2,
        quote(&conninfo),
        id = p.id
    )
}

fn dir_info(s: &str) -> Option<DirInfo> {
    let (owner, mode) = s.trim().split_once(' ')?;
    Some(DirInfo {
        owner: owner.to_string(),
        mode: u32::from_str_radix(mode.trim(), 8).ok()?,
    })
}

/// Parse the script's output. Unknown or malformed lines are ignored.
fn parse(out: &str) -> Facts {
    let mut f = Facts::default();
    let mut archive_info = None;
    let mut write_error = None;
    let mut avail = None;
    let mut archive_seen = false;
    for line in out.lines() {
        let fields: Vec<&str> = line.splitn(4, '\t').collect();
        match fields.as_slice() {
            ["bin", name, version] => f.binaries.push((
                name.to_string(),
                Some(version.trim().to_string()).filter(|v| !v.is_empty()),
            )),
            ["data", "missing"] => f.data_dir = Some(None),
            ["data", info] => f.data_dir = Some(dir_info(info)),
            ["pgversion", v] => f.pg_version = Some(v.trim().to_string()).filter(|v| !v.is_empty()),
            ["archive", "missing"] => f.archive = Some(Archive::Missing),
            ["archive", "notdir"] => f.archive = Some(Archive::NotDir),
            ["archive", info] => {
                archive_seen = true;
                archive_info = dir_info(info);
            }
            ["archive_write", "ok"] => write_error = None,
            ["archive_write", e] => write_error = Some(e.trim().to_string()),
            ["archive_free", kib] => avail = kib.trim().parse().ok(),
            [kind @ ("hop" | "repl"), id, rc, output @ ..] => {
                let Ok(id) = id.parse::<u32>() else { continue };
                let rc = rc.trim().parse::<i32>().unwrap_or(-1);
                let output = output
                    .first()
                    .map(|o| o.trim_end_matches('|').trim().to_string())
                    .unwrap_or_default();
                let map = if *kind == "hop" {
                    &mut f.hops
                } else {
                    &mut f.repl
                };
                map.insert(id, (rc, output));
            }
            _ => {}
        }
    }
    if archive_seen {
        f.archive = Some(Archive::Dir {
            info: archive_info,
            write_error,
            avail_kib: avail,
        });
    }
    f
}

/// The major version in a `--version` line: `pg_ctl (PostgreSQL) 15.18
/// (Debian 15.18-1)` gives `15`, `9.6.24` gives `9.6`.
fn major_of(version_line: &str) -> Option<String> {
    let after = version_line
        .split_once(") ")
        .map_or(version_line, |(_, v)| v);
    let v = after.split_whitespace().next()?;
    let parts: Vec<&str> = v.split('.').collect();
    let digits = |p: &str| -> Option<u32> {
        let d: String = p.chars().take_while(char::is_ascii_digit).collect();
        d.parse().ok()
    };
    let first = digits(parts.first()?)?;
    if first >= 10 {
        Some(first.to_string())
    } else {
        let second = digits(parts.get(1)?)?;
        Some(format!("{first}.{second}"))
    }
}

/// The major version of `server_version_num`: 150018 is `15`, 90624 `9.6`.
fn major_of_num(n: u32) -> String {
    if n >= 100000 {
        (n / 10000).to_string()
    } else {
        format!("{}.{}", n / 10000, (n / 100) % 100)
    }
}

/// The findings of one node: its ssh edge from this host, binaries, data
/// directory, archive directory, its edges to the other nodes and its
/// replication logins to them.
pub(crate) fn findings(
    topo: &Topology,
    node: &Node,
    probe: &Probe,
    facts_sql: Option<&SqlFacts>,
    sql: &[(Node, Result<SqlFacts, String>)],
) -> Vec<Finding> {
    let ctx = SshContext::of(topo);
    let direct = Edge {
        src: None,
        dst: node.clone(),
    };
    let mut out = vec![mesh::finding(&direct, probe.connect.clone(), &ctx)];
    let facts = match &probe.facts {
        Ok(f) => f,
        Err(why) => {
            out.push(not_probed(node, probe, why));
            return out;
        }
    };
    let expected = facts_sql
        .map(|f| major_of_num(f.state.server_version_num))
        .or_else(|| facts.pg_version.clone());
    out.push(binaries(topo, node, facts, expected.as_deref()));
    out.push(data_dir(topo, node, facts, facts_sql, expected.as_deref()));
    out.push(archive_dir(topo, node, facts));
    for p in topo.nodes.iter().filter(|p| p.id != node.id) {
        out.push(hop(node, p, facts, &ctx));
        let dst_facts = sql
            .iter()
            .find(|(n, _)| n.id == p.id)
            .and_then(|(_, f)| f.as_ref().ok());
        out.push(logins::replication(
            topo,
            node,
            p,
            facts.repl.get(&p.id),
            dst_facts,
        ));
    }
    out
}

/// The script did not run on `node` (`why`): nothing it checks is known.
fn not_probed(node: &Node, probe: &Probe, why: &str) -> Finding {
    let fix = if probe.connect.is_err() {
        format!(
            "fix ssh from this host to {} (the ssh line above), then run pgha-check again",
            ssh_label(node)
        )
    } else {
        "run the check again with --verbose and look at what the script printed".into()
    };
    Finding::fail(
        "node_checks",
        &subject(node),
        format!(
            "binaries, data directory, archive and the edges from {}: {why}",
            ssh_label(node)
        ),
        fix,
    )
}

/// The ssh edge from `node` to its peer `p`, as the script tried it.
fn hop(node: &Node, p: &Node, facts: &Facts, ctx: &SshContext) -> Finding {
    let edge = Edge {
        src: Some(node.clone()),
        dst: p.clone(),
    };
    let hop = match facts.hops.get(&p.id) {
        Some((0, _)) => Ok(Duration::ZERO),
        Some((rc, output)) => Err((output.replace('|', "\n"), *rc)),
        None => Err(("the check script did not report this edge".to_string(), -1)),
    };
    let mut f = mesh::finding(&edge, hop, ctx);
    if f.ok {
        f.message = format!("{}: key login as {}", edge.describe(), ctx.user);
    }
    f
}

/// [`BINARIES`] are there and of the server's major version (`expected`).
fn binaries(topo: &Topology, node: &Node, facts: &Facts, expected: Option<&str>) -> Finding {
    let dir = topo.config.postgres.bin_dir.display();
    let here = subject(node);
    let missing: Vec<&str> = facts
        .binaries
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    if !missing.is_empty() {
        return Finding::fail(
            "binaries",
            &here,
            format!(
                "{} missing or not executable in {dir} on {}",
                missing.join(", "),
                ssh_label(node)
            ),
            format!(
                "install the PostgreSQL server and client packages of the running major version on {} \
                 (Debian: postgresql-{v} postgresql-client-{v}), or set [postgres] bin_dir in pgha.toml",
                ssh_label(node),
                v = expected.unwrap_or("N")
            ),
        );
    }
    let Some(expected) = expected else {
        return Finding::pass(
            "binaries",
            &here,
            format!(
                "{} present in {dir} (server version unknown: not compared)",
                BINARIES.join(", ")
            ),
        );
    };
    binary_versions(topo, node, facts, expected)
}

/// Every binary is PostgreSQL `expected`, as the server.
fn binary_versions(topo: &Topology, node: &Node, facts: &Facts, expected: &str) -> Finding {
    let dir = topo.config.postgres.bin_dir.display();
    let wrong: Vec<String> = facts
        .binaries
        .iter()
        .map(|(n, v)| (n, v.as_deref().and_then(major_of)))
        .filter(|(_, m)| m.as_deref() != Some(expected))
        .map(|(n, m)| format!("{n} is {}", m.as_deref().unwrap_or("of unknown version")))
        .collect();
    if wrong.is_empty() {
        return Finding::pass(
            "binaries",
            &subject(node),
            format!(
                "{} in {dir} are PostgreSQL {expected}, as the server",
                BINARIES.join(", ")
            ),
        );
    }
    Finding::fail(
        "binaries",
        &subject(node),
        format!(
            "in {dir} on {}: {} but the server is PostgreSQL {expected} (pg_rewind and \
             pg_basebackup refuse other major versions)",
            ssh_label(node),
            wrong.join(", ")
        ),
        format!(
            "set [postgres] bin_dir to /usr/lib/postgresql/{expected}/bin (Debian's layout) \
             or install PostgreSQL {expected} there"
        ),
    )
}

/// The data directory: configured, there, owned by the ssh user, the one
/// the server runs from, of the server's version (`expected`).
fn data_dir(
    topo: &Topology,
    node: &Node,
    facts: &Facts,
    sql: Option<&SqlFacts>,
    expected: Option<&str>,
) -> Finding {
    let Some(path) = node.data_dir.as_ref().map(|p| p.display().to_string()) else {
        return Finding::fail(
            "data_dir",
            &subject(node),
            format!("{} has no data directory configured", node.label()),
            format!(
                "set backend_data_directory{id} in pgpool.conf (or [nodes.{id}] data_directory in pgha.toml)",
                id = node.id
            ),
        );
    };
    let d = NodeDir::new("data_dir", node, path);
    let info = match &facts.data_dir {
        Some(Some(i)) => i,
        Some(None) => return d.missing(sql),
        None => return d.not_reported("data directory"),
    };
    d.wrong_owner(info, &topo.config.ssh.user)
        .or_else(|| d.not_the_servers(sql))
        .or_else(|| d.wrong_version(facts.pg_version.as_deref(), expected))
        .unwrap_or_else(|| d.data_dir_ok(info, facts.pg_version.as_deref()))
}

/// A configured directory on a node (`data_dir`, `archive_dir`), and the
/// words its findings use.
struct NodeDir<'a> {
    /// The finding's check.
    check: &'static str,
    node: &'a Node,
    /// `ssh_label` of the node.
    on: String,
    path: String,
}

impl<'a> NodeDir<'a> {
    fn new(check: &'static str, node: &'a Node, path: String) -> Self {
        NodeDir {
            check,
            node,
            on: ssh_label(node),
            path,
        }
    }

    fn fail(&self, message: String, fix: String) -> Finding {
        Finding::fail(self.check, &subject(self.node), message, fix)
    }

    fn pass(&self, message: String) -> Finding {
        Finding::pass(self.check, &subject(self.node), message)
    }

    /// The script should have said something about it (`what`), and did not.
    fn not_reported(&self, what: &str) -> Finding {
        self.fail(
            format!(
                "{what} {} on {}: the check script said nothing about it",
                self.path, self.on
            ),
            "run pgha-check --verbose".into(),
        )
    }
}

/// The data directory's decisions.
impl NodeDir<'_> {
    fn missing(&self, sql: Option<&SqlFacts>) -> Finding {
        self.fail(
            format!("data directory {} does not exist on {}", self.path, self.on),
            format!(
                "fix backend_data_directory{} in pgpool.conf: the server's data_directory is {}",
                self.node.id,
                sql.map_or("shown by SHOW data_directory".into(), |s| s
                    .state
                    .data_directory
                    .clone())
            ),
        )
    }

    /// pgha runs `pg_ctl` and `pg_rewind` there as the ssh `user`.
    fn wrong_owner(&self, info: &DirInfo, user: &str) -> Option<Finding> {
        (info.owner != user).then(|| {
            self.fail(
                format!(
                    "data directory {} on {} is owned by {}, but pgha runs pg_ctl and pg_rewind there as {user}",
                    self.path, self.on, info.owner
                ),
                format!(
                    "set [ssh] user to {} (the user the server runs as)",
                    info.owner
                ),
            )
        })
    }

    /// The server (`sql`) runs from another directory.
    fn not_the_servers(&self, sql: Option<&SqlFacts>) -> Option<Finding> {
        let s = sql.filter(|s| s.state.data_directory != self.path)?;
        Some(self.fail(
            format!(
                "pgpool.conf gives {} as the data directory of {}, but the server runs from {}",
                self.path,
                self.node.label(),
                s.state.data_directory
            ),
            format!(
                "set backend_data_directory{} = '{}' in pgpool.conf",
                self.node.id, s.state.data_directory
            ),
        ))
    }

    /// `PG_VERSION` there is not the running server's major version.
    fn wrong_version(&self, pg_version: Option<&str>, expected: Option<&str>) -> Option<Finding> {
        let (v, e) = pg_version.zip(expected).filter(|(v, e)| v != e)?;
        Some(self.fail(
            format!(
                "{}/PG_VERSION on {} says {v}, the server is PostgreSQL {e}",
                self.path, self.on
            ),
            format!(
                "point backend_data_directory{} at the data directory of the running server",
                self.node.id
            ),
        ))
    }

    fn data_dir_ok(&self, info: &DirInfo, pg_version: Option<&str>) -> Finding {
        self.pass(format!(
            "{} on {} exists, owned by {} (mode {:04o}){}",
            self.path,
            self.on,
            info.owner,
            info.mode,
            pg_version
                .map(|v| format!(", PostgreSQL {v}"))
                .unwrap_or_default()
        ))
    }
}

/// The archive directory, when `[postgres] archive_dir` is set: a
/// directory the ssh user can write, with room left.
fn archive_dir(topo: &Topology, node: &Node, facts: &Facts) -> Finding {
    let Some(path) = topo
        .config
        .postgres
        .archive_dir
        .as_ref()
        .map(|p| p.display().to_string())
    else {
        return Finding::pass(
            "archive_dir",
            &subject(node),
            "no [postgres] archive_dir configured: standbys get history files over streaming replication",
        );
    };
    let a = NodeDir::new("archive_dir", node, path);
    let user = &topo.config.ssh.user;
    match &facts.archive {
        None => a.not_reported("archive directory"),
        Some(Archive::Missing) => a.fail(
            format!("archive directory {} does not exist on {}", a.path, a.on),
            a.create_archive(user),
        ),
        Some(Archive::NotDir) => a.fail(
            format!(
                "archive directory {} on {} is not a directory",
                a.path, a.on
            ),
            format!("on {}: move it away, then {}", a.on, a.create_archive(user)),
        ),
        Some(Archive::Dir {
            info,
            write_error,
            avail_kib,
        }) => a.archive(user, info.as_ref(), write_error.as_deref(), *avail_kib),
    }
}

/// The archive directory's decisions; `user` (`[ssh] user`) writes there.
impl NodeDir<'_> {
    /// The command that creates it right.
    fn create_archive(&self, user: &str) -> String {
        format!(
            "on {} as root: install -d -o {user} -g {user} -m 0700 {}",
            self.on,
            quote(&self.path)
        )
    }

    /// It is a directory: writable, with room left.
    fn archive(
        &self,
        user: &str,
        info: Option<&DirInfo>,
        write_error: Option<&str>,
        avail_kib: Option<u64>,
    ) -> Finding {
        let (path, on) = (&self.path, &self.on);
        let owned = info
            .map(|i| format!("owner {}, mode {:04o}", i.owner, i.mode))
            .unwrap_or_else(|| "owner unknown".into());
        if let Some(e) = write_error {
            return self.fail(
                format!(
                    "archive directory {path} on {on} is not writable by {user} ({owned}): {e}"
                ),
                format!(
                    "on {on} as root: chown {user}:{user} {q} && chmod 0700 {q}",
                    q = quote(path)
                ),
            );
        }
        let free = avail_kib.map(|k| k.saturating_mul(1024));
        if let Some(b) = free
            && b < MIN_ARCHIVE_FREE_BYTES
        {
            return self.fail(
                format!(
                    "archive directory {path} on {on} has {} free, less than {}",
                    human(b),
                    human(MIN_ARCHIVE_FREE_BYTES)
                ),
                format!(
                    "free space on {on} (remove WAL no standby needs, e.g. with pg_archivecleanup) or move the archive to a larger file system"
                ),
            );
        }
        self.pass(format!(
            "{path} on {on} is writable by {user} ({owned}), {} free",
            free.map(human).unwrap_or_else(|| "unknown".into())
        ))
    }
}

/// Bytes in binary units with one decimal (`1.5 GiB`).
fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::pgpool::conf::PgpoolConf;
    use std::path::Path;

    #[test]
    fn versions() {
        assert_eq!(
            major_of("pg_ctl (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)").as_deref(),
            Some("15")
        );
        assert_eq!(major_of("psql (PostgreSQL) 9.6.24").as_deref(), Some("9.6"));
        assert_eq!(
            major_of("pg_rewind (PostgreSQL) 17beta1").as_deref(),
            Some("17")
        );
        assert_eq!(major_of("sh: 1: pg_ctl: not found"), None);
        assert_eq!(major_of_num(150018), "15");
        assert_eq!(major_of_num(90624), "9.6");
        assert_eq!(major_of_num(180000), "18");
    }

    #[test]
    fn parses_the_script_output() {
        let out = "bin\tpg_ctl\tpg_ctl (PostgreSQL) 15.18\nbin\tpg_rewind\t\n\
                   data\tpostgres 700\npgversion\t15\n\
                   archive\troot 755\narchive_write\tmktemp: failed to create file: Permission denied\n\
                   archive_free\t1048576\n\
                   hop\t2\t255\tpostgres@127.0.0.4: Permission denied (publickey).|\n\
                   repl\t2\t0\t7351|1|0/3000148||\nhop\tx\t0\t\nnoise\n";
        let f = parse(out);
        assert_eq!(
            f.binaries,
            vec![
                ("pg_ctl".into(), Some("pg_ctl (PostgreSQL) 15.18".into())),
                ("pg_rewind".into(), None)
            ]
        );
        assert_eq!(
            f.data_dir,
            Some(Some(DirInfo {
                owner: "postgres".into(),
                mode: 0o700
            }))
        );
        assert_eq!(f.pg_version.as_deref(), Some("15"));
        assert_eq!(
            f.archive,
            Some(Archive::Dir {
                info: Some(DirInfo {
                    owner: "root".into(),
                    mode: 0o755
                }),
                write_error: Some("mktemp: failed to create file: Permission denied".into()),
                avail_kib: Some(1048576),
            })
        );
        assert_eq!(
            f.hops[&2],
            (
                255,
                "postgres@127.0.0.4: Permission denied (publickey).".into()
            )
        );
        assert_eq!(f.repl[&2], (0, "7351|1|0/3000148".into()));
        assert_eq!(f.hops.len(), 1);
        assert_eq!(
            parse("data\tmissing\narchive\tmissing\n").archive,
            Some(Archive::Missing)
        );
    }

    fn topo(archive: &str) -> Topology {
        let mut c = Config::default();
        c.postgres.archive_dir = Some(archive.into());
        c.postgres.bin_dir = "/nonexistent/bin".into();
        c.ssh.user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        let p = PgpoolConf::parse(
            Path::new("/x/pgpool.conf"),
            "backend_hostname0 = '127.0.0.2'\nbackend_data_directory0 = '/nonexistent/data'\n\
             backend_hostname1 = '127.0.0.3'\n",
        )
        .unwrap();
        Topology::from_parts(c, p)
    }

    /// The script itself, run here with `sh` (no peers reachable: the
    /// hops and logins fail fast against a closed port).
    #[test]
    fn the_script_runs_under_sh() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("archive");
        let t = topo(&archive.display().to_string());
        let mut ctx = SshContext::of(&t);
        ctx.connect_secs = 1;
        let run = |s: &str| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(s)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            parse(&String::from_utf8_lossy(&out.stdout))
        };
        let mut only0 = t.clone();
        only0.nodes.truncate(1);
        let f = run(&script(&only0, &only0.nodes[0], &ctx));
        assert_eq!(f.binaries.len(), BINARIES.len());
        assert!(f.binaries.iter().all(|(_, v)| v.is_none()));
        assert_eq!(f.data_dir, Some(None));
        assert_eq!(f.archive, Some(Archive::Missing));
        assert!(f.hops.is_empty());

        std::fs::create_dir(&archive).unwrap();
        let f = run(&script(&only0, &only0.nodes[0], &ctx));
        match f.archive {
            Some(Archive::Dir {
                info: Some(_),
                write_error: None,
                avail_kib: Some(k),
            }) => assert!(k > 0),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            std::fs::read_dir(&archive).unwrap().count(),
            0,
            "temp file left"
        );

        // Two nodes: the hop and the replication login to the other one run
        // (against closed ports here) and are reported.
        let mut two = t.clone();
        two.nodes[1].ssh_host = "127.0.0.1".into();
        two.nodes[1].replication_host = "127.0.0.1".into();
        two.nodes[1].port = 1;
        let mut ctx1 = ctx.clone();
        ctx1.port = 1;
        let f = run(&script(&two, &two.nodes[0], &ctx1));
        let (rc, out) = &f.hops[&1];
        assert_ne!(*rc, 0, "{out}");
        assert!(out.contains("refused"), "{out}");
        let (rc, _) = &f.repl[&1];
        assert_ne!(*rc, 0);

        // A file where the directory should be.
        std::fs::remove_dir(&archive).unwrap();
        std::fs::write(&archive, "").unwrap();
        let f = run(&script(&only0, &only0.nodes[0], &ctx));
        assert_eq!(f.archive, Some(Archive::NotDir));
    }

    #[test]
    fn archive_findings_name_the_path_and_the_fix() {
        let t = topo("/var/lib/postgresql/archive");
        let n = &t.nodes[1];
        let user = t.config.ssh.user.clone();
        let mut facts = Facts {
            archive: Some(Archive::Missing),
            ..Facts::default()
        };
        let f = archive_dir(&t, n, &facts);
        assert!(!f.ok);
        assert_eq!(
            f.message,
            "archive directory /var/lib/postgresql/archive does not exist on node 1 (127.0.0.3)"
        );
        assert_eq!(
            f.fix.unwrap(),
            format!(
                "on node 1 (127.0.0.3) as root: install -d -o {user} -g {user} -m 0700 /var/lib/postgresql/archive"
            )
        );
        facts.archive = Some(Archive::Dir {
            info: Some(DirInfo {
                owner: "root".into(),
                mode: 0o755,
            }),
            write_error: Some("Permission denied".into()),
            avail_kib: Some(1 << 30),
        });
        let f = archive_dir(&t, n, &facts);
        assert!(f.message.contains("is not writable by"), "{}", f.message);
        assert!(f.message.contains("owner root, mode 0755"), "{}", f.message);
        assert!(f.fix.unwrap().contains("chown"));
        facts.archive = Some(Archive::Dir {
            info: None,
            write_error: None,
            avail_kib: Some(1024),
        });
        let f = archive_dir(&t, n, &facts);
        assert!(
            f.message.contains("1.0 MiB free, less than 512.0 MiB"),
            "{}",
            f.message
        );
        facts.archive = Some(Archive::Dir {
            info: None,
            write_error: None,
            avail_kib: Some(10 << 20),
        });
        let f = archive_dir(&t, n, &facts);
        assert!(f.ok, "{f:?}");
        assert!(f.message.ends_with("10.0 GiB free"), "{}", f.message);
    }

    #[test]
    fn binaries_must_match_the_server() {
        let t = topo("/a");
        let n = &t.nodes[0];
        let mut facts = Facts::default();
        for b in BINARIES {
            facts
                .binaries
                .push((b.to_string(), Some(format!("{b} (PostgreSQL) 15.18"))));
        }
        assert!(binaries(&t, n, &facts, Some("15")).ok);
        let f = binaries(&t, n, &facts, Some("16"));
        assert!(!f.ok);
        assert!(f.message.contains("pg_ctl is 15"), "{}", f.message);
        assert!(f.fix.unwrap().contains("/usr/lib/postgresql/16/bin"));
        facts.binaries[1].1 = None;
        let f = binaries(&t, n, &facts, Some("15"));
        assert!(f.message.starts_with("pg_rewind missing"), "{}", f.message);
    }
}
