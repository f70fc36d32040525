//! `pgpool.conf`: the one source of topology.
//!
//! pgha never keeps its own list of nodes: the backends (`backend_hostnameN`,
//! `backend_portN`, `backend_data_directoryN`, ...) and the PCP endpoint
//! (`pcp_listen_addresses`, `pcp_port`) are read from the file pgpool itself
//! runs with, so the two can never drift apart.
//!
//! The grammar follows pgpool-II 4.3's lexer (`src/config/pool_config.l`) as
//! observed on pgpool 4.3.5:
//!
//! - one `key = value` per line; the `=` is optional (`key 'value'` works);
//! - keys are case-sensitive: pgpool logs `unrecognized configuration
//!   parameter "PORT"` and ignores such a line, and so does pgha;
//! - a value is either single-quoted or a bare word (`on`, `5432`,
//!   `/var/run/x`); `#` starts a comment outside quotes;
//! - inside quotes a backslash may precede a quote (`'a\'b'`), and pgpool
//!   keeps the backslash: the value is `a\'b`, byte for byte. `''` is not an
//!   escape: pgpool refuses `'a''b'` with a syntax error, and so does pgha;
//! - a key given twice: the last assignment wins.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// pgpool's `MAX_NUM_BACKENDS`: backend indices run from 0 to 127.
const MAX_BACKENDS: u32 = 128;

/// pgpool's compiled-in default for `port`.
const DEFAULT_PORT: u16 = 9999;
/// pgpool's compiled-in default for `pcp_port`.
const DEFAULT_PCP_PORT: u16 = 9898;
/// PostgreSQL's default port, pgpool's default for `backend_portN`.
const DEFAULT_BACKEND_PORT: u16 = 5432;

/// One PostgreSQL server as pgpool knows it (`backend_*N`): pgha promotes,
/// repoints and attaches nodes by this id, the same `%d` pgpool passes to
/// `failover_command`.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// The `N` of `backend_hostnameN`; indices may have gaps (0, 1, 3).
    pub id: u32,
    /// `backend_hostnameN`: where pgpool connects, and where pgha sshes to.
    /// Empty means a Unix-domain socket in pgpool.
    pub hostname: String,
    /// `backend_portN`, default 5432.
    pub port: u16,
    /// `backend_data_directoryN`: the data directory on that host, used for
    /// promote, rewind and basebackup. `None` when unset or empty.
    pub data_directory: Option<PathBuf>,
    /// `backend_weightN` as written (pgpool normalises it to a share of the
    /// total; PCP reports the share).
    pub weight: Option<f64>,
    /// `backend_flagN` (`ALLOW_TO_FAILOVER`, `DISALLOW_TO_FAILOVER`,
    /// `ALWAYS_PRIMARY`, `|`-separated).
    pub flag: Option<String>,
    /// `backend_application_nameN`: the `application_name` this node's
    /// walreceiver must use, or pgpool shows no replication state for it.
    pub application_name: Option<String>,
}

/// A parsed `pgpool.conf`: every setting (last assignment wins) and the
/// backends derived from the `backend_*N` settings.
#[derive(Debug, Clone)]
pub struct PgpoolConf {
    /// The file this was read from, for messages.
    pub path: PathBuf,
    /// The backends, sorted by id.
    pub backends: Vec<Backend>,
    settings: HashMap<String, Setting>,
}

#[derive(Debug, Clone)]
struct Setting {
    value: String,
    line: usize,
}

/// Why `pgpool.conf` cannot be used. Each message names the file, the line
/// and the key, so an operator can go straight to it.
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    /// The file could not be read at all.
    #[error("cannot read pgpool configuration {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line pgpool's own parser would refuse too.
    #[error("{}:{line}: syntax error: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A well-formed line with a value pgha cannot use.
    #[error("{}:{line}: {key} = '{}': {message}", path.display(), value.escape_debug())]
    BadValue {
        path: PathBuf,
        line: usize,
        key: String,
        value: String,
        message: String,
    },
    /// A `backend_*N` setting for an index that has no `backend_hostnameN`:
    /// usually a commented-out or misnumbered hostname line.
    #[error(
        "{}:{line}: {key} is set but backend_hostname{id} is not: backend {id} has no host",
        path.display()
    )]
    BackendWithoutHostname {
        path: PathBuf,
        line: usize,
        key: String,
        id: u32,
    },
    /// No backend at all: pgha cannot fail over a cluster it cannot see.
    #[error("no backend_hostnameN in {}: pgha needs pgpool's backends", path.display())]
    NoBackends { path: PathBuf },
}

