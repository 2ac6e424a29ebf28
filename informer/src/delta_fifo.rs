//! The DeltaFIFO: a queue of per-object change lists between the Reflector and the informer.
//!
//! # Why
//!
//! The Reflector produces changes faster than handlers may consume them, and a controller only
//! ever cares about the *latest* state of an object plus what happened to it. The DeltaFIFO
//! (client-go's classic `DeltaFIFO` with `EmitDeltaTypeReplaced`) therefore keeps one queue entry
//! per object key and accumulates that object's [`Delta`]s under it, so a burst of updates to one
//! object costs one pop, yet no change is lost and none is reordered.
//!
//! # Contract
//!
//! - **One entry per key.** A key appears in the queue once however many deltas it has; it keeps
//!   its *first* position until popped (no line jumping). [`DeltaFifo::pop`] hands over the key's
//!   whole delta list, oldest first.
//! - **Deletion dedupe.** When the last two deltas of a key are both `Deleted`, they collapse into
//!   one: the older one is kept (it carries the real object) unless it is a
//!   [`DeletedFinalStateUnknown`] tombstone, then the newer one is kept. No other coalescing
//!   happens (`Added` then `Updated` stays two deltas).
//! - **Ignored deletes.** `delete` of a key that is neither queued nor in the known objects (the
//!   Indexer) is dropped: there is nothing the informer could tell a handler about.
//! - **Relist, page by page.** [`replace_page`](ReflectorSink::replace_page) appends a `Replaced`
//!   delta for every listed object (even after a `Deleted`) and remembers its key;
//!   [`replace_done`](ReflectorSink::replace_done) then appends `Deleted` with a
//!   [`DeletedFinalStateUnknown`] tombstone for every queued key and every known key that no page
//!   listed, carrying the newest queued object (a tombstone's object unwrapped) or the known
//!   object. Tombstones come after the listed objects. [`replace_begin`](ReflectorSink::replace_begin)
//!   forgets the keys of an abandoned relist.
//! - **Requeue.** If the processing closure returns [`ProcessError::Requeue`], the deltas go back
//!   at the *front* of the queue; deltas that arrived for the key meanwhile are kept after them.
//! - **Synced.** [`DeltaFifo::has_synced`] is true once the first relist is complete
//!   (`replace_done` returned) and every key that relist queued has been popped. The *initial
//!   population* is the set of keys queued by any page or by the tombstones of that first relist;
//!   popping a key removes it from the set (a key popped before `replace_done`, between pages,
//!   counts as popped); a requeued key goes back into the set. Watch events before the first relist
//!   do not make the FIFO synced. The `is_in_initial_list` flag of a pop is `!has_synced()` at the
//!   moment the key is taken.
//! - **Resync.** [`DeltaFifo::resync`] appends a `Sync` delta (the cached object) for every known
//!   key with nothing queued, so a stale object never overtakes a queued change.
//! - **Backlog.** [`DeltaFifo::wait_for_room`] resolves once fewer than the given number of keys are
//!   queued (or the FIFO is closed); a Reflector with
//!   [`list_backlog`](crate::reflector::ReflectorOptions::list_backlog) awaits it between list
//!   pages, so a slow consumer holds back the list instead of piling up decoded objects.
//! - **Close.** After [`DeltaFifo::close`], pending and future pops return
//!   [`PopError::Closed`] at once (queued deltas are dropped: the informer is stopping), and
//!   writes return [`FifoError::Closed`].
//! - **One consumer.** Pops are serialized. While the closure runs, writes that consult the known
//!   objects (`delete`, `replace_done`, `resync`) wait, so the store and the queue never disagree
//!   about a key in flight; `add`, `update` and `replace_page` do not wait. The closure must not
//!   call back into the FIFO's `delete`, `replace_done` or `resync`.
//!
//! ```
//! use std::sync::Arc;
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::ObjectMeta;
//! use reflex_informer::delta_fifo::DeltaFifo;
//! use reflex_informer::fifo::{DeltaType, ReflectorSink};
//! use reflex_informer::store::Indexer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let cm = |name: &str| Arc::new(ConfigMap {
//!     metadata: ObjectMeta { namespace: Some("ns".into()), name: Some(name.into()), ..Default::default() },
//!     ..Default::default()
//! });
//! let store = Indexer::<ConfigMap>::new();
//! let fifo = DeltaFifo::new(Some(Arc::new(store.clone())));
//! fifo.replace_page(vec![cm("a")]).unwrap();
//! fifo.replace_done("10").unwrap();
//! fifo.update(cm("a")).unwrap();
//! assert!(!fifo.has_synced());
//! let kinds = fifo
//!     .pop(|popped| {
//!         assert!(popped.is_in_initial_list);
//!         Ok(popped.deltas.iter().map(|d| d.kind).collect::<Vec<_>>())
//!     })
//!     .await
//!     .unwrap();
//! assert_eq!(kinds, [DeltaType::Replaced, DeltaType::Updated]);
//! assert!(fifo.has_synced());
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

