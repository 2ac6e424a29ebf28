//! What kube-apiserver does to a request body before any rule of the resource sees it: decode
//! it by its content type (JSON, YAML, protobuf), refuse JSON types its Go structs cannot hold,
//! and drop the fields a built-in kind does not have, with a warning, an error under
//! `fieldValidation=Strict`, or silently under `Ignore`.
//!
//! The fields checked are those at the top of a built-in object and in its `metadata` (the ones
//! a typo most often hits: `spec` on a ConfigMap, `metadata.label`); deeper unknown fields are
//! kept, where a cluster would drop them.

use bytes::Bytes;
use serde_json::Value;

use super::resources::ResourceDef;
use super::status::ApiError;
use super::validation::{self, FieldError};

/// `fieldValidation`: what to do with fields the kind does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and say so in a `Warning` header (the default).
    Warn,
    /// Refuse the request with 400.
    Strict,
}

/// Reads `fieldValidation`; `verb` names the options kind of the error
/// (`CreateOptions`, `UpdateOptions`, `PatchOptions`).
pub fn field_validation(value: Option<&str>, options: &str) -> Result<FieldValidation, ApiError> {
    match value.unwrap_or_default() {
        "" | "Warn" => Ok(FieldValidation::Warn),
        "Ignore" => Ok(FieldValidation::Ignore),
        "Strict" => Ok(FieldValidation::Strict),
        other => {
            let def = ResourceDef::kind_only("meta.k8s.io", options);
            Err(validation::invalid(
                &def,
                "",
                &[FieldError::not_supported(
                    "fieldValidation",
                    other,
                    &["", "Ignore", "Strict", "Warn"],
                )],
            ))
        }
    }
}

fn media(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The body of a create, update or delete as JSON: JSON, YAML, or the protobuf kubectl's typed
/// commands send (see [`protobuf`](super::protobuf)); other media types answer 415.
pub fn object_body(def: &ResourceDef, content_type: &str, body: &Bytes) -> Result<Value, ApiError> {
    match media(content_type).as_str() {
        "application/vnd.kubernetes.protobuf" => super::protobuf::decode_object(body),
        "" | "application/json" | "*/*" => {
            let unrecognized = |why: String| {
                ApiError::bad_request(format!(
                    "the object provided is unrecognized (must be of type {}): couldn't get version/kind; json parse error: {why}",
                    def.kind
                ))
            };
            let v: Value = serde_json::from_slice(body).map_err(|e| unrecognized(e.to_string()))?;
            if !v.is_object() {
                let hex: String = body.iter().take(64).map(|b| format!("{b:02x}")).collect();
                return Err(unrecognized(format!(
                    "json: cannot unmarshal {} into Go value of type struct {{ APIVersion string \"json:\\\"apiVersion,omitempty\\\"\"; Kind string \"json:\\\"kind,omitempty\\\"\" }} ({hex})",
                    if v.is_array() { "array" } else { json_type(&v) }
                )));
            }
            Ok(v)
        }
        "application/yaml" => serde_norway::from_slice::<Value>(body).map_err(|e| {
            let hex: String = body.iter().take(64).map(|b| format!("{b:02x}")).collect();
            ApiError::bad_request(format!(
                "the object provided is unrecognized (must be of type {}): yaml: {e} ({hex})",
                def.kind
            ))
        }),
        _ => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf",
        )),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The fields each built-in kind has at its top (besides `apiVersion`, `kind`, `metadata`).
fn top_fields(def: &ResourceDef) -> &'static [&'static str] {
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "configmaps") => &["data", "binaryData", "immutable"],
        ("", "secrets") => &["data", "stringData", "type", "immutable"],
        ("", "serviceaccounts") => &[
            "secrets",
            "imagePullSecrets",
            "automountServiceAccountToken",
        ],
        ("", "events") => &[
            "involvedObject",
            "reason",
            "message",
            "source",
            "firstTimestamp",
            "lastTimestamp",
            "count",
            "type",
            "eventTime",
            "series",
            "action",
            "related",
            "reportingComponent",
            "reportingInstance",
        ],
        ("events.k8s.io", "events") => &[
            "eventTime",
            "series",
            "reportingController",
            "reportingInstance",
            "action",
            "reason",
            "regarding",
            "related",
            "note",
            "type",
            "deprecatedSource",
            "deprecatedFirstTimestamp",
            "deprecatedLastTimestamp",
            "deprecatedCount",
        ],
        ("coordination.k8s.io", "leases") => &["spec"],
        _ => &["spec", "status"],
    }
}

