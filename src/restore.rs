//! `restore_command` that follows the primary: the text of the command a
//! standby fetches archived WAL with, pointed at the archive of the node it
//! now follows. Pure text, no I/O.
//!
//! A standby whose `restore_command` still reaches the old primary (the
//! classic recipe's `scp OLD:/archive/%f %p`) can never catch up once it
//! falls behind the new primary's `wal_keep_size`, and while the old
//! primary is silent every attempt costs ssh's connect timeout, during
//! which the standby neither promotes nor switches to streaming.

use crate::cluster::Node;

/// What to do with one standby's `restore_command`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retarget {
    /// It names no backend (a local `cp`, an object store) or already the
    /// new upstream: leave it.
    Keep,
    /// Set it to this.
    Set(String),
    /// It names several backends: which one to replace cannot be told.
    Ambiguous(String),
}

/// How a paused `restore_command` begins. A standby waiting for a promote
/// request or for a new upstream runs its `restore_command` between
/// attempts, and in the scp layout each run may wait for a silent host;
/// pgha pauses it meanwhile (14+, a reload) with a command that fails at
/// once and carries the original, so that a run killed before it puts
/// the original back leaves it recoverable on the node itself: every later
/// [`retarget`] (a rerun, pgha-follow, pgha-attach --rejoin) restores it,
/// and pgha-check names it.
const PAUSED: &str = "exit 1 # paused by pgha while it promotes or repoints this node, was: ";

/// `cmd`, paused (once: a paused command stays as it is).
pub fn paused(cmd: &str) -> String {
    format!("{PAUSED}{}", original(cmd))
}

/// The command a paused `restore_command` stands for; `None` when `cmd`
/// is not paused.
pub fn unpaused(cmd: &str) -> Option<&str> {
    cmd.strip_prefix(PAUSED)
}

/// The command `cmd` stands for: its original when paused, else itself.
pub fn original(cmd: &str) -> &str {
    unpaused(cmd).unwrap_or(cmd)
}

