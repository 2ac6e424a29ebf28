//! Field ownership (`metadata.managedFields`) and server-side apply, as kube-apiserver keeps
//! them: every write records which manager set which fields (`Update` for creates, updates and
//! patches, `Apply` for apply patches); an apply that would change a field another manager owns
//! is a 409 `Conflict` naming each field, unless forced (then the field changes hands); an apply
//! removes the fields its manager applied before and no longer applies, if no one else owns
//! them.
//!
//! Field sets are written in `FieldsV1` form (`f:data`, `k:{"name":"web"}`, `v:"x"`, `.`).
//! Lists merge by the same keys as strategic merge patch for built-in kinds (see
//! [`patch`](super::patch)); other lists are atomic (owned whole), as are all lists of custom
//! resources (the fake reads no `x-kubernetes-list-type`). Objects written through
//! `FakeApiServer::seed` keep the managedFields they came with.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::patch::{apply_merge, list_key, merge_patch};
use super::resources::ResourceDef;
use super::status::{ApiError, StatusCause};
use super::storage::now_rfc3339;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    /// A map or struct field.
    Field(String),
    /// An element of a keyed list, by its key fields (as JSON).
    Key(String),
    /// An element of a set-like list of primitives (as JSON).
    Value(String),
}

type Path = Vec<Step>;

/// Fields of built-in kinds owned whole (`+structType=atomic`, `+mapType=atomic`): label
/// selectors and node selectors.
const ATOMIC: [&str; 2] = ["selector", "nodeSelector"];

/// The leaf paths of `v` (a value below the object's top).
fn leaves(def: &ResourceDef, field: &str, v: &Value, at: &mut Path, out: &mut BTreeSet<Path>) {
    if def.builtin && ATOMIC.contains(&field) {
        out.insert(at.clone());
        return;
    }
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                at.push(Step::Field(k.clone()));
                leaves(def, k, child, at, out);
                at.pop();
            }
        }
        Value::Array(items) if def.builtin && !items.is_empty() => match list_key(field, items) {
            Some(Some(key)) => {
                for item in items {
                    let Some(id) = item.get(key) else {
                        continue;
                    };
                    let mut k = Map::new();
                    k.insert(key.to_string(), id.clone());
                    at.push(Step::Key(Value::Object(k).to_string()));
                    out.insert(at.clone());
                    if let Value::Object(m) = item {
                        for (k, child) in m {
                            at.push(Step::Field(k.clone()));
                            leaves(def, k, child, at, out);
                            at.pop();
                        }
                    }
                    at.pop();
                }
            }
            Some(None) => {
                for item in items {
                    at.push(Step::Value(item.to_string()));
                    out.insert(at.clone());
                    at.pop();
                }
            }
            None => {
                out.insert(at.clone());
            }
        },
        _ => {
            out.insert(at.clone());
        }
    }
}

/// The fields of an object a manager can own: everything but `apiVersion`, `kind`, `status` (a
/// subresource's, for kinds that have one) and the server's metadata; `name` and `namespace`
/// identify the object and are nobody's.
fn fields(def: &ResourceDef, obj: &Value, status_only: bool) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    let Some(m) = obj.as_object() else {
        return out;
    };
    for (k, v) in m {
        let owned = match k.as_str() {
            "apiVersion" | "kind" => false,
            "status" if def.status => status_only,
            _ => !status_only,
        };
        if !owned {
            continue;
        }
        if k == "metadata" {
            for f in ["labels", "annotations", "finalizers", "ownerReferences"] {
                if let Some(v) = v.get(f) {
                    let mut at = vec![Step::Field("metadata".into()), Step::Field(f.into())];
                    leaves(def, f, v, &mut at, &mut out);
                }
            }
            continue;
        }
        let mut at = vec![Step::Field(k.clone())];
        leaves(def, k, v, &mut at, &mut out);
    }
    out
}

/// The value at `path` in `obj`, if there is one.
fn value_at<'a>(obj: &'a Value, path: &[Step]) -> Option<&'a Value> {
    let mut v = obj;
    for s in path {
        v = match s {
            Step::Field(f) => v.get(f)?,
            Step::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).ok()?;
                v.as_array()?
                    .iter()
                    .find(|e| key.iter().all(|(kk, kv)| e.get(kk) == Some(kv)))?
            }
            Step::Value(x) => {
                let x: Value = serde_json::from_str(x).ok()?;
                v.as_array()?.iter().find(|e| **e == x)?
            }
        };
    }
    Some(v)
}

