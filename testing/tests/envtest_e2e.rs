//! End-to-end tests against a real kube-apiserver and etcd (see `reflex_testing::envtest`).
//!
//! All envtest scenarios live in this one test binary. Each test starts its own control plane,
//! because restarts and compaction change server state other tests would observe; a shared lock
//! runs them one at a time so a 2-core machine never hosts several API servers at once.
//! Without binaries (run `scripts/envtest/run`) the tests print why and pass, unless
//! `REFLEX_REQUIRE_ENVTEST=1`, which makes a missing control plane a failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Pod, PodSpec};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Resource;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::ObjectMeta;
use reflex_informer::SharedIndexInformer;
use reflex_informer::factory::{FactoryOptions, InformerSpec, SharedInformerFactory};
use reflex_informer::handler::DeltaObject;
use reflex_informer::handler::{FnHandler, handler_fn};
use reflex_informer::reflector::ReflectorOptions;
use reflex_testing::envtest::{Environment, Options};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wire_support::{INITIAL_EVENTS_END, get_encoded, get_encoded_until};

// Each test binary uses part of the helpers.
#[allow(dead_code)]
#[path = "support/http.rs"]
mod wire_support;

/// Serializes the tests of this binary: one control plane at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Upper bound for a server-side event that must happen; reached only when the test fails.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

async fn namespace(client: &kube::Client, name: &str) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

