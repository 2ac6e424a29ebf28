//! The examples against a real kube-apiserver and etcd (`reflex_testing::envtest`), through
//! `--kubeconfig`, as a user would point them at a cluster.
//!
//! In this mode the examples run no scripted workload: each test makes the changes itself through
//! its own client while the example runs, and checks what the example printed. Without the
//! control-plane binaries (`scripts/envtest/run`) the tests print why and pass, unless
//! `REFLEX_REQUIRE_ENVTEST=1`; one control plane runs at a time.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, PersistentVolumeClaim};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use reflex_testing::envtest::{Environment, Options};
use serde_json::json;
use support::LiveExample;

/// Serializes the tests of this binary: one control plane at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Upper bound for something that must happen; reached only when a test fails.
const LIMIT: Duration = Duration::from_secs(60);

async fn start() -> Option<Environment> {
    Environment::start_or_skip(Options::default())
        .await
        .expect("start envtest")
}

async fn namespace(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

fn claim(name: &str, size: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "db"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    }))
    .unwrap()
}

/// Runs a blocking wait on the example off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking wait")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pvcwatch_on_a_real_cluster_tracks_the_total_and_both_limit_crossings() {
    let _serial = SERIAL.lock().await;
    let Some(env) = start().await else { return };
    let client = env.client();
    namespace(&client, "storage").await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "storage");
    for (name, size) in [("data-0", "10Gi"), ("data-1", "5Gi"), ("logs", "1500Mi")] {
        claims
            .create(&PostParams::default(), &claim(name, size))
            .await
            .expect("create claim");
    }
    let kubeconfig = env.kubeconfig().to_str().expect("utf-8 path").to_owned();
    let mut example = LiveExample::start(
        "pvcwatch",
        &[
            "--kubeconfig",
            &kubeconfig,
            "-n",
            "storage",
            "--max-claims",
            "20Gi",
        ],
    );
    let mut example = blocking(move || {
        example.wait_for("the synced table's total", LIMIT, |l| {
            l.starts_with("3 claims, total 16860Mi")
        });
        example.wait_for("the watch", LIMIT, |l| {
            l.starts_with("watching for changes")
        });
        example
    })
    .await;
    claims
        .create(&PostParams::default(), &claim("burst", "8Gi"))
        .await
        .expect("create burst");
    example = blocking(move || {
        example.wait_for("the crossing above", LIMIT, |l| {
            l.starts_with(">>> ABOVE the limit")
        });
        example
    })
    .await;
    claims
        .delete("burst", &DeleteParams::default())
        .await
        .expect("delete burst");
    // The API server added the `kubernetes.io/pvc-protection` finalizer; no controller manager
    // runs here to remove it once the claim is unused, so the test does.
    claims
        .patch(
            "burst",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("release the finalizer");
    example = blocking(move || {
        example.wait_for("the crossing below", LIMIT, |l| {
            l.starts_with("<<< back BELOW the limit")
        });
        example
    })
    .await;
    example.interrupt();
    let lines = blocking(move || example.finish(LIMIT)).await;
    let text = lines.join("\n");
    for expected in [
        "ADDED    storage/burst",
        "DELETED  storage/burst",
        "interrupted",
        "changes seen; final state:",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("3 claims, total 16860Mi")),
        "the final total is the starting one:\n{text}"
    );
    env.stop().await.expect("stop envtest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_lister_on_a_real_cluster_prints_the_cache_then_adds_and_deletes() {
    let _serial = SERIAL.lock().await;
    let Some(env) = start().await else { return };
    let client = env.client();
    let nodes: Api<Node> = Api::all(client.clone());
    let node = |name: &str| -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"pool": "a"}}}))
            .unwrap()
    };
    nodes
        .create(&PostParams::default(), &node("node-a"))
        .await
        .expect("create node");
    let kubeconfig = env.kubeconfig().to_str().expect("utf-8 path").to_owned();
    let mut example = LiveExample::start(
        "node-lister",
        &[
            "--kubeconfig",
            &kubeconfig,
            "-l",
            "pool=a",
            "--exit-after-events",
            "2",
        ],
    );
    let mut example = blocking(move || {
        example.wait_for("the synced cache", LIMIT, |l| {
            l.starts_with("1 nodes in the cache")
        });
        example
    })
    .await;
    nodes
        .create(&PostParams::default(), &node("node-b"))
        .await
        .expect("create node-b");
    example = blocking(move || {
        example.wait_for("node-b added", LIMIT, |l| l.starts_with("ADDED    node-b"));
        example
    })
    .await;
    nodes
        .delete("node-a", &DeleteParams::default())
        .await
        .expect("delete node-a");
    let lines = blocking(move || example.finish(LIMIT)).await;
    let text = lines.join("\n");
    assert!(
        text.lines().any(|l| l.starts_with("node-a ")),
        "node-a listed:\n{text}"
    );
    assert!(text.contains("DELETED  node-a"), "{text}");
    assert!(text.contains("2 changes seen"), "{text}");
    env.stop().await.expect("stop envtest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_controller_on_a_real_cluster_installs_its_crd_owns_and_scales_a_deployment_and_exits_on_ctrl_c()
 {
    let _serial = SERIAL.lock().await;
    let Some(env) = start().await else { return };
    let client = env.client();
    let kubeconfig = env.kubeconfig().to_str().expect("utf-8 path").to_owned();
    let mut example = LiveExample::start("sample-controller", &["--kubeconfig", &kubeconfig]);
    let example = blocking(move || {
        example.wait_for("the CRD", LIMIT, |l| {
            l.contains("CRD foos.samplecontroller.k8s.io")
        });
        example
    })
    .await;
    let gvk = GroupVersionKind::gvk("samplecontroller.k8s.io", "v1alpha1", "Foo");
    let foos: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &ApiResource::from_gvk(&gvk));
    let foo: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "samplecontroller.k8s.io/v1alpha1",
        "kind": "Foo",
        "metadata": {"name": "real-foo", "namespace": "default"},
        "spec": {"deploymentName": "real-foo-app", "replicas": 2}
    }))
    .unwrap();
    // The CRD may take a moment to be served after it was established.
    let created = poll(|| {
        let foos = foos.clone();
        let foo = foo.clone();
        async move { foos.create(&PostParams::default(), &foo).await.ok() }
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let replicas = |d: &Deployment| d.spec.as_ref().and_then(|s| s.replicas);
    let deployment = poll(|| {
        let deployments = deployments.clone();
        async move { deployments.get_opt("real-foo-app").await.ok().flatten() }
    })
    .await;
    assert_eq!(replicas(&deployment), Some(2));
    let owner = deployment
        .metadata
        .owner_references
        .as_ref()
        .and_then(|o| o.first())
        .expect("owned by the Foo");
    assert_eq!(
        (owner.kind.as_str(), owner.controller, Some(&owner.uid)),
        ("Foo", Some(true), created.metadata.uid.as_ref())
    );
    foos.patch(
        "real-foo",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 4}})),
    )
    .await
    .expect("scale the Foo");
    poll(|| {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("real-foo-app").await.ok()?;
            (replicas(&d) == Some(4)).then_some(())
        }
    })
    .await;
    // No Deployment controller runs here, so no replica becomes available: status reports 0.
    let status: BTreeMap<String, serde_json::Value> = poll(|| {
        let foos = foos.clone();
        async move {
            let foo = foos.get("real-foo").await.ok()?;
            serde_json::from_value(foo.data.get("status")?.clone()).ok()
        }
    })
    .await;
    assert_eq!(status.get("availableReplicas"), Some(&json!(0)));
    example.interrupt();
    let lines = blocking(move || example.finish(LIMIT)).await;
    let text = lines.join("\n");
    assert!(
        text.lines().any(|l| l.starts_with("default/real-foo ")
            && l.ends_with("created deployment real-foo-app with 2 replicas")),
        "{text}"
    );
    assert!(
        text.contains("scaled deployment real-foo-app from 2 to 4 replicas"),
        "{text}"
    );
    assert!(text.contains("interrupted"), "{text}");
    assert!(text.contains("controller stopped:"), "{text}");
    env.stop().await.expect("stop envtest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_watch_on_a_real_cluster_discovers_configmaps_and_keeps_the_label_index() {
    let _serial = SERIAL.lock().await;
    let Some(env) = start().await else { return };
    let client = env.client();
    namespace(&client, "teams").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "teams");
    let config_map = |name: &str, team: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"team": team}}}))
            .unwrap()
    };
    for (name, team) in [("a-1", "a"), ("b-1", "b")] {
        config_maps
            .create(&PostParams::default(), &config_map(name, team))
            .await
            .expect("create config map");
    }
    let kubeconfig = env.kubeconfig().to_str().expect("utf-8 path").to_owned();
    // A discovery cache of the test's own (never the user's ~/.kube/cache).
    let cache = tempfile::tempdir().expect("a cache directory");
    let cache_dir = cache.path().to_str().expect("utf-8 path").to_owned();
    let mut example = LiveExample::start(
        "dynamic-watch",
        &[
            "--kubeconfig",
            &kubeconfig,
            "--resource",
            "configmaps",
            "-n",
            "teams",
            "--discovery-cache-dir",
            &cache_dir,
        ],
    );
    let mut example = blocking(move || {
        // Discovery of the real server lists, among others, the core ConfigMap and the Lease.
        example.wait_for("configmaps in the discovery table", LIMIT, |l| {
            l.starts_with("configmaps ") && l.ends_with("ConfigMap")
        });
        example.wait_for("leases in the discovery table", LIMIT, |l| {
            l.starts_with("leases.coordination.k8s.io ")
        });
        example.wait_for("the synced cache", LIMIT, |l| {
            l == "watching configmaps (v1): 2 objects cached"
        });
        example.wait_for("the first index", LIMIT, |l| l == "  index team: a=1 b=1");
        example
    })
    .await;
    config_maps
        .create(&PostParams::default(), &config_map("b-2", "b"))
        .await
        .expect("create b-2");
    example = blocking(move || {
        example.wait_for("b-2 added", LIMIT, |l| l.starts_with("ADDED    teams/b-2"));
        example.wait_for("the index after the add", LIMIT, |l| {
            l == "  index team: a=1 b=2"
        });
        example
    })
    .await;
    config_maps
        .delete("a-1", &DeleteParams::default())
        .await
        .expect("delete a-1");
    example = blocking(move || {
        example.wait_for("a-1 deleted", LIMIT, |l| {
            l.starts_with("DELETED  teams/a-1")
        });
        example
    })
    .await;
    example.interrupt();
    let lines = blocking(move || example.finish(LIMIT)).await;
    assert!(
        lines.iter().any(|l| l.ends_with("final index team: b=2")),
        "{}",
        lines.join("\n")
    );
    let port = env.apiserver_addr().port();
    env.stop().await.expect("stop envtest");
    // The real server's discovery documents, in client-go's layout under <dir>/<host>/.
    let host = cache.path().join(format!("127.0.0.1_{port}"));
    assert!(
        host.join("servergroups.json").is_file(),
        "{}",
        host.display()
    );
    let core: serde_json::Value = serde_json::from_slice(
        &std::fs::read(host.join("v1/serverresources.json")).expect("the core group's resources"),
    )
    .expect("JSON");
    assert!(
        core["resources"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["name"] == "configmaps")),
        "{core}"
    );
    assert!(
        host.join("coordination.k8s.io/v1/serverresources.json")
            .is_file()
    );
}

