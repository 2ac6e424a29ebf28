//! Lists Nodes from an informer's cache, then prints every add, update and delete.
//!
//! A `SharedInformerFactory` hands out the shared `SharedIndexInformer<Node>`, which lists and
//! watches the Nodes; once the factory reports its caches synced, the nodes
//! are printed from its lister (name, readiness, kubelet version, CPU and memory capacity). An
//! event handler registered before start then reports each change as it is applied to the cache,
//! saying what changed for an update (readiness, kubelet version, capacity).
//!
//! With no `--kubeconfig` and no `--cluster`, an embedded fake API server is seeded with five
//! nodes, and a small workload adds, upgrades, cordons and removes nodes every `--interval-ms`.
//!
//! ```text
//! cargo run --example node-lister                               # embedded, until Ctrl-C
//! cargo run --example node-lister -- --kubeconfig ~/.kube/config -l node-role.kubernetes.io/worker
//! ```

#[allow(dead_code, reason = "shared by all examples; each uses part of it")]
#[path = "../common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::Selector;
use reflex::informer::{
    DeltaObject, FactoryOptions, ReflectorOptions, SharedInformerFactory, handler_fn,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Command line of node-lister.
#[derive(Debug, Parser)]
#[command(
    name = "node-lister",
    about = "Nodes from an informer's cache, then their changes"
)]
struct Args {
    /// Label selector, e.g. `node-role.kubernetes.io/worker`.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    #[command(flatten)]
    cluster: common::ClusterArgs,
    /// Embedded mode: milliseconds between two steps of the workload.
    #[arg(long, default_value_t = 700)]
    interval_ms: u64,
    /// Exit after this many changes were printed after the sync.
    #[arg(long)]
    exit_after_events: Option<u64>,
    /// Exit after this many seconds.
    #[arg(long)]
    exit_after: Option<u64>,
}

/// Why node-lister could not run.
#[derive(Debug, thiserror::Error)]
enum NodeListerError {
    /// No API server could be reached.
    #[error(transparent)]
    Connect(#[from] common::ConnectError),
    /// Seeding the embedded API server failed.
    #[error("cannot seed node {0}")]
    Seed(String, #[source] kube::Error),
    /// The informer refused a handler.
    #[error("cannot register the event handler")]
    Informer(#[source] reflex::informer::InformerError),
    /// The signal handlers could not be installed.
    #[error("cannot install the Ctrl-C handler")]
    Signal(#[source] std::io::Error),
}

/// The columns printed for one node.
#[derive(Debug, PartialEq)]
struct Row {
    name: String,
    ready: String,
    version: String,
    cpu: String,
    memory: String,
}

impl Row {
    fn of(node: &Node) -> Row {
        let status = node.status.as_ref();
        let capacity = |res: &str| {
            status
                .and_then(|s| s.capacity.as_ref()?.get(res))
                .map_or_else(|| "-".to_string(), |q| q.0.clone())
        };
        let ready = status
            .and_then(|s| s.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready"))
            .map_or("Unknown", |c| {
                if c.status == "True" {
                    "Ready"
                } else {
                    "NotReady"
                }
            });
        let unschedulable = node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        Row {
            name: node.metadata.name.clone().unwrap_or_default(),
            ready: if unschedulable {
                format!("{ready},SchedulingDisabled")
            } else {
                ready.to_string()
            },
            version: status
                .and_then(|s| s.node_info.as_ref())
                .map_or_else(|| "-".to_string(), |i| i.kubelet_version.clone()),
            cpu: capacity("cpu"),
            memory: capacity("memory"),
        }
    }

    fn line(&self) -> String {
        format!(
            "{:<24} {:<28} {:<10} {:>5} {:>12}",
            self.name, self.ready, self.version, self.cpu, self.memory
        )
    }

    /// What changed from `old` to `self`, in words.
    fn changes_from(&self, old: &Row) -> String {
        let mut out = Vec::new();
        for (what, before, after) in [
            ("status", &old.ready, &self.ready),
            ("kubelet", &old.version, &self.version),
            ("cpu", &old.cpu, &self.cpu),
            ("memory", &old.memory, &self.memory),
        ] {
            if before != after {
                out.push(format!("{what} {before} -> {after}"));
            }
        }
        if out.is_empty() {
            "no visible change".into()
        } else {
            out.join(", ")
        }
    }
}

fn header() -> String {
    format!(
        "{:<24} {:<28} {:<10} {:>5} {:>12}",
        "NAME", "STATUS", "VERSION", "CPU", "MEMORY"
    )
}

fn node(name: &str, role: &str) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {
            format!("node-role.kubernetes.io/{role}"): "",
            "kubernetes.io/os": "linux",
            "topology.kubernetes.io/zone": "eu-west-1a"
        }},
        "spec": {"podCIDR": "10.244.0.0/24"}
    }))
    .expect("a literal node is a valid Node")
}

