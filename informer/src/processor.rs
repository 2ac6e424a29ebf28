//! Fan-out of notifications from one informer to many event handlers (crate-private: users
//! register [`ResourceEventHandler`](crate::handler::ResourceEventHandler)s on the informer).
//!
//! An informer applies each change to its store and then tells every registered handler about
//! it. The handlers are independent: one handler being slow, stuck or panicking must never delay
//! another handler, the store, or the watch that feeds them. So, as in client-go's
//! `sharedProcessor`, each handler gets
//!
//! - its own unbounded buffer (producers never wait on a handler; a stuck handler costs memory,
//!   not latency for everyone else),
//! - its own tokio task that takes notifications from that buffer in order and calls the handler,
//! - a panic guard: a panic is caught, logged with `tracing`, counted, and the handler keeps
//!   receiving later notifications,
//! - its own resync period, and its own [`Registration`] with a `has_synced()` that turns true
//!   once the informer synced and every initial-list notification enqueued for the handler was
//!   handled.
//!
//! Notifications carry `Arc<K>` only: fanning one change out to N handlers costs N reference
//! count increments, never a copy of the object. Only the informer may call
//! [`Processor::distribute`], under its lock that also orders late registrations, which is why
//! none of this is public.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::handler::{DeltaObject, MINIMUM_RESYNC_PERIOD, ProcessorError, ResourceEventHandler};

/// One change, as queued for a handler. Cloning it clones `Arc`s only.
#[derive(Debug)]
pub enum Notification<K> {
    /// Becomes [`ResourceEventHandler::on_add`].
    Add {
        /// The new object.
        obj: Arc<K>,
        /// Whether it belongs to the initial list.
        is_in_initial_list: bool,
    },
    /// Becomes [`ResourceEventHandler::on_update`].
    Update {
        /// The cached object before the change.
        old: Arc<K>,
        /// The object after the change.
        new: Arc<K>,
    },
    /// Becomes [`ResourceEventHandler::on_delete`].
    Delete(DeltaObject<K>),
}

impl<K> Clone for Notification<K> {
    fn clone(&self) -> Self {
        match self {
            Notification::Add {
                obj,
                is_in_initial_list,
            } => Notification::Add {
                obj: obj.clone(),
                is_in_initial_list: *is_in_initial_list,
            },
            Notification::Update { old, new } => Notification::Update {
                old: old.clone(),
                new: new.clone(),
            },
            Notification::Delete(obj) => Notification::Delete(obj.clone()),
        }
    }
}

impl<K> Notification<K> {
    fn kind(&self) -> &'static str {
        match self {
            Notification::Add { .. } => "add",
            Notification::Update { .. } => "update",
            Notification::Delete(_) => "delete",
        }
    }
}

/// A queued notification plus whether it counts towards the handler's initial sync.
struct Queued<K> {
    notification: Notification<K>,
    initial: bool,
}

/// The per-handler state shared by the producer, the handler task and the [`Registration`].
struct Listener<K> {
    id: u64,
    handler: Arc<dyn ResourceEventHandler<K>>,
    tx: mpsc::UnboundedSender<Queued<K>>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Queued<K>>>>,
    cancel: CancellationToken,
    requested_resync: Duration,
    resync: Mutex<ResyncState>,
    pending_initial: AtomicUsize,
    queued: AtomicUsize,
    panics: AtomicU64,
    handled: AtomicU64,
    /// The informer's synced flag (one source for it: the informer's own).
    upstream: watch::Sender<bool>,
    /// Bumped whenever this listener's own half of "synced" may have changed (its last initial
    /// add was handled, it was removed, the processor stopped).
    changed: watch::Sender<()>,
}

struct ResyncState {
    period: Duration,
    next: Instant,
    /// Whether this listener receives resync (`old.rv == new.rv`) notifications now; true when
    /// added, recomputed by [`Processor::should_resync`].
    syncing: bool,
}

impl<K> Listener<K> {
    fn has_synced(&self) -> bool {
        *self.upstream.borrow() && self.pending_initial.load(Ordering::Acquire) == 0
    }
}

