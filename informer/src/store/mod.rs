//! The Indexer: the informer's thread-safe, indexed cache of objects.
//!
//! # Why it looks like this
//!
//! An informer has one writer (the task that pops the DeltaFIFO) and many readers (listers in
//! every reconcile worker, handlers, health checks). client-go guards its `threadSafeMap` with a
//! read-write lock, so a `List()` copying 100k pointers holds the lock for milliseconds and a
//! writer (and, behind the writer, every other reader) waits for it.
//!
//! Here the whole state, objects *and* indexes, is an immutable snapshot built from persistent
//! maps ([`imbl`]) and published through an [`arc_swap::ArcSwap`]:
//!
//! - readers `load()` the current snapshot without taking any lock; a reader never waits for a
//!   writer and a writer never waits for a reader;
//! - writers are serialized by a mutex, copy the snapshot (`O(1)`: persistent maps share their
//!   nodes), apply the change (`O(log n)` path copying) and publish the new snapshot atomically;
//! - every read sees one consistent state: a [`Snapshot`] taken with [`Indexer::snapshot`] answers
//!   any number of questions (`list`, `by_index`, `get_by_key`) about the same instant.
//!
//! The benchmark `informer/benches/store.rs` compares this with a `parking_lot::RwLock<HashMap>`.
//! The trade is deliberate: a single write costs several microseconds (path copying) instead of
//! well under one, and a point read is about 1.5x slower, but a read never queues behind a
//! writer: while a writer swaps in whole relists, the median `get_by_key` stayed under 1 µs here
//! against about 9 µs with the read-write lock. Writes are bounded by the watch rate (thousands
//! per second at most), reads by the number of workers, so the read side is the one to protect.
//!
//! # Compact mode
//!
//! A decoded `k8s_openapi` Pod takes far more memory than its JSON (a realistic Pod is about
//! 5 KB of JSON and well over 10 KiB decoded, strings, maps and vectors each in their own
//! allocation). A store built with [`Indexer::compact`] keeps each object as its JSON,
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
//!   ([`Indexer::decode_failures`]).
//!
//! Use it for large caches read mostly by key or through indexes (a controller over every Pod
//! of a big cluster), where memory matters more than the microseconds of a decode. Keep the
//! normal store where lists and selectors over the whole cache are frequent, or where
//! `Arc::ptr_eq` identity across reads matters.
//!
//! Measured with `cargo run --release -p reflex-informer --example store_memory -- <mode> 100000`
//! (100,000 generated Pods of 5.3 KB JSON each, one mode per process, resident set before and
//! after decoding and storing them page by page, 100,000 random `get_by_key` reads; 2 shared
//! cores, so the tails are noisy):
//!
//! | store | resident per Pod | `get` p50 | `get` p99 |
//! |---|---|---|---|
//! | typed `Pod`, managedFields skipped while parsing | 25.1 KiB | 1.8 µs | 3.2 µs |
//! | typed `Pod`, managedFields kept | 43.2 KiB | 1.6 µs | 3.0 µs |
//! | compact, LZ4 (2.2 KB packed per Pod) | 2.9 KiB | 76 µs | 123 µs |
//! | compact, plain JSON (3.5 KB per Pod) | 4.1 KiB | 72 µs | 131 µs |
//! | metadata-only (`PartialObjectMeta<Pod>`) | 3.2 KiB | 1.4 µs | 2.4 µs |
//! | metadata-only, compact, LZ4 (705 B packed) | 1.35 KiB | 7.4 µs | 17 µs |
//!
//! A packed object is one allocation of exactly its size (its id and bytes together), encoded
//! and compressed through buffers the store reuses, so packing leaves no freed temporaries
//! between the long-lived objects; keys of one namespace share one namespace string. What a
//! stored entry costs beyond its packed bytes (the persistent map's nodes, the key, the
//! namespace index) is about 260 bytes.
//!
//! A compact store saves a process memory only if the decoded objects of a list never all exist
//! at once before they are packed. The factory's compact informers therefore page every list (the
//! first one a consistent read: a list at resourceVersion `"0"` is answered whole, in one
//! response, from the API server's watch cache) and bound the list's backlog
//! ([`ReflectorOptions::list_backlog`](crate::reflector::ReflectorOptions::list_backlog)) to
//! two pages, so at most a few pages of decoded objects wait in the DeltaFIFO. An `Indexer::compact`
//! under an informer of your own wants the same reflector options.
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
//!   is removed (so [`Indexer::list_index_values`] only names values in use).
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

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::key::{KeyError, ObjectKey};

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

