//! SharedIndexInformer over the in-memory source: handler delivery and convergence under faults.
//!
//! After every scripted fault the convergence invariant must hold: the store equals the
//! source's final state key for key and resourceVersion for resourceVersion, and every
//! handler's view (built only from its notifications) equals it too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use parking_lot::Mutex;
use reflex_informer::fifo::FifoMode;
use reflex_informer::handler::DeltaObject;
use reflex_informer::handler::handler_fn;
use reflex_informer::key::ObjectKey;
use reflex_informer::source::ListWatch;
use reflex_informer::source::memory::MemorySource;
use reflex_informer::source::{ApiStatus, SourceError};
use reflex_informer::{InformerError, InformerOptions, SharedIndexInformer};
use stores::{MODES, Mode, store};
use tokio_util::sync::CancellationToken;

#[path = "support/stores.rs"]
mod stores;

/// An informer over `source` whose store is in `mode`: every guarantee holds in every mode.
fn informer_in(
    mode: Mode,
    source: Arc<dyn ListWatch<ConfigMap>>,
    options: InformerOptions,
) -> SharedIndexInformer<ConfigMap> {
    SharedIndexInformer::with_indexer(source, store::<ConfigMap>(mode), options)
}

type View = Arc<Mutex<BTreeMap<String, String>>>;

/// Every FIFO mode: each guarantee of the informer holds in each.
const FIFO_MODES: [FifoMode; 3] = [
    FifoMode::DeltaFifo,
    FifoMode::InOrder,
    FifoMode::InOrderAtomic,
];

fn cm(name: &str, data: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.namespace = Some("ns".into());
    cm.metadata.name = Some(name.into());
    cm.data = Some([("v".to_string(), data.to_string())].into());
    cm
}

fn key_of(cm: &ConfigMap) -> String {
    ObjectKey::new(
        cm.metadata.namespace.as_deref(),
        cm.metadata.name.as_deref().unwrap_or_default(),
    )
    .to_string()
}

fn rv(cm: &ConfigMap) -> String {
    cm.metadata.resource_version.clone().unwrap_or_default()
}

/// A handler whose view is what its notifications say the cache holds; it panics on objects
/// named `panic-*` after recording them (a panicking handler must still converge).
fn viewer(view: View) -> reflex_informer::handler::FnHandler<ConfigMap> {
    let (a, u, d) = (view.clone(), view.clone(), view);
    handler_fn()
        .on_add(move |o: &Arc<ConfigMap>, _| {
            a.lock().insert(key_of(o), rv(o));
            assert!(
                !o.metadata
                    .name
                    .as_deref()
                    .unwrap_or_default()
                    .starts_with("panic-"),
                "scripted panic"
            );
        })
        .on_update(move |_, o: &Arc<ConfigMap>| {
            u.lock().insert(key_of(o), rv(o));
        })
        .on_delete(move |o: &DeltaObject<ConfigMap>| {
            let key = match o {
                DeltaObject::Object(o) => key_of(o),
                DeltaObject::Tombstone(t) => t.key.to_string(),
            };
            d.lock().remove(&key);
        })
}

fn source_state(source: &MemorySource<ConfigMap>) -> BTreeMap<String, String> {
    source
        .objects()
        .iter()
        .map(|(k, o)| (k.to_string(), rv(o)))
        .collect()
}

fn store_state(informer: &SharedIndexInformer<ConfigMap>) -> BTreeMap<String, String> {
    informer
        .indexer()
        .list()
        .iter()
        .map(|o| (key_of(o), rv(o)))
        .collect()
}

