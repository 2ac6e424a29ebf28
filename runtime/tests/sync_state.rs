//! Sync state over real HTTP, on the fake API server: a forbidden list, a missing CRD and a
//! throttling server are named (in the informer's state, `/readyz`, the metrics and the
//! controller's sync-timeout error), and each recovers by itself once the cause goes away.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ApiResource, GroupVersionKind};
use prometheus_client::registry::Registry;
use reflex_informer::factory::{FactoryOptions, InformerSpec, SharedInformerFactory};
use reflex_informer::reflector::{BackoffOptions, ReflectorOptions};
use reflex_informer::sync_state::{SyncFailure, SyncState};
use reflex_runtime::controller::{
    Action, Controller, ControllerError, ControllerOptions, default_error_policy,
};
use reflex_runtime::metrics::Metrics;
use reflex_runtime::serve::{HealthServer, ServeConfig};
use reflex_testing::FakeApiServer;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A bound on waits for what is guaranteed to happen (generous for a loaded machine).
const WAIT: Duration = Duration::from_secs(60);

/// Retries within tens of milliseconds, so recovery does not wait for the default backoff.
fn fast_retries() -> FactoryOptions {
    FactoryOptions {
        reflector: ReflectorOptions {
            backoff: BackoffOptions {
                initial: Duration::from_millis(20),
                cap: Duration::from_millis(200),
                ..BackoffOptions::default()
            },
            ..ReflectorOptions::default()
        },
        ..FactoryOptions::default()
    }
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let status = raw.split(' ').nth(1).unwrap().parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn wait_for_state(
    states: &mut tokio::sync::watch::Receiver<SyncState>,
    what: &str,
    cond: impl FnMut(&SyncState) -> bool,
) -> SyncState {
    tokio::time::timeout(WAIT, states.wait_for(cond))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("the informer is alive")
        .clone()
}

#[tokio::test]
async fn a_forbidden_list_is_named_everywhere_and_recovers_once_allowed() {
    let server = FakeApiServer::start().await.unwrap();
    server
        .seed(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "default"}}))
        .unwrap();
    // RBAC without list and watch: the streaming list (a watch) is refused, and so is the
    // paged list the reflector falls back to.
    server
        .faults()
        .fail_until_cleared(403, None, Some("configmaps"));
    let factory = SharedInformerFactory::new(server.client().unwrap(), fast_retries());
    let cms = factory.informer::<ConfigMap>();
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    metrics.register_informer("configmaps", &cms).unwrap();
    let shutdown = CancellationToken::new();
    let health = HealthServer::new(ServeConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
    })
    .registry(Arc::new(registry))
    .informer_synced("configmaps", &cms)
    .start(shutdown.clone())
    .await
    .unwrap();
    let mut states = cms.subscribe_sync_state();
    factory.start();

    let failing = wait_for_state(&mut states, "a forbidden list", |s| {
        matches!(s, SyncState::Failing { attempts: 2.., .. })
    })
    .await;
    assert_eq!(
        failing.failure().map(ToString::to_string).as_deref(),
        Some("forbidden: list configmaps at cluster scope")
    );
    assert!(!cms.has_synced());

    let (status, body) = get(health.local_addr(), "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(
            "[-]configmaps failed: informer not synced: forbidden: list configmaps at cluster scope"
        ),
        "{body}"
    );
    let (_, text) = get(health.local_addr(), "/metrics").await;
    assert!(
        text.contains("reflex_informer_sync_state{resource=\"configmaps\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("reflex_informer_last_error_timestamp_seconds{resource=\"configmaps\"}"),
        "{text}"
    );

    // A controller on it times out naming the informer and the cause.
    let result = Controller::new(cms.clone())
        .options(ControllerOptions {
            sync_timeout: Some(Duration::from_millis(300)),
            shutdown: shutdown.clone(),
            ..ControllerOptions::default()
        })
        .run(
            |_key, _ctx: Arc<()>| async { Ok::<_, kube::Error>(Action::done()) },
            default_error_policy,
            Arc::new(()),
        )
        .await;
    match result {
        Err(e @ ControllerError::SyncTimeout { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("forbidden: list configmaps at cluster scope"),
                "{text}"
            );
        }
        other => panic!("expected a sync timeout, got {other:?}"),
    }

    // Granted: the informer gets there by itself, no restart.
    server.faults().clear_failures();
    let synced = factory.wait_for_cache_sync(Some(WAIT)).await;
    let state = &synced[InformerSpec::<ConfigMap>::typed().id()];
    assert!(state.is_current(), "{state:?}");
    assert_eq!(cms.indexer().len(), 1);
    let (status, body) = get(health.local_addr(), "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (_, text) = get(health.local_addr(), "/metrics").await;
    assert!(
        text.contains("reflex_informer_sync_state{resource=\"configmaps\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("reflex_informer_store_resource_version{resource=\"configmaps\"}"),
        "{text}"
    );
    shutdown.cancel();
    health.join().await;
    factory.shutdown().await;
}

#[tokio::test]
async fn an_informer_for_a_missing_crd_says_so_and_syncs_once_the_crd_is_installed() {
    let server = FakeApiServer::start().await.unwrap();
    let widgets = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let factory = SharedInformerFactory::new(server.client().unwrap(), fast_retries());
    let informer = factory
        .informer_with(InformerSpec::dynamic(&widgets))
        .unwrap();
    let mut states = informer.subscribe_sync_state();
    factory.start();
    let failing = wait_for_state(&mut states, "a 404 on the collection", |s| {
        s.failure().is_some()
    })
    .await;
    match failing.failure() {
        Some(SyncFailure::ResourceNotServed { resource, .. }) => {
            assert_eq!(resource, "widgets.example.com");
        }
        other => panic!("expected ResourceNotServed, got {other:?}"),
    }
    server
        .register_crd(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "singular": "widget"},
                "versions": [{"name": "v1", "served": true, "storage": true}]}
        }))
        .unwrap();
    server
        .seed(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "default"}}))
        .unwrap();
    wait_for_state(&mut states, "synced", SyncState::is_current).await;
    assert!(informer.has_synced());
    assert!(
        tokio::time::timeout(WAIT, async {
            while informer.indexer().len() != 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok(),
        "the widget reaches the store"
    );
    factory.shutdown().await;
}

#[tokio::test]
async fn retry_after_is_read_from_the_server_and_a_429_inside_a_watch_does_not_relist() {
    let server = FakeApiServer::start().await.unwrap();
    server
        .seed(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "default"}}))
        .unwrap();
    // The first request of the initial list, streaming or paged, is throttled.
    server
        .faults()
        .throttle_next(1, 1, None, Some("configmaps"));
    // kube's client retries HTTP 429s itself (honouring Retry-After) before the informer sees
    // one; without that layer the reflector's own handling is what answers.
    let mut config = kube::Config::new(server.url().parse().unwrap());
    config.default_retry = false;
    let client = kube::Client::try_from(config).unwrap();
    let factory = SharedInformerFactory::new(client, fast_retries());
    let cms = factory.informer::<ConfigMap>();
    let mut states = cms.subscribe_sync_state();
    factory.start();
    let throttled =
        wait_for_state(&mut states, "a throttled list", |s| s.failure().is_some()).await;
    assert_eq!(
        throttled.failure(),
        Some(&SyncFailure::TooManyRequests {
            retry_after: Some(Duration::from_secs(1))
        }),
        "the server's Retry-After is read"
    );
    wait_for_state(&mut states, "synced", SyncState::is_current).await;
    let faults = server.faults();
    tokio::time::timeout(WAIT, async {
        while faults.watch_count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the informer watches");
    let relists = cms.reflector_stats().expect("a running informer").relists();
    let watches = faults.request_count("watch", "configmaps");
    // The API server ends a watch with a 429 Status event.
    let status = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
        "metadata": {}, "status": "Failure", "reason": "TooManyRequests", "code": 429,
        "message": "too many requests", "details": {"retryAfterSeconds": 1}}});
    faults.inject_watch_bytes(format!("{status}\n"));
    tokio::time::timeout(WAIT, async {
        while faults.request_count("watch", "configmaps") == watches {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the informer watches again");
    assert_eq!(
        cms.reflector_stats().expect("a running informer").relists(),
        relists,
        "a 429 inside a watch resumes the watch, it does not relist"
    );
    wait_for_state(&mut states, "current again", SyncState::is_current).await;
    factory.shutdown().await;
}

#[tokio::test]
async fn the_lag_probe_measures_how_long_the_store_trails_the_server() {
    let server = FakeApiServer::start().await.unwrap();
    server
        .seed(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "default"}}))
        .unwrap();
    let factory = SharedInformerFactory::new(
        server.client().unwrap(),
        FactoryOptions {
            lag_probe: Some(Duration::from_millis(50)),
            ..FactoryOptions::default()
        },
    );
    let cms = factory.informer::<ConfigMap>();
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    metrics.register_informer("configmaps", &cms).unwrap();
    let mut lags = cms.subscribe_lag();
    factory.start();
    let synced = factory.wait_for_cache_sync(Some(WAIT)).await;
    assert!(synced.values().all(SyncState::has_synced), "{synced:?}");
    // A current cache: some probe completes.
    tokio::time::timeout(WAIT, lags.wait_for(Option::is_some))
        .await
        .expect("a lag sample")
        .unwrap();

    // The watch falls behind a write: the next probe waits until the store has it.
    let faults = server.faults();
    faults.hold_watch_events();
    server
        .seed(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": "default"}}))
        .unwrap();
    let lists = faults.request_count("list", "configmaps");
    tokio::time::timeout(WAIT, async {
        while faults.request_count("list", "configmaps") == lists {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("a probe after the write");
    lags.borrow_and_update();
    let held = Duration::from_millis(300);
    tokio::time::sleep(held).await;
    faults.release_watch_events();
    let lag = tokio::time::timeout(WAIT, lags.changed())
        .await
        .map(|_| (*lags.borrow()).expect("a sample"))
        .expect("the probe completes once the store has the write");
    // Guaranteed: the store could not pass the probe's resourceVersion while events were held.
    assert!(lag >= held, "lag {lag:?} < held {held:?}");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("reflex_informer_lag_seconds_count{resource=\"configmaps\"}"),
        "{text}"
    );
    factory.shutdown().await;
}
