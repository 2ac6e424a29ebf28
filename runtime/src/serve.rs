//! Metrics and health endpoints over HTTP.
//!
//! Kubernetes asks a controller two questions: *are you alive?* (the liveness probe; a failure
//! restarts the container) and *are you ready?* (the readiness probe; a failure takes the Pod out of
//! Service endpoints and holds a rolling update). Prometheus asks a third: *what are your numbers?*
//! [`HealthServer`] answers all three on one port, owned by one task that stops on a
//! [`CancellationToken`]:
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | the [`Registry`] in OpenMetrics text (with [`Metrics`]: controllers, work queues, informers) |
//! | `/healthz` (also `/livez`) | 200 when every liveness check passes (e.g. [`LeaderElector::check`]), else 500 |
//! | `/readyz` | 200 when every readiness check passes (e.g. [`informer_synced`](HealthServer::informer_synced)), else 503; the body also reports the leader |
//!
//! Each check is a cheap synchronous closure (read an atomic or a flag); the body lists each check as
//! `[+]name ok` or `[-]name failed: reason`, like the API server's own probes.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use prometheus_client::registry::Registry;
//! use reflex_runtime::serve::{HealthServer, ServeConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn doc() -> Result<(), reflex_runtime::serve::ServeError> {
//! let synced = Arc::new(AtomicBool::new(false));
//! let s = synced.clone();
//! let shutdown = CancellationToken::new();
//! let server = HealthServer::new(ServeConfig::default())
//!     .registry(Arc::new(Registry::default()))
//!     .readiness("informers-synced", move || {
//!         if s.load(Ordering::Relaxed) { Ok(()) } else { Err("caches not synced".into()) }
//!     })
//!     .start(shutdown.clone())
//!     .await?;
//! println!("serving on {}", server.local_addr());
//! shutdown.cancel();
//! server.join().await;
//! # Ok(())
//! # }
//! ```
//!
//! [`LeaderElector::check`]: crate::leader_election::LeaderElector::check
//! [`Metrics`]: crate::metrics::Metrics

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::registry::Registry;
use reflex_informer::SharedIndexInformer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::leader_election::LeaderState;

/// What can fail when serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listening socket could not be bound.
    #[error("binding the health server to {addr}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The bound socket's address could not be read.
    #[error("reading the health server's local address")]
    LocalAddr(#[source] std::io::Error),
}

/// Where to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeConfig {
    /// Listening address; defaults to `127.0.0.1:8080`. Use port 0 for an ephemeral port.
    pub addr: SocketAddr,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

/// A named health check: `Ok(())` when healthy, `Err(reason)` otherwise. Must be cheap and must
/// not block.
type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Default)]
struct Shared {
    registry: Option<Arc<Registry>>,
    liveness: Vec<(String, Check)>,
    readiness: Vec<(String, Check)>,
    leader: Option<watch::Receiver<LeaderState>>,
}

/// Builder of the `/metrics`, `/healthz`, `/readyz` server; see the [module docs](self).
pub struct HealthServer {
    config: ServeConfig,
    shared: Shared,
}

impl HealthServer {
    /// A server with no checks (always alive and ready) and no metrics.
    pub fn new(config: ServeConfig) -> Self {
        Self {
            config,
            shared: Shared::default(),
        }
    }

    /// Serves `registry` on `/metrics`.
    pub fn registry(mut self, registry: Arc<Registry>) -> Self {
        self.shared.registry = Some(registry);
        self
    }

    /// Adds a liveness check reported on `/healthz`.
    pub fn liveness(
        mut self,
        name: impl Into<String>,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.shared.liveness.push((name.into(), Arc::new(check)));
        self
    }

    /// Adds a readiness check reported on `/readyz`.
    pub fn readiness(
        mut self,
        name: impl Into<String>,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.shared.readiness.push((name.into(), Arc::new(check)));
        self
    }

    /// Adds a readiness check named `name` that passes once `informer` has synced (its initial
    /// list reached the store): a replica whose caches are cold is not ready. Until then the
    /// check reports the informer's [`SyncState`](reflex_informer::SyncState), e.g.
    /// `[-]pods failed: informer not synced: forbidden: list pods at cluster scope (...)`.
    pub fn informer_synced<K>(
        self,
        name: impl Into<String>,
        informer: &SharedIndexInformer<K>,
    ) -> Self
    where
        K: kube::Resource + Send + Sync + 'static,
    {
        let informer = informer.clone();
        self.readiness(name, move || {
            if informer.has_synced() {
                Ok(())
            } else if informer.is_stopped() {
                Err("informer stopped before it synced".into())
            } else {
                // Why: still listing, or failing with a cause (forbidden, not served, ...).
                Err(format!("informer not synced: {}", informer.sync_state()))
            }
        })
    }

    /// Reports the leader-election state in the `/readyz` body (it does not affect readiness:
    /// standbys are ready too).
    pub fn leader_state(mut self, state: watch::Receiver<LeaderState>) -> Self {
        self.shared.leader = Some(state);
        self
    }

    /// Binds the address and spawns the serving task, which stops accepting on `shutdown` and
    /// then lets open connections finish their current request.
    pub async fn start(self, shutdown: CancellationToken) -> Result<ServeHandle, ServeError> {
        let addr = self.config.addr;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(ServeError::LocalAddr)?;
        let shared = Arc::new(self.shared);
        let task = tokio::spawn(serve(listener, shared, shutdown));
        tracing::info!(addr = %local_addr, "health server listening");
        Ok(ServeHandle { local_addr, task })
    }
}

/// The running server: its address and its task.
pub struct ServeHandle {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ServeHandle {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits for the server task to end (after the shutdown token is cancelled).
    pub async fn join(self) {
        if let Err(error) = self.task.await {
            tracing::error!(%error, "health server task failed");
        }
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let http = hyper::server::conn::http1::Builder::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "health server accept failed");
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let service = hyper::service::service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(respond(&shared, &req)) }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%peer, %error, "health server connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    tracing::info!("health server stopped");
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

const PLAIN: &str = "text/plain; charset=utf-8";

fn run_checks(checks: &[(String, Check)], body: &mut String) -> bool {
    let mut healthy = true;
    for (name, check) in checks {
        match check() {
            Ok(()) => {
                let _ = writeln!(body, "[+]{name} ok");
            }
            Err(reason) => {
                healthy = false;
                let _ = writeln!(body, "[-]{name} failed: {reason}");
            }
        }
    }
    healthy
}

fn respond(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "method not allowed\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let mut body = String::new();
            if let Some(registry) = &shared.registry
                && let Err(error) = prometheus_client::encoding::text::encode(&mut body, registry)
            {
                tracing::error!(%error, "encoding metrics failed");
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    PLAIN,
                    "encoding metrics failed\n".into(),
                );
            }
            text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            )
        }
        "/healthz" | "/livez" => {
            let mut body = String::new();
            let ok = run_checks(&shared.liveness, &mut body);
            body.push_str(if ok {
                "healthz check passed\n"
            } else {
                "healthz check failed\n"
            });
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            text(status, PLAIN, body)
        }
        "/readyz" => {
            let mut body = String::new();
            let ok = run_checks(&shared.readiness, &mut body);
            if let Some(leader) = &shared.leader {
                let state = leader.borrow().clone();
                let _ = writeln!(
                    body,
                    "leader: {} (this replica leads: {})",
                    state.leader.as_deref().unwrap_or("none"),
                    state.is_leader
                );
            }
            body.push_str(if ok {
                "readyz check passed\n"
            } else {
                "readyz check failed\n"
            });
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, PLAIN, body)
        }
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
    }
}
