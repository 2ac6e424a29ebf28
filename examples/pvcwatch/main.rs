//! Watches PersistentVolumeClaims and keeps their total claimed capacity up to date.
//!
//! The claims are read by a Reflector (list, then watch from the list's resourceVersion) into a
//! small cache of our own: the example's `ClaimTracker` is the Reflector's sink, so every add,
//! update and delete the server reports updates the total at once. Once the first list is in, a
//! NAME / STATUS / CAPACITY table is printed with the total; after that, every change prints one
//! line, and crossing `--max-claims` (default 200Gi) in either direction is called out with the
//! percentage used. Quantities are summed exactly (see `quantity.rs`); a claim whose quantity does
//! not parse is reported and left out of the total.
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

#[allow(
    dead_code,
    reason = "quantity.rs is a complete quantity type; this example uses part of it"
)]
mod quantity;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use parking_lot::Mutex;
use quantity::{Quantity, QuantityError};
use reflex::informer::fifo::{FifoError, ReflectorSink};
use reflex::informer::key::ObjectKey;
use reflex::informer::reflector::{Reflector, ReflectorOptions};
use reflex::informer::source::ListWatch;
use reflex_testing::FakeApiServer;
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
    /// Use this kubeconfig instead of the embedded fake API server.
    #[arg(long, conflicts_with = "cluster")]
    kubeconfig: Option<PathBuf>,
    /// Use the cluster found by `kube::Config::infer` (KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    cluster: bool,
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
    /// The kubeconfig could not be read or used.
    #[error("cannot use kubeconfig {0}")]
    Kubeconfig(PathBuf, #[source] kube::config::KubeconfigError),
    /// No cluster configuration was found.
    #[error("cannot infer a cluster configuration")]
    Infer(#[source] kube::config::InferConfigError),
    /// The client could not be built.
    #[error("cannot build a Kubernetes client")]
    Client(#[source] kube::Error),
    /// The embedded API server did not start.
    #[error("cannot start the embedded API server")]
    Fake(#[source] reflex_testing::FakeError),
    /// Seeding the embedded API server failed.
    #[error("cannot seed claim {0}")]
    Seed(String, #[source] kube::Error),
    /// The signal handlers could not be installed.
    #[error("cannot install the Ctrl-C handler")]
    Signal(#[source] std::io::Error),
}

/// What the tracker knows about one claim.
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

#[derive(Default)]
struct TrackerState {
    claims: BTreeMap<ObjectKey, Claim>,
    /// Keys seen so far in a relist in progress.
    relist: Option<BTreeMap<ObjectKey, Claim>>,
    synced: bool,
    over: bool,
}

/// The Reflector's sink: claims by key, the total, and the limit crossings.
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

    fn total(claims: &BTreeMap<ObjectKey, Claim>) -> Quantity {
        claims
            .values()
            .filter_map(|c| c.size.as_ref().ok())
            .copied()
            .sum()
    }

    fn usage(&self, total: Quantity) -> String {
        format!(
            "total {total} ({:.1}% of {})",
            total.percent_of(&self.max),
            self.max
        )
    }

    /// Prints one change and any limit crossing it caused.
    fn change(
        &self,
        verb: &str,
        obj: &PersistentVolumeClaim,
        removed: bool,
    ) -> Result<(), FifoError> {
        let key = ObjectKey::from_resource(obj)?;
        let claim = Claim::of(obj);
        let mut state = self.state.lock();
        if state.synced
            && self
                .stop_after
                .is_some_and(|n| self.events.load(Ordering::Relaxed) >= n)
        {
            return Ok(());
        }
        if let Err(e) = &claim.size {
            println!("! {key}: {e}; left out of the total");
        }
        let line_claim = format!(
            "{:<8} {:<36} {:<8} {:>8}",
            verb,
            key.to_string(),
            claim.phase,
            claim.raw
        );
        if removed {
            state.claims.remove(&key);
        } else {
            state.claims.insert(key, claim);
        }
        let total = Self::total(&state.claims);
        if state.synced {
            println!("{line_claim}   {}", self.usage(total));
            self.crossing(&mut state, total);
            drop(state);
            self.events.fetch_add(1, Ordering::Relaxed);
            self.changed.notify_waiters();
        }
        Ok(())
    }

    fn crossing(&self, state: &mut TrackerState, total: Quantity) {
        let over = total > self.max;
        if over != state.over {
            state.over = over;
            let pct = total.percent_of(&self.max);
            if over {
                println!(
                    ">>> ABOVE the limit: {total} claimed is {pct:.1}% of {}",
                    self.max
                );
            } else {
                println!(
                    "<<< back BELOW the limit: {total} claimed is {pct:.1}% of {}",
                    self.max
                );
            }
        }
    }

    fn table(&self) -> String {
        let state = self.state.lock();
        let mut out = format!("{:<36} {:<8} {:>10}\n", "NAME", "STATUS", "CAPACITY");
        for (key, claim) in &state.claims {
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
        let total = Self::total(&state.claims);
        let _ = write!(
            out,
            "{} claims, {}, limit {}{}",
            state.claims.len(),
            self.usage(total),
            self.max,
            if total > self.max { " (ABOVE)" } else { "" }
        );
        out
    }

    fn is_synced(&self) -> bool {
        self.state.lock().synced
    }
}

impl ReflectorSink<PersistentVolumeClaim> for ClaimTracker {
    fn add(&self, obj: Arc<PersistentVolumeClaim>) -> Result<(), FifoError> {
        self.change("ADDED", &obj, false)
    }
    fn update(&self, obj: Arc<PersistentVolumeClaim>) -> Result<(), FifoError> {
        self.change("MODIFIED", &obj, false)
    }
    fn delete(&self, obj: Arc<PersistentVolumeClaim>) -> Result<(), FifoError> {
        self.change("DELETED", &obj, true)
    }
    fn replace_begin(&self) {
        self.state.lock().relist = Some(BTreeMap::new());
    }
    fn replace_page(&self, items: Vec<Arc<PersistentVolumeClaim>>) -> Result<(), FifoError> {
        let mut state = self.state.lock();
        let relist = state.relist.get_or_insert_with(BTreeMap::new);
        for obj in items {
            let key = ObjectKey::from_resource(obj.as_ref())?;
            relist.insert(key, Claim::of(&obj));
        }
        Ok(())
    }
    fn replace_done(&self, resource_version: &str) -> Result<(), FifoError> {
        let mut state = self.state.lock();
        let claims = state.relist.take().unwrap_or_default();
        for (key, claim) in &claims {
            if let Err(e) = &claim.size {
                println!("! {key}: {e}; left out of the total");
            }
        }
        state.claims = claims;
        let total = Self::total(&state.claims);
        if state.synced {
            println!(
                "relisted at resourceVersion {resource_version}: {} claims, {}",
                state.claims.len(),
                self.usage(total)
            );
            self.crossing(&mut state, total);
        } else {
            state.synced = true;
            state.over = total > self.max;
        }
        drop(state);
        self.changed.notify_waiters();
        Ok(())
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

async fn client_for(args: &Args) -> Result<(kube::Client, Option<FakeApiServer>), PvcWatchError> {
    if let Some(path) = &args.kubeconfig {
        let kubeconfig = kube::config::Kubeconfig::read_from(path)
            .map_err(|e| PvcWatchError::Kubeconfig(path.clone(), e))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|e| PvcWatchError::Kubeconfig(path.clone(), e))?;
        return Ok((
            kube::Client::try_from(config).map_err(PvcWatchError::Client)?,
            None,
        ));
    }
    if args.cluster {
        let config = kube::Config::infer().await.map_err(PvcWatchError::Infer)?;
        return Ok((
            kube::Client::try_from(config).map_err(PvcWatchError::Client)?,
            None,
        ));
    }
    let server = FakeApiServer::start().await.map_err(PvcWatchError::Fake)?;
    let client = server.client().map_err(PvcWatchError::Fake)?;
    println!(
        "embedded API server at {} (no cluster needed; --kubeconfig or --cluster for a real one)",
        server.url()
    );
    seed(&client).await?;
    Ok((client, Some(server)))
}

async fn run(args: Args) -> Result<(), PvcWatchError> {
    let max: Quantity = args
        .max_claims
        .parse()
        .map_err(|e| PvcWatchError::MaxClaims(args.max_claims.clone(), e))?;
    let shutdown = reflex::runtime::signal::shutdown_token().map_err(PvcWatchError::Signal)?;
    let (client, server) = client_for(&args).await?;

    let api: Api<PersistentVolumeClaim> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let tracker = Arc::new(ClaimTracker::new(max, args.exit_after_events));
    let options = ReflectorOptions {
        label_selector: args.selector.clone(),
        field_selector: args.field_selector.clone(),
        ..ReflectorOptions::default()
    };
    let source: Arc<dyn ListWatch<PersistentVolumeClaim>> = Arc::new(api);
    let reflector = Reflector::new(source, tracker.clone(), options);
    let stop = shutdown.child_token();
    let reflector_task = tokio::spawn(reflector.run(stop.clone()));

    let deadline = async {
        match args.exit_after {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);

    // Wait for the first list.
    while !tracker.is_synced() {
        let changed = tracker.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if tracker.is_synced() {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = &mut deadline => break,
            _ = changed => {}
        }
    }
    let mut workload_task = None;
    if tracker.is_synced() {
        println!("{}\n", tracker.table());
        println!("watching for changes (Ctrl-C to stop)");
        if server.is_some() {
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
    let _ = reflector_task.await;
    println!(
        "{} changes seen; final state:\n{}",
        tracker.events.load(Ordering::Relaxed),
        tracker.table()
    );
    if let Some(server) = server {
        server.shutdown().await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            std::process::ExitCode::FAILURE
        }
    }
}
