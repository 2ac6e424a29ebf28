//! The harness: fake API server, seed data, the client-go peer's build, one child process per
//! contender, then the table, `results.json` and `chart.svg`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::contenders::{CONTENDERS, Contender, Runner, Workload};
use crate::objects::Gen;
use crate::protocol::{self, Outcome, ProtocolError};
use crate::{Cli, Params, STEADY_NAMESPACE, namespace, report};

/// Errors of the harness itself (a contender's failure is a row of the table, not an error).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A command-line value was not understood.
    #[error("{0}")]
    Usage(String),
    /// The tokio runtime could not be built.
    #[error("tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The fake API server failed to start or to take the seed objects.
    #[error("fake API server: {0}")]
    Fake(#[from] reflex_testing::FakeError),
    /// The client-go peer did not build while `REFLEX_REQUIRE_PEERS=1`.
    #[error("the client-go peer is required (REFLEX_REQUIRE_PEERS=1) but {0}")]
    PeerRequired(String),
    /// Writing the results failed.
    #[error("writing {path}: {source}")]
    Write {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Drawing the chart failed.
    #[error("drawing the chart: {0}")]
    Chart(String),
    /// A contender failed while `REFLEX_BENCH_STRICT=1`.
    #[error("{0} contender(s) failed")]
    Failures(usize),
}

/// One row of results.
#[derive(Debug, Clone)]
pub struct Row {
    /// The contender.
    pub contender: &'static Contender,
    /// What it produced, or why not.
    pub outcome: Result<Outcome, String>,
}

/// The sizes of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sizes {
    /// Quick mode.
    pub quick: bool,
    /// Pods in the `bench-*` namespaces.
    pub pods: usize,
    /// Number of `bench-*` namespaces.
    pub namespaces: usize,
    /// Pods in the `steady` namespace.
    pub steady_pods: usize,
    /// Steady-state updates.
    pub events: usize,
    /// Steady-state updates per second.
    pub rate: u64,
    /// Read phase length.
    pub read_ms: u64,
    /// Concurrent writes per second in the read workload.
    pub write_rate: u64,
    /// Workqueue rounds.
    pub rounds: usize,
    /// Distinct keys of the workqueue scale rows.
    pub scale_keys: usize,
    /// Rounds of the workqueue scale rows.
    pub scale_rounds: usize,
    /// Pods created in envtest's kube-apiserver for `sync-envtest`.
    pub envtest_pods: usize,
}

impl Sizes {
    fn from_cli(cli: &Cli) -> Sizes {
        let pods = cli
            .objects
            .unwrap_or(if cli.quick { 10_000 } else { 100_000 });
        let rate = cli.rate.unwrap_or(if cli.quick { 2_000 } else { 4_000 });
        Sizes {
            quick: cli.quick,
            pods,
            namespaces: 100,
            steady_pods: if cli.quick { 200 } else { 1_000 },
            events: if cli.quick { 6_000 } else { 40_000 },
            rate,
            read_ms: if cli.quick { 500 } else { 3_000 },
            write_rate: 1_000,
            rounds: if cli.quick { 3 } else { 11 },
            scale_keys: if cli.quick { 100_000 } else { 1_000_000 },
            scale_rounds: if cli.quick { 3 } else { 5 },
            envtest_pods: cli
                .envtest_objects
                .unwrap_or(if cli.quick { 1_000 } else { 10_000 }),
        }
    }
}

