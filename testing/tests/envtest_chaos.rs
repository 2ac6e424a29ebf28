//! The chaos suite, on a real kube-apiserver and etcd (envtest, watch cache off so that etcd
//! compaction reaches the watches as 410s).
//!
//! Two replicas of a ConfigMap controller run behind Lease leader election, their clients going
//! through a [`FaultProxy`]; a seeded workload creates, updates and deletes objects while faults
//! are injected round after round: connections reset, the connection stalled, the API server
//! restarted, etcd compacted, and (once) the leader killed without releasing its Lease. Handlers
//! are slow and some panic; some reconciles panic on their first attempt.
//!
//! Once the faults stop, it checks what must hold, whatever the timing:
//! - every replica's store equals the server, key for key and resourceVersion for
//!   resourceVersion, and so does what its handlers saw;
//! - the last reconcile of every key on the server saw the key's final resourceVersion (a key
//!   deleted while no replica led is, rightly, never reconciled again: the new leader's cache
//!   never held it);
//! - no key was ever reconciled by two workers (of any replica) at once;
//!
//! and prints the convergence time (from the last fault to all of the above).
//!
//! Quick mode (the default, in `.ci/run`): 12 rounds, about a minute. `REFLEX_CHAOS_SECONDS=3600`
//! keeps going for that long (a soak), printing resident memory and relist counts every
//! minute; `REFLEX_CHAOS_SEED` fixes the workload (the seed is printed). `scripts/chaos` wraps
//! both. Skips when the control plane binaries are absent, unless `REFLEX_REQUIRE_ENVTEST=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reflex_informer::SharedIndexInformer;
use reflex_informer::factory::{FactoryOptions, SharedInformerFactory};
use reflex_informer::handler::{DeltaObject, handler_fn};
use reflex_informer::key::ObjectKey;
use reflex_informer::reflector::{BackoffOptions, ReflectorOptions};
use reflex_runtime::controller::{Action, Controller, ControllerOptions, default_error_policy};
use reflex_runtime::leader_election::{KubeLease, LeaderElectionConfig, LeaderElector};
use reflex_testing::envtest::{Environment, Options};
use reflex_testing::proxy::FaultProxy;
use tokio_util::sync::CancellationToken;

const NS: &str = "chaos";
const KEYS: usize = 30;
const QUICK_ROUNDS: usize = 12;
/// Bound on convergence once the faults stop; reached only when the test fails.
const CONVERGE_WITHIN: Duration = Duration::from_secs(180);

type Versions = BTreeMap<String, String>;

/// What every replica reports into, shared so that cross-replica guarantees can be checked.
#[derive(Default)]
struct Shared {
    /// Keys being reconciled now, by any worker of any replica.
    in_flight: Mutex<BTreeSet<String>>,
    /// Times a key was found already in flight when a reconcile started.
    overlaps: AtomicU64,
    /// The state each key's last reconcile read: its resourceVersion, or `None` for absent.
    last_seen: Mutex<BTreeMap<String, Option<String>>>,
    /// Keys whose first reconcile panicked already (each panics once).
    panicked: Mutex<BTreeSet<String>>,
    reconciles: AtomicU64,
    /// When the latest leader term began (its controller then registers and replays the cache).
    term_started: Mutex<Option<Instant>>,
    /// When the workload last deleted each key.
    deleted_at: Mutex<BTreeMap<String, Instant>>,
    /// 429s the workload met (the storm is real).
    throttled: AtomicU64,
}

struct Ctx {
    shared: Arc<Shared>,
    informer: SharedIndexInformer<ConfigMap>,
}

