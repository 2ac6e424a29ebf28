//! Controller guarantees, over informers fed by the in-memory source and tokio's paused clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::DynamicObject;
use kube::core::discovery::Scope;
use kube::discovery::ApiResource;
use parking_lot::Mutex;
use reflex_informer::key::ObjectKey;
use reflex_informer::source::SourceError;
use reflex_informer::source::memory::{MemorySource, RecordedRequest};
use reflex_informer::store::Indexer;
use reflex_informer::{InformerOptions, SharedIndexInformer};
use reflex_runtime::controller::{
    Action, Controller, ControllerError, ControllerOptions, ControllerSummary, ErrorAction, Owned,
    default_error_policy, predicates,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
#[error("failed on purpose")]
struct Failed;

fn config_map(name: &str, data: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.namespace = Some("default".into());
    cm.metadata.name = Some(name.into());
    cm.data = Some([("v".to_owned(), data.to_owned())].into());
    cm
}

fn owned_secret(name: &str, owner: &str, controller: bool) -> Secret {
    let mut s = Secret::default();
    s.metadata.namespace = Some("default".into());
    s.metadata.name = Some(name.into());
    s.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: owner.into(),
        uid: format!("uid-{owner}"),
        controller: Some(controller),
        ..OwnerReference::default()
    }]);
    s
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(Some("default"), name)
}

fn informer<K>(source: &MemorySource<K>) -> SharedIndexInformer<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    SharedIndexInformer::new(Arc::new(source.clone()), InformerOptions::default())
}

/// An informer that lists in pages: for the tests that script failing list requests
/// ([`MemorySource::fail_next_list`]), which a streaming list (the default) never makes.
fn paged_informer<K>(source: &MemorySource<K>) -> SharedIndexInformer<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    SharedIndexInformer::new(
        Arc::new(source.clone()),
        InformerOptions {
            reflector: reflex_informer::reflector::ReflectorOptions {
                streaming_lists: false,
                ..Default::default()
            },
            ..InformerOptions::default()
        },
    )
}

fn options(shutdown: &CancellationToken) -> ControllerOptions {
    ControllerOptions {
        name: "test".into(),
        shutdown: shutdown.clone(),
        ..ControllerOptions::default()
    }
}

/// Shared state of the reconcilers below: what they saw, when, and what to answer.
#[derive(Default)]
struct Ctx {
    seen: Mutex<Vec<(ObjectKey, Instant, bool)>>,
    tx: Mutex<Option<mpsc::UnboundedSender<(ObjectKey, bool)>>>,
    lister_informer: Mutex<Option<SharedIndexInformer<ConfigMap>>>,
}

impl Ctx {
    fn with_channel() -> (Arc<Self>, mpsc::UnboundedReceiver<(ObjectKey, bool)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let ctx = Ctx::default();
        *ctx.tx.lock() = Some(tx);
        (Arc::new(ctx), rx)
    }

    /// Records the key, the time and whether the object is in the lister.
    fn record(&self, key: &ObjectKey) {
        let present = self
            .lister_informer
            .lock()
            .as_ref()
            .map(|i| i.lister().get_by_key(key).is_some())
            .unwrap_or(false);
        self.seen
            .lock()
            .push((key.clone(), Instant::now(), present));
        if let Some(tx) = &*self.tx.lock() {
            let _ = tx.send((key.clone(), present));
        }
    }

    fn times(&self) -> Vec<Instant> {
        self.seen.lock().iter().map(|(_, t, _)| *t).collect()
    }
}

async fn ok_reconcile(key: ObjectKey, ctx: Arc<Ctx>) -> Result<Action, Failed> {
    ctx.record(&key);
    Ok(Action::done())
}

