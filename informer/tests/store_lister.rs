//! The Lister's guarantees (DESIGN section 3 "Factory and listers").

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::ObjectMeta;
use reflex_informer::key::ObjectKey;
use reflex_informer::lister::{Lister, Selector, SelectorError, parse_selector};
use reflex_informer::store::{NAMESPACE_INDEX, StoreError};
use stores::{MODES, Mode, assert_same, store};

#[path = "support/stores.rs"]
mod stores;

fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> Arc<Pod> {
    Arc::new(Pod {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            labels: (!labels.is_empty()).then(|| {
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            }),
            ..Default::default()
        },
        ..Default::default()
    })
}

fn lister(mode: Mode) -> Lister<Pod> {
    let store = store::<Pod>(mode);
    for p in [
        pod("a", "web-1", &[("app", "web"), ("tier", "front")]),
        pod("a", "web-2", &[("app", "web")]),
        pod("a", "db-1", &[("app", "db"), ("tier", "back")]),
        pod("b", "web-3", &[("app", "web"), ("tier", "front")]),
        pod("b", "bare", &[]),
    ] {
        store.add(p).unwrap();
    }
    Lister::new(store)
}

fn sorted_names(objs: Vec<Arc<Pod>>) -> Vec<String> {
    let mut names: Vec<String> = objs
        .iter()
        .map(|o| o.metadata.name.clone().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn list_returns_exactly_the_objects_the_selector_matches() {
    for mode in MODES {
        // (selector, all namespaces, namespace "a")
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "",
                &["bare", "db-1", "web-1", "web-2", "web-3"],
                &["db-1", "web-1", "web-2"],
            ),
            ("app=web", &["web-1", "web-2", "web-3"], &["web-1", "web-2"]),
            ("app==web,tier=front", &["web-1", "web-3"], &["web-1"]),
            ("app!=web", &["bare", "db-1"], &["db-1"]),
            ("tier", &["db-1", "web-1", "web-3"], &["db-1", "web-1"]),
            ("!tier", &["bare", "web-2"], &["web-2"]),
            (
                "app in (db, web)",
                &["db-1", "web-1", "web-2", "web-3"],
                &["db-1", "web-1", "web-2"],
            ),
            (
                "tier notin (front)",
                &["bare", "db-1", "web-2"],
                &["db-1", "web-2"],
            ),
            ("app=nothing", &[], &[]),
        ];
        let lister = lister(mode);
        for (text, all, in_a) in cases {
            let selector = parse_selector(text).unwrap();
            assert_eq!(sorted_names(lister.list(&selector)), *all, "list({text:?})");
            assert_eq!(
                sorted_names(lister.namespaced("a").list(&selector)),
                *in_a,
                "namespaced(a).list({text:?})"
            );
        }
    }
}

#[test]
fn a_label_selector_from_the_api_selects_the_same_objects() {
    for mode in MODES {
        let api = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["front".into()]),
            }]),
        };
        let selector: Selector = api.try_into().unwrap();
        assert_eq!(
            sorted_names(lister(mode).list(&selector)),
            ["web-1", "web-3"]
        );
    }
}

#[test]
fn namespaced_get_finds_only_objects_in_that_namespace() {
    for mode in MODES {
        let lister = lister(mode);
        assert!(lister.namespaced("a").get("web-1").is_some());
        assert!(lister.namespaced("b").get("web-1").is_none());
        assert!(lister.namespaced("nope").get("web-1").is_none());
        assert!(
            lister
                .namespaced("nope")
                .list(&Selector::default())
                .is_empty()
        );
        assert_eq!(lister.namespaced("b").namespace(), "b");
    }
}

