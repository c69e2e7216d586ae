//! The registry in CloudWatch's embedded metric format (EMF), for Lambda.
//!
//! On Lambda nothing scrapes `METRICS_PORT`; instead a function prints the
//! same series as EMF records, JSON lines on stdout that CloudWatch Logs
//! turns into metrics (<https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>).
//!
//! When: at the end of an invocation, before its response is handed back
//! (`serve` wraps the router), and at most once per
//! `METRICS_EMF_INTERVAL_SECS` (default 10). Lambda freezes the process
//! between invocations, so a background timer would fire late or never; the
//! end of an invocation is the last moment output is sure to be shipped. The
//! first invocation always flushes, so a cold start shows up at once; what an
//! instance counted after its last flush is lost when Lambda retires it
//! (at most one interval's worth).
//!
//! What: one record per label set (EMF takes one value per metric name per
//! record, and dimensions are the record's own members), with the labels
//! and `function` as dimensions. Counters and histograms carry what changed
//! since the previous flush (CloudWatch adds records up); gauges their
//! current value. A histogram becomes EMF's `Values`/`Counts` pair: each
//! bucket's upper bound with the observations that fell in it (those above
//! the last bound count under it). Series that did not change are left out.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{split_key, Series, BUCKETS, REGISTRY};

/// The CloudWatch namespace unless `METRICS_EMF_NAMESPACE` names another.
pub const DEFAULT_NAMESPACE: &str = "FlashSale";

/// What the previous flush saw of a counter or histogram.
#[derive(Clone, Default)]
struct Seen {
    value: u64,
    buckets: Vec<u64>,
}

/// Flush state: last values and when.
#[derive(Default)]
pub struct Emitter {
    seen: HashMap<String, Seen>,
    last_flush: Option<Instant>,
}

/// Whether EMF output is on under the Lambda runtime (the only place
/// `serve` asks): yes unless `METRICS_EMF` is `0`, `false` or `off`.
pub fn enabled() -> bool {
    crate::config::var("METRICS_EMF")
        .is_none_or(|v| !matches!(v.to_ascii_lowercase().as_str(), "0" | "false" | "off"))
}

fn interval() -> Duration {
    Duration::from_secs(crate::config::parsed_or("METRICS_EMF_INTERVAL_SECS", 10u64).unwrap_or(10))
}

fn function_name() -> String {
    crate::config::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|| "flashsale".to_owned())
}

fn namespace() -> String {
    crate::config::var("METRICS_EMF_NAMESPACE").unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
}

static EMITTER: LazyLock<Mutex<Emitter>> = LazyLock::new(Default::default);

/// Called at the end of every invocation: prints the records if the
/// interval has passed since the last flush (or there was none).
pub fn after_invocation() {
    let mut emitter = match EMITTER.lock() {
        Ok(e) => e,
        Err(poisoned) => poisoned.into_inner(),
    };
    let now = Instant::now();
    if emitter
        .last_flush
        .is_some_and(|last| now.duration_since(last) < interval())
    {
        return;
    }
    emitter.last_flush = Some(now);
    let records = emitter.records(&namespace(), &function_name(), unix_millis());
    let mut out = std::io::stdout().lock();
    for record in records {
        // One line per record; a failed write (closed stdout) loses metrics,
        // never the request.
        let _ = writeln!(out, "{record}");
    }
    let _ = out.flush();
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `method="GET",route="/x"` → [("method","GET"), ("route","/x")].
fn parse_labels(labels: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = labels;
    while let Some((name, after)) = rest.split_once("=\"") {
        // Label values are route templates and status codes: no quotes inside.
        let Some((value, tail)) = after.split_once('"') else {
            break;
        };
        out.push((name.trim_start_matches(',').to_owned(), value.to_owned()));
        rest = tail;
    }
    out
}

fn unit_of(name: &str) -> &'static str {
    if name.ends_with("_seconds") {
        "Seconds"
    } else if name.ends_with("_total") {
        "Count"
    } else {
        "None"
    }
}

