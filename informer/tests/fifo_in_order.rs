//! The in-order FIFO's guarantees (client-go's the_real_fifo_test.go cases re-expressed as
//! tables; see `informer/src/in_order_fifo.rs` for the contract).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ObjectMeta;
use reflex_informer::fifo::{
    DeltaType, Fifo, FifoError, KnownObjects, Pop, PopError, ProcessError, ReflectorSink,
};
use reflex_informer::in_order_fifo::InOrderFifo;
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

fn rv_of(obj: &ConfigMap) -> u32 {
    obj.metadata
        .resource_version
        .as_deref()
        .map_or(0, |rv| rv.parse().unwrap())
}

/// One popped item as the tests spell it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum P {
    /// A delta: kind, name, resourceVersion of its object (0: none), tombstone or not.
    D(DeltaType, &'static str, u32, bool),
    /// An atomic relist: resourceVersion and the listed (name, resourceVersion) pairs.
    Relist(String, Vec<(String, u32)>),
    /// An atomic resync.
    ResyncAll,
}

const fn d(kind: DeltaType, name: &'static str, rv: u32) -> P {
    P::D(kind, name, rv, false)
}

/// A `Deleted` tombstone carrying the object at `rv` (0: no object).
const fn tomb(name: &'static str, rv: u32) -> P {
    P::D(Deleted, name, rv, true)
}

fn summarize(pop: Pop<ConfigMap>) -> P {
    match pop {
        Pop::Key(popped) => {
            assert_eq!(popped.deltas.len(), 1, "one delta per pop");
            let delta = &popped.deltas[0];
            let rv = delta.object.object().map_or(0, |o| rv_of(o));
            let name: &'static str = popped.key.name().to_owned().leak();
            P::D(delta.kind, name, rv, delta.object.is_tombstone())
        }
        Pop::Relist {
            resource_version,
            objects,
            ..
        } => P::Relist(
            resource_version,
            objects
                .iter()
                .map(|o| (o.metadata.name.clone().unwrap(), rv_of(o)))
                .collect(),
        ),
        Pop::ResyncAll => P::ResyncAll,
    }
}

fn known(objs: &[(&str, u32)]) -> Indexer<ConfigMap> {
    let store = Indexer::<ConfigMap>::new();
    for (name, rv) in objs {
        store.add(cm(name, *rv)).unwrap();
    }
    store
}

fn fifo_with(known: &Indexer<ConfigMap>, atomic: bool) -> InOrderFifo<ConfigMap> {
    InOrderFifo::new(
        Some(Arc::new(known.clone()) as Arc<dyn KnownObjects<ConfigMap>>),
        atomic,
    )
}

async fn pop(fifo: &InOrderFifo<ConfigMap>) -> (P, bool) {
    let mut out = None;
    fifo.pop(&mut |pop| {
        let initial = match &pop {
            Pop::Key(p) => p.is_in_initial_list,
            Pop::Relist {
                is_in_initial_list, ..
            } => *is_in_initial_list,
            Pop::ResyncAll => false,
        };
        out = Some((summarize(pop), initial));
        Ok(())
    })
    .await
    .expect("pop");
    out.expect("processed")
}

async fn drain(fifo: &InOrderFifo<ConfigMap>) -> Vec<P> {
    let mut out = Vec::new();
    while !fifo.is_empty() {
        out.push(pop(fifo).await.0);
    }
    out
}

