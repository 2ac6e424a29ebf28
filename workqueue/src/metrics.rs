//! Metrics hooks for work queues, with a Prometheus implementation.
//!
//! # Why a trait
//!
//! Queues must not depend on one metrics system, and a queue without metrics should cost
//! nothing: a queue built without a provider skips even the timestamps. A [`MetricsProvider`]
//! hands each named queue a [`QueueMetrics`] sink once, at construction; the queue then calls
//! it on every change. [`PrometheusMetricsProvider`] implements it with `prometheus-client`,
//! using client-go's metric names and a `name` label per queue, so existing dashboards work.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `workqueue_depth` | gauge | items waiting |
//! | `workqueue_adds_total` | counter | items added (not counting dedup hits) |
//! | `workqueue_queue_duration_seconds` | histogram | first add to `get` |
//! | `workqueue_work_duration_seconds` | histogram | `get` to `done` |
//! | `workqueue_unfinished_work_seconds` | gauge | summed age of in-flight items |
//! | `workqueue_longest_running_processor_seconds` | gauge | age of the oldest in-flight item |
//! | `workqueue_retries_total` | counter | delayed and rate-limited adds |
//! | `workqueue_unexpected_done_total` | counter | `done` for an item not being processed |
//! | `workqueue_depth_by_priority` | gauge | items waiting, by [`PriorityClass`] (priority queues only) |
//!
//! A [`PriorityQueue`](crate::PriorityQueue) reports `workqueue_depth` (all its waiting items)
//! and also `workqueue_depth_by_priority` with a `priority` label of three values: `high`
//! (priority above 0), `normal` (0) and `low` (below 0). Priorities are any `i32`, so a label per
//! priority value (controller-runtime's choice) would let a caller create unbounded series;
//! three buckets keep the cardinality fixed and still show whether a backlog is low-priority
//! (initial lists, resyncs) or real work.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use prometheus_client::registry::Registry;
//! use reflex_workqueue::metrics::PrometheusMetricsProvider;
//! use reflex_workqueue::queue::{Queue, QueueConfig};
//!
//! let mut registry = Registry::default();
//! let provider = Arc::new(PrometheusMetricsProvider::new(&mut registry));
//! let queue: Queue<String> = Queue::with_config(QueueConfig {
//!     name: "pods".into(),
//!     metrics: Some(provider),
//! });
//! let _ = queue.add("default/web".into());
//!
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
//! assert!(text.contains(r#"workqueue_depth{name="pods"} 1"#));
//! ```

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Receives the measurements of one named queue. Every method defaults to doing nothing, so an
/// implementation records only what it cares about.
pub trait QueueMetrics: Send + Sync {
    /// The number of waiting items changed to `depth`.
    fn depth(&self, depth: usize) {
        let _ = depth;
    }
    /// A new item was added (an add that found the item already dirty is not counted).
    fn added(&self) {}
    /// An item waited `waited` between its first add and the `get` that handed it out.
    fn latency(&self, waited: Duration) {
        let _ = waited;
    }
    /// An item was processed for `worked` (from `get` to `done`).
    fn work_duration(&self, worked: Duration) {
        let _ = worked;
    }
    /// The in-flight items have been running for `unfinished_seconds` in total, the oldest for
    /// `longest_running_seconds`.
    fn unfinished_work(&self, unfinished_seconds: f64, longest_running_seconds: f64) {
        let _ = (unfinished_seconds, longest_running_seconds);
    }
    /// An item was added with a delay (a retry).
    fn retry(&self) {}
    /// `done` was called for an item that was not being processed.
    fn unexpected_done(&self) {}
    /// The number of waiting items of one [`PriorityClass`] changed to `depth` (priority queues
    /// only; they report the total through [`depth`](Self::depth) as well).
    fn priority_depth(&self, class: PriorityClass, depth: usize) {
        let _ = (class, depth);
    }
}

/// The bounded label of a priority queue's depth by priority: priorities above 0 are `High`, 0
/// is `Normal`, below 0 `Low`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PriorityClass {
    /// Priority above 0.
    High,
    /// Priority 0 (the default of an add).
    Normal,
    /// Priority below 0 (initial lists and resyncs in a controller).
    Low,
}

impl PriorityClass {
    /// Every class, in label order.
    pub const ALL: [PriorityClass; 3] = [
        PriorityClass::High,
        PriorityClass::Normal,
        PriorityClass::Low,
    ];

    /// The class of `priority`.
    pub fn of(priority: i32) -> Self {
        match priority {
            p if p > 0 => PriorityClass::High,
            0 => PriorityClass::Normal,
            _ => PriorityClass::Low,
        }
    }

