//! An in-memory, stateful fake API for one resource, with fault injection.
//!
//! [`MemorySource`] behaves like the API server as a Reflector sees it: a global resourceVersion
//! counter bumped by every write, paged lists with continue tokens over a consistent snapshot,
//! watches from a resourceVersion replayed from a bounded event history (older than the history
//! answers 410 Expired), bookmarks, and streaming lists (`sendInitialEvents`). Tests mutate it
//! (`apply`, `delete`) and break it on purpose: close watches, close them every N events, fail
//! the next list / watch / a given page, inject `ERROR` events or malformed events, compact the
//! history, reject streaming lists. Nothing sleeps; every fault happens at a defined point, so
//! tests are deterministic.
//!
//! It is public so that users can test their own controllers the same way. Label and field
//! selectors are recorded in [`MemorySource::requests`] but not applied: a `MemorySource` stands
//! for one already-selected resource set.
//!
//! ```
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::ObjectMeta;
//! use reflex_informer::source::memory::MemorySource;
//! use reflex_informer::source::{ListParams, ListWatch};
//!
//! # futures::executor::block_on(async {
//! let source = MemorySource::<ConfigMap>::new();
//! let cm = |name: &str| ConfigMap {
//!     metadata: ObjectMeta { namespace: Some("ns".into()), name: Some(name.into()), ..Default::default() },
//!     ..Default::default()
//! };
//! source.apply(cm("a")).unwrap();
//! source.apply(cm("b")).unwrap();
//! let page = source.list(&ListParams { limit: Some(1), ..Default::default() }).await.unwrap();
//! assert_eq!((page.items.len(), page.resource_version.as_str()), (1, "2"));
//! assert!(page.continue_token.is_some());
//! # });
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use futures::channel::mpsc::{UnboundedSender, unbounded};
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;

use super::{
    ApiStatus, ListFuture, ListPage, ListParams, ListWatch, ResourceVersionMatch, SourceError,
    WatchEvent, WatchFuture, WatchParams,
};
use crate::key::ObjectKey;

/// Why a write to a [`MemorySource`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemorySourceError {
    /// The object has no `metadata.name`.
    #[error("object has no metadata.name")]
    MissingName,
}

/// A request the source received, in order, for assertions on resourceVersion bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordedRequest {
    /// A list (one page).
    List(ListParams),
    /// A watch.
    Watch(WatchParams),
}

struct HistoryEntry<K> {
    rv: u64,
    event: WatchEvent<K>,
    prev: Option<Arc<K>>,
    key: ObjectKey,
}

struct Watcher<K> {
    tx: UnboundedSender<Result<WatchEvent<K>, SourceError>>,
    sent: usize,
    bookmarks: bool,
}

struct Snapshot<K> {
    rv: u64,
    items: Arc<Vec<Arc<K>>>,
}

struct ListFault {
    page: Option<usize>,
    error: SourceError,
}

struct State<K> {
    rv: u64,
    objects: BTreeMap<ObjectKey, Arc<K>>,
    history: VecDeque<HistoryEntry<K>>,
    history_limit: usize,
    compacted_rv: u64,
    watchers: Vec<Watcher<K>>,
    snapshots: HashMap<u64, Snapshot<K>>,
    next_snapshot: u64,
    list_faults: VecDeque<ListFault>,
    watch_faults: VecDeque<SourceError>,
    close_every: Option<usize>,
    reject_streaming: bool,
    requests: Vec<RecordedRequest>,
}

/// The fake API. Cheap to clone: clones share the same state.
pub struct MemorySource<K> {
    state: Arc<Mutex<State<K>>>,
}

impl<K> Clone for MemorySource<K> {
    fn clone(&self) -> Self {
        MemorySource {
            state: self.state.clone(),
        }
    }
}

impl<K> Default for MemorySource<K>
where
    K: kube::Resource + Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

fn key_of<K: kube::Resource>(obj: &K) -> Result<ObjectKey, MemorySourceError> {
    let meta = obj.meta();
    match meta.name.as_deref() {
        Some(n) if !n.is_empty() => Ok(ObjectKey::new(meta.namespace.as_deref(), n)),
        _ => Err(MemorySourceError::MissingName),
    }
}

fn bad_request(message: String) -> SourceError {
    SourceError::Status(ApiStatus::new(400, "BadRequest", message))
}

fn too_large(requested: u64, current: u64) -> SourceError {
    let mut status = ApiStatus::new(
        504,
        "Timeout",
        format!("Too large resource version: {requested}, current: {current}"),
    );
    status.causes.push("ResourceVersionTooLarge".into());
    SourceError::Status(status)
}

