//! Sharding's timing guarantees on tokio's paused clock (in-memory Leases and source, so
//! virtual time is all there is): an idle group keeps renewing and nothing moves, however long
//! it runs; the slots of a replica that dies without releasing are reconciled by the others
//! within the lease duration plus a few retry periods (the expiry is judged from when this
//! process last saw the dead holder's Leases change, not from when a new elector first reads
//! them); a slot whose Lease is lost while it drains aborts its reconciles at the renew
//! deadline, not at the end of the release grace; an object deleted while its slot was moving
//! is reconciled by the new holder.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use parking_lot::Mutex;
use reflex_informer::key::ObjectKey;
use reflex_informer::reflector::ReflectorOptions;
use reflex_informer::source::memory::MemorySource;
use reflex_informer::{InformerOptions, SharedIndexInformer};
use reflex_runtime::controller::{
    Action, Controller, ControllerMetrics, ControllerOptions, default_error_policy,
};
use reflex_runtime::leader_election::{LeaderElectionConfig, LeaderElector};
use reflex_runtime::sharding::{InMemoryShardLeases, ShardGate, Sharder, ShardingConfig, assign};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const GROUP: &str = "g";
const SLOTS: u32 = 8;

fn config(name: &str) -> ShardingConfig {
    ShardingConfig {
        slots: SLOTS,
        ..ShardingConfig::new(GROUP, name)
    }
}

struct Replica {
    gate: ShardGate,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    metrics: ControllerMetrics,
}

/// What a test's reconcile does: hang on `hang` (until aborted), record every other key with
/// whether its object was in the cache.
#[derive(Default)]
struct Behaviour {
    hang: Option<ObjectKey>,
    seen: Mutex<Vec<(ObjectKey, bool)>>,
}

fn replica(source: &MemorySource<ConfigMap>, leases: &InMemoryShardLeases, name: &str) -> Replica {
    replica_with(source, leases, config(name), Arc::default())
}

fn replica_with(
    source: &MemorySource<ConfigMap>,
    leases: &InMemoryShardLeases,
    config: ShardingConfig,
    behaviour: Arc<Behaviour>,
) -> Replica {
    let name = config.identity.clone();
    let sharder = Sharder::new(leases.clone(), config).unwrap();
    let informer = SharedIndexInformer::new(
        Arc::new(source.clone()),
        InformerOptions {
            reflector: ReflectorOptions {
                shard: Some(sharder.informer_shard()),
                ..ReflectorOptions::default()
            },
            ..InformerOptions::default()
        },
    );
    let stop = CancellationToken::new();
    let gate = sharder.gate();
    let controller = Controller::new(informer.clone())
        .shards(gate.clone())
        .options(ControllerOptions {
            name: name.clone(),
            shutdown: stop.clone(),
            ..ControllerOptions::default()
        });
    let metrics = controller.metrics();
    let run = tokio::spawn(async move {
        let reconcile =
            move |key: ObjectKey, ctx: Arc<(Arc<Behaviour>, SharedIndexInformer<ConfigMap>)>| async move {
                let (behaviour, cache) = &*ctx;
                if behaviour.hang.as_ref() == Some(&key) {
                    std::future::pending::<()>().await;
                }
                let cached = cache.indexer().get_by_key(&key).is_some();
                behaviour.seen.lock().push((key, cached));
                Ok::<_, std::convert::Infallible>(Action::done())
            };
        controller
            .run(
                reconcile,
                default_error_policy,
                Arc::new((behaviour, informer)),
            )
            .await
            .unwrap();
    });
    let sharding = tokio::spawn(sharder.run(stop.clone()));
    Replica {
        gate,
        stop,
        tasks: vec![run, sharding],
        metrics,
    }
}

/// The ConfigMap of `source` whose uid hashes to `slot`.
fn object_in_slot(slot: u32) -> ObjectKey {
    (0..32)
        .map(|i| (i, reflex_informer::shard::fnv1a64(uid(i).as_bytes())))
        .find(|(_, h)| reflex_informer::shard::ShardRange::slot_of(*h, SLOTS) == slot)
        .map(|(i, _)| ObjectKey::new(Some("default"), format!("cm-{i}")))
        .expect("32 objects cover 8 slots")
}

