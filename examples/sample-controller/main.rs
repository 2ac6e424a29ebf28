//! Kubernetes' sample-controller, on Reflex: a `Foo` owns a Deployment.
//!
//! A `Foo` (`foos.samplecontroller.k8s.io/v1alpha1`, the CRD is installed when absent) asks for a
//! Deployment named `spec.deploymentName` with `spec.replicas` replicas. The controller (two
//! workers, a rate-limited queue of Foo keys) watches Foos and the Deployments they own; each
//! reconcile creates the Deployment if missing (owned by the Foo, so a Deployment change wakes its
//! Foo), scales it when the replicas differ, refuses to adopt a Deployment it does not own, and
//! copies the Deployment's `availableReplicas` into `Foo.status`. Each outcome is recorded as an
//! `events.k8s.io/v1` Event on the Foo and printed as one line. With `--leader-elect`, only the
//! replica holding the `sample-controller` Lease reconciles, while every replica's informers (from
//! one `SharedInformerFactory`) keep their caches warm. With `--shards N`, replicas share the
//! Foos instead: each caches and reconciles the Foos of the hash slots it holds (member and slot
//! Leases in `--lease-namespace`; a slot moves only once released or expired). `--metrics-addr`
//! serves Prometheus metrics (reconciles, work queue, informers, sharding), `/healthz` and
//! `/readyz` (caches synced, leader).
//!
//! With no `--kubeconfig` and no `--cluster`, an embedded fake API server plays the cluster: a
//! workload creates Foos, scales one and deletes another, and a stand-in for the Deployment
//! controller and the kubelet marks the replicas of each Deployment available.
//!
//! ```text
//! cargo run --example sample-controller                        # embedded, until Ctrl-C
//! cargo run --example sample-controller -- --kubeconfig ~/.kube/config --leader-elect
//! cargo run --example sample-controller -- --kubeconfig ~/.kube/config --shards 16 # per replica
//! ```

#![allow(
    clippy::disallowed_names,
    reason = "Foo is the sample controller's resource kind, not a placeholder"
)]

