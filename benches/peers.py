"""The peers of the benchmark: repmgr, Patroni (+ etcd) and pg_auto_failover.

Each runs on the lab's hosts (lab/lab.sh: the same namespaced hosts, 127.x
addresses, PostgreSQL 15 binaries and pgpool-II) with pgpool in front, as
for pgha; what differs is who fails over. pgpool gets no failover_command:
it detaches the dead node after its health check (or a broken session) and
finds the new primary itself (pg_is_in_recovery on every node,
search_primary_node_timeout = 0: until there is one), so "first write
through pgpool" means the same thing for every variant.

  repmgr           the lab's cluster, registered with repmgr; repmgrd on every
                   node, failover = automatic, repmgr's own promote/follow
  patroni          etcd on the app host; Patroni on every node bootstraps and
                   manages its own PostgreSQL (same data directory and binaries)
  pgautofailover   the monitor on the app host, a keeper on every node; the
                   keepers create their own nodes (pg_autoctl create postgres)

The timings (the fastest settings each peer's documentation calls safe) are
in TIMINGS and benches/README.md says why each value.
"""

import json
import random
import shlex
import time

PG_BIN = "/usr/lib/postgresql/15/bin"
PGDATA = "/var/lib/postgresql/15/main"
HOME = "/var/lib/postgresql"
PGLOG = "/var/lib/postgresql/15/pgha-postgresql.log"

PEERS = ("repmgr", "patroni", "pgautofailover")

TIMINGS = {
    "repmgr": {
        "monitor_interval_secs": 1,
        "reconnect_attempts": 3,
        "reconnect_interval": 1,
        "connection_check_type": "ping",
        "primary_visibility_consensus": "true",
        "standby_disconnect_on_failover": "false",
        "promote_check_interval": 1,
        "sibling_nodes_disconnect_timeout": 30,
    },
    "patroni": {"ttl": 20, "loop_wait": 1, "retry_timeout": 9, "maximum_lag_on_failover": 1048576},
    "pgautofailover": {
        # monitor (pgautofailover.*, ms)
        "health_check_period": 1000,
        "health_check_timeout": 2000,
        "health_check_max_retries": 1,
        "health_check_retry_delay": 1000,
        "node_considered_unhealthy_timeout": 3000,
        "primary_demote_timeout": 5000,
        # keeper (pg_autoctl config, s)
        "timeout.network_partition_timeout": 3,
    },
}

# The failover tool's own login, refused on the primary by the refuse drill
# (pg_hba: TYPE all USER [127.0.0.0/8] reject, first line).
TOOL_LOGIN = {
    "repmgr": ("host", "repmgr"),  # repmgrd's connections (conninfo user=repmgr)
    "patroni": ("local", "postgres"),  # Patroni's superuser session over the socket
    "pgautofailover": ("host", "pgautofailover_monitor"),  # the monitor's health checks
    "pgha": ("host", "postgres"),  # pgha-failover's [postgres] user
}

# What each peer's agent logs, per host (copied into target/bench/logs/).
LOGS = {
    "repmgr": ["repmgrd.log"],
    "patroni": ["patroni.log", "etcd.log"],
    "pgautofailover": ["autoctl.log"],
}


class PeerError(RuntimeError):
    pass


def _wait(what, fn, timeout, every=0.2):
    end = time.time() + timeout
    last = None
    while True:
        try:
            if fn():
                return
        except Exception as e:  # noqa: BLE001 - a probe failing means "not yet"
            last = e
        if time.time() > end:
            raise PeerError(f"timed out after {timeout}s waiting for {what}" + (f" ({last})" if last else ""))
        time.sleep(every)


def _q(lab, host, *cmds, db="postgres", port=5432):
    """psql as postgres over HOST's socket, one -c per command (one session)."""
    cs = " ".join(f"-c {shlex.quote(c)}" for c in cmds)
    return lab.sh(host, f"psql -p {port} -d {db} -v ON_ERROR_STOP=1 -qAt {cs}", timeout=30).stdout.strip()


def _daemon(lab, host, cmd, logname):
    """Start CMD on HOST as postgres in the background, its output in ~/LOGNAME."""
    lab.sh(host, f"cd {HOME} && setsid {cmd} >>{HOME}/{logname} 2>&1 </dev/null &")


