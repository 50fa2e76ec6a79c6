//! Wires the proxy together (the only place that does): flags → identity → config source →
//! runtime + listeners → admin server; marks the proxy ready once the first config is serving.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use trellis_xds::{Locality, ProxyIdentity, Role};

use crate::admin::{self, AdminState, EncodedResources};
use crate::ca_client::tls::ControlPlaneTrust;
use crate::ca_client::{CaClient, CaClientConfig};
use crate::dns::{Resolver, Servers};
use crate::listeners::Listeners;
use crate::memory;
use crate::proxy::Proxy;
use crate::runtime::Runtime;
use crate::runtime::health::HealthCheckers;
use crate::source::DirSource;
use crate::telemetry::Telemetry;
use crate::xds_client::{WARMING_TIMEOUT, XdsClient, XdsConfig, XdsMode};

/// Command-line flags (each with an environment fallback).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "trellis-proxy",
    about = "Trellis data plane: sidecar and gateway proxy",
    group(clap::ArgGroup::new("source").required(true).args(["config_dir", "xds_address"]))
)]
pub struct Args {
    /// Directory of YAML configuration to serve (standalone mode).
    #[arg(long, env = "TRELLIS_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Control plane(s) to subscribe to over ADS, `host:port[,host:port…]`, tried in turn.
    #[arg(long, env = "TRELLIS_XDS_ADDRESS", value_delimiter = ',')]
    pub xds_address: Vec<String>,
    /// ADS variant: incremental (delta) or state of the world (sotw).
    #[arg(long, env = "TRELLIS_XDS_MODE", value_enum, default_value = "delta")]
    pub xds_mode: XdsMode,
    /// gateway | sidecar
    #[arg(long, env = "TRELLIS_ROLE", default_value = "gateway")]
    pub role: String,
    #[arg(long, env = "TRELLIS_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Workload labels, `k=v,k2=v2`.
    #[arg(long, env = "TRELLIS_LABELS", default_value = "")]
    pub labels: String,
    #[arg(long, env = "TRELLIS_SERVICE_ACCOUNT", default_value = "default")]
    pub service_account: String,
    /// `region/zone/subzone`.
    #[arg(long, env = "TRELLIS_LOCALITY", default_value = "")]
    pub locality: String,
    #[arg(long, env = "TRELLIS_ADMIN_PORT", default_value_t = 15000)]
    pub admin_port: u16,
    #[arg(long, env = "TRELLIS_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: String,
    /// Worker threads (default: number of cores; 1 = single-threaded runtime).
    #[arg(long, env = "TRELLIS_CONCURRENCY")]
    pub concurrency: Option<usize>,
    #[arg(long, env = "TRELLIS_OUTBOUND_PORT", default_value_t = 15001)]
    pub outbound_port: u16,
    #[arg(long, env = "TRELLIS_INBOUND_PORT", default_value_t = 15006)]
    pub inbound_port: u16,
    #[arg(long, env = "TRELLIS_APP_ADDRESS", default_value = "127.0.0.1")]
    pub app_address: String,
    /// The control plane's CA, `host:port` (its xDS port): get the workload certificate there
    /// and keep it renewed. Default: no CA.
    #[arg(long, env = "TRELLIS_CA_ADDRESS")]
    pub ca_address: Option<String>,
    /// Bootstrap token for the CA (`trellis token create`), re-read before every request.
    #[arg(long, env = "TRELLIS_TOKEN_FILE", requires = "ca_address")]
    pub token_file: Option<PathBuf>,
    /// PEM root(s) the control plane's certificate must chain to: talk to --ca-address and
    /// --xds-address over TLS (the control plane's port 15012), presenting the workload
    /// certificate once there is one.
    #[arg(long, env = "TRELLIS_CA_ROOT")]
    pub ca_root: Option<PathBuf>,
    /// Workload certificate in Istio's file layout (`cert-chain.pem`, `key.pem`,
    /// `root-cert.pem`), re-read when it changes.
    #[arg(long, env = "TRELLIS_IDENTITY_DIR")]
    pub identity_dir: Option<PathBuf>,
    /// DNS server(s) for `resolution: DNS` hosts and passthrough, `ip:port[,ip:port…]`, in
    /// place of /etc/resolv.conf's (/etc/hosts is still read first).
    #[arg(long, env = "TRELLIS_DNS_SERVER", value_delimiter = ',')]
    pub dns_server: Vec<SocketAddr>,
}

