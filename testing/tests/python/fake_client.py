"""Drives the official Kubernetes Python client against a reflex FakeApiServer.

Usage: python3 fake_client.py KUBECONFIG

Prints one checkable line per step and exits non-zero on the first mismatch, so the Rust test
(testing/tests/fake_python_client.rs) can assert on both.
"""

import json
import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

NS = "py-demo"


def check(cond, what):
    if not cond:
        print(f"MISMATCH {what}", flush=True)
        sys.exit(1)


def say(*parts):
    print(*parts, flush=True)


def api_error(call):
    """Runs call, which must fail, and returns (HTTP status, Status reason)."""
    try:
        call()
    except ApiException as e:
        reason = json.loads(e.body).get("reason") if e.body else None
        return e.status, reason
    check(False, "expected an ApiException")
    return None


def cm(name, app, value):
    return client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, labels={"app": app}),
        data={"k": value},
    )


def main():
    config.load_kube_config(config_file=sys.argv[1])
    v1 = client.CoreV1Api()

    ns = v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    check(ns.metadata.name == NS and ns.metadata.uid, "namespace created with a uid")
    say("namespace", ns.metadata.name)

    for name, app in [("cm-a", "web"), ("cm-b", "web"), ("cm-c", "db")]:
        created = v1.create_namespaced_config_map(NS, cm(name, app, "v1"))
        check(created.metadata.resource_version, f"{name} has a resourceVersion")
        check(created.metadata.namespace == NS, f"{name} namespace")
    say("created cm-a cm-b cm-c")

    status, reason = api_error(
        lambda: v1.create_namespaced_config_map(NS, cm("cm-a", "web", "again"))
    )
    check(status == 409 and reason == "AlreadyExists", f"duplicate create: {status} {reason}")
    say("duplicate", status, reason)

    web = v1.list_namespaced_config_map(NS, label_selector="app=web")
    names = sorted(i.metadata.name for i in web.items)
    check(names == ["cm-a", "cm-b"], f"label selector list: {names}")
    check(web.metadata.resource_version, "list has a resourceVersion")
    say("list app=web", ",".join(names))
    not_web = v1.list_namespaced_config_map(NS, label_selector="app notin (web)")
    say("list app notin (web)", ",".join(sorted(i.metadata.name for i in not_web.items)))

    # List, then watch from the list's resourceVersion; the change is made after the watch
    # started (from another thread), and must arrive as MODIFIED with the new data.
    rv = web.metadata.resource_version
    w = watch.Watch()
    changer = threading.Timer(
        0.3,
        lambda: v1.patch_namespaced_config_map("cm-b", NS, {"data": {"k": "from-thread"}}),
    )
    changer.start()
    seen = None
    for event in w.stream(
        v1.list_namespaced_config_map,
        NS,
        resource_version=rv,
        label_selector="app=web",
        timeout_seconds=30,
    ):
        obj = event["object"]
        seen = (event["type"], obj.metadata.name, (obj.data or {}).get("k"))
        w.stop()
    changer.join()
    check(seen == ("MODIFIED", "cm-b", "from-thread"), f"watch event: {seen}")
    say("watch", *seen)

    # A watch without a resourceVersion starts with the current state as ADDED events.
    w = watch.Watch()
    added = []
    for event in w.stream(v1.list_namespaced_config_map, NS, timeout_seconds=30):
        added.append((event["type"], event["object"].metadata.name))
        if len(added) == 3:
            w.stop()
    check(
        sorted(added) == [("ADDED", "cm-a"), ("ADDED", "cm-b"), ("ADDED", "cm-c")],
        f"initial ADDED events: {added}",
    )
    say("watch-initial", ",".join(sorted(n for _, n in added)))

    patched = v1.patch_namespaced_config_map("cm-a", NS, {"data": {"k": "patched"}})
    check(patched.data == {"k": "patched"}, f"patch result: {patched.data}")
    say("patch cm-a", patched.data["k"])

    stale = v1.read_namespaced_config_map("cm-b", NS)
    stale_rv = stale.metadata.resource_version
    fresh = v1.replace_namespaced_config_map("cm-b", NS, cm("cm-b", "web", "replaced"))
    check(int(fresh.metadata.resource_version) > int(stale_rv), "replace bumps the resourceVersion")
    stale.data = {"k": "stale"}
    status, reason = api_error(lambda: v1.replace_namespaced_config_map("cm-b", NS, stale))
    check(status == 409 and reason == "Conflict", f"stale replace: {status} {reason}")
    say("stale-replace", status, reason)

    v1.delete_namespaced_config_map("cm-c", NS)
    status, reason = api_error(lambda: v1.read_namespaced_config_map("cm-c", NS))
    check(status == 404 and reason == "NotFound", f"read after delete: {status} {reason}")
    say("read-deleted", status, reason)

    left = sorted(i.metadata.name for i in v1.list_namespaced_config_map(NS).items)
    check(left == ["cm-a", "cm-b"], f"left after delete: {left}")
    say("left", ",".join(left))

    more_verbs(v1)
    custom_resources()
    say("ok")


