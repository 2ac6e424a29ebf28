//! Resident memory per cached object, and lister `get` latency, in each way an informer can keep
//! Pods: run one mode per process so the figures do not mix.
//!
//! ```text
//! cargo run --release -p reflex-informer --example store_memory -- <mode> [pods]
//! ```
//!
//! `<mode>` is one of `typed` (typed Pods, managedFields skipped while parsing: the factory's
//! `informer::<Pod>()`), `typed-keep` (managedFields kept: `FactoryOptions::decode =
//! DecodeOptions::full()`), `projected` (`informer::<PodPlacement>()`), `metadata`
//! (`InformerSpec::<PartialObjectMeta<Pod>>::metadata()`), `metadata-lean` (metadata-only, also skipping the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation through `FactoryOptions::decode`),
//! `metadata-compact` (metadata-only objects in a compact store: the factory's
//! `InformerSpec::metadata().compact()`), `compact` (`InformerSpec::typed().compact()`, LZ4) and
//! `compact-json` (compact without compression). `[pods]` defaults to 10,000.
//!
//! The program first generates realistic Pods (labels, annotations, owner references,
//! containers, status and managedFields, about 5 KB of JSON each) as list pages of 500 (as the
//! reflector lists), on another thread so that the generator's allocations stay out of the
//! allocator arena the store uses. Then it decodes each page the way the mode's informer does
//! and stores the objects in the mode's `Indexer`, dropping each decoded page before the next.
//! It reads `VmRSS` from `/proc/self/status` before the first page and after the last, and
//! prints the difference per Pod; then it reads 100,000 random keys through a `Lister` and prints the latency percentiles.
//! A metadata-only informer receives `PartialObjectMetadata` from the server; decoding the full
//! JSON into `PartialObjectMeta<Pod>` keeps the same objects, so the resident figure is the same.

#[path = "../tests/support/objects.rs"]
mod objects;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PartialObjectMeta;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reflex_informer::decode::{DecodeOptions, Decoder, SkipPath};
use reflex_informer::key::ObjectKey;
use reflex_informer::lister::Lister;
use reflex_informer::store::{CompactOptions, Indexer};
use serde::de::DeserializeOwned;

const PAGE: usize = 500;
const READS: usize = 100_000;

