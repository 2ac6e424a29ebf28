//! The informers a controller depends on, type-erased: the primary and the `owns`/`watches`
//! children, each with its handler that maps a change to the keys to reconcile.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use reflex_informer::handler::DeltaObject;
use reflex_informer::handler::handler_fn;
use reflex_informer::key::ObjectKey;
use reflex_informer::{InformerError, SharedIndexInformer, SyncState};
use reflex_workqueue::priority::{LOW_PRIORITY, NORMAL_PRIORITY};
use tokio_util::sync::CancellationToken;

use super::*;

pub(super) type Queue = ControllerQueue;
pub(super) type Remover = Box<dyn FnOnce() + Send>;

/// One informer the controller depends on, with its key mapping, type-erased.
pub(super) trait Involved: Send + Sync {
    fn name(&self) -> &str;
    fn has_synced(&self) -> bool;
    fn sync_state(&self) -> SyncState;
    fn register(&self, queue: Queue) -> Result<Registered, InformerError>;
    fn informer_run(&self, shutdown: CancellationToken) -> BoxFuture<'static, bool>;
}

pub(super) struct Registered {
    pub(super) synced: BoxFuture<'static, bool>,
    pub(super) remove: Remover,
}

pub(super) type Mapper<C> = Arc<dyn Fn(&C) -> Vec<ObjectKey> + Send + Sync>;
pub(super) type UpdateFilter<C> = Arc<dyn Fn(&C, &C) -> bool + Send + Sync>;

pub(super) struct Watched<C> {
    pub(super) name: String,
    pub(super) informer: SharedIndexInformer<C>,
    pub(super) mapper: Mapper<C>,
    pub(super) role: Role<C>,
}

/// What an informer is to the controller.
pub(super) enum Role<C> {
    /// The primary resource: an update is enqueued if `filter` (when set) accepts it; a
    /// tombstone's key is the primary's key.
    Primary { filter: Option<UpdateFilter<C>> },
    /// A child or watched resource: an update enqueues the keys of the old and the new object.
    Related,
}

impl<C> Clone for Role<C> {
    fn clone(&self) -> Self {
        match self {
            Role::Primary { filter } => Role::Primary {
                filter: filter.clone(),
            },
            Role::Related => Role::Related,
        }
    }
}

pub(super) fn enqueue_all(queue: &Queue, keys: Vec<ObjectKey>, priority: i32) {
    for key in keys {
        queue.add(key, priority);
    }
}

impl<C> Involved for Watched<C>
where
    C: kube::Resource + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn has_synced(&self) -> bool {
        self.informer.has_synced()
    }

    fn sync_state(&self) -> SyncState {
        self.informer.sync_state()
    }

    fn register(&self, queue: Queue) -> Result<Registered, InformerError> {
        let (q_add, q_upd, q_del) = (queue.clone(), queue.clone(), queue);
        let (m_add, m_upd, m_del) = (
            self.mapper.clone(),
            self.mapper.clone(),
            self.mapper.clone(),
        );
        let role = self.role.clone();
        let is_primary = matches!(role, Role::Primary { .. });
        let handler = handler_fn::<C>()
            .on_add(move |obj, is_in_initial_list| {
                let priority = if is_in_initial_list {
                    LOW_PRIORITY
                } else {
                    NORMAL_PRIORITY
                };
                enqueue_all(&q_add, m_add(obj), priority)
            })
            .on_update(move |old, new| {
                let priority = if old.meta().resource_version == new.meta().resource_version {
                    // A resync: nothing changed. The FIFO queue skips it; the priority queue
                    // takes it at low priority, behind every real change.
                    if !q_upd.is_priority() {
                        return;
                    }
                    LOW_PRIORITY
                } else {
                    NORMAL_PRIORITY
                };
                match &role {
                    Role::Primary { filter } => {
                        if filter.as_ref().is_none_or(|accept| accept(old, new)) {
                            enqueue_all(&q_upd, m_upd(new), priority);
                        }
                    }
                    Role::Related => {
                        // Both: a child moved between owners, or a mapping changed.
                        let mut keys = m_upd(old);
                        for key in m_upd(new) {
                            if !keys.contains(&key) {
                                keys.push(key);
                            }
                        }
                        enqueue_all(&q_upd, keys, priority);
                    }
                }
            })
            .on_delete(move |obj| match obj {
                DeltaObject::Object(o) => enqueue_all(&q_del, m_del(o), NORMAL_PRIORITY),
                // The primary's tombstone carries its key even when the last state is unknown.
                DeltaObject::Tombstone(t) if is_primary => {
                    q_del.add(t.key.clone(), NORMAL_PRIORITY);
                }
                DeltaObject::Tombstone(t) => {
                    if let Some(o) = &t.obj {
                        enqueue_all(&q_del, m_del(o), NORMAL_PRIORITY);
                    }
                }
            });
        let registration = self.informer.add_event_handler(handler)?;
        let informer = self.informer.clone();
        let reg = registration.clone();
        Ok(Registered {
            synced: async move { informer.wait_for_sync().await && reg.wait_for_sync().await }
                .boxed(),
            remove: Box::new(move || {
                registration.remove();
            }),
        })
    }

    fn informer_run(&self, shutdown: CancellationToken) -> BoxFuture<'static, bool> {
        let informer = self.informer.clone();
        let name = self.name.clone();
        async move {
            match informer.run(shutdown).await {
                Ok(()) => true,
                Err(InformerError::AlreadyStarted(_)) => false,
                Err(error) => {
                    tracing::warn!(informer = %name, error = %error, "informer did not run");
                    false
                }
            }
        }
        .boxed()
    }
}
