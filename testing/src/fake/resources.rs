//! The resource registry: built-in kinds, CRD-defined kinds, and the discovery documents.
//!
//! The fake server stores every object as JSON, so a resource is fully described by its group,
//! version, plural, kind, scope and whether it has a status subresource. Discovery documents are
//! generated from the same table, so `kube::Discovery` and `kubectl api-resources` see exactly
//! what the server serves.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::status::ApiError;

/// One served resource (group/version/plural).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceDef {
    /// API group, empty for core.
    pub group: String,
    /// API version.
    pub version: String,
    /// Plural resource name.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Whether `/status` is served.
    pub status: bool,
    /// Short names (for kubectl).
    pub short_names: Vec<String>,
    /// Whether `/scale` is served, and where its fields live in the object.
    pub scale: Option<ScalePaths>,
    /// A kind Kubernetes defines (not from a CRD): built-in kinds follow core's metadata rules
    /// (finalizer names) and take strategic merge patches, custom resources do neither.
    pub builtin: bool,
    /// A custom resource's `openAPIV3Schema` (its version's), which prunes, defaults and
    /// validates what is written.
    pub schema: Option<std::sync::Arc<Value>>,
}

/// Where a resource's `/scale` subresource reads and writes (JSON pointers into the object),
/// as a CRD's `subresources.scale` declares them (`.spec.replicas` becomes `/spec/replicas`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    /// The desired replica count (`spec.replicas` of the `Scale`).
    pub spec_replicas: String,
    /// The observed replica count (`status.replicas`).
    pub status_replicas: String,
    /// The label selector (`status.selector`), if the resource has one.
    pub selector: Option<ScaleSelector>,
}

/// Where a `Scale`'s `status.selector` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScaleSelector {
    /// A `metav1.LabelSelector` object (built-in workloads' `spec.selector`), written out as a
    /// selector string.
    LabelSelector(String),
    /// A string field (a CRD's `labelSelectorPath`).
    Text(String),
}

impl ScalePaths {
    fn workload() -> Self {
        Self {
            spec_replicas: "/spec/replicas".into(),
            status_replicas: "/status/replicas".into(),
            selector: Some(ScaleSelector::LabelSelector("/spec/selector".into())),
        }
    }
}

impl ResourceDef {
    /// `apiVersion` string (`v1` or `group/version`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// A kind that is not a served resource (an options kind, `Scale`), to name in a 422.
    pub(crate) fn kind_only(group: &str, kind: &str) -> Self {
        Self {
            group: group.into(),
            version: "v1".into(),
            plural: kind.to_ascii_lowercase(),
            singular: kind.to_ascii_lowercase(),
            kind: kind.into(),
            namespaced: false,
            status: false,
            short_names: Vec::new(),
            scale: None,
            builtin: true,
            schema: None,
        }
    }

    /// Registry key.
    pub fn key(&self) -> ResKey {
        ResKey {
            group: self.group.clone(),
            version: self.version.clone(),
            plural: self.plural.clone(),
        }
    }
}

/// Key of a resource in the registry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResKey {
    /// API group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Plural.
    pub plural: String,
}

fn def(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    status: bool,
    short: &[&str],
) -> ResourceDef {
    ResourceDef {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        singular: kind.to_ascii_lowercase(),
        kind: kind.into(),
        namespaced,
        status,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        scale: matches!(
            (group, plural),
            ("apps", "deployments" | "replicasets" | "statefulsets")
        )
        .then(ScalePaths::workload),
        builtin: true,
        schema: None,
    }
}

/// The built-in resources every fake server starts with.
pub fn builtins() -> Vec<ResourceDef> {
    vec![
        def("", "v1", "namespaces", "Namespace", false, true, &["ns"]),
        def("", "v1", "pods", "Pod", true, true, &["po"]),
        def("", "v1", "nodes", "Node", false, true, &["no"]),
        def("", "v1", "services", "Service", true, true, &["svc"]),
        def("", "v1", "configmaps", "ConfigMap", true, false, &["cm"]),
        def("", "v1", "secrets", "Secret", true, false, &[]),
        def(
            "",
            "v1",
            "persistentvolumeclaims",
            "PersistentVolumeClaim",
            true,
            true,
            &["pvc"],
        ),
        def(
            "",
            "v1",
            "persistentvolumes",
            "PersistentVolume",
            false,
            true,
            &["pv"],
        ),
        def("", "v1", "events", "Event", true, false, &["ev"]),
        def(
            "",
            "v1",
            "serviceaccounts",
            "ServiceAccount",
            true,
            false,
            &["sa"],
        ),
        def(
            "apps",
            "v1",
            "deployments",
            "Deployment",
            true,
            true,
            &["deploy"],
        ),
        def(
            "apps",
            "v1",
            "replicasets",
            "ReplicaSet",
            true,
            true,
            &["rs"],
        ),
        def(
            "apps",
            "v1",
            "statefulsets",
            "StatefulSet",
            true,
            true,
            &["sts"],
        ),
        def("apps", "v1", "daemonsets", "DaemonSet", true, true, &["ds"]),
        def("batch", "v1", "jobs", "Job", true, true, &[]),
        def(
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            true,
            false,
            &[],
        ),
        def(
            "events.k8s.io",
            "v1",
            "events",
            "Event",
            true,
            false,
            &["ev"],
        ),
        def(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            true,
            &["crd", "crds"],
        ),
    ]
}

