//! # reflex-workqueue
//!
//! Work queues for Kubernetes controllers: a deduplicating queue, a delaying queue and a
//! rate-limited queue, with rate limiters and metrics hooks.