def more_verbs(v1):
    """Paging, JSON patch, delete preconditions, deletecollection, /status, discovery."""
    for i in range(5):
        v1.create_namespaced_config_map(NS, cm(f"page-{i}", "paged", str(i)))
    names, token, pages = [], None, 0
    while True:
        page = v1.list_namespaced_config_map(NS, label_selector="app=paged", limit=2, _continue=token)
        pages += 1
        names += [i.metadata.name for i in page.items]
        token = page.metadata._continue
        if not token:
            break
    check(pages == 3 and names == [f"page-{i}" for i in range(5)], f"paging: {pages} {names}")
    say("pages", pages, ",".join(names))

    # A list body makes the client send a JSON patch.
    jp = v1.patch_namespaced_config_map("cm-a", NS, [{"op": "replace", "path": "/data/k", "value": "json-patched"}])
    check(jp.data == {"k": "json-patched"}, f"json patch: {jp.data}")
    say("json-patch cm-a", jp.data["k"])

    status, reason = api_error(
        lambda: v1.delete_namespaced_config_map(
            "cm-a",
            NS,
            body=client.V1DeleteOptions(preconditions=client.V1Preconditions(resource_version="1")),
        )
    )
    check(status == 409 and reason == "Conflict", f"delete precondition: {status} {reason}")
    say("delete-precondition", status, reason)

    v1.delete_collection_namespaced_config_map(NS, label_selector="app=paged")
    left = sorted(i.metadata.name for i in v1.list_namespaced_config_map(NS).items)
    check(left == ["cm-a", "cm-b"], f"left after deletecollection: {left}")
    say("deletecollection app=paged", ",".join(left))

    apps = client.AppsV1Api()
    dep = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels={"app": "web"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "web"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="nginx")]),
            ),
        ),
    )
    created = apps.create_namespaced_deployment(NS, dep)
    apps.patch_namespaced_deployment_status(
        "web", NS, {"status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2}}
    )
    got = apps.read_namespaced_deployment_status("web", NS)
    check(got.status.available_replicas == 2, f"deployment status: {got.status}")
    check(got.metadata.generation == created.metadata.generation, "a status write keeps the generation")
    scaled = apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 3}})
    check(scaled.metadata.generation == created.metadata.generation + 1, "a spec change bumps the generation")
    say("deployment status", got.status.available_replicas, "generation", scaled.metadata.generation)

    version = client.VersionApi().get_code()
    check(version.major == "1", f"version: {version}")
    core = sorted(r.name for r in v1.get_api_resources().resources if r.name in ("configmaps", "pods"))
    groups = sorted(g.name for g in client.ApisApi().get_api_versions().groups if g.name in ("apps", "coordination.k8s.io"))
    check(core == ["configmaps", "pods"] and groups == ["apps", "coordination.k8s.io"], f"discovery: {core} {groups}")
    say("discovery", ",".join(core), ",".join(groups))


def custom_resources():
    """A CRD through the apiextensions API, then its objects through CustomObjectsApi."""
    ext = client.ApiextensionsV1Api()
    crd = client.V1CustomResourceDefinition(
        metadata=client.V1ObjectMeta(name="widgets.example.com"),
        spec=client.V1CustomResourceDefinitionSpec(
            group="example.com",
            scope="Namespaced",
            names=client.V1CustomResourceDefinitionNames(kind="Widget", plural="widgets", singular="widget"),
            versions=[
                client.V1CustomResourceDefinitionVersion(
                    name="v1",
                    served=True,
                    storage=True,
                    schema=client.V1CustomResourceValidation(
                        open_apiv3_schema=client.V1JSONSchemaProps(type="object", x_kubernetes_preserve_unknown_fields=True)
                    ),
                    subresources=client.V1CustomResourceSubresources(status={}),
                )
            ],
        ),
    )
    created = ext.create_custom_resource_definition(crd)
    check(created.metadata.name == "widgets.example.com", "crd created")
    listed = [c.metadata.name for c in ext.list_custom_resource_definition().items]
    check("widgets.example.com" in listed, f"crd listed: {listed}")

    co = client.CustomObjectsApi()
    args = ("example.com", "v1", NS, "widgets")
    # A real API server serves a new CRD's resource a moment after the create answers (once it
    # is Established): wait for it (bounded), as a client must.
    deadline = time.monotonic() + 60
    while True:
        try:
            co.list_namespaced_custom_object(*args)
            break
        except ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    w1 = co.create_namespaced_custom_object(*args, {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 1}})
    check(w1["metadata"]["uid"], "widget has a uid")
    co.patch_namespaced_custom_object_status(*args, "w1", {"status": {"ready": True}})
    got = co.get_namespaced_custom_object(*args, "w1")
    check(got["status"] == {"ready": True} and got["spec"] == {"size": 1}, f"widget status: {got}")

    rv = co.list_namespaced_custom_object(*args)["metadata"]["resourceVersion"]
    changer = threading.Timer(
        0.3,
        lambda: co.patch_namespaced_custom_object(*args, "w1", {"spec": {"size": 2}}),
    )
    changer.start()
    w = watch.Watch()
    seen = None
    for event in w.stream(co.list_namespaced_custom_object, *args, resource_version=rv, timeout_seconds=30):
        seen = (event["type"], event["object"]["metadata"]["name"], event["object"]["spec"]["size"])
        w.stop()
    changer.join()
    check(seen == ("MODIFIED", "w1", 2), f"widget watch: {seen}")
    say("widget watch", *seen)

    co.delete_namespaced_custom_object(*args, "w1")
    status, reason = api_error(lambda: co.get_namespaced_custom_object(*args, "w1"))
    check(status == 404 and reason == "NotFound", f"widget after delete: {status} {reason}")
    say("widget deleted", status, reason)


if __name__ == "__main__":
    main()