#[tokio::test(start_paused = true)]
async fn reconcile_sees_creates_updates_and_deletes_of_the_primary() {
    let source = MemorySource::<ConfigMap>::new();
    source.apply(config_map("a", "1")).unwrap();
    let cms = informer(&source);
    let (ctx, mut rx) = Ctx::with_channel();
    *ctx.lister_informer.lock() = Some(cms.clone());
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(Controller::new(cms).options(options(&shutdown)).run(
        ok_reconcile,
        default_error_policy,
        ctx.clone(),
    ));
    // Initial list, then create, update, delete: each reconciles, and a deleted object is
    // absent from the lister.
    assert_eq!(rx.recv().await.unwrap(), (key("a"), true));
    source.apply(config_map("b", "1")).unwrap();
    assert_eq!(rx.recv().await.unwrap(), (key("b"), true));
    source.apply(config_map("a", "2")).unwrap();
    assert_eq!(rx.recv().await.unwrap(), (key("a"), true));
    source.delete(&key("b")).unwrap();
    assert_eq!(rx.recv().await.unwrap(), (key("b"), false));
    shutdown.cancel();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(
        summary,
        ControllerSummary {
            reconciles: 4,
            ..ControllerSummary::default()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn generation_predicate_skips_updates_that_keep_the_generation() {
    let source = MemorySource::<ConfigMap>::new();
    let mut cm = config_map("a", "1");
    cm.metadata.generation = Some(1);
    source.apply(cm.clone()).unwrap();
    let cms = informer(&source);
    let (ctx, mut rx) = Ctx::with_channel();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        Controller::new(cms)
            .filter(predicates::generation_changed)
            .options(options(&shutdown))
            .run(ok_reconcile, default_error_policy, ctx.clone()),
    );
    assert_eq!(rx.recv().await.unwrap().0, key("a"));
    cm.data = Some([("v".to_owned(), "status-like".to_owned())].into());
    source.apply(cm.clone()).unwrap(); // same generation: filtered
    cm.metadata.generation = Some(2);
    source.apply(cm).unwrap(); // new generation: reconciled
    assert_eq!(rx.recv().await.unwrap().0, key("a"));
    shutdown.cancel();
    assert_eq!(run.await.unwrap().unwrap().reconciles, 2);
}

#[tokio::test(start_paused = true)]
async fn owned_child_changes_and_deletions_enqueue_the_controlling_owner() {
    let cm_source = MemorySource::<ConfigMap>::new();
    let secret_source = MemorySource::<Secret>::new();
    let (ctx, mut rx) = Ctx::with_channel();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        Controller::new(informer(&cm_source))
            .owns(informer(&secret_source))
            .options(options(&shutdown))
            .run(ok_reconcile, default_error_policy, ctx.clone()),
    );
    // A non-controller reference enqueues nothing; the controller reference does.
    secret_source
        .apply(owned_secret("loose", "ignored", false))
        .unwrap();
    secret_source
        .apply(owned_secret("child", "parent", true))
        .unwrap();
    assert_eq!(rx.recv().await.unwrap().0, key("parent"));
    let mut updated = owned_secret("child", "parent", true);
    updated.string_data = Some([("x".to_owned(), "y".to_owned())].into());
    secret_source.apply(updated).unwrap();
    assert_eq!(rx.recv().await.unwrap().0, key("parent"));
    secret_source.delete(&key("child")).unwrap();
    assert_eq!(rx.recv().await.unwrap().0, key("parent"));
    shutdown.cancel();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.reconciles, 3);
    assert!(ctx.seen.lock().iter().all(|(k, _, _)| *k == key("parent")));
}

#[tokio::test(start_paused = true)]
async fn dynamic_cluster_scoped_owner_is_matched_by_its_api_resource_and_keyed_without_namespace() {
    let clusters = ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Cluster".into(),
        plural: "clusters".into(),
    };
    let cluster_source = MemorySource::<DynamicObject>::new();
    cluster_source
        .apply(DynamicObject::new("east", &clusters))
        .unwrap();
    let primary = SharedIndexInformer::with_indexer(
        Arc::new(cluster_source.clone()),
        Indexer::with_dyntype(clusters.clone()),
        InformerOptions::default(),
    );
    let secret_source = MemorySource::<Secret>::new();
    let (ctx, mut rx) = Ctx::with_channel();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        Controller::new_with(primary, &clusters, Scope::Cluster)
            .owns(informer(&secret_source))
            .options(options(&shutdown))
            .run(ok_reconcile, default_error_policy, ctx.clone()),
    );
    let cluster_key = ObjectKey::new(None::<&str>, "east");
    assert_eq!(rx.recv().await.unwrap().0, cluster_key);
    // A namespaced child of the cluster-scoped owner: the owner's key has no namespace. A
    // reference to another kind with the same name is not an owner of this controller.
    let mut child = owned_secret("creds", "east", true);
    child.metadata.owner_references.as_mut().unwrap()[0].api_version = "example.com/v1".into();
    child.metadata.owner_references.as_mut().unwrap()[0].kind = "Cluster".into();
    secret_source
        .apply(owned_secret("other", "east", true))
        .unwrap();
    secret_source.apply(child).unwrap();
    assert_eq!(rx.recv().await.unwrap().0, cluster_key);
    shutdown.cancel();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.reconciles, 2);
}