def _wait_standbys(lab, timeout):
    """Every standby streams (its own walreceiver: pg_stat_replication on the
    primary also counts pg_basebackup's WAL stream while a replica is built)."""
    for i in range(1, lab.standbys + 1):
        h = f"pg{i}"
        _wait(f"{h} streaming", lambda h=h: _q(lab, h, "select status from pg_stat_wal_receiver") == "streaming",
              timeout)


def _wipe_lab_cluster(lab):
    """Stop the servers lab.sh made and remove their data (the peer builds its own)."""
    for i in range(lab.standbys + 1):
        lab.sh(f"pg{i}", f"pg_ctl -D {PGDATA} stop -m immediate -w >/dev/null 2>&1; rm -rf {PGDATA}")


def pgpool_without_failover_command(lab, extra=""):
    """pgpool finds the primary itself: no failover_command, search forever."""
    conf = lab.dir / "hosts" / "app" / "etc-pgpool2" / "pgpool.conf"
    lines = []
    for line in conf.read_text().splitlines():
        if line.startswith("failover_command ="):
            line = "failover_command = ''"
        elif line.startswith("search_primary_node_timeout ="):
            line = "search_primary_node_timeout = 0"
        lines.append(line)
    conf.write_text("\n".join(lines) + "\n" + extra)
    lab.lab("start-pgpool", lab.name, timeout=90)


def setup(peer, lab, sync, switchover=False):
    {"repmgr": setup_repmgr, "patroni": setup_patroni, "pgautofailover": setup_pgautofailover}[peer](lab, sync)
    pgpool_without_failover_command(lab, pgpool_auto_failback(lab, peer) if switchover else "")


def app_name(peer, lab, host):
    """application_name of HOST's walreceiver (as pg_stat_replication shows it)."""
    if peer == "pgautofailover":
        nid = lab.peer_state["node_ids"][host]
        return f"pgautofailover_standby_{nid}"
    return host


# --- repmgr ----------------------------------------------------------------------


def setup_repmgr(lab, sync):
    t = TIMINGS["repmgr"]
    pw = f"repmgr-{random.randrange(10**9)}"
    n = lab.standbys
    _q(lab, "pg0", "set synchronous_commit = local", f"create role repmgr superuser login password '{pw}'",
       "create database repmgr owner repmgr")
    for i in range(n + 1):
        h = f"pg{i}"
        addr = lab.addr(h)
        conf = f"""node_id={i + 1}
node_name='{h}'
conninfo='host={addr} port=5432 user=repmgr dbname=repmgr connect_timeout=2'
data_directory='{PGDATA}'
pg_bindir='{PG_BIN}'
replication_user='repl'
use_replication_slots=no
log_file='{HOME}/repmgrd.log'
log_level='INFO'
repmgrd_pid_file='/var/run/postgresql/repmgrd.pid'
failover='automatic'
promote_command='{PG_BIN}/repmgr standby promote -f {HOME}/repmgr.conf --log-to-file'
follow_command='{PG_BIN}/repmgr standby follow -f {HOME}/repmgr.conf --log-to-file --upstream-node-id=%n'
service_start_command='{PG_BIN}/pg_ctl -D {PGDATA} -l {PGLOG} -w -t 60 start'
service_stop_command='{PG_BIN}/pg_ctl -D {PGDATA} -w -t 60 stop -m fast'
service_restart_command='{PG_BIN}/pg_ctl -D {PGDATA} -l {PGLOG} -w -t 60 restart -m fast'
""" + "".join(f"{k}={v}\n" for k, v in t.items())
        lab.sh(h, f"""set -e
cat > {HOME}/repmgr.conf <<'EOF'
{conf}EOF
echo '*:*:*:repmgr:{pw}' >> {HOME}/.pgpass
cat >> {PGDATA}/pg_hba.conf <<'EOF'
host    repmgr       repmgr   127.0.0.0/8   scram-sha-256
host    replication  repmgr   127.0.0.0/8   scram-sha-256
EOF
echo "shared_preload_libraries = 'repmgr'" >> {PGDATA}/postgresql.conf
pg_ctl -D {PGDATA} -l {PGLOG} -w -t 60 restart -m fast >/dev/null""", timeout=90)
    lab.sh("pg0", f"repmgr -f {HOME}/repmgr.conf primary register", timeout=60)
    for i in range(1, n + 1):
        h = f"pg{i}"
        _wait(f"{h} streaming again", lambda h=h: _q(lab, h, "select status from pg_stat_wal_receiver") == "streaming", 30)
        lab.sh(h, f"repmgr -f {HOME}/repmgr.conf standby register", timeout=60)
    for i in range(n + 1):
        _daemon(lab, f"pg{i}", f"{PG_BIN}/repmgrd -f {HOME}/repmgr.conf --daemonize=false", "repmgrd.stdout")
    for i in range(n + 1):
        h = f"pg{i}"
        _wait(f"repmgrd monitoring on {h}",
              lambda h=h: "monitoring" in lab.sh(h, f"cat {HOME}/repmgrd.log", check=False).stdout, 30)
    lab.peer_state = {}


