//! Recording `events.k8s.io/v1` Events without slowing the controller down.
//!
//! Events tell humans what a controller did (`kubectl describe` shows them). They are a side channel:
//! recording one must never block a reconcile, and a controller stuck in a loop must not flood the
//! API server. So:
//!
//! - [`EventRecorder::publish`] only puts the event on a bounded queue (default 1000) and returns; a
//!   background task owned by the [`RecorderTask`] does the writes. When the queue is full the event is
//!   dropped, counted ([`EventRecorder::dropped`]) and logged.
//! - **Series.** Repeats of an *isomorphic* event (same regarding object, reason, action, type and
//!   note) are folded into the first one, as client-go's `events.k8s.io/v1` broadcaster does: the
//!   first occurrence is created; the second PATCHes `series: {count: 2, lastObservedTime}` at once;
//!   later ones update the series in memory, written every
//!   [`series_refresh`](RecorderConfig::series_refresh) (default 30 min) and when the series ends,
//!   that is, after [`series_window`](RecorderConfig::series_window) (default 6 min) without a repeat.
//!   A repeat after that starts a new Event. A PATCH answered NotFound falls back to a create.
//! - **Spam filter.** Creating a new Event costs a token from a bucket per regarding object (burst
//!   25, one token back every 5 minutes, like client-go's spam filter). Without a token the event is
//!   skipped and counted ([`EventRecorder::filtered`]). Repeats of an existing series cost nothing:
//!   they are counted in the series, so the count stays true while writes stay bounded.
//! - Names are `<object name>.<hex nanoseconds>`; the namespace is the object's, or `default`.
//! - Failed writes are logged and counted ([`EventRecorder::failed`]); they are not retried.
//!
//! Writes go through the [`EventSink`] trait: [`KubeEventSink`] for the API server,
//! [`InMemoryEventSink`] for tests.
//!
//! ```no_run
//! use k8s_openapi::api::core::v1::ObjectReference;
//! use reflex_runtime::events::{EventRecorder, EventType, KubeEventSink, RecorderConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn doc(client: kube::Client) {
//! let shutdown = CancellationToken::new();
//! let config = RecorderConfig::new("example.com/my-controller", "pod-a");
//! let (recorder, task) = EventRecorder::new(KubeEventSink::new(client), config, shutdown.clone());
//! let pod = ObjectReference {
//!     api_version: Some("v1".into()),
//!     kind: Some("Pod".into()),
//!     namespace: Some("apps".into()),
//!     name: Some("web-0".into()),
//!     ..ObjectReference::default()
//! };
//! recorder.publish(&pod, EventType::Normal, "Scaled", "Scale", "scaled to 3 replicas");
//! shutdown.cancel();
//! task.join().await; // writes what was queued, then stops
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What can go wrong writing an Event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The Event to patch does not exist (any more).
    #[error("event {namespace}/{name} not found")]
    NotFound {
        /// Namespace of the Event.
        namespace: String,
        /// Name of the Event.
        name: String,
    },
    /// The API server refused or failed the request.
    #[error("writing event {namespace}/{name}")]
    Api {
        /// Namespace of the Event.
        namespace: String,
        /// Name of the Event.
        name: String,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },
}

/// Event severity, as the API allows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something may need attention.
    Warning,
}

impl EventType {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// Where Events are written.
pub trait EventSink: Send + Sync + 'static {
    /// Creates `event` in its namespace.
    fn create(&self, event: &Event) -> impl Future<Output = Result<Event, EventError>> + Send;
    /// Sets `series` on the Event `namespace/name`; [`EventError::NotFound`] when it is gone.
    fn patch_series(
        &self,
        namespace: &str,
        name: &str,
        series: &EventSeries,
    ) -> impl Future<Output = Result<Event, EventError>> + Send;
}

/// An [`EventSink`] writing to the API server.
#[derive(Clone)]
pub struct KubeEventSink {
    client: kube::Client,
}

