//! `SharedInformerFactory`: one shared informer per resource in a process.
//!
//! Several controllers in one process usually watch the same resources. Each watch costs the
//! API server a connection and the process a full copy of the objects, so the factory hands
//! the *same* [`SharedIndexInformer`] to every caller asking for the same thing.
//!
//! What "the same thing" is, is an [`InformerSpec`]: what to decode (a typed resource or a
//! projection of one, [`InformerSpec::typed`]; metadata only, [`InformerSpec::metadata`]; or
//! `DynamicObject`s of any [`ApiResource`], [`InformerSpec::dynamic`]) and which store (normal,
//! or [`compact`](InformerSpec::compact)), keyed by Rust types (and the `ApiResource` for
//! dynamic objects), never by type-name strings. A spec may also carry the informer's
//! [`transform`](InformerSpec::transform) and default handler [`resync`](InformerSpec::resync);
//! asking again for an informer with a different one is a [`FactoryError::Conflict`], not a
//! silent surprise. [`SharedInformerFactory::informer`] is the common case (the typed resource,
//! normal store) in one call.
//!
//! `start()` runs the informers not yet running (call it again after asking for more),
//! `wait_for_cache_sync()` reports each informer's [`SyncState`] per [`InformerId`] (`pods`,
//! `deployments.apps`, with the decoded type and store), `shutdown()` stops and awaits them all. Namespace, selectors and the
//! other list-and-watch settings are the factory's ([`FactoryOptions`]), shared by all its
//! informers: selectors live in [`ReflectorOptions`] only.
//!
//! ```no_run
//! use k8s_openapi::api::core::v1::Pod;
//! use kube::api::PartialObjectMeta;
//! use reflex_informer::factory::{FactoryOptions, InformerSpec, SharedInformerFactory};
//!
//! # async fn demo(client: kube::Client) -> Result<(), reflex_informer::factory::FactoryError> {
//! let factory = SharedInformerFactory::new(client, FactoryOptions::default());
//! let pods = factory.informer::<Pod>();
//! // Every Pod's metadata in a compact store, beside the full Pods.
//! let pod_meta = factory.informer_with(InformerSpec::<PartialObjectMeta<Pod>>::metadata().compact())?;
//! factory.start();
//! let synced = factory.wait_for_cache_sync(None).await;
//! // Each informer's SyncState: synced, or why not (forbidden, CRD not installed, ...).
//! for (id, state) in &synced {
//!     if !state.has_synced() {
//!         eprintln!("{id}: {state}");
//!     }
//! }
//! let _counts = (pods.indexer().len(), pod_meta.indexer().len());
//! factory.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use kube::api::{ApiResource, DynamicObject, PartialObjectMeta};
use kube::discovery::{ApiCapabilities, Scope};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::decode::DecodeOptions;
use crate::fifo::FifoMode;
use crate::informer::{InformerError, InformerOptions, SharedIndexInformer, Transform};
use crate::reflector::ReflectorOptions;
use crate::shard::ShardHandle;
use crate::source::ListWatch;
use crate::source::raw::{RawApi, WireOptions};
use crate::store::{CompactOptions, Indexer, KeyFunc, meta_key_func};
use crate::sync_state::SyncState;

/// Options shared by every informer of a factory.
#[derive(Debug, Clone, Default)]
pub struct FactoryOptions {
    /// Watch only this namespace (`None`: all namespaces). Cluster-scoped resources ignore it.
    pub namespace: Option<String>,
    /// Default handler resync period of the factory's informers (zero: none); a spec's
    /// [`resync`](InformerSpec::resync) overrides it for its informer.
    pub default_resync: Duration,
    /// How every informer lists and watches: label and field selectors, paging, timeouts,
    /// streaming lists, backoff.
    pub reflector: ReflectorOptions,
    /// What typed and dynamic informers skip while decoding lists and watch events. The default
    /// skips `metadata.managedFields`, which controllers almost never read and which is about a
    /// quarter of a typical object's JSON; use [`DecodeOptions::full`] to keep it.
    pub decode: DecodeOptions,
    /// What every informer's requests ask of the server on the wire: gzip (on by default, as
    /// in client-go) and KEP-5958's server-side managedFields drop (off by default). See
    /// [`WireOptions`].
    pub wire: WireOptions,
    /// Which FIFO every informer of the factory queues changes in (see
    /// [`FifoMode`]); the classic DeltaFIFO by default.
    pub fifo: FifoMode,
    /// The store options of the factory's compact informers ([`InformerSpec::compact`]).
    pub compact: CompactOptions,
    /// Measure each informer's lag behind the server this often
    /// ([`InformerOptions::lag_probe`]); `None` (the default): no probe.
    pub lag_probe: Option<Duration>,
}

