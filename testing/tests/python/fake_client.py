"""Drives the official Kubernetes Python client against a reflex FakeApiServer.

Usage: python3 fake_client.py KUBECONFIG

Prints one checkable line per step and exits non-zero on the first mismatch, so the Rust test
(testing/tests/fake_python_client.rs) can assert on both.
"""

import json
import sys
import threading

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
    say("ok")


if __name__ == "__main__":
    main()
