//! The logins failover depends on:
//!
//! - pgha's own superuser (`[postgres] user`, password from `.pgpass`) on
//!   every node: promote, `ALTER SYSTEM`, `pg_read_binary_file`;
//! - the replication user (`[postgres] replication_user`) from every node
//!   to every other node, tried on the source node with its own `.pgpass`
//!   and `psql "... replication=true" -c IDENTIFY_SYSTEM`, exactly as its
//!   walreceiver would connect once the other node is primary;
//! - pgpool's `health_check_user` and `sr_check_user` on every node (with
//!   `health_check_password` / `sr_check_password` when given in clear);
//! - PCP (`pcp_listen_addresses`, `pcp_port`, `[pcp] user` and `.pcppass`,
//!   mode 0600): a live login when pgpool runs, else the `.pcppass` password
//!   against the md5 in `pcp.conf` beside `pgpool.conf`.

use std::path::Path;

use super::{Finding, SqlFacts, ssh_label, subject};
use crate::cluster::{Node, Topology};
use crate::pgpool::pcp::{PcpClient, PcpError, PcpTarget};
use crate::pgpool::pcppass;
use crate::postgres::{self, PgTarget};

/// The conninfo a walreceiver on another node would use to stream from
/// `dst`: physical replication (`replication=true`, matched by the
/// `replication` keyword in `pg_hba.conf`), database `replication` for the
/// `.pgpass` lookup, bounded by `connect_timeout`.
pub(crate) fn replication_conninfo(dst: &Node, user: &str, connect_secs: u64) -> String {
    let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    format!(
        "host={} port={} user={} dbname=replication replication=true application_name=pgha-check connect_timeout={connect_secs}",
        q(&dst.replication_host),
        dst.port,
        q(user)
    )
}

/// The finding of the replication login from `src` to `dst`: the exit
/// status and output of `psql ... -c IDENTIFY_SYSTEM` on `src`.
pub(crate) fn replication(
    topo: &Topology,
    src: &Node,
    dst: &Node,
    result: Option<&(i32, String)>,
    dst_facts: Option<&SqlFacts>,
) -> Finding {
    let login = ReplicationLogin::new(topo, src, dst);
    match result {
        None => login.fail(
            "the check script did not report this login".into(),
            "run pgha-check --verbose".into(),
        ),
        Some((0, output)) => login.succeeded(output, dst_facts),
        Some((status, output)) => login.refused(*status, output),
    }
}

/// One replication login, from `src` as a walreceiver there would make it
/// to `dst`, and the words its findings use.
struct ReplicationLogin<'a> {
    topo: &'a Topology,
    src: &'a Node,
    dst: &'a Node,
    /// `[postgres] replication_user`.
    user: &'a str,
    /// `node0->node1`: the finding's `node`.
    label: String,
    /// `replication_host:port` of `dst`.
    target: String,
}

impl<'a> ReplicationLogin<'a> {
    fn new(topo: &'a Topology, src: &'a Node, dst: &'a Node) -> Self {
        ReplicationLogin {
            topo,
            src,
            dst,
            user: &topo.config.postgres.replication_user,
            label: format!("{}->{}", subject(src), subject(dst)),
            target: format!("{}:{}", dst.replication_host, dst.port),
        }
    }

    /// `node 0 (127.0.0.2) -> node 1 (127.0.1.3:5432)`: how messages open.
    fn pair(&self) -> String {
        format!(
            "{} -> node {} ({})",
            ssh_label(self.src),
            self.dst.id,
            self.target
        )
    }

    fn fail(&self, what: String, fix: String) -> Finding {
        Finding::fail(
            "replication_login",
            &self.label,
            format!("{}: {what}", self.pair()),
            fix,
        )
    }

