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
//! A [`Queue`] tracks the FIFO of waiting items and, in one map, the state of every item it
//! knows: *waiting* (added and not yet handed out), being *processed* (handed out by
//! [`Queue::get`], not yet [`Queue::done`]), or being processed and *dirty* again (added
//! meanwhile). Items are hashed with foldhash, seeded at random per map.
//!
//! - **Stored once.** An item that is waiting is stored once however often it is added
//!   ([`Added::AlreadyQueued`]).
//! - **Never held twice.** An item added while it is being processed is *not* queued; it is
//!   remembered as dirty and queued by [`Queue::done`] ([`Added::AfterDone`],
//!   [`Done::Requeued`]). Any number of adds during one processing produce exactly one more run.
//! - **FIFO.** Distinct items are handed out in the order they were first queued.
//! - **One wake per item.** Each queued item wakes at most one waiting [`Queue::get`], and none
//!   when a getter already woken (or about to look) will take it, so eight idle workers are not
//!   all woken for one item. A woken `get` that is cancelled hands its wake-up to another one.
//! - **Idle getters spin briefly, never long.** A `get` that finds nothing watches for the next
//!   add for a few microseconds (a bounded loop of spin-loop hints, one getter at a time)
//!   before it sleeps: when items arrive about as fast as workers take them, that saves parking
//!   and unparking a thread per item.
//! - **Depth is client-go's.** The depth metric ([`QueueMetrics::depth`]) counts items added and
//!   not yet handed out, including items being processed that were added again (they are
//!   handed out after `done`). [`Queue::len`] counts only the items waiting in the FIFO.
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

use std::collections::VecDeque;

use crate::hash::{RandomState, random_state};
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hashbrown::HashMap;
use hashbrown::hash_map::{Entry as MapEntry, EntryRef};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::metrics::{MetricsProvider, QueueMetrics};
use crate::waiters::{SpinSignal, WaitId, Waiters, spin_until};

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
            .field("processing", &state.processing)
            .field("waiting_getters", &state.waiters.waiting())
            .field("shutting_down", &state.shutting_down)
            .finish()
    }
}

struct Inner<T> {
    name: String,
    state: Mutex<State<T>>,
    /// Woken when a drain may have completed.
    drained: Notify,
    metrics: Option<Arc<dyn QueueMetrics>>,
    /// Set by an add while a getter spins (see [`spin_until`]).
    spin_signal: SpinSignal,
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
    /// Waiting items, in order. Every item here has an [`Entry::Queued`] entry in `items`.
    queue: VecDeque<T>,
    /// Every item the queue knows: waiting, or handed out and not yet done.
    items: HashMap<T, Entry, RandomState>,
    /// Items handed out and not yet done ([`Entry::Processing`] and
    /// [`Entry::ProcessingDirty`]).
    processing: usize,
    /// Items handed out and added again meanwhile ([`Entry::ProcessingDirty`]).
    dirty_processing: usize,
    /// Getters waiting for an item.
    waiters: Waiters,
    /// True while one idle getter spins, watching for the next add before it sleeps.
    spinning: bool,
    /// Timestamps for the metrics (`None` without metrics).
    stamps: Option<Stamps<T>>,
    shutting_down: bool,
    drain: bool,
}

/// What the queue knows of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// Waiting in the FIFO.
    Queued,
    /// Handed out.
    Processing,
    /// Handed out and added again meanwhile: queued again by `done`.
    ProcessingDirty,
}

/// The timestamps metrics need, kept only when a metrics provider is configured (as client-go's
/// metrics keep their own maps), so a queue without metrics never reads the clock.
struct Stamps<T> {
    /// When each dirty item was first added.
    added: HashMap<T, Instant, RandomState>,
    /// When each item being processed was handed out.
    started: HashMap<T, Instant, RandomState>,
}

impl<T: Clone + Eq + Hash> Stamps<T> {
    fn new() -> Self {
        Self {
            added: HashMap::with_hasher(random_state()),
            started: HashMap::with_hasher(random_state()),
        }
    }
}

impl<T> State<T> {
    /// client-go's depth: items added and not yet handed out, including items being processed
    /// that were added again (they will be handed out after `done`).
    fn depth(&self) -> usize {
        self.queue.len() + self.dirty_processing
    }

    /// True when no item waits to be handed out now or after a `done`.
    fn nothing_dirty(&self) -> bool {
        self.queue.is_empty() && self.dirty_processing == 0
    }

