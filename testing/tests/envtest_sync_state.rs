//! Sync state against a real kube-apiserver (envtest): an informer whose CRD is not installed,
//! and one whose user RBAC does not allow to list, each say why they are not synced and sync by
//! themselves once the cause is gone, without a restart.
//!
//! Skips (with a message) when the control plane binaries are absent, unless
//! `REFLEX_REQUIRE_ENVTEST=1`; see `scripts/envtest`.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use reflex_informer::factory::{FactoryOptions, InformerSpec, SharedInformerFactory};
use reflex_informer::reflector::{BackoffOptions, ReflectorOptions};
use reflex_informer::sync_state::{SyncFailure, SyncState};
use reflex_testing::envtest::{Environment, Options, UNPRIVILEGED_USER};
use tokio::sync::watch;

/// One control plane at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Upper bound for what must happen; reached only when the test fails.
const WAIT: Duration = Duration::from_secs(90);

fn fast_retries(namespace: Option<&str>) -> FactoryOptions {
    FactoryOptions {
        namespace: namespace.map(str::to_owned),
        reflector: ReflectorOptions {
            backoff: BackoffOptions {
                initial: Duration::from_millis(100),
                cap: Duration::from_secs(1),
                ..BackoffOptions::default()
            },
            ..ReflectorOptions::default()
        },
        ..FactoryOptions::default()
    }
}

async fn wait_for_state(
    states: &mut watch::Receiver<SyncState>,
    what: &str,
    cond: impl FnMut(&SyncState) -> bool,
) -> SyncState {
    let waited = tokio::time::timeout(WAIT, states.wait_for(cond))
        .await
        .map(|state| state.expect("the informer is alive").clone());
    waited.unwrap_or_else(|_| panic!("timed out waiting for {what}: {:?}", *states.borrow()))
}

async fn wait_until_len<K>(informer: &reflex_informer::SharedIndexInformer<K>, len: usize)
where
    K: kube::Resource + Send + Sync + 'static,
{
    let reached = tokio::time::timeout(WAIT, async {
        while informer.indexer().len() != len {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "the store reaches {len} objects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_informer_started_before_its_crd_reports_not_served_then_syncs_when_it_is_installed() {
    let _serial = SERIAL.lock().await;
    let Some(env) = Environment::start_or_skip(Options::default())
        .await
        .expect("start envtest")
    else {
        return;
    };
    let client = env.client();
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("late.reflex.example.com", "v1", "Gizmo"),
        "gizmos",
    );
    let factory = SharedInformerFactory::new(client.clone(), fast_retries(Some("default")));
    let informer = factory
        .informer_with(InformerSpec::dynamic(&resource))
        .unwrap();
    let mut states = informer.subscribe_sync_state();
    factory.start();
    let failing = wait_for_state(&mut states, "a 404 on the collection", |s| {
        s.failure().is_some()
    })
    .await;
    match failing.failure() {
        Some(SyncFailure::ResourceNotServed { resource, .. }) => {
            assert_eq!(resource, "gizmos.late.reflex.example.com");
        }
        other => panic!("expected ResourceNotServed from kube-apiserver, got {other:?}"),
    }
    assert!(!informer.has_synced());

    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "gizmos.late.reflex.example.com" },
        "spec": {
            "group": "late.reflex.example.com",
            "scope": "Namespaced",
            "names": { "plural": "gizmos", "singular": "gizmo", "kind": "Gizmo", "listKind": "GizmoList" },
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } }
            }]
        }
    }))
    .expect("CRD manifest");
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &crd)
        .await
        .expect("create CRD");
    wait_for_state(
        &mut states,
        "synced after the CRD appeared",
        SyncState::is_current,
    )
    .await;
    assert!(informer.has_synced());

    // And it is a working informer: a gizmo created now reaches the store.
    let api = Api::<DynamicObject>::namespaced_with(client, "default", &resource);
    let created = tokio::time::timeout(WAIT, async {
        loop {
            // The new resource may take a moment to be served for writes too.
            match api
                .create(
                    &PostParams::default(),
                    &DynamicObject::new("g", &resource).within("default"),
                )
                .await
            {
                Ok(_) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    assert!(created.is_ok(), "created a gizmo");
    wait_until_len(&informer, 1).await;
    factory.shutdown().await;
    env.stop().await.expect("stop envtest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_informer_forbidden_by_rbac_names_the_verb_and_scope_then_syncs_once_granted() {
    let _serial = SERIAL.lock().await;
    let Some(env) = Environment::start_or_skip(Options::default())
        .await
        .expect("start envtest")
    else {
        return;
    };
    let admin = env.client();
    let user = env
        .unprivileged_client()
        .await
        .expect("unprivileged client");
    Api::<ConfigMap>::namespaced(admin.clone(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": "visible-once-granted" }
            }))
            .expect("config map"),
        )
        .await
        .expect("create config map");

    let factory = SharedInformerFactory::new(user, fast_retries(None));
    let cms = factory.informer::<ConfigMap>();
    let mut states = cms.subscribe_sync_state();
    factory.start();
    let failing = wait_for_state(&mut states, "a forbidden list", |s| s.failure().is_some()).await;
    match failing.failure() {
        Some(
            cause @ SyncFailure::Forbidden {
                verb: "list",
                resource,
                namespace: None,
                message,
            },
        ) => {
            assert_eq!(resource, "configmaps");
            assert!(message.contains(UNPRIVILEGED_USER), "{message}");
            assert_eq!(
                cause.to_string(),
                "forbidden: list configmaps at cluster scope"
            );
        }
        other => panic!("expected Forbidden from kube-apiserver, got {other:?}"),
    }

    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": { "name": "reflex-configmap-reader" },
        "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"] }]
    }))
    .expect("role");
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &role)
        .await
        .expect("create cluster role");
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": { "name": "reflex-configmap-reader" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "reflex-configmap-reader" },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": UNPRIVILEGED_USER }]
    }))
    .expect("binding");
    Api::<ClusterRoleBinding>::all(admin)
        .create(&PostParams::default(), &binding)
        .await
        .expect("create cluster role binding");

    let synced = factory.wait_for_cache_sync(Some(WAIT)).await;
    let state = &synced[InformerSpec::<ConfigMap>::typed().id()];
    assert!(state.is_current(), "synced once granted: {state:?}");
    assert!(
        cms.indexer()
            .list()
            .iter()
            .any(|cm| cm.metadata.name.as_deref() == Some("visible-once-granted")),
        "the cache holds what the user may now list"
    );
    factory.shutdown().await;
    env.stop().await.expect("stop envtest");
}
