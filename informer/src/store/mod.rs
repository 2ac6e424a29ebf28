//! The Indexer: the informer's thread-safe, indexed cache of objects.
//!
//! # Why it looks like this
//!
//! An informer has one writer (the task that pops the DeltaFIFO) and many readers (listers in
//! every reconcile worker, handlers, health checks). client-go guards its `threadSafeMap` with a
//! read-write lock, so a `List()` copying 100k pointers holds the lock for milliseconds and a
//! writer (and, behind the writer, every other reader) waits for it.
//!
//! Here the whole state, objects *and* indexes, is an immutable [`Snapshot`] published through
//! an [`arc_swap::ArcSwap`]:
//!
//! - readers load the current snapshot without taking any lock; a reader never waits for a
//!   writer, and a writer never waits for a reader;
//! - writers are serialized by a mutex, copy the snapshot (`O(1)`: its maps are persistent and
//!   share their nodes), apply the change (copying only the path it touches) and publish the
//!   new snapshot atomically;
//! - every read sees one consistent state: a [`Snapshot`] taken with [`Store::snapshot`]
//!   answers any number of questions (`list`, `by_index`, `get_by_key`) about the same instant.
//!
//! The objects live in a map built for the read path (a shallow radix over the key's
//! precomputed hash with flat `hashbrown` leaves, see `store/map.rs`): a point read costs about
//! what one probe of a flat hash table costs. Index values map to sorted key sets.
//!
//! Two ways to read, for two kinds of caller:
//!
//! - [`Store::get_by_key`] (and the [`Lister`](crate::lister::Lister)'s reads) hand out an
//!   `Arc<K>` the caller owns: it may be kept, sent to another task, held across `.await`.
//! - A [`Reader`] ([`Store::reader`]) is one caller's handle for many reads in a row: it
//!   keeps the last snapshot it saw and checks it is still current with one relaxed atomic
//!   load, and [`Reader::get`] lends the object ([`StoreRef`]) without touching its reference
//!   count. Use it in loops that read many keys; a `Reader` that is kept but not used holds
//!   on to the snapshot it last saw (and so to objects deleted since), so drop it when idle.
//!
//! How fast each read is, beside client-go's `threadSafeMap` and kube-runtime's `Store`, is in
//! BENCHMARKS.md; `informer/benches/store.rs` compares the store with a
//! `parking_lot::RwLock<HashMap>` and measures read latency while a writer swaps in whole
//! relists. The trade is deliberate: a write costs microseconds (path copying), reads never
//! queue behind a writer. Writes are bounded by the watch rate (thousands per second at most),
//! reads by the number of workers, so the read side is the one to protect.
//!
//! # Compact mode
//!
//! A decoded `k8s_openapi` Pod takes far more memory than its JSON (strings, maps and vectors
//! each in their own allocation; BENCHMARKS.md has the figures per mode). A store built with [`Indexer::compact`] keeps each object as its JSON,
//! LZ4-compressed by default ([`CompactOptions`]), and decodes it when it is read:
//!
//! - Index values are computed at insert, from the object being written, so `by_index`,
//!   `index_keys` and `list_index_values` cost what they cost in a normal store; only the
//!   objects returned are decoded.
//! - A small CLOCK cache of decoded objects ([`CompactOptions::cache_capacity`], default 256)
//!   holds the most recently written and read ones: a controller that reads the object its
//!   handler was just told about gets the very `Arc` the handler got, without decoding.
//! - Handlers still receive the decoded `Arc<K>` of each event; the `old` of an update is taken
//!   from the cache or decoded.
//! - Reads that scan (`list`, a lister's `list` with a selector, `by_index` of a large value,
//!   the initial `on_add` of a late handler, resyncs, [`Indexer::add_indexer`] after start)
//!   decode every object they return: tens of microseconds per Pod, without filling the cache.
//! - `K` must round-trip through JSON (`Serialize` then `Deserialize` gives the same value), as
//!   Kubernetes types and derived projections do. An object that cannot be encoded is a
//!   [`StoreError::Encode`]; one that cannot be decoded reads as absent, is logged and counted
//!   ([`Store::decode_failures`]).
//!
//! Use it for large caches read mostly by key or through indexes (a controller over every Pod
//! of a big cluster), where memory matters more than the microseconds of a decode. Keep the
//! normal store where lists and selectors over the whole cache are frequent, or where
//! `Arc::ptr_eq` identity across reads matters.
//!
//! A packed object is one allocation of exactly its size (its id and bytes together), encoded
//! and compressed through buffers the store reuses, so packing leaves no freed temporaries
//! between the long-lived objects; keys of one namespace share one namespace string. What each
//! mode costs per Pod, and how long its reads take, is in BENCHMARKS.md
//! (`cargo run --release -p reflex-informer --example store_memory -- <mode> 100000`).
//!
//! A compact store saves a process memory only if the decoded objects of a list never all exist
//! at once before they are packed. The factory's compact informers therefore page every list (the
//! first one a consistent read: a list at resourceVersion `"0"` is answered whole, in one
//! response, from the API server's watch cache) and bound the list's backlog
//! ([`ReflectorOptions::list_backlog`](crate::reflector::ReflectorOptions::list_backlog)) to
//! two pages, so at most a few pages of decoded objects wait in the DeltaFIFO. An `Indexer::compact`
//! under an informer of your own wants the same reflector options.
//!
//! A packed object records its resourceVersion beside its bytes, and a write of an object in
//! the version the store holds keeps the packed form: a relist or a resync of a compact store
//! neither encodes its unchanged objects again nor decodes the old ones, so it allocates
//! nothing long-lived for them (a new packed form per object, freed old ones in between,
//! fragmented the heap of a relisting compact store).
//!
//! # Contract
//!
//! - Objects are stored as `Arc<K>` and handed out as clones of that `Arc`: nothing is deep-cloned.
//! - Objects are keyed by [`ObjectKey`] (`namespace/name`), computed from `metadata` by the key
//!   function given at construction ([`Indexer::new`] for typed resources,
//!   [`Indexer::with_dyntype`] for `DynamicObject` and friends whose dynamic type is not
//!   `Default`).
//! - Index functions (`Fn(&K) -> Vec<String>`) are registered by name; the namespace index
//!   [`NAMESPACE_INDEX`] is built in. Registering an index while objects are stored indexes them
//!   at once. Every write keeps every index up to date; a value whose set of keys becomes empty
//!   is removed (so [`Store::list_index_values`] only names values in use).
//! - Asking for an index that was never registered is a [`StoreError::UnknownIndex`], not an
//!   empty answer; asking for a value nobody has is an empty answer.
//!
//! ```
//! use std::sync::Arc;
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::ObjectMeta;
//! use reflex_informer::store::{Indexer, NAMESPACE_INDEX};
//!
//! fn cm(ns: &str, name: &str) -> Arc<ConfigMap> {
//!     Arc::new(ConfigMap {
//!         metadata: ObjectMeta {
//!             namespace: Some(ns.into()),
//!             name: Some(name.into()),
//!             ..Default::default()
//!         },
//!         ..Default::default()
//!     })
//! }
//!
//! let store = Indexer::<ConfigMap>::new();
//! store.add(cm("default", "a")).unwrap();
//! store.add(cm("kube-system", "b")).unwrap();
//! // An index added later indexes what is already stored.
//! store
//!     .add_indexer("by-name-length", |cm: &ConfigMap| {
//!         vec![cm.metadata.name.as_deref().unwrap_or("").len().to_string()]
//!     })
//!     .unwrap();
//! assert_eq!(store.by_index(NAMESPACE_INDEX, "default").unwrap().len(), 1);
//! assert_eq!(store.by_index("by-name-length", "1").unwrap().len(), 2);
//! assert!(store.by_index("no-such-index", "x").is_err());
//! ```

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::hash::FastHashSet;
use crate::key::{KeyError, ObjectKey};