type KeySet = imbl::OrdSet<ObjectKey>;
type ValueMap = imbl::HashMap<String, KeySet>;

/// Options of a compact store ([`Indexer::compact`]); see the [module docs](self#compact-mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactOptions {
    /// How many decoded objects are kept for reads (recently written or read ones; zero: none).
    /// Each costs a decoded object's memory (about 20-30 KiB for a realistic Pod).
    pub cache_capacity: usize,
    /// Compress each object's JSON with LZ4 (about 3x smaller for Pods, a few microseconds per
    /// read). Without it the store keeps plain JSON.
    pub compress: bool,
}

impl Default for CompactOptions {
    /// 256 cached objects, LZ4 on.
    fn default() -> Self {
        CompactOptions {
            cache_capacity: 256,
            compress: true,
        }
    }
}

/// One stored object: the object itself, or its packed form in a compact store.
enum Slot<K> {
    Full(Arc<K>),
    Packed(Packed),
}

impl<K> Clone for Slot<K> {
    fn clone(&self) -> Self {
        match self {
            Slot::Full(obj) => Slot::Full(obj.clone()),
            Slot::Packed(p) => Slot::Packed(p.clone()),
        }
    }
}

/// An object's packed form, in one allocation of exactly its size: an 8-byte id, unique within
/// its store, that names it in the cache of decoded objects, then its JSON (LZ4-compressed, with
/// LZ4's 4-byte length prefix, if so configured).
#[derive(Clone)]
struct Packed(Arc<[u8]>);

const ID_LEN: usize = std::mem::size_of::<u64>();

impl Packed {
    fn id(&self) -> u64 {
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&self.0[..ID_LEN]);
        u64::from_le_bytes(id)
    }

    fn payload(&self) -> &[u8] {
        &self.0[ID_LEN..]
    }
}

/// The buffers a compact store encodes and compresses into, reused from object to object so
/// that packing allocates nothing but the packed object itself (temporary buffers freed between
/// long-lived allocations would leave the heap fragmented).
#[derive(Default)]
struct Scratch {
    json: Vec<u8>,
    packed: Vec<u8>,
}

/// Scratch buffers grown beyond this (by an unusually large object) are not kept.
const SCRATCH_KEEP: usize = 1 << 20;

/// The most recently used decoded objects of a compact store, by [`Packed::id`]: a CLOCK
/// (second-chance FIFO) cache, so a hit is a hash look-up and a flag, never a reordering.
struct DecodedCache<K> {
    capacity: usize,
    entries: HashMap<u64, (Arc<K>, bool)>,
    order: VecDeque<u64>,
}

impl<K> DecodedCache<K> {
    fn get(&mut self, id: u64) -> Option<Arc<K>> {
        let (obj, referenced) = self.entries.get_mut(&id)?;
        *referenced = true;
        Some(obj.clone())
    }

    fn peek(&self, id: u64) -> Option<Arc<K>> {
        self.entries.get(&id).map(|(obj, _)| obj.clone())
    }

    fn insert(&mut self, id: u64, obj: Arc<K>) {
        if self.capacity == 0 {
            return;
        }
        if let Some(entry) = self.entries.get_mut(&id) {
            *entry = (obj, true);
            return;
        }
        while self.entries.len() >= self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            match self.entries.get_mut(&oldest) {
                Some((_, referenced)) if *referenced => {
                    *referenced = false;
                    self.order.push_back(oldest);
                }
                Some(_) => {
                    self.entries.remove(&oldest);
                }
                None => {}
            }
        }
        self.entries.insert(id, (obj, false));
        self.order.push_back(id);
    }

    fn forget(&mut self, id: u64) -> Option<Arc<K>> {
        let (obj, _) = self.entries.remove(&id)?;
        // Forgotten ids stay in `order` until eviction passes them; keep it bounded.
        if self.order.len() > 2 * self.capacity.max(16) {
            let entries = &self.entries;
            self.order.retain(|id| entries.contains_key(id));
        }
        Some(obj)
    }
}

