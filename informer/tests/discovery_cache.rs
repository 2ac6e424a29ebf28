//! `CachedDiscovery` against the fake API server, counting its discovery requests: the disk
//! cache spares the server within the TTL, a name the cache does not know sends it back to the
//! server once, an expired or corrupt cache is refetched, and `InformerSpec::discovered` watches
//! a cluster-scoped resource cluster-wide even from a namespaced factory.

use std::time::Duration;

use kube::api::{Api, DynamicObject, PostParams};
use kube::discovery::Scope;
use reflex_informer::discovery::{
    CachedDiscovery, DiscoveryCache, DiscoveryError, DiscoveryOptions, host_dir_name,
};
use reflex_informer::factory::{FactoryOptions, InformerSpec, SharedInformerFactory};
use reflex_testing::FakeApiServer;
use serde_json::json;

fn discovery(server: &FakeApiServer, cache: DiscoveryCache, ttl: Duration) -> CachedDiscovery {
    let url: http::Uri = server.url().parse().expect("the fake's URL");
    CachedDiscovery::new(
        server.client().expect("client"),
        &url,
        DiscoveryOptions { cache, ttl },
    )
}

/// Requests for the group list: one per trip to the server for a whole discovery.
fn group_lists(server: &FakeApiServer) -> u64 {
    server.faults().request_count("discovery", "apis")
}

fn widget_crd(scope: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": scope,
            "names": {"plural": "widgets", "kind": "Widget", "singular": "widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}]}
    })
}

#[tokio::test]
async fn a_second_process_within_the_ttl_reads_the_disk_cache_not_the_server() {
    let server = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = discovery(
        &server,
        DiscoveryCache::Dir(dir.path().into()),
        Duration::from_secs(600),
    );
    let (deployments, caps) = first.resolve("deployments.apps").await.unwrap();
    assert_eq!(
        (
            deployments.api_version.as_str(),
            deployments.kind.as_str(),
            deployments.plural.as_str()
        ),
        ("apps/v1", "Deployment", "deployments")
    );
    assert_eq!(caps.scope, Scope::Namespaced);
    assert!(
        caps.subresources
            .iter()
            .any(|(sub, _)| sub.plural == "status"),
        "{caps:?}"
    );
    assert_eq!(group_lists(&server), 1);
    assert!(server.faults().request_count("discovery", "apis/apps/v1") >= 1);

    // client-go's layout under <dir>/<host>/.
    let url: http::Uri = server.url().parse().unwrap();
    let host = dir.path().join(host_dir_name(&url));
    assert_eq!(first.cache_dir(), Some(host.as_path()));
    for file in [
        "servergroups.json",
        "v1/serverresources.json",
        "apps/v1/serverresources.json",
    ] {
        assert!(host.join(file).is_file(), "no {file} in {}", host.display());
    }
    let groups: serde_json::Value =
        serde_json::from_slice(&std::fs::read(host.join("servergroups.json")).unwrap()).unwrap();
    assert_eq!(
        groups["groups"][0]["name"], "",
        "the core group comes first"
    );

    // A new discovery (another process) with the same directory asks the server nothing.
    let second = discovery(
        &server,
        DiscoveryCache::Dir(dir.path().into()),
        Duration::from_secs(600),
    );
    let (configmaps, caps) = second.resolve("configmaps").await.unwrap();
    assert_eq!(
        (configmaps.api_version.as_str(), configmaps.kind.as_str()),
        ("v1", "ConfigMap")
    );
    assert_eq!(caps.scope, Scope::Namespaced);
    let (nodes, caps) = second.resolve("Node").await.unwrap();
    assert_eq!(
        (nodes.plural.as_str(), caps.scope),
        ("nodes", Scope::Cluster)
    );
    assert_eq!(group_lists(&server), 1, "served from the disk cache");
    assert!(second.resources().await.unwrap().len() > 10);
}

