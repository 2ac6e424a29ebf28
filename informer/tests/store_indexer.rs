//! The Indexer's guarantees (DESIGN section 3 "Indexer"; client-go's index_test.go and
//! thread_safe_store_test.go cases re-expressed as tables).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ApiResource, DynamicObject, ObjectMeta};
use reflex_informer::key::ObjectKey;
use reflex_informer::store::{Indexer, NAMESPACE_INDEX, StoreError, meta_key_func};
use stores::{MODES, Mode, assert_same, compact_options, store};

#[path = "support/stores.rs"]
mod stores;

const BY_USER: &str = "by-user";

fn pod(ns: &str, name: &str, users: &str) -> Arc<Pod> {
    Arc::new(Pod {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            annotations: Some([("users".to_string(), users.to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    })
}

fn users_of(p: &Pod) -> Vec<String> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("users"))
        .map(|u| {
            u.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn user_store(mode: Mode) -> Indexer<Pod> {
    let store = store::<Pod>(mode);
    store.add_indexer(BY_USER, users_of).unwrap();
    store
}

fn names(objs: &[Arc<Pod>]) -> Vec<String> {
    objs.iter()
        .map(|o| o.metadata.name.clone().unwrap())
        .collect()
}

fn cm(ns: Option<&str>, name: &str) -> Arc<ConfigMap> {
    Arc::new(ConfigMap {
        metadata: ObjectMeta {
            namespace: ns.map(Into::into),
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    })
}

enum Op {
    Add(&'static str, &'static str),
    Delete(&'static str),
}

#[test]
fn indexes_follow_adds_updates_and_deletes_with_multiple_values() {
    for mode in MODES {
        use Op::*;
        // (name, ops, expected (user -> pods) after the ops, expected index values)
        type Case<'a> = (
            &'a str,
            &'a [Op],
            &'a [(&'a str, &'a [&'a str])],
            &'a [&'a str],
        );
        let cases: &[Case] = &[
            (
                "each value lists every object that has it",
                &[
                    Add("one", "ernie,bert"),
                    Add("two", "bert,oscar"),
                    Add("tre", "ernie,elmo"),
                ],
                &[
                    ("ernie", &["one", "tre"]),
                    ("bert", &["one", "two"]),
                    ("elmo", &["tre"]),
                    ("oscar", &["two"]),
                ],
                &["bert", "elmo", "ernie", "oscar"],
            ),
            (
                "an update moves the object out of old values and into new ones",
                &[
                    Add("one", "ernie,bert"),
                    Add("two", "bert,oscar"),
                    Add("two", "oscar,elmo"),
                ],
                &[("bert", &["one"]), ("elmo", &["two"]), ("oscar", &["two"])],
                &["bert", "elmo", "ernie", "oscar"],
            ),
            (
                "a delete removes the object from every value, and empty values vanish",
                &[Add("one", "ernie,bert"), Add("two", "bert"), Delete("one")],
                &[("ernie", &[]), ("bert", &["two"])],
                &["bert"],
            ),
            (
                "a value keeps its other objects after one is deleted",
                &[
                    Add("one", "x"),
                    Add("two", "x"),
                    Delete("two"),
                    Add("tre", "x"),
                ],
                &[("x", &["one", "tre"])],
                &["x"],
            ),
            (
                "duplicate values of one object index it once",
                &[Add("one", "x,x,y")],
                &[("x", &["one"]), ("y", &["one"])],
                &["x", "y"],
            ),
            (
                "an object with no values is in no index value",
                &[Add("one", ""), Add("two", "x"), Add("two", "")],
                &[("x", &[])],
                &[],
            ),
            (
                "deleting an absent key changes nothing",
                &[Add("one", "x"), Delete("nope")],
                &[("x", &["one"])],
                &["x"],
            ),
        ];
        for (name, ops, expect, values) in cases {
            let store = user_store(mode);
            for op in *ops {
                match op {
                    Add(n, users) => {
                        store.add(pod("ns", n, users)).unwrap();
                    }
                    Delete(n) => {
                        store.delete_key(&ObjectKey::new(Some("ns"), *n));
                    }
                }
            }
            for (user, pods) in *expect {
                let got = names(&store.by_index(BY_USER, user).unwrap());
                assert_eq!(got, *pods, "case {name:?}, by_index({user})");
                let keys: Vec<String> = store
                    .index_keys(BY_USER, user)
                    .unwrap()
                    .iter()
                    .map(|k| k.name().to_owned())
                    .collect();
                assert_eq!(keys, *pods, "case {name:?}, index_keys({user})");
            }
            assert_eq!(
                store.list_index_values(BY_USER).unwrap(),
                *values,
                "case {name:?}, list_index_values"
            );
        }
    }
}

#[test]
fn index_keys_are_sorted() {
    for mode in MODES {
        let store = user_store(mode);
        for n in ["c", "a", "d", "b"] {
            store.add(pod("ns", n, "u")).unwrap();
        }
        let keys: Vec<String> = store
            .index_keys(BY_USER, "u")
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(keys, ["ns/a", "ns/b", "ns/c", "ns/d"]);
    }
}

#[test]
fn index_returns_the_deduplicated_union_over_the_objects_values() {
    for mode in MODES {
        let store = user_store(mode);
        store.add(pod("ns", "one", "ernie,bert")).unwrap();
        store.add(pod("ns", "two", "bert,oscar")).unwrap();
        store.add(pod("ns", "tre", "elmo")).unwrap();
        let probe = pod("ns", "probe", "ernie,bert,nobody");
        assert_eq!(
            names(&store.index(BY_USER, &probe).unwrap()),
            ["one", "two"]
        );
    }
}

#[test]
fn unknown_index_names_are_typed_errors_and_unknown_values_are_empty() {
    for mode in MODES {
        let store = user_store(mode);
        store.add(pod("ns", "one", "x")).unwrap();
        let unknown = || StoreError::UnknownIndex {
            name: "nope".into(),
        };
        assert_eq!(store.by_index("nope", "x").unwrap_err(), unknown());
        assert_eq!(store.index_keys("nope", "x").unwrap_err(), unknown());
        assert_eq!(store.list_index_values("nope").unwrap_err(), unknown());
        assert_eq!(
            store.index("nope", &pod("ns", "one", "x")).unwrap_err(),
            unknown()
        );
        assert!(store.by_index(BY_USER, "nobody").unwrap().is_empty());
        assert!(store.index_keys(BY_USER, "nobody").unwrap().is_empty());
    }
}

#[test]
fn an_index_added_later_indexes_existing_objects() {
    for mode in MODES {
        let store = store::<Pod>(mode);
        store.add(pod("ns", "one", "x,y")).unwrap();
        store.add(pod("ns", "two", "y")).unwrap();
        store.add_indexer(BY_USER, users_of).unwrap();
        assert_eq!(
            names(&store.by_index(BY_USER, "y").unwrap()),
            ["one", "two"]
        );
        assert_eq!(store.list_index_values(BY_USER).unwrap(), ["x", "y"]);
        // And it keeps following writes.
        store.add(pod("ns", "tre", "x")).unwrap();
        assert_eq!(
            names(&store.by_index(BY_USER, "x").unwrap()),
            ["one", "tre"]
        );
    }
}

#[test]
fn registering_an_index_name_twice_is_an_error() {
    for mode in MODES {
        let store = user_store(mode);
        assert_eq!(
            store.add_indexer(BY_USER, users_of).unwrap_err(),
            StoreError::IndexExists {
                name: BY_USER.into()
            }
        );
        assert!(matches!(
            store.add_indexer(NAMESPACE_INDEX, users_of),
            Err(StoreError::IndexExists { .. })
        ));
    }
}

#[test]
fn namespace_index_is_built_in_and_skips_cluster_scoped_objects() {
    for mode in MODES {
        let store = store::<ConfigMap>(mode);
        store.add(cm(Some("a"), "x")).unwrap();
        store.add(cm(Some("a"), "y")).unwrap();
        store.add(cm(Some("b"), "x")).unwrap();
        store.add(cm(None, "cluster")).unwrap();
        assert_eq!(store.by_index(NAMESPACE_INDEX, "a").unwrap().len(), 2);
        assert_eq!(
            store.list_index_values(NAMESPACE_INDEX).unwrap(),
            ["a", "b"]
        );
        assert!(store.by_index(NAMESPACE_INDEX, "").unwrap().is_empty());
        assert_eq!(store.len(), 4);
    }
}

#[test]
fn objects_are_stored_and_returned_as_the_same_arc() {
    // A compact store decodes on read: it returns the same Arc while the object is in its cache
    // of decoded objects, an equal object otherwise.
    for mode in MODES {
        let store = store::<ConfigMap>(mode);
        let obj = cm(Some("a"), "x");
        store.add(obj.clone()).unwrap();
        let key = ObjectKey::new(Some("a"), "x");
        assert_same(mode, &store.get_by_key(&key).unwrap(), &obj);
        assert_same(mode, &store.list()[0], &obj);
        assert_same(
            mode,
            &store.by_index(NAMESPACE_INDEX, "a").unwrap()[0],
            &obj,
        );
        assert_same(mode, &store.get(&obj).unwrap().unwrap(), &obj);
    }
}

#[test]
fn add_update_delete_report_the_previous_object() {
    for mode in MODES {
        let store = store::<ConfigMap>(mode);
        let first = cm(Some("a"), "x");
        let mut second = (*cm(Some("a"), "x")).clone();
        second.data = Some([("k".to_string(), "v".to_string())].into());
        let second = Arc::new(second);
        assert!(store.add(first.clone()).unwrap().is_none());
        assert_same(
            mode,
            &store.update(second.clone()).unwrap().unwrap(),
            &first,
        );
        assert_same(mode, &store.delete(&second).unwrap().unwrap(), &second);
        assert!(store.delete(&second).unwrap().is_none());
        assert!(store.is_empty());
    }
}

#[test]
fn objects_without_a_name_are_key_errors() {
    for mode in MODES {
        let store = store::<ConfigMap>(mode);
        let nameless = Arc::new(ConfigMap::default());
        assert!(matches!(
            store.add(nameless.clone()),
            Err(StoreError::Key(_))
        ));
        assert!(matches!(store.delete(&nameless), Err(StoreError::Key(_))));
        assert!(matches!(
            store.replace(vec![cm(Some("a"), "x"), nameless]),
            Err(StoreError::Key(_))
        ));
        assert!(store.is_empty(), "a failed replace changes nothing");
    }
}

#[test]
fn replace_swaps_the_content_and_rebuilds_every_index() {
    for mode in MODES {
        let store = user_store(mode);
        store.add(pod("ns", "old", "x")).unwrap();
        store
            .replace(vec![pod("ns", "one", "y"), pod("other", "two", "y,z")])
            .unwrap();
        let mut keys: Vec<String> = store.list_keys().iter().map(ToString::to_string).collect();
        keys.sort();
        assert_eq!(keys, ["ns/one", "other/two"]);
        assert_eq!(store.list_index_values(BY_USER).unwrap(), ["y", "z"]);
        assert_eq!(
            store.list_index_values(NAMESPACE_INDEX).unwrap(),
            ["ns", "other"]
        );
    }
}

#[test]
fn a_snapshot_does_not_change_after_later_writes() {
    for mode in MODES {
        let store = user_store(mode);
        store.add(pod("ns", "one", "x")).unwrap();
        let before = store.snapshot();
        store.add(pod("ns", "two", "x")).unwrap();
        store.delete_key(&ObjectKey::new(Some("ns"), "one"));
        assert_eq!(before.len(), 1);
        assert_eq!(names(&before.by_index(BY_USER, "x").unwrap()), ["one"]);
        assert_eq!(names(&store.by_index(BY_USER, "x").unwrap()), ["two"]);
    }
}

#[test]
fn a_list_by_index_read_before_an_update_returns_the_updated_object_after_it() {
    // A list by index is kept between reads; every write of an object under the value must
    // replace it, also when the object's index values did not change.
    for mode in MODES {
        let store = user_store(mode);
        store.add(pod("ns", "one", "x")).unwrap();
        store.add(pod("ns", "two", "x,y")).unwrap();
        let version = |objs: Vec<Arc<Pod>>| -> Vec<Option<String>> {
            objs.iter()
                .map(|p| p.metadata.resource_version.clone())
                .collect()
        };
        assert_eq!(version(store.by_index(BY_USER, "x").unwrap()), [None, None]);
        let before = store.snapshot();
        let mut updated = Pod::clone(&pod("ns", "two", "x,y"));
        updated.metadata.resource_version = Some("2".into());
        store.update(Arc::new(updated)).unwrap();
        assert_eq!(
            version(store.by_index(BY_USER, "x").unwrap()),
            [None, Some("2".into())],
            "{mode:?}"
        );
        assert_eq!(
            version(store.by_index(BY_USER, "y").unwrap()),
            [Some("2".into())],
            "{mode:?}"
        );
        assert_eq!(
            version(store.by_index(NAMESPACE_INDEX, "ns").unwrap()),
            [None, Some("2".into())],
            "{mode:?}"
        );
        // The snapshot taken before keeps its own list.
        assert_eq!(
            version(before.by_index(BY_USER, "x").unwrap()),
            [None, None]
        );
        store.delete_key(&ObjectKey::new(Some("ns"), "one"));
        assert_eq!(names(&store.by_index(BY_USER, "x").unwrap()), ["two"]);
        assert_eq!(
            names(&before.by_index(BY_USER, "x").unwrap()),
            ["one", "two"]
        );
    }
}

#[test]
fn a_reader_sees_every_write_made_after_it_was_created_and_lends_the_stored_arc() {
    for mode in MODES {
        let store = store::<ConfigMap>(mode);
        let mut reader = store.reader();
        let key = ObjectKey::new(Some("a"), "x");
        assert!(reader.get(&key).is_none());
        let obj = cm(Some("a"), "x");
        store.add(obj.clone()).unwrap();
        let lent = reader.get(&key).expect("written after the reader was made");
        assert_eq!(*lent, *obj);
        if mode == Mode::Full {
            assert!(Arc::ptr_eq(&lent.to_arc(), &obj), "lent, not copied");
        }
        store.delete_key(&key);
        assert!(!reader.contains_key(&key), "{mode:?}");
        assert_eq!(reader.snapshot().len(), 0);
    }
}

#[test]
fn a_lent_read_does_not_take_a_reference_to_the_object() {
    let store = store::<ConfigMap>(Mode::Full);
    let obj = cm(Some("a"), "x");
    store.add(obj.clone()).unwrap();
    let references = Arc::strong_count(&obj);
    let mut reader = store.reader();
    let key = ObjectKey::new(Some("a"), "x");
    let lent = reader.get(&key).unwrap();
    assert_eq!(Arc::strong_count(&obj), references);
    assert_eq!(lent.metadata.name.as_deref(), Some("x"));
    let snapshot = store.snapshot();
    let borrowed = snapshot.get(&key).unwrap();
    assert_eq!(Arc::strong_count(&obj), references);
    let owned = borrowed.into_arc();
    assert_eq!(Arc::strong_count(&obj), references + 1);
    assert!(Arc::ptr_eq(&owned, &obj));
}

#[test]
fn readers_always_see_items_and_indexes_consistent_while_a_writer_writes() {
    for mode in MODES {
        // The writer keeps 100 pods, each indexed under exactly one "generation" value, and moves
        // them from value to value. Every snapshot must agree with itself: the index covers every
        // item exactly once and points only at stored objects with that value.
        const PODS: usize = 100;
        let store = user_store(mode);
        for i in 0..PODS {
            store.add(pod("ns", &format!("p{i}"), "g0")).unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let store = store.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut round = 0usize;
                while !stop.load(Ordering::Relaxed) && round < 200 {
                    round += 1;
                    for i in 0..PODS {
                        let gen_value = format!("g{}", (round + i) % 3);
                        store
                            .update(pod("ns", &format!("p{i}"), &gen_value))
                            .unwrap();
                    }
                }
            })
        };
        for _ in 0..300 {
            let snap = store.snapshot();
            assert_eq!(snap.len(), PODS);
            let mut covered = 0;
            for value in snap.list_index_values(BY_USER).unwrap() {
                for obj in snap.by_index(BY_USER, &value).unwrap() {
                    assert_eq!(users_of(&obj), std::slice::from_ref(&value));
                    covered += 1;
                }
            }
            assert_eq!(covered, PODS);
            assert_eq!(store.list().len(), PODS);
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    }
}

