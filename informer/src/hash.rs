//! The hasher of the informer's internal maps.
//!
//! The cache's maps are keyed by [`ObjectKey`](crate::key::ObjectKey)s, whose [`Hash`] writes one
//! precomputed, seeded 64-bit value, and by short strings (index values, namespaces) taken from
//! objects the API server sent. Neither needs SipHash's resistance to chosen inputs: the key
//! hash is already seeded at random per process, and every map here gets its own random seed
//! from foldhash as well. foldhash hashes a `u64` in one folded multiply, where SipHash spends
//! tens of nanoseconds; the store and the DeltaFIFO touch such maps on every event.

/// A `HashMap` with foldhash's fast hasher, randomly seeded per map.
pub(crate) type FastHashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A `HashSet` with foldhash's fast hasher, randomly seeded per set.
pub(crate) type FastHashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

/// The `BuildHasher` of [`FastHashMap`] and of the store's persistent maps.
pub(crate) type FastState = foldhash::fast::RandomState;
