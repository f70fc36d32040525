//! `pgha.toml`: the few settings pgpool-II does not know.
//!
//! Topology (backend hosts, ports, data directories) comes from `pgpool.conf`;
//! this file only adds how to reach the nodes (ssh), how to act on them
//! (PostgreSQL binaries and users), how to talk to pgpool (PCP), the deadlines
//! and the policies. Every key is optional: pgha runs with no `pgha.toml` at
//! all, and a typo in a key is an error, never a silently ignored setting.
//!
//! Durations are strings with a unit (`"250ms"`, `"3s"`, `"2m"`, `"1h"`), see
//! [`parse_duration`]; byte sizes take PostgreSQL's units (`"16MB"`).
//!
//! Where the file is looked for: `--config` > `PGHA_CONFIG` >
//! `/etc/pgha/pgha.toml` ([`Config::load`]).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::text;

/// Environment variable naming the configuration file when `--config` is not
/// given.
pub const CONFIG_ENV: &str = "PGHA_CONFIG";

/// Why the configuration could not be loaded. Every variant names the file;
/// parse errors also give the line, the column and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file named by `--config` or `PGHA_CONFIG` does not exist. (Only the
    /// default path may be missing.)
    #[error("config file {} does not exist (named by {named_by})", path.display())]
    NotFound {
        path: PathBuf,
        named_by: &'static str,
    },
    /// The file exists but could not be read (permissions, a directory, ...).
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// TOML syntax error, unknown key, wrong type or invalid value.
    #[error("{}:{line}:{column}: {}{message}", path.display(), key.as_deref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        /// 1-based line of the offending text (0 when toml gave no position).
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// Dotted key path, e.g. `ssh.connect_timeout`, when it can be told.
        key: Option<String>,
        message: String,
    },
}

/// The whole of `pgha.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Path of pgpool-II's configuration, the one source of topology
    /// (`backend_hostnameN`, `backend_portN`, `backend_data_directoryN`,
    /// `pcp_port`, ...). Default `/etc/pgpool2/pgpool.conf`.
    #[serde(default = "default_pgpool_conf", deserialize_with = "de_path")]
    pub pgpool_conf: PathBuf,
    /// Directory for pgha's journal (what was done, for idempotent reruns)
    /// and its flock lock file (one invocation at a time on this host).
    /// Default `/var/lib/pgha`.
    #[serde(default = "default_state_dir", deserialize_with = "de_path")]
    pub state_dir: PathBuf,
    /// `[ssh]`: how to reach the nodes.
    #[serde(default)]
    pub ssh: SshConfig,
    /// `[postgres]`: binaries, users and timeouts for the backends.
    #[serde(default)]
    pub postgres: PostgresConfig,
    /// `[pcp]`: how to reach pgpool's PCP port.
    #[serde(default)]
    pub pcp: PcpConfig,
    /// `[failover]`: deadlines and policies of `pgha-failover`.
    #[serde(default)]
    pub failover: FailoverConfig,
    /// `[follow]`: how far `pgha-follow` may go to make a standby follow.
    #[serde(default)]
    pub follow: FollowConfig,
    /// `[nodes.N]`: per-backend additions, keyed by pgpool backend id (the
    /// `N` of `backend_hostnameN`). Default: none.
    #[serde(default, deserialize_with = "de_nodes", serialize_with = "ser_nodes")]
    pub nodes: BTreeMap<u32, NodeOverride>,
    /// Where this configuration was read from; `None` when no file existed at
    /// the default path and all defaults apply. Not a key of the file.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[ssh]`: the ssh client pgha runs to act on the nodes (stop, rewind,
/// restart, copy history files). Host keys are always checked strictly and
/// batch mode is always on; neither is configurable.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// Remote login (`ssh -l`). Default `postgres`.
    #[serde(default = "default_ssh_user", deserialize_with = "de_text")]
    pub user: String,
    /// Remote sshd port (`ssh -p`). Default 22.
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    /// Private key (`ssh -i`, with `IdentitiesOnly=yes`). Default: none, ssh
    /// picks its usual keys of the user running pgha.
    #[serde(default, deserialize_with = "de_opt_path")]
    pub identity_file: Option<PathBuf>,
    /// Known hosts file (`UserKnownHostsFile`). Default: none, ssh's own
    /// (`~/.ssh/known_hosts`).
    #[serde(default, deserialize_with = "de_opt_path")]
    pub known_hosts_file: Option<PathBuf>,
    /// Duration: TCP connect plus authentication (`ConnectTimeout`); a
    /// blackholed host fails after this. Default `"3s"`.
    #[serde(default = "default_ssh_connect_timeout", with = "duration_serde")]
    pub connect_timeout: Duration,
    /// Duration: upper bound for one remote command unless a step has its own
    /// (the command is also killed on the remote side). Default `"30s"`.
    #[serde(default = "default_ssh_command_timeout", with = "duration_serde")]
    pub command_timeout: Duration,
    /// Directory for the multiplexing sockets (`ControlPath`) and pgha's
    /// per-run `ssh -F` file. It must be owned by the user running pgha (or
    /// root) and writable by nobody else: a shared directory such as `/tmp`
    /// is refused, since another user could plant FIFOs and links there.
    /// Unix socket paths are limited to about 100 bytes, so keep it short.
    /// Default: none, a private directory: `$XDG_RUNTIME_DIR/pgha`, else
    /// `/run/user/UID/pgha`, else a new `/tmp/pgha-XXXXXX` (mode 0700) per run.
    #[serde(default, deserialize_with = "de_opt_path")]
    pub control_dir: Option<PathBuf>,
}

