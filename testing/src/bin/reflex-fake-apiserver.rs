//! Runs the Reflex fake Kubernetes API server until interrupted.
//!
//! `cargo run -p reflex-testing --features cli --bin reflex-fake-apiserver -- --port 8080`
//! prints the path of a kubeconfig pointing at it; `--seed FILE.yaml` creates the objects of a
//! multi-document YAML file (CRDs first) before serving.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use reflex_testing::{FakeApiServer, FakeConfig};

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "reflex-fake-apiserver",
    about = "An in-memory fake Kubernetes API server"
)]
struct Args {
    /// Loopback port to listen on (0 picks a free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Multi-document YAML file of objects to create at start.
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Where to write the kubeconfig (default: a file in the temp dir).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

/// Failures of the binary.
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// The server failed.
    #[error(transparent)]
    Server(#[from] reflex_testing::FakeError),
    /// Reading the seed file failed.
    #[error("reading seed {path}: {source}")]
    Read {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Parsing the seed file failed.
    #[error("parsing seed {path}: {source}")]
    Parse {
        /// Path.
        path: String,
        /// Cause.
        source: serde_norway::Error,
    },
    /// Waiting for Ctrl-C failed.
    #[error("waiting for ctrl-c: {0}")]
    Signal(#[source] std::io::Error),
}

#[tokio::main]
async fn main() -> Result<(), CliError> {
    let args = Args::parse();
    let server = FakeApiServer::start_with(FakeConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], args.port)),
        ..Default::default()
    })
    .await?;
    if let Some(seed) = &args.seed {
        let path = seed.display().to_string();
        let text = std::fs::read_to_string(seed).map_err(|source| CliError::Read {
            path: path.clone(),
            source,
        })?;
        let mut docs = Vec::new();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value: serde_json::Value =
                serde::Deserialize::deserialize(doc).map_err(|source| CliError::Parse {
                    path: path.clone(),
                    source,
                })?;
            if !value.is_null() {
                docs.push(value);
            }
        }
        // CRDs first so the objects of their kinds can be created.
        docs.sort_by_key(|d| {
            d.get("kind").and_then(serde_json::Value::as_str) != Some("CustomResourceDefinition")
        });
        for doc in docs {
            server.seed(doc)?;
        }
    }
    let kubeconfig = args.kubeconfig.unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "reflex-fake-apiserver-{}.kubeconfig",
            server.addr().port()
        ))
    });
    server.write_kubeconfig(&kubeconfig)?;
    println!("{}", kubeconfig.display());
    tokio::signal::ctrl_c().await.map_err(CliError::Signal)?;
    server.shutdown().await;
    Ok(())
}