impl Emitter {
    /// The EMF records for everything that changed since the last call.
    pub fn records(&mut self, namespace: &str, function: &str, timestamp_ms: u64) -> Vec<Value> {
        // label set → (metric name → value)
        let mut by_labels: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
        let map = match REGISTRY.read() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        for (key, series) in map.iter() {
            let (name, labels) = split_key(key);
            let value = match series {
                Series::Counter(c) => {
                    let now = c.get();
                    let seen = self.seen.entry(key.clone()).or_default();
                    let delta = now.saturating_sub(seen.value);
                    seen.value = now;
                    if delta == 0 {
                        continue;
                    }
                    json!(delta)
                }
                Series::Gauge(g) => json!(g.get()),
                Series::Histogram(h) => {
                    let seen = self.seen.entry(key.clone()).or_default();
                    seen.buckets.resize(BUCKETS.len(), 0);
                    let count = h.count.load(Ordering::Relaxed);
                    let new_count = count.saturating_sub(seen.value);
                    seen.value = count;
                    let mut counts: Vec<u64> = Vec::with_capacity(BUCKETS.len());
                    for (i, bucket) in h.buckets.iter().enumerate() {
                        let now = bucket.load(Ordering::Relaxed);
                        counts.push(now.saturating_sub(seen.buckets[i]));
                        seen.buckets[i] = now;
                    }
                    if new_count == 0 {
                        continue;
                    }
                    // Observations above the last bound are in the count only.
                    let bucketed: u64 = counts.iter().sum();
                    if let Some(last) = counts.last_mut() {
                        *last += new_count.saturating_sub(bucketed);
                    }
                    let (values, counts): (Vec<f64>, Vec<u64>) = BUCKETS
                        .iter()
                        .zip(counts)
                        .filter(|(_, n)| *n > 0)
                        .map(|(b, n)| (*b, n))
                        .unzip();
                    json!({ "Values": values, "Counts": counts })
                }
            };
            by_labels
                .entry(labels.to_owned())
                .or_default()
                .push((name.to_owned(), value));
        }
        by_labels
            .into_iter()
            .map(|(labels, metrics)| {
                let labels = parse_labels(&labels);
                let mut record = Map::new();
                let mut dimensions = vec![json!("function")];
                record.insert("function".into(), json!(function));
                for (name, value) in &labels {
                    dimensions.push(json!(name));
                    record.insert(name.clone(), json!(value));
                }
                let definitions: Vec<Value> = metrics
                    .iter()
                    .map(|(name, _)| json!({ "Name": name, "Unit": unit_of(name) }))
                    .collect();
                for (name, value) in metrics {
                    record.insert(name, value);
                }
                record.insert(
                    "_aws".into(),
                    json!({
                        "Timestamp": timestamp_ms,
                        "CloudWatchMetrics": [{
                            "Namespace": namespace,
                            "Dimensions": [dimensions],
                            "Metrics": definitions,
                        }],
                    }),
                );
                Value::Object(record)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{counter, gauge, histogram};
    use super::*;

    /// The record whose dimension `route` is `route` and that carries `metric`.
    fn find<'a>(records: &'a [Value], route: &str, metric: &str) -> Option<&'a Value> {
        records
            .iter()
            .find(|r| r["route"] == route && r.get(metric).is_some())
    }

    #[test]
    fn records_follow_the_emf_structure_and_carry_deltas() {
        let route = "/emf-test";
        counter(format!(
            "emf_test_total{{method=\"POST\",route=\"{route}\",status=\"201\"}}"
        ))
        .add(3);
        gauge("emf_test_depth").set(4);
        let h = histogram(format!(
            "emf_test_duration_seconds{{method=\"POST\",route=\"{route}\"}}"
        ));
        h.observe(Duration::from_micros(800)); // bucket 0.001
        h.observe(Duration::from_millis(20)); // bucket 0.025
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(60)); // above every bound

        let mut emitter = Emitter::default();
        // Serialised and parsed back: what CloudWatch would read.
        let text: Vec<String> = emitter
            .records("TestNs", "order", 1_700_000_000_000)
            .iter()
            .map(|r| r.to_string())
            .collect();
        let records: Vec<Value> = text
            .iter()
            .map(|line| serde_json::from_str(line).expect("each record is one JSON object"))
            .collect();

        let c = find(&records, route, "emf_test_total").expect("counter record");
        assert_eq!(c["emf_test_total"], 3);
        assert_eq!(c["function"], "order");
        assert_eq!(c["method"], "POST");
        assert_eq!(c["status"], "201");
        let aws = &c["_aws"];
        assert_eq!(aws["Timestamp"], 1_700_000_000_000u64);
        let directive = &aws["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "TestNs");
        assert_eq!(
            directive["Dimensions"],
            json!([["function", "method", "route", "status"]])
        );
        assert_eq!(
            directive["Metrics"],
            json!([{ "Name": "emf_test_total", "Unit": "Count" }])
        );
        // Every dimension named is a member of the record.
        for d in directive["Dimensions"][0].as_array().unwrap_or(&Vec::new()) {
            assert!(
                c.get(d.as_str().unwrap_or("")).is_some(),
                "dimension {d} missing"
            );
        }

        let hist = find(&records, route, "emf_test_duration_seconds").expect("histogram record");
        assert_eq!(
            hist["emf_test_duration_seconds"],
            json!({ "Values": [0.001, 0.025, 10.0], "Counts": [1, 2, 1] })
        );
        assert_eq!(
            hist["_aws"]["CloudWatchMetrics"][0]["Metrics"],
            json!([{ "Name": "emf_test_duration_seconds", "Unit": "Seconds" }])
        );

        let g = records
            .iter()
            .find(|r| r.get("emf_test_depth").is_some())
            .expect("gauge record");
        assert_eq!(g["emf_test_depth"], 4);
        assert_eq!(
            g["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["function"]])
        );

        // A second flush carries only what changed since the first.
        counter(format!(
            "emf_test_total{{method=\"POST\",route=\"{route}\",status=\"201\"}}"
        ))
        .inc();
        let again = emitter.records("TestNs", "order", 1_700_000_010_000);
        let c = find(&again, route, "emf_test_total").expect("counter record again");
        assert_eq!(c["emf_test_total"], 1);
        assert!(
            find(&again, route, "emf_test_duration_seconds").is_none(),
            "an unchanged histogram is left out"
        );
    }

    #[test]
    fn labels_parse_into_dimension_pairs() {
        assert_eq!(
            parse_labels("method=\"GET\",route=\"/stock/sales/{sale_id}\",status=\"200\""),
            vec![
                ("method".to_owned(), "GET".to_owned()),
                ("route".to_owned(), "/stock/sales/{sale_id}".to_owned()),
                ("status".to_owned(), "200".to_owned()),
            ]
        );
        assert!(parse_labels("").is_empty());
    }
}
