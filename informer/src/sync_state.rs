//! Sync state: whether an informer's cache is current, and if not, why.
//!
//! `has_synced() == false` says nothing an operator can act on: an informer whose list is
//! forbidden by RBAC, whose CRD is not installed, or whose API server answers 429 retries for
//! ever behind the same `false` (controller-runtime#1653). Reflex reports a value instead: every
//! informer (and every [`Reflector`](crate::reflector::Reflector)) publishes a [`SyncState`] on a
//! `tokio::sync::watch` channel.
//!
//! | state | meaning |
//! |---|---|
//! | [`Starting`](SyncState::Starting) | not listed yet (not running, or the first request is in flight) |
//! | [`Listing`](SyncState::Listing) | the first list is under way; `pages` arrived so far |
//! | [`Synced`](SyncState::Synced) | the store holds the list at `resource_version`; the watch keeps it current |
//! | [`Failing`](SyncState::Failing) | the last list or watch failed with `cause`; retried at `next_retry`. `last_sync` is set when the store had synced before: it keeps serving that (ageing) state |
//! | [`Stopped`](SyncState::Stopped) | the informer stopped |
//!
//! A failure stays visible until a list completes or a watch is established again: a retry in
//! progress does not hide it, so `/readyz` and the metrics do not flicker while a 403 repeats.
//! The informer retries by itself with the reflector's backoff, so a permission granted later or
//! a CRD installed later ends in `Synced` without a restart.
//!
//! # What each cause means
//!
//! | [`SyncFailure`] | typical reason | what to do |
//! |---|---|---|
//! | `Forbidden` | RBAC: the service account may not list or watch the resource in that scope | grant `list` and `watch` (a Role for one namespace, a ClusterRole for cluster scope) |
//! | `ResourceNotServed` | 404 on the collection: the CRD is not installed, or the group/version is not served | install the CRD or fix the version; the informer picks it up once served |
//! | `Unauthorized` | 401: the credentials are missing, expired or refused | refresh the token or kubeconfig |
//! | `Unreachable` | the connection failed (DNS, refused, TLS, reset) | check the address and network |
//! | `TooManyRequests` | 429 from API Priority and Fairness, or a watch cache still initialising | nothing: the informer waits at least `retry_after` |
//! | `Server` | any other status (5xx, 400, ...) | read the message |
//! | `Decode` | a response or event that could not be decoded, or one over the size limit | a bug or a version mismatch: report it |
//! | `InvalidRequest` | the request could not be built (a malformed selector) | fix the configuration |
//! | `Interrupted` | a watch that ended at once, a streaming list cut short, a closed sink | usually transient |
//!
//! # Where it shows
//!
//! - [`SharedIndexInformer::sync_state`](crate::SharedIndexInformer::sync_state) and
//!   [`subscribe_sync_state`](crate::SharedIndexInformer::subscribe_sync_state) (a
//!   `tokio::sync::watch` receiver: `wait_for(SyncState::is_current)` waits for a healthy cache);
//! - [`SharedInformerFactory::wait_for_cache_sync`](crate::SharedInformerFactory::wait_for_cache_sync)
//!   answers each informer's state;
//! - in `reflex-runtime`: the controller's `SyncTimeout` error names every unsynced informer with
//!   its state, `/readyz` prints it (`[-]pods failed: informer not synced: forbidden: list pods at
//!   cluster scope (4 attempts in 9.1s, next in 3.2s)`), and the metrics carry
//!   `reflex_informer_sync_state`, `reflex_informer_last_error_timestamp_seconds` and
//!   `reflex_informer_store_resource_version`.
//!
//! # When to turn read-your-writes on
//!
//! A `Synced` cache is current as of its watch, not as of this process's own writes: the event of
//! a write the reconcile just made may still be on its way. A reconcile that reads back what it
//! wrote (a status it computes the next step from, a counter, an object it created with
//! `generateName`) should record its writes on the informer
//! ([`record_write`](crate::SharedIndexInformer::record_write), see [`written`](crate::written))
//! and run with the controller's `read_your_writes`: a key whose write is not in the cache yet is
//! retried with backoff, per key. A reconcile that only converges desired state idempotently does
//! not need it. To see how far a cache trails the server in general, turn on the lag probe
//! ([`lag`](crate::lag)).
//!
//! # Throttling
//!
//! kube's client retries HTTP 429 (and 503, 504) responses itself, honouring `Retry-After`, up
//! to 15 times, before a request fails; what reaches the informer is a 429 that outlasted those
//! retries, a client built without them (`Config::default_retry = false`), or a 429 the server
//! sends as an `ERROR` event inside a watch. The reflector waits at least the server's
//! `Retry-After` (capped at [`MAX_RETRY_AFTER`](crate::reflector::MAX_RETRY_AFTER)) and, for a
//! watch, resumes from the last resourceVersion without relisting.
//!
//! # Bad input
//!
//! A `Status` without a code is classified by its reason (`Forbidden` → `Forbidden`, ...); an
//! unknown reason without a code is `Server { code: 0, .. }`. A resourceVersion that is not a
//! KEP-5504 integer is never an error here: [`resource_version`](crate::resource_version)
//! comparisons answer "not comparable" and the store-resourceVersion gauge is left out.
//!
//! ```
//! use reflex_informer::sync_state::{SyncFailure, SyncState};
//! use reflex_informer::source::{ApiStatus, SourceError};
//! use reflex_informer::sync_state::Target;
//!
//! let target = Target::from_url_path("/api/v1/pods");
//! let denied = SourceError::Status(ApiStatus::new(403, "Forbidden", "pods is forbidden"));
//! let cause = SyncFailure::classify(&denied, "list", &target);
//! assert_eq!(cause.to_string(), "forbidden: list pods at cluster scope");
//! assert!(!SyncState::Starting.has_synced());
//! ```

