//! The planned-switchover arm of `pgha-failover` ([`Decision::Switchover`]):
//! pgpool detached a primary that still answers pgha (`pcp_promote_node
//! -s`, which `pgha-switchover` sends) and names the node to promote
//! (`%m`).
//!
//! 1. stop the old primary with `pg_ctl stop -m fast`: its walsenders send
//!    the shutdown checkpoint to every connected standby before they exit
//!    (the fence's proof that no address answers any more included);
//! 2. read its `pg_control` (`pg_controldata` over ssh): "shut down", and
//!    where the shutdown checkpoint is;
//! 3. prove the candidate replayed past that checkpoint: it holds every
//!    commit the old primary ever acknowledged;
//! 4. promote, repoint the others; the detached phase starts the old
//!    primary again as a standby of the new one (no rewind is needed after
//!    a clean shutdown) and attaches it.
//!
//! When 2 or 3 fail, nothing is promoted: the old primary is started again
//! as it was, and the run is refused.
//!
//! [`Decision::Switchover`]: crate::plan::Decision::Switchover

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{Ctx, answer_of, apply_sync, follow_phase, promote_quietly};
use crate::cluster::{Node, Observed};
use crate::error::{Error, Result};
use crate::exec::{Did, Exec};
use crate::plan::SyncAfter;
use crate::postgres::Lsn;
use crate::report::{Outcome, Summary};
use crate::steps;

/// The marker `pgha-switchover` leaves in the state directory while it
/// drives a switchover: pgha-failover then knows pgpool's detach of a live
/// primary was asked for, and which node was meant (`%m` must match).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Marker {
    pub from: u32,
    pub to: u32,
    /// When it was written (ms since the Unix epoch): older than
    /// `failover.deadline`, it is stale and ignored.
    pub at_ms: u64,
    /// The control socket of pgha-switchover's ssh master to the old
    /// primary, lent for the stop (see [`crate::remote::Remote::adopt`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_master: Option<std::path::PathBuf>,
}

const MARKER: &str = "switchover.json";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Write the marker (replacing any), mode 0600.
pub fn write_marker(
    dir: &std::path::Path,
    from: u32,
    to: u32,
    ssh_master: Option<std::path::PathBuf>,
) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    crate::state::ensure_dir(dir)?;
    let path = dir.join(MARKER);
    let m = Marker {
        from,
        to,
        at_ms: now_ms(),
        ssh_master,
    };
    let tmp = dir.join(format!(".{MARKER}.{}", std::process::id()));
    let err = |e: std::io::Error| Error::State {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(serde_json::to_string(&m).unwrap_or_default().as_bytes())
        .map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)
}

/// The marker, when there is a fresh one (younger than `max_age`).
pub fn read_marker(dir: &std::path::Path, max_age: Duration) -> Option<Marker> {
    let bytes = crate::files::read_regular(&dir.join(MARKER), 4096).ok()?;
    let m: Marker = serde_json::from_slice(&bytes).ok()?;
    let age = now_ms().saturating_sub(m.at_ms);
    (u128::from(age) <= max_age.as_millis()).then_some(m)
}

/// Remove the marker (done, or refused).
pub fn remove_marker(dir: &std::path::Path) {
    let _ = std::fs::remove_file(dir.join(MARKER));
}

/// What `pg_controldata` says about a stopped server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlData {
    /// "Database cluster state": `shut down` after a clean stop.
    pub state: String,
    /// "Latest checkpoint location": the start of the shutdown checkpoint
    /// record after a clean stop, the last record the server wrote.
    pub checkpoint: Lsn,
    /// "Latest checkpoint's TimeLineID".
    pub timeline: u32,
}

impl ControlData {
    /// A clean shutdown (`shut down`; `shut down in recovery` is a standby's).
    pub fn clean(&self) -> bool {
        self.state == "shut down"
    }
}

