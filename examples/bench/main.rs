//! Side-by-side benchmarks: Reflex against kube-runtime and client-go on the same data, in the
//! same run.
//!
//! ```text
//! cargo run --release --example bench -- [--quick] [--objects N] [--only WORKLOAD] [--match TEXT] [--out DIR]
//! ```
//!
//! The harness starts a [`reflex_testing::FakeApiServer`] in its own process, seeds it with N
//! generated Pods (realistic JSON of about 5 KB each, with managedFields, labels and owner
//! references), and runs every contender of [`contenders::CONTENDERS`] in a child process of its
//! own: this binary re-executed with a hidden `--contender` flag for the Rust contenders, the Go
//! program in `benches/peers/client-go` for client-go. Each child reports its figures on stdout
//! and waits; the harness reads its peak resident set (`VmHWM`) from `/proc`, the same way for
//! every contender (see [`protocol`]). One table goes to stdout; `results.json` and `chart.svg`
//! go to `--out` (default `<target>/bench/`).
//!
//! Workloads (`--only`): `sync` (initial sync of N Pods; with the floors: the server serving the
//! list to a client that discards it, and plain serde_json decoding; Reflex's rows then relist
//! once, forced by a 410, and report the relist's time and peak against the synced resident set), `steady` (updates written
//! at `--rate` per second, each carrying its write time, to an informer with 4 handlers
//! enqueueing into a rate-limited queue: latency), `burst` (the same, written as fast as the
//! server takes them: events per second sustained), `workqueue` (add/get/done over 10k keys with 50%
//! duplicates; `--only workqueue` also runs `workqueue-scale`: the same over 1M keys at 8 and
//! 1,000 workers), `reads` (get and list-by-namespace with a concurrent writer), `shard` (sharded
//! controllers: one replica of three beside one that holds everything, and the hand-off of a
//! third when a replica leaves), `sync-envtest` (the initial sync against a real kube-apiserver
//! and etcd from reflex-testing's envtest, Pods created through the API: Reflex, kube-runtime,
//! client-go with JSON and with protobuf, and decode floors of the same pages in JSON and in
//! protobuf; skipped when the control plane is not built, see [`envtest`]).
//!
//! No figure is asserted: CI runs `--quick` so the harness cannot rot.

mod contenders;
mod envtest;
mod harness;
mod protocol;
mod queue;
mod reads;
mod report;
mod shard;
mod steady;
mod sync;

#[path = "../../informer/tests/support/objects.rs"]
mod objects;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Command line of the harness (and, hidden, of a contender child).
#[derive(Debug, Parser)]
#[command(about = "Reflex side by side with kube-runtime and client-go")]
pub struct Cli {
    /// Quick mode: 10k Pods and short phases (the default is 100k Pods).
    #[arg(long)]
    quick: bool,
    /// Number of Pods for the initial sync and the cache reads.
    #[arg(long)]
    objects: Option<usize>,
    /// Run only this workload: sync, steady, burst, workqueue (with workqueue-scale),
    /// workqueue-scale, reads, shard or sync-envtest (repeatable).
    #[arg(long)]
    only: Vec<String>,
    /// Run only the contenders whose name contains this text, and each workload's reference
    /// row (repeatable; `--only` still picks the workloads).
    #[arg(long = "match")]
    matching: Vec<String>,
    /// Where results.json and chart.svg go (default: <target>/bench).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Updates per second written in the steady-state workload.
    #[arg(long)]
    rate: Option<u64>,
    /// Pods created in envtest's kube-apiserver for `sync-envtest` (default 10,000; 1,000 quick).
    #[arg(long)]
    envtest_objects: Option<usize>,
    /// Show the children's stderr and stray output.
    #[arg(long)]
    verbose: bool,
    /// Hidden: run one contender (`workload/name`) in this process.
    #[arg(long, hide = true)]
    contender: Option<String>,
    /// Hidden: the parameters of the contender.
    #[command(flatten)]
    params: Params,
}

