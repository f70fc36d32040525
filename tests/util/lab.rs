//! A Rust handle on `lab/lab.sh`: a throwaway cluster of "hosts" (mount
//! namespaces with their own loopback address and sshd) running a real
//! PostgreSQL primary, real streaming standbys and a real pgpool-II.
//!
//! Every [`Lab`] gets its own name and address block from `lab.sh up` and is
//! torn down by `lab.sh down` when dropped, also while a test panics, so
//! tests can run in parallel and a failing test leaves nothing behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The lab script, from the checkout the tests were built from
/// (`PGHA_LAB_SH` overrides it, to try a modified lab).
pub fn lab_sh() -> PathBuf {
    match std::env::var_os("PGHA_LAB_SH") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/lab.sh"),
    }
}

/// Where `lab.sh` keeps its labs (`PGHA_LAB_ROOT`, default `/run/pgha-lab`).
pub fn lab_root() -> PathBuf {
    std::env::var_os("PGHA_LAB_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/pgha-lab"))
}

/// How to build a lab; each field maps to one `lab.sh up` option.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Number of standbys, 1..=4 (`--standbys`).
    pub standbys: u32,
    /// pgpool `failover_command` (`--failover-command`); `None` keeps the
    /// lab's default, `pgha-failover %d %M %m --old-primary %P` from the lab's bin directory.
    pub failover_command: Option<String>,
    /// pgpool `follow_primary_command` (`--follow-command`); `None`: unset.
    pub follow_command: Option<String>,
    /// Synchronous replication, `synchronous_standby_names = 'ANY 1 (...)'`
    /// (`--sync`).
    pub sync: bool,
    /// Start pgpool on the app host (`--no-pgpool` when false).
    pub pgpool: bool,
    /// Number of pgpool hosts, 1 or 3 (`--pgpools`): 1 is `app` alone; 3
    /// adds `app1` and `app2`, one pgpool-II watchdog cluster with quorum
    /// and consensus, formed before [`Lab::up`] returns.
    pub pgpools: u32,
    /// How standbys fetch archived WAL (`--restore`): `None` is the lab's
    /// default, scp from the primary's archive with PostgreSQL's default
    /// retry interval; `Some("local")` the old local-cp layout.
    pub restore: Option<&'static str>,
    /// Directory of the pgha binaries the hosts run (`--pgha-bin`): `None`
    /// is the target directory of this test build, `"system"` is `/usr/bin`
    /// (an installed package).
    pub pgha_bin: Option<String>,
    /// Run `pgha-check --fence` on every node (`--fence`), as
    /// pgha-fence.service would.
    pub fence: bool,
    /// `wal_keep_size` on every node (`--wal-keep-size`): `None` is the
    /// lab's 256MB; `Some("0")` PostgreSQL's default.
    pub wal_keep_size: Option<&'static str>,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            standbys: 2,
            failover_command: None,
            follow_command: None,
            sync: false,
            pgpool: true,
            pgpools: 1,
            pgha_bin: None,
            restore: None,
            fence: false,
            wal_keep_size: None,
        }
    }
}

/// One backend as pgpool sees it, from `pcp_node_info -v` (the verbose,
/// `Key : Value` form: the one-line form shifts columns when a field such
/// as the replication state is empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// `backend_hostnameN`.
    pub host: String,
    /// `backend_portN`.
    pub port: u16,
    /// pgpool's status ("Status Name"): `up`, `waiting`, `down`, `unused`.
    pub status: String,
    /// What pgpool last saw of the backend itself ("Backend Status Name").
    pub backend_status: String,
    /// `primary` or `standby`, pgpool's view ("Role").
    pub role: String,
    /// The role the backend reports, `pg_is_in_recovery()` ("Backend Role").
    pub backend_role: String,
    /// `pg_stat_replication.state` on the primary for this standby, matched
    /// by `backend_application_nameN` (`streaming`, `none`, or empty).
    pub replication_state: String,
    /// `pg_stat_replication.sync_state` (`async`, `sync`, `quorum`, ...).
    pub sync_state: String,
    /// The whole output, for messages.
    pub raw: String,
}

impl NodeInfo {
    /// Parses the output of `pcp_node_info -v`.
    pub fn parse_verbose(out: &str) -> Option<NodeInfo> {
        let mut n = NodeInfo {
            raw: out.trim().to_string(),
            ..NodeInfo::default()
        };
        let mut seen = 0;
        for line in out.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim().to_string();
            match k.trim() {
                "Hostname" => n.host = v,
                "Port" => n.port = v.parse().ok()?,
                "Status Name" => n.status = v,
                "Backend Status Name" => n.backend_status = v,
                "Role" => n.role = v,
                "Backend Role" => n.backend_role = v,
                "Replication State" => n.replication_state = v,
                "Replication Sync State" => n.sync_state = v,
                _ => continue,
            }
            seen += 1;
        }
        (seen >= 4 && !n.host.is_empty()).then_some(n)
    }
}

