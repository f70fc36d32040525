//! pgpool's node operations as pgha uses them: node info, attach, detach
//! and waiting for pgpool's view, over the native PCP client, with the one
//! retry policy for all of them.

use std::future::Future;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::pcp::{NodeInfo, PcpClient, PcpError, PcpTarget};
use super::watchdog::WatchdogInfo;
use crate::cluster::{Node, Topology};
use crate::error::{Error, Result};
use crate::steps::budget;

/// How long a PCP request is retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Retry transient errors until then (`[pcp] busy_retry_for`, within
    /// the run's deadline).
    pub until: Instant,
    /// A refused connect is retried only this long into the request
    /// (pgpool restarting: one `[pcp] timeout`), not for as long as pgpool
    /// is down.
    pub connect_for: Duration,
}

impl Retry {
    /// The policy of `[pcp]` for a run ending at `deadline`.
    pub fn of(topo: &Topology, deadline: Instant) -> Retry {
        Retry {
            until: Instant::now() + budget(deadline, topo.config.pcp.busy_retry_for),
            connect_for: topo.config.pcp.timeout,
        }
    }
}

/// Whether a PCP error is worth another try, `elapsed` into the request:
/// pgpool refusing during a failover, or a connection its PCP process
/// dropped (pgpool restarts that process about a second after every
/// failover and failback) are; a refused connect only within
/// [`Retry::connect_for`].
pub fn transient(e: &PcpError, elapsed: Duration, connect_for: Duration) -> bool {
    match e {
        PcpError::FailoverInProgress { .. } | PcpError::Io { .. } => true,
        PcpError::Connect { .. } => elapsed < connect_for,
        _ => false,
    }
}