    /// Logged in: unless `IDENTIFY_SYSTEM` names another cluster than the
    /// one `dst` answers SQL for.
    fn succeeded(&self, output: &str, dst_facts: Option<&SqlFacts>) -> Finding {
        let sysid = output.split('|').next().unwrap_or("").trim();
        if let Some(f) = dst_facts
            && !sysid.is_empty()
            && sysid != f.state.system_identifier.to_string()
        {
            return self.fail(
                format!(
                    "the server at {} has system identifier {sysid}, but node {} answers SQL with {}: replication_host points at another cluster",
                    self.target, self.dst.id, f.state.system_identifier
                ),
                format!(
                    "set [nodes.{}] replication_host in pgha.toml to an address of node {}",
                    self.dst.id, self.dst.id
                ),
            );
        }
        Finding::pass(
            "replication_login",
            &self.label,
            format!(
                "{}: {} logs in for replication, as a walreceiver on {} would",
                self.pair(),
                self.user,
                ssh_label(self.src)
            ),
        )
    }

    /// `psql` exited with `status`: what went wrong, from its words.
    fn refused(&self, status: i32, output: &str) -> Finding {
        let refusal = ReplicationRefusal::of(status, output);
        let words = if output.is_empty() {
            String::new()
        } else {
            format!(" ({})", output.replace('|', " "))
        };
        self.fail(
            format!(
                "replication login as {}: {}{words}",
                self.user,
                refusal.what(status)
            ),
            self.fix(&refusal),
        )
    }

    /// The change that lets the login through.
    fn fix(&self, refusal: &ReplicationRefusal) -> String {
        let (user, src, dst) = (self.user, ssh_label(self.src), self.dst);
        let ssh_user = &self.topo.config.ssh.user;
        let pgpass = format!("~{ssh_user}/.pgpass on {src}");
        let line = format!(
            "{}:{}:replication:{user}:PASSWORD",
            dst.replication_host, dst.port
        );
        match refusal {
            ReplicationRefusal::WrongPassword => {
                format!("correct the password of {user} in {pgpass} (line {line}, mode 0600)")
            }
            ReplicationRefusal::NoPassword => format!("add `{line}` to {pgpass} (mode 0600)"),
            ReplicationRefusal::Hba => format!(
                "add `host replication {user} <address of {src}>/32 scram-sha-256` to pg_hba.conf on node {} and reload",
                dst.id
            ),
            ReplicationRefusal::NoRole => {
                format!("CREATE ROLE {user} LOGIN REPLICATION PASSWORD '...' on the primary")
            }
            ReplicationRefusal::NotReplication => {
                format!("ALTER ROLE {user} LOGIN REPLICATION on the primary")
            }
            ReplicationRefusal::Unreachable => format!(
                "start PostgreSQL on node {} and make it listen on {} (listen_addresses), reachable from {src}",
                dst.id, dst.replication_host
            ),
            ReplicationRefusal::NoPsql => format!(
                "install the PostgreSQL client on {src} (psql in {} or on PATH)",
                self.topo.config.postgres.bin_dir.display()
            ),
            ReplicationRefusal::Other => format!(
                "run psql \"{}\" -c IDENTIFY_SYSTEM on {src} as {ssh_user} and fix what it says",
                replication_conninfo(dst, user, 5)
            ),
        }
    }
}

/// Why a replication login failed, from `psql`'s words and exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplicationRefusal {
    WrongPassword,
    NoPassword,
    /// No `pg_hba.conf` line lets it in.
    Hba,
    NoRole,
    /// The role may not log in, or lacks `REPLICATION`.
    NotReplication,
    /// No server answered (124: `timeout` killed psql).
    Unreachable,
    /// No `psql` on the source (127: not found).
    NoPsql,
    Other,
}

impl ReplicationRefusal {
    fn of(status: i32, output: &str) -> Self {
        let m = output.to_ascii_lowercase();
        let any = |words: &[&str]| words.iter().any(|w| m.contains(w));
        if m.contains("password authentication failed") {
            Self::WrongPassword
        } else if m.contains("no password supplied") {
            Self::NoPassword
        } else if m.contains("no pg_hba.conf entry") {
            Self::Hba
        } else if m.contains("does not exist") && m.contains("role") {
            Self::NoRole
        } else if any(&[
            "not permitted to log in",
            "replication role",
            "permission denied to start wal sender",
            "must have the replication attribute",
        ]) {
            Self::NotReplication
        } else if status == 124
            || any(&[
                "timeout expired",
                "connection refused",
                "could not connect",
                "no route to host",
            ])
        {
            Self::Unreachable
        } else if m.contains("not found") || status == 127 {
            Self::NoPsql
        } else {
            Self::Other
        }
    }

