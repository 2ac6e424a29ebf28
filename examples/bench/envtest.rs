//! The `sync-envtest` workload: the initial sync against a real kube-apiserver and etcd
//! (reflex-testing's envtest control plane) instead of the fake, so that the fake's figures are
//! checked against a real server's list path and watch cache, and so that client-go can be
//! measured in its best configuration: protobuf, which the fake does not serve.
//!
//! The harness starts the control plane ([`start`]), creates the Pods through the API
//! ([`seed`]: a create and a status patch each, as a kubelet would have written the status), and
//! every contender gets the control plane's kubeconfig. The floors here time only decoding, of
//! the same pages of 500 in JSON and in protobuf: serde_json into `k8s_openapi` Pods, Reflex's
//! decoder, prost into kube-rs's `k8s-pb` types, and the metadata-only lists both ways (issue 21,
//! item 4: does protobuf pay?).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use kube::api::{PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::core::ObjectList;
use prost::Message;
use reflex_informer::decode::{DecodeOptions, Decoder};
use reflex_testing::envtest;
use serde_json::{Value, json};

use crate::Params;
use crate::contenders::{Keep, Run};
use crate::objects::Gen;
use crate::protocol::Figures;

/// Pages of 500, as every contender lists.
const PAGE: usize = 500;
/// Creates in flight while seeding.
const SEED_CONCURRENCY: usize = 32;

const JSON: &str = "application/json";
const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
const JSON_METADATA: &str = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
const PROTOBUF_METADATA: &str =
    "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
/// The magic prefix of Kubernetes' protobuf encoding.
const MAGIC: &[u8] = b"k8s\0";

/// Starts the control plane of `REFLEX_ENVTEST_BIN` / `REFLEX_ENVTEST_VERSION`; `Ok(None)` (after
/// saying why) when its binaries are not built, unless `REFLEX_REQUIRE_ENVTEST=1`.
pub async fn start() -> Result<Option<envtest::Environment>, String> {
    envtest::Environment::start_or_skip(envtest::Options::default())
        .await
        .map_err(|e| format!("starting envtest: {e}"))
}

