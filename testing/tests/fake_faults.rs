//! Fault injection of the fake API server, driven through `kube::Client`.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchParams};
use reflex_testing::FakeApiServer;
use serde_json::json;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

#[tokio::test]
async fn fail_next_fails_exactly_n_matching_requests() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
    server
        .faults()
        .fail_next(2, 403, Some("list"), Some("configmaps"));
    api.create(&PostParams::default(), &cm("a")).await.unwrap();
    for _ in 0..2 {
        match api.list(&ListParams::default()).await.unwrap_err() {
            kube::Error::Api(s) => assert_eq!(s.code, 403),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
}

#[tokio::test]
async fn drop_watches_ends_open_streams() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
    let rv = server.resource_version().to_string();
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    assert_eq!(server.faults().watch_count(), 1);
    server.faults().drop_watches();
    assert!(stream.try_next().await.unwrap().is_none());
}

#[tokio::test]
async fn raw_bytes_reach_open_watches() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
    let rv = server.resource_version().to_string();
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    assert_eq!(server.faults().watch_count(), 1);
    server.faults().inject_watch_bytes(&b"{not json\n"[..]);
    assert!(stream.try_next().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn delay_and_pause_hold_responses() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
    server.faults().pause();
    let pending = tokio::spawn({
        let api = api.clone();
        async move {
            api.list(&ListParams::default())
                .await
                .map(|l| l.items.len())
        }
    });
    tokio::task::yield_now().await;
    assert!(!pending.is_finished());
    server.faults().resume();
    assert_eq!(pending.await.unwrap().unwrap(), 0);

    server
        .faults()
        .set_delay(Some(std::time::Duration::from_secs(30)));
    let start = tokio::time::Instant::now();
    api.list(&ListParams::default()).await.unwrap();
    assert!(start.elapsed() >= std::time::Duration::from_secs(30));
}

#[tokio::test]
async fn expire_next_continue_answers_410_to_the_next_page_only() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
    for n in ["a", "b", "c", "d"] {
        api.create(&PostParams::default(), &cm(n)).await.unwrap();
    }
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    let token = first.metadata.continue_.clone().unwrap();
    server.faults().expire_next_continue();
    let before = server.resource_version();
    match api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap_err()
    {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.resource_version(), before + 1);
    // A fresh list pages normally again, its token is not expired.
    let fresh = api.list(&ListParams::default().limit(2)).await.unwrap();
    let next = api
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(fresh.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(next.items.len(), 2);
    // The old resourceVersion is gone for watches too.
    let rv = first.metadata.resource_version.unwrap();
    match api.watch(&WatchParams::default(), &rv).await.err() {
        Some(kube::Error::Api(s)) => assert_eq!(s.code, 410),
        other => panic!("expected a 410, got {other:?}"),
    }
}

#[tokio::test]
async fn expire_history_closes_watches_and_their_resource_version_answers_410() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
    let created = api.create(&PostParams::default(), &cm("a")).await.unwrap();
    let rv = created.metadata.resource_version.unwrap();
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let before = server.resource_version();
    server.faults().expire_history();
    assert!(
        stream.try_next().await.unwrap().is_none(),
        "open watches end"
    );
    assert_eq!(server.faults().watch_count(), 0);
    assert_eq!(server.resource_version(), before + 1);
    // Resuming from where the watch was (the newest resourceVersion it could know) is refused.
    match api.watch(&WatchParams::default(), &rv).await.err() {
        Some(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410, got {other:?}"),
    }
    // A relist still answers, at the new resourceVersion.
    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(
        list.metadata.resource_version.unwrap(),
        (before + 1).to_string()
    );
}

#[tokio::test]
async fn request_count_counts_routed_requests_by_verb_and_resource() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
    server
        .faults()
        .fail_next(1, 500, Some("list"), Some("configmaps"));
    assert!(api.list(&ListParams::default()).await.is_err());
    api.list(&ListParams::default()).await.unwrap();
    api.create(&PostParams::default(), &cm("a")).await.unwrap();
    api.get("a").await.unwrap();
    let f = server.faults();
    assert_eq!(f.request_count("list", "configmaps"), 2);
    assert_eq!(f.request_count("create", "configmaps"), 1);
    assert_eq!(f.request_count("get", "configmaps"), 1);
    assert_eq!(f.request_count("watch", "configmaps"), 0);
    assert_eq!(f.request_count("list", "pods"), 0);
}
