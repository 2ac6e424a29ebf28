//! Producers and workers around a [`RateLimitingQueue`], with failures and retries.
//!
//! Producers add keys in rounds (`p0-3` is the fourth key of producer 0); each key fails a fixed,
//! key-derived number of times (`n % 3` for the `n`th key) before it succeeds, so the run is
//! deterministic in what happens, if not in which worker does it. Every attempt prints a line with
//! the worker, the key, the attempt and, for a failure, the delay the rate limiter chose (the larger
//! of a per-key exponential backoff and an overall token bucket, as client-go's default). A table of
//! the queue's metrics (depth, adds, retries, in flight, mean work time) is printed every second and
//! at the end.
//!
//! ```text
//! cargo run --example workqueue-demo                       # until Ctrl-C
//! cargo run --example workqueue-demo -- --rounds 2         # two rounds, then exit
//! ```
//!
//! The queue is the whole point: duplicates of a waiting key are stored once, a key is never
//! handed to two workers at once, and a failed key comes back after its backoff.

#[allow(dead_code, reason = "shared by all examples; each uses part of it")]
#[path = "../common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use parking_lot::Mutex;
use reflex::workqueue::metrics::{MetricsProvider, QueueMetrics};
use reflex::workqueue::queue::QueueConfig;
use reflex::workqueue::{
    Bucket, ItemExponentialFailure, LimiterError, MaxOf, RateLimiter, RateLimitingQueue,
};
use tokio_util::sync::CancellationToken;

