//! The in-order FIFO: every change in the order the server sent it (client-go's `RealFIFO`).
//!
//! # Why
//!
//! The [`DeltaFifo`](crate::delta_fifo::DeltaFifo) keeps one queue entry per key, so changes to
//! different objects reach handlers in the order each key was *first* queued, not in the order
//! they happened, and a relist's deletions come after its replacements. Since client-go 1.33
//! its informers use `RealFIFO` instead (mandatory since 1.36): a plain queue of single deltas.
//! Handlers that correlate objects across keys (an owner and its children, a Service and its
//! EndpointSlices) then see the server's order. Its atomic variant goes further: a relist
//! reaches the store as one change at one resourceVersion before any handler hears of it.
//!
//! # Contract
//!
//! - **Server order.** Every `add`, `update` and `delete` becomes one [`Delta`], popped one at a
//!   time ([`Pop::Key`] with exactly one delta) in arrival order; nothing is coalesced, no key
//!   keeps a place in line. `delete` is queued whether or not the key is known.
//! - **Relist, deletions first** (plain mode). The pages of a relist are held back until
//!   `replace_done`; then the FIFO queues a `Deleted` tombstone
//!   ([`DeletedFinalStateUnknown`]) for every *queued* key the relist no longer lists whose last
//!   queued delta is not already a deletion (carrying that delta's object), then one for every
//!   *known* key the relist no longer lists and nothing queued (carrying the known object), and
//!   *then* a `Replaced` delta per listed object, in list order. A relist never produces `Sync`.
//! - **Atomic relist** (atomic mode). `replace_done` queues one [`Pop::Relist`] with every
//!   listed object; the consumer applies it to its store at once and derives the deletions by
//!   comparing with the store. A resync queues one [`Pop::ResyncAll`].
//! - **Resync** (plain mode): a `Sync` delta (the known object) for every known key with
//!   nothing queued, so a stale object never overtakes a queued change.
//! - **Synced.** [`Fifo::has_synced`] is true once the first relist is complete and every
//!   item it queued has been *processed* (the closure returned), so it never turns true while
//!   the last initial item is still being applied. Watch events before the first relist do not
//!   make it synced (client-go's `RealFIFO` counts any first write as populating; a Reflector
//!   never writes before its first list, and Reflex's two FIFOs agree this way). The
//!   `is_in_initial_list` flag of a pop is `!has_synced()` when the item is taken.
//! - **Requeue.** [`ProcessError::Requeue`] puts a delta back at the front; a relist
//!   ([`Pop::Relist`]) that fails is dropped ([`PopError::RelistFailed`]): the store keeps its
//!   state and the next relist corrects it.
//! - **Backlog.** The backlog a Reflector waits on counts queued items; the pages of a relist
//!   being received are not yet queued, so a list backlog bound does not hold a relist back in
//!   this FIFO (it holds the whole relist until `replace_done`, as client-go's does).
//! - **Close** and **one consumer** as the DeltaFIFO: after [`Fifo::close`] pops return
//!   [`PopError::Closed`] and writes [`FifoError::Closed`]; pops are serialized, and while the
//!   closure runs, writes that consult the known objects (`replace_done`, `resync`) wait.
//!
//! ```
//! use std::sync::Arc;
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::ObjectMeta;
//! use reflex_informer::fifo::{DeltaType, Fifo, Pop, ReflectorSink};
//! use reflex_informer::in_order_fifo::InOrderFifo;
//! use reflex_informer::store::Indexer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let cm = |name: &str| Arc::new(ConfigMap {
//!     metadata: ObjectMeta { namespace: Some("ns".into()), name: Some(name.into()), ..Default::default() },
//!     ..Default::default()
//! });
//! let fifo = InOrderFifo::new(Some(Arc::new(Indexer::<ConfigMap>::new())), false);
//! fifo.add(cm("a")).unwrap();
//! fifo.add(cm("b")).unwrap();
//! fifo.update(cm("a")).unwrap();
//! let mut order = Vec::new();
//! for _ in 0..3 {
//!     fifo.pop(&mut |pop| {
//!         if let Pop::Key(popped) = pop {
//!             order.push((popped.key.to_string(), popped.deltas[0].kind));
//!         }
//!         Ok(())
//!     })
//!     .await
//!     .unwrap();
//! }
//! assert_eq!(order, [
//!     ("ns/a".to_string(), DeltaType::Added),
//!     ("ns/b".to_string(), DeltaType::Added),
//!     ("ns/a".to_string(), DeltaType::Updated),
//! ]);
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::fifo::{
    Delta, DeltaType, Fifo, FifoError, KnownObjects, Pop, PopError, Popped, ProcessError,
    ProcessFn, ReflectorSink,
};
use crate::handler::{DeletedFinalStateUnknown, DeltaObject};
use crate::hash::{FastHashMap, FastHashSet};
use crate::key::ObjectKey;
use crate::store::{KeyFunc, meta_key_func};

