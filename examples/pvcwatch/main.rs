//! Watches PersistentVolumeClaims and keeps their total claimed capacity up to date.
//!
//! The claims come from a shared informer (a `SharedInformerFactory` lists them, then watches
//! from the list's resourceVersion). Once its cache has synced, a NAME / STATUS / CAPACITY table
//! is printed from the informer's lister with the total. An event handler registered on the same
//! informer keeps the total: each add, update and delete prints one line with the new total, and
//! crossing `--max-claims` (default 200Gi) in either direction is called out with the percentage
//! used. Quantities are summed exactly (see `quantity.rs`); a claim whose quantity does not parse
//! is reported and left out of the total.
//!
//! With no `--kubeconfig` and no `--cluster`, the example needs no cluster: it starts an embedded
//! fake API server, seeds it with about twenty claims and runs a small workload that creates,
//! binds, resizes and deletes claims every `--interval-ms` (500 ms), crossing the limit both ways.
//!
//! ```text
//! cargo run --example pvcwatch                                   # embedded, until Ctrl-C
//! cargo run --example pvcwatch -- --kubeconfig ~/.kube/config -n default --max-claims 1Ti
//! cargo run --example pvcwatch -- --cluster -l app=db            # kube::Config::infer
//! ```

#[allow(dead_code, reason = "shared by all examples; each uses part of it")]
#[path = "../common/mod.rs"]
mod common;
#[allow(
    dead_code,
    reason = "quantity.rs is a complete quantity type; this example uses part of it"
)]
mod quantity;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::Selector;
use parking_lot::Mutex;
use quantity::{Quantity, QuantityError};
use reflex::informer::{
    DeltaObject, FactoryOptions, ObjectKey, ReflectorOptions, ResourceEventHandler,
    SharedInformerFactory,
};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Command line of pvcwatch.
#[derive(Debug, Parser)]
#[command(
    name = "pvcwatch",
    about = "Total claimed PVC capacity, kept up to date, with a limit"
)]
struct Args {
    /// Only claims in this namespace (default: all namespaces).
    #[arg(short, long)]
    namespace: Option<String>,
    /// Label selector, e.g. `app=db,tier!=cache`.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Field selector, e.g. `metadata.name=data-0`.
    #[arg(long)]
    field_selector: Option<String>,
    /// The limit on the total claimed capacity.
    #[arg(long, default_value = "200Gi")]
    max_claims: String,
    #[command(flatten)]
    cluster: common::ClusterArgs,
    /// Embedded mode: milliseconds between two steps of the workload.
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
    /// Exit after this many changes were seen after the first list.
    #[arg(long)]
    exit_after_events: Option<u64>,
    /// Exit after this many seconds.
    #[arg(long)]
    exit_after: Option<u64>,
}

