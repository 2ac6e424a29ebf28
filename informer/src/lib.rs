//! # reflex-informer
//!
//! The cache: a Reflector lists and watches a resource, a DeltaFIFO queues what changed, an
//! Indexer holds the objects (as `Arc<K>`), and informers fan the changes out to handlers.
//!
//! The names a controller or service needs are re-exported here: a factory
//! ([`SharedInformerFactory`]) hands out shared informers ([`SharedIndexInformer`]); register
//! [`ResourceEventHandler`]s (or [`handler_fn`] closures) and read the cache through a
//! [`Lister`] or the informer's read-only [`Store`]. The modules below hold the rest, for
//! those who build informers of their own.
//!
//! ```no_run
//! use k8s_openapi::api::core::v1::Pod;
//! use reflex_informer::{DeltaObject, FactoryOptions, ObjectKey, SharedInformerFactory, handler_fn};
//!
//! # async fn demo(client: kube::Client) {
//! let factory = SharedInformerFactory::new(client, FactoryOptions::default());
//! let pods = factory.informer::<Pod>();
//! pods.add_event_handler(
//!     handler_fn()
//!         .on_add(|pod: &std::sync::Arc<Pod>, _| println!("{:?} added", pod.metadata.name))
//!         .on_delete(|gone: &DeltaObject<Pod>| println!("{:?} deleted", gone.object().map(|p| &p.metadata.name))),
//! )
//! .unwrap();
//! factory.start();
//! factory.wait_for_cache_sync(None).await;
//! let web = pods.lister().get_by_key(&ObjectKey::new(Some("default"), "web-0"));
//! # let _ = web;
//! # }
//! ```
//!
//! | module | what it owns |
//! |---|---|
//! | [`key`] | object keys (`namespace/name`) |
//! | [`fifo`] | the seam between the Reflector and the delta queue |
//! | [`factory`] | `SharedInformerFactory`: one shared informer per resource |
//! | [`discovery`] | `CachedDiscovery`: resource names to `ApiResource`s, cached on disk as kubectl does |
//! | [`informer`] | `SharedIndexInformer`: reflector, FIFO, store and handlers joined |
//! | [`handler`] | `ResourceEventHandler`, `handler_fn`, `Registration`, `DeltaObject`: what handlers receive |
//! | [`source`] | `ListWatch`: where objects come from (kube::Api, in-memory) |
//! | [`reflector`] | list-then-watch into the FIFO, with resourceVersion bookkeeping |
//! | [`delta_fifo`] | `DeltaFifo`: per-key queue of deltas between Reflector and informer |
//! | [`in_order_fifo`] | `InOrderFifo`: every change in server order (client-go's `RealFIFO`), plain or atomic |
//! | [`store`] | `Indexer`: the lock-free, indexed cache of `Arc<K>` |
//! | [`lister`] | `Lister`: typed reads of the cache, by namespace, selector and index |
//! | [`sync_state`] | `SyncState`: listing, synced, or failing with a typed cause |
//! | [`lag`] | measuring how far the store lags behind the server |
//! | [`written`] | read-your-writes: writes recorded per key until the store shows them |
//! | [`resource_version`] | comparing resourceVersions (KEP-5504) |
//! | [`shard`] | shards of a resource: KEP-5866 hash ranges, the selector, the client-side filter |
//! | [`decode`] | decoding that skips what nobody reads (`managedFields`, configured paths) while parsing |

pub mod decode;
pub mod delta_fifo;
pub mod discovery;
pub mod factory;
pub mod fifo;
pub mod handler;
mod hash;
pub mod in_order_fifo;
pub mod informer;
pub mod key;
pub mod lag;
pub mod lister;
mod processor;
pub mod reflector;
pub mod resource_version;
pub mod shard;
pub mod source;
pub mod store;
pub mod sync_state;
pub mod written;

pub use factory::{FactoryError, FactoryOptions, InformerId, InformerSpec, SharedInformerFactory};
pub use fifo::FifoMode;
pub use handler::{
    DeletedFinalStateUnknown, DeltaObject, FnHandler, Registration, ResourceEventHandler,
    handler_fn,
};
pub use informer::{InformerError, InformerOptions, SharedIndexInformer, Transform};
pub use key::{KeyError, ObjectKey};
pub use lister::{Lister, NamespacedLister, Selector, parse_selector};
pub use reflector::ReflectorOptions;
pub use source::ListWatch;
pub use store::{Indexer, NAMESPACE_INDEX, Reader, Store, StoreError, StoreRef};
pub use sync_state::{SyncFailure, SyncState};