/// The `restore_command` a standby should have to follow `upstream`:
/// `[postgres] restore_command` with `{host}` replaced when configured,
/// else `current` with the one backend it names replaced by `upstream`'s
/// replication address. A paused command is judged by its original, and
/// is never kept paused.
pub fn retarget(
    current: &str,
    template: Option<&str>,
    nodes: &[Node],
    upstream: &Node,
) -> Retarget {
    if let Some(original) = unpaused(current) {
        return match retarget(original, template, nodes, upstream) {
            Retarget::Set(cmd) => Retarget::Set(cmd),
            Retarget::Keep | Retarget::Ambiguous(_) => Retarget::Set(original.to_string()),
        };
    }
    if let Some(t) = template {
        let want = t.replace("{host}", &upstream.replication_host);
        return if want == current {
            Retarget::Keep
        } else {
            Retarget::Set(want)
        };
    }
    let named: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.addresses().iter().any(|a| names_host(current, a)))
        .collect();
    match named.as_slice() {
        [] => Retarget::Keep,
        [n] if n.id == upstream.id => Retarget::Keep,
        [n] => {
            let mut cmd = current.to_string();
            for a in n.addresses() {
                cmd = replace_host(&cmd, a, &upstream.replication_host);
            }
            Retarget::Set(cmd)
        }
        several => Retarget::Ambiguous(format!(
            "restore_command {current:?} names nodes {}: set [postgres] restore_command in pgha.toml with {{host}} for the primary's address",
            several
                .iter()
                .map(|n| n.id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The backend a `restore_command` fetches from, if it names exactly one.
pub fn source_of<'a>(current: &str, nodes: &'a [Node]) -> Option<&'a Node> {
    let mut named = nodes
        .iter()
        .filter(|n| n.addresses().iter().any(|a| names_host(current, a)));
    let first = named.next()?;
    named.next().is_none().then_some(first)
}

/// Whether `host` appears in `cmd` as a whole host name (not as part of a
/// longer name or address: `127.0.0.2` is not in `127.0.0.20`).
pub fn names_host(cmd: &str, host: &str) -> bool {
    find_host(cmd, host).next().is_some()
}

fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_'
}

fn find_host<'a>(cmd: &'a str, host: &'a str) -> impl Iterator<Item = usize> + 'a {
    cmd.match_indices(host).filter_map(move |(i, _)| {
        let before = cmd[..i].chars().next_back();
        let after = cmd[i + host.len()..].chars().next();
        let whole = !before.is_some_and(is_host_char) && !after.is_some_and(is_host_char);
        whole.then_some(i)
    })
}

fn replace_host(cmd: &str, host: &str, with: &str) -> String {
    let mut out = String::with_capacity(cmd.len());
    let mut last = 0;
    for i in find_host(cmd, host).collect::<Vec<_>>() {
        out.push_str(&cmd[last..i]);
        out.push_str(with);
        last = i + host.len();
    }
    out.push_str(&cmd[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u32, host: &str, repl: &str) -> Node {
        Node {
            id,
            host: host.into(),
            port: 5432,
            data_dir: None,
            ssh_host: host.into(),
            replication_host: repl.into(),
            application_name: None,
        }
    }

    fn nodes() -> Vec<Node> {
        vec![
            node(0, "127.0.0.2", "127.0.0.102"),
            node(1, "127.0.0.3", "127.0.0.103"),
            node(2, "127.0.0.4", "127.0.0.104"),
        ]
    }

    #[test]
    fn whole_host_names_only() {
        assert!(names_host("scp 127.0.0.2:/a/%f %p", "127.0.0.2"));
        assert!(!names_host("scp 127.0.0.20:/a/%f %p", "127.0.0.2"));
        assert!(!names_host("scp 1127.0.0.2:/a/%f %p", "127.0.0.2"));
        assert!(names_host("scp postgres@db0:/a/%f %p", "db0"));
        assert!(!names_host("scp db01:/a/%f %p", "db0"));
    }

    #[test]
    fn the_old_upstream_is_replaced_by_the_new_one() {
        let n = nodes();
        let cmd = "scp -o ConnectTimeout=3 127.0.0.102:/var/lib/postgresql/archive/%f %p || exit 1";
        assert_eq!(
            retarget(cmd, None, &n, &n[1]),
            Retarget::Set(
                "scp -o ConnectTimeout=3 127.0.0.103:/var/lib/postgresql/archive/%f %p || exit 1"
                    .into()
            )
        );
        // Any address of the old node counts; the new one is its
        // replication address.
        assert_eq!(
            retarget("scp postgres@127.0.0.2:/a/%f %p", None, &n, &n[2]),
            Retarget::Set("scp postgres@127.0.0.104:/a/%f %p".into())
        );
        assert_eq!(source_of(cmd, &n).map(|x| x.id), Some(0));
    }

    #[test]
    fn local_commands_and_the_right_host_are_kept() {
        let n = nodes();
        assert_eq!(
            retarget("cp /var/lib/postgresql/archive/%f %p", None, &n, &n[1]),
            Retarget::Keep
        );
        assert_eq!(
            retarget("scp 127.0.0.103:/a/%f %p", None, &n, &n[1]),
            Retarget::Keep
        );
        assert_eq!(retarget("", None, &n, &n[1]), Retarget::Keep);
    }

    #[test]
    fn several_hosts_are_ambiguous() {
        let n = nodes();
        match retarget(
            "scp 127.0.0.2:/a/%f %p || scp 127.0.0.4:/a/%f %p",
            None,
            &n,
            &n[1],
        ) {
            Retarget::Ambiguous(why) => assert!(
                why.contains("nodes 0, 2") && why.contains("{host}"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_paused_command_is_put_back_retargeted() {
        let n = nodes();
        let cmd = "scp 127.0.0.102:/a/%f %p || exit 1";
        let p = paused(cmd);
        assert_eq!(unpaused(&p), Some(cmd));
        assert_eq!(unpaused(cmd), None);
        assert_eq!(paused(&p), p, "paused once");
        assert_eq!(original(&p), cmd);
        assert_eq!(original(cmd), cmd);
        assert!(p.starts_with("exit 1 #"), "fails at once: {p}");
        assert_eq!(
            retarget(&p, None, &n, &n[1]),
            Retarget::Set("scp 127.0.0.103:/a/%f %p || exit 1".into())
        );
        // Already naming the upstream, or naming no backend: the
        // original, unpaused.
        assert_eq!(retarget(&p, None, &n, &n[0]), Retarget::Set(cmd.into()));
        let local = paused("cp /a/%f %p");
        assert_eq!(
            retarget(&local, None, &n, &n[1]),
            Retarget::Set("cp /a/%f %p".into())
        );
        let both = "scp 127.0.0.2:/a/%f %p || scp 127.0.0.4:/a/%f %p";
        assert_eq!(
            retarget(&paused(both), None, &n, &n[1]),
            Retarget::Set(both.into())
        );
    }

    #[test]
    fn a_template_wins() {
        let n = nodes();
        let t = "scp {host}:/archive/%f %p || exit 1";
        assert_eq!(
            retarget("cp /x/%f %p", Some(t), &n, &n[2]),
            Retarget::Set("scp 127.0.0.104:/archive/%f %p || exit 1".into())
        );
        assert_eq!(
            retarget(
                "scp 127.0.0.104:/archive/%f %p || exit 1",
                Some(t),
                &n,
                &n[2]
            ),
            Retarget::Keep
        );
    }
}
