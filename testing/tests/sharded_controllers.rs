//! Sharded controller replicas in one process, under a steady write load: one replica, then
//! three, then two (one shut down, releasing), then one killed without releasing, then one
//! partitioned from its Leases. The Leases are `coordination.k8s.io/v1` Leases on the server
//! (`KubeShardLeases`), each replica's behind a switch that cuts it off. Run on the fake API
//! server (which shards lists and watches, or, as a cluster without the gate, ignores the
//! selector) and on a real kube-apiserver (envtest; v1.37 with `ShardedListAndWatch` on, so the
//! server shards; v1.35 without it, so the informers filter on the client).
//!
//! Checked throughout: no key is reconciled by two replicas at once (a fence shared by the
//! replicas' reconciles); checked when stable: every slot's Lease has exactly one holder, among
//! the live replicas, each replica's cache holds exactly its slots' ConfigMaps and the Secrets
//! they control (the children's informer shards by its controller's uid, on the client), every
//! object's latest version was reconciled, and each replica's metrics say how many slots it
//! holds and how many members it sees.
//!
//! Lease timings are short (1.5 s lease) so the scenario runs in seconds; the assertions wait
//! for conditions, never for durations.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use reflex_informer::factory::{FactoryOptions, InformerSpec, SharedInformerFactory};
use reflex_informer::key::ObjectKey;
use reflex_informer::shard::{ShardFiltering, ShardHandle, ShardRange, fnv1a64};
use reflex_informer::{ReflectorOptions, SharedIndexInformer};
use reflex_runtime::controller::{Action, Controller, ControllerOptions, default_error_policy};
use reflex_runtime::leader_election::{KubeLease, LeaderElectionError, LeaseStore};
use reflex_runtime::metrics::Metrics;
use reflex_runtime::sharding::{KubeShardLeases, ShardLeases, Sharder, ShardingConfig};
use reflex_testing::envtest::{Environment, Options};
use reflex_testing::{FakeApiServer, FakeConfig};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const GROUP: &str = "cm-controller";
const SLOTS: u32 = 8;
const OBJECTS: usize = 48;

/// Polls `check` every 20 ms for up to 60 s; panics naming `what` if it never holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..3000 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// One replica's view of the shared Leases: cut off from all of them while `down` is set.
#[derive(Clone)]
struct Partitionable {
    inner: KubeShardLeases,
    down: Arc<AtomicBool>,
}