#[allow(dead_code, reason = "shared by all examples; each uses part of it")]
#[path = "../common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::CustomResource;
use kube::CustomResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use prometheus_client::registry::Registry;
use reflex::informer::SharedIndexInformer;
use reflex::informer::factory::{FactoryOptions, InformerSpec, SharedInformerFactory};
use reflex::informer::key::ObjectKey;
use reflex::informer::lister::Lister;
use reflex::runtime::controller::{Action, Controller, ControllerOptions, default_error_policy};
use reflex::runtime::events::{EventRecorder, EventType, KubeEventSink, RecorderConfig};
use reflex::runtime::leader_election::{KubeLease, LeaderElectionConfig, LeaderElector};
use reflex::runtime::metrics::Metrics;
use reflex::runtime::serve::{HealthServer, ServeConfig};
use reflex::runtime::sharding::{KubeShardLeases, ShardGate, Sharder, ShardingConfig};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Command line of sample-controller.
#[derive(Debug, Parser)]
#[command(
    name = "sample-controller",
    about = "Foo owns a Deployment: the sample controller"
)]
struct Args {
    /// Number of reconcile workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Only reconcile while holding the `sample-controller` Lease.
    #[arg(long, conflicts_with = "shards")]
    leader_elect: bool,
    /// Share the Foos with the other replicas started with `--shards`: the hash space is cut
    /// into this many slots, split over the live replicas by their member Leases; each replica
    /// caches and reconciles only its slots' Foos (see `reflex::runtime::sharding`).
    #[arg(long)]
    shards: Option<u32>,
    /// This replica's identity among sharded replicas (default: `sample-controller-<pid>`).
    #[arg(long)]
    identity: Option<String>,
    /// Lease duration of sharding, in seconds (renew deadline 2/3 of it, retry period 2/15).
    #[arg(long, default_value_t = 15)]
    shard_lease_seconds: u64,
    /// Namespace of the Lease.
    #[arg(long, default_value = "default")]
    lease_namespace: String,
    #[command(flatten)]
    cluster: common::ClusterArgs,
    /// Embedded mode: milliseconds between two steps of the workload.
    #[arg(long, default_value_t = 1500)]
    interval_ms: u64,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address (e.g. `127.0.0.1:8080`; port 0
    /// picks a free port).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Measure how far each informer's cache trails the server this often (milliseconds; a
    /// consistent one-item list per informer), served as `reflex_informer_lag_seconds`; 0: off.
    #[arg(long, default_value_t = 30_000)]
    lag_probe_ms: u64,
    /// Embedded mode: exit once the workload's four steps are done and every Foo has converged.
    #[arg(long)]
    exit_when_converged: bool,
    /// Exit after this many seconds.
    #[arg(long)]
    exit_after: Option<u64>,
}

/// Why sample-controller could not run.
#[derive(Debug, thiserror::Error)]
enum SampleError {
    /// No API server could be reached.
    #[error(transparent)]
    Connect(#[from] common::ConnectError),
    /// Installing the Foo CRD failed.
    #[error("cannot install the Foo CRD")]
    Crd(#[source] kube::Error),
    /// The Foo resource did not become usable after installing its CRD.
    #[error("the Foo resource is not served after installing its CRD")]
    CrdNotServed(#[source] kube::Error),
    /// The controller could not run.
    #[error("the controller failed")]
    Controller(#[source] reflex::runtime::controller::ControllerError),
    /// Leader election is misconfigured.
    #[error("leader election is misconfigured")]
    LeaderElection(#[source] reflex::runtime::leader_election::LeaderElectionError),
    /// Sharding is misconfigured.
    #[error("sharding is misconfigured")]
    Sharding(#[source] reflex::runtime::sharding::ShardingError),
    /// The sharded Foo informer could not be made.
    #[error("cannot make the sharded Foo informer")]
    Factory(#[source] reflex::informer::factory::FactoryError),
    /// The signal handlers could not be installed.
    #[error("cannot install the Ctrl-C handler")]
    Signal(#[source] std::io::Error),
    /// An informer could not be registered for metrics.
    #[error("cannot register the informer metrics")]
    Metrics(#[source] reflex::runtime::metrics::MetricsError),
    /// The metrics and health endpoints could not be served.
    #[error("cannot serve /metrics, /healthz and /readyz")]
    Serve(#[source] reflex::runtime::serve::ServeError),
}

/// Why one reconcile failed (it is retried with the queue's per-key backoff).
#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    /// A write to the API server failed.
    #[error("{what} failed")]
    Api {
        /// What was being written.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The Deployment exists and is not controlled by this Foo.
    #[error("deployment {0} exists and is not owned by this Foo")]
    NotOwned(String),
}

/// `Foo.spec`; kube's derive makes the `Foo` kind around it (`metadata`, `spec`, `status`,
/// `impl kube::Resource`) and its CRD (`Foo::crd()`, the schema from `JsonSchema`).
///
/// The group ends in `.k8s.io`, which the API server protects: a CRD there must carry the
/// `api-approved.kubernetes.io` annotation (here the value saying it is unapproved), or it is
/// rejected as Invalid.
#[derive(CustomResource, JsonSchema, Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[kube(
    group = "samplecontroller.k8s.io",
    version = "v1alpha1",
    kind = "Foo",
    namespaced,
    status = "FooStatus",
    annotation("api-approved.kubernetes.io", "unapproved, experimental-only")
)]
#[serde(rename_all = "camelCase")]
struct FooSpec {
    /// The Deployment this Foo owns.
    #[serde(default)]
    deployment_name: String,
    /// Its replicas.
    #[serde(default)]
    #[schemars(range(min = 0))]
    replicas: i32,
}

/// `Foo.status`.
#[derive(JsonSchema, Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct FooStatus {
    /// The owned Deployment's `status.availableReplicas`.
    available_replicas: i32,
}

/// Installs the Foo CRD when absent and waits until Foos can be listed.
async fn install_crd(client: &kube::Client) -> Result<(), SampleError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    if crds
        .get_opt("foos.samplecontroller.k8s.io")
        .await
        .map_err(SampleError::Crd)?
        .is_none()
    {
        crds.create(&PostParams::default(), &Foo::crd())
            .await
            .map_err(SampleError::Crd)?;
        println!("installed CRD foos.samplecontroller.k8s.io");
    }
    let foos: Api<Foo> = Api::all(client.clone());
    let mut attempt = 0;
    loop {
        match foos.list(&ListParams::default().limit(1)).await {
            Ok(_) => return Ok(()),
            Err(e) if attempt >= 20 => return Err(SampleError::CrdNotServed(e)),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

struct Ctx {
    client: kube::Client,
    foos: Lister<Foo>,
    deployments: Lister<Deployment>,
    recorder: EventRecorder,
}

fn reference(foo: &Foo) -> ObjectReference {
    ObjectReference {
        api_version: Some("samplecontroller.k8s.io/v1alpha1".into()),
        kind: Some("Foo".into()),
        name: foo.metadata.name.clone(),
        namespace: foo.metadata.namespace.clone(),
        uid: foo.metadata.uid.clone(),
        resource_version: foo.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

fn new_deployment(foo: &Foo) -> Deployment {
    let name = &foo.spec.deployment_name;
    let owner = OwnerReference {
        api_version: "samplecontroller.k8s.io/v1alpha1".into(),
        kind: "Foo".into(),
        name: foo.metadata.name.clone().unwrap_or_default(),
        uid: foo.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let mut deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": foo.metadata.namespace,
                     "labels": {"app": "nginx", "controller": foo.metadata.name}},
        "spec": {
            "replicas": foo.spec.replicas,
            "selector": {"matchLabels": {"app": "nginx", "controller": foo.metadata.name}},
            "template": {
                "metadata": {"labels": {"app": "nginx", "controller": foo.metadata.name}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}
            }
        }
    }))
    .expect("a literal deployment is a valid Deployment");
    deployment.metadata.owner_references = Some(vec![owner]);
    deployment
}

fn owned_by(deployment: &Deployment, foo: &Foo) -> bool {
    deployment
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| {
            o.controller == Some(true)
                && o.kind == "Foo"
                && Some(&o.uid) == foo.metadata.uid.as_ref()
        })
}

async fn reconcile(key: ObjectKey, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let Some(foo) = ctx.foos.get_by_key(&key) else {
        // Deleted: its Deployment is garbage-collected through the owner reference.
        return Ok(Action::done());
    };
    let namespace = key.namespace().unwrap_or("default").to_string();
    let reference = reference(&foo);
    if foo.spec.deployment_name.is_empty() {
        println!(
            "{:<24} spec.deploymentName is empty: nothing to do",
            key.to_string()
        );
        ctx.recorder.publish(
            &reference,
            EventType::Warning,
            "InvalidSpec",
            "Reconcile",
            "spec.deploymentName must be set",
        );
        return Ok(Action::done());
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let dep_name = foo.spec.deployment_name.clone();
    let dep_key = ObjectKey::new(Some(namespace.as_str()), &dep_name);
    let deployment = match ctx.deployments.get_by_key(&dep_key) {
        None => {
            let created = deployments
                .create(&PostParams::default(), &new_deployment(&foo))
                .await
                .map_err(|source| ReconcileError::Api {
                    what: format!("creating deployment {dep_key}"),
                    source,
                })?;
            println!(
                "{:<24} created deployment {dep_name} with {} replicas",
                key.to_string(),
                foo.spec.replicas
            );
            ctx.recorder.publish(
                &reference,
                EventType::Normal,
                "Created",
                "CreateDeployment",
                &format!("Created Deployment {dep_name}"),
            );
            Arc::new(created)
        }
        Some(existing) if !owned_by(&existing, &foo) => {
            ctx.recorder.publish(
                &reference,
                EventType::Warning,
                "ErrResourceExists",
                "Reconcile",
                &format!("Resource {dep_name} already exists and is not managed by Foo"),
            );
            return Err(ReconcileError::NotOwned(dep_key.to_string()));
        }
        Some(existing) => existing,
    };
    let current = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    if current != foo.spec.replicas {
        let patch = json!({"spec": {"replicas": foo.spec.replicas}});
        deployments
            .patch(&dep_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| ReconcileError::Api {
                what: format!("scaling deployment {dep_key}"),
                source,
            })?;
        println!(
            "{:<24} scaled deployment {dep_name} from {current} to {} replicas",
            key.to_string(),
            foo.spec.replicas
        );
        ctx.recorder.publish(
            &reference,
            EventType::Normal,
            "Scaled",
            "ScaleDeployment",
            &format!(
                "Scaled Deployment {dep_name} from {current} to {}",
                foo.spec.replicas
            ),
        );
    }
    let available = deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    if foo.status.as_ref().map(|s| s.available_replicas) != Some(available) {
        let foos: Api<Foo> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({"status": {"availableReplicas": available}});
        match foos
            .patch_status(key.name(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // Deleted since the cache last saw it: nothing left to report on.
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(Action::done()),
            Err(source) => {
                return Err(ReconcileError::Api {
                    what: format!("updating the status of {key}"),
                    source,
                });
            }
        }
        println!(
            "{:<24} status.availableReplicas = {available} (of {})",
            key.to_string(),
            foo.spec.replicas
        );
        ctx.recorder.publish(
            &reference,
            EventType::Normal,
            "Synced",
            "Reconcile",
            "Foo synced successfully",
        );
    }
    Ok(Action::done())
}

fn foo(namespace: &str, name: &str, deployment: &str, replicas: i32) -> Foo {
    let mut foo = Foo::new(
        name,
        FooSpec {
            deployment_name: deployment.to_owned(),
            replicas,
        },
    );
    foo.metadata.namespace = Some(namespace.to_owned());
    foo
}

/// The number of workload steps (see [`workload_step`]).
const WORKLOAD_STEPS: u64 = 4;

/// Creates two Foos, scales one and deletes the other (whose Deployment the embedded server's
/// garbage collector deletes, as a cluster's does).
async fn workload_step(client: &kube::Client, step: u64) -> Result<(), kube::Error> {
    let foos: Api<Foo> = Api::namespaced(client.clone(), "default");
    match step {
        0 => foos
            .create(
                &PostParams::default(),
                &foo("default", "example-foo", "example-foo", 1),
            )
            .await
            .map(|_| ()),
        1 => foos
            .create(
                &PostParams::default(),
                &foo("default", "web", "web-nginx", 2),
            )
            .await
            .map(|_| ()),
        2 => {
            let patch = json!({"spec": {"replicas": 3}});
            foos.patch(
                "example-foo",
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map(|_| ())
        }
        // Its Deployment goes with it: the server collects it through the owner reference.
        _ => foos
            .delete("web", &DeleteParams::default())
            .await
            .map(|_| ()),
    }
}

/// Stands in for the Deployment controller and the kubelet: every Deployment's replicas become
/// available.
async fn make_replicas_available(client: &kube::Client) -> Result<(), kube::Error> {
    let deployments: Api<Deployment> = Api::all(client.clone());
    for d in deployments.list(&ListParams::default()).await? {
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let have = d
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0);
        if want != have {
            let api: Api<Deployment> = Api::namespaced(
                client.clone(),
                d.metadata.namespace.as_deref().unwrap_or("default"),
            );
            let patch = json!({"status": {"replicas": want, "readyReplicas": want, "availableReplicas": want, "updatedReplicas": want}});
            api.patch_status(
                d.metadata.name.as_deref().unwrap_or(""),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        }
    }
    Ok(())
}

/// Runs the workload steps every `interval` (setting `finished` after the last one) and marks
/// replicas available three times as often, until `stop`.
async fn workload(
    client: kube::Client,
    interval: Duration,
    finished: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
) {
    let mut step = 0;
    let mut ticker = tokio::time::interval(interval / 3);
    let mut since_step = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        since_step += 1;
        if since_step >= 3 && step < WORKLOAD_STEPS {
            since_step = 0;
            if let Err(error) = workload_step(&client, step).await {
                tracing::warn!(step, %error, "workload step failed");
            }
            step += 1;
            if step == WORKLOAD_STEPS {
                finished.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        if let Err(error) = make_replicas_available(&client).await {
            tracing::warn!(%error, "marking replicas available failed");
        }
    }
}

/// Whether the cache holds `expected_foos` Foos and each matches its Deployment: the right
/// replicas, all available, and reported in the Foo's status; and no other Deployment is left
/// (a deleted Foo's Deployment is gone).
fn converged(ctx: &Ctx, expected_foos: usize) -> bool {
    let foos = ctx.foos.store().list();
    foos.len() == expected_foos
        && ctx.deployments.store().len() == expected_foos
        && foos.iter().all(|foo| {
            let ns = foo.metadata.namespace.as_deref().unwrap_or("default");
            let dep = ctx
                .deployments
                .get_by_key(&ObjectKey::new(Some(ns), &foo.spec.deployment_name));
            let available = dep
                .as_ref()
                .and_then(|d| d.status.as_ref()?.available_replicas)
                .unwrap_or(0);
            dep.is_some_and(|d| d.spec.as_ref().and_then(|s| s.replicas) == Some(foo.spec.replicas))
                && available == foo.spec.replicas
                && foo.status.as_ref().map(|s| s.available_replicas) == Some(available)
        })
}

fn foo_table(ctx: &Ctx) -> String {
    let mut foos = ctx.foos.store().list();
    foos.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut out = format!(
        "{:<24} {:<16} {:>8} {:>10}\n",
        "FOO", "DEPLOYMENT", "DESIRED", "AVAILABLE"
    );
    for foo in foos {
        let name = format!(
            "{}/{}",
            foo.metadata.namespace.as_deref().unwrap_or(""),
            foo.metadata.name.as_deref().unwrap_or("")
        );
        let available = foo
            .status
            .as_ref()
            .map_or_else(|| "-".into(), |s| s.available_replicas.to_string());
        let _ = writeln!(
            out,
            "{name:<24} {:<16} {:>8} {available:>10}",
            foo.spec.deployment_name, foo.spec.replicas
        );
    }
    let mut deployments: Vec<String> = ctx
        .deployments
        .store()
        .list_keys()
        .iter()
        .map(ToString::to_string)
        .collect();
    deployments.sort();
    let _ = writeln!(out, "\ndeployments in the cache: {}", deployments.join(" "));
    out
}

/// The embedded server starts empty; the controller's Foos live in `default`.
async fn create_default_namespace(client: &kube::Client) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "default"}}))
        .expect("a literal namespace is valid");
    if let Err(e) = namespaces.create(&PostParams::default(), &ns).await {
        // Already there is fine.
        tracing::debug!(error = %e, "creating namespace default");
    }
}

/// Runs the controller over the factory's informers until `stop` (or, under leader election, the
/// end of this term of leadership) is cancelled. The informers outlive it: a standby replica keeps
/// its caches warm and starts reconciling the moment it wins the Lease.
async fn run_controller(
    foos: SharedIndexInformer<Foo>,
    deployments: SharedIndexInformer<Deployment>,
    ctx: Arc<Ctx>,
    workers: usize,
    metrics: Metrics,
    shards: Option<ShardGate>,
    stop: CancellationToken,
) -> Result<(), SampleError> {
    let mut controller = Controller::new(foos).owns(deployments);
    if let Some(gate) = shards {
        controller = controller.shards(gate);
    }
    let summary = controller
        .workers(workers)
        .options(ControllerOptions {
            name: "sample-controller".into(),
            shutdown: stop,
            metrics: Some(metrics),
            ..ControllerOptions::default()
        })
        .run(reconcile, default_error_policy, ctx)
        .await
        .map_err(SampleError::Controller)?;
    println!(
        "controller stopped: {} reconciles, {} errors, {} requeues",
        summary.reconciles, summary.errors, summary.requeues
    );
    Ok(())
}

async fn run(args: Args) -> Result<(), SampleError> {
    let shutdown = reflex::runtime::signal::shutdown_token().map_err(SampleError::Signal)?;
    let conn = common::connect(&args.cluster).await?;
    let client = conn.client.clone();
    if conn.is_embedded() {
        create_default_namespace(&client).await;
    }
    install_crd(&client).await?;

    let stop = shutdown.child_token();
    // One factory per process; its informers run whether or not this replica leads.
    let options = FactoryOptions {
        lag_probe: (args.lag_probe_ms > 0).then(|| Duration::from_millis(args.lag_probe_ms)),
        ..FactoryOptions::default()
    };
    let factory = SharedInformerFactory::new(client.clone(), options);
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("sample-controller-{}", std::process::id()));
    let sharder = match args.shards {
        Some(slots) => {
            let lease = Duration::from_secs(args.shard_lease_seconds.max(1));
            let config = ShardingConfig {
                slots,
                lease_duration: lease,
                renew_deadline: lease * 2 / 3,
                retry_period: lease * 2 / 15,
                ..ShardingConfig::new("sample-controller", identity.clone())
            };
            let leases = KubeShardLeases::new(Api::<Lease>::namespaced(
                client.clone(),
                &args.lease_namespace,
            ));
            let sharder = Sharder::new(leases, config).map_err(SampleError::Sharding)?;
            println!("sharding: {slots} slots, as {identity}");
            Some(sharder)
        }
        None => None,
    };
    let foos = match &sharder {
        Some(sharder) => factory
            .informer_with(InformerSpec::<Foo>::typed().shard(sharder.informer_shard()))
            .map_err(SampleError::Factory)?,
        None => factory.informer::<Foo>(),
    };
    let deployments = factory.informer::<Deployment>();
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    if let Some(sharder) = &sharder {
        metrics
            .register_sharding(&sharder.gate())
            .map_err(SampleError::Metrics)?;
    }
    metrics
        .register_informer("foos.samplecontroller.k8s.io", &foos)
        .map_err(SampleError::Metrics)?;
    metrics
        .register_informer("deployments.apps", &deployments)
        .map_err(SampleError::Metrics)?;
    factory.start();
    let (recorder, recorder_task) = EventRecorder::new(
        KubeEventSink::new(client.clone()),
        RecorderConfig::new(
            "samplecontroller.k8s.io/sample-controller",
            format!("sample-controller-{}", std::process::id()),
        ),
        stop.clone(),
    );
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        foos: foos.lister(),
        deployments: deployments.lister(),
        recorder,
    });

    let elector = if args.leader_elect {
        let lease = KubeLease::new(
            Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
            "sample-controller",
        );
        let elector = LeaderElector::new(lease, LeaderElectionConfig::new(identity.clone()))
            .map_err(SampleError::LeaderElection)?;
        println!(
            "campaigning for Lease {}/sample-controller as {identity}",
            args.lease_namespace
        );
        Some(elector)
    } else {
        None
    };
    let health = match args.metrics_addr {
        Some(addr) => {
            let mut server = HealthServer::new(ServeConfig { addr })
                .registry(Arc::new(registry))
                .informer_synced("foos", &foos)
                .informer_synced("deployments", &deployments);
            if let Some(elector) = &elector {
                server = server.leader_state(elector.subscribe());
            }
            let handle = server
                .start(stop.clone())
                .await
                .map_err(SampleError::Serve)?;
            println!(
                "serving /metrics, /healthz and /readyz on http://{}",
                handle.local_addr()
            );
            Some(handle)
        }
        None => None,
    };

    let gate = sharder.as_ref().map(Sharder::gate);
    let sharding = sharder.map(|sharder| tokio::spawn(sharder.run(stop.clone())));
    let controller = {
        let (foos, deployments, ctx) = (foos.clone(), deployments.clone(), ctx.clone());
        let (workers, metrics, stop) = (args.workers, metrics.clone(), stop.clone());
        match elector {
            Some(elector) => tokio::spawn(async move {
                let outcome = elector
                    .run_while_leader(&stop, |leading| {
                        println!("leading: starting the controller");
                        run_controller(
                            foos.clone(),
                            deployments.clone(),
                            ctx.clone(),
                            workers,
                            metrics.clone(),
                            None,
                            leading,
                        )
                    })
                    .await;
                outcome.unwrap_or(Ok(()))
            }),
            None => tokio::spawn(run_controller(
                foos,
                deployments,
                ctx,
                workers,
                metrics,
                gate,
                stop,
            )),
        }
    };

    let deadline = common::deadline(args.exit_after);
    tokio::pin!(deadline);
    let mut workload_task = None;
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut reported = false;
    {
        if conn.is_embedded() {
            workload_task = Some(tokio::spawn(workload(
                client.clone(),
                Duration::from_millis(args.interval_ms),
                finished.clone(),
                stop.clone(),
            )));
        }
        let mut check = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => { println!("interrupted"); break; }
                _ = &mut deadline => break,
                _ = check.tick() => {}
            }
            // After the workload, one Foo is left (`example-foo`, scaled to 3).
            let steps_done = finished.load(std::sync::atomic::Ordering::SeqCst);
            if conn.is_embedded() && steps_done && !reported && converged(&ctx, 1) {
                println!("converged");
                reported = true;
                if args.exit_when_converged {
                    break;
                }
            }
        }
    }
    stop.cancel();
    if let Some(task) = workload_task {
        let _ = task.await;
    }
    match controller.await {
        Ok(result) => result?,
        Err(e) => tracing::error!(error = %e, "controller task failed"),
    }
    if let Some(sharding) = sharding {
        // Its slots are released once their reconciles are done: other replicas take over.
        if let Err(e) = sharding.await {
            tracing::error!(error = %e, "sharding task failed");
        }
    }
    recorder_task.join().await;
    if let Some(health) = health {
        health.join().await;
    }
    println!("{}", foo_table(&ctx));
    factory.shutdown().await;
    if conn.is_embedded() {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(client.clone(), "default");
        if let Ok(list) = events.list(&ListParams::default()).await {
            let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
            for e in list {
                *reasons.entry(e.reason.unwrap_or_default()).or_default() += 1;
            }
            let summary: Vec<String> = reasons.iter().map(|(r, n)| format!("{r}={n}")).collect();
            println!("events recorded: {}", summary.join(" "));
        }
    }
    conn.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::init_tracing();
    common::exit_code(run(Args::parse()).await)
}
