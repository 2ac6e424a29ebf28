//! `Controller<K>`: shared informers feeding a rate-limited work queue of object keys, drained
//! by a fixed number of workers calling your `reconcile`.
//!
//! Why this shape (client-go's sample-controller, made a library):
//! - **Keys, not objects, are queued.** Handlers enqueue an [`ObjectKey`]; `reconcile` reads the
//!   current object from the lister. Many changes to one object collapse into one reconcile of
//!   its latest state, and a deleted object is simply absent from the lister.
//! - **Per-key serialisation comes from the queue**: a key being reconciled and changed again is
//!   handed out once more after `done`, never to two workers at once.
//! - **Bounded concurrency** (`workers`, default 2) and **per-key backoff** (the queue's rate
//!   limiter, by default [`default_controller_rate_limiter`]: 5 ms doubling to 1000 s, and 10
//!   qps / burst 100 overall).
//! - **No work before the cache is warm**: workers start only after every involved informer
//!   (and the controller's handler on it) has synced, within [`ControllerOptions::sync_timeout`].
//!
//! What the handlers enqueue:
//! - the primary (`K`): its key on add and delete (tombstones included); on update unless the
//!   resourceVersion is unchanged (a resync) or the [`filter`](Controller::filter) predicate
//!   (e.g. [`predicates::generation_changed`]) says no;
//! - [`owns`](Controller::owns): the key of the controlling owner (`ownerReferences` entry with
//!   `controller: true` whose kind and apiVersion are `K`'s; with [`Owned::every_owner`], every
//!   owner of that kind) of a changed or deleted child, before and after an update (an adoption
//!   or release enqueues both owners);
//! - [`watches`](Controller::watches): whatever keys the mapper returns.
//!
//! With [`ControllerOptions::priority_queue`] (or a [`PriorityQueue`] given to
//! [`Controller::queue`]) keys of the initial list (`on_add` flagged as part of it) and of
//! resyncs go in at [`LOW_PRIORITY`](reflex_workqueue::priority::LOW_PRIORITY) and every real change at
//! [`NORMAL_PRIORITY`](reflex_workqueue::priority::NORMAL_PRIORITY): a change made
//! while a restarted controller works through its initial list is reconciled first, and aging
//! keeps the backlog from starving. A retry or requeue keeps the priority its key was handed
//! out at. Resyncs are queued only with the priority queue (behind every real change); the
//! default FIFO skips them.
//!
//! Outcomes: `Ok(Action::requeue_after(d))` forgets the key's failures and adds it back after
//! `d`; `Ok(Action::done())` forgets it; `Err(e)` asks the error policy for an [`ErrorAction`]
//! (rate-limited retry, retry after a delay, or drop). A panicking reconcile is caught, logged,
//! counted and retried with the rate limiter; the worker survives. `done` is always called.
//!
//! Informer ownership: [`run`](Controller::run) starts every involved informer that is not
//! running yet and stops exactly those on shutdown. Informers already running (for example
//! started by a factory, or shared with another controller) are left to whoever started them;
//! the controller only removes its handlers from them.
//!
//! Primaries known only at run time (a `DynamicObject` informer from
//! `InformerSpec::dynamic`) use [`Controller::new_with`], which takes the
//! `ApiResource` and the scope that `K` cannot tell.
//!
//! Metrics: [`ControllerSummary`] counts live through [`Controller::metrics`]; for Prometheus, set
//! [`ControllerOptions::metrics`] to a [`Metrics`] and every reconcile is counted by outcome and
//! timed (see [`metrics`](crate::metrics) for the names), and the default queue reports
//! client-go's workqueue metrics under the controller's name.
//!
//! Shutdown (cancel the token given to [`ControllerOptions::shutdown`]): workers stop taking
//! keys, in-flight reconciles finish within [`ControllerOptions::shutdown_grace`] (those still
//! running then are abandoned and counted), the queue is shut down (keys still waiting are
//! dropped: a restarted controller lists everything again), handlers are removed, the
//! informers the controller started are stopped, and `run` returns a [`ControllerSummary`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use k8s_openapi::api::apps::v1::Deployment;
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use reflex_informer::factory::{FactoryOptions, SharedInformerFactory};
//! use reflex_informer::key::ObjectKey;
//! use reflex_informer::lister::Lister;
//! use reflex_runtime::controller::{Action, Controller, ControllerOptions, default_error_policy};
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("reconcile failed: {0}")]
//! struct Error(String);
//!
//! struct Ctx {
//!     deployments: Lister<Deployment>,
//! }
//!
//! async fn reconcile(key: ObjectKey, ctx: Arc<Ctx>) -> Result<Action, Error> {
//!     let Some(deployment) = ctx.deployments.get_by_key(&key) else {
//!         return Ok(Action::done()); // deleted: owned objects go with it
//!     };
//!     tracing::info!(name = ?deployment.metadata.name, "reconciling");
//!     // ... create or update the children through kube::Api ...
//!     Ok(Action::requeue_after(Duration::from_secs(300)))
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = kube::Client::try_default().await?;
//! let factory = SharedInformerFactory::new(client, FactoryOptions::default());
//! let deployments = factory.informer::<Deployment>();
//! let config_maps = factory.informer::<ConfigMap>();
//! factory.start(); // the factory runs and stops these informers, not the controller
//! let shutdown = reflex_runtime::signal::shutdown_token()?; // SIGINT/SIGTERM
//! let ctx = Arc::new(Ctx { deployments: deployments.lister() });
//! let summary = Controller::new(deployments)
//!     .owns(config_maps)
//!     .workers(4)
//!     .options(ControllerOptions {
//!         name: "configmap-per-deployment".into(),
//!         sync_timeout: Some(Duration::from_secs(120)),
//!         shutdown,
//!         ..ControllerOptions::default()
//!     })
//!     .run(reconcile, default_error_policy, ctx)
//!     .await?;
//! println!("{} reconciles, {} errors", summary.reconciles, summary.errors);
//! factory.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::any::TypeId;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::join_all;
use kube::core::ClusterResourceScope;
use kube::core::discovery::Scope;
use reflex_informer::key::ObjectKey;
use reflex_informer::{InformerError, SharedIndexInformer, SyncState};
use reflex_workqueue::queue::QueueConfig;
use reflex_workqueue::{
    PriorityQueue, PriorityQueueConfig, RateLimitingQueue, default_controller_rate_limiter,
};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::Metrics;

