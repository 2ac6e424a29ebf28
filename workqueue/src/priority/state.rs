//! The priority queue's state under its one lock: slots, levels, the delay heap, and the
//! operations on them (see the [module docs](super) for the contract).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::Waker;
use std::time::Duration;

use hashbrown::HashMap;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::hash::RandomState;
use crate::limiter::RateLimiter;
use crate::metrics::{PriorityClass, QueueMetrics};
use crate::waiters::{SpinSignal, Waiters};

use super::*;

pub(super) struct Shared<T> {
    pub(super) name: String,
    pub(super) state: Mutex<State<T>>,
    pub(super) limiter: Arc<dyn RateLimiter<T>>,
    pub(super) metrics: Option<Arc<dyn QueueMetrics>>,
    pub(super) max_wait: Option<Duration>,
    /// Wakes the timer task: a new earliest deadline, or stop.
    pub(super) timer_wake: Notify,
    /// Woken when a drain may have completed.
    pub(super) drained: Notify,
    /// Set when an item becomes ready while a getter spins.
    pub(super) spin_signal: SpinSignal,
    pub(super) unexpected_done: AtomicU64,
}

/// A place in a priority level or the delay heap. It is live while its slot still has the
/// sequence number it had when the ticket was made and is in the matching phase (and, in a
/// level, at the level's priority); stale tickets are skipped and dropped when met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ticket {
    pub(super) slot: u32,
    pub(super) seq: u64,
}

/// A delay-heap entry, ordered by deadline then sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Deadline {
    pub(super) ready_at: Instant,
    pub(super) seq: u64,
    pub(super) slot: u32,
}

/// The ready items of one priority, in the order they became ready (by sequence number; an
/// item raised to this priority takes its place by its own number).
#[derive(Debug)]
pub(super) struct Level {
    pub(super) priority: i32,
    pub(super) tickets: VecDeque<Ticket>,
    /// Live tickets among `tickets`; a level is removed when it has none.
    pub(super) live: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// The slot is unused.
    Free,
    /// In the delay heap until `at`.
    Delayed,
    /// In its priority level since `at`.
    Ready,
    /// Handed out at `at`.
    Processing,
    /// Handed out at `at` and added again meanwhile, with the merged options in `again_*`.
    ProcessingAgain,
}

pub(super) struct Slot<T> {
    /// The item, except while it is processed (the worker has it) or the slot is free.
    pub(super) item: Option<T>,
    pub(super) seq: u64,
    /// The deadline of a delayed item; when a ready item became ready and when a processed one
    /// was handed out, if aging or metrics need it (the queue's epoch otherwise).
    pub(super) at: Instant,
    pub(super) priority: i32,
    pub(super) phase: Phase,
}

/// The merged options of the adds made while an item was processed (kept aside: few items
/// have them, and every slot would otherwise carry room for them).
#[derive(Debug, Clone, Copy)]
pub(super) struct Again {
    pub(super) priority: i32,
    /// `None`: ready as soon as it is done.
    pub(super) ready_at: Option<Instant>,
}

pub(super) struct State<T> {
    /// Every item the queue knows, and its slot.
    pub(super) index: HashMap<T, u32, RandomState>,
    pub(super) slots: Vec<Slot<T>>,
    pub(super) free: Vec<u32>,
    /// The re-adds of slots in [`Phase::ProcessingAgain`].
    pub(super) again: HashMap<u32, Again, RandomState>,
    /// Ready tickets by priority, lowest priority first.
    pub(super) levels: Vec<Level>,
    pub(super) delays: BinaryHeap<Reverse<Deadline>>,
    /// The `at` of slots that need no time.
    pub(super) epoch: Instant,
    /// The coarse clock of aging (see the module documentation): the time the timer task last
    /// read, valid while `ticking`.
    pub(super) coarse_now: Instant,
    /// True while the timer task refreshes `coarse_now` (aging on and items ready).
    pub(super) ticking: bool,
    /// An item became ready since the timer task's last reading (it keeps ticking for a
    /// period after the last one, so a queue that empties and refills often does not restart
    /// its clock every time).
    pub(super) readied: bool,
    pub(super) next_seq: u64,
    /// Live counts.
    pub(super) ready: usize,
    pub(super) delayed_len: usize,
    pub(super) processing: usize,
    /// Items in [`Phase::ProcessingAgain`].
    pub(super) dirty_processing: usize,
    /// Depth by [`PriorityClass::index`] (kept only with metrics).
    pub(super) depth: [usize; 3],
    /// The next get serves the item ready longest, if it has aged.
    pub(super) aged_turn: bool,
    /// No ready item has aged before this time (see `pick`).
    pub(super) young_until: Instant,
    pub(super) waiters: Waiters,
    /// True while one idle getter spins before it sleeps.
    pub(super) spinning: bool,
    pub(super) shutting_down: bool,
    pub(super) drain: bool,
    pub(super) timer_stopped: bool,
}

