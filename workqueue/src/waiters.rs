//! The idle getters of a queue, kept under the queue's own state lock.
//!
//! # Why not `tokio::sync::Notify`
//!
//! A `Notify` has its own waiter list behind its own mutex, so a `get` that had to wait took
//! two locks (the queue's and the `Notify`'s) and every `get` that did not wait still created,
//! enabled and dropped a `Notified` future, and an add had to take the `Notify`'s lock to wake
//! anyone. Here the waiter list lives in the queue's state: a getter checks for an item and
//! registers its waker in one critical section, so no wake-up can be lost between the two, and
//! an add that finds nobody waiting (or enough getters already woken) wakes nobody.
//!
//! # Contract (for the queues that use it)
//!
//! - A waiter is registered by the future of one `get` and released when that future completes
//!   or is dropped; slots are reused, so a `get` that waits allocates nothing once the slab has
//!   grown to the number of concurrent getters.
//! - [`Waiters::wake_one`] wakes the most recently registered waiter that is still waiting
//!   (LIFO: the worker that went idle last is the one most likely still on a warm core).
//! - A woken waiter that is dropped before it took an item hands its wake-up on
//!   ([`Waiters::release`] tells the queue it was woken), so cancelling a `get` never strands an
//!   item.

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Waker;

/// How often an idle getter looks for a new item before it sleeps, and how many spin-loop
/// hints it waits between two looks: a few microseconds in all, bounded.
const SPIN_CHECKS: u32 = 32;
const PAUSES_PER_CHECK: u32 = 8;

/// The flag an add sets for a spinning getter, alone on its cache line: the spinner reads it in
/// a loop, and sharing a line with the queue's lock would slow every add down.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct SpinSignal(AtomicBool);

impl SpinSignal {
    /// Clears the flag before a getter starts spinning.
    pub(crate) fn reset(&self) {
        self.0.store(false, Ordering::Relaxed);
    }

    /// Tells the spinning getter an item is there.
    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Waits until `signal` is set (an add saw a spinning getter), or the bounded spin is over.
/// The caller looks at the queue again under its lock either way.
pub(crate) fn spin_until(signal: &SpinSignal) {
    let signal = &signal.0;
    for _ in 0..SPIN_CHECKS {
        for _ in 0..PAUSES_PER_CHECK {
            std::hint::spin_loop();
        }
        if signal.load(Ordering::Acquire) {
            return;
        }
    }
}

/// A registered waiter: its slot and the slot's generation when it was registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WaitId {
    slot: u32,
    generation: u32,
}

#[derive(Debug)]
enum SlotState {
    Free,
    Waiting(Waker),
    Woken,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    state: SlotState,
}

/// The idle getters of one queue; see the [module documentation](self).
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Waiting slots, most recent last. Entries whose slot was released or woken since are
    /// stale and skipped.
    idle: Vec<WaitId>,
    /// Slots in the `Waiting` state.
    waiting: usize,
    /// Slots in the `Woken` state: getters woken that have not run yet.
    woken: usize,
}

impl Waiters {
    /// Getters registered and not woken.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Whether an item that now waits among `queued` items should wake a getter: someone waits
    /// and fewer getters are already on their way (woken, or `awake` others about to look)
    /// than there are items.
    pub(crate) fn should_wake(&self, queued: usize, awake: usize) -> bool {
        self.waiting > 0 && self.woken + awake < queued
    }

