//! A work queue whose items can be added after a delay.
//!
//! # Why
//!
//! Controllers retry failed work later and re-check objects periodically ("requeue after
//! 30 s"). A [`DelayingQueue`] holds such items in a min-heap keyed by deadline, and a single
//! timer task, owned by the queue, moves each one into the underlying [`Queue`] when it is due.
//! One task and one heap serve any number of timers, so 100k pending retries cost 100k heap
//! entries, not 100k tasks.
//!
//! # Contract
//!
//! - [`DelayingQueue::add_after`] with a zero delay adds at once.
//! - **The earliest deadline wins**: adding an item that already waits with an earlier deadline
//!   moves it earlier ([`Added::Scheduled`]); with a later or equal one it changes nothing
//!   ([`Added::AlreadyScheduledSooner`]). Once an item has fired it is forgotten by the timer.
//! - Items due at the same time are added in deadline order (then in order of scheduling).
//! - Shutting down stops the timer promptly and drops the items still waiting for their
//!   deadline (as client-go does). [`DelayingQueue::shut_down`] aborts the timer task;
//!   [`DelayingQueue::shut_down_with_drain`] asks it to stop, awaits it, then drains the queue.
//!   Dropping the last handle also stops it.
//! - The timer task is spawned on the current tokio runtime at the first delayed add; outside a
//!   runtime that add fails with [`DelayingError::NoRuntime`] instead of panicking.
//! - Everything else is the [`Queue`] contract, delegated.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use reflex_workqueue::delaying::DelayingQueue;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), reflex_workqueue::delaying::DelayingError> {
//! let queue: DelayingQueue<&str> = DelayingQueue::new();
//! let _ = queue.add_after("later", Duration::from_secs(30))?;
//! let _ = queue.add_after("sooner", Duration::from_secs(1))?;
//! assert_eq!(queue.get().await, Some("sooner"));
//! assert_eq!(queue.get().await, Some("later"));
//! # Ok(())
//! # }
//! ```

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::queue::{Added, Done, Queue, QueueConfig};

/// Errors from scheduling a delayed add.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelayingError {
    /// The timer task could not be started because no tokio runtime is running here.
    #[error("a delayed add needs a tokio runtime to run the queue's timer task")]
    NoRuntime,
}

/// A [`Queue`] plus delayed adds; see the [module documentation](self) for the contract.
///
/// The handle is an `Arc` inside: clone it to share one queue.
pub struct DelayingQueue<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for DelayingQueue<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> std::fmt::Debug for DelayingQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayingQueue")
            .field("queue", &self.inner.queue)
            .field("waiting", &self.inner.timers.state.lock().waiting.len())
            .finish()
    }
}

struct Inner<T> {
    queue: Queue<T>,
    timers: Arc<Timers<T>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl<T> Drop for Inner<T> {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().take() {
            task.abort();
        }
    }
}

/// State shared with the timer task.
struct Timers<T> {
    state: Mutex<TimerState<T>>,
    /// Wakes the timer task: a new earliest deadline, or stop.
    wake: Notify,
}

struct TimerState<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    /// The live deadline of every waiting item and the sequence number of its heap entry;
    /// heap entries whose sequence number differs are stale and skipped.
    waiting: HashMap<T, (Instant, u64)>,
    next_seq: u64,
    stopped: bool,
}

struct Entry<T> {
    ready_at: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.ready_at == other.ready_at && self.seq == other.seq
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ready_at, self.seq).cmp(&(other.ready_at, other.seq))
    }
}

impl<T: Clone + Eq + Hash + Send + Sync + 'static> Default for DelayingQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone + Eq + Hash + Send + Sync + 'static> DelayingQueue<T> {
    /// A delaying queue without a name or metrics.
    pub fn new() -> Self {
        Self::with_config(QueueConfig::default())
    }