pub(super) fn alloc_slot<T>(
    slots: &mut Vec<Slot<T>>,
    free: &mut Vec<u32>,
    item: T,
    priority: i32,
    epoch: Instant,
) -> u32 {
    let fresh = Slot {
        item: Some(item),
        seq: 0,
        at: epoch,
        priority,
        phase: Phase::Free,
    };
    match free.pop() {
        Some(slot) => {
            slots[slot as usize] = fresh;
            slot
        }
        None => {
            slots.push(fresh);
            u32::try_from(slots.len() - 1).unwrap_or(u32::MAX)
        }
    }
}

impl<T> State<T> {
    /// The time aging compares with: the coarse clock while it runs, the clock otherwise.
    pub(super) fn now(&self) -> Instant {
        if self.ticking {
            self.coarse_now
        } else {
            Instant::now()
        }
    }

    pub(super) fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// The position of the level of `priority`, created if missing.
    pub(super) fn level_at(&mut self, priority: i32) -> usize {
        match self
            .levels
            .binary_search_by(|level| level.priority.cmp(&priority))
        {
            Ok(at) => at,
            Err(at) => {
                self.levels.insert(
                    at,
                    Level {
                        priority,
                        tickets: VecDeque::new(),
                        live: 0,
                    },
                );
                at
            }
        }
    }

    /// One live ticket of level `at` went stale or was taken. An empty level is kept for reuse
    /// (a queue that empties and refills often would otherwise free and allocate it every
    /// time) unless there are many levels; a level drops its stale tickets once they outnumber
    /// the live ones.
    pub(super) fn level_lost_one(&mut self, at: usize) {
        let level = &mut self.levels[at];
        level.live -= 1;
        if level.live == 0 {
            level.tickets.clear();
            if self.levels.len() > KEPT_EMPTY_LEVELS {
                self.levels.retain(|level| level.live > 0);
            }
        } else if level.tickets.len() > 2 * level.live + 16 {
            let (slots, priority) = (&self.slots, level.priority);
            level.tickets.retain(|ticket| {
                let entry = &slots[ticket.slot as usize];
                entry.seq == ticket.seq && entry.priority == priority && entry.phase == Phase::Ready
            });
        }
    }

    /// The time to stamp an item that becomes ready now with, and whether the coarse clock must
    /// be started: the exact time with metrics (queue latency needs it), the coarse clock's
    /// reading for aging, nothing otherwise.
    pub(super) fn ready_stamp(&mut self, shared: &Shared<T>) -> (Option<Instant>, bool) {
        let aging = shared.max_wait.is_some();
        if aging && self.ticking && shared.metrics.is_none() {
            return (Some(self.coarse_now), false);
        }
        if !aging && shared.metrics.is_none() {
            return (None, false);
        }
        let now = Instant::now();
        let start = aging && !self.ticking;
        if start {
            self.coarse_now = now;
            self.ticking = true;
        }
        (Some(now), start)
    }

    /// Puts `slot` (holding its item) in the ready set at its priority, ready since `since`.
    pub(super) fn make_ready(&mut self, slot: u32, since: Option<Instant>) {
        let seq = self.next_seq();
        let epoch = self.epoch;
        let entry = &mut self.slots[slot as usize];
        entry.seq = seq;
        entry.at = since.unwrap_or(epoch);
        entry.phase = Phase::Ready;
        let priority = entry.priority;
        let at = self.level_at(priority);
        let level = &mut self.levels[at];
        level.tickets.push_back(Ticket { slot, seq });
        level.live += 1;
        self.ready += 1;
        self.readied = true;
    }

