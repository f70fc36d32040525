//! `synchronous_standby_names`, read as a promise: which standbys hold every
//! commit the primary acknowledged, and whether a new primary's setting can
//! be met by the standbys left. Pure text and counting, no I/O.
//!
//! PostgreSQL acknowledges a commit (with `synchronous_commit` `on`,
//! `remote_apply` or `remote_write`) only once `k` of the listed standbys
//! confirmed it, for `ANY k (...)` as for `FIRST k (...)` (the first `k`
//! connected by priority are still `k` of the list). So the latest
//! acknowledged commit is on at least `k` of the `L` listed standbys, and
//! as soon as `L - k + 1` of them are seen, the most advanced of those holds
//! it, and everything before it.

use std::fmt;

/// `FIRST` (priority) or `ANY` (quorum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    First,
    Any,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Method::First => "FIRST",
            Method::Any => "ANY",
        })
    }
}

/// A parsed, non-empty `synchronous_standby_names`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRule {
    pub method: Method,
    /// How many listed standbys must confirm a commit.
    pub k: u32,
    /// The names as written (quotes removed); `*` matches any standby.
    pub names: Vec<String>,
    /// The setting as read, for messages.
    pub raw: String,
}

impl SyncRule {
    /// Parses the setting; `Ok(None)` when it is empty (asynchronous).
    /// Accepts every form PostgreSQL does: `FIRST k (list)`, `ANY k
    /// (list)`, `k (list)` (FIRST) and a bare `list` (FIRST 1).
    pub fn parse(raw: &str) -> Result<Option<SyncRule>, String> {
        let s = raw.trim();
        if s.is_empty() {
            return Ok(None);
        }
        let bad = |why: &str| format!("synchronous_standby_names {raw:?}: {why}");
        let (method, rest) = match first_word(s) {
            Some((w, rest)) if w.eq_ignore_ascii_case("first") && starts_number(rest) => {
                (Method::First, rest)
            }
            Some((w, rest)) if w.eq_ignore_ascii_case("any") && starts_number(rest) => {
                (Method::Any, rest)
            }
            _ => (Method::First, s),
        };
        let rest = rest.trim_start();
        let (k, list) = if starts_number(rest) {
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let k: u32 = rest[..end].parse().map_err(|_| bad("number too large"))?;
            let list = rest[end..].trim();
            let inner = list
                .strip_prefix('(')
                .and_then(|l| l.strip_suffix(')'))
                .ok_or_else(|| bad("expected a parenthesised list of names after the number"))?;
            (k, inner)
        } else {
            (1, rest)
        };
        if k == 0 {
            return Err(bad("the number of synchronous standbys must be at least 1"));
        }
        let names = split_names(list).map_err(|e| bad(&e))?;
        if names.is_empty() {
            return Err(bad("no standby names"));
        }
        Ok(Some(SyncRule {
            method,
            k,
            names,
            raw: s.to_string(),
        }))
    }

    /// Whether a standby called `name` is one of the listed.
    pub fn lists(&self, name: &str) -> bool {
        self.names
            .iter()
            .any(|n| n == "*" || n.eq_ignore_ascii_case(name))
    }

    /// The same rule with `k` standbys required, as a setting value.
    pub fn with_k(&self, k: u32) -> String {
        let list: Vec<String> = self.names.iter().map(|n| quote_name(n)).collect();
        format!("{} {k} ({})", self.method, list.join(", "))
    }
}

/// A node as far as synchronous replication cares: its name (the
/// `application_name` its WAL receiver uses, `backend_application_nameN`)
/// and whether pgha saw it as a standby with its WAL position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member<'a> {
    pub id: u32,
    pub name: Option<&'a str>,
    pub seen_standby: bool,
}

