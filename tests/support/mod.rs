//! Running the built example binaries from integration tests.
//!
//! `cargo test` builds the examples before running integration tests, into
//! `<target>/<profile>/examples/<name>`; test binaries live in `<target>/<profile>/deps`, so the
//! examples are found next to them. Running the binaries (rather than `cargo run --example`) keeps
//! these tests fast and free of cargo locks.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The built example `name`, beside this test binary.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in <target>/<profile>/deps");
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "example binary {} is missing: run through `cargo test`, which builds the examples",
        path.display()
    );
    path
}

/// Runs the example with `args`, killing it after `limit` (a hung example fails the test instead
/// of hanging it). Returns its output once it exited successfully.
#[allow(
    dead_code,
    reason = "the cluster-backed tests drive examples interactively instead"
)]
pub fn run_example(name: &str, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(example_binary(name))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example starts");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("can poll the example").is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect output");
            panic!(
                "{name} did not exit within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("collect output");
    assert!(
        output.status.success(),
        "{name} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A running example whose stdout is read line by line while the test acts on the cluster.
#[allow(
    dead_code,
    reason = "only the cluster-backed tests drive examples interactively"
)]
pub struct LiveExample {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

#[allow(
    dead_code,
    reason = "only the cluster-backed tests drive examples interactively"
)]
impl LiveExample {
    /// Starts the example `name` with `args`.
    pub fn start(name: &str, args: &[&str]) -> LiveExample {
        let mut child = Command::new(example_binary(name))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the example starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        LiveExample {
            name: name.to_owned(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `pred` and returns it; fails the test after `limit` or if
    /// the example exits first, showing everything it printed.
    pub fn wait_for(&mut self, what: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(e) => {
                    let _ = self.child.kill();
                    panic!(
                        "{}: no line with {what} ({e:?}); it printed:\n{}",
                        self.name,
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// Sends SIGINT, as Ctrl-C would.
    pub fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -INT {}", self.child.id());
    }

    /// Waits (up to `limit`) for the example to exit successfully and returns every line it printed.
    pub fn finish(mut self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("can poll the example") {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push(line);
                }
                assert!(
                    status.success(),
                    "{} failed with {status}; it printed:\n{}",
                    self.name,
                    self.seen.join("\n")
                );
                return std::mem::take(&mut self.seen);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "{} did not exit within {limit:?}; it printed:\n{}",
                    self.name,
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LiveExample {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET to `addr` (`host:port`): the status code and the body.
#[allow(dead_code, reason = "only some tests scrape an example's endpoints")]
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the example");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set a read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("an HTTP response has a head and a body");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    (code, body.to_owned())
}