/// `[postgres]`: how pgha connects to the backends and runs their tools.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Directory of `pg_ctl`, `pg_rewind`, `pg_basebackup` on the nodes.
    /// Default `/usr/lib/postgresql/15/bin`.
    #[serde(default = "default_pg_bin_dir", deserialize_with = "de_path")]
    pub bin_dir: PathBuf,
    /// Superuser pgha connects as (promote, `ALTER SYSTEM`, checkpoints,
    /// reading `pg_stat_wal_receiver`). Default `postgres`.
    #[serde(default = "default_pg_user", deserialize_with = "de_text")]
    pub user: String,
    /// Database pgha connects to. Default `postgres`.
    #[serde(default = "default_pg_database", deserialize_with = "de_text")]
    pub database: String,
    /// Role the standbys stream as: the `user` of the `primary_conninfo` pgha
    /// writes. Its password lives in the standbys' `.pgpass`. Default `repl`.
    #[serde(default = "default_replication_user", deserialize_with = "de_text")]
    pub replication_user: String,
    /// libpq password file for pgha's own connections. Default: none, that
    /// is `PGPASSFILE`, else `~/.pgpass`, as libpq does.
    #[serde(default, deserialize_with = "de_opt_path")]
    pub passfile: Option<PathBuf>,
    /// Duration: TCP connect plus authentication to one backend. Default
    /// `"3s"`.
    #[serde(default = "default_pg_connect_timeout", with = "duration_serde")]
    pub connect_timeout: Duration,
    /// Duration: upper bound for one query. Default `"10s"`.
    #[serde(default = "default_pg_query_timeout", with = "duration_serde")]
    pub query_timeout: Duration,
    /// WAL archive directory on the nodes (the target of `archive_command`),
    /// where new timeline history files are copied. Default: none (no
    /// archive).
    #[serde(default, deserialize_with = "de_opt_path")]
    pub archive_dir: Option<PathBuf>,
    /// Server log for `pg_ctl -l FILE` when pgha starts a server remotely;
    /// relative to the data directory's parent (outside the data directory so
    /// `pg_rewind`/`pg_basebackup` do not copy it). Default
    /// `"pgha-postgresql.log"`.
    #[serde(default = "default_pg_log_file", deserialize_with = "de_text")]
    pub log_file: String,
    /// The standbys' `restore_command`, with `{host}` standing for the
    /// replication address of the primary they follow, e.g.
    /// `"scp {host}:/var/lib/postgresql/archive/%f %p || exit 1"`. Written
    /// to every standby that follows a new primary (reload on 14+).
    /// Default: none, and a standby's own command is kept, with the
    /// address of the node it followed replaced by the new primary's
    /// when it names exactly one backend.
    #[serde(default, deserialize_with = "de_opt_text")]
    pub restore_command: Option<String>,
    /// TLS for pgha's own sessions, libpq's `sslmode`: `"disable"`,
    /// `"prefer"` (TLS when the server offers it, unverified), `"require"`
    /// (TLS or no session), `"verify-ca"` (and the certificate chain leads to
    /// `sslrootcert`), `"verify-full"` (and the certificate names the host
    /// pgha connects to: `backend_hostnameN`, an IP in its subjectAltName when
    /// that is an address). With `sslrootcert` set, `prefer` and `require`
    /// verify the chain too, as libpq does. Default `"prefer"`.
    #[serde(default)]
    pub sslmode: SslMode,
    /// PEM file of the CA(s) that sign the servers' certificates
    /// (`sslrootcert`); needed by `verify-ca` and `verify-full`. Default: none.
    #[serde(default, deserialize_with = "de_opt_path")]
    pub sslrootcert: Option<PathBuf>,
    /// PEM client certificate (`sslcert`), for pg_hba.conf's `cert` method or
    /// `clientcert=`; needs `sslkey`. Default: none.
    #[serde(default, deserialize_with = "de_opt_path")]
    pub sslcert: Option<PathBuf>,
    /// PEM key of `sslcert` (`sslkey`), mode 0600 (0640 when owned by root).
    /// Default: none.
    #[serde(default, deserialize_with = "de_opt_path")]
    pub sslkey: Option<PathBuf>,
    /// Answer a server's request for a cleartext or md5 password (pg_hba.conf
    /// `password`, `md5` with an md5-hashed role, `ldap`, `pam`, `radius`) over
    /// a connection that is not verified TLS. Off: such a request fails the
    /// connect and the password is not sent, so whoever binds a dead node's
    /// address cannot collect it; SCRAM, unix sockets and TLS verified
    /// against `sslrootcert` are always answered. Default `false`.
    #[serde(default)]
    pub allow_cleartext_password: bool,
}

/// `[postgres] sslmode`, as libpq spells and means it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[pcp]`: pgpool-II's control port (`pcp_attach_node`, node info).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PcpConfig {
    /// Host of the PCP port. Default: none, that is `pcp_listen_addresses`
    /// from `pgpool.conf` (its first address), else `127.0.0.1`.
    #[serde(default, deserialize_with = "de_opt_host")]
    pub host: Option<String>,
    /// PCP port. Default: none, that is `pcp_port` from `pgpool.conf`.
    #[serde(default)]
    pub port: Option<u16>,
    /// PCP user (a line of `pcp.conf`). Default `pgpool`.
    #[serde(default = "default_pcp_user", deserialize_with = "de_text")]
    pub user: String,
    /// `.pcppass` file with the PCP password. Default: none, that is
    /// `PCPPASSFILE`, else `~/.pcppass`.
    #[serde(default, deserialize_with = "de_opt_path")]
    pub pass_file: Option<PathBuf>,
    /// Duration: connect plus one PCP request. Default `"5s"`.
    #[serde(default = "default_pcp_timeout", with = "duration_serde")]
    pub timeout: Duration,
    /// Duration: how long to keep retrying while pgpool answers that a
    /// failover is in progress (PCP refuses attach/detach meanwhile).
    /// Default `"60s"`.
    #[serde(default = "default_pcp_busy_retry_for", with = "duration_serde")]
    pub busy_retry_for: Duration,
}

