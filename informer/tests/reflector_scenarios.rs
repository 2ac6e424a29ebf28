//! Reflector scenarios against the in-memory source: list/watch bookkeeping, pagination,
//! streaming lists, and scripted faults. Every scenario ends by checking the convergence
//! invariant: the sink's state equals the source's, key for key and resourceVersion for
//! resourceVersion.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ObjectMeta;
use parking_lot::Mutex;
use reflex_informer::fifo::{FifoError, ReflectorSink};
use reflex_informer::key::ObjectKey;
use reflex_informer::reflector::{Reflector, ReflectorError, ReflectorHandle, ReflectorOptions};
use reflex_informer::source::memory::{MemorySource, RecordedRequest};
use reflex_informer::source::{ApiStatus, ListParams, SourceError, WatchParams};
use reflex_informer::sync_state::{SyncFailure, SyncState};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One call the Reflector made into the sink.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Add(String),
    Update(String),
    Delete(String),
    Begin,
    Page(usize),
    Done(String),
    Bookmark(String),
}

/// A sink that applies calls to a map the way the DeltaFIFO + store would, and records them.
#[derive(Default)]
struct RecordingSink {
    state: Mutex<BTreeMap<ObjectKey, Arc<ConfigMap>>>,
    seen: Mutex<BTreeSet<ObjectKey>>,
    calls: Mutex<Vec<Call>>,
}

fn key(cm: &ConfigMap) -> Result<ObjectKey, FifoError> {
    Ok(ObjectKey::from_resource(cm)?)
}

impl ReflectorSink<ConfigMap> for RecordingSink {
    fn add(&self, obj: Arc<ConfigMap>) -> Result<(), FifoError> {
        let k = key(&obj)?;
        self.calls.lock().push(Call::Add(k.to_string()));
        self.state.lock().insert(k, obj);
        Ok(())
    }
    fn update(&self, obj: Arc<ConfigMap>) -> Result<(), FifoError> {
        let k = key(&obj)?;
        self.calls.lock().push(Call::Update(k.to_string()));
        self.state.lock().insert(k, obj);
        Ok(())
    }
    fn delete(&self, obj: Arc<ConfigMap>) -> Result<(), FifoError> {
        let k = key(&obj)?;
        self.calls.lock().push(Call::Delete(k.to_string()));
        self.state.lock().remove(&k);
        Ok(())
    }
    fn replace_begin(&self) {
        self.calls.lock().push(Call::Begin);
        self.seen.lock().clear();
    }
    fn replace_page(&self, items: Vec<Arc<ConfigMap>>) -> Result<(), FifoError> {
        self.calls.lock().push(Call::Page(items.len()));
        let mut state = self.state.lock();
        let mut seen = self.seen.lock();
        for obj in items {
            let k = key(&obj)?;
            seen.insert(k.clone());
            state.insert(k, obj);
        }
        Ok(())
    }
    fn replace_done(&self, resource_version: &str) -> Result<(), FifoError> {
        self.calls
            .lock()
            .push(Call::Done(resource_version.to_owned()));
        let seen = self.seen.lock();
        self.state.lock().retain(|k, _| seen.contains(k));
        Ok(())
    }
    fn bookmark(&self, resource_version: &str) {
        self.calls
            .lock()
            .push(Call::Bookmark(resource_version.to_owned()));
    }
}

impl RecordingSink {
    fn versions(&self) -> BTreeMap<String, String> {
        versions(&self.state.lock())
    }
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }
}

fn versions(map: &BTreeMap<ObjectKey, Arc<ConfigMap>>) -> BTreeMap<String, String> {
    map.iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                v.metadata.resource_version.clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn cm(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            namespace: Some("ns".into()),
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some([("v".to_owned(), value.to_owned())].into()),
        ..Default::default()
    }
}

fn ns_key(name: &str) -> ObjectKey {
    ObjectKey::new(Some("ns"), name)
}

struct Running {
    source: MemorySource<ConfigMap>,
    sink: Arc<RecordingSink>,
    handle: ReflectorHandle,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    errors: Arc<Mutex<Vec<String>>>,
}

/// The Reflector's options with paged lists: these scenarios script the list-then-watch path
/// (lists that fail, page, expire); the streaming-list scenarios set `streaming_lists: true`.
fn paged() -> ReflectorOptions {
    ReflectorOptions {
        streaming_lists: false,
        ..ReflectorOptions::default()
    }
}

