//! Bad input on the decoding path ([`Decoder`]) and in the raw source's watch-stream parser:
//! truncated frames, invalid UTF-8, deep nesting, huge strings, wrong types, objects without
//! metadata or a name, duplicate keys, unknown event types, a `Status` in place of an object,
//! arbitrary bytes and arbitrary chunking. Each yields a value or a typed error; nothing panics.
//! An event over [`DecodeOptions::max_event_bytes`] is refused with
//! [`SourceError::EventTooLarge`] however it arrives, and an informer meeting one recovers by
//! relisting.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::StreamBody;
use http_body_util::combinators::BoxBody;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, PartialObjectMeta, PostParams};
use proptest::prelude::*;
use reflex_informer::decode::{DecodeError, DecodeOptions, Decoder};
use reflex_informer::key::ObjectKey;
use reflex_informer::reflector::{BackoffOptions, ReflectorOptions};
use reflex_informer::source::raw::{RawApi, WireOptions};
use reflex_informer::source::{ListParams, ListWatch, SourceError, WatchEvent, WatchParams};
use reflex_informer::{InformerOptions, SharedIndexInformer};
use reflex_testing::FakeApiServer;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const VALID: &str = r#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","namespace":"ns","resourceVersion":"5"},"data":{"k":"v"}}}"#;