enum Item<K> {
    One {
        key: ObjectKey,
        delta: Delta<K>,
    },
    Relist {
        resource_version: String,
        objects: Vec<Arc<K>>,
    },
    ResyncAll,
}

struct Queued<K> {
    item: Item<K>,
    /// Queued by the first relist: processing it counts towards `has_synced`.
    initial: bool,
}

struct State<K> {
    queue: VecDeque<Queued<K>>,
    /// The pages of the relist being received, held back until `replace_done`.
    relist: Option<Vec<(ObjectKey, Arc<K>)>>,
    initial_relist_done: bool,
    /// Items of the first relist not yet processed.
    initial_remaining: usize,
    closed: bool,
}

impl<K> State<K> {
    fn has_synced(&self) -> bool {
        self.initial_relist_done && self.initial_remaining == 0
    }

    fn push(&mut self, item: Item<K>, initial: bool) {
        if initial {
            self.initial_remaining += 1;
        }
        self.queue.push_back(Queued { item, initial });
    }

    /// The last queued delta's object of every queued key, in the order keys first appear.
    fn last_queued(&self) -> (Vec<ObjectKey>, FastHashMap<ObjectKey, &Delta<K>>) {
        let mut order = Vec::new();
        let mut last: FastHashMap<ObjectKey, &Delta<K>> = FastHashMap::default();
        for queued in &self.queue {
            if let Item::One { key, delta } = &queued.item
                && last.insert(key.clone(), delta).is_none()
            {
                order.push(key.clone());
            }
        }
        (order, last)
    }
}

/// The in-order FIFO; see the [module docs](self).
pub struct InOrderFifo<K> {
    state: Mutex<State<K>>,
    processing: Mutex<()>,
    notify: Notify,
    drained: Notify,
    known: Option<Arc<dyn KnownObjects<K>>>,
    key_fn: KeyFunc<K>,
    atomic: bool,
}

impl<K> fmt::Debug for InOrderFifo<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("InOrderFifo")
            .field("atomic", &self.atomic)
            .field("queued", &state.queue.len())
            .field("synced", &state.has_synced())
            .field("closed", &state.closed)
            .finish()
    }
}

impl<K> InOrderFifo<K>
where
    K: kube::Resource + Send + Sync + 'static,
{
    /// An in-order FIFO for a typed resource (keys `namespace/name`) over the informer's known
    /// objects; `atomic` chooses atomic relists and resyncs.
    pub fn new(known: Option<Arc<dyn KnownObjects<K>>>, atomic: bool) -> Self
    where
        K::DynamicType: Default + Send + Sync + 'static,
    {
        Self::with_key_func(meta_key_func::<K>(K::DynamicType::default()), known, atomic)
    }
}

