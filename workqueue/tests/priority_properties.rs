//! Property tests of `PriorityQueue` against a simple model, on tokio's paused clock: random
//! sequences of adds (random priority and delay), gets, dones, clock advances and a shutdown.
//!
//! The model is a map from item to state, searched linearly: it picks the next item by the rule
//! the contract states (highest priority, FIFO within a priority, every second get to the item
//! ready longest once it has waited `max_wait`). Besides agreeing with the model on every
//! outcome, each run checks the guarantees directly: an item is never handed to two workers at
//! once, an item is stored once, and the item handed out is of the highest ready priority or
//! the longest-waiting aged one.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use proptest::prelude::*;
use reflex_workqueue::limiter::ItemExponentialFailure;
use reflex_workqueue::{AddOpts, Added, Done, PriorityQueue, PriorityQueueConfig};

/// One tick of the paused clock.
const TICK: Duration = Duration::from_secs(1);
/// The aging bound, in ticks.
const MAX_WAIT: u64 = 3;

#[derive(Debug, Clone)]
enum Op {
    Add {
        item: u8,
        priority: i32,
        delay: Option<u64>,
    },
    Get,
    /// Done for the n-th item being processed (modulo their number), or for an item that is not
    /// processed when none is.
    Done(usize),
    Advance(u64),
}

#[derive(Debug, Clone, Copy)]
enum End {
    Running,
    ShutDown,
    Drain,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0_u8..6, -2_i32..=2, prop::option::weighted(0.3, 1_u64..=3))
            .prop_map(|(item, priority, delay)| Op::Add { item, priority, delay }),
        3 => Just(Op::Get),
        2 => any::<usize>().prop_map(Op::Done),
        1 => (1_u64..=4).prop_map(Op::Advance),
    ]
}

fn end() -> impl Strategy<Value = End> {
    prop_oneof![Just(End::Running), Just(End::ShutDown), Just(End::Drain)]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready {
        priority: i32,
        /// Order of becoming ready (FIFO within a priority, and the age order).
        age_seq: u64,
        since: u64,
    },
    Delayed {
        priority: i32,
        at: u64,
        seq: u64,
    },
    Processing {
        /// Merged (priority, ready time) of the adds made meanwhile.
        again: Option<(i32, Option<u64>)>,
    },
}

#[derive(Debug, Default)]
struct Model {
    now: u64,
    seq: u64,
    items: BTreeMap<u8, State>,
    aged_turn: bool,
    shutting_down: bool,
}

impl Model {
    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn make_ready(&mut self, item: u8, priority: i32) {
        let age_seq = self.next();
        let since = self.now;
        self.items.insert(
            item,
            State::Ready {
                priority,
                age_seq,
                since,
            },
        );
    }

    fn schedule(&mut self, item: u8, priority: i32, at: u64) {
        let seq = self.next();
        self.items
            .insert(item, State::Delayed { priority, at, seq });
    }

