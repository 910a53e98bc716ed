//! Telling the service manager (systemd's `sd_notify` protocol) what the process is doing:
//! ready, reloading, stopping, and a one-line status. Nothing is sent without `$NOTIFY_SOCKET`.

use sd_notify::NotifyState;
use tracing::debug;

/// Listeners bound and the config loaded: `READY=1`, with the config version as status.
pub fn ready(version: &str) {
    send(&[
        NotifyState::Ready,
        NotifyState::Status(&format!("serving config {version}")),
    ]);
}

/// A reload is being applied: `RELOADING=1` with `MONOTONIC_USEC` (systemd 253 and later
/// require the timestamp). Always followed by [`ready`] or [`reload_failed_after_start`].
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// A reload that was being applied failed: `READY=1` (the old config serves on) and why.
pub fn reload_failed_after_start(error: &str, serving: Option<&str>) {
    let status = failed_status(error, serving);
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// A file rejected before anything changed: only a status line; readiness is as it was.
pub fn reload_rejected(error: &str, serving: Option<&str>) {
    send(&[NotifyState::Status(&failed_status(error, serving))]);
}

/// Draining on SIGTERM: `STOPPING=1`.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining connections"),
    ]);
}

/// An upgrade's new process serves: it is the service's main process now (`MAINPID=`), and
/// this one only drains. Sent by the old process, which systemd still listens to.
pub fn handed_over(new_pid: u32) {
    send(&[
        NotifyState::MainPid(new_pid),
        NotifyState::Ready,
        NotifyState::Status(&format!("upgraded: serving in pid {new_pid}")),
    ]);
}

/// An upgrade that did not happen: this process serves on, and says why.
pub fn upgrade_failed(error: &str) {
    let error = error.lines().collect::<Vec<_>>().join("; ");
    send(&[NotifyState::Status(&format!("upgrade failed: {error}"))]);
}

/// One line: the protocol is newline-separated, so the error's lines are joined.
fn failed_status(error: &str, serving: Option<&str>) -> String {
    let error = error.lines().collect::<Vec<_>>().join("; ");
    match serving {
        Some(version) => format!("config reload failed: {error}; serving config {version}"),
        None => format!("config reload failed: {error}"),
    }
}

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "cannot notify the service manager");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_one_line() {
        let status = failed_status("a.yaml is invalid:\nline 3: x\nline 4: y", Some("abc"));
        assert_eq!(
            status,
            "config reload failed: a.yaml is invalid:; line 3: x; line 4: y; serving config abc"
        );
    }
}
