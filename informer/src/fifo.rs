//! The seam between the Reflector and the queue of deltas it feeds.
//!
//! The Reflector knows how to talk to the API server; it does not know how changes are queued
//! for the informer. It writes into a [`ReflectorSink`]: one call per watch event, and a relist
//! as a sequence of pages (`replace_page`) closed by `replace_done`, so that neither the whole
//! list nor a second copy of the cache is ever held in memory next to the store.
//!
//! The informer pops what the sink queued through [`Fifo`]. Two implementations, chosen per
//! informer by [`FifoMode`]:
//!
//! - [`DeltaFifo`](crate::delta_fifo::DeltaFifo), client-go's classic `DeltaFIFO`: one queue
//!   entry per key, its deltas coalesced under it;
//! - [`InOrderFifo`](crate::in_order_fifo::InOrderFifo), client-go's `RealFIFO`: every change
//!   in server order, optionally with atomic relists.
//!
//! The Reflector only sees [`ReflectorSink`], the informer only [`Fifo`]: adding a mode touches
//! neither.

use std::error::Error as StdError;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::handler::DeltaObject;
use crate::key::ObjectKey;
use crate::store::{Indexer, Store};

/// What happened to an object, as recorded in the FIFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeltaType {
    /// The object was created (a watch `ADDED` event).
    Added,
    /// The object was changed (a watch `MODIFIED` event).
    Updated,
    /// The object was deleted (a watch `DELETED` event, or missing from a relist).
    Deleted,
    /// The object was part of a (re)list.
    Replaced,
    /// A periodic resync re-delivered the cached object.
    Sync,
}

/// One change to one object.
#[derive(Debug)]
pub struct Delta<K> {
    /// What happened.
    pub kind: DeltaType,
    /// The object it happened to.
    pub object: DeltaObject<K>,
}

impl<K> Clone for Delta<K> {
    fn clone(&self) -> Self {
        Delta {
            kind: self.kind,
            object: self.object.clone(),
        }
    }
}

/// Why a FIFO refused a write.
#[derive(Debug, thiserror::Error)]
pub enum FifoError {
    /// The object could not be keyed (it has no name).
    #[error(transparent)]
    Key(#[from] crate::key::KeyError),
    /// The FIFO was closed; the informer is shutting down.
    #[error("the FIFO is closed")]
    Closed,
}

/// What a Reflector writes into. Implemented by [`DeltaFifo`](crate::delta_fifo::DeltaFifo) and
/// [`InOrderFifo`](crate::in_order_fifo::InOrderFifo).
///
/// Contract:
/// - Calls come from one Reflector task, in the order the server sent the changes.
/// - A relist is `replace_page` zero or more times followed by exactly one `replace_done`; watch
///   events never interleave with an unfinished relist. If a relist is abandoned (the list failed
///   part-way), the Reflector starts a new one with a new first `replace_page`/`replace_done`
///   sequence, and `replace_begin` tells the sink to forget the keys remembered so far.
/// - `replace_done` queues a `Deleted` tombstone for every key the sink knows (queued or in the
///   store) that no page of this relist contained.
pub trait ReflectorSink<K>: Send + Sync {
    /// An `ADDED` watch event.
    fn add(&self, obj: Arc<K>) -> Result<(), FifoError>;
    /// A `MODIFIED` watch event.
    fn update(&self, obj: Arc<K>) -> Result<(), FifoError>;
    /// A `DELETED` watch event carrying the object's last state.
    fn delete(&self, obj: Arc<K>) -> Result<(), FifoError>;
    /// A relist starts: forget keys remembered from an abandoned relist.
    fn replace_begin(&self);
    /// One page of a relist.
    fn replace_page(&self, items: Vec<Arc<K>>) -> Result<(), FifoError>;
    /// The relist is complete at `resource_version`: tombstone every known key not listed.
    fn replace_done(&self, resource_version: &str) -> Result<(), FifoError>;
    /// A bookmark (or any event) advanced the resourceVersion without changing an object.
    fn bookmark(&self, _resource_version: &str) {}
    /// Takes one object of a (re)list as soon as it was decoded, before it waits for the rest
    /// of the list, and returns what [`replace_page`](Self::replace_page) will be given in its
    /// place. The Reflector passes every page item and every initial event of a streaming list
    /// through it. A sink may substitute the copy its store already holds of the same version
    /// of the object (same key, same non-empty resourceVersion; [`Listed::Cached`]), so that a
    /// relist keeps one copy of every unchanged object instead of two until the store takes the
    /// new ones, or prepare the object now (the informer applies its transform here, so the
    /// untransformed copy is dropped at once). The default returns `listed` unchanged.
    fn listed(&self, listed: Arc<K>) -> Listed<K> {
        Listed::Fresh(listed)
    }
    /// Resolves once fewer than `backlog` keys wait in the sink (or the sink is closed): the
    /// Reflector awaits it between list pages when [`ReflectorOptions::list_backlog`] is set.
    /// The default resolves at once, for sinks that do not queue.
    ///
    /// [`ReflectorOptions::list_backlog`]: crate::reflector::ReflectorOptions::list_backlog
    fn wait_for_room(&self, _backlog: usize) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// What [`ReflectorSink::listed`] made of a listed object.
#[derive(Debug)]
pub enum Listed<K> {
    /// The listed object (possibly prepared, e.g. transformed).
    Fresh(Arc<K>),
    /// The sink's cached copy of the same version, which replaces the listed one.
    Cached(Arc<K>),
}

/// A boxed error from a processing closure.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The objects the informer already has, as a FIFO needs to see them: to ignore deletes
/// of unknown keys, to tombstone keys a relist no longer lists, and to resync.
///
/// Implemented by [`Store`] and [`Indexer`].
pub trait KnownObjects<K>: Send + Sync {
    /// Every known key.
    fn list_keys(&self) -> Vec<ObjectKey>;
    /// The known object under `key`.
    fn get_by_key(&self, key: &ObjectKey) -> Option<Arc<K>>;
}

impl<K: Send + Sync + 'static> KnownObjects<K> for Store<K> {
    fn list_keys(&self) -> Vec<ObjectKey> {
        Store::list_keys(self)
    }

