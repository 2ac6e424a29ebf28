//! A relist keeps the cached copy of every object whose resourceVersion did not change: after a
//! forced 410, the store holds the very same `Arc`s for the unchanged objects and new ones for
//! what changed, whether the relist streams, pages or comes in one response, with or without a
//! transform (the cached object is the transform's output for that version; a new version is
//! transformed as it is decoded). A compact store has no decoded copy to share, so no `Arc` is
//! reused (it keeps the packed form of every unchanged object instead: the store's unit tests),
//! and what it reads back after the relist is each object's latest version.

#[path = "support/wait.rs"]
mod wait;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use reflex_informer::factory::{FactoryOptions, InformerSpec, SharedInformerFactory};
use reflex_informer::key::ObjectKey;
use reflex_informer::reflector::ReflectorOptions;
use reflex_informer::{SharedIndexInformer, resource_version};
use reflex_testing::FakeApiServer;
use serde_json::json;
use wait::eventually;

const N: usize = 40;

#[derive(Debug, Clone, Copy)]
enum Mode {
    Streaming,
    Pages,
    OneResponse,
    Transform,
    Compact,
}

fn spec(mode: Mode) -> InformerSpec<ConfigMap> {
    match mode {
        Mode::Transform => InformerSpec::<ConfigMap>::typed().transform(Arc::new(|cm| {
            let mut cm = Arc::unwrap_or_clone(cm);
            cm.data
                .get_or_insert_default()
                .insert("transformed".into(), "yes".into());
            Arc::new(cm)
        })),
        Mode::Compact => InformerSpec::<ConfigMap>::typed().compact(),
        Mode::Streaming | Mode::Pages | Mode::OneResponse => InformerSpec::<ConfigMap>::typed(),
    }
}

fn reflector(mode: Mode) -> ReflectorOptions {
    ReflectorOptions {
        streaming_lists: matches!(mode, Mode::Streaming | Mode::Transform),
        page_size: match mode {
            Mode::Pages => Some(7),
            Mode::OneResponse => Some(0),
            _ => None,
        },
        ..ReflectorOptions::default()
    }
}

fn snapshot(informer: &SharedIndexInformer<ConfigMap>) -> BTreeMap<ObjectKey, Arc<ConfigMap>> {
    informer
        .indexer()
        .snapshot()
        .iter()
        .map(|(k, o)| (k.clone(), o.clone()))
        .collect()
}

/// Runs the scenario; returns how many listed objects were reused: at least the `N - 1`
/// unchanged ones of the forced relist (a legitimate further relist reuses more).
async fn relist_after_410(mode: Mode) -> u64 {
    let server = FakeApiServer::start().await.unwrap();
    for i in 0..N {
        server
            .seed(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("cm-{i}"), "namespace": "default"},
                "data": {"i": i.to_string()}}))
            .unwrap();
    }
    let factory = SharedInformerFactory::new(
        server.client().unwrap(),
        FactoryOptions {
            reflector: reflector(mode),
            ..FactoryOptions::default()
        },
    );
    let informer = factory.informer_with(spec(mode)).unwrap();
    factory.start();
    assert!(
        factory
            .wait_for_cache_sync(Some(Duration::from_secs(30)))
            .await
            .values()
            .all(|s| s.has_synced())
    );
    let stats = informer.reflector_stats().unwrap();
    assert_eq!(
        stats.reused_objects(),
        0,
        "{mode:?}: nothing to reuse on the first list"
    );
    let before = snapshot(&informer);
    assert_eq!(before.len(), N);

    // One object changes while the informer watches; then the history is gone.
    let changed = ObjectKey::new(Some("default"), "cm-3");
    server
        .update(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cm-3", "namespace": "default"}, "data": {"i": "changed"}}))
        .unwrap();
    eventually("the update reaches the store", || {
        informer
            .indexer()
            .get_by_key(&changed)
            .is_some_and(|cm| cm.data.as_ref().unwrap()["i"] == "changed")
    })
    .await;
    let updated = informer.indexer().get_by_key(&changed).unwrap();
    // A second change the watch will not see: it is made after the history expired.
    let relists = stats.relists();
    server.faults().expire_history();
    let unseen = ObjectKey::new(Some("default"), "cm-5");
    server
        .update(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cm-5", "namespace": "default"}, "data": {"i": "unseen"}}))
        .unwrap();
    let target = server.resource_version().to_string();
    eventually("the relist reaches the store", || {
        stats.relists() > relists
            && resource_version::compare(&informer.last_store_resource_version(), &target)
                .is_ok_and(|o| o.is_ge())
    })
    .await;
    let after = snapshot(&informer);
    assert_eq!(after.len(), N);
    let reuses = mode_reuses(mode);
    for (key, obj) in &after {
        if matches!(mode, Mode::Transform) {
            assert_eq!(obj.data.as_ref().unwrap()["transformed"], "yes", "{key}");
        }
        let same = Arc::ptr_eq(obj, &before[key]);
        if key == &unseen {
            assert!(!same, "{mode:?}: {key} changed during the gap");
            assert_eq!(obj.data.as_ref().unwrap()["i"], "unseen");
        } else if key == &changed {
            // Its cached copy is the one the watch delivered, of the listed version.
            assert!(!same, "{mode:?}: {key} changed before the gap");
            assert_eq!(obj, &updated, "{mode:?}: {key}");
            if reuses {
                assert!(Arc::ptr_eq(obj, &updated), "{mode:?}: {key}");
            }
        } else if reuses {
            assert!(same, "{mode:?}: {key} is unchanged");
        } else {
            // A compact store decodes on read (or lends its small cache of decoded objects),
            // so only the content is promised.
            assert_eq!(obj, &before[key], "{mode:?}: {key} is unchanged");
        }
    }
    let reused = stats.reused_objects();
    factory.shutdown().await;
    server.shutdown().await;
    reused
}

fn mode_reuses(mode: Mode) -> bool {
    !matches!(mode, Mode::Compact)
}

#[tokio::test]
async fn a_streaming_relist_keeps_the_unchanged_objects() {
    assert!(relist_after_410(Mode::Streaming).await >= (N - 1) as u64);
}

#[tokio::test]
async fn a_paged_relist_keeps_the_unchanged_objects() {
    assert!(relist_after_410(Mode::Pages).await >= (N - 1) as u64);
}

#[tokio::test]
async fn a_one_response_relist_keeps_the_unchanged_objects() {
    assert!(relist_after_410(Mode::OneResponse).await >= (N - 1) as u64);
}

#[tokio::test]
async fn a_relist_with_a_transform_keeps_the_unchanged_transformed_objects() {
    assert!(relist_after_410(Mode::Transform).await >= (N - 1) as u64);
}

#[tokio::test]
async fn a_compact_store_reuses_nothing() {
    assert_eq!(relist_after_410(Mode::Compact).await, 0);
}
