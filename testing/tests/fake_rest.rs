//! REST semantics of the fake API server, driven through `kube::Client`.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use reflex_testing::{FakeApiServer, FakeConfig};
use serde_json::json;

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}),
    )
    .unwrap()
}

fn api_code(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn create_get_update_delete_follow_optimistic_concurrency() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
    let created = api
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    let rv1: u64 = created
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.namespace.as_deref(), Some("default"));

    let dup = api
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap_err();
    assert_eq!(api_code(dup), (409, "AlreadyExists".into()));

    let mut changed = created.clone();
    changed.data = Some([("k".to_string(), "w".to_string())].into());
    let updated = api
        .replace("a", &PostParams::default(), &changed)
        .await
        .unwrap();
    let rv2: u64 = updated
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(rv2, rv1 + 1);

    let stale = api
        .replace("a", &PostParams::default(), &changed)
        .await
        .unwrap_err();
    assert_eq!(api_code(stale), (409, "Conflict".into()));

    api.delete("a", &DeleteParams::default()).await.unwrap();
    let gone = api.get("a").await.unwrap_err();
    assert_eq!(api_code(gone), (404, "NotFound".into()));
    server.shutdown().await;
}

#[tokio::test]
async fn namespace_in_body_must_match_the_url() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "kube-system");
    let mut obj = cm("a", json!({}));
    obj.metadata.namespace = Some("default".into());
    let err = api.create(&PostParams::default(), &obj).await.unwrap_err();
    assert_eq!(api_code(err), (400, "BadRequest".into()));
    let missing: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "nope");
    let err = missing
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap_err();
    assert_eq!(api_code(err).0, 404);
}

#[tokio::test]
async fn list_pages_with_continue_and_filters_by_selectors() {
    let server = FakeApiServer::start().await.unwrap();
    let client = server.client().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for (i, tier) in ["front", "back", "front", "db", "front"].iter().enumerate() {
        api.create(
            &PostParams::default(),
            &cm(&format!("c{i}"), json!({"tier": tier})),
        )
        .await
        .unwrap();
    }
    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(2);
    loop {
        let page = api.list(&lp).await.unwrap();
        assert!(page.items.len() <= 2);
        names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(names, ["c0", "c1", "c2", "c3", "c4"]);

    let cases = [
        ("tier=front", 3),
        ("tier!=front", 2),
        ("tier in (back,db)", 2),
        ("tier notin (front,db)", 1),
        ("tier", 5),
        ("!tier", 0),
    ];
    for (sel, want) in cases {
        let got = api.list(&ListParams::default().labels(sel)).await.unwrap();
        assert_eq!(got.items.len(), want, "{sel}");
    }
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=c3"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    let all: Api<ConfigMap> = Api::all(client);
    let not_default = all
        .list(&ListParams::default().fields("metadata.namespace!=default"))
        .await
        .unwrap();
    assert!(not_default.items.is_empty());
}

#[tokio::test]
async fn exact_list_returns_the_past_state_and_compaction_answers_410() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
    let a = api
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    let rv = a.metadata.resource_version.clone().unwrap();
    api.create(&PostParams::default(), &cm("b", json!({})))
        .await
        .unwrap();
    let past = api
        .list(
            &ListParams::default()
                .at(&rv)
                .matching(kube::api::VersionMatch::Exact),
        )
        .await
        .unwrap();
    assert_eq!(past.items.len(), 1);
    assert_eq!(past.metadata.resource_version.as_deref(), Some(rv.as_str()));

    let page = api.list(&ListParams::default().limit(1)).await.unwrap();
    let token = page.metadata.continue_.unwrap();
    api.create(&PostParams::default(), &cm("c", json!({})))
        .await
        .unwrap();
    server.faults().compact();
    let err = api
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap_err();
    assert_eq!(api_code(err).0, 410);
    let err = api
        .list(
            &ListParams::default()
                .at(&rv)
                .matching(kube::api::VersionMatch::Exact),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(err).0, 410);
}

#[tokio::test]
async fn patches_merge_and_bump_generation_only_for_spec_changes() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<Pod> = Api::namespaced(server.client().unwrap(), "default");
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}),
    )
    .unwrap();
    let created = api.create(&PostParams::default(), &pod).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    let labelled = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(1));
    assert_eq!(labelled.metadata.labels.unwrap()["a"], "b");

    let spec = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"activeDeadlineSeconds": 600}})),
        )
        .await
        .unwrap();
    assert_eq!(spec.metadata.generation, Some(2));

    let req = http::Request::patch("/api/v1/namespaces/default/pods/p")
        .header("content-type", "application/json-patch+json")
        .body(
            serde_json::to_vec(
                &json!([{"op": "replace", "path": "/spec/containers/0/image", "value": "z"}]),
            )
            .unwrap(),
        )
        .unwrap();
    let patched: Pod = server.client().unwrap().request(req).await.unwrap();
    assert_eq!(
        patched.spec.unwrap().containers[0].image.as_deref(),
        Some("z")
    );
    // A cluster refuses any other change to a Pod's spec.
    let refused = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodeName": "n1"}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(e) if e.code == 422 && e.reason == "Invalid"),
        "{refused:?}"
    );

    let status = api
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .unwrap();
    assert_eq!(status.status.unwrap().phase.as_deref(), Some("Running"));
    assert_eq!(status.metadata.generation, Some(3));

    let applied = api
        .patch("q", &PatchParams::apply("test"), &Patch::Apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "q"}, "spec": {"containers": [{"name": "c", "image": "y"}]}})))
        .await
        .unwrap();
    assert_eq!(applied.metadata.name.as_deref(), Some("q"));
}

