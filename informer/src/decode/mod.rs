//! Decode-time projection: JSON decoding that never builds what nobody reads.
//!
//! Decoding is where an informer spends its time and memory: a typed `k8s_openapi` Pod takes
//! several times its JSON once decoded, and a large share of it is `metadata.managedFields`, a
//! field no controller reads (the measured figures are in
//! the repository's `BENCHMARKS.md`). client-go's transform (and a transform
//! on the store) can only drop such a field *after* it was fully built. The [`Decoder`] here drops
//! it *while* parsing: a thin [`Deserializer`](serde::Deserializer) wrapper watches the object's keys along a small
//! tree of configured paths and, when a key is to be skipped, consumes its value with
//! [`IgnoredAny`](serde::de::IgnoredAny), so nothing of it is ever allocated.
//!
//! - By default `/metadata/managedFields` is skipped; [`DecodeOptions::keep_managed_fields`]
//!   opts out. Further paths are [`SkipPath`]s (JSON pointers, RFC 6901), for example the
//!   `kubectl.kubernetes.io/last-applied-configuration` annotation or `/status/conditions`.
//! - Arrays are transparent: a path that reaches an array applies to each of its elements, so
//!   `/spec/containers/env` drops the `env` of every container.
//! - Outside the configured paths the wrapper is not in the way: a subtree that holds no skipped
//!   path is handed to the target type's own `Deserialize` untouched.
//! - Only optional fields can be skipped: a skipped field the target type requires makes the
//!   decode fail with [`DecodeError::Json`] ("missing field"), never a panic.
//!
//! The same machinery decodes a list response item by item as its bytes arrive, each item
//! straight into an `Arc<K>` ([`ListDecoder`], [`Decoder::decode_list`] for a whole body), and
//! one line of a watch stream ([`Decoder::decode_event`]); the raw source
//! [`RawApi`](crate::source::raw::RawApi) uses both, so neither a list body nor a watch stream is
//! ever held whole. Together with a *projection* (a small
//! struct with `metadata` and only the fields a controller reads, see [`impl_projection!`](crate::impl_projection)) an
//! informer holds a fraction of the memory of a typed one.
//!
//! ```
//! use k8s_openapi::api::core::v1::Pod;
//! use reflex_informer::decode::{DecodeOptions, Decoder, SkipPath};
//!
//! let json = br#"{"metadata":{"name":"web-0","managedFields":[{"manager":"kubectl"}],
//!   "annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{...}","team":"a"}}}"#;
//! let decoder = Decoder::new(&DecodeOptions::default().skip(SkipPath::pointer(
//!     "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration",
//! )?));
//! let pod: Pod = decoder.decode(json)?;
//! assert_eq!(pod.metadata.name.as_deref(), Some("web-0"));
//! assert!(pod.metadata.managed_fields.is_none());
//! let annotations = pod.metadata.annotations.unwrap();
//! assert_eq!(annotations.len(), 1);
//! assert_eq!(annotations["team"], "a");
//! # Ok::<(), reflex_informer::decode::DecodeError>(())
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;
use std::sync::Arc;

use serde::de::{DeserializeOwned, DeserializeSeed};

use crate::source::{ListPage, WatchEvent};

mod list;
mod seeds;
mod skip;

pub use list::ListDecoder;
use seeds::*;
pub use skip::SkippingSeed;

