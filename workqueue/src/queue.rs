//! The deduplicating work queue that every controller worker pulls from.
//!
//! # Why it looks like this
//!
//! A controller does not process *events*, it processes *keys*: whatever happened to an object
//! since the last time, the reconcile function reads the current state from a lister. So the
//! queue stores each key once however often it is added, and it never hands one key to two
//! workers at the same time (two reconciles of one object racing each other would write
//! conflicting updates). This is client-go's `workqueue.Typed` contract, re-expressed for async
//! Rust.
//!
//! # Contract
//!
//! A [`Queue`] tracks three things: the FIFO of waiting items, the set of *dirty* items (added
//! and not yet handed out) and the set of items being *processed* (handed out by
//! [`Queue::get`], not yet [`Queue::done`]).
//!
//! - **Stored once.** An item that is waiting is stored once however often it is added
//!   ([`Added::AlreadyQueued`]).
//! - **Never held twice.** An item added while it is being processed is *not* queued; it is
//!   remembered as dirty and queued by [`Queue::done`] ([`Added::AfterDone`],
//!   [`Done::Requeued`]). Any number of adds during one processing produce exactly one more run.
//! - **FIFO.** Distinct items are handed out in the order they were first queued.
//! - **One wake per item.** Each queued item wakes exactly one waiting [`Queue::get`]
//!   (`tokio::sync::Notify::notify_one`), so eight idle workers are not all woken for one item.
//! - **`shut_down` drops waiting work.** [`Queue::shut_down`] discards every waiting item, wakes
//!   every waiting worker, and from then on `get` returns `None`. Items already handed out may
//!   still be passed to `done`; they are never queued again. (client-go's `ShutDown` lets
//!   queued items drain; Reflex's design chose the prompt stop, and offers the drain
//!   explicitly.)
//! - **`shut_down_with_drain` finishes the work.** [`Queue::shut_down_with_drain`] refuses new
//!   adds but keeps handing out what is queued, including items that were re-added while being
//!   processed (they were added before the shutdown). `get` returns `None` once no dirty item is
//!   left, so a worker never exits while work it could do may still appear. The future resolves
//!   once nothing is queued and nothing is being processed. A later [`Queue::shut_down`]
//!   releases it early (and drops what is still queued).
//! - **Misuse is answered, not punished.** An add after shutdown is ignored and returns
//!   [`Added::ShuttingDown`]. A `done` for an item that is not being processed is a no-op that
//!   returns [`Done::NotProcessing`], logs a `tracing` warning with the queue name and counts it
//!   ([`Queue::unexpected_done_count`] and [`QueueMetrics::unexpected_done`]).
//!
//! # Example
//!
//! ```
//! use reflex_workqueue::queue::{Added, Queue};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let queue: Queue<String> = Queue::new();
//! assert_eq!(queue.add("default/web".to_string()), Added::Queued);
//! assert_eq!(queue.add("default/web".to_string()), Added::AlreadyQueued);
//!
//! let worker = {
//!     let queue = queue.clone();
//!     tokio::spawn(async move {
//!         let mut handled = Vec::new();
//!         while let Some(key) = queue.get().await {
//!             handled.push(key.clone()); // reconcile(key) would run here
//!             queue.done(&key);
//!         }
//!         handled
//!     })
//! };
//! queue.shut_down_with_drain().await;
//! assert_eq!(worker.await.unwrap(), vec!["default/web".to_string()]);
//! # }
//! ```

use std::collections::{HashMap, VecDeque};

use crate::hash::{RandomState, random_state};
use std::hash::Hash;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::metrics::{MetricsProvider, QueueMetrics};

/// How often the unfinished-work and longest-running gauges are refreshed when a metrics
/// provider is configured (client-go uses the same period).
pub const UNFINISHED_WORK_UPDATE_PERIOD: Duration = Duration::from_millis(500);

/// What [`Queue::add`] (and the delaying and rate-limited adds) did with an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "an add can be refused after shutdown"]
pub enum Added {
    /// The item was not known and is now waiting at the back of the queue.
    Queued,
    /// The item was already waiting; nothing changed (it keeps its place).
    AlreadyQueued,
    /// The item is being processed; it will be queued again when `done` is called for it.
    AfterDone,
    /// The item waits for its deadline in a delaying queue (a new entry, or an existing one
    /// moved earlier).
    Scheduled,
    /// The item already waits in a delaying queue for an earlier (or equal) deadline, which it
    /// keeps.
    AlreadyScheduledSooner,
    /// The queue is shutting down; the item was ignored.
    ShuttingDown,
}

