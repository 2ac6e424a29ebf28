//! reflex-informer's Reflector and informers over real HTTP against `FakeApiServer`, through
//! every fault of its [`FaultHandle`](reflex_testing::FaultHandle).
//!
//! Each case of the table arms one fault, with writes (creates, replaces, patches, deletes)
//! before, during and after it, and runs against each contender on its own server:
//!
//! - `reflector`: a bare `Reflector` over `kube::Api` into a map-building sink, once with kube's
//!   default client (which retries 429/503/504 itself) and once without those retries;
//! - `informer`: a `SharedIndexInformer` over `kube::Api`, with two handlers, once in each FIFO
//!   mode (`DeltaFifo`, `InOrder`, `InOrderAtomic`);
//! - `factory`: the factory's typed informer, which decodes through `RawApi`, with a handler;
//! - `metadata`: the factory's metadata-only informer (`PartialObjectMetadata` responses);
//! - the factory's other decoding and store modes: typed with managedFields kept
//!   (`DecodeOptions::full()`), a projection (`informer::<Projection>()`), and the compact stores
//!   (`InformerSpec::typed().compact()`, `InformerSpec::metadata().compact()`, whose lists hold back on a bounded backlog).
//!
//! Every contender lists in pages of 5 (so a continue token can expire between pages); the
//! reflector, the informer and the factory's typed and metadata informers run the table again
//! listing by streaming (`sendInitialEvents`, the default), without the cases that need list
//! requests.
//!
//! After the fault stops, the convergence invariant must hold: every view of the cache (the
//! store, and each handler's view built only from its notifications) equals the server's state
//! as listed through `kube::Client`, key for key and resourceVersion for resourceVersion. Before
//! that, the case's expectations on how the client recovered must be seen: the server counts
//! the list and watch requests it received (a relist or a re-watch happened), the watch error
//! handler counts the rounds a 410 ended, and each reflector's `ReflectorHandle` (the bare one's,
//! or an informer's `reflector_stats()`) counts relists and malformed events.
//!
//! Time is real (the HTTP stack runs on real sockets); every wait polls with a 30 s bound and
//! fails with what it saw, and nothing asserts on how long anything took.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams, PostParams};
use parking_lot::Mutex;
use reflex_informer::decode::DecodeOptions;
use reflex_informer::factory::{FactoryOptions, InformerSpec, SharedInformerFactory};
use reflex_informer::fifo::{FifoError, FifoMode, ReflectorSink};
use reflex_informer::handler::DeltaObject;
use reflex_informer::handler::{FnHandler, handler_fn};
use reflex_informer::key::{KeyError, ObjectKey};
use reflex_informer::reflector::{
    BackoffOptions, Reflector, ReflectorError, ReflectorHandle, ReflectorOptions, WatchErrorHandler,
};
use reflex_informer::source::ListWatch;
use reflex_informer::{InformerOptions, SharedIndexInformer};
use reflex_testing::FakeApiServer;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Key (`namespace/name`) to resourceVersion.
type State = BTreeMap<String, String>;
type View = Arc<Mutex<State>>;
/// An informer's `reflector_stats()`, read once the informer runs.
type StatsFn = Box<dyn Fn() -> Option<ReflectorHandle> + Send + Sync>;
/// A named view of a contender's cache, read on demand.
type NamedView = (&'static str, Box<dyn Fn() -> State + Send + Sync>);

const WAIT: Duration = Duration::from_secs(30);
const NAMESPACES: [&str; 2] = ["alpha", "beta"];
const SEEDS: usize = 12;

fn key_of<K: kube::Resource>(o: &K) -> String {
    let m = o.meta();
    ObjectKey::new(
        m.namespace.as_deref(),
        m.name.as_deref().unwrap_or_default(),
    )
    .to_string()
}

fn rv_of<K: kube::Resource>(o: &K) -> String {
    o.meta().resource_version.clone().unwrap_or_default()
}

fn state_of<'a, K: kube::Resource + 'a>(objs: impl IntoIterator<Item = &'a K>) -> State {
    objs.into_iter().map(|o| (key_of(o), rv_of(o))).collect()
}

/// A handler whose view is what its notifications say the cache holds.
fn viewer<K: kube::Resource + Send + Sync + 'static>(view: View) -> FnHandler<K> {
    let (a, u, d) = (view.clone(), view.clone(), view);
    handler_fn()
        .on_add(move |o: &Arc<K>, _| {
            a.lock().insert(key_of(&**o), rv_of(&**o));
        })
        .on_update(move |_, o: &Arc<K>| {
            u.lock().insert(key_of(&**o), rv_of(&**o));
        })
        .on_delete(move |o: &DeltaObject<K>| {
            let key = match o {
                DeltaObject::Object(o) => key_of(&**o),
                DeltaObject::Tombstone(t) => t.key.to_string(),
            };
            d.lock().remove(&key);
        })
}

