//! Rate limiters: how long a failed item waits before it is retried.
//!
//! # Why
//!
//! A reconcile that fails is retried, but retrying at once turns one broken object into a hot
//! loop against the API server. A [`RateLimiter`] answers "how long should this item wait
//! now?" and remembers per-item failures until [`RateLimiter::forget`] is called (after a
//! success). Per-item limiters ([`ItemExponentialFailure`], [`ItemFastSlow`]) slow down one
//! broken object; the [`Bucket`] limiter caps the overall retry rate; [`MaxOf`] combines them.
//! [`default_controller_rate_limiter`] is client-go's default: the larger of an exponential
//! 5 ms to 1000 s per item and a 10 qps / burst 100 token bucket.
//!
//! Limiters that read time use [`tokio::time::Instant`], so tests run on tokio's paused clock.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use reflex_workqueue::limiter::{ItemExponentialFailure, RateLimiter};
//!
//! let limiter = ItemExponentialFailure::new(Duration::from_millis(5), Duration::from_secs(1));
//! assert_eq!(limiter.when(&"a"), Duration::from_millis(5));
//! assert_eq!(limiter.when(&"a"), Duration::from_millis(10));
//! assert_eq!(limiter.num_requeues(&"a"), 2);
//! limiter.forget(&"a");
//! assert_eq!(limiter.when(&"a"), Duration::from_millis(5));
//! ```

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Errors from building a limiter with parameters it cannot honour.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimiterError {
    /// A token bucket needs a finite, positive refill rate.
    #[error("bucket rate must be finite and positive, got {qps} qps")]
    InvalidRate {
        /// The rejected rate.
        qps: f64,
    },
    /// A token bucket with a zero burst never grants a token.
    #[error("bucket burst must be at least 1")]
    ZeroBurst,
}

/// Decides how long an item waits before it is retried, and tracks its failures.
pub trait RateLimiter<T>: Send + Sync {
    /// How long `item` should wait now; counts one more failure for it.
    fn when(&self, item: &T) -> Duration;
    /// Stops tracking `item` (call after it succeeded); the queue's `done` is still needed.
    fn forget(&self, item: &T);
    /// How many failures are tracked for `item`.
    fn num_requeues(&self, item: &T) -> u32;
}

impl<T, L: RateLimiter<T> + ?Sized> RateLimiter<T> for Box<L> {
    fn when(&self, item: &T) -> Duration {
        (**self).when(item)
    }
    fn forget(&self, item: &T) {
        (**self).forget(item)
    }
    fn num_requeues(&self, item: &T) -> u32 {
        (**self).num_requeues(item)
    }
}

/// Per item `base × 2^failures`, capped at `max`; `failures` counts the calls to `when` before
/// this one, so the first wait is `base`. Overflow saturates at `max`.
#[derive(Debug)]
pub struct ItemExponentialFailure<T> {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<T, u32>>,
}

impl<T> ItemExponentialFailure<T> {
    /// A limiter starting at `base` and never waiting longer than `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone + Eq + Hash + Send + Sync> RateLimiter<T> for ItemExponentialFailure<T> {
    fn when(&self, item: &T) -> Duration {
        let exponent = {
            let mut failures = self.failures.lock();
            let count = failures.entry(item.clone()).or_insert(0);
            let exponent = *count;
            *count = count.saturating_add(1);
            exponent
        };
        let factor = 1_u128.checked_shl(exponent).unwrap_or(0);
        let nanos = self
            .base
            .as_nanos()
            .checked_mul(factor)
            .filter(|_| factor != 0);
        match nanos {
            Some(nanos) if nanos <= self.max.as_nanos() => {
                duration_from_nanos(nanos).unwrap_or(self.max)
            }
            _ => self.max,
        }
    }

    fn forget(&self, item: &T) {
        self.failures.lock().remove(item);
    }

    fn num_requeues(&self, item: &T) -> u32 {
        self.failures.lock().get(item).copied().unwrap_or(0)
    }
}

fn duration_from_nanos(nanos: u128) -> Option<Duration> {
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    let subsec = u32::try_from(nanos % 1_000_000_000).ok()?;
    Some(Duration::new(secs, subsec))
}

