//! Smoke tests for the examples: each one runs the built example binary in its embedded mode (no
//! cluster) with a deterministic exit condition and checks what it printed.
//!
//! The binaries are found beside the test binary (see `support`).

mod support;

use std::time::Duration;

use std::process::Command;

use support::{LiveExample, example_binary, http_get, run_example};

/// The value of a `| name | value |` row in the last metrics table printed.
fn last_table_value(stdout: &str, metric: &str) -> Option<String> {
    stdout.lines().rev().find_map(|line| {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        (cells.len() == 4 && cells[1] == metric).then(|| cells[2].to_string())
    })
}

#[test]
fn configmaps_example_prints_every_change_and_its_reconciles_end_on_the_servers_state() {
    let output = run_example("configmaps", &[], Duration::from_secs(90));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    for name in ["red", "green", "blue"] {
        // The workload starts once the informer has listed, so each creation is an add.
        assert!(
            lines.contains(&format!("added {name}").as_str()),
            "{stdout}"
        );
    }
    assert!(lines.contains(&"updated green"), "{stdout}");
    assert!(lines.contains(&"deleted blue"), "{stdout}");
    // The last reconcile of each key read the cache at the server's final state.
    let last = |key: &str| {
        lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix(&format!("reconciled {key}: ")))
            .unwrap_or_else(|| panic!("no reconcile of {key} in\n{stdout}"))
    };
    assert_eq!(last("default/red"), "1 keys");
    assert_eq!(last("default/green"), "3 keys");
    assert_eq!(last("default/blue"), "gone");
    assert!(lines.contains(&"converged"), "{stdout}");
    // The reconcile never fails, so no retry is legitimate here.
    assert!(stdout.contains(" reconciles, 0 errors"), "{stdout}");
}

#[test]
fn workqueue_demo_retries_each_key_its_planned_number_of_times_and_counts_them() {
    // 2 producers x 4 keys: key n fails n % 3 times, so 0 + 1 + 2 + 0 = 3 retries per producer.
    let output = run_example(
        "workqueue-demo",
        &[
            "--rounds",
            "1",
            "--producers",
            "2",
            "--items",
            "4",
            "--workers",
            "2",
            "--work-ms",
            "1",
            "--base-delay-ms",
            "5",
            "--interval-ms",
            "10",
        ],
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let succeeded = stdout
        .lines()
        .filter(|l| l.contains("succeeded  after"))
        .count();
    let failed = stdout
        .lines()
        .filter(|l| l.contains("failed     retry in"))
        .count();
    assert_eq!(succeeded, 8, "{stdout}");
    assert_eq!(failed, 6, "{stdout}");
    // Key 2 fails twice, so it succeeds on its third attempt.
    assert!(
        stdout.lines().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.get(2..6) == Some(&["p0-2", "3", "succeeded", "after"][..])
        }),
        "{stdout}"
    );
    assert_eq!(
        last_table_value(&stdout, "retries").as_deref(),
        Some("6"),
        "{stdout}"
    );
    // Every key once, plus once more per retry.
    assert_eq!(
        last_table_value(&stdout, "adds").as_deref(),
        Some("14"),
        "{stdout}"
    );
    assert_eq!(
        last_table_value(&stdout, "succeeded").as_deref(),
        Some("8"),
        "{stdout}"
    );
    assert_eq!(
        last_table_value(&stdout, "depth").as_deref(),
        Some("0"),
        "{stdout}"
    );
}

/// The `N claims, total ...` summary lines, in the order printed.
fn pvc_totals(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| l.contains(" claims, total "))
        .map(|l| l.split(", limit").next().unwrap_or(l).to_string())
        .collect()
}

