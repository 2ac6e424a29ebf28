//! Sharded controllers (issue 17): what one replica of three caches and reconciles beside one
//! replica that does it all, and how long a third of the objects takes to move when a replica
//! leaves.
//!
//! Every row is a `reflex_runtime::sharding` group over the harness's fake API server (which
//! shards lists and watches by `shardSelector`), Leases on the same server, 16 slots, a 3 s
//! lease (renew deadline 2 s, retry 0.4 s), a no-op reconcile that reads the cache.
//! - "one replica": the reference, one member: it holds all 16 slots.
//! - "1 of 3 replicas": the measured replica and two other members (their member Leases are
//!   renewed by sharders of their own that never list, so they hold no slots): the measured one
//!   holds its share of the assignment and caches and reconciles only that.
//! - "hand-off of a third": three full replicas in this process; once all reconcile, one shuts
//!   down (releasing after its reconciles) and the time runs until the two left reconcile every
//!   slot and have reconciled every object of the slots that moved.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use parking_lot::Mutex;
use reflex_informer::SharedIndexInformer;
use reflex_informer::factory::{FactoryOptions, InformerSpec, SharedInformerFactory};
use reflex_informer::key::ObjectKey;
use reflex_informer::shard::{ShardRange, fnv1a64};
use reflex_runtime::controller::{Action, Controller, ControllerOptions, default_error_policy};
use reflex_runtime::sharding::{KubeShardLeases, ShardGate, Sharder, ShardingConfig, assign};
use tokio_util::sync::CancellationToken;

use crate::Params;
use crate::contenders::{Keep, Run};
use crate::protocol::Figures;

const SLOTS: u32 = 16;
const BOUND: Duration = Duration::from_secs(600);

fn config(group: &str, identity: &str) -> ShardingConfig {
    ShardingConfig {
        slots: SLOTS,
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(400),
        ..ShardingConfig::new(group, identity)
    }
}

/// Keys reconciled, by replica.
#[derive(Default)]
struct Seen {
    keys: Mutex<HashSet<ObjectKey>>,
    reconciles: std::sync::atomic::AtomicU64,
}

/// One replica: its sharder, sharded Pod informer and controller, running.
struct Replica {
    gate: ShardGate,
    cache: SharedIndexInformer<Pod>,
    seen: Arc<Seen>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    factory: SharedInformerFactory,
}

fn start(client: &kube::Client, group: &str, identity: &str) -> Result<Replica, String> {
    let leases = KubeShardLeases::new(kube::Api::<Lease>::namespaced(client.clone(), "default"));
    let sharder = Sharder::new(leases, config(group, identity)).map_err(|e| e.to_string())?;
    let factory = SharedInformerFactory::new(client.clone(), FactoryOptions::default());
    let cache = factory
        .informer_with(InformerSpec::<Pod>::typed().shard(sharder.informer_shard()))
        .map_err(|e| e.to_string())?;
    let gate = sharder.gate();
    let seen = Arc::new(Seen::default());
    let stop = CancellationToken::new();
    let controller = Controller::new(cache.clone())
        .shards(gate.clone())
        .workers(2)
        .options(ControllerOptions {
            name: identity.to_owned(),
            shutdown: stop.clone(),
            ..ControllerOptions::default()
        });
    let ctx = (seen.clone(), cache.clone());
    let run = tokio::spawn(async move {
        let reconcile = |key: ObjectKey, ctx: Arc<(Arc<Seen>, SharedIndexInformer<Pod>)>| async move {
            let (seen, cache) = &*ctx;
            let _ = cache.indexer().get_by_key(&key);
            seen.reconciles
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            seen.keys.lock().insert(key);
            Ok::<_, std::convert::Infallible>(Action::done())
        };
        if let Err(e) = controller
            .run(reconcile, default_error_policy, Arc::new(ctx))
            .await
        {
            eprintln!("controller failed: {e}");
        }
    });
    factory.start();
    let sharding = tokio::spawn(sharder.run(stop.clone()));
    Ok(Replica {
        gate,
        cache,
        seen,
        stop,
        tasks: vec![run, sharding],
        factory,
    })
}

impl Replica {
    async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        self.factory.shutdown().await;
    }
}