impl PgpoolConf {
    /// Reads and parses the `pgpool.conf` pgpool runs with (`pgpool -f`).
    pub fn load(path: &Path) -> Result<PgpoolConf, ConfError> {
        // Non-blocking and bounded: a FIFO or /dev/zero named as
        // pgpool_conf must not hang a failover.
        let bytes =
            crate::files::read_regular(path, crate::files::MAX_CONFIG_BYTES).map_err(|source| {
                ConfError::Read {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        Self::parse(path, &decode(path, &bytes)?)
    }

    /// Parses `text` as a `pgpool.conf`; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<PgpoolConf, ConfError> {
        let mut settings: HashMap<String, Setting> = HashMap::new();
        for (index, raw) in text.split('\n').enumerate() {
            let line = index + 1;
            match parse_line(raw) {
                Ok(None) => {}
                Ok(Some((key, value))) => {
                    settings.insert(key, Setting { value, line });
                }
                Err(message) => {
                    return Err(ConfError::Syntax {
                        path: path.to_path_buf(),
                        line,
                        message,
                    });
                }
            }
        }
        let mut conf = PgpoolConf {
            path: path.to_path_buf(),
            backends: Vec::new(),
            settings,
        };
        conf.check_listener_ports()?;
        conf.backends = conf.collect_backends()?;
        Ok(conf)
    }

    /// The value of `key` as pgpool sees it (quotes removed, backslashes
    /// kept), or `None` when the file does not set it. Keys are
    /// case-sensitive, as in pgpool.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(|s| s.value.as_str())
    }

    /// Whether boolean `key` is on (`on`, `true`, `yes`, `1`, any case);
    /// unset is off.
    pub fn is_on(&self, key: &str) -> bool {
        matches!(
            self.get(key).map(str::to_ascii_lowercase).as_deref(),
            Some("on" | "true" | "yes" | "1")
        )
    }

    /// The line where `key` was last assigned, for messages about it.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        self.settings.get(key).map(|s| s.line)
    }

    /// The backend with index `id` (`backend_hostnameN` with N = id).
    pub fn backend(&self, id: u32) -> Option<&Backend> {
        self.backends.iter().find(|b| b.id == id)
    }

    /// `pcp_port`, where pgpool accepts PCP connections (default 9898).
    pub fn pcp_port(&self) -> u16 {
        self.port_setting("pcp_port", DEFAULT_PCP_PORT)
    }

    /// The address to reach PCP on: the first entry of
    /// `pcp_listen_addresses`, or `None` when that is `*` (all interfaces,
    /// pgpool's default) or empty (Unix socket only), where the caller must
    /// pick an address itself.
    pub fn pcp_listen_address(&self) -> Option<String> {
        first_address(self.get("pcp_listen_addresses").unwrap_or("*"))
    }

    /// `port`, where pgpool accepts client connections (default 9999).
    pub fn port(&self) -> u16 {
        self.port_setting("port", DEFAULT_PORT)
    }

    /// The first entry of `listen_addresses` (pgpool's default `localhost`),
    /// or `None` for `*` or empty, as for [`PgpoolConf::pcp_listen_address`].
    pub fn listen_address(&self) -> Option<String> {
        first_address(self.get("listen_addresses").unwrap_or("localhost"))
    }

    fn port_setting(&self, key: &str, default: u16) -> u16 {
        // Validated in `check_listener_ports`, so a set value parses.
        self.get(key)
            .and_then(|v| parse_port(v).ok())
            .unwrap_or(default)
    }

    fn check_listener_ports(&self) -> Result<(), ConfError> {
        for key in ["port", "pcp_port"] {
            if let Some(s) = self.settings.get(key) {
                parse_port(&s.value).map_err(|message| self.bad_value(key, s, message))?;
            }
        }
        Ok(())
    }

