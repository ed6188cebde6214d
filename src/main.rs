//! The `taskprof` command. It parses flags, installs signal handlers and
//! calls into the library; errors are printed with their whole chain.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;

use taskprof::cli::{Cli, Command};
use taskprof::config::{ConfigError, ProfileConfig};
use taskprof::oneshot;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("taskprof: error: {err:#}");
            if err.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Profile(args) => {
            let config = ProfileConfig::from_args(args)?;
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(signal, Arc::clone(&stop))?;
            }
            let path = config.output.path().to_path_buf();
            let format = config.format;
            let summary = oneshot::run(config, &stop)?;
            eprintln!("{}", oneshot::summary_line(&summary, &path, format));
            Ok(())
        }
    }
}
