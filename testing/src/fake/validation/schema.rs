//! Custom resources checked against their CRD's structural `openAPIV3Schema`, as
//! kube-apiserver's apiextensions server does: unknown fields pruned (unless
//! `x-kubernetes-preserve-unknown-fields`), defaults filled in, then types, `required`, `enum`,
//! bounds, `pattern`, lengths, item and property counts, and `x-kubernetes-list-type: set`
//! uniqueness validated. CEL rules (`x-kubernetes-validations`) and `format` are not evaluated:
//! the fake accepts what they would refuse.

use serde_json::{Map, Value};

use super::{ErrorType, FieldError};

/// Prunes and defaults `obj` (a whole custom resource) in place by `schema`; `apiVersion`,
/// `kind` and `metadata` are the server's and are never pruned.
pub fn prune_and_default(schema: &Value, obj: &mut Value) {
    let Some(m) = obj.as_object_mut() else {
        return;
    };
    for (k, v) in m.iter_mut() {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(s) = property(schema, k) {
            walk(s, v);
        }
    }
    if !preserves(schema) {
        m.retain(|k, _| {
            matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                || property(schema, k).is_some()
        });
    }
    defaults(schema, m);
}

fn preserves(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
}

/// The schema of property `k` of an object schema: its `properties` entry, or the
/// `additionalProperties` schema.
fn property<'a>(schema: &'a Value, k: &str) -> Option<&'a Value> {
    schema
        .pointer("/properties")
        .and_then(|p| p.get(k))
        .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()))
}

fn defaults(schema: &Value, m: &mut Map<String, Value>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, s) in props {
            if !m.contains_key(k)
                && let Some(d) = s.get("default")
            {
                let mut d = d.clone();
                walk(s, &mut d);
                m.insert(k.clone(), d);
            }
        }
    }
}