impl KubeEventSink {
    /// A sink using `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

fn api_error(namespace: &str, name: &str, e: kube::Error) -> EventError {
    match &e {
        kube::Error::Api(s) if s.code == 404 => EventError::NotFound {
            namespace: namespace.into(),
            name: name.into(),
        },
        _ => EventError::Api {
            namespace: namespace.into(),
            name: name.into(),
            source: Box::new(e),
        },
    }
}

impl EventSink for KubeEventSink {
    async fn create(&self, event: &Event) -> Result<Event, EventError> {
        let ns = event.metadata.namespace.as_deref().unwrap_or("default");
        let name = event.metadata.name.as_deref().unwrap_or("");
        Api::<Event>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), event)
            .await
            .map_err(|e| api_error(ns, name, e))
    }

    async fn patch_series(
        &self,
        namespace: &str,
        name: &str,
        series: &EventSeries,
    ) -> Result<Event, EventError> {
        let patch = serde_json::json!({ "series": series });
        Api::<Event>::namespaced(self.client.clone(), namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| api_error(namespace, name, e))
    }
}

#[derive(Default)]
struct MemEvents {
    events: HashMap<(String, String), Event>,
    creates: u64,
    patches: u64,
}

/// An in-memory [`EventSink`] for tests: stores Events by namespace and name, counts writes.
#[derive(Clone, Default)]
pub struct InMemoryEventSink {
    inner: Arc<Mutex<MemEvents>>,
}

impl InMemoryEventSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stored Events, sorted by namespace and name.
    pub fn events(&self) -> Vec<Event> {
        let inner = self.inner.lock();
        let mut out: Vec<_> = inner
            .events
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.into_iter().map(|(_, e)| e).collect()
    }

    /// Number of creates and of patches so far.
    pub fn writes(&self) -> (u64, u64) {
        let inner = self.inner.lock();
        (inner.creates, inner.patches)
    }

    /// Deletes every stored Event (as the API server's TTL would).
    pub fn clear(&self) {
        self.inner.lock().events.clear();
    }
}

impl EventSink for InMemoryEventSink {
    async fn create(&self, event: &Event) -> Result<Event, EventError> {
        let key = (
            event.metadata.namespace.clone().unwrap_or_default(),
            event.metadata.name.clone().unwrap_or_default(),
        );
        let mut inner = self.inner.lock();
        inner.creates += 1;
        inner.events.insert(key, event.clone());
        Ok(event.clone())
    }

    async fn patch_series(
        &self,
        namespace: &str,
        name: &str,
        series: &EventSeries,
    ) -> Result<Event, EventError> {
        let mut inner = self.inner.lock();
        inner.patches += 1;
        let Some(event) = inner
            .events
            .get_mut(&(namespace.to_owned(), name.to_owned()))
        else {
            return Err(EventError::NotFound {
                namespace: namespace.into(),
                name: name.into(),
            });
        };
        event.series = Some(series.clone());
        Ok(event.clone())
    }
}

/// Recorder settings. Start from [`RecorderConfig::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecorderConfig {
    /// `reportingController`, e.g. `example.com/my-controller`.
    pub reporting_controller: String,
    /// `reportingInstance`, e.g. the Pod name.
    pub reporting_instance: String,
    /// Events queued before `publish` starts dropping (default 1000).
    pub queue_capacity: usize,
    /// A series ends after this long without a repeat (default 6 min).
    pub series_window: Duration,
    /// Ongoing series are written at least this often (default 30 min).
    pub series_refresh: Duration,
    /// New Events per object allowed at once (default 25).
    pub spam_burst: u32,
    /// Time for one new-Event token to come back (default 5 min).
    pub spam_refill: Duration,
}

impl RecorderConfig {
    /// Defaults for the given reporting controller and instance.
    pub fn new(
        reporting_controller: impl Into<String>,
        reporting_instance: impl Into<String>,
    ) -> Self {
        Self {
            reporting_controller: reporting_controller.into(),
            reporting_instance: reporting_instance.into(),
            queue_capacity: 1000,
            series_window: Duration::from_secs(6 * 60),
            series_refresh: Duration::from_secs(30 * 60),
            spam_burst: 25,
            spam_refill: Duration::from_secs(5 * 60),
        }
    }
}

struct Publish {
    regarding: ObjectReference,
    type_: EventType,
    reason: String,
    action: String,
    note: String,
}

