//! Retrying a read-modify-write on `409 Conflict`.
//!
//! Kubernetes writes are optimistic: an update carries the `resourceVersion` it was based on and the
//! API server answers `409 Conflict` when someone else wrote first. The cure is to read again, reapply
//! the change and write again, a few times, quickly. [`retry_on_conflict`] does exactly that and
//! nothing more, with the semantics of client-go's `retry.RetryOnConflict`:
//!
//! - only a conflict is retried; any other error is returned at once;
//! - when the steps run out, the **last conflict error** is returned (not a timeout error);
//! - the closure runs at most [`Backoff::steps`] times, sleeping between attempts.
//!
//! The waits come from [`Backoff`] (client-go's `wait.Backoff`: a start duration, a growth factor, a
//! jitter fraction and an optional cap), driven by the [`backon`] crate, so they follow tokio's clock
//! and are testable with a paused clock.
//!
//! ```no_run
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::{Api, PostParams};
//! use reflex_runtime::retry::{retry_on_conflict, Backoff};
//!
//! # async fn doc(api: Api<ConfigMap>) -> Result<(), kube::Error> {
//! retry_on_conflict(Backoff::default(), || async {
//!     let mut cm = api.get("settings").await?;
//!     cm.data.get_or_insert_default().insert("mode".into(), "fast".into());
//!     api.replace("settings", &PostParams::default(), &cm).await
//! })
//! .await?;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, Retryable};

/// An error that can say whether it is an optimistic-concurrency conflict (HTTP 409).
pub trait ConflictError {
    /// True when the error is a `409 Conflict` answer, the only error worth retrying at once.
    fn is_conflict(&self) -> bool;
}

impl ConflictError for kube::Error {
    fn is_conflict(&self) -> bool {
        matches!(self, kube::Error::Api(status) if status.code == 409)
    }
}

/// Wait policy between attempts: client-go's `wait.Backoff`.
///
/// Attempt `n` (from 0) waits `duration * factor^n` (capped at `cap` when set), plus a random
/// extra of up to `jitter` times that wait. The closure runs at most `steps` times.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Maximum number of attempts (at least one attempt is always made).
    pub steps: u32,
    /// The first wait.
    pub duration: Duration,
    /// Growth factor of the wait; `1.0` keeps it constant, values below 1 are treated as 1.
    pub factor: f64,
    /// Fraction of random extra added to each wait; `0.0` disables jitter.
    pub jitter: f64,
    /// Upper bound of a wait before jitter, when set.
    pub cap: Option<Duration>,
}

impl Default for Backoff {
    /// client-go's `retry.DefaultRetry`: 5 steps, 10 ms, factor 1.0, jitter 0.1.
    fn default() -> Self {
        Self {
            steps: 5,
            duration: Duration::from_millis(10),
            factor: 1.0,
            jitter: 0.1,
            cap: None,
        }
    }
}

impl Backoff {
    /// client-go's `retry.DefaultBackoff`, for writes that contend harder: 4 steps, 10 ms,
    /// factor 5.0, jitter 0.1.
    pub fn contended() -> Self {
        Self {
            steps: 4,
            duration: Duration::from_millis(10),
            factor: 5.0,
            jitter: 0.1,
            cap: None,
        }
    }

    /// The waits between attempts, in order (`steps - 1` of them).
    pub fn delays(&self) -> BackoffIter {
        BackoffIter {
            next: self.duration,
            remaining: self.steps.saturating_sub(1),
            policy: *self,
        }
    }
}

/// Iterator over the waits of a [`Backoff`]; also a [`backon::Backoff`].
#[derive(Clone, Debug)]
pub struct BackoffIter {
    next: Duration,
    remaining: u32,
    policy: Backoff,
}

impl Iterator for BackoffIter {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let base = match self.policy.cap {
            Some(cap) => self.next.min(cap),
            None => self.next,
        };
        let factor = if self.policy.factor.is_finite() && self.policy.factor > 1.0 {
            self.policy.factor
        } else {
            1.0
        };
        self.next =
            Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(Duration::MAX);
        let jitter = if self.policy.jitter.is_finite() && self.policy.jitter > 0.0 {
            base.mul_f64(self.policy.jitter * rand::random::<f64>())
        } else {
            Duration::ZERO
        };
        Some(base.saturating_add(jitter))
    }
}

