//! A native client of pgpool-II's PCP protocol (the one `pcp_attach_node`,
//! `pcp_detach_node` and `pcp_node_info` speak), so pgha needs no PCP
//! binaries, never puts the password on a command line, and bounds every
//! step with a deadline.
//!
//! Wire format (pgpool's `src/libs/pcp/pcp.c` and
//! `src/pcp_con/pcp_worker.c`): every packet is one tag byte, a big-endian
//! `i32` length that counts itself, then NUL-terminated strings. Login asks
//! for a salt (`M` → `m` with 4 bytes) and answers with `R` carrying the user
//! and `md5(md5(md5(password) + user) + salt)` in hex, the PCP password
//! being stored as `md5(password)` in `pcp.conf`. Errors come back as `E`
//! packets with PostgreSQL-style fields (`S` severity, `C` code, `M`
//! message, `D` detail, ...); an `ERROR` leaves the session usable, a
//! `FATAL` (bad password) closes it.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use super::watchdog::WatchdogInfo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound on a reply packet; pgpool's own limit for requests is 8 KiB
/// (`MAX_PCP_PACKET_LENGTH`) and node replies are far smaller.
const MAX_REPLY_LEN: usize = 1 << 20;

/// pgpool stores `backend_weightN` scaled to glibc's `RAND_MAX`; PCP sends
/// the scaled value and `pcp_node_info` divides it back.
const RAND_MAX: f64 = 2_147_483_647.0;

/// pgpool's `MAX_USER_PASSWD_LEN`: longer PCP user names are refused.
const MAX_USER_LEN: usize = 128;

/// Where and how to reach pgpool's PCP port: `pcp_listen_addresses` and
/// `pcp_port` from `pgpool.conf`, a user from `pcp.conf`, its password
/// from `.pcppass`, and the deadline for each network step.
#[derive(Clone)]
pub struct PcpTarget {
    /// An address of `pcp_listen_addresses` (TCP only).
    pub host: String,
    /// `pcp_port`.
    pub port: u16,
    /// A user listed in pgpool's `pcp.conf`.
    pub user: String,
    /// The clear-text password whose md5 is in `pcp.conf`.
    pub password: String,
    /// Bounds the connect with the login, and each request as a whole
    /// (every packet of it, notices included), never one packet at a time:
    /// a peer that keeps sending notices cannot stretch a request.
    pub timeout: Duration,
}

impl fmt::Debug for PcpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PcpTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What went wrong talking to pgpool over PCP. Every message names the PCP
/// endpoint, and timeouts name the step and the time spent.
#[derive(Debug, thiserror::Error)]
pub enum PcpError {
    /// TCP connect failed (pgpool down, wrong `pcp_listen_addresses` or
    /// `pcp_port`).
    #[error("cannot connect to pgpool pcp at {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    /// A step did not finish within `PcpTarget::timeout`.
    #[error("pgpool pcp at {host}:{port}: {step} timed out after {after:?}")]
    Timeout {
        host: String,
        port: u16,
        step: String,
        after: Duration,
    },
    /// The connection broke during a step (pgpool closed it or crashed).
    #[error("pgpool pcp at {host}:{port}: {step}: {source}")]
    Io {
        host: String,
        port: u16,
        step: String,
        #[source]
        source: std::io::Error,
    },
    /// pgpool refused the login: the user is not in `pcp.conf` or the
    /// password does not match its md5 there.
    #[error(
        "pcp login as {user} at {host}:{port} refused: {message} (check pcp.conf and .pcppass)"
    )]
    Auth {
        host: String,
        port: u16,
        user: String,
        message: String,
    },
    /// pgpool is in the middle of a failover, failback, switchover or
    /// promotion and refuses node operations until it is done; retrying
    /// later is the right reaction (see [`super::ops::retry`]).
    #[error(
        "pgpool at {host}:{port} refused the request while a failover/switchover is in progress: {detail}"
    )]
    FailoverInProgress {
        host: String,
        port: u16,
        detail: String,
    },
    /// Any other error pgpool reported.
    #[error("pgpool at {host}:{port} reported {severity}: {message}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Server {
        host: String,
        port: u16,
        severity: String,
        message: String,
        detail: Option<String>,
    },
    /// A reply pgha does not understand (a different protocol version, or
    /// not pgpool at all).
    #[error("pgpool pcp at {host}:{port}: unexpected reply: {message}")]
    Protocol {
        host: String,
        port: u16,
        message: String,
    },
    /// The node id is not one of pgpool's backends. pgpool itself answers
    /// "Command Successful" to attach or detach of a node it does not
    /// have, so pgha checks first.
    #[error("pgpool at {host}:{port} has no backend node {id} ({})", count.map(|c| format!("it has {c}: ids 0 to {}", c.saturating_sub(1))).unwrap_or_else(|| "node count unknown".to_string()))]
    NoSuchNode {
        host: String,
        port: u16,
        id: u32,
        count: Option<u32>,
    },
}

/// pgpool's state for a backend (`backend_status` in `pcp_node_info`, its
/// third column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// 0: the slot is not configured.
    Unused,
    /// 1: attached, no connection made yet ("waiting").
    Waiting,
    /// 2: attached and in use ("up").
    Up,
    /// 3: detached ("down"; "quarantine" when the quarantine flag is set).
    Down,
    /// A code this pgha does not know, kept as is.
    Other(i32),
}

impl NodeStatus {
    /// Maps pgpool's `BACKEND_STATUS` number.
    pub fn from_code(code: i32) -> NodeStatus {
        match code {
            0 => NodeStatus::Unused,
            1 => NodeStatus::Waiting,
            2 => NodeStatus::Up,
            3 => NodeStatus::Down,
            n => NodeStatus::Other(n),
        }
    }

    /// The number pgpool uses.
    pub fn code(self) -> i32 {
        match self {
            NodeStatus::Unused => 0,
            NodeStatus::Waiting => 1,
            NodeStatus::Up => 2,
            NodeStatus::Down => 3,
            NodeStatus::Other(n) => n,
        }
    }

    /// Attached in pgpool: "waiting" and "up" both count, as in pgpool's
    /// `VALID_BACKEND`.
    pub fn is_attached(self) -> bool {
        matches!(self, NodeStatus::Waiting | NodeStatus::Up)
    }
}

