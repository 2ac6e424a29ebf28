//! The printed table, `results.json` and `chart.svg`.
//!
//! Ratios are "Reflex / this contender" for every figure, so they read directly against issue
//! 8's targets: a time or memory ratio below 1 and a throughput ratio above 1 favour Reflex.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde_json::{Value, json};

use crate::contenders::{Better, Workload};
use crate::harness::{Row, Sizes};

/// The machine, for the report.
pub fn machine() -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    json!({"cpus": cpus, "cpu_model": model, "memory_gib": (mem_kib as f64 / 1048576.0 * 10.0).round() / 10.0})
}

fn reference(rows: &[Row], workload: Workload) -> Option<&Row> {
    rows.iter()
        .find(|r| r.contender.workload == workload && r.contender.reference)
}

fn value(row: &Row, key: &str) -> Option<f64> {
    row.outcome
        .as_ref()
        .ok()
        .and_then(|o| o.figures.get(key).copied())
}

fn format_value(v: f64) -> String {
    if v >= 100_000.0 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1_000.0 {
        format!("{:.0}", v)
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The one readable table.
pub fn table(rows: &[Row], sizes: &Sizes, machine: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nReflex side by side ({} mode): {} Pods in {} namespaces; steady state: {} updates at {}/s over {} Pods; reads: {} ms per phase, writer at {}/s; workqueue: median of {} rounds, scale rows {} keys, median of {} rounds; sync-envtest: {} Pods in kube-apiserver {}",
        if sizes.quick { "quick" } else { "full" },
        sizes.pods,
        sizes.namespaces,
        sizes.events,
        sizes.rate,
        sizes.steady_pods,
        sizes.read_ms,
        sizes.write_rate,
        sizes.rounds,
        sizes.scale_keys,
        sizes.scale_rounds,
        sizes.envtest_pods,
        reflex_testing::envtest::version(),
    );
    let _ = writeln!(
        out,
        "machine: {} CPUs, {}, {} GiB. Ratios are Reflex / contender (time, memory: < 1 favours Reflex; throughput: > 1 does).",
        machine["cpus"],
        machine["cpu_model"].as_str().unwrap_or(""),
        machine["memory_gib"]
    );
    for workload in Workload::ALL {
        let these: Vec<&Row> = rows
            .iter()
            .filter(|r| r.contender.workload == workload)
            .collect();
        if these.is_empty() {
            continue;
        }
        let columns = workload.columns();
        let reference = reference(rows, workload);
        let name_width = these
            .iter()
            .map(|r| r.contender.name.len())
            .max()
            .unwrap_or(10)
            .max(10);
        let _ = writeln!(out);
        let mut head = format!("{:<15} {:<name_width$}", "workload", "contender");
        for c in columns {
            let _ = write!(head, " | {:>18} {:>7}", c.label, "ratio");
        }
        let _ = writeln!(out, "{head}");
        let _ = writeln!(out, "{}", "-".repeat(head.len()));
        for row in these {
            let mut line = format!(
                "{:<15} {:<name_width$}",
                workload.name(),
                row.contender.name
            );
            match &row.outcome {
                Err(e) => {
                    let _ = write!(line, " | {e}");
                }
                Ok(_) => {
                    for c in columns {
                        let v = value(row, c.key);
                        let r = reference.and_then(|r| value(r, c.key));
                        let ratio = match (r, v) {
                            (Some(r), Some(v)) if v > 0.0 => format!("{:.2}x", r / v),
                            _ => "-".into(),
                        };
                        let shown = v.map(format_value).unwrap_or_else(|| "n/a".into());
                        let _ = write!(line, " | {shown:>18} {ratio:>7}");
                    }
                }
            }
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

/// The results document written to `results.json`.
pub fn json(rows: &[Row], sizes: &Sizes, machine: &Value) -> Value {
    let results: Vec<Value> = rows
        .iter()
        .map(|row| {
            let base = json!({
                "workload": row.contender.workload.name(),
                "contender": row.contender.name,
                "reference": row.contender.reference,
                "about": row.contender.about,
            });
            let mut base = base;
            match &row.outcome {
                Ok(o) => {
                    base["figures"] = json!(o.figures);
                    base["peak_rss_kib"] = json!(o.peak_rss_kib);
                    base["rss_at_result_kib"] = json!(o.rss_kib);
                    let ratios: serde_json::Map<String, Value> = row
                        .contender
                        .workload
                        .columns()
                        .iter()
                        .filter_map(|c| {
                            let r = reference(rows, row.contender.workload)
                                .and_then(|r| value(r, c.key))?;
                            let v = value(row, c.key).filter(|v| *v > 0.0)?;
                            Some((c.key.to_string(), json!(r / v)))
                        })
                        .collect();
                    base["reflex_over_this"] = Value::Object(ratios);
                    let better: serde_json::Map<String, Value> = row
                        .contender
                        .workload
                        .columns()
                        .iter()
                        .map(|c| {
                            let b = match c.better {
                                Better::Higher => "higher",
                                Better::Lower => "lower",
                            };
                            (c.key.to_string(), json!(b))
                        })
                        .collect();
                    base["better"] = Value::Object(better);
                }
                Err(e) => base["error"] = json!(e),
            }
            base
        })
        .collect();
    json!({"machine": machine, "sizes": sizes, "results": results})
}

/// Horizontal bars of time to synced and peak memory by contender (the initial sync), and of
/// the other workloads' first figure, into an SVG file. Text is SVG `<text>`: no fonts needed.
pub fn chart(rows: &[Row], sizes: &Sizes, path: &Path) -> Result<(), String> {
    let panels: Vec<(String, Vec<(String, f64)>)> = [
        (
            Workload::Sync,
            "synced_s",
            "Initial sync: time to synced (s)",
        ),
        (
            Workload::Sync,
            "peak_rss_mib",
            "Initial sync: peak RSS (MiB)",
        ),
        (Workload::Steady, "p99_ms", "Steady state: p99 latency (ms)"),
        (
            Workload::Workqueue,
            "w2_adds_per_s",
            "Workqueue: adds/s, 2 workers",
        ),
        (
            Workload::Reads,
            "list_ns_per_s",
            "Cache: list by namespace/s",
        ),
        (Workload::Reads, "get_per_s", "Cache: get/s"),
    ]
    .into_iter()
    .map(|(w, key, title)| {
        let bars: Vec<(String, f64)> = rows
            .iter()
            .filter(|r| r.contender.workload == w)
            .filter_map(|r| Some((r.contender.name.to_string(), value(r, key)?)))
            .collect();
        (title.to_string(), bars)
    })
    .filter(|(_, bars)| !bars.is_empty())
    .collect();
    let height = 60
        + panels
            .iter()
            .map(|(_, b)| 50 + 26 * b.len() as u32)
            .sum::<u32>();
    let root = SVGBackend::new(path, (1000, height.max(120))).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let title = format!(
        "Reflex, kube-runtime, client-go: {} Pods ({} mode)",
        sizes.pods,
        if sizes.quick { "quick" } else { "full" }
    );
    root.draw(&Text::new(
        title,
        (20, 15),
        ("sans-serif", 22).into_font().color(&BLACK),
    ))
    .map_err(|e| e.to_string())?;
    let mut top = 60_i32;
    for (title, bars) in panels {
        let h = 50 + 26 * bars.len() as i32;
        let area = root.clone().shrink((0, top), (1000, h));
        top += h;
        draw_panel(&area, &title, &bars).map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    bars: &[(String, f64)],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let max = bars.iter().map(|b| b.1).fold(0.0_f64, f64::max).max(1e-9);
    let label_w = 330_i32;
    let bar_w = 560.0_f64;
    area.draw(&Text::new(
        title.to_string(),
        (20, 8),
        ("sans-serif", 17).into_font().color(&BLACK),
    ))?;
    for (i, (name, v)) in bars.iter().enumerate() {
        let y = 36 + 26 * i as i32;
        let color = if name.starts_with("reflex") {
            RGBColor(0x2b, 0x6c, 0xb0)
        } else if name.starts_with("kube-runtime") {
            RGBColor(0xd9, 0x7a, 0x1f)
        } else if name.starts_with("client-go") {
            RGBColor(0x3a, 0x9a, 0x4a)
        } else {
            RGBColor(0x99, 0x99, 0x99)
        };
        area.draw(&Text::new(
            name.clone(),
            (20, y + 3),
            ("sans-serif", 14).into_font().color(&BLACK),
        ))?;
        let w = ((v / max) * bar_w).max(1.0) as i32;
        area.draw(&Rectangle::new(
            [(label_w, y), (label_w + w, y + 18)],
            color.filled(),
        ))?;
        area.draw(&Text::new(
            format_value(*v),
            (label_w + w + 6, y + 3),
            ("sans-serif", 14).into_font().color(&BLACK),
        ))?;
    }
    Ok(())
}
