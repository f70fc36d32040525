//! Connections to the backends and what one server says about itself.
//!
//! Every network operation here is bounded: the whole connect (TCP and
//! authentication) by `[postgres] connect_timeout`, every query by
//! `[postgres] query_timeout`, and each failure names the host, the port and
//! what was being done. Passwords come from a libpq password file
//! (`.pgpass`), read here because tokio-postgres does not.
//!
//! The queries work on PostgreSQL 12 to 18; where a view differs between
//! versions (`pg_stat_wal_receiver.received_lsn` became `flushed_lsn` in 13)
//! the query is chosen by `server_version_num`.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio_postgres::error::SqlState;
use tokio_postgres::{CancelToken, Client, NoTls};

use crate::config::{PostgresConfig, format_duration};
use crate::pgwire::{self, TlsSettings};

/// Default `application_name` of pgha's own sessions, so they can be told
/// apart in `pg_stat_activity` and in the server log.
pub const APPLICATION_NAME: &str = "pgha";

/// Where and how to connect to one PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTarget {
    /// Host name or address (`host`); a path starting with `/` is the
    /// directory of a unix socket.
    pub host: String,
    /// Port (`port`), also the suffix of the unix socket name.
    pub port: u16,
    /// Role to log in as (`user`).
    pub user: String,
    /// Database (`dbname`).
    pub dbname: String,
    /// libpq password file (`passfile`); `None`: `PGPASSFILE`, else
    /// `~/.pgpass`.
    pub passfile: Option<PathBuf>,
    /// Bound on TCP connect plus authentication (`connect_timeout`).
    pub connect_timeout: Duration,
    /// Bound on each query.
    pub query_timeout: Duration,
    /// `application_name` of the session.
    pub application_name: String,
    /// TLS and which password requests may be answered (`[postgres]
    /// sslmode`, `sslrootcert`, `allow_cleartext_password`).
    pub tls: TlsSettings,
}

impl PgError {
    /// Whether something at the server's address answered: proof that it
    /// lives (see [`PgError::Connect::answered`]). A timeout proves nothing
    /// either way and counts as no answer here; a broken password file
    /// means pgha never asked, so it cannot count as proof of death.
    pub fn answered(&self) -> bool {
        match self {
            PgError::Connect { answered, .. } => *answered,
            PgError::Timeout { .. } => false,
            PgError::Query { .. } | PgError::Passfile { .. } => true,
        }
    }
}

impl PgTarget {
    /// A target for `host:port` with the users, passfile and timeouts of
    /// `[postgres]` in `pgha.toml`.
    pub fn new(host: impl Into<String>, port: u16, cfg: &PostgresConfig) -> PgTarget {
        PgTarget {
            host: host.into(),
            port,
            user: cfg.user.clone(),
            dbname: cfg.database.clone(),
            passfile: cfg.passfile.clone(),
            connect_timeout: cfg.connect_timeout,
            query_timeout: cfg.query_timeout,
            application_name: APPLICATION_NAME.into(),
            tls: TlsSettings::from_config(cfg),
        }
    }

    fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }
}

/// Why talking to a server failed. Each variant names the server.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// TCP connect, startup or authentication was refused or failed.
    #[error("cannot connect to postgresql at {host}:{port}: {message}")]
    Connect {
        host: String,
        port: u16,
        message: String,
        /// The server answered (an authentication failure, "too many
        /// clients", "the database system is starting up", a TLS or
        /// pg_hba.conf refusal, a closed connection after accept): it is
        /// alive although pgha cannot use it. False only for a refused or
        /// unreachable TCP connect.
        answered: bool,
    },
    /// Connect or a query did not finish in time (a hung or blackholed
    /// host, a lock, a slow checkpoint). A timed-out query is also cancelled
    /// on the server, asynchronously: drop that client rather than reuse it,
    /// or the cancel may hit its next query.
    #[error("postgresql at {host}:{port}: {what} timed out after {}", format_duration(*after))]
    Timeout {
        host: String,
        port: u16,
        what: String,
        after: Duration,
    },
    /// The server answered a query with an error, or with something pgha
    /// could not read.
    #[error("postgresql at {host}:{port}: {query} failed: {message}")]
    Query {
        host: String,
        port: u16,
        query: String,
        message: String,
    },
    /// The password file named in `[postgres] passfile` is missing or
    /// unreadable.
    #[error("password file {}: {message}", path.display())]
    Passfile { path: PathBuf, message: String },
}

// ---------------------------------------------------------------------------
// LSN

