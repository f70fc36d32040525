//! The server settings failover relies on, read from `pg_settings` on every
//! node, and the decisions about them (free of I/O, unit-tested).
//!
//! - `wal_level` `replica` or `logical`, `hot_standby` on, `max_wal_senders`
//!   enough for every other node: what streaming replication needs on
//!   whichever node becomes primary.
//! - `wal_log_hints` on or data checksums (`initdb --data-checksums`), and
//!   `full_page_writes` on: what `pg_rewind` needs to turn an old primary
//!   into a standby.
//! - `archive_mode`, `archive_command`, `restore_command`: in place when an
//!   archive is configured, and never able to exit above 125 when a peer is
//!   down. `ssh`, `scp` and `rsync` exit with 255 when they cannot connect;
//!   PostgreSQL takes an exit status above 125 from `restore_command` as
//!   fatal and shuts the standby down (and restarts the archiver for
//!   `archive_command`). Such commands need `|| exit 1`.

use super::{Finding, SqlFacts, subject};
use crate::cluster::{Node, Topology};

/// The settings read from every node.
pub(crate) const NAMES: [&str; 12] = [
    "wal_level",
    "hot_standby",
    "max_wal_senders",
    "max_replication_slots",
    "wal_log_hints",
    "data_checksums",
    "full_page_writes",
    "archive_mode",
    "archive_command",
    "restore_command",
    "cluster_name",
    "server_version_num",
];

/// A decision: `Ok(what was found)` or `Err((what is wrong, the fix))`.
type Verdict = Result<String, (String, String)>;

/// `wal_level` must be `replica` (or `logical`, which includes it).
fn wal_level(v: &str) -> Verdict {
    match v {
        "replica" | "logical" => Ok(format!("wal_level = {v}")),
        other => Err((
            format!(
                "wal_level = {other}: standbys cannot stream from this server once it is primary"
            ),
            "set wal_level = replica in postgresql.conf and restart PostgreSQL".into(),
        )),
    }
}

/// `hot_standby` must be on: pgpool health-checks the standbys and pgha
/// observes them over SQL.
fn hot_standby(v: &str) -> Verdict {
    if is_on(v) {
        Ok("hot_standby = on".into())
    } else {
        Err((
            "hot_standby = off: a standby accepts no connections, so pgpool and pgha cannot check it".into(),
            "set hot_standby = on in postgresql.conf and restart PostgreSQL".into(),
        ))
    }
}

/// Whichever node becomes primary serves every other node: `max_wal_senders`
/// at least the number of nodes minus one.
fn max_wal_senders(v: &str, nodes: usize) -> Verdict {
    let need = nodes.saturating_sub(1).max(1);
    match v.parse::<usize>() {
        Ok(n) if n >= need => Ok(format!("max_wal_senders = {n} (at least {need} needed)")),
        Ok(n) => Err((
            format!("max_wal_senders = {n}: a new primary must serve {need} standbys"),
            format!(
                "set max_wal_senders = {} in postgresql.conf (one more than the standbys, for pg_basebackup) and restart",
                need + 1
            ),
        )),
        Err(_) => Err((
            format!("max_wal_senders = {v:?} is not a number"),
            "check postgresql.conf".into(),
        )),
    }
}

/// `pg_rewind` needs `wal_log_hints = on` or data checksums, and
/// `full_page_writes = on`; without them an old primary can only rejoin by
/// a full `pg_basebackup`.
fn rewind(wal_log_hints: bool, data_checksums: bool, full_page_writes: bool) -> Verdict {
    let hints = if wal_log_hints { "on" } else { "off" };
    let sums = if data_checksums { "on" } else { "off" };
    if !full_page_writes {
        return Err((
            "full_page_writes = off: pg_rewind refuses to run".into(),
            "set full_page_writes = on in postgresql.conf and reload".into(),
        ));
    }
    if wal_log_hints || data_checksums {
        let why = if wal_log_hints {
            "pg_rewind can work"
        } else {
            "pg_rewind can work thanks to the checksums"
        };
        Ok(format!(
            "wal_log_hints {hints}, data checksums {sums}: {why}"
        ))
    } else {
        Err((
            "wal_log_hints off and data checksums off: pg_rewind refuses to run, a failed primary \
             could only rejoin by a full pg_basebackup"
                .into(),
            "set wal_log_hints = on in postgresql.conf and restart PostgreSQL (or enable checksums: \
             pg_checksums --enable on a stopped server)"
                .into(),
        ))
    }
}

