//! Garbage collection by owner references and namespace deletion, as kube-controller-manager's
//! garbage collector and namespace controller do them on a cluster, run synchronously inside the
//! write that triggers them.
//!
//! Why in the fake: kube-apiserver alone (envtest) does neither, so a controller that relies on
//! owner references (every operator that creates what it owns) cannot be tested end to end
//! there; on a cluster the collector is always running. The order of events a watcher sees is
//! the cluster's: the owner's deletion (or its `deletionTimestamp` and finalizer, for
//! `Foreground` and `Orphan`), then the dependents' deletions or updates. What differs is only
//! timing: here it has all happened when the DELETE returns. `FakeConfig::garbage_collection`
//! turns it off (a namespace then stays `Terminating`, as on kube-apiserver alone).

use std::sync::Arc;

use serde_json::{Value, json};

use super::objects::{meta_str, now_rfc3339};
use super::{EventType, ObjKey, Storage};
use crate::fake::resources::{ResKey, ResourceDef};
use crate::fake::status::ApiError;
use crate::fake::validation::{self, FieldError};

/// How a DELETE treats the object's dependents (`DeleteOptions.propagationPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// The owner goes now, its dependents after it (the default).
    Background,
    /// The owner waits, with the `foregroundDeletion` finalizer, until the dependents that
    /// block it (`blockOwnerDeletion`) are gone.
    Foreground,
    /// The dependents lose their reference to the owner and stay.
    Orphan,
}

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

/// Reads `propagationPolicy` (or the older `orphanDependents`) of DeleteOptions; a value
/// kube-apiserver refuses answers its 422.
pub fn propagation(options: &Value) -> Result<Propagation, ApiError> {
    let policy = options.get("propagationPolicy").and_then(Value::as_str);
    let orphan = options.get("orphanDependents").and_then(Value::as_bool);
    let refuse = |e: FieldError| {
        let def = ResourceDef::kind_only("meta.k8s.io", "DeleteOptions");
        Err(validation::invalid(&def, "", &[e]))
    };
    match (policy, orphan) {
        (Some(p), Some(_)) => refuse(FieldError::invalid(
            "propagationPolicy",
            p,
            "orphanDependents and deletionPropagation cannot be both set",
        )),
        (Some("Background"), None) => Ok(Propagation::Background),
        (Some("Foreground"), None) => Ok(Propagation::Foreground),
        (Some("Orphan"), None) => Ok(Propagation::Orphan),
        (Some(p), None) => refuse(FieldError::not_supported(
            "propagationPolicy",
            p,
            &["Foreground", "Background", "Orphan"],
        )),
        (None, Some(true)) => Ok(Propagation::Orphan),
        (None, _) => Ok(Propagation::Background),
    }
}

fn owner_uids(obj: &Value) -> impl Iterator<Item = &str> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("uid").and_then(Value::as_str))
}

fn ns_key() -> ResKey {
    ResKey {
        group: String::new(),
        version: "v1".into(),
        plural: "namespaces".into(),
    }
}

impl Storage {
    /// Stores `obj` under `key`, keeping the uid and owner indexes current.
    pub(super) fn put(&mut self, res: &ResKey, key: ObjKey, obj: Arc<Value>) {
        self.take(res, &key);
        let uid = meta_str(&obj, "uid").to_string();
        if !uid.is_empty() {
            self.by_uid.insert(uid, (res.clone(), key.clone()));
        }
        for owner in owner_uids(&obj) {
            self.owned
                .entry(owner.to_string())
                .or_default()
                .insert((res.clone(), key.clone()));
        }
        self.objects
            .entry(res.clone())
            .or_default()
            .insert(key, obj);
    }

    /// Removes the object under `key`, keeping the indexes current.
    pub(super) fn take(&mut self, res: &ResKey, key: &ObjKey) -> Option<Arc<Value>> {
        let obj = self.objects.get_mut(res)?.remove(key)?;
        self.by_uid.remove(meta_str(&obj, "uid"));
        for owner in owner_uids(&obj) {
            if let Some(set) = self.owned.get_mut(owner) {
                set.remove(&(res.clone(), key.clone()));
                if set.is_empty() {
                    self.owned.remove(owner);
                }
            }
        }
        Some(obj)
    }

    fn lookup(&self, res: &ResKey, key: &ObjKey) -> Option<Arc<Value>> {
        self.objects.get(res).and_then(|m| m.get(key)).cloned()
    }