/// The relist in progress: keys listed by its pages so far.
#[derive(Default)]
struct Relist {
    seen: FastHashSet<ObjectKey>,
}

struct State<K> {
    items: FastHashMap<ObjectKey, Vec<Delta<K>>>,
    queue: VecDeque<ObjectKey>,
    relist: Option<Relist>,
    /// True once the first relist's `replace_done` ran.
    initial_relist_done: bool,
    /// Keys queued by the first relist and not popped yet.
    initial_pending: FastHashSet<ObjectKey>,
    closed: bool,
}

impl<K> State<K> {
    fn has_synced(&self) -> bool {
        self.initial_relist_done && self.initial_pending.is_empty()
    }

    /// Appends a delta for `key`, queueing the key if new; applies the deletion dedupe.
    fn push(&mut self, key: ObjectKey, delta: Delta<K>) {
        match self.items.get_mut(&key) {
            Some(deltas) => {
                deltas.push(delta);
                dedup_deletions(deltas);
            }
            None => {
                self.queue.push_back(key.clone());
                self.items.insert(key, vec![delta]);
            }
        }
    }

    /// Puts popped deltas back at the front, before any that arrived meanwhile.
    fn requeue(&mut self, key: ObjectKey, mut deltas: Vec<Delta<K>>) {
        if let Some(newer) = self.items.remove(&key) {
            if let Some(pos) = self.queue.iter().position(|k| *k == key) {
                self.queue.remove(pos);
            }
            for delta in newer {
                deltas.push(delta);
                dedup_deletions(&mut deltas);
            }
        }
        self.queue.push_front(key.clone());
        self.items.insert(key, deltas);
    }
}

/// Collapses the last two deltas when both are deletions (see the module contract).
fn dedup_deletions<K>(deltas: &mut Vec<Delta<K>>) {
    let n = deltas.len();
    if n < 2 {
        return;
    }
    let (older, newer) = (&deltas[n - 2], &deltas[n - 1]);
    if older.kind != DeltaType::Deleted || newer.kind != DeltaType::Deleted {
        return;
    }
    if older.object.is_tombstone() {
        deltas.swap_remove(n - 2);
    } else {
        deltas.pop();
    }
}

/// Client-go's classic DeltaFIFO. See the [module docs](self) for the contract.
pub struct DeltaFifo<K> {
    state: Mutex<State<K>>,
    /// Serializes processing with the writes that consult `known`.
    processing: Mutex<()>,
    notify: Notify,
    /// Woken by every pop and by `close`: what [`ReflectorSink::wait_for_room`] waits on.
    drained: Notify,
    known: Option<Arc<dyn KnownObjects<K>>>,
    key_fn: KeyFunc<K>,
}

impl<K> fmt::Debug for DeltaFifo<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("DeltaFifo")
            .field("queued", &state.queue.len())
            .field("synced", &state.has_synced())
            .field("closed", &state.closed)
            .finish()
    }
}