impl Added {
    /// True unless the item was refused because the queue is shutting down.
    pub fn is_accepted(self) -> bool {
        self != Added::ShuttingDown
    }
}

/// What [`Queue::done`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// The item finished processing and is no longer known to the queue.
    Finished,
    /// The item finished processing and, because it was added meanwhile, is queued again.
    Requeued,
    /// The item was not being processed: nothing changed; a warning was logged and counted.
    NotProcessing,
}

/// Options for [`Queue::with_config`] (and the delaying and rate-limited queues).
#[derive(Clone, Default)]
pub struct QueueConfig {
    /// The queue's name, used as the `name` label of its metrics and in log events.
    pub name: String,
    /// Where the queue reports its metrics; `None` reports nothing and skips the timestamps
    /// that metrics need.
    pub metrics: Option<Arc<dyn MetricsProvider>>,
}

impl std::fmt::Debug for QueueConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueConfig")
            .field("name", &self.name)
            .field("metrics", &self.metrics.is_some())
            .finish()
    }
}

/// A deduplicating, fair work queue; see the [module documentation](self) for the contract.
///
/// The handle is an `Arc` inside: clone it to share one queue between producers and workers.
pub struct Queue<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct("Queue")
            .field("name", &self.inner.name)
            .field("len", &state.queue.len())
            .field("processing", &state.processing.len())
            .field("shutting_down", &state.shutting_down)
            .finish()
    }
}

struct Inner<T> {
    name: String,
    state: Mutex<State<T>>,
    /// Woken once per queued item, and for everyone on shutdown.
    item_ready: Notify,
    /// Woken when a drain may have completed.
    drained: Notify,
    metrics: Option<Arc<dyn QueueMetrics>>,
    unexpected_done: AtomicU64,
    refresher: Mutex<Option<JoinHandle<()>>>,
}

impl<T> Drop for Inner<T> {
    fn drop(&mut self) {
        if let Some(task) = self.refresher.get_mut().take() {
            task.abort();
        }
    }
}

struct State<T> {
    /// Waiting items, in order. Every item here is also in `dirty`.
    queue: VecDeque<T>,
    /// Items added and not yet handed out, with the time of their first add when metrics are
    /// on. Includes items being processed that were added again meanwhile.
    dirty: HashMap<T, Option<Instant>, RandomState>,
    /// Items handed out and not yet done, with the time they were handed out when metrics
    /// are on.
    processing: HashMap<T, Option<Instant>, RandomState>,
    shutting_down: bool,
    drain: bool,
}

impl<T: Clone + Eq + Hash + Send + Sync + 'static> Default for Queue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone + Eq + Hash + Send + Sync + 'static> Queue<T> {
    /// A queue without a name or metrics.
    pub fn new() -> Self {
        Self::with_config(QueueConfig::default())
    }

