//! Starting Trellis binaries the way end-to-end tests need them: a
//! `trellis sample-app` on a free port, and a `trellis-proxy` on a config
//! directory, each returned only once it is actually serving.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::{Process, bin_path, free_port, http_get, wait_for_port, wait_until};

/// How long a binary may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts `trellis sample-app --name NAME --version VERSION` on a free port
/// and waits until it accepts connections.
pub fn sample_app(name: &str, version: &str) -> (Process, u16) {
    let port = free_port();
    (sample_app_on(port, name, version, &[]), port)
}

/// Starts `trellis sample-app --name NAME --version VERSION --port PORT EXTRA…` (e.g.
/// `--tcp-echo`, or the port of an app that was killed) and waits until it accepts connections.
pub fn sample_app_on(port: u16, name: &str, version: &str, extra: &[&str]) -> Process {
    let port_arg = port.to_string();
    let mut args = vec![
        "sample-app",
        "--name",
        name,
        "--version",
        version,
        "--port",
        &port_arg,
    ];
    args.extend_from_slice(extra);
    let mut process = Process::spawn(bin_path("trellis"), args, &[]);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if !wait_for_port(addr, START_TIMEOUT) {
        panic!(
            "sample-app {name}/{version} did not listen on {addr}: {}",
            process.describe()
        );
    }
    process
}

/// Starts `trellis-proxy --config-dir DIR --bind-address 127.0.0.1
/// --admin-port <free> ARGS…` and waits until its admin `/ready` answers 200.
/// Returns the process and its admin port.
pub fn proxy(config_dir: &Path, args: &[&str]) -> (Process, u16) {
    let admin_port = free_port();
    let admin_arg = admin_port.to_string();
    let dir = config_dir.to_string_lossy();
    let mut full_args = vec![
        "--config-dir",
        &dir,
        "--bind-address",
        "127.0.0.1",
        "--admin-port",
        &admin_arg,
    ];
    full_args.extend_from_slice(args);
    let mut process = Process::spawn(bin_path("trellis-proxy"), &full_args, &[]);
    let ready = format!("http://127.0.0.1:{admin_port}/ready");
    let is_ready = wait_until(START_TIMEOUT, || {
        http_get(&ready).0 == 200 || process.try_wait().is_some()
    });
    if !is_ready || process.try_wait().is_some() {
        panic!(
            "trellis-proxy did not become ready at {ready}: {}",
            process.describe()
        );
    }
    (process, admin_port)
}

/// A started `trellis-proxy --role sidecar`.
pub struct Sidecar {
    pub process: Process,
    pub admin: u16,
    /// Its outbound listener's port (on its `--bind-address`).
    pub outbound: u16,
}

/// Starts `trellis-proxy --role sidecar --namespace NS --labels app=SA --service-account SA
/// --bind-address BIND --app-address 127.0.0.1` with free admin, outbound and inbound ports and
/// `extra` (the config source and identity flags), and waits until `/ready` answers 200 and
/// `ready(admin)` holds.
pub fn sidecar(
    ns: &str,
    sa: &str,
    bind: &str,
    extra: &[&str],
    ready: impl Fn(u16) -> bool,
) -> Sidecar {
    let (admin, outbound, inbound) = (free_port(), free_port(), free_port());
    let (admin_arg, outbound_arg, inbound_arg) =
        (admin.to_string(), outbound.to_string(), inbound.to_string());
    let labels = format!("app={sa}");
    let mut args = vec![
        "--role",
        "sidecar",
        "--namespace",
        ns,
        "--labels",
        &labels,
        "--service-account",
        sa,
        "--bind-address",
        bind,
        "--app-address",
        "127.0.0.1",
        "--admin-port",
        &admin_arg,
        "--outbound-port",
        &outbound_arg,
        "--inbound-port",
        &inbound_arg,
    ];
    args.extend_from_slice(extra);
    let mut process = Process::spawn(bin_path("trellis-proxy"), &args, &[]);
    let url = format!("http://127.0.0.1:{admin}/ready");
    let ok = wait_until(START_TIMEOUT, || {
        (http_get(&url).0 == 200 && ready(admin)) || process.try_wait().is_some()
    });
    if !ok || process.try_wait().is_some() {
        panic!("sidecar {ns}/{sa} not ready: {}", process.describe());
    }
    Sidecar {
        process,
        admin,
        outbound,
    }
}
