//! Discovers the API, then watches any resource (built in or a CRD) as `DynamicObject`s.
//!
//! First the server's resources are printed, like `kubectl api-resources`. Then `--resource`
//! (`deployments.apps` by default; `plural.group`, a bare plural for the core group, or a kind) is
//! resolved through discovery to its `ApiResource`, and a `SharedIndexInformer<DynamicObject>`
//! lists and watches it with an index on the value of one label (`--index-label`, default `team`).
//! Every change prints a line; after each, the index is summarised as the number of objects per
//! label value, read from the informer's indexer (`list_index_values`, `index_keys`).
//!
//! With no `--kubeconfig` and no `--cluster`, an embedded fake API server is seeded with
//! Deployments of three teams and a `Backup` CRD (`backups.demo.reflex.dev`) with a few backups, and
//! a workload creates, scales, hands over to another team and deletes Deployments.
//!
//! ```text
//! cargo run --example dynamic-watch                                # deployments.apps, embedded
//! cargo run --example dynamic-watch -- --resource backups.demo.reflex.dev
//! cargo run --example dynamic-watch -- --cluster --resource pods --index-label app
//! ```

#[allow(dead_code, reason = "shared by all examples; each uses part of it")]
#[path = "../common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use reflex::informer::discovery::{
    CachedDiscovery, DiscoveryCache, DiscoveryError, DiscoveryOptions,
};
use reflex::informer::handler::DeltaObject;
use reflex::informer::handler::handler_fn;
use reflex::informer::source::ListWatch;
use reflex::informer::store::{Indexer, Store};
use reflex::informer::{InformerOptions, SharedIndexInformer};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The name of the label-value index.
const LABEL_INDEX: &str = "by-label";

/// Command line of dynamic-watch.
#[derive(Debug, Parser)]
#[command(
    name = "dynamic-watch",
    about = "Discovery, then a dynamic informer on any resource"
)]
struct Args {
    /// The resource to watch: `plural.group`, a core plural (`pods`) or a kind (`Deployment`).
    #[arg(long, default_value = "deployments.apps")]
    resource: String,
    /// Only objects in this namespace (default: all namespaces).
    #[arg(short, long)]
    namespace: Option<String>,
    /// The label whose values are indexed.
    #[arg(long, default_value = "team")]
    index_label: String,
    /// Do not print the discovery table.
    #[arg(long)]
    no_discovery: bool,
    /// Keep discovery documents under this directory (default: kubectl's
    /// `~/.kube/cache/discovery`, 10 minutes; none in embedded mode).
    #[arg(long)]
    discovery_cache_dir: Option<std::path::PathBuf>,
    /// Ask the server for discovery every time (no disk cache).
    #[arg(long)]
    no_discovery_cache: bool,
    #[command(flatten)]
    cluster: common::ClusterArgs,
    /// Embedded mode: milliseconds between two steps of the workload.
    #[arg(long, default_value_t = 700)]
    interval_ms: u64,
    /// Embedded mode: stop the workload after this many steps.
    #[arg(long)]
    workload_steps: Option<u64>,
    /// Exit after this many changes were printed after the sync.
    #[arg(long)]
    exit_after_events: Option<u64>,
    /// Exit after this many seconds.
    #[arg(long)]
    exit_after: Option<u64>,
}