/// A WAL position (`pg_lsn`), written as PostgreSQL does: `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes of WAL from `self` up to `ahead`; 0 when `self` is not behind.
    pub fn bytes_behind(self, ahead: Lsn) -> u64 {
        ahead.0.saturating_sub(self.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Lsn, String> {
        let bad = || format!("invalid LSN {s:?}: expected two hex numbers like \"16/B374D848\"");
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let half = |h: &str| {
            if h.is_empty() || h.len() > 8 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u64::from_str_radix(h, 16).map_err(|_| bad())
        };
        Ok(Lsn(half(hi)? << 32 | half(lo)?))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// Observed state

/// One row of `pg_stat_wal_receiver`: the standby's streaming connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalReceiver {
    /// `status`: `streaming`, `waiting`, `starting`, `restarting`,
    /// `stopping`, `stopped`.
    pub status: String,
    /// `sender_host`: the host the receiver is connected to, as written in
    /// `primary_conninfo` (a name is not resolved).
    pub sender_host: Option<String>,
    /// `sender_port`.
    pub sender_port: Option<u16>,
    /// `received_tli`: timeline of the last WAL received and flushed.
    pub received_tli: u32,
    /// `flushed_lsn` (13+) or `received_lsn` (12): last WAL flushed to disk.
    pub flushed_lsn: Option<Lsn>,
    /// `conninfo` the receiver uses, passwords masked by the server.
    pub conninfo: Option<String>,
}

impl WalReceiver {
    /// The receiver streams (`status = 'streaming'`), from whichever host.
    pub fn streaming(&self) -> bool {
        self.status == "streaming"
    }
}

/// One row of `pg_stat_replication`: a standby streaming from this server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// `application_name` of the standby's receiver (pgpool matches it
    /// against `backend_application_nameN`).
    pub application_name: String,
    /// `client_addr`; `None` for a unix socket connection.
    pub client_addr: Option<String>,
    /// `state`: `streaming`, `catchup`, `startup`, `backup`, `stopping`.
    pub state: String,
    /// `sync_state`: `async`, `potential`, `sync`, `quorum`.
    pub sync_state: String,
    /// `replay_lsn`: how far the standby has replayed.
    pub replay_lsn: Option<Lsn>,
    /// `replay_lag` in milliseconds (10+; `None` when idle or unknown).
    #[serde(default)]
    pub replay_lag_ms: Option<u64>,
}

/// What one server says about itself, read in one short session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// The host this was observed on, as in the [`PgTarget`].
    pub host: String,
    /// The port this was observed on.
    pub port: u16,
    /// `server_version_num`, e.g. 150018.
    pub server_version_num: u32,
    /// `pg_is_in_recovery()`: a standby (or a server still promoting).
    pub in_recovery: bool,
    /// The timeline the server is on.
    ///
    /// A primary: the timeline of its current WAL file
    /// (`pg_walfile_name(pg_current_wal_lsn())`), because the control file
    /// (`pg_control_checkpoint()`) still shows the old timeline until the
    /// first checkpoint after a promotion.
    ///
    /// A standby: the timeline it is receiving, `received_tli` of its WAL
    /// receiver when there is one, else the timeline of its last restartpoint
    /// (`pg_control_checkpoint().timeline_id`), which may lag behind a
    /// timeline switch it has already replayed from the archive.
    pub timeline: u32,
    /// `pg_current_wal_lsn()` on a primary; `None` on a standby.
    pub current_lsn: Option<Lsn>,
    /// `pg_last_wal_receive_lsn()` on a standby (`None` on a primary, where
    /// it is a leftover of the recovery before promotion).
    pub receive_lsn: Option<Lsn>,
    /// `pg_last_wal_replay_lsn()` on a standby (`None` on a primary).
    pub replay_lsn: Option<Lsn>,
    /// The WAL receiver, when one is running (standbys only).
    pub wal_receiver: Option<WalReceiver>,
    /// `primary_conninfo` as configured (12+: a setting, wherever it is set,
    /// `postgresql.auto.conf` included); `None` when empty.
    pub primary_conninfo: Option<String>,
    /// `pg_control_system().system_identifier`: equal on all members of one
    /// replication cluster, different after an `initdb`.
    pub system_identifier: u64,
    /// `data_directory`.
    pub data_directory: String,
    /// `wal_log_hints`: with `data_checksums`, what `pg_rewind` requires.
    pub wal_log_hints: bool,
    /// `data_checksums`.
    pub data_checksums: bool,
    /// `pg_stat_replication` on this server: who streams from it.
    pub replicas: Vec<Replica>,
    /// `synchronous_standby_names` (a standby keeps the copy
    /// `pg_basebackup` gave it, and uses it once promoted).
    #[serde(default)]
    pub synchronous_standby_names: String,
    /// `synchronous_commit` (`on`, `remote_apply`, `remote_write`, `local`,
    /// `off`).
    #[serde(default)]
    pub synchronous_commit: String,
    /// `restore_command` (12+; empty when unset).
    #[serde(default)]
    pub restore_command: String,
}

impl NodeState {
    /// The furthest WAL position this server has: `current_lsn` on a
    /// primary; on a standby the larger of received and replayed (a standby
    /// restored from the archive has replayed WAL it never received).
    pub fn best_lsn(&self) -> Option<Lsn> {
        if self.in_recovery {
            self.receive_lsn.max(self.replay_lsn)
        } else {
            self.current_lsn
        }
    }

    /// True when this server's WAL receiver is streaming from `host`
    /// (compared literally with `sender_host`, i.e. with the host written in
    /// its `primary_conninfo`).
    pub fn is_streaming_from(&self, host: &str) -> bool {
        self.wal_receiver
            .as_ref()
            .is_some_and(|w| w.streaming() && w.sender_host.as_deref() == Some(host))
    }
}

/// Reads everything [`NodeState`] holds, in three bounded queries.
pub async fn observe(client: &Client, t: &PgTarget) -> Result<NodeState, PgError> {
    // pg_is_in_recovery() is read once: a promotion between two reads would
    // mix a standby's and a primary's answers. pg_walfile_name() fails during
    // recovery, so it only sees a NULL there (it is strict).
    const STATE: &str = "\
WITH r AS MATERIALIZED (SELECT pg_is_in_recovery() AS rec),
     c AS MATERIALIZED (SELECT CASE WHEN rec THEN NULL ELSE pg_current_wal_lsn() END AS cur FROM r)
SELECT current_setting('server_version_num')::int4,
       r.rec,
       current_setting('data_directory'),
       current_setting('wal_log_hints')::bool,
       current_setting('data_checksums')::bool,
       (SELECT system_identifier FROM pg_control_system()),
       (SELECT timeline_id FROM pg_control_checkpoint()),
       c.cur::text,
       pg_walfile_name(c.cur),
       CASE WHEN r.rec THEN pg_last_wal_receive_lsn()::text END,
       CASE WHEN r.rec THEN pg_last_wal_replay_lsn()::text END,
       current_setting('primary_conninfo', true),
       current_setting('synchronous_standby_names'),
       current_setting('synchronous_commit'),
       current_setting('restore_command', true)
FROM r, c";
    let what = "server state query";
    let row = bounded(
        client,
        t,
        what,
        t.query_timeout,
        client.query_one(STATE, &[]),
    )
    .await?;
    let c = Columns { row: &row, t, what };
    let server_version_num = c.int(0)? as u32;
    let in_recovery = c.flag(1)?;
    let checkpoint_tli = c.int(6)? as u32;
    let walfile = c.opt(8)?;
    let wal_receiver = match in_recovery {
        true => wal_receiver(client, t, server_version_num).await?,
        false => None,
    };
    let timeline = match (in_recovery, &wal_receiver) {
        (true, Some(w)) if w.received_tli > 0 => w.received_tli,
        (true, _) => standby_timeline_without_receiver(client, t, checkpoint_tli).await,
        (false, _) => walfile
            .as_deref()
            .and_then(|f| f.get(..8))
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| c.bad(format!("unexpected WAL file name {walfile:?}")))?,
    };
    Ok(NodeState {
        host: t.host.clone(),
        port: t.port,
        server_version_num,
        in_recovery,
        timeline,
        current_lsn: c.lsn(7)?,
        receive_lsn: c.lsn(9)?,
        replay_lsn: c.lsn(10)?,
        wal_receiver,
        primary_conninfo: c.opt(11)?.filter(|s| !s.is_empty()),
        system_identifier: c.get::<i64>(5)? as u64,
        data_directory: c.text(2)?,
        wal_log_hints: c.flag(3)?,
        data_checksums: c.flag(4)?,
        replicas: replicas(client, t).await?,
        synchronous_standby_names: c.text(12)?,
        synchronous_commit: c.text(13)?,
        restore_command: c.text(14)?,
    })
}

/// The columns of one row of query `what`, each read error naming the
/// query, the column and the server.
struct Columns<'a> {
    row: &'a tokio_postgres::Row,
    t: &'a PgTarget,
    what: &'a str,
}

