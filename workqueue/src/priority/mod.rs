//! A work queue that hands out the most important ready item first, without starving the rest.
//!
//! # Why
//!
//! When a controller starts, its informers list every object, and every one of them is queued
//! for a reconcile. A real change that arrives meanwhile (a user edited an object) waits behind
//! the whole initial list in a FIFO queue. controller-runtime's priority queue (its default
//! since v0.23) lets handlers queue the initial list and resyncs at a low priority so real
//! changes go first. Strict priorities starve, though: under a steady stream of higher-priority
//! adds a low-priority item may never run (controller-runtime#3496). [`PriorityQueue`] adds
//! *aging*: an item that has waited [`PriorityQueueConfig::max_wait`] is served within a bound
//! however many higher-priority items keep arriving.
//!
//! # Contract
//!
//! An item is *ready* (waiting to be handed out), *delayed* (waiting for its ready time), or
//! being *processed* (handed out by [`PriorityQueue::get`], not yet [`PriorityQueue::done`]).
//!
//! - **Stored once; the highest priority and the earliest ready time win.** Adding an item
//!   that is already ready or delayed never stores it twice: it keeps the higher of its
//!   priorities and the earlier of its ready times ([`AddOpts::after`]; no delay means now), so
//!   a delayed item added again without a delay becomes ready at once.
//! - **Never held twice.** An item added while it is being processed is remembered, not queued:
//!   the options of all such adds are merged (highest priority, earliest ready time) and
//!   [`PriorityQueue::done`] queues it once with them ([`Added::AfterDone`],
//!   [`Done::Requeued`]); it runs once more, never on two workers at once.
//! - **Highest priority first, FIFO within a priority.** `get` hands out a ready item of the
//!   highest priority among the ready items; items of one priority come out in the order they
//!   became ready (an item raised to a priority takes its place there by the time it became
//!   ready, ahead of items that became ready after it).
//! - **Aging: bounded wait.** With [`PriorityQueueConfig::max_wait`] set (the default, 30 s),
//!   whenever some ready item has been ready for `max_wait` or longer, at least every second
//!   item handed out is the item that has been ready longest. So an item that has waited
//!   `max_wait` is handed out within `2 × (k + 1)` further gets, where `k` is the number of
//!   items that became ready before it and are still waiting: items that arrive after it, of any
//!   priority, cannot hold it back longer. In between, the other gets keep serving the highest
//!   priority, so a backlog of aged low-priority items (a big initial list) takes at most half of
//!   the workers' turns from real changes. With `max_wait: None` priorities are strict and a
//!   low-priority item can starve.
//! - **Aging runs on a coarse clock.** Reading the clock costs a good part of an add (measured:
//!   aging with a clock read per add made the queue half as fast again), so adds and gets do
//!   not read it: while items are ready, the queue's timer task (started by the first add inside
//!   a tokio runtime; outside one the queue reads the clock itself) reads it every
//!   `max_wait / 32` and waits are measured against that reading. An item therefore counts as
//!   aged once it has waited `max_wait`, give or take `max_wait / 32` (about 1 s of the default
//!   30 s), plus the timer task's scheduling delay. (On tokio's paused clock, once the timer
//!   task has run after an `advance`, the reading is exact.) With a metrics provider the
//!   time an item became ready is exact, for the queue-latency histogram.
//! - **Delays: one owned timer task.** Delayed items wait in a heap; a single task, owned by the
//!   queue (the same one that keeps the coarse clock), makes them ready when due (no task per
//!   item).
//!   Items due at the same time become ready in deadline order, then in the order they were
//!   scheduled. Outside a tokio runtime a delayed add fails with [`DelayingError::NoRuntime`].
//! - **Rate limits.** [`AddOpts::rate_limited`] asks the queue's [`RateLimiter`] for the delay
//!   (counting a failure); with [`AddOpts::after`] set as well the shorter of the two wins (as in
//!   controller-runtime). [`PriorityQueue::forget`] and [`PriorityQueue::num_requeues`] go to
//!   the limiter.
//! - **One wake per item**, as [`Queue`](crate::Queue): an item that becomes ready wakes at most
//!   one waiting `get`, none if a getter already woken will take it.
//! - **Shutdown as [`Queue`](crate::Queue).** [`PriorityQueue::shut_down`] drops ready and
//!   delayed items, stops the timer, wakes every getter (`get` returns `None` from then on) and
//!   refuses adds; items being processed may still be passed to `done` and are never queued
//!   again. [`PriorityQueue::shut_down_with_drain`] refuses adds, drops delayed items (and delayed
//!   re-adds of items being processed), keeps handing out ready items and items re-added while
//!   processed, and resolves once nothing is ready or being processed.
//! - **Misuse is answered.** An add after shutdown returns [`Added::ShuttingDown`]; a `done` for
//!   an item not being processed returns [`Done::NotProcessing`], is logged and counted.
//! - **Metrics.** The [`QueueMetrics`](crate::metrics::QueueMetrics) of [`Queue`](crate::Queue) (depth counts ready items and
//!   items re-added without a delay while processed; queue latency runs from ready to `get`),
//!   plus [`QueueMetrics::priority_depth`](crate::metrics::QueueMetrics::priority_depth) by [`PriorityClass`](crate::metrics::PriorityClass) (`high` > 0, `normal` = 0,
//!   `low` < 0: three label values whatever priorities are used).
//!
//! # Differences from controller-runtime's priority queue
//!
//! Aging is new. Items of one priority come out in the order they became ready; a delayed item
//! that became ready takes its turn by that time, where controller-runtime serves every item
//! added without a delay before any item whose delay expired. `shut_down_with_drain` drains (as
//! [`Queue`](crate::Queue)); controller-runtime's only shuts down. The depth metric's priority
//! label has three values, not one per priority.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use reflex_workqueue::priority::{AddOpts, LOW_PRIORITY, PriorityQueue};
//! use reflex_workqueue::limiter::ItemExponentialFailure;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), reflex_workqueue::DelayingError> {
//! let limiter = ItemExponentialFailure::new(Duration::from_millis(5), Duration::from_secs(60));
//! let queue: PriorityQueue<String> = PriorityQueue::new(limiter);
//! // The initial list goes in at a low priority ...
//! for name in ["default/a", "default/b"] {
//!     let _ = queue.add_with_opts(name.to_string(), AddOpts::priority(LOW_PRIORITY))?;
//! }
//! // ... so a real change is handed out first.
//! let _ = queue.add("default/changed".to_string());
//! assert_eq!(queue.get().await.as_deref(), Some("default/changed"));
//! assert_eq!(queue.get().await.as_deref(), Some("default/a"));
//! queue.done(&"default/changed".to_string());
//! queue.done(&"default/a".to_string());
//! // A retry waits for the rate limiter, keeping its priority.
//! let retry = AddOpts { rate_limited: true, ..AddOpts::priority(LOW_PRIORITY) };
//! let _ = queue.add_with_opts("default/a".to_string(), retry)?;
//! assert_eq!(queue.get_with_priority().await, Some(("default/b".to_string(), LOW_PRIORITY)));
//! # Ok(())
//! # }
//! ```

