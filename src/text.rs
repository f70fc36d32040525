//! Pure rules for text that leaves this process: hosts that can never turn
//! into an ssh option, values without control characters, and secrets
//! masked before anything is printed or journaled.
//!
//! A hostname starting with `-` placed where ssh expects its destination is
//! read as an option (`-oProxyCommand=...` runs a command); a newline in a
//! value written into `postgresql.auto.conf` or a script starts a new line
//! of it. These checks run when the configuration is loaded, so a hostile
//! value stops pgha with a configuration error before anything runs.

/// Why a host is refused (`None`: it may be used). Empty hosts are left to
/// the caller: pgpool reads an empty `backend_hostnameN` as its Unix socket.
pub fn host_problem(host: &str) -> Option<String> {
    if host.starts_with('-') {
        return Some(
            "a host may not start with '-' (ssh would read it as an option); write the address or name of the node".into(),
        );
    }
    if let Some(c) = host.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!(
            "a host may not contain whitespace or control characters (found {c:?}); write the address or name of the node"
        ));
    }
    None
}

/// Why a configuration string is refused (`None`: it may be used): control
/// characters (newlines, tabs, escapes) would start new lines or hide text
/// in the files and command lines pgha writes on the nodes.
pub fn control_problem(value: &str) -> Option<String> {
    value.chars().find(|c| c.is_control()).map(|c| {
        format!(
            "control character {c:?} not allowed: the value reaches files and commands on the nodes"
        )
    })
}

/// What replaces a secret in every message.
pub const MASK: &str = "********";

/// `text` with every secret replaced by [`MASK`]: the value of any
/// `password=` (libpq conninfo, as `pg_basebackup -R` writes it into
/// `primary_conninfo`), quoted or not, in any case, and a `password` in a
/// `postgresql://user:password@host` URI. Everything else is unchanged, so
/// one helper can be applied to conninfo strings, `ALTER SYSTEM` statements,
/// remote command lines and whole error messages.
pub fn mask_secrets(text: &str) -> String {
    mask_uri_passwords(&mask_keyword_passwords(text))
}

/// `password = 'x'`, `password=x`, `PASSWORD='it''s'`, `sslpassword=...`.
fn mask_keyword_passwords(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = lower[search..].find("password") {
        let start = search + found;
        let mut i = start + "password".len();
        search = i;
        while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] != b'=' {
            continue;
        }
        i += 1;
        while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
            i += 1;
        }
        let value_start = i;
        let value_end = value_end(bytes, value_start);
        if value_end == value_start {
            continue;
        }
        out.push_str(&text[copied..value_start]);
        out.push_str(MASK);
        copied = value_end;
        search = value_end;
    }
    out.push_str(&text[copied..]);
    out
}

/// End of a conninfo value starting at `start`: a single-quoted string
/// (with `\'` and, inside SQL literals, `''` escapes) or a bare word that
/// ends at whitespace or a quote.
fn value_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start;
    if bytes[i..].starts_with(b"''") {
        // Inside an SQL literal the conninfo's own quotes are doubled.
        i += 2;
        while i < bytes.len() {
            if bytes[i] == b'\\' {
                i += 2;
            } else if bytes[i..].starts_with(b"''") {
                return i + 2;
            } else {
                i += 1;
            }
        }
        return bytes.len();
    }
    if bytes.get(i) == Some(&b'\'') {
        i += 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'\'' if bytes.get(i + 1) == Some(&b'\'') => i += 2,
                b'\'' => return i + 1,
                _ => i += 1,
            }
        }
        return bytes.len();
    }
    while i < bytes.len() && !bytes[i].is_ascii_whitespace() && !matches!(bytes[i], b'\'' | b'"') {
        i += 1;
    }
    i
}