#[derive(Default)]
struct Counters {
    dropped: AtomicU64,
    filtered: AtomicU64,
    failed: AtomicU64,
}

/// Publishes Events; cheap to clone. See the [module docs](self).
#[derive(Clone)]
pub struct EventRecorder {
    tx: mpsc::Sender<Publish>,
    counters: Arc<Counters>,
}

/// The recorder's background task; [`join`](Self::join) it after cancelling the shutdown token.
pub struct RecorderTask {
    task: JoinHandle<()>,
}

impl RecorderTask {
    /// Waits until the task has written what was queued and the pending series, and exited.
    pub async fn join(self) {
        if let Err(error) = self.task.await {
            tracing::error!(%error, "event recorder task failed");
        }
    }
}

impl EventRecorder {
    /// Starts the writing task on `sink`; it stops when `shutdown` is cancelled, after writing the
    /// events already queued and the pending series counts.
    pub fn new<S: EventSink>(
        sink: S,
        config: RecorderConfig,
        shutdown: CancellationToken,
    ) -> (Self, RecorderTask) {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let worker = Worker {
            sink,
            config,
            counters: counters.clone(),
            series: HashMap::new(),
            buckets: HashMap::new(),
            last_nanos: 0,
        };
        let task = tokio::spawn(worker.run(rx, shutdown));
        (Self { tx, counters }, RecorderTask { task })
    }

