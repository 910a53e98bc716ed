//! The same limiter for the same limit across reloads: a reload that keeps a limit (same
//! route table, route, name and settings) keeps its buckets. Used only off the request path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::{Limiter, Spec};

/// A limit by identity: route table, route, limit name, and what it does.
type LimitKey = (String, String, String, Spec);

#[derive(Debug, Default)]
pub struct Registry {
    limiters: Mutex<HashMap<LimitKey, Weak<Limiter>>>,
}

impl Registry {
    /// The limiter of limit `name` of route `route` in `table`.
    pub fn limiter(&self, table: &str, route: &str, name: &str, spec: Spec) -> Arc<Limiter> {
        let key = (table.to_owned(), route.to_owned(), name.to_owned(), spec);
        let mut map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = map.get(&key).and_then(Weak::upgrade) {
            return l;
        }
        let limiter = Arc::new(Limiter::new(route, name, key.3.clone()));
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(key, Arc::downgrade(&limiter));
        limiter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_unchanged_limit_keeps_its_buckets() {
        let reg = Registry::default();
        let spec = Spec {
            requests: 1,
            per: Duration::from_secs(60),
            burst: 1,
            key: super::super::KeySpec::whole_route(),
            delay: None,
            max_keys: 1,
        };
        let a = reg.limiter("t", "r", "api", spec.clone());
        assert!(Arc::ptr_eq(&a, &reg.limiter("t", "r", "api", spec.clone())));
        let mut faster = spec;
        faster.requests = 2;
        assert!(!Arc::ptr_eq(&a, &reg.limiter("t", "r", "api", faster)));
    }
}
