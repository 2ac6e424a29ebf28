//! A TCP fault proxy: an in-process proxy between a client and an API server (the fake one, a
//! real one, or anything else that speaks TCP) that misbehaves on command, like a bad network.
//!
//! [`FaultProxy::start`] listens on a loopback port and forwards every connection to the
//! upstream address. Point the client at [`FaultProxy::url`] (or [`FaultProxy::client`]) and
//! script the network from the test through [`ProxyFaults`], at any time, for every open and
//! future connection:
//!
//! - **latency** ([`ProxyFaults::set_latency`]): each chunk read is forwarded that much later;
//! - **bandwidth** ([`ProxyFaults::set_bandwidth`]): each direction of each connection is paced
//!   to at most that many bytes per second;
//! - **stall** ([`ProxyFaults::stall`]): bytes are still accepted from both sides but nothing is
//!   sent on (they are lost, as on a half-open connection whose peer vanished) until
//!   [`ProxyFaults::resume`]; connections stay open and new ones are accepted;
//! - **reset** ([`ProxyFaults::reset_connections`]): every open connection is aborted with a TCP
//!   `RST` on both sides;
//! - **drop after N bytes** ([`ProxyFaults::drop_after`]): a connection is closed (cleanly, on
//!   both sides) once N bytes were sent to the client over it, the N-th included.
//!
//! Times follow tokio's clock. The proxy never panics on network errors: a failed upstream
//! connection closes the client's connection and is counted
//! ([`ProxyFaults::upstream_failures`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use reflex_testing::FakeApiServer;
//! use reflex_testing::proxy::FaultProxy;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = FakeApiServer::start().await?;
//! let proxy = FaultProxy::start(server.addr()).await?;
//! let client = proxy.client()?; // a kube::Client whose traffic crosses the proxy
//! proxy.faults().set_latency(Some(Duration::from_millis(50)));
//! proxy.faults().reset_connections(); // every open watch breaks now
//! # let _ = client;
//! proxy.shutdown().await;
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Why the proxy could not start or build a client.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listening socket could not be bound.
    #[error("binding the fault proxy's listener failed")]
    Bind(#[source] io::Error),
    /// The proxy's URL is not a URI (cannot happen for a bound address).
    #[error("the fault proxy's URL is not a URI")]
    Url(#[source] http::uri::InvalidUri),
    /// kube could not build a client for the proxy's URL.
    #[error("building a kube client for the fault proxy failed")]
    Client(#[source] kube::Error),
}

/// The largest chunk read and forwarded at once.
const CHUNK: usize = 16 * 1024;

#[derive(Debug, Default, Clone, Copy)]
struct Settings {
    latency: Option<Duration>,
    bandwidth: Option<u64>,
    drop_after: Option<u64>,
}

#[derive(Debug)]
struct State {
    settings: Mutex<Settings>,
    stalled: watch::Sender<bool>,
    resets: watch::Sender<u64>,
    accepted: AtomicU64,
    open: AtomicUsize,
    upstream_failures: AtomicU64,
    discarded: AtomicU64,
}

/// The faults of a [`FaultProxy`]; cheap to clone. Every setter applies at once to open
/// connections and to those accepted later.
#[derive(Debug, Clone)]
pub struct ProxyFaults {
    state: Arc<State>,
}

impl ProxyFaults {
    fn new() -> Self {
        ProxyFaults {
            state: Arc::new(State {
                settings: Mutex::new(Settings::default()),
                stalled: watch::Sender::new(false),
                resets: watch::Sender::new(0),
                accepted: AtomicU64::new(0),
                open: AtomicUsize::new(0),
                upstream_failures: AtomicU64::new(0),
                discarded: AtomicU64::new(0),
            }),
        }
    }

    /// Delays every chunk by `latency` before forwarding it, in both directions (`None`: no
    /// delay). A request and its answer each pay it once.
    pub fn set_latency(&self, latency: Option<Duration>) {
        self.state.settings.lock().latency = latency.filter(|d| !d.is_zero());
    }

    /// Paces each direction of each connection to at most `bytes_per_second` (`None`: as fast
    /// as the sockets go).
    pub fn set_bandwidth(&self, bytes_per_second: Option<u64>) {
        self.state.settings.lock().bandwidth = bytes_per_second.filter(|b| *b > 0);
    }

    /// Closes each connection once `bytes` were sent to the client over it (`None`: never);
    /// counts from each connection's start, so connections older than the setting that already
    /// sent more are closed at their next chunk.
    pub fn drop_after(&self, bytes: Option<u64>) {
        self.state.settings.lock().drop_after = bytes;
    }

    /// Stalls every connection: bytes are read from both sides and discarded, nothing is sent.
    pub fn stall(&self) {
        self.state.stalled.send_replace(true);
    }

    /// Ends a [`stall`](Self::stall): bytes read from now on are forwarded again.
    pub fn resume(&self) {
        self.state.stalled.send_replace(false);
    }

    /// Whether the proxy is stalled.
    pub fn is_stalled(&self) -> bool {
        *self.state.stalled.borrow()
    }

    /// Aborts every open connection with a TCP reset on both sides. Connections accepted later
    /// are not affected.
    pub fn reset_connections(&self) {
        self.state.resets.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    /// Bytes read and discarded because the proxy was stalled, in both directions.
    pub fn discarded_bytes(&self) -> u64 {
        self.state.discarded.load(Ordering::SeqCst)
    }

    /// Accepted connections whose upstream connection failed (and which were closed at once).
    pub fn upstream_failures(&self) -> u64 {
        self.state.upstream_failures.load(Ordering::SeqCst)
    }

    fn settings(&self) -> Settings {
        *self.state.settings.lock()
    }
}

/// A running TCP fault proxy; stopped by [`FaultProxy::shutdown`] or when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    faults: ProxyFaults,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self, ProxyError> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(ProxyError::Bind)?;
        let addr = listener.local_addr().map_err(ProxyError::Bind)?;
        let faults = ProxyFaults::new();
        let cancel = CancellationToken::new();
        let span = tracing::debug_span!("fault_proxy", %addr, %upstream);
        let task = tokio::spawn(
            accept_loop(listener, upstream, faults.clone(), cancel.clone()).instrument(span),
        );
        Ok(FaultProxy {
            addr,
            upstream,
            faults,
            cancel,
            task: Mutex::new(Some(task)),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// `http://` and [`addr`](Self::addr).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `kube::Client` for a plain-HTTP upstream (such as the fake API server), through the
    /// proxy.
    pub fn client(&self) -> Result<kube::Client, ProxyError> {
        let uri = self.url().parse().map_err(ProxyError::Url)?;
        kube::Client::try_from(kube::Config::new(uri)).map_err(ProxyError::Client)
    }

    /// The faults to script.
    pub fn faults(&self) -> &ProxyFaults {
        &self.faults
    }

    /// Stops accepting, closes every connection and waits for the proxy's tasks.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    faults: ProxyFaults,
    cancel: CancellationToken,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (client, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                tracing::debug!(%error, "accept failed");
                continue;
            }
        };
        faults.state.accepted.fetch_add(1, Ordering::SeqCst);
        let span = tracing::debug_span!("proxied_connection", %peer);
        connections.spawn(
            connection(client, upstream, faults.clone(), cancel.child_token()).instrument(span),
        );
    }
    connections.shutdown().await;
}

/// Counts an open connection for as long as it lives.
struct OpenGuard(ProxyFaults);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.state.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    faults: ProxyFaults,
    cancel: CancellationToken,
) {
    faults.state.open.fetch_add(1, Ordering::SeqCst);
    let _open = OpenGuard(faults.clone());
    // Subscribe before connecting upstream, so a reset from now on reaches this connection.
    let resets = faults.state.resets.subscribe();
    let server = tokio::select! {
        _ = cancel.cancelled() => return,
        server = TcpStream::connect(upstream) => server,
    };
    let server = match server {
        Ok(server) => server,
        Err(error) => {
            faults
                .state
                .upstream_failures
                .fetch_add(1, Ordering::SeqCst);
            tracing::debug!(%error, "upstream connection failed; closing the client's");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let sent_to_client = Arc::new(AtomicU64::new(0));
    let aborted = Arc::new(AtomicBool::new(false));
    let up = Pump {
        from: client_read,
        to: server_write,
        faults: faults.clone(),
        resets: resets.clone(),
        cancel: cancel.clone(),
        aborted: aborted.clone(),
        counted: None,
    };
    let down = Pump {
        from: server_read,
        to: client_write,
        faults,
        resets,
        cancel: cancel.clone(),
        aborted,
        counted: Some(sent_to_client),
    };
    tokio::join!(up.run(), down.run());
}

/// One direction of a connection.
struct Pump {
    from: OwnedReadHalf,
    to: OwnedWriteHalf,
    faults: ProxyFaults,
    resets: watch::Receiver<u64>,
    /// Cancelled when the proxy stops or the connection ends in either direction.
    cancel: CancellationToken,
    /// Set when the connection was reset: no direction may then close cleanly (a FIN would
    /// reach the peer before the RST).
    aborted: Arc<AtomicBool>,
    /// Bytes sent to the client, for the direction towards it.
    counted: Option<Arc<AtomicU64>>,
}

enum Step {
    Go,
    Reset,
    Stop,
}

impl Pump {
    async fn run(mut self) {
        let mut buf = vec![0u8; CHUNK];
        loop {
            // Biased: a reset or stop already signalled wins over bytes that are ready too.
            let read = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                _ = self.resets.changed() => return self.reset(),
                read = self.from.read(&mut buf) => read,
            };
            let n = match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if self.faults.is_stalled() {
                self.faults
                    .state
                    .discarded
                    .fetch_add(n as u64, Ordering::SeqCst);
                continue;
            }
            let settings = self.faults.settings();
            let mut len = n;
            let mut last = false;
            if let (Some(limit), Some(counted)) = (settings.drop_after, &self.counted) {
                let before = counted.load(Ordering::SeqCst);
                let left = limit.saturating_sub(before);
                if (n as u64) >= left {
                    len = usize::try_from(left).unwrap_or(n).min(n);
                    last = true;
                }
                counted.fetch_add(len as u64, Ordering::SeqCst);
            } else if let Some(counted) = &self.counted {
                counted.fetch_add(n as u64, Ordering::SeqCst);
            }
            if let Some(latency) = settings.latency {
                match self.wait(latency).await {
                    Step::Go => {}
                    Step::Reset => return self.reset(),
                    Step::Stop => break,
                }
            }
            match self.forward(&buf[..len], settings.bandwidth).await {
                Step::Go => {}
                Step::Reset => return self.reset(),
                Step::Stop => break,
            }
            if last {
                tracing::debug!(
                    bytes = settings.drop_after,
                    "dropping the connection after its byte budget"
                );
                break;
            }
        }
        if self.aborted.load(Ordering::SeqCst) {
            // The other direction reset the connection: close without a FIN.
            self.to.forget();
        } else {
            // A clean end in either direction ends the connection in both.
            let _ = self.to.shutdown().await;
        }
        self.cancel.cancel();
    }

    /// Sleeps `d`, unless the connection is reset or stopped first.
    async fn wait(&mut self, d: Duration) -> Step {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Step::Stop,
            _ = self.resets.changed() => Step::Reset,
            _ = tokio::time::sleep(d) => Step::Go,
        }
    }

    /// Writes `bytes`, paced to `bandwidth` bytes per second when set.
    async fn forward(&mut self, bytes: &[u8], bandwidth: Option<u64>) -> Step {
        let slice = match bandwidth {
            // About twenty slices a second, at least one byte each.
            Some(bps) => usize::try_from(bps / 20).unwrap_or(usize::MAX).max(1),
            None => bytes.len().max(1),
        };
        for piece in bytes.chunks(slice) {
            let written = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Step::Stop,
                _ = self.resets.changed() => return Step::Reset,
                written = self.to.write_all(piece) => written,
            };
            if written.is_err() {
                return Step::Stop;
            }
            if let Some(bps) = bandwidth {
                let pause = Duration::from_secs_f64(piece.len() as f64 / bps as f64);
                match self.wait(pause).await {
                    Step::Go => {}
                    other => return other,
                }
            }
        }
        Step::Go
    }

    /// Aborts both sockets of this direction with an RST (the other direction does the same
    /// with its halves, so both sockets close abortively).
    fn reset(self) {
        let _ = self.from.as_ref().set_zero_linger();
        let _ = self.to.as_ref().set_zero_linger();
        self.aborted.store(true, Ordering::SeqCst);
        self.cancel.cancel();
        // Dropping a write half would shut it down (a FIN); forgetting it leaves the socket to
        // close, with an RST, when its read half goes too.
        self.to.forget();
        tracing::debug!("connection reset");
    }
}