/// Why dynamic-watch could not run.
#[derive(Debug, thiserror::Error)]
enum DynamicWatchError {
    /// No API server could be reached.
    #[error(transparent)]
    Connect(#[from] common::ConnectError),
    /// The embedded API server refused the demo CRD.
    #[error("cannot register the demo CRD")]
    Crd(#[source] reflex_testing::FakeError),
    /// Seeding the embedded API server failed.
    #[error("cannot seed {0}")]
    Seed(String, #[source] kube::Error),
    /// Discovery failed.
    #[error("API discovery failed")]
    Discovery(#[source] DiscoveryError),
    /// `--resource` names nothing the server serves.
    #[error("the server has no resource {0:?} (see the discovery table)")]
    UnknownResource(String),
    /// The informer refused a handler or an index.
    #[error("cannot set up the informer")]
    Informer(#[source] reflex::informer::InformerError),
    /// The signal handlers could not be installed.
    #[error("cannot install the Ctrl-C handler")]
    Signal(#[source] std::io::Error),
}

fn discovery_table(resources: &[(ApiResource, ApiCapabilities)]) -> String {
    let mut rows: Vec<(String, String, bool, String)> = resources
        .iter()
        .map(|(ar, caps)| {
            let name = if ar.group.is_empty() {
                ar.plural.clone()
            } else {
                format!("{}.{}", ar.plural, ar.group)
            };
            (
                name,
                ar.api_version.clone(),
                caps.scope == Scope::Namespaced,
                ar.kind.clone(),
            )
        })
        .collect();
    rows.sort();
    let mut out = format!(
        "{:<48} {:<34} {:<10} KIND\n",
        "NAME", "APIVERSION", "NAMESPACED"
    );
    for (name, version, namespaced, kind) in rows {
        let _ = writeln!(out, "{name:<48} {version:<34} {namespaced:<10} {kind}");
    }
    out
}

fn label_of(obj: &DynamicObject, label: &str) -> String {
    obj.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(label).cloned())
        .unwrap_or_else(|| "<none>".into())
}

/// `ns/name`, the label value and, when the object has them, its replicas.
fn describe(obj: &DynamicObject, label: &str) -> String {
    let name = match &obj.metadata.namespace {
        Some(ns) => format!("{ns}/{}", obj.metadata.name.as_deref().unwrap_or("")),
        None => obj.metadata.name.clone().unwrap_or_default(),
    };
    let replicas = obj
        .data
        .pointer("/spec/replicas")
        .map(|r| format!("  replicas={r}"))
        .unwrap_or_default();
    format!("{name:<32} {label}={}{replicas}", label_of(obj, label))
}

fn deployment(namespace: &str, name: &str, team: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name, "team": team}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": name, "image": format!("registry.example/{name}:1.0")}]}
            }
        }
    }))
    .expect("a literal deployment is a valid Deployment")
}

async fn seed(
    server: &reflex_testing::FakeApiServer,
    client: &kube::Client,
) -> Result<(), DynamicWatchError> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in ["shop", "search", "platform"] {
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))
            .expect("a literal namespace is a valid Namespace");
        namespaces
            .create(&PostParams::default(), &obj)
            .await
            .map_err(|e| DynamicWatchError::Seed(format!("namespace {ns}"), e))?;
    }
    let seeds = [
        ("shop", "checkout", "payments", 3),
        ("shop", "cart", "payments", 2),
        ("shop", "catalog", "search", 2),
        ("search", "indexer", "search", 1),
        ("search", "query", "search", 4),
        ("platform", "ingress", "platform", 2),
    ];
    for (ns, name, team, replicas) in seeds {
        let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
        api.create(
            &PostParams::default(),
            &deployment(ns, name, team, replicas),
        )
        .await
        .map_err(|e| DynamicWatchError::Seed(format!("deployment {ns}/{name}"), e))?;
    }
    server
        .register_crd(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "backups.demo.reflex.dev"},
            "spec": {
                "group": "demo.reflex.dev",
                "scope": "Namespaced",
                "names": {"plural": "backups", "singular": "backup", "kind": "Backup", "shortNames": ["bk"]},
                "versions": [{"name": "v1", "served": true, "storage": true,
                              "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
            }
        }))
        .map_err(DynamicWatchError::Crd)?;
    let ar = ApiResource {
        group: "demo.reflex.dev".into(),
        version: "v1".into(),
        api_version: "demo.reflex.dev/v1".into(),
        kind: "Backup".into(),
        plural: "backups".into(),
    };
    for (ns, name, team) in [
        ("shop", "orders-nightly", "payments"),
        ("search", "index-weekly", "search"),
    ] {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "demo.reflex.dev/v1", "kind": "Backup",
            "metadata": {"name": name, "namespace": ns, "labels": {"team": team}},
            "spec": {"schedule": "0 3 * * *", "retention": "7d"}
        }))
        .expect("a literal backup is a valid DynamicObject");
        api.create(&PostParams::default(), &obj)
            .await
            .map_err(|e| DynamicWatchError::Seed(format!("backup {ns}/{name}"), e))?;
    }
    Ok(())
}

