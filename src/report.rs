//! What a command reports at the end: one line on stderr for pgpool's log
//! and the operator, or one JSON object on stdout with `--json`.

use serde::Serialize;

use crate::error::{Error, Result};

/// The one-line outcome (and `--json` object).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Summary {
    /// `promoted`, `already_promoted`, `standby_failed`, `no_node_alive`,
    /// `dry_run`, `settled`.
    pub outcome: String,
    pub message: String,
    /// The node the command was about (`%d` for pgha-failover).
    pub node: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_primary: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    pub repointed: Vec<u32>,
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

/// Print the outcome and return the exit code: the last line on stderr
/// always says how it ended, since pgpool ignores exit codes.
pub fn finish(binary: &str, json: bool, res: Result<Summary>) -> i32 {
    let (code, line, summary) = match res {
        Ok(s) => (crate::exit::OK, format!("{binary}: OK: {}", s.message), s),
        Err(e) => {
            let code = e.exit_code();
            let kind = match &e {
                Error::Refused(_) => "REFUSED",
                Error::Usage(_) | Error::Config(_) | Error::PgpoolConf(_) => "ERROR",
                _ => "FAILED",
            };
            let s = Summary {
                outcome: kind.to_lowercase(),
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
