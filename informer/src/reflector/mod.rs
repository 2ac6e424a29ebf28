//! The Reflector: keeps a [`ReflectorSink`] in step with the API server by list-then-watch.
//!
//! A Reflector lists a resource (page by page, each page pushed into the sink as it arrives, so
//! the whole list is never held in memory), then watches from the list's resourceVersion. It
//! keeps the last resourceVersion it has seen and uses it to resume:
//!
//! - a watch that ends cleanly (a server timeout) is restarted at once from that resourceVersion,
//!   without relisting;
//! - a `410 Gone` / `Expired` (as an HTTP status or a watch `ERROR` event) means the server no
//!   longer has the history: the Reflector relists, then watches again;
//! - bookmarks advance the resourceVersion (and reach the sink's `bookmark`), never handlers;
//! - a malformed event is logged and counted and the watch restarted after a backoff; an object
//!   the sink cannot key is logged, counted and skipped;
//! - a watch that delivers nothing, not even a bookmark, for longer than its server timeout plus
//!   a margin is presumed dead (a half-open connection) and restarted;
//! - a `429 TooManyRequests`, refusing a watch or sent as an `ERROR` event inside one, is waited
//!   out (the backoff, or the server's `Retry-After` if longer) and the watch resumed from the
//!   last resourceVersion, without a relist and without a word to handlers: under API Priority
//!   and Fairness a relist per 429 would be a relist storm;
//! - every other failure goes to the watch error handler, then the Reflector backs off
//!   exponentially with jitter (800 ms doubling up to 30 s, reset after 2 minutes, at least the
//!   server's `Retry-After`) and relists.
//!
//! Every step is published as a [`SyncState`](crate::sync_state::SyncState) on
//! [`ReflectorHandle::sync_state`]: listing, synced, or failing with a typed cause.
//!
//! The resourceVersion rules follow client-go's reflector: the first list asks for `"0"` (any
//! state, from the API server's watch cache), later relists for "not older than the last
//! resourceVersion seen", and a relist that fails with 410 or "too large resource version" is
//! retried at once as a consistent read (`""`). With [`ReflectorOptions::streaming_lists`]
//! (the default, as client-go's since v0.35) the list is a watch with
//! `sendInitialEvents=true`, ended by the initial-events-end bookmark: one request instead of
//! pages, served from the watch cache. The Reflector then lists in pages instead when the server refuses it (in that round; the next
//! relist asks again, as client-go's does), for one round after a streaming list that ended
//! before its bookmark (cut, or carrying an event it could not decode), and
//! whenever [`ReflectorOptions::list_backlog`] bounds the backlog (a streaming list cannot be
//! paced: the server ends a watcher that falls behind).
//!
//! The Reflector never panics and never stops on its own: [`Reflector::run`] returns only when
//! its shutdown token is cancelled, and then promptly, abandoning any request in flight.
//!
//! ```
//! use std::sync::Arc;
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use reflex_informer::fifo::{FifoError, ReflectorSink};
//! use reflex_informer::reflector::{Reflector, ReflectorOptions};
//! use reflex_informer::source::memory::MemorySource;
//! use tokio_util::sync::CancellationToken;
//!
//! struct Count(parking_lot::Mutex<usize>);
//! impl ReflectorSink<ConfigMap> for Count {
//!     fn add(&self, _: Arc<ConfigMap>) -> Result<(), FifoError> { *self.0.lock() += 1; Ok(()) }
//!     fn update(&self, _: Arc<ConfigMap>) -> Result<(), FifoError> { Ok(()) }
//!     fn delete(&self, _: Arc<ConfigMap>) -> Result<(), FifoError> { Ok(()) }
//!     fn replace_begin(&self) {}
//!     fn replace_page(&self, items: Vec<Arc<ConfigMap>>) -> Result<(), FifoError> {
//!         *self.0.lock() += items.len(); Ok(())
//!     }
//!     fn replace_done(&self, _: &str) -> Result<(), FifoError> { Ok(()) }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let source = MemorySource::<ConfigMap>::new();
//! let sink = Arc::new(Count(parking_lot::Mutex::new(0)));
//! let reflector = Reflector::new(Arc::new(source.clone()), sink.clone(), ReflectorOptions::default());
//! let handle = reflector.handle();
//! let shutdown = CancellationToken::new();
//! let task = tokio::spawn(reflector.run(shutdown.clone()));
//! while handle.last_sync_resource_version().is_empty() { tokio::task::yield_now().await; }
//! shutdown.cancel();
//! task.await.unwrap();
//! assert_eq!(handle.relists(), 1);
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::fifo::{FifoError, Listed, ReflectorSink};
use crate::key::ObjectKey;
use crate::shard::{ShardFiltering, ShardSelector};
use crate::source::{
    ApiStatus, ListParams, ListWatch, Reuse, SourceError, WatchEvent, WatchParams, WatchStream,
};
use crate::sync_state::{SyncFailure, SyncTracker, Target};

