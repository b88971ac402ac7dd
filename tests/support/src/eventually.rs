//! Waiting for a condition instead of sleeping: [`eventually`] retries it
//! every 20 ms until it holds or a deadline passes; [`watch_until`] re-checks
//! it on each change of a `tokio::sync::watch` signal (a store's generation,
//! a snapshot channel), where one exists. Both fail with the same message:
//! what was awaited, for how long, how many attempts, and the last error.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
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
            return Err(not_true(what, start, attempts, &last_error));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Runs `check` on the current value of `changes`, then again after each
/// change, until it returns `Ok`, and returns that value: no polling, so the
/// time a test measures with it is the time the change took. After `timeout`
/// it fails like [`eventually`]; a closed channel fails at once.
pub async fn watch_until<T, R>(
    timeout: Duration,
    what: &str,
    changes: &mut watch::Receiver<T>,
    mut check: impl FnMut(&T) -> anyhow::Result<R>,
) -> anyhow::Result<R> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last_error = match check(&changes.borrow_and_update()) {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_closed)) => {
                let closed = last_error.context("the watched channel closed");
                return Err(not_true(what, start, attempts, &closed));
            }
            Err(_elapsed) => return Err(not_true(what, start, attempts, &last_error)),
        }
    }
}

/// The failure of a wait. CI excerpts are searched for this wording: keep it.
fn not_true(
    what: &str,
    start: Instant,
    attempts: u32,
    last_error: &anyhow::Error,
) -> anyhow::Error {
    anyhow::anyhow!(
        "{what}: not true after {:?} ({attempts} attempts); last error: {last_error:#}",
        start.elapsed()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_condition_that_never_holds_fails_saying_what_how_long_how_often_and_why() {
        let error =
            eventually::<(), _, _>(Duration::from_millis(100), "the answer is 42", || async {
                anyhow::bail!("the answer is 41")
            })
            .await
            .expect_err("never true");
        let message = format!("{error:#}");
        // Attempts at 0, 20, ... 100 ms: the last one at the deadline itself.
        assert!(
            message.starts_with("the answer is 42: not true after 100ms (6 attempts)"),
            "{message}"
        );
        assert!(
            message.ends_with("last error: the answer is 41"),
            "{message}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_attempt_is_cut_off_at_the_deadline() {
        let started = Instant::now();
        let error = eventually(Duration::from_secs(1), "a reply", || {
            std::future::pending::<anyhow::Result<()>>()
        })
        .await
        .expect_err("never answers");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert!(
            format!("{error:#}").contains("the attempt was still running at the deadline"),
            "{error:#}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_value_of_the_first_attempt_that_holds_is_returned() {
        let mut attempts = 0;
        let value = eventually(Duration::from_secs(1), "three attempts", || {
            attempts += 1;
            let attempt = attempts;
            async move {
                anyhow::ensure!(attempt == 3, "attempt {attempt}");
                Ok(attempt * 10)
            }
        })
        .await
        .expect("holds at the third attempt");
        assert_eq!(value, 30);
    }

    #[tokio::test(start_paused = true)]
    async fn a_watched_condition_is_checked_on_each_change_and_not_polled() {
        let (sender, mut receiver) = watch::channel(0u32);
        let writer = tokio::spawn(async move {
            for value in 1..=3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                sender.send_replace(value);
            }
            // Keeps the channel open past the deadline of the second wait.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let seen = watch_until(
            Duration::from_secs(1),
            "the value 3",
            &mut receiver,
            |value| {
                anyhow::ensure!(*value == 3, "the value is {value}");
                Ok(*value)
            },
        )
        .await
        .expect("3 arrives");
        assert_eq!(seen, 3);

        let error = watch_until(
            Duration::from_millis(50),
            "the value 4",
            &mut receiver,
            |value| {
                anyhow::ensure!(*value == 4, "the value is {value}");
                Ok(())
            },
        )
        .await
        .expect_err("4 never comes");
        // One check at the start, none more: nothing changed.
        assert!(
            format!("{error:#}").contains("(1 attempts); last error: the value is 3"),
            "{error:#}"
        );
        writer.abort();
    }
}