/// Runs the whole benchmark.
pub fn run(cli: &Cli) -> Result<(), HarnessError> {
    let mut only = Vec::new();
    for w in &cli.only {
        only.extend(Workload::parse(w).ok_or_else(|| {
            HarnessError::Usage(format!(
                "unknown workload {w:?} (sync, steady, burst, workqueue, workqueue-scale, reads, shard, sync-envtest)"
            ))
        })?);
    }
    let selected: Vec<&'static Contender> = CONTENDERS
        .iter()
        .filter(|c| only.is_empty() || only.contains(&c.workload))
        .filter(|c| {
            c.reference
                || cli.matching.is_empty()
                || cli.matching.iter().any(|m| c.name.contains(m.as_str()))
        })
        .collect();
    let sizes = Sizes::from_cli(cli);
    let target = target_dir();
    let out = cli.out.clone().unwrap_or_else(|| target.join("bench"));
    std::fs::create_dir_all(&out).map_err(|source| HarnessError::Write {
        path: out.clone(),
        source,
    })?;

    let peer = if selected.iter().any(|c| matches!(c.runner, Runner::Go(_))) {
        build_peer(&target.join("bench"))?
    } else {
        None
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(HarnessError::Runtime)?;
    let config = reflex_testing::FakeConfig {
        // Room for every steady-state update, and no watcher closed for being slow: the
        // benchmark measures how fast contenders drain, not how the server sheds them.
        history_size: sizes.events + 10_000,
        watch_buffer: sizes.events + 10_000,
        // The generated Pods name ReplicaSets that do not exist: a cluster's garbage collector
        // would delete them.
        garbage_collection: false,
        ..reflex_testing::FakeConfig::default()
    };
    // The fake serves every workload but `sync-envtest`; it is started only when one runs.
    let server = if selected.iter().any(|c| c.workload != Workload::SyncEnvtest) {
        Some(rt.block_on(reflex_testing::FakeApiServer::start_with(config))?)
    } else {
        None
    };
    let mut steady_pods = match &server {
        Some(server) => {
            let _guard = rt.enter();
            seed(server, &sizes)?
        }
        None => Vec::new(),
    };
    // The real control plane, for `sync-envtest`: Err(why) makes its rows say why not.
    let control_plane: Option<Result<reflex_testing::envtest::Environment, String>> = selected
        .iter()
        .any(|c| c.workload == Workload::SyncEnvtest)
        .then(|| {
            let env = rt.block_on(crate::envtest::start())?.ok_or_else(|| {
                "skipped: envtest's kube-apiserver and etcd are not built (scripts/envtest/run)"
                    .to_string()
            })?;
            rt.block_on(crate::envtest::seed(
                &env,
                sizes.envtest_pods,
                sizes.namespaces,
            ))?;
            Ok(env)
        });
    let params = Params {
        server: server.as_ref().map(|s| s.url()).unwrap_or_default(),
        pods: sizes.pods,
        namespaces: sizes.namespaces,
        steady_pods: sizes.steady_pods,
        events: sizes.events,
        read_ms: sizes.read_ms,
        write_rate: sizes.write_rate,
        rounds: sizes.rounds,
        scale_keys: sizes.scale_keys,
        scale_rounds: sizes.scale_rounds,
        kubeconfig: String::new(),
        relist: false,
    };

    let exe = std::env::current_exe().map_err(|source| HarnessError::Write {
        path: PathBuf::from("current_exe"),
        source,
    })?;
    let mut rows = Vec::new();
    for contender in selected {
        let mut params = params.clone();
        match contender.workload {
            // Only the fake can be told to expire its history, which forces the relist.
            Workload::Sync => params.relist = true,
            Workload::SyncEnvtest => match &control_plane {
                Some(Ok(env)) => {
                    params.kubeconfig = env.kubeconfig().display().to_string();
                    params.pods = sizes.envtest_pods;
                    params.steady_pods = 0;
                }
                Some(Err(why)) => {
                    rows.push(Row {
                        contender,
                        outcome: Err(why.clone()),
                    });
                    continue;
                }
                None => unreachable!("the control plane is started when a sync-envtest row runs"),
            },
            _ => {}
        }
        let cmd = match contender.runner {
            Runner::Rust(_) => {
                let mut cmd = Command::new(&exe);
                cmd.arg("--contender").arg(contender.id());
                cmd.args(params.to_args());
                Some(cmd)
            }
            Runner::Go(extra) => peer.as_ref().map(|bin| {
                let mut cmd = Command::new(bin);
                // The Go peer runs the burst with its steady-state code, as the Rust rows do.
                let workload = match contender.workload {
                    Workload::Burst => Workload::Steady,
                    w => w,
                };
                cmd.arg("--workload").arg(workload.name());
                cmd.args(params.to_args());
                cmd.args(extra);
                cmd.env("GOMAXPROCS", "2");
                cmd
            }),
        };
        let Some(cmd) = cmd else {
            rows.push(Row {
                contender,
                outcome: Err("skipped: Go is not installed".into()),
            });
            continue;
        };
        eprintln!("bench: {} ...", contender.id());
        let started = Instant::now();
        // What the fake sent (after any compression); envtest's server is not counted.
        let fake = server
            .as_ref()
            .filter(|_| contender.workload != Workload::SyncEnvtest);
        let sent_before = fake.map(|s| s.faults().response_bytes());
        let mut writer_error = None;
        let mut writer_took = None;
        let outcome = protocol::run_child(cmd, child_bound(&sizes), cli.verbose, || {
            if contender.workload == Workload::SyncEnvtest {
                return;
            }
            let Some(server) = &server else { return };
            if contender.workload == Workload::Sync {
                // A synced contender asks for its relist: every watch is told 410.
                server.faults().expire_history();
                return;
            }
            let rate = match contender.workload {
                Workload::Steady => Some(sizes.rate),
                Workload::Burst => Some(0),
                _ => None,
            };
            if let Some(rate) = rate {
                match rt.block_on(crate::steady::write(
                    server,
                    &mut steady_pods,
                    sizes.events,
                    rate,
                )) {
                    Ok(took) => writer_took = Some(took),
                    Err(e) => writer_error = Some(e.to_string()),
                }
            }
        });
        let outcome = match (outcome, writer_error) {
            (_, Some(e)) => Err(format!("the steady-state writer failed: {e}")),
            (Ok(mut o), None) => {
                // What the contender's requests cost on the wire (after any compression).
                if let (Some(fake), Some(before)) = (fake, sent_before) {
                    let sent = fake.faults().response_bytes() - before;
                    o.figures
                        .insert("wire_mib".into(), sent as f64 / (1024.0 * 1024.0));
                }
                // How fast the harness could write: a contender's events/s near this figure
                // was bounded by the writer (the fake server's write path), not by itself.
                if let Some(took) = writer_took {
                    o.figures.insert(
                        "writer_per_s".into(),
                        sizes.events as f64 / took.as_secs_f64().max(1e-9),
                    );
                }
                Ok(check(contender, &sizes, o))
            }
            (Err(e), None) => Err(describe(&e)),
        };
        match &outcome {
            Ok(o) => eprintln!(
                "bench: {} done in {:.1} s, peak RSS {} MiB",
                contender.id(),
                started.elapsed().as_secs_f64(),
                o.peak_rss_kib / 1024
            ),
            Err(e) => eprintln!("bench: {} FAILED: {e}", contender.id()),
        }
        rows.push(Row { contender, outcome });
    }
    if let Some(server) = server {
        rt.block_on(server.shutdown());
    }
    if let Some(Ok(env)) = control_plane
        && let Err(e) = rt.block_on(env.stop())
    {
        eprintln!("bench: stopping envtest: {e}");
    }

    let machine = report::machine();
    println!("{}", report::table(&rows, &sizes, &machine));
    let json_path = out.join("results.json");
    let doc = report::json(&rows, &sizes, &machine);
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    std::fs::write(&json_path, text).map_err(|source| HarnessError::Write {
        path: json_path.clone(),
        source,
    })?;
    let svg_path = out.join("chart.svg");
    report::chart(&rows, &sizes, &svg_path).map_err(HarnessError::Chart)?;
    eprintln!(
        "bench: wrote {} and {}",
        json_path.display(),
        svg_path.display()
    );
    let failed = rows
        .iter()
        .filter(|r| matches!(&r.outcome, Err(e) if !e.starts_with("skipped")))
        .count();
    if failed > 0 && std::env::var("REFLEX_BENCH_STRICT").as_deref() == Ok("1") {
        return Err(HarnessError::Failures(failed));
    }
    Ok(())
}

fn describe(e: &ProtocolError) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// Adds the harness's derived figures and flags a sync that did not see every Pod.
fn check(contender: &Contender, sizes: &Sizes, mut o: Outcome) -> Outcome {
    let mut mib = o.peak_rss_kib as f64 / 1024.0;
    // A contender that relisted after its sync reset its peak when it had synced and reported
    // the peak until then: the harness's reading is the relist's peak.
    if let Some(sync_peak) = o.figures.get("sync_peak_mib").copied() {
        o.figures.insert("relist_peak_mib".into(), mib);
        mib = sync_peak;
        o.peak_rss_kib = (sync_peak * 1024.0) as u64;
    }
    o.figures.insert("peak_rss_mib".into(), mib);
    if let Some(synced) = o
        .figures
        .get("synced_rss_mib")
        .copied()
        .filter(|s| *s > 0.0)
    {
        o.figures.insert("peak_over_synced".into(), mib / synced);
        if let Some(relist) = o.figures.get("relist_peak_mib").copied() {
            o.figures
                .insert("relist_peak_over_synced".into(), relist / synced);
        }
    }
    o.figures
        .insert("rss_at_result_mib".into(), o.rss_kib as f64 / 1024.0);
    if matches!(contender.workload, Workload::Sync | Workload::SyncEnvtest) {
        // Every contender lists all namespaces, the steady-state Pods included.
        let expected = if contender.workload == Workload::SyncEnvtest {
            sizes.envtest_pods
        } else {
            sizes.pods + sizes.steady_pods
        };
        o.figures.insert(
            "kib_per_object".into(),
            o.peak_rss_kib as f64 / expected.max(1) as f64,
        );
        let seen = o.figures.get("objects").copied().unwrap_or(0.0) as usize;
        if seen != expected {
            eprintln!(
                "bench: warning: {} synced {seen} Pods, expected {expected}",
                contender.id()
            );
        }
    }
    o
}

fn child_bound(sizes: &Sizes) -> Duration {
    if sizes.quick {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(900)
    }
}

/// `<target>`, found from this executable (`<target>/<profile>/examples/bench`).
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// Builds the client-go peer into `dir` when Go is present.
fn build_peer(dir: &Path) -> Result<Option<PathBuf>, HarnessError> {
    let required = std::env::var("REFLEX_REQUIRE_PEERS").as_deref() == Ok("1");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/client-go");
    let bin = dir.join("client-go-peer");
    let fail = |why: String| {
        if required {
            Err(HarnessError::PeerRequired(why))
        } else {
            eprintln!("bench: client-go columns skipped: {why}");
            Ok(None)
        }
    };
    if Command::new("go").arg("version").output().is_err() {
        return fail("Go is not installed (https://go.dev/dl or apt-get install golang)".into());
    }
    eprintln!(
        "bench: building the client-go peer (go build in {})",
        src.display()
    );
    let status = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&bin)
        .arg(".")
        .current_dir(&src)
        .status();
    match status {
        Ok(s) if s.success() => Ok(Some(bin)),
        Ok(s) => fail(format!("go build failed ({s})")),
        Err(e) => fail(format!("go build could not run: {e}")),
    }
}