    /// What the message calls it.
    fn what(self, status: i32) -> String {
        match self {
            Self::WrongPassword => "wrong password",
            Self::NoPassword => "no password",
            Self::Hba => "refused by pg_hba.conf",
            Self::NoRole => "no such role",
            Self::NotReplication => "role lacks LOGIN REPLICATION",
            Self::Unreachable => "server unreachable",
            Self::NoPsql => "psql missing",
            Self::Other => return format!("failed with status {status}"),
        }
        .to_string()
    }
}

/// pgha's superuser login on `node` ([`super::SqlFacts`] came from it).
pub(crate) fn superuser(
    topo: &Topology,
    node: &Node,
    facts: &Result<SqlFacts, String>,
) -> Vec<Finding> {
    let pg = &topo.config.postgres;
    let here = subject(node);
    let f = match facts {
        Ok(f) if f.superuser => Finding::pass(
            "login",
            &here,
            format!(
                "{}: logged in as {} (superuser) to database {}{}",
                node.label(),
                pg.user,
                pg.database,
                f.note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ),
        ),
        Ok(_) => Finding::fail(
            "login",
            &here,
            format!(
                "{}: {} is not a superuser: pg_promote, ALTER SYSTEM and pg_read_binary_file need one",
                node.label(),
                pg.user
            ),
            format!(
                "ALTER ROLE {} SUPERUSER on the primary, or set [postgres] user to a superuser",
                pg.user
            ),
        ),
        Err(e) => Finding::fail(
            "login",
            &here,
            format!("{}: {e}", node.label()),
            login_fix(topo, node, e),
        ),
    };
    vec![f]
}

/// The fix for pgha's own login to `node`, from the error `e`.
fn login_fix(topo: &Topology, node: &Node, e: &str) -> String {
    let pg = &topo.config.postgres;
    let t = topo.pg_target(node);
    let passfile = postgres::passfile_path(pg.passfile.as_deref())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "~/.pgpass".into());
    let m = e.to_ascii_lowercase();
    let line = format!("{}:{}:{}:{}:PASSWORD", t.host, t.port, t.dbname, t.user);
    if m.contains("password authentication failed") {
        format!(
            "correct the password of {} in {passfile} (line {line})",
            pg.user
        )
    } else if m.contains("no line for")
        || m.contains("no password")
        || m.contains("does not exist") && m.contains("password file")
    {
        format!("add `{line}` to {passfile} (mode 0600)")
    } else if m.contains("group or world access") {
        format!("chmod 600 {passfile}")
    } else if m.contains("no pg_hba.conf entry") {
        format!(
            "add `host all {} <this host's address>/32 scram-sha-256` to pg_hba.conf on {} and reload",
            pg.user,
            node.label()
        )
    } else {
        format!(
            "start PostgreSQL on {} and make it listen on {}:{} (listen_addresses, port)",
            node.label(),
            node.host,
            node.port
        )
    }
}

/// How pgpool.conf gives a password (`health_check_password`,
/// `sr_check_password`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum PoolPassword {
    /// Empty: pgpool looks in `pool_passwd`, then tries without.
    Empty,
    /// In clear (also the `TEXT` prefix).
    Plain(String),
    /// `md5...` or `AES...`: usable by pgpool only.
    Encrypted(&'static str),
}

/// Decode a pgpool password setting.
fn pool_password(v: &str) -> PoolPassword {
    if v.is_empty() {
        PoolPassword::Empty
    } else if let Some(p) = v.strip_prefix("TEXT") {
        PoolPassword::Plain(p.to_string())
    } else if v.starts_with("AES") {
        PoolPassword::Encrypted("AES")
    } else if v.len() == 35 && v.starts_with("md5") && v[3..].bytes().all(|b| b.is_ascii_hexdigit())
    {
        PoolPassword::Encrypted("md5")
    } else {
        PoolPassword::Plain(v.to_string())
    }
}

