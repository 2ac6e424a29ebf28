//! # Reflex
//!
//! Informers, listers, workqueues and controllers for Kubernetes, in Rust: the front door.
//!
//! This crate re-exports the member crates so that one dependency brings the whole runtime:
//!
//! | module | crate | what it owns |
//! |---|---|---|
//! | [`informer`] | `reflex-informer` | the cache: list/watch, Reflector, DeltaFIFO, Indexer, informers, listers |
//! | [`workqueue`] | `reflex-workqueue` | the work: queues, delays, rate limiters, metrics |
//! | [`runtime`] | `reflex-runtime` | running controllers |

pub use reflex_informer as informer;
pub use reflex_runtime as runtime;
pub use reflex_workqueue as workqueue;

/// The names most controllers use, in one import: `use reflex::prelude::*;`.
///
/// ```no_run
/// use reflex::prelude::*;
/// # fn names(_: Option<(SharedInformerFactory, ObjectKey, Action)>) {}
/// ```
pub mod prelude {
    pub use reflex_informer::{
        DeltaObject, FactoryOptions, InformerSpec, Lister, ObjectKey, ResourceEventHandler,
        SharedIndexInformer, SharedInformerFactory, handler_fn,
    };
    pub use reflex_runtime::{
        Action, Controller, ControllerOptions, ErrorAction, Owned, default_error_policy,
    };
    pub use reflex_workqueue::{Queue, RateLimitingQueue, default_controller_rate_limiter};
}

/// The README's code, compiled as doc tests so that what a reader copies builds.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
