//! xDS-lite: the messages Legate proxies and the `legate-xds` control plane exchange (see
//! `PROTOCOL.md`, whose rules are cited as `R1`..), their line framing, and the control plane.

pub mod protocol;
