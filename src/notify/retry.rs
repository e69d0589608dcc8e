//! Bounded retries with exponential backoff under an overall deadline.
//!
//! A notification is sent after the fixes were committed, so a dead or slow
//! endpoint can cost time but never a fix. That time is bounded: each
//! attempt gets at most `timeout` (and never more than what is left of the
//! deadline), a retry waits `backoff`, doubled each time and capped at
//! [`MAX_BACKOFF`], and nothing starts once `deadline` would be passed. Errors
//! that will not go away by themselves (HTTP 4xx, SMTP 5xx, a bad
//! certificate) are not retried at all.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::DeliveryPolicy;

/// The longest wait between two attempts, however many retries came before.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Whether a failed attempt is worth repeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The error will not go away by itself: stop.
    Never,
    /// Try again after the backoff.
    Backoff,
    /// Try again, but not before this long (an HTTP `Retry-After`).
    After(Duration),
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    /// What went wrong, safe to print (no URL, no secret).
    pub message: String,
    /// Whether to try again.
    pub retry: Retry,
}

impl AttemptError {
    /// An error worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: Retry::Backoff,
        }
    }

    /// An error not worth retrying.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: Retry::Never,
        }
    }
}

/// Why delivery stopped trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// The last error was permanent.
    Permanent,
    /// Every retry was used.
    RetriesExhausted,
    /// The next attempt would have started after the deadline.
    Deadline,
}

/// A message that could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{last} ({})", self.explain())]
pub struct DeliveryError {
    /// The error of the last attempt.
    pub last: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// Why no further attempt was made.
    pub gave_up: GaveUp,
    /// The deadline that applied.
    pub deadline: Duration,
}

impl DeliveryError {
    fn explain(&self) -> String {
        let attempts = match self.attempts {
            1 => "1 attempt".to_owned(),
            n => format!("{n} attempts"),
        };
        match self.gave_up {
            GaveUp::Permanent => format!("{attempts}, not retried: the error is permanent"),
            GaveUp::RetriesExhausted => format!("{attempts}, no retries left"),
            GaveUp::Deadline => format!(
                "{attempts}, deadline of {} reached",
                humantime::format_duration(self.deadline)
            ),
        }
    }
}

/// The wait before the next attempt: the current backoff, or a longer
/// `Retry-After`, never more than [`MAX_BACKOFF`].
fn wait_before_retry(backoff: Duration, retry: Retry) -> Duration {
    match retry {
        Retry::Never | Retry::Backoff => backoff,
        Retry::After(after) => after.max(backoff),
    }
    .min(MAX_BACKOFF)
}

