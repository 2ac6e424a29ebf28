//! The hasher of the queues' item maps.
//!
//! Every queue operation hashes its item once or twice, so the hasher is on the hot path:
//! SipHash (std's default) was about an eighth of the workqueue benchmark's profile.
//! [foldhash](https://docs.rs/foldhash) is several times faster on short keys.
//!
//! Why HashDoS is not a concern: foldhash is not a keyed cryptographic hash, but every map
//! here gets a seed drawn from `rand`'s OS-seeded generator (a per-process shared seed and a
//! per-map seed), so colliding keys cannot be computed ahead of time. The items are keys a
//! controller chose (object keys of a cluster it watches); the objects behind them are created
//! through the API server, which authenticates, rate-limits and quota-limits whoever creates
//! them, and a queue holds at most one entry per distinct key.

use std::sync::OnceLock;

use foldhash::SharedSeed;
use foldhash::fast::SeedableRandomState;

/// The `BuildHasher` of the queues' maps.
pub(crate) type RandomState = SeedableRandomState;

static SHARED_SEED: OnceLock<SharedSeed> = OnceLock::new();

/// A hasher state with a fresh random per-map seed and the process's random shared seed.
pub(crate) fn random_state() -> RandomState {
    let shared = SHARED_SEED.get_or_init(|| SharedSeed::from_u64(rand::random()));
    SeedableRandomState::with_seed(rand::random(), shared)
}