mod compact;
mod map;
mod snapshot;

use compact::Codec;
pub use compact::CompactOptions;
use map::KeyMap;
use snapshot::*;
pub use snapshot::{Snapshot, StoreRef};

/// Name of the built-in index that maps a namespace to the keys of the objects in it.
///
/// Cluster-scoped objects have no namespace and are not in this index.
pub const NAMESPACE_INDEX: &str = "namespace";

/// Computes an object's key. See [`meta_key_func`] for the standard one.
pub type KeyFunc<K> = Arc<dyn Fn(&K) -> Result<ObjectKey, KeyError> + Send + Sync>;

/// Computes the values under which an object is indexed (zero, one or many).
pub type IndexFunc<K> = Arc<dyn Fn(&K) -> Vec<String> + Send + Sync>;

/// The standard key function: `namespace/name` from the object's metadata. `dyntype` is only
/// used to name the kind when an object has no name.
///
/// ```
/// use k8s_openapi::api::core::v1::Pod;
/// use reflex_informer::store::meta_key_func;
///
/// let key_of = meta_key_func::<Pod>(());
/// assert!(key_of(&Pod::default()).is_err());
/// ```
pub fn meta_key_func<K>(dyntype: K::DynamicType) -> KeyFunc<K>
where
    K: kube::Resource,
    K::DynamicType: Send + Sync + 'static,
{
    Arc::new(move |obj: &K| ObjectKey::from_meta::<K>(obj.meta(), &dyntype))
}

