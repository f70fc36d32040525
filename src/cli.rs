//! Command-line definitions of the five binaries, kept in the library so that
//! man pages and shell completions are generated from the same source.

use std::path::PathBuf;

use clap::{Args, Parser};

use crate::exit;

/// Options every pgha binary takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// pgha.toml to read [env: PGHA_CONFIG; default: /etc/pgha/pgha.toml; a missing default file means all defaults]
    // PGHA_CONFIG is read by `Config::load`, not by clap: clap refuses an
    // empty value, which must mean the default path.
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Print the final summary as one JSON object on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    /// Observe the cluster, print the plan, change nothing.
    #[arg(long, short = 'n', global = true)]
    pub dry_run: bool,

    /// Also log debug detail (every remote command, every query).
    #[arg(long, short = 'v', global = true)]
    pub verbose: bool,
}

/// A node id as pgpool substitutes it: it may come with a leading space
/// (4.4 and later), and a negative id means "unknown" (`%m` is -1 when no
/// node is alive, `%P` -2 while the primary is not yet known).
pub fn node_id(s: &str) -> Result<i64, String> {
    let t = s.trim();
    t.parse()
        .map_err(|_| format!("'{s}' is not a node id (a pgpool backend number such as 0, 1, 2)"))
}

/// `pgha-failover`: pgpool-II's `failover_command`.
#[derive(Debug, Parser)]
#[command(
    name = "pgha-failover",
    version,
    about = "Promote a standby when pgpool-II reports the primary failed; record a failed standby.",
    long_about = "\
pgha-failover is what pgpool-II runs as failover_command. It is a drop-in for
the classic `failover.sh %d %M %m`:

    failover_command = '/usr/bin/pgha-failover %d %M %m --old-primary %P'

When a standby failed it records it (and drops its replication slot when
failover.replication_slots is on) and exits. When the primary failed it:
observes every node, guards against split brain (stops the old primary over
ssh if it still runs, or refuses to promote), promotes the chosen standby and
waits until it accepts writes, copies the new timeline's history file to the
other standbys, repoints them (reload on 13+), then returns to pgpool; waiting
until the standbys stream on the new timeline and attaching them in pgpool go
on in a detached, bounded phase. Every step first checks whether it is done
already: running it twice, or twice at once, promotes once.

Progress goes to stderr (pgpool copies it into its log), each action to the
journal in state_dir, the outcome to the last line.",
    after_help = exit::HELP
)]
pub struct FailoverArgs {
    /// %d: the id of the node pgpool detached.
    #[arg(value_name = "FAILED_NODE", value_parser = node_id, allow_negative_numbers = true)]
    pub failed_node: i64,

    /// %M: pgpool's old main node id; accepted for compatibility and never
    /// used: it is the lowest live id, not the primary (always 0 in current
    /// pgpool releases).
    #[arg(value_name = "OLD_MAIN", value_parser = node_id, allow_negative_numbers = true)]
    pub old_main: i64,

    /// %m: the new main node id, -1 when no node is alive. pgpool's lowest
    /// live id, not a judgement of WAL: a tie-breaker among standbys with as
    /// much WAL as the most advanced.
    #[arg(value_name = "NEW_MAIN", value_parser = node_id, allow_negative_numbers = true)]
    pub new_main: i64,

    /// %P: the old primary node id (negative: unknown). Without it pgha tells
    /// a failed primary from a failed standby only by what the surviving
    /// nodes say, and refuses when they do not tell; pgha-check fails a
    /// failover_command without %P.
    #[arg(long, value_name = "ID", value_parser = node_id, allow_negative_numbers = true)]
    pub old_primary: Option<i64>,

    /// %H: the new main node's host (informational; may be "").
    #[arg(long, value_name = "HOST")]
    pub new_main_host: Option<String>,

    #[command(flatten)]
    pub common: Common,

    /// Internal: the detached phase (wait for standbys, attach them).
    #[arg(long, hide = true)]
    pub settle: bool,

    /// Internal: the primary the detached phase works from (the node the
    /// run promoted or found promoted).
    #[arg(long, hide = true, value_name = "ID")]
    pub settle_primary: Option<u32>,