impl<K: Send + Sync + 'static> Listener<K> {
    fn enqueue(&self, notification: Notification<K>) {
        let initial = matches!(
            notification,
            Notification::Add {
                is_in_initial_list: true,
                ..
            }
        );
        if initial {
            self.pending_initial.fetch_add(1, Ordering::AcqRel);
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self
            .tx
            .send(Queued {
                notification,
                initial,
            })
            .is_err()
            && initial
        {
            // The task is gone (removed or stopped): nothing will handle it.
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.pending_initial.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn deliver(&self, queued: Queued<K>) {
        let Queued {
            notification,
            initial,
        } = queued;
        self.queued.fetch_sub(1, Ordering::Relaxed);
        let kind = notification.kind();
        let result = catch_unwind(AssertUnwindSafe(|| match &notification {
            Notification::Add {
                obj,
                is_in_initial_list,
            } => self.handler.on_add(obj, *is_in_initial_list),
            Notification::Update { old, new } => self.handler.on_update(old, new),
            Notification::Delete(obj) => self.handler.on_delete(obj),
        }));
        self.handled.fetch_add(1, Ordering::Relaxed);
        if let Err(payload) = result {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            let total = self.panics.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(
                handler = self.id,
                notification = kind,
                panic = %message,
                panics = total,
                "event handler panicked; it keeps receiving notifications"
            );
        }
        // A panicking initial add still counts as handled: unlike client-go (kubernetes#129024),
        // one bad object does not keep the registration unsynced forever.
        if initial && self.pending_initial.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.changed.send_replace(());
        }
    }

    async fn run(self: Arc<Self>, rx: mpsc::UnboundedReceiver<Queued<K>>) {
        let span = tracing::debug_span!("event_handler", handler = self.id);
        self.handle_until_stopped(rx).instrument(span).await;
    }

    async fn handle_until_stopped(&self, mut rx: mpsc::UnboundedReceiver<Queued<K>>) {
        loop {
            let queued = tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                queued = rx.recv() => match queued {
                    Some(queued) => queued,
                    None => break,
                },
            };
            self.deliver(queued);
        }
        tracing::debug!(
            handler = self.id,
            dropped = rx.len(),
            "event handler stopped"
        );
    }
}

enum RunState {
    Idle,
    Running(tokio::runtime::Handle),
    Stopped,
}

struct Inner<K> {
    listeners: Mutex<Vec<Arc<Listener<K>>>>,
    state: Mutex<RunState>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    shutdown: CancellationToken,
    resync_check_period: Mutex<Duration>,
    next_id: AtomicU64,
    /// Whether the informer has synced (shared with the informer when it made the processor).
    upstream: watch::Sender<bool>,
}

/// The fan-out from one informer to its handlers (client-go's `sharedProcessor`).
///
/// A cheap-clone handle. [`add_handler`](Processor::add_handler) registers a handler (before or
/// while running); [`distribute`](Processor::distribute) queues a notification for every handler
/// and never waits for one; [`run`](Processor::run) runs the handler tasks until shut down.
///
/// Resync periods follow client-go: a requested period of zero means none; a non-zero period
/// below [`MINIMUM_RESYNC_PERIOD`] is raised to it; if the processor's check period is zero no
/// handler resyncs; before start a shorter request lowers the check period (and every handler's
/// effective period becomes `max(requested, check)`); after start a shorter request is raised to
/// the check period.
pub struct Processor<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for Processor<K> {
    fn clone(&self) -> Self {
        Processor {
            inner: self.inner.clone(),
        }
    }
}

impl<K> fmt::Debug for Processor<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Processor")
            .field("handlers", &self.inner.listeners.lock().len())
            .field(
                "resync_check_period",
                &*self.inner.resync_check_period.lock(),
            )
            .finish()
    }
}

fn clamp_resync(requested: Duration) -> Duration {
    if requested.is_zero() {
        Duration::ZERO
    } else {
        requested.max(MINIMUM_RESYNC_PERIOD)
    }
}