/// The namespace index function behind [`NAMESPACE_INDEX`].
pub fn namespace_index_func<K: kube::Resource>(obj: &K) -> Vec<String> {
    match obj.meta().namespace.as_deref() {
        Some(ns) if !ns.is_empty() => vec![ns.to_owned()],
        _ => Vec::new(),
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The object could not be keyed (it has no name).
    #[error("cannot key object: {0}")]
    Key(#[from] KeyError),
    /// The named index was never registered.
    #[error("index with name {name:?} does not exist")]
    UnknownIndex {
        /// The index name asked for.
        name: String,
    },
    /// An index with this name is already registered.
    #[error("indexer conflict: an index named {name:?} is already registered")]
    IndexExists {
        /// The index name that was registered twice.
        name: String,
    },
    /// A compact store could not encode the object (its `Serialize` failed).
    #[error("compact store cannot encode object {key}: {reason}")]
    Encode {
        /// The object's key.
        key: ObjectKey,
        /// serde_json's message.
        reason: String,
    },
}

struct Shared<K> {
    /// In its own `Arc` so that a [`Reader`] can keep a cache of it.
    current: Arc<ArcSwap<Snapshot<K>>>,
    writer: Mutex<()>,
    /// One shared allocation per namespace for the keys this store holds. It only grows, by one
    /// short string per namespace ever stored.
    namespaces: Mutex<FastHashSet<Arc<str>>>,
    key_fn: KeyFunc<K>,
    codec: Option<Arc<Codec<K>>>,
}

/// One caller's handle for many reads of an [`Indexer`] in a row; see the
/// [module docs](self#why-it-looks-like-this).
///
/// It keeps the snapshot it last read and, before each read, checks with one relaxed atomic
/// load whether the store published a newer one (and loads that if so), so it sees every write
/// an [`Store::get_by_key`] at the same moment would see. Reads lend the object
/// ([`StoreRef`]) instead of cloning its `Arc`. A `Reader` is `Send` but reads need `&mut self`:
/// give each worker its own (they are cheap to make). While it is kept, it holds on to the
/// snapshot it last read; drop it (or read again) so that objects deleted since can be freed.
pub struct Reader<K> {
    cache: arc_swap::cache::Cache<Arc<ArcSwap<Snapshot<K>>>, Arc<Snapshot<K>>>,
}

impl<K> Reader<K> {
    /// The current snapshot (the cached one, if nothing was written since).
    pub fn snapshot(&mut self) -> &Arc<Snapshot<K>> {
        self.cache.load()
    }

    /// The object stored under `key` now, lent.
    pub fn get(&mut self, key: &ObjectKey) -> Option<StoreRef<'_, K>> {
        self.cache.load().get(key)
    }

    /// Whether an object is stored under `key` now.
    pub fn contains_key(&mut self, key: &ObjectKey) -> bool {
        self.cache.load().contains_key(key)
    }
}

impl<K> fmt::Debug for Reader<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader").finish_non_exhaustive()
    }
}

