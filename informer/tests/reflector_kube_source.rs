//! The `kube::Api` source against a canned HTTP service: the requests it builds (URL query
//! parameters) and how it decodes responses, including malformed watch lines.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::PartialObjectMeta;
use parking_lot::Mutex;
use reflex_informer::source::api::MetadataOnly;
use reflex_informer::source::{ListParams, ListWatch, WatchEvent, WatchParams};

/// A kube client whose every request is recorded and answered with `status` and `body`.
fn client(status: u16, body: &'static str) -> (kube::Client, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        record.lock().push(req.uri().to_string());
        async move {
            http::Response::builder()
                .status(status)
                .body(Full::new(Bytes::from_static(body.as_bytes())))
        }
    });
    (kube::Client::new(service, "default"), seen)
}

fn query(uri: &str) -> Vec<(String, String)> {
    let q = uri.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut pairs: Vec<(String, String)> = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    pairs.sort();
    pairs
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<_> = list
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

const LIST: &str = r#"{"kind":"ConfigMapList","apiVersion":"v1","metadata":{"resourceVersion":"12","continue":"tok"},
"items":[{"metadata":{"name":"a","namespace":"ns","resourceVersion":"11"}}]}"#;

#[tokio::test]
async fn list_sends_limit_rv_and_selectors_and_returns_the_page() {
    let (client, seen) = client(200, LIST);
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, "ns");
    let page = ListWatch::list(
        &api,
        &ListParams {
            limit: Some(500),
            resource_version: Some("7".into()),
            label_selector: Some("app=web".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(page.resource_version, "12");
    assert_eq!(page.continue_token.as_deref(), Some("tok"));
    assert_eq!(page.items[0].metadata.name.as_deref(), Some("a"));
    let uri = seen.lock()[0].clone();
    assert!(
        uri.starts_with("/api/v1/namespaces/ns/configmaps?"),
        "{uri}"
    );
    assert_eq!(
        query(&uri),
        pairs(&[
            ("limit", "500"),
            ("resourceVersion", "7"),
            ("labelSelector", "app%3Dweb")
        ])
    );
}

#[tokio::test]
async fn list_error_status_is_typed_and_gone_is_recognised() {
    let (client, _) = client(
        410,
        r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old resource version: 1 (5)","reason":"Expired","code":410}"#,
    );
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, "ns");
    let err = ListWatch::list(&api, &ListParams::default())
        .await
        .unwrap_err();
    assert!(err.is_gone(), "{err:?}");
}

#[tokio::test]
async fn watch_sends_rv_timeout_bookmarks_and_decodes_events_and_malformed_lines() {
    let body = concat!(
        r#"{"type":"ADDED","object":{"metadata":{"name":"a","namespace":"ns","resourceVersion":"13"}}}"#,
        "\n",
        "{this is not json\n",
        r#"{"type":"BOOKMARK","object":{"kind":"ConfigMap","apiVersion":"v1","metadata":{"resourceVersion":"14"}}}"#,
        "\n",
        r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","code":410,"reason":"Expired","message":"too old resource version"}}"#,
        "\n"
    );
    let (client, seen) = client(200, body);
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, "ns");
    let stream = ListWatch::watch(
        &api,
        &WatchParams {
            resource_version: "12".into(),
            timeout_seconds: Some(321),
            allow_bookmarks: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let events: Vec<_> = stream.collect().await;
    assert_eq!(events.len(), 4);
    assert!(
        matches!(&events[0], Ok(WatchEvent::Added(cm)) if cm.metadata.name.as_deref() == Some("a"))
    );
    assert!(matches!(&events[1], Err(e) if e.is_malformed()));
    assert!(matches!(
        &events[2],
        Ok(WatchEvent::Bookmark { resource_version, initial_events_end: false }) if resource_version == "14"
    ));
    assert!(matches!(&events[3], Ok(WatchEvent::Error(s)) if s.is_expired()));
    assert_eq!(
        query(&seen.lock()[0]),
        pairs(&[
            ("watch", "true"),
            ("timeoutSeconds", "321"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", "12"),
        ])
    );
}

#[tokio::test]
async fn metadata_only_source_asks_for_partial_object_metadata() {
    let (client, seen) = client(
        200,
        r#"{"kind":"PartialObjectMetadataList","apiVersion":"meta.k8s.io/v1","metadata":{"resourceVersion":"3"},
        "items":[{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{"name":"a","namespace":"ns","resourceVersion":"2"}}]}"#,
    );
    let source = MetadataOnly(kube::Api::<ConfigMap>::namespaced(client, "ns"));
    let page: reflex_informer::source::ListPage<PartialObjectMeta<ConfigMap>> =
        source.list(&ListParams::default()).await.unwrap();
    assert_eq!(page.items[0].metadata.name.as_deref(), Some("a"));
    assert_eq!(page.resource_version, "3");
    assert!(seen.lock()[0].starts_with("/api/v1/namespaces/ns/configmaps"));
}
