#!/usr/bin/env python3
"""pgha failover benchmark (not part of the test suite; see benches/README.md).

On the lab (lab/lab.sh), runs K failovers for each variant, standby count
and fault, each on a fresh lab, and measures from the moment the primary is
killed (or its addresses blackholed):

  detect       pgpool logs the failure (health check / failover request)
  command      pgpool logs "execute command:" for the failover command
  writable     the new primary accepts a write (polled directly, 10 ms)
  standbys     every other standby streams on the new timeline (20 ms)
  attached     pgpool shows every live node up, the new primary as primary
               and the dead one down (pcp_node_info, 20 ms)
  first_write  first insert acknowledged through pgpool after the failure
  lost         acknowledged inserts missing on the new primary

Case watchdog (only with --cases watchdog; N=2 unless --n): the killed
primary on a lab with three pgpools (lab.sh up --pgpools 3) under
pgpool-II's watchdog. The writer writes through a member that is not the
leader, so first_write is the first write through a surviving pgpool on
the slow path (request forwarded to the leader, consensus, failover_command
on the leader); first_write_leader is the first write through the leader,
which writes only once its failover has started; detect is the earliest
detection on any member; the watchdog's own steps go to results.json.

Variants:
  floor        a bare `pg_ctl promote -w` on pg1 (no pgpool)
  classic      benches/classic-failover.sh: the classic recipe, our baseline
  samples      pgpool-II's failover.sh.sample + follow_primary.sh.sample,
               installed at run time by benches/samples-install.sh
  pgha         pgha-failover (the lab's default failover_command)
  pgha+follow  pgha-failover + pgha-follow as follow_primary_command
               (skipped when pgha-follow says it is not implemented)
  repmgr, patroni, pgautofailover
               the peers (benches/peers.py), pgpool with no failover_command
               finding the new primary itself; only when named in --variants

Writes target/bench/results.json, results.md, phases.svg and logs/.
"""

import argparse
import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in benches/
sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402
import report  # noqa: E402
from pgwire import Conn, PgError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LABSH = REPO / "lab" / "lab.sh"
PGDATA = "/var/lib/postgresql/15/main"
NEW_TLI = 2  # every run starts on a fresh lab, on timeline 1
RUN_DEADLINE = 75.0
DRILL_WATCH = 40.0  # seconds the refuse-login drill watches for a (wrong) promotion  # seconds after the kill; a phase not reached by then is missed
LINGER = 1.0  # seconds to keep watching once every phase is reached
WRITE_TIMEOUT = 5.0
PGHA_BIN = str(REPO / "target" / "release")  # --pgha-bin
PG_BIN = os.environ.get("PGHA_PG_BIN", "/usr/lib/postgresql/15/bin")  # --pg-bin
PGPOOL_BIN = os.environ.get("PGHA_PGPOOL_BIN", "/usr/sbin")  # --pgpool-bin

VARIANTS = {
    "floor": {"pgpool": False},
    "classic": {"failover": "@BIN@/classic-failover.sh %d %M %m"},
    "samples": {
        "failover": "@BIN@/failover.sh %d %h %p %D %m %H %M %P %r %R %N %S",
        "follow": "@BIN@/follow_primary.sh %d %h %p %D %m %H %M %P %r %R",
    },
    "pgha": {},  # the lab's default: @BIN@/pgha-failover %d %M %m --old-primary %P
    "pgha+follow": {"follow": "@BIN@/pgha-follow %d --new-primary %m --old-primary %P"},
    # The peers: failover by the tool, pgpool only finds the new primary.
    "repmgr": {"peer": "repmgr"},
    "patroni": {"peer": "patroni"},
    "pgautofailover": {"peer": "pgautofailover"},
}
DEFAULT_VARIANTS = ["floor", "classic", "samples", "pgha", "pgha+follow"]  # the peers only when asked


