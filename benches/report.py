"""Statistics, Markdown table and SVG chart of the failover benchmark.

Reads the structure bench.py writes to results.json; `bench.py
--report-only` reruns only this part.
"""

import statistics
from pathlib import Path

PHASES = ["detect", "command", "writable", "standbys", "attached", "first_write"]
PHASE_TITLES = {
    "detect": "detect",
    "command": "command",
    "writable": "writable",
    "standbys": "standbys",
    "attached": "attached",
    "first_write": "first write",
    "promote": "cmd→writable",
    "promote_self": "own promote step",
}
VARIANT_ORDER = ["floor", "classic", "samples", "pgha", "pgha+follow", "repmgr", "patroni", "pgautofailover"]
PEERS = ["repmgr", "patroni", "pgautofailover"]
CASES = [("kill", False), ("blackhole", False), ("kill", True), ("kill-lagging", True), ("watchdog", False)]
DRILLS = [("kill-lagging", True), ("refuse", False)]
CASE_TITLES = {
    ("kill", False): "Killed primary (every process of its host SIGKILLed)",
    ("blackhole", False): "Silent primary (its client and replication addresses blackholed)",
    ("kill", True): "Killed primary, synchronous replication (ANY 1)",
    ("kill-lagging", True): "Killed primary, synchronous replication (ANY 1), the lowest-id standby lagging",
    ("refuse", False): "Drill: the live primary refuses the failover tool's login (pg_hba reject)",
    ("watchdog", False): "Killed primary, three pgpools under pgpool-II's watchdog (writer on a member that is not the leader)",
}
# The switchover case (bench.py switchover_run): per leg, there (to pg1) and
# back (to pg0), seconds from the request.
SW_LEGS = [("to", "there"), ("back", "back")]
SW_COLS = [("outage", "write outage"), ("lost", "lost"), ("streaming", "all streaming"), ("attached", "all attached")]
SW_PHASES = [f"{leg}.{c}" for leg, _ in SW_LEGS for c, _ in SW_COLS] + [f"{leg}.command_s" for leg, _ in SW_LEGS]
TARGETS = {"first_write": 0.8, "standbys": 1.5, "promote_ratio": 1.25, "blackhole_extra": 1.0, "watchdog_extra": 0.3}
# The watchdog case's extra phases (bench.py: first write through the leader,
# which writes once its failover started; the first write after the
# writer's last error) and its steps in the members' pgpool logs.
WD_PHASES = [("first_write_leader", "first write through the leader"),
             ("writes_settled", "writes settled (first after the last error)")]
WD_STEPS = [
    ("member_request", "the writer's member: degenerate backend request"),
    ("member_forwarded", "… forwarded to the leader"),
    ("member_quarantine", "… starts quarantining node 0 (no consensus yet)"),
    ("member_quarantine_done", "… quarantine done; its main process waits for its PCP child's restart"),
    ("member_pcp_restarted", "… PCP child restarted: its main process free again"),
    ("leader_waiting", "leader: waiting for consensus"),
    ("other_health_check", "third member: health check fails"),
    ("leader_health_check", "leader: its own health check fails"),
    ("consensus", "leader: consensus"),
    ("command", "leader: failover_command starts"),
    ("command_returned", "leader: failover_command returned"),
    ("failover_done", "leader: failover done"),
    ("member_signalled", "the writer's member: told the leader failed over"),
    ("member_synced", "… its main process syncs the backend states"),
    ("other_synced", "third member: syncs the backend states"),
]


def groups(data):
    """{(fault, sync, N, variant): [runs]} over the runs without error."""
    g = {}
    for r in data["runs"]:
        g.setdefault((r["fault"], r["sync"], r["standbys"], r["variant"]), []).append(r)
    return g