/// How a compact store turns objects into bytes and back, and what it decoded recently.
struct Codec<K> {
    encode: fn(&K, &mut Vec<u8>) -> Result<(), serde_json::Error>,
    decode: fn(&[u8]) -> Result<K, serde_json::Error>,
    compress: bool,
    next_id: AtomicU64,
    cache: Mutex<DecodedCache<K>>,
    decode_failures: AtomicU64,
    scratch: Mutex<Scratch>,
}

fn encode_json<K: Serialize>(obj: &K, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    serde_json::to_writer(out, obj)
}

fn decode_json<K: DeserializeOwned>(bytes: &[u8]) -> Result<K, serde_json::Error> {
    serde_json::from_slice(bytes)
}

impl<K: Serialize + DeserializeOwned> Codec<K> {
    fn new(options: &CompactOptions) -> Self {
        Codec {
            encode: encode_json::<K>,
            decode: decode_json::<K>,
            compress: options.compress,
            next_id: AtomicU64::new(0),
            cache: Mutex::new(DecodedCache {
                capacity: options.cache_capacity,
                entries: HashMap::new(),
                order: VecDeque::new(),
            }),
            decode_failures: AtomicU64::new(0),
            scratch: Mutex::new(Scratch::default()),
        }
    }
}

impl<K> Codec<K> {
    /// Packs `obj` and caches it as the decoded form of the new packed bytes.
    fn pack(&self, key: &ObjectKey, obj: &Arc<K>) -> Result<Packed, StoreError> {
        let encode_error = |reason: String| StoreError::Encode {
            key: key.clone(),
            reason,
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut scratch = self.scratch.lock();
        let Scratch { json, packed } = &mut *scratch;
        json.clear();
        packed.clear();
        packed.extend_from_slice(&id.to_le_bytes());
        if self.compress {
            (self.encode)(obj, json).map_err(|e| encode_error(e.to_string()))?;
            let len = u32::try_from(json.len())
                .map_err(|_| encode_error(format!("{} bytes of JSON is too large", json.len())))?;
            packed.extend_from_slice(&len.to_le_bytes());
            let start = packed.len();
            packed.resize(
                start + lz4_flex::block::get_maximum_output_size(json.len()),
                0,
            );
            let written = lz4_flex::block::compress_into(json, &mut packed[start..])
                .map_err(|e| encode_error(e.to_string()))?;
            packed.truncate(start + written);
        } else {
            (self.encode)(obj, packed).map_err(|e| encode_error(e.to_string()))?;
        }
        let out = Packed(Arc::from(&packed[..]));
        if json.capacity() > SCRATCH_KEEP || packed.capacity() > SCRATCH_KEEP {
            *scratch = Scratch::default();
        }
        drop(scratch);
        self.cache.lock().insert(id, obj.clone());
        Ok(out)
    }

    /// The decoded object of `packed`: from the cache, or decoded (and cached if `remember`).
    /// A decode failure (a type whose `Serialize` and `Deserialize` do not round-trip) is
    /// logged and counted, and the object reads as absent.
    fn unpack(&self, packed: &Packed, remember: bool) -> Option<Arc<K>> {
        {
            let mut cache = self.cache.lock();
            let hit = if remember {
                cache.get(packed.id())
            } else {
                cache.peek(packed.id())
            };
            if hit.is_some() {
                return hit;
            }
        }
        let decoded = if self.compress {
            lz4_flex::decompress_size_prepended(packed.payload())
                .map_err(|e| e.to_string())
                .and_then(|json| (self.decode)(&json).map_err(|e| e.to_string()))
        } else {
            (self.decode)(packed.payload()).map_err(|e| e.to_string())
        };
        match decoded {
            Ok(obj) => {
                let obj = Arc::new(obj);
                if remember {
                    self.cache.lock().insert(packed.id(), obj.clone());
                }
                Some(obj)
            }
            Err(error) => {
                self.decode_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(id = packed.id(), bytes = packed.payload().len(), %error, "compact store cannot decode an object it encoded");
                None
            }
        }
    }

    /// The decoded object of a packed object being replaced or removed, taken out of the cache.
    fn retire(&self, packed: &Packed) -> Option<Arc<K>> {
        let cached = self.cache.lock().forget(packed.id());
        cached.or_else(|| self.unpack(packed, false))
    }
}

/// One consistent, immutable state of an [`Indexer`]: objects, index functions and indexes.
///
/// Taking a snapshot is lock-free and `O(1)`; it stays valid (and unchanged) however the
/// indexer is written afterwards. Use it to answer several questions about the same instant.
pub struct Snapshot<K> {
    items: imbl::HashMap<ObjectKey, Slot<K>>,
    index_funcs: imbl::OrdMap<Arc<str>, IndexFunc<K>>,
    indices: imbl::HashMap<Arc<str>, ValueMap>,
    /// Set in a compact store: how packed objects are decoded.
    codec: Option<Arc<Codec<K>>>,
}

impl<K> Clone for Snapshot<K> {
    fn clone(&self) -> Self {
        Snapshot {
            items: self.items.clone(),
            index_funcs: self.index_funcs.clone(),
            indices: self.indices.clone(),
            codec: self.codec.clone(),
        }
    }
}

impl<K> fmt::Debug for Snapshot<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("items", &self.items.len())
            .field("indices", &self.index_funcs.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<K> Snapshot<K> {
    fn empty(codec: Option<Arc<Codec<K>>>) -> Self {
        Snapshot {
            items: imbl::HashMap::new(),
            index_funcs: imbl::OrdMap::new(),
            indices: imbl::HashMap::new(),
            codec,
        }
    }

    /// The object in `slot`. `remember`: keep a decoded object in the cache (point reads do;
    /// scans over many objects do not, so they cannot flush it).
    fn load(&self, slot: &Slot<K>, remember: bool) -> Option<Arc<K>> {
        match (slot, &self.codec) {
            (Slot::Full(obj), _) => Some(obj.clone()),
            (Slot::Packed(packed), Some(codec)) => codec.unpack(packed, remember),
            (Slot::Packed(_), None) => None,
        }
    }

    /// The object stored under `key`.
    pub fn get_by_key(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.items.get(key).and_then(|slot| self.load(slot, true))
    }

    /// Whether an object is stored under `key`.
    pub fn contains_key(&self, key: &ObjectKey) -> bool {
        self.items.contains_key(key)
    }

    /// Every stored object, in no particular order.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.items
            .values()
            .filter_map(|slot| self.load(slot, false))
            .collect()
    }

    /// Every stored key, in no particular order.
    pub fn list_keys(&self) -> Vec<ObjectKey> {
        self.items.keys().cloned().collect()
    }

    /// Iterates over the stored `(key, object)` pairs (in a compact store, decoding each object
    /// as it is reached).
    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, Arc<K>)> {
        self.items
            .iter()
            .filter_map(|(key, slot)| Some((key, self.load(slot, false)?)))
    }