#[tokio::test]
async fn finalizers_delay_deletion_until_removed() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
    let mut obj = cm("f", json!({}));
    obj.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&PostParams::default(), &obj).await.unwrap();
    api.delete("f", &DeleteParams::default()).await.unwrap();
    let held = api.get("f").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    api.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_code(api.get("f").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn delete_preconditions_and_deletecollection() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
    api.create(&PostParams::default(), &cm("a", json!({"x": "1"})))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("b", json!({"x": "1"})))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("c", json!({"x": "2"})))
        .await
        .unwrap();
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: Some("1".into()),
            uid: None,
        }),
        ..Default::default()
    };
    assert_eq!(api_code(api.delete("a", &dp).await.unwrap_err()).0, 409);
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("x=1"),
    )
    .await
    .unwrap();
    let left = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        left.items
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect::<Vec<_>>(),
        ["c"]
    );
}

#[tokio::test]
async fn crds_serve_their_resources_with_status() {
    let server = FakeApiServer::start().await.unwrap();
    server
        .register_crd(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "singular": "widget"},
                "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}]}
        }))
        .unwrap();
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(server.client().unwrap(), "default", &ar);
    let w: DynamicObject = serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1}})).unwrap();
    api.create(&PostParams::default(), &w).await.unwrap();
    let s = api
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": true}})),
        )
        .await
        .unwrap();
    assert_eq!(s.data["status"]["ready"], true);

    let unknown = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Gadget"),
        "gadgets",
    );
    let api: Api<DynamicObject> =
        Api::namespaced_with(server.client().unwrap(), "default", &unknown);
    assert_eq!(
        api_code(api.list(&ListParams::default()).await.unwrap_err()).0,
        404
    );
}

#[tokio::test]
async fn crds_in_kubernetes_own_groups_need_the_api_approval_annotation() {
    let server = FakeApiServer::start().await.unwrap();
    let crds: Api<DynamicObject> = Api::all_with(
        server.client().unwrap(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let crd = |group: &str, annotations: serde_json::Value| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("foos.{group}"), "annotations": annotations},
            "spec": {"group": group, "scope": "Namespaced",
                "names": {"plural": "foos", "kind": "Foo"},
                "versions": [{"name": "v1", "served": true, "storage": true}]}
        }))
        .unwrap()
    };
    // (group, annotations, accepted), as kube-apiserver v1.35 answers.
    let cases = [
        ("samplecontroller.k8s.io", json!({}), false),
        ("k8s.io", json!({}), false),
        ("x.kubernetes.io", json!({}), false),
        (
            "samplecontroller.k8s.io",
            json!({"api-approved.kubernetes.io": "unapproved, experimental-only"}),
            true,
        ),
        ("k8s.io.example.com", json!({}), true),
        ("example.com", json!({}), true),
    ];
    for (group, annotations, accepted) in cases {
        let created = crds
            .create(&PostParams::default(), &crd(group, annotations.clone()))
            .await;
        match (created, accepted) {
            (Ok(_), true) => {}
            (Err(e), false) => assert_eq!(api_code(e), (422, "Invalid".into()), "{group}"),
            (outcome, _) => panic!("{group} {annotations}: unexpected {outcome:?}"),
        }
    }
}

#[tokio::test]
async fn discovery_lists_builtin_and_crd_groups() {
    let server = FakeApiServer::start().await.unwrap();
    let discovery = kube::Discovery::new(server.client().unwrap())
        .run()
        .await
        .unwrap();
    let groups: Vec<String> = discovery.groups().map(|g| g.name().to_string()).collect();
    for g in ["", "apps", "coordination.k8s.io", "apiextensions.k8s.io"] {
        assert!(
            groups.iter().any(|x| x == g),
            "missing group {g:?} in {groups:?}"
        );
    }
    let v = server.client().unwrap().apiserver_version().await.unwrap();
    assert_eq!(v.major, "1");
    let nss: Api<Namespace> = Api::all(server.client().unwrap());
    assert!(nss.get("default").await.is_ok());
}

