//! The DeltaFIFO's guarantees (DESIGN section 3 "DeltaFIFO"; client-go's delta_fifo_test.go cases
//! re-expressed as tables).

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ObjectMeta;
use reflex_informer::delta_fifo::DeltaFifo;
use reflex_informer::fifo::{
    Delta, DeltaType, Fifo, FifoError, KnownObjects, Pop, PopError, Popped, ProcessError,
    ReflectorSink,
};
use reflex_informer::key::ObjectKey;
use reflex_informer::store::Indexer;

use DeltaType::{Added, Deleted, Replaced, Sync, Updated};

fn cm(name: &str, rv: u32) -> Arc<ConfigMap> {
    Arc::new(ConfigMap {
        metadata: ObjectMeta {
            namespace: Some("ns".into()),
            name: Some(name.into()),
            resource_version: Some(rv.to_string()),
            ..Default::default()
        },
        ..Default::default()
    })
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(Some("ns"), name)
}

/// A delta as the tests spell it: kind, resourceVersion of the carried object (0: none), and
/// whether it is a tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct D(DeltaType, u32, bool);

const fn obj(kind: DeltaType, rv: u32) -> D {
    D(kind, rv, false)
}

/// A `Deleted` tombstone carrying the object at `rv` (0: no object).
const fn tomb(rv: u32) -> D {
    D(Deleted, rv, true)
}

fn summarize(deltas: &[Delta<ConfigMap>]) -> Vec<D> {
    deltas
        .iter()
        .map(|d| {
            let rv = d
                .object
                .object()
                .and_then(|o| o.metadata.resource_version.as_deref())
                .map_or(0, |rv| rv.parse().unwrap());
            D(d.kind, rv, d.object.is_tombstone())
        })
        .collect()
}

/// A store already holding `objs`, as the FIFO's known objects.
fn known(objs: &[(&str, u32)]) -> Indexer<ConfigMap> {
    let store = Indexer::<ConfigMap>::new();
    for (name, rv) in objs {
        store.add(cm(name, *rv)).unwrap();
    }
    store
}

fn fifo_with(known: Option<&Indexer<ConfigMap>>) -> DeltaFifo<ConfigMap> {
    DeltaFifo::new(known.map(|k| Arc::new(k.clone()) as Arc<dyn KnownObjects<ConfigMap>>))
}

async fn pop(fifo: &DeltaFifo<ConfigMap>) -> Popped<ConfigMap> {
    fifo.pop(Ok).await.expect("pop")
}

/// Pops everything queued, as `(name, deltas)` in queue order.
async fn drain(fifo: &DeltaFifo<ConfigMap>) -> Vec<(String, Vec<D>)> {
    let mut out = Vec::new();
    while !fifo.is_empty() {
        let p = pop(fifo).await;
        out.push((p.key.name().to_owned(), summarize(&p.deltas)));
    }
    out
}

/// One write the Reflector can make.
#[derive(Clone, Copy)]
enum Op {
    Add(&'static str, u32),
    Update(&'static str, u32),
    Delete(&'static str, u32),
    Begin,
    Page(&'static [(&'static str, u32)]),
    Done,
    Resync,
}

fn apply(fifo: &DeltaFifo<ConfigMap>, ops: &[Op]) {
    for op in ops {
        match *op {
            Op::Add(n, rv) => fifo.add(cm(n, rv)).unwrap(),
            Op::Update(n, rv) => fifo.update(cm(n, rv)).unwrap(),
            Op::Delete(n, rv) => fifo.delete(cm(n, rv)).unwrap(),
            Op::Begin => fifo.replace_begin(),
            Op::Page(items) => fifo
                .replace_page(items.iter().map(|(n, rv)| cm(n, *rv)).collect())
                .unwrap(),
            Op::Done => fifo.replace_done("100").unwrap(),
            Op::Resync => fifo.resync().unwrap(),
        }
    }
}

struct Case<'a> {
    name: &'static str,
    known: &'static [(&'static str, u32)],
    use_known: bool,
    ops: &'a [Op],
    /// Expected pops, in order. Where client-go leaves the order of relist deletions
    /// unspecified, cases use one such deletion only.
    expect: &'a [(&'static str, &'a [D])],
}

