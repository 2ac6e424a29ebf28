//! Sharded informers over the fake API server: whether the server shards (`shardSelector`
//! honoured, `shardInfo` echoed) or ignores the parameter (a cluster without the
//! `ShardedListAndWatch` gate), the informers of the slots of a split hold exactly the objects
//! whose FNV-1a hash of `metadata.uid` falls in their slot, disjoint and together everything,
//! through lists, streaming lists and watch events; a new selector on the handle relists,
//! keeps the cached copies of the objects still owned and deletes the others.

#[path = "support/wait.rs"]
mod wait;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use parking_lot::Mutex;
use reflex_informer::factory::{FactoryOptions, InformerSpec, SharedInformerFactory};
use reflex_informer::key::ObjectKey;
use reflex_informer::reflector::ReflectorOptions;
use reflex_informer::shard::{
    ShardField, ShardFiltering, ShardHandle, ShardRange, ShardSelector, fnv1a64,
};
use reflex_informer::{SharedIndexInformer, handler_fn};
use reflex_testing::{FakeApiServer, FakeConfig};
use serde_json::{Value, json};
use wait::eventually;

const SLOTS: u32 = 4;

fn slot_selector(slot: u32) -> ShardSelector {
    ShardSelector::new(ShardField::Uid, [ShardRange::slot(slot, SLOTS).unwrap()])
}

fn key_of(obj: &Value) -> ObjectKey {
    ObjectKey::new(
        obj["metadata"]["namespace"].as_str(),
        obj["metadata"]["name"].as_str().unwrap(),
    )
}

fn slot_of(obj: &Value) -> u32 {
    let uid = obj["metadata"]["uid"].as_str().unwrap();
    ShardRange::slot_of(fnv1a64(uid.as_bytes()), SLOTS)
}

fn keys(informer: &SharedIndexInformer<ConfigMap>) -> BTreeSet<ObjectKey> {
    informer
        .indexer()
        .snapshot()
        .iter()
        .map(|(k, _)| k.clone())
        .collect()
}

fn config_map(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"}, "data": {"v": "1"}})
}

struct Shards {
    _factory: SharedInformerFactory,
    informers: Vec<SharedIndexInformer<ConfigMap>>,
    handles: Vec<ShardHandle>,
}

async fn start_shards(server: &FakeApiServer, streaming: bool) -> Shards {
    let factory = SharedInformerFactory::new(
        server.client().unwrap(),
        FactoryOptions {
            reflector: ReflectorOptions {
                streaming_lists: streaming,
                page_size: Some(25),
                ..ReflectorOptions::default()
            },
            ..FactoryOptions::default()
        },
    );
    let handles: Vec<ShardHandle> = (0..SLOTS)
        .map(|i| ShardHandle::new(slot_selector(i)))
        .collect();
    let informers = handles
        .iter()
        .map(|h| {
            factory
                .informer_with(InformerSpec::<ConfigMap>::typed().shard(h.clone()))
                .unwrap()
        })
        .collect();
    factory.start();
    let synced = factory
        .wait_for_cache_sync(Some(Duration::from_secs(60)))
        .await;
    assert_eq!(synced.len(), SLOTS as usize, "one informer per shard");
    assert!(synced.values().all(|s| s.has_synced()), "{synced:?}");
    Shards {
        _factory: factory,
        informers,
        handles,
    }
}

/// The server's objects, by the slot their uid hashes to.
fn expected(objects: &BTreeMap<ObjectKey, Value>) -> Vec<BTreeSet<ObjectKey>> {
    let mut by_slot = vec![BTreeSet::new(); SLOTS as usize];
    for (key, obj) in objects {
        by_slot[slot_of(obj) as usize].insert(key.clone());
    }
    by_slot
}

async fn converges(shards: &Shards, objects: &BTreeMap<ObjectKey, Value>, what: &str) {
    let want = expected(objects);
    for (slot, informer) in shards.informers.iter().enumerate() {
        eventually(&format!("{what}: shard {slot} holds its objects"), || {
            keys(informer) == want[slot]
        })
        .await;
    }
}

async fn partition_and_follow_changes(config: FakeConfig, streaming: bool) -> Shards {
    let server = FakeApiServer::start_with(config).await.unwrap();
    let mut objects = BTreeMap::new();
    for i in 0..120 {
        let obj = server.seed(config_map(&format!("cm-{i}"))).unwrap();
        objects.insert(key_of(&obj), obj);
    }
    let shards = start_shards(&server, streaming).await;
    let want = expected(&objects);
    assert!(
        want.iter().all(|s| !s.is_empty()),
        "120 objects fill every slot"
    );
    converges(&shards, &objects, "initial list").await;

    // Watch events: new objects land in their shard, deletes leave it, updates stay.
    for i in 120..160 {
        let obj = server.seed(config_map(&format!("cm-{i}"))).unwrap();
        objects.insert(key_of(&obj), obj);
    }
    let client = server.client().unwrap();
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, "default");
    for i in (0..160).step_by(7) {
        let name = format!("cm-{i}");
        api.delete(&name, &Default::default()).await.unwrap();
        objects.remove(&ObjectKey::new(Some("default"), &name));
    }
    let mut changed = objects
        .get(&ObjectKey::new(Some("default"), "cm-1"))
        .cloned()
        .unwrap();
    changed["data"]["v"] = json!("2");
    server.update(changed).unwrap();
    converges(&shards, &objects, "after watch events").await;
    let updated = ObjectKey::new(Some("default"), "cm-1");
    let owner = slot_of(&objects[&updated]) as usize;
    eventually("the update reaches its shard", || {
        shards.informers[owner]
            .indexer()
            .get_by_key(&updated)
            .is_some_and(|cm| cm.data.as_ref().unwrap()["v"] == "2")
    })
    .await;
    shards
}

