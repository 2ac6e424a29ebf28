//! What kube-apiserver refuses with 422 `Invalid`, for the kinds the fake serves: object names
//! per kind, labels, annotations, finalizers and owner references, the invariants of the core and
//! workload kinds controllers write, and the fields that may not change once set.
//!
//! Why: a fake that stores whatever it is sent lets a controller's tests pass with objects a
//! cluster refuses (a ConfigMap named `Upper-Case`, a Deployment without a selector, a change to
//! an immutable ConfigMap), and the bug is found in production. Each rule here answers as
//! kube-apiserver does: the same field paths and cause reasons in `details.causes`, and the same
//! wording where the value is a plain string or number (checked side by side with a real
//! kube-apiserver in `testing/tests/envtest_fake_fidelity.rs`).
//!
//! Rules are written from what kube-apiserver answers, not from its source: where a rule is
//! absent here, the fake accepts (it never refuses what a cluster accepts).

mod kinds;
pub mod names;
pub mod schema;

use serde_json::Value;

use super::resources::ResourceDef;
use super::status::{ApiError, StatusCause};

/// How a field is wrong (apimachinery's `field.ErrorType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// A required field is missing.
    Required,
    /// A value is malformed or out of range.
    Invalid,
    /// A field may not be set or changed.
    Forbidden,
    /// A value is not one of the supported ones.
    NotSupported,
    /// A value that must be unique is repeated.
    Duplicate,
    /// A value is longer than allowed.
    TooLong,
    /// A list or map has more elements than allowed.
    TooMany,
    /// A value has the wrong JSON type.
    TypeInvalid,
}

impl ErrorType {
    fn reason(self) -> &'static str {
        match self {
            Self::Required => "FieldValueRequired",
            Self::Invalid => "FieldValueInvalid",
            Self::Forbidden => "FieldValueForbidden",
            Self::NotSupported => "FieldValueNotSupported",
            Self::Duplicate => "FieldValueDuplicate",
            Self::TooLong => "FieldValueTooLong",
            Self::TooMany => "FieldValueTooMany",
            Self::TypeInvalid => "FieldValueTypeInvalid",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Self::Required => "Required value",
            Self::Invalid => "Invalid value",
            Self::Forbidden => "Forbidden",
            Self::NotSupported => "Unsupported value",
            Self::Duplicate => "Duplicate value",
            Self::TooLong => "Too long",
            Self::TooMany => "Too many",
            Self::TypeInvalid => "Invalid value",
        }
    }
}

/// One wrong field: where, how, the value (for the types that quote it) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// The field's path, as kube-apiserver writes it (`spec.containers[0].name`, `data[key]`).
    pub field: String,
    /// How it is wrong.
    pub kind: ErrorType,
    /// The offending value (quoted in the message for invalid, unsupported and duplicate values).
    pub value: Value,
    /// The explanation after the value.
    pub detail: String,
}

impl FieldError {
    /// An error of any type.
    pub fn new(
        field: impl Into<String>,
        kind: ErrorType,
        value: Value,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            kind,
            value,
            detail: detail.into(),
        }
    }

    /// A required field is missing.
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(field, ErrorType::Required, Value::Null, detail)
    }

    /// A value is invalid.
    pub fn invalid(
        field: impl Into<String>,
        value: impl Into<Value>,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(field, ErrorType::Invalid, value.into(), detail)
    }

    /// A field may not be set or changed.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(field, ErrorType::Forbidden, Value::Null, detail)
    }

    /// A value is not one of `supported`.
    pub fn not_supported(
        field: impl Into<String>,
        value: impl Into<Value>,
        supported: &[&str],
    ) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        Self::new(
            field,
            ErrorType::NotSupported,
            value.into(),
            format!("supported values: {}", list.join(", ")),
        )
    }

    /// A value that must be unique is repeated.
    pub fn duplicate(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Self::new(field, ErrorType::Duplicate, value.into(), "")
    }

    /// A value is longer than `max` bytes.
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self::new(
            field,
            ErrorType::TooLong,
            Value::Null,
            format!("may not be more than {max} bytes"),
        )
    }

    /// What follows the field in the message ("Invalid value: \"x\": why").
    fn body(&self) -> String {
        let mut s = match self.kind {
            ErrorType::Required | ErrorType::Forbidden | ErrorType::TooLong => {
                self.kind.text().to_string()
            }
            _ => format!("{}: {}", self.kind.text(), render(&self.value)),
        };
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// A value as kube-apiserver prints it in a message: strings quoted, numbers and booleans bare;
/// structures as JSON (kube-apiserver prints Go syntax there, so those messages differ in the
/// value only).
fn render(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        other => other.to_string(),
    }
}

