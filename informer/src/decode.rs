//! Decode-time projection: JSON decoding that never builds what nobody reads.
//!
//! Decoding is where an informer spends its time and memory: a typed `k8s_openapi` Pod takes
//! several times its JSON once decoded, and a large share of it is `metadata.managedFields`, a
//! field no controller reads (the measured figures are in
//! the repository's `BENCHMARKS.md`). client-go's transform (and a transform
//! on the store) can only drop such a field *after* it was fully built. The [`Decoder`] here drops
//! it *while* parsing: a thin [`Deserializer`] wrapper watches the object's keys along a small
//! tree of configured paths and, when a key is to be skipped, consumes its value with
//! [`IgnoredAny`], so nothing of it is ever allocated.
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
//! The same machinery decodes a whole list response item by item straight into a `Vec<K>`
//! ([`Decoder::decode_list`]) and one line of a watch stream ([`Decoder::decode_event`]); the raw
//! source [`RawApi`](crate::source::raw::RawApi) uses both. Together with a *projection* (a small
//! struct with `metadata` and only the fields a controller reads, see [`impl_projection!`]) an
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

use serde::Deserialize;
use serde::de::value::{BorrowedStrDeserializer, StringDeserializer};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess,
    SeqAccess, Visitor,
};

use crate::source::{INITIAL_EVENTS_END_ANNOTATION, ListPage, WatchEvent};

/// Why a response, an event or a skip path could not be decoded.
#[derive(Debug, thiserror::Error)]
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

    /// A decoder that skips nothing (plain serde decoding).
    pub fn full() -> Self {
        Decoder::new(&DecodeOptions::full())
    }

    /// The seed that decodes one `K` with this decoder's skipping, for use inside other
    /// deserializers (for example with [`SeqAccess::next_element_seed`]).
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

    /// Decodes a list response (`{"kind":"PodList","metadata":{...},"items":[...]}`): each item
    /// straight into the page's `Vec<K>`, with the list's resourceVersion and continue token.
    pub fn decode_list<K: DeserializeOwned>(
        &self,
        json: &[u8],
    ) -> Result<ListPage<K>, DecodeError> {
        run(
            json,
            "list response",
            ListSeed::<K> {
                node: &self.root,
                _k: PhantomData,
            },
        )
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

/// A [`DeserializeSeed`] that runs `S` through the skipping wrapper. Obtained from
/// [`Decoder::seed`].
pub struct SkippingSeed<'p, S> {
    seed: S,
    node: &'p Node,
}

impl<S> fmt::Debug for SkippingSeed<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SkippingSeed")
            .field("node", self.node)
            .finish()
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for SkippingSeed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        if self.node.is_transparent() {
            self.seed.deserialize(deserializer)
        } else {
            self.seed.deserialize(Skipping {
                de: deserializer,
                node: self.node,
            })
        }
    }
}

/// A [`Deserializer`] that hands maps to the visitor through [`SkipMap`].
struct Skipping<'p, D> {
    de: D,
    node: &'p Node,
}

macro_rules! pass_through {
    ($($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.de.$method(visitor)
        }
    )*};
}

macro_rules! wrapped {
    ($($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.de.$method(Visit { visitor, node: self.node })
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Skipping<'_, D> {
    type Error = D::Error;

    pass_through!(
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_unit,
        deserialize_identifier,
        deserialize_ignored_any,
    );
    wrapped!(
        deserialize_any,
        deserialize_option,
        deserialize_seq,
        deserialize_map
    );

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let node = self.node;
        self.de
            .deserialize_newtype_struct(name, Visit { visitor, node })
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let node = self.node;
        self.de.deserialize_tuple(len, Visit { visitor, node })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let node = self.node;
        self.de
            .deserialize_tuple_struct(name, len, Visit { visitor, node })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let node = self.node;
        self.de
            .deserialize_struct(name, fields, Visit { visitor, node })
    }

    /// Enums are decoded as they are: paths do not descend into enum payloads.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_enum(name, variants, visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

/// A [`Visitor`] wrapper that keeps the skipping on maps, sequences and options it is given.
struct Visit<'p, V> {
    visitor: V,
    node: &'p Node,
}

macro_rules! visit_forward {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.visitor.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Visit<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    visit_forward!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>),
    );

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visitor.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visitor.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        self.visitor.visit_some(Skipping {
            de,
            node: self.node,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        self.visitor.visit_newtype_struct(Skipping {
            de,
            node: self.node,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.visitor.visit_seq(SkipSeq {
            seq,
            node: self.node,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.visitor.visit_map(SkipMap {
            map,
            node: self.node,
            child: None,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.visitor.visit_enum(data)
    }
}

/// Arrays are transparent: every element is decoded at the array's own node.
struct SkipSeq<'p, A> {
    seq: A,
    node: &'p Node,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for SkipSeq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.seq.next_element_seed(SkippingSeed {
            seed,
            node: self.node,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.seq.size_hint()
    }
}

/// The heart of it: reads each key first, skips the value of a key marked `skip` with
/// [`IgnoredAny`] without the target type ever seeing the key, and descends into keys on the way
/// to a skipped path.
struct SkipMap<'p, A> {
    map: A,
    node: &'p Node,
    /// The node of the key just handed out, if a path continues below it.
    child: Option<&'p Node>,
}

/// A map key as read: borrowed from the input when it had no escapes.
enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(s) => s,
            Key::Owned(s) => s,
        }
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Key<'de>, D::Error> {
        de.deserialize_str(KeySeed)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string map key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
        Ok(Key::Owned(v))
    }
}