fn parse_rv(rv: &str) -> Result<u64, SourceError> {
    rv.parse()
        .map_err(|_| bad_request(format!("invalid resourceVersion {rv:?}")))
}

impl<K> State<K>
where
    K: kube::Resource + Clone + Send + Sync + 'static,
{
    /// Sends to one watcher; false when the watcher must be dropped.
    fn send(
        close_every: Option<usize>,
        w: &mut Watcher<K>,
        ev: Result<WatchEvent<K>, SourceError>,
    ) -> bool {
        if w.tx.unbounded_send(ev).is_err() {
            return false;
        }
        w.sent += 1;
        close_every.is_none_or(|n| w.sent < n)
    }

    fn broadcast(&mut self, ev: &WatchEvent<K>) {
        let close_every = self.close_every;
        self.watchers.retain_mut(|w| {
            if matches!(ev, WatchEvent::Bookmark { .. }) && !w.bookmarks {
                return !w.tx.is_closed();
            }
            Self::send(close_every, w, Ok(ev.clone()))
        });
    }

    fn record(&mut self, key: ObjectKey, event: WatchEvent<K>, prev: Option<Arc<K>>) {
        self.broadcast(&event);
        self.history.push_back(HistoryEntry {
            rv: self.rv,
            event,
            prev,
            key,
        });
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted_rv = old.rv;
            }
        }
    }

    fn state_at(&self, rv: u64) -> BTreeMap<ObjectKey, Arc<K>> {
        let mut objects = self.objects.clone();
        for entry in self.history.iter().rev().take_while(|e| e.rv > rv) {
            match &entry.prev {
                Some(prev) => objects.insert(entry.key.clone(), prev.clone()),
                None => objects.remove(&entry.key),
            };
        }
        objects
    }

    fn list(&mut self, params: &ListParams) -> Result<ListPage<K>, SourceError> {
        let page_no = match &params.continue_token {
            Some(token) => parse_token(token)?.2,
            None => 1,
        };
        if let Some(pos) = self
            .list_faults
            .iter()
            .position(|f| f.page.is_none_or(|p| p == page_no))
            && let Some(fault) = self.list_faults.remove(pos)
        {
            return Err(fault.error);
        }
        let (snapshot_rv, items, offset) = match &params.continue_token {
            Some(token) => {
                let (id, offset, _) = parse_token(token)?;
                let snap = self
                    .snapshots
                    .get(&id)
                    .ok_or_else(|| bad_request(format!("unknown continue token {token:?}")))?;
                if snap.rv < self.compacted_rv {
                    self.snapshots.remove(&id);
                    return Err(SourceError::Status(ApiStatus::gone(
                        "The provided continue parameter is too old to display a consistent list result.",
                    )));
                }
                (snap.rv, snap.items.clone(), offset)
            }
            None => {
                let requested = params.resource_version.as_deref().unwrap_or("");
                let at = match (requested, params.resource_version_match) {
                    ("" | "0", _) => self.rv,
                    (rv, Some(ResourceVersionMatch::Exact)) => {
                        let rv = parse_rv(rv)?;
                        if rv > self.rv {
                            return Err(too_large(rv, self.rv));
                        }
                        if rv < self.compacted_rv {
                            return Err(SourceError::Status(ApiStatus::gone(format!(
                                "too old resource version: {rv} ({})",
                                self.compacted_rv
                            ))));
                        }
                        rv
                    }
                    (rv, _) => {
                        let rv = parse_rv(rv)?;
                        if rv > self.rv {
                            return Err(too_large(rv, self.rv));
                        }
                        self.rv
                    }
                };
                let objects = if at == self.rv {
                    self.objects.values().cloned().collect()
                } else {
                    self.state_at(at).into_values().collect()
                };
                (at, Arc::new(objects), 0)
            }
        };
        let limit = params.limit.filter(|l| *l > 0).map(|l| l as usize);
        let end = limit.map_or(items.len(), |l| (offset + l).min(items.len()));
        let page_items: Vec<Arc<K>> = items[offset.min(end)..end].to_vec();
        let continue_token = if end < items.len() {
            let id = match &params.continue_token {
                Some(token) => parse_token(token)?.0,
                None => {
                    self.next_snapshot += 1;
                    self.snapshots.insert(
                        self.next_snapshot,
                        Snapshot {
                            rv: snapshot_rv,
                            items,
                        },
                    );
                    self.next_snapshot
                }
            };
            Some(format!("{id}:{end}:{}", page_no + 1))
        } else {
            if let Some(token) = &params.continue_token {
                self.snapshots.remove(&parse_token(token)?.0);
            }
            None
        };
        Ok(ListPage {
            items: page_items,
            resource_version: snapshot_rv.to_string(),
            continue_token,
            shard_info: None,
        })
    }

    fn watch(
        &mut self,
        params: &WatchParams,
    ) -> Result<
        futures::channel::mpsc::UnboundedReceiver<Result<WatchEvent<K>, SourceError>>,
        SourceError,
    > {
        if let Some(err) = self.watch_faults.pop_front() {
            return Err(err);
        }
        if params.send_initial_events && self.reject_streaming {
            return Err(SourceError::Status(ApiStatus::new(
                422,
                "Invalid",
                "sendInitialEvents is not supported by this server",
            )));
        }
        let (tx, rx) = unbounded();
        let mut watcher = Watcher {
            tx,
            sent: 0,
            bookmarks: params.allow_bookmarks || params.send_initial_events,
        };
        let close_every = self.close_every;
        let from_start = matches!(params.resource_version.as_str(), "" | "0");
        let mut initial: Vec<Result<WatchEvent<K>, SourceError>> = Vec::new();
        if from_start || params.send_initial_events {
            let start = if from_start {
                self.rv
            } else {
                let rv = parse_rv(&params.resource_version)?;
                if rv > self.rv {
                    return Err(too_large(rv, self.rv));
                }
                self.rv
            };
            initial.extend(
                self.objects
                    .values()
                    .map(|o| Ok(WatchEvent::Added(K::clone(o)))),
            );
            if params.send_initial_events {
                initial.push(Ok(WatchEvent::Bookmark {
                    resource_version: start.to_string(),
                    initial_events_end: true,
                }));
            }
        } else {
            let rv = parse_rv(&params.resource_version)?;
            if rv < self.compacted_rv {
                initial.push(Ok(WatchEvent::Error(ApiStatus::gone(format!(
                    "too old resource version: {rv} ({})",
                    self.compacted_rv
                )))));
                for ev in initial {
                    let _ = watcher.tx.unbounded_send(ev);
                }
                return Ok(rx);
            }
            initial.extend(
                self.history
                    .iter()
                    .filter(|e| e.rv > rv)
                    .map(|e| Ok(e.event.clone())),
            );
        }
        for ev in initial {
            if !Self::send(close_every, &mut watcher, ev) {
                return Ok(rx);
            }
        }
        self.watchers.push(watcher);
        Ok(rx)
    }
}

