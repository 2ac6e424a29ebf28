//! The store's persistent map from [`ObjectKey`] to a stored object.
//!
//! # Why not a persistent hash trie
//!
//! The store publishes an immutable snapshot after every write, so its map must be cheap to
//! copy and cheap to change by one key, and its reads are the hot path of every lister. A hash
//! array mapped trie (`imbl::HashMap`, which the store used first) is cheap to change, but a
//! read walks four or five nodes at 100k entries, each one a cache miss. A flat hash table is
//! one probe, but copying it for every write costs the whole table.
//!
//! This map sits between the two: a fixed, shallow radix over the key hash, `2^b` × `2^b`
//! leaves, each leaf a flat `hashbrown` table. A read is two array steps (the small upper
//! levels stay in cache) and one SIMD probe of a leaf, as many cache misses as one flat table.
//! A write copies one root array, one middle array and one leaf (`Arc::make_mut`: nothing is
//! copied twice within one batch of writes), about 64 + 64 + 24 entries at 100k keys. `b`
//! grows (and shrinks) with the number of entries so that a leaf holds 8 to 64 of them on
//! average; a resize rebuilds the map once, which amortizes to a constant per write. (Leaves
//! of up to 128 made single writes 10% dearer and reads no faster: `cargo bench -p
//! reflex-informer --bench store -- --quick store/`.)
//!
//! Key hashes are the keys' own precomputed values ([`ObjectKey::hash_value`]): bits 32 and up
//! choose the path, the leaf table probes with the low bits and tags with the top seven, so
//! the three never share bits while `b` stays below 12.

use std::sync::Arc;

use hashbrown::HashTable;

use crate::key::ObjectKey;

/// Entries a leaf holds on average before the map grows by one level of bits.
const GROW_ABOVE: usize = 64;
/// Entries a leaf holds on average below which the map shrinks by one level of bits.
const SHRINK_BELOW: usize = 8;
/// The largest `b`: 2^24 leaves, enough for billions of entries at 128 a leaf.
const MAX_BITS: u32 = 12;

type Leaf<V> = HashTable<(ObjectKey, V)>;
type Mid<V> = Arc<[Arc<Leaf<V>>]>;

/// A persistent map from [`ObjectKey`] to `V`: `clone` is `O(1)` and shares everything, a write
/// copies only the path it changes. See the [module docs](self).
pub(crate) struct KeyMap<V> {
    root: Arc<[Mid<V>]>,
    bits: u32,
    len: usize,
}

impl<V> Clone for KeyMap<V> {
    fn clone(&self) -> Self {
        KeyMap {
            root: self.root.clone(),
            bits: self.bits,
            len: self.len,
        }
    }
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap::with_bits(0, |_| HashTable::new())
    }
}

/// The bits that suit `len` entries: the smallest `b` whose `4^b` leaves hold at most
/// [`GROW_ABOVE`] entries each.
fn bits_for(len: usize) -> u32 {
    let mut bits = 0;
    while bits < MAX_BITS && len > (GROW_ABOVE << (2 * bits)) {
        bits += 1;
    }
    bits
}

#[inline]
fn path(hash: u64, bits: u32) -> (usize, usize) {
    let mask = (1_u64 << bits) - 1;
    let root = (hash >> 32) & mask;
    let mid = (hash >> (32 + bits)) & mask;
    (root as usize, mid as usize)
}

fn key_hash<V>(entry: &(ObjectKey, V)) -> u64 {
    entry.0.hash_value()
}

impl<V> KeyMap<V> {
    fn with_bits(bits: u32, mut leaf: impl FnMut(usize) -> Leaf<V>) -> Self {
        let width = 1_usize << bits;
        let root: Arc<[Mid<V>]> = (0..width)
            .map(|r| -> Mid<V> { (0..width).map(|m| Arc::new(leaf(r * width + m))).collect() })
            .collect();
        KeyMap { root, bits, len: 0 }
    }