/// One write the Reflector can make.
#[derive(Clone, Copy)]
enum Op {
    Add(&'static str, u32),
    Update(&'static str, u32),
    Delete(&'static str, u32),
    Replace(&'static [(&'static str, u32)]),
    Resync,
}

fn apply(fifo: &InOrderFifo<ConfigMap>, ops: &[Op]) {
    for op in ops {
        match *op {
            Op::Add(n, rv) => fifo.add(cm(n, rv)).unwrap(),
            Op::Update(n, rv) => fifo.update(cm(n, rv)).unwrap(),
            Op::Delete(n, rv) => fifo.delete(cm(n, rv)).unwrap(),
            Op::Replace(items) => {
                fifo.replace_begin();
                fifo.replace_page(items.iter().map(|(n, rv)| cm(n, *rv)).collect())
                    .unwrap();
                fifo.replace_done("100").unwrap();
            }
            Op::Resync => fifo.resync().unwrap(),
        }
    }
}

#[tokio::test]
async fn plain_mode_delivers_every_change_in_arrival_order_with_a_relists_deletions_first() {
    use Op::*;
    type Case = (
        &'static str,
        &'static [(&'static str, u32)],
        &'static [Op],
        Vec<P>,
    );
    let cases: Vec<Case> = vec![
        (
            "no line jumping: a key queued again waits behind later keys",
            &[],
            &[
                Add("foo", 10),
                Add("bar", 1),
                Add("foo", 11),
                Add("foo", 13),
                Add("zab", 30),
            ],
            vec![
                d(Added, "foo", 10),
                d(Added, "bar", 1),
                d(Added, "foo", 11),
                d(Added, "foo", 13),
                d(Added, "zab", 30),
            ],
        ),
        (
            "add, update, delete of one key stay three pops",
            &[],
            &[Add("foo", 10), Update("foo", 12), Delete("foo", 15)],
            vec![
                d(Added, "foo", 10),
                d(Updated, "foo", 12),
                d(Deleted, "foo", 15),
            ],
        ),
        (
            "a delete of a key nobody knows is still delivered",
            &[],
            &[Delete("ghost", 3)],
            vec![d(Deleted, "ghost", 3)],
        ),
        (
            "a relist lists an object whose last queued delta is a delete",
            &[("foo", 1)],
            &[Delete("foo", 1), Replace(&[("foo", 2)])],
            vec![d(Deleted, "foo", 1), d(Replaced, "foo", 2)],
        ),
        (
            "an added object a relist no longer lists is tombstoned with the queued object",
            &[],
            &[Add("foo", 2), Replace(&[])],
            vec![d(Added, "foo", 2), tomb("foo", 2)],
        ),
        (
            "a deleted object a relist no longer lists gets no second delete",
            &[],
            &[Add("foo", 2), Delete("foo", 2), Replace(&[])],
            vec![d(Added, "foo", 2), d(Deleted, "foo", 2)],
        ),
        (
            "relisted objects then missing get a single delete",
            &[],
            &[
                Add("foo", 2),
                Replace(&[("foo", 2)]),
                Replace(&[("foo", 2)]),
                Replace(&[]),
            ],
            vec![
                d(Added, "foo", 2),
                d(Replaced, "foo", 2),
                d(Replaced, "foo", 2),
                tomb("foo", 2),
            ],
        ),
        (
            "two relists without the object delete it once",
            &[],
            &[Add("foo", 2), Replace(&[]), Replace(&[])],
            vec![d(Added, "foo", 2), tomb("foo", 2)],
        ),
        (
            "added, deleted and added again: the tombstone carries the newest object",
            &[],
            &[Add("foo", 2), Delete("foo", 2), Add("foo", 3), Replace(&[])],
            vec![
                d(Added, "foo", 2),
                d(Deleted, "foo", 2),
                d(Added, "foo", 3),
                tomb("foo", 3),
            ],
        ),
        (
            "known objects missing from a relist are deleted before the replacements",
            &[("foo", 5), ("bar", 6), ("baz", 7)],
            &[Delete("baz", 10), Replace(&[("foo", 5)])],
            vec![d(Deleted, "baz", 10), tomb("bar", 6), d(Replaced, "foo", 5)],
        ),
        (
            "a queued add of a known key missing from the relist: one tombstone, from the queue",
            &[("foo", 5), ("bar", 6), ("baz", 7)],
            &[Add("baz", 10), Replace(&[("foo", 5)])],
            vec![
                d(Added, "baz", 10),
                tomb("baz", 10),
                tomb("bar", 6),
                d(Replaced, "foo", 5),
            ],
        ),
        (
            "deleted and re-created in the queue, then relisted away",
            &[("foo", 5), ("bar", 6), ("baz", 7)],
            &[Delete("bar", 6), Add("bar", 100), Replace(&[("foo", 5)])],
            vec![
                d(Deleted, "bar", 6),
                d(Added, "bar", 100),
                tomb("bar", 100),
                tomb("baz", 7),
                d(Replaced, "foo", 5),
            ],
        ),
        (
            "a second relist tombstones what the first one queued",
            &[("foo", 5), ("bar", 6), ("baz", 7)],
            &[Replace(&[("bar", 100), ("foo", 5)]), Replace(&[("foo", 5)])],
            vec![
                tomb("baz", 7),
                d(Replaced, "bar", 100),
                d(Replaced, "foo", 5),
                tomb("bar", 100),
                d(Replaced, "foo", 5),
            ],
        ),
        (
            "resync re-delivers known objects as Sync",
            &[("foo", 5)],
            &[Resync],
            vec![d(Sync, "foo", 5)],
        ),
        (
            "resync skips a key with a queued change",
            &[("foo", 5)],
            &[Update("foo", 6), Resync],
            vec![d(Updated, "foo", 6)],
        ),
        (
            "resync after a queued delete of a known key adds nothing",
            &[("foo", 5)],
            &[Delete("foo", 10), Resync],
            vec![d(Deleted, "foo", 10)],
        ),
    ];
    for (name, store, ops, expected) in cases {
        let store = known(store);
        let fifo = fifo_with(&store, false);
        apply(&fifo, ops);
        assert_eq!(drain(&fifo).await, expected, "{name}");
    }
}

