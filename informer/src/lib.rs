//! # reflex-informer
//!
//! The cache: a Reflector lists and watches a resource, a DeltaFIFO queues what changed, an
//! Indexer holds the objects (as `Arc<K>`), and informers fan the changes out to handlers.
//!
//! | module | what it owns |
//! |---|---|
//! | [`key`] | object keys (`namespace/name`) |
//! | [`fifo`] | the seam between the Reflector and the delta queue |

pub mod decode;
pub mod fifo;
pub mod key;
pub mod reflector;
pub mod source;