/// One step of the embedded workload: six steps (six changes) bring the Deployments back.
async fn workload_step(client: &kube::Client, step: u64) -> Result<(), kube::Error> {
    let shop: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let platform: Api<Deployment> = Api::namespaced(client.clone(), "platform");
    let merge = |patch: serde_json::Value| Patch::Merge(patch);
    let pp = PatchParams::default();
    match step % 6 {
        0 => platform
            .create(
                &PostParams::default(),
                &deployment("platform", "metrics", "platform", 1),
            )
            .await
            .map(|_| ()),
        1 => shop
            .patch("checkout", &pp, &merge(json!({"spec": {"replicas": 6}})))
            .await
            .map(|_| ()),
        2 => shop
            .patch(
                "catalog",
                &pp,
                &merge(json!({"metadata": {"labels": {"team": "payments"}}})),
            )
            .await
            .map(|_| ()),
        3 => platform
            .delete("metrics", &DeleteParams::default())
            .await
            .map(|_| ()),
        4 => shop
            .patch("checkout", &pp, &merge(json!({"spec": {"replicas": 3}})))
            .await
            .map(|_| ()),
        _ => shop
            .patch(
                "catalog",
                &pp,
                &merge(json!({"metadata": {"labels": {"team": "search"}}})),
            )
            .await
            .map(|_| ()),
    }
}

async fn workload(
    client: kube::Client,
    interval: Duration,
    steps: Option<u64>,
    stop: CancellationToken,
) {
    let mut step = 0;
    while steps.is_none_or(|n| step < n) {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if let Err(error) = workload_step(&client, step).await {
            tracing::warn!(step, %error, "workload step failed");
        }
        step += 1;
    }
}

/// `label: value=count ...` from the informer's index.
fn index_summary(indexer: &Store<DynamicObject>, label: &str) -> String {
    let mut out = format!("  index {label}:");
    for value in indexer.list_index_values(LABEL_INDEX).unwrap_or_default() {
        let count = indexer
            .index_keys(LABEL_INDEX, &value)
            .map_or(0, |k| k.len());
        if count > 0 {
            let _ = write!(out, " {value}={count}");
        }
    }
    out
}

