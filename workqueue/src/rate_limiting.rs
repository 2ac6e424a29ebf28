//! A delaying queue whose retries are paced by a [`RateLimiter`].
//!
//! # Why
//!
//! This is the queue a controller actually uses: on failure the worker calls
//! [`RateLimitingQueue::add_rate_limited`], which asks the limiter how long this item should
//! wait and schedules it; on success it calls [`RateLimitingQueue::forget`] so the item's
//! backoff starts from scratch next time. Either way the worker still calls `done`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use reflex_workqueue::limiter::ItemExponentialFailure;
//! use reflex_workqueue::rate_limiting::RateLimitingQueue;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), reflex_workqueue::delaying::DelayingError> {
//! let limiter = ItemExponentialFailure::new(Duration::from_millis(5), Duration::from_secs(60));
//! let queue: RateLimitingQueue<String> = RateLimitingQueue::new(limiter);
//! let _ = queue.add("default/web".to_string());
//!
//! let key = queue.get().await.unwrap();
//! // The reconcile failed: retry in 5 ms, then 10 ms, ...
//! let _ = queue.add_rate_limited(key.clone())?;
//! queue.done(&key);
//! assert_eq!(queue.num_requeues(&key), 1);
//!
//! let key = queue.get().await.unwrap(); // 5 ms later (on the paused clock)
//! // It worked this time.
//! queue.forget(&key);
//! queue.done(&key);
//! assert_eq!(queue.num_requeues(&key), 0);
//! # Ok(())
//! # }
//! ```

use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use crate::delaying::{DelayingError, DelayingQueue};
use crate::limiter::RateLimiter;
use crate::queue::{Added, Done, Queue, QueueConfig};

/// A [`DelayingQueue`] with a [`RateLimiter`]; see the [module documentation](self).
///
/// The handle is an `Arc` inside: clone it to share one queue.
pub struct RateLimitingQueue<T> {
    queue: DelayingQueue<T>,
    limiter: Arc<dyn RateLimiter<T>>,
}

impl<T> Clone for RateLimitingQueue<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            limiter: Arc::clone(&self.limiter),
        }
    }
}

impl<T> std::fmt::Debug for RateLimitingQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitingQueue")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl<T: Clone + Eq + Hash + Send + Sync + 'static> RateLimitingQueue<T> {
    /// A queue without a name or metrics, paced by `limiter`.
    pub fn new(limiter: impl RateLimiter<T> + 'static) -> Self {
        Self::with_config(limiter, QueueConfig::default())
    }

    /// A queue with a name and, optionally, a metrics provider, paced by `limiter`.
    pub fn with_config(limiter: impl RateLimiter<T> + 'static, config: QueueConfig) -> Self {
        Self {
            queue: DelayingQueue::with_config(config),
            limiter: Arc::new(limiter),
        }
    }

    /// Schedules `item` after the wait its limiter decides (which counts a failure).
    pub fn add_rate_limited(&self, item: T) -> Result<Added, DelayingError> {
        if self.queue.is_shutting_down() {
            return Ok(Added::ShuttingDown);
        }
        let wait = self.limiter.when(&item);
        self.queue.add_after(item, wait)
    }

    /// Clears the limiter's history of `item` (after a success); `done` is still needed.
    pub fn forget(&self, item: &T) {
        self.limiter.forget(item)
    }

    /// How many failures the limiter tracks for `item`.
    pub fn num_requeues(&self, item: &T) -> u32 {
        self.limiter.num_requeues(item)
    }

    /// See [`DelayingQueue::add_after`].
    pub fn add_after(&self, item: T, delay: Duration) -> Result<Added, DelayingError> {
        self.queue.add_after(item, delay)
    }

    /// See [`Queue::add`].
    pub fn add(&self, item: T) -> Added {
        self.queue.add(item)
    }

    /// See [`Queue::get`].
    pub async fn get(&self) -> Option<T> {
        self.queue.get().await
    }

    /// See [`Queue::done`].
    pub fn done(&self, item: &T) -> Done {
        self.queue.done(item)
    }

    /// See [`Queue::len`].
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// See [`Queue::is_empty`].
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// See [`DelayingQueue::waiting_len`].
    pub fn waiting_len(&self) -> usize {
        self.queue.waiting_len()
    }

    /// See [`Queue::is_shutting_down`].
    pub fn is_shutting_down(&self) -> bool {
        self.queue.is_shutting_down()
    }

    /// See [`DelayingQueue::shut_down`].
    pub fn shut_down(&self) {
        self.queue.shut_down()
    }

    /// See [`DelayingQueue::shut_down_with_drain`].
    pub async fn shut_down_with_drain(&self) {
        self.queue.shut_down_with_drain().await
    }

    /// The underlying queue (shares state with this handle).
    pub fn queue(&self) -> &Queue<T> {
        self.queue.queue()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{ItemExponentialFailure, ItemFastSlow};

    const MS: fn(u64) -> Duration = Duration::from_millis;

    async fn settle() {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn add_rate_limited_waits_as_long_as_the_limiter_says() {
        let queue = RateLimitingQueue::new(ItemExponentialFailure::new(MS(10), MS(1000)));
        // Delays 10, 20, 40 ms: the item is due exactly then, not before.
        for (attempt, delay) in [(1, 10), (2, 20), (3, 40)] {
            assert_eq!(queue.add_rate_limited("x"), Ok(Added::Scheduled));
            assert_eq!(queue.num_requeues(&"x"), attempt);
            settle().await;
            tokio::time::advance(MS(delay - 1)).await;
            settle().await;
            assert_eq!(queue.len(), 0, "attempt {attempt}: early");
            tokio::time::advance(MS(1)).await;
            settle().await;
            assert_eq!(queue.len(), 1, "attempt {attempt}: due");
            let item = queue.get().await.unwrap();
            assert_eq!(queue.done(&item), Done::Finished);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn forget_resets_the_backoff_of_an_item() {
        let queue = RateLimitingQueue::new(ItemFastSlow::new(MS(1), MS(100), 1));
        let _ = queue.add_rate_limited(5).unwrap();
        let _ = queue.add_rate_limited(5).unwrap();
        assert_eq!(queue.num_requeues(&5), 2);
        queue.forget(&5);
        assert_eq!(queue.num_requeues(&5), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limited_add_after_shutdown_is_refused_without_counting() {
        let queue = RateLimitingQueue::new(ItemExponentialFailure::new(MS(1), MS(10)));
        queue.shut_down();
        assert_eq!(queue.add_rate_limited(1), Ok(Added::ShuttingDown));
        assert_eq!(queue.num_requeues(&1), 0);
    }
}