    fn bad_value(&self, key: &str, s: &Setting, message: String) -> ConfError {
        ConfError::BadValue {
            path: self.path.clone(),
            line: s.line,
            key: key.to_string(),
            value: if is_secret_key(key) {
                crate::text::MASK.to_string()
            } else {
                s.value.clone()
            },
            message,
        }
    }

    fn collect_backends(&self) -> Result<Vec<Backend>, ConfError> {
        // Sorted so that errors come out in a stable order.
        let mut keys: Vec<(&String, &Setting)> = self.settings.iter().collect();
        keys.sort_by_key(|(k, s)| (s.line, k.as_str()));

        let mut by_id: HashMap<u32, Backend> = HashMap::new();
        for (key, s) in &keys {
            let Some((field, id)) = backend_key(key) else {
                continue;
            };
            if id >= MAX_BACKENDS {
                return Err(self.bad_value(
                    key,
                    s,
                    format!("backend index {id} is out of range: pgpool allows 0 to 127"),
                ));
            }
            if field == BackendField::Hostname {
                if let Some(problem) = crate::text::host_problem(&s.value) {
                    return Err(self.bad_value(key, s, problem));
                }
                by_id.insert(
                    id,
                    Backend {
                        id,
                        hostname: s.value.clone(),
                        port: DEFAULT_BACKEND_PORT,
                        data_directory: None,
                        weight: None,
                        flag: None,
                        application_name: None,
                    },
                );
            }
        }
        for (key, s) in &keys {
            let Some((field, id)) = backend_key(key) else {
                continue;
            };
            let Some(backend) = by_id.get_mut(&id) else {
                return Err(ConfError::BackendWithoutHostname {
                    path: self.path.clone(),
                    line: s.line,
                    key: key.to_string(),
                    id,
                });
            };
            let value = &s.value;
            match field {
                BackendField::Hostname => {}
                BackendField::Port => {
                    backend.port = parse_port(value).map_err(|m| self.bad_value(key, s, m))?;
                }
                BackendField::Weight => {
                    let w = value
                        .parse::<f64>()
                        .ok()
                        .filter(|w| w.is_finite() && *w >= 0.0)
                        .ok_or_else(|| {
                            self.bad_value(key, s, "not a weight (a number >= 0)".to_string())
                        })?;
                    backend.weight = Some(w);
                }
                BackendField::DataDirectory => {
                    backend.data_directory =
                        (!value.is_empty()).then(|| PathBuf::from(value.as_str()));
                }
                BackendField::Flag => backend.flag = Some(value.clone()),
                BackendField::ApplicationName => backend.application_name = Some(value.clone()),
            }
        }
        if by_id.is_empty() {
            return Err(ConfError::NoBackends {
                path: self.path.clone(),
            });
        }
        let mut backends: Vec<Backend> = by_id.into_values().collect();
        backends.sort_by_key(|b| b.id);
        Ok(backends)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} ({}:{})", self.id, self.hostname, self.port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackendField {
    Hostname,
    Port,
    Weight,
    DataDirectory,
    Flag,
    ApplicationName,
}

/// Splits `backend_portN` into (Port, N); `None` for any other key
/// (`backend_clustering_mode` has no index and is not a backend field).
fn backend_key(key: &str) -> Option<(BackendField, u32)> {
    const FIELDS: [(&str, BackendField); 6] = [
        ("backend_hostname", BackendField::Hostname),
        ("backend_port", BackendField::Port),
        ("backend_weight", BackendField::Weight),
        ("backend_data_directory", BackendField::DataDirectory),
        ("backend_flag", BackendField::Flag),
        ("backend_application_name", BackendField::ApplicationName),
    ];
    FIELDS.iter().find_map(|(prefix, field)| {
        let digits = key.strip_prefix(prefix)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // An index too large for u32 is certainly out of pgpool's range.
        Some((*field, digits.parse().unwrap_or(u32::MAX)))
    })
}

fn parse_port(value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err("not a port number".to_string()),
    }
}

fn first_address(list: &str) -> Option<String> {
    let first = list.split(',').next().unwrap_or("").trim();
    (first != "*" && !first.is_empty()).then(|| first.to_string())
}