    /// Raises a ready item to `priority`, where it takes its place by the time it became ready
    /// (its ticket at the old priority goes stale).
    pub(super) fn raise(&mut self, slot: u32, priority: i32) {
        let entry = &mut self.slots[slot as usize];
        let old = std::mem::replace(&mut entry.priority, priority);
        let ticket = Ticket {
            slot,
            seq: entry.seq,
        };
        if let Ok(at) = self
            .levels
            .binary_search_by(|level| level.priority.cmp(&old))
        {
            self.level_lost_one(at);
        }
        let at = self.level_at(priority);
        let level = &mut self.levels[at];
        let place = level
            .tickets
            .partition_point(|other| other.seq < ticket.seq);
        level.tickets.insert(place, ticket);
        level.live += 1;
    }

    /// Puts `slot` in the delay heap; true when it is the new earliest deadline (the timer
    /// must wake up).
    pub(super) fn schedule(&mut self, slot: u32, ready_at: Instant) -> bool {
        let seq = self.next_seq();
        let entry = &mut self.slots[slot as usize];
        entry.seq = seq;
        entry.at = ready_at;
        entry.phase = Phase::Delayed;
        let earliest = self
            .delays
            .peek()
            .is_none_or(|Reverse(top)| ready_at < top.ready_at);
        self.delays.push(Reverse(Deadline {
            ready_at,
            seq,
            slot,
        }));
        self.delayed_len += 1;
        earliest
    }

    pub(super) fn free_slot(&mut self, slot: u32) {
        let entry = &mut self.slots[slot as usize];
        entry.item = None;
        entry.phase = Phase::Free;
        entry.seq = 0;
        self.free.push(slot);
    }

    /// The first live ticket of level `at`, dropping the stale ones before it.
    pub(super) fn front(&mut self, at: usize) -> Option<Ticket> {
        let level = &mut self.levels[at];
        while let Some(&ticket) = level.tickets.front() {
            let entry = &self.slots[ticket.slot as usize];
            if entry.seq == ticket.seq
                && entry.priority == level.priority
                && entry.phase == Phase::Ready
            {
                return Some(ticket);
            }
            level.tickets.pop_front();
        }
        None
    }

    /// Chooses the next item to hand out (priority order, with aging) and takes its ticket.
    pub(super) fn pick(&mut self, max_wait: Option<Duration>) -> Option<u32> {
        // The highest level with a live ticket; its first one is the top.
        let top_at = self.levels.iter().rposition(|level| level.live > 0)?;
        let top = self.front(top_at)?;
        let mut chosen = (top_at, top);
        if let Some(max_wait) = max_wait {
            if !self.levels[..top_at].iter().any(|level| level.live > 0) {
                // One priority level: the oldest item is the top one.
                self.aged_turn = false;
            } else {
                let now = self.now();
                // No item has aged before `young_until` (the oldest one had not when it was
                // set, and the oldest only gets younger), so most gets skip the search.
                if now >= self.young_until {
                    // The item ready longest is the oldest of the levels' first live tickets.
                    let mut oldest = (top_at, top);
                    for at in 0..top_at {
                        if self.levels[at].live > 0
                            && let Some(ticket) = self.front(at)
                            && ticket.seq < oldest.1.seq
                        {
                            oldest = (at, ticket);
                        }
                    }
                    let since = self.slots[oldest.1.slot as usize].at;
                    if oldest.1 == top {
                        self.aged_turn = false;
                    } else if now.saturating_duration_since(since) >= max_wait {
                        if self.aged_turn {
                            chosen = oldest;
                            self.aged_turn = false;
                        } else {
                            self.aged_turn = true;
                        }
                    } else {
                        self.young_until = since + max_wait;
                    }
                }
            }
        }
        self.levels[chosen.0].tickets.pop_front();
        self.level_lost_one(chosen.0);
        Some(chosen.1.slot)
    }