mod involved;
mod queue;
mod sharded;
mod worker;

use crate::sharding::ShardGate;
use involved::*;
pub use queue::ControllerQueue;
use sharded::Sharded;
use worker::*;

/// What a successful reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Reconcile this key again after `delay` (for example to poll an external state), even if
    /// nothing changes.
    pub fn requeue_after(delay: Duration) -> Self {
        Action {
            requeue_after: Some(delay),
        }
    }

    /// Nothing more to do until the object (or one it watches) changes.
    pub fn done() -> Self {
        Action {
            requeue_after: None,
        }
    }

    /// The requested delay, if any.
    pub fn requeue_delay(&self) -> Option<Duration> {
        self.requeue_after
    }
}

/// What the error policy decides for a failed reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// Retry after the queue's rate limiter's delay for this key (per-key exponential backoff).
    RateLimited,
    /// Retry after this delay (the key's failure history is kept).
    RequeueAfter(Duration),
    /// Give up on this key until it changes again; its failure history is forgotten.
    Drop,
}

/// The default error policy: retry with the rate limiter ([`ErrorAction::RateLimited`]).
pub fn default_error_policy<E, C>(_error: &E, _key: &ObjectKey, _ctx: &Arc<C>) -> ErrorAction {
    ErrorAction::RateLimited
}

