//! Sharding's timing guarantees on tokio's paused clock (in-memory Leases and source, so
//! virtual time is all there is): an idle group keeps renewing and nothing moves, however long
//! it runs; the slots of a replica that dies without releasing are reconciled by the others
//! within the lease duration plus a few retry periods (the expiry is judged from when this
//! process last saw the dead holder's Leases change, not from when a new elector first reads
//! them).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use reflex_informer::key::ObjectKey;
use reflex_informer::reflector::ReflectorOptions;
use reflex_informer::source::memory::MemorySource;
use reflex_informer::{InformerOptions, SharedIndexInformer};
use reflex_runtime::controller::{Action, Controller, ControllerOptions, default_error_policy};
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
}

fn replica(source: &MemorySource<ConfigMap>, leases: &InMemoryShardLeases, name: &str) -> Replica {
    let sharder = Sharder::new(leases.clone(), config(name)).unwrap();
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
    let controller = Controller::new(informer)
        .shards(gate.clone())
        .options(ControllerOptions {
            name: name.to_owned(),
            shutdown: stop.clone(),
            ..ControllerOptions::default()
        });
    let run = tokio::spawn(async move {
        let reconcile = |_key: ObjectKey, _ctx: Arc<()>| async {
            Ok::<_, std::convert::Infallible>(Action::done())
        };
        controller
            .run(reconcile, default_error_policy, Arc::new(()))
            .await
            .unwrap();
    });
    let sharding = tokio::spawn(sharder.run(stop.clone()));
    Replica {
        gate,
        stop,
        tasks: vec![run, sharding],
    }
}

fn source() -> MemorySource<ConfigMap> {
    let source = MemorySource::new();
    for i in 0..32 {
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = Some("default".into());
        cm.metadata.name = Some(format!("cm-{i}"));
        cm.metadata.uid = Some(format!("uid-{i}"));
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