use std::fmt;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::reflector::ReflectorError;
use crate::source::SourceError;

/// When and at which resourceVersion the store last finished a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastSync {
    /// The list's resourceVersion.
    pub resource_version: String,
    /// When it completed (tokio's clock).
    pub at: Instant,
}

/// Where an informer is on its way to a current cache. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncState {
    /// Not listed yet.
    Starting,
    /// The first list is under way.
    Listing {
        /// When the list started.
        since: Instant,
        /// Pages (or, for a streaming list, none until its end) received so far.
        pages: u32,
    },
    /// The store holds the list at `resource_version` and the watch keeps it current.
    Synced {
        /// The resourceVersion of the most recent completed list.
        resource_version: String,
        /// When that list completed.
        at: Instant,
    },
    /// The last list or watch failed; the informer retries by itself.
    Failing {
        /// Why it failed (the most recent failure).
        cause: SyncFailure,
        /// When the current run of failures began.
        since: Instant,
        /// Failures in a row.
        attempts: u32,
        /// When the next attempt starts, if one is scheduled.
        next_retry: Option<Instant>,
        /// The store's last completed list if it had synced before (it keeps serving that state).
        last_sync: Option<LastSync>,
    },
    /// The informer stopped.
    Stopped {
        /// Whether its store had synced before it stopped.
        synced: bool,
    },
}

impl SyncState {
    /// Whether the store has synced (it may since have started failing: see
    /// [`is_current`](Self::is_current)). Matches the informer's `has_synced()`.
    pub fn has_synced(&self) -> bool {
        match self {
            SyncState::Synced { .. } => true,
            SyncState::Failing { last_sync, .. } => last_sync.is_some(),
            SyncState::Stopped { synced } => *synced,
            SyncState::Starting | SyncState::Listing { .. } => false,
        }
    }

    /// Whether the store has synced and its watch is healthy.
    pub fn is_current(&self) -> bool {
        matches!(self, SyncState::Synced { .. })
    }

    /// The cause, when failing.
    pub fn failure(&self) -> Option<&SyncFailure> {
        match self {
            SyncState::Failing { cause, .. } => Some(cause),
            _ => None,
        }
    }