/// Update predicates for [`Controller::filter`].
pub mod predicates {
    /// True when `metadata.generation` changed: spec changes pass, status-only updates (which
    /// do not bump the generation of resources with a status subresource) are skipped.
    /// Objects without a generation always pass.
    pub fn generation_changed<K: kube::Resource>(old: &K, new: &K) -> bool {
        match (old.meta().generation, new.meta().generation) {
            (Some(old), Some(new)) => old != new,
            _ => true,
        }
    }
}

/// An informer that had not synced when [`ControllerError::SyncTimeout`] was raised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsynced {
    /// The informer's name in the controller (`primary:ConfigMap`, `owns:Pod`, ...).
    pub informer: String,
    /// Its state then: still listing, or failing and why.
    pub state: SyncState,
}

impl std::fmt::Display for Unsynced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.informer, self.state)
    }
}

fn list_unsynced(unsynced: &[Unsynced]) -> String {
    unsynced
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a controller could not run.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// Registering the controller's event handler on an informer failed (for example the
    /// informer was already stopped).
    #[error("registering the event handler on informer {informer} failed")]
    Register {
        /// Which informer (its position and type).
        informer: String,
        /// The informer's refusal.
        #[source]
        source: InformerError,
    },
    /// Some informers did not sync within the configured timeout; no worker was started.
    #[error(
        "informers did not sync within {timeout:?}: {}",
        list_unsynced(unsynced)
    )]
    SyncTimeout {
        /// The informers still unsynced, each with its state (and so the cause of a failure).
        unsynced: Vec<Unsynced>,
        /// The configured [`ControllerOptions::sync_timeout`].
        timeout: Duration,
    },
    /// An informer stopped before it synced; no worker was started.
    #[error("informer {informer} stopped before it synced")]
    InformerStopped {
        /// Which informer.
        informer: String,
    },
}

/// The rare knobs of a [`Controller`].
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// The controller's name, a field of every reconcile span and log event.
    pub name: String,
    /// How long `run` waits for every informer to sync before failing with
    /// [`ControllerError::SyncTimeout`] (`None`: forever). Default: none.
    pub sync_timeout: Option<Duration>,
    /// How long in-flight reconciles may run after shutdown was requested. Default 30 s.
    pub shutdown_grace: Duration,
    /// Cancel to shut the controller down gracefully (for SIGINT/SIGTERM, use
    /// [`signal::shutdown_token`](crate::signal::shutdown_token)). Default: a token nobody
    /// cancels.
    pub shutdown: CancellationToken,
    /// Where to report reconcile totals, errors, panics, durations and busy workers (labelled
    /// with [`name`](Self::name)); the default queue then also reports its workqueue metrics
    /// under that name (a queue given to [`Controller::queue`] reports wherever it was built
    /// to). Controllers sharing a name share their series. Default: none.
    pub metrics: Option<Metrics>,
    /// Build the default queue as a [`PriorityQueue`] (aging after
    /// [`DEFAULT_MAX_WAIT`](reflex_workqueue::priority::DEFAULT_MAX_WAIT)): keys of the initial
    /// list and of resyncs go in at [`LOW_PRIORITY`](reflex_workqueue::priority::LOW_PRIORITY), real changes at
    /// [`NORMAL_PRIORITY`](reflex_workqueue::priority::NORMAL_PRIORITY), so a
    /// change made while a restarted controller works through its initial list is reconciled
    /// first. Resyncs, which the default queue skips, are then queued (at low priority). A
    /// queue given to [`Controller::queue`] takes precedence. Default: false.
    pub priority_queue: bool,
    /// Read your own writes: before a key is reconciled, its last write recorded on the
    /// primary informer ([`SharedIndexInformer::record_write`],
    /// [`record_delete`](SharedIndexInformer::record_delete)) must be in the cache; a key whose
    /// write is not yet is retried with the queue's backoff instead of reconciled on stale
    /// data. Per key: other keys are reconciled meanwhile. Turn it on when a reconcile reads
    /// back what it wrote (status it computes from, counters, generated names) and records its
    /// writes. Default: false.
    pub read_your_writes: bool,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            name: "controller".to_owned(),
            sync_timeout: None,
            shutdown_grace: Duration::from_secs(30),
            shutdown: CancellationToken::new(),
            metrics: None,
            priority_queue: false,
            read_your_writes: false,
        }
    }
}

