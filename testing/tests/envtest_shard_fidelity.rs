//! `shardSelector` (KEP-5866) on the fake and on a real kube-apiserver, side by side: the same
//! lists and watches, valid and malformed selectors, with the `ShardedListAndWatch` gate on
//! (v1.36+; the fake's default) and without it (a cluster's default: the parameter is ignored).
//! Compared: status code, reason and message of every refusal; for accepted requests the
//! echoed `shardInfo`, and that the items are exactly the server's objects whose 64-bit FNV-1a
//! hash of the field lies in the ranges (uids differ between the servers, so each is checked
//! against its own objects). Skipped when the envtest binaries are absent unless
//! `REFLEX_REQUIRE_ENVTEST=1`.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::TryStreamExt;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use reflex_informer::shard::fnv1a64;
use reflex_testing::envtest::{Environment, Options};
use reflex_testing::{FakeApiServer, FakeConfig};
use serde_json::{Value, json};

const NS: &str = "sharding";
const LOWER: &str = "shardRange(object.metadata.uid, '0x0000000000000000', '0x8000000000000000')";

/// `[start, end)` ranges of the hash space.
type Ranges = Vec<(u128, u128)>;

/// The selectors sent, each with the ranges it selects (`None`: refused by a server that shards).
fn selectors() -> Vec<(&'static str, String, Option<Ranges>)> {
    let top = 1u128 << 64;
    vec![
        ("lower half", LOWER.into(), Some(vec![(0, 1 << 63)])),
        (
            "two quarters",
            "shardRange(object.metadata.uid, '0x0000000000000000', '0x4000000000000000') || shardRange(object.metadata.uid, '0xc000000000000000', '0x10000000000000000')".into(),
            Some(vec![(0, 1 << 62), (3 << 62, top)]),
        ),
        (
            "spaces, parentheses, double quotes",
            "( shardRange( object.metadata.uid ,\"0x8000000000000000\",'0x10000000000000000') )".into(),
            Some(vec![(1 << 63, top)]),
        ),
        (
            "by namespace",
            "shardRange(object.metadata.namespace, '0x0000000000000000', '0x10000000000000000')".into(),
            Some(vec![(0, top)]),
        ),
        ("short bound", "shardRange(object.metadata.uid, '0x0', '0x8000000000000000')".into(), None),
        ("no prefix", "shardRange(object.metadata.uid, '0000000000000000', '0x8000000000000000')".into(), None),
        ("start not below end", "shardRange(object.metadata.uid, '0x8000000000000000', '0x8000000000000000')".into(), None),
        ("past 2^64", "shardRange(object.metadata.uid, '0x0000000000000000', '0x20000000000000000')".into(), None),
        ("upper case hex", "shardRange(object.metadata.uid, '0x000000000000000A', '0x8000000000000000')".into(), None),
        ("bad field", "shardRange(object.metadata.name, '0x0000000000000000', '0x8000000000000000')".into(), None),
        ("two arguments", "shardRange(object.metadata.uid, '0x0000000000000000')".into(), None),
        ("number bound", "shardRange(object.metadata.uid, 0, '0x8000000000000000')".into(), None),
        ("other function", "labels(object.metadata.uid)".into(), None),
        (
            "and",
            format!("{LOWER} && {LOWER}"),
            None,
        ),
        (
            "mixed fields",
            format!("{LOWER} || shardRange(object.metadata.namespace, '0x8000000000000000', '0x10000000000000000')"),
            None,
        ),
        ("blank", "   ".into(), None),
    ]
}