/// The bare reflector's sink: watch events edit the map, a relist replaces it when done.
#[derive(Default)]
struct MapSink {
    map: Mutex<State>,
    staging: Mutex<State>,
}

impl MapSink {
    fn checked(obj: &ConfigMap) -> Result<String, FifoError> {
        if obj.metadata.name.as_deref().is_none_or(str::is_empty) {
            return Err(FifoError::Key(KeyError::MissingName {
                kind: "ConfigMap".into(),
                namespace: obj.metadata.namespace.clone(),
            }));
        }
        Ok(key_of(obj))
    }
}

impl ReflectorSink<ConfigMap> for MapSink {
    fn add(&self, obj: Arc<ConfigMap>) -> Result<(), FifoError> {
        let key = Self::checked(&obj)?;
        self.map.lock().insert(key, rv_of(&*obj));
        Ok(())
    }
    fn update(&self, obj: Arc<ConfigMap>) -> Result<(), FifoError> {
        self.add(obj)
    }
    fn delete(&self, obj: Arc<ConfigMap>) -> Result<(), FifoError> {
        let key = Self::checked(&obj)?;
        self.map.lock().remove(&key);
        Ok(())
    }
    fn replace_begin(&self) {
        self.staging.lock().clear();
    }
    fn replace_page(&self, items: Vec<Arc<ConfigMap>>) -> Result<(), FifoError> {
        let mut staging = self.staging.lock();
        for o in items {
            let key = Self::checked(&o)?;
            staging.insert(key, rv_of(&*o));
        }
        Ok(())
    }
    fn replace_done(&self, _resource_version: &str) -> Result<(), FifoError> {
        *self.map.lock() = std::mem::take(&mut *self.staging.lock());
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Contender {
    Reflector,
    /// The bare reflector on a kube client without kube's own retries of 429/503/504, so those
    /// reach the reflector's recovery paths.
    ReflectorWithoutClientRetries,
    /// A `SharedIndexInformer` with two handlers, its FIFO in the given mode.
    Informer(FifoMode),
    Factory,
    Metadata,
    FactoryManagedFieldsKept,
    Projected,
    Compact,
    CompactMetadata,
}

/// A projection of ConfigMaps: metadata and data, nothing else.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
struct ConfigMapData {
    metadata: kube::api::ObjectMeta,
    #[serde(default)]
    data: Option<BTreeMap<String, String>>,
}

reflex_informer::impl_projection!(ConfigMapData => ConfigMap);

/// What every contender must show after a fault, before the convergence check.
#[derive(Debug, Clone, Copy, Default)]
struct Expect {
    /// At least this many more list requests reached the server.
    lists: u64,
    /// At least this many more watch requests reached the server.
    watches: u64,
    /// Exactly this many more watch requests (the watch must survive the fault).
    same_watch: bool,
    /// A list-and-watch round ended with a 410 (seen by the watch error handler).
    expired_round: bool,
    /// The reflector (bare, or the informer's through `reflector_stats()`) completed another
    /// relist.
    relist: bool,
    /// The reflector counted a malformed or unkeyable event.
    malformed: bool,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Close every open watch.
    DropWatches,
    /// Fail the next `n` requests of `verb` on configmaps with `code`. List failures are
    /// reached through a relist forced by an `ERROR` 410 event, watch failures by dropping the
    /// watch.
    FailNext {
        n: usize,
        code: u16,
        verb: &'static str,
    },
    /// Delay every response while the watch is dropped and re-established.
    Delay,
    /// An unrelated write, a compaction, then dropped watches: the re-watch gets 410.
    CompactThenDropWatches,
    /// The next continue token expires (compaction between pages of the relist forced by an
    /// `ERROR` 410 event): the reflector relists in full.
    ExpireContinue,
    /// Raw bytes written into the open watch.
    Raw(&'static str),
    /// Pause the server, drop watches, write (in-process and through held requests), resume.
    PauseResume,
}

struct Case {
    name: &'static str,
    fault: Fault,
    expect: Expect,
}

const ERROR_410: &str = "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"too old resource version: 1\",\"reason\":\"Expired\",\"code\":410}}\n";

/// How the contender lists: in pages, or by streaming (a watch with `sendInitialEvents`, whose
/// relists are watch requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    Paged,
    Streaming,
}

/// The table. `client_retries`: whether kube's client retries 429/503/504 itself (its default
/// `RetryPolicy`), in which case those failures never reach the reflector. A streaming
/// contender meets the faults of the watch path; the list-request faults (failed list
/// requests, a continue token expiring between pages) need pages and are the paged table's.
fn cases(client_retries: bool, listing: Listing) -> Vec<Case> {
    let streaming = listing == Listing::Streaming;
    // A relist of `lists` list requests, or, streaming, one more watch request.
    let relist = |lists| Expect {
        lists: if streaming { 0 } else { lists },
        watches: u64::from(streaming),
        relist: true,
        ..Default::default()
    };
    let mut cases = vec![Case {
        name: "drop every open watch",
        fault: Fault::DropWatches,
        expect: Expect {
            watches: 1,
            ..Default::default()
        },
    }];
    for code in [500, 429, 410, 503] {
        if !streaming {
            cases.push(Case {
                name: "fail the next lists",
                fault: Fault::FailNext {
                    n: 2,
                    code,
                    verb: "list",
                },
                expect: Expect {
                    expired_round: true,
                    ..relist(3)
                },
            });
        }
        cases.push(Case {
            name: "fail the next watches",
            fault: Fault::FailNext {
                n: 2,
                code,
                verb: "watch",
            },
            // A failed watch ends the round and the reflector relists, except on 429, where it
            // retries the watch after a backoff. With kube's client retries, 429 and 503 reach
            // the reflector as a watch that started late; only the server sees every attempt.
            expect: Expect {
                watches: 3,
                lists: u64::from(relisted(code, client_retries) && !streaming),
                expired_round: code == 410,
                relist: relisted(code, client_retries),
                ..Default::default()
            },
        });
    }
    cases.extend([
        Case {
            name: "delay responses",
            fault: Fault::Delay,
            expect: Expect {
                watches: 1,
                ..Default::default()
            },
        },
        Case {
            name: "compact the history, then drop watches",
            fault: Fault::CompactThenDropWatches,
            expect: Expect {
                watches: 2,
                expired_round: true,
                ..relist(1)
            },
        },
    ]);
    if !streaming {
        cases.push(Case {
            name: "compaction between list pages",
            fault: Fault::ExpireContinue,
            // page 1, the expired page 2, the full relist
            expect: Expect {
                expired_round: true,
                ..relist(3)
            },
        });
    }
    cases.extend([
        Case {
            name: "malformed JSON in the watch",
            fault: Fault::Raw("{not json at all\n"),
            expect: Expect {
                watches: 1,
                malformed: true,
                ..Default::default()
            },
        },
        Case {
            name: "unknown watch event type",
            fault: Fault::Raw(
                "{\"type\":\"SURPRISE\",\"object\":{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"x\",\"namespace\":\"alpha\"}}}\n",
            ),
            expect: Expect {
                watches: 1,
                malformed: true,
                ..Default::default()
            },
        },
        Case {
            name: "ADDED object without a name",
            fault: Fault::Raw(
                "{\"type\":\"ADDED\",\"object\":{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"namespace\":\"alpha\"}}}\n",
            ),
            expect: Expect {
                same_watch: true,
                malformed: true,
                ..Default::default()
            },
        },
        Case {
            name: "ERROR event with a 410 Status",
            fault: Fault::Raw(ERROR_410),
            expect: Expect {
                expired_round: true,
                ..relist(1)
            },
        },
        Case {
            name: "pause and resume",
            fault: Fault::PauseResume,
            expect: Expect {
                watches: 1,
                ..Default::default()
            },
        },
    ]);
    cases
}

fn relisted(watch_failure: u16, client_retries: bool) -> bool {
    match watch_failure {
        429 => false,
        503 => !client_retries,
        _ => true,
    }
}

/// A contender running against one server.
struct Running {
    /// Named views of the cache; each must equal the server.
    views: Vec<NamedView>,
    reflector: Option<ReflectorHandle>,
    /// Reads an informer's reflector counters once it runs.
    informer_stats: Option<StatsFn>,
    expired_rounds: Arc<AtomicU64>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
    factory: Option<SharedInformerFactory>,
}

impl Running {
    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("the contender stops within 30 s")
                .expect("the contender task did not panic");
        }
        if let Some(factory) = self.factory.take() {
            tokio::time::timeout(WAIT, factory.shutdown())
                .await
                .expect("the factory shuts down within 30 s");
        }
    }
}