    /// The getter to wake for an item just queued: one per item, and none when enough getters
    /// are already woken for the items waiting.
    fn wake_for_new_item(&mut self, spin_signal: &SpinSignal) -> Option<Waker> {
        if self.spinning {
            spin_signal.set();
        }
        if self
            .waiters
            .should_wake(self.queue.len(), usize::from(self.spinning))
        {
            self.waiters.wake_one()
        } else {
            None
        }
    }
}

impl<T: Clone + Eq + Hash> State<T> {
    /// Hands out the next waiting item, if any: it becomes [`Entry::Processing`].
    fn take_next(&mut self, metrics: Option<&Arc<dyn QueueMetrics>>) -> Option<T> {
        let item = self.queue.pop_front()?;
        match self.items.get_mut(&item) {
            Some(entry) => *entry = Entry::Processing,
            // Not reachable: every queued item has an entry.
            None => {
                self.items.insert(item.clone(), Entry::Processing);
            }
        }
        self.processing += 1;
        if let (Some(metrics), Some(stamps)) = (metrics, self.stamps.as_mut()) {
            let now = Instant::now();
            metrics.depth(self.queue.len() + self.dirty_processing);
            if let Some(added_at) = stamps.added.remove(&item) {
                metrics.latency(now.saturating_duration_since(added_at));
            }
            stamps.started.insert(item.clone(), now);
        }
        Some(item)
    }

    /// Records the first add of a dirty item (with metrics).
    fn stamp_added(&mut self, item: &T) {
        if let Some(stamps) = self.stamps.as_mut() {
            stamps.added.insert(item.clone(), Instant::now());
        }
    }

