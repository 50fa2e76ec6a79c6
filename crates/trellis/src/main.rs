//! The `trellis` binary: parses the command line and hands over to [`app`].
//!
//! This file owns only the CLI surface (clap derive types); it must not hold
//! any behaviour — `app.rs` wires the sub-command modules together.

mod app;
mod control;
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
    /// Run the control plane: serve the store's configuration over xDS (ADS) to every proxy.
    Control(ControlArgs),
}

#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// Directory of Istio YAML the control plane serves (watched for changes).
    #[arg(long, default_value = "./trellis-data")]
    pub store: PathBuf,
    /// Address the xDS and API listeners bind to.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
    /// xDS (ADS over gRPC, plaintext) port.
    #[arg(long, default_value_t = 15010)]
    pub xds_port: u16,
    /// Management API port (`/metrics`, `/debug/proxy-status`).
    #[arg(long, default_value_t = 8080)]
    pub api_port: u16,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Directory of Istio YAML to run.
    #[arg(default_value = "examples/quickstart")]
    pub dir: PathBuf,
    /// Admin port of the gateway proxy.
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,
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
}

fn main() -> std::process::ExitCode {
    app::main(Cli::parse())
}