    /// A small integer per state, for the `reflex_informer_sync_state` gauge: 0 starting,
    /// 1 listing, 2 synced, 3 failing before a sync, 4 failing after one, 5 stopped.
    pub fn code(&self) -> i64 {
        match self {
            SyncState::Starting => 0,
            SyncState::Listing { .. } => 1,
            SyncState::Synced { .. } => 2,
            SyncState::Failing {
                last_sync: None, ..
            } => 3,
            SyncState::Failing { .. } => 4,
            SyncState::Stopped { .. } => 5,
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl fmt::Display for SyncState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = Instant::now();
        match self {
            SyncState::Starting => f.write_str("starting"),
            SyncState::Listing { since, pages } => write!(
                f,
                "listing ({pages} pages in {})",
                secs(now.saturating_duration_since(*since))
            ),
            SyncState::Synced {
                resource_version, ..
            } => write!(f, "synced at resourceVersion {resource_version}"),
            SyncState::Failing {
                cause,
                since,
                attempts,
                next_retry,
                last_sync,
            } => {
                write!(
                    f,
                    "{cause} ({attempts} attempts in {}",
                    secs(now.saturating_duration_since(*since))
                )?;
                if let Some(at) = next_retry {
                    write!(f, ", next in {}", secs(at.saturating_duration_since(now)))?;
                }
                f.write_str(")")?;
                if let Some(sync) = last_sync {
                    write!(
                        f,
                        "; serving the cache synced at resourceVersion {}",
                        sync.resource_version
                    )?;
                }
                Ok(())
            }
            SyncState::Stopped { synced: true } => f.write_str("stopped (had synced)"),
            SyncState::Stopped { synced: false } => f.write_str("stopped before it synced"),
        }
    }
}

/// What an informer lists: the resource (plural, with its group) and the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `pods`, `deployments.apps`, `foos.example.com`.
    pub resource: String,
    /// The namespace, `None` at cluster scope.
    pub namespace: Option<String>,
}