fn fast_reflector(listing: Listing) -> ReflectorOptions {
    ReflectorOptions {
        streaming_lists: listing == Listing::Streaming,
        // Every paged list is paged, so a continue token can expire between pages.
        page_size: Some(5),
        backoff: BackoffOptions {
            initial: Duration::from_millis(20),
            factor: 2.0,
            jitter: 0.5,
            cap: Duration::from_millis(200),
            reset_after: Duration::from_secs(120),
        },
        ..Default::default()
    }
}

fn expired_counter() -> (Arc<AtomicU64>, WatchErrorHandler) {
    let counter = Arc::new(AtomicU64::new(0));
    let c = counter.clone();
    let handler: WatchErrorHandler = Arc::new(move |e: &ReflectorError| {
        if e.is_expired() {
            c.fetch_add(1, Ordering::SeqCst);
        }
    });
    (counter, handler)
}

fn informer_views<K>(informer: &SharedIndexInformer<K>, handlers: usize) -> Running
where
    K: kube::Resource + Send + Sync + 'static,
{
    let mut views: Vec<NamedView> = Vec::new();
    let store = informer.clone();
    views.push((
        "store",
        Box::new(move || state_of(store.indexer().list().iter().map(|o| &**o))),
    ));
    for (i, name) in ["handler 1", "handler 2"].into_iter().enumerate() {
        if i < handlers {
            let view = View::default();
            informer
                .add_event_handler(viewer::<K>(view.clone()))
                .expect("handler registration before start");
            views.push((name, Box::new(move || view.lock().clone())));
        }
    }
    let stats = informer.clone();
    Running {
        views,
        reflector: None,
        informer_stats: Some(Box::new(move || stats.reflector_stats())),
        expired_rounds: Arc::default(),
        shutdown: CancellationToken::new(),
        task: None,
        factory: None,
    }
}

