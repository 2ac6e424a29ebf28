//! What runs outside a caller's call: the `get` future, the timer task (delays, aging's coarse
//! clock) and the metrics refresher.

use std::cmp::Reverse;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use crate::queue::UNFINISHED_WORK_UPDATE_PERIOD;
use crate::waiters::{WaitId, spin_until};

use super::state::*;
use super::*;

/// The future of [`PriorityQueue::get_with_priority`]: picks an item under the state lock, or
/// registers as a waiter in the same critical section.
pub(super) struct Get<'a, T> {
    pub(super) shared: &'a Shared<T>,
    pub(super) wait: Option<WaitId>,
}

impl<T> Get<'_, T> {
    pub(super) fn release(&mut self, state: &mut State<T>) {
        if let Some(id) = self.wait.take() {
            let _ = state.waiters.release(id);
        }
    }
}

impl<T: Clone + Eq + Hash> Future for Get<'_, T> {
    type Output = Option<(T, i32)>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let shared = self.shared;
        let metrics = shared.metrics.as_ref();
        let mut spun = false;
        loop {
            let mut guard = shared.state.lock();
            let state = &mut *guard;
            if spun {
                state.spinning = false;
            }
            if state.shutting_down && !state.drain {
                self.release(state);
                return Poll::Ready(None);
            }
            if let Some(slot) = state.pick(shared.max_wait) {
                self.release(state);
                let before = metrics.and_then(|_| state.contribution(slot));
                let now = metrics.map(|_| Instant::now());
                let entry = &mut state.slots[slot as usize];
                if let (Some(metrics), Some(now)) = (metrics, now) {
                    metrics.latency(now.saturating_duration_since(entry.at));
                    entry.at = now;
                }
                entry.phase = Phase::Processing;
                let priority = entry.priority;
                let item = entry.item.take();
                state.ready -= 1;
                state.processing += 1;
                state.account(slot, before, metrics);
                // In a drain, the last dirty item handed out releases every idle worker.
                let wakers = if state.shutting_down && state.nothing_dirty() {
                    state.waiters.wake_all()
                } else {
                    Vec::new()
                };
                drop(guard);
                for waker in wakers {
                    waker.wake();
                }
                // Not `None`: only processed and free slots have no item.
                return Poll::Ready(item.map(|item| (item, priority)));
            }
            if state.shutting_down && state.nothing_dirty() {
                self.release(state);
                return Poll::Ready(None);
            }
            if !spun && !state.spinning {
                // As `Queue::get`: watch briefly for the next ready item before sleeping.
                state.spinning = true;
                shared.spin_signal.reset();
                drop(guard);
                spin_until(&shared.spin_signal);
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
            let mut state = self.shared.state.lock();
            // A wake-up meant for an item still ready goes to another getter.
            if state.waiters.release(id) && state.ready > 0 {
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

/// The timer loop: make every due item ready, then sleep until the next deadline or a wake-up.
pub(super) async fn run_timer<T: Clone + Eq + Hash>(shared: Arc<Shared<T>>) {
    let metrics = shared.metrics.as_ref();
    let aging = shared.max_wait.is_some();
    let stamped = aging || metrics.is_some();
    let tick = shared
        .max_wait
        .map(|max_wait| (max_wait / COARSE_TICKS_PER_MAX_WAIT).max(Duration::from_millis(1)));
    let mut wakers = Vec::new();
    let mut next_tick_at: Option<Instant> = None;
    loop {
        let notified = shared.timer_wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (next, fired, ticking) = {
            let mut state = shared.state.lock();
            if state.timer_stopped {
                tracing::debug!(queue = %shared.name, "timer stopped");
                return;
            }
            let now = Instant::now();
            let stamp = stamped.then_some(now);
            state.ticking &= aging;
            let mut fired = 0_usize;
            while let Some(&Reverse(top)) = state.delays.peek() {
                let live = {
                    let entry = &state.slots[top.slot as usize];
                    entry.seq == top.seq && entry.phase == Phase::Delayed
                };
                if live && top.ready_at > now {
                    break;
                }
                state.delays.pop();
                if live {
                    let before = metrics.and_then(|_| state.contribution(top.slot));
                    state.delayed_len -= 1;
                    state.make_ready(top.slot, stamp);
                    state.account(top.slot, before, metrics);
                    if let Some(waker) = state.wake_for_ready(&shared.spin_signal) {
                        wakers.push(waker);
                    }
                    fired += 1;
                }
            }
            // The coarse clock of aging runs while items are ready, and for a tick after the
            // last one became ready; other wake-ups (an add, a delay) only read the clock.
            if state.ticking {
                match next_tick_at {
                    None => next_tick_at = tick.map(|tick| now + tick),
                    Some(at) if now >= at => {
                        if state.ready == 0 && !state.readied {
                            state.ticking = false;
                            next_tick_at = None;
                        } else {
                            next_tick_at = tick.map(|tick| now + tick);
                        }
                        state.readied = false;
                    }
                    Some(_) => {}
                }
            } else {
                next_tick_at = None;
            }
            state.coarse_now = now;
            let next_delay = state.delays.peek().map(|Reverse(top)| top.ready_at);
            let next = match (next_delay, next_tick_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            (next, fired, state.ticking)
        };
        if fired > 0 {
            tracing::trace!(queue = %shared.name, fired, next = ?next, ticking, "delayed items ready");
        }
        for waker in wakers.drain(..) {
            waker.wake();
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

pub(super) fn update_unfinished<T>(shared: &Shared<T>) {
    let Some(metrics) = &shared.metrics else {
        return;
    };
    let now = Instant::now();
    let (total, longest) = {
        let state = shared.state.lock();
        state
            .slots
            .iter()
            .filter(|slot| matches!(slot.phase, Phase::Processing | Phase::ProcessingAgain))
            .map(|slot| now.saturating_duration_since(slot.at).as_secs_f64())
            .fold((0.0_f64, 0.0_f64), |(total, longest), secs| {
                (total + secs, longest.max(secs))
            })
    };
    metrics.unfinished_work(total, longest);
}

pub(super) async fn refresh_unfinished_work<T>(shared: Weak<Shared<T>>) {
    let mut tick = tokio::time::interval(UNFINISHED_WORK_UPDATE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let _span =
            tracing::trace_span!("workqueue_metrics_refresh", queue = %shared.name).entered();
        update_unfinished(&shared);
    }
}
