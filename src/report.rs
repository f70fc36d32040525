//! What a command reports at the end: one line on stderr for pgpool's log
//! and the operator, or one JSON object on stdout with `--json`.

use serde::Serialize;

use crate::error::{Error, Result};

/// How a command ended: the `outcome` of `--json` and of the journal's
/// `run` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// pgha-check: every check passed.
    #[default]
    Ok,
    /// pgha-failover promoted a standby.
    Promoted,
    /// pgha-failover found the promotion done (an earlier run's).
    AlreadyPromoted,
    /// A planned switchover: the old primary stopped cleanly, the
    /// candidate proven to hold its last WAL, promoted (pgha-failover on
    /// `pcp_promote_node -s`, and pgha-switchover).
    SwitchedOver,
    /// pgha-failover: the failed node was a standby; nothing promoted.
    StandbyFailed,
    /// pgha-failover: pgpool found no live node (`%m` = -1).
    NoNodeAlive,
    /// pgha-failover's detached phase ended.
    Settled,
    /// `--dry-run`: the plan, nothing changed.
    DryRun,
    /// pgha-follow / pgha-attach: the node was fine already.
    NothingToDo,
    /// The node was attached as it was.
    Attached,
    /// Repointed at the new primary.
    Repointed,
    /// Rewound with pg_rewind, then repointed.
    Rewound,
    /// Rebuilt with pg_basebackup.
    Rebuilt,
    /// `--watch` or `--status --watch` stopped by the operator.
    Stopped,
    /// Acting would have been unsafe; nothing was changed.
    Refused,
    /// Bad arguments or configuration.
    Error,
    /// A step failed.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Promoted => "promoted",
            Outcome::AlreadyPromoted => "already_promoted",
            Outcome::SwitchedOver => "switched_over",
            Outcome::StandbyFailed => "standby_failed",
            Outcome::NoNodeAlive => "no_node_alive",
            Outcome::Settled => "settled",
            Outcome::DryRun => "dry_run",
            Outcome::NothingToDo => "nothing_to_do",
            Outcome::Attached => "attached",
            Outcome::Repointed => "repointed",
            Outcome::Rewound => "rewound",
            Outcome::Rebuilt => "rebuilt",
            Outcome::Stopped => "stopped",
            Outcome::Refused => "refused",
            Outcome::Error => "error",
            Outcome::Failed => "failed",
        }
    }
}

/// The one-line outcome (and `--json` object).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Summary {
    pub outcome: Outcome,
    pub message: String,
    /// The node the command was about (`%d` for pgha-failover).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_primary: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    pub repointed: Vec<u32>,
    /// The standbys the detached phase repoints (no commit waits for them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repoint_later: Vec<u32>,
    pub errors: Vec<String>,
    /// How long pgpool waited for this command.
    pub blocked_ms: u64,
    /// The steps done so far, in order (what a deadline cut off follows).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub done: Vec<String>,
    /// What the operator must know beyond the outcome (a relaxed
    /// synchronous_standby_names, what may have been lost).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The step running now, for the report of a deadline cut-off.
    #[serde(skip)]
    pub step: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<crate::plan::Decision>,
}

impl Summary {
    /// An error naming every step that failed (after the message of what
    /// was done), or nothing when none did.
    pub fn errors(&self) -> Result<()> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Step(format!(
                "{}; but: {}",
                self.message,
                self.errors.join("; ")
            )))
        }
    }

    /// The summary, or the error of [`Summary::errors`].
    pub fn into_result(self) -> Result<Summary> {
        self.errors().map(|()| self)
    }
}

/// Print the outcome and return the exit code: the last line on stderr
/// always says how it ended, since pgpool ignores exit codes.
pub fn finish(binary: &str, json: bool, res: Result<Summary>) -> i32 {
    let (code, line, summary) = match res {
        Ok(s) => (crate::exit::OK, format!("{binary}: OK: {}", s.message), s),
        Err(e) => {
            let code = e.exit_code();
            let outcome = e.outcome();
            let kind = outcome.as_str().to_uppercase();
            let s = Summary {
                outcome,
                message: format!("{e:#}"),
                ..Summary::default()
            };
            (code, format!("{binary}: {kind}: {e:#}"), s)
        }
    };
    // Masked here as in every log line and journal entry: a step's error
    // may quote a primary_conninfo with its password.
    if json {
        let text = serde_json::to_string(&summary).unwrap_or_default();
        println!("{}", crate::text::mask_secrets(&text));
    }
    eprintln!("{}", crate::text::mask_secrets(&line));
    code
}