#[test]
fn pvcwatch_reports_both_limit_crossings_and_returns_to_the_seeded_total_after_one_workload_cycle()
{
    // One workload cycle is 7 changes: two claims created, one bound, a volume grown, both new
    // claims deleted and the volume shrunk back.
    let output = run_example(
        "pvcwatch",
        &["--exit-after-events", "7", "--interval-ms", "20"],
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("NAME"), "{stdout}");
    assert!(stdout.contains("STATUS"), "{stdout}");
    assert!(stdout.contains("CAPACITY"), "{stdout}");
    assert!(stdout.contains("shop/postgres-data-0"), "{stdout}");
    assert!(stdout.contains("team-a/legacy-export"), "{stdout}");
    assert!(stdout.contains("12Gb (malformed)"), "{stdout}");
    assert!(
        stdout.contains("! team-a/legacy-export: unknown suffix"),
        "{stdout}"
    );
    assert!(stdout.contains("ADDED    team-a/burst-a"), "{stdout}");
    assert!(stdout.contains("DELETED  team-a/burst-b"), "{stdout}");
    let above = stdout.find(">>> ABOVE the limit").expect("crossed above");
    let below = stdout
        .find("<<< back BELOW the limit")
        .expect("crossed back below");
    assert!(above < below, "{stdout}");
    assert!(stdout.contains("7 changes seen"), "{stdout}");
    let totals = pvc_totals(&stdout);
    assert_eq!(totals.len(), 2, "{stdout}");
    assert_eq!(
        totals[0], totals[1],
        "one cycle ends where it started:\n{stdout}"
    );
    assert!(totals[0].starts_with("20 claims"), "{stdout}");
}

