//! Where a Reflector gets its objects from: the [`ListWatch`] trait.
//!
//! A Reflector needs exactly two things from the API server: a (paged) list of a resource at some
//! resourceVersion, and a watch of the changes after a resourceVersion. Putting them behind a small,
//! object-safe trait lets the same Reflector run against a real cluster ([`kube::Api`], see
//! [`api`]), against an in-memory fake with fault injection ([`memory::MemorySource`]) in unit
//! tests, or against anything else a user can express as list + watch.
//!
//! The types here are Reflex's own, not kube's: the Reflector needs a few things kube's types do
//! not say directly (whether a bookmark ends the initial events of a streaming list, whether an
//! error means "your resourceVersion is too old"), and a fake source should not have to build
//! HTTP-shaped errors.
//!
//! ```
//! use reflex_informer::source::{ApiStatus, SourceError};
//!
//! let gone = SourceError::Status(ApiStatus::new(410, "Expired", "too old resource version: 1 (5)"));
//! assert!(gone.is_expired());
//! assert!(!SourceError::Status(ApiStatus::new(500, "InternalError", "boom")).is_expired());
//! ```

pub mod api;
mod gzip;
pub mod memory;
pub mod raw;

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

/// The annotation a bookmark carries when it ends the initial events of a streaming list.
pub const INITIAL_EVENTS_END_ANNOTATION: &str = "k8s.io/initial-events-end";

/// How a list's `resource_version` is to be interpreted (`resourceVersionMatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceVersionMatch {
    /// Data at least as new as the given resourceVersion.
    NotOlderThan,
    /// Data at exactly the given resourceVersion.
    Exact,
}

/// Parameters of one list request (one page).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListParams {
    /// Maximum number of items in the page; `None` asks for everything at once.
    pub limit: Option<u32>,
    /// Continue token from the previous page; continuation pages carry no resourceVersion.
    pub continue_token: Option<String>,
    /// `None` (or `""`): a consistent (quorum) read; `"0"`: any state, possibly from the watch
    /// cache; anything else: per `resource_version_match`.
    pub resource_version: Option<String>,
    /// How `resource_version` is matched; `None` leaves it to the server (legacy "not older than").
    pub resource_version_match: Option<ResourceVersionMatch>,
    /// Label selector, as in `labelSelector`.
    pub label_selector: Option<String>,
    /// Field selector, as in `fieldSelector`.
    pub field_selector: Option<String>,
    /// Shard selector, as in `shardSelector` (KEP-5866, see [`crate::shard`]); a server that
    /// does not shard ignores it, so whoever sets it also filters what comes back.
    pub shard_selector: Option<String>,
}

/// Parameters of one watch request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchParams {
    /// Watch changes after this resourceVersion; `""` or `"0"` starts with synthetic `ADDED`
    /// events for the current state.
    pub resource_version: String,
    /// Server-side timeout (`timeoutSeconds`).
    pub timeout_seconds: Option<u32>,
    /// Ask for `BOOKMARK` events (`allowWatchBookmarks`).
    pub allow_bookmarks: bool,
    /// A streaming list (`sendInitialEvents=true`, `resourceVersionMatch=NotOlderThan`): the current
    /// state as `ADDED` events, then a bookmark annotated [`INITIAL_EVENTS_END_ANNOTATION`].
    pub send_initial_events: bool,
    /// Label selector, as in `labelSelector`.
    pub label_selector: Option<String>,
    /// Field selector, as in `fieldSelector`.
    pub field_selector: Option<String>,
    /// Shard selector, as in `shardSelector` (see [`ListParams::shard_selector`]).
    pub shard_selector: Option<String>,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage<K> {
    /// The objects of this page, each in the `Arc` the store and the handlers share (a source
    /// that decodes builds each one in place, with no second copy of the page).
    pub items: Vec<Arc<K>>,
    /// The list's resourceVersion (`metadata.resourceVersion`).
    pub resource_version: String,
    /// Token for the next page; `None` on the last page.
    pub continue_token: Option<String>,
    /// The shard selector the server applied (`metadata.shardInfo.selector`); `None` when it
    /// did not shard the list (no selector asked, or a server that ignores it).
    pub shard_info: Option<String>,
}

