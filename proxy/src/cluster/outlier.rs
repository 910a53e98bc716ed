//! Passive outlier detection: requests report each endpoint's outcomes; enough failures in a
//! row eject it for a back-off period, within the cluster's ejection budget.

use std::sync::atomic::Ordering;

use super::{ClusterState, EndpointState};
use crate::config::model::OutlierDetection;

/// A request to this endpoint succeeded (any answer below 500).
pub fn record_success(state: &EndpointState) {
    // Read first: a healthy endpoint's counter is 0, and a load is cheaper than a store on a
    // cache line every worker touches.
    if state.consecutive_failures.load(Ordering::Relaxed) != 0 {
        state.consecutive_failures.store(0, Ordering::Relaxed);
    }
}

/// A request to this endpoint failed (5xx, connect failure, reset). Returns whether this
/// failure ejected it; the caller then wakes the control thread to rebuild the membership.
pub fn record_failure(
    state: &EndpointState,
    cluster: &ClusterState,
    cfg: &OutlierDetection,
    endpoints: usize,
    now_ms: u64,
) -> bool {
    let failures = state.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
    if failures < cfg.consecutive_failures || state.is_ejected() {
        return false;
    }
    // At least one endpoint may always be ejected, so a one-endpoint-bad cluster heals.
    let budget = (endpoints * cfg.max_ejected_percent as usize / 100).max(1);
    let ejected = cluster.ejected.fetch_add(1, Ordering::AcqRel);
    if ejected >= budget {
        cluster.ejected.fetch_sub(1, Ordering::AcqRel);
        return false;
    }
    if state
        .ejected
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        cluster.ejected.fetch_sub(1, Ordering::AcqRel);
        return false;
    }
    let times = state.ejections.fetch_add(1, Ordering::AcqRel) + 1;
    let base = cfg.base_ejection.get().as_millis() as u64;
    let max = cfg.max_ejection.get().as_millis() as u64;
    let duration = base.saturating_mul(u64::from(times)).min(max);
    state
        .ejected_until_ms
        .store(now_ms.saturating_add(duration), Ordering::Release);
    state.consecutive_failures.store(0, Ordering::Relaxed);
    true
}

/// Ends an ejection whose time is up. Returns whether it did (the endpoint is usable again).
pub fn expire(state: &EndpointState, cluster: &ClusterState, now_ms: u64) -> bool {
    if !state.is_ejected() || state.ejected_until_ms.load(Ordering::Acquire) > now_ms {
        return false;
    }
    if state
        .ejected
        .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        cluster.ejected.fetch_sub(1, Ordering::AcqRel);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierDetection {
        serde_yaml::from_str(
            "{ consecutive_failures: 3, base_ejection: 10s, max_ejection: 25s, max_ejected_percent: 50 }",
        )
        .unwrap()
    }

    #[test]
    fn ejects_after_consecutive_failures_with_growing_back_off() {
        let cluster = ClusterState::new("c");
        let e = EndpointState::new(1);
        let cfg = cfg();
        assert!(!record_failure(&e, &cluster, &cfg, 4, 0));
        record_success(&e);
        assert!(!record_failure(&e, &cluster, &cfg, 4, 0));
        assert!(!record_failure(&e, &cluster, &cfg, 4, 0));
        assert!(record_failure(&e, &cluster, &cfg, 4, 0));
        assert_eq!(e.ejected_until_ms(), Some(10_000));
        assert!(!expire(&e, &cluster, 9_999));
        assert!(expire(&e, &cluster, 10_000));
        assert_eq!(cluster.ejected.load(Ordering::Relaxed), 0);

        // Second ejection: twice the base; third: capped at max_ejection.
        for _ in 0..3 {
            record_failure(&e, &cluster, &cfg, 4, 20_000);
        }
        assert_eq!(e.ejected_until_ms(), Some(40_000));
        expire(&e, &cluster, 40_000);
        for _ in 0..3 {
            record_failure(&e, &cluster, &cfg, 4, 50_000);
        }
        assert_eq!(e.ejected_until_ms(), Some(75_000));
    }

    #[test]
    fn never_ejects_more_than_the_budget_but_always_one() {
        let cluster = ClusterState::new("c");
        let cfg = cfg();
        let eps: Vec<EndpointState> = (0..4).map(EndpointState::new).collect();
        let mut ejected = 0;
        for e in &eps {
            for _ in 0..3 {
                if record_failure(e, &cluster, &cfg, 4, 0) {
                    ejected += 1;
                }
            }
        }
        assert_eq!(ejected, 2, "50% of 4");

        let small = ClusterState::new("s");
        let mut zero_pct = cfg.clone();
        zero_pct.max_ejected_percent = 0;
        let e = EndpointState::new(9);
        let results: Vec<bool> = (0..3)
            .map(|_| record_failure(&e, &small, &zero_pct, 3, 0))
            .collect();
        assert_eq!(results, [false, false, true]);
    }
}
