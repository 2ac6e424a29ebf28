//! Content negotiation: which representation of an object a request asked for.
//!
//! A real apiserver reads the `Accept` header as a comma-separated list of media ranges and
//! answers with the first one it can produce. Besides plain JSON it can transform objects into
//! `meta.k8s.io` `PartialObjectMetadata` (single objects and watch events) and
//! `PartialObjectMetadataList` (lists): only `metadata`, with the item's `apiVersion`/`kind`
//! replaced by the partial kind. Metadata-only informers (kube's `list_metadata`/`watch_metadata`,
//! client-go's metadata client) depend on it to receive a few hundred bytes per object instead of
//! the whole object.
//!
//! The fake server serves JSON only: `as=Table` (kubectl's first choice), protobuf and any other
//! range it cannot produce are skipped, and when nothing in the list is acceptable the answer is
//! plain JSON, which is what every client here falls back to anyway.

use std::borrow::Cow;

use serde_json::{Value, json};

/// What an object response looks like on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The stored object as JSON.
    Full,
    /// `PartialObjectMetadata`/`PartialObjectMetadataList` of `meta.k8s.io` at this version
    /// (`v1` or `v1beta1`).
    Partial(&'static str),
}

/// The shape of the response a request produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One object (get, create, update, patch, delete) or the objects of watch events.
    Object,
    /// A list (list, deletecollection).
    List,
}

/// Picks the representation of the first acceptable media range in `accept`.
///
/// `application/json` (or `*/*`, `application/*`) without an `as` parameter is plain JSON;
/// `as=PartialObjectMetadata` is acceptable for [`Shape::Object`] and `as=PartialObjectMetadataList`
/// for [`Shape::List`], both only with `g=meta.k8s.io` and `v=v1` or `v=v1beta1`. Ranges the server
/// cannot produce are skipped; an empty header or one with nothing acceptable is plain JSON.
pub fn negotiate(accept: &str, shape: Shape) -> Output {
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        if !matches!(media.as_str(), "application/json" | "application/*" | "*/*") {
            continue;
        }
        let (mut as_kind, mut group, mut version) = (None, None, None);
        for param in parts {
            let Some((k, v)) = param.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match k.trim() {
                "as" => as_kind = Some(v),
                "g" => group = Some(v),
                "v" => version = Some(v),
                _ => {}
            }
        }
        let Some(as_kind) = as_kind else {
            return Output::Full;
        };
        if group != Some("meta.k8s.io") {
            continue;
        }
        let version = match version {
            Some("v1") => "v1",
            Some("v1beta1") => "v1beta1",
            _ => continue,
        };
        match (as_kind, shape) {
            ("PartialObjectMetadata", Shape::Object)
            | ("PartialObjectMetadataList", Shape::List) => return Output::Partial(version),
            _ => continue,
        }
    }
    Output::Full
}

impl Output {
    /// One object in this representation (borrowed when full).
    pub fn object<'a>(self, obj: &'a Value) -> Cow<'a, Value> {
        match self {
            Output::Full => Cow::Borrowed(obj),
            Output::Partial(v) => Cow::Owned(partial_object(obj, v)),
        }
    }

    /// The JSON bytes of one object in this representation.
    pub fn object_bytes(self, obj: &Value) -> Vec<u8> {
        serde_json::to_vec(&*self.object(obj)).unwrap_or_default()
    }

    /// The JSON bytes of a list in this representation, written item by item so that no stored
    /// object is copied: for [`Output::Full`] the list has the resource's `apiVersion` and
    /// `{kind}List` and, as from kube-apiserver, its items carry no `apiVersion`/`kind` of their
    /// own; for [`Output::Partial`] it is a `PartialObjectMetadataList` whose items are
    /// `PartialObjectMetadata` (with both). The list's own `metadata` is kept either way.
    pub fn list_bytes<'a>(
        self,
        api_version: &str,
        item_kind: &str,
        meta: &Value,
        items: impl IntoIterator<Item = &'a Value>,
    ) -> Vec<u8> {
        let (api_version, kind) = match self {
            Output::Full => (api_version.to_string(), format!("{item_kind}List")),
            Output::Partial(v) => (
                format!("meta.k8s.io/{v}"),
                "PartialObjectMetadataList".to_string(),
            ),
        };
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"apiVersion\":");
        write_json(&mut out, &Value::String(api_version));
        out.extend_from_slice(b",\"kind\":");
        write_json(&mut out, &Value::String(kind));
        out.extend_from_slice(b",\"metadata\":");
        write_json(&mut out, meta);
        out.extend_from_slice(b",\"items\":[");
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match self {
                Output::Full => write_without_type_meta(&mut out, item),
                Output::Partial(_) => write_json(&mut out, &self.object(item)),
            }
        }
        out.extend_from_slice(b"]}");
        out
    }
}

