//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Several replicas of a controller run at once so that a crash or a node drain does not stop
//! reconciliation; only one of them may write at a time. They agree on who that is through one
//! Lease object: the holder writes its identity and renews `renewTime` every
//! [`retry_period`](LeaderElectionConfig::retry_period); the others watch the record and take
//! over once it has not changed for [`lease_duration`](LeaderElectionConfig::lease_duration).
//!
//! # Guarantees (client-go's `leaderelection` semantics)
//!
//! - **Expiry is judged by local observation.** A candidate never compares its wall clock with the
//!   holder's `renewTime` (clocks skew). It remembers *when it observed* the record change and
//!   considers the lease expired once `observed + leaseDurationSeconds` has passed on its own
//!   monotonic clock. A lease with an empty holder can be taken at once.
//! - **Takeover** increments `leaseTransitions` and sets `acquireTime`; a **renewal** keeps both.
//!   Writes are optimistic (`resourceVersion`): of two candidates writing at once, one wins and the
//!   other sees a conflict and stays a follower.
//! - **Losing leadership.** A leader that cannot renew within
//!   [`renew_deadline`](LeaderElectionConfig::renew_deadline) stops leading: the
//!   [`CancellationToken`] it was given is cancelled. Because `renew_deadline < lease_duration`, it
//!   stops before anyone else may take over.
//! - **Stopped leading is always reported**: [`LeaderCallbacks::on_stopped_leading`] runs when
//!   [`LeaderElector::run`] returns, even if this replica never led.
//! - **Release on shutdown.** When the shutdown token is cancelled while leading, the lease is
//!   rewritten with an empty holder and a 1 s duration (retrying on conflict), so a standby takes over
//!   at its next retry instead of waiting for the lease to expire.
//! - **Health.** [`LeaderElector::check`] fails when this replica believes it leads but has not renewed
//!   for longer than the lease duration plus a tolerance: another replica may be leading, so the
//!   liveness probe should restart this one.
//!
//! # Keeping caches warm on standbys
//!
//! Every replica should run its informers (so a new leader starts with synced caches) while only the
//! leader runs its workers. [`LeaderElector::run_while_leader`] wraps the leader-only part:
//!
//! ```no_run
//! use std::time::Duration;
//! use k8s_openapi::api::coordination::v1::Lease;
//! use reflex_runtime::leader_election::{KubeLease, LeaderElectionConfig, LeaderElector};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn doc(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let lock = KubeLease::new(kube::Api::<Lease>::namespaced(client, "kube-system"), "my-controller");
//! let config = LeaderElectionConfig::new(std::env::var("POD_NAME")?);
//! let elector = LeaderElector::new(lock, config)?;
//! let shutdown = CancellationToken::new();
//! // start informers here, on every replica; then reconcile only while leading:
//! elector
//!     .run_while_leader(&shutdown, |leading: CancellationToken| async move {
//!         // run workers until `leading` is cancelled
//!         leading.cancelled().await;
//!     })
//!     .await;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::retry::{Backoff, ConflictError, retry_on_conflict};

mod lease;

pub use lease::{InMemoryLease, KubeLease, LeaseStore};