    /// Whether an item that just became ready should wake a getter (a spinning getter counts
    /// as one on its way, and is told).
    pub(super) fn wake_for_ready(&mut self, spin_signal: &SpinSignal) -> Option<Waker> {
        if self.spinning {
            spin_signal.set();
        }
        if self
            .waiters
            .should_wake(self.ready, usize::from(self.spinning))
        {
            self.waiters.wake_one()
        } else {
            None
        }
    }

    pub(super) fn nothing_dirty(&self) -> bool {
        self.ready == 0 && self.dirty_processing == 0
    }

    /// Which depth bucket `slot` counts in: ready items, and processed items re-added without
    /// a delay.
    pub(super) fn contribution(&self, slot: u32) -> Option<PriorityClass> {
        let entry = &self.slots[slot as usize];
        match entry.phase {
            Phase::Ready => Some(PriorityClass::of(entry.priority)),
            Phase::ProcessingAgain => match self.again.get(&slot) {
                Some(Again {
                    priority,
                    ready_at: None,
                }) => Some(PriorityClass::of(*priority)),
                _ => None,
            },
            Phase::Free | Phase::Delayed | Phase::Processing => None,
        }
    }

    /// Updates the depth metrics after `slot` changed from counting in `before`; an item that
    /// starts counting is an add (`workqueue_adds_total`, as client-go counts an add when it
    /// raises the depth).
    pub(super) fn account(
        &mut self,
        slot: u32,
        before: Option<PriorityClass>,
        metrics: Option<&Arc<dyn QueueMetrics>>,
    ) {
        let Some(metrics) = metrics else {
            return;
        };
        let after = self.contribution(slot);
        if before == after {
            return;
        }
        if before.is_none() {
            metrics.added();
        }
        for (class, up) in [(before, false), (after, true)] {
            let Some(class) = class else {
                continue;
            };
            let depth = &mut self.depth[class.index()];
            *depth = if up {
                *depth + 1
            } else {
                depth.saturating_sub(1)
            };
            metrics.priority_depth(class, *depth);
        }
        metrics.depth(self.depth.iter().sum());
    }

    pub(super) fn report_all_depths(&mut self, metrics: Option<&Arc<dyn QueueMetrics>>) {
        let Some(metrics) = metrics else {
            return;
        };
        let mut depth = [0; 3];
        for slot in 0..self.slots.len() {
            if let Some(class) = self.contribution(slot as u32) {
                depth[class.index()] += 1;
            }
        }
        self.depth = depth;
        for class in PriorityClass::ALL {
            metrics.priority_depth(class, depth[class.index()]);
        }
        metrics.depth(depth.iter().sum());
    }
}

impl<T: Eq + Hash> State<T> {
    /// Removes a ready or delayed item from the queue entirely.
    pub(super) fn forget_slot(&mut self, slot: u32) {
        if let Some(item) = self.slots[slot as usize].item.as_ref() {
            self.index.remove(item);
        }
        self.free_slot(slot);
    }

    /// Drops every delayed item, and the delayed re-adds of items being processed.
    pub(super) fn drop_delayed(&mut self) {
        for slot in 0..self.slots.len() {
            match self.slots[slot].phase {
                Phase::Delayed => self.forget_slot(slot as u32),
                Phase::ProcessingAgain
                    if self
                        .again
                        .get(&(slot as u32))
                        .is_some_and(|again| again.ready_at.is_some()) =>
                {
                    self.slots[slot].phase = Phase::Processing;
                    self.again.remove(&(slot as u32));
                    self.dirty_processing -= 1;
                }
                Phase::Free | Phase::Ready | Phase::Processing | Phase::ProcessingAgain => {}
            }
        }
        self.delays.clear();
        self.delayed_len = 0;
    }

    /// Drops every ready and delayed item and every re-add of items being processed
    /// (`shut_down`).
    pub(super) fn drop_queued(&mut self) {
        self.drop_delayed();
        for slot in 0..self.slots.len() {
            let entry = &mut self.slots[slot];
            match entry.phase {
                Phase::Ready => self.forget_slot(slot as u32),
                Phase::ProcessingAgain => {
                    entry.phase = Phase::Processing;
                    self.dirty_processing -= 1;
                }
                Phase::Free | Phase::Delayed | Phase::Processing => {}
            }
        }
        self.again.clear();
        self.levels.clear();
        self.ready = 0;
    }
}