impl Target {
    /// Reads a collection path (`/api/v1/pods`, `/apis/apps/v1/namespaces/ns/deployments`).
    /// Anything else is kept whole as the resource, at cluster scope.
    pub fn from_url_path(path: &str) -> Self {
        let path = path.split_whitespace().next().unwrap_or("");
        let path = path.split('?').next().unwrap_or("");
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (group, rest) = match segments.as_slice() {
            ["api", _version, rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => {
                return Target {
                    resource: path.to_owned(),
                    namespace: None,
                };
            }
        };
        let (namespace, resource) = match rest {
            ["namespaces", ns, resource, ..] => (Some((*ns).to_owned()), *resource),
            [resource, ..] => (None, *resource),
            [] => (None, ""),
        };
        let resource = if group.is_empty() {
            resource.to_owned()
        } else {
            format!("{resource}.{group}")
        };
        Target {
            resource,
            namespace,
        }
    }
}

/// Why an informer's last list or watch failed. See the [module docs](self) for what each
/// means and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncFailure {
    /// 403: the credentials may not `verb` the resource in that scope.
    Forbidden {
        /// `list` or `watch`.
        verb: &'static str,
        /// The resource.
        resource: String,
        /// The namespace, `None` at cluster scope.
        namespace: Option<String>,
        /// The server's message.
        message: String,
    },
    /// 404 on the collection: the resource is not served (a CRD not installed, a version not
    /// served).
    ResourceNotServed {
        /// The resource.
        resource: String,
        /// The server's message.
        message: String,
    },
    /// 401: the credentials were refused.
    Unauthorized {
        /// The server's message.
        message: String,
    },
    /// The connection failed.
    Unreachable {
        /// The transport error, with its causes.
        message: String,
    },
    /// 429: the server asked to back off.
    TooManyRequests {
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// Any other failure status.
    Server {
        /// The HTTP code (0 if the status carried none).
        code: u16,
        /// The status reason.
        reason: String,
        /// The server's message.
        message: String,
    },
    /// A response or event could not be decoded (or was over the size limit).
    Decode {
        /// What failed to decode.
        message: String,
    },
    /// The request could not be built from the configuration.
    InvalidRequest {
        /// What is wrong.
        message: String,
    },
    /// A watch or streaming list ended abnormally, or the sink refused a write.
    Interrupted {
        /// What happened.
        message: String,
    },
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

impl SyncFailure {
    /// Classifies a failed `verb` (`"list"` or `"watch"`) on `target`.
    pub fn classify(err: &SourceError, verb: &'static str, target: &Target) -> Self {
        match err {
            SourceError::Status(status) => {
                let code = match (status.code, status.reason.as_str()) {
                    (0, "Unauthorized") => 401,
                    (0, "Forbidden") => 403,
                    (0, "NotFound") => 404,
                    (0, "TooManyRequests") => 429,
                    (code, _) => code,
                };
                match code {
                    401 => SyncFailure::Unauthorized {
                        message: status.message.clone(),
                    },
                    403 => SyncFailure::Forbidden {
                        verb,
                        resource: target.resource.clone(),
                        namespace: target.namespace.clone(),
                        message: status.message.clone(),
                    },
                    404 => SyncFailure::ResourceNotServed {
                        resource: target.resource.clone(),
                        message: status.message.clone(),
                    },
                    429 => SyncFailure::TooManyRequests {
                        retry_after: status.retry_after,
                    },
                    code => SyncFailure::Server {
                        code,
                        reason: status.reason.clone(),
                        message: status.message.clone(),
                    },
                }
            }
            SourceError::Malformed { .. } | SourceError::EventTooLarge { .. } => {
                SyncFailure::Decode {
                    message: error_chain(err),
                }
            }
            SourceError::Transport(_) => SyncFailure::Unreachable {
                message: error_chain(err),
            },
            SourceError::InvalidRequest(message) => SyncFailure::InvalidRequest {
                message: message.clone(),
            },
        }
    }

    /// Classifies the error that ended a list-and-watch round.
    pub fn from_round(err: &ReflectorError, target: &Target) -> Self {
        match err {
            ReflectorError::List(e) => Self::classify(e, "list", target),
            ReflectorError::Watch(e) => Self::classify(e, "watch", target),
            ReflectorError::Malformed(e) => SyncFailure::Decode {
                message: error_chain(e),
            },
            other => SyncFailure::Interrupted {
                message: error_chain(other),
            },
        }
    }

    /// The failure's short name, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            SyncFailure::Forbidden { .. } => "forbidden",
            SyncFailure::ResourceNotServed { .. } => "resource_not_served",
            SyncFailure::Unauthorized { .. } => "unauthorized",
            SyncFailure::Unreachable { .. } => "unreachable",
            SyncFailure::TooManyRequests { .. } => "too_many_requests",
            SyncFailure::Server { .. } => "server",
            SyncFailure::Decode { .. } => "decode",
            SyncFailure::InvalidRequest { .. } => "invalid_request",
            SyncFailure::Interrupted { .. } => "interrupted",
        }
    }
}

impl fmt::Display for SyncFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncFailure::Forbidden {
                verb,
                resource,
                namespace,
                ..
            } => match namespace {
                Some(ns) => write!(f, "forbidden: {verb} {resource} in namespace {ns:?}"),
                None => write!(f, "forbidden: {verb} {resource} at cluster scope"),
            },
            SyncFailure::ResourceNotServed { resource, .. } => write!(
                f,
                "resource not served: {resource} (is its CustomResourceDefinition installed?)"
            ),
            SyncFailure::Unauthorized { message } => write!(f, "unauthorized: {message}"),
            SyncFailure::Unreachable { message } => write!(f, "unreachable: {message}"),
            SyncFailure::TooManyRequests {
                retry_after: Some(d),
            } => write!(f, "too many requests (retry after {})", secs(*d)),
            SyncFailure::TooManyRequests { retry_after: None } => f.write_str("too many requests"),
            SyncFailure::Server {
                code,
                reason,
                message,
            } => write!(f, "server error {code} {reason}: {message}"),
            SyncFailure::Decode { message } => write!(f, "decode: {message}"),
            SyncFailure::InvalidRequest { message } => write!(f, "invalid request: {message}"),
            SyncFailure::Interrupted { message } => write!(f, "interrupted: {message}"),
        }
    }
}

