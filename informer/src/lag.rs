//! Cache lag: how far behind the API server an informer's store is, measured.
//!
//! A watch that falls behind (a slow consumer, an overloaded API server, a network that drops
//! and resumes) leaves a cache that is correct but old, and nothing says how old: at 99k nodes
//! controllers were found acting on caches 60–120 s behind (NVIDIA/NVSentinel#1524). client-go
//! 1.36 measures it (`MonitorInformerStaleness`); so does this, when asked
//! ([`InformerOptions::lag_probe`](crate::InformerOptions::lag_probe)):
//!
//! 1. every probe period, once the informer has synced, one cheap consistent list (`limit=1`,
//!    no resourceVersion: a quorum read) gives the server's current resourceVersion;
//! 2. the lag is the time from that request until the store reflects that resourceVersion or
//!    later ([`SharedIndexInformer::last_store_resource_version`](crate::SharedIndexInformer::last_store_resource_version)).
//!
//! The store's resourceVersion moves with watch events and bookmarks only. The list's
//! resourceVersion is the storage's current revision, which writes to *other* resources move
//! too, so on a resource that changes rarely a probe waits for the next bookmark (kube-apiserver
//! sends one about every minute): read a sample as an upper bound of the lag. A probe that
//! fails, or whose versions cannot be compared, yields no sample; one probe is outstanding at a
//! time.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

/// Called with every lag sample (for a histogram).
pub type LagObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// Where an informer's lag samples go.
pub(crate) struct Lag {
    last: watch::Sender<Option<Duration>>,
    observers: Mutex<Vec<LagObserver>>,
}

impl Default for Lag {
    fn default() -> Self {
        Lag {
            last: watch::Sender::new(None),
            observers: Mutex::new(Vec::new()),
        }
    }
}

impl Lag {
    pub(crate) fn observe(&self, observer: LagObserver) {
        self.observers.lock().push(observer);
    }

    pub(crate) fn last(&self) -> Option<Duration> {
        *self.last.borrow()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<Duration>> {
        self.last.subscribe()
    }

    pub(crate) fn publish(&self, started: Instant) {
        let lag = started.elapsed();
        self.last.send_replace(Some(lag));
        let observers = self.observers.lock().clone();
        for observer in observers {
            observer(lag);
        }
        tracing::debug!(lag_ms = lag.as_millis() as u64, "cache lag measured");
    }
}