/// A read-only handle on an [`Indexer`]: every read, no write. It is what an informer hands out
/// ([`SharedIndexInformer::indexer`](crate::informer::SharedIndexInformer::indexer)), so that
/// only its own delta processing writes into its cache. Cheap to clone; every clone reads the
/// same store.
pub struct Store<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for Store<K> {
    fn clone(&self) -> Self {
        Store {
            shared: self.shared.clone(),
        }
    }
}

impl<K> fmt::Debug for Store<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Store")
            .field(&self.shared.current.load())
            .finish()
    }
}

/// A thread-safe, indexed store of `Arc<K>` with lock-free reads. See the [module docs](self).
///
/// Cloning an `Indexer` is cheap and every clone is the same store. Its reads are those of the
/// [`Store`] it dereferences to; [`Indexer::store`] hands out that read-only view alone.
pub struct Indexer<K> {
    store: Store<K>,
}

impl<K> Clone for Indexer<K> {
    fn clone(&self) -> Self {
        Indexer {
            store: self.store.clone(),
        }
    }
}

impl<K> fmt::Debug for Indexer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Indexer")
            .field(&self.store.shared.current.load())
            .finish()
    }
}

impl<K> Deref for Indexer<K> {
    type Target = Store<K>;

    fn deref(&self) -> &Store<K> {
        &self.store
    }
}

impl<K> From<Indexer<K>> for Store<K> {
    fn from(indexer: Indexer<K>) -> Self {
        indexer.store
    }
}

impl<K> Default for Indexer<K>
where
    K: kube::Resource + Send + Sync + 'static,
    K::DynamicType: Default + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K> Indexer<K>
where
    K: kube::Resource + Send + Sync + 'static,
{
    /// An empty store for a typed resource, keyed by `namespace/name`, with the namespace index.
    pub fn new() -> Self
    where
        K::DynamicType: Default + Send + Sync + 'static,
    {
        Self::with_dyntype(K::DynamicType::default())
    }

    /// An empty store for a resource whose dynamic type is needed (e.g.
    /// `DynamicObject` with its `ApiResource`), with the namespace index.
    pub fn with_dyntype(dyntype: K::DynamicType) -> Self
    where
        K::DynamicType: Send + Sync + 'static,
    {
        Self::with_key_func(meta_key_func::<K>(dyntype))
    }

    /// An empty store with a custom key function, with the namespace index.
    pub fn with_key_func(key_fn: KeyFunc<K>) -> Self {
        Self::build(key_fn, None)
    }

    /// An empty *compact* store for a typed resource (or a projection): each object is kept as
    /// its JSON, LZ4-compressed by default, and decoded when read; see the
    /// [module docs](self#compact-mode) for the trade-off.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    /// use reflex_informer::key::ObjectKey;
    /// use reflex_informer::store::{CompactOptions, Indexer, NAMESPACE_INDEX};
    ///
    /// let store = Indexer::<ConfigMap>::compact(CompactOptions::default());
    /// let mut cm = ConfigMap::default();
    /// cm.metadata.namespace = Some("default".into());
    /// cm.metadata.name = Some("settings".into());
    /// cm.data = Some([("mode".to_string(), "fast".to_string())].into());
    /// store.add(Arc::new(cm.clone())).unwrap();
    /// let read = store.get_by_key(&ObjectKey::new(Some("default"), "settings")).unwrap();
    /// assert_eq!(*read, cm);
    /// assert_eq!(store.by_index(NAMESPACE_INDEX, "default").unwrap().len(), 1);
    /// assert!(store.is_compact());
    /// ```
    pub fn compact(options: CompactOptions) -> Self
    where
        K: Serialize + DeserializeOwned,
        K::DynamicType: Default + Send + Sync + 'static,
    {
        Self::compact_with_key_func(meta_key_func::<K>(K::DynamicType::default()), options)
    }

    /// An empty compact store with a custom key function (for example
    /// `meta_key_func::<DynamicObject>(api_resource)`); see [`compact`](Self::compact).
    pub fn compact_with_key_func(key_fn: KeyFunc<K>, options: CompactOptions) -> Self
    where
        K: Serialize + DeserializeOwned,
    {
        Self::build(key_fn, Some(Arc::new(Codec::new(&options))))
    }

    fn build(key_fn: KeyFunc<K>, codec: Option<Arc<Codec<K>>>) -> Self {
        let mut snapshot = Snapshot::empty(codec.clone());
        let name: Arc<str> = Arc::from(NAMESPACE_INDEX);
        snapshot
            .index_funcs
            .insert(name.clone(), Arc::new(namespace_index_func::<K>));
        snapshot.indices.insert(name, ValueMap::<K>::default());
        Indexer {
            store: Store {
                shared: Arc::new(Shared {
                    current: Arc::new(ArcSwap::from_pointee(snapshot)),
                    writer: Mutex::new(()),
                    namespaces: Mutex::new(FastHashSet::default()),
                    key_fn,
                    codec,
                }),
            },
        }
    }
}

