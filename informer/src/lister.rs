//! Listers: the read side of an informer's cache, for controllers.
//!
//! A controller reads through a [`Lister`] instead of the API server: every read is a lock-free
//! look-up in the [`Indexer`](crate::store::Indexer)'s current snapshot, returns `Arc`s (no copies of objects), and
//! never waits for the informer writing the store. Objects must be treated as read-only; to
//! change one, clone it and write it back through the API.
//!
//! Label selectors are kube's own [`Selector`] (built from expressions, from a
//! `LabelSelector`, or parsed from the Kubernetes string syntax with [`parse_selector`]), so the
//! selector a controller lists its cache with is the same value it would send to the server.
//!
//! ```
//! use std::sync::Arc;
//! use k8s_openapi::api::core::v1::Pod;
//! use kube::api::ObjectMeta;
//! use reflex_informer::lister::{Lister, parse_selector};
//! use reflex_informer::store::Indexer;
//!
//! let pod = |ns: &str, name: &str, app: &str| Arc::new(Pod {
//!     metadata: ObjectMeta {
//!         namespace: Some(ns.into()),
//!         name: Some(name.into()),
//!         labels: Some([("app".to_string(), app.to_string())].into()),
//!         ..Default::default()
//!     },
//!     ..Default::default()
//! });
//! let store = Indexer::<Pod>::new();
//! store.add(pod("a", "web-1", "web")).unwrap();
//! store.add(pod("a", "db-1", "db")).unwrap();
//! store.add(pod("b", "web-2", "web")).unwrap();
//!
//! let lister = Lister::new(store);
//! let web = parse_selector("app in (web)").unwrap();
//! assert_eq!(lister.list(&web).len(), 2);
//! assert_eq!(lister.namespaced("a").list(&web).len(), 1);
//! assert!(lister.namespaced("b").get("web-2").is_some());
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub use kube::core::{Expression, Selector, SelectorExt};

use crate::key::ObjectKey;
use crate::store::{NAMESPACE_INDEX, Store, StoreError};

/// Why a label selector string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A requirement has no key (e.g. `=x` or `, ,`).
    #[error("label selector requirement {requirement:?} has no key")]
    MissingKey {
        /// The offending requirement.
        requirement: String,
    },
    /// A key or value has characters a label cannot have, or is too long.
    #[error("invalid label {what} {text:?} in selector requirement {requirement:?}")]
    InvalidLabel {
        /// `"key"` or `"value"`.
        what: &'static str,
        /// The offending key or value.
        text: String,
        /// The requirement it appeared in.
        requirement: String,
    },
    /// A requirement uses an operator kube's [`Expression`] has no form for (`>`, `<`) or an
    /// unknown one.
    #[error("unsupported operator in label selector requirement {requirement:?}")]
    UnsupportedOperator {
        /// The offending requirement.
        requirement: String,
    },
    /// Parentheses are missing or unbalanced, or a set is empty.
    #[error("malformed value set in label selector requirement {requirement:?}")]
    MalformedSet {
        /// The offending requirement.
        requirement: String,
    },
}

/// Parses a label selector in the Kubernetes string syntax (`labels.Parse`): comma-separated
/// requirements `key`, `!key`, `key=value`, `key==value`, `key!=value`, `key in (a,b)`,
/// `key notin (a,b)`. An empty string selects everything.
///
/// ```
/// use reflex_informer::lister::{parse_selector, SelectorError};
/// let s = parse_selector("app=web,tier!=db,env in (prod, staging),!legacy").unwrap();
/// assert_eq!(s.to_string(), "app=web,tier!=db,env in (prod,staging),!legacy");
/// assert!(matches!(parse_selector("a>1"), Err(SelectorError::UnsupportedOperator { .. })));
/// ```
pub fn parse_selector(text: &str) -> Result<Selector, SelectorError> {
    let mut exprs = Vec::new();
    for requirement in split_requirements(text) {
        let requirement = requirement.trim();
        if requirement.is_empty() {
            if text.trim().is_empty() {
                continue;
            }
            return Err(SelectorError::MissingKey {
                requirement: requirement.into(),
            });
        }
        exprs.push(parse_requirement(requirement)?);
    }
    Ok(exprs.into_iter().collect())
}

/// Splits at commas outside parentheses.
fn split_requirements(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(req: &str) -> Result<Expression, SelectorError> {
    let key_err = |key: &str| -> Result<String, SelectorError> {
        let key = key.trim();
        if key.is_empty() {
            return Err(SelectorError::MissingKey {
                requirement: req.into(),
            });
        }
        if !valid_key(key) {
            return Err(SelectorError::InvalidLabel {
                what: "key",
                text: key.into(),
                requirement: req.into(),
            });
        }
        Ok(key.to_owned())
    };
    let value_err = |value: &str| -> Result<String, SelectorError> {
        let value = value.trim();
        if !valid_value(value) {
            return Err(SelectorError::InvalidLabel {
                what: "value",
                text: value.into(),
                requirement: req.into(),
            });
        }
        Ok(value.to_owned())
    };
    if req.contains('>') || req.contains('<') {
        return Err(SelectorError::UnsupportedOperator {
            requirement: req.into(),
        });
    }
    if let Some(rest) = req.strip_prefix('!') {
        return Ok(Expression::DoesNotExist(key_err(rest)?));
    }
    if let Some((key, value)) = req.split_once("!=") {
        return Ok(Expression::NotEqual(key_err(key)?, value_err(value)?));
    }
    if let Some((key, value)) = req.split_once("==").or_else(|| req.split_once('=')) {
        return Ok(Expression::Equal(key_err(key)?, value_err(value)?));
    }
    let mut words = req.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    let Some(rest) = words.next().map(str::trim_start) else {
        return Ok(Expression::Exists(key_err(key)?));
    };
    let (negated, set) = if let Some(set) = rest.strip_prefix("notin") {
        (true, set)
    } else if let Some(set) = rest.strip_prefix("in") {
        (false, set)
    } else {
        return Err(SelectorError::UnsupportedOperator {
            requirement: req.into(),
        });
    };
    let inner = set
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| SelectorError::MalformedSet {
            requirement: req.into(),
        })?;
    let values = inner
        .split(',')
        .map(value_err)
        .collect::<Result<BTreeSet<String>, _>>()?;
    if inner.trim().is_empty() || values.is_empty() {
        return Err(SelectorError::MalformedSet {
            requirement: req.into(),
        });
    }
    let key = key_err(key)?;
    Ok(if negated {
        Expression::NotIn(key, values)
    } else {
        Expression::In(key, values)
    })
}

