//! What the fake does that a cluster's controllers do beside kube-apiserver, checked against
//! Kubernetes' documented behaviour (kube-apiserver alone, as in envtest, does none of it):
//! garbage collection by owner references with each propagation policy, namespace deletion,
//! and the parts of validation and `/scale` that need no real server to compare with (those
//! that do are in `envtest_fake_fidelity.rs`).

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent};
use kube::core::{DynamicObject, GroupVersionKind};
use reflex_testing::{FakeApiServer, FakeConfig};
use serde_json::{Value, json};

const NS: &str = "default";

async fn create_cm(api: &Api<ConfigMap>, name: &str, owners: &[(&ConfigMap, bool)]) -> ConfigMap {
    let refs: Vec<Value> = owners
        .iter()
        .map(|(o, block)| {
            json!({"apiVersion": "v1", "kind": "ConfigMap", "name": o.metadata.name,
                   "uid": o.metadata.uid, "blockOwnerDeletion": block})
        })
        .collect();
    let mut meta = json!({"name": name});
    if !refs.is_empty() {
        meta["ownerReferences"] = json!(refs);
    }
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": meta})).unwrap(),
    )
    .await
    .unwrap()
}

async fn exists(api: &Api<ConfigMap>, name: &str) -> bool {
    api.get_opt(name).await.unwrap().is_some()
}

#[tokio::test]
async fn background_deletion_collects_dependents_and_their_dependents_after_the_owner() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), NS);
    let owner = create_cm(&api, "owner", &[]).await;
    let other = create_cm(&api, "other-owner", &[]).await;
    let child = create_cm(&api, "child", &[(&owner, false)]).await;
    create_cm(&api, "grandchild", &[(&child, false)]).await;
    create_cm(&api, "shared", &[(&owner, false), (&other, false)]).await;
    create_cm(&api, "unrelated", &[]).await;

    let rv = api
        .get("unrelated")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut events = api
        .watch(&kube::api::WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    api.delete("owner", &DeleteParams::default()).await.unwrap();

    for gone in ["owner", "child", "grandchild"] {
        assert!(!exists(&api, gone).await, "{gone} should be collected");
    }
    assert!(exists(&api, "unrelated").await);
    // A dependent with another owner that exists stays, without the reference to the gone one.
    let shared = api.get("shared").await.unwrap();
    let refs: Vec<String> = shared
        .metadata
        .owner_references
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(refs, ["other-owner"]);

    // Watchers see the owner go first, then what depended on it.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match events.try_next().await.unwrap().unwrap() {
            WatchEvent::Deleted(cm) => seen.push(format!("deleted {}", cm.metadata.name.unwrap())),
            WatchEvent::Modified(cm) => {
                seen.push(format!("modified {}", cm.metadata.name.unwrap()))
            }
            _ => {}
        }
    }
    assert_eq!(seen[0], "deleted owner");
    let pos = |s: &str| seen.iter().position(|e| e == s).unwrap();
    assert!(pos("deleted child") < pos("deleted grandchild"), "{seen:?}");
    assert!(seen.contains(&"modified shared".to_string()), "{seen:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn foreground_deletion_waits_for_blocking_dependents() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), NS);
    let owner = create_cm(&api, "owner", &[]).await;
    create_cm(&api, "free", &[(&owner, false)]).await;
    // A blocking dependent that its own finalizer keeps.
    let held: ConfigMap = serde_json::from_value(json!({"metadata": {
        "name": "held", "finalizers": ["example.com/hold"],
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                             "uid": owner.metadata.uid, "blockOwnerDeletion": true}]}}))
    .unwrap();
    api.create(&PostParams::default(), &held).await.unwrap();

    let answer = api
        .delete("owner", &DeleteParams::foreground())
        .await
        .unwrap();
    let marked = answer.left().expect("the owner is still there, marked");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(
        marked
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"foregroundDeletion".to_string())
    );
    assert!(
        !exists(&api, "free").await,
        "non-blocking dependents are deleted"
    );
    let held = api.get("held").await.unwrap();
    assert!(
        held.metadata.deletion_timestamp.is_some(),
        "the blocking one is being deleted"
    );
    assert!(exists(&api, "owner").await, "and holds its owner");

    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(!exists(&api, "held").await);
    assert!(
        !exists(&api, "owner").await,
        "the owner goes with its last blocker"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn orphan_deletion_keeps_dependents_without_the_reference() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), NS);
    let owner = create_cm(&api, "owner", &[]).await;
    create_cm(&api, "child", &[(&owner, true)]).await;
    let answer = api.delete("owner", &DeleteParams::orphan()).await.unwrap();
    let marked = answer.left().expect("the DELETE answers the marked owner");
    assert!(
        marked
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"orphan".to_string())
    );
    assert!(!exists(&api, "owner").await);
    let child = api.get("child").await.unwrap();
    assert!(child.metadata.owner_references.is_none(), "{child:?}");
    assert!(child.metadata.deletion_timestamp.is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn an_object_whose_owners_do_not_exist_is_collected() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), NS);
    let owner = create_cm(&api, "owner", &[]).await;
    api.delete("owner", &DeleteParams::default()).await.unwrap();
    // Written from a cache that has not seen the owner's deletion yet.
    let created = create_cm(&api, "late", &[(&owner, false)]).await;
    assert_eq!(created.metadata.name.as_deref(), Some("late"));
    assert!(!exists(&api, "late").await);
    server.shutdown().await;
}