impl<K> Store<K>
where
    K: Send + Sync + 'static,
{
    /// The key this store files `obj` under.
    pub fn key_of(&self, obj: &K) -> Result<ObjectKey, KeyError> {
        (self.shared.key_fn)(obj)
    }

    /// The key function, for a DeltaFIFO or anything that must agree with this store on keys.
    pub fn key_func(&self) -> KeyFunc<K> {
        self.shared.key_fn.clone()
    }

    /// The current state, lock-free. It never changes afterwards.
    pub fn snapshot(&self) -> Arc<Snapshot<K>> {
        self.shared.current.load_full()
    }

    /// A handle for many reads in a row that lends objects instead of cloning them; see
    /// [`Reader`].
    pub fn reader(&self) -> Reader<K> {
        Reader {
            cache: arc_swap::cache::Cache::new(self.shared.current.clone()),
        }
    }

    /// Runs `read` on the current snapshot without taking a reference to it (cheaper than
    /// [`snapshot`](Self::snapshot) for one short question; do not block inside `read`).
    pub fn with_snapshot<R>(&self, read: impl FnOnce(&Snapshot<K>) -> R) -> R {
        read(&self.shared.current.load())
    }

    /// Whether this is a compact store ([`Indexer::compact`]).
    pub fn is_compact(&self) -> bool {
        self.shared.codec.is_some()
    }

    /// How many times a compact store could not decode an object it had encoded (always zero
    /// for a type whose `Serialize` and `Deserialize` round-trip, as Kubernetes types do). Such
    /// an object reads as absent and the failure is logged.
    pub fn decode_failures(&self) -> u64 {
        self.shared
            .codec
            .as_ref()
            .map_or(0, |c| c.decode_failures.load(Ordering::Relaxed))
    }

    /// The bytes a compact store keeps for its objects' packed forms (zero for a normal store):
    /// with [`len`](Self::len), the average packed size.
    pub fn packed_bytes(&self) -> usize {
        self.shared
            .current
            .load()
            .items
            .values()
            .map(|slot| match slot {
                Slot::Packed(p) => p.payload().len(),
                Slot::Full(_) => 0,
            })
            .sum()
    }

    /// The object stored under `key`.
    pub fn get_by_key(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.shared.current.load().get_by_key(key)
    }

    /// The stored object with `obj`'s key.
    pub fn get(&self, obj: &K) -> Result<Option<Arc<K>>, StoreError> {
        let key = self.key_of(obj)?;
        Ok(self.get_by_key(&key))
    }

    /// Every stored object (one consistent snapshot), in no particular order.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.shared.current.load().list()
    }

    /// Every stored key (one consistent snapshot), in no particular order.
    pub fn list_keys(&self) -> Vec<ObjectKey> {
        self.shared.current.load().list_keys()
    }

    /// How many objects are stored.
    pub fn len(&self) -> usize {
        self.shared.current.load().len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.shared.current.load().is_empty()
    }

    /// The objects indexed under `value` in index `name`, in key order.
    pub fn by_index(&self, name: &str, value: &str) -> Result<Vec<Arc<K>>, StoreError> {
        self.shared.current.load().by_index(name, value)
    }

    /// The keys indexed under `value` in index `name`, sorted.
    pub fn index_keys(&self, name: &str, value: &str) -> Result<Vec<ObjectKey>, StoreError> {
        self.shared.current.load().index_keys(name, value)
    }

    /// Every value of index `name` that at least one object has, sorted.
    pub fn list_index_values(&self, name: &str) -> Result<Vec<String>, StoreError> {
        self.shared.current.load().list_index_values(name)
    }

    /// The objects sharing at least one value of index `name` with `obj`.
    pub fn index(&self, name: &str, obj: &K) -> Result<Vec<Arc<K>>, StoreError> {
        self.shared.current.load().index(name, obj)
    }
}