# --- Patroni + etcd ---------------------------------------------------------------


def setup_patroni(lab, sync):
    t = TIMINGS["patroni"]
    n = lab.standbys
    app = lab.addr("app")
    _wipe_lab_cluster(lab)
    _daemon(lab, "app", f"etcd --name app --data-dir {HOME}/etcd --listen-client-urls http://{app}:2379 "
            f"--advertise-client-urls http://{app}:2379 --listen-peer-urls http://{app}:2380 "
            f"--initial-advertise-peer-urls http://{app}:2380 --initial-cluster app=http://{app}:2380 "
            f"--initial-cluster-state new --initial-cluster-token {lab.name}", "etcd.log")
    _wait("etcd", lambda: "is healthy" in lab.sh("app", f"ETCDCTL_API=3 etcdctl --endpoints=http://{app}:2379 "
                                           f"endpoint health 2>&1", check=False).stdout, 30)
    env = lab.env
    for i in range(n + 1):
        h = f"pg{i}"
        a, r = lab.addr(h), lab.repl_addr(h)
        yml = f"""scope: {lab.name}
name: {h}
restapi:
  listen: {a}:8008
  connect_address: {a}:8008
etcd3:
  host: {app}:2379
bootstrap:
  dcs:
    ttl: {t['ttl']}
    loop_wait: {t['loop_wait']}
    retry_timeout: {t['retry_timeout']}
    maximum_lag_on_failover: {t['maximum_lag_on_failover']}
    synchronous_mode: {'true' if sync else 'false'}
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_level: replica
        hot_standby: 'on'
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 256MB
        wal_log_hints: 'on'
        max_connections: 50
  initdb:
  - auth-host: scram-sha-256
  - auth-local: peer
  - data-checksums
postgresql:
  listen: {a},{r}:5432
  connect_address: {a}:5432
  use_unix_socket: true
  data_dir: {PGDATA}
  bin_dir: {PG_BIN}
  pgpass: {HOME}/patroni.pgpass
  basebackup:
  - checkpoint: fast
  pg_hba:
    - local   all          all                    peer
    - local   replication  all                    peer
    - host    replication  repl     127.0.0.0/8   scram-sha-256
    - host    all          postgres 127.0.0.0/8   scram-sha-256
    - host    all          pgpool   127.0.0.0/8   trust
    - host    all          app      127.0.0.0/8   trust
  authentication:
    superuser:
      username: postgres
      password: '{env['PG_PASSWORD']}'
    replication:
      username: repl
      password: '{env['REPL_PASSWORD']}'
  parameters:
    unix_socket_directories: /var/run/postgresql
    cluster_name: {h}
    shared_buffers: 16MB
    fsync: 'off'
    log_line_prefix: '%m [%p] %q%u@%d '
    wal_receiver_status_interval: 1s
    logging_collector: 'off'
tags: {{}}
"""
        lab.sh(h, f"cat > {HOME}/patroni.yml <<'EOF'\n{yml}EOF")
    _daemon(lab, "pg0", f"patroni {HOME}/patroni.yml", "patroni.log")
    _wait("pg0 Patroni leader, writable", lambda: _q(lab, "pg0", "select pg_is_in_recovery()") == "f", 90)
    _q(lab, "pg0", "set synchronous_commit = local", "create role pgpool login", "grant pg_monitor to pgpool",
       "create role app login", "create database app owner app")
    for i in range(1, n + 1):
        _daemon(lab, f"pg{i}", f"patroni {HOME}/patroni.yml", "patroni.log")
    _wait_standbys(lab, 180)
    if sync:
        _wait("a synchronous standby", lambda: _q(
            lab, "pg0", "select count(*) from pg_stat_replication where sync_state in ('sync','quorum')") != "0", 30)
    lab.peer_state = {}