    /// A delaying queue with a name and, optionally, a metrics provider (see
    /// [`Queue::with_config`]).
    pub fn with_config(config: QueueConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                queue: Queue::with_config(config),
                timers: Arc::new(Timers {
                    state: Mutex::new(TimerState {
                        heap: BinaryHeap::new(),
                        waiting: HashMap::new(),
                        next_seq: 0,
                        stopped: false,
                    }),
                    wake: Notify::new(),
                }),
                task: Mutex::new(None),
            }),
        }
    }

    /// Adds `item` once `delay` has passed (at once for a zero delay); counted as a retry in
    /// the metrics. See [`Added`] for the outcomes.
    pub fn add_after(&self, item: T, delay: Duration) -> Result<Added, DelayingError> {
        if self.inner.queue.is_shutting_down() {
            return Ok(Added::ShuttingDown);
        }
        if let Some(metrics) = self.inner.queue.metrics() {
            metrics.retry();
        }
        if delay.is_zero() {
            return Ok(self.inner.queue.add(item));
        }
        self.ensure_timer_task()?;
        let ready_at = Instant::now() + delay;
        let (outcome, wake) = {
            let mut state = self.inner.timers.state.lock();
            if state.stopped {
                return Ok(Added::ShuttingDown);
            }
            match state.waiting.get(&item) {
                Some((existing, _)) if *existing <= ready_at => {
                    (Added::AlreadyScheduledSooner, false)
                }
                _ => {
                    let earliest = state.heap.peek().map(|Reverse(entry)| entry.ready_at);
                    let seq = state.next_seq;
                    state.next_seq += 1;
                    state.waiting.insert(item.clone(), (ready_at, seq));
                    state.heap.push(Reverse(Entry {
                        ready_at,
                        seq,
                        item,
                    }));
                    (
                        Added::Scheduled,
                        earliest.is_none_or(|earliest| ready_at < earliest),
                    )
                }
            }
        };
        if wake {
            self.inner.timers.wake.notify_one();
        }
        Ok(outcome)
    }

    /// The number of items waiting for their deadline (not yet in the queue).
    pub fn waiting_len(&self) -> usize {
        self.inner.timers.state.lock().waiting.len()
    }

    /// See [`Queue::add`].
    pub fn add(&self, item: T) -> Added {
        self.inner.queue.add(item)
    }

    /// See [`Queue::get`].
    pub async fn get(&self) -> Option<T> {
        self.inner.queue.get().await
    }

    /// See [`Queue::done`].
    pub fn done(&self, item: &T) -> Done {
        self.inner.queue.done(item)
    }

    /// See [`Queue::len`]; items waiting for their deadline are not counted.
    pub fn len(&self) -> usize {
        self.inner.queue.len()
    }

    /// See [`Queue::is_empty`].
    pub fn is_empty(&self) -> bool {
        self.inner.queue.is_empty()
    }

    /// See [`Queue::is_shutting_down`].
    pub fn is_shutting_down(&self) -> bool {
        self.inner.queue.is_shutting_down()
    }

    /// The underlying queue (shares state with this handle).
    pub fn queue(&self) -> &Queue<T> {
        &self.inner.queue
    }

    /// Stops the timer at once (dropping items waiting for their deadline), then
    /// [`Queue::shut_down`].
    pub fn shut_down(&self) {
        self.stop_timers();
        if let Some(task) = self.inner.task.lock().take() {
            task.abort();
        }
        self.inner.queue.shut_down();
    }

    /// Stops the timer (dropping items waiting for their deadline) and waits for its task to
    /// end, then [`Queue::shut_down_with_drain`].
    pub async fn shut_down_with_drain(&self) {
        self.stop_timers();
        let task = self.inner.task.lock().take();
        if let Some(task) = task {
            // The task exits on its own once it sees `stopped`; an abort from a concurrent
            // `shut_down` is fine too.
            let _ = task.await;
        }
        self.inner.queue.shut_down_with_drain().await;
    }

    fn stop_timers(&self) {
        {
            let mut state = self.inner.timers.state.lock();
            state.stopped = true;
            state.heap.clear();
            state.waiting.clear();
        }
        self.inner.timers.wake.notify_one();
    }

    fn ensure_timer_task(&self) -> Result<(), DelayingError> {
        let mut task = self.inner.task.lock();
        if task.is_none() {
            let runtime =
                tokio::runtime::Handle::try_current().map_err(|_| DelayingError::NoRuntime)?;
            let timers = Arc::clone(&self.inner.timers);
            let queue = self.inner.queue.clone();
            *task = Some(runtime.spawn(run_timers(timers, queue)));
        }
        Ok(())
    }
}

/// The timer task, in its span (carried across its awaits with `Instrument`, not a guard).
async fn run_timers<T: Clone + Eq + Hash + Send + Sync + 'static>(
    timers: Arc<Timers<T>>,
    queue: Queue<T>,
) {
    let span = tracing::debug_span!("workqueue_timer", queue = %queue.name());
    timer_loop(timers, queue).instrument(span).await;
}

