//! `postgresql.conf`-style text: read a setting as the server does, and
//! rewrite one as `ALTER SYSTEM` writes `postgresql.auto.conf`; the
//! settings that make a data directory start as a standby; and
//! `primary_conninfo` text (the one a standby needs to follow a primary,
//! written as libpq reads it, in `recovery.conf` before 12). Pure.

use std::collections::BTreeMap;

use crate::cluster::Node;
use crate::postgres;

/// A `postgresql.conf`-style value: single-quoted with `''` or `\'` for a
/// quote, or a bare word ending at whitespace or `#`.
fn parse_conf_value(v: &str) -> String {
    let v = v.trim_start();
    let mut out = String::new();
    if let Some(rest) = v.strip_prefix('\'') {
        let mut it = rest.chars().peekable();
        while let Some(c) = it.next() {
            match c {
                '\'' if it.peek() == Some(&'\'') => {
                    it.next();
                    out.push('\'');
                }
                '\'' => break,
                '\\' => {
                    if let Some(n) = it.next() {
                        out.push(n);
                    }
                }
                c => out.push(c),
            }
        }
    } else {
        out = v
            .split(|c: char| c.is_whitespace() || c == '#')
            .next()
            .unwrap_or("")
            .to_string();
    }
    out
}

/// If `line` sets `key` (case-insensitive, `key = value` or `key value`),
/// the raw value text.
fn conf_line_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let l = line.trim_start();
    let head = l.get(..key.len())?;
    if !head.eq_ignore_ascii_case(key) {
        return None;
    }
    let rest = &l[key.len()..];
    let rest_trim = rest.trim_start();
    if let Some(v) = rest_trim.strip_prefix('=') {
        Some(v)
    } else if rest.starts_with(char::is_whitespace) && !rest_trim.is_empty() {
        Some(rest_trim)
    } else {
        None
    }
}

/// The value `key` gets in a `postgresql.conf`-style text (the last
/// setting wins, as in the server).
pub(crate) fn conf_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .rev()
        .find_map(|l| conf_line_value(l, key))
        .map(parse_conf_value)
}

/// `text` with every setting of `key` removed and `key = 'value'` appended
/// (quotes doubled), as `ALTER SYSTEM` writes `postgresql.auto.conf`.
pub(crate) fn set_conf(text: &str, key: &str, value: &str) -> String {
    let mut out: Vec<&str> = text
        .lines()
        .filter(|l| conf_line_value(l, key).is_none())
        .collect();
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    let line = format!("{key} = '{}'", value.replace('\'', "''"));
    let mut s = out.join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    s.push_str(&line);
    s.push('\n');
    s
}

/// The settings that make a stopped data directory start as a standby of
/// `conninfo`'s server, applied to the text of `postgresql.auto.conf`
/// (12+) or `recovery.conf` (before 12, which also needs
/// `standby_mode`).
pub(crate) fn standby_settings(
    text: &str,
    conninfo: &str,
    restore_command: Option<&str>,
    slot: Option<&str>,
    version_num: u32,
) -> String {
    let mut t = set_conf(text, "primary_conninfo", conninfo);
    if let Some(r) = restore_command {
        t = set_conf(&t, "restore_command", r);
    }
    if let Some(s) = slot {
        t = set_conf(&t, "primary_slot_name", s);
    }
    if version_num < 120000 {
        t = set_conf(&t, "standby_mode", "on");
        t = set_conf(&t, "recovery_target_timeline", "latest");
    }
    t
}

/// The `primary_conninfo` a standby needs to follow `primary`: its current
/// one with host and port replaced, so that everything else the operator
/// set (user, passfile, sslmode, application_name) is kept.
pub(crate) fn follow_conninfo(
    current: Option<&str>,
    primary: &Node,
    replication_user: &str,
    application_name: Option<&str>,
) -> String {
    let mut kv: BTreeMap<String, String> =
        current.map(postgres::parse_conninfo).unwrap_or_default();
    kv.remove("hostaddr");
    kv.insert("host".into(), primary.replication_host.clone());
    kv.insert("port".into(), primary.port.to_string());
    kv.entry("user".into())
        .or_insert_with(|| replication_user.to_string());
    if let Some(a) = application_name {
        kv.entry("application_name".into())
            .or_insert_with(|| a.to_string());
    }
    format_conninfo(&kv)
}