    /// The label value: `high`, `normal` or `low`.
    pub fn as_str(self) -> &'static str {
        match self {
            PriorityClass::High => "high",
            PriorityClass::Normal => "normal",
            PriorityClass::Low => "low",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            PriorityClass::High => 0,
            PriorityClass::Normal => 1,
            PriorityClass::Low => 2,
        }
    }
}

/// Creates the [`QueueMetrics`] of each named queue.
pub trait MetricsProvider: Send + Sync {
    /// The sink for the queue called `name`; called once per queue, at construction.
    fn queue_metrics(&self, name: &str) -> Arc<dyn QueueMetrics>;
}

/// A provider that records nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopMetricsProvider;

/// The sink of [`NoopMetricsProvider`]: every method is the trait's no-op default.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopQueueMetrics;

impl QueueMetrics for NoopQueueMetrics {}

impl MetricsProvider for NoopMetricsProvider {
    fn queue_metrics(&self, _name: &str) -> Arc<dyn QueueMetrics> {
        Arc::new(NoopQueueMetrics)
    }
}

type Labels = Vec<(String, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // client-go's buckets: 10ns to 10s (well, 1e-8 × 10^i for ten buckets).
    Histogram::new(exponential_buckets(1e-8, 10.0, 10))
}

/// Registers client-go's workqueue metrics in a `prometheus-client` [`Registry`] and records
/// every queue under its `name` label.
#[derive(Debug, Clone)]
pub struct PrometheusMetricsProvider {
    depth: Family<Labels, Gauge>,
    adds: Family<Labels, Counter>,
    latency: HistogramFamily,
    work_duration: HistogramFamily,
    unfinished: Family<Labels, Gauge<f64, AtomicU64>>,
    longest: Family<Labels, Gauge<f64, AtomicU64>>,
    retries: Family<Labels, Counter>,
    unexpected_done: Family<Labels, Counter>,
    depth_by_priority: Family<Labels, Gauge>,
}

impl PrometheusMetricsProvider {
    /// Registers the metrics (see the [module documentation](self)) in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let provider = Self {
            depth: Family::default(),
            adds: Family::default(),
            latency: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            work_duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            unfinished: Family::default(),
            longest: Family::default(),
            retries: Family::default(),
            unexpected_done: Family::default(),
            depth_by_priority: Family::default(),
        };
        registry.register(
            "workqueue_depth",
            "Current depth of the workqueue",
            provider.depth.clone(),
        );
        registry.register(
            "workqueue_adds",
            "Total number of adds handled by the workqueue",
            provider.adds.clone(),
        );
        registry.register(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in the workqueue before being requested",
            provider.latency.clone(),
        );
        registry.register(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from the workqueue takes",
            provider.work_duration.clone(),
        );
        registry.register(
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress",
            provider.unfinished.clone(),
        );
        registry.register(
            "workqueue_longest_running_processor_seconds",
            "How many seconds the longest running processor has been running",
            provider.longest.clone(),
        );
        registry.register(
            "workqueue_retries",
            "Total number of retries handled by the workqueue",
            provider.retries.clone(),
        );
        registry.register(
            "workqueue_unexpected_done",
            "Total number of done calls for items that were not being processed",
            provider.unexpected_done.clone(),
        );
        registry.register(
            "workqueue_depth_by_priority",
            "Current depth of a priority workqueue by priority class (high > 0, normal = 0, low < 0)",
            provider.depth_by_priority.clone(),
        );
        provider
    }
}

impl MetricsProvider for PrometheusMetricsProvider {
    fn queue_metrics(&self, name: &str) -> Arc<dyn QueueMetrics> {
        let labels: Labels = vec![("name".to_owned(), name.to_owned())];
        Arc::new(PrometheusQueueMetrics {
            depth: self.depth.get_or_create(&labels).clone(),
            adds: self.adds.get_or_create(&labels).clone(),
            latency: self.latency.get_or_create(&labels).clone(),
            work_duration: self.work_duration.get_or_create(&labels).clone(),
            unfinished: self.unfinished.get_or_create(&labels).clone(),
            longest: self.longest.get_or_create(&labels).clone(),
            retries: self.retries.get_or_create(&labels).clone(),
            unexpected_done: self.unexpected_done.get_or_create(&labels).clone(),
            depth_by_priority_family: self.depth_by_priority.clone(),
            name: name.to_owned(),
            depth_by_priority: OnceLock::new(),
        })
    }
}

/// The per-queue handles of [`PrometheusMetricsProvider`] (looked up once, so recording is a
/// few atomic operations).
#[derive(Debug)]
struct PrometheusQueueMetrics {
    depth: Gauge,
    adds: Counter,
    latency: Histogram,
    work_duration: Histogram,
    unfinished: Gauge<f64, AtomicU64>,
    longest: Gauge<f64, AtomicU64>,
    retries: Counter,
    unexpected_done: Counter,
    depth_by_priority_family: Family<Labels, Gauge>,
    name: String,
    /// By [`PriorityClass::index`]; created by the first priority report, so plain queues
    /// export no such series.
    depth_by_priority: OnceLock<[Gauge; 3]>,
}