#[test]
fn pvcwatch_filters_by_namespace_and_label_selector() {
    let output = run_example(
        "pvcwatch",
        &["-n", "shop", "-l", "app=redis", "--exit-after-events", "0"],
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let totals = pvc_totals(&stdout);
    assert_eq!(
        totals.first().map(String::as_str),
        Some("5 claims, total 10Gi (5.0% of 200Gi)"),
        "{stdout}"
    );
    assert!(!stdout.contains("postgres"), "{stdout}");
}

#[test]
fn node_lister_prints_the_synced_cache_then_every_change_of_one_workload_cycle_in_order() {
    // One cycle is 9 changes: worker-4 added and given a status, worker-1 upgraded, worker-2
    // cordoned and NotReady, worker-4 deleted, worker-2 and worker-1 restored.
    let output = run_example(
        "node-lister",
        &["--exit-after-events", "9", "--interval-ms", "20"],
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("5 nodes in the cache"), "{stdout}");
    let gpu = stdout
        .lines()
        .find(|l| l.starts_with("gpu-1"))
        .expect("gpu-1 row");
    assert_eq!(
        gpu.split_whitespace().collect::<Vec<_>>(),
        ["gpu-1", "Ready", "v1.34.2", "32", "256Gi"],
        "{stdout}"
    );
    let changes: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            ["ADDED ", "UPDATED ", "DELETED "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    let expected = [
        "ADDED    worker-4",
        "UPDATED  worker-4                 status Unknown -> Ready, kubelet - -> v1.35.0",
        "UPDATED  worker-1                 kubelet v1.34.2 -> v1.35.0",
        "UPDATED  worker-2                 status Ready -> Ready,SchedulingDisabled",
        "UPDATED  worker-2                 status Ready,SchedulingDisabled -> NotReady,SchedulingDisabled",
        "DELETED  worker-4",
        "UPDATED  worker-2                 status NotReady,SchedulingDisabled -> NotReady",
        "UPDATED  worker-2                 status NotReady -> Ready",
        "UPDATED  worker-1                 kubelet v1.35.0 -> v1.34.2",
    ];
    assert_eq!(changes.len(), expected.len(), "{stdout}");
    for (line, prefix) in changes.iter().zip(expected) {
        assert!(
            line.starts_with(prefix),
            "{line:?} should start with {prefix:?}\n{stdout}"
        );
    }
    assert!(stdout.contains("9 changes seen"), "{stdout}");
}

#[test]
fn node_lister_lists_only_nodes_matching_the_label_selector() {
    let output = run_example(
        "node-lister",
        &[
            "-l",
            "node-role.kubernetes.io/control-plane",
            "--exit-after-events",
            "0",
        ],
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("1 nodes in the cache"), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("control-plane-1")),
        "{stdout}"
    );
    assert!(
        !stdout.lines().any(|l| l.starts_with("worker-")),
        "{stdout}"
    );
}

#[test]
fn dynamic_watch_discovers_resources_and_keeps_the_label_index_in_step_with_the_changes() {
    // Six workload steps, six changes: a Deployment added, scaled, moved to another team,
    // deleted, scaled back and moved back.
    let output = run_example(
        "dynamic-watch",
        &[
            "--exit-after-events",
            "6",
            "--workload-steps",
            "6",
            "--interval-ms",
            "20",
        ],
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let discovered = |name: &str, kind: &str| {
        stdout.lines().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.first() == Some(&name) && cells.last() == Some(&kind)
        })
    };
    assert!(discovered("deployments.apps", "Deployment"), "{stdout}");
    assert!(discovered("backups.demo.reflex.dev", "Backup"), "{stdout}");
    assert!(discovered("nodes", "Node"), "{stdout}");
    assert!(
        stdout.contains("watching deployments.apps (apps/v1): 6 objects cached"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  index team: payments=2 platform=1 search=3"),
        "{stdout}"
    );
    let changes: Vec<String> = stdout
        .lines()
        .filter(|l| {
            ["ADDED ", "MODIFIED ", "DELETED "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        changes,
        [
            "ADDED platform/metrics team=platform replicas=1",
            "MODIFIED shop/checkout team=payments replicas=6",
            "MODIFIED shop/catalog team=payments replicas=2 (was team=search)",
            "DELETED platform/metrics team=platform replicas=1",
            "MODIFIED shop/checkout team=payments replicas=3",
            "MODIFIED shop/catalog team=search replicas=2 (was team=payments)",
        ],
        "{stdout}"
    );
    assert!(
        stdout.contains("6 changes seen; final index team: payments=2 platform=1 search=3"),
        "{stdout}"
    );
}

#[test]
fn dynamic_watch_watches_a_custom_resource_named_by_plural_and_group() {
    let output = run_example(
        "dynamic-watch",
        &[
            "--resource",
            "backups.demo.reflex.dev",
            "--no-discovery",
            "--exit-after-events",
            "0",
        ],
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("watching backups.demo.reflex.dev (demo.reflex.dev/v1): 2 objects cached"),
        "{stdout}"
    );
    assert!(
        stdout.contains("final index team: payments=1 search=1"),
        "{stdout}"
    );
    assert!(!stdout.contains("APIVERSION"), "{stdout}");
}

#[test]
fn dynamic_watch_rejects_an_unknown_resource_with_a_typed_error() {
    let output = Command::new(example_binary("dynamic-watch"))
        .args(["--resource", "widgets.nowhere.example", "--no-discovery"])
        .output()
        .expect("the example runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the server has no resource \"widgets.nowhere.example\""),
        "{stderr}"
    );
}

/// Checks what sample-controller printed after its embedded workload converged.
fn assert_sample_controller_converged(stdout: &str) {
    for line in [
        "installed CRD foos.samplecontroller.k8s.io",
        "default/example-foo      created deployment example-foo with 1 replicas",
        "default/web              created deployment web-nginx with 2 replicas",
        "default/example-foo      scaled deployment example-foo from 1 to 3 replicas",
        "default/example-foo      status.availableReplicas = 3 (of 3)",
        "converged",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?} in\n{stdout}"
        );
    }
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("FOO "))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [["default/example-foo", "example-foo", "3", "3"]],
        "{stdout}"
    );
    // The deleted Foo's Deployment was collected, and not recreated from a stale cache.
    assert!(
        stdout
            .lines()
            .any(|l| l == "deployments in the cache: default/example-foo"),
        "{stdout}"
    );
    let events = stdout
        .lines()
        .find_map(|l| l.strip_prefix("events recorded: "))
        .expect("events summary");
    for reason in ["Created=2", "Scaled=1"] {
        assert!(events.split_whitespace().any(|e| e == reason), "{events}");
    }
    assert!(events.contains("Synced="), "{events}");
    assert!(stdout.contains("controller stopped:"), "{stdout}");
}

