//! How the harness and a contender process talk, the same for the Rust contenders and the Go
//! peer, so that every contender's peak memory is read from the OS in the same way.
//!
//! The child writes lines to stdout:
//! - `READY` when a workload needs the harness to act (the steady-state workload: the informer
//!   has synced, the harness may start writing; Reflex's sync contenders: synced, the harness
//!   expires the server's history so that the informer relists),
//! - `RESULT {json}` with its figures (an object of name -> number),
//! - `ERROR message` when it failed.
//!
//! After `RESULT` the child blocks reading stdin until EOF. Meanwhile the harness reads the
//! child's `VmHWM` (peak resident set) from `/proc/<pid>/status`, then closes stdin and the child
//! exits. Anything else on stdout is ignored (and shown with `--verbose`).

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A contender's figures: name -> value (units are in the names: `_s`, `_ms`, `_per_s`, `_mib`).
pub type Figures = BTreeMap<String, f64>;

/// Errors of running one contender process.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The child could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The child reported an error.
    #[error("contender failed: {0}")]
    Failed(String),
    /// The child exited or closed stdout without a result.
    #[error("contender ended without a result (exit status {status})")]
    NoResult {
        /// Its exit status, as text.
        status: String,
    },
    /// The child's result line was not a JSON object of numbers.
    #[error("contender printed a malformed result {line:?}: {source}")]
    Malformed {
        /// The line.
        line: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The child gave no result within the bound.
    #[error("contender gave no result within {0:?}")]
    Timeout(Duration),
    /// Reading `/proc/<pid>/status` failed.
    #[error("reading peak memory of pid {pid}: {reason}")]
    PeakMemory {
        /// The process.
        pid: u32,
        /// Why.
        reason: String,
    },
}

/// What one contender process produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Figures reported by the contender.
    pub figures: Figures,
    /// Peak resident set (`VmHWM`) read by the harness, in KiB.
    pub peak_rss_kib: u64,
    /// Resident set (`VmRSS`) when the result was reported, in KiB.
    pub rss_kib: u64,
}

enum Line {
    Ready,
    Result(String),
    Error(String),
    Closed,
}

/// Runs `cmd` as a contender: waits for its `RESULT` (calling `on_ready` once if it prints
/// `READY`), reads its peak RSS, closes its stdin and reaps it.
pub fn run_child(
    mut cmd: Command,
    timeout: Duration,
    verbose: bool,
    mut on_ready: impl FnMut(),
) -> Result<Outcome, ProtocolError> {
    let program = format!("{cmd:?}");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    if !verbose {
        cmd.stderr(Stdio::null());
    }
    let mut child = cmd.spawn().map_err(|source| ProtocolError::Spawn {
        program: program.clone(),
        source,
    })?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let (tx, rx) = mpsc::channel();
    // A reader thread, so that the harness can bound the wait.
    let reader = std::thread::spawn(move || {
        let Some(stdout) = stdout else {
            let _ = tx.send(Line::Closed);
            return;
        };
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let msg = if line == "READY" {
                Line::Ready
            } else if let Some(rest) = line.strip_prefix("RESULT ") {
                Line::Result(rest.to_string())
            } else if let Some(rest) = line.strip_prefix("ERROR ") {
                Line::Error(rest.to_string())
            } else {
                if verbose {
                    eprintln!("  | {line}");
                }
                continue;
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
        let _ = tx.send(Line::Closed);
    });
    let outcome = wait_result(&mut child, &rx, timeout, &mut on_ready);
    let outcome = outcome.and_then(|figures| {
        let pid = child.id();
        Ok(Outcome {
            figures,
            peak_rss_kib: status_kib(pid, "VmHWM:")?,
            rss_kib: status_kib(pid, "VmRSS:")?,
        })
    });
    finish(child, stdin, outcome.is_err());
    let _ = reader.join();
    outcome
}

fn wait_result(
    child: &mut Child,
    rx: &mpsc::Receiver<Line>,
    timeout: Duration,
    on_ready: &mut impl FnMut(),
) -> Result<Figures, ProtocolError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(Line::Ready) => on_ready(),
            Ok(Line::Result(json)) => {
                return serde_json::from_str(&json)
                    .map_err(|source| ProtocolError::Malformed { line: json, source });
            }
            Ok(Line::Error(e)) => return Err(ProtocolError::Failed(e)),
            Ok(Line::Closed) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child
                    .wait()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                return Err(ProtocolError::NoResult { status });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => return Err(ProtocolError::Timeout(timeout)),
        }
    }
}

/// Closes the child's stdin (its signal to exit) and reaps it; a child that failed is killed.
fn finish(mut child: Child, stdin: Option<ChildStdin>, kill: bool) {
    drop(stdin);
    if kill {
        let _ = child.kill();
    }
    for _ in 0..200 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Ten seconds after EOF on its stdin it is still there: end it.
    let _ = child.kill();
    let _ = child.wait();
}

/// A `/proc/<pid>/status` field of a live process (`VmHWM:`, `VmRSS:`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Result<u64, ProtocolError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| ProtocolError::PeakMemory {
        pid,
        reason: e.to_string(),
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| ProtocolError::PeakMemory {
            pid,
            reason: format!("no {field} line"),
        })
}

/// Child side: tells the harness to act (see the module docs).
pub fn ready() {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "READY");
    let _ = out.flush();
}

/// Child side: prints the result, then blocks until the harness closes stdin.
pub fn report(result: Result<Figures, String>) {
    {
        let mut out = std::io::stdout().lock();
        match &result {
            Ok(figures) => {
                let json = serde_json::to_string(figures).unwrap_or_else(|_| "{}".into());
                let _ = writeln!(out, "RESULT {json}");
            }
            Err(e) => {
                let _ = writeln!(out, "ERROR {}", e.replace('\n', " "));
            }
        }
        let _ = out.flush();
    }
    let mut sink = Vec::new();
    let _ = std::io::stdin().lock().read_to_end(&mut sink);
}