/// Waits (in paused virtual time) until store and views equal the source; fails after 10
/// virtual minutes.
async fn assert_converges(
    source: &MemorySource<ConfigMap>,
    informer: &SharedIndexInformer<ConfigMap>,
    views: &[View],
    case: &str,
) {
    let want = source_state(source);
    for _ in 0..6000 {
        if store_state(informer) == want && views.iter().all(|v| *v.lock() == want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store_state(informer), want, "{case}: store");
    for v in views {
        assert_eq!(*v.lock(), want, "{case}: handler view");
    }
}

type Fault = fn(&MemorySource<ConfigMap>);

#[tokio::test(start_paused = true)]
async fn store_and_every_handler_view_converge_to_the_source_after_faults() {
    let faults: Vec<(&str, Fault)> = vec![
        ("watch closed every 3 events", |s| {
            s.close_watches_every(Some(3))
        }),
        ("410 mid-watch", |s| {
            s.compact();
            s.inject_watch_error(ApiStatus::gone("too old resource version"));
        }),
        ("410 mid-list (continue token expired)", |s| {
            s.fail_list_page(2, SourceError::Status(ApiStatus::gone("continue expired")));
            s.compact();
            s.inject_watch_error(ApiStatus::gone("too old resource version"));
        }),
        ("ERROR event", |s| {
            s.inject_watch_error(ApiStatus::new(500, "InternalError", "boom"))
        }),
        ("malformed event", |s| s.inject_malformed_event()),
        ("all watches dropped", |s| s.close_watches()),
    ];
    let setups = MODES.into_iter().flat_map(|m| FIFO_MODES.map(|f| (m, f)));
    for ((mode, fifo), (case, fault)) in setups.flat_map(|s| faults.iter().map(move |f| (s, *f))) {
        let case = &format!("{mode:?}, {fifo:?}: {case}");
        let source = MemorySource::<ConfigMap>::new();
        for i in 0..30 {
            source.apply(cm(&format!("o{i}"), "0")).unwrap();
        }
        let informer = informer_in(
            mode,
            Arc::new(source.clone()),
            InformerOptions {
                reflector: reflex_informer::reflector::ReflectorOptions {
                    page_size: Some(7),
                    ..Default::default()
                },
                fifo,
                ..Default::default()
            },
        );
        let views: Vec<View> = (0..2).map(|_| View::default()).collect();
        for v in &views {
            informer.add_event_handler(viewer(v.clone())).unwrap();
        }
        let shutdown = CancellationToken::new();
        let run = tokio::spawn({
            let informer = informer.clone();
            let shutdown = shutdown.clone();
            async move { informer.run(shutdown).await }
        });
        assert!(informer.wait_for_sync().await, "{case}: synced");
        assert_converges(&source, &informer, &views, case).await;

        fault(&source);
        for i in 0..30 {
            match i % 3 {
                0 => drop(source.apply(cm(&format!("o{i}"), "1")).unwrap()),
                1 => drop(source.delete(&ObjectKey::new(Some("ns"), format!("o{i}")))),
                _ => drop(source.apply(cm(&format!("new{i}"), "1")).unwrap()),
            }
            if i == 15 {
                fault(&source);
            }
        }
        source.apply(cm("panic-1", "x")).unwrap();
        source.close_watches_every(None);
        assert_converges(&source, &informer, &views, case).await;
        assert!(!informer.last_sync_resource_version().is_empty());
        shutdown.cancel();
        run.await.unwrap().unwrap();
        assert!(informer.handler_count() == 0 || informer.is_stopped());
    }
}

#[tokio::test(start_paused = true)]
async fn late_handler_gets_every_cached_object_as_initial_then_live_changes_once() {
    for mode in MODES {
        let source = MemorySource::<ConfigMap>::new();
        for i in 0..10 {
            source.apply(cm(&format!("o{i}"), "0")).unwrap();
        }
        let informer = informer_in(mode, Arc::new(source.clone()), InformerOptions::default());
        let shutdown = CancellationToken::new();
        let run = tokio::spawn({
            let informer = informer.clone();
            let shutdown = shutdown.clone();
            async move { informer.run(shutdown).await }
        });
        assert!(informer.wait_for_sync().await);
        let adds: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let view = View::default();
        let a = adds.clone();
        let v = view.clone();
        let reg = informer
            .add_event_handler(
                handler_fn()
                    .on_add(move |o: &Arc<ConfigMap>, initial| {
                        a.lock().push((key_of(o), initial));
                        v.lock().insert(key_of(o), rv(o));
                    })
                    .on_update({
                        let v = view.clone();
                        move |_, o: &Arc<ConfigMap>| {
                            v.lock().insert(key_of(o), rv(o));
                        }
                    }),
            )
            .unwrap();
        assert!(reg.wait_for_sync().await);
        source.apply(cm("late", "1")).unwrap();
        source.apply(cm("o1", "1")).unwrap();
        assert_converges(&source, &informer, &[view], "late handler").await;
        let adds = adds.lock().clone();
        let initial: Vec<_> = adds.iter().filter(|(_, i)| *i).collect();
        assert_eq!(
            initial.len(),
            10,
            "every cached object once, flagged initial"
        );
        assert_eq!(
            adds.len(),
            11,
            "then the new object once, not initial: {adds:?}"
        );
        assert_eq!(adds[10], ("ns/late".to_string(), false));
        shutdown.cancel();
        run.await.unwrap().unwrap();
        assert!(matches!(
            informer.add_event_handler(handler_fn()),
            Err(InformerError::Stopped)
        ));
    }
}

#[tokio::test(start_paused = true)]
async fn transform_runs_before_objects_reach_the_store_and_handlers() {
    for mode in MODES {
        let source = MemorySource::<ConfigMap>::new();
        source.apply(cm("a", "secret")).unwrap();
        let informer = informer_in(mode, Arc::new(source.clone()), InformerOptions::default());
        informer
            .set_transform(Arc::new(|o: Arc<ConfigMap>| {
                let mut o = Arc::unwrap_or_clone(o);
                o.data = None;
                Arc::new(o)
            }))
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        informer
            .add_event_handler(handler_fn().on_add(move |o: &Arc<ConfigMap>, _| {
                let _ = tx.send(o.data.is_none());
            }))
            .unwrap();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn({
            let informer = informer.clone();
            let shutdown = shutdown.clone();
            async move { informer.run(shutdown).await }
        });
        assert!(informer.wait_for_sync().await);
        assert!(rx.recv().await.unwrap());
        assert!(informer.indexer().list().iter().all(|o| o.data.is_none()));
        assert!(matches!(
            informer.set_transform(Arc::new(|o| o)),
            Err(InformerError::AlreadyStarted(_))
        ));
        shutdown.cancel();
        run.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn empty_initial_list_still_syncs() {
    for mode in MODES {
        let source = MemorySource::<ConfigMap>::new();
        let informer = informer_in(mode, Arc::new(source.clone()), InformerOptions::default());
        assert!(!informer.has_synced());
        let shutdown = CancellationToken::new();
        let run = tokio::spawn({
            let informer = informer.clone();
            let shutdown = shutdown.clone();
            async move { informer.run(shutdown).await }
        });
        assert!(informer.wait_for_sync().await);
        shutdown.cancel();
        run.await.unwrap().unwrap();
        assert!(informer.is_stopped());
    }
}

#[tokio::test(start_paused = true)]
async fn resync_updates_with_equal_resource_versions_reach_only_handlers_due_for_resync() {
    for (mode, fifo) in MODES.into_iter().flat_map(|m| FIFO_MODES.map(|f| (m, f))) {
        let source = MemorySource::<ConfigMap>::new();
        for i in 0..5 {
            source.apply(cm(&format!("o{i}"), "0")).unwrap();
        }
        let informer = informer_in(
            mode,
            Arc::new(source.clone()),
            InformerOptions {
                default_resync: Duration::from_secs(10),
                fifo,
                ..Default::default()
            },
        );
        let counter = |n: Arc<Mutex<usize>>| {
            handler_fn().on_update(move |old: &Arc<ConfigMap>, new: &Arc<ConfigMap>| {
                assert_eq!(rv(old), rv(new), "only resyncs happen in this test");
                *n.lock() += 1;
            })
        };
        let resyncing: Arc<Mutex<usize>> = Arc::default();
        let silent: Arc<Mutex<usize>> = Arc::default();
        informer
            .add_event_handler(counter(resyncing.clone()))
            .unwrap();
        informer
            .add_event_handler_with_resync(counter(silent.clone()), Duration::ZERO)
            .unwrap();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn({
            let informer = informer.clone();
            let shutdown = shutdown.clone();
            async move { informer.run(shutdown).await }
        });
        assert!(informer.wait_for_sync().await);
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(
            *resyncing.lock(),
            10,
            "{mode:?}, {fifo:?}: two resyncs of five objects"
        );
        assert_eq!(
            *silent.lock(),
            0,
            "{mode:?}, {fifo:?}: a handler without resync gets no resync updates"
        );
        shutdown.cancel();
        run.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn an_atomic_relist_reaches_the_store_whole_then_handlers_hear_deletions_then_list_order() {
    for mode in MODES {
        let source = MemorySource::<ConfigMap>::new();
        for name in ["a", "b", "c"] {
            source.apply(cm(name, "0")).unwrap();
        }
        let informer = informer_in(
            mode,
            Arc::new(source.clone()),
            InformerOptions {
                fifo: FifoMode::InOrderAtomic,
                ..Default::default()
            },
        );
        // Each notification, and the keys the store held when the handler ran.
        type Seen = Arc<Mutex<Vec<(String, Vec<String>)>>>;
        let seen: Seen = Arc::default();
        let store = informer.indexer().clone();
        let record = move |seen: &Seen, what: String| {
            let mut keys: Vec<String> = store.list().iter().map(|o| key_of(o)).collect();
            keys.sort();
            seen.lock().push((what, keys));
        };
        let (r1, r2, r3) = (record.clone(), record.clone(), record);
        let (s1, s2, s3) = (seen.clone(), seen.clone(), seen.clone());
        informer
            .add_event_handler(
                handler_fn()
                    .on_add(move |o: &Arc<ConfigMap>, initial| {
                        r1(&s1, format!("add {} initial={initial}", key_of(o)))
                    })
                    .on_update(move |old: &Arc<ConfigMap>, new: &Arc<ConfigMap>| {
                        r2(
                            &s2,
                            format!("update {} {}->{}", key_of(new), rv(old), rv(new)),
                        )
                    })
                    .on_delete(move |o: &DeltaObject<ConfigMap>| {
                        let what = match o {
                            DeltaObject::Object(o) => format!("delete {}", key_of(o)),
                            DeltaObject::Tombstone(t) => format!("delete {} (tombstone)", t.key),
                        };
                        r3(&s3, what)
                    }),
            )
            .unwrap();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn({
            let informer = informer.clone();
            let shutdown = shutdown.clone();
            async move { informer.run(shutdown).await }
        });
        assert!(informer.wait_for_sync().await);
        let eventually = |n: usize| {
            let seen = seen.clone();
            async move {
                for _ in 0..6000 {
                    if seen.lock().len() >= n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        eventually(3).await;
        let all = |keys: &[&str]| keys.iter().map(|k| format!("ns/{k}")).collect::<Vec<_>>();
        assert_eq!(
            *seen.lock(),
            [
                ("add ns/a initial=true".to_string(), all(&["a", "b", "c"])),
                ("add ns/b initial=true".to_string(), all(&["a", "b", "c"])),
                ("add ns/c initial=true".to_string(), all(&["a", "b", "c"])),
            ],
            "{mode:?}: the initial list"
        );
        seen.lock().clear();
        // Behind the watch's back (it ends, the re-watch is refused as too old): a deleted, c
        // changed, d created; the reflector relists.
        let (b_rv, c_rv) = (
            rv(&source.objects()[&ObjectKey::new(Some("ns"), "b")]),
            rv(&source.objects()[&ObjectKey::new(Some("ns"), "c")]),
        );
        source.close_watches();
        source.fail_next_watch(SourceError::Status(ApiStatus::gone(
            "too old resource version",
        )));
        source.delete(&ObjectKey::new(Some("ns"), "a"));
        source.apply(cm("c", "1")).unwrap();
        source.apply(cm("d", "1")).unwrap();
        let c_new = rv(&source.objects()[&ObjectKey::new(Some("ns"), "c")]);
        eventually(4).await;
        let after = all(&["b", "c", "d"]);
        assert_eq!(
            *seen.lock(),
            [
                ("delete ns/a (tombstone)".to_string(), after.clone()),
                (format!("update ns/b {b_rv}->{b_rv}"), after.clone()),
                (format!("update ns/c {c_rv}->{c_new}"), after.clone()),
                ("add ns/d initial=false".to_string(), after.clone()),
            ],
            "{mode:?}: one relist, deletions first, then list order"
        );
        assert_converges(&source, &informer, &[], "atomic relist").await;
        shutdown.cancel();
        run.await.unwrap().unwrap();
    }
}
