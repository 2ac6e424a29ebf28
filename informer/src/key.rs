//! Object keys: how the cache names an object.
//!
//! Kubernetes identifies an object within a resource by its namespace and name, so every part of
//! the cache (the DeltaFIFO, the Indexer, the workqueue a controller feeds) keys objects by the
//! string `namespace/name`, or just `name` for cluster-scoped objects, exactly as client-go's
//! `MetaNamespaceKeyFunc` does. Keeping the same spelling means keys printed by a Go controller
//! and a Reflex controller are interchangeable in logs and in tooling.
//!
//! Identity is the key, not the UID: an object deleted and recreated under the same name between
//! two observations is, to the cache, the same key with a new state.
//!
//! ```
//! use reflex_informer::key::ObjectKey;
//!
//! let key = ObjectKey::new(Some("kube-system"), "coredns");
//! assert_eq!(key.to_string(), "kube-system/coredns");
//! let parsed: ObjectKey = "kube-system/coredns".parse().unwrap();
//! assert_eq!(parsed, key);
//! assert_eq!(ObjectKey::new(None::<&str>, "node-1").to_string(), "node-1");
//! ```

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

use crate::hash::FastHashSet;

/// Why an object or a string could not be turned into an [`ObjectKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The object has no `metadata.name` (or an empty one), so it cannot be cached or queued.
    #[error("object has no metadata.name (kind {kind}, namespace {namespace:?})")]
    MissingName {
        /// The object's kind, as far as it is known.
        kind: String,
        /// The object's namespace, if it has one.
        namespace: Option<String>,
    },
    /// A key string had more than one `/`, or an empty namespace or name part.
    #[error("malformed object key {0:?}: expected \"name\" or \"namespace/name\"")]
    Malformed(String),
}

/// The cache key of an object: `namespace/name`, or `name` when cluster-scoped.
///
/// Cheap to clone (the parts are reference counted), ordered (namespace first, then name), and
/// hashable, so it serves directly as a workqueue item.
///
/// # Hashing
///
/// A key computes its hash once, when it is made, and [`Hash`] feeds only that 64-bit value to
/// a hasher. Every map keyed by `ObjectKey` (the store, the DeltaFIFO, a controller's work
/// queue) therefore hashes a key in one step, whatever the length of its name, and compares
/// two keys by that value before it compares any bytes. The value comes from
/// [foldhash](https://docs.rs/foldhash)'s quality hasher seeded at random once per process:
/// keys name objects of an authenticated API server, and an unpredictable seed keeps even a
/// user able to choose object names from aiming collisions at one bucket. The value is not
/// stable across processes; never persist it.
#[derive(Clone)]
pub struct ObjectKey {
    hash: u64,
    namespace: Option<Arc<str>>,
    name: Arc<str>,
}

/// The process-wide seed of key hashes.
fn key_hasher() -> &'static foldhash::quality::RandomState {
    static STATE: std::sync::OnceLock<foldhash::quality::RandomState> = std::sync::OnceLock::new();
    STATE.get_or_init(foldhash::quality::RandomState::default)
}

fn hash_parts(namespace: Option<&str>, name: &str) -> u64 {
    let mut hasher = key_hasher().build_hasher();
    hasher.write(namespace.unwrap_or("").as_bytes());
    hasher.write_u8(0xff);
    hasher.write(name.as_bytes());
    hasher.finish()
}

impl PartialEq for ObjectKey {
    fn eq(&self, other: &Self) -> bool {
        // The hash first: unequal keys almost always differ there, without reading a byte of
        // either name. `Arc<str>` compares pointers before bytes, which makes shared
        // namespaces free.
        self.hash == other.hash && self.name == other.name && self.namespace == other.namespace
    }
}

impl Eq for ObjectKey {}

impl Hash for ObjectKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialOrd for ObjectKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ObjectKey {
    /// Cluster-scoped keys first, then by namespace, then by name.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.namespace, &self.name).cmp(&(&other.namespace, &other.name))
    }
}

impl ObjectKey {
    /// This key with its namespace swapped for the equal one in `namespaces` (added there if
    /// new), so that every key a store holds for one namespace shares one allocation.
    pub(crate) fn share_namespace(mut self, namespaces: &mut FastHashSet<Arc<str>>) -> Self {
        if let Some(ns) = &self.namespace {
            match namespaces.get(ns) {
                Some(shared) => self.namespace = Some(shared.clone()),
                None => {
                    namespaces.insert(ns.clone());
                }
            }
        }
        self
    }

    /// A key from its parts. An empty namespace is the same as none.
    pub fn new(namespace: Option<impl AsRef<str>>, name: impl AsRef<str>) -> Self {
        let namespace = namespace
            .as_ref()
            .map(AsRef::as_ref)
            .filter(|ns| !ns.is_empty());
        let name = name.as_ref();
        ObjectKey {
            hash: hash_parts(namespace, name),
            namespace: namespace.map(Arc::from),
            name: Arc::from(name),
        }
    }

    /// The 64-bit hash this key was given when it was made (see [Hashing](#hashing)): what
    /// [`Hash`] writes, for maps that index by it directly.
    pub fn hash_value(&self) -> u64 {
        self.hash
    }

