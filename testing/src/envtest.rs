//! A real control plane for end-to-end tests: etcd plus kube-apiserver on loopback.
//!
//! Fakes prove what we think the API server does; this module proves what it really does
//! (paging, resourceVersion semantics, 410 Gone after compaction, watches across restarts).
//! `scripts/envtest/run` builds pinned binaries once into a cache directory; [`Environment::start`]
//! finds them (`REFLEX_ENVTEST_BIN`, or `<target dir>/envtest/<version>/bin`), starts etcd and
//! kube-apiserver on free loopback ports with a temporary data directory, a freshly generated CA and
//! serving certificate, a service-account signing key and a static admin token in `system:masters`,
//! waits for `/readyz`, and hands out a [`kube::Client`] and a kubeconfig file.
//!
//! Both processes are children of the test process and are killed, and the data directory
//! deleted, by [`Environment::stop`] or on drop (also when a test panics). No fixed ports are used.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The Kubernetes releases `scripts/envtest/run VERSION` can build, newest first: the newest
/// release (what users meet) and the oldest supported minor (the one k8s-openapi's `v1_35`
/// types describe).
pub const KUBERNETES_VERSIONS: [&str; 2] = ["v1.37.2", "v1.35.4"];

/// The release the harness starts unless [`VERSION_ENV`] names another: the newest.
pub const KUBERNETES_VERSION: &str = KUBERNETES_VERSIONS[0];

/// Environment variable choosing which of [`KUBERNETES_VERSIONS`] the default [`bin_dir`] holds.
pub const VERSION_ENV: &str = "REFLEX_ENVTEST_VERSION";

/// Environment variable naming the directory holding `etcd` and `kube-apiserver`.
pub const BIN_DIR_ENV: &str = "REFLEX_ENVTEST_BIN";

/// Environment variable that turns a missing control plane from a skip into a failure.
pub const REQUIRE_ENV: &str = "REFLEX_REQUIRE_ENVTEST";

/// How many times [`Environment::start_with`] starts the control plane when a component finds
/// its port taken by another process.
pub const PORT_ATTEMPTS: u32 = 3;

/// How long each component may take to become ready on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Interval between readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Lines of a component's log carried in a start-up error.
const LOG_TAIL_LINES: usize = 40;
/// The admin bearer token written to the static token file.
const ADMIN_TOKEN: &str = "reflex-envtest-admin-token";
/// The bearer token of [`UNPRIVILEGED_USER`].
const USER_TOKEN: &str = "reflex-envtest-user-token";
/// A user the static token file knows but no RBAC rule grants anything: what
/// [`Environment::unprivileged_client`] authenticates as. Tests grant it permissions with Roles
/// and bindings made through the admin [`client`](Environment::client).
pub const UNPRIVILEGED_USER: &str = "reflex-user";