    fn add(&mut self, item: u8, priority: i32, delay: Option<u64>) -> Added {
        if self.shutting_down {
            return Added::ShuttingDown;
        }
        let ready_at = delay.map(|d| self.now + d);
        match self.items.get(&item).copied() {
            None => match ready_at {
                Some(at) => {
                    self.schedule(item, priority, at);
                    Added::Scheduled
                }
                None => {
                    self.make_ready(item, priority);
                    Added::Queued
                }
            },
            Some(State::Ready {
                priority: current,
                age_seq,
                since,
                ..
            }) => {
                if priority > current {
                    self.items.insert(
                        item,
                        State::Ready {
                            priority,
                            age_seq,
                            since,
                        },
                    );
                }
                Added::AlreadyQueued
            }
            Some(State::Delayed {
                priority: current,
                at,
                seq,
            }) => {
                let priority = priority.max(current);
                match ready_at {
                    None => {
                        self.make_ready(item, priority);
                        Added::Queued
                    }
                    Some(new_at) if new_at < at => {
                        self.schedule(item, priority, new_at);
                        Added::Scheduled
                    }
                    Some(_) => {
                        self.items
                            .insert(item, State::Delayed { priority, at, seq });
                        Added::AlreadyScheduledSooner
                    }
                }
            }
            Some(State::Processing { again }) => {
                let merged = match again {
                    None => (priority, ready_at),
                    Some((p, at)) => (
                        p.max(priority),
                        match (at, ready_at) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            _ => None,
                        },
                    ),
                };
                self.items.insert(
                    item,
                    State::Processing {
                        again: Some(merged),
                    },
                );
                Added::AfterDone
            }
        }
    }

    /// (item, priority, age_seq, since) of every ready item.
    fn ready(&self) -> impl Iterator<Item = (u8, i32, u64, u64)> + '_ {
        self.items.iter().filter_map(|(item, state)| match *state {
            State::Ready {
                priority,
                age_seq,
                since,
            } => Some((*item, priority, age_seq, since)),
            _ => None,
        })
    }

    /// The item the contract says `get` hands out now, and the state change.
    fn get(&mut self) -> Option<u8> {
        let top = self
            .ready()
            .max_by_key(|(_, priority, age_seq, _)| (*priority, std::cmp::Reverse(*age_seq)))?;
        let oldest = self.ready().min_by_key(|(_, _, age_seq, _)| *age_seq)?;
        let mut chosen = top.0;
        if oldest.0 == top.0 {
            self.aged_turn = false;
        } else if self.now - oldest.3 >= MAX_WAIT {
            if self.aged_turn {
                chosen = oldest.0;
                self.aged_turn = false;
            } else {
                self.aged_turn = true;
            }
        }
        self.items.insert(chosen, State::Processing { again: None });
        Some(chosen)
    }

    fn done(&mut self, item: u8) -> Done {
        match self.items.get(&item).copied() {
            Some(State::Processing { again: None }) => {
                self.items.remove(&item);
                Done::Finished
            }
            Some(State::Processing {
                again: Some((priority, at)),
            }) => {
                match at {
                    Some(at) if at > self.now => self.schedule(item, priority, at),
                    _ => self.make_ready(item, priority),
                }
                Done::Requeued
            }
            _ => Done::NotProcessing,
        }
    }

    fn advance(&mut self, ticks: u64) {
        self.now += ticks;
        let mut due: Vec<(u64, u64, u8, i32)> = self
            .items
            .iter()
            .filter_map(|(item, state)| match *state {
                State::Delayed { priority, at, seq } if at <= self.now => {
                    Some((at, seq, *item, priority))
                }
                _ => None,
            })
            .collect();
        due.sort_unstable();
        for (_, _, item, priority) in due {
            self.make_ready(item, priority);
        }
    }

    fn processing(&self) -> Vec<u8> {
        self.items
            .iter()
            .filter(|(_, state)| matches!(state, State::Processing { .. }))
            .map(|(item, _)| *item)
            .collect()
    }

    fn count(&self, pred: impl Fn(&State) -> bool) -> usize {
        self.items.values().filter(|state| pred(state)).count()
    }

    /// `shut_down_with_drain`: delayed items and delayed re-adds are dropped.
    fn start_drain(&mut self) {
        self.shutting_down = true;
        self.items
            .retain(|_, state| !matches!(state, State::Delayed { .. }));
        for state in self.items.values_mut() {
            if let State::Processing {
                again: Some((_, Some(_))),
            } = state
            {
                *state = State::Processing { again: None };
            }
        }
    }

    /// `shut_down`: everything but the items being processed is dropped.
    fn shut_down(&mut self) {
        self.shutting_down = true;
        self.items
            .retain(|_, state| matches!(state, State::Processing { .. }));
        for state in self.items.values_mut() {
            *state = State::Processing { again: None };
        }
    }
}

fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

fn new_queue() -> PriorityQueue<u8> {
    PriorityQueue::with_config(
        ItemExponentialFailure::new(Duration::from_millis(1), Duration::from_secs(1)),
        PriorityQueueConfig {
            max_wait: Some(TICK * MAX_WAIT as u32),
            ..PriorityQueueConfig::default()
        },
    )
}

fn check_counts(queue: &PriorityQueue<u8>, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        queue.len(),
        model.count(|s| matches!(s, State::Ready { .. })),
        "ready items (each stored once)"
    );
    prop_assert_eq!(
        queue.waiting_len(),
        model.count(|s| matches!(s, State::Delayed { .. })),
        "delayed items"
    );
    prop_assert_eq!(
        queue.processing_len(),
        model.processing().len(),
        "processing"
    );
    Ok(())
}

/// One `get`, checked against the model and against the guarantees directly.
fn check_get(
    queue: &PriorityQueue<u8>,
    model: &mut Model,
    step: &str,
) -> Result<Option<u8>, TestCaseError> {
    let ready: Vec<_> = model.ready().collect();
    let processing = model.processing();
    let expected = model.get();
    let mut get = pin!(queue.get_with_priority());
    let got = match poll_once(get.as_mut()) {
        Poll::Ready(got) => got,
        Poll::Pending => {
            prop_assert_eq!(expected, None, "{}: get is pending", step);
            return Ok(None);
        }
    };
    let got_item = got.map(|(item, _)| item);
    prop_assert_eq!(got_item, expected, "{}: get", step);
    if let Some((item, priority)) = got {
        prop_assert!(
            !processing.contains(&item),
            "{}: {} handed out twice",
            step,
            item
        );
        let best = ready.iter().map(|r| r.1).max().unwrap_or(i32::MIN);
        let oldest = ready.iter().min_by_key(|r| r.2).map(|r| (r.0, r.3));
        let aged_oldest =
            oldest.is_some_and(|(o, since)| o == item && model.now - since >= MAX_WAIT);
        prop_assert!(
            priority == best || aged_oldest,
            "{}: {} at priority {} while {} was ready and it had not aged",
            step,
            item,
            priority,
            best
        );
    }
    Ok(got_item)
}

