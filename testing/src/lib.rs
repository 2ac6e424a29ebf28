//! # reflex-testing
//!
//! Testing controllers with and without a cluster: an in-process fake Kubernetes API server, and a
//! harness that starts a real kube-apiserver and etcd (envtest).

pub mod fake;

pub use fake::{FakeApiServer, FakeConfig, FakeError, FaultHandle};