impl Columns<'_> {
    fn bad(&self, message: String) -> PgError {
        query_error(self.t, self.what, message)
    }

    fn get<'r, T: tokio_postgres::types::FromSql<'r>>(&'r self, i: usize) -> Result<T, PgError> {
        self.row
            .try_get::<_, T>(i)
            .map_err(|e| self.bad(format!("column {i}: {}", describe(&e))))
    }

    fn opt(&self, i: usize) -> Result<Option<String>, PgError> {
        self.get::<Option<String>>(i)
    }

    /// Text, NULL as empty.
    fn text(&self, i: usize) -> Result<String, PgError> {
        Ok(self.opt(i)?.unwrap_or_default())
    }

    fn int(&self, i: usize) -> Result<i32, PgError> {
        self.get::<i32>(i)
    }

    fn flag(&self, i: usize) -> Result<bool, PgError> {
        self.get::<bool>(i)
    }

    fn lsn(&self, i: usize) -> Result<Option<Lsn>, PgError> {
        self.opt(i)?
            .map(|s| s.parse::<Lsn>())
            .transpose()
            .map_err(|e| self.bad(e))
    }
}

/// The standby's WAL receiver (`pg_stat_wal_receiver`), if one runs.
async fn wal_receiver(
    client: &Client,
    t: &PgTarget,
    version: u32,
) -> Result<Option<WalReceiver>, PgError> {
    const RECEIVER_13: &str = "SELECT status, sender_host, sender_port, received_tli, \
         flushed_lsn::text, conninfo FROM pg_stat_wal_receiver";
    const RECEIVER_12: &str = "SELECT status, sender_host, sender_port, received_tli, \
         received_lsn::text, conninfo FROM pg_stat_wal_receiver";
    let (what, sql) = if version >= 130000 {
        ("pg_stat_wal_receiver query", RECEIVER_13)
    } else {
        ("pg_stat_wal_receiver query (12)", RECEIVER_12)
    };
    let rows = bounded(client, t, what, t.query_timeout, client.query(sql, &[])).await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let c = Columns { row, t, what };
    Ok(Some(WalReceiver {
        status: c.text(0)?,
        sender_host: c.opt(1)?,
        sender_port: c.get::<Option<i32>>(2)?.and_then(|p| u16::try_from(p).ok()),
        received_tli: c.get::<Option<i32>>(3)?.unwrap_or(0) as u32,
        flushed_lsn: c.lsn(4)?,
        conninfo: c.opt(5)?,
    }))
}

/// The standbys connected to this server (`pg_stat_replication`).
async fn replicas(client: &Client, t: &PgTarget) -> Result<Vec<Replica>, PgError> {
    const REPLICAS: &str = "SELECT application_name, host(client_addr), state, sync_state, \
         replay_lsn::text, (extract(epoch FROM replay_lag) * 1000)::int8 \
         FROM pg_stat_replication ORDER BY application_name";
    let what = "pg_stat_replication query";
    let rows = bounded(
        client,
        t,
        what,
        t.query_timeout,
        client.query(REPLICAS, &[]),
    )
    .await?;
    let mut replicas = Vec::with_capacity(rows.len());
    for row in &rows {
        let c = Columns { row, t, what };
        replicas.push(Replica {
            application_name: c.text(0)?,
            client_addr: c.opt(1)?,
            state: c.text(2)?,
            sync_state: c.text(3)?,
            replay_lsn: c.lsn(4)?,
            replay_lag_ms: c.get::<Option<i64>>(5)?.and_then(|v| u64::try_from(v).ok()),
        });
    }
    Ok(replicas)
}

/// The timeline a standby with no WAL receiver is on. The control file's
/// checkpoint timeline lags until the next restartpoint, which after a
/// failover may be long: a standby that already streamed WAL of the new
/// timeline would look as if it were still on the old one. So also ask
/// the control file's minimum recovery point and the names of the WAL
/// segments in `pg_wal` (which carry the timeline they were received on;
/// `pg_ls_waldir()` needs superuser or `pg_monitor`: without it, only the
/// control file counts).
async fn standby_timeline_without_receiver(
    client: &Client,
    t: &PgTarget,
    checkpoint_tli: u32,
) -> u32 {
    const SQL: &str = "SELECT (SELECT min_recovery_end_timeline FROM pg_control_recovery()), \
         (SELECT max(substr(name, 1, 8)) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$')";
    let what = "standby timeline query";
    match bounded(client, t, what, t.query_timeout, client.query_one(SQL, &[])).await {
        Ok(row) => {
            let min_recovery = row
                .try_get::<_, Option<i32>>(0)
                .ok()
                .flatten()
                .map_or(0, |v| v as u32);
            let segments = row
                .try_get::<_, Option<String>>(1)
                .ok()
                .flatten()
                .and_then(|h| u32::from_str_radix(&h, 16).ok())
                .unwrap_or(0);
            checkpoint_tli.max(min_recovery).max(segments)
        }
        Err(e) => {
            tracing::debug!("{e}; taking the checkpoint's timeline {checkpoint_tli}");
            checkpoint_tli
        }
    }
}

/// Connects, observes and disconnects: at most `connect_timeout` plus three
/// `query_timeout`s.
pub async fn observe_target(t: &PgTarget) -> Result<NodeState, PgError> {
    let client = connect(t).await?;
    observe(&client, t).await
}

// ---------------------------------------------------------------------------
// Actions

/// Promotes a standby with `pg_promote(wait, wait_seconds)` (PostgreSQL 12+;
/// immediate, unlike `promote_trigger_file`, which 15 polls every 5 s).
/// With `wait`, returns whether promotion finished within `wait_seconds`;
/// without, whether the signal was sent. Bounded by `wait_seconds` plus
/// `query_timeout`. Promoting a server that is not in recovery is an error
/// from the server: observe first.
pub async fn promote(
    client: &Client,
    t: &PgTarget,
    wait: bool,
    wait_seconds: u32,
) -> Result<bool, PgError> {
    let what = format!("pg_promote(wait => {wait}, wait_seconds => {wait_seconds})");
    let secs = i32::try_from(wait_seconds).unwrap_or(i32::MAX);
    let limit = t.query_timeout + Duration::from_secs(u64::from(wait_seconds));
    let row = bounded(
        client,
        t,
        &what,
        limit,
        client.query_one("SELECT pg_promote($1, $2)", &[&wait, &secs]),
    )
    .await?;
    row.try_get::<_, bool>(0)
        .map_err(|e| query_error(t, &what, describe(&e)))
}

/// Session settings that keep the next statement's text out of the server
/// log (superuser only, as pgha's connections are).
const QUIET_STATEMENT_LOGGING: &str = "SET log_statement = 'none'; SET log_min_duration_statement = -1; SET log_min_error_statement = 'panic'";