    /// Internal: after a switchover, the old primary the detached phase
    /// starts again as a standby (`pgha-attach --rejoin ID`).
    #[arg(long, hide = true, value_name = "ID")]
    pub settle_rejoin: Option<u32>,

    /// Internal: the standbys the detached phase repoints first (those no
    /// commit waits for, left by the main phase so that pgpool waits less).
    #[arg(long, hide = true, value_name = "ID,...", value_delimiter = ',')]
    pub settle_repoint: Vec<u32>,
}

/// `pgha-follow`: pgpool-II's `follow_primary_command`, or by hand.
#[derive(Debug, Parser)]
#[command(
    name = "pgha-follow",
    version,
    about = "Make one standby follow the current primary, then attach it in pgpool-II.",
    long_about = "\
pgha-follow makes node NODE stream from the current primary: repoint (reload
on 13+), else pg_rewind, else pg_basebackup where follow.rebuild allows it;
then it verifies the node streams on the primary's timeline and attaches it.
pgpool runs it for every node it marked down after a failover:

    follow_primary_command = '/usr/bin/pgha-follow %d --new-primary %m --old-primary %P'

A node that is not running is skipped; the old primary rejoins only when
follow.rejoin_old_primary is on.",
    after_help = exit::HELP
)]
pub struct FollowArgs {
    /// %d: the node to make follow.
    #[arg(value_name = "NODE", value_parser = node_id)]
    pub node: i64,

    /// %m: the new main (primary) node id; found by looking when absent.
    #[arg(long, value_name = "ID", value_parser = node_id, allow_negative_numbers = true)]
    pub new_primary: Option<i64>,

    /// %P: the old primary node id.
    #[arg(long, value_name = "ID", value_parser = node_id, allow_negative_numbers = true)]
    pub old_primary: Option<i64>,

    /// Allow rewinding a standby that has WAL the primary lacks (it went
    /// past the new timeline's switch point): that WAL exists nowhere
    /// else and is discarded. Without it such a standby is refused.
    #[arg(long)]
    pub discard_wal: bool,

    #[command(flatten)]
    pub common: Common,
}

/// `pgha-attach`: attach a node in pgpool-II after proving it healthy.
#[derive(Debug, Parser)]
#[command(
    name = "pgha-attach",
    version,
    about = "Attach a node in pgpool-II only if it is a healthy standby of the current primary.",
    long_about = "\
pgha-attach NODE verifies that NODE is in recovery, on the current primary's
timeline, streaming, with lag under follow.max_lag, and only then runs the PCP
attach. Otherwise it refuses and says why and what to run.

--rejoin turns a failed old primary into a standby of the current primary
(stop it, pg_rewind it, configure it, start it, verify) and then attaches it.",
    after_help = exit::HELP
)]
pub struct AttachArgs {
    /// The pgpool backend id of the node.
    #[arg(value_name = "NODE", value_parser = node_id)]
    pub node: i64,

    /// Rewind and restart a diverged old primary as a standby first.
    #[arg(long)]
    pub rejoin: bool,

    /// With --rejoin: also rewind a standby that has WAL the primary lacks,
    /// discarding that WAL (it exists on no other node).
    #[arg(long, requires = "rejoin")]
    pub discard_wal: bool,

    #[command(flatten)]
    pub common: Common,
}

/// `pgha-switchover`: a planned switchover through pgpool-II.
#[derive(Debug, Parser)]
#[command(
    name = "pgha-switchover",
    version,
    about = "Move the primary to a standby on purpose, losing no acknowledged write; the old primary comes back as a standby.",
    long_about = "\
pgha-switchover moves the primary role to another node for planned work
(kernel or PostgreSQL minor upgrades, hardware), through pgpool-II so that
pgpool's view stays right throughout. Run it on the pgpool host, as the user
pgpool runs pgha-failover as (it reads the same pgha.toml, .pcppass, .pgpass).

Preflight first, nothing changed when it fails (exit 4):
  - exactly one primary, every backend answers and pgpool has every backend
    attached (a missing standby is refused);
  - the target (--to, or the standby with the least lag) streams from the
    primary on its timeline, with lag under --max-lag;
  - no failover is running (the failover and settle locks in state_dir).