/// Why the factory refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactoryError {
    /// The informer this spec names exists already with a different transform or resync:
    /// sharing it would silently change what its other users get.
    #[error("informer {id} already exists with a different {setting}")]
    Conflict {
        /// The shared informer.
        id: InformerId,
        /// `"transform"` or `"resync"`.
        setting: &'static str,
    },
}

/// What an informer decodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InformerView {
    /// Objects of a Rust type (the resource's own, or a projection of it), named by its type.
    Typed(&'static str),
    /// `PartialObjectMetadata`.
    Metadata,
    /// `DynamicObject`s.
    Dynamic,
}

/// How [`SharedInformerFactory::wait_for_cache_sync`] names an informer: the resource, what it
/// decodes, whether its store is compact and which shard it holds. Displayed as, for example,
/// `pods.v1 (Pod)`, `deployments.apps/v1 (metadata, compact)`, `pods.v1 (Pod, shard 1)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InformerId {
    resource: String,
    version: String,
    view: InformerView,
    compact: bool,
    /// The [`ShardHandle::id`] of a sharded informer.
    shard: Option<u64>,
}

impl InformerId {
    /// The resource, as kubectl names it: `pods`, `deployments.apps`.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The API version of the resource (`v1`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// What the informer decodes.
    pub fn view(&self) -> &InformerView {
        &self.view
    }

    /// Whether its store is compact.
    pub fn is_compact(&self) -> bool {
        self.compact
    }

    /// Whether it holds one shard of the resource ([`InformerSpec::shard`]).
    pub fn is_sharded(&self) -> bool {
        self.shard.is_some()
    }
}

impl fmt::Display for InformerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let view = match &self.view {
            InformerView::Typed(name) => name.rsplit("::").next().unwrap_or(name),
            InformerView::Metadata => "metadata",
            InformerView::Dynamic => "dynamic",
        };
        let sep = if self.resource.contains('.') {
            '/'
        } else {
            '.'
        };
        write!(f, "{}{sep}{} ({view}", self.resource, self.version)?;
        if self.compact {
            f.write_str(", compact")?;
        }
        if let Some(shard) = self.shard {
            write!(f, ", shard {shard}")?;
        }
        f.write_str(")")
    }
}

/// The sharing identity of a spec: the decoded Rust type, the dynamic resource, the store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct EntryKey {
    id: InformerId,
    item: TypeIdKey,
}

/// `TypeId` with an order, so entries sort (the order means nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct TypeIdKey(TypeId);

/// How a spec's source is made, once the factory is known.
type MakeSource<K> = Box<dyn FnOnce(&SharedInformerFactory) -> Arc<dyn ListWatch<K>> + Send>;
/// How a compact spec's store is made.
type MakeCompact<K> = fn(KeyFunc<K>, CompactOptions) -> Indexer<K>;

/// What to ask a [`SharedInformerFactory`] for; see the [module docs](self).
///
/// ```
/// use std::time::Duration;
/// use k8s_openapi::api::core::v1::Pod;
/// use kube::api::PartialObjectMeta;
/// use reflex_informer::factory::InformerSpec;
///
/// let full = InformerSpec::<Pod>::typed().resync(Duration::from_secs(300));
/// let meta = InformerSpec::<PartialObjectMeta<Pod>>::metadata().compact();
/// assert_eq!(full.id().resource(), "pods");
/// assert!(meta.id().is_compact());
/// ```
pub struct InformerSpec<K> {
    key: EntryKey,
    key_fn: KeyFunc<K>,
    source: MakeSource<K>,
    compact: Option<MakeCompact<K>>,
    transform: Option<Transform<K>>,
    resync: Option<Duration>,
    shard: Option<ShardHandle>,
}