/// With `[postgres] archive_dir` configured, archiving must be on and have a
/// command; an `archive_mode` without command fills `pg_wal` until the
/// primary stops.
fn archive(archive_mode: &str, archive_command: &str, archive_dir: Option<&str>) -> Verdict {
    let mode_on = matches!(archive_mode, "on" | "always");
    match (archive_dir, mode_on, archive_command.trim().is_empty()) {
        (_, true, true) => Err((
            format!(
                "archive_mode = {archive_mode} with an empty archive_command: WAL piles up in pg_wal until the disk is full"
            ),
            "set archive_command (e.g. 'test ! -f /ARCHIVE/%f && cp %p /ARCHIVE/%f.tmp && mv /ARCHIVE/%f.tmp /ARCHIVE/%f || cmp -s %p /ARCHIVE/%f') and reload"
                .into(),
        )),
        (Some(dir), false, _) => Err((
            format!(
                "archive_mode = {archive_mode}, but pgha.toml sets archive_dir = {dir}: nothing fills that archive"
            ),
            format!(
                "set archive_mode = on and an archive_command writing to {dir} in postgresql.conf and restart, or remove archive_dir from pgha.toml"
            ),
        )),
        (None, false, _) => Ok(format!(
            "archive_mode = {archive_mode} (no archive configured)"
        )),
        (_, true, false) => Ok(format!(
            "archive_mode = {archive_mode}, archive_command set"
        )),
    }
}

/// An `archive_command` that refuses to overwrite an existing file (`test !
/// -f DIR/%f && cp %p DIR/%f`) and copies straight to the final name: when
/// the copy fails halfway (a full disk, a crash), the partial file stays,
/// every later attempt refuses it, and archiving stops for good even once
/// there is room again (`pg_wal` then fills until the primary stops).
/// Copying to a temporary name and renaming it (`mv`, atomic on one file
/// system) leaves no partial file under the final name.
fn archive_partial(archive_command: &str) -> Verdict {
    let cmd = archive_command.trim();
    let refuses_existing = cmd.contains("test ! -f") || cmd.contains("[ ! -f");
    let renames = cmd
        .split(|c: char| c.is_whitespace() || ";|&()".contains(c))
        .any(|w| matches!(w.rsplit('/').next(), Some("mv" | "rename")));
    if !refuses_existing || renames {
        return Ok("archive_command leaves no partial file under the final name".into());
    }
    let fixed = cmd
        .rsplit_once("%f")
        .map(|(head, tail)| {
            let dest = head
                .rsplit(|c: char| c.is_whitespace())
                .next()
                .unwrap_or("");
            let renamed = format!("{head}%f.tmp && mv {dest}%f.tmp {dest}%f{tail}");
            if compares(cmd) {
                renamed
            } else {
                format!("{renamed} || cmp -s %p {dest}%f")
            }
        })
        .unwrap_or_else(|| cmd.to_string());
    Err((
        format!(
            "archive_command = '{cmd}' copies straight to the final name and refuses a file that exists: a copy cut short (a full archive disk) leaves a partial file that every later attempt refuses, so archiving stops for good, even once there is room"
        ),
        format!(
            "copy to a temporary name, then rename: archive_command = '{}', then reload",
            fixed.replace('\'', "''")
        ),
    ))
}

/// Whether `cmd` compares an archived file with the one offered
/// (`cmp`, `diff`, or a checksum tool).
fn compares(cmd: &str) -> bool {
    command_words(cmd).any(|w| matches!(w, "cmp" | "diff" | "sha256sum" | "md5sum" | "b2sum"))
}

/// The words of a shell command, each as a program's base name would be
/// (`/usr/bin/scp` as `scp`), split at blanks, operators and quotes.
fn command_words(cmd: &str) -> impl Iterator<Item = &str> {
    cmd.split(|c: char| c.is_whitespace() || ";|&()`'\"{}$".contains(c))
        .filter(|w| !w.is_empty())
        .map(|w| w.rsplit('/').next().unwrap_or(w))
}

