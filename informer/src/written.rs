//! Read-your-writes: the writes a controller made, remembered per key until the cache shows them.
//!
//! A reconcile that writes an object and is woken again (by its own write's event, or by a
//! requeue) can read the cache from *before* that write: the watch event is still on its way.
//! Acting on that stale state repeats work at best and undoes it at worst (controller-runtime
//! #3320, cluster-api#13720). client-go 1.38's consistency store and controller-runtime v0.25's
//! read-your-writes client answer it the same way, which is the way here: record the
//! resourceVersion each successful write returned, per key, and before reading a key compare it
//! with what the store holds.
//!
//! - [`SharedIndexInformer::record_write`](crate::SharedIndexInformer::record_write) takes the
//!   object a create, update, patch or status/scale write returned;
//!   [`record_delete`](crate::SharedIndexInformer::record_delete) takes the key and what the
//!   DELETE answered (the object, while finalizers hold it, or nothing once it is gone).
//! - A write is *observed* once the store holds the key at that resourceVersion or later, or the
//!   store as a whole reflects a later resourceVersion (the object may have changed again or
//!   gone since); a delete once the key is gone from the store or holds a different object (a
//!   new UID).
//! - Versions that cannot be compared (not KEP-5504 integers) fail open: the write counts as
//!   observed, the caller reads the cache as it would without the check.
//! - The newest write per key wins; a record is dropped once observed, and records of keys
//!   nobody asks about are swept as the map grows.
//!
//! The controller runtime uses it per key (`ControllerOptions::read_your_writes`): a key whose
//! own write is not in the cache yet is retried with backoff, never a barrier for other keys.

use std::fmt;

use dashmap::DashMap;

use crate::key::ObjectKey;
use crate::resource_version;

/// What the store must show before a recorded write counts as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingWrite {
    /// The object at this resourceVersion or later.
    AtLeast(String),
    /// The object gone, or replaced by one with another UID.
    Gone {
        /// The UID of the deleted object, when the cache knew it.
        uid: Option<String>,
    },
}

impl fmt::Display for PendingWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PendingWrite::AtLeast(rv) => write!(f, "resourceVersion {rv} or later"),
            PendingWrite::Gone { .. } => f.write_str("the object deleted"),
        }
    }
}

/// Why [`wait_until_observed`](crate::SharedIndexInformer::wait_until_observed) gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObserveError {
    /// The cache did not show the write in time.
    #[error("the cache did not show {expected} for {key} in time")]
    Timeout {
        /// The key.
        key: ObjectKey,
        /// What it still waits for.
        expected: PendingWrite,
    },
    /// The informer stopped first.
    #[error("the informer stopped before it showed the write to {key}")]
    Stopped {
        /// The key.
        key: ObjectKey,
    },
}

/// Records are swept for observed ones whenever the map reaches this size (then twice the size
/// that survived).
const SWEEP_AT: usize = 1024;

/// The writes recorded on one informer.
pub(crate) struct Written {
    pending: DashMap<ObjectKey, PendingWrite, crate::hash::FastState>,
    sweep_at: parking_lot::Mutex<usize>,
}

impl Default for Written {
    fn default() -> Self {
        Written {
            pending: DashMap::with_hasher(crate::hash::FastState::default()),
            sweep_at: parking_lot::Mutex::new(SWEEP_AT),
        }
    }
}

/// What the store says about one key, for [`Written::check`].
pub(crate) struct Seen<'a> {
    /// The cached object's resourceVersion and UID, if the key is cached.
    pub(crate) object: Option<(Option<&'a str>, Option<&'a str>)>,
    /// The resourceVersion the store reflects.
    pub(crate) store: &'a str,
}

fn observed(pending: &PendingWrite, seen: &Seen<'_>) -> bool {
    match pending {
        PendingWrite::AtLeast(rv) => {
            let cached = seen.object.and_then(|(cached, _)| cached);
            let by_object = cached.map(|c| resource_version::is_at_least(c, rv));
            let by_store = resource_version::is_at_least(seen.store, rv);
            if by_object == Some(Some(true)) || by_store == Some(true) {
                return true;
            }
            // A version that cannot be compared fails open; an empty store (not listed yet)
            // is not a version, it is "nothing observed".
            by_object == Some(None) || (by_store.is_none() && !seen.store.is_empty())
        }
        PendingWrite::Gone { uid } => match seen.object {
            None => true,
            Some((_, cached_uid)) => uid.is_some() && cached_uid != uid.as_deref(),
        },
    }
}

