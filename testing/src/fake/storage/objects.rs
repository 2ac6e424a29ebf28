//! What the storage does to an object's JSON: server-set metadata (uid, timestamps), the spec
//! part that decides generation, create-time defaults, finalizers.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::fake::protobuf::base64;
use crate::fake::resources::ResourceDef;
use crate::fake::status::ApiError;

/// RFC 3339 UTC timestamp with second precision.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub(super) fn new_uid() -> String {
    let x: u128 = rand::random();
    let h = format!("{x:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub(super) fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Everything but metadata and status, to decide generation bumps.
pub(super) fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

/// The defaults kube-apiserver fills in on create that clients read back: a namespace is
/// `Active` with the `kubernetes` finalizer, a secret without a type is `Opaque` and its
/// `stringData` is merged into `data`, a Service gets its defaults, a Job its generated selector.
pub(super) fn apply_create_defaults(
    d: &ResourceDef,
    obj: &mut Value,
    minor: u32,
) -> Result<(), ApiError> {
    match (d.group.as_str(), d.plural.as_str()) {
        ("", "namespaces") => {
            for field in ["spec", "status"] {
                if !obj.get(field).is_none_or(Value::is_object) {
                    return Err(ApiError::bad_request(format!(
                        "{field} of the namespace is not a JSON object"
                    )));
                }
            }
            // A namespace always starts with the namespace controller's finalizer.
            if !obj["spec"]["finalizers"].is_array() {
                obj["spec"]["finalizers"] = json!([]);
            }
            if let Some(f) = obj["spec"]["finalizers"].as_array_mut()
                && !f.iter().any(|v| v == "kubernetes")
            {
                f.push(json!("kubernetes"));
            }
            obj["status"]["phase"] = json!("Active");
        }
        ("", "secrets") => {
            if obj
                .get("type")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                obj["type"] = json!("Opaque");
            }
            merge_string_data(obj);
        }
        ("", "services") => service_defaults(obj),
        ("batch", "jobs") => {
            job_defaults(obj);
            workload_defaults(d, obj, minor);
        }
        _ => workload_defaults(d, obj, minor),
    }
    Ok(())
}

/// The defaults an update gets: a Secret's `stringData` merged into `data`, a Service keeps the
/// cluster IP it was given (an update that leaves it out does not release it) and gets its
/// defaults again.
pub(super) fn apply_update_defaults(d: &ResourceDef, old: &Value, new: &mut Value, minor: u32) {
    match (d.group.as_str(), d.plural.as_str()) {
        ("", "secrets") => merge_string_data(new),
        // Only the namespace controller changes a namespace's spec finalizers (`/finalize`).
        ("", "namespaces") => {
            if let Some(f) = old.pointer("/spec/finalizers") {
                if !new.get("spec").is_some_and(Value::is_object) {
                    new["spec"] = json!({});
                }
                new["spec"]["finalizers"] = f.clone();
            }
        }
        ("", "services") => {
            for f in ["clusterIP", "clusterIPs"] {
                if new.get("spec").is_some_and(Value::is_object)
                    && new
                        .pointer(&format!("/spec/{f}"))
                        .is_none_or(Value::is_null)
                    && let Some(v) = old.pointer(&format!("/spec/{f}"))
                {
                    new["spec"][f] = v.clone();
                }
            }
            service_defaults(new);
        }
        _ => workload_defaults(d, new, minor),
    }
}

fn missing(v: &Value, field: &str) -> bool {
    v.get(field).is_none_or(Value::is_null)
}

fn default(v: &mut Value, field: &str, value: Value) {
    if v.is_object() && missing(v, field) {
        v[field] = value;
    }
}

/// Whether a container image is pulled on every start by default: no tag, or `latest`, and
/// no digest.
fn pulls_always(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        None => true,
        Some((_, tag)) => tag == "latest",
    }
}

/// A pod spec's defaults (of a Pod or a pod template): `ClusterFirst` DNS,
/// the default scheduler, 30 s grace, an empty security context; each container's termination
/// message settings, pull policy and empty resources, each port's protocol.
fn pod_spec_defaults(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "securityContext", json!({}));
    for field in ["containers", "initContainers"] {
        let Some(cs) = spec.get_mut(field).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in cs.iter_mut().filter(|c| c.is_object()) {
            default(c, "terminationMessagePath", json!("/dev/termination-log"));
            default(c, "terminationMessagePolicy", json!("File"));
            default(c, "resources", json!({}));
            let always = pulls_always(c.get("image").and_then(Value::as_str).unwrap_or_default());
            default(
                c,
                "imagePullPolicy",
                json!(if always { "Always" } else { "IfNotPresent" }),
            );
            if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut() {
                    default(p, "protocol", json!("TCP"));
                }
            }
        }
    }
}