struct Failure {
    cause: SyncFailure,
    since: Instant,
    attempts: u32,
    next_retry: Option<Instant>,
}

#[derive(Default)]
struct Progress {
    /// `Synced` only once the store says so (an informer), not when the list reached the sink.
    await_store: bool,
    store_synced: bool,
    listing: Option<(Instant, u32)>,
    last_sync: Option<LastSync>,
    failure: Option<Failure>,
    /// Wall-clock time of the most recent failure, for a metric.
    last_error: Option<SystemTime>,
    stopped: bool,
}

impl Progress {
    fn synced(&self) -> bool {
        self.last_sync.is_some() && (!self.await_store || self.store_synced)
    }

    fn state(&self) -> SyncState {
        let synced = self.synced();
        if self.stopped {
            return SyncState::Stopped { synced };
        }
        if let Some(failure) = &self.failure {
            return SyncState::Failing {
                cause: failure.cause.clone(),
                since: failure.since,
                attempts: failure.attempts,
                next_retry: failure.next_retry,
                last_sync: if synced { self.last_sync.clone() } else { None },
            };
        }
        match (&self.last_sync, synced, self.listing) {
            (Some(sync), true, _) => SyncState::Synced {
                resource_version: sync.resource_version.clone(),
                at: sync.at,
            },
            (_, _, Some((since, pages))) => SyncState::Listing { since, pages },
            _ => SyncState::Starting,
        }
    }
}

/// Publishes a [`SyncState`] from the events of a reflector (and, for an informer, of its
/// store).
pub(crate) struct SyncTracker {
    tx: watch::Sender<SyncState>,
    progress: Mutex<Progress>,
}

impl SyncTracker {
    /// A tracker in `Starting`; `await_store`: report `Synced` only after
    /// [`store_synced`](Self::store_synced).
    pub(crate) fn new(await_store: bool) -> Self {
        SyncTracker {
            tx: watch::Sender::new(SyncState::Starting),
            progress: Mutex::new(Progress {
                await_store,
                ..Progress::default()
            }),
        }
    }

