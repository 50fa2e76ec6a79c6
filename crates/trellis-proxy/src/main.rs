//! `trellis-proxy`: parse flags, set up logging, hand over to `app`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = trellis_proxy::app::Args::parse();
    match trellis_proxy::app::main_with(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-proxy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