/// What a scheduler-like controller reads of a Pod.
#[derive(Debug, Clone, serde::Deserialize)]
#[allow(dead_code)]
struct PodPlacement {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: PlacementSpec,
    #[serde(default)]
    status: PlacementStatus,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[allow(dead_code)]
struct PlacementSpec {
    #[serde(rename = "nodeName")]
    node_name: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[allow(dead_code)]
struct PlacementStatus {
    phase: Option<String>,
}

reflex_informer::impl_projection!(PodPlacement => Pod);

/// This process's resident set size in bytes, from `/proc/self/status`.
fn vm_rss() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS line in /proc/self/status")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("unparsable VmRSS line {line:?}"))?;
    Ok(kib * 1024)
}

struct Figures {
    json_bytes: usize,
    rss_before: u64,
    rss_after: u64,
    build: Duration,
    keys: Vec<ObjectKey>,
}

/// Generates `pods` Pods page by page, decodes each page into `K` with `decoder` and stores
/// the objects in `store`.
fn build<K>(pods: usize, decoder: &Decoder, store: &Indexer<K>) -> Result<Figures, String>
where
    K: kube::Resource + DeserializeOwned + Send + Sync + 'static,
{
    // The JSON is generated up front, outside the measured span and on another thread (so in
    // another allocator arena): in an informer it arrives over the network, and neither the
    // generator's temporary allocations nor the memory they free may mix with the store's.
    let bodies: Vec<Vec<u8>> = std::thread::spawn(move || {
        let mut generator = objects::Gen::new(42);
        (0..pods)
            .step_by(PAGE)
            .map(|first| {
                let items: Vec<_> = (first..(first + PAGE).min(pods))
                    .map(|i| generator.pod(&format!("ns-{}", i % 50), i))
                    .collect();
                objects::list_json("PodList", "1", &items)
            })
            .collect()
    })
    .join()
    .map_err(|_| "the generator thread panicked")?;
    let json_bytes = bodies.iter().map(Vec::len).sum();
    let mut keys = Vec::with_capacity(pods);
    let rss_before = vm_rss()?;
    let started = Instant::now();
    for body in &bodies {
        let page = decoder
            .decode_list::<K>(body)
            .map_err(|e| format!("decoding a page: {e}"))?;
        for obj in page.items {
            keys.push(store.key_of(&obj).map_err(|e| e.to_string())?);
            store.add(obj).map_err(|e| e.to_string())?;
        }
    }
    let build = started.elapsed();
    // The keys vector is the program's, not the store's.
    let rss_after = vm_rss()? - (keys.capacity() * std::mem::size_of::<ObjectKey>()) as u64;
    Ok(Figures {
        json_bytes,
        rss_before,
        rss_after,
        build,
        keys,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn report<K>(mode: &str, pods: usize, decoder: &Decoder, store: Indexer<K>) -> Result<(), String>
where
    K: kube::Resource + DeserializeOwned + Send + Sync + 'static,
{
    let figures = build(pods, decoder, &store)?;
    let per_pod = figures.rss_after.saturating_sub(figures.rss_before) as f64 / pods as f64;
    let lister = Lister::new(store.clone());
    let mut rng = StdRng::seed_from_u64(7);
    let mut latencies = Vec::with_capacity(READS);
    for _ in 0..READS {
        let key = &figures.keys[rng.random_range(0..figures.keys.len())];
        let t = Instant::now();
        let got = lister.get_by_key(key);
        latencies.push(t.elapsed());
        if got.is_none() {
            return Err(format!("{key} missing from the store"));
        }
    }
    latencies.sort_unstable();
    println!(
        "mode={mode} pods={pods} json_bytes_per_pod={} resident_bytes_per_pod={per_pod:.0} \
         resident_kib_per_pod={:.2} packed_bytes_per_pod={} build_pods_per_s={:.0} \
         get_p50_us={:.1} get_p99_us={:.1} get_max_us={:.1}",
        figures.json_bytes / pods,
        per_pod / 1024.0,
        store.packed_bytes() / pods,
        pods as f64 / figures.build.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e6,
        percentile(&latencies, 0.99).as_secs_f64() * 1e6,
        latencies[latencies.len() - 1].as_secs_f64() * 1e6,
    );
    Ok(())
}

fn run(mode: &str, pods: usize) -> Result<(), String> {
    let skip = Decoder::default();
    match mode {
        "typed" => report(mode, pods, &skip, Indexer::<Pod>::new()),
        "typed-keep" => report(
            mode,
            pods,
            &Decoder::new(&DecodeOptions::full()),
            Indexer::<Pod>::new(),
        ),
        "projected" => report(mode, pods, &skip, Indexer::<PodPlacement>::new()),
        "metadata" => report(mode, pods, &skip, Indexer::<PartialObjectMeta<Pod>>::new()),
        "metadata-lean" => report(
            mode,
            pods,
            &Decoder::new(
                &DecodeOptions::default().skip(
                    SkipPath::pointer(
                        "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration",
                    )
                    .map_err(|e| e.to_string())?,
                ),
            ),
            Indexer::<PartialObjectMeta<Pod>>::new(),
        ),
        "metadata-compact" => report(
            mode,
            pods,
            &skip,
            Indexer::<PartialObjectMeta<Pod>>::compact(CompactOptions::default()),
        ),
        "compact" => report(
            mode,
            pods,
            &skip,
            Indexer::<Pod>::compact(CompactOptions::default()),
        ),
        "compact-json" => report(
            mode,
            pods,
            &skip,
            Indexer::<Pod>::compact(CompactOptions {
                compress: false,
                ..CompactOptions::default()
            }),
        ),
        other => Err(format!(
            "unknown mode {other:?}: typed, typed-keep, projected, metadata, metadata-lean, \
             metadata-compact, compact, compact-json"
        )),
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(mode) = args.next() else {
        eprintln!("usage: store_memory <mode> [pods]");
        return ExitCode::from(2);
    };
    let pods = match args.next().map(|n| n.parse::<usize>()) {
        None => 10_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("pods must be a positive number");
            return ExitCode::from(2);
        }
    };
    match run(&mode, pods) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("store_memory: {e}");
            ExitCode::FAILURE
        }
    }
}
