//! Running `tests/python/fake_client.py` with the official Kubernetes Python client.

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

/// The system Python, where Debian's `python3-kubernetes` installs (not a pyenv `python3`).
pub const PYTHON: &str = "/usr/bin/python3";

/// The lines the script prints when every step behaved as on a cluster.
pub const EXPECTED: &[&str] = &[
    "namespace py-demo",
    "created cm-a cm-b cm-c",
    "duplicate 409 AlreadyExists",
    "list app=web cm-a,cm-b",
    "list app notin (web) cm-c",
    "watch MODIFIED cm-b from-thread",
    "watch-initial cm-a,cm-b,cm-c",
    "patch cm-a patched",
    "stale-replace 409 Conflict",
    "read-deleted 404 NotFound",
    "left cm-a,cm-b",
    "pages 3 page-0,page-1,page-2,page-3,page-4",
    "json-patch cm-a json-patched",
    "delete-precondition 409 Conflict",
    "deletecollection app=paged cm-a,cm-b",
    "deployment status 2 generation 2",
    "discovery configmaps,pods apps,coordination.k8s.io",
    "widget watch MODIFIED w1 2",
    "widget deleted 404 NotFound",
    "ok",
];

/// `Some(python)` when it can import `kubernetes`; otherwise prints why and returns `None`, or
/// fails when `REFLEX_REQUIRE_PYTHON_CLIENT=1`.
pub async fn python_client() -> Option<&'static str> {
    let required = std::env::var("REFLEX_REQUIRE_PYTHON_CLIENT").as_deref() == Ok("1");
    let probe = Command::new(PYTHON)
        .args(["-c", "import kubernetes; print(kubernetes.__version__)"])
        .output()
        .await;
    match probe {
        Ok(out) if out.status.success() => {
            println!(
                "python kubernetes client {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
            Some(PYTHON)
        }
        other => {
            let why = match other {
                Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            };
            assert!(
                !required,
                "the Python client is required (REFLEX_REQUIRE_PYTHON_CLIENT=1) but {PYTHON} cannot import kubernetes: {why}"
            );
            println!(
                "skipping: {PYTHON} cannot import kubernetes ({why}); apt-get install python3-kubernetes"
            );
            None
        }
    }
}

/// Runs the script against the cluster of `kubeconfig`; fails with its output unless it exits
/// successfully; returns its stdout lines.
pub async fn run_script(python: &str, kubeconfig: &Path) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/fake_client.py");
    let run = Command::new(python)
        .arg(script)
        .arg(kubeconfig)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the Python client script finishes within 120 s")
        .expect("running the Python client script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "script failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout.lines().map(str::to_string).collect()
}