fn start(source: &MemorySource<ConfigMap>, options: ReflectorOptions) -> Running {
    let sink = Arc::new(RecordingSink::default());
    let mut reflector = Reflector::new(Arc::new(source.clone()), sink.clone(), options);
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    reflector.set_watch_error_handler(Arc::new(move |e: &ReflectorError| {
        seen.lock().push(e.to_string());
    }));
    let handle = reflector.handle();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(reflector.run(shutdown.clone()));
    Running {
        source: source.clone(),
        sink,
        handle,
        shutdown,
        task,
        errors,
    }
}

/// Polls `cond` on the (paused) tokio clock, 10 ms per step, for at most a simulated minute.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..6_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

impl Running {
    /// Waits for convergence, asserts it, and that the Reflector is watching again.
    async fn assert_converges(&self) {
        wait_until("the sink converges to the source", || {
            self.sink.versions() == versions(&self.source.objects())
        })
        .await;
        assert_eq!(self.sink.versions(), versions(&self.source.objects()));
    }

    async fn wait_watching(&self) {
        wait_until("a watch is open", || self.source.open_watches() > 0).await;
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("reflector task panicked");
    }

    fn lists(&self) -> Vec<ListParams> {
        self.source
            .requests()
            .into_iter()
            .filter_map(|r| match r {
                RecordedRequest::List(p) => Some(p),
                RecordedRequest::Watch(_) => None,
            })
            .collect()
    }

    fn watches(&self) -> Vec<WatchParams> {
        self.source
            .requests()
            .into_iter()
            .filter_map(|r| match r {
                RecordedRequest::Watch(p) => Some(p),
                RecordedRequest::List(_) => None,
            })
            .collect()
    }
}

fn gone() -> SourceError {
    SourceError::Status(ApiStatus::gone("too old resource version: 1 (100)"))
}

