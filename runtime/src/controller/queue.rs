//! The controller's work queue: rate-limited (client-go's) or by priority.

use std::time::Duration;

use reflex_informer::key::ObjectKey;
use reflex_workqueue::priority::NORMAL_PRIORITY;
use reflex_workqueue::{AddOpts, Added, DelayingError, PriorityQueue, RateLimitingQueue};

/// The queue of a [`Controller`](super::Controller): the default rate-limited FIFO, or a priority queue (see
/// [`ControllerOptions::priority_queue`](super::ControllerOptions::priority_queue)). Both convert from their queue, for
/// [`Controller::queue`](super::Controller::queue).
#[derive(Debug, Clone)]
pub enum ControllerQueue {
    /// A FIFO with per-key backoff; priorities are ignored and resyncs are not queued.
    RateLimited(RateLimitingQueue<ObjectKey>),
    /// Initial-list keys and resyncs at [`LOW_PRIORITY`](reflex_workqueue::priority::LOW_PRIORITY), real changes at
    /// [`NORMAL_PRIORITY`](reflex_workqueue::priority::NORMAL_PRIORITY);
    /// a retry keeps the priority its key was handed out at.
    Priority(PriorityQueue<ObjectKey>),
}

impl From<RateLimitingQueue<ObjectKey>> for ControllerQueue {
    fn from(queue: RateLimitingQueue<ObjectKey>) -> Self {
        ControllerQueue::RateLimited(queue)
    }
}

impl From<PriorityQueue<ObjectKey>> for ControllerQueue {
    fn from(queue: PriorityQueue<ObjectKey>) -> Self {
        ControllerQueue::Priority(queue)
    }
}

impl ControllerQueue {
    pub(super) fn is_priority(&self) -> bool {
        matches!(self, ControllerQueue::Priority(_))
    }

    pub(super) fn add(&self, key: ObjectKey, priority: i32) {
        let _ = match self {
            ControllerQueue::RateLimited(queue) => queue.add(key),
            ControllerQueue::Priority(queue) => {
                // An add without a delay needs no runtime: it cannot fail.
                queue
                    .add_with_opts(key, AddOpts::priority(priority))
                    .unwrap_or(Added::ShuttingDown)
            }
        };
    }

    pub(super) async fn get(&self) -> Option<(ObjectKey, i32)> {
        match self {
            ControllerQueue::RateLimited(queue) => {
                queue.get().await.map(|key| (key, NORMAL_PRIORITY))
            }
            ControllerQueue::Priority(queue) => queue.get_with_priority().await,
        }
    }

    pub(super) fn done(&self, key: &ObjectKey) {
        let _ = match self {
            ControllerQueue::RateLimited(queue) => queue.done(key),
            ControllerQueue::Priority(queue) => queue.done(key),
        };
    }

    pub(super) fn forget(&self, key: &ObjectKey) {
        match self {
            ControllerQueue::RateLimited(queue) => queue.forget(key),
            ControllerQueue::Priority(queue) => queue.forget(key),
        }
    }

    pub(super) fn add_rate_limited(
        &self,
        key: ObjectKey,
        priority: i32,
    ) -> Result<Added, DelayingError> {
        match self {
            ControllerQueue::RateLimited(queue) => queue.add_rate_limited(key),
            ControllerQueue::Priority(queue) => queue.add_with_opts(
                key,
                AddOpts {
                    rate_limited: true,
                    ..AddOpts::priority(priority)
                },
            ),
        }
    }

    pub(super) fn add_after(
        &self,
        key: ObjectKey,
        delay: Duration,
        priority: i32,
    ) -> Result<Added, DelayingError> {
        match self {
            ControllerQueue::RateLimited(queue) => queue.add_after(key, delay),
            ControllerQueue::Priority(queue) => queue.add_with_opts(
                key,
                AddOpts {
                    after: Some(delay),
                    ..AddOpts::priority(priority)
                },
            ),
        }
    }

    pub(super) fn shut_down(&self) {
        match self {
            ControllerQueue::RateLimited(queue) => queue.shut_down(),
            ControllerQueue::Priority(queue) => queue.shut_down(),
        }
    }

    pub(super) fn processing_len(&self) -> usize {
        match self {
            ControllerQueue::RateLimited(queue) => queue.queue().processing_len(),
            ControllerQueue::Priority(queue) => queue.processing_len(),
        }
    }
}
