//! Cache reads with a concurrent writer: the contender lists the N Pods once from the server
//! (serde_json, full objects, the same data for every contender), fills its store, then starts
//! a writer thread updating Pods at `write_rate` per second while the reader does point gets
//! for `read_ms`, then lists by namespace for `read_ms`. Figures: `get_per_s`, `list_ns_per_s`,
//! `writes` (updates the writer made).

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

/// Runs `op` repeatedly for `ms` milliseconds; returns operations per second.
fn per_second(ms: u64, mut op: impl FnMut(usize) -> usize) -> f64 {
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

/// Reflex's `Indexer`: `get_by_key` and `by_index("namespace", ns)`.
pub async fn reflex(p: Params) -> Run {
    use reflex_informer::key::ObjectKey;
    use reflex_informer::store::{Indexer, NAMESPACE_INDEX};
    let pods: Vec<Arc<Pod>> = list_pods(&p.server)
        .await?
        .into_iter()
        .map(Arc::new)
        .collect();
    let indexer: Indexer<Pod> = Indexer::new();
    indexer
        .replace(pods.iter().cloned())
        .map_err(|e| format!("filling the store: {e}"))?;
    let keys: Vec<ObjectKey> = pods
        .iter()
        .filter_map(|p| ObjectKey::from_resource(p.as_ref()).ok())
        .collect();
    let namespaces = namespaces(&p);
    let writer_store = indexer.clone();
    let writer = Writer::start(pods.clone(), p.write_rate, move |pod| {
        let _ = writer_store.update(Arc::new(pod));
    });
    let reader = indexer.clone();
    let (gets, lists) = tokio::task::spawn_blocking(move || {
        let gets = per_second(p.read_ms, |i| {
            usize::from(reader.get_by_key(&keys[spread(i, keys.len())]).is_some())
        });
        let lists = per_second(p.read_ms, |i| {
            reader
                .by_index(NAMESPACE_INDEX, &namespaces[i % namespaces.len()])
                .map(|v| v.len())
                .unwrap_or(0)
        });
        (gets, lists)
    })
    .await
    .map_err(|e| format!("reader: {e}"))?;
    let writes = writer.stop();
    Ok((
        figures(gets, lists, writes),
        Box::new((indexer, pods)) as Keep,
    ))
}

/// kube-runtime's `Store`: `get` and `state_filter` by namespace (it has no index: a scan).
pub async fn kube_runtime(p: Params) -> Run {
    use kube_runtime::reflector::{self, ObjectRef};
    use kube_runtime::watcher::Event;
    let pods: Vec<Arc<Pod>> = list_pods(&p.server)
        .await?
        .into_iter()
        .map(Arc::new)
        .collect();
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
    let namespaces = namespaces(&p);
    let writer = Writer::start(pods.clone(), p.write_rate, move |pod| {
        writer.apply_watcher_event(&Event::Apply(pod));
    });
    let reader = store.clone();
    let (gets, lists) = tokio::task::spawn_blocking(move || {
        let gets = per_second(p.read_ms, |i| {
            usize::from(reader.get(&refs[spread(i, refs.len())]).is_some())
        });
        let lists = per_second(p.read_ms, |i| {
            let ns = &namespaces[i % namespaces.len()];
            reader
                .state_filter(|pod| pod.metadata.namespace.as_deref() == Some(ns.as_str()))
                .len()
        });
        (gets, lists)
    })
    .await
    .map_err(|e| format!("reader: {e}"))?;
    let writes = writer.stop();
    Ok((
        figures(gets, lists, writes),
        Box::new((store, pods)) as Keep,
    ))
}

fn figures(gets: f64, lists: f64, writes: u64) -> Figures {
    Figures::from([
        ("get_per_s".to_string(), gets),
        ("list_ns_per_s".to_string(), lists),
        ("writes".to_string(), writes as f64),
    ])
}