#[test]
fn namespaced_list_uses_the_namespace_index_not_a_scan() {
    for mode in MODES {
        // An index that disagrees with the objects' namespaces cannot exist, so prove the index is
        // used by results following the index's order (key order) and count, for a namespace with
        // many objects next to a larger one.
        let store = store::<Pod>(mode);
        for i in (0..50).rev() {
            store.add(pod("big", &format!("p{i:02}"), &[])).unwrap();
        }
        store.add(pod("small", "z", &[])).unwrap();
        store.add(pod("small", "a", &[])).unwrap();
        let lister = Lister::new(store.clone());
        let names: Vec<String> = lister
            .namespaced("small")
            .list(&Selector::default())
            .iter()
            .map(|o| o.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["a", "z"]);
        assert_eq!(
            store.index_keys(NAMESPACE_INDEX, "small").unwrap(),
            [
                ObjectKey::new(Some("small"), "a"),
                ObjectKey::new(Some("small"), "z")
            ]
        );
    }
}

#[test]
fn get_by_key_and_by_index_read_through_to_the_store() {
    for mode in MODES {
        let lister = lister(mode);
        let key = ObjectKey::new(Some("b"), "bare");
        assert_same(
            mode,
            &lister.get_by_key(&key).unwrap(),
            &lister.store().get_by_key(&key).unwrap(),
        );
        assert_eq!(
            sorted_names(lister.by_index(NAMESPACE_INDEX, "b").unwrap()),
            ["bare", "web-3"]
        );
        assert!(matches!(
            lister.by_index("nope", "x"),
            Err(StoreError::UnknownIndex { .. })
        ));
    }
}

#[test]
fn a_lister_sees_writes_made_after_it_was_created() {
    for mode in MODES {
        let store = store::<Pod>(mode);
        let lister = Lister::new(store.clone());
        let clone = lister.clone();
        store.add(pod("a", "late", &[("app", "web")])).unwrap();
        assert_eq!(clone.list(&parse_selector("app=web").unwrap()).len(), 1);
        assert!(lister.namespaced("a").get("late").is_some());
    }
}

#[test]
fn malformed_selector_strings_are_typed_errors() {
    type Check = fn(&SelectorError) -> bool;
    let cases: &[(&str, Check)] = &[
        ("=web", |e| matches!(e, SelectorError::MissingKey { .. })),
        ("app=web,,tier", |e| {
            matches!(e, SelectorError::MissingKey { .. })
        }),
        ("!", |e| matches!(e, SelectorError::MissingKey { .. })),
        ("replicas>1", |e| {
            matches!(e, SelectorError::UnsupportedOperator { .. })
        }),
        ("app within (a)", |e| {
            matches!(e, SelectorError::UnsupportedOperator { .. })
        }),
        ("app in a,b", |e| {
            matches!(e, SelectorError::MalformedSet { .. })
        }),
        ("app in ()", |e| {
            matches!(
                e,
                SelectorError::InvalidLabel { .. } | SelectorError::MalformedSet { .. }
            )
        }),
        ("app=we b", |e| {
            matches!(e, SelectorError::InvalidLabel { what: "value", .. })
        }),
        ("a pp", |e| {
            matches!(e, SelectorError::UnsupportedOperator { .. })
        }),
        ("ap$p=web", |e| {
            matches!(e, SelectorError::InvalidLabel { what: "key", .. })
        }),
        ("Example.com/app=web", |e| {
            matches!(e, SelectorError::InvalidLabel { what: "key", .. })
        }),
    ];
    for (text, check) in cases {
        let err = parse_selector(text).expect_err(text);
        assert!(check(&err), "{text:?} gave {err:?}");
    }
}

#[test]
fn valid_selector_strings_parse_to_kube_expressions() {
    let cases: &[(&str, &str)] = &[
        ("", ""),
        ("app=web", "app=web"),
        ("app==web", "app=web"),
        (" app = web ", "app=web"),
        ("app=", "app="),
        ("example.com/app!=web", "example.com/app!=web"),
        (
            "env in (prod,staging), !legacy",
            "env in (prod,staging),!legacy",
        ),
        ("env notin ( b , a )", "env notin (a,b)"),
        ("tier", "tier"),
    ];
    for (text, canonical) in cases {
        let selector = parse_selector(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(selector.to_string(), *canonical, "{text:?}");
    }
}
