//! Many producers and many workers on a multi-threaded runtime: no item is ever held by two
//! workers at once, and none is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rand::Rng;
use reflex_workqueue::limiter::ItemFastSlow;
use reflex_workqueue::{Added, Queue, RateLimitingQueue};

const KEYS: usize = 500;
const PRODUCERS: usize = 8;
const ADDS_PER_PRODUCER: usize = 5_000;
const WORKERS: usize = 16;

struct Ledger {
    /// Sequence number taken just before the last add of each key.
    last_add: Vec<AtomicU64>,
    /// Sequence number taken just after the last get of each key.
    last_get: Vec<AtomicU64>,
    /// Whether a worker holds the key now.
    held: Vec<AtomicBool>,
    clock: AtomicU64,
    double_holds: AtomicU64,
}

impl Ledger {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            last_add: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            last_get: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            held: (0..KEYS).map(|_| AtomicBool::new(false)).collect(),
            clock: AtomicU64::new(1),
            double_holds: AtomicU64::new(0),
        })
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }
}

async fn work(queue: Queue<usize>, ledger: Arc<Ledger>) -> usize {
    let mut handled = 0;
    while let Some(key) = queue.get().await {
        ledger.last_get[key].fetch_max(ledger.tick(), Ordering::SeqCst);
        if ledger.held[key].swap(true, Ordering::SeqCst) {
            ledger.double_holds.fetch_add(1, Ordering::SeqCst);
        }
        if key % 3 == 0 {
            tokio::task::yield_now().await;
        }
        ledger.held[key].store(false, Ordering::SeqCst);
        let _ = queue.done(&key);
        handled += 1;
    }
    handled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_item_is_held_by_two_workers_and_none_is_lost() {
    let queue: Queue<usize> = Queue::new();
    let ledger = Ledger::new();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| tokio::spawn(work(queue.clone(), Arc::clone(&ledger))))
        .collect();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|_| {
            let queue = queue.clone();
            let ledger = Arc::clone(&ledger);
            tokio::spawn(async move {
                for n in 0..ADDS_PER_PRODUCER {
                    let key = rand::rng().random_range(0..KEYS);
                    ledger.last_add[key].fetch_max(ledger.tick(), Ordering::SeqCst);
                    assert!(queue.add(key).is_accepted());
                    if n % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.unwrap();
    }
    queue.shut_down_with_drain().await;
    let mut handled = 0;
    for worker in workers {
        handled += worker.await.unwrap();
    }

    assert_eq!(
        ledger.double_holds.load(Ordering::SeqCst),
        0,
        "an item was held twice"
    );
    for key in 0..KEYS {
        let added = ledger.last_add[key].load(Ordering::SeqCst);
        let got = ledger.last_get[key].load(Ordering::SeqCst);
        assert!(
            added == 0 || got > added,
            "key {key} last added at {added} but last handed out at {got}"
        );
    }
    let distinct_added = (0..KEYS)
        .filter(|key| ledger.last_add[*key].load(Ordering::SeqCst) != 0)
        .count();
    assert!(
        handled >= distinct_added,
        "every added key ran at least once"
    );
    assert!(handled <= PRODUCERS * ADDS_PER_PRODUCER);
    assert_eq!(queue.len(), 0);
    assert_eq!(queue.processing_len(), 0);
    assert_eq!(queue.unexpected_done_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limited_retries_never_overlap_and_all_finish() {
    let queue: RateLimitingQueue<usize> = RateLimitingQueue::new(ItemFastSlow::new(
        std::time::Duration::ZERO,
        std::time::Duration::from_millis(1),
        2,
    ));
    let ledger = Ledger::new();
    let remaining_failures: Arc<Vec<AtomicU64>> =
        Arc::new((0..KEYS).map(|_| AtomicU64::new(2)).collect());
    let (succeeded_tx, mut succeeded_rx) = tokio::sync::mpsc::unbounded_channel();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let queue = queue.clone();
            let ledger = Arc::clone(&ledger);
            let remaining = Arc::clone(&remaining_failures);
            let succeeded = succeeded_tx.clone();
            tokio::spawn(async move {
                while let Some(key) = queue.get().await {
                    if ledger.held[key].swap(true, Ordering::SeqCst) {
                        ledger.double_holds.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::task::yield_now().await;
                    ledger.held[key].store(false, Ordering::SeqCst);
                    let failed = remaining[key]
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                            left.checked_sub(1)
                        })
                        .is_ok();
                    if failed {
                        assert_ne!(queue.add_rate_limited(key), Ok(Added::ShuttingDown));
                    } else {
                        queue.forget(&key);
                        succeeded.send(key).expect("the test is listening");
                    }
                    let _ = queue.done(&key);
                }
            })
        })
        .collect();
    for key in 0..KEYS {
        let _ = queue.add(key);
    }
    // Every key fails twice, then succeeds; wait until all succeeded.
    let mut succeeded = std::collections::HashSet::new();
    while succeeded.len() < KEYS {
        succeeded.insert(succeeded_rx.recv().await.expect("workers are running"));
    }
    queue.shut_down_with_drain().await;
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(ledger.double_holds.load(Ordering::SeqCst), 0);
    assert!(
        (0..KEYS).all(|key| queue.num_requeues(&key) == 0),
        "success forgot every key"
    );
}
