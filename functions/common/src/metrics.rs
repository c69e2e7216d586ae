//! A small Prometheus registry: counters, gauges and latency histograms in
//! the text exposition format. Served on `METRICS_PORT` (see [`crate::serve`]),
//! never on the public port, so the router cannot expose it.
//!
//! Series are created on first use and live for the process; label values
//! come from matched route templates and status codes, so they stay few.
//! On Lambda, where nothing scrapes a port, [`emf`] prints the same series
//! as CloudWatch embedded-metric-format records.

pub mod emf;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn add(&self, v: i64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Observations no slower than the bucket bound `le` (seconds); `None`
    /// if `le` is not one of the bucket bounds.
    pub fn count_at_most(&self, le: f64) -> Option<u64> {
        let i = BUCKETS.iter().position(|b| (*b - le).abs() < 1e-12)?;
        // Buckets hold their own observations only; sum up to `le`.
        Some(
            self.buckets[..=i]
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .sum(),
        )
    }

    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

enum Series {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    Histogram(Arc<Histogram>),
}

/// Keyed by `name{labels}`; a BTreeMap keeps the exposition stable and grouped.
static REGISTRY: LazyLock<RwLock<BTreeMap<String, Series>>> = LazyLock::new(Default::default);

fn series<T>(
    key: String,
    pick: impl Fn(&Series) -> Option<Arc<T>>,
    make: impl FnOnce(Arc<T>) -> Series,
) -> Arc<T>
where
    T: Default,
{
    if let Ok(map) = REGISTRY.read() {
        if let Some(found) = map.get(&key).and_then(&pick) {
            return found;
        }
    }
    let mut map = match REGISTRY.write() {
        Ok(map) => map,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(found) = map.get(&key).and_then(&pick) {
        return found;
    }
    let fresh = Arc::new(T::default());
    map.insert(key, make(fresh.clone()));
    fresh
}

/// A counter such as `holds_taken_total` or `name{label="v"}`.
pub fn counter(key: impl Into<String>) -> Arc<Counter> {
    series(
        key.into(),
        |s| match s {
            Series::Counter(c) => Some(c.clone()),
            _ => None,
        },
        Series::Counter,
    )
}

pub fn gauge(key: impl Into<String>) -> Arc<Gauge> {
    series(
        key.into(),
        |s| match s {
            Series::Gauge(g) => Some(g.clone()),
            _ => None,
        },
        Series::Gauge,
    )
}

pub fn histogram(key: impl Into<String>) -> Arc<Histogram> {
    series(
        key.into(),
        |s| match s {
            Series::Histogram(h) => Some(h.clone()),
            _ => None,
        },
        Series::Histogram,
    )
}

/// Request count by route and status, and latency by route; and apart, the
/// latency of rejections (429, 503), which must stay fast under overload.
pub fn observe_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    if status == 429 || status == 503 {
        histogram(format!(
            "http_rejection_duration_seconds{{method=\"{method}\",route=\"{route}\"}}"
        ))
        .observe(elapsed);
    }
    counter(format!(
        "http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}"
    ))
    .inc();
    histogram(format!(
        "http_request_duration_seconds{{method=\"{method}\",route=\"{route}\"}}"
    ))
    .observe(elapsed);
}

/// Splits `name{labels}` into its name and its label list (without braces).
fn split_key(key: &str) -> (&str, &str) {
    match key.split_once('{') {
        Some((name, rest)) => (name, rest.trim_end_matches('}')),
        None => (key, ""),
    }
}

fn with_label(labels: &str, extra: &str) -> String {
    if labels.is_empty() {
        format!("{{{extra}}}")
    } else {
        format!("{{{labels},{extra}}}")
    }
}

/// The whole registry in Prometheus' text format.
pub fn render() -> String {
    let map = match REGISTRY.read() {
        Ok(map) => map,
        Err(poisoned) => poisoned.into_inner(),
    };
    let mut out = String::new();
    let mut last_name = String::new();
    for (key, series) in map.iter() {
        let (name, labels) = split_key(key);
        if name != last_name {
            let kind = match series {
                Series::Counter(_) => "counter",
                Series::Gauge(_) => "gauge",
                Series::Histogram(_) => "histogram",
            };
            let _ = writeln!(out, "# TYPE {name} {kind}");
            last_name = name.to_owned();
        }
        match series {
            Series::Counter(c) => {
                let _ = writeln!(out, "{key} {}", c.get());
            }
            Series::Gauge(g) => {
                let _ = writeln!(out, "{key} {}", g.get());
            }
            Series::Histogram(h) => {
                let mut cumulative = 0;
                for (bound, bucket) in BUCKETS.iter().zip(&h.buckets) {
                    cumulative += bucket.load(Ordering::Relaxed);
                    let le = with_label(labels, &format!("le=\"{bound}\""));
                    let _ = writeln!(out, "{name}_bucket{le} {cumulative}");
                }
                let count = h.count.load(Ordering::Relaxed);
                let inf = with_label(labels, "le=\"+Inf\"");
                let _ = writeln!(out, "{name}_bucket{inf} {count}");
                let plain = if labels.is_empty() {
                    String::new()
                } else {
                    format!("{{{labels}}}")
                };
                let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
                let _ = writeln!(out, "{name}_sum{plain} {sum}");
                let _ = writeln!(out, "{name}_count{plain} {count}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_cumulative_histograms() {
        counter("test_things_total").add(3);
        gauge("test_queue_depth").set(7);
        observe_request("GET", "/t", 200, Duration::from_millis(3));
        observe_request("GET", "/t", 200, Duration::from_millis(30));
        let text = render();
        assert!(text.contains("test_things_total 3"));
        assert!(text.contains("test_queue_depth 7"));
        assert!(text.contains("http_requests_total{method=\"GET\",route=\"/t\",status=\"200\"} 2"));
        assert!(text.contains(
            "http_request_duration_seconds_bucket{method=\"GET\",route=\"/t\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "http_request_duration_seconds_bucket{method=\"GET\",route=\"/t\",le=\"0.05\"} 2"
        ));
        assert!(text.contains("http_request_duration_seconds_count{method=\"GET\",route=\"/t\"} 2"));
        assert!(text.contains("# TYPE http_request_duration_seconds histogram"));
    }
}