async fn run(args: Args) -> Result<(), DynamicWatchError> {
    let shutdown = reflex::runtime::signal::shutdown_token().map_err(DynamicWatchError::Signal)?;
    let conn = common::connect(&args.cluster).await?;
    let client = conn.client.clone();
    if let Some(server) = &conn.server {
        seed(server, &client).await?;
    }

    // A throwaway embedded server gets no disk cache (its URL changes every run).
    let cache = match (
        &args.discovery_cache_dir,
        args.no_discovery_cache || conn.is_embedded(),
    ) {
        (Some(dir), _) => DiscoveryCache::Dir(dir.clone()),
        (None, true) => DiscoveryCache::Disabled,
        (None, false) => DiscoveryCache::KubeDefault,
    };
    let discovery = CachedDiscovery::new(
        client.clone(),
        &conn.cluster_url,
        DiscoveryOptions {
            cache,
            ..DiscoveryOptions::default()
        },
    );
    if !args.no_discovery {
        let resources = discovery
            .resources()
            .await
            .map_err(DynamicWatchError::Discovery)?;
        println!("{}", discovery_table(&resources));
    }
    let (ar, caps) = match discovery.resolve(&args.resource).await {
        Ok(found) => found,
        Err(DiscoveryError::NotFound { .. }) => {
            return Err(DynamicWatchError::UnknownResource(args.resource.clone()));
        }
        Err(e) => return Err(DynamicWatchError::Discovery(e)),
    };
    let api: Api<DynamicObject> = match (&args.namespace, caps.scope) {
        (Some(ns), Scope::Namespaced) => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    };
    let source: Arc<dyn ListWatch<DynamicObject>> = Arc::new(api);
    let informer = SharedIndexInformer::with_indexer(
        source,
        Indexer::with_dyntype(ar.clone()),
        InformerOptions::default(),
    );
    let label = args.index_label.clone();
    informer
        .add_indexers(LABEL_INDEX, move |obj: &DynamicObject| {
            obj.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(&label).cloned())
                .into_iter()
                .collect()
        })
        .map_err(DynamicWatchError::Informer)?;

    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (add_tx, update_tx) = (tx.clone(), tx.clone());
    let (l1, l2, l3) = (
        args.index_label.clone(),
        args.index_label.clone(),
        args.index_label.clone(),
    );
    informer
        .add_event_handler(
            handler_fn()
                .on_add(move |obj: &Arc<DynamicObject>, initial| {
                    if !initial {
                        let _ = add_tx.send(format!("ADDED    {}", describe(obj, &l1)));
                    }
                })
                .on_update(move |old: &Arc<DynamicObject>, new: &Arc<DynamicObject>| {
                    if old.metadata.resource_version != new.metadata.resource_version {
                        let mut line = format!("MODIFIED {}", describe(new, &l2));
                        let (before, after) = (label_of(old, &l2), label_of(new, &l2));
                        if before != after {
                            let _ = write!(line, "  (was {l2}={before})");
                        }
                        let _ = update_tx.send(line);
                    }
                })
                .on_delete(move |obj: &DeltaObject<DynamicObject>| {
                    let line = match obj {
                        DeltaObject::Object(o) => describe(o, &l3),
                        DeltaObject::Tombstone(t) => format!("{} (last state unknown)", t.key),
                    };
                    let _ = tx.send(format!("DELETED  {line}"));
                }),
        )
        .map_err(DynamicWatchError::Informer)?;

    let stop = shutdown.child_token();
    let informer_task = tokio::spawn({
        let informer = informer.clone();
        let stop = stop.clone();
        async move { informer.run(stop).await }
    });
    let deadline = common::deadline(args.exit_after);
    tokio::pin!(deadline);
    let synced = tokio::select! {
        synced = informer.wait_for_sync() => synced,
        _ = shutdown.cancelled() => false,
        _ = &mut deadline => false,
    };
    let mut seen = 0u64;
    let mut workload_task = None;
    if synced {
        println!(
            "watching {} ({}): {} objects cached",
            args.resource,
            ar.api_version,
            informer.indexer().len()
        );
        println!("{}", index_summary(informer.indexer(), &args.index_label));
        if conn.is_embedded() {
            workload_task = Some(tokio::spawn(workload(
                client.clone(),
                Duration::from_millis(args.interval_ms),
                args.workload_steps,
                stop.clone(),
            )));
        }
        while args.exit_after_events.is_none_or(|n| seen < n) {
            tokio::select! {
                _ = shutdown.cancelled() => { println!("interrupted"); break; }
                _ = &mut deadline => break,
                line = changes.recv() => match line {
                    Some(line) => {
                        println!("{line}");
                        println!("{}", index_summary(informer.indexer(), &args.index_label));
                        seen += 1;
                    }
                    None => break,
                },
            }
        }
    }
    stop.cancel();
    if let Some(task) = workload_task {
        let _ = task.await;
    }
    let _ = informer_task.await;
    println!(
        "{seen} changes seen; final {}",
        index_summary(informer.indexer(), &args.index_label).trim_start()
    );
    conn.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::init_tracing();
    common::exit_code(run(Args::parse()).await)
}
