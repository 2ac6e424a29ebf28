//! The seam between the Reflector and the queue of deltas it feeds.
//!
//! The Reflector knows how to talk to the API server; it does not know how changes are queued
//! for the informer. It writes into a [`ReflectorSink`]: one call per watch event, and a relist
//! as a sequence of pages (`replace_page`) closed by `replace_done`, so that neither the whole
//! list nor a second copy of the cache is ever held in memory next to the store.
//!
//! [`DeltaFifo`](crate::delta_fifo::DeltaFifo) is the classic implementation (one queue entry per
//! key, deltas coalesced under it, as client-go's `DeltaFIFO`). Because the Reflector and the
//! informer only see this trait, an in-order FIFO (client-go 1.36's `RealFIFO`) can be offered as
//! an informer option without touching either of them.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::key::ObjectKey;

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

/// The last known state of an object that was deleted while the watch was not looking.
///
/// A relist that no longer contains a key the cache knows proves the object is gone, but not what
/// it looked like at the end: `obj` is the last state Reflex saw (absent if none was known).
#[derive(Debug)]
pub struct DeletedFinalStateUnknown<K> {
    /// The key of the deleted object.
    pub key: ObjectKey,
    /// The last state of the object the cache knew, if any.
    pub obj: Option<Arc<K>>,
}

impl<K> Clone for DeletedFinalStateUnknown<K> {
    fn clone(&self) -> Self {
        DeletedFinalStateUnknown {
            key: self.key.clone(),
            obj: self.obj.clone(),
        }
    }
}

/// The object carried by a delta: the object itself, or a tombstone for a deletion whose final
/// state is unknown.
#[derive(Debug)]
pub enum DeltaObject<K> {
    /// The object as the server sent it (after the transform, if any).
    Object(Arc<K>),
    /// A deletion observed only through a relist.
    Tombstone(DeletedFinalStateUnknown<K>),
}

impl<K> Clone for DeltaObject<K> {
    fn clone(&self) -> Self {
        match self {
            DeltaObject::Object(o) => DeltaObject::Object(o.clone()),
            DeltaObject::Tombstone(t) => DeltaObject::Tombstone(t.clone()),
        }
    }
}

impl<K> DeltaObject<K> {
    /// The object, or the tombstone's last known object.
    pub fn object(&self) -> Option<&Arc<K>> {
        match self {
            DeltaObject::Object(o) => Some(o),
            DeltaObject::Tombstone(t) => t.obj.as_ref(),
        }
    }

    /// Whether this is a [`DeletedFinalStateUnknown`] tombstone.
    pub fn is_tombstone(&self) -> bool {
        matches!(self, DeltaObject::Tombstone(_))
    }
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

/// What a Reflector writes into. Implemented by [`DeltaFifo`](crate::delta_fifo::DeltaFifo).
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
    /// Resolves once fewer than `backlog` keys wait in the sink (or the sink is closed): the
    /// Reflector awaits it between list pages when [`ReflectorOptions::list_backlog`] is set.
    /// The default resolves at once, for sinks that do not queue.
    ///
    /// [`ReflectorOptions::list_backlog`]: crate::reflector::ReflectorOptions::list_backlog
    fn wait_for_room(&self, _backlog: usize) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}