Then it asks pgpool for a switchover (pcp_promote_node -s -n TARGET, the same
as running that by hand): pgpool detaches the primary and runs
failover_command, where pgha-failover stops the old primary cleanly
(pg_ctl stop -m fast), proves the target replayed its shutdown checkpoint,
promotes it and repoints the other standbys; its detached phase starts the
old primary again as a standby of the new one (no pg_rewind after a clean
stop) and attaches every node. pgha-switchover waits until the target is the
primary in pgpool and every node streams from it on the new timeline and is
attached, printing each stage; --timeout bounds the whole wait.

If pgha-failover cannot prove the target holds all WAL, it promotes nothing
and starts the old primary again; pgha-switchover then attaches it back in
pgpool and exits 4.

--dry-run runs the preflight and prints the plan.",
    after_help = exit::HELP
)]
pub struct SwitchoverArgs {
    /// The node to make the primary; default: the standby with the least
    /// lag (lowest id among equals).
    #[arg(long, value_name = "NODE", value_parser = node_id)]
    pub to: Option<i64>,

    /// The most the target may lag behind the primary, in bytes of WAL
    /// (primary's current LSN minus the target's received LSN), before
    /// anything is changed. The write outage grows with the WAL the target
    /// must receive after the stop.
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024)]
    pub max_lag: u64,

    /// Give up waiting after this many seconds (the switchover itself runs
    /// in pgpool's failover_command and is bounded by failover.deadline).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,

    #[command(flatten)]
    pub common: Common,
}

/// `pgha-check`: the preflight sidecar.
#[derive(Debug, Parser)]
#[command(
    name = "pgha-check",
    version,
    about = "Prove before pgpool-II starts that failover could work: ssh mesh, binaries, directories, logins.",
    long_about = "\
pgha-check proves, before pgpool-II starts, that a failover could work, and
says what to fix where it could not:

  - the ssh mesh failover needs: this host to every node and node to node,
    key-only with known host keys, each edge tried from its real source;
  - on every node: PostgreSQL binaries of the server's major version, the
    data directory, the archive directory (exists, writable, free space);
  - settings failover relies on: wal_level, hot_standby, max_wal_senders,
    wal_log_hints or data checksums (pg_rewind), archive and restore
    commands that could exit above 125 when a peer is down;
  - logins: pgha's superuser, the replication user, pgpool's health and sr
    check users, PCP and .pcppass;
  - pgpool.conf: failover_command / follow_primary_command run pgha, each
    backend_application_nameN matches its standby, watchdog quorum.

One line per check (ok / FAIL with the fix), a summary; exit 0 only when
failover can work. systemd runs it as pgha-check.service before pgpool2.
--watch keeps checking and serves /health and Prometheus /metrics.",
    after_help = exit::HELP
)]
pub struct CheckArgs {
    /// Keep checking at --interval and serve /health and /metrics.
    #[arg(long, conflicts_with = "status")]
    pub watch: bool,

    /// Show the cluster at a glance instead of checking: a row per backend
    /// (pgpool's and PostgreSQL's view, LSNs, lag, upstream, ssh) with what
    /// is wrong and the command that fixes it, then the last runs from the
    /// journal. Read-only. Exit 1 when a node needs attention. With --json,
    /// one JSON object.
    #[arg(long)]
    pub status: bool,

    /// With --status: redraw every DURATION (e.g. 2s) until Ctrl-C, in
    /// place on a terminal.
    #[arg(long, value_name = "DURATION", requires = "status")]
    pub every: Option<String>,

    /// Run on node NODE's own host just before its PostgreSQL starts
    /// (systemd ExecStartPre; see /usr/share/pgha/postgresql-start-guard.conf):
    /// exit 0 when it may start, 4 when it would come up as a second
    /// primary, because another node answers on a newer timeline or as a
    /// primary on the same one. A node that starts as a standby always may;
    /// one no other node answers for may start as the primary it was. Needs
    /// pgha.toml and pgpool.conf on that host. Read-only, bounded by
    /// [postgres] connect_timeout + query_timeout.
    #[arg(long, value_name = "NODE", conflicts_with_all = ["watch", "status"])]
    pub start_guard: Option<u32>,