#[tokio::test]
async fn a_server_that_shards_sends_each_informer_its_share_and_echoes_the_selector() {
    let shards = partition_and_follow_changes(FakeConfig::default(), false).await;
    for h in &shards.handles {
        assert_eq!(h.filtering(), ShardFiltering::Server, "{h:?}");
        assert_eq!(h.dropped(), 0, "the server sent nothing outside the shard");
    }
}

#[tokio::test]
async fn a_server_that_ignores_the_selector_is_filtered_on_the_client() {
    let config = FakeConfig {
        sharded_list_and_watch: false,
        ..FakeConfig::default()
    };
    let shards = partition_and_follow_changes(config, false).await;
    for h in &shards.handles {
        assert_eq!(h.filtering(), ShardFiltering::Client, "{h:?}");
        assert!(h.dropped() > 0, "the other shards' objects were dropped");
    }
}

#[tokio::test]
async fn streaming_lists_shard_on_both_paths() {
    let shards = partition_and_follow_changes(FakeConfig::default(), true).await;
    for h in &shards.handles {
        // A streaming list carries no shardInfo; nothing outside the shard came.
        assert_eq!(h.filtering(), ShardFiltering::Unconfirmed, "{h:?}");
        assert_eq!(h.dropped(), 0);
    }
    let config = FakeConfig {
        sharded_list_and_watch: false,
        ..FakeConfig::default()
    };
    let shards = partition_and_follow_changes(config, true).await;
    for h in &shards.handles {
        assert_eq!(h.filtering(), ShardFiltering::Client, "{h:?}");
    }
}

#[tokio::test]
async fn a_new_selector_relists_keeps_what_stays_and_deletes_what_leaves() {
    for sharding in [true, false] {
        let server = FakeApiServer::start_with(FakeConfig {
            sharded_list_and_watch: sharding,
            ..FakeConfig::default()
        })
        .await
        .unwrap();
        let mut objects = BTreeMap::new();
        for i in 0..80 {
            let obj = server.seed(config_map(&format!("cm-{i}"))).unwrap();
            objects.insert(key_of(&obj), obj);
        }
        let want = expected(&objects);
        let handle = ShardHandle::new(slot_selector(0));
        let factory = SharedInformerFactory::new(
            server.client().unwrap(),
            FactoryOptions {
                reflector: ReflectorOptions {
                    streaming_lists: false,
                    ..ReflectorOptions::default()
                },
                ..FactoryOptions::default()
            },
        );
        let informer = factory
            .informer_with(InformerSpec::<ConfigMap>::typed().shard(handle.clone()))
            .unwrap();
        let deleted = Arc::new(Mutex::new(BTreeSet::new()));
        let seen = deleted.clone();
        informer
            .add_event_handler(handler_fn().on_delete(
                move |gone: &reflex_informer::DeltaObject<ConfigMap>| {
                    if let Some(cm) = gone.object() {
                        seen.lock().insert(ObjectKey::new(
                            cm.metadata.namespace.as_deref(),
                            cm.metadata.name.as_deref().unwrap(),
                        ));
                    }
                },
            ))
            .unwrap();
        factory.start();
        assert!(informer.wait_for_sync().await);
        eventually("slot 0 is cached", || keys(&informer) == want[0]).await;
        let before: BTreeMap<ObjectKey, Arc<ConfigMap>> = informer
            .indexer()
            .snapshot()
            .iter()
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();

        // Grow to slots 0 and 1: slot 0's objects stay the same Arcs.
        handle.set(ShardSelector::new(
            ShardField::Uid,
            [
                ShardRange::slot(0, SLOTS).unwrap(),
                ShardRange::slot(1, SLOTS).unwrap(),
            ],
        ));
        let grown: BTreeSet<ObjectKey> = want[0].union(&want[1]).cloned().collect();
        eventually("slots 0 and 1 are cached", || keys(&informer) == grown).await;
        for (key, obj) in &before {
            let now = informer.indexer().get_by_key(key).unwrap();
            assert!(Arc::ptr_eq(obj, &now), "{key}: the cached copy is kept");
        }

        // Shrink to slot 1: slot 0's objects are deleted, and handlers hear of it.
        handle.set(slot_selector(1));
        eventually("only slot 1 is cached", || keys(&informer) == want[1]).await;
        eventually("handlers saw slot 0 leave", || *deleted.lock() == want[0]).await;
        let expect = if sharding {
            ShardFiltering::Server
        } else {
            ShardFiltering::Client
        };
        eventually("the relist says who filtered", || {
            handle.filtering() == expect
        })
        .await;
        factory.shutdown().await;
    }
}