#[tokio::test(start_paused = true)]
async fn every_owner_mode_enqueues_non_controlling_owners_too() {
    let cm_source = MemorySource::<ConfigMap>::new();
    let secret_source = MemorySource::<Secret>::new();
    let (ctx, mut rx) = Ctx::with_channel();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        Controller::new(informer(&cm_source))
            .owns(Owned::every_owner(informer(&secret_source)))
            .options(options(&shutdown))
            .run(ok_reconcile, default_error_policy, ctx.clone()),
    );
    // Two owners of the primary's kind, one controlling, and one of another kind.
    let mut shared = owned_secret("shared", "controller-owner", true);
    let refs = shared.metadata.owner_references.as_mut().unwrap();
    let mut plain = refs[0].clone();
    plain.name = "plain-owner".into();
    plain.controller = None;
    let mut other_kind = refs[0].clone();
    other_kind.kind = "Secret".into();
    other_kind.name = "not-an-owner".into();
    refs.extend([plain, other_kind]);
    secret_source.apply(shared).unwrap();
    let mut got = vec![rx.recv().await.unwrap().0, rx.recv().await.unwrap().0];
    got.sort_by_key(|k| k.to_string());
    assert_eq!(got, [key("controller-owner"), key("plain-owner")]);
    shutdown.cancel();
    assert_eq!(run.await.unwrap().unwrap().reconciles, 2);
}

#[tokio::test(start_paused = true)]
async fn watches_mapper_keys_are_reconciled() {
    let cm_source = MemorySource::<ConfigMap>::new();
    let secret_source = MemorySource::<Secret>::new();
    let (ctx, mut rx) = Ctx::with_channel();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        Controller::new(informer(&cm_source))
            .watches(informer(&secret_source), |s: &Secret| {
                vec![key(&format!(
                    "for-{}",
                    s.metadata.name.as_deref().unwrap_or("")
                ))]
            })
            .options(options(&shutdown))
            .run(ok_reconcile, default_error_policy, ctx.clone()),
    );
    secret_source.apply(owned_secret("s1", "x", false)).unwrap();
    assert_eq!(rx.recv().await.unwrap().0, key("for-s1"));
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn errors_retry_with_the_default_exponential_backoff() {
    let source = MemorySource::<ConfigMap>::new();
    source.apply(config_map("a", "1")).unwrap();
    let (ctx, mut rx) = Ctx::with_channel();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        Controller::new(informer(&source))
            .options(options(&shutdown))
            .run(
                |key, ctx: Arc<Ctx>| async move {
                    ctx.record(&key);
                    Err::<Action, _>(Failed)
                },
                default_error_policy,
                ctx.clone(),
            ),
    );
    for _ in 0..5 {
        rx.recv().await.unwrap();
    }
    shutdown.cancel();
    let summary = run.await.unwrap().unwrap();
    let times = ctx.times();
    let gaps: Vec<Duration> = times.windows(2).take(4).map(|w| w[1] - w[0]).collect();
    let ms = Duration::from_millis;
    assert_eq!(gaps, vec![ms(5), ms(10), ms(20), ms(40)]);
    assert!(summary.errors >= 5 && summary.requeues >= 5, "{summary:?}");
}