/// One PCP request, each try on a fresh connection, retried while
/// [`transient`] says so; the pause starts at 100 ms and doubles up to
/// 1 s. The last error is returned when the time is up.
pub async fn retry<T, F, Fut>(
    target: &PcpTarget,
    policy: Retry,
    what: &str,
    f: F,
) -> Result<T, PcpError>
where
    F: Fn(PcpTarget) -> Fut,
    Fut: Future<Output = Result<T, PcpError>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        match f(target.clone()).await {
            Ok(v) => return Ok(v),
            Err(e)
                if Instant::now() + pause < policy.until
                    && transient(&e, start.elapsed(), policy.connect_for) =>
            {
                debug!("{what}: {e}; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// [`retry`] with `[pcp]`'s target and policy; the error names the step.
pub async fn request<T, F, Fut>(topo: &Topology, deadline: Instant, what: &str, f: F) -> Result<T>
where
    F: Fn(PcpTarget) -> Fut,
    Fut: Future<Output = Result<T, PcpError>>,
{
    let target = topo.pcp_target()?;
    retry(&target, Retry::of(topo, deadline), what, f)
        .await
        .map_err(|e| Error::step(what, e))
}

/// pgpool's view of `node` (`pcp_node_info`): attached or not, and the
/// role pgpool gives it.
pub async fn node_info(topo: &Topology, node: &Node, deadline: Instant) -> Result<NodeInfo> {
    let id = node.id;
    let what = format!("pcp node info for {}", node.label());
    request(topo, deadline, &what, |t| async move {
        let mut c = PcpClient::connect(&t).await?;
        let info = c.node_info(id).await;
        c.close().await;
        info
    })
    .await
}

/// pgpool's view of every backend, on one PCP connection.
pub async fn every_node_info(topo: &Topology, deadline: Instant) -> Result<Vec<NodeInfo>> {
    request(
        topo,
        deadline,
        "ask pgpool about the backends",
        |t| async move {
            let mut c = PcpClient::connect(&t).await?;
            let mut v = Vec::new();
            for n in &topo.nodes {
                v.push(c.node_info(n.id).await?);
            }
            c.close().await;
            Ok(v)
        },
    )
    .await
}

/// Attach `node` in pgpool (`pcp_attach_node`) unless pgpool has it
/// attached already; returns whether it asked. Retried while pgpool says a
/// failover is in progress (it refuses PCP then) and while it restarts its
/// PCP process right after a failover or failback.
pub async fn attach(topo: &Topology, node: &Node, deadline: Instant) -> Result<bool> {
    if node_info(topo, node, deadline).await?.is_up() {
        return Ok(false);
    }
    let id = node.id;
    let what = format!("pcp attach for {}", node.label());
    request(topo, deadline, &what, |t| async move {
        let mut c = PcpClient::connect(&t).await?;
        let r = c.attach_node(id).await;
        c.close().await;
        r
    })
    .await?;
    info!("{}: attached in pgpool", node.label());
    Ok(true)
}

/// Detach `node` in pgpool (`pcp_detach_node`, not graceful) so that no
/// client is sent to a server about to be stopped; pgpool then runs its
/// `failover_command` for it. Returns false when it was detached already.
pub async fn detach(topo: &Topology, node: &Node, deadline: Instant) -> Result<bool> {
    if !node_info(topo, node, deadline).await?.is_up() {
        return Ok(false);
    }
    let id = node.id;
    let what = format!("pcp detach for {}", node.label());
    request(topo, deadline, &what, |t| async move {
        let mut c = PcpClient::connect(&t).await?;
        let r = c.detach_node(id, false).await;
        c.close().await;
        r
    })
    .await?;
    wait_status(topo, node, false, deadline).await?;
    info!("{}: detached in pgpool", node.label());
    Ok(true)
}

/// Ask pgpool to switch the primary over to `node` (`pcp_promote_node -s
/// -n ID`): it detaches the current primary and runs `failover_command`
/// with `%m` = `node`. Returns once pgpool accepted the request.
pub async fn promote_switchover(topo: &Topology, node: &Node, deadline: Instant) -> Result<()> {
    let id = node.id;
    let what = format!("pcp promote (switchover) to {}", node.label());
    request(topo, deadline, &what, |t| async move {
        let mut c = PcpClient::connect(&t).await?;
        let r = c.promote_node(id, true).await;
        c.close().await;
        r
    })
    .await
}

/// The watchdog cluster as the local pgpool sees it, or `None` when
/// pgpool.conf has `use_watchdog` off.
pub async fn watchdog(topo: &Topology, deadline: Instant) -> Result<Option<WatchdogInfo>> {
    if !topo.pgpool.is_on("use_watchdog") {
        return Ok(None);
    }
    request(topo, deadline, "ask pgpool's watchdog", |t| async move {
        let mut c = PcpClient::connect(&t).await?;
        let w = c.watchdog_info().await;
        c.close().await;
        w
    })
    .await
    .map(Some)
}

/// Why this host must not change the nodes: with pgpool's watchdog only
/// its leader with quorum may (pgpool runs `failover_command` there
/// alone), and a watchdog that cannot be asked proves nothing. `None`
/// without a watchdog, or on the leader with quorum.
pub async fn why_not_leader(topo: &Topology, deadline: Instant) -> Option<String> {
    match watchdog(topo, deadline).await {
        Ok(None) => None,
        Ok(Some(w)) => {
            debug!("{}", w.describe());
            w.why_not_leader()
                .map(|why| format!("{why} ({})", w.describe()))
        }
        Err(e) => Some(format!(
            "pgpool.conf has use_watchdog = on and the local pgpool cannot say whether it leads the watchdog ({e})"
        )),
    }
}

/// Wait until pgpool shows `node` attached (`up` true) or detached. A PCP
/// attach only queues a failback request: pgpool's main process applies
/// it a moment later, also while `follow_primary_command` still runs.
/// Bounded by `[pcp] busy_retry_for`.
pub async fn wait_status(
    topo: &Topology,
    node: &Node,
    up: bool,
    deadline: Instant,
) -> Result<Duration> {
    let start = Instant::now();
    let end = start + budget(deadline, topo.config.pcp.busy_retry_for);
    loop {
        let info = node_info(topo, node, deadline).await?;
        if info.is_up() == up {
            return Ok(start.elapsed());
        }
        if Instant::now() >= end {
            return Err(Error::Step(format!(
                "pgpool still shows {} {} after {:.1}s (wanted {}); see pgpool's log",
                node.label(),
                info.status_name(),
                start.elapsed().as_secs_f64(),
                if up { "attached" } else { "detached" }
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_pcp_errors_are_retried() {
        let (h, p) = ("127.0.0.20".to_string(), 9898);
        let busy = PcpError::FailoverInProgress {
            host: h.clone(),
            port: p,
            detail: String::new(),
        };
        let reset = PcpError::Io {
            host: h.clone(),
            port: p,
            step: "read the md5 salt".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        };
        let refused = PcpError::Connect {
            host: h.clone(),
            port: p,
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        let auth = PcpError::Auth {
            host: h,
            port: p,
            user: "pgpool".into(),
            message: "no".into(),
        };
        let within = Duration::from_secs(2);
        let long = within * 2;
        assert!(transient(&busy, long, within));
        assert!(transient(&reset, long, within));
        assert!(transient(&refused, Duration::ZERO, within));
        assert!(
            !transient(&refused, long, within),
            "pgpool down is not retried for long"
        );
        assert!(!transient(&auth, Duration::ZERO, within));
    }
}