use std::collections::BinaryHeap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hashbrown::HashMap;
use hashbrown::hash_map::{Entry as MapEntry, EntryRef};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::delaying::DelayingError;
use crate::hash::random_state;
use crate::limiter::RateLimiter;
use crate::metrics::MetricsProvider;
use crate::queue::{Added, Done};
use crate::waiters::{SpinSignal, Waiters};

mod state;
mod tasks;

use state::*;
use tasks::*;

/// The priority controller-runtime's handlers give initial-list adds and resyncs.
pub const LOW_PRIORITY: i32 = -100;
/// The priority of an add without options.
pub const NORMAL_PRIORITY: i32 = 0;
/// The default aging bound ([`PriorityQueueConfig::max_wait`]).
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);
/// How often per `max_wait` the timer task reads the clock for aging while items are ready.
const COARSE_TICKS_PER_MAX_WAIT: u32 = 32;
/// Up to this many priority levels are kept when they empty.
const KEPT_EMPTY_LEVELS: usize = 8;

/// How an item is added to a [`PriorityQueue`]; `AddOpts::default()` is a plain add (priority
/// 0, ready now, not rate-limited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddOpts {
    /// Higher is handed out first; see the [module documentation](self) for aging.
    pub priority: i32,
    /// Ready only after this delay (`None` or zero: now).
    pub after: Option<Duration>,
    /// Ask the queue's rate limiter for the delay (counting a failure of the item); the shorter
    /// of it and `after` wins.
    pub rate_limited: bool,
}

impl AddOpts {
    /// A plain add at `priority`.
    pub fn priority(priority: i32) -> Self {
        AddOpts {
            priority,
            ..AddOpts::default()
        }
    }
}

/// Options for [`PriorityQueue::with_config`].
#[derive(Clone)]
pub struct PriorityQueueConfig {
    /// The queue's name, the `name` label of its metrics and a field of its log events.
    pub name: String,
    /// Where the queue reports its metrics; `None` reports nothing.
    pub metrics: Option<Arc<dyn MetricsProvider>>,
    /// The aging bound (see the [module documentation](self)); `None` for strict priorities.
    /// Default [`DEFAULT_MAX_WAIT`].
    pub max_wait: Option<Duration>,
}

impl Default for PriorityQueueConfig {
    fn default() -> Self {
        PriorityQueueConfig {
            name: String::new(),
            metrics: None,
            max_wait: Some(DEFAULT_MAX_WAIT),
        }
    }
}

impl std::fmt::Debug for PriorityQueueConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PriorityQueueConfig")
            .field("name", &self.name)
            .field("metrics", &self.metrics.is_some())
            .field("max_wait", &self.max_wait)
            .finish()
    }
}

/// A deduplicating priority work queue with aging, delays and rate limits; see the
/// [module documentation](self) for the contract.
///
/// The handle is an `Arc` inside: clone it to share one queue between producers and workers.
pub struct PriorityQueue<T> {
    handle: Arc<Handle<T>>,
}

impl<T> Clone for PriorityQueue<T> {
    fn clone(&self) -> Self {
        Self {
            handle: Arc::clone(&self.handle),
        }
    }
}

impl<T> std::fmt::Debug for PriorityQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.handle.shared.state.lock();
        f.debug_struct("PriorityQueue")
            .field("name", &self.handle.shared.name)
            .field("ready", &state.ready)
            .field("delayed", &state.delayed_len)
            .field("processing", &state.processing)
            .field("shutting_down", &state.shutting_down)
            .finish()
    }
}

/// What the handles share; owns the background tasks, which hold only [`Shared`].
struct Handle<T> {
    shared: Arc<Shared<T>>,
    timer: Mutex<Option<JoinHandle<()>>>,
    refresher: Mutex<Option<JoinHandle<()>>>,
}