/// pgpool's per-node setting `key{id}`, else `key`, else `default`.
fn pool_setting<'a>(topo: &'a Topology, key: &str, id: u32, default: &'a str) -> &'a str {
    topo.pgpool
        .get(&format!("{key}{id}"))
        .or_else(|| topo.pgpool.get(key))
        .unwrap_or(default)
}

/// pgpool's `health_check_user` and `sr_check_user` logins on every node,
/// from this host, all at once.
pub(crate) async fn pgpool_users(topo: &Topology) -> Vec<Finding> {
    let mut futs = Vec::new();
    for n in &topo.nodes {
        let period: u64 = pool_setting(topo, "health_check_period", n.id, "0")
            .parse()
            .unwrap_or(0);
        if period > 0 {
            let db = match pool_setting(topo, "health_check_database", n.id, "") {
                "" => "postgres",
                d => d,
            };
            let login = PoolLogin {
                what: "health_check",
                user: pool_setting(topo, "health_check_user", n.id, "nobody"),
                db,
                password: pool_setting(topo, "health_check_password", n.id, ""),
            };
            futs.push(login.check(topo, n));
        }
    }
    let sr_period: u64 = topo
        .pgpool
        .get("sr_check_period")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    if sr_period > 0 {
        let login = PoolLogin {
            what: "sr_check",
            user: topo.pgpool.get("sr_check_user").unwrap_or("nobody"),
            db: topo.pgpool.get("sr_check_database").unwrap_or("postgres"),
            password: topo.pgpool.get("sr_check_password").unwrap_or(""),
        };
        for n in &topo.nodes {
            futs.push(login.check(topo, n));
        }
    }
    futures::future::join_all(futs).await
}

/// One of pgpool's logins, as its settings give it.
#[derive(Debug, Clone, Copy)]
struct PoolLogin<'a> {
    /// `health_check` or `sr_check`: the prefix of its settings.
    what: &'static str,
    user: &'a str,
    db: &'a str,
    /// `{what}_password` as written in pgpool.conf.
    password: &'a str,
}

impl PoolLogin<'_> {
    /// Log in to `node` from this host, as pgpool would.
    async fn check(self, topo: &Topology, node: &Node) -> Finding {
        let target = PgTarget {
            user: self.user.to_string(),
            dbname: self.db.to_string(),
            application_name: "pgha-check".into(),
            ..topo.pg_target(node)
        };
        let (password, source) = self.password_for(&target);
        // Tried once more after a timeout, as the superuser's login.
        let mut result = try_login(&target, password.as_deref()).await;
        if result.as_ref().is_err_and(LoginFailure::timed_out) {
            result = try_login(&target, password.as_deref()).await;
        }
        self.finding(node, &source, result)
    }

    /// The password pgpool would send, and where it came from: the setting
    /// in clear, else `.pgpass` (pgpool's own `pool_passwd` is not read).
    fn password_for(&self, target: &PgTarget) -> (Option<String>, String) {
        let what = self.what;
        match pool_password(self.password) {
            PoolPassword::Plain(p) => (Some(p), format!("{what}_password")),
            other => {
                let p = postgres::password_for(target).ok().and_then(|l| l.password);
                let src = match other {
                    PoolPassword::Encrypted(kind) => {
                        format!("{what}_password is {kind}-encrypted, tried .pgpass")
                    }
                    _ => format!("empty {what}_password, tried .pgpass"),
                };
                (p, src)
            }
        }
    }

    fn finding(&self, node: &Node, source: &str, result: Result<(), LoginFailure>) -> Finding {
        let PoolLogin { what, user, db, .. } = *self;
        let check = format!("{what}_login");
        let here = subject(node);
        match result {
            Ok(()) => Finding::pass(
                &check,
                &here,
                format!(
                    "{}: pgpool's {what}_user {user} logs in to database {db}",
                    node.label()
                ),
            ),
            Err(e) if e.unreachable() => Finding::fail(
                &check,
                &here,
                format!(
                    "{}: pgpool's {what}_user {user} cannot reach the server: {e}",
                    node.label()
                ),
                format!(
                    "start PostgreSQL on {} and make it listen on {}:{} for pgpool's host",
                    node.label(),
                    node.host,
                    node.port
                ),
            ),
            Err(e) => Finding::fail(
                &check,
                &here,
                format!(
                    "{}: pgpool's {what}_user {user} cannot log in to database {db} ({source}): {e}",
                    node.label()
                ),
                format!(
                    "let {user} log in from pgpool's host (pg_hba.conf on {}; CREATE ROLE {user} LOGIN; GRANT pg_monitor TO {user}) \
                     and give its password in {what}_password (or pool_passwd)",
                    node.label()
                ),
            ),
        }
    }
}