/// What decoding one event line must give.
#[derive(Debug)]
enum Want {
    /// An object event whose object has this name (`None`: no name, so no key).
    Named(Option<&'static str>),
    /// A decode error, checked by the predicate.
    Error(fn(&DecodeError) -> bool),
    /// Either an object event or a JSON error (JSON leaves duplicate keys to the decoder).
    ObjectOrJsonError,
}

fn json_error(e: &DecodeError) -> bool {
    matches!(e, DecodeError::Json { .. })
}

/// An event whose object has an unknown field nested `depth` arrays deep.
fn nested(depth: usize) -> String {
    format!(
        r#"{{"type":"ADDED","object":{{"metadata":{{"name":"deep"}},"extra":{}"x"{}}}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

fn cases() -> Vec<(&'static str, Vec<u8>, Want)> {
    let huge = "x".repeat(8 * 1024 * 1024);
    let mut invalid_utf8 = VALID.as_bytes().to_vec();
    let at = VALID.find("\"v\"}").unwrap() + 1;
    invalid_utf8[at] = 0xff;
    vec![
        ("a valid event", VALID.into(), Want::Named(Some("a"))),
        (
            "truncated in the object",
            VALID.as_bytes()[..VALID.len() / 2].to_vec(),
            Want::Error(json_error),
        ),
        (
            "truncated before the last brace",
            VALID.as_bytes()[..VALID.len() - 1].to_vec(),
            Want::Error(json_error),
        ),
        ("empty", Vec::new(), Want::Error(json_error)),
        ("invalid UTF-8 in a string", invalid_utf8, Want::Error(json_error)),
        (
            // Skipped without recursion (serde_json ignores values iteratively), so no limit
            // applies and the stack is safe; a type that keeps the value is refused, below.
            "deep nesting in an unknown field",
            nested(10_000).into(),
            Want::Named(Some("deep")),
        ),
        (
            "a huge string value",
            format!(
                r#"{{"type":"ADDED","object":{{"metadata":{{"name":"big"}},"data":{{"k":"{huge}"}}}}}}"#
            )
            .into(),
            Want::Named(Some("big")),
        ),
        (
            "a number where the name is a string",
            br#"{"type":"ADDED","object":{"metadata":{"name":5}}}"#.to_vec(),
            Want::Error(json_error),
        ),
        (
            "a string where data is a map",
            br#"{"type":"MODIFIED","object":{"metadata":{"name":"a"},"data":"nope"}}"#.to_vec(),
            Want::Error(json_error),
        ),
        (
            "an array where metadata is an object",
            br#"{"type":"ADDED","object":{"metadata":[]}}"#.to_vec(),
            Want::Error(json_error),
        ),
        (
            "a number where the type is a string",
            br#"{"type":1,"object":{}}"#.to_vec(),
            Want::Error(json_error),
        ),
        (
            "an object without metadata",
            br#"{"type":"ADDED","object":{"data":{"k":"v"}}}"#.to_vec(),
            Want::Named(None),
        ),
        (
            "an object without a name",
            br#"{"type":"ADDED","object":{"metadata":{"namespace":"ns"}}}"#.to_vec(),
            Want::Named(None),
        ),
        (
            "a duplicate key in the object",
            br#"{"type":"ADDED","object":{"metadata":{"name":"a"},"data":{},"data":{}}}"#.to_vec(),
            Want::ObjectOrJsonError,
        ),
        (
            "a duplicate type key: the last one counts",
            br#"{"type":"SURPRISE","type":"ADDED","object":{"metadata":{"name":"a"}}}"#.to_vec(),
            Want::Named(Some("a")),
        ),
        (
            "an unknown event type",
            br#"{"type":"SURPRISE","object":{"metadata":{"name":"a"}}}"#.to_vec(),
            Want::Error(|e| matches!(e, DecodeError::UnknownEventType(t) if t == "SURPRISE")),
        ),
        (
            "no type",
            br#"{"object":{"metadata":{"name":"a"}}}"#.to_vec(),
            Want::Error(|e| matches!(e, DecodeError::MissingEventField("type"))),
        ),
        (
            "no object",
            br#"{"type":"ADDED"}"#.to_vec(),
            Want::Error(|e| matches!(e, DecodeError::MissingEventField("object"))),
        ),
        (
            "a Status in place of a ConfigMap",
            br#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"Status","status":"Failure","code":500}}"#.to_vec(),
            Want::Error(json_error),
        ),
        ("not an object", br#"["ADDED"]"#.to_vec(), Want::Error(json_error)),
        ("trailing garbage", format!("{VALID} x").into(), Want::Error(json_error)),
    ]
}

#[test]
fn each_kind_of_bad_event_decodes_to_a_value_or_a_typed_error() {
    let decoder = Decoder::default();
    for (name, line, want) in cases() {
        let got = decoder.decode_event::<ConfigMap>(&line);
        match (&want, &got) {
            (Want::Named(expected), Ok(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                assert_eq!(o.metadata.name.as_deref(), *expected, "{name}");
                if expected.is_none() {
                    assert!(ObjectKey::from_resource(o).is_err(), "{name}: no key");
                }
            }
            (Want::Error(check), Err(e)) => assert!(check(e), "{name}: unexpected error {e:?}"),
            (Want::ObjectOrJsonError, Ok(WatchEvent::Added(_)) | Err(DecodeError::Json { .. })) => {
            }
            _ => panic!("{name}: wanted {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn deep_nesting_kept_by_the_target_type_hits_the_recursion_limit_not_the_stack() {
    for depth in [200, 10_000, 100_000] {
        let got = Decoder::default().decode_event::<DynamicObject>(nested(depth).as_bytes());
        assert!(
            matches!(got, Err(DecodeError::Json { .. })),
            "{depth}: {got:?}"
        );
    }
    let shallow = Decoder::default().decode_event::<DynamicObject>(nested(20).as_bytes());
    assert!(matches!(shallow, Ok(WatchEvent::Added(_))), "{shallow:?}");
}

#[test]
fn an_event_over_the_limit_is_refused_before_it_is_parsed() {
    let decoder = Decoder::new(&DecodeOptions::default().max_event_bytes(64));
    let err = decoder
        .decode_event::<ConfigMap>(VALID.as_bytes())
        .unwrap_err();
    assert!(
        matches!(err, DecodeError::EventTooLarge { limit: 64, size } if size == VALID.len()),
        "{err:?}"
    );
    let at_limit = Decoder::new(&DecodeOptions::default().max_event_bytes(VALID.len()));
    assert!(at_limit.decode_event::<ConfigMap>(VALID.as_bytes()).is_ok());
}

/// Decodes `line` as every kind of object the sources produce; none may panic.
fn decode_all(line: &[u8]) {
    let d = Decoder::default();
    let _ = d.decode_event::<ConfigMap>(line);
    let _ = d.decode_event::<DynamicObject>(line);
    let _ = d.decode_event::<PartialObjectMeta<ConfigMap>>(line);
    let _ = d.decode_list::<ConfigMap>(line);
    let _ = Decoder::full().decode_event::<ConfigMap>(line);
}

/// JSON values of bounded depth with the keys an event and an object have, so that generated
/// documents reach the decoder's object and metadata paths, not only its first error.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let key = prop_oneof![
        Just("type".to_owned()),
        Just("object".to_owned()),
        Just("metadata".to_owned()),
        Just("name".to_owned()),
        Just("namespace".to_owned()),
        Just("managedFields".to_owned()),
        Just("resourceVersion".to_owned()),
        Just("data".to_owned()),
        Just("kind".to_owned()),
        "[a-z]{1,6}",
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Value::from(if f.is_finite() { f } else { 0.0 })),
        prop_oneof![
            Just("ADDED".to_owned()),
            Just("BOOKMARK".to_owned()),
            Just("ERROR".to_owned()),
            ".{0,12}"
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(6, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::vec((key.clone(), inner), 0..5)
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics_the_decoder(value in json_value()) {
        decode_all(&serde_json::to_vec(&value).unwrap());
        let event = json!({"type": "ADDED", "object": value});
        decode_all(&serde_json::to_vec(&event).unwrap());
    }

    #[test]
    fn every_truncation_of_a_valid_event_is_a_json_error(cut in 0..VALID.len()) {
        let got = Decoder::default().decode_event::<ConfigMap>(&VALID.as_bytes()[..cut]);
        prop_assert!(matches!(got, Err(DecodeError::Json { .. })), "{:?}", got);
    }

    #[test]
    fn a_corrupted_byte_never_panics_and_an_ok_result_is_an_event(
        at in 0..VALID.len(),
        byte in any::<u8>(),
    ) {
        let mut line = VALID.as_bytes().to_vec();
        line[at] = byte;
        decode_all(&line);
    }
}

// ---------------------------------------------------------------------------------------------
// The raw source's watch-stream parser, behind a canned HTTP body.

/// A kube client answering every request with 200 and `chunks` as separate body frames.
fn canned(chunks: Vec<Vec<u8>>) -> kube::Client {
    canned_with(None, chunks).0
}

/// The headers of the requests a canned client has sent.
type Requests = Arc<parking_lot::Mutex<Vec<http::HeaderMap>>>;

/// A client whose every request is answered 200 with `chunks`, under `Content-Encoding:
/// encoding` when given, and which records each request's headers.
fn canned_with(encoding: Option<&'static str>, chunks: Vec<Vec<u8>>) -> (kube::Client, Requests) {
    let requests = Requests::default();
    let log = requests.clone();
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        log.lock().push(req.headers().clone());
        let frames = chunks
            .clone()
            .into_iter()
            .map(|c| Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(c))));
        async move {
            let body = BoxBody::new(StreamBody::new(futures::stream::iter(frames)));
            let mut response = http::Response::builder().status(200);
            if let Some(encoding) = encoding {
                response = response.header(http::header::CONTENT_ENCODING, encoding);
            }
            response.body(body)
        }
    });
    (kube::Client::new(service, "default"), requests)
}

/// One gzip member holding `data`.
fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// What one item of a watch stream was: an object's name, another event, or an error kind.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Object(Option<String>),
    Other,
    Malformed,
    TooLarge,
    Error(String),
}

fn seen(item: Result<WatchEvent<ConfigMap>, SourceError>) -> Seen {
    match item {
        Ok(WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o)) => {
            Seen::Object(o.metadata.name)
        }
        Ok(_) => Seen::Other,
        Err(e) if e.is_malformed() => Seen::Malformed,
        Err(e) if e.is_event_too_large() => Seen::TooLarge,
        Err(e) => Seen::Error(e.to_string()),
    }
}

async fn watch_items(chunks: Vec<Vec<u8>>, options: &DecodeOptions) -> Vec<Seen> {
    watch_items_encoded(None, chunks, options).await
}

async fn watch_items_encoded(
    encoding: Option<&'static str>,
    chunks: Vec<Vec<u8>>,
    options: &DecodeOptions,
) -> Vec<Seen> {
    let raw: RawApi<ConfigMap> =
        RawApi::namespaced(canned_with(encoding, chunks).0, "ns").with_decode_options(options);
    let stream = raw.watch(&WatchParams::default()).await.unwrap();
    stream.map(seen).collect().await
}

/// What decoding each line by itself gives (the parser's reference).
fn per_line(lines: &[Vec<u8>], options: &DecodeOptions) -> Vec<Seen> {
    let d = Decoder::new(options);
    lines
        .iter()
        .filter(|l| !l.trim_ascii().is_empty())
        .map(|l| {
            seen(
                d.decode_event::<ConfigMap>(l.trim_ascii())
                    .map_err(|e| match e {
                        DecodeError::EventTooLarge { limit, size } => SourceError::EventTooLarge {
                            context: String::new(),
                            limit,
                            size,
                        },
                        e => SourceError::Malformed {
                            context: String::new(),
                            source: Some(Box::new(e)),
                        },
                    }),
            )
        })
        .collect()
}

/// Splits `body` at the given cut points (sorted, deduplicated, inside the body).
fn chunked(body: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut chunks = Vec::new();
    let mut from = 0;
    for c in cuts.into_iter().chain([body.len()]) {
        chunks.push(body[from..c].to_vec());
        from = c;
    }
    chunks
}

fn line_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(VALID.as_bytes().to_vec()),
        Just(br#"{"type":"SURPRISE","object":{}}"#.to_vec()),
        Just(br#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9"}}}"#.to_vec()),
        Just(
            br#"{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired"}}"#
                .to_vec()
        ),
        Just(b"{not json".to_vec()),
        Just(b"   ".to_vec()),
        Just(vec![0xff, 0xfe, b'{']),
        prop::collection::vec(
            any::<u8>().prop_filter("no newline", |b| *b != b'\n'),
            0..64
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn watch_lines_parse_alike_however_the_stream_is_chunked(
        lines in prop::collection::vec(line_strategy(), 0..8),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let options = DecodeOptions::default();
        let mut body = Vec::new();
        for l in &lines {
            body.extend_from_slice(l);
            body.push(b'\n');
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let got = rt.block_on(watch_items(chunked(&body, &cuts), &options));
        prop_assert_eq!(got, per_line(&lines, &options));
    }

    #[test]
    fn gzip_watch_lines_parse_alike_however_members_and_chunks_fall(
        lines in prop::collection::vec(line_strategy(), 0..8),
        member_ends in prop::collection::vec(any::<bool>(), 0..8),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        // Lines grouped into gzip members (one per event, as 1.37 flushes them, or several),
        // the members concatenated and the body cut anywhere, headers and trailers included.
        let options = DecodeOptions::default();
        let (mut body, mut member) = (Vec::new(), Vec::new());
        for (i, l) in lines.iter().enumerate() {
            member.extend_from_slice(l);
            member.push(b'\n');
            if member_ends.get(i).copied().unwrap_or(true) || i + 1 == lines.len() {
                body.extend_from_slice(&gzip(&std::mem::take(&mut member)));
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let got = rt.block_on(watch_items_encoded(Some("gzip"), chunked(&body, &cuts), &options));
        prop_assert_eq!(got, per_line(&lines, &options));
    }

    #[test]
    fn a_gzip_list_decodes_however_it_is_chunked(
        count in 0usize..40,
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let items: Vec<serde_json::Value> = (0..count)
            .map(|i| json!({"metadata": {"name": format!("cm-{i}"), "namespace": "ns",
                "managedFields": [{"manager": "m"}]}, "data": {"k": "v".repeat(i)}}))
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "ConfigMapList",
            "metadata": {"resourceVersion": "42"}, "items": items});
        let body = gzip(&serde_json::to_vec(&list).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let page = rt.block_on(async {
            let (client, _) = canned_with(Some("gzip"), chunked(&body, &cuts));
            let raw: RawApi<ConfigMap> = RawApi::namespaced(client, "ns");
            raw.list(&ListParams::default()).await
        }).unwrap();
        prop_assert_eq!(page.resource_version.as_str(), "42");
        prop_assert_eq!(page.items.len(), count);
        for (i, item) in page.items.iter().enumerate() {
            prop_assert_eq!(item.metadata.name.clone(), Some(format!("cm-{i}")));
            prop_assert!(item.metadata.managed_fields.is_none());
        }
    }

    #[test]
    fn an_event_over_the_limit_ends_the_watch_however_it_arrives(
        limit in 16usize..256,
        extra in 1usize..512,
        terminated in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        // A valid line, an oversized one (complete or not), and a valid line never reached.
        let small = br#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"1"}}}"#;
        let limit = limit + small.len();
        let options = DecodeOptions::default().max_event_bytes(limit);
        let big = format!(
            "{{\"type\":\"ADDED\",\"object\":{{\"data\":{{\"k\":\"{}\"}}}}}}",
            "y".repeat(limit + extra)
        );
        let mut body = small.to_vec();
        body.push(b'\n');
        body.extend_from_slice(big.as_bytes());
        if terminated {
            body.push(b'\n');
            body.extend_from_slice(small);
            body.push(b'\n');
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let got = rt.block_on(watch_items(chunked(&body, &cuts), &options));
        prop_assert_eq!(got, vec![Seen::Other, Seen::TooLarge]);
    }
}

#[tokio::test]
async fn a_huge_unterminated_event_is_refused_once_it_passes_the_limit() {
    // 8 MiB of one line in 64 KiB chunks against a 1 MiB limit: refused after about 1 MiB.
    let chunk = vec![b'x'; 64 * 1024];
    let chunks = vec![chunk; 128];
    let options = DecodeOptions::default().max_event_bytes(1024 * 1024);
    let raw: RawApi<ConfigMap> =
        RawApi::namespaced(canned(chunks), "ns").with_decode_options(&options);
    let mut stream = raw.watch(&WatchParams::default()).await.unwrap();
    match stream.next().await {
        Some(Err(SourceError::EventTooLarge { limit, size, .. })) => {
            assert_eq!(limit, 1024 * 1024);
            assert!(size > limit && size <= limit + 64 * 1024, "{size}");
        }
        other => panic!("expected EventTooLarge, got {other:?}"),
    }
    assert!(
        stream.next().await.is_none(),
        "the watch ends after the refusal"
    );
}

#[tokio::test]
async fn a_gzip_bomb_is_refused_near_the_limit_without_inflating_it_all() {
    // 32 MiB of one line inflate from about 100 KiB; the limit is 1 MiB.
    let body = gzip(&vec![b'y'; 32 * 1024 * 1024]);
    assert!(body.len() < 512 * 1024);
    let options = DecodeOptions::default().max_event_bytes(1024 * 1024);
    let got = watch_items_encoded(Some("gzip"), vec![body], &options).await;
    assert_eq!(got, vec![Seen::TooLarge]);
    let (client, _) = canned_with(Some("gzip"), vec![gzip(&vec![b'y'; 32 * 1024 * 1024])]);
    let raw: RawApi<ConfigMap> = RawApi::namespaced(client, "ns").with_decode_options(&options);
    let mut stream = raw.watch(&WatchParams::default()).await.unwrap();
    match stream.next().await {
        Some(Err(SourceError::EventTooLarge { size, .. })) => {
            // One decoding step adds at most about 4 MiB past the limit.
            assert!(size < 6 * 1024 * 1024, "{size}");
        }
        other => panic!("expected EventTooLarge, got {other:?}"),
    }
}

#[tokio::test]
async fn a_corrupt_gzip_watch_ends_with_a_malformed_error_after_the_good_events() {
    let mut body = gzip(format!("{VALID}\n").as_bytes());
    body.extend_from_slice(b"this is not a gzip member");
    body.extend_from_slice(&gzip(format!("{VALID}\n").as_bytes()));
    let got = watch_items_encoded(
        Some("gzip"),
        chunked(&body, &[7, 40]),
        &DecodeOptions::default(),
    )
    .await;
    assert_eq!(got, vec![Seen::Object(Some("a".into())), Seen::Malformed]);
}

#[tokio::test]
async fn a_gzip_watch_cut_inside_a_member_ends_like_a_closed_connection() {
    let mut body = gzip(format!("{VALID}\n").as_bytes());
    let second = gzip(format!("{VALID}\n").as_bytes());
    body.extend_from_slice(&second[..second.len() / 2]);
    let got = watch_items_encoded(Some("gzip"), vec![body], &DecodeOptions::default()).await;
    assert_eq!(
        got,
        vec![Seen::Object(Some("a".into()))],
        "no error: the watch is resumed"
    );
}

#[tokio::test]
async fn an_unknown_content_encoding_is_a_typed_error() {
    let (client, _) = canned_with(Some("br"), vec![VALID.as_bytes().to_vec()]);
    let raw: RawApi<ConfigMap> = RawApi::namespaced(client.clone(), "ns");
    match raw.watch(&WatchParams::default()).await {
        Err(e) => assert!(e.is_malformed() && e.to_string().contains("br"), "{e}"),
        Ok(_) => panic!("a br-encoded watch was accepted"),
    }
    let err = raw.list(&ListParams::default()).await.unwrap_err();
    assert!(
        err.is_malformed() && err.to_string().contains("br"),
        "{err}"
    );
}

/// One source configuration, the `Accept-Encoding` its requests must send and the `Accept`
/// (`None`: one without a `drop` parameter).
type WireCase = (
    &'static str,
    WireOptions,
    DecodeOptions,
    bool,
    &'static str,
    Option<&'static str>,
);

#[tokio::test]
async fn wire_options_set_accept_encoding_and_the_drop_parameter() {
    let header = |h: &http::HeaderMap, name: http::header::HeaderName| {
        h.get(name).map(|v| v.to_str().unwrap().to_owned())
    };
    let lean = WireOptions {
        drop_managed_fields: true,
        ..WireOptions::default()
    };
    let list = br#"{"metadata":{"resourceVersion":"1"},"items":[]}"#.to_vec();
    let cases: Vec<WireCase> = vec![
        (
            "default",
            WireOptions::default(),
            DecodeOptions::default(),
            false,
            "gzip",
            None,
        ),
        (
            "identity",
            WireOptions::identity(),
            DecodeOptions::default(),
            false,
            "identity",
            None,
        ),
        (
            "drop",
            lean.clone(),
            DecodeOptions::default(),
            false,
            "gzip",
            Some("application/json;drop=metadata.managedFields"),
        ),
        (
            "drop, metadata only",
            lean.clone(),
            DecodeOptions::default(),
            true,
            "gzip",
            Some(
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1;drop=metadata.managedFields,application/json;drop=metadata.managedFields",
            ),
        ),
        (
            "drop, but managedFields kept",
            lean,
            DecodeOptions::full(),
            false,
            "gzip",
            None,
        ),
    ];
    for (name, wire, decode, metadata, encoding, accept) in cases {
        let (client, requests) = canned_with(None, vec![list.clone()]);
        if metadata {
            let raw =
                RawApi::<PartialObjectMeta<ConfigMap>>::metadata_namespaced(client, "ns", &())
                    .with_decode_options(&decode)
                    .with_wire_options(&wire);
            raw.list(&ListParams::default()).await.unwrap();
        } else {
            let raw: RawApi<ConfigMap> = RawApi::namespaced(client, "ns")
                .with_decode_options(&decode)
                .with_wire_options(&wire);
            raw.list(&ListParams::default()).await.unwrap();
            let _ = raw.watch(&WatchParams::default()).await.unwrap();
        }
        for sent in requests.lock().iter() {
            assert_eq!(
                header(sent, http::header::ACCEPT_ENCODING).as_deref(),
                Some(encoding),
                "{name}"
            );
            let accept_sent = header(sent, http::header::ACCEPT);
            match accept {
                Some(want) => assert_eq!(accept_sent.as_deref(), Some(want), "{name}"),
                None => assert!(
                    !accept_sent.unwrap_or_default().contains("drop="),
                    "{name}: no drop parameter"
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// An informer meeting an oversized event recovers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_informer_relists_after_an_oversized_watch_event_and_holds_the_object() {
    let server = FakeApiServer::start().await.unwrap();
    let client = server.client().unwrap();
    let options = DecodeOptions::default().max_event_bytes(4096);
    let source: RawApi<ConfigMap> =
        RawApi::namespaced(client.clone(), "default").with_decode_options(&options);
    let informer = SharedIndexInformer::new(
        Arc::new(source),
        InformerOptions {
            // Streaming lists: their initial events are watch events, under the same limit, so
            // a streaming relist cannot carry the object either; the round after lists in pages.
            reflector: ReflectorOptions {
                streaming_lists: true,
                backoff: BackoffOptions {
                    initial: Duration::from_millis(10),
                    cap: Duration::from_millis(100),
                    ..BackoffOptions::default()
                },
                ..ReflectorOptions::default()
            },
            ..InformerOptions::default()
        },
    );
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let informer = informer.clone();
        let shutdown = shutdown.clone();
        async move { informer.run(shutdown).await }
    });
    assert!(informer.wait_for_sync().await);
    let stats = informer
        .reflector_stats()
        .expect("a running informer has a reflector");
    let relists = stats.relists();

    // Over the watch limit (lists have none): the watch refuses it, the round ends, the relist
    // brings it in.
    let big: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "big", "namespace": "default"},
        "data": {"k": "z".repeat(16 * 1024)},
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &big)
        .await
        .unwrap();
    let key = ObjectKey::new(Some("default"), "big");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while informer.indexer().get_by_key(&key).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the oversized object never reached the store: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stats.relists() > relists, "{stats:?}");
    assert!(stats.errors() >= 1, "{stats:?}");
    let cached = informer.indexer().get_by_key(&key).unwrap();
    assert_eq!(cached.data.as_ref().unwrap()["k"].len(), 16 * 1024);

    shutdown.cancel();
    run.await.unwrap().unwrap();
    server.shutdown().await;
}