mod options;

use options::*;
pub use options::{
    BackoffOptions, DEFAULT_PAGE_SIZE, MAX_RETRY_AFTER, MIN_WATCH_TIMEOUT, ReflectorError,
    ReflectorHandle, ReflectorOptions, WatchErrorHandler,
};

/// Exponential backoff with jitter and a periodic reset, on tokio's clock.
struct Backoff {
    options: BackoffOptions,
    current: Duration,
    last_reset: Instant,
}

impl Backoff {
    fn new(options: BackoffOptions) -> Self {
        Backoff {
            current: options.initial,
            options,
            last_reset: Instant::now(),
        }
    }

    fn next_delay(&mut self) -> Duration {
        let now = Instant::now();
        if now.duration_since(self.last_reset) > self.options.reset_after {
            self.current = self.options.initial;
            self.last_reset = now;
        }
        let base = self.current.min(self.options.cap);
        self.current = base
            .mul_f64(self.options.factor.max(1.0))
            .min(self.options.cap);
        let jitter = self.options.jitter.max(0.0) * rand::rng().random::<f64>();
        base + base.mul_f64(jitter)
    }
}

/// The resourceVersion a relist asks for.
fn relist_resource_version(last: &str, unavailable: bool, consistent_initial: bool) -> String {
    if unavailable || (last.is_empty() && consistent_initial) {
        String::new()
    } else if last.is_empty() {
        "0".to_owned()
    } else {
        last.to_owned()
    }
}

/// The page size of a list at `resource_version`.
fn page_limit(configured: Option<u32>, paginated: bool, resource_version: &str) -> Option<u32> {
    match configured {
        Some(0) => None,
        Some(n) => Some(n),
        None if paginated => Some(DEFAULT_PAGE_SIZE),
        None if !matches!(resource_version, "" | "0") => None,
        None => Some(DEFAULT_PAGE_SIZE),
    }
}

fn resource_version_of<K: kube::Resource>(obj: &K) -> Option<&str> {
    obj.meta()
        .resource_version
        .as_deref()
        .filter(|rv| !rv.is_empty())
}

/// What the sink makes of `listed` ([`ReflectorSink::listed`]); a cached copy kept in its place
/// is counted in `reused`.
fn reuse<K>(sink: &dyn ReflectorSink<K>, reused: &AtomicU64, listed: Arc<K>) -> Arc<K> {
    match sink.listed(listed) {
        Listed::Cached(cached) => {
            reused.fetch_add(1, Ordering::Relaxed);
            cached
        }
        Listed::Fresh(listed) => listed,
    }
}

fn key_of<K: kube::Resource>(obj: &K) -> Option<ObjectKey> {
    let meta = obj.meta();
    meta.name
        .as_deref()
        .filter(|n| !n.is_empty())
        .map(|n| ObjectKey::new(meta.namespace.as_deref(), n))
}

/// How one watch ended.
enum WatchEnd {
    /// Cleanly: restart from the last resourceVersion.
    Closed,
    /// With a malformed event: restart after a backoff.
    Malformed(SourceError),
    /// Silent for longer than allowed: restart.
    Idle(Duration),
    /// The shard's selector changed: relist with the new one, at once.
    Reshard,
    /// With a 429 `ERROR` event: back off (at least the server's `Retry-After`) and re-watch
    /// from the last resourceVersion, without relisting (client-go does the same).
    Throttled(ApiStatus),
    /// With an error that ends the round (a relist follows).
    Failed(ReflectorError),
}