    /// The key of any Kubernetes resource, from its `metadata.namespace` and `metadata.name`.
    ///
    /// ```
    /// # use k8s_openapi::api::core::v1::ConfigMap;
    /// # use kube::api::ObjectMeta;
    /// use reflex_informer::key::{KeyError, ObjectKey};
    ///
    /// let cm = ConfigMap {
    ///     metadata: ObjectMeta {
    ///         namespace: Some("default".into()),
    ///         name: Some("settings".into()),
    ///         ..Default::default()
    ///     },
    ///     ..Default::default()
    /// };
    /// assert_eq!(ObjectKey::from_resource(&cm).unwrap().to_string(), "default/settings");
    /// assert!(matches!(
    ///     ObjectKey::from_resource(&ConfigMap::default()),
    ///     Err(KeyError::MissingName { .. })
    /// ));
    /// ```
    pub fn from_resource<K>(obj: &K) -> Result<Self, KeyError>
    where
        K: kube::Resource,
        K::DynamicType: Default,
    {
        Self::from_meta::<K>(obj.meta(), &K::DynamicType::default())
    }

    /// The key of an object from its metadata; `dyntype` names the kind in errors.
    pub fn from_meta<K: kube::Resource>(
        meta: &kube::api::ObjectMeta,
        dyntype: &K::DynamicType,
    ) -> Result<Self, KeyError> {
        match meta.name.as_deref() {
            Some(name) if !name.is_empty() => Ok(ObjectKey::new(meta.namespace.as_deref(), name)),
            _ => Err(KeyError::MissingName {
                kind: K::kind(dyntype).into_owned(),
                namespace: meta.namespace.clone(),
            }),
        }
    }

    /// The namespace part, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The name part.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Splits the key into `(namespace, name)`.
    pub fn split(&self) -> (Option<&str>, &str) {
        (self.namespace(), self.name())
    }
}

/// Splits a key string into `(namespace, name)`, as client-go's `SplitMetaNamespaceKey`.
///
/// ```
/// use reflex_informer::key::split_key;
/// assert_eq!(split_key("ns/a").unwrap(), (Some("ns"), "a"));
/// assert_eq!(split_key("a").unwrap(), (None, "a"));
/// assert!(split_key("a/b/c").is_err());
/// ```
pub fn split_key(key: &str) -> Result<(Option<&str>, &str), KeyError> {
    let malformed = || KeyError::Malformed(key.to_owned());
    match key.split_once('/') {
        None if !key.is_empty() => Ok((None, key)),
        None => Err(malformed()),
        Some((ns, name)) => {
            if ns.is_empty() || name.is_empty() || name.contains('/') {
                Err(malformed())
            } else {
                Ok((Some(ns), name))
            }
        }
    }
}

/// Joins a namespace and a name into a key string (`namespace/name`, or `name`).
///
/// ```
/// use reflex_informer::key::join_key;
/// assert_eq!(join_key(Some("ns"), "a"), "ns/a");
/// assert_eq!(join_key(None, "a"), "a");
/// ```
pub fn join_key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_owned(),
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectKey({self})")
    }
}

impl FromStr for ObjectKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ns, name) = split_key(s)?;
        Ok(ObjectKey::new(ns, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_namespace_gives_equal_namespaces_one_allocation_and_keeps_the_key_equal() {
        let mut namespaces = FastHashSet::default();
        let a = ObjectKey::new(Some("team-a"), "x").share_namespace(&mut namespaces);
        let b = ObjectKey::new(Some("team-a"), "y").share_namespace(&mut namespaces);
        let c = ObjectKey::new(Some("team-b"), "x").share_namespace(&mut namespaces);
        let cluster = ObjectKey::new(None::<&str>, "node-1").share_namespace(&mut namespaces);
        let ptr = |k: &ObjectKey| k.namespace.as_ref().map(|ns| Arc::as_ptr(ns) as *const u8);
        assert_eq!(ptr(&a), ptr(&b), "one allocation for team-a");
        assert_ne!(ptr(&a), ptr(&c));
        assert_eq!(b, ObjectKey::new(Some("team-a"), "y"));
        assert_eq!(cluster, ObjectKey::new(None::<&str>, "node-1"));
        assert_eq!(namespaces.len(), 2);
    }

    #[test]
    fn round_trips_through_its_string_form() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("a", None, "a"),
            ("ns/a", Some("ns"), "a"),
            (
                "kube-system/coredns-5d78c9869d-abcde",
                Some("kube-system"),
                "coredns-5d78c9869d-abcde",
            ),
        ];
        for (text, ns, name) in cases {
            let key: ObjectKey = text.parse().unwrap();
            assert_eq!(key.split(), (*ns, *name), "{text}");
            assert_eq!(&key.to_string(), text);
        }
    }

    #[test]
    fn malformed_key_strings_are_errors_not_panics() {
        for bad in ["", "/a", "ns/", "a/b/c", "/"] {
            assert_eq!(
                bad.parse::<ObjectKey>(),
                Err(KeyError::Malformed(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn empty_namespace_is_cluster_scoped() {
        assert_eq!(ObjectKey::new(Some(""), "n").to_string(), "n");
        assert_eq!(
            ObjectKey::new(Some(""), "n"),
            ObjectKey::new(None::<&str>, "n")
        );
    }

    #[test]
    fn keys_order_by_namespace_then_name() {
        let mut keys: Vec<ObjectKey> = ["b/a", "a/z", "a/b", "c"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        keys.sort();
        let strings: Vec<String> = keys.iter().map(ToString::to_string).collect();
        assert_eq!(strings, ["c", "a/b", "a/z", "b/a"]);
    }
}
