//! Bad requests to `FakeApiServer`: malformed JSON bodies, wrong types in known fields, bodies
//! that are not objects, JSON patches of any shape, protobuf of any bytes, and bodies over the
//! size limit. Each is answered with a 4xx `Status` (or succeeds, when the body is acceptable),
//! never a 5xx, a panic or a dropped connection; the server keeps serving afterwards.

use std::time::Duration;

use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reflex_testing::{FakeApiServer, FakeConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CMS: &str = "/api/v1/namespaces/default/configmaps";

/// One request shape: method, path, content type.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Create,
    CreateNamespace,
    CreateProtobuf,
    Update,
    MergePatch,
    JsonPatch,
    ApplyExisting,
    ApplyMissing,
    StatusPatch,
    DeleteWithOptions,
}

impl Shape {
    fn request(self, body: Vec<u8>) -> http::Request<kube::client::Body> {
        let (method, path, content_type) = match self {
            Shape::Create => ("POST", CMS.to_owned(), "application/json"),
            Shape::CreateNamespace => ("POST", "/api/v1/namespaces".to_owned(), "application/json"),
            Shape::CreateProtobuf => (
                "POST",
                CMS.to_owned(),
                "application/vnd.kubernetes.protobuf",
            ),
            Shape::Update => ("PUT", format!("{CMS}/target"), "application/json"),
            Shape::MergePatch => (
                "PATCH",
                format!("{CMS}/target"),
                "application/merge-patch+json",
            ),
            Shape::JsonPatch => (
                "PATCH",
                format!("{CMS}/target"),
                "application/json-patch+json",
            ),
            Shape::ApplyExisting => (
                "PATCH",
                format!("{CMS}/target?fieldManager=test"),
                "application/apply-patch+yaml",
            ),
            Shape::ApplyMissing => (
                "PATCH",
                format!("{CMS}/applied?fieldManager=test"),
                "application/apply-patch+yaml",
            ),
            Shape::StatusPatch => (
                "PATCH",
                "/api/v1/namespaces/default/status".to_owned(),
                "application/merge-patch+json",
            ),
            Shape::DeleteWithOptions => ("DELETE", format!("{CMS}/absent"), "application/json"),
        };
        http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(kube::client::Body::from(body))
            .unwrap()
    }
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Create),
        Just(Shape::CreateNamespace),
        Just(Shape::CreateProtobuf),
        Just(Shape::Update),
        Just(Shape::MergePatch),
        Just(Shape::JsonPatch),
        Just(Shape::ApplyExisting),
        Just(Shape::ApplyMissing),
        Just(Shape::StatusPatch),
        Just(Shape::DeleteWithOptions),
    ]
}