def log(msg):
    print(f"bench {datetime.now().strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


# --- the lab -------------------------------------------------------------------


class Lab:
    def __init__(self, name):
        self.name = name
        self.dir = None
        self.env = {}
        self.peer_state = {}
        self.pgpool_hosts = ["app"]
        self.leader = "app"  # the pgpool host that runs failover_command (the watchdog's leader)

    def up(self, standbys, failover=None, follow=None, sync=False, pgpool=True, pgpools=1, fence=False,
           wal_keep_size=None):
        args = [str(LABSH), "up", "--name", self.name, "--standbys", str(standbys), "--pgha-bin", PGHA_BIN]
        if pgpools > 1:
            args += ["--pgpools", str(pgpools)]
        if failover:
            args += ["--failover-command", failover]
        if follow:
            args += ["--follow-command", follow]
        if sync:
            args.append("--sync")
        if wal_keep_size is not None:
            args += ["--wal-keep-size", wal_keep_size]
        if not pgpool:
            args.append("--no-pgpool")
        if fence:
            args.append("--fence")
        r = subprocess.run(args, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"lab.sh up {self.name} failed: {r.stderr.strip()[-1500:]}")
        self.dir = Path(r.stdout.strip().splitlines()[-1])
        for line in (self.dir / "lab.env").read_text().splitlines():
            m = re.match(r"^(\w+)=('?)(.*)\2$", line)
            if m:
                self.env[m.group(1)] = m.group(3)
        self.standbys = int(self.env["STANDBYS"])
        self.pgpool_hosts = self.env.get("PGPOOL_HOSTS", "app").split()
        return self

    def addr(self, host):
        net = self.env["NET"]
        if host.startswith("app"):
            return f"{net}.{20 + int(host[3:] or 0)}"
        return f"{net}.{2 + int(host[2:])}"

    def host_at(self, addr):
        return next((h for h in self.pgpool_hosts if self.addr(h) == addr), None)

    def watchdog_leader(self):
        """The pgpool host the watchdog names leader, as app's pgpool sees it."""
        r = self.lab("exec", self.name, "app", "--", "pcp_watchdog_info", "-h", self.addr("app"),
                     "-p", self.env["PCP_PORT"], "-U", "pgpool", "-w", "-v", timeout=15)
        m = re.search(r"^Leader Host Name\s*:\s*(\S+)", r.stdout, re.M)
        host = self.host_at(m.group(1)) if m else None
        if host is None:
            raise RuntimeError(f"no watchdog leader among {self.pgpool_hosts}: {r.stdout.strip()[:500]}")
        return host

    def repl_addr(self, host):
        return f"{self.env['NET']}.{102 + int(host[2:])}"

    def lab(self, *args, timeout=60, check=True):
        r = subprocess.run([str(LABSH), *args], capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"lab.sh {' '.join(args[:3])} failed ({r.returncode}): {r.stderr.strip()[-1000:]}")
        return r

    def fault(self, *args):
        """Run a lab.sh fault command; when it took effect.

        lab.sh logs its line right after `kill -KILL` / `iptables -I`
        (scanning /proc for the host's processes before that takes ~0.3 s),
        so the moment that line arrives is the moment of the fault.
        """
        p = subprocess.Popen([str(LABSH), *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        when = None
        for line in p.stderr:
            if when is None and line.startswith("lab: "):
                when = time.time()
        if p.wait(60) != 0 or when is None:
            raise RuntimeError(f"lab.sh {' '.join(args)} failed ({p.returncode})")
        return when

    def kill_host(self, host, sweep=True):
        """SIGKILL every process of HOST, as `lab.sh kill` does; when.

        The same processes `lab.sh kill` finds (those in the host's mount
        namespace), killed from here so that the timestamp is taken right
        at the kill and not after a scheduling delay of the shell under
        load; `lab.sh kill` then sweeps up anything forked meanwhile.
        """
        ns = (self.dir / "hosts" / host / "mntns").read_text().strip()
        pids = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    if os.readlink(p / "ns" / "mnt") == ns:
                        pids.append(int(p.name))
                except OSError:
                    pass
        if not pids:
            raise RuntimeError(f"no process of {host} found")
        when = time.time()
        for pid in pids:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        if sweep:
            self.lab("kill", self.name, host)
        return when

    def host_pids(self, host):
        ns = (self.dir / "hosts" / host / "mntns").read_text().strip()
        pids = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    if os.readlink(p / "ns" / "mnt") == ns:
                        pids.append(int(p.name))
                except OSError:
                    pass
        return pids

    def freeze_host(self, host):
        """SIGSTOP every process of HOST (a hung host: its agents fall silent too).

        A blackholed address drops what is sent *to* it; a peer's agent on
        the primary's host talks to etcd or the monitor from 127.0.0.1 (the
        kernel's source address on lo), which the DROP rule does not match.
        On a real silent host those packets are lost as well, so the peers'
        silent-primary case also stops the host's processes. `lab.sh down`
        SIGKILLs them, stopped or not."""
        for pid in self.host_pids(host):
            try:
                os.kill(pid, 19)
            except OSError:
                pass

    def sh(self, host, script, root=False, timeout=60, check=True):
        args = ["exec", self.name, host] + (["--root"] if root else []) + ["--", "sh", "-c", script]
        return self.lab(*args, timeout=timeout, check=check)

    def psql(self, host, sql, timeout=30):
        """psql as postgres over the host's own socket (peer authentication)."""
        return self.lab("exec", self.name, host, "--", "psql", "-v", "ON_ERROR_STOP=1", "-qAtc", sql,
                        timeout=timeout).stdout.strip()

    @property
    def pgpool_log(self):
        """The log of the pgpool that runs failover_command (app, or the watchdog's leader)."""
        return self.pgpool_log_of(self.leader)

    def pgpool_log_of(self, host):
        return self.dir / "hosts" / host / "home" / "pgpool.log"

    def pcp_env(self):
        return dict(os.environ, PCPPASSFILE=str(self.dir / "hosts" / "app" / "home" / ".pcppass"))

    def down(self):
        # pgpool first, with SIGTERM: killed (as lab.sh down does), it leaves
        # its ~130 MB SysV shared memory segment behind, and a few hundred
        # labs exhaust the machine's memory.
        pids = []
        for h in self.pgpool_hosts:
            try:
                pid = int((self.dir / "hosts" / h / "run" / "pgpool.pid").read_text().split()[0])
                os.kill(pid, 15)
                pids.append(pid)
            except (OSError, ValueError, IndexError, TypeError):
                pass
        end = time.time() + 10
        for pid in pids:
            try:
                while time.time() < end:
                    os.kill(pid, 0)
                    time.sleep(0.05)
            except OSError:
                pass
        subprocess.run([str(LABSH), "down", self.name], capture_output=True, text=True, timeout=120)


def wait_until(what, fn, timeout, every=0.05):
    end = time.time() + timeout
    while True:
        try:
            if fn():
                return
        except (OSError, PgError):
            pass
        if time.time() > end:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


# --- pollers -------------------------------------------------------------------


class Poller(threading.Thread):
    def __init__(self, stop):
        super().__init__(daemon=True)
        self.stop_ev = stop
        self.ready = threading.Event()


def insert_attempts(stop_ev, host, port, next_id):
    """Inserts next_id, next_id + 1, ... into w through pgpool, as an
    application would: one persistent connection, re-opened after any
    error. Yields (id, None) for each acknowledged insert and (None, error)
    for each failure, until stop_ev is set; closes the connection when done
    or abandoned.
    """
    conn = None
    try:
        while not stop_ev.is_set():
            try:
                if conn is None:
                    conn = Conn(host, port, "app", "app", timeout=WRITE_TIMEOUT)
                i, next_id = next_id, next_id + 1
                conn.query(f"insert into w(id) values ({i})")
            except (OSError, PgError) as e:
                if conn is not None:
                    conn.close()
                    conn = None
                yield None, e
                time.sleep(0.01)
                continue
            yield i, None
            time.sleep(0.005)
    finally:
        if conn is not None:
            conn.close()


class Writer(Poller):
    """Inserts increasing ids through pgpool, as an application would.

    An id is acknowledged when the INSERT returned CommandComplete; the
    connection is persistent and re-opened after any error.
    """

    def __init__(self, stop, host, port):
        super().__init__(stop)
        self.host, self.port = host, port
        self.acked = []  # (id, time)
        self.errors = []  # (time, text)

    def run(self):
        for i, err in insert_attempts(self.stop_ev, self.host, self.port, 1):
            if err is not None:
                self.errors.append((time.time(), str(err)[:200]))
                continue
            self.acked.append((i, time.time()))
            self.ready.set()

    def first_ack_after_failure(self, since):
        """When the first write succeeded after the first error since `since`."""
        errs = [t for t, _ in self.errors if t >= since]
        if not errs:
            return None
        after = [t for _, t in self.acked if t > errs[0]]
        return after[0] if after else None


class LeaderProbe(Poller):
    """First write acknowledged through the watchdog's leader (case watchdog).

    It writes only once the leader's pgpool has logged "execute command:"
    (the failover decided): a client of the leader's that wrote earlier
    would have hit the dead primary and cast the leader's own vote at once,
    turning the slow path that the case measures (the vote has to come from
    another member's health check) into the fast one.
    """

    def __init__(self, stop, log_path, offset, host, port):
        super().__init__(stop)
        self.log_path, self.offset = log_path, offset
        self.host, self.port = host, port
        self.gate = None  # when "execute command:" was seen in the log
        self.result = None
        self.ready.set()

    def run(self):
        while not self.stop_ev.is_set() and self.gate is None:
            try:
                with open(self.log_path, "rb") as f:
                    f.seek(self.offset)
                    if b"execute command:" in f.read():
                        self.gate = time.time()
            except OSError:
                pass
            time.sleep(0.01)
        # Ids of its own, apart from the writer's.
        for _, err in insert_attempts(self.stop_ev, self.host, self.port, 1_000_000_001):
            if err is None:
                self.result = time.time()
                break


class PromotePoller(Poller):
    """Which standby accepts a write first, and when (10 ms polls).

    `select txid_current()` needs an xid, which a server in recovery refuses;
    synchronous_commit = local so that --sync labs time the promotion, not
    the arrival of a synchronous standby.
    """

    def __init__(self, stop, nodes):
        super().__init__(stop)
        self.nodes = nodes  # [(node id, address)]
        self.result = None  # (node id, time)

    def run(self):
        conns = {}
        while not self.stop_ev.is_set() and self.result is None:
            for nid, a in self.nodes:
                c = conns.get(nid)
                try:
                    if c is None:
                        c = Conn(a, 5432, "app", "app", timeout=0.5)
                        c.query("set synchronous_commit = local")
                        conns[nid] = c
                    c.query("select txid_current()")
                    self.result = (nid, time.time())
                    break
                except PgError as e:
                    if "recovery" not in str(e) and c is not None:
                        c.close()
                        conns.pop(nid, None)
                except OSError:
                    if c is not None:
                        c.close()
                    conns.pop(nid, None)
            if len(conns) == len(self.nodes):
                self.ready.set()
            time.sleep(0.01)
        for c in conns.values():
            c.close()


class StandbyPoller(Poller):
    """When each standby first streams on the new timeline (20 ms polls)."""

    SQL = "select status, coalesce(received_tli, 0), coalesce(receive_start_tli, 0), sender_host from pg_stat_wal_receiver"

    def __init__(self, stop, nodes):
        super().__init__(stop)
        self.nodes = nodes
        self.first = {}  # node id -> time
        self.sender = {}

    def run(self):
        conns = {}
        while not self.stop_ev.is_set() and len(self.first) < len(self.nodes):
            for nid, a in self.nodes:
                if nid in self.first:
                    c = conns.pop(nid, None)
                    if c is not None:
                        c.close()
                    continue
                c = conns.get(nid)
                try:
                    if c is None:
                        c = Conn(a, 5432, "pgpool", "postgres", timeout=0.5)
                        conns[nid] = c
                    rows = c.query(self.SQL)
                    if rows and rows[0][0] == "streaming" and max(int(rows[0][1]), int(rows[0][2])) >= NEW_TLI:
                        self.first[nid] = time.time()
                        self.sender[nid] = rows[0][3]
                except (OSError, PgError):
                    if c is not None:
                        c.close()
                    conns.pop(nid, None)
            if len(conns) + len(self.first) == len(self.nodes):
                self.ready.set()
            time.sleep(0.02)
        for c in conns.values():
            c.close()


def pcp_nodes(lab, host="app"):
    try:
        r = subprocess.run(
            ["pcp_node_info", "-h", lab.addr(host), "-p", lab.env["PCP_PORT"], "-U", "pgpool", "-w", "-a"],
            capture_output=True, text=True, timeout=3, env=lab.pcp_env())
    except subprocess.TimeoutExpired:
        return None
    if r.returncode != 0:
        return None
    # host port status weight status_name pg_status role pg_role ...
    return [line.split() for line in r.stdout.splitlines() if line.strip()]


def all_attached(nodes, dead, count):
    if not nodes or len(nodes) != count:
        return False
    primaries = [i for i, n in enumerate(nodes) if n[6] == "primary"]
    return (nodes[dead][2] == "3" and all(n[2] in ("1", "2") for i, n in enumerate(nodes) if i != dead)
            and len(primaries) == 1 and primaries[0] != dead)


class PcpPoller(Poller):
    """When pgpool shows the failed-over cluster fully attached (20 ms polls)."""

    def __init__(self, stop, lab, dead=0, host="app"):
        super().__init__(stop)
        self.lab, self.dead, self.host = lab, dead, host
        self.result = None
        self.ready.set()

    def run(self):
        count = self.lab.standbys + 1
        while not self.stop_ev.is_set() and self.result is None:
            nodes = pcp_nodes(self.lab, self.host)
            if all_attached(nodes, self.dead, count):
                self.result = time.time()
                break
            time.sleep(0.02)


# --- pgpool.log ------------------------------------------------------------------

TS = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}): (.*)$")
PGHA = re.compile(r"^(pgha-[a-z]+)\[(\d+)\]\s+([0-9.]+)s (.*)$")


def parse_pgpool_log(path, since, dead_addr):
    """Timestamps (epoch) of what pgpool logged after `since`; pgha's lines."""
    detect_pats = [
        "health check failed on node 0",
        "health check timer expired",
        f'failed to connect to PostgreSQL server on "{dead_addr}:',
        "received degenerate backend request for node_id: 0",
        "received failover request",
        "executing failover on backend",
    ]
    out = {"detect": None, "detect_line": None, "command": None, "failover_done": None,
           "follow_commands": [], "pgha": [], "sample_lines": []}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    cur = None
    for line in text.splitlines():
        m = TS.match(line) or (None if PGHA.match(line) else TS.search(line))
        if m:
            cur = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            msg = m.group(2)
            if cur < since - 0.002:
                continue
            if out["detect"] is None and any(p in msg for p in detect_pats):
                out["detect"], out["detect_line"] = cur, msg[:200]
            if "execute command:" in msg:
                if out["command"] is None:
                    out["command"] = cur
                    out["command_line"] = msg.split("execute command:", 1)[1].strip()[:300]
                elif "follow" in msg:
                    out["follow_commands"].append(cur)
            if out["failover_done"] is None and "failover done" in msg:
                out["failover_done"] = cur
            continue
        if cur is None or cur < since - 0.002:
            continue
        p = PGHA.match(line)
        if p:
            out["pgha"].append({"cmd": p.group(1), "pid": int(p.group(2)), "at": float(p.group(3)), "text": p.group(4)[:300]})
        elif line.startswith(("pgha-", "failover.sh:", "follow_primary.sh:")):
            out["sample_lines"].append(line[:300])
    return out


WD_EVENTS = [
    # (key, host: "member" = the writer's pgpool, "leader", "other" = the third; pattern)
    ("member_request", "member", "received degenerate backend request for node_id: 0"),
    ("member_forwarded", "member", "is forwarded to leader watchdog node"),
    ("member_quarantine", "member", "starting quarantine"),
    ("member_quarantine_done", "member", "quarantine done"),
    # pgpool's failover() ends by restarting its PCP child, which notices the
    # request on its 1 s timer; the main process handles nothing meanwhile.
    ("member_pcp_restarted", "member", "in failover()"),
    ("leader_waiting", "leader", "waiting for consensus"),
    ("other_health_check", "other", "health check failed on node 0"),
    ("leader_health_check", "leader", "health check failed on node 0"),
    ("consensus", "leader", "we have got the consensus to perform the failover"),
    ("command", "leader", "execute command:"),
    ("command_returned", "leader", "find_primary_node_repeatedly"),
    ("failover_done", "leader", "failover done"),
    ("member_signalled", "member", "signal_user1_to_parent_with_reason(2)"),
    ("member_synced", "member", "leader watchdog has performed failover"),
    ("other_synced", "other", "leader watchdog has performed failover"),
]


def parse_watchdog_logs(lab, member, since):
    """The watchdog's steps (epoch) in the members' logs after `since`: who
    asked, when the leader had its consensus and from whom the deciding
    vote came, when it ran and finished the failover, when the writer's
    member took the leader's new backend states."""
    others = [h for h in lab.pgpool_hosts if h not in (member, lab.leader)]
    roles = {"member": member, "leader": lab.leader, "other": others[0] if others else None}
    out, lines = {}, {}
    for role, host in roles.items():
        if host is None:
            continue
        try:
            text = lab.pgpool_log_of(host).read_text(errors="replace")
        except OSError:
            continue
        last_vote = None
        for line in text.splitlines():
            m = TS.search(line)
            if not m:
                continue
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            if t < since - 0.002:
                continue
            msg = m.group(2)
            if role == "leader":
                v = re.search(r'received the failover command from remote pgpool-II node "([0-9.]+):', msg)
                if v:
                    last_vote = lab.host_at(v.group(1)) or v.group(1)
                elif "health check failed on node 0" in msg:
                    last_vote = f"{host} (own health check)"
            for key, r, pat in WD_EVENTS:
                if (key == "command_returned" and "command" not in out) or \
                        (key == "member_signalled" and "member_request" not in out):
                    continue
                if r == role and key not in out and pat in msg:
                    out[key] = t
                    lines[key] = f"{host}: {msg[:200]}"
                    if key == "consensus":
                        out["deciding_vote"] = last_vote
    return out, lines, roles


# --- one failover ----------------------------------------------------------------


def wait_sync(lab):
    """`lab.sh up --sync` set synchronous_standby_names = 'ANY 1 (pg0,..)' in
    postgresql.conf (the standbys have it too, from pg_basebackup): wait
    until pg0 counts every standby in its quorum."""
    want = str(lab.standbys)
    wait_until("quorum standbys on pg0", lambda: lab.psql(
        "pg0", "select count(*) from pg_stat_replication where sync_state = 'quorum'") == want, 20)


def prepare_classic(lab):
    # The recipe's trigger_file, PostgreSQL 12-15 spelling, on the first standby.
    lab.psql("pg1", "alter system set promote_trigger_file = '/tmp/pgsql.trigger'")
    lab.psql("pg1", "select pg_reload_conf()")
    wait_until("promote_trigger_file on pg1", lambda: lab.psql("pg1", "show promote_trigger_file") == "/tmp/pgsql.trigger", 10)


def prepare_samples(lab):
    r = subprocess.run([str(REPO / "benches" / "samples-install.sh"), str(lab.dir)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip())
    # The standbys as pgpool's recovery_1st_stage.sample would have made
    # them: primary_conninfo in myrecovery.conf, included at the end of
    # postgresql.conf (where follow_primary.sh.sample rewrites it), instead
    # of postgresql.auto.conf (where pg_basebackup -R put it, and where it
    # would override the sample's edit). The lab's own restore_command stays.
    for i in range(1, lab.standbys + 1):
        h = f"pg{i}"
        conninfo = (f"host={lab.repl_addr('pg0')} port=5432 user=repl application_name={h} "
                    f"passfile=''/var/lib/postgresql/.pgpass''")
        lab.sh(h, f"""set -e
printf "%s\\n" "primary_conninfo = '{conninfo}'" > {PGDATA}/myrecovery.conf
echo "include_if_exists = '{PGDATA}/myrecovery.conf'" >> {PGDATA}/postgresql.conf
psql -qAtc 'alter system reset primary_conninfo'
psql -qAtc 'select pg_reload_conf()' >/dev/null""")
    expect = str(lab.standbys)
    wait_until("standbys streaming again from myrecovery.conf", lambda: lab.psql(
        "pg0", "select count(*) from pg_stat_replication where state = 'streaming'") == expect, 20)
    for i in range(1, lab.standbys + 1):
        ci = lab.psql(f"pg{i}", "show primary_conninfo")
        if "application_name=" not in ci or lab.repl_addr("pg0") not in ci:
            raise RuntimeError(f"pg{i}: primary_conninfo not taken from myrecovery.conf: {ci}")


def keep_logs(lab, logs, name, extra=()):
    """Copy pgpool's log, pgha's journal and `extra` (src, name) into logs/."""
    for src, dst in [(lab.pgpool_log, f"{name}.pgpool.log"),
                     (lab.dir / "hosts" / lab.leader / "home" / "pgha" / "journal.jsonl", f"{name}.journal.jsonl"),
                     *extra]:
        try:
            shutil.copy(src, logs / dst)
        except OSError:
            pass


def one_run(variant, standbys, fault, sync, k, name, outdir):
    if fault == "switchover":
        return switchover_run(variant, standbys, k, name, outdir)
    spec = VARIANTS[variant]
    peer = spec.get("peer")
    res = {"variant": variant, "standbys": standbys, "fault": fault, "sync": sync, "k": k, "name": name,
           "phases": {}, "notes": []}
    lab = Lab(name)
    stop = threading.Event()
    threads = []
    try:
        if peer:
            # The lab's hosts and servers; the peer takes over (or rebuilds)
            # the cluster and pgpool starts without a failover_command.
            lab.up(standbys, sync=sync, pgpool=False)
            t_setup = time.time()
            peers.setup(peer, lab, sync)
            res["peer_setup_s"] = round(time.time() - t_setup, 1)
            res["peer_timings"] = peers.TIMINGS[peer]
        else:
            lab.up(standbys, spec.get("failover"), spec.get("follow"), sync, spec.get("pgpool", True),
                   pgpools=3 if fault == "watchdog" else 1)
        use_pgpool = spec.get("pgpool", True)
        # Where the writer writes: app, or with the watchdog a member that
        # is not the leader (the slow path: its failover request goes to
        # the leader, which waits for a second vote, then runs the command).
        via = "app"
        if fault == "watchdog":
            lab.leader = lab.watchdog_leader()
            via = next(h for h in lab.pgpool_hosts if h != lab.leader)
            res["watchdog"] = {"leader": lab.leader, "writer_via": via, "hosts": lab.pgpool_hosts}
        if sync and not peer:
            wait_sync(lab)
        if variant == "classic":
            prepare_classic(lab)
        elif variant == "samples":
            prepare_samples(lab)
        standby_nodes = [(i, lab.addr(f"pg{i}")) for i in range(1, standbys + 1)]
        writer = None
        if use_pgpool:
            c = Conn(lab.addr("app"), 9999, "app", "app", timeout=10)
            c.query("create table w(id int primary key)")
            c.close()
            writer = Writer(stop, lab.addr(via), 9999)
            threads.append(writer)
        promote = PromotePoller(stop, standby_nodes)
        stand = StandbyPoller(stop, standby_nodes)
        threads += [promote, stand]
        pcp = PcpPoller(stop, lab, host=via) if use_pgpool else None
        probe = None
        if fault == "watchdog":
            probe = LeaderProbe(stop, lab.pgpool_log, lab.pgpool_log.stat().st_size, lab.addr(lab.leader), 9999)
        for t in threads:
            t.start()
        for t in threads:
            if not t.ready.wait(10):
                raise RuntimeError(f"{type(t).__name__} not ready after 10 s")
        time.sleep(0.5)  # writes acknowledged before the failure
        if pcp:
            pcp.start()
            threads.append(pcp)
        if probe:
            probe.start()
            threads.append(probe)

        if fault == "kill-lagging":
            # pg1 (pgpool's %m, the lowest id) stops receiving WAL: its
            # walsender on the primary is stopped; the others keep up.
            an = peers.app_name(peer, lab, "pg1")
            pid = lab.psql("pg0", f"select pid from pg_stat_replication where application_name = '{an}'")
            if not pid:
                raise RuntimeError(f"no walsender for {an} on pg0")
            lab.sh("pg0", f"kill -STOP {pid}")
            time.sleep(0.5)  # writes pg1 does not receive
        t_start = time.time()
        if fault == "refuse":
            # The primary is alive and serves its clients, but refuses the
            # failover tool's own login: a tool must not promote a standby.
            kind, user = peers.TOOL_LOGIN[peer or "pgha"]
            line = f"{kind}    all    {user}    " + ("127.0.0.0/8    " if kind == "host" else "") + "reject"
            lab.sh("pg0", f"sed -i '1i {line}' {PGDATA}/pg_hba.conf && pg_ctl -D {PGDATA} reload >/dev/null")
            t0 = time.time()
            res["refused"] = line
        elif fault in ("kill", "kill-lagging", "watchdog"):
            # The floor promotes at once, and sweeps afterwards.
            t0 = lab.kill_host("pg0", sweep=variant != "floor")
        else:
            # Replication address first, then the one pgpool and clients use.
            t1 = lab.fault("blackhole", name, lab.repl_addr("pg0"))
            t0 = lab.fault("blackhole", name, lab.addr("pg0"))
            res["blackhole_gap_s"] = round(t0 - t1, 3)
            if peer:
                lab.freeze_host("pg0")
        res["fault_call_s"] = round(time.time() - t_start, 3)
        acked_before = len(writer.acked) if writer else 0

        floor = None
        if variant == "floor":
            r = lab.sh("pg1", f"a=$(date +%s.%N); pg_ctl -D {PGDATA} promote -w -t 60 >/dev/null; rc=$?; "
                              f"b=$(date +%s.%N); echo $a $b $rc", timeout=90)
            a, b, rc = r.stdout.split()
            floor = (float(a), float(b), int(rc))
            lab.lab("kill", name, "pg0")

        def done():
            if promote.result is None:
                return False
            if variant == "floor":
                return True
            others = [n for n, _ in standby_nodes if n != promote.result[0]]
            return (all(n in stand.first for n in others) and pcp.result is not None
                    and writer.first_ack_after_failure(t_start) is not None
                    and (probe is None or probe.result is not None))

        deadline = DRILL_WATCH if fault == "refuse" else RUN_DEADLINE
        while time.time() < t0 + deadline and not done():
            time.sleep(0.05)
        if done():
            time.sleep(LINGER)
        elif fault == "refuse":
            res["notes"].append(f"watched {DRILL_WATCH:.0f} s")
        else:
            res["notes"].append(f"not every phase reached within {RUN_DEADLINE:.0f} s")
        stop.set()
        for t in threads:
            t.join(WRITE_TIMEOUT + 2)

        ph = res["phases"]
        rel = lambda t: None if t is None else round(t - t0, 3)  # noqa: E731
        new_primary = promote.result[0] if promote.result else None
        res["new_primary"] = new_primary
        ph["writable"] = rel(promote.result[1]) if promote.result else None
        others = [n for n, _ in standby_nodes if n != new_primary]
        res["per_standby"] = {str(n): rel(stand.first.get(n)) for n in others}
        if new_primary is not None and others:
            ph["standbys"] = rel(max(stand.first[n] for n in others)) if all(n in stand.first for n in others) else None
        if floor:
            ph["command"] = rel(floor[0])
            res["floor_pg_ctl_s"] = round(floor[1] - floor[0], 3)
            res["floor_rc"] = floor[2]
            res["promote_self_s"] = res["floor_pg_ctl_s"]
        if use_pgpool:
            ph["attached"] = rel(pcp.result)
            ph["first_write"] = rel(writer.first_ack_after_failure(t_start))
            # Writes settled: the first acknowledged after the writer's last
            # error (a pgpool that restarts its children again after the
            # first write breaks sessions once more).
            errs = [t for t, _ in writer.errors if t >= t_start]
            if errs:
                after = [t for _, t in writer.acked if t > errs[-1]]
                ph["writes_settled"] = rel(after[0]) if after else None
                res["writer_last_error"] = writer.errors[-1][1]
            lg = parse_pgpool_log(lab.pgpool_log, t_start, lab.addr("pg0"))
            ph["detect"] = rel(lg["detect"])
            if fault == "watchdog":
                # pgpool detects where the writer's session broke, the
                # command runs on the leader (lab.pgpool_log).
                detects = [d for d in (parse_pgpool_log(lab.pgpool_log_of(h), t_start, lab.addr("pg0"))["detect"]
                                       for h in lab.pgpool_hosts) if d is not None]
                ph["detect"] = rel(min(detects)) if detects else None
                ph["first_write_leader"] = rel(probe.result)
                wd, wd_lines, roles = parse_watchdog_logs(lab, via, t_start)
                res["watchdog"].update({"roles": roles, "lines": wd_lines,
                                        "deciding_vote": wd.pop("deciding_vote", None),
                                        "probe_gate": rel(probe.gate),
                                        "steps": {k: rel(v) for k, v in wd.items()}})
            ph["command"] = rel(lg["command"])
            ph["failover_done"] = rel(lg["failover_done"])
            res["detect_line"] = lg["detect_line"]
            res["command_line"] = lg.get("command_line")
            res["follow_commands"] = [rel(t) for t in lg["follow_commands"]]
            res["pgha_lines"] = lg["pgha"]
            for p in lg["pgha"]:
                m = re.search(r"promoted?: accepts writes on timeline \d+ \(([0-9.]+)s\)", p["text"])
                if m and p["cmd"] == "pgha-failover":
                    res["promote_self_s"] = float(m.group(1))
            if any("not implemented" in p["text"] for p in lg["pgha"]) or \
                    "not implemented" in lab.pgpool_log.read_text(errors="replace"):
                res["notes"].append("not implemented")
            res["acked_before_fault"] = acked_before
            res["last_ack"] = rel(writer.acked[-1][1]) if writer.acked else None
            res["acked"] = len(writer.acked)
            res["writer_errors"] = len(writer.errors)
            if writer.errors:
                res["writer_first_error"] = writer.errors[0][1]
            res["final_pcp"] = [" ".join(n[:8]) for n in (pcp_nodes(lab, via) or [])]
        if ph.get("command") is not None and ph.get("writable") is not None:
            res["promote_s"] = round(ph["writable"] - ph["command"], 3)
        if writer and new_primary is not None:
            try:
                c = Conn(lab.addr(f"pg{new_primary}"), 5432, "app", "app", timeout=5)
                present = {int(r[0]) for r in c.query("select id from w")}
                c.close()
                lost = sorted(i for i, _ in writer.acked if i not in present)
                res["lost"] = len(lost)
                res["lost_ids"] = lost[:20]
            except (OSError, PgError) as e:
                res["notes"].append(f"could not count lost writes on pg{new_primary}: {e}")
        res["final_streaming"] = {}
        for n in others:
            try:
                c = Conn(lab.addr(f"pg{n}"), 5432, "pgpool", "postgres", timeout=2)
                rows = c.query(StandbyPoller.SQL)
                c.close()
                res["final_streaming"][str(n)] = rows[0][:2] if rows else None
            except (OSError, PgError) as e:
                res["final_streaming"][str(n)] = f"error: {e}"
    except Exception as e:  # a failed run is recorded, the bench goes on
        res["error"] = f"{type(e).__name__}: {e}"
        log(f"{name}: {res['error']}")
    finally:
        stop.set()
        if lab.dir is not None:
            logs = outdir / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            extra = []
            for h in ["app"] + [f"pg{i}" for i in range(standbys + 1)]:
                for f in peers.LOGS.get(peer, []) + (["15/pgha-postgresql.log"] if peer else []):
                    extra.append((lab.dir / "hosts" / h / "home" / f, f"{name}.{h}.{Path(f).name}"))
            if fault == "watchdog":
                extra += [(lab.pgpool_log_of(h), f"{name}.{h}.pgpool.log") for h in lab.pgpool_hosts]
            keep_logs(lab, logs, name, extra)
            lab.down()
    return res


# --- the switchover case (issues 12 and 17) ------------------------------------------


def switchover_cases(ns):
    """(variant, N, "switchover", False) for each N: the switchover there and
    back, pgha-switchover and each peer's own (benches/peers.py)."""
    return [(v, n, "switchover", False) for n in ns if n >= 1 for v in ("pgha",) + peers.PEERS]


def timeline_now(lab, count):
    """The newest timeline a standby streams on (every leg starts settled)."""
    tli = 0
    for i in range(count):
        try:
            c = Conn(lab.addr(f"pg{i}"), 5432, "pgpool", "postgres", timeout=2)
            rows = c.query(StandbyPoller.SQL)
            c.close()
        except (OSError, PgError):
            continue
        if rows:
            tli = max(tli, int(rows[0][1]))
    return tli


def switchover_leg(lab, writer, old, to, count, peer=None, deadline=30.0):
    """One switchover from node OLD to node TO, pgha-switchover --to TO or
    the peer's own command; phases relative to the request. A phase not
    reached within `deadline` seconds is None (never)."""
    tli = timeline_now(lab, count) + 1
    if peer:
        host, cmd = peers.switchover_command(peer, old, to)
        args = ["exec", lab.name, host, "--", "sh", "-c", cmd]
    else:
        args = ["exec", lab.name, "app", "--", f"{lab.dir}/bin/pgha-switchover", "--to", str(to)]
    # In the background: the cluster is watched while the command runs (a
    # peer's command may return before or after its cluster has settled).
    t0 = time.time()
    proc = subprocess.Popen([str(LABSH), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = {}

    def wait_command():
        try:
            out, _ = proc.communicate(timeout=180)
            done["rc"], done["out"] = proc.returncode, out.strip()
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            done["rc"], done["out"] = None, "timed out after 180 s"
        done["t"] = time.time()

    waiter = threading.Thread(target=wait_command, daemon=True)
    waiter.start()
    primary = f"pg{to}"
    stand = {}
    attached = []
    # One session per node, kept between polls, and pcp_node_info only once
    # every node streams: a new backend per node and a pcp process every
    # 20 ms took a share of the lab's two cores from what is measured.
    conns = {}

    def settled():
        for i in range(count):
            if i == to or i in stand:
                continue
            try:  # one node down (restarting) must not hold up the others' polls
                if i not in conns:
                    conns[i] = Conn(lab.addr(f"pg{i}"), 5432, "pgpool", "postgres", timeout=1)
                rows = conns[i].query(StandbyPoller.SQL)
            except (OSError, PgError):
                c = conns.pop(i, None)
                if c is not None:
                    try:
                        c.close()
                    except (OSError, PgError):
                        pass
                continue
            if rows and rows[0][0] == "streaming" and int(rows[0][1]) >= tli:
                stand[i] = time.time()
        if not attached and len(stand) == count - 1:
            nodes = pcp_nodes(lab)
            if (nodes and len(nodes) == count and all(n[2] in ("1", "2") for n in nodes)
                    and [i for i, n in enumerate(nodes) if n[6] == "primary"] == [to]
                    and len(stand) == count - 1):
                attached.append(time.time())
        return bool(attached)

    try:
        wait_until(f"every node streaming from {primary} and attached", settled, deadline, every=0.02)
    except RuntimeError:
        pass
    finally:
        for c in conns.values():
            try:
                c.close()
            except (OSError, PgError):
                pass
    t_end = attached[0] if attached else time.time()
    waiter.join(max(1.0, t0 + 180 - time.time() + 5))
    rc, out, t_ret = done.get("rc"), done.get("out", ""), done.get("t", time.time())
    # Writes until the cluster settled and the command returned, and the
    # first one after (a gap open at that moment counts whole).
    t_end = max(t_end, t_ret)
    try:
        wait_until("a write after the leg", lambda: writer.acked and writer.acked[-1][1] > t_end, 30, every=0.01)
    except RuntimeError:
        pass
    acked = [t for _, t in writer.acked if t0 - 1 <= t <= t_end]
    acked += [t for _, t in writer.acked if t > t_end][:1]
    pairs = list(zip(acked, acked[1:]))
    if acked and acked[-1] <= t_end:
        pairs.append((acked[-1], time.time()))  # writes had not come back 30 s after the leg
    worst = max(pairs, key=lambda p: p[1] - p[0]) if pairs else None
    errs = [(round(t - t0, 3), e[:80]) for t, e in writer.errors if worst and worst[0] <= t <= worst[1]]
    streaming = round(max(stand.values()) - t0, 3) if len(stand) == count - 1 else None
    return {
        "rc": rc,
        "last_line": (out.splitlines() or [""])[-1][:300],
        "output_tail": [line[:200] for line in out.splitlines()[-25:]],
        "command_s": round(t_ret - t0, 3),
        "t0": t0,
        "outage": round(worst[1] - worst[0], 3) if worst else None,
        # the longest gap, from and to (seconds from the request), and the
        # writer's errors within it: where the outage came from
        "outage_span": [round(worst[0] - t0, 3), round(worst[1] - t0, 3)] if worst else None,
        "outage_errors": errs[:5],
        "attached": round(attached[0] - t0, 3) if attached else None,
        # every other node streams on the new timeline
        "streaming": streaming,
        "old_primary_streaming": streaming,
        "per_node_streaming": {str(i): round(t - t0, 3) for i, t in stand.items()},
        "final_pcp": [" ".join(n[:8]) for n in (pcp_nodes(lab) or [])],
    }


def current_primary(lab, count):
    for i in range(count):
        try:
            c = Conn(lab.addr(f"pg{i}"), 5432, "pgpool", "postgres", timeout=2)
            rows = c.query("select pg_is_in_recovery()")
            c.close()
        except (OSError, PgError):
            continue
        if rows and rows[0][0] == "f":
            return i
    return None


def switchover_run(variant, standbys, k, name, outdir):
    """The switchover to node 1 then back to node 0 with a writer through
    pgpool: the write outage (longest gap between acknowledged writes), when
    every node streams and is attached, and acknowledged writes lost.
    pgha: pgha-switchover --to; a peer: its own command (peers.py), on a
    pgpool with no failover_command and auto_failback on."""
    peer = VARIANTS[variant].get("peer")
    res = {"variant": variant, "standbys": standbys, "fault": "switchover", "sync": False, "k": k,
           "name": name, "phases": {}, "notes": []}
    lab = Lab(name)
    stop = threading.Event()
    writer = None
    count = standbys + 1
    # pgha settles in well under a second; the peers in seconds to tens.
    deadline = 90.0 if peer else 30.0
    try:
        if peer:
            lab.up(standbys, pgpool=False)
            t_setup = time.time()
            peers.setup(peer, lab, False, switchover=True)
            res["peer_setup_s"] = round(time.time() - t_setup, 1)
            res["switchover_command"] = peers.switchover_command(peer, 0, 1)[1]
        else:
            lab.up(standbys)
        c = Conn(lab.addr("app"), 9999, "app", "app", timeout=10)
        c.query("create table w(id int primary key)")
        c.close()
        writer = Writer(stop, lab.addr("app"), 9999)
        writer.start()
        if not writer.ready.wait(10):
            raise RuntimeError("writer not ready after 10 s")
        for leg, old, to in (("to", 0, 1), ("back", 1, 0)):
            if peer:
                # The peer must see the cluster healthy again before it
                # accepts another switchover (not part of the measure).
                t = time.time()
                wait_until(f"{peer} ready for a switchover to pg{to}",
                           lambda old=old: peers.switchover_ready(peer, lab, f"pg{old}"), 90, every=0.5)
                res[f"{leg}_ready_wait_s"] = round(time.time() - t, 2)
            time.sleep(0.5)  # writes acknowledged before the switchover
            res[leg] = switchover_leg(lab, writer, old, to, count, peer, deadline)
            if res[leg]["rc"] != 0:
                res["notes"].append(f"{leg}: rc {res[leg]['rc']}: {res[leg]['last_line']}")
            if res[leg]["attached"] is None:
                res["notes"].append(f"{leg}: not settled within {deadline:.0f} s")
        time.sleep(0.5)
        stop.set()
        writer.join(WRITE_TIMEOUT + 2)
        for key in ("outage", "attached", "streaming"):
            res["phases"][key] = res["to"][key]
        final = current_primary(lab, count)
        res["final_primary"] = final
        if final is None:
            raise RuntimeError("no primary after the switchover back")
        c = Conn(lab.addr(f"pg{final}"), 5432, "app", "app", timeout=5)
        present = {int(r[0]) for r in c.query("select id from w")}
        c.close()
        lost = sorted((i, t) for i, t in writer.acked if i not in present)
        res["acked"], res["lost"], res["lost_ids"] = len(writer.acked), len(lost), [i for i, _ in lost][:20]
        # A write lost in a leg was acknowledged before the next leg's request.
        back_t0 = res["back"]["t0"]
        res["to"]["lost"] = sum(1 for _, t in lost if t < back_t0)
        res["back"]["lost"] = sum(1 for _, t in lost if t >= back_t0)
    except Exception as e:  # a failed run is recorded, the bench goes on
        res["error"] = f"{type(e).__name__}: {e}"
        log(f"{name}: {res['error']}")
    finally:
        stop.set()
        if lab.dir is not None:
            logs = outdir / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            extra = []
            for h in ["app"] + [f"pg{i}" for i in range(count)]:
                for f in peers.LOGS.get(peer, []) + (["15/pgha-postgresql.log"] if peer else []):
                    extra.append((lab.dir / "hosts" / h / "home" / f, f"{name}.{h}.{Path(f).name}"))
            keep_logs(lab, logs, name, extra)
            lab.down()
    return res


# --- the matrix ------------------------------------------------------------------


# The watchdog case (issue 13): the kill case on a lab with three pgpools
# under pgpool-II's watchdog. Only the variants whose failover_command runs
# unchanged on the leader; the floor has no pgpool and the classic recipe's
# script knows one pgpool host.
WATCHDOG_VARIANTS = ["pgha", "pgha+follow"]


def matrix(quick, watchdog_ns=(), with_peers=False):
    """Every run's (variant, N, fault, sync). The watchdog case only for
    `watchdog_ns` (bench.py passes [2], or --n, when --cases names it).
    `with_peers`: a peer is among the variants, so QUICK's switchover runs
    at N=4 too (for pgha and the peers), as the issue compares them there."""
    ns = [2] if quick else [1, 2, 4]
    runs = []
    for n in ns:
        for v in VARIANTS:
            if n == 1 and v in peers.PEERS:
                continue  # the peers against pgha at N=2 and 4
            runs.append((v, n, "kill", False))
    for n in ([2] if quick else [2, 4]):
        for v in VARIANTS:
            # N=4 silent: pgha and the peers only (the baselines' is known)
            if v != "floor" and (n == 2 or v == "pgha" or v in peers.PEERS):
                runs.append((v, n, "blackhole", False))
    for v in VARIANTS:
        if v != "floor":
            runs.append((v, 2, "kill", True))
    # The lowest-id standby lags, synchronous replication: the candidate
    # must be the standby holding every acknowledged commit (lost = 0).
    for v in VARIANTS:
        if v != "floor":
            runs.append((v, 2, "kill-lagging", True))
    # The primary refuses the failover tool's login (pg_hba reject).
    for v in VARIANTS:
        if v == "pgha" or v in peers.PEERS:
            runs.append((v, 2, "refuse", False))
    runs += switchover_cases([2, 4] if quick and with_peers else [n for n in ns if n >= 2])
    for n in watchdog_ns:
        for v in WATCHDOG_VARIANTS:
            runs.append((v, n, "watchdog", False))
    return runs


def machine():
    def cmd(*a):
        try:
            return subprocess.run(a, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return ""
    mem = ""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = f"{int(line.split()[1]) // 1024} MiB"
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": cmd("nproc"),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "os": cmd("sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"),
        "postgresql": cmd(str(Path(PG_BIN) / "postgres"), "--version"),
        "pgpool": cmd("sh", "-c", f"{Path(PGPOOL_BIN) / 'pgpool'} --version 2>&1"),
        "pgha_commit": cmd("git", "-C", str(REPO), "rev-parse", "--short", "HEAD"),
        "pgha_tree": "modified" if cmd("git", "-C", str(REPO), "status", "--porcelain", "src") else "clean",
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def main():
    global PGHA_BIN, PG_BIN, PGPOOL_BIN
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=int(os.environ.get("K", "5")), help="failovers per case (default 5, or $K)")
    ap.add_argument("--quick", action="store_true", help="K=1, 2 standbys only")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help="comma-separated subset of " + ",".join(VARIANTS) + " (default: all but the peers)")
    ap.add_argument("--cases", default=os.environ.get("CASES", ""),
                    help="only these of kill,blackhole,kill-sync,kill-lagging,refuse,switchover,watchdog "
                    "(default: all but watchdog, or $CASES)")
    ap.add_argument("--n", default=os.environ.get("NS", ""), help="only these standby counts, e.g. 2,4 (or $NS)")
    ap.add_argument("--out", default=str(REPO / "target" / "bench"))
    ap.add_argument("--pgha-bin", default=PGHA_BIN,
                    help="where the pgha-* binaries are (default target/release: what operators run)")
    ap.add_argument("--lock", default=os.environ.get("BENCH_LOCK", ""),
                    help="flock this file around each failover (one lab at a time with others' runs)")
    ap.add_argument("--report-only", action="store_true", help="rewrite results.md and phases.svg from results.json")
    ap.add_argument("--pg-bin", default=PG_BIN,
                    help="PostgreSQL server binaries (default $PGHA_PG_BIN or PostgreSQL 15's; lab/versions.sh prints others)")
    ap.add_argument("--pgpool-bin", default=PGPOOL_BIN,
                    help="the directory of the pgpool binary (default $PGHA_PGPOOL_BIN or /usr/sbin)")
    args = ap.parse_args()
    out = Path(args.out)
    if args.report_only:
        data = json.loads((out / "results.json").read_text())
        report.write_all(data, out)
        return 0
    if os.geteuid() != 0:
        print("bench: run as root (the lab needs namespaces, mounts and iptables)", file=sys.stderr)
        return 2
    PGHA_BIN = str(Path(args.pgha_bin).resolve())
    PG_BIN, PGPOOL_BIN = str(Path(args.pg_bin).resolve()), str(Path(args.pgpool_bin).resolve())
    # lab.sh reads these: every lab of the run uses the same versions.
    os.environ["PGHA_PG_BIN"], os.environ["PGHA_PGPOOL_BIN"] = PG_BIN, PGPOOL_BIN
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    if any(v not in peers.PEERS for v in wanted) and not (Path(PGHA_BIN) / "pgha-failover").exists():
        print(f"bench: {PGHA_BIN}/pgha-failover missing: cargo build --release --bins", file=sys.stderr)
        return 2
    # Threads hand the GIL over every 0.5 ms instead of 5 ms, so that a
    # poller's timestamp is taken when its answer arrives.
    sys.setswitchinterval(0.0005)
    k = 1 if args.quick else args.k
    for v in wanted:
        if v not in VARIANTS:
            print(f"bench: unknown variant {v!r} (one of {', '.join(VARIANTS)})", file=sys.stderr)
            return 2
    faults = {f.strip() for f in args.cases.split(",")} if args.cases else set()
    # The watchdog case only when asked for (--cases watchdog): each of its
    # labs takes ~20 s more to form the watchdog cluster; N=2 unless --n says.
    watchdog_ns = ([int(x) for x in args.n.split(",")] if args.n else [2]) if "watchdog" in faults else []
    cases = [c for c in matrix(args.quick, watchdog_ns, any(v in peers.PEERS for v in wanted))
             if c[0] in wanted]
    if args.cases:
        cases = [c for c in cases if ("kill-sync" if c[2] == "kill" and c[3] else c[2]) in faults]
    if args.n:
        counts = {int(x) for x in args.n.split(",")}
        cases = [c for c in cases if c[1] in counts]
    if not (Path(PGHA_BIN) / "pgha-follow").exists():
        cases = [c for c in cases if c[0] != "pgha+follow"]
    out.mkdir(parents=True, exist_ok=True)
    if (out / "logs").exists():
        shutil.rmtree(out / "logs")
    data = {"started": datetime.now().isoformat(timespec="seconds"), "k": k, "quick": args.quick,
            "machine": machine(), "pgha_bin": PGHA_BIN, "runs": [], "skipped": {}}
    t_begin = time.time()
    total = len(cases) * k
    idx = 0
    tag = f"b{os.getpid() % 100000}"
    # Round-robin over the cases, so that slow drift of the machine's load
    # spreads over every variant instead of hitting one.
    for rep in range(k):
        for variant, n, fault, sync in cases:
            if variant in data["skipped"]:
                continue
            idx += 1
            name = f"{tag}-{idx}"
            label = f"{variant} N={n} {fault}{' sync' if sync else ''} #{rep + 1}"
            lockf = open(args.lock, "a") if args.lock else None
            if lockf:
                fcntl.flock(lockf, fcntl.LOCK_EX)
            try:
                r = one_run(variant, n, fault, sync, rep + 1, name, out)
            finally:
                if lockf:
                    lockf.close()
            data["runs"].append(r)
            ph = r["phases"]
            log(f"[{idx}/{total}] {label}: " + ", ".join(
                f"{p}={ph[p]}" for p in ("detect", "command", "writable", "standbys", "attached", "first_write",
                                         "first_write_leader", "writes_settled", "outage", "streaming") if p in ph)
                + (f", back outage={r['back']['outage']} attached={r['back']['attached']}" if "back" in r else "")
                + (f", lost={r.get('lost')}" if "lost" in r else "") + (f" ERROR {r['error']}" if "error" in r else "")
                + (f" ({'; '.join(r['notes'])})" if r["notes"] else ""))
            if variant == "pgha+follow" and "not implemented" in r["notes"]:
                data["skipped"][variant] = "pgha-follow printed 'not implemented': measured pgha-failover alone"
                log(f"skipping {variant}: {data['skipped'][variant]}")
            (out / "results.json").write_text(json.dumps(data, indent=1))
    data["duration_s"] = round(time.time() - t_begin, 1)
    data["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    report.write_all(data, out)
    (out / "results.json").write_text(json.dumps(data, indent=1))
    log(f"done in {data['duration_s']:.0f} s: {out}/results.md, results.json, phases.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
