//! Sharding a controller across replicas, on Leases: each replica reconciles a share of the
//! objects, and a share moves between replicas only when it is safe.
//!
//! # How the work is split
//!
//! The 64-bit FNV-1a hash space of KEP-5866 (the hash kube-apiserver shards lists and watches
//! by, see [`reflex_informer::shard`]) is cut into [`slots`](ShardingConfig::slots) equal
//! ranges. Every replica of a controller group holds a **member Lease**
//! (`<group>-member-<identity>`, renewed like a leader's); the live members are those whose
//! Lease this replica has seen renewed within the lease duration (local observation, never a
//! comparison of clocks). From the sorted list of live members every replica computes the same
//! assignment ([`assign`]: rendezvous hashing with a bound on each member's load, so a change
//! of members moves few slots and the load stays within one slot of even).
//!
//! # Why a slot moves safely
//!
//! A slot is reconciled only by the holder of its **slot Lease** (`<group>-slot-<n>`), taken
//! with leader election's guarantees (optimistic writes, expiry by local observation). So:
//!
//! - **One reconciler per key.** A replica reconciles a key only while it holds the key's slot
//!   Lease and has renewed it within the renew deadline; losing it (a partition: renewals fail)
//!   aborts the slot's reconciles at the renew deadline, before the lease duration after which
//!   another replica may take it.
//! - **Hand-off after release.** When the assignment moves a slot away, its holder stops
//!   handing out the slot's keys, lets in-flight reconciles finish (up to
//!   [`release_grace`](ShardingConfig::release_grace), then aborts them) and only then releases
//!   the Lease. A replica that died without releasing loses its slots when their Leases expire.
//! - **Listed before reconciling.** The new owner first widens its informers' shard selectors to
//!   the slot and waits until their lists with it have completed (the objects are then on their
//!   way from the informer's queue into its store), then takes the Lease; once it holds it, every
//!   cached key of the slot is queued, and so are the keys of the slot's objects it saw deleted
//!   while the slot moved (their deletes reach no other replica), so nothing that arrived
//!   meanwhile is missed. An object still between the informer's queue and its store when the
//!   slot becomes active is queued by its add event.
//! - **Within a lease duration.** The sharder reads its group's Leases every retry period and
//!   remembers when each last changed; a new owner's slot elector starts from that observation,
//!   so a dead holder's slot is taken a lease duration after it last renewed (plus a few retry
//!   periods), not a lease duration after the new owner first looked.
//! - **Idle is stable.** With no change of members, renewals write the same assignment: nothing
//!   moves.
//!
//! # Using it
//!
//! Give the primary informer the sharder's [`ShardHandle`] ([`Sharder::informer_shard`], through
//! `InformerSpec::shard`), the informers of its children [`Sharder::owned_shard`] (they then hold
//! only the children of this replica's objects, filtered by their controller's uid), give the
//! controller the gate ([`Controller::shards`]), and run the sharder beside the controller:
//!
//! ```no_run
//! use std::sync::Arc;
//! use k8s_openapi::api::coordination::v1::Lease;
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use reflex_informer::factory::{FactoryOptions, InformerSpec, SharedInformerFactory};
//! use reflex_runtime::controller::{Action, Controller, ControllerOptions, default_error_policy};
//! use reflex_runtime::sharding::{KubeShardLeases, Sharder, ShardingConfig};
//!
//! # async fn doc(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let leases = KubeShardLeases::new(kube::Api::<Lease>::namespaced(client.clone(), "ops"));
//! let sharder = Sharder::new(leases, ShardingConfig::new("cm-controller", std::env::var("POD_NAME")?))?;
//! let factory = SharedInformerFactory::new(client, FactoryOptions::default());
//! let cms = factory.informer_with(InformerSpec::<ConfigMap>::typed().shard(sharder.informer_shard()))?;
//! let options = ControllerOptions::default();
//! let shutdown = options.shutdown.clone();
//! let controller = Controller::new(cms).shards(sharder.gate()).options(options);
//! let running = tokio::spawn(sharder.run(shutdown));
//! controller
//!     .run(|_key, _ctx: Arc<()>| async { Ok::<_, std::convert::Infallible>(Action::done()) }, default_error_policy, Arc::new(()))
//!     .await?;
//! running.await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`Controller::shards`]: crate::controller::Controller::shards

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams};
use parking_lot::{Mutex, RwLock};
use reflex_informer::shard::{ShardField, ShardHandle, ShardRange, ShardSelector, fnv1a64};
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::leader_election::{
    InMemoryLease, KubeLease, LeaderElectionConfig, LeaderElectionError, LeaderElector, LeaseStore,
};

