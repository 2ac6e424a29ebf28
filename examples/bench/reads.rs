//! Cache reads with a concurrent writer: the contender lists the N Pods once from the server
//! (serde_json, full objects, the same data for every contender) and, for each store size (10k
//! Pods, every (N/10k)-th of the list so that all namespaces stay represented, and all N when N
//! is larger), fills a store and starts a writer thread updating its Pods at `write_rate` per
//! second. Meanwhile the reader runs [`ROUNDS`] rounds, each a phase of point gets then a
//! phase of lists by namespace, `read_ms / ROUNDS` each; a figure is the median of its rounds.
//! Figures: `get_per_s`, `list_ns_per_s` (all N Pods), the same with `_10k` (the 10k store,
//! only when N is larger), Reflex's `reader_get_per_s` (a [`Reader`], which lends the object
//! instead of cloning its `Arc`, as client-go's `GetByKey` hands out a pointer), and `writes`
//! (updates the writers made).
//!
//! [`Reader`]: reflex_informer::store::Reader

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::core::ObjectList;

use crate::Params;
use crate::contenders::{Keep, Run};
use crate::protocol::Figures;
use crate::sync::{Body, get};

async fn list_pods(server: &str) -> Result<Vec<Pod>, String> {
    let got = get(server, "/api/v1/pods", Body::Keep).await?;
    let list: ObjectList<Pod> =
        serde_json::from_slice(&got.body).map_err(|e| format!("decoding the list: {e}"))?;
    Ok(list.items)
}