async fn start(contender: Contender, listing: Listing, client: kube::Client) -> Running {
    let (expired_rounds, on_error) = expired_counter();
    let mut running = match contender {
        Contender::Reflector | Contender::ReflectorWithoutClientRetries => {
            let sink = Arc::new(MapSink::default());
            let source: Arc<dyn ListWatch<ConfigMap>> = Arc::new(Api::<ConfigMap>::all(client));
            let mut reflector = Reflector::new(source, sink.clone(), fast_reflector(listing));
            reflector.set_watch_error_handler(on_error);
            let handle = reflector.handle();
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(reflector.run(shutdown.clone()));
            let deadline = Instant::now() + WAIT;
            while handle.relists() == 0 {
                assert!(Instant::now() < deadline, "reflector: no list within 30 s");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Running {
                views: vec![("sink", Box::new(move || sink.map.lock().clone()))],
                reflector: Some(handle),
                informer_stats: None,
                expired_rounds: Arc::default(),
                shutdown,
                task: Some(task),
                factory: None,
            }
        }
        Contender::Informer(fifo) => {
            let source: Arc<dyn ListWatch<ConfigMap>> = Arc::new(Api::<ConfigMap>::all(client));
            let informer = SharedIndexInformer::new(
                source,
                InformerOptions {
                    reflector: fast_reflector(listing),
                    fifo,
                    ..Default::default()
                },
            );
            informer.set_watch_error_handler(on_error).unwrap();
            let mut running = informer_views(&informer, 2);
            let shutdown = running.shutdown.clone();
            let inf = informer.clone();
            running.task = Some(tokio::spawn(async move {
                inf.run(shutdown).await.expect("informer runs");
            }));
            synced(informer.wait_for_sync(), "informer").await;
            running
        }
        Contender::Factory
        | Contender::Metadata
        | Contender::FactoryManagedFieldsKept
        | Contender::Projected
        | Contender::Compact
        | Contender::CompactMetadata => {
            let decode = if matches!(contender, Contender::FactoryManagedFieldsKept) {
                DecodeOptions::full()
            } else {
                DecodeOptions::default()
            };
            let factory = SharedInformerFactory::new(
                client,
                FactoryOptions {
                    reflector: fast_reflector(listing),
                    decode,
                    ..Default::default()
                },
            );
            fn watched<K>(informer: SharedIndexInformer<K>, on_error: WatchErrorHandler) -> Running
            where
                K: kube::Resource + Send + Sync + 'static,
            {
                informer.set_watch_error_handler(on_error).unwrap();
                informer_views(&informer, 1)
            }
            let mut running = match contender {
                Contender::Metadata => watched(
                    factory
                        .informer_with(InformerSpec::<PartialObjectMeta<ConfigMap>>::metadata())
                        .unwrap(),
                    on_error,
                ),
                Contender::Projected => watched(factory.informer::<ConfigMapData>(), on_error),
                Contender::Compact => watched(
                    factory
                        .informer_with(InformerSpec::<ConfigMap>::typed().compact())
                        .unwrap(),
                    on_error,
                ),
                Contender::CompactMetadata => watched(
                    factory
                        .informer_with(
                            InformerSpec::<PartialObjectMeta<ConfigMap>>::metadata().compact(),
                        )
                        .unwrap(),
                    on_error,
                ),
                _ => watched(factory.informer::<ConfigMap>(), on_error),
            };
            factory.start();
            let synced = tokio::time::timeout(WAIT, factory.wait_for_cache_sync(None))
                .await
                .expect("factory informers sync within 30 s");
            assert!(
                synced.values().all(reflex_informer::SyncState::has_synced),
                "{synced:?}"
            );
            running.factory = Some(factory);
            running
        }
    };
    running.expired_rounds = expired_rounds;
    if let Some(stats) = &running.informer_stats {
        running.reflector = stats();
        assert!(
            running.reflector.is_some(),
            "{contender:?}: a running informer exposes its reflector's counters"
        );
    }
    running
}

async fn synced(wait: impl Future<Output = bool>, what: &str) {
    let ok = tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("{what}: not synced within 30 s"));
    assert!(ok, "{what}: stopped before it synced");
}

