//! Object storage: one global resourceVersion, generic JSON objects, a bounded event history and
//! the registered watchers.
//!
//! All state lives behind one `parking_lot::Mutex` that is never held across an `.await`: each
//! write bumps the counter, records the event in the history and hands it to every watcher of the
//! resource with `try_send`, so a slow watcher is dropped (and told 410) instead of blocking writers.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::resources::{ResKey, ResourceDef, builtins, defs_from_crd};
use super::selectors::Selectors;
use super::status::ApiError;
use super::validation;

mod gc;
mod objects;

pub use objects::now_rfc3339;
use objects::*;

/// Watch event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Object created.
    Added,
    /// Object changed.
    Modified,
    /// Object removed.
    Deleted,
}

impl EventType {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One recorded change.
#[derive(Debug, Clone)]
pub struct Event {
    /// resourceVersion of the change.
    pub rv: u64,
    /// Resource it belongs to.
    pub res: ResKey,
    /// Kind of change.
    pub kind: EventType,
    /// The object after the change (for deletes, the last state).
    pub obj: Arc<Value>,
    /// The object before the change, if any.
    pub prev: Option<Arc<Value>>,
}

/// What flows to a watch stream.
#[derive(Debug, Clone)]
pub enum WatchMsg {
    /// A stored event.
    Event(Arc<Event>),
    /// Raw bytes injected by a fault.
    Raw(Bytes),
}

/// A registered watcher.
struct Watcher {
    res: ResKey,
    tx: mpsc::Sender<WatchMsg>,
    expired: Arc<AtomicBool>,
}

/// Object key inside a resource: (namespace, name).
pub type ObjKey = (String, String);

/// What a watch registration returns.
pub struct WatchStart {
    /// Events to send before live ones.
    pub initial: Vec<Arc<Event>>,
    /// Live events.
    pub rx: mpsc::Receiver<WatchMsg>,
    /// Set when the watcher was dropped for falling behind.
    pub expired: Arc<AtomicBool>,
    /// resourceVersion the watch starts from.
    pub start_rv: u64,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchFrom {
    /// Synthetic ADDED events for the current state, then live.
    Current,
    /// Events strictly after this resourceVersion.
    After(u64),
}

/// The whole server state.
pub struct Storage {
    rv: u64,
    defs: BTreeMap<ResKey, ResourceDef>,
    objects: BTreeMap<ResKey, BTreeMap<ObjKey, Arc<Value>>>,
    history: VecDeque<Arc<Event>>,
    history_cap: usize,
    /// Every event with rv > oldest_rv is in the history.
    oldest_rv: u64,
    watchers: Vec<Watcher>,
    watch_buffer: usize,
    /// Refuse what kube-apiserver refuses (see [`validation`](super::validation)).
    pub validate: bool,
    /// Run the garbage collector and the namespace controller (see [`gc`]).
    pub gc: bool,
    /// The Kubernetes minor version whose rules apply.
    pub minor: u32,
    /// Owner uid to the objects whose `ownerReferences` name it.
    owned: HashMap<String, BTreeSet<(ResKey, ObjKey)>>,
    /// uid to where the object is stored.
    by_uid: HashMap<String, (ResKey, ObjKey)>,
    /// The next Service cluster IP to hand out (the low 16 bits, in 10.0.0.0/16 above
    /// 10.0.0.1, which a cluster keeps for the `kubernetes` Service).
    next_cluster_ip: u32,
}

impl Storage {
    /// New storage with the built-ins and the standard namespaces.
    pub fn new(history_cap: usize, watch_buffer: usize) -> Self {
        let mut s = Storage {
            rv: 1,
            defs: BTreeMap::new(),
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_cap: history_cap.max(1),
            oldest_rv: 1,
            watchers: Vec::new(),
            watch_buffer: watch_buffer.max(1),
            validate: true,
            gc: true,
            minor: super::NEWEST_MINOR,
            owned: HashMap::new(),
            by_uid: HashMap::new(),
            next_cluster_ip: 10,
        };
        for d in builtins() {
            s.objects.entry(d.key()).or_default();
            s.defs.insert(d.key(), d);
        }
        let ns = ResKey {
            group: String::new(),
            version: "v1".into(),
            plural: "namespaces".into(),
        };
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
            // Built-in namespaces are valid by construction.
            let _ = s.create(&ns, "", obj);
        }
        s
    }

    /// All registered resources.
    pub fn defs(&self) -> impl Iterator<Item = &ResourceDef> {
        self.defs.values()
    }

