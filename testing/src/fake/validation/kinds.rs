//! The rules of each kind controllers write: required fields and invariants on create and
//! update, and the fields that may not change once set.

use serde_json::{Map, Value, json};

use super::names;
use super::{FieldError, labels_of};
use crate::fake::resources::ResourceDef;

fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    v.pointer(path).filter(|v| !v.is_null())
}

fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    get(v, path).and_then(Value::as_str).unwrap_or_default()
}

fn array_at<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn object_at<'a>(v: &'a Value, path: &str) -> Option<&'a Map<String, Value>> {
    get(v, path).and_then(Value::as_object)
}

/// The rules a new object (and the new side of an update) must satisfy.
pub(super) fn create(def: &ResourceDef, obj: &Value, errs: &mut Vec<FieldError>) {
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "configmaps") => config_map(obj, errs),
        ("", "secrets") => secret(obj, errs),
        ("", "pods") => pod_spec(obj.get("spec").unwrap_or(&Value::Null), "spec", errs),
        ("", "services") => service(obj, errs),
        ("", "persistentvolumeclaims") => claim(obj, errs),
        ("apps", "deployments") => workload(obj, "deployment", true, errs),
        ("apps", "replicasets") => workload(obj, "deployment", true, errs),
        ("apps", "statefulsets") => workload(obj, "statefulset", true, errs),
        ("apps", "daemonsets") => workload(obj, "daemonset", false, errs),
        ("batch", "jobs") => job(obj, errs),
        _ => {}
    }
}

/// The rules of a change from `old` to `new` (beyond `create`'s on `new`).
pub(super) fn update(
    def: &ResourceDef,
    old: &Value,
    new: &Value,
    minor: u32,
    errs: &mut Vec<FieldError>,
) {
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "configmaps") => immutable_data(old, new, &["data", "binaryData"], errs),
        ("", "secrets") => {
            if str_at(old, "/type") != str_at(new, "/type") {
                errs.push(FieldError::invalid(
                    "type",
                    str_at(new, "/type"),
                    "field is immutable",
                ));
            }
            immutable_data(old, new, &["data"], errs);
        }
        ("", "pods") => pod_update(old, new, errs),
        ("", "services") => {
            let (was, now) = (
                str_at(old, "/spec/clusterIP"),
                str_at(new, "/spec/clusterIP"),
            );
            if !was.is_empty() && was != now {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs[0]",
                    get(new, "/spec/clusterIPs")
                        .cloned()
                        .unwrap_or(json!([now])),
                    "may not change once set",
                ));
            }
        }
        ("", "persistentvolumeclaims") => claim_update(old, new, errs),
        ("apps", kind @ ("deployments" | "replicasets" | "statefulsets" | "daemonsets")) => {
            if get(old, "/spec/selector") != get(new, "/spec/selector") {
                errs.push(FieldError::invalid(
                    "spec.selector",
                    get(new, "/spec/selector").cloned().unwrap_or(Value::Null),
                    "field is immutable",
                ));
            }
            if kind == "statefulsets" {
                statefulset_update(old, new, minor, errs);
            }
        }
        ("batch", "jobs") if get(old, "/spec/template") != get(new, "/spec/template") => {
            errs.push(FieldError::invalid(
                "spec.template",
                get(new, "/spec/template").cloned().unwrap_or(Value::Null),
                "field is immutable",
            ));
        }
        _ => {}
    }
}

fn data_keys(obj: &Value, field: &str, errs: &mut Vec<FieldError>) {
    if let Some(data) = obj.get(field).and_then(Value::as_object) {
        for k in data.keys() {
            for m in names::config_key(k) {
                errs.push(FieldError::invalid(format!("{field}[{k}]"), k.as_str(), m));
            }
        }
    }
}