/// Parse `pg_controldata` output (run with `LC_ALL=C`: the labels are
/// translated otherwise).
pub fn parse_controldata(text: &str) -> std::result::Result<ControlData, String> {
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim_start().strip_prefix(':'))
            .map(str::trim)
            .ok_or_else(|| format!("pg_controldata printed no \"{key}\""))
    };
    let state = value("Database cluster state")?.to_string();
    let at = value("Latest checkpoint location")?;
    let checkpoint = at
        .parse::<Lsn>()
        .map_err(|e| format!("pg_controldata: Latest checkpoint location {at:?}: {e}"))?;
    let tl = value("Latest checkpoint's TimeLineID")?;
    let timeline = tl
        .parse()
        .map_err(|_| format!("pg_controldata: Latest checkpoint's TimeLineID {tl:?}"))?;
    Ok(ControlData {
        state,
        checkpoint,
        timeline,
    })
}

/// Whether a standby that replayed up to `replayed` (the end of the last
/// record it applied, `pg_last_wal_replay_lsn()`) holds the record that
/// starts at `checkpoint`: records do not overlap, so one that ends past
/// the start of the checkpoint record is that record or a later one.
pub fn holds_checkpoint(replayed: Option<Lsn>, checkpoint: Lsn) -> bool {
    replayed.is_some_and(|r| r > checkpoint)
}

/// The decision, with its nodes looked up.
pub(super) struct Switch<'a> {
    pub old: &'a Node,
    pub candidate: &'a Node,
    pub reason: String,
    pub sync: SyncAfter,
}

/// Carry out a planned switchover (see the module doc).
pub(super) async fn run(
    ctx: &Ctx<'_>,
    s: &Switch<'_>,
    observed: &[Observed],
    summary: &mut Summary,
) -> Result<()> {
    let (old, c) = (s.old, s.candidate);
    let cstate = answer_of(observed, c)?;
    info!(
        "switchover from {} to {}: {}",
        old.label(),
        c.label(),
        s.reason
    );
    // Once the old primary stops, the candidate's startup process would
    // try restore_command (an scp to the old primary's archive in the usual
    // layout) between streaming attempts, and act on the promote request
    // only after it: on 14+ it runs without one from before the stop
    // (reload); promotion gives it its own archive's command, an abort
    // gives it back the one it had.
    let version = cstate.server_version_num;
    let quiet = version >= 140000 && !cstate.restore_command.is_empty();
    let topo = ctx.x.topo;
    if quiet && let Err(e) = steps::pause_restore(topo, c, version, &cstate.restore_command).await {
        warn!("{e}");
    }
    let unquiet = || async {
        if quiet
            && let Err(e) = steps::set_restore_command(
                topo,
                c,
                version,
                crate::restore::original(&cstate.restore_command),
            )
            .await
        {
            warn!("{e}");
        }
    };
    let behind = match (
        answer_of(observed, old).ok().and_then(|o| o.current_lsn),
        cstate.receive_lsn,
    ) {
        (Some(current), Some(received)) => received.bytes_behind(current),
        _ => 0,
    };
    hold_wal(ctx, old, behind).await;
    if let Err(e) = stop_old(ctx, old, summary).await {
        unquiet().await;
        return Err(e);
    }
    if let Err(why) = prove_candidate(ctx, old, c, summary).await {
        unquiet().await;
        return Err(abort(ctx, old, c, &why, summary).await);
    }
    let timeline = promote_quietly(ctx, c, &cstate, &s.reason, summary).await?;
    super::fault::point("promote");
    summary.outcome = Outcome::SwitchedOver;
    let st = super::as_primary(cstate, timeline);
    let writes = apply_sync(ctx, c, &s.sync, summary).await;
    let commits_wait = super::sync_setting(&st, &s.sync, &writes);
    follow_phase(ctx, c, &st, observed, &[], Some(&commits_wait), summary).await?;
    writes
}

