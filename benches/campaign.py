#!/usr/bin/env python3
"""pgha fault campaign (issue 18; not part of the test suite).

On one lab (lab/lab.sh), injects random faults from FAULTS, one after the
other, each at a random moment and for a random duration, while a writer
inserts through pgpool (beside background updates that move WAL on, as a
real primary's traffic does: --churn; the nodes keep PostgreSQL's default
wal_keep_size = 0 unless --wal-keep-size) and a checker watches the
invariants:

  acked        no acknowledged insert is missing from the final primary
               (synchronous replication, ANY 1 of the standbys, unless
               --async: then a killed primary's last commits may have
               reached no standby, and their loss fails this check)
  split brain  never two servers that accept writes at one sample (every
               50 ms, each node asked on its own connection); a sample says
               whether pgpool had both attached
  converge     after each fault, one primary and every live node streaming
               from it on its timeline and attached on every pgpool member,
               within --converge seconds (default 30)
  runs         every pgha run the campaign did not kill ends with a `run`
               line in the journal, and a main phase that said it promoted
               is followed by an acknowledged write within 10 s
  archiving    at the end, the final primary archives a switched segment
               within 60 s (a full archive disk must not stop it for good)

Between faults the campaign waits for the cluster to converge by itself.
When it does not, it acts as the operator README describes, once no pgha
command has run for QUIET seconds (the failover and its detached phase are
over) and a host it killed is down or `pgha-check --status` names a fix,
or after --converge seconds in any case: it restarts a host it killed
(through the start guard, as its unit would), runs again a pgha-failover
it killed, reads `pgha-check --status --json` on the leading pgpool host
and runs the fix named for each node (`pgha-attach N`, `pgha-follow N`,
`pgha-attach --rejoin N`, ...), and records each of those as a human step.

A seed makes a run reproducible (--seed, or $SEED); a failing run prints the
seed and the fault sequence and keeps every log. Writes
target/campaign/report.json (faults, violations, per-fault timings) and
summary.md.

  sudo make campaign FAULTS=20            # 20 faults, a random seed
  sudo make campaign SEED=42 MINUTES=30   # for 30 minutes, seed 42
"""

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
from bench import PGDATA, Lab, Writer, pcp_nodes  # noqa: E402
from pgwire import Conn, PgError  # noqa: E402

REPO = bench.REPO
SAMPLE_EVERY = 0.05
FRESH = 0.3  # a node's answer older than this is not counted in a sample
PGHA_LOGIN = "pgha"  # the role pgha connects as (the lab's pgha.toml)
QUIET = 1.0  # seconds with no pgha command running before the operator acts
# pg_hba.conf changes take effect by a reload, when the server runs (a node
# the fence or a failover stopped reads the file when it starts again).
RELOAD_IF_RUNNING = f"if pg_ctl -D {PGDATA} status >/dev/null; then pg_ctl -D {PGDATA} reload >/dev/null; fi"
# Faults that silence the primary for a while, and how long after one ends
# pgpool may still find it dead (a health check that began during the
# silence times out after it: health_check_timeout 2 s, plus the failover's
# own liveness probes): the campaign holds that long before it checks that
# the cluster is whole, so that a late failover belongs to its own fault.
SILENCES = ("blackhole-primary", "pause-primary")
DETECTION_WINDOW = 2.5


