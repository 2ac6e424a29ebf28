//! What crosses the wire between the informers and the fake API server: gzip on lists and
//! streaming-list watches (one gzip member per event, as kube-apiserver 1.37 sends them) and
//! KEP-5958's `drop=metadata.managedFields`, checked at the HTTP level and through informers.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams};
use reflex_informer::SharedIndexInformer;
use reflex_informer::decode::DecodeOptions;
use reflex_informer::factory::{FactoryOptions, SharedInformerFactory};
use reflex_informer::reflector::ReflectorOptions;
use reflex_informer::source::raw::WireOptions;
use reflex_testing::{FakeApiServer, FakeConfig};
use serde_json::{Value, json};
use wire_support::{INITIAL_EVENTS_END, get_encoded as get, get_encoded_until};

// Each test binary uses part of the helpers.
#[allow(dead_code)]
#[path = "support/http.rs"]
mod wire_support;

/// Upper bound for something that must happen; reached only when a test fails.
const TIMEOUT: Duration = Duration::from_secs(30);

fn cm(name: &str, payload_bytes: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", "managedFields": [
            {"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:payload": {}}}}
        ]},
        "data": {"payload": "x".repeat(payload_bytes)},
    })
}

async fn server_with(config: FakeConfig, count: usize, payload_bytes: usize) -> FakeApiServer {
    let server = FakeApiServer::start_with(config).await.unwrap();
    for i in 0..count {
        server
            .seed(cm(&format!("cm-{i:04}"), payload_bytes))
            .unwrap();
    }
    server
}

/// A streaming list, read up to its initial-events-end bookmark.
async fn watch_list(client: &kube::Client, headers: &[(&str, &str)]) -> wire_support::Encoded {
    get_encoded_until(client, WATCH_LIST, headers, Some(INITIAL_EVENTS_END)).await
}

const LIST: &str = "/api/v1/namespaces/default/configmaps";
const GZIP: (&str, &str) = ("accept-encoding", "gzip");

#[tokio::test]
async fn lists_over_the_threshold_are_gzip_encoded_only_for_clients_that_ask() {
    // 200 ConfigMaps of about 1 KiB: a list of about 230 KiB, over the 128 KiB threshold.
    let server = server_with(FakeConfig::default(), 200, 1000).await;
    let client = server.client().unwrap();

    let plain = get(&client, LIST, &[]).await;
    assert_eq!(plain.encoding, None, "no Accept-Encoding: plain");
    let gzipped = get(&client, LIST, &[GZIP]).await;
    assert_eq!(gzipped.encoding.as_deref(), Some("gzip"));
    assert_eq!(gzipped.members, 1, "a list is one member");
    assert!(
        gzipped.wire.len() * 5 < plain.wire.len(),
        "repetitive JSON compresses"
    );
    assert_eq!(gzipped.json(), plain.json(), "the same list either way");
    assert_eq!(server.faults().gzip_responses(), 1);

    let refused = get(&client, LIST, &[("accept-encoding", "gzip;q=0, identity")]).await;
    assert_eq!(refused.encoding, None, "q=0 refuses gzip");
    let one = get(&client, &format!("{LIST}/cm-0001"), &[GZIP]).await;
    assert_eq!(one.encoding, None, "a small answer stays plain");
    assert_eq!(server.faults().gzip_responses(), 1);

    let off = server_with(
        FakeConfig {
            gzip_min_bytes: None,
            ..FakeConfig::default()
        },
        200,
        1000,
    )
    .await;
    let answer = get(&off.client().unwrap(), LIST, &[GZIP]).await;
    assert_eq!(answer.encoding, None, "a server with compression off");
}

const WATCH_LIST: &str = "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=300";