/// JSON values with the keys the server reads (metadata, name, spec, status, ...), so generated
/// bodies get past the first check and into the storage code.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("metadata".to_owned()),
        Just("name".to_owned()),
        Just("namespace".to_owned()),
        Just("generateName".to_owned()),
        Just("resourceVersion".to_owned()),
        Just("uid".to_owned()),
        Just("labels".to_owned()),
        Just("finalizers".to_owned()),
        Just("spec".to_owned()),
        Just("status".to_owned()),
        Just("data".to_owned()),
        Just("kind".to_owned()),
        Just("apiVersion".to_owned()),
        "[a-z]{1,5}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            Just("target".to_owned()),
            Just("default".to_owned()),
            ".{0,10}"
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 48, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::vec((key.clone(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// JSON patches: arrays of operations with any op, pointer-like paths and values.
fn json_patch() -> impl Strategy<Value = Value> {
    let op = (
        prop_oneof![
            Just("add"),
            Just("remove"),
            Just("replace"),
            Just("move"),
            Just("copy"),
            Just("test"),
            Just("frobnicate"),
        ],
        prop_oneof![
            Just(String::new()),
            Just("/metadata".to_owned()),
            Just("/metadata/name".to_owned()),
            Just("/data/k".to_owned()),
            Just("/data/-".to_owned()),
            Just("/metadata/labels/0".to_owned()),
            "(/[a-z~01-]{0,4}){0,4}",
        ],
        json_value(),
        prop::option::of(prop_oneof![Just("/data".to_owned()), "(/[a-z]{0,3}){0,3}"]),
    )
        .prop_map(|(op, path, value, from)| {
            let mut o = json!({"op": op, "path": path, "value": value});
            if let Some(from) = from {
                o["from"] = json!(from);
            }
            o
        });
    prop::collection::vec(op, 0..4).prop_map(Value::from)
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        json_value()
            .prop_map(
                |v| serde_json::to_vec(&json!({"metadata": {"name": "p"}, "data": v})).unwrap()
            ),
        json_patch().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        json_value().prop_map(|v| {
            // Valid JSON cut short.
            let mut b = serde_json::to_vec(&v).unwrap();
            b.truncate(b.len() / 2);
            b
        }),
    ]
}

/// Sends a JSON request and returns the answer's status code.
async fn raw(client: &kube::Client, method: &str, path: &str, body: &[u8]) -> u16 {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(kube::client::Body::from(body.to_vec()))
        .unwrap();
    let response = client.send(request).await.unwrap();
    let code = response.status().as_u16();
    response.into_body().collect().await.unwrap();
    code
}

/// Sends one request and checks the answer: below 500, and a 4xx carries a `Status` with its code.
async fn check(client: &kube::Client, shape: Shape, body: Vec<u8>) -> Result<(), TestCaseError> {
    let response = client.send(shape.request(body)).await.map_err(|e| {
        TestCaseError::fail(format!("{shape:?}: no answer (did a handler panic?): {e}"))
    })?;
    let code = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    prop_assert!(
        code < 500,
        "{:?}: {} {}",
        shape,
        code,
        String::from_utf8_lossy(&bytes)
    );
    if code >= 400 {
        let status: Value = serde_json::from_slice(&bytes).map_err(|e| {
            TestCaseError::fail(format!("{shape:?}: {code} without a JSON Status: {e}"))
        })?;
        prop_assert_eq!(&status["kind"], "Status");
        prop_assert_eq!(&status["code"], code);
    }
    Ok(())
}

#[test]
fn any_request_body_is_answered_with_a_status_or_accepted_never_a_panic() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, client) = rt.block_on(async {
        let server = FakeApiServer::start().await.unwrap();
        let client = server.client().unwrap();
        (server, client)
    });
    let mut runner = TestRunner::new(Config {
        cases: 512,
        ..Config::default()
    });
    let result = runner.run(&(shape(), body()), |(shape, body)| {
        rt.block_on(async {
            // Each case starts from a well-formed target (earlier cases may have stored any
            // JSON in it: the fake keeps no schema), sent raw so that nothing decodes it.
            let reset = [
                raw(&client, "DELETE", &format!("{CMS}/target"), b"").await,
                raw(
                    &client,
                    "POST",
                    CMS,
                    br#"{"metadata":{"name":"target"},"data":{"k":"v"}}"#,
                )
                .await,
            ];
            prop_assert_eq!(reset[1], 201, "target recreated");
            check(&client, shape, body).await
        })
    });
    // Whatever it was sent, the server still serves, lists included.
    let still_serving = rt.block_on(async {
        raw(&client, "GET", CMS, b"").await == 200
            && raw(&client, "GET", "/api/v1/namespaces", b"").await == 200
    });
    rt.block_on(server.shutdown());
    result.unwrap();
    assert!(still_serving);
}

