//! The skipping decoder: skipped paths are absent, everything else is exactly what a full decode
//! gives; lists and watch events go through it; bad input is a typed error.

#[path = "support/objects.rs"]
mod objects;

use std::cell::Cell;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::core::DynamicObject;
use objects::{Gen, list_json};
use reflex_informer::decode::{DecodeError, DecodeOptions, Decoder, SkipPath};
use reflex_informer::source::WatchEvent;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Removes the value at `path` from `value` the slow way (after a full parse), descending into
/// every element of arrays on the way: the oracle the skipping decoder must match.
fn remove_path(value: &mut Value, path: &[String]) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(|v| remove_path(v, path)),
        Value::Object(map) => match path {
            [last] => {
                map.remove(last);
            }
            [first, rest @ ..] => {
                if let Some(v) = map.get_mut(first) {
                    remove_path(v, rest);
                }
            }
            [] => {}
        },
        _ => {}
    }
}

fn option_sets() -> Vec<(&'static str, DecodeOptions)> {
    let p = |s: &str| SkipPath::pointer(s).unwrap();
    vec![
        ("default (managedFields)", DecodeOptions::default()),
        ("full", DecodeOptions::full()),
        (
            "managedFields, last-applied, conditions",
            DecodeOptions::default()
                .skip(p(
                    "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration",
                ))
                .skip(p("/status/conditions")),
        ),
        (
            "through arrays: every container's env, and data",
            DecodeOptions::default()
                .skip(p("/spec/containers/env"))
                .skip(p("/data")),
        ),
        (
            "keep managedFields, drop a whole subtree and a prefix of it",
            DecodeOptions {
                keep_managed_fields: true,
                skip: vec![
                    p("/status"),
                    p("/status/phase"),
                    p("/metadata/labels/app.kubernetes.io~1name"),
                ],
                ..DecodeOptions::default()
            },
        ),
    ]
}

fn expected<K: DeserializeOwned>(value: &Value, options: &DecodeOptions) -> K {
    let mut value = value.clone();
    if !options.keep_managed_fields {
        remove_path(&mut value, SkipPath::managed_fields().segments());
    }
    for path in &options.skip {
        remove_path(&mut value, path.segments());
    }
    serde_json::from_value(value).unwrap()
}

/// Single objects, list pages and watch events all decode to the full decode with the paths
/// removed.
fn check_equivalence<K: DeserializeOwned + PartialEq + std::fmt::Debug>(objects: &[Value]) {
    for (name, options) in option_sets() {
        let decoder = Decoder::new(&options);
        let want: Vec<K> = objects.iter().map(|o| expected::<K>(o, &options)).collect();
        for (i, object) in objects.iter().enumerate() {
            let bytes = serde_json::to_vec(object).unwrap();
            let got: K = decoder.decode(&bytes).unwrap();
            assert_eq!(got, want[i], "{name}, object {i}");

            let line = serde_json::to_vec(&json!({"type": "MODIFIED", "object": object})).unwrap();
            match decoder.decode_event::<K>(&line).unwrap() {
                WatchEvent::Modified(got) => assert_eq!(got, want[i], "{name}, event {i}"),
                other => panic!("{name}, event {i}: expected MODIFIED, got {other:?}"),
            }
        }
        for (page, chunk) in objects.chunks(37).enumerate() {
            let body = list_json("List", &format!("{page}"), chunk);
            let got = decoder.decode_list::<K>(&body).unwrap();
            assert_eq!(
                got.resource_version,
                page.to_string(),
                "{name}, page {page}"
            );
            let start = page * 37;
            let got: Vec<&K> = got.items.iter().map(|item| &**item).collect();
            let want: Vec<&K> = want[start..start + chunk.len()].iter().collect();
            assert_eq!(got, want, "{name}, page {page}");
        }
    }
}

#[test]
fn skipping_decode_equals_full_decode_with_the_paths_removed_for_generated_pods() {
    let mut g = Gen::new(7);
    let pods: Vec<Value> = (0..120).map(|i| g.pod("ns", i)).collect();
    check_equivalence::<Pod>(&pods);
    check_equivalence::<DynamicObject>(&pods);
    check_equivalence::<Value>(&pods);
}