# --- pg_auto_failover -------------------------------------------------------------


def setup_pgautofailover(lab, sync):
    t = TIMINGS["pgautofailover"]
    n = lab.standbys
    app = lab.addr("app")
    _wipe_lab_cluster(lab)
    mon = f"{HOME}/monitor"
    _daemon(lab, "app", f"pg_autoctl create monitor --pgdata {mon} --pgport 5432 --pgctl {PG_BIN}/pg_ctl "
            f"--hostname {app} --listen {app} --skip-pg-hba --no-ssl --run", "autoctl.log")
    uri = f"postgres://autoctl_node@{app}:5432/pg_auto_failover?sslmode=disable"
    _wait("the pg_auto_failover monitor", lambda: _q(
        lab, "app", "select count(*) from pgautofailover.formation", db="pg_auto_failover") == "1", 90)
    # --skip-pg-hba: pg_autoctl looks the --hostname address up among the
    # network interfaces to write its rules, and the lab's 127.x addresses
    # route to lo without being assigned to it. The same rules, by hand.
    lab.sh("app", f"""echo 'host pg_auto_failover autoctl_node 127.0.0.0/8 trust' >> {mon}/pg_hba.conf
psql -qAtc 'select pg_reload_conf()' >/dev/null""")
    sets = [f"alter system set pgautofailover.{k} = {v}" for k, v in t.items() if not k.startswith("timeout.")]
    _q(lab, "app", *sets, "select pg_reload_conf()", db="pg_auto_failover")

    def create(i):
        h = f"pg{i}"
        a = lab.addr(h)
        _daemon(lab, h, f"env PGDATA={PGDATA} pg_autoctl create postgres --pgdata {PGDATA} --pgport 5432 "
                f"--pgctl {PG_BIN}/pg_ctl --hostname {a} --listen {a},{lab.repl_addr(h)} --name {h} "
                f"--monitor '{uri}' --skip-pg-hba --no-ssl --run", "autoctl.log")

    states = lambda: _q(lab, "app", "select nodename || ':' || nodeid || ':' || reportedstate || ':' || goalstate "  # noqa: E731
                        "from pgautofailover.node order by nodeid", db="pg_auto_failover").split()
    create(0)
    _wait("pg0 up", lambda: _q(lab, "pg0", "select 1") == "1", 90)
    lab.sh("pg0", f"""cat >> {PGDATA}/pg_hba.conf <<'EOF'
host    all          pgautofailover_monitor     127.0.0.0/8   trust
host    all          pgautofailover_replicator  127.0.0.0/8   trust
host    replication  pgautofailover_replicator  127.0.0.0/8   trust
host    all          pgpool   127.0.0.0/8   trust
host    all          app      127.0.0.0/8   trust
EOF
psql -qAtc 'select pg_reload_conf()' >/dev/null""")
    _wait("pg0 single", lambda: any(s.startswith("pg0:") and s.endswith(":single:single") for s in states()), 90)
    _q(lab, "pg0", "set synchronous_commit = local", "create role pgpool login", "grant pg_monitor to pgpool",
       "create role app login", "create database app owner app")
    for i in range(1, n + 1):
        create(i)
        _wait(f"pg{i} joined", lambda i=i: any(s.startswith(f"pg{i}:") for s in states()), 60)

    def all_up():
        s = states()
        return (len(s) == n + 1 and s[0].startswith("pg0:") and s[0].endswith(":primary:primary")
                and all(x.endswith(":secondary:secondary") for x in s[1:]))
    _wait("pg0 primary, every standby secondary", all_up, 180, every=0.5)
    lab.peer_state = {"node_ids": {s.split(":")[0]: int(s.split(":")[1]) for s in states()}}
    for i in range(n + 1):
        h = f"pg{i}"
        for k, v in t.items():
            if k.startswith("timeout."):
                lab.sh(h, f"pg_autoctl config set --pgdata {PGDATA} {k} {v} >/dev/null")
        lab.sh(h, f"pg_autoctl reload --pgdata {PGDATA} >/dev/null 2>&1 || true", check=False)
    _wait_standbys(lab, 60)