/// One backend as pgpool sees it right now (`pcp_node_info`).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    /// The backend id (`backend_hostnameN`'s N).
    pub id: u32,
    /// `backend_hostnameN`.
    pub hostname: String,
    /// `backend_portN`.
    pub port: u16,
    /// Attached or not.
    pub status: NodeStatus,
    /// Detached by pgpool's failover quarantine (watchdog consensus not
    /// reached) rather than for good; pgpool 4.3+.
    pub quarantine: bool,
    /// What pgpool's health check last saw ("up", "down"; "unknown" without
    /// health checks) — `None` when unknown.
    pub actual_status: Option<String>,
    /// The node's share of `backend_weightN` in the total, 0 to 1.
    pub weight: f64,
    /// pgpool's idea of the role: "primary"/"standby" in streaming
    /// replication mode, "main"/"replica" otherwise.
    pub role: String,
    /// What the server itself says ("primary", "standby"), `None` when
    /// unknown (pgpool learns it from health checks).
    pub actual_role: Option<String>,
    /// Replication delay, in bytes of WAL, or in microseconds when
    /// `replication_delay_by_time` (pgpool 4.4+ `delay_threshold_by_time`).
    pub replication_delay: u64,
    /// Whether `replication_delay` is a time.
    pub replication_delay_by_time: bool,
    /// `pg_stat_replication.state` ("streaming", ...) for a standby whose
    /// `application_name` matches `backend_application_nameN`; empty
    /// otherwise.
    pub replication_state: String,
    /// `pg_stat_replication.sync_state` ("async", "sync", ...) or empty.
    pub replication_sync_state: String,
    /// When pgpool last changed `status`, in local time as
    /// `pcp_node_info` prints it (`YYYY-MM-DD HH:MM:SS`).
    pub last_status_change: String,
    /// The same instant in seconds since the epoch.
    pub last_status_change_epoch: i64,
}

impl NodeInfo {
    /// Attached in pgpool (status "waiting" or "up").
    pub fn is_up(&self) -> bool {
        self.status.is_attached()
    }

    /// pgpool's name for `status`, as `pcp_node_info` prints it.
    pub fn status_name(&self) -> &'static str {
        match self.status {
            NodeStatus::Unused => "unused",
            NodeStatus::Waiting => "waiting",
            NodeStatus::Up => "up",
            NodeStatus::Down if self.quarantine => "quarantine",
            NodeStatus::Down => "down",
            NodeStatus::Other(_) => "unknown",
        }
    }

    /// The line `pcp_node_info -h H -p P -U U -w -n N` prints for this node
    /// (without the newline), e.g.
    /// `127.0.0.3 5432 2 0.500000 up up standby standby 0 streaming async 2024-05-01 10:00:00`,
    /// so tests and operators can compare the two directly.
    pub fn to_pcp_node_info_line(&self) -> String {
        let delay = if self.replication_delay_by_time {
            // pcp_node_info divides as a C float.
            format!(
                "{:.6}",
                f64::from(self.replication_delay as f32 / 1_000_000.0f32)
            )
        } else {
            self.replication_delay.to_string()
        };
        let or_none = |s: &str| {
            if s.is_empty() {
                "none".to_string()
            } else {
                s.to_string()
            }
        };
        format!(
            "{} {} {} {:.6} {} {} {} {} {} {} {} {}",
            self.hostname,
            self.port,
            self.status.code(),
            self.weight,
            self.status_name(),
            self.actual_status.as_deref().unwrap_or("unknown"),
            self.role,
            self.actual_role.as_deref().unwrap_or("unknown"),
            delay,
            or_none(&self.replication_state),
            or_none(&self.replication_sync_state),
            self.last_status_change,
        )
    }
}

/// An authenticated PCP session with one pgpool.
pub struct PcpClient {
    stream: TcpStream,
    host: String,
    port: u16,
    timeout: Duration,
    /// When the request in progress must be done ([`PcpClient::begin`]).
    deadline: Option<Instant>,
}

impl fmt::Debug for PcpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PcpClient({}:{})", self.host, self.port)
    }
}

/// A decoded `E` or `N` packet.
#[derive(Debug, Default)]
struct ServerMessage {
    severity: String,
    message: String,
    detail: Option<String>,
}

impl ServerMessage {
    fn parse(body: &[u8]) -> ServerMessage {
        let mut out = ServerMessage::default();
        let mut rest = body;
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            let value = String::from_utf8_lossy(&tail[..end]).into_owned();
            match kind {
                b'S' => out.severity = value,
                b'M' => out.message = value,
                b'D' => out.detail = Some(value),
                _ => {}
            }
            rest = tail.get(end + 1..).unwrap_or(&[]);
        }
        out
    }

    /// pgpool's refusals while `Req_info->switching`: "failed to process
    /// PCP request at the moment" with "failover is in progress",
    /// "failback is in progress", "promote node operation is in progress"
    /// or "operation is in progress" as detail.
    fn is_in_progress(&self) -> bool {
        let all = format!(
            "{} {}",
            self.message,
            self.detail.as_deref().unwrap_or_default()
        )
        .to_ascii_lowercase();
        all.contains("is in progress") || all.contains("at the moment")
    }
}