fn to_fields_v1(set: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut at = &mut root;
        for (i, s) in path.iter().enumerate() {
            let name = match s {
                Step::Field(f) => format!("f:{f}"),
                Step::Key(k) => format!("k:{k}"),
                Step::Value(v) => format!("v:{v}"),
            };
            let entry = at.entry(name).or_insert_with(|| json!({}));
            let child = entry.as_object_mut().expect("field sets are objects");
            if i + 1 == path.len() && matches!(s, Step::Key(_)) {
                child.insert(".".into(), json!({}));
            }
            at = child;
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value, at: &mut Path, out: &mut BTreeSet<Path>) {
    let Some(m) = v.as_object() else {
        return;
    };
    if m.is_empty() && !at.is_empty() {
        out.insert(at.clone());
    }
    for (k, child) in m {
        if k == "." {
            out.insert(at.clone());
            continue;
        }
        let step = match k.split_at(k.find(':').map_or(0, |i| i + 1)) {
            ("f:", f) => Step::Field(f.into()),
            ("k:", key) => Step::Key(key.into()),
            ("v:", x) => Step::Value(x.into()),
            _ => continue,
        };
        at.push(step);
        from_fields_v1(child, at, out);
        at.pop();
    }
}

/// One `managedFields` entry, parsed.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    subresource: String,
    raw: Value,
    set: BTreeSet<Path>,
}

impl Entry {
    /// The manager as a conflict names it: quoted, with its subresource, and for an `Update`
    /// the API version it wrote with.
    fn printed(&self) -> String {
        let mut s = format!("\"{}\"", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource \"{}\"", self.subresource));
        }
        if self.operation == "Update" {
            let version = self
                .raw
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default();
            s.push_str(&format!(" using {version}"));
        }
        s
    }
}

fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| {
            let mut set = BTreeSet::new();
            if let Some(f) = e.get("fieldsV1") {
                from_fields_v1(f, &mut Vec::new(), &mut set);
            }
            let s = |k: &str| {
                e.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            Entry {
                manager: s("manager"),
                operation: s("operation"),
                subresource: s("subresource"),
                raw: e.clone(),
                set,
            }
        })
        .collect()
}

fn write_entries(def: &ResourceDef, obj: &mut Value, list: Vec<Entry>) {
    let out: Vec<Value> = list
        .into_iter()
        .filter(|e| !e.set.is_empty())
        .map(|e| {
            let mut raw = e.raw;
            if !raw.is_object() {
                raw = json!({});
            }
            raw["manager"] = json!(e.manager);
            raw["operation"] = json!(e.operation);
            raw["apiVersion"] = json!(def.api_version());
            // An entry whose fields did not change keeps its time: a repeated write is a
            // no-op (no new resourceVersion, no event), as on kube-apiserver.
            let mut before = BTreeSet::new();
            if let Some(f) = raw.get("fieldsV1") {
                from_fields_v1(f, &mut Vec::new(), &mut before);
            }
            if before != e.set || raw.get("time").is_none() {
                raw["time"] = json!(now_rfc3339());
            }
            raw["fieldsType"] = json!("FieldsV1");
            raw["fieldsV1"] = to_fields_v1(&e.set);
            if !e.subresource.is_empty() {
                raw["subresource"] = json!(e.subresource);
            }
            raw
        })
        .collect();
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if out.is_empty() {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
    } else {
        obj["metadata"]["managedFields"] = Value::Array(out);
    }
}

/// The manager of a write without `fieldManager`: the client's user agent up to its first `/`.
pub fn default_manager(user_agent: &str) -> String {
    user_agent.split('/').next().unwrap_or_default().to_string()
}

/// Records a non-apply write (create, update, patch) of `new` over `old` (`None`: a create) by
/// `manager`: the fields it set or changed are its (`Update`), no longer anyone else's.
pub fn record_update(
    def: &ResourceDef,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    status_only: bool,
) {
    let sub = if status_only { "status" } else { "" };
    let now = fields(def, new, status_only);
    let changed: BTreeSet<Path> = match old {
        None => now.clone(),
        // A list element changes hands only when it is new; a changed field inside it is the
        // field's.
        Some(old) => now
            .iter()
            .filter(|p| match p.last() {
                Some(Step::Key(_)) => value_at(old, p).is_none(),
                _ => value_at(old, p) != value_at(new, p),
            })
            .cloned()
            .collect(),
    };
    let mut list = old.map(entries).unwrap_or_default();
    for e in &mut list {
        // Fields that are gone are nobody's; changed ones are the writer's now.
        e.set
            .retain(|p| value_at(new, p).is_some() && !changed.contains(p));
    }
    if !changed.is_empty() {
        match list
            .iter_mut()
            .find(|e| e.manager == manager && e.operation == "Update" && e.subresource == sub)
        {
            Some(e) => e.set.extend(changed),
            None => list.push(Entry {
                manager: manager.to_string(),
                operation: "Update".into(),
                subresource: sub.into(),
                raw: json!({}),
                set: changed,
            }),
        }
    }
    write_entries(def, new, list);
}