#[tokio::test]
async fn atomic_mode_queues_each_relist_and_resync_as_one_item_in_order() {
    use Op::*;
    let list = |items: &[(&str, u32)]| {
        P::Relist(
            "100".into(),
            items.iter().map(|(n, rv)| (n.to_string(), *rv)).collect(),
        )
    };
    let cases: Vec<(&str, Vec<Op>, Vec<P>)> = vec![
        ("an empty relist", vec![Replace(&[])], vec![list(&[])]),
        (
            "an event before a relist stays before it",
            vec![Add("foo", 2), Replace(&[])],
            vec![d(Added, "foo", 2), list(&[])],
        ),
        (
            "several relists run in order",
            vec![
                Add("foo", 2),
                Replace(&[("foo", 2)]),
                Replace(&[("foo", 2)]),
                Replace(&[]),
            ],
            vec![
                d(Added, "foo", 2),
                list(&[("foo", 2)]),
                list(&[("foo", 2)]),
                list(&[]),
            ],
        ),
        (
            "a resync is one item",
            vec![Add("foo", 2), Resync],
            vec![d(Added, "foo", 2), P::ResyncAll],
        ),
    ];
    for (name, ops, expected) in cases {
        let fifo = fifo_with(&known(&[("bar", 1)]), true);
        apply(&fifo, &ops);
        assert_eq!(drain(&fifo).await, expected, "{name}");
    }
}

#[tokio::test]
async fn synced_only_after_every_item_of_the_first_relist_was_processed() {
    // (name, atomic, ops, pops, synced after the pops)
    type Case = (&'static str, bool, &'static [Op], usize, bool);
    let cases: &[Case] = &[
        ("nothing yet", false, &[], 0, false),
        (
            "a watch event alone does not sync",
            false,
            &[Op::Add("a", 1)],
            1,
            false,
        ),
        (
            "an empty relist syncs at once",
            false,
            &[Op::Replace(&[])],
            0,
            true,
        ),
        (
            "a relist of two, nothing popped",
            false,
            &[Op::Replace(&[("a", 1), ("b", 2)])],
            0,
            false,
        ),
        (
            "a relist of two, one popped",
            false,
            &[Op::Replace(&[("a", 1), ("b", 2)])],
            1,
            false,
        ),
        (
            "a relist of two, both popped",
            false,
            &[Op::Replace(&[("a", 1), ("b", 2)])],
            2,
            true,
        ),
        (
            "a duplicate key is delivered twice and counted twice",
            false,
            &[Op::Replace(&[("a", 1), ("a", 2)])],
            1,
            false,
        ),
        (
            "an atomic relist is one item",
            true,
            &[Op::Replace(&[("a", 1), ("b", 2)])],
            1,
            true,
        ),
        (
            "an atomic relist, not popped",
            true,
            &[Op::Replace(&[("a", 1)])],
            0,
            false,
        ),
    ];
    for (name, atomic, ops, pops, synced) in cases {
        let fifo = fifo_with(&known(&[]), *atomic);
        apply(&fifo, ops);
        for _ in 0..*pops {
            pop(&fifo).await;
        }
        assert_eq!(fifo.has_synced(), *synced, "{name}");
    }
}

#[tokio::test]
async fn initial_relist_items_are_flagged_and_synced_turns_true_only_after_the_last_one() {
    let fifo = fifo_with(&known(&[("bar", 6), ("baz", 7)]), false);
    apply(&fifo, &[Op::Replace(&[("foo", 5)])]);
    let expected = [tomb("bar", 6), tomb("baz", 7), d(Replaced, "foo", 5)];
    for want in expected {
        assert!(!fifo.has_synced());
        let (got, initial) = pop(&fifo).await;
        assert_eq!(got, want);
        assert!(initial, "{want:?} belongs to the initial list");
    }
    assert!(fifo.has_synced());
    fifo.add(cm("late", 1)).unwrap();
    let (_, initial) = pop(&fifo).await;
    assert!(!initial);
}