impl Written {
    /// Records `pending` for `key`, keeping the newer of two version records.
    pub(crate) fn record(
        &self,
        key: ObjectKey,
        pending: PendingWrite,
        seen: impl Fn(&ObjectKey) -> bool,
    ) {
        match self.pending.entry(key) {
            dashmap::Entry::Occupied(mut e) => {
                let newer = match (e.get(), &pending) {
                    (PendingWrite::AtLeast(old), PendingWrite::AtLeast(new)) => {
                        resource_version::compare(new, old).is_ok_and(|o| o.is_ge())
                            || resource_version::compare(new, old).is_err()
                    }
                    _ => true,
                };
                if newer {
                    e.insert(pending);
                }
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(pending);
            }
        }
        self.maybe_sweep(seen);
    }

    /// Drops the records `is_observed` says the store shows, once the map has grown.
    fn maybe_sweep(&self, is_observed: impl Fn(&ObjectKey) -> bool) {
        let mut at = self.sweep_at.lock();
        if self.pending.len() < *at {
            return;
        }
        let keys: Vec<ObjectKey> = self.pending.iter().map(|e| e.key().clone()).collect();
        for key in keys {
            if is_observed(&key) {
                self.pending.remove(&key);
            }
        }
        *at = (self.pending.len() * 2).max(SWEEP_AT);
        tracing::debug!(kept = self.pending.len(), "swept observed write records");
    }

    /// What `key` still waits for, given what the store shows; a record the store shows is
    /// dropped.
    pub(crate) fn check(&self, key: &ObjectKey, seen: &Seen<'_>) -> Option<PendingWrite> {
        let pending = self.pending.get(key)?.clone();
        if observed(&pending, seen) {
            self.pending
                .remove_if(key, |_, current| *current == pending);
            None
        } else {
            Some(pending)
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(object: Option<(&'a str, &'a str)>, store: &'a str) -> Seen<'a> {
        Seen {
            object: object.map(|(rv, uid)| (Some(rv), Some(uid))),
            store,
        }
    }

    #[test]
    fn a_write_is_observed_by_the_object_or_by_the_store() {
        let w = PendingWrite::AtLeast("10".into());
        assert!(!observed(&w, &seen(Some(("9", "u")), "9")));
        assert!(observed(&w, &seen(Some(("10", "u")), "9")));
        assert!(
            observed(&w, &seen(Some(("9", "u")), "11")),
            "store passed it"
        );
        assert!(!observed(&w, &seen(None, "9")));
        assert!(
            observed(&w, &seen(None, "10")),
            "gone since, store passed it"
        );
        // Not comparable: fail open.
        assert!(observed(&w, &seen(Some(("abc", "u")), "9")));
        assert!(observed(
            &PendingWrite::AtLeast("x1".into()),
            &seen(None, "5")
        ));
    }

    #[test]
    fn a_delete_is_observed_when_the_key_is_gone_or_holds_another_object() {
        let d = PendingWrite::Gone {
            uid: Some("u1".into()),
        };
        assert!(!observed(&d, &seen(Some(("5", "u1")), "5")));
        assert!(observed(&d, &seen(None, "5")));
        assert!(observed(&d, &seen(Some(("7", "u2")), "7")), "recreated");
    }

    #[test]
    fn the_newest_write_per_key_wins_and_observed_records_are_dropped() {
        let written = Written::default();
        let key = ObjectKey::new(Some("ns"), "a");
        written.record(key.clone(), PendingWrite::AtLeast("12".into()), |_| false);
        written.record(key.clone(), PendingWrite::AtLeast("11".into()), |_| false);
        assert_eq!(
            written.check(&key, &seen(Some(("11", "u")), "11")),
            Some(PendingWrite::AtLeast("12".into()))
        );
        assert_eq!(written.check(&key, &seen(Some(("12", "u")), "12")), None);
        assert!(written.is_empty());
    }

    #[test]
    fn records_nobody_asks_about_are_swept_as_the_map_grows() {
        let written = Written::default();
        for i in 0..(SWEEP_AT + 10) {
            written.record(
                ObjectKey::new(Some("ns"), format!("k{i}")),
                PendingWrite::AtLeast("1".into()),
                |_| true,
            );
        }
        assert!(
            written.pending.len() < SWEEP_AT,
            "{}",
            written.pending.len()
        );
    }
}