def values(runs, phase):
    out = []
    for r in runs:
        if phase.startswith(("to.", "back.")):  # a switchover leg's phase
            leg, key = phase.split(".", 1)
            v = (r.get(leg) or {}).get(key)
        elif phase.startswith("wd:"):
            v = (r.get("watchdog") or {}).get("steps", {}).get(phase[3:])
        elif phase == "promote":
            v = r.get("promote_s")
        elif phase == "promote_self":
            v = r.get("promote_self_s")
        elif phase == "lost":
            v = r.get("lost")
        elif phase == "after_detect":
            ph = r.get("phases", {})
            v = None if ph.get("first_write") is None or ph.get("detect") is None else ph["first_write"] - ph["detect"]
        else:
            v = r.get("phases", {}).get(phase)
        if v is not None and "error" not in r:
            out.append(v)
    return out


def stats(vals):
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def cell(runs, phase, applicable=True):
    if not applicable:
        return "n/a"
    s = stats(values(runs, phase))
    ok = sum(1 for r in runs if "error" not in r)
    if s is None:
        return "missed" if ok else "error"
    txt = f"{s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f})"
    if s["n"] < ok:
        txt += f" {ok - s['n']}×missed"
    return txt


def applicable(variant, n, phase):
    if variant == "floor":
        return phase in ("command", "writable", "promote")
    if phase == "standbys":
        return n > 1
    return True


def summary(data):
    """Medians per case, variant, N and phase (also stored in results.json)."""
    out = {}
    for (fault, sync, n, v), runs in groups(data).items():
        key = f"{fault}{'-sync' if sync else ''}/N={n}/{v}"
        phases = SW_PHASES if fault == "switchover" else PHASES + ["promote", "promote_self", "lost", "after_detect"]
        out[key] = {p: stats(values(runs, p)) for p in phases}
        out[key]["runs"] = len(runs)
        out[key]["errors"] = [r["error"] for r in runs if "error" in r]
    return out


def med(g, key, phase):
    s = stats(values(g.get(key, []), phase))
    return None if s is None else s["median"]


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}"


def pgha_steps(runs):
    """Median per-step seconds from pgha-failover's own progress lines."""
    steps = {"observe": [], "promote": [], "repoint": [], "returned": [], "standbys": []}
    for r in runs:
        lines = r.get("pgha_lines") or []
        main = [x for x in lines if x["cmd"] == "pgha-failover"]
        if not main:
            continue
        pid = main[0]["pid"]
        mine = [x for x in main if x["pid"] == pid]
        at = {}
        for x in mine:
            t = x["text"]
            if t.startswith("plan:"):
                at.setdefault("plan", x["at"])
            elif t.startswith("promoting node"):
                at.setdefault("promoting", x["at"])
            elif "promote: accepts writes" in t or "promoted: accepts writes" in t:
                at.setdefault("promoted", x["at"])
            elif t.startswith("settling in the background"):
                at.setdefault("settling", x["at"])
        if "plan" in at:
            steps["observe"].append(at["plan"])
        if "promoting" in at and "promoted" in at:
            steps["promote"].append(at["promoted"] - at["promoting"])
        if "promoted" in at and "settling" in at:
            steps["repoint"].append(at["settling"] - at["promoted"])
        end = at.get("settling", mine[-1]["at"])
        steps["returned"].append(end)
        ph = r.get("phases", {})
        if ph.get("standbys") is not None and ph.get("command") is not None:
            steps["standbys"].append(ph["standbys"] - ph["command"])
    return {k: (statistics.median(v) if v else None) for k, v in steps.items()}


def fmt(v, unit="s"):
    return "—" if v is None else f"{v:.2f} {unit}".strip()