/// Sends raw bytes on a fresh connection and reads the whole answer (the server closes it).
async fn raw_exchange(addr: &str, request: &[u8]) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the JSON body is complete; the connection may stay open.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .expect("an answer within 30 s")
            .unwrap();
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let code = head.split(' ').nth(1).unwrap().parse().unwrap();
            if let Ok(v) = serde_json::from_str::<Value>(body) {
                return (code, v);
            }
        }
        assert!(n > 0, "connection closed before a full answer: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_refused_with_413_declared_or_streamed() {
    let server = FakeApiServer::start_with(FakeConfig {
        max_request_body_bytes: 1024,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let addr = server.url().trim_start_matches("http://").to_owned();

    // A declared length over the limit: refused from the headers, before any body is sent.
    let head = format!(
        "POST {CMS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        64 * 1024 * 1024
    );
    let (code, status) = raw_exchange(&addr, head.as_bytes()).await;
    assert_eq!(code, 413, "{status}");
    assert_eq!(status["reason"], "RequestEntityTooLarge");
    assert_eq!(status["code"], 413);

    // A chunked body with no declared length: refused once it passes the limit.
    let mut chunked = format!(
        "POST {CMS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..2 {
        chunked.extend_from_slice(format!("{:x}\r\n", 1000).as_bytes());
        chunked.extend_from_slice(&[b' '; 1000]);
        chunked.extend_from_slice(b"\r\n");
    }
    let (code, status) = raw_exchange(&addr, &chunked).await;
    assert_eq!(code, 413, "{status}");
    assert_eq!(status["reason"], "RequestEntityTooLarge");

    // At the limit, a body is read and judged on its content.
    let body = format!(
        r#"{{"metadata":{{"name":"fits"}},"data":{{"k":"{}"}}}}"#,
        "v".repeat(900)
    );
    let request = format!(
        "POST {CMS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (code, created) = raw_exchange(&addr, request.as_bytes()).await;
    assert_eq!(code, 201, "{created}");
    server.shutdown().await;
}

#[tokio::test]
async fn wrong_shapes_of_known_fields_are_400_not_a_panic() {
    let server = FakeApiServer::start().await.unwrap();
    let client = server.client().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "target"}})).unwrap(),
    )
    .await
    .unwrap();
    // (name, request shape, body, expected code)
    let cases: &[(&str, Shape, Value, u16)] = &[
        ("body is an array", Shape::Create, json!([1, 2]), 400),
        ("body is a string", Shape::Update, json!("cm"), 400),
        (
            "metadata is a number",
            Shape::Update,
            json!({"metadata": 5}),
            400,
        ),
        (
            "merge patch makes metadata a number",
            Shape::MergePatch,
            json!({"metadata": 5}),
            400,
        ),
        (
            "merge patch replaces the object with a string",
            Shape::MergePatch,
            json!("x"),
            400,
        ),
        (
            "json patch replaces the root with a number",
            Shape::JsonPatch,
            json!([{"op": "add", "path": "", "value": 7}]),
            400,
        ),
        (
            "json patch makes metadata a list",
            Shape::JsonPatch,
            json!([{"op": "replace", "path": "/metadata", "value": []}]),
            400,
        ),
        ("apply of an array", Shape::ApplyMissing, json!([1]), 400),
        (
            "apply with metadata a string",
            Shape::ApplyMissing,
            json!({"metadata": "m"}),
            400,
        ),
        (
            "namespace with spec a string",
            Shape::CreateNamespace,
            json!({"metadata": {"name": "n1"}, "spec": "s"}),
            400,
        ),
        (
            "namespace with status a list",
            Shape::CreateNamespace,
            json!({"metadata": {"name": "n2"}, "status": []}),
            400,
        ),
        (
            "name a number",
            Shape::Create,
            json!({"metadata": {"name": 5}}),
            400,
        ),
    ];
    for (name, shape, body, want) in cases {
        let response = client
            .send(shape.request(serde_json::to_vec(body).unwrap()))
            .await
            .unwrap_or_else(|e| panic!("{name}: no answer: {e}"));
        let code = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let status: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(code, *want, "{name}: {status}");
        assert_eq!(status["kind"], "Status", "{name}");
    }
    // The target is untouched by the refused writes.
    let target = api.get("target").await.unwrap();
    assert_eq!(target.metadata.name.as_deref(), Some("target"));
    server.shutdown().await;
}
