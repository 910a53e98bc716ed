//! Another process on a listening address: found before the first socket is bound there, so
//! a second Legate (or anything else sharing SO_REUSEPORT) cannot quietly take half the
//! connections.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};

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
/// there, even one that would let a SO_REUSEPORT socket join. Listening sockets of this
/// process (a listener being moved on reload) are not a conflict.
pub fn check_unheld(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    // As the real sockets do: connections of an earlier process in TIME_WAIT are no conflict.
    probe.set_reuse_address(true)?;
    if addr.is_ipv6() {
        probe.set_only_v6(true)?;
    }
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let holders = holders(addr);
            let own = std::process::id();
            let other = holders
                .iter()
                .find(|h| u32::try_from(h.pid).ok() != Some(own));
            match other {
                None if !holders.is_empty() => Ok(()),
                Some(h) => Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{addr} is already in use by pid {} ({})", h.pid, h.name),
                )),
                None => Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{addr} is already in use by another process"),
                )),
            }
        }
        Err(e) => Err(e),
    }
}

/// The processes with a listening TCP socket that covers `addr` (the same port, and the same
/// address or a wildcard on either side), as far as `/proc` shows them.
pub fn holders(addr: SocketAddr) -> Vec<Holder> {
    let table = if addr.is_ipv4() {
        procfs::net::tcp()
    } else {
        procfs::net::tcp6()
    };
    let Ok(table) = table else {
        return Vec::new();
    };
    let inodes: std::collections::HashSet<u64> = table
        .iter()
        .filter(|e| e.state == procfs::net::TcpState::Listen)
        .filter(|e| e.local_address.port() == addr.port())
        .filter(|e| {
            let ip = e.local_address.ip();
            ip == addr.ip() || ip.is_unspecified() || addr.ip().is_unspecified()
        })
        .map(|e| e.inode)
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(processes) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for process in processes.flatten() {
        // Processes that end meanwhile, or whose descriptors are not ours to read, are skipped.
        let Ok(fds) = process.fd() else { continue };
        let holds = fds.flatten().any(|fd| {
            matches!(fd.target, procfs::process::FDTarget::Socket(inode) if inodes.contains(&inode))
        });
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
        let own = holders(addr);
        assert!(
            own.iter()
                .any(|h| u32::try_from(h.pid).ok() == Some(std::process::id())),
            "{own:?}"
        );
        drop(_sockets);
        check_unheld(addr).unwrap();
    }
}
