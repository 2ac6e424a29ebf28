//! # reflex-runtime
//!
//! Running controllers: the controller builder and its workers, leader election on a Lease, an
//! event recorder, metrics and health endpoints, and signal handling. It joins
//! `reflex-informer` (the cache) and `reflex-workqueue` (the work).

pub mod controller;

pub use controller::{
    Action, Controller, ControllerError, ControllerMetrics, ControllerOptions, ControllerSummary,
    ErrorAction,
};
