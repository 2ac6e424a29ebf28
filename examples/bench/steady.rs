//! Steady-state watch: the harness updates the Pods of the `steady` namespace at a fixed rate,
//! stamping each update with its sequence number and its write time (Unix nanoseconds, the
//! clock every process on the machine shares). The contender's first handler reads the stamp
//! when it is called, so the latency covers the server write, the watch stream, decoding, the
//! store and the handler dispatch.
//!
//! Figures: `events_per_s` (stamped events seen, over the time from the first write to the last
//! event seen), `p50_ms`, `p99_ms`, `events` (how many stamped events reached the handler).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use parking_lot::Mutex;
use reflex_informer::factory::{FactoryOptions, SharedInformerFactory};
use reflex_informer::handler::handler_fn;
use reflex_informer::key::ObjectKey;
use reflex_workqueue::{RateLimitingQueue, default_controller_rate_limiter};
use serde_json::Value;
use tokio::sync::Notify;

use crate::contenders::{Keep, Run};
use crate::protocol::Figures;
use crate::sync::client;
use crate::{Params, SEQ, STEADY_NAMESPACE, WRITTEN_AT};

/// How long a contender may take to see every update after the writer started.
const BOUND: Duration = Duration::from_secs(300);

/// Unix time in nanoseconds.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Latencies of stamped events, as seen by a handler.
pub struct Recorder {
    expected: usize,
    inner: Mutex<Seen>,
    last_seen: AtomicU64,
    done: Notify,
}

#[derive(Default)]
struct Seen {
    latencies_ns: Vec<u64>,
    first_written_ns: u64,
    last_seen_ns: u64,
    saw_last: bool,
}

impl Recorder {
    /// A recorder expecting `expected` stamped events.
    pub fn new(expected: usize) -> Arc<Self> {
        Arc::new(Recorder {
            expected,
            inner: Mutex::new(Seen {
                latencies_ns: Vec::with_capacity(expected),
                ..Seen::default()
            }),
            last_seen: AtomicU64::new(0),
            done: Notify::new(),
        })
    }

    /// Records the stamp of `pod`, if it has one.
    pub fn record(&self, pod: &Pod) {
        let now = unix_nanos();
        tracing::trace!(
            name = pod.metadata.name.as_deref(),
            resource_version = pod.metadata.resource_version.as_deref(),
            "handler called"
        );
        let Some(annotations) = pod.metadata.annotations.as_ref() else {
            return;
        };
        let (Some(written), Some(seq)) = (
            annotations
                .get(WRITTEN_AT)
                .and_then(|v| v.parse::<u64>().ok()),
            annotations.get(SEQ).and_then(|v| v.parse::<usize>().ok()),
        ) else {
            return;
        };
        let finished = {
            let mut seen = self.inner.lock();
            if seen.latencies_ns.is_empty() || written < seen.first_written_ns {
                seen.first_written_ns = written;
            }
            seen.latencies_ns.push(now.saturating_sub(written));
            seen.last_seen_ns = now;
            seen.saw_last |= seq + 1 == self.expected;
            seen.saw_last || seen.latencies_ns.len() >= self.expected
        };
        self.last_seen.store(now, Ordering::Relaxed);
        if finished {
            self.done.notify_one();
        }
    }

    /// Waits until the last update was seen (or `BOUND` passed) and computes the figures.
    pub async fn figures(&self) -> Result<Figures, String> {
        let waited = tokio::time::timeout(BOUND, async {
            loop {
                let notified = self.done.notified();
                {
                    let seen = self.inner.lock();
                    if seen.saw_last || seen.latencies_ns.len() >= self.expected {
                        return;
                    }
                }
                notified.await;
            }
        })
        .await;
        let mut seen = std::mem::take(&mut *self.inner.lock());
        if waited.is_err() && seen.latencies_ns.is_empty() {
            return Err(format!("no stamped event seen within {BOUND:?}"));
        }
        seen.latencies_ns.sort_unstable();
        let n = seen.latencies_ns.len();
        let pct = |p: f64| {
            let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
            seen.latencies_ns[i] as f64 / 1e6
        };
        let span_s = (seen.last_seen_ns.saturating_sub(seen.first_written_ns)) as f64 / 1e9;
        Ok(Figures::from([
            ("events".to_string(), n as f64),
            (
                "events_per_s".to_string(),
                if span_s > 0.0 { n as f64 / span_s } else { 0.0 },
            ),
            ("p50_ms".to_string(), pct(0.50)),
            ("p99_ms".to_string(), pct(0.99)),
            (
                "timed_out".to_string(),
                if waited.is_err() { 1.0 } else { 0.0 },
            ),
        ]))
    }
}