/// Per item `fast` for the first `max_fast_attempts` calls to `when`, `slow` after that.
#[derive(Debug)]
pub struct ItemFastSlow<T> {
    fast: Duration,
    slow: Duration,
    max_fast_attempts: u32,
    attempts: Mutex<HashMap<T, u32>>,
}

impl<T> ItemFastSlow<T> {
    /// A limiter answering `fast` for `max_fast_attempts` failures of an item, then `slow`.
    pub fn new(fast: Duration, slow: Duration, max_fast_attempts: u32) -> Self {
        Self {
            fast,
            slow,
            max_fast_attempts,
            attempts: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone + Eq + Hash + Send + Sync> RateLimiter<T> for ItemFastSlow<T> {
    fn when(&self, item: &T) -> Duration {
        let mut attempts = self.attempts.lock();
        let count = attempts.entry(item.clone()).or_insert(0);
        *count = count.saturating_add(1);
        if *count <= self.max_fast_attempts {
            self.fast
        } else {
            self.slow
        }
    }

    fn forget(&self, item: &T) {
        self.attempts.lock().remove(item);
    }

    fn num_requeues(&self, item: &T) -> u32 {
        self.attempts.lock().get(item).copied().unwrap_or(0)
    }
}

/// A token bucket shared by all items: `burst` tokens, refilled at `qps` per second. Each
/// call to `when` reserves one token and returns how long until that token exists (the
/// semantics of `golang.org/x/time/rate`'s `Reserve().Delay()`): the bucket may go into debt,
/// so a burst of calls gets increasing waits. It tracks no items; `num_requeues` is 0.
#[derive(Debug)]
pub struct Bucket {
    qps: f64,
    burst: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    /// A full bucket of `burst` tokens refilled at `qps` per second.
    pub fn new(qps: f64, burst: u32) -> Result<Self, LimiterError> {
        if !qps.is_finite() || qps <= 0.0 {
            return Err(LimiterError::InvalidRate { qps });
        }
        if burst == 0 {
            return Err(LimiterError::ZeroBurst);
        }
        Ok(Self {
            qps,
            burst: f64::from(burst),
            state: Mutex::new(BucketState {
                tokens: f64::from(burst),
                last: None,
            }),
        })
    }

    fn reserve(&self, now: Instant) -> Duration {
        let mut state = self.state.lock();
        let elapsed = state
            .last
            .map(|last| now.saturating_duration_since(last))
            .unwrap_or_default();
        let refilled = (state.tokens + elapsed.as_secs_f64() * self.qps).min(self.burst);
        let tokens = refilled - 1.0;
        state.tokens = tokens;
        state.last = Some(state.last.map_or(now, |last| last.max(now)));
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::try_from_secs_f64(-tokens / self.qps).unwrap_or(Duration::MAX)
        }
    }
}

impl<T> RateLimiter<T> for Bucket {
    fn when(&self, _item: &T) -> Duration {
        self.reserve(Instant::now())
    }
    fn forget(&self, _item: &T) {}
    fn num_requeues(&self, _item: &T) -> u32 {
        0
    }
}

/// The largest wait of several limiters; `forget` goes to all of them, `num_requeues` is the
/// largest count.
pub struct MaxOf<T> {
    limiters: Vec<Box<dyn RateLimiter<T>>>,
}

impl<T> std::fmt::Debug for MaxOf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaxOf")
            .field("limiters", &self.limiters.len())
            .finish()
    }
}

impl<T> MaxOf<T> {
    /// Combines `limiters`; with none, every wait is zero.
    pub fn new(limiters: Vec<Box<dyn RateLimiter<T>>>) -> Self {
        Self { limiters }
    }
}

impl<T> RateLimiter<T> for MaxOf<T> {
    fn when(&self, item: &T) -> Duration {
        // Every limiter is asked, so each counts the failure.
        self.limiters
            .iter()
            .map(|limiter| limiter.when(item))
            .fold(Duration::ZERO, Duration::max)
    }
    fn forget(&self, item: &T) {
        for limiter in &self.limiters {
            limiter.forget(item);
        }
    }
    fn num_requeues(&self, item: &T) -> u32 {
        self.limiters
            .iter()
            .map(|limiter| limiter.num_requeues(item))
            .max()
            .unwrap_or(0)
    }
}