/// One member of the watchdog cluster as another member reports it (a
/// `Node Name` block of `pcp_watchdog_info -v`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchdogMember {
    /// "Node Name": `ADDR:PGPOOL_PORT OS HOSTNAME`.
    pub name: String,
    /// "Host Name": the member's `hostnameN`, its address.
    pub host: String,
    /// "Status Name": `LEADER`, `STANDBY`, `LOST`, `SHUTDOWN`, `DEAD`,
    /// `LOADING`, `INITIALIZING`, `STANDING FOR LEADER`, `PARTICIPATING IN
    /// ELECTION`, `JOINING`, ...
    pub state: String,
    /// "Membership Status": `MEMBER`, or `NOT-MEMBER` once removed.
    pub membership: String,
}

/// The watchdog cluster as one member sees it, from `pcp_watchdog_info -v`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchdogView {
    /// "Leader Node Name" (`Not Set` while there is none).
    pub leader_name: String,
    /// "Leader Host Name": the leader's address (`Not Set` while none).
    pub leader_host: String,
    /// "Quorum state": `QUORUM EXIST`, `QUORUM IS ON THE EDGE`, `QUORUM
    /// ABSENT`, or `NO LEADER NODE` while there is none.
    pub quorum: String,
    /// "Alive Remote Nodes": the other members this one sees alive.
    pub alive_remotes: u32,
    /// Every member, the asking member first.
    pub members: Vec<WatchdogMember>,
    /// The whole output, for messages.
    pub raw: String,
}

impl WatchdogView {
    /// Parses the output of `pcp_watchdog_info -v`.
    pub fn parse_verbose(out: &str) -> Option<WatchdogView> {
        let mut v = WatchdogView {
            raw: out.trim().to_string(),
            ..WatchdogView::default()
        };
        for line in out.lines() {
            let Some((k, val)) = line.split_once(':') else {
                continue;
            };
            let val = val.trim().to_string();
            match k.trim() {
                "Leader Node Name" => v.leader_name = val,
                "Leader Host Name" => v.leader_host = val,
                "Quorum state" => v.quorum = val,
                "Alive Remote Nodes" => v.alive_remotes = val.parse().ok()?,
                "Node Name" => v.members.push(WatchdogMember {
                    name: val,
                    ..WatchdogMember::default()
                }),
                key => {
                    let Some(m) = v.members.last_mut() else {
                        continue;
                    };
                    match key {
                        "Host Name" => m.host = val,
                        "Status Name" => m.state = val,
                        "Membership Status" => m.membership = val,
                        _ => {}
                    }
                }
            }
        }
        (!v.quorum.is_empty() && !v.members.is_empty()).then_some(v)
    }

    /// The leader's address, `None` while there is no leader.
    pub fn leader(&self) -> Option<&str> {
        let l = self.leader_host.as_str();
        (!l.is_empty() && l != "Not Set").then_some(l)
    }

    /// `QUORUM EXIST`: this member may fail backends over.
    pub fn has_quorum(&self) -> bool {
        self.quorum == "QUORUM EXIST"
    }

    /// The asking member's own state (`LEADER`, `STANDBY`, ...).
    pub fn own_state(&self) -> &str {
        self.members.first().map_or("", |m| m.state.as_str())
    }

    /// What this view says of the member at `addr`.
    pub fn member(&self, addr: &str) -> Option<&WatchdogMember> {
        self.members.iter().find(|m| m.host == addr)
    }
}

/// A running lab. Dropping it runs `lab.sh down`.
#[derive(Debug)]
pub struct Lab {
    /// The lab's name (`--name`), unique per test.
    pub name: String,
    /// The address block `127.A.B`: hosts are `NET.2+K` and `NET.20`.
    pub net: String,
    /// The lab's directory (`/run/pgha-lab/NAME`), holding `lab.env`,
    /// `bin/` and each host's private directories under `hosts/`.
    pub dir: PathBuf,
    /// Number of standbys: hosts are `pg0` (primary) ... `pgN`.
    pub standbys: u32,
    /// Number of pgpool hosts: `app`, then `app1`, `app2` (watchdog).
    pub pgpools: u32,
    /// Every variable of `lab.env`.
    pub env: BTreeMap<String, String>,
}

static LABS: AtomicU32 = AtomicU32::new(0);

fn fail_prerequisites() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "the end-to-end tests need root (mount namespaces, sshd, iptables): run them as root, \
             e.g. `sudo lab/test`"
        );
    }
    let (pg, pool) = (pg_bin(), pgpool_bin());
    let tools: Vec<String> = [
        "/usr/bin/unshare",
        "/usr/bin/nsenter",
        "/usr/sbin/runuser",
        "/usr/sbin/sshd",
        "/usr/bin/ssh",
        "/usr/bin/ssh-keygen",
        "/usr/sbin/iptables",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["pgpool", "pg_md5", "pcp_node_info"].map(|t| format!("{pool}/{t}")))
    .chain(["initdb", "psql", "pg_ctl"].map(|t| format!("{pg}/{t}")))
    .collect();
    let missing: Vec<&str> = tools
        .iter()
        .map(String::as_str)
        .filter(|t| !Path::new(t).exists())
        .collect();
    if !missing.is_empty() {
        panic!(
            "the end-to-end tests need {}: run lab/setup.sh as root (it installs postgresql-15 \
             pgpool2 openssh-server iptables util-linux, and PostgreSQL 16/18 and pgpool-II 4.7 \
             into /var/cache/pgha-lab for lab/versions.sh)",
            missing.join(", ")
        );
    }
}