fn cm(name: &str, ns: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "faults"}},
        "data": {"v": value},
    }))
    .unwrap()
}

fn api(client: &kube::Client, ns: &str) -> Api<ConfigMap> {
    Api::namespaced(client.clone(), ns)
}

fn ns_of(i: usize) -> &'static str {
    NAMESPACES[i % NAMESPACES.len()]
}

async fn setup(server: &FakeApiServer) -> kube::Client {
    let client = server.client().unwrap();
    let nss: Api<Namespace> = Api::all(client.clone());
    for ns in NAMESPACES {
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        nss.create(&PostParams::default(), &obj).await.unwrap();
    }
    for i in 0..SEEDS {
        api(&client, ns_of(i))
            .create(
                &PostParams::default(),
                &cm(&format!("seed-{i}"), ns_of(i), "0"),
            )
            .await
            .unwrap();
    }
    client
}

/// One round of writes through the API: a replace (PUT of a fresh read), a delete, a merge
/// patch of seeds chosen by `round`, and two creates.
fn writes(client: kube::Client, round: usize) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let i = 3 * round;
        let replaced = format!("seed-{i}");
        let a = api(&client, ns_of(i));
        let mut obj = a.get(&replaced).await.unwrap();
        obj.data = Some([("v".to_string(), format!("replaced-{round}"))].into());
        a.replace(&replaced, &PostParams::default(), &obj)
            .await
            .unwrap();
        api(&client, ns_of(i + 1))
            .delete(&format!("seed-{}", i + 1), &DeleteParams::default())
            .await
            .unwrap();
        api(&client, ns_of(i + 2))
            .patch(
                &format!("seed-{}", i + 2),
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"v": format!("patched-{round}")}})),
            )
            .await
            .unwrap();
        for (j, ns) in NAMESPACES.iter().enumerate() {
            let name = format!("round-{round}-{j}");
            api(&client, ns)
                .create(&PostParams::default(), &cm(&name, ns, "new"))
                .await
                .unwrap();
        }
    })
}

