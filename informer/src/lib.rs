//! # reflex-informer
//!
//! The cache: a Reflector lists and watches a resource, a DeltaFIFO queues what changed, an
//! Indexer holds the objects (as `Arc<K>`), and informers fan the changes out to handlers.
//!
//! | module | what it owns |
//! |---|---|
//! | [`key`] | object keys (`namespace/name`) |
//! | [`fifo`] | the seam between the Reflector and the delta queue |
//! | [`factory`] | `SharedInformerFactory`: one shared informer per resource |
//! | [`informer`] | `SharedIndexInformer`: reflector, FIFO, store and handlers joined |
//! | [`processor`] | fan-out of notifications to event handlers |
//! | [`source`] | `ListWatch`: where objects come from (kube::Api, in-memory) |
//! | [`reflector`] | list-then-watch into the FIFO, with resourceVersion bookkeeping |
//! | [`delta_fifo`] | `DeltaFifo`: per-key queue of deltas between Reflector and informer |
//! | [`in_order_fifo`] | `InOrderFifo`: every change in server order (client-go's `RealFIFO`), plain or atomic |
//! | [`store`] | `Indexer`: the lock-free, indexed cache of `Arc<K>` |
//! | [`lister`] | `Lister`: typed reads of the cache, by namespace, selector and index |
//! | [`decode`] | decoding that skips what nobody reads (`managedFields`, configured paths) while parsing |

pub mod decode;
pub mod delta_fifo;
pub mod factory;
pub mod fifo;
mod hash;
pub mod in_order_fifo;
pub mod informer;
pub mod key;
pub mod lister;
pub mod processor;
pub mod reflector;
pub mod source;
pub mod store;
