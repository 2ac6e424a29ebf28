//! Event handlers: what an informer tells about the objects it caches.
//!
//! A [`ResourceEventHandler`] (or the closures of [`handler_fn`]) is registered with
//! [`SharedIndexInformer::add_event_handler`](crate::informer::SharedIndexInformer::add_event_handler),
//! which answers with a [`Registration`]: the handler's own `has_synced()`, counters and
//! `remove()`. A deletion reaches `on_delete` as a [`DeltaObject`]: the object's last state,
//! or a [`DeletedFinalStateUnknown`] tombstone when only a relist noticed it was gone.
//!
//! Handlers are synchronous callbacks, like client-go's `ResourceEventHandler`: they run on a
//! tokio worker thread, each in its own task with its own buffer, and **must not block**. The
//! usual handler computes a key and enqueues it on a work queue.
//!
//! ```
//! use std::sync::Arc;
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use reflex_informer::handler::{DeltaObject, handler_fn};
//!
//! let handler = handler_fn::<ConfigMap>()
//!     .on_add(|cm, _initial| println!("added {:?}", cm.metadata.name))
//!     .on_delete(|gone| match gone {
//!         DeltaObject::Object(cm) => println!("deleted {:?}", cm.metadata.name),
//!         DeltaObject::Tombstone(t) => println!("deleted {} (noticed by a relist)", t.key),
//!     });
//! # let _ = handler;
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::key::ObjectKey;

pub use crate::processor::Registration;

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

/// The smallest non-zero resync period a handler may ask for; smaller requests are raised to it.
pub const MINIMUM_RESYNC_PERIOD: Duration = Duration::from_secs(1);

/// Receives the changes an informer observes.
///
/// Contract:
/// - Calls for one handler are made one at a time, in the order the informer applied the changes
///   to its store; the store already reflects a change when its notification is delivered.
/// - Different handlers are not coordinated: each sees the same sequence, at its own pace.
/// - `on_update(old, new)` may be called with `old` and `new` at the same resourceVersion (a
///   periodic resync, or a relist that found the object unchanged): compare resourceVersions if
///   that matters.
/// - `on_delete` receives the last known object, or a
///   [`DeletedFinalStateUnknown`] tombstone when the
///   deletion was only noticed by a relist.
/// - Handlers run on a tokio worker thread and **must not block**: enqueue work (for example an
///   object key on a work queue) and return. A panic is caught and counted; the handler keeps
///   receiving notifications.
///
/// Every method has an empty default, so a handler implements only what it needs. For closures,
/// see [`handler_fn`].
pub trait ResourceEventHandler<K>: Send + Sync + 'static {
    /// An object appeared in the cache. `is_in_initial_list` is true for objects of the initial
    /// list, and for objects already cached when the handler was added late.
    fn on_add(&self, obj: &Arc<K>, is_in_initial_list: bool) {
        let _ = (obj, is_in_initial_list);
    }
    /// A cached object changed (or was resynced: then `old` and `new` share a resourceVersion).
    fn on_update(&self, old: &Arc<K>, new: &Arc<K>) {
        let _ = (old, new);
    }
    /// An object left the cache.
    fn on_delete(&self, obj: &DeltaObject<K>) {
        let _ = obj;
    }
}

impl<K, H: ResourceEventHandler<K> + ?Sized> ResourceEventHandler<K> for Arc<H> {
    fn on_add(&self, obj: &Arc<K>, is_in_initial_list: bool) {
        (**self).on_add(obj, is_in_initial_list);
    }
    fn on_update(&self, old: &Arc<K>, new: &Arc<K>) {
        (**self).on_update(old, new);
    }
    fn on_delete(&self, obj: &DeltaObject<K>) {
        (**self).on_delete(obj);
    }
}

type AddFn<K> = Box<dyn Fn(&Arc<K>, bool) + Send + Sync>;
type UpdateFn<K> = Box<dyn Fn(&Arc<K>, &Arc<K>) + Send + Sync>;
type DeleteFn<K> = Box<dyn Fn(&DeltaObject<K>) + Send + Sync>;

/// A [`ResourceEventHandler`] made of closures; see [`handler_fn`].
pub struct FnHandler<K> {
    add: Option<AddFn<K>>,
    update: Option<UpdateFn<K>>,
    delete: Option<DeleteFn<K>>,
}

impl<K> fmt::Debug for FnHandler<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnHandler")
            .field("on_add", &self.add.is_some())
            .field("on_update", &self.update.is_some())
            .field("on_delete", &self.delete.is_some())
            .finish()
    }
}

impl<K> Default for FnHandler<K> {
    fn default() -> Self {
        FnHandler {
            add: None,
            update: None,
            delete: None,
        }
    }
}

/// Starts a closure-based handler: chain `.on_add(..)`, `.on_update(..)`, `.on_delete(..)`;
/// the callbacks not given do nothing.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use k8s_openapi::api::core::v1::Pod;
/// use reflex_informer::handler::{ResourceEventHandler, handler_fn};
///
/// let adds = Arc::new(AtomicUsize::new(0));
/// let counter = adds.clone();
/// let handler = handler_fn::<Pod>().on_add(move |_pod, _initial| {
///     counter.fetch_add(1, Ordering::Relaxed);
/// });
/// ResourceEventHandler::on_add(&handler, &Arc::new(Pod::default()), true);
/// assert_eq!(adds.load(Ordering::Relaxed), 1);
/// ```
pub fn handler_fn<K>() -> FnHandler<K> {
    FnHandler::default()
}

impl<K> FnHandler<K> {
    /// Sets the closure called for [`ResourceEventHandler::on_add`].
    pub fn on_add(mut self, f: impl Fn(&Arc<K>, bool) + Send + Sync + 'static) -> Self {
        self.add = Some(Box::new(f));
        self
    }
    /// Sets the closure called for [`ResourceEventHandler::on_update`].
    pub fn on_update(mut self, f: impl Fn(&Arc<K>, &Arc<K>) + Send + Sync + 'static) -> Self {
        self.update = Some(Box::new(f));
        self
    }
    /// Sets the closure called for [`ResourceEventHandler::on_delete`].
    pub fn on_delete(mut self, f: impl Fn(&DeltaObject<K>) + Send + Sync + 'static) -> Self {
        self.delete = Some(Box::new(f));
        self
    }
}

impl<K: 'static> ResourceEventHandler<K> for FnHandler<K> {
    fn on_add(&self, obj: &Arc<K>, is_in_initial_list: bool) {
        if let Some(f) = &self.add {
            f(obj, is_in_initial_list);
        }
    }
    fn on_update(&self, old: &Arc<K>, new: &Arc<K>) {
        if let Some(f) = &self.update {
            f(old, new);
        }
    }
    fn on_delete(&self, obj: &DeltaObject<K>) {
        if let Some(f) = &self.delete {
            f(obj);
        }
    }
}

/// Why the processor refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessorError {
    /// The processor (its informer) was stopped; it never takes handlers again.
    #[error("the informer was stopped; it accepts no new event handlers")]
    Stopped,
    /// The processor was run a second time.
    #[error("the processor is already running or has run")]
    AlreadyStarted,
}
