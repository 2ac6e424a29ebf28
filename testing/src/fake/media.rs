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
//!
//! The `drop=metadata.managedFields` parameter of KEP-5958 (alpha in 1.38) is honoured on the
//! chosen range, in either representation, when the server is configured to support it
//! ([`FakeConfig::drop_managed_fields`](super::FakeConfig::drop_managed_fields)); like
//! kube-apiserver, the fake ignores `drop` targets it does not know, and a server without support
//! ignores the parameter altogether.

use std::borrow::Cow;

use serde_json::{Value, json};

/// What an object response looks like on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    /// The representation.
    pub form: Form,
    /// Leave `metadata.managedFields` out (KEP-5958's `drop=metadata.managedFields`).
    pub drop_managed_fields: bool,
}

/// The representation of an object response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The stored object as JSON.
    Full,
    /// `PartialObjectMetadata`/`PartialObjectMetadataList` of `meta.k8s.io` at this version
    /// (`v1` or `v1beta1`).
    Partial(&'static str),
}

impl Output {
    /// The stored object as JSON, managedFields included.
    pub const FULL: Output = Output {
        form: Form::Full,
        drop_managed_fields: false,
    };

    /// `PartialObjectMetadata` at `version`, managedFields included.
    #[cfg(test)]
    pub const fn partial(version: &'static str) -> Output {
        Output {
            form: Form::Partial(version),
            drop_managed_fields: false,
        }
    }
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
/// cannot produce are skipped; an empty header or one with nothing acceptable is plain JSON. With
/// `drop_supported`, a `drop` parameter naming `metadata.managedFields` (among `+`-separated
/// targets) on the chosen range leaves them out.
pub fn negotiate(accept: &str, shape: Shape, drop_supported: bool) -> Output {
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        if !matches!(media.as_str(), "application/json" | "application/*" | "*/*") {
            continue;
        }
        let (mut as_kind, mut group, mut version) = (None, None, None);
        let mut drop_managed_fields = false;
        for param in parts {
            let Some((k, v)) = param.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match k.trim() {
                "as" => as_kind = Some(v),
                "g" => group = Some(v),
                "v" => version = Some(v),
                "drop" => {
                    drop_managed_fields = drop_supported
                        && v.split('+')
                            .any(|target| target == "metadata.managedFields");
                }
                _ => {}
            }
        }
        let Some(as_kind) = as_kind else {
            return Output {
                form: Form::Full,
                drop_managed_fields,
            };
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
            | ("PartialObjectMetadataList", Shape::List) => {
                return Output {
                    form: Form::Partial(version),
                    drop_managed_fields,
                };
            }
            _ => continue,
        }
    }
    Output::FULL
}