#[tokio::test]
async fn queue_semantics_table() {
    use Op::*;
    let cases = [
        Case {
            name: "deltas for one key accumulate in order under one entry",
            known: &[],
            use_known: false,
            ops: &[Add("a", 1), Update("a", 2), Update("a", 3)],
            expect: &[("a", &[obj(Added, 1), obj(Updated, 2), obj(Updated, 3)])],
        },
        Case {
            name: "added then updated are not coalesced",
            known: &[],
            use_known: false,
            ops: &[Add("a", 10), Update("a", 12), Delete("a", 15)],
            expect: &[("a", &[obj(Added, 10), obj(Updated, 12), obj(Deleted, 15)])],
        },
        Case {
            name: "a key keeps its first position (no line jumping)",
            known: &[],
            use_known: false,
            ops: &[
                Add("foo", 10),
                Add("bar", 1),
                Add("foo", 11),
                Add("zab", 30),
            ],
            expect: &[
                ("foo", &[obj(Added, 10), obj(Added, 11)]),
                ("bar", &[obj(Added, 1)]),
                ("zab", &[obj(Added, 30)]),
            ],
        },
        Case {
            name: "delete of a key neither queued nor known is ignored",
            known: &[],
            use_known: false,
            ops: &[Add("foo", 10), Update("bar", 15), Delete("baz", 20)],
            expect: &[("foo", &[obj(Added, 10)]), ("bar", &[obj(Updated, 15)])],
        },
        Case {
            name: "delete of a known key is queued",
            known: &[("foo", 5), ("bar", 6), ("baz", 7)],
            use_known: true,
            ops: &[Add("foo", 10), Update("bar", 15), Delete("baz", 20)],
            expect: &[
                ("foo", &[obj(Added, 10)]),
                ("bar", &[obj(Updated, 15)]),
                ("baz", &[obj(Deleted, 20)]),
            ],
        },
        Case {
            name: "delete of a queued but unknown key is queued",
            known: &[],
            use_known: true,
            ops: &[Add("foo", 5), Delete("foo", 6)],
            expect: &[("foo", &[obj(Added, 5), obj(Deleted, 6)])],
        },
        Case {
            name: "two deletions keep the older when it has the real object",
            known: &[("a", 1)],
            use_known: true,
            ops: &[Delete("a", 2), Delete("a", 3)],
            expect: &[("a", &[obj(Deleted, 2)])],
        },
        Case {
            name: "a deletion after a relist tombstone replaces the tombstone",
            known: &[("a", 1)],
            use_known: true,
            ops: &[Page(&[]), Done, Delete("a", 3)],
            expect: &[("a", &[obj(Deleted, 3)])],
        },
        Case {
            name: "a relist tombstone after a real deletion is dropped",
            known: &[],
            use_known: false,
            ops: &[Add("a", 1), Delete("a", 2), Page(&[]), Done],
            expect: &[("a", &[obj(Added, 1), obj(Deleted, 2)])],
        },
        Case {
            name: "replace appends Replaced even after a queued deletion",
            known: &[("foo", 1)],
            use_known: true,
            ops: &[Delete("foo", 1), Page(&[("foo", 2)]), Done],
            expect: &[("foo", &[obj(Deleted, 1), obj(Replaced, 2)])],
        },
        Case {
            name: "replace of a known listed object emits Replaced",
            known: &[("foo", 5)],
            use_known: true,
            ops: &[Page(&[("foo", 5)]), Done],
            expect: &[("foo", &[obj(Replaced, 5)])],
        },
        Case {
            name: "replace after add yields the listed object last",
            known: &[],
            use_known: false,
            ops: &[Add("foo", 10), Page(&[("foo", 15)]), Done],
            expect: &[("foo", &[obj(Added, 10), obj(Replaced, 15)])],
        },
        Case {
            name: "replace tombstones a known key absent from the list with the known object",
            known: &[("foo", 5), ("bar", 6), ("baz", 7)],
            use_known: true,
            ops: &[Delete("baz", 10), Page(&[("foo", 5)]), Done],
            expect: &[
                ("baz", &[obj(Deleted, 10)]),
                ("foo", &[obj(Replaced, 5)]),
                ("bar", &[tomb(6)]),
            ],
        },
        Case {
            name: "replace tombstones a queued key absent from the list with the newest queued object",
            known: &[("foo", 5), ("baz", 7)],
            use_known: true,
            ops: &[Add("baz", 10), Page(&[("foo", 5)]), Done],
            expect: &[
                ("baz", &[obj(Added, 10), tomb(10)]),
                ("foo", &[obj(Replaced, 5)]),
            ],
        },
        Case {
            name: "replace without known objects tombstones only queued keys",
            known: &[],
            use_known: false,
            ops: &[Add("baz", 10), Page(&[("foo", 5)]), Done],
            expect: &[
                ("baz", &[obj(Added, 10), tomb(10)]),
                ("foo", &[obj(Replaced, 5)]),
            ],
        },
        Case {
            name: "a key listed on any page of the relist is not tombstoned",
            known: &[("a", 1), ("b", 1), ("c", 1)],
            use_known: true,
            ops: &[Page(&[("a", 2)]), Page(&[]), Page(&[("b", 2)]), Done],
            expect: &[
                ("a", &[obj(Replaced, 2)]),
                ("b", &[obj(Replaced, 2)]),
                ("c", &[tomb(1)]),
            ],
        },
        Case {
            name: "replace_begin forgets the keys of an abandoned relist",
            known: &[("a", 1), ("b", 1)],
            use_known: true,
            ops: &[Page(&[("a", 2)]), Begin, Page(&[("b", 2)]), Done],
            expect: &[
                ("a", &[obj(Replaced, 2), tomb(2)]),
                ("b", &[obj(Replaced, 2)]),
            ],
        },
        Case {
            name: "update of a known key is an Updated delta, not a resync",
            known: &[("foo", 5)],
            use_known: true,
            ops: &[Update("foo", 6)],
            expect: &[("foo", &[obj(Updated, 6)])],
        },
        Case {
            name: "resync queues Sync with the cached object for keys with nothing queued",
            known: &[("a", 1), ("b", 2)],
            use_known: true,
            ops: &[Update("a", 5), Resync],
            expect: &[("a", &[obj(Updated, 5)]), ("b", &[obj(Sync, 2)])],
        },
        Case {
            name: "resync without known objects does nothing",
            known: &[],
            use_known: false,
            ops: &[Resync],
            expect: &[],
        },
    ];
    for case in cases {
        let store = known(case.known);
        let fifo = fifo_with(case.use_known.then_some(&store));
        apply(&fifo, case.ops);
        let got = drain(&fifo).await;
        let want: Vec<(String, Vec<D>)> = case
            .expect
            .iter()
            .map(|(n, d)| ((*n).to_owned(), d.to_vec()))
            .collect();
        assert_eq!(got, want, "case: {}", case.name);
    }
}