#[tokio::test]
async fn an_unknown_propagation_policy_is_refused() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), NS);
    create_cm(&api, "a", &[]).await;
    let req = http::Request::delete(format!("/api/v1/namespaces/{NS}/configmaps/a"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&json!({"propagationPolicy": "Sometimes"})).unwrap())
        .unwrap();
    let err = server
        .client()
        .unwrap()
        .request::<Value>(req.map(Into::into))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("propagationPolicy: Unsupported value: \"Sometimes\"")),
        "{err:?}"
    );
    assert!(exists(&api, "a").await);
    server.shutdown().await;
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_objects_then_the_namespace() {
    let server = FakeApiServer::start().await.unwrap();
    let client = server.client().unwrap();
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "team");
    create_cm(&cms, "plain", &[]).await;
    let held: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
    )
    .unwrap();
    cms.create(&PostParams::default(), &held).await.unwrap();
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}}))
                .unwrap(),
        )
        .await
        .unwrap();
    let keep = create_cm(&Api::namespaced(client.clone(), NS), "elsewhere", &[]).await;

    let answer = nss.delete("team", &DeleteParams::default()).await.unwrap();
    let terminating = answer.left().expect("the namespace answers Terminating");
    assert_eq!(
        terminating.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    assert!(!exists(&cms, "plain").await);
    assert!(secrets.get_opt("s").await.unwrap().is_none());
    assert!(
        cms.get("held")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    // Held by the object left in it; nothing new may be created there.
    assert!(nss.get_opt("team").await.unwrap().is_some());
    let refused = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "new"}})).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 403 && s.reason == "Forbidden"),
        "{refused:?}"
    );

    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(!exists(&cms, "held").await);
    assert!(
        nss.get_opt("team").await.unwrap().is_none(),
        "the empty namespace goes"
    );
    assert!(exists(&Api::namespaced(client, NS), &keep.metadata.name.unwrap()).await);
    server.shutdown().await;
}

#[tokio::test]
async fn without_garbage_collection_the_fake_answers_as_kube_apiserver_alone() {
    let server = FakeApiServer::start_with(FakeConfig {
        garbage_collection: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = server.client().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let owner = create_cm(&api, "owner", &[]).await;
    create_cm(&api, "child", &[(&owner, false)]).await;
    api.delete("owner", &DeleteParams::default()).await.unwrap();
    assert!(exists(&api, "child").await, "no collector runs");

    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
    )
    .await
    .unwrap();
    let team: Api<ConfigMap> = Api::namespaced(client, "team");
    create_cm(&team, "plain", &[]).await;
    nss.delete("team", &DeleteParams::default()).await.unwrap();
    let ns = nss.get("team").await.unwrap();
    assert_eq!(
        ns.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    assert!(exists(&team, "plain").await, "no namespace controller runs");
    server.shutdown().await;
}

#[tokio::test]
async fn validation_can_be_turned_off_and_is_on_by_default() {
    let bad: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "Upper-Case"}})).unwrap();
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), NS);
    let err = api.create(&PostParams::default(), &bad).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err:?}"
    );
    server.shutdown().await;

    let server = FakeApiServer::start_with(FakeConfig {
        validation: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), NS);
    api.create(&PostParams::default(), &bad).await.unwrap();
    server.shutdown().await;
}

fn crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "subresources": {"status": {}, "scale": {
                    "specReplicasPath": ".spec.size", "statusReplicasPath": ".status.ready",
                    "labelSelectorPath": ".status.selector"}}}]}
    })
}