/// The 422 kube-apiserver answers for `errs` on object `name` of `def`'s kind:
/// "Kind[.group] \"name\" is invalid: err" (several in brackets), one cause per error.
pub fn invalid(def: &ResourceDef, name: &str, errs: &[FieldError]) -> ApiError {
    let qualified = if def.group.is_empty() {
        def.kind.clone()
    } else {
        format!("{}.{}", def.kind, def.group)
    };
    let mut messages: Vec<String> = Vec::new();
    for e in errs {
        let m = e.to_string();
        if !messages.contains(&m) {
            messages.push(m);
        }
    }
    let aggregate = match messages.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let mut e = ApiError::invalid(format!("{qualified} \"{name}\" is invalid: {aggregate}"));
    e.details = Some(Box::new((
        name.to_string(),
        def.group.clone(),
        def.kind.clone(),
    )));
    e.causes = errs
        .iter()
        .map(|f| StatusCause {
            reason: f.kind.reason(),
            message: f.body(),
            field: f.field.clone(),
        })
        .collect();
    e
}

/// Checks a new object (after the server's defaults and name generation).
pub fn validate_create(def: &ResourceDef, obj: &Value, minor: u32) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    object_meta(def, obj, true, minor, &mut errs);
    kinds::create(def, obj, &mut errs);
    if let Some(s) = &def.schema {
        schema::validate(s, obj, "", &mut errs);
    }
    if let (false, Some(paths)) = (def.builtin, &def.scale) {
        schema::scale_paths(paths, obj, &mut errs);
    }
    finish(def, obj, errs)
}

/// Checks a replacement of `old` by `new` (main resource: `status_only` false) or of its status.
pub fn validate_update(
    def: &ResourceDef,
    old: &Value,
    new: &Value,
    status_only: bool,
    minor: u32,
) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    object_meta(def, new, false, minor, &mut errs);
    if !status_only {
        kinds::create(def, new, &mut errs);
        kinds::update(def, old, new, minor, &mut errs);
    }
    if let Some(s) = &def.schema {
        schema::validate(s, new, "", &mut errs);
    }
    if let (false, Some(paths)) = (def.builtin, &def.scale) {
        schema::scale_paths(paths, new, &mut errs);
    }
    finish(def, new, errs)
}

fn finish(def: &ResourceDef, obj: &Value, errs: Vec<FieldError>) -> Result<(), ApiError> {
    if errs.is_empty() {
        return Ok(());
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Err(invalid(def, name, &errs))
}

/// The name rule of a kind: DNS-1123 label for Namespaces, and for Services from 1.37
/// (`RelaxedServiceNameValidation`; before, a DNS-1035 label: no leading digit), path segment
/// for RBAC kinds, DNS-1123 subdomain for the rest (custom resources included).
fn name_rule(def: &ResourceDef, minor: u32) -> fn(&str) -> Vec<String> {
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "namespaces") => names::namespace_name,
        ("", "services") if minor >= 37 => names::dns1123_label,
        ("", "services") => names::dns1035_label,
        ("rbac.authorization.k8s.io", _) => names::path_segment,
        _ => names::dns1123_subdomain,
    }
}

