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