impl<T> Drop for Handle<T> {
    fn drop(&mut self) {
        for task in [self.timer.get_mut().take(), self.refresher.get_mut().take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

impl<T: Clone + Eq + Hash + Send + Sync + 'static> PriorityQueue<T> {
    /// A queue without a name or metrics, aging after [`DEFAULT_MAX_WAIT`], rate-limited adds
    /// paced by `limiter`.
    pub fn new(limiter: impl RateLimiter<T> + 'static) -> Self {
        Self::with_config(limiter, PriorityQueueConfig::default())
    }

    /// A queue with a name, optionally a metrics provider, and an aging bound. With metrics and
    /// inside a tokio runtime a small task owned by the queue refreshes the unfinished-work
    /// gauges every [`UNFINISHED_WORK_UPDATE_PERIOD`](crate::queue::UNFINISHED_WORK_UPDATE_PERIOD).
    pub fn with_config(
        limiter: impl RateLimiter<T> + 'static,
        config: PriorityQueueConfig,
    ) -> Self {
        let metrics = config
            .metrics
            .as_ref()
            .map(|provider| provider.queue_metrics(&config.name));
        let shared = Arc::new(Shared {
            name: config.name,
            state: Mutex::new(State {
                index: HashMap::with_hasher(random_state()),
                slots: Vec::new(),
                free: Vec::new(),
                again: HashMap::with_hasher(random_state()),
                levels: Vec::new(),
                delays: BinaryHeap::new(),
                epoch: Instant::now(),
                coarse_now: Instant::now(),
                ticking: false,
                readied: false,
                next_seq: 0,
                ready: 0,
                delayed_len: 0,
                processing: 0,
                dirty_processing: 0,
                depth: [0; 3],
                aged_turn: false,
                young_until: Instant::now(),
                waiters: Waiters::default(),
                spinning: false,
                shutting_down: false,
                drain: false,
                timer_stopped: false,
            }),
            limiter: Arc::new(limiter),
            metrics,
            max_wait: config.max_wait,
            timer_wake: Notify::new(),
            drained: Notify::new(),
            spin_signal: SpinSignal::default(),
            unexpected_done: AtomicU64::new(0),
        });
        let handle = Handle {
            timer: Mutex::new(None),
            refresher: Mutex::new(None),
            shared,
        };
        if handle.shared.metrics.is_some()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let task = runtime.spawn(refresh_unfinished_work(Arc::downgrade(&handle.shared)));
            *handle.refresher.lock() = Some(task);
        }
        Self {
            handle: Arc::new(handle),
        }
    }

    /// The name given in [`PriorityQueueConfig`] (empty by default).
    pub fn name(&self) -> &str {
        &self.handle.shared.name
    }

    /// Adds `item` at [`NORMAL_PRIORITY`], ready now; see [`Added`] for the outcomes.
    pub fn add(&self, item: T) -> Added {
        self.insert(item, NORMAL_PRIORITY, None)
    }

    /// Adds `item` with `opts`; see [`Added`] for the outcomes. Fails only when a delay needs
    /// the timer task and no tokio runtime is running.
    pub fn add_with_opts(&self, item: T, opts: AddOpts) -> Result<Added, DelayingError> {
        let shared = &self.handle.shared;
        let mut after = opts.after.filter(|after| !after.is_zero());
        if opts.rate_limited {
            // A refused add must not count a failure.
            if shared.state.lock().shutting_down {
                return Ok(Added::ShuttingDown);
            }
            let limited = shared.limiter.when(&item);
            after = Some(after.map_or(limited, |after| after.min(limited)));
        }
        let ready_at = match after.filter(|after| !after.is_zero()) {
            Some(after) => {
                if shared.state.lock().shutting_down {
                    return Ok(Added::ShuttingDown);
                }
                if let Some(metrics) = &shared.metrics {
                    metrics.retry();
                }
                self.ensure_timer()?;
                Some(Instant::now() + after)
            }
            None => None,
        };
        Ok(self.insert(item, opts.priority, ready_at))
    }

    /// Adds `item` at [`NORMAL_PRIORITY`] once `delay` has passed (at once for zero).
    pub fn add_after(&self, item: T, delay: Duration) -> Result<Added, DelayingError> {
        self.add_with_opts(
            item,
            AddOpts {
                after: Some(delay),
                ..AddOpts::default()
            },
        )
    }

    /// Adds `item` at [`NORMAL_PRIORITY`] after the wait its rate limiter decides.
    pub fn add_rate_limited(&self, item: T) -> Result<Added, DelayingError> {
        self.add_with_opts(
            item,
            AddOpts {
                rate_limited: true,
                ..AddOpts::default()
            },
        )
    }

    /// Clears the rate limiter's history of `item` (after a success); `done` is still needed.
    pub fn forget(&self, item: &T) {
        self.handle.shared.limiter.forget(item)
    }

    /// How many failures the rate limiter tracks for `item`.
    pub fn num_requeues(&self, item: &T) -> u32 {
        self.handle.shared.limiter.num_requeues(item)
    }

    /// Waits for the next item (see the [module documentation](self) for which one) and marks
    /// it as being processed; the caller must pass it to [`PriorityQueue::done`].
    ///
    /// Returns `None` after [`PriorityQueue::shut_down`], and after
    /// [`PriorityQueue::shut_down_with_drain`] once nothing is left to hand out. Cancel-safe.
    pub async fn get(&self) -> Option<T> {
        self.get_with_priority().await.map(|(item, _)| item)
    }

    /// [`PriorityQueue::get`], with the priority the item was handed out at (a worker passes it
    /// on to a retry, so a retried item keeps its place).
    pub async fn get_with_priority(&self) -> Option<(T, i32)> {
        Get {
            shared: &self.handle.shared,
            wait: None,
        }
        .await
    }

    /// Marks an item as no longer being processed; see [`Done`] for the outcomes.
    pub fn done(&self, item: &T) -> Done {
        let shared = &self.handle.shared;
        let metrics = shared.metrics.as_ref();
        let mut start_ticker = false;
        let (outcome, drained, wake, timer) = {
            let mut guard = shared.state.lock();
            let state = &mut *guard;
            let slot = match state.index.entry_ref(item) {
                EntryRef::Occupied(occupied) => {
                    let slot = *occupied.get();
                    match state.slots[slot as usize].phase {
                        Phase::Processing => {
                            occupied.remove();
                            Some(slot)
                        }
                        Phase::ProcessingAgain => Some(slot),
                        Phase::Free | Phase::Delayed | Phase::Ready => None,
                    }
                }
                EntryRef::Vacant(_) => None,
            };
            let Some(slot) = slot else {
                drop(guard);
                return self.unexpected_done();
            };
            let before = metrics.and_then(|_| state.contribution(slot));
            let now = metrics.map(|_| Instant::now());
            if let (Some(metrics), Some(now)) = (metrics, now) {
                let started = state.slots[slot as usize].at;
                metrics.work_duration(now.saturating_duration_since(started));
            }
            state.processing -= 1;
            let mut wake = None;
            let mut timer = false;
            let outcome = match state.slots[slot as usize].phase {
                Phase::ProcessingAgain => {
                    state.dirty_processing -= 1;
                    let again = state.again.remove(&slot).unwrap_or(Again {
                        priority: NORMAL_PRIORITY,
                        ready_at: None,
                    });
                    let entry = &mut state.slots[slot as usize];
                    entry.item = Some(item.clone());
                    entry.priority = again.priority;
                    match again.ready_at {
                        Some(ready_at) if ready_at > Instant::now() => {
                            timer = state.schedule(slot, ready_at);
                        }
                        _ => {
                            let (since, start) = state.ready_stamp(shared);
                            start_ticker = start;
                            state.make_ready(slot, since);
                            wake = state.wake_for_ready(&shared.spin_signal);
                        }
                    }
                    Done::Requeued
                }
                _ => {
                    state.free_slot(slot);
                    Done::Finished
                }
            };
            state.account(slot, before, metrics);
            let drained = state.shutting_down && state.processing == 0 && state.ready == 0;
            (outcome, drained, wake, timer)
        };
        if let Some(waker) = wake {
            waker.wake();
        }
        if start_ticker {
            self.start_ticker();
        } else if timer {
            shared.timer_wake.notify_one();
        }
        if drained {
            shared.drained.notify_waiters();
        }
        outcome
    }

    /// The number of ready items (not counting delayed items or items being processed).
    pub fn len(&self) -> usize {
        self.handle.shared.state.lock().ready
    }

    /// True when no item is ready.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of items waiting for their ready time.
    pub fn waiting_len(&self) -> usize {
        self.handle.shared.state.lock().delayed_len
    }

    /// The number of items handed out and not yet done.
    pub fn processing_len(&self) -> usize {
        self.handle.shared.state.lock().processing
    }

    /// How many times `done` was called for an item that was not being processed.
    pub fn unexpected_done_count(&self) -> u64 {
        self.handle.shared.unexpected_done.load(Ordering::Relaxed)
    }

    /// True once either shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.handle.shared.state.lock().shutting_down
    }