# --- switchover ---------------------------------------------------------------------
#
# Each peer's own planned switchover, as its documentation gives it; bench.py
# (switchover_run) times it exactly as it times pgha-switchover.


def pgpool_auto_failback(lab, peer):
    """pgpool.conf lines: pgpool re-attaches a standby it had detached.

    With no failover_command, pgpool detaches the old primary when it shuts
    down (failover_on_backend_error, health check), and nothing else would
    attach it again once it streams from the new primary (pgha-switchover
    attaches it itself). auto_failback finds the node in the primary's
    pg_stat_replication by backend_application_nameN (pg_auto_failover's
    walreceivers have names of their own); interval 1 s, as the legs there
    and back come seconds apart (default 60 s)."""
    lines = "auto_failback = on\nauto_failback_interval = 1\n"
    if peer == "pgautofailover":
        lines += "".join(f"backend_application_name{i} = '{app_name(peer, lab, f'pg{i}')}'\n"
                         for i in range(lab.standbys + 1))
    return lines


def switchover_command(peer, old, new):
    """(host, shell command): the peer's switchover from node OLD to NEW."""
    if peer == "repmgr":
        # On the candidate; repmgr stops the primary over ssh (postgres@,
        # key only, the lab's mesh), promotes, rejoins the old primary and,
        # with --siblings-follow, repoints every other standby. repmgrd is
        # paused on every node meanwhile (its default).
        return f"pg{new}", f"{PG_BIN}/repmgr -f {HOME}/repmgr.conf standby switchover --siblings-follow"
    if peer == "patroni":
        # Through the leader's REST API; returns once the candidate leads.
        return f"pg{new}", (f"patronictl -c {HOME}/patroni.yml switchover --leader pg{old} "
                            f"--candidate pg{new} --force")
    if peer == "pgautofailover":
        # The monitor drives it; waits (up to --wait) until NEW is primary.
        return f"pg{new}", f"pg_autoctl perform promotion --pgdata {PGDATA} --name pg{new} --wait 120"
    raise PeerError(f"no switchover for {peer}")


def switchover_ready(peer, lab, primary):
    """The peer itself sees PRIMARY leading and every other node a healthy
    standby (a switchover asked earlier is refused or waits)."""
    count = lab.standbys + 1
    if peer == "repmgr":
        out = lab.sh(primary, f"{PG_BIN}/repmgr -f {HOME}/repmgr.conf cluster show --csv", check=False).stdout
        rows = [r.split(",") for r in out.split()]
        # node id, server status (0 = running), recovery type (0 primary, 1 standby)
        return (len(rows) == count and all(r[1] == "0" for r in rows)
                and [r[0] for r in rows if r[2] == "0"] == [str(int(primary[2:]) + 1)])
    if peer == "patroni":
        out = lab.sh(primary, f"patronictl -c {HOME}/patroni.yml list -f json", check=False).stdout
        ms = json.loads(out or "[]")
        return (len(ms) == count and [m["Member"] for m in ms if m["Role"] == "Leader"] == [primary]
                and all(m["State"] in ("running", "streaming") for m in ms))
    if peer == "pgautofailover":
        s = _q(lab, "app", "select nodename || ':' || reportedstate || ':' || goalstate "
               "from pgautofailover.node order by nodeid", db="pg_auto_failover").split()
        return (len(s) == count and f"{primary}:primary:primary" in s
                and all(x.endswith(":secondary:secondary") for x in s if not x.startswith(f"{primary}:")))
    raise PeerError(f"no switchover for {peer}")
