//! JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch on
//! `serde_json::Value`.
//!
//! A strategic merge patch merges the lists of built-in kinds by their patch merge keys
//! (containers by `name`, ports by `containerPort` or `port`, conditions by `type`, ...) instead
//! of replacing them, and honours the `$patch`, `$retainKeys`, `$deleteFromPrimitiveList` and
//! `$setElementOrder` directives that `kubectl apply` and `kubectl patch` send. The keys come
//! from a table of the common list fields (by field name, not by schema: a field of that name
//! anywhere in a built-in object merges the same way); any other list is replaced, as a list
//! without a merge key is on a cluster. Server-side apply is served as a merge patch.

use serde_json::{Map, Value};

use super::status::ApiError;

/// Applies an RFC 7386 merge patch in place.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// How a strategic merge patch merges a list field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListMerge {
    /// Elements are objects matched by this key.
    Key(&'static str),
    /// A list of primitives merged as a set (patch values appended when absent).
    Union,
}

/// The patch strategy of the common list fields of built-in kinds (their `patchMergeKey` and
/// `patchStrategy` tags); `None` replaces the list.
fn list_merge(field: &str, elements: &[Value]) -> Option<ListMerge> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => ListMerge::Key("name"),
        // Container ports merge by `containerPort`, Service ports by `port`.
        "ports" if elements.iter().any(|e| e.get("containerPort").is_some()) => {
            ListMerge::Key("containerPort")
        }
        "ports" => ListMerge::Key("port"),
        "volumeMounts" => ListMerge::Key("mountPath"),
        "volumeDevices" => ListMerge::Key("devicePath"),
        "conditions" => ListMerge::Key("type"),
        "ownerReferences" => ListMerge::Key("uid"),
        "hostAliases" => ListMerge::Key("ip"),
        "topologySpreadConstraints" => ListMerge::Key("topologyKey"),
        "finalizers" => ListMerge::Union,
        _ => return None,
    })
}

/// How a list field's elements are identified for field ownership: `Some(Some(key))` by a key
/// field, `Some(None)` by value (a set of primitives), `None` not at all (the list is atomic).
pub fn list_key(field: &str, elements: &[Value]) -> Option<Option<&'static str>> {
    match list_merge(field, elements)? {
        ListMerge::Key(k) => Some(Some(k)),
        ListMerge::Union => Some(None),
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

/// A flat object as Go prints a map (`map[a:1 b:x]`, keys sorted), nested values as JSON: how
/// kube-apiserver quotes a list element in a patch error.
fn go_map(m: &Map<String, Value>) -> String {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    let parts: Vec<String> = keys
        .into_iter()
        .map(|k| match &m[k] {
            Value::String(s) => format!("{k}:{s}"),
            other => format!("{k}:{other}"),
        })
        .collect();
    format!("map[{}]", parts.join(" "))
}

/// Where a merged list puts its elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListOrder {
    /// The patch's elements first, in its order, then the rest (strategic merge patch).
    PatchFirst,
    /// The object's elements where they were, new ones after them (server-side apply).
    InPlace,
}

/// Merges an apply configuration into a built-in kind's object: as a strategic merge patch,
/// but an element already in a list keeps its place and new ones come after.
pub fn apply_merge(target: &mut Value, config: &Value) -> Result<(), ApiError> {
    merge_root(target, config, ListOrder::InPlace)
}

/// Applies a strategic merge patch in place (a built-in kind's object).
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    merge_root(target, patch, ListOrder::PatchFirst)
}

fn merge_root(target: &mut Value, patch: &Value, order: ListOrder) -> Result<(), ApiError> {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            merge_map(target, p, order)
        }
        other => {
            *target = other.clone();
            Ok(())
        }
    }
}