/// Reads the served versions of a `CustomResourceDefinition` object.
pub fn defs_from_crd(crd: &Value) -> Result<Vec<ResourceDef>, ApiError> {
    let spec = crd
        .get("spec")
        .ok_or_else(|| ApiError::invalid("spec: Required value"))?;
    let s = |p: &str| {
        spec.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (group, plural, kind) = (s("/group"), s("/names/plural"), s("/names/kind"));
    if group.is_empty() || plural.is_empty() || kind.is_empty() {
        return Err(ApiError::invalid(
            "spec.group, spec.names.plural and spec.names.kind are required",
        ));
    }
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name != format!("{plural}.{group}") {
        return Err(ApiError::invalid(format!(
            "metadata.name: Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"
        )));
    }
    if is_protected_group(&group) {
        let approval = crd
            .pointer("/metadata/annotations/api-approved.kubernetes.io")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if approval.is_empty() {
            let crd_def = builtins()
                .into_iter()
                .find(|d| d.plural == "customresourcedefinitions")
                .expect("CRDs are built in");
            return Err(crate::fake::validation::invalid(
                &crd_def,
                name,
                &[crate::fake::validation::FieldError::required(
                    "metadata.annotations[api-approved.kubernetes.io]",
                    "protected groups must have approval annotation \"api-approved.kubernetes.io\", see https://github.com/kubernetes/enhancements/pull/1111",
                )],
            ));
        }
    }
    let singular = match s("/names/singular") {
        x if x.is_empty() => kind.to_ascii_lowercase(),
        x => x,
    };
    let namespaced = s("/scope") != "Cluster";
    let short_names: Vec<String> = spec
        .pointer("/names/shortNames")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid("spec.versions: Required value"))?;
    let mut out = Vec::new();
    for v in versions {
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let version = v.get("name").and_then(Value::as_str).unwrap_or_default();
        if version.is_empty() {
            return Err(ApiError::invalid("spec.versions[].name: Required value"));
        }
        out.push(ResourceDef {
            group: group.clone(),
            version: version.to_string(),
            plural: plural.clone(),
            singular: singular.clone(),
            kind: kind.clone(),
            namespaced,
            status: v.pointer("/subresources/status").is_some(),
            short_names: short_names.clone(),
            scale: v.pointer("/subresources/scale").map(|sc| {
                let path = |f: &str| {
                    sc.get(f)
                        .and_then(Value::as_str)
                        .map(|p| p.trim_start_matches('.').replace('.', "/"))
                        .map(|p| format!("/{p}"))
                };
                ScalePaths {
                    spec_replicas: path("specReplicasPath").unwrap_or_default(),
                    status_replicas: path("statusReplicasPath").unwrap_or_default(),
                    selector: path("labelSelectorPath").map(ScaleSelector::Text),
                }
            }),
            builtin: false,
            schema: v
                .pointer("/schema/openAPIV3Schema")
                .cloned()
                .map(std::sync::Arc::new),
        });
    }
    Ok(out)
}

/// Whether `group` is one of Kubernetes' own (`k8s.io`, `kubernetes.io` and their subdomains),
/// where kube-apiserver accepts a CRD only with the `api-approved.kubernetes.io` annotation (a
/// link to the approved API review, or a value starting with "unapproved").
fn is_protected_group(group: &str) -> bool {
    ["k8s.io", "kubernetes.io"]
        .iter()
        .any(|root| group == *root || group.ends_with(&format!(".{root}")))
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `/api/v1` or `/apis/{g}/{v}` resource list.
pub fn resource_list(defs: &[&ResourceDef], group_version: &str) -> Value {
    let mut resources = Vec::new();
    for d in defs {
        resources.push(json!({
            "name": d.plural, "singularName": d.singular, "namespaced": d.namespaced, "kind": d.kind,
            "verbs": VERBS, "shortNames": d.short_names,
        }));
        if d.status {
            resources.push(json!({
                "name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced,
                "kind": d.kind, "verbs": ["get", "patch", "update"],
            }));
        }
        if d.scale.is_some() {
            resources.push(json!({
                "name": format!("{}/scale", d.plural), "singularName": "", "namespaced": d.namespaced,
                "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"],
            }));
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

/// `/apis/{g}` group document.
pub fn api_group(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(Value::Null)})
}

/// Groups (excluding core) with their served versions, in registry order.
pub fn groups<'a>(defs: impl Iterator<Item = &'a ResourceDef>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in defs.filter(|d| !d.group.is_empty()) {
        let vs = out.entry(d.group.clone()).or_default();
        if !vs.contains(&d.version) {
            vs.push(d.version.clone());
        }
    }
    out
}