    /// How many objects are stored.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The registered index names, sorted.
    pub fn index_names(&self) -> Vec<String> {
        self.index_funcs.keys().map(|n| n.to_string()).collect()
    }

    fn values_of(&self, name: &str) -> Result<&ValueMap, StoreError> {
        self.indices
            .get(name)
            .ok_or_else(|| StoreError::UnknownIndex { name: name.into() })
    }

    /// The keys indexed under `value` in index `name`, sorted.
    pub fn index_keys(&self, name: &str, value: &str) -> Result<Vec<ObjectKey>, StoreError> {
        Ok(self
            .values_of(name)?
            .get(value)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default())
    }

    /// The objects indexed under `value` in index `name`, in key order.
    pub fn by_index(&self, name: &str, value: &str) -> Result<Vec<Arc<K>>, StoreError> {
        Ok(self
            .values_of(name)?
            .get(value)
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| self.items.get(k))
                    .filter_map(|slot| self.load(slot, keys.len() == 1))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// How many objects are indexed under `value` in index `name`.
    pub fn index_count(&self, name: &str, value: &str) -> Result<usize, StoreError> {
        Ok(self
            .values_of(name)?
            .get(value)
            .map_or(0, |keys| keys.len()))
    }

    /// Every value of index `name` that at least one object has, sorted.
    pub fn list_index_values(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let mut values: Vec<String> = self.values_of(name)?.keys().cloned().collect();
        values.sort_unstable();
        Ok(values)
    }

    /// The objects that share at least one value of index `name` with `obj` (deduplicated, in
    /// key order). `obj` itself need not be stored.
    pub fn index(&self, name: &str, obj: &K) -> Result<Vec<Arc<K>>, StoreError> {
        let func = self
            .index_funcs
            .get(name)
            .ok_or_else(|| StoreError::UnknownIndex { name: name.into() })?;
        let values = self.values_of(name)?;
        let mut keys = BTreeSet::new();
        for value in func(obj) {
            if let Some(set) = values.get(&value) {
                keys.extend(set.iter().cloned());
            }
        }
        Ok(keys
            .iter()
            .filter_map(|k| self.items.get(k))
            .filter_map(|slot| self.load(slot, false))
            .collect())
    }

    /// Moves `key` from the index values of `old` to those of `new`, for every index.
    fn reindex(&mut self, key: &ObjectKey, old: Option<&K>, new: Option<&K>) {
        for (name, func) in self.index_funcs.iter() {
            let old_values: BTreeSet<String> = old
                .map(|o| func(o))
                .unwrap_or_default()
                .into_iter()
                .collect();
            let new_values: BTreeSet<String> = new
                .map(|n| func(n))
                .unwrap_or_default()
                .into_iter()
                .collect();
            if old_values == new_values {
                continue;
            }
            let values = self.indices.entry(name.clone()).or_default();
            for gone in old_values.difference(&new_values) {
                let now_empty = match values.get_mut(gone) {
                    Some(keys) => {
                        keys.remove(key);
                        keys.is_empty()
                    }
                    None => false,
                };
                if now_empty {
                    values.remove(gone);
                }
            }
            for added in new_values.difference(&old_values) {
                values.entry(added.clone()).or_default().insert(key.clone());
            }
        }
    }

    /// The object a slot held that is being replaced or removed.
    fn retire(&self, slot: Slot<K>) -> Option<Arc<K>> {
        match (slot, &self.codec) {
            (Slot::Full(obj), _) => Some(obj),
            (Slot::Packed(packed), Some(codec)) => codec.retire(&packed),
            (Slot::Packed(_), None) => None,
        }
    }

    /// Stores `slot` (which holds `obj`, or its packed form) under `key`; returns the object
    /// it replaced.
    fn put(&mut self, key: ObjectKey, slot: Slot<K>, obj: &K) -> Option<Arc<K>> {
        let old = self
            .items
            .insert(key.clone(), slot)
            .and_then(|old| self.retire(old));
        self.reindex(&key, old.as_deref(), Some(obj));
        old
    }

    fn take(&mut self, key: &ObjectKey) -> Option<Arc<K>> {
        let slot = self.items.remove(key)?;
        let old = self.retire(slot);
        self.reindex(key, old.as_deref(), None);
        old
    }

    fn build_index(&self, func: &IndexFunc<K>) -> ValueMap {
        build_index(
            func,
            self.items
                .iter()
                .filter_map(|(key, slot)| Some((key, self.load(slot, false)?))),
        )
    }
}

/// The values of index `func` over `objects`.
fn build_index<'a, K: 'a, O: AsRef<K>>(
    func: &IndexFunc<K>,
    objects: impl Iterator<Item = (&'a ObjectKey, O)>,
) -> ValueMap {
    let mut values = ValueMap::new();
    for (key, obj) in objects {
        let own: BTreeSet<String> = func(obj.as_ref()).into_iter().collect();
        for value in own {
            values.entry(value).or_default().insert(key.clone());
        }
    }
    values
}

struct Shared<K> {
    current: ArcSwap<Snapshot<K>>,
    writer: Mutex<()>,
    /// One shared allocation per namespace for the keys this store holds. It only grows, by one
    /// short string per namespace ever stored.
    namespaces: Mutex<HashSet<Arc<str>>>,
    key_fn: KeyFunc<K>,
    codec: Option<Arc<Codec<K>>>,
}

/// A thread-safe, indexed store of `Arc<K>` with lock-free reads. See the [module docs](self).
///
/// Cloning an `Indexer` is cheap and every clone is the same store.
pub struct Indexer<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for Indexer<K> {
    fn clone(&self) -> Self {
        Indexer {
            shared: self.shared.clone(),
        }
    }
}

impl<K> fmt::Debug for Indexer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Indexer")
            .field(&self.shared.current.load())
            .finish()
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
        snapshot.indices.insert(name, ValueMap::new());
        Indexer {
            shared: Arc::new(Shared {
                current: ArcSwap::from_pointee(snapshot),
                writer: Mutex::new(()),
                namespaces: Mutex::new(HashSet::new()),
                key_fn,
                codec,
            }),
        }
    }
}