impl<K: Send + Sync + 'static> Processor<K> {
    /// A processor whose resync check period starts at `resync_check_period` (the informer's
    /// default handler resync period; zero disables resync for every handler).
    #[cfg(test)]
    pub fn new(resync_check_period: Duration) -> Self {
        Self::with_upstream(resync_check_period, watch::Sender::new(false))
    }

    /// A processor whose handlers count as synced once `upstream` is true (and their initial
    /// adds were handled): the informer passes its own synced flag.
    pub(crate) fn with_upstream(
        resync_check_period: Duration,
        upstream: watch::Sender<bool>,
    ) -> Self {
        Processor {
            inner: Arc::new(Inner {
                listeners: Mutex::new(Vec::new()),
                state: Mutex::new(RunState::Idle),
                tasks: Mutex::new(Vec::new()),
                shutdown: CancellationToken::new(),
                resync_check_period: Mutex::new(clamp_resync(resync_check_period)),
                next_id: AtomicU64::new(0),
                upstream,
            }),
        }
    }

    /// How often the informer should check whether some handler is due for a resync (zero:
    /// never).
    pub fn resync_check_period(&self) -> Duration {
        *self.inner.resync_check_period.lock()
    }

    /// Registers `handler` with the requested resync period, and queues `initial` to it as
    /// `on_add(obj, true)` notifications before any later notification.
    ///
    /// To see every change exactly once, the caller must prevent [`distribute`] calls between
    /// listing `initial` from its store and this call returning (the informer holds its delta
    /// lock across both).
    ///
    /// [`distribute`]: Processor::distribute
    pub fn add_handler(
        &self,
        handler: impl ResourceEventHandler<K>,
        resync: Duration,
        initial: impl IntoIterator<Item = Arc<K>>,
    ) -> Result<Registration<K>, ProcessorError> {
        let state = self.inner.state.lock();
        let running = match &*state {
            RunState::Stopped => return Err(ProcessorError::Stopped),
            RunState::Idle => None,
            RunState::Running(handle) => Some(handle.clone()),
        };
        let requested = clamp_resync(resync);
        let effective = {
            let mut check = self.inner.resync_check_period.lock();
            if check.is_zero() || requested.is_zero() {
                Duration::ZERO
            } else if requested < *check {
                if running.is_some() {
                    tracing::warn!(
                        requested = ?requested,
                        check_period = ?*check,
                        "resync period shorter than the running informer's check period; raised"
                    );
                    *check
                } else {
                    *check = requested;
                    for listener in self.inner.listeners.lock().iter() {
                        let mut rs = listener.resync.lock();
                        if !listener.requested_resync.is_zero() {
                            rs.period = listener.requested_resync.max(requested);
                        }
                    }
                    requested
                }
            } else {
                requested
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let listener = Arc::new(Listener {
            id,
            handler: Arc::new(handler),
            tx,
            rx: Mutex::new(None),
            cancel: self.inner.shutdown.child_token(),
            requested_resync: requested,
            resync: Mutex::new(ResyncState {
                period: effective,
                next: Instant::now() + effective,
                syncing: true,
            }),
            pending_initial: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            panics: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            upstream: self.inner.upstream.clone(),
            changed: watch::Sender::new(()),
        });
        for obj in initial {
            listener.enqueue(Notification::Add {
                obj,
                is_in_initial_list: true,
            });
        }
        match running {
            Some(handle) => {
                let task = handle.spawn(listener.clone().run(rx));
                self.inner.tasks.lock().push(task);
            }
            None => *listener.rx.lock() = Some(rx),
        }
        self.inner.listeners.lock().push(listener.clone());
        drop(state);
        tracing::debug!(handler = id, resync = ?effective, "event handler added");
        Ok(Registration {
            listener,
            processor: Arc::downgrade(&self.inner),
        })
    }

    /// Queues `notification` for every handler; never waits for a handler. With `is_sync`
    /// (an update whose old and new resourceVersion are equal), only handlers found due for a
    /// resync at the last [`should_resync`](Processor::should_resync) receive it.
    pub fn distribute(&self, notification: &Notification<K>, is_sync: bool) {
        let listeners = self.inner.listeners.lock();
        for listener in listeners.iter() {
            if is_sync && !listener.resync.lock().syncing {
                continue;
            }
            listener.enqueue(notification.clone());
        }
    }

    /// Recomputes which handlers are due for a resync at `now` (due: `now >= next`, and then
    /// `next = now + period`); returns whether any is.
    pub fn should_resync(&self, now: Instant) -> bool {
        let listeners = self.inner.listeners.lock();
        let mut any = false;
        for listener in listeners.iter() {
            let mut rs = listener.resync.lock();
            rs.syncing = false;
            if !rs.period.is_zero() && now >= rs.next {
                rs.syncing = true;
                rs.next = now + rs.period;
                any = true;
            }
        }
        any
    }

    /// Records that the informer has synced: registrations may now report synced.
    #[cfg(test)]
    pub fn set_upstream_synced(&self) {
        self.inner.upstream.send_replace(true);
    }

    /// How many handlers are registered.
    pub fn handler_count(&self) -> usize {
        self.inner.listeners.lock().len()
    }

    /// How many handler panics were caught, over all current handlers.
    pub fn panics(&self) -> u64 {
        self.inner
            .listeners
            .lock()
            .iter()
            .map(|l| l.panics.load(Ordering::Relaxed))
            .sum()
    }

    /// Whether [`run`](Processor::run) has finished (or the processor was shut down).
    #[cfg(test)]
    pub fn is_stopped(&self) -> bool {
        matches!(*self.inner.state.lock(), RunState::Stopped)
    }

    /// Runs every handler's task (and the tasks of handlers added later) until `shutdown` is
    /// cancelled, then stops them and returns once they all ended. Notifications still buffered
    /// at shutdown are dropped, as in client-go. After this the processor refuses new handlers.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), ProcessorError> {
        {
            let mut state = self.inner.state.lock();
            match &*state {
                RunState::Idle => {}
                RunState::Running(_) => return Err(ProcessorError::AlreadyStarted),
                RunState::Stopped => return Err(ProcessorError::Stopped),
            }
            let handle = tokio::runtime::Handle::current();
            let mut tasks = self.inner.tasks.lock();
            for listener in self.inner.listeners.lock().iter() {
                if let Some(rx) = listener.rx.lock().take() {
                    tasks.push(handle.spawn(listener.clone().run(rx)));
                }
            }
            *state = RunState::Running(handle);
        }
        tracing::debug!("processor running");
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = self.inner.shutdown.cancelled() => {}
        }
        self.stop().await;
        Ok(())
    }

    /// Stops the processor: no new handlers, every handler task is cancelled (buffered
    /// notifications dropped) and awaited.
    pub async fn stop(&self) {
        {
            let mut state = self.inner.state.lock();
            *state = RunState::Stopped;
        }
        self.inner.shutdown.cancel();
        let tasks = std::mem::take(&mut *self.inner.tasks.lock());
        for task in tasks {
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::error!(error = %e, "event handler task panicked outside a handler");
            }
        }
        for listener in std::mem::take(&mut *self.inner.listeners.lock()) {
            listener.changed.send_replace(());
        }
        tracing::debug!("processor stopped");
    }
}