impl Args {
    pub fn identity(&self) -> anyhow::Result<ProxyIdentity> {
        let role = match self.role.as_str() {
            "gateway" => Role::Gateway,
            "sidecar" => Role::Sidecar,
            other => anyhow::bail!("--role {other:?}: expected gateway or sidecar"),
        };
        let mut labels = BTreeMap::new();
        for kv in self
            .labels
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--labels: {kv:?} is not k=v"))?;
            labels.insert(k.trim().to_string(), v.trim().to_string());
        }
        let mut loc = self.locality.splitn(3, '/').map(str::to_string);
        let locality = Locality {
            region: loc.next().unwrap_or_default(),
            zone: loc.next().unwrap_or_default(),
            subzone: loc.next().unwrap_or_default(),
        };
        self.bind_address.parse::<IpAddr>().with_context(|| {
            format!(
                "--bind-address {:?} is not an IP address",
                self.bind_address
            )
        })?;
        let host = labels.get("app").cloned().unwrap_or_else(|| "proxy".into());
        Ok(ProxyIdentity {
            id: format!(
                "{}~{}~{host}.{}",
                self.role, self.bind_address, self.namespace
            ),
            role,
            namespace: self.namespace.clone(),
            labels,
            service_account: self.service_account.clone(),
            locality,
            bind_address: self.bind_address.clone(),
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            app_address: self.app_address.clone(),
        })
    }
}

