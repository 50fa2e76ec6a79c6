//! The `trellis` binary: parses the command line and hands over to [`app`].
//!
//! This file owns only the CLI surface (clap derive types); it must not hold
//! any behaviour — `app.rs` wires the sub-command modules together.

mod app;
mod control;
mod ratelimit;
mod remote;
mod sample_app;
mod up;
mod validate;

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Trellis: a service mesh that speaks Istio config and Envoy xDS.
#[derive(Debug, Parser)]
#[command(name = "trellis", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole local mesh: one sample app per 127.0.0.1 endpoint plus an ingress gateway.
    Up(UpArgs),
    /// Load a file or directory of YAML and report every error and warning.
    Validate(ValidateArgs),
    /// Run the httpbin/helloworld-like demo service (HTTP/1.1, h2c and gRPC on one port).
    SampleApp(SampleAppArgs),
    /// Create or update objects in `trellis control` from files (all or nothing).
    Apply(ApplyArgs),
    /// Show objects stored in `trellis control`.
    Get(GetArgs),
    /// Delete objects from `trellis control`.
    Delete(DeleteArgs),
    /// Show each proxy connected to `trellis control` and whether it is in sync.
    ProxyStatus(ProxyStatusArgs),
    /// Show what a proxy is running, from its admin `/config_dump`.
    ProxyConfig(ProxyConfigArgs),
    /// Run the control plane: config store, management API, and xDS (ADS) for every proxy.
    Control(ControlArgs),
    /// Bootstrap tokens: how a proxy proves its workload identity to the control plane's CA.
    Token(TokenArgs),
    /// The control plane's certificate authority: show it, rotate its root.
    Ca(CaArgs),
    /// Run the global rate limit service (Envoy's `envoy.service.ratelimit.v3`, counters in
    /// Redis) for the RateLimitPolicy and QuotaPolicy objects of a config store.
    Ratelimit(RateLimitArgs),
    /// Quota usage, read from `trellis control` (which must run with `--redis`).
    Quota(QuotaArgs),
}

#[derive(Debug, clap::Args)]
pub struct QuotaArgs {
    #[command(subcommand)]
    pub command: QuotaCommand,
}

#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Each quota of a QuotaPolicy: limit, current window, used and remaining, for one consumer.
    Get(QuotaGetArgs),
}

#[derive(Debug, clap::Args)]
pub struct QuotaGetArgs {
    /// The QuotaPolicy's name.
    pub policy: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// The consumer's value (JWT claim, API key, or source principal).
    #[arg(long)]
    pub consumer: String,
    /// Print the server's answer as JSON or YAML instead of a table.
    #[arg(short = 'o', long)]
    pub output: Option<OutputFormat>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Where the rate limit service keeps its counters.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis `HOST:PORT`; with `--redis-cluster`, seed nodes of a cluster, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub redis: Vec<String>,
    /// The Redis nodes form a Redis Cluster (slots from `CLUSTER SLOTS`, redirects followed).
    #[arg(long)]
    pub redis_cluster: bool,
    /// Bound of one Redis call: `100ms`, `1s`. Past it the check answers UNAVAILABLE and the
    /// proxy applies the policy's failure mode.
    #[arg(long, default_value = "100ms")]
    pub redis_timeout: String,
}

#[derive(Debug, clap::Args)]
pub struct RateLimitArgs {
    /// Config store to read the policies from: a directory of YAML or `etcd://HOST:PORT`.
    #[arg(long, default_value = "./trellis-data")]
    pub store: String,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Address the listeners bind to.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
    /// gRPC port of `ShouldRateLimit` (envoyproxy/ratelimit uses 8081).
    #[arg(long, default_value_t = 8081)]
    pub port: u16,
    /// Prometheus `/metrics` port (default: none).
    #[arg(long)]
    pub metrics_port: Option<u16>,
}

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token for one namespace and service account, and print it.
    Create(TokenCreateArgs),
}

#[derive(Debug, clap::Args)]
pub struct TokenCreateArgs {
    #[arg(short = 'n', long)]
    pub namespace: String,
    #[arg(long)]
    pub service_account: String,
    /// How long the token may be used: `90s`, `30m`, `1h`, `7d`.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct CaArgs {
    #[command(subcommand)]
    pub command: CaCommand,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Show the trust domain, the trusted roots and whether a rotation is under way.
    Show(CaShowArgs),
    /// Rotate the root in three steps: (no flag) create a new root and trust it next to the
    /// old one; `--activate` sign with it; `--retire` stop trusting the old one.
    Rotate(CaRotateArgs),
}

#[derive(Debug, clap::Args)]
pub struct CaShowArgs {
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct CaRotateArgs {
    /// Sign new certificates with the new root (after every proxy has renewed and so trusts it).
    #[arg(long, conflicts_with = "retire")]
    pub activate: bool,
    /// Trust only the signing root (after every certificate from the old root has expired).
    #[arg(long)]
    pub retire: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Where the management API of `trellis control` is, and how to authenticate.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Management API address of `trellis control`.
    #[arg(long, env = "TRELLIS_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Bearer token for writes (default: read from --token-file).
    #[arg(long, env = "TRELLIS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the token `trellis control` created.
    #[arg(
        long,
        env = "TRELLIS_TOKEN_FILE",
        default_value = "trellis-data/.trellis-token"
    )]
    pub token_file: PathBuf,
}

