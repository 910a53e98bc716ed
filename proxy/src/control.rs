//! The control thread: one current-thread runtime for everything off the request path
//! (admin server, health checks, DNS, cluster upkeep), so that it never competes with workers
//! for their event loops.

use std::future::Future;
use std::thread::JoinHandle;

use tokio::runtime::Handle as RuntimeHandle;
use tokio::sync::oneshot;

/// The running control thread. Dropping it stops every task on it.
#[derive(Debug)]
pub struct Control {
    handle: RuntimeHandle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Control {
    pub fn start() -> std::io::Result<Control> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("legate-control".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let _ = stop_rx.await;
                });
            })?;
        Ok(Control {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// A handle that spawns onto the control thread.
    pub fn handle(&self) -> RuntimeHandle {
        self.handle.clone()
    }

    /// Runs `task` on the control thread.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.shutdown();
    }
}
