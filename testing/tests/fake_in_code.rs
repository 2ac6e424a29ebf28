//! Writes given in code (`FakeApiServer::seed` and `FakeApiServer::update`), observed through
//! `kube::Client` as any client would.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, WatchEvent, WatchParams};
use reflex_testing::{FakeApiServer, FakeError};
use serde_json::json;

fn config_map(name: &str, value: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": "default"}, "data": {"k": value}})
}

#[tokio::test]
async fn update_in_code_reaches_watchers_as_modified_with_a_new_resource_version() {
    let server = FakeApiServer::start().await.unwrap();
    let seeded = server.seed(config_map("a", "1")).unwrap();
    let seeded_rv = seeded["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
    let mut stream = api
        .watch(&WatchParams::default(), &seeded_rv)
        .await
        .unwrap()
        .boxed();

    let updated = server.update(config_map("a", "2")).unwrap();

    let new_rv = updated["metadata"]["resourceVersion"].as_str().unwrap();
    assert_ne!(new_rv, seeded_rv);
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Modified(cm)) => {
            assert_eq!(cm.data.unwrap()["k"], "2");
            assert_eq!(cm.metadata.resource_version.as_deref(), Some(new_rv));
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    let got = api.get("a").await.unwrap();
    assert_eq!(got.data.unwrap()["k"], "2");
}

#[tokio::test]
async fn update_in_code_with_a_stale_resource_version_is_a_conflict() {
    let server = FakeApiServer::start().await.unwrap();
    let seeded = server.seed(config_map("a", "1")).unwrap();
    server.update(config_map("a", "2")).unwrap();
    let mut stale = config_map("a", "3");
    stale["metadata"]["resourceVersion"] = seeded["metadata"]["resourceVersion"].clone();

    match server.update(stale) {
        Err(FakeError::Rejected(e)) => assert_eq!(e.code, 409),
        other => panic!("expected a 409, got {other:?}"),
    }
}

#[tokio::test]
async fn update_in_code_of_a_missing_object_is_not_found() {
    let server = FakeApiServer::start().await.unwrap();

    match server.update(config_map("absent", "1")) {
        Err(FakeError::Rejected(e)) => assert_eq!(e.code, 404),
        other => panic!("expected a 404, got {other:?}"),
    }
}

#[tokio::test]
async fn a_paged_list_interrupted_by_writes_stays_at_its_resource_version() {
    use kube::api::ListParams;
    let server = FakeApiServer::start().await.unwrap();
    server
        .seed(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}))
        .unwrap();
    for name in ["a", "b", "c", "d", "e"] {
        server.seed(config_map(name, "old")).unwrap();
        let mut elsewhere = config_map(name, "other");
        elsewhere["metadata"]["namespace"] = json!("other");
        server.seed(elsewhere).unwrap();
    }
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    let token = first.metadata.continue_.clone().unwrap();

    // Writes between pages: the rest of the list still shows the state of the first page.
    server.update(config_map("d", "new")).unwrap();
    server.seed(config_map("f", "new")).unwrap();
    let mut names: Vec<String> = first
        .items
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    let mut values = Vec::new();
    let mut next = Some(token);
    while let Some(token) = next.take() {
        let page = api
            .list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .unwrap();
        for cm in &page.items {
            names.push(cm.metadata.name.clone().unwrap());
            values.push(cm.data.clone().unwrap()["k"].clone());
        }
        next = page.metadata.continue_.filter(|c| !c.is_empty());
    }

    assert_eq!(names, ["a", "b", "c", "d", "e"]);
    assert!(values.iter().all(|v| v == "old"), "{values:?}");
    // A later list sees the writes, and only the namespace asked for.
    let now = api.list(&ListParams::default().limit(10)).await.unwrap();
    assert_eq!(now.items.len(), 6);
    assert!(
        now.items
            .iter()
            .all(|c| c.metadata.namespace.as_deref() == Some("default"))
    );
}