/// A uid shaped like the API server's (a UUID: its leading characters vary, so its FNV-1a hash
/// spreads over the slots; `uid-0` … `uid-31` would all hash into one).
fn uid(i: usize) -> String {
    format!("{i:08x}-1111-2222-3333-444455556666")
}

fn source() -> MemorySource<ConfigMap> {
    let source = MemorySource::new();
    for i in 0..32 {
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = Some("default".into());
        cm.metadata.name = Some(format!("cm-{i}"));
        cm.metadata.uid = Some(uid(i));
        source.apply(cm).unwrap();
    }
    source
}

/// Sleeps (virtual time) in steps of 100 ms until `cond`, at most `limit`; returns how long.
async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

/// Every slot held, each replica reconciling exactly its share of the assignment.
fn settled(leases: &InMemoryShardLeases, replicas: &[(&str, &Replica)]) -> bool {
    let names: Vec<String> = replicas.iter().map(|(n, _)| (*n).to_owned()).collect();
    let owners = assign(&names, SLOTS);
    let holders = leases.slot_holders(GROUP);
    holders.len() == SLOTS as usize
        && replicas.iter().enumerate().all(|(i, (name, r))| {
            let mine: Vec<u32> = (0..SLOTS).filter(|&s| owners[s as usize] == i).collect();
            mine.iter()
                .all(|s| holders.get(s).map(String::as_str) == Some(*name))
                && r.gate.active_slots().into_iter().collect::<Vec<_>>() == mine
        })
}

