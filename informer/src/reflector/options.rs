//! What a Reflector is configured with, what it fails with, and the handle that reads its
//! progress from outside.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

use crate::fifo::FifoError;
use crate::shard::ShardHandle;
use crate::source::SourceError;
use crate::sync_state::{SyncState, SyncTracker};

/// The page size of a list when none is configured (client-go's pager default).
pub const DEFAULT_PAGE_SIZE: u32 = 500;
/// The shortest server-side watch timeout; a configured minimum below it is raised to it.
pub const MIN_WATCH_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// A watch that ends cleanly with no event sooner than this is treated as a failure.
pub(super) const VERY_SHORT_WATCH: Duration = Duration::from_secs(1);
/// The longest `Retry-After` a Reflector honours; a server asking for more is waited for this
/// long (and asked again).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(5 * 60);

/// Exponential backoff with jitter between failed list-and-watch rounds.
///
/// The n-th delay is `d + rand·jitter·d` where `d = min(initial·factorⁿ, cap)`; the sequence
/// starts again from `initial` when more than `reset_after` passed since it last did.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffOptions {
    /// The first delay before jitter (800 ms).
    pub initial: Duration,
    /// The growth factor (2.0).
    pub factor: f64,
    /// Jitter as a fraction of the delay (1.0: up to double).
    pub jitter: f64,
    /// The largest delay before jitter (30 s).
    pub cap: Duration,
    /// The sequence restarts when this long passed since its last restart (2 min).
    pub reset_after: Duration,
}

impl Default for BackoffOptions {
    fn default() -> Self {
        BackoffOptions {
            initial: Duration::from_millis(800),
            factor: 2.0,
            jitter: 1.0,
            cap: Duration::from_secs(30),
            reset_after: Duration::from_secs(120),
        }
    }
}

/// How a [`Reflector`](super::Reflector) lists and watches.
#[derive(Debug, Clone, PartialEq)]
pub struct ReflectorOptions {
    /// Page size of lists. `None` follows client-go: 500 for lists at `"0"` or `""`, whole
    /// lists (served from the watch cache) at a specific resourceVersion, and 500 always once a
    /// list at `"0"` came back paged (the server has no watch cache). `Some(0)` disables paging.
    pub page_size: Option<u32>,
    /// Make the first list a consistent read (`""`) instead of any state (`"0"`).
    pub consistent_initial_list: bool,
    /// Minimum server-side watch timeout; each watch asks for a random one in `[min, 2·min]`.
    /// Values below [`MIN_WATCH_TIMEOUT`] are raised to it.
    pub min_watch_timeout: Duration,
    /// How much longer than its server timeout a silent watch may stay open before it is
    /// presumed dead and restarted.
    pub idle_watch_margin: Duration,
    /// Backoff between failed rounds.
    pub backoff: BackoffOptions,
    /// List by streaming (`sendInitialEvents=true`; the default, as in client-go since v0.35):
    /// one watch request whose initial events are the list, served from the API server's watch
    /// cache and ended by the initial-events-end bookmark. The reflector falls back to a paged
    /// list when the server refuses it (an older server, an aggregated API without support, a
    /// failure of that request), for one round after a streaming list that ended before its
    /// bookmark, and whenever [`list_backlog`](Self::list_backlog) is set. `false` always lists
    /// in pages.
    pub streaming_lists: bool,
    /// Label selector for lists and watches.
    pub label_selector: Option<String>,
    /// Field selector for lists and watches.
    pub field_selector: Option<String>,
    /// Bound on a paged list's backlog: before fetching the next page, wait until fewer than
    /// this many keys are queued in the sink ([`ReflectorSink::wait_for_room`](crate::fifo::ReflectorSink::wait_for_room)). `None`, the
    /// default, follows client-go: pages are fetched as fast as the server answers and every
    /// listed object may wait, decoded, in the DeltaFIFO. A bound keeps only a few pages of
    /// decoded objects alive at once, which is what makes a compact store's peak memory small
    /// (the factory's compact informers use two pages); it does not slow a list whose consumer
    /// keeps up. `Some(0)` is read as `Some(1)`: the next page waits for an empty queue.
    pub list_backlog: Option<usize>,
    /// The shard this Reflector lists and watches (see [`crate::shard`]): its selector goes to
    /// the server as `shardSelector`, what arrives outside it is dropped, and a change of the
    /// selector through the handle relists. `None`: the whole resource.
    pub shard: Option<ShardHandle>,
}

impl Default for ReflectorOptions {
    fn default() -> Self {
        ReflectorOptions {
            page_size: None,
            consistent_initial_list: false,
            min_watch_timeout: MIN_WATCH_TIMEOUT,
            idle_watch_margin: Duration::from_secs(30),
            backoff: BackoffOptions::default(),
            streaming_lists: true,
            label_selector: None,
            field_selector: None,
            list_backlog: None,
            shard: None,
        }
    }
}