/// `-o yaml|json`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OutputFormat {
    Yaml,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// YAML file or directory (recursive; `-` reads stdin). Repeatable; all apply together.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Validate and compile on the server without writing anything.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Kind, plural or short name: VirtualService, virtualservices, vs, dr, gw, se, we, svc, ...
    pub kind: String,
    /// One object's name (default: list).
    pub name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Label selector: `app=reviews,version!=v1,tier,!canary`.
    #[arg(short = 'l', long = "selector")]
    pub selector: Option<String>,
    /// Print the objects as YAML or JSON instead of a table.
    #[arg(short = 'o', long)]
    pub output: Option<OutputFormat>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Kind, plural or short name.
    #[arg(required_unless_present = "files")]
    pub kind: Option<String>,
    #[arg(required_unless_present = "files")]
    pub name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Delete the objects these files define.
    #[arg(short = 'f', long = "filename", conflicts_with_all = ["kind", "name"])]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct ProxyStatusArgs {
    /// Print the control plane's answer as JSON or YAML instead of a table.
    #[arg(short = 'o', long)]
    pub output: Option<OutputFormat>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct ProxyConfigArgs {
    /// The proxy's admin address, e.g. 127.0.0.1:15000.
    pub admin: String,
    /// Which resources: listeners, routes, clusters, endpoints or all.
    #[arg(default_value = "all")]
    pub section: String,
    /// `json` prints the resources as the proxy reports them.
    #[arg(short = 'o', long)]
    pub output: Option<OutputFormat>,
}

#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// Config store: a directory of Istio YAML (watched for changes; API writes land there as
    /// files) or `etcd://HOST:PORT`.
    #[arg(long, default_value = "./trellis-data")]
    pub store: String,
    /// Address the xDS and API listeners bind to.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
    /// xDS (ADS over gRPC, plaintext) port.
    #[arg(long, default_value_t = 15010)]
    pub xds_port: u16,
    /// Management API port (REST API, `/openapi.json`, `/metrics`, `/api/v1/proxy-status`).
    #[arg(long, default_value_t = 8080)]
    pub api_port: u16,
    /// Also serve ADS and the CA over TLS on this port (Istio's is 15012) with a certificate
    /// from the control plane's own CA; client certificates are verified, and renew without a
    /// token. Default: off.
    #[arg(long)]
    pub secure_xds_port: Option<u16>,
    /// Bearer token required for API writes (default: read from, or created in, --token-file).
    #[arg(long, env = "TRELLIS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where the API token is kept (mode 0600; default: `.trellis-token` in the store directory,
    /// or in the working directory for etcd). Rotate it with `POST /api/v1/token/rotate`.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Trust domain of workload identities (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`).
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Lifetime of workload certificates when the CSR does not ask: `24h`, `20s`, ...
    #[arg(long, default_value = "24h")]
    pub workload_cert_ttl: String,
    /// Longest lifetime a CSR may ask for.
    #[arg(long, default_value = "90d")]
    pub max_workload_cert_ttl: String,
    /// Where the CA keeps its root and keys (mode 0700; default: `.trellis-ca` in the store
    /// directory, or in the working directory for etcd).
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,
    /// Sign with an operator's intermediate CA from a directory in Istio's `cacerts` layout
    /// (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem) instead of a self-signed root.
    #[arg(long)]
    pub cacerts: Option<PathBuf>,
    /// Also serve the global rate limit service (`ShouldRateLimit`, gRPC) on this port; needs
    /// `--redis`. Its metrics join `/metrics`, quota usage is at `/api/v1/quotas/...`.
    #[arg(long, requires = "redis")]
    pub ratelimit_port: Option<u16>,
    #[command(flatten)]
    pub redis: RedisArgs,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Directory of Istio YAML to run.
    #[arg(default_value = "examples/quickstart")]
    pub dir: PathBuf,
    /// Admin port of the gateway proxy.
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,
    /// xDS port of the control plane `trellis up` starts.
    #[arg(long, default_value_t = 15010)]
    pub xds_port: u16,
    /// Management API port of that control plane (`trellis apply --server`; not 8080, where
    /// the quickstart's gateway listens).
    #[arg(long, default_value_t = 18080)]
    pub api_port: u16,
    /// How long to wait for the gateway to become ready, in seconds.
    #[arg(long, default_value_t = 30)]
    pub ready_timeout: u64,
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// A YAML file or a directory of YAML files.
    pub path: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct SampleAppArgs {
    /// Service name reported in every answer (e.g. `reviews`).
    #[arg(long)]
    pub name: String,
    /// Service version reported in every answer (e.g. `v2`).
    #[arg(long, default_value = "v1")]
    pub version: String,
    /// Port to listen on (0 picks a free one and prints it).
    #[arg(long)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
    /// Instance id reported in every answer; defaults to `<name>-<version>-<pid>`.
    #[arg(long)]
    pub instance: Option<String>,
    /// Plain TCP line echo instead of HTTP: each line comes back as `name/version <line>`.
    #[arg(long)]
    pub tcp_echo: bool,
}

fn main() -> std::process::ExitCode {
    app::main(Cli::parse())
}