fn write_json(out: &mut Vec<u8>, v: &Value) {
    // Serializing a `Value` into a Vec cannot fail: its keys are strings and writes are infallible.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// Writes an object without its top-level `apiVersion` and `kind`.
fn write_without_type_meta(out: &mut Vec<u8>, item: &Value) {
    let Some(fields) = item.as_object() else {
        write_json(out, item);
        return;
    };
    out.push(b'{');
    let mut first = true;
    for (k, v) in fields {
        if k == "apiVersion" || k == "kind" {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_json(out, &Value::String(k.clone()));
        out.push(b':');
        write_json(out, v);
    }
    out.push(b'}');
}

fn partial_object(obj: &Value, version: &str) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_acceptable_media_range_wins() {
        let cases: &[(&str, &str, Shape, Output)] = &[
            ("empty header", "", Shape::Object, Output::Full),
            ("plain json", "application/json", Shape::List, Output::Full),
            (
                "kube list_metadata",
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
                Shape::List,
                Output::Partial("v1"),
            ),
            (
                "kube watch_metadata",
                "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
                Shape::Object,
                Output::Partial("v1"),
            ),
            (
                "v1beta1 is served too",
                "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1beta1",
                Shape::Object,
                Output::Partial("v1beta1"),
            ),
            (
                "kubectl's table then json falls back to json",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
                Shape::List,
                Output::Full,
            ),
            (
                "table skipped, partial list taken",
                "application/json;as=Table;v=v1;g=meta.k8s.io, application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
                Shape::List,
                Output::Partial("v1"),
            ),
            (
                "json before partial wins",
                "application/json,application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
                Shape::Object,
                Output::Full,
            ),
            (
                "protobuf first, partial json second",
                "application/vnd.kubernetes.protobuf;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
                Shape::Object,
                Output::Partial("v1"),
            ),
            (
                "a list kind for an object is not acceptable",
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
                Shape::Object,
                Output::Full,
            ),
            (
                "an object kind for a list is not acceptable",
                "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
                Shape::List,
                Output::Full,
            ),
            (
                "wrong group",
                "application/json;as=PartialObjectMetadata;g=example.com;v=v1",
                Shape::Object,
                Output::Full,
            ),
            (
                "unknown version",
                "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v2",
                Shape::Object,
                Output::Full,
            ),
            ("wildcard without as", "*/*", Shape::Object, Output::Full),
            (
                "spaces and quoted values",
                " application/json ; as=\"PartialObjectMetadata\" ; g=meta.k8s.io ; v=v1",
                Shape::Object,
                Output::Partial("v1"),
            ),
            (
                "malformed parameters are ignored",
                "application/json;as;g=meta.k8s.io;v=v1",
                Shape::Object,
                Output::Full,
            ),
        ];
        for (name, accept, shape, want) in cases {
            assert_eq!(negotiate(accept, *shape), *want, "{name}");
        }
    }

    #[test]
    fn a_partial_list_keeps_only_metadata_and_the_list_metadata() {
        let items = [
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "resourceVersion": "5"}, "data": {"k": "v"}}),
        ];
        let meta = json!({"resourceVersion": "7", "continue": "abc"});
        let out: Value = serde_json::from_slice(&Output::Partial("v1").list_bytes(
            "v1",
            "ConfigMap",
            &meta,
            items.iter(),
        ))
        .unwrap();
        assert_eq!(
            out,
            json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": {"resourceVersion": "7", "continue": "abc"},
                "items": [{"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": {"name": "a", "resourceVersion": "5"}}],
            })
        );
    }

    #[test]
    fn a_full_list_carries_its_items_without_their_type_meta() {
        let items = [
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}}),
        ];
        let meta = json!({"resourceVersion": "9"});
        let out: Value = serde_json::from_slice(&Output::Full.list_bytes(
            "v1",
            "ConfigMap",
            &meta,
            items.iter(),
        ))
        .unwrap();
        assert_eq!(
            out,
            json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": meta, "items": [
                {"metadata": {"name": "a"}, "data": {"k": "v"}},
                {"metadata": {"name": "b"}},
            ]})
        );
    }
}