#[tokio::test]
async fn a_name_the_cache_does_not_know_is_looked_up_on_the_server_once() {
    let server = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = DiscoveryCache::Dir(dir.path().into());
    discovery(&server, cache.clone(), Duration::from_secs(600))
        .resolve("pods")
        .await
        .unwrap();
    assert_eq!(group_lists(&server), 1);

    // A CRD installed after the cache was written: the cache misses, the server has it.
    server.register_crd(widget_crd("Namespaced")).unwrap();
    let later = discovery(&server, cache.clone(), Duration::from_secs(600));
    for name in [
        "widgets.example.com",
        "widgets",
        "Widget",
        "widget",
        "wd",
        "widgets.v1.example.com",
    ] {
        let (widget, _) = later
            .resolve(name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(widget.api_version, "example.com/v1", "{name}");
    }
    assert_eq!(
        group_lists(&server),
        2,
        "one refetch, then the fresh copy answers"
    );

    // A name nobody serves: one more look at the server (the cache may be stale), then NotFound.
    let again = discovery(&server, cache, Duration::from_secs(600));
    match again.resolve("gadgets.example.com").await {
        Err(DiscoveryError::NotFound { name }) => assert_eq!(name, "gadgets.example.com"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(group_lists(&server), 3);
    // From a copy fetched from the server in this process, a miss is final.
    assert!(again.resolve("gadgets").await.is_err());
    assert_eq!(group_lists(&server), 3);
}

#[tokio::test]
async fn an_expired_or_corrupt_cache_is_fetched_again_and_rewritten() {
    let server = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = DiscoveryCache::Dir(dir.path().into());
    discovery(&server, cache.clone(), Duration::from_secs(600))
        .resolve("pods")
        .await
        .unwrap();
    // A TTL of zero: nothing cached is fresh.
    discovery(&server, cache.clone(), Duration::ZERO)
        .resolve("pods")
        .await
        .unwrap();
    assert_eq!(group_lists(&server), 2);

    let url: http::Uri = server.url().parse().unwrap();
    let resources = dir
        .path()
        .join(host_dir_name(&url))
        .join("apps/v1/serverresources.json");
    std::fs::write(&resources, b"{not json").unwrap();
    let (d, _) = discovery(&server, cache.clone(), Duration::from_secs(600))
        .resolve("deployments")
        .await
        .unwrap();
    assert_eq!(d.group, "apps");
    assert_eq!(group_lists(&server), 3, "a corrupt file is a miss");
    let rewritten: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&resources).unwrap()).expect("rewritten whole");
    assert_eq!(rewritten["groupVersion"], "apps/v1");

    // invalidate() forgets memory and disk.
    let d = discovery(&server, cache, Duration::from_secs(600));
    d.resolve("pods").await.unwrap();
    assert_eq!(group_lists(&server), 3);
    d.invalidate();
    d.resolve("pods").await.unwrap();
    assert_eq!(group_lists(&server), 4);
}

#[tokio::test]
async fn a_disabled_cache_writes_nothing_and_keeps_one_copy_in_memory() {
    let server = FakeApiServer::start().await.unwrap();
    let d = discovery(&server, DiscoveryCache::Disabled, Duration::from_secs(600));
    assert_eq!(d.cache_dir(), None);
    d.resolve("pods").await.unwrap();
    d.resolve("deployments.apps").await.unwrap();
    assert_eq!(group_lists(&server), 1);
    let fresh_each_time = discovery(&server, DiscoveryCache::Disabled, Duration::ZERO);
    fresh_each_time.resolve("pods").await.unwrap();
    fresh_each_time.resolve("pods").await.unwrap();
    assert_eq!(group_lists(&server), 3);
}

#[tokio::test]
async fn a_discovered_cluster_scoped_resource_is_watched_cluster_wide_from_a_namespaced_factory() {
    let server = FakeApiServer::start().await.unwrap();
    server.register_crd(widget_crd("Cluster")).unwrap();
    let client = server.client().unwrap();
    let d = discovery(&server, DiscoveryCache::Disabled, Duration::from_secs(600));
    let (widgets, caps) = d.resolve("widgets.example.com").await.unwrap();
    assert_eq!(caps.scope, Scope::Cluster);
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &widgets);
    for name in ["a", "b"] {
        let w: DynamicObject = serde_json::from_value(
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}}),
        )
        .unwrap();
        api.create(&PostParams::default(), &w).await.unwrap();
    }
    let factory = SharedInformerFactory::new(
        client,
        FactoryOptions {
            namespace: Some("default".into()),
            ..FactoryOptions::default()
        },
    );
    let informer = factory
        .informer_with(InformerSpec::discovered(&widgets, &caps))
        .unwrap();
    factory.start();
    let synced = factory
        .wait_for_cache_sync(Some(Duration::from_secs(30)))
        .await;
    assert!(synced.values().all(|s| s.has_synced()), "{synced:?}");
    let mut names: Vec<String> = informer
        .indexer()
        .list()
        .iter()
        .filter_map(|w| w.metadata.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    factory.shutdown().await;
}