#[tokio::test(start_paused = true)]
async fn error_policy_can_requeue_after_a_delay_or_drop() {
    let ms = Duration::from_millis;
    for (policy, expect_more) in [
        (ErrorAction::RequeueAfter(ms(700)), true),
        (ErrorAction::Drop, false),
    ] {
        let source = MemorySource::<ConfigMap>::new();
        source.apply(config_map("a", "1")).unwrap();
        let (ctx, mut rx) = Ctx::with_channel();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(
            Controller::new(informer(&source))
                .options(options(&shutdown))
                .run(
                    |key, ctx: Arc<Ctx>| async move {
                        ctx.record(&key);
                        Err::<Action, _>(Failed)
                    },
                    move |_: &Failed, _: &ObjectKey, _: &Arc<Ctx>| policy,
                    ctx.clone(),
                ),
        );
        rx.recv().await.unwrap();
        let start = Instant::now();
        if expect_more {
            rx.recv().await.unwrap();
            assert_eq!(ctx.times()[1] - ctx.times()[0], ms(700));
        } else {
            // Nothing else is due: an hour passes without another reconcile.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            assert_eq!(ctx.seen.lock().len(), 1);
            assert!(Instant::now() - start >= Duration::from_secs(3600));
        }
        shutdown.cancel();
        let summary = run.await.unwrap().unwrap();
        assert_eq!(summary.dropped, u64::from(!expect_more), "{policy:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn requeue_after_reconciles_again_after_the_delay() {
    let source = MemorySource::<ConfigMap>::new();
    source.apply(config_map("a", "1")).unwrap();
    let (ctx, mut rx) = Ctx::with_channel();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        Controller::new(informer(&source))
            .options(options(&shutdown))
            .run(
                |key, ctx: Arc<Ctx>| async move {
                    ctx.record(&key);
                    Ok::<_, Failed>(Action::requeue_after(Duration::from_secs(30)))
                },
                default_error_policy,
                ctx.clone(),
            ),
    );
    for _ in 0..3 {
        rx.recv().await.unwrap();
    }
    shutdown.cancel();
    let summary = run.await.unwrap().unwrap();
    let times = ctx.times();
    assert_eq!(times[1] - times[0], Duration::from_secs(30));
    assert_eq!(times[2] - times[1], Duration::from_secs(30));
    assert!(summary.requeues >= 3 && summary.errors == 0, "{summary:?}");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_reconcile_is_retried_and_the_worker_survives() {
    let source = MemorySource::<ConfigMap>::new();
    source.apply(config_map("a", "1")).unwrap();
    let (ctx, mut rx) = Ctx::with_channel();
    let shutdown = CancellationToken::new();
    let panicked = Arc::new(AtomicBool::new(false));
    let run = tokio::spawn(
        Controller::new(informer(&source))
            .workers(1)
            .options(options(&shutdown))
            .run(
                move |key, ctx: Arc<Ctx>| {
                    let panicked = panicked.clone();
                    async move {
                        ctx.record(&key);
                        if !panicked.swap(true, Ordering::SeqCst) {
                            panic!("reconcile bug");
                        }
                        Ok::<_, Failed>(Action::done())
                    }
                },
                default_error_policy,
                ctx.clone(),
            ),
    );
    rx.recv().await.unwrap(); // panics
    rx.recv().await.unwrap(); // retried after 5 ms
    source.apply(config_map("b", "1")).unwrap();
    assert_eq!(rx.recv().await.unwrap().0, key("b")); // the only worker still works
    shutdown.cancel();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.panics, 1);
    assert_eq!(summary.reconciles, 3);
    let times = ctx.times();
    assert_eq!(times[1] - times[0], Duration::from_millis(5));
}

#[tokio::test(start_paused = true)]
async fn never_two_reconciles_of_one_key_at_once_under_many_workers() {
    let source = MemorySource::<ConfigMap>::new();
    for i in 0..4 {
        source.apply(config_map(&format!("o{i}"), "0")).unwrap();
    }
    #[derive(Default)]
    struct Concurrency {
        per_key: Mutex<HashMap<ObjectKey, usize>>,
        violations: AtomicUsize,
        running: AtomicUsize,
        max_running: AtomicUsize,
        calls: AtomicUsize,
    }
    let conc = Arc::new(Concurrency::default());
    let shutdown = CancellationToken::new();
    let cms = informer(&source);
    let controller = Controller::new(cms.clone())
        .workers(8)
        .options(options(&shutdown));
    let metrics = controller.metrics();
    let run = tokio::spawn(controller.run(
        |key, c: Arc<Concurrency>| async move {
            c.calls.fetch_add(1, Ordering::SeqCst);
            {
                let mut map = c.per_key.lock();
                let n = map.entry(key.clone()).or_default();
                *n += 1;
                if *n > 1 {
                    c.violations.fetch_add(1, Ordering::SeqCst);
                }
            }
            let now = c.running.fetch_add(1, Ordering::SeqCst) + 1;
            c.max_running.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(3)).await;
            c.running.fetch_sub(1, Ordering::SeqCst);
            *c.per_key.lock().get_mut(&key).unwrap() -= 1;
            Ok::<_, Failed>(Action::done())
        },
        default_error_policy,
        conc.clone(),
    ));
    cms.wait_for_sync().await;
    // Hammer the four keys while their reconciles are in flight.
    for round in 1..=50 {
        for i in 0..4 {
            source
                .apply(config_map(&format!("o{i}"), &round.to_string()))
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(conc.violations.load(Ordering::SeqCst), 0);
    // Different keys did run in parallel, so the check above had a chance to fail.
    assert!(conc.max_running.load(Ordering::SeqCst) > 1);
    assert!(conc.calls.load(Ordering::SeqCst) > 8);
    assert_eq!(summary, metrics.snapshot());
}

#[tokio::test(start_paused = true)]
async fn workers_start_only_after_every_informer_synced() {
    let cm_source = MemorySource::<ConfigMap>::new();
    cm_source.apply(config_map("a", "1")).unwrap();
    let secret_source = MemorySource::<Secret>::new();
    // The child informer's first lists fail, delaying its sync by the reflector's backoff.
    for _ in 0..3 {
        secret_source.fail_next_list(SourceError::InvalidRequest("down".into()));
    }
    let cms = informer(&cm_source);
    let secrets = paged_informer(&secret_source);
    #[derive(Default)]
    struct Seen {
        synced_at_reconcile: Mutex<Vec<(bool, bool)>>,
        informers: Mutex<Option<(SharedIndexInformer<ConfigMap>, SharedIndexInformer<Secret>)>>,
    }
    let seen = Arc::new(Seen::default());
    *seen.informers.lock() = Some((cms.clone(), secrets.clone()));
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        Controller::new(cms.clone())
            .owns(secrets.clone())
            .options(options(&shutdown))
            .run(
                |_key, s: Arc<Seen>| async move {
                    let (a, b) = s.informers.lock().clone().unwrap();
                    s.synced_at_reconcile
                        .lock()
                        .push((a.has_synced(), b.has_synced()));
                    Ok::<_, Failed>(Action::done())
                },
                default_error_policy,
                seen.clone(),
            ),
    );
    assert!(cms.wait_for_sync().await);
    assert!(!secrets.has_synced(), "the child informer should lag");
    assert!(seen.synced_at_reconcile.lock().is_empty());
    assert!(secrets.wait_for_sync().await);
    while seen.synced_at_reconcile.lock().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(*seen.synced_at_reconcile.lock(), vec![(true, true)]);
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_informer_that_never_syncs_fails_run_with_a_sync_timeout() {
    let source = MemorySource::<ConfigMap>::new();
    for _ in 0..100 {
        source.fail_next_list(SourceError::InvalidRequest("down".into()));
    }
    let shutdown = CancellationToken::new();
    let (ctx, _rx) = Ctx::with_channel();
    let cms = paged_informer(&source);
    let result = Controller::new(cms.clone())
        .options(ControllerOptions {
            sync_timeout: Some(Duration::from_secs(10)),
            ..options(&shutdown)
        })
        .run(ok_reconcile, default_error_policy, ctx.clone())
        .await;
    match result {
        Err(ControllerError::SyncTimeout { unsynced, timeout }) => {
            assert_eq!(timeout, Duration::from_secs(10));
            assert_eq!(unsynced.len(), 1, "{unsynced:?}");
            assert_eq!(unsynced[0].informer, "primary:ConfigMap");
            // The error says why: the list keeps failing, and with what.
            assert!(
                matches!(
                    unsynced[0].state.failure(),
                    Some(reflex_informer::SyncFailure::InvalidRequest { message }) if message == "down"
                ),
                "{:?}",
                unsynced[0].state
            );
            let text = ControllerError::SyncTimeout {
                unsynced: unsynced.clone(),
                timeout,
            }
            .to_string();
            assert!(
                text.contains("primary:ConfigMap (invalid request: down"),
                "{text}"
            );
        }
        other => panic!("expected a sync timeout, got {other:?}"),
    }
    assert!(ctx.seen.lock().is_empty());
    // The controller started that informer, so it stopped it.
    assert!(cms.is_stopped());
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_in_flight_reconciles_and_returns_the_summary() {
    let source = MemorySource::<ConfigMap>::new();
    source.apply(config_map("a", "1")).unwrap();
    let (ctx, mut rx) = Ctx::with_channel();
    let finished = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();
    let cms = informer(&source);
    let fin = finished.clone();
    let run = tokio::spawn(
        Controller::new(cms.clone())
            .options(options(&shutdown))
            .run(
                move |key, ctx: Arc<Ctx>| {
                    let fin = fin.clone();
                    async move {
                        ctx.record(&key);
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        fin.store(true, Ordering::SeqCst);
                        Ok::<_, Failed>(Action::done())
                    }
                },
                default_error_policy,
                ctx.clone(),
            ),
    );
    rx.recv().await.unwrap();
    let cancelled_at = Instant::now();
    shutdown.cancel();
    // No new work is taken after the cancel.
    source.apply(config_map("b", "1")).unwrap();
    let summary = run.await.unwrap().unwrap();
    assert!(finished.load(Ordering::SeqCst));
    assert_eq!(Instant::now() - cancelled_at, Duration::from_secs(5));
    assert_eq!(
        summary,
        ControllerSummary {
            reconciles: 1,
            ..ControllerSummary::default()
        }
    );
    assert!(cms.is_stopped());
}

#[tokio::test(start_paused = true)]
async fn reconciles_longer_than_the_grace_period_are_abandoned_and_counted() {
    let source = MemorySource::<ConfigMap>::new();
    source.apply(config_map("a", "1")).unwrap();
    let (ctx, mut rx) = Ctx::with_channel();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        Controller::new(informer(&source))
            .options(ControllerOptions {
                shutdown_grace: Duration::from_secs(2),
                ..options(&shutdown)
            })
            .run(
                |key, ctx: Arc<Ctx>| async move {
                    ctx.record(&key);
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok::<_, Failed>(Action::done())
                },
                default_error_policy,
                ctx.clone(),
            ),
    );
    rx.recv().await.unwrap();
    let cancelled_at = Instant::now();
    shutdown.cancel();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(Instant::now() - cancelled_at, Duration::from_secs(2));
    assert_eq!(summary.abandoned, 1);
}

#[tokio::test(start_paused = true)]
async fn informers_already_running_are_left_running() {
    let source = MemorySource::<ConfigMap>::new();
    let cms = informer(&source);
    let informer_stop = CancellationToken::new();
    let informer_run = tokio::spawn({
        let cms = cms.clone();
        let stop = informer_stop.clone();
        async move { cms.run(stop).await }
    });
    assert!(cms.wait_for_sync().await);
    let shutdown = CancellationToken::new();
    let (ctx, _rx) = Ctx::with_channel();
    let run = tokio::spawn(
        Controller::new(cms.clone())
            .options(options(&shutdown))
            .run(ok_reconcile, default_error_policy, ctx),
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    assert!(!cms.is_stopped());
    assert_eq!(cms.handler_count(), 0, "handlers removed");
    informer_stop.cancel();
    informer_run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn deletions_seen_only_by_a_relist_enqueue_the_primary_and_the_owner() {
    let cm_source = MemorySource::<ConfigMap>::new();
    cm_source.apply(config_map("gone", "1")).unwrap();
    let secret_source = MemorySource::<Secret>::new();
    secret_source
        .apply(owned_secret("child", "parent", true))
        .unwrap();
    let cms = informer(&cm_source);
    let (ctx, mut rx) = Ctx::with_channel();
    *ctx.lister_informer.lock() = Some(cms.clone());
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        Controller::new(cms)
            .owns(informer(&secret_source))
            .options(options(&shutdown))
            .run(ok_reconcile, default_error_policy, ctx.clone()),
    );
    let mut initial = vec![rx.recv().await.unwrap().0, rx.recv().await.unwrap().0];
    initial.sort();
    assert_eq!(initial, vec![key("gone"), key("parent")]);
    // Each watch ends and cannot be reopened, so the reflector relists; the deletions in
    // between are only noticed as missing from the list (tombstones).
    for (close, fail, delete) in [
        (
            Box::new(|| cm_source.close_watches()) as Box<dyn Fn()>,
            Box::new(|| cm_source.fail_next_watch(SourceError::InvalidRequest("x".into())))
                as Box<dyn Fn()>,
            Box::new(|| {
                cm_source.delete(&key("gone")).unwrap();
            }) as Box<dyn Fn()>,
        ),
        (
            Box::new(|| secret_source.close_watches()),
            Box::new(|| secret_source.fail_next_watch(SourceError::InvalidRequest("x".into()))),
            Box::new(|| {
                secret_source.delete(&key("child")).unwrap();
            }),
        ),
    ] {
        fail();
        close();
        delete();
    }
    let mut after = vec![rx.recv().await.unwrap(), rx.recv().await.unwrap()];
    after.sort();
    assert_eq!(after, vec![(key("gone"), false), (key("parent"), false)]);
    // Lists of either kind: streaming ones (the default) are watches with sendInitialEvents.
    // The injected failure may meet the re-watch or, after a very short watch, the streaming
    // relist (which then falls back to a paged list): at least one relist follows the initial
    // list either way.
    let lists = |requests: Vec<RecordedRequest>| {
        requests
            .iter()
            .filter(|r| match r {
                RecordedRequest::List(params) => params.continue_token.is_none(),
                RecordedRequest::Watch(params) => params.send_initial_events,
            })
            .count()
    };
    assert!(
        lists(cm_source.requests()) >= 2,
        "the deletion came from a relist: {:?}",
        cm_source.requests()
    );
    assert!(
        lists(secret_source.requests()) >= 2,
        "the deletion came from a relist: {:?}",
        secret_source.requests()
    );
    shutdown.cancel();
    assert_eq!(run.await.unwrap().unwrap().reconciles, 4);
}

#[tokio::test(start_paused = true)]
async fn a_replacement_queue_paces_the_retries() {
    use reflex_workqueue::{ItemExponentialFailure, RateLimitingQueue};
    let source = MemorySource::<ConfigMap>::new();
    source.apply(config_map("a", "1")).unwrap();
    let (ctx, mut rx) = Ctx::with_channel();
    let shutdown = CancellationToken::new();
    let queue = RateLimitingQueue::new(ItemExponentialFailure::new(
        Duration::from_secs(1),
        Duration::from_secs(3),
    ));
    let run = tokio::spawn(
        Controller::new(informer(&source))
            .queue(queue)
            .options(options(&shutdown))
            .run(
                |key, ctx: Arc<Ctx>| async move {
                    ctx.record(&key);
                    Err::<Action, _>(Failed)
                },
                default_error_policy,
                ctx.clone(),
            ),
    );
    for _ in 0..4 {
        rx.recv().await.unwrap();
    }
    shutdown.cancel();
    run.await.unwrap().unwrap();
    let gaps: Vec<Duration> = ctx.times().windows(2).map(|w| w[1] - w[0]).collect();
    let s = Duration::from_secs;
    assert_eq!(gaps[..3], [s(1), s(2), s(3)]);
}

/// What the reconcilers of the priority-queue tests saw, and a gate that holds the only worker
/// in the reconcile of one key.
struct Gated {
    order: Mutex<Vec<ObjectKey>>,
    hold: Mutex<Option<ObjectKey>>,
    gate: tokio::sync::Semaphore,
}

impl Gated {
    fn new(hold: ObjectKey) -> Arc<Self> {
        Arc::new(Gated {
            order: Mutex::new(Vec::new()),
            hold: Mutex::new(Some(hold)),
            gate: tokio::sync::Semaphore::new(0),
        })
    }

    fn seen(&self) -> Vec<ObjectKey> {
        self.order.lock().clone()
    }
}

async fn gated_reconcile(key: ObjectKey, ctx: Arc<Gated>) -> Result<Action, Failed> {
    ctx.order.lock().push(key.clone());
    let held = {
        let mut hold = ctx.hold.lock();
        if hold.as_ref() == Some(&key) {
            *hold = None;
            true
        } else {
            false
        }
    };
    if held {
        ctx.gate.acquire().await.expect("open").forget();
    }
    Ok(Action::done())
}

/// Waits (on the paused clock) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never came true: {what}");
}

#[tokio::test(start_paused = true)]
async fn with_the_priority_queue_a_real_change_is_reconciled_before_the_initial_list_backlog() {
    use reflex_workqueue::{PriorityQueue, default_controller_rate_limiter};
    const LISTED: usize = 20;
    let source = MemorySource::<ConfigMap>::new();
    let names: Vec<String> = (0..LISTED).map(|i| format!("cm-{i:02}")).collect();
    for name in &names {
        source.apply(config_map(name, "1")).unwrap();
    }
    let queue: PriorityQueue<ObjectKey> = PriorityQueue::new(default_controller_rate_limiter());
    // The only worker is held in the reconcile of the first listed key.
    let ctx = Gated::new(key("cm-00"));
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        Controller::new(informer(&source))
            .workers(1)
            .queue(queue.clone())
            .options(options(&shutdown))
            .run(gated_reconcile, default_error_policy, ctx.clone()),
    );
    until("the first listed key held, the rest queued", || {
        ctx.seen().len() == 1 && queue.len() == LISTED - 1
    })
    .await;
    // Meanwhile a user changes a listed object and creates another one.
    source.apply(config_map("cm-15", "2")).unwrap();
    source.apply(config_map("new", "1")).unwrap();
    until("the new key queued (after the update)", || {
        queue.len() == LISTED
    })
    .await;
    ctx.gate.add_permits(1);
    until("every key reconciled", || ctx.seen().len() == LISTED + 1).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();

    let mut expected = vec![key("cm-00"), key("cm-15"), key("new")];
    expected.extend(
        names[1..]
            .iter()
            .filter(|name| *name != "cm-15")
            .map(|name| key(name)),
    );
    assert_eq!(
        ctx.seen(),
        expected,
        "the real changes first (oldest first), then the initial list in order"
    );
}

#[tokio::test(start_paused = true)]
async fn with_the_priority_queue_resyncs_are_reconciled_at_low_priority_behind_real_changes() {
    use reflex_workqueue::{PriorityQueue, default_controller_rate_limiter};
    let source = MemorySource::<ConfigMap>::new();
    for name in ["a", "b"] {
        source.apply(config_map(name, "1")).unwrap();
    }
    let informer = SharedIndexInformer::new(
        Arc::new(source.clone()),
        InformerOptions {
            default_resync: Duration::from_secs(60),
            ..InformerOptions::default()
        },
    );
    let queue: PriorityQueue<ObjectKey> = PriorityQueue::new(default_controller_rate_limiter());
    let ctx = Gated::new(key("gate"));
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        Controller::new(informer)
            .workers(1)
            .queue(queue.clone())
            .options(options(&shutdown))
            .run(gated_reconcile, default_error_policy, ctx.clone()),
    );
    until("the initial list reconciled", || ctx.seen().len() == 2).await;
    source.apply(config_map("gate", "1")).unwrap();
    until("the worker held", || ctx.seen().len() == 3).await;
    // The resync queues every cached key at low priority (the held one after done) ...
    tokio::time::sleep(Duration::from_secs(61)).await;
    until("the resync queued", || queue.len() == 2).await;
    // ... behind a real change made afterwards.
    source.apply(config_map("c", "1")).unwrap();
    until("the change queued", || queue.len() == 3).await;
    ctx.gate.add_permits(1);
    until("everything reconciled", || ctx.seen().len() == 7).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    let seen = ctx.seen();
    assert_eq!(seen[..3], [key("a"), key("b"), key("gate")]);
    assert_eq!(seen[3], key("c"), "the real change first");
    let mut resynced = seen[4..].to_vec();
    resynced.sort_by_key(|k| k.to_string());
    assert_eq!(
        resynced,
        [key("a"), key("b"), key("gate")],
        "then the resyncs"
    );
}

#[tokio::test(start_paused = true)]
async fn the_priority_queue_option_builds_a_priority_queue_and_resyncs_reconcile_again() {
    // (priority_queue option, reconciles after one resync period)
    for (priority_queue, expected) in [(false, 1), (true, 2)] {
        let source = MemorySource::<ConfigMap>::new();
        source.apply(config_map("a", "1")).unwrap();
        let informer = SharedIndexInformer::new(
            Arc::new(source.clone()),
            InformerOptions {
                default_resync: Duration::from_secs(60),
                ..InformerOptions::default()
            },
        );
        let (ctx, mut rx) = Ctx::with_channel();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(
            Controller::new(informer)
                .options(ControllerOptions {
                    priority_queue,
                    ..options(&shutdown)
                })
                .run(ok_reconcile, default_error_policy, ctx.clone()),
        );
        assert_eq!(rx.recv().await.unwrap().0, key("a"));
        tokio::time::sleep(Duration::from_secs(90)).await;
        shutdown.cancel();
        let summary = run.await.unwrap().unwrap();
        assert_eq!(
            summary.reconciles, expected,
            "priority_queue = {priority_queue}: the FIFO skips resyncs, the priority queue takes them"
        );
    }
}