impl<K> Indexer<K>
where
    K: Send + Sync + 'static,
{
    /// The read-only view of this store.
    pub fn store(&self) -> &Store<K> {
        &self.store
    }

    /// The key `obj` is stored under, its namespace shared with the other keys of the store.
    fn stored_key(&self, obj: &K) -> Result<ObjectKey, KeyError> {
        Ok(self
            .key_of(obj)?
            .share_namespace(&mut self.store.shared.namespaces.lock()))
    }

    /// The slot `obj` is stored in: itself, or (in a compact store) its packed form, encoded
    /// before the writer lock is taken.
    fn slot_of(&self, key: &ObjectKey, obj: &Arc<K>) -> Result<Slot<K>, StoreError> {
        match &self.store.shared.codec {
            None => Ok(Slot::Full(obj.clone())),
            Some(codec) => Ok(Slot::Packed(codec.pack(key, obj)?)),
        }
    }

    /// Applies `change` to a copy of the current state and publishes it, writers serialized.
    fn write<R>(&self, change: impl FnOnce(&mut Snapshot<K>) -> R) -> R {
        let _writer = self.store.shared.writer.lock();
        let mut next = Snapshot::clone(&self.store.shared.current.load());
        let out = change(&mut next);
        self.store.shared.current.store(Arc::new(next));
        out
    }

    /// Registers an index function under `name` and indexes every stored object with it.
    ///
    /// A name already registered (including [`NAMESPACE_INDEX`]) is a
    /// [`StoreError::IndexExists`].
    pub fn add_indexer<F>(&self, name: &str, func: F) -> Result<(), StoreError>
    where
        F: Fn(&K) -> Vec<String> + Send + Sync + 'static,
    {
        let func: IndexFunc<K> = Arc::new(func);
        self.write(|s| {
            if s.index_funcs.contains_key(name) {
                return Err(StoreError::IndexExists { name: name.into() });
            }
            let values = s.build_index(&func);
            let name: Arc<str> = Arc::from(name);
            s.index_funcs.insert(name.clone(), func);
            s.indices.insert(name, values);
            Ok(())
        })
    }

    /// Stores `obj` (inserting or replacing); returns the object it replaced.
    ///
    /// A compact store keeps the packed form it holds when `obj` has the same non-empty
    /// resourceVersion (a relist's or a resync's copy of an unchanged object): nothing is
    /// encoded or decoded, and `obj` itself is returned as the replaced object, being the same
    /// version of it.
    pub fn add(&self, obj: Arc<K>) -> Result<Option<Arc<K>>, StoreError> {
        let key = self.stored_key(&obj)?;
        if self
            .store
            .shared
            .current
            .load()
            .packed_in_version(&key, &obj)
            .is_some()
        {
            // The write takes effect at the read above, where it changed nothing; a later
            // write of another version supersedes it as it would any write.
            return Ok(Some(obj));
        }
        let slot = self.slot_of(&key, &obj)?;
        Ok(self.write(|s| s.put(key, slot, &obj)))
    }

    /// Stores `obj` (same as [`add`](Self::add): the store does not distinguish them).
    pub fn update(&self, obj: Arc<K>) -> Result<Option<Arc<K>>, StoreError> {
        self.add(obj)
    }

    /// Removes the object with `obj`'s key; returns what was stored, if anything.
    pub fn delete(&self, obj: &K) -> Result<Option<Arc<K>>, StoreError> {
        let key = self.key_of(obj)?;
        Ok(self.delete_key(&key))
    }

    /// Removes the object stored under `key`; returns it, if any.
    pub fn delete_key(&self, key: &ObjectKey) -> Option<Arc<K>> {
        if !self.store.shared.current.load().contains_key(key) {
            return None;
        }
        self.write(|s| s.take(key))
    }

    /// Replaces the whole content with `objs` (indexes rebuilt), as one atomic change.
    ///
    /// Nothing is changed if any object cannot be keyed. A compact store keeps the packed form
    /// of every object it holds in the same version (see [`add`](Self::add)).
    pub fn replace(&self, objs: impl IntoIterator<Item = Arc<K>>) -> Result<(), StoreError> {
        let mut objects = crate::hash::FastHashMap::default();
        for obj in objs {
            objects.insert(self.stored_key(&obj)?, obj);
        }
        let mut slots = Vec::with_capacity(objects.len());
        {
            let current = self.store.shared.current.load();
            for (key, obj) in &objects {
                let slot = match current.packed_in_version(key, obj) {
                    Some(packed) => Slot::Packed(packed.clone()),
                    None => self.slot_of(key, obj)?,
                };
                slots.push((key.clone(), slot));
            }
        }
        let items = KeyMap::from_entries(slots);
        self.write(|s| {
            // Indexes are computed from the objects given, never by decoding packed ones.
            let rebuilt: Vec<(Arc<str>, ValueMap<K>)> = s
                .index_funcs
                .iter()
                .map(|(name, func)| (name.clone(), build_index(func, objects.iter())))
                .collect();
            s.indices = rebuilt.into_iter().collect();
            s.items = items;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_objects_read_back_after_an_oversized_one_reset_the_scratch_buffers() {
        use k8s_openapi::api::core::v1::ConfigMap;
        use kube::api::ObjectMeta;

        let cm = |name: &str, bytes: usize| {
            Arc::new(ConfigMap {
                metadata: ObjectMeta {
                    namespace: Some("ns".into()),
                    name: Some(name.into()),
                    ..Default::default()
                },
                data: Some([("v".to_owned(), "x".repeat(bytes))].into()),
                ..Default::default()
            })
        };
        for compress in [true, false] {
            let store = Indexer::<ConfigMap>::compact(CompactOptions {
                cache_capacity: 0,
                compress,
            });
            let objects = [
                cm("small", 10),
                cm("huge", 3 * compact::SCRATCH_KEEP),
                cm("after", 20),
            ];
            for obj in &objects {
                store.add(obj.clone()).unwrap();
            }
            for obj in &objects {
                let key = store.key_of(obj).unwrap();
                assert_eq!(store.get_by_key(&key).as_deref(), Some(&**obj), "{key}");
            }
            let scratch = store.shared.codec.as_ref().unwrap().scratch.lock();
            assert!(scratch.json.capacity() <= compact::SCRATCH_KEEP);
            assert!(scratch.packed.capacity() <= compact::SCRATCH_KEEP);
        }
    }

    fn versioned(
        name: &str,
        rv: Option<&str>,
        value: &str,
    ) -> Arc<k8s_openapi::api::core::v1::ConfigMap> {
        Arc::new(k8s_openapi::api::core::v1::ConfigMap {
            metadata: kube::api::ObjectMeta {
                namespace: Some("ns".into()),
                name: Some(name.into()),
                resource_version: rv.map(str::to_owned),
                ..Default::default()
            },
            data: Some([("v".to_owned(), value.to_owned())].into()),
            ..Default::default()
        })
    }

    /// The packed form a compact store holds under `obj`'s key.
    fn packed_of<K: Send + Sync + 'static>(store: &Indexer<K>, obj: &K) -> compact::Packed {
        let key = store.key_of(obj).unwrap();
        match store.snapshot().items.get(&key) {
            Some(Slot::Packed(packed)) => packed.clone(),
            _ => panic!("{key} is not packed"),
        }
    }

    #[test]
    fn a_compact_store_keeps_the_packed_form_of_a_write_in_the_stored_version() {
        use k8s_openapi::api::core::v1::ConfigMap;

        for compress in [true, false] {
            let store = Indexer::<ConfigMap>::compact(CompactOptions {
                cache_capacity: 0,
                compress,
            });
            let first = versioned("a", Some("7"), "first");
            assert!(store.add(first.clone()).unwrap().is_none());
            let packed = packed_of(&store, &first);
            assert_eq!(packed.version(), Some(&b"7"[..]));

            // Same version: the stored form stays, and the written object is what it replaced.
            // The differing data stands in for an equal copy: the version alone decides.
            let relisted = versioned("a", Some("7"), "same version");
            let old = store.update(relisted.clone()).unwrap().unwrap();
            assert!(Arc::ptr_eq(&old, &relisted));
            assert_eq!(
                packed_of(&store, &first).id(),
                packed.id(),
                "not packed again"
            );
            let key = store.key_of(&first).unwrap();
            assert_eq!(store.get_by_key(&key).as_deref(), Some(&*first));
            let replace_kept = {
                store.replace([relisted.clone()]).unwrap();
                packed_of(&store, &first).id()
            };
            assert_eq!(replace_kept, packed.id(), "a replace keeps it too");
            assert_eq!(store.by_index(NAMESPACE_INDEX, "ns").unwrap().len(), 1);

            // A new version is packed again, and the old one decoded for the caller.
            let second = versioned("a", Some("8"), "second");
            let old = store.update(second.clone()).unwrap().unwrap();
            assert_eq!(*old, *first);
            assert_ne!(packed_of(&store, &second).id(), packed.id());
            assert_eq!(store.get_by_key(&key).as_deref(), Some(&*second));
        }
    }

    #[test]
    fn a_compact_store_packs_again_objects_without_a_usable_version() {
        use k8s_openapi::api::core::v1::ConfigMap;

        let store = Indexer::<ConfigMap>::compact(CompactOptions::default());
        let long = "9".repeat(256);
        for rv in [None, Some(""), Some(long.as_str())] {
            let first = versioned("a", rv, "first");
            store.add(first.clone()).unwrap();
            let packed = packed_of(&store, &first);
            assert_eq!(packed.version(), None, "{rv:?}");
            let again = versioned("a", rv, "again");
            let old = store.update(again.clone()).unwrap().unwrap();
            assert!(
                !Arc::ptr_eq(&old, &again),
                "{rv:?}: the stored object was replaced"
            );
            assert_ne!(packed_of(&store, &again).id(), packed.id(), "{rv:?}");
            let key = store.key_of(&again).unwrap();
            assert_eq!(store.get_by_key(&key).as_deref(), Some(&*again), "{rv:?}");
        }
        // A 255-byte version is recorded, and read back whole.
        let max = "5".repeat(255);
        let obj = versioned("b", Some(&max), "x");
        store.add(obj.clone()).unwrap();
        assert_eq!(packed_of(&store, &obj).version(), Some(max.as_bytes()));
        let key = store.key_of(&obj).unwrap();
        assert_eq!(store.get_by_key(&key).as_deref(), Some(&*obj));
    }
}