#[tokio::test]
async fn a_custom_resource_scales_through_the_paths_its_crd_declares() {
    let server = FakeApiServer::start().await.unwrap();
    server.register_crd(crd()).unwrap();
    let client = server.client().unwrap();
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
    let (ar, _) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
    let mut w = DynamicObject::new("w", &ar).data(json!({"spec": {"size": 2}}));
    w.metadata.namespace = Some(NS.into());
    api.create(&PostParams::default(), &w).await.unwrap();
    api.patch_status(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"ready": 1, "selector": "app=w"}})),
    )
    .await
    .unwrap();

    let scale = api.get_scale("w").await.unwrap();
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2));
    let status = scale.status.unwrap();
    assert_eq!(
        (status.replicas, status.selector.as_deref()),
        (1, Some("app=w"))
    );

    let scaled = api
        .patch_scale(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(scaled.spec.and_then(|s| s.replicas), Some(5));
    assert_eq!(api.get("w").await.unwrap().data["spec"]["size"], 5);

    // Discovery names the subresource, as kubectl scale and the HPA look for it.
    let resources: Value = client
        .request(
            http::Request::get("/apis/example.com/v1")
                .body(Vec::new())
                .unwrap()
                .map(Into::into),
        )
        .await
        .unwrap();
    let names: Vec<&str> = resources["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(names.contains(&"widgets/scale"), "{names:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_secrets_string_data_is_stored_as_base64_data() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<Secret> = Api::namespaced(server.client().unwrap(), NS);
    let s: Secret = serde_json::from_value(
        json!({"metadata": {"name": "s"}, "stringData": {"password": "hunter2"}}),
    )
    .unwrap();
    let created = api.create(&PostParams::default(), &s).await.unwrap();
    assert!(created.string_data.is_none());
    let data = created.data.unwrap();
    assert_eq!(data["password"].0, b"hunter2");
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_refused_write_changes_nothing() {
    // A refused write records nothing: the resourceVersion does not move.
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), NS);
    let before = server.resource_version();
    let bad: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "-x"}})).unwrap();
    api.create(&PostParams::default(), &bad).await.unwrap_err();
    assert_eq!(server.resource_version(), before);
    server.shutdown().await;
}

#[tokio::test]
async fn a_repeated_apply_is_a_no_op() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), NS);
    let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}});
    let first = api
        .patch("a", &PatchParams::apply("m"), &Patch::Apply(&config))
        .await
        .unwrap();
    let again = api
        .patch("a", &PatchParams::apply("m"), &Patch::Apply(&config))
        .await
        .unwrap();
    assert_eq!(
        first.metadata.resource_version,
        again.metadata.resource_version
    );
    server.shutdown().await;
}

#[tokio::test]
async fn odd_shapes_of_spec_and_status_are_answered_not_a_panic() {
    let server = FakeApiServer::start().await.unwrap();
    let client = server.client().unwrap();
    let send = |method: &str, path: &str, body: Value| {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .unwrap()
    };
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "odd"}})).unwrap(),
    )
    .await
    .unwrap();
    for (method, path, body) in [
        (
            "PUT",
            "/api/v1/namespaces/odd",
            json!({"metadata": {"name": "odd"}, "spec": "x"}),
        ),
        (
            "PUT",
            "/api/v1/namespaces/odd/status",
            json!({"metadata": {"name": "odd"}, "status": "s"}),
        ),
        (
            "POST",
            "/api/v1/namespaces/default/services",
            json!({"metadata": {"name": "s"}, "spec": "x"}),
        ),
    ] {
        let resp = client
            .send(send(method, path, body).map(Into::into))
            .await
            .unwrap();
        assert!(
            resp.status().as_u16() < 500,
            "{method} {path}: {}",
            resp.status()
        );
    }
    // The namespace can still be deleted, and goes.
    nss.delete("odd", &DeleteParams::default()).await.unwrap();
    assert!(nss.get_opt("odd").await.unwrap().is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn a_namespace_keeps_the_namespace_controllers_finalizer() {
    let server = FakeApiServer::start().await.unwrap();
    let client = server.client().unwrap();
    let nss: Api<Namespace> = Api::all(client.clone());
    let created = nss
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "n"}, "spec": {"finalizers": []}}))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        created.spec.unwrap().finalizers.unwrap(),
        ["kubernetes".to_string()]
    );
    let cms: Api<ConfigMap> = Api::namespaced(client, "n");
    let held: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
    )
    .unwrap();
    cms.create(&PostParams::default(), &held).await.unwrap();
    nss.delete("n", &DeleteParams::default()).await.unwrap();
    // An update that leaves the spec's finalizers out does not release the namespace.
    nss.patch(
        "n",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(nss.get_opt("n").await.unwrap().is_some());
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(nss.get_opt("n").await.unwrap().is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn without_garbage_collection_a_foreground_delete_leaves_the_finalizer_and_dependents() {
    let server = FakeApiServer::start_with(FakeConfig {
        garbage_collection: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), NS);
    let owner = create_cm(&api, "owner", &[]).await;
    create_cm(&api, "child", &[(&owner, false)]).await;
    api.delete("owner", &DeleteParams::foreground())
        .await
        .unwrap();
    let owner = api.get("owner").await.unwrap();
    assert!(
        owner
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"foregroundDeletion".to_string())
    );
    assert!(exists(&api, "child").await);
    server.shutdown().await;
}