fn config_map(obj: &Value, errs: &mut Vec<FieldError>) {
    data_keys(obj, "data", errs);
    data_keys(obj, "binaryData", errs);
    if let (Some(data), Some(binary)) = (object_at(obj, "/data"), object_at(obj, "/binaryData")) {
        for k in data.keys().filter(|k| binary.contains_key(*k)) {
            errs.push(FieldError::invalid(
                format!("data[{k}]"),
                k.as_str(),
                "duplicate of key present in binaryData",
            ));
        }
    }
}

/// The keys each built-in Secret type must carry.
fn secret_required_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
        _ => &[],
    }
}

fn secret(obj: &Value, errs: &mut Vec<FieldError>) {
    data_keys(obj, "data", errs);
    let data = object_at(obj, "/data");
    for key in secret_required_keys(str_at(obj, "/type")) {
        if !data.is_some_and(|d| d.contains_key(*key)) {
            errs.push(FieldError::required(format!("data[{key}]"), ""));
        }
    }
}

/// `immutable: true` freezes the data fields and itself.
fn immutable_data(old: &Value, new: &Value, fields: &[&str], errs: &mut Vec<FieldError>) {
    if get(old, "/immutable").and_then(Value::as_bool) != Some(true) {
        return;
    }
    const WHY: &str = "field is immutable when `immutable` is set";
    if get(new, "/immutable").and_then(Value::as_bool) != Some(true) {
        errs.push(FieldError::forbidden("immutable", WHY));
    }
    for f in fields {
        let empty = |v: Option<&Value>| v.and_then(Value::as_object).is_none_or(Map::is_empty);
        let (a, b) = (old.get(*f), new.get(*f));
        if a != b && !(empty(a) && empty(b)) {
            errs.push(FieldError::forbidden(*f, WHY));
        }
    }
}

/// Containers (`containers` or `initContainers`) of a pod spec at `path`.
fn containers(
    spec: &Value,
    path: &str,
    field: &str,
    seen: &mut Vec<String>,
    errs: &mut Vec<FieldError>,
) {
    for (i, c) in array_at(spec, &format!("/{field}")).iter().enumerate() {
        let at = format!("{path}.{field}[{i}]");
        let name = str_at(c, "/name");
        if name.is_empty() {
            errs.push(FieldError::required(format!("{at}.name"), ""));
        } else {
            for m in names::dns1123_label(name) {
                errs.push(FieldError::invalid(format!("{at}.name"), name, m));
            }
            if seen.iter().any(|s| s == name) {
                errs.push(FieldError::duplicate(format!("{at}.name"), name));
            }
            seen.push(name.to_string());
        }
        if str_at(c, "/image").is_empty() {
            errs.push(FieldError::required(format!("{at}.image"), ""));
        }
        for (j, p) in array_at(c, "/ports").iter().enumerate() {
            let port = get(p, "/containerPort")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let pat = format!("{at}.ports[{j}].containerPort");
            if port == 0 {
                errs.push(FieldError::required(pat, ""));
            } else {
                for m in names::port_number(port) {
                    errs.push(FieldError::invalid(pat.clone(), port, m));
                }
            }
            protocol(p, &format!("{at}.ports[{j}].protocol"), errs);
        }
    }
}

fn protocol(port: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let p = str_at(port, "/protocol");
    if !p.is_empty() && !matches!(p, "TCP" | "UDP" | "SCTP") {
        errs.push(FieldError::not_supported(path, p, &["SCTP", "TCP", "UDP"]));
    }
}