/// Namespaces, the N Pods across the `bench-*` namespaces and the steady-state Pods; returns
/// the steady-state Pods as stored (the writer updates them).
fn seed(server: &reflex_testing::FakeApiServer, sizes: &Sizes) -> Result<Vec<Value>, HarnessError> {
    let started = Instant::now();
    let mut names: Vec<String> = (0..sizes.namespaces).map(namespace).collect();
    names.push(STEADY_NAMESPACE.into());
    for name in &names {
        server
            .seed(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))?;
    }
    let mut generator = Gen::new(8);
    let mut bytes = 0_usize;
    for i in 0..sizes.pods {
        let pod = generator.pod(&namespace(i % sizes.namespaces), i);
        if i < 100 {
            bytes += serde_json::to_vec(&pod).map(|v| v.len()).unwrap_or(0);
        }
        server.seed(pod)?;
    }
    let mut steady = Vec::with_capacity(sizes.steady_pods);
    for i in 0..sizes.steady_pods {
        steady.push(server.seed(generator.pod(STEADY_NAMESPACE, i))?);
    }
    eprintln!(
        "bench: seeded {} Pods (about {} bytes of JSON each) and {} steady-state Pods in {:.1} s",
        sizes.pods,
        bytes / sizes.pods.clamp(1, 100),
        sizes.steady_pods,
        started.elapsed().as_secs_f64()
    );
    Ok(steady)
}