fn config_map(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("value".to_owned(), value.to_owned())])),
        ..ConfigMap::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmaps_are_created_listed_in_pages_and_watched() {
    let _serial = SERIAL.lock().await;
    let Some(env) = Environment::start_or_skip(Options::default())
        .await
        .expect("start envtest")
    else {
        return;
    };
    assert!(env.kubeconfig().is_file(), "kubeconfig written");
    let client = env.client();
    let version = client.apiserver_version().await.expect("GET /version");
    // The release the harness started (REFLEX_ENVTEST_VERSION), stamped in by scripts/envtest.
    assert_eq!(version.git_version, reflex_testing::envtest::version());
    let minor = reflex_testing::envtest::version()
        .trim_start_matches("v1.")
        .split('.')
        .next()
        .map(str::to_owned);
    assert_eq!(
        (version.major.as_str(), Some(version.minor.clone())),
        ("1", minor)
    );
    namespace(&client, "paging").await;
    let api = Api::<ConfigMap>::namespaced(client, "paging");
    let names: Vec<String> = (0..7).map(|i| format!("cm-{i}")).collect();
    for name in &names {
        api.create(&PostParams::default(), &config_map(name, "v1"))
            .await
            .expect("create configmap");
    }

    // Pages of 3: 3 + 3 + 1, chained by continue tokens, consistent at the first page's version.
    let mut listed = Vec::new();
    let mut page_sizes = Vec::new();
    let mut continue_token: Option<String> = None;
    let mut list_version = None;
    loop {
        let mut params = ListParams::default().limit(3);
        if let Some(token) = &continue_token {
            params = params.continue_token(token);
        }
        let page = api.list(&params).await.expect("list page");
        list_version.get_or_insert(page.metadata.resource_version.clone().expect("list RV"));
        page_sizes.push(page.items.len());
        listed.extend(page.items.into_iter().filter_map(|cm| cm.metadata.name));
        continue_token = page.metadata.continue_.filter(|t| !t.is_empty());
        if continue_token.is_none() {
            break;
        }
    }
    assert_eq!(page_sizes, vec![3, 3, 1]);
    assert_eq!(listed, names);

    // A watch from the list's version sees later changes, in order.
    let version = list_version.expect("a page was listed");
    let mut events = api
        .watch(&WatchParams::default(), &version)
        .await
        .expect("start watch")
        .boxed();
    api.create(&PostParams::default(), &config_map("cm-new", "v1"))
        .await
        .expect("create");
    api.replace("cm-0", &PostParams::default(), &{
        let mut cm = api.get("cm-0").await.expect("get");
        cm.data = Some(BTreeMap::from([("value".to_owned(), "v2".to_owned())]));
        cm
    })
    .await
    .expect("update");
    api.delete("cm-1", &Default::default())
        .await
        .expect("delete");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(EVENT_TIMEOUT, events.try_next())
            .await
            .expect("watch event in time")
            .expect("watch stream healthy")
            .expect("watch still open");
        seen.push(match event {
            WatchEvent::Added(cm) => ("added", cm.metadata.name),
            WatchEvent::Modified(cm) => ("modified", cm.metadata.name),
            WatchEvent::Deleted(cm) => ("deleted", cm.metadata.name),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("watch error: {e:?}"),
        });
    }
    assert_eq!(
        seen,
        vec![
            ("added", Some("cm-new".to_owned())),
            ("modified", Some("cm-0".to_owned())),
            ("deleted", Some("cm-1".to_owned())),
        ]
    );
    env.stop().await.expect("stop envtest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_survive_an_apiserver_restart_and_open_watches_end() {
    let _serial = SERIAL.lock().await;
    let Some(mut env) = Environment::start_or_skip(Options::default())
        .await
        .expect("start envtest")
    else {
        return;
    };
    let client = env.client();
    namespace(&client, "restart").await;
    let api = Api::<ConfigMap>::namespaced(client, "restart");
    let created = api
        .create(&PostParams::default(), &config_map("kept", "v1"))
        .await
        .expect("create");
    let version = created.metadata.resource_version.clone().expect("RV");
    let mut events = api
        .watch(&WatchParams::default(), &version)
        .await
        .expect("start watch")
        .boxed();

    env.restart_apiserver().await.expect("restart apiserver");

    // The old watch's connection died with the server: the stream ends or fails, it never hangs.
    let ended = tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            match events.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "watch opened before the restart must end");

    let after = api.get("kept").await.expect("get after restart");
    assert_eq!(after.metadata.uid, created.metadata.uid);
    assert_eq!(after.data, created.data);
    env.stop().await.expect("stop envtest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_compaction_makes_an_old_resource_version_answer_410() {
    let _serial = SERIAL.lock().await;
    // Without the watch cache every read reaches etcd, so the answer depends on etcd alone.
    let options = Options {
        apiserver_args: vec!["--watch-cache=false".to_owned()],
        ..Options::default()
    };
    let Some(env) = Environment::start_or_skip(options)
        .await
        .expect("start envtest")
    else {
        return;
    };
    let client = env.client();
    namespace(&client, "compaction").await;
    let api = Api::<ConfigMap>::namespaced(client, "compaction");
    let created = api
        .create(&PostParams::default(), &config_map("old", "v1"))
        .await
        .expect("create");
    let old_version = created.metadata.resource_version.expect("RV");

    // Before compaction the old version is still served.
    let mut before = api
        .watch(&WatchParams::default(), &old_version)
        .await
        .expect("watch before compaction")
        .boxed();
    api.create(&PostParams::default(), &config_map("newer", "v1"))
        .await
        .expect("create newer");
    let first = tokio::time::timeout(EVENT_TIMEOUT, before.try_next())
        .await
        .expect("event in time")
        .expect("healthy")
        .expect("open");
    assert!(matches!(first, WatchEvent::Added(_)), "got {first:?}");
    drop(before);

    // A watch from version V starts reading etcd at V + 1, so compaction must pass V + 1.
    api.create(&PostParams::default(), &config_map("newest", "v1"))
        .await
        .expect("create newest");
    let compacted = env.compact_etcd().await.expect("compact");
    assert!(compacted > old_version.parse::<i64>().expect("numeric RV") + 1);

    let mut after = api
        .watch(&WatchParams::default(), &old_version)
        .await
        .expect("watch after compaction")
        .boxed();
    let answer = tokio::time::timeout(EVENT_TIMEOUT, after.next())
        .await
        .expect("answer in time")
        .expect("an event");
    let code = match answer {
        Ok(WatchEvent::Error(status)) => status.code,
        Err(kube::Error::Api(status)) => status.code,
        other => panic!("expected 410 Gone, got {other:?}"),
    };
    assert_eq!(code, 410);
    env.stop().await.expect("stop envtest");
}

// ---------------------------------------------------------------------------------------------
// Informer scenarios: reflex-informer's SharedInformerFactory against the real API server.
// ---------------------------------------------------------------------------------------------

/// Objects created per resource by the large-sync scenarios.
const MANY: usize = 1_000;

/// Concurrent creates in flight while filling a namespace.
const CREATE_CONCURRENCY: usize = 16;

/// `namespace/name` -> resourceVersion of a set of objects.
type VersionMap = BTreeMap<String, String>;