fn renew_times(leases: &InMemoryShardLeases) -> BTreeMap<String, (String, i32)> {
    (0..SLOTS)
        .map(|s| format!("{GROUP}-slot-{s}"))
        .chain(["a", "b"].map(|m| format!("{GROUP}-member-{m}")))
        .map(|name| {
            let spec = leases
                .get(&name)
                .lease()
                .and_then(|l| l.spec)
                .unwrap_or_default();
            let renewed = spec.renew_time.map(|t| t.0.to_string()).unwrap_or_default();
            (name, (renewed, spec.lease_transitions.unwrap_or(0)))
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_idle_group_keeps_renewing_and_nothing_moves() {
    let source = source();
    let leases = InMemoryShardLeases::new();
    let a = replica(&source, &leases, "a");
    let b = replica(&source, &leases, "b");
    let group = [("a", &a), ("b", &b)];
    until("two replicas settle", Duration::from_secs(120), || {
        settled(&leases, &group)
    })
    .await;
    let holders = leases.slot_holders(GROUP);
    let handoffs = (a.gate.handoffs().0, b.gate.handoffs().0);
    let before = renew_times(&leases);

    // Ten lease durations with nothing happening.
    tokio::time::sleep(Duration::from_secs(150)).await;

    assert_eq!(leases.slot_holders(GROUP), holders, "no slot moved");
    assert_eq!(
        (a.gate.handoffs().0, b.gate.handoffs().0),
        handoffs,
        "no hand-off"
    );
    assert!(settled(&leases, &group));
    let after = renew_times(&leases);
    for (name, (renewed, transitions)) in &after {
        let (renewed_before, transitions_before) = &before[name];
        assert_eq!(transitions, transitions_before, "{name}: no transition");
        assert_ne!(renewed, renewed_before, "{name}: renewed meanwhile");
    }
    for r in [a, b] {
        r.stop.cancel();
        for t in r.tasks {
            t.await.unwrap();
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_dead_replicas_slots_move_within_the_lease_duration_and_a_few_retries() {
    let source = source();
    let leases = InMemoryShardLeases::new();
    let a = replica(&source, &leases, "a");
    let b = replica(&source, &leases, "b");
    until("two replicas settle", Duration::from_secs(120), || {
        settled(&leases, &[("a", &a), ("b", &b)])
    })
    .await;

    // b dies: nothing released.
    for t in &b.tasks {
        t.abort();
    }
    let config = config("a");
    // a sees b's Leases last change within a retry period of the death; they expire a lease
    // duration later; a reassigns at its next read and takes each slot at its first attempt.
    let bound = config.lease_duration + config.retry_period * 3;
    let took = until("a reconciles every slot", bound, || {
        settled(&leases, &[("a", &a)])
    })
    .await;
    assert!(
        took >= config.lease_duration - config.retry_period,
        "not before b's Leases expired: {took:?}"
    );
    a.stop.cancel();
    for t in a.tasks {
        t.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_lease_lost_while_draining_aborts_the_slots_reconciles_at_the_renew_deadline() {
    let source = source();
    let leases = InMemoryShardLeases::new();
    // The slot that moves from a to b when b joins, and an object in it whose reconcile hangs.
    let owners = assign(&["a".to_owned(), "b".to_owned()], SLOTS);
    let moving = (0..SLOTS).find(|&s| owners[s as usize] == 1).unwrap();
    let hanging = object_in_slot(moving);
    let mut cfg = config("a");
    cfg.release_grace = Duration::from_secs(600);
    let behaviour = Arc::new(Behaviour {
        hang: Some(hanging.clone()),
        ..Behaviour::default()
    });
    let a = replica_with(&source, &leases, cfg.clone(), behaviour.clone());
    until("a settles", Duration::from_secs(120), || {
        settled(&leases, &[("a", &a)])
    })
    .await;
    // b joins: a releases the moving slot, and its drain waits for the hanging reconcile.
    let b = replica(&source, &leases, "b");
    until(
        "a stops admitting the moving slot",
        Duration::from_secs(60),
        || !a.gate.active_slots().contains(&moving),
    )
    .await;
    assert_eq!(
        a.metrics.snapshot().fenced,
        0,
        "the hanging reconcile runs on"
    );
    // The slot's Lease can no longer be written: a cannot renew it while it drains.
    leases
        .get(&format!("{GROUP}-slot-{moving}"))
        .set_unavailable(true);
    let bound = cfg.renew_deadline + cfg.retry_period * 2;
    until("the hanging reconcile is aborted", bound, || {
        a.metrics.snapshot().fenced == 1
    })
    .await;
    leases
        .get(&format!("{GROUP}-slot-{moving}"))
        .set_unavailable(false);
    until("b reconciles its share", Duration::from_secs(120), || {
        settled(&leases, &[("a", &a), ("b", &b)])
    })
    .await;
    for r in [a, b] {
        r.stop.cancel();
        for t in r.tasks {
            t.await.unwrap();
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_object_deleted_while_its_slot_moves_is_reconciled_by_the_new_holder() {
    let source = source();
    let leases = InMemoryShardLeases::new();
    let held = 3;
    let victim = object_in_slot(held);
    // Someone else holds the slot's Lease (a releasing old owner, say) and keeps renewing it.
    let other = LeaderElector::new(
        leases.get(&format!("{GROUP}-slot-{held}")),
        LeaderElectionConfig::new("old-owner"),
    )
    .unwrap();
    let other_stop = CancellationToken::new();
    let holding = {
        let stop = other_stop.clone();
        tokio::spawn(async move {
            other
                .run_while_leader(&stop, |leading| async move { leading.cancelled().await })
                .await;
        })
    };
    until(
        "the old owner holds the slot",
        Duration::from_secs(10),
        || leases.slot_holders(GROUP).get(&held).map(String::as_str) == Some("old-owner"),
    )
    .await;
    let behaviour = Arc::new(Behaviour::default());
    let b = replica_with(&source, &leases, config("b"), behaviour.clone());
    until("b holds every other slot", Duration::from_secs(120), || {
        b.gate.active_slots().len() == SLOTS as usize - 1
    })
    .await;
    // The object goes while its slot is between holders: b's informer sees the delete, but b
    // does not reconcile the slot yet.
    source.delete(&victim).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !behaviour.seen.lock().iter().any(|(k, _)| *k == victim),
        "not reconciled while the slot is someone else's"
    );
    // The old owner releases; b takes the slot and reconciles the deleted object's key.
    other_stop.cancel();
    holding.await.unwrap();
    until(
        "b reconciles the deleted object",
        Duration::from_secs(60),
        || {
            behaviour
                .seen
                .lock()
                .iter()
                .any(|(k, cached)| *k == victim && !cached)
        },
    )
    .await;
    assert!(b.gate.active_slots().contains(&held));
    b.stop.cancel();
    for t in b.tasks {
        t.await.unwrap();
    }
}