const META_FIELDS: [&str; 15] = [
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// Go names the innermost struct holding the field: the kind for its own fields, `ObjectMeta`
/// for metadata's.
fn cannot(def: &ResourceDef, have: &Value, field: &str, go_type: &str) -> ApiError {
    let owner = if field.starts_with("metadata.") {
        "ObjectMeta"
    } else {
        def.kind.as_str()
    };
    ApiError::bad_request(format!(
        "{kind} in version \"{v}\" cannot be handled as a {kind}: json: cannot unmarshal {} into Go struct field {owner}.{field} of type {go_type}",
        json_type(have),
        kind = def.kind,
        v = def.version,
    ))
}

/// Refuses JSON types a built-in kind's Go structs cannot hold, in the fields every kind has
/// (`metadata` and its maps) and a ConfigMap's data, with kube-apiserver's 400.
pub fn check_types(def: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
    if !def.builtin {
        return Ok(());
    }
    let Some(meta) = obj.get("metadata") else {
        return Ok(());
    };
    if !meta.is_object() {
        return Err(cannot(def, meta, "metadata", "v1.ObjectMeta"));
    }
    for f in [
        "name",
        "generateName",
        "namespace",
        "uid",
        "resourceVersion",
    ] {
        if let Some(v) = meta.get(f).filter(|v| !v.is_string() && !v.is_null()) {
            return Err(cannot(def, v, &format!("metadata.{f}"), "string"));
        }
    }
    for f in ["labels", "annotations"] {
        if let Some(m) = meta.get(f).and_then(Value::as_object) {
            if let Some(v) = m.values().find(|v| !v.is_string() && !v.is_null()) {
                return Err(cannot(def, v, &format!("metadata.{f}"), "string"));
            }
        } else if let Some(v) = meta.get(f).filter(|v| !v.is_null()) {
            return Err(cannot(
                def,
                v,
                &format!("metadata.{f}"),
                "map[string]string",
            ));
        }
    }
    if def.group.is_empty() && def.plural == "configmaps" {
        for f in ["data", "binaryData"] {
            if let Some(m) = obj.get(f).and_then(Value::as_object)
                && let Some(v) = m.values().find(|v| !v.is_string() && !v.is_null())
            {
                let go = if f == "data" { "string" } else { "[]uint8" };
                return Err(cannot(def, v, f, go));
            }
        }
    }
    Ok(())
}

/// Drops the top-level and `metadata` fields a built-in kind does not have; returns their
/// paths (for the warning or the strict refusal).
pub fn drop_unknown(def: &ResourceDef, obj: &mut Value) -> Vec<String> {
    if !def.builtin {
        return Vec::new();
    }
    let known = top_fields(def);
    let mut unknown = Vec::new();
    let Some(m) = obj.as_object_mut() else {
        return unknown;
    };
    m.retain(|k, _| {
        let keep =
            matches!(k.as_str(), "apiVersion" | "kind" | "metadata") || known.contains(&k.as_str());
        if !keep {
            unknown.push(k.clone());
        }
        keep
    });
    if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|k, _| {
            let keep = META_FIELDS.contains(&k.as_str());
            if !keep {
                unknown.push(format!("metadata.{k}"));
            }
            keep
        });
    }
    unknown
}

/// The strict refusal of `unknown` fields.
pub fn strict_error(def: &ResourceDef, unknown: &[String]) -> ApiError {
    let list: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    ApiError::bad_request(format!(
        "{kind} in version \"{v}\" cannot be handled as a {kind}: strict decoding error: {}",
        list.join(", "),
        kind = def.kind,
        v = def.version,
    ))
}

/// The `Warning` header values for `unknown` fields.
pub fn warnings(unknown: &[String]) -> Vec<String> {
    unknown
        .iter()
        .map(|f| format!("299 - \"unknown field \\\"{f}\\\"\""))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fake::resources::builtins;

    fn def(plural: &str) -> ResourceDef {
        builtins().into_iter().find(|d| d.plural == plural).unwrap()
    }

    #[test]
    fn unknown_top_level_and_metadata_fields_are_dropped_and_named() {
        let mut obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "label": {"x": "y"}}, "data": {}, "spec": {}});
        let unknown = drop_unknown(&def("configmaps"), &mut obj);
        assert_eq!(unknown, ["spec", "metadata.label"]);
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {}})
        );
        assert_eq!(
            strict_error(&def("configmaps"), &unknown).message,
            "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: unknown field \"spec\", unknown field \"metadata.label\""
        );
    }

    #[test]
    fn go_struct_types_are_enforced_where_every_kind_has_them() {
        let e = check_types(
            &def("configmaps"),
            &json!({"metadata": {"labels": {"a": 1}}}),
        )
        .unwrap_err();
        assert_eq!(e.code, 400);
        assert!(
            e.message
                .ends_with("ObjectMeta.metadata.labels of type string"),
            "{}",
            e.message
        );
        assert!(
            check_types(
                &def("pods"),
                &json!({"metadata": {"name": "p"}, "spec": {}})
            )
            .is_ok()
        );
    }

    #[test]
    fn yaml_bodies_decode_to_the_same_json() {
        let v = object_body(
            &def("configmaps"),
            "application/yaml",
            &Bytes::from_static(b"metadata:\n  name: a\ndata:\n  k: v\n"),
        )
        .unwrap();
        assert_eq!(v, json!({"metadata": {"name": "a"}, "data": {"k": "v"}}));
        let e = object_body(
            &def("configmaps"),
            "application/yaml",
            &Bytes::from_static(b"a: [\n"),
        )
        .unwrap_err();
        assert_eq!(e.code, 400);
        assert!(
            object_body(&def("configmaps"), "text/plain", &Bytes::from_static(b"{}"))
                .is_err_and(|e| e.code == 415)
        );
    }
}