impl<K> fmt::Debug for InformerSpec<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InformerSpec")
            .field("id", &self.key.id)
            .field("transform", &self.transform.is_some())
            .field("resync", &self.resync)
            .field("shard", &self.shard)
            .finish()
    }
}

fn resource_name(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    }
}

fn cluster_scoped<S: 'static>() -> bool {
    TypeId::of::<S>() == TypeId::of::<k8s_openapi::ClusterResourceScope>()
}

impl<K> InformerSpec<K>
where
    K: kube::Resource + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Send + Sync + 'static,
    K::Scope: 'static,
{
    /// Objects of the typed resource `K`, listed and watched at `K`'s URL and decoded straight
    /// into `K`, skipping what [`FactoryOptions::decode`] names. `K` may be a projection of a
    /// resource (a struct of yours with `metadata` and only the fields you read, made a resource
    /// with [`impl_projection!`](crate::impl_projection)): then nothing else of the object is
    /// ever allocated (see [`decode`](crate::decode)).
    pub fn typed() -> Self {
        let dt = K::DynamicType::default();
        let id = InformerId {
            resource: resource_name(&K::group(&dt), &K::plural(&dt)),
            version: K::version(&dt).into_owned(),
            view: InformerView::Typed(std::any::type_name::<K>()),
            compact: false,
            shard: None,
        };
        let source: MakeSource<K> = Box::new(|factory: &SharedInformerFactory| {
            let namespace = factory.namespace_for(cluster_scoped::<K::Scope>());
            let url = K::url_path(&K::DynamicType::default(), namespace);
            let api = RawApi::<K>::at(factory.client.clone(), url)
                .with_decode_options(&factory.options.decode)
                .with_wire_options(&factory.options.wire);
            Arc::new(api) as Arc<dyn ListWatch<K>>
        });
        InformerSpec::new(id, meta_key_func::<K>(dt), source)
    }
}

impl<R> InformerSpec<PartialObjectMeta<R>>
where
    R: kube::Resource + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
    R::DynamicType: Default + Send + Sync + 'static,
    R::Scope: 'static,
{
    /// The metadata of `R`'s objects: lists and watches ask the server for
    /// `PartialObjectMetadata` through the `Accept` header, as kubectl does (see
    /// [`RawApi::metadata_all`]), and skip what [`FactoryOptions::decode`] names while parsing.
    /// For controllers that need names, labels, owners or resourceVersions, not the objects.
    pub fn metadata() -> Self {
        let dt = R::DynamicType::default();
        let id = InformerId {
            resource: resource_name(&R::group(&dt), &R::plural(&dt)),
            version: R::version(&dt).into_owned(),
            view: InformerView::Metadata,
            compact: false,
            shard: None,
        };
        let source: MakeSource<PartialObjectMeta<R>> =
            Box::new(|factory: &SharedInformerFactory| {
                let dt = R::DynamicType::default();
                let client = factory.client.clone();
                let api = match factory.namespace_for(cluster_scoped::<R::Scope>()) {
                    Some(ns) => {
                        RawApi::<PartialObjectMeta<R>>::metadata_namespaced(client, ns, &dt)
                    }
                    None => RawApi::<PartialObjectMeta<R>>::metadata_all(client, &dt),
                };
                Arc::new(
                    api.with_decode_options(&factory.options.decode)
                        .with_wire_options(&factory.options.wire),
                ) as Arc<dyn ListWatch<PartialObjectMeta<R>>>
            });
        InformerSpec::new(id, meta_key_func::<PartialObjectMeta<R>>(dt), source)
    }
}

impl InformerSpec<DynamicObject> {
    /// `DynamicObject`s of `resource` (CRDs, anything discovered), in the factory's namespace
    /// unless the resource is cluster-scoped (an `ApiResource` does not say, so a cluster-scoped
    /// one is watched cluster-wide only with [`FactoryOptions::namespace`] unset; with its
    /// capabilities, [`discovered`](Self::discovered) knows).
    pub fn dynamic(resource: &ApiResource) -> Self {
        Self::dynamic_scoped(resource, false)
    }

