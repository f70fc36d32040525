//! pgha: safe, bounded PostgreSQL failover under pgpool-II.
//!
//! # Layout
//!
//! - [`config`]: `pgha.toml`, the few settings pgpool does not know (ssh,
//!   PostgreSQL binaries and users, PCP, deadlines, policies).
//! - [`pgpool`]: pgpool-II itself: its `pgpool.conf` (the backends, the one
//!   source of topology), the native PCP client, the node operations with
//!   their one retry policy ([`pgpool::ops`]) and `.pcppass`.
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
//!   failover rules, in [`plan::standby`] what to do with a node that
//!   should follow the primary, and in [`plan::sync`] what
//!   `synchronous_standby_names` promises about acknowledged commits.
//! - [`exec`]: the execution context every command's steps run in, and
//!   its `step()`: the progress line, the journal entry and the timing of
//!   each step, written in one place.
//! - [`steps`]: fence, promote, history file, repoint, wait, attach: each
//!   written once, each checking first whether it is done.
//! - [`reinit`]: when repointing is not enough, making a node a standby
//!   again over ssh: stop/start, `pg_rewind`, `pg_basebackup`, keeping the
//!   node's own configuration.
//! - [`lineage`]: timeline history files and whether a node's WAL is a
//!   prefix of the primary's (pure).
//! - [`pgconf`]: `postgresql.conf` / `postgresql.auto.conf` text: read a
//!   setting, rewrite one, the settings of a standby (pure).
//! - [`files`]: local files opened safely (regular files only, never
//!   blocking, bounded) and the test for a private directory.
//! - [`restore`]: `restore_command` text pointed at the primary a standby
//!   follows (pure).
//! - [`state`]: the lock and the journal in the state directory (JSON
//!   lines with structured fields, rotated past 10 MiB, read back as runs).
//! - [`text`]: pure rules for values that leave the process: hosts that
//!   cannot become ssh options, no control characters, secrets masked.
//! - [`standby`]: the engine of `pgha-follow` and `pgha-attach`: observe a
//!   node and the primary, decide, repoint or rewind or rebuild it, wait
//!   until it streams, attach it.
//! - One module per command: [`failover`] (with its liveness probes and
//!   the detached settle phase), [`follow`], [`attach`], [`check`] (with
//!   `--status`, the cluster at a glance), [`switchover`] (a planned
//!   switchover through pgpool's `pcp_promote_node -s`, whose work is
//!   pgha-failover's switchover arm);
//!   [`cli`] holds their arguments, [`report`] their final line, [`exit`]
//!   their exit codes, [`error`] the error they return.
//!
//! The binaries in `src/bin/` only parse arguments and call into here.
//! Private by default: the binaries and `tests/` use the command modules,
//! [`cli`], [`report`], [`config`] and the PCP client; the rest is
//! `pub(crate)` or private.

use std::sync::LazyLock;
use std::time::Instant;

pub mod attach;
pub mod check;
mod claim;
pub mod cli;
mod cluster;
pub mod config;
mod error;
mod exec;
mod exit;
pub mod failover;
mod files;
pub mod follow;
mod lineage;
mod pgconf;
pub mod pgpool;
mod pgwire;
mod plan;
mod postgres;
mod reinit;
mod remote;
pub mod report;
mod restore;
mod standby;
mod state;
mod steps;
pub mod switchover;
mod text;

/// When this process started: progress lines show the time since.
pub static START: LazyLock<Instant> = LazyLock::new(Instant::now);