/// A pod spec at `path` (`spec` of a Pod, `spec.template.spec` of a workload).
fn pod_spec(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let mut volumes: Vec<String> = Vec::new();
    for (i, v) in array_at(spec, "/volumes").iter().enumerate() {
        let at = format!("{path}.volumes[{i}].name");
        let name = str_at(v, "/name");
        if name.is_empty() {
            errs.push(FieldError::required(at, ""));
            continue;
        }
        for m in names::dns1123_label(name) {
            errs.push(FieldError::invalid(at.clone(), name, m));
        }
        if volumes.iter().any(|s| s == name) {
            errs.push(FieldError::duplicate(at, name));
        }
        volumes.push(name.to_string());
    }
    let mut seen = Vec::new();
    if array_at(spec, "/containers").is_empty() {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    containers(spec, path, "containers", &mut seen, errs);
    containers(spec, path, "initContainers", &mut seen, errs);
    let restart = str_at(spec, "/restartPolicy");
    if !restart.is_empty() && !matches!(restart, "Always" | "OnFailure" | "Never") {
        errs.push(FieldError::not_supported(
            format!("{path}.restartPolicy"),
            restart,
            &["Always", "OnFailure", "Never"],
        ));
    }
}

/// A Pod's spec may change only in its containers' images, `activeDeadlineSeconds`, additions
/// to `tolerations` and `terminationGracePeriodSeconds`.
fn pod_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    let masked = |pod: &Value| {
        let mut spec = pod.get("spec").cloned().unwrap_or(Value::Null);
        for field in ["containers", "initContainers"] {
            if let Some(cs) = spec.get_mut(field).and_then(Value::as_array_mut) {
                for c in cs {
                    if let Some(c) = c.as_object_mut() {
                        c.remove("image");
                    }
                }
            }
        }
        if let Some(s) = spec.as_object_mut() {
            for f in [
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
            ] {
                s.remove(f);
            }
        }
        spec
    };
    if array_at(old, "/spec/containers").len() != array_at(new, "/spec/containers").len() {
        errs.push(FieldError::forbidden(
            "spec.containers",
            "pod updates may not add or remove containers",
        ));
        return;
    }
    let old_tolerations = array_at(old, "/spec/tolerations");
    let new_tolerations = array_at(new, "/spec/tolerations");
    let tolerations_kept = old_tolerations.iter().all(|t| new_tolerations.contains(t));
    if masked(old) != masked(new) || !tolerations_kept {
        errs.push(FieldError::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
}

/// Whether a label selector (`matchLabels`, `matchExpressions`) picks `labels`; `None` when an
/// operator is unknown.
fn selector_matches(sel: &Value, labels: Option<&Map<String, Value>>) -> Option<bool> {
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    if let Some(ml) = object_at(sel, "/matchLabels") {
        for (k, v) in ml {
            if label(k) != v.as_str() {
                return Some(false);
            }
        }
    }
    for e in array_at(sel, "/matchExpressions") {
        let key = str_at(e, "/key");
        let values: Vec<&str> = array_at(e, "/values")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let ok = match str_at(e, "/operator") {
            "In" => label(key).is_some_and(|v| values.contains(&v)),
            "NotIn" => label(key).is_none_or(|v| !values.contains(&v)),
            "Exists" => label(key).is_some(),
            "DoesNotExist" => label(key).is_none(),
            _ => return None,
        };
        if !ok {
            return Some(false);
        }
    }
    Some(true)
}

/// Checks a label selector; whether it is one (a selector with an error matches nothing and is
/// "invalid" as a whole).
fn label_selector(sel: &Value, path: &str, errs: &mut Vec<FieldError>) -> bool {
    let before = errs.len();
    if let Some(ml) = object_at(sel, "/matchLabels") {
        labels_of(ml, &format!("{path}.matchLabels"), errs);
    }
    for (i, e) in array_at(sel, "/matchExpressions").iter().enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        let op = str_at(e, "/operator");
        let n = array_at(e, "/values").len();
        match op {
            "In" | "NotIn" if n == 0 => errs.push(FieldError::required(
                format!("{at}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if n > 0 => errs.push(FieldError::forbidden(
                format!("{at}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errs.push(FieldError::invalid(
                format!("{at}.operator"),
                other,
                "not a valid selector operator",
            )),
        }
        let key = str_at(e, "/key");
        for m in names::qualified_name(key) {
            errs.push(FieldError::invalid(format!("{at}.key"), key, m));
        }
    }
    errs.len() == before
}

fn nonnegative(obj: &Value, pointer: &str, path: &str, errs: &mut Vec<FieldError>) {
    if let Some(n) = get(obj, pointer).and_then(Value::as_i64)
        && n < 0
    {
        errs.push(FieldError::invalid(
            path,
            n,
            "must be greater than or equal to 0",
        ));
    }
}

/// A pod template at `path` whose labels `selector` must pick.
fn template(
    obj: &Value,
    selector: Option<&Value>,
    restart_policies: &[&str],
    errs: &mut Vec<FieldError>,
) {
    let tpl = get(obj, "/spec/template").unwrap_or(&Value::Null);
    let labels = object_at(tpl, "/metadata/labels");
    let matches = match selector {
        None => Some(false),
        Some(sel) if label_selector(sel, "spec.selector", &mut Vec::new()) => {
            selector_matches(sel, labels)
        }
        Some(_) => None,
    };
    match matches {
        Some(false) => errs.push(FieldError::invalid(
            "spec.template.metadata.labels",
            labels.cloned().map(Value::Object).unwrap_or(json!({})),
            "`selector` does not match template `labels`",
        )),
        None => errs.push(FieldError::invalid(
            "spec.selector",
            selector.cloned().unwrap_or(Value::Null),
            "invalid label selector",
        )),
        Some(true) => {}
    }
    if let Some(l) = labels {
        labels_of(l, "spec.template.metadata.labels", errs);
    }
    let spec = tpl.get("spec").unwrap_or(&Value::Null);
    pod_spec(spec, "spec.template.spec", errs);
    let restart = str_at(spec, "/restartPolicy");
    if !restart_policies.is_empty()
        && !restart.is_empty()
        && matches!(restart, "Always" | "OnFailure" | "Never")
        && !restart_policies.contains(&restart)
    {
        errs.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            restart,
            restart_policies,
        ));
    }
}

/// Deployments, ReplicaSets, StatefulSets and DaemonSets: a non-empty selector that picks the
/// template's labels, a valid template that restarts `Always`, no negative replica count.
fn workload(obj: &Value, what: &str, replicas: bool, errs: &mut Vec<FieldError>) {
    if replicas {
        nonnegative(obj, "/spec/replicas", "spec.replicas", errs);
    }
    let selector = get(obj, "/spec/selector");
    match selector {
        None => errs.push(FieldError::required("spec.selector", "")),
        Some(sel) => {
            let _ = label_selector(sel, "spec.selector", errs);
            let terms = object_at(sel, "/matchLabels").map_or(0, Map::len)
                + array_at(sel, "/matchExpressions").len();
            if terms == 0 {
                errs.push(FieldError::invalid(
                    "spec.selector",
                    sel.clone(),
                    format!("empty selector is invalid for {what}"),
                ));
            }
        }
    }
    template(obj, selector, &["Always"], errs);
}

/// A StatefulSet's spec may change only in the fields listed in the message. From 1.37 each
/// other field that changed is its own cause ("field is immutable"); before, one `Forbidden`
/// at `spec`.
fn statefulset_update(old: &Value, new: &Value, minor: u32, errs: &mut Vec<FieldError>) {
    const MUTABLE: [&str; 7] = [
        "replicas",
        "ordinals",
        "template",
        "updateStrategy",
        "revisionHistoryLimit",
        "persistentVolumeClaimRetentionPolicy",
        "minReadySeconds",
    ];
    let rest = |o: &Value| {
        let mut spec = o.get("spec").cloned().unwrap_or(Value::Null);
        if let Some(s) = spec.as_object_mut() {
            for f in MUTABLE {
                s.remove(f);
            }
        }
        spec
    };
    let (was, now) = (rest(old), rest(new));
    if minor >= 37 {
        let fields = |v: &Value| {
            v.as_object()
                .map(|m| m.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let mut changed: Vec<String> = fields(&was);
        changed.extend(fields(&now));
        changed.sort();
        changed.dedup();
        for f in changed.into_iter().filter(|f| was.get(f) != now.get(f)) {
            errs.push(FieldError::invalid(
                format!("spec.{f}"),
                now.get(&f).cloned().unwrap_or(Value::Null),
                "field is immutable",
            ));
        }
        return;
    }
    if was != now {
        errs.push(FieldError::forbidden(
            "spec",
            "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
        ));
    }
}

/// A Job's template restarts `OnFailure` or `Never`; its selector is the server's.
fn job(obj: &Value, errs: &mut Vec<FieldError>) {
    for f in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
    ] {
        nonnegative(obj, &format!("/spec/{f}"), &format!("spec.{f}"), errs);
    }
    let spec = get(obj, "/spec/template/spec").unwrap_or(&Value::Null);
    let restart = str_at(spec, "/restartPolicy");
    if !matches!(restart, "OnFailure" | "Never") {
        errs.push(FieldError::required(
            "spec.template.spec.restartPolicy",
            "valid values: \"OnFailure\", \"Never\"",
        ));
    }
    template(obj, get(obj, "/spec/selector"), &[], errs);
}

fn service(obj: &Value, errs: &mut Vec<FieldError>) {
    let ty = str_at(obj, "/spec/type");
    let ports = array_at(obj, "/spec/ports");
    let headless = str_at(obj, "/spec/clusterIP") == "None";
    if ports.is_empty() && !headless && ty != "ExternalName" {
        errs.push(FieldError::required("spec.ports", ""));
    }
    let mut seen: Vec<&str> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        let name = str_at(p, "/name");
        if name.is_empty() {
            if ports.len() > 1 {
                errs.push(FieldError::required(format!("{at}.name"), ""));
            }
        } else {
            for m in names::dns1123_label(name) {
                errs.push(FieldError::invalid(format!("{at}.name"), name, m));
            }
            if seen.contains(&name) {
                errs.push(FieldError::duplicate(format!("{at}.name"), name));
            }
            seen.push(name);
        }
        protocol(p, &format!("{at}.protocol"), errs);
        let port = get(p, "/port").and_then(Value::as_i64).unwrap_or(0);
        for m in names::port_number(port) {
            errs.push(FieldError::invalid(format!("{at}.port"), port, m));
        }
        if let Some(target) = get(p, "/targetPort").and_then(Value::as_i64) {
            for m in names::port_number(target) {
                errs.push(FieldError::invalid(format!("{at}.targetPort"), target, m));
            }
        }
    }
    if !ty.is_empty()
        && !matches!(
            ty,
            "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
        )
    {
        errs.push(FieldError::not_supported(
            "spec.type",
            ty,
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
}

const ACCESS_MODES: [&str; 4] = [
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

fn claim(obj: &Value, errs: &mut Vec<FieldError>) {
    let modes = array_at(obj, "/spec/accessModes");
    if modes.is_empty() {
        errs.push(FieldError::required(
            "spec.accessModes",
            "at least 1 access mode is required",
        ));
    }
    for m in modes.iter().filter_map(Value::as_str) {
        if !ACCESS_MODES.contains(&m) {
            errs.push(FieldError::not_supported(
                "spec.accessModes",
                m,
                &ACCESS_MODES,
            ));
        }
    }
    if get(obj, "/spec/resources/requests/storage").is_none() {
        errs.push(FieldError::required("spec.resources[storage]", ""));
    }
}

/// A claim's spec is frozen after creation but for its storage request (and the class of its
/// volume attributes, and the volume it is bound to when none was).
fn claim_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    let rest = |o: &Value, bound: bool| {
        let mut spec = o.get("spec").cloned().unwrap_or(Value::Null);
        if let Some(r) = spec
            .pointer_mut("/resources")
            .and_then(Value::as_object_mut)
        {
            r.remove("requests");
        }
        if let Some(s) = spec.as_object_mut() {
            s.remove("volumeAttributesClassName");
            if !bound {
                s.remove("volumeName");
            }
        }
        spec
    };
    let bound = !str_at(old, "/spec/volumeName").is_empty();
    if rest(old, bound) != rest(new, bound) {
        errs.push(FieldError::forbidden(
            "spec",
            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
        ));
    }
}