/// Keep on the old primary the WAL its walsenders must still send after
/// the shutdown checkpoint ([`steps::hold_wal_for_stop`]). Trouble here is
/// a warning: the proof that the candidate has every record still decides.
async fn hold_wal(ctx: &Ctx<'_>, old: &Node, behind: u64) {
    let x = &ctx.x;
    let t = Instant::now();
    let did = match steps::hold_wal_for_stop(x.topo, old, behind).await {
        Ok(steps::WalHold::Enough(mb)) => Did::skipped(format!(
            "wal_keep_size = {mb}MB keeps what the walsenders send after the shutdown checkpoint"
        )),
        Ok(steps::WalHold::Raised {
            from,
            to,
            file_restored,
        }) => Did::done(format!(
            "wal_keep_size raised from {from}MB to {to}MB in the running server, so the shutdown checkpoint keeps the WAL the walsenders still send (the candidate is {behind} bytes behind){}",
            if file_restored {
                "; postgresql.auto.conf is as it was: the next start has the old value"
            } else {
                "; postgresql.auto.conf could not be put back (see the warning)"
            }
        )),
        Err(e) => {
            warn!(
                "{}: {e}; going on: if a walsender loses WAL at the stop, the candidate lacks the shutdown checkpoint and the switchover is aborted",
                old.label()
            );
            return;
        }
    };
    x.record(
        "keep_wal",
        Some(old),
        &did,
        t.elapsed(),
        crate::state::Fields::new(),
    );
}

/// `pg_ctl stop -m fast`, proven like a fence (no address of the node
/// accepts connections any more). The fence escalates to `-m immediate`
/// when the fast stop hangs; then `pg_control` says so, and the switchover
/// is aborted.
async fn stop_old(ctx: &Ctx<'_>, old: &Node, summary: &mut Summary) -> Result<()> {
    summary.step = format!("stopping {} for the switchover", old.label());
    let x = &ctx.x;
    let stop = steps::fence(x.topo, x.remote, old, x.deadline, steps::FenceStop::Clean);
    x.step("stop", Some(old), stop, |how| {
        Did::done(format!("switchover: {how}"))
    })
    .await
    .map_err(|e| match e {
        Error::Refused(m) => Error::Refused(format!("switchover aborted, nothing promoted: {m}")),
        e => Error::Step(format!("switchover aborted, nothing promoted: {e}")),
    })?;
    summary.done.push(format!("stopped {}", old.label()));
    Ok(())
}

/// The old primary shut down cleanly, and the candidate replayed its
/// shutdown checkpoint. The error says which proof failed.
async fn prove_candidate(
    ctx: &Ctx<'_>,
    old: &Node,
    c: &Node,
    summary: &mut Summary,
) -> std::result::Result<(), String> {
    let x = &ctx.x;
    summary.step = format!("reading {}'s control file", old.label());
    let cd = x
        .step("controldata", Some(old), controldata(x, old), |cd| {
            Did::done(format!(
                "{}: latest checkpoint at {} on timeline {}",
                cd.state, cd.checkpoint, cd.timeline
            ))
        })
        .await
        .map_err(|e| e.to_string())?;
    if !cd.clean() {
        return Err(format!(
            "{} did not shut down cleanly (pg_control says \"{}\"): the candidate may lack its last WAL",
            old.label(),
            cd.state
        ));
    }
    super::fault::delay("verify").await;
    summary.step = format!("verifying that {} has every WAL record", c.label());
    let bound = steps::budget(x.deadline, x.topo.config.failover.liveness_timeout * 3);
    let wait = wait_replayed(x, c, cd.checkpoint, bound);
    x.step("verify", Some(c), wait, |lsn| {
        Did::done(format!(
            "replayed up to {lsn}, past {}'s shutdown checkpoint at {}: it holds every commit",
            old.label(),
            cd.checkpoint
        ))
    })
    .await
    .map_err(|e| e.to_string())?;
    summary
        .done
        .push(format!("verified {} holds all WAL", c.label()));
    Ok(())
}

/// `LC_ALL=C pg_controldata -D DATA` on the node, parsed.
async fn controldata(x: &Exec<'_>, node: &Node) -> Result<ControlData> {
    let bin = x.topo.config.postgres.bin_dir.join("pg_controldata");
    let data = node.data_dir()?.display().to_string();
    let argv = [
        "env",
        "LC_ALL=C",
        bin.to_str().unwrap_or("pg_controldata"),
        "-D",
        &data,
    ];
    let t = steps::budget(x.deadline, x.topo.config.ssh.connect_timeout * 2);
    let what = format!("pg_controldata on {}", node.label());
    let out = x
        .remote
        .run(&node.ssh_host, &argv, t)
        .await
        .map_err(|e| Error::step(&what, e))?;
    if !out.success() {
        return Err(Error::Step(format!(
            "{what} exited {}: {}",
            out.status,
            out.stderr_str().trim()
        )));
    }
    parse_controldata(&out.stdout_str()).map_err(|e| Error::Step(format!("{what}: {e}")))
}

