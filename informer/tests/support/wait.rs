//! Waiting for what a test cannot await directly (a store catching up with the server), shared
//! by the integration tests (`#[path]`-included). A bound on how long, not a timing claim: the
//! condition is what the test asserts.

use std::time::Duration;

/// Polls `cond` every 10 ms for up to 60 s; panics naming `what` if it never holds.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..6000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}