    fn dependents(&self, uid: &str) -> Vec<(ResKey, ObjKey)> {
        self.owned
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Writes `obj` back through `update` (the collector's own writes: finalizers and owner
    /// references it removes), which records the event and removes an object whose last
    /// finalizer went.
    fn rewrite(&mut self, res: &ResKey, key: &ObjKey, obj: Value) {
        if let Err(error) = self.update(res, &key.0, &key.1, obj, false) {
            tracing::warn!(resource = %res.plural, namespace = %key.0, name = %key.1, %error, "garbage collector write refused");
        }
    }

    fn remove_finalizer(&mut self, res: &ResKey, key: &ObjKey, finalizer: &str) {
        let Some(obj) = self.lookup(res, key) else {
            return;
        };
        let mut new = (*obj).clone();
        if let Some(f) = new
            .pointer_mut("/metadata/finalizers")
            .and_then(Value::as_array_mut)
        {
            f.retain(|v| v.as_str() != Some(finalizer));
        }
        self.rewrite(res, key, new);
    }

    /// Removes the references to owners in `gone` from the dependent at `key`.
    fn drop_owner_refs(&mut self, res: &ResKey, key: &ObjKey, gone: impl Fn(&str) -> bool) {
        let Some(obj) = self.lookup(res, key) else {
            return;
        };
        let mut new = (*obj).clone();
        if let Some(refs) = new
            .pointer_mut("/metadata/ownerReferences")
            .and_then(Value::as_array_mut)
        {
            refs.retain(|r| !r.get("uid").and_then(Value::as_str).is_some_and(&gone));
            if refs.is_empty()
                && let Some(m) = new["metadata"].as_object_mut()
            {
                m.remove("ownerReferences");
            }
        }
        self.rewrite(res, key, new);
    }

    /// Marks an object deleted with `Foreground` or `Orphan`: its `deletionTimestamp` and the
    /// policy's finalizer, the state a DELETE answers with; then does the collector's part.
    pub(super) fn delete_with(
        &mut self,
        res: &ResKey,
        key: &ObjKey,
        policy: Propagation,
    ) -> Arc<Value> {
        let Some(old) = self.lookup(res, key) else {
            return Arc::new(Value::Null);
        };
        let finalizer = match policy {
            Propagation::Orphan => ORPHAN,
            _ => FOREGROUND,
        };
        let mut new = (*old).clone();
        if new.pointer("/metadata/deletionTimestamp").is_none() {
            new["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        }
        if !new["metadata"]["finalizers"].is_array() {
            new["metadata"]["finalizers"] = json!([]);
        }
        if let Some(f) = new["metadata"]["finalizers"].as_array_mut()
            && !f.iter().any(|v| v.as_str() == Some(finalizer))
        {
            f.push(json!(finalizer));
        }
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let marked = Arc::new(new);
        self.put(res, key.clone(), marked.clone());
        self.record(res, EventType::Modified, marked.clone(), Some(old));
        let uid = meta_str(&marked, "uid").to_string();
        if !self.gc {
            // kube-apiserver alone: the finalizer stays until a collector removes it.
            return marked;
        }
        match policy {
            Propagation::Orphan => {
                for (dres, dkey) in self.dependents(&uid) {
                    self.drop_owner_refs(&dres, &dkey, |u| u == uid);
                }
                self.remove_finalizer(res, key, ORPHAN);
            }
            _ => {
                for (dres, dkey) in self.dependents(&uid) {
                    if self.lookup(&dres, &dkey).is_some() {
                        let _ = self.delete(
                            &dres,
                            &dkey.0,
                            &dkey.1,
                            &json!({"propagationPolicy": "Foreground"}),
                        );
                    }
                }
                self.finish_foreground(res, key);
            }
        }
        marked
    }

    /// Lets an owner waiting in foreground deletion go once no dependent blocks it.
    fn finish_foreground(&mut self, res: &ResKey, key: &ObjKey) {
        let Some(owner) = self.lookup(res, key) else {
            return;
        };
        let waiting = owner
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| f.iter().any(|v| v.as_str() == Some(FOREGROUND)));
        if !waiting {
            return;
        }
        let uid = meta_str(&owner, "uid").to_string();
        let blocked = self.dependents(&uid).iter().any(|(dres, dkey)| {
            self.lookup(dres, dkey).is_some_and(|d| {
                d.pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|r| {
                        r.get("uid").and_then(Value::as_str) == Some(uid.as_str())
                            && r.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true)
                    })
            })
        });
        if !blocked {
            self.remove_finalizer(res, key, FOREGROUND);
        }
    }

    /// What follows an object's removal: a CRD's resources go, and (with garbage collection
    /// on) its dependents are deleted (or, if they have another owner that still exists, lose
    /// the reference), an owner waiting for it in foreground deletion may go, and a terminating
    /// namespace it was the last content of is finalized.
    pub(super) fn removed(&mut self, d: &ResourceDef, obj: &Value) {
        self.after_delete(d, obj);
        if !self.gc {
            return;
        }
        let uid = meta_str(obj, "uid").to_string();
        for (dres, dkey) in self.dependents(&uid) {
            let Some(dep) = self.lookup(&dres, &dkey) else {
                continue;
            };
            let live_owner = owner_uids(&dep).any(|u| u != uid && self.by_uid.contains_key(u));
            if live_owner {
                let existing: Vec<String> = owner_uids(&dep)
                    .filter(|u| self.by_uid.contains_key(*u))
                    .map(String::from)
                    .collect();
                self.drop_owner_refs(&dres, &dkey, |u| !existing.iter().any(|e| e == u));
            } else {
                let _ = self.delete(&dres, &dkey.0, &dkey.1, &json!({}));
            }
        }
        let owners: Vec<(ResKey, ObjKey)> = owner_uids(obj)
            .filter_map(|u| self.by_uid.get(u).cloned())
            .collect();
        for (ores, okey) in owners {
            self.finish_foreground(&ores, &okey);
        }
        if d.namespaced {
            let ns = meta_str(obj, "namespace").to_string();
            self.finish_namespace(&ns);
        }
    }

    /// The collector's answer to an object written with owner references none of which exists
    /// (never did, or went before it was written): it is deleted, as on a cluster, where the
    /// collector finds every owner absent.
    pub(super) fn collect_if_orphaned(&mut self, res: &ResKey, key: &ObjKey) {
        if !self.gc {
            return;
        }
        let Some(obj) = self.lookup(res, key) else {
            return;
        };
        let mut owners = owner_uids(&obj).peekable();
        if owners.peek().is_none() || obj.pointer("/metadata/deletionTimestamp").is_some() {
            return;
        }
        if owners.any(|u| self.by_uid.contains_key(u)) {
            return;
        }
        tracing::debug!(resource = %res.plural, namespace = %key.0, name = %key.1, "no owner exists: collected");
        let _ = self.delete(res, &key.0, &key.1, &json!({}));
    }

    /// Whether a namespace is being deleted (objects may not be created in it).
    pub(super) fn terminating(&self, ns: &str) -> bool {
        self.lookup(&ns_key(), &(String::new(), ns.to_string()))
            .is_some_and(|n| n.pointer("/metadata/deletionTimestamp").is_some())
    }

    /// A DELETE of a namespace: `Terminating` (the answer), then, with garbage collection on,
    /// every object in it deleted and the namespace finalized once none is left.
    pub(super) fn terminate_namespace(&mut self, name: &str) -> Arc<Value> {
        let key = (String::new(), name.to_string());
        let Some(old) = self.lookup(&ns_key(), &key) else {
            return Arc::new(Value::Null);
        };
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            return old;
        }
        let mut new = (*old).clone();
        new["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        if !new["status"].is_object() {
            new["status"] = json!({});
        }
        new["status"]["phase"] = json!("Terminating");
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let marked = Arc::new(new);
        self.put(&ns_key(), key, marked.clone());
        self.record(&ns_key(), EventType::Modified, marked.clone(), Some(old));
        if self.gc {
            let content: Vec<(ResKey, ObjKey)> = self.namespace_content(name);
            for (res, k) in content {
                if self.lookup(&res, &k).is_some() {
                    let _ = self.delete(&res, &k.0, &k.1, &json!({}));
                }
            }
            self.finish_namespace(name);
        }
        marked
    }

