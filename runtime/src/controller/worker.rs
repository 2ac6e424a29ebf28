//! The workers: each takes a key, runs the reconcile (catching a panic), and acts on its
//! outcome (forget, requeue, retry with backoff, drop).

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use reflex_informer::key::ObjectKey;
use reflex_informer::written::PendingWrite;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::{ControllerRecorder, ReconcileResult};

use super::*;

/// Waits for all; `Err(Some(name))` if one stopped first.
pub(super) async fn wait_synced(
    synced: Vec<(String, BoxFuture<'static, bool>)>,
) -> Result<(), Option<String>> {
    let results = join_all(
        synced
            .into_iter()
            .map(|(name, fut)| async move { (name, fut.await) }),
    )
    .await;
    match results.into_iter().find(|(_, ok)| !ok) {
        Some((name, _)) => Err(Some(name)),
        None => Ok(()),
    }
}

pub(super) fn short_type<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

pub(super) struct Worker<C, R, P> {
    pub(super) name: String,
    pub(super) queue: Queue,
    pub(super) reconcile: R,
    pub(super) error_policy: P,
    pub(super) ctx: Arc<C>,
    pub(super) counters: Arc<Counters>,
    pub(super) recorder: Option<ControllerRecorder>,
    /// With read-your-writes: what a key's own write still waits for in the cache.
    pub(super) own_writes: Option<OwnWrites>,
    /// In a sharded group: which keys this replica reconciles now.
    pub(super) shards: Option<Arc<Sharded>>,
    pub(super) stop: CancellationToken,
}

/// What a key's recorded write still waits for in the primary's cache (`None`: nothing).
pub(super) type OwnWrites = Arc<dyn Fn(&ObjectKey) -> Option<PendingWrite> + Send + Sync>;

impl<C, R, P> Worker<C, R, P> {
    pub(super) fn requeued(&self) {
        self.counters.requeues.fetch_add(1, Ordering::Relaxed);
    }
}

impl<C, E, R, Fut, P> Worker<C, R, P>
where
    C: Send + Sync + 'static,
    E: fmt::Display + Send + 'static,
    R: Fn(ObjectKey, Arc<C>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    P: Fn(&E, &ObjectKey, &Arc<C>) -> ErrorAction + Send + Sync + 'static,
{
    pub(super) async fn run_loop(self: Arc<Self>) {
        loop {
            let (key, priority) = tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                key = self.queue.get() => match key {
                    Some(key) => key,
                    None => return,
                },
            };
            self.process(&key, priority).await;
            self.queue.done(&key);
        }
    }

    /// Reconciles `key`, handed out at `priority` (a retry or requeue keeps it).
    pub(super) async fn process(&self, key: &ObjectKey, priority: i32) {
        let (slot, gone_hash) = match &self.shards {
            None => (None, None),
            Some(shards) => match shards.enter(key) {
                Some((guard, gone)) => (Some(guard), gone),
                None => {
                    // Another replica holds the key's slot (or it is moving): the holder
                    // reconciles it, and this replica queues it again if the slot comes here.
                    self.counters.not_owned.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(controller = %self.name, key = %key, "key's slot not held here; skipped");
                    self.queue.forget(key);
                    return;
                }
            },
        };
        if let Some(own_writes) = &self.own_writes
            && let Some(expected) = own_writes(key)
        {
            // Reconciling now would read the cache from before this controller's own write.
            self.counters
                .awaited_own_writes
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(controller = %self.name, key = %key, expected = %expected, "own write not in the cache yet; retrying with backoff");
            self.requeued();
            if let Err(e) = self.queue.add_rate_limited(key.clone(), priority) {
                tracing::error!(error = %e, "could not schedule a retry");
            }
            return;
        }
        self.counters.reconciles.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("reconcile", controller = %self.name, key = %key);
        let active = self.recorder.as_ref().map(ControllerRecorder::started);
        let started = Instant::now();
        let reconcile = AssertUnwindSafe((self.reconcile)(key.clone(), self.ctx.clone()))
            .catch_unwind()
            .instrument(span.clone());
        let outcome = match &slot {
            None => reconcile.await,
            Some(guard) => tokio::select! {
                biased;
                () = guard.fence().cancelled() => {
                    // The slot is being lost: stop before another replica may start on it.
                    self.counters.fenced.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(parent: &span, "slot lost; reconcile aborted");
                    self.queue.forget(key);
                    return;
                }
                outcome = reconcile => outcome,
            },
        };
        drop(slot);
        if let (Some(shards), Some(hash), Ok(Ok(_))) = (&self.shards, gone_hash, &outcome) {
            // The object was gone and its reconcile is done: its last hash can go too.
            shards.reconciled(key, hash);
        }
        if let Some(r) = &self.recorder {
            let result = match &outcome {
                Ok(Ok(action)) if action.requeue_delay().is_some() => ReconcileResult::RequeueAfter,
                Ok(Ok(_)) => ReconcileResult::Success,
                Ok(Err(_)) | Err(_) => ReconcileResult::Error,
            };
            r.finished(result, outcome.is_err(), started.elapsed().as_secs_f64());
        }
        drop(active);
        let _enter = span.enter();
        match outcome {
            Ok(Ok(action)) => {
                self.queue.forget(key);
                if let Some(delay) = action.requeue_delay() {
                    tracing::debug!(delay = ?delay, "requeue requested");
                    self.requeued();
                    self.add_after(key, delay, priority);
                }
            }
            Ok(Err(error)) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                let decision = (self.error_policy)(&error, key, &self.ctx);
                tracing::warn!(error = %error, decision = ?decision, "reconcile failed");
                match decision {
                    ErrorAction::RateLimited => {
                        self.requeued();
                        if let Err(e) = self.queue.add_rate_limited(key.clone(), priority) {
                            tracing::error!(error = %e, "could not schedule a retry");
                        }
                    }
                    ErrorAction::RequeueAfter(delay) => {
                        self.requeued();
                        self.add_after(key, delay, priority);
                    }
                    ErrorAction::Drop => {
                        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        self.queue.forget(key);
                    }
                }
            }
            Err(panic) => {
                self.counters.panics.fetch_add(1, Ordering::Relaxed);
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                tracing::error!(panic = %message, "reconcile panicked; retrying with backoff");
                self.requeued();
                if let Err(e) = self.queue.add_rate_limited(key.clone(), priority) {
                    tracing::error!(error = %e, "could not schedule a retry");
                }
            }
        }
    }

    pub(super) fn add_after(&self, key: &ObjectKey, delay: Duration, priority: i32) {
        if let Err(e) = self.queue.add_after(key.clone(), delay, priority) {
            tracing::error!(error = %e, "could not schedule a requeue");
        }
    }
}
