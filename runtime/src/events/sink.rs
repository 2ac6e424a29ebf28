//! Where events go: the API server's `events.k8s.io/v1` Events, or memory (for tests and for
//! asserting what a controller recorded), behind one trait.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use k8s_openapi::api::events::v1::{Event, EventSeries};
use kube::api::{Api, Patch, PatchParams, PostParams};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::*;

/// Where Events are written.
pub trait EventSink: Send + Sync + 'static {
    /// Creates `event` in its namespace.
    fn create(&self, event: &Event) -> impl Future<Output = Result<Event, EventError>> + Send;
    /// Sets `series` on the Event `namespace/name`; [`EventError::NotFound`] when it is gone.
    fn patch_series(
        &self,
        namespace: &str,
        name: &str,
        series: &EventSeries,
    ) -> impl Future<Output = Result<Event, EventError>> + Send;
}

/// An [`EventSink`] writing to the API server.
#[derive(Clone)]
pub struct KubeEventSink {
    pub(super) client: kube::Client,
}

impl KubeEventSink {
    /// A sink using `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

pub(super) fn api_error(namespace: &str, name: &str, e: kube::Error) -> EventError {
    match &e {
        kube::Error::Api(s) if s.code == 404 => EventError::NotFound {
            namespace: namespace.into(),
            name: name.into(),
        },
        kube::Error::Api(s) if s.is_already_exists() => EventError::AlreadyExists {
            namespace: namespace.into(),
            name: name.into(),
        },
        _ => EventError::Api {
            namespace: namespace.into(),
            name: name.into(),
            source: Box::new(e),
        },
    }
}

impl EventSink for KubeEventSink {
    async fn create(&self, event: &Event) -> Result<Event, EventError> {
        let ns = event.metadata.namespace.as_deref().unwrap_or("default");
        let name = event.metadata.name.as_deref().unwrap_or("");
        Api::<Event>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), event)
            .await
            .map_err(|e| api_error(ns, name, e))
    }

    async fn patch_series(
        &self,
        namespace: &str,
        name: &str,
        series: &EventSeries,
    ) -> Result<Event, EventError> {
        let patch = serde_json::json!({ "series": series });
        Api::<Event>::namespaced(self.client.clone(), namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| api_error(namespace, name, e))
    }
}

/// A failure [`InMemoryEventSink::fail_next`] injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkFailure {
    /// The API server answers with this HTTP status code (e.g. 500, 429, 403).
    Status(u16),
    /// The request gets no answer (connection refused).
    Transport,
}

/// Which write a [`SinkAttempt`] was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkWrite {
    /// [`EventSink::create`].
    Create,
    /// [`EventSink::patch_series`].
    PatchSeries,
}

/// One write the in-memory sink received, failed or not.
#[derive(Clone, Debug)]
pub struct SinkAttempt {
    /// When (tokio's clock, so paused-clock tests can measure spacing).
    pub at: Instant,
    /// Create or patch.
    pub write: SinkWrite,
    /// Namespace and name of the Event.
    pub event: (String, String),
    /// Whether it succeeded.
    pub ok: bool,
}

#[derive(Default)]
pub(super) struct MemEvents {
    pub(super) events: HashMap<(String, String), Event>,
    pub(super) creates: u64,
    pub(super) patches: u64,
    pub(super) fail_next: Vec<SinkFailure>,
    pub(super) attempts: Vec<SinkAttempt>,
}

impl MemEvents {
    /// Consumes one injected failure, recording the attempt either way.
    pub(super) fn attempt(
        &mut self,
        write: SinkWrite,
        namespace: &str,
        name: &str,
    ) -> Result<(), EventError> {
        let failure = (!self.fail_next.is_empty()).then(|| self.fail_next.remove(0));
        self.attempts.push(SinkAttempt {
            at: Instant::now(),
            write,
            event: (namespace.to_owned(), name.to_owned()),
            ok: failure.is_none(),
        });
        let source = match failure {
            None => return Ok(()),
            Some(SinkFailure::Status(code)) => kube::Error::Api(
                kube::core::Status::failure("injected failure", "InjectedFailure")
                    .with_code(code)
                    .boxed(),
            ),
            Some(SinkFailure::Transport) => kube::Error::Service(Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "injected transport failure",
            ))),
        };
        Err(EventError::Api {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source: Box::new(source),
        })
    }
}

/// An in-memory [`EventSink`] for tests: stores Events by namespace and name, counts writes, can
/// fail the next writes ([`fail_next`](Self::fail_next)) and logs every attempt with its time.
#[derive(Clone, Default)]
pub struct InMemoryEventSink {
    pub(super) inner: Arc<Mutex<MemEvents>>,
}

impl InMemoryEventSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stored Events, sorted by namespace and name.
    pub fn events(&self) -> Vec<Event> {
        let inner = self.inner.lock();
        let mut out: Vec<_> = inner
            .events
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.into_iter().map(|(_, e)| e).collect()
    }

    /// Number of successful creates and of successful patches so far.
    pub fn writes(&self) -> (u64, u64) {
        let inner = self.inner.lock();
        (inner.creates, inner.patches)
    }

    /// Every write received so far, in order, failed ones included.
    pub fn attempts(&self) -> Vec<SinkAttempt> {
        self.inner.lock().attempts.clone()
    }

    /// Fails the next `n` writes (creates or patches) with `failure`, after any failures
    /// already queued.
    pub fn fail_next(&self, n: usize, failure: SinkFailure) {
        self.inner
            .lock()
            .fail_next
            .extend(std::iter::repeat_n(failure, n));
    }

    /// Deletes every stored Event (as the API server's TTL would).
    pub fn clear(&self) {
        self.inner.lock().events.clear();
    }
}

impl EventSink for InMemoryEventSink {
    async fn create(&self, event: &Event) -> Result<Event, EventError> {
        let key = (
            event.metadata.namespace.clone().unwrap_or_default(),
            event.metadata.name.clone().unwrap_or_default(),
        );
        let mut inner = self.inner.lock();
        inner.attempt(SinkWrite::Create, &key.0, &key.1)?;
        if inner.events.contains_key(&key) {
            return Err(EventError::AlreadyExists {
                namespace: key.0,
                name: key.1,
            });
        }
        inner.creates += 1;
        inner.events.insert(key, event.clone());
        Ok(event.clone())
    }

    async fn patch_series(
        &self,
        namespace: &str,
        name: &str,
        series: &EventSeries,
    ) -> Result<Event, EventError> {
        let mut inner = self.inner.lock();
        inner.attempt(SinkWrite::PatchSeries, namespace, name)?;
        let Some(event) = inner
            .events
            .get_mut(&(namespace.to_owned(), name.to_owned()))
        else {
            return Err(EventError::NotFound {
                namespace: namespace.into(),
                name: name.into(),
            });
        };
        event.series = Some(series.clone());
        let event = event.clone();
        inner.patches += 1;
        Ok(event)
    }
}