/// What a controller did, returned by [`Controller::run`] and readable live through
/// [`ControllerMetrics::snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ControllerSummary {
    /// Reconciles started.
    pub reconciles: u64,
    /// Reconciles that returned `Err`.
    pub errors: u64,
    /// Keys added back to the queue (requested requeues and retries).
    pub requeues: u64,
    /// Reconciles that panicked.
    pub panics: u64,
    /// Failed keys the error policy dropped.
    pub dropped: u64,
    /// Reconciles still running when the shutdown grace period ended (abandoned).
    pub abandoned: u64,
    /// Keys retried instead of reconciled because their own write was not in the cache yet
    /// ([`ControllerOptions::read_your_writes`]).
    pub awaited_own_writes: u64,
    /// Keys not reconciled because this replica does not hold their slot now
    /// ([`Controller::shards`]); their owner reconciles them.
    pub not_owned: u64,
    /// Reconciles aborted because their slot was being lost ([`Controller::shards`]).
    pub fenced: u64,
}

#[derive(Debug, Default)]
struct Counters {
    reconciles: AtomicU64,
    errors: AtomicU64,
    requeues: AtomicU64,
    panics: AtomicU64,
    dropped: AtomicU64,
    abandoned: AtomicU64,
    awaited_own_writes: AtomicU64,
    not_owned: AtomicU64,
    fenced: AtomicU64,
}

/// Live counters of a controller; a cheap-clone handle obtained before `run`.
#[derive(Debug, Clone, Default)]
pub struct ControllerMetrics {
    counters: Arc<Counters>,
}

impl ControllerMetrics {
    /// The counters now.
    pub fn snapshot(&self) -> ControllerSummary {
        let c = &self.counters;
        ControllerSummary {
            reconciles: c.reconciles.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            requeues: c.requeues.load(Ordering::Relaxed),
            panics: c.panics.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            abandoned: c.abandoned.load(Ordering::Relaxed),
            awaited_own_writes: c.awaited_own_writes.load(Ordering::Relaxed),
            not_owned: c.not_owned.load(Ordering::Relaxed),
            fenced: c.fenced.load(Ordering::Relaxed),
        }
    }
}

/// A controller for the primary resource `K`; see the [module docs](self).
pub struct Controller<K> {
    primary: SharedIndexInformer<K>,
    owner: OwnerType,
    filter: Option<UpdateFilter<K>>,
    others: Vec<Arc<dyn Involved>>,
    workers: usize,
    queue: Option<Queue>,
    options: ControllerOptions,
    metrics: ControllerMetrics,
    shards: Option<ShardGate>,
}

impl<K> fmt::Debug for Controller<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("name", &self.options.name)
            .field("workers", &self.workers)
            .field("watched", &self.others.len())
            .finish_non_exhaustive()
    }
}

/// A child informer given to [`Controller::owns`], with which of its owners to enqueue. A plain
/// `SharedIndexInformer<C>` converts into one that enqueues the controlling owner only.
pub struct Owned<C> {
    informer: SharedIndexInformer<C>,
    every_owner: bool,
}

impl<C> Owned<C> {
    /// Enqueue every owner of the primary's kind in the child's `ownerReferences`, not only the
    /// one marked `controller: true` (controller-runtime's `MatchEveryOwner`).
    pub fn every_owner(informer: SharedIndexInformer<C>) -> Self {
        Owned {
            informer,
            every_owner: true,
        }
    }
}

