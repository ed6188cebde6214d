//! Command-line types. They are turned into validated config structs
//! (`crate::config`) right away, so clap never leaks into the core.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// taskprof: a CPU profiler for Linux built on BPF.
#[derive(Debug, Parser)]
#[command(name = "taskprof", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Profile the host (or some processes) once and write a profile file.
    Profile(ProfileArgs),
}

/// Output formats of `taskprof profile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Gzipped pprof protobuf, for `go tool pprof`, Pyroscope, Parca.
    Pprof,
    /// Folded stacks, one `process;frame;...;frame count` line per stack.
    Folded,
    /// An SVG flame graph.
    Flamegraph,
}

/// Flags of `taskprof profile`.
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// How long to sample, e.g. `30s`, `2m`, `1m30s`. Ctrl-C ends early.
    #[arg(short, long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Samples per second on each CPU (1 to 10000).
    #[arg(short = 'F', long, default_value_t = 99, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub frequency: u64,

    /// Only sample this process (repeatable). Default: every process.
    #[arg(short, long = "pid", value_name = "PID")]
    pub pid: Vec<u32>,

    /// Where to write the profile.
    #[arg(short, long, default_value = "profile.pb.gz")]
    pub output: PathBuf,

    /// Output format. Default: from the output's extension (`.pb.gz`,
    /// `.folded`/`.txt`, `.svg`).
    #[arg(short, long)]
    pub format: Option<FormatArg>,

    /// Print libbpf's and the verifier's log when the BPF program fails to load.
    #[arg(long)]
    pub verifier_log: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|err| format!("`{text}` is not a duration ({err}); use e.g. 30s, 2m or 1m30s"))?;
    if duration.is_zero() {
        return Err("the duration must be greater than zero, e.g. 30s".to_string());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<ProfileArgs, clap::Error> {
        let mut argv = vec!["taskprof", "profile"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Profile(args) => args,
        })
    }

    #[test]
    fn defaults_are_thirty_seconds_at_99_hz_into_profile_pb_gz() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.duration, Duration::from_secs(30));
        assert_eq!(args.frequency, 99);
        assert_eq!(args.output, PathBuf::from("profile.pb.gz"));
        assert!(args.pid.is_empty() && args.format.is_none());
    }

    #[test]
    fn humantime_durations_and_repeated_pids() {
        let args = parse(&["--duration", "1m30s", "--pid", "1", "--pid", "2", "-F", "49"]).unwrap();
        assert_eq!(args.duration, Duration::from_secs(90));
        assert_eq!(args.pid, vec![1, 2]);
        assert_eq!(args.frequency, 49);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for bad in [
            &["--duration", "0s"][..],
            &["--duration", "abc"],
            &["--frequency", "0"],
            &["--frequency", "10001"],
            &["--pid", "x"],
            &["--format", "nope"],
        ] {
            let err = parse(bad).expect_err(&format!("{bad:?} accepted"));
            assert!(
                matches!(err.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue),
                "{bad:?}: {err}"
            );
            assert_eq!(err.exit_code(), 2);
        }
    }
}