#[tokio::test]
async fn has_synced_table() {
    use Op::*;
    // (name, ops before, pops, expected has_synced)
    let cases: &[(&str, &[Op], usize, bool)] = &[
        ("nothing happened", &[], 0, false),
        ("watch events alone do not sync", &[Add("a", 1)], 1, false),
        (
            "an empty first relist syncs at once",
            &[Page(&[]), Done],
            0,
            true,
        ),
        (
            "an empty first relist with no page syncs at once",
            &[Done],
            0,
            true,
        ),
        (
            "listed items not popped",
            &[Page(&[("a", 1), ("b", 2)]), Done],
            0,
            false,
        ),
        (
            "one of two listed items popped",
            &[Page(&[("a", 1), ("b", 2)]), Done],
            1,
            false,
        ),
        (
            "every listed item popped",
            &[Page(&[("a", 1), ("b", 2)]), Done],
            2,
            true,
        ),
        (
            "a key listed twice counts once",
            &[Page(&[("a", 1), ("a", 2)]), Done],
            1,
            true,
        ),
        (
            "pages popped before replace_done do not sync before it",
            &[Page(&[("a", 1)])],
            1,
            false,
        ),
        (
            "items queued by watch events before the relist count",
            &[Add("x", 1), Page(&[("a", 1)]), Done],
            1,
            false,
        ),
        (
            "tombstones of the first relist count",
            &[Add("x", 1), Page(&[("a", 1)]), Done],
            2,
            true,
        ),
        (
            "later relists do not unsync",
            &[Page(&[]), Done, Page(&[("a", 1)]), Done],
            0,
            true,
        ),
    ];
    for (name, ops, pops, want) in cases {
        let fifo = fifo_with(None);
        apply(&fifo, ops);
        for _ in 0..*pops {
            pop(&fifo).await;
        }
        assert_eq!(fifo.has_synced(), *want, "case: {name}");
    }
}