def markdown(data):
    g = groups(data)
    m = data["machine"]
    ns = sorted({r["standbys"] for r in data["runs"]})
    lines = [
        "# pgha failover benchmark",
        "",
        f"Run {data['started']}, {data['k']} failover(s) per case, each on a fresh lab; "
        f"{len(data['runs'])} failovers in {data.get('duration_s', 0) / 60:.0f} min.",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, Linux {m['kernel']}, {m['os']}; "
        f"{m['postgresql']}; {m['pgpool']}; pgha {m['pgha_commit']} (src {m['pgha_tree']}). "
        f"Load average at start {' '.join(m['loadavg_start'])}, at end {' '.join(m.get('loadavg_end', ['?']))}.",
        "",
        "Seconds from the primary's death to each phase: median (min–max). "
        "pgpool: `health_check_period = 1`, `health_check_timeout = 2`, `failover_on_backend_error = on`; "
        "a writer inserts through pgpool every ~5 ms throughout.",
        "",
        "- **detect**: pgpool logs the failure; **command**: pgpool starts failover_command "
        "(floor: `pg_ctl promote -w` starts); **writable**: the new primary accepts a write; "
        "**standbys**: every other standby streams on the new timeline; **attached**: pgpool shows "
        "every live node up and the new primary as primary; **first write**: first insert "
        "acknowledged through pgpool; **lost**: acknowledged inserts missing on the new primary (sum over runs).",
        "",
    ]
    for fault, sync in CASES:
        rows = [(n, v) for n in ns for v in VARIANT_ORDER if (fault, sync, n, v) in g]
        if not rows:
            continue
        lines += [f"## {CASE_TITLES[(fault, sync)]}", "",
                  "| variant | N | " + " | ".join(PHASE_TITLES[p] for p in PHASES) + " | cmd→writable | own promote | lost |",
                  "|---|---|" + "---|" * (len(PHASES) + 3)]
        for n, v in rows:
            runs = g[(fault, sync, n, v)]
            cells = [cell(runs, p, applicable(v, n, p)) for p in PHASES]
            lost = values(runs, "lost")
            acked = sum(r.get("acked", 0) for r in runs if "error" not in r)
            lost_txt = "n/a" if v == "floor" else (f"{sum(lost)} of {acked}" if lost else "—")
            prom = cell(runs, "promote")
            own = cell(runs, "promote_self", v in ("floor", "pgha", "pgha+follow"))
            lines.append(f"| {v} | {n} | " + " | ".join(cells) + f" | {prom} | {own} | {lost_txt} |")
        lines.append("")
    lines += ["**cmd→writable**: from the command's start to the new primary accepting writes "
              "(floor: from `pg_ctl promote -w` starting). **own promote**: pgha-failover's promote step "
              "as its progress line reports it, and the floor's `pg_ctl promote -w` wall time "
              "(which waits in 100 ms steps).", ""]

    # Ratios.
    lines += ["## Ratios (medians, pgha / other)", "",
              "| case | N | phase | pgha/classic | pgha/samples | pgha/floor |", "|---|---|---|---|---|---|"]
    for fault, sync in CASES:
        if fault == "watchdog":
            continue  # no baselines there; its own section below
        for n in ns:
            if (fault, sync, n, "pgha") not in g:
                continue
            case = f"{fault}{' sync' if sync else ''}"
            for p in ["writable", "standbys", "attached", "first_write", "promote", "promote_self"]:
                if p == "standbys" and n == 1:
                    continue
                a = med(g, (fault, sync, n, "pgha"), p)
                c = med(g, (fault, sync, n, "classic"), p)
                s = med(g, (fault, sync, n, "samples"), p)
                f = med(g, ("kill", False, n, "floor"), p) if p in ("promote", "promote_self") else None
                lines.append(f"| {case} | {n} | {PHASE_TITLES[p]} | {ratio(a, c)} | {ratio(a, s)} | {ratio(a, f)} |")
    lines.append("")

    lines += peers_section(data, g, ns)
    lines += switchover_section(g, ns)
    lines += watchdog_section(g, ns)

    # Targets.
    lines += ["## Targets (issue 6)", "", "| target | measured (pgha) | verdict |", "|---|---|---|"]
    for row in targets(g):
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")

    # Where pgha's time goes.
    lines += ["## Where pgha-failover's time goes (medians from its progress lines)", "",
              "| case | N | observe | promote | repoint | returns to pgpool | pgpool blocked | standbys follow |",
              "|---|---|---|---|---|---|---|---|"]
    for fault, sync in CASES:
        for n in ns:
            runs = [r for r in g.get((fault, sync, n, "pgha"), []) if "error" not in r]
            if not runs:
                continue
            st = pgha_steps(runs)
            blocked = [r["phases"]["failover_done"] - r["phases"]["command"] for r in runs
                       if r["phases"].get("failover_done") is not None and r["phases"].get("command") is not None]
            lines.append(f"| {fault}{' sync' if sync else ''} | {n} | {fmt(st['observe'])} | {fmt(st['promote'])} | "
                         f"{fmt(st['repoint'])} | {fmt(st['returned'])} | "
                         f"{fmt(statistics.median(blocked) if blocked else None)} | {fmt(st['standbys'])} |")
    lines += ["", "Seconds from the command's start. observe: until its plan line (connecting to every "
              "node, the split-brain checks); promote: its promote step; repoint: from promoted to "
              "returning (standbys repointed); pgpool blocked: until pgpool logs \"failover done\" "
              "(clients wait meanwhile); standbys follow: until the last standby streams on the new "
              "timeline (measured by the bench).", ""]
    if data.get("skipped"):
        lines += ["## Skipped", ""] + [f"- {k}: {v}" for k, v in data["skipped"].items()] + [""]
    errs = [r for r in data["runs"] if "error" in r]
    if errs:
        lines += ["## Runs that failed", ""] + [f"- {r['name']} {r['variant']} N={r['standbys']} {r['fault']}"
                                                 f"{' sync' if r['sync'] else ''}: {r['error'][:300]}" for r in errs] + [""]
    return "\n".join(lines)


