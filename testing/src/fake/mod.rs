//! An in-process fake Kubernetes API server speaking the REST API over real HTTP.
//!
//! Tests of informers and controllers need the wire behaviour of an apiserver (resourceVersions,
//! 409s, watches, 410s) without a cluster. [`FakeApiServer`] stores every object as generic JSON,
//! so it needs no `k8s-openapi` types, and serves any built-in or CRD-defined resource through the
//! same code. Faults are injected through [`FaultHandle`].
//!
//! Writes get a cluster's answers: [`validation`] refuses what kube-apiserver refuses (422 with
//! the same causes) and writes the defaults a cluster writes; CRDs' schemas prune, default and
//! validate custom resources; `/scale` is served; garbage collection by owner references and
//! namespace deletion run as kube-controller-manager runs them beside a real API server
//! ([`FakeConfig::garbage_collection`]); strategic merge patches merge lists by their keys and
//! server-side apply records field ownership in `managedFields`, answering 409 on conflicts.
//! Answers follow [`FakeConfig::minor_version`] (1.37 by default, or 1.35) where the two differ.
//!
//! Where a client can tell, it answers as kube-apiserver does (the envtest fidelity test
//! compares the two, against v1.35.4 and v1.37.2): `Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`
//! gets metadata-only objects, lists, and watch events (the first acceptable range of the header
//! wins; `as=Table` and protobuf are skipped, plain JSON is the fallback); list items carry no
//! `apiVersion`/`kind`; DELETE answers a `Status` unless the object outlives the call; boolean
//! query parameters read any value but `0`/`false` as true; selectors with invalid label keys or
//! values, or on fields the resource has no field label for, answer 400. kubectl and the official
//! Python client are tested against it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), reflex_testing::FakeError> {
//! let server = reflex_testing::FakeApiServer::start().await?;
//! let client: kube::Client = server.client()?;
//! # let _ = client;
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod decode;
mod faults;
mod managed;
mod media;
mod patch;
mod protobuf;
mod resources;
mod scale;
mod selectors;
mod server;
mod shard;
mod status;
mod storage;
pub mod validation;
mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use resources::{ResourceDef, ScalePaths, ScaleSelector};
pub use status::ApiError;

use server::Shared;
use storage::Storage;

