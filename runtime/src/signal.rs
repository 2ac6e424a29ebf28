//! Turning SIGINT and SIGTERM into a [`CancellationToken`].
//!
//! A controller shuts down gracefully when Kubernetes asks it to: the kubelet sends SIGTERM, waits
//! `terminationGracePeriodSeconds` and only then kills. Everything in Reflex that runs in the
//! background (informers, workers, the leader elector, the health server, the event recorder) stops on
//! a [`CancellationToken`], so one token cancelled on the first signal is all a binary needs:
//!
//! ```no_run
//! # async fn doc() -> std::io::Result<()> {
//! let shutdown = reflex_runtime::signal::shutdown_token()?;
//! // hand `shutdown.clone()` (or `child_token()`s) to every task, then:
//! shutdown.cancelled().await;
//! # Ok(())
//! # }
//! ```
//!
//! A second signal is not handled specially: after the first one the handler task has exited, so a
//! second SIGINT gets the default action again (terminate), which is what an impatient operator at a
//! terminal expects.

use tokio_util::sync::CancellationToken;

/// Completes when the process receives SIGINT (Ctrl-C) or, on Unix, SIGTERM.
///
/// The handlers are installed when this function is first polled. Fails when a handler cannot be
/// installed.
pub async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        tracing::info!(signal = "ctrl-c", "shutdown requested");
        Ok(())
    }
}

/// Returns a token that is cancelled on the first SIGINT or SIGTERM.
///
/// The handlers are installed before this returns (so a signal arriving right after is not lost);
/// a task owned by the token waits for the signal and exits when the token is cancelled by anyone.
/// Must be called inside a tokio runtime.
pub fn shutdown_token() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let t = token.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
                _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
                _ = t.cancelled() => return,
            }
            t.cancel();
        });
    }
    #[cfg(not(unix))]
    {
        let t = token.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = tokio::signal::ctrl_c() => if r.is_ok() { t.cancel() },
                _ = t.cancelled() => {}
            }
        });
    }
    Ok(token)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn raise(sig: &str) {
        let status = std::process::Command::new("kill")
            .args([sig, &std::process::id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    // Both signals are exercised in one test: tests run as threads of one process, so a signal
    // sent from two tests at once would reach whichever handler is installed.
    #[tokio::test]
    async fn token_is_cancelled_by_sigterm_and_by_sigint() {
        for sig in ["-TERM", "-INT"] {
            let token = shutdown_token().unwrap();
            assert!(!token.is_cancelled());
            raise(sig);
            tokio::time::timeout(std::time::Duration::from_secs(30), token.cancelled())
                .await
                .unwrap_or_else(|_| panic!("token not cancelled by {sig}"));
        }
    }
}
