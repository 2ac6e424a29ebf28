//! Event recorder guarantees, over an in-memory sink with tokio's paused clock. The recorder's task
//! runs on the same single-threaded test runtime; a short paused-clock sleep lets it drain its queue
//! (time only advances once every task is idle).

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use reflex_runtime::events::{
    EventRecorder, EventType, InMemoryEventSink, RecorderConfig, SinkFailure, SinkWrite,
};
use tokio_util::sync::CancellationToken;

fn pod(namespace: Option<&str>, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: namespace.map(Into::into),
        name: Some(name.into()),
        uid: Some(format!("uid-{name}")),
        ..ObjectReference::default()
    }
}

/// Publishes the Normal `Sync` event most tests use, for Pod `apps/web-0`.
fn publish_sync(rec: &EventRecorder) {
    rec.publish(
        &pod(Some("apps"), "web-0"),
        EventType::Normal,
        "Sync",
        "Run",
        "ok",
    );
}

fn start(
    config: RecorderConfig,
) -> (
    EventRecorder,
    reflex_runtime::events::RecorderTask,
    InMemoryEventSink,
    CancellationToken,
) {
    let sink = InMemoryEventSink::new();
    let shutdown = CancellationToken::new();
    let (recorder, task) = EventRecorder::new(sink.clone(), config, shutdown.clone());
    (recorder, task, sink, shutdown)
}

