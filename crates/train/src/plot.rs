//! The run's loss plot (`RUN/loss.png`), drawn from `metrics.jsonl`: one chart with the
//! losses, one with the discriminator's verdicts D(x) and D(G(z)), one with the learning rate.

use std::collections::BTreeMap;
use std::path::PathBuf;

use atelier_plot::{Chart, Series};

use crate::run::RunDir;
use crate::TrainResult;

/// Renders the charts of a run's metrics.
pub fn charts(metrics: &[serde_json::Value]) -> Vec<Chart> {
    let mut losses: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut verdict: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    let mut lr = Vec::new();
    let mut diversity = Vec::new();
    let mut kid: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    let mut structure: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for m in metrics {
        let Some(step) = m.get("step").and_then(|s| s.as_f64()) else {
            continue;
        };
        if let Some(obj) = m.get("losses").and_then(|l| l.as_object()) {
            for (k, v) in obj {
                if let Some(v) = v.as_f64() {
                    if !losses.contains_key(k) {
                        order.push(k.clone());
                    }
                    losses.entry(k.clone()).or_default().push((step, v));
                }
            }
        }
        for key in ["D_real", "D_fake"] {
            if let Some(v) = m.get(key).and_then(|v| v.as_f64()) {
                verdict.entry(key).or_default().push((step, v));
            }
        }
        if let Some(v) = m.get("lr").and_then(|v| v.as_f64()) {
            lr.push((step, v));
        }
        for key in ["kid_a2b", "kid_b2a"] {
            if let Some(v) = m.get(key).and_then(|v| v.as_f64()) {
                kid.entry(key).or_default().push((step, v * 100.0));
            }
        }
        for key in ["edge_corr_a2b", "sharpness_a2b"] {
            if let Some(v) = m.get(key).and_then(|v| v.as_f64()) {
                structure.entry(key).or_default().push((step, v));
            }
        }
        if let Some(v) = m.get("diversity").and_then(|v| v.as_f64()) {
            diversity.push((step, v));
        }
    }
    let mut charts = vec![Chart {
        title: "Losses".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        series: order
            .iter()
            .map(|k| Series {
                name: k.clone(),
                points: losses.remove(k).unwrap_or_default(),
            })
            .collect(),
        ..Chart::default()
    }];
    let mut judged: Vec<Series> = verdict
        .into_iter()
        .map(|(k, points)| Series {
            name: match k {
                "D_real" => "D(x) real".into(),
                _ => "D(G(z)) fake".into(),
            },
            points,
        })
        .collect();
    if !diversity.is_empty() {
        judged.push(Series {
            name: "sample diversity".into(),
            points: diversity,
        });
    }
    if !judged.is_empty() {
        charts.push(Chart {
            title: "Discriminator verdicts (mean output on real and generated images)".into(),
            x_label: "step".into(),
            y_label: "D".into(),
            series: judged,
            ..Chart::default()
        });
    }
    if !kid.is_empty() {
        charts.push(Chart {
            title: "KID x100 of translated held-out images vs the other domain's (lower is better)"
                .into(),
            x_label: "step".into(),
            y_label: "KID x100".into(),
            series: kid
                .into_iter()
                .map(|(k, points)| Series {
                    name: if k == "kid_a2b" { "A -> B" } else { "B -> A" }.into(),
                    points,
                })
                .collect(),
            smoothing: atelier_plot::Smoothing::Off,
            ..Chart::default()
        });
    }
    if !structure.is_empty() {
        charts.push(Chart {
            title: "Structure of the translations: edge correlation with the photo (higher keeps more), sharpness (1 = the photo's)".into(),
            x_label: "step".into(),
            y_label: "".into(),
            series: structure
                .into_iter()
                .map(|(k, points)| Series {
                    name: if k == "edge_corr_a2b" { "edge correlation" } else { "sharpness" }.into(),
                    points,
                })
                .collect(),
            smoothing: atelier_plot::Smoothing::Off,
            ..Chart::default()
        });
    }
    if !lr.is_empty() {
        charts.push(Chart {
            title: "Learning rate".into(),
            x_label: "step".into(),
            y_label: "lr".into(),
            series: vec![Series {
                name: "lr".into(),
                points: lr,
            }],
            smoothing: atelier_plot::Smoothing::Off,
            ..Chart::default()
        });
    }
    charts
}

/// The loss plot of `metrics` as PNG bytes.
pub fn plot_png(metrics: &[serde_json::Value]) -> TrainResult<Vec<u8>> {
    let charts = charts(metrics);
    let height = 300 * charts.len() as u32 + 60;
    atelier_plot::render_png(&charts, 1000, height)
        .map_err(|e| crate::TrainError::Config(format!("loss plot: {e}")))
}

/// Writes `RUN/loss.png` from `RUN/metrics.jsonl`; returns its path.
pub fn write_plot(run: &RunDir) -> TrainResult<PathBuf> {
    let png = plot_png(&run.read_metrics()?)?;
    let path = run.plot_path();
    atelier_nets::file::write_atomic(&path, &png)?;
    Ok(path)
}

/// The validation lines (`"event": "kid"`) of a run's metrics.
fn validations(metrics: &[serde_json::Value]) -> impl Iterator<Item = &serde_json::Value> {
    metrics.iter().filter(|m| m["event"] == "kid")
}

/// Runs side by side against the CPU time spent training (`cpu_s`): KID, edge correlation and
/// sharpness of their validation lines, one series per run (for comparisons at equal budget).
pub fn compare_charts(runs: &[(String, Vec<serde_json::Value>)]) -> Vec<Chart> {
    let chart = |title: &str, y: &str, key: &str, scale: f64| Chart {
        title: title.into(),
        x_label: "CPU minutes of training".into(),
        y_label: y.into(),
        series: runs
            .iter()
            .map(|(name, m)| Series {
                name: name.clone(),
                points: validations(m)
                    .filter_map(|l| Some((l["cpu_s"].as_f64()? / 60.0, l[key].as_f64()? * scale)))
                    .collect(),
            })
            .collect(),
        smoothing: atelier_plot::Smoothing::Off,
        ..Chart::default()
    };
    vec![
        chart(
            "KID x100 of the translated validation photos (lower is better)",
            "KID x100",
            "kid_a2b",
            100.0,
        ),
        chart(
            "Edge correlation with the photo (higher keeps more structure)",
            "edge corr.",
            "edge_corr_a2b",
            1.0,
        ),
        chart(
            "Sharpness (mean gradient vs the photo's; 1 = as sharp)",
            "sharpness",
            "sharpness_a2b",
            1.0,
        ),
    ]
}

/// [`compare_charts`] as PNG bytes.
pub fn compare_png(runs: &[(String, Vec<serde_json::Value>)]) -> TrainResult<Vec<u8>> {
    let charts = compare_charts(runs);
    atelier_plot::render_png(&charts, 1000, 300 * charts.len() as u32 + 60)
        .map_err(|e| crate::TrainError::Config(format!("comparison chart: {e}")))
}

/// The last validation line of `metrics` at or under `cpu_s` CPU seconds of training.
pub fn validation_at(metrics: &[serde_json::Value], cpu_s: f64) -> Option<&serde_json::Value> {
    validations(metrics)
        .filter(|l| l["cpu_s"].as_f64().is_some_and(|c| c <= cpu_s))
        .last()
}