impl<K> DeltaFifo<K>
where
    K: kube::Resource + Send + Sync + 'static,
{
    /// A FIFO for a typed resource. `known` is the informer's store (`None`: deletes of keys not
    /// queued are ignored, relists only tombstone queued keys, resync does nothing).
    pub fn new(known: Option<Arc<dyn KnownObjects<K>>>) -> Self
    where
        K::DynamicType: Default + Send + Sync + 'static,
    {
        Self::with_key_func(meta_key_func::<K>(K::DynamicType::default()), known)
    }
}

impl<K> DeltaFifo<K>
where
    K: Send + Sync + 'static,
{
    /// A FIFO with a custom key function (use the store's, [`Store::key_func`](crate::store::Store::key_func), so both agree).
    pub fn with_key_func(key_fn: KeyFunc<K>, known: Option<Arc<dyn KnownObjects<K>>>) -> Self {
        DeltaFifo {
            state: Mutex::new(State {
                items: FastHashMap::default(),
                queue: VecDeque::new(),
                relist: None,
                initial_relist_done: false,
                initial_pending: FastHashSet::default(),
                closed: false,
            }),
            processing: Mutex::new(()),
            notify: Notify::new(),
            drained: Notify::new(),
            known,
            key_fn,
        }
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
        let mut state = self.open_state()?;
        state.push(
            key,
            Delta {
                kind,
                object: DeltaObject::Object(obj),
            },
        );
        drop(state);
        self.notify.notify_one();
        Ok(())
    }

    /// Waits for a queued key, removes it, and calls `process` with its deltas.
    ///
    /// - `Ok(t)`: the closure's result.
    /// - [`ProcessError::Requeue`]: the deltas go back at the front, merged before newer deltas
    ///   for the key; returns [`PopError::Requeued`].
    /// - [`ProcessError::Failed`]: the deltas are dropped; returns [`PopError::Failed`].
    /// - [`PopError::Closed`] as soon as the FIFO is closed.
    ///
    /// Cancel-safe: dropping the future while it waits loses nothing.
    pub async fn pop<T, F>(&self, process: F) -> Result<T, PopError>
    where
        F: FnOnce(Popped<K>) -> Result<T, ProcessError>,
    {
        loop {
            let notified = self.notify.notified();
            {
                let _processing = self.processing.lock();
                let mut state = self.state.lock();
                if state.closed {
                    return Err(PopError::Closed);
                }
                if let Some(key) = state.queue.pop_front() {
                    let is_in_initial_list = !state.has_synced();
                    // It leaves the initial population once processed (in the store), not when
                    // taken: `has_synced()` must not be true while it is still on its way.
                    let was_initial = state.initial_pending.contains(&key);
                    let deltas = state.items.remove(&key).unwrap_or_default();
                    drop(state);
                    self.drained.notify_waiters();
                    tracing::trace!(key = %key, deltas = deltas.len(), is_in_initial_list, "popped");
                    let popped = Popped {
                        key: key.clone(),
                        deltas,
                        is_in_initial_list,
                    };
                    // A requeue needs the deltas back: keep a cheap copy (Arc clones).
                    let copy = popped.deltas.clone();
                    let processed = process(popped);
                    if was_initial && !matches!(processed, Err(ProcessError::Requeue(_))) {
                        self.state.lock().initial_pending.remove(&key);
                    }
                    return match processed {
                        Ok(t) => Ok(t),
                        Err(ProcessError::Requeue(source)) => {
                            let mut state = self.state.lock();
                            state.requeue(key.clone(), copy);
                            drop(state);
                            self.notify.notify_one();
                            Err(PopError::Requeued { key, source })
                        }
                        Err(ProcessError::Failed(source)) => Err(PopError::Failed { key, source }),
                    };
                }
            }
            notified.await;
        }
    }

    /// Whether the first relist completed and every key it queued was popped.
    pub fn has_synced(&self) -> bool {
        self.state.lock().has_synced()
    }

    /// Queues a `Sync` delta (the cached object) for every known key with nothing queued.
    pub fn resync(&self) -> Result<(), FifoError> {
        let Some(known) = &self.known else {
            return Ok(());
        };
        let _processing = self.processing.lock();
        let mut state = self.open_state()?;
        let mut queued = 0usize;
        for key in known.list_keys() {
            if state.items.contains_key(&key) {
                continue;
            }
            if let Some(obj) = known.get_by_key(&key) {
                state.push(
                    key,
                    Delta {
                        kind: DeltaType::Sync,
                        object: DeltaObject::Object(obj),
                    },
                );
                queued += 1;
            }
        }
        drop(state);
        tracing::debug!(queued, "resync queued Sync deltas");
        if queued > 0 {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// Closes the FIFO: waiting and future pops return [`PopError::Closed`]; writes fail.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.notify.notify_waiters();
        self.notify.notify_one();
        self.drained.notify_waiters();
    }

    /// Resolves once fewer than `backlog` keys are queued, or the FIFO is closed. A `backlog`
    /// of zero is read as one (wait for an empty queue): nothing could ever satisfy it otherwise.
    pub async fn wait_for_room(&self, backlog: usize) {
        let backlog = backlog.max(1);
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            // Registered before the check, so a pop between the check and the await still wakes us.
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

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// How many keys are queued.
    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Whether no key is queued.
    pub fn is_empty(&self) -> bool {
        self.state.lock().queue.is_empty()
    }

    /// The queued keys, in queue order.
    pub fn list_keys(&self) -> Vec<ObjectKey> {
        self.state.lock().queue.iter().cloned().collect()
    }

    /// A copy of the deltas queued for `key` (cheap: objects are `Arc`s).
    pub fn deltas_of(&self, key: &ObjectKey) -> Option<Vec<Delta<K>>> {
        self.state.lock().items.get(key).cloned()
    }
}

impl<K> ReflectorSink<K> for DeltaFifo<K>
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
        let key = (self.key_fn)(&obj)?;
        let _processing = self.processing.lock();
        let mut state = self.open_state()?;
        let known = self
            .known
            .as_ref()
            .is_some_and(|known| known.get_by_key(&key).is_some());
        if !known && !state.items.contains_key(&key) {
            tracing::trace!(key = %key, "delete of an unknown key ignored");
            return Ok(());
        }
        state.push(
            key,
            Delta {
                kind: DeltaType::Deleted,
                object: DeltaObject::Object(obj),
            },
        );
        drop(state);
        self.notify.notify_one();
        Ok(())
    }

    fn replace_begin(&self) {
        self.state.lock().relist = Some(Relist::default());
    }

    fn wait_for_room(&self, backlog: usize) -> BoxFuture<'_, ()> {
        Box::pin(DeltaFifo::wait_for_room(self, backlog))
    }

    fn replace_page(&self, items: Vec<Arc<K>>) -> Result<(), FifoError> {
        // Key everything first, so a page is queued entirely or not at all.
        let keyed = items
            .into_iter()
            .map(|obj| Ok(((self.key_fn)(&obj)?, obj)))
            .collect::<Result<Vec<_>, FifoError>>()?;
        let mut state = self.open_state()?;
        let initial = !state.initial_relist_done;
        let count = keyed.len();
        for (key, obj) in keyed {
            let relist = state.relist.get_or_insert_with(Relist::default);
            relist.seen.insert(key.clone());
            if initial {
                state.initial_pending.insert(key.clone());
            }
            state.push(
                key,
                Delta {
                    kind: DeltaType::Replaced,
                    object: DeltaObject::Object(obj),
                },
            );
        }
        drop(state);
        tracing::trace!(items = count, "relist page queued");
        if count > 0 {
            self.notify.notify_one();
        }
        Ok(())
    }

    fn replace_done(&self, resource_version: &str) -> Result<(), FifoError> {
        let _processing = self.processing.lock();
        let mut state = self.open_state()?;
        let seen = state.relist.take().unwrap_or_default().seen;
        let initial = !state.initial_relist_done;
        let mut tombstones: Vec<(ObjectKey, Option<Arc<K>>)> = Vec::new();
        for (key, deltas) in &state.items {
            if seen.contains(key) {
                continue;
            }
            let newest = deltas.last().and_then(|d| d.object.object().cloned());
            tombstones.push((key.clone(), newest));
        }
        if let Some(known) = &self.known {
            for key in known.list_keys() {
                if seen.contains(&key) || state.items.contains_key(&key) {
                    continue;
                }
                let obj = known.get_by_key(&key);
                tombstones.push((key, obj));
            }
        }
        let deleted = tombstones.len();
        for (key, obj) in tombstones {
            if initial {
                state.initial_pending.insert(key.clone());
            }
            let tombstone = DeletedFinalStateUnknown {
                key: key.clone(),
                obj,
            };
            state.push(
                key,
                Delta {
                    kind: DeltaType::Deleted,
                    object: DeltaObject::Tombstone(tombstone),
                },
            );
        }
        state.initial_relist_done = true;
        let synced = state.has_synced();
        drop(state);
        tracing::debug!(
            resource_version,
            listed = seen.len(),
            deleted,
            initial,
            synced,
            "relist complete"
        );
        if deleted > 0 {
            self.notify.notify_one();
        }
        Ok(())
    }
}