/// What can go wrong in leader election: a bad configuration or a failed Lease read or write.
#[derive(Debug, thiserror::Error)]
pub enum LeaderElectionError {
    /// The identity is empty; every candidate needs a unique, non-empty one (e.g. the Pod name).
    #[error("leader election identity must not be empty")]
    EmptyIdentity,
    /// A duration is zero.
    #[error("leader election {field} must be positive")]
    ZeroDuration {
        /// Which duration.
        field: &'static str,
    },
    /// `lease_duration <= renew_deadline`: a leader could lose the lease before giving up leading.
    #[error(
        "lease duration {lease_duration:?} must be greater than renew deadline {renew_deadline:?}"
    )]
    LeaseDurationNotAboveRenewDeadline {
        /// The configured lease duration.
        lease_duration: Duration,
        /// The configured renew deadline.
        renew_deadline: Duration,
    },
    /// `renew_deadline <= 1.2 * retry_period`: a renewal could not be retried before the deadline.
    #[error(
        "renew deadline {renew_deadline:?} must be greater than 1.2 x retry period {retry_period:?}"
    )]
    RenewDeadlineTooShort {
        /// The configured renew deadline.
        renew_deadline: Duration,
        /// The configured retry period.
        retry_period: Duration,
    },
    /// The jitter factor is negative or not finite.
    #[error("jitter factor {0} must be a finite, non-negative number")]
    InvalidJitter(f64),
    /// The Lease was written by someone else since we read it (HTTP 409 on replace).
    #[error("lease {name} was modified concurrently")]
    Conflict {
        /// Lease name.
        name: String,
    },
    /// The Lease was created by someone else since we saw it absent (HTTP 409 on create).
    #[error("lease {name} already exists")]
    AlreadyExists {
        /// Lease name.
        name: String,
    },
    /// The Lease to replace does not exist.
    #[error("lease {name} not found")]
    NotFound {
        /// Lease name.
        name: String,
    },
    /// The API server refused or failed a Lease request.
    #[error("lease {name}: API request failed")]
    Api {
        /// Lease name.
        name: String,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The lease store could not be reached (used by [`InMemoryLease`] to simulate a partition).
    #[error("lease {name}: store unavailable")]
    Unavailable {
        /// Lease name.
        name: String,
    },
    /// [`LeaderElector::check`]: we believe we lead but have not renewed for too long.
    #[error("leader has not renewed the lease for {since:?}, more than {allowed:?}")]
    RenewalOverdue {
        /// Time since the last successful renewal was observed.
        since: Duration,
        /// Lease duration plus tolerance.
        allowed: Duration,
    },
}

impl ConflictError for LeaderElectionError {
    fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }
}

/// Timing and identity of a candidate. Start from [`LeaderElectionConfig::new`].
#[derive(Clone, Debug, PartialEq)]
pub struct LeaderElectionConfig {
    /// This candidate's unique identity, written as the Lease holder (e.g. the Pod name).
    pub identity: String,
    /// How long followers wait after the last observed change before taking over (default 15 s).
    /// Written to `leaseDurationSeconds`, rounded up to whole seconds.
    pub lease_duration: Duration,
    /// How long the leader keeps retrying a failed renewal before it stops leading (default 10 s).
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew (default 2 s).
    pub retry_period: Duration,
    /// Acquire attempts wait `retry_period * (1 + random * jitter_factor)` (default 1.2).
    pub jitter_factor: f64,
    /// Release the lease when shut down while leading (default true).
    pub release_on_cancel: bool,
}

impl LeaderElectionConfig {
    /// client-go's defaults for `identity`: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            jitter_factor: 1.2,
            release_on_cancel: true,
        }
    }

    /// Checks `lease_duration > renew_deadline > 1.2 * retry_period > 0` and a non-empty identity.
    pub fn validate(&self) -> Result<(), LeaderElectionError> {
        if self.identity.is_empty() {
            return Err(LeaderElectionError::EmptyIdentity);
        }
        for (field, d) in [
            ("lease duration", self.lease_duration),
            ("renew deadline", self.renew_deadline),
            ("retry period", self.retry_period),
        ] {
            if d.is_zero() {
                return Err(LeaderElectionError::ZeroDuration { field });
            }
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(LeaderElectionError::LeaseDurationNotAboveRenewDeadline {
                lease_duration: self.lease_duration,
                renew_deadline: self.renew_deadline,
            });
        }
        if self.renew_deadline <= self.retry_period.mul_f64(1.2) {
            return Err(LeaderElectionError::RenewDeadlineTooShort {
                renew_deadline: self.renew_deadline,
                retry_period: self.retry_period,
            });
        }
        if !self.jitter_factor.is_finite() || self.jitter_factor < 0.0 {
            return Err(LeaderElectionError::InvalidJitter(self.jitter_factor));
        }
        Ok(())
    }

    fn lease_seconds(&self) -> i32 {
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

/// What this candidate currently knows, published through [`LeaderElector::subscribe`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderState {
    /// The holder of the Lease as last observed; `None` when there is none.
    pub leader: Option<String>,
    /// Whether this candidate is that holder.
    pub is_leader: bool,
}

