//! Exit codes shared by every pgha binary.
//!
//! pgpool-II ignores the exit status of its commands, so each binary also
//! states the outcome on its last line of stderr; these codes are for the
//! operator's shell, systemd and monitoring.

/// Everything that was asked is done (or was already done).
pub const OK: i32 = 0;
/// A step failed: the last line on stderr names the host, the step and why.
pub const FAILED: i32 = 1;
/// The command line is wrong (clap's own code for usage errors).
pub const USAGE: i32 = 2;
/// The configuration (pgha.toml or pgpool.conf) is unreadable or invalid.
pub const CONFIG: i32 = 3;
/// The cluster is not in a state where the command may act; nothing changed.
pub const REFUSED: i32 = 4;

/// The table printed at the end of every `--help`.
pub const HELP: &str = "\
Exit status:
  0  done, or nothing was left to do
  1  a step failed (the last line on stderr says which, where and why)
  2  usage error (wrong arguments)
  3  configuration error (pgha.toml or pgpool.conf)
  4  refused: the cluster is not in a state where acting is safe; nothing changed";