/// Poll the candidate until it replayed past `checkpoint` (it applies the
/// shutdown checkpoint as soon as its walreceiver wrote it), within `bound`.
async fn wait_replayed(x: &Exec<'_>, c: &Node, checkpoint: Lsn, bound: Duration) -> Result<Lsn> {
    let end = Instant::now() + bound;
    loop {
        let rows = steps::query_node(
            x.topo,
            c,
            "ask how far it replayed",
            "select pg_last_wal_replay_lsn()::text, pg_last_wal_receive_lsn()::text, pg_is_in_recovery()",
            &[],
        )
        .await?;
        if rows.first().and_then(|r| r.get::<_, Option<bool>>(2)) == Some(false) {
            // Not by this run: an earlier promote request (a pgha-failover
            // killed after it asked) was handled meanwhile.
            return Err(Error::Step(format!(
                "{} is no longer a standby: it runs as a primary, promoted by an earlier request (a pgha-failover killed after it asked?), not by this run",
                c.label()
            )));
        }
        let get = |i: usize| {
            rows.first()
                .and_then(|r| r.get::<_, Option<String>>(i))
                .and_then(|s| s.parse::<Lsn>().ok())
        };
        let (replayed, received) = (get(0), get(1));
        if holds_checkpoint(replayed, checkpoint) {
            return Ok(replayed.unwrap_or(checkpoint));
        }
        if Instant::now() >= end {
            let show = |l: Option<Lsn>| l.map(|l| l.to_string()).unwrap_or_else(|| "?".into());
            return Err(Error::Step(format!(
                "{} replayed only up to {} (received {}) after {:.1}s, not past the shutdown checkpoint at {checkpoint}: it lacks WAL the old primary wrote",
                c.label(),
                show(replayed),
                show(received),
                bound.as_secs_f64()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Nothing was promoted: start the old primary again as it was, and
/// return the refusal.
async fn abort(ctx: &Ctx<'_>, old: &Node, c: &Node, why: &str, summary: &mut Summary) -> Error {
    let x = &ctx.x;
    if let Some(p) = another_primary(x, old).await {
        // Starting it again would make a second writable primary.
        warn!(
            "switchover aborted: {why}; {} stays stopped: {} runs as a primary",
            old.label(),
            p.label()
        );
        return Error::Refused(format!(
            "switchover aborted, nothing promoted by this run: {why}; {} stays stopped, since {} runs as a primary: make {} a standby of it with pgha-attach --rejoin {}, then check the others with pgha-check --status",
            old.label(),
            p.label(),
            old.label(),
            old.id
        ));
    }
    summary.step = format!("starting {} again", old.label());
    warn!("switchover aborted: {why}; starting {} again", old.label());
    let start = start_again(x, old);
    let restarted = x
        .step("restart", Some(old), start, |_| {
            Did::done("started again as the primary it was (switchover aborted)")
        })
        .await;
    let after = match restarted {
        Ok(()) => format!(
            "{} runs again as the primary, detached in pgpool: pgha-switchover attaches it back, or run pcp_attach_node -n {}",
            old.label(),
            old.id
        ),
        Err(e) => format!(
            "starting {} again failed too ({e}): start it by hand (pg_ctl start), then pcp_attach_node -n {}",
            old.label(),
            old.id
        ),
    };
    Error::Refused(format!(
        "switchover aborted, nothing promoted: {why}; {after}; {} is still a standby",
        c.label()
    ))
}

/// Another node that answers as a primary (each node asked once, at once,
/// within `[postgres]` connect and query timeouts); `None` when none does.
async fn another_primary<'a>(x: &Exec<'a>, old: &Node) -> Option<&'a Node> {
    let others = x.topo.nodes.iter().filter(|n| n.id != old.id);
    let asks = others.map(|n| async move {
        let r = steps::query_node(
            x.topo,
            n,
            "ask whether it is a primary",
            "select pg_is_in_recovery()",
            &[],
        )
        .await;
        let primary = matches!(&r, Ok(rows) if rows.first().and_then(|r| r.get::<_, Option<bool>>(0)) == Some(false));
        primary.then_some(n)
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .next()
}

/// `pg_ctl start -w` with its output to the node's pgha log file.
async fn start_again(x: &Exec<'_>, node: &Node) -> Result<()> {
    let log = steps::pg_ctl_log(x.topo, node)?;
    let t = steps::budget(x.deadline, x.topo.config.failover.promote_timeout);
    let out = steps::pg_ctl(x.topo, x.remote, node, &["start", "-w", "-l", &log], t).await?;
    if out.success() {
        Ok(())
    } else {
        Err(Error::Step(format!(
            "pg_ctl start on {} exited {}: {}",
            node.label(),
            out.status,
            out.stderr_str().trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STOPPED: &str = "\
pg_control version number:            1300
Catalog version number:               202209061
Database system identifier:           7321829104853424182
Database cluster state:               shut down
pg_control last modified:             Tue 01 Dec 2026 12:00:00 PM UTC
Latest checkpoint location:           0/3000060
Latest checkpoint's REDO location:    0/3000060
Latest checkpoint's REDO WAL file:    000000010000000000000003
Latest checkpoint's TimeLineID:       1
Latest checkpoint's PrevTimeLineID:   1
";

    #[test]
    fn the_marker_is_read_back_while_fresh() {
        let dir = std::env::temp_dir().join(format!("pgha-marker-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(read_marker(&dir, Duration::from_secs(60)), None);
        write_marker(&dir, 0, 2, Some("/run/x/master".into())).unwrap();
        let m = read_marker(&dir, Duration::from_secs(60)).unwrap();
        assert_eq!((m.from, m.to), (0, 2));
        assert_eq!(m.ssh_master, Some("/run/x/master".into()));
        std::fs::write(dir.join(MARKER), r#"{"from":0,"to":2,"at_ms":1}"#).unwrap();
        assert_eq!(read_marker(&dir, Duration::from_secs(60)), None, "stale");
        remove_marker(&dir);
        assert_eq!(read_marker(&dir, Duration::from_secs(60)), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn controldata_of_a_clean_stop() {
        let cd = parse_controldata(STOPPED).unwrap();
        assert_eq!(
            cd,
            ControlData {
                state: "shut down".into(),
                checkpoint: "0/3000060".parse().unwrap(),
                timeline: 1,
            }
        );
        assert!(cd.clean());
    }

    #[test]
    fn controldata_of_a_crash_or_a_standby_is_not_clean() {
        for state in [
            "in production",
            "shut down in recovery",
            "in archive recovery",
        ] {
            let text = STOPPED.replace(
                "Database cluster state:               shut down",
                &format!("Database cluster state:               {state}"),
            );
            assert!(!parse_controldata(&text).unwrap().clean(), "{state}");
        }
    }

    #[test]
    fn controldata_without_the_fields_is_an_error() {
        let e = parse_controldata("pg_controldata: error: could not open file").unwrap_err();
        assert!(e.contains("Database cluster state"), "{e}");
        let text = STOPPED.replace("0/3000060\nLatest checkpoint's REDO location", "zz\nx");
        assert!(parse_controldata(&text).is_err());
    }

    #[test]
    fn the_candidate_must_have_replayed_past_the_checkpoint_record() {
        let ck: Lsn = "0/3000060".parse().unwrap();
        assert!(holds_checkpoint(Some("0/30000D8".parse().unwrap()), ck));
        assert!(
            !holds_checkpoint(Some(ck), ck),
            "ends where the record starts"
        );
        assert!(!holds_checkpoint(Some("0/2FFFFF0".parse().unwrap()), ck));
        assert!(!holds_checkpoint(None, ck));
    }
}
