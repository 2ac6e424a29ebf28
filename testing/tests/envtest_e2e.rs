//! End-to-end tests against a real kube-apiserver and etcd (see `reflex_testing::envtest`).
//!
//! All envtest scenarios live in this one test binary. Each test starts its own control plane,
//! because restarts and compaction change server state other tests would observe; a shared lock
//! runs them one at a time so a 2-core machine never hosts several API servers at once.
//! Without binaries (run `scripts/envtest/run`) the tests print why and pass, unless
//! `REFLEX_REQUIRE_ENVTEST=1`, which makes a missing control plane a failure.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::core::ObjectMeta;
use reflex_testing::envtest::{Environment, Options};

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
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "35")
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