    /// `DynamicObject`s of a discovered resource (see
    /// [`CachedDiscovery::resolve`](crate::discovery::CachedDiscovery::resolve)): in the
    /// factory's namespace if it is namespaced, cluster-wide if it is not.
    pub fn discovered(resource: &ApiResource, capabilities: &ApiCapabilities) -> Self {
        Self::dynamic_scoped(resource, capabilities.scope == Scope::Cluster)
    }

    fn dynamic_scoped(resource: &ApiResource, cluster_scoped: bool) -> Self {
        let id = InformerId {
            resource: resource_name(&resource.group, &resource.plural),
            version: resource.version.clone(),
            view: InformerView::Dynamic,
            compact: false,
            shard: None,
        };
        let ar = resource.clone();
        let source: MakeSource<DynamicObject> = Box::new(move |factory: &SharedInformerFactory| {
            let client = factory.client.clone();
            let api = match factory.namespace_for(cluster_scoped) {
                Some(ns) => RawApi::namespaced_with(client, ns, &ar),
                None => RawApi::all_with(client, &ar),
            };
            Arc::new(
                api.with_decode_options(&factory.options.decode)
                    .with_wire_options(&factory.options.wire),
            ) as Arc<dyn ListWatch<DynamicObject>>
        });
        InformerSpec::new(id, meta_key_func::<DynamicObject>(resource.clone()), source)
    }
}

impl<K> InformerSpec<K>
where
    K: Send + Sync + 'static,
{
    /// A spec of `K`'s objects named `id`, keyed by `key_fn` and read from `source`, with a
    /// normal store and no transform or resync of its own.
    fn new(id: InformerId, key_fn: KeyFunc<K>, source: MakeSource<K>) -> Self {
        InformerSpec {
            key: EntryKey {
                id,
                item: TypeIdKey(TypeId::of::<K>()),
            },
            key_fn,
            source,
            compact: None,
            transform: None,
            resync: None,
            shard: None,
        }
    }

    /// How the factory will name this informer.
    pub fn id(&self) -> &InformerId {
        &self.key.id
    }

    /// Keeps each object as compressed JSON, decoded when read, per
    /// [`FactoryOptions::compact`]; handlers still receive the decoded `Arc<K>` of each event.
    /// For large caches read mostly by key or index; see the
    /// [store docs](crate::store#compact-mode) for the trade-off. `K`'s JSON round-trip must
    /// give the same value (Kubernetes types and derived structs do).
    ///
    /// Unless the factory's reflector options say otherwise, a compact informer lists in pages
    /// of 500, its first list a consistent read (`resourceVersion=""`, where other informers
    /// list at `"0"`, which the API server's watch cache answers whole), and fetches the next
    /// page only once fewer than two pages of objects wait to be stored
    /// ([`ReflectorOptions::list_backlog`]): the decoded objects of a list never all exist at
    /// once, so the process's peak memory is the compact store's, not that of the full objects.
    pub fn compact(mut self) -> Self
    where
        K: kube::Resource + Serialize + DeserializeOwned,
    {
        self.key.id.compact = true;
        self.compact = Some(|key_fn, options| Indexer::compact_with_key_func(key_fn, options));
        self
    }

    /// Rewrites every object before it enters the FIFO and the store (see [`Transform`]).
    pub fn transform(mut self, transform: Transform<K>) -> Self {
        self.transform = Some(transform);
        self
    }

    /// The default resync period of the informer's handlers, instead of the factory's
    /// [`default_resync`](FactoryOptions::default_resync).
    pub fn resync(mut self, period: Duration) -> Self {
        self.resync = Some(period);
        self
    }

    /// Holds only the shard `handle` selects (see [`crate::shard`]): lists and watches carry its
    /// `shardSelector`, what a server that does not shard sends outside it is dropped, and a
    /// new selector set on the handle relists. A sharded informer is shared only with the specs
    /// of the same handle (its clones): an unsharded informer of the resource is another one.
    pub fn shard(mut self, handle: ShardHandle) -> Self {
        self.key.id.shard = Some(handle.id());
        self.shard = Some(handle);
        self
    }
}