def log(msg):
    print(f"campaign {datetime.now().strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


# --- the load ----------------------------------------------------------------------


class Churn(threading.Thread):
    """Updates rows of a fixed table through pgpool, as an application's
    background traffic would: about `kb_per_s` KB of WAL a second, beside
    the writer's single-row inserts (which alone write ~30 KB/s).

    Not a check (nothing it writes is counted): it is there so that WAL
    moves on as on a real primary. With the writer alone, hundreds of
    failovers all happen within one WAL segment number; every timeline's
    copy of that segment and its `.partial` stay in pg_wal (a checkpoint
    removes only older segment numbers), pg_rewind copies all of them in
    full, and a rejoin grows from 1 s to 5 s over a run, a cost of the lab's
    idle primary that no real one has. The table stays small (HOT updates,
    vacuumed), so memory does not grow with the run."""

    ROWS = 2000
    PAD = 200

    def __init__(self, stop, host, port, kb_per_s):
        super().__init__(daemon=True)
        self.stop_ev, self.host, self.port = stop, host, port
        # One statement updates ROWS/20 rows (~300 bytes of WAL each).
        self.every = (self.ROWS / 20) * 0.3 / max(kb_per_s, 1)
        self.statements = 0

    def setup(self):
        c = Conn(self.host, self.port, "app", "app", timeout=5)
        try:
            c.query(f"create table churn(id int primary key, v int not null, pad text not null) "
                    f"with (fillfactor = 50)")
            c.query(f"insert into churn select g, 0, repeat('x', {self.PAD}) from generate_series(1, {self.ROWS}) g")
        finally:
            c.close()

    def run(self):
        conn, k = None, 0
        while not self.stop_ev.is_set():
            t = time.time()
            try:
                if conn is None:
                    conn = Conn(self.host, self.port, "app", "app", timeout=5)
                conn.query(f"update churn set v = v + 1 where id % 20 = {k}")
                self.statements += 1
                k = (k + 1) % 20
            except (OSError, PgError):
                if conn is not None:
                    conn.close()
                    conn = None
                self.stop_ev.wait(0.2)
                continue
            self.stop_ev.wait(max(0.0, self.every - (time.time() - t)))
        if conn is not None:
            conn.close()


# --- the checker -----------------------------------------------------------------


class NodeProbe(threading.Thread):
    """Asks one node `select pg_is_in_recovery()` every SAMPLE_EVERY on a
    persistent connection; keeps the last answer and when it came. A node
    that does not answer (killed, blackholed, frozen) simply goes stale."""

    def __init__(self, stop, node, addr):
        super().__init__(daemon=True)
        self.stop_ev, self.node, self.addr = stop, node, addr
        self.writable = None
        self.at = 0.0  # when the last answer came
        self.sent = 0.0  # when its question was sent: the state held after this
        self.since = None  # when the first answer of the current writable streak came
        self.lock = threading.Lock()

    def answer(self):
        """(writable, sent, at, since) of the last answer, read at once."""
        with self.lock:
            return self.writable, self.sent, self.at, self.since

    def run(self):
        conn = None
        while not self.stop_ev.is_set():
            try:
                if conn is None:
                    conn = Conn(self.addr, 5432, "pgpool", "postgres", timeout=FRESH, app="pgha-campaign")
                sent = time.time()
                rows = conn.query("select pg_is_in_recovery()")
                at = time.time()
                writable = rows[0][0] == "f"
                with self.lock:
                    if writable and not self.writable:
                        self.since = at
                    elif not writable:
                        self.since = None
                    self.writable, self.sent, self.at = writable, sent, at
            except (OSError, PgError):
                # No answer now: the last one no longer stands for the node
                # (a killed primary's last "writable" would otherwise count
                # next to its successor's for up to FRESH).
                with self.lock:
                    self.writable, self.since = None, None
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(SAMPLE_EVERY)
        if conn is not None:
            conn.close()


class SplitBrainChecker(threading.Thread):
    """Every SAMPLE_EVERY: the nodes whose fresh answer says writable. Two
    or more is a violation; pgpool's view (sampled by the operator loop)
    says whether clients could reach both through pgpool."""

    def __init__(self, stop, probes, campaign):
        super().__init__(daemon=True)
        self.stop_ev, self.probes, self.campaign = stop, probes, campaign
        self.samples = 0

    def run(self):
        while not self.stop_ev.is_set():
            now = time.time()
            answers = [(p.node, *p.answer()) for p in self.probes]
            fresh = [(n, sent, since) for n, w, sent, at, since in answers if w and now - at <= FRESH]
            # Two writable answers prove two primaries at once only when
            # each question was sent after the other's writable streak had
            # begun: an old primary's last answer, sent just before it was
            # killed, and its successor's first, received just after the
            # promotion, overlap no instant (pgha promotes within 0.1-0.2 s
            # of a kill, less than FRESH).
            start = max((since for _, _, since in fresh), default=0.0)
            writable = [n for n, _, _ in fresh]
            self.samples += 1
            if len(fresh) > 1 and all(sent >= start for _, sent, _ in fresh):
                # Both attached in pgpool: clients write to both. One only:
                # the other is an old primary back outside pgpool (a zombie
                # a direct client could still write to).
                attached = self.campaign.attached_now(writable)
                kind = "split_brain" if len(attached) > 1 else "zombie_writable"
                self.campaign.violation(kind, f"nodes {writable} accept writes at once; pgpool has {attached} attached",
                                        nodes=writable, attached=attached)
            time.sleep(SAMPLE_EVERY)


# --- faults ----------------------------------------------------------------------
#
# Each fault is a function (campaign, rng) -> dict describing what it did; it
# returns once the fault is in place and its duration (if any) has passed.
# Hosts it leaves dead are in campaign.dead; the recovery loop restarts them.


def fault_kill_primary(c, rng):
    p = c.primary()
    c.kill(p)
    return {"target": p}


def fault_kill_standby(c, rng):
    s = rng.choice(c.standbys())
    c.kill(s)
    return {"target": s}


def fault_blackhole_primary(c, rng):
    """Every packet to the primary's two addresses dropped for D seconds."""
    p, d = c.primary(), round(rng.uniform(1, 5), 1)
    addrs = [c.lab.addr(p), c.lab.repl_addr(p)]
    for a in addrs:
        c.lab.lab("blackhole", c.lab.name, a)
    c.sleep(d)
    for a in addrs:
        c.lab.lab("unblackhole", c.lab.name, a)
    return {"target": p, "seconds": d}


def fault_pause_primary(c, rng):
    """Every process of the primary's host stopped (SIGSTOP) for D seconds."""
    p, d = c.primary(), round(rng.uniform(1, 5), 1)
    c.lab.lab("pause", c.lab.name, p)
    c.sleep(d)
    c.lab.lab("resume", c.lab.name, p)
    return {"target": p, "seconds": d}


def fault_lag_standby(c, rng):
    """A standby stops replaying for D seconds (it keeps receiving)."""
    s, d = rng.choice(c.standbys()), round(rng.uniform(1, 5), 1)
    try:
        c.lab.psql(s, "select pg_wal_replay_pause()")
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        # It stopped being a standby between the choice and the pause.
        return {"target": s, "skipped": str(e)[-200:]}
    c.sleep(d)
    c.lab.psql(s, "select pg_wal_replay_resume()")
    return {"target": s, "seconds": d}


def fault_refuse_login(c, rng):
    """A random node refuses pgha's login for D seconds; half the time the
    primary dies meanwhile."""
    n, d = rng.choice(c.live_nodes()), round(rng.uniform(1, 8), 1)
    kill = rng.random() < 0.5
    line = f"host    all    {PGHA_LOGIN}    127.0.0.0/8    reject"
    c.lab.sh(n, f"sed -i '1i {line}' {PGDATA}/pg_hba.conf; {RELOAD_IF_RUNNING}")
    killed = None
    if kill:
        c.sleep(rng.uniform(0, d / 2))
        killed = c.primary()
        c.kill(killed)
    c.sleep(d)
    if n not in c.dead:
        c.lab.sh(n, f"sed -i '1{{/{PGHA_LOGIN} .*reject/d}}' {PGDATA}/pg_hba.conf; {RELOAD_IF_RUNNING}")
    else:
        c.refused_hba.add(n)  # restored when the host is restarted
    return {"target": n, "seconds": d, "killed": killed}


def fault_kill_pgha(c, rng):
    """The primary dies, and pgha-failover is killed (SIGKILL) a random
    moment after pgpool started it."""
    p = c.primary()
    delay = round(rng.uniform(0, 1.5), 2)
    c.kill(p)
    pid, argv = c.wait_pgha_process(timeout=30)
    if pid is None:
        return {"target": p, "pgha": "never started"}
    c.sleep(delay)
    try:
        os.kill(pid, 9)
        c.killed_pgha.add(pid)
    except OSError:
        return {"target": p, "pgha": f"pid {pid} ended before the kill"}
    c.rerun_after_kill = argv
    return {"target": p, "pgha_pid": pid, "after": delay}


def fault_kill_settle(c, rng):
    """The primary dies, and the detached phase of pgha-failover (which
    repoints the asynchronous standbys, copies the history file, waits for
    streaming and attaches) is killed (SIGKILL) a random moment into its
    run."""
    p = c.primary()
    delay = round(rng.uniform(0, 1.0), 2)
    c.kill(p)
    pid, _ = c.wait_pgha_process(timeout=30, settle=True)
    if pid is None:
        return {"target": p, "settle": "never started"}
    c.sleep(delay)
    try:
        os.kill(pid, 9)
        c.killed_pgha.add(pid)
    except OSError:
        return {"target": p, "settle": f"pid {pid} ended before the kill"}
    return {"target": p, "settle_pid": pid, "after": delay}


def fault_switchover(c, rng):
    to = rng.choice(c.standbys())
    r = c.pgha("pgha-switchover", "--to", c.node_id(to), timeout=120)
    return {"target": to, "exit": r.returncode, "line": last_line(r.stderr)}


def fault_kill_pgpool_host(c, rng):
    """A pgpool host dies (3 pgpools only); it is restarted after D seconds."""
    h, d = rng.choice(c.lab.pgpool_hosts), round(rng.uniform(2, 8), 1)
    c.kill(h)
    c.sleep(d)
    c.restart_host(h)
    return {"target": h, "seconds": d}


def fault_fill_archive(c, rng):
    """A node's archive directory is full (writing there fails with ENOSPC)
    for D seconds; when that node is a standby, half the time the primary
    dies meanwhile (the detached phase then cannot put the new timeline's
    history file into its archive)."""
    n, d = rng.choice(c.live_nodes()), round(rng.uniform(2, 8), 1)
    c.lab.lab("fill-archive", c.lab.name, n)
    killed = None
    if n != c.primary() and rng.random() < 0.5:
        c.sleep(rng.uniform(0, d / 2))
        killed = c.primary()
        c.kill(killed)
    c.sleep(d)
    if n not in c.dead:
        c.lab.lab("unfill-archive", c.lab.name, n)
    return {"target": n, "seconds": d, "killed": killed}


FAULTS = {
    "kill-primary": (fault_kill_primary, 3),
    "kill-standby": (fault_kill_standby, 2),
    "blackhole-primary": (fault_blackhole_primary, 2),
    "pause-primary": (fault_pause_primary, 2),
    "lag-standby": (fault_lag_standby, 1),
    "refuse-login": (fault_refuse_login, 1),
    "kill-pgha": (fault_kill_pgha, 2),
    "kill-settle": (fault_kill_settle, 1),
    "switchover": (fault_switchover, 2),
    "kill-pgpool-host": (fault_kill_pgpool_host, 1),  # with --pgpools 3 only
    "fill-archive": (fault_fill_archive, 1),
}


def last_line(text):
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# --- the campaign ------------------------------------------------------------------


class Campaign:
    def __init__(self, lab, seed, converge, out):
        self.lab, self.seed, self.converge_s, self.out = lab, seed, converge, out
        self.stop = threading.Event()
        self.violations = []
        self.faults = []
        self.dead = set()  # hosts the campaign killed and has not restarted
        self.refused_hba = set()
        self.killed_pgha = set()
        self.rerun_after_kill = None
        self.last_status = None  # what needs_operator read, for the round that follows
        self.pcp_view = {}  # member -> (time, nodes)
        self.lock = threading.Lock()
        self.current = None  # index of the fault in progress

    # -- what the cluster is --

    def nodes(self):
        return [f"pg{k}" for k in range(self.lab.standbys + 1)]

    @staticmethod
    def node_id(host):
        return host[2:]

    def live_nodes(self):
        return [n for n in self.nodes() if n not in self.dead]

    def ask(self, host, sql):
        """The rows of `sql` on `host` (lists of str or None): over TCP as
        pgpool (which the lab trusts from loopback and grants pg_monitor),
        one short connection, no process started; through the host's own
        socket with psql when TCP fails. RuntimeError when neither answers."""
        try:
            conn = Conn(self.lab.addr(host), 5432, "pgpool", "postgres", timeout=3, app="pgha-campaign")
            try:
                return conn.query(sql)
            finally:
                conn.close()
        except (OSError, PgError):
            pass
        try:
            out = self.lab.psql(host, sql, timeout=5)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"{host}: {e}") from e
        return [ln.split("|") for ln in out.splitlines()]

    def role(self, host):
        """(in recovery?, timeline), or None."""
        try:
            rows = self.ask(host, "select pg_is_in_recovery(), "
                            "case when pg_is_in_recovery() then (select coalesce(received_tli, 0) from pg_stat_wal_receiver) "
                            "else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int end")
        except RuntimeError:
            return None
        if not rows:
            return None
        rec, tl = rows[0][0], rows[0][1]
        return rec == "t", int(tl or 0)

    def primary(self):
        """The one live node not in recovery that pgpool has attached."""
        view = pcp_nodes(self.lab, self.lab.leader) or []
        for k, n in enumerate(view):
            if n[6] == "primary" and n[2] in ("1", "2") and f"pg{k}" not in self.dead:
                return f"pg{k}"
        raise RuntimeError(f"no attached primary in pgpool's view: {view}")

    def standbys(self):
        p = self.primary()
        return [n for n in self.live_nodes() if n != p]

    def detached(self, host):
        """Whether the leading pgpool shows `host` down (it found it dead)."""
        view = pcp_nodes(self.lab, self.lab.leader) or []
        k = int(self.node_id(host))
        return len(view) > k and view[k][2] not in ("1", "2")

    def attached_now(self, nodes):
        """Which of `nodes` every pgpool member shows up (its last sample)."""
        with self.lock:
            views = list(self.pcp_view.values())
        return [n for n in nodes if views and all(
            v and len(v) > n and v[n][2] in ("1", "2") for _, v in views)]

    def sample_pcp(self):
        for h in self.lab.pgpool_hosts:
            if h in self.dead:
                continue
            v = pcp_nodes(self.lab, h)
            with self.lock:
                self.pcp_view[h] = (time.time(), v)

    def converged(self):
        """None when the cluster is whole again, else what is missing."""
        live = self.live_nodes()
        roles = {n: self.role(n) for n in live}
        primaries = [n for n, r in roles.items() if r and not r[0]]
        if len(primaries) != 1:
            return f"primaries among the live nodes: {primaries} ({roles})"
        p = primaries[0]
        tl = roles[p][1]
        addrs = (self.lab.addr(p), self.lab.repl_addr(p))
        for n in live:
            if n == p:
                continue
            try:
                rows = self.ask(n, "select sender_host, received_tli from pg_stat_wal_receiver where status = 'streaming'")
            except RuntimeError as e:
                return f"{n}: {e}"
            host, t = (rows[0][0], rows[0][1]) if rows else (None, None)
            if host not in addrs or t != str(tl):
                return f"{n} streams from {'|'.join(map(str, rows[0])) if rows else 'nowhere'}, not from {p} on timeline {tl}"
        for h in self.lab.pgpool_hosts:
            if h in self.dead:
                continue
            v = pcp_nodes(self.lab, h)
            if not v:
                return f"pgpool on {h} does not answer PCP"
            for k, row in enumerate(v):
                node = f"pg{k}"
                up = row[2] in ("1", "2")
                if node in live and not up:
                    return f"pgpool on {h} shows {node} down"
                if node not in live and up:
                    return f"pgpool on {h} shows the dead {node} up"
                if node == p and row[6] != "primary":
                    return f"pgpool on {h} shows {p} as {row[6]}"
        return None

    # -- acting --

    def kill(self, host):
        self.lab.kill_host(host)
        self.dead.add(host)

    def restart_host(self, host):
        self.lab.lab("restart-host", self.lab.name, host, timeout=120)
        self.dead.discard(host)
        if host in self.refused_hba:
            self.lab.sh(host, f"sed -i '1{{/{PGHA_LOGIN} .*reject/d}}' {PGDATA}/pg_hba.conf; {RELOAD_IF_RUNNING}")
            self.refused_hba.discard(host)

    def leader(self):
        """The pgpool host an operator works on: the watchdog's leader as the
        first live member sees it (pgpool hosts die in this campaign too)."""
        if len(self.lab.pgpool_hosts) == 1:
            return self.lab.leader
        for h in self.lab.pgpool_hosts:
            if h in self.dead:
                continue
            r = self.lab.lab("exec", self.lab.name, h, "--", "pcp_watchdog_info", "-h", self.lab.addr(h),
                             "-p", self.lab.env["PCP_PORT"], "-U", "pgpool", "-w", "-v", timeout=15, check=False)
            m = re.search(r"^Leader Host Name\s*:\s*(\S+)", r.stdout, re.M)
            leader = self.lab.host_at(m.group(1)) if m else None
            if leader and leader not in self.dead:
                self.lab.leader = leader
                return leader
        return self.lab.leader

    def pgha(self, binary, *args, timeout=120):
        """A pgha command on the leading pgpool host, as postgres (as an operator runs it)."""
        return self.lab.lab("exec", self.lab.name, self.leader(), "--", f"{self.lab.dir}/bin/{binary}",
                            *args, timeout=timeout, check=False)

    def pgha_processes(self):
        """(pid, argv) of every pgha-* process of this lab that is running
        (pgpool's failover and follow commands, their detached phases, the
        operator's own commands); the fence and the start guard excepted."""
        prefix = f"{self.lab.dir}/bin/pgha-"
        found = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                argv = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            words = [a.decode(errors="replace") for a in argv if a]
            if words and words[0].startswith(prefix) and "--fence" not in words and "--start-guard" not in words:
                found.append((int(p.name), words))
        return found

    def wait_pgha_process(self, timeout, settle=False):
        """The pid and argv of a pgha-failover main run pgpool started (or,
        with `settle`, of its detached phase)."""
        exe = f"{self.lab.dir}/bin/pgha-failover"
        end = time.time() + timeout
        while time.time() < end:
            for pid, words in self.pgha_processes():
                if words[0] == exe and ("--settle" in words) == settle:
                    return pid, words[1:]
            time.sleep(0.01)
        return None, None

    def status(self):
        """`pgha-check --status --json` on the leading pgpool host, or None."""
        r = self.pgha("pgha-check", "--status", "--json", timeout=60)
        try:
            return json.loads(r.stdout)
        except json.JSONDecodeError:
            return None

    def needs_operator(self):
        """Whether an operator would act now: a host is down that the
        campaign killed, or pgha-check --status names a fix (that status
        is kept for the operator round that follows at once, as an
        operator acts on what they just read)."""
        self.last_status = None
        if self.dead:
            return True
        st = self.status()
        if st and any(n.get("fix") for n in st.get("nodes", [])):
            self.last_status = st
            return True
        return False

    def sleep(self, seconds):
        end = time.time() + seconds
        while time.time() < end and not self.stop.is_set():
            self.sample_pcp()
            time.sleep(min(0.5, max(0.0, end - time.time())))

    def violation(self, kind, detail, **extra):
        with self.lock:
            # One entry per kind and fault for split brain (it is sampled
            # every 50 ms): the first sample, and a count.
            for v in self.violations:
                if v["kind"] == kind and kind in ("split_brain", "zombie_writable") and v["fault"] == self.current:
                    v["samples"] += 1
                    return
            v = {"kind": kind, "fault": self.current, "at": time.time(), "detail": detail, "samples": 1, **extra}
            self.violations.append(v)
        log(f"VIOLATION {kind}: {detail}")

    def operator(self, steps):
        """One round of what README tells an operator to do: restart what
        died, then run the fix pgha-check --status names for each node."""
        before = len(steps)
        for h in sorted(self.dead):
            self.restart_host(h)
            steps.append(f"restarted host {h}")
        if self.rerun_after_kill:
            r = self.pgha("pgha-failover", *self.rerun_after_kill)
            steps.append(f"pgha-failover {' '.join(self.rerun_after_kill)}: {last_line(r.stderr)}")
            self.rerun_after_kill = None
        # Read again unless the status that made the operator act is at
        # hand and nothing changed since (no host restarted, no run again).
        status = self.last_status if self.last_status is not None and len(steps) == before else self.status()
        self.last_status = None
        if status is None:
            steps.append("pgha-check --status gave no JSON")
            return
        for n in status.get("nodes", []):
            fix = n.get("fix")
            if not fix:
                continue
            # "pgha-attach N", "pgha-follow N", "pgha-attach --rejoin N"
            # (also "once its host is up: ..."; dead hosts were restarted
            # above), "pgha-follow N --discard-wal (...)", and
            # "pcp_attach_node -n N" for a healthy primary pgpool detached.
            m = re.search(r"(pgha-(?:attach|follow)(?: --rejoin)? \d+(?: --discard-wal)?)", fix)
            pcp = re.search(r"pcp_attach_node -n (\d+)", fix)
            if pcp:
                h = self.leader()
                r = self.lab.lab("exec", self.lab.name, h, "--", "pcp_attach_node", "-h", self.lab.addr(h),
                                 "-p", self.lab.env["PCP_PORT"], "-U", "pgpool", "-w", "-n", pcp.group(1),
                                 timeout=60, check=False)
                steps.append(f"pcp_attach_node -n {pcp.group(1)}: exit {r.returncode} {last_line(r.stderr or r.stdout)}")
                continue
            if not m:
                steps.append(f"node {n.get('id')}: no command to run for '{fix}'")
                continue
            binary, *args = m.group(1).split()
            r = self.pgha(binary, *args, timeout=300)
            steps.append(f"{m.group(1)}: {last_line(r.stderr)}")

    def recover(self, entry):
        """Wait for convergence; act as the operator when it does not come:
        once no pgha command has run for QUIET seconds and the status names
        a fix (an operator waits for the failover to finish, then reads
        pgha-check --status), or after --converge seconds in any case.
        After a silence that pgpool has not (yet) acted on, hold
        DETECTION_WINDOW first: a failover may still begin."""
        start = time.time()
        steps = []
        if entry["kind"] in SILENCES and entry.get("target") and not self.detached(entry["target"]):
            self.sleep(DETECTION_WINDOW)
        for round_ in range(3):
            end = time.time() + self.converge_s
            missing = "not checked"
            quiet_since = None
            while time.time() < end:
                self.sample_pcp()
                missing = self.converged()
                if missing is None:
                    break
                now = time.time()
                if self.pgha_processes():
                    quiet_since = None
                elif quiet_since is None:
                    quiet_since = now
                elif now - quiet_since >= QUIET and self.needs_operator():
                    break
                time.sleep(0.2)
            if missing is None and not self.dead:
                break
            if round_ == 2:
                self.violation("converge", f"not converged after {len(steps)} operator steps: {missing}")
                break
            try:
                self.operator(steps)
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                # A step README gives that cannot even be run (a restart
                # that fails, a command that hangs) is the campaign's own
                # finding, not a crash of the run.
                self.violation("campaign", f"an operator step failed: {e}")
                steps.append(f"failed: {str(e)[:200]}")
        entry["recovered_s"] = round(time.time() - start, 2)
        entry["human_steps"] = steps

    def check_runs(self, writer):
        """Every pgha run not killed ends with a run line; a main phase that
        says it promoted is followed by an acknowledged write within 10 s."""
        for h in self.lab.pgpool_hosts:
            path = self.lab.dir / "hosts" / h / "home" / "pgha" / "journal.jsonl"
            if not path.exists():
                continue  # this pgpool host never ran a pgha command
            try:
                lines = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
            except (OSError, json.JSONDecodeError) as e:
                self.violation("runs", f"{h}'s journal: {e}")
                continue
            pids = {e["pid"] for e in lines if e.get("command") == "failover"}
            ended = {e["pid"] for e in lines if e.get("step") == "run"}
            for pid in sorted(pids - ended - self.killed_pgha):
                self.violation("runs", f"pgha-failover pid {pid} on {h} left no final line in the journal")
            acks = [t for _, t in writer.acked]
            for e in lines:
                if e.get("step") == "run" and e.get("phase") == "main" and e.get("outcome") == "promoted":
                    t = datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()
                    if not any(t <= a <= t + 10 for a in acks):
                        self.violation("runs", f"pid {e['pid']} said promoted at {e['ts']}; no write acknowledged within 10 s")