/// Where a controller group's Leases live: one per member and one per slot.
pub trait ShardLeases: Send + Sync + 'static {
    /// The store of one Lease.
    type Store: LeaseStore + 'static;
    /// The Lease called `name`.
    fn lease(&self, name: &str) -> Self::Store;
    /// Every Lease whose name starts with `prefix`.
    fn list(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<Lease>, LeaderElectionError>> + Send;
}

/// A group's Leases in one namespace of the API server.
#[derive(Clone)]
pub struct KubeShardLeases {
    api: Api<Lease>,
}

impl KubeShardLeases {
    /// Leases in `api`'s namespace.
    pub fn new(api: Api<Lease>) -> Self {
        KubeShardLeases { api }
    }
}

impl ShardLeases for KubeShardLeases {
    type Store = KubeLease;

    fn lease(&self, name: &str) -> KubeLease {
        KubeLease::new(self.api.clone(), name)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Lease>, LeaderElectionError> {
        let list =
            self.api
                .list(&ListParams::default())
                .await
                .map_err(|e| LeaderElectionError::Api {
                    name: format!("{prefix}*"),
                    source: Box::new(e),
                })?;
        Ok(list
            .items
            .into_iter()
            .filter(|l| {
                l.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .collect())
    }
}

/// A group's Leases in memory, for tests: clones share them, so replicas in one process
/// coordinate through it; each Lease is an [`InMemoryLease`] (cut one off with
/// [`InMemoryLease::set_unavailable`]; to cut off one replica from all of them, wrap this in
/// a [`ShardLeases`] of your own that fails while partitioned, as the runtime's sharding test
/// does).
#[derive(Clone, Default)]
pub struct InMemoryShardLeases {
    leases: Arc<Mutex<BTreeMap<String, InMemoryLease>>>,
}

impl InMemoryShardLeases {
    /// No Leases yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The Lease called `name` (created empty if needed).
    pub fn get(&self, name: &str) -> InMemoryLease {
        self.leases
            .lock()
            .entry(name.to_owned())
            .or_insert_with(|| InMemoryLease::new(name))
            .clone()
    }

    /// The holder of every slot Lease of `group` that has one (slot → identity).
    pub fn slot_holders(&self, group: &str) -> BTreeMap<u32, String> {
        let prefix = format!("{group}-slot-");
        self.leases
            .lock()
            .iter()
            .filter_map(|(name, lease)| {
                let slot = name.strip_prefix(&prefix)?.parse().ok()?;
                let holder = lease.lease()?.spec?.holder_identity?;
                (!holder.is_empty()).then_some((slot, holder))
            })
            .collect()
    }
}

impl ShardLeases for InMemoryShardLeases {
    type Store = InMemoryLease;

    fn lease(&self, name: &str) -> InMemoryLease {
        self.get(name)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Lease>, LeaderElectionError> {
        Ok(self
            .leases
            .lock()
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .filter_map(|(_, lease)| lease.lease())
            .collect())
    }
}

/// Identity, group and timings of a sharded replica. Start from [`ShardingConfig::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct ShardingConfig {
    /// The controller group: replicas with the same group share its slots.
    pub group: String,
    /// This replica's unique identity (e.g. the Pod name).
    pub identity: String,
    /// How many slots the hash space is cut into (default 16): at most this many replicas get
    /// work, and a hand-off moves `1/slots` of the objects at a time.
    pub slots: u32,
    /// The field whose hash places an object in a slot (default `metadata.uid`).
    pub field: ShardField,
    /// Lease timings (member and slot Leases), as in leader election: 15 s, 10 s, 2 s.
    pub lease_duration: Duration,
    /// See [`lease_duration`](Self::lease_duration).
    pub renew_deadline: Duration,
    /// See [`lease_duration`](Self::lease_duration); also how often membership is read.
    pub retry_period: Duration,
    /// How long a slot's in-flight reconciles may finish before a release aborts them
    /// (default 10 s).
    pub release_grace: Duration,
}

impl ShardingConfig {
    /// Defaults for `group` and `identity`.
    pub fn new(group: impl Into<String>, identity: impl Into<String>) -> Self {
        ShardingConfig {
            group: group.into(),
            identity: identity.into(),
            slots: 16,
            field: ShardField::Uid,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            release_grace: Duration::from_secs(10),
        }
    }

    fn election(&self) -> LeaderElectionConfig {
        LeaderElectionConfig {
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
            jitter_factor: 0.0,
            release_on_cancel: true,
            ..LeaderElectionConfig::new(self.identity.clone())
        }
    }

    fn member_lease(&self, identity: &str) -> String {
        format!("{}-member-{identity}", self.group)
    }

    fn slot_lease(&self, slot: u32) -> String {
        format!("{}-slot-{slot}", self.group)
    }
}

/// Why a sharder cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ShardingError {
    /// No slots, or an empty group.
    #[error(
        "sharding needs a non-empty group and at least one slot (got group {group:?}, {slots} slots)"
    )]
    Config {
        /// The group.
        group: String,
        /// The slot count.
        slots: u32,
    },
    /// `lease_duration <= renew_deadline + retry_period`: a holder could still reconcile when
    /// another may take its slot.
    #[error(
        "lease duration {lease_duration:?} must exceed renew deadline {renew_deadline:?} plus retry period {retry_period:?}"
    )]
    Timing {
        /// The configured lease duration.
        lease_duration: Duration,
        /// The configured renew deadline.
        renew_deadline: Duration,
        /// The configured retry period.
        retry_period: Duration,
    },
    /// The Lease timings or identity are invalid.
    #[error("invalid sharding lease configuration")]
    Election(#[from] LeaderElectionError),
}