/// Why a response, an event or a skip path could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The JSON is malformed or does not fit the target type.
    #[error("malformed JSON in {what}")]
    Json {
        /// What was being decoded: `"object"`, `"list response"` or `"watch event"`.
        what: &'static str,
        /// serde_json's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// The structure of a list response is broken outside its items: `expected` says what the
    /// decoder looked for at byte `offset` of the body (an incomplete body ends with
    /// "the rest of the list").
    #[error("malformed JSON in {what} at byte {offset}: expected {expected}")]
    Syntax {
        /// What was being decoded (`"list response"`).
        what: &'static str,
        /// The offset in the body, in bytes.
        offset: u64,
        /// What the decoder expected there.
        expected: &'static str,
    },
    /// An element of a list response's `items` is malformed or does not fit the target type.
    #[error("list item {index} (at byte {offset} of the body) does not decode")]
    ListItem {
        /// The element's position in `items`, from 0.
        index: usize,
        /// Where the element starts in the body, in bytes.
        offset: u64,
        /// serde_json's error; its line and column count from the element's start.
        #[source]
        source: serde_json::Error,
    },
    /// A watch event's `type` is none of `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`, `ERROR`.
    #[error("watch event of unknown type {0:?}")]
    UnknownEventType(String),
    /// A watch event lacks its `type` or its `object`.
    #[error("watch event without {0:?}")]
    MissingEventField(&'static str),
    /// A watch event is longer than the configured limit
    /// ([`DecodeOptions::max_event_bytes`]); `size` is what was seen of it when it was refused
    /// (at least `limit + 1` bytes: the rest is not waited for).
    #[error("watch event of {size} bytes or more exceeds the limit of {limit} bytes")]
    EventTooLarge {
        /// The configured limit, in bytes.
        limit: usize,
        /// The bytes of the event seen so far.
        size: usize,
    },
    /// A skip path is not a usable JSON pointer.
    #[error("invalid skip path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A path to a JSON value to skip while decoding, as a list of object keys from the object's root.
///
/// Arrays on the way are transparent (the rest of the path applies to every element).
///
/// ```
/// use reflex_informer::decode::SkipPath;
///
/// let p: SkipPath = "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration".parse()?;
/// assert_eq!(p.segments(), ["metadata", "annotations", "kubectl.kubernetes.io/last-applied-configuration"]);
/// assert_eq!(SkipPath::new(["status", "conditions"])?.to_string(), "/status/conditions");
/// assert!(SkipPath::pointer("status/conditions").is_err());
/// # Ok::<(), reflex_informer::decode::DecodeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SkipPath(Vec<String>);

impl SkipPath {
    /// A path from its keys; it must have at least one.
    pub fn new<I, S>(segments: I) -> Result<Self, DecodeError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let segments: Vec<String> = segments.into_iter().map(Into::into).collect();
        if segments.is_empty() {
            return Err(DecodeError::InvalidPath {
                path: String::new(),
                reason: "a skip path needs at least one key (the whole object cannot be skipped)",
            });
        }
        Ok(SkipPath(segments))
    }

    /// A path from a JSON pointer (RFC 6901): `/`-separated keys, `~1` for `/` and `~0` for `~`
    /// inside a key.
    pub fn pointer(pointer: &str) -> Result<Self, DecodeError> {
        let invalid = |reason| DecodeError::InvalidPath {
            path: pointer.to_owned(),
            reason,
        };
        let rest = pointer
            .strip_prefix('/')
            .ok_or_else(|| invalid("a JSON pointer starts with '/'"))?;
        let mut segments = Vec::new();
        for raw in rest.split('/') {
            let mut key = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                match c {
                    '~' => match chars.next() {
                        Some('0') => key.push('~'),
                        Some('1') => key.push('/'),
                        _ => return Err(invalid("'~' must be followed by '0' or '1'")),
                    },
                    c => key.push(c),
                }
            }
            segments.push(key);
        }
        SkipPath::new(segments)
    }

    /// `/metadata/managedFields`, skipped unless [`DecodeOptions::keep_managed_fields`] is set.
    pub fn managed_fields() -> Self {
        SkipPath(vec!["metadata".into(), "managedFields".into()])
    }

    /// The keys of the path, from the object's root.
    pub fn segments(&self) -> &[String] {
        &self.0
    }
}

impl FromStr for SkipPath {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SkipPath::pointer(s)
    }
}

impl fmt::Display for SkipPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for segment in &self.0 {
            write!(f, "/{}", segment.replace('~', "~0").replace('/', "~1"))?;
        }
        Ok(())
    }
}

/// The default [`DecodeOptions::max_event_bytes`]: 64 MiB, far above any object etcd stores
/// (1.5 MiB by default) and far below what would exhaust a controller's memory.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 * 1024 * 1024;

/// What a [`Decoder`] skips, and how large a watch event it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Keep `metadata.managedFields` (by default it is skipped).
    pub keep_managed_fields: bool,
    /// Further paths to skip.
    pub skip: Vec<SkipPath>,
    /// The largest watch event (one line of a watch stream) accepted, in bytes; a larger one is
    /// refused with [`DecodeError::EventTooLarge`] instead of being buffered without bound.
    /// Default [`DEFAULT_MAX_EVENT_BYTES`].
    pub max_event_bytes: usize,
}

impl Default for DecodeOptions {
    /// Skip `metadata.managedFields`, accept events up to [`DEFAULT_MAX_EVENT_BYTES`].
    fn default() -> Self {
        DecodeOptions {
            keep_managed_fields: false,
            skip: Vec::new(),
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
        }
    }
}

impl DecodeOptions {
    /// Decode everything: keep managedFields, skip nothing.
    pub fn full() -> Self {
        DecodeOptions {
            keep_managed_fields: true,
            ..DecodeOptions::default()
        }
    }

    /// These options, also skipping `path`.
    pub fn skip(mut self, path: SkipPath) -> Self {
        self.skip.push(path);
        self
    }

    /// These options, accepting watch events of at most `bytes` bytes.
    pub fn max_event_bytes(mut self, bytes: usize) -> Self {
        self.max_event_bytes = bytes;
        self
    }
}