def check_archiving(c):
    """The final primary archives: a segment switched now reaches its
    archive directory within 60 s (a full archive disk earlier must not
    have stopped archiving for good)."""
    try:
        p = c.primary()
        c.lab.psql(p, "select txid_current()")  # WAL to switch away from
        seg = c.lab.psql(p, "select pg_walfile_name(pg_current_wal_lsn())")
        c.lab.psql(p, "select pg_switch_wal()")
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        c.violation("archiving", f"could not switch a segment on the final primary: {e}")
        return
    path = c.lab.dir / "hosts" / p / "home" / "archive" / seg
    end = time.time() + 60
    while time.time() < end:
        if path.exists():
            return
        time.sleep(0.2)
    stats = c.lab.psql(p, "select failed_count, last_failed_wal from pg_stat_archiver")
    c.violation("archiving", f"{p} did not archive {seg} within 60 s (pg_stat_archiver failed_count|last_failed_wal: {stats})")


def keep_logs(lab, logs):
    """Every host's pgpool log, pgha journal and PostgreSQL log into logs/."""
    logs.mkdir(parents=True, exist_ok=True)
    for d in sorted((lab.dir / "hosts").iterdir()):
        for rel in ("home/pgpool.log", "home/pgha/journal.jsonl", "home/15/pgha-postgresql.log", "home/pgha-fence.log"):
            src = d / rel
            if src.exists():
                (logs / f"{d.name}.{src.name}").write_bytes(src.read_bytes())