/// Why a login as pgpool makes it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LoginFailure {
    /// Nothing answered within `connect_timeout`.
    NoAnswer(String),
    /// What the server or the socket said.
    Said(String),
}

impl LoginFailure {
    /// Worth one more try.
    fn timed_out(&self) -> bool {
        match self {
            LoginFailure::NoAnswer(_) => true,
            LoginFailure::Said(m) => m.contains("no answer") || m.contains("timed out"),
        }
    }

    /// No server to log in to, rather than a refused login.
    fn unreachable(&self) -> bool {
        let LoginFailure::Said(m) = self else {
            return true;
        };
        let m = m.to_ascii_lowercase();
        [
            "timed out",
            "no answer",
            "connection refused",
            "no route to host",
            "unreachable",
        ]
        .iter()
        .any(|w| m.contains(w))
    }
}

impl std::fmt::Display for LoginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginFailure::NoAnswer(m) | LoginFailure::Said(m) => f.write_str(m),
        }
    }
}

/// A login as pgpool makes it: pgha's TLS settings, but any password
/// method answered (pgpool itself answers md5 and cleartext requests).
async fn try_login(t: &PgTarget, password: Option<&str>) -> Result<(), LoginFailure> {
    let mut t = t.clone();
    t.tls.allow_cleartext_password = true;
    match postgres::connect_with(&t, password, String::new).await {
        Err(postgres::PgError::Timeout { .. }) => Err(LoginFailure::NoAnswer(format!(
            "no answer from {}:{} within {:?}",
            t.host, t.port, t.connect_timeout
        ))),
        Err(postgres::PgError::Connect { message, .. }) => Err(LoginFailure::Said(message)),
        Err(e) => Err(LoginFailure::Said(e.to_string())),
        Ok(client) => {
            drop(client);
            Ok(())
        }
    }
}

/// The md5 `pcp.conf` keeps for a PCP password (`pg_md5 PASSWORD`).
fn pcp_md5(password: &str) -> String {
    crate::text::md5_hex(&[password.as_bytes()])
}

/// The md5 of `user` in a `pcp.conf` text (`user:md5hex` lines).
fn pcp_conf_hash(text: &str, user: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find_map(|l| {
            let (u, h) = l.split_once(':')?;
            (u == user).then(|| h.trim().to_ascii_lowercase())
        })
}

/// PCP: `.pcppass` present, mode 0600, with a line for pgpool's PCP
/// address; a live login when pgpool runs, else its password compared with
/// `pcp.conf`.
pub(crate) async fn pcp(topo: &Topology) -> Finding {
    let user = &topo.config.pcp.user;
    let pass_path = pcppass::default_path(topo.config.pcp.pass_file.as_deref())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "~/.pcppass".into());
    let target = match topo.pcp_target() {
        Ok(t) => t,
        Err(e) => return pcp_credentials(&e.to_string(), &pass_path, user),
    };
    let login = PcpLogin {
        user,
        pass_path,
        at: format!("{}:{}", target.host, target.port),
        target: &target,
    };
    match PcpClient::connect(&target).await {
        Ok(mut client) => {
            let nodes = client.node_count().await;
            client.close().await;
            let seen = nodes
                .map(|n| format!(", pgpool has {n} backends"))
                .unwrap_or_default();
            pcp_pass(format!(
                "PCP login as {user} at {} with {} (mode 0600){seen}",
                login.at, login.pass_path
            ))
        }
        Err(PcpError::Auth { message, .. }) => pcp_fail(
            format!(
                "PCP login as {user} at {} refused ({message}): wrong password in {}",
                login.at, login.pass_path
            ),
            login.wrong_password_fix(),
        ),
        // Before pgpool starts (the systemd preflight), compare with
        // pcp.conf instead.
        Err(e @ (PcpError::Connect { .. } | PcpError::Timeout { .. })) => {
            login.against_pcp_conf(&topo.pgpool.path, &e)
        }
        Err(e) => pcp_fail(
            format!("PCP at {}: {e}", login.at),
            "check pcp_listen_addresses and pcp_port in pgpool.conf and pgpool's log",
        ),
    }
}

