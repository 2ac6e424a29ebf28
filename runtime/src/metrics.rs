//! Prometheus metrics of controllers, their work queues and informers, on one registry.
//!
//! A controller is judged by a few numbers: how many reconciles ran and how they ended, how long
//! they took, how deep and old its queue is, and whether its informers keep up with the server
//! (events flowing, few relists). [`Metrics`] registers all of them in a `prometheus-client`
//! [`Registry`] that [`HealthServer::registry`](crate::serve::HealthServer::registry) serves on
//! `/metrics`. There are no global statics: create one `Metrics`, hand it to each controller
//! through [`ControllerOptions::metrics`](crate::controller::ControllerOptions::metrics) and to
//! each informer with [`Metrics::register_informer`].
//!
//! Controller and workqueue metrics keep the names of controller-runtime and client-go, so
//! existing dashboards and alerts work unchanged; informer metrics have no common precedent and
//! are prefixed `reflex_`.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `controller_runtime_reconcile_total` | counter | `controller`, `result` | reconciles by outcome: `success` (`Action::done`), `requeue_after` (`Action::requeue_after`), `error` (an `Err` or a panic) |
//! | `controller_runtime_reconcile_errors_total` | counter | `controller` | reconciles that returned `Err` or panicked |
//! | `controller_runtime_reconcile_panics_total` | counter | `controller` | reconciles that panicked |
//! | `controller_runtime_reconcile_time_seconds` | histogram | `controller` | duration of every reconcile, whatever its outcome |
//! | `controller_runtime_active_workers` | gauge | `controller` | reconciles running now |
//! | `controller_runtime_max_concurrent_reconciles` | gauge | `controller` | configured workers |
//! | `workqueue_*` | | `name` | client-go's workqueue metrics (see [`reflex_workqueue::metrics`]); a controller's default queue is named after the controller |
//! | `reflex_informer_events_total` | counter | `resource`, `event` | `add`, `update` (resourceVersion changed; resyncs are not counted) and `delete` notifications |
//! | `reflex_informer_relists_total` | counter | `resource` | completed lists (the initial one included) |
//! | `reflex_informer_watch_restarts_total` | counter | `resource` | watches restarted without a relist |
//! | `reflex_informer_list_watch_errors_total` | counter | `resource` | list-and-watch rounds that ended with an error |
//! | `reflex_informer_objects` | gauge | `resource` | objects in the informer's store |
//! | `reflex_informer_synced` | gauge | `resource` | 1 once the initial list reached the store, else 0 |
//! | `reflex_informer_lag_seconds` | histogram | `resource` | with [`InformerOptions::lag_probe`](reflex_informer::InformerOptions::lag_probe): time from a consistent list until the store reflected its resourceVersion (an upper bound of the cache's lag; see [`reflex_informer::lag`]) |
//! | `reflex_informer_sync_state` | gauge | `resource` | [`SyncState::code`](reflex_informer::SyncState::code): 0 starting, 1 listing, 2 synced, 3 failing before a sync, 4 failing after one (serving the old cache), 5 stopped |
//! | `reflex_informer_last_error_timestamp_seconds` | gauge | `resource` | Unix time of the last list or watch failure (absent before the first) |
//! | `reflex_informer_store_resource_version` | gauge | `resource` | the resourceVersion the store reflects (client-go's `store_resource_version`; absent while it is not a KEP-5504 integer) |
//! | `reflex_sharding_slots` | gauge | `group` | with [`Metrics::register_sharding`]: the slots the hash space is cut into |
//! | `reflex_sharding_owned_slots` | gauge | `group` | slots this replica reconciles now |
//! | `reflex_sharding_members` | gauge | `group` | live members this replica sees |
//! | `reflex_sharding_handoffs_total` | counter | `group` | slots this replica took over |
//! | `reflex_sharding_handoff_seconds` | histogram | `group` | from being assigned a slot to reconciling it (the old holder's release or Lease expiry and the cache's list included) |
//!
//! The `result` series of a controller exist (at 0) from the moment it starts, as in
//! controller-runtime, so a rate over them is defined before the first reconcile.
//!
//! ```no_run
//! use std::sync::Arc;
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use prometheus_client::registry::Registry;
//! use reflex_informer::factory::{FactoryOptions, SharedInformerFactory};
//! use reflex_runtime::controller::{Action, Controller, ControllerOptions, default_error_policy};
//! use reflex_runtime::metrics::Metrics;
//! use reflex_runtime::serve::{HealthServer, ServeConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn doc(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let mut registry = Registry::default();
//! let metrics = Metrics::new(&mut registry);
//! let factory = SharedInformerFactory::new(client, FactoryOptions::default());
//! let config_maps = factory.informer::<ConfigMap>();
//! metrics.register_informer("configmaps", &config_maps)?;
//! factory.start();
//!
//! let shutdown = CancellationToken::new();
//! let server = HealthServer::new(ServeConfig::default())
//!     .registry(Arc::new(registry))
//!     .start(shutdown.clone())
//!     .await?;
//! let reconcile = |_key, _ctx: Arc<()>| async { Ok::<_, kube::Error>(Action::done()) };
//! Controller::new(config_maps)
//!     .options(ControllerOptions {
//!         name: "configmaps".into(),
//!         metrics: Some(metrics.clone()),
//!         shutdown: shutdown.clone(),
//!         ..ControllerOptions::default()
//!     })
//!     .run(reconcile, default_error_policy, Arc::new(()))
//!     .await?;
//! server.join().await;
//! factory.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use reflex_informer::handler::handler_fn;
use reflex_informer::{InformerError, SharedIndexInformer};
use reflex_workqueue::metrics::PrometheusMetricsProvider;