/// Build the tokio runtime `--concurrency` asks for and run the proxy on it.
pub fn main_with(args: Args) -> anyhow::Result<()> {
    let threads = args
        .concurrency
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rt = if threads <= 1 {
        // One worker thread: one malloc arena is enough (the loader's thread shares it).
        memory::limit_arenas(1);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    rt.block_on(run(args))
}

/// How long the first configuration waits for its DNS names before the proxy is ready.
const DNS_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// The resolver `--dns-server` asks for (the system's by default), refreshing in the background.
fn start_resolver(args: &Args) -> Arc<Resolver> {
    let servers = (!args.dns_server.is_empty()).then(|| Servers {
        servers: args.dns_server.clone(),
        hosts_file: Some("/etc/hosts".into()),
    });
    let resolver = Arc::new(Resolver::new(servers));
    tokio::spawn(Arc::clone(&resolver).run());
    resolver
}

/// The first (empty) runtime, holding the resolver every later snapshot carries over.
fn initial_runtime(dns: &Arc<Resolver>) -> Runtime {
    Runtime {
        dns: Arc::clone(dns),
        ..Runtime::default()
    }
}

/// Applies configurations and, when a DNS answer changes, the running one again (so STRICT_DNS
/// clusters get the new addresses). One lock: a reapply never interleaves with an update.
struct Applier {
    listeners: Listeners,
    checkers: Option<HealthCheckers>,
    resources: Arc<ArcSwap<EncodedResources>>,
}

impl Applier {
    fn apply(
        &mut self,
        res: trellis_xds::Resources,
        encoded: EncodedResources,
    ) -> Result<(), String> {
        self.listeners.apply(res).map_err(|e| e.to_string())?;
        if let Some(c) = self.checkers.as_mut() {
            c.reconcile(&self.listeners.proxy().runtime.load());
        }
        self.resources.store(Arc::new(encoded));
        memory::trim();
        Ok(())
    }

    /// Recompile what is serving (new DNS answers); on error the running snapshot stays.
    fn reapply(&mut self) {
        let res = match self.resources.load().decode() {
            Ok(r) => r,
            Err(e) => return tracing::warn!("cannot re-read the running configuration: {e}"),
        };
        if let Err(e) = self.listeners.apply(res) {
            tracing::warn!("re-applying the configuration for new DNS answers failed: {e}");
        }
        if let Some(c) = self.checkers.as_mut() {
            c.reconcile(&self.listeners.proxy().runtime.load());
        }
    }
}

/// Re-applies the running configuration whenever `dns` reports a changed answer.
fn follow_dns(dns: &Resolver, applier: Arc<std::sync::Mutex<Applier>>) {
    let mut changed = dns.subscribe();
    tokio::spawn(async move {
        while changed.changed().await.is_ok() {
            applier.lock().unwrap_or_else(|p| p.into_inner()).reapply();
        }
    });
}

/// `--identity-dir`: load the workload certificate (an error stops start-up) and watch it.
fn install_identity(args: &Args, proxy: &Proxy) -> anyhow::Result<()> {
    if let Some(dir) = &args.identity_dir {
        crate::tls::identity_dir::install(dir.clone(), Arc::clone(&proxy.identity))
            .with_context(|| format!("--identity-dir {}", dir.display()))?;
    }
    Ok(())
}

/// Load the first config, bind, serve admin, watch for changes; returns on Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let identity = args.identity()?;
    let telemetry = Arc::new(Telemetry::new(&identity));
    let Some(config_dir) = args.config_dir.clone() else {
        return run_xds(args, identity, telemetry).await;
    };
    let source = DirSource {
        dir: config_dir.clone(),
        identity,
    };
    let fingerprint = source.fingerprint();
    let first = {
        let s = source.clone();
        tokio::task::spawn_blocking(move || s.load()).await?
    };
    let first = match first {
        Ok(r) => r,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            anyhow::bail!(
                "config {} has {} error(s); nothing to serve",
                config_dir.display(),
                errors.len()
            );
        }
    };
    let dns = start_resolver(&args);
    let proxy = Arc::new(Proxy::new(initial_runtime(&dns), Arc::clone(&telemetry)));
    start_ca_client(&args, &proxy)?;
    install_identity(&args, &proxy)?;
    let weak = Arc::downgrade(&proxy);
    telemetry.upstream.install(Box::new(move |endpoints| {
        weak.upgrade().map_or_else(Vec::new, |p| {
            crate::runtime::outlier::health_report(&p.runtime.load(), endpoints)
        })
    }));
    let mut listeners = Listeners::new(Arc::clone(&proxy));
    let mut checkers = HealthCheckers::default();
    // Keep the encoded copy for /config_dump first; applying consumes the messages.
    let resources = Arc::new(ArcSwap::from_pointee(EncodedResources::from(&first)));
    listeners.apply(first)?;
    checkers.reconcile(&proxy.runtime.load());
    memory::trim();
    let applier = Arc::new(std::sync::Mutex::new(Applier {
        listeners,
        checkers: Some(checkers),
        resources: Arc::clone(&resources),
    }));
    // STRICT_DNS clusters warm: their first answers are in before the proxy is ready.
    if dns.settle(DNS_SETTLE).await {
        applier.lock().unwrap_or_else(|p| p.into_inner()).reapply();
    }
    follow_dns(&dns, Arc::clone(&applier));
    let ready = Arc::new(AtomicBool::new(false));
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], args.admin_port));
    let state = AdminState {
        telemetry,
        resources: Arc::clone(&resources),
        ready: Arc::clone(&ready),
        xds: None,
        identity: Arc::clone(&proxy.identity),
    };
    let admin_task = tokio::spawn(admin::serve(admin_addr, state));
    let mut bound: Vec<String> = applier
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .listeners
        .bound()
        .into_iter()
        .map(|(n, a)| format!("{n}={a}"))
        .collect();
    bound.sort();
    ready.store(true, Ordering::Release);
    eprintln!(
        "trellis-proxy ready: listeners [{}] admin {admin_addr}",
        bound.join(", ")
    );
    let watcher = source.watch(fingerprint, move |res| {
        let encoded = EncodedResources::from(&res);
        applier
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(res, encoded)
    });
    tokio::select! {
        _ = watcher => Ok(()),
        r = admin_task => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!("admin {admin_addr}: {e}; is another proxy running?")),
            Err(e) => Err(e.into()),
        },
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}

