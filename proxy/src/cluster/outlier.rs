//! Passive outlier detection: requests report each endpoint's outcomes; enough failures in a
//! row eject it for a back-off period, within the cluster's ejection budget.

use std::sync::atomic::Ordering;

use super::membership::Membership;
use super::EndpointState;
use crate::config::model::OutlierDetection;

/// A request to this endpoint succeeded (any answer below 500).
pub fn record_success(state: &EndpointState) {
    // Read first: a healthy endpoint's counter is 0, and a load is cheaper than a store on a
    // cache line every worker touches.
    if state.consecutive_failures.load(Ordering::Relaxed) != 0 {
        state.consecutive_failures.store(0, Ordering::Relaxed);
    }
}

/// A request to this endpoint failed (5xx, connect failure, reset). `endpoints` and
/// `ejected_now` describe the cluster's current membership (see [`ejected_count`]). Returns
/// whether this failure ejected it; the caller then wakes the control thread to rebuild the
/// membership.
pub fn record_failure(
    state: &EndpointState,
    cfg: &OutlierDetection,
    endpoints: usize,
    ejected_now: usize,
    now_ms: u64,
) -> bool {
    let failures = state.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
    if failures < cfg.consecutive_failures || state.is_ejected() {
        return false;
    }
    // At least one endpoint may always be ejected, so a one-endpoint-bad cluster heals.
    let budget = (endpoints * cfg.max_ejected_percent as usize / 100).max(1);
    if ejected_now >= budget {
        return false;
    }
    if state
        .ejected
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return false;
    }
    let base = cfg.base_ejection.get().as_millis() as u64;
    let max = cfg.max_ejection.get().as_millis() as u64;
    // The multiplier decays by one for each base period spent back in service, so an endpoint
    // that failed long ago starts again from the base ejection.
    let previous = state.ejection_multiplier.load(Ordering::Acquire);
    let back_since = state.ejected_until_ms.load(Ordering::Acquire);
    let decay = now_ms.saturating_sub(back_since) / base.max(1);
    let times = previous
        .saturating_sub(u32::try_from(decay).unwrap_or(u32::MAX))
        .saturating_add(1);
    state.ejection_multiplier.store(times, Ordering::Release);
    state.ejections.fetch_add(1, Ordering::Relaxed);
    let duration = base.saturating_mul(u64::from(times)).min(max);
    state
        .ejected_until_ms
        .store(now_ms.saturating_add(duration), Ordering::Release);
    state.consecutive_failures.store(0, Ordering::Relaxed);
    true
}

/// Endpoints of a membership ejected now. Counted from the membership itself, so an endpoint
/// that leaves the cluster also leaves the ejection budget.
pub fn ejected_count(membership: &Membership, now_ms: u64) -> usize {
    membership
        .endpoints
        .iter()
        .filter(|e| {
            e.state
                .ejected_until_ms()
                .is_some_and(|until| until > now_ms)
        })
        .count()
}

/// Ends an ejection whose time is up. Returns whether it did (the endpoint is usable again).
pub fn expire(state: &EndpointState, now_ms: u64) -> bool {
    if !state.is_ejected() || state.ejected_until_ms.load(Ordering::Acquire) > now_ms {
        return false;
    }
    state
        .ejected
        .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
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
        let e = EndpointState::new(1);
        let cfg = cfg();
        assert!(!record_failure(&e, &cfg, 4, 0, 0));
        record_success(&e);
        assert!(!record_failure(&e, &cfg, 4, 0, 0));
        assert!(!record_failure(&e, &cfg, 4, 0, 0));
        assert!(record_failure(&e, &cfg, 4, 0, 0));
        assert_eq!(e.ejected_until_ms(), Some(10_000));
        assert!(!expire(&e, 9_999));
        assert!(expire(&e, 10_000));

        // Failing again at once: twice the base; then capped at max_ejection.
        for _ in 0..3 {
            record_failure(&e, &cfg, 4, 0, 10_000);
        }
        assert_eq!(e.ejected_until_ms(), Some(30_000));
        expire(&e, 30_000);
        for _ in 0..3 {
            record_failure(&e, &cfg, 4, 0, 30_000);
        }
        assert_eq!(e.ejected_until_ms(), Some(55_000));
        expire(&e, 55_000);

        // After two base periods back in service, the multiplier has decayed from 3 to 1.
        for _ in 0..3 {
            record_failure(&e, &cfg, 4, 0, 75_000);
        }
        assert_eq!(e.ejected_until_ms(), Some(95_000));
        assert_eq!(e.ejection_multiplier.load(Ordering::Relaxed), 2);
        assert_eq!(
            e.ejections.load(Ordering::Relaxed),
            4,
            "the count of ejections never decays"
        );
    }

    #[test]
    fn never_ejects_more_than_the_budget_but_always_one() {
        let cfg = cfg();
        let eps: Vec<EndpointState> = (0..4).map(EndpointState::new).collect();
        let mut ejected = 0;
        for e in &eps {
            for _ in 0..3 {
                if record_failure(e, &cfg, 4, ejected, 0) {
                    ejected += 1;
                }
            }
        }
        assert_eq!(ejected, 2, "50% of 4");

        let mut zero_pct = cfg.clone();
        zero_pct.max_ejected_percent = 0;
        let e = EndpointState::new(9);
        let results: Vec<bool> = (0..3)
            .map(|_| record_failure(&e, &zero_pct, 3, 0, 0))
            .collect();
        assert_eq!(results, [false, false, true]);
    }
}
