//! The last minute of traffic: readings of every route target taken every few seconds, so
//! that rates, error ratios and quantiles can be shown over a recent span.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::route::TargetReading;

/// How far back [`Window::recent`] looks.
pub const SPAN: Duration = Duration::from_secs(60);
/// How often readings are taken.
pub const EVERY: Duration = Duration::from_secs(5);

/// A route target: listener, route, cluster.
pub type TargetKey = (Arc<str>, Arc<str>, Arc<str>);

/// Readings over the last [`SPAN`] (and the one just before it).
#[derive(Debug, Default)]
pub struct Window {
    samples: VecDeque<(Instant, HashMap<TargetKey, TargetReading>)>,
}

/// What one target did over a recent span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recent {
    pub reading: TargetReading,
    pub span: Duration,
}

impl Recent {
    pub fn per_second(&self) -> f64 {
        let secs = self.span.as_secs_f64();
        if secs > 0.0 {
            self.reading.requests() as f64 / secs
        } else {
            0.0
        }
    }

    /// The share of 5xx answers, if there were requests.
    pub fn error_ratio(&self) -> Option<f64> {
        let n = self.reading.requests();
        (n > 0).then(|| self.reading.server_errors() as f64 / n as f64)
    }

    /// The 99th percentile of time to the end of the upstream's response, in seconds.
    pub fn p99(&self) -> Option<f64> {
        self.reading.end.quantile(0.99)
    }
}

impl Window {
    /// Keeps `readings`, taken at `now`, and forgets what is older than needed.
    pub fn sample(&mut self, now: Instant, readings: HashMap<TargetKey, TargetReading>) {
        self.samples.push_back((now, readings));
        // The oldest kept sample is the newest one at least SPAN old.
        while self
            .samples
            .get(1)
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= SPAN)
        {
            self.samples.pop_front();
        }
    }

    /// What each target did between the newest sample at least [`SPAN`] old (or the oldest,
    /// early on) and `current` (readings taken at `now`). Empty before the first sample.
    pub fn recent(
        &self,
        now: Instant,
        current: &HashMap<TargetKey, TargetReading>,
    ) -> HashMap<TargetKey, Recent> {
        let old_enough = |(t, _): &&(Instant, _)| now.saturating_duration_since(*t) >= SPAN;
        let base = self
            .samples
            .iter()
            .rfind(old_enough)
            .or(self.samples.front());
        let Some((at, before)) = base else {
            return HashMap::new();
        };
        let span = now.saturating_duration_since(*at);
        current
            .iter()
            .map(|(key, reading)| {
                let earlier = before.get(key).copied().unwrap_or_default();
                let recent = Recent {
                    reading: reading.since(&earlier),
                    span,
                };
                (key.clone(), recent)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TargetKey {
        ("front".into(), "api".into(), "k8s".into())
    }

    fn reading(ok: u64, failed: u64) -> HashMap<TargetKey, TargetReading> {
        let mut r = TargetReading::default();
        r.responses[2] = ok;
        r.responses[5] = failed;
        HashMap::from([(key(), r)])
    }

    #[test]
    fn recent_is_measured_from_the_newest_sample_a_span_old() {
        let start = Instant::now();
        let mut w = Window::default();
        assert!(w.recent(start, &reading(1, 0)).is_empty());
        for i in 0..20u64 {
            // 10 requests (one failed) every 5 s.
            w.sample(start + EVERY * i as u32, reading(9 * i, i));
        }
        let now = start + EVERY * 20;
        let recent = w.recent(now, &reading(180, 20))[&key()];
        // The base is the newest sample at least 60 s old: 12 intervals, 120 requests.
        assert_eq!(recent.span, SPAN);
        assert_eq!(recent.reading.requests(), 120);
        assert_eq!(recent.per_second(), 2.0);
        assert_eq!(recent.error_ratio(), Some(0.1));
        assert!(w.samples.len() <= 14, "{} samples kept", w.samples.len());
    }

    #[test]
    fn a_target_new_since_the_base_counts_from_zero() {
        let start = Instant::now();
        let mut w = Window::default();
        w.sample(start, HashMap::new());
        let recent = w.recent(start + EVERY, &reading(5, 0))[&key()];
        assert_eq!(recent.reading.requests(), 5);
        assert_eq!(recent.error_ratio(), Some(0.0));
        assert_eq!(recent.p99(), None);
    }
}