/// Whether the standbys pgha saw must include one holding every commit
/// the old primary acknowledged under `rule`. `failed` is the old
/// primary's name (its own entry in the list does not count: it was not
/// its own standby); `members` are every other backend. The text says
/// what was counted, for the operator.
pub fn holds_every_ack(
    rule: &SyncRule,
    failed: Option<&str>,
    members: &[Member],
) -> (bool, String) {
    let listed = listed_standbys(rule, failed, members);
    let total = listed.len() as u32;
    let names = |seen: bool| -> Vec<&str> {
        listed
            .iter()
            .filter(|(_, s)| *s == seen)
            .map(|(n, _)| n.as_str())
            .collect()
    };
    let (seen, unseen) = (names(true), names(false));
    let needed = (total + 1).saturating_sub(rule.k);
    let all: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    let promise = if total < rule.k {
        format!(
            "synchronous_standby_names = '{}' lists {total} standby(s) besides the old primary, fewer than {}: no commit could be acknowledged after they were missing",
            rule.raw, rule.k
        )
    } else {
        format!(
            "synchronous_standby_names = '{}': every acknowledged commit is on at least {} of {}",
            rule.raw,
            rule.k,
            all.join(", ")
        )
    };
    let proven = seen.len() as u32 >= needed;
    let text = match (proven, seen.is_empty()) {
        (true, empty) => format!(
            "{promise}; pgha sees {} of them ({}), enough to be sure",
            seen.len(),
            if empty {
                "none needed".to_string()
            } else {
                seen.join(", ")
            }
        ),
        (false, empty) => format!(
            "{promise}; pgha sees only {} ({}) and must see {needed} to be sure; not seen: {}",
            seen.len(),
            if empty {
                "none".to_string()
            } else {
                seen.join(", ")
            },
            unseen.join(", ")
        ),
    };
    (proven, text)
}

/// The standbys `rule` lists, each with whether pgha saw it as a standby:
/// every other backend for `*`, else each listed name but the old
/// primary's (a name no backend has still counts: a standby pgpool does
/// not know may hold the commit).
fn listed_standbys(
    rule: &SyncRule,
    failed: Option<&str>,
    members: &[Member],
) -> Vec<(String, bool)> {
    if rule.names.iter().any(|n| n == "*") {
        return members
            .iter()
            .map(|m| {
                let label = m
                    .name
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("node {}", m.id));
                (label, m.seen_standby)
            })
            .collect();
    }
    let mut listed: Vec<(String, bool)> = Vec::new();
    for n in &rule.names {
        let is_failed = failed.is_some_and(|f| f.eq_ignore_ascii_case(n));
        if is_failed || listed.iter().any(|(l, _)| l.eq_ignore_ascii_case(n)) {
            continue;
        }
        let seen = members
            .iter()
            .any(|m| m.seen_standby && m.name.is_some_and(|mn| mn.eq_ignore_ascii_case(n)));
        listed.push((n.clone(), seen));
    }
    listed
}

/// What the new primary's own `synchronous_standby_names` means for
/// writes once it is promoted and `live` (the names of the standbys that
/// will stream from it) follow.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum SyncAfter {
    /// Asynchronous, or the live standbys can confirm commits.
    Satisfied,
    /// Commits would block: change the setting to `to`.
    Relax {
        from: String,
        to: String,
        why: String,
    },
    /// Commits block and the policy keeps it so.
    Blocks { setting: String, why: String },
}

/// Whether commits under `setting` (a primary's
/// `synchronous_standby_names`) may wait for the standby called `name`:
/// never when asynchronous; when the rule lists it (or `*`), or the name is
/// unknown, or the setting does not parse (in doubt, it may).
pub fn may_confirm(setting: &str, name: Option<&str>) -> bool {
    match SyncRule::parse(setting) {
        Ok(None) => false,
        Ok(Some(rule)) => name.is_none_or(|n| rule.lists(n)),
        Err(_) => true,
    }
}

/// How many of `live` the rule would count, and what to do if too few.
pub fn after_promotion(
    rule: &SyncRule,
    new_primary: Option<&str>,
    live: &[&str],
    relax: bool,
) -> SyncAfter {
    let count = live
        .iter()
        .filter(|n| rule.lists(n) && !new_primary.is_some_and(|p| p.eq_ignore_ascii_case(n)))
        .count() as u32;
    if count >= rule.k {
        return SyncAfter::Satisfied;
    }
    let why = format!(
        "synchronous_standby_names = '{}' needs {} confirming standby(s) and only {count} listed standby will stream from the new primary{}",
        rule.raw,
        rule.k,
        if live.is_empty() {
            String::new()
        } else {
            format!(" (of {})", live.join(", "))
        }
    );
    if !relax {
        return SyncAfter::Blocks {
            setting: rule.raw.clone(),
            why,
        };
    }
    SyncAfter::Relax {
        from: rule.raw.clone(),
        to: if count == 0 {
            String::new()
        } else {
            rule.with_k(count)
        },
        why,
    }
}