/// Serves an apply of `config` by `manager` to `current` (`None`: the object does not exist):
/// the object after the apply, with its managedFields, or the 409 of the conflicts.
pub fn apply(
    def: &ResourceDef,
    current: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    status_only: bool,
) -> Result<Value, ApiError> {
    let sub = if status_only { "status" } else { "" };
    let given = |f: &str| config.get(f).and_then(Value::as_str).unwrap_or_default();
    if given("apiVersion") != def.api_version() || given("kind") != def.kind {
        let (group, version) = given("apiVersion")
            .rsplit_once('/')
            .unwrap_or(("", given("apiVersion")));
        return Err(ApiError::bad_request(format!(
            "invalid object type: {group}/{version}, Kind={}",
            given("kind")
        )));
    }
    let applied = fields(def, config, status_only);
    let mut list = current.map(entries).unwrap_or_default();
    let empty = json!({});
    let base = current.unwrap_or(&empty);
    // Conflicts: a field (not a list element's identity) another manager owns that this apply
    // would change.
    let mut conflicts: BTreeMap<Path, Vec<String>> = BTreeMap::new();
    for e in list
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
    {
        for p in applied.intersection(&e.set) {
            let leaf = matches!(p.last(), Some(Step::Field(_)));
            if leaf && value_at(base, p) != value_at(config, p) {
                conflicts.entry(p.clone()).or_default().push(e.printed());
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(&conflicts));
    }
    let mut obj = base.clone();
    // What this manager applied before and no longer applies goes, unless another owns it.
    if let Some(previous) = list
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply" && e.subresource == sub)
    {
        for p in previous.set.difference(&applied) {
            let shared = list
                .iter()
                .any(|e| !(e.manager == manager && e.operation == "Apply") && e.set.contains(p));
            if !shared {
                remove_at(&mut obj, p);
            }
        }
    }
    let mut patch = config.clone();
    if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    if def.builtin {
        apply_merge(&mut obj, &patch)?;
    } else {
        merge_patch(&mut obj, &patch);
    }
    for e in &mut list {
        if force && !(e.manager == manager && e.operation == "Apply") {
            e.set.retain(|p| !conflicts.contains_key(p));
        }
        e.set.retain(|p| value_at(&obj, p).is_some());
    }
    match list
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Apply" && e.subresource == sub)
    {
        Some(e) => e.set = applied,
        None => list.push(Entry {
            manager: manager.to_string(),
            operation: "Apply".into(),
            subresource: sub.into(),
            raw: json!({}),
            set: applied,
        }),
    }
    write_entries(def, &mut obj, list);
    Ok(obj)
}

fn remove_at(obj: &mut Value, path: &[Step]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut v = obj;
    for s in parent {
        let next = match s {
            Step::Field(f) => v.get_mut(f),
            Step::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                v.as_array_mut().and_then(|a| {
                    a.iter_mut()
                        .find(|e| key.iter().all(|(kk, kv)| e.get(kk) == Some(kv)))
                })
            }
            Step::Value(_) => None,
        };
        let Some(next) = next else {
            return;
        };
        v = next;
    }
    match last {
        Step::Field(f) => {
            if let Some(m) = v.as_object_mut() {
                m.remove(f);
            }
        }
        Step::Key(k) => {
            let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            if let Some(a) = v.as_array_mut() {
                a.retain(|e| !key.iter().all(|(kk, kv)| e.get(kk) == Some(kv)));
            }
        }
        Step::Value(x) => {
            let x: Value = serde_json::from_str(x).unwrap_or(Value::Null);
            if let Some(a) = v.as_array_mut() {
                a.retain(|e| *e != x);
            }
        }
    }
}

/// A path as kube-apiserver prints it in a conflict: `.data.k`, `.spec.containers[name="web"].image`.
fn show(path: &[Step]) -> String {
    let mut s = String::new();
    for step in path {
        match step {
            Step::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Step::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = key.iter().map(|(kk, kv)| format!("{kk}={kv}")).collect();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
            Step::Value(x) => s.push_str(&format!("[{x}]")),
        }
    }
    s
}