use crate::sharding::ShardGate;

/// Why an informer could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Another informer is already registered under this `resource` label; two would report
    /// the same series.
    #[error("an informer is already registered as resource {0:?}")]
    DuplicateResource(String),
    /// A sharding group is already registered; two would report the same series.
    #[error("a sharding group {0:?} is already registered")]
    DuplicateGroup(String),
    /// The counting handler could not be added (the informer was stopped).
    #[error("registering the metrics handler on informer {resource:?} failed")]
    Informer {
        /// The `resource` label asked for.
        resource: String,
        /// The informer's refusal.
        #[source]
        source: InformerError,
    },
}

type Labels = Vec<(String, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn reconcile_histogram() -> Histogram {
    // 1 ms doubling to about 65 s: reconciles are API round trips, from cache hits to slow writes.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn handoff_histogram() -> Histogram {
    // 100 ms doubling to about 27 min: from a released slot and a short list to a lease expiry
    // and a list of many objects.
    Histogram::new(exponential_buckets(0.1, 2.0, 15))
}

fn group_label(group: &str) -> Labels {
    vec![("group".to_owned(), group.to_owned())]
}

/// Reads the registered sharding gates on every scrape.
struct ShardingCollector {
    gates: Arc<RwLock<Vec<ShardGate>>>,
}

impl fmt::Debug for ShardingCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardingCollector")
            .field("groups", &self.gates.read().len())
            .finish()
    }
}

impl Collector for ShardingCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let gates = self.gates.read().clone();
        if gates.is_empty() {
            return Ok(());
        }
        type GateSeries = (&'static str, &'static str, fn(&ShardGate) -> i64);
        let gauges: [GateSeries; 3] = [
            (
                "reflex_sharding_slots",
                "Slots the hash space is cut into",
                |g| i64::from(g.slots()),
            ),
            (
                "reflex_sharding_owned_slots",
                "Slots this replica reconciles now",
                |g| g.active_slots().len() as i64,
            ),
            (
                "reflex_sharding_members",
                "Live members this replica sees",
                |g| g.members().len() as i64,
            ),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for g in &gates {
                ConstGauge::new(value(g)).encode(family.encode_family(&group_label(g.group()))?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "reflex_sharding_handoffs",
            "Slots this replica took over",
            None,
            MetricType::Counter,
        )?;
        for g in &gates {
            ConstCounter::new(g.handoffs().0)
                .encode(family.encode_family(&group_label(g.group()))?)?;
        }
        Ok(())
    }
}

fn lag_histogram() -> Histogram {
    // 5 ms doubling to about 5.5 min: from a current cache to one a bookmark interval behind.
    Histogram::new(exponential_buckets(0.005, 2.0, 17))
}