fn config() -> RecorderConfig {
    RecorderConfig::new("example.com/ctl", "pod-a")
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Lets the recorder task handle what was published without moving the paused clock, so a
/// retry scheduled a random (possibly tiny) delay ahead cannot fire meanwhile.
async fn drain() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn first_publish_creates_event_with_name_namespace_and_reporting_fields() {
    let (rec, task, sink, shutdown) = start(config());
    rec.publish(
        &pod(Some("apps"), "web-0"),
        EventType::Warning,
        "BackOff",
        "Restart",
        "restarting",
    );
    rec.publish(
        &pod(None, "node-1"),
        EventType::Normal,
        "Ready",
        "Check",
        "node ready",
    );
    settle().await;
    let events = sink.events();
    assert_eq!(events.len(), 2);
    let apps = events
        .iter()
        .find(|e| e.metadata.namespace.as_deref() == Some("apps"))
        .unwrap();
    let name = apps.metadata.name.as_deref().unwrap();
    let (object, hex) = name.split_once('.').unwrap();
    assert_eq!(object, "web-0");
    assert!(
        !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{name}"
    );
    assert_eq!(apps.type_.as_deref(), Some("Warning"));
    assert_eq!(
        (
            apps.reason.as_deref(),
            apps.action.as_deref(),
            apps.note.as_deref()
        ),
        (Some("BackOff"), Some("Restart"), Some("restarting"))
    );
    assert_eq!(
        apps.reporting_controller.as_deref(),
        Some("example.com/ctl")
    );
    assert_eq!(apps.reporting_instance.as_deref(), Some("pod-a"));
    assert!(apps.event_time.is_some() && apps.series.is_none());
    let cluster = events
        .iter()
        .find(|e| e.regarding.as_ref().unwrap().name.as_deref() == Some("node-1"))
        .unwrap();
    assert_eq!(
        cluster.metadata.namespace.as_deref(),
        Some("default"),
        "namespace defaults to default"
    );
    shutdown.cancel();
    task.join().await;
}

#[tokio::test(start_paused = true)]
async fn repeated_identical_events_within_window_form_one_series() {
    let (rec, task, sink, shutdown) = start(config());
    let p = pod(Some("apps"), "web-0");
    for _ in 0..5 {
        rec.publish(&p, EventType::Warning, "BackOff", "Restart", "restarting");
        settle().await;
    }
    // One create; the second occurrence patched count 2 at once; later ones wait for a flush.
    assert_eq!(sink.writes(), (1, 1));
    assert_eq!(sink.events()[0].series.as_ref().map(|s| s.count), Some(2));
    // After a quiet window the series ends with its final count.
    tokio::time::sleep(Duration::from_secs(13 * 60)).await;
    assert_eq!(sink.writes(), (1, 2));
    assert_eq!(sink.events().len(), 1);
    assert_eq!(sink.events()[0].series.as_ref().map(|s| s.count), Some(5));
    // A repeat after the series ended starts a new Event.
    rec.publish(&p, EventType::Warning, "BackOff", "Restart", "restarting");
    settle().await;
    assert_eq!(sink.events().len(), 2);
    shutdown.cancel();
    task.join().await;
}

#[tokio::test(start_paused = true)]
async fn ongoing_series_is_written_every_refresh_period() {
    let (rec, task, sink, shutdown) = start(config());
    let p = pod(Some("apps"), "web-0");
    // One repeat a minute, at half minutes (never on a timer tick), for 32 minutes: the series
    // never ends, the refresh at 30 min writes it.
    tokio::time::sleep(Duration::from_secs(30)).await;
    for _ in 0..32 {
        rec.publish(&p, EventType::Normal, "Sync", "Reconcile", "synced");
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    let (creates, patches) = sink.writes();
    assert_eq!(
        (creates, patches),
        (1, 2),
        "count-2 patch, then one refresh at 30 min"
    );
    assert_eq!(sink.events()[0].series.as_ref().map(|s| s.count), Some(30));
    shutdown.cancel();
    task.join().await;
    assert_eq!(
        sink.events()[0].series.as_ref().map(|s| s.count),
        Some(32),
        "shutdown flushes the series"
    );
}

#[tokio::test(start_paused = true)]
async fn events_differing_in_any_identity_field_are_not_aggregated() {
    let base = (
        pod(Some("apps"), "web-0"),
        EventType::Normal,
        "Scaled",
        "Scale",
        "to 3",
    );
    let variants = [
        (
            "other object",
            (pod(Some("apps"), "web-1"), base.1, base.2, base.3, base.4),
        ),
        (
            "other type",
            (base.0.clone(), EventType::Warning, base.2, base.3, base.4),
        ),
        (
            "other reason",
            (base.0.clone(), base.1, "Resized", base.3, base.4),
        ),
        (
            "other action",
            (base.0.clone(), base.1, base.2, "Resize", base.4),
        ),
        (
            "other note",
            (base.0.clone(), base.1, base.2, base.3, "to 4"),
        ),
    ];
    for (name, v) in variants {
        let (rec, task, sink, shutdown) = start(config());
        rec.publish(&base.0, base.1, base.2, base.3, base.4);
        rec.publish(&v.0, v.1, v.2, v.3, v.4);
        settle().await;
        assert_eq!(sink.writes(), (2, 0), "{name}");
        shutdown.cancel();
        task.join().await;
    }
}

#[tokio::test(start_paused = true)]
async fn spam_filter_allows_burst_then_one_new_event_per_refill_per_object() {
    let (rec, task, sink, shutdown) = start(config());
    let (a, b) = (pod(Some("apps"), "a"), pod(Some("apps"), "b"));
    for i in 0..30 {
        rec.publish(&a, EventType::Normal, "Step", "Run", &format!("step {i}"));
    }
    settle().await;
    assert_eq!((sink.writes().0, rec.filtered()), (25, 5));
    rec.publish(
        &b,
        EventType::Normal,
        "Step",
        "Run",
        "other object has its own bucket",
    );
    // Repeats of an existing event are counted in its series, never filtered.
    rec.publish(&a, EventType::Normal, "Step", "Run", "step 0");
    settle().await;
    assert_eq!((sink.writes(), rec.filtered()), ((26, 1), 5));
    tokio::time::sleep(Duration::from_secs(299)).await;
    rec.publish(&a, EventType::Normal, "Step", "Run", "too early");
    settle().await;
    assert_eq!(rec.filtered(), 6);
    tokio::time::sleep(Duration::from_secs(1)).await;
    rec.publish(
        &a,
        EventType::Normal,
        "Step",
        "Run",
        "one token back after 5 minutes",
    );
    settle().await;
    assert_eq!((sink.writes().0, rec.filtered()), (27, 6));
    shutdown.cancel();
    task.join().await;
}

#[tokio::test(start_paused = true)]
async fn publish_never_waits_and_counts_drops_when_queue_full() {
    let (rec, task, sink, shutdown) = start(RecorderConfig {
        queue_capacity: 2,
        ..config()
    });
    // The recorder task cannot run until this test task yields, so the queue fills.
    for i in 0..10 {
        rec.publish(
            &pod(Some("apps"), "web-0"),
            EventType::Normal,
            "Step",
            "Run",
            &format!("{i}"),
        );
    }
    assert_eq!(rec.dropped(), 8);
    settle().await;
    assert_eq!(sink.writes().0, 2);
    shutdown.cancel();
    task.join().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_writes_events_already_queued() {
    let (rec, task, sink, shutdown) = start(config());
    for i in 0..3 {
        rec.publish(
            &pod(Some("apps"), "web-0"),
            EventType::Normal,
            "Step",
            "Run",
            &format!("{i}"),
        );
    }
    shutdown.cancel();
    task.join().await;
    assert_eq!(sink.writes().0, 3);
    rec.publish(
        &pod(Some("apps"), "web-0"),
        EventType::Normal,
        "Step",
        "Run",
        "late",
    );
    assert_eq!(
        rec.dropped(),
        1,
        "publishing after shutdown is counted as dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn vanished_event_is_created_again_with_its_series_when_the_patch_finds_it_gone() {
    let (rec, task, sink, shutdown) = start(config());
    let p = pod(Some("apps"), "web-0");
    rec.publish(&p, EventType::Normal, "Sync", "Reconcile", "synced");
    settle().await;
    let name = sink.events()[0].metadata.name.clone();
    sink.clear();
    rec.publish(&p, EventType::Normal, "Sync", "Reconcile", "synced");
    settle().await;
    // PATCH answered NotFound, then a create of the same Event carrying the series.
    let writes: Vec<SinkWrite> = sink.attempts().iter().map(|a| a.write).collect();
    assert_eq!(
        writes,
        [SinkWrite::Create, SinkWrite::PatchSeries, SinkWrite::Create]
    );
    let events = sink.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].metadata.name, name);
    assert_eq!(events[0].series.as_ref().map(|s| s.count), Some(2));
    // The series goes on against the recreated Event.
    rec.publish(&p, EventType::Normal, "Sync", "Reconcile", "synced");
    shutdown.cancel();
    task.join().await;
    assert_eq!(sink.events()[0].series.as_ref().map(|s| s.count), Some(3));
    assert_eq!((rec.failed(), rec.retries()), (0, 0));
}

const INTERVAL: Duration = Duration::from_secs(10);

/// The gaps between consecutive attempts.
fn gaps(sink: &InMemoryEventSink) -> Vec<Duration> {
    let at: Vec<_> = sink.attempts().iter().map(|a| a.at).collect();
    at.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn failed_create_is_retried_first_after_a_random_wait_then_every_interval_until_it_lands() {
    let (rec, task, sink, shutdown) = start(config());
    sink.fail_next(3, SinkFailure::Status(500));
    publish_sync(&rec);
    // 3 failures: at most 10 s + 10 s + 10 s of waiting.
    tokio::time::sleep(INTERVAL * 3).await;
    let attempts = sink.attempts();
    assert_eq!(
        attempts.iter().map(|a| a.ok).collect::<Vec<_>>(),
        [false, false, false, true]
    );
    assert!(attempts.iter().all(|a| a.write == SinkWrite::Create));
    let gaps = gaps(&sink);
    assert!(gaps[0] < INTERVAL, "first retry after {:?}", gaps[0]);
    assert_eq!(&gaps[1..], [INTERVAL, INTERVAL]);
    assert_eq!(sink.events().len(), 1);
    assert_eq!((rec.retries(), rec.failed()), (3, 0));
    shutdown.cancel();
    task.join().await;
}

#[tokio::test(start_paused = true)]
async fn transport_failures_and_429_are_retried_like_5xx() {
    let (rec, task, sink, shutdown) = start(config());
    sink.fail_next(1, SinkFailure::Transport);
    sink.fail_next(1, SinkFailure::Status(429));
    sink.fail_next(1, SinkFailure::Status(503));
    publish_sync(&rec);
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(sink.attempts().len(), 4);
    assert_eq!(sink.events().len(), 1);
    assert_eq!((rec.retries(), rec.failed()), (3, 0));
    shutdown.cancel();
    task.join().await;
}

#[tokio::test(start_paused = true)]
async fn a_write_is_abandoned_after_twelve_tries() {
    let (rec, task, sink, shutdown) = start(config());
    sink.fail_next(100, SinkFailure::Status(500));
    publish_sync(&rec);
    tokio::time::sleep(INTERVAL * 20).await;
    assert_eq!(sink.attempts().len(), 12);
    assert_eq!(&gaps(&sink)[1..], [INTERVAL; 10]);
    assert!(sink.events().is_empty());
    assert_eq!((rec.retries(), rec.failed()), (11, 1));
    shutdown.cancel();
    task.join().await;
}

#[tokio::test(start_paused = true)]
async fn refusals_that_would_fail_again_are_not_retried() {
    for code in [400, 403, 422] {
        let (rec, task, sink, shutdown) = start(config());
        sink.fail_next(1, SinkFailure::Status(code));
        rec.publish(
            &pod(Some("apps"), "web-0"),
            EventType::Normal,
            "Sync",
            "Run",
            "ok",
        );
        tokio::time::sleep(INTERVAL * 3).await;
        assert_eq!(sink.attempts().len(), 1, "code {code}");
        assert_eq!((rec.retries(), rec.failed()), (0, 1), "code {code}");
        shutdown.cancel();
        task.join().await;
    }
}

#[tokio::test(start_paused = true)]
async fn other_events_flow_while_one_waits_and_its_repeats_land_in_the_retried_create() {
    let (rec, task, sink, shutdown) = start(config());
    let web = pod(Some("apps"), "web-0");
    sink.fail_next(1, SinkFailure::Status(503));
    rec.publish(&web, EventType::Normal, "Sync", "Run", "ok");
    drain().await;
    assert_eq!(rec.retries(), 1);
    // While web-0's create waits: another object's event is written at once, and web-0's
    // repeats are only counted (no write, no second Event).
    rec.publish(
        &pod(Some("apps"), "db-0"),
        EventType::Normal,
        "Sync",
        "Run",
        "ok",
    );
    rec.publish(&web, EventType::Normal, "Sync", "Run", "ok");
    rec.publish(&web, EventType::Normal, "Sync", "Run", "ok");
    drain().await;
    assert_eq!(sink.attempts().len(), 2);
    assert_eq!(sink.events().len(), 1);
    tokio::time::sleep(INTERVAL).await;
    let events = sink.events();
    assert_eq!(events.len(), 2);
    let web_event = events
        .iter()
        .find(|e| e.regarding.as_ref().unwrap().name.as_deref() == Some("web-0"))
        .unwrap();
    assert_eq!(web_event.series.as_ref().map(|s| s.count), Some(3));
    assert_eq!(sink.attempts().len(), 3);
    assert_eq!((rec.retries(), rec.failed()), (1, 0));
    shutdown.cancel();
    task.join().await;
}

#[tokio::test(start_paused = true)]
async fn failed_series_patch_is_retried_with_the_latest_count() {
    let (rec, task, sink, shutdown) = start(config());
    let p = pod(Some("apps"), "web-0");
    rec.publish(&p, EventType::Normal, "Sync", "Run", "ok");
    drain().await;
    sink.fail_next(1, SinkFailure::Status(500));
    rec.publish(&p, EventType::Normal, "Sync", "Run", "ok");
    drain().await;
    rec.publish(&p, EventType::Normal, "Sync", "Run", "ok");
    tokio::time::sleep(INTERVAL).await;
    let writes: Vec<(SinkWrite, bool)> = sink.attempts().iter().map(|a| (a.write, a.ok)).collect();
    assert_eq!(
        writes,
        [
            (SinkWrite::Create, true),
            (SinkWrite::PatchSeries, false),
            (SinkWrite::PatchSeries, true)
        ]
    );
    assert_eq!(sink.events()[0].series.as_ref().map(|s| s.count), Some(3));
    shutdown.cancel();
    task.join().await;
}

#[tokio::test(start_paused = true)]
async fn waiting_writes_are_bounded_and_the_excess_is_abandoned() {
    let (rec, task, sink, shutdown) = start(RecorderConfig {
        retry_capacity: 2,
        ..config()
    });
    sink.fail_next(3, SinkFailure::Status(503));
    for name in ["a", "b", "c"] {
        rec.publish(
            &pod(Some("apps"), name),
            EventType::Normal,
            "Sync",
            "Run",
            "ok",
        );
    }
    drain().await;
    assert_eq!((rec.retries(), rec.failed()), (2, 1));
    tokio::time::sleep(INTERVAL).await;
    assert_eq!(sink.events().len(), 2);
    assert_eq!(sink.attempts().len(), 5);
    shutdown.cancel();
    task.join().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_abandons_waiting_retries_without_waiting_for_them() {
    let (rec, task, sink, shutdown) = start(config());
    sink.fail_next(1, SinkFailure::Status(503));
    publish_sync(&rec);
    drain().await;
    assert_eq!(rec.retries(), 1);
    let before = tokio::time::Instant::now();
    shutdown.cancel();
    task.join().await;
    assert_eq!(
        tokio::time::Instant::now(),
        before,
        "join waited for the retry timer"
    );
    assert_eq!(sink.attempts().len(), 1);
    assert_eq!(rec.failed(), 1);
}

#[test]
fn transient_errors_are_transport_failures_429_and_5xx_only() {
    use reflex_runtime::events::EventError;
    let api = |code: u16| EventError::Api {
        namespace: "apps".into(),
        name: "e".into(),
        source: Box::new(kube::Error::Api(
            kube::core::Status::failure("test", "Test")
                .with_code(code)
                .boxed(),
        )),
    };
    let cases: Vec<(&str, EventError, bool)> = vec![
        ("400", api(400), false),
        ("403", api(403), false),
        ("409", api(409), false),
        ("422", api(422), false),
        ("429", api(429), true),
        ("500", api(500), true),
        ("503", api(503), true),
        ("504", api(504), true),
        (
            "transport",
            EventError::Api {
                namespace: "apps".into(),
                name: "e".into(),
                source: Box::new(kube::Error::Service(Box::new(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "reset",
                )))),
            },
            true,
        ),
        (
            "serialization",
            EventError::Api {
                namespace: "apps".into(),
                name: "e".into(),
                source: Box::new(kube::Error::SerdeError(
                    serde_json::from_str::<u8>("x").unwrap_err(),
                )),
            },
            false,
        ),
        (
            "not found",
            EventError::NotFound {
                namespace: "apps".into(),
                name: "e".into(),
            },
            false,
        ),
        (
            "already exists",
            EventError::AlreadyExists {
                namespace: "apps".into(),
                name: "e".into(),
            },
            false,
        ),
    ];
    for (name, error, transient) in cases {
        assert_eq!(error.is_transient(), transient, "{name}");
    }
}