#[test]
fn dynamic_objects_are_keyed_with_their_api_resource() {
    let ar = ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    for mode in MODES {
        let store = match compact_options(mode) {
            None => Indexer::<DynamicObject>::with_dyntype(ar.clone()),
            Some(options) => Indexer::<DynamicObject>::compact_with_key_func(
                meta_key_func::<DynamicObject>(ar.clone()),
                options,
            ),
        };
        let mut obj = DynamicObject::new("w1", &ar).within("ns");
        obj.data = serde_json::json!({"spec": {"size": 3}});
        store.add(Arc::new(obj.clone())).unwrap();
        let read = store
            .get_by_key(&ObjectKey::new(Some("ns"), "w1"))
            .expect("stored");
        assert_eq!(*read, obj, "{mode:?}");
        let nameless = DynamicObject {
            types: None,
            metadata: ObjectMeta::default(),
            data: serde_json::Value::Null,
        };
        let err = store.add(Arc::new(nameless)).unwrap_err();
        assert!(err.to_string().contains("Widget"), "{err}");
    }
}

#[test]
fn compact_reads_equal_the_written_objects_after_the_cache_evicted_them() {
    let store = Indexer::<Pod>::compact(reflex_informer::store::CompactOptions {
        cache_capacity: 3,
        compress: true,
    });
    let pods: Vec<Arc<Pod>> = (0..20)
        .map(|i| pod("ns", &format!("p{i}"), &format!("u{},u{}", i % 4, i % 7)))
        .collect();
    store.add_indexer(BY_USER, users_of).unwrap();
    for p in &pods {
        store.add(p.clone()).unwrap();
    }
    // Twice: the first pass misses the cache for most, the second reads what the first cached.
    for _ in 0..2 {
        for p in &pods {
            let key = ObjectKey::from_resource(&**p).unwrap();
            assert_eq!(store.get_by_key(&key).as_deref(), Some(&**p));
        }
    }
    // Indexes were computed at insert, from the objects themselves.
    // u0: i % 4 == 0 or i % 7 == 0.
    let want: Vec<&str> = ["p0", "p12", "p14", "p16", "p4", "p7", "p8"].into();
    let mut got = names(&store.by_index(BY_USER, "u0").unwrap());
    got.sort();
    assert_eq!(got, want);
    assert_eq!(store.decode_failures(), 0);
}

