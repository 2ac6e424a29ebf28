//! Workqueue throughput: add/get/done with 1, 2 and 8 workers over 10k distinct keys with 50%
//! duplicates; the same operations from a single task (no contention), `Queue` beside
//! `PriorityQueue`; and a delaying queue with 100k timers.
//!
//! Run briefly with
//! `cargo bench -p reflex-workqueue --bench queue -- --warm-up-time 1 --measurement-time 3`
//! (or `-- --quick`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use reflex_workqueue::{
    AddOpts, DelayingQueue, PriorityQueue, PriorityQueueConfig, Queue,
    default_controller_rate_limiter,
};

const DISTINCT_KEYS: u64 = 10_000;
const TIMERS: u64 = 100_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Every key added twice (half of the adds are duplicates), in an interleaved order so that
/// some duplicates hit a waiting item and some an item being processed.
fn keys() -> Vec<u64> {
    (0..DISTINCT_KEYS)
        .flat_map(|key| [key, (key + DISTINCT_KEYS / 2) % DISTINCT_KEYS])
        .collect()
}

async fn add_get_done(keys: &[u64], workers: usize) -> usize {
    let queue: Queue<u64> = Queue::new();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut handled = 0_usize;
                while let Some(key) = queue.get().await {
                    black_box(key);
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
    let mut handled = 0;
    for handle in handles {
        handled += handle.await.expect("worker");
    }
    handled
}

fn queue_throughput(c: &mut Criterion) {
    let rt = runtime();
    let keys = keys();
    let mut group = c.benchmark_group("queue/add_get_done_10k_keys_50pct_dup");
    group.sample_size(10);
    group.throughput(Throughput::Elements(keys.len() as u64));
    for workers in [1_usize, 2, 8] {
        group.bench_with_input(
            BenchmarkId::from_parameter(workers),
            &workers,
            |b, &workers| {
                b.to_async(&rt).iter(|| add_get_done(&keys, workers));
            },
        );
    }
    group.finish();
}

/// One task adds every key, then takes and finishes every item: the cost of the operations
/// without contention, `Queue` beside `PriorityQueue` (one priority, three priorities, no
/// aging).
fn single_task(c: &mut Criterion) {
    let rt = runtime();
    let keys = keys();
    let mut group = c.benchmark_group("single_task/add_then_drain_10k_keys_50pct_dup");
    group.sample_size(20);
    group.throughput(Throughput::Elements(keys.len() as u64));
    group.bench_function("queue", |b| {
        b.to_async(&rt).iter(|| async {
            let queue: Queue<u64> = Queue::new();
            for key in &keys {
                let _ = queue.add(*key);
            }
            while !queue.is_empty() {
                let key = queue.get().await.expect("queued");
                let _ = queue.done(&key);
            }
        });
    });
    for (name, spread, max_wait) in [
        ("priority_one", false, true),
        ("priority_three", true, true),
        ("priority_three_no_aging", true, false),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let config = PriorityQueueConfig {
                    max_wait: if max_wait {
                        PriorityQueueConfig::default().max_wait
                    } else {
                        None
                    },
                    ..PriorityQueueConfig::default()
                };
                let queue: PriorityQueue<u64> =
                    PriorityQueue::with_config(default_controller_rate_limiter(), config);
                for key in &keys {
                    let priority = if spread { (key % 3) as i32 - 1 } else { 0 };
                    let _ = queue.add_with_opts(*key, AddOpts::priority(priority));
                }
                while !queue.is_empty() {
                    let key = queue.get().await.expect("ready");
                    let _ = queue.done(&key);
                }
            });
        });
    }
    group.finish();
}

fn delaying_timers(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("delaying/100k_timers");
    group.sample_size(10);
    group.throughput(Throughput::Elements(TIMERS));
    group.bench_function("schedule", |b| {
        b.to_async(&rt).iter(|| async {
            let queue: DelayingQueue<u64> = DelayingQueue::new();
            for item in 0..TIMERS {
                // Distinct deadlines an hour out: measures the heap, nothing fires.
                let delay = Duration::from_secs(3600) + Duration::from_micros(item * 7 % 100_003);
                let _ = queue.add_after(item, delay).expect("inside a runtime");
            }
            black_box(queue.waiting_len());
            queue.shut_down();
        });
    });
    group.bench_function("schedule_and_fire", |b| {
        b.to_async(&rt).iter(|| async {
            let queue: DelayingQueue<u64> = DelayingQueue::new();
            for item in 0..TIMERS {
                // Spread over 1..=2 ms so the timer fires in a few large batches.
                let delay = Duration::from_micros(1_000 + item % 1_000);
                let _ = queue.add_after(item, delay).expect("inside a runtime");
            }
            for _ in 0..TIMERS {
                let item = queue.get().await.expect("every timer fires");
                let _ = queue.done(&item);
            }
            queue.shut_down();
        });
    });
    group.finish();
}

criterion_group!(benches, queue_throughput, single_task, delaying_timers);
criterion_main!(benches);