/// Why [`LeaderElector::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// The shutdown token was cancelled.
    Shutdown,
    /// We led and could not renew within the renew deadline.
    LostLeadership,
}

type StartedFn = Box<dyn FnMut(CancellationToken) + Send>;
type StoppedFn = Box<dyn FnMut() + Send>;
type NewLeaderFn = Box<dyn FnMut(&str) + Send>;

/// Callbacks of [`LeaderElector::run`]. They run on the elector's task and must not block; spawn
/// the leader's work from `on_started_leading`.
#[derive(Default)]
pub struct LeaderCallbacks {
    on_started_leading: Option<StartedFn>,
    on_stopped_leading: Option<StoppedFn>,
    on_new_leader: Option<NewLeaderFn>,
}

impl LeaderCallbacks {
    /// No callbacks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Called once leadership is acquired, with a token cancelled when it ends.
    pub fn on_started_leading(mut self, f: impl FnMut(CancellationToken) + Send + 'static) -> Self {
        self.on_started_leading = Some(Box::new(f));
        self
    }

    /// Called whenever [`LeaderElector::run`] returns, whether or not we led.
    pub fn on_stopped_leading(mut self, f: impl FnMut() + Send + 'static) -> Self {
        self.on_stopped_leading = Some(Box::new(f));
        self
    }

    /// Called with the holder's identity whenever the observed (non-empty) holder changes,
    /// including when it becomes us.
    pub fn on_new_leader(mut self, f: impl FnMut(&str) + Send + 'static) -> Self {
        self.on_new_leader = Some(Box::new(f));
        self
    }
}

struct Observed {
    lease: Option<Lease>,
    observed_at: Instant,
}

/// A candidate for leadership of one Lease. See the [module docs](self) for the guarantees.
pub struct LeaderElector<S> {
    store: S,
    config: LeaderElectionConfig,
    observed: Mutex<Observed>,
    state: watch::Sender<LeaderState>,
}

enum Renewal {
    Lost,
    Shutdown,
}

