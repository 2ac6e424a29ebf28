//! Sharded controller replicas in one process, over the fake API server (real HTTP), under a
//! steady write load: one replica, then three, then two (one shut down, releasing), then one
//! killed without releasing, then one partitioned from its Leases. Checked throughout: no key
//! is reconciled by two replicas at once (a fence shared by the replicas' reconciles); checked
//! when stable: every slot has exactly one holder, among the live replicas, each replica's
//! cache holds exactly its slots' objects, and every object's latest version was reconciled.
//!
//! Lease timings are short (1.5 s lease) so the scenario runs in seconds; the assertions wait
//! for conditions, never for durations.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use parking_lot::Mutex;
use reflex_informer::factory::{FactoryOptions, InformerSpec, SharedInformerFactory};
use reflex_informer::key::ObjectKey;
use reflex_informer::shard::{ShardRange, fnv1a64};
use reflex_informer::{ReflectorOptions, SharedIndexInformer};
use reflex_runtime::controller::{Action, Controller, ControllerOptions, default_error_policy};
use reflex_runtime::leader_election::{InMemoryLease, LeaderElectionError, LeaseStore};
use reflex_runtime::sharding::{InMemoryShardLeases, ShardLeases, Sharder, ShardingConfig};
use reflex_testing::FakeApiServer;
use serde_json::json;
use support::eventually;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const GROUP: &str = "cm-controller";
const SLOTS: u32 = 8;
const OBJECTS: usize = 48;

/// One replica's view of the shared Leases: cut off from all of them while `down` is set.
#[derive(Clone)]
struct Partitionable {
    inner: InMemoryShardLeases,
    down: Arc<AtomicBool>,
}

#[derive(Clone)]
struct PartitionableLease {
    inner: InMemoryLease,
    down: Arc<AtomicBool>,
}

impl PartitionableLease {
    fn check(&self) -> Result<(), LeaderElectionError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(LeaderElectionError::Unavailable {
                name: self.inner.name().to_owned(),
            });
        }
        Ok(())
    }
}

impl LeaseStore for PartitionableLease {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn get(&self) -> Result<Option<Lease>, LeaderElectionError> {
        self.check()?;
        self.inner.get().await
    }
    async fn create(&self, lease: &Lease) -> Result<Lease, LeaderElectionError> {
        self.check()?;
        self.inner.create(lease).await
    }
    async fn replace(&self, lease: &Lease) -> Result<Lease, LeaderElectionError> {
        self.check()?;
        self.inner.replace(lease).await
    }
}

impl ShardLeases for Partitionable {
    type Store = PartitionableLease;
    fn lease(&self, name: &str) -> PartitionableLease {
        PartitionableLease {
            inner: self.inner.get(name),
            down: self.down.clone(),
        }
    }
    async fn list(&self, prefix: &str) -> Result<Vec<Lease>, LeaderElectionError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(LeaderElectionError::Unavailable {
                name: format!("{prefix}*"),
            });
        }
        self.inner.list(prefix).await
    }
}

/// What the replicas' reconciles share: keys in flight anywhere, violations of the fence, and
/// the resourceVersion each key was last reconciled at.
#[derive(Default)]
struct World {
    in_flight: Mutex<HashSet<ObjectKey>>,
    violations: AtomicU64,
    reconciled: Mutex<BTreeMap<ObjectKey, String>>,
}

struct Ctx {
    world: Arc<World>,
    cache: SharedIndexInformer<ConfigMap>,
}

/// A key in flight in the shared fence, out of it when dropped (also when a fenced reconcile's
/// future is dropped mid-way).
struct InFlight<'a> {
    world: &'a World,
    key: ObjectKey,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.world.in_flight.lock().remove(&self.key);
    }
}

async fn reconcile(key: ObjectKey, ctx: Arc<Ctx>) -> Result<Action, std::convert::Infallible> {
    if !ctx.world.in_flight.lock().insert(key.clone()) {
        ctx.world.violations.fetch_add(1, Ordering::SeqCst);
        eprintln!("{key} reconciled by two replicas at once");
        return Ok(Action::done());
    }
    let _in_flight = InFlight {
        world: &ctx.world,
        key: key.clone(),
    };
    let rv = ctx
        .cache
        .indexer()
        .get_by_key(&key)
        .and_then(|cm| cm.metadata.resource_version.clone());
    tokio::time::sleep(Duration::from_millis(5)).await;
    if let Some(rv) = rv {
        ctx.world.reconciled.lock().insert(key.clone(), rv);
    }
    Ok(Action::done())
}

struct Replica {
    name: String,
    leases: Partitionable,
    cache: SharedIndexInformer<ConfigMap>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    factory: SharedInformerFactory,
}

fn config(name: &str) -> ShardingConfig {
    ShardingConfig {
        slots: SLOTS,
        lease_duration: Duration::from_millis(1500),
        renew_deadline: Duration::from_millis(1000),
        retry_period: Duration::from_millis(200),
        release_grace: Duration::from_secs(2),
        ..ShardingConfig::new(GROUP, name)
    }
}

async fn start_replica(
    server: &FakeApiServer,
    leases: &InMemoryShardLeases,
    world: &Arc<World>,
    name: &str,
) -> Replica {
    let leases = Partitionable {
        inner: leases.clone(),
        down: Arc::default(),
    };
    let sharder = Sharder::new(leases.clone(), config(name)).unwrap();
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
    let cache = factory
        .informer_with(InformerSpec::<ConfigMap>::typed().shard(sharder.informer_shard()))
        .unwrap();
    let shutdown = CancellationToken::new();
    let controller = Controller::new(cache.clone())
        .shards(sharder.gate())
        .workers(4)
        .options(ControllerOptions {
            name: name.to_owned(),
            shutdown: shutdown.clone(),
            ..ControllerOptions::default()
        });
    let ctx = Arc::new(Ctx {
        world: world.clone(),
        cache: cache.clone(),
    });
    let run = tokio::spawn(async move {
        controller
            .run(reconcile, default_error_policy, ctx)
            .await
            .unwrap();
    });
    factory.start();
    let sharding = tokio::spawn(sharder.run(shutdown.clone()));
    Replica {
        name: name.to_owned(),
        leases,
        cache,
        shutdown,
        tasks: vec![run, sharding],
        factory,
    }
}

