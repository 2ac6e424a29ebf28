//! Prometheus metrics scraped over HTTP from the health server: a controller driven through a
//! known sequence of reconciles (success, error, panic, requeue) and informer events (adds, an
//! update, a delete, a watch restart and a relist), then the exact values on `/metrics`.
//!
//! Real HTTP means the real clock: every wait is a bounded poll for a condition (30 s), and no
//! assertion depends on how long anything took.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use reflex_informer::key::ObjectKey;
use reflex_informer::source::memory::MemorySource;
use reflex_informer::{InformerOptions, SharedIndexInformer};
use reflex_runtime::controller::{Action, Controller, ControllerOptions, default_error_policy};
use reflex_runtime::metrics::{Metrics, MetricsError};
use reflex_runtime::serve::{HealthServer, ServeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const POLL_LIMIT: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(10);

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + POLL_LIMIT;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last seen:\n{last}"
            ),
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = "GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    raw.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// The sample lines of an exposition, by series (name and labels) to value.
fn samples(body: &str) -> HashMap<String, String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(series, value)| (series.to_owned(), value.to_owned()))
        .collect()
}

/// Checks every `(series, value)` of `want` against `body`, listing the mismatches.
fn mismatches(body: &str, want: &[(&str, &str)]) -> Result<(), String> {
    let have = samples(body);
    let wrong: Vec<String> = want
        .iter()
        .filter(|(series, value)| have.get(*series).map(String::as_str) != Some(*value))
        .map(|(series, value)| format!("{series}: want {value}, have {:?}", have.get(*series)))
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("{}\n--- scrape:\n{body}", wrong.join("\n")))
    }
}

fn config_map(name: &str, data: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.namespace = Some("default".into());
    cm.metadata.name = Some(name.into());
    cm.data = Some([("v".to_owned(), data.to_owned())].into());
    cm
}

#[derive(Debug, thiserror::Error)]
#[error("failing on purpose")]
struct Failing;

/// `fail` errors on its first reconcile, `panic` panics on its first; `requeue` asks for a
/// requeue in an hour while it exists; everything else succeeds.
#[derive(Default)]
struct Script {
    seen: Mutex<HashMap<String, u32>>,
    informer: Mutex<Option<SharedIndexInformer<ConfigMap>>>,
}

async fn scripted(key: ObjectKey, ctx: Arc<Script>) -> Result<Action, Failing> {
    let n = {
        let mut seen = ctx.seen.lock();
        let n = seen.entry(key.name().to_owned()).or_default();
        *n += 1;
        *n
    };
    let exists = ctx
        .informer
        .lock()
        .as_ref()
        .is_some_and(|i| i.lister().get_by_key(&key).is_some());
    match (key.name(), n) {
        ("fail", 1) => Err(Failing),
        ("panic", 1) => panic!("reconcile panics on purpose"),
        ("requeue", _) if exists => Ok(Action::requeue_after(Duration::from_secs(3600))),
        _ => Ok(Action::done()),
    }
}