    /// Resolves a group/version/plural.
    pub fn def(&self, key: &ResKey) -> Result<ResourceDef, ApiError> {
        self.defs.get(key).cloned().ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                format!(
                    "the server could not find the requested resource ({})",
                    key.plural
                ),
            )
        })
    }

    /// Current global resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    /// Oldest resourceVersion still covered by the history.
    pub fn oldest_rv(&self) -> u64 {
        self.oldest_rv
    }

    /// Registers resources directly (no CRD object).
    pub fn register(&mut self, d: ResourceDef) {
        self.objects.entry(d.key()).or_default();
        self.defs.insert(d.key(), d);
    }

    fn record(&mut self, res: &ResKey, kind: EventType, obj: Arc<Value>, prev: Option<Arc<Value>>) {
        let ev = Arc::new(Event {
            rv: self.rv,
            res: res.clone(),
            kind,
            obj,
            prev,
        });
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_cap {
            if let Some(old) = self.history.pop_front() {
                self.oldest_rv = old.rv;
            }
        }
        self.watchers.retain(|w| {
            if w.res != *res {
                return !w.tx.is_closed();
            }
            match w.tx.try_send(WatchMsg::Event(ev.clone())) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::debug!(resource = %res.plural, resource_version = ev.rv, "watcher fell behind; closing with 410");
                    w.expired.store(true, Ordering::SeqCst);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    fn check_namespace(&self, d: &ResourceDef, ns: &str) -> Result<(), ApiError> {
        if !d.namespaced {
            return Ok(());
        }
        let nskey = ResKey {
            group: String::new(),
            version: "v1".into(),
            plural: "namespaces".into(),
        };
        if self
            .objects
            .get(&nskey)
            .is_some_and(|m| m.contains_key(&(String::new(), ns.to_string())))
        {
            if self.terminating(ns) {
                let mut e = ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "unable to create new content in namespace {ns} because it is being terminated"
                    ),
                );
                e.causes = vec![super::status::StatusCause {
                    reason: "NamespaceTerminating",
                    message: format!("namespace {ns} is being terminated"),
                    field: "metadata.namespace".into(),
                }];
                return Err(e);
            }
            Ok(())
        } else {
            Err(ApiError::not_found("", "namespaces", ns))
        }
    }

    /// Gets one object.
    pub fn get(&self, res: &ResKey, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
        let d = self.def(res)?;
        self.objects
            .get(res)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&d.group, &d.plural, name))
    }

    /// The objects of a resource at a resourceVersion (None = now), sorted by key.
    pub fn snapshot(
        &self,
        res: &ResKey,
        at: Option<u64>,
    ) -> Result<BTreeMap<ObjKey, Arc<Value>>, ApiError> {
        self.def(res)?;
        let mut objs = self.objects.get(res).cloned().unwrap_or_default();
        let Some(at) = at else { return Ok(objs) };
        if at > self.rv {
            return Err(ApiError::new(
                504,
                "Timeout",
                format!("Too large resource version: {at}, current: {}", self.rv),
            ));
        }
        if at < self.oldest_rv {
            return Err(ApiError::gone(format!(
                "The resourceVersion for the provided list is too old: {at}"
            )));
        }
        for ev in self.history.iter().rev().take_while(|e| e.rv > at) {
            if ev.res != *res {
                continue;
            }
            let key = (
                meta_str(&ev.obj, "namespace").to_string(),
                meta_str(&ev.obj, "name").to_string(),
            );
            match &ev.prev {
                Some(p) => {
                    objs.insert(key, p.clone());
                }
                None => {
                    objs.remove(&key);
                }
            }
        }
        Ok(objs)
    }

    /// The objects of a resource at resourceVersion `at`, in key order, only those in
    /// namespace `ns` (when given) and after `start_after` (exclusive). When nothing of the
    /// resource changed since `at` this reads the live map without copying it, so a page of a
    /// large list costs its own size rather than the whole resource's.
    pub fn list_from(
        &self,
        res: &ResKey,
        at: u64,
        ns: Option<&str>,
        start_after: Option<&ObjKey>,
    ) -> Result<Vec<Arc<Value>>, ApiError> {
        let changed_since = self
            .history
            .iter()
            .rev()
            .take_while(|e| e.rv > at)
            .any(|e| e.res == *res);
        let in_scope = |(ons, _): &ObjKey| ns.is_none_or(|n| n == ons);
        let after = |k: &ObjKey| start_after.is_none_or(|sa| k > sa);
        if changed_since || at > self.rv || at < self.oldest_rv {
            // The slow path rewinds the history (and reports a too large or too old `at`).
            let objs = self.snapshot(res, Some(at))?;
            return Ok(objs
                .into_iter()
                .filter(|(k, _)| after(k) && in_scope(k))
                .map(|(_, o)| o)
                .collect());
        }
        self.def(res)?;
        let Some(map) = self.objects.get(res) else {
            return Ok(Vec::new());
        };
        let range = match start_after {
            Some(sa) => map.range((
                std::ops::Bound::Excluded(sa.clone()),
                std::ops::Bound::Unbounded,
            )),
            None => map.range::<ObjKey, _>(..),
        };
        Ok(range
            .filter(|(k, _)| in_scope(k))
            .map(|(_, o)| o.clone())
            .collect())
    }

    /// Creates an object; fills in server-managed metadata.
    pub fn create(
        &mut self,
        res: &ResKey,
        ns: &str,
        mut obj: Value,
    ) -> Result<Arc<Value>, ApiError> {
        let d = self.def(res)?;
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request is not a JSON object",
            ));
        }
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        let body_ns = meta_str(&obj, "namespace").to_string();
        if d.namespaced {
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            obj["metadata"]["namespace"] = json!(ns);
            self.check_namespace(&d, ns)?;
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        let mut name = meta_str(&obj, "name").to_string();
        if name.is_empty() {
            let prefix = meta_str(&obj, "generateName").to_string();
            if prefix.is_empty() {
                return Err(ApiError::invalid(format!(
                    "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                    d.kind
                )));
            }
            let suffix: String = (0..5)
                .map(|_| (b'a' + rand::random_range(0..26u8)) as char)
                .collect();
            name = format!("{prefix}{suffix}");
            obj["metadata"]["name"] = json!(name);
        }
        let key = (
            if d.namespaced {
                ns.to_string()
            } else {
                String::new()
            },
            name.clone(),
        );
        if self.objects.get(res).is_some_and(|m| m.contains_key(&key)) {
            return Err(ApiError::already_exists(&d.group, &d.plural, &name));
        }
        let crd_defs = if d.plural == "customresourcedefinitions"
            && d.group == "apiextensions.k8s.io"
        {
            let defs = defs_from_crd(&obj)?;
            obj["status"] = json!({
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "lastTransitionTime": now_rfc3339()},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "lastTransitionTime": now_rfc3339()}
                ],
                "acceptedNames": obj["spec"]["names"].clone(),
                "storedVersions": defs.iter().map(|d| d.version.clone()).collect::<Vec<_>>(),
            });
            Some(defs)
        } else {
            if d.status
                && d.plural != "namespaces"
                && let Some(m) = obj.as_object_mut()
            {
                m.remove("status");
            }
            None
        };
        obj["apiVersion"] = json!(d.api_version());
        obj["kind"] = json!(d.kind);
        obj["metadata"]["uid"] = json!(new_uid());
        apply_create_defaults(&d, &mut obj, self.minor)?;
        if d.group.is_empty() && d.plural == "services" {
            self.allocate_cluster_ip(&mut obj);
        }
        if self.validate {
            if let Some(s) = &d.schema {
                validation::schema::prune_and_default(s, &mut obj);
            }
            validation::validate_create(&d, &obj, self.minor)?;
        }
        self.rv += 1;
        let m = obj["metadata"]
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        m.insert("creationTimestamp".into(), json!(now_rfc3339()));
        m.insert("resourceVersion".into(), json!(self.rv.to_string()));
        m.insert("generation".into(), json!(1));
        m.remove("deletionTimestamp");
        m.remove("deletionGracePeriodSeconds");
        let obj = Arc::new(obj);
        self.put(res, key.clone(), obj.clone());
        self.record(res, EventType::Added, obj.clone(), None);
        self.collect_if_orphaned(res, &key);
        if let Some(defs) = crd_defs {
            for d in defs {
                self.register(d);
            }
        }
        tracing::debug!(resource = %res.plural, namespace = ns, name = %name, resource_version = self.rv, "created");
        Ok(obj)
    }

    /// Replaces an object (main resource or `/status`), with optimistic concurrency.
    pub fn update(
        &mut self,
        res: &ResKey,
        ns: &str,
        name: &str,
        mut obj: Value,
        status_only: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let d = self.def(res)?;
        let old = self.get(res, ns, name)?;
        if !obj.is_object() || !obj.get("metadata").is_none_or(Value::is_object) {
            return Err(ApiError::bad_request(
                "the body of the request is not a valid object",
            ));
        }
        let body_name = meta_str(&obj, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        let body_ns = meta_str(&obj, "namespace");
        if d.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let body_rv = meta_str(&obj, "resourceVersion");
        if !body_rv.is_empty() && body_rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict(
                &d.group,
                &d.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let body_uid = meta_str(&obj, "uid");
        if !body_uid.is_empty() && body_uid != meta_str(&old, "uid") {
            return Err(ApiError::conflict(
                &d.group,
                &d.plural,
                name,
                "Precondition failed: UID in precondition does not match",
            ));
        }
        let mut new = if status_only {
            let mut n = (*old).clone();
            match obj.get("status") {
                Some(s) => n["status"] = s.clone(),
                None => {
                    if let Some(m) = n.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            n
        } else {
            if d.status {
                match old.get("status") {
                    Some(s) => obj["status"] = s.clone(),
                    None => {
                        if let Some(m) = obj.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            if obj.get("metadata").is_none() {
                obj["metadata"] = json!({});
            }
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old["metadata"].get(f) {
                    Some(v) => obj["metadata"][f] = v.clone(),
                    None => {
                        if let Some(m) = obj["metadata"].as_object_mut() {
                            m.remove(f);
                        }
                    }
                }
            }
            obj["metadata"]["name"] = json!(name);
            if d.namespaced {
                obj["metadata"]["namespace"] = json!(ns);
            }
            obj
        };
        new["apiVersion"] = json!(d.api_version());
        new["kind"] = json!(d.kind);
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if !status_only {
            apply_update_defaults(&d, &old, &mut new, self.minor);
        }
        if self.validate {
            if let Some(s) = &d.schema {
                validation::schema::prune_and_default(s, &mut new);
            }
            validation::validate_update(&d, &old, &new, status_only, self.minor)?;
        }
        if new == *old {
            // No-op updates do not bump the resourceVersion, as on a real apiserver.
            return Ok(old);
        }
        if spec_part(&new) != spec_part(&old) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            new["metadata"]["generation"] = json!(g + 1);
        }
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let key = (
            if d.namespaced {
                ns.to_string()
            } else {
                String::new()
            },
            name.to_string(),
        );
        let new = Arc::new(new);
        if new.pointer("/metadata/deletionTimestamp").is_some() && !held(&d, &new) {
            self.take(res, &key);
            self.record(res, EventType::Deleted, new.clone(), Some(old));
            self.removed(&d, &new);
        } else {
            self.put(res, key.clone(), new.clone());
            self.record(res, EventType::Modified, new.clone(), Some(old));
            self.collect_if_orphaned(res, &key);
        }
        tracing::debug!(resource = %res.plural, namespace = ns, name, resource_version = self.rv, "updated");
        Ok(new)
    }

    fn after_delete(&mut self, d: &ResourceDef, obj: &Value) {
        if d.plural == "customresourcedefinitions"
            && d.group == "apiextensions.k8s.io"
            && let Ok(defs) = defs_from_crd(obj)
        {
            for d in defs {
                let key = d.key();
                self.defs.remove(&key);
                let keys: Vec<ObjKey> = self
                    .objects
                    .get(&key)
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                let gone: Vec<Arc<Value>> =
                    keys.iter().filter_map(|k| self.take(&key, k)).collect();
                self.objects.remove(&key);
                self.watchers.retain(|w| w.res != key);
                for obj in gone {
                    self.removed(&d, &obj);
                }
            }
        }
    }

    /// Deletes an object honouring preconditions, finalizers and the propagation policy of
    /// `options`. Returns the object as the DELETE answers it: its last state when it is gone,
    /// or its state with a `deletionTimestamp` while finalizers hold it.
    pub fn delete(
        &mut self,
        res: &ResKey,
        ns: &str,
        name: &str,
        options: &Value,
    ) -> Result<Arc<Value>, ApiError> {
        let d = self.def(res)?;
        let old = self.get(res, ns, name)?;
        let policy = gc::propagation(options)?;
        if let Some(uid) = options
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            && uid != meta_str(&old, "uid")
        {
            return Err(ApiError::conflict(
                &d.group,
                &d.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old, "uid")
                ),
            ));
        }
        if let Some(rv) = options
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            && rv != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(
                &d.group,
                &d.plural,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&old, "resourceVersion")
                ),
            ));
        }
        let key = (
            if d.namespaced {
                ns.to_string()
            } else {
                String::new()
            },
            name.to_string(),
        );
        if old.pointer("/metadata/deletionTimestamp").is_some() && held(&d, &old) {
            // Already being deleted: a repeated DELETE answers its current state.
            return Ok(old);
        }
        if d.group.is_empty() && d.plural == "namespaces" {
            return Ok(self.terminate_namespace(name));
        }
        if policy != gc::Propagation::Background {
            return Ok(self.delete_with(res, &key, policy));
        }
        self.rv += 1;
        let mut new = (*old).clone();
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if held(&d, &old) {
            new["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            let new = Arc::new(new);
            self.put(res, key, new.clone());
            self.record(res, EventType::Modified, new.clone(), Some(old));
            return Ok(new);
        }
        let new = Arc::new(new);
        self.take(res, &key);
        self.record(res, EventType::Deleted, new.clone(), Some(old));
        self.removed(&d, &new);
        tracing::debug!(resource = %res.plural, namespace = ns, name, resource_version = self.rv, "deleted");
        Ok(new)
    }

    /// Gives a new ClusterIP Service its address (`spec.clusterIP` and `spec.clusterIPs`), as a
    /// cluster's allocator does; headless (`None`) and ExternalName Services get none, an address
    /// the client chose is kept.
    fn allocate_cluster_ip(&mut self, obj: &mut Value) {
        if obj.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName") {
            return;
        }
        let chosen = obj
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ip = if chosen.is_empty() {
            let n = self.next_cluster_ip;
            self.next_cluster_ip = if n >= 0xfffe { 10 } else { n + 1 };
            format!("10.0.{}.{}", n >> 8, n & 0xff)
        } else {
            chosen
        };
        obj["spec"]["clusterIP"] = json!(ip);
        obj["spec"]["clusterIPs"] = json!([ip]);
    }

    /// Forgets the history: every resourceVersion before now answers 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.oldest_rv = self.rv;
    }

    /// Advances the resourceVersion without an event of any served resource (as a write to an
    /// unrelated resource would), then compacts: every resourceVersion before now answers 410,
    /// including the current one before the call.
    pub fn advance_and_compact(&mut self) {
        self.rv += 1;
        self.compact();
    }

    /// Closes every open watch.
    pub fn drop_watchers(&mut self) {
        self.watchers.clear();
    }

    /// Writes raw bytes into every open watch.
    pub fn inject_raw(&mut self, bytes: Bytes) {
        self.watchers
            .retain(|w| w.tx.try_send(WatchMsg::Raw(bytes.clone())).is_ok());
    }

    /// Number of open watches.
    pub fn watcher_count(&mut self) -> usize {
        self.watchers.retain(|w| !w.tx.is_closed());
        self.watchers.len()
    }

    /// Registers a watcher and returns the events it must see first.
    pub fn watch(
        &mut self,
        res: &ResKey,
        ns: Option<&str>,
        sel: &Selectors,
        from: WatchFrom,
    ) -> Result<WatchStart, ApiError> {
        self.def(res)?;
        let in_ns = |o: &Value| ns.is_none_or(|n| meta_str(o, "namespace") == n);
        let initial: Vec<Arc<Event>> = match from {
            WatchFrom::Current => self
                .objects
                .get(res)
                .into_iter()
                .flat_map(|m| m.values())
                .filter(|o| in_ns(o) && sel.matches(o))
                .map(|o| {
                    Arc::new(Event {
                        rv: self.rv,
                        res: res.clone(),
                        kind: EventType::Added,
                        obj: o.clone(),
                        prev: None,
                    })
                })
                .collect(),
            WatchFrom::After(rv) => {
                if rv < self.oldest_rv {
                    return Err(ApiError::gone(format!(
                        "too old resource version: {rv} ({})",
                        self.oldest_rv
                    )));
                }
                self.history
                    .iter()
                    .filter(|e| e.rv > rv && e.res == *res)
                    .cloned()
                    .collect()
            }
        };
        let (tx, rx) = mpsc::channel(self.watch_buffer);
        let expired = Arc::new(AtomicBool::new(false));
        self.watchers.push(Watcher {
            res: res.clone(),
            tx,
            expired: expired.clone(),
        });
        let start_rv = match from {
            WatchFrom::Current => self.rv,
            WatchFrom::After(rv) => rv,
        };
        Ok(WatchStart {
            initial,
            rx,
            expired,
            start_rv,
        })
    }
}

/// Whether finalizers keep an object whose deletion was asked for: its own, or (a namespace)
/// those in its spec that the namespace controller removes when the namespace is empty.
fn held(d: &ResourceDef, obj: &Value) -> bool {
    let spec_finalizers = d.group.is_empty()
        && d.plural == "namespaces"
        && obj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
    !finalizers_empty(obj) || spec_finalizers
}