impl Replica {
    /// Shuts down cleanly: slots released after their reconciles.
    async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            t.await.unwrap();
        }
        self.factory.shutdown().await;
    }

    /// Dies at once: nothing is released.
    async fn kill(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.factory.shutdown().await;
    }

    fn cached(&self) -> BTreeSet<ObjectKey> {
        self.cache
            .indexer()
            .snapshot()
            .iter()
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// The server's ConfigMaps: key → (slot, resourceVersion).
async fn server_state(client: &kube::Client) -> BTreeMap<ObjectKey, (u32, String)> {
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), "default");
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|cm| {
            let uid = cm.metadata.uid.clone().unwrap();
            (
                ObjectKey::new(Some("default"), cm.metadata.name.as_deref().unwrap()),
                (
                    ShardRange::slot_of(fnv1a64(uid.as_bytes()), SLOTS),
                    cm.metadata.resource_version.clone().unwrap(),
                ),
            )
        })
        .collect()
}

/// Waits until every slot is held by exactly the live replicas (each by one), every replica's
/// cache holds exactly its slots' objects, and every object's latest version was reconciled.
async fn stable(
    what: &str,
    leases: &InMemoryShardLeases,
    live: &[&Replica],
    world: &World,
    client: &kube::Client,
) {
    let names: BTreeSet<String> = live.iter().map(|r| r.name.clone()).collect();
    eventually(
        &format!("{what}: every slot held by a live replica"),
        || {
            let holders = leases.slot_holders(GROUP);
            let ok = holders.len() == SLOTS as usize
                && holders.values().all(|h| names.contains(h))
                && names.iter().all(|n| holders.values().any(|h| h == n));
            async move { ok.then_some(()) }
        },
    )
    .await;
    eventually(
        &format!("{what}: caches hold their slots, every object reconciled"),
        || {
            let holders = leases.slot_holders(GROUP);
            async move {
                let state = server_state(client).await;
                for r in live {
                    let want: BTreeSet<ObjectKey> = state
                        .iter()
                        .filter(|(_, (slot, _))| holders.get(slot) == Some(&r.name))
                        .map(|(k, _)| k.clone())
                        .collect();
                    if r.cached() != want {
                        return None;
                    }
                }
                let reconciled = world.reconciled.lock().clone();
                state
                    .iter()
                    .all(|(k, (_, rv))| reconciled.get(k) == Some(rv))
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        world.violations.load(Ordering::SeqCst),
        0,
        "{what}: a key reconciled by two replicas at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_split_the_slots_and_hand_them_off_safely() {
    let server = FakeApiServer::start().await.unwrap();
    for i in 0..OBJECTS {
        server
            .seed(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("cm-{i}"), "namespace": "default"}, "data": {"v": "0"}}))
            .unwrap();
    }
    let client = server.client().unwrap();
    let leases = InMemoryShardLeases::new();
    let world = Arc::new(World::default());

    // A steady write load for the whole scenario.
    let writing = CancellationToken::new();
    let writer = {
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), "default");
        let writing = writing.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !writing.is_cancelled() {
                n += 1;
                let name = format!("cm-{}", n as usize % OBJECTS);
                let patch = json!({"data": {"v": n.to_string()}});
                let _ = api
                    .patch(
                        &name,
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(&patch),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };

    let a = start_replica(&server, &leases, &world, "a").await;
    stable("one replica", &leases, &[&a], &world, &client).await;

    let b = start_replica(&server, &leases, &world, "b").await;
    let c = start_replica(&server, &leases, &world, "c").await;
    stable("three replicas", &leases, &[&a, &b, &c], &world, &client).await;
    for r in [&a, &b, &c] {
        let held = leases
            .slot_holders(GROUP)
            .values()
            .filter(|h| **h == r.name)
            .count();
        assert!(
            (2..=3).contains(&held),
            "{}: {held} of {SLOTS} slots",
            r.name
        );
    }

    // Scale down: c releases its slots after its reconciles.
    c.stop().await;
    stable(
        "two replicas after a release",
        &leases,
        &[&a, &b],
        &world,
        &client,
    )
    .await;

    // b dies without releasing: its slots move once their Leases expire.
    b.kill().await;
    stable("one replica after a crash", &leases, &[&a], &world, &client).await;

    // d joins; then a is partitioned from the Leases: it must stop reconciling (fenced by its
    // own renew deadline) before d, seeing a's Leases expire, takes its slots.
    let d = start_replica(&server, &leases, &world, "d").await;
    stable("two replicas again", &leases, &[&a, &d], &world, &client).await;
    a.leases.down.store(true, Ordering::SeqCst);
    stable("after a partition", &leases, &[&d], &world, &client).await;
    assert!(
        a.cache.indexer().snapshot().iter().count() <= OBJECTS,
        "the partitioned replica's cache is bounded"
    );

    writing.cancel();
    writer.await.unwrap();
    stable("without writes", &leases, &[&d], &world, &client).await;
    assert_eq!(world.violations.load(Ordering::SeqCst), 0);
    a.kill().await;
    d.stop().await;
    server.shutdown().await;
}
