//! pgha's one integration test binary (`cargo test --test e2e`).
//!
//! # Layout
//! - `util::cmd`: run a pgha binary and assert on status and output.
//! - `util::lab`: start and drive a lab (`lab/lab.sh`) of namespaced hosts
//!   running real PostgreSQL, pgpool-II and sshd.
//! - `foundation`: the lab itself behaves like separate machines.
//! - `archive`: standbys restoring over scp follow the new primary's archive.
//! - `check`: pgha-check on a healthy lab, on each fault, and `--watch`.
//! - `deb`: the installed .deb (`lab/test` builds and installs it first).
//! - `safety`: the safety rules against the faults that break them, with a
//!   split-brain watcher and a writer whose acknowledged commits must survive.
//! - `hardening`: issue 16: TLS-only nodes with verify-full, planted FIFOs
//!   and links, a read-only state directory, passwords kept out of logs.
//! - `status`: issue 14: `pgha-check --status` (table and JSON) on a
//!   healthy lab, a detached, a lagging and a failed-over one; `/metrics`
//!   after a failover.
//! - `switchover`: issue 12: planned switchover by `pcp_promote_node -s`
//!   and by pgha-switchover, back again, and its refusals, with a writer
//!   and the split-brain watcher.
//! - `watchdog`: issue 13: three pgpool hosts under pgpool-II's watchdog
//!   (`--pgpools 3`): one leader with quorum, a killed primary failed over
//!   once by the leader, a killed leader replaced.
//! - `util::watch`: the split-brain watcher and the writer.
//!
//! The end-to-end tests need root and the packages `lab/setup.sh` installs;
//! `lab/test` runs everything.

// Polling closures return pgpool's whole node record as the last observation.
#![allow(clippy::result_large_err)]

mod util;

mod archive;
mod attach;
mod check;
mod cli;
mod deb;
mod failover;
mod follow;
mod foundation;
mod hardening;
mod pcp;
mod safety;
mod status;
mod switchover;
mod watchdog;