/// `[failover]`: what `pgha-failover` may do and how long it may take.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverConfig {
    /// Duration: overall deadline of one failover; pgpool waits for
    /// `failover_command`, so it must never hang. Also how long
    /// `pgha-follow`/`pgha-attach` wait for the failover lock (a failover
    /// in progress ends by then). Default `"60s"`.
    #[serde(default = "default_failover_deadline", with = "duration_serde")]
    pub deadline: Duration,
    /// Duration: from `pg_promote()` until the candidate accepts writes
    /// (also bounds the promote request's own SQL and ssh). Default
    /// `"30s"`.
    #[serde(default = "default_promote_timeout", with = "duration_serde")]
    pub promote_timeout: Duration,
    /// Duration: for one standby to stream from the new primary, in
    /// pgha-failover's settle phase and in `pgha-follow`/`pgha-attach`
    /// (streaming, catching up, a restarted standby answering). Default
    /// `"30s"`.
    #[serde(default = "default_follow_timeout", with = "duration_serde")]
    pub follow_timeout: Duration,
    /// Which standby to promote. Default `"pgpool"`.
    #[serde(default)]
    pub candidate: CandidatePolicy,
    /// What to do about an old primary that may still be alive. Default
    /// `"stop"`.
    #[serde(default)]
    pub fence: FencePolicy,
    /// Duration: how long each probe of whether the failed old primary is
    /// still alive may take (SQL on its other addresses, a TCP connect from
    /// the standbys that stream from it); they all run at once. Shorter
    /// fails over a silent primary sooner; too short could take a slow but
    /// live primary for dead. Default `"1s"`.
    #[serde(default = "default_liveness_timeout", with = "liveness_serde")]
    pub liveness_timeout: Duration,
    /// Drop a failed standby's replication slot (`pg_drop_replication_slot`)
    /// and create slots for the standbys of a new primary; `pgha-follow`
    /// and `pgha-attach` create the slot of the standby they repoint too.
    /// Default `false`.
    #[serde(default)]
    pub replication_slots: bool,
    /// Bytes: how far behind the most advanced reachable standby (received
    /// WAL) the candidate may be, like repmgr's and pgpool's
    /// `maximum_lag_on_failover`. An integer or a string with a PostgreSQL
    /// unit (`"16MB"`). Ignored under synchronous replication, where only
    /// the most advanced standby is sure to hold every acknowledged commit.
    /// Standbys with more WAL than the one promoted are never repointed.
    /// Default 0: never promote a standby with less WAL than another.
    #[serde(default, deserialize_with = "de_bytes")]
    pub maximum_lag: u64,
    /// With `synchronous_standby_names` set, what to do when the standbys
    /// pgha sees cannot prove that one of them holds every acknowledged
    /// commit (too many listed standbys are gone). Default `"refuse"`.
    #[serde(default)]
    pub sync_unproven: SyncUnprovenPolicy,
    /// What to do when the new primary's `synchronous_standby_names` cannot
    /// be met by the standbys left, so that every commit would wait forever.
    /// Default `"relax"`.
    #[serde(default)]
    pub sync_after_promote: SyncAfterPolicy,
}

/// `[failover] sync_unproven`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncUnprovenPolicy {
    /// `"refuse"`: promote nothing and say which standbys are missing.
    #[default]
    Refuse,
    /// `"promote"`: promote the most advanced standby seen anyway, and say
    /// in the final line that acknowledged commits may be lost.
    Promote,
}

/// `[failover] sync_after_promote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncAfterPolicy {
    /// `"relax"`: on the new primary, lower the number of synchronous
    /// standbys to those that will stream from it, or make replication
    /// asynchronous when none will (`ALTER SYSTEM SET
    /// synchronous_standby_names`, reload); the final line says so. Restore
    /// the setting once the standbys are back (README).
    #[default]
    Relax,
    /// `"keep"`: leave the setting; commits wait until enough listed
    /// standbys stream from the new primary. The run then ends `FAILED`
    /// saying that writes block, never `OK`.
    Keep,
}

/// `[failover] candidate`: the standby to promote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CandidatePolicy {
    /// `"pgpool"`: pgpool's new main node (`%m` of `failover_command`), so
    /// pgpool and pgha agree on the new primary.
    #[default]
    Pgpool,
    /// `"most_advanced"`: the reachable standby with the highest received or
    /// replayed LSN, so the fewest transactions are lost.
    MostAdvanced,
}

/// `[failover] fence`: guarding against two primaries (split brain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FencePolicy {
    /// `"stop"`: stop the old primary over ssh before promoting (`pg_ctl
    /// stop -m fast`, then `-m immediate` when that does not finish in half
    /// of `promote_timeout` or an address still accepts connections); abort
    /// the failover if no address is shown closed.
    #[default]
    Stop,
    /// `"abort"`: never promote while the old primary may be alive.
    Abort,
}

/// `[follow]`: how far `pgha-follow` and `pgha-attach` may go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FollowConfig {
    /// Allow `pg_basebackup` (deleting the standby's data directory) when
    /// `pg_rewind` fails. Default `false`.
    #[serde(default)]
    pub rebuild: bool,
    /// Allow rewinding a failed old primary into a standby of the new one.
    /// Default `false`.
    #[serde(default)]
    pub rejoin_old_primary: bool,
    /// Bytes: the largest replay lag at which a standby may be attached in
    /// pgpool. An integer, or a string with a PostgreSQL unit (`"8kB"`,
    /// `"16MB"`, `"1GB"`). Default 16 MiB.
    #[serde(default = "default_max_lag", deserialize_with = "de_bytes")]
    pub max_lag: u64,
    /// Duration: overall deadline of one `pgha-follow` / `pgha-attach` run.
    /// pgpool runs `follow_primary_command` in a child process, so this may
    /// be long; it still bounds everything. Default `"30m"`.
    #[serde(default = "default_follow_deadline", with = "duration_serde")]
    pub deadline: Duration,
    /// Duration: one `pg_rewind`. Default `"10m"`.
    #[serde(default = "default_rewind_timeout", with = "duration_serde")]
    pub rewind_timeout: Duration,
    /// Duration: one `pg_basebackup` rebuild (within `deadline`). Default
    /// `"30m"`.
    #[serde(default = "default_rebuild_timeout", with = "duration_serde")]
    pub rebuild_timeout: Duration,
}