impl<K> Indexer<K>
where
    K: Send + Sync + 'static,
{
    /// The key this store files `obj` under.
    pub fn key_of(&self, obj: &K) -> Result<ObjectKey, KeyError> {
        (self.shared.key_fn)(obj)
    }

    /// The key `obj` is stored under, its namespace shared with the other keys of the store.
    fn stored_key(&self, obj: &K) -> Result<ObjectKey, KeyError> {
        Ok(self
            .key_of(obj)?
            .share_namespace(&mut self.shared.namespaces.lock()))
    }

    /// The key function, for a DeltaFIFO or anything that must agree with this store on keys.
    pub fn key_func(&self) -> KeyFunc<K> {
        self.shared.key_fn.clone()
    }

    /// The current state, lock-free. It never changes afterwards.
    pub fn snapshot(&self) -> Arc<Snapshot<K>> {
        self.shared.current.load_full()
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

    /// The slot `obj` is stored in: itself, or (in a compact store) its packed form, encoded
    /// before the writer lock is taken.
    fn slot_of(&self, key: &ObjectKey, obj: &Arc<K>) -> Result<Slot<K>, StoreError> {
        match &self.shared.codec {
            None => Ok(Slot::Full(obj.clone())),
            Some(codec) => Ok(Slot::Packed(codec.pack(key, obj)?)),
        }
    }

    /// Applies `change` to a copy of the current state and publishes it, writers serialized.
    fn write<R>(&self, change: impl FnOnce(&mut Snapshot<K>) -> R) -> R {
        let _writer = self.shared.writer.lock();
        let mut next = Snapshot::clone(&self.shared.current.load());
        let out = change(&mut next);
        self.shared.current.store(Arc::new(next));
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
    pub fn add(&self, obj: Arc<K>) -> Result<Option<Arc<K>>, StoreError> {
        let key = self.stored_key(&obj)?;
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
        if !self.shared.current.load().contains_key(key) {
            return None;
        }
        self.write(|s| s.take(key))
    }

    /// Replaces the whole content with `objs` (indexes rebuilt), as one atomic change.
    ///
    /// Nothing is changed if any object cannot be keyed.
    pub fn replace(&self, objs: impl IntoIterator<Item = Arc<K>>) -> Result<(), StoreError> {
        let mut objects = HashMap::new();
        for obj in objs {
            objects.insert(self.stored_key(&obj)?, obj);
        }
        let mut items = imbl::HashMap::new();
        for (key, obj) in &objects {
            items.insert(key.clone(), self.slot_of(key, obj)?);
        }
        self.write(|s| {
            // Indexes are computed from the objects given, never by decoding packed ones.
            let rebuilt: Vec<(Arc<str>, ValueMap)> = s
                .index_funcs
                .iter()
                .map(|(name, func)| (name.clone(), build_index(func, objects.iter())))
                .collect();
            s.indices = rebuilt.into_iter().collect();
            s.items = items;
        });
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(capacity: usize) -> DecodedCache<u32> {
        DecodedCache {
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

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
                cm("huge", 3 * SCRATCH_KEEP),
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
            assert!(scratch.json.capacity() <= SCRATCH_KEEP);
            assert!(scratch.packed.capacity() <= SCRATCH_KEEP);
        }
    }

    #[test]
    fn decoded_cache_gives_a_read_entry_a_second_chance_and_evicts_the_unread() {
        let mut c = cache(2);
        c.insert(1, Arc::new(10));
        c.insert(2, Arc::new(20));
        assert_eq!(c.get(1).as_deref(), Some(&10), "1 is now referenced");
        c.insert(3, Arc::new(30));
        assert!(c.peek(2).is_none(), "2 was never read: evicted first");
        assert_eq!(c.peek(1).as_deref(), Some(&10));
        assert_eq!(c.peek(3).as_deref(), Some(&30));
        c.insert(4, Arc::new(40));
        assert!(c.peek(1).is_none(), "1 used its second chance");
        assert_eq!(c.entries.len(), 2);
    }

    #[test]
    fn decoded_cache_of_capacity_zero_keeps_nothing_and_forget_bounds_the_order() {
        let mut c = cache(0);
        c.insert(1, Arc::new(1));
        assert!(c.peek(1).is_none());
        let mut c = cache(4);
        for id in 0..1000 {
            c.insert(id, Arc::new(id as u32));
            assert_eq!(c.forget(id).as_deref(), Some(&(id as u32)));
        }
        assert!(c.entries.is_empty());
        assert!(
            c.order.len() <= 2 * 16 + 1,
            "order holds {} ids",
            c.order.len()
        );
    }
}
