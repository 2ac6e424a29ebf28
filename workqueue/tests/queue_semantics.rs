//! Queue guarantees that involve several tasks: wake-ups, cancellation and the two shutdowns.

use std::time::Duration;

use reflex_workqueue::{Added, Done, Queue};
use tokio::task::JoinHandle;

async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

fn spawn_getters(queue: &Queue<u32>, n: usize) -> Vec<JoinHandle<Option<u32>>> {
    (0..n)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move { queue.get().await })
        })
        .collect()
}

#[tokio::test]
async fn each_item_wakes_exactly_one_waiting_worker() {
    let queue = Queue::new();
    let getters = spawn_getters(&queue, 5);
    settle().await;
    assert!(getters.iter().all(|getter| !getter.is_finished()));
    let _ = queue.add(1);
    settle().await;
    assert_eq!(
        getters.iter().filter(|getter| getter.is_finished()).count(),
        1
    );
    let _ = queue.add(2);
    settle().await;
    assert_eq!(
        getters.iter().filter(|getter| getter.is_finished()).count(),
        2
    );
    queue.shut_down();
    let mut results = Vec::new();
    for getter in getters {
        results.push(getter.await.unwrap());
    }
    results.sort();
    assert_eq!(results, vec![None, None, None, Some(1), Some(2)]);
}

#[tokio::test]
async fn shut_down_wakes_every_waiting_worker() {
    let queue = Queue::new();
    let getters = spawn_getters(&queue, 8);
    settle().await;
    queue.shut_down();
    for getter in getters {
        assert_eq!(getter.await.unwrap(), None);
    }
}

#[tokio::test]
async fn cancelled_get_never_loses_an_item() {
    let queue = Queue::new();
    let first = spawn_getters(&queue, 1).remove(0);
    settle().await;
    let second = spawn_getters(&queue, 1).remove(0);
    settle().await;
    // The first waiter is notified, then cancelled before it can take the item.
    let _ = queue.add(9);
    first.abort();
    settle().await;
    assert_eq!(second.await.unwrap(), Some(9));
    assert!(first.await.unwrap_err().is_cancelled());
}

#[tokio::test]
async fn get_is_pending_until_an_item_arrives() {
    let queue = Queue::new();
    let getter = spawn_getters(&queue, 1).remove(0);
    settle().await;
    assert!(!getter.is_finished());
    let _ = queue.add(3);
    assert_eq!(getter.await.unwrap(), Some(3));
}

#[tokio::test]
async fn shut_down_with_drain_hands_out_queued_items_then_returns_none() {
    let queue = Queue::new();
    for item in [1, 2, 3] {
        let _ = queue.add(item);
    }
    let drain = tokio::spawn({
        let queue = queue.clone();
        async move { queue.shut_down_with_drain().await }
    });
    settle().await;
    assert_eq!(queue.add(4), Added::ShuttingDown);
    let mut handled = Vec::new();
    while let Some(item) = queue.get().await {
        handled.push(item);
        assert!(!drain.is_finished(), "an item is still in flight");
        let _ = queue.done(&item);
    }
    assert_eq!(handled, vec![1, 2, 3]);
    drain.await.unwrap();
}

#[tokio::test]
async fn shut_down_with_drain_waits_for_in_flight_items() {
    let queue = Queue::new();
    let _ = queue.add(1);
    let item = queue.get().await.unwrap();
    let drain = tokio::spawn({
        let queue = queue.clone();
        async move { queue.shut_down_with_drain().await }
    });
    settle().await;
    assert!(!drain.is_finished());
    assert_eq!(queue.done(&item), Done::Finished);
    drain.await.unwrap();
}

#[tokio::test]
async fn item_re_added_before_drain_is_processed_again_during_drain() {
    let queue = Queue::new();
    let _ = queue.add(1);
    let item = queue.get().await.unwrap();
    assert_eq!(queue.add(1), Added::AfterDone);
    // An idle worker must not exit while the re-added item may still come back.
    let idle = spawn_getters(&queue, 1).remove(0);
    let drain = tokio::spawn({
        let queue = queue.clone();
        async move { queue.shut_down_with_drain().await }
    });
    settle().await;
    assert!(!idle.is_finished());
    assert_eq!(queue.done(&item), Done::Requeued);
    assert_eq!(idle.await.unwrap(), Some(1));
    assert!(!drain.is_finished());
    assert_eq!(queue.done(&1), Done::Finished);
    drain.await.unwrap();
    assert_eq!(queue.get().await, None);
}

#[tokio::test]
async fn idle_workers_are_released_when_a_drain_has_nothing_left() {
    let queue = Queue::new();
    let getters = spawn_getters(&queue, 3);
    settle().await;
    queue.shut_down_with_drain().await;
    for getter in getters {
        assert_eq!(getter.await.unwrap(), None);
    }
}

#[tokio::test]
async fn shut_down_releases_a_pending_drain() {
    let queue = Queue::new();
    let _ = queue.add(1);
    let _ = queue.add(2);
    let _held = queue.get().await.unwrap();
    let drain = tokio::spawn({
        let queue = queue.clone();
        async move { queue.shut_down_with_drain().await }
    });
    settle().await;
    assert!(!drain.is_finished());
    queue.shut_down();
    // Generous: the drain task only has to be scheduled, which a loaded machine may delay.
    tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .expect("released")
        .unwrap();
    assert_eq!(queue.len(), 0, "the queued item was dropped");
    assert_eq!(queue.get().await, None);
}