/// Errors of the fake server's own API (not of requests it serves).
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    /// Binding the listener failed.
    #[error("binding {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Building the kube client failed.
    #[error("building kube client: {0}")]
    Client(#[source] kube::Error),
    /// Parsing the server URL failed.
    #[error("invalid server url: {0}")]
    Url(#[source] http::uri::InvalidUri),
    /// Writing the kubeconfig failed.
    #[error("writing kubeconfig {path}: {source}")]
    Kubeconfig {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// An object given in code was rejected.
    #[error("object rejected: {0}")]
    Rejected(#[source] ApiError),
}

/// Configuration of a [`FakeApiServer`].
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Address to bind; port 0 picks a free port.
    pub addr: SocketAddr,
    /// Number of events kept for watches and Exact lists.
    pub history_size: usize,
    /// Events buffered per watch before the watcher is closed with 410.
    pub watch_buffer: usize,
    /// Interval between BOOKMARK events when bookmarks are requested.
    pub bookmark_interval: Duration,
    /// The largest request body accepted, in bytes; a larger one is answered `413
    /// RequestEntityTooLarge` without being read further. Default [`MAX_REQUEST_BODY_BYTES`]
    /// (3 MiB, the `MaxRequestBodyBytes` of kube-apiserver's generic server config).
    pub max_request_body_bytes: usize,
    /// Responses at least this many bytes long are gzip-compressed, as one member, for a client
    /// that sends `Accept-Encoding: gzip`; `None` never compresses them (a server with
    /// `APIResponseCompression` off). Default [`GZIP_MIN_BYTES`] (128 KiB, kube-apiserver's
    /// threshold).
    pub gzip_min_bytes: Option<usize>,
    /// Compress the body of a streaming-list watch (`sendInitialEvents=true`) for a client that
    /// accepts gzip, one gzip member per event. kube-apiserver 1.37's `WatchListCompression`
    /// (beta, on by default) ends a member at each flush, after one event or a batch (401
    /// events came in 10 members from envtest 1.37.2); one per event is the most members a
    /// client can meet. Default `true`; other watches are never compressed.
    pub gzip_watch_lists: bool,
    /// Honour `drop=metadata.managedFields` in `Accept` (KEP-5958): list items, objects and
    /// watch events leave managedFields out. Default `true`; `false` answers as a server
    /// without the feature does (before 1.38, or with `ManagedFieldsOptOut` off): the parameter
    /// is ignored.
    pub drop_managed_fields: bool,
    /// Honour `shardSelector` on lists, watches and collection deletes (KEP-5866, kube-apiserver
    /// 1.36+ with the alpha `ShardedListAndWatch` gate on): only the objects whose 64-bit FNV-1a
    /// hash of `metadata.uid` or `metadata.namespace` lies in a range asked for, and lists echo
    /// the selector in `metadata.shardInfo`. Default `true`; `false` answers as a cluster without
    /// the gate (its default) does: the parameter is ignored and no `shardInfo` is sent. A fake
    /// answering as 1.35 ([`minor_version`](Self::minor_version)) ignores it too.
    pub sharded_list_and_watch: bool,
    /// Refuse what kube-apiserver refuses, with its 422 `Invalid` answers: names per kind,
    /// labels and annotations, the invariants of the workload and core kinds, immutable fields.
    /// Default `true`; `false` stores whatever is sent (the fake before this option).
    pub validation: bool,
    /// Run what kube-controller-manager runs beside the API server on a cluster: garbage
    /// collection by `ownerReferences` (the `Background`, `Foreground` and `Orphan` propagation
    /// policies) and namespace deletion (a deleted namespace's objects are deleted, then the
    /// namespace). Synchronous: done when the DELETE returns. Default `true`; `false` answers as
    /// kube-apiserver alone (envtest) does: dependents stay, a deleted namespace stays
    /// `Terminating`.
    pub garbage_collection: bool,
    /// The Kubernetes minor version the fake answers as (`/version`, and the rules that
    /// changed between releases: Service names, owner reference causes, StatefulSet update
    /// causes and defaults; see [`validation`]). Default [`NEWEST_MINOR`] (1.37, the newest
    /// release); [`OLDEST_MINOR`] (1.35) for the oldest supported. Checked against
    /// kube-apiserver v1.35.4 and v1.37.2; a minor in between answers as 1.35.
    pub minor_version: u32,
}

/// The newest Kubernetes minor the fake answers as (1.37).
pub const NEWEST_MINOR: u32 = 37;
/// The oldest supported Kubernetes minor (1.35).
pub const OLDEST_MINOR: u32 = 35;

/// kube-apiserver's size threshold for compressing a response: 128 KiB.
pub const GZIP_MIN_BYTES: usize = 128 * 1024;

/// kube-apiserver's default limit on a request body: 3 MiB.
pub const MAX_REQUEST_BODY_BYTES: usize = 3 * 1024 * 1024;

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            history_size: 10_000,
            watch_buffer: 1_000,
            bookmark_interval: Duration::from_secs(60),
            max_request_body_bytes: MAX_REQUEST_BODY_BYTES,
            gzip_min_bytes: Some(GZIP_MIN_BYTES),
            gzip_watch_lists: true,
            drop_managed_fields: true,
            sharded_list_and_watch: true,
            validation: true,
            garbage_collection: true,
            minor_version: NEWEST_MINOR,
        }
    }
}

/// A running fake API server; stopped by [`FakeApiServer::shutdown`] or on drop.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Injects faults into a running server; cheap to clone.
#[derive(Clone)]
pub struct FaultHandle {
    shared: Arc<Shared>,
}

impl FaultHandle {
    /// Closes every open watch stream.
    pub fn drop_watches(&self) {
        self.shared.storage.lock().drop_watchers();
    }