/// The defaults of Pods and of the workloads that hold a pod template, as a cluster's
/// defaulting writes them on every create and update.
fn workload_defaults(d: &ResourceDef, obj: &mut Value, minor: u32) {
    // Pods and every template but a Job's restart `Always` by default (a Job must say).
    let template_spec = |obj: &mut Value, job: bool| {
        if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
            pod_spec_defaults(spec);
            if !job {
                default(spec, "restartPolicy", json!("Always"));
            }
        }
    };
    let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    match (d.group.as_str(), d.plural.as_str()) {
        ("", "pods") => {
            pod_spec_defaults(spec);
            default(spec, "restartPolicy", json!("Always"));
            default(spec, "enableServiceLinks", json!(true));
            return;
        }
        ("apps", "deployments") => {
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            default(
                spec,
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
            );
        }
        ("apps", "replicasets") => default(spec, "replicas", json!(1)),
        ("apps", "statefulsets") => {
            default(spec, "replicas", json!(1));
            default(spec, "podManagementPolicy", json!("OrderedReady"));
            // 1.37 also defaults maxUnavailable (MaxUnavailableStatefulSet on by default).
            let rolling = if minor >= 37 {
                json!({"partition": 0, "maxUnavailable": 1})
            } else {
                json!({"partition": 0})
            };
            default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": rolling}),
            );
            default(spec, "revisionHistoryLimit", json!(10));
            default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
        }
        ("apps", "daemonsets") => {
            default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
            default(spec, "revisionHistoryLimit", json!(10));
        }
        ("batch", "jobs") => {
            default(spec, "parallelism", json!(1));
            default(spec, "completions", json!(1));
            default(spec, "backoffLimit", json!(6));
            default(spec, "completionMode", json!("NonIndexed"));
            default(spec, "suspend", json!(false));
            default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
        }
        _ => return,
    }
    let job = d.plural == "jobs";
    template_spec(obj, job);
}

/// A Secret's `stringData` is written into `data` (base64), over keys of the same name, and is
/// never stored.
fn merge_string_data(obj: &mut Value) {
    let Some(string_data) = obj
        .as_object_mut()
        .and_then(|m| m.remove("stringData"))
        .and_then(|v| match v {
            Value::Object(m) => Some(m),
            _ => None,
        })
    else {
        return;
    };
    if !obj.get("data").is_some_and(Value::is_object) {
        obj["data"] = json!({});
    }
    for (k, v) in string_data {
        let text = v.as_str().unwrap_or_default();
        obj["data"][k] = json!(base64(text.as_bytes()));
    }
}

/// A Service's defaults as a cluster writes them: type `ClusterIP`, session affinity `None`,
/// each port's protocol `TCP` and target port its port, one IPv4 family, cluster-wide internal
/// traffic.
fn service_defaults(obj: &mut Value) {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    let missing = |spec: &Value, f: &str| spec.get(f).is_none_or(Value::is_null);
    if missing(spec, "type") {
        spec["type"] = json!("ClusterIP");
    }
    if missing(spec, "sessionAffinity") {
        spec["sessionAffinity"] = json!("None");
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter(|p| p.is_object()) {
            if missing(p, "protocol") {
                p["protocol"] = json!("TCP");
            }
            if missing(p, "targetPort")
                && let Some(port) = p.get("port").cloned()
            {
                p["targetPort"] = port;
            }
        }
    }
    if spec.get("type").and_then(Value::as_str) != Some("ExternalName") {
        if missing(spec, "ipFamilies") {
            spec["ipFamilies"] = json!(["IPv4"]);
        }
        if missing(spec, "ipFamilyPolicy") {
            spec["ipFamilyPolicy"] = json!("SingleStack");
        }
        if missing(spec, "internalTrafficPolicy") {
            spec["internalTrafficPolicy"] = json!("Cluster");
        }
    }
}

/// A Job without `manualSelector` gets the selector a cluster generates from its uid, and its
/// template the labels that selector picks.
fn job_defaults(obj: &mut Value) {
    if obj.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let uid = obj
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    obj["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    obj["spec"]["manualSelector"] = json!(false);
    if !obj
        .pointer("/spec/template/metadata/labels")
        .is_some_and(Value::is_object)
    {
        if !obj.pointer("/spec/template").is_some_and(Value::is_object) {
            obj["spec"]["template"] = json!({});
        }
        if !obj
            .pointer("/spec/template/metadata")
            .is_some_and(Value::is_object)
        {
            obj["spec"]["template"]["metadata"] = json!({});
        }
        obj["spec"]["template"]["metadata"]["labels"] = json!({});
    }
    let labels = &mut obj["spec"]["template"]["metadata"]["labels"];
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", &uid),
        ("batch.kubernetes.io/job-name", &name),
        ("controller-uid", &uid),
        ("job-name", &name),
    ] {
        labels[k] = json!(v);
    }
}

pub(super) fn finalizers_empty(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(|a| a.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_without_a_tag_or_with_latest_are_pulled_always() {
        assert!(pulls_always("nginx"));
        assert!(pulls_always("nginx:latest"));
        assert!(pulls_always("registry:5000/team/app"));
        assert!(!pulls_always("registry:5000/team/app:1.2"));
        assert!(!pulls_always("nginx@sha256:abc"));
    }

    #[test]
    fn base64_pads_like_the_standard_encoding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"hello world"), "aGVsbG8gd29ybGQ=");
    }
}
