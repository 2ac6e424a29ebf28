//! The health server over real HTTP on an ephemeral port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use reflex_runtime::leader_election::LeaderState;
use reflex_runtime::serve::{HealthServer, ServeConfig, ServeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn ephemeral() -> ServeConfig {
    ServeConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

/// GET `path`, returning (status code, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let status = raw.split(' ').nth(1).unwrap().parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn default_address_is_loopback_8080() {
    assert_eq!(
        ServeConfig::default().addr,
        SocketAddr::from(([127, 0, 0, 1], 8080))
    );
}

#[tokio::test]
async fn metrics_endpoint_serves_registry_in_text_exposition() {
    let mut registry = Registry::default();
    let counter: Counter = Counter::default();
    registry.register("reconciles", "Reconciliations run", counter.clone());
    counter.inc_by(3);
    let shutdown = CancellationToken::new();
    let server = HealthServer::new(ephemeral())
        .registry(Arc::new(registry))
        .start(shutdown.clone())
        .await
        .unwrap();
    let (status, body) = get(server.local_addr(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE reconciles counter"), "{body}");
    assert!(body.contains("reconciles_total 3"), "{body}");
    assert_eq!(get(server.local_addr(), "/nope").await.0, 404);
    shutdown.cancel();
    server.join().await;
}

#[tokio::test]
async fn healthz_fails_while_any_liveness_check_fails() {
    let alive = Arc::new(AtomicBool::new(true));
    let a = alive.clone();
    let shutdown = CancellationToken::new();
    let server = HealthServer::new(ephemeral())
        .liveness("always", || Ok(()))
        .liveness("leader-election", move || {
            if a.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("renewal overdue".into())
            }
        })
        .start(shutdown.clone())
        .await
        .unwrap();
    let (status, body) = get(server.local_addr(), "/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("[+]leader-election ok"));
    alive.store(false, Ordering::SeqCst);
    let (status, body) = get(server.local_addr(), "/healthz").await;
    assert_eq!(status, 500);
    assert!(
        body.contains("[+]always ok")
            && body.contains("[-]leader-election failed: renewal overdue"),
        "{body}"
    );
    shutdown.cancel();
    server.join().await;
}

#[tokio::test]
async fn readyz_is_ready_only_when_every_check_passes_and_reports_leader() {
    let synced = Arc::new(AtomicBool::new(false));
    let s = synced.clone();
    let (tx, rx) = watch::channel(LeaderState::default());
    let shutdown = CancellationToken::new();
    let server = HealthServer::new(ephemeral())
        .readiness("caches-synced", move || {
            if s.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("pods not synced".into())
            }
        })
        .leader_state(rx)
        .start(shutdown.clone())
        .await
        .unwrap();
    let (status, body) = get(server.local_addr(), "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("[-]caches-synced failed: pods not synced") && body.contains("leader: none"),
        "{body}"
    );
    synced.store(true, Ordering::SeqCst);
    tx.send_replace(LeaderState {
        leader: Some("pod-a".into()),
        is_leader: true,
    });
    let (status, body) = get(server.local_addr(), "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("leader: pod-a (this replica leads: true)"),
        "{body}"
    );
    shutdown.cancel();
    server.join().await;
}

#[tokio::test]
async fn server_stops_listening_after_shutdown() {
    let shutdown = CancellationToken::new();
    let server = HealthServer::new(ephemeral())
        .start(shutdown.clone())
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_eq!(get(addr, "/healthz").await.0, 200);
    shutdown.cancel();
    server.join().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn binding_a_taken_port_is_a_typed_error() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let err = HealthServer::new(ServeConfig { addr })
        .start(CancellationToken::new())
        .await
        .err();
    assert!(matches!(err, Some(ServeError::Bind { addr: a, .. }) if a == addr));
}

#[tokio::test]
async fn readyz_reports_an_informer_unsynced_until_its_initial_list_is_stored() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use reflex_informer::source::memory::MemorySource;
    use reflex_informer::{InformerOptions, SharedIndexInformer};

    let source = MemorySource::<ConfigMap>::new();
    let informer = SharedIndexInformer::new(Arc::new(source), InformerOptions::default());
    let shutdown = CancellationToken::new();
    let server = HealthServer::new(ephemeral())
        .informer_synced("configmaps-synced", &informer)
        .start(shutdown.clone())
        .await
        .unwrap();
    let (status, body) = get(server.local_addr(), "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("[-]configmaps-synced failed: informer not synced"),
        "{body}"
    );

    let run = tokio::spawn({
        let (informer, shutdown) = (informer.clone(), shutdown.clone());
        async move { informer.run(shutdown).await }
    });
    assert!(informer.wait_for_sync().await);
    let (status, body) = get(server.local_addr(), "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("[+]configmaps-synced ok"), "{body}");
    shutdown.cancel();
    run.await.unwrap().unwrap();
    server.join().await;
}