/// The outcome label of `controller_runtime_reconcile_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReconcileResult {
    Success,
    RequeueAfter,
    Error,
}

impl ReconcileResult {
    const ALL: [ReconcileResult; 3] = [Self::Success, Self::RequeueAfter, Self::Error];

    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::RequeueAfter => "requeue_after",
            Self::Error => "error",
        }
    }
}

/// A snapshot of one informer, taken at scrape time.
struct InformerSample {
    relists: u64,
    watch_restarts: u64,
    errors: u64,
    objects: usize,
    synced: bool,
    sync_state: i64,
    last_error: Option<f64>,
    store_resource_version: Option<u64>,
}

/// One registered informer, type-erased for the collector.
trait InformerProbe: Send + Sync {
    fn sample(&self) -> InformerSample;
}

impl<K> InformerProbe for SharedIndexInformer<K>
where
    K: kube::Resource + Send + Sync + 'static,
{
    fn sample(&self) -> InformerSample {
        let stats = self.reflector_stats();
        InformerSample {
            relists: stats.as_ref().map_or(0, |s| s.relists()),
            watch_restarts: stats.as_ref().map_or(0, |s| s.watch_restarts()),
            errors: stats.as_ref().map_or(0, |s| s.errors()),
            objects: self.indexer().len(),
            synced: self.has_synced(),
            sync_state: self.sync_state().code(),
            last_error: self.last_sync_error_at().and_then(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs_f64())
            }),
            store_resource_version: reflex_informer::resource_version::as_number(
                &self.last_store_resource_version(),
            ),
        }
    }
}

/// A metric read from each sample: name, help and how to read it.
type Series<T> = (&'static str, &'static str, fn(&InformerSample) -> T);

type Probes = Arc<RwLock<Vec<(String, Arc<dyn InformerProbe>)>>>;

/// Reads the registered informers' reflector counters and stores on every scrape.
struct InformerCollector {
    probes: Probes,
}

impl fmt::Debug for InformerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InformerCollector")
            .field("informers", &self.probes.read().len())
            .finish()
    }
}

fn resource_label(resource: &str) -> Labels {
    vec![("resource".to_owned(), resource.to_owned())]
}