fn label_chars(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `[prefix/]name`: name up to 63 label characters, prefix a DNS subdomain up to 253.
fn valid_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
    });
    prefix_ok && !name.is_empty() && name.len() <= 63 && label_chars(name)
}

/// Empty, or up to 63 label characters.
fn valid_value(value: &str) -> bool {
    value.len() <= 63 && label_chars(value)
}

fn labels_match<K: kube::Resource>(selector: &Selector, obj: &K) -> bool {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    selector.selects_all() || selector.matches(obj.meta().labels.as_ref().unwrap_or(&EMPTY))
}

/// Read access to an informer's store. Cheap to clone; every read is lock-free.
pub struct Lister<K> {
    store: Store<K>,
}

impl<K> Clone for Lister<K> {
    fn clone(&self) -> Self {
        Lister {
            store: self.store.clone(),
        }
    }
}

impl<K> std::fmt::Debug for Lister<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Lister").field(&self.store).finish()
    }
}

impl<K> Lister<K>
where
    K: kube::Resource + Send + Sync + 'static,
{
    /// A lister over `store` (an [`Indexer`](crate::store::Indexer) or its read-only
    /// [`Store`]).
    pub fn new(store: impl Into<Store<K>>) -> Self {
        Lister {
            store: store.into(),
        }
    }

    /// The store this lister reads.
    pub fn store(&self) -> &Store<K> {
        &self.store
    }

    /// Every object whose labels match `selector` (one consistent snapshot).
    pub fn list(&self, selector: &Selector) -> Vec<Arc<K>> {
        let snapshot = self.store.snapshot();
        snapshot
            .iter()
            .filter_map(|(_, obj)| labels_match(selector, obj.as_ref()).then_some(obj))
            .collect()
    }

    /// The object stored under `key`.
    pub fn get_by_key(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.store.get_by_key(key)
    }

    /// The objects indexed under `value` in index `name`.
    pub fn by_index(&self, name: &str, value: &str) -> Result<Vec<Arc<K>>, StoreError> {
        self.store.by_index(name, value)
    }

    /// A handle for many reads in a row that lends objects instead of cloning them (see
    /// [`Reader`](crate::store::Reader)): for loops over many keys, one per worker.
    pub fn reader(&self) -> crate::store::Reader<K> {
        self.store.reader()
    }

    /// A view of one namespace.
    pub fn namespaced(&self, namespace: &str) -> NamespacedLister<K> {
        NamespacedLister {
            store: self.store.clone(),
            namespace: Arc::from(namespace),
        }
    }
}

/// A [`Lister`] limited to one namespace; lists use the namespace index, not a scan.
pub struct NamespacedLister<K> {
    store: Store<K>,
    namespace: Arc<str>,
}

impl<K> Clone for NamespacedLister<K> {
    fn clone(&self) -> Self {
        NamespacedLister {
            store: self.store.clone(),
            namespace: self.namespace.clone(),
        }
    }
}

impl<K> std::fmt::Debug for NamespacedLister<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespacedLister")
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl<K> NamespacedLister<K>
where
    K: kube::Resource + Send + Sync + 'static,
{
    /// The namespace this view reads.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The object named `name` in this namespace.
    pub fn get(&self, name: &str) -> Option<Arc<K>> {
        self.store
            .get_by_key(&ObjectKey::new(Some(&*self.namespace), name))
    }

    /// Every object in this namespace whose labels match `selector`, in name order.
    pub fn list(&self, selector: &Selector) -> Vec<Arc<K>> {
        // The namespace index is built in and cannot be removed, so this cannot fail; an empty
        // answer is still the right one if it ever did.
        self.store.with_snapshot(|snapshot| {
            snapshot
                .by_index_where(NAMESPACE_INDEX, &self.namespace, |obj| {
                    labels_match(selector, obj)
                })
                .unwrap_or_default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_split_at_commas_outside_parentheses() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[""]),
            ("a=b", &["a=b"]),
            ("a=b,c", &["a=b", "c"]),
            ("x in (a,b),y", &["x in (a,b)", "y"]),
            ("x notin (a,b),y in (c,d)", &["x notin (a,b)", "y in (c,d)"]),
        ];
        for (text, want) in cases {
            assert_eq!(split_requirements(text), *want, "{text:?}");
        }
    }

    #[test]
    fn label_keys_and_values_follow_kubernetes_rules() {
        for (key, ok) in [
            ("app", true),
            ("app.kubernetes.io/name", true),
            ("a_b-c.d", true),
            ("", false),
            ("/name", false),
            ("UPPER.example/name", false),
            (&"x".repeat(64) as &str, false),
        ] {
            assert_eq!(valid_key(key), ok, "key {key:?}");
        }
        for (value, ok) in [
            ("", true),
            ("v1.2_3-x", true),
            ("a b", false),
            ("a/b", false),
        ] {
            assert_eq!(valid_value(value), ok, "value {value:?}");
        }
    }
}
