//! Requests a cluster refuses (or rewrites) and what it answers: names, metadata, workload
//! invariants, immutable fields, defaults read back, `/scale`. Each step's observable answer is
//! its status code, reason, the causes' field paths and reasons (sorted: kube-apiserver walks
//! maps in random order) and, for accepted writes, the parts of the object the step names.

use http_body_util::BodyExt;
use serde_json::{Value, json};

/// One request of the sequence, and what of its answer is compared.
pub struct Step {
    /// What the step checks (printed beside both answers).
    pub what: String,
    method: http::Method,
    path: String,
    content_type: &'static str,
    body: Option<Value>,
    /// A body sent as is (malformed input), instead of `body`.
    raw: Option<Vec<u8>>,
    /// JSON pointers into an accepted answer's object whose values are compared.
    keep: Vec<&'static str>,
    /// Repeat until the answer is 200 (a CRD's resource is served a moment after its create).
    until_ok: bool,
}

fn step(what: &str, method: http::Method, path: String, body: Option<Value>) -> Step {
    Step {
        what: what.to_string(),
        method,
        path,
        content_type: "application/json",
        body,
        raw: None,
        keep: Vec::new(),
        until_ok: false,
    }
}

fn post(what: &str, path: &str, body: Value) -> Step {
    step(what, http::Method::POST, path.to_string(), Some(body))
}

fn put(what: &str, path: &str, body: Value) -> Step {
    step(what, http::Method::PUT, path.to_string(), Some(body))
}

fn patch(what: &str, path: &str, body: Value) -> Step {
    let mut s = step(what, http::Method::PATCH, path.to_string(), Some(body));
    s.content_type = "application/merge-patch+json";
    s
}

/// A server-side apply of `body` by `manager` (forced when `force`).
fn apply(what: &str, path: &str, manager: &str, force: bool, body: Value) -> Step {
    let mut s = step(
        what,
        http::Method::PATCH,
        format!("{path}?fieldManager={manager}&force={force}"),
        Some(body),
    );
    s.content_type = "application/apply-patch+yaml";
    s
}

fn json_patch(what: &str, path: &str, body: Value) -> Step {
    let mut s = step(what, http::Method::PATCH, path.to_string(), Some(body));
    s.content_type = "application/json-patch+json";
    s
}

/// A POST of `bytes` as they are, with `content_type`.
fn raw(what: &str, path: &str, content_type: &'static str, bytes: &[u8]) -> Step {
    let mut s = step(what, http::Method::POST, path.to_string(), None);
    s.content_type = content_type;
    s.raw = Some(bytes.to_vec());
    s
}

fn strategic(what: &str, path: &str, body: Value) -> Step {
    let mut s = step(what, http::Method::PATCH, path.to_string(), Some(body));
    s.content_type = "application/strategic-merge-patch+json";
    s
}

/// A GET repeated until it answers 200.
fn served(what: &str, path: &str) -> Step {
    let mut s = get(what, path);
    s.until_ok = true;
    s
}

fn get(what: &str, path: &str) -> Step {
    step(what, http::Method::GET, path.to_string(), None)
}

impl Step {
    fn keep(mut self, pointers: &[&'static str]) -> Self {
        self.keep.extend_from_slice(pointers);
        self
    }
}

/// The namespace every step writes in.
pub const NS: &str = "validation";

fn cm(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})
}

fn pod_template(labels: Value, containers: Value) -> Value {
    json!({"metadata": {"labels": labels}, "spec": {"containers": containers}})
}

fn web() -> Value {
    json!([{"name": "web", "image": "nginx:1.27"}])
}

fn deployment(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": spec})
}

/// A CRD of a namespaced kind with a schema that exercises each rule the fake checks.
fn crd(plural: &str, group: &str, kind: &str) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {"group": group, "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.ready"}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["size"], "properties": {
                        "size": {"type": "integer", "minimum": 0, "maximum": 10},
                        "ratio": {"type": "number", "minimum": 0, "exclusiveMinimum": true},
                        "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                        "name": {"type": "string", "maxLength": 5, "pattern": "^[a-z]+$"},
                        "short": {"type": "string", "minLength": 1},
                        "tags": {"type": "array", "maxItems": 2, "x-kubernetes-list-type": "set",
                                 "items": {"type": "string"}},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                    }},
                    "status": {"type": "object", "properties": {"ready": {"type": "integer"}}}
                }}}}]}
    })
}

