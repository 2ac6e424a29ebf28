//! The runtime against `reflex-testing`'s fake API server, over real HTTP through `kube::Client`:
//! a sample-controller-like controller, leader election on `coordination.k8s.io/v1` Leases,
//! Event series on `events.k8s.io/v1`, readiness after cache sync, and shutdown draining.
//!
//! Real HTTP means no paused clock: every wait is a bounded poll (10 s, every 20 ms) for a
//! condition, and the few real durations (leader election) are kept small through the config.

mod support;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Container, ObjectReference, PodSpec, PodTemplateSpec};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use parking_lot::Mutex;
use reflex_informer::factory::{FactoryOptions, SharedInformerFactory};
use reflex_informer::key::ObjectKey;
use reflex_informer::lister::Lister;
use reflex_runtime::controller::{Action, Controller, ControllerOptions, default_error_policy};
use reflex_runtime::events::{EventRecorder, EventType, KubeEventSink, RecorderConfig};
use reflex_runtime::leader_election::{KubeLease, LeaderElectionConfig, LeaderElector};
use reflex_runtime::serve::{HealthServer, ServeConfig};
use reflex_testing::FakeApiServer;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use support::{POLL_LIMIT, eventually};

const NS: &str = "default";

// ---------------------------------------------------------------------------------------------
// The sample-controller `Foo` type, with `kube::Resource` written by hand (no derive feature).

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Foo {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    metadata: ObjectMeta,
    spec: FooSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<FooStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FooSpec {
    deployment_name: String,
    replicas: i32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct FooStatus {
    available_replicas: i32,
}

impl kube::Resource for Foo {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Foo".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "samplecontroller.k8s.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1alpha1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "foos".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

fn foo_crd() -> serde_json::Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": "foos.samplecontroller.k8s.io",
            "annotations": {"api-approved.kubernetes.io": "unapproved, experimental-only"}
        },
        "spec": {
            "group": "samplecontroller.k8s.io",
            "scope": "Namespaced",
            "names": {"plural": "foos", "singular": "foo", "kind": "Foo", "listKind": "FooList"},
            "versions": [{
                "name": "v1alpha1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
            }]
        }
    })
}

fn new_foo(name: &str, deployment: &str, replicas: i32) -> Foo {
    Foo {
        api_version: "samplecontroller.k8s.io/v1alpha1".into(),
        kind: "Foo".into(),
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..ObjectMeta::default()
        },
        spec: FooSpec {
            deployment_name: deployment.into(),
            replicas,
        },
        status: None,
    }
}