    fn get_by_key(&self, key: &ObjectKey) -> Option<Arc<K>> {
        Store::get_by_key(self, key)
    }
}

impl<K: Send + Sync + 'static> KnownObjects<K> for Indexer<K> {
    fn list_keys(&self) -> Vec<ObjectKey> {
        self.store().list_keys()
    }

    fn get_by_key(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.store().get_by_key(key)
    }
}

/// What a pop hands to the processing closure: one key and everything that happened to it.
#[derive(Debug)]
pub struct Popped<K> {
    /// The object's key.
    pub key: ObjectKey,
    /// The key's deltas, oldest first; never empty.
    pub deltas: Vec<Delta<K>>,
    /// Whether the FIFO had not yet synced when this key was taken (the deltas belong to the
    /// initial list, as far as a handler is concerned).
    pub is_in_initial_list: bool,
}

impl<K> Popped<K> {
    /// The newest delta.
    pub fn newest(&self) -> Option<&Delta<K>> {
        self.deltas.last()
    }
}

/// What a processing closure reports when it could not process a key's deltas.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Put the deltas back at the front of the queue and try again later.
    #[error("processing failed, deltas requeued: {0}")]
    Requeue(#[source] BoxError),
    /// Give up on these deltas (they are dropped).
    #[error("processing failed: {0}")]
    Failed(#[source] BoxError),
}

/// Why a pop did not process anything successfully.
#[derive(Debug, thiserror::Error)]
pub enum PopError {
    /// The FIFO is closed.
    #[error("the FIFO is closed")]
    Closed,
    /// The closure asked for a requeue; the deltas of `key` are back at the front.
    #[error("processing {key} failed, deltas requeued")]
    Requeued {
        /// The key whose deltas were requeued.
        key: ObjectKey,
        /// The closure's error.
        #[source]
        source: BoxError,
    },
    /// The closure failed; the deltas of `key` were dropped.
    #[error("processing {key} failed, deltas dropped")]
    Failed {
        /// The key whose deltas were dropped.
        key: ObjectKey,
        /// The closure's error.
        #[source]
        source: BoxError,
    },
    /// The closure failed on a whole relist ([`Pop::Relist`]); it was dropped (the store keeps
    /// its state, the next relist or watch event corrects it).
    #[error("processing the relist at resourceVersion {resource_version} failed, relist dropped")]
    RelistFailed {
        /// The relist's resourceVersion.
        resource_version: String,
        /// The closure's error.
        #[source]
        source: BoxError,
    },
    /// The closure failed on a whole-store resync ([`Pop::ResyncAll`]); it was dropped.
    #[error("processing a resync of the whole store failed")]
    ResyncFailed {
        /// The closure's error.
        #[source]
        source: BoxError,
    },
}

/// What a FIFO hands its consumer on one pop.
#[derive(Debug)]
pub enum Pop<K> {
    /// The deltas of one key: all that accumulated under it ([`DeltaFifo`](crate::delta_fifo::DeltaFifo)), or exactly one
    /// (the in-order FIFOs).
    Key(Popped<K>),
    /// A whole relist at one resourceVersion, to be applied to the store at once before any
    /// handler hears of it (the atomic in-order FIFO). The consumer compares it with the store:
    /// keys it no longer lists are deletions.
    Relist {
        /// The list's resourceVersion.
        resource_version: String,
        /// Every listed object, in list order.
        objects: Vec<Arc<K>>,
        /// Whether this is (part of) the initial list.
        is_in_initial_list: bool,
    },
    /// Re-deliver every stored object as an update to itself (the atomic in-order FIFO's
    /// resync: the consumer reads the objects from the store when it gets here).
    ResyncAll,
}

/// The processing closure of [`Fifo::pop`]: it may run once per pop.
pub type ProcessFn<'a, K> = dyn FnMut(Pop<K>) -> Result<(), ProcessError> + Send + 'a;

/// The queue interface the informer drives: a [`ReflectorSink`] that can be popped.
///
/// The informer holds an `Arc<dyn Fifo<K>>` chosen by [`FifoMode`]: [`DeltaFifo`] (the classic
/// per-key queue) or [`InOrderFifo`] (client-go's `RealFIFO`, plain or atomic).
///
/// [`DeltaFifo`]: crate::delta_fifo::DeltaFifo
/// [`InOrderFifo`]: crate::in_order_fifo::InOrderFifo
pub trait Fifo<K>: ReflectorSink<K> {
    /// Waits for the next item, hands it to `process`, and applies the closure's verdict (see
    /// [`DeltaFifo::pop`](crate::delta_fifo::DeltaFifo::pop)).
    fn pop<'a>(&'a self, process: &'a mut ProcessFn<'a, K>) -> BoxFuture<'a, Result<(), PopError>>;
    /// Whether the first relist completed and every key it queued was popped.
    fn has_synced(&self) -> bool;
    /// Queues a resync: a `Sync` for every known key with nothing queued, or (atomic)
    /// [`Pop::ResyncAll`].
    fn resync(&self) -> Result<(), FifoError>;
    /// Closes the FIFO: pops return [`PopError::Closed`] promptly, writes fail.
    fn close(&self);
    /// Whether [`close`](Fifo::close) was called.
    fn is_closed(&self) -> bool;
    /// How many items are queued (keys for the DeltaFIFO, deltas for the in-order FIFOs).
    fn len(&self) -> usize;
    /// Whether nothing is queued.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Runs `f` if nothing is queued and no pop is being processed (so everything written so
    /// far has been processed), and says whether it ran. Writers are not held off while `f`
    /// runs: keep it short. The informer uses it to move the store's resourceVersion on a
    /// bookmark.
    fn run_if_drained(&self, f: &mut dyn FnMut()) -> bool;
}

/// Which FIFO an informer queues changes in; every mode keeps the informer's contract (the store
/// is updated before handlers hear of a change, late handlers miss nothing), they differ in what
/// a handler may assume about order and coalescing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FifoMode {
    /// client-go's classic `DeltaFIFO` ([`DeltaFifo`](crate::delta_fifo::DeltaFifo)): one queue
    /// entry per key, its deltas popped together. A burst of changes to one object costs one
    /// pop; across keys, changes come in the order each key was *first* queued, and a relist's
    /// replacements come before its deletions. The default.
    #[default]
    DeltaFifo,
    /// client-go's `RealFIFO` (the only informer queue since client-go 1.36): every change in
    /// the order the server sent it, one per pop, nothing coalesced; a relist's deletions come
    /// before its replacements. A handler sees the server's order across keys.
    InOrder,
    /// `RealFIFO` with atomic relists: a relist reaches the store as one change at one
    /// resourceVersion, *then* handlers hear of its deletions, updates and adds (in list
    /// order); a resync re-delivers every stored object. While a relist is applied no handler
    /// sees half of it, and a lister never shows half of it.
    InOrderAtomic,
}