/// `scheme://user:secret@host` becomes `scheme://user:********@host`.
fn mask_uri_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '/' | '\'' | '"' | '?'))
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority
            .rfind('@')
            .and_then(|a| authority[..a].find(':').map(|colon| (colon, a)))
        {
            Some((colon, a)) => {
                out.push_str(&authority[..=colon]);
                out.push_str(MASK);
                out.push_str(&authority[a..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Whether a conninfo carries a password (pgha-check suggests `passfile`).
pub fn has_password(conninfo: &str) -> bool {
    mask_secrets(conninfo) != conninfo
}

/// Matches the first `:`-terminated field of a `.pgpass` / `.pcppass`
/// line against `want` (`\\` escapes the next character; a field of `*`
/// matches anything); returns what follows that field's `:`.
pub fn passfile_field<'a>(line: &'a str, want: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let mut want = want.chars();
    let mut it = line.char_indices();
    while let Some((i, c)) = it.next() {
        let (c, escaped) = match c {
            '\\' => (it.next()?.1, true),
            c => (c, false),
        };
        if c == ':' && !escaped {
            return want.next().is_none().then(|| &line[i + 1..]);
        }
        if want.next() != Some(c) {
            return None;
        }
    }
    None
}

/// The lowercase hex md5 of the parts, one after the other: what
/// `md5sum` prints for a file, what `pg_md5` stores in `pcp.conf`, and
/// the pieces of PCP's salted password hash.
pub fn md5_hex(parts: &[&[u8]]) -> String {
    use md5::{Digest as _, Md5};
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_that_would_become_options_are_refused() {
        assert!(
            host_problem("-oProxyCommand=touch /tmp/x")
                .unwrap()
                .contains("'-'")
        );
        assert!(
            host_problem("db1 -oProxyCommand=x")
                .unwrap()
                .contains("whitespace")
        );
        assert!(host_problem("db1\n").unwrap().contains("whitespace"));
        assert!(host_problem("db\u{1b}1").unwrap().contains("control"));
        assert_eq!(host_problem("127.0.0.3"), None);
        assert_eq!(host_problem("db-1.example.com"), None);
        assert_eq!(host_problem("::1"), None);
        assert_eq!(host_problem(""), None);
    }

    #[test]
    fn control_characters_are_refused() {
        assert!(control_problem("repl\nrestore_command = 'x'").is_some());
        assert!(control_problem("a\tb").is_some());
        assert!(control_problem("\u{7f}").is_some());
        assert_eq!(control_problem("/var/lib/postgresql/15/main"), None);
        assert_eq!(control_problem("café ü"), None);
    }

    #[test]
    fn conninfo_passwords_are_masked() {
        assert_eq!(
            mask_secrets("host=127.0.0.2 user=repl password=s3cret port=5432"),
            "host=127.0.0.2 user=repl password=******** port=5432"
        );
        assert_eq!(
            mask_secrets("user=repl password='it\\'s secret' host=a"),
            "user=repl password=******** host=a"
        );
        assert_eq!(
            mask_secrets("PassWord = hunter2 sslpassword=k"),
            "PassWord = ******** sslpassword=********"
        );
        // As pg_basebackup -R writes it, inside an ALTER SYSTEM literal.
        let sql = "ALTER SYSTEM SET primary_conninfo = 'user=repl password=''x y'' host=h'";
        let masked = mask_secrets(sql);
        assert!(!masked.contains("x y") && !masked.contains('x'), "{masked}");
        assert!(masked.contains("host=h"), "{masked}");
        let sql = "ALTER SYSTEM SET primary_conninfo = 'user=repl password=abc host=h'";
        assert_eq!(
            mask_secrets(sql),
            "ALTER SYSTEM SET primary_conninfo = 'user=repl password=******** host=h'"
        );
        // Nothing to mask: unchanged, even words that look close.
        let plain = "passwordless login; password_encryption = scram; user=repl";
        assert_eq!(mask_secrets(plain), plain);
        assert!(!has_password("host=a user=repl passfile=/x"));
        assert!(has_password("host=a password=x"));
    }

    #[test]
    fn uri_passwords_are_masked() {
        assert_eq!(
            mask_secrets("postgresql://repl:s3cret@127.0.0.2:5432/db"),
            "postgresql://repl:********@127.0.0.2:5432/db"
        );
        assert_eq!(
            mask_secrets("postgresql://repl@127.0.0.2/db"),
            "postgresql://repl@127.0.0.2/db"
        );
    }
}
