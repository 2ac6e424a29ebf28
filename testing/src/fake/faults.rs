//! Fault injection state shared between the handle and the request path.
//!
//! Faults are consumed per request before routing, so they apply uniformly to every verb and
//! resource the server speaks, and the handle can flip them while requests are in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::status::ApiError;

/// Fail the next requests matching a verb/resource filter.
#[derive(Debug, Clone)]
struct FailRule {
    remaining: usize,
    error: ApiError,
    verb: Option<String>,
    resource: Option<String>,
}

/// Pending faults.
#[derive(Debug)]
pub struct Faults {
    rules: Mutex<Vec<FailRule>>,
    delay: Mutex<Option<Duration>>,
    paused_tx: watch::Sender<bool>,
    /// Whether open watches hold back their events (each waits before it is sent).
    events_held: watch::Sender<bool>,
    expire_next_continue: AtomicBool,
    /// Requests routed so far, by (verb, resource plural).
    requests: Mutex<HashMap<(String, String), u64>>,
    /// Responses sent gzip-encoded so far.
    gzip_responses: AtomicU64,
    /// Response body bytes handed to the connection so far, as sent (compressed or not).
    response_bytes: std::sync::Arc<AtomicU64>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            rules: Mutex::new(Vec::new()),
            delay: Mutex::new(None),
            paused_tx: watch::channel(false).0,
            events_held: watch::channel(false).0,
            expire_next_continue: AtomicBool::new(false),
            requests: Mutex::new(HashMap::new()),
            gzip_responses: AtomicU64::new(0),
            response_bytes: std::sync::Arc::default(),
        }
    }
}

impl Faults {
    /// Counts one response sent gzip-encoded.
    pub fn count_gzip_response(&self) {
        self.gzip_responses.fetch_add(1, Ordering::Relaxed);
    }

    /// Responses sent gzip-encoded so far.
    pub fn gzip_responses(&self) -> u64 {
        self.gzip_responses.load(Ordering::Relaxed)
    }

    /// The counter of response body bytes sent, shared with the bodies that add to it.
    pub fn response_bytes_counter(&self) -> std::sync::Arc<AtomicU64> {
        self.response_bytes.clone()
    }

    /// Response body bytes sent so far.
    pub fn response_bytes(&self) -> u64 {
        self.response_bytes.load(Ordering::Relaxed)
    }

    /// Adds a rule failing the next `n` matching requests.
    pub fn fail_next(&self, n: usize, error: ApiError, verb: Option<&str>, resource: Option<&str>) {
        self.rules.lock().push(FailRule {
            remaining: n,
            error,
            verb: verb.map(String::from),
            resource: resource.map(String::from),
        });
    }

    /// Forgets every pending failure rule.
    pub fn clear_failures(&self) {
        self.rules.lock().clear();
    }

    /// Consumes one matching failure, if any.
    pub fn take_failure(&self, verb: &str, resource: &str) -> Option<ApiError> {
        let mut rules = self.rules.lock();
        let idx = rules.iter().position(|r| {
            r.remaining > 0
                && r.verb.as_deref().is_none_or(|v| v == verb)
                && r.resource.as_deref().is_none_or(|x| x == resource)
        })?;
        rules[idx].remaining -= 1;
        let err = rules[idx].error.clone();
        rules.retain(|r| r.remaining > 0);
        Some(err)
    }

    /// Sets or clears the response delay.
    pub fn set_delay(&self, d: Option<Duration>) {
        *self.delay.lock() = d;
    }

    /// The current delay.
    pub fn delay(&self) -> Option<Duration> {
        *self.delay.lock()
    }

    /// Pauses or resumes request handling.
    pub fn set_paused(&self, paused: bool) {
        self.paused_tx.send_replace(paused);
    }

    /// Holds back (or releases) the events of every watch.
    pub fn set_events_held(&self, held: bool) {
        self.events_held.send_replace(held);
    }

    /// What a watch stream reads to know whether to hold its next event.
    pub fn events_held(&self) -> watch::Receiver<bool> {
        self.events_held.subscribe()
    }

    /// Waits while paused.
    pub async fn wait_resumed(&self) {
        let mut rx = self.paused_tx.subscribe();
        // The sender lives as long as `self`, so `wait_for` only fails if it is dropped.
        let _ = rx.wait_for(|p| !*p).await;
    }

    /// Arms the expiry of the next continue token.
    pub fn set_expire_next_continue(&self) {
        self.expire_next_continue.store(true, Ordering::SeqCst);
    }

    /// Whether a list request carrying a continue token must expire it now (consumes the fault).
    pub fn take_expire_next_continue(&self) -> bool {
        self.expire_next_continue.swap(false, Ordering::SeqCst)
    }

    /// Counts one routed request.
    pub fn count_request(&self, verb: &str, resource: &str) {
        *self
            .requests
            .lock()
            .entry((verb.to_string(), resource.to_string()))
            .or_default() += 1;
    }

    /// Routed requests of a verb and resource so far.
    pub fn request_count(&self, verb: &str, resource: &str) -> u64 {
        self.requests
            .lock()
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0)
    }
}
