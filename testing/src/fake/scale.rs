//! The `/scale` subresource: an `autoscaling/v1` `Scale` view of a workload's replica count,
//! read and written through the paths its [`ScalePaths`] names.
//!
//! Why: `kubectl scale`, the HorizontalPodAutoscaler and controllers that scale what they own
//! talk to `/scale`, not to the object; a fake that answers 404 there fails them where a cluster
//! works.

use serde_json::{Map, Value, json};

use super::resources::{ResKey, ResourceDef, ScalePaths, ScaleSelector};
use super::status::ApiError;
use super::storage::Storage;
use super::validation::{self, FieldError};

/// A label selector object written as a selector string: requirements sorted by key,
/// `key=value`, `key in (a,b)`, `key notin (a,b)`, `key`, `!key`.
fn selector_string(sel: &Value) -> String {
    let mut terms: Vec<(String, String)> = Vec::new();
    if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in ml {
            terms.push((k.clone(), format!("{k}={}", v.as_str().unwrap_or_default())));
        }
    }
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
        let mut values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        values.sort_unstable();
        let term = match e
            .get("operator")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            _ => format!("!{key}"),
        };
        terms.push((key.to_string(), term));
    }
    terms.sort();
    terms
        .into_iter()
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join(",")
}

/// The `Scale` of `obj`.
pub fn to_scale(paths: &ScalePaths, obj: &Value) -> Value {
    let int = |p: &str| obj.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let mut meta = Map::new();
    for f in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = obj.pointer(&format!("/metadata/{f}")) {
            meta.insert(f.to_string(), v.clone());
        }
    }
    let mut spec = json!({});
    if int(&paths.spec_replicas) != 0 {
        spec["replicas"] = json!(int(&paths.spec_replicas));
    }
    let mut status = json!({"replicas": int(&paths.status_replicas)});
    let selector = match &paths.selector {
        Some(ScaleSelector::LabelSelector(p)) => obj.pointer(p).map(selector_string),
        Some(ScaleSelector::Text(p)) => obj.pointer(p).and_then(Value::as_str).map(String::from),
        None => None,
    };
    if let Some(s) = selector.filter(|s| !s.is_empty()) {
        status["selector"] = json!(s);
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": meta,
        "spec": spec,
        "status": status,
    })
}

fn set_pointer(obj: &mut Value, pointer: &str, v: Value) {
    let mut at = obj;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        if !at.is_object() {
            *at = json!({});
        }
        if i + 1 == parts.len() {
            at[*p] = v;
            return;
        }
        at = &mut at[*p];
    }
}

/// Writes `scale` (a whole `Scale`, as PUT sends it, or the result of a patch of the current
/// one) into the object: its `resourceVersion` is a precondition, its `spec.replicas` the new
/// count (at least 0). Returns the updated object's `Scale`.
pub fn write(
    storage: &mut Storage,
    def: &ResourceDef,
    paths: &ScalePaths,
    ns: &str,
    name: &str,
    scale: &Value,
) -> Result<Value, ApiError> {
    let res: ResKey = def.key();
    let current = storage.get(&res, ns, name)?;
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if replicas < 0 {
        let scale_def = ResourceDef::kind_only("autoscaling", "Scale");
        return Err(validation::invalid(
            &scale_def,
            name,
            &[FieldError::invalid(
                "spec.replicas",
                replicas,
                "must be greater than or equal to 0",
            )],
        ));
    }
    let mut new = (*current).clone();
    let rv = scale
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|rv| !rv.is_empty());
    if let Some(rv) = rv {
        new["metadata"]["resourceVersion"] = json!(rv);
    }
    set_pointer(&mut new, &paths.spec_replicas, json!(replicas));
    let updated = storage.update(&res, ns, name, new, false)?;
    Ok(to_scale(paths, &updated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_written_sorted_by_key() {
        let sel = json!({
            "matchLabels": {"tier": "web", "app": "x"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "dev"]},
                {"key": "zone", "operator": "DoesNotExist"},
                {"key": "canary", "operator": "Exists"},
                {"key": "b", "operator": "NotIn", "values": ["1"]}
            ]
        });
        assert_eq!(
            selector_string(&sel),
            "app=x,b notin (1),canary,env in (dev,prod),tier=web,!zone"
        );
    }

    #[test]
    fn a_scale_leaves_zero_replicas_out_of_its_spec() {
        let paths = ScalePaths {
            spec_replicas: "/spec/replicas".into(),
            status_replicas: "/status/replicas".into(),
            selector: Some(ScaleSelector::Text("/status/selector".into())),
        };
        let s = to_scale(
            &paths,
            &json!({"metadata": {"name": "a"}, "spec": {"replicas": 0}, "status": {"selector": "app=x"}}),
        );
        assert_eq!(s["spec"], json!({}));
        assert_eq!(s["status"], json!({"replicas": 0, "selector": "app=x"}));
    }
}