fn merge_map(
    target: &mut Value,
    patch: &Map<String, Value>,
    order: ListOrder,
) -> Result<(), ApiError> {
    match patch.get("$patch").and_then(Value::as_str) {
        None => {}
        Some("replace") => {
            let mut p = patch.clone();
            p.remove("$patch");
            *target = Value::Object(p);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some(other) => return Err(bad(format!("Unknown patch type: {other}"))),
    }
    let Value::Object(t) = target else {
        return Ok(());
    };
    // Directives first: they name the fields the rest of the patch then merges into.
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = v
                .as_array()
                .ok_or_else(|| bad(format!("{k} must be a list")))?;
            if let Some(Value::Array(list)) = t.get_mut(field) {
                list.retain(|e| !remove.contains(e));
            }
        }
    }
    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match v {
            Value::Object(pm) => {
                let entry = t.entry(k.clone()).or_insert(Value::Null);
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                merge_map(entry, pm, order)?;
                if entry.is_null() {
                    t.remove(k);
                }
            }
            Value::Array(pl) => {
                let current = t.remove(k);
                let merged = merge_list(k, current, pl, order)?;
                t.insert(k.clone(), merged);
            }
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
    if let Some(retain) = patch.get("$retainKeys") {
        let keep: Vec<&str> = retain
            .as_array()
            .ok_or_else(|| bad("$retainKeys must be a list"))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            let order = v
                .as_array()
                .ok_or_else(|| bad(format!("{k} must be a list")))?;
            if let Some(Value::Array(list)) = t.get_mut(field) {
                let strategy = list_merge(field, list);
                let rank = |e: &Value| {
                    order.iter().position(|o| match strategy {
                        Some(ListMerge::Key(key)) => o.get(key) == e.get(key),
                        _ => o == e,
                    })
                };
                // Listed elements in the given order; others keep their place after them.
                list.sort_by_key(|e| rank(e).unwrap_or(usize::MAX));
            }
        }
    }
    Ok(())
}

fn merge_list(
    field: &str,
    current: Option<Value>,
    patch: &[Value],
    order: ListOrder,
) -> Result<Value, ApiError> {
    let replace = |patch: &[Value]| {
        Value::Array(
            patch
                .iter()
                .filter(|e| e.get("$patch").is_none())
                .cloned()
                .collect(),
        )
    };
    if patch
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(replace(patch));
    }
    let mut list = match current {
        Some(Value::Array(l)) => l,
        _ => Vec::new(),
    };
    // The merged list holds the patch's elements first, in the patch's order, then the ones
    // only the object had, in their order (kube-apiserver's order without `$setElementOrder`).
    match list_merge(field, patch) {
        None => Ok(replace(patch)),
        Some(ListMerge::Union) => {
            let mut out: Vec<Value> = Vec::new();
            let all: Vec<&Value> = match order {
                ListOrder::PatchFirst => patch.iter().chain(list.iter()).collect(),
                ListOrder::InPlace => list.iter().chain(patch.iter()).collect(),
            };
            for e in all {
                if !out.contains(e) {
                    out.push(e.clone());
                }
            }
            Ok(Value::Array(out))
        }
        Some(ListMerge::Key(key)) => {
            let mut patched: Vec<Value> = Vec::new();
            let mut appended: Vec<Value> = Vec::new();
            for e in patch {
                let Some(em) = e.as_object() else {
                    return Err(bad(format!(
                        "{field}: an element of a list merged by {key} is not an object"
                    )));
                };
                // kube-apiserver answers this one 500, without a reason.
                let id = em.get(key).ok_or_else(|| {
                    ApiError::new(
                        500,
                        "",
                        format!(
                            "map: {} does not contain declared merge key: {key}",
                            go_map(em)
                        ),
                    )
                })?;
                let at = list.iter().position(|c| c.get(key) == Some(id));
                if em.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(i) = at {
                        list.remove(i);
                    }
                    continue;
                }
                match (order, at) {
                    (ListOrder::InPlace, Some(i)) => merge_map(&mut list[i], em, order)?,
                    (ListOrder::InPlace, None) => {
                        let mut fresh = Value::Object(Map::new());
                        merge_map(&mut fresh, em, order)?;
                        appended.push(fresh);
                    }
                    (ListOrder::PatchFirst, at) => {
                        let mut merged = match at {
                            Some(i) => list.remove(i),
                            None => Value::Object(Map::new()),
                        };
                        merge_map(&mut merged, em, order)?;
                        patched.push(merged);
                    }
                }
            }
            patched.extend(list);
            patched.extend(appended);
            Ok(Value::Array(patched))
        }
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<(String, String), ApiError> {
    if path.is_empty() {
        return Err(ApiError::invalid("json patch: the root cannot be a target"));
    }
    let idx = path
        .rfind('/')
        .ok_or_else(|| ApiError::invalid(format!("json patch: bad path {path:?}")))?;
    Ok((path[..idx].to_string(), unescape(&path[idx + 1..])))
}

fn remove_at(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let (parent, last) = split_pointer(path)?;
    let missing = || ApiError::invalid(format!("json patch: path {path:?} does not exist"));
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| missing())?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(missing())
            }
        }
        _ => Err(missing()),
    }
}

fn add_at(doc: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    let missing = || ApiError::invalid(format!("json patch: parent of {path:?} does not exist"));
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| missing())?;
            if i <= a.len() {
                a.insert(i, value);
                Ok(())
            } else {
                Err(missing())
            }
        }
        _ => Err(missing()),
    }
}

