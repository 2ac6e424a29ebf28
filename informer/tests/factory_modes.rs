//! The factory's informer modes against the in-process API server over HTTP: projections and
//! metadata-only informers list, watch, key and index like typed ones.

#[path = "support/objects.rs"]
mod objects;

#[path = "support/wait.rs"]
mod wait;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DeleteParams, DynamicObject, PartialObjectMeta, PostParams};
use objects::Gen;
use reflex_informer::factory::{FactoryOptions, InformerSpec, SharedInformerFactory};
use reflex_informer::key::ObjectKey;
use reflex_testing::FakeApiServer;
use serde_json::Value;
use wait::eventually;

/// What a scheduler-like controller reads of a Pod.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
struct PodNode {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: PodNodeSpec,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
struct PodNodeSpec {
    #[serde(rename = "nodeName")]
    node_name: Option<String>,
}

reflex_informer::impl_projection!(PodNode => Pod);

const BY_NODE: &str = "by-node";

/// Seeds `n` generated Pods (with managedFields) in namespace `ns`; returns their JSON.
/// A fake server for the generated Pods, whose owners (ReplicaSets) do not exist: with garbage
/// collection on, the server would delete them as a cluster's collector does.
async fn fake_server() -> FakeApiServer {
    FakeApiServer::start_with(reflex_testing::FakeConfig {
        garbage_collection: false,
        ..Default::default()
    })
    .await
    .expect("fake server")
}

fn seed_pods(server: &FakeApiServer, ns: &str, n: usize, seed: u64) -> Vec<Value> {
    server
        .seed(
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .expect("seed namespace");
    let mut g = Gen::new(seed);
    (0..n)
        .map(|i| {
            let mut pod = g.pod(ns, i);
            pod["apiVersion"] = "v1".into();
            pod["kind"] = "Pod".into();
            server.seed(pod).expect("seed pod")
        })
        .collect()
}

/// Creates Pod `team-a/late` on `node` through `client`; returns the Pods API and its key.
async fn create_late(client: kube::Client, node: &str) -> (kube::Api<Pod>, ObjectKey) {
    let api: kube::Api<Pod> = kube::Api::namespaced(client, "team-a");
    api.create(&PostParams::default(), &new_pod("team-a", "late", node))
        .await
        .unwrap();
    (api, ObjectKey::new(Some("team-a"), "late"))
}

fn new_pod(ns: &str, name: &str, node: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": ns, "name": name,
            "managedFields": [{"manager": "test", "operation": "Update", "apiVersion": "v1"}]},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
    }))
    .expect("pod JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projected_informer_lists_watches_keys_and_indexes_only_the_projected_fields() {
    let server = fake_server().await;
    let seeded = seed_pods(&server, "team-a", 20, 7);
    seed_pods(&server, "team-b", 5, 8);
    let client = server.client().expect("client");
    let factory = SharedInformerFactory::new(
        client.clone(),
        FactoryOptions {
            namespace: Some("team-a".into()),
            ..Default::default()
        },
    );
    let pods = factory.informer::<PodNode>();
    pods.add_indexers(BY_NODE, |p: &PodNode| {
        p.spec.node_name.clone().into_iter().collect()
    })
    .unwrap();
    // Shared: asking again returns the same informer (the index is already there).
    let again = factory.informer::<PodNode>();
    assert!(again.indexer().index_keys(BY_NODE, "x").is_ok());
    // Distinct from the typed informer of the same resource.
    assert!(
        factory
            .informer::<Pod>()
            .indexer()
            .index_keys(BY_NODE, "x")
            .is_err()
    );

    factory.start();
    let synced = factory
        .wait_for_cache_sync(Some(Duration::from_secs(30)))
        .await;
    assert!(
        synced.values().all(reflex_informer::SyncState::has_synced),
        "not synced: {synced:?}"
    );
    assert_eq!(pods.indexer().len(), seeded.len(), "only namespace team-a");
    for json in &seeded {
        let name = json["metadata"]["name"].as_str().unwrap();
        let key = ObjectKey::new(Some("team-a"), name);
        let p = pods.indexer().get_by_key(&key).expect("seeded pod cached");
        assert_eq!(
            p.spec.node_name.as_deref(),
            json["spec"]["nodeName"].as_str()
        );
        assert_eq!(
            p.metadata.resource_version.as_deref(),
            json["metadata"]["resourceVersion"].as_str()
        );
        assert!(p.metadata.managed_fields.is_none(), "managedFields skipped");
        let node = p.spec.node_name.clone().unwrap();
        assert!(
            pods.indexer()
                .index_keys(BY_NODE, &node)
                .unwrap()
                .contains(&key)
        );
    }

    // Watch: a created Pod arrives projected and indexed; a deleted one leaves.
    let (api, late) = create_late(client, "node-late").await;
    eventually("the created pod in the projected store", || {
        pods.indexer().get_by_key(&late).is_some()
    })
    .await;
    assert_eq!(
        pods.indexer().index_keys(BY_NODE, "node-late").unwrap(),
        vec![late.clone()]
    );
    assert!(
        pods.indexer()
            .get_by_key(&late)
            .unwrap()
            .metadata
            .managed_fields
            .is_none()
    );
    api.delete("late", &DeleteParams::default()).await.unwrap();
    eventually("the deleted pod gone from the projected store", || {
        pods.indexer().get_by_key(&late).is_none()
    })
    .await;
    assert!(
        pods.indexer()
            .list_index_values(BY_NODE)
            .unwrap()
            .iter()
            .all(|v| v != "node-late")
    );
    factory.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_informer_holds_metadata_without_managed_fields_in_the_factory_namespace() {
    let server = fake_server().await;
    let seeded = seed_pods(&server, "team-a", 15, 11);
    seed_pods(&server, "team-b", 4, 12);
    let client = server.client().expect("client");
    let factory = SharedInformerFactory::new(
        client.clone(),
        FactoryOptions {
            namespace: Some("team-a".into()),
            ..Default::default()
        },
    );
    let meta = factory
        .informer_with(InformerSpec::<PartialObjectMeta<Pod>>::metadata())
        .unwrap();
    factory.start();
    let synced = factory
        .wait_for_cache_sync(Some(Duration::from_secs(30)))
        .await;
    assert!(
        synced.values().all(reflex_informer::SyncState::has_synced),
        "not synced: {synced:?}"
    );
    assert_eq!(meta.indexer().len(), seeded.len());
    for json in &seeded {
        let name = json["metadata"]["name"].as_str().unwrap();
        let m = meta
            .indexer()
            .get_by_key(&ObjectKey::new(Some("team-a"), name))
            .expect("seeded pod cached");
        assert_eq!(
            m.metadata.resource_version.as_deref(),
            json["metadata"]["resourceVersion"].as_str()
        );
        assert_eq!(
            m.metadata.labels.as_ref().map(|l| l.len()),
            json["metadata"]["labels"].as_object().map(|l| l.len())
        );
        assert!(m.metadata.managed_fields.is_none());
        // The server honoured the Accept header: the list carried PartialObjectMetadata items.
        assert_eq!(
            m.types.as_ref().map(|t| t.kind.as_str()),
            Some("PartialObjectMetadata"),
            "listed as metadata only"
        );
    }
    let (_, late) = create_late(client, "n").await;
    eventually("the created pod in the metadata store", || {
        meta.indexer().get_by_key(&late).is_some()
    })
    .await;
    let late = meta.indexer().get_by_key(&late).unwrap();
    assert_eq!(
        late.types.as_ref().map(|t| t.kind.as_str()),
        Some("PartialObjectMetadata"),
        "watched as metadata only"
    );
    assert!(late.metadata.managed_fields.is_none());
    factory.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_informer_holds_the_same_objects_as_the_typed_one_and_delivers_arcs() {
    let server = fake_server().await;
    let seeded = seed_pods(&server, "team-a", 25, 21);
    let client = server.client().expect("client");
    let factory = SharedInformerFactory::new(client.clone(), FactoryOptions::default());
    let typed = factory.informer::<Pod>();
    let compact = factory
        .informer_with(InformerSpec::<Pod>::typed().compact())
        .unwrap();
    assert!(compact.indexer().is_compact());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    compact
        .add_event_handler(reflex_informer::handler::handler_fn().on_add(
            move |p: &std::sync::Arc<Pod>, initial| {
                let _ = tx.send((p.metadata.name.clone(), initial));
            },
        ))
        .unwrap();
    factory.start();
    let synced = factory
        .wait_for_cache_sync(Some(Duration::from_secs(30)))
        .await;
    assert!(
        synced.values().all(reflex_informer::SyncState::has_synced),
        "not synced: {synced:?}"
    );
    assert_eq!(compact.indexer().len(), seeded.len());
    for p in typed.indexer().list() {
        let key = ObjectKey::from_resource(&*p).unwrap();
        let c = compact
            .indexer()
            .get_by_key(&key)
            .expect("in the compact store");
        assert_eq!(*c, *p, "{key}");
        assert!(c.metadata.managed_fields.is_none());
    }
    assert_eq!(
        compact
            .lister()
            .namespaced("team-a")
            .list(&Default::default())
            .len(),
        seeded.len()
    );
    create_late(client, "n").await;
    let mut initial = 0;
    loop {
        let (name, is_initial) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("an add notification within 30 s")
            .expect("handler channel open");
        if name.as_deref() == Some("late") {
            assert!(!is_initial);
            break;
        }
        initial += 1;
    }
    assert_eq!(initial, seeded.len(), "one initial add per seeded pod");
    assert_eq!(compact.indexer().decode_failures(), 0);
    factory.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_metadata_and_projected_informers_hold_what_their_full_twins_hold() {
    let server = fake_server().await;
    // More than two pages of 500, so the compact informers' bounded list backlog is exercised.
    let seeded = seed_pods(&server, "team-a", 1100, 31);
    let client = server.client().expect("client");
    let factory = SharedInformerFactory::new(client.clone(), FactoryOptions::default());
    let meta = factory
        .informer_with(InformerSpec::<PartialObjectMeta<Pod>>::metadata())
        .unwrap();
    let compact_meta = factory
        .informer_with(InformerSpec::<PartialObjectMeta<Pod>>::metadata().compact())
        .unwrap();
    let projected = factory.informer::<PodNode>();
    let compact_projected = factory
        .informer_with(InformerSpec::<PodNode>::typed().compact())
        .unwrap();
    assert!(compact_meta.indexer().is_compact() && compact_projected.indexer().is_compact());
    assert!(!meta.indexer().is_compact() && !projected.indexer().is_compact());
    factory.start();
    let synced = factory
        .wait_for_cache_sync(Some(Duration::from_secs(60)))
        .await;
    assert!(
        synced.values().all(reflex_informer::SyncState::has_synced),
        "not synced: {synced:?}"
    );
    // The full informers list by streaming (the default: a watch with sendInitialEvents, no
    // list request); the compact ones bound their list backlog, which a streaming list cannot
    // honour, so they list consistently in pages of 500 (three for 1100 Pods), and their decoded
    // objects never all exist at once.
    assert_eq!(
        server.faults().request_count("list", "pods"),
        3 + 3,
        "no list for the streaming informers, three pages each for the compact ones"
    );
    assert!(
        server.faults().request_count("watch", "pods") >= 4,
        "two streaming lists, and a watch after each paged list"
    );
    assert_eq!(compact_meta.indexer().len(), seeded.len());
    assert_eq!(compact_projected.indexer().len(), seeded.len());
    for m in meta.indexer().list() {
        let key = ObjectKey::from_resource(&*m).unwrap();
        let c = compact_meta
            .indexer()
            .get_by_key(&key)
            .expect("compact metadata");
        assert_eq!(c.metadata, m.metadata, "{key}");
        assert_eq!(c.types, m.types, "{key}");
        assert_eq!(
            c.types.as_ref().map(|t| t.kind.as_str()),
            Some("PartialObjectMetadata")
        );
    }
    for p in projected.indexer().list() {
        let key = ObjectKey::from_resource(&*p).unwrap();
        let c = compact_projected
            .indexer()
            .get_by_key(&key)
            .expect("compact projection");
        assert_eq!(*c, *p, "{key}");
    }
    let (_, late) = create_late(client, "node-late").await;
    eventually("the created pod in both compact stores", || {
        compact_meta.indexer().get_by_key(&late).is_some()
            && compact_projected.indexer().get_by_key(&late).is_some()
    })
    .await;
    assert_eq!(
        compact_projected
            .indexer()
            .get_by_key(&late)
            .unwrap()
            .spec
            .node_name
            .as_deref(),
        Some("node-late")
    );
    assert_eq!(compact_meta.indexer().decode_failures(), 0);
    assert_eq!(compact_projected.indexer().decode_failures(), 0);
    factory.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_dynamic_informer_holds_what_its_full_twin_holds_and_sees_changes() {
    let server = fake_server().await;
    let seeded = seed_pods(&server, "team-a", 30, 41);
    let client = server.client().expect("client");
    let factory = SharedInformerFactory::new(client.clone(), FactoryOptions::default());
    let pods = ApiResource::erase::<Pod>(&());
    let full = factory
        .informer_with(InformerSpec::dynamic(&pods))
        .expect("a new dynamic informer");
    let compact = factory
        .informer_with(InformerSpec::dynamic(&pods).compact())
        .expect("a new compact dynamic informer");
    assert!(compact.indexer().is_compact() && !full.indexer().is_compact());
    factory.start();
    let synced = factory
        .wait_for_cache_sync(Some(Duration::from_secs(30)))
        .await;
    assert_eq!(synced.len(), 2, "two informers, named apart: {synced:?}");
    assert!(
        synced.values().all(reflex_informer::SyncState::has_synced),
        "not synced: {synced:?}"
    );
    assert!(
        synced
            .keys()
            .any(|id| id.is_compact() && id.resource() == "pods"),
        "{synced:?}"
    );
    assert_eq!(compact.indexer().len(), seeded.len());
    for o in full.indexer().list() {
        let key = ObjectKey::new(
            o.metadata.namespace.as_deref(),
            o.metadata.name.as_deref().expect("a name"),
        );
        let c: std::sync::Arc<DynamicObject> =
            compact.indexer().get_by_key(&key).expect("compact copy");
        assert_eq!(c.metadata, o.metadata, "{key}");
        assert_eq!(c.data, o.data, "{key}");
    }
    let (api, late) = create_late(client, "node-late").await;
    eventually("the created pod in the compact dynamic store", || {
        compact.indexer().get_by_key(&late).is_some()
    })
    .await;
    api.delete("late", &DeleteParams::default()).await.unwrap();
    eventually(
        "the deleted pod gone from the compact dynamic store",
        || compact.indexer().get_by_key(&late).is_none(),
    )
    .await;
    assert_eq!(compact.indexer().decode_failures(), 0);
    factory.shutdown().await;
    server.shutdown().await;
}