#[tokio::test]
async fn synced_stays_false_while_the_last_initial_item_is_being_processed() {
    let fifo = Arc::new(fifo_with(&known(&[]), false));
    apply(&fifo, &[Op::Replace(&[("a", 1)])]);
    let seen_synced = Arc::new(AtomicUsize::new(2));
    let (f, s) = (fifo.clone(), seen_synced.clone());
    fifo.pop(&mut move |_| {
        s.store(usize::from(f.has_synced()), Ordering::SeqCst);
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(seen_synced.load(Ordering::SeqCst), 0);
    assert!(fifo.has_synced());
}

#[tokio::test]
async fn relist_pages_are_held_until_done_and_not_counted_as_backlog() {
    let fifo = fifo_with(&known(&[("old", 1)]), false);
    fifo.replace_begin();
    fifo.replace_page(vec![cm("a", 1)]).unwrap();
    fifo.replace_page(vec![cm("b", 2)]).unwrap();
    assert_eq!(fifo.len(), 0, "pages wait for replace_done");
    ReflectorSink::wait_for_room(&fifo, 1).await;
    fifo.replace_done("9").unwrap();
    assert_eq!(
        drain(&fifo).await,
        [tomb("old", 1), d(Replaced, "a", 1), d(Replaced, "b", 2)]
    );
}

#[tokio::test]
async fn an_abandoned_relist_is_forgotten_by_the_next_begin() {
    let fifo = fifo_with(&known(&[]), false);
    fifo.replace_begin();
    fifo.replace_page(vec![cm("half", 1)]).unwrap();
    fifo.replace_begin();
    fifo.replace_page(vec![cm("whole", 2)]).unwrap();
    fifo.replace_done("3").unwrap();
    assert_eq!(drain(&fifo).await, [d(Replaced, "whole", 2)]);
}

#[tokio::test]
async fn a_requeued_delta_goes_back_to_the_front_and_a_failed_relist_is_dropped() {
    let fifo = fifo_with(&known(&[]), false);
    apply(&fifo, &[Op::Add("a", 1), Op::Add("b", 2)]);
    let result = fifo
        .pop(&mut |_| Err(ProcessError::Requeue("not yet".into())))
        .await;
    assert!(matches!(result, Err(PopError::Requeued { .. })));
    assert_eq!(
        drain(&fifo).await,
        [d(Added, "a", 1), d(Added, "b", 2)],
        "a comes first again"
    );

    let atomic = fifo_with(&known(&[]), true);
    apply(&atomic, &[Op::Replace(&[("a", 1)])]);
    let result = atomic
        .pop(&mut |_| Err(ProcessError::Requeue("store full".into())))
        .await;
    assert!(matches!(result, Err(PopError::RelistFailed { .. })));
    assert!(atomic.is_empty());
    assert!(
        atomic.has_synced(),
        "a dropped relist still counts as processed"
    );
}

#[tokio::test]
async fn closing_releases_waiting_pops_and_refuses_writes() {
    let fifo = Arc::new(fifo_with(&known(&[]), false));
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let fifo = fifo.clone();
            tokio::spawn(async move { fifo.pop(&mut |_| Ok(())).await })
        })
        .collect();
    tokio::task::yield_now().await;
    fifo.close();
    for waiter in waiters {
        assert!(matches!(waiter.await.unwrap(), Err(PopError::Closed)));
    }
    assert!(matches!(fifo.add(cm("a", 1)), Err(FifoError::Closed)));
    assert!(fifo.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_keep_each_producers_order() {
    const AMOUNT: u32 = 500;
    let fifo = Arc::new(fifo_with(&known(&[]), false));
    let producers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|prefix| {
            let fifo = fifo.clone();
            tokio::spawn(async move {
                for i in 1..=AMOUNT {
                    fifo.add(cm(&format!("{prefix}{i}"), i)).unwrap();
                }
            })
        })
        .collect();
    let mut last = [0u32; 2];
    for _ in 0..2 * AMOUNT {
        let (got, _) = pop(&fifo).await;
        let P::D(_, name, rv, _) = got else {
            panic!("only deltas were queued")
        };
        let slot = usize::from(name.starts_with('b'));
        assert!(rv > last[slot], "{name} after {}", last[slot]);
        last[slot] = rv;
    }
    for p in producers {
        p.await.unwrap();
    }
    assert_eq!(last, [AMOUNT, AMOUNT]);
}