fn parse_token(token: &str) -> Result<(u64, usize, usize), SourceError> {
    let bad = || bad_request(format!("malformed continue token {token:?}"));
    let mut parts = token.split(':');
    let mut next = || parts.next().ok_or_else(bad);
    let id = next()?.parse().map_err(|_| bad())?;
    let offset = next()?.parse().map_err(|_| bad())?;
    let page = next()?.parse().map_err(|_| bad())?;
    Ok((id, offset, page))
}

impl<K> MemorySource<K>
where
    K: kube::Resource + Clone + Send + Sync + 'static,
{
    /// An empty source at resourceVersion 0 with an event history of 1000 entries.
    pub fn new() -> Self {
        MemorySource {
            state: Arc::new(Mutex::new(State {
                rv: 0,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                history_limit: 1000,
                compacted_rv: 0,
                watchers: Vec::new(),
                snapshots: HashMap::new(),
                next_snapshot: 0,
                list_faults: VecDeque::new(),
                watch_faults: VecDeque::new(),
                close_every: None,
                reject_streaming: false,
                requests: Vec::new(),
            })),
        }
    }

    /// Creates or replaces an object (`ADDED` or `MODIFIED`); returns its new resourceVersion.
    pub fn apply(&self, mut obj: K) -> Result<String, MemorySourceError> {
        let key = key_of(&obj)?;
        let mut st = self.state.lock();
        st.rv += 1;
        let rv = st.rv.to_string();
        obj.meta_mut().resource_version = Some(rv.clone());
        let prev = st.objects.insert(key.clone(), Arc::new(obj.clone()));
        let event = if prev.is_some() {
            WatchEvent::Modified(obj)
        } else {
            WatchEvent::Added(obj)
        };
        st.record(key, event, prev);
        Ok(rv)
    }

    /// Deletes an object (`DELETED` carrying its last state at the deletion's resourceVersion);
    /// returns the new resourceVersion, or `None` if there was no such object.
    pub fn delete(&self, key: &ObjectKey) -> Option<String> {
        let mut st = self.state.lock();
        let prev = st.objects.remove(key)?;
        st.rv += 1;
        let rv = st.rv.to_string();
        let mut last = K::clone(&prev);
        last.meta_mut().resource_version = Some(rv.clone());
        st.record(key.clone(), WatchEvent::Deleted(last), Some(prev));
        Some(rv)
    }

    /// Sends a bookmark at the current resourceVersion to every watch that asked for bookmarks.
    pub fn bookmark(&self) {
        let mut st = self.state.lock();
        let ev = WatchEvent::Bookmark {
            resource_version: st.rv.to_string(),
            initial_events_end: false,
        };
        st.broadcast(&ev);
    }

    /// Bumps the resourceVersion without changing any object (another resource was written).
    pub fn advance(&self) -> String {
        let mut st = self.state.lock();
        st.rv += 1;
        st.rv.to_string()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> String {
        self.state.lock().rv.to_string()
    }

    /// The current objects by key (shared, not copied).
    pub fn objects(&self) -> BTreeMap<ObjectKey, Arc<K>> {
        self.state.lock().objects.clone()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().requests.clone()
    }

    /// How many watches are open.
    pub fn open_watches(&self) -> usize {
        let mut st = self.state.lock();
        st.watchers.retain(|w| !w.tx.is_closed());
        st.watchers.len()
    }

    /// Sets the event history size; older resourceVersions answer 410. Applies from the next write.
    pub fn set_history_limit(&self, limit: usize) {
        self.state.lock().history_limit = limit;
    }

    /// Drops the whole event history now: every resourceVersion before the current one is gone,
    /// and so are the snapshots behind outstanding continue tokens.
    pub fn compact(&self) {
        let mut st = self.state.lock();
        st.history.clear();
        st.compacted_rv = st.rv;
    }

    /// Closes every open watch (the stream ends cleanly, as at a server timeout).
    pub fn close_watches(&self) {
        self.state.lock().watchers.clear();
    }

    /// Closes each watch after it delivered `n` events (`None`: never).
    pub fn close_watches_every(&self, n: Option<usize>) {
        self.state.lock().close_every = n.filter(|n| *n > 0);
    }

    /// The next list request (whatever its page) fails with `error`.
    pub fn fail_next_list(&self, error: SourceError) {
        self.state
            .lock()
            .list_faults
            .push_back(ListFault { page: None, error });
    }

    /// The next list request for page `page` (1 is the first page) fails with `error`.
    pub fn fail_list_page(&self, page: usize, error: SourceError) {
        self.state.lock().list_faults.push_back(ListFault {
            page: Some(page),
            error,
        });
    }

    /// The next watch request fails with `error` before any event.
    pub fn fail_next_watch(&self, error: SourceError) {
        self.state.lock().watch_faults.push_back(error);
    }

    /// Sends an `ERROR` event with `status` to every open watch, then closes them.
    pub fn inject_watch_error(&self, status: ApiStatus) {
        let mut st = self.state.lock();
        for w in st.watchers.drain(..) {
            let _ = w.tx.unbounded_send(Ok(WatchEvent::Error(status.clone())));
        }
    }

    /// Sends an undecodable event to every open watch (the connection stays open, as with kube).
    pub fn inject_malformed_event(&self) {
        let mut st = self.state.lock();
        let close_every = st.close_every;
        st.watchers.retain_mut(|w| {
            State::send(
                close_every,
                w,
                Err(SourceError::malformed("injected malformed watch event")),
            )
        });
    }

    /// Whether watches with `sendInitialEvents` are refused (422 Invalid).
    pub fn reject_streaming_lists(&self, reject: bool) {
        self.state.lock().reject_streaming = reject;
    }
}

impl<K> ListWatch<K> for MemorySource<K>
where
    K: kube::Resource + Clone + Send + Sync + 'static,
{
    fn list(&self, params: &ListParams) -> ListFuture<K> {
        let mut st = self.state.lock();
        st.requests.push(RecordedRequest::List(params.clone()));
        let result = st.list(params);
        futures::future::ready(result).boxed()
    }

    fn watch(&self, params: &WatchParams) -> WatchFuture<K> {
        let mut st = self.state.lock();
        st.requests.push(RecordedRequest::Watch(params.clone()));
        let result = st.watch(params).map(|rx| rx.boxed());
        futures::future::ready(result).boxed()
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }
}