/// Command line of the demo.
#[derive(Debug, Parser)]
#[command(
    name = "workqueue-demo",
    about = "Producers, workers, failures and retries on a rate-limited work queue"
)]
struct Args {
    /// Number of producer tasks.
    #[arg(long, default_value_t = 2)]
    producers: usize,
    /// Number of worker tasks.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Keys each producer adds per round.
    #[arg(long, default_value_t = 4)]
    items: usize,
    /// Rounds of production; without it producers go on until Ctrl-C.
    #[arg(long)]
    rounds: Option<usize>,
    /// Pause between two rounds, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    interval_ms: u64,
    /// Simulated work per attempt, in milliseconds.
    #[arg(long, default_value_t = 40)]
    work_ms: u64,
    /// First retry delay of a key (doubles per failure), in milliseconds.
    #[arg(long, default_value_t = 50)]
    base_delay_ms: u64,
    /// Largest retry delay of a key, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    max_delay_ms: u64,
    /// Overall retry rate of the token bucket, in retries per second.
    #[arg(long, default_value_t = 10.0)]
    qps: f64,
    /// Burst of the token bucket.
    #[arg(long, default_value_t = 100)]
    burst: u32,
    /// Exit after this many keys succeeded.
    #[arg(long)]
    exit_after_events: Option<u64>,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
enum DemoError {
    /// The token bucket options are invalid.
    #[error("invalid rate limiter options")]
    Limiter(#[source] LimiterError),
    /// The signal handlers could not be installed.
    #[error("cannot install the Ctrl-C handler")]
    Signal(#[source] std::io::Error),
}

/// Queue metrics kept as plain counters so the demo can print them as a table.
#[derive(Debug, Default)]
struct Tally {
    depth: AtomicUsize,
    adds: AtomicU64,
    retries: AtomicU64,
    processed: AtomicU64,
    work_micros: AtomicU64,
}

impl QueueMetrics for Tally {
    fn depth(&self, depth: usize) {
        self.depth.store(depth, Ordering::Relaxed);
    }
    fn added(&self) {
        self.adds.fetch_add(1, Ordering::Relaxed);
    }
    fn work_duration(&self, worked: Duration) {
        self.processed.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(worked.as_micros()).unwrap_or(u64::MAX);
        self.work_micros.fetch_add(micros, Ordering::Relaxed);
    }
    fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
}

/// Hands out the one [`Tally`] (the demo has one queue).
struct TallyProvider(Arc<Tally>);

impl MetricsProvider for TallyProvider {
    fn queue_metrics(&self, _name: &str) -> Arc<dyn QueueMetrics> {
        self.0.clone()
    }
}

/// A rate limiter that remembers the last delay it chose for each key, so the worker that
/// retried a key can print it.
struct Recording<L> {
    limiter: L,
    last: Arc<Mutex<HashMap<String, Duration>>>,
}

impl<L: RateLimiter<String>> RateLimiter<String> for Recording<L> {
    fn when(&self, item: &String) -> Duration {
        let delay = self.limiter.when(item);
        self.last.lock().insert(item.clone(), delay);
        delay
    }
    fn forget(&self, item: &String) {
        self.last.lock().remove(item);
        self.limiter.forget(item)
    }
    fn num_requeues(&self, item: &String) -> u32 {
        self.limiter.num_requeues(item)
    }
}

/// How many times the key fails before it succeeds: `n % 3` for key `p<i>-<n>`.
fn planned_failures(key: &str) -> u32 {
    key.rsplit('-')
        .next()
        .and_then(|n| n.parse::<u32>().ok())
        .map_or(0, |n| n % 3)
}

fn millis(d: Duration) -> String {
    format!("{:.0}ms", d.as_secs_f64() * 1000.0)
}

fn metrics_table(tally: &Tally, queue: &RateLimitingQueue<String>, succeeded: u64) -> String {
    let processed = tally.processed.load(Ordering::Relaxed);
    let mean = tally
        .work_micros
        .load(Ordering::Relaxed)
        .checked_div(processed)
        .map_or(Duration::ZERO, Duration::from_micros);
    let rows = [
        ("depth", tally.depth.load(Ordering::Relaxed).to_string()),
        ("waiting (delayed)", queue.waiting_len().to_string()),
        ("in flight", queue.queue().processing_len().to_string()),
        ("adds", tally.adds.load(Ordering::Relaxed).to_string()),
        ("retries", tally.retries.load(Ordering::Relaxed).to_string()),
        ("attempts", processed.to_string()),
        ("succeeded", succeeded.to_string()),
        ("mean work", millis(mean)),
    ];
    let mut out = String::from(
        "  +-------------------+----------+\n  | METRIC            | VALUE    |\n  +-------------------+----------+\n",
    );
    for (name, value) in rows {
        let _ = writeln!(out, "  | {name:<17} | {value:>8} |");
    }
    out.push_str("  +-------------------+----------+");
    out
}

struct Shared {
    queue: RateLimitingQueue<String>,
    last_delay: Arc<Mutex<HashMap<String, Duration>>>,
    attempts: Mutex<HashMap<String, u32>>,
    succeeded: AtomicU64,
    started: Instant,
    work: Duration,
}

async fn worker(id: usize, shared: Arc<Shared>, progress: tokio::sync::mpsc::UnboundedSender<()>) {
    while let Some(key) = shared.queue.get().await {
        let attempt = {
            let mut attempts = shared.attempts.lock();
            let n = attempts.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        tokio::time::sleep(shared.work).await;
        let at = shared.started.elapsed().as_secs_f64();
        if attempt <= planned_failures(&key) {
            let accepted = shared.queue.add_rate_limited(key.clone());
            let delay = shared.last_delay.lock().get(&key).copied();
            match (accepted, delay) {
                (Ok(added), Some(delay)) if added.is_accepted() => println!(
                    "{at:>8.3}s  w{id:<5} {key:<8} {attempt:>7}  failed     retry in {}",
                    millis(delay)
                ),
                _ => println!(
                    "{at:>8.3}s  w{id:<5} {key:<8} {attempt:>7}  failed     queue shutting down"
                ),
            }
        } else {
            shared.queue.forget(&key);
            shared.attempts.lock().remove(&key);
            shared.succeeded.fetch_add(1, Ordering::Relaxed);
            println!(
                "{at:>8.3}s  w{id:<5} {key:<8} {attempt:>7}  succeeded  after {} retries",
                attempt - 1
            );
            let _ = progress.send(());
        }
        shared.queue.done(&key);
    }
}

async fn producer(id: usize, args: Arc<Args>, shared: Arc<Shared>, stop: CancellationToken) {
    let mut round = 0;
    while args.rounds.is_none_or(|rounds| round < rounds) {
        for n in 0..args.items {
            let key = format!("p{id}-{}", round * args.items + n);
            if !shared.queue.add(key).is_accepted() {
                return;
            }
        }
        round += 1;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(args.interval_ms)) => {}
        }
    }
}

async fn run(args: Args) -> Result<(), DemoError> {
    let args = Arc::new(args);
    let shutdown = reflex::runtime::signal::shutdown_token().map_err(DemoError::Signal)?;
    let last_delay = Arc::new(Mutex::new(HashMap::new()));
    let exponential = ItemExponentialFailure::new(
        Duration::from_millis(args.base_delay_ms),
        Duration::from_millis(args.max_delay_ms),
    );
    let bucket = Bucket::new(args.qps, args.burst).map_err(DemoError::Limiter)?;
    let limiter = Recording {
        limiter: MaxOf::<String>::new(vec![Box::new(exponential), Box::new(bucket)]),
        last: last_delay.clone(),
    };
    let tally = Arc::new(Tally::default());
    let queue = RateLimitingQueue::with_config(
        limiter,
        QueueConfig {
            name: "demo".into(),
            metrics: Some(Arc::new(TallyProvider(tally.clone()))),
        },
    );
    let shared = Arc::new(Shared {
        queue: queue.clone(),
        last_delay,
        attempts: Mutex::new(HashMap::new()),
        succeeded: AtomicU64::new(0),
        started: Instant::now(),
        work: Duration::from_millis(args.work_ms),
    });

    println!(
        "{} producers x {} keys per round, {} workers; key p<i>-<n> fails n % 3 times before it succeeds",
        args.producers, args.items, args.workers
    );
    println!(
        "{:>9}  {:<6} {:<8} {:>7}  {:<10} DETAIL",
        "TIME", "WORKER", "KEY", "ATTEMPT", "RESULT"
    );

    let (progress_tx, mut progress) = tokio::sync::mpsc::unbounded_channel();
    let stop_producers = shutdown.child_token();
    let producers: Vec<_> = (0..args.producers)
        .map(|id| {
            tokio::spawn(producer(
                id,
                args.clone(),
                shared.clone(),
                stop_producers.clone(),
            ))
        })
        .collect();
    let workers: Vec<_> = (0..args.workers)
        .map(|id| tokio::spawn(worker(id, shared.clone(), progress_tx.clone())))
        .collect();
    drop(progress_tx);

    let expected = args
        .rounds
        .map(|r| (r * args.items * args.producers) as u64);
    let target = match (expected, args.exit_after_events) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    loop {
        let done = shared.succeeded.load(Ordering::Relaxed);
        if target.is_some_and(|t| done >= t) {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                println!("interrupted, shutting down");
                break;
            }
            _ = ticker.tick() => println!("{}", metrics_table(&tally, &queue, done)),
            _ = progress.recv() => {}
        }
    }
    stop_producers.cancel();
    for p in producers {
        let _ = p.await;
    }
    // In-flight keys finish; keys waiting for a retry delay are dropped.
    queue.shut_down_with_drain().await;
    for w in workers {
        let _ = w.await;
    }
    println!("final metrics:");
    println!(
        "{}",
        metrics_table(&tally, &queue, shared.succeeded.load(Ordering::Relaxed))
    );
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::init_tracing();
    common::exit_code(run(Args::parse()).await)
}
