//! One execution context for the steps of every command: the topology,
//! the ssh sessions, the journal and the deadline, and [`Exec::step`],
//! which runs a step and writes its progress line, its journal entry and
//! its timing. Commands never write the journal themselves.

use std::future::Future;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::cluster::{Node, Topology};
use crate::error::{Error, Result};
use crate::remote::Remote;
use crate::state::{Fields, Journal, Mark, Step};

/// What every step of one run needs.
pub struct Exec<'a> {
    pub topo: &'a Topology,
    pub remote: &'a Remote,
    pub journal: &'a Journal,
    /// The run's one bound (`failover.deadline`, `follow.deadline`).
    pub deadline: Instant,
}

/// What a step did: its progress line and journal detail.
#[derive(Debug, Clone)]
pub struct Did {
    pub mark: Mark,
    pub what: String,
    /// Structured journal fields of the step (`timeline`, `upstream`, ...).
    pub fields: Fields,
}

impl Did {
    /// `changed`: the step did something (`done`), or found it done
    /// already (`skipped`).
    pub fn new(changed: bool, what: impl Into<String>) -> Did {
        Did {
            mark: if changed { Mark::Done } else { Mark::Skipped },
            what: what.into(),
            fields: Fields::new(),
        }
    }

    /// The same, with a structured journal field.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Did {
        self.fields.insert(key.into(), value.into());
        self
    }

    pub fn done(what: impl Into<String>) -> Did {
        Did::new(true, what)
    }

    pub fn skipped(what: impl Into<String>) -> Did {
        Did::new(false, what)
    }
}

impl Exec<'_> {
    /// The node with this id in the topology.
    pub fn node(&self, id: u32) -> Result<&Node> {
        self.topo.node(i64::from(id))
    }

    /// Run one step about `node`: on success `describe` says what it did;
    /// either way a progress line and a journal entry with its time.
    pub async fn step<T>(
        &self,
        name: &str,
        node: Option<&Node>,
        fut: impl Future<Output = Result<T>>,
        describe: impl FnOnce(&T) -> Did,
    ) -> Result<T> {
        let t = Instant::now();
        match fut.await {
            Ok(v) => {
                let did = describe(&v);
                self.record(name, node, &did, t.elapsed(), Fields::new());
                Ok(v)
            }
            Err(e) => {
                self.failed(name, node, &e, t.elapsed());
                Err(e)
            }
        }
    }

    /// A step that failed (or was refused) outside [`Exec::step`].
    pub fn failed(&self, name: &str, node: Option<&Node>, e: &Error, elapsed: Duration) {
        let mark = match e {
            Error::Refused(_) => Mark::Refused,
            _ => Mark::Failed,
        };
        let did = Did {
            mark,
            what: e.to_string(),
            fields: Fields::new(),
        };
        self.record(name, node, &did, elapsed, Fields::new());
    }

    /// The progress line and the journal entry of one step.
    pub fn record(
        &self,
        name: &str,
        node: Option<&Node>,
        did: &Did,
        elapsed: Duration,
        mut fields: Fields,
    ) {
        fields.extend(did.fields.clone());
        let secs = elapsed.as_secs_f64();
        let line = match node {
            Some(n) => format!("{}: {name}: {} ({secs:.3}s)", n.label(), did.what),
            None => format!("{name}: {} ({secs:.3}s)", did.what),
        };
        match did.mark {
            Mark::Done | Mark::Skipped => info!("{line}"),
            Mark::Refused => warn!("{line}"),
            Mark::Failed => error!("{line}"),
        }
        self.journal.record(&Step {
            node: node.map(|n| (n.id, n.host.as_str())),
            fields,
            ..Step::new(name, did.mark, &did.what, elapsed)
        });
    }
}