/// An `archive_command` that refuses a file already in the archive (`test
/// ! -f DIR/%f && ...`) with no fallback for an identical one: PostgreSQL
/// may offer a file again (a crash before it recorded the success), and
/// after a failover it does so as a matter of course: the WAL files
/// `pg_rewind` copies into a rejoined node carry no archive status, and
/// once that node is promoted its checkpoints offer the ones its archive
/// holds already. Each is refused, and archiving stops for good (`pg_wal`
/// fills until the primary stops; seen by the fault campaign after a few
/// dozen failovers). PostgreSQL's documentation asks for success when the
/// archived file is identical, failure when it differs: `|| cmp -s %p
/// DIR/%f` does both.
fn archive_rearchive(archive_command: &str) -> Verdict {
    let cmd = archive_command.trim();
    let Some((_, after)) = cmd
        .split_once("test ! -f")
        .or_else(|| cmd.split_once("[ ! -f"))
    else {
        return Ok("archive_command does not refuse existing files".into());
    };
    if compares(cmd) {
        return Ok("archive_command accepts a file archived before with identical contents".into());
    }
    let dest = after
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_end_matches("%f");
    Err((
        format!(
            "archive_command = '{cmd}' refuses a file the archive holds already, even an identical one: after a failover the WAL files pg_rewind copied into a rejoined node are offered again once it is the primary, each is refused, and archiving stops for good (pg_wal fills until the primary stops)"
        ),
        format!(
            "accept an identical file, as PostgreSQL's documentation asks: archive_command = '{}', then reload",
            format!("{cmd} || cmp -s %p {dest}%f").replace('\'', "''")
        ),
    ))
}

/// The `ssh`-like program in `cmd` (`ssh`, `scp`, `rsync`, `sftp`), as a
/// command word or a path ending in it.
fn remote_tool(cmd: &str) -> Option<&'static str> {
    const TOOLS: [&str; 4] = ["ssh", "scp", "rsync", "sftp"];
    command_words(cmd).find_map(|w| TOOLS.iter().find(|t| **t == w).copied())
}

/// Whether `cmd` ends in `|| exit N` (1 <= N <= 125) or `|| false`, so that
/// a failing remote copy is reported as an ordinary failure.
fn guarded(cmd: &str) -> bool {
    let Some((_, rest)) = cmd.rsplit_once("||") else {
        return false;
    };
    let rest = rest
        .trim()
        .trim_end_matches(|c: char| c.is_whitespace() || "'\";)}".contains(c))
        .trim();
    if matches!(rest, "false" | "/bin/false" | "/usr/bin/false") {
        return true;
    }
    let mut w = rest.split_whitespace();
    match (w.next(), w.next(), w.next()) {
        (Some("exit" | "return"), Some(n), None) => {
            n.parse::<u32>().is_ok_and(|n| (1..=125).contains(&n))
        }
        _ => false,
    }
}

/// A command PostgreSQL runs for WAL, whose exit status above 125 it
/// takes as fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WalCommand {
    /// `archive_command`: the archiver restarts.
    Archive,
    /// `restore_command`: the standby shuts down.
    Restore,
}

impl WalCommand {
    /// The setting's name.
    fn name(self) -> &'static str {
        match self {
            WalCommand::Archive => "archive_command",
            WalCommand::Restore => "restore_command",
        }
    }
}

/// `archive_command` or `restore_command` (`which`): flagged when it runs an
/// ssh-like program without `|| exit 1`.
fn command_safety(which: WalCommand, cmd: &str) -> Verdict {
    let name = which.name();
    let cmd = cmd.trim();
    if cmd.is_empty() {
        return Ok(format!("{name} not set"));
    }
    let Some(tool) = remote_tool(cmd) else {
        return Ok(format!("{name} runs no ssh/scp/rsync"));
    };
    if guarded(cmd) {
        return Ok(format!("{name} runs {tool}, protected by `|| exit 1`"));
    }
    let consequence = match which {
        WalCommand::Restore => "PostgreSQL takes that as fatal and shuts the standby down",
        WalCommand::Archive => {
            "PostgreSQL takes that as fatal and restarts the archiver, over and over"
        }
    };
    let fixed = if cmd.contains(';') {
        format!("{{ {cmd}; }} || exit 1")
    } else {
        format!("{cmd} || exit 1")
    };
    Err((
        format!(
            "{name} = '{cmd}' runs {tool}, which exits with 255 when its peer is down: {consequence}"
        ),
        format!(
            "end it with `|| exit 1`: {name} = '{}', then reload",
            fixed.replace('\'', "''")
        ),
    ))
}