impl<K> Fifo<K> for DeltaFifo<K>
where
    K: Send + Sync + 'static,
{
    fn pop<'a>(&'a self, process: &'a mut ProcessFn<'a, K>) -> BoxFuture<'a, Result<(), PopError>> {
        Box::pin(DeltaFifo::pop(self, |popped| process(Pop::Key(popped))))
    }

    fn has_synced(&self) -> bool {
        DeltaFifo::has_synced(self)
    }

    fn resync(&self) -> Result<(), FifoError> {
        DeltaFifo::resync(self)
    }

    fn close(&self) {
        DeltaFifo::close(self)
    }

    fn is_closed(&self) -> bool {
        DeltaFifo::is_closed(self)
    }

    fn len(&self) -> usize {
        DeltaFifo::len(self)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(kind: DeltaType, tombstone: bool, tag: &str) -> Delta<String> {
        let obj = Arc::new(tag.to_owned());
        let object = if tombstone {
            DeltaObject::Tombstone(DeletedFinalStateUnknown {
                key: ObjectKey::new(None::<&str>, "k"),
                obj: Some(obj),
            })
        } else {
            DeltaObject::Object(obj)
        };
        Delta { kind, object }
    }

    #[test]
    fn dedup_collapses_only_two_trailing_deletions() {
        use DeltaType::*;
        // (case, deltas as (kind, tombstone, tag), expected tags after dedupe)
        type Case<'a> = (&'a str, &'a [(DeltaType, bool, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            ("empty", &[], &[]),
            ("single deletion", &[(Deleted, false, "a")], &["a"]),
            (
                "real then real keeps the older",
                &[(Deleted, false, "a"), (Deleted, false, "b")],
                &["a"],
            ),
            (
                "real then tombstone keeps the real",
                &[(Deleted, false, "a"), (Deleted, true, "b")],
                &["a"],
            ),
            (
                "tombstone then real keeps the real",
                &[(Deleted, true, "a"), (Deleted, false, "b")],
                &["b"],
            ),
            (
                "tombstone then tombstone keeps the newer",
                &[(Deleted, true, "a"), (Deleted, true, "b")],
                &["b"],
            ),
            (
                "added then deleted is not collapsed",
                &[(Added, false, "a"), (Deleted, false, "b")],
                &["a", "b"],
            ),
            (
                "added then updated is not collapsed",
                &[(Added, false, "a"), (Updated, false, "b")],
                &["a", "b"],
            ),
            (
                "earlier deltas are untouched",
                &[
                    (Added, false, "a"),
                    (Deleted, true, "b"),
                    (Deleted, false, "c"),
                ],
                &["a", "c"],
            ),
        ];
        for (name, input, want) in cases {
            let mut deltas: Vec<Delta<String>> =
                input.iter().map(|(k, t, tag)| delta(*k, *t, tag)).collect();
            dedup_deletions(&mut deltas);
            let got: Vec<&str> = deltas
                .iter()
                .map(|d| d.object.object().unwrap().as_str())
                .collect();
            assert_eq!(got, *want, "case {name}");
        }
    }
}
