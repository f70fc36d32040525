//! The cluster as pgha sees it: the backends of `pgpool.conf` joined with
//! `pgha.toml`, and what each of them says about itself right now.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::pgpool::conf::PgpoolConf;
use crate::pgpool::pcp::PcpTarget;
use crate::pgpool::pcppass;
use crate::plan::{NodeView, Seen};
use crate::postgres::{self, NodeState, PgTarget};
use crate::remote::{Remote, SshOptions};

/// One backend with everything pgha needs to reach it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Node {
    /// pgpool's backend id (the N of `backend_hostnameN`).
    pub id: u32,
    /// `backend_hostnameN`: where pgpool (and pgha) connect with SQL.
    pub host: String,
    /// `backend_portN`.
    pub port: u16,
    /// `backend_data_directoryN`, or `[nodes.N] data_directory`.
    pub data_dir: Option<PathBuf>,
    /// Where pgha runs ssh to (`[nodes.N] ssh_host`, else `host`).
    pub ssh_host: String,
    /// Where the standbys stream from (`[nodes.N] replication_host`, else `host`).
    pub replication_host: String,
    /// `backend_application_nameN`: the `application_name` its walreceiver
    /// must use for pgpool to show its replication state.
    pub application_name: Option<String>,
}

impl Node {
    /// "node 1 (127.0.0.3:5432)", as every message names a node.
    pub fn label(&self) -> String {
        format!("node {} ({}:{})", self.id, self.host, self.port)
    }

    /// The addresses this node may be known by (SQL and replication).
    pub fn addresses(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::with_capacity(3);
        for a in [&self.host, &self.ssh_host, &self.replication_host] {
            if !v.contains(&a.as_str()) {
                v.push(a);
            }
        }
        v
    }

    /// The data directory, or an error saying where to configure it.
    pub fn data_dir(&self) -> Result<&Path> {
        self.data_dir.as_deref().ok_or_else(|| {
            Error::Usage(format!(
                "{} has no data directory: set backend_data_directory{} in pgpool.conf or [nodes.{}] data_directory in pgha.toml",
                self.label(),
                self.id,
                self.id
            ))
        })
    }
}

/// Configuration and topology, loaded once per invocation.
#[derive(Debug, Clone)]
pub struct Topology {
    pub config: Config,
    pub pgpool: PgpoolConf,
    pub nodes: Vec<Node>,
}

impl Topology {
    /// Load `pgha.toml` (explicit path, `PGHA_CONFIG` or the default) and the
    /// `pgpool.conf` it names.
    pub fn load(config_path: Option<&Path>) -> Result<Topology> {
        let config = Config::load(config_path)?;
        let pgpool = PgpoolConf::load(&config.pgpool_conf)?;
        Ok(Self::from_parts(config, pgpool))
    }

    pub fn from_parts(config: Config, pgpool: PgpoolConf) -> Topology {
        let nodes = pgpool
            .backends
            .iter()
            .map(|b| {
                let o = config.nodes.get(&b.id).cloned().unwrap_or_default();
                Node {
                    id: b.id,
                    host: b.hostname.clone(),
                    port: b.port,
                    data_dir: b.data_directory.clone().or(o.data_directory),
                    ssh_host: o.ssh_host.unwrap_or_else(|| b.hostname.clone()),
                    replication_host: o.replication_host.unwrap_or_else(|| b.hostname.clone()),
                    application_name: b.application_name.clone(),
                }
            })
            .collect();
        Topology {
            config,
            pgpool,
            nodes,
        }
    }