/// Why pvcwatch could not run.
#[derive(Debug, thiserror::Error)]
enum PvcWatchError {
    /// `--max-claims` is not a quantity.
    #[error("--max-claims {0:?} is not a quantity")]
    MaxClaims(String, #[source] QuantityError),
    /// No API server could be reached.
    #[error(transparent)]
    Connect(#[from] common::ConnectError),
    /// Seeding the embedded API server failed.
    #[error("cannot seed claim {0}")]
    Seed(String, #[source] kube::Error),
    /// The informer refused the event handler.
    #[error("cannot register the event handler")]
    Informer(#[source] reflex::informer::InformerError),
    /// The signal handlers could not be installed.
    #[error("cannot install the Ctrl-C handler")]
    Signal(#[source] std::io::Error),
}

/// What pvcwatch knows about one claim.
struct Claim {
    phase: String,
    size: Result<Quantity, QuantityError>,
    raw: String,
}

impl Claim {
    fn of(pvc: &PersistentVolumeClaim) -> Claim {
        let phase = pvc
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Pending".into());
        // The capacity a claim holds: what the volume gave it once bound, else what it asks for.
        let bound = pvc
            .status
            .as_ref()
            .and_then(|s| s.capacity.as_ref()?.get("storage"));
        let requested = pvc
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref()?.requests.as_ref()?.get("storage"));
        let raw = bound.or(requested).map(|q| q.0.clone());
        let size = match &raw {
            Some(text) => text.parse(),
            None => Ok(Quantity::default()),
        };
        Claim {
            phase,
            size,
            raw: raw.unwrap_or_else(|| "-".into()),
        }
    }
}

/// The sum of the claims whose quantity parses.
fn total<'a>(claims: impl Iterator<Item = &'a Claim>) -> Quantity {
    claims.filter_map(|c| c.size.as_ref().ok()).copied().sum()
}

/// `NAME STATUS CAPACITY` rows and the summary line.
fn table<'a>(claims: impl Iterator<Item = (&'a ObjectKey, &'a Claim)>, max: Quantity) -> String {
    let mut out = format!("{:<36} {:<8} {:>10}\n", "NAME", "STATUS", "CAPACITY");
    let claims: Vec<_> = claims.collect();
    let count = claims.len();
    let sum = total(claims.iter().map(|(_, c)| *c));
    for (key, claim) in claims {
        let size = match &claim.size {
            Ok(_) => claim.raw.clone(),
            Err(_) => format!("{} (malformed)", claim.raw),
        };
        let _ = writeln!(
            out,
            "{:<36} {:<8} {:>10}",
            key.to_string(),
            claim.phase,
            size
        );
    }
    let _ = write!(
        out,
        "{count} claims, {}, limit {max}{}",
        usage(sum, max),
        if sum > max { " (ABOVE)" } else { "" }
    );
    out
}

fn usage(total: Quantity, max: Quantity) -> String {
    format!("total {total} ({:.1}% of {max})", total.percent_of(&max))
}

#[derive(Default)]
struct TrackerState {
    /// The claims as this handler's notifications describe them.
    claims: BTreeMap<ObjectKey, Claim>,
    /// Whether the initial list has been handled (changes are printed from then on).
    live: bool,
    over: bool,
}

/// An event handler on the claims informer: the running total and the limit crossings.
struct ClaimTracker {
    max: Quantity,
    /// With `--exit-after-events`: changes past this many are neither applied nor printed, so
    /// the final table shows exactly the state after the last change reported.
    stop_after: Option<u64>,
    state: Mutex<TrackerState>,
    events: AtomicU64,
    changed: Notify,
}

impl ClaimTracker {
    fn new(max: Quantity, stop_after: Option<u64>) -> Self {
        ClaimTracker {
            max,
            stop_after,
            state: Mutex::new(TrackerState::default()),
            events: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    /// From now on every change is printed and counted; the current total sets the side of the
    /// limit we are on.
    fn go_live(&self) {
        let mut state = self.state.lock();
        state.live = true;
        state.over = total(state.claims.values()) > self.max;
    }

    /// Applies one change (`claim` is the new state, or the last one when `removed`), and once
    /// live prints it with any limit crossing it caused.
    fn change(&self, verb: &str, key: ObjectKey, claim: Claim, removed: bool) {
        let mut state = self.state.lock();
        if state.live
            && self
                .stop_after
                .is_some_and(|n| self.events.load(Ordering::Relaxed) >= n)
        {
            return;
        }
        let line = format!(
            "{:<8} {:<36} {:<8} {:>8}",
            verb,
            key.to_string(),
            claim.phase,
            claim.raw
        );
        if state.live
            && !removed
            && let Err(e) = &claim.size
        {
            println!("! {key}: {e}; left out of the total");
        }
        if removed {
            state.claims.remove(&key);
        } else {
            state.claims.insert(key, claim);
        }
        if !state.live {
            return;
        }
        let sum = total(state.claims.values());
        println!("{line}   {}", usage(sum, self.max));
        let over = sum > self.max;
        if over != state.over {
            state.over = over;
            let pct = sum.percent_of(&self.max);
            if over {
                println!(
                    ">>> ABOVE the limit: {sum} claimed is {pct:.1}% of {}",
                    self.max
                );
            } else {
                println!(
                    "<<< back BELOW the limit: {sum} claimed is {pct:.1}% of {}",
                    self.max
                );
            }
        }
        drop(state);
        self.events.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    fn table(&self) -> String {
        let state = self.state.lock();
        table(state.claims.iter(), self.max)
    }
}

impl ResourceEventHandler<PersistentVolumeClaim> for ClaimTracker {
    fn on_add(&self, obj: &Arc<PersistentVolumeClaim>, _: bool) {
        match ObjectKey::from_resource(obj.as_ref()) {
            Ok(key) => self.change("ADDED", key, Claim::of(obj), false),
            Err(error) => tracing::warn!(%error, "claim without a key"),
        }
    }

    fn on_update(&self, old: &Arc<PersistentVolumeClaim>, new: &Arc<PersistentVolumeClaim>) {
        // A resync or an unchanged object seen again by a relist: nothing to report.
        if old.metadata.resource_version == new.metadata.resource_version {
            return;
        }
        match ObjectKey::from_resource(new.as_ref()) {
            Ok(key) => self.change("MODIFIED", key, Claim::of(new), false),
            Err(error) => tracing::warn!(%error, "claim without a key"),
        }
    }

    fn on_delete(&self, obj: &DeltaObject<PersistentVolumeClaim>) {
        let key = match obj {
            DeltaObject::Object(o) => ObjectKey::from_resource(o.as_ref()),
            DeltaObject::Tombstone(t) => Ok(t.key.clone()),
        };
        // A tombstone may carry no last state: then there is nothing to show but the key.
        let last = obj.object().map_or(
            Claim {
                phase: "-".into(),
                size: Ok(Quantity::default()),
                raw: "-".into(),
            },
            |o| Claim::of(o),
        );
        match key {
            Ok(key) => self.change("DELETED", key, last, true),
            Err(error) => tracing::warn!(%error, "claim without a key"),
        }
    }
}

fn claim(namespace: &str, name: &str, size: &str, app: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "standard",
            "resources": {"requests": {"storage": size}}
        }
    }))
    .expect("a literal claim is a valid PersistentVolumeClaim")
}

async fn bind(api: &Api<PersistentVolumeClaim>, name: &str, size: &str) -> Result<(), kube::Error> {
    let status = json!({"status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": size}}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map(|_| ())
}

/// About twenty claims over three namespaces (156Gi counted), one of them malformed.
async fn seed(client: &kube::Client) -> Result<(), PvcWatchError> {
    let mut seeds = Vec::new();
    for i in 0..6 {
        seeds.push((
            "shop",
            format!("postgres-data-{i}"),
            "10Gi",
            "postgres",
            true,
        ));
    }
    for i in 0..5 {
        seeds.push(("shop", format!("redis-{i}"), "2Gi", "redis", true));
    }
    for i in 0..4 {
        seeds.push((
            "monitoring",
            format!("prometheus-{i}"),
            "15Gi",
            "prometheus",
            true,
        ));
    }
    seeds.push(("monitoring", "grafana".into(), "5Gi", "grafana", true));
    seeds.push(("team-a", "build-cache".into(), "10Gi", "ci", true));
    seeds.push(("team-a", "artifacts".into(), "10Gi", "ci", false));
    seeds.push(("team-a", "scratch-0".into(), "1Gi", "ci", false));
    // Not a Kubernetes quantity ("Gb" is no suffix): reported and skipped.
    seeds.push(("team-a", "legacy-export".into(), "12Gb", "legacy", false));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for namespace in ["shop", "monitoring", "team-a"] {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}}))
            .expect("a literal namespace is a valid Namespace");
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .map_err(|e| PvcWatchError::Seed(format!("namespace {namespace}"), e))?;
    }
    for (namespace, name, size, app, bound) in seeds {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
        api.create(&PostParams::default(), &claim(namespace, &name, size, app))
            .await
            .map_err(|e| PvcWatchError::Seed(format!("{namespace}/{name}"), e))?;
        if bound {
            bind(&api, &name, size)
                .await
                .map_err(|e| PvcWatchError::Seed(format!("{namespace}/{name}"), e))?;
        }
    }
    Ok(())
}