/// Calls `f` until it returns something, every 100 ms for up to [`LIMIT`].
async fn poll<T, F, Fut>(f: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three sample-controller processes with `--shards` against a real kube-apiserver (sharding
/// its lists and watches where it can: v1.36+ with the gate on): the Foos are split between
/// them, each Foo's Deployment is created once, by one of them; after one is killed (SIGKILL,
/// nothing released) its Foos are taken over once its Leases expire, and new and scaled Foos
/// converge on the two left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_controller_replicas_as_processes_share_the_foos_and_take_over_from_a_killed_one() {
    let _serial = SERIAL.lock().await;
    let minor = reflex_testing::envtest::minor_version().unwrap_or(0);
    let options = Options {
        apiserver_args: if minor >= 36 {
            vec!["--feature-gates=ShardedListAndWatch=true".to_owned()]
        } else {
            Vec::new()
        },
        ..Options::default()
    };
    let Some(env) = Environment::start_or_skip(options)
        .await
        .expect("start envtest")
    else {
        return;
    };
    let client = env.client();
    let kubeconfig = env.kubeconfig().to_str().expect("utf-8 path").to_owned();
    let start = |name: &str| {
        LiveExample::start(
            "sample-controller",
            &[
                "--kubeconfig",
                &kubeconfig,
                "--shards",
                "6",
                "--identity",
                name,
                "--shard-lease-seconds",
                "3",
            ],
        )
    };
    let mut replicas = Vec::new();
    for name in ["r0", "r1", "r2"] {
        let mut example = start(name);
        example = blocking(move || {
            example.wait_for("sharding", LIMIT, |l| l.starts_with("sharding: 6 slots"));
            example
        })
        .await;
        replicas.push(example);
    }
    let gvk = GroupVersionKind::gvk("samplecontroller.k8s.io", "v1alpha1", "Foo");
    let foos: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &ApiResource::from_gvk(&gvk));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let create = |i: usize, replicas: i32| {
        let foos = foos.clone();
        async move {
            let foo: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "samplecontroller.k8s.io/v1alpha1",
                "kind": "Foo",
                "metadata": {"name": format!("foo-{i}"), "namespace": "default"},
                "spec": {"deploymentName": format!("foo-{i}-app"), "replicas": replicas}
            }))
            .unwrap();
            // The CRD may take a moment to be served after it was established.
            poll(|| {
                let foos = foos.clone();
                let foo = foo.clone();
                async move { foos.create(&PostParams::default(), &foo).await.ok() }
            })
            .await
        }
    };
    let converged = |want: BTreeMap<String, i32>| {
        let deployments = deployments.clone();
        async move {
            poll(|| {
                let deployments = deployments.clone();
                let want = want.clone();
                async move {
                    let list = deployments.list(&ListParams::default()).await.ok()?;
                    let have: BTreeMap<String, i32> = list
                        .items
                        .iter()
                        .filter_map(|d| {
                            Some((d.metadata.name.clone()?, d.spec.as_ref()?.replicas?))
                        })
                        .collect();
                    (have == want).then_some(())
                }
            })
            .await
        }
    };
    let mut want = BTreeMap::new();
    for i in 0..12 {
        create(i, 1).await;
        want.insert(format!("foo-{i}-app"), 1);
    }
    converged(want.clone()).await;

    // r2 dies without releasing; new Foos and a scale of every Foo converge on r0 and r1.
    drop(replicas.pop());
    for i in 12..16 {
        create(i, 1).await;
        want.insert(format!("foo-{i}-app"), 1);
    }
    for i in 0..12 {
        foos.patch(
            &format!("foo-{i}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .expect("scale a Foo");
        want.insert(format!("foo-{i}-app"), 2);
    }
    converged(want).await;

    let mut created: BTreeMap<String, usize> = BTreeMap::new();
    for example in replicas {
        example.interrupt();
        let lines = blocking(move || example.finish(LIMIT)).await;
        // Both survivors hold three of the six slots: each reconciled some of the 16 Foos
        // (the chance that one held none of them is 2^-15).
        assert!(
            lines.iter().any(|l| l.contains(" deployment foo-")),
            "a replica that reconciled nothing:\n{}",
            lines.join("\n")
        );
        for l in &lines {
            if let Some(name) = l
                .split_whitespace()
                .next()
                .filter(|_| l.contains(" created deployment "))
            {
                *created.entry(name.to_owned()).or_default() += 1;
            }
        }
    }
    // Each Deployment was created once: by a live replica, or by the killed one (whose lines
    // are gone with it); never twice.
    assert!(created.values().all(|&n| n == 1), "{created:?}");
    assert!(
        (12..16).all(|i| created.contains_key(&format!("default/foo-{i}"))),
        "the Foos created after the kill were created by the two left: {created:?}"
    );
    env.stop().await.expect("stop envtest");
}