/// Applies an RFC 6902 JSON patch; the document is unchanged when any operation fails.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| ApiError::bad_request("json patch must be an array"))?;
    let mut doc = target.clone();
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).unwrap_or_default();
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("json patch operation without path"))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| ApiError::bad_request(format!("json patch {name} without value")))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request(format!("json patch {name} without from")))
        };
        match name {
            "add" => add_at(&mut doc, path, value()?)?,
            "remove" => {
                remove_at(&mut doc, path)?;
            }
            "replace" => {
                remove_at(&mut doc, path)?;
                add_at(&mut doc, path, value()?)?;
            }
            "move" => {
                let v = remove_at(&mut doc, from()?)?;
                add_at(&mut doc, path, v)?;
            }
            "copy" => {
                let v = doc.pointer(from()?).cloned().ok_or_else(|| {
                    ApiError::invalid(format!("json patch: from {path:?} does not exist"))
                })?;
                add_at(&mut doc, path, v)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(ApiError::invalid(format!(
                        "json patch: test failed at {path:?}"
                    )));
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "json patch: unknown op {other:?}"
                )));
            }
        }
    }
    *target = doc;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_patches_merge_lists_by_their_keys() {
        let mut doc = json!({"spec": {
            "containers": [
                {"name": "a", "image": "x:1", "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 80}]},
                {"name": "b", "image": "y:1"}
            ],
            "tolerations": [{"key": "k"}]
        }, "metadata": {"finalizers": ["one"]}});
        strategic_merge_patch(
            &mut doc,
            &json!({"spec": {
                "containers": [
                    {"name": "a", "image": "x:2", "env": [{"name": "B", "value": "2"}], "ports": [{"containerPort": 81}]},
                    {"name": "b", "$patch": "delete"},
                    {"name": "c", "image": "z"}
                ],
                "tolerations": [{"key": "other"}]
            }, "metadata": {"finalizers": ["two", "one"]}}),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"spec": {
                "containers": [
                    {"name": "a", "image": "x:2",
                     "env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}],
                     "ports": [{"containerPort": 81}, {"containerPort": 80}]},
                    {"name": "c", "image": "z"}
                ],
                "tolerations": [{"key": "other"}]
            }, "metadata": {"finalizers": ["two", "one"]}})
        );
    }

    #[test]
    fn strategic_patch_directives_replace_retain_delete_and_order() {
        let mut doc = json!({"a": {"x": 1, "y": 2}, "b": {"p": 1, "q": 2},
            "finalizers": ["f1", "f2", "f3"],
            "volumes": [{"name": "v1"}, {"name": "v2"}], "c": {"z": 1}});
        strategic_merge_patch(
            &mut doc,
            &json!({"a": {"$patch": "replace", "x": 9},
                "b": {"$retainKeys": ["q", "r"], "r": 3},
                "$deleteFromPrimitiveList/finalizers": ["f2"],
                "$setElementOrder/volumes": [{"name": "v2"}, {"name": "v1"}],
                "c": {"$patch": "delete"}}),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"a": {"x": 9}, "b": {"q": 2, "r": 3}, "finalizers": ["f1", "f3"],
                "volumes": [{"name": "v2"}, {"name": "v1"}]})
        );
        let err = strategic_merge_patch(
            &mut json!({}),
            &json!({"spec": {"containers": [{"image": "x"}]}}),
        )
        .unwrap_err();
        assert_eq!(err.code, 500);
        assert_eq!(
            err.message,
            "map: map[image:x] does not contain declared merge key: name"
        );
    }

    #[test]
    fn merge_patch_sets_replaces_and_removes_keys() {
        let mut doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut doc, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(doc, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }

    #[test]
    fn json_patch_operations_follow_rfc6902_and_fail_atomically() {
        let mut doc = json!({"a": [1, 2], "b": {"c": 1}});
        let patch = json!([
            {"op": "add", "path": "/a/-", "value": 3},
            {"op": "replace", "path": "/b/c", "value": 5},
            {"op": "copy", "from": "/b/c", "path": "/d"},
            {"op": "move", "from": "/d", "path": "/e"},
            {"op": "remove", "path": "/a/0"},
            {"op": "test", "path": "/e", "value": 5}
        ]);
        json_patch(&mut doc, &patch).unwrap();
        assert_eq!(doc, json!({"a": [2, 3], "b": {"c": 5}, "e": 5}));
        let before = doc.clone();
        let failing =
            json!([{"op": "remove", "path": "/a/0"}, {"op": "test", "path": "/e", "value": 6}]);
        assert!(json_patch(&mut doc, &failing).is_err());
        assert_eq!(doc, before);
    }
}
