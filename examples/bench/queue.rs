//! Workqueue throughput: 20k adds over 10k distinct keys (every key twice, so half of the adds
//! are duplicates), taken by 1, 2 and 8 workers that `get` and `done` each item; the time runs
//! from the first add until the queue is drained. Each worker count runs `rounds` times and
//! the median counts. Figures: `w{1,2,8}_adds_per_s`. The same runs with a `PriorityQueue`, all
//! adds at one priority or spread over three.
//!
//! The scale rows (`workqueue-scale`) run the same duplicate pattern over `scale_keys` distinct
//! keys (1M; 100k in quick mode) with 8 and with 1,000 workers, the shape of
//! controller-runtime#3415, `scale_rounds` times each: `w8_adds_per_s`, `w1000_adds_per_s` and
//! their ratio `w1000_over_w8` (no contention cliff: at least 0.5).
use std::time::{Duration, Instant};

use futures::StreamExt;
use reflex_workqueue::{AddOpts, PriorityQueue, Queue, default_controller_rate_limiter};

use crate::Params;
use crate::contenders::{Keep, Run};
use crate::protocol::Figures;

const DISTINCT_KEYS: u64 = 10_000;
/// The worker counts of issue 8.
pub const WORKERS: [usize; 3] = [1, 2, 8];

/// The worker counts of the scale rows.
pub const SCALE_WORKERS: [usize; 2] = [8, 1000];

/// Every key added twice, interleaved so that some duplicates meet a waiting item and some an
/// item being processed (the Go peer builds the same sequence).
pub fn keys() -> Vec<u64> {
    keys_over(DISTINCT_KEYS)
}

/// The same pattern over `distinct` keys.
pub fn keys_over(distinct: u64) -> Vec<u64> {
    (0..distinct)
        .flat_map(|key| [key, (key + distinct / 2) % distinct])
        .collect()
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort_unstable();
    xs[xs.len() / 2]
}

async fn reflex_round(keys: &[u64], distinct: u64, workers: usize) -> Result<Duration, String> {
    let queue: Queue<u64> = Queue::new();
    let start = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut handled = 0_usize;
                while let Some(key) = queue.get().await {
                    std::hint::black_box(key);
                    let _ = queue.done(&key);
                    handled += 1;
                }
                handled
            })
        })
        .collect();
    for key in keys {
        let _ = queue.add(*key);
    }
    queue.shut_down_with_drain().await;
    let elapsed = start.elapsed();
    let mut handled = 0;
    for handle in handles {
        handled += handle.await.map_err(|e| format!("worker: {e}"))?;
    }
    if handled < distinct as usize {
        return Err(format!("only {handled} items handled"));
    }
    Ok(elapsed)
}

/// Reflex's `Queue`.
pub async fn reflex(p: Params) -> Run {
    let keys = keys();
    let mut figures = Figures::new();
    for workers in WORKERS {
        let mut times = Vec::new();
        for _ in 0..p.rounds.max(1) {
            times.push(reflex_round(&keys, DISTINCT_KEYS, workers).await?);
        }
        let t = median(times);
        figures.insert(
            format!("w{workers}_adds_per_s"),
            keys.len() as f64 / t.as_secs_f64(),
        );
    }
    Ok((figures, Box::new(()) as Keep))
}

/// How the priority-queue rows pick each add's priority.
#[derive(Debug, Clone, Copy)]
enum Priorities {
    /// Every add at priority 0.
    One,
    /// Priorities -1, 0 and 1 by key (a third each).
    Mixed,
}

async fn priority_round(
    keys: &[u64],
    workers: usize,
    priorities: Priorities,
) -> Result<Duration, String> {
    let queue: PriorityQueue<u64> = PriorityQueue::new(default_controller_rate_limiter());
    let start = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut handled = 0_usize;
                while let Some(key) = queue.get().await {
                    std::hint::black_box(key);
                    let _ = queue.done(&key);
                    handled += 1;
                }
                handled
            })
        })
        .collect();
    for key in keys {
        let _ = match priorities {
            Priorities::One => queue.add(*key),
            Priorities::Mixed => queue
                .add_with_opts(*key, AddOpts::priority((key % 3) as i32 - 1))
                .map_err(|e| e.to_string())?,
        };
    }
    queue.shut_down_with_drain().await;
    let elapsed = start.elapsed();
    let mut handled = 0;
    for handle in handles {
        handled += handle.await.map_err(|e| format!("worker: {e}"))?;
    }
    if handled < DISTINCT_KEYS as usize {
        return Err(format!("only {handled} items handled"));
    }
    Ok(elapsed)
}

