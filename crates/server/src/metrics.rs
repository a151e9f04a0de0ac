//! Prometheus metrics without a global recorder: counters and histograms live in the
//! server state and `/metrics` renders them in the text exposition format. Metric names are
//! constants, described once in [`DESCRIPTIONS`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

pub const HTTP_REQUESTS: &str = "atelier_http_requests_total";
pub const HTTP_SECONDS: &str = "atelier_http_request_duration_seconds";
pub const STYLIZE_SECONDS: &str = "atelier_stylize_seconds";
pub const OVERLOADED: &str = "atelier_overloaded_total";
pub const RATE_LIMITED: &str = "atelier_rate_limited_total";
pub const JOBS: &str = "atelier_jobs";

/// `(name, type, help)` of every metric.
pub const DESCRIPTIONS: &[(&str, &str, &str)] = &[
    (
        HTTP_REQUESTS,
        "counter",
        "HTTP requests by route, method and status.",
    ),
    (HTTP_SECONDS, "histogram", "HTTP request latency by route."),
    (
        STYLIZE_SECONDS,
        "histogram",
        "Time to stylize one image in POST /v1/stylize (decode to encode).",
    ),
    (
        OVERLOADED,
        "counter",
        "Requests answered 429 because every model slot was busy.",
    ),
    (
        RATE_LIMITED,
        "counter",
        "Requests answered 429 by the per-key rate limit.",
    ),
    (JOBS, "gauge", "Jobs by kind and status."),
];

const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

type Labels = Vec<(&'static str, String)>;

/// The `method` label of a request: the standard methods by name, anything else `other`.
pub fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A gauge measured at scrape time: name, labels, value.
pub type Gauge = (&'static str, Labels, f64);

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), f64>>,
    histograms: Mutex<BTreeMap<(&'static str, Labels), Histogram>>,
}

fn labels(l: &[(&'static str, &str)]) -> Labels {
    l.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn fmt_labels(l: &Labels, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

impl Metrics {
    pub fn inc(&self, name: &'static str, l: &[(&'static str, &str)]) {
        *self
            .counters
            .lock()
            .expect("metrics")
            .entry((name, labels(l)))
            .or_default() += 1.0;
    }

    pub fn observe(&self, name: &'static str, l: &[(&'static str, &str)], seconds: f64) {
        let mut h = self.histograms.lock().expect("metrics");
        let e = h.entry((name, labels(l))).or_default();
        if e.counts.is_empty() {
            e.counts = vec![0; BUCKETS.len()];
        }
        for (c, b) in e.counts.iter_mut().zip(BUCKETS) {
            if seconds <= *b {
                *c += 1;
            }
        }
        e.sum += seconds;
        e.count += 1;
    }

    /// The text exposition, with `gauges` (name, labels, value) measured at scrape time.
    pub fn render(&self, gauges: &[Gauge]) -> String {
        let mut out = String::new();
        let counters = self.counters.lock().expect("metrics");
        let hists = self.histograms.lock().expect("metrics");
        for (name, kind, help) in DESCRIPTIONS {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((n, l), v) in counters.iter() {
                if n == name {
                    let _ = writeln!(out, "{name}{} {v}", fmt_labels(l, None));
                }
            }
            for ((n, l), h) in hists.iter() {
                if n != name {
                    continue;
                }
                for (c, b) in h.counts.iter().zip(BUCKETS) {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {c}",
                        fmt_labels(l, Some(("le", b.to_string())))
                    );
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    fmt_labels(l, Some(("le", "+Inf".into()))),
                    h.count
                );
                let _ = writeln!(out, "{name}_sum{} {}", fmt_labels(l, None), h.sum);
                let _ = writeln!(out, "{name}_count{} {}", fmt_labels(l, None), h.count);
            }
            for (n, l, v) in gauges {
                if n == name {
                    let _ = writeln!(out, "{name}{} {v}", fmt_labels(l, None));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.inc(HTTP_REQUESTS, &[("route", "/healthz"), ("status", "200")]);
        m.inc(HTTP_REQUESTS, &[("route", "/healthz"), ("status", "200")]);
        m.observe(HTTP_SECONDS, &[("route", "/healthz")], 0.02);
        let t = m.render(&[(JOBS, vec![("status", "queued".into())], 3.0)]);
        assert!(
            t.contains("atelier_http_requests_total{route=\"/healthz\",status=\"200\"} 2"),
            "{t}"
        );
        assert!(
            t.contains(
                "atelier_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.025\"} 1"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "atelier_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.01\"} 0"
            ),
            "{t}"
        );
        assert!(t.contains("atelier_jobs{status=\"queued\"} 3"), "{t}");
        assert!(t.contains("# TYPE atelier_http_requests_total counter"));
    }
}
