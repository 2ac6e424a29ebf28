//! The TCP fault proxy: each fault against a small upstream (echo, or a fixed payload), and an
//! informer converging through it on the fake API server while connections are slowed, reset
//! and cut short.
//!
//! Time is real (real sockets). Timing assertions are lower bounds the proxy guarantees by
//! construction (a delay is never shorter than configured); every wait for something to happen
//! is bounded by 30 s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use reflex_informer::{InformerOptions, SharedIndexInformer};
use reflex_testing::FakeApiServer;
use reflex_testing::proxy::FaultProxy;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(30);

/// An upstream that echoes every byte back.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// An upstream that sends `payload` to each connection and closes it.
async fn payload_upstream(payload: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let payload = payload.clone();
            tokio::spawn(async move {
                let _ = s.write_all(&payload).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

async fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    tokio::time::timeout(LIMIT, s.read_exact(&mut buf))
        .await
        .expect("bytes within 30 s")
        .unwrap();
    buf
}

async fn read_to_end(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut buf))
        .await
        .expect("the end within 30 s")?;
    Ok(buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_pass_through_unchanged_both_ways() {
    let proxy = FaultProxy::start(echo_upstream().await).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    {
        let (mut r, mut w) = s.split();
        let (_, echoed) = tokio::join!(async { w.write_all(&data).await.unwrap() }, async {
            let mut buf = vec![0; data.len()];
            tokio::time::timeout(LIMIT, r.read_exact(&mut buf))
                .await
                .expect("the echo within 30 s")
                .unwrap();
            buf
        });
        assert_eq!(echoed, data);
    }
    assert_eq!(proxy.faults().accepted(), 1);
    assert_eq!(proxy.faults().open_connections(), 1);
    drop(s);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_delays_each_direction() {
    let proxy = FaultProxy::start(echo_upstream().await).await.unwrap();
    proxy.faults().set_latency(Some(Duration::from_millis(150)));
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let start = Instant::now();
    s.write_all(b"ping").await.unwrap();
    assert_eq!(read_exact(&mut s, 4).await, b"ping");
    // Out and back: the latency is paid twice.
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    proxy.faults().set_latency(None);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_paces_a_transfer() {
    let payload: Vec<u8> = vec![7; 64 * 1024];
    let proxy = FaultProxy::start(payload_upstream(payload.clone()).await)
        .await
        .unwrap();
    proxy.faults().set_bandwidth(Some(256 * 1024));
    let start = Instant::now();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(read_to_end(&mut s).await.unwrap(), payload);
    // 64 KiB at 256 KiB/s: a quarter of a second at least.
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_accepts_bytes_and_sends_nothing_until_resumed() {
    let proxy = FaultProxy::start(echo_upstream().await).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"one").await.unwrap();
    assert_eq!(read_exact(&mut s, 3).await, b"one");

    proxy.faults().stall();
    assert!(proxy.faults().is_stalled());
    // The proxy reads what is written (the write completes) and forwards nothing: a half-open
    // connection. The stalled bytes are lost, as they would be.
    s.write_all(b"lost").await.unwrap();
    let deadline = Instant::now() + LIMIT;
    while proxy.faults().discarded_bytes() < 4 {
        assert!(
            Instant::now() < deadline,
            "the stalled bytes were never read"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut byte = [0u8; 1];
    let waited = tokio::time::timeout(Duration::from_millis(300), s.read(&mut byte)).await;
    assert!(
        waited.is_err(),
        "nothing may arrive while stalled: {waited:?}"
    );
    assert_eq!(proxy.faults().open_connections(), 1);

    proxy.faults().resume();
    s.write_all(b"two").await.unwrap();
    assert_eq!(read_exact(&mut s, 3).await, b"two");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_aborts_open_connections_with_an_rst_and_spares_new_ones() {
    let proxy = FaultProxy::start(echo_upstream().await).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"hi").await.unwrap();
    assert_eq!(read_exact(&mut s, 2).await, b"hi");

    proxy.faults().reset_connections();
    let mut buf = [0u8; 16];
    let got = tokio::time::timeout(LIMIT, s.read(&mut buf))
        .await
        .expect("the reset arrives within 30 s");
    match got {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("expected a connection reset, read {n} bytes"),
    }

    let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
    fresh.write_all(b"again").await.unwrap();
    assert_eq!(read_exact(&mut fresh, 5).await, b"again");
    assert_eq!(proxy.faults().accepted(), 2);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_after_closes_a_connection_once_n_bytes_reached_the_client() {
    let payload: Vec<u8> = (0..100u8).collect();
    let proxy = FaultProxy::start(payload_upstream(payload.clone()).await)
        .await
        .unwrap();
    proxy.faults().drop_after(Some(10));
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(read_to_end(&mut s).await.unwrap(), &payload[..10]);

    proxy.faults().drop_after(None);
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(read_to_end(&mut s).await.unwrap(), payload);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_upstream_refuses_is_closed_and_counted() {
    // A port nothing listens on: bind, note it, close.
    let gone = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = FaultProxy::start(gone).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    // The client's connection ends (closed or reset) without data.
    let end = read_to_end(&mut s).await.unwrap_or_default();
    assert!(end.is_empty());
    assert_eq!(proxy.faults().upstream_failures(), 1);
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// An informer through the proxy.

fn versions_in_store(informer: &SharedIndexInformer<ConfigMap>) -> BTreeMap<String, String> {
    informer
        .indexer()
        .list()
        .iter()
        .map(|o| {
            (
                o.metadata.name.clone().unwrap_or_default(),
                o.metadata.resource_version.clone().unwrap_or_default(),
            )
        })
        .collect()
}

async fn versions_on_server(api: &Api<ConfigMap>) -> BTreeMap<String, String> {
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|o| {
            (
                o.metadata.name.unwrap_or_default(),
                o.metadata.resource_version.unwrap_or_default(),
            )
        })
        .collect()
}

async fn converges(informer: &SharedIndexInformer<ConfigMap>, api: &Api<ConfigMap>, what: &str) {
    let want = versions_on_server(api).await;
    let deadline = Instant::now() + LIMIT;
    loop {
        let have = versions_in_store(informer);
        if have == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no convergence within 30 s\nwant {want:?}\nhave {have:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create(api: &Api<ConfigMap>, name: &str) {
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": name}})).unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_informer_converges_through_latency_resets_and_cut_connections() {
    let server = FakeApiServer::start().await.unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    // Writes and the truth go straight to the server; only the informer crosses the proxy.
    let direct: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
    let through: Api<ConfigMap> = Api::namespaced(proxy.client().unwrap(), "default");
    for i in 0..5 {
        create(&direct, &format!("before-{i}")).await;
    }
    let informer = SharedIndexInformer::new(Arc::new(through), InformerOptions::default());
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let informer = informer.clone();
        let shutdown = shutdown.clone();
        async move { informer.run(shutdown).await }
    });
    assert!(informer.wait_for_sync().await);
    converges(&informer, &direct, "initial list").await;

    // A slow network: every chunk 50 ms late.
    proxy.faults().set_latency(Some(Duration::from_millis(50)));
    create(&direct, "slow").await;
    converges(&informer, &direct, "with latency").await;
    proxy.faults().set_latency(None);

    // Every connection reset: the watch breaks and is resumed.
    let accepted = proxy.faults().accepted();
    proxy.faults().reset_connections();
    create(&direct, "after-reset").await;
    converges(&informer, &direct, "after a reset").await;
    // Its watch was reset, so the informer reconnects (maybe after the convergence above, if
    // the event was in flight before the reset).
    let deadline = Instant::now() + LIMIT;
    while proxy.faults().accepted() <= accepted {
        assert!(Instant::now() < deadline, "the informer never reconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Connections cut after a few bytes while writes go on: each watch dies young; once the
    // cut is lifted, the informer catches up.
    proxy.faults().drop_after(Some(300));
    proxy.faults().reset_connections();
    for i in 0..3 {
        create(&direct, &format!("cut-{i}")).await;
    }
    proxy.faults().drop_after(None);
    proxy.faults().reset_connections();
    converges(&informer, &direct, "after cut connections").await;

    shutdown.cancel();
    run.await.unwrap().unwrap();
    proxy.shutdown().await;
    server.shutdown().await;
}