/// One step of the embedded workload; seven steps (seven changes) make a cycle that crosses 200Gi up and down.
async fn workload_step(client: &kube::Client, step: u64) -> Result<(), kube::Error> {
    let team: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "team-a");
    let shop: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "shop");
    match step % 7 {
        0 => team
            .create(
                &PostParams::default(),
                &claim("team-a", "burst-a", "20Gi", "batch"),
            )
            .await
            .map(|_| ()),
        1 => bind(&team, "burst-a", "20Gi").await,
        2 => team
            .create(
                &PostParams::default(),
                &claim("team-a", "burst-b", "15Gi", "batch"),
            )
            .await
            .map(|_| ()),
        // The volume was expanded: the claim's bound capacity grows.
        3 => bind(&shop, "postgres-data-0", "25Gi").await,
        4 => team
            .delete("burst-a", &DeleteParams::default())
            .await
            .map(|_| ()),
        5 => team
            .delete("burst-b", &DeleteParams::default())
            .await
            .map(|_| ()),
        _ => bind(&shop, "postgres-data-0", "10Gi").await,
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

async fn run(args: Args) -> Result<(), PvcWatchError> {
    let max: Quantity = args
        .max_claims
        .parse()
        .map_err(|e| PvcWatchError::MaxClaims(args.max_claims.clone(), e))?;
    let shutdown = reflex::runtime::signal::shutdown_token().map_err(PvcWatchError::Signal)?;
    let conn = common::connect(&args.cluster).await?;
    let client = conn.client.clone();
    if conn.is_embedded() {
        seed(&client).await?;
    }

    // The namespace and selectors become the informer's list and watch options.
    let factory = SharedInformerFactory::new(
        client.clone(),
        FactoryOptions {
            namespace: args.namespace.clone(),
            reflector: ReflectorOptions {
                label_selector: args.selector.clone(),
                field_selector: args.field_selector.clone(),
                ..ReflectorOptions::default()
            },
            ..FactoryOptions::default()
        },
    );
    let claims = factory.informer::<PersistentVolumeClaim>();
    let tracker = Arc::new(ClaimTracker::new(max, args.exit_after_events));
    let registration = claims
        .add_event_handler(tracker.clone())
        .map_err(PvcWatchError::Informer)?;
    factory.start();

    let deadline = common::deadline(args.exit_after);
    tokio::pin!(deadline);

    // The handler has seen the whole initial list once its registration has synced.
    let synced = tokio::select! {
        synced = registration.wait_for_sync() => synced,
        _ = shutdown.cancelled() => false,
        _ = &mut deadline => false,
    };
    let stop = shutdown.child_token();
    let mut workload_task = None;
    if synced {
        tracker.go_live();
        // The first table comes from the informer's cache, through its lister.
        let cached: BTreeMap<ObjectKey, Claim> = claims
            .lister()
            .list(&Selector::default())
            .iter()
            .filter_map(|pvc| Some((ObjectKey::from_resource(pvc.as_ref()).ok()?, Claim::of(pvc))))
            .collect();
        for (key, claim) in &cached {
            if let Err(e) = &claim.size {
                println!("! {key}: {e}; left out of the total");
            }
        }
        println!("{}\n", table(cached.iter(), max));
        println!("watching for changes (Ctrl-C to stop)");
        if conn.is_embedded() {
            workload_task = Some(tokio::spawn(workload(
                client.clone(),
                Duration::from_millis(args.interval_ms),
                stop.clone(),
            )));
        }
        loop {
            let changed = tracker.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if args
                .exit_after_events
                .is_some_and(|n| tracker.events.load(Ordering::Relaxed) >= n)
            {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => { println!("interrupted"); break; }
                _ = &mut deadline => break,
                _ = changed => {}
            }
        }
    }
    stop.cancel();
    if let Some(task) = workload_task {
        let _ = task.await;
    }
    factory.shutdown().await;
    println!(
        "{} changes seen; final state:\n{}",
        tracker.events.load(Ordering::Relaxed),
        tracker.table()
    );
    conn.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::init_tracing();
    common::exit_code(run(Args::parse()).await)
}