/// Points a standby at a new upstream: `ALTER SYSTEM SET primary_conninfo`
/// (written to `postgresql.auto.conf`, which overrides `postgresql.conf`
/// and its includes, so the change cannot be shadowed) and
/// `pg_reload_conf()`. A reload applies it on 13+; 12 needs a restart.
pub async fn set_primary_conninfo(
    client: &Client,
    t: &PgTarget,
    conninfo: &str,
) -> Result<(), PgError> {
    let what = "ALTER SYSTEM SET primary_conninfo";
    let literal = quote_literal(conninfo)
        .ok_or_else(|| query_error(t, what, "primary_conninfo contains a NUL character".into()))?;
    // ALTER SYSTEM refuses to run in a transaction block, and a
    // multi-statement simple query is one: two round trips.
    let sql = format!("ALTER SYSTEM SET primary_conninfo = {literal}");
    if crate::text::has_password(conninfo) {
        // Keep the password out of the server log: statement logging
        // (log_statement = ddl, a slow-statement or an error log line)
        // would write the statement text, password included.
        bounded(
            client,
            t,
            "SET log_statement = none",
            t.query_timeout,
            client.batch_execute(QUIET_STATEMENT_LOGGING),
        )
        .await?;
    }
    bounded(client, t, what, t.query_timeout, client.batch_execute(&sql)).await?;
    bounded(
        client,
        t,
        "pg_reload_conf()",
        t.query_timeout,
        client.batch_execute("SELECT pg_reload_conf()"),
    )
    .await
}

/// Runs `CHECKPOINT`, e.g. on a new primary so that `pg_control` (read by
/// `pg_rewind`) shows the new timeline. Bounded by `query_timeout`.
pub async fn checkpoint(client: &Client, t: &PgTarget) -> Result<(), PgError> {
    bounded(
        client,
        t,
        "CHECKPOINT",
        t.query_timeout,
        client.batch_execute("CHECKPOINT"),
    )
    .await
}

/// A SQL string literal for `s` in the `E'...'` form, whose escaping does not
/// depend on `standard_conforming_strings`. `None` if `s` contains NUL,
/// which no PostgreSQL string can hold.
pub fn quote_literal(s: &str) -> Option<String> {
    if s.contains('\0') {
        return None;
    }
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
    Some(out)
}

// ---------------------------------------------------------------------------
// Connection strings

/// Parses a libpq `key=value` connection string (what `primary_conninfo`
/// and `pg_stat_wal_receiver.conninfo` hold), as libpq does: whitespace
/// around `=`, single-quoted values, backslash escapes, a later key
/// overriding an earlier one. Parsing stops at the first malformed part;
/// URIs (`postgresql://...`) give an empty map.
pub fn parse_conninfo(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut it = s.chars().peekable();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.peek().is_none() {
            return out;
        }
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.next() != Some('=') || key.contains("://") {
            return out;
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if it.next_if_eq(&'\'').is_some() {
            loop {
                match it.next() {
                    None => return out,
                    Some('\'') => break,
                    Some('\\') => match it.next() {
                        Some(c) => value.push(c),
                        None => return out,
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = it.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(n) = it.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        out.insert(key, value);
    }
}

// ---------------------------------------------------------------------------
// Connecting

/// Opens a session to `t`, TLS as `[postgres] sslmode` says (see
/// [`pgwire`], which also refuses cleartext and md5 password requests
/// unless they are safe). The password comes from the libpq password file
/// ([`password_for`]). The whole connect is bounded by `connect_timeout`;
/// the connection is driven by a spawned task that ends when the returned
/// client is dropped.
pub async fn connect(t: &PgTarget) -> Result<Client, PgError> {
    let lookup = password_for(t)?;
    match connect_with(t, lookup.password.as_deref(), || lookup.why_none()).await {
        // A server dying as pgha connects resets the connect; a moment
        // later it refuses (no answer), or, alive after all, answers.
        Err(e) if reset_at_connect(&e) => {
            tokio::time::sleep(DYING_RETRY).await;
            connect_with(t, lookup.password.as_deref(), || lookup.why_none()).await
        }
        r => r,
    }
}

/// [`connect`] with a password from elsewhere (pgpool.conf's
/// `health_check_password`, say); `why_none` explains a missing one.
pub async fn connect_with(
    t: &PgTarget,
    password: Option<&str>,
    why_none: impl FnOnce() -> String,
) -> Result<Client, PgError> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.user(&t.user)
        .dbname(&t.dbname)
        .application_name(&t.application_name)
        // pgwire negotiated TLS already: no second SSLRequest.
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    if let Some(p) = password {
        cfg.password(p);
    }
    let what = "connect (tcp, tls and authentication)";
    let attempt = async {
        let stream = pgwire::open(&t.host, t.port, &t.tls).await.map_err(Err)?;
        cfg.connect_raw(stream, NoTls).await.map_err(Ok)
    };
    let fail = |message: String, answered: bool| PgError::Connect {
        host: t.host.clone(),
        port: t.port,
        message,
        answered,
    };
    match tokio::time::timeout(t.connect_timeout, attempt).await {
        Err(_) => Err(PgError::Timeout {
            host: t.host.clone(),
            port: t.port,
            what: what.into(),
            after: t.connect_timeout,
        }),
        Ok(Err(Err(wire))) => Err(fail(wire.message, wire.answered)),
        Ok(Err(Ok(e))) => {
            let mut message = describe(&e);
            if password.is_none() && is_auth_error(&e) {
                message.push_str(&format!(" ({})", why_none()));
            }
            if requires_tls(&message) {
                message.push_str(&format!(
                    " (the server takes only tls sessions from here (hostssl in pg_hba.conf) and pgha has sslmode = \"{}\": set [postgres] sslmode = \"verify-full\" and sslrootcert in pgha.toml)",
                    t.tls.mode
                ));
            }
            Err(fail(message, server_answered(&e)))
        }
        Ok(Ok((client, connection))) => {
            let (host, port) = (t.host.clone(), t.port);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(%host, port, error = %describe(&e), "postgresql connection ended");
                }
            });
            Ok(client)
        }
    }
}

/// Whether a refusal says the server wanted TLS: PostgreSQL's "no
/// pg_hba.conf entry for host ..., no encryption".
pub fn requires_tls(message: &str) -> bool {
    message.contains("no pg_hba.conf entry") && message.contains("no encryption")
}

/// Asks the server of `t` to cancel the query running on `token`'s session,
/// over a stream opened as [`connect`] opens it (TLS included), within
/// `connect_timeout`.
pub async fn cancel(token: &CancelToken, t: &PgTarget) -> Result<(), String> {
    let send = async {
        let stream = pgwire::open(&t.host, t.port, &t.tls)
            .await
            .map_err(|e| e.message)?;
        token
            .cancel_query_raw(stream, NoTls)
            .await
            .map_err(|e| describe(&e))
    };
    match tokio::time::timeout(t.connect_timeout, send).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer within {}",
            format_duration(t.connect_timeout)
        )),
    }
}