/// The server's state, listed through kube::Client (retried: a fault may still be armed).
async fn truth(client: &kube::Client) -> Option<State> {
    Api::<ConfigMap>::all(client.clone())
        .list(&ListParams::default())
        .await
        .ok()
        .map(|l| state_of(l.items.iter()))
}

async fn assert_converges(running: &Running, client: &kube::Client, what: &str) {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    loop {
        if let Some(want) = truth(client).await {
            if running.views.iter().all(|(_, view)| view() == want) {
                return;
            }
            last = Some(want);
        }
        if Instant::now() >= deadline {
            let want = last.take().expect("the server answered at least one list");
            for (name, view) in &running.views {
                assert_eq!(view(), want, "{what}: {name} did not converge within 30 s");
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Counters before a fault, to compare with after it.
#[derive(Debug, Clone, Copy)]
struct Counters {
    lists: u64,
    watches: u64,
    expired_rounds: u64,
    relists: u64,
    malformed: u64,
}

fn counters(server: &FakeApiServer, running: &Running) -> Counters {
    let f = server.faults();
    let r = running.reflector.as_ref();
    Counters {
        lists: f.request_count("list", "configmaps"),
        watches: f.request_count("watch", "configmaps"),
        expired_rounds: running.expired_rounds.load(Ordering::SeqCst),
        relists: r.map_or(0, ReflectorHandle::relists),
        malformed: r.map_or(0, ReflectorHandle::malformed_events),
    }
}

fn met(expect: &Expect, before: &Counters, now: &Counters) -> bool {
    let watches_ok = if expect.same_watch {
        now.watches == before.watches
    } else {
        now.watches >= before.watches + expect.watches
    };
    watches_ok
        && now.lists >= before.lists + expect.lists
        && (!expect.expired_round || now.expired_rounds > before.expired_rounds)
        && (!expect.relist || now.relists > before.relists)
        && (!expect.malformed || now.malformed > before.malformed)
}

async fn arm(fault: Fault, server: &FakeApiServer, client: &kube::Client) {
    let f = server.faults();
    match fault {
        Fault::DropWatches => f.drop_watches(),
        Fault::FailNext { n, code, verb } => {
            f.fail_next(n, code, Some(verb), Some("configmaps"));
            if verb == "list" {
                f.inject_watch_bytes(ERROR_410);
            } else {
                f.drop_watches();
            }
        }
        Fault::Delay => {
            f.set_delay(Some(Duration::from_millis(100)));
            f.drop_watches();
        }
        Fault::CompactThenDropWatches => {
            // A write the ConfigMap watch cannot see moves the resourceVersion past the
            // reflector's, as unrelated writes do in a cluster.
            let secret: Secret =
                serde_json::from_value(json!({"metadata": {"name": "unrelated"}})).unwrap();
            Api::<Secret>::namespaced(client.clone(), "default")
                .create(&PostParams::default(), &secret)
                .await
                .unwrap();
            f.compact();
            f.drop_watches();
        }
        Fault::ExpireContinue => {
            f.expire_next_continue();
            f.inject_watch_bytes(ERROR_410);
        }
        Fault::Raw(bytes) => f.inject_watch_bytes(bytes),
        Fault::PauseResume => {
            f.pause();
            f.drop_watches();
        }
    }
}

async fn run_case(contender: Contender, listing: Listing, case: &Case) {
    let what = format!(
        "{contender:?} ({listing:?}) / {} / {:?}",
        case.name, case.fault
    );
    let server = FakeApiServer::start().await.unwrap();
    let client = setup(&server).await;
    let contender_client = match contender {
        Contender::ReflectorWithoutClientRetries => {
            let mut config = kube::Config::new(server.url().parse().unwrap());
            config.default_retry = false;
            kube::Client::try_from(config).unwrap()
        }
        _ => client.clone(),
    };
    let running = start(contender, listing, contender_client).await;
    assert_converges(&running, &client, &format!("{what}: initial sync")).await;

    writes(client.clone(), 0).await;
    assert_converges(&running, &client, &format!("{what}: before the fault")).await;

    let before = counters(&server, &running);
    arm(case.fault, &server, &client).await;
    if let Fault::PauseResume = case.fault {
        // Requests are held: in-process writes land now, API writes when the server resumes.
        for i in 0..2 {
            server
                .seed(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("paused-{i}"), "namespace": ns_of(i)}, "data": {"v": "paused"}}))
                .unwrap();
        }
        let held = tokio::spawn(writes(client.clone(), 1));
        // Let the held requests reach the server; the outcome does not depend on it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.faults().resume();
        tokio::time::timeout(WAIT, held)
            .await
            .expect("held writes complete within 30 s after resume")
            .unwrap();
    } else {
        writes(client.clone(), 1).await;
    }
    server.faults().set_delay(None);

    let deadline = Instant::now() + WAIT;
    loop {
        let now = counters(&server, &running);
        if met(&case.expect, &before, &now) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: expected {:?} within 30 s; before {before:?}, now {now:?}",
            case.expect
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    writes(client.clone(), 2).await;
    assert_converges(&running, &client, &format!("{what}: after the fault")).await;
    if case.expect.same_watch {
        // Guaranteed: nothing else in a case can end this watch. Its server timeout is at least
        // MIN_WATCH_TIMEOUT (5 minutes) and a case lasts seconds, idle detection waits longer
        // still, the event stream is never empty for the very-short-watch rule, and no fault is
        // armed; so a restart here is the nameless event's doing.
        assert_eq!(
            counters(&server, &running).watches,
            before.watches,
            "{what}: the watch was restarted"
        );
    }
    running.stop().await;
    server.shutdown().await;
}

async fn run_all(contender: Contender) {
    run_all_listing(contender, Listing::Paged).await;
}

async fn run_all_listing(contender: Contender, listing: Listing) {
    let client_retries = !matches!(contender, Contender::ReflectorWithoutClientRetries);
    for case in cases(client_retries, listing) {
        run_case(contender, listing, &case).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_reflector_converges_after_every_fault() {
    run_all(Contender::Reflector).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_reflector_without_client_retries_converges_after_every_fault() {
    run_all(Contender::ReflectorWithoutClientRetries).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_index_informer_and_its_handlers_converge_after_every_fault() {
    run_all(Contender::Informer(FifoMode::DeltaFifo)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_informer_on_the_in_order_fifo_and_its_handlers_converge_after_every_fault() {
    run_all(Contender::Informer(FifoMode::InOrder)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_informer_on_the_atomic_in_order_fifo_and_its_handlers_converge_after_every_fault() {
    run_all(Contender::Informer(FifoMode::InOrderAtomic)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_factory_informer_decoding_through_raw_api_converges_after_every_fault() {
    run_all(Contender::Factory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_factory_metadata_informer_converges_after_every_fault() {
    run_all(Contender::Metadata).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_factory_informer_keeping_managed_fields_converges_after_every_fault() {
    run_all(Contender::FactoryManagedFieldsKept).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_factory_projected_informer_converges_after_every_fault() {
    run_all(Contender::Projected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_factory_compact_informer_converges_after_every_fault() {
    run_all(Contender::Compact).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_factory_compact_metadata_informer_converges_after_every_fault() {
    run_all(Contender::CompactMetadata).await;
}

// The same faults met by contenders that list by streaming (the default). The compact
// informers bound their list backlog and so always list in pages: their rows above cover them.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_streaming_reflector_converges_after_every_fault() {
    run_all_listing(Contender::Reflector, Listing::Streaming).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_streaming_reflector_without_client_retries_converges_after_every_fault() {
    run_all_listing(Contender::ReflectorWithoutClientRetries, Listing::Streaming).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_shared_index_informer_converges_after_every_fault() {
    run_all_listing(Contender::Informer(FifoMode::DeltaFifo), Listing::Streaming).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streaming_factory_informer_converges_after_every_fault() {
    run_all_listing(Contender::Factory, Listing::Streaming).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streaming_factory_metadata_informer_converges_after_every_fault() {
    run_all_listing(Contender::Metadata, Listing::Streaming).await;
}
