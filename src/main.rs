//! The `taskprof` command. It parses flags, installs signal handlers and
//! calls into the library; errors are printed with their whole chain.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;

use taskprof::agent::config::{is_usage_error, AgentConfig};
use taskprof::agent::logging;
use taskprof::cli::{Cli, Command};
use taskprof::oneshot::config::ProfileConfig;
use taskprof::{agent, oneshot};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("taskprof: error: {err:#}");
            if is_usage_error(&err) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A flag set by SIGINT and SIGTERM.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    Ok(stop)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Profile(args) => {
            let config = ProfileConfig::from_args(args)?;
            let stop = stop_flag()?;
            let path = config.output.path().to_path_buf();
            let format = config.format;
            let summary = oneshot::run(config, &stop)?;
            eprintln!("{}", oneshot::summary_line(&summary, &path, format));
            Ok(())
        }
        Command::Agent(args) => {
            let config = AgentConfig::load(args, &|name| std::env::var(name).ok())?;
            logging::init(config.observability.log_format, &config.observability.log_level)?;
            let stop = stop_flag()?;
            agent::run(config, stop)
        }
    }
}
