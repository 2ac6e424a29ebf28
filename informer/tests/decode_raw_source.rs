//! The raw source against a canned HTTP service behind `kube::Client`: it sends the same
//! requests as the `kube::Api` source, decodes list pages and watch lines (split across chunks
//! however the server sends them) with skipping, into full types and projections, and maps
//! error statuses and malformed lines to typed errors.

#[path = "support/objects.rs"]
mod objects;

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::StreamBody;
use http_body_util::combinators::BoxBody;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use objects::{Gen, list_json};
use parking_lot::Mutex;
use reflex_informer::decode::{DecodeOptions, SkipPath};
use reflex_informer::source::raw::RawApi;
use reflex_informer::source::{ListParams, ListWatch, WatchEvent, WatchParams};

/// Each request's URI, Accept-Encoding and Accept headers.
type Recorded = Arc<Mutex<Vec<(String, Option<String>, Option<String>)>>>;

/// A kube client answering every request with `status` and `chunks` (as separate body frames),
/// recording each request's URI, Accept-Encoding and Accept headers.
fn canned(status: u16, chunks: Vec<Vec<u8>>) -> (kube::Client, Recorded) {
    let seen: Recorded = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        record.lock().push((
            req.uri().to_string(),
            req.headers()
                .get(http::header::ACCEPT_ENCODING)
                .map(|v| v.to_str().unwrap().to_owned()),
            req.headers()
                .get(http::header::ACCEPT)
                .map(|v| v.to_str().unwrap().to_owned()),
        ));
        let frames = chunks
            .clone()
            .into_iter()
            .map(|c| Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(c))));
        async move {
            let body = BoxBody::new(StreamBody::new(futures::stream::iter(frames)));
            http::Response::builder().status(status).body(body)
        }
    });
    (kube::Client::new(service, "default"), seen)
}

fn sorted_query(uri: &str) -> Vec<String> {
    let mut q: Vec<String> = uri
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    q.sort();
    q
}

#[tokio::test]
async fn list_sends_the_api_sources_query_and_decodes_items_without_managed_fields() {
    let mut g = Gen::new(1);
    let pods: Vec<_> = (0..20).map(|i| g.pod("ns", i)).collect();
    let body = list_json("PodList", "500", &pods);
    // The body arrives in small chunks, as over a real connection.
    let chunks: Vec<Vec<u8>> = body.chunks(1000).map(<[u8]>::to_vec).collect();
    let (client, seen) = canned(200, chunks);
    let raw: RawApi<Pod> = RawApi::namespaced(client, "ns");
    let params = ListParams {
        limit: Some(500),
        resource_version: Some("7".into()),
        label_selector: Some("app=web".into()),
        ..Default::default()
    };
    let page = raw.list(&params).await.unwrap();
    assert_eq!(page.resource_version, "500");
    assert_eq!(page.items.len(), 20);
    for (item, json) in page.items.iter().zip(&pods) {
        let mut full: Pod = serde_json::from_value(json.clone()).unwrap();
        assert!(full.metadata.managed_fields.is_some());
        full.metadata.managed_fields = None;
        assert_eq!(**item, full);
    }

    // Same URL as kube::Api's source for the same parameters.
    let (api_client, api_seen) = canned(200, vec![body.clone()]);
    let api: kube::Api<Pod> = kube::Api::namespaced(api_client, "ns");
    ListWatch::list(&api, &params).await.unwrap();
    let raw_uri = seen.lock()[0].0.clone();
    let api_uri = api_seen.lock()[0].0.clone();
    assert!(
        raw_uri.starts_with("/api/v1/namespaces/ns/pods?"),
        "{raw_uri}"
    );
    assert_eq!(sorted_query(&raw_uri), sorted_query(&api_uri));
    assert_eq!(raw.describe(), "/api/v1/namespaces/ns/pods (raw)");
}

#[tokio::test]
async fn list_error_statuses_are_typed_like_the_api_source() {
    let cases: &[(u16, &str, u16, bool)] = &[
        (
            410,
            r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old resource version: 1 (5)","reason":"Expired","code":410}"#,
            410,
            true,
        ),
        (
            429,
            r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"slow down","reason":"TooManyRequests","code":429}"#,
            429,
            false,
        ),
        (502, "<html>bad gateway</html>", 502, false),
    ];
    for (http_status, body, code, gone) in cases {
        let (client, _) = canned(*http_status, vec![body.as_bytes().to_vec()]);
        let raw: RawApi<Pod> = RawApi::all(client);
        let err = raw.list(&ListParams::default()).await.unwrap_err();
        let status = err
            .status()
            .unwrap_or_else(|| panic!("{http_status}: {err:?}"));
        assert_eq!(status.code, *code, "{http_status}");
        assert_eq!(err.is_gone(), *gone, "{http_status}");
        assert_eq!(err.is_too_many_requests(), *http_status == 429);
    }
    let (client, _) = canned(
        410,
        vec![br#"{"kind":"Status","code":410,"reason":"Expired"}"#.to_vec()],
    );
    let raw: RawApi<Pod> = RawApi::all(client);
    let err = raw.watch(&WatchParams::default()).await.err().unwrap();
    assert!(err.is_gone(), "{err:?}");
}

