//! The official Kubernetes Python client against the fake API server: the script
//! `tests/python/fake_client.py` creates, lists with a label selector, list-then-watches, patches,
//! replaces with a stale resourceVersion (409), deletes and reads a 404, and prints one line per
//! step. Skipped with a printed reason when `/usr/bin/python3` cannot import `kubernetes`
//! (Debian's `python3-kubernetes`), unless `REFLEX_REQUIRE_PYTHON_CLIENT=1`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reflex_testing::FakeApiServer;
use tokio::process::Command;

const PYTHON: &str = "/usr/bin/python3";

async fn python_client() -> Option<&'static str> {
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

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/fake_client.py")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_client_creates_lists_watches_patches_and_sees_409_and_404() {
    let Some(python) = python_client().await else {
        return;
    };
    let server = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();

    let run = Command::new(python)
        .arg(script())
        .arg(&kubeconfig)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the Python client script finishes within 120 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "script failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
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
            "ok",
        ],
        "stderr:\n{stderr}"
    );
    // What the script did is visible to every other client.
    let faults = server.faults();
    assert!(faults.request_count("watch", "configmaps") >= 2);
    assert_eq!(faults.request_count("delete", "configmaps"), 1);
    server.shutdown().await;
}
