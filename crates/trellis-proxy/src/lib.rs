//! Trellis data plane: sidecar and gateway proxy.
//!
//! `runtime` turns xDS `Resources` into hot-path tables, `listeners` binds and serves them,
//! `proxy` carries one request from downstream to upstream, `tcp_proxy` one L4 connection,
//! `source` feeds the runtime from a directory and `xds_client` from a control plane, `memory`
//! tunes malloc, and `app` wires everything together (the only place that does).

pub mod admin;
pub mod app;
pub mod ca_client;
pub mod dns;
pub mod listeners;
pub mod memory;
pub mod proxy;
pub mod runtime;
pub mod security;
pub mod source;
pub mod tcp_proxy;
pub mod telemetry;
pub mod tls;
pub mod xds_client;
