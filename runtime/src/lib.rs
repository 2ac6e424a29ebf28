//! # reflex-runtime
//!
//! Running controllers: the controller and its workers (joining `reflex-informer`, the cache, and
//! `reflex-workqueue`, the work), leader election on a Lease, an event recorder, retries on
//! conflict, metrics and health endpoints, and signal handling.
//!
//! | module | what it gives |
//! |---|---|
//! | [`controller`] | informers to a rate-limited workqueue to `reconcile` workers |
//! | [`leader_election`] | one active replica among many, on a `coordination.k8s.io/v1` Lease |
//! | [`events`] | `events.k8s.io/v1` Events, written off the caller's path, repeats folded into series |
//! | [`metrics`] | Prometheus metrics of controllers, work queues and informers on one registry |
//! | [`retry`] | `retry_on_conflict` for read-modify-write loops |
//! | [`serve`] | `/metrics`, `/healthz`, `/readyz` over HTTP |
//! | [`sharding`] | a controller split across replicas by hash slots on Leases, with safe hand-off |
//! | [`signal`] | a shutdown token cancelled on SIGINT or SIGTERM |

pub mod controller;
pub mod events;
pub mod leader_election;
pub mod metrics;
pub mod retry;
pub mod serve;
pub mod sharding;
pub mod signal;

pub use controller::{
    Action, Controller, ControllerError, ControllerMetrics, ControllerOptions, ControllerSummary,
    ErrorAction, Owned, Unsynced, default_error_policy,
};
pub use metrics::Metrics;