impl QueueMetrics for PrometheusQueueMetrics {
    fn depth(&self, depth: usize) {
        self.depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
    }
    fn added(&self) {
        self.adds.inc();
    }
    fn latency(&self, waited: Duration) {
        self.latency.observe(waited.as_secs_f64());
    }
    fn work_duration(&self, worked: Duration) {
        self.work_duration.observe(worked.as_secs_f64());
    }
    fn unfinished_work(&self, unfinished_seconds: f64, longest_running_seconds: f64) {
        self.unfinished.set(unfinished_seconds);
        self.longest.set(longest_running_seconds);
    }
    fn retry(&self) {
        self.retries.inc();
    }
    fn unexpected_done(&self) {
        self.unexpected_done.inc();
    }
    fn priority_depth(&self, class: PriorityClass, depth: usize) {
        let gauges = self.depth_by_priority.get_or_init(|| {
            PriorityClass::ALL.map(|class| {
                let labels: Labels = vec![
                    ("name".to_owned(), self.name.clone()),
                    ("priority".to_owned(), class.as_str().to_owned()),
                ];
                self.depth_by_priority_family.get_or_create(&labels).clone()
            })
        });
        gauges[class.index()].set(i64::try_from(depth).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Queue, QueueConfig};

    fn encode(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry)
            .expect("encoding to a String");
        text
    }

    #[tokio::test(start_paused = true)]
    async fn prometheus_provider_records_every_measurement_by_queue_name() {
        let mut registry = Registry::default();
        let provider = Arc::new(PrometheusMetricsProvider::new(&mut registry));
        let queue = Queue::with_config(QueueConfig {
            name: "pods".into(),
            metrics: Some(provider.clone()),
        });
        let other: Queue<u32> = Queue::with_config(QueueConfig {
            name: "nodes".into(),
            metrics: Some(provider),
        });
        let _ = queue.add(1_u32);
        let _ = queue.add(2);
        let _ = queue.add(2);
        tokio::time::advance(Duration::from_secs(2)).await;
        let item = queue.get().await.unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        queue.update_unfinished_work();
        let _ = queue.done(&item);
        let _ = queue.done(&item);
        let _ = other.add(9);

        let text = encode(&registry);
        for expected in [
            r#"workqueue_depth{name="pods"} 1"#,
            r#"workqueue_depth{name="nodes"} 1"#,
            r#"workqueue_adds_total{name="pods"} 2"#,
            r#"workqueue_queue_duration_seconds_sum{name="pods"} 2.0"#,
            r#"workqueue_work_duration_seconds_sum{name="pods"} 3.0"#,
            r#"workqueue_unfinished_work_seconds{name="pods"} 3.0"#,
            r#"workqueue_longest_running_processor_seconds{name="pods"} 3.0"#,
            r#"workqueue_unexpected_done_total{name="pods"} 1"#,
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn priority_depth_is_exported_with_three_bounded_label_values() {
        use crate::limiter::ItemExponentialFailure;
        use crate::priority::{AddOpts, PriorityQueue, PriorityQueueConfig};

        let mut registry = Registry::default();
        let provider = Arc::new(PrometheusMetricsProvider::new(&mut registry));
        let queue = PriorityQueue::with_config(
            ItemExponentialFailure::new(Duration::from_millis(1), Duration::from_secs(1)),
            PriorityQueueConfig {
                name: "pq".into(),
                metrics: Some(provider.clone()),
                ..PriorityQueueConfig::default()
            },
        );
        let plain: Queue<u32> = Queue::with_config(QueueConfig {
            name: "plain".into(),
            metrics: Some(provider),
        });
        let _ = plain.add(1);
        for (item, priority) in [(1_u32, 5), (2, 1000), (3, 0), (4, -3), (5, i32::MIN)] {
            let _ = queue.add_with_opts(item, AddOpts::priority(priority));
        }
        let text = encode(&registry);
        for expected in [
            r#"workqueue_depth{name="pq"} 5"#,
            r#"workqueue_depth_by_priority{name="pq",priority="high"} 2"#,
            r#"workqueue_depth_by_priority{name="pq",priority="normal"} 1"#,
            r#"workqueue_depth_by_priority{name="pq",priority="low"} 2"#,
            r#"workqueue_adds_total{name="pq"} 5"#,
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        assert_eq!(
            text.matches("workqueue_depth_by_priority{").count(),
            3,
            "three series for the priority queue, none for the plain one:\n{text}"
        );
    }
}