impl PcpClient {
    /// Connects to `t.host:t.port` and logs in as `t.user`.
    pub async fn connect(t: &PcpTarget) -> Result<PcpClient, PcpError> {
        let start = Instant::now();
        let connect = TcpStream::connect((t.host.as_str(), t.port));
        let stream = match tokio::time::timeout(t.timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(PcpError::Connect {
                    host: t.host.clone(),
                    port: t.port,
                    source,
                });
            }
            Err(_) => {
                return Err(PcpError::Timeout {
                    host: t.host.clone(),
                    port: t.port,
                    step: "connect".to_string(),
                    after: t.timeout,
                });
            }
        };
        // Small request/reply packets: do not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let mut client = PcpClient {
            stream,
            host: t.host.clone(),
            port: t.port,
            timeout: t.timeout,
            // The login shares the connect's bound.
            deadline: Some(start + t.timeout),
        };
        client.login(&t.user, &t.password).await?;
        client.deadline = None;
        Ok(client)
    }

    /// Start a request bounded as a whole by `timeout`, unless one is in
    /// progress (a request made of others, as attach checks the node
    /// first); `true` when this call owns the bound and must [`end`] it.
    ///
    /// [`end`]: PcpClient::end
    fn begin(&mut self) -> bool {
        if self.deadline.is_some() {
            return false;
        }
        self.deadline = Some(Instant::now() + self.timeout);
        true
    }

    fn end(&mut self, owner: bool) {
        if owner {
            self.deadline = None;
        }
    }

    /// Time left for the current request.
    fn left(&self) -> Duration {
        match self.deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => self.timeout,
        }
    }

    async fn login(&mut self, user: &str, password: &str) -> Result<(), PcpError> {
        if user.len() >= MAX_USER_LEN || user.contains('\0') {
            return Err(self.auth_error(user, "pcp user name too long or not valid".to_string()));
        }
        self.send(b'M', &[], "request the md5 salt").await?;
        let (tag, body) = self.recv("read the md5 salt").await?;
        let salt: [u8; 4] = match tag {
            b'm' if body.len() >= 4 => [body[0], body[1], body[2], body[3]],
            b'E' => return Err(self.auth_error(user, ServerMessage::parse(&body).message)),
            _ => return Err(self.protocol(format!("salt reply {}", describe(tag, &body)))),
        };
        let hash = pcp_md5(password, user, &salt);
        let mut payload = Vec::with_capacity(user.len() + hash.len() + 2);
        payload.extend_from_slice(user.as_bytes());
        payload.push(0);
        payload.extend_from_slice(hash.as_bytes());
        payload.push(0);
        self.send(b'R', &payload, "send credentials").await?;
        let (tag, body) = match self.recv("read the login result").await {
            Err(PcpError::Io { .. }) => {
                return Err(self.auth_error(user, "pgpool closed the connection".to_string()));
            }
            other => other?,
        };
        match tag {
            b'r' if first_field(&body) == "AuthenticationOK" => Ok(()),
            b'r' => Err(self.auth_error(user, first_field(&body))),
            b'E' => {
                let m = ServerMessage::parse(&body);
                let text = match m.detail {
                    Some(d) => format!("{}: {}", m.message, d),
                    None => m.message,
                };
                Err(self.auth_error(user, text))
            }
            _ => Err(self.protocol(format!("login reply {}", describe(tag, &body)))),
        }
    }

    /// The number of backend slots pgpool has (`pcp_node_count`); valid
    /// node ids are 0 to count - 1, some of which may be unused gaps.
    pub async fn node_count(&mut self) -> Result<u32, PcpError> {
        let owner = self.begin();
        let r = self.node_count_request().await;
        self.end(owner);
        r
    }

    async fn node_count_request(&mut self) -> Result<u32, PcpError> {
        self.send(b'L', &[], "request the node count").await?;
        let fields = self.command_reply(b'l', "read the node count").await?;
        let count = fields.get(1).and_then(|s| s.parse::<u32>().ok());
        count.ok_or_else(|| self.protocol(format!("node count reply {fields:?}")))
    }

    /// pgpool's view of backend `id` (`pcp_node_info -n id`).
    pub async fn node_info(&mut self, id: u32) -> Result<NodeInfo, PcpError> {
        let owner = self.begin();
        let r = self.node_info_request(id).await;
        self.end(owner);
        r
    }

    async fn node_info_request(&mut self, id: u32) -> Result<NodeInfo, PcpError> {
        let arg = nul_terminated(id);
        self.send(b'I', &arg, "request node info").await?;
        // Read the whole reply before interpreting it, so that a reply this
        // client cannot parse still leaves the session in step.
        let mut rows: Vec<Vec<String>> = Vec::new();
        loop {
            let (tag, body) = self.recv("read node info").await?;
            match tag {
                b'i' => {}
                b'N' => continue,
                b'E' => {
                    let m = ServerMessage::parse(&body);
                    if m.detail
                        .as_deref()
                        .unwrap_or("")
                        .contains("invalid node ID")
                    {
                        let count = self.node_count().await.ok();
                        return Err(self.no_such_node(id, count));
                    }
                    return Err(self.server_error(m));
                }
                _ => {
                    return Err(self.protocol(format!("node info reply {}", describe(tag, &body))));
                }
            }
            let fields = split_fields(&body);
            match fields.first().map(String::as_str) {
                Some("ArraySize") => {}
                Some("NodeInfo") => rows.push(fields[1..].to_vec()),
                Some("CommandComplete") => break,
                _ => return Err(self.protocol(format!("node info reply {fields:?}"))),
            }
        }
        let [row] = rows.as_slice() else {
            return Err(self.protocol(format!(
                "node info for node {id} had {} entries, expected 1",
                rows.len()
            )));
        };
        let info = self.parse_node_info(id, row)?;
        if info.status == NodeStatus::Unused {
            // A gap in the backend_hostnameN numbering: pcp_node_info prints
            // "No node information available" for it.
            let count = self.node_count().await.ok();
            return Err(self.no_such_node(id, count));
        }
        Ok(info)
    }

    fn parse_node_info(&self, id: u32, f: &[String]) -> Result<NodeInfo, PcpError> {
        // pgpool 4.2: 11 fields; 4.3 adds quarantine after the status;
        // 4.4 adds a "delay is a time" flag before the delay.
        let (quarantine, rest_at, by_time) = match f.len() {
            11 => (None, 3, None),
            12 => (Some(&f[3]), 4, None),
            13 => (Some(&f[3]), 4, Some(&f[8])),
            n => {
                return Err(self.protocol(format!(
                    "node info for node {id} has {n} fields, expected 11 to 13 (pgpool 4.2 to 4.6): {f:?}"
                )));
            }
        };
        let bad =
            |what: &str, v: &str| self.protocol(format!("node {id}: {what} {v:?} is not valid"));
        let num = |s: &String| -> Option<i64> { s.trim().parse::<i64>().ok() };
        let r = &f[rest_at..];
        let (pg_status, weight, role, pg_role) = (&r[0], &r[1], &r[2], &r[3]);
        let tail = &r[if by_time.is_some() { 5 } else { 4 }..];
        let (delay, rep_state, rep_sync, changed) = (&tail[0], &tail[1], &tail[2], &tail[3]);

        let port = f[1].parse::<u16>().map_err(|_| bad("port", &f[1]))?;
        let status = num(&f[2]).ok_or_else(|| bad("status", &f[2]))?;
        let weight = weight
            .trim()
            .parse::<f64>()
            .map_err(|_| bad("weight", weight))?
            / RAND_MAX;
        let role_name = match num(role) {
            Some(0) => "main",
            Some(1) => "replica",
            Some(2) => "primary",
            Some(3) => "standby",
            _ => "unknown",
        };
        let delay = delay
            .trim()
            .parse::<u64>()
            .map_err(|_| bad("replication delay", delay))?;
        let epoch = num(changed).ok_or_else(|| bad("status change time", changed))?;
        let known = |s: &String| (s != "unknown" && !s.is_empty()).then(|| s.clone());
        Ok(NodeInfo {
            id,
            hostname: f[0].clone(),
            port,
            status: NodeStatus::from_code(status as i32),
            quarantine: quarantine.and_then(num).unwrap_or(0) != 0,
            actual_status: known(pg_status),
            weight,
            role: role_name.to_string(),
            actual_role: known(pg_role),
            replication_delay: delay,
            replication_delay_by_time: by_time.and_then(num).unwrap_or(0) != 0,
            replication_state: rep_state.clone(),
            replication_sync_state: rep_sync.clone(),
            last_status_change: local_time(epoch),
            last_status_change_epoch: epoch,
        })
    }

    /// Attaches backend `id` (`pcp_attach_node`): pgpool runs its failback
    /// and starts sending queries to the node. pgpool ignores an attach of a
    /// node that is already up (it logs "invalid failback request").
    pub async fn attach_node(&mut self, id: u32) -> Result<(), PcpError> {
        let owner = self.begin();
        let r = self.attach_request(id).await;
        self.end(owner);
        r
    }

    async fn attach_request(&mut self, id: u32) -> Result<(), PcpError> {
        self.check_node_id(id).await?;
        self.send(b'C', &nul_terminated(id), "request attach")
            .await?;
        self.command_reply(b'c', "read the attach result").await?;
        Ok(())
    }

    /// Detaches backend `id` (`pcp_detach_node`, `-g` when `gracefully`):
    /// pgpool marks it down and runs `failover_command`. Graceful detach
    /// first waits for client sessions to end, which can outlast the
    /// per-step timeout.
    pub async fn detach_node(&mut self, id: u32, gracefully: bool) -> Result<(), PcpError> {
        let owner = self.begin();
        let r = self.detach_request(id, gracefully).await;
        self.end(owner);
        r
    }

    async fn detach_request(&mut self, id: u32, gracefully: bool) -> Result<(), PcpError> {
        self.check_node_id(id).await?;
        let tag = if gracefully { b'd' } else { b'D' };
        self.send(tag, &nul_terminated(id), "request detach")
            .await?;
        self.command_reply(b'd', "read the detach result").await?;
        Ok(())
    }

    /// Asks pgpool to make backend `id` the primary (`pcp_promote_node`,
    /// `J`). With `switchover` (`-s`, pgpool 4.3+) pgpool detaches the
    /// current primary and runs `failover_command` with `%m` = `id`, which
    /// does the promotion; without it pgpool only changes its own view.
    /// pgpool answers at once: the failover runs after the reply.
    pub async fn promote_node(&mut self, id: u32, switchover: bool) -> Result<(), PcpError> {
        let owner = self.begin();
        let r = self.promote_request(id, switchover).await;
        self.end(owner);
        r
    }

    async fn promote_request(&mut self, id: u32, switchover: bool) -> Result<(), PcpError> {
        self.check_node_id(id).await?;
        let body = Self::promote_body(id, switchover);
        self.send(b'J', &body, "request promote").await?;
        self.command_reply(b'd', "read the promote result").await?;
        Ok(())
    }

    /// The watchdog cluster as this pgpool sees it (`pcp_watchdog_info`,
    /// `W` for every member): an error from pgpool when it runs without
    /// the watchdog ("watchdog is not enabled").
    pub async fn watchdog_info(&mut self) -> Result<WatchdogInfo, PcpError> {
        let owner = self.begin();
        let r = self.watchdog_request().await;
        self.end(owner);
        r
    }

    async fn watchdog_request(&mut self) -> Result<WatchdogInfo, PcpError> {
        self.send(b'W', b"-1\0", "request watchdog info").await?;
        let fields = self.command_reply(b'w', "read watchdog info").await?;
        let json = fields.get(1).map(String::as_str).unwrap_or_default();
        WatchdogInfo::parse(json).map_err(|e| self.protocol(e))
    }

    /// Says goodbye (`X`) and closes the connection; errors are ignored
    /// since there is nothing left to do about them.
    pub async fn close(mut self) {
        let _ = self.send(b'X', &[], "close").await;
        let _ = tokio::time::timeout(self.timeout, self.stream.shutdown()).await;
    }

    /// The body of a `J` request: "ID ", its NUL, then `s` (switchover) or
    /// `n`; pgpool skips the space and the NUL (`pcp_worker.c`,
    /// `process_promote_node`).
    fn promote_body(id: u32, switchover: bool) -> Vec<u8> {
        let mut body = format!("{id} ").into_bytes();
        body.push(0);
        body.push(if switchover { b's' } else { b'n' });
        body
    }

    /// pgpool accepts attach and detach of any number and answers "Command
    /// Successful" even for a node it does not have: refuse those here.
    async fn check_node_id(&mut self, id: u32) -> Result<(), PcpError> {
        let count = self.node_count().await?;
        if id >= count {
            return Err(self.no_such_node(id, Some(count)));
        }
        match self.node_info(id).await {
            // An unparsable node info (a newer pgpool) must not block the
            // operation itself.
            Ok(_) | Err(PcpError::Protocol { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads until a `CommandComplete` packet with tag `want`, skipping
    /// notices; returns its fields.
    async fn command_reply(&mut self, want: u8, step: &str) -> Result<Vec<String>, PcpError> {
        loop {
            let (tag, body) = self.recv(step).await?;
            match tag {
                b'N' => continue,
                b'E' => return Err(self.server_error(ServerMessage::parse(&body))),
                t if t == want => {
                    let fields = split_fields(&body);
                    if fields.first().map(String::as_str) == Some("CommandComplete") {
                        return Ok(fields);
                    }
                    return Err(self.protocol(format!("{step}: {fields:?}")));
                }
                _ => return Err(self.protocol(format!("{step}: {}", describe(tag, &body)))),
            }
        }
    }

    async fn send(&mut self, tag: u8, body: &[u8], step: &str) -> Result<(), PcpError> {
        let mut packet = Vec::with_capacity(body.len() + 5);
        packet.push(tag);
        packet.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        packet.extend_from_slice(body);
        let (left, bound) = (self.left(), self.timeout);
        let (stream, host, port) = (&mut self.stream, &self.host, self.port);
        let write = async move {
            stream.write_all(&packet).await?;
            stream.flush().await
        };
        bounded(host, port, (left, bound), step, write).await
    }

    async fn recv(&mut self, step: &str) -> Result<(u8, Vec<u8>), PcpError> {
        let (left, bound) = (self.left(), self.timeout);
        let (stream, host, port) = (&mut self.stream, &self.host, self.port);
        let read = async move {
            let mut head = [0u8; 5];
            stream.read_exact(&mut head).await?;
            let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
            let body_len = usize::try_from(len)
                .ok()
                .and_then(|l| l.checked_sub(4))
                .filter(|l| *l <= MAX_REPLY_LEN)
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "packet '{}' has an impossible length {len}",
                            head[0] as char
                        ),
                    )
                })?;
            let mut body = vec![0u8; body_len];
            stream.read_exact(&mut body).await?;
            Ok((head[0], body))
        };
        match bounded(host, port, (left, bound), step, read).await {
            Err(PcpError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::InvalidData =>
            {
                Err(self.protocol(format!("{step}: {source}")))
            }
            other => other,
        }
    }

    fn auth_error(&self, user: &str, message: String) -> PcpError {
        PcpError::Auth {
            host: self.host.clone(),
            port: self.port,
            user: user.to_string(),
            message,
        }
    }

    fn protocol(&self, message: String) -> PcpError {
        PcpError::Protocol {
            host: self.host.clone(),
            port: self.port,
            message,
        }
    }

    fn no_such_node(&self, id: u32, count: Option<u32>) -> PcpError {
        PcpError::NoSuchNode {
            host: self.host.clone(),
            port: self.port,
            id,
            count,
        }
    }

    fn server_error(&self, m: ServerMessage) -> PcpError {
        if m.is_in_progress() {
            return PcpError::FailoverInProgress {
                host: self.host.clone(),
                port: self.port,
                detail: m.detail.unwrap_or(m.message),
            };
        }
        PcpError::Server {
            host: self.host.clone(),
            port: self.port,
            severity: if m.severity.is_empty() {
                "ERROR".to_string()
            } else {
                m.severity
            },
            message: m.message,
            detail: m.detail,
        }
    }
}

