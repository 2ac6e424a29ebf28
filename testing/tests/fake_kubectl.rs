//! The real kubectl against the fake API server (apply, the typed `create` generators that send
//! protobuf, get, get -w, delete, api-resources) (skipped when kubectl is absent, unless
//! `REFLEX_REQUIRE_KUBECTL=1`).

use std::path::Path;
use std::process::Stdio;

use reflex_testing::FakeApiServer;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn kubectl() -> Option<&'static str> {
    let path = "/usr/bin/kubectl";
    if Path::new(path).exists() {
        return Some(path);
    }
    assert!(
        std::env::var("REFLEX_REQUIRE_KUBECTL").as_deref() != Ok("1"),
        "kubectl is required but {path} is absent"
    );
    println!("skipping: {path} is absent");
    None
}

async fn run(bin: &str, kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_creates_gets_watches_and_deletes() {
    let Some(bin) = kubectl() else { return };
    let server = FakeApiServer::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("reflex-fake-kubectl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let manifest = dir.join("cm.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\ndata:\n  k: v1\n",
    )
    .unwrap();

    run(
        bin,
        &kubeconfig,
        &["apply", "-f", manifest.to_str().unwrap()],
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(
        &run(
            bin,
            &kubeconfig,
            &["get", "configmap", "demo", "-o", "json"],
        )
        .await,
    )
    .unwrap();
    assert_eq!(json["data"]["k"], "v1");

    let mut watch = Command::new(bin)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "get",
            "configmap",
            "demo",
            "-w",
            "-o",
            "jsonpath={.data.k}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("v1"));
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\ndata:\n  k: v2\n",
    )
    .unwrap();
    run(
        bin,
        &kubeconfig,
        &["apply", "-f", manifest.to_str().unwrap()],
    )
    .await;
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("v2"));
    watch.kill().await.unwrap();

    let resources = run(bin, &kubeconfig, &["api-resources"]).await;
    for r in [
        "configmaps",
        "deployments",
        "leases",
        "customresourcedefinitions",
    ] {
        assert!(
            resources.contains(r),
            "{r} missing from api-resources:\n{resources}"
        );
    }
    // Typed generators send protobuf bodies.
    run(bin, &kubeconfig, &["create", "namespace", "team-a"]).await;
    run(
        bin,
        &kubeconfig,
        &[
            "create",
            "configmap",
            "generated",
            "-n",
            "team-a",
            "--from-literal=k=v",
        ],
    )
    .await;
    run(
        bin,
        &kubeconfig,
        &[
            "create",
            "secret",
            "generic",
            "pw",
            "-n",
            "team-a",
            "--from-literal=pw=hunter2",
        ],
    )
    .await;
    run(
        bin,
        &kubeconfig,
        &["create", "serviceaccount", "robot", "-n", "team-a"],
    )
    .await;
    let created = run(
        bin,
        &kubeconfig,
        &[
            "get",
            "namespace/team-a",
            "configmap/generated",
            "secret/pw",
            "serviceaccount/robot",
            "-n",
            "team-a",
            "-o",
            "jsonpath={range .items[*]}{.kind}/{.metadata.name} {.status.phase}{.data.k}{.data.pw}{.type}{\"\\n\"}{end}",
        ],
    )
    .await;
    assert_eq!(
        created,
        "Namespace/team-a Active\nConfigMap/generated v\nSecret/pw aHVudGVyMg==Opaque\nServiceAccount/robot \n"
    );
    run(bin, &kubeconfig, &["delete", "configmap", "demo"]).await;
    let out = Command::new(bin)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "configmap", "demo"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    std::fs::remove_dir_all(&dir).unwrap();
    server.shutdown().await;
}