/// Reflex: an informer on the `steady` namespace, 4 handlers adding keys to one
/// `RateLimitingQueue`, one worker draining it; the first handler records latencies.
pub async fn reflex(p: Params) -> Run {
    let factory = SharedInformerFactory::new(
        client(&p.server)?,
        FactoryOptions {
            namespace: Some(STEADY_NAMESPACE.into()),
            ..FactoryOptions::default()
        },
    );
    let informer = factory.informer::<Pod>();
    let queue: RateLimitingQueue<ObjectKey> =
        RateLimitingQueue::new(default_controller_rate_limiter());
    let recorder = Recorder::new(p.events);
    for i in 0..4 {
        let (q_add, q_update) = (queue.clone(), queue.clone());
        let rec = (i == 0).then(|| recorder.clone());
        let handler = handler_fn::<Pod>()
            .on_add(move |pod, _initial| {
                if let Ok(key) = ObjectKey::from_resource(pod.as_ref()) {
                    let _ = q_add.add(key);
                }
            })
            .on_update(move |_old, pod| {
                if let Some(rec) = &rec {
                    rec.record(pod);
                }
                if let Ok(key) = ObjectKey::from_resource(pod.as_ref()) {
                    let _ = q_update.add(key);
                }
            });
        informer
            .add_event_handler(handler)
            .map_err(|e| format!("adding a handler: {e}"))?;
    }
    let worker_queue = queue.clone();
    let worker = tokio::spawn(async move {
        while let Some(key) = worker_queue.get().await {
            worker_queue.forget(&key);
            let _ = worker_queue.done(&key);
        }
    });
    factory.start();
    let synced = factory.wait_for_cache_sync(Some(BOUND)).await;
    if !synced.values().all(reflex_informer::SyncState::has_synced) {
        return Err(format!("not synced: {synced:?}"));
    }
    crate::protocol::ready();
    let figures = recorder.figures().await?;
    queue.shut_down();
    let _ = worker.await;
    Ok((figures, Box::new((factory, informer)) as Keep))
}

#[derive(Debug, thiserror::Error)]
#[error("never fails")]
struct Never;

/// kube-runtime: a `Controller` on the `steady` namespace; the reconciler records latencies.
pub async fn kube_runtime(p: Params) -> Run {
    use kube_runtime::controller::{Action, Controller};
    use kube_runtime::watcher;
    let api: kube::Api<Pod> = kube::Api::namespaced(client(&p.server)?, STEADY_NAMESPACE);
    let controller = Controller::new(api, watcher::Config::default());
    let store = controller.store();
    let recorder = Recorder::new(p.events);
    let run = controller.run(
        |pod: Arc<Pod>, rec: Arc<Recorder>| async move {
            rec.record(&pod);
            Ok::<_, Never>(Action::await_change())
        },
        |_pod, _err: &Never, _rec| Action::await_change(),
        recorder.clone(),
    );
    let task = tokio::spawn(run.for_each(|_| futures::future::ready(())));
    // `Store::wait_until_ready` wakes only the last task that polled it (one oneshot receiver
    // behind a mutex), and the controller's applier waits on it too: so poll the store instead.
    // The store only fills once the initial list is complete.
    tokio::time::timeout(BOUND, async {
        while store.len() < p.steady_pods {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .map_err(|_| format!("not ready within {BOUND:?}"))?;
    tracing::info!(objects = store.len(), "kube-runtime controller store ready");
    crate::protocol::ready();
    let figures = recorder.figures().await;
    task.abort();
    Ok((figures?, Box::new(store) as Keep))
}

/// Harness side: `events` updates of `pods` at `rate` per second (round robin), each stamped;
/// `rate` 0 writes them as fast as the server takes them. Returns how long the writing took.
pub async fn write(
    server: &reflex_testing::FakeApiServer,
    pods: &mut [Value],
    events: usize,
    rate: u64,
) -> Result<Duration, reflex_testing::FakeError> {
    let start = tokio::time::Instant::now();
    let per_tick = if rate == 0 {
        events.max(1)
    } else {
        (rate / 1000).max(1) as usize
    };
    let tick = if rate == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(per_tick as f64 / rate as f64)
    };
    let mut seq = 0;
    let mut next = start;
    tracing::info!(
        events,
        rate,
        pods = pods.len(),
        "steady-state writer started"
    );
    while seq < events {
        for _ in 0..per_tick.min(events - seq) {
            let slot = seq % pods.len();
            let mut pod = std::mem::take(&mut pods[slot]);
            let annotations = pod
                .pointer_mut("/metadata")
                .and_then(Value::as_object_mut)
                .map(|m| {
                    m.remove("resourceVersion");
                    m.entry("annotations")
                        .or_insert_with(|| Value::Object(Default::default()))
                });
            if let Some(Value::Object(a)) = annotations {
                a.insert(SEQ.into(), Value::String(seq.to_string()));
                a.insert(WRITTEN_AT.into(), Value::String(unix_nanos().to_string()));
            }
            // The stored object comes back and is the next update's base: one copy per write.
            pods[slot] = server.update(pod)?;
            seq += 1;
        }
        next += tick;
        tokio::time::sleep_until(next).await;
    }
    tracing::info!(
        events,
        elapsed_s = start.elapsed().as_secs_f64(),
        "steady-state writer done"
    );
    Ok(start.elapsed())
}