/// Runs one network step in the time `left` of its request, naming the
/// step and the request's bound on failure.
async fn bounded<T>(
    host: &str,
    port: u16,
    (left, bound): (Duration, Duration),
    step: &str,
    fut: impl Future<Output = std::io::Result<T>>,
) -> Result<T, PcpError> {
    match tokio::time::timeout(left, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let source = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                std::io::Error::new(e.kind(), "pgpool closed the connection")
            } else {
                e
            };
            Err(PcpError::Io {
                host: host.to_string(),
                port,
                step: step.to_string(),
                source,
            })
        }
        Err(_) => Err(PcpError::Timeout {
            host: host.to_string(),
            port,
            step: step.to_string(),
            after: bound,
        }),
    }
}

/// The hash PCP's `R` packet carries: `md5(md5(password) + user)` (what
/// `pcp.conf` stores, salted with the user like PostgreSQL's md5 auth),
/// then md5 of that hex string followed by the 4 salt bytes.
fn pcp_md5(password: &str, user: &str, salt: &[u8; 4]) -> String {
    let stored = crate::text::md5_hex(&[password.as_bytes()]);
    let with_user = crate::text::md5_hex(&[stored.as_bytes(), user.as_bytes()]);
    crate::text::md5_hex(&[with_user.as_bytes(), salt])
}

