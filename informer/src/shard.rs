//! Shards of a resource: the hash ranges of KEP-5866's server-side sharded list and watch, and
//! the client-side filter that stands in for the server where it does not shard.
//!
//! # Why this hash
//!
//! Kubernetes 1.36 added `shardSelector` to list and watch requests (alpha gate
//! `ShardedListAndWatch`): `shardRange(object.metadata.uid, '0x…', '0x…')`, joined with `||`,
//! selects the objects whose 64-bit FNV-1a hash of the field lies in `[start, end)`. Every API
//! server computes that hash the same way, and so does [`fnv1a64`] here: a replica that filters
//! on the client keeps exactly the objects a server that shards would have sent it, so the two
//! paths can be mixed (one API server upgraded, another not) without an object falling between
//! replicas or landing in two.
//!
//! # Knowing whether the server filtered
//!
//! A server that applied the selector echoes it in the list's `metadata.shardInfo.selector`; one
//! that does not know the parameter (gate off, older than 1.36) ignores it and answers the whole
//! collection. A streaming list carries no echo. So a sharded Reflector always filters what it
//! receives as well (one hash of a short string per object; nothing to drop when the server
//! sharded), and reports through [`ShardHandle::filtering`] which of the two did the work.
//!
//! ```
//! use reflex_informer::shard::{ShardField, ShardRange, ShardSelector};
//!
//! // The second of four equal shards, by uid.
//! let second = ShardSelector::new(ShardField::Uid, [ShardRange::slot(1, 4).unwrap()]);
//! assert_eq!(
//!     second.query().as_deref(),
//!     Some("shardRange(object.metadata.uid, '0x4000000000000000', '0x8000000000000000')")
//! );
//! assert!(second.matches_hash(0x4000_0000_0000_0000));
//! assert!(!second.matches_hash(0x8000_0000_0000_0000));
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use parking_lot::RwLock;
use tokio::sync::watch;

/// The exclusive end of the hash space: 2^64.
pub const HASH_SPACE_END: u128 = 1 << 64;

/// The 64-bit FNV-1a hash of `bytes`, the hash kube-apiserver shards by.
///
/// ```
/// // The reference values of the FNV specification.
/// assert_eq!(reflex_informer::shard::fnv1a64(b""), 0xcbf29ce484222325);
/// assert_eq!(reflex_informer::shard::fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
/// ```
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// A bad shard range or slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// `start >= end`: the range holds no hash.
    #[error("shard range start {start:#018x} must be less than end {end:#x}")]
    EmptyRange {
        /// The inclusive start.
        start: u64,
        /// The exclusive end.
        end: u128,
    },
    /// `end > 2^64`.
    #[error("shard range end {0:#x} lies beyond the hash space (2^64)")]
    EndBeyondSpace(u128),
    /// A slot index not below the slot count, or a count of zero.
    #[error("slot {index} of {count}: the index must be below a positive count")]
    BadSlot {
        /// The slot asked for.
        index: u32,
        /// The number of slots.
        count: u32,
    },
}

/// The field whose hash places an object in a shard (the two kube-apiserver accepts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ShardField {
    /// `object.metadata.uid`: spreads objects evenly; an object keeps its shard for life.
    #[default]
    Uid,
    /// `object.metadata.namespace`: a namespace's objects share a shard (cluster-scoped objects
    /// all hash the empty namespace).
    Namespace,
    /// The uid of the object's controller (its `ownerReferences` entry with `controller: true`;
    /// empty without one): the children of an object sharded by [`Uid`](Self::Uid) land in their
    /// owner's shard. No API server shards by it, so no `shardSelector` is sent: the client
    /// filters.
    ControllerUid,
}

impl ShardField {
    /// The field path in a shard selector; `None` for a field servers do not shard by
    /// ([`ControllerUid`](Self::ControllerUid)).
    pub fn path(self) -> Option<&'static str> {
        match self {
            ShardField::Uid => Some("object.metadata.uid"),
            ShardField::Namespace => Some("object.metadata.namespace"),
            ShardField::ControllerUid => None,
        }
    }

    /// The value hashed for an object with this metadata (empty when unset, as the server
    /// hashes it).
    pub fn value_of(self, meta: &ObjectMeta) -> &str {
        match self {
            ShardField::Uid => meta.uid.as_deref().unwrap_or(""),
            ShardField::Namespace => meta.namespace.as_deref().unwrap_or(""),
            ShardField::ControllerUid => meta
                .owner_references
                .iter()
                .flatten()
                .find(|r| r.controller == Some(true))
                .map_or("", |r| r.uid.as_str()),
        }
    }

    /// The shard hash of an object with this metadata.
    pub fn hash_of(self, meta: &ObjectMeta) -> u64 {
        fnv1a64(self.value_of(meta).as_bytes())
    }
}