    /// Registers a new waiter with `waker`.
    pub(crate) fn register(&mut self, waker: &Waker) -> WaitId {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(Slot {
                    generation: 0,
                    state: SlotState::Free,
                });
                slot
            }
        };
        let entry = &mut self.slots[slot as usize];
        entry.state = SlotState::Waiting(waker.clone());
        let id = WaitId {
            slot,
            generation: entry.generation,
        };
        self.idle.push(id);
        self.waiting += 1;
        id
    }

    /// Makes `id` wait again with `waker`: after a wake-up that found no item (someone else
    /// took it), or with a new waker for a future moved between tasks.
    pub(crate) fn rearm(&mut self, id: WaitId, waker: &Waker) {
        let Some(entry) = self.slot_mut(id) else {
            return;
        };
        match &mut entry.state {
            SlotState::Waiting(current) => {
                if !current.will_wake(waker) {
                    *current = waker.clone();
                }
            }
            SlotState::Woken => {
                entry.state = SlotState::Waiting(waker.clone());
                self.woken -= 1;
                self.waiting += 1;
                self.idle.push(id);
            }
            SlotState::Free => {}
        }
    }

    /// Frees `id`'s slot; returns true if it had been woken (and the wake-up was not used).
    pub(crate) fn release(&mut self, id: WaitId) -> bool {
        let Some(entry) = self.slot_mut(id) else {
            return false;
        };
        let state = std::mem::replace(&mut entry.state, SlotState::Free);
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(id.slot);
        match state {
            SlotState::Waiting(_) => {
                self.waiting -= 1;
                self.forget_stale();
                false
            }
            SlotState::Woken => {
                self.woken -= 1;
                true
            }
            SlotState::Free => false,
        }
    }

    /// Wakes the most recently registered waiter still waiting; returns its waker, to be woken
    /// once the caller has released the state lock.
    pub(crate) fn wake_one(&mut self) -> Option<Waker> {
        while let Some(id) = self.idle.pop() {
            let Some(entry) = self.slot_mut(id) else {
                continue;
            };
            if matches!(entry.state, SlotState::Waiting(_)) {
                let SlotState::Waiting(waker) =
                    std::mem::replace(&mut entry.state, SlotState::Woken)
                else {
                    continue;
                };
                self.waiting -= 1;
                self.woken += 1;
                return Some(waker);
            }
        }
        None
    }

    /// Wakes every waiting getter (shutdown); returns their wakers.
    pub(crate) fn wake_all(&mut self) -> Vec<Waker> {
        let mut wakers = Vec::with_capacity(self.waiting);
        while let Some(waker) = self.wake_one() {
            wakers.push(waker);
        }
        wakers
    }

    fn slot_mut(&mut self, id: WaitId) -> Option<&mut Slot> {
        self.slots
            .get_mut(id.slot as usize)
            .filter(|entry| entry.generation == id.generation)
    }

    /// Drops stale `idle` entries once they outnumber the live ones, so getters that are
    /// cancelled again and again (a `get` raced against a timer) do not grow it without bound.
    fn forget_stale(&mut self) {
        if self.idle.len() > 2 * self.waiting + 16 {
            let slots = &self.slots;
            self.idle.retain(|id| {
                slots.get(id.slot as usize).is_some_and(|entry| {
                    entry.generation == id.generation
                        && matches!(entry.state, SlotState::Waiting(_))
                })
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_one_wakes_the_latest_waiter_once() {
        let mut waiters = Waiters::default();
        let first = waiters.register(Waker::noop());
        let second = waiters.register(Waker::noop());
        assert_eq!(waiters.waiting(), 2);
        assert!(waiters.wake_one().is_some());
        assert!(waiters.release(second), "the latest was woken");
        assert!(waiters.wake_one().is_some());
        assert!(waiters.wake_one().is_none(), "nobody is left waiting");
        assert!(waiters.release(first));
    }

    #[test]
    fn a_released_waiter_is_never_woken_and_its_slot_is_reused() {
        let mut waiters = Waiters::default();
        let id = waiters.register(Waker::noop());
        assert!(!waiters.release(id), "released before any wake-up");
        assert!(waiters.wake_one().is_none());
        let again = waiters.register(Waker::noop());
        assert_eq!(again.slot, id.slot);
        assert_ne!(again.generation, id.generation);
        assert!(!waiters.release(id), "a stale id changes nothing");
        assert_eq!(waiters.waiting(), 1);
    }

    #[test]
    fn cancelled_waiters_do_not_grow_the_idle_list_without_bound() {
        let mut waiters = Waiters::default();
        let _kept = waiters.register(Waker::noop());
        for _ in 0..10_000 {
            let id = waiters.register(Waker::noop());
            let _ = waiters.release(id);
        }
        assert!(waiters.idle.len() <= 2 * waiters.waiting() + 17);
        assert_eq!(waiters.slots.len(), 2);
    }

    #[test]
    fn should_wake_only_when_fewer_getters_are_woken_than_items_wait() {
        let mut waiters = Waiters::default();
        assert!(!waiters.should_wake(1, 0), "nobody waits");
        let _a = waiters.register(Waker::noop());
        let b = waiters.register(Waker::noop());
        assert!(waiters.should_wake(1, 0));
        let _ = waiters.wake_one();
        assert!(
            !waiters.should_wake(1, 0),
            "one getter is already on its way"
        );
        assert!(waiters.should_wake(2, 0));
        assert!(
            !waiters.should_wake(2, 1),
            "and a spinning getter is about to look"
        );
        waiters.rearm(b, Waker::noop());
        assert_eq!(
            waiters.waiting(),
            2,
            "a woken getter that found nothing waits again"
        );
    }
}
