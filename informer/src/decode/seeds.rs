//! The seeds of the list and watch-event shapes: a list's `metadata` and `items`, a watch
//! event's `type` and `object` (with bookmarks read as metadata only), each item decoded through
//! the skipping wrapper.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::source::{INITIAL_EVENTS_END_ANNOTATION, WatchEvent};

use super::skip::*;
use super::*;

/// The list's own metadata: all a Reflector needs from it.
#[derive(Deserialize)]
pub(super) struct ListMetaLite {
    #[serde(rename = "resourceVersion", default)]
    pub(super) resource_version: Option<String>,
    #[serde(rename = "continue", default)]
    pub(super) continue_token: Option<String>,
    #[serde(rename = "shardInfo", default)]
    pub(super) shard_info: Option<ShardInfoLite>,
}

/// `metadata.shardInfo` of a list: the shard selector the server applied.
#[derive(Deserialize)]
pub(super) struct ShardInfoLite {
    #[serde(default)]
    pub(super) selector: String,
}

#[derive(Clone, Copy)]
pub(super) enum EventType {
    Added,
    Modified,
    Deleted,
    Bookmark,
    Error,
}

impl EventType {
    pub(super) fn parse(s: &str) -> Option<Self> {
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
pub(super) struct BookmarkObject {
    #[serde(default)]
    pub(super) metadata: BookmarkMeta,
}

#[derive(Deserialize, Default)]
pub(super) struct BookmarkMeta {
    #[serde(rename = "resourceVersion", default)]
    pub(super) resource_version: String,
    #[serde(default)]
    pub(super) annotations: Option<std::collections::BTreeMap<String, String>>,
}

pub(super) struct EventSeed<'p, K> {
    pub(super) node: &'p Node,
    pub(super) _k: PhantomData<fn() -> K>,
}

pub(super) type EventResult<K> = Result<WatchEvent<K>, DecodeError>;

impl<'de, K: Deserialize<'de>> DeserializeSeed<'de> for EventSeed<'_, K> {
    type Value = EventResult<K>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<EventResult<K>, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'p, K> EventSeed<'p, K> {
    /// Decodes the event's object according to its type.
    pub(super) fn object<'de, D: Deserializer<'de>>(
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

pub(super) struct ObjectSeed<'a, 'p, K> {
    pub(super) outer: &'a EventSeed<'p, K>,
    pub(super) kind: EventType,
}

impl<'de, K: Deserialize<'de>> DeserializeSeed<'de> for ObjectSeed<'_, '_, K> {
    type Value = WatchEvent<K>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<WatchEvent<K>, D::Error> {
        self.outer.object(self.kind, de)
    }
}