impl BackoffBuilder for Backoff {
    type Backoff = BackoffIter;

    fn build(self) -> BackoffIter {
        self.delays()
    }
}

/// Runs `f` until it succeeds, fails with something other than a conflict, or `backoff` runs out.
///
/// Returns `f`'s value on success, a non-conflict error at once, and the last conflict error when
/// every attempt conflicted. See the [module docs](self) for an example.
pub async fn retry_on_conflict<T, E, F, Fut>(backoff: Backoff, f: F) -> Result<T, E>
where
    E: ConflictError,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    f.retry(backoff)
        .sleep(tokio::time::sleep)
        .when(ConflictError::is_conflict)
        .notify(|_, wait| {
            tracing::debug!(
                wait_ms = wait.as_millis() as u64,
                "write conflicted, retrying"
            )
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            reason: "test".into(),
            ..kube::core::Status::failure("test", "test")
        }))
    }

    fn code_of(e: &kube::Error) -> u16 {
        match e {
            kube::Error::Api(s) => s.code,
            _ => 0,
        }
    }

    /// Runs `retry_on_conflict` over a scripted list of answers (`Ok` or an HTTP code), returning
    /// the result (value or code) and the number of attempts.
    async fn run(script: &[Result<u32, u16>]) -> (Result<u32, u16>, u32) {
        let calls = Arc::new(AtomicU32::new(0));
        let script = script.to_vec();
        let c = calls.clone();
        let out = retry_on_conflict(Backoff::default(), move || {
            let n = c.fetch_add(1, Ordering::SeqCst) as usize;
            let answer = script[n.min(script.len() - 1)];
            async move { answer.map_err(status) }
        })
        .await;
        (out.map_err(|e| code_of(&e)), calls.load(Ordering::SeqCst))
    }

    #[tokio::test(start_paused = true)]
    async fn retries_only_conflicts_and_returns_last_conflict_when_steps_run_out() {
        type Answer = Result<u32, u16>;
        // (name, scripted answers, expected result, expected attempts)
        let cases: &[(&str, &[Answer], Answer, u32)] = &[
            ("success first time", &[Ok(1)], Ok(1), 1),
            (
                "success after two conflicts",
                &[Err(409), Err(409), Ok(7)],
                Ok(7),
                3,
            ),
            (
                "non-conflict returned at once",
                &[Err(500), Ok(1)],
                Err(500),
                1,
            ),
            (
                "not found returned at once",
                &[Err(409), Err(404), Ok(1)],
                Err(404),
                2,
            ),
            ("conflicts exhaust five steps", &[Err(409)], Err(409), 5),
        ];
        for (name, script, want, attempts) in cases {
            let (got, n) = run(script).await;
            assert_eq!(&got, want, "{name}");
            assert_eq!(n, *attempts, "{name}: attempts");
        }
    }

    #[test]
    fn default_backoff_waits_ten_millis_with_ten_percent_jitter_four_times() {
        let delays: Vec<_> = Backoff::default().delays().collect();
        assert_eq!(delays.len(), 4);
        for d in delays {
            assert!(
                d >= Duration::from_millis(10) && d <= Duration::from_millis(11),
                "{d:?}"
            );
        }
    }

    #[test]
    fn backoff_grows_by_factor_and_stops_at_cap() {
        let b = Backoff {
            steps: 5,
            duration: Duration::from_millis(10),
            factor: 2.0,
            jitter: 0.0,
            cap: Some(Duration::from_millis(50)),
        };
        let delays: Vec<_> = b.delays().map(|d| d.as_millis()).collect();
        assert_eq!(delays, vec![10, 20, 40, 50]);
    }

    #[tokio::test(start_paused = true)]
    async fn conflicts_wait_between_attempts_on_tokio_clock() {
        let start = tokio::time::Instant::now();
        let b = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        let out: Result<(), kube::Error> =
            retry_on_conflict(b, || async { Err(status(409)) }).await;
        assert!(out.unwrap_err().is_conflict());
        assert_eq!(start.elapsed(), Duration::from_millis(40));
    }
}
