//! One immutable version of the store: objects by key, indexes with their lazily built
//! object lists, and the reads on it. Writers build the next version beside it; readers of
//! this one never wait.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use crate::hash::{FastHashMap, FastState};
use crate::key::ObjectKey;

use super::compact::{Codec, Packed};
use super::map::KeyMap;
use super::*;

/// The keys under one index value, and their objects in key order once someone asked for them.
///
/// The object list is built by the first read after a write touched this value (a write
/// replaces it with an empty one) and then shared by every later read and every later
/// snapshot until the next such write: a list by index under a steady trickle of writes is a
/// walk over one array, not a look-up per key. Readers never wait for each other to build it:
/// a reader that finds it empty builds its own and offers it.
pub(super) struct ValueEntry<K> {
    pub(super) keys: imbl::OrdSet<ObjectKey>,
    pub(super) objects: Arc<OnceLock<Arc<[Slot<K>]>>>,
}

impl<K> Clone for ValueEntry<K> {
    fn clone(&self) -> Self {
        ValueEntry {
            keys: self.keys.clone(),
            objects: self.objects.clone(),
        }
    }
}

impl<K> Default for ValueEntry<K> {
    fn default() -> Self {
        ValueEntry {
            keys: imbl::OrdSet::new(),
            objects: Arc::default(),
        }
    }
}

pub(super) type ValueMap<K> =
    imbl::GenericHashMap<Arc<str>, ValueEntry<K>, FastState, imbl::shared_ptr::DefaultSharedPtr>;

/// One stored object: the object itself, or its packed form in a compact store.
pub(super) enum Slot<K> {
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

/// An object read from the store without taking a reference: borrowed from a snapshot (a
/// normal store), or decoded for this read (a compact store). It dereferences to the object.
///
/// ```
/// use std::sync::Arc;
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use reflex_informer::key::ObjectKey;
/// use reflex_informer::store::Indexer;
///
/// let store = Indexer::<ConfigMap>::new();
/// let mut cm = ConfigMap::default();
/// cm.metadata.name = Some("settings".into());
/// store.add(Arc::new(cm)).unwrap();
/// let mut reader = store.reader();
/// let cm = reader.get(&ObjectKey::new(None::<&str>, "settings")).unwrap();
/// assert_eq!(cm.metadata.name.as_deref(), Some("settings"));
/// let owned: Arc<ConfigMap> = cm.to_arc();
/// # drop(owned);
/// ```
pub enum StoreRef<'a, K> {
    /// The stored `Arc`, lent.
    Borrowed(&'a Arc<K>),
    /// A compact store's object, decoded (or taken from its cache) for this read.
    Decoded(Arc<K>),
}

impl<K> StoreRef<'_, K> {
    /// The object as an `Arc` of the caller's own (for a normal store, a clone of the stored
    /// `Arc`: no deep copy).
    pub fn to_arc(&self) -> Arc<K> {
        match self {
            StoreRef::Borrowed(obj) => Arc::clone(obj),
            StoreRef::Decoded(obj) => Arc::clone(obj),
        }
    }

    /// Turns the read into an `Arc` of the caller's own.
    pub fn into_arc(self) -> Arc<K> {
        match self {
            StoreRef::Borrowed(obj) => Arc::clone(obj),
            StoreRef::Decoded(obj) => obj,
        }
    }
}

