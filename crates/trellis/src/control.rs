//! `trellis control`: the control plane. Opens the config store (a directory of YAML or etcd),
//! serves the management API (`docs/management-api.md`, with `/metrics` and
//! `/api/v1/proxy-status`) on `--api-port`, and ADS (State of the World and Delta) on
//! `--xds-port` to every proxy (trellis-proxy, stock Envoy, proxyless gRPC).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use std::time::Duration;

use trellis_control::api::{self, Token};
use trellis_control::ca::CaConfig;
use trellis_control::ca::{CertificateAuthority, service::CertificateService};
use trellis_control::ratelimit::RateLimiter;
use trellis_control::ratelimit::redis::RedisConfig;
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
    pub ca: CaConfig,
    /// ADS and the CA over TLS (Istio's 15012), when set.
    pub secure_xds_port: Option<u16>,
    /// The global rate limit service's port and Redis, when set.
    pub ratelimit_port: Option<u16>,
    pub redis: Option<RedisConfig>,
}

impl TryFrom<crate::ControlArgs> for ControlConfig {
    type Error = anyhow::Error;

    fn try_from(args: crate::ControlArgs) -> anyhow::Result<Self> {
        let ttl = |flag: &str, v: &str| {
            parse_duration(v).map_err(|e| anyhow::anyhow!("--{flag} {v:?}: {e}"))
        };
        let ca = CaConfig {
            dir: args
                .ca_dir
                .clone()
                .unwrap_or_else(|| CaConfig::default_dir(&args.store)),
            cacerts: args.cacerts.clone(),
            trust_domain: args.trust_domain.clone(),
            workload_ttl: ttl("workload-cert-ttl", &args.workload_cert_ttl)?,
            max_workload_ttl: ttl("max-workload-cert-ttl", &args.max_workload_cert_ttl)?,
        };
        let redis = if args.redis.redis.is_empty() {
            None
        } else {
            Some(RedisConfig::try_from(&args.redis)?)
        };
        Ok(ControlConfig {
            ca,
            ratelimit_port: args.ratelimit_port,
            redis,
            secure_xds_port: args.secure_xds_port,
            store: args.store,
            address: args.address,
            xds_port: args.xds_port,
            api_port: args.api_port,
            token: args.token,
            token_file: args.token_file,
        })
    }
}

/// `90s`, `30m`, `1h`, `7d` (a whole number and one unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| "expected a whole number and a unit: 90s, 30m, 1h, 7d".to_owned())?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("unit {unit:?}: expected s, m, h or d")),
    };
    if seconds == 0 {
        return Err("must be more than zero".into());
    }
    Ok(Duration::from_secs(seconds))
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
    let secure_listener = match config.secure_xds_port {
        Some(port) => {
            let addr = SocketAddr::new(config.address, port);
            Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("bind secure xds {addr}; is another control plane running?")
            })?)
        }
        None => None,
    };
    let ratelimit_listener = match config.ratelimit_port {
        Some(port) => {
            let addr = SocketAddr::new(config.address, port);
            Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("bind rate limit service {addr}; is another one running?")
            })?)
        }
        None => None,
    };
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
    let ca = CertificateAuthority::open(config.ca.clone())
        .with_context(|| format!("certificate authority in {}", config.ca.dir.display()))?;
    let server = XdsServer::new(store.watch());
    // With --redis the control plane keeps a rate limit service: it answers quota usage on
    // the API, and ShouldRateLimit too when --ratelimit-port is given.
    let limiter = config.redis.as_ref().map(|redis| {
        let watch = store.watch();
        let limiter = RateLimiter::new(redis, &watch);
        tokio::spawn(Arc::clone(&limiter).follow(watch));
        limiter
    });
    let ratelimit = {
        let limiter = limiter.clone();
        async move {
            match (ratelimit_listener, limiter) {
                (Some(listener), Some(limiter)) => limiter.serve(listener).await,
                _ => std::future::pending().await,
            }
        }
    };
    eprintln!(
        "trellis control: store {}, xds on {}, api on {}",
        config.store,
        xds_listener.local_addr()?,
        api_listener.local_addr()?
    );
    let status: Arc<dyn ControlStatus> = server.clone();
    let secure = {
        let (server, ca) = (Arc::clone(&server), Arc::clone(&ca));
        async move {
            match secure_listener {
                Some(listener) => server.serve_secure(listener, ca).await,
                None => std::future::pending().await,
            }
        }
    };
    tokio::select! {
        r = secure => r,
        r = server.serve_with_ca(xds_listener, Some(CertificateService(Arc::clone(&ca)))) => r,
        r = ratelimit => r,
        r = api::serve_with(api_listener, store, status, token, Some(ca), limiter) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