fn first_word(s: &str) -> Option<(&str, &str)> {
    let end = s.find(|c: char| !c.is_ascii_alphabetic())?;
    (end > 0).then(|| (&s[..end], &s[end..]))
}

fn starts_number(s: &str) -> bool {
    s.trim_start().starts_with(|c: char| c.is_ascii_digit())
}

fn split_names(list: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut chars = list.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&c) = chars.peek() else { break };
        let mut name = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        name.push('"');
                    }
                    Some('"') => break,
                    Some(c) => name.push(c),
                    None => return Err("unterminated quoted name".into()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                name.push(c);
                chars.next();
            }
        }
        if name.is_empty() {
            return Err("empty standby name".into());
        }
        names.push(name);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            Some(',') | None => {}
            Some(c) => return Err(format!("unexpected {c:?} after a name")),
        }
    }
    Ok(names)
}

fn quote_name(n: &str) -> String {
    if n == "*"
        || n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && n.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
    {
        n.to_string()
    } else {
        format!("\"{}\"", n.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> SyncRule {
        SyncRule::parse(s).unwrap().unwrap()
    }

    #[test]
    fn every_form_parses() {
        assert_eq!(SyncRule::parse("").unwrap(), None);
        assert_eq!(SyncRule::parse("  ").unwrap(), None);
        let r = rule("ANY 1 (pg1, pg2)");
        assert_eq!(
            (r.method, r.k, r.names.clone()),
            (Method::Any, 1, vec!["pg1".into(), "pg2".into()])
        );
        let r = rule("first 2 (a,\"B c\", *)");
        assert_eq!((r.method, r.k), (Method::First, 2));
        assert_eq!(r.names, ["a", "B c", "*"]);
        let r = rule("2 (s1, s2, s3)");
        assert_eq!((r.method, r.k, r.names.len()), (Method::First, 2, 3));
        let r = rule("s1, s2");
        assert_eq!((r.method, r.k, r.names.len()), (Method::First, 1, 2));
        // A standby may be called "any" or "first".
        let r = rule("any");
        assert_eq!(
            (r.method, r.k, r.names.clone()),
            (Method::First, 1, vec!["any".into()])
        );
        assert!(SyncRule::parse("ANY 0 (a)").is_err());
        assert!(SyncRule::parse("ANY 1 a, b").is_err());
        assert!(SyncRule::parse("ANY 1 (\"a)").is_err());
        assert!(SyncRule::parse("a b").is_err());
    }

    #[test]
    fn names_match_case_insensitively_and_star_matches_all() {
        let r = rule("ANY 1 (PG1, pg2)");
        assert!(r.lists("pg1") && r.lists("Pg2") && !r.lists("pg3"));
        assert!(rule("*").lists("anything"));
        assert_eq!(
            rule("any 1 (pg1, \"Pg 2\")").with_k(2),
            "ANY 2 (pg1, \"Pg 2\")"
        );
    }

    fn m(id: u32, name: &'static str, seen: bool) -> Member<'static> {
        Member {
            id,
            name: Some(name),
            seen_standby: seen,
        }
    }

    #[test]
    fn quorum_of_one_needs_every_listed_standby_seen() {
        // ANY 1 (pg0, pg1, pg2) with pg0 the failed primary: a commit is on
        // pg1 or pg2; both must be seen.
        let r = rule("ANY 1 (pg0, pg1, pg2)");
        let (ok, why) = holds_every_ack(&r, Some("pg0"), &[m(1, "pg1", true), m(2, "pg2", true)]);
        assert!(ok, "{why}");
        let (ok, why) = holds_every_ack(&r, Some("pg0"), &[m(1, "pg1", true), m(2, "pg2", false)]);
        assert!(!ok);
        assert!(
            why.contains("not seen: pg2") && why.contains("at least 1 of pg1, pg2"),
            "{why}"
        );
    }

    #[test]
    fn quorum_of_two_of_three_needs_two_seen() {
        let r = rule("ANY 2 (s1, s2, s3)");
        let ms = [m(1, "s1", true), m(2, "s2", true), m(3, "s3", false)];
        assert!(holds_every_ack(&r, Some("s0"), &ms).0);
        let ms = [m(1, "s1", true), m(2, "s2", false), m(3, "s3", false)];
        assert!(!holds_every_ack(&r, Some("s0"), &ms).0);
        // FIRST k counts the same way.
        let r = rule("FIRST 2 (s1, s2, s3)");
        let ms = [m(1, "s1", false), m(2, "s2", true), m(3, "s3", true)];
        assert!(holds_every_ack(&r, Some("s0"), &ms).0);
    }

    #[test]
    fn a_listed_name_no_backend_has_counts_as_unseen() {
        let r = rule("ANY 1 (pg1, elsewhere)");
        let (ok, why) = holds_every_ack(&r, Some("pg0"), &[m(1, "pg1", true)]);
        assert!(!ok);
        assert!(why.contains("not seen: elsewhere"), "{why}");
    }

    #[test]
    fn star_lists_every_other_backend() {
        let r = rule("ANY 1 (*)");
        assert!(holds_every_ack(&r, Some("pg0"), &[m(1, "pg1", true), m(2, "pg2", true)]).0);
        assert!(!holds_every_ack(&r, Some("pg0"), &[m(1, "pg1", true), m(2, "pg2", false)]).0);
    }

    #[test]
    fn fewer_listed_than_required_is_trivially_proven() {
        // ANY 2 (pg0, pg1) with pg0 failed: no commit was ever acknowledged
        // without two standbys, and only one is listed.
        let (ok, why) = holds_every_ack(
            &rule("ANY 2 (pg0, pg1)"),
            Some("pg0"),
            &[m(1, "pg1", false)],
        );
        assert!(ok, "{why}");
    }

    #[test]
    fn after_promotion_keeps_relaxes_or_blocks() {
        let r = rule("ANY 1 (pg0, pg1, pg2)");
        assert_eq!(
            after_promotion(&r, Some("pg1"), &["pg2"], true),
            SyncAfter::Satisfied
        );
        // One standby, synchronous everywhere: the new primary pg1 would
        // wait for pg0, which is gone.
        let r = rule("ANY 1 (pg0, pg1)");
        match after_promotion(&r, Some("pg1"), &[], true) {
            SyncAfter::Relax { to, why, .. } => {
                assert_eq!(to, "");
                assert!(why.contains("only 0 listed standby"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            after_promotion(&r, Some("pg1"), &[], false),
            SyncAfter::Blocks { .. }
        ));
        // Two required, one left: require one.
        let r = rule("FIRST 2 (a, b, c)");
        match after_promotion(&r, Some("a"), &["b"], true) {
            SyncAfter::Relax { to, .. } => assert_eq!(to, "FIRST 1 (a, b, c)"),
            other => panic!("{other:?}"),
        }
        // A live standby the rule does not list does not count.
        let r = rule("ANY 1 (pg0)");
        assert!(matches!(
            after_promotion(&r, Some("pg1"), &["pg2"], true),
            SyncAfter::Relax { .. }
        ));
    }

    #[test]
    fn may_confirm_only_what_a_commit_can_wait_for() {
        assert!(!may_confirm("", Some("pg1")));
        assert!(!may_confirm("  ", None));
        assert!(may_confirm("FIRST 1 (pg1, pg2)", Some("pg1")));
        assert!(!may_confirm("FIRST 1 (pg1, pg2)", Some("pg3")));
        assert!(may_confirm("ANY 1 (*)", Some("pg3")));
        assert!(
            may_confirm("pg1", None),
            "a standby with no known name may be the one"
        );
        assert!(
            may_confirm("FIRST 1 (pg1", Some("pg3")),
            "unparsable: in doubt"
        );
    }
}