/// A writer thread that, until stopped, replaces `pods[i]` (round robin) with a copy carrying a
/// new resourceVersion through `write`, at `rate` per second.
struct Writer {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(pods: Vec<Arc<Pod>>, rate: u64, mut write: impl FnMut(Pod) + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let (s, w) = (stop.clone(), writes.clone());
        let thread = std::thread::spawn(move || {
            let per_tick = (rate / 100).max(1);
            let tick = Duration::from_secs_f64(per_tick as f64 / rate.max(1) as f64);
            let mut next = Instant::now();
            let mut i = 0_usize;
            while !s.load(Ordering::Relaxed) && !pods.is_empty() {
                for _ in 0..per_tick {
                    let mut pod = Pod::clone(&pods[i % pods.len()]);
                    pod.metadata.resource_version = Some(format!("w{i}"));
                    write(pod);
                    w.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                next += tick;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        });
        Writer {
            stop,
            writes,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.writes.load(Ordering::Relaxed)
    }
}

/// Rounds of each read phase; a figure is their median.
pub const ROUNDS: usize = 5;
/// The small store of issue 14's targets.
pub const SMALL: usize = 10_000;

/// The store sizes measured for `n` listed Pods.
fn sizes(n: usize) -> Vec<usize> {
    if n > SMALL { vec![SMALL, n] } else { vec![n] }
}

/// The figure-name suffix of a store size.
fn suffix(size: usize, n: usize) -> &'static str {
    if size < n { "_10k" } else { "" }
}

/// `size` of `pods`, evenly spread over the list (the Go peer takes the same ones).
fn subset<T: Clone>(pods: &[T], size: usize) -> Vec<T> {
    let step = (pods.len() / size.max(1)).max(1);
    pods.iter().step_by(step).take(size).cloned().collect()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

/// One store under a writer: per round, `phases` each run `per_second` and recorded under its
/// name; returns the medians, named with `suffix`.
fn rounds(
    p: &Params,
    suffix: &str,
    phases: &mut [(&str, &mut dyn FnMut(usize) -> usize)],
    figures: &mut Figures,
) {
    let ms = (p.read_ms / ROUNDS as u64).max(1);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); phases.len()];
    for _ in 0..ROUNDS {
        for (i, (_, op)) in phases.iter_mut().enumerate() {
            samples[i].push(per_second(ms, &mut **op));
        }
    }
    for ((name, _), xs) in phases.iter().zip(samples) {
        figures.insert(format!("{name}{suffix}"), median(xs));
    }
}

/// Runs `op` repeatedly for `ms` milliseconds; returns operations per second.
fn per_second(ms: u64, op: &mut dyn FnMut(usize) -> usize) -> f64 {
    let bound = Duration::from_millis(ms.max(1));
    let start = Instant::now();
    let mut ops = 0_usize;
    let mut sink = 0_usize;
    loop {
        for _ in 0..64 {
            sink = sink.wrapping_add(op(ops));
            ops += 1;
        }
        if start.elapsed() >= bound {
            break;
        }
    }
    std::hint::black_box(sink);
    ops as f64 / start.elapsed().as_secs_f64()
}

/// Pseudo-random but fixed order of point reads.
fn spread(i: usize, n: usize) -> usize {
    i.wrapping_mul(2_654_435_761) % n.max(1)
}

fn namespaces(p: &Params) -> Vec<String> {
    (0..p.namespaces.max(1)).map(crate::namespace).collect()
}

/// Reflex's `Indexer`: `get_by_key` (an `Arc` the caller owns), a `Reader`'s lent `get`, and
/// `by_index("namespace", ns)`.
pub async fn reflex(p: Params) -> Run {
    use reflex_informer::key::ObjectKey;
    use reflex_informer::store::{Indexer, NAMESPACE_INDEX};
    let all: Vec<Arc<Pod>> = list_pods(&p.server)
        .await?
        .into_iter()
        .map(Arc::new)
        .collect();
    let namespaces = namespaces(&p);
    let mut figures = Figures::new();
    let mut writes = 0;
    let mut keep = Vec::new();
    for size in sizes(all.len()) {
        let pods = subset(&all, size);
        let indexer: Indexer<Pod> = Indexer::new();
        indexer
            .replace(pods.iter().cloned())
            .map_err(|e| format!("filling the store: {e}"))?;
        let keys: Vec<ObjectKey> = pods
            .iter()
            .filter_map(|p| ObjectKey::from_resource(p.as_ref()).ok())
            .collect();
        let writer_store = indexer.clone();
        let writer = Writer::start(pods.clone(), p.write_rate, move |pod| {
            let _ = writer_store.update(Arc::new(pod));
        });
        let (reader, namespaces, params) = (indexer.clone(), namespaces.clone(), p.clone());
        let suffix = suffix(size, all.len());
        figures = tokio::task::spawn_blocking(move || {
            let mut lent = reader.reader();
            let n = keys.len();
            let mut get = |i: usize| usize::from(reader.get_by_key(&keys[spread(i, n)]).is_some());
            let mut reader_get = |i: usize| usize::from(lent.get(&keys[spread(i, n)]).is_some());
            let mut list = |i: usize| {
                reader
                    .by_index(NAMESPACE_INDEX, &namespaces[i % namespaces.len()])
                    .map(|v| v.len())
                    .unwrap_or(0)
            };
            rounds(
                &params,
                suffix,
                &mut [
                    ("get_per_s", &mut get),
                    ("reader_get_per_s", &mut reader_get),
                    ("list_ns_per_s", &mut list),
                ],
                &mut figures,
            );
            figures
        })
        .await
        .map_err(|e| format!("reader: {e}"))?;
        writes += writer.stop();
        keep.push(indexer);
    }
    figures.insert("writes".into(), writes as f64);
    Ok((figures, Box::new((keep, all)) as Keep))
}

/// kube-runtime's `Store`: `get` and `state_filter` by namespace (it has no index: a scan).
pub async fn kube_runtime(p: Params) -> Run {
    use kube_runtime::reflector::{self, ObjectRef};
    use kube_runtime::watcher::Event;
    let all: Vec<Arc<Pod>> = list_pods(&p.server)
        .await?
        .into_iter()
        .map(Arc::new)
        .collect();
    let namespaces = namespaces(&p);
    let mut figures = Figures::new();
    let mut writes = 0;
    let mut keep = Vec::new();
    for size in sizes(all.len()) {
        let pods = subset(&all, size);
        let (store, mut writer) = reflector::store::<Pod>();
        writer.apply_watcher_event(&Event::Init);
        for pod in &pods {
            writer.apply_watcher_event(&Event::InitApply(Pod::clone(pod)));
        }
        writer.apply_watcher_event(&Event::InitDone);
        let refs: Vec<ObjectRef<Pod>> = pods
            .iter()
            .map(|p| ObjectRef::from_obj(p.as_ref()))
            .collect();
        let writer = Writer::start(pods.clone(), p.write_rate, move |pod| {
            writer.apply_watcher_event(&Event::Apply(pod));
        });
        let (reader, namespaces, params) = (store.clone(), namespaces.clone(), p.clone());
        let suffix = suffix(size, all.len());
        figures = tokio::task::spawn_blocking(move || {
            let n = refs.len();
            let mut get = |i: usize| usize::from(reader.get(&refs[spread(i, n)]).is_some());
            let mut list = |i: usize| {
                let ns = &namespaces[i % namespaces.len()];
                reader
                    .state_filter(|pod| pod.metadata.namespace.as_deref() == Some(ns.as_str()))
                    .len()
            };
            rounds(
                &params,
                suffix,
                &mut [("get_per_s", &mut get), ("list_ns_per_s", &mut list)],
                &mut figures,
            );
            figures
        })
        .await
        .map_err(|e| format!("reader: {e}"))?;
        writes += writer.stop();
        keep.push(store);
    }
    figures.insert("writes".into(), writes as f64);
    Ok((figures, Box::new((keep, all)) as Keep))
}
