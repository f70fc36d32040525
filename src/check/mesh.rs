//! The ssh mesh failover needs, derived from the configuration, and what a
//! failed edge means.
//!
//! Edges: this host (pgpool's, where pgha-failover runs) to every node's
//! `ssh_host`, to fence, promote, copy history files and restart; and every
//! node to every other node, because any standby may have to copy from any
//! other node once that one is primary (`restore_command` with scp or rsync,
//! archive copies, an operator's `pg_basebackup` or `pg_rewind` session). An
//! edge from a node is tried on that node (`ssh SRC ssh ... DST true`), with
//! that node's keys and `known_hosts`, exactly as its own commands would run.
//! Every try is key-only (`BatchMode=yes`) with strict host keys
//! (`StrictHostKeyChecking=yes`) and bounded by `ConnectTimeout`.

use std::time::Duration;

use super::{Finding, ssh_label, subject};
use crate::cluster::{Node, Topology};
use crate::remote::{RemoteError, quote};

/// One ssh edge: from `src` (`None`: this host) to `dst`.
#[derive(Debug, Clone)]
pub(crate) struct Edge {
    /// The source node; `None` is the host pgha-check runs on.
    pub(crate) src: Option<Node>,
    /// The node ssh goes to, at its `ssh_host`.
    pub(crate) dst: Node,
}

impl Edge {
    /// `pgpool->node1` or `node1->node2`: the metric label.
    fn subject(&self) -> String {
        let src = self.src.as_ref().map_or("pgpool".to_string(), subject);
        format!("{src}->{}", subject(&self.dst))
    }

    /// "this host -> node 1 (127.0.0.3)", "node 1 (...) -> node 2 (...)".
    pub(crate) fn describe(&self) -> String {
        let src = self.src.as_ref().map_or("this host".to_string(), ssh_label);
        format!("{src} -> {}", ssh_label(&self.dst))
    }
}

/// Every edge failover may use: this host to each node, then each ordered
/// pair of nodes.
pub(crate) fn edges(topo: &Topology) -> Vec<Edge> {
    let mut out: Vec<Edge> = topo
        .nodes
        .iter()
        .map(|n| Edge {
            src: None,
            dst: n.clone(),
        })
        .collect();
    for s in &topo.nodes {
        for d in &topo.nodes {
            if s.id != d.id {
                out.push(Edge {
                    src: Some(s.clone()),
                    dst: d.clone(),
                });
            }
        }
    }
    out
}

/// Why an ssh login failed, from ssh's own words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SshFailure {
    /// `Permission denied (publickey)`: the source's key is not in the
    /// destination's `authorized_keys` (or the source has no key).
    MissingKey,
    /// `Host key verification failed` with no key on record: the
    /// destination is not in the source's `known_hosts`.
    UnknownHostKey,
    /// The recorded host key differs from the one offered: a reinstalled
    /// host, or an impostor.
    ChangedHostKey,
    /// No answer within `ConnectTimeout`, no route: a firewall, a dead or
    /// blackholed host.
    Unreachable,
    /// `Connection refused`: the host answers but no sshd listens.
    Refused,
    /// The name does not resolve on the source.
    Unresolvable,
    /// Anything else: ssh's words are in the message.
    Other,
}

/// Classify ssh's output (`status` is its exit status; 124 is `timeout`
/// killing it).
pub(crate) fn classify(output: &str, status: i32) -> SshFailure {
    let m = output.to_ascii_lowercase();
    if m.contains("identification has changed") || m.contains("has changed and you have") {
        SshFailure::ChangedHostKey
    } else if m.contains("host key verification failed") || m.contains("host key is known") {
        SshFailure::UnknownHostKey
    } else if m.contains("permission denied (") {
        SshFailure::MissingKey
    } else if m.contains("connection refused") {
        SshFailure::Refused
    } else if m.contains("could not resolve hostname") || m.contains("name or service not known") {
        SshFailure::Unresolvable
    } else if status == 124
        || m.contains("timed out")
        || m.contains("no completed ssh handshake")
        || m.contains("no route to host")
        || m.contains("network is unreachable")
    {
        SshFailure::Unreachable
    } else {
        SshFailure::Other
    }
}

/// What the fix texts need to know about ssh on both ends.
#[derive(Debug, Clone)]
pub(crate) struct SshContext {
    /// `[ssh] user`: the login on every node, and the user whose keys the
    /// nodes use for node-to-node edges.
    pub(crate) user: String,
    /// `[ssh] port`.
    pub(crate) port: u16,
    /// `ConnectTimeout` in whole seconds.
    pub(crate) connect_secs: u64,
    /// `[ssh] identity_file` of this host, if set.
    identity_file: Option<String>,
    /// `[ssh] known_hosts_file` of this host, if set.
    known_hosts_file: Option<String>,
    /// Who runs pgha-check here.
    local_user: String,
}

