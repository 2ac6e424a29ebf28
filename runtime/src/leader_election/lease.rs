//! Where the Lease lives: the API server's `coordination.k8s.io/v1` Leases, or memory (for
//! tests), behind one trait with optimistic concurrency.

use std::future::Future;
use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use parking_lot::Mutex;

use super::*;

/// Access to the one Lease that candidates compete for.
///
/// Implemented for the API server by [`KubeLease`] and in memory by [`InMemoryLease`]. `create` fails
/// with [`LeaderElectionError::AlreadyExists`] when the Lease exists, `replace` with
/// [`LeaderElectionError::Conflict`] when the given `resourceVersion` is stale.
pub trait LeaseStore: Send + Sync {
    /// Name of the Lease.
    fn name(&self) -> &str;
    /// Reads the Lease; `None` when it does not exist.
    fn get(&self) -> impl Future<Output = Result<Option<Lease>, LeaderElectionError>> + Send;
    /// Creates the Lease.
    fn create(
        &self,
        lease: &Lease,
    ) -> impl Future<Output = Result<Lease, LeaderElectionError>> + Send;
    /// Replaces the Lease, guarded by `lease.metadata.resource_version`.
    fn replace(
        &self,
        lease: &Lease,
    ) -> impl Future<Output = Result<Lease, LeaderElectionError>> + Send;
}

/// A [`LeaseStore`] backed by the API server.
#[derive(Clone)]
pub struct KubeLease {
    pub(super) api: Api<Lease>,
    pub(super) name: String,
}

impl KubeLease {
    /// The Lease `name` in `api`'s namespace.
    pub fn new(api: Api<Lease>, name: impl Into<String>) -> Self {
        Self {
            api,
            name: name.into(),
        }
    }

    pub(super) fn map_err(
        &self,
        e: kube::Error,
        on_conflict: fn(String) -> LeaderElectionError,
    ) -> LeaderElectionError {
        match &e {
            kube::Error::Api(s) if s.code == 409 => on_conflict(self.name.clone()),
            kube::Error::Api(s) if s.code == 404 => LeaderElectionError::NotFound {
                name: self.name.clone(),
            },
            _ => LeaderElectionError::Api {
                name: self.name.clone(),
                source: Box::new(e),
            },
        }
    }
}

impl LeaseStore for KubeLease {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self) -> Result<Option<Lease>, LeaderElectionError> {
        self.api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.map_err(e, |name| LeaderElectionError::Conflict { name }))
    }

    async fn create(&self, lease: &Lease) -> Result<Lease, LeaderElectionError> {
        self.api
            .create(&PostParams::default(), lease)
            .await
            .map_err(|e| self.map_err(e, |name| LeaderElectionError::AlreadyExists { name }))
    }

    async fn replace(&self, lease: &Lease) -> Result<Lease, LeaderElectionError> {
        self.api
            .replace(&self.name, &PostParams::default(), lease)
            .await
            .map_err(|e| self.map_err(e, |name| LeaderElectionError::Conflict { name }))
    }
}

#[derive(Default)]
pub(super) struct MemState {
    pub(super) lease: Option<Lease>,
    pub(super) resource_version: u64,
    pub(super) unavailable: bool,
    pub(super) injected_conflicts: u32,
    pub(super) writes: u64,
}

/// An in-memory [`LeaseStore`] with API-server semantics (resourceVersion per write, 409 on a stale
/// replace or a second create), for tests. Clones share the same Lease, so several electors can
/// compete for it; [`set_unavailable`](Self::set_unavailable) simulates a partition.
#[derive(Clone)]
pub struct InMemoryLease {
    pub(super) name: String,
    pub(super) state: Arc<Mutex<MemState>>,
}

impl InMemoryLease {
    /// An absent Lease called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            state: Arc::default(),
        }
    }

    /// The stored Lease, if any.
    pub fn lease(&self) -> Option<Lease> {
        self.state.lock().lease.clone()
    }

    /// Overwrites the Lease as another writer would (new resourceVersion), ignoring conflicts.
    pub fn force_write(&self, mut lease: Lease) -> Lease {
        let mut s = self.state.lock();
        s.resource_version += 1;
        s.writes += 1;
        lease.metadata.name = Some(self.name.clone());
        lease.metadata.resource_version = Some(s.resource_version.to_string());
        s.lease = Some(lease.clone());
        lease
    }

    /// Makes every request fail with [`LeaderElectionError::Unavailable`] while `true`.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state.lock().unavailable = unavailable;
    }

    /// Makes the next `n` replaces fail with [`LeaderElectionError::Conflict`], as if another
    /// writer had always just written first.
    pub fn inject_conflicts(&self, n: u32) {
        self.state.lock().injected_conflicts = n;
    }

    /// Number of successful writes so far.
    pub fn writes(&self) -> u64 {
        self.state.lock().writes
    }

    pub(super) fn check_available(&self, s: &MemState) -> Result<(), LeaderElectionError> {
        if s.unavailable {
            return Err(LeaderElectionError::Unavailable {
                name: self.name.clone(),
            });
        }
        Ok(())
    }
}

impl LeaseStore for InMemoryLease {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self) -> Result<Option<Lease>, LeaderElectionError> {
        let s = self.state.lock();
        self.check_available(&s)?;
        Ok(s.lease.clone())
    }

    async fn create(&self, lease: &Lease) -> Result<Lease, LeaderElectionError> {
        {
            let s = self.state.lock();
            self.check_available(&s)?;
            if s.lease.is_some() {
                return Err(LeaderElectionError::AlreadyExists {
                    name: self.name.clone(),
                });
            }
        }
        Ok(self.force_write(lease.clone()))
    }

    async fn replace(&self, lease: &Lease) -> Result<Lease, LeaderElectionError> {
        {
            let mut s = self.state.lock();
            self.check_available(&s)?;
            if s.injected_conflicts > 0 {
                s.injected_conflicts -= 1;
                return Err(LeaderElectionError::Conflict {
                    name: self.name.clone(),
                });
            }
            let Some(current) = &s.lease else {
                return Err(LeaderElectionError::NotFound {
                    name: self.name.clone(),
                });
            };
            if current.metadata.resource_version != lease.metadata.resource_version {
                return Err(LeaderElectionError::Conflict {
                    name: self.name.clone(),
                });
            }
        }
        Ok(self.force_write(lease.clone()))
    }
}