/// Whether a failed connect got as far as the server: anything but an I/O
/// error on the socket itself (refused, unreachable, reset before a word
/// was said) means a server read the startup packet and answered.
fn server_answered(e: &tokio_postgres::Error) -> bool {
    if e.as_db_error().is_some() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(c) = source {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            return !crate::pgwire::no_answer(io.kind());
        }
        source = c.source();
    }
    true
}

/// Whether a TCP connection to `host:port` is accepted and held within
/// `within`. A paused (SIGSTOPped) or hung server still completes the
/// handshake (the kernel does) and then holds the connection, saying
/// nothing until the client speaks, so that is proof that a server lives
/// there. A connection the peer closes or resets at once is not: the
/// kernel also completes handshakes for a server in the middle of dying,
/// then resets them when its listening socket closes; a refusal ends the
/// probe (nothing listens).
///
/// A fresh connection attempt, with its own SYN, starts every
/// [`SYN_EVERY`] while none has answered: the kernel resends a lost SYN
/// only after a second, longer than `within` may be, so on a link that
/// drops some packets one attempt alone would take a live server for dead.
pub async fn tcp_accepts(host: &str, port: u16, within: Duration) -> bool {
    use futures::StreamExt as _;
    let end = tokio::time::Instant::now() + within;
    tokio::time::timeout_at(end, async {
        let mut attempts = futures::stream::FuturesUnordered::new();
        let mut next = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next {
                attempts.push(tcp_attempt(host, port));
                next += SYN_EVERY;
            }
            tokio::select! {
                Some(a) = attempts.next(), if !attempts.is_empty() => match a {
                    TcpAttempt::Held => return true,
                    TcpAttempt::Refused => return false,
                    TcpAttempt::Reset => {}
                },
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    })
    .await
    .unwrap_or(false)
}

/// How often [`tcp_accepts`] starts a fresh connection attempt.
pub const SYN_EVERY: Duration = Duration::from_millis(100);

/// How long after a reset connect the address is asked again.
const DYING_RETRY: Duration = Duration::from_millis(50);

/// What one connection attempt found.
enum TcpAttempt {
    /// Accepted and held: a server lives there.
    Held,
    /// Accepted, then closed or reset at once: perhaps a dying server.
    Reset,
    /// Refused or unreachable.
    Refused,
}

async fn tcp_attempt(host: &str, port: u16) -> TcpAttempt {
    let Ok(mut s) = tokio::net::TcpStream::connect((host, port)).await else {
        return TcpAttempt::Refused;
    };
    if held(&mut s).await {
        TcpAttempt::Held
    } else {
        TcpAttempt::Reset
    }
}

/// Whether the peer holds a fresh connection open (reads nothing for
/// [`HELD_FOR`]) rather than closing or resetting it.
async fn held(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut b = [0u8; 1];
    match tokio::time::timeout(HELD_FOR, s.read(&mut b)).await {
        Err(_) => true,
        Ok(Ok(n)) => n > 0,
        Ok(Err(_)) => false,
    }
}

/// A live server's kernel keeps a silent connection open for far longer
/// (PostgreSQL waits `authentication_timeout`, 60 s by default).
const HELD_FOR: Duration = Duration::from_millis(100);

/// A connect cut off by the peer before any answer: what a server in the
/// middle of dying gives (its kernel completed the handshake).
fn reset_at_connect(e: &PgError) -> bool {
    let PgError::Connect { message, .. } = e else {
        return false;
    };
    let m = message.to_ascii_lowercase();
    [
        "connection reset",
        "broken pipe",
        "connection aborted",
        "unexpected eof",
    ]
    .iter()
    .any(|s| m.contains(s))
}

fn is_auth_error(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(c) => {
            *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        }
        None => describe(e).contains("password"),
    }
}

/// Runs query `fut` of `client` for at most `limit`; on expiry, also asks
/// the server to cancel it (a local timeout alone leaves it running there),
/// in the background and bounded by `connect_timeout`. Every query pgha
/// sends goes through here.
pub(crate) async fn bounded<T, F>(
    client: &Client,
    t: &PgTarget,
    what: &str,
    limit: Duration,
    fut: F,
) -> Result<T, PgError>
where
    F: Future<Output = Result<T, tokio_postgres::Error>>,
{
    // `-v`: every query by name (the name, not the text: no literal with a
    // secret reaches the log).
    tracing::debug!("sql {}:{}: {what}", t.host, t.port);
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(query_error(t, what, describe(&e))),
        Err(_) => {
            let token = client.cancel_token();
            let t2 = t.clone();
            tokio::spawn(async move {
                if let Err(e) = cancel(&token, &t2).await {
                    tracing::debug!(host = %t2.host, port = t2.port, "could not cancel a timed-out query: {e}");
                }
            });
            Err(PgError::Timeout {
                host: t.host.clone(),
                port: t.port,
                what: what.into(),
                after: limit,
            })
        }
    }
}

fn query_error(t: &PgTarget, query: &str, message: String) -> PgError {
    PgError::Query {
        host: t.host.clone(),
        port: t.port,
        query: query.into(),
        message,
    }
}

/// The server's own words for a database error (severity, message, detail,
/// hint), else the client error with its causes.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!(" (detail: {d})"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!(" (hint: {h})"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

// ---------------------------------------------------------------------------
// Password file (.pgpass)

/// Result of a password file lookup, with the reason when nothing was found
/// (for the error message of a failed login).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordLookup {
    /// The password of the first matching line.
    pub password: Option<String>,
    /// The file consulted.
    pub file: Option<PathBuf>,
    /// Why the file was not used, when it was not.
    pub skipped: Option<String>,
    key: String,
}

impl PasswordLookup {
    fn why_none(&self) -> String {
        match (&self.file, &self.skipped) {
            (Some(f), Some(why)) => format!("no password: {} {why}", f.display()),
            (Some(f), None) => format!("no line for {} in password file {}", self.key, f.display()),
            (None, _) => "no password file: HOME is not known".into(),
        }
    }
}

/// The password file libpq would read: `explicit` (libpq's `passfile`),
/// else `PGPASSFILE`, else `~/.pgpass`.
pub fn passfile_path(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("PGPASSFILE").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    home_dir().map(|h| h.join(".pgpass"))
}

fn home_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(h));
    }
    // SAFETY: getpwuid_r writes into the buffers we own and sizes we pass;
    // `result` points into `pwd`, which lives until we copy pw_dir out.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() || pwd.pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr(pwd.pw_dir);
        use std::os::unix::ffi::OsStrExt;
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes())))
    }
}

