//! Retrying a read-modify-write on `409 Conflict`.
//!
//! Kubernetes writes are optimistic: an update carries the `resourceVersion` it was based on and the
//! API server answers `409 Conflict` when someone else wrote first. The cure is to read again, reapply
//! the change and write again, a few times, quickly. [`retry_on_conflict`] does exactly that and
//! nothing more, with the semantics of client-go's `retry.RetryOnConflict`:
//!
//! - only a conflict is retried; any other error is returned at once;
//! - when the steps run out, the **last conflict error** is returned (not a timeout error);
//! - the closure runs at most [`Backoff::steps`] times, sleeping between attempts, and fewer when
//!   the waits reach [`Backoff::cap`].
//!
//! The waits come from [`Backoff`] (client-go's `wait.Backoff`: a start duration, a growth factor, a
//! jitter fraction and an optional cap whose reaching ends the steps), driven by the [`backon`]
//! crate, so they follow tokio's clock and are testable with a paused clock.
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

/// Wait policy between attempts: client-go's `wait.Backoff`, as `wait.ExponentialBackoff` (and so
/// `retry.RetryOnConflict`) steps through it.
///
/// The first wait is `duration`; each later one is the previous one times `factor`. When a
/// multiplication would exceed `cap`, that wait becomes `cap` **and the steps end**: as in
/// client-go, reaching the cap stops the retries, it does not keep retrying at the cap. Each wait
/// gets a random extra of up to `jitter` times itself. The closure runs at most `steps` times.
///
/// For example `steps: 10, duration: 10ms, factor: 2.0, cap: Some(50ms)` runs the closure 3 times,
/// waiting 10 ms and 20 ms between them: the step after the 40 ms wait would grow past the cap,
/// which ends the steps.
///
/// Deliberate departures from client-go, each one a case where client-go's behaviour does nothing
/// useful:
/// - when the cap ends the steps, client-go still sleeps the last computed wait (40 ms in the
///   example) and then gives up without calling the condition again; we give up at once;
/// - `steps: 0` makes client-go never call the condition (and `RetryOnConflict` return no error);
///   here at least one attempt is always made;
/// - a `factor` between 0 and 1, or not finite, is treated as `1.0` (constant waits) rather than
///   shrinking the waits. A `factor` of exactly `0.0` means constant waits and, as in client-go,
///   the cap is then never consulted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Maximum number of attempts (at least one attempt is always made); reaching the cap ends
    /// the attempts earlier.
    pub steps: u32,
    /// The first wait.
    pub duration: Duration,
    /// Growth factor of the wait; `1.0` keeps it constant, values below 1 are treated as 1.
    pub factor: f64,
    /// Fraction of random extra added to each wait; `0.0` disables jitter.
    pub jitter: f64,
    /// When set (and not zero), the wait that would grow past it is set to it and the steps end:
    /// client-go's `Backoff.Cap`.
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

    /// The waits between attempts, in order: `steps - 1` of them, or fewer when the cap ends the
    /// steps (see the [type docs](Backoff)).
    pub fn delays(&self) -> BackoffIter {
        BackoffIter {
            duration: self.duration,
            steps: self.steps,
            policy: *self,
        }
    }
}

/// Iterator over the waits of a [`Backoff`]; also a [`backon::Backoff`].
///
/// Each item is the wait before one more attempt; `None` means give up.
#[derive(Clone, Debug)]
pub struct BackoffIter {
    /// The next wait before jitter: client-go's `Backoff.Duration` as `Step` updates it.
    duration: Duration,
    /// Steps left: client-go's `Backoff.Steps` as `Step` updates it.
    steps: u32,
    policy: Backoff,
}

impl Iterator for BackoffIter {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // `ExponentialBackoff` stops after the attempt made with one step left.
        if self.steps <= 1 {
            self.steps = 0;
            return None;
        }
        self.steps -= 1;
        let wait = self.duration;
        if self.policy.factor != 0.0 {
            let factor = if self.policy.factor.is_finite() && self.policy.factor > 1.0 {
                self.policy.factor
            } else {
                1.0
            };
            let grown =
                Duration::try_from_secs_f64(wait.as_secs_f64() * factor).unwrap_or(Duration::MAX);
            match self.policy.cap {
                Some(cap) if !cap.is_zero() && grown > cap => {
                    self.duration = cap;
                    self.steps = 0;
                }
                _ => self.duration = grown,
            }
        }
        if self.steps == 0 {
            // The cap ended the steps: client-go would sleep `wait` and then give up without
            // another attempt. Give up now.
            return None;
        }
        let jitter = if self.policy.jitter.is_finite() && self.policy.jitter > 0.0 {
            let extra = wait.as_secs_f64() * self.policy.jitter * rand::random::<f64>();
            Duration::try_from_secs_f64(extra).unwrap_or(Duration::MAX)
        } else {
            Duration::ZERO
        };
        Some(wait.saturating_add(jitter))
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

