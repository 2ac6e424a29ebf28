//! A seeded generator of realistic Kubernetes objects as JSON: Pods (about 4–6 KB each, with
//! managedFields, labels, annotations, owner references, containers and status) and ConfigMaps.
//! Shared by the decode tests and the decode bench (`#[path]`-included), so not every item is
//! used by every includer.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

/// A generator of varied objects; the same seed gives the same objects.
pub struct Gen {
    rng: StdRng,
    rv: u64,
}

const APPS: &[&str] = &[
    "web", "api", "worker", "cache", "gateway", "billing", "search",
];
const IMAGES: &[&str] = &[
    "registry.example.com/team/web",
    "registry.example.com/team/api",
    "docker.io/library/nginx",
    "quay.io/prometheus/node-exporter",
];

impl Gen {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Gen {
            rng: StdRng::seed_from_u64(seed),
            rv: 1000 + seed,
        }
    }

    fn word(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| (b'a' + self.rng.random_range(0..26u8)) as char)
            .collect()
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.rng.random_range(0..from.len())]
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn uid(&mut self) -> String {
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            self.rng.random::<u32>(),
            self.rng.random::<u16>(),
            self.rng.random::<u16>(),
            self.rng.random::<u16>(),
            self.rng.random::<u64>() & 0xffff_ffff_ffff
        )
    }

    fn next_rv(&mut self) -> String {
        self.rv += self.rng.random_range(1..50);
        self.rv.to_string()
    }

    fn time(&mut self) -> String {
        format!(
            "2026-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.rng.random_range(1..13),
            self.rng.random_range(1..29),
            self.rng.random_range(0..24),
            self.rng.random_range(0..60),
            self.rng.random_range(0..60)
        )
    }

    fn labels(&mut self, app: &str) -> Map<String, Value> {
        let mut labels = Map::new();
        labels.insert("app.kubernetes.io/name".into(), json!(app));
        labels.insert("app.kubernetes.io/part-of".into(), json!("shop"));
        labels.insert("pod-template-hash".into(), json!(self.word(10)));
        for _ in 0..self.rng.random_range(0..4) {
            let k = format!("example.com/{}", self.word(6));
            let v = self.word(8);
            labels.insert(k, json!(v));
        }
        labels
    }

    fn managed_fields(&mut self, labels: &Map<String, Value>, containers: &[Value]) -> Value {
        let label_fields: Map<String, Value> = labels
            .keys()
            .map(|k| (format!("f:{k}"), json!({})))
            .collect();
        let container_fields: Map<String, Value> = containers
            .iter()
            .map(|c| {
                (
                    format!("k:{{\"name\":\"{}\"}}", c["name"].as_str().unwrap_or("")),
                    json!({".": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {},
                        "f:ports": {".": {}, "k:{\"containerPort\":8080,\"protocol\":\"TCP\"}":
                            {".": {}, "f:containerPort": {}, "f:name": {}, "f:protocol": {}}},
                        "f:resources": {".": {}, "f:limits": {".": {}, "f:cpu": {}, "f:memory": {}},
                            "f:requests": {".": {}, "f:cpu": {}, "f:memory": {}}},
                        "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {}}),
                )
            })
            .collect();
        let t1 = self.time();
        let t2 = self.time();
        json!([
            {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
             "time": t1, "fieldsType": "FieldsV1", "fieldsV1": {
                "f:metadata": {"f:generateName": {}, "f:labels": Value::Object(label_fields),
                    "f:ownerReferences": {".": {}, "k:{\"uid\":\"x\"}": {}}},
                "f:spec": {"f:containers": Value::Object(container_fields),
                    "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:restartPolicy": {},
                    "f:schedulerName": {}, "f:securityContext": {}, "f:terminationGracePeriodSeconds": {}}}},
            {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": t2,
             "fieldsType": "FieldsV1", "subresource": "status", "fieldsV1": {"f:status": {
                "f:conditions": {"k:{\"type\":\"ContainersReady\"}": {".": {}, "f:lastProbeTime": {},
                    "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}},
                    "k:{\"type\":\"Initialized\"}": {".": {}, "f:lastProbeTime": {},
                    "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}},
                    "k:{\"type\":\"Ready\"}": {".": {}, "f:lastProbeTime": {},
                    "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}}},
                "f:containerStatuses": {}, "f:hostIP": {}, "f:phase": {}, "f:podIP": {},
                "f:podIPs": {".": {}, "k:{\"ip\":\"10.0.0.1\"}": {".": {}, "f:ip": {}}}, "f:startTime": {}}}}
        ])
    }

    fn container(&mut self, name: String) -> Value {
        let image = format!(
            "{}:{}.{}",
            self.pick(IMAGES),
            self.rng.random_range(1..9),
            self.rng.random_range(0..30)
        );
        let mut c = json!({
            "name": name,
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
            "resources": {"limits": {"cpu": "500m", "memory": "256Mi"},
                          "requests": {"cpu": "100m", "memory": "128Mi"}},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "volumeMounts": [{"name": "kube-api-access", "readOnly": true,
                              "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]
        });
        if self.chance(0.7) {
            let env: Vec<Value> = (0..self.rng.random_range(1..6))
                .map(|i| json!({"name": format!("VAR_{i}_{}", self.word(4).to_uppercase()), "value": self.word(12)}))
                .collect();
            c["env"] = json!(env);
        }
        if self.chance(0.5) {
            c["readinessProbe"] = json!({"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
                "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3});
        }
        c
    }

    /// One Pod.
    pub fn pod(&mut self, namespace: &str, index: usize) -> Value {
        let app = self.pick(APPS).to_owned();
        let name = format!("{app}-{}-{index}", self.word(5));
        let labels = self.labels(&app);
        let containers: Vec<Value> = (0..self.rng.random_range(1..3))
            .map(|i| {
                let n = if i == 0 {
                    app.clone()
                } else {
                    format!("sidecar-{i}")
                };
                self.container(n)
            })
            .collect();
        let managed = self.managed_fields(&labels, &containers);
        let mut annotations = Map::new();
        if self.chance(0.6) {
            annotations.insert(
                "kubectl.kubernetes.io/last-applied-configuration".into(),
                json!(format!("{{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{{\"name\":\"{name}\"}},\"spec\":{{\"x\":\"{}\"}}}}", self.word(200))),
            );
        }
        if self.chance(0.5) {
            annotations.insert("prometheus.io/scrape".into(), json!("true"));
        }
        let node = format!("node-{}", self.rng.random_range(0..200));
        let created = self.time();
        let mut metadata = json!({
            "name": name,
            "generateName": format!("{app}-"),
            "namespace": namespace,
            "uid": self.uid(),
            "resourceVersion": self.next_rv(),
            "creationTimestamp": created,
            "labels": Value::Object(labels),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{app}-{}", self.word(10)), "uid": self.uid(),
                "controller": true, "blockOwnerDeletion": true}],
            "managedFields": managed,
        });
        if !annotations.is_empty() {
            metadata["annotations"] = Value::Object(annotations);
        }
        let statuses: Vec<Value> = containers
            .iter()
            .map(|c| {
                json!({"name": c["name"], "image": c["image"], "imageID": format!("sha256:{}", self.word(40)),
                    "containerID": format!("containerd://{}", self.word(40)), "ready": true,
                    "restartCount": self.rng.random_range(0..3), "started": true,
                    "state": {"running": {"startedAt": self.time()}}})
            })
            .collect();
        let conditions: Vec<Value> = ["Initialized", "Ready", "ContainersReady", "PodScheduled"]
            .iter()
            .map(|t| json!({"type": t, "status": "True", "lastTransitionTime": self.time()}))
            .collect();
        let ip = format!(
            "10.{}.{}.{}",
            self.rng.random_range(0..255),
            self.rng.random_range(0..255),
            self.rng.random_range(1..255)
        );
        json!({
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": metadata,
            "spec": {
                "containers": containers,
                "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
                "restartPolicy": "Always",
                "terminationGracePeriodSeconds": 30,
                "dnsPolicy": "ClusterFirst",
                "serviceAccountName": "default",
                "nodeName": node,
                "securityContext": {},
                "schedulerName": "default-scheduler",
                "tolerations": [
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
                "priority": 0,
                "enableServiceLinks": true,
                "preemptionPolicy": "PreemptLowerPriority"
            },
            "status": {
                "phase": "Running",
                "conditions": conditions,
                "hostIP": "192.168.1.10",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "startTime": self.time(),
                "containerStatuses": statuses,
                "qosClass": "Burstable"
            }
        })
    }

    /// One ConfigMap, with or without managedFields and data.
    pub fn config_map(&mut self, namespace: &str, index: usize) -> Value {
        let mut data = Map::new();
        for _ in 0..self.rng.random_range(0..6) {
            let k = format!("{}.conf", self.word(6));
            let len = self.rng.random_range(0..300);
            let v = self.word(len);
            data.insert(k, json!(v));
        }
        let mut metadata = json!({
            "name": format!("cm-{}-{index}", self.word(6)),
            "namespace": namespace,
            "uid": self.uid(),
            "resourceVersion": self.next_rv(),
            "creationTimestamp": self.time(),
        });
        if self.chance(0.7) {
            metadata["managedFields"] = json!([{"manager": "kubectl-client-side-apply", "operation": "Update",
                "apiVersion": "v1", "time": self.time(), "fieldsType": "FieldsV1",
                "fieldsV1": {"f:data": {".": {}}}}]);
        }
        if self.chance(0.5) {
            let app = self.pick(APPS);
            metadata["labels"] = Value::Object(self.labels(app));
        }
        let mut cm = json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": metadata});
        if !data.is_empty() || self.chance(0.5) {
            cm["data"] = Value::Object(data);
        }
        cm
    }
}

/// A list response holding `items`.
pub fn list_json(kind: &str, resource_version: &str, items: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": kind,
        "apiVersion": "v1",
        "metadata": {"resourceVersion": resource_version},
        "items": items,
    }))
    .expect("JSON values serialize")
}