/// With `[failover] replication_slots`, every node needs a slot per standby.
fn replication_slots(v: &str, nodes: usize) -> Verdict {
    let need = nodes.saturating_sub(1);
    match v.parse::<usize>() {
        Ok(n) if n >= need => Ok(format!(
            "max_replication_slots = {n} (at least {need} needed)"
        )),
        _ => Err((
            format!("max_replication_slots = {v}, but failover.replication_slots needs {need}"),
            format!("set max_replication_slots = {need} or more in postgresql.conf and restart"),
        )),
    }
}

fn is_on(v: &str) -> bool {
    matches!(v, "on" | "true" | "yes" | "1")
}

/// A password inside `primary_conninfo` (as `pg_basebackup -R` writes one
/// when it was given a password): replication works, but the password sits
/// in `postgresql.auto.conf`, in `pg_settings` for every superuser and in
/// any log that quotes the setting. `None` when there is none.
fn conninfo_password(primary_conninfo: Option<&str>) -> Option<(String, String)> {
    let c = primary_conninfo.filter(|c| crate::text::has_password(c))?;
    Some((
        format!(
            "WARNING: primary_conninfo carries a password ({})",
            crate::text::mask_secrets(c)
        ),
        "remove password= from primary_conninfo and put the password in a .pgpass of the \
         postgres user on the standby (mode 0600), or name one with passfile=... in \
         primary_conninfo"
            .to_string(),
    ))
}

/// A standby's `restore_command` must fetch from the node it follows:
/// one still naming another backend (the old primary, after a failover
/// the classic recipe's scripts never repointed) can never catch up once
/// its upstream has recycled the WAL it needs.
fn restore_source(
    restore_command: &str,
    nodes: &[Node],
    upstream: Option<&Node>,
    template: Option<&str>,
) -> Verdict {
    let Some(up) = upstream else {
        return Ok("no upstream to compare restore_command with".into());
    };
    match crate::restore::retarget(restore_command, template, nodes, up) {
        crate::restore::Retarget::Keep => Ok(format!(
            "restore_command fetches from the archive of node {} it follows, or from no backend",
            up.id
        )),
        crate::restore::Retarget::Set(want) => Err((
            if crate::restore::unpaused(restore_command).is_some() {
                format!(
                    "restore_command '{restore_command}' was left paused by an interrupted pgha run: this standby fetches nothing from any archive"
                )
            } else {
                format!(
                    "restore_command '{restore_command}' does not fetch from the archive of {}, which this standby follows",
                    up.label()
                )
            },
            format!(
                "ALTER SYSTEM SET restore_command = '{}'; SELECT pg_reload_conf(); (pgha-follow does this too)",
                want.replace('\'', "''")
            ),
        )),
        crate::restore::Retarget::Ambiguous(why) => {
            Err((why, "set [postgres] restore_command in pgha.toml".into()))
        }
    }
}

/// The settings findings of one node.
pub(crate) fn findings(
    topo: &Topology,
    node: &Node,
    facts: &Result<SqlFacts, String>,
) -> Vec<Finding> {
    let here = subject(node);
    let f = match facts {
        Ok(f) => f,
        Err(_) => {
            return vec![Finding::fail(
                "settings",
                &here,
                format!(
                    "settings of {} not checked: cannot log in (see check login {here})",
                    node.label()
                ),
                "fix the login first",
            )];
        }
    };
    let mut out: Vec<Finding> = verdicts(topo, f)
        .into_iter()
        .map(|(check, v)| match v {
            Ok(m) => Finding::pass(check, &here, format!("{}: {m}", node.label())),
            Err((m, fix)) => Finding::fail(check, &here, format!("{}: {m}", node.label()), fix),
        })
        .collect();
    // A warning, not a failure: failover works, the secret is exposed.
    if let Some((m, fix)) = conninfo_password(f.state.primary_conninfo.as_deref()) {
        let mut w = Finding::pass("primary_conninfo", &here, format!("{}: {m}", node.label()));
        w.fix = Some(fix);
        out.push(w);
    }
    out
}