/// One level of the tree of skipped paths.
#[derive(Debug, Default)]
struct Node {
    /// Skip this value entirely.
    skip: bool,
    /// Keys below this value on the way to a skipped value (few, so a vector beats a map).
    children: Vec<(Box<str>, Node)>,
}

impl Node {
    fn insert(&mut self, path: &[String]) {
        let Some((first, rest)) = path.split_first() else {
            self.skip = true;
            return;
        };
        let index = match self.children.iter().position(|(k, _)| **k == **first) {
            Some(i) => i,
            None => {
                self.children.push((first.as_str().into(), Node::default()));
                self.children.len() - 1
            }
        };
        self.children[index].1.insert(rest);
    }

    fn child(&self, key: &str) -> Option<&Node> {
        self.children
            .iter()
            .find(|(k, _)| **k == *key)
            .map(|(_, n)| n)
    }

    /// Nothing at or below this value is skipped.
    fn is_transparent(&self) -> bool {
        !self.skip && self.children.is_empty()
    }
}

/// A JSON decoder that skips configured paths while parsing. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Decoder {
    root: Arc<Node>,
    max_event_bytes: usize,
}

impl Default for Decoder {
    /// Skips `metadata.managedFields` only.
    fn default() -> Self {
        Decoder::new(&DecodeOptions::default())
    }
}

impl Decoder {
    /// A decoder for these options.
    pub fn new(options: &DecodeOptions) -> Self {
        let mut root = Node::default();
        if !options.keep_managed_fields {
            root.insert(SkipPath::managed_fields().segments());
        }
        for path in &options.skip {
            root.insert(path.segments());
        }
        Decoder {
            root: Arc::new(root),
            max_event_bytes: options.max_event_bytes,
        }
    }

    /// The largest watch event accepted, in bytes ([`DecodeOptions::max_event_bytes`]).
    pub fn max_event_bytes(&self) -> usize {
        self.max_event_bytes
    }

    /// Whether `metadata.managedFields` is skipped (by default, or because `metadata` itself
    /// is): then nothing is lost when the server is asked not to send them.
    pub fn skips_managed_fields(&self) -> bool {
        let mut node = &*self.root;
        for segment in ["metadata", "managedFields"] {
            if node.skip {
                return true;
            }
            match node.child(segment) {
                Some(child) => node = child,
                None => return false,
            }
        }
        node.skip
    }

    /// A decoder that skips nothing (plain serde decoding).
    pub fn full() -> Self {
        Decoder::new(&DecodeOptions::full())
    }

    /// The seed that decodes one `K` with this decoder's skipping, for use inside other
    /// deserializers (for example with [`SeqAccess::next_element_seed`](serde::de::SeqAccess::next_element_seed)).
    pub fn seed<K>(&self) -> SkippingSeed<'_, PhantomData<K>> {
        SkippingSeed {
            seed: PhantomData,
            node: &self.root,
        }
    }

    /// Decodes one object.
    pub fn decode<K: DeserializeOwned>(&self, json: &[u8]) -> Result<K, DecodeError> {
        run(json, "object", self.seed::<K>())
    }

    /// Decodes a whole list response (`{"kind":"PodList","metadata":{...},"items":[...]}`): each
    /// item straight into an `Arc` in the page, with the list's resourceVersion and continue
    /// token. The same as one [`push`](ListDecoder::push) of the body into a
    /// [`list_decoder`](Self::list_decoder).
    pub fn decode_list<K: DeserializeOwned>(
        &self,
        json: &[u8],
    ) -> Result<ListPage<K>, DecodeError> {
        let mut list = self.list_decoder();
        list.push(json)?;
        list.finish()
    }

    /// A decoder of one list response that takes its body in chunks as they arrive and decodes
    /// each item as soon as its last byte is in (see [`ListDecoder`]).
    pub fn list_decoder<K: DeserializeOwned>(&self) -> ListDecoder<K> {
        ListDecoder::new(self.root.clone())
    }

    /// Decodes one watch event (`{"type":"ADDED","object":{...}}`, one line of a watch stream).
    /// Bookmarks and `ERROR` statuses become their [`WatchEvent`] variants. An event longer than
    /// [`max_event_bytes`](Self::max_event_bytes) is refused with [`DecodeError::EventTooLarge`].
    pub fn decode_event<K: DeserializeOwned>(
        &self,
        json: &[u8],
    ) -> Result<WatchEvent<K>, DecodeError> {
        if json.len() > self.max_event_bytes {
            return Err(DecodeError::EventTooLarge {
                limit: self.max_event_bytes,
                size: json.len(),
            });
        }
        run(
            json,
            "watch event",
            EventSeed::<K> {
                node: &self.root,
                _k: PhantomData,
            },
        )?
    }
}