/// A member that holds no slots: a sharder whose informer shard nobody lists.
fn ghost(client: &kube::Client, group: &str, identity: &str) -> Result<CancellationToken, String> {
    let leases = KubeShardLeases::new(kube::Api::<Lease>::namespaced(client.clone(), "default"));
    let sharder = Sharder::new(leases, config(group, identity)).map_err(|e| e.to_string())?;
    let stop = CancellationToken::new();
    tokio::spawn(sharder.run(stop.clone()));
    Ok(stop)
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// How many Pods the server holds in each slot, read before the clock starts: metadata only,
/// in pages of 500, so the peak memory of the row is not this list's.
async fn per_slot(client: &kube::Client) -> Result<Vec<usize>, String> {
    let pods: kube::Api<Pod> = kube::Api::all(client.clone());
    let mut counts = vec![0usize; SLOTS as usize];
    let mut params = kube::api::ListParams::default().limit(500);
    loop {
        let page = pods
            .list_metadata(&params)
            .await
            .map_err(|e| format!("listing the Pods: {e}"))?;
        for pod in &page.items {
            let uid = pod.metadata.uid.as_deref().unwrap_or_default();
            counts[ShardRange::slot_of(fnv1a64(uid.as_bytes()), SLOTS) as usize] += 1;
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(counts),
        }
    }
}

/// The number of slots member `index` of `members` is assigned, and of Pods they hold.
fn share(members: &[String], index: usize, counts: &[usize]) -> (usize, usize) {
    let owners = assign(members, SLOTS);
    let slots: Vec<usize> = (0..SLOTS as usize)
        .filter(|&s| owners[s] == index)
        .collect();
    (slots.len(), slots.iter().map(|&s| counts[s]).sum())
}

/// Whether `r` reconciles its `slots` slots, its cache holds exactly their `objects` Pods, and
/// it reconciled every one of them.
fn settled(r: &Replica, (slots, objects): (usize, usize)) -> bool {
    r.gate.active_slots().len() == slots
        && r.cache.indexer().len() == objects
        && r.seen.keys.lock().len() >= objects
}

fn figures(took: Duration, r: &Replica) -> Figures {
    Figures::from([
        ("synced_s".to_string(), took.as_secs_f64()),
        ("objects".to_string(), r.cache.indexer().len() as f64),
        (
            "reconciles".to_string(),
            r.seen.reconciles.load(std::sync::atomic::Ordering::Relaxed) as f64,
        ),
        ("slots".to_string(), r.gate.active_slots().len() as f64),
    ])
}

/// The reference: one replica holds every slot.
pub async fn one_replica(p: Params) -> Run {
    let client = crate::sync::client(&p.server)?;
    let total: usize = per_slot(&client).await?.iter().sum();
    let started = Instant::now();
    let r = start(&client, "bench-one", "replica-0")?;
    until("one replica settled", || {
        settled(&r, (SLOTS as usize, total))
    })
    .await?;
    let figures = figures(started.elapsed(), &r);
    Ok((figures, Box::new(r) as Keep))
}

/// One of three members: the other two renew their member Leases only.
pub async fn one_of_three(p: Params) -> Run {
    let client = crate::sync::client(&p.server)?;
    let group = "bench-third";
    let others = [
        ghost(&client, group, "replica-1")?,
        ghost(&client, group, "replica-2")?,
    ];
    let members: Vec<String> = ["replica-0", "replica-1", "replica-2"]
        .map(String::from)
        .to_vec();
    let mine = share(&members, 0, &per_slot(&client).await?);
    let started = Instant::now();
    let r = start(&client, group, "replica-0")?;
    until("the replica's share settled", || {
        settled(&r, mine) && r.gate.members().len() == 3
    })
    .await?;
    let figures = figures(started.elapsed(), &r);
    Ok((figures, Box::new((r, others)) as Keep))
}

/// Three replicas; one leaves; the time until its third reconciles on the two left.
pub async fn handoff(p: Params) -> Run {
    let client = crate::sync::client(&p.server)?;
    let counts = per_slot(&client).await?;
    let group = "bench-handoff";
    let names = ["replica-0", "replica-1", "replica-2"];
    let replicas: Vec<Replica> = names
        .iter()
        .map(|n| start(&client, group, n))
        .collect::<Result<_, _>>()?;
    let members: Vec<String> = names.map(String::from).to_vec();
    until("three replicas settled", || {
        replicas
            .iter()
            .enumerate()
            .all(|(i, r)| settled(r, share(&members, i, &counts)) && r.gate.members().len() == 3)
    })
    .await?;
    let mut replicas = replicas;
    let leaving = replicas.pop().ok_or("no replica")?;
    let moved = leaving.cache.indexer().len();
    let moved_keys: HashSet<ObjectKey> = leaving
        .cache
        .indexer()
        .snapshot()
        .iter()
        .map(|(k, _)| k.clone())
        .collect();
    for r in &replicas {
        r.seen.keys.lock().clear();
    }
    let started = Instant::now();
    leaving.stop().await;
    let two: Vec<String> = members[..2].to_vec();
    until(
        "the two left settled, the leaving replica's objects reconciled",
        || {
            let reconciled = replicas
                .iter()
                .map(|r| {
                    let keys = r.seen.keys.lock();
                    moved_keys.iter().filter(|k| keys.contains(*k)).count()
                })
                .sum::<usize>();
            reconciled >= moved
                && replicas.iter().enumerate().all(|(i, r)| {
                    let (slots, objects) = share(&two, i, &counts);
                    r.gate.active_slots().len() == slots && r.cache.indexer().len() == objects
                })
        },
    )
    .await?;
    let took = started.elapsed();
    let figures = Figures::from([
        ("handoff_s".to_string(), took.as_secs_f64()),
        ("moved".to_string(), moved as f64),
        ("objects".to_string(), counts.iter().sum::<usize>() as f64),
    ]);
    Ok((figures, Box::new(replicas) as Keep))
}