fn pcp_pass(message: String) -> Finding {
    Finding::pass("pcp_login", "pgpool", message)
}

fn pcp_fail(message: String, fix: impl Into<String>) -> Finding {
    Finding::fail("pcp_login", "pgpool", message, fix)
}

/// No PCP credentials to try (`msg` says why).
fn pcp_credentials(msg: &str, pass_path: &str, user: &str) -> Finding {
    let fix = if msg.contains("mode") {
        format!("chmod 600 {pass_path}")
    } else {
        format!(
            "create {pass_path} (mode 0600, owned by the user running pgha) with a line HOST:PORT:{user}:PASSWORD for pgpool's PCP address"
        )
    };
    pcp_fail(format!("PCP credentials: {msg}"), fix)
}

/// The PCP login pgha would make, and the words its findings use.
struct PcpLogin<'a> {
    /// `[pcp] user`.
    user: &'a str,
    /// The `.pcppass` it reads.
    pass_path: String,
    /// `host:port` of pgpool's PCP.
    at: String,
    target: &'a PcpTarget,
}

impl PcpLogin<'_> {
    fn wrong_password_fix(&self) -> String {
        format!(
            "put the PCP password of {} on the line {}:{}:{}:PASSWORD of {}: its md5 (pg_md5 PASSWORD) must be the one in pgpool's pcp.conf",
            self.user, self.target.host, self.target.port, self.user, self.pass_path
        )
    }

    /// pgpool's PCP did not answer (`e`): the password against the md5 in
    /// the `pcp.conf` beside `pgpool_conf`.
    fn against_pcp_conf(&self, pgpool_conf: &Path, e: &PcpError) -> Finding {
        let (user, at, pass_path) = (self.user, &self.at, &self.pass_path);
        let pcp_conf = pgpool_conf
            .parent()
            .map(|d| d.join("pcp.conf"))
            .unwrap_or_else(|| "pcp.conf".into());
        let shown = pcp_conf.display();
        let text = match std::fs::read_to_string(&pcp_conf) {
            Ok(text) => text,
            Err(re) => {
                return pcp_pass(format!(
                    "pgpool's PCP at {at} does not answer ({e}) and {shown} is unreadable ({re}): {pass_path} has a line for {user}, its password is checked once pgpool runs"
                ));
            }
        };
        match pcp_conf_hash(&text, user) {
            Some(h) if h == pcp_md5(&self.target.password) => pcp_pass(format!(
                "pgpool's PCP at {at} does not answer ({e}); the password in {pass_path} matches {shown} for {user}"
            )),
            Some(_) => pcp_fail(
                format!(
                    "the PCP password of {user} in {pass_path} does not match the md5 in {shown}"
                ),
                self.wrong_password_fix(),
            ),
            None => pcp_fail(
                format!("{shown} has no line for PCP user {user}"),
                format!("add `{user}:$(pg_md5 PASSWORD)` to {shown} or set [pcp] user"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::pgpool::conf::PgpoolConf;
    use std::path::Path;

    fn topo() -> Topology {
        let p = PgpoolConf::parse(
            Path::new("/x/pgpool.conf"),
            "backend_hostname0 = '127.0.0.2'\nbackend_hostname1 = '127.0.0.3'\n",
        )
        .unwrap();
        let mut c = Config::default();
        c.nodes.insert(
            1,
            crate::config::NodeOverride {
                replication_host: Some("127.0.1.3".into()),
                ..Default::default()
            },
        );
        Topology::from_parts(c, p)
    }

    #[test]
    fn replication_conninfo_is_physical() {
        let t = topo();
        assert_eq!(
            replication_conninfo(&t.nodes[1], "repl", 3),
            "host='127.0.1.3' port=5432 user='repl' dbname=replication replication=true application_name=pgha-check connect_timeout=3"
        );
        assert!(replication_conninfo(&t.nodes[1], "it's", 3).contains("user='it\\'s'"));
    }

    #[test]
    fn replication_failures_name_the_pair_and_the_fix() {
        let t = topo();
        let (a, b) = (&t.nodes[0], &t.nodes[1]);
        let f = replication(&t, a, b, Some(&(0, "7351|1|0/3000148|".into())), None);
        assert!(f.ok, "{f:?}");
        assert_eq!(f.node, "node0->node1");
        let f = replication(
            &t,
            a,
            b,
            Some(&(2, "psql: error: connection to server at \"127.0.1.3\", port 5432 failed: FATAL:  password authentication failed for user \"repl\"".into())),
            None,
        );
        assert!(!f.ok);
        assert!(f.message.starts_with("node 0 (127.0.0.2) -> node 1 (127.0.1.3:5432): replication login as repl: wrong password"), "{}", f.message);
        assert!(f.fix.unwrap().contains(
            "~postgres/.pgpass on node 0 (127.0.0.2) (line 127.0.1.3:5432:replication:repl:PASSWORD"
        ));
        let f = replication(&t, a, b, Some(&(2, "FATAL:  no pg_hba.conf entry for replication connection from host \"127.0.0.2\", user \"repl\"".into())), None);
        assert!(
            f.message.contains("refused by pg_hba.conf"),
            "{}",
            f.message
        );
        assert!(f.fix.unwrap().starts_with("add `host replication repl"));
        let f = replication(&t, a, b, Some(&(124, String::new())), None);
        assert!(f.message.contains("server unreachable"), "{}", f.message);
        let f = replication(&t, a, b, None, None);
        assert!(!f.ok);
    }

    #[test]
    fn pgpool_passwords() {
        assert_eq!(pool_password(""), PoolPassword::Empty);
        assert_eq!(
            pool_password("secret"),
            PoolPassword::Plain("secret".into())
        );
        assert_eq!(
            pool_password("TEXTsecret"),
            PoolPassword::Plain("secret".into())
        );
        assert_eq!(pool_password("AESxyz=="), PoolPassword::Encrypted("AES"));
        assert_eq!(
            pool_password("md5d41d8cd98f00b204e9800998ecf8427e"),
            PoolPassword::Encrypted("md5")
        );
        assert_eq!(
            pool_password("md5short"),
            PoolPassword::Plain("md5short".into())
        );
    }

    #[test]
    fn pcp_conf_hashes() {
        assert_eq!(pcp_md5("abc"), "900150983cd24fb0d6963f7d28e17f72");
        let text = "# USERID:MD5PASSWD\nadmin:111\npgpool:900150983CD24FB0D6963F7D28E17F72\n";
        assert_eq!(
            pcp_conf_hash(text, "pgpool").as_deref(),
            Some("900150983cd24fb0d6963f7d28e17f72")
        );
        assert_eq!(pcp_conf_hash(text, "nobody"), None);
    }

    #[test]
    fn per_node_pgpool_settings_win() {
        let p = PgpoolConf::parse(
            Path::new("/x/pgpool.conf"),
            "backend_hostname0 = 'a'\nbackend_hostname1 = 'b'\nhealth_check_user = 'hc'\nhealth_check_user1 = 'hc1'\n",
        )
        .unwrap();
        let t = Topology::from_parts(Config::default(), p);
        assert_eq!(pool_setting(&t, "health_check_user", 0, "nobody"), "hc");
        assert_eq!(pool_setting(&t, "health_check_user", 1, "nobody"), "hc1");
        assert_eq!(pool_setting(&t, "health_check_database", 1, ""), "");
    }
}