#[derive(Debug, thiserror::Error)]
enum SampleError {
    #[error("kubernetes API call failed: {0}")]
    Api(#[from] kube::Error),
    #[error("deployment {0} exists and is not controlled by its Foo")]
    NotOwned(String),
}

struct SampleCtx {
    client: kube::Client,
    foos: Lister<Foo>,
    deployments: Lister<Deployment>,
    /// Keys whose reconcile found the Foo absent (deleted).
    absent: Mutex<Vec<ObjectKey>>,
}

fn desired_deployment(owner: &Foo) -> Deployment {
    let name = owner.metadata.name.clone().unwrap_or_default();
    let labels = BTreeMap::from([
        ("app".to_owned(), "nginx".to_owned()),
        ("controller".to_owned(), name.clone()),
    ]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(owner.spec.deployment_name.clone()),
            namespace: owner.metadata.namespace.clone(),
            owner_references: Some(vec![OwnerReference {
                api_version: "samplecontroller.k8s.io/v1alpha1".into(),
                kind: "Foo".into(),
                name,
                uid: owner.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(owner.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "nginx".into(),
                        image: Some("nginx:1.27".into()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// sample-controller's `syncHandler`: Foo from the lister (absent = deleted), Deployment created
/// or scaled to `spec.replicas`, then `status.availableReplicas` written. No deployment
/// controller runs against the fake server, so the Deployment's `spec.replicas` stands in for its
/// available replicas.
async fn reconcile_foo(key: ObjectKey, ctx: Arc<SampleCtx>) -> Result<Action, SampleError> {
    let Some(owner) = ctx.foos.get_by_key(&key) else {
        ctx.absent.lock().push(key);
        return Ok(Action::done());
    };
    let ns = owner.metadata.namespace.as_deref().unwrap_or(NS);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let dep_key = ObjectKey::new(Some(ns), &owner.spec.deployment_name);
    let deployment = match ctx.deployments.get_by_key(&dep_key) {
        None => {
            deployments
                .create(&PostParams::default(), &desired_deployment(&owner))
                .await?
        }
        Some(current) => {
            let owned =
                current.metadata.owner_references.iter().flatten().any(|r| {
                    r.controller == Some(true) && Some(&r.uid) == owner.metadata.uid.as_ref()
                });
            if !owned {
                return Err(SampleError::NotOwned(owner.spec.deployment_name.clone()));
            }
            if current.spec.as_ref().and_then(|s| s.replicas) == Some(owner.spec.replicas) {
                (*current).clone()
            } else {
                // Precondition on the cached resourceVersion: a stale cache gets a 409 and a retry.
                let patch = json!({
                    "metadata": {"resourceVersion": current.metadata.resource_version},
                    "spec": {"replicas": owner.spec.replicas},
                });
                deployments
                    .patch(
                        &owner.spec.deployment_name,
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?
            }
        }
    };
    let available = deployment.spec.and_then(|s| s.replicas).unwrap_or(0);
    let want = FooStatus {
        available_replicas: available,
    };
    if owner.status.as_ref() != Some(&want) {
        let foos: Api<Foo> = Api::namespaced(ctx.client.clone(), ns);
        foos.patch_status(
            key.name(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": want})),
        )
        .await?;
    }
    Ok(Action::done())
}

/// Reads (deployment replicas, its controlling owner's name, its uid) over HTTP.
async fn deployment_state(api: &Api<Deployment>, name: &str) -> Option<(i32, String, String)> {
    let d = api.get_opt(name).await.ok()??;
    let replicas = d.spec.as_ref()?.replicas?;
    let owner = d
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true) && r.kind == "Foo")?
        .name
        .clone();
    Some((replicas, owner, d.metadata.uid.clone().unwrap_or_default()))
}

async fn foo_available(api: &Api<Foo>, name: &str) -> Option<i32> {
    let f = api.get_opt(name).await.ok()??;
    f.status.map(|s| s.available_replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_controller_converges_on_create_scale_drift_deletion_and_foo_delete() {
    let server = FakeApiServer::start().await.unwrap();
    server.register_crd(foo_crd()).unwrap();
    let client = server.client().unwrap();
    let factory = SharedInformerFactory::new(client.clone(), FactoryOptions::default());
    let foo_informer = factory.informer::<Foo>();
    let dep_informer = factory.informer::<Deployment>();
    factory.start();
    let ctx = Arc::new(SampleCtx {
        client: client.clone(),
        foos: foo_informer.lister(),
        deployments: dep_informer.lister(),
        absent: Mutex::new(Vec::new()),
    });
    let shutdown = CancellationToken::new();
    let controller = Controller::new(foo_informer)
        .owns(dep_informer)
        .options(ControllerOptions {
            name: "sample-controller".into(),
            sync_timeout: Some(POLL_LIMIT),
            shutdown: shutdown.clone(),
            ..ControllerOptions::default()
        });
    let metrics = controller.metrics();
    let run = tokio::spawn(controller.run(reconcile_foo, default_error_policy, ctx.clone()));

    let foos: Api<Foo> = Api::namespaced(client.clone(), NS);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), NS);

    // Foo created: an owned Deployment with one replica, status written back.
    foos.create(
        &PostParams::default(),
        &new_foo("example-foo", "example-dep", 1),
    )
    .await
    .unwrap();
    let (_, owner, first_uid) = eventually("deployment with 1 replica", || async {
        deployment_state(&deps, "example-dep")
            .await
            .filter(|s| s.0 == 1)
    })
    .await;
    assert_eq!(owner, "example-foo");
    eventually("foo status 1", || async {
        (foo_available(&foos, "example-foo").await == Some(1)).then_some(())
    })
    .await;

    // Foo scaled 1 -> 3.
    foos.patch(
        "example-foo",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    eventually("deployment scaled to 3 and foo status 3", || async {
        let dep = deployment_state(&deps, "example-dep").await?;
        (dep.0 == 3 && foo_available(&foos, "example-foo").await == Some(3)).then_some(())
    })
    .await;

    // Deployment edited behind the controller's back: restored through the owner reference.
    let edited = deps
        .patch(
            "example-dep",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 7}})),
        )
        .await
        .unwrap();
    assert_eq!(edited.spec.and_then(|s| s.replicas), Some(7));
    eventually("deployment restored to 3", || async {
        let (replicas, _, uid) = deployment_state(&deps, "example-dep").await?;
        (replicas == 3 && uid == first_uid).then_some(())
    })
    .await;

    // Deployment deleted behind its back: recreated (a new uid), still owned.
    deps.delete("example-dep", &DeleteParams::default())
        .await
        .unwrap();
    let (replicas, owner, uid) = eventually("deployment recreated", || async {
        deployment_state(&deps, "example-dep")
            .await
            .filter(|s| s.2 != first_uid)
    })
    .await;
    assert_eq!((replicas, owner.as_str()), (3, "example-foo"));
    assert_ne!(uid, first_uid);

    // Foo deleted: reconcile sees it absent from the lister, and the server's garbage collector
    // deletes the Deployment it owned (also one a reconcile racing the deletion recreated: its
    // owner is gone).
    foos.delete("example-foo", &DeleteParams::default())
        .await
        .unwrap();
    let foo_key = ObjectKey::new(Some(NS), "example-foo");
    eventually("reconcile of the deleted foo", || async {
        ctx.absent.lock().contains(&foo_key).then_some(())
    })
    .await;
    eventually("deployment collected with its owner", || async {
        deps.get_opt("example-dep")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;

    shutdown.cancel();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary, metrics.snapshot());
    assert!(summary.reconciles >= 5, "{summary:?}");
    assert_eq!((summary.panics, summary.abandoned), (0, 0), "{summary:?}");
    factory.shutdown().await;
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Leader election between two replicas.

/// A lease long enough that no stall of a loaded machine makes the leader miss its renewals (it
/// would lose leadership and the standby would legitimately reconcile), with quick retries so the
/// standby notices a released lease soon. A takeover well within `lease_duration` can only come
/// from the release: without it the standby would wait for the lease to expire.
fn short_lease(identity: &str) -> LeaderElectionConfig {
    LeaderElectionConfig {
        lease_duration: Duration::from_secs(60),
        renew_deadline: Duration::from_secs(40),
        retry_period: Duration::from_millis(200),
        ..LeaderElectionConfig::new(identity)
    }
}

struct Replica {
    shutdown: CancellationToken,
    elector: Arc<LeaderElector<KubeLease>>,
    task: tokio::task::JoinHandle<()>,
    factory: SharedInformerFactory,
}

/// A replica: its own client, factory and ConfigMap informer; the controller runs only while its
/// elector leads, and every reconcile is logged as (identity, key name).
async fn start_replica(
    server: &FakeApiServer,
    identity: &'static str,
    log: Arc<Mutex<Vec<(&'static str, String)>>>,
) -> Replica {
    let client = server.client().unwrap();
    let factory = SharedInformerFactory::new(client.clone(), FactoryOptions::default());
    let informer = factory.informer::<ConfigMap>();
    factory.start();
    let lease = KubeLease::new(Api::<Lease>::namespaced(client, NS), "sample-controller");
    let elector = Arc::new(LeaderElector::new(lease, short_lease(identity)).unwrap());
    let shutdown = CancellationToken::new();
    let task = {
        let (elector, shutdown) = (elector.clone(), shutdown.clone());
        tokio::spawn(async move {
            elector
                .run_while_leader(&shutdown, |leading| {
                    let controller = Controller::new(informer.clone()).options(ControllerOptions {
                        name: identity.into(),
                        sync_timeout: Some(POLL_LIMIT),
                        shutdown: leading,
                        ..ControllerOptions::default()
                    });
                    let log = log.clone();
                    async move {
                        let reconcile = move |key: ObjectKey, _: Arc<()>| {
                            let log = log.clone();
                            async move {
                                log.lock().push((identity, key.name().to_owned()));
                                Ok::<_, kube::Error>(Action::done())
                            }
                        };
                        controller
                            .run(reconcile, default_error_policy, Arc::new(()))
                            .await
                            .unwrap()
                    }
                })
                .await;
        })
    };
    Replica {
        shutdown,
        elector,
        task,
        factory,
    }
}

fn config_map(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_reconciles_and_a_standby_takes_over_within_lease_duration_after_release() {
    let server = FakeApiServer::start().await.unwrap();
    let client = server.client().unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    cms.create(&PostParams::default(), &config_map("cm-1"))
        .await
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let a = start_replica(&server, "replica-a", log.clone()).await;
    let b = start_replica(&server, "replica-b", log.clone()).await;

    let leader = eventually("a first reconcile", || async {
        log.lock().first().map(|(id, _)| *id)
    })
    .await;
    let (first, second) = if leader == "replica-a" {
        (a, b)
    } else {
        (b, a)
    };
    assert!(first.elector.is_leader());
    assert!(!second.elector.is_leader());
    let standby = if leader == "replica-a" {
        "replica-b"
    } else {
        "replica-a"
    };

    // A change while the leader leads is reconciled by the leader alone.
    cms.create(&PostParams::default(), &config_map("cm-2"))
        .await
        .unwrap();
    eventually("cm-2 reconciled", || async {
        log.lock().iter().any(|(_, k)| k == "cm-2").then_some(())
    })
    .await;
    assert!(
        log.lock().iter().all(|(id, _)| *id == leader),
        "standby reconciled while not leading: {:?}",
        log.lock()
    );

    // The leader shuts down gracefully (drains, releases the lease); the standby takes over.
    let released_at = Instant::now();
    first.shutdown.cancel();
    first.task.await.unwrap();
    eventually("standby reconciling", || async {
        log.lock()
            .iter()
            .any(|(id, _)| *id == standby)
            .then_some(())
    })
    .await;
    // `eventually` gives up after 30 s, half the lease: a standby that waited for the lease to
    // expire fails there; this states the guarantee.
    let takeover = released_at.elapsed();
    let bound = short_lease(standby).lease_duration;
    assert!(
        takeover < bound,
        "took over after {takeover:?}, not before the lease expired ({bound:?})"
    );
    assert!(second.elector.is_leader());
    let lease = Api::<Lease>::namespaced(client, NS)
        .get("sample-controller")
        .await
        .unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(standby)
    );

    second.shutdown.cancel();
    second.task.await.unwrap();
    first.factory.shutdown().await;
    second.factory.shutdown().await;
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Events.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_event_for_one_object_and_reason_is_one_event_with_a_series() {
    let server = FakeApiServer::start().await.unwrap();
    let client = server.client().unwrap();
    let shutdown = CancellationToken::new();
    let (recorder, task) = EventRecorder::new(
        KubeEventSink::new(client.clone()),
        RecorderConfig::new("samplecontroller.k8s.io/sample-controller", "replica-a"),
        shutdown.clone(),
    );
    let regarding = ObjectReference {
        api_version: Some("samplecontroller.k8s.io/v1alpha1".into()),
        kind: Some("Foo".into()),
        namespace: Some(NS.into()),
        name: Some("example-foo".into()),
        uid: Some("uid-1".into()),
        ..ObjectReference::default()
    };
    for _ in 0..3 {
        recorder.publish(
            &regarding,
            EventType::Normal,
            "Synced",
            "Reconcile",
            "Foo synced successfully",
        );
    }
    let events: Api<Event> = Api::namespaced(client, NS);
    let event = eventually("an event with a series", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.series.as_ref().is_some_and(|s| s.count >= 2))
    })
    .await;
    shutdown.cancel();
    task.join().await;

    let all = events.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(all.len(), 1, "one aggregated Event expected: {all:?}");
    assert_eq!(event.reason.as_deref(), Some("Synced"));
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("example-foo")
    );
    // After the drain on shutdown, the stored series counts every repeat.
    let count = all[0].series.as_ref().map(|s| s.count);
    assert_eq!(count, Some(3), "{:?}", all[0]);
    assert_eq!((recorder.failed(), recorder.dropped()), (0, 0));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_create_failing_with_500_is_retried_and_lands_while_403_is_not_retried() {
    let server = FakeApiServer::start().await.unwrap();
    let client = server.client().unwrap();
    let shutdown = CancellationToken::new();
    let (recorder, task) = EventRecorder::new(
        KubeEventSink::new(client.clone()),
        RecorderConfig {
            retry_interval: Duration::from_millis(100),
            ..RecorderConfig::new("samplecontroller.k8s.io/sample-controller", "replica-a")
        },
        shutdown.clone(),
    );
    let regarding = ObjectReference {
        api_version: Some("samplecontroller.k8s.io/v1alpha1".into()),
        kind: Some("Foo".into()),
        namespace: Some(NS.into()),
        name: Some("example-foo".into()),
        uid: Some("uid-1".into()),
        ..ObjectReference::default()
    };
    let events: Api<Event> = Api::namespaced(client, NS);

    // 403 Forbidden would be refused again: one attempt, abandoned.
    server
        .faults()
        .fail_next(1, 403, Some("create"), Some("events"));
    recorder.publish(
        &regarding,
        EventType::Warning,
        "Denied",
        "Reconcile",
        "no rights",
    );
    eventually("the refused event abandoned", || async {
        (recorder.failed() == 1).then_some(())
    })
    .await;
    assert_eq!(recorder.retries(), 0);

    // Two 500s: the third attempt lands.
    server
        .faults()
        .fail_next(2, 500, Some("create"), Some("events"));
    recorder.publish(
        &regarding,
        EventType::Normal,
        "Synced",
        "Reconcile",
        "in sync",
    );
    let event = eventually("the retried event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().next()
    })
    .await;
    assert_eq!(event.reason.as_deref(), Some("Synced"));
    assert_eq!((recorder.retries(), recorder.failed()), (2, 1));
    shutdown.cancel();
    task.join().await;
    let all = events.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(all.len(), 1, "{all:?}");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Readiness.

async fn http_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    raw.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_from_503_to_200_once_informers_synced() {
    let server = FakeApiServer::start().await.unwrap();
    server
        .seed(serde_json::to_value(config_map("cm-1")).unwrap())
        .unwrap();
    // Requests wait while paused: the informer cannot list, so it cannot sync.
    server.faults().pause();
    let factory = SharedInformerFactory::new(server.client().unwrap(), FactoryOptions::default());
    let informer = factory.informer::<ConfigMap>();
    factory.start();
    let shutdown = CancellationToken::new();
    let synced = informer.clone();
    let health = HealthServer::new(ServeConfig {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
    })
    .readiness("informers-synced", move || {
        if synced.has_synced() {
            Ok(())
        } else {
            Err("caches not synced".into())
        }
    })
    .start(shutdown.clone())
    .await
    .unwrap();
    let addr = health.local_addr();
    assert_eq!(http_status(addr, "/readyz").await, 503);
    assert!(!informer.has_synced());

    server.faults().resume();
    eventually("readyz 200", || async {
        (http_status(addr, "/readyz").await == 200).then_some(())
    })
    .await;
    assert!(informer.has_synced());
    assert!(
        informer
            .lister()
            .get_by_key(&ObjectKey::new(Some(NS), "cm-1"))
            .is_some()
    );

    shutdown.cancel();
    health.join().await;
    factory.shutdown().await;
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Shutdown drains in-flight work.

struct Gate {
    started: tokio::sync::mpsc::UnboundedSender<ObjectKey>,
    release: tokio::sync::Semaphore,
    finished: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_an_in_flight_reconcile_and_counts_it() {
    let server = FakeApiServer::start().await.unwrap();
    let client = server.client().unwrap();
    let factory = SharedInformerFactory::new(client.clone(), FactoryOptions::default());
    let informer = factory.informer::<ConfigMap>();
    factory.start();
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let gate = Arc::new(Gate {
        started: started_tx,
        release: tokio::sync::Semaphore::new(0),
        finished: AtomicUsize::new(0),
    });
    let shutdown = CancellationToken::new();
    let controller = Controller::new(informer).options(ControllerOptions {
        name: "drain".into(),
        sync_timeout: Some(POLL_LIMIT),
        shutdown: shutdown.clone(),
        ..ControllerOptions::default()
    });
    let reconcile = |key: ObjectKey, gate: Arc<Gate>| async move {
        gate.started.send(key).ok();
        let permit = gate.release.acquire().await.map_err(|e| e.to_string())?;
        permit.forget();
        gate.finished.fetch_add(1, Ordering::SeqCst);
        Ok::<_, String>(Action::done())
    };
    let run = tokio::spawn(controller.run(reconcile, default_error_policy, gate.clone()));

    Api::<ConfigMap>::namespaced(client, NS)
        .create(&PostParams::default(), &config_map("blocked"))
        .await
        .unwrap();
    let key = tokio::time::timeout(POLL_LIMIT, started_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(key, ObjectKey::new(Some(NS), "blocked"));

    shutdown.cancel();
    // The reconcile is still blocked: run must not return before it completes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !run.is_finished(),
        "run returned with a reconcile in flight"
    );
    assert_eq!(gate.finished.load(Ordering::SeqCst), 0);

    gate.release.add_permits(1);
    let summary = tokio::time::timeout(POLL_LIMIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(gate.finished.load(Ordering::SeqCst), 1);
    assert_eq!(summary.reconciles, 1, "{summary:?}");
    assert_eq!(
        (summary.errors, summary.abandoned, summary.panics),
        (0, 0, 0)
    );
    factory.shutdown().await;
    server.shutdown().await;
}