    /// Fails the next `n` requests (optionally only of a verb such as `"list"` and/or a resource
    /// plural such as `"pods"`) with the given HTTP code.
    pub fn fail_next(&self, n: usize, code: u16, verb: Option<&str>, resource: Option<&str>) {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            410 => "Expired",
            422 => "Invalid",
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "Unknown",
        };
        self.shared.faults.fail_next(
            n,
            ApiError::new(code, reason, "injected fault"),
            verb,
            resource,
        );
    }

    /// Fails every matching request with `code` until [`clear_failures`](Self::clear_failures):
    /// a permission not granted yet (403), a resource not served yet (404).
    pub fn fail_until_cleared(&self, code: u16, verb: Option<&str>, resource: Option<&str>) {
        self.fail_next(usize::MAX, code, verb, resource);
    }

    /// Forgets every pending [`fail_next`](Self::fail_next) and
    /// [`throttle_next`](Self::throttle_next) rule.
    pub fn clear_failures(&self) {
        self.shared.faults.clear_failures();
    }

    /// Answers the next `n` matching requests `429 TooManyRequests` with `Retry-After:
    /// retry_after_seconds` (header and `details.retryAfterSeconds`), as API Priority and
    /// Fairness, or an API server whose watch cache is still initialising, does.
    pub fn throttle_next(
        &self,
        n: usize,
        retry_after_seconds: u32,
        verb: Option<&str>,
        resource: Option<&str>,
    ) {
        let mut error = ApiError::new(
            429,
            "TooManyRequests",
            "the server has received too many requests and has asked us to try again later",
        );
        error.retry_after_seconds = Some(retry_after_seconds);
        self.shared.faults.fail_next(n, error, verb, resource);
    }

    /// Holds back the change events of every watch (open and new) until
    /// [`release_watch_events`](Self::release_watch_events): writes succeed and are served by
    /// GET and LIST, but clients' caches do not hear of them, as when a real API server's watch
    /// lags. Nothing is lost: held events are sent, in order, once released.
    pub fn hold_watch_events(&self) {
        self.shared.faults.set_events_held(true);
    }

    /// Sends the events held since [`hold_watch_events`](Self::hold_watch_events).
    pub fn release_watch_events(&self) {
        self.shared.faults.set_events_held(false);
    }

    /// How many responses the server has sent gzip-encoded (lists over
    /// [`FakeConfig::gzip_min_bytes`] and streaming-list watches, to clients that asked).
    pub fn gzip_responses(&self) -> u64 {
        self.shared.faults.gzip_responses()
    }

    /// How many response body bytes the server has sent, as they went on the wire (after
    /// compression): what a client's traffic cost, for benchmarks and tests.
    pub fn response_bytes(&self) -> u64 {
        self.shared.faults.response_bytes()
    }

    /// Delays every response by `d` (None clears).
    pub fn set_delay(&self, d: Option<Duration>) {
        self.shared.faults.set_delay(d);
    }

    /// Forgets the event history: older resourceVersions and continue tokens answer 410.
    pub fn compact(&self) {
        self.shared.storage.lock().compact();
    }

    /// Expires every client's history at once: the resourceVersion advances (as a write to an
    /// unrelated resource would), the history is compacted and every open watch is closed, so
    /// each watch that resumes from the resourceVersion it had reached answers `410 Expired` and
    /// its client relists, as after an etcd compaction that outran a watch.
    pub fn expire_history(&self) {
        let mut storage = self.shared.storage.lock();
        storage.advance_and_compact();
        storage.drop_watchers();
    }

    /// Expires the next continue token: when the next list request carrying one arrives, the
    /// resourceVersion advances (as a write to an unrelated resource would) and the history is
    /// compacted before the request is served, so it answers `410 Expired` as a real apiserver
    /// does when etcd compacts between the pages of a list. Clients are expected to relist.
    pub fn expire_next_continue(&self) {
        self.shared.faults.set_expire_next_continue();
    }

    /// Requests received so far for a verb (`"get"`, `"list"`, `"watch"`, `"create"`,
    /// `"update"`, `"patch"`, `"delete"`, `"deletecollection"`) and resource plural, counted when
    /// they are routed (after a pause, before an injected failure); failed requests count too.
    /// Discovery requests count under the verb `"discovery"` and their path without the leading
    /// slash (`"api"`, `"apis"`, `"api/v1"`, `"apis/apps/v1"`).
    pub fn request_count(&self, verb: &str, resource: &str) -> u64 {
        self.shared.faults.request_count(verb, resource)
    }

    /// Writes raw bytes into every open watch stream.
    pub fn inject_watch_bytes(&self, bytes: impl Into<Bytes>) {
        self.shared.storage.lock().inject_raw(bytes.into());
    }

    /// Holds new requests until [`FaultHandle::resume`].
    pub fn pause(&self) {
        self.shared.faults.set_paused(true);
    }

    /// Releases held requests.
    pub fn resume(&self) {
        self.shared.faults.set_paused(false);
    }

    /// Number of open watch streams.
    pub fn watch_count(&self) -> usize {
        self.shared.storage.lock().watcher_count()
    }
}

impl FakeApiServer {
    /// Starts a server with the default configuration on a free loopback port.
    pub async fn start() -> Result<Self, FakeError> {
        Self::start_with(FakeConfig::default()).await
    }

