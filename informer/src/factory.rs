//! `SharedInformerFactory`: one shared informer per resource in a process.
//!
//! Several controllers in one process usually watch the same resources. Each watch costs the
//! API server a connection and the process a full copy of the objects, so the factory hands
//! the *same* [`SharedIndexInformer`] to every caller asking for the same thing (keyed by the
//! Rust type, or the `ApiResource` for dynamic objects, and the kind of informer: full objects,
//! a projection ([`projected_informer`](SharedInformerFactory::projected_informer)) or metadata
//! only ([`metadata_informer`](SharedInformerFactory::metadata_informer))). `start()` runs the informers not yet running (call it again after asking
//! for more), `wait_for_cache_sync()` reports per type, `shutdown()` stops and awaits them all.
//!
//! ```no_run
//! use k8s_openapi::api::core::v1::Pod;
//! use reflex_informer::factory::{FactoryOptions, SharedInformerFactory};
//!
//! # async fn demo(client: kube::Client) {
//! let factory = SharedInformerFactory::new(client, FactoryOptions::default());
//! let pods = factory.informer::<Pod>();
//! factory.start();
//! let synced = factory.wait_for_cache_sync(None).await;
//! assert!(synced.values().all(|s| *s));
//! let _count = pods.indexer().len();
//! factory.shutdown().await;
//! # }
//! ```

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use kube::api::{ApiResource, DynamicObject, PartialObjectMeta};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::decode::DecodeOptions;
use crate::informer::{InformerOptions, SharedIndexInformer, Transform};
use crate::reflector::ReflectorOptions;
use crate::source::ListWatch;
use crate::source::raw::RawApi;
use crate::store::{CompactOptions, Indexer};

/// Options shared by every informer of a factory.
#[derive(Debug, Clone, Default)]
pub struct FactoryOptions {
    /// Watch only this namespace (`None`: all namespaces).
    pub namespace: Option<String>,
    /// Label selector applied to every list and watch.
    pub label_selector: Option<String>,
    /// Field selector applied to every list and watch.
    pub field_selector: Option<String>,
    /// Default handler resync period (zero: none).
    pub default_resync: Duration,
    /// Resync period per informer name (see [`SharedInformerFactory::wait_for_cache_sync`] for
    /// the names), overriding `default_resync`.
    pub resync_per_type: HashMap<String, Duration>,
    /// Base reflector options (the selectors above are applied on top).
    pub reflector: ReflectorOptions,
    /// What typed and dynamic informers skip while decoding lists and watch events. The default
    /// skips `metadata.managedFields`, which controllers almost never read and which is about a
    /// quarter of a typical object's JSON; use [`DecodeOptions::full`] to keep it.
    pub decode: DecodeOptions,
    /// Which FIFO every informer of the factory queues changes in (see
    /// [`FifoMode`](crate::fifo::FifoMode)); the classic DeltaFIFO by default.
    pub fifo: crate::fifo::FifoMode,
    /// The store options of the factory's compact informers
    /// ([`SharedInformerFactory::compact_informer`] and its metadata and projection twins).
    pub compact: CompactOptions,
}

/// A started or not yet started informer, with its concrete type erased.
trait ErasedInformer: Send + Sync {
    fn run(&self, shutdown: CancellationToken) -> BoxFuture<'static, ()>;
    fn wait_for_sync(&self) -> BoxFuture<'static, bool>;
    fn as_any(&self) -> &(dyn Any + Send + Sync);
}

impl<K> ErasedInformer for SharedIndexInformer<K>
where
    K: kube::Resource + Send + Sync + 'static,
{
    fn run(&self, shutdown: CancellationToken) -> BoxFuture<'static, ()> {
        let informer = self.clone();
        async move {
            if let Err(e) = informer.run(shutdown).await {
                tracing::error!(error = %e, "informer refused to run");
            }
        }
        .boxed()
    }

    fn wait_for_sync(&self) -> BoxFuture<'static, bool> {
        let informer = self.clone();
        async move { informer.wait_for_sync().await }.boxed()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }
}

struct Entry {
    informer: Arc<dyn ErasedInformer>,
    started: bool,
}