#[tokio::test(start_paused = true)]
async fn first_list_reads_rv_zero_then_watches_from_the_list_rv_with_bookmarks() {
    let source = MemorySource::new();
    for name in ["a", "b", "c"] {
        source.apply(cm(name, "1")).unwrap();
    }
    let r = start(&source, paged());
    r.wait_watching().await;
    assert_eq!(r.handle.last_sync_resource_version(), "3");
    let lists = r.lists();
    assert_eq!(lists.len(), 1);
    assert_eq!(lists[0].resource_version.as_deref(), Some("0"));
    assert_eq!(lists[0].limit, Some(500));
    let watch = &r.watches()[0];
    assert_eq!(watch.resource_version, "3");
    assert!(watch.allow_bookmarks && !watch.send_initial_events);
    let timeout = watch.timeout_seconds.unwrap();
    assert!((300..=600).contains(&timeout), "timeout {timeout}");

    source.apply(cm("a", "2")).unwrap();
    source.delete(&ns_key("b")).unwrap();
    source.apply(cm("d", "1")).unwrap();
    r.assert_converges().await;
    assert_eq!(r.handle.last_sync_resource_version(), "6");
    assert_eq!(r.handle.relists(), 1);
    let calls = r.sink.calls();
    assert_eq!(
        calls,
        [
            Call::Begin,
            Call::Page(3),
            Call::Done("3".into()),
            Call::Update("ns/a".into()),
            Call::Delete("ns/b".into()),
            Call::Add("ns/d".into()),
        ]
    );
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn paged_list_pushes_each_page_into_the_sink_as_it_arrives() {
    let source = MemorySource::new();
    for i in 0..1200 {
        source.apply(cm(&format!("o{i:04}"), "1")).unwrap();
    }
    let r = start(&source, paged());
    r.wait_watching().await;
    assert_eq!(
        r.sink.calls(),
        [
            Call::Begin,
            Call::Page(500),
            Call::Page(500),
            Call::Page(200),
            Call::Done("1200".into())
        ]
    );
    let lists = r.lists();
    assert_eq!(lists.len(), 3);
    assert!(lists[1].continue_token.is_some() && lists[1].resource_version.is_none());
    r.assert_converges().await;
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn expired_continue_token_restarts_a_full_list_at_the_original_rv() {
    let source = MemorySource::new();
    for i in 0..7 {
        source.apply(cm(&format!("o{i}"), "1")).unwrap();
    }
    source.fail_list_page(2, gone());
    let r = start(
        &source,
        ReflectorOptions {
            page_size: Some(3),
            ..paged()
        },
    );
    r.wait_watching().await;
    let lists = r.lists();
    assert_eq!(lists.len(), 3, "{lists:?}");
    assert_eq!(lists[2].limit, None);
    assert_eq!(lists[2].resource_version.as_deref(), Some("0"));
    assert_eq!(lists[2].continue_token, None);
    assert_eq!(
        r.sink.calls(),
        [
            Call::Begin,
            Call::Page(3),
            Call::Begin,
            Call::Page(7),
            Call::Done("7".into())
        ]
    );
    assert!(r.errors.lock().is_empty());
    r.assert_converges().await;
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn list_with_unavailable_rv_retries_at_once_as_a_consistent_read() {
    let too_large = {
        let mut s = ApiStatus::new(504, "Timeout", "Too large resource version: 9, current: 3");
        s.causes.push("ResourceVersionTooLarge".into());
        SourceError::Status(s)
    };
    for (case, error) in [("410", gone()), ("too large", too_large)] {
        let source = MemorySource::new();
        source.apply(cm("a", "1")).unwrap();
        source.fail_next_list(error);
        let r = start(&source, paged());
        r.wait_watching().await;
        let rvs: Vec<_> = r
            .lists()
            .iter()
            .map(|l| l.resource_version.clone().unwrap_or_default())
            .collect();
        assert_eq!(rvs, ["0", ""], "{case}");
        assert_eq!(r.handle.errors(), 0, "{case}");
        r.assert_converges().await;
        r.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn watch_closed_every_few_events_resumes_from_the_last_rv_without_relisting() {
    let source = MemorySource::new();
    source.apply(cm("a", "0")).unwrap();
    let r = start(&source, paged());
    r.wait_watching().await;
    source.close_watches_every(Some(3));
    for i in 1..=20 {
        source
            .apply(cm(&format!("o{}", i % 5), &i.to_string()))
            .unwrap();
        if i % 4 == 0 {
            source.delete(&ns_key(&format!("o{}", i % 5)));
        }
        tokio::task::yield_now().await;
    }
    r.assert_converges().await;
    assert_eq!(r.handle.relists(), 1);
    assert!(
        r.handle.watch_restarts() >= 5,
        "{}",
        r.handle.watch_restarts()
    );
    let rvs: Vec<u64> = r
        .watches()
        .iter()
        .map(|w| w.resource_version.parse().unwrap())
        .collect();
    assert!(rvs.windows(2).all(|w| w[0] < w[1]), "{rvs:?}");
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn expired_error_event_relists_from_the_last_synced_rv() {
    let source = MemorySource::new();
    source.apply(cm("a", "1")).unwrap();
    let r = start(&source, paged());
    r.wait_watching().await;
    source.apply(cm("b", "1")).unwrap();
    wait_until("b is seen", || r.handle.last_sync_resource_version() == "2").await;
    source.inject_watch_error(ApiStatus::gone("too old resource version: 2 (5)"));
    source.delete(&ns_key("a")).unwrap();
    source.apply(cm("c", "1")).unwrap();
    r.assert_converges().await;
    assert_eq!(r.handle.relists(), 2);
    let lists = r.lists();
    assert_eq!(lists[1].resource_version.as_deref(), Some("2"));
    assert_eq!(lists[1].limit, None, "a list at a specific rv is not paged");
    assert_eq!(r.errors.lock().len(), 1);
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn watch_from_a_compacted_rv_relists() {
    let source = MemorySource::new();
    source.apply(cm("a", "1")).unwrap();
    source.fail_next_watch(gone());
    let r = start(&source, paged());
    wait_until("relisted", || r.handle.relists() == 2).await;
    r.wait_watching().await;
    source.apply(cm("a", "2")).unwrap();
    r.assert_converges().await;
    assert!(r.errors.lock()[0].contains("watch failed"));
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn history_compaction_during_a_disconnect_converges_through_a_relist() {
    let source = MemorySource::new();
    source.set_history_limit(2);
    source.apply(cm("a", "1")).unwrap();
    let r = start(&source, paged());
    r.wait_watching().await;
    source.apply(cm("b", "1")).unwrap();
    wait_until("b is seen", || r.handle.last_sync_resource_version() == "2").await;
    source.close_watches();
    for i in 0..6 {
        source.apply(cm(&format!("n{i}"), "1")).unwrap();
    }
    source.delete(&ns_key("a")).unwrap();
    r.assert_converges().await;
    assert_eq!(r.handle.relists(), 2);
    let watches = r.watches();
    assert_eq!(
        watches[1].resource_version, "2",
        "re-watched from the last rv"
    );
    assert_eq!(
        r.errors.lock().len(),
        1,
        "the 410 ERROR event ended the round"
    );
    assert_eq!(r.lists()[1].resource_version.as_deref(), Some("2"));
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn malformed_event_is_counted_and_the_watch_restarted_without_relisting() {
    let source = MemorySource::new();
    source.apply(cm("a", "1")).unwrap();
    let r = start(&source, paged());
    r.wait_watching().await;
    source.inject_malformed_event();
    source.apply(cm("a", "2")).unwrap();
    source.apply(cm("b", "1")).unwrap();
    r.assert_converges().await;
    assert_eq!(r.handle.malformed_events(), 1);
    assert_eq!(r.handle.relists(), 1);
    assert!(r.handle.watch_restarts() >= 1);
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn bookmarks_advance_the_rv_and_reach_only_the_sink_bookmark() {
    let source = MemorySource::new();
    source.apply(cm("a", "1")).unwrap();
    let r = start(&source, paged());
    r.wait_watching().await;
    source.advance();
    source.advance();
    source.bookmark();
    wait_until("the bookmark is seen", || {
        r.handle.last_sync_resource_version() == "3"
    })
    .await;
    assert_eq!(
        r.sink.calls()[3..],
        [Call::Bookmark("3".into())],
        "a bookmark changes no object"
    );
    source.close_watches_every(Some(1));
    source.apply(cm("b", "1")).unwrap();
    wait_until("b is seen", || r.handle.last_sync_resource_version() == "4").await;
    r.wait_watching().await;
    assert_eq!(r.watches().last().unwrap().resource_version, "4");
    r.assert_converges().await;
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn silent_watch_is_presumed_dead_and_restarted_after_its_timeout_and_margin() {
    let source = MemorySource::new();
    source.apply(cm("a", "1")).unwrap();
    let r = start(&source, paged());
    r.wait_watching().await;
    let timeout = u64::from(r.watches()[0].timeout_seconds.unwrap());
    tokio::time::sleep(Duration::from_secs(timeout + 29)).await;
    assert_eq!(r.handle.idle_watches(), 0, "not before timeout + margin");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(r.handle.idle_watches(), 1);
    wait_until("a second watch", || r.watches().len() == 2).await;
    assert_eq!(r.watches()[1].resource_version, "1");
    assert_eq!(r.handle.relists(), 1);
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn streaming_list_syncs_from_initial_events_and_keeps_the_stream_as_the_watch() {
    let source = MemorySource::new();
    for name in ["a", "b"] {
        source.apply(cm(name, "1")).unwrap();
    }
    let r = start(
        &source,
        ReflectorOptions {
            streaming_lists: true,
            ..paged()
        },
    );
    wait_until("synced", || r.handle.relists() == 1).await;
    assert!(r.lists().is_empty());
    let watches = r.watches();
    assert_eq!(watches.len(), 1);
    assert!(watches[0].send_initial_events && watches[0].allow_bookmarks);
    assert_eq!(watches[0].resource_version, "");
    source.apply(cm("c", "1")).unwrap();
    source.delete(&ns_key("a")).unwrap();
    r.assert_converges().await;
    assert_eq!(r.watches().len(), 1, "the streaming watch carries on");
    assert_eq!(
        r.sink.calls()[..3],
        [Call::Begin, Call::Page(2), Call::Done("2".into())]
    );
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_bounded_list_backlog_lists_in_pages_even_with_streaming_lists_on() {
    let source = MemorySource::new();
    for i in 0..5 {
        source.apply(cm(&format!("o{i}"), "1")).unwrap();
    }
    let r = start(
        &source,
        ReflectorOptions {
            streaming_lists: true,
            list_backlog: Some(2),
            page_size: Some(2),
            ..paged()
        },
    );
    r.wait_watching().await;
    // A streaming list cannot be paced, so the bound takes the paged path.
    assert_eq!(r.lists().len(), 3, "{:?}", r.lists());
    assert!(r.watches().iter().all(|w| !w.send_initial_events));
    r.assert_converges().await;
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn refused_streaming_list_falls_back_to_list_then_watch() {
    let source = MemorySource::new();
    source.apply(cm("a", "1")).unwrap();
    source.reject_streaming_lists(true);
    let r = start(
        &source,
        ReflectorOptions {
            streaming_lists: true,
            ..paged()
        },
    );
    r.wait_watching().await;
    assert_eq!(r.lists().len(), 1);
    source.apply(cm("b", "1")).unwrap();
    r.assert_converges().await;
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn every_failed_round_reaches_the_watch_error_handler_and_retries() {
    let source = MemorySource::new();
    source.apply(cm("a", "1")).unwrap();
    for _ in 0..3 {
        source.fail_next_list(SourceError::Status(ApiStatus::new(
            500,
            "InternalError",
            "boom",
        )));
    }
    let r = start(&source, paged());
    r.wait_watching().await;
    assert_eq!(r.errors.lock().len(), 3);
    assert_eq!(r.handle.errors(), 3);
    assert_eq!(r.lists().len(), 4);
    r.assert_converges().await;
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn run_returns_promptly_after_cancellation_during_backoff() {
    let source = MemorySource::new();
    for _ in 0..10 {
        source.fail_next_list(SourceError::Status(ApiStatus::new(
            503,
            "ServiceUnavailable",
            "",
        )));
    }
    let r = start(&source, paged());
    wait_until("first failure", || r.handle.errors() >= 1).await;
    let before = tokio::time::Instant::now();
    r.shutdown.cancel();
    r.task.await.unwrap();
    assert_eq!(
        tokio::time::Instant::now(),
        before,
        "no time passed while stopping"
    );
}

#[tokio::test(start_paused = true)]
async fn paged_rv_zero_list_makes_later_relists_paged_too() {
    let source = MemorySource::new();
    for i in 0..600 {
        source.apply(cm(&format!("o{i:03}"), "1")).unwrap();
    }
    let r = start(&source, paged());
    r.wait_watching().await;
    source.inject_watch_error(ApiStatus::gone("too old resource version"));
    wait_until("relisted", || r.handle.relists() == 2).await;
    let lists = r.lists();
    assert_eq!(lists.len(), 4, "two pages per list");
    assert_eq!(lists[2].resource_version.as_deref(), Some("600"));
    assert_eq!(
        lists[2].limit,
        Some(500),
        "the server has no watch cache: keep paging"
    );
    r.assert_converges().await;
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn too_many_requests_on_watch_backs_off_and_rewatches_without_relisting() {
    let source = MemorySource::new();
    source.apply(cm("a", "1")).unwrap();
    source.fail_next_watch(SourceError::Status(ApiStatus::new(
        429,
        "TooManyRequests",
        "slow down",
    )));
    let started = tokio::time::Instant::now();
    let r = start(&source, paged());
    r.wait_watching().await;
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "backed off"
    );
    assert_eq!(r.handle.relists(), 1);
    assert_eq!(r.watches().len(), 2);
    assert!(r.errors.lock().is_empty());
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn streaming_list_honours_changes_during_initial_events_and_retries_expired_rv_consistently()
{
    let source = MemorySource::new();
    source.apply(cm("a", "1")).unwrap();
    let r = start(
        &source,
        ReflectorOptions {
            streaming_lists: true,
            ..paged()
        },
    );
    wait_until("synced", || r.handle.relists() == 1).await;
    // Force a new round whose streaming list at the last rv is refused as expired.
    source.fail_next_watch(gone());
    source.inject_watch_error(ApiStatus::gone("too old resource version"));
    source.apply(cm("b", "1")).unwrap();
    wait_until("resynced", || r.handle.relists() == 2).await;
    let rvs: Vec<_> = r
        .watches()
        .iter()
        .map(|w| (w.resource_version.clone(), w.send_initial_events))
        .collect();
    assert_eq!(
        rvs,
        [
            (String::new(), true),
            ("1".to_owned(), true),
            (String::new(), true)
        ]
    );
    r.assert_converges().await;
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn cancelled_before_running_makes_no_request() {
    let source = MemorySource::<ConfigMap>::new();
    let sink = Arc::new(RecordingSink::default());
    let reflector = Reflector::new(Arc::new(source.clone()), sink, paged());
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    reflector.run(shutdown).await;
    assert!(source.requests().is_empty());
}

#[tokio::test(start_paused = true)]
async fn watch_closed_at_once_without_events_counts_as_a_failure_and_relists() {
    let source = MemorySource::new();
    source.apply(cm("a", "1")).unwrap();
    let r = start(&source, paged());
    r.wait_watching().await;
    source.close_watches();
    wait_until("relisted", || r.handle.relists() == 2).await;
    assert!(r.errors.lock()[0].contains("without any event"));
    r.wait_watching().await;
    source.apply(cm("b", "1")).unwrap();
    r.assert_converges().await;
    r.stop().await;
}

/// A Reflector listing into a real DeltaFifo (no known objects), and what it reported.
struct Paged {
    source: MemorySource<ConfigMap>,
    fifo: Arc<reflex_informer::delta_fifo::DeltaFifo<ConfigMap>>,
    errors: Arc<Mutex<Vec<String>>>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

/// `objects` ConfigMaps listed in pages of 2 by a Reflector with `list_backlog: Some(backlog)`.
fn paged_into_fifo(objects: usize, backlog: usize) -> Paged {
    let source = MemorySource::new();
    for i in 0..objects {
        source.apply(cm(&format!("o{i}"), "1")).unwrap();
    }
    let fifo = Arc::new(reflex_informer::delta_fifo::DeltaFifo::new(None));
    let mut reflector = Reflector::new(
        Arc::new(source.clone()),
        fifo.clone(),
        ReflectorOptions {
            page_size: Some(2),
            list_backlog: Some(backlog),
            ..paged()
        },
    );
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    reflector.set_watch_error_handler(Arc::new(move |e: &ReflectorError| {
        seen.lock().push(e.to_string());
    }));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(reflector.run(shutdown.clone()));
    Paged {
        source,
        fifo,
        errors,
        shutdown,
        task,
    }
}

#[tokio::test(start_paused = true)]
async fn list_backlog_holds_back_the_next_page_until_the_fifo_drains() {
    let Paged {
        source,
        fifo,
        shutdown,
        task,
        ..
    } = paged_into_fifo(7, 3);
    let lists = |source: &MemorySource<ConfigMap>| {
        source
            .requests()
            .iter()
            .filter(|r| matches!(r, RecordedRequest::List(_)))
            .count()
    };
    // Page 1 leaves 2 keys queued (< 3): page 2 is fetched; then 4 are queued and it waits.
    wait_until("two pages listed", || fifo.len() == 4).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(lists(&source), 2, "no third page while 4 keys wait");
    let mut popped = Vec::new();
    let pop = async || {
        fifo.pop(|p| Ok(p.key.to_string()))
            .await
            .expect("pop succeeds")
    };
    popped.push(pop().await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(lists(&source), 2, "3 keys still wait: not below the bound");
    popped.push(pop().await);
    wait_until("third page listed", || lists(&source) == 3).await;
    while popped.len() < 7 {
        popped.push(pop().await);
    }
    wait_until("the list completes and a watch opens", || {
        source.open_watches() > 0
    })
    .await;
    assert_eq!(lists(&source), 4, "7 objects in pages of 2");
    assert_eq!(
        popped,
        (0..7).map(|i| format!("ns/o{i}")).collect::<Vec<_>>(),
        "every listed object reached the FIFO once, in order"
    );
    assert!(fifo.has_synced());
    shutdown.cancel();
    task.await.expect("reflector task panicked");
}

#[tokio::test(start_paused = true)]
async fn a_closed_fifo_releases_a_reflector_waiting_for_room() {
    let Paged {
        fifo,
        errors,
        shutdown,
        task,
        ..
    } = paged_into_fifo(6, 1);
    wait_until("the first page is queued", || fifo.len() == 2).await;
    fifo.close();
    // Released, the reflector fetches the next page and the closed FIFO refuses it.
    wait_until("the refused write is reported", || {
        !errors.lock().is_empty()
    })
    .await;
    assert!(
        errors.lock()[0].contains("sink refused"),
        "{:?}",
        errors.lock()
    );
    shutdown.cancel();
    task.await.expect("reflector task panicked");
}

#[tokio::test(start_paused = true)]
async fn a_zero_list_backlog_waits_for_an_empty_queue_instead_of_forever() {
    let Paged {
        source,
        fifo,
        shutdown,
        task,
        ..
    } = paged_into_fifo(4, 0);
    for i in 0..4 {
        tokio::time::timeout(Duration::from_secs(60), fifo.pop(|_| Ok(())))
            .await
            .unwrap_or_else(|_| panic!("object {i} never listed: the reflector waits forever"))
            .expect("pop succeeds");
    }
    wait_until("the list completes and a watch opens", || {
        source.open_watches() > 0
    })
    .await;
    assert!(fifo.has_synced());
    shutdown.cancel();
    task.await.expect("reflector task panicked");
}

fn throttled(retry_after: Option<Duration>) -> ApiStatus {
    let mut status = ApiStatus::new(429, "TooManyRequests", "the server is busy");
    status.retry_after = retry_after;
    status
}

#[tokio::test(start_paused = true)]
async fn a_429_error_event_inside_a_watch_rewatches_from_the_last_rv_after_retry_after_without_relisting()
 {
    let source = MemorySource::new();
    source.apply(cm("a", "1")).unwrap();
    let r = start(&source, paged());
    r.wait_watching().await;
    source.apply(cm("b", "1")).unwrap();
    wait_until("b is seen", || r.handle.last_sync_resource_version() == "2").await;
    let calls_before = r.sink.calls().len();
    let mut states = r.handle.subscribe_sync_state();
    let injected = tokio::time::Instant::now();
    source.inject_watch_error(throttled(Some(Duration::from_secs(20))));
    let failing = states
        .wait_for(|s| s.failure().is_some())
        .await
        .unwrap()
        .clone();
    match &failing {
        SyncState::Failing {
            cause: SyncFailure::TooManyRequests { retry_after },
            last_sync: Some(_),
            next_retry: Some(at),
            ..
        } => {
            assert_eq!(*retry_after, Some(Duration::from_secs(20)));
            assert!(*at >= injected + Duration::from_secs(20), "{failing:?}");
        }
        other => panic!("expected a throttled, still synced reflector: {other:?}"),
    }
    assert!(failing.has_synced(), "a throttled watch keeps the sync");
    wait_until("watching again", || r.watches().len() == 2).await;
    assert!(
        injected.elapsed() >= Duration::from_secs(20),
        "Retry-After honoured: re-watched after {:?}",
        injected.elapsed()
    );
    assert_eq!(r.watches()[1].resource_version, "2", "from the last rv");
    assert_eq!(r.handle.relists(), 1, "no relist");
    assert!(r.errors.lock().is_empty(), "the round did not end");
    assert_eq!(
        r.sink.calls().len(),
        calls_before,
        "nothing reached the sink: no Replace, no events"
    );
    states.wait_for(SyncState::is_current).await.unwrap();
    source.apply(cm("c", "1")).unwrap();
    r.assert_converges().await;
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_429_list_waits_for_retry_after_and_the_state_names_the_cause_until_synced() {
    let source = MemorySource::new();
    source.apply(cm("a", "1")).unwrap();
    source.fail_next_list(SourceError::Status(throttled(Some(Duration::from_secs(
        45,
    )))));
    let started = tokio::time::Instant::now();
    let r = start(&source, paged());
    let mut states = r.handle.subscribe_sync_state();
    let failing = states
        .wait_for(|s| s.failure().is_some())
        .await
        .unwrap()
        .clone();
    assert_eq!(
        failing.failure(),
        Some(&SyncFailure::TooManyRequests {
            retry_after: Some(Duration::from_secs(45))
        })
    );
    assert!(!failing.has_synced());
    states.wait_for(SyncState::is_current).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(45),
        "listed again after {:?}",
        started.elapsed()
    );
    assert_eq!(r.lists().len(), 2);
    r.assert_converges().await;
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_list_is_reported_with_attempts_and_recovers_by_itself() {
    let source = MemorySource::new();
    source.apply(cm("a", "1")).unwrap();
    for _ in 0..3 {
        source.fail_next_list(SourceError::Status(ApiStatus::new(
            403,
            "Forbidden",
            "configmaps is forbidden",
        )));
    }
    let r = start(&source, paged());
    let mut states = r.handle.subscribe_sync_state();
    let third = states
        .wait_for(|s| matches!(s, SyncState::Failing { attempts: 3, .. }))
        .await
        .unwrap()
        .clone();
    match third.failure() {
        Some(SyncFailure::Forbidden {
            verb: "list",
            resource,
            namespace: None,
            ..
        }) => assert_eq!(resource, "memory"),
        other => panic!("{other:?}"),
    }
    let synced = states
        .wait_for(SyncState::is_current)
        .await
        .unwrap()
        .clone();
    assert!(
        matches!(&synced, SyncState::Synced { resource_version, .. } if resource_version == "1"),
        "{synced:?}"
    );
    r.assert_converges().await;
    r.stop().await;
}