/// Everything that can go wrong while running the control plane.
#[derive(Debug, thiserror::Error)]
pub enum EnvtestError {
    /// A binary is not in the bin directory: run `scripts/envtest/run` first.
    #[error(
        "{binary} not found at {path} (run scripts/envtest/run VERSION, or set {BIN_DIR_ENV} to its bin directory)"
    )]
    BinaryMissing {
        /// The binary's name.
        binary: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file or directory of the environment could not be created, read or removed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The certificate or key generation failed.
    #[error("generating {what}: {source}")]
    Certificate {
        /// Which certificate or key.
        what: &'static str,
        /// The cause.
        source: rcgen::Error,
    },
    /// A component exited while it should be running.
    #[error("{component} exited with {status} during start-up; last log lines:\n{log_tail}")]
    Exited {
        /// `etcd` or `kube-apiserver`.
        component: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The tail of its log.
        log_tail: String,
    },
    /// A component did not become ready in time.
    #[error("{component} not ready after {timeout:?}; last log lines:\n{log_tail}")]
    NotReady {
        /// `etcd` or `kube-apiserver`.
        component: &'static str,
        /// How long we waited.
        timeout: Duration,
        /// The tail of its log.
        log_tail: String,
    },
    /// The kubeconfig could not be turned into a client.
    #[error("building a client from {path}: {source}")]
    Client {
        /// The kubeconfig path.
        path: PathBuf,
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// etcd's JSON gateway answered something unexpected.
    #[error("etcd gateway {endpoint}: {message}")]
    Etcd {
        /// The gateway endpoint called.
        endpoint: &'static str,
        /// What was wrong.
        message: String,
    },
}

impl EnvtestError {
    /// A component exited because its port was bound by someone else first.
    fn lost_a_port(&self) -> bool {
        matches!(self, EnvtestError::Exited { log_tail, .. } if log_tail.contains("address already in use"))
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EnvtestError {
    let what = what.into();
    move |source| EnvtestError::Io { what, source }
}

/// The release the default [`bin_dir`] holds: `$REFLEX_ENVTEST_VERSION`, else
/// [`KUBERNETES_VERSION`].
pub fn version() -> String {
    std::env::var(VERSION_ENV).unwrap_or_else(|_| KUBERNETES_VERSION.to_owned())
}

/// The Kubernetes minor of [`version`] (`37` for `v1.37.2`), for tests whose expectations
/// depend on the release (a feature gate that exists from 1.36, say); `None` if the version is
/// not `v1.MINOR.PATCH`.
///
/// ```
/// // SAFETY: a doctest is a process of its own, with no other thread reading the environment.
/// unsafe { std::env::set_var("REFLEX_ENVTEST_VERSION", "v1.35.4") };
/// assert_eq!(reflex_testing::envtest::minor_version(), Some(35));
/// ```
pub fn minor_version() -> Option<u32> {
    version()
        .strip_prefix("v1.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// The default bin directory: `$REFLEX_ENVTEST_BIN`, else `<target dir>/envtest/<version>/bin`
/// (the [`version`]), where the target dir is `$CARGO_TARGET_DIR` or the workspace's `target/`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("envtest").join(version()).join("bin")
}

/// How to start an [`Environment`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Directory holding `etcd` and `kube-apiserver`; defaults to [`bin_dir`].
    pub bin_dir: PathBuf,
    /// Extra kube-apiserver flags appended after the harness's own, e.g. `--watch-cache=false`
    /// (every read goes to etcd) or `--min-request-timeout=7` (watches end sooner).
    pub apiserver_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bin_dir: bin_dir(),
            apiserver_args: Vec::new(),
        }
    }
}

/// A running etcd + kube-apiserver pair; killed and cleaned up on [`Environment::stop`] or drop.
pub struct Environment {
    bin_dir: PathBuf,
    apiserver_args: Vec<String>,
    data: tempfile::TempDir,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    etcd_port: u16,
    etcd_peer_port: u16,
    apiserver_port: u16,
    kubeconfig: PathBuf,
    client: kube::Client,
}

impl Environment {
    /// Starts etcd and kube-apiserver from [`bin_dir`] and waits until the API server is ready.
    pub async fn start() -> Result<Self, EnvtestError> {
        Self::start_with(Options::default()).await
    }

    /// Like [`Environment::start_with`], but turns missing binaries into `Ok(None)` (after printing
    /// why) unless `REFLEX_REQUIRE_ENVTEST=1`, so suites skip on machines without a control plane.
    pub async fn start_or_skip(options: Options) -> Result<Option<Self>, EnvtestError> {
        match Self::start_with(options).await {
            Err(EnvtestError::BinaryMissing { binary, path })
                if std::env::var(REQUIRE_ENV).as_deref() != Ok("1") =>
            {
                eprintln!(
                    "skipping envtest: {binary} not found at {} (run scripts/envtest/run {}; set {REQUIRE_ENV}=1 to fail instead)",
                    path.display(),
                    version()
                );
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    /// Starts the control plane as `options` say.
    ///
    /// Ports are picked by the kernel and released before the components bind them, so another
    /// process can take one in between; a start that fails that way is retried with fresh ports
    /// (up to [`PORT_ATTEMPTS`] times) in a fresh data directory.
    pub async fn start_with(options: Options) -> Result<Self, EnvtestError> {
        let Options {
            bin_dir,
            apiserver_args,
        } = options;
        for binary in ["etcd", "kube-apiserver"] {
            let path = bin_dir.join(binary);
            if !path.is_file() {
                return Err(EnvtestError::BinaryMissing { binary, path });
            }
        }
        let mut attempt = 1;
        loop {
            match Self::start_once(&bin_dir, &apiserver_args).await {
                Err(e) if e.lost_a_port() && attempt < PORT_ATTEMPTS => {
                    tracing::warn!(attempt, error = %e, "a port was taken before the control plane bound it; retrying with fresh ports");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn start_once(bin_dir: &Path, apiserver_args: &[String]) -> Result<Self, EnvtestError> {
        let data = tempfile::Builder::new()
            .prefix("reflex-envtest-")
            .tempdir()
            .map_err(io_err("creating the data directory"))?;
        let [etcd_port, etcd_peer_port, apiserver_port] = free_ports()?;
        let kubeconfig = write_credentials(data.path(), apiserver_port)?;
        let client = client_from(&kubeconfig).await?;
        let mut env = Environment {
            bin_dir: bin_dir.to_owned(),
            apiserver_args: apiserver_args.to_vec(),
            data,
            etcd: None,
            apiserver: None,
            etcd_port,
            etcd_peer_port,
            apiserver_port,
            kubeconfig,
            client,
        };
        env.start_etcd().await?;
        env.start_apiserver().await?;
        Ok(env)
    }

    /// A client authenticated as a cluster admin (`system:masters`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A client authenticated as [`UNPRIVILEGED_USER`], whom RBAC allows nothing until a test
    /// binds it a role (the API server runs with `--authorization-mode=RBAC`).
    pub async fn unprivileged_client(&self) -> Result<kube::Client, EnvtestError> {
        client_from(&self.data.path().join("user-kubeconfig")).await
    }

    /// The API server's address on loopback (for a [`FaultProxy`](crate::proxy::FaultProxy) in
    /// front of it).
    pub fn apiserver_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, self.apiserver_port))
    }

    /// An admin client that reaches the API server through `addr` (a proxy on loopback that
    /// forwards to [`apiserver_addr`](Self::apiserver_addr)): TLS and the token as for
    /// [`client`](Self::client), the serving certificate is valid for `127.0.0.1`.
    pub async fn client_via(
        &self,
        addr: std::net::SocketAddr,
    ) -> Result<kube::Client, EnvtestError> {
        let err = |source: Box<dyn std::error::Error + Send + Sync>| EnvtestError::Client {
            path: self.kubeconfig.clone(),
            source,
        };
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).map_err(|e| err(Box::new(e)))?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| err(Box::new(e)))?;
        config.cluster_url = format!("https://{addr}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| err(Box::new(e)))?;
        kube::Client::try_from(config).map_err(|e| err(Box::new(e)))
    }

    /// A kubeconfig file for the admin identity, valid while the environment lives.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The etcd client URL (plain HTTP on loopback).
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    /// Kills the API server and starts it again on the same port with the same data, waiting for
    /// `/readyz`. Open watches end; objects survive (they live in etcd).
    pub async fn restart_apiserver(&mut self) -> Result<(), EnvtestError> {
        if let Some(child) = self.apiserver.take() {
            kill(child);
        }
        self.start_apiserver().await
    }

    /// Restarts the API server as [`restart_apiserver`](Self::restart_apiserver) does, with
    /// `extra` flags after the environment's own for this run only (the next restart drops
    /// them): `--max-requests-inflight=1 --enable-priority-and-fairness=false`, say, makes it
    /// answer concurrent requests with 429s.
    pub async fn restart_apiserver_with(&mut self, extra: &[&str]) -> Result<(), EnvtestError> {
        let base = self.apiserver_args.clone();
        self.apiserver_args
            .extend(extra.iter().map(|s| (*s).to_owned()));
        let restarted = self.restart_apiserver().await;
        self.apiserver_args = base;
        restarted
    }

    /// Compacts etcd at its current revision: every older resourceVersion then answers 410 Gone.
    /// Returns the revision compacted at.
    pub async fn compact_etcd(&self) -> Result<i64, EnvtestError> {
        // Any range request reports the store's current revision in its header.
        let range = etcd_post(self.etcd_port, "/v3/kv/range", r#"{"key":"AA=="}"#).await?;
        let revision = range
            .pointer("/header/revision")
            .and_then(|r| {
                r.as_str()
                    .and_then(|s| s.parse::<i64>().ok())
                    .or(r.as_i64())
            })
            .ok_or_else(|| EnvtestError::Etcd {
                endpoint: "/v3/kv/range",
                message: format!("no header.revision in {range}"),
            })?;
        let body = format!(r#"{{"revision":"{revision}","physical":true}}"#);
        etcd_post(self.etcd_port, "/v3/kv/compaction", &body).await?;
        tracing::info!(revision, "compacted etcd");
        Ok(revision)
    }

    /// Stops both processes and deletes the data directory.
    pub async fn stop(mut self) -> Result<(), EnvtestError> {
        self.kill_all();
        let data = std::mem::replace(
            &mut self.data,
            tempfile::TempDir::new().map_err(io_err("creating a placeholder directory"))?,
        );
        data.close().map_err(io_err("removing the data directory"))
    }

    fn kill_all(&mut self) {
        for child in [self.apiserver.take(), self.etcd.take()]
            .into_iter()
            .flatten()
        {
            kill(child);
        }
    }

    fn log_path(&self, component: &str) -> PathBuf {
        self.data.path().join(format!("{component}.log"))
    }

    async fn start_etcd(&mut self) -> Result<(), EnvtestError> {
        let dir = self.data.path();
        let peer_port = self.etcd_peer_port;
        let url = self.etcd_url();
        let args = vec![
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={url}"),
            format!("--advertise-client-urls={url}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
            "--unsafe-no-fsync=true".to_owned(),
            "--listen-metrics-urls=".to_owned(),
        ];
        let child = self.spawn("etcd", &args)?;
        self.etcd = Some(child);
        let port = self.etcd_port;
        self.wait_ready("etcd", |_| async move {
            etcd_get_health(port).await.unwrap_or(false)
        })
        .await
    }

    async fn start_apiserver(&mut self) -> Result<(), EnvtestError> {
        let dir = self.data.path();
        let p = |name: &str| dir.join(name).display().to_string();
        let args = vec![
            format!("--etcd-servers={}", self.etcd_url()),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--secure-port={}", self.apiserver_port),
            format!("--cert-dir={}", p("apiserver-certs")),
            format!("--tls-cert-file={}", p("serving.crt")),
            format!("--tls-private-key-file={}", p("serving.key")),
            format!("--token-auth-file={}", p("tokens.csv")),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-account-issuer=https://127.0.0.1/reflex-envtest".to_owned(),
            "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
            "--allow-privileged=true".to_owned(),
            "--disable-admission-plugins=ServiceAccount".to_owned(),
            "--authorization-mode=RBAC".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            // Nothing here serves the `kubernetes` Service's endpoints, and from v1.37 the
            // endpoint reconciler refuses a loopback advertise address.
            "--endpoint-reconciler-type=none".to_owned(),
        ]
        .into_iter()
        .chain(self.apiserver_args.iter().cloned())
        .collect::<Vec<_>>();
        let child = self.spawn("kube-apiserver", &args)?;
        self.apiserver = Some(child);
        self.wait_ready("kube-apiserver", |client| async move {
            let request = http::Request::get("/readyz").body(Vec::new());
            match request {
                Ok(req) => client
                    .request_text(req)
                    .await
                    .is_ok_and(|t| t.trim() == "ok"),
                Err(_) => false,
            }
        })
        .await
    }

    fn spawn(&self, component: &'static str, args: &[String]) -> Result<Child, EnvtestError> {
        let log_path = self.log_path(component);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(format!("opening {}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(io_err(format!("duplicating {}", log_path.display())))?;
        tracing::debug!(component, log = %log_path.display(), "starting");
        Command::new(self.bin_dir.join(component))
            .args(args)
            .current_dir(self.data.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(io_err(format!("spawning {component}")))
    }

    async fn wait_ready<F, Fut>(
        &mut self,
        component: &'static str,
        probe: F,
    ) -> Result<(), EnvtestError>
    where
        F: Fn(kube::Client) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let child = if component == "etcd" {
                &mut self.etcd
            } else {
                &mut self.apiserver
            };
            if let Some(proc) = child.as_mut()
                && let Ok(Some(status)) = proc.try_wait()
            {
                child.take();
                return Err(EnvtestError::Exited {
                    component,
                    status,
                    log_tail: log_tail(&self.log_path(component)),
                });
            }
            if probe(self.client.clone()).await {
                tracing::info!(component, "ready");
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(EnvtestError::NotReady {
                    component,
                    timeout: READY_TIMEOUT,
                    log_tail: log_tail(&self.log_path(component)),
                });
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Environment")
            .field("data", &self.data.path())
            .field("etcd_port", &self.etcd_port)
            .field("etcd_peer_port", &self.etcd_peer_port)
            .field("apiserver_port", &self.apiserver_port)
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

impl Drop for Environment {
    fn drop(&mut self) {
        // The TempDir field removes the data directory after this runs.
        self.kill_all();
    }
}

fn kill(mut child: Child) {
    // Errors mean the process already exited; waiting reaps it either way.
    let _ = child.kill();
    let _ = child.wait();
}

/// `N` distinct free loopback ports: every listener is held until all are bound, so the kernel
/// cannot hand the same port out twice (it may once a listener is dropped).
fn free_ports<const N: usize>() -> Result<[u16; N], EnvtestError> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err("finding a free port"))?;
        *port = listener
            .local_addr()
            .map(|a| a.port())
            .map_err(io_err("reading a bound port"))?;
        listeners.push(listener);
    }
    Ok(ports)
}

fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Writes the CA, serving pair, service-account key, token file and kubeconfig; returns the
/// kubeconfig path.
fn write_credentials(dir: &Path, apiserver_port: u16) -> Result<PathBuf, EnvtestError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let cert_err = |what| move |source| EnvtestError::Certificate { what, source };
    let ca_key = KeyPair::generate().map_err(cert_err("the CA key"))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err("the CA"))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "reflex-envtest-ca");
    let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_err("the CA"))?;
    let issuer = Issuer::new(ca_params, ca_key);
    let serving_key = KeyPair::generate().map_err(cert_err("the serving key"))?;
    let mut serving = CertificateParams::new(vec!["localhost".to_owned()])
        .map_err(cert_err("the serving certificate"))?;
    serving
        .subject_alt_names
        .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let serving_cert = serving
        .signed_by(&serving_key, &issuer)
        .map_err(cert_err("the serving certificate"))?;
    let sa_key = KeyPair::generate().map_err(cert_err("the service-account key"))?;
    let files = [
        ("ca.crt", ca_cert.pem()),
        ("serving.crt", serving_cert.pem()),
        ("serving.key", serving_key.serialize_pem()),
        ("sa.key", sa_key.serialize_pem()),
        ("sa.pub", sa_key.public_key_pem()),
        (
            "tokens.csv",
            format!(
                "{ADMIN_TOKEN},reflex-admin,reflex-admin-uid,\"system:masters\"\n\
                 {USER_TOKEN},{UNPRIVILEGED_USER},reflex-user-uid\n"
            ),
        ),
    ];
    for (name, contents) in files {
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(io_err(format!("writing {}", path.display())))?;
    }
    write_kubeconfig(dir, "user-kubeconfig", apiserver_port, USER_TOKEN)?;
    write_kubeconfig(dir, "kubeconfig", apiserver_port, ADMIN_TOKEN)
}

async fn client_from(kubeconfig: &Path) -> Result<kube::Client, EnvtestError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| EnvtestError::Client {
        path: kubeconfig.to_owned(),
        source,
    };
    let config = Kubeconfig::read_from(kubeconfig).map_err(|e| err(Box::new(e)))?;
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .map_err(|e| err(Box::new(e)))?;
    kube::Client::try_from(config).map_err(|e| err(Box::new(e)))
}

fn write_kubeconfig(
    dir: &Path,
    name: &str,
    apiserver_port: u16,
    token: &str,
) -> Result<PathBuf, EnvtestError> {
    let path = dir.join(name);
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "envtest", "cluster": {
            "server": format!("https://127.0.0.1:{apiserver_port}"),
            "certificate-authority": dir.join("ca.crt"),
        }}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": "admin"}}],
        "current-context": "envtest",
    });
    std::fs::write(&path, kubeconfig.to_string())
        .map_err(io_err(format!("writing {}", path.display())))?;
    Ok(path)
}

async fn etcd_get_health(port: u16) -> Result<bool, EnvtestError> {
    let (status, body) = http_call(port, "GET", "/health", "").await?;
    Ok(status == 200 && body.contains("\"health\":\"true\""))
}

async fn etcd_post(
    port: u16,
    endpoint: &'static str,
    body: &str,
) -> Result<serde_json::Value, EnvtestError> {
    let (status, text) = http_call(port, "POST", endpoint, body).await?;
    if status != 200 {
        return Err(EnvtestError::Etcd {
            endpoint,
            message: format!("status {status}: {text}"),
        });
    }
    serde_json::from_str(&text).map_err(|e| EnvtestError::Etcd {
        endpoint,
        message: format!("invalid JSON ({e}): {text}"),
    })
}

/// One HTTP/1.0-style request to etcd's plain-HTTP gateway on loopback; returns status and body.
async fn http_call(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), EnvtestError> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(io_err(format!("connecting to etcd on port {port}")))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(io_err("writing to etcd"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(io_err("reading from etcd"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, rest) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ports_of_one_environment_are_distinct() {
        for _ in 0..200 {
            let ports: [u16; 3] = free_ports().unwrap();
            assert!(ports.iter().all(|&p| p != 0), "{ports:?}");
            assert!(
                ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2],
                "{ports:?}"
            );
        }
    }

    #[test]
    fn only_a_bind_failure_is_a_lost_port() {
        use std::os::unix::process::ExitStatusExt;
        let exited = |log_tail: &str| EnvtestError::Exited {
            component: "etcd",
            status: std::process::ExitStatus::from_raw(256),
            log_tail: log_tail.to_owned(),
        };
        assert!(exited("listen tcp 127.0.0.1:34165: bind: address already in use").lost_a_port());
        assert!(!exited("open /data: permission denied").lost_a_port());
        let not_ready = EnvtestError::NotReady {
            component: "etcd",
            timeout: READY_TIMEOUT,
            log_tail: "address already in use".to_owned(),
        };
        assert!(!not_ready.lost_a_port());
    }

    #[test]
    fn chunked_gateway_bodies_are_reassembled() {
        let cases = [
            ("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world"),
            ("0\r\n\r\n", ""),
            ("3\r\nab", ""),
            ("zz\r\nabc\r\n", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(dechunk(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn log_tail_keeps_only_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).expect("write");
        let tail = log_tail(&path);
        assert_eq!(tail.lines().count(), LOG_TAIL_LINES);
        assert_eq!(tail.lines().last(), Some("line 99"));
    }

    #[tokio::test]
    async fn a_missing_binary_is_a_typed_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = Options {
            bin_dir: dir.path().to_owned(),
            apiserver_args: Vec::new(),
        };
        match Environment::start_with(options).await {
            Err(EnvtestError::BinaryMissing { binary, path }) => {
                assert_eq!(binary, "etcd");
                assert_eq!(path, dir.path().join("etcd"));
            }
            other => panic!("expected BinaryMissing, got {other:?}"),
        }
    }
}
