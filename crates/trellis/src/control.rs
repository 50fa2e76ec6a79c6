//! `trellis control`: the control plane. Opens the config store (a directory of YAML or etcd),
//! serves the management API (`docs/management-api.md`, with `/metrics` and
//! `/api/v1/proxy-status`) on `--api-port`, and ADS (State of the World and Delta) on
//! `--xds-port` to every proxy (trellis-proxy, stock Envoy, proxyless gRPC).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use trellis_control::api::{self, Token};
use trellis_control::xds::XdsServer;
use trellis_control::{ControlStatus, store};

/// What `trellis control` runs with.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub store: String,
    pub address: IpAddr,
    pub xds_port: u16,
    pub api_port: u16,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
}

impl From<crate::ControlArgs> for ControlConfig {
    fn from(args: crate::ControlArgs) -> Self {
        ControlConfig {
            store: args.store,
            address: args.address,
            xds_port: args.xds_port,
            api_port: args.api_port,
            token: args.token,
            token_file: args.token_file,
        }
    }
}

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
    let store = store::open(&config.store)
        .await
        .with_context(|| format!("open store {}", config.store))?;
    let token = Arc::new(match &config.token {
        Some(t) => Token::fixed(t),
        None => {
            let path = config
                .token_file
                .clone()
                .unwrap_or_else(|| Token::default_path(&config.store));
            Token::load_or_create(&path)
                .with_context(|| format!("token file {}", path.display()))?
        }
    });
    let server = XdsServer::new(store.watch());
    eprintln!(
        "trellis control: store {}, xds on {}, api on {}",
        config.store,
        xds_listener.local_addr()?,
        api_listener.local_addr()?
    );
    let status: Arc<dyn ControlStatus> = server.clone();
    tokio::select! {
        r = server.serve(xds_listener) => r,
        r = api::serve(api_listener, store, status, token) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