/// The identity of a transform: the address of what its `Arc` points to.
fn transform_id<K>(transform: &Transform<K>) -> usize {
    Arc::as_ptr(transform).cast::<()>() as usize
}

/// A started or not yet started informer, with its concrete type erased.
trait ErasedInformer: Send + Sync {
    fn run(&self, shutdown: CancellationToken) -> BoxFuture<'static, ()>;
    fn wait_for_sync(&self) -> BoxFuture<'static, bool>;
    fn sync_state(&self) -> SyncState;
    fn as_any(&self) -> &(dyn Any + Send + Sync);
}

impl<K> ErasedInformer for SharedIndexInformer<K>
where
    K: kube::Resource + Send + Sync + 'static,
{
    fn run(&self, shutdown: CancellationToken) -> BoxFuture<'static, ()> {
        let informer = self.clone();
        async move {
            match informer.run(shutdown).await {
                Ok(()) => {}
                // Someone else (a controller given this informer) runs it already: the
                // factory's aim, a running informer, is met, and its runner stops it.
                Err(InformerError::AlreadyStarted(_)) => {
                    tracing::debug!("informer already running elsewhere");
                }
                Err(e) => tracing::error!(error = %e, "informer refused to run"),
            }
        }
        .boxed()
    }

    fn wait_for_sync(&self) -> BoxFuture<'static, bool> {
        let informer = self.clone();
        async move { informer.wait_for_sync().await }.boxed()
    }

    fn sync_state(&self) -> SyncState {
        SharedIndexInformer::sync_state(self)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }
}

struct Entry {
    informer: Arc<dyn ErasedInformer>,
    /// The address of the transform the informer was made with: transforms are compared by
    /// identity (the same `Arc`), which needs no type.
    transform: Option<usize>,
    resync: Option<Duration>,
    started: bool,
}

struct State {
    informers: BTreeMap<EntryKey, Entry>,
    tasks: Vec<JoinHandle<()>>,
    shut_down: bool,
}

/// Hands out shared informers; a cheap-clone handle. See the [module docs](self).
#[derive(Clone)]
pub struct SharedInformerFactory {
    client: kube::Client,
    options: Arc<FactoryOptions>,
    state: Arc<Mutex<State>>,
    shutdown: CancellationToken,
}

impl fmt::Debug for SharedInformerFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        let ids: Vec<String> = state.informers.keys().map(|k| k.id.to_string()).collect();
        f.debug_struct("SharedInformerFactory")
            .field("options", &self.options)
            .field("informers", &ids)
            .finish()
    }
}

impl SharedInformerFactory {
    /// A factory creating informers through `client`.
    pub fn new(client: kube::Client, options: FactoryOptions) -> Self {
        SharedInformerFactory {
            client,
            options: Arc::new(options),
            state: Arc::new(Mutex::new(State {
                informers: BTreeMap::new(),
                tasks: Vec::new(),
                shut_down: false,
            })),
            shutdown: CancellationToken::new(),
        }
    }

    /// The namespace a resource is watched in: the factory's, unless it is cluster-scoped.
    fn namespace_for(&self, cluster_scoped: bool) -> Option<&str> {
        self.options
            .namespace
            .as_deref()
            .filter(|_| !cluster_scoped)
    }

    fn informer_options(&self, resync: Option<Duration>) -> InformerOptions {
        InformerOptions {
            default_resync: resync.unwrap_or(self.options.default_resync),
            reflector: self.options.reflector.clone(),
            fifo: self.options.fifo,
            lag_probe: self.options.lag_probe,
        }
    }

    /// The shared informer of the typed resource `K` with a normal store: the common case of
    /// [`informer_with`](Self::informer_with)`(InformerSpec::typed())`.
    pub fn informer<K>(&self) -> SharedIndexInformer<K>
    where
        K: kube::Resource + DeserializeOwned + Send + Sync + 'static,
        K::DynamicType: Default + Send + Sync + 'static,
        K::Scope: 'static,
    {
        self.obtain(InformerSpec::<K>::typed()).0
    }