def make_lab(args):
    name = f"campaign-{os.getpid()}"
    lab = Lab(name).up(args.standbys, pgpools=args.pgpools, fence=not args.no_fence, sync=not args.async_,
                       wal_keep_size=args.wal_keep_size,
                       follow="@BIN@/pgha-follow %d --new-primary %m --old-primary %P" if args.follow else None)
    lab.leader = lab.watchdog_leader() if args.pgpools > 1 else "app"
    return lab


def main():
    # Stopped by SIGTERM (or SIGINT, which a shell's background job
    # ignores otherwise): the finally below still takes the lab down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faults", type=int, default=int(os.environ.get("FAULTS", "0") or 0),
                    help="how many faults (or $FAULTS); default 20 unless --minutes is given")
    ap.add_argument("--minutes", type=float, default=float(os.environ.get("MINUTES", "0") or 0),
                    help="stop after this long (or $MINUTES)")
    ap.add_argument("--seed", type=int, default=int(os.environ["SEED"]) if os.environ.get("SEED") else None)
    ap.add_argument("--standbys", type=int, default=2)
    ap.add_argument("--pgpools", type=int, choices=[1, 3], default=1)
    ap.add_argument("--follow", action="store_true", help="pgha-follow as follow_primary_command")
    ap.add_argument("--async", dest="async_", action="store_true",
                    help="asynchronous replication; by default synchronous_standby_names = 'ANY 1 (...)': "
                         "with asynchronous replication a killed primary's last commits, acknowledged before "
                         "its WAL reached any standby, exist on no other node, and the 'acked' check then "
                         "fails for a loss no failover tool can prevent")
    ap.add_argument("--no-fence", action="store_true",
                    help="without pgha-check --fence on the nodes (pgha-fence.service); the start guard runs regardless")
    ap.add_argument("--only", default="", help="comma-separated subset of " + ",".join(FAULTS))
    ap.add_argument("--wal-keep-size", default="0",
                    help="wal_keep_size on the nodes (default 0, PostgreSQL's: a standby that falls behind "
                         "restores from its upstream's archive over scp; the tests' lab keeps 256MB)")
    ap.add_argument("--churn", type=float, default=512,
                    help="KB of WAL a second written by background updates through pgpool beside the writer "
                         "(default 512; 0: none): a real primary's WAL moves on between failovers")
    ap.add_argument("--converge", type=float, default=30.0, help="seconds to wait for convergence by itself")
    ap.add_argument("--out", default=str(REPO / "target" / "campaign"))
    args = ap.parse_args()
    if not args.faults and not args.minutes:
        args.faults = 20
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    kinds = [k for k in FAULTS if (not args.only or k in args.only.split(","))
             and (k != "kill-pgpool-host" or args.pgpools > 1)]
    if not kinds:
        sys.exit(f"campaign: no fault left to inject (--only {args.only!r}; kill-pgpool-host needs --pgpools 3)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"seed {seed}; faults from {kinds}")

    lab = make_lab(args)
    c = Campaign(lab, seed, args.converge, out)
    started = time.time()
    writer = probes = checker = churn = None
    try:
        c0 = Conn(lab.addr(lab.leader), int(lab.env.get("PGPOOL_PORT", "9999")), "app", "app", timeout=5)
        c0.query("create table w(id int primary key)")
        c0.close()
        writer = Writer(c.stop, lab.addr(lab.leader), int(lab.env.get("PGPOOL_PORT", "9999")))
        if args.churn > 0:
            churn = Churn(c.stop, lab.addr(lab.leader), int(lab.env.get("PGPOOL_PORT", "9999")), args.churn)
            churn.setup()
        probes = [NodeProbe(c.stop, k, lab.addr(f"pg{k}")) for k in range(lab.standbys + 1)]
        checker = SplitBrainChecker(c.stop, probes, c)
        for t in [writer, *probes, checker, *([churn] if churn else [])]:
            t.start()
        writer.ready.wait(30)
        n = 0
        while (not args.faults or n < args.faults) and (not args.minutes or time.time() - started < args.minutes * 60):
            kind = rng.choices(kinds, weights=[FAULTS[k][1] for k in kinds])[0]
            c.sleep(rng.uniform(0.2, 0.8))  # a random moment
            c.current = n
            entry = {"n": n, "kind": kind, "at": time.time()}
            log(f"fault {n}: {kind}")
            try:
                entry.update(FAULTS[kind][0](c, rng))
            except Exception as e:  # noqa: BLE001 - a fault that could not be injected is recorded, not fatal
                entry["error"] = str(e)[:500]
                log(f"fault {n} ({kind}) could not be injected: {e}")
            c.recover(entry)
            c.faults.append(entry)
            log(f"fault {n}: {kind} {entry.get('target', '')}: recovered in {entry['recovered_s']}s, "
                f"{len(entry['human_steps'])} human step(s)")
            n += 1
    finally:
        c.stop.set()
        for t in [writer, checker, churn, *(probes or [])]:
            if t is not None:
                t.join(10)
        c.churn_statements = churn.statements if churn else 0
        report = finish(c, writer, seed, started, args)
        keep_logs(lab, out / "logs")
        lab.down()
    print(json.dumps({k: report[k] for k in ("seed", "faults_injected", "violations_total", "lost")}))
    if report["violations_total"]:
        log(f"FAILED: {report['violations_total']} violation(s); seed {seed}; logs in {out / 'logs'}")
        sys.exit(1)


def finish(c, writer, seed, started, args):
    lost = None
    if writer is not None:
        try:
            p = c.primary()
            out = c.lab.lab("exec", c.lab.name, p, "--", "psql", "-d", "app", "-qAtc", "select id from w", timeout=60).stdout
            have = {int(r) for r in out.split()}
            acked = {i for i, _ in writer.acked}
            missing = sorted(acked - have)
            lost = len(missing)
            if missing:
                c.violation("acked", f"{lost} acknowledged writes missing on {p}: {missing[:20]}")
            c.wal_bytes = int(c.ask(p, "select pg_current_wal_lsn() - '0/0'")[0][0])
        except Exception as e:  # noqa: BLE001
            c.violation("acked", f"could not read the final primary: {e}")
        c.check_runs(writer)
        check_archiving(c)
    report = {
        "seed": seed,
        "args": vars(args),
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(),
        "seconds": round(time.time() - started, 1),
        "faults_injected": len(c.faults),
        "faults": c.faults,
        "violations_total": len(c.violations),
        "violations": c.violations,
        "acked": len(writer.acked) if writer else 0,
        "lost": lost,
        "churn_statements": getattr(c, "churn_statements", 0),
        "wal_bytes": getattr(c, "wal_bytes", None),
        "machine": bench.machine(),
    }
    (c.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (c.out / "summary.md").write_text(summary(report))
    return report


def summary(r):
    lines = [f"# Fault campaign, seed {r['seed']}", "",
             f"{r['faults_injected']} faults in {r['seconds']} s; {r['acked']} acknowledged writes, "
             f"{r['lost']} lost; {r['violations_total']} violation(s).", "",
             "| # | fault | target | recovered (s) | human steps | violations |", "|---|---|---|---|---|---|"]
    for f in r["faults"]:
        v = [x["kind"] for x in r["violations"] if x["fault"] == f["n"]]
        lines.append(f"| {f['n']} | {f['kind']} | {f.get('target', '')} | {f.get('recovered_s', '')} | "
                     f"{'; '.join(f.get('human_steps', [])) or '-'} | {', '.join(v) or '-'} |")
    if r["violations"]:
        lines += ["", "## Violations", ""]
        lines += [f"- fault {v['fault']}: {v['kind']}: {v['detail']}" for v in r["violations"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
