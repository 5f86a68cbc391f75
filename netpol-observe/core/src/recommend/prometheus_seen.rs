//! First and last seen of each workload-level connection from Prometheus' samples
//! (`recommend --prometheus`): a range query over the window gives each connection's counter
//! at every step, and the times of its first and last increase are when flows were seen —
//! not the query window.

use std::collections::{BTreeMap, HashMap};

use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;

use super::sources::{FLOW_LABELS, SourceError};

/// Most steps one range query asks for (Prometheus refuses more than 11,000 points per
/// series).
const MAX_STEPS: i64 = 1000;

/// The PromQL range query: per connection (the flow labels of
/// [`super::sources::prometheus_query`]), its flows, or for a connection only ever dropped its
/// filter drops.
pub fn range_query() -> String {
    format!(
        "sum by ({FLOW_LABELS}) (netpol_observe_flows_total) or sum by ({FLOW_LABELS}) (netpol_observe_drops_total{{reason!~\"NO_SOCKET|IP_RPFILTER\"}})"
    )
}

/// The resolution of the range query over `window`: at most [`MAX_STEPS`] steps, at least
/// one second.
pub fn step(window: SignedDuration) -> SignedDuration {
    let secs = window.as_secs().max(1);
    SignedDuration::from_secs(((secs + MAX_STEPS - 1) / MAX_STEPS).max(1))
}

/// The `query_range` parameters (`query`, `start`, `end`, `step`, times in Unix seconds) for
/// `window` ending at `end`.
pub fn range_params(window: SignedDuration, end: Timestamp) -> Vec<(&'static str, String)> {
    let end_s = end.as_second();
    vec![
        ("query", range_query()),
        ("start", (end_s - window.as_secs().max(1)).to_string()),
        ("end", end_s.to_string()),
        ("step", format!("{}s", step(window).as_secs())),
    ]
}

/// First and last increase per connection, by the values of its flow labels.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seen {
    by: HashMap<Vec<String>, (Timestamp, Timestamp)>,
}

impl Seen {
    /// The first and last increase of the connection of a series with these labels.
    pub fn of(&self, metric: &BTreeMap<String, String>) -> Option<(Timestamp, Timestamp)> {
        self.by.get(&key(metric)).copied()
    }

    /// Number of connections with an increase.
    pub fn len(&self) -> usize {
        self.by.len()
    }

    /// Whether no connection increased.
    pub fn is_empty(&self) -> bool {
        self.by.is_empty()
    }
}

fn key(metric: &BTreeMap<String, String>) -> Vec<String> {
    FLOW_LABELS
        .split(", ")
        .map(|k| metric.get(k).cloned().unwrap_or_default())
        .collect()
}

#[derive(Deserialize)]
struct Series {
    metric: BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

/// Reads a `query_range` answer to [`range_query`] whose range began at `start`: a sample
/// counts as an increase when its value is above the previous one's, or below it but
/// positive (the counter was reset by an agent restart and counted again), or when it is a
/// series' first sample after `start` (the series was born in the window).
pub fn parse_range(body: &str, origin: &str, start: Timestamp) -> Result<Seen, SourceError> {
    let result: Vec<Series> = super::sources::prometheus_result(body, origin, "matrix")?;
    let start_ms = start.as_millisecond();
    let mut seen = Seen::default();
    for s in &result {
        let mut prev: Option<f64> = None;
        let mut span: Option<(Timestamp, Timestamp)> = None;
        for (t, v) in &s.values {
            let Ok(v) = v.parse::<f64>() else { continue };
            let ms = (t * 1000.0).round() as i64;
            let Ok(at) = Timestamp::from_millisecond(ms) else {
                continue;
            };
            let increased = match prev {
                None => ms > start_ms && v > 0.0,
                Some(p) => v > p || (v < p && v > 0.0),
            };
            prev = Some(v);
            if increased {
                span = Some(span.map_or((at, at), |(first, _)| (first, at)));
            }
        }
        if let Some((first, last)) = span {
            let e = seen.by.entry(key(&s.metric)).or_insert((first, last));
            e.0 = e.0.min(first);
            e.1 = e.1.max(last);
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_and_last_increase_not_the_window() {
        // Range 1000..=1060 s, step 10 s. web → api: 3 at the start, +2 at 1020, +1 at
        // 1040, then flat: first 1020, last 1040. db: born at 1030 with 4, reset at 1050 to 1
        // (an agent restart): 1030 and 1050. cache: flat all along: no increase.
        let body = r#"{"status":"success","data":{"resultType":"matrix","result":[
          {"metric":{"src_namespace":"shop","src_kind":"Deployment","src_workload":"web","dst_namespace":"shop","dst_kind":"Deployment","dst_workload":"api","dst_port":"9000","protocol":"TCP"},
           "values":[[1000,"3"],[1010,"3"],[1020,"5"],[1030,"5"],[1040,"6"],[1050,"6"],[1060,"6"]]},
          {"metric":{"src_namespace":"shop","src_kind":"Deployment","src_workload":"api","dst_namespace":"","dst_kind":"Subnet","dst_workload":"db","dst_port":"5432","protocol":"TCP"},
           "values":[[1030,"4"],[1040,"4"],[1050,"1"],[1060,"1"]]},
          {"metric":{"src_namespace":"shop","src_kind":"Deployment","src_workload":"api","dst_namespace":"shop","dst_kind":"StatefulSet","dst_workload":"cache","dst_port":"6379","protocol":"TCP"},
           "values":[[1000,"2"],[1060,"2"]]}]}}"#;
        let start = Timestamp::from_second(1000).unwrap();
        let seen = parse_range(body, "test", start).unwrap();
        assert_eq!(seen.len(), 2);
        let t = |s| Timestamp::from_second(s).unwrap();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let web_api = labels(&[
            ("src_namespace", "shop"),
            ("src_kind", "Deployment"),
            ("src_workload", "web"),
            ("dst_namespace", "shop"),
            ("dst_kind", "Deployment"),
            ("dst_workload", "api"),
            ("dst_port", "9000"),
            ("protocol", "TCP"),
            ("verdict", "allowed"),
        ]);
        assert_eq!(seen.of(&web_api), Some((t(1020), t(1040))));
        let db = labels(&[
            ("src_namespace", "shop"),
            ("src_kind", "Deployment"),
            ("src_workload", "api"),
            ("dst_kind", "Subnet"),
            ("dst_workload", "db"),
            ("dst_port", "5432"),
            ("protocol", "TCP"),
        ]);
        assert_eq!(seen.of(&db), Some((t(1030), t(1050))));
        assert!(
            parse_range(
                r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
                "x",
                start
            )
            .is_err()
        );
    }

    #[test]
    fn the_step_bounds_the_points() {
        assert_eq!(step(SignedDuration::from_hours(24)).as_secs(), 87);
        assert_eq!(step(SignedDuration::from_secs(30)).as_secs(), 1);
    }
}