fn walk(schema: &Value, v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if let Some(s) = property(schema, k) {
                    walk(s, child);
                }
            }
            let open = preserves(schema)
                || schema
                    .get("additionalProperties")
                    .is_some_and(|a| a.is_object() || a == true)
                || schema
                    .get("x-kubernetes-embedded-resource")
                    .and_then(Value::as_bool)
                    == Some(true);
            if !open {
                m.retain(|k, _| property(schema, k).is_some());
            }
            defaults(schema, m);
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for i in items {
                    walk(s, i);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Validates `obj` by `schema`; `path` is the field path of `obj` (empty at the root).
pub fn validate(schema: &Value, obj: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let at = |child: &str| {
        if path.is_empty() {
            child.to_string()
        } else {
            format!("{path}.{child}")
        }
    };
    let shown = if path.is_empty() { "<root>" } else { path };
    if obj.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) && !path.is_empty() {
            errs.push(FieldError::new(
                path,
                ErrorType::TypeInvalid,
                Value::Null,
                format!(
                    "{shown} in body must be of type {}: \"null\"",
                    schema
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("object")
                ),
            ));
        }
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if let Some(want) = schema.get("type").and_then(Value::as_str) {
        let have = type_name(obj);
        let ok = have == want || (want == "number" && have == "integer");
        if !ok && !int_or_string {
            errs.push(FieldError::new(
                path,
                ErrorType::TypeInvalid,
                Value::String(have.to_string()),
                format!("{shown} in body must be of type {want}: \"{have}\""),
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(obj)
    {
        let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        errs.push(FieldError::new(
            path,
            ErrorType::NotSupported,
            obj.clone(),
            format!("supported values: {}", list.join(", ")),
        ));
    }
    match obj {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            let num = |k: &str| schema.get(k).and_then(Value::as_f64);
            let flag = |k: &str| schema.get(k).and_then(Value::as_bool) == Some(true);
            if let Some(min) = num("minimum") {
                let exclusive = flag("exclusiveMinimum");
                if x < min || (exclusive && x == min) {
                    let rel = if exclusive {
                        "greater than"
                    } else {
                        "greater than or equal to"
                    };
                    errs.push(FieldError::invalid(
                        path,
                        obj.clone(),
                        format!("{shown} in body should be {rel} {}", schema["minimum"]),
                    ));
                }
            }
            if let Some(max) = num("maximum") {
                let exclusive = flag("exclusiveMaximum");
                if x > max || (exclusive && x == max) {
                    let rel = if exclusive {
                        "less than"
                    } else {
                        "less than or equal to"
                    };
                    errs.push(FieldError::invalid(
                        path,
                        obj.clone(),
                        format!("{shown} in body should be {rel} {}", schema["maximum"]),
                    ));
                }
            }
        }
        Value::String(s) => {
            // The first of the string's rules that fails is its only cause.
            let len = s.chars().count();
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len as u64 > max
            {
                errs.push(FieldError::too_long(path, max as usize));
            } else if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && (len as u64) < min
            {
                errs.push(FieldError::invalid(
                    path,
                    obj.clone(),
                    format!("{shown} in body should be at least {min} chars long"),
                ));
            } else if let Some(p) = schema.get("pattern").and_then(Value::as_str)
                && regex::Regex::new(p).is_ok_and(|re| !re.is_match(s))
            {
                errs.push(FieldError::invalid(
                    path,
                    obj.clone(),
                    format!("{shown} in body should match '{p}'"),
                ));
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                errs.push(FieldError::new(
                    path,
                    ErrorType::TooMany,
                    Value::from(items.len()),
                    format!("must have at most {max} items"),
                ));
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                errs.push(FieldError::invalid(
                    path,
                    Value::Array(items.clone()),
                    format!("{shown} in body should have at least {min} items"),
                ));
            }
            if schema.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("set") {
                for (i, e) in items.iter().enumerate() {
                    if items[..i].contains(e) {
                        errs.push(FieldError::duplicate(format!("{path}[{i}]"), e.clone()));
                    }
                }
            }
            if let Some(s) = schema.get("items") {
                for (i, e) in items.iter().enumerate() {
                    validate(s, e, &format!("{path}[{i}]"), errs);
                }
            }
        }
        Value::Object(m) => {
            for r in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !m.contains_key(r) {
                    errs.push(FieldError::required(at(r), ""));
                }
            }
            if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
                && m.len() as u64 > max
            {
                errs.push(FieldError::new(
                    path,
                    ErrorType::TooMany,
                    Value::from(m.len()),
                    format!("must have at most {max} items"),
                ));
            }
            for (k, v) in m {
                if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(s) = property(schema, k) {
                    validate(s, v, &at(k), errs);
                }
            }
        }
        _ => {}
    }
}

/// The replica counts a CRD's `scale` subresource reads must be non-negative integers (or
/// absent); kube-apiserver names the field by its JSON path (`.spec.replicas`).
pub fn scale_paths(
    paths: &crate::fake::resources::ScalePaths,
    obj: &Value,
    errs: &mut Vec<FieldError>,
) {
    for pointer in [&paths.spec_replicas, &paths.status_replicas] {
        let Some(v) = obj.pointer(pointer).filter(|v| !v.is_null()) else {
            continue;
        };
        let field = pointer.replace('/', ".");
        match v.as_i64() {
            Some(n) if n < 0 => errs.push(FieldError::invalid(
                field,
                n,
                "should be a non-negative integer",
            )),
            Some(_) => {}
            None => {
                let (shown, go_type) = match v {
                    Value::String(s) => (s.clone(), "string"),
                    Value::Bool(b) => (b.to_string(), "bool"),
                    Value::Number(n) => (n.to_string(), "float64"),
                    Value::Array(_) => (v.to_string(), "[]interface {}"),
                    _ => (v.to_string(), "map[string]interface {}"),
                };
                errs.push(FieldError::invalid(
                    field.clone(),
                    0,
                    format!(
                        "{field} accessor error: {shown} is of the type {go_type}, expected int64"
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 0, "maximum": 10},
                "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                "name": {"type": "string", "maxLength": 5, "pattern": "^[a-z]+$"},
                "tags": {"type": "array", "maxItems": 2, "x-kubernetes-list-type": "set",
                         "items": {"type": "string"}},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            }},
            "status": {"type": "object", "properties": {"ready": {"type": "integer"}}}
        }})
    }

    fn fields(obj: Value) -> Vec<(String, &'static str)> {
        let mut errs = Vec::new();
        validate(&schema(), &obj, "", &mut errs);
        let mut out: Vec<_> = errs
            .iter()
            .map(|e| (e.field.clone(), e.kind.reason()))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn unknown_fields_are_pruned_and_defaults_filled() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "w"},
            "spec": {"size": 1, "unknown": 1, "extra": {"anything": {"goes": 1}}}, "junk": 2});
        prune_and_default(&schema(), &mut obj);
        assert_eq!(
            obj,
            json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "w"},
                "spec": {"size": 1, "color": "red", "extra": {"anything": {"goes": 1}}}})
        );
    }

    #[test]
    fn each_rule_is_a_cause_at_its_field() {
        assert_eq!(fields(json!({"spec": {"size": 3}})), []);
        assert_eq!(
            fields(json!({"spec": {}})),
            [("spec.size".to_string(), "FieldValueRequired")]
        );
        assert_eq!(
            fields(json!({"spec": {"size": "3"}})),
            [("spec.size".to_string(), "FieldValueTypeInvalid")]
        );
        assert_eq!(
            fields(
                json!({"spec": {"size": 11, "color": "pink", "name": "Abcdef", "tags": ["a", "a", "b"]}})
            ),
            [
                ("spec.color".to_string(), "FieldValueNotSupported"),
                ("spec.name".to_string(), "FieldValueTooLong"),
                ("spec.size".to_string(), "FieldValueInvalid"),
                ("spec.tags".to_string(), "FieldValueTooMany"),
                ("spec.tags[1]".to_string(), "FieldValueDuplicate"),
            ]
        );
    }
}
