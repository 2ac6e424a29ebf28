//! `PartialObjectMetadata` responses (`Accept: ...;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1`),
//! as metadata informers and kubectl ask for them, through `kube::Api`'s metadata calls.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use reflex_testing::FakeApiServer;
use serde_json::json;

fn config_map(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": "default", "labels": {"app": "x"}},
           "data": {"big": "payload"}})
}

#[tokio::test]
async fn metadata_lists_gets_and_watches_carry_only_metadata() {
    let server = FakeApiServer::start().await.unwrap();
    let seeded = server.seed(config_map("a")).unwrap();
    let rv = seeded["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let client = server.client().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let list = api.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].metadata.name.as_deref(), Some("a"));
    assert_eq!(list.items[0].metadata.labels.as_ref().unwrap()["app"], "x");
    let got = api.get_metadata("a").await.unwrap();
    assert_eq!(got.metadata.resource_version.as_deref(), Some(rv.as_str()));

    // The bodies themselves hold no data: ask as kube does and read the raw text.
    let request = http::Request::get("/api/v1/namespaces/default/configmaps")
        .header(
            "Accept",
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
        )
        .body(Vec::new())
        .unwrap();
    let text = client.request_text(request).await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["kind"], "PartialObjectMetadataList");
    assert_eq!(body["items"][0]["kind"], "PartialObjectMetadata");
    assert!(body["items"][0].get("data").is_none(), "{text}");

    let mut stream = api
        .watch_metadata(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let mut changed = config_map("a");
    changed["data"]["big"] = json!("changed");
    server.update(changed).unwrap();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Modified(meta)) => {
            assert_eq!(meta.metadata.name.as_deref(), Some("a"));
            assert_eq!(
                meta.types.map(|t| t.kind).as_deref(),
                Some("PartialObjectMetadata")
            );
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }
}