fn run<'de, S: DeserializeSeed<'de>>(
    json: &'de [u8],
    what: &'static str,
    seed: S,
) -> Result<S::Value, DecodeError> {
    let json_err = |source| DecodeError::Json { what, source };
    let mut de = serde_json::Deserializer::from_slice(json);
    let value = seed.deserialize(&mut de).map_err(json_err)?;
    de.end().map_err(json_err)?;
    Ok(value)
}

/// Implements [`kube::Resource`] for a *projection*: a struct with `metadata: ObjectMeta` and
/// only the fields a controller reads of a known resource type, decoded from that type's JSON.
/// Kind, group, version, plural and scope are those of the full type, so the projection can be
/// listed and watched (for example by [`RawApi`](crate::source::raw::RawApi)) and keyed like it.
///
/// ```
/// use k8s_openapi::api::core::v1::Pod;
/// use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
/// use kube::Resource;
/// use reflex_informer::decode::Decoder;
///
/// /// What this controller reads of a Pod: its node and phase.
/// #[derive(Debug, Clone, serde::Deserialize)]
/// struct PodPlacement {
///     metadata: ObjectMeta,
///     #[serde(default)]
///     spec: PlacementSpec,
///     #[serde(default)]
///     status: PlacementStatus,
/// }
/// #[derive(Debug, Clone, Default, serde::Deserialize)]
/// struct PlacementSpec {
///     #[serde(rename = "nodeName")]
///     node_name: Option<String>,
/// }
/// #[derive(Debug, Clone, Default, serde::Deserialize)]
/// struct PlacementStatus {
///     phase: Option<String>,
/// }
/// reflex_informer::impl_projection!(PodPlacement => Pod);
///
/// assert_eq!(PodPlacement::plural(&()), "pods");
/// assert_eq!(PodPlacement::url_path(&(), Some("ns")), "/api/v1/namespaces/ns/pods");
/// let json = br#"{"metadata":{"name":"a","managedFields":[{}]},
///   "spec":{"nodeName":"n1","containers":[{"name":"c","image":"i"}]},"status":{"phase":"Running"}}"#;
/// let p: PodPlacement = Decoder::default().decode(json)?;
/// assert_eq!(p.spec.node_name.as_deref(), Some("n1"));
/// assert!(p.metadata.managed_fields.is_none());
/// # Ok::<(), reflex_informer::decode::DecodeError>(())
/// ```
#[macro_export]
macro_rules! impl_projection {
    ($projection:ty => $full:ty) => {
        impl $crate::decode::__private::Resource for $projection {
            type DynamicType = ();
            type Scope = <$full as $crate::decode::__private::Resource>::Scope;

            fn kind(dt: &()) -> ::std::borrow::Cow<'_, str> {
                <$full as $crate::decode::__private::Resource>::kind(dt)
            }
            fn group(dt: &()) -> ::std::borrow::Cow<'_, str> {
                <$full as $crate::decode::__private::Resource>::group(dt)
            }
            fn version(dt: &()) -> ::std::borrow::Cow<'_, str> {
                <$full as $crate::decode::__private::Resource>::version(dt)
            }
            fn api_version(dt: &()) -> ::std::borrow::Cow<'_, str> {
                <$full as $crate::decode::__private::Resource>::api_version(dt)
            }
            fn plural(dt: &()) -> ::std::borrow::Cow<'_, str> {
                <$full as $crate::decode::__private::Resource>::plural(dt)
            }
            fn meta(&self) -> &$crate::decode::__private::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut $crate::decode::__private::ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// What [`impl_projection!`](crate::impl_projection) expands to refers to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    pub use kube::Resource;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_sharing_a_prefix_share_a_node_and_a_skipped_prefix_wins() {
        let d = Decoder::new(
            &DecodeOptions::default()
                .skip(SkipPath::pointer("/metadata/annotations/a").unwrap())
                .skip(SkipPath::pointer("/metadata").unwrap()),
        );
        assert_eq!(d.root.children.len(), 1);
        let meta = d.root.child("metadata").unwrap();
        assert!(meta.skip);
        assert_eq!(meta.children.len(), 2);
    }

    #[test]
    fn managed_fields_are_skipped_by_default_or_with_their_metadata() {
        assert!(Decoder::default().skips_managed_fields());
        assert!(!Decoder::full().skips_managed_fields());
        let meta = DecodeOptions::full().skip(SkipPath::pointer("/metadata").unwrap());
        assert!(Decoder::new(&meta).skips_managed_fields());
        let labels = DecodeOptions::full().skip(SkipPath::pointer("/metadata/labels").unwrap());
        assert!(!Decoder::new(&labels).skips_managed_fields());
    }

    #[test]
    fn full_decoder_is_transparent_at_the_root() {
        assert!(Decoder::full().root.is_transparent());
        assert!(!Decoder::default().root.is_transparent());
    }
}
