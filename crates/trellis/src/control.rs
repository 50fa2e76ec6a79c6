//! `trellis control`: the control plane. Serves ADS (State of the World and Delta) on
//! `--xds-port` to every proxy (trellis-proxy, stock Envoy) and, for now, `/metrics` and
//! `/debug/proxy-status` on `--api-port`.
//!
//! Two parts of this file are TEMPORARY stand-ins, clearly marked, to be replaced at merge by
//! the `trellis_control::store` directory store and the `trellis_control::api` management API:
//! [`poll_directory`] and [`serve_debug_api`]. The xDS server itself is
//! `trellis_control::xds::XdsServer`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use trellis_control::xds::XdsServer;
use trellis_control::{ConfigState, ConfigWatch, ControlStatus};

/// What `trellis control` runs with.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub store: PathBuf,
    pub address: IpAddr,
    pub xds_port: u16,
    pub api_port: u16,
}

impl From<crate::ControlArgs> for ControlConfig {
    fn from(args: crate::ControlArgs) -> Self {
        ControlConfig {
            store: args.store,
            address: args.address,
            xds_port: args.xds_port,
            api_port: args.api_port,
        }
    }
}

/// How often the temporary directory poller looks for changes.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Runs the control plane until the xDS or API listener fails, or Ctrl-C.
pub async fn run(config: ControlConfig) -> anyhow::Result<()> {
    let xds_addr = SocketAddr::new(config.address, config.xds_port);
    let api_addr = SocketAddr::new(config.address, config.api_port);
    let xds_listener = tokio::net::TcpListener::bind(xds_addr)
        .await
        .with_context(|| format!("bind xds {xds_addr}; is another control plane running?"))?;
    let api_listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("bind api {api_addr}; is another control plane running?"))?;
    let watch = poll_directory(config.store.clone())?;
    let server = XdsServer::new(watch);
    eprintln!(
        "trellis control: store {}, xds on {}, api on {}",
        config.store.display(),
        xds_listener.local_addr()?,
        api_listener.local_addr()?
    );
    let status: Arc<dyn ControlStatus> = server.clone();
    tokio::select! {
        r = server.serve(xds_listener) => r,
        r = serve_debug_api(api_listener, status) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// TEMPORARY store stand-in (replaced at merge by the ctl-api helper's directory store):
/// loads `dir` with `trellis_config::load_path`, then re-checks it every 500 ms and reloads
/// when a file's name, size or modification time changed. A load that fails is logged with
/// every diagnostic and the last good configuration keeps being served. A missing directory
/// is created (empty configuration).
fn poll_directory(dir: PathBuf) -> anyhow::Result<ConfigWatch> {
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("create store directory {}", dir.display()))?;
    let mut fingerprint = directory_fingerprint(&dir);
    let initial = match trellis_config::load_path(&dir) {
        Ok(loaded) => ConfigState {
            revision: 1,
            loaded: Arc::new(loaded),
        },
        Err(diagnostics) => {
            tracing::error!(store = %dir.display(), "configuration rejected, serving nothing:\n{diagnostics}");
            ConfigState::default()
        }
    };
    let (tx, rx) = watch::channel(Arc::new(initial));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        loop {
            ticker.tick().await;
            let now = directory_fingerprint(&dir);
            if now == fingerprint {
                continue;
            }
            fingerprint = now;
            let path = dir.clone();
            let loaded =
                tokio::task::spawn_blocking(move || trellis_config::load_path(&path)).await;
            match loaded {
                Ok(Ok(loaded)) => {
                    let revision = tx.borrow().revision + 1;
                    tracing::info!(revision, "configuration accepted");
                    tx.send_replace(Arc::new(ConfigState {
                        revision,
                        loaded: Arc::new(loaded),
                    }));
                }
                Ok(Err(diagnostics)) => tracing::error!(
                    store = %dir.display(),
                    "configuration rejected, keeping the last good one:\n{diagnostics}"
                ),
                Err(e) => tracing::error!(error = %e, "configuration load task failed"),
            }
        }
    });
    Ok(rx)
}

/// Names, sizes and modification times of every visible file under `dir`, sorted.
fn directory_fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            // The loader skips hidden files (editors' and atomic writers' temporaries).
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else {
                out.push((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    out.sort();
    out
}

/// TEMPORARY API stand-in (replaced at merge by the ctl-api helper's management API):
/// `GET /metrics` (Prometheus text) and `GET /debug/proxy-status` (JSON) over HTTP/1.1.
async fn serve_debug_api(
    listener: tokio::net::TcpListener,
    status: Arc<dyn ControlStatus>,
) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await.context("accept api connection")?;
        let status = status.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let status = status.clone();
                async move {
                    let (code, content_type, body) = match (req.method(), req.uri().path()) {
                        (&hyper::Method::GET, "/metrics") => {
                            let mut out = String::new();
                            status.encode_metrics(&mut out);
                            (200, "text/plain; version=0.0.4; charset=utf-8", out)
                        }
                        (&hyper::Method::GET, "/debug/proxy-status") => (
                            200,
                            "application/json",
                            format!("{:#}\n", status.proxy_status()),
                        ),
                        _ => (
                            404,
                            "text/plain",
                            "not found; try /metrics or /debug/proxy-status\n".to_string(),
                        ),
                    };
                    hyper::Response::builder()
                        .status(code)
                        .header(hyper::header::CONTENT_TYPE, content_type)
                        .body(Full::new(Bytes::from(body)))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "api connection ended");
            }
        });
    }
}