/// Creates `namespaces` namespaces and `pods` generated Pods across them, each with its status
/// written by a second request (a create drops the status, as a cluster's does).
pub async fn seed(
    env: &envtest::Environment,
    pods: usize,
    namespaces: usize,
) -> Result<(), String> {
    let started = Instant::now();
    let client = env.client();
    let ns_api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    for i in 0..namespaces {
        let ns = serde_json::from_value(json!({"metadata": {"name": crate::namespace(i)}}))
            .map_err(|e| e.to_string())?;
        ns_api
            .create(&PostParams::default(), &ns)
            .await
            .map_err(|e| format!("creating namespace {}: {e}", crate::namespace(i)))?;
    }
    let mut generator = Gen::new(8);
    let objects: Vec<(String, Value)> = (0..pods)
        .map(|i| {
            let ns = crate::namespace(i % namespaces.max(1));
            (ns.clone(), generator.pod(&ns, i))
        })
        .collect();
    futures::stream::iter(objects)
        .map(|(ns, pod)| create_pod(client.clone(), ns, pod))
        .buffer_unordered(SEED_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    eprintln!(
        "bench: created {pods} Pods in envtest's kube-apiserver {} in {:.1} s",
        envtest::version(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Creates one generated Pod: what the server assigns (uid, resourceVersion, creation time) and
/// the generator's managedFields are left out, then the status is patched in.
async fn create_pod(client: kube::Client, ns: String, mut pod: Value) -> Result<(), String> {
    let status = pod
        .as_object_mut()
        .and_then(|o| o.remove("status"))
        .unwrap_or(Value::Null);
    if let Some(meta) = pod["metadata"].as_object_mut() {
        for field in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
        ] {
            meta.remove(field);
        }
    }
    let name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let pod: Pod = serde_json::from_value(pod).map_err(|e| format!("generated Pod: {e}"))?;
    let api: kube::Api<Pod> = kube::Api::namespaced(client, &ns);
    let manager = PostParams {
        field_manager: Some("bench-seed".into()),
        ..PostParams::default()
    };
    api.create(&manager, &pod)
        .await
        .map_err(|e| format!("creating Pod {ns}/{name}: {e}"))?;
    if !status.is_null() {
        api.patch_status(
            &name,
            &PatchParams::apply("bench-kubelet"),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map_err(|e| format!("writing the status of Pod {ns}/{name}: {e}"))?;
    }
    Ok(())
}

/// The contenders' client: the kubeconfig the harness passed (envtest's), else the fake's URL.
pub async fn client(p: &Params) -> Result<kube::Client, String> {
    if p.kubeconfig.is_empty() {
        return crate::sync::client(&p.server);
    }
    let kubeconfig = kube::config::Kubeconfig::read_from(&p.kubeconfig)
        .map_err(|e| format!("kubeconfig {}: {e}", p.kubeconfig))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| format!("kubeconfig {}: {e}", p.kubeconfig))?;
    kube::Client::try_from(config).map_err(|e| format!("kube client: {e}"))
}

/// One page's body, read whole (the floors time only its decoding).
async fn page(client: &kube::Client, token: &str, accept: &str) -> Result<Vec<u8>, String> {
    let path = if token.is_empty() {
        format!("/api/v1/pods?limit={PAGE}")
    } else {
        format!("/api/v1/pods?limit={PAGE}&continue={token}")
    };
    let request = http::Request::get(&path)
        .header(http::header::ACCEPT, accept)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let mut body = client
        .request_stream(request)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut bytes = Vec::new();
    body.read_to_end(&mut bytes)
        .await
        .map_err(|e| format!("reading GET {path}: {e}"))?;
    Ok(bytes)
}

/// Lists every page in `accept`, decoding each with `decode` (which returns the items it
/// decoded and the next continue token); only `decode` is timed. The decoded pages are kept
/// alive, as a cache would keep them.
async fn decode_pages<T: Send + 'static>(
    p: &Params,
    accept: &str,
    mut decode: impl FnMut(&[u8]) -> Result<(Vec<T>, Option<String>), String>,
) -> Run {
    let client = client(p).await?;
    let mut token = String::new();
    let mut decoding = Duration::ZERO;
    let mut kept: Vec<T> = Vec::new();
    let mut bytes = 0_usize;
    loop {
        let body = page(&client, &token, accept).await?;
        bytes += body.len();
        let start = Instant::now();
        let (items, next) = decode(&body)?;
        decoding += start.elapsed();
        kept.extend(items);
        match next.filter(|t| !t.is_empty()) {
            Some(t) => token = t,
            None => break,
        }
    }
    let f = Figures::from([
        ("synced_s".to_string(), decoding.as_secs_f64()),
        ("objects".to_string(), kept.len() as f64),
        ("body_mib".to_string(), bytes as f64 / (1024.0 * 1024.0)),
    ]);
    Ok((f, Box::new(kept) as Keep))
}

/// serde_json into `k8s_openapi` Pods (every field, managedFields included).
pub async fn json_floor(p: Params) -> Run {
    decode_pages(&p, JSON, |body| {
        let list: ObjectList<Pod> =
            serde_json::from_slice(body).map_err(|e| format!("decoding a page: {e}"))?;
        Ok((list.items, list.metadata.continue_))
    })
    .await
}

/// Reflex's decoder into `k8s_openapi` Pods (managedFields skipped while parsing: the default).
pub async fn reflex_decoder_floor(p: Params) -> Run {
    let decoder = Decoder::new(&DecodeOptions::default());
    decode_pages(&p, JSON, move |body| {
        let page = decoder
            .decode_list::<Pod>(body)
            .map_err(|e| format!("decoding a page: {e}"))?;
        Ok((page.items, page.continue_token))
    })
    .await
}

/// Strips the `k8s\0` magic and the `runtime.Unknown` envelope of a protobuf response.
fn unwrap_protobuf(body: &[u8]) -> Result<Vec<u8>, String> {
    let rest = body.strip_prefix(MAGIC).ok_or_else(|| {
        format!(
            "not a protobuf response (starts {:?})",
            String::from_utf8_lossy(&body[..body.len().min(40)])
        )
    })?;
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(rest)
        .map_err(|e| format!("decoding the protobuf envelope: {e}"))?;
    unknown
        .raw
        .ok_or_else(|| "a protobuf envelope without a body".to_string())
}

/// prost into `k8s-pb`'s `PodList` (every field): what a protobuf decode costs before any
/// conversion into the types a Rust controller uses.
pub async fn protobuf_floor(p: Params) -> Run {
    decode_pages(&p, PROTOBUF, |body| {
        let raw = unwrap_protobuf(body)?;
        let list = k8s_pb::api::core::v1::PodList::decode(raw.as_slice())
            .map_err(|e| format!("decoding a PodList: {e}"))?;
        let next = list.metadata.and_then(|m| m.r#continue);
        Ok((list.items, next))
    })
    .await
}

/// Reflex's decoder on the JSON metadata-only list, into `PartialObjectMeta<Pod>`
/// (managedFields skipped): what the metadata-only informer decodes.
pub async fn json_metadata_floor(p: Params) -> Run {
    let decoder = Decoder::new(&DecodeOptions::default());
    decode_pages(&p, JSON_METADATA, move |body| {
        let page = decoder
            .decode_list::<PartialObjectMeta<Pod>>(body)
            .map_err(|e| format!("decoding a page: {e}"))?;
        Ok((page.items, page.continue_token))
    })
    .await
}

/// prost on the protobuf metadata-only list, then each `ObjectMeta` converted into
/// `k8s_openapi`'s (managedFields dropped, as the JSON row skips them): the protobuf path a
/// metadata-only informer would take.
pub async fn protobuf_metadata_floor(p: Params) -> Run {
    decode_pages(&p, PROTOBUF_METADATA, |body| {
        let raw = unwrap_protobuf(body)?;
        let list = k8s_pb::apimachinery::pkg::apis::meta::v1::PartialObjectMetadataList::decode(
            raw.as_slice(),
        )
        .map_err(|e| format!("decoding a PartialObjectMetadataList: {e}"))?;
        let next = list.metadata.and_then(|m| m.r#continue);
        let items = list
            .items
            .into_iter()
            .map(|item| PartialObjectMeta::<Pod> {
                types: None,
                metadata: item.metadata.map(object_meta).unwrap_or_default(),
                _phantom: std::marker::PhantomData,
            })
            .collect();
        Ok((items, next))
    })
    .await
}

fn time(t: k8s_pb::apimachinery::pkg::apis::meta::v1::Time) -> Option<meta::Time> {
    k8s_openapi::jiff::Timestamp::new(t.seconds.unwrap_or(0), t.nanos.unwrap_or(0))
        .ok()
        .map(meta::Time)
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

fn non_empty_map(m: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!m.is_empty()).then_some(m)
}

/// `k8s-pb`'s `ObjectMeta` as `k8s_openapi`'s, without managedFields.
fn object_meta(m: k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> meta::ObjectMeta {
    meta::ObjectMeta {
        annotations: non_empty_map(m.annotations),
        creation_timestamp: m.creation_timestamp.and_then(time),
        deletion_grace_period_seconds: m.deletion_grace_period_seconds,
        deletion_timestamp: m.deletion_timestamp.and_then(time),
        finalizers: non_empty(m.finalizers),
        generate_name: m.generate_name,
        generation: m.generation,
        labels: non_empty_map(m.labels),
        managed_fields: None,
        name: m.name,
        namespace: m.namespace,
        owner_references: non_empty(
            m.owner_references
                .into_iter()
                .map(|o| meta::OwnerReference {
                    api_version: o.api_version.unwrap_or_default(),
                    block_owner_deletion: o.block_owner_deletion,
                    controller: o.controller,
                    kind: o.kind.unwrap_or_default(),
                    name: o.name.unwrap_or_default(),
                    uid: o.uid.unwrap_or_default(),
                })
                .collect(),
        ),
        resource_version: m.resource_version,
        self_link: m.self_link,
        uid: m.uid,
    }
}