impl Collector for InformerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        // Sample each informer once so the series of one scrape agree with each other.
        let samples: Vec<(String, InformerSample)> = self
            .probes
            .read()
            .iter()
            .map(|(resource, probe)| (resource.clone(), probe.sample()))
            .collect();
        if samples.is_empty() {
            return Ok(());
        }
        let counters: [Series<u64>; 3] = [
            (
                "reflex_informer_relists",
                "Completed lists of the informer's reflector, the initial one included",
                |s| s.relists,
            ),
            (
                "reflex_informer_watch_restarts",
                "Watches the informer's reflector restarted without a relist",
                |s| s.watch_restarts,
            ),
            (
                "reflex_informer_list_watch_errors",
                "List-and-watch rounds of the informer's reflector that ended with an error",
                |s| s.errors,
            ),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (resource, sample) in &samples {
                let labels = resource_label(resource);
                ConstCounter::new(value(sample)).encode(family.encode_family(&labels)?)?;
            }
        }
        let gauges: [Series<i64>; 3] = [
            (
                "reflex_informer_objects",
                "Objects in the informer's store",
                |s| i64::try_from(s.objects).unwrap_or(i64::MAX),
            ),
            (
                "reflex_informer_synced",
                "1 once the informer's initial list reached its store, else 0",
                |s| i64::from(s.synced),
            ),
            (
                "reflex_informer_sync_state",
                "The informer's sync state: 0 starting, 1 listing, 2 synced, 3 failing before a sync, 4 failing after one, 5 stopped",
                |s| s.sync_state,
            ),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (resource, sample) in &samples {
                let labels = resource_label(resource);
                ConstGauge::new(value(sample)).encode(family.encode_family(&labels)?)?;
            }
        }
        // Series that exist only once they have a value.
        let optional: [Series<Option<f64>>; 2] = [
            (
                "reflex_informer_last_error_timestamp_seconds",
                "Unix time of the informer's last list or watch failure",
                |s| s.last_error,
            ),
            (
                "reflex_informer_store_resource_version",
                "The resourceVersion the informer's store reflects",
                // A gauge is a float: exact up to 2^53, far beyond any etcd revision.
                |s| s.store_resource_version.map(|rv| rv as f64),
            ),
        ];
        for (name, help, value) in optional {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (resource, sample) in &samples {
                if let Some(v) = value(sample) {
                    let labels = resource_label(resource);
                    ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

struct Inner {
    reconcile_total: Family<Labels, Counter>,
    reconcile_errors: Family<Labels, Counter>,
    reconcile_panics: Family<Labels, Counter>,
    reconcile_time: HistogramFamily,
    active_workers: Family<Labels, Gauge>,
    max_concurrent: Family<Labels, Gauge>,
    informer_events: Family<Labels, Counter>,
    informer_lag: HistogramFamily,
    probes: Probes,
    shards: Arc<RwLock<Vec<ShardGate>>>,
    handoff_time: HistogramFamily,
    workqueue: Arc<PrometheusMetricsProvider>,
}

/// The metrics of controllers, work queues and informers, registered once in a [`Registry`];
/// a cheap-clone handle. See the [module docs](self).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("informers", &self.inner.probes.read().len())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers every metric of the [module docs](self) (the workqueue's included) in
    /// `registry`. Call it once per registry: a second call registers the names twice.
    pub fn new(registry: &mut Registry) -> Self {
        let inner = Inner {
            reconcile_total: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_panics: Family::default(),
            reconcile_time: Family::new_with_constructor(reconcile_histogram as fn() -> Histogram),
            active_workers: Family::default(),
            max_concurrent: Family::default(),
            informer_events: Family::default(),
            informer_lag: Family::new_with_constructor(lag_histogram as fn() -> Histogram),
            probes: Arc::default(),
            shards: Arc::default(),
            handoff_time: Family::new_with_constructor(handoff_histogram as fn() -> Histogram),
            workqueue: Arc::new(PrometheusMetricsProvider::new(registry)),
        };
        registry.register(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller",
            inner.reconcile_total.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller",
            inner.reconcile_errors.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_panics",
            "Total number of reconciliation panics per controller",
            inner.reconcile_panics.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            inner.reconcile_time.clone(),
        );
        registry.register(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller",
            inner.active_workers.clone(),
        );
        registry.register(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller",
            inner.max_concurrent.clone(),
        );
        registry.register(
            "reflex_informer_events",
            "Notifications an informer delivered, by event",
            inner.informer_events.clone(),
        );
        registry.register(
            "reflex_informer_lag_seconds",
            "Time from a consistent list's resourceVersion until the informer's store reflected it",
            inner.informer_lag.clone(),
        );
        registry.register_collector(Box::new(InformerCollector {
            probes: inner.probes.clone(),
        }));
        registry.register(
            "reflex_sharding_handoff_seconds",
            "Time from being assigned a slot to reconciling it",
            inner.handoff_time.clone(),
        );
        registry.register_collector(Box::new(ShardingCollector {
            gates: inner.shards.clone(),
        }));
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// The workqueue metrics provider on the same registry, for queues built by hand (pass it
    /// as `QueueConfig::metrics`). A controller's default queue uses it already.
    pub fn workqueue(&self) -> Arc<PrometheusMetricsProvider> {
        self.inner.workqueue.clone()
    }

    /// Reports `informer` under `resource` (e.g. `"pods"` or `"foos.example.com"`): a handler
    /// counts its add, update and delete notifications, and each scrape reads its reflector's
    /// relists, watch restarts and errors, its store size and whether it synced. Works before
    /// and after the informer starts (a late registration counts the cached objects as adds,
    /// as any late handler sees them).
    pub fn register_informer<K>(
        &self,
        resource: &str,
        informer: &SharedIndexInformer<K>,
    ) -> Result<(), MetricsError>
    where
        K: kube::Resource + Send + Sync + 'static,
    {
        let mut probes = self.inner.probes.write();
        if probes.iter().any(|(r, _)| r == resource) {
            return Err(MetricsError::DuplicateResource(resource.to_owned()));
        }
        let counter = |event: &str| {
            self.inner
                .informer_events
                .get_or_create(&vec![
                    ("resource".to_owned(), resource.to_owned()),
                    ("event".to_owned(), event.to_owned()),
                ])
                .clone()
        };
        let (adds, updates, deletes) = (counter("add"), counter("update"), counter("delete"));
        let handler = handler_fn::<K>()
            .on_add(move |_, _| {
                adds.inc();
            })
            .on_update(move |old, new| {
                if old.meta().resource_version != new.meta().resource_version {
                    updates.inc();
                }
            })
            .on_delete(move |_| {
                deletes.inc();
            });
        informer
            .add_event_handler(handler)
            .map_err(|source| MetricsError::Informer {
                resource: resource.to_owned(),
                source,
            })?;
        let lag = self
            .inner
            .informer_lag
            .get_or_create(&resource_label(resource))
            .clone();
        informer.on_lag(Arc::new(move |d: std::time::Duration| {
            lag.observe(d.as_secs_f64());
        }));
        probes.push((resource.to_owned(), Arc::new(informer.clone())));
        tracing::debug!(resource, "informer metrics registered");
        Ok(())
    }

    /// Reports a sharded replica's slots, members and hand-offs under its group (see
    /// [`crate::sharding`]). A group registered twice is refused.
    pub fn register_sharding(&self, gate: &ShardGate) -> Result<(), MetricsError> {
        let mut gates = self.inner.shards.write();
        if gates.iter().any(|g| g.group() == gate.group()) {
            return Err(MetricsError::DuplicateGroup(gate.group().to_owned()));
        }
        let histogram = self
            .inner
            .handoff_time
            .get_or_create(&group_label(gate.group()))
            .clone();
        gate.on_handoff(Arc::new(move |d| histogram.observe(d.as_secs_f64())));
        gates.push(gate.clone());
        Ok(())
    }

    /// The per-controller handles of controller `name` with `workers` workers; its result
    /// series start at zero.
    pub(crate) fn controller(&self, name: &str, workers: usize) -> ControllerRecorder {
        let labels: Labels = vec![("controller".to_owned(), name.to_owned())];
        let result = |r: ReconcileResult| {
            let mut l = labels.clone();
            l.push(("result".to_owned(), r.as_str().to_owned()));
            self.inner.reconcile_total.get_or_create(&l).clone()
        };
        let [success, requeue_after, error] = ReconcileResult::ALL.map(result);
        self.inner
            .max_concurrent
            .get_or_create(&labels)
            .set(i64::try_from(workers).unwrap_or(i64::MAX));
        ControllerRecorder {
            success,
            requeue_after,
            error,
            errors: self.inner.reconcile_errors.get_or_create(&labels).clone(),
            panics: self.inner.reconcile_panics.get_or_create(&labels).clone(),
            time: self.inner.reconcile_time.get_or_create(&labels).clone(),
            active: self.inner.active_workers.get_or_create(&labels).clone(),
        }
    }
}

/// One controller's metric handles, looked up once so that recording is a few atomics.
pub(crate) struct ControllerRecorder {
    success: Counter,
    requeue_after: Counter,
    error: Counter,
    errors: Counter,
    panics: Counter,
    time: Histogram,
    active: Gauge,
}

impl ControllerRecorder {
    /// A reconcile started; it counts as active until the guard drops (also when an abandoned
    /// reconcile is aborted at the end of the shutdown grace period).
    pub(crate) fn started(&self) -> ActiveGuard<'_> {
        self.active.inc();
        ActiveGuard(&self.active)
    }

    /// A reconcile ended with `result` after `seconds`; `panicked` also counts a panic.
    pub(crate) fn finished(&self, result: ReconcileResult, panicked: bool, seconds: f64) {
        self.time.observe(seconds);
        match result {
            ReconcileResult::Success => {
                self.success.inc();
            }
            ReconcileResult::RequeueAfter => {
                self.requeue_after.inc();
            }
            ReconcileResult::Error => {
                self.error.inc();
                self.errors.inc();
            }
        }
        if panicked {
            self.panics.inc();
        }
    }
}

/// Decrements `controller_runtime_active_workers` when dropped.
pub(crate) struct ActiveGuard<'a>(&'a Gauge);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
