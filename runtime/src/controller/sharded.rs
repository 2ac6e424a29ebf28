//! A sharded controller's side of [`crate::sharding`]: which slot a key is in, and queueing a
//! slot's cached keys when this replica starts reconciling it.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use reflex_informer::SharedIndexInformer;
use reflex_informer::handler_fn;
use reflex_informer::key::ObjectKey;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::*;
use crate::sharding::{ShardGate, SlotGuard};

/// The shard hash of a key's object, and whether the object is in the cache (else the hash is
/// its last one: a deleted object); `None`: never seen.
type HashOf = Arc<dyn Fn(&ObjectKey) -> Option<(u64, bool)> + Send + Sync>;

/// The last hash of every key the primary showed, kept for keys whose object left the cache
/// (deleted, or moved out of the shard) until their reconcile saw them gone.
type LastHashes = Arc<Mutex<HashMap<ObjectKey, u64>>>;

/// What the workers of a sharded controller ask before reconciling.
pub(super) struct Sharded {
    pub(super) gate: ShardGate,
    hash_of: HashOf,
    last: LastHashes,
    activations: JoinHandle<()>,
    /// Removes the handler that records hashes.
    unregister: Box<dyn Fn() -> bool + Send + Sync>,
}

impl Sharded {
    /// Follows `primary` (the shard hash of every key it showed, so a deleted object's key still
    /// has a slot) and queues a slot's cached keys into `queue` when the slot becomes active.
    pub(super) fn start<K>(
        gate: ShardGate,
        primary: &SharedIndexInformer<K>,
        queue: &Queue,
    ) -> Result<Self, ControllerError>
    where
        K: kube::Resource + Send + Sync + 'static,
    {
        let field = gate.field();
        let key_of = primary.indexer().key_func();
        // Keys the cache no longer holds (deleted objects) keep their last hash until a
        // reconcile saw them gone; see `reconciled`.
        let last: LastHashes = Arc::default();
        let registration = {
            let (on_add, on_update, on_delete) = (last.clone(), last.clone(), last.clone());
            let (k1, k2, k3) = (key_of.clone(), key_of.clone(), key_of.clone());
            primary
                .add_event_handler(
                    handler_fn()
                        .on_add(move |o: &Arc<K>, _| {
                            if let Ok(key) = k1(o) {
                                on_add.lock().insert(key, field.hash_of(o.meta()));
                            }
                        })
                        .on_update(move |_, o: &Arc<K>| {
                            if let Ok(key) = k2(o) {
                                on_update.lock().insert(key, field.hash_of(o.meta()));
                            }
                        })
                        .on_delete(move |gone: &reflex_informer::DeltaObject<K>| {
                            if let Some(o) = gone.object()
                                && let Ok(key) = k3(o)
                            {
                                on_delete.lock().insert(key, field.hash_of(o.meta()));
                            }
                        }),
                )
                .map_err(|source| ControllerError::Register {
                    informer: "primary (shard hashes)".into(),
                    source,
                })?
        };
        let unregister = Box::new(move || registration.remove());
        let hash_of = {
            let primary = primary.clone();
            let last = last.clone();
            Arc::new(
                move |key: &ObjectKey| match primary.indexer().get_by_key(key) {
                    Some(o) => Some((field.hash_of(o.meta()), true)),
                    None => last.lock().get(key).map(|&h| (h, false)),
                },
            )
        };
        let activations = {
            let mut rx = gate.subscribe_activations();
            let primary = primary.clone();
            let queue = queue.clone();
            let gate = gate.clone();
            let last = last.clone();
            tokio::spawn(async move {
                loop {
                    let slot = match rx.recv().await {
                        Ok(slot) => Some(slot),
                        // Missed activations: queue every active slot's keys.
                        Err(RecvError::Lagged(_)) => None,
                        Err(RecvError::Closed) => return,
                    };
                    let active = gate.active_slots();
                    let ours = |hash: u64| {
                        let s = gate.slot_of(hash);
                        slot.map_or(active.contains(&s), |slot| s == slot)
                    };
                    let mut queued = 0usize;
                    let snapshot = primary.indexer().snapshot();
                    for (key, o) in snapshot.iter() {
                        if ours(field.hash_of(o.meta())) {
                            queue.add(key.clone(), 0);
                            queued += 1;
                        }
                    }
                    // Objects deleted while the slot moved: their delete was skipped by the
                    // old holder and, before now, by this replica; it is reconciled here.
                    let gone: Vec<ObjectKey> = last
                        .lock()
                        .iter()
                        .filter(|&(key, &hash)| ours(hash) && snapshot.get(key).is_none())
                        .map(|(key, _)| key.clone())
                        .collect();
                    queued += gone.len();
                    for key in gone {
                        queue.add(key, 0);
                    }
                    tracing::info!(slot = ?slot, queued, "slot active: its cached keys queued");
                }
            })
        };
        Ok(Sharded {
            gate,
            hash_of,
            last,
            activations,
            unregister,
        })
    }

    /// Admits `key` if this replica reconciles its slot now: the guard, and the hash of a key
    /// whose object is gone from the cache (to forget once reconciled).
    pub(super) fn enter(&self, key: &ObjectKey) -> Option<(SlotGuard, Option<u64>)> {
        let (hash, cached) = (self.hash_of)(key)?;
        let guard = self.gate.enter(hash)?;
        Some((guard, (!cached).then_some(hash)))
    }

    /// A reconcile of `key`, whose object was gone with last hash `hash`, succeeded: its hash is
    /// no longer needed (unless a newer object of the key was seen since).
    pub(super) fn reconciled(&self, key: &ObjectKey, hash: u64) {
        let mut last = self.last.lock();
        if last.get(key) == Some(&hash) {
            last.remove(key);
        }
    }

    pub(super) fn stop(self) {
        self.activations.abort();
        (self.unregister)();
    }
}