def peers_section(data, g, ns):
    """pgha against repmgr, Patroni and pg_auto_failover; the drills."""
    present = [p for p in PEERS if any(k[3] == p for k in g)]
    if not present:
        return []
    lines = ["## pgha against the peers (medians, pgha / peer: below 1 means pgha is faster)", "",
             "| case | N | phase | pgha | " + " | ".join(present) + " | " + " | ".join(f"pgha/{p}" for p in present) + " |",
             "|---|---|---|---|" + "---|" * (2 * len(present))]
    for fault, sync in CASES:
        for n in ns:
            if not any((fault, sync, n, p) in g for p in present + ["pgha"]):
                continue
            case = f"{fault}{' sync' if sync else ''}"
            for ph in ["detect", "writable", "standbys", "first_write"]:
                a = med(g, (fault, sync, n, "pgha"), ph)
                vals = [med(g, (fault, sync, n, p), ph) for p in present]
                lines.append(f"| {case} | {n} | {PHASE_TITLES[ph]} | {fmt(a)} | " + " | ".join(fmt(v) for v in vals)
                             + " | " + " | ".join(ratio(a, v) for v in vals) + " |")
    lines.append("")
    rows = []
    for fault, sync in DRILLS:
        for v in ["pgha"] + present:
            for r in g.get((fault, sync, 2, v), []):
                rows.append((fault, v, r))
    if rows:
        lines += ["## Drills (N=2)", "",
                  "| drill | variant | promoted | first write | last write acknowledged | lost | notes |",
                  "|---|---|---|---|---|---|---|"]
        for fault, v, r in rows:
            ph = r.get("phases", {})
            prom = "error" if "error" in r else (f"pg{r['new_primary']} at {ph.get('writable'):.2f} s"
                                                 if r.get("new_primary") is not None else "no")
            notes = "; ".join(r.get("notes", []) + ([r["error"][:120]] if "error" in r else []))
            lines.append(f"| {fault} | {v} | {prom} | {fmt(ph.get('first_write'))} | {fmt(r.get('last_ack'))} | "
                         f"{r.get('lost', '—')} of {r.get('acked', '—')} | {notes} |")
        lines += ["", "kill-lagging: pg1's walsender on the primary is stopped 0.5 s before the kill, so pg1 "
                  "misses acknowledged commits (the lab's `ANY 1` quorum; Patroni uses its own "
                  "`synchronous_mode`, pg_auto_failover its default quorum); refuse: the first pg_hba line on "
                  "the primary rejects the tool's user, the run watches 40 s for a promotion. "
                  "last write acknowledged: seconds from the fault.", ""]
    return lines


