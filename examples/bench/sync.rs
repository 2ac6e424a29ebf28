//! Initial sync of N Pods: Reflex's informer in several modes, kube-runtime's reflector, and the
//! floors (the server serving the list, serde_json decoding it). Each runs in its own process;
//! the time counts from the first request to synced, the peak memory is read by the harness.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PartialObjectMeta;
use kube::core::ObjectList;
use reflex_informer::decode::DecodeOptions;
use reflex_informer::factory::{FactoryOptions, InformerSpec, SharedInformerFactory};
use reflex_informer::reflector::ReflectorOptions;
use reflex_informer::source::raw::WireOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Params;
use crate::contenders::{Keep, Run};
use crate::protocol::Figures;

/// How long any contender may take to sync before it is reported as failed.
const SYNC_BOUND: Duration = Duration::from_secs(600);
/// The page size every contender uses (client-go's and kube-runtime's default).
const PAGE: usize = 500;

/// A kube client for the fake server's URL.
pub fn client(server: &str) -> Result<kube::Client, String> {
    let uri = server
        .parse()
        .map_err(|e| format!("server url {server:?}: {e}"))?;
    kube::Client::try_from(kube::Config::new(uri)).map_err(|e| format!("kube client: {e}"))
}

fn figures(synced: Duration, objects: usize) -> Figures {
    Figures::from([
        ("synced_s".to_string(), synced.as_secs_f64()),
        ("objects".to_string(), objects as f64),
    ])
}

/// Reflex's defaults: a streaming list over gzip, managedFields skipped while parsing.
pub async fn reflex_default(p: Params) -> Run {
    reflex(
        p,
        DecodeOptions::default(),
        false,
        Lists::Streaming,
        WireOptions::default(),
    )
    .await
}

/// Reflex's defaults with uncompressed responses.
pub async fn reflex_identity(p: Params) -> Run {
    reflex(
        p,
        DecodeOptions::default(),
        false,
        Lists::Streaming,
        WireOptions::identity(),
    )
    .await
}

/// Reflex listing in pages of 500 (`streaming_lists: false`), managedFields skipped.
pub async fn reflex_paged(p: Params) -> Run {
    reflex(
        p,
        DecodeOptions::default(),
        false,
        Lists::Pages,
        WireOptions::default(),
    )
    .await
}

/// Reflex listing in one response (`streaming_lists: false`, `page_size: Some(0)`): the shape
/// of every relist from a resourceVersion, which kube-apiserver serves from its watch cache in
/// one response whatever the limit.
pub async fn reflex_whole(p: Params) -> Run {
    reflex(
        p,
        DecodeOptions::default(),
        false,
        Lists::Whole,
        WireOptions::default(),
    )
    .await
}

/// Reflex keeping managedFields.
pub async fn reflex_full(p: Params) -> Run {
    reflex(
        p,
        DecodeOptions::full(),
        false,
        Lists::Streaming,
        WireOptions::default(),
    )
    .await
}

/// Reflex decoding everything, then a transform dropping managedFields (client-go's way).
pub async fn reflex_transform(p: Params) -> Run {
    reflex(
        p,
        DecodeOptions::full(),
        true,
        Lists::Streaming,
        WireOptions::default(),
    )
    .await
}

/// How a contender lists.
#[derive(Debug, Clone, Copy)]
enum Lists {
    /// A streaming list (the default).
    Streaming,
    /// Pages of 500.
    Pages,
    /// The whole list in one response.
    Whole,
}

async fn reflex(
    p: Params,
    decode: DecodeOptions,
    transform: bool,
    lists: Lists,
    wire: WireOptions,
) -> Run {
    let factory = SharedInformerFactory::new(
        crate::envtest::client(&p).await?,
        FactoryOptions {
            decode,
            wire,
            reflector: ReflectorOptions {
                streaming_lists: matches!(lists, Lists::Streaming),
                page_size: matches!(lists, Lists::Whole).then_some(0),
                ..ReflectorOptions::default()
            },
            ..FactoryOptions::default()
        },
    );
    let mut spec = InformerSpec::<Pod>::typed();
    if transform {
        spec = spec.transform(Arc::new(|pod: Arc<Pod>| {
            let mut pod = Arc::unwrap_or_clone(pod);
            pod.metadata.managed_fields = None;
            Arc::new(pod)
        }));
    }
    let informer = factory
        .informer_with(spec)
        .map_err(|e| format!("informer: {e}"))?;
    timed_sync(factory, informer, p.relist).await
}