async fn reconcile(key: ObjectKey, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
    let name = key.to_string();
    if !ctx.shared.in_flight.lock().insert(name.clone()) {
        ctx.shared.overlaps.fetch_add(1, Ordering::SeqCst);
    }
    struct Leave<'a>(&'a Shared, String);
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            self.0.in_flight.lock().remove(&self.1);
        }
    }
    let _leave = Leave(&ctx.shared, name.clone());
    ctx.shared.reconciles.fetch_add(1, Ordering::Relaxed);
    // Some work that yields, so overlapping reconciles would have a chance to show.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let seen = ctx
        .informer
        .indexer()
        .get_by_key(&key)
        .and_then(|cm| cm.metadata.resource_version.clone());
    if name.ends_with('7') && ctx.shared.panicked.lock().insert(name.clone()) {
        panic!("chaos: first reconcile of {name} panics");
    }
    ctx.shared.last_seen.lock().insert(name, seen);
    Ok(Action::done())
}

/// One replica: a factory over the proxy, an informer with a slow, sometimes panicking handler
/// that keeps its own view, and a controller that runs only while this replica leads.
struct Replica {
    name: &'static str,
    factory: SharedInformerFactory,
    informer: SharedIndexInformer<ConfigMap>,
    view: Arc<Mutex<Versions>>,
    task: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
}

fn versions_of(cm: &ConfigMap) -> (String, String) {
    (
        ObjectKey::from_resource(cm)
            .map(|k| k.to_string())
            .unwrap_or_default(),
        cm.metadata.resource_version.clone().unwrap_or_default(),
    )
}

fn start_replica(name: &'static str, client: kube::Client, shared: Arc<Shared>) -> Replica {
    let factory = SharedInformerFactory::new(
        client.clone(),
        FactoryOptions {
            namespace: Some(NS.into()),
            reflector: ReflectorOptions {
                backoff: BackoffOptions {
                    initial: Duration::from_millis(200),
                    cap: Duration::from_secs(2),
                    ..BackoffOptions::default()
                },
                ..ReflectorOptions::default()
            },
            ..FactoryOptions::default()
        },
    );
    let informer = factory.informer::<ConfigMap>();
    let view: Arc<Mutex<Versions>> = Arc::default();
    let (on_add, on_update, on_delete) = (view.clone(), view.clone(), view.clone());
    informer
        .add_event_handler(
            handler_fn()
                .on_add(move |cm: &Arc<ConfigMap>, _| {
                    let (k, v) = versions_of(cm);
                    on_add.lock().insert(k, v);
                })
                .on_update(move |_, cm: &Arc<ConfigMap>| {
                    std::thread::sleep(Duration::from_millis(1));
                    let (k, v) = versions_of(cm);
                    let panics = k.ends_with('3') && v.ends_with('3');
                    on_update.lock().insert(k, v);
                    // Recorded first: a panicking handler must not break the next events.
                    assert!(!panics, "chaos: a handler panics");
                })
                .on_delete(move |gone: &DeltaObject<ConfigMap>| {
                    let key = match gone {
                        DeltaObject::Object(cm) => versions_of(cm).0,
                        DeltaObject::Tombstone(t) => t.key.to_string(),
                    };
                    on_delete.lock().remove(&key);
                }),
        )
        .expect("handler");
    factory.start();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (informer, shutdown) = (informer.clone(), shutdown.clone());
        async move {
            let lock = KubeLease::new(Api::<Lease>::namespaced(client, NS), "chaos-controller");
            let config = LeaderElectionConfig {
                // Long enough that a restarting API server does not cost the leadership.
                lease_duration: Duration::from_secs(10),
                renew_deadline: Duration::from_secs(8),
                retry_period: Duration::from_secs(1),
                ..LeaderElectionConfig::new(name)
            };
            let elector = LeaderElector::new(lock, config).expect("elector");
            elector
                .run_while_leader(&shutdown, |leading: CancellationToken| {
                    *shared.term_started.lock() = Some(Instant::now());
                    let ctx = Arc::new(Ctx {
                        shared: shared.clone(),
                        informer: informer.clone(),
                    });
                    let controller =
                        Controller::new(informer.clone())
                            .workers(2)
                            .options(ControllerOptions {
                                name: format!("chaos-{name}"),
                                shutdown: leading,
                                shutdown_grace: Duration::from_secs(2),
                                ..ControllerOptions::default()
                            });
                    async move {
                        if let Err(e) = controller.run(reconcile, default_error_policy, ctx).await {
                            eprintln!("chaos: controller of {name} ended: {e}");
                        }
                    }
                })
                .await;
        }
    });
    Replica {
        name,
        factory,
        informer,
        view,
        task,
        shutdown,
    }
}

