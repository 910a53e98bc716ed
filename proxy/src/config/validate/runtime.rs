//! The `runtime` section: worker threads.

use super::{Validator, MAX_WORKERS};
use crate::config::FieldPath;

impl Validator<'_> {
    pub(super) fn runtime(&mut self) {
        if let Some(workers) = self.config.runtime.workers {
            if !(1..=MAX_WORKERS).contains(&workers) {
                self.error(
                    FieldPath::root("runtime").field("workers"),
                    format!("must be between 1 and {MAX_WORKERS} (got {workers})"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{assert_errors, parse_ok};

    #[test]
    fn workers_are_bounded() {
        assert_errors(
            "runtime: { workers: 1025 }",
            &[("runtime.workers", 1, "between 1 and 1024 (got 1025)")],
        );
        let config = parse_ok("runtime: { workers: 1024, drain_timeout: 0s }");
        assert_eq!(config.runtime.workers, Some(1024));
    }
}