impl SshContext {
    /// The context of `topo`'s `[ssh]` section.
    pub(crate) fn of(topo: &Topology) -> SshContext {
        let s = &topo.config.ssh;
        SshContext {
            user: s.user.clone(),
            port: s.port,
            connect_secs: whole_secs(s.connect_timeout),
            identity_file: s.identity_file.as_ref().map(|p| p.display().to_string()),
            known_hosts_file: s.known_hosts_file.as_ref().map(|p| p.display().to_string()),
            local_user: super::local_user(),
        }
    }
}

/// `d` in whole seconds, rounded up, at least 1 (as ssh's `ConnectTimeout`).
pub(crate) fn whole_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// The failure's name and the fix for `edge`.
fn explain(edge: &Edge, failure: &SshFailure, ctx: &SshContext) -> (&'static str, String) {
    let fx = Fixes::new(edge, ctx);
    let Fixes {
        dst,
        dst_label,
        p,
        src_where,
        src_user,
        known_hosts,
        ..
    } = &fx;
    let (user, port) = (&ctx.user, ctx.port);
    match failure {
        SshFailure::MissingKey => ("missing authorized key", fx.missing_key()),
        SshFailure::UnknownHostKey => (
            "unknown host key",
            format!(
                "on {src_where} as {src_user}: ssh-keyscan{p} {dst} >> {known_hosts}, after checking \
                 that the fingerprint it prints (ssh-keygen -lf) matches `ssh-keygen -lf \
                 /etc/ssh/ssh_host_ed25519_key.pub` on {dst_label}"
            ),
        ),
        SshFailure::ChangedHostKey => ("changed host key", fx.changed_host_key()),
        SshFailure::Unreachable => (
            "unreachable",
            format!(
                "{dst_label} does not answer on port {port} from {src_where} within {}s \
                 (ConnectTimeout): check that the host is up, that sshd runs there, and the \
                 firewall between them",
                ctx.connect_secs
            ),
        ),
        SshFailure::Refused => (
            "connection refused",
            format!(
                "nothing listens on {dst} port {port}: start sshd on {dst_label} (or fix [ssh] port)"
            ),
        ),
        SshFailure::Unresolvable => (
            "unresolvable name",
            format!(
                "{src_where} cannot resolve {dst}: use an address as the ssh host of {dst_label} \
                 ([nodes.{}] ssh_host) or fix name resolution there",
                edge.dst.id
            ),
        ),
        SshFailure::Other => (
            "ssh failed",
            format!(
                "run `ssh -o BatchMode=yes -o StrictHostKeyChecking=yes{p} {user}@{dst} true` on {src_where} as {src_user} and fix what it says"
            ),
        ),
    }
}

/// What the fixes of one edge name: the destination, and where on the
/// source side the fix is applied, as whom and with which files.
struct Fixes<'a> {
    edge: &'a Edge,
    ctx: &'a SshContext,
    /// The destination's `ssh_host`.
    dst: &'a str,
    dst_label: String,
    /// ` -p PORT` for a port other than 22, else empty.
    p: String,
    src_where: String,
    src_user: String,
    /// The source's public key file (`.pub`).
    key_pub: String,
    known_hosts: String,
}

impl<'a> Fixes<'a> {
    fn new(edge: &'a Edge, ctx: &'a SshContext) -> Self {
        let user = &ctx.user;
        let (src_where, src_user, key, known_hosts) = match &edge.src {
            None => (
                "this host".to_string(),
                ctx.local_user.clone(),
                ctx.identity_file
                    .clone()
                    .unwrap_or_else(|| format!("~{}/.ssh/id_*.pub", ctx.local_user)),
                ctx.known_hosts_file
                    .clone()
                    .unwrap_or_else(|| format!("~{}/.ssh/known_hosts", ctx.local_user)),
            ),
            Some(s) => (
                ssh_label(s),
                user.clone(),
                format!("~{user}/.ssh/id_*.pub"),
                format!("~{user}/.ssh/known_hosts"),
            ),
        };
        let key_pub = if key.ends_with(".pub") {
            key
        } else {
            format!("{key}.pub")
        };
        Fixes {
            edge,
            ctx,
            dst: &edge.dst.ssh_host,
            dst_label: ssh_label(&edge.dst),
            p: if ctx.port == 22 {
                String::new()
            } else {
                format!(" -p {}", ctx.port)
            },
            src_where,
            src_user,
            key_pub,
            known_hosts,
        }
    }