/// The slot of `count` slots each member owns: `assign(members, count)[slot]` is the index in
/// `members` of the slot's owner. The same members (in any order) give the same assignment;
/// each slot, in order, goes to the member of highest rendezvous score (FNV-1a of
/// `member/slot`) among those that can take one more without the loads ending uneven, so loads
/// differ by at most one and a change of members moves few slots. Empty without members.
///
/// ```
/// let members = ["a".to_string(), "b".into(), "c".into()];
/// let owners = reflex_runtime::sharding::assign(&members, 16);
/// let load = |m| owners.iter().filter(|&&o| o == m).count();
/// assert_eq!(load(0) + load(1) + load(2), 16);
/// assert!((0..3).all(|m| (5..=6).contains(&load(m))));
/// ```
pub fn assign(members: &[String], count: u32) -> Vec<usize> {
    if members.is_empty() {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by(|&a, &b| members[a].cmp(&members[b]));
    // Loads end even: `extra` members get one slot more than `base`.
    let base = count as usize / members.len();
    let extra = count as usize % members.len();
    let mut load = vec![0usize; members.len()];
    let mut above_base = 0usize;
    (0..count)
        .map(|slot| {
            let best = order
                .iter()
                .copied()
                .filter(|&m| load[m] < base || (load[m] == base && above_base < extra))
                .max_by_key(|&m| {
                    (
                        fnv1a64(format!("{}/{slot}", members[m]).as_bytes()),
                        std::cmp::Reverse(m),
                    )
                })
                .unwrap_or(order[0]);
            if load[best] == base {
                above_base += 1;
            }
            load[best] += 1;
            best
        })
        .collect()
}

/// One slot this replica reconciles: its fence (cancelled when its reconciles must stop) and
/// how many are in flight.
struct ActiveSlot {
    fence: CancellationToken,
    inflight: Arc<AtomicUsize>,
    idle: Arc<Notify>,
}

/// What the sharder, the gate and the metrics share.
struct State {
    config: ShardingConfig,
    active: RwLock<HashMap<u32, ActiveSlot>>,
    activated: broadcast::Sender<u32>,
    members: watch::Sender<Vec<String>>,
    handoffs: AtomicU64,
    last_handoff: Mutex<Option<Duration>>,
    on_handoff: Mutex<Vec<HandoffObserver>>,
}

/// Called with the duration of every slot this replica takes over.
pub type HandoffObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// Admission of reconciles by slot: what a sharded [`Controller`](crate::controller::Controller)
/// asks before reconciling a key. Cloned from [`Sharder::gate`].
#[derive(Clone)]
pub struct ShardGate {
    state: Arc<State>,
}

impl std::fmt::Debug for ShardGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardGate")
            .field("group", &self.state.config.group)
            .field("active", &self.active_slots())
            .finish()
    }
}