/// A `metav1.Status` failure, as sent in an HTTP error response or a watch `ERROR` event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiStatus {
    /// HTTP status code (0 if unset).
    pub code: u16,
    /// Machine-readable reason (`Expired`, `Gone`, `TooManyRequests`, ...).
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// The `reason` of each entry of `details.causes` (e.g. `ResourceVersionTooLarge`).
    pub causes: Vec<String>,
    /// How long the server asks the client to wait before retrying: `details.retryAfterSeconds`,
    /// or the response's `Retry-After` header (sent with 429, and with 503 by an API server
    /// whose watch cache is still initialising).
    pub retry_after: Option<Duration>,
}

impl ApiStatus {
    /// A status from its code, reason and message, without causes.
    pub fn new(code: u16, reason: impl Into<String>, message: impl Into<String>) -> Self {
        ApiStatus {
            code,
            reason: reason.into(),
            message: message.into(),
            causes: Vec::new(),
            retry_after: None,
        }
    }

    /// The `410 Gone` / `Expired` status a server sends for a compacted resourceVersion.
    pub fn gone(message: impl Into<String>) -> Self {
        ApiStatus::new(410, "Expired", message)
    }

    /// Whether the resourceVersion (or continue token) asked for is no longer available:
    /// HTTP 410, reason `Expired` or `Gone`, or the message "too old resource version".
    pub fn is_expired(&self) -> bool {
        self.code == 410
            || self.reason == "Expired"
            || self.reason == "Gone"
            || self.message.contains("too old resource version")
    }

    /// Whether the resourceVersion asked for is newer than the server knows (cause
    /// `ResourceVersionTooLarge`, or the older "Too large resource version" timeout message).
    pub fn is_too_large_resource_version(&self) -> bool {
        self.causes.iter().any(|c| c == "ResourceVersionTooLarge")
            || self
                .message
                .to_ascii_lowercase()
                .contains("too large resource version")
    }

    /// HTTP 429: the server asks the client to back off.
    pub fn is_too_many_requests(&self) -> bool {
        self.code == 429 || self.reason == "TooManyRequests"
    }
}

impl fmt::Display for ApiStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

/// One event of a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent<K> {
    /// An object was created (or, at the start of a watch from `""`/`"0"` or a streaming list,
    /// is part of the current state).
    Added(K),
    /// An object was changed.
    Modified(K),
    /// An object was deleted; this is its last state.
    Deleted(K),
    /// The server's resourceVersion advanced without a change the watch selects.
    Bookmark {
        /// The resourceVersion the watch has reached.
        resource_version: String,
        /// Whether this bookmark ends the initial events of a streaming list.
        initial_events_end: bool,
    },
    /// The server ended the watch with a failure status (for example 410 Expired).
    Error(ApiStatus),
}

/// Why a list or watch failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The server answered with a failure status.
    #[error("API server refused the request: {0}")]
    Status(ApiStatus),
    /// A response or watch event could not be decoded.
    #[error("malformed response ({context})")]
    Malformed {
        /// What was being decoded, and where.
        context: String,
        /// The decoding error, if any.
        #[source]
        source: Option<Box<dyn StdError + Send + Sync>>,
    },
    /// The connection failed (refused, reset, timed out, TLS).
    #[error("transport error talking to the API server")]
    Transport(#[source] Box<dyn StdError + Send + Sync>),
    /// The request could not be built from the parameters given.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A watch event was longer than the source accepts (see
    /// [`DecodeOptions::max_event_bytes`](crate::decode::DecodeOptions::max_event_bytes)). The
    /// watch ends with this error: resuming it would meet the same event again, so the Reflector
    /// ends the round and relists.
    #[error("watch event too large ({context}): {size} bytes or more, limit {limit}")]
    EventTooLarge {
        /// Which watch.
        context: String,
        /// The configured limit, in bytes.
        limit: usize,
        /// The bytes of the event seen when it was refused.
        size: usize,
    },
}

