//! # reflex-workqueue
//!
//! Work queues for Kubernetes controllers: a deduplicating queue, a delaying queue, a
//! rate-limited queue and a priority queue, with rate limiters and metrics hooks. The semantics
//! are client-go's `util/workqueue` (and controller-runtime's priority queue, with aging),
//! re-expressed for async Rust.
//!
//! | module | concept |
//! |---|---|
//! | [`queue`] | [`Queue`]: stores each key once, never hands one key to two workers, FIFO, shutdown with or without drain |
//! | [`delaying`] | [`DelayingQueue`]: `add_after`, one owned timer task over a heap, earliest deadline wins |
//! | [`rate_limiting`] | [`RateLimitingQueue`]: `add_rate_limited`, `forget`, `num_requeues` |
//! | [`priority`] | [`PriorityQueue`]: highest priority first with aging (bounded wait), delays and rate limits in one queue |
//! | [`limiter`] | [`RateLimiter`] and the limiters: exponential, fast-slow, token bucket, max-of, the controller default |
//! | [`metrics`] | [`MetricsProvider`] hooks and their Prometheus implementation |
//!
//! Every queue handle is an `Arc` inside: clone it to share one queue between the event
//! handlers that add keys and the workers that process them.
//!
//! # Example: a controller's work loop
//!
//! ```
//! use reflex_workqueue::{RateLimitingQueue, default_controller_rate_limiter};
//!
//! async fn reconcile(key: &str) -> Result<(), String> {
//!     if key.ends_with("broken") { Err(format!("cannot reconcile {key}")) } else { Ok(()) }
//! }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() {
//! let queue: RateLimitingQueue<String> =
//!     RateLimitingQueue::new(default_controller_rate_limiter());
//!
//! let workers: Vec<_> = (0..2)
//!     .map(|_| {
//!         let queue = queue.clone();
//!         tokio::spawn(async move {
//!             let (mut reconciled, mut failed) = (0, 0);
//!             while let Some(key) = queue.get().await {
//!                 match reconcile(&key).await {
//!                     Ok(()) => queue.forget(&key),
//!                     // Retry later, with per-key backoff; refused once shutting down.
//!                     Err(_) => {
//!                         failed += 1;
//!                         let _ = queue.add_rate_limited(key.clone());
//!                     }
//!                 }
//!                 queue.done(&key);
//!                 reconciled += 1;
//!             }
//!             (reconciled, failed)
//!         })
//!     })
//!     .collect();
//!
//! // Event handlers enqueue keys; duplicates of a waiting key are stored once.
//! for key in ["default/web", "default/db", "default/web", "default/broken"] {
//!     let _ = queue.add(key.to_string());
//! }
//! // Stop taking new work, let queued and in-flight keys finish, then the workers exit.
//! queue.shut_down_with_drain().await;
//! let (mut total, mut failures) = (0, 0);
//! for worker in workers {
//!     let (reconciled, failed) = worker.await.unwrap();
//!     total += reconciled;
//!     failures += failed;
//! }
//! // Every key queued before the drain was reconciled; the broken one failed at least once.
//! assert!(total >= 3);
//! assert!(failures >= 1);
//! # }
//! ```

pub mod delaying;
mod hash;
pub mod limiter;
pub mod metrics;
pub mod priority;
pub mod queue;
pub mod rate_limiting;
mod waiters;

pub use delaying::{DelayingError, DelayingQueue};
pub use limiter::{
    Bucket, ItemExponentialFailure, ItemFastSlow, LimiterError, MaxOf, RateLimiter, WithMaxWait,
    default_controller_rate_limiter,
};
pub use metrics::{
    MetricsProvider, NoopMetricsProvider, PriorityClass, PrometheusMetricsProvider, QueueMetrics,
};
pub use priority::{AddOpts, PriorityQueue, PriorityQueueConfig};
pub use queue::{Added, Done, Queue, QueueConfig};
pub use rate_limiting::RateLimitingQueue;