impl<K> Deref for StoreRef<'_, K> {
    type Target = K;

    fn deref(&self) -> &K {
        match self {
            StoreRef::Borrowed(obj) => obj,
            StoreRef::Decoded(obj) => obj,
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for StoreRef<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// One consistent, immutable state of an [`Indexer`]: objects, index functions and indexes.
///
/// Taking a snapshot is lock-free and `O(1)`; it stays valid (and unchanged) however the
/// indexer is written afterwards. Use it to answer several questions about the same instant.
pub struct Snapshot<K> {
    pub(super) items: KeyMap<Slot<K>>,
    pub(super) index_funcs: imbl::OrdMap<Arc<str>, IndexFunc<K>>,
    pub(super) indices: imbl::OrdMap<Arc<str>, ValueMap<K>>,
    /// Set in a compact store: how packed objects are decoded.
    pub(super) codec: Option<Arc<Codec<K>>>,
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
    pub(super) fn empty(codec: Option<Arc<Codec<K>>>) -> Self {
        Snapshot {
            items: KeyMap::default(),
            index_funcs: imbl::OrdMap::new(),
            indices: imbl::OrdMap::new(),
            codec,
        }
    }

    /// The object in `slot`. `remember`: keep a decoded object in the cache (point reads do;
    /// scans over many objects do not, so they cannot flush it).
    pub(super) fn load(&self, slot: &Slot<K>, remember: bool) -> Option<Arc<K>> {
        match (slot, &self.codec) {
            (Slot::Full(obj), _) => Some(obj.clone()),
            (Slot::Packed(packed), Some(codec)) => codec.unpack(packed, remember),
            (Slot::Packed(_), None) => None,
        }
    }

    /// In a compact store, the packed form under `key` when it is `obj`'s version (same
    /// non-empty resourceVersion): a write of `obj` can keep it. Never in a normal store, whose
    /// writes cost no encoding.
    pub(super) fn packed_in_version(&self, key: &ObjectKey, obj: &K) -> Option<&Packed> {
        match (self.items.get(key), &self.codec) {
            (Some(Slot::Packed(packed)), Some(codec)) if codec.same_version(packed, obj) => {
                Some(packed)
            }
            _ => None,
        }
    }

    /// The object in `slot`, lent when it is stored as itself.
    pub(super) fn lend<'a>(&'a self, slot: &'a Slot<K>) -> Option<StoreRef<'a, K>> {
        match (slot, &self.codec) {
            (Slot::Full(obj), _) => Some(StoreRef::Borrowed(obj)),
            (Slot::Packed(packed), Some(codec)) => {
                codec.unpack(packed, true).map(StoreRef::Decoded)
            }
            (Slot::Packed(_), None) => None,
        }
    }

    /// The object stored under `key`.
    pub fn get_by_key(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.items.get(key).and_then(|slot| self.load(slot, true))
    }

    /// The object stored under `key`, lent rather than cloned (see [`StoreRef`]).
    pub fn get(&self, key: &ObjectKey) -> Option<StoreRef<'_, K>> {
        self.items.get(key).and_then(|slot| self.lend(slot))
    }

    /// Whether an object is stored under `key`.
    pub fn contains_key(&self, key: &ObjectKey) -> bool {
        self.items.contains_key(key)
    }

    /// Every stored object, in no particular order.
    pub fn list(&self) -> Vec<Arc<K>> {
        let mut out = Vec::with_capacity(self.items.len());
        out.extend(
            self.items
                .values()
                .filter_map(|slot| self.load(slot, false)),
        );
        out
    }

    /// Every stored key, in no particular order.
    pub fn list_keys(&self) -> Vec<ObjectKey> {
        let mut out = Vec::with_capacity(self.items.len());
        out.extend(self.items.iter().map(|(key, _)| key.clone()));
        out
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
        self.items.len() == 0
    }

    /// The registered index names, sorted.
    pub fn index_names(&self) -> Vec<String> {
        self.index_funcs.keys().map(|n| n.to_string()).collect()
    }

    pub(super) fn values_of(&self, name: &str) -> Result<&ValueMap<K>, StoreError> {
        self.indices
            .get(name)
            .ok_or_else(|| StoreError::UnknownIndex { name: name.into() })
    }

    /// The keys indexed under `value` in index `name`, sorted.
    pub fn index_keys(&self, name: &str, value: &str) -> Result<Vec<ObjectKey>, StoreError> {
        Ok(self
            .values_of(name)?
            .get(value)
            .map(|entry| entry.keys.iter().cloned().collect())
            .unwrap_or_default())
    }

    /// The objects indexed under `value` in index `name`, in key order.
    pub fn by_index(&self, name: &str, value: &str) -> Result<Vec<Arc<K>>, StoreError> {
        self.by_index_where(name, value, |_| true)
    }

    /// The objects indexed under `value` in index `name` for which `keep` holds, in key order.
    /// Objects that are not kept are never cloned (in a compact store they are still decoded).
    pub(crate) fn by_index_where(
        &self,
        name: &str,
        value: &str,
        keep: impl Fn(&K) -> bool,
    ) -> Result<Vec<Arc<K>>, StoreError> {
        let Some(entry) = self.values_of(name)?.get(value) else {
            return Ok(Vec::new());
        };
        let built;
        let slots: &[Slot<K>] = match entry.objects.get() {
            Some(slots) => slots,
            None => {
                built = self.slots_of(&entry.keys);
                // Whoever offers first wins; the others' lists are just as right.
                let _ = entry.objects.set(built.clone());
                &built
            }
        };
        let remember = slots.len() == 1;
        let mut out = Vec::with_capacity(slots.len());
        for slot in slots {
            match slot {
                Slot::Full(obj) => {
                    if keep(obj) {
                        out.push(obj.clone());
                    }
                }
                Slot::Packed(_) => {
                    if let Some(obj) = self.load(slot, remember).filter(|obj| keep(obj)) {
                        out.push(obj);
                    }
                }
            }
        }
        Ok(out)
    }

    /// How many objects are indexed under `value` in index `name`.
    pub fn index_count(&self, name: &str, value: &str) -> Result<usize, StoreError> {
        Ok(self
            .values_of(name)?
            .get(value)
            .map_or(0, |entry| entry.keys.len()))
    }

    /// Every value of index `name` that at least one object has, sorted.
    pub fn list_index_values(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let mut values: Vec<String> = self
            .values_of(name)?
            .keys()
            .map(|v| v.to_string())
            .collect();
        values.sort_unstable();
        Ok(values)
    }

    /// The slots of `keys`, in their order.
    pub(super) fn slots_of(&self, keys: &imbl::OrdSet<ObjectKey>) -> Arc<[Slot<K>]> {
        keys.iter()
            .filter_map(|k| self.items.get(k).cloned())
            .collect()
    }

    /// The objects that share at least one value of index `name` with `obj` (deduplicated, in
    /// key order). `obj` itself need not be stored.
    pub fn index(&self, name: &str, obj: &K) -> Result<Vec<Arc<K>>, StoreError> {
        let func = self
            .index_funcs
            .get(name)
            .ok_or_else(|| StoreError::UnknownIndex { name: name.into() })?;
        let values = self.values_of(name)?;
        let mut found = std::collections::BTreeSet::new();
        for value in func(obj) {
            if let Some(entry) = values.get(value.as_str()) {
                found.extend(entry.keys.iter());
            }
        }
        Ok(found
            .into_iter()
            .filter_map(|k| self.items.get(k))
            .filter_map(|slot| self.load(slot, false))
            .collect())
    }

    /// Moves `key` from the index values of `old` to those of `new`, for every index, and
    /// drops the object lists of every value either has (the object under `key` changed).
    pub(super) fn reindex(&mut self, key: &ObjectKey, old: Option<&K>, new: Option<&K>) {
        for (name, func) in self.index_funcs.iter() {
            let mut old_values = old.map(|o| func(o)).unwrap_or_default();
            let mut new_values = new.map(|n| func(n)).unwrap_or_default();
            if old_values.len() > 1 || new_values.len() > 1 {
                old_values.sort_unstable();
                old_values.dedup();
                new_values.sort_unstable();
                new_values.dedup();
            }
            let Some(values) = self.indices.get_mut(&**name) else {
                continue;
            };
            for value in &old_values {
                let gone = !new_values.contains(value);
                let now_empty = match values.get_mut(value.as_str()) {
                    Some(entry) => {
                        entry.objects = Arc::default();
                        if gone {
                            entry.keys.remove(key);
                        }
                        entry.keys.is_empty()
                    }
                    None => false,
                };
                if now_empty {
                    values.remove(value.as_str());
                }
            }
            for value in new_values {
                if old_values.contains(&value) {
                    continue;
                }
                let entry = values.entry(Arc::from(value)).or_default();
                entry.objects = Arc::default();
                entry.keys.insert(key.clone());
            }
        }
    }

    /// The object a slot held that is being replaced or removed.
    pub(super) fn retire(&self, slot: Slot<K>) -> Option<Arc<K>> {
        match (slot, &self.codec) {
            (Slot::Full(obj), _) => Some(obj),
            (Slot::Packed(packed), Some(codec)) => codec.retire(&packed),
            (Slot::Packed(_), None) => None,
        }
    }

    /// Stores `slot` (which holds `obj`, or its packed form) under `key`; returns the object
    /// it replaced.
    pub(super) fn put(&mut self, key: ObjectKey, slot: Slot<K>, obj: &K) -> Option<Arc<K>> {
        let old = self
            .items
            .insert(key.clone(), slot)
            .and_then(|old| self.retire(old));
        self.reindex(&key, old.as_deref(), Some(obj));
        old
    }

    pub(super) fn take(&mut self, key: &ObjectKey) -> Option<Arc<K>> {
        let slot = self.items.remove(key)?;
        let old = self.retire(slot);
        self.reindex(key, old.as_deref(), None);
        old
    }

    pub(super) fn build_index(&self, func: &IndexFunc<K>) -> ValueMap<K> {
        build_index(
            func,
            self.items
                .iter()
                .filter_map(|(key, slot)| Some((key, self.load(slot, false)?))),
        )
    }
}

/// The values of index `func` over `objects`.
pub(super) fn build_index<'a, K: 'a, O: AsRef<K>>(
    func: &IndexFunc<K>,
    objects: impl Iterator<Item = (&'a ObjectKey, O)>,
) -> ValueMap<K> {
    let mut values: FastHashMap<String, imbl::OrdSet<ObjectKey>> = FastHashMap::default();
    for (key, obj) in objects {
        let mut own = func(obj.as_ref());
        own.sort_unstable();
        own.dedup();
        for value in own {
            values.entry(value).or_default().insert(key.clone());
        }
    }
    values
        .into_iter()
        .map(|(value, keys)| {
            let entry = ValueEntry {
                keys,
                objects: Arc::default(),
            };
            (Arc::from(value), entry)
        })
        .collect()
}