impl<K> InOrderFifo<K>
where
    K: Send + Sync + 'static,
{
    /// An in-order FIFO keying objects with `key_fn` (it must agree with the store's).
    pub fn with_key_func(
        key_fn: KeyFunc<K>,
        known: Option<Arc<dyn KnownObjects<K>>>,
        atomic: bool,
    ) -> Self {
        InOrderFifo {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                relist: None,
                initial_relist_done: false,
                initial_remaining: 0,
                closed: false,
            }),
            processing: Mutex::new(()),
            notify: Notify::new(),
            drained: Notify::new(),
            known,
            key_fn,
            atomic,
        }
    }

    /// Whether relists and resyncs are atomic.
    pub fn is_atomic(&self) -> bool {
        self.atomic
    }

    fn open_state(&self) -> Result<parking_lot::MutexGuard<'_, State<K>>, FifoError> {
        let state = self.state.lock();
        if state.closed {
            Err(FifoError::Closed)
        } else {
            Ok(state)
        }
    }

    fn enqueue(&self, kind: DeltaType, obj: Arc<K>) -> Result<(), FifoError> {
        let key = (self.key_fn)(&obj)?;
        let delta = Delta {
            kind,
            object: DeltaObject::Object(obj),
        };
        self.open_state()?.push(Item::One { key, delta }, false);
        self.notify.notify_one();
        Ok(())
    }

    /// Resolves once fewer than `backlog` items are queued (or the FIFO is closed).
    async fn wait_for_room_async(&self, backlog: usize) {
        let backlog = backlog.max(1);
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let state = self.state.lock();
                if state.closed || state.queue.len() < backlog {
                    return;
                }
            }
            drained.await;
        }
    }

    /// Waits for the next item and hands it to `process`; see [`Fifo::pop`] and the
    /// [module docs](self) for requeues and synced accounting.
    async fn pop_one(&self, process: &mut ProcessFn<'_, K>) -> Result<(), PopError> {
        loop {
            let notified = self.notify.notified();
            {
                let _processing = self.processing.lock();
                let mut state = self.state.lock();
                if state.closed {
                    return Err(PopError::Closed);
                }
                if let Some(Queued { item, initial }) = state.queue.pop_front() {
                    let is_in_initial_list = !state.has_synced();
                    drop(state);
                    self.drained.notify_waiters();
                    let outcome = match item {
                        Item::One { key, delta } => {
                            tracing::trace!(key = %key, kind = ?delta.kind, is_in_initial_list, "popped");
                            let copy = delta.clone();
                            let popped = Popped {
                                key: key.clone(),
                                deltas: vec![delta],
                                is_in_initial_list,
                            };
                            match process(Pop::Key(popped)) {
                                Ok(()) => Ok(()),
                                Err(ProcessError::Requeue(source)) => {
                                    let mut state = self.state.lock();
                                    state.queue.push_front(Queued {
                                        item: Item::One {
                                            key: key.clone(),
                                            delta: copy,
                                        },
                                        initial,
                                    });
                                    drop(state);
                                    self.notify.notify_one();
                                    // Still queued: it counts again when it is processed.
                                    return Err(PopError::Requeued { key, source });
                                }
                                Err(ProcessError::Failed(source)) => {
                                    Err(PopError::Failed { key, source })
                                }
                            }
                        }
                        Item::Relist {
                            resource_version,
                            objects,
                        } => {
                            tracing::debug!(
                                resource_version,
                                objects = objects.len(),
                                is_in_initial_list,
                                "popped an atomic relist"
                            );
                            let pop = Pop::Relist {
                                resource_version: resource_version.clone(),
                                objects,
                                is_in_initial_list,
                            };
                            process(pop).map_err(|e| {
                                let (ProcessError::Requeue(source) | ProcessError::Failed(source)) =
                                    e;
                                PopError::RelistFailed {
                                    resource_version,
                                    source,
                                }
                            })
                        }
                        Item::ResyncAll => process(Pop::ResyncAll).map_err(|e| {
                            let (ProcessError::Requeue(source) | ProcessError::Failed(source)) = e;
                            PopError::ResyncFailed { source }
                        }),
                    };
                    if initial {
                        let mut state = self.state.lock();
                        state.initial_remaining = state.initial_remaining.saturating_sub(1);
                    }
                    return outcome;
                }
            }
            notified.await;
        }
    }

    /// The tombstones a plain relist of `seen` keys queues, deletions of queued keys first.
    fn relist_deletions(
        &self,
        state: &State<K>,
        seen: &FastHashSet<ObjectKey>,
    ) -> Vec<(ObjectKey, Option<Arc<K>>)> {
        let (order, last) = state.last_queued();
        let mut out = Vec::new();
        for key in order {
            let Some(delta) = last.get(&key) else {
                continue;
            };
            if seen.contains(&key) || delta.kind == DeltaType::Deleted {
                continue;
            }
            out.push((key, delta.object.object().cloned()));
        }
        if let Some(known) = &self.known {
            let mut gone: Vec<ObjectKey> = known
                .list_keys()
                .into_iter()
                .filter(|key| !seen.contains(key) && !last.contains_key(key))
                .collect();
            gone.sort_unstable();
            for key in gone {
                let obj = known.get_by_key(&key);
                out.push((key, obj));
            }
        }
        out
    }
}