/// `[nodes.N]`: what pgpool.conf does not say about backend `N`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeOverride {
    /// Address to ssh to instead of `backend_hostnameN`. Default: none.
    #[serde(default, deserialize_with = "de_opt_host")]
    pub ssh_host: Option<String>,
    /// Address the other standbys stream from (`host` of their
    /// `primary_conninfo`) when replication runs on a separate network.
    /// Default: none, `backend_hostnameN`.
    #[serde(default, deserialize_with = "de_opt_host")]
    pub replication_host: Option<String>,
    /// Data directory when `pgpool.conf` has no `backend_data_directoryN`.
    /// Default: none.
    #[serde(default, deserialize_with = "de_opt_path")]
    pub data_directory: Option<PathBuf>,
}

fn default_pgpool_conf() -> PathBuf {
    PathBuf::from("/etc/pgpool2/pgpool.conf")
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/pgha")
}
fn default_ssh_user() -> String {
    "postgres".into()
}
fn default_ssh_port() -> u16 {
    22
}
fn default_ssh_connect_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_ssh_command_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_pg_bin_dir() -> PathBuf {
    PathBuf::from("/usr/lib/postgresql/15/bin")
}
fn default_pg_user() -> String {
    "postgres".into()
}
fn default_pg_database() -> String {
    "postgres".into()
}
fn default_replication_user() -> String {
    "repl".into()
}
fn default_pg_connect_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_pg_query_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_pg_log_file() -> String {
    "pgha-postgresql.log".into()
}
fn default_pcp_user() -> String {
    "pgpool".into()
}
fn default_pcp_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_pcp_busy_retry_for() -> Duration {
    Duration::from_secs(60)
}
fn default_failover_deadline() -> Duration {
    Duration::from_secs(60)
}
fn default_promote_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_follow_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_liveness_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_max_lag() -> u64 {
    16 * 1024 * 1024
}
fn default_follow_deadline() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_rewind_timeout() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_rebuild_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pgpool_conf: default_pgpool_conf(),
            state_dir: default_state_dir(),
            ssh: SshConfig::default(),
            postgres: PostgresConfig::default(),
            pcp: PcpConfig::default(),
            failover: FailoverConfig::default(),
            follow: FollowConfig::default(),
            nodes: BTreeMap::new(),
            source: None,
        }
    }
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            user: default_ssh_user(),
            port: default_ssh_port(),
            identity_file: None,
            known_hosts_file: None,
            connect_timeout: default_ssh_connect_timeout(),
            command_timeout: default_ssh_command_timeout(),
            control_dir: None,
        }
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            bin_dir: default_pg_bin_dir(),
            user: default_pg_user(),
            database: default_pg_database(),
            replication_user: default_replication_user(),
            passfile: None,
            connect_timeout: default_pg_connect_timeout(),
            query_timeout: default_pg_query_timeout(),
            archive_dir: None,
            log_file: default_pg_log_file(),
            restore_command: None,
            sslmode: SslMode::default(),
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            allow_cleartext_password: false,
        }
    }
}

impl Default for PcpConfig {
    fn default() -> Self {
        PcpConfig {
            host: None,
            port: None,
            user: default_pcp_user(),
            pass_file: None,
            timeout: default_pcp_timeout(),
            busy_retry_for: default_pcp_busy_retry_for(),
        }
    }
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            deadline: default_failover_deadline(),
            promote_timeout: default_promote_timeout(),
            follow_timeout: default_follow_timeout(),
            candidate: CandidatePolicy::default(),
            fence: FencePolicy::default(),
            liveness_timeout: default_liveness_timeout(),
            maximum_lag: 0,
            sync_unproven: SyncUnprovenPolicy::default(),
            sync_after_promote: SyncAfterPolicy::default(),
            replication_slots: false,
        }
    }
}

impl Default for FollowConfig {
    fn default() -> Self {
        FollowConfig {
            rebuild: false,
            rejoin_old_primary: false,
            max_lag: default_max_lag(),
            deadline: default_follow_deadline(),
            rewind_timeout: default_rewind_timeout(),
            rebuild_timeout: default_rebuild_timeout(),
        }
    }
}

impl Config {
    /// The path used when neither `--config` nor `PGHA_CONFIG` names one.
    pub fn default_path() -> PathBuf {
        PathBuf::from("/etc/pgha/pgha.toml")
    }

    /// Loads the configuration: `explicit` (from `--config`), else the file
    /// named by `PGHA_CONFIG`, else [`Config::default_path`]. A named file
    /// must exist; a missing default file means all defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, named_by) = Self::choose_path(explicit, std::env::var_os(CONFIG_ENV));
        Self::load_path(&path, named_by)
    }

    /// Which file to read and what named it. An empty `PGHA_CONFIG=` (as
    /// systemd units and wrappers often leave it) means the default path,
    /// as an unset one does.
    fn choose_path(
        explicit: Option<&Path>,
        env: Option<std::ffi::OsString>,
    ) -> (PathBuf, Option<&'static str>) {
        match (explicit, env.filter(|v| !v.is_empty())) {
            (Some(p), _) => (p.to_path_buf(), Some("--config")),
            (None, Some(v)) => (PathBuf::from(v), Some(CONFIG_ENV)),
            (None, None) => (Self::default_path(), None),
        }
    }

    fn load_path(path: &Path, named_by: Option<&'static str>) -> Result<Config, ConfigError> {
        // Non-blocking and bounded, as pgpool.conf: a FIFO must not hang.
        let read =
            crate::files::read_regular(path, crate::files::MAX_CONFIG_BYTES).and_then(|bytes| {
                String::from_utf8(bytes).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "not UTF-8 (byte {}); save it as UTF-8",
                            e.utf8_error().valid_up_to() + 1
                        ),
                    )
                })
            });
        match read {
            Ok(text) => Self::from_str(path, &text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match named_by {
                Some(named_by) => Err(ConfigError::NotFound {
                    path: path.to_path_buf(),
                    named_by,
                }),
                None => Ok(Config::default()),
            },
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parses `text` as the contents of `path` (used in error messages and
    /// recorded in [`Config::source`]).
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let (line, column, key) = match e.span() {
                Some(span) => {
                    let (line, column) = line_column(text, span.start);
                    (line, column, key_at(text, span.start))
                }
                None => (0, 0, None),
            };
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                key,
                message: e.message().trim_end().to_string(),
            }
        })?;
        config.source = Some(path.to_path_buf());
        config.check_tls(path, text)?;
        Ok(config)
    }

    /// Settings that only make sense together: `verify-ca`/`verify-full`
    /// need `sslrootcert`, `sslcert` needs `sslkey` and the other way round.
    fn check_tls(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let pg = &self.postgres;
        let problem = if matches!(pg.sslmode, SslMode::VerifyCa | SslMode::VerifyFull)
            && pg.sslrootcert.is_none()
        {
            Some((
                "sslmode",
                format!(
                    "\"{}\" verifies the servers' certificates against a CA: set sslrootcert = \"/path/to/root.crt\" in [postgres]",
                    pg.sslmode
                ),
            ))
        } else if pg.sslcert.is_some() != pg.sslkey.is_some() {
            let (has, lacks) = if pg.sslcert.is_some() {
                ("sslcert", "sslkey")
            } else {
                ("sslkey", "sslcert")
            };
            Some((has, format!("{has} needs {lacks} too: set both or neither")))
        } else {
            None
        };
        let Some((key, message)) = problem else {
            return Ok(());
        };
        let (line, column) = text
            .lines()
            .position(|l| l.trim_start().starts_with(key))
            .map_or((0, 0), |i| (i + 1, 1));
        Err(ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            key: Some(format!("postgres.{key}")),
            message,
        })
    }
}