impl<C> From<SharedIndexInformer<C>> for Owned<C> {
    fn from(informer: SharedIndexInformer<C>) -> Self {
        Owned {
            informer,
            every_owner: false,
        }
    }
}

impl<C> fmt::Debug for Owned<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Owned")
            .field("every_owner", &self.every_owner)
            .finish_non_exhaustive()
    }
}

/// What `owns` looks for in a child's `ownerReferences`, and how an owner's key is formed.
#[derive(Debug, Clone)]
struct OwnerType {
    kind: String,
    api_version: String,
    cluster_scoped: bool,
}

impl<K> Controller<K>
where
    K: kube::Resource + Send + Sync + 'static,
    K::DynamicType: Default,
{
    /// A controller of the objects of `primary` (from a factory or built directly), with two
    /// workers, the default rate-limited queue and default options.
    pub fn new(primary: SharedIndexInformer<K>) -> Self {
        let scope = if TypeId::of::<K::Scope>() == TypeId::of::<ClusterResourceScope>() {
            Scope::Cluster
        } else {
            Scope::Namespaced
        };
        Self::new_with(primary, &K::DynamicType::default(), scope)
    }
}

impl<K> Controller<K>
where
    K: kube::Resource + Send + Sync + 'static,
{
    /// A controller of a primary resource whose type is known at run time, such as
    /// `DynamicObject` from [`InformerSpec::dynamic`]: `dyntype` (for
    /// `DynamicObject`, the `ApiResource`) gives the kind and apiVersion that
    /// [`owns`](Self::owns) matches in `ownerReferences`, and `scope` whether an owner's key has
    /// a namespace (a namespaced owner shares its children's namespace; a cluster-scoped one has
    /// none). For typed resources [`new`](Self::new) works both out from `K`.
    ///
    /// ```no_run
    /// use kube::core::discovery::Scope;
    /// use kube::discovery::ApiResource;
    /// use reflex_informer::factory::{FactoryOptions, InformerSpec, SharedInformerFactory};
    /// use reflex_runtime::controller::Controller;
    ///
    /// # fn doc(client: kube::Client) -> Result<(), reflex_informer::factory::FactoryError> {
    /// let factory = SharedInformerFactory::new(client, FactoryOptions::default());
    /// let foos = ApiResource {
    ///     group: "samplecontroller.k8s.io".into(),
    ///     version: "v1alpha1".into(),
    ///     api_version: "samplecontroller.k8s.io/v1alpha1".into(),
    ///     kind: "Foo".into(),
    ///     plural: "foos".into(),
    /// };
    /// let foo_informer = factory.informer_with(InformerSpec::dynamic(&foos))?;
    /// let controller = Controller::new_with(foo_informer, &foos, Scope::Namespaced);
    /// # let _ = controller;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// [`InformerSpec::dynamic`]: reflex_informer::factory::InformerSpec::dynamic
    pub fn new_with(
        primary: SharedIndexInformer<K>,
        dyntype: &K::DynamicType,
        scope: Scope,
    ) -> Self {
        let owner = OwnerType {
            kind: K::kind(dyntype).into_owned(),
            api_version: K::api_version(dyntype).into_owned(),
            cluster_scoped: scope == Scope::Cluster,
        };
        Controller {
            primary,
            owner,
            filter: None,
            others: Vec::new(),
            workers: 2,
            queue: None,
            options: ControllerOptions::default(),
            metrics: ControllerMetrics::default(),
            shards: None,
        }
    }

    /// Enqueues a primary's update only when `predicate(old, new)` holds (for example
    /// [`predicates::generation_changed`]). Adds and deletes always pass.
    pub fn filter(mut self, predicate: impl Fn(&K, &K) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Arc::new(predicate));
        self
    }

    /// Enqueues the controlling owner of a changed or deleted child of type `C`: the
    /// `ownerReferences` entry with `controller: true` and `K`'s kind and apiVersion. Pass
    /// [`Owned::every_owner`]`(informer)` instead of the informer to enqueue every owner of `K`'s
    /// kind, controlling or not.
    pub fn owns<C>(mut self, child: impl Into<Owned<C>>) -> Self
    where
        C: kube::Resource + Send + Sync + 'static,
    {
        let Owned {
            informer,
            every_owner,
        } = child.into();
        let OwnerType {
            kind,
            api_version,
            cluster_scoped,
        } = self.owner.clone();
        let mapper: Mapper<C> = Arc::new(move |child: &C| {
            let meta = child.meta();
            let mut keys: Vec<ObjectKey> = Vec::new();
            let owners = meta.owner_references.iter().flatten().filter(|r| {
                (every_owner || r.controller == Some(true))
                    && r.kind == kind
                    && r.api_version == api_version
            });
            for r in owners {
                let ns = if cluster_scoped {
                    None
                } else {
                    meta.namespace.as_deref()
                };
                let key = ObjectKey::new(ns, &r.name);
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            keys
        });
        let name = format!("owns#{}:{}", self.others.len() + 1, short_type::<C>());
        self.others.push(Arc::new(Watched {
            name,
            informer,
            mapper,
            role: Role::Related,
        }));
        self
    }

    /// Enqueues the keys `mapper` returns for every changed or deleted object of `informer`
    /// (on an update, for the old and the new object).
    pub fn watches<C>(
        mut self,
        informer: SharedIndexInformer<C>,
        mapper: impl Fn(&C) -> Vec<ObjectKey> + Send + Sync + 'static,
    ) -> Self
    where
        C: kube::Resource + Send + Sync + 'static,
    {
        let name = format!("watches#{}:{}", self.others.len() + 1, short_type::<C>());
        self.others.push(Arc::new(Watched {
            name,
            informer,
            mapper: Arc::new(mapper),
            role: Role::Related,
        }));
        self
    }

    /// How many reconciles may run at once (at least one). Default 2.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Replaces the default queue (`default_controller_rate_limiter()`, no metrics), for example
    /// to name it, attach a metrics provider or change the backoff: a [`RateLimitingQueue`] or a
    /// [`PriorityQueue`] (see [`ControllerOptions::priority_queue`] for what a priority queue
    /// changes).
    pub fn queue(mut self, queue: impl Into<ControllerQueue>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Reconciles only the keys of the slots this replica holds in a sharded group (see
    /// [`crate::sharding`]): other keys are skipped (their owner reconciles them), a slot's
    /// reconciles are aborted when it is lost, and its cached keys are queued when it becomes
    /// active. The primary informer must hold the sharder's shard
    /// ([`Sharder::informer_shard`](crate::sharding::Sharder::informer_shard)); children
    /// (`owns`, `watches`) map to their owner's key, so to the owner's slot, and the informers
    /// of `owns` children can hold only this replica's share too
    /// ([`Sharder::owned_shard`](crate::sharding::Sharder::owned_shard)).
    pub fn shards(mut self, gate: ShardGate) -> Self {
        self.shards = Some(gate);
        self
    }

    /// Sets the rare knobs (name, sync timeout, shutdown token and grace).
    pub fn options(mut self, options: ControllerOptions) -> Self {
        self.options = options;
        self
    }

    /// Live counters of this controller (the same values `run` returns at the end).
    pub fn metrics(&self) -> ControllerMetrics {
        self.metrics.clone()
    }

    /// Runs until [`ControllerOptions::shutdown`] is cancelled; see the [module docs](self).
    pub async fn run<C, E, R, Fut, P>(
        self,
        reconcile: R,
        error_policy: P,
        ctx: Arc<C>,
    ) -> Result<ControllerSummary, ControllerError>
    where
        C: Send + Sync + 'static,
        E: fmt::Display + Send + 'static,
        R: Fn(ObjectKey, Arc<C>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        P: Fn(&E, &ObjectKey, &Arc<C>) -> ErrorAction + Send + Sync + 'static,
    {
        let Controller {
            primary,
            owner,
            filter,
            others,
            workers,
            queue,
            options,
            metrics,
            shards,
        } = self;
        let name = options.name.clone();
        let queue = queue.unwrap_or_else(|| default_queue(&options));
        let recorder = options
            .metrics
            .as_ref()
            .map(|m| m.controller(&name, workers));
        let span = tracing::info_span!("controller", controller = %name);
        // The store's own key function: the keys reconcile gets are the lister's keys.
        let key_of = primary.indexer().key_func();
        let own_writes = options.read_your_writes.then(|| {
            let primary = primary.clone();
            let gate: OwnWrites = Arc::new(move |key: &ObjectKey| primary.pending_write(key));
            gate
        });
        let sharded = match shards {
            Some(gate) => Some(Arc::new(Sharded::start(gate, &primary, &queue)?)),
            None => None,
        };
        let primary_mapper: Mapper<K> = Arc::new(move |obj: &K| key_of(obj).into_iter().collect());
        let mut involved: Vec<Arc<dyn Involved>> = vec![Arc::new(Watched {
            name: format!("primary:{}", owner.kind),
            informer: primary,
            mapper: primary_mapper,
            role: Role::Primary { filter },
        })];
        involved.extend(others);

        let (informers, synced) = Informers::start(&involved, &queue)?;
        match wait_for_caches(synced, &involved, &options).await {
            Ok(true) => {}
            stopped_or_failed => {
                queue.shut_down();
                if let Some(s) = sharded.and_then(Arc::into_inner) {
                    s.stop();
                }
                informers.stop().await;
                return stopped_or_failed.map(|_| metrics.snapshot());
            }
        }
        tracing::info!(parent: &span, workers, "caches synced, starting workers");

        let worker = Arc::new(Worker {
            name: name.clone(),
            queue: queue.clone(),
            reconcile,
            error_policy,
            ctx,
            counters: metrics.counters.clone(),
            recorder,
            own_writes,
            shards: sharded.clone(),
            stop: options.shutdown.clone(),
        });
        let mut worker_set = JoinSet::new();
        for id in 0..workers {
            let span = tracing::info_span!(parent: &span, "worker", worker = id);
            worker_set.spawn(worker.clone().run_loop().instrument(span));
        }

        options.shutdown.cancelled().await;
        tracing::info!(parent: &span, "shutting down: finishing in-flight reconciles");
        let abandoned = finish_workers(worker_set, options.shutdown_grace, &queue).await;
        if abandoned > 0 {
            metrics
                .counters
                .abandoned
                .fetch_add(abandoned, Ordering::Relaxed);
            tracing::warn!(parent: &span, abandoned, grace = ?options.shutdown_grace, "grace period over, reconciles abandoned");
        }
        // Every worker has returned, so nothing is in flight: the drain has nothing to wait
        // for, and keys still queued are dropped (the next start lists everything anyway).
        queue.shut_down();
        drop(worker);
        if let Some(s) = sharded.and_then(Arc::into_inner) {
            s.stop();
        }
        informers.stop().await;
        let summary = metrics.snapshot();
        tracing::info!(parent: &span, reconciles = summary.reconciles, errors = summary.errors, requeues = summary.requeues, panics = summary.panics, "controller stopped");
        Ok(summary)
    }
}

/// The queue a controller makes when it was given none: rate-limited (client-go's) or, with
/// [`ControllerOptions::priority_queue`], by priority; named after the controller, with its
/// metrics if any.
fn default_queue(options: &ControllerOptions) -> ControllerQueue {
    let name = options.name.clone();
    let metrics = options
        .metrics
        .as_ref()
        .map(|m| -> Arc<dyn reflex_workqueue::MetricsProvider> { m.workqueue() });
    let limiter = default_controller_rate_limiter();
    if options.priority_queue {
        let config = PriorityQueueConfig {
            name,
            metrics,
            ..PriorityQueueConfig::default()
        };
        ControllerQueue::Priority(PriorityQueue::with_config(limiter, config))
    } else {
        let config = QueueConfig { name, metrics };
        ControllerQueue::RateLimited(RateLimitingQueue::with_config(limiter, config))
    }
}

/// The controller's handlers on its informers, and the informers it runs (those nobody ran
/// before it).
struct Informers {
    removers: Vec<Remover>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<bool>>,
}

/// Each involved informer's name and the future of its sync (with the controller's handler).
type SyncWaits = Vec<(String, futures::future::BoxFuture<'static, bool>)>;

impl Informers {
    /// Registers a handler on every involved informer, then starts those nobody runs yet. If a
    /// registration fails, the handlers registered so far are removed.
    fn start(
        involved: &[Arc<dyn Involved>],
        queue: &ControllerQueue,
    ) -> Result<(Informers, SyncWaits), ControllerError> {
        let mut removers = Vec::new();
        let mut synced = Vec::new();
        for inv in involved {
            match inv.register(queue.clone()) {
                Ok(reg) => {
                    synced.push((inv.name().to_owned(), reg.synced));
                    removers.push(reg.remove);
                }
                Err(source) => {
                    removers.into_iter().for_each(|remove: Remover| remove());
                    return Err(ControllerError::Register {
                        informer: inv.name().to_owned(),
                        source,
                    });
                }
            }
        }
        let stop = CancellationToken::new();
        let tasks = involved
            .iter()
            .map(|inv| tokio::spawn(inv.informer_run(stop.child_token())))
            .collect();
        Ok((
            Informers {
                removers,
                stop,
                tasks,
            },
            synced,
        ))
    }

    /// Removes the handlers and stops the informers this controller started.
    async fn stop(self) {
        self.removers.into_iter().for_each(|remove| remove());
        self.stop.cancel();
        let started = join_all(self.tasks).await;
        let owned = started.iter().filter(|r| matches!(r, Ok(true))).count();
        tracing::debug!(stopped_informers = owned, "informers stopped");
    }
}

/// Waits for every informer (and the controller's handler on it) to sync: `Ok(true)` when all
/// did, `Ok(false)` on shutdown first, an error when one stopped or the sync timeout passed.
async fn wait_for_caches(
    synced: SyncWaits,
    involved: &[Arc<dyn Involved>],
    options: &ControllerOptions,
) -> Result<bool, ControllerError> {
    let sync = wait_synced(synced);
    let result = tokio::select! {
        biased;
        () = options.shutdown.cancelled() => return Ok(false),
        r = async {
            match options.sync_timeout {
                Some(t) => tokio::time::timeout(t, sync).await.unwrap_or(Err(None)),
                None => sync.await,
            }
        } => r,
    };
    match result {
        Ok(()) => Ok(true),
        Err(Some(informer)) => Err(ControllerError::InformerStopped { informer }),
        Err(None) => Err(ControllerError::SyncTimeout {
            unsynced: involved
                .iter()
                .filter(|i| !i.has_synced())
                .map(|i| Unsynced {
                    informer: i.name().to_owned(),
                    state: i.sync_state(),
                })
                .collect(),
            timeout: options.sync_timeout.unwrap_or_default(),
        }),
    }
}

/// Waits up to `grace` for the workers to return; then aborts the rest. Returns how many
/// reconciles were abandoned (in flight when the grace period ended).
async fn finish_workers(mut workers: JoinSet<()>, grace: Duration, queue: &ControllerQueue) -> u64 {
    let finished = tokio::time::timeout(grace, async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if finished.is_ok() {
        return 0;
    }
    let in_flight = queue.processing_len() as u64;
    workers.abort_all();
    while workers.join_next().await.is_some() {}
    in_flight
}