/// The 409 of an apply's conflicts: one line for one conflict, else the paths grouped by the
/// manager that owns them.
fn conflict_error(conflicts: &BTreeMap<Path, Vec<String>>) -> ApiError {
    let mut causes = Vec::new();
    let mut by_manager: Vec<(String, Vec<String>)> = Vec::new();
    for (path, managers) in conflicts {
        for m in managers {
            causes.push(StatusCause {
                reason: "FieldManagerConflict",
                message: format!("conflict with {m}"),
                field: show(path),
            });
            match by_manager.iter_mut().find(|(k, _)| k == m) {
                Some((_, paths)) => paths.push(show(path)),
                None => by_manager.push((m.clone(), vec![show(path)])),
            }
        }
    }
    let summary = if causes.len() == 1 {
        format!(
            "Apply failed with 1 conflict: {}: {}",
            causes[0].message, causes[0].field
        )
    } else {
        let groups: Vec<String> = by_manager
            .iter()
            .map(|(m, paths)| match paths.as_slice() {
                [one] => format!("conflict with {m}: {one}"),
                many => format!("conflicts with {m}:\n- {}", many.join("\n- ")),
            })
            .collect();
        format!(
            "Apply failed with {} conflicts: {}",
            causes.len(),
            groups.join("\n")
        )
    };
    let mut e = ApiError::new(409, "Conflict", summary);
    e.causes = causes;
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::resources::builtins;

    fn cm_def() -> ResourceDef {
        builtins()
            .into_iter()
            .find(|d| d.plural == "configmaps")
            .unwrap()
    }

    #[test]
    fn field_sets_round_trip_through_fields_v1() {
        let deps = builtins()
            .into_iter()
            .find(|d| d.plural == "deployments")
            .unwrap();
        let obj = json!({"metadata": {"name": "d", "labels": {"a": "b"}, "finalizers": ["x"]},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "web", "image": "i"}]}}}});
        let set = fields(&deps, &obj, false);
        let v1 = to_fields_v1(&set);
        assert_eq!(
            v1,
            json!({"f:metadata": {"f:labels": {"f:a": {}}, "f:finalizers": {"v:\"x\"": {}}},
                "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}})
        );
        let mut back = BTreeSet::new();
        from_fields_v1(&v1, &mut Vec::new(), &mut back);
        assert_eq!(back, set);
    }

    #[test]
    fn appliers_conflict_on_values_they_disagree_on_and_force_takes_the_field() {
        let def = cm_def();
        let a = apply(
            &def,
            None,
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "1", "shared": "s"}}),
            "a",
            false,
            false,
        )
        .unwrap();
        // The same value is shared ownership, a different one a conflict.
        let b = apply(
            &def,
            Some(&a),
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"shared": "s"}}),
            "b",
            false,
            false,
        )
        .unwrap();
        let err = apply(
            &def,
            Some(&b),
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "2"}}),
            "b",
            false,
            false,
        )
        .unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
        assert_eq!(err.causes[0].field, ".data.k");
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"a\": .data.k"
        );
        let forced = apply(
            &def,
            Some(&b),
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "2"}}),
            "b",
            true,
            false,
        )
        .unwrap();
        assert_eq!(forced["data"], json!({"k": "2", "shared": "s"}));
        // b stopped applying `shared`, but a still owns it: it stays.
        let list = entries(&forced);
        let a_set = &list.iter().find(|e| e.manager == "a").unwrap().set;
        assert!(!a_set.contains(&vec![Step::Field("data".into()), Step::Field("k".into())]));
        // a applies without `shared` now: no one owns it, it goes.
        let dropped = apply(
            &def,
            Some(&forced),
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}}),
            "a",
            false,
            false,
        )
        .unwrap();
        assert_eq!(dropped["data"], json!({"k": "2"}));
    }

    #[test]
    fn updates_take_the_fields_they_change() {
        let def = cm_def();
        let a = apply(
            &def,
            None,
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "1"}}),
            "a",
            false,
            false,
        )
        .unwrap();
        let mut edited = a.clone();
        edited["data"]["k"] = json!("2");
        record_update(&def, Some(&a), &mut edited, "kubectl-edit", false);
        let list = entries(&edited);
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(
            (list[0].manager.as_str(), list[0].operation.as_str()),
            ("kubectl-edit", "Update")
        );
    }
}
