//! The fake API server's answers side by side with a real kube-apiserver's, for the requests
//! whose shape clients depend on: metadata-only get/list/watch (`as=PartialObjectMetadata...`),
//! the first acceptable range of an `Accept` list, list items (no `apiVersion`/`kind` of their
//! own), boolean query parameters (`watch=True`), streaming lists, and what DELETE answers (a
//! `Status`, or the object while finalizers hold it). Values that differ between any two servers
//! (resourceVersions, uids, timestamps, managedFields) are left out of the comparison.
//!
//! This is how the fake's fidelity gaps found so far were found; add a request here before
//! relying on a new corner of the fake. Skipped when the envtest binaries are absent (see
//! `scripts/envtest/run`) unless `REFLEX_REQUIRE_ENVTEST=1`.

mod support;

#[path = "fidelity/validation.rs"]
mod validation;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use reflex_testing::FakeApiServer;
use reflex_testing::envtest::{Environment, Options};
use serde_json::{Value, json};

const NS: &str = "fidelity";
const PARTIAL: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
const PARTIAL_LIST: &str = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";

/// What a client can observe of a response, without values that differ between servers
/// (resourceVersions, uids, timestamps, managedFields).
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                let s = match k.as_str() {
                    "kind" | "apiVersion" | "type" => v.clone(),
                    "metadata" => json!(
                        m["metadata"]
                            .as_object()
                            .map(|md| md
                                .keys()
                                .filter(|k| matches!(
                                    k.as_str(),
                                    "name" | "namespace" | "labels" | "deletionTimestamp"
                                ))
                                .cloned()
                                .collect::<Vec<_>>())
                            .unwrap_or_default()
                    ),
                    "items" => json!(
                        v.as_array()
                            .map(|a| a.iter().map(shape).collect::<Vec<_>>())
                            .unwrap_or_default()
                    ),
                    "object" => shape(v),
                    _ => json!("present"),
                };
                out.insert(k.clone(), s);
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

async fn get(client: &kube::Client, path: &str, accept: &str) -> (u16, String, Value) {
    let req = http::Request::get(path)
        .header(http::header::ACCEPT, accept)
        .body(Vec::new())
        .unwrap();
    let resp = client.send(req.map(Into::into)).await.unwrap();
    let code = resp.status().as_u16();
    let ct = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        code,
        ct,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The first `n` lines of a watch, as JSON.
async fn watch_lines(
    client: &kube::Client,
    path: &str,
    accept: &str,
    n: usize,
) -> (String, Vec<Value>) {
    let req = http::Request::get(path)
        .header(http::header::ACCEPT, accept)
        .body(Vec::new())
        .unwrap();
    let resp = client.send(req.map(Into::into)).await.unwrap();
    let ct = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut body = resp.into_body().into_data_stream();
    let mut buf = Vec::new();
    let mut lines = Vec::new();
    while lines.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(30), body.try_next())
            .await
            .expect("watch line within 30 s")
            .unwrap()
            .expect("watch still open");
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            lines.push(serde_json::from_slice(&line).unwrap());
        }
    }
    drop(body.next());
    (ct, lines)
}