/// The PostgreSQL server binaries the labs run (`PGHA_PG_BIN`, set by
/// `lab/versions.sh`; default Debian's PostgreSQL 15).
pub fn pg_bin() -> String {
    std::env::var("PGHA_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into())
}

/// The pgpool-II binaries the labs run (`PGHA_PGPOOL_BIN`; default
/// Debian's pgpool2 4.3 in `/usr/sbin`).
pub fn pgpool_bin() -> String {
    std::env::var("PGHA_PGPOOL_BIN").unwrap_or_else(|_| "/usr/sbin".into())
}

/// A lab name for the current test: the test function's name (cargo's test
/// threads carry it), the pid and a counter. `lab.sh` accepts
/// `[A-Za-z0-9_-]+`.
fn lab_name() -> String {
    let thread = std::thread::current();
    let test = thread
        .name()
        .and_then(|n| n.rsplit("::").next())
        .unwrap_or("lab");
    let mut short: String = test
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(30)
        .collect();
    if short.is_empty() {
        short.push_str("lab");
    }
    format!(
        "e2e-{short}-{}-{}",
        std::process::id(),
        LABS.fetch_add(1, Ordering::SeqCst)
    )
}

/// Labs left behind by a test process that was killed before its `Drop`
/// ran (SIGKILL, a timeout in CI): named `e2e-...-PID-N` with PID gone.
/// They would hold address blocks and ports; take them down.
fn reap_stale_labs() {
    let Ok(entries) = std::fs::read_dir(lab_root()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("e2e-") {
            continue;
        }
        let parts: Vec<&str> = name.rsplitn(3, '-').collect();
        let Some(pid) = parts.get(1).and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid as u32 == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("lab: taking down stale lab {name} (its test process {pid} is gone)");
        let _ = Command::new(lab_sh()).args(["down", &name]).output();
    }
}

fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(v);
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

impl Lab {
    /// Starts a lab (`lab.sh up`) and waits until it is ready: primary up,
    /// every standby streaming, pgpool answering. Panics with lab.sh's
    /// output when it cannot.
    pub fn up(opts: LabOptions) -> Lab {
        fail_prerequisites();
        reap_stale_labs();
        let name = lab_name();
        let pgha_bin = match &opts.pgha_bin {
            Some(b) => b.clone(),
            None => target_dir().to_string_lossy().into_owned(),
        };
        let mut cmd = Command::new(lab_sh());
        cmd.args(["up", "--name", &name])
            .args(["--standbys", &opts.standbys.to_string()])
            .args(["--pgpools", &opts.pgpools.to_string()])
            .args(["--pgha-bin", &pgha_bin]);
        if let Some(c) = &opts.failover_command {
            cmd.args(["--failover-command", c]);
        }
        if let Some(c) = &opts.follow_command {
            cmd.args(["--follow-command", c]);
        }
        if opts.sync {
            cmd.arg("--sync");
        }
        if !opts.pgpool {
            cmd.arg("--no-pgpool");
        }
        if opts.fence {
            cmd.arg("--fence");
        }
        if let Some(r) = opts.restore {
            cmd.args(["--restore", r]);
        }
        if let Some(k) = opts.wal_keep_size {
            cmd.args(["--wal-keep-size", k]);
        }
        let started = Instant::now();
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", lab_sh().display()));
        if !out.status.success() {
            // lab.sh tears a half-built lab down itself, except when it
            // fails past that point; make sure nothing is left either way.
            let _ = Command::new(lab_sh()).args(["down", &name]).output();
            panic!(
                "{}",
                describe(&format!("lab.sh up --name {name} failed"), &out)
            );
        }
        let dir = lab_root().join(&name);
        let env_path = dir.join("lab.env");
        let env = parse_env(
            &std::fs::read_to_string(&env_path)
                .unwrap_or_else(|e| panic!("lab {name}: cannot read {}: {e}", env_path.display())),
        );
        let lab = Lab {
            net: env.get("NET").cloned().expect("lab.env has no NET"),
            standbys: env
                .get("STANDBYS")
                .and_then(|s| s.parse().ok())
                .expect("lab.env has no STANDBYS"),
            pgpools: env
                .get("PGPOOLS")
                .and_then(|s| s.parse().ok())
                .expect("lab.env has no PGPOOLS"),
            name,
            dir,
            env,
        };
        eprintln!(
            "lab {} up on {}.x in {:.1}s ({})",
            lab.name,
            lab.net,
            started.elapsed().as_secs_f64(),
            lab.dir.display()
        );
        lab
    }

    /// Host names: the pgpool hosts, then `pg0` .. `pgN`.
    pub fn hosts(&self) -> Vec<String> {
        let mut h = self.pgpool_hosts();
        h.extend(self.pg_hosts());
        h
    }

    /// The pgpool hosts: `app`, then `app1`, `app2` with three pgpools
    /// (watchdog member M, `pgpool_node_id` M, is `app` for 0, `appM` else).
    pub fn pgpool_hosts(&self) -> Vec<String> {
        (0..self.pgpools)
            .map(|m| match m {
                0 => "app".to_string(),
                _ => format!("app{m}"),
            })
            .collect()
    }

    /// The host whose address (pgpool's or a backend's main one) is `addr`.
    pub fn host_at(&self, addr: &str) -> Option<String> {
        self.hosts().into_iter().find(|h| self.addr(h) == addr)
    }

    /// The PostgreSQL hosts `pg0` .. `pgN` (pg0 starts as the primary).
    pub fn pg_hosts(&self) -> Vec<String> {
        (0..=self.standbys).map(|k| format!("pg{k}")).collect()
    }

    /// The host's address: pgpool's `backend_hostnameK` for `pgK`, NET.20
    /// for the app host, NET.20+M for `appM` (pgpool on :9999, PCP on :9898).
    pub fn addr(&self, host: &str) -> String {
        match host {
            "app" => format!("{}.20", self.net),
            _ if host.starts_with("app") => format!("{}.{}", self.net, 20 + pgpool_index(host)),
            _ => format!("{}.{}", self.net, 2 + pg_index(host)),
        }
    }

    /// The host's replication address (`NET.102+K`): the standbys'
    /// `primary_conninfo` and pgha's `replication_host` point here, so
    /// blackholing [`Lab::addr`] cuts pgpool off without cutting replication.
    pub fn repl_addr(&self, host: &str) -> String {
        format!("{}.{}", self.net, 102 + pg_index(host))
    }

    /// The lab's copy of a pgha binary, as the hosts see it.
    pub fn bin(&self, name: &str) -> String {
        self.dir
            .join("bin")
            .join(name)
            .to_string_lossy()
            .into_owned()
    }

    /// A host's private directories as seen from outside (e.g.
    /// `host_dir("pg1").join("home")` is pg1's `/var/lib/postgresql`).
    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.dir.join("hosts").join(host)
    }

    fn lab(&self, args: &[&str]) -> Output {
        Command::new(lab_sh())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", lab_sh().display()))
    }

    fn lab_ok(&self, args: &[&str]) -> Output {
        let out = self.lab(args);
        if !out.status.success() {
            panic!("{}", describe(&format!("lab.sh {}", args.join(" ")), &out));
        }
        out
    }

    /// Runs `argv` on `host` as postgres, inside the host's mount namespace
    /// (`lab.sh exec`). Returns whatever happened; does not panic on failure.
    pub fn exec(&self, host: &str, argv: &[&str]) -> Output {
        let mut args = vec!["exec", &self.name, host, "--"];
        args.extend_from_slice(argv);
        self.lab(&args)
    }

    /// Like [`Lab::exec`], as root.
    pub fn exec_root(&self, host: &str, argv: &[&str]) -> Output {
        let mut args = vec!["exec", &self.name, host, "--root", "--"];
        args.extend_from_slice(argv);
        self.lab(&args)
    }

    /// `sh -c SCRIPT` on `host` as postgres.
    pub fn sh(&self, host: &str, script: &str) -> Output {
        self.exec(host, &["sh", "-c", script])
    }

    /// `psql -Atc SQL` on `pgK` through the host's local socket, as postgres
    /// (database postgres). Returns stdout without the final newline; panics
    /// with psql's stderr on error.
    pub fn psql(&self, host: &str, sql: &str) -> String {
        match self.try_psql(host, sql) {
            Ok(s) => s,
            Err(e) => panic!("lab {}: psql on {host} failed: {sql}\n{e}", self.name),
        }
    }

    /// Like [`Lab::psql`], returning psql's stderr as the error.
    pub fn try_psql(&self, host: &str, sql: &str) -> Result<String, String> {
        self.try_psql_db(host, "postgres", sql)
    }

    /// Like [`Lab::try_psql`] in database `db` (the lab's application
    /// database is `app`).
    pub fn try_psql_db(&self, host: &str, db: &str, sql: &str) -> Result<String, String> {
        let out = self.exec(
            host,
            &[
                "psql",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-Atc",
                sql,
            ],
        );
        result(out)
    }

    /// `psql -Atc SQL` through pgpool (NET.20:9999, user app, database app),
    /// run on the app host: what an application sees.
    pub fn pgpool_sql(&self, sql: &str) -> Result<String, String> {
        self.pgpool_sql_on("app", sql)
    }

    /// Like [`Lab::pgpool_sql`], through the pgpool of pgpool host `host`
    /// (its own address, port 9999), run on that host.
    pub fn pgpool_sql_on(&self, host: &str, sql: &str) -> Result<String, String> {
        let app = self.addr(host);
        let out = self.exec(
            host,
            &[
                "psql",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &app,
                "-p",
                "9999",
                "-U",
                "app",
                "-d",
                "app",
                "-Atc",
                sql,
            ],
        );
        result(out)
    }

    /// pgpool's own `pcp_node_info -w -n NODE` (non-verbose, one line), run
    /// on the app host whose `.pcppass` holds the PCP password. Panics if
    /// pcp fails.
    pub fn pcp_node_info(&self, node: u32) -> String {
        match self.try_pcp_node_info(node) {
            Ok(s) => s,
            Err(e) => panic!("lab {}: pcp_node_info -n {node} failed: {e}", self.name),
        }
    }

    /// Like [`Lab::pcp_node_info`], returning the error instead (pgpool may
    /// be busy failing over).
    pub fn try_pcp_node_info(&self, node: u32) -> Result<String, String> {
        self.pcp_node_info_with("app", node, &[])
    }

    /// `pcp_node_info -w [EXTRA] -h ADDR -p 9898 -U pgpool -n NODE` on
    /// pgpool host `host`, ADDR being its address. Asked again (up to 3
    /// times) when the PCP process answering it exits mid-request: pgpool
    /// restarts its PCP child about a second after a failback, and a
    /// request in flight then ends with "unable to read data from socket".
    /// The request only reads.
    fn pcp_node_info_with(&self, host: &str, node: u32, extra: &[&str]) -> Result<String, String> {
        let n = node.to_string();
        let mut args = extra.to_vec();
        args.extend_from_slice(&["-n", &n]);
        let mut r = self.pcp_on(host, &["pcp_node_info"], &args);
        for _ in 0..2 {
            match &r {
                Err(e) if e.contains("unable to read data from socket") => {
                    std::thread::sleep(Duration::from_millis(300));
                    r = self.pcp_on(host, &["pcp_node_info"], &args);
                }
                _ => break,
            }
        }
        r
    }

    /// A PCP tool (`tool`, e.g. `["pcp_detach_node"]`, or with a wrapper
    /// such as `timeout 10` before it) run on pgpool host `host` against
    /// its own PCP port, with its `.pcppass`: `TOOL -w ARGS -h ADDR -p 9898
    /// -U pgpool`.
    pub fn pcp_on(&self, host: &str, tool: &[&str], args: &[&str]) -> Result<String, String> {
        let a = self.addr(host);
        let mut argv = tool.to_vec();
        argv.push("-w");
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["-h", &a, "-p", "9898", "-U", "pgpool"]);
        result(self.exec(host, &argv))
    }

    /// `pcp_node_info -w -v -n NODE`, parsed; the error says why pcp
    /// failed or what it printed instead.
    pub fn pcp_node(&self, node: u32) -> Result<NodeInfo, String> {
        self.pcp_node_on("app", node)
    }

    /// Like [`Lab::pcp_node`], asking the pgpool of pgpool host `host`.
    pub fn pcp_node_on(&self, host: &str, node: u32) -> Result<NodeInfo, String> {
        let out = self.pcp_node_info_with(host, node, &["-v"])?;
        NodeInfo::parse_verbose(&out)
            .ok_or_else(|| format!("unexpected pcp_node_info -v output on {host}: {out:?}"))
    }

    /// `pcp_watchdog_info -w -v` against pgpool host `host`'s own PCP port,
    /// run there: the watchdog cluster as that member sees it.
    pub fn watchdog_info(&self, host: &str) -> Result<WatchdogView, String> {
        let out = self.pcp_on(host, &["timeout", "10", "pcp_watchdog_info"], &["-v"])?;
        WatchdogView::parse_verbose(&out)
            .ok_or_else(|| format!("unexpected pcp_watchdog_info -v output on {host}: {out:?}"))
    }

    /// Kills every process of `host` (`lab.sh kill`): a dead machine.
    pub fn kill_host(&self, host: &str) {
        self.lab_ok(&["kill", &self.name, host]);
    }

    /// Freezes every process of `host` (`lab.sh pause`, SIGSTOP): a host
    /// that neither answers nor dies. `down` kills it all the same.
    pub fn pause_host(&self, host: &str) {
        self.lab_ok(&["pause", &self.name, host]);
    }

    /// Lets a paused host run on (`lab.sh resume`, SIGCONT).
    pub fn resume_host(&self, host: &str) {
        self.lab_ok(&["resume", &self.name, host]);
    }

    /// Drops every packet to `addr` (`lab.sh blackhole`, an iptables DROP
    /// rule tagged with the lab's name): a host that hangs instead of
    /// refusing connections.
    pub fn blackhole(&self, addr: &str) {
        self.lab_ok(&["blackhole", &self.name, addr]);
    }

    /// A lossy link to `addr` (`lab.sh syn-loss`): of the TCP SYNs sent
    /// to it, only every `every`-th gets through; `None` removes it.
    pub fn syn_loss(&self, addr: &str, every: Option<u32>) {
        let every = every.map(|e| e.to_string()).unwrap_or_else(|| "off".into());
        self.lab_ok(&["syn-loss", &self.name, addr, &every]);
    }

    /// Removes the rule [`Lab::blackhole`] added.
    pub fn unblackhole(&self, addr: &str) {
        self.lab_ok(&["unblackhole", &self.name, addr]);
    }

    /// A network cut between `host` and each of `peers` (`lab.sh cut`):
    /// every packet between them is dropped, both ways, on all their
    /// addresses; each still reaches the other hosts.
    pub fn cut(&self, host: &str, peers: &[&str]) {
        let mut args = vec!["cut", &self.name, host];
        args.extend_from_slice(peers);
        self.lab_ok(&args);
    }

    /// Undoes [`Lab::cut`] (`lab.sh heal`).
    pub fn heal(&self, host: &str, peers: &[&str]) {
        let mut args = vec!["heal", &self.name, host];
        args.extend_from_slice(peers);
        self.lab_ok(&args);
    }

    /// Boots a killed `host` again (`lab.sh restart-host`): its sshd, then
    /// its pgpool, or its PostgreSQL as the unit would, after the start
    /// guard. Returns lab.sh's output (the guard's lines are on stderr).
    pub fn restart_host(&self, host: &str) -> Output {
        self.lab_ok(&["restart-host", &self.name, host])
    }

    /// `pg_ctl start -w` on `host` (`lab.sh start-pg`).
    pub fn start_pg(&self, host: &str) {
        self.lab_ok(&["start-pg", &self.name, host]);
    }

    /// `lab.sh fill-archive`: `host`'s archive directory is full, as a
    /// full disk is: what is there stays readable, and writing anything
    /// new fails with ENOSPC. Undone by [`Lab::unfill_archive`] (or by
    /// killing the host: the overlay lives in its mount namespace).
    pub fn fill_archive(&self, host: &str) {
        self.lab_ok(&["fill-archive", &self.name, host]);
    }

    /// `lab.sh unfill-archive`: room again in `host`'s archive directory;
    /// complete files written while it was full are kept.
    pub fn unfill_archive(&self, host: &str) {
        self.lab_ok(&["unfill-archive", &self.name, host]);
    }

    /// Like [`Lab::start_pg`] for a server something may stop as soon as
    /// it is up (the fence, every 250 ms): `pg_ctl -w` may then see it gone
    /// before it saw it ready and fail. Passes when the server log says it
    /// became ready after this call, whatever pg_ctl said.
    pub fn start_pg_briefly(&self, host: &str) {
        let before = self.pg_log(host).len();
        let out = self.lab(&["start-pg", &self.name, host]);
        let ready = self
            .pg_log(host)
            .get(before..)
            .is_some_and(|l| l.contains("database system is ready to accept connections"));
        assert!(
            out.status.success() || ready,
            "{}\n(and its log never said it was ready)",
            describe(&format!("lab.sh start-pg {} {host}", self.name), &out)
        );
    }

    /// (Re)starts pgpool on the app host (`lab.sh start-pgpool`).
    pub fn start_pgpool(&self) {
        self.start_pgpool_on("app");
    }

    /// (Re)starts pgpool on pgpool host `host` (`lab.sh start-pgpool NAME
    /// HOST`); with the watchdog, returns once it has joined the cluster.
    pub fn start_pgpool_on(&self, host: &str) {
        self.lab_ok(&["start-pgpool", &self.name, host]);
    }

    /// pgha's journal on the app host (state directory
    /// `/var/lib/postgresql/pgha`), one JSON value a line; empty before
    /// the first run.
    pub fn journal(&self) -> Vec<serde_json::Value> {
        self.journal_in("pgha")
    }

    /// The journal of the state directory `/var/lib/postgresql/STATE` on
    /// the app host.
    pub fn journal_in(&self, state: &str) -> Vec<serde_json::Value> {
        let path = self
            .host_dir("app")
            .join("home")
            .join(state)
            .join("journal.jsonl");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("journal line is JSON"))
            .collect()
    }

    /// pgpool's log (its stderr, including what failover_command printed).
    pub fn pgpool_log(&self) -> String {
        self.pgpool_log_on("app")
    }

    /// Like [`Lab::pgpool_log`], of pgpool host `host`.
    pub fn pgpool_log_on(&self, host: &str) -> String {
        std::fs::read(self.host_dir(host).join("home/pgpool.log"))
            .map(|b| text(&b))
            .unwrap_or_default()
    }

    /// PostgreSQL's server log on `host` (`pg_ctl -l`).
    pub fn pg_log(&self, host: &str) -> String {
        std::fs::read(self.host_dir(host).join("home/15/pgha-postgresql.log"))
            .map(|b| text(&b))
            .unwrap_or_default()
    }

    /// Polls `f` every 100 ms until it returns `Some`; on timeout panics
    /// naming `what`. Use [`Lab::wait_observing`] to have the panic say
    /// what was last seen.
    pub fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        self.wait_observing(what, timeout, || f().ok_or_else(|| "nothing".to_string()))
    }

    /// Like [`Lab::wait_until`], with `f` returning `Err(observation)` while
    /// waiting, so that a timeout says what was last seen.
    pub fn wait_observing<T, E: std::fmt::Debug>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Result<T, E>,
    ) -> T {
        let start = Instant::now();
        loop {
            match f() {
                Ok(v) => return v,
                Err(last) => {
                    if start.elapsed() >= timeout {
                        panic!(
                            "lab {}: timed out after {:.1}s waiting for {what}; last observed: {last:?}",
                            self.name,
                            start.elapsed().as_secs_f64()
                        );
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Lab {
    /// Copies the lab's logs (each pgpool host's pgpool log with pgha's
    /// output in it, its pgpool.conf and pgha's state directory with the
    /// journal, every server's log, every sshd's log) to
    /// `target/e2e-logs/NAME/` and returns that directory. The app host's
    /// log and journal are also kept under their old names, `pgpool.log`
    /// and `journal.jsonl`.
    pub fn keep_logs(&self) -> PathBuf {
        let dest = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/e2e-logs")
            .join(&self.name);
        let _ = std::fs::create_dir_all(&dest);
        let app = self.host_dir("app");
        let mut files: Vec<(PathBuf, String)> = vec![
            (self.dir.join("lab.env"), "lab.env".into()),
            (app.join("home/pgpool.log"), "pgpool.log".into()),
            (app.join("home/pgha/journal.jsonl"), "journal.jsonl".into()),
        ];
        for h in self.pgpool_hosts() {
            let hd = self.host_dir(&h);
            files.push((hd.join("home/pgpool.log"), format!("{h}.pgpool.log")));
            files.push((
                hd.join("etc-pgpool2/pgpool.conf"),
                format!("{h}.pgpool.conf"),
            ));
            copy_dir(&hd.join("home/pgha"), &dest.join(format!("{h}.pgha")));
        }
        for h in self.hosts() {
            files.push((self.host_dir(&h).join("sshd.log"), format!("{h}.sshd.log")));
            if h.starts_with("pg") {
                files.push((
                    self.host_dir(&h).join("home/15/pgha-postgresql.log"),
                    format!("{h}.postgresql.log"),
                ));
            }
        }
        for (from, to) in files {
            let _ = std::fs::copy(from, dest.join(to));
        }
        dest
    }
}

/// Copies the regular files of `from` and its subdirectories (pgha's state
/// directory: the journal, the last run's report) into `to`, skipping
/// sockets, FIFOs and links; whatever fails is skipped.
fn copy_dir(from: &Path, to: &Path) {
    let Ok(entries) = std::fs::read_dir(from) else {
        return;
    };
    let _ = std::fs::create_dir_all(to);
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else if t.is_file() {
            let _ = std::fs::copy(e.path(), to.join(e.file_name()));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let kept = self.keep_logs();
            eprintln!(
                "lab {}: the test failed; its logs are in {}",
                self.name,
                kept.display()
            );
        }
        let out = Command::new(lab_sh()).args(["down", &self.name]).output();
        let ok = matches!(&out, Ok(o) if o.status.success());
        if !ok {
            let msg = match &out {
                Ok(o) => describe(&format!("lab.sh down {} failed", self.name), o),
                Err(e) => format!("cannot run lab.sh down {}: {e}", self.name),
            };
            if std::thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// Of pg1 and pg2, the one that is not `new`, and both node ids.
pub fn the_other(new: &str) -> (&'static str, u32, u32) {
    let other = if new == "pg1" { "pg2" } else { "pg1" };
    (other, node_id(new), node_id(other))
}

/// The node id of a lab node host (`pg2` → 2).
pub fn node_id(host: &str) -> u32 {
    host.strip_prefix("pg")
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("{host} is not a node host"))
}

/// The pid of the detached settle phase pgha-failover started, from the
/// line it printed in pgpool's log ("settling in the background (pid N)").
pub fn settle_pid(pgpool_log: &str) -> Option<u32> {
    pgpool_log.lines().find_map(|l| {
        l.split("settling in the background (pid ")
            .nth(1)?
            .split(')')
            .next()?
            .parse()
            .ok()
    })
}

/// Where a standby streams from right now: (sender host, timeline).
pub fn upstream(lab: &Lab, host: &str) -> Option<(String, u32)> {
    let out = lab
        .try_psql(
            host,
            "select sender_host, received_tli from pg_stat_wal_receiver where status = 'streaming'",
        )
        .ok()?;
    let (h, tl) = out.split_once('|')?;
    Some((h.to_string(), tl.parse().ok()?))
}

impl Lab {
    /// Waits until `host` is a primary on timeline `tl`.
    pub fn wait_primary(&self, host: &str, tl: u32, timeout: Duration) {
        self.wait_observing(
            &format!("{host} primary on timeline {tl}"),
            timeout,
            || match role(self, host) {
                Ok((true, t)) if t == tl => Ok(()),
                other => Err(other),
            },
        );
    }

    /// Waits until one of the standbys pg1..pgN is primary on timeline `tl`
    /// and returns it. pgha promotes the standby with the most WAL and
    /// pgpool's choice only on a tie; which standby received most when the
    /// primary died is chance, so a test never assumes pg1.
    pub fn wait_new_primary(&self, tl: u32, timeout: Duration) -> String {
        self.wait_observing(&format!("a primary on timeline {tl}"), timeout, || {
            let seen: Vec<_> = (1..=self.standbys)
                .map(|k| (format!("pg{k}"), role(self, &format!("pg{k}"))))
                .collect();
            seen.iter()
                .find(|(_, r)| matches!(r, Ok((true, t)) if *t == tl))
                .map(|(h, _)| h.clone())
                .ok_or(seen)
        })
    }

    /// Waits until `host` streams from `from` (either of its addresses) on
    /// timeline `tl`.
    pub fn wait_streams(&self, host: &str, from: &str, tl: u32, timeout: Duration) {
        let addrs = [self.addr(from), self.repl_addr(from)];
        self.wait_observing(
            &format!("{host} streaming from {from} on timeline {tl}"),
            timeout,
            || match upstream(self, host) {
                Some((h, t)) if addrs.contains(&h) && t == tl => Ok(()),
                other => Err(other),
            },
        );
    }

    /// Waits until pgpool shows `node` down.
    pub fn wait_detached(&self, node: u32, timeout: Duration) {
        self.wait_observing(
            &format!("pgpool to detach node {node}"),
            timeout,
            || match self.pcp_node(node) {
                Ok(n) if n.status == "down" => Ok(()),
                other => Err(other),
            },
        );
    }
}

/// (primary?, timeline) of a node, asked through its local socket: a
/// primary's timeline from its current WAL file name (the control file lags
/// after a promotion), a standby's from its WAL receiver (0 when none).
pub fn role(lab: &Lab, host: &str) -> Result<(bool, u32), String> {
    let out = lab.try_psql(
        host,
        "select not pg_is_in_recovery(), case when pg_is_in_recovery() \
           then coalesce((select received_tli from pg_stat_wal_receiver), 0) \
           else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int end",
    )?;
    let (p, tl) = out.split_once('|').ok_or(out.clone())?;
    Ok((p == "t", tl.parse().map_err(|_| out.clone())?))
}

fn pgpool_index(host: &str) -> u32 {
    host.strip_prefix("app")
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("unknown lab host {host:?} (app, app1, app2, pg0, ...)"))
}

fn pg_index(host: &str) -> u32 {
    host.strip_prefix("pg")
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("unknown lab host {host:?} (app, app1, app2, pg0, ...)"))
}

fn result(out: Output) -> Result<String, String> {
    if out.status.success() {
        Ok(text(&out.stdout).trim_end_matches('\n').to_string())
    } else {
        Err(format!("{}: {}", out.status, text(&out.stderr).trim_end()))
    }
}

/// The cargo target directory holding this build's binaries (where
/// `CARGO_BIN_EXE_pgha-failover` points, or `target/debug` derived from the
/// test executable's own path when cargo did not set it).
pub fn target_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("CARGO_BIN_EXE_pgha-failover")
        && let Some(d) = Path::new(&p).parent()
    {
        return d.to_path_buf();
    }
    let mut p = std::env::current_exe().expect("current_exe");
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lab_env() {
        let env =
            parse_env("NAME='x'\nNET='127.0.101'\nPGPOOL_PORT=9999\nHOST_PIDS='app=1 pg0=2 '\n");
        assert_eq!(env["NET"], "127.0.101");
        assert_eq!(env["PGPOOL_PORT"], "9999");
        assert_eq!(env["HOST_PIDS"], "app=1 pg0=2 ");
    }

    #[test]
    fn parses_node_info() {
        let out = "Hostname               : 127.0.101.3\nPort                   : 5432\n\
                   Status                 : 2\nWeight                 : 0.333333\n\
                   Status Name            : up\nBackend Status Name    : up\n\
                   Role                   : standby\nBackend Role           : standby\n\
                   Replication Delay      : 0\nReplication State      : \n\
                   Replication Sync State : async\nLast Status Change     : 2026-11-25 18:21:01\n";
        let n = NodeInfo::parse_verbose(out).unwrap();
        assert_eq!(n.host, "127.0.101.3");
        assert_eq!(n.port, 5432);
        assert_eq!(n.status, "up");
        assert_eq!(n.role, "standby");
        assert_eq!(n.replication_state, "");
        assert_eq!(n.sync_state, "async");
        assert!(NodeInfo::parse_verbose("garbage").is_none());
    }

    #[test]
    fn parses_watchdog_info() {
        let out = "Watchdog Cluster Information \nTotal Nodes              : 3\n\
                   Remote Nodes             : 2\nMember Remote Nodes      : 2\n\
                   Alive Remote Nodes       : 1\nNodes required for quorum: 2\n\
                   Quorum state             : QUORUM EXIST\nLocal node escalation    : NO\n\
                   Leader Node Name         : 127.0.101.20:9999 Linux vm\n\
                   Leader Host Name         : 127.0.101.20\n\n\
                   Watchdog Node Information \n\
                   Node Name         : 127.0.101.21:9999 Linux vm\nHost Name         : 127.0.101.21\n\
                   Delegate IP       : Not_Set\nPgpool port       : 9999\n\
                   Status            : 7\nStatus Name       : STANDBY\nMembership Status : MEMBER\n\n\
                   Node Name         : 127.0.101.20:9999 Linux vm\nHost Name         : 127.0.101.20\n\
                   Status            : 4\nStatus Name       : LEADER\nMembership Status : MEMBER\n\n\
                   Node Name         : 127.0.101.22:9999 Linux vm\nHost Name         : 127.0.101.22\n\
                   Status            : 8\nStatus Name       : LOST\nMembership Status : MEMBER\n";
        let v = WatchdogView::parse_verbose(out).unwrap();
        assert_eq!(v.leader(), Some("127.0.101.20"));
        assert_eq!(v.leader_name, "127.0.101.20:9999 Linux vm");
        assert!(v.has_quorum());
        assert_eq!(v.alive_remotes, 1);
        assert_eq!(v.own_state(), "STANDBY");
        assert_eq!(v.members.len(), 3);
        assert_eq!(v.member("127.0.101.22").unwrap().state, "LOST");
        assert_eq!(v.member("127.0.101.20").unwrap().membership, "MEMBER");
        let none = out
            .replace(
                "Leader Host Name         : 127.0.101.20",
                "Leader Host Name         : Not Set",
            )
            .replace("QUORUM EXIST", "NO LEADER NODE");
        let v = WatchdogView::parse_verbose(&none).unwrap();
        assert_eq!(v.leader(), None);
        assert!(!v.has_quorum());
        assert!(WatchdogView::parse_verbose("garbage").is_none());
    }
}