#[test]
fn compact_store_keeps_realistic_pods_in_a_fraction_of_their_json() {
    #[path = "support/objects.rs"]
    mod objects;
    let mut g = objects::Gen::new(5);
    let pods: Vec<Pod> = (0..200)
        .map(|i| serde_json::from_value(g.pod("ns", i)).unwrap())
        .collect();
    let json_bytes: usize = pods
        .iter()
        .map(|p| serde_json::to_vec(p).unwrap().len())
        .sum();
    let lz4 = Indexer::<Pod>::compact(Default::default());
    let plain = Indexer::<Pod>::compact(reflex_informer::store::CompactOptions {
        compress: false,
        ..Default::default()
    });
    for p in pods {
        let p = Arc::new(p);
        lz4.add(p.clone()).unwrap();
        plain.add(p).unwrap();
    }
    assert_eq!(
        plain.packed_bytes(),
        json_bytes,
        "plain mode keeps the JSON"
    );
    // The generator's random names and hashes compress worse than real Pods do.
    assert!(
        lz4.packed_bytes() * 3 < json_bytes * 2,
        "LZ4 keeps {} bytes of {json_bytes}",
        lz4.packed_bytes()
    );
    assert_eq!(Indexer::<Pod>::new().packed_bytes(), 0);
}

