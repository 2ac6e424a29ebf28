//! The store modes every Indexer, Lister and informer guarantee is checked in.
#![allow(dead_code)]

use std::sync::Arc;

use reflex_informer::store::{CompactOptions, Indexer};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How a test's store keeps its objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `Indexer::new`: objects as `Arc<K>`.
    Full,
    /// `Indexer::compact` with the default options (LZ4, a cache of decoded objects).
    Compact,
    /// Compact without a cache: every read decodes.
    CompactUncached,
    /// Compact with plain JSON (no compression) and a cache of two objects.
    CompactPlainJson,
}

/// Every mode.
pub const MODES: [Mode; 4] = [
    Mode::Full,
    Mode::Compact,
    Mode::CompactUncached,
    Mode::CompactPlainJson,
];

/// The compact options of `mode` (`None` for [`Mode::Full`]).
pub fn compact_options(mode: Mode) -> Option<CompactOptions> {
    match mode {
        Mode::Full => None,
        Mode::Compact => Some(CompactOptions::default()),
        Mode::CompactUncached => Some(CompactOptions {
            cache_capacity: 0,
            ..CompactOptions::default()
        }),
        Mode::CompactPlainJson => Some(CompactOptions {
            cache_capacity: 2,
            compress: false,
        }),
    }
}

/// An empty store of `K` in `mode`.
pub fn store<K>(mode: Mode) -> Indexer<K>
where
    K: kube::Resource + Serialize + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Send + Sync + 'static,
{
    match compact_options(mode) {
        None => Indexer::new(),
        Some(options) => Indexer::compact(options),
    }
}

/// Whether a store in `mode` hands back the very `Arc` it was given for objects written
/// recently (the full store always; a compact one from its cache).
pub fn keeps_identity(mode: Mode) -> bool {
    matches!(mode, Mode::Full | Mode::Compact)
}

/// Asserts that `got` is `want`: the same `Arc` where the mode keeps identity, an equal
/// object otherwise.
pub fn assert_same<K: PartialEq + std::fmt::Debug>(mode: Mode, got: &Arc<K>, want: &Arc<K>) {
    if keeps_identity(mode) {
        assert!(Arc::ptr_eq(got, want), "{mode:?}: expected the same Arc");
    } else {
        assert_eq!(got, want, "{mode:?}: expected an equal object");
    }
}
