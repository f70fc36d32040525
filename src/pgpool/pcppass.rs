//! `.pcppass`: where the PCP password comes from, so it never appears on a
//! command line or in `pgha.toml`.
//!
//! Same format and rules as pgpool's own PCP tools (`src/libs/pcp/pcp.c`,
//! `PasswordFromFile`): lines `hostname:port:username:password`, a field
//! that is exactly `*` matches anything, `\:` and `\\` escape, the first
//! matching line wins, and a file that group or others can access is
//! ignored. Unlike pgpool, which skips such a file silently, pgha returns
//! the reason so the caller can tell the operator.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why `.pcppass` gave no answer. [`PcppassError::NotFound`] is ordinary
/// (no file, no password); the others mean the operator set up a file that
/// pgpool's tools would ignore too.
#[derive(Debug, thiserror::Error)]
pub enum PcppassError {
    /// The file does not exist.
    #[error("pcp password file {} does not exist", path.display())]
    NotFound { path: PathBuf },
    /// A directory or device where the file should be.
    #[error("pcp password file {} is not a regular file; ignoring it", path.display())]
    NotRegular { path: PathBuf },
    /// Group or others may access the file (pgpool requires 0600 or less).
    #[error(
        "pcp password file {} has mode {mode:04o}, readable beyond its owner; ignoring it as pgpool does (chmod 600 {})",
        path.display(),
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    /// The file exists but could not be read.
    #[error("cannot read pcp password file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The password file to use: `explicit` (a `pgha.toml` or command-line
/// setting) first, then the `PCPPASSFILE` environment variable, then
/// `$HOME/.pcppass`, the order pgpool's PCP tools use. `None` when none of
/// them is available.
pub fn default_path(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("PCPPASSFILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".pcppass"))
}

/// The password of the first line of `path` matching `host`, `port` and
/// `user`, or `Ok(None)` when no line matches. `host` is compared as a
/// string, as pgpool does: `127.0.0.20` and `localhost` are different
/// entries. An empty host or a socket directory (starting with `/`) is
/// looked up as `localhost`, like pgpool's tools do.
pub fn lookup(
    path: &Path,
    host: &str,
    port: u16,
    user: &str,
) -> Result<Option<String>, PcppassError> {
    // Opened as every configuration file is (regular files only, never
    // blocking on a FIFO, bounded), and the mode read from the open file,
    // so a swap between the check and the read changes nothing.
    let read_err = |source: std::io::Error| PcppassError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = crate::files::open_regular(path).map_err(|source| match source.kind() {
        ErrorKind::NotFound => PcppassError::NotFound {
            path: path.to_path_buf(),
        },
        ErrorKind::InvalidInput => PcppassError::NotRegular {
            path: path.to_path_buf(),
        },
        _ => read_err(source),
    })?;
    let meta = file.metadata().map_err(read_err)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PcppassError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let max = crate::files::MAX_CONFIG_BYTES;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(&mut file, max + 1), &mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > max {
        return Err(read_err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("larger than {max} bytes, too large for a password file"),
        )));
    }
    let text = String::from_utf8_lossy(&bytes);
    let host = if host.is_empty() || host.starts_with('/') {
        "localhost"
    } else {
        host
    };
    Ok(find_password(&text, host, &port.to_string(), user))
}

fn find_password(text: &str, host: &str, port: &str, user: &str) -> Option<String> {
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(rest) = crate::text::passfile_field(line, host)
            .and_then(|r| crate::text::passfile_field(r, port))
            .and_then(|r| crate::text::passfile_field(r, user))
        else {
            continue;
        };
        return Some(unescape_until_colon(rest));
    }
    None
}