async fn run(ops: Vec<Op>, end: End) -> Result<(), TestCaseError> {
    let queue = new_queue();
    let mut model = Model::default();
    for (n, op) in ops.into_iter().enumerate() {
        let step = format!("step {n} {op:?}");
        match op {
            Op::Add {
                item,
                priority,
                delay,
            } => {
                let opts = AddOpts {
                    priority,
                    after: delay.map(|d| TICK * d as u32),
                    rate_limited: false,
                };
                let outcome = queue.add_with_opts(item, opts);
                prop_assert_eq!(outcome, Ok(model.add(item, priority, delay)), "{}", step);
            }
            Op::Get => {
                check_get(&queue, &mut model, &step)?;
            }
            Op::Done(n) => {
                let processing = model.processing();
                let item = match processing.len() {
                    0 => (n % 6) as u8,
                    len => processing[n % len],
                };
                prop_assert_eq!(queue.done(&item), model.done(item), "{}", step);
            }
            Op::Advance(ticks) => {
                settle().await;
                tokio::time::advance(TICK * ticks as u32).await;
                settle().await;
                model.advance(ticks);
            }
        }
        check_counts(&queue, &model)?;
    }
    match end {
        End::Running => {}
        End::ShutDown => {
            queue.shut_down();
            model.shut_down();
            check_counts(&queue, &model)?;
            prop_assert_eq!(queue.add(0), Added::ShuttingDown);
            let mut get = pin!(queue.get());
            prop_assert_eq!(poll_once(get.as_mut()), Poll::Ready(None));
            for item in model.processing() {
                prop_assert_eq!(queue.done(&item), Done::Finished, "never queued again");
            }
        }
        End::Drain => {
            let drain = tokio::spawn({
                let queue = queue.clone();
                async move { queue.shut_down_with_drain().await }
            });
            settle().await;
            model.start_drain();
            check_counts(&queue, &model)?;
            prop_assert_eq!(queue.add(0), Added::ShuttingDown);
            loop {
                if let Some(&item) = model.processing().first() {
                    prop_assert_eq!(queue.done(&item), model.done(item), "drain: done");
                } else if model.ready().next().is_some() {
                    prop_assert!(check_get(&queue, &mut model, "drain")?.is_some());
                } else {
                    break;
                }
                check_counts(&queue, &model)?;
            }
            settle().await;
            prop_assert!(
                drain.is_finished(),
                "the drain resolved once nothing was left"
            );
            let mut get = pin!(queue.get());
            prop_assert_eq!(poll_once(get.as_mut()), Poll::Ready(None));
        }
    }
    Ok(())
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_agree_with_the_model_and_never_hand_an_item_out_twice(
        ops in prop::collection::vec(op(), 1..80),
        end in end(),
    ) {
        paused_runtime().block_on(run(ops, end))?;
    }

    #[test]
    fn a_backlog_is_served_within_the_aging_bound_under_a_constant_stream_of_higher_priority_adds(
        backlog in prop::collection::vec(-200_i32..=0, 1..12),
        stream in prop::collection::vec(1_i32..=100, 40..60),
    ) {
        paused_runtime().block_on(async {
            let queue = new_queue();
            for (item, priority) in backlog.iter().enumerate() {
                let _ = queue.add_with_opts(item as u8, AddOpts::priority(*priority));
            }
            let mut served_at = BTreeMap::new();
            // Every tick one new item of a higher priority than any backlog item arrives and
            // one worker takes one item.
            for (tick, priority) in stream.iter().enumerate() {
                let _ = queue.add_with_opts(100 + tick as u8, AddOpts::priority(*priority));
                let item = queue.get().await.expect("an item is ready");
                served_at.entry(item).or_insert(tick as u64);
                let _ = queue.done(&item);
                tokio::time::advance(TICK).await;
                settle().await;
            }
            // Backlog item k (k items became ready before it) waits at most max_wait to age,
            // then at most 2 (k + 1) gets, one per tick.
            for (k, priority) in backlog.iter().enumerate() {
                let bound = MAX_WAIT + 2 * (k as u64 + 1);
                if bound < stream.len() as u64 {
                    let at = served_at.get(&(k as u8)).copied();
                    prop_assert!(
                        at.is_some_and(|at| at <= bound),
                        "backlog item {} (priority {}) served at {:?}, bound {}",
                        k, priority, at, bound
                    );
                }
            }
            Ok(())
        })?;
    }
}