    /// Run on node NODE's own host for as long as its PostgreSQL may run
    /// (pgha-fence.service): every --interval, when that server is a
    /// primary and another node answers on a newer timeline (the cluster
    /// failed over while this host was cut off or frozen), stop it
    /// (pg_ctl stop -m immediate) so that no client writes to it, and name
    /// the rejoin; also when it runs as a primary and has reached no other
    /// node and no pgpool for so long that a standby could be promoted soon
    /// (pgpool's soonest health-check detection plus
    /// failover.liveness_timeout, less two rounds). It never stops a
    /// standby. Needs what --start-guard needs. Runs until SIGTERM.
    #[arg(long, value_name = "NODE", conflicts_with_all = ["watch", "status", "start_guard"])]
    pub fence: Option<u32>,

    /// Time between rounds: --watch (default 30s), --fence (default 250ms).
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<String>,

    /// Where --watch serves /health and /metrics (loopback addresses only).
    #[arg(long, default_value = "127.0.0.1:9187", value_name = "ADDR:PORT")]
    pub listen: String,

    #[command(flatten)]
    pub common: Common,
}

/// Log progress to stderr: pgpool copies a command's stderr into its own log,
/// so every line carries the binary's name and the time since it started.
pub fn init_logging(binary: &str, verbose: bool) {
    use tracing_subscriber::fmt;
    std::sync::LazyLock::force(&crate::START);
    let level = if verbose {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    let prefix = binary.to_string();
    let _ = fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false)
        .event_format(Prefixed(prefix))
        .try_init();
}

struct Prefixed(String);

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Prefixed
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = *event.metadata().level();
        let tag = match level {
            tracing::Level::ERROR => "ERROR: ",
            tracing::Level::WARN => "WARNING: ",
            tracing::Level::DEBUG | tracing::Level::TRACE => "debug: ",
            tracing::Level::INFO => "",
        };
        write!(
            writer,
            "{}[{}] {:>7.3}s {}",
            self.0,
            std::process::id(),
            crate::START.elapsed().as_secs_f64(),
            tag
        )?;
        // Every line is masked: a conninfo with `password=` may reach any
        // message (pgpool copies stderr into its log).
        let mut fields = String::new();
        ctx.field_format().format_fields(
            tracing_subscriber::fmt::format::Writer::new(&mut fields),
            event,
        )?;
        writeln!(writer, "{}", crate::text::mask_secrets(&fields))
    }
}

/// The async runtime every binary uses: two worker threads are plenty for
/// a few nodes, and they keep one slow host from stalling the others.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_as_pgpool_sends_them() {
        assert_eq!(node_id(" 1"), Ok(1));
        assert_eq!(node_id("-1"), Ok(-1));
        assert_eq!(node_id("0"), Ok(0));
        assert!(node_id("").is_err());
        assert!(node_id("%d").unwrap_err().contains("not a node id"));
        assert_eq!(node_id("-2"), Ok(-2), "unknown, not a usage error");
    }

    #[test]
    fn failover_takes_the_classic_three_arguments() {
        let a = FailoverArgs::try_parse_from(["pgha-failover", "0", " 0", "1"]).unwrap();
        assert_eq!((a.failed_node, a.old_main, a.new_main), (0, 0, 1));
        let a = FailoverArgs::try_parse_from(["pgha-failover", "1", "0", "-1"]).unwrap();
        assert_eq!(a.new_main, -1);
        assert!(FailoverArgs::try_parse_from(["pgha-failover", "0", "1"]).is_err());
        assert!(FailoverArgs::try_parse_from(["pgha-failover", "0", "1", "2", "3"]).is_err());
    }

    #[test]
    fn pgha_config_is_not_read_by_clap() {
        // clap would refuse an empty PGHA_CONFIG with a usage error (exit 2).
        use clap::CommandFactory;
        let cmd = FollowArgs::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == "config")
            .unwrap();
        assert!(arg.get_env().is_none());
    }

    #[test]
    fn clap_definitions_are_consistent() {
        use clap::CommandFactory;
        FailoverArgs::command().debug_assert();
        FollowArgs::command().debug_assert();
        AttachArgs::command().debug_assert();
        CheckArgs::command().debug_assert();
    }
}