def switchover_section(g, ns):
    """pgha-switchover and the peers' own switchover, there and back; the
    ratios pgha / peer."""
    keys = [(n, v) for n in ns for v in VARIANT_ORDER if ("switchover", False, n, v) in g]
    if not keys:
        return []
    head = " | ".join(f"{t} {c}" for _, t in SW_LEGS for _, c in SW_COLS)
    lines = ["## Switchover there and back (pgha-switchover; the peers' own command)", "",
             "A writer through pgpool; the switchover there (to pg1), then back (to pg0). Seconds from the request, "
             "median (min–max): **write outage** the longest gap between two acknowledged writes; **lost** "
             "acknowledged writes missing at the end (sum over runs); **all streaming** every other node streams "
             "on the new timeline; **all attached** pgpool shows every node up and the new primary as primary.",
             "", f"| variant | N | {head} | command there | command back | writes acknowledged |",
             "|---|---|" + "---|" * (2 * len(SW_COLS) + 3)]
    for n, v in keys:
        runs = g[("switchover", False, n, v)]
        cells = []
        for leg, _ in SW_LEGS:
            for c, _ in SW_COLS:
                if c == "lost":
                    lost = values(runs, f"{leg}.lost")
                    cells.append(str(sum(lost)) if lost else "—")
                else:
                    cell_txt = cell(runs, f"{leg}.{c}")
                    cells.append("never" if cell_txt == "missed" else cell_txt)
        cmds = [cell(runs, f"{leg}.command_s") for leg, _ in SW_LEGS]
        acked = sum(r.get("acked", 0) for r in runs if "error" not in r)
        lines.append(f"| {v} | {n} | " + " | ".join(cells) + f" | {cmds[0]} | {cmds[1]} | {acked} |")
    lines.append("")
    present = [p for p in PEERS if any(("switchover", False, n, p) in g for n in ns)]
    if present:
        lines += ["Ratios pgha / peer (medians; below 1 means pgha is faster):", "",
                  "| N | leg | phase | pgha | " + " | ".join(present) + " | "
                  + " | ".join(f"pgha/{p}" for p in present) + " |",
                  "|---|---|---|---|" + "---|" * (2 * len(present))]
        for n in ns:
            if not any(("switchover", False, n, v) in g for v in ["pgha"] + present):
                continue
            for leg, title in SW_LEGS:
                for c, ct in SW_COLS:
                    if c == "lost":
                        continue
                    a = med(g, ("switchover", False, n, "pgha"), f"{leg}.{c}")
                    vals = [med(g, ("switchover", False, n, p), f"{leg}.{c}") for p in present]
                    lines.append(f"| {n} | {title} | {ct} | {fmt(a)} | " + " | ".join(fmt(x) for x in vals)
                                 + " | " + " | ".join(ratio(a, x) for x in vals) + " |")
        lines += ["", "The peers run with pgpool's `auto_failback = on` (interval 1 s): with no "
                  "failover_command nothing else re-attaches the old primary pgpool detached when it "
                  "stopped. Their commands: " + "; ".join(
                      f"{p} `{next((r.get('switchover_command') for n in ns for r in g.get(('switchover', False, n, p), []) if r.get('switchover_command')), '?')}`"
                      for p in present) + ".", ""]
    return lines


def diff(a, b):
    return "—" if a is None or b is None else f"{a - b:+.2f} s"


def watchdog_lines(g, ns):
    """The 'watchdog − single pgpool' lines, first write, per N and variant."""
    out = []
    for n in ns:
        for v in VARIANT_ORDER:
            w = med(g, ("watchdog", False, n, v), "first_write")
            k = med(g, ("kill", False, n, v), "first_write")
            if w is None:
                continue
            verdict_txt = "" if k is None else f" (target ≤ +{TARGETS['watchdog_extra']:.1f} s: " + \
                verdict(w - k, TARGETS["watchdog_extra"]) + ")"
            out.append(f"watchdog − single pgpool, first write ({v}, N={n}): {fmt(w)} − {fmt(k)} = "
                       f"{diff(w, k)}{verdict_txt}")
    return out


