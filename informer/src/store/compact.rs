//! The compact store's codec: objects kept as (LZ4-compressed) JSON and decoded on read.
//!
//! See the [store's module docs](super#compact-mode) for when to use it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;
use crate::hash::FastHashMap;
use crate::key::ObjectKey;

/// Options of a compact store ([`Indexer::compact`](super::Indexer::compact)); see the [store docs](super#compact-mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactOptions {
    /// How many decoded objects are kept for reads (recently written or read ones; zero: none).
    /// Each costs a decoded object's memory.
    pub cache_capacity: usize,
    /// Compress each object's JSON with LZ4 (smaller and slower to read; `BENCHMARKS.md` has
    /// the figures). Without it the store keeps plain JSON.
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

/// An object's packed form, in one allocation of exactly its size: an 8-byte id, unique within
/// its store, that names it in the cache of decoded objects; the object's resourceVersion (one
/// length byte, then its bytes; length zero when it has none or it is longer than 255 bytes),
/// so that a write of the same version can keep this form without decoding it; then its JSON
/// (LZ4-compressed, with LZ4's 4-byte length prefix, if so configured).
#[derive(Clone)]
pub(super) struct Packed(Arc<[u8]>);

const ID_LEN: usize = std::mem::size_of::<u64>();

impl Packed {
    pub(super) fn id(&self) -> u64 {
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&self.0[..ID_LEN]);
        u64::from_le_bytes(id)
    }

    /// The resourceVersion of the packed object, if it had one (of at most 255 bytes).
    pub(super) fn version(&self) -> Option<&[u8]> {
        let len = usize::from(self.0[ID_LEN]);
        (len > 0).then(|| &self.0[ID_LEN + 1..ID_LEN + 1 + len])
    }

    pub(super) fn payload(&self) -> &[u8] {
        &self.0[ID_LEN + 1 + usize::from(self.0[ID_LEN])..]
    }
}

/// The buffers a compact store encodes and compresses into, reused from object to object so
/// that packing allocates nothing but the packed object itself (temporary buffers freed between
/// long-lived allocations would leave the heap fragmented).
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) json: Vec<u8>,
    pub(super) packed: Vec<u8>,
}

/// Scratch buffers grown beyond this (by an unusually large object) are not kept.
pub(super) const SCRATCH_KEEP: usize = 1 << 20;

/// The most recently used decoded objects of a compact store, by [`Packed::id`]: a CLOCK
/// (second-chance FIFO) cache, so a hit is a hash look-up and a flag, never a reordering.
pub(super) struct DecodedCache<K> {
    pub(super) capacity: usize,
    pub(super) entries: FastHashMap<u64, (Arc<K>, bool)>,
    pub(super) order: VecDeque<u64>,
}

impl<K> DecodedCache<K> {
    pub(super) fn get(&mut self, id: u64) -> Option<Arc<K>> {
        let (obj, referenced) = self.entries.get_mut(&id)?;
        *referenced = true;
        Some(obj.clone())
    }

    pub(super) fn peek(&self, id: u64) -> Option<Arc<K>> {
        self.entries.get(&id).map(|(obj, _)| obj.clone())
    }

    pub(super) fn insert(&mut self, id: u64, obj: Arc<K>) {
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

    pub(super) fn forget(&mut self, id: u64) -> Option<Arc<K>> {
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
pub(super) struct Codec<K> {
    encode: fn(&K, &mut Vec<u8>) -> Result<(), serde_json::Error>,
    decode: fn(&[u8]) -> Result<K, serde_json::Error>,
    version: fn(&K) -> Option<&str>,
    compress: bool,
    next_id: AtomicU64,
    cache: Mutex<DecodedCache<K>>,
    pub(super) decode_failures: AtomicU64,
    pub(super) scratch: Mutex<Scratch>,
}

fn encode_json<K: Serialize>(obj: &K, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    serde_json::to_writer(out, obj)
}

fn decode_json<K: DeserializeOwned>(bytes: &[u8]) -> Result<K, serde_json::Error> {
    serde_json::from_slice(bytes)
}

fn resource_version<K: kube::Resource>(obj: &K) -> Option<&str> {
    obj.meta().resource_version.as_deref()
}

impl<K: Serialize + DeserializeOwned + kube::Resource> Codec<K> {
    pub(super) fn new(options: &CompactOptions) -> Self {
        Codec {
            encode: encode_json::<K>,
            decode: decode_json::<K>,
            version: resource_version::<K>,
            compress: options.compress,
            next_id: AtomicU64::new(0),
            cache: Mutex::new(DecodedCache {
                capacity: options.cache_capacity,
                entries: FastHashMap::default(),
                order: VecDeque::new(),
            }),
            decode_failures: AtomicU64::new(0),
            scratch: Mutex::new(Scratch::default()),
        }
    }
}

impl<K> Codec<K> {
    /// Whether `packed` is the packed form of `obj`'s version: both have the same non-empty
    /// resourceVersion. The API server gives every change of an object a new resourceVersion,
    /// so such a write (a relist's or a resync's copy of an unchanged object) keeps `packed`
    /// instead of encoding the object again and decoding the old one.
    pub(super) fn same_version(&self, packed: &Packed, obj: &K) -> bool {
        // A packed form records no empty version, so an empty one never matches.
        packed
            .version()
            .is_some_and(|stored| (self.version)(obj).map(str::as_bytes) == Some(stored))
    }

    /// Packs `obj` and caches it as the decoded form of the new packed bytes.
    pub(super) fn pack(&self, key: &ObjectKey, obj: &Arc<K>) -> Result<Packed, StoreError> {
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
        let version =
            (self.version)(obj).and_then(|rv| Some((u8::try_from(rv.len()).ok()?, rv.as_bytes())));
        match version {
            Some((len, rv)) => {
                packed.push(len);
                packed.extend_from_slice(rv);
            }
            None => packed.push(0),
        }
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
    pub(super) fn unpack(&self, packed: &Packed, remember: bool) -> Option<Arc<K>> {
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
    pub(super) fn retire(&self, packed: &Packed) -> Option<Arc<K>> {
        let cached = self.cache.lock().forget(packed.id());
        cached.or_else(|| self.unpack(packed, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(capacity: usize) -> DecodedCache<u32> {
        DecodedCache {
            capacity,
            entries: FastHashMap::default(),
            order: VecDeque::new(),
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