impl SourceError {
    /// A malformed-response error with context and no underlying cause.
    pub fn malformed(context: impl Into<String>) -> Self {
        SourceError::Malformed {
            context: context.into(),
            source: None,
        }
    }

    /// The failure status, if the server sent one.
    pub fn status(&self) -> Option<&ApiStatus> {
        match self {
            SourceError::Status(s) => Some(s),
            _ => None,
        }
    }

    /// HTTP 410 / `Expired` / "too old resource version". See [`ApiStatus::is_expired`].
    pub fn is_expired(&self) -> bool {
        self.status().is_some_and(ApiStatus::is_expired)
    }

    /// Alias of [`is_expired`](Self::is_expired), in HTTP's words.
    pub fn is_gone(&self) -> bool {
        self.is_expired()
    }

    /// See [`ApiStatus::is_too_large_resource_version`].
    pub fn is_too_large_resource_version(&self) -> bool {
        self.status()
            .is_some_and(ApiStatus::is_too_large_resource_version)
    }

    /// HTTP 429.
    pub fn is_too_many_requests(&self) -> bool {
        self.status().is_some_and(ApiStatus::is_too_many_requests)
    }

    /// A decoding failure.
    pub fn is_malformed(&self) -> bool {
        matches!(self, SourceError::Malformed { .. })
    }

    /// A watch event over the size limit ([`SourceError::EventTooLarge`]).
    pub fn is_event_too_large(&self) -> bool {
        matches!(self, SourceError::EventTooLarge { .. })
    }
}

/// The future a [`ListWatch::list`] returns.
pub type ListFuture<K> = BoxFuture<'static, Result<ListPage<K>, SourceError>>;
/// What [`ListWatch::list_reusing`] passes each listed object through: it returns the object to
/// keep, the listed one or an equal one the caller already holds (a relist keeps the cached copy
/// of every object whose resourceVersion did not change, so only what changed costs memory).
pub type Reuse<K> = Arc<dyn Fn(Arc<K>) -> Arc<K> + Send + Sync>;
/// The stream of a watch: events, or errors (a malformed event, a broken connection).
pub type WatchStream<K> = BoxStream<'static, Result<WatchEvent<K>, SourceError>>;
/// The future a [`ListWatch::watch`] returns: the stream once the server accepted the watch.
pub type WatchFuture<K> = BoxFuture<'static, Result<WatchStream<K>, SourceError>>;

/// Lists and watches one resource (one type, namespace and selector set).
///
/// Contract:
/// - `list` returns one page; the caller follows `continue_token`s.
/// - `watch` resolves once the server accepted the watch; the stream then yields events in the
///   server's order and ends when the server (or the connection) closes the watch. A failure
///   status is either the `Err` of the future (an HTTP error) or a [`WatchEvent::Error`].
/// - A malformed event is an `Err(SourceError::Malformed)` item, never a panic.
/// - The futures and streams own what they need (`'static`), so they can be raced against
///   shutdown and dropped at any point.
pub trait ListWatch<K>: Send + Sync + 'static {
    /// Lists one page.
    fn list(&self, params: &ListParams) -> ListFuture<K>;
    /// Lists one page like [`list`](Self::list), passing every object through `reuse` and
    /// keeping what it returns. A source that decodes objects one by one calls it as each is
    /// decoded, so a listed copy that `reuse` replaces is dropped at once instead of living
    /// until the page is complete ([`RawApi`](raw::RawApi) does); the default lists, then maps.
    fn list_reusing(&self, params: &ListParams, reuse: Reuse<K>) -> ListFuture<K>
    where
        K: Send + Sync + 'static,
    {
        let page = self.list(params);
        Box::pin(async move {
            let mut page = page.await?;
            page.items = page.items.into_iter().map(|item| reuse(item)).collect();
            Ok(page)
        })
    }
    /// Starts a watch.
    fn watch(&self, params: &WatchParams) -> WatchFuture<K>;
    /// A short description of what is listed (resource and namespace), for logs.
    fn describe(&self) -> String;
}