def watchdog_section(g, ns):
    """The watchdog case beside the kill case of the same run and N."""
    keys = [(n, v) for n in ns for v in VARIANT_ORDER if ("watchdog", False, n, v) in g]
    if not keys:
        return []
    lines = ["## Three pgpools under the watchdog against one pgpool (the same run)", "",
             "The killed primary, once with one pgpool (case kill) and once with three (app, app1, app2: "
             "pgpool-II's watchdog, quorum 2 of 3, `failover_require_consensus = on`). The writer writes "
             "through a member that is not the leader: its failover request goes to the leader, which waits "
             "for a second vote (another member's health check, `health_check_period = 1`) before running "
             "failover_command. Medians (min–max), seconds from the kill.", "",
             "| N | variant | phase | one pgpool (kill) | three pgpools (watchdog) | watchdog − kill |",
             "|---|---|---|---|---|---|"]
    for n, v in keys:
        wr = g[("watchdog", False, n, v)]
        kr = g.get(("kill", False, n, v), [])
        for p in PHASES + [p for p, _ in WD_PHASES] + ["lost"]:
            if not applicable(v, n, p):
                continue
            if p == "lost":
                lw, lk = values(wr, "lost"), values(kr, "lost")
                aw = sum(r.get("acked", 0) for r in wr if "error" not in r)
                ak = sum(r.get("acked", 0) for r in kr if "error" not in r)
                lines.append(f"| {n} | {v} | lost | {f'{sum(lk)} of {ak}' if lk else '—'} | "
                             f"{f'{sum(lw)} of {aw}' if lw else '—'} | |")
                continue
            title = PHASE_TITLES.get(p) or dict(WD_PHASES)[p]
            kc = cell(kr, p) if kr and p != "first_write_leader" else "—"
            lines.append(f"| {n} | {v} | {title} | {kc} | {cell(wr, p)} | "
                         f"{diff(med(g, ('watchdog', False, n, v), p), med(g, ('kill', False, n, v), p))} |")
    lines += [""] + [f"- {x}" for x in watchdog_lines(g, ns)] + [""]
    lines += ["### Where the watchdog's time goes", "",
              "| N | variant | step (pgpool logs) | median (min–max) |", "|---|---|---|---|"]
    for n, v in keys:
        runs = g[("watchdog", False, n, v)]
        for key, title in WD_STEPS:
            vals = values(runs, "wd:" + key)
            if vals:
                st, ok = stats(vals), sum(1 for r in runs if "error" not in r)
                txt = f"{st['median']:.2f} ({st['min']:.2f}–{st['max']:.2f})" + \
                    (f" in {st['n']} of {ok} runs" if st["n"] < ok else "")
                lines.append(f"| {n} | {v} | {title} | {txt} |")
        votes = {}
        for r in runs:
            wd = r.get("watchdog") or {}
            dv, roles = wd.get("deciding_vote"), wd.get("roles") or {}
            if dv:
                # The hosts' roles change from run to run (any may lead).
                dv = ("the leader's own health check" if dv.endswith("(own health check)") else
                      "the writer's member" if dv == roles.get("member") else
                      "the third member" if dv == roles.get("other") else dv)
                votes[dv] = votes.get(dv, 0) + 1
        if votes:
            lines.append(f"| {n} | {v} | the deciding vote came from | "
                         + ", ".join(f"{k}: {c}×" for k, c in sorted(votes.items())) + " |")
    lines += ["", "first write through the leader: a second writer on the leader, which starts writing "
              "only when the leader logs `execute command:` (writing earlier, it would hit the dead primary "
              "and cast the leader's own vote at once: the fast path). writes settled: the writer's first "
              "acknowledged write after its last error (a member that restarts its children when it syncs "
              "from the leader breaks sessions once more).", ""]
    return lines