/// Looks up `t`'s password the way libpq does. The file is ignored, with a
/// warning, when it is not a plain file or is group/world accessible (libpq
/// demands mode 0600 or less). A missing file is no error, unless it was
/// named in `[postgres] passfile`. A unix socket connection also matches
/// lines for `localhost`; a host given as an address matches only that
/// address, never a name it resolves to.
pub fn password_for(t: &PgTarget) -> Result<PasswordLookup, PgError> {
    let key = format!("{}:{}:{}:{}", t.host, t.port, t.dbname, t.user);
    let Some(path) = passfile_path(t.passfile.as_deref()) else {
        return Ok(PasswordLookup {
            password: None,
            file: None,
            skipped: None,
            key,
        });
    };
    let mut out = PasswordLookup {
        password: None,
        file: Some(path.clone()),
        skipped: None,
        key,
    };
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound && t.passfile.is_none() => {
            out.skipped = Some("does not exist".into());
            return Ok(out);
        }
        Err(e) => {
            return Err(PgError::Passfile {
                path,
                message: e.to_string(),
            });
        }
    };
    use std::os::unix::fs::PermissionsExt;
    let skip = if !meta.is_file() {
        Some("is not a plain file; ignored".to_string())
    } else if meta.permissions().mode() & 0o077 != 0 {
        Some(format!(
            "has group or world access (mode {:04o}); ignored, permissions should be u=rw (0600) or less",
            meta.permissions().mode() & 0o7777
        ))
    } else {
        None
    };
    if let Some(why) = skip {
        tracing::warn!(file = %path.display(), "password file {why}");
        out.skipped = Some(why);
        return Ok(out);
    }
    let text = match std::fs::read(&path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            return Err(PgError::Passfile {
                path,
                message: e.to_string(),
            });
        }
    };
    let port = t.port.to_string();
    let hosts: &[&str] = if t.is_unix_socket() {
        &[&t.host, "localhost"]
    } else {
        &[&t.host]
    };
    out.password = pgpass_lookup(&text, hosts, &port, &t.dbname, &t.user);
    Ok(out)
}

