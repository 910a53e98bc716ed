//! Workers: one thread per core, each a current-thread runtime with its own sockets and pools.

use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use crate::access_log;
use crate::http::upstream;

/// A unit of work run on a worker's thread, inside its runtime (so it may `tokio::spawn`).
pub type Job = Box<dyn FnOnce() + Send>;

/// The worker threads. Dropping it (or [`Workers::stop`]) ends every worker's runtime, which
/// closes every connection it still holds.
#[derive(Debug)]
pub struct Workers {
    senders: Vec<mpsc::UnboundedSender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

/// How often workers write out buffered access-log lines.
const LOG_FLUSH_EVERY: Duration = Duration::from_millis(100);
/// How often workers drop expired idle upstream connections.
const POOL_SWEEP_EVERY: Duration = Duration::from_secs(5);

impl Workers {
    pub fn start(count: usize) -> io::Result<Workers> {
        let mut senders = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        crate::stats::per_worker::set_workers(count);
        for i in 0..count.max(1) {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let thread = std::thread::Builder::new()
                .name(format!("legate-worker-{i}"))
                .spawn(move || {
                    crate::stats::per_worker::enter_worker(i);
                    runtime.block_on(async move {
                        tokio::spawn(housekeeping());
                        while let Some(job) = rx.recv().await {
                            job();
                        }
                    });
                    access_log::flush();
                })?;
            senders.push(tx);
            threads.push(thread);
        }
        Ok(Workers { senders, threads })
    }

    pub fn len(&self) -> usize {
        self.senders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Runs `job` on worker `index`.
    pub fn run_on(&self, index: usize, job: Job) {
        if let Some(tx) = self.senders.get(index) {
            if tx.send(job).is_err() {
                warn!(worker = index, "worker is gone; job dropped");
            }
        }
    }

    /// Ends every worker's runtime and waits for the threads.
    pub fn stop(mut self) {
        self.senders.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

async fn housekeeping() {
    let mut flush = tokio::time::interval(LOG_FLUSH_EVERY);
    let mut sweep = tokio::time::interval(POOL_SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = flush.tick() => access_log::flush(),
            _ = sweep.tick() => upstream::sweep(),
        }
    }
}
