//! Wiring of the `trellis` binary: the one place that maps a parsed [`Cli`]
//! onto the sub-command modules, builds the tokio runtime and turns errors
//! into exit codes. It holds no behaviour of its own.

use std::process::ExitCode;

use crate::{Cli, Command, control, ratelimit, remote, sample_app, up, validate};

/// Runs the chosen sub-command and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Validate(args) => validate::run(&args.path),
        Command::SampleApp(args) => runtime().and_then(|rt| {
            rt.block_on(sample_app::run(sample_app::SampleAppConfig::from(args)))
                .map(|()| ExitCode::SUCCESS)
        }),
        Command::Control(args) => {
            init_logging();
            control::ControlConfig::try_from(args).and_then(|config| {
                runtime().and_then(|rt| {
                    rt.block_on(control::run(config))
                        .map(|()| ExitCode::SUCCESS)
                })
            })
        }
        Command::Up(args) => {
            runtime().and_then(|rt| rt.block_on(up::run(up::UpConfig::from(args))))
        }
        Command::Apply(args) => runtime().and_then(|rt| rt.block_on(remote::apply(&args))),
        Command::Get(args) => runtime().and_then(|rt| rt.block_on(remote::get(&args))),
        Command::Delete(args) => runtime().and_then(|rt| rt.block_on(remote::delete(&args))),
        Command::ProxyStatus(args) => {
            runtime().and_then(|rt| rt.block_on(remote::proxy_status(&args)))
        }
        Command::Token(args) => runtime().and_then(|rt| rt.block_on(remote::token_create(&args))),
        Command::Ca(args) => runtime().and_then(|rt| rt.block_on(remote::ca(&args))),
        Command::Ratelimit(args) => {
            init_logging();
            runtime().and_then(|rt| {
                rt.block_on(ratelimit::run(args))
                    .map(|()| ExitCode::SUCCESS)
            })
        }
        Command::Quota(args) => runtime().and_then(|rt| rt.block_on(remote::quota(&args))),
        Command::ProxyConfig(args) => {
            runtime().and_then(|rt| rt.block_on(remote::proxy_config(&args)))
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("trellis: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, `info` unless `RUST_LOG` says otherwise.
fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