/// A resource whose `Serialize` leaves out a field its `Deserialize` requires: it cannot
/// round-trip through JSON.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Lossy {
    metadata: ObjectMeta,
    #[serde(skip_serializing)]
    required: String,
}
reflex_informer::impl_projection!(Lossy => ConfigMap);

/// A resource whose `Serialize` fails: JSON object keys must be strings.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Unencodable {
    metadata: ObjectMeta,
    by_pair: std::collections::BTreeMap<Vec<u8>, u8>,
}
reflex_informer::impl_projection!(Unencodable => ConfigMap);

#[test]
fn a_compact_type_that_does_not_round_trip_reads_absent_and_is_counted() {
    let store = Indexer::<Lossy>::compact(reflex_informer::store::CompactOptions {
        cache_capacity: 0,
        compress: true,
    });
    let obj = Lossy {
        metadata: cm(Some("a"), "x").metadata.clone(),
        required: "r".into(),
    };
    store.add(Arc::new(obj)).unwrap();
    assert_eq!(store.len(), 1);
    assert!(store.get_by_key(&ObjectKey::new(Some("a"), "x")).is_none());
    assert_eq!(store.decode_failures(), 1);
}

#[test]
fn an_object_a_compact_store_cannot_encode_is_a_typed_error() {
    let store = Indexer::<Unencodable>::compact(Default::default());
    let obj = Unencodable {
        metadata: cm(Some("a"), "x").metadata.clone(),
        by_pair: [(vec![1, 2], 3)].into(),
    };
    let err = store.add(Arc::new(obj)).unwrap_err();
    assert!(
        matches!(&err, StoreError::Encode { key, .. } if key.to_string() == "a/x"),
        "{err}"
    );
    assert!(store.is_empty(), "nothing stored");
}