/// The timer loop: add every due item, then sleep until the next deadline or a wake-up.
async fn timer_loop<T: Clone + Eq + Hash + Send + Sync + 'static>(
    timers: Arc<Timers<T>>,
    queue: Queue<T>,
) {
    let mut ready = Vec::new();
    loop {
        let notified = timers.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next = {
            let mut state = timers.state.lock();
            if state.stopped {
                tracing::debug!(queue = %queue.name(), "timer stopped");
                return;
            }
            let now = Instant::now();
            while let Some(Reverse(entry)) = state.heap.peek() {
                if entry.ready_at > now {
                    break;
                }
                let Some(Reverse(entry)) = state.heap.pop() else {
                    break;
                };
                if state
                    .waiting
                    .get(&entry.item)
                    .is_some_and(|(_, seq)| *seq == entry.seq)
                {
                    state.waiting.remove(&entry.item);
                    ready.push(entry.item);
                }
            }
            state.heap.peek().map(|Reverse(entry)| entry.ready_at)
        };
        if !ready.is_empty() {
            tracing::trace!(queue = %queue.name(), fired = ready.len(), "timers fired");
        }
        for item in ready.drain(..) {
            let _ = queue.add(item);
        }
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = &mut notified => {}
                }
            }
            None => notified.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// Lets the timer task run after the clock moved.
    async fn settle() {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn zero_delay_adds_now() {
        let queue = DelayingQueue::new();
        assert_eq!(queue.add_after(1, Duration::ZERO), Ok(Added::Queued));
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.waiting_len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn item_is_added_when_its_delay_has_passed_and_not_before() {
        let queue = DelayingQueue::new();
        assert_eq!(queue.add_after("a", MS(100)), Ok(Added::Scheduled));
        settle().await;
        tokio::time::advance(MS(99)).await;
        settle().await;
        assert_eq!(queue.len(), 0);
        tokio::time::advance(MS(1)).await;
        settle().await;
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.waiting_len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn earliest_deadline_wins_for_a_repeated_item() {
        // (first delay, second delay, outcome of the second add, when the item is due)
        let cases = [
            (MS(500), MS(100), Added::Scheduled, MS(100)),
            (MS(100), MS(500), Added::AlreadyScheduledSooner, MS(100)),
            (MS(100), MS(100), Added::AlreadyScheduledSooner, MS(100)),
        ];
        for (first, second, outcome, due) in cases {
            let queue = DelayingQueue::new();
            let _ = queue.add_after(7, first).unwrap();
            assert_eq!(
                queue.add_after(7, second),
                Ok(outcome),
                "{first:?} then {second:?}"
            );
            settle().await;
            tokio::time::advance(due - MS(1)).await;
            settle().await;
            assert_eq!(queue.len(), 0, "{first:?} then {second:?}: too early");
            tokio::time::advance(MS(1)).await;
            settle().await;
            assert_eq!(queue.len(), 1, "{first:?} then {second:?}: due");
            assert_eq!(queue.waiting_len(), 0, "the later entry is gone too");
            tokio::time::advance(MS(1000)).await;
            settle().await;
            assert_eq!(queue.get().await, Some(7));
            assert_eq!(queue.len(), 0, "fired once");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn due_items_are_added_in_deadline_order() {
        let queue = DelayingQueue::new();
        for (item, delay) in [(3, 30), (1, 10), (2, 20), (4, 30)] {
            let _ = queue.add_after(item, MS(delay)).unwrap();
        }
        tokio::time::advance(MS(30)).await;
        settle().await;
        let mut out = Vec::new();
        for _ in 0..4 {
            out.push(queue.get().await.unwrap());
        }
        assert_eq!(out, vec![1, 2, 3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn shut_down_stops_the_timer_task_and_drops_waiting_items() {
        let queue = DelayingQueue::new();
        let _ = queue.add_after(1, MS(10)).unwrap();
        settle().await;
        // Take the handle so shut_down cannot abort the task: it must end by itself.
        let task = queue.inner.task.lock().take().unwrap();
        queue.shut_down();
        task.await
            .expect("the timer task ends on its own when stopped");
        assert_eq!(queue.waiting_len(), 0);
        assert_eq!(queue.add_after(2, MS(10)), Ok(Added::ShuttingDown));
        assert_eq!(queue.get().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn shut_down_with_drain_joins_the_timer_and_finishes_in_flight_work() {
        let queue = DelayingQueue::new();
        let _ = queue.add("now");
        let _ = queue.add_after("later", Duration::from_secs(60)).unwrap();
        let item = queue.get().await.unwrap();
        let drain = tokio::spawn({
            let queue = queue.clone();
            async move { queue.shut_down_with_drain().await }
        });
        settle().await;
        assert!(!drain.is_finished(), "waits for the in-flight item");
        assert_eq!(queue.done(&item), Done::Finished);
        drain.await.unwrap();
        assert!(queue.inner.task.lock().is_none());
        assert_eq!(queue.get().await, None, "the delayed item was dropped");
    }

    #[test]
    fn delayed_add_outside_a_runtime_is_an_error_not_a_panic() {
        let queue = DelayingQueue::new();
        assert_eq!(queue.add_after(1, MS(5)), Err(DelayingError::NoRuntime));
        assert_eq!(queue.add_after(1, Duration::ZERO), Ok(Added::Queued));
    }
}
