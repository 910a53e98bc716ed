//! HTTP proxying: the downstream server, routing to an action, and the upstream client.

pub mod body;
pub mod conn;
pub mod error;
pub mod headers;
pub mod idle;
pub mod proxy;
pub mod server;
mod trace;
pub mod upstream;