    /// The node with pgpool backend id `id`, or a usage error listing the
    /// ids that exist.
    pub fn node(&self, id: i64) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| i64::from(n.id) == id)
            .ok_or_else(|| {
                let ids: Vec<String> = self.nodes.iter().map(|n| n.id.to_string()).collect();
                Error::Usage(format!(
                    "unknown node id {id}: {} defines backends {}",
                    self.pgpool.path.display(),
                    ids.join(", ")
                ))
            })
    }

    /// How pgha connects to a node with SQL.
    pub fn pg_target(&self, node: &Node) -> PgTarget {
        self.pg_target_at(node, &node.host)
    }

    /// Same, at another of the node's addresses.
    pub fn pg_target_at(&self, node: &Node, host: &str) -> PgTarget {
        PgTarget::new(host, node.port, &self.config.postgres)
    }

    /// The ssh client for this invocation.
    pub fn remote(&self) -> Remote {
        let s = &self.config.ssh;
        Remote::new(SshOptions {
            user: s.user.clone(),
            port: s.port,
            identity_file: s.identity_file.clone(),
            known_hosts_file: s.known_hosts_file.clone(),
            connect_timeout: s.connect_timeout,
            control_dir: s.control_dir.clone(),
        })
    }

    /// The local pgpool's client address and port, as this host's name in
    /// messages other hosts read (`listen_addresses`, `port`).
    pub fn pgpool_address(&self) -> String {
        let host = self
            .pgpool
            .listen_address()
            .unwrap_or_else(|| "localhost".into());
        format!("pgpool {host}:{}", self.pgpool.port())
    }

    /// Where pgpool's PCP listens and the password from `.pcppass`.
    pub fn pcp_target(&self) -> Result<PcpTarget> {
        let c = &self.config.pcp;
        let host = c
            .host
            .clone()
            .or_else(|| self.pgpool.pcp_listen_address())
            .unwrap_or_else(|| "127.0.0.1".into());
        let port = c.port.unwrap_or_else(|| self.pgpool.pcp_port());
        let path = pcppass::default_path(c.pass_file.as_deref()).ok_or_else(|| {
            Error::Usage("no .pcppass: set pcp.pass_file, PCPPASSFILE or HOME".into())
        })?;
        let password = match pcppass::lookup(&path, &host, port, &c.user) {
            Ok(Some(p)) => p,
            Ok(None) => {
                return Err(Error::Usage(format!(
                    "{} has no line for {host}:{port}:{}: add `{host}:{port}:{}:PASSWORD` (mode 0600)",
                    path.display(),
                    c.user,
                    c.user
                )));
            }
            Err(e) => return Err(Error::Usage(e.to_string())),
        };
        Ok(PcpTarget {
            host,
            port,
            user: c.user.clone(),
            password,
            timeout: c.timeout,
        })
    }

    /// The node whose addresses include `host` (how a standby names its
    /// upstream in `pg_stat_wal_receiver.sender_host`).
    pub fn node_by_address(&self, host: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.addresses().contains(&host))
    }
}

/// One node and what it said (or why it did not answer).
#[derive(Debug, Clone)]
pub struct Observed {
    pub node: Node,
    pub state: std::result::Result<NodeState, String>,
    /// When `state` is an error: whether the server answered all the same
    /// (a refused login, "too many clients", starting up): alive, role
    /// unknown.
    pub answered: bool,
    pub took: Duration,
}

impl Observed {
    pub fn ok(&self) -> Option<&NodeState> {
        self.state.as_ref().ok()
    }

    /// One progress line: what the node is, where it is, whom it follows.
    pub fn describe(&self, topo: &Topology) -> String {
        let o = self;
        match &o.state {
            Err(e) if o.answered => format!(
                "{}: answers, but pgha cannot use it (alive, role unknown): {e}",
                o.node.label()
            ),
            Err(e) => format!(
                "{}: no answer after {:.2}s: {e}",
                o.node.label(),
                o.took.as_secs_f64()
            ),
            Ok(s) if !s.in_recovery => format!(
                "{}: primary, timeline {}, at {}",
                o.node.label(),
                s.timeline,
                s.best_lsn().map(|l| l.to_string()).unwrap_or_default()
            ),
            Ok(s) => {
                let up = upstream_of(topo, s)
                    .map(|u| format!("streaming from node {u}"))
                    .unwrap_or_else(|| match &s.wal_receiver {
                        Some(r) => format!("wal receiver {}", r.status),
                        None => "not streaming".into(),
                    });
                format!(
                    "{}: standby, timeline {}, at {}, {up}",
                    o.node.label(),
                    s.timeline,
                    s.best_lsn().map(|l| l.to_string()).unwrap_or_default()
                )
            }
        }
    }

    /// The reduced view the planner works on.
    pub fn view(&self, topo: &Topology) -> NodeView {
        let seen = match &self.state {
            Ok(s) if !s.in_recovery => Seen::Primary {
                timeline: s.timeline,
                lsn: s.best_lsn(),
            },
            Ok(s) => Seen::Standby {
                timeline: s.timeline,
                lsn: s.best_lsn(),
                upstream: upstream_of(topo, s),
                follows: configured_upstream(topo, s),
            },
            Err(e) if self.answered => Seen::Answers(e.clone()),
            Err(e) => Seen::Silent(e.clone()),
        };
        NodeView {
            id: self.node.id,
            name: self.node.application_name.clone(),
            sync: self.ok().map(|s| s.synchronous_standby_names.clone()),
            seen,
        }
    }
}