/// The password of the first line of a `.pgpass` text matching
/// `host:port:database:user` (`*` matches any value; `\:` and `\\` are a
/// literal colon and backslash; lines starting with `#` are comments). An
/// empty password counts as none, as in libpq.
pub fn pgpass_match(
    text: &str,
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<String> {
    pgpass_lookup(text, &[host], port, dbname, user)
}

/// [`pgpass_match`] where the host field may match any of `hosts`.
fn pgpass_lookup(
    text: &str,
    hosts: &[&str],
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<String> {
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let rest = hosts
            .iter()
            .find_map(|h| crate::text::passfile_field(line, h))
            .and_then(|rest| {
                [port, dbname, user]
                    .iter()
                    .try_fold(rest, |rest, token| crate::text::passfile_field(rest, token))
            });
        if let Some(rest) = rest {
            let mut password = String::new();
            let mut chars = rest.chars();
            while let Some(c) = chars.next() {
                match c {
                    ':' => break,
                    '\\' => match chars.next() {
                        Some(n) => password.push(n),
                        None => password.push('\\'),
                    },
                    c => password.push(c),
                }
            }
            return Some(password).filter(|p| !p.is_empty());
        }
    }
    None
}

/// Proves a new primary accepts writes: `txid_current()` assigns a
/// transaction id, which a server in recovery (or read-only) refuses.
pub async fn accepts_writes(client: &Client, t: &PgTarget) -> Result<(), PgError> {
    bounded(
        client,
        t,
        "SELECT txid_current()",
        t.query_timeout,
        client.batch_execute("SELECT txid_current()"),
    )
    .await
}

/// Reads a file under the data directory with `pg_read_binary_file()`
/// (superuser or `pg_read_server_files`): how pgha fetches a timeline
/// history file from a new primary without an ssh round trip.
pub async fn read_binary_file(
    client: &Client,
    t: &PgTarget,
    path: &str,
) -> Result<Vec<u8>, PgError> {
    let what = format!("pg_read_binary_file('{path}')");
    let row = bounded(
        client,
        t,
        &what,
        t.query_timeout,
        client.query_one("SELECT pg_read_binary_file($1)", &[&path]),
    )
    .await?;
    row.try_get::<_, Vec<u8>>(0)
        .map_err(|e| query_error(t, &what, describe(&e)))
}

/// Drops replication slot `slot` if it exists; returns whether it did.
pub async fn drop_replication_slot(
    client: &Client,
    t: &PgTarget,
    slot: &str,
) -> Result<bool, PgError> {
    let what = format!("pg_drop_replication_slot('{slot}')");
    let rows = bounded(
        client,
        t,
        &what,
        t.query_timeout,
        client.query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        ),
    )
    .await?;
    Ok(!rows.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener that holds connections is alive; one that resets them
    /// as it closes, then refuses, is not; nothing listening is not.
    #[tokio::test]
    async fn tcp_accepts_holds_or_resets() {
        let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = live.local_addr().unwrap().port();
        assert!(tcp_accepts("127.0.0.1", port, Duration::from_secs(1)).await);
        drop(live);
        assert!(!tcp_accepts("127.0.0.1", port, Duration::from_secs(1)).await);
        // Dying: the handshake completes in the backlog, then the listening
        // socket closes and resets it.
        let dying = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = dying.local_addr().unwrap().port();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            drop(dying);
        });
        let start = std::time::Instant::now();
        assert!(!tcp_accepts("127.0.0.1", port, Duration::from_secs(1)).await);
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
        closer.join().unwrap();
    }

    #[test]
    fn a_reset_at_connect_is_told_from_an_answer() {
        let e = |message: &str| PgError::Connect {
            host: "127.0.0.2".into(),
            port: 5432,
            message: message.into(),
            answered: true,
        };
        assert!(reset_at_connect(&e(
            "Connection reset by peer (os error 104)"
        )));
        assert!(!reset_at_connect(&e(
            "password authentication failed for user \"postgres\""
        )));
    }
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn lsn_parse_format_order() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        assert_eq!(Lsn(0x1_0000_0000).to_string(), "1/0");
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
        assert_eq!("a/b".parse::<Lsn>().unwrap(), Lsn(0xa_0000_000b));
        for bad in [
            "",
            "16",
            "16/",
            "/1",
            "1/2/3",
            "G/0",
            "123456789/0",
            "1/ 2",
            "+1/2",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
        // Ordered as WAL positions, not as strings.
        let a: Lsn = "9/FFFFFFFF".parse().unwrap();
        let b: Lsn = "A/0".parse().unwrap();
        assert!(a < b);
        assert_eq!(a.bytes_behind(b), 1);
        assert_eq!(b.bytes_behind(a), 0);
        assert_eq!(serde_json::to_string(&b).unwrap(), "\"A/0\"");
        assert_eq!(serde_json::from_str::<Lsn>("\"A/0\"").unwrap(), b);
        assert!(serde_json::from_str::<Lsn>("\"A\"").is_err());
    }

    const PGPASS: &str = "\
# comment:*:*:*:nope
127.0.202.2:5432:postgres:postgres:first
127.0.202.2:5432:postgres:postgres:second
*:5433:*:repl:any-host
127.0.202.3:*:app\\:db:postgres:colon-db
127.0.202.3:5432:*:back\\\\slash:pa\\:ss\\\\word:trailing
localhost:5432:*:postgres:socket
127.0.202.4:5432:*:postgres:
host.example:5432:*:*:byname\r
";

    #[test]
    fn pgpass_first_match_and_wildcards() {
        let m = |h, p, d, u| pgpass_match(PGPASS, h, p, d, u);
        assert_eq!(
            m("127.0.202.2", "5432", "postgres", "postgres").as_deref(),
            Some("first")
        );
        assert_eq!(m("127.0.202.2", "5432", "other", "postgres"), None);
        assert_eq!(
            m("127.0.202.9", "5433", "x", "repl").as_deref(),
            Some("any-host")
        );
        assert_eq!(m("127.0.202.9", "5432", "x", "repl"), None);
        // Comments are not entries even when they would match.
        assert_eq!(m("# comment", "x", "y", "z"), None);
        // A prefix is not a match.
        assert_eq!(m("127.0.202.", "5432", "postgres", "postgres"), None);
        assert_eq!(m("127.0.202.22", "5432", "postgres", "postgres"), None);
        // An empty password counts as none.
        assert_eq!(m("127.0.202.4", "5432", "postgres", "postgres"), None);
        // CRLF line ends.
        assert_eq!(
            m("host.example", "5432", "d", "u").as_deref(),
            Some("byname")
        );
        // `*` is a wildcard only as a whole field.
        assert_eq!(pgpass_match("12*:1:d:u:pw\n", "123", "1", "d", "u"), None);
        assert_eq!(
            pgpass_match("12*:1:d:u:pw\n", "12*", "1", "d", "u").as_deref(),
            Some("pw")
        );
    }

    #[test]
    fn pgpass_escapes() {
        let m = |h, p, d, u| pgpass_match(PGPASS, h, p, d, u);
        assert_eq!(
            m("127.0.202.3", "6000", "app:db", "postgres").as_deref(),
            Some("colon-db")
        );
        assert_eq!(m("127.0.202.3", "6000", "app\\:db", "postgres"), None);
        // The password is de-escaped and ends at an unescaped colon.
        assert_eq!(
            m("127.0.202.3", "5432", "any", "back\\slash").as_deref(),
            Some("pa:ss\\word")
        );
    }

    fn target(host: &str, passfile: &Path) -> PgTarget {
        PgTarget {
            host: host.into(),
            port: 5432,
            user: "postgres".into(),
            dbname: "postgres".into(),
            passfile: Some(passfile.to_path_buf()),
            connect_timeout: Duration::from_secs(1),
            query_timeout: Duration::from_secs(1),
            application_name: APPLICATION_NAME.into(),
            tls: TlsSettings::default(),
        }
    }

    #[test]
    fn pgpass_file_permissions_and_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pgpass");
        std::fs::write(&f, PGPASS).unwrap();

        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let got = password_for(&target("127.0.202.2", &f)).unwrap();
        assert_eq!(got.password.as_deref(), Some("first"));
        // A unix socket connection matches `localhost` lines.
        let got = password_for(&target("/var/run/postgresql", &f)).unwrap();
        assert_eq!(got.password.as_deref(), Some("socket"));
        // A TCP connection to an address does not match `localhost`.
        let got = password_for(&target("127.0.0.1", &f)).unwrap();
        assert_eq!(got.password, None);
        assert!(
            got.why_none()
                .contains("no line for 127.0.0.1:5432:postgres:postgres"),
            "{}",
            got.why_none()
        );

        for mode in [0o640, 0o604, 0o660] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let got = password_for(&target("127.0.202.2", &f)).unwrap();
            assert_eq!(got.password, None, "mode {mode:o}");
            assert!(
                got.why_none().contains("group or world access"),
                "{}",
                got.why_none()
            );
        }
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o400)).unwrap();
        let got = password_for(&target("127.0.202.2", &f)).unwrap();
        assert_eq!(got.password.as_deref(), Some("first"));

        // A directory is not a password file.
        let got = password_for(&target("127.0.202.2", dir.path())).unwrap();
        assert_eq!(got.password, None);
        assert!(got.skipped.unwrap().contains("not a plain file"));

        // A configured file that does not exist is an error naming it.
        let missing = dir.path().join("missing");
        let e = password_for(&target("127.0.202.2", &missing)).unwrap_err();
        assert!(matches!(e, PgError::Passfile { .. }));
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn conninfo_quoting_round_trip() {
        let conninfo = |host: &str, port: u16, user: &str, app: &str| {
            let kv: std::collections::BTreeMap<String, String> = [
                ("host", host.to_string()),
                ("port", port.to_string()),
                ("user", user.to_string()),
                ("application_name", app.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            crate::pgconf::format_conninfo(&kv)
        };
        let s = conninfo("127.0.202.2", 5432, "repl", "node1");
        assert_eq!(
            s,
            "host='127.0.202.2' port='5432' user='repl' application_name='node1'"
        );
        let m = parse_conninfo(&s);
        assert_eq!(m["host"], "127.0.202.2");
        assert_eq!(m["port"], "5432");
        assert_eq!(m["user"], "repl");
        assert_eq!(m["application_name"], "node1");

        for (user, app) in [
            ("it's", "a b"),
            ("back\\slash", ""),
            ("'", "\\'\\"),
            ("tab\there", "x=y"),
        ] {
            let s = conninfo("/var/run/postgresql", 5433, user, app);
            let m = parse_conninfo(&s);
            assert_eq!(m["user"], user, "{s}");
            assert_eq!(m["application_name"], app, "{s}");
            assert_eq!(m["host"], "/var/run/postgresql");
            assert_eq!(m.len(), 4, "{s}");
        }
        assert_eq!(
            conninfo("h", 1, "it's", "a b"),
            "host='h' port='1' user='it\\'s' application_name='a b'"
        );
    }

    #[test]
    fn parse_conninfo_like_libpq() {
        // What pg_basebackup -R writes, and spacing around '='.
        let m = parse_conninfo(
            "user=repl passfile='/var/lib/postgresql/.pgpass' channel_binding=prefer \
             host = 127.0.202.2  port=5432 sslmode=prefer application_name='node 2' user=other",
        );
        assert_eq!(m["passfile"], "/var/lib/postgresql/.pgpass");
        assert_eq!(m["host"], "127.0.202.2");
        assert_eq!(m["application_name"], "node 2");
        // A later key overrides an earlier one.
        assert_eq!(m["user"], "other");
        assert!(parse_conninfo("").is_empty());
        assert!(parse_conninfo("postgresql://repl@127.0.202.2/db").is_empty());
        // An unterminated quote drops the broken pair, keeps the rest.
        let m = parse_conninfo("host=h password='oops");
        assert_eq!(m.len(), 1);
        assert_eq!(m["host"], "h");
    }

    #[test]
    fn sql_literal() {
        assert_eq!(
            quote_literal("host=h user='x'").unwrap(),
            "E'host=h user=''x'''"
        );
        assert_eq!(quote_literal("a\\b").unwrap(), "E'a\\\\b'");
        assert_eq!(quote_literal("nul\0"), None);
    }

    fn standby() -> NodeState {
        NodeState {
            host: "127.0.202.3".into(),
            port: 5432,
            server_version_num: 150018,
            in_recovery: true,
            timeline: 1,
            current_lsn: None,
            receive_lsn: Some(Lsn(300)),
            replay_lsn: Some(Lsn(200)),
            wal_receiver: Some(WalReceiver {
                status: "streaming".into(),
                sender_host: Some("127.0.202.2".into()),
                sender_port: Some(5432),
                received_tli: 1,
                flushed_lsn: Some(Lsn(300)),
                conninfo: None,
            }),
            primary_conninfo: None,
            system_identifier: 1,
            data_directory: "/x".into(),
            wal_log_hints: true,
            data_checksums: false,
            replicas: vec![],
            synchronous_standby_names: String::new(),
            synchronous_commit: "on".into(),
            restore_command: String::new(),
        }
    }

    #[test]
    fn a_standby_past_the_switch_point_has_diverged() {
        use crate::lineage::{HistoryEntry, diverged};
        let mut primary = standby();
        (primary.in_recovery, primary.timeline, primary.current_lsn) = (false, 2, Some(Lsn(900)));
        let history = [HistoryEntry {
            parent_tli: 1,
            switch_point: Lsn(250),
        }];
        // Received 300 on timeline 1, past the switch at 250.
        let why = diverged(&history, &primary, &standby());
        assert!(why.is_some(), "{why:?}");
        let mut behind = standby();
        (behind.receive_lsn, behind.replay_lsn) = (Some(Lsn(240)), Some(Lsn(240)));
        assert_eq!(diverged(&history, &primary, &behind), None);
        // The history unread, or not a standby: nothing is called diverged.
        assert_eq!(diverged(&[], &primary, &standby()), None);
        assert_eq!(diverged(&history, &primary, &primary), None);
    }

    #[test]
    fn best_lsn_and_streaming() {
        let mut s = standby();
        assert_eq!(s.best_lsn(), Some(Lsn(300)));
        s.receive_lsn = None;
        assert_eq!(s.best_lsn(), Some(Lsn(200)));
        assert!(s.is_streaming_from("127.0.202.2"));
        assert!(!s.is_streaming_from("127.0.202.4"));
        s.wal_receiver.as_mut().unwrap().status = "waiting".into();
        assert!(!s.is_streaming_from("127.0.202.2"));

        let mut p = standby();
        p.in_recovery = false;
        p.current_lsn = Some(Lsn(50));
        assert_eq!(p.best_lsn(), Some(Lsn(50)));
    }

    #[tokio::test]
    async fn connect_timeout_names_the_host() {
        // A listener that accepts and never answers: the startup hangs.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pgpass");
        std::fs::write(&f, "").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut t = target("127.0.0.1", &f);
        t.port = port;
        t.connect_timeout = Duration::from_millis(200);
        let started = std::time::Instant::now();
        let e = connect(&t).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(e, PgError::Timeout { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "postgresql at 127.0.0.1:{port}: connect (tcp, tls and authentication) timed out after 200ms"
            )
        );
        hold.abort();
    }

    /// A fake server: answers the SSLRequest with `ssl` (when asked), then
    /// asks for password method `code`, and reports every byte it received
    /// after the startup packet.
    async fn fake_server(ssl: u8, code: i32) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await.unwrap();
            let mut rest = vec![0u8; u32::from_be_bytes(len) as usize - 4];
            s.read_exact(&mut rest).await.unwrap();
            if rest == [0x04, 0xd2, 0x16, 0x2f] {
                s.write_all(&[ssl]).await.unwrap();
                if ssl != b'N' {
                    return vec![];
                }
                s.read_exact(&mut len).await.unwrap();
                let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                s.read_exact(&mut startup).await.unwrap();
            }
            let mut m = vec![b'R', 0, 0, 0, 8];
            m.extend_from_slice(&code.to_be_bytes());
            if code == 5 {
                m[4] = 12;
                m.extend_from_slice(b"salt");
            }
            s.write_all(&m).await.unwrap();
            let mut got = vec![];
            let _ = tokio::time::timeout(Duration::from_millis(500), s.read_to_end(&mut got)).await;
            got
        });
        (port, h)
    }

    fn target_with_password(
        port: u16,
        mode: crate::config::SslMode,
    ) -> (tempfile::TempDir, PgTarget) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pgpass");
        std::fs::write(&f, "*:*:*:*:sekrit-pw\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut t = target("127.0.0.1", &f);
        t.port = port;
        t.tls.mode = mode;
        (dir, t)
    }

    #[tokio::test]
    async fn cleartext_and_md5_requests_get_no_password() {
        use crate::config::SslMode;
        for (mode, code) in [
            (SslMode::Disable, 3),
            (SslMode::Prefer, 3),
            (SslMode::Disable, 5),
        ] {
            let ssl = if mode == SslMode::Prefer { b'N' } else { 0 };
            let (port, server) = fake_server(ssl, code).await;
            let (_dir, t) = target_with_password(port, mode);
            let e = connect(&t).await.unwrap_err();
            let m = e.to_string();
            assert!(m.contains("refused, the password was not sent"), "{m}");
            assert!(m.contains("allow_cleartext_password"), "{m}");
            assert!(e.answered(), "{e:?}");
            let got = server.await.unwrap();
            assert!(!String::from_utf8_lossy(&got).contains("sekrit"), "{got:?}");
            assert!(
                !got.starts_with(b"p"),
                "a password message was sent: {got:?}"
            );
        }
        // Allowed by configuration: the password goes.
        let (port, server) = fake_server(0, 3).await;
        let (_dir, mut t) = target_with_password(port, SslMode::Disable);
        t.tls.allow_cleartext_password = true;
        let _ = connect(&t).await;
        let got = server.await.unwrap();
        assert!(
            String::from_utf8_lossy(&got).contains("sekrit-pw"),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn require_refuses_a_server_without_tls() {
        let (port, _server) = fake_server(b'N', 3).await;
        let (_dir, t) = target_with_password(port, crate::config::SslMode::Require);
        let e = connect(&t).await.unwrap_err().to_string();
        assert!(
            e.contains("does not offer tls") && e.contains("sslmode = \"require\""),
            "{e}"
        );
    }

    #[test]
    fn a_hostssl_only_refusal_is_recognised() {
        assert!(requires_tls(
            "FATAL: no pg_hba.conf entry for host \"127.0.0.2\", user \"postgres\", database \"postgres\", no encryption"
        ));
        assert!(!requires_tls("FATAL: password authentication failed"));
    }
}