impl<'de, 'p, A: MapAccess<'de>> MapAccess<'de> for SkipMap<'p, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.map.next_key_seed(KeySeed)? else {
                return Ok(None);
            };
            self.child = match self.node.child(key.as_str()) {
                Some(node) if node.skip => {
                    self.map.next_value::<IgnoredAny>()?;
                    continue;
                }
                other => other,
            };
            return match key {
                Key::Borrowed(s) => seed.deserialize(BorrowedStrDeserializer::<A::Error>::new(s)),
                Key::Owned(s) => seed.deserialize(StringDeserializer::<A::Error>::new(s)),
            }
            .map(Some);
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        match self.child.take() {
            Some(node) => self.map.next_value_seed(SkippingSeed { seed, node }),
            None => self.map.next_value_seed(seed),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

/// The list's own metadata: all a Reflector needs from it.
#[derive(Deserialize)]
struct ListMetaLite {
    #[serde(rename = "resourceVersion", default)]
    resource_version: Option<String>,
    #[serde(rename = "continue", default)]
    continue_token: Option<String>,
}

struct ListSeed<'p, K> {
    node: &'p Node,
    _k: PhantomData<fn() -> K>,
}

impl<'de, K: Deserialize<'de>> DeserializeSeed<'de> for ListSeed<'_, K> {
    type Value = ListPage<K>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<ListPage<K>, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de, K: Deserialize<'de>> Visitor<'de> for ListSeed<'_, K> {
    type Value = ListPage<K>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list response object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ListPage<K>, A::Error> {
        let mut page = ListPage {
            items: Vec::new(),
            resource_version: String::new(),
            continue_token: None,
        };
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match key.as_str() {
                "items" => {
                    page.items = map.next_value_seed(ItemsSeed::<K> {
                        node: self.node,
                        _k: PhantomData,
                    })?;
                }
                "metadata" => {
                    let meta: Option<ListMetaLite> = map.next_value()?;
                    if let Some(meta) = meta {
                        page.resource_version = meta.resource_version.unwrap_or_default();
                        page.continue_token = meta.continue_token.filter(|c| !c.is_empty());
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(page)
    }
}

/// `items`: `null` or an array, each element decoded with the skipping seed into the vector.
struct ItemsSeed<'p, K> {
    node: &'p Node,
    _k: PhantomData<fn() -> K>,
}

impl<'de, K: Deserialize<'de>> DeserializeSeed<'de> for ItemsSeed<'_, K> {
    type Value = Vec<K>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Vec<K>, D::Error> {
        de.deserialize_option(self)
    }
}

impl<'de, K: Deserialize<'de>> Visitor<'de> for ItemsSeed<'_, K> {
    type Value = Vec<K>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of items or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Vec<K>, E> {
        Ok(Vec::new())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Vec<K>, E> {
        Ok(Vec::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Vec<K>, D::Error> {
        de.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<K>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element_seed(SkippingSeed {
            seed: PhantomData::<K>,
            node: self.node,
        })? {
            items.push(item);
        }
        Ok(items)
    }
}

#[derive(Clone, Copy)]
enum EventType {
    Added,
    Modified,
    Deleted,
    Bookmark,
    Error,
}

impl EventType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADDED" => EventType::Added,
            "MODIFIED" => EventType::Modified,
            "DELETED" => EventType::Deleted,
            "BOOKMARK" => EventType::Bookmark,
            "ERROR" => EventType::Error,
            _ => return None,
        })
    }
}

/// A bookmark's object: only its resourceVersion and annotations matter.
#[derive(Deserialize)]
struct BookmarkObject {
    #[serde(default)]
    metadata: BookmarkMeta,
}

#[derive(Deserialize, Default)]
struct BookmarkMeta {
    #[serde(rename = "resourceVersion", default)]
    resource_version: String,
    #[serde(default)]
    annotations: Option<std::collections::BTreeMap<String, String>>,
}

struct EventSeed<'p, K> {
    node: &'p Node,
    _k: PhantomData<fn() -> K>,
}

