//! Following etcd: what any replica writes becomes this replica's overrides and is published
//! to its proxies.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::etcd::EtcdError;
use crate::shared::{publish, Shared};
use crate::state::replicated::Replicated;

/// How long to wait before watching again after a watch ended.
const REWATCH: Duration = Duration::from_secs(1);

/// Follows etcd until shutdown: each change any replica makes becomes the store's overrides
/// and is published. A watch that ends is opened again from the revision reached; one that
/// cannot be (compacted away) starts over from a full read.
pub(crate) async fn follow(shared: Arc<Shared>, replicated: Arc<Replicated>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let start = replicated.revision() + 1;
        let opened = tokio::select! {
            w = replicated.etcd.watch(replicated.prefix(), start) => w,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match opened {
            Ok(mut watch) => loop {
                let next = tokio::select! {
                    n = watch.next() => n,
                    _ = shutdown.wait_for(|stop| *stop) => return,
                };
                match next {
                    Ok(events) => {
                        let mut store = shared.store.lock().await;
                        let overrides = replicated.apply(events);
                        if store.overrides() != &overrides {
                            store.set_overrides(overrides);
                            publish(&shared, &store);
                        }
                    }
                    Err(e @ EtcdError::Compacted { .. }) => {
                        warn!(error = %e, "etcd watch compacted away; reading every override again");
                        resync(&shared, &replicated).await;
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "etcd watch ended; watching again");
                        break;
                    }
                }
            },
            Err(e) => warn!(error = %e, "cannot watch etcd; trying again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(REWATCH) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Reads every override again and publishes what changed.
async fn resync(shared: &Shared, replicated: &Replicated) {
    let mut store = shared.store.lock().await;
    match replicated.load().await {
        Ok((overrides, _)) => {
            if store.overrides() != &overrides {
                store.set_overrides(overrides);
                publish(shared, &store);
            }
        }
        Err(e) => warn!(error = %e, "cannot read the overrides from etcd again"),
    }
}