/// TLS trust in the control plane (`--ca-root`), presenting `proxy`'s workload certificate.
fn control_plane_trust(args: &Args, proxy: &Proxy) -> anyhow::Result<Option<ControlPlaneTrust>> {
    args.ca_root
        .as_deref()
        .map(|roots| ControlPlaneTrust::load(roots, Arc::clone(&proxy.identity)))
        .transpose()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Starts the certificate client (filling `proxy.identity`) when `--ca-address` is given.
fn start_ca_client(args: &Args, proxy: &Proxy) -> anyhow::Result<()> {
    let Some(address) = args.ca_address.as_deref().map(str::trim) else {
        return Ok(());
    };
    let port = address.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
    anyhow::ensure!(
        matches!(port, Some(Ok(p)) if p != 0),
        "--ca-address {address:?} is not host:port (e.g. 127.0.0.1:15010)"
    );
    let token_file = args.token_file.clone().context(
        "--ca-address needs --token-file: a bootstrap token from `trellis token create`",
    )?;
    let tls = control_plane_trust(args, proxy)?
        .map(|trust| trust.connector(address))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--ca-address: {e}"))?;
    let client = CaClient::new(
        CaClientConfig {
            address: address.to_owned(),
            token_file,
            requested_ttl: std::time::Duration::ZERO,
            tls,
        },
        Arc::clone(&proxy.identity),
        proxy.telemetry.certs.clone(),
    );
    tokio::spawn(client.run());
    Ok(())
}

/// Control-plane mode: serve admin at once (not ready), subscribe over ADS, apply each complete
/// update; ready once the first one is serving. Returns on Ctrl-C.
async fn run_xds(
    args: Args,
    identity: ProxyIdentity,
    telemetry: Arc<Telemetry>,
) -> anyhow::Result<()> {
    let addresses: Vec<String> = args
        .xds_address
        .iter()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect();
    anyhow::ensure!(
        !addresses.is_empty(),
        "--xds-address is empty; give host:port of the control plane"
    );
    for a in &addresses {
        let port = a.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
        anyhow::ensure!(
            matches!(port, Some(Ok(p)) if p != 0),
            "--xds-address {a:?} is not host:port (e.g. istiod.istio-system.svc:15010)"
        );
    }
    let dns = start_resolver(&args);
    let proxy = Arc::new(Proxy::new(initial_runtime(&dns), Arc::clone(&telemetry)));
    let client = XdsClient::new(
        XdsConfig {
            addresses,
            mode: args.xds_mode,
            node: identity.to_node(),
            warming_timeout: WARMING_TIMEOUT,
            tls: control_plane_trust(&args, &proxy)?,
        },
        telemetry.xds.clone(),
    );
    start_ca_client(&args, &proxy)?;
    install_identity(&args, &proxy)?;
    let identity = Arc::clone(&proxy.identity);
    let resources = Arc::new(ArcSwap::from_pointee(EncodedResources::default()));
    let applier = Arc::new(std::sync::Mutex::new(Applier {
        listeners: Listeners::new(proxy),
        checkers: None,
        resources: Arc::clone(&resources),
    }));
    follow_dns(&dns, Arc::clone(&applier));
    let ready = Arc::new(AtomicBool::new(false));
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], args.admin_port));
    let state = AdminState {
        telemetry,
        resources: Arc::clone(&resources),
        ready: Arc::clone(&ready),
        xds: Some(client.status()),
        identity,
    };
    let admin_task = tokio::spawn(admin::serve(admin_addr, state));
    let subscription = client.run(move |res, encoded| {
        let mut applier = applier.lock().unwrap_or_else(|p| p.into_inner());
        applier.apply(res, encoded)?;
        if !ready.swap(true, Ordering::AcqRel) {
            let mut bound: Vec<String> = applier
                .listeners
                .bound()
                .into_iter()
                .map(|(n, a)| format!("{n}={a}"))
                .collect();
            bound.sort();
            eprintln!(
                "trellis-proxy ready: listeners [{}] admin {admin_addr}",
                bound.join(", ")
            );
        }
        Ok(())
    });
    tokio::select! {
        () = subscription => Ok(()),
        r = admin_task => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!("admin {admin_addr}: {e}; is another proxy running?")),
            Err(e) => Err(e.into()),
        },
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}