#[tokio::test]
async fn pops_between_pages_count_towards_sync() {
    let fifo = fifo_with(None);
    fifo.replace_page(vec![cm("a", 1)]).unwrap();
    assert!(pop(&fifo).await.is_in_initial_list);
    fifo.replace_page(vec![cm("b", 1)]).unwrap();
    fifo.replace_done("5").unwrap();
    assert!(!fifo.has_synced());
    assert!(pop(&fifo).await.is_in_initial_list);
    assert!(fifo.has_synced());
}

#[tokio::test]
async fn has_synced_stays_false_while_the_last_item_of_the_first_relist_is_processed() {
    // A reader that sees `has_synced()` must see the store holding the whole first list: the
    // last item counts only once its processing (the store write) is done.
    let fifo = fifo_with(None);
    fifo.replace_page(vec![cm("a", 1)]).unwrap();
    fifo.replace_done("5").unwrap();
    let synced_while_processing = fifo
        .pop(|_popped| Ok::<_, ProcessError>(fifo.has_synced()))
        .await
        .unwrap();
    assert!(!synced_while_processing);
    assert!(fifo.has_synced());
}

#[tokio::test]
async fn has_synced_stays_false_until_every_tombstone_of_the_first_relist_is_popped() {
    let store = known(&[("foo", 5), ("bar", 6), ("baz", 7)]);
    let fifo = fifo_with(Some(&store));
    fifo.replace_page(vec![cm("foo", 5)]).unwrap();
    fifo.replace_done("1").unwrap();
    for _ in 0..3 {
        assert!(!fifo.has_synced());
        let popped = pop(&fifo).await;
        assert!(popped.is_in_initial_list, "{}", popped.key);
    }
    assert!(fifo.has_synced());
}

#[tokio::test]
async fn is_in_initial_list_is_false_after_sync() {
    let fifo = fifo_with(None);
    fifo.replace_page(vec![cm("a", 1)]).unwrap();
    fifo.replace_done("1").unwrap();
    fifo.add(cm("b", 2)).unwrap();
    assert!(pop(&fifo).await.is_in_initial_list);
    assert!(!pop(&fifo).await.is_in_initial_list);
}

#[tokio::test]
async fn requeued_deltas_go_back_at_the_front_and_pop_again() {
    let fifo = fifo_with(None);
    fifo.add(cm("foo", 10)).unwrap();
    fifo.add(cm("bar", 1)).unwrap();
    let err = fifo
        .pop(|p| -> Result<(), _> {
            assert_eq!(p.key, key("foo"));
            Err(ProcessError::Requeue("not now".into()))
        })
        .await
        .unwrap_err();
    assert!(matches!(err, PopError::Requeued { ref key, .. } if key.name() == "foo"));
    assert_eq!(fifo.list_keys(), [key("foo"), key("bar")]);
    let again = pop(&fifo).await;
    assert_eq!(summarize(&again.deltas), [obj(Added, 10)]);
}

#[tokio::test]
async fn requeued_deltas_merge_before_newer_deltas_for_the_same_key() {
    let fifo = Arc::new(fifo_with(None));
    fifo.add(cm("bar", 1)).unwrap();
    fifo.add(cm("foo", 10)).unwrap();
    fifo.add(cm("foo", 11)).unwrap();
    pop(&fifo).await; // bar
    let writer = fifo.clone();
    let err = fifo
        .pop(move |p| -> Result<(), _> {
            // A watch event for the same key arrives while it is being processed.
            writer.add(cm("baz", 1)).unwrap();
            writer.update(cm("foo", 12)).unwrap();
            assert_eq!(p.key, key("foo"));
            Err(ProcessError::Requeue("conflict".into()))
        })
        .await
        .unwrap_err();
    assert!(matches!(err, PopError::Requeued { .. }));
    assert_eq!(fifo.list_keys(), [key("foo"), key("baz")]);
    let again = pop(&fifo).await;
    assert_eq!(
        summarize(&again.deltas),
        [obj(Added, 10), obj(Added, 11), obj(Updated, 12)]
    );
}

