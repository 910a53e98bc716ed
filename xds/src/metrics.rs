//! The control plane's `GET /metrics`: proxies connected by node group, the versions each
//! group serves, and the updates sent and answered.

use std::collections::BTreeMap;
use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

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
        };
        let text = render(reading.clone(), false);
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