async fn set_status(
    api: &Api<Node>,
    name: &str,
    version: &str,
    cpu: &str,
    memory: &str,
    ready: bool,
) -> Result<(), kube::Error> {
    let status = json!({"status": {
        "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
        "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                        "reason": if ready { "KubeletReady" } else { "KubeletNotReady" }}],
        "nodeInfo": {"kubeletVersion": version, "kubeProxyVersion": version,
                     "architecture": "amd64", "operatingSystem": "linux",
                     "osImage": "Ubuntu 24.04 LTS", "kernelVersion": "6.8.0",
                     "containerRuntimeVersion": "containerd://2.0.0",
                     "machineID": name, "systemUUID": name, "bootID": name}
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map(|_| ())
}

async fn seed(client: &kube::Client) -> Result<(), NodeListerError> {
    let api: Api<Node> = Api::all(client.clone());
    let nodes = [
        ("control-plane-1", "control-plane", "4", "16Gi"),
        ("worker-1", "worker", "8", "32Gi"),
        ("worker-2", "worker", "8", "32Gi"),
        ("worker-3", "worker", "16", "64Gi"),
        ("gpu-1", "worker", "32", "256Gi"),
    ];
    for (name, role, cpu, memory) in nodes {
        let failed = |e| NodeListerError::Seed(name.to_string(), e);
        api.create(&PostParams::default(), &node(name, role))
            .await
            .map_err(failed)?;
        set_status(&api, name, "v1.34.2", cpu, memory, true)
            .await
            .map_err(failed)?;
    }
    Ok(())
}

/// One step of the embedded workload; a cycle of six steps (nine changes) returns the nodes to
/// their seeded state.
async fn workload_step(client: &kube::Client, step: u64) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let cordon = |on: bool| json!({"spec": {"unschedulable": on}});
    match step % 6 {
        0 => {
            api.create(&PostParams::default(), &node("worker-4", "worker"))
                .await?;
            set_status(&api, "worker-4", "v1.35.0", "8", "32Gi", true).await
        }
        1 => set_status(&api, "worker-1", "v1.35.0", "8", "32Gi", true).await,
        2 => api
            .patch(
                "worker-2",
                &PatchParams::default(),
                &Patch::Merge(&cordon(true)),
            )
            .await
            .map(|_| ()),
        3 => set_status(&api, "worker-2", "v1.34.2", "8", "32Gi", false).await,
        4 => api
            .delete("worker-4", &DeleteParams::default())
            .await
            .map(|_| ()),
        _ => {
            api.patch(
                "worker-2",
                &PatchParams::default(),
                &Patch::Merge(&cordon(false)),
            )
            .await?;
            set_status(&api, "worker-2", "v1.34.2", "8", "32Gi", true).await?;
            set_status(&api, "worker-1", "v1.34.2", "8", "32Gi", true).await
        }
    }
}

async fn workload(client: kube::Client, interval: Duration, stop: CancellationToken) {
    let mut step = 0;
    loop {
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

async fn run(args: Args) -> Result<(), NodeListerError> {
    let shutdown = reflex::runtime::signal::shutdown_token().map_err(NodeListerError::Signal)?;
    let conn = common::connect(&args.cluster).await?;
    let client = conn.client.clone();
    if conn.is_embedded() {
        seed(&client).await?;
    }

    // One factory per process: every part of a program asking it for Nodes shares this informer.
    let factory = SharedInformerFactory::new(
        client.clone(),
        FactoryOptions {
            reflector: ReflectorOptions {
                label_selector: args.selector.clone(),
                ..ReflectorOptions::default()
            },
            ..FactoryOptions::default()
        },
    );
    let informer = factory.informer::<Node>();
    // Changes are printed by the main task, in the order the handler saw them.
    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (add_tx, update_tx) = (tx.clone(), tx.clone());
    informer
        .add_event_handler(
            handler_fn()
                .on_add(move |node: &Arc<Node>, initial| {
                    if !initial {
                        let _ = add_tx.send(format!("ADDED    {}", Row::of(node).line()));
                    }
                })
                .on_update(move |old: &Arc<Node>, new: &Arc<Node>| {
                    if old.metadata.resource_version != new.metadata.resource_version {
                        let row = Row::of(new);
                        let what = row.changes_from(&Row::of(old));
                        let _ = update_tx.send(format!("UPDATED  {:<24} {what}", row.name));
                    }
                })
                .on_delete(move |obj: &DeltaObject<Node>| {
                    let line = match obj {
                        DeltaObject::Object(node) => Row::of(node).line(),
                        DeltaObject::Tombstone(t) => format!("{} (last state unknown)", t.key),
                    };
                    let _ = tx.send(format!("DELETED  {line}"));
                }),
        )
        .map_err(NodeListerError::Informer)?;

    let stop = shutdown.child_token();
    factory.start();
    let deadline = common::deadline(args.exit_after);
    tokio::pin!(deadline);

    let synced = tokio::select! {
        synced = factory.wait_for_cache_sync(None) => synced.values().all(reflex::informer::SyncState::has_synced),
        _ = shutdown.cancelled() => false,
        _ = &mut deadline => false,
    };
    let mut seen = 0u64;
    let mut workload_task = None;
    if synced {
        let mut nodes = informer.lister().list(&Selector::default());
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut table = format!("{}\n", header());
        for node in &nodes {
            let _ = writeln!(table, "{}", Row::of(node).line());
        }
        println!(
            "{table}{} nodes in the cache at resourceVersion {}\n",
            nodes.len(),
            informer.last_sync_resource_version()
        );
        println!("         {}", header());
        if conn.is_embedded() {
            workload_task = Some(tokio::spawn(workload(
                client.clone(),
                Duration::from_millis(args.interval_ms),
                stop.clone(),
            )));
        }
        while args.exit_after_events.is_none_or(|n| seen < n) {
            tokio::select! {
                _ = shutdown.cancelled() => { println!("interrupted"); break; }
                _ = &mut deadline => break,
                line = changes.recv() => match line {
                    Some(line) => { println!("{line}"); seen += 1; }
                    None => break,
                },
            }
        }
    }
    stop.cancel();
    if let Some(task) = workload_task {
        let _ = task.await;
    }
    factory.shutdown().await;
    println!("{seen} changes seen");
    conn.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::init_tracing();
    common::exit_code(run(Args::parse()).await)
}
