//! A controller whose primary and children are `DynamicObject`s, known only at run time, against
//! the fake API server over HTTP: a CRD served dynamically, its objects reconciled into an owned
//! ConfigMap and a status write, and the ConfigMap recreated when deleted behind its back.
//!
//! Real HTTP means the real clock: every wait is a bounded poll for a condition (30 s).

mod support;

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::discovery::Scope;
use kube::discovery::ApiResource;
use reflex_informer::factory::{FactoryOptions, InformerSpec, SharedInformerFactory};
use reflex_informer::key::ObjectKey;
use reflex_informer::lister::Lister;
use reflex_runtime::controller::{Action, Controller, ControllerOptions, default_error_policy};
use reflex_testing::FakeApiServer;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use support::{POLL_LIMIT, eventually};

const NS: &str = "default";

fn widgets() -> ApiResource {
    ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    }
}

fn widget_crd() -> serde_json::Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
            }]
        }
    })
}

struct Ctx {
    client: kube::Client,
    widgets: Lister<DynamicObject>,
    config_maps: Lister<DynamicObject>,
}

#[derive(Debug, thiserror::Error)]
#[error("kubernetes API call failed: {0}")]
struct ApiError(#[from] kube::Error);

/// Each Widget owns a ConfigMap `<name>-config` holding its `spec.color`; the Widget's status
/// says which ConfigMap and which color it holds.
async fn reconcile(key: ObjectKey, ctx: Arc<Ctx>) -> Result<Action, ApiError> {
    let Some(widget) = ctx.widgets.get_by_key(&key) else {
        return Ok(Action::done());
    };
    let name = key.name();
    let color = widget.data["spec"]["color"].as_str().unwrap_or("none");
    let cm_name = format!("{name}-config");
    let cm_resource = ApiResource::erase::<ConfigMap>(&());
    let config_maps: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), NS, &cm_resource);
    let current = ctx
        .config_maps
        .get_by_key(&ObjectKey::new(Some(NS), &cm_name));
    let holds = current
        .as_ref()
        .and_then(|cm| cm.data["data"]["color"].as_str());
    if current.is_none() {
        let mut cm = DynamicObject::new(&cm_name, &cm_resource)
            .within(NS)
            .data(json!({"data": {"color": color}}));
        cm.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: widgets().api_version,
                kind: widgets().kind,
                name: name.to_owned(),
                uid: widget.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        ]);
        match config_maps.create(&PostParams::default(), &cm).await {
            // The cache lags our own create: its add event will bring us back.
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(Action::done()),
            other => {
                other?;
            }
        }
    } else if holds != Some(color) {
        config_maps
            .patch(
                &cm_name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"data": {"color": color}})),
            )
            .await?;
    }
    let want = json!({"configMap": cm_name, "color": color});
    if widget.data.get("status") != Some(&want) {
        Api::<DynamicObject>::namespaced_with(ctx.client.clone(), NS, &widgets())
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": want})),
            )
            .await?;
    }
    Ok(Action::done())
}

async fn widget_status(api: &Api<DynamicObject>, name: &str) -> Option<serde_json::Value> {
    let w = api.get_opt(name).await.ok()??;
    w.data.get("status").cloned()
}

async fn config_color(api: &Api<ConfigMap>, name: &str) -> Option<(String, String)> {
    let cm = api.get_opt(name).await.ok()??;
    let color = cm.data?.get("color")?.clone();
    Some((color, cm.metadata.uid.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_primary_reconciles_into_status_and_owned_dynamic_child_is_restored() {
    let server = FakeApiServer::start().await.unwrap();
    server.register_crd(widget_crd()).unwrap();
    let client = server.client().unwrap();
    let factory = SharedInformerFactory::new(client.clone(), FactoryOptions::default());
    let widget_informer = factory
        .informer_with(InformerSpec::dynamic(&widgets()))
        .unwrap();
    let cm_informer = factory
        .informer_with(InformerSpec::dynamic(&ApiResource::erase::<ConfigMap>(&())))
        .unwrap();
    factory.start();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        widgets: widget_informer.lister(),
        config_maps: cm_informer.lister(),
    });
    let shutdown = CancellationToken::new();
    let controller = Controller::new_with(widget_informer, &widgets(), Scope::Namespaced)
        .owns(cm_informer)
        .options(ControllerOptions {
            name: "widgets".into(),
            sync_timeout: Some(POLL_LIMIT),
            shutdown: shutdown.clone(),
            ..ControllerOptions::default()
        });
    let run = tokio::spawn(controller.run(reconcile, default_error_policy, ctx));

    let widget_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &widgets());
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let widget = DynamicObject::new("w1", &widgets())
        .within(NS)
        .data(json!({"spec": {"color": "blue"}}));
    widget_api
        .create(&PostParams::default(), &widget)
        .await
        .unwrap();

    // Created: the owned ConfigMap holds the color and the status says so.
    let (color, first_uid) = eventually("configmap w1-config", || async {
        config_color(&cm_api, "w1-config").await
    })
    .await;
    assert_eq!(color, "blue");
    eventually("status written", || async {
        (widget_status(&widget_api, "w1").await
            == Some(json!({"configMap": "w1-config", "color": "blue"})))
        .then_some(())
    })
    .await;

    // Spec changed: the child and the status follow.
    widget_api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"color": "green"}})),
        )
        .await
        .unwrap();
    eventually("configmap and status green", || async {
        let (color, _) = config_color(&cm_api, "w1-config").await?;
        let status = widget_status(&widget_api, "w1").await?;
        (color == "green" && status["color"] == "green").then_some(())
    })
    .await;

    // The child deleted behind the controller's back: its owner reference (matched on the
    // ApiResource's kind and apiVersion) enqueues the Widget, which recreates it.
    cm_api
        .delete("w1-config", &DeleteParams::default())
        .await
        .unwrap();
    let (color, uid) = eventually("configmap recreated", || async {
        config_color(&cm_api, "w1-config")
            .await
            .filter(|(_, uid)| *uid != first_uid)
    })
    .await;
    assert_eq!(color, "green");
    assert_ne!(uid, first_uid);

    shutdown.cancel();
    let summary = run.await.unwrap().unwrap();
    // No panics; errors are not asserted: a reconcile working from a cache that lags the server
    // (a patch of the ConfigMap just deleted behind its back, say) may fail and be retried,
    // which is the controller doing its job. Convergence above is the guarantee.
    assert_eq!(summary.panics, 0, "{summary:?}");
    assert!(summary.reconciles >= 3, "{summary:?}");
    factory.shutdown().await;
    server.shutdown().await;
}