    fn policy(steps: u32, duration_ms: u64, factor: f64, cap_ms: Option<u64>) -> Backoff {
        Backoff {
            steps,
            duration: Duration::from_millis(duration_ms),
            factor,
            jitter: 0.0,
            cap: cap_ms.map(Duration::from_millis),
        }
    }

    /// The waits between attempts, worked out by hand from client-go's `wait.ExponentialBackoff`
    /// loop over `Backoff.Step` (apimachinery `pkg/util/wait/backoff.go`): the condition runs while
    /// steps remain, stops after the attempt made with one step left, and a step whose growth
    /// passes the cap sets steps to zero.
    #[test]
    fn waits_follow_client_go_steps_and_reaching_the_cap_ends_them() {
        // (name, policy, expected waits in ms; attempts = waits + 1)
        let cases: &[(&str, Backoff, &[u128])] = &[
            // The issue's case: 10, 20, then 40 ms grows to 80 > 50, so the steps end: 3 attempts.
            (
                "cap ends ten steps",
                policy(10, 10, 2.0, Some(50)),
                &[10, 20],
            ),
            (
                "cap ends five steps",
                policy(5, 10, 2.0, Some(50)),
                &[10, 20],
            ),
            (
                "growth landing on the cap is allowed",
                policy(5, 10, 2.0, Some(20)),
                &[10],
            ),
            (
                "growth just past the cap ends at once",
                policy(5, 10, 2.0, Some(19)),
                &[],
            ),
            (
                "cap above every wait",
                policy(5, 10, 2.0, Some(1000)),
                &[10, 20, 40, 80],
            ),
            ("no cap", policy(5, 10, 2.0, None), &[10, 20, 40, 80]),
            (
                "zero cap means no cap",
                policy(4, 10, 2.0, Some(0)),
                &[10, 20, 40],
            ),
            (
                "first wait above the cap: one attempt",
                policy(5, 100, 2.0, Some(50)),
                &[],
            ),
            (
                "constant waits under the cap",
                policy(4, 10, 1.0, Some(50)),
                &[10, 10, 10],
            ),
            (
                "factor zero never consults the cap",
                policy(3, 100, 0.0, Some(50)),
                &[100, 100],
            ),
            ("one step: one attempt", policy(1, 10, 2.0, None), &[]),
            (
                "zero steps: still one attempt",
                policy(0, 10, 2.0, None),
                &[],
            ),
            (
                "contended",
                Backoff {
                    jitter: 0.0,
                    ..Backoff::contended()
                },
                &[10, 50, 250],
            ),
        ];
        for (name, b, want) in cases {
            let got: Vec<u128> = b.delays().map(|d| d.as_millis()).collect();
            assert_eq!(&got, want, "{name}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reaching_the_cap_ends_retry_on_conflict_after_three_attempts() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let start = tokio::time::Instant::now();
        let out: Result<(), kube::Error> = retry_on_conflict(policy(10, 10, 2.0, Some(50)), || {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err(status(409)) }
        })
        .await;
        assert!(
            out.unwrap_err().is_conflict(),
            "the last conflict is returned"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // 10 ms + 20 ms; client-go would also sleep the 40 ms wait before giving up.
        assert_eq!(start.elapsed(), Duration::from_millis(30));
    }

    #[test]
    fn huge_waits_and_jitter_saturate_instead_of_panicking() {
        let b = Backoff {
            steps: 4,
            duration: Duration::MAX / 2,
            factor: 1e300,
            jitter: 1e300,
            cap: None,
        };
        let delays: Vec<_> = b.delays().collect();
        assert_eq!(delays.len(), 3);
        assert!(delays.iter().all(|d| *d >= Duration::MAX / 2));
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