/// 1-based line and column (in characters) of byte offset `pos`.
fn line_column(text: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The dotted key path at byte offset `pos`: the table header in force there
/// joined with the key of that line (`ssh.connect_timeout`), or the header
/// itself when `pos` is on a header line. Good enough for error messages;
/// inline tables and multi-line values report their enclosing key.
fn key_at(text: &str, pos: usize) -> Option<String> {
    let pos = pos.min(text.len());
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[pos..].find('\n').map_or(text.len(), |i| pos + i);
    let line = text[line_start..line_end].trim();
    if let Some(header) = table_header(line) {
        return Some(header);
    }
    let key = line.split_once('=').map(|(k, _)| unquote_key(k.trim()))?;
    if key.is_empty() {
        return None;
    }
    let header = text[..line_start]
        .lines()
        .rev()
        .find_map(|l| table_header(l.trim()));
    Some(match header {
        Some(h) => format!("{h}.{key}"),
        None => key,
    })
}

fn table_header(line: &str) -> Option<String> {
    let inner = line.strip_prefix('[')?;
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let end = inner.find(']')?;
    let parts: Vec<String> = inner[..end]
        .split('.')
        .map(|p| unquote_key(p.trim()))
        .collect();
    Some(parts.join("."))
}

fn unquote_key(k: &str) -> String {
    k.trim_matches(|c| c == '"' || c == '\'').to_string()
}

/// Parses a duration written with a unit: `ms`, `s`, `m` or `h`, after a
/// whole number (`"250ms"`, `"3s"`, `"2m"`, `"1h"`). A bare number is refused
/// because its unit would be a guess.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let unit = unit.trim_start();
    if num.is_empty() {
        return Err(format!(
            "invalid duration {s:?}: expected a whole number and a unit, e.g. \"250ms\", \"3s\", \"2m\", \"1h\""
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: number too large"))?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => {
            return Err(format!(
                "invalid duration {s:?}: missing unit (ms, s, m or h), e.g. \"{n}s\""
            ));
        }
        other => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {other:?} (use ms, s, m or h)"
            ));
        }
    };
    n.checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("invalid duration {s:?}: too large"))
}

/// Formats a duration the way [`parse_duration`] reads it, in the largest
/// unit that represents it exactly (`"90s"`, `"2m"`, `"250ms"`). Durations
/// that are not whole milliseconds (measured times) come out as fractional
/// seconds (`"1.0004s"`), for messages only.
pub fn format_duration(d: Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        let s = format!("{:.6}", d.as_secs_f64());
        let s = s.trim_end_matches('0').trim_end_matches('.');
        return format!("{s}s");
    }
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    for (unit, per) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000)] {
        if ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

/// Parses a byte size: a whole number with an optional PostgreSQL memory
/// unit (`B`, `kB`, `MB`, `GB`, `TB`; multiples of 1024, case as
/// PostgreSQL writes them).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    if num.is_empty() {
        return Err(format!(
            "invalid size {s:?}: expected a whole number with an optional unit, e.g. \"16MB\""
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: number too large"))?;
    let mult: u64 = match unit.trim_start() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use B, kB, MB, GB or TB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// The longest duration any setting accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The shortest `[failover] liveness_timeout`: a live primary on a busy
/// host must have time to answer, or it is taken for dead.
pub const MIN_LIVENESS_TIMEOUT: Duration = Duration::from_millis(100);

/// serde for `[failover] liveness_timeout`: a duration of at least
/// [`MIN_LIVENESS_TIMEOUT`].
mod liveness_serde {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        duration_serde::serialize(d, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = duration_serde::deserialize(d)?;
        if v < MIN_LIVENESS_TIMEOUT {
            return Err(serde::de::Error::custom(format!(
                "{} is too short: a live primary could be taken for dead; use at least 100ms",
                format_duration(v)
            )));
        }
        Ok(v)
    }
}

/// serde for [`Duration`] fields as strings with a unit, more than 0 and
/// at most [`MAX_DURATION`].
mod duration_serde {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string with a unit, e.g. \"250ms\", \"3s\", \"2m\", \"1h\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                let d = parse_duration(v).map_err(E::custom)?;
                if d.is_zero() {
                    return Err(E::custom(format!(
                        "invalid duration {v:?}: must be more than 0 (a zero timeout would fail every step at once)"
                    )));
                }
                if d > MAX_DURATION {
                    return Err(E::custom(format!(
                        "invalid duration {v:?}: more than 24h; no step of a failover may wait that long"
                    )));
                }
                Ok(d)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "invalid duration {v}: a bare number has no unit; write it as a string, e.g. \"{v}s\" or \"{v}ms\""
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
                self.visit_i64(v as i64)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "invalid duration {v}: write a whole number with a unit as a string, e.g. \"1500ms\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string that reaches the nodes (a user name, a file name): no control
/// characters ([`text::control_problem`]).
fn de_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match text::control_problem(&s) {
        Some(problem) => Err(serde::de::Error::custom(problem)),
        None => Ok(s),
    }
}

fn de_opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    de_text(d).map(Some)
}

fn de_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    de_text(d).map(PathBuf::from)
}

fn de_opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    de_path(d).map(Some)
}