    /// A queue with a name and, optionally, a metrics provider.
    ///
    /// With a provider and inside a tokio runtime, a small task owned by the queue refreshes
    /// the unfinished-work gauges every [`UNFINISHED_WORK_UPDATE_PERIOD`]; it stops at shutdown
    /// or when the last handle is dropped. Outside a runtime call
    /// [`Queue::update_unfinished_work`] yourself.
    pub fn with_config(config: QueueConfig) -> Self {
        let metrics = config
            .metrics
            .as_ref()
            .map(|provider| provider.queue_metrics(&config.name));
        let inner = Arc::new(Inner {
            name: config.name,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashMap::with_hasher(random_state()),
                processing: HashMap::with_hasher(random_state()),
                shutting_down: false,
                drain: false,
            }),
            item_ready: Notify::new(),
            drained: Notify::new(),
            metrics,
            unexpected_done: AtomicU64::new(0),
            refresher: Mutex::new(None),
        });
        if inner.metrics.is_some()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let task = runtime.spawn(refresh_unfinished_work(Arc::downgrade(&inner)));
            *inner.refresher.lock() = Some(task);
        }
        Self { inner }
    }

    /// The name given in [`QueueConfig`] (empty by default).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Adds an item; see [`Added`] for the possible outcomes.
    pub fn add(&self, item: T) -> Added {
        let outcome = {
            let mut state = self.inner.state.lock();
            if state.shutting_down {
                Added::ShuttingDown
            } else if state.dirty.contains_key(&item) {
                if state.processing.contains_key(&item) {
                    Added::AfterDone
                } else {
                    Added::AlreadyQueued
                }
            } else {
                let now = self.inner.metrics.as_ref().map(|_| Instant::now());
                if let Some(metrics) = &self.inner.metrics {
                    metrics.added();
                }
                if state.processing.contains_key(&item) {
                    state.dirty.insert(item, now);
                    Added::AfterDone
                } else {
                    state.dirty.insert(item.clone(), now);
                    state.queue.push_back(item);
                    if let Some(metrics) = &self.inner.metrics {
                        metrics.depth(state.queue.len());
                    }
                    Added::Queued
                }
            }
        };
        if outcome == Added::Queued {
            self.inner.item_ready.notify_one();
        }
        outcome
    }

    /// Waits for the next item and marks it as being processed; the caller must pass it to
    /// [`Queue::done`] when finished.
    ///
    /// Returns `None` after [`Queue::shut_down`], and after [`Queue::shut_down_with_drain`]
    /// once no dirty item is left. Cancel-safe: dropping the future never loses an item.
    pub async fn get(&self) -> Option<T> {
        loop {
            let notified = self.inner.item_ready.notified();
            tokio::pin!(notified);
            // Register before looking at the state, so an add between the check and the await
            // still wakes us.
            notified.as_mut().enable();
            let mut wake_all = false;
            let taken = {
                let mut state = self.inner.state.lock();
                if state.shutting_down && !state.drain {
                    return None;
                }
                match state.queue.pop_front() {
                    Some(item) => {
                        let added_at = state.dirty.remove(&item).flatten();
                        let now = self.inner.metrics.as_ref().map(|_| Instant::now());
                        if let Some(metrics) = &self.inner.metrics {
                            metrics.depth(state.queue.len());
                            if let (Some(added_at), Some(now)) = (added_at, now) {
                                metrics.latency(now.saturating_duration_since(added_at));
                            }
                        }
                        state.processing.insert(item.clone(), now);
                        // In a drain, the last dirty item handed out releases every idle worker.
                        wake_all = state.shutting_down && state.dirty.is_empty();
                        Some(item)
                    }
                    None if state.shutting_down && state.dirty.is_empty() => return None,
                    None => None,
                }
            };
            if wake_all {
                self.inner.item_ready.notify_waiters();
            }
            if taken.is_some() {
                return taken;
            }
            notified.await;
        }
    }

    /// Marks an item as no longer being processed; see [`Done`] for the possible outcomes.
    pub fn done(&self, item: &T) -> Done {
        let (outcome, drained) = {
            let mut state = self.inner.state.lock();
            let Some(started) = state.processing.remove(item) else {
                drop(state);
                let count = self.inner.unexpected_done.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(metrics) = &self.inner.metrics {
                    metrics.unexpected_done();
                }
                tracing::warn!(
                    queue = %self.inner.name,
                    unexpected_done_total = count,
                    "done called for an item that is not being processed; ignored"
                );
                return Done::NotProcessing;
            };
            if let (Some(metrics), Some(started)) = (&self.inner.metrics, started) {
                metrics.work_duration(Instant::now().saturating_duration_since(started));
            }
            let outcome = if state.dirty.contains_key(item) {
                state.queue.push_back(item.clone());
                if let Some(metrics) = &self.inner.metrics {
                    metrics.depth(state.queue.len());
                }
                Done::Requeued
            } else {
                Done::Finished
            };
            let drained =
                state.shutting_down && state.processing.is_empty() && state.queue.is_empty();
            (outcome, drained)
        };
        if outcome == Done::Requeued {
            self.inner.item_ready.notify_one();
        }
        if drained {
            self.inner.drained.notify_waiters();
        }
        outcome
    }

    /// The number of items waiting to be handed out (not counting items being processed).
    pub fn len(&self) -> usize {
        self.inner.state.lock().queue.len()
    }

    /// True when no item is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of items handed out and not yet done.
    pub fn processing_len(&self) -> usize {
        self.inner.state.lock().processing.len()
    }

    /// How many times `done` was called for an item that was not being processed.
    pub fn unexpected_done_count(&self) -> u64 {
        self.inner.unexpected_done.load(Ordering::Relaxed)
    }

    /// Stops the queue now: waiting items are dropped, every waiting [`Queue::get`] returns
    /// `None`, later adds are refused. Items being processed may still be passed to `done`.
    pub fn shut_down(&self) {
        {
            let mut state = self.inner.state.lock();
            state.shutting_down = true;
            state.drain = false;
            state.queue.clear();
            state.dirty.clear();
            if let Some(metrics) = &self.inner.metrics {
                metrics.depth(0);
            }
        }
        self.stop_refresher();
        self.inner.item_ready.notify_waiters();
        self.inner.drained.notify_waiters();
    }

    /// Stops taking new items, lets workers finish what is queued and in flight, and resolves
    /// once nothing is queued or being processed (or when [`Queue::shut_down`] is called).
    ///
    /// Workers that never call `done` keep this future pending; wrap it in a timeout and call
    /// `shut_down` if you cannot trust them.
    pub async fn shut_down_with_drain(&self) {
        let wake_getters = {
            let mut state = self.inner.state.lock();
            if !state.shutting_down {
                state.shutting_down = true;
                state.drain = true;
            }
            state.dirty.is_empty()
        };
        if wake_getters {
            self.inner.item_ready.notify_waiters();
        }
        loop {
            let notified = self.inner.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.inner.state.lock();
                let finished = state.queue.is_empty() && state.processing.is_empty();
                if finished || !state.drain {
                    break;
                }
            }
            notified.await;
        }
        self.stop_refresher();
    }

    /// True once either shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.state.lock().shutting_down
    }

    /// Reports the unfinished-work and longest-running gauges now (a no-op without metrics).
    pub fn update_unfinished_work(&self) {
        update_unfinished(&self.inner);
    }

    pub(crate) fn metrics(&self) -> Option<&Arc<dyn QueueMetrics>> {
        self.inner.metrics.as_ref()
    }

    fn stop_refresher(&self) {
        if let Some(task) = self.inner.refresher.lock().take() {
            task.abort();
        }
    }
}