/// Which objects label and field selectors pick (and which selectors are refused), plus the
/// metadata of a paged list.
async fn selectors(
    client: &kube::Client,
    cms: &Api<ConfigMap>,
    base: &str,
) -> Vec<(String, Value)> {
    for (name, labels) in [
        ("c", json!({"app": "y", "tier": "db"})),
        ("d", json!({"tier": "web"})),
        ("e", json!({})),
    ] {
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap(),
        )
        .await
        .unwrap();
    }
    let mut seen = Vec::new();
    let queries = [
        "labelSelector=app%3Dx",
        "labelSelector=app%3D%3Dy",
        "labelSelector=app!%3Dx",
        "labelSelector=app%20in%20(x,y)",
        "labelSelector=app%20notin%20(x)",
        "labelSelector=tier",
        "labelSelector=!tier",
        "labelSelector=app%3Dx,!tier",
        "labelSelector=app,tier%3Ddb",
        "labelSelector=",
        "fieldSelector=metadata.name%3Da",
        "fieldSelector=metadata.name!%3Da",
        "fieldSelector=metadata.name%3D%3Dd",
        "fieldSelector=metadata.namespace%3Dfidelity",
        "fieldSelector=metadata.name%3Da,metadata.namespace%3Dfidelity",
        "labelSelector=tier&fieldSelector=metadata.name!%3Dc",
        // refused
        "labelSelector=app%20in%20x",
        "labelSelector=app%3D%3D%3Dx",
        "labelSelector=-bad%3Dx",
        "fieldSelector=spec.foo%3Dbar",
        "limit=abc",
    ];
    for q in queries {
        let (code, _, body) = get(client, &format!("{base}?{q}"), "application/json").await;
        let names: Vec<&str> = body["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i.pointer("/metadata/name").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        let reason = body.get("reason").cloned().unwrap_or(Value::Null);
        seen.push((
            q.to_string(),
            json!({"code": code, "names": names, "reason": reason}),
        ));
    }
    let (code, _, body) = get(client, &format!("{base}?limit=2"), "application/json").await;
    let keys: Vec<&String> = body["metadata"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    seen.push((
        "paged list metadata".to_string(),
        json!({"code": code, "keys": keys, "remaining": body["metadata"]["remainingItemCount"], "items": body["items"].as_array().map(Vec::len)}),
    ));
    for name in ["c", "d", "e"] {
        cms.delete(name, &Default::default()).await.unwrap();
    }
    seen
}

async fn observe(client: kube::Client) -> Vec<(String, Value)> {
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap(),
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    for name in ["a", "b"] {
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": name, "labels": {"app": "x"}}, "data": {"k": "v"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    }
    let base = format!("/api/v1/namespaces/{NS}/configmaps");
    let mut seen = Vec::new();
    seen.extend(selectors(&client, &cms, &base).await);
    for (what, path, accept) in [
        ("get partial", format!("{base}/a"), PARTIAL),
        ("list partial list", base.clone(), PARTIAL_LIST),
        (
            "list with table skipped then partial list",
            base.clone(),
            "application/json;as=Table;v=v1;g=meta.k8s.io;q=0.9,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
        ),
        ("get plain", format!("{base}/a"), "application/json"),
        ("list plain", base.clone(), "application/json"),
        (
            "list watch=false",
            format!("{base}?watch=false"),
            "application/json",
        ),
        ("get missing partial", format!("{base}/missing"), PARTIAL),
    ] {
        let (code, ct, body) = get(&client, &path, accept).await;
        seen.push((
            what.to_string(),
            json!({"code": code, "content-type": ct, "body": shape(&body)}),
        ));
    }
    for (what, query, accept, n) in [
        ("watch partial", "watch=1", PARTIAL, 2),
        ("watch=True", "watch=True", "application/json", 2),
        (
            "streaming list partial",
            "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
            PARTIAL,
            3,
        ),
    ] {
        let (ct, lines) = watch_lines(&client, &format!("{base}?{query}"), accept, n).await;
        seen.push((
            what.to_string(),
            json!({"content-type": ct, "lines": lines.iter().map(shape).collect::<Vec<_>>()}),
        ));
    }
    let req = http::Request::delete(format!("{base}/b"))
        .body(Vec::new())
        .unwrap();
    let resp = client.send(req.map(Into::into)).await.unwrap();
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    seen.push((
        "delete gone at once".to_string(),
        json!({"code": code, "body": shape(&body), "details": body.get("details").map(shape)}),
    ));
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let req = http::Request::delete(format!("{base}/held"))
        .body(Vec::new())
        .unwrap();
    let resp = client.send(req.map(Into::into)).await.unwrap();
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    seen.push((
        "delete held by a finalizer".to_string(),
        json!({"code": code, "body": shape(&body)}),
    ));
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_answers_metadata_list_watch_and_delete_requests_like_kube_apiserver() {
    let Some(env) = Environment::start_or_skip(Options::default())
        .await
        .unwrap()
    else {
        return;
    };
    let real = observe(env.client()).await;
    env.stop().await.unwrap();
    let server = FakeApiServer::start().await.unwrap();
    let fake = observe(server.client().unwrap()).await;
    server.shutdown().await;
    for ((what, r), (_, f)) in real.iter().zip(&fake) {
        println!("{what}\n  real: {r}\n  fake: {f}");
    }
    for ((what, r), (_, f)) in real.iter().zip(&fake) {
        assert_eq!(
            f, r,
            "{what}: the fake answers differently from kube-apiserver"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_script_expects_what_a_real_apiserver_does() {
    let Some(python) = support::python::python_client().await else {
        return;
    };
    let Some(env) = Environment::start_or_skip(Options::default())
        .await
        .unwrap()
    else {
        return;
    };
    let lines = support::python::run_script(python, env.kubeconfig()).await;
    env.stop().await.unwrap();
    assert_eq!(lines, support::python::EXPECTED);
}

/// Steps whose refusal messages differ from kube-apiserver's (their code, reason and causes do
/// not), and why.
const MESSAGES_DIFFER: &[(&str, &str)] = &[
    (
        "configmap with generateName Bad_",
        "the generated name's suffix is random",
    ),
    (
        "owner references with two controllers",
        "the fake prints the references with sorted keys, kube-apiserver in field order",
    ),
    (
        "pod: hostname changed",
        "kube-apiserver appends a diff of its Go structs",
    ),
    (
        "claim: access modes changed",
        "kube-apiserver appends a diff of its Go structs",
    ),
    (
        "job: template changed",
        "kube-apiserver prints its Go struct",
    ),
    (
        "deployment with a bad selector expression",
        "kube-apiserver prints the selector without its empty `values`",
    ),
    (
        "malformed JSON",
        "each server's JSON parser words its error",
    ),
    (
        "malformed YAML",
        "each server's YAML parser words its error",
    ),
];

/// Every step of [`validation::steps`] against one server: (what, compared answer, messages).
async fn validation_answers(client: kube::Client) -> Vec<(String, Value, Value)> {
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": validation::NS}})).unwrap(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    for step in validation::steps() {
        let (seen, messages) = validation::run(&client, &step).await;
        out.push((step.what, seen, messages));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_validates_defaults_and_scales_like_kube_apiserver() {
    let Some(env) = Environment::start_or_skip(Options::default())
        .await
        .unwrap()
    else {
        return;
    };
    let real = validation_answers(env.client()).await;
    env.stop().await.unwrap();
    // The fake answers as the same minor version as the real server.
    let minor = reflex_testing::envtest::minor_version().expect("envtest version v1.MINOR.PATCH");
    let server = FakeApiServer::start_with(reflex_testing::FakeConfig {
        minor_version: minor,
        ..Default::default()
    })
    .await
    .unwrap();
    let fake = validation_answers(server.client().unwrap()).await;
    server.shutdown().await;
    let mut differ = Vec::new();
    let mut messages_differ = Vec::new();
    for ((what, r, rm), (_, f, fm)) in real.iter().zip(&fake) {
        println!("{what}\n  real: {r}\n  fake: {f}");
        if !rm.is_null() || !fm.is_null() {
            println!("  real messages: {rm}\n  fake messages: {fm}");
        }
        if r != f {
            differ.push(what.as_str());
        }
        let known = MESSAGES_DIFFER.iter().any(|(w, _)| w == what);
        if rm != fm && !known {
            messages_differ.push(what.as_str());
        }
    }
    println!(
        "{} steps compared, {} differ; messages of {} refusals compared",
        real.len(),
        differ.len(),
        real.iter()
            .filter(|(w, _, m)| !m.is_null() && !MESSAGES_DIFFER.iter().any(|(k, _)| k == w))
            .count()
    );
    assert!(
        differ.is_empty(),
        "the fake answers differently from kube-apiserver in: {differ:?}"
    );
    assert!(
        messages_differ.is_empty(),
        "the fake's messages differ from kube-apiserver's in: {messages_differ:?}"
    );
}