    fn update(&self, change: impl FnOnce(&mut Progress)) {
        let mut progress = self.progress.lock();
        change(&mut progress);
        let state = progress.state();
        // Published under the lock so that concurrent updates reach watchers in order.
        self.tx.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<SyncState> {
        self.tx.subscribe()
    }

    pub(crate) fn state(&self) -> SyncState {
        self.tx.borrow().clone()
    }

    pub(crate) fn list_started(&self) {
        self.update(|p| p.listing = Some((Instant::now(), 0)));
    }

    pub(crate) fn list_page(&self) {
        self.update(|p| {
            if let Some((_, pages)) = &mut p.listing {
                *pages += 1;
            }
        });
    }

    pub(crate) fn list_done(&self, resource_version: &str) {
        self.update(|p| {
            p.last_sync = Some(LastSync {
                resource_version: resource_version.to_owned(),
                at: Instant::now(),
            });
            p.failure = None;
        });
    }

    pub(crate) fn store_synced(&self) {
        self.update(|p| p.store_synced = true);
    }

    /// The watch is established (or delivered an event) again: a failure is over.
    pub(crate) fn recovered(&self) {
        if self.progress.lock().failure.is_none() {
            return;
        }
        self.update(|p| p.failure = None);
    }

    /// When the most recent failure happened (wall clock), if any did.
    pub(crate) fn last_error_at(&self) -> Option<SystemTime> {
        self.progress.lock().last_error
    }

    pub(crate) fn failed(&self, cause: SyncFailure, next_retry: Option<Instant>) {
        self.update(|p| {
            let now = Instant::now();
            p.last_error = Some(SystemTime::now());
            match &mut p.failure {
                Some(f) => {
                    f.cause = cause;
                    f.attempts += 1;
                    f.next_retry = next_retry;
                }
                None => {
                    p.failure = Some(Failure {
                        cause,
                        since: now,
                        attempts: 1,
                        next_retry,
                    })
                }
            }
        });
    }

    pub(crate) fn stopped(&self) {
        self.update(|p| p.stopped = true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ApiStatus;

    #[test]
    fn collection_paths_name_resource_and_scope() {
        let cases = [
            ("/api/v1/pods", "pods", None),
            ("/api/v1/namespaces/ns1/pods", "pods", Some("ns1")),
            ("/apis/apps/v1/deployments", "deployments.apps", None),
            (
                "/apis/example.com/v1/namespaces/x/foos (raw)",
                "foos.example.com",
                Some("x"),
            ),
            ("memory", "memory", None),
        ];
        for (path, resource, ns) in cases {
            let t = Target::from_url_path(path);
            assert_eq!(t.resource, resource, "{path}");
            assert_eq!(t.namespace.as_deref(), ns, "{path}");
        }
    }

    #[test]
    fn statuses_map_to_their_causes() {
        let t = Target::from_url_path("/api/v1/namespaces/team-a/pods");
        let status = |code, reason| SourceError::Status(ApiStatus::new(code, reason, "m"));
        let f = SyncFailure::classify(&status(403, "Forbidden"), "watch", &t);
        assert_eq!(
            f.to_string(),
            "forbidden: watch pods in namespace \"team-a\""
        );
        assert_eq!(
            SyncFailure::classify(&status(404, "NotFound"), "list", &t).kind(),
            "resource_not_served"
        );
        assert_eq!(
            SyncFailure::classify(&status(401, "Unauthorized"), "list", &t).kind(),
            "unauthorized"
        );
        // A Status without a code is read by its reason; an unknown one is a server error.
        assert_eq!(
            SyncFailure::classify(&status(0, "Forbidden"), "list", &t).kind(),
            "forbidden"
        );
        assert_eq!(
            SyncFailure::classify(&status(0, "SomethingNew"), "list", &t),
            SyncFailure::Server {
                code: 0,
                reason: "SomethingNew".into(),
                message: "m".into()
            }
        );
        let mut throttled = ApiStatus::new(429, "TooManyRequests", "slow down");
        throttled.retry_after = Some(Duration::from_secs(3));
        assert_eq!(
            SyncFailure::classify(&SourceError::Status(throttled), "list", &t),
            SyncFailure::TooManyRequests {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(
            SyncFailure::classify(&SourceError::malformed("x"), "list", &t).kind(),
            "decode"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_stays_until_a_success_and_an_informer_waits_for_its_store() {
        let tracker = SyncTracker::new(true);
        assert_eq!(tracker.state(), SyncState::Starting);
        tracker.list_started();
        tracker.list_page();
        assert!(matches!(
            tracker.state(),
            SyncState::Listing { pages: 1, .. }
        ));
        let cause = SyncFailure::Unauthorized {
            message: "no".into(),
        };
        tracker.failed(cause.clone(), None);
        tracker.list_started();
        tracker.failed(cause.clone(), None);
        match tracker.state() {
            SyncState::Failing {
                attempts: 2,
                last_sync: None,
                ..
            } => {}
            other => panic!("{other:?}"),
        }
        tracker.list_done("7");
        // Listed, but the store has not taken it all yet.
        assert!(matches!(tracker.state(), SyncState::Listing { .. }));
        tracker.store_synced();
        assert!(tracker.state().is_current());
        // A synced informer whose watch fails says so, and still counts as synced.
        tracker.failed(cause, None);
        let state = tracker.state();
        assert!(state.has_synced() && !state.is_current(), "{state:?}");
        assert_eq!(state.code(), 4);
        tracker.recovered();
        assert!(tracker.state().is_current());
        tracker.stopped();
        assert_eq!(tracker.state(), SyncState::Stopped { synced: true });
    }
}