/// Why one list-and-watch round of a [`Reflector`](super::Reflector) ended.
#[derive(Debug, thiserror::Error)]
pub enum ReflectorError {
    /// The list failed.
    #[error("list failed")]
    List(#[source] SourceError),
    /// Starting the watch failed, or the server ended it with a failure.
    #[error("watch failed")]
    Watch(#[source] SourceError),
    /// A watch event could not be decoded.
    #[error("malformed watch event")]
    Malformed(#[source] SourceError),
    /// The watch ended cleanly without any event right after it started.
    #[error("watch ended after {0:?} without any event")]
    VeryShortWatch(Duration),
    /// A streaming list ended before its initial-events-end bookmark.
    #[error("streaming list ended before its initial-events-end bookmark")]
    StreamingListIncomplete,
    /// The sink refused a write.
    #[error("the reflector sink refused a write")]
    Sink(#[source] FifoError),
}

impl ReflectorError {
    /// Whether the round ended because a resourceVersion had expired (410).
    pub fn is_expired(&self) -> bool {
        match self {
            ReflectorError::List(e) | ReflectorError::Watch(e) => e.is_expired(),
            _ => false,
        }
    }

    /// The server's `Retry-After`, when the failure carried one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ReflectorError::List(e) | ReflectorError::Watch(e) => e.status()?.retry_after,
            _ => None,
        }
    }
}

/// Called with every error that ends a list-and-watch round (client-go's watch error handler).
pub type WatchErrorHandler = Arc<dyn Fn(&ReflectorError) + Send + Sync>;

pub(super) struct Shared {
    pub(super) tracker: Arc<SyncTracker>,
    pub(super) last_sync_resource_version: RwLock<String>,
    pub(super) relists: AtomicU64,
    pub(super) reused: AtomicU64,
    pub(super) watch_restarts: AtomicU64,
    pub(super) malformed_events: AtomicU64,
    pub(super) idle_watches: AtomicU64,
    pub(super) errors: AtomicU64,
}

impl Shared {
    pub(super) fn new(tracker: Arc<SyncTracker>) -> Self {
        Shared {
            tracker,
            last_sync_resource_version: RwLock::default(),
            relists: AtomicU64::default(),
            reused: AtomicU64::default(),
            watch_restarts: AtomicU64::default(),
            malformed_events: AtomicU64::default(),
            idle_watches: AtomicU64::default(),
            errors: AtomicU64::default(),
        }
    }
}

/// A cheap, cloneable view of a running [`Reflector`](super::Reflector)'s progress.
#[derive(Clone)]
pub struct ReflectorHandle {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for ReflectorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReflectorHandle")
            .field(
                "last_sync_resource_version",
                &self.last_sync_resource_version(),
            )
            .field("relists", &self.relists())
            .field("watch_restarts", &self.watch_restarts())
            .finish()
    }
}

impl ReflectorHandle {
    /// The resourceVersion the Reflector last synced to (`""` before the first list).
    pub fn last_sync_resource_version(&self) -> String {
        self.shared.last_sync_resource_version.read().clone()
    }

    /// Completed (re)lists, streaming lists included.
    pub fn relists(&self) -> u64 {
        self.shared.relists.load(Ordering::Relaxed)
    }

    /// Listed objects replaced by the sink's cached copy of the same version
    /// ([`ReflectorSink::listed`](crate::fifo::ReflectorSink::listed)): on a
    /// relist, the unchanged objects that cost no second copy.
    pub fn reused_objects(&self) -> u64 {
        self.shared.reused.load(Ordering::Relaxed)
    }

    /// Watches restarted without a relist (clean close, malformed event, idle watch).
    pub fn watch_restarts(&self) -> u64 {
        self.shared.watch_restarts.load(Ordering::Relaxed)
    }

    /// Malformed events and events whose object could not be keyed.
    pub fn malformed_events(&self) -> u64 {
        self.shared.malformed_events.load(Ordering::Relaxed)
    }

    /// Watches presumed dead because they delivered nothing for too long.
    pub fn idle_watches(&self) -> u64 {
        self.shared.idle_watches.load(Ordering::Relaxed)
    }

    /// List-and-watch rounds that ended with an error.
    pub fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }

    /// Where the Reflector is: listing, synced, or failing and why (see [`SyncState`]). For an
    /// informer's reflector this is the informer's state.
    pub fn sync_state(&self) -> SyncState {
        self.shared.tracker.state()
    }

    /// A subscription to [`sync_state`](Self::sync_state)'s changes.
    pub fn subscribe_sync_state(&self) -> tokio::sync::watch::Receiver<SyncState> {
        self.shared.tracker.subscribe()
    }
}