impl<K> ReflectorSink<K> for InOrderFifo<K>
where
    K: Send + Sync + 'static,
{
    fn add(&self, obj: Arc<K>) -> Result<(), FifoError> {
        self.enqueue(DeltaType::Added, obj)
    }

    fn update(&self, obj: Arc<K>) -> Result<(), FifoError> {
        self.enqueue(DeltaType::Updated, obj)
    }

    fn delete(&self, obj: Arc<K>) -> Result<(), FifoError> {
        self.enqueue(DeltaType::Deleted, obj)
    }

    fn replace_begin(&self) {
        self.state.lock().relist = Some(Vec::new());
    }

    fn replace_page(&self, items: Vec<Arc<K>>) -> Result<(), FifoError> {
        // Key everything first, so a page is taken entirely or not at all.
        let keyed = items
            .into_iter()
            .map(|obj| Ok(((self.key_fn)(&obj)?, obj)))
            .collect::<Result<Vec<_>, FifoError>>()?;
        let mut state = self.open_state()?;
        state.relist.get_or_insert_with(Vec::new).extend(keyed);
        Ok(())
    }

    fn replace_done(&self, resource_version: &str) -> Result<(), FifoError> {
        let _processing = self.processing.lock();
        let mut state = self.open_state()?;
        let listed = state.relist.take().unwrap_or_default();
        let initial = !state.initial_relist_done;
        let count = listed.len();
        let mut deleted = 0;
        if self.atomic {
            let objects = listed.into_iter().map(|(_, obj)| obj).collect();
            let item = Item::Relist {
                resource_version: resource_version.to_owned(),
                objects,
            };
            state.push(item, initial);
        } else {
            let seen: FastHashSet<ObjectKey> = listed.iter().map(|(k, _)| k.clone()).collect();
            let deletions = self.relist_deletions(&state, &seen);
            deleted = deletions.len();
            for (key, obj) in deletions {
                let tombstone = DeletedFinalStateUnknown {
                    key: key.clone(),
                    obj,
                };
                let delta = Delta {
                    kind: DeltaType::Deleted,
                    object: DeltaObject::Tombstone(tombstone),
                };
                state.push(Item::One { key, delta }, initial);
            }
            for (key, obj) in listed {
                let delta = Delta {
                    kind: DeltaType::Replaced,
                    object: DeltaObject::Object(obj),
                };
                state.push(Item::One { key, delta }, initial);
            }
        }
        state.initial_relist_done = true;
        drop(state);
        tracing::debug!(
            resource_version,
            listed = count,
            deleted,
            initial,
            atomic = self.atomic,
            "relist complete"
        );
        self.notify.notify_one();
        Ok(())
    }

    fn wait_for_room(&self, backlog: usize) -> BoxFuture<'_, ()> {
        Box::pin(self.wait_for_room_async(backlog))
    }
}

impl<K> Fifo<K> for InOrderFifo<K>
where
    K: Send + Sync + 'static,
{
    fn pop<'a>(&'a self, process: &'a mut ProcessFn<'a, K>) -> BoxFuture<'a, Result<(), PopError>> {
        Box::pin(self.pop_one(process))
    }

    fn has_synced(&self) -> bool {
        self.state.lock().has_synced()
    }

    fn resync(&self) -> Result<(), FifoError> {
        if self.atomic {
            self.open_state()?.push(Item::ResyncAll, false);
            self.notify.notify_one();
            return Ok(());
        }
        let Some(known) = &self.known else {
            return Ok(());
        };
        let _processing = self.processing.lock();
        let mut state = self.open_state()?;
        let queued: FastHashSet<ObjectKey> = state
            .queue
            .iter()
            .filter_map(|q| match &q.item {
                Item::One { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect();
        let mut count = 0usize;
        for key in known.list_keys() {
            if queued.contains(&key) {
                continue;
            }
            if let Some(obj) = known.get_by_key(&key) {
                let delta = Delta {
                    kind: DeltaType::Sync,
                    object: DeltaObject::Object(obj),
                };
                state.push(Item::One { key, delta }, false);
                count += 1;
            }
        }
        drop(state);
        tracing::debug!(queued = count, "resync queued Sync deltas");
        if count > 0 {
            self.notify.notify_one();
        }
        Ok(())
    }

    fn close(&self) {
        self.state.lock().closed = true;
        self.notify.notify_waiters();
        self.notify.notify_one();
        self.drained.notify_waiters();
    }

    fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    fn run_if_drained(&self, f: &mut dyn FnMut()) -> bool {
        let _processing = self.processing.lock();
        let drained = self.state.lock().queue.is_empty();
        if drained {
            f();
        }
        drained
    }
}