/// The sequence: each step runs after the previous one, on a fresh server with namespace `NS`.
pub fn steps() -> Vec<Step> {
    let cms = format!("/api/v1/namespaces/{NS}/configmaps");
    let secrets = format!("/api/v1/namespaces/{NS}/secrets");
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    let svcs = format!("/api/v1/namespaces/{NS}/services");
    let pvcs = format!("/api/v1/namespaces/{NS}/persistentvolumeclaims");
    let deps = format!("/apis/apps/v1/namespaces/{NS}/deployments");
    let rss = format!("/apis/apps/v1/namespaces/{NS}/replicasets");
    let stss = format!("/apis/apps/v1/namespaces/{NS}/statefulsets");
    let dss = format!("/apis/apps/v1/namespaces/{NS}/daemonsets");
    let jobs = format!("/apis/batch/v1/namespaces/{NS}/jobs");
    let app = json!({"matchLabels": {"app": "x"}});
    let labels = json!({"app": "x"});
    let mut s = vec![
        // Names, per kind.
        post("configmap named Upper-Case", &cms, cm("Upper-Case")),
        post("configmap named under_score", &cms, cm("under_score")),
        post("configmap named -leading", &cms, cm("-leading")),
        post("configmap named with 254 characters", &cms, cm(&"a".repeat(254))),
        post("configmap named with 253 characters", &cms, cm(&"a".repeat(253)))
            .keep(&["/kind"]),
        post(
            "configmap with generateName Bad_",
            &cms,
            json!({"metadata": {"generateName": "Bad_"}}),
        ),
        post(
            "configmap with generateName web-",
            &cms,
            json!({"metadata": {"generateName": "web-"}}),
        )
        .keep(&["/metadata/generateName"]),
        post(
            "namespace named a.b (a DNS label)",
            "/api/v1/namespaces",
            json!({"metadata": {"name": "a.b"}}),
        ),
        post(
            "service named 1abc (a DNS-1035 label)",
            &svcs,
            json!({"metadata": {"name": "1abc"}, "spec": {"ports": [{"port": 80}]}}),
        ),
        // Metadata.
        post(
            "label key and value invalid",
            &cms,
            json!({"metadata": {"name": "l1", "labels": {"a b": "x"}}}),
        ),
        post(
            "label value -x",
            &cms,
            json!({"metadata": {"name": "l2", "labels": {"ok": "-x"}}}),
        ),
        post(
            "label value of 64 characters",
            &cms,
            json!({"metadata": {"name": "l3", "labels": {"ok": "v".repeat(64)}}}),
        ),
        post(
            "label key with an empty prefix",
            &cms,
            json!({"metadata": {"name": "l4", "labels": {"/x": "v"}}}),
        ),
        post(
            "annotation key with a space",
            &cms,
            json!({"metadata": {"name": "a1", "annotations": {"a b": "x"}}}),
        ),
        post(
            "annotation key with upper case (allowed)",
            &cms,
            json!({"metadata": {"name": "a2", "annotations": {"Example.COM/Key": "x"}}}),
        )
        .keep(&["/metadata/annotations"]),
        post(
            "annotations over 256 KiB",
            &cms,
            json!({"metadata": {"name": "a3", "annotations": {"big": "x".repeat(262_144)}}}),
        ),
        post(
            "finalizer with a space",
            &cms,
            json!({"metadata": {"name": "f1", "finalizers": ["a b"]}}),
        ),
        post(
            "owner reference with nothing set",
            &cms,
            json!({"metadata": {"name": "o0", "ownerReferences": [{"apiVersion": "", "kind": "", "name": "", "uid": ""}]}}),
        ),
        post(
            "owner references with two controllers",
            &cms,
            json!({"metadata": {"name": "o2", "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": "a", "uid": "1", "controller": true},
                {"apiVersion": "v1", "kind": "Pod", "name": "b", "uid": "2", "controller": true}
            ]}}),
        ),
        post(
            "finalizer without a domain",
            &cms,
            json!({"metadata": {"name": "f2", "finalizers": ["hold"]}}),
        ),
        post(
            "standard finalizer orphan (allowed)",
            &cms,
            json!({"metadata": {"name": "f3", "finalizers": ["orphan"]}}),
        )
        .keep(&["/metadata/finalizers"]),
        post(
            "owner reference without uid",
            &cms,
            json!({"metadata": {"name": "o1", "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": ""}]}}),
        ),
        // ConfigMaps and Secrets.
        post(
            "configmap data keys a b and ..x",
            &cms,
            json!({"metadata": {"name": "k1"}, "data": {"a b": "1", "..x": "2", "ok.key_1": "3"}}),
        ),
        post(
            "configmap key in data and binaryData",
            &cms,
            json!({"metadata": {"name": "k2"}, "data": {"k": "1"}, "binaryData": {"k": "MQ=="}}),
        ),
        post(
            "immutable configmap",
            &cms,
            json!({"metadata": {"name": "frozen"}, "data": {"k": "v"}, "immutable": true}),
        )
        .keep(&["/immutable", "/data"]),
        patch(
            "immutable configmap: data changed",
            &format!("{cms}/frozen"),
            json!({"data": {"k": "w"}}),
        ),
        patch(
            "immutable configmap: immutable unset",
            &format!("{cms}/frozen"),
            json!({"immutable": false}),
        ),
        patch(
            "immutable configmap: labels changed (allowed)",
            &format!("{cms}/frozen"),
            json!({"metadata": {"labels": {"a": "b"}}}),
        )
        .keep(&["/metadata/labels", "/data"]),
        post(
            "secret with stringData",
            &secrets,
            json!({"metadata": {"name": "s1"}, "stringData": {"user": "admin", "k": "over"}, "data": {"k": "eA=="}}),
        )
        .keep(&["/data", "/stringData", "/type"]),
        patch(
            "secret type changed",
            &format!("{secrets}/s1"),
            json!({"type": "example.com/other"}),
        ),
        post(
            "tls secret without its keys",
            &secrets,
            json!({"metadata": {"name": "tls"}, "type": "kubernetes.io/tls", "data": {}}),
        ),
        post(
            "immutable secret",
            &secrets,
            json!({"metadata": {"name": "s2"}, "data": {"k": "eA=="}, "immutable": true}),
        )
        .keep(&["/immutable"]),
        patch(
            "immutable secret: data changed",
            &format!("{secrets}/s2"),
            json!({"data": {"k": "eQ=="}}),
        ),
        // Pods.
        post(
            "pod without containers",
            &pods,
            json!({"metadata": {"name": "p0"}, "spec": {"containers": []}}),
        ),
        post(
            "pod containers without name or image, duplicated",
            &pods,
            json!({"metadata": {"name": "p1"}, "spec": {"containers": [
                {"image": "x"}, {"name": "a", "image": ""}, {"name": "a", "image": "x"}, {"name": "B", "image": "x"}
            ]}}),
        ),
        post(
            "pod ports 0 and 70000 and protocol FOO",
            &pods,
            json!({"metadata": {"name": "p2"}, "spec": {"containers": [
                {"name": "a", "image": "x", "ports": [{"containerPort": 0}, {"containerPort": 70000}, {"containerPort": 80, "protocol": "FOO"}]}
            ]}}),
        ),
        post(
            "pod restartPolicy Sometimes",
            &pods,
            json!({"metadata": {"name": "p3"}, "spec": {"restartPolicy": "Sometimes", "containers": [{"name": "a", "image": "x"}]}}),
        ),
        post(
            "pod volumes duplicated",
            &pods,
            json!({"metadata": {"name": "p4"}, "spec": {"containers": [{"name": "a", "image": "x"}], "volumes": [
                {"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}
            ]}}),
        ),
        post(
            "pod",
            &pods,
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "x", "ports": [{"containerPort": 80}]}]}}),
        )
        .keep(&[
            "/spec/containers/0/image",
            "/spec/restartPolicy",
            "/spec/dnsPolicy",
            "/spec/schedulerName",
            "/spec/terminationGracePeriodSeconds",
            "/spec/securityContext",
            "/spec/enableServiceLinks",
            "/spec/containers/0/imagePullPolicy",
            "/spec/containers/0/terminationMessagePath",
            "/spec/containers/0/terminationMessagePolicy",
            "/spec/containers/0/resources",
            "/spec/containers/1/imagePullPolicy",
            "/spec/containers/1/ports/0/protocol",
        ]),
        json_patch(
            "pod: image changed (allowed)",
            &format!("{pods}/p"),
            json!([{"op": "replace", "path": "/spec/containers/0/image", "value": "x:2"}]),
        )
        .keep(&["/spec/containers/0/image"]),
        json_patch(
            "pod: a container removed",
            &format!("{pods}/p"),
            json!([{"op": "remove", "path": "/spec/containers/1"}]),
        ),
        patch(
            "pod: hostname changed",
            &format!("{pods}/p"),
            json!({"spec": {"hostname": "other"}}),
        ),
        // Workloads.
        post(
            "deployment without selector",
            &deps,
            deployment("d0", json!({"template": pod_template(labels.clone(), web())})),
        ),
        post(
            "deployment whose selector misses the template",
            &deps,
            deployment(
                "d1",
                json!({"selector": {"matchLabels": {"app": "y"}}, "template": pod_template(labels.clone(), web())}),
            ),
        ),
        post(
            "deployment with an empty selector",
            &deps,
            deployment(
                "d2",
                json!({"selector": {}, "template": pod_template(labels.clone(), web())}),
            ),
        ),
        post(
            "deployment without containers",
            &deps,
            deployment(
                "d3",
                json!({"selector": app, "template": pod_template(labels.clone(), json!([]))}),
            ),
        ),
        post(
            "deployment with replicas -1",
            &deps,
            deployment(
                "d4",
                json!({"replicas": -1, "selector": app, "template": pod_template(labels.clone(), web())}),
            ),
        ),
        post(
            "deployment restarting Never",
            &deps,
            deployment(
                "d5",
                json!({"selector": app, "template": {"metadata": {"labels": labels}, "spec": {"restartPolicy": "Never", "containers": web()}}}),
            ),
        ),
        post(
            "deployment with a bad selector expression",
            &deps,
            deployment(
                "d6",
                json!({"selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": []}, {"key": "b", "operator": "Exists", "values": ["x"]}]}, "template": pod_template(labels.clone(), web())}),
            ),
        ),
        post(
            "deployment",
            &deps,
            deployment(
                "d",
                json!({"selector": app, "template": pod_template(labels.clone(), web())}),
            ),
        )
        .keep(&[
            "/spec/selector",
            "/spec/replicas",
            "/spec/revisionHistoryLimit",
            "/spec/progressDeadlineSeconds",
            "/spec/strategy",
            "/spec/template/spec/restartPolicy",
            "/spec/template/spec/dnsPolicy",
            "/spec/template/spec/enableServiceLinks",
            "/spec/template/spec/containers/0/imagePullPolicy",
        ]),
        patch(
            "deployment: selector changed",
            &format!("{deps}/d"),
            json!({"spec": {"selector": {"matchLabels": {"app": "x", "b": "c"}}, "template": {"metadata": {"labels": {"b": "c"}}}}}),
        ),
        post(
            "replicaset without selector",
            &rss,
            json!({"metadata": {"name": "r0"}, "spec": {"template": pod_template(labels.clone(), web())}}),
        ),
        post(
            "replicaset with an empty selector",
            &rss,
            json!({"metadata": {"name": "r1"}, "spec": {"selector": {}, "template": pod_template(labels.clone(), web())}}),
        ),
        post(
            "statefulset with an empty selector",
            &stss,
            json!({"metadata": {"name": "s0"}, "spec": {"selector": {}, "serviceName": "s", "template": pod_template(labels.clone(), web())}}),
        ),
        post(
            "statefulset",
            &stss,
            json!({"metadata": {"name": "s"}, "spec": {"selector": app, "serviceName": "s", "template": pod_template(labels.clone(), web())}}),
        )
        .keep(&[
            "/spec/serviceName",
            "/spec/replicas",
            "/spec/podManagementPolicy",
            "/spec/updateStrategy",
            "/spec/revisionHistoryLimit",
            "/spec/persistentVolumeClaimRetentionPolicy",
        ]),
        patch(
            "statefulset: serviceName changed",
            &format!("{stss}/s"),
            json!({"spec": {"serviceName": "t"}}),
        ),
        patch(
            "statefulset: replicas changed (allowed)",
            &format!("{stss}/s"),
            json!({"spec": {"replicas": 3}}),
        )
        .keep(&["/spec/replicas"]),
        post(
            "daemonset with an empty selector",
            &dss,
            json!({"metadata": {"name": "ds0"}, "spec": {"selector": {}, "template": pod_template(labels.clone(), web())}}),
        ),
        post(
            "daemonset",
            &dss,
            json!({"metadata": {"name": "ds"}, "spec": {"selector": app, "template": pod_template(labels.clone(), web())}}),
        )
        .keep(&["/spec/updateStrategy", "/spec/revisionHistoryLimit"]),
        post(
            "job without restartPolicy",
            &jobs,
            json!({"metadata": {"name": "j0"}, "spec": {"template": {"spec": {"containers": web()}}}}),
        ),
        post(
            "job restarting Always",
            &jobs,
            json!({"metadata": {"name": "j1"}, "spec": {"template": {"spec": {"restartPolicy": "Always", "containers": web()}}}}),
        ),
        post(
            "job",
            &jobs,
            json!({"metadata": {"name": "j"}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": web()}}}}),
        )
        .keep(&[
            "/spec/parallelism",
            "/spec/completions",
            "/spec/backoffLimit",
            "/spec/completionMode",
            "/spec/suspend",
            "/spec/podReplacementPolicy",
            "/spec/manualSelector",
            "/spec/template/metadata/labels/job-name",
            "/spec/template/metadata/labels/batch.kubernetes.io~1job-name",
        ]),
        patch(
            "job: template changed",
            &format!("{jobs}/j"),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.28"}]}}}}),
        ),
        // Services.
        post(
            "service without ports",
            &svcs,
            json!({"metadata": {"name": "v0"}, "spec": {}}),
        ),
        post(
            "service with two unnamed ports, port 0, type Foo",
            &svcs,
            json!({"metadata": {"name": "v1"}, "spec": {"type": "Foo", "ports": [{"port": 80}, {"port": 0}]}}),
        ),
        post(
            "service",
            &svcs,
            json!({"metadata": {"name": "v"}, "spec": {"selector": {"app": "x"}, "ports": [{"name": "http", "port": 80}]}}),
        )
        .keep(&[
            "/spec/type",
            "/spec/sessionAffinity",
            "/spec/ports/0/protocol",
            "/spec/ports/0/targetPort",
            "/spec/ipFamilies",
            "/spec/ipFamilyPolicy",
            "/spec/internalTrafficPolicy",
        ]),
        patch(
            "service: clusterIP changed",
            &format!("{svcs}/v"),
            json!({"spec": {"clusterIP": "10.0.0.99", "clusterIPs": ["10.0.0.99"]}}),
        ),
        post(
            "headless service without ports (allowed)",
            &svcs,
            json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}}),
        )
        .keep(&["/spec/clusterIP", "/spec/clusterIPs"]),
        // Claims.
        post(
            "claim without access modes or storage",
            &pvcs,
            json!({"metadata": {"name": "c0"}, "spec": {}}),
        ),
        post(
            "claim",
            &pvcs,
            json!({"metadata": {"name": "c"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        )
        .keep(&["/spec/accessModes"]),
        patch(
            "claim: access modes changed",
            &format!("{pvcs}/c"),
            json!({"spec": {"accessModes": ["ReadWriteMany"]}}),
        ),
    ];
    // Bad input.
    s.extend([
        raw(
            "malformed JSON",
            &cms,
            "application/json",
            br#"{"metadata": {"name": "#,
        ),
        raw("a JSON array", &cms, "application/json", b"[1, 2]"),
        raw(
            "a text/plain body",
            &cms,
            "text/plain",
            br#"{"metadata": {"name": "t"}}"#,
        ),
        raw(
            "a YAML body",
            &cms,
            "application/yaml",
            b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  k: v\n",
        )
        .keep(&["/metadata/name", "/data"]),
        raw("malformed YAML", &cms, "application/yaml", b"metadata: [\n"),
        raw(
            "a number where data wants a string",
            &cms,
            "application/json",
            br#"{"metadata": {"name": "n1"}, "data": {"k": 1}}"#,
        ),
        raw(
            "a number for the name",
            &cms,
            "application/json",
            br#"{"metadata": {"name": 5}}"#,
        ),
        raw(
            "a string where metadata wants an object",
            &cms,
            "application/json",
            br#"{"metadata": "x"}"#,
        ),
        post(
            "an unknown query parameter",
            &format!("{cms}?colour=blue"),
            json!({"metadata": {"name": "q1"}}),
        )
        .keep(&["/metadata/name"]),
        post(
            "an unknown field, strict field validation",
            &format!("{cms}?fieldValidation=Strict"),
            json!({"metadata": {"name": "q2"}, "spec": {"x": 1}}),
        ),
        post(
            "an unknown field, field validation ignored",
            &format!("{cms}?fieldValidation=Ignore"),
            json!({"metadata": {"name": "q3"}, "spec": {"x": 1}}),
        )
        .keep(&["/metadata/name", "/spec"]),
        post(
            "an unknown fieldValidation",
            &format!("{cms}?fieldValidation=Sometimes"),
            json!({"metadata": {"name": "q4"}}),
        ),
    ]);
    // Strategic merge patches of built-in kinds.
    s.extend([
        strategic(
            "deployment: strategic patch of one container, a sidecar added",
            &format!("{deps}/d"),
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "web", "image": "nginx:1.28", "env": [{"name": "A", "value": "1"}]},
                {"name": "sidecar", "image": "busybox:1.36"}
            ]}}}}),
        )
        .keep(&[
            "/spec/template/spec/containers/0/name",
            "/spec/template/spec/containers/0/image",
            "/spec/template/spec/containers/0/env",
            "/spec/template/spec/containers/1/name",
            "/spec/template/spec/containers/1/imagePullPolicy",
        ]),
        strategic(
            "deployment: strategic patch deleting a container and merging env",
            &format!("{deps}/d"),
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "sidecar", "$patch": "delete"},
                {"name": "web", "env": [{"name": "B", "value": "2"}]}
            ]}}}}),
        )
        .keep(&["/spec/template/spec/containers"]),
        strategic(
            "configmap: strategic patch of finalizers is a union",
            &format!("{cms}/f3"),
            json!({"metadata": {"finalizers": ["example.com/a"]}}),
        )
        .keep(&["/metadata/finalizers"]),
        strategic(
            "service: strategic patch of ports merges by port",
            &format!("{svcs}/v"),
            json!({"spec": {"ports": [{"name": "https", "port": 443}]}}),
        )
        .keep(&["/spec/ports"]),
        strategic(
            "deployment: strategic patch without a merge key",
            &format!("{deps}/d"),
            json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}),
        ),
    ]);
    // Custom resources: pruning, defaults and the schema's rules.
    let crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
    let widgets = format!("/apis/fidelity.example.com/v1/namespaces/{NS}/widgets");
    s.extend([
        post(
            "crd in a protected group without approval",
            crds,
            crd("gadgets", "fidelity.k8s.io", "Gadget"),
        ),
        post("crd", crds, crd("widgets", "fidelity.example.com", "Widget"))
            .keep(&["/metadata/name"]),
        served("widgets served", &widgets),
        post(
            "widget pruned and defaulted",
            &widgets,
            json!({"apiVersion": "fidelity.example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
                   "spec": {"size": 3, "unknown": 1, "extra": {"any": {"thing": 1}}}, "junk": true}),
        )
        .keep(&["/spec", "/junk"]),
        post(
            "widget without its required field",
            &widgets,
            json!({"apiVersion": "fidelity.example.com/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {}}),
        ),
        post(
            "widget with a string for an integer",
            &widgets,
            json!({"apiVersion": "fidelity.example.com/v1", "kind": "Widget", "metadata": {"name": "w2"}, "spec": {"size": "3"}}),
        ),
        post(
            "widget breaking every other rule",
            &widgets,
            json!({"apiVersion": "fidelity.example.com/v1", "kind": "Widget", "metadata": {"name": "w3"},
                   "spec": {"size": 11, "color": "pink", "name": "Abcdef", "tags": ["a", "a", "b"], "short": ""}}),
        ),
        post(
            "widget below an exclusive minimum",
            &widgets,
            json!({"apiVersion": "fidelity.example.com/v1", "kind": "Widget", "metadata": {"name": "w4"},
                   "spec": {"size": 1, "ratio": 0}}),
        ),
        patch(
            "widget patched out of bounds",
            &format!("{widgets}/w"),
            json!({"spec": {"size": -1}}),
        ),
        strategic(
            "widget strategic patch",
            &format!("{widgets}/w"),
            json!({"spec": {"size": 4}}),
        ),
        get("widget scale", &format!("{widgets}/w/scale"))
            .keep(&["/kind", "/spec/replicas"]),
    ]);
    // Server-side apply and field ownership.
    let cm_ssa = format!("{cms}/ssa");
    let dep_ssa = format!("{deps}/ssa");
    let owners = ["/data", "/metadata/managedFields"];
    s.extend([
        apply(
            "apply creates, its manager owns what it applied",
            &cm_ssa,
            "a",
            false,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa", "labels": {"team": "x"}}, "data": {"k": "1", "shared": "s"}}),
        )
        .keep(&owners),
        apply(
            "a second manager applying the same value shares it",
            &cm_ssa,
            "b",
            false,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"shared": "s"}}),
        )
        .keep(&owners),
        apply(
            "a second manager applying another value conflicts",
            &cm_ssa,
            "b",
            false,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"k": "2", "shared": "t"}}),
        ),
        apply(
            "a forced apply takes the fields",
            &cm_ssa,
            "b",
            true,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"k": "2"}}),
        )
        .keep(&owners),
        apply(
            "an apply drops what only its manager owned",
            &cm_ssa,
            "a",
            false,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}}),
        )
        .keep(&owners),
        patch(
            "an update takes the fields it changes",
            &format!("{cm_ssa}?fieldManager=editor"),
            json!({"data": {"k": "3", "new": "n"}}),
        )
        .keep(&owners),
        apply(
            "an applier conflicts with an updater",
            &cm_ssa,
            "b",
            false,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"k": "2"}}),
        ),
        apply(
            "apply without a kind",
            &cm_ssa,
            "b",
            false,
            json!({"metadata": {"name": "ssa"}, "data": {"k": "2"}}),
        ),
        apply(
            "deployment applied by one manager",
            &dep_ssa,
            "a",
            false,
            deployment("ssa", json!({"selector": app, "template": pod_template(labels.clone(), web())})),
        )
        .keep(&["/metadata/managedFields", "/spec/template/spec/containers"]),
        apply(
            "a second manager adds a container by its name",
            &dep_ssa,
            "b",
            false,
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ssa"},
                   "spec": {"template": {"spec": {"containers": [{"name": "side", "image": "busybox:1.36"}]}}}}),
        )
        .keep(&["/metadata/managedFields", "/spec/template/spec/containers"]),
        apply(
            "the second manager changes the first one's image",
            &dep_ssa,
            "b",
            false,
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ssa"},
                   "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:2"}]}}}}),
        ),
    ]);
    // `/scale` of the workloads that have one.
    s.extend([
        get("deployment scale", &format!("{deps}/d/scale")).keep(&[
            "/kind",
            "/apiVersion",
            "/metadata/name",
            "/spec/replicas",
            "/status/selector",
        ]),
        patch(
            "deployment scale patched",
            &format!("{deps}/d/scale"),
            json!({"spec": {"replicas": 4}}),
        )
        .keep(&["/kind", "/spec/replicas"]),
        get("deployment after scale", &format!("{deps}/d")).keep(&["/spec/replicas"]),
        put(
            "deployment scale replaced",
            &format!("{deps}/d/scale"),
            json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "d", "namespace": NS}, "spec": {"replicas": 2}}),
        )
        .keep(&["/kind", "/spec/replicas"]),
        put(
            "deployment scale replaced with -1",
            &format!("{deps}/d/scale"),
            json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "d", "namespace": NS}, "spec": {"replicas": -1}}),
        ),
        put(
            "deployment scale with a stale resourceVersion",
            &format!("{deps}/d/scale"),
            json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "d", "namespace": NS, "resourceVersion": "1"}, "spec": {"replicas": 5}}),
        ),
        get("statefulset scale", &format!("{stss}/s/scale"))
            .keep(&["/kind", "/spec/replicas", "/status/selector"]),
        get("scale of a missing deployment", &format!("{deps}/missing/scale")),
        get("configmap has no scale", &format!("{cms}/frozen/scale")),
    ]);
    s
}