/// libpq `key=value` syntax, every value single-quoted with `\` escapes.
pub(crate) fn format_conninfo(kv: &BTreeMap<String, String>) -> String {
    // host and port first: it reads better in logs.
    let mut keys: Vec<&String> = kv.keys().collect();
    keys.sort_by_key(|k| match k.as_str() {
        "host" => 0,
        "port" => 1,
        "user" => 2,
        _ => 3,
    });
    keys.iter()
        .map(|k| {
            let v = kv[*k].replace('\\', "\\\\").replace('\'', "\\'");
            format!("{k}='{v}'")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a conninfo already points at `primary`.
pub(crate) fn points_at(conninfo: Option<&str>, primary: &Node) -> bool {
    let Some(c) = conninfo else { return false };
    let kv = postgres::parse_conninfo(c);
    let host_ok = kv
        .get("host")
        .or_else(|| kv.get("hostaddr"))
        .is_some_and(|h| primary.addresses().contains(&h.as_str()));
    let port_ok = kv.get("port").map_or(primary.port == 5432, |p| {
        p.parse::<u16>().ok() == Some(primary.port)
    });
    host_ok && port_ok
}

/// Rewrite `recovery.conf` text (servers before 12) to a new
/// `primary_conninfo`, keeping every other line.
pub(crate) fn rewrite_recovery_conf(text: &str, conninfo: &str) -> String {
    let quoted = conninfo.replace('\'', "''");
    let line = format!("primary_conninfo = '{quoted}'");
    let mut out = Vec::new();
    let mut done = false;
    for l in text.lines() {
        let key = l.trim_start().split(['=', ' ', '\t']).next().unwrap_or("");
        if key == "primary_conninfo" {
            if !done {
                out.push(line.clone());
                done = true;
            }
        } else {
            out.push(l.to_string());
        }
    }
    if !done {
        out.push(line);
    }
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_values_and_rewrites() {
        let auto = "# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\nprimary_conninfo = 'user=repl passfile=''/var/lib/postgresql/.pgpass'' host=127.0.0.102 port=5432'\nwal_log_hints = 'off'\n";
        assert_eq!(
            conf_value(auto, "primary_conninfo").as_deref(),
            Some("user=repl passfile='/var/lib/postgresql/.pgpass' host=127.0.0.102 port=5432")
        );
        assert_eq!(conf_value(auto, "wal_log_hints").as_deref(), Some("off"));
        assert_eq!(conf_value(auto, "primary_slot_name"), None);
        assert_eq!(
            conf_value("Port 5433 # c\nport=5434\n", "port").as_deref(),
            Some("5434")
        );
        assert_eq!(conf_value("x = 'it\\'s'\n", "x").as_deref(), Some("it's"));
        // A longer key with the same prefix is another setting.
        assert_eq!(
            conf_value("primary_conninfo_x = 'a'\n", "primary_conninfo"),
            None
        );

        let new = set_conf(auto, "primary_conninfo", "host='127.0.0.103' user='repl'");
        assert!(new.starts_with("# Do not edit"), "{new}");
        assert_eq!(new.matches("primary_conninfo").count(), 1, "{new}");
        assert!(
            new.ends_with("primary_conninfo = 'host=''127.0.0.103'' user=''repl'''\n"),
            "{new}"
        );
        assert!(new.contains("wal_log_hints = 'off'\n"));
        assert_eq!(
            conf_value(&new, "primary_conninfo").as_deref(),
            Some("host='127.0.0.103' user='repl'")
        );
        assert_eq!(set_conf("", "a", "b"), "a = 'b'\n");
    }

    #[test]
    fn standby_settings_by_version() {
        let t = standby_settings("", "host=x", None, Some("pg2"), 150000);
        let r = standby_settings("", "host=x", Some("scp h:/a/%f %p"), None, 150000);
        assert_eq!(
            conf_value(&r, "restore_command").as_deref(),
            Some("scp h:/a/%f %p")
        );
        assert_eq!(
            t,
            "primary_conninfo = 'host=x'\nprimary_slot_name = 'pg2'\n"
        );
        let old = standby_settings(
            "restore_command = 'cp /a/%f %p'\nstandby_mode = off\n",
            "host=x",
            None,
            None,
            110005,
        );
        assert_eq!(conf_value(&old, "standby_mode").as_deref(), Some("on"));
        assert_eq!(
            conf_value(&old, "recovery_target_timeline").as_deref(),
            Some("latest")
        );
        assert_eq!(
            conf_value(&old, "restore_command").as_deref(),
            Some("cp /a/%f %p")
        );
        assert_eq!(old.matches("standby_mode").count(), 1);
    }
}