/// The handle of one registered handler.
///
/// Dropping it does not remove the handler; call [`remove`](Registration::remove).
pub struct Registration<K> {
    listener: Arc<Listener<K>>,
    processor: std::sync::Weak<Inner<K>>,
}

impl<K> Clone for Registration<K> {
    fn clone(&self) -> Self {
        Registration {
            listener: self.listener.clone(),
            processor: self.processor.clone(),
        }
    }
}

impl<K> fmt::Debug for Registration<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.listener.id)
            .field("has_synced", &self.listener.has_synced())
            .finish()
    }
}

impl<K> Registration<K> {
    /// A process-unique number for this handler (used in logs as `handler`).
    pub fn id(&self) -> u64 {
        self.listener.id
    }

    /// True once the informer synced and every initial-list notification queued for this
    /// handler was handled (returned or panicked).
    pub fn has_synced(&self) -> bool {
        self.listener.has_synced()
    }

    /// Waits until [`has_synced`](Registration::has_synced), or returns false if the handler
    /// was removed or the processor stopped first.
    pub async fn wait_for_sync(&self) -> bool {
        // Subscribed before the first check: a change after it is still seen by `changed()`.
        let mut upstream = self.listener.upstream.subscribe();
        let mut own = self.listener.changed.subscribe();
        loop {
            if self.listener.has_synced() {
                return true;
            }
            if self.listener.cancel.is_cancelled() {
                return false;
            }
            tokio::select! {
                _ = upstream.changed() => {}
                _ = own.changed() => {}
                () = self.listener.cancel.cancelled() => {}
            }
        }
    }