fn update_unfinished<T>(inner: &Inner<T>) {
    let Some(metrics) = &inner.metrics else {
        return;
    };
    let now = Instant::now();
    let (total, longest) = {
        let state = inner.state.lock();
        state
            .processing
            .values()
            .flatten()
            .map(|started| now.saturating_duration_since(*started).as_secs_f64())
            .fold((0.0_f64, 0.0_f64), |(total, longest), secs| {
                (total + secs, longest.max(secs))
            })
    };
    metrics.unfinished_work(total, longest);
}

async fn refresh_unfinished_work<T>(inner: Weak<Inner<T>>) {
    let mut tick = tokio::time::interval(UNFINISHED_WORK_UPDATE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let _span =
            tracing::trace_span!("workqueue_metrics_refresh", queue = %inner.name).entered();
        update_unfinished(&inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_item_is_stored_once_however_often_added() {
        let queue = Queue::new();
        assert_eq!(queue.add(1), Added::Queued);
        assert_eq!(queue.add(1), Added::AlreadyQueued);
        assert_eq!(queue.add(1), Added::AlreadyQueued);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.get().await, Some(1));
        assert_eq!(queue.len(), 0);
    }

    #[tokio::test]
    async fn re_added_while_processing_runs_once_more_after_done() {
        let queue = Queue::new();
        let _ = queue.add("a");
        assert_eq!(queue.get().await, Some("a"));
        assert_eq!(queue.add("a"), Added::AfterDone);
        assert_eq!(queue.add("a"), Added::AfterDone);
        assert_eq!(
            queue.len(),
            0,
            "not handed to a second worker while processing"
        );
        assert_eq!(queue.done(&"a"), Done::Requeued);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.get().await, Some("a"));
        assert_eq!(queue.done(&"a"), Done::Finished);
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn distinct_items_come_out_in_fifo_order() {
        let queue = Queue::new();
        for item in [3, 1, 2, 1, 3] {
            let _ = queue.add(item);
        }
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(queue.get().await.unwrap());
        }
        assert_eq!(out, vec![3, 1, 2]);
    }

    #[tokio::test]
    async fn done_for_an_item_not_processing_is_a_counted_no_op() {
        let queue = Queue::new();
        let _ = queue.add(7);
        assert_eq!(
            queue.done(&7),
            Done::NotProcessing,
            "queued, not processing"
        );
        assert_eq!(queue.done(&8), Done::NotProcessing, "unknown");
        assert_eq!(queue.unexpected_done_count(), 2);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.get().await, Some(7));
    }

    #[tokio::test]
    async fn shut_down_drops_waiting_items_and_refuses_adds() {
        let queue = Queue::new();
        let _ = queue.add(1);
        let _ = queue.add(2);
        queue.shut_down();
        assert!(queue.is_shutting_down());
        assert_eq!(queue.len(), 0);
        assert_eq!(queue.get().await, None);
        assert_eq!(queue.add(3), Added::ShuttingDown);
        assert!(!Added::ShuttingDown.is_accepted());
    }

    #[tokio::test]
    async fn in_flight_item_done_after_shut_down_is_not_requeued() {
        let queue = Queue::new();
        let _ = queue.add(1);
        let item = queue.get().await.unwrap();
        let _ = queue.add(1);
        queue.shut_down();
        assert_eq!(queue.done(&item), Done::Finished);
        assert_eq!(queue.len(), 0);
    }
}