fn versions_of<'a, K: Resource + 'a>(objects: impl IntoIterator<Item = &'a K>) -> VersionMap {
    objects
        .into_iter()
        .map(|o| {
            let meta = o.meta();
            (
                format!(
                    "{}/{}",
                    meta.namespace.as_deref().unwrap_or(""),
                    meta.name.as_deref().unwrap_or("")
                ),
                meta.resource_version.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// What the informer's store holds, as `namespace/name` -> resourceVersion.
fn store_versions<K: Resource + Send + Sync + 'static>(
    informer: &SharedIndexInformer<K>,
) -> VersionMap {
    let objects = informer.indexer().list();
    versions_of(objects.iter().map(|o| o.as_ref()))
}

/// A fresh (consistent, unpaged) list of `api`, as `namespace/name` -> resourceVersion.
async fn listed_versions<K>(api: &Api<K>) -> VersionMap
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let list = api.list(&ListParams::default()).await.expect("fresh list");
    versions_of(list.items.iter())
}

/// Waits until the informer's store equals a fresh list of `api`, key for key and
/// resourceVersion for resourceVersion. Call it once no more writes are made, so the fresh
/// list is the final state; it fails if the store has not converged within [`EVENT_TIMEOUT`].
async fn assert_converges<K>(informer: &SharedIndexInformer<K>, api: &Api<K>) -> VersionMap
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let expected = listed_versions(api).await;
    let converged = tokio::time::timeout(EVENT_TIMEOUT, async {
        while store_versions(informer) != expected {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if converged.is_err() {
        let got = store_versions(informer);
        let missing: Vec<_> = expected
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .take(5)
            .collect();
        let extra: Vec<_> = got
            .iter()
            .filter(|(k, v)| expected.get(*k) != Some(v))
            .take(5)
            .collect();
        panic!(
            "store did not converge to a fresh list: {} cached vs {} listed; missing or stale {missing:?}; extra or stale {extra:?}",
            got.len(),
            expected.len()
        );
    }
    expected
}

/// Creates `count` objects built by `make(i)` with [`CREATE_CONCURRENCY`] requests in flight.
async fn create_many<K>(api: &Api<K>, count: usize, make: impl Fn(usize) -> K)
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let objects: Vec<K> = (0..count).map(make).collect();
    let params = PostParams::default();
    futures::stream::iter(objects.iter())
        .map(|o| api.create(&params, o))
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_for_each(|_| async { Ok(()) })
        .await
        .expect("create objects");
}

fn pod(name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "main".to_owned(),
                image: Some("registry.k8s.io/pause:3.10".to_owned()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// A factory over one namespace with the given reflector options.
fn factory_in(
    client: &kube::Client,
    ns: &str,
    reflector: ReflectorOptions,
) -> SharedInformerFactory {
    SharedInformerFactory::new(
        client.clone(),
        FactoryOptions {
            namespace: Some(ns.to_owned()),
            reflector,
            ..FactoryOptions::default()
        },
    )
}

async fn sync_all(factory: &SharedInformerFactory) {
    factory.start();
    let synced = factory.wait_for_cache_sync(Some(EVENT_TIMEOUT)).await;
    assert!(!synced.is_empty(), "some informer was started");
    assert!(
        synced.values().all(reflex_informer::SyncState::has_synced),
        "every informer synced: {synced:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informers_sync_a_thousand_configmaps_and_pods_matching_a_fresh_list() {
    let _serial = SERIAL.lock().await;
    let Some(env) = Environment::start_or_skip(Options::default())
        .await
        .expect("start envtest")
    else {
        return;
    };
    let client = env.client();
    namespace(&client, "bulk").await;
    let cms = Api::<ConfigMap>::namespaced(client.clone(), "bulk");
    let pods = Api::<Pod>::namespaced(client.clone(), "bulk");
    create_many(&cms, MANY, |i| config_map(&format!("cm-{i:04}"), "v1")).await;
    create_many(&pods, MANY, |i| pod(&format!("pod-{i:04}"))).await;

    let factory = factory_in(&client, "bulk", ReflectorOptions::default());
    let cm_informer = factory.informer::<ConfigMap>();
    let pod_informer = factory.informer::<Pod>();
    sync_all(&factory).await;

    // Synced means the whole initial list is in the store: no waiting needed for these.
    let cached_cms = store_versions(&cm_informer);
    let cached_pods = store_versions(&pod_informer);
    // The namespace also holds the kube-root-ca.crt ConfigMap only if a controller manager
    // runs; none does here, so the store is exactly what was created.
    assert_eq!(cached_cms.len(), MANY);
    assert_eq!(cached_pods.len(), MANY);
    assert_eq!(cached_cms, listed_versions(&cms).await);
    assert_eq!(cached_pods, listed_versions(&pods).await);
    assert!(!cm_informer.last_sync_resource_version().is_empty());
    factory.shutdown().await;
    env.stop().await.expect("stop envtest");
}

/// Records the notifications each key received, in order.
#[derive(Default, Clone)]
struct Recorder(Arc<parking_lot::Mutex<BTreeMap<String, Vec<&'static str>>>>);

impl Recorder {
    fn record(&self, meta: &ObjectMeta, what: &'static str) {
        let key = format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or(""),
            meta.name.as_deref().unwrap_or("")
        );
        self.0.lock().entry(key).or_default().push(what);
    }

    fn of(&self, key: &str) -> Vec<&'static str> {
        self.0.lock().get(key).cloned().unwrap_or_default()
    }

    fn handler<K: Resource + Send + Sync + 'static>(&self) -> FnHandler<K> {
        let (on_add, on_update, on_delete) = (self.clone(), self.clone(), self.clone());
        handler_fn()
            .on_add(move |o: &Arc<K>, _| on_add.record(o.meta(), "add"))
            .on_update(move |old: &Arc<K>, new: &Arc<K>| {
                // A relist re-delivers unchanged objects as updates with equal resourceVersions
                // (client-go's sync updates); only real changes count as "update".
                if old.meta().resource_version != new.meta().resource_version {
                    on_update.record(new.meta(), "update")
                }
            })
            .on_delete(move |o: &DeltaObject<K>| {
                let meta = match o {
                    DeltaObject::Object(o) => o.meta().clone(),
                    DeltaObject::Tombstone(t) => ObjectMeta {
                        namespace: t.key.namespace().map(str::to_owned),
                        name: Some(t.key.name().to_owned()),
                        ..ObjectMeta::default()
                    },
                };
                on_delete.record(&meta, "delete")
            })
    }

    /// Waits until `key` received exactly `expected`, failing on a longer or different sequence.
    async fn wait_for(&self, key: &str, expected: &[&str]) {
        let done = tokio::time::timeout(EVENT_TIMEOUT, async {
            loop {
                let seen = self.of(key);
                if seen.len() >= expected.len() {
                    return seen;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        let seen = done.unwrap_or_else(|_| self.of(key));
        assert_eq!(seen, expected, "notifications of {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_observe_create_update_delete_of_a_key_in_order() {
    let _serial = SERIAL.lock().await;
    let Some(env) = Environment::start_or_skip(Options::default())
        .await
        .expect("start envtest")
    else {
        return;
    };
    let client = env.client();
    namespace(&client, "handlers").await;
    let api = Api::<ConfigMap>::namespaced(client.clone(), "handlers");
    api.create(&PostParams::default(), &config_map("existing", "v1"))
        .await
        .expect("create existing");

    let factory = factory_in(&client, "handlers", ReflectorOptions::default());
    let informer = factory.informer::<ConfigMap>();
    let recorder = Recorder::default();
    informer
        .add_event_handler(recorder.handler())
        .expect("add handler");
    sync_all(&factory).await;
    recorder.wait_for("handlers/existing", &["add"]).await;

    // Several updates of one key: with a running informer each arrives as its own update.
    api.create(&PostParams::default(), &config_map("lifecycle", "v1"))
        .await
        .expect("create");
    for value in ["v2", "v3"] {
        let mut cm = api.get("lifecycle").await.expect("get");
        cm.data = Some(BTreeMap::from([("value".to_owned(), value.to_owned())]));
        api.replace("lifecycle", &PostParams::default(), &cm)
            .await
            .expect("update");
    }
    api.delete("lifecycle", &Default::default())
        .await
        .expect("delete");
    recorder
        .wait_for("handlers/lifecycle", &["add", "update", "update", "delete"])
        .await;
    // The untouched object received nothing more, and the store no longer holds the deleted one.
    assert_eq!(recorder.of("handlers/existing"), vec!["add"]);
    assert_converges(&informer, &api).await;
    assert!(!store_versions(&informer).contains_key("handlers/lifecycle"));
    factory.shutdown().await;
    env.stop().await.expect("stop envtest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_created_at_run_time_is_watched_through_a_dynamic_informer() {
    let _serial = SERIAL.lock().await;
    let Some(env) = Environment::start_or_skip(Options::default())
        .await
        .expect("start envtest")
    else {
        return;
    };
    let client = env.client();
    namespace(&client, "crd").await;
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "widgets.reflex.example.com" },
        "spec": {
            "group": "reflex.example.com",
            "scope": "Namespaced",
            "names": { "plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList" },
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": { "spec": { "type": "object", "properties": { "size": { "type": "integer" } } } }
                } }
            }]
        }
    }))
    .expect("CRD manifest");
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("create CRD");
    let established = tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            let crd = crds
                .get("widgets.reflex.example.com")
                .await
                .expect("get CRD");
            let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
            if conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(established.is_ok(), "CRD became Established");

    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("reflex.example.com", "v1", "Widget"),
        "widgets",
    );
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), "crd", &resource);
    let widget = |name: &str, size: i64| {
        let mut obj = DynamicObject::new(name, &resource).within("crd");
        obj.data = serde_json::json!({ "spec": { "size": size } });
        obj
    };
    api.create(&PostParams::default(), &widget("before", 1))
        .await
        .expect("create widget before start");

    let factory = factory_in(&client, "crd", ReflectorOptions::default());
    let informer = factory
        .informer_with(InformerSpec::dynamic(&resource))
        .unwrap();
    let recorder = Recorder::default();
    informer
        .add_event_handler(recorder.handler())
        .expect("add handler");
    sync_all(&factory).await;
    recorder.wait_for("crd/before", &["add"]).await;

    api.create(&PostParams::default(), &widget("after", 2))
        .await
        .expect("create widget after start");
    let mut after = api.get("after").await.expect("get widget");
    after.data["spec"]["size"] = serde_json::json!(3);
    api.replace("after", &PostParams::default(), &after)
        .await
        .expect("update widget");
    recorder.wait_for("crd/after", &["add", "update"]).await;
    assert_converges(&informer, &api).await;
    let cached = informer
        .indexer()
        .list()
        .into_iter()
        .find(|o| o.metadata.name.as_deref() == Some("after"))
        .expect("updated widget cached");
    assert_eq!(cached.data["spec"]["size"], serde_json::json!(3));
    assert_eq!(
        cached.types.as_ref().map(|t| t.kind.as_str()),
        Some("Widget")
    );
    factory.shutdown().await;
    env.stop().await.expect("stop envtest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_informer_keeps_running_across_an_apiserver_restart_and_sees_later_changes() {
    let _serial = SERIAL.lock().await;
    let Some(mut env) = Environment::start_or_skip(Options::default())
        .await
        .expect("start envtest")
    else {
        return;
    };
    let client = env.client();
    namespace(&client, "restart-informer").await;
    let api = Api::<ConfigMap>::namespaced(client.clone(), "restart-informer");
    for name in ["kept", "updated", "deleted"] {
        api.create(&PostParams::default(), &config_map(name, "v1"))
            .await
            .expect("create");
    }
    let factory = factory_in(&client, "restart-informer", ReflectorOptions::default());
    let informer = factory.informer::<ConfigMap>();
    let recorder = Recorder::default();
    informer
        .add_event_handler(recorder.handler())
        .expect("add handler");
    sync_all(&factory).await;
    assert_converges(&informer, &api).await;

    env.restart_apiserver().await.expect("restart apiserver");

    api.create(&PostParams::default(), &config_map("created", "v1"))
        .await
        .expect("create after restart");
    let mut cm = api.get("updated").await.expect("get");
    cm.data = Some(BTreeMap::from([("value".to_owned(), "v2".to_owned())]));
    api.replace("updated", &PostParams::default(), &cm)
        .await
        .expect("update after restart");
    api.delete("deleted", &Default::default())
        .await
        .expect("delete after restart");

    let state = assert_converges(&informer, &api).await;
    assert_eq!(
        state.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "restart-informer/created",
            "restart-informer/kept",
            "restart-informer/updated"
        ]
    );
    assert!(!informer.is_stopped(), "the informer survived the restart");
    recorder
        .wait_for("restart-informer/created", &["add"])
        .await;
    recorder
        .wait_for("restart-informer/updated", &["add", "update"])
        .await;
    recorder
        .wait_for("restart-informer/deleted", &["add", "delete"])
        .await;
    recorder.wait_for("restart-informer/kept", &["add"]).await;
    factory.shutdown().await;
    env.stop().await.expect("stop envtest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_etcd_compaction_the_informer_relists_and_converges_to_a_fresh_list() {
    let _serial = SERIAL.lock().await;
    // Without the watch cache a watch reads etcd, so a compacted resourceVersion answers 410.
    let options = Options {
        apiserver_args: vec!["--watch-cache=false".to_owned()],
        ..Options::default()
    };
    let Some(mut env) = Environment::start_or_skip(options)
        .await
        .expect("start envtest")
    else {
        return;
    };
    let client = env.client();
    namespace(&client, "compact-informer").await;
    let api = Api::<ConfigMap>::namespaced(client.clone(), "compact-informer");
    for i in 0..20 {
        api.create(
            &PostParams::default(),
            &config_map(&format!("cm-{i:02}"), "v1"),
        )
        .await
        .expect("create");
    }
    let factory = factory_in(&client, "compact-informer", ReflectorOptions::default());
    let informer = factory.informer::<ConfigMap>();
    let recorder = Recorder::default();
    informer
        .add_event_handler(recorder.handler())
        .expect("add handler");
    sync_all(&factory).await;
    assert_converges(&informer, &api).await;
    let informer_version: i64 = informer
        .last_sync_resource_version()
        .parse()
        .expect("numeric RV");

    // Writes to another resource move etcd's revision past the informer's last version, so
    // compacting at the current revision removes the revision its next watch would start at.
    namespace(&client, "unrelated-1").await;
    namespace(&client, "unrelated-2").await;
    let compacted = env.compact_etcd().await.expect("compact");
    assert!(
        compacted > informer_version + 1,
        "{compacted} vs {informer_version}"
    );

    // The restart drops the watch; its successor starts from the compacted version (410 Gone)
    // and the reflector must relist. Changes made around the restart must all arrive.
    env.restart_apiserver().await.expect("restart apiserver");
    for i in 0..5 {
        api.delete(&format!("cm-{i:02}"), &Default::default())
            .await
            .expect("delete in the gap");
    }
    let mut cm = api.get("cm-10").await.expect("get");
    cm.data = Some(BTreeMap::from([("value".to_owned(), "v2".to_owned())]));
    api.replace("cm-10", &PostParams::default(), &cm)
        .await
        .expect("update in the gap");
    api.create(&PostParams::default(), &config_map("cm-new", "v1"))
        .await
        .expect("create in the gap");

    let state = assert_converges(&informer, &api).await;
    assert_eq!(state.len(), 16);
    for i in 0..5 {
        let key = format!("compact-informer/cm-{i:02}");
        assert!(!state.contains_key(&key), "{key} deleted");
        assert_eq!(
            recorder.of(&key).last(),
            Some(&"delete"),
            "{key} delete notified"
        );
    }
    assert_eq!(recorder.of("compact-informer/cm-new"), vec!["add"]);
    assert_eq!(
        recorder.of("compact-informer/cm-10").last(),
        Some(&"update")
    );
    let cached = informer
        .indexer()
        .list()
        .into_iter()
        .find(|o| o.metadata.name.as_deref() == Some("cm-10"))
        .expect("cm-10 cached");
    assert_eq!(cached.data, cm.data);
    assert!(
        informer
            .last_sync_resource_version()
            .parse::<i64>()
            .expect("numeric RV")
            > compacted,
        "the informer resumed past the compacted revision"
    );
    factory.shutdown().await;
    env.stop().await.expect("stop envtest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_informer_listing_in_small_pages_syncs_a_thousand_objects_completely() {
    let _serial = SERIAL.lock().await;
    // Without the watch cache the API server pages every list from etcd.
    let options = Options {
        apiserver_args: vec!["--watch-cache=false".to_owned()],
        ..Options::default()
    };
    let Some(env) = Environment::start_or_skip(options)
        .await
        .expect("start envtest")
    else {
        return;
    };
    let client = env.client();
    namespace(&client, "paged").await;
    let api = Api::<ConfigMap>::namespaced(client.clone(), "paged");
    create_many(&api, MANY, |i| config_map(&format!("cm-{i:04}"), "v1")).await;
    // The server really pages at this size: a first page of 50 carries a continue token.
    let first = api
        .list(&ListParams::default().limit(50))
        .await
        .expect("first page");
    assert_eq!(first.items.len(), 50);
    assert!(first.metadata.continue_.is_some_and(|c| !c.is_empty()));

    let factory = factory_in(
        &client,
        "paged",
        ReflectorOptions {
            page_size: Some(50),
            ..ReflectorOptions::default()
        },
    );
    let informer = factory.informer::<ConfigMap>();
    sync_all(&factory).await;
    let cached = store_versions(&informer);
    assert_eq!(cached.len(), MANY);
    assert_eq!(cached, listed_versions(&api).await);
    factory.shutdown().await;
    env.stop().await.expect("stop envtest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informers_read_gzip_lists_and_gzip_streaming_lists_and_ask_to_drop_managed_fields() {
    let _serial = SERIAL.lock().await;
    let Some(env) = Environment::start_or_skip(Options::default())
        .await
        .expect("start envtest")
    else {
        return;
    };
    let client = env.client();
    let minor: u32 = reflex_testing::envtest::version()
        .trim_start_matches("v1.")
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .expect("a v1.N.P release");
    namespace(&client, "wire").await;
    let pods = Api::<Pod>::namespaced(client.clone(), "wire");
    // 400 Pods with their managedFields: a list of several hundred KiB, over the server's
    // 128 KiB compression threshold.
    create_many(&pods, 400, |i| pod(&format!("pod-{i:04}"))).await;

    let gzip = [("accept-encoding", "gzip")];
    let list = get_encoded(&client, "/api/v1/namespaces/wire/pods", &gzip).await;
    assert_eq!(
        list.encoding.as_deref(),
        Some("gzip"),
        "a large list is compressed"
    );
    assert_eq!(list.json()["items"].as_array().map(Vec::len), Some(400));
    let watch_list = "/api/v1/namespaces/wire/pods?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=300";
    let streamed = get_encoded_until(&client, watch_list, &gzip, Some(INITIAL_EVENTS_END)).await;
    let events = streamed.events().len();
    assert!(
        events > 400,
        "400 initial events and the end bookmark: {events}"
    );
    if minor >= 37 {
        // WatchListCompression (beta, on): the streaming list is gzip, member after member.
        assert_eq!(streamed.encoding.as_deref(), Some("gzip"), "v1.{minor}");
        let members = streamed.members;
        assert!(
            members > 1,
            "one member per flush, not one for the body: {members}"
        );
    }
    // KEP-5958 is alpha in 1.38: older servers ignore the parameter and send managedFields.
    let drop = [("accept", "application/json;drop=metadata.managedFields")];
    let one = get_encoded(&client, "/api/v1/namespaces/wire/pods/pod-0000", &drop)
        .await
        .json();
    if minor < 38 {
        assert!(
            one["metadata"]["managedFields"].is_array(),
            "v1.{minor} ignores drop"
        );
    }

    // Informers with gzip (the default) and the drop parameter, paged and streaming.
    for streaming in [false, true] {
        let factory = SharedInformerFactory::new(
            client.clone(),
            FactoryOptions {
                namespace: Some("wire".into()),
                reflector: ReflectorOptions {
                    streaming_lists: streaming,
                    ..ReflectorOptions::default()
                },
                wire: reflex_informer::source::raw::WireOptions {
                    drop_managed_fields: true,
                    ..Default::default()
                },
                ..FactoryOptions::default()
            },
        );
        let informer = factory.informer::<Pod>();
        sync_all(&factory).await;
        assert_eq!(store_versions(&informer), listed_versions(&pods).await);
        // Changes after the sync arrive on the watch (a compressed one after a streaming list).
        let tag = if streaming { "s" } else { "p" };
        create_many(&pods, 3, |i| pod(&format!("late-{tag}-{i}"))).await;
        pods.delete(
            &format!("pod-000{}", u8::from(streaming)),
            &Default::default(),
        )
        .await
        .expect("delete pod");
        assert_converges(&informer, &pods).await;
        assert!(
            informer
                .indexer()
                .list()
                .iter()
                .all(|p| p.metadata.managed_fields.is_none()),
            "managedFields dropped by the server or skipped while parsing"
        );
        factory.shutdown().await;
    }
    env.stop().await.expect("stop envtest");
}
