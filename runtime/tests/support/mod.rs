//! Helpers shared by the runtime's tests against the fake API server.

use std::future::Future;
use std::time::{Duration, Instant};

/// Upper bound for an asynchronous condition that must come true; reached only when a test fails.
pub const POLL_LIMIT: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Polls `check` until it returns `Some`, at most [`POLL_LIMIT`]; panics with `what` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + POLL_LIMIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}
