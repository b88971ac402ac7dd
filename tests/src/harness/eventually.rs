//! Polling instead of sleeping: a condition is retried every 20 ms until it
//! holds or a deadline passes.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is re-checked: short against the 1 s convergence
/// budgets the tests assert, long enough not to load 2 cores.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Runs `attempt` every [`POLL_INTERVAL`] until it returns `Ok`, and returns
/// that value. After `timeout` it fails with `what` and the last error.
/// An attempt that hangs is cut off at the deadline.
pub async fn eventually<T, F, Fut>(
    timeout: Duration,
    what: &str,
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let mut last_error = anyhow::anyhow!("never attempted");
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => last_error = error,
            Err(_elapsed) => {
                last_error = anyhow::anyhow!("the attempt was still running at the deadline")
            }
        }
        if Instant::now() + POLL_INTERVAL > deadline {
            anyhow::bail!(
                "{what}: not true after {:?} ({attempts} attempts); last error: {last_error:#}",
                start.elapsed()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