#[test]
fn skipping_decode_equals_full_decode_with_the_paths_removed_for_generated_config_maps() {
    let mut g = Gen::new(11);
    let cms: Vec<Value> = (0..200).map(|i| g.config_map("ns", i)).collect();
    check_equivalence::<ConfigMap>(&cms);
    check_equivalence::<DynamicObject>(&cms);
}

#[test]
fn default_decoder_drops_managed_fields_and_nothing_else() {
    let mut g = Gen::new(3);
    for i in 0..40 {
        let pod = g.pod("ns", i);
        let bytes = serde_json::to_vec(&pod).unwrap();
        let mut full: Pod = serde_json::from_slice(&bytes).unwrap();
        assert!(
            full.metadata
                .managed_fields
                .as_ref()
                .is_some_and(|m| !m.is_empty())
        );
        full.metadata.managed_fields = None;
        let skipped: Pod = Decoder::default().decode(&bytes).unwrap();
        assert_eq!(skipped, full);
    }
}

thread_local! {
    static BUILT: Cell<usize> = const { Cell::new(0) };
}

/// A value that counts how often its `Deserialize` ran.
#[derive(Debug)]
struct Counted;

impl<'de> serde::Deserialize<'de> for Counted {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BUILT.with(|b| b.set(b.get() + 1));
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(Counted)
    }
}

#[derive(Debug, serde::Deserialize)]
struct Probe {
    metadata: ProbeMeta,
}

#[derive(Debug, serde::Deserialize)]
struct ProbeMeta {
    name: String,
    #[serde(rename = "managedFields")]
    managed_fields: Option<Counted>,
}

#[test]
fn a_skipped_value_never_reaches_the_target_types_deserialize() {
    let json =
        br#"{"metadata":{"managedFields":[{"manager":"m","fieldsV1":{"f:a":{}}}],"name":"x"}}"#;
    BUILT.with(|b| b.set(0));
    let full: Probe = Decoder::full().decode(json).unwrap();
    assert!(full.metadata.managed_fields.is_some());
    assert_eq!(BUILT.with(Cell::get), 1);
    BUILT.with(|b| b.set(0));
    let skipped: Probe = Decoder::default().decode(json).unwrap();
    assert_eq!(skipped.metadata.name, "x");
    assert!(skipped.metadata.managed_fields.is_none());
    assert_eq!(BUILT.with(Cell::get), 0);
}

#[test]
fn a_list_decodes_item_by_item_with_skipping_and_keeps_rv_and_continue() {
    let mut g = Gen::new(5);
    let pods: Vec<Value> = (0..50).map(|i| g.pod("ns", i)).collect();
    let mut body: Value = serde_json::from_slice(&list_json("PodList", "777", &pods)).unwrap();
    body["metadata"]["continue"] = json!("next-page");
    let bytes = serde_json::to_vec(&body).unwrap();
    let page = Decoder::default().decode_list::<Pod>(&bytes).unwrap();
    assert_eq!(page.resource_version, "777");
    assert_eq!(page.continue_token.as_deref(), Some("next-page"));
    let expected: Vec<Pod> = pods
        .iter()
        .map(|p| expected::<Pod>(p, &DecodeOptions::default()))
        .collect();
    let items: Vec<Pod> = page.items.iter().map(|item| Pod::clone(item)).collect();
    assert_eq!(items, expected);
}

#[test]
fn list_edge_shapes_decode() {
    let cases: &[(&str, &str, usize, &str, Option<&str>)] = &[
        (
            "null items",
            r#"{"metadata":{"resourceVersion":"5"},"items":null}"#,
            0,
            "5",
            None,
        ),
        (
            "no items",
            r#"{"kind":"PodList","metadata":{"resourceVersion":"6"}}"#,
            0,
            "6",
            None,
        ),
        (
            "empty continue",
            r#"{"metadata":{"resourceVersion":"7","continue":""},"items":[]}"#,
            0,
            "7",
            None,
        ),
        (
            "items before metadata",
            r#"{"items":[{"metadata":{"name":"a"}}],"metadata":{"resourceVersion":"8","continue":"c"}}"#,
            1,
            "8",
            Some("c"),
        ),
        (
            "no metadata",
            r#"{"items":[{"metadata":{"name":"a"}}]}"#,
            1,
            "",
            None,
        ),
    ];
    for (name, json, n, rv, cont) in cases {
        let page = Decoder::default()
            .decode_list::<Pod>(json.as_bytes())
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(page.items.len(), *n, "{name}");
        assert_eq!(page.resource_version, *rv, "{name}");
        assert_eq!(page.continue_token.as_deref(), *cont, "{name}");
    }
}