#[tokio::test]
async fn malformed_list_is_a_malformed_error_naming_the_request() {
    let (client, _) = canned(200, vec![br#"{"items":[{"metadata":{"name":"#.to_vec()]);
    let raw: RawApi<Pod> = RawApi::namespaced(client, "ns");
    let err = raw.list(&ListParams::default()).await.unwrap_err();
    assert!(err.is_malformed(), "{err:?}");
    assert!(
        err.to_string().contains("/api/v1/namespaces/ns/pods"),
        "{err}"
    );
}

#[tokio::test]
async fn watch_lines_split_across_chunks_decode_in_order_and_a_bad_line_does_not_end_the_watch() {
    let stream = concat!(
        r#"{"type":"ADDED","object":{"metadata":{"name":"a","namespace":"ns","resourceVersion":"13","managedFields":[{"manager":"m"}]}}}"#,
        "\n\n",
        "{this is not json\r\n",
        r#"{"type":"MODIFIED","object":{"metadata":{"name":"a","namespace":"ns","resourceVersion":"14"}}}"#,
        "\n",
        r#"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"15"}}}"#,
        "\n",
        r#"{"type":"DELETED","object":{"metadata":{"name":"a","namespace":"ns","resourceVersion":"16"}}}"#,
    );
    // Every way of cutting the stream into two chunks gives the same events.
    for cut in (0..stream.len()).step_by(7) {
        let (a, b) = stream.as_bytes().split_at(cut);
        let (client, seen) = canned(200, vec![a.to_vec(), b.to_vec()]);
        let raw: RawApi<Pod> = RawApi::namespaced(client, "ns");
        let events: Vec<_> = raw
            .watch(&WatchParams {
                resource_version: "12".into(),
                timeout_seconds: Some(300),
                allow_bookmarks: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(events.len(), 5, "cut at {cut}: {events:?}");
        match &events[0] {
            Ok(WatchEvent::Added(p)) => {
                assert_eq!(p.metadata.resource_version.as_deref(), Some("13"));
                assert!(p.metadata.managed_fields.is_none());
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
        let err = events[1].as_ref().unwrap_err();
        assert!(
            err.is_malformed() && err.to_string().contains("watch of"),
            "{err}"
        );
        assert!(
            matches!(&events[2], Ok(WatchEvent::Modified(p)) if p.metadata.resource_version.as_deref() == Some("14"))
        );
        assert!(
            matches!(&events[3], Ok(WatchEvent::Bookmark { resource_version, .. }) if resource_version == "15")
        );
        assert!(
            matches!(&events[4], Ok(WatchEvent::Deleted(p)) if p.metadata.resource_version.as_deref() == Some("16"))
        );
        let (uri, encoding, _) = seen.lock()[0].clone();
        let q = sorted_query(&uri);
        for want in [
            "watch=true",
            "resourceVersion=12",
            "timeoutSeconds=300",
            "allowWatchBookmarks=true",
        ] {
            assert!(q.iter().any(|p| p == want), "{want} in {uri}");
        }
        // The watch asks for gzip (the default WireOptions); a plain answer is read as it is.
        assert_eq!(encoding.as_deref(), Some("gzip"));
    }
}

#[tokio::test]
async fn a_watch_cut_mid_event_ends_without_an_error() {
    let stream = concat!(
        r#"{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"13"}}}"#,
        "\n",
        r#"{"type":"MODIFIED","object":{"metadata":{"na"#,
    );
    let (client, _) = canned(200, vec![stream.as_bytes().to_vec()]);
    let raw: RawApi<Pod> = RawApi::all(client);
    let events: Vec<_> = raw
        .watch(&WatchParams::default())
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(events.len(), 1);
    assert!(matches!(events[0], Ok(WatchEvent::Added(_))));
}

/// A projection of a Pod: name and node only.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct PodNode {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: PodNodeSpec,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
struct PodNodeSpec {
    #[serde(rename = "nodeName")]
    node_name: Option<String>,
}

reflex_informer::impl_projection!(PodNode => Pod);

#[tokio::test]
async fn projections_list_and_watch_at_the_full_types_url_with_extra_skips() {
    assert_eq!(PodNode::kind(&()), "Pod");
    assert_eq!(PodNode::api_version(&()), "v1");
    let mut g = Gen::new(2);
    let pods: Vec<_> = (0..10).map(|i| g.pod("ns", i)).collect();
    let (client, seen) = canned(200, vec![list_json("PodList", "9", &pods)]);
    let raw: RawApi<PodNode> = RawApi::namespaced(client, "ns").with_decode_options(
        &DecodeOptions::default().skip(
            SkipPath::pointer(
                "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration",
            )
            .unwrap(),
        ),
    );
    let page = raw.list(&ListParams::default()).await.unwrap();
    assert!(seen.lock()[0].0.starts_with("/api/v1/namespaces/ns/pods"));
    for (p, json) in page.items.iter().zip(&pods) {
        let full: Pod = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(p.metadata.name, full.metadata.name);
        assert_eq!(p.spec.node_name, full.spec.unwrap().node_name);
        assert!(p.metadata.managed_fields.is_none());
        let annotations = p.metadata.annotations.clone().unwrap_or_default();
        assert!(!annotations.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
        assert_eq!(p.meta().namespace.as_deref(), Some("ns"));
    }

    let line = format!(
        "{{\"type\":\"ADDED\",\"object\":{}}}\n",
        serde_json::to_string(&pods[0]).unwrap()
    );
    let (client, _) = canned(200, vec![line.into_bytes()]);
    let raw: RawApi<PodNode> = RawApi::namespaced(client, "ns");
    let events: Vec<_> = raw
        .watch(&WatchParams::default())
        .await
        .unwrap()
        .collect()
        .await;
    assert!(matches!(&events[..], [Ok(WatchEvent::Added(p))] if *p == *page.items[0]));
}

#[tokio::test]
async fn metadata_sources_ask_for_partial_object_metadata_and_skip_managed_fields() {
    use kube::api::PartialObjectMeta;
    use reflex_informer::source::raw::{METADATA_LIST_ACCEPT, METADATA_WATCH_ACCEPT};

    let mut g = Gen::new(3);
    let pods: Vec<_> = (0..4).map(|i| g.pod("ns", i)).collect();
    // A server that ignores the Accept header answers with full objects: they decode into
    // metadata all the same.
    let (client, seen) = canned(200, vec![list_json("PodList", "12", &pods)]);
    let raw = RawApi::<PartialObjectMeta<Pod>>::metadata_namespaced(client, "ns", &());
    assert!(raw.is_metadata_only());
    let page = raw.list(&ListParams::default()).await.unwrap();
    let (uri, _, accept) = seen.lock()[0].clone();
    assert!(uri.starts_with("/api/v1/namespaces/ns/pods"), "{uri}");
    assert_eq!(accept.as_deref(), Some(METADATA_LIST_ACCEPT));
    assert!(
        METADATA_LIST_ACCEPT
            .starts_with("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1")
    );
    assert_eq!(page.resource_version, "12");
    assert_eq!(page.items.len(), pods.len());
    for (p, json) in page.items.iter().zip(&pods) {
        assert_eq!(
            p.metadata.name.as_deref(),
            json["metadata"]["name"].as_str()
        );
        assert!(p.metadata.managed_fields.is_none());
        assert!(p.metadata.resource_version.is_some());
    }

    let meta_line = format!(
        "{{\"type\":\"MODIFIED\",\"object\":{{\"kind\":\"PartialObjectMetadata\",\
         \"apiVersion\":\"meta.k8s.io/v1\",\"metadata\":{}}}}}\n",
        serde_json::to_string(&pods[1]["metadata"]).unwrap()
    );
    let (client, seen) = canned(200, vec![meta_line.into_bytes()]);
    let raw = RawApi::<PartialObjectMeta<Pod>>::metadata_all(client, &());
    let events: Vec<_> = raw
        .watch(&WatchParams::default())
        .await
        .unwrap()
        .collect()
        .await;
    let (uri, _, accept) = seen.lock()[0].clone();
    assert!(uri.starts_with("/api/v1/pods?"), "{uri}");
    assert!(uri.contains("watch=true"), "{uri}");
    assert_eq!(accept.as_deref(), Some(METADATA_WATCH_ACCEPT));
    match &events[..] {
        [Ok(WatchEvent::Modified(p))] => {
            assert_eq!(
                p.metadata.name.as_deref(),
                pods[1]["metadata"]["name"].as_str()
            );
            assert!(p.metadata.managed_fields.is_none());
        }
        other => panic!("expected one MODIFIED event, got {other:?}"),
    }

    // A full-object source keeps kube's Accept header.
    let (client, seen) = canned(200, vec![list_json("PodList", "1", &[])]);
    RawApi::<Pod>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap();
    let accept = seen.lock()[0].2.clone().unwrap_or_default();
    assert!(!accept.contains("PartialObjectMetadata"), "{accept}");
}