type EventResult<K> = Result<WatchEvent<K>, DecodeError>;

impl<'de, K: Deserialize<'de>> DeserializeSeed<'de> for EventSeed<'_, K> {
    type Value = EventResult<K>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<EventResult<K>, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'p, K> EventSeed<'p, K> {
    /// Decodes the event's object according to its type.
    fn object<'de, D: Deserializer<'de>>(
        &self,
        kind: EventType,
        de: D,
    ) -> Result<WatchEvent<K>, D::Error>
    where
        K: Deserialize<'de>,
    {
        let seed = SkippingSeed {
            seed: PhantomData::<K>,
            node: self.node,
        };
        Ok(match kind {
            EventType::Added => WatchEvent::Added(seed.deserialize(de)?),
            EventType::Modified => WatchEvent::Modified(seed.deserialize(de)?),
            EventType::Deleted => WatchEvent::Deleted(seed.deserialize(de)?),
            EventType::Bookmark => {
                let b = BookmarkObject::deserialize(de)?;
                WatchEvent::Bookmark {
                    initial_events_end: b
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(INITIAL_EVENTS_END_ANNOTATION))
                        .is_some_and(|v| v == "true"),
                    resource_version: b.metadata.resource_version,
                }
            }
            EventType::Error => {
                let status = kube::core::Status::deserialize(de)?;
                WatchEvent::Error(crate::source::api::from_kube_status(&status))
            }
        })
    }
}

impl<'de, K: Deserialize<'de>> Visitor<'de> for EventSeed<'_, K> {
    type Value = EventResult<K>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a watch event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EventResult<K>, A::Error> {
        // `type` normally comes first; if the object comes first it is buffered and decoded
        // (still with skipping) once the type is known.
        let mut kind: Option<Result<EventType, String>> = None;
        let mut event: Option<WatchEvent<K>> = None;
        let mut buffered: Option<serde_json::Value> = None;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match key.as_str() {
                "type" => {
                    let s = map.next_value_seed(KeySeed)?;
                    kind = Some(EventType::parse(s.as_str()).ok_or_else(|| s.as_str().to_owned()));
                }
                "object" => match &kind {
                    Some(Ok(k)) => {
                        let k = *k;
                        event = Some(map.next_value_seed(ObjectSeed {
                            outer: &self,
                            kind: k,
                        })?);
                    }
                    Some(Err(_)) => {
                        map.next_value::<IgnoredAny>()?;
                    }
                    None => buffered = Some(map.next_value()?),
                },
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let kind = match kind {
            None => return Ok(Err(DecodeError::MissingEventField("type"))),
            Some(Err(unknown)) => return Ok(Err(DecodeError::UnknownEventType(unknown))),
            Some(Ok(kind)) => kind,
        };
        if let Some(event) = event {
            return Ok(Ok(event));
        }
        match buffered {
            Some(value) => Ok(self
                .object(kind, value)
                .map_err(|source| DecodeError::Json {
                    what: "watch event",
                    source,
                })),
            None => Ok(Err(DecodeError::MissingEventField("object"))),
        }
    }
}

struct ObjectSeed<'a, 'p, K> {
    outer: &'a EventSeed<'p, K>,
    kind: EventType,
}

impl<'de, K: Deserialize<'de>> DeserializeSeed<'de> for ObjectSeed<'_, '_, K> {
    type Value = WatchEvent<K>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<WatchEvent<K>, D::Error> {
        self.outer.object(self.kind, de)
    }
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

/// What [`impl_projection!`] expands to refers to; not part of the API.
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
    fn full_decoder_is_transparent_at_the_root() {
        assert!(Decoder::full().root.is_transparent());
        assert!(!Decoder::default().root.is_transparent());
    }
}