async fn priority_rows(p: Params, priorities: Priorities) -> Run {
    let keys = keys();
    let mut figures = Figures::new();
    for workers in WORKERS {
        let mut times = Vec::new();
        for _ in 0..p.rounds.max(1) {
            times.push(priority_round(&keys, workers, priorities).await?);
        }
        let t = median(times);
        figures.insert(
            format!("w{workers}_adds_per_s"),
            keys.len() as f64 / t.as_secs_f64(),
        );
    }
    Ok((figures, Box::new(()) as Keep))
}

/// Reflex's `PriorityQueue`, every add at one priority.
pub async fn reflex_priority_one(p: Params) -> Run {
    priority_rows(p, Priorities::One).await
}

/// Reflex's `PriorityQueue`, adds at priorities -1, 0 and 1.
pub async fn reflex_priority_mixed(p: Params) -> Run {
    priority_rows(p, Priorities::Mixed).await
}

/// Reflex's `Queue` on the scale rows.
pub async fn reflex_scale(p: Params) -> Run {
    let distinct = p.scale_keys.max(2) as u64;
    let keys = keys_over(distinct);
    let mut figures = Figures::new();
    for workers in SCALE_WORKERS {
        let mut times = Vec::new();
        for _ in 0..p.scale_rounds.max(1) {
            times.push(reflex_round(&keys, distinct, workers).await?);
        }
        let t = median(times);
        figures.insert(
            format!("w{workers}_adds_per_s"),
            keys.len() as f64 / t.as_secs_f64(),
        );
    }
    add_scale_ratio(&mut figures);
    Ok((figures, Box::new(()) as Keep))
}

/// `w1000_over_w8`, from the two figures of a scale row.
pub fn add_scale_ratio(figures: &mut Figures) {
    if let (Some(w8), Some(w1000)) = (
        figures.get("w8_adds_per_s").copied(),
        figures.get("w1000_adds_per_s").copied(),
    ) && w8 > 0.0
    {
        figures.insert("w1000_over_w8".into(), w1000 / w8);
    }
}

/// kube-runtime's scheduler, the nearest thing it has: every add becomes a `ScheduleRequest`
/// due now, the scheduler dedupes pending keys, and one consumer drains it until every distinct
/// key came out once. It has no workers and no done, so only the one-worker figure exists.
pub async fn kube_runtime(p: Params) -> Run {
    use kube_runtime::scheduler::{ScheduleRequest, scheduler};
    let keys = keys();
    let mut times = Vec::new();
    for _ in 0..p.rounds.max(1) {
        let start = Instant::now();
        let now = tokio::time::Instant::now();
        // The scheduler ends as soon as its request stream ends, dropping what is pending, so
        // the stream stays open; the round ends once every distinct key was emitted.
        let requests = futures::stream::iter(keys.iter().map(|k| ScheduleRequest {
            message: *k,
            run_at: now,
        }))
        .chain(futures::stream::pending());
        let mut seen = vec![false; DISTINCT_KEYS as usize];
        let mut handled = 0_usize;
        let mut emitted = std::pin::pin!(scheduler(requests));
        while handled < DISTINCT_KEYS as usize {
            let Some(key) = emitted.next().await else {
                break;
            };
            if let Some(s) = seen.get_mut(key as usize)
                && !*s
            {
                *s = true;
                handled += 1;
            }
        }
        times.push(start.elapsed());
        if handled < DISTINCT_KEYS as usize {
            return Err(format!("only {handled} items handled"));
        }
    }
    let t = median(times);
    Ok((
        Figures::from([("w1_adds_per_s".into(), keys.len() as f64 / t.as_secs_f64())]),
        Box::new(()) as Keep,
    ))
}
