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
//! - [`exit`]: the exit codes every binary shares.
//!
//! The binaries in `src/bin/` only parse arguments and call into here.

pub mod config;
pub mod exit;
pub mod pgpool;
pub mod postgres;
pub mod remote;
