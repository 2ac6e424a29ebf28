//! `SharedIndexInformer`: one reflector, one FIFO, one store and one processor for a resource.
//!
//! Contract (as client-go's `SharedInformer`):
//! - The store ([`indexer`](SharedIndexInformer::indexer), [`lister`](SharedIndexInformer::lister))
//!   is eventually consistent with the server: once changes stop, it holds exactly the server's
//!   objects at their resourceVersions.
//! - The store is updated *before* handlers hear about a change, so a handler that reads the
//!   lister sees at least that change.
//! - Every handler sees, in order, an `on_add` per object first seen, `on_update(old, new)` per
//!   change, and `on_delete` per removal (the last object, or a
//!   [`DeletedFinalStateUnknown`] tombstone). Changes may
//!   be coalesced (a key is the identity, not the UID). A relist or resync may deliver
//!   `on_update(o, o)` with equal resourceVersions; such updates go only to handlers whose own
//!   resync period is due (or to all when no handler resyncs).
//! - A handler added after start first gets `on_add(obj, true)` for every object already cached,
//!   atomically with respect to delta processing: it misses nothing and sees nothing twice.
//! - Each handler runs in its own task with its own buffer (see [`handler`](crate::handler)).
//!
//! ```
//! use std::sync::Arc;
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use reflex_informer::{InformerOptions, SharedIndexInformer};
//! use reflex_informer::handler::handler_fn;
//! use reflex_informer::source::memory::MemorySource;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let source = MemorySource::<ConfigMap>::new();
//! let mut cm = ConfigMap::default();
//! cm.metadata.namespace = Some("default".into());
//! cm.metadata.name = Some("settings".into());
//! source.apply(cm).unwrap();
//!
//! let informer = SharedIndexInformer::new(Arc::new(source.clone()), InformerOptions::default());
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! informer
//!     .add_event_handler(handler_fn().on_add(move |cm: &Arc<ConfigMap>, _| {
//!         let _ = tx.send(cm.metadata.name.clone());
//!     }))
//!     .unwrap();
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let run = tokio::spawn({
//!     let informer = informer.clone();
//!     let shutdown = shutdown.clone();
//!     async move { informer.run(shutdown).await }
//! });
//! assert!(informer.wait_for_sync().await);
//! assert_eq!(informer.lister().store().len(), 1);
//! assert_eq!(rx.recv().await.unwrap().as_deref(), Some("settings"));
//! shutdown.cancel();
//! run.await.unwrap().unwrap();
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::delta_fifo::DeltaFifo;
use crate::fifo::{
    DeltaType, Fifo, FifoError, FifoMode, KnownObjects, Listed, Pop, PopError, Popped,
    ProcessError, ReflectorSink,
};
use crate::handler::{DeletedFinalStateUnknown, DeltaObject};
use crate::handler::{ProcessorError, Registration, ResourceEventHandler};
use crate::in_order_fifo::InOrderFifo;
use crate::key::{KeyError, ObjectKey};
use crate::lag::{Lag, LagObserver};
use crate::lister::Lister;
use crate::processor::{Notification, Processor};
use crate::reflector::{Reflector, ReflectorHandle, ReflectorOptions, WatchErrorHandler};
use crate::source::ListParams;
use crate::source::ListWatch;
use crate::store::{Indexer, Store, StoreError};
use crate::sync_state::{SyncState, SyncTracker};
use crate::written::{ObserveError, PendingWrite, Seen, Written};

/// Rewrites an object before it enters the FIFO and the store (for example to drop
/// `managedFields`). It receives the only reference to a freshly decoded object, so
/// `Arc::unwrap_or_clone` does not copy. It may run more than once on an object: keep it
/// idempotent.
pub type Transform<K> = Arc<dyn Fn(Arc<K>) -> Arc<K> + Send + Sync>;

/// Why the informer refused a request.
#[derive(Debug, thiserror::Error)]
pub enum InformerError {
    /// The informer was stopped; it takes no new handlers and cannot run again.
    #[error("the informer was stopped")]
    Stopped,
    /// The request is only valid before [`SharedIndexInformer::run`].
    #[error("{0} is only allowed before the informer starts")]
    AlreadyStarted(&'static str),
    /// The processor refused the handler.
    #[error("event handler registration failed")]
    Processor(#[source] ProcessorError),
    /// The store refused an index.
    #[error("adding an index failed")]
    Store(#[source] StoreError),
}

/// Options of a [`SharedIndexInformer`].
#[derive(Debug, Clone, Default)]
pub struct InformerOptions {
    /// The default resync period of handlers added with
    /// [`add_event_handler`](SharedIndexInformer::add_event_handler) (zero: no resync).
    pub default_resync: Duration,
    /// How the reflector lists and watches.
    pub reflector: ReflectorOptions,
    /// Which FIFO queues changes between the reflector and the store (and so what handlers may
    /// assume about order); the classic DeltaFIFO by default.
    pub fifo: FifoMode,
    /// Measure the cache's lag behind the server every this often (see [`lag`](crate::lag)):
    /// one `limit=1` consistent list per period. `None` (the default): no probe.
    pub lag_probe: Option<Duration>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RunState {
    Idle,
    Running,
    Stopped,
}

struct Inner<K> {
    source: Arc<dyn ListWatch<K>>,
    options: InformerOptions,
    indexer: Indexer<K>,
    fifo: Arc<dyn Fifo<K>>,
    processor: Processor<K>,
    /// Held while a popped key's deltas go to the store and the processor, and while a late
    /// handler receives the store's content: the two never interleave.
    block_deltas: Mutex<()>,
    transform: Mutex<Option<Transform<K>>>,
    error_handler: Mutex<Option<WatchErrorHandler>>,
    state: Mutex<RunState>,
    reflector: Mutex<Option<ReflectorHandle>>,
    /// Whether the initial list reached the store: the one flag the informer, its processor and
    /// every handler registration read.
    synced: watch::Sender<bool>,
    /// The informer's [`SyncState`], fed by its reflector and by `synced`.
    sync: Arc<SyncTracker>,
    /// What the store reflects; see [`SharedIndexInformer::last_store_resource_version`].
    store_version: StoreVersion,
    /// Writes recorded for read-your-writes, and the wake-up of those waiting for them.
    written: Written,
    store_changed: tokio::sync::Notify,
    lag: Lag,
    stopped: CancellationToken,
}

/// The resourceVersion the store reflects, kept as a lower bound that is exact whenever the
/// FIFO drains: the sink records the resourceVersion of each write *after* queueing it, and the
/// recorded value is published once nothing queued before it remains to be processed (checked
/// after each pop, and on each bookmark). A sequence number keeps the published value from ever
/// going back.
#[derive(Default)]
struct StoreVersion {
    recorded: Mutex<(u64, String)>,
    applied: Mutex<(u64, String)>,
}

impl StoreVersion {
    fn record(&self, resource_version: &str) {
        if resource_version.is_empty() {
            return;
        }
        let mut recorded = self.recorded.lock();
        recorded.0 += 1;
        resource_version.clone_into(&mut recorded.1);
    }

    fn recorded(&self) -> (u64, String) {
        self.recorded.lock().clone()
    }

    fn publish(&self, recorded: (u64, String)) {
        let mut applied = self.applied.lock();
        if recorded.0 > applied.0 {
            *applied = recorded;
        }
    }

    fn applied(&self) -> String {
        self.applied.lock().1.clone()
    }
}

/// A shared, indexed informer; a cheap-clone handle. See the [module docs](self).
pub struct SharedIndexInformer<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for SharedIndexInformer<K> {
    fn clone(&self) -> Self {
        SharedIndexInformer {
            inner: self.inner.clone(),
        }
    }
}

impl<K> fmt::Debug for SharedIndexInformer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedIndexInformer")
            .field("state", &*self.inner.state.lock())
            .field("synced", &*self.inner.synced.borrow())
            .finish()
    }
}

fn resource_version_of<K: kube::Resource>(obj: &K) -> Option<&str> {
    obj.meta().resource_version.as_deref()
}

impl<K> SharedIndexInformer<K>
where
    K: kube::Resource + Send + Sync + 'static,
    K::DynamicType: Default + Send + Sync + 'static,
{
    /// An informer over `source` for a typed resource (keys `namespace/name`).
    pub fn new(source: Arc<dyn ListWatch<K>>, options: InformerOptions) -> Self {
        Self::with_indexer(source, Indexer::new(), options)
    }
}

impl<K> SharedIndexInformer<K>
where
    K: kube::Resource + Send + Sync + 'static,
{
    /// An informer over `source` filling `indexer` (use this for `DynamicObject`, whose store
    /// needs its `ApiResource`: `Indexer::with_dyntype`).
    pub fn with_indexer(
        source: Arc<dyn ListWatch<K>>,
        indexer: Indexer<K>,
        options: InformerOptions,
    ) -> Self {
        let known: Arc<dyn KnownObjects<K>> = Arc::new(indexer.clone());
        let key_fn = indexer.key_func();
        let fifo: Arc<dyn Fifo<K>> = match options.fifo {
            FifoMode::DeltaFifo => Arc::new(DeltaFifo::with_key_func(key_fn, Some(known))),
            FifoMode::InOrder => Arc::new(InOrderFifo::with_key_func(key_fn, Some(known), false)),
            FifoMode::InOrderAtomic => {
                Arc::new(InOrderFifo::with_key_func(key_fn, Some(known), true))
            }
        };
        let synced = watch::Sender::new(false);
        SharedIndexInformer {
            inner: Arc::new(Inner {
                source,
                processor: Processor::with_upstream(options.default_resync, synced.clone()),
                options,
                indexer,
                fifo,
                block_deltas: Mutex::new(()),
                transform: Mutex::new(None),
                error_handler: Mutex::new(None),
                state: Mutex::new(RunState::Idle),
                reflector: Mutex::new(None),
                synced,
                sync: Arc::new(SyncTracker::new(true)),
                store_version: StoreVersion::default(),
                written: Written::default(),
                store_changed: tokio::sync::Notify::new(),
                lag: Lag::default(),
                stopped: CancellationToken::new(),
            }),
        }
    }

    /// Adds a handler with the informer's default resync period; see
    /// [`add_event_handler_with_resync`](Self::add_event_handler_with_resync).
    pub fn add_event_handler(
        &self,
        handler: impl ResourceEventHandler<K>,
    ) -> Result<Registration<K>, InformerError> {
        self.add_event_handler_with_resync(handler, self.inner.options.default_resync)
    }

    /// Adds a handler with its own resync period, by client-go's rules: zero means none, a
    /// period under [`MINIMUM_RESYNC_PERIOD`](crate::handler::MINIMUM_RESYNC_PERIOD) is raised to
    /// it; before start a shorter period than the informer's lowers how often the informer checks
    /// for due handlers, after start it is raised to that check period; a handler gets resync
    /// updates only when its own period is due. Works before and after start; a late handler
    /// first receives `on_add(obj, true)` for every cached object. After the informer stopped:
    /// [`InformerError::Stopped`].
    pub fn add_event_handler_with_resync(
        &self,
        handler: impl ResourceEventHandler<K>,
        resync: Duration,
    ) -> Result<Registration<K>, InformerError> {
        let _block = self.inner.block_deltas.lock();
        if *self.inner.state.lock() == RunState::Stopped {
            return Err(InformerError::Stopped);
        }
        let initial = self.inner.indexer.list();
        self.inner
            .processor
            .add_handler(handler, resync, initial)
            .map_err(|e| match e {
                ProcessorError::Stopped => InformerError::Stopped,
                other => InformerError::Processor(other),
            })
    }

    /// Sets the transform applied to every object before it enters the FIFO and the store.
    pub fn set_transform(&self, transform: Transform<K>) -> Result<(), InformerError> {
        if *self.inner.state.lock() != RunState::Idle {
            return Err(InformerError::AlreadyStarted("set_transform"));
        }
        *self.inner.transform.lock() = Some(transform);
        Ok(())
    }

    /// Sets the handler called with every error that ends a list-and-watch round.
    pub fn set_watch_error_handler(&self, handler: WatchErrorHandler) -> Result<(), InformerError> {
        if *self.inner.state.lock() != RunState::Idle {
            return Err(InformerError::AlreadyStarted("set_watch_error_handler"));
        }
        *self.inner.error_handler.lock() = Some(handler);
        Ok(())
    }

    /// Registers an index function (indexing cached objects at once if running).
    pub fn add_indexers<F>(&self, name: &str, func: F) -> Result<(), InformerError>
    where
        F: Fn(&K) -> Vec<String> + Send + Sync + 'static,
    {
        self.inner
            .indexer
            .add_indexer(name, func)
            .map_err(InformerError::Store)
    }

    /// Whether the initial list has been fully applied to the store.
    pub fn has_synced(&self) -> bool {
        *self.inner.synced.borrow()
    }

    /// Waits until [`has_synced`](Self::has_synced); false if the informer stopped first.
    pub async fn wait_for_sync(&self) -> bool {
        let mut synced = self.inner.synced.subscribe();
        tokio::select! {
            result = synced.wait_for(|synced| *synced) => result.is_ok(),
            () = self.inner.stopped.cancelled() => self.has_synced(),
        }
    }

    /// Where the informer is: starting, listing, synced, or failing with a typed cause (a 403,
    /// a missing CRD, a 429, ...). See [`sync_state`](crate::sync_state).
    pub fn sync_state(&self) -> SyncState {
        self.inner.sync.state()
    }

    /// When the last list or watch failure happened (wall clock); `None` if none did.
    pub fn last_sync_error_at(&self) -> Option<std::time::SystemTime> {
        self.inner.sync.last_error_at()
    }

    /// A subscription to [`sync_state`](Self::sync_state)'s changes.
    pub fn subscribe_sync_state(&self) -> watch::Receiver<SyncState> {
        self.inner.sync.subscribe()
    }

    /// The resourceVersion the store reflects: every change the server made up to it has been
    /// applied to the store (moved by watch events, relists and bookmarks). `""` before the
    /// first list. It is exact whenever the informer has caught up with its watch, and a lower
    /// bound while changes wait in the FIFO. Compare it with
    /// [`resource_version::compare`](crate::resource_version::compare).
    pub fn last_store_resource_version(&self) -> String {
        self.inner.store_version.applied()
    }

    /// Records a write this process made: `written` is the object a create, update, patch, or
    /// status or scale write returned. Until the store shows that resourceVersion for its key,
    /// [`pending_write`](Self::pending_write) reports it (see [`written`](crate::written)). An
    /// object without a resourceVersion records nothing; one without a name is an error.
    pub fn record_write(&self, written: &K) -> Result<(), KeyError> {
        let key = self.inner.indexer.key_of(written)?;
        if let Some(rv) = written
            .meta()
            .resource_version
            .as_deref()
            .filter(|rv| !rv.is_empty())
        {
            self.record(key, PendingWrite::AtLeast(rv.to_owned()));
        }
        Ok(())
    }

    /// Records a delete this process made of `key`. `answer` is the object the DELETE returned
    /// while finalizers keep it (its resourceVersion must show), `None` when the server answered
    /// with a `Status` (the object must be gone from the store, or replaced by another UID).
    pub fn record_delete(&self, key: &ObjectKey, answer: Option<&K>) {
        // An answer with a deletionTimestamp is an object finalizers still hold: its new
        // resourceVersion must show. Any other answer (a Status, or the object as it was when it
        // was removed) means it is gone.
        let pending = match answer
            .filter(|obj| obj.meta().deletion_timestamp.is_some())
            .and_then(|obj| obj.meta().resource_version.clone())
            .filter(|rv| !rv.is_empty())
        {
            Some(rv) => PendingWrite::AtLeast(rv),
            None => PendingWrite::Gone {
                uid: self
                    .inner
                    .indexer
                    .store()
                    .get_by_key(key)
                    .and_then(|obj| obj.meta().uid.clone()),
            },
        };
        self.record(key.clone(), pending);
    }

    fn record(&self, key: ObjectKey, pending: PendingWrite) {
        tracing::trace!(key = %key, expected = %pending, "write recorded");
        self.inner
            .written
            .record(key, pending, |key| self.check_written(key).is_none());
    }

    fn check_written(&self, key: &ObjectKey) -> Option<PendingWrite> {
        let cached = self.inner.indexer.store().get_by_key(key);
        let store = self.inner.store_version.applied();
        let meta = cached.as_deref().map(kube::Resource::meta);
        let seen = Seen {
            object: meta.map(|m| (m.resource_version.as_deref(), m.uid.as_deref())),
            store: &store,
        };
        self.inner.written.check(key, &seen)
    }

    /// What a recorded write of `key` still waits for, `None` once the store shows it (or
    /// nothing was recorded, or the versions cannot be compared: fail open).
    pub fn pending_write(&self, key: &ObjectKey) -> Option<PendingWrite> {
        if self.inner.written.is_empty() {
            return None;
        }
        self.check_written(key)
    }

    /// Waits until the store shows this process's last recorded write of `key`, for at most
    /// `timeout`.
    pub async fn wait_until_observed(
        &self,
        key: &ObjectKey,
        timeout: Duration,
    ) -> Result<(), ObserveError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.inner.store_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let Some(expected) = self.pending_write(key) else {
                return Ok(());
            };
            if self.is_stopped() {
                return Err(ObserveError::Stopped { key: key.clone() });
            }
            tokio::select! {
                () = changed => {}
                () = self.inner.stopped.cancelled() => {}
                () = tokio::time::sleep_until(deadline) => {
                    return match self.pending_write(key) {
                        None => Ok(()),
                        Some(_) => Err(ObserveError::Timeout { key: key.clone(), expected }),
                    };
                }
            }
        }
    }

    /// The last cache lag measured ([`InformerOptions::lag_probe`]); `None` before the first
    /// sample or without a probe.
    pub fn last_lag(&self) -> Option<Duration> {
        self.inner.lag.last()
    }

    /// A subscription to the lag samples.
    pub fn subscribe_lag(&self) -> watch::Receiver<Option<Duration>> {
        self.inner.lag.subscribe()
    }

    /// Calls `observer` with every lag sample (a metrics histogram, say).
    pub fn on_lag(&self, observer: LagObserver) {
        self.inner.lag.observe(observer);
    }

    /// The lag probe: see [`lag`](crate::lag).
    async fn probe_lag(&self, period: Duration, token: CancellationToken) {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let probe = ListParams {
            limit: Some(1),
            ..ListParams::default()
        };
        loop {
            tokio::select! {
                biased;
                () = token.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if !self.has_synced() {
                continue;
            }
            let started = tokio::time::Instant::now();
            let list = tokio::select! {
                biased;
                () = token.cancelled() => return,
                list = self.inner.source.list(&probe) => list,
            };
            let target = match list {
                Ok(page) => page.resource_version,
                Err(e) => {
                    tracing::debug!(error = %e, "lag probe list failed; no sample");
                    continue;
                }
            };
            loop {
                let changed = self.inner.store_changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let store = self.last_store_resource_version();
                match crate::resource_version::is_at_least(&store, &target) {
                    Some(true) => {
                        self.inner.lag.publish(started);
                        break;
                    }
                    Some(false) => {}
                    None => {
                        tracing::debug!(store = %store, server = %target, "lag probe: versions not comparable; no sample");
                        break;
                    }
                }
                tokio::select! {
                    biased;
                    () = token.cancelled() => return,
                    () = changed => {}
                }
            }
        }
    }

    /// The resourceVersion the reflector last synced to (`""` before the first list).
    pub fn last_sync_resource_version(&self) -> String {
        self.inner
            .reflector
            .lock()
            .as_ref()
            .map(ReflectorHandle::last_sync_resource_version)
            .unwrap_or_default()
    }

    /// The counters of the reflector (relists, watch restarts, errors), for metrics and tests;
    /// `None` before [`run`](Self::run). After `run` returned they keep their final values.
    pub fn reflector_stats(&self) -> Option<ReflectorHandle> {
        self.inner.reflector.lock().clone()
    }

    /// The cache, read-only: only the informer's own delta processing writes into it.
    pub fn indexer(&self) -> &Store<K> {
        self.inner.indexer.store()
    }

    /// A lister over the store.
    pub fn lister(&self) -> Lister<K> {
        Lister::new(self.inner.indexer.store().clone())
    }

    /// Whether [`run`](Self::run) has returned.
    pub fn is_stopped(&self) -> bool {
        *self.inner.state.lock() == RunState::Stopped
    }

    /// How many event handlers are registered (removed ones and those of a stopped informer
    /// are not counted).
    pub fn handler_count(&self) -> usize {
        self.inner.processor.handler_count()
    }

    /// How many handler panics were caught, over the handlers registered now.
    pub fn panics(&self) -> u64 {
        self.inner.processor.panics()
    }

    fn mark_synced_if(&self) {
        let fifo = &self.inner.fifo;
        let now_synced = self.inner.synced.send_if_modified(|synced| {
            let newly = !*synced && fifo.has_synced();
            if newly {
                // Before the flag is visible: whoever sees `has_synced()` sees `Synced` too.
                self.inner.sync.store_synced();
            }
            *synced |= newly;
            newly
        });
        if now_synced {
            tracing::info!(resource = %self.inner.source.describe(), "informer synced");
        }
    }

    /// Runs the reflector, the processing loop and the handler tasks until `shutdown` is
    /// cancelled; returns once they all stopped. An informer runs once.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), InformerError> {
        {
            let mut state = self.inner.state.lock();
            match *state {
                RunState::Idle => *state = RunState::Running,
                RunState::Running => return Err(InformerError::AlreadyStarted("run")),
                RunState::Stopped => return Err(InformerError::Stopped),
            }
        }
        let resource = self.inner.source.describe();
        let span = tracing::info_span!("informer", resource = %resource);
        self.run_started(shutdown).instrument(span).await;
        Ok(())
    }

    /// The body of [`run`](Self::run), once the state says running.
    async fn run_started(&self, shutdown: CancellationToken) {
        let sink: Arc<dyn ReflectorSink<K>> = Arc::new(InformerSink {
            informer: self.clone(),
            transform: self.inner.transform.lock().clone(),
        });
        let mut reflector = Reflector::new(
            self.inner.source.clone(),
            sink,
            self.inner.options.reflector.clone(),
        );
        if let Some(handler) = self.inner.error_handler.lock().clone() {
            reflector.set_watch_error_handler(handler);
        }
        reflector.set_sync_tracker(self.inner.sync.clone());
        *self.inner.reflector.lock() = Some(reflector.handle());
        let token = shutdown.child_token();
        let reflector_task = tokio::spawn(reflector.run(token.clone()));
        let lag_task = self.inner.options.lag_probe.map(|period| {
            let informer = self.clone();
            let token = token.clone();
            tokio::spawn(
                async move { informer.probe_lag(period, token).await }
                    .instrument(tracing::debug_span!("lag_probe")),
            )
        });
        let processor_task = tokio::spawn({
            let processor = self.inner.processor.clone();
            let token = token.clone();
            async move { processor.run(token).await }
        });
        self.processing_loop(&token).await;
        // Stop everything (also when the loop ended because the FIFO closed).
        token.cancel();
        self.inner.fifo.close();
        if let Err(e) = reflector_task.await {
            tracing::error!(error = %e, "reflector task failed");
        }
        if let Some(Err(e)) = match lag_task {
            Some(task) => Some(task.await),
            None => None,
        } {
            tracing::error!(error = %e, "lag probe task failed");
        }
        match processor_task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "processor refused to run"),
            Err(e) => tracing::error!(error = %e, "processor task failed"),
        }
        {
            let _block = self.inner.block_deltas.lock();
            *self.inner.state.lock() = RunState::Stopped;
        }
        self.inner.sync.stopped();
        self.inner.stopped.cancel();
        tracing::info!("informer stopped");
    }

    async fn processing_loop(&self, token: &CancellationToken) {
        let check = self.inner.processor.resync_check_period();
        let mut resync = (!check.is_zero()).then(|| {
            let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + check, check);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        let mut handle = |pop| self.handle(pop);
        loop {
            let tick = async {
                match resync.as_mut() {
                    Some(interval) => {
                        interval.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                biased;
                () = token.cancelled() => return,
                () = tick => {
                    if self.inner.processor.should_resync(tokio::time::Instant::now()) {
                        tracing::debug!("resync");
                        if let Err(e) = self.inner.fifo.resync() {
                            tracing::warn!(error = %e, "resync failed");
                        }
                    }
                }
                popped = self.inner.fifo.pop(&mut handle) => match popped {
                    Ok(()) => {
                        self.mark_synced_if();
                        // Only when the queue drained (under load it rarely does, and the
                        // recorded value costs a clone). Read before looking at the queue
                        // again: if it is still empty, everything queued before this was
                        // recorded has been processed.
                        if self.inner.fifo.is_empty() {
                            let recorded = self.inner.store_version.recorded();
                            if self.inner.fifo.is_empty() {
                                self.inner.store_version.publish(recorded);
                            }
                        }
                        self.inner.store_changed.notify_waiters();
                    }
                    Err(PopError::Closed) => return,
                    Err(e) => tracing::warn!(error = %e, "processing deltas failed"),
                },
            }
        }
    }

    fn handle(&self, pop: Pop<K>) -> Result<(), ProcessError> {
        match pop {
            Pop::Key(popped) => self.handle_deltas(popped),
            Pop::Relist {
                resource_version,
                objects,
                is_in_initial_list,
            } => self.handle_relist(&resource_version, objects, is_in_initial_list),
            Pop::ResyncAll => {
                let _block = self.inner.block_deltas.lock();
                for obj in self.inner.indexer.list() {
                    let update = Notification::Update {
                        old: obj.clone(),
                        new: obj,
                    };
                    self.inner.processor.distribute(&update, true);
                }
                Ok(())
            }
        }
    }

    /// An atomic relist: the store takes the whole list at once, then handlers hear of the
    /// deletions (keys the store had that the list has not), then of every listed object, in
    /// list order (an update when the store had it, an add otherwise).
    fn handle_relist(
        &self,
        resource_version: &str,
        objects: Vec<Arc<K>>,
        is_in_initial_list: bool,
    ) -> Result<(), ProcessError> {
        let _block = self.inner.block_deltas.lock();
        let indexer = &self.inner.indexer;
        let before = indexer.snapshot();
        indexer
            .replace(objects.iter().cloned())
            .map_err(|e| ProcessError::Failed(Box::new(e)))?;
        let after = indexer.snapshot();
        let processor = &self.inner.processor;
        let mut deleted = 0usize;
        for (key, old) in before.iter() {
            if !after.contains_key(key) {
                deleted += 1;
                let tombstone = DeletedFinalStateUnknown {
                    key: key.clone(),
                    obj: Some(old),
                };
                processor.distribute(
                    &Notification::Delete(DeltaObject::Tombstone(tombstone)),
                    false,
                );
            }
        }
        for obj in objects {
            let old = indexer
                .key_of(&obj)
                .ok()
                .and_then(|key| before.get_by_key(&key));
            match old {
                Some(old) => {
                    let is_sync = resource_version_of(&*old) == resource_version_of(&*obj);
                    processor.distribute(&Notification::Update { old, new: obj }, is_sync);
                }
                None => processor.distribute(
                    &Notification::Add {
                        obj,
                        is_in_initial_list,
                    },
                    false,
                ),
            }
        }
        tracing::debug!(
            resource_version,
            objects = after.len(),
            deleted,
            "atomic relist applied"
        );
        Ok(())
    }

    fn handle_deltas(&self, popped: Popped<K>) -> Result<(), ProcessError> {
        let _block = self.inner.block_deltas.lock();
        let Popped {
            key,
            deltas,
            is_in_initial_list,
        } = popped;
        let processor = &self.inner.processor;
        for delta in deltas {
            match delta.kind {
                DeltaType::Sync | DeltaType::Replaced | DeltaType::Added | DeltaType::Updated => {
                    let DeltaObject::Object(obj) = delta.object else {
                        tracing::warn!(key = %key, "tombstone in a non-delete delta; ignored");
                        continue;
                    };
                    let old = self
                        .inner
                        .indexer
                        .update(obj.clone())
                        .map_err(|e| ProcessError::Failed(Box::new(e)))?;
                    match old {
                        Some(old) => {
                            let is_sync = resource_version_of(&*old) == resource_version_of(&*obj);
                            tracing::trace!(key = %key, resource_version = ?resource_version_of(&*obj), is_sync, "update");
                            processor.distribute(&Notification::Update { old, new: obj }, is_sync);
                        }
                        None => {
                            tracing::trace!(key = %key, resource_version = ?resource_version_of(&*obj), "add");
                            processor.distribute(
                                &Notification::Add {
                                    obj,
                                    is_in_initial_list,
                                },
                                false,
                            );
                        }
                    }
                }
                DeltaType::Deleted => {
                    self.inner.indexer.delete_key(&key);
                    tracing::trace!(key = %key, tombstone = delta.object.is_tombstone(), "delete");
                    processor.distribute(&Notification::Delete(delta.object), false);
                }
            }
        }
        Ok(())
    }
}

/// The reflector's sink: applies the transform, forwards to the FIFO, and notices when the
/// FIFO synced without anything to pop (an empty initial list).
struct InformerSink<K> {
    informer: SharedIndexInformer<K>,
    transform: Option<Transform<K>>,
}

impl<K> InformerSink<K> {
    fn apply(&self, obj: Arc<K>) -> Arc<K> {
        match &self.transform {
            Some(t) => t(obj),
            None => obj,
        }
    }
}

impl<K> InformerSink<K>
where
    K: kube::Resource + Send + Sync + 'static,
{
    /// Queues `obj` with `write`, then records its resourceVersion (after, never before: see
    /// [`StoreVersion`]).
    fn write(
        &self,
        obj: Arc<K>,
        write: impl FnOnce(&dyn Fifo<K>, Arc<K>) -> Result<(), FifoError>,
    ) -> Result<(), FifoError> {
        let rv = obj.meta().resource_version.clone();
        write(&*self.informer.inner.fifo, self.apply(obj))?;
        if let Some(rv) = rv {
            self.informer.inner.store_version.record(&rv);
        }
        Ok(())
    }
}

impl<K> ReflectorSink<K> for InformerSink<K>
where
    K: kube::Resource + Send + Sync + 'static,
{
    fn add(&self, obj: Arc<K>) -> Result<(), FifoError> {
        self.write(obj, |fifo, obj| fifo.add(obj))
    }
    fn update(&self, obj: Arc<K>) -> Result<(), FifoError> {
        self.write(obj, |fifo, obj| fifo.update(obj))
    }
    fn delete(&self, obj: Arc<K>) -> Result<(), FifoError> {
        self.write(obj, |fifo, obj| fifo.delete(obj))
    }
    fn replace_begin(&self) {
        self.informer.inner.fifo.replace_begin();
    }
    /// The items went through [`listed`](ReflectorSink::listed) (transformed or cached).
    fn replace_page(&self, items: Vec<Arc<K>>) -> Result<(), FifoError> {
        self.informer.inner.fifo.replace_page(items)
    }
    fn replace_done(&self, resource_version: &str) -> Result<(), FifoError> {
        let inner = &self.informer.inner;
        // The list is in hand: recorded before the FIFO can report it synced, so the state is
        // `Synced` (with this resourceVersion) as soon as `has_synced()` is true.
        inner.sync.list_done(resource_version);
        inner.fifo.replace_done(resource_version)?;
        inner.store_version.record(resource_version);
        self.informer.mark_synced_if();
        // An empty relist (or one whose items were all popped already) queues nothing more.
        let recorded = inner.store_version.recorded();
        inner
            .fifo
            .run_if_drained(&mut || inner.store_version.publish(recorded.clone()));
        inner.store_changed.notify_waiters();
        Ok(())
    }
    fn bookmark(&self, resource_version: &str) {
        let inner = &self.informer.inner;
        inner.fifo.bookmark(resource_version);
        inner.store_version.record(resource_version);
        let recorded = inner.store_version.recorded();
        inner
            .fifo
            .run_if_drained(&mut || inner.store_version.publish(recorded.clone()));
        inner.store_changed.notify_waiters();
    }
    fn wait_for_room(&self, backlog: usize) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(self.informer.inner.fifo.wait_for_room(backlog))
    }
    /// The stored object when `listed` is the same version of it, else `listed` transformed.
    /// Not with a compact store: its objects are decoded on every read, so there is no copy to
    /// share. With a transform, the stored object is the transform's output for that version
    /// (a transform must be idempotent, as client-go's), so it stands for the listed one too.
    fn listed(&self, listed: Arc<K>) -> Listed<K> {
        let store = self.informer.inner.indexer.store();
        if !store.is_compact()
            && !store.is_empty()
            && let Some(rv) = listed
                .meta()
                .resource_version
                .as_deref()
                .filter(|rv| !rv.is_empty())
            && let Ok(Some(cached)) = store.get(&listed)
            && cached.meta().resource_version.as_deref() == Some(rv)
        {
            return Listed::Cached(cached);
        }
        Listed::Fresh(self.apply(listed))
    }
}