/// The backend a standby is streaming from, if it streams from one.
pub fn upstream_of(topo: &Topology, s: &NodeState) -> Option<u32> {
    let r = s.wal_receiver.as_ref()?;
    if !r.streaming() {
        return None;
    }
    let host = r.sender_host.as_deref()?;
    topo.node_by_address(host).map(|n| n.id)
}

/// The backend a standby's `primary_conninfo` names, if it names one.
pub fn configured_upstream(topo: &Topology, s: &NodeState) -> Option<u32> {
    let kv = postgres::parse_conninfo(s.primary_conninfo.as_deref()?);
    let host = kv.get("host").or_else(|| kv.get("hostaddr"))?;
    let port: u16 = kv.get("port").and_then(|p| p.parse().ok()).unwrap_or(5432);
    topo.node_by_address(host)
        .filter(|n| n.port == port)
        .map(|n| n.id)
}

/// Ask every node about itself, all at once; each answer is bounded by the
/// connect and query timeouts.
pub async fn observe_all(topo: &Topology) -> Vec<Observed> {
    let futs = topo.nodes.iter().map(|n| observe_node(topo, n));
    futures::future::join_all(futs).await
}

/// Ask one node about itself.
pub async fn observe_node(topo: &Topology, node: &Node) -> Observed {
    observe_with(node, topo.pg_target(node)).await
}

/// Ask one node about itself through `target` (e.g. with a shorter
/// connect timeout).
pub async fn observe_with(node: &Node, target: PgTarget) -> Observed {
    let start = Instant::now();
    let (state, answered) = match postgres::observe_target(&target).await {
        Ok(s) => (Ok(s), true),
        Err(e) => (Err(e.to_string()), e.answered()),
    };
    Observed {
        node: node.clone(),
        state,
        answered,
        took: start.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example files shipped in `pgpool/` are valid and agree.
    #[test]
    fn the_shipped_examples_load() {
        let config = Config::from_str(
            Path::new("pgpool/pgha.toml"),
            include_str!("../pgpool/pgha.toml"),
        )
        .unwrap();
        let pool = PgpoolConf::parse(
            Path::new("pgpool/pgpool.conf"),
            include_str!("../pgpool/pgpool.conf"),
        )
        .unwrap();
        // The conffile the package installs parses too, and is all defaults.
        let conffile = Config::from_str(
            Path::new("packaging/pgha.toml"),
            include_str!("../packaging/pgha.toml"),
        )
        .unwrap();
        assert_eq!(conffile.follow.deadline, config.follow.deadline);
        let topo = Topology::from_parts(config, pool);
        let ids: Vec<u32> = topo.nodes.iter().map(|n| n.id).collect();
        assert_eq!(ids, [0, 1, 2]);
        assert_eq!(
            topo.node(1).unwrap().application_name.as_deref(),
            Some("pg1")
        );
        assert!(
            topo.pgpool
                .get("failover_command")
                .unwrap()
                .starts_with("/usr/bin/pgha-failover %d %M %m")
        );
        assert!(
            topo.node(3)
                .unwrap_err()
                .to_string()
                .contains("backends 0, 1, 2")
        );
    }

    #[test]
    fn overrides_give_ssh_and_replication_addresses() {
        let config = Config::from_str(
            Path::new("t.toml"),
            "[nodes.1]\nssh_host = \"127.0.0.33\"\nreplication_host = \"127.0.1.3\"\n",
        )
        .unwrap();
        let pool = PgpoolConf::parse(
            Path::new("p.conf"),
            "backend_hostname0 = '127.0.0.2'\nbackend_hostname1 = '127.0.0.3'\n",
        )
        .unwrap();
        let topo = Topology::from_parts(config, pool);
        let n1 = topo.node(1).unwrap();
        assert_eq!(
            (n1.ssh_host.as_str(), n1.replication_host.as_str()),
            ("127.0.0.33", "127.0.1.3")
        );
        assert_eq!(topo.node_by_address("127.0.1.3").unwrap().id, 1);
        let n0 = topo.node(0).unwrap();
        assert_eq!(n0.addresses(), ["127.0.0.2"]);
        assert!(
            n0.data_dir()
                .unwrap_err()
                .to_string()
                .contains("backend_data_directory0")
        );
    }
}