/// Reflex's metadata-only informer.
pub async fn reflex_metadata(p: Params) -> Run {
    let factory =
        SharedInformerFactory::new(crate::envtest::client(&p).await?, FactoryOptions::default());
    let informer = factory
        .informer_with(InformerSpec::<PartialObjectMeta<Pod>>::metadata())
        .map_err(|e| format!("informer: {e}"))?;
    timed_sync(factory, informer, p.relist).await
}

/// What a scheduler-like controller reads of a Pod: its node and phase (issue 9's projection).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PodPlacement {
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    #[serde(default)]
    spec: PlacementSpec,
    #[serde(default)]
    status: PlacementStatus,
}

/// The part of `PodSpec` a [`PodPlacement`] keeps.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct PlacementSpec {
    #[serde(rename = "nodeName")]
    node_name: Option<String>,
}

/// The part of `PodStatus` a [`PodPlacement`] keeps.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct PlacementStatus {
    phase: Option<String>,
}

reflex_informer::impl_projection!(PodPlacement => Pod);

/// Reflex's projected informer: only `PodPlacement` is ever built.
pub async fn reflex_projected(p: Params) -> Run {
    let factory =
        SharedInformerFactory::new(crate::envtest::client(&p).await?, FactoryOptions::default());
    let informer = factory.informer::<PodPlacement>();
    let (mut f, keep) = timed_sync(factory, informer.clone(), p.relist).await?;
    // Read every projection once, so the fields are not dead code to the optimiser either.
    let placed = informer
        .indexer()
        .list()
        .iter()
        .filter(|p| p.spec.node_name.is_some() || p.status.phase.is_some())
        .count();
    f.insert("placed".into(), placed as f64);
    Ok((f, keep))
}

/// Reflex's compact store: each Pod kept as LZ4-compressed JSON, decoded on read.
pub async fn reflex_compact(p: Params) -> Run {
    let factory =
        SharedInformerFactory::new(crate::envtest::client(&p).await?, FactoryOptions::default());
    let informer = factory
        .informer_with(InformerSpec::<Pod>::typed().compact())
        .map_err(|e| format!("informer: {e}"))?;
    timed_sync(factory, informer, p.relist).await
}

/// Reflex's metadata-only informer over a compact store: the smallest cache of the Pods.
pub async fn reflex_compact_metadata(p: Params) -> Run {
    let factory =
        SharedInformerFactory::new(crate::envtest::client(&p).await?, FactoryOptions::default());
    let informer = factory
        .informer_with(InformerSpec::<PartialObjectMeta<Pod>>::metadata().compact())
        .map_err(|e| format!("informer: {e}"))?;
    timed_sync(factory, informer, p.relist).await
}

/// Starts `factory` (which made `informer`), times it to synced and reports the objects cached
/// and how many still carry managedFields, then (with `relist`) times a relist; the factory and
/// informer are kept alive.
async fn timed_sync<K>(
    factory: SharedInformerFactory,
    informer: reflex_informer::SharedIndexInformer<K>,
    relist_too: bool,
) -> Run
where
    K: kube::Resource + Send + Sync + 'static,
{
    let start = Instant::now();
    factory.start();
    wait_synced(&factory).await?;
    let synced = start.elapsed();
    let mut f = figures(synced, informer.indexer().len());
    f.insert(
        "with_managed_fields".into(),
        with_managed_fields(&informer) as f64,
    );
    if relist_too {
        relist(&informer, &mut f).await?;
    }
    Ok((f, Box::new((factory, informer)) as Keep))
}

