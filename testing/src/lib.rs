//! # reflex-testing
//!
//! Testing controllers with and without a cluster: an in-process fake Kubernetes API server, a
//! harness that starts a real kube-apiserver and etcd (envtest), and a TCP fault proxy to put
//! between a client and either of them ([`proxy`]).

pub mod envtest;
pub mod fake;
pub mod proxy;

pub use fake::{FakeApiServer, FakeConfig, FakeError, FaultHandle};