impl Output {
    /// One object in this representation (borrowed when full and nothing is dropped from it).
    pub fn object<'a>(self, obj: &'a Value) -> Cow<'a, Value> {
        let mut out = match self.form {
            Form::Full => Cow::Borrowed(obj),
            Form::Partial(v) => Cow::Owned(partial_object(obj, v)),
        };
        if self.drop_managed_fields
            && out.pointer("/metadata/managedFields").is_some()
            && let Some(meta) = out
                .to_mut()
                .get_mut("metadata")
                .and_then(Value::as_object_mut)
        {
            meta.remove("managedFields");
        }
        out
    }

    /// The JSON bytes of one object in this representation.
    pub fn object_bytes(self, obj: &Value) -> Vec<u8> {
        serde_json::to_vec(&*self.object(obj)).unwrap_or_default()
    }

    /// The JSON bytes of a list in this representation, written item by item so that no stored
    /// object is copied: for [`Output::FULL`] the list has the resource's `apiVersion` and
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
        let (api_version, kind) = match self.form {
            Form::Full => (api_version.to_string(), format!("{item_kind}List")),
            Form::Partial(v) => (
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
            match self.form {
                Form::Full => write_without_type_meta(&mut out, item, self.drop_managed_fields),
                Form::Partial(_) => write_json(&mut out, &self.object(item)),
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

/// Writes an object without its top-level `apiVersion` and `kind` (and, when asked, without
/// `metadata.managedFields`), copying nothing.
fn write_without_type_meta(out: &mut Vec<u8>, item: &Value, drop_managed_fields: bool) {
    write_object_without(out, item, &["apiVersion", "kind"], |out, k, v| {
        if drop_managed_fields && k == "metadata" {
            write_object_without(out, v, &["managedFields"], |out, _, v| write_json(out, v));
        } else {
            write_json(out, v);
        }
    });
}

/// Writes a JSON object without the keys in `skip`, each value through `value`; anything other
/// than an object is written as it is.
fn write_object_without(
    out: &mut Vec<u8>,
    item: &Value,
    skip: &[&str],
    mut value: impl FnMut(&mut Vec<u8>, &str, &Value),
) {
    let Some(fields) = item.as_object() else {
        write_json(out, item);
        return;
    };
    out.push(b'{');
    let mut first = true;
    for (k, v) in fields {
        if skip.contains(&k.as_str()) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_json(out, &Value::String(k.clone()));
        out.push(b':');
        value(out, k, v);
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
            ("empty header", "", Shape::Object, Output::FULL),
            ("plain json", "application/json", Shape::List, Output::FULL),
            (
                "kube list_metadata",
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
                Shape::List,
                Output::partial("v1"),
            ),
            (
                "kube watch_metadata",
                "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
                Shape::Object,
                Output::partial("v1"),
            ),
            (
                "v1beta1 is served too",
                "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1beta1",
                Shape::Object,
                Output::partial("v1beta1"),
            ),
            (
                "kubectl's table then json falls back to json",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
                Shape::List,
                Output::FULL,
            ),
            (
                "table skipped, partial list taken",
                "application/json;as=Table;v=v1;g=meta.k8s.io, application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
                Shape::List,
                Output::partial("v1"),
            ),
            (
                "json before partial wins",
                "application/json,application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
                Shape::Object,
                Output::FULL,
            ),
            (
                "protobuf first, partial json second",
                "application/vnd.kubernetes.protobuf;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
                Shape::Object,
                Output::partial("v1"),
            ),
            (
                "a list kind for an object is not acceptable",
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
                Shape::Object,
                Output::FULL,
            ),
            (
                "an object kind for a list is not acceptable",
                "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
                Shape::List,
                Output::FULL,
            ),
            (
                "wrong group",
                "application/json;as=PartialObjectMetadata;g=example.com;v=v1",
                Shape::Object,
                Output::FULL,
            ),
            (
                "unknown version",
                "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v2",
                Shape::Object,
                Output::FULL,
            ),
            ("wildcard without as", "*/*", Shape::Object, Output::FULL),
            (
                "spaces and quoted values",
                " application/json ; as=\"PartialObjectMetadata\" ; g=meta.k8s.io ; v=v1",
                Shape::Object,
                Output::partial("v1"),
            ),
            (
                "malformed parameters are ignored",
                "application/json;as;g=meta.k8s.io;v=v1",
                Shape::Object,
                Output::FULL,
            ),
        ];
        for (name, accept, shape, want) in cases {
            assert_eq!(negotiate(accept, *shape, true), *want, "{name}");
        }
    }

    #[test]
    fn drop_managed_fields_applies_to_the_chosen_range_when_supported() {
        let json = "application/json;drop=metadata.managedFields";
        let dropped = negotiate(json, Shape::List, true);
        assert_eq!(dropped.form, Form::Full);
        assert!(dropped.drop_managed_fields);
        assert!(
            !negotiate(json, Shape::List, false).drop_managed_fields,
            "unsupported: ignored"
        );
        let several = "application/json;drop=metadata.annotations+metadata.managedFields";
        assert!(negotiate(several, Shape::Object, true).drop_managed_fields);
        let unknown = "application/json;drop=metadata.annotations";
        assert_eq!(
            negotiate(unknown, Shape::Object, true),
            Output::FULL,
            "unknown targets are ignored"
        );
        let partial = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1;drop=metadata.managedFields,application/json;drop=metadata.managedFields";
        let out = negotiate(partial, Shape::List, true);
        assert_eq!(out.form, Form::Partial("v1"));
        assert!(out.drop_managed_fields);
        let skipped =
            "application/vnd.kubernetes.protobuf;drop=metadata.managedFields,application/json";
        assert_eq!(
            negotiate(skipped, Shape::Object, true),
            Output::FULL,
            "the parameter of a skipped range does not apply"
        );
    }

    #[test]
    fn dropped_managed_fields_leave_objects_lists_and_partials() {
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "managedFields": [{"manager": "m"}]}, "data": {"k": "v"}});
        let full = Output {
            form: Form::Full,
            drop_managed_fields: true,
        };
        assert_eq!(
            *full.object(&obj),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}})
        );
        let partial = Output {
            form: Form::Partial("v1"),
            drop_managed_fields: true,
        };
        assert_eq!(partial.object(&obj)["metadata"], json!({"name": "a"}));
        let list: Value =
            serde_json::from_slice(&full.list_bytes("v1", "ConfigMap", &json!({}), [&obj]))
                .unwrap();
        assert_eq!(
            list["items"][0],
            json!({"metadata": {"name": "a"}, "data": {"k": "v"}})
        );
        let kept: Value =
            serde_json::from_slice(&Output::FULL.list_bytes("v1", "ConfigMap", &json!({}), [&obj]))
                .unwrap();
        assert_eq!(
            kept["items"][0]["metadata"]["managedFields"],
            json!([{"manager": "m"}])
        );
        assert!(
            matches!(
                full.object(&json!({"metadata": {"name": "b"}})),
                Cow::Borrowed(_)
            ),
            "nothing to drop: no copy"
        );
    }

    #[test]
    fn a_partial_list_keeps_only_metadata_and_the_list_metadata() {
        let items = [
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "resourceVersion": "5"}, "data": {"k": "v"}}),
        ];
        let meta = json!({"resourceVersion": "7", "continue": "abc"});
        let out: Value = serde_json::from_slice(&Output::partial("v1").list_bytes(
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
        let out: Value = serde_json::from_slice(&Output::FULL.list_bytes(
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