/// The relist phase: records the resident set once synced and the peak until then, resets the
/// peak (`/proc/self/clear_refs`), and says `READY`, on which the harness expires the server's
/// history and closes the watches ([`FaultHandle::expire_history`]): the informer's watch
/// resumes, answers 410 and the informer relists, as after an etcd compaction that outran it.
/// The harness's reading of the peak is then the relist's. `relist_s` runs from `READY` until
/// the store reflects the relist.
///
/// [`FaultHandle::expire_history`]: reflex_testing::FaultHandle::expire_history
async fn relist<K>(
    informer: &reflex_informer::SharedIndexInformer<K>,
    f: &mut Figures,
) -> Result<(), String>
where
    K: kube::Resource + Send + Sync + 'static,
{
    let me = std::process::id();
    let mib = |field: &str| {
        crate::protocol::status_kib(me, field)
            .map(|kib| kib as f64 / 1024.0)
            .map_err(|e| e.to_string())
    };
    f.insert("synced_rss_mib".into(), mib("VmRSS:")?);
    f.insert("sync_peak_mib".into(), mib("VmHWM:")?);
    std::fs::write("/proc/self/clear_refs", "5")
        .map_err(|e| format!("resetting the peak resident set: {e}"))?;
    let stats = informer
        .reflector_stats()
        .ok_or("the informer has no reflector")?;
    let before = stats.relists();
    let start = Instant::now();
    crate::protocol::ready();
    loop {
        if stats.relists() > before {
            let listed = stats.last_sync_resource_version();
            let applied = informer.last_store_resource_version();
            if reflex_informer::resource_version::compare(&applied, &listed)
                .is_ok_and(|o| o.is_ge())
            {
                break;
            }
        }
        if start.elapsed() > SYNC_BOUND {
            return Err(format!("no relist within {SYNC_BOUND:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f.insert("relist_s".into(), start.elapsed().as_secs_f64());
    f.insert("relisted_rss_mib".into(), mib("VmRSS:")?);
    Ok(())
}

/// How many cached objects still carry managedFields: the proof of each mode.
fn with_managed_fields<K>(informer: &reflex_informer::SharedIndexInformer<K>) -> usize
where
    K: kube::Resource + Send + Sync + 'static,
{
    // One object at a time: a compact store decodes each as it is reached, and a `list()`
    // would hold every decoded object at once and so raise the peak being measured.
    informer
        .indexer()
        .snapshot()
        .iter()
        .filter(|(_, o)| o.meta().managed_fields.is_some())
        .count()
}

async fn wait_synced(factory: &SharedInformerFactory) -> Result<(), String> {
    let synced = factory.wait_for_cache_sync(Some(SYNC_BOUND)).await;
    if synced.values().all(reflex_informer::SyncState::has_synced) {
        Ok(())
    } else {
        Err(format!("not synced within {SYNC_BOUND:?}: {synced:?}"))
    }
}

/// kube-runtime's reflector over its watcher, with the default configuration.
pub async fn kube_runtime(p: Params) -> Run {
    use kube_runtime::WatchStreamExt;
    use kube_runtime::{reflector, watcher};
    let api: kube::Api<Pod> = kube::Api::all(crate::envtest::client(&p).await?);
    let (reader, writer) = reflector::store::<Pod>();
    let start = Instant::now();
    let stream = reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    let task = tokio::spawn(stream.for_each(|_| futures::future::ready(())));
    tokio::time::timeout(SYNC_BOUND, reader.wait_until_ready())
        .await
        .map_err(|_| format!("not ready within {SYNC_BOUND:?}"))?
        .map_err(|e| format!("reflector: {e}"))?;
    let synced = start.elapsed();
    let count = reader.len();
    Ok((
        figures(synced, count),
        Box::new((reader, AbortOnDrop(task))) as Keep,
    ))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The server's list in pages, to a client that only counts the bytes.
pub async fn server_floor_paged(p: Params) -> Run {
    let start = Instant::now();
    let mut token = String::new();
    let mut bytes = 0_u64;
    let mut pages = 0_u64;
    loop {
        let path = page_path(&token);
        let tail = get(&p.server, &path, Body::Discard).await?;
        bytes += tail.len;
        pages += 1;
        match continue_token(&tail.head, &tail.tail) {
            Some(t) => token = t,
            None => break,
        }
    }
    let elapsed = start.elapsed();
    let mut f = figures(elapsed, p.pods + p.steady_pods);
    f.insert("bytes".into(), bytes as f64);
    f.insert("pages".into(), pages as f64);
    Ok((f, Box::new(()) as Keep))
}

/// The server's whole list in one response, to a client that only counts the bytes.
pub async fn server_floor_whole(p: Params) -> Run {
    let start = Instant::now();
    let got = get(&p.server, "/api/v1/pods", Body::Discard).await?;
    let elapsed = start.elapsed();
    let mut f = figures(elapsed, p.pods + p.steady_pods);
    f.insert("bytes".into(), got.len as f64);
    Ok((f, Box::new(()) as Keep))
}

/// serde_json decoding of the same pages into `k8s_openapi` Pods; only decoding is timed.
pub async fn decode_floor(p: Params) -> Run {
    let mut pods: Vec<Pod> = Vec::with_capacity(p.pods);
    let mut token = String::new();
    let mut decoding = Duration::ZERO;
    loop {
        let page = get(&p.server, &page_path(&token), Body::Keep).await?;
        let start = Instant::now();
        let list: ObjectList<Pod> =
            serde_json::from_slice(&page.body).map_err(|e| format!("decoding a page: {e}"))?;
        decoding += start.elapsed();
        drop(page);
        pods.extend(list.items);
        match list.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(t) => token = t,
            None => break,
        }
    }
    let count = pods.len();
    Ok((figures(decoding, count), Box::new(pods) as Keep))
}

fn page_path(token: &str) -> String {
    if token.is_empty() {
        format!("/api/v1/pods?limit={PAGE}&resourceVersion=0")
    } else {
        format!("/api/v1/pods?limit={PAGE}&continue={token}")
    }
}

/// What to do with a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Keep it all.
    Keep,
    /// Count it, keep the last few KiB (where a list's continue token is).
    Discard,
}

/// A response read by [`get`].
pub struct Got {
    /// Body length.
    pub len: u64,
    /// The body (with [`Body::Keep`]).
    pub body: Vec<u8>,
    /// The start of the body.
    pub head: Vec<u8>,
    /// The end of the body.
    pub tail: Vec<u8>,
}

const TAIL: usize = 4096;

/// A plain HTTP/1.1 GET with `Connection: close` on a fresh loopback connection: the least a
/// client can do with a response.
pub async fn get(server: &str, path: &str, body: Body) -> Result<Got, String> {
    let authority = server
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http:// url: {server}"))?
        .trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connecting to {authority}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("writing the request: {e}"))?;
    let mut buf = vec![0_u8; 256 * 1024];
    let mut head = Vec::new();
    let mut got = Got {
        len: 0,
        body: Vec::new(),
        head: Vec::new(),
        tail: Vec::new(),
    };
    let mut in_body = false;
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading the response: {e}"))?;
        if n == 0 {
            break;
        }
        let mut chunk = &buf[..n];
        if !in_body {
            head.extend_from_slice(chunk);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let text = String::from_utf8_lossy(&head[..end]).to_string();
            if !text.starts_with("HTTP/1.1 200") {
                return Err(format!("GET {path}: {}", text.lines().next().unwrap_or("")));
            }
            if text
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked")
            {
                return Err(format!("GET {path}: chunked responses are not handled"));
            }
            let rest = head.split_off(end + 4);
            in_body = true;
            take(&mut got, &rest, body);
            continue;
        }
        take(&mut got, std::mem::take(&mut chunk), body);
    }
    if !in_body {
        return Err(format!(
            "GET {path}: the connection closed before a response"
        ));
    }
    Ok(got)
}

fn take(got: &mut Got, chunk: &[u8], body: Body) {
    got.len += chunk.len() as u64;
    if body == Body::Keep {
        got.body.extend_from_slice(chunk);
    }
    if got.head.len() < TAIL {
        let n = chunk.len().min(TAIL - got.head.len());
        got.head.extend_from_slice(&chunk[..n]);
    }
    got.tail.extend_from_slice(chunk);
    if got.tail.len() > 2 * TAIL {
        got.tail.drain(..got.tail.len() - TAIL);
    }
}

/// The `metadata.continue` of a list response: kube-apiserver (and the fake server) write the
/// list's `metadata` before its `items`, so it is in `head`; a server writing it after the items
/// (as serde_json orders a `List`'s fields) puts it in `tail`.
fn continue_token(head: &[u8], tail: &[u8]) -> Option<String> {
    const KEY: &str = "\"continue\":\"";
    let find = |text: &str| -> Option<String> {
        let at = text.find(KEY)? + KEY.len();
        let end = text[at..].find('"')?;
        Some(text[at..at + end].to_string()).filter(|t| !t.is_empty())
    };
    let head = String::from_utf8_lossy(head);
    match head.find("\"items\":[") {
        // The metadata came first: the token, if any, is before the items.
        Some(items) if head[..items].contains("\"metadata\"") => find(&head[..items]),
        _ => {
            let tail = String::from_utf8_lossy(tail);
            let at = tail.rfind(KEY)?;
            find(&tail[at..])
        }
    }
}
