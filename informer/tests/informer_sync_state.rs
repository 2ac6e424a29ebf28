//! An informer's sync state and the resourceVersion its store reflects, over the in-memory
//! source, in every FIFO mode.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ObjectMeta;
use reflex_informer::fifo::FifoMode;
use reflex_informer::key::ObjectKey;
use reflex_informer::resource_version;
use reflex_informer::source::memory::MemorySource;
use reflex_informer::source::{ApiStatus, SourceError};
use reflex_informer::sync_state::{SyncFailure, SyncState};
use reflex_informer::{InformerOptions, ReflectorOptions, SharedIndexInformer};
use tokio_util::sync::CancellationToken;

const MODES: [FifoMode; 3] = [
    FifoMode::DeltaFifo,
    FifoMode::InOrder,
    FifoMode::InOrderAtomic,
];

fn cm(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            namespace: Some("ns".into()),
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some([("v".to_owned(), value.to_owned())].into()),
        ..Default::default()
    }
}

/// Polls `cond` on the paused clock, 10 ms per step, for at most a simulated minute.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..6_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

struct Running {
    informer: SharedIndexInformer<ConfigMap>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Paged lists: these tests script failing lists and watches of the list-then-watch path.
fn options(fifo: FifoMode) -> InformerOptions {
    InformerOptions {
        fifo,
        reflector: ReflectorOptions {
            streaming_lists: false,
            ..ReflectorOptions::default()
        },
        ..Default::default()
    }
}

fn start(source: &MemorySource<ConfigMap>, fifo: FifoMode) -> Running {
    let informer = SharedIndexInformer::new(Arc::new(source.clone()), options(fifo));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (informer, shutdown) = (informer.clone(), shutdown.clone());
        async move { informer.run(shutdown).await.unwrap() }
    });
    Running {
        informer,
        shutdown,
        task,
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn the_store_resource_version_follows_events_relists_and_bookmarks_in_every_fifo_mode() {
    for mode in MODES {
        let source = MemorySource::new();
        source.apply(cm("a", "1")).unwrap();
        source.apply(cm("b", "1")).unwrap();
        let r = start(&source, mode);
        assert_eq!(r.informer.last_store_resource_version(), "", "{mode:?}");
        assert!(r.informer.wait_for_sync().await);
        wait_until("the list's rv is the store's", || {
            r.informer.last_store_resource_version() == "2"
        })
        .await;

        // Events: once the store holds a change, its rv is at least that change's.
        let written = source.apply(cm("a", "2")).unwrap();
        wait_until("the update is stored", || {
            r.informer
                .indexer()
                .get_by_key(&ObjectKey::new(Some("ns"), "a"))
                .is_some_and(|o| o.metadata.resource_version.as_deref() == Some(&*written))
        })
        .await;
        wait_until("the store rv reaches the write", || {
            resource_version::is_at_least(&r.informer.last_store_resource_version(), &written)
                == Some(true)
        })
        .await;

        // A bookmark moves it with no object changed.
        let advanced = source.advance();
        source.bookmark();
        wait_until("the bookmark is reflected", || {
            r.informer.last_store_resource_version() == advanced
        })
        .await;

        // A relist (410) moves it to the list's rv.
        source.delete(&ObjectKey::new(Some("ns"), "b")).unwrap();
        source.inject_watch_error(ApiStatus::gone("too old resource version"));
        let now = source.resource_version();
        wait_until("relisted", || {
            r.informer.last_store_resource_version() == now && r.informer.indexer().len() == 1
        })
        .await;
        // Never behind what the store holds, never ahead of the server.
        assert_eq!(
            resource_version::compare(&r.informer.last_store_resource_version(), &now),
            Ok(std::cmp::Ordering::Equal),
            "{mode:?}"
        );
        r.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn sync_state_goes_from_starting_through_failing_to_synced_and_stopped() {
    let source = MemorySource::new();
    source.apply(cm("a", "1")).unwrap();
    for _ in 0..2 {
        source.fail_next_list(SourceError::Status(ApiStatus::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )));
    }
    let informer = SharedIndexInformer::new(Arc::new(source.clone()), options(FifoMode::default()));
    assert_eq!(informer.sync_state(), SyncState::Starting, "before run");
    assert_eq!(informer.last_sync_error_at(), None);
    let mut states = informer.subscribe_sync_state();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (informer, shutdown) = (informer.clone(), shutdown.clone());
        async move { informer.run(shutdown).await.unwrap() }
    });
    let failing = states
        .wait_for(|s| s.failure().is_some())
        .await
        .unwrap()
        .clone();
    assert!(
        matches!(
            failing.failure(),
            Some(SyncFailure::ResourceNotServed { .. })
        ),
        "{failing:?}"
    );
    assert!(!informer.has_synced());
    assert!(informer.last_sync_error_at().is_some());
    states.wait_for(SyncState::is_current).await.unwrap();
    assert!(informer.has_synced(), "Synced means the store has the list");
    assert_eq!(informer.indexer().len(), 1);
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(informer.sync_state(), SyncState::Stopped { synced: true });
}

#[tokio::test(start_paused = true)]
async fn a_synced_informer_whose_watch_keeps_failing_says_so_and_keeps_serving() {
    let source = MemorySource::new();
    source.apply(cm("a", "1")).unwrap();
    let r = start(&source, FifoMode::DeltaFifo);
    assert!(r.informer.wait_for_sync().await);
    wait_until("watching", || source.open_watches() > 0).await;
    for _ in 0..3 {
        source.fail_next_watch(SourceError::Transport("connection refused".into()));
    }
    source.close_watches();
    let mut states = r.informer.subscribe_sync_state();
    let failing = states
        .wait_for(|s| matches!(s, SyncState::Failing { attempts: 2.., .. }))
        .await
        .unwrap()
        .clone();
    assert!(
        matches!(failing.failure(), Some(SyncFailure::Unreachable { .. })),
        "{failing:?}"
    );
    assert!(failing.has_synced() && r.informer.has_synced());
    assert_eq!(failing.code(), 4);
    assert_eq!(r.informer.indexer().len(), 1, "the cache keeps serving");
    states.wait_for(SyncState::is_current).await.unwrap();
    r.stop().await;
}