/// A host pgha connects or sshes to: [`text::host_problem`] as well.
fn de_opt_host<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = de_text(d)?;
    if s.is_empty() {
        return Err(serde::de::Error::custom(
            "an empty host: remove the key to use the default",
        ));
    }
    match text::host_problem(&s) {
        Some(problem) => Err(serde::de::Error::custom(problem)),
        None => Ok(Some(s)),
    }
}

fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number of bytes or a size string such as \"16MB\"")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("invalid size {v}: negative")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
            parse_bytes(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// A `[nodes.N]` key: toml keys are strings, pgpool backend ids are numbers.
struct NodeKey(u32);

impl<'de> Deserialize<'de> for NodeKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(NodeKey).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid node key {s:?}: expected a pgpool backend id (the N of backend_hostnameN), e.g. [nodes.1]"
            ))
        })
    }
}

fn de_nodes<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u32, NodeOverride>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = BTreeMap<u32, NodeOverride>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a table of [nodes.N] keyed by pgpool backend id")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(NodeKey(id)) = m.next_key()? {
                out.insert(id, m.next_value()?);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

/// Node ids as string keys, which both TOML and JSON accept.
fn ser_nodes<S: Serializer>(nodes: &BTreeMap<u32, NodeOverride>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(nodes.len()))?;
    for (id, node) in nodes {
        m.serialize_entry(&id.to_string(), node)?;
    }
    m.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_str(Path::new("/etc/pgha/pgha.toml"), text)
    }

    fn parse_err(text: &str) -> (usize, usize, Option<String>, String, String) {
        match parse(text) {
            Err(e @ ConfigError::Parse { .. }) => {
                let shown = e.to_string();
                let ConfigError::Parse {
                    line,
                    column,
                    key,
                    message,
                    ..
                } = e
                else {
                    unreachable!()
                };
                (line, column, key, message, shown)
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.pgpool_conf, Path::new("/etc/pgpool2/pgpool.conf"));
        assert_eq!(c.state_dir, Path::new("/var/lib/pgha"));
        assert_eq!(c.ssh.user, "postgres");
        assert_eq!(c.ssh.port, 22);
        assert_eq!(c.ssh.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.ssh.command_timeout, Duration::from_secs(30));
        assert_eq!(c.ssh.control_dir, None);
        assert_eq!(c.postgres.bin_dir, Path::new("/usr/lib/postgresql/15/bin"));
        assert_eq!(c.postgres.replication_user, "repl");
        assert_eq!(c.postgres.query_timeout, Duration::from_secs(10));
        assert_eq!(c.postgres.log_file, "pgha-postgresql.log");
        assert_eq!(c.pcp.user, "pgpool");
        assert_eq!(c.pcp.port, None);
        assert_eq!(c.pcp.busy_retry_for, Duration::from_secs(60));
        assert_eq!(c.failover.deadline, Duration::from_secs(60));
        assert_eq!(c.failover.candidate, CandidatePolicy::Pgpool);
        assert_eq!(c.failover.fence, FencePolicy::Stop);
        assert!(!c.failover.replication_slots);
        assert!(!c.follow.rebuild);
        assert_eq!(c.follow.max_lag, 16 << 20);
        assert!(c.nodes.is_empty());
        assert_eq!(c.source.as_deref(), Some(Path::new("/etc/pgha/pgha.toml")));
        // The serde defaults and Default agree.
        let d = Config::default();
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::to_value(&d).unwrap()
        );
    }

    #[test]
    fn every_section() {
        let c = parse(
            r#"
pgpool_conf = "/srv/pgpool/pgpool.conf"
state_dir = "/srv/pgha"

[ssh]
user = "pgha"
port = 2222
identity_file = "/etc/pgha/id_ed25519"
known_hosts_file = "/etc/pgha/known_hosts"
connect_timeout = "500ms"
command_timeout = "2m"
control_dir = "/run/pgha"

[postgres]
bin_dir = "/usr/lib/postgresql/17/bin"
user = "admin"
database = "ops"
replication_user = "streamer"
passfile = "/etc/pgha/pgpass"
connect_timeout = "1s"
query_timeout = "4s"
archive_dir = "/var/lib/postgresql/archive"
log_file = "pg.log"

[pcp]
host = "127.0.0.20"
port = 9898
user = "pcpadmin"
pass_file = "/etc/pgha/pcppass"
timeout = "2s"
busy_retry_for = "1h"

[failover]
deadline = "45s"
promote_timeout = "20s"
follow_timeout = "15s"
candidate = "most_advanced"
fence = "abort"
replication_slots = true

[follow]
rebuild = true
rejoin_old_primary = true
max_lag = "1GB"

[nodes.0]
ssh_host = "127.0.0.102"

[nodes.2]
replication_host = "127.0.1.4"
data_directory = "/srv/pg/data"
"#,
        )
        .unwrap();
        assert_eq!(c.pgpool_conf, Path::new("/srv/pgpool/pgpool.conf"));
        assert_eq!(c.ssh.user, "pgha");
        assert_eq!(c.ssh.port, 2222);
        assert_eq!(c.ssh.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.ssh.command_timeout, Duration::from_secs(120));
        assert_eq!(
            c.ssh.identity_file.as_deref(),
            Some(Path::new("/etc/pgha/id_ed25519"))
        );
        assert_eq!(c.postgres.user, "admin");
        assert_eq!(c.postgres.replication_user, "streamer");
        assert_eq!(
            c.postgres.archive_dir.as_deref(),
            Some(Path::new("/var/lib/postgresql/archive"))
        );
        assert_eq!(c.postgres.log_file, "pg.log");
        assert_eq!(c.pcp.host.as_deref(), Some("127.0.0.20"));
        assert_eq!(c.pcp.port, Some(9898));
        assert_eq!(c.pcp.busy_retry_for, Duration::from_secs(3600));
        assert_eq!(c.failover.candidate, CandidatePolicy::MostAdvanced);
        assert_eq!(c.failover.fence, FencePolicy::Abort);
        assert!(c.failover.replication_slots);
        assert!(c.follow.rebuild && c.follow.rejoin_old_primary);
        assert_eq!(c.follow.max_lag, 1 << 30);
        assert_eq!(c.nodes.keys().copied().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(c.nodes[&0].ssh_host.as_deref(), Some("127.0.0.102"));
        assert_eq!(c.nodes[&2].replication_host.as_deref(), Some("127.0.1.4"));
        assert_eq!(
            c.nodes[&2].data_directory.as_deref(),
            Some(Path::new("/srv/pg/data"))
        );

        // What --dry-run shows parses back to the same configuration.
        let shown = toml::to_string(&c).unwrap();
        let again = parse(&shown).unwrap();
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::to_value(&again).unwrap()
        );
        assert!(shown.contains("connect_timeout = \"500ms\""), "{shown}");
    }

    #[test]
    fn max_lag_as_integer_or_unit() {
        assert_eq!(
            parse("[follow]\nmax_lag = 4096").unwrap().follow.max_lag,
            4096
        );
        assert_eq!(
            parse("[follow]\nmax_lag = \"8kB\"").unwrap().follow.max_lag,
            8192
        );
        let (line, _, key, msg, _) = parse_err("[follow]\nmax_lag = \"16 parsecs\"");
        assert_eq!(line, 2);
        assert_eq!(key.as_deref(), Some("follow.max_lag"));
        assert!(msg.contains("unknown unit"), "{msg}");
        assert!(parse("[follow]\nmax_lag = -1").is_err());
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let (line, column, key, msg, shown) =
            parse_err("[ssh]\nuser = \"postgres\"\nconect_timeout = \"3s\"\n");
        assert_eq!((line, column), (3, 1));
        assert_eq!(key.as_deref(), Some("ssh.conect_timeout"));
        assert!(msg.contains("unknown field `conect_timeout`"), "{msg}");
        assert!(
            shown.starts_with("/etc/pgha/pgha.toml:3:1: key `ssh.conect_timeout`: unknown field"),
            "{shown}"
        );

        let (line, _, key, msg, _) = parse_err("pgpool_conf = \"/x\"\n\n[sshh]\nuser = \"x\"\n");
        assert_eq!(line, 3);
        assert_eq!(key.as_deref(), Some("sshh"));
        assert!(msg.contains("unknown field `sshh`"), "{msg}");

        let (line, _, key, _, _) = parse_err("[nodes.1]\nssh_hots = \"127.0.0.2\"\n");
        assert_eq!(line, 2);
        assert_eq!(key.as_deref(), Some("nodes.1.ssh_hots"));
    }

    #[test]
    fn bad_durations() {
        let (line, column, key, msg, _) = parse_err("[failover]\n\ndeadline = \"60\"\n");
        assert_eq!((line, column), (3, 12));
        assert_eq!(key.as_deref(), Some("failover.deadline"));
        assert!(msg.contains("missing unit"), "{msg}");

        let (_, _, key, msg, _) = parse_err("[pcp]\ntimeout = 5\n");
        assert_eq!(key.as_deref(), Some("pcp.timeout"));
        assert!(msg.contains("bare number"), "{msg}");

        let (_, _, _, msg, _) = parse_err("[ssh]\nconnect_timeout = \"3 days\"\n");
        assert!(msg.contains("unknown unit \"days\""), "{msg}");

        // Bounds: nothing zero, nothing over a day, liveness at least 100ms.
        let (line, _, key, msg, _) = parse_err("[failover]\nliveness_timeout = \"0s\"\n");
        assert_eq!(
            (line, key.as_deref()),
            (2, Some("failover.liveness_timeout"))
        );
        assert!(msg.contains("more than 0"), "{msg}");
        let (_, _, key, msg, _) = parse_err("[failover]\nliveness_timeout = \"50ms\"\n");
        assert_eq!(key.as_deref(), Some("failover.liveness_timeout"));
        assert!(msg.contains("at least 100ms"), "{msg}");
        let (_, _, key, msg, _) = parse_err("[ssh]\ncommand_timeout = \"25h\"\n");
        assert_eq!(key.as_deref(), Some("ssh.command_timeout"));
        assert!(msg.contains("more than 24h"), "{msg}");
        let c = parse("[failover]\nliveness_timeout = \"100ms\"\ndeadline = \"24h\"\nmaximum_lag = \"1MB\"\nsync_unproven = \"promote\"\nsync_after_promote = \"keep\"\n").unwrap();
        assert_eq!(c.failover.liveness_timeout, Duration::from_millis(100));
        assert_eq!(c.failover.maximum_lag, 1 << 20);
        assert_eq!(c.failover.sync_unproven, SyncUnprovenPolicy::Promote);
        assert_eq!(c.failover.sync_after_promote, SyncAfterPolicy::Keep);
        assert!(parse("[failover]\nsync_unproven = \"maybe\"\n").is_err());
    }

    #[test]
    fn bad_node_key() {
        let (line, _, key, msg, _) = parse_err("[nodes.1]\nssh_host = \"a\"\n\n[nodes.primary]\n");
        assert_eq!(line, 4);
        assert_eq!(key.as_deref(), Some("nodes.primary"));
        assert!(msg.contains("invalid node key \"primary\""), "{msg}");
        assert!(parse("[nodes.-1]\n").is_err());
    }

    #[test]
    fn hostile_hosts_are_refused_with_file_line_and_key() {
        let (line, _, key, msg, shown) =
            parse_err("[nodes.1]\nssh_host = \"-oProxyCommand=touch /tmp/owned\"\n");
        assert_eq!((line, key.as_deref()), (2, Some("nodes.1.ssh_host")));
        assert!(msg.contains("may not start with '-'"), "{msg}");
        assert!(shown.starts_with("/etc/pgha/pgha.toml:2:"), "{shown}");

        let (_, _, key, msg, _) = parse_err("[nodes.0]\nreplication_host = \"db1 -v\"\n");
        assert_eq!(key.as_deref(), Some("nodes.0.replication_host"));
        assert!(msg.contains("whitespace"), "{msg}");
        let (_, _, key, _, _) = parse_err("[pcp]\nhost = \"-x\"\n");
        assert_eq!(key.as_deref(), Some("pcp.host"));
        let (_, _, key, msg, _) = parse_err("[nodes.0]\nssh_host = \"\"\n");
        assert_eq!(key.as_deref(), Some("nodes.0.ssh_host"));
        assert!(msg.contains("empty host"), "{msg}");
        assert!(parse("[nodes.0]\nssh_host = \"db-0.example\"\n").is_ok());
    }

    #[test]
    fn control_characters_are_refused_in_strings_that_reach_the_nodes() {
        for (text, want) in [
            (
                "[postgres]\nreplication_user = \"repl\\nrestore_command = 'x'\"\n",
                "postgres.replication_user",
            ),
            ("[postgres]\nlog_file = \"a\\rb\"\n", "postgres.log_file"),
            (
                "[postgres]\narchive_dir = \"/a\\n/b\"\n",
                "postgres.archive_dir",
            ),
            ("[postgres]\nbin_dir = \"/usr\\tbin\"\n", "postgres.bin_dir"),
            (
                "[nodes.2]\ndata_directory = \"/d\\u001b\"\n",
                "nodes.2.data_directory",
            ),
            ("[ssh]\nuser = \"postgres\\n\"\n", "ssh.user"),
            ("state_dir = \"/var/\\nlib\"\n", "state_dir"),
        ] {
            let (line, _, key, msg, _) = parse_err(text);
            assert_eq!(key.as_deref(), Some(want), "{text}");
            assert_eq!(line, if want.contains('.') { 2 } else { 1 }, "{text}");
            assert!(msg.contains("control character"), "{text}: {msg}");
        }
    }

    #[test]
    fn syntax_error_has_a_position() {
        let (line, _, _, _, _) = parse_err("[ssh]\nport = \n");
        assert_eq!(line, 2);
        let (line, _, key, msg, _) = parse_err("[ssh]\nport = \"22\"\n");
        assert_eq!(line, 2);
        assert_eq!(key.as_deref(), Some("ssh.port"));
        assert!(msg.contains("invalid type"), "{msg}");
    }

    #[test]
    fn parse_and_format_durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration(" 2 m "), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1.5s").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("3S").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(
            parse_duration("18446744073709551615h")
                .unwrap_err()
                .contains("too large")
        );

        for s in ["0s", "250ms", "1500ms", "3s", "90s", "2m", "1h", "25h"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
        assert_eq!(format_duration(Duration::from_micros(1_000_400)), "1.0004s");
    }

    #[test]
    fn parse_sizes() {
        assert_eq!(parse_bytes("16MB"), Ok(16 << 20));
        assert_eq!(parse_bytes("8kB"), Ok(8192));
        assert_eq!(parse_bytes("1GB"), Ok(1 << 30));
        assert_eq!(parse_bytes("100"), Ok(100));
        assert!(parse_bytes("16mb").is_err());
        assert!(parse_bytes("MB").is_err());
        assert!(
            parse_bytes("17179869184TB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");

        // Named explicitly: an error naming the file.
        let e = Config::load_path(&missing, Some("--config")).unwrap_err();
        assert!(matches!(e, ConfigError::NotFound { .. }), "{e:?}");
        assert!(e.to_string().contains("nope.toml"), "{e}");
        assert!(e.to_string().contains("--config"), "{e}");

        // The default path missing: all defaults, no source.
        let c = Config::load_path(&missing, None).unwrap();
        assert!(c.source.is_none());
        assert_eq!(c.ssh.port, 22);

        // An explicit file that exists is read.
        let f = dir.path().join("pgha.toml");
        std::fs::write(&f, "[ssh]\nport = 2022\n").unwrap();
        let c = Config::load(Some(&f)).unwrap();
        assert_eq!(c.ssh.port, 2022);
        assert_eq!(c.source.as_deref(), Some(f.as_path()));

        // A directory is not a config file.
        let e = Config::load_path(dir.path(), None).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");

        // Neither is /dev/zero, and reading it ends.
        let e = Config::load_path(Path::new("/dev/zero"), Some(CONFIG_ENV)).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn an_empty_pgha_config_means_the_default_path() {
        let default = (Config::default_path(), None);
        assert_eq!(Config::choose_path(None, None), default);
        assert_eq!(Config::choose_path(None, Some("".into())), default);
        assert_eq!(
            Config::choose_path(None, Some("/srv/pgha.toml".into())),
            (PathBuf::from("/srv/pgha.toml"), Some(CONFIG_ENV))
        );
        assert_eq!(
            Config::choose_path(Some(Path::new("/a.toml")), Some("/b.toml".into())),
            (PathBuf::from("/a.toml"), Some("--config"))
        );
    }

    #[test]
    fn tls_settings_parse_and_need_each_other() {
        let c =
            parse("[postgres]\nsslmode = \"verify-full\"\nsslrootcert = \"/etc/pgha/root.crt\"\n")
                .unwrap();
        assert_eq!(c.postgres.sslmode, SslMode::VerifyFull);
        assert_eq!(
            c.postgres.sslrootcert.as_deref(),
            Some(Path::new("/etc/pgha/root.crt"))
        );
        assert!(!c.postgres.allow_cleartext_password);
        assert_eq!(parse("").unwrap().postgres.sslmode, SslMode::Prefer);
        let e = parse("[postgres]\nuser = \"postgres\"\nsslmode = \"verify-ca\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(":3:1: key `postgres.sslmode`") && e.contains("set sslrootcert"),
            "{e}"
        );
        let e = parse("[postgres]\nsslcert = \"/c.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key `postgres.sslcert`") && e.contains("needs sslkey"),
            "{e}"
        );
        let e = parse("[postgres]\nsslmode = \"verify\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("verify-full"), "{e}");
    }
}
