//! End-to-end deltas/s: in-memory source -> reflector -> DeltaFIFO -> store -> 1 and 4 handlers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::ConfigMap;
use reflex_informer::handler::handler_fn;
use reflex_informer::source::memory::MemorySource;
use reflex_informer::{InformerOptions, SharedIndexInformer};
use tokio_util::sync::CancellationToken;

const OBJECTS: usize = 2_000;

fn source() -> MemorySource<ConfigMap> {
    let source = MemorySource::new();
    for i in 0..OBJECTS {
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = Some("bench".into());
        cm.metadata.name = Some(format!("cm-{i}"));
        source.apply(cm).expect("named object");
    }
    source
}

/// Lists OBJECTS objects through a fresh informer and waits until every handler saw each one.
async fn sync_once(source: &MemorySource<ConfigMap>, handlers: usize) {
    let informer = SharedIndexInformer::new(Arc::new(source.clone()), InformerOptions::default());
    let seen = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    for _ in 0..handlers {
        let (seen, done) = (seen.clone(), done.clone());
        informer
            .add_event_handler(handler_fn().on_add(move |_: &Arc<ConfigMap>, _| {
                if seen.fetch_add(1, Ordering::Relaxed) + 1 == OBJECTS * handlers {
                    done.notify_one();
                }
            }))
            .expect("informer not stopped");
    }
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let informer = informer.clone();
        let shutdown = shutdown.clone();
        async move { informer.run(shutdown).await }
    });
    done.notified().await;
    shutdown.cancel();
    run.await.expect("informer task").expect("first run");
}

fn end_to_end(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let source = source();
    let mut group = c.benchmark_group("informer_initial_sync");
    group.throughput(Throughput::Elements(OBJECTS as u64));
    for handlers in [1, 4] {
        group.bench_with_input(
            BenchmarkId::new("handlers", handlers),
            &handlers,
            |b, &h| {
                b.to_async(&rt).iter(|| sync_once(&source, h));
            },
        );
    }
    group.finish();
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
