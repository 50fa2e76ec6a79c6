//! `trellis up`: a whole local mesh from one directory of Istio YAML.
//!
//! Loads the directory, starts one `trellis sample-app` per static
//! 127.0.0.1 endpoint ([`plan`]), `trellis control` on a fresh store directory
//! seeded with a copy of the YAML ([`seed`]), then one `trellis-proxy` as the
//! ingress gateway subscribed to it over xDS, waits until everything serves
//! ([`probe`]), prints what to try (curl, `trellis apply`, `trellis
//! proxy-status`), and supervises the children ([`supervisor`]) until
//! Ctrl-C/SIGTERM (exit 0) or until one of them dies (its stderr is printed,
//! exit 1). This module only sequences those steps; it never leaves a child
//! running behind it.

mod plan;
mod probe;
mod seed;
mod supervisor;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::UpArgs;
use plan::Plan;
use supervisor::{Children, Exited};

/// Everything `trellis up` needs to start.
#[derive(Debug, Clone)]
pub struct UpConfig {
    pub dir: PathBuf,
    pub admin_port: u16,
    pub xds_port: u16,
    pub api_port: u16,
    pub ready_timeout: Duration,
}

/// Why the mesh stopped.
enum Stop {
    Signal(&'static str),
    ChildDied(Exited),
    NotReady(String),
}

impl From<UpArgs> for UpConfig {
    fn from(args: UpArgs) -> Self {
        UpConfig {
            dir: args.dir,
            admin_port: args.admin_port,
            xds_port: args.xds_port,
            api_port: args.api_port,
            ready_timeout: Duration::from_secs(args.ready_timeout),
        }
    }
}

/// Runs the mesh until a signal (exit 0) or a failure (exit 1).
pub async fn run(config: UpConfig) -> anyhow::Result<ExitCode> {
    let dir = std::fs::canonicalize(&config.dir).with_context(|| {
        format!(
            "{}: no such directory; pass the quickstart directory",
            config.dir.display()
        )
    })?;
    let loaded = match trellis_config::load_path(&dir) {
        Ok(loaded) => loaded,
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            anyhow::bail!(
                "{}: configuration has errors; fix them (see `trellis validate`)",
                dir.display()
            );
        }
    };
    for warning in &loaded.warnings {
        eprintln!("{warning}");
    }
    let plan = Plan::from_loaded(&loaded);
    if plan.gateway_ports.is_empty() {
        eprintln!(
            "trellis up: warning: no Gateway selects `istio: ingressgateway`; the gateway will serve nothing"
        );
    }

    // Install the handlers before any child exists, so no signal is lost.
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;

    // Dropped (and deleted) after every child has stopped, at the end of this function.
    let store = seed::seeded_store(&dir)?;
    let mut children = Children::new()?;
    let trellis = std::env::current_exe().context("locate the trellis executable")?;
    for app in &plan.apps {
        children.spawn(&app.label(), &trellis, &app.args())?;
    }
    children.spawn("control", &trellis, &control_args(store.path(), &config))?;
    let proxy = proxy_path(&trellis);
    children.spawn("gateway", &proxy, &proxy_args(&config))?;

    let app_addrs: Vec<SocketAddr> = plan.apps.iter().map(|a| a.addr()).collect();
    let admin = SocketAddr::from(([127, 0, 0, 1], config.admin_port));
    let api = SocketAddr::from(([127, 0, 0, 1], config.api_port));
    let stop = tokio::select! {
        ready = probe::wait_ready(&app_addrs, api, admin, config.ready_timeout) => match ready {
            Ok(()) => {
                print_banner(&plan, &dir, &config, store.path(), children.log_dir());
                tokio::select! {
                    exited = children.first_exit() => Stop::ChildDied(exited),
                    _ = sigint.recv() => Stop::Signal("SIGINT"),
                    _ = sigterm.recv() => Stop::Signal("SIGTERM"),
                }
            }
            Err(what) => Stop::NotReady(what),
        },
        exited = children.first_exit() => Stop::ChildDied(exited),
        _ = sigint.recv() => Stop::Signal("SIGINT"),
        _ = sigterm.recv() => Stop::Signal("SIGTERM"),
    };