/// A range of the hash space, `[start, end)`, `end` at most 2^64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardRange {
    start: u64,
    end: u128,
}

impl ShardRange {
    /// The whole hash space.
    pub const ALL: ShardRange = ShardRange {
        start: 0,
        end: HASH_SPACE_END,
    };

    /// `[start, end)`; refused when empty or reaching past 2^64.
    pub fn new(start: u64, end: u128) -> Result<Self, ShardError> {
        if end > HASH_SPACE_END {
            return Err(ShardError::EndBeyondSpace(end));
        }
        if u128::from(start) >= end {
            return Err(ShardError::EmptyRange { start, end });
        }
        Ok(ShardRange { start, end })
    }

    /// Slot `index` of `count` equal slots (the last one takes the remainder).
    pub fn slot(index: u32, count: u32) -> Result<Self, ShardError> {
        if count == 0 || index >= count {
            return Err(ShardError::BadSlot { index, count });
        }
        let bound = |i: u32| HASH_SPACE_END * u128::from(i) / u128::from(count);
        Ok(ShardRange {
            start: bound(index) as u64,
            end: bound(index + 1),
        })
    }

    /// The slot of `count` equal slots that holds `hash` (the inverse of [`slot`](Self::slot)).
    pub fn slot_of(hash: u64, count: u32) -> u32 {
        // Slot i starts at floor(2^64 i / n); the last start not above `hash` is the largest i
        // with i < (hash + 1) n / 2^64, that is ceil((hash + 1) n / 2^64) - 1.
        let n = u128::from(count.max(1));
        let above = (u128::from(hash) + 1) * n;
        (above.div_ceil(HASH_SPACE_END) - 1) as u32
    }

    /// The inclusive start.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The exclusive end (2^64 for a range that reaches the top).
    pub fn end(&self) -> u128 {
        self.end
    }

    /// Whether `hash` lies in the range.
    pub fn contains(&self, hash: u64) -> bool {
        self.start <= hash && u128::from(hash) < self.end
    }

    /// How much of the hash space the range covers, from 0 to 1.
    pub fn fraction(&self) -> f64 {
        (self.end - u128::from(self.start)) as f64 / HASH_SPACE_END as f64
    }
}

impl fmt::Display for ShardRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}, {})",
            hex_bound(self.start.into()),
            hex_bound(self.end)
        )
    }
}

/// A bound as kube-apiserver wants it: `0x`, 16 lowercase digits (17 for 2^64).
fn hex_bound(v: u128) -> String {
    format!("0x{v:016x}")
}

/// The objects of some ranges of the hash space of one field: what a shard owns.
///
/// Ranges are kept sorted and merged, so two selectors over the same hashes are equal and print
/// the same query (the echo a server sends back is compared with it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardSelector {
    field: ShardField,
    ranges: Vec<ShardRange>,
}

impl ShardSelector {
    /// The union of `ranges` of `field`'s hash (no ranges: nothing is selected).
    pub fn new(field: ShardField, ranges: impl IntoIterator<Item = ShardRange>) -> Self {
        let mut ranges: Vec<ShardRange> = ranges.into_iter().collect();
        ranges.sort();
        let mut merged: Vec<ShardRange> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if u128::from(r.start) <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        ShardSelector {
            field,
            ranges: merged,
        }
    }

    /// Every object (the whole hash space).
    pub fn everything(field: ShardField) -> Self {
        ShardSelector::new(field, [ShardRange::ALL])
    }

    /// The hashed field.
    pub fn field(&self) -> ShardField {
        self.field
    }

    /// The ranges, sorted and merged.
    pub fn ranges(&self) -> &[ShardRange] {
        &self.ranges
    }

    /// Whether no object is selected.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether every object is selected.
    pub fn is_everything(&self) -> bool {
        self.ranges == [ShardRange::ALL]
    }