    /// Forgets every waiting item, and that items being processed were added again.
    fn drop_waiting(&mut self) {
        self.queue.clear();
        self.items.retain(|_, entry| match *entry {
            Entry::Queued => false,
            Entry::Processing => true,
            Entry::ProcessingDirty => {
                *entry = Entry::Processing;
                true
            }
        });
        self.dirty_processing = 0;
        if let Some(stamps) = self.stamps.as_mut() {
            stamps.added.clear();
        }
    }
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
                items: HashMap::with_hasher(random_state()),
                processing: 0,
                dirty_processing: 0,
                waiters: Waiters::default(),
                spinning: false,
                stamps: metrics.as_ref().map(|_| Stamps::new()),
                shutting_down: false,
                drain: false,
            }),
            drained: Notify::new(),
            metrics,
            spin_signal: SpinSignal::default(),
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
        let metrics = self.inner.metrics.as_ref();
        let mut guard = self.inner.state.lock();
        let state = &mut *guard;
        if state.shutting_down {
            return Added::ShuttingDown;
        }
        match state.items.entry(item) {
            MapEntry::Occupied(mut occupied) => match *occupied.get() {
                Entry::Queued => Added::AlreadyQueued,
                Entry::ProcessingDirty => Added::AfterDone,
                Entry::Processing => {
                    *occupied.get_mut() = Entry::ProcessingDirty;
                    state.dirty_processing += 1;
                    if let Some(metrics) = metrics {
                        let item = occupied.key().clone();
                        state.stamp_added(&item);
                        metrics.added();
                        metrics.depth(state.depth());
                    }
                    Added::AfterDone
                }
            },
            MapEntry::Vacant(vacant) => {
                let item = vacant.key().clone();
                vacant.insert(Entry::Queued);
                if let Some(metrics) = metrics {
                    state.stamp_added(&item);
                    metrics.added();
                    metrics.depth(state.depth() + 1);
                }
                state.queue.push_back(item);
                let wake = state.wake_for_new_item(&self.inner.spin_signal);
                drop(guard);
                if let Some(waker) = wake {
                    waker.wake();
                }
                Added::Queued
            }
        }
    }

    /// Waits for the next item and marks it as being processed; the caller must pass it to
    /// [`Queue::done`] when finished.
    ///
    /// Returns `None` after [`Queue::shut_down`], and after [`Queue::shut_down_with_drain`]
    /// once no dirty item is left. Cancel-safe: dropping the future never loses an item.
    pub async fn get(&self) -> Option<T> {
        Get {
            inner: &self.inner,
            wait: None,
        }
        .await
    }

    /// Marks an item as no longer being processed; see [`Done`] for the possible outcomes.
    pub fn done(&self, item: &T) -> Done {
        let metrics = self.inner.metrics.as_ref();
        let (outcome, drained, wake) = {
            let mut guard = self.inner.state.lock();
            let state = &mut *guard;
            let outcome = match state.items.entry_ref(item) {
                EntryRef::Occupied(mut occupied) => match *occupied.get() {
                    Entry::Processing => {
                        occupied.remove();
                        state.processing -= 1;
                        Done::Finished
                    }
                    Entry::ProcessingDirty => {
                        *occupied.get_mut() = Entry::Queued;
                        state.processing -= 1;
                        state.dirty_processing -= 1;
                        state.queue.push_back(item.clone());
                        Done::Requeued
                    }
                    Entry::Queued => Done::NotProcessing,
                },
                EntryRef::Vacant(_) => Done::NotProcessing,
            };
            if outcome == Done::NotProcessing {
                drop(guard);
                return self.unexpected_done();
            }
            if let (Some(metrics), Some(stamps)) = (metrics, state.stamps.as_mut())
                && let Some(started) = stamps.started.remove(item)
            {
                metrics.work_duration(Instant::now().saturating_duration_since(started));
            }
            let drained = state.shutting_down && state.processing == 0 && state.queue.is_empty();
            let wake = match outcome {
                Done::Requeued => state.wake_for_new_item(&self.inner.spin_signal),
                _ => None,
            };
            (outcome, drained, wake)
        };
        if let Some(waker) = wake {
            waker.wake();
        }
        if drained {
            self.inner.drained.notify_waiters();
        }
        outcome
    }

    fn unexpected_done(&self) -> Done {
        let count = self.inner.unexpected_done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(metrics) = &self.inner.metrics {
            metrics.unexpected_done();
        }
        tracing::warn!(
            queue = %self.inner.name,
            unexpected_done_total = count,
            "done called for an item that is not being processed; ignored"
        );
        Done::NotProcessing
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
        self.inner.state.lock().processing
    }

    /// How many times `done` was called for an item that was not being processed.
    pub fn unexpected_done_count(&self) -> u64 {
        self.inner.unexpected_done.load(Ordering::Relaxed)
    }

    /// Stops the queue now: waiting items are dropped, every waiting [`Queue::get`] returns
    /// `None`, later adds are refused. Items being processed may still be passed to `done`.
    pub fn shut_down(&self) {
        let wakers = {
            let mut state = self.inner.state.lock();
            state.shutting_down = true;
            state.drain = false;
            state.drop_waiting();
            if let Some(metrics) = &self.inner.metrics {
                metrics.depth(0);
            }
            state.waiters.wake_all()
        };
        self.stop_refresher();
        wake_every(wakers);
        self.inner.drained.notify_waiters();
    }

    /// Stops taking new items, lets workers finish what is queued and in flight, and resolves
    /// once nothing is queued or being processed (or when [`Queue::shut_down`] is called).
    ///
    /// Workers that never call `done` keep this future pending; wrap it in a timeout and call
    /// `shut_down` if you cannot trust them.
    pub async fn shut_down_with_drain(&self) {
        let wakers = {
            let mut state = self.inner.state.lock();
            if !state.shutting_down {
                state.shutting_down = true;
                state.drain = true;
            }
            if state.nothing_dirty() {
                state.waiters.wake_all()
            } else {
                Vec::new()
            }
        };
        wake_every(wakers);
        loop {
            let notified = self.inner.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.inner.state.lock();
                let finished = state.queue.is_empty() && state.processing == 0;
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

fn wake_every(wakers: Vec<Waker>) {
    for waker in wakers {
        waker.wake();
    }
}

/// The future of [`Queue::get`]: takes an item under the state lock, or registers as a waiter
/// in the same critical section (so no wake-up is lost between the check and the wait).
struct Get<'a, T> {
    inner: &'a Inner<T>,
    wait: Option<WaitId>,
}

impl<T: Clone + Eq + Hash> Future for Get<'_, T> {
    type Output = Option<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let inner = self.inner;
        let mut spun = false;
        loop {
            let mut guard = inner.state.lock();
            let state = &mut *guard;
            if spun {
                state.spinning = false;
            }
            if state.shutting_down && !state.drain {
                if let Some(id) = self.wait.take() {
                    let _ = state.waiters.release(id);
                }
                return Poll::Ready(None);
            }
            if let Some(item) = state.take_next(inner.metrics.as_ref()) {
                if let Some(id) = self.wait.take() {
                    let _ = state.waiters.release(id);
                }
                // In a drain, the last dirty item handed out releases every idle worker.
                let wakers = if state.shutting_down && state.nothing_dirty() {
                    state.waiters.wake_all()
                } else {
                    Vec::new()
                };
                drop(guard);
                wake_every(wakers);
                return Poll::Ready(Some(item));
            }
            if state.shutting_down && state.nothing_dirty() {
                if let Some(id) = self.wait.take() {
                    let _ = state.waiters.release(id);
                }
                return Poll::Ready(None);
            }
            if !spun && !state.spinning {
                // Nothing waiting: before sleeping, watch briefly for the next add (one
                // getter at a time), which saves parking and unparking a thread when items
                // trickle in about as fast as workers take them.
                state.spinning = true;
                inner.spin_signal.reset();
                drop(guard);
                spin_until(&inner.spin_signal);
                spun = true;
                continue;
            }
            match self.wait {
                Some(id) => state.waiters.rearm(id, cx.waker()),
                None => {
                    let id = state.waiters.register(cx.waker());
                    drop(guard);
                    self.wait = Some(id);
                }
            }
            return Poll::Pending;
        }
    }
}