#[derive(Clone)]
struct PartitionableLease {
    inner: KubeLease,
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
            inner: self.inner.lease(name),
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
    /// The ConfigMaps' Secrets (`owns`), sharded by their controller's uid.
    secrets: SharedIndexInformer<Secret>,
    shard: ShardHandle,
    registry: Registry,
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

async fn start_replica(client: &kube::Client, world: &Arc<World>, name: &str) -> Replica {
    let leases = Partitionable {
        inner: KubeShardLeases::new(kube::Api::namespaced(client.clone(), "default")),
        down: Arc::default(),
    };
    let sharder = Sharder::new(leases.clone(), config(name)).unwrap();
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    metrics.register_sharding(&sharder.gate()).unwrap();
    let shard = sharder.informer_shard();
    let factory = SharedInformerFactory::new(
        client.clone(),
        FactoryOptions {
            // Only the namespace the scenario writes (a cluster has ConfigMaps of its own).
            namespace: Some("default".into()),
            reflector: ReflectorOptions {
                streaming_lists: false,
                ..ReflectorOptions::default()
            },
            ..FactoryOptions::default()
        },
    );
    let cache = factory
        .informer_with(InformerSpec::<ConfigMap>::typed().shard(shard.clone()))
        .unwrap();
    let secrets = factory
        .informer_with(InformerSpec::<Secret>::typed().shard(sharder.owned_shard()))
        .unwrap();
    let shutdown = CancellationToken::new();
    let controller = Controller::new(cache.clone())
        .owns(secrets.clone())
        .shards(sharder.gate())
        .workers(4)
        .options(ControllerOptions {
            name: name.to_owned(),
            shutdown: shutdown.clone(),
            metrics: Some(metrics),
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
        secrets,
        shard,
        registry,
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

    fn cached_secrets(&self) -> BTreeSet<ObjectKey> {
        self.secrets
            .indexer()
            .snapshot()
            .iter()
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// A sharding series of this replica's `/metrics` text.
    fn metric(&self, name: &str) -> Option<f64> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        let prefix = format!("{name}{{group=\"{GROUP}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
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

/// The server's Secrets: key → the slot of their controller (the ConfigMap).
async fn server_secrets(client: &kube::Client) -> BTreeMap<ObjectKey, u32> {
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), "default");
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| {
            let owner = s.metadata.owner_references.as_ref()?.first()?.uid.clone();
            Some((
                ObjectKey::new(Some("default"), s.metadata.name.as_deref()?),
                ShardRange::slot_of(fnv1a64(owner.as_bytes()), SLOTS),
            ))
        })
        .collect()
}

/// The holder of every slot Lease that has one (slot → identity).
async fn slot_holders(client: &kube::Client) -> BTreeMap<u32, String> {
    let prefix = format!("{GROUP}-slot-");
    let api: kube::Api<Lease> = kube::Api::namespaced(client.clone(), "default");
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|l| {
            let slot = l
                .metadata
                .name
                .as_deref()?
                .strip_prefix(&prefix)?
                .parse()
                .ok()?;
            let holder = l.spec?.holder_identity?;
            (!holder.is_empty()).then_some((slot, holder))
        })
        .collect()
}

/// Waits until every slot is held by exactly the live replicas (each by one), every replica's
/// cache holds exactly its slots' objects, its metrics agree, and every object's latest version
/// was reconciled.
async fn stable(what: &str, live: &[&Replica], world: &World, client: &kube::Client) {
    let names: BTreeSet<String> = live.iter().map(|r| r.name.clone()).collect();
    eventually(
        &format!("{what}: every slot held by a live replica"),
        || {
            let names = names.clone();
            async move {
                let holders = slot_holders(client).await;
                holders.len() == SLOTS as usize
                    && holders.values().all(|h| names.contains(h))
                    && names.iter().all(|n| holders.values().any(|h| h == n))
            }
        },
    )
    .await;
    eventually(
        &format!("{what}: caches hold their slots, metrics agree, every object reconciled"),
        || async move {
            let holders = slot_holders(client).await;
            let state = server_state(client).await;
            let secrets = server_secrets(client).await;
            for r in live {
                let want: BTreeSet<ObjectKey> = secrets
                    .iter()
                    .filter(|(_, slot)| holders.get(slot) == Some(&r.name))
                    .map(|(k, _)| k.clone())
                    .collect();
                if r.cached_secrets() != want {
                    return false;
                }
                let want: BTreeSet<ObjectKey> = state
                    .iter()
                    .filter(|(_, (slot, _))| holders.get(slot) == Some(&r.name))
                    .map(|(k, _)| k.clone())
                    .collect();
                if r.cached() != want {
                    if std::env::var("SHARD_DEBUG").is_ok() {
                        eprintln!(
                            "{}: cached {} want {} filtering {:?}",
                            r.name,
                            r.cached().len(),
                            want.len(),
                            r.shard.filtering()
                        );
                    }
                    return false;
                }
                let held = holders.values().filter(|h| **h == r.name).count() as f64;
                if r.metric("reflex_sharding_owned_slots") != Some(held)
                    || r.metric("reflex_sharding_members") != Some(live.len() as f64)
                {
                    if std::env::var("SHARD_DEBUG").is_ok() {
                        eprintln!(
                            "{}: metrics {:?} {:?} held {held}",
                            r.name,
                            r.metric("reflex_sharding_owned_slots"),
                            r.metric("reflex_sharding_members")
                        );
                    }
                    return false;
                }
            }
            let reconciled = world.reconciled.lock().clone();
            let missing = state
                .iter()
                .filter(|(k, (_, rv))| reconciled.get(k) != Some(rv))
                .count();
            if missing > 0 && std::env::var("SHARD_DEBUG").is_ok() {
                eprintln!("{missing} not reconciled at their latest version");
            }
            missing == 0
        },
    )
    .await;
    assert_eq!(
        world.violations.load(Ordering::SeqCst),
        0,
        "{what}: a key reconciled by two replicas at once"
    );
}

/// The scenario on the server `client` talks to; `filtering` is who should have filtered.
async fn scenario(client: kube::Client, filtering: ShardFiltering) {
    let cms: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), "default");
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), "default");
    for i in 0..OBJECTS {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": format!("cm-{i}")}, "data": {"v": "0"}}),
        )
        .unwrap();
        let cm = cms.create(&Default::default(), &cm).await.unwrap();
        // Each ConfigMap controls a Secret: the children shard with their owner.
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": format!("secret-{i}"), "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": format!("cm-{i}"),
                "uid": cm.metadata.uid, "controller": true}]},
            "stringData": {"k": "v"}
        }))
        .unwrap();
        secrets.create(&Default::default(), &secret).await.unwrap();
    }
    let world = Arc::new(World::default());

    // A steady write load for the whole scenario.
    let writing = CancellationToken::new();
    let writer = {
        let writing = writing.clone();
        let cms = cms.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !writing.is_cancelled() {
                n += 1;
                let name = format!("cm-{}", n as usize % OBJECTS);
                let patch = json!({"data": {"v": n.to_string()}});
                let _ = cms
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

    let a = start_replica(&client, &world, "a").await;
    stable("one replica", &[&a], &world, &client).await;

    let b = start_replica(&client, &world, "b").await;
    let c = start_replica(&client, &world, "c").await;
    stable("three replicas", &[&a, &b, &c], &world, &client).await;
    let holders = slot_holders(&client).await;
    for r in [&a, &b, &c] {
        let held = holders.values().filter(|h| **h == r.name).count();
        assert!(
            (2..=3).contains(&held),
            "{}: {held} of {SLOTS} slots",
            r.name
        );
        assert_eq!(r.shard.filtering(), filtering, "{}: who filtered", r.name);
        assert!(
            r.metric("reflex_sharding_handoffs_total")
                .is_some_and(|n| n >= held as f64)
        );
    }

    // Scale down: c releases its slots after its reconciles.
    c.stop().await;
    stable("two replicas after a release", &[&a, &b], &world, &client).await;

    // b dies without releasing: its slots move once their Leases expire.
    b.kill().await;
    stable("one replica after a crash", &[&a], &world, &client).await;

    // d joins; then a is partitioned from the Leases: it must stop reconciling (fenced by its
    // own renew deadline) before d, seeing a's Leases expire, takes its slots.
    let d = start_replica(&client, &world, "d").await;
    stable("two replicas again", &[&a, &d], &world, &client).await;
    a.leases.down.store(true, Ordering::SeqCst);
    stable("after a partition", &[&d], &world, &client).await;
    eventually("the partitioned replica holds nothing", || {
        let empty = a.cached().is_empty();
        async move { empty }
    })
    .await;

    writing.cancel();
    writer.await.unwrap();
    stable("without writes", &[&d], &world, &client).await;
    a.kill().await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_split_the_slots_and_hand_them_off_safely_on_the_fake() {
    let server = FakeApiServer::start().await.unwrap();
    scenario(server.client().unwrap(), ShardFiltering::Server).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_filter_on_the_client_when_the_server_does_not_shard() {
    let server = FakeApiServer::start_with(FakeConfig {
        sharded_list_and_watch: false,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    scenario(server.client().unwrap(), ShardFiltering::Client).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_split_the_slots_and_hand_them_off_safely_on_kube_apiserver() {
    let minor = reflex_testing::envtest::minor_version().unwrap_or(0);
    // v1.36+ shards with the gate on; v1.35 has no such feature and the client filters.
    let (args, filtering) = if minor >= 36 {
        (
            vec!["--feature-gates=ShardedListAndWatch=true".to_owned()],
            ShardFiltering::Server,
        )
    } else {
        (Vec::new(), ShardFiltering::Client)
    };
    let Some(env) = Environment::start_or_skip(Options {
        apiserver_args: args,
        ..Options::default()
    })
    .await
    .unwrap() else {
        return;
    };
    scenario(env.client(), filtering).await;
    env.stop().await.unwrap();
}
