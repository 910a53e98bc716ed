//! Another process on a listening address: found before the first socket is bound there, so
//! a second Legate (or anything else sharing SO_REUSEPORT) cannot quietly take half the
//! connections.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;

/// A process holding a listening socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: i32,
    /// Its command name (`/proc/PID/comm`).
    pub name: String,
}

/// Fails with [`io::ErrorKind::AddrInUse`], naming the holder when it can be found, if a
/// socket of another process listens on `addr`. Port 0 is never held.
///
/// The probe is a bind without SO_REUSEPORT: the kernel refuses it while any socket listens
/// there, even one that would let a SO_REUSEPORT socket join. Then `/proc` tells whose the
/// listening sockets there are: those this process holds too (a listener moved on reload,
/// or sockets shared with the process of an upgrade) are no conflict.
pub fn check_unheld(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    // As the real sockets are, but without SO_REUSEPORT.
    let probe = super::unbound(addr)?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            // Only sockets this process does not hold conflict: after an upgrade the old
            // process holds the very sockets this one does, and a listener moved on reload
            // holds its old ones here.
            let listening = listening_inodes(addr);
            let own = own_socket_inodes();
            let foreign: HashSet<u64> = listening.difference(&own).copied().collect();
            if !listening.is_empty() && foreign.is_empty() {
                return Ok(());
            }
            let message = match holders_of(&foreign).first() {
                Some(h) => format!("{addr} is already in use by pid {} ({})", h.pid, h.name),
                None => format!("{addr} is already in use by another process"),
            };
            Err(io::Error::new(io::ErrorKind::AddrInUse, message))
        }
        Err(e) => Err(e),
    }
}

/// The inodes of the listening TCP sockets that cover `addr` (the same port, and the same
/// address or a wildcard on either side), as `/proc/net/tcp{,6}` lists them.
fn listening_inodes(addr: SocketAddr) -> HashSet<u64> {
    let table = if addr.is_ipv4() {
        procfs::net::tcp()
    } else {
        procfs::net::tcp6()
    };
    let Ok(table) = table else {
        return HashSet::new();
    };
    table
        .iter()
        .filter(|e| e.state == procfs::net::TcpState::Listen)
        .filter(|e| e.local_address.port() == addr.port())
        .filter(|e| {
            let ip = e.local_address.ip();
            ip == addr.ip() || ip.is_unspecified() || addr.ip().is_unspecified()
        })
        .map(|e| e.inode)
        .collect()
}

/// The inodes of every socket this process has open.
fn own_socket_inodes() -> HashSet<u64> {
    procfs::process::Process::myself()
        .and_then(|me| me.fd())
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| socket_inode(&fd.target))
                .collect()
        })
        .unwrap_or_default()
}

fn socket_inode(target: &procfs::process::FDTarget) -> Option<u64> {
    match target {
        procfs::process::FDTarget::Socket(inode) => Some(*inode),
        _ => None,
    }
}

/// The processes holding any of `inodes`, other than this one, as far as `/proc` shows.
fn holders_of(inodes: &HashSet<u64>) -> Vec<Holder> {
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(processes) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let own = std::process::id();
    let mut found = Vec::new();
    for process in processes.flatten() {
        if u32::try_from(process.pid).ok() == Some(own) {
            continue;
        }
        // Processes that end meanwhile, or whose descriptors are not ours to read, are skipped.
        let Ok(fds) = process.fd() else { continue };
        let holds = fds
            .flatten()
            .any(|fd| socket_inode(&fd.target).is_some_and(|i| inodes.contains(&i)));
        if holds {
            let name = process.stat().map(|s| s.comm).unwrap_or_default();
            found.push(Holder {
                pid: process.pid,
                name,
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_held_here_is_no_conflict_and_a_free_one_neither() {
        let (addr, _sockets) =
            super::super::bind_group("127.0.0.1:0".parse().unwrap(), 16, 2).unwrap();
        check_unheld(addr).unwrap();
        let listening = listening_inodes(addr);
        assert_eq!(listening.len(), 2, "one socket per worker");
        assert!(listening.is_subset(&own_socket_inodes()));
        assert!(
            holders_of(&listening).is_empty(),
            "only this process holds them"
        );
        drop(_sockets);
        check_unheld(addr).unwrap();
    }
}