async fn request(client: &kube::Client, path: &str) -> (u16, Value) {
    let req = http::Request::get(path).body(Vec::new()).unwrap();
    let resp = client.send(req.map(Into::into)).await.unwrap();
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// The first line of a watch (its first event, or the refusal).
async fn first_watch_event(client: &kube::Client, path: &str) -> (u16, Value) {
    let req = http::Request::get(path).body(Vec::new()).unwrap();
    let resp = client.send(req.map(Into::into)).await.unwrap();
    let code = resp.status().as_u16();
    let mut body = resp.into_body().into_data_stream();
    let mut buf = Vec::new();
    while !buf.contains(&b'\n') {
        match tokio::time::timeout(Duration::from_secs(30), body.try_next())
            .await
            .expect("a watch line within 30 s")
            .unwrap()
        {
            Some(chunk) => buf.extend_from_slice(&chunk),
            None => break,
        }
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    (code, serde_json::from_slice(line).unwrap_or(Value::Null))
}

fn hash_of(obj: &Value, selector: &str) -> u64 {
    let field = if selector.contains("namespace") {
        "namespace"
    } else {
        "uid"
    };
    fnv1a64(obj["metadata"][field].as_str().unwrap_or("").as_bytes())
}

/// What one server answered, reduced to what is comparable across servers; panics if the
/// items of an accepted list are not exactly its objects in the ranges.
async fn observe(client: kube::Client, sharding: bool) -> Vec<(String, Value)> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap(),
        )
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    for i in 0..40 {
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": format!("cm-{i}")}})).unwrap(),
        )
        .await
        .unwrap();
    }
    let (_, all) = request(&client, &format!("/api/v1/namespaces/{NS}/configmaps")).await;
    let all = all["items"].as_array().unwrap().clone();
    assert_eq!(all.len(), 40);
    let mut out = Vec::new();
    for (what, selector, ranges) in selectors() {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("shardSelector", &selector)
            .finish();
        let path = format!("/api/v1/namespaces/{NS}/configmaps?{query}");
        let (code, body) = request(&client, &path).await;
        let answer = if code == 200 {
            let names: BTreeSet<&str> = body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["metadata"]["name"].as_str().unwrap())
                .collect();
            let expect: BTreeSet<&str> = all
                .iter()
                .filter(|o| match (&ranges, sharding) {
                    (Some(ranges), true) => {
                        let h = u128::from(hash_of(o, &selector));
                        ranges.iter().any(|(s, e)| *s <= h && h < *e)
                    }
                    _ => true,
                })
                .map(|o| o["metadata"]["name"].as_str().unwrap())
                .collect();
            assert_eq!(
                names, expect,
                "{what}: the items are the objects in the ranges"
            );
            json!({"code": code, "shardInfo": body["metadata"]["shardInfo"]})
        } else {
            json!({"code": code, "reason": body["reason"], "message": body["message"]})
        };
        out.push((format!("list, {what}"), answer));
        let (code, event) =
            first_watch_event(&client, &format!("{path}&watch=true&resourceVersion=0")).await;
        let answer = if code == 200 {
            let h = u128::from(hash_of(&event["object"], &selector));
            if let (Some(ranges), true) = (&ranges, sharding) {
                assert!(
                    ranges.iter().any(|(s, e)| *s <= h && h < *e),
                    "{what}: a watched object in the ranges"
                );
            }
            json!({"code": code, "type": event["type"]})
        } else {
            json!({"code": code, "reason": event["reason"], "message": event["message"]})
        };
        out.push((format!("watch, {what}"), answer));
    }
    out
}

#[tokio::test]
async fn shard_selectors_answer_like_kube_apiserver() {
    let minor = reflex_testing::envtest::minor_version().unwrap_or(0);
    // The gate exists from 1.36; before that the parameter is unknown and ignored.
    let gates: &[bool] = if minor >= 36 {
        &[true, false]
    } else {
        &[false]
    };
    for &sharding in gates {
        let options = Options {
            apiserver_args: vec![format!("--feature-gates=ShardedListAndWatch={sharding}")]
                .into_iter()
                .filter(|_| minor >= 36)
                .collect(),
            ..Options::default()
        };
        let Some(env) = Environment::start_or_skip(options).await.unwrap() else {
            return;
        };
        let real = observe(env.client(), sharding).await;
        env.stop().await.unwrap();
        let server = FakeApiServer::start_with(FakeConfig {
            sharded_list_and_watch: sharding,
            minor_version: minor,
            ..FakeConfig::default()
        })
        .await
        .unwrap();
        let fake = observe(server.client().unwrap(), sharding).await;
        server.shutdown().await;
        for ((what, r), (_, f)) in real.iter().zip(&fake) {
            println!("gate {sharding}, {what}\n  real: {r}\n  fake: {f}");
        }
        for ((what, r), (_, f)) in real.iter().zip(&fake) {
            assert_eq!(r, f, "gate {sharding}: {what}");
        }
    }
}