    /// Append the source's public key to the destination's
    /// `authorized_keys`.
    fn missing_key(&self) -> String {
        let Fixes {
            dst,
            dst_label,
            p,
            src_where,
            src_user,
            key_pub,
            ..
        } = self;
        let user = &self.ctx.user;
        let copy = match &self.edge.src {
            None => format!("cat {key_pub} | ssh{p} {user}@{dst} 'cat >> .ssh/authorized_keys'"),
            Some(s) => format!(
                "ssh{p} {user}@{} 'cat .ssh/id_*.pub' | ssh{p} {user}@{dst} 'cat >> .ssh/authorized_keys'",
                s.ssh_host
            ),
        };
        format!(
            "append the public key of {src_user} on {src_where} ({key_pub}) to \
             ~{user}/.ssh/authorized_keys on {dst_label}, e.g. from a host that reaches \
             both: {copy}"
        )
    }

    /// Replace the recorded host key, once its fingerprint is checked.
    fn changed_host_key(&self) -> String {
        let (dst, dst_label, known_hosts) = (self.dst, &self.dst_label, &self.known_hosts);
        let recorded = if self.ctx.port == 22 {
            dst.to_string()
        } else {
            format!("[{dst}]:{}", self.ctx.port)
        };
        format!(
            "if {dst_label} was reinstalled: on {} as {}, ssh-keygen -R {} -f \
             {known_hosts}, then add the new key (ssh-keyscan{} {dst} >> {known_hosts}) after \
             checking its fingerprint on {dst_label}; otherwise suspect an impostor",
            self.src_where,
            self.src_user,
            quote(&recorded),
            self.p
        )
    }
}

/// The finding of `edge` from ssh's result: `Ok(elapsed)` or the failed
/// ssh's output and exit status.
pub(crate) fn finding(
    edge: &Edge,
    result: Result<Duration, (String, i32)>,
    ctx: &SshContext,
) -> Finding {
    match result {
        Ok(took) => Finding::pass(
            "ssh",
            &edge.subject(),
            format!(
                "{}: key login as {} in {:.2}s",
                edge.describe(),
                ctx.user,
                took.as_secs_f64()
            ),
        ),
        Err((output, status)) => {
            let failure = classify(&output, status);
            let (what, fix) = explain(edge, &failure, ctx);
            let words = one_line(&output);
            let words = if words.is_empty() {
                format!("ssh exited with status {status}")
            } else {
                words
            };
            Finding::fail(
                "ssh",
                &edge.subject(),
                format!("{}: {what} ({words})", edge.describe()),
                fix,
            )
        }
    }
}

/// A direct edge's result from the [`RemoteError`] of connecting to it;
/// pgha's own hint is dropped, [`explain`] gives the fix.
pub(crate) fn remote_failure(e: &RemoteError) -> (String, i32) {
    let text = match e {
        RemoteError::Connect { message, .. } => message.clone(),
        RemoteError::Timeout { .. } => return (e.to_string() + " (timed out)", 124),
        other => other.to_string(),
    };
    let text = text.split("; hint:").next().unwrap_or_default().to_string();
    (text, 255)
}