/// Every decision about one node's settings, by check name.
fn verdicts(topo: &Topology, f: &SqlFacts) -> Vec<(&'static str, Verdict)> {
    let get = |k: &str| f.settings.get(k).map(String::as_str).unwrap_or("");
    let nodes = topo.nodes.len();
    let archive_dir = topo
        .config
        .postgres
        .archive_dir
        .as_ref()
        .and_then(|p| p.to_str());
    let mut verdicts = vec![
        ("wal_level", wal_level(get("wal_level"))),
        ("hot_standby", hot_standby(get("hot_standby"))),
        (
            "max_wal_senders",
            max_wal_senders(get("max_wal_senders"), nodes),
        ),
        (
            "rewind",
            rewind(
                f.state.wal_log_hints,
                f.state.data_checksums,
                is_on(get("full_page_writes")),
            ),
        ),
        (
            "archive_mode",
            archive(get("archive_mode"), get("archive_command"), archive_dir),
        ),
        (
            "archive_command",
            command_safety(WalCommand::Archive, get("archive_command")),
        ),
        ("archive_partial", archive_partial(get("archive_command"))),
        (
            "archive_rearchive",
            archive_rearchive(get("archive_command")),
        ),
        (
            "restore_command",
            command_safety(
                WalCommand::Restore,
                crate::restore::original(get("restore_command")),
            ),
        ),
    ];
    if f.state.in_recovery {
        let upstream = crate::cluster::configured_upstream(topo, &f.state)
            .and_then(|id| topo.nodes.iter().find(|n| n.id == id));
        verdicts.push((
            "restore_source",
            restore_source(
                &f.state.restore_command,
                &topo.nodes,
                upstream,
                topo.config.postgres.restore_command.as_deref(),
            ),
        ));
    }
    if topo.config.failover.replication_slots {
        verdicts.push((
            "replication_slots",
            replication_slots(get("max_replication_slots"), nodes),
        ));
    }
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nodes 0 and 1 on 127.0.0.2 and 127.0.0.3.
    fn two_nodes() -> [Node; 2] {
        let n = |id: u32, h: &str| Node {
            id,
            host: h.into(),
            port: 5432,
            data_dir: None,
            ssh_host: h.into(),
            replication_host: h.into(),
            application_name: None,
        };
        [n(0, "127.0.0.2"), n(1, "127.0.0.3")]
    }

    #[test]
    fn a_restore_command_must_fetch_from_the_upstream() {
        let nodes = two_nodes();
        let ok = restore_source(
            "scp 127.0.0.3:/a/%f %p || exit 1",
            &nodes,
            Some(&nodes[1]),
            None,
        );
        assert!(ok.is_ok(), "{ok:?}");
        assert!(restore_source("cp /a/%f %p", &nodes, Some(&nodes[1]), None).is_ok());
        let (m, fix) = restore_source(
            "scp 127.0.0.2:/a/%f %p || exit 1",
            &nodes,
            Some(&nodes[1]),
            None,
        )
        .unwrap_err();
        assert!(
            m.contains("does not fetch from the archive of node 1"),
            "{m}"
        );
        assert!(
            fix.contains("ALTER SYSTEM SET restore_command = 'scp 127.0.0.3:/a/%f %p || exit 1'"),
            "{fix}"
        );
    }

    #[test]
    fn a_paused_restore_command_is_named_with_its_original() {
        let nodes = two_nodes();
        let paused = crate::restore::paused("scp 127.0.0.3:/a/%f %p || exit 1");
        let (m, fix) = restore_source(&paused, &nodes, Some(&nodes[1]), None).unwrap_err();
        assert!(m.contains("left paused by an interrupted pgha run"), "{m}");
        assert!(
            fix.contains("ALTER SYSTEM SET restore_command = 'scp 127.0.0.3:/a/%f %p || exit 1'"),
            "{fix}"
        );
        let safe = command_safety(WalCommand::Restore, crate::restore::original(&paused));
        assert!(safe.is_ok(), "judged by its original: {safe:?}");
    }

    #[test]
    fn passwords_in_primary_conninfo_are_warned_about_masked() {
        let (m, fix) =
            conninfo_password(Some("user=repl password=s3cret host=127.0.0.2 port=5432")).unwrap();
        assert!(
            m.starts_with("WARNING: primary_conninfo carries a password"),
            "{m}"
        );
        assert!(!m.contains("s3cret"), "{m}");
        assert!(fix.contains("passfile"), "{fix}");
        assert!(conninfo_password(Some("user=repl passfile=/p host=h")).is_none());
        assert!(conninfo_password(None).is_none());
    }

    #[test]
    fn rewind_needs_hints_or_checksums() {
        // The lab runs with both; these are the combinations it cannot show.
        assert!(rewind(true, true, true).is_ok());
        assert_eq!(
            rewind(false, true, true).unwrap(),
            "wal_log_hints off, data checksums on: pg_rewind can work thanks to the checksums"
        );
        assert!(
            rewind(true, false, true)
                .unwrap()
                .contains("wal_log_hints on, data checksums off")
        );
        let (m, fix) = rewind(false, false, true).unwrap_err();
        assert!(
            m.starts_with("wal_log_hints off and data checksums off"),
            "{m}"
        );
        assert!(fix.starts_with("set wal_log_hints = on"), "{fix}");
        let (m, _) = rewind(true, true, false).unwrap_err();
        assert!(m.contains("full_page_writes = off"));
    }

    #[test]
    fn replication_settings() {
        assert!(wal_level("replica").is_ok());
        assert!(wal_level("logical").is_ok());
        assert!(
            wal_level("minimal")
                .unwrap_err()
                .1
                .contains("wal_level = replica")
        );
        assert!(hot_standby("on").is_ok());
        assert!(hot_standby("off").is_err());
        assert!(max_wal_senders("10", 3).is_ok());
        assert!(max_wal_senders("2", 3).is_ok());
        let (m, fix) = max_wal_senders("1", 3).unwrap_err();
        assert!(m.contains("must serve 2 standbys"), "{m}");
        assert!(fix.contains("max_wal_senders = 3"), "{fix}");
        assert!(max_wal_senders("x", 3).is_err());
        assert!(replication_slots("10", 3).is_ok());
        assert!(replication_slots("1", 3).is_err());
    }

    #[test]
    fn archive_settings() {
        assert!(archive("on", "cp %p /a/%f", Some("/a")).is_ok());
        assert!(archive("always", "cp %p /a/%f", Some("/a")).is_ok());
        assert!(archive("off", "", None).is_ok());
        let (m, _) = archive("on", "", None).unwrap_err();
        assert!(m.contains("empty archive_command"), "{m}");
        let (m, fix) = archive("off", "", Some("/a")).unwrap_err();
        assert!(m.contains("archive_dir = /a"), "{m}");
        assert!(fix.contains("archive_mode = on"), "{fix}");
    }

    #[test]
    fn remote_copies_need_exit_1() {
        let (m, fix) = command_safety(WalCommand::Restore, "scp pg1:/archive/%f %p").unwrap_err();
        assert!(m.contains("runs scp, which exits with 255"), "{m}");
        assert!(m.contains("shuts the standby down"), "{m}");
        assert_eq!(
            fix,
            "end it with `|| exit 1`: restore_command = 'scp pg1:/archive/%f %p || exit 1', then reload"
        );
        assert!(command_safety(WalCommand::Restore, "scp pg1:/a/%f %p || exit 1").is_ok());
        assert!(
            command_safety(
                WalCommand::Restore,
                "/usr/bin/rsync -a pg1:/a/%f %p||exit 1"
            )
            .is_ok()
        );
        assert!(command_safety(WalCommand::Restore, "scp pg1:/a/%f %p || false").is_ok());
        assert!(command_safety(WalCommand::Restore, "sh -c 'scp a %p || exit 1'").is_ok());
        // Exit codes above 125 are as fatal as 255; `|| true` lies.
        assert!(command_safety(WalCommand::Restore, "scp a %p || exit 255").is_err());
        assert!(command_safety(WalCommand::Restore, "scp a %p || true").is_err());
        assert!(command_safety(WalCommand::Restore, "scp a %p || exit").is_err());
        // The guard must be at the end: an earlier `||` protects nothing.
        assert!(
            command_safety(
                WalCommand::Archive,
                "test -f x || exit 1; ssh h cat > /a/%f"
            )
            .is_err()
        );
        let (_, fix) =
            command_safety(WalCommand::Archive, "test ! -f /a/%f; scp %p h:/a/%f").unwrap_err();
        assert!(
            fix.contains("'{ test ! -f /a/%f; scp %p h:/a/%f; } || exit 1'"),
            "{fix}"
        );
        // Local copies and scripts without remote tools are fine; names
        // merely containing a tool's letters are not tools.
        assert!(command_safety(WalCommand::Archive, "test ! -f /a/%f && cp %p /a/%f").is_ok());
    }

    #[test]
    fn an_archive_command_that_refuses_an_identical_file_is_flagged() {
        let cmd = "test ! -f /a/%f && cp %p /a/%f.tmp && mv /a/%f.tmp /a/%f";
        let (problem, fix) = archive_rearchive(cmd).unwrap_err();
        assert!(
            problem.contains("stops for good") && problem.contains("pg_rewind"),
            "{problem}"
        );
        assert!(
            fix.contains(
                "'test ! -f /a/%f && cp %p /a/%f.tmp && mv /a/%f.tmp /a/%f || cmp -s %p /a/%f'"
            ),
            "{fix}"
        );
        let (_, fix) = archive_rearchive("[ ! -f /b/%f ] && cp %p /b/%f").unwrap_err();
        assert!(fix.contains("|| cmp -s %p /b/%f'"), "{fix}");
        for fine in [
            "test ! -f /a/%f && cp %p /a/%f.tmp && mv /a/%f.tmp /a/%f || cmp -s %p /a/%f",
            "cp %p /a/%f",
            "",
            "pgbackrest --stanza=main archive-push %p",
            "/usr/local/bin/archive.sh %p %f",
        ] {
            assert!(archive_rearchive(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn an_archive_command_that_can_leave_a_partial_file_is_flagged() {
        let (problem, fix) = archive_partial("test ! -f /a/%f && cp %p /a/%f").unwrap_err();
        assert!(problem.contains("stops for good"), "{problem}");
        assert!(
            fix.contains(
                "'test ! -f /a/%f && cp %p /a/%f.tmp && mv /a/%f.tmp /a/%f || cmp -s %p /a/%f'"
            ),
            "{fix}"
        );
        // The fix is one no other check flags.
        let fixed = "test ! -f /a/%f && cp %p /a/%f.tmp && mv /a/%f.tmp /a/%f || cmp -s %p /a/%f";
        assert!(archive_rearchive(fixed).is_ok());
        for fine in [
            "test ! -f /a/%f && cp %p /a/%f.tmp && mv /a/%f.tmp /a/%f",
            "cp %p /a/%f",
            "",
            "pgbackrest --stanza=main archive-push %p",
        ] {
            assert!(archive_partial(fine).is_ok(), "{fine}");
        }
        assert!(command_safety(WalCommand::Archive, "/usr/local/bin/sshelper %p").is_ok());
        assert!(
            command_safety(WalCommand::Restore, "")
                .unwrap()
                .contains("not set")
        );
        // Quotes in the command are doubled in the suggested setting.
        let (_, fix) = command_safety(WalCommand::Restore, "ssh h 'cat /a/%f' > %p").unwrap_err();
        assert!(fix.contains("ssh h ''cat /a/%f'' > %p || exit 1"), "{fix}");
        assert_eq!(remote_tool("env X=1 /usr/bin/ssh -q h"), Some("ssh"));
        assert_eq!(remote_tool("$(which scp) a b"), Some("scp"));
    }
}