    /// The effective resync period (zero: none).
    pub fn resync_period(&self) -> Duration {
        self.listener.resync.lock().period
    }

    /// How many panics of this handler were caught.
    pub fn panics(&self) -> u64 {
        self.listener.panics.load(Ordering::Relaxed)
    }

    /// How many notifications this handler has handled (returned or panicked).
    pub fn handled(&self) -> u64 {
        self.listener.handled.load(Ordering::Relaxed)
    }

    /// How many notifications are waiting in this handler's buffer.
    pub fn pending(&self) -> usize {
        self.listener.queued.load(Ordering::Relaxed)
    }

    /// Removes the handler: it receives nothing more; buffered notifications are dropped.
    /// Returns false if it was already removed (or the processor stopped).
    pub fn remove(&self) -> bool {
        self.listener.cancel.cancel();
        let Some(inner) = self.processor.upgrade() else {
            return false;
        };
        let mut listeners = inner.listeners.lock();
        let before = listeners.len();
        listeners.retain(|l| !Arc::ptr_eq(l, &self.listener));
        let removed = listeners.len() != before;
        drop(listeners);
        if removed {
            self.listener.changed.send_replace(());
            tracing::debug!(handler = self.listener.id, "event handler removed");
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::{FnHandler, handler_fn};
    use k8s_openapi::api::core::v1::ConfigMap;
    use std::collections::BTreeMap;

    fn cm(name: &str, rv: &str) -> Arc<ConfigMap> {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm.metadata.resource_version = Some(rv.into());
        Arc::new(cm)
    }

    fn name(cm: &ConfigMap) -> String {
        cm.metadata.name.clone().unwrap_or_default()
    }

    /// Every call a handler received, as `(kind, name, rv)` strings.
    type Log = Arc<Mutex<Vec<(String, String, String)>>>;

    fn recorder(log: Log, seen: mpsc::UnboundedSender<()>) -> FnHandler<ConfigMap> {
        let (l1, l2, l3) = (log.clone(), log.clone(), log);
        let (s1, s2, s3) = (seen.clone(), seen.clone(), seen);
        let rv = |c: &ConfigMap| c.metadata.resource_version.clone().unwrap_or_default();
        handler_fn()
            .on_add(move |o: &Arc<ConfigMap>, initial| {
                let kind = if initial { "add-initial" } else { "add" };
                l1.lock().push((kind.into(), name(o), rv(o)));
                let _ = s1.send(());
            })
            .on_update(move |_old, new: &Arc<ConfigMap>| {
                l2.lock().push(("update".into(), name(new), rv(new)));
                let _ = s2.send(());
            })
            .on_delete(move |o: &DeltaObject<ConfigMap>| {
                let o = o.object().expect("object");
                l3.lock().push(("delete".into(), name(o), rv(o)));
                let _ = s3.send(());
            })
    }

    async fn recv_n(rx: &mut mpsc::UnboundedReceiver<()>, n: usize) {
        for _ in 0..n {
            rx.recv().await.expect("handler channel open");
        }
    }

    fn start(p: &Processor<ConfigMap>) -> (CancellationToken, JoinHandle<()>) {
        let token = CancellationToken::new();
        let run = tokio::spawn({
            let p = p.clone();
            let token = token.clone();
            async move { p.run(token).await.expect("first run") }
        });
        (token, run)
    }

    fn add(name: &str, rv: &str) -> Notification<ConfigMap> {
        Notification::Add {
            obj: cm(name, rv),
            is_in_initial_list: false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocked_handler_does_not_delay_other_handlers_or_the_producer() {
        let p = Processor::<ConfigMap>::new(Duration::ZERO);
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let (entered_tx, mut entered_rx) = mpsc::unbounded_channel();
        let blocked = p
            .add_handler(
                handler_fn().on_add(move |_: &Arc<ConfigMap>, _| {
                    let _ = entered_tx.send(());
                    // Blocks its worker thread until the test releases it.
                    let _ = release_rx.lock().recv();
                }),
                Duration::ZERO,
                Vec::new(),
            )
            .unwrap();
        let log: Log = Arc::default();
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
        p.add_handler(recorder(log.clone(), seen_tx), Duration::ZERO, Vec::new())
            .unwrap();
        let (token, run) = start(&p);
        for i in 0..100 {
            p.distribute(&add(&format!("o{i}"), "1"), false);
        }
        recv_n(&mut entered_rx, 1).await;
        recv_n(&mut seen_rx, 100).await;
        assert_eq!(log.lock().len(), 100);
        assert_eq!(
            blocked.handled(),
            0,
            "the blocked handler is still in its first call"
        );
        assert_eq!(blocked.pending(), 99);
        for _ in 0..100 {
            release_tx.send(()).unwrap();
        }
        recv_n(&mut entered_rx, 99).await;
        token.cancel();
        run.await.unwrap();
    }

    #[tokio::test]
    async fn panicking_handler_is_counted_and_keeps_receiving() {
        let p = Processor::<ConfigMap>::new(Duration::ZERO);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let reg = p
            .add_handler(
                handler_fn().on_add(move |o: &Arc<ConfigMap>, _| {
                    let _ = tx.send(name(o));
                    assert!(name(o) != "bad", "handler rejects {}", name(o));
                }),
                Duration::ZERO,
                Vec::new(),
            )
            .unwrap();
        let log: Log = Arc::default();
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
        p.add_handler(recorder(log.clone(), seen_tx), Duration::ZERO, Vec::new())
            .unwrap();
        let (token, run) = start(&p);
        for n in ["a", "bad", "b", "bad", "c"] {
            p.distribute(&add(n, "1"), false);
        }
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(rx.recv().await.unwrap());
        }
        recv_n(&mut seen_rx, 5).await;
        assert_eq!(got, ["a", "bad", "b", "bad", "c"]);
        // The last call may still be returning; wait until it is accounted for.
        while reg.handled() < 5 {
            tokio::task::yield_now().await;
        }
        assert_eq!(reg.panics(), 2);
        assert_eq!(p.panics(), 2);
        assert_eq!(log.lock().len(), 5, "the other handler saw everything");
        token.cancel();
        run.await.unwrap();
    }

    #[tokio::test]
    async fn each_handler_sees_notifications_in_order_and_its_view_matches() {
        let p = Processor::<ConfigMap>::new(Duration::ZERO);
        let logs: Vec<Log> = (0..3).map(|_| Log::default()).collect();
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
        for log in &logs {
            p.add_handler(
                recorder(log.clone(), seen_tx.clone()),
                Duration::ZERO,
                Vec::new(),
            )
            .unwrap();
        }
        let (token, run) = start(&p);
        let script = [
            add("a", "1"),
            add("b", "2"),
            Notification::Update {
                old: cm("a", "1"),
                new: cm("a", "3"),
            },
            Notification::Delete(DeltaObject::Object(cm("b", "4"))),
            add("c", "5"),
        ];
        for n in &script {
            p.distribute(n, false);
        }
        recv_n(&mut seen_rx, 3 * script.len()).await;
        for log in &logs {
            let mut view = BTreeMap::new();
            for (kind, n, rv) in log.lock().iter() {
                if kind == "delete" {
                    view.remove(n);
                } else {
                    view.insert(n.clone(), rv.clone());
                }
            }
            let expected: BTreeMap<String, String> = [("a", "3"), ("c", "5")]
                .iter()
                .map(|(n, rv)| (n.to_string(), rv.to_string()))
                .collect();
            assert_eq!(view, expected);
            let kinds: Vec<String> = log.lock().iter().map(|e| e.0.clone()).collect();
            assert_eq!(kinds, ["add", "add", "update", "delete", "add"]);
        }
        token.cancel();
        run.await.unwrap();
    }

    #[tokio::test]
    async fn notifications_share_the_cached_arc_never_a_copy() {
        let p = Processor::<ConfigMap>::new(Duration::ZERO);
        let (tx, mut rx) = mpsc::unbounded_channel();
        for _ in 0..2 {
            let tx = tx.clone();
            p.add_handler(
                handler_fn().on_add(move |o: &Arc<ConfigMap>, _| {
                    let _ = tx.send(o.clone());
                }),
                Duration::ZERO,
                Vec::new(),
            )
            .unwrap();
        }
        let (token, run) = start(&p);
        let obj = cm("a", "1");
        p.distribute(
            &Notification::Add {
                obj: obj.clone(),
                is_in_initial_list: false,
            },
            false,
        );
        for _ in 0..2 {
            assert!(Arc::ptr_eq(&rx.recv().await.unwrap(), &obj));
        }
        token.cancel();
        run.await.unwrap();
    }

    #[tokio::test]
    async fn registration_syncs_after_upstream_sync_and_its_initial_adds_are_handled() {
        let p = Processor::<ConfigMap>::new(Duration::ZERO);
        let log: Log = Arc::default();
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
        let reg = p
            .add_handler(
                recorder(log.clone(), seen_tx),
                Duration::ZERO,
                vec![cm("x", "1"), cm("y", "2")],
            )
            .unwrap();
        // Queued, not handled yet (not running), and upstream not synced.
        assert!(!reg.has_synced());
        p.set_upstream_synced();
        assert!(!reg.has_synced(), "two initial adds still unhandled");
        p.distribute(&add("z", "3"), false);
        let (token, run) = start(&p);
        recv_n(&mut seen_rx, 3).await;
        let waited = tokio::spawn({
            let reg = reg.clone();
            async move { reg.wait_for_sync().await }
        });
        assert!(waited.await.unwrap());
        assert!(reg.has_synced());
        let kinds: Vec<String> = log.lock().iter().map(|e| e.0.clone() + &e.1).collect();
        assert_eq!(kinds, ["add-initialx", "add-initialy", "addz"]);
        token.cancel();
        run.await.unwrap();
    }

    #[tokio::test]
    async fn handler_panicking_on_an_initial_add_still_syncs() {
        let p = Processor::<ConfigMap>::new(Duration::ZERO);
        p.set_upstream_synced();
        let reg = p
            .add_handler(
                handler_fn().on_add(|_: &Arc<ConfigMap>, _| panic!("boom")),
                Duration::ZERO,
                vec![cm("x", "1")],
            )
            .unwrap();
        let (token, run) = start(&p);
        assert!(reg.wait_for_sync().await);
        assert_eq!(reg.panics(), 1);
        token.cancel();
        run.await.unwrap();
    }

    #[test]
    fn resync_periods_follow_client_go_rules() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // (name, check period, earlier handlers' requests, started?, request,
        //  expected effective of the new one, expected check after, expected earlier effective)
        type Case = (
            &'static str,
            Duration,
            Vec<Duration>,
            bool,
            Duration,
            Duration,
            Duration,
            Vec<Duration>,
        );
        let cases: Vec<Case> = vec![
            (
                "zero request means none",
                s(30),
                vec![],
                false,
                s(0),
                s(0),
                s(30),
                vec![],
            ),
            (
                "check period zero disables",
                s(0),
                vec![],
                false,
                s(10),
                s(0),
                s(0),
                vec![],
            ),
            (
                "below one second is raised",
                s(30),
                vec![],
                false,
                ms(10),
                s(1),
                s(1),
                vec![],
            ),
            (
                "longer request kept",
                s(30),
                vec![],
                false,
                s(60),
                s(60),
                s(30),
                vec![],
            ),
            (
                "before start a shorter request lowers the check period",
                s(30),
                vec![s(30), s(60)],
                false,
                s(10),
                s(10),
                s(10),
                vec![s(30), s(60)],
            ),
            (
                "after start a shorter request is raised to the check period",
                s(30),
                vec![],
                true,
                s(10),
                s(30),
                s(30),
                vec![],
            ),
            (
                "before start earlier handlers get max(requested, check)",
                s(30),
                vec![s(20)],
                false,
                s(5),
                s(5),
                s(5),
                vec![s(20)],
            ),
        ];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for (name, check, earlier, started, request, effective, check_after, earlier_after) in cases
        {
            rt.block_on(async {
                let p = Processor::<ConfigMap>::new(check);
                let regs: Vec<_> = earlier
                    .iter()
                    .map(|r| p.add_handler(handler_fn(), *r, Vec::new()).unwrap())
                    .collect();
                let (token, run) = if started {
                    let (t, r) = start(&p);
                    while !matches!(*p.inner.state.lock(), RunState::Running(_)) {
                        tokio::task::yield_now().await;
                    }
                    (Some(t), Some(r))
                } else {
                    (None, None)
                };
                let reg = p.add_handler(handler_fn(), request, Vec::new()).unwrap();
                assert_eq!(reg.resync_period(), effective, "{name}: effective");
                assert_eq!(p.resync_check_period(), check_after, "{name}: check period");
                let got: Vec<Duration> = regs.iter().map(Registration::resync_period).collect();
                assert_eq!(got, earlier_after, "{name}: earlier handlers");
                if let (Some(t), Some(r)) = (token, run) {
                    t.cancel();
                    r.await.unwrap();
                }
            });
        }
    }

    #[tokio::test(start_paused = true)]
    async fn resync_notifications_reach_only_handlers_due_for_resync() {
        let p = Processor::<ConfigMap>::new(Duration::from_secs(10));
        let fast_log: Log = Arc::default();
        let slow_log: Log = Arc::default();
        let none_log: Log = Arc::default();
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
        p.add_handler(
            recorder(fast_log.clone(), seen_tx.clone()),
            Duration::from_secs(10),
            Vec::new(),
        )
        .unwrap();
        p.add_handler(
            recorder(slow_log.clone(), seen_tx.clone()),
            Duration::from_secs(30),
            Vec::new(),
        )
        .unwrap();
        p.add_handler(
            recorder(none_log.clone(), seen_tx),
            Duration::ZERO,
            Vec::new(),
        )
        .unwrap();
        let (token, run) = start(&p);
        let sync = Notification::Update {
            old: cm("a", "1"),
            new: cm("a", "1"),
        };
        // Every listener starts syncing: a resync-like update before the first check reaches all.
        p.distribute(&sync, true);
        recv_n(&mut seen_rx, 3).await;
        let mut counts = Vec::new();
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(10)).await;
            let any = p.should_resync(Instant::now());
            p.distribute(&sync, true);
            counts.push(any);
        }
        // Non-sync updates reach everyone regardless.
        p.distribute(
            &Notification::Update {
                old: cm("a", "1"),
                new: cm("a", "2"),
            },
            false,
        );
        // fast: initial + 3 resyncs + 1 update; slow: initial + resync at 30 s + update; none: initial + update.
        recv_n(&mut seen_rx, 4 + 2 + 1).await;
        assert_eq!(counts, [true, true, true]);
        assert_eq!(fast_log.lock().len(), 5);
        assert_eq!(slow_log.lock().len(), 3);
        assert_eq!(none_log.lock().len(), 2);
        token.cancel();
        run.await.unwrap();
    }