fn unescape_until_colon(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            '\\' => match chars.next() {
                Some(next) => out.push(next),
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn file(content: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".pcppass");
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        (dir, p)
    }

    #[test]
    fn first_matching_line_wins() {
        let (_d, p) = file(
            "# pcp passwords\n\
             127.0.0.20:9898:pgpool:first\n\
             127.0.0.20:9898:pgpool:second\n\
             127.0.0.21:9898:pgpool:other-host\n",
            0o600,
        );
        assert_eq!(
            lookup(&p, "127.0.0.20", 9898, "pgpool").unwrap().as_deref(),
            Some("first")
        );
        assert_eq!(
            lookup(&p, "127.0.0.21", 9898, "pgpool").unwrap().as_deref(),
            Some("other-host")
        );
        assert_eq!(lookup(&p, "127.0.0.20", 9899, "pgpool").unwrap(), None);
        assert_eq!(lookup(&p, "127.0.0.20", 9898, "admin").unwrap(), None);
        assert_eq!(
            lookup(&p, "127.0.0.2", 9898, "pgpool").unwrap(),
            None,
            "no prefix match"
        );
        assert_eq!(lookup(&p, "127.0.0.200", 9898, "pgpool").unwrap(), None);
    }

    #[test]
    fn wildcards() {
        let (_d, p) = file("127.0.0.20:*:pgpool:a\n*:9898:*:b\n*:*:*:c\n", 0o600);
        assert_eq!(
            lookup(&p, "127.0.0.20", 1, "pgpool").unwrap().as_deref(),
            Some("a")
        );
        assert_eq!(
            lookup(&p, "127.0.0.30", 9898, "x").unwrap().as_deref(),
            Some("b")
        );
        assert_eq!(lookup(&p, "h", 2, "y").unwrap().as_deref(), Some("c"));
        // A '*' inside a field is literal.
        let (_d, p) = file("127.*:9898:u:p\n", 0o600);
        assert_eq!(lookup(&p, "127.0.0.1", 9898, "u").unwrap(), None);
        assert_eq!(
            lookup(&p, "127.*", 9898, "u").unwrap().as_deref(),
            Some("p")
        );
    }

    #[test]
    fn escapes() {
        let (_d, p) = file(
            "we\\:ird\\\\host:9898:us\\:er:pa\\:ss\\\\word:ignored\n",
            0o600,
        );
        assert_eq!(
            lookup(&p, "we:ird\\host", 9898, "us:er")
                .unwrap()
                .as_deref(),
            Some("pa:ss\\word")
        );
    }

    #[test]
    fn comments_blank_and_short_lines_skipped() {
        let (_d, p) = file("\n#*:*:*:commented\nshort:line\n*:*:*:pw\r\n", 0o400);
        assert_eq!(lookup(&p, "h", 1, "u").unwrap().as_deref(), Some("pw"));
    }

    #[test]
    fn empty_password_and_missing_password_field() {
        let (_d, p) = file("h:1:u:\nh:2:u\n", 0o600);
        assert_eq!(lookup(&p, "h", 1, "u").unwrap().as_deref(), Some(""));
        assert_eq!(lookup(&p, "h", 2, "u").unwrap(), None, "no password field");
    }

    #[test]
    fn socket_or_empty_host_is_localhost() {
        let (_d, p) = file("localhost:9898:pgpool:local\n", 0o600);
        assert_eq!(
            lookup(&p, "", 9898, "pgpool").unwrap().as_deref(),
            Some("local")
        );
        assert_eq!(
            lookup(&p, "/var/run/postgresql", 9898, "pgpool")
                .unwrap()
                .as_deref(),
            Some("local")
        );
    }

    #[test]
    fn group_or_world_access_is_refused_with_reason() {
        for mode in [0o640, 0o604, 0o660, 0o644, 0o610] {
            let (_d, p) = file("*:*:*:pw\n", mode);
            match lookup(&p, "h", 1, "u") {
                Err(e @ PcppassError::Permissions { mode: m, .. }) => {
                    assert_eq!(m, mode);
                    let msg = e.to_string();
                    assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
                    assert!(msg.contains("chmod 600"), "{msg}");
                }
                other => panic!("mode {mode:o}: {other:?}"),
            }
        }
    }

    #[test]
    fn missing_and_not_regular() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(
            lookup(&missing, "h", 1, "u"),
            Err(PcppassError::NotFound { .. })
        ));
        assert!(matches!(
            lookup(dir.path(), "h", 1, "u"),
            Err(PcppassError::NotRegular { .. })
        ));
    }

    #[test]
    fn explicit_path_wins() {
        // The environment-dependent branches are covered by the lab tests;
        // changing the process environment here would race other tests.
        let p = Path::new("/etc/pgha/pcppass");
        assert_eq!(default_path(Some(p)).as_deref(), Some(p));
    }

    #[test]
    fn default_path_without_explicit_uses_env_or_home() {
        let got = default_path(None);
        let expect = std::env::var_os("PCPPASSFILE")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .map(|h| PathBuf::from(h).join(".pcppass"))
            });
        assert_eq!(got, expect);
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(".pcppass");
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        let e = lookup(&p, "127.0.0.1", 9898, "pgpool").unwrap_err();
        assert!(matches!(e, PcppassError::NotRegular { .. }), "{e:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let link = d.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let e = lookup(&link, "127.0.0.1", 9898, "pgpool").unwrap_err();
        assert!(matches!(e, PcppassError::NotRegular { .. }), "{e:?}");
    }
}