fn req_clone(builder: &http::request::Builder, body: &[u8]) -> http::Request<Vec<u8>> {
    let mut req = http::Request::builder()
        .method(builder.method_ref().cloned().unwrap_or_default())
        .uri(builder.uri_ref().cloned().unwrap_or_default());
    for (k, v) in builder.headers_ref().into_iter().flatten() {
        req = req.header(k, v);
    }
    req.body(body.to_vec()).unwrap()
}

/// What a client observes of one step's answer (compared), and the messages of a refusal
/// (printed beside the other server's, compared only where the step's values are plain strings
/// and numbers: kube-apiserver quotes Go values where the fake writes JSON).
pub async fn run(client: &kube::Client, step: &Step) -> (Value, Value) {
    let mut req = http::Request::builder()
        .method(step.method.clone())
        .uri(&step.path)
        .header(http::header::ACCEPT, "application/json");
    if step.body.is_some() || step.raw.is_some() {
        req = req.header(http::header::CONTENT_TYPE, step.content_type);
    }
    let body = match (&step.raw, &step.body) {
        (Some(bytes), _) => bytes.clone(),
        (None, Some(b)) => serde_json::to_vec(b).unwrap(),
        (None, None) => Vec::new(),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let resp = loop {
        let attempt = req_clone(&req, &body);
        let resp = client.send(attempt.map(Into::into)).await.unwrap();
        if !step.until_ok || resp.status() == 200 || std::time::Instant::now() > deadline {
            break resp;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if v["kind"] == "Status" {
        let causes = v
            .pointer("/details/causes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut seen: Vec<Value> = causes
            .iter()
            .map(|c| json!([c["field"], c["reason"]]))
            .collect();
        seen.sort_by_key(|c| c.to_string());
        seen.dedup();
        let mut messages: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c["field"], c["message"]))
            .collect();
        messages.sort();
        // Several errors are listed in the order kube-apiserver found them, which for map
        // entries is Go's random map order: the list is compared through the causes.
        let message = match v["message"].as_str() {
            Some(m) if m.contains(" is invalid: [") => {
                json!(format!(
                    "{} is invalid: [...]",
                    m.split(" is invalid: [").next().unwrap_or_default()
                ))
            }
            _ => v["message"].clone(),
        };
        return (
            json!({
                "code": code,
                "reason": v["reason"],
                "details kind": v.pointer("/details/kind"),
                "details group": v.pointer("/details/group"),
                "causes": seen,
            }),
            json!({"message": message, "causes": messages}),
        );
    }
    let kept: serde_json::Map<String, Value> = step
        .keep
        .iter()
        .map(|p| {
            let mut got = v.pointer(p).cloned().unwrap_or(Value::Null);
            if *p == "/metadata/managedFields" {
                // Who owns what; not when (`time`), nor the entries' order.
                let mut entries: Vec<Value> = got
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        json!([
                            e["manager"],
                            e["operation"],
                            e["subresource"],
                            e["fieldsV1"]
                        ])
                    })
                    .collect();
                entries.sort_by_key(|e| e.to_string());
                got = json!(entries);
            }
            (p.to_string(), got)
        })
        .collect();
    (json!({"code": code, "object": kept}), Value::Null)
}
