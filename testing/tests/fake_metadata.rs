//! Metadata-only responses of the fake API server (`Accept: ...;as=PartialObjectMetadata...`),
//! driven through `kube::Client` as metadata-only informers use it.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, ListParams, PartialObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::TypeMeta;
use reflex_informer::factory::{FactoryOptions, InformerSpec, SharedInformerFactory};
use reflex_testing::FakeApiServer;
use serde_json::{Value, json};

const PARTIAL: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
const PARTIAL_LIST: &str = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
const KUBECTL_GET: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

fn partial_type() -> Option<TypeMeta> {
    Some(TypeMeta {
        api_version: "meta.k8s.io/v1".into(),
        kind: "PartialObjectMetadata".into(),
    })
}

fn cm(name: &str, label: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": label}, "annotations": {"note": name}},
        "data": {"payload": "x".repeat(64)},
    }))
    .unwrap()
}

async fn seeded(names: &[&str]) -> (FakeApiServer, Api<ConfigMap>) {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
    for n in names {
        api.create(&PostParams::default(), &cm(n, "web"))
            .await
            .unwrap();
    }
    (server, api)
}

/// Sends a GET with an `Accept` header and returns (status, content type, body).
async fn raw_get(client: &kube::Client, path: &str, accept: &str) -> (u16, String, Value) {
    let req = http::Request::get(path)
        .header(http::header::ACCEPT, accept)
        .body(Vec::new())
        .unwrap();
    let resp = client.send(req.map(Into::into)).await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, ct, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn list_metadata_returns_partial_object_metadata_items_without_data() {
    let (server, api) = seeded(&["a", "b", "c"]).await;
    let list = api.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(list.types.kind, "PartialObjectMetadataList");
    assert_eq!(list.types.api_version, "meta.k8s.io/v1");
    let names: Vec<_> = list
        .items
        .iter()
        .map(|i| i.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    for item in &list.items {
        assert_eq!(item.types, partial_type());
        assert!(item.metadata.resource_version.is_some());
        assert!(item.metadata.uid.is_some());
        assert_eq!(item.metadata.labels.as_ref().unwrap()["app"], "web");
    }

    let (code, ct, body) = raw_get(
        &server.client().unwrap(),
        "/api/v1/namespaces/default/configmaps",
        PARTIAL_LIST,
    )
    .await;
    assert_eq!(code, 200);
    // kube-apiserver labels transformed answers plain JSON too.
    assert_eq!(ct, "application/json");
    assert_eq!(
        body["metadata"]["resourceVersion"],
        server.resource_version().to_string()
    );
    for item in body["items"].as_array().unwrap() {
        let keys: Vec<&String> = item.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["apiVersion", "kind", "metadata"], "{item}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn list_metadata_pages_with_continue_tokens_like_full_lists() {
    let (server, api) = seeded(&["a", "b", "c", "d", "e"]).await;
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut lp = ListParams::default().limit(2);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list_metadata(&lp).await.unwrap();
        pages += 1;
        assert!(page.items.iter().all(|i| i.types == partial_type()));
        names.extend(page.items.iter().map(|i| i.metadata.name.clone().unwrap()));
        token = page.metadata.continue_.filter(|c| !c.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["a", "b", "c", "d", "e"]);
    server.shutdown().await;
}

#[tokio::test]
async fn get_and_patch_metadata_return_partial_object_metadata() {
    let (server, api) = seeded(&["a"]).await;
    let got = api.get_metadata("a").await.unwrap();
    assert_eq!(got.types, partial_type());
    assert_eq!(got.metadata.annotations.unwrap()["note"], "a");

    let patched = api
        .patch_metadata(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "gold"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.types, partial_type());
    assert_eq!(patched.metadata.labels.unwrap()["tier"], "gold");

    let (code, ct, body) = raw_get(
        &server.client().unwrap(),
        "/api/v1/namespaces/default/configmaps/a",
        PARTIAL,
    )
    .await;
    assert_eq!((code, ct.as_str()), (200, "application/json"));
    assert!(body.get("data").is_none(), "{body}");
    // The full object is still there for clients asking for JSON.
    assert_eq!(
        api.get("a").await.unwrap().data.unwrap()["payload"].len(),
        64
    );
    server.shutdown().await;
}

#[tokio::test]
async fn watch_metadata_streams_partial_objects_and_bookmarks() {
    let (server, api) = seeded(&["a"]).await;
    let rv = server.resource_version().to_string();
    let mut stream = api
        .watch_metadata(&WatchParams::default().timeout(30), &rv)
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &cm("b", "web"))
        .await
        .unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"payload": "y"}})),
    )
    .await
    .unwrap();
    api.delete("b", &Default::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(30), stream.try_next())
            .await
            .expect("watch event within 30 s")
            .unwrap()
            .expect("stream still open");
        match ev {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
                assert_eq!(o.types, partial_type());
                seen.push(o.metadata.name.unwrap());
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(seen, ["b", "a", "b"]);
    drop(stream);

    // Streaming list: initial ADDED events and the initial-events-end bookmark, all partial.
    let mut stream = api
        .watch_metadata(&WatchParams::default().initial_events(), "")
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Added(o) => {
            assert_eq!(o.types, partial_type());
            assert_eq!(o.metadata.name.as_deref(), Some("a"));
        }
        other => panic!("expected ADDED, got {other:?}"),
    }
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Bookmark(b) => {
            assert_eq!(b.types.kind, "PartialObjectMetadata");
            assert_eq!(b.metadata.annotations["k8s.io/initial-events-end"], "true");
        }
        other => panic!("expected BOOKMARK, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn the_first_acceptable_media_range_of_the_accept_header_is_served() {
    let (server, _api) = seeded(&["a"]).await;
    let client = server.client().unwrap();
    let path = "/api/v1/namespaces/default/configmaps";
    let cases: &[(&str, &str, &str)] = &[
        (
            "kubectl get: table ranges skipped, json",
            KUBECTL_GET,
            "ConfigMapList",
        ),
        (
            "table skipped, partial list taken",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
            "PartialObjectMetadataList",
        ),
        (
            "protobuf only falls back to json",
            "application/vnd.kubernetes.protobuf",
            "ConfigMapList",
        ),
        (
            "object kind for a list falls back to json",
            PARTIAL,
            "ConfigMapList",
        ),
        ("no preference", "*/*", "ConfigMapList"),
    ];
    for (name, accept, kind) in cases {
        let (code, _, body) = raw_get(&client, path, accept).await;
        assert_eq!(code, 200, "{name}");
        assert_eq!(body["kind"], *kind, "{name}");
    }
    // Errors stay a Status whatever was asked for.
    let (code, _, body) = raw_get(
        &client,
        "/api/v1/namespaces/default/configmaps/missing",
        PARTIAL,
    )
    .await;
    assert_eq!((code, body["kind"].as_str()), (404, Some("Status")));
    server.shutdown().await;
}

#[tokio::test]
async fn a_metadata_informer_caches_partial_objects_from_the_server() {
    let (server, api) = seeded(&["a", "b"]).await;
    let factory = SharedInformerFactory::new(server.client().unwrap(), FactoryOptions::default());
    let informer = factory
        .informer_with(InformerSpec::<PartialObjectMeta<ConfigMap>>::metadata())
        .unwrap();
    factory.start();
    let synced = factory
        .wait_for_cache_sync(Some(Duration::from_secs(30)))
        .await;
    assert!(
        synced.values().all(reflex_informer::SyncState::has_synced),
        "{synced:?}"
    );
    api.create(&PostParams::default(), &cm("c", "db"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while informer.indexer().list().len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the informer did not see the third ConfigMap within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for obj in informer.indexer().list() {
        assert_eq!(obj.types, partial_type(), "{:?}", obj.metadata.name);
    }
    factory.shutdown().await;
    server.shutdown().await;
}
