//! What every example shares: the choice between a real cluster and the embedded fake API
//! server, logging to stderr, and printing an error with its causes.
//!
//! Each example includes this file with `#[path = "../common/mod.rs"] mod common;`, so that an
//! example stays one self-contained program to read while the plumbing is written once. Not every
//! example uses every item (workqueue-demo needs no cluster), hence the `dead_code` allowance at
//! the include site.

use std::path::PathBuf;
use std::process::ExitCode;

use reflex_testing::FakeApiServer;

/// Where an example finds its API server: `--kubeconfig PATH`, `--cluster`, or (neither) the
/// embedded fake API server.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Use this kubeconfig instead of the embedded fake API server.
    #[arg(long, conflicts_with = "cluster")]
    pub kubeconfig: Option<PathBuf>,
    /// Use the cluster found by `kube::Config::infer` (KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    pub cluster: bool,
}

/// Why no API server could be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The kubeconfig could not be read or used.
    #[error("cannot use kubeconfig {0}")]
    Kubeconfig(PathBuf, #[source] kube::config::KubeconfigError),
    /// No cluster configuration was found.
    #[error("cannot infer a cluster configuration")]
    Infer(#[source] kube::config::InferConfigError),
    /// The client could not be built.
    #[error("cannot build a Kubernetes client")]
    Client(#[source] kube::Error),
    /// The embedded API server did not start.
    #[error("cannot start the embedded API server")]
    Fake(#[source] reflex_testing::FakeError),
}

/// A client and, in embedded mode, the fake API server behind it (kept alive as long as this).
pub struct Connection {
    /// The client every part of the example uses.
    pub client: kube::Client,
    /// The API server's URL (it names the server's discovery cache directory).
    pub cluster_url: http::Uri,
    /// The embedded server, when no cluster was named.
    pub server: Option<FakeApiServer>,
}

impl Connection {
    /// Whether the example runs on its embedded fake API server (and so should seed it and run
    /// its scripted workload).
    pub fn is_embedded(&self) -> bool {
        self.server.is_some()
    }

    /// Stops the embedded server, if any.
    pub async fn shutdown(self) {
        if let Some(server) = self.server {
            server.shutdown().await;
        }
    }
}

/// Connects as `args` say; in embedded mode starts the fake API server and says so on stdout.
pub async fn connect(args: &ClusterArgs) -> Result<Connection, ConnectError> {
    let config = if let Some(path) = &args.kubeconfig {
        let kubeconfig = kube::config::Kubeconfig::read_from(path)
            .map_err(|e| ConnectError::Kubeconfig(path.clone(), e))?;
        Some(
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| ConnectError::Kubeconfig(path.clone(), e))?,
        )
    } else if args.cluster {
        Some(kube::Config::infer().await.map_err(ConnectError::Infer)?)
    } else {
        None
    };
    if let Some(config) = config {
        let cluster_url = config.cluster_url.clone();
        let client = kube::Client::try_from(config).map_err(ConnectError::Client)?;
        return Ok(Connection {
            client,
            cluster_url,
            server: None,
        });
    }
    let server = FakeApiServer::start().await.map_err(ConnectError::Fake)?;
    let client = server.client().map_err(ConnectError::Fake)?;
    println!(
        "embedded API server at {} (no cluster needed; --kubeconfig or --cluster for a real one)",
        server.url()
    );
    let cluster_url = server
        .url()
        .parse()
        .expect("the fake API server's URL is a valid URI");
    Ok(Connection {
        client,
        cluster_url,
        server: Some(server),
    })
}

/// Logs to stderr, at `warn` unless `RUST_LOG` says otherwise, so stdout stays the example's
/// readable output.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The process exit code for an example's result; an error is printed with its chain of causes.
pub fn exit_code<E: std::error::Error>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = e.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

/// Resolves after `secs` seconds, or never when `None` (the examples' `--exit-after`).
pub async fn deadline(secs: Option<u64>) {
    match secs {
        Some(secs) => tokio::time::sleep(std::time::Duration::from_secs(secs)).await,
        None => std::future::pending().await,
    }
}