const C: &str = r#"controller="metrics-test""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_reports_exact_reconcile_queue_and_informer_counts() {
    let source = MemorySource::<ConfigMap>::new();
    for name in ["ok", "fail", "panic", "requeue"] {
        source.apply(config_map(name, "1")).unwrap();
    }
    let informer = SharedIndexInformer::new(Arc::new(source.clone()), InformerOptions::default());
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    metrics.register_informer("configmaps", &informer).unwrap();
    assert!(matches!(
        metrics.register_informer("configmaps", &informer),
        Err(MetricsError::DuplicateResource(r)) if r == "configmaps"
    ));

    let shutdown = CancellationToken::new();
    let server = HealthServer::new(ServeConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
    })
    .registry(Arc::new(registry))
    .start(shutdown.clone())
    .await
    .unwrap();
    let addr = server.local_addr();

    let ctx = Arc::new(Script::default());
    *ctx.informer.lock() = Some(informer.clone());
    let controller = Controller::new(informer.clone())
        .workers(3)
        .options(ControllerOptions {
            name: "metrics-test".into(),
            metrics: Some(metrics.clone()),
            shutdown: shutdown.clone(),
            ..ControllerOptions::default()
        });
    let live = controller.metrics();
    let run = tokio::spawn(controller.run(scripted, default_error_policy, ctx.clone()));

    // Stage 1: four adds; `fail` and `panic` are retried once by the rate limiter.
    eventually("six reconciles", || async {
        let s = live.snapshot();
        if s.reconciles == 6 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    // Stage 2: an update of `ok` and the deletion of `requeue`, one reconcile each.
    source.apply(config_map("ok", "2")).unwrap();
    source.delete(&ObjectKey::new(Some("default"), "requeue"));
    eventually("eight reconciles", || async {
        let s = live.snapshot();
        if s.reconciles == 8 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;

    // Stage 3: a watch closed by the server (restarted without a relist), then a watch whose
    // resourceVersion was compacted away (410, a relist). Neither changes an object.
    let stats = informer
        .reflector_stats()
        .expect("running informer has a reflector");
    source.close_watches();
    eventually("a watch restart", || async {
        if stats.watch_restarts() == 1 && source.open_watches() == 1 {
            Ok(())
        } else {
            Err(format!("{stats:?}"))
        }
    })
    .await;
    // A bookmark first, so the restarted watch has delivered an event when it closes: a watch
    // closed with no event within a second of starting counts as failed (client-go's "very short
    // watch") and ends the round, which on a fast machine would relist before the 410 and on a
    // loaded one would not; with the bookmark the path is the same everywhere.
    source.bookmark();
    source.advance();
    source.compact();
    source.close_watches();
    eventually("a relist", || async {
        if stats.relists() == 2 && source.open_watches() == 1 {
            Ok(())
        } else {
            Err(format!("{stats:?}"))
        }
    })
    .await;
    // The second close restarted the watch, whose resourceVersion was gone: the 410 was the
    // round's one error and ended it in a relist.
    assert_eq!(
        (stats.relists(), stats.watch_restarts(), stats.errors()),
        (2, 2, 1)
    );

    // success: ok twice, fail and panic on their retries, requeue once it was deleted;
    // error: the failure and the panic; requeue_after: requeue's first reconcile.
    let total = format!("controller_runtime_reconcile_total{{{C},result=");
    let expected: Vec<(String, String)> = [
        (format!("{total}\"success\"}}"), "5"),
        (format!("{total}\"error\"}}"), "2"),
        (format!("{total}\"requeue_after\"}}"), "1"),
        (
            format!("controller_runtime_reconcile_errors_total{{{C}}}"),
            "2",
        ),
        (
            format!("controller_runtime_reconcile_panics_total{{{C}}}"),
            "1",
        ),
        (
            format!("controller_runtime_reconcile_time_seconds_count{{{C}}}"),
            "8",
        ),
        (
            format!("controller_runtime_reconcile_time_seconds_bucket{{le=\"+Inf\",{C}}}"),
            "8",
        ),
        (format!("controller_runtime_active_workers{{{C}}}"), "0"),
        (
            format!("controller_runtime_max_concurrent_reconciles{{{C}}}"),
            "3",
        ),
        // The default queue reports under the controller's name: six distinct adds, two
        // rate-limited retries, one delayed requeue still waiting; eight items processed.
        ("workqueue_adds_total{name=\"metrics-test\"}".into(), "8"),
        ("workqueue_retries_total{name=\"metrics-test\"}".into(), "3"),
        ("workqueue_depth{name=\"metrics-test\"}".into(), "0"),
        (
            "workqueue_work_duration_seconds_count{name=\"metrics-test\"}".into(),
            "8",
        ),
        (
            "reflex_informer_events_total{resource=\"configmaps\",event=\"add\"}".into(),
            "4",
        ),
        (
            "reflex_informer_events_total{resource=\"configmaps\",event=\"update\"}".into(),
            "1",
        ),
        (
            "reflex_informer_events_total{resource=\"configmaps\",event=\"delete\"}".into(),
            "1",
        ),
        (
            "reflex_informer_relists_total{resource=\"configmaps\"}".into(),
            "2",
        ),
        (
            "reflex_informer_watch_restarts_total{resource=\"configmaps\"}".into(),
            "2",
        ),
        (
            "reflex_informer_list_watch_errors_total{resource=\"configmaps\"}".into(),
            "1",
        ),
        (
            "reflex_informer_objects{resource=\"configmaps\"}".into(),
            "3",
        ),
        (
            "reflex_informer_synced{resource=\"configmaps\"}".into(),
            "1",
        ),
    ]
    .into_iter()
    .map(|(s, v)| (s, v.to_owned()))
    .collect();
    let want: Vec<(&str, &str)> = expected
        .iter()
        .map(|(s, v)| (s.as_str(), v.as_str()))
        .collect();
    // The metrics handler runs in its own task: wait until it caught up, then all must match.
    let body = eventually("the expected scrape", || async {
        let body = scrape(addr).await;
        mismatches(&body, &want).map(|()| body)
    })
    .await;
    assert!(body.ends_with("# EOF\n"), "{body}");

    shutdown.cancel();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(
        (summary.reconciles, summary.errors, summary.panics),
        (8, 1, 1)
    );
    server.join().await;
}