struct State {
    informers: BTreeMap<String, Entry>,
    tasks: Vec<JoinHandle<()>>,
    transforms: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
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

impl std::fmt::Debug for SharedInformerFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedInformerFactory")
            .field("options", &self.options)
            .field(
                "informers",
                &self.state.lock().informers.keys().collect::<Vec<_>>(),
            )
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
                transforms: HashMap::new(),
                shut_down: false,
            })),
            shutdown: CancellationToken::new(),
        }
    }

    /// Sets the transform of the informers of type `K` created after this call.
    pub fn set_transform<K: 'static>(&self, transform: Transform<K>) {
        self.state
            .lock()
            .transforms
            .insert(TypeId::of::<K>(), Box::new(transform));
    }

    fn informer_options(&self, name: &str) -> InformerOptions {
        let mut reflector = self.options.reflector.clone();
        if self.options.label_selector.is_some() {
            reflector.label_selector = self.options.label_selector.clone();
        }
        if self.options.field_selector.is_some() {
            reflector.field_selector = self.options.field_selector.clone();
        }
        InformerOptions {
            default_resync: self
                .options
                .resync_per_type
                .get(name)
                .copied()
                .unwrap_or(self.options.default_resync),
            reflector,
            fifo: self.options.fifo,
        }
    }

    /// The namespace the factory's informers of `K` are scoped to: the factory's namespace,
    /// unless `K` is cluster-scoped.
    fn namespace_of<K>(&self) -> Option<&str>
    where
        K: kube::Resource,
        K::Scope: 'static,
    {
        let cluster_scoped =
            TypeId::of::<K::Scope>() == TypeId::of::<k8s_openapi::ClusterResourceScope>();
        self.options
            .namespace
            .as_deref()
            .filter(|_| !cluster_scoped)
    }

    /// The source of `P` decoded from the JSON of the typed resource `K` at `K`'s URL: list and
    /// watch through [`RawApi`], which skips what [`FactoryOptions::decode`] names while
    /// parsing; scoped to the factory's namespace unless `K` is cluster-scoped. `P` is `K`
    /// itself or a projection of it.
    fn typed_source<K, P>(&self) -> RawApi<P>
    where
        K: kube::Resource,
        K::DynamicType: Default,
        K::Scope: 'static,
    {
        let url = K::url_path(&K::DynamicType::default(), self.namespace_of::<K>());
        RawApi::at(self.client.clone(), url).with_decode_options(&self.options.decode)
    }

    fn get_or_create<K>(
        &self,
        name: String,
        create: impl FnOnce(InformerOptions) -> SharedIndexInformer<K>,
    ) -> SharedIndexInformer<K>
    where
        K: kube::Resource + Send + Sync + 'static,
    {
        let mut state = self.state.lock();
        if let Some(entry) = state.informers.get(&name)
            && let Some(informer) = entry
                .informer
                .as_any()
                .downcast_ref::<SharedIndexInformer<K>>()
        {
            return informer.clone();
        }
        let informer = create(self.informer_options(&name));
        if let Some(t) = state.transforms.get(&TypeId::of::<K>())
            && let Some(t) = t.downcast_ref::<Transform<K>>()
            && let Err(e) = informer.set_transform(t.clone())
        {
            tracing::error!(error = %e, informer = %name, "transform not applied");
        }
        state.informers.insert(
            name,
            Entry {
                informer: Arc::new(informer.clone()),
                started: false,
            },
        );
        informer
    }

    /// The shared informer of typed objects `K` (named after `K`'s Rust type).
    pub fn informer<K>(&self) -> SharedIndexInformer<K>
    where
        K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Default + Send + Sync + 'static,
        K::Scope: 'static,
    {
        let name = std::any::type_name::<K>().to_owned();
        self.get_or_create(name, |options| {
            let source: Arc<dyn ListWatch<K>> = Arc::new(self.typed_source::<K, K>());
            SharedIndexInformer::new(source, options)
        })
    }

    /// The shared informer of typed objects `K` with a *compact* store (named `compact:` and
    /// `K`'s Rust type): listed, watched and decoded like [`informer`](Self::informer)'s, but each
    /// object is kept as compressed JSON and decoded when read, per
    /// [`FactoryOptions::compact`]. Handlers still receive the decoded `Arc<K>` of each event.
    /// For large caches read mostly by key or index; see the
    /// [store docs](crate::store#compact-mode) for the trade-off.
    ///
    /// Unless the factory's reflector options say otherwise, a compact informer lists in pages
    /// of 500, its first list a consistent read (`resourceVersion=""`, where other informers
    /// list at `"0"`, which the API server's watch cache answers whole), and fetches the next
    /// page only once fewer than two pages of objects wait to be stored
    /// ([`ReflectorOptions::list_backlog`](crate::reflector::ReflectorOptions::list_backlog)):
    /// the decoded objects of a list never all exist at once, so the process's peak memory is
    /// the compact store's, not that of the full objects.
    ///
    /// ```no_run
    /// use k8s_openapi::api::core::v1::Pod;
    /// use reflex_informer::factory::{FactoryOptions, SharedInformerFactory};
    /// use reflex_informer::key::ObjectKey;
    ///
    /// # async fn demo(client: kube::Client) {
    /// let factory = SharedInformerFactory::new(client, FactoryOptions::default());
    /// let pods = factory.compact_informer::<Pod>();
    /// factory.start();
    /// factory.wait_for_cache_sync(None).await;
    /// let web = pods.lister().get_by_key(&ObjectKey::new(Some("default"), "web-0"));
    /// # let _ = web;
    /// # }
    /// ```
    pub fn compact_informer<K>(&self) -> SharedIndexInformer<K>
    where
        K: kube::Resource
            + Clone
            + serde::Serialize
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
        K::DynamicType: Default + Send + Sync + 'static,
        K::Scope: 'static,
    {
        let name = format!("compact:{}", std::any::type_name::<K>());
        self.get_or_create(name, |options| {
            let source: Arc<dyn ListWatch<K>> = Arc::new(self.typed_source::<K, K>());
            SharedIndexInformer::with_indexer(
                source,
                Indexer::compact(self.options.compact.clone()),
                compact_informer_options(options),
            )
        })
    }

    /// The shared projection informer of [`projected_informer`](Self::projected_informer) with a
    /// compact store (named `compact:projection:`, `K`'s and `P`'s Rust types): `P` must also be
    /// `Serialize`, and its JSON round-trip must give the same value (a derived struct does).
    pub fn compact_projected_informer<K, P>(&self) -> SharedIndexInformer<P>
    where
        K: kube::Resource + 'static,
        K::DynamicType: Default,
        K::Scope: 'static,
        P: kube::Resource + serde::Serialize + DeserializeOwned + Debug + Send + Sync + 'static,
        P::DynamicType: Default + Send + Sync + 'static,
    {
        let name = format!(
            "compact:projection:{}:{}",
            std::any::type_name::<K>(),
            std::any::type_name::<P>()
        );
        self.get_or_create(name, |options| {
            let source: Arc<dyn ListWatch<P>> = Arc::new(self.typed_source::<K, P>());
            SharedIndexInformer::with_indexer(
                source,
                Indexer::compact(self.options.compact.clone()),
                compact_informer_options(options),
            )
        })
    }

    /// The shared informer of the projection `P` of the typed resource `K` (named `projection:`,
    /// `K`'s and `P`'s Rust types).
    ///
    /// `P` is a struct of yours with `metadata: ObjectMeta` and only the fields your controller
    /// reads, made a resource with [`impl_projection!`](crate::impl_projection); it is listed and
    /// watched at `K`'s URL (with the factory's namespace and selectors) and decoded straight
    /// from `K`'s JSON, so nothing else of the object is ever allocated (see
    /// [`decode`](crate::decode)). It is keyed `namespace/name`, indexed, listed and shared like
    /// any informer's objects; [`FactoryOptions::decode`] applies on top of the projection.
    ///
    /// ```no_run
    /// use k8s_openapi::api::core::v1::Pod;
    /// use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    /// use reflex_informer::factory::{FactoryOptions, SharedInformerFactory};
    ///
    /// /// What this controller reads of a Pod: where it runs.
    /// #[derive(Debug, Clone, serde::Deserialize)]
    /// struct PodNode {
    ///     metadata: ObjectMeta,
    ///     #[serde(default)]
    ///     spec: PodNodeSpec,
    /// }
    /// #[derive(Debug, Clone, Default, serde::Deserialize)]
    /// struct PodNodeSpec {
    ///     #[serde(rename = "nodeName")]
    ///     node_name: Option<String>,
    /// }
    /// reflex_informer::impl_projection!(PodNode => Pod);
    ///
    /// # async fn demo(client: kube::Client) {
    /// let factory = SharedInformerFactory::new(client, FactoryOptions::default());
    /// let pods = factory.projected_informer::<Pod, PodNode>();
    /// pods.add_indexers("by-node", |p: &PodNode| p.spec.node_name.clone().into_iter().collect())
    ///     .unwrap();
    /// factory.start();
    /// factory.wait_for_cache_sync(None).await;
    /// let on_node_1 = pods.indexer().by_index("by-node", "node-1").unwrap();
    /// # let _ = on_node_1;
    /// # }
    /// ```
    pub fn projected_informer<K, P>(&self) -> SharedIndexInformer<P>
    where
        K: kube::Resource + 'static,
        K::DynamicType: Default,
        K::Scope: 'static,
        P: kube::Resource + DeserializeOwned + Send + Sync + 'static,
        P::DynamicType: Default + Send + Sync + 'static,
    {
        let name = format!(
            "projection:{}:{}",
            std::any::type_name::<K>(),
            std::any::type_name::<P>()
        );
        self.get_or_create(name, |options| {
            let source: Arc<dyn ListWatch<P>> = Arc::new(self.typed_source::<K, P>());
            SharedIndexInformer::new(source, options)
        })
    }

    /// The shared informer of `DynamicObject`s of `resource` (CRDs, discovered resources),
    /// named `group/version/plural`.
    pub fn dynamic_informer(&self, resource: &ApiResource) -> SharedIndexInformer<DynamicObject> {
        let name = format!(
            "{}/{}/{}",
            resource.group, resource.version, resource.plural
        );
        self.get_or_create(name, |options| {
            let api = match &self.options.namespace {
                Some(ns) => RawApi::namespaced_with(self.client.clone(), ns, resource),
                None => RawApi::all_with(self.client.clone(), resource),
            };
            let source: Arc<dyn ListWatch<DynamicObject>> =
                Arc::new(api.with_decode_options(&self.options.decode));
            SharedIndexInformer::with_indexer(
                source,
                Indexer::with_dyntype(resource.clone()),
                options,
            )
        })
    }

    /// The shared metadata-only informer of `K` (named `metadata:` and `K`'s Rust type).
    ///
    /// Its lists and watches ask the server for `PartialObjectMetadata` through the `Accept`
    /// header, as kubectl does (see [`RawApi::metadata_all`]), in the factory's namespace unless
    /// `K` is cluster-scoped, and skip what [`FactoryOptions::decode`] names (by default
    /// `managedFields`) while parsing: use it when a controller needs names, labels, owners or
    /// resourceVersions but not the objects themselves.
    pub fn metadata_informer<K>(&self) -> SharedIndexInformer<PartialObjectMeta<K>>
    where
        K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Default + Send + Sync + 'static,
        K::Scope: 'static,
    {
        let name = format!("metadata:{}", std::any::type_name::<K>());
        self.get_or_create(name, |options| {
            SharedIndexInformer::new(self.metadata_source::<K>(), options)
        })
    }

    /// The `PartialObjectMetadata` source of `K`, in the factory's namespace unless `K` is
    /// cluster-scoped.
    fn metadata_source<K>(&self) -> Arc<dyn ListWatch<PartialObjectMeta<K>>>
    where
        K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Default + Send + Sync + 'static,
        K::Scope: 'static,
    {
        let dt = K::DynamicType::default();
        let api = match self.namespace_of::<K>() {
            Some(ns) => {
                RawApi::<PartialObjectMeta<K>>::metadata_namespaced(self.client.clone(), ns, &dt)
            }
            None => RawApi::<PartialObjectMeta<K>>::metadata_all(self.client.clone(), &dt),
        };
        Arc::new(api.with_decode_options(&self.options.decode))
    }

    /// The shared metadata-only informer of [`metadata_informer`](Self::metadata_informer) with a
    /// compact store (named `compact:metadata:` and `K`'s Rust type): the smallest cache of a
    /// resource Reflex has, about 1 KiB per realistic Pod against about 3 KiB for the decoded
    /// `ObjectMeta` (whose maps and strings are each their own allocation), at a few
    /// microseconds per read that misses the cache of decoded objects. See the
    /// [store docs](crate::store#compact-mode) for the trade-off.
    ///
    /// ```no_run
    /// use k8s_openapi::api::core::v1::Pod;
    /// use reflex_informer::factory::{FactoryOptions, SharedInformerFactory};
    /// use reflex_informer::store::NAMESPACE_INDEX;
    ///
    /// # async fn demo(client: kube::Client) {
    /// let factory = SharedInformerFactory::new(client, FactoryOptions::default());
    /// let pods = factory.compact_metadata_informer::<Pod>();
    /// factory.start();
    /// factory.wait_for_cache_sync(None).await;
    /// let in_default = pods.indexer().by_index(NAMESPACE_INDEX, "default").unwrap();
    /// # let _ = in_default;
    /// # }
    /// ```
    pub fn compact_metadata_informer<K>(&self) -> SharedIndexInformer<PartialObjectMeta<K>>
    where
        K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Default + Send + Sync + 'static,
        K::Scope: 'static,
    {
        let name = format!("compact:metadata:{}", std::any::type_name::<K>());
        self.get_or_create(name, |options| {
            SharedIndexInformer::with_indexer(
                self.metadata_source::<K>(),
                Indexer::compact(self.options.compact.clone()),
                compact_informer_options(options),
            )
        })
    }

    /// Starts every informer not yet started (on the current tokio runtime). Call it again
    /// after asking for more informers. Does nothing after [`shutdown`](Self::shutdown).
    pub fn start(&self) {
        let mut state = self.state.lock();
        if state.shut_down {
            return;
        }
        let mut spawned = Vec::new();
        for (name, entry) in state.informers.iter_mut().filter(|(_, e)| !e.started) {
            entry.started = true;
            tracing::debug!(informer = %name, "starting informer");
            spawned.push(tokio::spawn(
                entry.informer.run(self.shutdown.child_token()),
            ));
        }
        state.tasks.extend(spawned);
    }

    /// Waits for every started informer to sync, or until `timeout`; returns informer name ->
    /// synced.
    pub async fn wait_for_cache_sync(&self, timeout: Option<Duration>) -> BTreeMap<String, bool> {
        let started: Vec<(String, Arc<dyn ErasedInformer>)> = self
            .state
            .lock()
            .informers
            .iter()
            .filter(|(_, e)| e.started)
            .map(|(n, e)| (n.clone(), e.informer.clone()))
            .collect();
        let waits = started.into_iter().map(|(name, informer)| async move {
            let wait = informer.wait_for_sync();
            let synced = match timeout {
                Some(t) => tokio::time::timeout(t, wait).await.unwrap_or(false),
                None => wait.await,
            };
            (name, synced)
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
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};

    fn client() -> kube::Client {
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("uri"));
        kube::Client::try_from(config).expect("client")
    }

    #[tokio::test]
    async fn the_same_request_returns_the_same_shared_informer() {
        let factory = SharedInformerFactory::new(client(), FactoryOptions::default());
        let a = factory.informer::<Pod>();
        let b = factory.informer::<Pod>();
        a.add_indexers("by-node", |_: &Pod| Vec::new()).unwrap();
        // Shared: the index registered through `a` exists in `b`'s store.
        assert!(b.indexer().index_keys("by-node", "x").is_ok());
        let m = factory.metadata_informer::<Pod>();
        assert!(
            m.indexer().index_keys("by-node", "x").is_err(),
            "metadata informer is distinct"
        );
        let c = factory.compact_informer::<Pod>();
        assert!(c.indexer().is_compact());
        assert!(!a.indexer().is_compact());
        assert!(
            c.indexer().index_keys("by-node", "x").is_err(),
            "compact is distinct"
        );
        c.add_indexers("c", |_: &Pod| Vec::new()).unwrap();
        assert!(
            factory
                .compact_informer::<Pod>()
                .indexer()
                .index_keys("c", "x")
                .is_ok()
        );
        let ar = ApiResource::erase::<ConfigMap>(&());
        let d1 = factory.dynamic_informer(&ar);
        let d2 = factory.dynamic_informer(&ar);
        d1.add_indexers("x", |_: &DynamicObject| Vec::new())
            .unwrap();
        assert!(d2.indexer().index_keys("x", "v").is_ok());
        assert_eq!(factory.state.lock().informers.len(), 4);
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
        assert_eq!(synced.get(std::any::type_name::<Pod>()), Some(&false));
        factory.shutdown().await;
        assert!(factory.informer::<Pod>().is_stopped());
    }

    #[test]
    fn options_apply_selectors_namespace_and_per_type_resync() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let pod = std::any::type_name::<Pod>().to_owned();
        let options = FactoryOptions {
            namespace: Some("team-a".into()),
            label_selector: Some("app=web".into()),
            field_selector: Some("status.phase=Running".into()),
            default_resync: Duration::from_secs(60),
            resync_per_type: [(pod.clone(), Duration::from_secs(5))].into(),
            ..Default::default()
        };
        let factory = SharedInformerFactory::new(client(), options);
        let pods = factory.informer_options(&pod);
        assert_eq!(pods.default_resync, Duration::from_secs(5));
        assert_eq!(pods.reflector.label_selector.as_deref(), Some("app=web"));
        assert_eq!(
            pods.reflector.field_selector.as_deref(),
            Some("status.phase=Running")
        );
        assert_eq!(factory.namespace_of::<Pod>(), Some("team-a"));
        assert_eq!(
            factory.namespace_of::<k8s_openapi::api::core::v1::Node>(),
            None,
            "cluster-scoped resources ignore the namespace"
        );
        let other = factory.informer_options("other");
        assert_eq!(other.default_resync, Duration::from_secs(60));
    }
}
