//! Process resources: the open-file limit, and telling local exhaustion from a peer's fault.

use std::io;

use rustix::io::Errno;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// File descriptors kept back from the connection budget for everything else the process
/// opens: listeners, the event loops, log files, health-check and DNS sockets.
const RESERVED_FDS: u64 = 64;

/// Raises the soft open-file limit to the hard one, as the process may use all it is
/// allowed (systemd's default soft limit, 1024, is far below its hard one). Returns the
/// soft limit now in force, `None` for unlimited.
pub fn raise_open_file_limit() -> io::Result<Option<u64>> {
    let limit = getrlimit(Resource::Nofile);
    // An unlimited hard limit is not a soft limit a kernel accepts: keep the soft one then.
    if limit.maximum.is_some() && limit.current < limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        setrlimit(Resource::Nofile, raised)?;
        return Ok(limit.maximum);
    }
    Ok(limit.current)
}

/// The soft open-file limit in force, `None` for unlimited.
pub fn open_file_limit() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// A listener's `max_connections` when the config sets none: what the open-file limit
/// allows with two descriptors per connection (the client's and its upstream's).
pub fn default_max_connections(open_files: Option<u64>) -> usize {
    let Some(open_files) = open_files else {
        return usize::MAX;
    };
    let per_connection = open_files.saturating_sub(RESERVED_FDS) / 2;
    usize::try_from(per_connection.max(1)).unwrap_or(usize::MAX)
}

/// Whether an error means this process ran out of something (descriptors, buffers,
/// memory), which says nothing about the peer it was talking to.
pub fn is_local_exhaustion(e: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_leaves_a_reserve_and_counts_two_descriptors_a_connection() {
        assert_eq!(default_max_connections(Some(1024)), 480);
        assert_eq!(default_max_connections(Some(65_536)), 32_736);
        assert_eq!(default_max_connections(Some(10)), 1);
        assert_eq!(default_max_connections(None), usize::MAX);
    }

    #[test]
    fn exhaustion_is_told_from_a_peer_failure() {
        for errno in [Errno::MFILE, Errno::NFILE] {
            assert!(is_local_exhaustion(&io::Error::from(errno)));
        }
        assert!(!is_local_exhaustion(&io::Error::from(Errno::CONNREFUSED)));
        assert!(!is_local_exhaustion(&io::Error::from(
            io::ErrorKind::TimedOut
        )));
    }
}