    /// The shared informer `spec` names: the existing one if any caller asked for the same
    /// spec before (whatever its transform or resync, if this spec sets none), a new one
    /// otherwise. A spec whose transform (compared by identity: pass the same `Arc`) or resync
    /// differs from the existing informer's is a [`FactoryError::Conflict`].
    pub fn informer_with<K>(
        &self,
        spec: InformerSpec<K>,
    ) -> Result<SharedIndexInformer<K>, FactoryError>
    where
        K: kube::Resource + Send + Sync + 'static,
    {
        let id = spec.key.id.clone();
        match self.obtain(spec) {
            (informer, None) => Ok(informer),
            (_, Some(setting)) => Err(FactoryError::Conflict { id, setting }),
        }
    }

    /// The existing informer of `spec`, with the setting in which `spec` differs from it (if
    /// any), or a new one.
    fn obtain<K>(&self, spec: InformerSpec<K>) -> (SharedIndexInformer<K>, Option<&'static str>)
    where
        K: kube::Resource + Send + Sync + 'static,
    {
        let mut state = self.state.lock();
        if let Some(entry) = state.informers.get(&spec.key)
            && let Some(informer) = entry
                .informer
                .as_any()
                .downcast_ref::<SharedIndexInformer<K>>()
        {
            let same_transform = spec
                .transform
                .as_ref()
                .is_none_or(|t| entry.transform == Some(transform_id(t)));
            let differs = if !same_transform {
                Some("transform")
            } else if spec.resync.is_some() && spec.resync != entry.resync {
                Some("resync")
            } else {
                None
            };
            return (informer.clone(), differs);
        }
        let key = spec.key.clone();
        let transform = spec.transform.as_ref().map(transform_id);
        let resync = spec.resync;
        let informer = self.make(spec);
        tracing::debug!(informer = %key.id, "informer created");
        state.informers.insert(
            key,
            Entry {
                informer: Arc::new(informer.clone()),
                transform,
                resync,
                started: false,
            },
        );
        (informer, None)
    }

    /// Builds the informer of `spec` (not registered).
    fn make<K>(&self, spec: InformerSpec<K>) -> SharedIndexInformer<K>
    where
        K: kube::Resource + Send + Sync + 'static,
    {
        let mut options = self.informer_options(spec.resync);
        let indexer = match spec.compact {
            Some(make) => {
                options = compact_informer_options(options);
                make(spec.key_fn, self.options.compact.clone())
            }
            None => Indexer::with_key_func(spec.key_fn),
        };
        if let Some(shard) = spec.shard {
            options.reflector.shard = Some(shard);
        }
        let source = (spec.source)(self);
        let informer = SharedIndexInformer::with_indexer(source, indexer, options);
        if let Some(transform) = spec.transform {
            // A new informer has not started: setting its transform cannot fail.
            let _ = informer.set_transform(transform);
        }
        informer
    }

    /// Starts every informer not yet started (on the current tokio runtime). Call it again
    /// after asking for more informers. Does nothing after [`shutdown`](Self::shutdown).
    pub fn start(&self) {
        let mut state = self.state.lock();
        if state.shut_down {
            return;
        }
        let mut spawned = Vec::new();
        for (key, entry) in state.informers.iter_mut().filter(|(_, e)| !e.started) {
            entry.started = true;
            tracing::debug!(informer = %key.id, "starting informer");
            spawned.push(tokio::spawn(
                entry.informer.run(self.shutdown.child_token()),
            ));
        }
        state.tasks.extend(spawned);
    }

    /// Waits for every started informer to sync, or until `timeout`; returns each one's
    /// [`SyncState`] by [`InformerId`]: [`SyncState::has_synced`] says whether it synced, and
    /// an unsynced one says why (listing still, or failing with a typed cause: forbidden,
    /// resource not served, ...).
    pub async fn wait_for_cache_sync(
        &self,
        timeout: Option<Duration>,
    ) -> BTreeMap<InformerId, SyncState> {
        let started: Vec<(InformerId, Arc<dyn ErasedInformer>)> = self
            .state
            .lock()
            .informers
            .iter()
            .filter(|(_, e)| e.started)
            .map(|(k, e)| (k.id.clone(), e.informer.clone()))
            .collect();
        let waits = started.into_iter().map(|(id, informer)| async move {
            let wait = informer.wait_for_sync();
            match timeout {
                Some(t) => {
                    let _ = tokio::time::timeout(t, wait).await;
                }
                None => {
                    wait.await;
                }
            }
            (id, informer.sync_state())
        });
        futures::future::join_all(waits).await.into_iter().collect()
    }

    /// Stops every informer and waits for all their tasks.
    pub async fn shutdown(&self) {
        let tasks = {
            let mut state = self.state.lock();
            state.shut_down = true;
            std::mem::take(&mut state.tasks)
        };
        self.shutdown.cancel();
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "informer task failed");
            }
        }
    }
}