fn is_key_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || !c.is_ascii()
}

fn is_key_char(c: char) -> bool {
    is_key_start(c) || c.is_ascii_digit()
}

/// Characters pgpool's lexer accepts in an unquoted value (its KEY,
/// UNQUOTED_STRING, INTEGER and REAL tokens together).
fn is_bare_char(c: char) -> bool {
    is_key_char(c) || matches!(c, '-' | '.' | ':' | '/' | '+')
}

/// `bytes` as UTF-8, or a syntax error naming the first line that is not:
/// a lossy decoding could silently change a hostname. Comment lines are
/// exempt (old samples carry Latin-1 in comments) and read as blank.
fn decode(path: &Path, bytes: &[u8]) -> Result<String, ConfError> {
    let mut text = String::with_capacity(bytes.len());
    for (index, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        if index > 0 {
            text.push('\n');
        }
        match std::str::from_utf8(raw) {
            Ok(line) => text.push_str(line),
            Err(_) if raw.trim_ascii_start().starts_with(b"#") => {}
            Err(e) => {
                return Err(ConfError::Syntax {
                    path: path.to_path_buf(),
                    line: index + 1,
                    message: format!(
                        "bytes that are not UTF-8 at byte {} of the line; save the file as UTF-8",
                        e.valid_up_to() + 1
                    ),
                });
            }
        }
    }
    Ok(text)
}

/// Whether `key` holds a secret (`sr_check_password`,
/// `health_check_password`, `wd_authkey`, ...): its value, or any piece of
/// it, never appears in a message.
fn is_secret_key(key: &str) -> bool {
    key.ends_with("password") || key.ends_with("authkey")
}

/// Parses one line into `Some((key, value))`, `None` for a blank or
/// comment line, or a message saying what is wrong.
fn parse_line(raw: &str) -> Result<Option<(String, String)>, String> {
    let line = raw.strip_suffix('\r').unwrap_or(raw);
    let rest = line.trim_start_matches([' ', '\t', '\r']);
    if rest.is_empty() || rest.starts_with('#') {
        return Ok(None);
    }
    let first = rest.chars().next().unwrap_or(' ');
    if !is_key_start(first) {
        return Err(format!(
            "expected a setting name, found '{first}' (names start with a letter or '_')"
        ));
    }
    let key_len = rest.find(|c: char| !is_key_char(c)).unwrap_or(rest.len());
    let key = &rest[..key_len];
    let mut rest = rest[key_len..].trim_start_matches([' ', '\t', '\r']);
    if let Some(after) = rest.strip_prefix('=') {
        rest = after.trim_start_matches([' ', '\t', '\r']);
    }

    let (value, after) = if rest.starts_with('\'') {
        quoted_value(rest).map_err(|m| format!("{key}: {m}"))?
    } else if rest.is_empty() || rest.starts_with('#') {
        // pgpool 4.3.5 takes `key =` as an empty value.
        (String::new(), rest)
    } else {
        let len = rest.find(|c: char| !is_bare_char(c)).unwrap_or(rest.len());
        if len == 0 {
            if is_secret_key(key) {
                return Err(format!(
                    "{key}: unexpected character where a value should be; quote the value"
                ));
            }
            let c = rest.chars().next().unwrap_or(' ');
            return Err(format!(
                "{key}: unexpected '{c}' where a value should be; quote the value"
            ));
        }
        (rest[..len].to_string(), &rest[len..])
    };

    let after = after.trim_start_matches([' ', '\t', '\r']);
    if !after.is_empty() && !after.starts_with('#') {
        if after.starts_with('\'') {
            return Err(format!(
                "{key}: a second quoted string follows the value; pgpool does not read '' as an escaped quote"
            ));
        }
        if is_secret_key(key) {
            return Err(format!(
                "{key}: unexpected text after the value (not shown, it may belong to the password; quote values containing spaces)"
            ));
        }
        return Err(format!(
            "{key}: unexpected text after the value: {after:?} (quote values containing spaces)"
        ));
    }
    Ok(Some((key.to_string(), value)))
}

