//! Store, DeltaFIFO and lister benchmarks.
//!
//! `cargo bench -p reflex-informer --bench store -- --quick`
//!
//! Each store operation runs against the lock-free [`Indexer`] and, as a baseline, against the
//! classic design (`parking_lot::RwLock` around a map and its namespace index, as client-go's
//! `threadSafeMap`), on 10k ConfigMaps spread over 100 namespaces. The `under_writes` groups
//! measure read latency while another thread writes continuously (`update`: one object at a time;
//! `replace`: whole-store swaps, the long write a relist makes).

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ObjectMeta;
use parking_lot::RwLock;
use reflex_informer::delta_fifo::DeltaFifo;
use reflex_informer::fifo::ReflectorSink;
use reflex_informer::key::ObjectKey;
use reflex_informer::lister::{Lister, parse_selector};
use reflex_informer::store::{Indexer, NAMESPACE_INDEX};

const N: usize = 10_000;
const NAMESPACES: usize = 100;

fn cm(i: usize, rv: usize) -> Arc<ConfigMap> {
    Arc::new(ConfigMap {
        metadata: ObjectMeta {
            namespace: Some(format!("ns-{}", i % NAMESPACES)),
            name: Some(format!("cm-{i}")),
            resource_version: Some(rv.to_string()),
            labels: Some([("app".to_string(), format!("app-{}", i % 7))].into()),
            ..Default::default()
        },
        ..Default::default()
    })
}

fn objects(rv: usize) -> Vec<Arc<ConfigMap>> {
    (0..N).map(|i| cm(i, rv)).collect()
}

fn key_of(i: usize) -> ObjectKey {
    ObjectKey::new(Some(format!("ns-{}", i % NAMESPACES)), format!("cm-{i}"))
}

/// The baseline: one read-write lock over the items and the namespace index.
#[derive(Default)]
struct LockedStore {
    inner: RwLock<LockedInner>,
}

#[derive(Default)]
struct LockedInner {
    items: HashMap<ObjectKey, Arc<ConfigMap>>,
    by_ns: HashMap<String, HashSet<ObjectKey>>,
}

impl LockedInner {
    fn put(&mut self, obj: Arc<ConfigMap>) {
        let key = ObjectKey::from_resource(obj.as_ref()).unwrap();
        let ns = obj.metadata.namespace.clone().unwrap();
        if let Some(old) = self.items.insert(key.clone(), obj) {
            let old_ns = old.metadata.namespace.clone().unwrap();
            if old_ns != ns
                && let Some(set) = self.by_ns.get_mut(&old_ns)
            {
                set.remove(&key);
            }
        }
        self.by_ns.entry(ns).or_default().insert(key);
    }
}

impl LockedStore {
    fn add(&self, obj: Arc<ConfigMap>) {
        self.inner.write().put(obj);
    }

    fn replace(&self, objs: &[Arc<ConfigMap>]) {
        let mut inner = self.inner.write();
        *inner = LockedInner::default();
        for obj in objs {
            inner.put(obj.clone());
        }
    }

    fn get(&self, key: &ObjectKey) -> Option<Arc<ConfigMap>> {
        self.inner.read().items.get(key).cloned()
    }

    fn list(&self) -> Vec<Arc<ConfigMap>> {
        self.inner.read().items.values().cloned().collect()
    }