/// Lists and watches one resource into a [`ReflectorSink`]. See the [module docs](self).
pub struct Reflector<K> {
    source: Arc<dyn ListWatch<K>>,
    sink: Arc<dyn ReflectorSink<K>>,
    options: ReflectorOptions,
    shared: Arc<Shared>,
    error_handler: Option<WatchErrorHandler>,
    resource: String,
    target: Target,
    last_rv: String,
    unavailable: bool,
    paginated: bool,
    /// The last streaming list ended before its initial-events-end bookmark (cut, or an event
    /// it could not decode): the next round lists in pages (as client-go falls back for one
    /// round), then streams again.
    list_next_round: bool,
    backoff: Backoff,
    /// The shard selector of this round (taken from the handle when the round starts), its
    /// query, and the handle's change notifications seen up to then.
    round_shard: Option<RoundShard>,
    /// The last round ended because the shard changed: relist without a backoff.
    reshard_now: bool,
}

/// What a round of a sharded Reflector filters by.
struct RoundShard {
    version: u64,
    selector: Arc<ShardSelector>,
    /// `None` for a field no server shards by: nothing is sent, the client filters.
    query: Option<String>,
    changes: tokio::sync::watch::Receiver<u64>,
}

impl RoundShard {
    /// Resolves once the handle's selector changed after the round started.
    async fn changed(changes: Option<&mut tokio::sync::watch::Receiver<u64>>) {
        match changes {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    // The handle is gone with its sender: nothing will change again.
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

impl<K> Reflector<K>
where
    K: kube::Resource + Send + Sync + 'static,
{
    /// A Reflector reading `source` into `sink`.
    pub fn new(
        source: Arc<dyn ListWatch<K>>,
        sink: Arc<dyn ReflectorSink<K>>,
        options: ReflectorOptions,
    ) -> Self {
        let resource = source.describe();
        Reflector {
            target: Target::from_url_path(&resource),
            resource,
            source,
            sink,
            backoff: Backoff::new(options.backoff.clone()),
            options,
            shared: Arc::new(Shared::new(Arc::new(SyncTracker::new(false)))),
            error_handler: None,
            last_rv: String::new(),
            unavailable: false,
            paginated: false,
            list_next_round: false,
            round_shard: None,
            reshard_now: false,
        }
    }

    /// Sets the handler called with every error that ends a list-and-watch round.
    pub fn set_watch_error_handler(&mut self, handler: WatchErrorHandler) {
        self.error_handler = Some(handler);
    }

    /// Publishes this Reflector's sync state through `tracker` (the informer's, which also
    /// hears from the store). Call before [`handle`](Self::handle).
    pub(crate) fn set_sync_tracker(&mut self, tracker: Arc<SyncTracker>) {
        self.shared = Arc::new(Shared::new(tracker));
    }

    /// The delay before the next attempt: the backoff's, or the server's `Retry-After` if longer
    /// (up to [`MAX_RETRY_AFTER`]).
    fn retry_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let delay = self.backoff.next_delay();
        match retry_after {
            Some(asked) => delay.max(asked.min(MAX_RETRY_AFTER)),
            None => delay,
        }
    }

    /// A handle on this Reflector's progress, usable while it runs.
    pub fn handle(&self) -> ReflectorHandle {
        ReflectorHandle {
            shared: self.shared.clone(),
        }
    }

    /// The resourceVersion the Reflector last synced to.
    pub fn last_sync_resource_version(&self) -> String {
        self.last_rv.clone()
    }

    /// Lists and watches until `shutdown` is cancelled; returns promptly after it is.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let span = info_span!("reflector", resource = %self.resource);
        async move {
            info!("reflector started");
            loop {
                let outcome = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    outcome = self.list_and_watch() => outcome,
                };
                let delay = match outcome {
                    Ok(()) if std::mem::take(&mut self.reshard_now) => {
                        info!(resource_version = %self.last_rv, "shard changed; relisting");
                        Duration::ZERO
                    }
                    Ok(()) => {
                        debug!(resource_version = %self.last_rv, "relisting");
                        self.backoff.next_delay()
                    }
                    Err(err) => {
                        self.shared.errors.fetch_add(1, Ordering::Relaxed);
                        let delay = self.retry_delay(err.retry_after());
                        let failure = SyncFailure::from_round(&err, &self.target);
                        warn!(
                            error = %err,
                            cause = ?std::error::Error::source(&err).map(ToString::to_string),
                            failure = failure.kind(),
                            resource_version = %self.last_rv,
                            "list and watch ended with an error"
                        );
                        self.shared
                            .tracker
                            .failed(failure, Some(Instant::now() + delay));
                        if let Some(handler) = &self.error_handler {
                            handler(&err);
                        }
                        delay
                    }
                };
                debug!(
                    delay_ms = delay.as_millis() as u64,
                    "backing off before relisting"
                );
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            info!(resource_version = %self.last_rv, "reflector stopped");
        }
        .instrument(span)
        .await
    }

    fn set_last_rv(&mut self, rv: &str) {
        if rv.is_empty() || rv == self.last_rv {
            return;
        }
        self.last_rv = rv.to_owned();
        *self.shared.last_sync_resource_version.write() = self.last_rv.clone();
    }

    fn watch_timeout(&self) -> Duration {
        let min = self
            .options
            .min_watch_timeout
            .max(MIN_WATCH_TIMEOUT)
            .as_secs();
        Duration::from_secs(rand::rng().random_range(min..=2 * min))
    }

    /// Whether this round lists by streaming: asked for, no list backlog bound (a streaming
    /// list cannot be paced: the server ends a watcher that does not keep up, so a bound needs
    /// the paged list), and the last streaming list did not end early.
    fn streams_this_round(&mut self) -> bool {
        let fallback = std::mem::take(&mut self.list_next_round);
        self.options.streaming_lists && self.options.list_backlog.is_none() && !fallback
    }

    /// Takes this round's shard selector from the handle.
    fn begin_round_shard(&mut self) {
        self.round_shard = self.options.shard.as_ref().map(|handle| {
            let mut changes = handle.subscribe();
            let version = *changes.borrow_and_update();
            let selector = handle.current();
            RoundShard {
                version,
                query: selector.query(),
                selector,
                changes,
            }
        });
        if let Some(shard) = &self.round_shard {
            info!(shard = %shard.selector, "listing the shard");
        }
    }

    /// The `shardSelector` of this round's requests.
    fn shard_query(&self) -> Option<String> {
        self.round_shard.as_ref().and_then(|s| s.query.clone())
    }

    /// Whether `obj` belongs to this round's shard (always, unsharded).
    fn in_shard(&self, obj: &K) -> bool {
        self.round_shard
            .as_ref()
            .is_none_or(|s| s.selector.matches(obj.meta()))
    }

    /// Counts objects the server sent outside the shard.
    fn dropped_outside_shard(&self, n: u64) {
        if let Some(handle) = &self.options.shard {
            handle.count_dropped(n);
        }
    }

    /// Records who filtered a completed list (the latest list is the best witness: a server
    /// may gain or lose the feature between rounds).
    fn shard_list_done(&self, filtering: ShardFiltering) {
        if let (Some(handle), Some(round)) = (&self.options.shard, &self.round_shard) {
            handle.set_filtering(filtering);
            handle.set_listed(round.version);
            info!(
                filtering = filtering.as_str(),
                dropped = handle.dropped(),
                "shard listed"
            );
        }
    }

    async fn list_and_watch(&mut self) -> Result<(), ReflectorError> {
        self.begin_round_shard();
        let stream = if self.streams_this_round() {
            match self.watch_list().await {
                Ok(Some(stream)) => Some(stream),
                Ok(None) => {
                    self.list().await?;
                    None
                }
                // An event the stream could not carry (over the decoder's event limit, say)
                // would end every streaming list the same way: a paged list brings it in.
                Err(e)
                    if matches!(
                        &e,
                        ReflectorError::StreamingListIncomplete | ReflectorError::Malformed(_)
                    ) || matches!(&e, ReflectorError::Watch(w) if w.is_event_too_large()) =>
                {
                    info!(error = %e, "streaming list ended early; the next round lists in pages");
                    self.list_next_round = true;
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        } else {
            self.list().await?;
            None
        };
        self.watch_loop(stream).await
    }

    async fn list(&mut self) -> Result<(), ReflectorError> {
        let rv = relist_resource_version(
            &self.last_rv,
            self.unavailable,
            self.options.consistent_initial_list,
        );
        let result = match self.list_at(&rv).await {
            Err(ReflectorError::List(e))
                if !rv.is_empty() && (e.is_expired() || e.is_too_large_resource_version()) =>
            {
                info!(resource_version = %rv, error = %e, "list resourceVersion unavailable; listing consistently");
                self.unavailable = true;
                self.list_at("").await
            }
            other => other,
        };
        if result.is_ok() {
            self.unavailable = false;
        }
        result
    }

    async fn list_at(&mut self, rv: &str) -> Result<(), ReflectorError> {
        let limit = page_limit(self.options.page_size, self.paginated, rv);
        let first = ListParams {
            limit,
            continue_token: None,
            resource_version: Some(rv.to_owned()),
            resource_version_match: None,
            label_selector: self.options.label_selector.clone(),
            field_selector: self.options.field_selector.clone(),
            shard_selector: self.shard_query(),
        };
        info!(resource_version = %rv, limit = ?limit, "listing");
        self.shared.tracker.list_started();
        self.sink.replace_begin();
        let mut params = first.clone();
        let mut page_no = 1u32;
        let mut listed = 0usize;
        let mut echoed = true;
        let mut dropped = 0u64;
        let reused_before = self.shared.reused.load(Ordering::Relaxed);
        let reuser: Reuse<K> = {
            let sink = self.sink.clone();
            let shared = self.shared.clone();
            Arc::new(move |listed| reuse(&*sink, &shared.reused, listed))
        };
        let list_rv = loop {
            let page = match self.source.list_reusing(&params, reuser.clone()).await {
                Ok(page) => page,
                Err(e) if page_no > 1 && e.is_expired() => {
                    warn!(page = page_no, error = %e, "continue token expired; relisting in full");
                    self.sink.replace_begin();
                    params = ListParams {
                        limit: None,
                        ..first.clone()
                    };
                    page_no = 1;
                    listed = 0;
                    echoed = true;
                    dropped = 0;
                    continue;
                }
                Err(e) => return Err(ReflectorError::List(e)),
            };
            if page_no == 1 && rv == "0" && page.continue_token.is_some() && params.limit.is_some()
            {
                self.paginated = true;
            }
            let mut page = page;
            if let Some(shard) = &self.round_shard {
                echoed &= shard.query.is_some() && page.shard_info == shard.query;
                let before = page.items.len();
                page.items.retain(|o| shard.selector.matches(o.meta()));
                dropped += (before - page.items.len()) as u64;
            }
            listed += page.items.len();
            self.shared.tracker.list_page();
            debug!(page = page_no, items = page.items.len(), resource_version = %page.resource_version, "list page");
            self.sink
                .replace_page(page.items)
                .map_err(ReflectorError::Sink)?;
            match page.continue_token {
                Some(token) => {
                    if let Some(backlog) = self.options.list_backlog {
                        debug!(
                            page = page_no,
                            backlog, "next page once the sink's backlog is below the bound"
                        );
                        self.sink.wait_for_room(backlog).await;
                    }
                    params = ListParams {
                        continue_token: Some(token),
                        resource_version: None,
                        ..params
                    };
                    page_no += 1;
                }
                None => break page.resource_version,
            }
        };
        // Known before the store can report the list synced: whoever sees it synced sees its
        // resourceVersion too.
        self.set_last_rv(&list_rv);
        self.sink
            .replace_done(&list_rv)
            .map_err(ReflectorError::Sink)?;
        self.dropped_outside_shard(dropped);
        self.shard_list_done(if echoed && dropped == 0 {
            ShardFiltering::Server
        } else {
            ShardFiltering::Client
        });
        self.shared.tracker.list_done(&list_rv);
        self.shared.relists.fetch_add(1, Ordering::Relaxed);
        let reused = self.shared.reused.load(Ordering::Relaxed) - reused_before;
        info!(resource_version = %list_rv, items = listed, pages = page_no, reused, "list complete");
        Ok(())
    }

    /// A streaming list. `Ok(Some(stream))`: synced, the stream continues as a watch;
    /// `Ok(None)`: the server refused, fall back to a list.
    async fn watch_list(&mut self) -> Result<Option<WatchStream<K>>, ReflectorError> {
        loop {
            let rv = if self.unavailable {
                String::new()
            } else {
                self.last_rv.clone()
            };
            let timeout = self.watch_timeout();
            let params = WatchParams {
                resource_version: rv.clone(),
                timeout_seconds: Some(timeout.as_secs() as u32),
                allow_bookmarks: true,
                send_initial_events: true,
                label_selector: self.options.label_selector.clone(),
                field_selector: self.options.field_selector.clone(),
                shard_selector: self.shard_query(),
            };
            info!(resource_version = %rv, "starting streaming list");
            self.shared.tracker.list_started();
            let mut stream = match self.source.watch(&params).await {
                Ok(stream) => stream,
                Err(e)
                    if (e.is_expired() || e.is_too_large_resource_version()) && !rv.is_empty() =>
                {
                    info!(error = %e, "streaming list resourceVersion unavailable; retrying consistently");
                    self.unavailable = true;
                    continue;
                }
                Err(e) if e.is_too_many_requests() || matches!(e, SourceError::Transport(_)) => {
                    return Err(ReflectorError::Watch(e));
                }
                Err(e) => {
                    info!(error = %e, "streaming list refused; falling back to list");
                    return Ok(None);
                }
            };
            let idle_limit = timeout + self.options.idle_watch_margin;
            let reused_before = self.shared.reused.load(Ordering::Relaxed);
            let mut objects: BTreeMap<ObjectKey, Arc<K>> = BTreeMap::new();
            let mut dropped = 0u64;
            loop {
                let next = match tokio::time::timeout(idle_limit, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.shared.idle_watches.fetch_add(1, Ordering::Relaxed);
                        return Err(ReflectorError::StreamingListIncomplete);
                    }
                };
                let event = match next {
                    None => return Err(ReflectorError::StreamingListIncomplete),
                    Some(Err(e)) if e.is_malformed() => {
                        self.shared.malformed_events.fetch_add(1, Ordering::Relaxed);
                        return Err(ReflectorError::Malformed(e));
                    }
                    Some(Err(e)) => return Err(ReflectorError::Watch(e)),
                    Some(Ok(event)) => event,
                };
                match event {
                    WatchEvent::Added(o) | WatchEvent::Modified(o) if !self.in_shard(&o) => {
                        dropped += 1;
                    }
                    WatchEvent::Deleted(o) if !self.in_shard(&o) => dropped += 1,
                    WatchEvent::Added(o) | WatchEvent::Modified(o) => match key_of(&o) {
                        Some(key) => {
                            let o = reuse(&*self.sink, &self.shared.reused, Arc::new(o));
                            objects.insert(key, o);
                        }
                        None => self.skip_unkeyable(),
                    },
                    WatchEvent::Deleted(o) => match key_of(&o) {
                        Some(key) => {
                            objects.remove(&key);
                        }
                        None => self.skip_unkeyable(),
                    },
                    WatchEvent::Bookmark {
                        resource_version,
                        initial_events_end: true,
                    } => {
                        self.sink.replace_begin();
                        let count = objects.len();
                        let reused = self.shared.reused.load(Ordering::Relaxed) - reused_before;
                        self.sink
                            .replace_page(objects.into_values().collect())
                            .map_err(ReflectorError::Sink)?;
                        self.set_last_rv(&resource_version);
                        self.sink
                            .replace_done(&resource_version)
                            .map_err(ReflectorError::Sink)?;
                        // A streaming list carries no shardInfo: only a dropped object says
                        // the server did not shard.
                        self.dropped_outside_shard(dropped);
                        self.shard_list_done(if dropped == 0 {
                            ShardFiltering::Unconfirmed
                        } else {
                            ShardFiltering::Client
                        });
                        self.shared.tracker.list_done(&resource_version);
                        self.unavailable = false;
                        self.shared.relists.fetch_add(1, Ordering::Relaxed);
                        info!(resource_version = %resource_version, items = count, reused, "streaming list complete");
                        return Ok(Some(stream));
                    }
                    WatchEvent::Bookmark { .. } => {}
                    WatchEvent::Error(status) if status.is_expired() && !rv.is_empty() => {
                        info!(status = %status, "streaming list expired; retrying consistently");
                        self.unavailable = true;
                        break;
                    }
                    WatchEvent::Error(status) if status.is_too_many_requests() => {
                        // Falling back to a LIST would answer throttling with a heavier request.
                        return Err(ReflectorError::Watch(SourceError::Status(status)));
                    }
                    WatchEvent::Error(status) => {
                        info!(status = %status, "streaming list failed; falling back to list");
                        return Ok(None);
                    }
                }
            }
        }
    }

    fn skip_unkeyable(&self) {
        self.shared.malformed_events.fetch_add(1, Ordering::Relaxed);
        warn!("skipping a watch event whose object has no name");
    }

    async fn watch_loop(
        &mut self,
        mut pending: Option<WatchStream<K>>,
    ) -> Result<(), ReflectorError> {
        loop {
            let timeout = self.watch_timeout();
            let started_rv = self.last_rv.clone();
            let stream = match pending.take() {
                Some(stream) => stream,
                None => {
                    let params = WatchParams {
                        resource_version: started_rv.clone(),
                        timeout_seconds: Some(timeout.as_secs() as u32),
                        allow_bookmarks: true,
                        send_initial_events: false,
                        label_selector: self.options.label_selector.clone(),
                        field_selector: self.options.field_selector.clone(),
                        shard_selector: self.shard_query(),
                    };
                    debug!(resource_version = %started_rv, timeout_s = timeout.as_secs(), "starting watch");
                    match self.source.watch(&params).await {
                        Ok(stream) => {
                            self.shared.tracker.recovered();
                            stream
                        }
                        Err(e)
                            if e.is_too_many_requests()
                                || matches!(e, SourceError::Transport(_)) =>
                        {
                            let delay = self.retry_delay(e.status().and_then(|s| s.retry_after));
                            warn!(error = %e, delay_ms = delay.as_millis() as u64, "watch refused; retrying after backoff");
                            self.shared.tracker.failed(
                                SyncFailure::classify(&e, "watch", &self.target),
                                Some(Instant::now() + delay),
                            );
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                        Err(e) => return Err(ReflectorError::Watch(e)),
                    }
                }
            };
            match self.consume(stream, &started_rv, timeout).await {
                WatchEnd::Closed => {
                    self.shared.watch_restarts.fetch_add(1, Ordering::Relaxed);
                    debug!(resource_version = %self.last_rv, "watch closed; restarting");
                }
                WatchEnd::Malformed(e) => {
                    self.shared.malformed_events.fetch_add(1, Ordering::Relaxed);
                    self.shared.watch_restarts.fetch_add(1, Ordering::Relaxed);
                    let delay = self.backoff.next_delay();
                    warn!(error = %e, resource_version = %self.last_rv, delay_ms = delay.as_millis() as u64, "malformed watch event; restarting watch");
                    self.shared.tracker.failed(
                        SyncFailure::classify(&e, "watch", &self.target),
                        Some(Instant::now() + delay),
                    );
                    tokio::time::sleep(delay).await;
                }
                WatchEnd::Throttled(status) => {
                    self.shared.watch_restarts.fetch_add(1, Ordering::Relaxed);
                    let delay = self.retry_delay(status.retry_after);
                    warn!(status = %status, resource_version = %self.last_rv, delay_ms = delay.as_millis() as u64, "watch throttled (429); re-watching after backoff, without relisting");
                    self.shared.tracker.failed(
                        SyncFailure::TooManyRequests {
                            retry_after: status.retry_after,
                        },
                        Some(Instant::now() + delay),
                    );
                    tokio::time::sleep(delay).await;
                }
                WatchEnd::Reshard => {
                    self.reshard_now = true;
                    return Ok(());
                }
                WatchEnd::Idle(limit) => {
                    self.shared.idle_watches.fetch_add(1, Ordering::Relaxed);
                    self.shared.watch_restarts.fetch_add(1, Ordering::Relaxed);
                    warn!(idle_s = limit.as_secs(), resource_version = %self.last_rv, "watch silent for too long; restarting");
                }
                WatchEnd::Failed(err) => return Err(err),
            }
        }
    }

    async fn consume(
        &mut self,
        mut stream: WatchStream<K>,
        started_rv: &str,
        timeout: Duration,
    ) -> WatchEnd {
        let idle_limit = timeout + self.options.idle_watch_margin;
        let start = Instant::now();
        let mut events = 0u64;
        // Synthetic ADDED events of a watch from "" or "0" come in no resourceVersion order.
        let mut propagate = !matches!(started_rv, "" | "0");
        // A clone has seen what the round's receiver saw: it wakes on a change since then.
        let mut changes = self.round_shard.as_ref().map(|s| s.changes.clone());
        loop {
            let next = tokio::select! {
                biased;
                _ = RoundShard::changed(changes.as_mut()) => return WatchEnd::Reshard,
                next = tokio::time::timeout(idle_limit, stream.next()) => next,
            };
            let next = match next {
                Ok(next) => next,
                Err(_) => return WatchEnd::Idle(idle_limit),
            };
            let event = match next {
                None if events == 0 && start.elapsed() < VERY_SHORT_WATCH => {
                    return WatchEnd::Failed(ReflectorError::VeryShortWatch(start.elapsed()));
                }
                None => return WatchEnd::Closed,
                Some(Err(e)) if e.is_malformed() => return WatchEnd::Malformed(e),
                Some(Err(SourceError::Transport(e))) => {
                    debug!(error = %e, "watch connection broke; restarting");
                    return WatchEnd::Closed;
                }
                Some(Err(e)) => return WatchEnd::Failed(ReflectorError::Watch(e)),
                Some(Ok(event)) => event,
            };
            events += 1;
            let (written, rv, added) = match event {
                WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o)
                    if !self.in_shard(&o) =>
                {
                    // Not ours (a server that does not shard sent it): its resourceVersion is
                    // progress all the same.
                    self.dropped_outside_shard(1);
                    (Ok(()), resource_version_of(&o).map(str::to_owned), false)
                }
                WatchEvent::Added(o) => {
                    let rv = resource_version_of(&o).map(str::to_owned);
                    (self.sink.add(Arc::new(o)), rv, true)
                }
                WatchEvent::Modified(o) => {
                    let rv = resource_version_of(&o).map(str::to_owned);
                    (self.sink.update(Arc::new(o)), rv, false)
                }
                WatchEvent::Deleted(o) => {
                    let rv = resource_version_of(&o).map(str::to_owned);
                    (self.sink.delete(Arc::new(o)), rv, false)
                }
                WatchEvent::Bookmark {
                    resource_version, ..
                } => {
                    self.sink.bookmark(&resource_version);
                    (Ok(()), Some(resource_version), false)
                }
                WatchEvent::Error(status) => return self.watch_error(status),
            };
            match written {
                Ok(()) => {}
                Err(FifoError::Key(e)) => {
                    self.shared.malformed_events.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, "skipping a watch event whose object cannot be keyed");
                }
                Err(e) => return WatchEnd::Failed(ReflectorError::Sink(e)),
            }
            propagate |= !added;
            if propagate && let Some(rv) = rv {
                self.set_last_rv(&rv);
            }
        }
    }

    fn watch_error(&self, status: ApiStatus) -> WatchEnd {
        if status.is_expired() {
            info!(status = %status, resource_version = %self.last_rv, "watch expired; relisting");
        } else if status.is_too_many_requests() {
            return WatchEnd::Throttled(status);
        }
        WatchEnd::Failed(ReflectorError::Watch(SourceError::Status(status)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relist_resource_version_follows_the_sync_state() {
        let cases = [
            ("", false, false, "0"),
            ("", false, true, ""),
            ("", true, false, ""),
            ("17", false, false, "17"),
            ("17", false, true, "17"),
            ("17", true, false, ""),
        ];
        for (last, unavailable, consistent, expected) in cases {
            assert_eq!(
                relist_resource_version(last, unavailable, consistent),
                expected,
                "last={last:?} unavailable={unavailable} consistent={consistent}"
            );
        }
    }

    #[test]
    fn page_limit_follows_client_go_rules() {
        let cases = [
            (None, false, "0", Some(500)),
            (None, false, "", Some(500)),
            (None, false, "42", None),
            (None, true, "42", Some(500)),
            (Some(10), false, "42", Some(10)),
            (Some(0), true, "0", None),
        ];
        for (configured, paginated, rv, expected) in cases {
            assert_eq!(
                page_limit(configured, paginated, rv),
                expected,
                "{configured:?} {paginated} {rv:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_within_jitter_bounds_up_to_the_cap() {
        let mut backoff = Backoff::new(BackoffOptions::default());
        let mut base = Duration::from_millis(800);
        for _ in 0..12 {
            let d = backoff.next_delay();
            assert!(
                d >= base && d < base * 2,
                "{d:?} not in [{base:?}, {:?})",
                base * 2
            );
            base = (base * 2).min(Duration::from_secs(30));
        }
        assert_eq!(base, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_resets_after_two_minutes() {
        let mut backoff = Backoff::new(BackoffOptions::default());
        for _ in 0..6 {
            backoff.next_delay();
        }
        assert!(backoff.next_delay() >= Duration::from_secs(30));
        tokio::time::advance(Duration::from_secs(121)).await;
        let d = backoff.next_delay();
        assert!(d < Duration::from_millis(1600), "{d:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_does_not_reset_within_two_minutes() {
        let mut backoff = Backoff::new(BackoffOptions::default());
        backoff.next_delay();
        tokio::time::advance(Duration::from_secs(119)).await;
        assert!(backoff.next_delay() >= Duration::from_millis(1600));
    }
}
