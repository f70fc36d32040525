//! pgha: safe, bounded PostgreSQL failover under pgpool-II.
//!
//! # Layout
//!
//! - [`config`]: `pgha.toml`, the few settings pgpool does not know (ssh,
//!   PostgreSQL binaries and users, PCP, deadlines, policies).
//! - [`pgpool`]: pgpool-II itself: its `pgpool.conf` (the backends, the one
//!   source of topology), the native PCP client and `.pcppass`.
//! - [`remote`]: ssh sessions to the nodes, one multiplexed master per host,
//!   strict host keys, every command quoted and bounded on both ends.
//! - [`postgres`]: connections to the backends with timeouts and `.pgpass`,
//!   and what one server says about itself (role, timeline, LSNs, receiver).
//! - [`pgwire`]: the stream under every SQL session: TCP or unix socket,
//!   TLS per `[postgres] sslmode`, and the guard that refuses cleartext and
//!   md5 password requests unless the peer is verified.
//! - [`cluster`]: the topology (pgpool.conf joined with pgha.toml) and the
//!   observed state of every node.
//! - [`plan`]: decisions computed from observed state, free of I/O: the
//!   failover rules, and in [`plan::sync`] what `synchronous_standby_names`
//!   promises about acknowledged commits.
//! - [`exec`]: the execution context every command's steps run in, and
//!   its `step()`: the progress line, the journal entry and the timing of
//!   each step, written in one place.
//! - [`steps`]: fence, promote, history file, repoint, wait, attach: each
//!   written once, each checking first whether it is done.
//! - [`rejoin`]: when repointing is not enough: stop/start over ssh,
//!   `pg_rewind`, `pg_basebackup`, keeping the node's own configuration.
//! - [`files`]: local files opened safely (regular files only, never
//!   blocking, bounded) and the test for a private directory.
//! - [`restore`]: `restore_command` text pointed at the primary a standby
//!   follows (pure).
//! - [`state`]: the lock and the journal in the state directory (JSON
//!   lines with structured fields, rotated past 10 MiB, read back as runs).
//! - [`text`]: pure rules for values that leave the process: hosts that
//!   cannot become ssh options, no control characters, secrets masked.
//! - One module per command: [`failover`] (with its liveness probes and
//!   the detached settle phase), [`follow`], [`attach`], [`check`] (with
//!   `--status`, the cluster at a glance), [`switchover`] (a planned
//!   switchover through pgpool's `pcp_promote_node -s`, whose work is
//!   pgha-failover's switchover arm);
//!   [`cli`] holds their arguments, [`report`] their final line, [`exit`]
//!   their exit codes, [`error`] the error they return.
//!
//! The binaries in `src/bin/` only parse arguments and call into here.

use std::sync::LazyLock;
use std::time::Instant;

pub mod attach;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod error;
pub mod exec;
pub mod exit;
pub mod failover;
pub mod files;
pub mod follow;
pub mod pgpool;
pub mod pgwire;
pub mod plan;
pub mod postgres;
pub mod rejoin;
pub mod remote;
pub mod report;
pub mod restore;
pub mod state;
pub mod steps;
pub mod switchover;
pub mod text;

/// When this process started: progress lines show the time since.
pub static START: LazyLock<Instant> = LazyLock::new(Instant::now);