/// The ssh command a node runs to try an edge to `dst`: key-only, strict
/// host keys, bounded by `ConnectTimeout`.
pub(crate) fn hop_argv(dst: &str, ctx: &SshContext) -> Vec<String> {
    let mut v: Vec<String> = [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "PasswordAuthentication=no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("-o".into());
    v.push(format!("ConnectTimeout={}", ctx.connect_secs));
    v.push("-p".into());
    v.push(ctx.port.to_string());
    v.push("-l".into());
    v.push(ctx.user.clone());
    // `--`: whatever `dst` is, ssh never reads it as an option.
    v.push("--".into());
    v.push(dst.to_string());
    v.push("true".into());
    v
}

/// Output in one line: ssh banners and blank lines dropped.
pub(crate) fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("@@@") && !l.starts_with("@ "))
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u32, host: &str) -> Node {
        Node {
            id,
            host: host.into(),
            port: 5432,
            data_dir: None,
            ssh_host: host.into(),
            replication_host: host.into(),
            application_name: None,
        }
    }

    fn ctx() -> SshContext {
        SshContext {
            user: "postgres".into(),
            port: 22,
            connect_secs: 3,
            identity_file: None,
            known_hosts_file: None,
            local_user: "postgres".into(),
        }
    }

    #[test]
    fn ssh_words_are_classified() {
        assert_eq!(
            classify("postgres@127.0.0.4: Permission denied (publickey).\n", 255),
            SshFailure::MissingKey
        );
        assert_eq!(
            classify(
                "No ED25519 host key is known for 127.0.0.4 and you have requested strict checking.\nHost key verification failed.\n",
                255
            ),
            SshFailure::UnknownHostKey
        );
        assert_eq!(
            classify(
                "@@@@@\n@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @\nHost key verification failed.",
                255
            ),
            SshFailure::ChangedHostKey
        );
        assert_eq!(
            classify(
                "ssh: connect to host 127.0.0.4 port 22: Connection timed out",
                255
            ),
            SshFailure::Unreachable
        );
        assert_eq!(classify("", 124), SshFailure::Unreachable);
        assert_eq!(
            classify(
                "ssh: connect to host 127.0.0.4 port 22: Connection refused",
                255
            ),
            SshFailure::Refused
        );
        assert_eq!(
            classify(
                "ssh: Could not resolve hostname db9: Name or service not known",
                255
            ),
            SshFailure::Unresolvable
        );
        assert_eq!(
            classify("kex_exchange_identification: read: reset", 255),
            SshFailure::Other
        );
    }

    #[test]
    fn edges_cover_this_host_and_every_pair() {
        let e = |s: Option<u32>, d: u32| Edge {
            src: s.map(|s| node(s, &format!("127.0.0.{}", s + 2))),
            dst: node(d, &format!("127.0.0.{}", d + 2)),
        };
        assert_eq!(e(None, 1).subject(), "pgpool->node1");
        assert_eq!(e(Some(1), 2).subject(), "node1->node2");
        assert_eq!(
            e(Some(1), 2).describe(),
            "node 1 (127.0.0.3) -> node 2 (127.0.0.4)"
        );
    }

    #[test]
    fn fixes_name_the_pair_and_the_files() {
        let edge = Edge {
            src: Some(node(1, "127.0.0.3")),
            dst: node(2, "127.0.0.4"),
        };
        let f = finding(
            &edge,
            Err((
                "postgres@127.0.0.4: Permission denied (publickey).".into(),
                255,
            )),
            &ctx(),
        );
        assert!(!f.ok);
        assert_eq!(f.node, "node1->node2");
        assert!(
            f.message
                .contains("node 1 (127.0.0.3) -> node 2 (127.0.0.4): missing authorized key"),
            "{}",
            f.message
        );
        let fix = f.fix.unwrap();
        assert!(fix.contains("~postgres/.ssh/id_*.pub"), "{fix}");
        assert!(
            fix.contains("~postgres/.ssh/authorized_keys on node 2 (127.0.0.4)"),
            "{fix}"
        );
        assert!(
            fix.contains("ssh postgres@127.0.0.3 'cat .ssh/id_*.pub' | ssh postgres@127.0.0.4"),
            "{fix}"
        );

        let f = finding(
            &edge,
            Err(("Host key verification failed.".into(), 255)),
            &ctx(),
        );
        assert!(f.message.contains("unknown host key"), "{}", f.message);
        let fix = f.fix.unwrap();
        assert!(fix.starts_with("on node 1 (127.0.0.3) as postgres: ssh-keyscan 127.0.0.4 >> ~postgres/.ssh/known_hosts"), "{fix}");

        let mut c = ctx();
        c.port = 2222;
        c.known_hosts_file = Some("/etc/pgha/known_hosts".into());
        let direct = Edge {
            src: None,
            dst: node(0, "127.0.0.2"),
        };
        let f = finding(
            &direct,
            Err((
                "Host key for [127.0.0.2]:2222 has changed and you have requested strict checking."
                    .into(),
                255,
            )),
            &c,
        );
        let fix = f.fix.unwrap();
        assert!(
            fix.contains("ssh-keygen -R '[127.0.0.2]:2222' -f /etc/pgha/known_hosts"),
            "{fix}"
        );

        let f = finding(&direct, Err((String::new(), 124)), &c);
        assert!(
            f.message
                .contains("unreachable (ssh exited with status 124)"),
            "{}",
            f.message
        );
        assert!(f.fix.unwrap().contains("within 3s"));

        let f = finding(&direct, Ok(Duration::from_millis(120)), &c);
        assert!(f.ok);
        assert_eq!(
            f.message,
            "this host -> node 0 (127.0.0.2): key login as postgres in 0.12s"
        );
    }

    #[test]
    fn hops_are_key_only_with_strict_host_keys() {
        let argv = hop_argv("127.0.0.4", &ctx()).join(" ");
        assert_eq!(
            argv,
            "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o PasswordAuthentication=no -o ConnectTimeout=3 -p 22 -l postgres -- 127.0.0.4 true"
        );
    }

    #[test]
    fn remote_errors_lose_pghas_hint() {
        let e = RemoteError::Connect {
            host: "127.0.0.2".into(),
            message: "postgres@127.0.0.2: Permission denied (publickey).; hint: the key ...".into(),
            after: Duration::from_millis(50),
        };
        let (text, status) = remote_failure(&e);
        assert_eq!(text, "postgres@127.0.0.2: Permission denied (publickey).");
        assert_eq!(status, 255);
        assert_eq!(whole_secs(Duration::from_millis(2500)), 3);
        assert_eq!(whole_secs(Duration::ZERO), 1);
    }
}