/// Runs `attempt` until it succeeds or `policy` says stop, and returns the
/// number of attempts made. `attempt` receives the time it may take (the
/// per-attempt timeout, shortened near the deadline) and is also cut off by
/// a timer at that time, so a server that accepts and never answers cannot
/// hold the run.
pub async fn with_retries<F, Fut>(
    policy: &DeliveryPolicy,
    mut attempt: F,
) -> Result<u32, DeliveryError>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<(), AttemptError>>,
{
    let deadline = Instant::now() + policy.deadline;
    let mut backoff = policy.backoff;
    let mut attempts = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let budget = policy.timeout.min(left);
        attempts += 1;
        let error = match tokio::time::timeout(budget, attempt(budget)).await {
            Ok(Ok(())) => return Ok(attempts),
            Ok(Err(error)) => error,
            Err(_) => AttemptError::transient(format!(
                "timed out after {}",
                humantime::format_duration(budget)
            )),
        };
        let give_up = |gave_up| DeliveryError {
            last: error.message.clone(),
            attempts,
            gave_up,
            deadline: policy.deadline,
        };
        if error.retry == Retry::Never {
            return Err(give_up(GaveUp::Permanent));
        }
        if attempts > policy.retries {
            return Err(give_up(GaveUp::RetriesExhausted));
        }
        let wait = wait_before_retry(backoff, error.retry);
        // Waiting until the deadline only to be cut off at once helps nobody.
        if Instant::now() + wait >= deadline {
            return Err(give_up(GaveUp::Deadline));
        }
        tracing::debug!(attempt = attempts, error = %error.message, wait = ?wait, "notification attempt failed; retrying");
        tokio::time::sleep(wait).await;
        backoff = backoff.saturating_mul(2);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn policy(retries: u32, deadline_secs: u64) -> DeliveryPolicy {
        DeliveryPolicy {
            timeout: Duration::from_secs(5),
            retries,
            backoff: Duration::from_secs(1),
            deadline: Duration::from_secs(deadline_secs),
        }
    }

    /// Runs `with_retries` over scripted attempt results; returns the result
    /// and the budgets each attempt was given. Time is paused: tokio skips
    /// the waits, nothing is slow and nothing is measured.
    async fn script(
        policy: &DeliveryPolicy,
        results: Vec<Option<Result<(), AttemptError>>>,
    ) -> (Result<u32, DeliveryError>, Vec<Duration>) {
        let results = Mutex::new(results.into_iter());
        let budgets = Mutex::new(Vec::new());
        let outcome = with_retries(policy, |budget| {
            budgets.lock().expect("lock").push(budget);
            let next = results.lock().expect("lock").next();
            async move {
                match next {
                    Some(Some(result)) => result,
                    // `None`: a server that never answers.
                    Some(None) | None => std::future::pending().await,
                }
            }
        })
        .await;
        let budgets = budgets.into_inner().expect("lock");
        (outcome, budgets)
    }

    #[tokio::test(start_paused = true)]
    async fn success_on_the_first_attempt() {
        let (result, budgets) = script(&policy(3, 60), vec![Some(Ok(()))]).await;
        assert_eq!(result, Ok(1));
        assert_eq!(budgets, [Duration::from_secs(5)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_error_is_retried() {
        let (result, _) = script(
            &policy(3, 60),
            vec![Some(Err(AttemptError::transient("HTTP 500"))), Some(Ok(()))],
        )
        .await;
        assert_eq!(result, Ok(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_is_not_retried() {
        let (result, budgets) = script(
            &policy(3, 60),
            vec![Some(Err(AttemptError::permanent("HTTP 404"))), Some(Ok(()))],
        )
        .await;
        let error = result.expect_err("permanent");
        assert_eq!(error.attempts, 1);
        assert_eq!(error.gave_up, GaveUp::Permanent);
        assert_eq!(budgets.len(), 1);
        assert_eq!(
            error.to_string(),
            "HTTP 404 (1 attempt, not retried: the error is permanent)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded() {
        let failures = (0..10)
            .map(|_| Some(Err(AttemptError::transient("HTTP 503"))))
            .collect();
        let (result, budgets) = script(&policy(2, 600), failures).await;
        let error = result.expect_err("exhausted");
        assert_eq!(error.attempts, 3);
        assert_eq!(error.gave_up, GaveUp::RetriesExhausted);
        assert_eq!(budgets.len(), 3);
        assert_eq!(error.to_string(), "HTTP 503 (3 attempts, no retries left)");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_server_times_out_and_the_deadline_stops_the_retries() {
        // Attempts of 5s with waits of 1s, 2s: 5 + 1 + 5 = 11s, then the
        // third attempt would start after a wait of 2s, at 13s; it gets 2s
        // (what is left of the 15s deadline), then there is no time to wait.
        let (result, budgets) = script(&policy(5, 15), vec![None, None, None, None]).await;
        let error = result.expect_err("deadline");
        assert_eq!(
            budgets,
            [
                Duration::from_secs(5),
                Duration::from_secs(5),
                Duration::from_secs(2)
            ]
        );
        assert_eq!(error.gave_up, GaveUp::Deadline);
        assert_eq!(error.attempts, 3);
        assert_eq!(
            error.to_string(),
            "timed out after 2s (3 attempts, deadline of 15s reached)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_within_the_deadline() {
        let later = AttemptError {
            message: "HTTP 429".to_owned(),
            retry: Retry::After(Duration::from_secs(20)),
        };
        let (result, _) =
            script(&policy(3, 60), vec![Some(Err(later.clone())), Some(Ok(()))]).await;
        assert_eq!(result, Ok(2));
        // A Retry-After past the deadline ends delivery at once.
        let far = AttemptError {
            retry: Retry::After(Duration::from_secs(25)),
            ..later
        };
        let (result, budgets) = script(&policy(3, 20), vec![Some(Err(far)), Some(Ok(()))]).await;
        assert_eq!(result.expect_err("deadline").gave_up, GaveUp::Deadline);
        assert_eq!(budgets.len(), 1);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let mut backoff = Duration::from_secs(1);
        let mut waits = Vec::new();
        for _ in 0..7 {
            waits.push(wait_before_retry(backoff, Retry::Backoff).as_secs());
            backoff = backoff.saturating_mul(2);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        let later = Retry::After(Duration::from_secs(5));
        assert_eq!(
            wait_before_retry(Duration::from_secs(1), later).as_secs(),
            5
        );
        assert_eq!(
            wait_before_retry(Duration::from_secs(8), later).as_secs(),
            8
        );
        let much_later = Retry::After(Duration::from_hours(1));
        assert_eq!(
            wait_before_retry(Duration::from_secs(1), much_later),
            MAX_BACKOFF
        );
    }
}
