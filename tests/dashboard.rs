//! The Grafana dashboard (`deploy/grafana/reflex-dashboard.json`) against what a controller
//! serves: every metric a panel or a variable queries must be a series the sample-controller's
//! `/metrics` actually serves once it has converged, so the dashboard cannot drift from the
//! metrics' names, suffixes or labels unnoticed.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::{LiveExample, http_get};

const DASHBOARD: &str = include_str!("../deploy/grafana/reflex-dashboard.json");

/// The prefixes of the metrics Reflex exports (controller-runtime's names for the controller and
/// the workqueue, ours for the informers).
const PREFIXES: [&str; 3] = ["controller_runtime_", "workqueue_", "reflex_informer_"];

/// Every query string of the dashboard: panel targets and variable queries.
fn queries(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(
                target["expr"]
                    .as_str()
                    .expect("a target has an expr")
                    .to_owned(),
            );
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(q) = var["query"]["query"].as_str() {
            out.push(q.to_owned());
        }
    }
    out
}

/// The metric names a PromQL expression mentions (identifiers with one of [`PREFIXES`]).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        let ident = &tail[..end];
        if PREFIXES.iter().any(|p| ident.starts_with(p)) {
            names.insert(ident.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The sample names of an exposition (`name{labels} value` or `name value`).
fn served(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn metric_names_are_read_out_of_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, name) (rate(workqueue_queue_duration_seconds_bucket{name=~"$controller"}[$__rate_interval])))"#,
    );
    assert_eq!(
        names,
        BTreeSet::from(["workqueue_queue_duration_seconds_bucket".to_owned()])
    );
    assert_eq!(
        served("# HELP x y\nworkqueue_depth{name=\"a\"} 0\nup 1\n"),
        BTreeSet::from(["workqueue_depth".to_owned(), "up".to_owned()])
    );
}

#[test]
fn every_dashboard_query_names_a_metric_the_sample_controller_serves() {
    let dashboard: serde_json::Value =
        serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let queries = queries(&dashboard);
    let wanted: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    // What the issue asks the dashboard to show, each by at least one metric.
    for needed in [
        "controller_runtime_reconcile_total",
        "controller_runtime_reconcile_time_seconds_bucket",
        "workqueue_depth",
        "workqueue_queue_duration_seconds_bucket",
        "workqueue_retries_total",
        "workqueue_longest_running_processor_seconds",
        "reflex_informer_events_total",
        "reflex_informer_relists_total",
        "reflex_informer_sync_state",
        "reflex_informer_lag_seconds_bucket",
    ] {
        assert!(wanted.contains(needed), "the dashboard shows no {needed}");
    }
    for q in &queries {
        assert!(
            !metric_names(q).is_empty(),
            "query names no Reflex metric: {q}"
        );
    }

    let mut example = LiveExample::start(
        "sample-controller",
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--interval-ms",
            "150",
            "--lag-probe-ms",
            "100",
        ],
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
    // Lag samples arrive with the probe's rounds after the sync: scrape until every wanted
    // series is served or the limit passes (then the assertion names what is missing).
    let until = std::time::Instant::now() + limit;
    let missing = loop {
        let (code, metrics) = http_get(&addr, "/metrics");
        assert_eq!(code, 200, "{metrics}");
        let served = served(&metrics);
        let missing: Vec<&String> = wanted.iter().filter(|m| !served.contains(*m)).collect();
        if missing.is_empty() || std::time::Instant::now() > until {
            break missing.into_iter().cloned().collect::<Vec<_>>();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    example.interrupt();
    example.finish(limit);
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the sample-controller does not serve: {missing:?}"
    );
}