    /// Starts a server with a configuration.
    pub async fn start_with(config: FakeConfig) -> Result<Self, FakeError> {
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| FakeError::Bind {
                addr: config.addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| FakeError::Bind {
            addr: config.addr,
            source,
        })?;
        let shared = Arc::new(Shared {
            storage: Mutex::new({
                let mut s = Storage::new(config.history_size, config.watch_buffer);
                s.validate = config.validation;
                s.gc = config.garbage_collection;
                s.minor = config.minor_version;
                s
            }),
            faults: faults::Faults::default(),
            bookmark_interval: config.bookmark_interval,
            max_request_body_bytes: config.max_request_body_bytes,
            gzip_min_bytes: config.gzip_min_bytes,
            gzip_watch_lists: config.gzip_watch_lists,
            drop_managed_fields: config.drop_managed_fields,
            sharded_list_and_watch: config.sharded_list_and_watch && config.minor_version >= 36,
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, shared.clone(), cancel.clone()));
        tracing::info!(%addr, "fake apiserver started");
        Ok(Self {
            addr,
            shared,
            cancel,
            task: Mutex::new(Some(task)),
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A `kube::Client` pointing at this server (plain HTTP, no auth).
    pub fn client(&self) -> Result<kube::Client, FakeError> {
        let uri = self.url().parse().map_err(FakeError::Url)?;
        let config = kube::Config::new(uri);
        kube::Client::try_from(config).map_err(FakeError::Client)
    }

    /// Writes a kubeconfig for kubectl and other clients.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> Result<(), FakeError> {
        let path = path.as_ref();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(path, text).map_err(|source| FakeError::Kubeconfig {
            path: path.display().to_string(),
            source,
        })
    }

    /// The fault-injection handle.
    pub fn faults(&self) -> FaultHandle {
        FaultHandle {
            shared: self.shared.clone(),
        }
    }

    /// Registers resources from a `CustomResourceDefinition` object, as `kubectl apply` would.
    pub fn register_crd(&self, crd: Value) -> Result<(), FakeError> {
        let key = resources::ResKey {
            group: "apiextensions.k8s.io".into(),
            version: "v1".into(),
            plural: "customresourcedefinitions".into(),
        };
        self.shared
            .storage
            .lock()
            .create(&key, "", crd)
            .map(|_| ())
            .map_err(FakeError::Rejected)
    }

    /// Creates an object given in code, resolving its resource from `apiVersion` and `kind`;
    /// namespaced objects without a namespace go to `default`.
    pub fn seed(&self, obj: Value) -> Result<Value, FakeError> {
        let mut storage = self.shared.storage.lock();
        let (def, ns) = resolve(&storage, &obj)?;
        storage
            .create(&def.key(), &ns, obj)
            .map(|o| (*o).clone())
            .map_err(FakeError::Rejected)
    }

    /// Replaces an existing object given in code (as a PUT would), resolving its resource from
    /// `apiVersion` and `kind`; watchers see a MODIFIED event. A `metadata.resourceVersion` in
    /// `obj` is checked (409 Conflict when stale); without one the update is unconditional.
    /// Benchmarks and tests use it to drive watch streams without an HTTP client.
    pub fn update(&self, obj: Value) -> Result<Value, FakeError> {
        let mut storage = self.shared.storage.lock();
        let (def, ns) = resolve(&storage, &obj)?;
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        storage
            .update(&def.key(), &ns, &name, obj, false)
            .map(|o| (*o).clone())
            .map_err(FakeError::Rejected)
    }

    /// Current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.storage.lock().current_rv()
    }

    /// Stops accepting, closes every connection and waits for the server task.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let task = self.task.lock().take();
        if let Some(task) = task {
            // The task only ends by cancellation; a join error means it panicked, nothing to do.
            let _ = task.await;
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The resource of an object given in code (from `apiVersion` and `kind`) and its namespace
/// (`default` when a namespaced object names none; empty for cluster-scoped resources).
fn resolve(storage: &Storage, obj: &Value) -> Result<(ResourceDef, String), FakeError> {
    let field = |f: &str| obj.get(f).and_then(Value::as_str).unwrap_or_default();
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    let def = storage
        .defs()
        .find(|d| d.api_version() == api_version && d.kind == kind)
        .cloned()
        .ok_or_else(|| {
            FakeError::Rejected(ApiError::new(
                404,
                "NotFound",
                format!("no resource for {api_version} {kind}"),
            ))
        })?;
    let ns = if def.namespaced {
        obj.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string()
    } else {
        String::new()
    };
    Ok((def, ns))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let shared = shared.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| server::handle(shared.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = conn => if let Err(e) = r { tracing::debug!(%peer, error = %e, "connection ended"); },
            }
        });
    }
    shared.storage.lock().drop_watchers();
    tracing::info!("fake apiserver stopped");
}