#[tokio::test]
async fn a_streaming_list_comes_one_gzip_member_per_event() {
    let server = server_with(FakeConfig::default(), 5, 10).await;
    let client = server.client().unwrap();
    let answer = watch_list(&client, &[GZIP]).await;
    assert_eq!(answer.encoding.as_deref(), Some("gzip"));
    let lines = answer.events();
    assert_eq!(answer.members, lines.len(), "one member per event");
    let added = lines.iter().filter(|e| e["type"] == "ADDED").count();
    assert_eq!(added, 5);
    assert!(lines.iter().any(|e| e["type"] == "BOOKMARK"
        && e["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true"));

    let plain_watch = get(
        &client,
        "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=1",
        &[GZIP],
    )
    .await;
    assert_eq!(
        plain_watch.encoding, None,
        "other watches are not compressed"
    );

    let off = server_with(
        FakeConfig {
            gzip_watch_lists: false,
            ..FakeConfig::default()
        },
        5,
        10,
    )
    .await;
    let answer = watch_list(&off.client().unwrap(), &[GZIP]).await;
    assert_eq!(answer.encoding, None, "WatchListCompression off");
}

#[tokio::test]
async fn drop_managed_fields_leaves_them_out_of_objects_lists_and_watch_events() {
    let server = server_with(FakeConfig::default(), 3, 10).await;
    let client = server.client().unwrap();
    let drop = ("accept", "application/json;drop=metadata.managedFields");
    let meta_drop = (
        "accept",
        "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1;drop=metadata.managedFields",
    );

    let kept = get(&client, LIST, &[]).await.json();
    assert!(kept["items"][0]["metadata"]["managedFields"].is_array());
    let list = get(&client, LIST, &[drop]).await.json();
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    for item in list["items"].as_array().unwrap() {
        assert!(item["metadata"].get("managedFields").is_none(), "{item}");
        assert_eq!(item["metadata"]["namespace"], "default", "the rest is kept");
    }
    let one = get(&client, &format!("{LIST}/cm-0000"), &[drop])
        .await
        .json();
    assert!(one["metadata"].get("managedFields").is_none());
    assert_eq!(one["data"]["payload"], "x".repeat(10));
    let partial = get(&client, LIST, &[meta_drop]).await.json();
    assert_eq!(partial["kind"], "PartialObjectMetadataList");
    assert!(
        partial["items"][0]["metadata"]
            .get("managedFields")
            .is_none()
    );
    let added: Vec<Value> = watch_list(&client, &[drop])
        .await
        .events()
        .into_iter()
        .filter(|e| e["type"] == "ADDED")
        .collect();
    assert_eq!(added.len(), 3);
    assert!(
        added
            .iter()
            .all(|e| e["object"]["metadata"].get("managedFields").is_none())
    );

    let unsupported = server_with(
        FakeConfig {
            drop_managed_fields: false,
            ..FakeConfig::default()
        },
        1,
        10,
    )
    .await;
    let list = get(&unsupported.client().unwrap(), LIST, &[drop])
        .await
        .json();
    assert!(
        list["items"][0]["metadata"]["managedFields"].is_array(),
        "a server without the feature ignores the parameter"
    );
}

fn factory(client: &kube::Client, streaming: bool, wire: WireOptions) -> SharedInformerFactory {
    factory_decoding(client, streaming, wire, DecodeOptions::default())
}

fn factory_decoding(
    client: &kube::Client,
    streaming: bool,
    wire: WireOptions,
    decode: DecodeOptions,
) -> SharedInformerFactory {
    SharedInformerFactory::new(
        client.clone(),
        FactoryOptions {
            namespace: Some("default".into()),
            reflector: ReflectorOptions {
                streaming_lists: streaming,
                ..ReflectorOptions::default()
            },
            wire,
            decode,
            ..FactoryOptions::default()
        },
    )
}

async fn synced(factory: &SharedInformerFactory) {
    factory.start();
    let states = factory.wait_for_cache_sync(Some(TIMEOUT)).await;
    assert!(
        states.values().all(reflex_informer::SyncState::has_synced),
        "{states:?}"
    );
}

async fn wait_for_names(informer: &SharedIndexInformer<ConfigMap>, want: &[String]) {
    let names = || {
        let mut names: Vec<String> = informer
            .indexer()
            .list()
            .iter()
            .filter_map(|c| c.metadata.name.clone())
            .collect();
        names.sort();
        names
    };
    let reached = tokio::time::timeout(TIMEOUT, async {
        while names() != want {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "cache {:?}, want {want:?}", names());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informers_sync_and_follow_gzip_lists_and_gzip_streaming_lists() {
    // Everything over 0 bytes is compressed: every list page, and the streaming lists.
    let config = FakeConfig {
        gzip_min_bytes: Some(0),
        ..FakeConfig::default()
    };
    let server = server_with(config, 40, 200).await;
    let client = server.client().unwrap();
    for streaming in [false, true] {
        let before = server.faults().gzip_responses();
        let factory = factory(&client, streaming, WireOptions::default());
        let informer = factory.informer::<ConfigMap>();
        synced(&factory).await;
        // 40 seeded, and what the first round changed (5 created, 1 deleted).
        let seeded = if streaming { 44 } else { 40 };
        assert_eq!(
            informer.indexer().list().len(),
            seeded,
            "streaming {streaming}"
        );
        assert!(
            server.faults().gzip_responses() > before,
            "the informer's list came compressed (streaming {streaming})"
        );

        // Changes after the sync arrive on the same (for a streaming list: compressed) watch.
        let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
        let tag = if streaming { "s" } else { "p" };
        for i in 0..5 {
            let obj: ConfigMap = serde_json::from_value(cm(&format!("new-{tag}-{i}"), 50)).unwrap();
            api.create(&PostParams::default(), &obj).await.unwrap();
        }
        api.delete(
            &format!("cm-000{}", if streaming { 1 } else { 0 }),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
        let mut want: Vec<String> = api
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect();
        want.sort();
        wait_for_names(&informer, &want).await;
        assert!(
            informer
                .indexer()
                .list()
                .iter()
                .all(|c| c.metadata.managed_fields.is_none()),
            "managedFields skipped while parsing"
        );
        factory.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_wire_options_receive_nothing_compressed() {
    let config = FakeConfig {
        gzip_min_bytes: Some(0),
        ..FakeConfig::default()
    };
    let server = server_with(config, 10, 10).await;
    let factory = factory(&server.client().unwrap(), true, WireOptions::identity());
    let informer = factory.informer::<ConfigMap>();
    synced(&factory).await;
    assert_eq!(informer.indexer().list().len(), 10);
    assert_eq!(server.faults().gzip_responses(), 0);
    factory.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_fields_stay_out_of_the_cache_whether_or_not_the_server_drops_them() {
    let lean = WireOptions {
        drop_managed_fields: true,
        ..WireOptions::default()
    };
    for supported in [true, false] {
        let config = FakeConfig {
            drop_managed_fields: supported,
            ..FakeConfig::default()
        };
        let server = server_with(config, 5, 10).await;
        for streaming in [false, true] {
            let factory = factory(&server.client().unwrap(), streaming, lean.clone());
            let informer = factory.informer::<ConfigMap>();
            synced(&factory).await;
            let cached = informer.indexer().list();
            assert_eq!(cached.len(), 5);
            assert!(
                cached.iter().all(|c| c.metadata.managed_fields.is_none()),
                "server support {supported}, streaming {streaming}"
            );
            factory.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_informer_that_keeps_managed_fields_does_not_ask_the_server_to_drop_them() {
    let server = server_with(FakeConfig::default(), 3, 10).await;
    let lean = WireOptions {
        drop_managed_fields: true,
        ..WireOptions::default()
    };
    let factory = factory_decoding(
        &server.client().unwrap(),
        false,
        lean,
        DecodeOptions::full(),
    );
    let informer = factory.informer::<ConfigMap>();
    synced(&factory).await;
    let cached = informer.indexer().list();
    assert_eq!(cached.len(), 3);
    assert!(
        cached.iter().all(|c| c
            .metadata
            .managed_fields
            .as_ref()
            .is_some_and(|m| m.len() == 1)),
        "kept, because not asked away"
    );
    factory.shutdown().await;
}