/// What every contender is told, as flags (the Go peer takes the same ones).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct Params {
    /// Fake API server URL.
    #[arg(long, hide = true, default_value = "")]
    pub server: String,
    /// Pods across the `bench-*` namespaces.
    #[arg(long = "pods", hide = true, default_value_t = 0)]
    pub pods: usize,
    /// Number of `bench-*` namespaces.
    #[arg(long, hide = true, default_value_t = 0)]
    pub namespaces: usize,
    /// Pods in the `steady` namespace.
    #[arg(long, hide = true, default_value_t = 0)]
    pub steady_pods: usize,
    /// Updates the steady-state writer makes.
    #[arg(long, hide = true, default_value_t = 0)]
    pub events: usize,
    /// Milliseconds each read phase runs.
    #[arg(long, hide = true, default_value_t = 0)]
    pub read_ms: u64,
    /// Writes per second of the concurrent writer of the read workload.
    #[arg(long, hide = true, default_value_t = 0)]
    pub write_rate: u64,
    /// Rounds of the workqueue workload (the median counts).
    #[arg(long, hide = true, default_value_t = 0)]
    pub rounds: usize,
    /// Distinct keys of the workqueue scale rows.
    #[arg(long, hide = true, default_value_t = 0)]
    pub scale_keys: usize,
    /// Rounds of the workqueue scale rows (the median counts).
    #[arg(long, hide = true, default_value_t = 0)]
    pub scale_rounds: usize,
    /// Kubeconfig of a real API server (the `sync-envtest` workload); `server` is then unused.
    #[arg(long, hide = true, default_value = "")]
    pub kubeconfig: String,
    /// Whether a sync contender, once synced, asks for and times a relist (the fake can force
    /// one; a real server cannot be told to).
    #[arg(long, hide = true, default_value_t = false, action = clap::ArgAction::Set)]
    pub relist: bool,
}

impl Params {
    /// The flags that pass these parameters to a child.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--server".into(),
            self.server.clone(),
            "--pods".into(),
            self.pods.to_string(),
            "--namespaces".into(),
            self.namespaces.to_string(),
            "--steady-pods".into(),
            self.steady_pods.to_string(),
            "--events".into(),
            self.events.to_string(),
            "--read-ms".into(),
            self.read_ms.to_string(),
            "--write-rate".into(),
            self.write_rate.to_string(),
            "--rounds".into(),
            self.rounds.to_string(),
            "--scale-keys".into(),
            self.scale_keys.to_string(),
            "--scale-rounds".into(),
            self.scale_rounds.to_string(),
            "--kubeconfig".into(),
            self.kubeconfig.clone(),
            format!("--relist={}", self.relist),
        ]
    }
}

/// The namespace of the steady-state workload's Pods.
pub const STEADY_NAMESPACE: &str = "steady";
/// Annotation carrying the write time (Unix nanoseconds) of a steady-state update.
pub const WRITTEN_AT: &str = "bench.reflex.dev/written-at";
/// Annotation carrying the sequence number of a steady-state update.
pub const SEQ: &str = "bench.reflex.dev/seq";

/// The name of the i-th `bench-*` namespace.
pub fn namespace(i: usize) -> String {
    format!("bench-{i:03}")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `RUST_LOG=reflex_informer=debug` (say) shows what a contender or the server is doing.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if let Some(id) = &cli.contender {
        return child(id, cli.params.clone());
    }
    match harness::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

/// Child mode: runs one Rust contender and reports through [`protocol`].
fn child(id: &str, params: Params) -> ExitCode {
    let Some(contender) = contenders::find(id) else {
        protocol::report(Err(format!("unknown contender {id:?}")));
        return ExitCode::FAILURE;
    };
    let contenders::Runner::Rust(run) = contender.runner else {
        protocol::report(Err(format!("{id:?} is not a Rust contender")));
        return ExitCode::FAILURE;
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            protocol::report(Err(format!("tokio runtime: {e}")));
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(params)) {
        Ok((figures, keep)) => {
            protocol::report(Ok(figures));
            rt.block_on(async move { drop(keep) });
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            ExitCode::SUCCESS
        }
        Err(e) => {
            protocol::report(Err(e));
            ExitCode::FAILURE
        }
    }
}
