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
//!   A repeat after that starts a new Event.
//! - **Spam filter.** Creating a new Event costs a token from a bucket per regarding object (burst
//!   25, one token back every 5 minutes, like client-go's spam filter). Without a token the event is
//!   skipped and counted ([`EventRecorder::filtered`]). Repeats of an existing series cost nothing:
//!   they are counted in the series, so the count stays true while writes stay bounded.
//! - Names are `<object name>.<hex nanoseconds>`; the namespace is the object's, or `default`.
//! - **Retries.** A write that fails transiently is tried again, as client-go's broadcaster sink
//!   does: up to [`max_tries`](RecorderConfig::max_tries) attempts (default 12), the second after a
//!   random wait in `[0, retry_interval)` (so that replicas do not retry in step after an API server
//!   outage), the later ones [`retry_interval`](RecorderConfig::retry_interval) apart (default
//!   10 s). Retries are timers of the writing task, not sleeps: other events keep flowing while one
//!   waits, repeats of a waiting event are folded into the write that lands, and at most
//!   [`retry_capacity`](RecorderConfig::retry_capacity) writes (default 1000) wait at once, so
//!   memory stays bounded while the API server is down. What is transient
//!   ([`EventError::is_transient`]): transport failures, as in client-go, and also 429 and 5xx
//!   answers, which client-go gives up on but which say "try later" (a deliberate difference).
//!   Other refusals (400, 403, 422, ...) would fail again and are not retried. A create answered
//!   AlreadyExists means an earlier attempt landed; a PATCH answered NotFound (the Event expired)
//!   falls back to creating it with its series, and that create answered AlreadyExists is retried
//!   (as a PATCH). Writes abandoned (tries exhausted, not transient, no room, or still waiting at
//!   shutdown) are logged and counted ([`EventRecorder::failed`]).
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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

mod sink;

pub use sink::{EventSink, InMemoryEventSink, KubeEventSink, SinkAttempt, SinkFailure, SinkWrite};

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
    /// An Event of that name exists already.
    #[error("event {namespace}/{name} already exists")]
    AlreadyExists {
        /// Namespace of the Event.
        namespace: String,
        /// Name of the Event.
        name: String,
    },
    /// The API server refused or failed the request, or it did not reach the server.
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

impl EventError {
    /// Whether trying the same write again later may succeed: transport failures (the request
    /// did not get an answer) and answers 429 Too Many Requests and 5xx. Not transient: NotFound,
    /// AlreadyExists, other refusals (400, 403, 422, ...) and errors building the request, which
    /// would fail the same way again.
    pub fn is_transient(&self) -> bool {
        match self {
            EventError::NotFound { .. } | EventError::AlreadyExists { .. } => false,
            EventError::Api { source, .. } => match source.as_ref() {
                kube::Error::Api(status) => status.code == 429 || status.code >= 500,
                kube::Error::HyperError(_)
                | kube::Error::Service(_)
                | kube::Error::ReadEvents(_) => true,
                _ => false,
            },
        }
    }
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
    /// Attempts per write, the first included (default 12, as client-go; 0 counts as 1).
    pub max_tries: u32,
    /// Wait between attempts (default 10 s); the first retry waits a random part of it.
    pub retry_interval: Duration,
    /// Writes allowed to wait for a retry at once (default 1000); a failed write finding no
    /// room is abandoned.
    pub retry_capacity: usize,
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
            max_tries: 12,
            retry_interval: Duration::from_secs(10),
            retry_capacity: 1000,
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
    retries: AtomicU64,
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
        let span = tracing::info_span!(
            "event_recorder",
            reporting_controller = %config.reporting_controller,
            reporting_instance = %config.reporting_instance,
        );
        let worker = Worker {
            sink,
            config,
            counters: counters.clone(),
            series: HashMap::new(),
            buckets: HashMap::new(),
            retries: BTreeMap::new(),
            retry_seq: 0,
            last_nanos: 0,
        };
        let task = tokio::spawn(worker.run(rx, shutdown).instrument(span));
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