/// A reconcile admitted into a slot: hold it for the reconcile's duration and stop when
/// [`fence`](Self::fence) is cancelled.
pub struct SlotGuard {
    fence: CancellationToken,
    inflight: Arc<AtomicUsize>,
    idle: Arc<Notify>,
}

impl SlotGuard {
    /// Cancelled when the slot is being lost: abandon the reconcile.
    pub fn fence(&self) -> &CancellationToken {
        &self.fence
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if self.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

impl ShardGate {
    /// The controller group.
    pub fn group(&self) -> &str {
        &self.state.config.group
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.state.config.identity
    }

    /// How many slots the hash space is cut into.
    pub fn slots(&self) -> u32 {
        self.state.config.slots
    }

    /// Calls `observer` with the duration of every slot this replica takes over from now on
    /// (from being assigned the slot to reconciling it: the old holder's release or Lease
    /// expiry, and the cache's list, included).
    pub fn on_handoff(&self, observer: HandoffObserver) {
        self.state.on_handoff.lock().push(observer);
    }

    /// The field keys are placed by.
    pub fn field(&self) -> ShardField {
        self.state.config.field
    }

    /// The slot of an object of this hash.
    pub fn slot_of(&self, hash: u64) -> u32 {
        ShardRange::slot_of(hash, self.state.config.slots)
    }

    /// Admits a reconcile of an object of `hash` if this replica holds its slot now.
    pub fn enter(&self, hash: u64) -> Option<SlotGuard> {
        let slot = self.slot_of(hash);
        let active = self.state.active.read();
        let a = active.get(&slot)?;
        if a.fence.is_cancelled() {
            return None;
        }
        a.inflight.fetch_add(1, Ordering::AcqRel);
        Some(SlotGuard {
            fence: a.fence.clone(),
            inflight: a.inflight.clone(),
            idle: a.idle.clone(),
        })
    }

    /// The slots this replica reconciles now.
    pub fn active_slots(&self) -> BTreeSet<u32> {
        self.state.active.read().keys().copied().collect()
    }

    /// Slot numbers as they become active here (to queue their cached keys).
    pub fn subscribe_activations(&self) -> broadcast::Receiver<u32> {
        self.state.activated.subscribe()
    }

    /// The live members this replica sees (sorted).
    pub fn members(&self) -> Vec<String> {
        self.state.members.borrow().clone()
    }

    /// Slots this replica took over so far, and how long the last one took from being
    /// assigned to reconciling.
    pub fn handoffs(&self) -> (u64, Option<Duration>) {
        (
            self.state.handoffs.load(Ordering::Relaxed),
            *self.state.last_handoff.lock(),
        )
    }
}

/// One replica's part in a sharded controller group; see the [module docs](self).
pub struct Sharder<L: ShardLeases> {
    leases: L,
    state: Arc<State>,
    informer_shard: ShardHandle,
    /// The shard of the children's informers, once asked for ([`Sharder::owned_shard`]).
    owned_shard: Mutex<Option<ShardHandle>>,
}

/// A slot task's handle in the sharder loop.
struct Running {
    stop: CancellationToken,
}

/// What a Lease of the group (member or slot) looked like when last seen to change, and when.
struct Seen {
    version: Option<String>,
    holder: String,
    lease: Lease,
    at: Instant,
}

impl<L: ShardLeases> Sharder<L> {
    /// A sharder of `config.group` on `leases`; checks the configuration.
    pub fn new(leases: L, config: ShardingConfig) -> Result<Self, ShardingError> {
        if config.slots == 0 || config.group.is_empty() {
            return Err(ShardingError::Config {
                group: config.group,
                slots: config.slots,
            });
        }
        config.election().validate()?;
        if config.lease_duration <= config.renew_deadline + config.retry_period {
            // A holder renewing last at T gives up by T + retry period + renew deadline; the
            // lease must outlast that, or a new holder could start before the old one stops.
            return Err(ShardingError::Timing {
                lease_duration: config.lease_duration,
                renew_deadline: config.renew_deadline,
                retry_period: config.retry_period,
            });
        }
        let informer_shard = ShardHandle::new(ShardSelector::new(config.field, []));
        Ok(Sharder {
            leases,
            informer_shard,
            owned_shard: Mutex::new(None),
            state: Arc::new(State {
                config,
                active: RwLock::new(HashMap::new()),
                activated: broadcast::channel(1024).0,
                members: watch::Sender::new(Vec::new()),
                handoffs: AtomicU64::new(0),
                last_handoff: Mutex::new(None),
                on_handoff: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The shard the primary informer must hold (give it to `InformerSpec::shard`): the slots
    /// this replica owns or is taking over. It starts empty.
    pub fn informer_shard(&self) -> ShardHandle {
        self.informer_shard.clone()
    }

    /// The shard for the informers of the primary's children (`Controller::owns`; give it to
    /// their `InformerSpec::shard`): the same slots, by the uid of each child's controller (by
    /// namespace when the group shards by namespace), so a replica caches only the children of
    /// the objects it reconciles. No server shards by a controller's uid: those informers list
    /// everything and filter on the client (with [`ShardField::Namespace`] the server does).
    /// Once asked for, a slot is taken only when this informer's list with it is in too. Ask
    /// before [`run`](Self::run).
    pub fn owned_shard(&self) -> ShardHandle {
        let field = match self.state.config.field {
            ShardField::Uid => ShardField::ControllerUid,
            other => other,
        };
        self.owned_shard
            .lock()
            .get_or_insert_with(|| ShardHandle::new(ShardSelector::new(field, [])))
            .clone()
    }

    /// Gives both shards (the primary's, the children's if asked for) these slots.
    fn set_slots(&self, slots: &BTreeSet<u32>) {
        let selector = self.selector(slots.iter().copied());
        if let Some(owned) = &*self.owned_shard.lock() {
            owned.set(ShardSelector::new(
                owned.current().field(),
                selector.ranges().to_vec(),
            ));
        }
        self.informer_shard.set(selector);
    }

    /// The gate a sharded controller reconciles through.
    pub fn gate(&self) -> ShardGate {
        ShardGate {
            state: self.state.clone(),
        }
    }

    fn selector(&self, slots: impl IntoIterator<Item = u32>) -> ShardSelector {
        let count = self.state.config.slots;
        ShardSelector::new(
            self.state.config.field,
            slots
                .into_iter()
                .filter_map(|s| ShardRange::slot(s, count).ok()),
        )
    }

    /// Runs until `shutdown`: holds the member Lease, follows the membership and takes and
    /// releases slots; on shutdown releases every slot (after its in-flight reconciles) and
    /// the member Lease.
    pub async fn run(self, shutdown: CancellationToken) {
        let config = self.state.config.clone();
        let span =
            tracing::info_span!("sharder", group = %config.group, identity = %config.identity);
        async move {
            let member = match LeaderElector::new(
                self.leases.lease(&config.member_lease(&config.identity)),
                config.election(),
            ) {
                Ok(e) => Arc::new(e),
                Err(error) => {
                    tracing::error!(%error, "member lease configuration refused");
                    return;
                }
            };
            let member_stop = CancellationToken::new();
            // In a JoinSet owned by this future: if the future is dropped (the task aborted),
            // the heartbeat stops with it, as it would with the process.
            let mut heartbeat = JoinSet::new();
            {
                let member = member.clone();
                let stop = member_stop.clone();
                heartbeat.spawn(async move {
                    member
                        .run_while_leader(&stop, |leading| async move { leading.cancelled().await })
                        .await;
                });
            }
            let mut seen: HashMap<String, Seen> = HashMap::new();
            let mut running: BTreeMap<u32, Running> = BTreeMap::new();
            let mut slots: JoinSet<u32> = JoinSet::new();
            // Which slot each task runs, to know which one ended even when it panicked.
            let mut tasks: HashMap<tokio::task::Id, u32> = HashMap::new();
            let prefix = config.member_lease("");
            let group_prefix = format!("{}-", config.group);
            loop {
                let members = self
                    .live_members(&group_prefix, &prefix, &mut seen, member.is_leader())
                    .await;
                let owners = assign(&members, config.slots);
                let mine: BTreeSet<u32> = owners
                    .iter()
                    .enumerate()
                    .filter(|&(_, &m)| members[m] == config.identity)
                    .map(|(s, _)| s as u32)
                    .collect();
                if *self.state.members.borrow() != members {
                    tracing::info!(members = ?members, owned = ?mine, "membership changed");
                    self.state.members.send_replace(members.clone());
                }
                // Release what is no longer ours (the slot task deactivates, drains, releases).
                for (slot, r) in &running {
                    if !mine.contains(slot) && !r.stop.is_cancelled() {
                        tracing::info!(slot, "slot assigned elsewhere; releasing");
                        r.stop.cancel();
                    }
                }
                // The informer holds what we own and what we still hold.
                let wanted: BTreeSet<u32> = mine.iter().chain(running.keys()).copied().collect();
                self.set_slots(&wanted);
                // Take what became ours.
                for &slot in &mine {
                    if running.contains_key(&slot) {
                        continue;
                    }
                    let stop = CancellationToken::new();
                    let assigned_at = Instant::now();
                    running.insert(slot, Running { stop: stop.clone() });
                    // What this process saw of the slot's Lease, and since when: a holder that
                    // stopped renewing is judged expired from then, not from the new elector's
                    // first read.
                    let seed = seen
                        .get(&config.slot_lease(slot))
                        .map(|s| (s.lease.clone(), s.at));
                    let task = self.slot_task(slot, stop, assigned_at, seed);
                    let handle = slots.spawn(task.instrument(tracing::info_span!("slot", slot)));
                    tasks.insert(handle.id(), slot);
                }
                let tick = tokio::time::sleep(config.retry_period);
                tokio::pin!(tick);
                loop {
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => break,
                        Some(done) = slots.join_next_with_id(), if !slots.is_empty() => {
                            let id = match &done {
                                Ok((id, _)) => *id,
                                Err(e) => e.id(),
                            };
                            if let Some(slot) = tasks.remove(&id) {
                                running.remove(&slot);
                                match done {
                                    Ok(_) => tracing::info!(slot, "slot released"),
                                    Err(error) => tracing::error!(slot, %error, "slot task failed"),
                                }
                            }
                        }
                        () = &mut tick => break,
                    }
                }
                if shutdown.is_cancelled() {
                    break;
                }
            }
            tracing::info!(slots = running.len(), "shutting down: releasing slots");
            for r in running.values() {
                r.stop.cancel();
            }
            while slots.join_next().await.is_some() {}
            self.set_slots(&BTreeSet::new());
            member_stop.cancel();
            while heartbeat.join_next().await.is_some() {}
            tracing::info!("sharder stopped");
        }
        .instrument(span)
        .await
    }

    /// Reads the group's Leases (members and slots, one list) into `seen`, and returns the
    /// live members: those whose member Lease has a holder and was seen to change within the
    /// lease duration (this replica while it holds its own), sorted.
    async fn live_members(
        &self,
        group_prefix: &str,
        prefix: &str,
        seen: &mut HashMap<String, Seen>,
        self_alive: bool,
    ) -> Vec<String> {
        let config = &self.state.config;
        let listed = self.leases.list(group_prefix).await;
        // When the records were read at the latest: a renewal seen here happened before it, so
        // an expiry judged from it is never early.
        let now = Instant::now();
        match listed {
            Ok(leases) => {
                let mut names = BTreeSet::new();
                for lease in leases {
                    let Some(name) = lease.metadata.name.clone() else {
                        continue;
                    };
                    let holder = lease
                        .spec
                        .as_ref()
                        .and_then(|s| s.holder_identity.clone())
                        .unwrap_or_default();
                    let version = lease.metadata.resource_version.clone();
                    names.insert(name.clone());
                    match seen.get_mut(&name) {
                        Some(s) if s.version == version => {}
                        Some(s) => {
                            *s = Seen {
                                version,
                                holder,
                                lease,
                                at: now,
                            };
                        }
                        None => {
                            seen.insert(
                                name,
                                Seen {
                                    version,
                                    holder,
                                    lease,
                                    at: now,
                                },
                            );
                        }
                    }
                }
                seen.retain(|name, _| names.contains(name));
            }
            Err(error) => {
                // What was seen stays; its age decides, as for a Lease we cannot read.
                tracing::warn!(%error, "listing member leases failed");
            }
        }
        let mut live: BTreeSet<String> = seen
            .iter()
            .filter(|(_, s)| {
                !s.holder.is_empty() && now.duration_since(s.at) < config.lease_duration
            })
            .filter_map(|(name, s)| {
                let identity = name.strip_prefix(prefix)?;
                (identity == s.holder).then(|| identity.to_owned())
            })
            .collect();
        if self_alive {
            live.insert(config.identity.clone());
        } else {
            live.remove(&config.identity);
        }
        live.into_iter().collect()
    }

    /// Takes `slot` once the informer's list with it is in: holds its Lease, activates it,
    /// and on `stop` (or a lost Lease) deactivates it, lets in-flight reconciles finish (on
    /// `stop`, up to the release grace) and releases.
    fn slot_task(
        &self,
        slot: u32,
        stop: CancellationToken,
        assigned_at: Instant,
        seed: Option<(Lease, Instant)>,
    ) -> impl Future<Output = u32> + Send + 'static {
        let state = self.state.clone();
        let store = self.leases.lease(&state.config.slot_lease(slot));
        let shards: Vec<ShardHandle> = std::iter::once(self.informer_shard.clone())
            .chain(self.owned_shard.lock().clone())
            .collect();
        async move {
            // Synced before reconciling: the informers' lists with this slot are in.
            let listed = futures::future::join_all(shards.iter().map(|shard| {
                let want = shard.version();
                async move { shard.wait_listed(want).await }
            }));
            tokio::select! {
                biased;
                () = stop.cancelled() => return slot,
                _ = listed => {}
            }
            let elector = match LeaderElector::new(store, state.config.election()) {
                Ok(e) => e,
                Err(error) => {
                    tracing::error!(%error, "slot lease configuration refused");
                    return slot;
                }
            };
            if let Some((lease, at)) = seed {
                elector.seed_observation(lease, at);
            }
            // The campaign stops when `stop` comes before a term. Within a term, `stop` is
            // handled by the term itself, which drains while the Lease is still renewed (the
            // elector stops renewing once its own shutdown token is cancelled, and a drain
            // longer than the lease duration would let another replica in).
            let campaign = CancellationToken::new();
            let in_term = Arc::new(watch::Sender::new(false));
            let stop_campaign = {
                let (stop, campaign) = (stop.clone(), campaign.clone());
                let mut term = in_term.subscribe();
                async move {
                    stop.cancelled().await;
                    // A running term sees `stop` and ends; then the campaign stops.
                    let _ = term.wait_for(|running| !running).await;
                    campaign.cancel();
                }
            };
            let terms = elector.run_while_leader(&campaign, |leading| {
                let state = state.clone();
                let stop = stop.clone();
                let in_term = in_term.clone();
                async move {
                    in_term.send_replace(true);
                    let fence = CancellationToken::new();
                    let inflight = Arc::new(AtomicUsize::new(0));
                    let idle = Arc::new(Notify::new());
                    // However the term ends (its end, a panic, the future dropped): the slot
                    // admits nothing more and what it admitted is aborted.
                    let _term = TermGuard {
                        state: state.clone(),
                        slot,
                        fence: fence.clone(),
                        inflight: inflight.clone(),
                        in_term: in_term.clone(),
                    };
                    state.active.write().insert(
                        slot,
                        ActiveSlot {
                            fence: fence.clone(),
                            inflight: inflight.clone(),
                            idle: idle.clone(),
                        },
                    );
                    let took = assigned_at.elapsed();
                    state.handoffs.fetch_add(1, Ordering::Relaxed);
                    *state.last_handoff.lock() = Some(took);
                    let observers = state.on_handoff.lock().clone();
                    for observe in observers {
                        let observed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            observe(took);
                        }));
                        if observed.is_err() {
                            tracing::error!("a hand-off observer panicked");
                        }
                    }
                    tracing::info!(took_ms = took.as_millis() as u64, "slot active");
                    let _ = state.activated.send(slot);
                    let graceful = tokio::select! {
                        biased;
                        () = leading.cancelled() => false,
                        () = stop.cancelled() => true,
                    };
                    // No new reconciles of the slot from here on.
                    state.active.write().remove(&slot);
                    if graceful {
                        // Draining while the Lease is renewed; if it is lost meanwhile (renewals
                        // failing past the renew deadline), stop at once: another replica may
                        // take the slot a lease duration after the last renewal.
                        let drain =
                            tokio::time::timeout(state.config.release_grace, drained(&inflight, &idle));
                        tokio::select! {
                            biased;
                            () = leading.cancelled() => {
                                tracing::warn!("slot lease lost while draining; aborting the slot's reconciles");
                            }
                            drained = drain => if drained.is_err() {
                                tracing::warn!(
                                    inflight = inflight.load(Ordering::Relaxed),
                                    "release grace over; aborting the slot's reconciles"
                                );
                            }
                        }
                    } else {
                        tracing::warn!("slot lease lost; aborting the slot's reconciles");
                    }
                    fence.cancel();
                    // Aborted reconciles drop their guards as their futures are dropped.
                    drained(&inflight, &idle).await;
                    tracing::info!(graceful, "slot inactive");
                    graceful
                }
            });
            // A graceful term's end completes `run_while_leader` (it releases the Lease); a
            // lost one campaigns again until `stop`.
            tokio::pin!(terms);
            tokio::pin!(stop_campaign);
            tokio::select! {
                _ = &mut terms => {}
                () = &mut stop_campaign => {
                    terms.await;
                }
            }
            slot
        }
    }
}

/// Ends a slot's term whatever ends it: removes the slot from the active ones (if it is still
/// this term's), cancels its fence (admitted reconciles abort) and marks the term over.
struct TermGuard {
    state: Arc<State>,
    slot: u32,
    fence: CancellationToken,
    inflight: Arc<AtomicUsize>,
    in_term: Arc<watch::Sender<bool>>,
}

impl Drop for TermGuard {
    fn drop(&mut self) {
        let mut active = self.state.active.write();
        if active
            .get(&self.slot)
            .is_some_and(|a| Arc::ptr_eq(&a.inflight, &self.inflight))
        {
            active.remove(&self.slot);
        }
        drop(active);
        self.fence.cancel();
        self.in_term.send_replace(false);
    }
}

/// Resolves once no reconcile of a slot is in flight (`idle` is notified by the last guard).
async fn drained(inflight: &AtomicUsize, idle: &Notify) {
    loop {
        // Registered before the check (`enable`), so a notification between the two is not lost.
        let notified = idle.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if inflight.load(Ordering::Acquire) == 0 {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("replica-{i}")).collect()
    }

    #[test]
    fn assignment_is_balanced_and_independent_of_member_order() {
        for n in 1..=7 {
            let members = names(n);
            let owners = assign(&members, 16);
            let mut reversed = members.clone();
            reversed.reverse();
            let again: Vec<&String> = assign(&reversed, 16)
                .iter()
                .map(|&i| &reversed[i])
                .collect();
            let first: Vec<&String> = owners.iter().map(|&i| &members[i]).collect();
            assert_eq!(first, again, "{n} members");
            for m in 0..n {
                let load = owners.iter().filter(|&&o| o == m).count();
                assert!(
                    load == 16 / n || load == 16 / n + 1,
                    "{n} members: member {m} has {load}"
                );
            }
        }
        assert!(assign(&[], 16).is_empty());
    }

    #[test]
    fn a_member_joining_moves_only_some_slots() {
        let three = names(3);
        let four = names(4);
        let before: Vec<&String> = assign(&three, 16).iter().map(|&i| &three[i]).collect();
        let after: Vec<&String> = assign(&four, 16).iter().map(|&i| &four[i]).collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        // The newcomer takes its four; the bound on load may move a few more.
        assert!((4..=8).contains(&moved), "{moved} slots moved");
    }

    #[test]
    fn a_bad_configuration_is_refused() {
        let leases = InMemoryShardLeases::new();
        let mut config = ShardingConfig::new("g", "a");
        config.slots = 0;
        assert!(matches!(
            Sharder::new(leases.clone(), config),
            Err(ShardingError::Config { .. })
        ));
        let mut config = ShardingConfig::new("g", "a");
        config.renew_deadline = config.lease_duration;
        assert!(matches!(
            Sharder::new(leases.clone(), config),
            Err(ShardingError::Election(_))
        ));
        assert!(matches!(
            Sharder::new(leases, ShardingConfig::new("g", "")),
            Err(ShardingError::Election(LeaderElectionError::EmptyIdentity))
        ));
    }
}