    fn by_ns(&self, ns: &str) -> Vec<Arc<ConfigMap>> {
        let inner = self.inner.read();
        inner
            .by_ns
            .get(ns)
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| inner.items.get(k).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn filled_indexer() -> Indexer<ConfigMap> {
    let store = Indexer::new();
    store.replace(objects(1)).unwrap();
    store
}

fn filled_locked() -> LockedStore {
    let store = LockedStore::default();
    store.replace(&objects(1));
    store
}

fn store_ops(c: &mut Criterion) {
    let objs = objects(1);
    let mut group = c.benchmark_group("store");

    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("indexer/add_10k", |b| {
        b.iter_batched(
            Indexer::<ConfigMap>::new,
            |store| {
                for obj in &objs {
                    store.add(obj.clone()).unwrap();
                }
                store
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("rwlock/add_10k", |b| {
        b.iter_batched(
            LockedStore::default,
            |store| {
                for obj in &objs {
                    store.add(obj.clone());
                }
                store
            },
            BatchSize::LargeInput,
        )
    });

    group.throughput(Throughput::Elements(1));
    let indexer = filled_indexer();
    let locked = filled_locked();
    let updates = objects(2);
    let mut i = 0;
    group.bench_function("indexer/update", |b| {
        b.iter(|| {
            i = (i + 1) % N;
            indexer.update(updates[i].clone()).unwrap()
        })
    });
    group.bench_function("rwlock/update", |b| {
        b.iter(|| {
            i = (i + 1) % N;
            locked.add(updates[i].clone())
        })
    });
    let keys: Vec<ObjectKey> = (0..N).map(key_of).collect();
    group.bench_function("indexer/get_by_key", |b| {
        b.iter(|| {
            i = (i + 1) % N;
            indexer.get_by_key(&keys[i])
        })
    });
    let mut reader = indexer.reader();
    group.bench_function("indexer/reader_get", |b| {
        b.iter(|| {
            i = (i + 1) % N;
            reader.get(&keys[i]).is_some()
        })
    });
    group.bench_function("rwlock/get_by_key", |b| {
        b.iter(|| {
            i = (i + 1) % N;
            locked.get(&keys[i])
        })
    });
    group.bench_function("indexer/list_10k", |b| b.iter(|| indexer.list()));
    group.bench_function("rwlock/list_10k", |b| b.iter(|| locked.list()));
    group.bench_function("indexer/by_index_100", |b| {
        b.iter(|| {
            i = (i + 1) % NAMESPACES;
            indexer
                .by_index(NAMESPACE_INDEX, &format!("ns-{i}"))
                .unwrap()
        })
    });
    group.bench_function("rwlock/by_index_100", |b| {
        b.iter(|| {
            i = (i + 1) % NAMESPACES;
            locked.by_ns(&format!("ns-{i}"))
        })
    });
    group.finish();
}

fn fifo_ops(c: &mut Criterion) {
    let objs = objects(1);
    let mut group = c.benchmark_group("delta_fifo");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("add_then_pop_10k", |b| {
        b.iter(|| {
            let fifo = DeltaFifo::<ConfigMap>::new(None);
            for obj in &objs {
                fifo.add(obj.clone()).unwrap();
            }
            futures::executor::block_on(async {
                for _ in 0..N {
                    fifo.pop(|p| Ok(black_box(p.deltas.len()))).await.unwrap();
                }
            });
        })
    });
    group.bench_function("relist_page_by_page_10k_then_pop", |b| {
        let known = filled_indexer();
        b.iter(|| {
            let fifo = DeltaFifo::<ConfigMap>::new(Some(Arc::new(known.clone())));
            for page in objs.chunks(500) {
                fifo.replace_page(page.to_vec()).unwrap();
            }
            fifo.replace_done("2").unwrap();
            futures::executor::block_on(async {
                for _ in 0..N {
                    fifo.pop(|p| Ok(black_box(p.deltas.len()))).await.unwrap();
                }
            });
        })
    });
    group.finish();
}

/// A thread that writes until dropped.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<u64>>,
}

impl Writer {
    fn spawn(mut write: impl FnMut(usize) + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                write(n as usize);
                n += 1;
            }
            n
        });
        Writer {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn reads_under_writes(c: &mut Criterion) {
    let keys: Vec<ObjectKey> = (0..N).map(key_of).collect();
    let selector = parse_selector("app=app-3").unwrap();
    let updates = objects(2);
    let relist = objects(3);

    for mode in ["update", "replace"] {
        let mut group = c.benchmark_group(format!("under_writes/{mode}"));
        group.throughput(Throughput::Elements(1));

        let indexer = filled_indexer();
        let lister = Lister::new(indexer.clone());
        let writer = {
            let indexer = indexer.clone();
            let (updates, relist) = (updates.clone(), relist.clone());
            Writer::spawn(move |n| {
                if mode == "update" {
                    indexer.update(updates[n % N].clone()).unwrap();
                } else {
                    indexer.replace(relist.iter().cloned()).unwrap();
                }
            })
        };
        let mut i = 0;
        group.bench_function("lister/get_by_key", |b| {
            b.iter(|| {
                i = (i + 1) % N;
                lister.get_by_key(&keys[i])
            })
        });
        group.bench_function("lister/namespaced_list_selector", |b| {
            b.iter(|| {
                i = (i + 1) % NAMESPACES;
                lister.namespaced(&format!("ns-{i}")).list(&selector)
            })
        });
        drop(writer);

        let locked = Arc::new(filled_locked());
        let writer = {
            let locked = locked.clone();
            let (updates, relist) = (updates.clone(), relist.clone());
            Writer::spawn(move |n| {
                if mode == "update" {
                    locked.add(updates[n % N].clone());
                } else {
                    locked.replace(&relist);
                }
            })
        };
        group.bench_function("rwlock/get_by_key", |b| {
            b.iter(|| {
                i = (i + 1) % N;
                locked.get(&keys[i])
            })
        });
        drop(writer);
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    targets = store_ops, fifo_ops, reads_under_writes
}
/// Tail latency of single reads while a writer relists continuously (criterion reports means
/// per sample, which hide a reader stuck behind a writer): p50, p99, p99.9 and max, at 10k and
/// at 100k objects. A relist is either one atomic `replace` of the whole store or, as the
/// informer applies a relist's deltas, one `update` per object; the `RwLock` baseline swaps its
/// map under the write lock.
fn read_latency_tail() {
    const READS: usize = 200_000;
    let report = |name: &str, mut samples: Vec<u128>| {
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
        println!(
            "read latency under relists, {name}: {} reads, p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns",
            samples.len(),
            at(0.5),
            at(0.99),
            at(0.999),
            samples[samples.len() - 1]
        );
    };
    for n in [N, 10 * N] {
        let keys: Vec<ObjectKey> = (0..n).map(key_of).collect();
        let relist: Vec<Arc<ConfigMap>> = (0..n).map(|i| cm(i, 3)).collect();
        // Bounded by count and by time: a reader starved behind a writer that re-takes the lock
        // at once (the RwLock baseline on a busy machine) must not make the probe run for minutes.
        let time_reads = |read: &dyn Fn(&ObjectKey) -> Option<Arc<ConfigMap>>| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
            let mut samples = Vec::with_capacity(READS);
            for i in 0..READS {
                let start = std::time::Instant::now();
                black_box(read(&keys[(i * 7919) % n]));
                samples.push(start.elapsed().as_nanos());
                if start > deadline {
                    break;
                }
            }
            samples
        };

        let indexer = Indexer::new();
        indexer.replace(relist.iter().cloned()).unwrap();
        let writer = {
            let (indexer, relist) = (indexer.clone(), relist.clone());
            Writer::spawn(move |_| indexer.replace(relist.iter().cloned()).unwrap())
        };
        report(
            &format!("indexer, {n} objects, replace"),
            time_reads(&|k| indexer.get_by_key(k)),
        );
        drop(writer);

        let writer = {
            let (indexer, relist) = (indexer.clone(), relist.clone());
            Writer::spawn(move |_| {
                for obj in &relist {
                    indexer.update(obj.clone()).unwrap();
                }
            })
        };
        report(
            &format!("indexer, {n} objects, update per object"),
            time_reads(&|k| indexer.get_by_key(k)),
        );
        drop(writer);

        let locked = Arc::new(LockedStore::default());
        locked.replace(&relist);
        let writer = {
            let (locked, relist) = (locked.clone(), relist.clone());
            Writer::spawn(move |_| locked.replace(&relist))
        };
        report(
            &format!("rwlock, {n} objects, replace"),
            time_reads(&|k| locked.get(k)),
        );
        drop(writer);
    }
}

fn main() {
    benches();
    read_latency_tail();
    Criterion::default().configure_from_args().final_summary();
}