    /// Queues an Event about `regarding`; never blocks. Dropped (and counted) when the queue is
    /// full or the recorder has stopped.
    pub fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let event = Publish {
            regarding: regarding.clone(),
            type_,
            reason: reason.to_owned(),
            action: action.to_owned(),
            note: note.to_owned(),
        };
        if self.tx.try_send(event).is_err() {
            let dropped = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                object = regarding.name.as_deref().unwrap_or(""),
                namespace = regarding.namespace.as_deref().unwrap_or(""),
                reason,
                dropped,
                "event queue full or closed, event dropped"
            );
        }
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// New Events skipped by the per-object spam filter.
    pub fn filtered(&self) -> u64 {
        self.counters.filtered.load(Ordering::Relaxed)
    }

    /// Writes that failed.
    pub fn failed(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct IsoKey {
    object: ObjectKey,
    reason: String,
    action: String,
    type_: EventType,
    note: String,
}

type ObjectKey = (String, String, String, String, String, String);

fn object_key(r: &ObjectReference) -> ObjectKey {
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    (
        s(&r.api_version),
        s(&r.kind),
        s(&r.namespace),
        s(&r.name),
        s(&r.uid),
        s(&r.field_path),
    )
}

struct SeriesEntry {
    namespace: String,
    name: String,
    count: i32,
    last_observed: Timestamp,
    last_seen: Instant,
    dirty: bool,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

struct Worker<S> {
    sink: S,
    config: RecorderConfig,
    counters: Arc<Counters>,
    series: HashMap<IsoKey, SeriesEntry>,
    buckets: HashMap<ObjectKey, Bucket>,
    last_nanos: i128,
}

impl<S: EventSink> Worker<S> {
    async fn run(mut self, mut rx: mpsc::Receiver<Publish>, shutdown: CancellationToken) {
        let start = Instant::now();
        let mut finish =
            tokio::time::interval_at(start + self.config.series_window, self.config.series_window);
        let mut refresh = tokio::time::interval_at(
            start + self.config.series_refresh,
            self.config.series_refresh,
        );
        finish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                next = rx.recv() => match next {
                    Some(p) => self.record(p).await,
                    None => break,
                },
                _ = finish.tick() => self.finish_series().await,
                _ = refresh.tick() => self.refresh_series().await,
            }
        }
        rx.close();
        while let Some(p) = rx.recv().await {
            self.record(p).await;
        }
        self.refresh_series().await;
        tracing::debug!("event recorder stopped");
    }

    fn take_token(&mut self, object: &ObjectKey) -> bool {
        let now = Instant::now();
        let burst = f64::from(self.config.spam_burst);
        let rate = 1.0 / self.config.spam_refill.as_secs_f64().max(f64::MIN_POSITIVE);
        let bucket = self.buckets.entry(object.clone()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn unique_nanos(&mut self, ts: Timestamp) -> i128 {
        let nanos = ts.as_nanosecond().max(self.last_nanos + 1);
        self.last_nanos = nanos;
        nanos
    }

    async fn record(&mut self, p: Publish) {
        let key = IsoKey {
            object: object_key(&p.regarding),
            reason: p.reason.clone(),
            action: p.action.clone(),
            type_: p.type_,
            note: p.note.clone(),
        };
        let now = Timestamp::now();
        if let Some(entry) = self.series.get_mut(&key) {
            entry.count = entry.count.saturating_add(1);
            entry.last_observed = now;
            entry.last_seen = Instant::now();
            entry.dirty = true;
            if entry.count == 2 {
                let (ns, name) = (entry.namespace.clone(), entry.name.clone());
                self.write_series(&key, &ns, &name).await;
            }
            return;
        }
        if !self.take_token(&key.object) {
            let filtered = self.counters.filtered.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::debug!(
                object = p.regarding.name.as_deref().unwrap_or(""),
                namespace = p.regarding.namespace.as_deref().unwrap_or(""),
                reason = %p.reason,
                filtered,
                "event skipped by spam filter"
            );
            return;
        }
        let namespace = p
            .regarding
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let object_name = p.regarding.name.clone().unwrap_or_default();
        let name = format!("{object_name}.{:x}", self.unique_nanos(now));
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(p.action),
            reason: Some(p.reason),
            note: Some(p.note),
            type_: Some(p.type_.as_str().to_owned()),
            regarding: Some(p.regarding),
            reporting_controller: Some(self.config.reporting_controller.clone()),
            reporting_instance: Some(self.config.reporting_instance.clone()),
            ..Event::default()
        };
        match self.sink.create(&event).await {
            Ok(_) => {
                tracing::trace!(namespace = %namespace, event = %name, "event created");
                self.series.insert(
                    key,
                    SeriesEntry {
                        namespace,
                        name,
                        count: 1,
                        last_observed: now,
                        last_seen: Instant::now(),
                        dirty: false,
                    },
                );
            }
            Err(error) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(namespace = %namespace, event = %name, %error, "creating event failed");
            }
        }
    }

    /// Writes the series of `key`; a vanished Event is created again with the series.
    async fn write_series(&mut self, key: &IsoKey, namespace: &str, name: &str) {
        let Some(entry) = self.series.get_mut(key) else {
            return;
        };
        let series = EventSeries {
            count: entry.count,
            last_observed_time: MicroTime(entry.last_observed),
        };
        entry.dirty = false;
        match self.sink.patch_series(namespace, name, &series).await {
            Ok(_) => tracing::trace!(
                namespace,
                event = name,
                count = series.count,
                "event series written"
            ),
            Err(EventError::NotFound { .. }) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                self.series.remove(key);
                tracing::debug!(namespace, event = name, "event gone, series dropped");
            }
            Err(error) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(namespace, event = name, %error, "writing event series failed");
            }
        }
    }

    async fn refresh_series(&mut self) {
        let dirty: Vec<_> = self
            .series
            .iter()
            .filter(|(_, e)| e.dirty)
            .map(|(k, e)| (k.clone(), e.namespace.clone(), e.name.clone()))
            .collect();
        for (key, ns, name) in dirty {
            self.write_series(&key, &ns, &name).await;
        }
    }

    /// Ends series quiet for a whole window (writing their final count) and forgets full buckets.
    async fn finish_series(&mut self) {
        let now = Instant::now();
        let window = self.config.series_window;
        let ended: Vec<_> = self
            .series
            .iter()
            .filter(|(_, e)| now.duration_since(e.last_seen) >= window)
            .map(|(k, e)| (k.clone(), e.namespace.clone(), e.name.clone(), e.dirty))
            .collect();
        for (key, ns, name, dirty) in ended {
            if dirty {
                self.write_series(&key, &ns, &name).await;
            }
            self.series.remove(&key);
        }
        let full_after = self
            .config
            .spam_refill
            .saturating_mul(self.config.spam_burst);
        self.buckets
            .retain(|_, b| now.duration_since(b.updated) < full_after);
    }
}