/// The finalizers Kubernetes itself defines, allowed without a domain.
const STANDARD_FINALIZERS: [&str; 3] = ["kubernetes", "orphan", "foregroundDeletion"];

/// The most bytes of annotations (keys and values) an object may carry.
const ANNOTATIONS_MAX: usize = 256 * 1024;

fn object_meta(
    def: &ResourceDef,
    obj: &Value,
    create: bool,
    minor: u32,
    errs: &mut Vec<FieldError>,
) {
    let Some(meta) = obj.get("metadata") else {
        return;
    };
    let rule = name_rule(def, minor);
    let s = |f: &str| meta.get(f).and_then(Value::as_str).unwrap_or_default();
    if create && !s("generateName").is_empty() {
        for m in rule(&names::as_prefix(s("generateName"))) {
            errs.push(FieldError::invalid(
                "metadata.generateName",
                s("generateName"),
                m,
            ));
        }
    }
    if !s("name").is_empty() {
        for m in rule(s("name")) {
            errs.push(FieldError::invalid("metadata.name", s("name"), m));
        }
    }
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        labels_of(labels, "metadata.labels", errs);
    }
    if let Some(ann) = meta.get("annotations").and_then(Value::as_object) {
        let mut size = 0;
        for (k, v) in ann {
            for m in names::qualified_name(&k.to_ascii_lowercase()) {
                errs.push(FieldError::invalid("metadata.annotations", k.as_str(), m));
            }
            size += k.len() + v.as_str().map_or(0, str::len);
        }
        if size > ANNOTATIONS_MAX {
            errs.push(FieldError::too_long(
                "metadata.annotations",
                ANNOTATIONS_MAX,
            ));
        }
    }
    if let Some(fins) = meta.get("finalizers").and_then(Value::as_array) {
        for (i, f) in fins.iter().filter_map(Value::as_str).enumerate() {
            for m in names::qualified_name(f) {
                errs.push(FieldError::invalid("metadata.finalizers", f, m));
            }
            // Built-in kinds also refuse a name without a domain that is not one of Kubernetes'
            // own; custom resources do not.
            if def.builtin && !f.contains('/') && !STANDARD_FINALIZERS.contains(&f) {
                errs.push(FieldError::invalid(
                    format!("metadata.finalizers[{i}]"),
                    f,
                    "name is neither a standard finalizer name nor is it fully qualified",
                ));
            }
        }
    }
    if let Some(refs) = meta.get("ownerReferences").and_then(Value::as_array) {
        owner_references(refs, minor, errs);
    }
}

/// Label keys and values (of an object, a pod template, a selector's `matchLabels`).
pub(super) fn labels_of(
    labels: &serde_json::Map<String, Value>,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    for (k, v) in labels {
        for m in names::qualified_name(k) {
            errs.push(FieldError::invalid(path, k.as_str(), m));
        }
        let v = v.as_str().unwrap_or_default();
        for m in names::label_value(v) {
            errs.push(FieldError::invalid(path, v, m));
        }
    }
}