#[tokio::test]
async fn a_requeued_initial_item_keeps_the_fifo_unsynced() {
    let fifo = fifo_with(None);
    fifo.replace_page(vec![cm("a", 1)]).unwrap();
    fifo.replace_done("1").unwrap();
    let _ = fifo
        .pop(|_| -> Result<(), _> { Err(ProcessError::Requeue("later".into())) })
        .await;
    assert!(!fifo.has_synced());
    assert!(pop(&fifo).await.is_in_initial_list);
    assert!(fifo.has_synced());
}

#[tokio::test]
async fn failed_processing_drops_the_deltas() {
    let fifo = fifo_with(None);
    fifo.add(cm("a", 1)).unwrap();
    let err = fifo
        .pop(|_| -> Result<(), _> { Err(ProcessError::Failed("broken".into())) })
        .await
        .unwrap_err();
    assert!(matches!(err, PopError::Failed { .. }));
    assert!(fifo.is_empty());
}

#[tokio::test]
async fn pop_waits_for_an_item() {
    let fifo = Arc::new(fifo_with(None));
    let popper = tokio::spawn({
        let fifo = fifo.clone();
        async move { fifo.pop(|p| Ok(p.key)).await }
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!popper.is_finished());
    fifo.add(cm("a", 1)).unwrap();
    assert_eq!(popper.await.unwrap().unwrap(), key("a"));
}

#[tokio::test]
async fn close_unblocks_every_waiting_pop_and_refuses_writes() {
    let fifo = Arc::new(fifo_with(None));
    let poppers: Vec<_> = (0..10)
        .map(|_| {
            let fifo = fifo.clone();
            tokio::spawn(async move { fifo.pop(|p| Ok(p.key)).await })
        })
        .collect();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    fifo.close();
    for popper in poppers {
        assert!(matches!(popper.await.unwrap(), Err(PopError::Closed)));
    }
    assert!(matches!(fifo.add(cm("a", 1)), Err(FifoError::Closed)));
    assert!(fifo.is_closed());
}

#[tokio::test]
async fn pop_after_close_returns_closed_even_with_items_queued() {
    let fifo = fifo_with(None);
    fifo.add(cm("a", 1)).unwrap();
    fifo.close();
    assert!(matches!(fifo.pop(Ok).await, Err(PopError::Closed)));
}

#[tokio::test]
async fn an_object_without_a_name_is_a_key_error() {
    let fifo = fifo_with(None);
    let err = fifo.add(Arc::new(ConfigMap::default())).unwrap_err();
    assert!(matches!(err, FifoError::Key(_)));
    let err = fifo
        .replace_page(vec![cm("a", 1), Arc::new(ConfigMap::default())])
        .unwrap_err();
    assert!(matches!(err, FifoError::Key(_)));
    assert!(
        fifo.is_empty(),
        "a page with an unkeyable object is not queued at all"
    );
}

#[tokio::test]
async fn concurrent_producers_keep_per_key_order() {
    let fifo = Arc::new(fifo_with(None));
    const AMOUNT: u32 = 200;
    let producers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|prefix| {
            let fifo = fifo.clone();
            tokio::spawn(async move {
                for i in 0..AMOUNT {
                    fifo.add(cm(&format!("{prefix}-{i}"), i + 1)).unwrap();
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    let mut last = [0u32; 2];
    for _ in 0..2 * AMOUNT {
        let p = pop(&fifo).await;
        let rv = summarize(&p.deltas)[0].1;
        let slot = usize::from(p.key.name().starts_with('b'));
        assert!(rv > last[slot], "{} out of order after {}", rv, last[slot]);
        last[slot] = rv;
    }
    for p in producers {
        p.await.unwrap();
    }
    assert_eq!(last, [AMOUNT, AMOUNT]);
}

#[tokio::test]
async fn works_through_the_dyn_fifo_trait() {
    let fifo: Arc<dyn Fifo<ConfigMap>> = Arc::new(fifo_with(None));
    fifo.replace_page(vec![cm("a", 1)]).unwrap();
    fifo.replace_done("1").unwrap();
    assert_eq!(fifo.len(), 1);
    let mut seen = Vec::new();
    let mut process = |pop: Pop<ConfigMap>| {
        if let Pop::Key(p) = pop {
            seen.push((p.key.clone(), p.is_in_initial_list));
        }
        Ok(())
    };
    fifo.pop(&mut process).await.unwrap();
    assert_eq!(seen, [(key("a"), true)]);
    assert!(fifo.has_synced());
    fifo.close();
    let mut process = |_p: Pop<ConfigMap>| Ok(());
    assert!(matches!(
        fifo.pop(&mut process).await,
        Err(PopError::Closed)
    ));
}

#[tokio::test(start_paused = true)]
async fn delete_of_a_key_being_processed_is_not_lost() {
    // The key is popped (no longer queued) and not yet in the store when the delete arrives:
    // the delete must wait for processing, then see the stored object and queue.
    let store = known(&[]);
    let fifo = Arc::new(fifo_with(Some(&store)));
    fifo.add(cm("a", 1)).unwrap();
    let deleter = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            // Wait until processing started, then delete.
            while !fifo.is_empty() {
                std::thread::yield_now();
            }
            fifo.delete(cm("a", 2)).unwrap();
        })
    };
    let store_w = store.clone();
    fifo.pop(move |p| {
        // Give the deleter every chance to run while we hold the key.
        for _ in 0..1000 {
            std::thread::yield_now();
        }
        store_w
            .add(p.deltas[0].object.object().unwrap().clone())
            .unwrap();
        Ok(())
    })
    .await
    .unwrap();
    deleter.join().unwrap();
    // Paused clock: if nothing was queued, the idle runtime jumps to the deadline at once.
    let next = tokio::time::timeout(std::time::Duration::from_secs(1), pop(&fifo))
        .await
        .expect("the delete was lost");
    assert_eq!(summarize(&next.deltas), [obj(Deleted, 2)]);
}

#[tokio::test]
async fn deltas_of_and_list_keys_show_the_queue() {
    let fifo = fifo_with(None);
    fifo.add(cm("b", 1)).unwrap();
    fifo.add(cm("a", 2)).unwrap();
    fifo.update(cm("b", 3)).unwrap();
    assert_eq!(fifo.list_keys(), [key("b"), key("a")]);
    assert_eq!(fifo.len(), 2);
    assert_eq!(
        summarize(&fifo.deltas_of(&key("b")).unwrap()),
        [obj(Added, 1), obj(Updated, 3)]
    );
    assert!(fifo.deltas_of(&key("zz")).is_none());
}

#[tokio::test]
async fn resync_skips_keys_with_queued_deltas_so_stale_objects_never_overtake() {
    let store = known(&[("a", 1)]);
    let fifo = fifo_with(Some(&store));
    fifo.update(cm("a", 2)).unwrap();
    fifo.resync().unwrap();
    let p = pop(&fifo).await;
    assert_eq!(summarize(&p.deltas), [obj(Updated, 2)]);
    assert!(fifo.is_empty());
    // With nothing queued, resync carries the cached object itself (the same Arc).
    fifo.resync().unwrap();
    let p = pop(&fifo).await;
    let cached = store.get_by_key(&key("a")).unwrap();
    assert!(Arc::ptr_eq(p.deltas[0].object.object().unwrap(), &cached));
    assert_eq!(p.deltas[0].kind, Sync);
}

#[tokio::test]
async fn tombstone_of_a_known_key_carries_the_cached_object() {
    let store = known(&[("gone", 7)]);
    let fifo = fifo_with(Some(&store));
    fifo.replace_page(vec![]).unwrap();
    fifo.replace_done("9").unwrap();
    let p = pop(&fifo).await;
    let delta = &p.deltas[0];
    assert_eq!(delta.kind, Deleted);
    match &delta.object {
        reflex_informer::handler::DeltaObject::Tombstone(t) => {
            assert_eq!(t.key, key("gone"));
            let cached = store.get_by_key(&key("gone")).unwrap();
            assert!(Arc::ptr_eq(t.obj.as_ref().unwrap(), &cached));
        }
        other => panic!("expected a tombstone, got {other:?}"),
    }
}