#[tokio::test]
async fn watch_streams_changes_after_a_resource_version() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
    let a = api
        .create(&PostParams::default(), &cm("a", json!({"sel": "yes"})))
        .await
        .unwrap();
    let rv = a.metadata.resource_version.unwrap();
    api.create(&PostParams::default(), &cm("b", json!({"sel": "no"})))
        .await
        .unwrap();
    let mut stream = api
        .watch(&WatchParams::default().labels("sel=yes"), &rv)
        .await
        .unwrap()
        .boxed();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "2"}})),
    )
    .await
    .unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"sel": "no"}}})),
    )
    .await
    .unwrap();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Modified(c) => assert_eq!(c.data.unwrap()["k"], "2"),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Deleted(c) => assert_eq!(c.metadata.name.as_deref(), Some("a")),
        other => panic!("expected DELETED for an object leaving the selection, got {other:?}"),
    }
    server.faults().compact();
    match api.watch(&WatchParams::default(), &rv).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 410),
        Err(other) => panic!("expected a 410 status, got {other:?}"),
        Ok(_) => panic!("expected a 410 status, got a stream"),
    }
}

#[tokio::test]
async fn streaming_list_sends_initial_events_then_the_end_bookmark() {
    let server = FakeApiServer::start_with(FakeConfig {
        bookmark_interval: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
    api.create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("b", json!({})))
        .await
        .unwrap();
    let mut stream = api
        .watch(&WatchParams::default().initial_events(), "")
        .await
        .unwrap()
        .boxed();
    for name in ["a", "b"] {
        match stream.try_next().await.unwrap().unwrap() {
            WatchEvent::Added(c) => assert_eq!(c.metadata.name.as_deref(), Some(name)),
            other => panic!("expected ADDED, got {other:?}"),
        }
    }
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Bookmark(b) => {
            assert_eq!(
                b.metadata
                    .annotations
                    .get("k8s.io/initial-events-end")
                    .map(String::as_str),
                Some("true")
            );
            assert_eq!(
                b.metadata.resource_version,
                server.resource_version().to_string()
            );
        }
        other => panic!("expected the initial-events-end BOOKMARK, got {other:?}"),
    }
}

#[tokio::test]
async fn timeout_seconds_closes_the_watch_cleanly() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
    let stream = api
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap();
    let events: Vec<_> = stream.collect().await;
    assert!(events.is_empty(), "{events:?}");
}

#[tokio::test]
async fn bookmarks_arrive_at_the_configured_interval() {
    let server = FakeApiServer::start_with(FakeConfig {
        bookmark_interval: Duration::from_millis(1),
        ..Default::default()
    })
    .await
    .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
    let rv = server.resource_version().to_string();
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, rv),
        other => panic!("expected BOOKMARK, got {other:?}"),
    }
}

#[tokio::test]
async fn seeded_objects_resolve_their_resource_from_api_version_and_kind() {
    let server = FakeApiServer::start().await.unwrap();
    server
        .seed(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}}))
        .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
    assert!(api.get("s").await.is_ok());
    assert!(
        server
            .seed(json!({"apiVersion": "v9", "kind": "Nope", "metadata": {"name": "s"}}))
            .is_err()
    );
}

#[tokio::test]
async fn boolean_query_parameters_are_decoded_like_the_apiserver_does() {
    // The Python client sends `watch=True`; the apiserver treats any value but 0/false as true.
    let server = FakeApiServer::start().await.unwrap();
    let client = server.client().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    for (value, watches) in [
        ("True", true),
        ("true", true),
        ("1", true),
        ("t", true),
        ("False", false),
        ("false", false),
        ("0", false),
    ] {
        let req = http::Request::get(format!(
            "/api/v1/namespaces/default/configmaps?watch={value}&timeoutSeconds=1"
        ))
        .body(Vec::new())
        .unwrap();
        let resp = client.send(req.map(Into::into)).await.unwrap();
        assert_eq!(resp.status(), 200, "watch={value}");
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let first: serde_json::Value =
            serde_json::from_slice(bytes.split(|b| *b == b'\n').next().unwrap()).unwrap();
        if watches {
            assert_eq!(first["type"], "ADDED", "watch={value}: {first}");
        } else {
            assert_eq!(first["kind"], "ConfigMapList", "watch={value}: {first}");
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn delete_answers_a_status_or_the_object_as_kube_apiserver_does() {
    let server = FakeApiServer::start().await.unwrap();
    let client = server.client().unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created = cms
        .create(&PostParams::default(), &cm("gone", json!({})))
        .await
        .unwrap();
    // Gone at once: a Status of Success naming what was deleted.
    let status = cms
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap()
        .right()
        .expect("a Status for an object deleted at once");
    assert_eq!(
        status.status,
        Some(kube::core::response::StatusSummary::Success)
    );
    let details = status.details.unwrap();
    assert_eq!(
        (details.name.as_str(), details.kind.as_str()),
        ("gone", "configmaps")
    );
    assert_eq!(Some(details.uid), created.metadata.uid);
    // Held by a finalizer: the object being deleted.
    let mut held = cm("held", json!({}));
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();
    let obj = cms
        .delete("held", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("the object for a deletion held by finalizers");
    assert!(obj.metadata.deletion_timestamp.is_some());
    // Pods (like services, service accounts, namespaces and CRDs) answer with the object.
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
    )
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let obj = pods
        .delete("p", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("the deleted pod");
    assert_eq!(obj.metadata.name.as_deref(), Some("p"));
    server.shutdown().await;
}