/// Reads a single-quoted value at the start of `s` the way pgpool's flex
/// rule `'([^'\n]|\\.)*'` does with longest match: a quote preceded by a
/// backslash may be part of the string or close it, whichever is longer;
/// the first quote not preceded by a backslash always closes it. The
/// content is returned as is, backslashes included.
fn quoted_value(s: &str) -> Result<(String, &str), String> {
    let body = &s[1..];
    let mut close: Option<usize> = None;
    let mut prev_backslash = false;
    for (i, c) in body.char_indices() {
        if c == '\'' {
            close = Some(i);
            if !prev_backslash {
                break;
            }
        }
        prev_backslash = c == '\\';
    }
    match close {
        Some(i) => Ok((body[..i].to_string(), &body[i + 1..])),
        None => Err("unterminated quoted string (quotes cannot span lines)".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PgpoolConf, ConfError> {
        PgpoolConf::parse(Path::new("/etc/pgpool2/pgpool.conf"), text)
    }

    const ONE: &str = "backend_hostname0 = 'db0'\n";

    /// A fragment shaped like Debian's pgpool2 4.3 sample with three
    /// backends filled in, comment blocks and all.
    const DEBIAN_LIKE: &str = r#"# ----------------------------
# pgPool-II configuration file
# ----------------------------
#
#   name = value
#
backend_clustering_mode = 'streaming_replication'

#------------------------------------------------------------------------------
# CONNECTIONS
#------------------------------------------------------------------------------
listen_addresses = '*'
                                   # Host name or IP address to listen on:
                                   # '*' for all, '' for no TCP/IP connections
port = 5433
#socket_dir = '/var/run/postgresql'
pcp_listen_addresses = '127.0.0.20,localhost'
pcp_port = 9898
pcp_socket_dir = '/var/run/postgresql'

# - Backend Connection Settings -

backend_hostname0 = '127.0.0.2'
                                   # Host name or IP address to connect to for backend 0
backend_port0 = 5432
                                   # Port number for backend 0
backend_weight0 = 1
                                   # Weight for backend 0 (only in load balancing mode)
backend_data_directory0 = '/var/lib/postgresql/15/main'
                                   # Data directory for backend 0
backend_flag0 = 'ALLOW_TO_FAILOVER'
                                   # Controls various backend behavior
                                   # ALLOW_TO_FAILOVER, DISALLOW_TO_FAILOVER
                                   # or ALWAYS_PRIMARY
backend_application_name0 = '127.0.0.2'
                                   # walsender's application_name, used for "show pool_nodes" command
backend_hostname1 = '127.0.0.3'
backend_port1 = 5433
backend_weight1 = 0.5
backend_data_directory1 = '/var/lib/postgresql/15/main'
backend_flag1 = 'ALLOW_TO_FAILOVER'
backend_application_name1 = '127.0.0.3'
backend_hostname3 = '127.0.0.4'
backend_data_directory3 = '/srv/pg'
#backend_hostname2 = 'host3'
#backend_port2 = 5434

failover_command = '/usr/local/bin/pgha-failover %d %M %m'
                                   # Executes this command at failover
health_check_period = 1
sr_check_user = 'pgpool'
wd_lifecheck_query = 'SELECT 1'
log_line_prefix = '%m: %a pid %p: '   # printf-style string to output at beginning of each log line.
hostname0 = ''
"#;

    #[test]
    fn debian_like_file_parses() {
        let c = parse(DEBIAN_LIKE).unwrap();
        let ids: Vec<u32> = c.backends.iter().map(|b| b.id).collect();
        assert_eq!(ids, vec![0, 1, 3]);
        let b0 = c.backend(0).unwrap();
        assert_eq!(b0.hostname, "127.0.0.2");
        assert_eq!(b0.port, 5432);
        assert_eq!(b0.weight, Some(1.0));
        assert_eq!(
            b0.data_directory.as_deref(),
            Some(Path::new("/var/lib/postgresql/15/main"))
        );
        assert_eq!(b0.flag.as_deref(), Some("ALLOW_TO_FAILOVER"));
        assert_eq!(b0.application_name.as_deref(), Some("127.0.0.2"));
        assert_eq!(c.backend(1).unwrap().port, 5433);
        assert_eq!(c.backend(1).unwrap().weight, Some(0.5));
        let b3 = c.backend(3).unwrap();
        assert_eq!(b3.port, 5432, "default port");
        assert_eq!(b3.weight, None);
        assert!(c.backend(2).is_none());
        assert_eq!(c.port(), 5433);
        assert_eq!(c.pcp_port(), 9898);
        assert_eq!(c.pcp_listen_address().as_deref(), Some("127.0.0.20"));
        assert_eq!(c.listen_address(), None, "'*' means any address");
        assert_eq!(
            c.get("failover_command"),
            Some("/usr/local/bin/pgha-failover %d %M %m")
        );
        assert_eq!(c.get("log_line_prefix"), Some("%m: %a pid %p: "));
        assert_eq!(c.get("health_check_period"), Some("1"));
        assert_eq!(c.get("hostname0"), Some(""));
        assert_eq!(c.line_of("pcp_port"), Some(18));
        assert_eq!(c.get("socket_dir"), None, "commented out");
    }

    #[test]
    fn defaults_when_unset() {
        let c = parse(ONE).unwrap();
        assert_eq!(c.port(), 9999);
        assert_eq!(c.pcp_port(), 9898);
        assert_eq!(c.pcp_listen_address(), None, "pgpool's default is '*'");
        assert_eq!(c.listen_address().as_deref(), Some("localhost"));
        let c = parse("backend_hostname0 = 'a'\npcp_listen_addresses = ''\n").unwrap();
        assert_eq!(c.pcp_listen_address(), None);
    }

    #[test]
    fn quoting_and_escapes_match_pgpool() {
        let c = parse(
            "backend_hostname0 = 'db0'\n\
             a = 'x # not a comment' # a comment\n\
             b = 'it\\'s'\n\
             c = 'C:\\' # backslash at the end\n\
             d = 'a\\\\b'\n\
             e 'no equals sign'\n\
             f=bare/word.x:1\n\
             g = -1.5e3\n\
             h = ''\n\
             i =\n\
             j = 'tab\there'\n",
        )
        .unwrap();
        assert_eq!(c.get("a"), Some("x # not a comment"));
        assert_eq!(c.get("b"), Some("it\\'s"), "pgpool keeps the backslash");
        assert_eq!(c.get("c"), Some("C:\\"));
        assert_eq!(c.get("d"), Some("a\\\\b"));
        assert_eq!(c.get("e"), Some("no equals sign"));
        assert_eq!(c.get("f"), Some("bare/word.x:1"));
        assert_eq!(c.get("g"), Some("-1.5e3"));
        assert_eq!(c.get("h"), Some(""));
        assert_eq!(c.get("i"), Some(""));
        assert_eq!(c.get("j"), Some("tab\there"));
    }

    #[test]
    fn escaped_quote_then_comment_with_quote() {
        let c = parse("backend_hostname0 = 'a\\'b' # it's here\n").unwrap();
        assert_eq!(c.backend(0).unwrap().hostname, "a\\'b");
        // Like flex's longest match, `\\'` may continue the string.
        let c = parse("backend_hostname0 = 'a\\\\'b'\n").unwrap();
        assert_eq!(c.backend(0).unwrap().hostname, "a\\\\'b");
    }

    #[test]
    fn keys_are_case_sensitive_like_pgpool() {
        let c = parse("backend_hostname0 = 'db0'\nPORT = 1234\n").unwrap();
        assert_eq!(c.port(), 9999, "pgpool ignores PORT");
        assert_eq!(c.get("PORT"), Some("1234"));
        assert_eq!(c.get("port"), None);
        let err = parse("BACKEND_HOSTNAME0 = 'db0'\n").unwrap_err();
        assert!(matches!(err, ConfError::NoBackends { .. }), "{err}");
    }

    #[test]
    fn comments_blank_lines_and_crlf() {
        let c = parse(
            "\r\n   \n\t# comment\n  # indented comment\nbackend_hostname0 = 'db0'\r\nport = 5000 # trailing\r\n",
        )
        .unwrap();
        assert_eq!(c.backend(0).unwrap().hostname, "db0");
        assert_eq!(c.port(), 5000);
        assert_eq!(c.line_of("port"), Some(6));
    }

    #[test]
    fn duplicates_last_wins() {
        let c = parse(
            "backend_hostname0 = 'old'\nport = 1\nbackend_hostname0 = 'new'\nport = 2\nbackend_port0 = 6000\nbackend_port0 = 6001\n",
        )
        .unwrap();
        assert_eq!(c.backend(0).unwrap().hostname, "new");
        assert_eq!(c.backend(0).unwrap().port, 6001);
        assert_eq!(c.port(), 2);
        assert_eq!(c.line_of("port"), Some(4));
        assert_eq!(c.backends.len(), 1);
    }

    #[test]
    fn gaps_and_sorting() {
        let c =
            parse("backend_hostname7 = 'h7'\nbackend_hostname0 = 'h0'\nbackend_hostname3 = 'h3'\n")
                .unwrap();
        let ids: Vec<u32> = c.backends.iter().map(|b| b.id).collect();
        assert_eq!(ids, vec![0, 3, 7]);
        assert_eq!(c.backend(7).unwrap().hostname, "h7");
    }

    #[test]
    fn non_backend_keys_with_backend_prefix() {
        let c = parse(
            "backend_hostname0 = 'a'\nbackend_clustering_mode = 'streaming_replication'\nbackend_socket_dir = '/tmp'\nbackend_port = 1\n",
        )
        .unwrap();
        assert_eq!(c.backends.len(), 1);
        assert_eq!(c.backend(0).unwrap().port, 5432);
    }

    #[test]
    fn bad_port_names_file_line_key_and_value() {
        let text = format!("{ONE}# x\nbackend_hostname1 = 'db1'\nbackend_port1 = 'abc'\n");
        let err = parse(&text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/pgpool2/pgpool.conf:4: backend_port1 = 'abc': not a port number"
        );
        for bad in ["0", "65536", "-1", "54 32", "5432.0"] {
            let text = format!("{ONE}backend_port0 = '{bad}'\n");
            assert!(
                matches!(parse(&text), Err(ConfError::BadValue { .. })),
                "{bad} accepted"
            );
        }
        let err = parse(&format!("{ONE}pcp_port = 'x'\n")).unwrap_err();
        assert!(
            err.to_string()
                .contains(":2: pcp_port = 'x': not a port number"),
            "{err}"
        );
        let err = parse(&format!("{ONE}port = 99999\n")).unwrap_err();
        assert!(err.to_string().contains(":2: port = '99999'"), "{err}");
    }

    #[test]
    fn bad_weight() {
        let err = parse(&format!("{ONE}backend_weight0 = 'heavy'\n")).unwrap_err();
        assert!(
            err.to_string()
                .contains("backend_weight0 = 'heavy': not a weight"),
            "{err}"
        );
        let err = parse(&format!("{ONE}backend_weight0 = -1\n")).unwrap_err();
        assert!(matches!(err, ConfError::BadValue { line: 2, .. }), "{err}");
    }

    #[test]
    fn missing_hostname_names_the_index() {
        let err = parse(&format!("{ONE}backend_port2 = 5432\n")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/pgpool2/pgpool.conf:2: backend_port2 is set but backend_hostname2 is not: backend 2 has no host"
        );
        let err = parse(&format!(
            "{ONE}#backend_hostname1 = 'x'\nbackend_data_directory1 = '/d'\n"
        ))
        .unwrap_err();
        assert!(
            matches!(
                err,
                ConfError::BackendWithoutHostname { id: 1, line: 3, .. }
            ),
            "{err}"
        );
    }

    #[test]
    fn index_out_of_range() {
        let err = parse("backend_hostname128 = 'x'\n").unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        let err = parse("backend_hostname99999999999 = 'x'\n").unwrap_err();
        assert!(matches!(err, ConfError::BadValue { .. }), "{err}");
    }

    #[test]
    fn hostile_hostnames_are_refused_with_line_and_key() {
        let err = parse(
            "backend_hostname0 = '127.0.0.2'\nbackend_hostname1 = '-oProxyCommand=touch /tmp/x'\n",
        )
        .unwrap_err();
        assert!(matches!(err, ConfError::BadValue { line: 2, .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("/etc/pgpool2/pgpool.conf:2: backend_hostname1 = "),
            "{msg}"
        );
        assert!(msg.contains("may not start with '-'"), "{msg}");
        let err = parse("backend_hostname0 = 'db0 -v'\n").unwrap_err();
        assert!(err.to_string().contains("whitespace"), "{err}");
        let err = parse("backend_hostname0 = 'db\x1b[2J'\n").unwrap_err();
        assert!(err.to_string().contains("\\u{1b}"), "{err}");
        // pgpool's Unix socket form stays accepted.
        assert_eq!(
            parse("backend_hostname0 = ''\n").unwrap().backends[0].hostname,
            ""
        );
    }

    #[test]
    fn non_utf8_is_an_error_naming_the_line() {
        let path = Path::new("/etc/pgpool2/pgpool.conf");
        let bytes = b"# caf\xe9 in a comment is fine\nbackend_hostname0 = 'db\xff0'\n";
        let err = decode(path, bytes).unwrap_err();
        assert!(matches!(err, ConfError::Syntax { line: 2, .. }), "{err}");
        assert!(err.to_string().contains("not UTF-8"), "{err}");
        let text = decode(path, b"# caf\xe9\nbackend_hostname0 = 'db0'\n").unwrap();
        assert_eq!(parse(&text).unwrap().backends[0].hostname, "db0");
    }

    #[test]
    fn syntax_errors_never_show_pieces_of_passwords() {
        for line in [
            "sr_check_password = 'abc' def-secret\n",
            "health_check_password = two words-secret\n",
            "recovery_password = *secret\n",
            "wd_authkey = k ey-secret\n",
        ] {
            let err = parse(&format!("{ONE}{line}")).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, ConfError::Syntax { line: 2, .. }), "{msg}");
            assert!(
                !msg.contains("secret") && !msg.contains('*'),
                "{line}: {msg}"
            );
        }
        // Other keys still show the offending text.
        let err = parse(&format!("{ONE}sr_check_user = two words\n")).unwrap_err();
        assert!(err.to_string().contains("words"), "{err}");
    }

    #[test]
    fn load_refuses_fifos_and_devices() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("pgpool.conf");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = PgpoolConf::load(&fifo).unwrap_err();
        assert!(
            err.to_string().contains("not a regular file (a FIFO)"),
            "{err}"
        );
        let err = PgpoolConf::load(Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("a device"), "{err}");
    }

    #[test]
    fn zero_backends() {
        let err = parse("port = 9999\n#backend_hostname0 = 'host1'\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no backend_hostnameN in /etc/pgpool2/pgpool.conf: pgha needs pgpool's backends"
        );
    }

    #[test]
    fn malformed_lines() {
        let cases: [(&str, &str); 7] = [
            ("a = 'unterminated\n", "unterminated quoted string"),
            ("a = 'it''s'\n", "''"),
            ("= 5\n", "expected a setting name"),
            ("5port = 5\n", "expected a setting name"),
            ("a = *\n", "unexpected '*'"),
            ("a = 'x' junk\n", "unexpected text after the value"),
            ("a = two words\n", "unexpected text after the value"),
        ];
        for (text, expect) in cases {
            let full = format!("{ONE}{text}");
            match parse(&full) {
                Err(e @ ConfError::Syntax { line: 2, .. }) => {
                    let msg = e.to_string();
                    assert!(
                        msg.starts_with("/etc/pgpool2/pgpool.conf:2: syntax error: "),
                        "{msg}"
                    );
                    assert!(msg.contains(expect), "{text:?}: {msg}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn load_reads_file_and_reports_missing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pgpool.conf");
        std::fs::write(&p, DEBIAN_LIKE).unwrap();
        let c = PgpoolConf::load(&p).unwrap();
        assert_eq!(c.path, p);
        assert_eq!(c.backends.len(), 3);
        let missing = dir.path().join("nope.conf");
        let err = PgpoolConf::load(&missing).unwrap_err();
        assert!(matches!(err, ConfError::Read { .. }));
        assert!(err.to_string().contains("nope.conf"), "{err}");
    }
}