    /// How much of the hash space is selected, from 0 to 1.
    pub fn fraction(&self) -> f64 {
        self.ranges.iter().map(ShardRange::fraction).sum()
    }

    /// Whether an object of this hash is selected.
    pub fn matches_hash(&self, hash: u64) -> bool {
        // Few ranges (one per owned slot at most): a scan beats a search.
        self.ranges.iter().any(|r| r.contains(hash))
    }

    /// Whether an object with this metadata is selected.
    pub fn matches(&self, meta: &ObjectMeta) -> bool {
        self.matches_hash(self.field.hash_of(meta))
    }

    /// The `shardSelector` query parameter, in the form kube-apiserver echoes back in
    /// `shardInfo.selector`; `None` for a field servers do not shard by. A selector of no ranges
    /// cannot be said to a server (it refuses an empty one); it asks for the smallest range,
    /// `[0, 1)`, and the client filters the rest.
    pub fn query(&self) -> Option<String> {
        let path = self.field.path()?;
        let smallest = [ShardRange { start: 0, end: 1 }];
        let ranges: &[ShardRange] = if self.ranges.is_empty() {
            &smallest
        } else {
            &self.ranges
        };
        ranges
            .iter()
            .map(|r| {
                format!(
                    "shardRange({path}, '{}', '{}')",
                    hex_bound(r.start.into()),
                    hex_bound(r.end)
                )
            })
            .collect::<Vec<_>>()
            .join(" || ")
            .into()
    }
}

impl fmt::Display for ShardSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = self.field.path().unwrap_or("controller uid (client-side)");
        if self.ranges.is_empty() {
            return write!(f, "{field}: nothing");
        }
        write!(f, "{field}:")?;
        for r in &self.ranges {
            write!(f, " {r}")?;
        }
        Ok(())
    }
}

/// Who filtered the objects of a sharded informer's last list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShardFiltering {
    /// No list has completed with the current selector yet.
    Pending,
    /// The server applied the selector (its list echoed it in `shardInfo`, and no object outside
    /// the shard arrived).
    Server,
    /// The server sent objects outside the shard or did not echo the selector (it does not shard:
    /// gate off, older than 1.36): the client dropped what is not ours.
    Client,
    /// A streaming list, which carries no echo, and no object outside the shard arrived: the
    /// server sharded, or there was nothing outside the shard to send. The client filters all
    /// the same.
    Unconfirmed,
}

impl ShardFiltering {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => ShardFiltering::Server,
            2 => ShardFiltering::Client,
            3 => ShardFiltering::Unconfirmed,
            _ => ShardFiltering::Pending,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            ShardFiltering::Pending => 0,
            ShardFiltering::Server => 1,
            ShardFiltering::Client => 2,
            ShardFiltering::Unconfirmed => 3,
        }
    }

    /// A short name for logs and metrics: `pending`, `server`, `client`, `unconfirmed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ShardFiltering::Pending => "pending",
            ShardFiltering::Server => "server",
            ShardFiltering::Client => "client",
            ShardFiltering::Unconfirmed => "unconfirmed",
        }
    }
}

struct HandleShared {
    id: u64,
    selector: RwLock<Arc<ShardSelector>>,
    changed: watch::Sender<u64>,
    /// The version of the selector of the last completed list.
    listed: watch::Sender<Option<u64>>,
    filtering: AtomicU8,
    dropped: AtomicU64,
}

static NEXT_HANDLE_ID: AtomicU64 = AtomicU64::new(1);

/// The shard an informer holds, changeable while it runs.
///
/// Give a clone to [`ReflectorOptions::shard`](crate::reflector::ReflectorOptions::shard) (an
/// informer's `InformerOptions::reflector`); [`set`](Self::set) a new selector and the
/// Reflector ends its watch and relists with it, keeping the cached copies of the objects it
/// still owns (an unchanged object is not decoded into a second copy) and deleting the others
/// from the store, which handlers see as deletes.
#[derive(Clone)]
pub struct ShardHandle {
    shared: Arc<HandleShared>,
}

impl fmt::Debug for ShardHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardHandle")
            .field("selector", &*self.current())
            .field("filtering", &self.filtering())
            .finish()
    }
}