    /// How many entries the map holds.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn leaf(&self, hash: u64) -> &Leaf<V> {
        let (r, m) = path(hash, self.bits);
        &self.root[r][m]
    }

    /// The value stored under `key`.
    #[inline]
    pub(crate) fn get(&self, key: &ObjectKey) -> Option<&V> {
        self.leaf(key.hash_value())
            .find(key.hash_value(), |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Whether `key` is stored.
    pub(crate) fn contains_key(&self, key: &ObjectKey) -> bool {
        self.get(key).is_some()
    }

    /// Every entry, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &V)> {
        self.root
            .iter()
            .flat_map(|mid| mid.iter())
            .flat_map(|leaf| leaf.iter())
            .map(|(k, v)| (k, v))
    }

    /// Every value, in no particular order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

impl<V: Clone> KeyMap<V> {
    /// A map of `entries` built in one pass (a later duplicate key replaces an earlier one).
    pub(crate) fn from_entries(entries: impl IntoIterator<Item = (ObjectKey, V)>) -> Self {
        let entries: Vec<(ObjectKey, V)> = entries.into_iter().collect();
        let bits = bits_for(entries.len());
        let width = 1_usize << bits;
        let mut leaves: Vec<Leaf<V>> = (0..width * width).map(|_| HashTable::new()).collect();
        let mut len = 0;
        for (key, value) in entries {
            let hash = key.hash_value();
            let (r, m) = path(hash, bits);
            let leaf = &mut leaves[r * width + m];
            match leaf.entry(hash, |(k, _)| *k == key, key_hash) {
                hashbrown::hash_table::Entry::Occupied(mut slot) => slot.get_mut().1 = value,
                hashbrown::hash_table::Entry::Vacant(slot) => {
                    slot.insert((key, value));
                    len += 1;
                }
            }
        }
        let mut leaves = leaves.into_iter();
        let mut map = KeyMap::with_bits(bits, |_| leaves.next().unwrap_or_default());
        map.len = len;
        map
    }

    fn leaf_mut(&mut self, hash: u64) -> &mut Leaf<V> {
        let (r, m) = path(hash, self.bits);
        let root = Arc::make_mut(&mut self.root);
        let mid = Arc::make_mut(&mut root[r]);
        Arc::make_mut(&mut mid[m])
    }

    /// Stores `value` under `key`; returns the value it replaced.
    pub(crate) fn insert(&mut self, key: ObjectKey, value: V) -> Option<V> {
        let hash = key.hash_value();
        let leaf = self.leaf_mut(hash);
        match leaf.entry(hash, |(k, _)| *k == key, key_hash) {
            hashbrown::hash_table::Entry::Occupied(mut slot) => {
                Some(std::mem::replace(&mut slot.get_mut().1, value))
            }
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert((key, value));
                self.len += 1;
                if self.bits < MAX_BITS && self.len > (GROW_ABOVE << (2 * self.bits)) {
                    self.resize(self.bits + 1);
                }
                None
            }
        }
    }

    /// Removes `key`; returns its value, if it was stored. Nothing is copied when it was not.
    pub(crate) fn remove(&mut self, key: &ObjectKey) -> Option<V> {
        if !self.contains_key(key) {
            return None;
        }
        let hash = key.hash_value();
        let (_, value) = self
            .leaf_mut(hash)
            .find_entry(hash, |(k, _)| k == key)
            .ok()?
            .remove()
            .0;
        self.len -= 1;
        if self.bits > 0 && self.len < (SHRINK_BELOW << (2 * self.bits)) {
            self.resize(self.bits - 1);
        }
        Some(value)
    }

    fn resize(&mut self, bits: u32) {
        let width = 1_usize << bits;
        let per_leaf = self.len / (width * width) + 1;
        let mut leaves: Vec<Leaf<V>> = (0..width * width)
            .map(|_| HashTable::with_capacity(per_leaf + per_leaf / 4))
            .collect();
        for (key, value) in self.iter() {
            let hash = key.hash_value();
            let (r, m) = path(hash, bits);
            leaves[r * width + m].insert_unique(hash, (key.clone(), value.clone()), key_hash);
        }
        let len = self.len;
        let mut leaves = leaves.into_iter();
        *self = KeyMap::with_bits(bits, |_| leaves.next().unwrap_or_default());
        self.len = len;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::{Rng, SeedableRng};

    use super::*;

    fn key(i: u32) -> ObjectKey {
        ObjectKey::new(Some(format!("ns-{}", i % 7)), format!("obj-{i}"))
    }

    fn assert_same(map: &KeyMap<u32>, model: &HashMap<ObjectKey, u32>) {
        assert_eq!(map.len(), model.len());
        assert_eq!(map.iter().count(), model.len());
        for (k, v) in model {
            assert_eq!(map.get(k), Some(v), "{k}");
        }
        for (k, v) in map.iter() {
            assert_eq!(model.get(k), Some(v), "{k}");
        }
    }

    #[test]
    fn random_inserts_and_removes_agree_with_a_hash_map_through_every_resize() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut map = KeyMap::default();
        let mut model = HashMap::new();
        let mut seen_bits = std::collections::BTreeSet::new();
        // Grow well past two resizes, then shrink back to nothing.
        for round in 0..3 {
            let (inserts, universe) = [(40_000, 30_000), (20_000, 30_000), (0, 30_000)][round];
            for _ in 0..inserts {
                let i = rng.random_range(0..universe);
                let v = rng.random::<u32>();
                assert_eq!(map.insert(key(i), v), model.insert(key(i), v));
                seen_bits.insert(map.bits);
            }
            let removes = if round == 2 { 60_000 } else { 8_000 };
            for _ in 0..removes {
                let i = rng.random_range(0..universe);
                assert_eq!(map.remove(&key(i)), model.remove(&key(i)));
                seen_bits.insert(map.bits);
            }
            assert_same(&map, &model);
        }
        for i in 0..30_000 {
            map.remove(&key(i));
            model.remove(&key(i));
        }
        assert_same(&map, &model);
        assert_eq!(map.bits, 0, "an empty map shrinks back to one leaf");
        assert!(seen_bits.len() >= 3, "resized through {seen_bits:?}");
    }

    #[test]
    fn a_clone_is_a_snapshot_that_later_writes_do_not_change() {
        let mut map = KeyMap::from_entries((0..5_000).map(|i| (key(i), i)));
        let before = map.clone();
        for i in 0..5_000 {
            map.insert(key(i), i + 1);
        }
        for i in 5_000..20_000 {
            map.insert(key(i), i);
        }
        map.remove(&key(0));
        assert_eq!(before.len(), 5_000);
        assert!(before.iter().all(|(k, v)| before.get(k) == Some(v)));
        for i in 0..5_000 {
            assert_eq!(before.get(&key(i)), Some(&i));
        }
        assert_eq!(before.get(&key(5_000)), None);
        assert_eq!(map.get(&key(1)), Some(&2));
        assert_eq!(map.get(&key(0)), None);
        assert_eq!(map.len(), 19_999);
    }

    #[test]
    fn from_entries_keeps_the_last_duplicate_and_sizes_its_leaves() {
        let map = KeyMap::from_entries((0..1_000).map(|i| (key(i % 300), i)));
        assert_eq!(map.len(), 300);
        assert_eq!(map.get(&key(0)), Some(&900));
        assert_eq!(map.bits, bits_for(1_000));
        let big = KeyMap::from_entries((0..100_000).map(|i| (key(i), i)));
        assert_eq!(big.bits, 6, "100k entries: 4096 leaves of about 24");
    }

    #[test]
    fn removing_an_absent_key_copies_nothing() {
        let map = KeyMap::from_entries((0..1_000).map(|i| (key(i), i)));
        let mut copy = map.clone();
        assert_eq!(copy.remove(&key(5_000)), None);
        assert!(Arc::ptr_eq(&map.root, &copy.root));
    }
}