impl Replica {
    fn store(&self) -> Versions {
        self.informer
            .indexer()
            .list()
            .iter()
            .map(|cm| versions_of(cm))
            .collect()
    }

    /// Kills the replica: no Lease release, no graceful shutdown of anything.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
        self.factory.shutdown().await;
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
        self.factory.shutdown().await;
    }
}

async fn server_state(api: &Api<ConfigMap>) -> Option<Versions> {
    let list = api.list(&ListParams::default()).await.ok()?;
    Some(list.items.iter().map(versions_of).collect())
}

/// One burst of seeded writes (created, updated, deleted at random among `KEYS` names).
async fn workload(api: &Api<ConfigMap>, rng: &mut StdRng, ops: usize, shared: &Shared) {
    for _ in 0..ops {
        let name = format!("k{}", rng.random_range(0..KEYS));
        let op = rng.random_range(0..10);
        let result = if op < 2 {
            let deleted = api
                .delete(&name, &DeleteParams::default())
                .await
                .map(|_| ());
            if deleted.is_ok() {
                shared
                    .deleted_at
                    .lock()
                    .insert(format!("{NS}/{name}"), Instant::now());
            }
            deleted
        } else {
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(name.clone());
            cm.data = Some([("v".to_owned(), rng.random::<u32>().to_string())].into());
            match api.get_opt(&name).await {
                Ok(Some(current)) => {
                    cm.metadata.resource_version = current.metadata.resource_version;
                    api.replace(&name, &PostParams::default(), &cm)
                        .await
                        .map(|_| ())
                }
                Ok(None) => api.create(&PostParams::default(), &cm).await.map(|_| ()),
                Err(e) => Err(e),
            }
        };
        // Conflicts, not-found, throttling and a restarting server are part of the game.
        if let Err(kube::Error::Api(status)) = &result
            && status.code == 429
        {
            shared.throttled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A client for configmaps in [`NS`] as the unprivileged user (granted them here), without
/// kube's retries of 429s.
async fn throttleable_client(env: &Environment) -> Api<ConfigMap> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let admin = env.client();
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "chaos-writer"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]}]
    }))
    .expect("role");
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &role)
        .await
        .expect("create role");
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "chaos-writer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "chaos-writer"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
            "name": reflex_testing::envtest::UNPRIVILEGED_USER}]
    }))
    .expect("binding");
    Api::<ClusterRoleBinding>::all(admin)
        .create(&PostParams::default(), &binding)
        .await
        .expect("create binding");
    let kubeconfig =
        kube::config::Kubeconfig::read_from(env.kubeconfig().with_file_name("user-kubeconfig"))
            .expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("config");
    config.default_retry = false;
    Api::namespaced(kube::Client::try_from(config).expect("client"), NS)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_a_real_api_server_converges_with_every_guarantee_kept() {
    let Some(mut env) = Environment::start_or_skip(Options {
        apiserver_args: vec!["--watch-cache=false".into()],
        ..Options::default()
    })
    .await
    .expect("start envtest") else {
        return;
    };
    let seed: u64 = std::env::var("REFLEX_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c4a0);
    let soak = std::env::var("REFLEX_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs);
    eprintln!(
        "chaos: seed {seed}, {}",
        match soak {
            Some(d) => format!("soak for {d:?}"),
            None => format!("quick mode, {QUICK_ROUNDS} rounds"),
        }
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let admin = env.client();
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": NS}})).unwrap(),
        )
        .await
        .expect("namespace");
    let api: Api<ConfigMap> = Api::namespaced(admin, NS);
    let shared = Arc::new(Shared::default());
    // The storm's writers see the 429s: an identity outside system:masters (which the in-flight
    // limit exempts), with a client that does not retry them away.
    let unretried = throttleable_client(&env).await;
    workload(&api, &mut rng, 40, &shared).await;

    let proxy = FaultProxy::start(env.apiserver_addr())
        .await
        .expect("proxy");
    let via_proxy = env.client_via(proxy.addr()).await.expect("proxy client");
    let mut replicas = vec![
        start_replica("replica-a", via_proxy.clone(), shared.clone()),
        start_replica("replica-b", via_proxy.clone(), shared.clone()),
    ];

    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut round = 0usize;
    let mut killed = false;
    loop {
        let done = match soak {
            Some(d) => started.elapsed() >= d,
            None => round >= QUICK_ROUNDS,
        };
        if done {
            break;
        }
        workload(&api, &mut rng, 25, &shared).await;
        let fault = round % 6;
        match fault {
            0 => {
                eprintln!("chaos: round {round}: connections reset");
                proxy.faults().reset_connections();
            }
            1 => {
                eprintln!("chaos: round {round}: connection stalled for 3 s");
                proxy.faults().stall();
                workload(&api, &mut rng, 10, &shared).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                proxy.faults().resume();
            }
            2 => {
                eprintln!("chaos: round {round}: API server restarted");
                env.restart_apiserver().await.expect("restart apiserver");
            }
            3 => {
                // The watches miss writes, etcd forgets them, the watches resume from before
                // the compaction: 410, relist.
                proxy.faults().stall();
                workload(&api, &mut rng, 10, &shared).await;
                let revision = env.compact_etcd().await.expect("compact");
                proxy.faults().resume();
                proxy.faults().reset_connections();
                eprintln!(
                    "chaos: round {round}: watches cut across an etcd compaction at revision {revision}"
                );
            }
            _ if !killed => {
                // Kill whichever replica leads (or the first), without releasing the Lease.
                let leases: Api<Lease> = Api::namespaced(env.client(), NS);
                let holder = leases
                    .get_opt("chaos-controller")
                    .await
                    .ok()
                    .flatten()
                    .and_then(|l| l.spec.and_then(|s| s.holder_identity));
                let index = replicas
                    .iter()
                    .position(|r| Some(r.name) == holder.as_deref())
                    .unwrap_or(0);
                let victim = replicas.remove(index);
                eprintln!(
                    "chaos: round {round}: {} (leader: {holder:?}) killed",
                    victim.name
                );
                let killed_at = Instant::now();
                victim.kill().await;
                killed = true;
                // No writes while nobody leads: a key deleted then would never be reconciled
                // (the new leader's cache never held it), which is right, but unchecked.
                let took_over = tokio::time::timeout(Duration::from_secs(60), async {
                    while shared.term_started.lock().is_none_or(|t| t < killed_at) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
                .await;
                assert!(took_over.is_ok(), "a standby took over after the kill");
                eprintln!(
                    "chaos: a standby leads {:.1}s after the kill",
                    killed_at.elapsed().as_secs_f64()
                );
            }
            5 => {
                // A 429 storm from kube-apiserver itself: one request in flight at a time.
                env.restart_apiserver_with(&[
                    "--max-requests-inflight=1",
                    "--max-mutating-requests-inflight=1",
                    "--enable-priority-and-fairness=false",
                ])
                .await
                .expect("restart apiserver throttled");
                let before = shared.throttled.load(Ordering::Relaxed);
                proxy.faults().reset_connections();
                let writers: Vec<_> = (0..4)
                    .map(|_| {
                        let (api, shared) = (unretried.clone(), shared.clone());
                        let mut rng = StdRng::seed_from_u64(rng.random());
                        tokio::spawn(async move { workload(&api, &mut rng, 15, &shared).await })
                    })
                    .collect();
                for w in writers {
                    w.await.expect("writer");
                }
                eprintln!(
                    "chaos: round {round}: 429 storm ({} throttled writes)",
                    shared.throttled.load(Ordering::Relaxed) - before
                );
                env.restart_apiserver().await.expect("restart apiserver");
            }
            _ => {
                eprintln!("chaos: round {round}: 2 s at 300 ms of latency");
                proxy.faults().set_latency(Some(Duration::from_millis(300)));
                workload(&api, &mut rng, 10, &shared).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                proxy.faults().set_latency(None);
            }
        }
        workload(&api, &mut rng, 15, &shared).await;
        if soak.is_some() && last_report.elapsed() >= Duration::from_secs(60) {
            last_report = Instant::now();
            let relists: Vec<u64> = replicas
                .iter()
                .map(|r| r.informer.reflector_stats().map_or(0, |s| s.relists()))
                .collect();
            eprintln!(
                "chaos: t={}s rss={} KiB relists={relists:?} reconciles={}",
                started.elapsed().as_secs(),
                rss_kib(),
                shared.reconciles.load(Ordering::Relaxed)
            );
        }
        round += 1;
    }

    // The last fault: an API server restart; writes stop, convergence is timed from the moment
    // the server is ready again.
    env.restart_apiserver().await.expect("restart apiserver");
    let faults_stopped = Instant::now();
    let deadline = faults_stopped + CONVERGE_WITHIN;
    let mut last_problem = String::new();
    let converged = loop {
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(server) = server_state(&api).await else {
            last_problem = "the server did not answer the list".into();
            continue;
        };
        let mut problem = None;
        for r in &replicas {
            if r.store() != server {
                problem = Some(format!("{}'s store differs from the server", r.name));
            } else if *r.view.lock() != server {
                problem = Some(format!("{}'s handler view differs from the server", r.name));
            }
        }
        if problem.is_none() {
            let seen = shared.last_seen.lock().clone();
            // A key deleted once the current leader's term had begun (with a margin for its
            // controller to register) was reconciled after the delete, and saw it absent.
            let term = shared.term_started.lock().unwrap_or_else(Instant::now);
            for (key, at) in shared.deleted_at.lock().iter() {
                if !server.contains_key(key)
                    && *at > term + Duration::from_secs(2)
                    && seen.get(key).is_some_and(Option::is_some)
                {
                    problem = Some(format!(
                        "the last reconcile of deleted {key} saw {:?}",
                        seen.get(key)
                    ));
                }
            }
            for (key, rv) in &server {
                if seen.get(key) != Some(&Some(rv.clone())) {
                    problem = Some(format!(
                        "the last reconcile of {key} saw {:?}, the server has {rv}",
                        seen.get(key)
                    ));
                    break;
                }
            }
        }
        match problem {
            None => break true,
            Some(p) => last_problem = p,
        }
    };
    let convergence = faults_stopped.elapsed();
    let relists: Vec<u64> = replicas
        .iter()
        .map(|r| r.informer.reflector_stats().map_or(0, |s| s.relists()))
        .collect();
    eprintln!(
        "chaos: converged={converged} in {:.1}s after {round} rounds ({:.0}s); reconciles={}, overlaps={}, relists of the survivors={relists:?}, rss={} KiB",
        convergence.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        shared.reconciles.load(Ordering::Relaxed),
        shared.overlaps.load(Ordering::SeqCst),
        rss_kib(),
    );
    assert!(
        converged,
        "no convergence within {CONVERGE_WITHIN:?}: {last_problem}"
    );
    assert_eq!(
        shared.overlaps.load(Ordering::SeqCst),
        0,
        "a key was reconciled by two workers at once"
    );
    assert!(
        killed || soak.is_some() || QUICK_ROUNDS < 5,
        "the leader kill ran"
    );
    for r in replicas {
        r.stop().await;
    }
    proxy.shutdown().await;
    env.stop().await.expect("stop envtest");
}