/// Clamps another limiter's waits to at most `max_wait`.
#[derive(Debug)]
pub struct WithMaxWait<L> {
    limiter: L,
    max_wait: Duration,
}

impl<L> WithMaxWait<L> {
    /// Wraps `limiter` so no wait exceeds `max_wait`.
    pub fn new(limiter: L, max_wait: Duration) -> Self {
        Self { limiter, max_wait }
    }
}

impl<T, L: RateLimiter<T>> RateLimiter<T> for WithMaxWait<L> {
    fn when(&self, item: &T) -> Duration {
        self.limiter.when(item).min(self.max_wait)
    }
    fn forget(&self, item: &T) {
        self.limiter.forget(item)
    }
    fn num_requeues(&self, item: &T) -> u32 {
        self.limiter.num_requeues(item)
    }
}

/// client-go's default controller limiter: the larger of a per-item exponential backoff from
/// 5 ms to 1000 s and a 10 qps / burst 100 token bucket over all items.
pub fn default_controller_rate_limiter<T: Clone + Eq + Hash + Send + Sync + 'static>() -> MaxOf<T> {
    let exponential =
        ItemExponentialFailure::new(Duration::from_millis(5), Duration::from_secs(1000));
    let mut limiters: Vec<Box<dyn RateLimiter<T>>> = vec![Box::new(exponential)];
    // 10 qps and a burst of 100 are valid, so this always succeeds.
    if let Ok(bucket) = Bucket::new(10.0, 100) {
        limiters.push(Box::new(bucket));
    }
    MaxOf::new(limiters)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn exponential_doubles_from_base_capped_at_max_without_overflow() {
        // (name, base, max, number of calls, expected waits of the last calls)
        let cases: &[(&str, Duration, Duration, usize, &[Duration])] = &[
            ("first is base", MS(5), MS(1000), 1, &[MS(5)]),
            (
                "doubles",
                MS(5),
                MS(1000),
                4,
                &[MS(5), MS(10), MS(20), MS(40)],
            ),
            (
                "capped",
                MS(5),
                MS(30),
                5,
                &[MS(5), MS(10), MS(20), MS(30), MS(30)],
            ),
            (
                "overflow saturates",
                Duration::from_secs(1),
                Duration::from_secs(1000),
                200,
                &[Duration::from_secs(1000)],
            ),
            (
                "huge base",
                Duration::MAX,
                Duration::from_secs(7),
                2,
                &[Duration::from_secs(7), Duration::from_secs(7)],
            ),
        ];
        for (name, base, max, calls, expected_tail) in cases {
            let limiter = ItemExponentialFailure::new(*base, *max);
            let waits: Vec<Duration> = (0..*calls).map(|_| limiter.when(&"item")).collect();
            assert_eq!(
                &waits[calls - expected_tail.len()..],
                *expected_tail,
                "{name}"
            );
            assert_eq!(limiter.num_requeues(&"item") as usize, *calls, "{name}");
            assert_eq!(limiter.num_requeues(&"other"), 0, "{name}: per item");
        }
    }

    #[test]
    fn forget_resets_per_item_history() {
        let limiters: Vec<(&str, Box<dyn RateLimiter<&str>>, Duration)> = vec![
            (
                "exponential",
                Box::new(ItemExponentialFailure::new(MS(1), MS(100))),
                MS(1),
            ),
            (
                "fast-slow",
                Box::new(ItemFastSlow::new(MS(1), MS(50), 1)),
                MS(1),
            ),
        ];
        for (name, limiter, first) in limiters {
            let _ = limiter.when(&"a");
            let _ = limiter.when(&"a");
            let _ = limiter.when(&"b");
            limiter.forget(&"a");
            assert_eq!(limiter.num_requeues(&"a"), 0, "{name}");
            assert_eq!(
                limiter.num_requeues(&"b"),
                1,
                "{name}: other items untouched"
            );
            assert_eq!(limiter.when(&"a"), first, "{name}");
        }
    }

    #[test]
    fn fast_slow_is_fast_for_max_fast_attempts_then_slow() {
        // (max_fast_attempts, expected waits)
        let cases: &[(u32, &[Duration])] = &[
            (0, &[MS(50), MS(50)]),
            (1, &[MS(1), MS(50), MS(50)]),
            (3, &[MS(1), MS(1), MS(1), MS(50)]),
        ];
        for (max_fast, expected) in cases {
            let limiter = ItemFastSlow::new(MS(1), MS(50), *max_fast);
            let waits: Vec<Duration> = expected.iter().map(|_| limiter.when(&1)).collect();
            assert_eq!(waits, *expected, "max_fast_attempts = {max_fast}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_reserves_tokens_shared_across_items() {
        let bucket = Bucket::new(10.0, 2).unwrap();
        let when = |item: u32| RateLimiter::<u32>::when(&bucket, &item);
        assert_eq!(when(1), Duration::ZERO);
        assert_eq!(when(2), Duration::ZERO);
        assert_eq!(when(3), MS(100), "third token in 100 ms");
        assert_eq!(when(1), MS(200), "reservations queue up");
        tokio::time::advance(MS(300)).await;
        assert_eq!(
            when(4),
            Duration::ZERO,
            "debt of 2 paid, one token refilled"
        );
        assert_eq!(when(4), MS(100), "and used");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(when(5), Duration::ZERO, "refilled up to burst");
        assert_eq!(when(6), Duration::ZERO);
        assert_eq!(when(7), MS(100), "never more than burst");
        assert_eq!(RateLimiter::<u32>::num_requeues(&bucket, &1), 0);
    }

    #[test]
    fn bucket_rejects_parameters_it_cannot_honour() {
        let cases = [
            (0.0, 1, LimiterError::InvalidRate { qps: 0.0 }),
            (-1.0, 1, LimiterError::InvalidRate { qps: -1.0 }),
            (
                f64::INFINITY,
                1,
                LimiterError::InvalidRate { qps: f64::INFINITY },
            ),
            (1.0, 0, LimiterError::ZeroBurst),
        ];
        for (qps, burst, expected) in cases {
            assert_eq!(Bucket::new(qps, burst).unwrap_err(), expected);
        }
        assert!(matches!(
            Bucket::new(f64::NAN, 1),
            Err(LimiterError::InvalidRate { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn max_of_takes_the_largest_wait_and_forgets_everywhere() {
        let limiter: MaxOf<&str> = MaxOf::new(vec![
            Box::new(ItemExponentialFailure::new(MS(1), Duration::from_secs(1))),
            Box::new(ItemFastSlow::new(MS(3), MS(9), 2)),
        ]);
        let waits: Vec<Duration> = (0..5).map(|_| limiter.when(&"x")).collect();
        assert_eq!(waits, vec![MS(3), MS(3), MS(9), MS(9), MS(16)]);
        assert_eq!(limiter.num_requeues(&"x"), 5);
        limiter.forget(&"x");
        assert_eq!(limiter.num_requeues(&"x"), 0);
        assert_eq!(limiter.when(&"x"), MS(3));
        assert_eq!(MaxOf::<&str>::new(Vec::new()).when(&"x"), Duration::ZERO);
    }

    #[test]
    fn with_max_wait_clamps_the_inner_limiter() {
        let limiter = WithMaxWait::new(
            ItemExponentialFailure::new(MS(10), Duration::from_secs(60)),
            MS(25),
        );
        let waits: Vec<Duration> = (0..3).map(|_| limiter.when(&0)).collect();
        assert_eq!(waits, vec![MS(10), MS(20), MS(25)]);
    }

    #[tokio::test(start_paused = true)]
    async fn default_controller_limiter_is_exponential_until_the_bucket_runs_dry() {
        let limiter = default_controller_rate_limiter::<u32>();
        assert_eq!(limiter.when(&0), MS(5));
        assert_eq!(limiter.when(&0), MS(10));
        // 98 more distinct items use up the burst of 100 ...
        for item in 1..=98 {
            assert_eq!(limiter.when(&item), MS(5), "item {item}");
        }
        // ... then the bucket's 10 qps dominates the 5 ms exponential.
        assert_eq!(limiter.when(&1000), MS(100));
        assert_eq!(
            limiter.when(&0),
            MS(200),
            "exponential 20 ms < bucket 200 ms"
        );
        assert_eq!(limiter.num_requeues(&0), 3);
    }
}
