//! The official Kubernetes Python client against the fake API server. The script
//! `tests/python/fake_client.py` creates, lists with a label selector, list-then-watches, patches,
//! replaces with a stale resourceVersion (409), deletes and reads a 404; then pages a list, JSON
//! patches, deletes with a failing precondition, deletes a collection, writes a Deployment's
//! `/status`, reads discovery and `/version`, and serves a CRD's objects through
//! `CustomObjectsApi` (create, `/status` patch, watch, delete). It prints one line per step and
//! exits non-zero on the first mismatch. `envtest_fake_fidelity.rs` runs the same script against
//! a real kube-apiserver, so the expected lines are a cluster's.
//!
//! Skipped with a printed reason when `/usr/bin/python3` cannot import `kubernetes` (Debian's
//! `python3-kubernetes`), unless `REFLEX_REQUIRE_PYTHON_CLIENT=1`.

mod support;

use reflex_testing::FakeApiServer;
use support::python::{EXPECTED, python_client, run_script};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_client_cannot_tell_the_fake_from_a_cluster() {
    let Some(python) = python_client().await else {
        return;
    };
    let server = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();

    let lines = run_script(python, &kubeconfig).await;
    assert_eq!(lines, EXPECTED, "the script's steps, in order");
    // What the script did reached this server.
    let faults = server.faults();
    assert!(faults.request_count("watch", "configmaps") >= 2);
    // cm-c, and cm-a refused by its precondition.
    assert_eq!(faults.request_count("delete", "configmaps"), 2);
    assert_eq!(faults.request_count("deletecollection", "configmaps"), 1);
    assert_eq!(faults.request_count("create", "widgets"), 1);
    server.shutdown().await;
}
