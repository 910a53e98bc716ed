//! The control plane's `GET /metrics`: proxies connected by node group, the versions each
//! group serves, and the updates sent and answered.

use std::collections::BTreeMap;
use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// What one scrape reports, read from the server's state.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    /// Proxies with an open stream (after their hello), by node group.
    pub connected: BTreeMap<String, u64>,
    /// Of those, the ones holding every version their group serves now.
    pub in_sync: BTreeMap<String, u64>,
    /// `(group, resource type, version)` served now.
    pub versions: Vec<(String, String, String)>,
    /// Resource updates (responses and deltas) sent to proxies.
    pub updates_sent: u64,
    pub acks: u64,
    pub nacks: u64,
    /// How long changes took to reach every connected proxy, by node group.
    pub propagation: BTreeMap<String, crate::propagation::Timings>,
}

/// The exposition of `reading`: OpenMetrics, or the Prometheus text form.
pub fn render(reading: Reading, openmetrics: bool) -> String {
    let mut registry = Registry::with_prefix("legate_xds");
    registry.register_collector(Box::new(ReadingCollector(reading)));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    if openmetrics {
        out
    } else {
        crate::exposition::to_prometheus_text(&out)
    }
}

#[derive(Debug)]
struct ReadingCollector(Reading);

impl Collector for ReadingCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let r = &self.0;
        for (name, help, by_group) in [
            (
                "proxies_connected",
                "Proxies with an open stream, by node group",
                &r.connected,
            ),
            (
                "proxies_in_sync",
                "Connected proxies holding every version their group serves",
                &r.in_sync,
            ),
        ] {
            let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (group, n) in by_group {
                let labels = [("group", group.as_str())];
                ConstGauge::new(i64::try_from(*n).unwrap_or(i64::MAX))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = e.encode_descriptor(
            "group_version_info",
            "The version of each resource type a node group serves",
            None,
            MetricType::Gauge,
        )?;
        for (group, kind, version) in &r.versions {
            let labels = [
                ("group", group.as_str()),
                ("type", kind.as_str()),
                ("version", version.as_str()),
            ];
            ConstGauge::new(1).encode(family.encode_family(&labels)?)?;
        }
        for (name, help, value) in [
            (
                "updates_sent",
                "Resource updates (responses and endpoint deltas) sent to proxies",
                r.updates_sent,
            ),
            ("acks", "Updates proxies applied and acknowledged", r.acks),
            ("nacks", "Updates proxies refused", r.nacks),
        ] {
            let family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)?;
        }
        if r.propagation.is_empty() {
            return Ok(());
        }
        let mut family = e.encode_descriptor(
            "change_propagation",
            "From publishing a group's new versions to the ACK that left every connected proxy of the group holding them",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (group, t) in &r.propagation {
            let labels = [("group", group.as_str())];
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(t.sum, t.count(), &t.buckets(), None)?;
        }
        let mut family = e.encode_descriptor(
            "last_change_propagation",
            "How long the latest timed change of a group took to reach every connected proxy",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for (group, t) in &r.propagation {
            let labels = [("group", group.as_str())];
            let secs = t.last.map_or(0.0, |d| d.as_secs_f64());
            ConstGauge::new(secs).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_carry_the_same_samples() {
        let reading = Reading {
            connected: BTreeMap::from([("maps".to_owned(), 2)]),
            in_sync: BTreeMap::from([("maps".to_owned(), 1)]),
            versions: vec![("maps".into(), "clusters".into(), "abc".into())],
            updates_sent: 7,
            acks: 6,
            nacks: 1,
            propagation: BTreeMap::from([(
                "maps".to_owned(),
                crate::propagation::Timings {
                    counts: [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    sum: 0.08,
                    last: Some(std::time::Duration::from_millis(80)),
                },
            )]),
        };
        let text = render(reading.clone(), false);
        let bucket = "legate_xds_change_propagation_seconds_bucket{le=\"0.1\",group=\"maps\"} 1";
        assert!(text.contains(bucket), "{text}");
        assert!(
            text.contains("legate_xds_last_change_propagation_seconds{group=\"maps\"} 0.08"),
            "{text}"
        );
        assert!(
            text.contains("legate_xds_proxies_connected{group=\"maps\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE legate_xds_acks_total counter"),
            "{text}"
        );
        assert!(text.contains("legate_xds_nacks_total 1"), "{text}");
        assert!(
            text.contains(
                "legate_xds_group_version_info{group=\"maps\",type=\"clusters\",version=\"abc\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
        assert!(render(reading, true).trim_end().ends_with("# EOF"));
    }
}