def short(data):
    """The condensed table README.md shows: medians (min–max) of the main phases."""
    g = groups(data)
    m = data["machine"]
    ns = sorted({r["standbys"] for r in data["runs"]})
    cols = ["detect", "writable", "standbys", "attached", "first_write"]
    lines = [f"Measured {data['started'][:10]} on {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, "
             f"Linux {m['kernel']} ({m['os']}), {m['postgresql']}, {m['pgpool']}, pgha {m['pgha_commit']}"
             f"{' + uncommitted changes' if m.get('pgha_tree') == 'modified' else ''} "
             f"(release build); K={data['k']} fresh labs per row, {len(data['runs'])} failovers in "
             f"{data.get('duration_s', 0) / 60:.0f} min; load average {' '.join(m['loadavg_start'])} at the start "
             "(other builds and tests shared the machine). Seconds from the primary's death, median (min–max).", ""]
    lines += ["| case | variant | N | " + " | ".join(PHASE_TITLES[c] for c in cols) + " | lost |",
              "|---|---|---|" + "---|" * (len(cols) + 1)]
    for fault, sync in CASES:
        if fault == "watchdog":
            continue  # beside the kill case, below
        for n in ns:
            for f in [fault] + (["watchdog"] if (fault, sync) == ("kill", False) else []):
                for v in VARIANT_ORDER:
                    runs = g.get((f, sync, n, v))
                    if not runs:
                        continue
                    lost = values(runs, "lost")
                    acked = sum(r.get("acked", 0) for r in runs if "error" not in r)
                    lost_txt = "n/a" if v == "floor" else (f"{sum(lost)}/{acked}" if lost else "—")
                    case = f"{f}{' sync' if sync else ''}"
                    lines.append(f"| {case} | {v} | {n} | "
                                 + " | ".join(cell(runs, c, applicable(v, n, c)) for c in cols) + f" | {lost_txt} |")
    wl = watchdog_lines(g, ns)
    if wl:
        lines += [""] + wl
    lines += ["", "| target | measured (pgha) | verdict |", "|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in targets(g)]
    return "\n".join(lines) + "\n"


def targets(g):
    rows = []
    fw = med(g, ("kill", False, 2, "pgha"), "first_write")
    rows.append(["first write through pgpool ≤ 0.8 s (killed, N=2)", fmt(fw), verdict(fw, TARGETS["first_write"])])
    sb2 = med(g, ("kill", False, 2, "pgha"), "standbys")
    rows.append(["all standbys on the new timeline ≤ 1.5 s (N=2)", fmt(sb2), verdict(sb2, TARGETS["standbys"])])
    sb4 = med(g, ("kill", False, 4, "pgha"), "standbys")
    if sb4 is not None and sb2 is not None:
        rows.append(["… and flat up to N=4 (N=4 / N=2 ≤ 1.2)", f"{fmt(sb4)} ({sb4 / sb2:.2f}×)",
                     verdict(sb4 / sb2, 1.2)])
    p = med(g, ("kill", False, 2, "pgha"), "promote_self")
    f = med(g, ("kill", False, 2, "floor"), "promote_self")
    if p is not None and f is not None:
        rows.append(["promote step ≤ 1.25 × bare `pg_ctl promote -w` (N=2)",
                     f"{fmt(p)} vs {fmt(f)} ({p / f:.2f}×)", verdict(p / f, TARGETS["promote_ratio"])])
    bh = med(g, ("blackhole", False, 2, "pgha"), "after_detect")
    det = med(g, ("blackhole", False, 2, "pgha"), "detect")
    if bh is not None:
        rows.append(["blackholed: first write ≤ pgpool detection + 1 s (N=2)",
                     f"detection {fmt(det)}, first write {fmt(bh)} later", verdict(bh, TARGETS["blackhole_extra"])])
    w = med(g, ("watchdog", False, 2, "pgha"), "first_write")
    k = med(g, ("kill", False, 2, "pgha"), "first_write")
    if w is not None and k is not None:
        rows.append(["3 pgpools (watchdog): first write through the surviving pgpool ≤ one pgpool's + 0.3 s "
                     "(killed, N=2)", f"{fmt(w)} vs {fmt(k)} ({diff(w, k)})",
                     verdict(w - k, TARGETS["watchdog_extra"])])
    runs = g.get(("kill", True, 2, "pgha"), [])
    lost = values(runs, "lost")
    if lost:
        rows.append(["no acknowledged write lost, synchronous replication (N=2)",
                     f"{sum(lost)} lost in {len(lost)} runs", "met" if sum(lost) == 0 else "**missed**"])
    return rows


def verdict(v, limit):
    if v is None:
        return "not measured"
    return "met" if v <= limit else "**missed**"


# --- SVG ---------------------------------------------------------------------------

COLORS = {"detect": "#b0b0b0", "command": "#d9d9d9", "writable": "#f28e2b", "standbys": "#4e79a7"}


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg(data):
    g = groups(data)
    ns = sorted({r["standbys"] for r in data["runs"]})
    rows = []  # (label, medians dict) or (title, None)
    for fault, sync in CASES:
        for n in ns:
            present = [v for v in VARIANT_ORDER if (fault, sync, n, v) in g]
            if not present:
                continue
            rows.append((f"{fault}{' sync' if sync else ''}, N={n}", None))
            for v in present:
                runs = g[(fault, sync, n, v)]
                rows.append((v, {p: med(g, (fault, sync, n, v), p) for p in PHASES}))
    xmax = max([x for _, m in rows if m for x in m.values() if x is not None] + [1.0])
    xmax = float(int(xmax) + 1)
    left, width, rh, top = 150, 700, 18, 60
    height = top + rh * len(rows) + 50
    scale = width / xmax
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="18" font-size="14" font-weight="bold">pgha failover benchmark: median seconds '
           f'from the primary\'s death ({esc(data["started"])}, K={data["k"]})</text>']
    lx = 10
    for key, label in (("detect", "until pgpool detects"), ("command", "until the command starts"),
                       ("writable", "until the new primary is writable"), ("standbys", "until all standbys follow")):
        out.append(f'<rect x="{lx}" y="30" width="12" height="10" fill="{COLORS[key]}"/>'
                   f'<text x="{lx + 16}" y="39">{label}</text>')
        lx += 24 + 6 * len(label)
    out.append(f'<path d="M{lx} 35 l5 -5 l5 5 l-5 5 z" fill="black"/><text x="{lx + 14}" y="39">first write</text>')
    lx += 80
    out.append(f'<rect x="{lx}" y="29" width="2" height="12" fill="#59a14f"/><text x="{lx + 6}" y="39">all attached</text>')
    # grid
    step = 1 if xmax <= 12 else (2 if xmax <= 25 else 5)
    t = 0
    while t <= xmax:
        x = left + t * scale
        out.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{top + rh * len(rows)}" stroke="#eee"/>'
                   f'<text x="{x:.1f}" y="{top + rh * len(rows) + 14}" text-anchor="middle">{t}s</text>')
        t += step
    y = top
    for label, m in rows:
        if m is None:
            out.append(f'<text x="10" y="{y + 13}" font-weight="bold">{esc(label)}</text>')
            y += rh
            continue
        out.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{esc(label)}</text>')
        prev = 0.0
        for p in ("detect", "command", "writable", "standbys"):
            v = m.get(p)
            if v is None:
                continue
            if v > prev:
                out.append(f'<rect x="{left + prev * scale:.1f}" y="{y + 3}" width="{(v - prev) * scale:.1f}" '
                           f'height="{rh - 6}" fill="{COLORS[p]}"><title>{p} {v:.2f}s</title></rect>')
                prev = v
        if m.get("attached") is not None:
            x = left + m["attached"] * scale
            out.append(f'<rect x="{x - 1:.1f}" y="{y + 1}" width="2" height="{rh - 2}" fill="#59a14f">'
                       f'<title>attached {m["attached"]:.2f}s</title></rect>')
        if m.get("first_write") is not None:
            x = left + m["first_write"] * scale
            out.append(f'<path d="M{x - 5:.1f} {y + 9} l5 -5 l5 5 l-5 5 z" fill="black">'
                       f'<title>first write {m["first_write"]:.2f}s</title></path>')
        last = max([v for v in m.values() if v is not None] + [0])
        out.append(f'<text x="{left + last * scale + 8:.1f}" y="{y + 13}" fill="#555">'
                   f'{last:.2f}s</text>')
        y += rh
    out.append("</svg>")
    return "\n".join(out)


def write_all(data, out):
    out = Path(out)
    data["summary"] = summary(data)
    (out / "results.md").write_text(markdown(data))
    (out / "summary.md").write_text(short(data))
    (out / "phases.svg").write_text(svg(data))