    // A Ctrl-C in a terminal reaches the whole foreground process group, so a child may exit a
    // moment before our own handler sees the signal: that is a stop, not a failure.
    let stop = match stop {
        Stop::ChildDied(exited) => tokio::select! {
            _ = sigint.recv() => Stop::Signal("SIGINT"),
            _ = sigterm.recv() => Stop::Signal("SIGTERM"),
            _ = tokio::time::sleep(Duration::from_millis(300)) => Stop::ChildDied(exited),
        },
        other => other,
    };
    let code = match stop {
        Stop::Signal(name) => {
            eprintln!(
                "trellis up: {name} received; stopping {} processes",
                children.len()
            );
            ExitCode::SUCCESS
        }
        Stop::ChildDied(exited) => {
            eprintln!(
                "trellis up: {} exited early ({}); its stderr:\n{}",
                exited.name, exited.status, exited.stderr
            );
            ExitCode::FAILURE
        }
        Stop::NotReady(what) => {
            eprintln!(
                "trellis up: {what} not ready after {:?}; gateway stderr:",
                config.ready_timeout
            );
            eprintln!("{}", children.stderr_of("gateway"));
            eprintln!("trellis up: control plane stderr:");
            eprintln!("{}", children.stderr_of("control"));
            ExitCode::FAILURE
        }
    };
    children.stop_all(Duration::from_secs(3)).await;
    Ok(code)
}

/// `trellis-proxy` next to this executable, else from `PATH`.
fn proxy_path(trellis: &Path) -> PathBuf {
    trellis
        .parent()
        .map(|dir| dir.join("trellis-proxy"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("trellis-proxy"))
}

/// `trellis control` on `store`, loopback only.
fn control_args(store: &Path, config: &UpConfig) -> Vec<String> {
    let store = store.to_string_lossy().into_owned();
    let (xds, api) = (config.xds_port.to_string(), config.api_port.to_string());
    [
        "control",
        "--store",
        &store,
        "--address",
        "127.0.0.1",
        "--xds-port",
        &xds,
        "--api-port",
        &api,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The ingress gateway, subscribed to the control plane over ADS.
fn proxy_args(config: &UpConfig) -> Vec<String> {
    let admin = config.admin_port.to_string();
    let xds = format!("127.0.0.1:{}", config.xds_port);
    [
        "--xds-address",
        &xds,
        "--role",
        "gateway",
        "--labels",
        "istio=ingressgateway",
        "--namespace",
        "istio-system",
        "--bind-address",
        "127.0.0.1",
        "--admin-port",
        &admin,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn print_banner(plan: &Plan, dir: &Path, config: &UpConfig, store: &Path, logs: &Path) {
    let admin_port = config.admin_port;
    let api = format!("http://127.0.0.1:{}", config.api_port);
    let gateway = plan.gateway_ports.first().copied().unwrap_or(8080);
    let base = format!("http://127.0.0.1:{gateway}");
    println!("trellis up: mesh from {} is ready", dir.display());
    for app in &plan.apps {
        println!(
            "  {:<28}http://{}",
            format!("sample-app {}", app.label()),
            app.addr()
        );
    }
    println!(
        "  {:<28}api {api}  xds 127.0.0.1:{}  store {}",
        "control plane",
        config.xds_port,
        store.display()
    );
    println!(
        "  {:<28}{base}  (admin http://127.0.0.1:{admin_port}, config over xDS)",
        "gateway"
    );
    println!("  {:<28}{}", "logs", logs.display());
    println!();
    println!("Try:");
    println!("  curl {base}/productpage");
    println!(
        "  curl -H 'end-user: jason' {base}/reviews            # header match: always reviews v2"
    );
    println!(
        "  for i in $(seq 100); do curl -s -o /dev/null -D - {base}/reviews | grep -i x-sample-service; done | sort | uniq -c   # ~90 v1 / ~10 v3"
    );
    println!("  curl http://127.0.0.1:{admin_port}/ready");
    println!("  curl http://127.0.0.1:{admin_port}/config_dump");
    println!("  curl http://127.0.0.1:{admin_port}/stats/prometheus");
    print_apply_help(dir, &api, store);
    println!();
    println!("Press Ctrl-C to stop.");
}

/// How to change the configuration live: `trellis apply` (and `get`, `proxy-status`) against
/// this control plane, with its address and token file.
fn print_apply_help(dir: &Path, api: &str, store: &Path) {
    // As the user invoked us (e.g. `./target/release/trellis`), so the lines can be pasted.
    let trellis = std::env::args()
        .next()
        .filter(|a| a.contains('/'))
        .unwrap_or_else(|| "trellis".into());
    println!();
    println!("Change the configuration live through the control plane:");
    println!(
        "  export TRELLIS_SERVER={api} TRELLIS_TOKEN_FILE={}",
        store.join(".trellis-token").display()
    );
    println!("  {trellis} get virtualservices");
    let vs = dir.join("virtual-service.yaml");
    let jason_v2 = std::fs::read_to_string(&vs).is_ok_and(|t| t.contains("subset: v2"));
    if jason_v2 {
        println!(
            "  sed 's/subset: v2/subset: v3/' {} > /tmp/jason-v3.yaml",
            vs.display()
        );
        println!("  {trellis} apply -f /tmp/jason-v3.yaml   # jason now gets reviews v3");
    } else {
        println!("  {trellis} apply -f FILE.yaml");
    }
    println!("  {trellis} proxy-status   # the gateway: SYNCED per type");
}
