//! The seeds of the list and watch-event shapes: a list's `metadata` and `items`, a watch
//! event's `type` and `object` (with bookmarks read as metadata only), each item decoded through
//! the skipping wrapper.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::source::{INITIAL_EVENTS_END_ANNOTATION, ListPage, WatchEvent};

use super::skip::*;
use super::*;

/// The list's own metadata: all a Reflector needs from it.
#[derive(Deserialize)]
pub(super) struct ListMetaLite {
    #[serde(rename = "resourceVersion", default)]
    pub(super) resource_version: Option<String>,
    #[serde(rename = "continue", default)]
    pub(super) continue_token: Option<String>,
}

pub(super) struct ListSeed<'p, K> {
    pub(super) node: &'p Node,
    pub(super) _k: PhantomData<fn() -> K>,
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
pub(super) struct ItemsSeed<'p, K> {
    pub(super) node: &'p Node,
    pub(super) _k: PhantomData<fn() -> K>,
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
