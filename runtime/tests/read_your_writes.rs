//! Read-your-writes over real HTTP: the fake API server holds back watch events, so the cache
//! lags behind the controller's own write. Without `read_your_writes` the reconcile that follows
//! the write reads the cache from before it; with the option it never does (the key waits, with
//! backoff, until the cache shows the write). Deterministic: the test releases the events only
//! after the stale read (or the deferral) has happened.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use parking_lot::Mutex;
use reflex_informer::SharedIndexInformer;
use reflex_informer::factory::{FactoryOptions, SharedInformerFactory};
use reflex_informer::key::ObjectKey;
use reflex_informer::resource_version;
use reflex_runtime::controller::{
    Action, Controller, ControllerOptions, ControllerSummary, default_error_policy,
};
use reflex_testing::FakeApiServer;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

struct Ctx {
    api: Api<ConfigMap>,
    informer: SharedIndexInformer<ConfigMap>,
    record: bool,
    reconciles: AtomicUsize,
    stale_reads: AtomicUsize,
    written: Mutex<Option<String>>,
    /// The count each reconcile after the first read from the cache.
    later: mpsc::UnboundedSender<String>,
}

async fn reconcile(key: ObjectKey, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
    let n = ctx.reconciles.fetch_add(1, Ordering::SeqCst);
    let cached = ctx
        .informer
        .indexer()
        .get_by_key(&key)
        .expect("the config map is cached");
    let cached_rv = cached.metadata.resource_version.clone().unwrap_or_default();
    if let Some(written) = ctx.written.lock().as_deref()
        && resource_version::is_at_least(&cached_rv, written) == Some(false)
    {
        ctx.stale_reads.fetch_add(1, Ordering::SeqCst);
    }
    let count = cached.data.as_ref().and_then(|d| d.get("count")).cloned();
    if n == 0 {
        let written = ctx
            .api
            .patch(
                key.name(),
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"count": "1"}})),
            )
            .await?;
        if ctx.record {
            ctx.informer.record_write(&written).expect("named");
        }
        *ctx.written.lock() = written.metadata.resource_version.clone();
        // Woken again at once, as by the write's own event on a fast cache.
        return Ok(Action::requeue_after(Duration::ZERO));
    }
    let _ = ctx.later.send(count.unwrap_or_default());
    Ok(Action::done())
}

/// Runs the scenario; returns the stale reads, what the second reconcile read, and the
/// controller's counters.
async fn scenario(read_your_writes: bool) -> (usize, String, ControllerSummary) {
    let server = FakeApiServer::start().await.unwrap();
    server
        .seed(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "counter", "namespace": "default"}, "data": {"count": "0"}}))
        .unwrap();
    let client = server.client().unwrap();
    let factory = SharedInformerFactory::new(
        client.clone(),
        FactoryOptions {
            namespace: Some("default".into()),
            ..FactoryOptions::default()
        },
    );
    let informer = factory.informer::<ConfigMap>();
    // The cache lists the config map, then hears of no change until released.
    server.faults().hold_watch_events();
    let (tx, mut later) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        api: Api::namespaced(client, "default"),
        informer: informer.clone(),
        record: read_your_writes,
        reconciles: AtomicUsize::new(0),
        stale_reads: AtomicUsize::new(0),
        written: Mutex::new(None),
        later: tx,
    });
    let shutdown = CancellationToken::new();
    let controller = Controller::new(informer.clone()).options(ControllerOptions {
        read_your_writes,
        shutdown: shutdown.clone(),
        ..ControllerOptions::default()
    });
    let metrics = controller.metrics();
    let run = tokio::spawn(controller.run(reconcile, default_error_policy, ctx.clone()));

    let second = if read_your_writes {
        // The key waits for its write: it is deferred, not reconciled, while events are held.
        tokio::time::timeout(WAIT, async {
            while metrics.snapshot().awaited_own_writes == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the reconcile after the write waits for it");
        assert_eq!(
            ctx.reconciles.load(Ordering::SeqCst),
            1,
            "nothing reconciled on the stale cache"
        );
        server.faults().release_watch_events();
        tokio::time::timeout(WAIT, later.recv())
            .await
            .expect("reconciled once the cache shows the write")
            .unwrap()
    } else {
        let second = tokio::time::timeout(WAIT, later.recv())
            .await
            .expect("reconciled again after the write")
            .unwrap();
        server.faults().release_watch_events();
        second
    };
    // Either way the cache catches up.
    let key = ObjectKey::new(Some("default"), "counter");
    tokio::time::timeout(WAIT, informer.wait_until_observed(&key, WAIT))
        .await
        .expect("bounded")
        .ok();
    shutdown.cancel();
    run.await.unwrap().unwrap();
    factory.shutdown().await;
    (
        ctx.stale_reads.load(Ordering::SeqCst),
        second,
        metrics.snapshot(),
    )
}

#[tokio::test]
async fn without_read_your_writes_the_reconcile_after_a_write_reads_the_stale_cache() {
    let (stale, second, summary) = scenario(false).await;
    assert_eq!(
        stale, 1,
        "the second reconcile read the cache from before the write"
    );
    assert_eq!(second, "0", "it saw the old count");
    assert_eq!(summary.awaited_own_writes, 0);
}

#[tokio::test]
async fn with_read_your_writes_no_reconcile_reads_a_cache_older_than_its_own_write() {
    let (stale, second, summary) = scenario(true).await;
    assert_eq!(stale, 0, "never reconciled on a cache older than the write");
    assert_eq!(second, "1", "the reconcile after the write saw it");
    assert!(summary.awaited_own_writes >= 1, "{summary:?}");
}

#[tokio::test]
async fn wait_until_observed_returns_once_the_cache_shows_the_write_and_times_out_before() {
    let server = FakeApiServer::start().await.unwrap();
    server
        .seed(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "default"}, "data": {"v": "0"}}))
        .unwrap();
    let client = server.client().unwrap();
    let factory = SharedInformerFactory::new(client.clone(), FactoryOptions::default());
    let informer = factory.informer::<ConfigMap>();
    factory.start();
    assert!(
        factory
            .wait_for_cache_sync(Some(WAIT))
            .await
            .values()
            .all(|s| s.has_synced()),
        "synced"
    );
    let key = ObjectKey::new(Some("default"), "a");
    assert_eq!(informer.pending_write(&key), None, "nothing recorded");
    server.faults().hold_watch_events();
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let written = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"v": "1"}})),
        )
        .await
        .unwrap();
    informer.record_write(&written).unwrap();
    assert!(informer.pending_write(&key).is_some());
    let err = informer
        .wait_until_observed(&key, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("default/a"), "{err}");
    server.faults().release_watch_events();
    informer
        .wait_until_observed(&key, WAIT)
        .await
        .expect("observed once released");
    assert_eq!(informer.pending_write(&key), None);
    let cached = informer.indexer().get_by_key(&key).unwrap();
    assert_eq!(cached.data.as_ref().unwrap()["v"], "1");

    // A delete answered with a Status: observed once the key is gone from the cache.
    server.faults().hold_watch_events();
    let answer = api.delete("a", &Default::default()).await.unwrap();
    informer.record_delete(&key, answer.left().as_ref());
    assert!(informer.pending_write(&key).is_some(), "still cached");
    server.faults().release_watch_events();
    informer.wait_until_observed(&key, WAIT).await.unwrap();
    assert!(informer.indexer().get_by_key(&key).is_none());
    factory.shutdown().await;
}