fn holder(lease: &Lease) -> &str {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .unwrap_or("")
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl<S: LeaseStore> LeaderElector<S> {
    /// A candidate competing for `store`'s Lease; fails when `config` is invalid.
    pub fn new(store: S, config: LeaderElectionConfig) -> Result<Self, LeaderElectionError> {
        config.validate()?;
        Ok(Self {
            store,
            config,
            observed: Mutex::new(Observed {
                lease: None,
                observed_at: Instant::now(),
            }),
            state: watch::Sender::new(LeaderState::default()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LeaderElectionConfig {
        &self.config
    }

    /// Whether the last observed record names us as holder.
    pub fn is_leader(&self) -> bool {
        self.observed
            .lock()
            .lease
            .as_ref()
            .is_some_and(|l| holder(l) == self.config.identity)
    }

    /// The holder of the last observed record, if any.
    pub fn leader(&self) -> Option<String> {
        let o = self.observed.lock();
        o.lease
            .as_ref()
            .map(holder)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
    }

    /// A receiver of [`LeaderState`] changes: who leads, and whether it is us.
    pub fn subscribe(&self) -> watch::Receiver<LeaderState> {
        self.state.subscribe()
    }

    /// Health check for liveness probes: fails when we believe we lead but the last renewal we
    /// observed is older than `lease_duration + tolerance`. Passes when we do not lead.
    pub fn check(&self, tolerance: Duration) -> Result<(), LeaderElectionError> {
        let o = self.observed.lock();
        let leading = o
            .lease
            .as_ref()
            .is_some_and(|l| holder(l) == self.config.identity);
        if !leading {
            return Ok(());
        }
        let since = o.observed_at.elapsed();
        let allowed = self.config.lease_duration + tolerance;
        if since > allowed {
            return Err(LeaderElectionError::RenewalOverdue { since, allowed });
        }
        Ok(())
    }

    /// Forgets the observed record after a lost term: we no longer claim to lead (nor know who
    /// does) until the next successful read.
    fn forget_leadership(&self) {
        self.observed.lock().lease = None;
        self.state.send_replace(LeaderState::default());
    }

    /// Starts from an observation made earlier by this process (`lease` as it was read at
    /// `observed_at`), so a Lease that has not changed since counts as expired once
    /// `observed_at + lease_duration` has passed, not a full lease duration after this elector
    /// first reads it. Only for records this process itself read at that instant: expiry stays
    /// judged by local observation.
    pub(crate) fn seed_observation(&self, lease: Lease, observed_at: Instant) {
        let mut o = self.observed.lock();
        if o.lease.is_none() {
            o.lease = Some(lease);
            o.observed_at = observed_at;
        }
    }

    /// Records a freshly read or written Lease; the observation time moves only when the record
    /// (spec) changed.
    fn observe(&self, lease: Lease) {
        let mut o = self.observed.lock();
        let changed = o.lease.as_ref().map(|l| &l.spec) != Some(&lease.spec);
        if changed {
            o.observed_at = Instant::now();
        }
        let h = holder(&lease);
        let state = LeaderState {
            leader: (!h.is_empty()).then(|| h.to_owned()),
            is_leader: h == self.config.identity,
        };
        o.lease = Some(lease);
        drop(o);
        self.state.send_if_modified(|s| {
            let modified = *s != state;
            *s = state;
            modified
        });
    }

    /// One attempt to acquire or renew the Lease; `true` when we hold it afterwards.
    async fn try_acquire_or_renew(&self) -> bool {
        let id = self.config.identity.as_str();
        let lease_name = self.store.name();
        let now = now_micro();

        // Fast path: we lead and hold a recent copy; renew optimistically without a read.
        let cached = {
            let o = self.observed.lock();
            o.lease.clone().filter(|l| holder(l) == id)
        };
        if let Some(mut lease) = cached {
            let spec = lease.spec.get_or_insert_default();
            spec.renew_time = Some(now.clone());
            spec.lease_duration_seconds = Some(self.config.lease_seconds());
            match self.store.replace(&lease).await {
                Ok(written) => {
                    self.observe(written);
                    tracing::trace!(lease = lease_name, identity = id, "lease renewed");
                    return true;
                }
                Err(error) => {
                    tracing::debug!(lease = lease_name, identity = id, %error, "fast renewal failed, rereading lease")
                }
            }
        }

        let current = match self.store.get().await {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(lease = lease_name, identity = id, %error, "reading lease failed");
                return false;
            }
        };
        let Some(current) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(lease_name.to_owned()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(id.to_owned()),
                    lease_duration_seconds: Some(self.config.lease_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.store.create(&lease).await {
                Ok(written) => {
                    tracing::info!(
                        lease = lease_name,
                        identity = id,
                        "lease created, now leading"
                    );
                    self.observe(written);
                    true
                }
                Err(error) => {
                    tracing::debug!(lease = lease_name, identity = id, %error, "creating lease failed");
                    false
                }
            };
        };

        self.observe(current.clone());
        let old = current.spec.clone().unwrap_or_default();
        let old_holder = old.holder_identity.as_deref().unwrap_or("");
        if !old_holder.is_empty() && old_holder != id {
            let duration =
                Duration::from_secs(old.lease_duration_seconds.unwrap_or(0).max(0) as u64);
            let observed_at = self.observed.lock().observed_at;
            if observed_at + duration > Instant::now() {
                tracing::trace!(
                    lease = lease_name,
                    identity = id,
                    holder = old_holder,
                    "lease held by another candidate"
                );
                return false;
            }
        }
        let renewing = old_holder == id;
        let mut lease = current;
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(id.to_owned()),
            lease_duration_seconds: Some(self.config.lease_seconds()),
            acquire_time: if renewing {
                old.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if renewing {
                old.lease_transitions.unwrap_or(0)
            } else {
                old.lease_transitions.unwrap_or(0).saturating_add(1)
            }),
            ..old
        });
        match self.store.replace(&lease).await {
            Ok(written) => {
                if !renewing {
                    tracing::info!(
                        lease = lease_name,
                        identity = id,
                        previous = old_holder,
                        "lease acquired, now leading"
                    );
                }
                self.observe(written);
                true
            }
            Err(error) => {
                tracing::debug!(lease = lease_name, identity = id, %error, "writing lease failed");
                false
            }
        }
    }

    fn report_new_leader(&self, reported: &mut Option<String>, callbacks: &mut LeaderCallbacks) {
        let current = self.leader();
        if current.is_some() && current != *reported {
            if let (Some(cb), Some(h)) = (callbacks.on_new_leader.as_mut(), current.as_deref()) {
                cb(h);
            }
            *reported = current;
        }
    }

    /// Tries to acquire every jittered retry period; `false` when shut down first.
    async fn acquire(
        &self,
        shutdown: &CancellationToken,
        reported: &mut Option<String>,
        callbacks: &mut LeaderCallbacks,
    ) -> bool {
        loop {
            let acquired = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return false,
                acquired = self.try_acquire_or_renew() => acquired,
            };
            self.report_new_leader(reported, callbacks);
            if acquired {
                return true;
            }
            let jitter = self.config.jitter_factor * rand::random::<f64>();
            let wait = self.config.retry_period.mul_f64(1.0 + jitter);
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Renews every retry period until a renewal fails for `renew_deadline` or shutdown.
    async fn renew(
        &self,
        shutdown: &CancellationToken,
        reported: &mut Option<String>,
        callbacks: &mut LeaderCallbacks,
    ) -> Renewal {
        let retry = self.config.retry_period;
        loop {
            let deadline = Instant::now() + self.config.renew_deadline;
            let renewed = loop {
                let attempt = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Renewal::Shutdown,
                    attempt = tokio::time::timeout_at(deadline, self.try_acquire_or_renew()) => attempt,
                };
                self.report_new_leader(reported, callbacks);
                match attempt {
                    Ok(true) => break true,
                    Err(_) => break false,
                    Ok(false) => {}
                }
                let next = Instant::now() + retry;
                if next >= deadline {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Renewal::Shutdown,
                        _ = tokio::time::sleep_until(deadline) => break false,
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Renewal::Shutdown,
                    _ = tokio::time::sleep_until(next) => {}
                }
            };
            if !renewed {
                tracing::warn!(lease = self.store.name(), identity = %self.config.identity, "failed to renew lease within the renew deadline, stopping leading");
                return Renewal::Lost;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Renewal::Shutdown,
                _ = tokio::time::sleep(retry) => {}
            }
        }
    }

    /// Gives the lease up if we hold it: holder `""`, duration 1 s, retried on conflict, so a
    /// standby can take over at its next attempt.
    pub async fn release(&self) -> Result<(), LeaderElectionError> {
        if !self.is_leader() {
            return Ok(());
        }
        let id = self.config.identity.as_str();
        let first = std::sync::atomic::AtomicBool::new(true);
        retry_on_conflict(Backoff::default(), || async {
            let lease = if first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                self.observed.lock().lease.clone()
            } else {
                let fresh = self.store.get().await?;
                if let Some(l) = &fresh {
                    self.observe(l.clone());
                }
                fresh
            };
            let Some(mut lease) = lease.filter(|l| holder(l) == id) else {
                return Ok(());
            };
            let now = now_micro();
            let transitions = lease.spec.as_ref().and_then(|s| s.lease_transitions);
            lease.spec = Some(LeaseSpec {
                holder_identity: Some(String::new()),
                lease_duration_seconds: Some(1),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: transitions,
                ..LeaseSpec::default()
            });
            let written = self.store.replace(&lease).await?;
            self.observe(written);
            tracing::info!(lease = self.store.name(), identity = id, "lease released");
            Ok(())
        })
        .await
    }

    /// Campaigns until leading, leads until the lease is lost or `shutdown` is cancelled, then
    /// returns. `on_stopped_leading` is always called before returning; the lease is released on
    /// shutdown when [`release_on_cancel`](LeaderElectionConfig::release_on_cancel) is set.
    pub async fn run(
        &self,
        shutdown: &CancellationToken,
        callbacks: LeaderCallbacks,
    ) -> RunOutcome {
        self.run_term(shutdown, callbacks)
            .instrument(self.span())
            .await
    }

    fn span(&self) -> tracing::Span {
        tracing::info_span!("leader_election", lease = self.store.name(), identity = %self.config.identity)
    }

    async fn run_term(
        &self,
        shutdown: &CancellationToken,
        mut callbacks: LeaderCallbacks,
    ) -> RunOutcome {
        let mut reported = None;
        let outcome = if self.acquire(shutdown, &mut reported, &mut callbacks).await {
            let leading = CancellationToken::new();
            if let Some(cb) = callbacks.on_started_leading.as_mut() {
                cb(leading.clone());
            }
            let renewal = self.renew(shutdown, &mut reported, &mut callbacks).await;
            leading.cancel();
            match renewal {
                Renewal::Lost => {
                    self.forget_leadership();
                    RunOutcome::LostLeadership
                }
                Renewal::Shutdown => {
                    self.release_if_configured().await;
                    RunOutcome::Shutdown
                }
            }
        } else {
            RunOutcome::Shutdown
        };
        if let Some(cb) = callbacks.on_stopped_leading.as_mut() {
            cb();
        }
        outcome
    }

    async fn release_if_configured(&self) {
        if self.config.release_on_cancel
            && let Err(error) = self.release().await
        {
            tracing::warn!(lease = self.store.name(), identity = %self.config.identity, %error, "releasing lease failed");
        }
    }

    /// Runs `work(leading)` only while this candidate leads, campaigning again after a lost term,
    /// until `shutdown` is cancelled (returns `None`) or a term's future completes on its own
    /// (its output is returned and the lease released).
    ///
    /// When leadership ends, `leading` is cancelled and the future is awaited to completion before
    /// campaigning again or releasing the lease, so two terms never overlap in this process and a
    /// standby never starts while this replica still works. The future must therefore stop
    /// promptly once `leading` is cancelled.
    pub async fn run_while_leader<F, Fut, T>(
        &self,
        shutdown: &CancellationToken,
        work: F,
    ) -> Option<T>
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = T>,
    {
        self.run_terms(shutdown, work).instrument(self.span()).await
    }

    async fn run_terms<F, Fut, T>(&self, shutdown: &CancellationToken, mut work: F) -> Option<T>
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = T>,
    {
        let mut callbacks = LeaderCallbacks::new();
        let mut reported = None;
        loop {
            if !self.acquire(shutdown, &mut reported, &mut callbacks).await {
                return None;
            }
            let leading = CancellationToken::new();
            let fut = work(leading.clone());
            tokio::pin!(fut);
            let renewal = tokio::select! {
                out = &mut fut => {
                    leading.cancel();
                    self.release_if_configured().await;
                    return Some(out);
                }
                renewal = self.renew(shutdown, &mut reported, &mut callbacks) => renewal,
            };
            leading.cancel();
            let out = fut.await;
            match renewal {
                Renewal::Shutdown => {
                    self.release_if_configured().await;
                    drop(out);
                    return None;
                }
                Renewal::Lost => {
                    self.forget_leadership();
                    tracing::info!(lease = self.store.name(), identity = %self.config.identity, "term ended, campaigning again");
                }
            }
        }
    }
}