/// Each reference names its owner's apiVersion, kind, name and uid; at most one is the
/// controller. From 1.37 a missing field is `Required` at `ownerReferences[i].field`; before,
/// `Invalid` (the empty value) at `ownerReferences.field`.
fn owner_references(refs: &[Value], minor: u32, errs: &mut Vec<FieldError>) {
    let path = "metadata.ownerReferences";
    let mut controllers = Vec::new();
    let missing = |i: usize, f: &str, why: &str| {
        if minor >= 37 {
            FieldError::required(format!("{path}[{i}].{f}"), why)
        } else {
            FieldError::invalid(format!("{path}.{f}"), "", why)
        }
    };
    for (i, r) in refs.iter().enumerate() {
        let s = |f: &str| r.get(f).and_then(Value::as_str).unwrap_or_default();
        let version = s("apiVersion").rsplit('/').next().unwrap_or_default();
        if version.is_empty() {
            let why = if minor >= 37 {
                "must not be empty"
            } else {
                "version must not be empty"
            };
            errs.push(missing(i, "apiVersion", why));
        }
        for f in ["kind", "name", "uid"] {
            if s(f).is_empty() {
                errs.push(missing(i, f, "must not be empty"));
            }
        }
        if r.get("controller").and_then(Value::as_bool) == Some(true) {
            controllers.push(format!("{}/{}", s("kind"), s("name")));
        }
    }
    if controllers.len() > 1 {
        // Printed in the fields' declared order, as kube-apiserver prints the references.
        let ordered: Vec<Value> = refs
            .iter()
            .map(|r| {
                let mut m = serde_json::Map::new();
                for f in [
                    "apiVersion",
                    "kind",
                    "name",
                    "uid",
                    "controller",
                    "blockOwnerDeletion",
                ] {
                    if let Some(v) = r.get(f) {
                        m.insert(f.to_string(), v.clone());
                    }
                }
                Value::Object(m)
            })
            .collect();
        errs.push(FieldError::invalid(
            path,
            Value::Array(ordered),
            format!(
                "Only one reference can have Controller set to true. Found \"true\" in references for {}",
                controllers.join(" and ")
            ),
        ));
    }
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
    fn an_invalid_name_is_one_cause_with_the_clusters_wording() {
        let e = validate_create(
            &def("configmaps"),
            &json!({"metadata": {"name": "Upper-Case", "namespace": "ns"}}),
            37,
        )
        .unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        assert_eq!(e.causes.len(), 1);
        assert_eq!(e.causes[0].field, "metadata.name");
        assert_eq!(e.causes[0].reason, "FieldValueInvalid");
        assert!(
            e.message.starts_with(
                "ConfigMap \"Upper-Case\" is invalid: metadata.name: Invalid value: \"Upper-Case\": a lowercase RFC 1123 subdomain"
            ),
            "{}",
            e.message
        );
    }

    #[test]
    fn several_errors_are_listed_in_brackets_and_a_group_qualifies_the_kind() {
        let e = validate_create(
            &def("deployments"),
            &json!({"metadata": {"name": "d", "labels": {"a b": "x"}}, "spec": {}}),
            37,
        )
        .unwrap_err();
        assert!(
            e.message.starts_with("Deployment.apps \"d\" is invalid: ["),
            "{}",
            e.message
        );
        let fields: Vec<&str> = e.causes.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"metadata.labels"), "{fields:?}");
        assert!(fields.contains(&"spec.selector"), "{fields:?}");
    }

    #[test]
    fn owner_references_need_their_identity_and_one_controller() {
        let e = validate_create(
            &def("configmaps"),
            &json!({"metadata": {"name": "c", "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": "a", "uid": "1", "controller": true},
                {"apiVersion": "", "kind": "Pod", "name": "b", "uid": "", "controller": true}
            ]}}),
            37,
        )
        .unwrap_err();
        let fields: Vec<&str> = e.causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.ownerReferences[1].apiVersion",
                "metadata.ownerReferences[1].uid",
                "metadata.ownerReferences"
            ]
        );
    }

    #[test]
    fn annotations_are_limited_in_total_size() {
        let big = "x".repeat(ANNOTATIONS_MAX);
        let e = validate_create(
            &def("configmaps"),
            &json!({"metadata": {"name": "c", "annotations": {"a": big}}}),
            37,
        )
        .unwrap_err();
        assert_eq!(e.causes[0].reason, "FieldValueTooLong");
        assert!(
            validate_create(
                &def("configmaps"),
                &json!({"metadata": {"name": "c", "annotations": {"Example.COM/Key": "v"}}}),
                37,
            )
            .is_ok()
        );
    }
}