#[test]
fn sample_controller_creates_scales_and_reports_owned_deployments_until_converged() {
    let output = run_example(
        "sample-controller",
        &["--exit-when-converged", "--interval-ms", "150"],
        Duration::from_secs(90),
    );
    assert_sample_controller_converged(&String::from_utf8_lossy(&output.stdout));
}

#[test]
fn sample_controller_reconciles_only_after_winning_the_lease_with_leader_election() {
    let output = run_example(
        "sample-controller",
        &[
            "--leader-elect",
            "--exit-when-converged",
            "--interval-ms",
            "150",
        ],
        Duration::from_secs(90),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let campaign = stdout
        .find("campaigning for Lease default/sample-controller")
        .expect("campaigns");
    let leading = stdout
        .find("leading: starting the controller")
        .expect("leads");
    let created = stdout.find("created deployment").expect("reconciles");
    assert!(campaign < leading && leading < created, "{stdout}");
    assert_sample_controller_converged(&stdout);
}

#[test]
fn sample_controller_serves_metrics_and_readiness_of_its_controller_queue_and_informers() {
    let mut example = LiveExample::start(
        "sample-controller",
        &["--metrics-addr", "127.0.0.1:0", "--interval-ms", "150"],
    );
    let limit = Duration::from_secs(90);
    let serving = example.wait_for("the metrics address", limit, |l| {
        l.starts_with("serving /metrics")
    });
    let addr = serving
        .rsplit("http://")
        .next()
        .expect("an address")
        .to_owned();
    example.wait_for("convergence", limit, |l| l == "converged");
    let (code, readyz) = http_get(&addr, "/readyz");
    assert_eq!(code, 200, "{readyz}");
    assert!(readyz.contains("[+]foos ok"), "{readyz}");
    let value_in = |metrics: &str, series: &str| -> Option<f64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    };
    // The metrics handler is one more handler of the informer: it may see the Foo's deletion a
    // moment after the cache (and so the convergence check) did.
    let deleted =
        r#"reflex_informer_events_total{resource="foos.samplecontroller.k8s.io",event="delete"}"#;
    let scrape_until = std::time::Instant::now() + limit;
    let metrics = loop {
        let (code, metrics) = http_get(&addr, "/metrics");
        assert_eq!(code, 200);
        if value_in(&metrics, deleted) == Some(1.0) || std::time::Instant::now() > scrape_until {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let value = |series: &str| -> f64 {
        value_in(&metrics, series).unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    // Two Foos were created, scaled and deleted, and the controller converged. A reconcile may
    // fail and be retried on the way (its lister not yet holding the Deployment it just
    // created, say: creating it again is refused as AlreadyExists), so what is guaranteed is
    // that the reconciles succeeded in the end and every failure was counted as one.
    assert!(
        value(
            r#"controller_runtime_reconcile_total{controller="sample-controller",result="success"}"#
        ) >= 5.0,
        "{metrics}"
    );
    let errors =
        value(r#"controller_runtime_reconcile_errors_total{controller="sample-controller"}"#);
    let failed = value_in(
        &metrics,
        r#"controller_runtime_reconcile_total{controller="sample-controller",result="error"}"#,
    )
    .unwrap_or(0.0);
    assert_eq!(
        errors, failed,
        "each failed reconcile counted once\n{metrics}"
    );
    assert_eq!(
        value(r#"controller_runtime_max_concurrent_reconciles{controller="sample-controller"}"#),
        2.0
    );
    assert!(
        value(r#"workqueue_adds_total{name="sample-controller"}"#) >= 5.0,
        "{metrics}"
    );
    assert_eq!(
        value(r#"reflex_informer_synced{resource="foos.samplecontroller.k8s.io"}"#),
        1.0
    );
    assert_eq!(
        value(
            r#"reflex_informer_events_total{resource="foos.samplecontroller.k8s.io",event="add"}"#
        ),
        2.0
    );
    assert_eq!(
        value(
            r#"reflex_informer_events_total{resource="foos.samplecontroller.k8s.io",event="delete"}"#
        ),
        1.0
    );
    example.interrupt();
    let lines = example.finish(limit);
    assert!(
        lines.iter().any(|l| l == "interrupted"),
        "{}",
        lines.join("\n")
    );
}
