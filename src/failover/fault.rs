//! Fault hooks for the end-to-end tests, compiled into debug builds only
//! (the tests run those): in a release build no environment variable can
//! make pgha-failover kill or delay itself mid-failover.

/// `PGHA_FAULT=crash-after:STEP` kills the process with SIGKILL right after
/// STEP, as a power cut would.
#[cfg(debug_assertions)]
pub(super) fn point(step: &str) {
    if let Ok(f) = std::env::var("PGHA_FAULT")
        && f.strip_prefix("crash-after:") == Some(step)
    {
        tracing::warn!("PGHA_FAULT: killing myself after {step}");
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// `PGHA_FAULT=delay-STEP:MS` sleeps MS milliseconds at STEP, so a test can
/// look at a phase while it runs.
#[cfg(debug_assertions)]
pub(super) async fn delay(step: &str) {
    let Ok(f) = std::env::var("PGHA_FAULT") else {
        return;
    };
    let Some(ms) = f
        .strip_prefix("delay-")
        .and_then(|r| r.strip_prefix(step))
        .and_then(|r| r.strip_prefix(':'))
        .and_then(|ms| ms.parse::<u64>().ok())
    else {
        return;
    };
    tracing::warn!("PGHA_FAULT: sleeping {ms}ms at {step}");
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

#[cfg(not(debug_assertions))]
pub(super) fn point(_step: &str) {}

#[cfg(not(debug_assertions))]
pub(super) async fn delay(_step: &str) {}