impl<T> Drop for Get<'_, T> {
    fn drop(&mut self) {
        let Some(id) = self.wait.take() else {
            return;
        };
        let wake = {
            let mut state = self.inner.state.lock();
            // A wake-up meant for an item still waiting goes to another getter.
            if state.waiters.release(id) && !state.queue.is_empty() {
                state.waiters.wake_one()
            } else {
                None
            }
        };
        if let Some(waker) = wake {
            waker.wake();
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
            .stamps
            .iter()
            .flat_map(|stamps| stamps.started.values())
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

    /// Records every depth the queue reports.
    #[derive(Default)]
    struct DepthRecorder {
        depths: parking_lot::Mutex<Vec<usize>>,
        adds: AtomicU64,
    }

    impl QueueMetrics for DepthRecorder {
        fn depth(&self, depth: usize) {
            self.depths.lock().push(depth);
        }
        fn added(&self) {
            self.adds.fetch_add(1, Ordering::Relaxed);
        }
    }

    struct Recording(Arc<DepthRecorder>);

    impl MetricsProvider for Recording {
        fn queue_metrics(&self, _name: &str) -> Arc<dyn QueueMetrics> {
            self.0.clone()
        }
    }

    fn recorded_queue() -> (Queue<&'static str>, Arc<DepthRecorder>) {
        let recorder = Arc::new(DepthRecorder::default());
        let queue = Queue::with_config(QueueConfig {
            name: "depth".into(),
            metrics: Some(Arc::new(Recording(recorder.clone()))),
        });
        (queue, recorder)
    }

    fn last_depth(recorder: &DepthRecorder) -> usize {
        recorder.depths.lock().last().copied().unwrap_or(0)
    }

    #[tokio::test]
    async fn depth_counts_an_item_re_added_while_processing_until_it_is_handed_out_again() {
        let (queue, recorder) = recorded_queue();
        let _ = queue.add("a");
        assert_eq!(last_depth(&recorder), 1);
        assert_eq!(queue.get().await, Some("a"));
        assert_eq!(last_depth(&recorder), 0);
        assert_eq!(queue.add("a"), Added::AfterDone);
        assert_eq!(last_depth(&recorder), 1, "dirty and not handed out");
        assert_eq!(recorder.adds.load(Ordering::Relaxed), 2);
        assert_eq!(queue.len(), 0, "len counts the FIFO only");
        assert_eq!(queue.add("a"), Added::AfterDone);
        assert_eq!(last_depth(&recorder), 1, "a second re-add is the same item");
        assert_eq!(recorder.adds.load(Ordering::Relaxed), 2);
        assert_eq!(queue.done(&"a"), Done::Requeued);
        assert_eq!(last_depth(&recorder), 1, "still waiting after done");
        assert_eq!(queue.get().await, Some("a"));
        assert_eq!(last_depth(&recorder), 0, "handed out");
        assert_eq!(queue.done(&"a"), Done::Finished);
        assert_eq!(last_depth(&recorder), 0);
    }

    #[tokio::test]
    async fn shut_down_reports_depth_zero_even_with_items_re_added_while_processing() {
        let (queue, recorder) = recorded_queue();
        let _ = queue.add("a");
        let _ = queue.add("b");
        let _ = queue.get().await;
        let _ = queue.add("a");
        assert_eq!(last_depth(&recorder), 2);
        queue.shut_down();
        assert_eq!(last_depth(&recorder), 0);
        assert_eq!(queue.done(&"a"), Done::Finished, "dropped, not requeued");
    }
}
