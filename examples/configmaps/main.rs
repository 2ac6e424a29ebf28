//! The shortest path to a working controller: a shared ConfigMap informer, a handler printing
//! every change, and a controller whose reconcile reads the informer's lister by key.
//! `cargo run --example configmaps` runs it on an embedded fake API server, where it creates,
//! updates and deletes ConfigMaps in `default`, prints `converged` once each key's last reconcile
//! saw the server's state, and exits; `-- --cluster` runs it on the cluster of KUBECONFIG.

#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use parking_lot::Mutex;
use reflex::prelude::*;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "A ConfigMap informer, lister and controller")]
struct Args {
    #[command(flatten)]
    cluster: common::ClusterArgs,
}

/// What the reconcile reads (the cache) and writes (what it saw last, per key).
struct Ctx {
    configmaps: Lister<ConfigMap>,
    seen: Mutex<BTreeMap<ObjectKey, Option<usize>>>,
}

async fn reconcile(key: ObjectKey, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
    let keys = ctx
        .configmaps
        .get_by_key(&key)
        .map(|cm| cm.data.as_ref().map_or(0, |d| d.len()));
    match keys {
        Some(n) => println!("reconciled {key}: {n} keys"),
        None => println!("reconciled {key}: gone"),
    }
    ctx.seen.lock().insert(key, keys);
    Ok(Action::done())
}

fn name(cm: &ConfigMap) -> &str {
    cm.metadata.name.as_deref().unwrap_or("?")
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Connect(#[from] common::ConnectError),
    #[error("the informer refused a handler")]
    Informer(#[from] reflex::informer::InformerError),
    #[error("the controller failed")]
    Controller(#[from] reflex::runtime::ControllerError),
    #[error("the embedded workload failed")]
    Workload(#[from] kube::Error),
    #[error("a literal object is invalid")]
    Json(#[from] serde_json::Error),
    #[error("cannot listen for signals")]
    Signal(#[from] std::io::Error),
}

async fn run(args: Args) -> Result<(), Error> {
    let shutdown = reflex::runtime::signal::shutdown_token()?;
    let conn = common::connect(&args.cluster).await?;
    let factory = SharedInformerFactory::new(conn.client.clone(), FactoryOptions::default());
    let configmaps = factory.informer::<ConfigMap>();
    configmaps.add_event_handler(
        handler_fn()
            .on_add(|cm: &Arc<ConfigMap>, initial| {
                println!("{} {}", if initial { "listed" } else { "added" }, name(cm));
            })
            .on_update(|_, cm: &Arc<ConfigMap>| println!("updated {}", name(cm)))
            .on_delete(|cm: &DeltaObject<ConfigMap>| match cm {
                DeltaObject::Object(cm) => println!("deleted {}", name(cm)),
                DeltaObject::Tombstone(t) => println!("deleted {} (last state unknown)", t.key),
            }),
    )?;
    factory.start();
    let ctx = Arc::new(Ctx {
        configmaps: configmaps.lister(),
        seen: Mutex::default(),
    });
    let stop = shutdown.child_token();
    let controller = Controller::new(configmaps.clone())
        .workers(2)
        .options(ControllerOptions {
            name: "configmaps".into(),
            shutdown: stop.clone(),
            ..ControllerOptions::default()
        })
        .run(reconcile, default_error_policy, ctx.clone());
    let controller = tokio::spawn(controller);
    if conn.is_embedded() {
        // After the first list, so that the handler sees every change as the change it is.
        tokio::select! {
            done = async {
                configmaps.wait_for_sync().await;
                workload(&conn.client, &ctx).await
            } => done?,
            () = shutdown.cancelled() => {}
        }
        stop.cancel();
    }
    let summary = controller
        .await
        .expect("the controller task does not panic")?;
    println!(
        "{} reconciles, {} errors",
        summary.reconciles, summary.errors
    );
    factory.shutdown().await;
    conn.shutdown().await;
    Ok(())
}

/// Creates three ConfigMaps, updates one, deletes another; returns once every reconcile's last
/// view agrees with the server.
async fn workload(client: &kube::Client, ctx: &Ctx) -> Result<(), Error> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    let _ = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for name in ["red", "green", "blue"] {
        let cm = serde_json::from_value(json!({"metadata": {"name": name}, "data": {"a": "1"}}))?;
        api.create(&PostParams::default(), &cm).await?;
    }
    let patch = json!({"data": {"b": "2", "c": "3"}});
    api.patch("green", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    api.delete("blue", &DeleteParams::default()).await?;
    let want = BTreeMap::from([
        (ObjectKey::new(Some("default"), "red"), Some(1)),
        (ObjectKey::new(Some("default"), "green"), Some(3)),
        (ObjectKey::new(Some("default"), "blue"), None),
    ]);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while *ctx.seen.lock() != want {
        tick.tick().await;
    }
    println!("converged");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    common::init_tracing();
    common::exit_code(run(Args::parse()).await)
}