/// The reflector options of compact informers: a compact store only saves memory if the
/// decoded objects of a list never all exist at once before they are packed, so their lists are
/// paged (every list, the first one a consistent read: a list at `"0"` is answered whole, in
/// one response, by the API server's watch cache) and their backlog is bounded to two pages.
/// Options the factory's user set explicitly are kept.
fn compact_informer_options(mut options: InformerOptions) -> InformerOptions {
    let reflector = &mut options.reflector;
    if reflector.page_size.is_none() {
        reflector.page_size = Some(crate::reflector::DEFAULT_PAGE_SIZE);
        reflector.consistent_initial_list = true;
    }
    if reflector.list_backlog.is_none() {
        let page = match reflector.page_size {
            Some(n) if n > 0 => n as usize,
            _ => crate::reflector::DEFAULT_PAGE_SIZE as usize,
        };
        reflector.list_backlog = Some(2 * page);
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};

    fn client() -> kube::Client {
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("uri"));
        kube::Client::try_from(config).expect("client")
    }

    #[tokio::test]
    async fn the_same_spec_returns_the_same_shared_informer_and_different_specs_do_not() {
        let factory = SharedInformerFactory::new(client(), FactoryOptions::default());
        let a = factory.informer::<Pod>();
        let b = factory.informer_with(InformerSpec::<Pod>::typed()).unwrap();
        a.add_indexers("by-node", |_: &Pod| Vec::new()).unwrap();
        // Shared: the index registered through `a` exists in `b`'s store.
        assert!(b.indexer().index_keys("by-node", "x").is_ok());
        let m = factory
            .informer_with(InformerSpec::<PartialObjectMeta<Pod>>::metadata())
            .unwrap();
        assert!(
            m.indexer().index_keys("by-node", "x").is_err(),
            "metadata informer is distinct"
        );
        let c = factory
            .informer_with(InformerSpec::<Pod>::typed().compact())
            .unwrap();
        assert!(c.indexer().is_compact());
        assert!(!a.indexer().is_compact());
        assert!(
            c.indexer().index_keys("by-node", "x").is_err(),
            "compact is distinct"
        );
        let ar = ApiResource::erase::<ConfigMap>(&());
        let d1 = factory.informer_with(InformerSpec::dynamic(&ar)).unwrap();
        let d2 = factory.informer_with(InformerSpec::dynamic(&ar)).unwrap();
        d1.add_indexers("x", |_: &DynamicObject| Vec::new())
            .unwrap();
        assert!(d2.indexer().index_keys("x", "v").is_ok());
        let dc = factory
            .informer_with(InformerSpec::dynamic(&ar).compact())
            .unwrap();
        assert!(dc.indexer().is_compact(), "dynamic and compact combine");
        let nodes = ApiResource::erase::<Node>(&());
        let dn = factory
            .informer_with(InformerSpec::dynamic(&nodes))
            .unwrap();
        assert!(
            dn.indexer().index_keys("x", "v").is_err(),
            "another resource"
        );
        assert_eq!(factory.state.lock().informers.len(), 6);
    }

    #[tokio::test]
    async fn a_different_transform_or_resync_for_a_shared_informer_is_a_conflict() {
        let factory = SharedInformerFactory::new(client(), FactoryOptions::default());
        let strip: Transform<Pod> = Arc::new(|pod| pod);
        let spec = || InformerSpec::<Pod>::typed().transform(strip.clone());
        let first = factory.informer_with(spec()).unwrap();
        let again = factory.informer_with(spec()).unwrap();
        assert!(Arc::ptr_eq(
            &first.indexer().snapshot(),
            &again.indexer().snapshot()
        ));
        let other: Transform<Pod> = Arc::new(|pod| pod);
        let conflict = factory
            .informer_with(InformerSpec::<Pod>::typed().transform(other))
            .unwrap_err();
        assert_eq!(
            conflict,
            FactoryError::Conflict {
                id: InformerSpec::<Pod>::typed().id().clone(),
                setting: "transform"
            }
        );
        assert!(
            factory.informer_with(InformerSpec::<Pod>::typed()).is_ok(),
            "a spec that sets nothing takes the informer as it is"
        );
        let resync = Duration::from_secs(30);
        let meta = || InformerSpec::<PartialObjectMeta<Pod>>::metadata();
        factory.informer_with(meta().resync(resync)).unwrap();
        assert!(factory.informer_with(meta().resync(resync)).is_ok());
        assert!(matches!(
            factory.informer_with(meta().resync(Duration::from_secs(60))),
            Err(FactoryError::Conflict {
                setting: "resync",
                ..
            })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_server_reports_unsynced_within_timeout_and_shutdown_waits() {
        let factory = SharedInformerFactory::new(client(), FactoryOptions::default());
        let _pods = factory.informer::<Pod>();
        assert!(
            factory.wait_for_cache_sync(None).await.is_empty(),
            "nothing started"
        );
        factory.start();
        let synced = factory
            .wait_for_cache_sync(Some(Duration::from_secs(5)))
            .await;
        let pods = InformerSpec::<Pod>::typed().id().clone();
        let state = synced.get(&pods).expect("the pod informer is reported");
        assert!(!state.has_synced(), "{state:?}");
        assert!(
            matches!(
                state.failure(),
                Some(crate::sync_state::SyncFailure::Unreachable { .. })
            ),
            "an unreachable server is named as the cause: {state:?}"
        );
        assert_eq!(pods.to_string(), "pods.v1 (Pod)");
        factory.shutdown().await;
        assert!(factory.informer::<Pod>().is_stopped());
    }

    #[test]
    fn informers_are_named_by_resource_view_and_store() {
        let ar = ApiResource {
            group: "example.com".into(),
            version: "v1".into(),
            api_version: "example.com/v1".into(),
            kind: "Foo".into(),
            plural: "foos".into(),
        };
        let cases = [
            (InformerSpec::<Pod>::typed().id().clone(), "pods.v1 (Pod)"),
            (
                InformerSpec::<k8s_openapi::api::apps::v1::Deployment>::typed()
                    .compact()
                    .id()
                    .clone(),
                "deployments.apps/v1 (Deployment, compact)",
            ),
            (
                InformerSpec::<PartialObjectMeta<Pod>>::metadata()
                    .id()
                    .clone(),
                "pods.v1 (metadata)",
            ),
            (
                InformerSpec::dynamic(&ar).id().clone(),
                "foos.example.com/v1 (dynamic)",
            ),
        ];
        for (id, shown) in cases {
            assert_eq!(id.to_string(), shown);
        }
    }

    #[test]
    fn options_apply_namespace_resync_and_the_reflectors_selectors() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let options = FactoryOptions {
            namespace: Some("team-a".into()),
            reflector: ReflectorOptions {
                label_selector: Some("app=web".into()),
                field_selector: Some("status.phase=Running".into()),
                ..Default::default()
            },
            default_resync: Duration::from_secs(60),
            ..Default::default()
        };
        let factory = SharedInformerFactory::new(client(), options);
        let pods = factory.informer_options(Some(Duration::from_secs(5)));
        assert_eq!(pods.default_resync, Duration::from_secs(5));
        assert_eq!(pods.reflector.label_selector.as_deref(), Some("app=web"));
        assert_eq!(
            pods.reflector.field_selector.as_deref(),
            Some("status.phase=Running")
        );
        assert_eq!(factory.namespace_for(false), Some("team-a"));
        assert_eq!(
            factory.namespace_for(true),
            None,
            "cluster-scoped resources ignore the namespace"
        );
        assert_eq!(
            factory.informer_options(None).default_resync,
            Duration::from_secs(60)
        );
    }
}