    fn namespace_content(&self, ns: &str) -> Vec<(ResKey, ObjKey)> {
        let mut out = Vec::new();
        for (res, objs) in &self.objects {
            if !self.defs.get(res).is_some_and(|d| d.namespaced) {
                continue;
            }
            let from = (ns.to_string(), String::new());
            for (k, _) in objs.range(from..).take_while(|(k, _)| k.0 == ns) {
                out.push((res.clone(), k.clone()));
            }
        }
        out
    }

    /// The namespace controller's last step: a terminating namespace with nothing left in it
    /// loses its `kubernetes` finalizer, and goes when no other finalizer holds it.
    fn finish_namespace(&mut self, ns: &str) {
        if !self.terminating(ns) || !self.namespace_content(ns).is_empty() {
            return;
        }
        let key = (String::new(), ns.to_string());
        let Some(obj) = self.lookup(&ns_key(), &key) else {
            return;
        };
        // The namespace controller's `/finalize`: written directly, as an update keeps the
        // spec's finalizers a client sends.
        let mut new = (*obj).clone();
        if !new["spec"].is_object() {
            new["spec"] = json!({});
        }
        new["spec"]["finalizers"] = json!([]);
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let new = Arc::new(new);
        if super::held(&self.def_of(&ns_key()), &new) {
            self.put(&ns_key(), key, new.clone());
            self.record(&ns_key(), EventType::Modified, new, Some(obj));
        } else {
            self.take(&ns_key(), &key);
            self.record(&ns_key(), EventType::Deleted, new.clone(), Some(obj));
            let d = self.def_of(&ns_key());
            self.removed(&d, &new);
        }
    }

    fn def_of(&self, res: &ResKey) -> ResourceDef {
        self.defs
            .get(res)
            .cloned()
            .expect("namespaces are built in")
    }
}