#[test]
fn watch_events_decode_with_skipping_whatever_the_key_order() {
    let object = r#"{"metadata":{"name":"a","namespace":"ns","resourceVersion":"9","managedFields":[{"manager":"m"}]}}"#;
    let cases = [
        ("ADDED", format!(r#"{{"type":"ADDED","object":{object}}}"#)),
        (
            "MODIFIED",
            format!(r#"{{"type":"MODIFIED","object":{object}}}"#),
        ),
        (
            "DELETED",
            format!(r#"{{"type":"DELETED","object":{object}}}"#),
        ),
        (
            "object first",
            format!(r#"{{"object":{object},"type":"ADDED"}}"#),
        ),
    ];
    for (name, line) in cases {
        let event = Decoder::default()
            .decode_event::<Pod>(line.as_bytes())
            .unwrap();
        let pod = match (&event, name) {
            (WatchEvent::Added(p), "ADDED" | "object first")
            | (WatchEvent::Modified(p), "MODIFIED")
            | (WatchEvent::Deleted(p), "DELETED") => p,
            _ => panic!("{name}: wrong event {event:?}"),
        };
        assert_eq!(pod.metadata.name.as_deref(), Some("a"), "{name}");
        assert_eq!(
            pod.metadata.resource_version.as_deref(),
            Some("9"),
            "{name}"
        );
        assert!(pod.metadata.managed_fields.is_none(), "{name}");
    }
}

#[test]
fn bookmarks_and_error_events_become_their_variants() {
    let d = Decoder::default();
    let bookmark = br#"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"41","annotations":{"k8s.io/initial-events-end":"true"}}}}"#;
    assert_eq!(
        d.decode_event::<Pod>(bookmark).unwrap(),
        WatchEvent::Bookmark {
            resource_version: "41".into(),
            initial_events_end: true
        }
    );
    let plain = br#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"42"}}}"#;
    assert_eq!(
        d.decode_event::<Pod>(plain).unwrap(),
        WatchEvent::Bookmark {
            resource_version: "42".into(),
            initial_events_end: false
        }
    );
    let error = br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","code":410,"reason":"Expired","message":"too old resource version: 1 (5)"}}"#;
    match d.decode_event::<Pod>(error).unwrap() {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert!(status.is_expired());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_input_yields_typed_errors_with_context() {
    #[derive(Debug)]
    enum Want {
        Json(&'static str),
        Unknown(&'static str),
        Missing(&'static str),
    }
    let cases: &[(&str, &str, Want)] = &[
        (
            "truncated event",
            r#"{"type":"ADDED","object":{"metadata":"#,
            Want::Json("watch event"),
        ),
        ("not json", "{this is not json", Want::Json("watch event")),
        (
            "trailing garbage",
            r#"{"type":"ADDED","object":{}} x"#,
            Want::Json("watch event"),
        ),
        (
            "object of wrong shape",
            r#"{"type":"ADDED","object":{"metadata":[]}}"#,
            Want::Json("watch event"),
        ),
        (
            "buffered object of wrong shape",
            r#"{"object":{"metadata":7},"type":"ADDED"}"#,
            Want::Json("watch event"),
        ),
        (
            "unknown type",
            r#"{"type":"EXPLODED","object":{}}"#,
            Want::Unknown("EXPLODED"),
        ),
        ("no type", r#"{"object":{}}"#, Want::Missing("type")),
        ("no object", r#"{"type":"ADDED"}"#, Want::Missing("object")),
        ("event is an array", "[1,2]", Want::Json("watch event")),
    ];
    for (name, json, want) in cases {
        let err = Decoder::default()
            .decode_event::<Pod>(json.as_bytes())
            .unwrap_err();
        match (want, &err) {
            (Want::Json(what), DecodeError::Json { what: got, .. }) => {
                assert_eq!(what, got, "{name}");
                assert!(err.to_string().contains(what), "{name}: {err}");
            }
            (Want::Unknown(t), DecodeError::UnknownEventType(got)) => assert_eq!(t, got, "{name}"),
            (Want::Missing(f), DecodeError::MissingEventField(got)) => assert_eq!(f, got, "{name}"),
            _ => panic!("{name}: want {want:?}, got {err:?}"),
        }
    }
    // Broken structure names the byte offset and what was expected there; a broken item names
    // its index and offset, with serde_json's position inside it.
    let list_cases = [
        (
            r#"{"metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"a"}},"#,
            Err(("the rest of the list (the body ended early)", 71)),
        ),
        (
            r#"{"items":{"a":1}}"#,
            Err(("an array of items or null", 9)),
        ),
        (r#"{"items":[{"metadata":{"name":5}}]}"#, Ok((0, 10))),
        (
            r#"{"items":[{"metadata":{}}, {"metadata":{"name":[]}}]}"#,
            Ok((1, 27)),
        ),
        ("", Err(("the rest of the list (the body ended early)", 0))),
        (" [] ", Err(("'{' opening the list object", 1))),
        (r#"{"items":[] "x""#, Err(("',' or '}' after a field", 12))),
        (
            r#"{"items":[{} {}]}"#,
            Err(("',' or ']' after a list item", 13)),
        ),
        (
            r#"{"items":[]} {}"#,
            Err(("nothing after the list object", 13)),
        ),
        (r#"{"items":[,]}"#, Err(("a value", 10))),
    ];
    for (json, want) in list_cases {
        let err = Decoder::default()
            .decode_list::<Pod>(json.as_bytes())
            .unwrap_err();
        match (want, &err) {
            (
                Err((expected, at)),
                DecodeError::Syntax {
                    what: "list response",
                    offset,
                    expected: got,
                },
            ) => {
                assert_eq!((*got, *offset), (expected, at), "{json}");
                assert!(err.to_string().contains(&format!("byte {at}")), "{err}");
            }
            (
                Ok((at_index, at)),
                DecodeError::ListItem {
                    index,
                    offset,
                    source,
                },
            ) => {
                assert_eq!((*index, *offset), (at_index, at), "{json}");
                assert!(source.line() >= 1, "{json}: serde_json's position");
            }
            _ => panic!("{json}: want {want:?}, got {err:?}"),
        }
    }
}

#[test]
fn skipping_a_required_field_is_a_decode_error_not_a_panic() {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct NeedsName {
        metadata: ProbeName,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct ProbeName {
        name: String,
    }
    let d =
        Decoder::new(&DecodeOptions::default().skip(SkipPath::new(["metadata", "name"]).unwrap()));
    let err = d
        .decode::<NeedsName>(br#"{"metadata":{"name":"a"}}"#)
        .unwrap_err();
    assert!(err.to_string().contains("object"));
    assert!(format!("{:?}", err).contains("missing field"), "{err:?}");
}

#[test]
fn skip_paths_parse_as_json_pointers_and_reject_bad_ones() {
    let ok: &[(&str, &[&str])] = &[
        ("/status/conditions", &["status", "conditions"]),
        (
            "/metadata/annotations/a~1b~0c",
            &["metadata", "annotations", "a/b~c"],
        ),
        ("/", &[""]),
    ];
    for (pointer, segments) in ok {
        let p = SkipPath::pointer(pointer).unwrap();
        assert_eq!(p.segments(), *segments, "{pointer}");
        assert_eq!(p.to_string(), *pointer);
    }
    for bad in ["", "status/conditions", "/a~2b", "/a~"] {
        assert!(
            matches!(SkipPath::pointer(bad), Err(DecodeError::InvalidPath { .. })),
            "{bad}"
        );
    }
    assert!(SkipPath::new(Vec::<String>::new()).is_err());
}