    /// Writes abandoned: tries exhausted, a failure that is not transient, no room to wait for a
    /// retry, or still waiting at shutdown.
    pub fn failed(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }

    /// Retries scheduled after failed attempts.
    pub fn retries(&self) -> u64 {
        self.counters.retries.load(Ordering::Relaxed)
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

/// An Event being recorded: created, or waiting for its create to land.
struct SeriesEntry {
    /// The Event as first built (name, namespace, regarding, reason, ...; no series).
    event: Event,
    count: i32,
    last_observed: Timestamp,
    last_seen: Instant,
    /// The count changed since the last write that landed.
    dirty: bool,
    /// The Event exists on the server (its create landed).
    written: bool,
    /// A retry is scheduled; it will write the latest count.
    retrying: bool,
}

impl SeriesEntry {
    fn series(&self) -> Option<EventSeries> {
        (self.count >= 2).then_some(EventSeries {
            count: self.count,
            last_observed_time: MicroTime(self.last_observed),
        })
    }

    fn namespace(&self) -> &str {
        self.event
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default")
    }

    fn name(&self) -> &str {
        self.event.metadata.name.as_deref().unwrap_or("")
    }
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// How one attempt ended.
enum Attempt {
    Landed,
    Failed { error: EventError, retry: bool },
}

struct Worker<S> {
    sink: S,
    config: RecorderConfig,
    counters: Arc<Counters>,
    series: HashMap<IsoKey, SeriesEntry>,
    buckets: HashMap<ObjectKey, Bucket>,
    /// Writes waiting for their next attempt, by due time (and a sequence number for ties),
    /// with the attempts made so far.
    retries: BTreeMap<(Instant, u64), (IsoKey, u32)>,
    retry_seq: u64,
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
            let next_retry = self.retries.keys().next().map(|(due, _)| *due);
            let retry_due = async move {
                match next_retry {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                () = retry_due => self.retry_due().await,
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
        let abandoned = self.retries.len() as u64;
        if abandoned > 0 {
            self.counters.failed.fetch_add(abandoned, Ordering::Relaxed);
            tracing::warn!(
                abandoned,
                "event recorder stopping: writes waiting for a retry abandoned"
            );
        }
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
            // A waiting retry carries the new count; otherwise the first repeat is written at once.
            if entry.written && !entry.retrying && entry.count == 2 {
                self.write(&key, 0).await;
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
                name: Some(name),
                namespace: Some(namespace),
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
        self.series.insert(
            key.clone(),
            SeriesEntry {
                event,
                count: 1,
                last_observed: now,
                last_seen: Instant::now(),
                dirty: false,
                written: false,
                retrying: false,
            },
        );
        self.write(&key, 0).await;
    }

    /// One attempt at bringing the server up to date with the entry of `key`: a create (with
    /// the series, if repeats came while it waited) until one landed, then series patches.
    async fn attempt(&mut self, key: &IsoKey) -> Option<Attempt> {
        let entry = self.series.get_mut(key)?;
        let series = entry.series();
        entry.dirty = false;
        if !entry.written {
            let mut event = entry.event.clone();
            event.series = series;
            return Some(match self.sink.create(&event).await {
                // An earlier attempt landed though its answer was lost.
                Ok(_) | Err(EventError::AlreadyExists { .. }) => Attempt::Landed,
                Err(error) => Attempt::Failed {
                    retry: error.is_transient(),
                    error,
                },
            });
        }
        let series = series?;
        let (namespace, name) = (entry.namespace().to_owned(), entry.name().to_owned());
        let mut event = entry.event.clone();
        Some(
            match self.sink.patch_series(&namespace, &name, &series).await {
                Ok(_) => Attempt::Landed,
                Err(EventError::NotFound { .. }) => {
                    // Expired on the server: create it again, series and all.
                    tracing::debug!(namespace, event = name, "event gone, creating it again");
                    event.series = Some(series);
                    event.metadata.resource_version = None;
                    match self.sink.create(&event).await {
                        Ok(_) => Attempt::Landed,
                        // Someone created it in between: PATCH again.
                        Err(error @ EventError::AlreadyExists { .. }) => {
                            Attempt::Failed { error, retry: true }
                        }
                        Err(error) => Attempt::Failed {
                            retry: error.is_transient(),
                            error,
                        },
                    }
                }
                Err(error) => Attempt::Failed {
                    retry: error.is_transient(),
                    error,
                },
            },
        )
    }

    /// Attempts the write of `key` (after `tries_before` failed attempts) and schedules the next
    /// attempt, or gives up, if it fails.
    async fn write(&mut self, key: &IsoKey, tries_before: u32) {
        let Some(outcome) = self.attempt(key).await else {
            return;
        };
        let tries = tries_before + 1;
        let room = self.retries.len() < self.config.retry_capacity;
        let max_tries = self.config.max_tries.max(1);
        let Some(entry) = self.series.get_mut(key) else {
            return;
        };
        let (namespace, name) = (entry.namespace().to_owned(), entry.name().to_owned());
        match outcome {
            Attempt::Landed => {
                entry.written = true;
                entry.retrying = false;
                tracing::trace!(
                    namespace,
                    event = name,
                    count = entry.count,
                    tries,
                    "event written"
                );
            }
            Attempt::Failed { error, retry } if retry && tries < max_tries && room => {
                entry.retrying = true;
                let interval = self.config.retry_interval;
                // Spread the first retry so replicas do not retry in step after an outage.
                let delay = if tries == 1 {
                    interval.mul_f64(rand::random::<f64>())
                } else {
                    interval
                };
                self.retry_seq += 1;
                self.retries.insert(
                    (Instant::now() + delay, self.retry_seq),
                    (key.clone(), tries),
                );
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(namespace, event = name, tries, delay = ?delay, %error, "writing event failed, will retry");
            }
            Attempt::Failed { error, retry } => {
                entry.retrying = false;
                entry.dirty = true;
                let written = entry.written;
                if !written {
                    // Never created: forget it, so the next repeat starts a new Event.
                    self.series.remove(key);
                }
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                let why = if !retry {
                    "not transient"
                } else if tries >= max_tries {
                    "tries exhausted"
                } else {
                    "no room to wait for a retry"
                };
                tracing::warn!(namespace, event = name, tries, why, %error, "writing event failed, giving up");
            }
        }
    }

    /// Attempts every write whose retry is due.
    async fn retry_due(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(entry) = self.retries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        for (key, tries) in due {
            self.write(&key, tries).await;
        }
    }

    fn dirty_written(&self) -> Vec<IsoKey> {
        self.series
            .iter()
            .filter(|(_, e)| e.dirty && e.written && !e.retrying)
            .map(|(k, _)| k.clone())
            .collect()
    }

    async fn refresh_series(&mut self) {
        for key in self.dirty_written() {
            self.write(&key, 0).await;
        }
    }

    /// Ends series quiet for a whole window (writing their final count) and forgets full buckets.
    /// Series waiting for a retry are kept until it is done.
    async fn finish_series(&mut self) {
        let now = Instant::now();
        let window = self.config.series_window;
        let ended: Vec<_> = self
            .series
            .iter()
            .filter(|(_, e)| !e.retrying && now.duration_since(e.last_seen) >= window)
            .map(|(k, e)| (k.clone(), e.dirty && e.written))
            .collect();
        for (key, dirty) in ended {
            if dirty {
                self.write(&key, 0).await;
            }
            if self.series.get(&key).is_some_and(|e| !e.retrying) {
                self.series.remove(&key);
            }
        }
        let full_after = self
            .config
            .spam_refill
            .saturating_mul(self.config.spam_burst);
        self.buckets
            .retain(|_, b| now.duration_since(b.updated) < full_after);
    }
}