/// Two handles are equal when they are the same handle (clones of one another).
impl PartialEq for ShardHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl ShardHandle {
    /// A handle holding `selector`.
    pub fn new(selector: ShardSelector) -> Self {
        ShardHandle {
            shared: Arc::new(HandleShared {
                id: NEXT_HANDLE_ID.fetch_add(1, Ordering::Relaxed),
                selector: RwLock::new(Arc::new(selector)),
                changed: watch::Sender::new(0),
                listed: watch::Sender::new(None),
                filtering: AtomicU8::new(0),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// A number that tells this handle (and its clones) from every other of the process.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The selector now.
    pub fn current(&self) -> Arc<ShardSelector> {
        self.shared.selector.read().clone()
    }

    /// How many times the selector changed.
    pub fn version(&self) -> u64 {
        *self.shared.changed.borrow()
    }

    /// Replaces the selector; a running Reflector relists with it. Setting the selector it
    /// already holds changes nothing.
    pub fn set(&self, selector: ShardSelector) {
        {
            let mut current = self.shared.selector.write();
            if **current == selector {
                return;
            }
            *current = Arc::new(selector);
        }
        self.shared
            .filtering
            .store(ShardFiltering::Pending.as_u8(), Ordering::Relaxed);
        self.shared.changed.send_modify(|v| *v += 1);
    }

    /// A receiver that sees every [`set`](Self::set) (its value is the version).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// The version of the selector the last completed list was made with (`None` before the
    /// first).
    pub fn listed_version(&self) -> Option<u64> {
        *self.shared.listed.borrow()
    }

    /// Resolves once a list made with selector version `version` or later has completed (its
    /// objects are on their way into the store: the informer pops them next).
    pub async fn wait_listed(&self, version: u64) {
        let mut rx = self.shared.listed.subscribe();
        // The sender lives in `self`: the channel cannot close while this waits.
        let _ = rx.wait_for(|v| v.is_some_and(|v| v >= version)).await;
    }

    pub(crate) fn set_listed(&self, version: u64) {
        self.shared.listed.send_replace(Some(version));
    }

    /// Who filtered the last list (see [`ShardFiltering`]).
    pub fn filtering(&self) -> ShardFiltering {
        ShardFiltering::from_u8(self.shared.filtering.load(Ordering::Relaxed))
    }

    /// Objects received from the server outside the shard and dropped by the client.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn set_filtering(&self, filtering: ShardFiltering) {
        self.shared
            .filtering
            .store(filtering.as_u8(), Ordering::Relaxed);
    }

    pub(crate) fn count_dropped(&self, n: u64) {
        if n > 0 {
            self.shared.dropped.fetch_add(n, Ordering::Relaxed);
            self.set_filtering(ShardFiltering::Client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_tile_the_hash_space() {
        for count in [1u32, 2, 3, 7, 16, 1000] {
            let mut at: u128 = 0;
            for i in 0..count {
                let r = ShardRange::slot(i, count).unwrap();
                assert_eq!(u128::from(r.start()), at, "slot {i} of {count}");
                at = r.end();
            }
            assert_eq!(at, HASH_SPACE_END);
        }
        assert!(ShardRange::slot(3, 3).is_err());
        assert!(ShardRange::slot(0, 0).is_err());
    }

    #[test]
    fn slot_of_inverts_slot() {
        let hashes = [0u64, 1, u64::MAX, u64::MAX / 3, u64::MAX / 3 + 1, 1 << 63];
        for count in [1u32, 2, 3, 7, 16, 1000] {
            for i in 0..count.min(50) {
                let r = ShardRange::slot(i, count).unwrap();
                assert_eq!(ShardRange::slot_of(r.start(), count), i);
                assert_eq!(ShardRange::slot_of((r.end() - 1) as u64, count), i);
            }
            for h in hashes {
                let slot = ShardRange::slot_of(h, count);
                assert!(ShardRange::slot(slot, count).unwrap().contains(h));
            }
        }
    }

    #[test]
    fn ranges_are_checked() {
        assert_eq!(
            ShardRange::new(5, 5),
            Err(ShardError::EmptyRange { start: 5, end: 5 })
        );
        assert_eq!(
            ShardRange::new(0, HASH_SPACE_END + 1),
            Err(ShardError::EndBeyondSpace(HASH_SPACE_END + 1))
        );
        assert!(ShardRange::new(0, HASH_SPACE_END).is_ok());
    }

    #[test]
    fn selectors_merge_adjacent_and_overlapping_ranges() {
        let s = ShardSelector::new(
            ShardField::Uid,
            [
                ShardRange::slot(2, 4).unwrap(),
                ShardRange::slot(0, 4).unwrap(),
                ShardRange::slot(1, 4).unwrap(),
            ],
        );
        assert_eq!(s.ranges(), &[ShardRange::new(0, 3 << 62).unwrap()]);
        let all = ShardSelector::new(
            ShardField::Uid,
            (0..4).map(|i| ShardRange::slot(i, 4).unwrap()),
        );
        assert!(all.is_everything());
        assert_eq!(
            all.query().as_deref(),
            Some("shardRange(object.metadata.uid, '0x0000000000000000', '0x10000000000000000')")
        );
    }

    #[test]
    fn query_joins_ranges_with_or_and_an_empty_selector_asks_for_the_smallest_range() {
        let s = ShardSelector::new(
            ShardField::Namespace,
            [
                ShardRange::slot(0, 4).unwrap(),
                ShardRange::slot(2, 4).unwrap(),
            ],
        );
        assert_eq!(
            s.query().as_deref(),
            Some(
                "shardRange(object.metadata.namespace, '0x0000000000000000', '0x4000000000000000') || \
                 shardRange(object.metadata.namespace, '0x8000000000000000', '0xc000000000000000')"
            )
        );
        let none = ShardSelector::new(ShardField::Uid, []);
        assert!(none.is_empty());
        assert!(!none.matches_hash(0));
        assert_eq!(
            none.query().as_deref(),
            Some("shardRange(object.metadata.uid, '0x0000000000000000', '0x0000000000000001')")
        );
    }

    #[test]
    fn children_shard_by_their_controllers_uid_on_the_client_only() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let owner = |uid: &str, controller: bool| OwnerReference {
            uid: uid.into(),
            controller: Some(controller),
            ..OwnerReference::default()
        };
        let child = ObjectMeta {
            uid: Some("child".into()),
            owner_references: Some(vec![owner("other", false), owner("parent", true)]),
            ..Default::default()
        };
        assert_eq!(ShardField::ControllerUid.value_of(&child), "parent");
        assert_eq!(
            ShardField::ControllerUid.value_of(&ObjectMeta::default()),
            ""
        );
        let parent = ObjectMeta {
            uid: Some("parent".into()),
            ..Default::default()
        };
        assert_eq!(
            ShardField::ControllerUid.hash_of(&child),
            ShardField::Uid.hash_of(&parent)
        );
        let s = ShardSelector::new(ShardField::ControllerUid, [ShardRange::slot(0, 2).unwrap()]);
        assert_eq!(s.query(), None, "no server shards by it");
    }

    #[test]
    fn matching_hashes_the_field_with_fnv1a() {
        let meta = ObjectMeta {
            uid: Some("0b4f8d4e-1c5a-4d3e-9a57-1f2e3d4c5b6a".into()),
            namespace: Some("team-a".into()),
            ..Default::default()
        };
        let h = fnv1a64(meta.uid.as_deref().unwrap().as_bytes());
        assert_eq!(ShardField::Uid.hash_of(&meta), h);
        let slot = ShardRange::slot_of(h, 8);
        let mine = ShardSelector::new(ShardField::Uid, [ShardRange::slot(slot, 8).unwrap()]);
        let other = ShardSelector::new(
            ShardField::Uid,
            [ShardRange::slot((slot + 1) % 8, 8).unwrap()],
        );
        assert!(mine.matches(&meta));
        assert!(!other.matches(&meta));
        assert_eq!(ShardField::Namespace.hash_of(&meta), fnv1a64(b"team-a"));
    }

    #[test]
    fn a_handle_counts_versions_and_ignores_a_repeated_selector() {
        let h = ShardHandle::new(ShardSelector::everything(ShardField::Uid));
        assert_eq!(h.version(), 0);
        h.set(ShardSelector::everything(ShardField::Uid));
        assert_eq!(h.version(), 0);
        h.set_filtering(ShardFiltering::Server);
        h.set(ShardSelector::new(
            ShardField::Uid,
            [ShardRange::slot(0, 2).unwrap()],
        ));
        assert_eq!(h.version(), 1);
        assert_eq!(h.filtering(), ShardFiltering::Pending);
        h.count_dropped(3);
        assert_eq!((h.dropped(), h.filtering()), (3, ShardFiltering::Client));
    }
}