    /// Stops the queue now: ready and delayed items are dropped, the timer stops, every
    /// waiting `get` returns `None`, later adds are refused.
    pub fn shut_down(&self) {
        let shared = &self.handle.shared;
        let wakers = {
            let mut state = shared.state.lock();
            state.shutting_down = true;
            state.drain = false;
            state.timer_stopped = true;
            state.ticking = false;
            state.drop_queued();
            state.report_all_depths(shared.metrics.as_ref());
            state.waiters.wake_all()
        };
        shared.timer_wake.notify_one();
        for task in [
            self.handle.timer.lock().take(),
            self.handle.refresher.lock().take(),
        ]
        .into_iter()
        .flatten()
        {
            task.abort();
        }
        for waker in wakers {
            waker.wake();
        }
        shared.drained.notify_waiters();
    }

    /// Stops taking new items and delayed ones (the timer stops and its items are dropped), lets
    /// workers finish what is ready and in flight, and resolves once nothing is ready or being
    /// processed (or when [`PriorityQueue::shut_down`] is called).
    pub async fn shut_down_with_drain(&self) {
        let shared = &self.handle.shared;
        let wakers = {
            let mut state = shared.state.lock();
            if !state.shutting_down {
                state.shutting_down = true;
                state.drain = true;
            }
            state.timer_stopped = true;
            state.ticking = false;
            state.drop_delayed();
            state.report_all_depths(shared.metrics.as_ref());
            if state.nothing_dirty() {
                state.waiters.wake_all()
            } else {
                Vec::new()
            }
        };
        shared.timer_wake.notify_one();
        for waker in wakers {
            waker.wake();
        }
        let timer = self.handle.timer.lock().take();
        if let Some(timer) = timer {
            // It ends on its own once it sees `timer_stopped`; an abort from a concurrent
            // `shut_down` is fine too.
            let _ = timer.await;
        }
        loop {
            let notified = shared.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = shared.state.lock();
                if !state.drain || (state.ready == 0 && state.processing == 0) {
                    break;
                }
            }
            notified.await;
        }
        if let Some(task) = self.handle.refresher.lock().take() {
            task.abort();
        }
    }

    /// Reports the unfinished-work and longest-running gauges now (a no-op without metrics).
    pub fn update_unfinished_work(&self) {
        update_unfinished(&self.handle.shared);
    }

    fn insert(&self, item: T, priority: i32, ready_at: Option<Instant>) -> Added {
        let shared = &self.handle.shared;
        let metrics = shared.metrics.as_ref();
        let mut guard = shared.state.lock();
        let state = &mut *guard;
        if state.shutting_down {
            return Added::ShuttingDown;
        }
        let slot = match state.index.entry(item) {
            MapEntry::Occupied(occupied) => *occupied.get(),
            MapEntry::Vacant(vacant) => {
                let item = vacant.key().clone();
                let slot = alloc_slot(
                    &mut state.slots,
                    &mut state.free,
                    item,
                    priority,
                    state.epoch,
                );
                vacant.insert(slot);
                let (outcome, wake, timer, start) = match ready_at {
                    None => {
                        let (since, start) = state.ready_stamp(shared);
                        state.make_ready(slot, since);
                        let wake = state.wake_for_ready(&shared.spin_signal);
                        (Added::Queued, wake, false, start)
                    }
                    Some(ready_at) => (
                        Added::Scheduled,
                        None,
                        state.schedule(slot, ready_at),
                        false,
                    ),
                };
                state.account(slot, None, metrics);
                drop(guard);
                if let Some(waker) = wake {
                    waker.wake();
                }
                if start {
                    self.start_ticker();
                } else if timer {
                    shared.timer_wake.notify_one();
                }
                return outcome;
            }
        };
        let before = metrics.and_then(|_| state.contribution(slot));
        let mut wake = None;
        let mut timer = false;
        let mut start = false;
        let entry = &mut state.slots[slot as usize];
        let outcome = match entry.phase {
            Phase::Ready => {
                if priority > entry.priority {
                    state.raise(slot, priority);
                }
                Added::AlreadyQueued
            }
            Phase::Delayed => {
                entry.priority = entry.priority.max(priority);
                let current = entry.at;
                match ready_at {
                    None => {
                        state.delayed_len -= 1;
                        let since;
                        (since, start) = state.ready_stamp(shared);
                        state.make_ready(slot, since);
                        wake = state.wake_for_ready(&shared.spin_signal);
                        Added::Queued
                    }
                    Some(ready_at) if ready_at < current => {
                        state.delayed_len -= 1;
                        timer = state.schedule(slot, ready_at);
                        Added::Scheduled
                    }
                    Some(_) => Added::AlreadyScheduledSooner,
                }
            }
            Phase::Processing => {
                entry.phase = Phase::ProcessingAgain;
                state.again.insert(slot, Again { priority, ready_at });
                state.dirty_processing += 1;
                Added::AfterDone
            }
            Phase::ProcessingAgain => {
                let again = state
                    .again
                    .entry(slot)
                    .or_insert(Again { priority, ready_at });
                again.priority = again.priority.max(priority);
                again.ready_at = match (again.ready_at, ready_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    _ => None,
                };
                Added::AfterDone
            }
            // Not reachable: indexed slots are never free.
            Phase::Free => Added::AlreadyQueued,
        };
        state.account(slot, before, metrics);
        drop(guard);
        if let Some(waker) = wake {
            waker.wake();
        }
        if start {
            self.start_ticker();
        } else if timer {
            shared.timer_wake.notify_one();
        }
        outcome
    }

    fn unexpected_done(&self) -> Done {
        let shared = &self.handle.shared;
        let count = shared.unexpected_done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(metrics) = &shared.metrics {
            metrics.unexpected_done();
        }
        tracing::warn!(
            queue = %shared.name,
            unexpected_done_total = count,
            "done called for an item that is not being processed; ignored"
        );
        Done::NotProcessing
    }

    /// Starts the coarse clock of aging: the timer task (spawned if needed) refreshes it while
    /// items are ready. Without a runtime the queue reads the clock itself instead.
    fn start_ticker(&self) {
        let shared = &self.handle.shared;
        match self.ensure_timer() {
            Ok(()) => shared.timer_wake.notify_one(),
            Err(DelayingError::NoRuntime) => shared.state.lock().ticking = false,
        }
    }

    fn ensure_timer(&self) -> Result<(), DelayingError> {
        let mut timer = self.handle.timer.lock();
        if timer.is_none() {
            let runtime =
                tokio::runtime::Handle::try_current().map_err(|_| DelayingError::NoRuntime)?;
            let shared = Arc::clone(&self.handle.shared);
            let span = tracing::debug_span!("priority_queue_timer", queue = %shared.name);
            *timer = Some(runtime.spawn(run_timer(shared).instrument(span)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{ItemExponentialFailure, ItemFastSlow};
    use crate::metrics::{PriorityClass, QueueMetrics};

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const SECS: fn(u64) -> Duration = Duration::from_secs;

    fn queue() -> PriorityQueue<&'static str> {
        strict(Some(SECS(10)))
    }

    fn strict(max_wait: Option<Duration>) -> PriorityQueue<&'static str> {
        PriorityQueue::with_config(
            ItemExponentialFailure::new(MS(10), SECS(1)),
            PriorityQueueConfig {
                max_wait,
                ..PriorityQueueConfig::default()
            },
        )
    }

    fn at(priority: i32) -> AddOpts {
        AddOpts::priority(priority)
    }

    fn after(priority: i32, delay: Duration) -> AddOpts {
        AddOpts {
            after: Some(delay),
            ..AddOpts::priority(priority)
        }
    }

    /// Lets the timer task run after the clock moved.
    async fn settle() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    async fn drain_ready(queue: &PriorityQueue<&'static str>) -> Vec<&'static str> {
        let mut out = Vec::new();
        while !queue.is_empty() {
            let item = queue.get().await.unwrap();
            let _ = queue.done(&item);
            out.push(item);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn highest_priority_first_and_fifo_within_a_priority() {
        let queue = queue();
        for (item, priority) in [
            ("l1", -1),
            ("n1", 0),
            ("h1", 5),
            ("l2", -1),
            ("n2", 0),
            ("h2", 5),
        ] {
            assert_eq!(queue.add_with_opts(item, at(priority)), Ok(Added::Queued));
        }
        assert_eq!(
            drain_ready(&queue).await,
            vec!["h1", "h2", "n1", "n2", "l1", "l2"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_repeated_add_keeps_the_highest_priority_and_the_earliest_ready_time() {
        // (first add, second add, outcome of the second, order with "x" ready at priority 0)
        let cases: &[(AddOpts, AddOpts, Added, &[&str])] = &[
            (at(-1), at(1), Added::AlreadyQueued, &["a", "x"]),
            (at(1), at(-1), Added::AlreadyQueued, &["a", "x"]),
            (at(-1), at(-1), Added::AlreadyQueued, &["x", "a"]),
            (after(1, SECS(5)), at(-1), Added::Queued, &["a", "x"]),
            (
                after(-1, SECS(5)),
                after(1, SECS(1)),
                Added::Scheduled,
                &["x"],
            ),
            (
                after(1, SECS(1)),
                after(-1, SECS(5)),
                Added::AlreadyScheduledSooner,
                &["x"],
            ),
        ];
        for (first, second, outcome, order) in cases {
            let queue = queue();
            let _ = queue.add_with_opts("x", at(0)).unwrap();
            let _ = queue.add_with_opts("a", *first).unwrap();
            assert_eq!(
                queue.add_with_opts("a", *second),
                Ok(*outcome),
                "{first:?} then {second:?}"
            );
            assert_eq!(
                drain_ready(&queue).await,
                *order,
                "{first:?} then {second:?}"
            );
            if order.len() == 1 {
                // Delayed: due after the earlier of the two delays, at the higher priority.
                settle().await;
                tokio::time::advance(SECS(1) - MS(1)).await;
                settle().await;
                assert_eq!(queue.len(), 0, "{first:?} then {second:?}: too early");
                tokio::time::advance(MS(1)).await;
                settle().await;
                assert_eq!(queue.len(), 1, "{first:?} then {second:?}: due");
                assert_eq!(queue.get_with_priority().await, Some(("a", 1)));
                assert_eq!(queue.waiting_len(), 0, "the later deadline is gone");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn re_added_while_processing_runs_once_more_after_done_with_the_merged_options() {
        let queue = queue();
        let _ = queue.add_with_opts("a", at(0)).unwrap();
        assert_eq!(queue.get().await, Some("a"));
        assert_eq!(queue.add_with_opts("a", at(-5)), Ok(Added::AfterDone));
        assert_eq!(
            queue.add_with_opts("a", after(3, SECS(60))),
            Ok(Added::AfterDone)
        );
        assert_eq!(
            queue.len(),
            0,
            "not handed to a second worker while processing"
        );
        let _ = queue.add_with_opts("b", at(1)).unwrap();
        assert_eq!(queue.done(&"a"), Done::Requeued);
        assert_eq!(
            queue.len(),
            2,
            "ready now: the earliest of the merged ready times"
        );
        assert_eq!(
            queue.get_with_priority().await,
            Some(("a", 3)),
            "the highest of the merged priorities"
        );
        assert_eq!(queue.done(&"a"), Done::Finished);
        assert_eq!(queue.get().await, Some("b"));
        assert_eq!(queue.done(&"b"), Done::Finished);
        assert!(queue.is_empty());
        assert_eq!(queue.processing_len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_re_add_while_processing_becomes_ready_at_its_time_after_done() {
        let queue = queue();
        let _ = queue.add("a");
        let item = queue.get().await.unwrap();
        assert_eq!(queue.add_after("a", SECS(2)), Ok(Added::AfterDone));
        tokio::time::advance(SECS(1)).await;
        assert_eq!(queue.done(&item), Done::Requeued);
        assert_eq!(queue.len(), 0);
        assert_eq!(queue.waiting_len(), 1);
        settle().await;
        tokio::time::advance(SECS(1)).await;
        settle().await;
        assert_eq!(queue.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_aged_item_is_served_at_least_every_second_get_however_many_higher_adds_arrive() {
        let max_wait = SECS(10);
        let queue = strict(Some(max_wait));
        let _ = queue.add_with_opts("old-low", at(-100)).unwrap();
        let _ = queue.add_with_opts("older-low", at(-100)).unwrap();
        // A constant stream: every second a new high-priority item, and a worker taking one.
        let names: Vec<&'static str> = (0..40)
            .map(|i| &*Box::leak(format!("high-{i}").into_boxed_str()))
            .collect();
        let mut served = Vec::new();
        for name in &names {
            let _ = queue.add_with_opts(name, at(10)).unwrap();
            let _ = queue.add_with_opts(name, at(10)).unwrap();
            let item = queue.get().await.unwrap();
            let _ = queue.done(&item);
            served.push((item, tokio::time::Instant::now()));
            tokio::time::advance(SECS(1)).await;
            settle().await;
        }
        let position = |wanted: &str| served.iter().position(|(item, _)| *item == wanted);
        // Before the bound the stream wins; once the low items have waited max_wait they take
        // every second turn, oldest first.
        let first = position("old-low").expect("the aged item was served");
        let second = position("older-low").expect("the second aged item was served");
        assert_eq!(
            first, 11,
            "served on the second get after it aged (at 10 s)"
        );
        assert_eq!(second, 13, "and the next aged item two gets later");
        assert!(
            served[..first]
                .iter()
                .all(|(item, _)| item.starts_with("high"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_max_wait_priorities_are_strict() {
        let queue = strict(None);
        let _ = queue.add_with_opts("low", at(-1)).unwrap();
        for i in 0..30 {
            let name: &'static str = Box::leak(format!("high-{i}").into_boxed_str());
            let _ = queue.add_with_opts(name, at(1)).unwrap();
            tokio::time::advance(SECS(1)).await;
            let item = queue.get().await.unwrap();
            assert_ne!(item, "low", "strict priorities never let it pass");
            let _ = queue.done(&item);
        }
        assert_eq!(queue.get().await, Some("low"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_item_that_did_not_age_waits_behind_higher_priorities() {
        let queue = strict(Some(SECS(10)));
        let _ = queue.add_with_opts("low", at(-1)).unwrap();
        settle().await;
        tokio::time::advance(SECS(9)).await;
        settle().await;
        let _ = queue.add_with_opts("high", at(1)).unwrap();
        assert_eq!(queue.get().await, Some("high"));
    }

    #[tokio::test(start_paused = true)]
    async fn due_items_become_ready_in_deadline_order_and_not_before() {
        let queue = queue();
        for (item, delay) in [("c", 30), ("a", 10), ("b", 20), ("d", 30)] {
            assert_eq!(
                queue.add_with_opts(item, after(0, MS(delay))),
                Ok(Added::Scheduled)
            );
        }
        assert_eq!(queue.waiting_len(), 4);
        settle().await;
        tokio::time::advance(MS(9)).await;
        settle().await;
        assert_eq!(queue.len(), 0);
        tokio::time::advance(MS(21)).await;
        settle().await;
        assert_eq!(queue.waiting_len(), 0);
        assert_eq!(drain_ready(&queue).await, vec!["a", "b", "c", "d"]);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limited_adds_wait_for_the_limiter_or_the_shorter_after() {
        let queue = PriorityQueue::new(ItemFastSlow::new(MS(100), SECS(100), 1));
        let retry = AddOpts {
            rate_limited: true,
            ..AddOpts::priority(2)
        };
        // First failure: 100 ms from the limiter, at the add's priority.
        assert_eq!(queue.add_with_opts("a", retry), Ok(Added::Scheduled));
        assert_eq!(queue.num_requeues(&"a"), 1);
        settle().await;
        tokio::time::advance(MS(99)).await;
        settle().await;
        assert_eq!(queue.len(), 0);
        tokio::time::advance(MS(1)).await;
        settle().await;
        assert_eq!(queue.get_with_priority().await, Some(("a", 2)));
        assert_eq!(queue.done(&"a"), Done::Finished);
        // Second failure: the limiter says 100 s, `after` says 1 s; the shorter wins.
        let sooner = AddOpts {
            after: Some(SECS(1)),
            ..retry
        };
        assert_eq!(queue.add_with_opts("a", sooner), Ok(Added::Scheduled));
        assert_eq!(queue.num_requeues(&"a"), 2);
        settle().await;
        tokio::time::advance(SECS(1)).await;
        settle().await;
        assert_eq!(queue.get_with_priority().await, Some(("a", 2)));
        queue.forget(&"a");
        assert_eq!(queue.num_requeues(&"a"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn done_for_an_item_not_processing_is_a_counted_no_op() {
        let queue = queue();
        let _ = queue.add("a");
        assert_eq!(
            queue.done(&"a"),
            Done::NotProcessing,
            "ready, not processing"
        );
        assert_eq!(queue.done(&"z"), Done::NotProcessing, "unknown");
        assert_eq!(queue.unexpected_done_count(), 2);
        assert_eq!(queue.get().await, Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn shut_down_drops_ready_and_delayed_items_stops_the_timer_and_refuses_adds() {
        let queue = queue();
        let _ = queue.add("ready");
        let _ = queue.add_after("delayed", SECS(1)).unwrap();
        let _ = queue.add("held");
        let held = queue.get_with_priority().await.unwrap().0;
        let _ = queue.add(held);
        settle().await;
        let timer = queue.handle.timer.lock().take().unwrap();
        queue.shut_down();
        timer
            .await
            .expect("the timer task ends on its own when stopped");
        assert_eq!((queue.len(), queue.waiting_len()), (0, 0));
        assert_eq!(queue.get().await, None);
        assert_eq!(queue.add("new"), Added::ShuttingDown);
        assert_eq!(queue.add_rate_limited("new"), Ok(Added::ShuttingDown));
        assert_eq!(
            queue.num_requeues(&"new"),
            0,
            "a refused add counts no failure"
        );
        assert_eq!(queue.done(&held), Done::Finished, "never queued again");
    }

    #[tokio::test(start_paused = true)]
    async fn shut_down_with_drain_hands_out_what_is_ready_and_re_added_then_returns_none() {
        let queue = queue();
        let _ = queue.add_with_opts("a", at(1)).unwrap();
        let _ = queue.add("b");
        let _ = queue.add_after("later", SECS(60)).unwrap();
        let a = queue.get().await.unwrap();
        let _ = queue.add(a);
        let drain = tokio::spawn({
            let queue = queue.clone();
            async move { queue.shut_down_with_drain().await }
        });
        settle().await;
        assert_eq!(queue.add("c"), Added::ShuttingDown);
        assert_eq!(queue.waiting_len(), 0, "delayed items are dropped");
        assert_eq!(queue.get().await, Some("b"));
        assert_eq!(queue.done(&"b"), Done::Finished);
        assert!(!drain.is_finished(), "a is in flight and dirty");
        assert_eq!(queue.done(&a), Done::Requeued);
        assert_eq!(queue.get().await, Some("a"));
        assert_eq!(queue.done(&"a"), Done::Finished);
        drain.await.unwrap();
        assert_eq!(queue.get().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_getters_are_released_when_a_drain_has_nothing_left() {
        let queue = queue();
        let getters: Vec<_> = (0..3)
            .map(|_| {
                let queue = queue.clone();
                tokio::spawn(async move { queue.get().await })
            })
            .collect();
        settle().await;
        queue.shut_down_with_drain().await;
        for getter in getters {
            assert_eq!(getter.await.unwrap(), None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_ready_item_wakes_one_waiting_get_and_a_cancelled_get_loses_nothing() {
        let queue = queue();
        let getters: Vec<_> = (0..4)
            .map(|_| {
                let queue = queue.clone();
                tokio::spawn(async move { queue.get().await })
            })
            .collect();
        settle().await;
        let _ = queue.add("one");
        settle().await;
        assert_eq!(getters.iter().filter(|g| g.is_finished()).count(), 1);
        let _ = queue.add_after("two", MS(5)).unwrap();
        settle().await;
        tokio::time::advance(MS(5)).await;
        settle().await;
        assert_eq!(getters.iter().filter(|g| g.is_finished()).count(), 2);
        queue.shut_down();
        let mut results = Vec::new();
        for getter in getters {
            results.push(getter.await.unwrap());
        }
        results.sort();
        assert_eq!(results, vec![None, None, Some("one"), Some("two")]);

        let queue = self::queue();
        let first = tokio::spawn({
            let queue = queue.clone();
            async move { queue.get().await }
        });
        settle().await;
        let second = tokio::spawn({
            let queue = queue.clone();
            async move { queue.get().await }
        });
        settle().await;
        let _ = queue.add("x");
        first.abort();
        second.abort();
        settle().await;
        assert_eq!(queue.len(), 1, "the item is still there for the next get");
        assert_eq!(queue.get().await, Some("x"));
    }

    #[test]
    fn delayed_add_outside_a_runtime_is_an_error_not_a_panic() {
        let queue = queue();
        assert_eq!(queue.add_after("a", MS(5)), Err(DelayingError::NoRuntime));
        assert_eq!(queue.add_after("a", Duration::ZERO), Ok(Added::Queued));
    }

    /// Records the depths a queue reports, in total and by class.
    #[derive(Default)]
    struct Recorder {
        depth: Mutex<usize>,
        by_class: Mutex<[usize; 3]>,
        adds: AtomicU64,
    }

    impl QueueMetrics for Recorder {
        fn depth(&self, depth: usize) {
            *self.depth.lock() = depth;
        }
        fn added(&self) {
            self.adds.fetch_add(1, Ordering::Relaxed);
        }
        fn priority_depth(&self, class: PriorityClass, depth: usize) {
            self.by_class.lock()[class.index()] = depth;
        }
    }

    struct Provider(Arc<Recorder>);

    impl MetricsProvider for Provider {
        fn queue_metrics(&self, _name: &str) -> Arc<dyn QueueMetrics> {
            self.0.clone()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn depth_is_reported_by_bounded_priority_class() {
        let recorder = Arc::new(Recorder::default());
        let queue = PriorityQueue::with_config(
            ItemExponentialFailure::new(MS(1), SECS(1)),
            PriorityQueueConfig {
                name: "pq".into(),
                metrics: Some(Arc::new(Provider(recorder.clone()))),
                ..PriorityQueueConfig::default()
            },
        );
        let snapshot = || (*recorder.depth.lock(), *recorder.by_class.lock());
        let _ = queue.add_with_opts("h", at(7)).unwrap();
        let _ = queue.add_with_opts("n", at(0)).unwrap();
        let _ = queue.add_with_opts("l", at(-100)).unwrap();
        let _ = queue.add_with_opts("l2", at(i32::MIN)).unwrap();
        assert_eq!(snapshot(), (4, [1, 1, 2]));
        let _ = queue.add_with_opts("l", at(1)).unwrap();
        assert_eq!(snapshot(), (4, [2, 1, 1]), "raised from low to high");
        let _ = queue.add_after("d", SECS(1)).unwrap();
        assert_eq!(
            snapshot(),
            (4, [2, 1, 1]),
            "delayed items are not counted yet"
        );
        let h = queue.get().await.unwrap();
        assert_eq!(snapshot(), (3, [1, 1, 1]));
        let _ = queue.add_with_opts(h, at(-1)).unwrap();
        assert_eq!(
            snapshot(),
            (4, [1, 1, 2]),
            "re-added while processing: counted"
        );
        assert_eq!(queue.done(&h), Done::Requeued);
        assert_eq!(snapshot(), (4, [1, 1, 2]));
        settle().await;
        tokio::time::advance(SECS(1)).await;
        settle().await;
        assert_eq!(snapshot(), (5, [1, 2, 2]), "counted once ready");
        assert_eq!(
            recorder.adds.load(Ordering::Relaxed),
            6,
            "h, n, l, l2, h again, d"
        );
        queue.shut_down();
        assert_eq!(snapshot(), (0, [0, 0, 0]));
    }
}