fn nul_terminated(id: u32) -> Vec<u8> {
    let mut v = id.to_string().into_bytes();
    v.push(0);
    v
}

fn split_fields(body: &[u8]) -> Vec<String> {
    let body = body.strip_suffix(&[0]).unwrap_or(body);
    body.split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn first_field(body: &[u8]) -> String {
    split_fields(body).into_iter().next().unwrap_or_default()
}

fn describe(tag: u8, body: &[u8]) -> String {
    let shown: String = String::from_utf8_lossy(&body[..body.len().min(80)])
        .chars()
        .map(|c| if c == '\0' { '|' } else { c })
        .collect();
    format!("'{}' {shown:?}", tag as char)
}

/// Formats `epoch` as `pcp_node_info` does: `strftime("%F %T")` of
/// `localtime_r`.
fn local_time(epoch: i64) -> String {
    let t = epoch as libc::time_t;
    // SAFETY: `tm` is a plain C struct fully written by localtime_r, which
    // is thread-safe and only reads `t`.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return epoch.to_string();
        }
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::net::{TcpListener, TcpStream};

    const SALT: [u8; 4] = [0x95, 0x54, 0x39, 0x03];

    fn target(port: u16, password: &str) -> PcpTarget {
        PcpTarget {
            host: "127.0.0.1".to_string(),
            port,
            user: "pgpool".to_string(),
            password: password.to_string(),
            timeout: Duration::from_millis(500),
        }
    }

    fn packet(tag: u8, fields: &[&[u8]]) -> Vec<u8> {
        let mut body = Vec::new();
        for f in fields {
            body.extend_from_slice(f);
            body.push(0);
        }
        let mut p = vec![tag];
        p.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        p.extend_from_slice(&body);
        p
    }

    fn error_packet(severity: &str, message: &str, detail: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, v) in [
            (b'S', severity),
            (b'C', "XX000"),
            (b'M', message),
            (b'D', detail),
        ] {
            body.push(k);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut p = vec![b'E'];
        p.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        p.extend_from_slice(&body);
        p
    }

    async fn read_packet(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.ok()?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.ok()?;
        Some((head[0], body))
    }

    /// What the mock saw: every request tag and body after login.
    type Log = Arc<Mutex<Vec<(u8, String)>>>;

    /// A PCP server on 127.0.0.1:0 that checks the login against
    /// `password` like pgpool's `user_authenticate`, then answers each
    /// request with `reply(tag, body, connection_number)`.
    async fn mock<F>(password: &'static str, reply: F) -> (u16, Log)
    where
        F: Fn(u8, &str, usize) -> Vec<Vec<u8>> + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log: Log = Arc::default();
        let reply = Arc::new(reply);
        let log2 = log.clone();
        tokio::spawn(async move {
            let mut conn_no = 0;
            while let Ok((mut s, _)) = listener.accept().await {
                conn_no += 1;
                let (reply, log) = (reply.clone(), log2.clone());
                let n = conn_no;
                tokio::spawn(async move {
                    let Some((b'M', _)) = read_packet(&mut s).await else {
                        return;
                    };
                    s.write_all(&packet(b'm', &[&SALT])).await.unwrap();
                    let Some((b'R', body)) = read_packet(&mut s).await else {
                        return;
                    };
                    let f = split_fields(&body);
                    let want = pcp_md5(password, &f[0], &SALT);
                    if f[1] != want {
                        let e = error_packet(
                            "FATAL",
                            &format!("authentication failed for user \"{}\"", f[0]),
                            "username and/or password does not match",
                        );
                        let _ = s.write_all(&e).await;
                        return;
                    }
                    s.write_all(&packet(b'r', &[b"AuthenticationOK"]))
                        .await
                        .unwrap();
                    while let Some((tag, body)) = read_packet(&mut s).await {
                        let arg = first_field(&body);
                        log.lock().unwrap().push((tag, arg.clone()));
                        if tag == b'X' {
                            return;
                        }
                        for p in reply(tag, &arg, n) {
                            if s.write_all(&p).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (port, log)
    }

    /// pgpool 4.3.5's reply for a streaming standby, captured from the
    /// real server.
    fn node_info_43(host: &str) -> Vec<Vec<u8>> {
        vec![
            packet(b'i', &[b"ArraySize", b"1"]),
            packet(
                b'i',
                &[
                    b"NodeInfo",
                    host.as_bytes(),
                    b"5432",
                    b"2",
                    b"0",
                    b"up",
                    b"1073741823.500000",
                    b"3",
                    b"standby",
                    b"0",
                    b"streaming",
                    b"async",
                    b"1795630739",
                ],
            ),
            packet(b'i', &[b"CommandComplete"]),
        ]
    }

    fn count(n: u32) -> Vec<Vec<u8>> {
        vec![packet(
            b'l',
            &[b"CommandComplete", n.to_string().as_bytes()],
        )]
    }

    fn standard(tag: u8, arg: &str, _conn: usize) -> Vec<Vec<u8>> {
        match tag {
            b'L' => count(2),
            b'I' if arg == "0" || arg == "1" => {
                node_info_43(&format!("127.0.0.{}", 2 + arg.parse::<u8>().unwrap()))
            }
            b'I' => vec![error_packet(
                "ERROR",
                "informing node info failed",
                &format!("invalid node ID : {arg}"),
            )],
            b'C' => vec![packet(b'c', &[b"CommandComplete"])],
            b'D' | b'd' => vec![packet(b'd', &[b"CommandComplete"])],
            _ => vec![],
        }
    }

    #[test]
    fn md5_matches_pgpool() {
        // `pg_md5 s3cret` printed this for pcp.conf.
        assert_eq!(
            crate::text::md5_hex(&[b"s3cret"]),
            "33e1b232a4e6fa0028a6670753749a17"
        );
        assert_eq!(
            crate::text::md5_hex(&[b"a", b"bc"]),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        // md5(md5("s3cret") + "pgpool") + salt, computed independently.
        assert_eq!(
            pcp_md5("s3cret", "pgpool", &SALT),
            "c6638ceb73342495599496f25992444c"
        );
        assert_ne!(
            pcp_md5("s3cret", "pgpool", &SALT),
            pcp_md5("s3cret", "pgpool", &[0; 4])
        );
        assert_ne!(
            pcp_md5("s3cret", "pgpool", &SALT),
            pcp_md5("s3cret", "other", &SALT)
        );
    }

    #[tokio::test]
    async fn login_count_info_and_close() {
        let (port, log) = mock("s3cret", standard).await;
        let mut c = PcpClient::connect(&target(port, "s3cret")).await.unwrap();
        assert_eq!(c.node_count().await.unwrap(), 2);
        let n = c.node_info(1).await.unwrap();
        assert_eq!(n.id, 1);
        assert_eq!(n.hostname, "127.0.0.3");
        assert_eq!(n.port, 5432);
        assert_eq!(n.status, NodeStatus::Up);
        assert!(n.is_up());
        assert!(!n.quarantine);
        assert_eq!(n.actual_status.as_deref(), Some("up"));
        assert!((n.weight - 0.5).abs() < 1e-9, "{}", n.weight);
        assert_eq!(n.role, "standby");
        assert_eq!(n.actual_role.as_deref(), Some("standby"));
        assert_eq!(n.replication_delay, 0);
        assert_eq!(n.replication_state, "streaming");
        assert_eq!(n.replication_sync_state, "async");
        assert_eq!(n.last_status_change_epoch, 1795630739);
        c.close().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let tags: Vec<u8> = log.lock().unwrap().iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, vec![b'L', b'I', b'X']);
        assert_eq!(log.lock().unwrap()[1].1, "1");
    }

    #[test]
    fn pcp_node_info_line_format() {
        let n = NodeInfo {
            id: 1,
            hostname: "127.0.201.3".to_string(),
            port: 5432,
            status: NodeStatus::Waiting,
            quarantine: false,
            actual_status: None,
            weight: 1073741823.5 / RAND_MAX,
            role: "standby".to_string(),
            actual_role: None,
            replication_delay: 0,
            replication_delay_by_time: false,
            replication_state: "streaming".to_string(),
            replication_sync_state: "async".to_string(),
            last_status_change: "2026-11-25 18:18:59".to_string(),
            last_status_change_epoch: 0,
        };
        // Printed by pcp_node_info of pgpool 4.3.5 for the same node.
        assert_eq!(
            n.to_pcp_node_info_line(),
            "127.0.201.3 5432 1 0.500000 waiting unknown standby unknown 0 streaming async 2026-11-25 18:18:59"
        );
        let down = NodeInfo {
            status: NodeStatus::Down,
            replication_state: String::new(),
            replication_sync_state: String::new(),
            replication_delay: 1234,
            ..n.clone()
        };
        assert_eq!(
            down.to_pcp_node_info_line(),
            "127.0.201.3 5432 3 0.500000 down unknown standby unknown 1234 none none 2026-11-25 18:18:59"
        );
        assert!(!down.is_up());
        let q = NodeInfo {
            quarantine: true,
            ..down.clone()
        };
        assert_eq!(q.status_name(), "quarantine");
        let timed = NodeInfo {
            replication_delay_by_time: true,
            replication_delay: 1_500_000,
            ..down
        };
        assert!(
            timed
                .to_pcp_node_info_line()
                .contains(" 1.500000 none none ")
        );
    }

    #[test]
    fn local_time_has_pcp_shape() {
        let s = local_time(1795630739);
        assert_eq!(s.len(), 19, "{s}");
        let b = s.as_bytes();
        assert_eq!(
            (b[4], b[7], b[10], b[13], b[16]),
            (b'-', b'-', b' ', b':', b':'),
            "{s}"
        );
        assert!(s.starts_with("2026-11-2"), "{s}");
    }

    #[tokio::test]
    async fn node_info_field_layouts_of_other_versions() {
        let (port, _log) = mock("pw", |tag, _arg, _| match tag {
            b'I' => vec![
                packet(b'i', &[b"ArraySize", b"1"]),
                // 4.2: no quarantine flag.
                packet(
                    b'i',
                    &[
                        b"NodeInfo",
                        b"h0",
                        b"5433",
                        b"3",
                        b"down",
                        b"2147483647.000000",
                        b"2",
                        b"primary",
                        b"77",
                        b"",
                        b"",
                        b"0",
                    ],
                ),
                packet(b'i', &[b"CommandComplete"]),
            ],
            _ => vec![],
        })
        .await;
        let mut c = PcpClient::connect(&target(port, "pw")).await.unwrap();
        let n = c.node_info(0).await.unwrap();
        assert_eq!(n.port, 5433);
        assert_eq!(n.status, NodeStatus::Down);
        assert_eq!(n.actual_status.as_deref(), Some("down"));
        assert_eq!(n.role, "primary");
        assert!((n.weight - 1.0).abs() < 1e-12);
        assert_eq!(n.replication_delay, 77);
        assert_eq!(n.replication_state, "");

        // 4.4+: quarantine and delay-by-time flags.
        let f: Vec<String> = [
            "h1",
            "5432",
            "3",
            "1",
            "down",
            "0.000000",
            "3",
            "standby",
            "1",
            "2500000",
            "streaming",
            "sync",
            "1700000000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let n = c.parse_node_info(4, &f).unwrap();
        assert!(n.quarantine);
        assert_eq!(n.status_name(), "quarantine");
        assert!(n.replication_delay_by_time);
        assert_eq!(n.replication_delay, 2_500_000);
        assert_eq!(n.replication_sync_state, "sync");
        let err = c.parse_node_info(4, &f[..5]).unwrap_err();
        assert!(matches!(err, PcpError::Protocol { .. }), "{err}");
        let mut bad_port = f.clone();
        bad_port[1] = "x".to_string();
        assert!(
            c.parse_node_info(4, &bad_port)
                .unwrap_err()
                .to_string()
                .contains("port")
        );
    }

    #[tokio::test]
    async fn wrong_password_is_auth_error() {
        let (port, _log) = mock("s3cret", standard).await;
        let err = PcpClient::connect(&target(port, "wrong"))
            .await
            .unwrap_err();
        match &err {
            PcpError::Auth { user, message, .. } => {
                assert_eq!(user, "pgpool");
                assert!(message.contains("authentication failed"), "{message}");
                assert!(message.contains("does not match"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("pcp.conf"), "{err}");
    }

    #[tokio::test]
    async fn unknown_node_is_no_such_node_and_attach_is_checked_first() {
        let (port, log) = mock("pw", standard).await;
        let mut c = PcpClient::connect(&target(port, "pw")).await.unwrap();
        let err = c.node_info(7).await.unwrap_err();
        assert!(
            matches!(
                err,
                PcpError::NoSuchNode {
                    id: 7,
                    count: Some(2),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("no backend node 7 (it has 2: ids 0 to 1)"),
            "{err}"
        );
        // The session survives an ERROR.
        assert_eq!(c.node_info(0).await.unwrap().hostname, "127.0.0.2");

        let err = c.attach_node(2).await.unwrap_err();
        assert!(
            matches!(
                err,
                PcpError::NoSuchNode {
                    id: 2,
                    count: Some(2),
                    ..
                }
            ),
            "{err:?}"
        );
        let err = c.detach_node(5, false).await.unwrap_err();
        assert!(matches!(err, PcpError::NoSuchNode { id: 5, .. }), "{err:?}");
        let tags: Vec<u8> = log.lock().unwrap().iter().map(|(t, _)| *t).collect();
        assert!(!tags.contains(&b'C') && !tags.contains(&b'D'), "{tags:?}");
    }

    #[tokio::test]
    async fn gap_in_numbering_is_no_such_node() {
        // Backends 0 and 2 configured, 1 is a gap: pgpool 4.3.5 sends an
        // empty unused slot for it.
        let (port, log) = mock("pw", |tag, arg, _| match (tag, arg) {
            (b'L', _) => count(3),
            (b'I', "1") => vec![
                packet(b'i', &[b"ArraySize", b"1"]),
                packet(
                    b'i',
                    &[
                        b"NodeInfo",
                        b"",
                        b"0",
                        b"0",
                        b"0",
                        b"down",
                        b"0.000000",
                        b"3",
                        b"unknown",
                        b"0",
                        b"",
                        b"",
                        b"1795630739",
                    ],
                ),
                packet(b'i', &[b"CommandComplete"]),
            ],
            (b'I', _) => node_info_43("h"),
            (b'C', _) => vec![packet(b'c', &[b"CommandComplete"])],
            _ => vec![],
        })
        .await;
        let mut c = PcpClient::connect(&target(port, "pw")).await.unwrap();
        let err = c.node_info(1).await.unwrap_err();
        assert!(
            matches!(
                err,
                PcpError::NoSuchNode {
                    id: 1,
                    count: Some(3),
                    ..
                }
            ),
            "{err:?}"
        );
        let err = c.attach_node(1).await.unwrap_err();
        assert!(matches!(err, PcpError::NoSuchNode { id: 1, .. }), "{err:?}");
        c.attach_node(2).await.unwrap();
        let tags: Vec<u8> = log.lock().unwrap().iter().map(|(t, _)| *t).collect();
        assert_eq!(tags.iter().filter(|t| **t == b'C').count(), 1, "{tags:?}");
    }

    #[tokio::test]
    async fn unparsable_node_info_keeps_the_session_in_step() {
        let (port, _log) = mock("pw", |tag, _arg, _| match tag {
            b'L' => count(2),
            b'I' => vec![
                packet(b'i', &[b"ArraySize", b"1"]),
                packet(
                    b'i',
                    &[
                        b"NodeInfo",
                        b"h",
                        b"5432",
                        b"2",
                        b"a",
                        b"b",
                        b"c",
                        b"d",
                        b"e",
                        b"f",
                    ],
                ),
                packet(b'i', &[b"CommandComplete"]),
            ],
            b'C' => vec![packet(b'c', &[b"CommandComplete"])],
            _ => vec![],
        })
        .await;
        let mut c = PcpClient::connect(&target(port, "pw")).await.unwrap();
        let err = c.node_info(0).await.unwrap_err();
        assert!(err.to_string().contains("has 9 fields"), "{err}");
        assert_eq!(c.node_count().await.unwrap(), 2, "no stale packet left");
        c.attach_node(1).await.unwrap();
    }

    #[tokio::test]
    async fn promote_sends_a_switchover_request() {
        assert_eq!(PcpClient::promote_body(2, true), b"2 \0s".to_vec());
        assert_eq!(PcpClient::promote_body(10, false), b"10 \0n".to_vec());
        let (port, log) = mock("pw", |tag, arg, n| match tag {
            b'J' => vec![packet(b'd', &[b"CommandComplete"])],
            _ => standard(tag, arg, n),
        })
        .await;
        let mut c = PcpClient::connect(&target(port, "pw")).await.unwrap();
        c.promote_node(1, true).await.unwrap();
        let seen: Vec<(u8, String)> = log.lock().unwrap().clone();
        assert!(seen.contains(&(b'J', "1 ".to_string())), "{seen:?}");
        assert!(
            c.promote_node(7, true).await.is_err(),
            "no such node: refused before asking pgpool"
        );
    }

    #[tokio::test]
    async fn attach_and_detach_send_the_right_requests() {
        let (port, log) = mock("pw", standard).await;
        let mut c = PcpClient::connect(&target(port, "pw")).await.unwrap();
        c.attach_node(1).await.unwrap();
        c.detach_node(0, false).await.unwrap();
        c.detach_node(1, true).await.unwrap();
        let seen: Vec<(u8, String)> = log.lock().unwrap().clone();
        let ops: Vec<(u8, &str)> = seen
            .iter()
            .filter(|(t, _)| *t != b'L' && *t != b'I')
            .map(|(t, a)| (*t, a.as_str()))
            .collect();
        assert_eq!(ops, vec![(b'C', "1"), (b'D', "0"), (b'd', "1")]);
    }

    #[tokio::test]
    async fn watchdog_info_reads_the_members_and_reports_a_disabled_watchdog() {
        const JSON: &[u8] = br#"{"RemoteNodeCount":1,"NodesRequireForQuorum":1,"QuorumStatus":1,"AliveNodeCount":1,"Escalated":1,"LeaderNodeName":"a:9999 Linux app","LeaderHostName":"a","NodeCount":2,"WatchdogNodes":[{"ID":0,"State":4,"NodeName":"a:9999 Linux app","HostName":"a","StateName":"LEADER","PgpoolPort":9999},{"ID":1,"State":7,"NodeName":"b:9999 Linux app1","HostName":"b","StateName":"STANDBY","PgpoolPort":9999}]}"#;
        let (port, log) = mock("pw", |tag, _arg, conn| match (tag, conn) {
            (b'W', 1) => vec![packet(b'w', &[b"CommandComplete", JSON])],
            (b'W', _) => vec![error_packet(
                "ERROR",
                "PCP: informing watchdog info failed",
                "watchdog is not enabled",
            )],
            _ => vec![],
        })
        .await;
        let mut c = PcpClient::connect(&target(port, "pw")).await.unwrap();
        let w = c.watchdog_info().await.unwrap();
        assert!(w.local_is_leader() && w.has_quorum());
        assert_eq!(w.others[0].state_name, "STANDBY");
        c.close().await;
        assert_eq!(log.lock().unwrap()[0], (b'W', "-1".to_string()));
        let mut c = PcpClient::connect(&target(port, "pw")).await.unwrap();
        let err = c.watchdog_info().await.unwrap_err().to_string();
        assert!(err.contains("watchdog is not enabled"), "{err}");
    }

    #[tokio::test]
    async fn server_errors_and_failover_in_progress() {
        let (port, _log) = mock("pw", |tag, _arg, _| match tag {
            b'L' => count(3),
            b'I' => node_info_43("h"),
            b'C' => vec![error_packet(
                "ERROR",
                "failed to process PCP request at the moment",
                "failover is in progress",
            )],
            b'D' => vec![error_packet("ERROR", "detach failed", "something else")],
            _ => vec![],
        })
        .await;
        let mut c = PcpClient::connect(&target(port, "pw")).await.unwrap();
        let err = c.attach_node(1).await.unwrap_err();
        match &err {
            PcpError::FailoverInProgress { detail, .. } => {
                assert_eq!(detail, "failover is in progress")
            }
            other => panic!("{other:?}"),
        }
        let err = c.detach_node(1, false).await.unwrap_err();
        match &err {
            PcpError::Server {
                severity,
                message,
                detail,
                ..
            } => {
                assert_eq!(severity, "ERROR");
                assert_eq!(message, "detach failed");
                assert_eq!(detail.as_deref(), Some("something else"));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string().contains("detach failed (something else)"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn silent_server_times_out_with_step() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(s);
        });
        let mut t = target(port, "pw");
        t.timeout = Duration::from_millis(200);
        let start = Instant::now();
        let err = PcpClient::connect(&t).await.unwrap_err();
        let took = start.elapsed();
        match &err {
            PcpError::Timeout { step, after, .. } => {
                assert_eq!(step, "read the md5 salt");
                assert_eq!(*after, Duration::from_millis(200));
            }
            other => panic!("{other:?}"),
        }
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn notices_forever_cannot_stretch_a_request() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = read_packet(&mut s).await;
            s.write_all(&packet(b'm', &[&SALT])).await.unwrap();
            let _ = read_packet(&mut s).await;
            s.write_all(&packet(b'r', &[b"AuthenticationOK"]))
                .await
                .unwrap();
            // An impostor: to every request, a notice every 20 ms, forever.
            let _ = read_packet(&mut s).await;
            loop {
                let notice = packet(b'N', &[b"SNOTICE", b"Mstill here"]);
                if s.write_all(&notice).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let mut t = target(port, "pw");
        t.timeout = Duration::from_millis(300);
        let mut c = PcpClient::connect(&t).await.unwrap();
        let start = Instant::now();
        let err = c.node_info(0).await.unwrap_err();
        let took = start.elapsed();
        match &err {
            PcpError::Timeout { step, after, .. } => {
                assert_eq!(step, "read node info");
                assert_eq!(*after, Duration::from_millis(300));
            }
            other => panic!("{other:?}"),
        }
        assert!(took < Duration::from_millis(600), "{took:?}");
        // The next request has a bound of its own (it is not cut at once).
        let start = Instant::now();
        assert!(c.node_count().await.is_err());
        assert!(start.elapsed() >= Duration::from_millis(250));
    }

    #[tokio::test]
    async fn timeout_mid_session() {
        // Answers nothing after login.
        let (port, _log) = mock("pw", |_tag, _arg, _| vec![]).await;
        let mut c = PcpClient::connect(&target(port, "pw")).await.unwrap();
        let err = c.node_count().await.unwrap_err();
        assert!(
            matches!(&err, PcpError::Timeout { step, .. } if step == "read the node count"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn refused_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = PcpClient::connect(&target(port, "pw")).await.unwrap_err();
        assert!(matches!(err, PcpError::Connect { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot connect to pgpool pcp at 127.0.0.1:{port}"))
        );
    }

    #[tokio::test]
    async fn garbage_reply_is_protocol_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = read_packet(&mut s).await;
            // An HTTP server, say.
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let err = PcpClient::connect(&target(port, "pw")).await.unwrap_err();
        assert!(matches!(err, PcpError::Protocol { .. }), "{err:?}");
    }

    /// Attach node 1 as pgha does: [`super::super::ops::retry`] for `retry_for`.
    async fn attach_with_retry(
        t: &PcpTarget,
        id: u32,
        retry_for: Duration,
    ) -> Result<(), PcpError> {
        let policy = crate::pgpool::ops::Retry {
            until: Instant::now() + retry_for,
            connect_for: Duration::ZERO,
        };
        crate::pgpool::ops::retry(t, policy, "attach", |t| async move {
            let mut c = PcpClient::connect(&t).await?;
            let r = c.attach_node(id).await;
            c.close().await;
            r
        })
        .await
    }

    #[tokio::test]
    async fn attach_with_retry_waits_out_a_failover() {
        let tries = Arc::new(Mutex::new(0));
        let tries2 = tries.clone();
        let (port, _log) = mock("pw", move |tag, _arg, conn| match tag {
            b'L' => count(2),
            b'I' => node_info_43("h"),
            b'C' if conn < 3 => {
                *tries2.lock().unwrap() += 1;
                vec![error_packet(
                    "ERROR",
                    "failed to process PCP request at the moment",
                    "failover is in progress",
                )]
            }
            b'C' => {
                *tries2.lock().unwrap() += 1;
                vec![packet(b'c', &[b"CommandComplete"])]
            }
            _ => vec![],
        })
        .await;
        let start = Instant::now();
        attach_with_retry(&target(port, "pw"), 1, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(*tries.lock().unwrap(), 3);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(300),
            "100 + 200 ms of pauses: {took:?}"
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test]
    async fn attach_with_retry_gives_up() {
        let (port, _log) = mock("pw", |tag, _arg, _| match tag {
            b'L' => count(2),
            b'I' => node_info_43("h"),
            b'C' => vec![error_packet(
                "ERROR",
                "failed to process PCP request at the moment",
                "failback is in progress",
            )],
            _ => vec![],
        })
        .await;
        let start = Instant::now();
        let err = attach_with_retry(&target(port, "pw"), 1, Duration::from_millis(400))
            .await
            .unwrap_err();
        assert!(
            matches!(err, PcpError::FailoverInProgress { .. }),
            "{err:?}"
        );
        let took = start.elapsed();
        assert!(took <= Duration::from_millis(900), "{took:?}");
        assert!(took >= Duration::from_millis(300), "{took:?}");

        // Other errors are not retried.
        let (port, _log) = mock("pw", standard).await;
        let start = Instant::now();
        let err = attach_with_retry(&target(port, "bad"), 1, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, PcpError::Auth { .. }), "{err:?}");
        assert!(start.elapsed() < Duration::from_millis(400));
    }

    #[test]
    fn target_debug_hides_password() {
        let t = target(1, "topsecret");
        assert!(!format!("{t:?}").contains("topsecret"));
    }
}