    #[tokio::test]
    async fn removed_handler_receives_nothing_more() {
        let p = Processor::<ConfigMap>::new(Duration::ZERO);
        let kept: Log = Arc::default();
        let gone: Log = Arc::default();
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
        let (gone_tx, mut gone_rx) = mpsc::unbounded_channel();
        p.add_handler(recorder(kept.clone(), seen_tx), Duration::ZERO, Vec::new())
            .unwrap();
        let reg = p
            .add_handler(recorder(gone.clone(), gone_tx), Duration::ZERO, Vec::new())
            .unwrap();
        let (token, run) = start(&p);
        p.distribute(&add("a", "1"), false);
        recv_n(&mut gone_rx, 1).await;
        assert!(reg.remove());
        assert!(!reg.remove(), "second removal reports nothing removed");
        assert_eq!(p.handler_count(), 1);
        p.distribute(&add("b", "2"), false);
        recv_n(&mut seen_rx, 2).await;
        assert_eq!(gone.lock().len(), 1);
        assert!(
            !reg.wait_for_sync().await,
            "a removed registration never syncs"
        );
        token.cancel();
        run.await.unwrap();
    }

    #[tokio::test]
    async fn stopped_processor_refuses_new_handlers_and_a_second_run() {
        let p = Processor::<ConfigMap>::new(Duration::ZERO);
        let (token, run) = start(&p);
        while !matches!(*p.inner.state.lock(), RunState::Running(_)) {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            p.run(CancellationToken::new()).await,
            Err(ProcessorError::AlreadyStarted)
        );
        token.cancel();
        run.await.unwrap();
        assert!(p.is_stopped());
        assert_eq!(
            p.add_handler(handler_fn(), Duration::ZERO, Vec::new())
                .unwrap_err(),
            ProcessorError::Stopped
        );
        assert_eq!(
            p.run(CancellationToken::new()).await,
            Err(ProcessorError::Stopped)
        );
    }
}
