//! The error every command returns, and the exit code each kind maps to.

use crate::exit;

/// Why a command stopped. Module errors carry their own context (host, node,
/// file and line, time spent); this enum only adds which exit code it means.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `pgha.toml` could not be used.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// `pgpool.conf` could not be used.
    #[error(transparent)]
    PgpoolConf(#[from] crate::pgpool::conf::ConfError),
    /// The arguments name something that does not exist (e.g. a node id).
    #[error("{0}")]
    Usage(String),
    /// Acting would be unsafe in the observed state; nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// A step failed; the message names the step, the node and the cause.
    #[error("{0}")]
    Step(String),
    /// A wait for a standby ended early: the primary it waits for is gone
    /// (silent, or no longer the primary of that timeline).
    #[error("{0}")]
    PrimaryGone(String),
    /// A standby has WAL its primary never had: only a rewind that
    /// discards it (`--discard-wal`) makes it a standby again.
    #[error("{0}")]
    Diverged(String),
    /// The state directory (lock, journal) is unusable.
    #[error("state directory {path}: {message}")]
    State { path: String, message: String },
}

impl Error {
    /// The process exit code for this error (see [`crate::exit`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::PgpoolConf(_) => exit::CONFIG,
            Error::Usage(_) => exit::USAGE,
            Error::Refused(_) => exit::REFUSED,
            Error::Step(_) | Error::PrimaryGone(_) | Error::Diverged(_) | Error::State { .. } => {
                exit::FAILED
            }
        }
    }

    /// How a command that stopped with this error ended.
    pub fn outcome(&self) -> crate::report::Outcome {
        use crate::report::Outcome;
        match self {
            Error::Refused(_) => Outcome::Refused,
            Error::Usage(_) | Error::Config(_) | Error::PgpoolConf(_) => Outcome::Error,
            Error::Step(_) | Error::PrimaryGone(_) | Error::Diverged(_) | Error::State { .. } => {
                Outcome::Failed
            }
        }
    }

    /// A step error from anything displayable, with the step's name in front.
    pub fn step(step: &str, cause: impl std::fmt::Display) -> Error {
        Error::Step(format!("{step}: {cause}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
