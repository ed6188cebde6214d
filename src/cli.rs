//! Command-line types and the text forms of their values. They are turned
//! into validated config structs (`crate::oneshot::config`, `crate::agent::config`)
//! right away, so clap never leaks into the core.
//!
//! The `parse_*` functions here are the one definition of each setting's
//! text form: clap uses them for flags, and the agent's configuration uses
//! them again for environment variables and its YAML file, so a value means
//! the same thing wherever it is written.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::agent::logging::LogFormat;
use crate::agent::settings;
use crate::upload::{Compression, Protocol};

/// taskprof: a CPU profiler for Linux built on BPF.
#[derive(Debug, Parser)]
#[command(name = "taskprof", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
// The agent's flags make its variant big; a `Command` is built once per run,
// so boxing it would only add noise where it is matched.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Profile the host (or some processes) once and write a profile file.
    Profile(ProfileArgs),
    /// Profile continuously and upload one profile per window to Pyroscope,
    /// Parca or a directory.
    #[command(after_long_help = AGENT_SOURCES_HELP)]
    Agent(AgentArgs),
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

/// How user stacks are walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UnwindArg {
    /// Unwind tables from each binary's .eh_frame, walked in BPF; frame
    /// pointers where no table covers the code (JIT).
    Dwarf,
    /// Frame pointers only, walked by the kernel: stacks stop at the first
    /// function built without them.
    Fp,
}

/// Parses `--unwind`.
pub(crate) fn parse_unwind(text: &str) -> Result<UnwindArg, String> {
    match text.trim() {
        "dwarf" => Ok(UnwindArg::Dwarf),
        "fp" => Ok(UnwindArg::Fp),
        other => Err(format!("`{other}` is not an unwinder; use `dwarf` or `fp`")),
    }
}

/// Parses `--python`.
pub(crate) fn parse_switch(text: &str) -> Result<SwitchArg, String> {
    match text.trim() {
        "on" => Ok(SwitchArg::On),
        "off" => Ok(SwitchArg::Off),
        other => Err(format!("`{other}` is neither `on` nor `off`")),
    }
}

/// Default `--unwind-table-memory`.
pub const DEFAULT_UNWIND_TABLE_MEMORY: u64 = 64 << 20;

/// Flags of `taskprof profile`.
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// How long to sample, e.g. `30s`, `2m`, `1m30s`. Ctrl-C ends early.
    #[arg(short, long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Samples per second on each CPU (1 to 10000).
    #[arg(short = 'F', long, default_value_t = 99, value_parser = parse_frequency)]
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

    /// How to walk user stacks: `dwarf` (.eh_frame unwind tables, for code
    /// built without frame pointers) or `fp` (frame pointers only).
    #[arg(long, value_enum, default_value = "dwarf")]
    pub unwind: UnwindArg,

    /// Kernel memory for unwind tables (e.g. 64MiB). Tables that do not fit
    /// are counted and their code falls back to frame pointers.
    #[arg(long, value_name = "BYTES", default_value = "64MiB", value_parser = parse_byte_size)]
    pub unwind_table_memory: u64,

    /// Name the Python functions of CPython 3.8-3.13 processes (`on`), or
    /// leave their stacks native (`off`).
    #[arg(long, value_enum, default_value = "on")]
    pub python: SwitchArg,

    /// Keep the samples of idle CPUs (the idle task, pid 0, shown as
    /// `swapper`), as perf does. By default they are counted but left out.
    #[arg(long)]
    pub include_idle: bool,
}

/// A feature turned on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SwitchArg {
    /// On.
    On,
    /// Off.
    Off,
}

const AGENT_SOURCES_HELP: &str = "\
Every flag can also be set by an environment variable, TASKPROF_ and the flag's name in upper \
snake case (TASKPROF_UPLOAD_URL, TASKPROF_FREQUENCY; repeatable flags take a comma-separated \
list, e.g. TASKPROF_LABEL=team=infra,env=prod), or by a key in the --config YAML file, the \
flag's name in snake case (upload_url: http://pyroscope:4040). The repeatable flags are the maps \
`labels` and `headers` and the list `pids` there. A flag wins over the environment, which wins \
over the file, which wins over the defaults.";

/// Flags of `taskprof agent`.
///
/// None has a clap default: a flag left out must fall through to the
/// environment and then the YAML file, so the defaults are applied by
/// `crate::agent::config` after all three have been consulted.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// See [`settings::CONFIG`].
    #[arg(long = settings::CONFIG.flag, value_name = "FILE", help = settings::CONFIG.help_text())]
    pub config: Option<PathBuf>,

    /// See [`settings::FREQUENCY`].
    #[arg(short = 'F', long = settings::FREQUENCY.flag, value_name = "HZ", value_parser = parse_frequency, help = settings::FREQUENCY.help_text())]
    pub frequency: Option<u64>,

    /// See [`settings::WINDOW`].
    #[arg(long = settings::WINDOW.flag, value_name = "DURATION", value_parser = parse_window, help = settings::WINDOW.help_text())]
    pub window: Option<Duration>,

    /// See [`settings::PID`].
    #[arg(short, long = settings::PID.flag, value_name = "PID", help = settings::PID.help_text())]
    pub pid: Vec<u32>,

    /// See [`settings::VERIFIER_LOG`].
    #[arg(long = settings::VERIFIER_LOG.flag, help = settings::VERIFIER_LOG.help_text())]
    pub verifier_log: bool,

    /// See [`settings::DEBUG_INFO`].
    #[arg(long = settings::DEBUG_INFO.flag, help = settings::DEBUG_INFO.help_text())]
    pub debug_info: bool,

    /// See [`settings::UNWIND`].
    #[arg(long = settings::UNWIND.flag, value_name = "UNWINDER", value_parser = parse_unwind, help = settings::UNWIND.help_text())]
    pub unwind: Option<UnwindArg>,

    /// See [`settings::UNWIND_TABLE_MEMORY`].
    #[arg(long = settings::UNWIND_TABLE_MEMORY.flag, value_name = "BYTES", value_parser = parse_byte_size, help = settings::UNWIND_TABLE_MEMORY.help_text())]
    pub unwind_table_memory: Option<u64>,

    /// See [`settings::SYMBOL_CACHE_MEMORY`].
    #[arg(long = settings::SYMBOL_CACHE_MEMORY.flag, value_name = "BYTES", value_parser = parse_byte_size, help = settings::SYMBOL_CACHE_MEMORY.help_text())]
    pub symbol_cache_memory: Option<u64>,

    /// See [`settings::PYTHON`].
    #[arg(long = settings::PYTHON.flag, value_name = "SWITCH", value_parser = parse_switch, help = settings::PYTHON.help_text())]
    pub python: Option<SwitchArg>,

    /// See [`settings::INCLUDE_IDLE`].
    #[arg(long = settings::INCLUDE_IDLE.flag, help = settings::INCLUDE_IDLE.help_text())]
    pub include_idle: bool,

    /// Kubernetes metadata and filters.
    #[command(flatten)]
    pub kubernetes: KubernetesArgs,

    /// Where profiles go, and how.
    #[command(flatten)]
    pub upload: UploadArgs,

    /// Undeliverable profiles and backpressure.
    #[command(flatten)]
    pub delivery: DeliveryArgs,

    /// What each profile is labelled with.
    #[command(flatten)]
    pub identity: IdentityArgs,

    /// The agent's own metrics and logs.
    #[command(flatten)]
    pub observability: ObservabilityArgs,
}

/// The backend and how to reach it.
#[derive(Debug, Args)]
#[command(next_help_heading = "Upload")]
pub struct UploadArgs {
    /// See [`settings::UPLOAD_URL`].
    #[arg(long = settings::UPLOAD_URL.flag, value_name = "URL", help = settings::UPLOAD_URL.help_text())]
    pub upload_url: Option<String>,

    /// See [`settings::UPLOAD_PROTOCOL`].
    #[arg(long = settings::UPLOAD_PROTOCOL.flag, value_name = "PROTOCOL", value_parser = parse_protocol, help = settings::UPLOAD_PROTOCOL.help_text())]
    pub upload_protocol: Option<Protocol>,

    /// See [`settings::UPLOAD_COMPRESSION`].
    #[arg(long = settings::UPLOAD_COMPRESSION.flag, value_name = "COMPRESSION", value_parser = parse_compression, help = settings::UPLOAD_COMPRESSION.help_text())]
    pub upload_compression: Option<Compression>,

    /// See [`settings::UPLOAD_TIMEOUT`].
    #[arg(long = settings::UPLOAD_TIMEOUT.flag, value_name = "DURATION", value_parser = parse_duration, help = settings::UPLOAD_TIMEOUT.help_text())]
    pub upload_timeout: Option<Duration>,

    /// See [`settings::UPLOAD_CONCURRENCY`].
    #[arg(long = settings::UPLOAD_CONCURRENCY.flag, value_name = "N", value_parser = parse_upload_concurrency, help = settings::UPLOAD_CONCURRENCY.help_text())]
    pub upload_concurrency: Option<usize>,

    /// See [`settings::BEARER_TOKEN_FILE`].
    #[arg(long = settings::BEARER_TOKEN_FILE.flag, value_name = "FILE", help = settings::BEARER_TOKEN_FILE.help_text())]
    pub bearer_token_file: Option<PathBuf>,

    /// See [`settings::BASIC_AUTH_USER`].
    #[arg(long = settings::BASIC_AUTH_USER.flag, value_name = "USER", help = settings::BASIC_AUTH_USER.help_text())]
    pub basic_auth_user: Option<String>,

    /// See [`settings::BASIC_AUTH_PASSWORD_FILE`].
    #[arg(long = settings::BASIC_AUTH_PASSWORD_FILE.flag, value_name = "FILE", help = settings::BASIC_AUTH_PASSWORD_FILE.help_text())]
    pub basic_auth_password_file: Option<PathBuf>,

    /// See [`settings::HEADER`].
    #[arg(long = settings::HEADER.flag, value_name = "NAME:VALUE", help = settings::HEADER.help_text())]
    pub header: Vec<String>,

    /// See [`settings::TLS_CA_FILE`].
    #[arg(long = settings::TLS_CA_FILE.flag, value_name = "FILE", help = settings::TLS_CA_FILE.help_text())]
    pub tls_ca_file: Option<PathBuf>,

    /// See [`settings::TLS_INSECURE_SKIP_VERIFY`].
    #[arg(long = settings::TLS_INSECURE_SKIP_VERIFY.flag, help = settings::TLS_INSECURE_SKIP_VERIFY.help_text())]
    pub tls_insecure_skip_verify: bool,
}

/// The spool, the queue and shutdown.
#[derive(Debug, Args)]
#[command(next_help_heading = "Delivery")]
pub struct DeliveryArgs {
    /// See [`settings::SPOOL_DIR`].
    #[arg(long = settings::SPOOL_DIR.flag, value_name = "DIR", help = settings::SPOOL_DIR.help_text())]
    pub spool_dir: Option<PathBuf>,

    /// See [`settings::SPOOL_MAX_BYTES`].
    #[arg(long = settings::SPOOL_MAX_BYTES.flag, value_name = "BYTES", value_parser = parse_byte_size, help = settings::SPOOL_MAX_BYTES.help_text())]
    pub spool_max_bytes: Option<u64>,

    /// See [`settings::QUEUE_CAPACITY`].
    #[arg(long = settings::QUEUE_CAPACITY.flag, value_name = "N", value_parser = parse_queue_capacity, help = settings::QUEUE_CAPACITY.help_text())]
    pub queue_capacity: Option<usize>,

    /// See [`settings::SHUTDOWN_GRACE`].
    #[arg(long = settings::SHUTDOWN_GRACE.flag, value_name = "DURATION", value_parser = parse_grace, help = settings::SHUTDOWN_GRACE.help_text())]
    pub shutdown_grace: Option<Duration>,
}

/// Series labels.
#[derive(Debug, Args)]
#[command(next_help_heading = "Labels")]
pub struct IdentityArgs {
    /// See [`settings::SERVICE_NAME`].
    #[arg(long = settings::SERVICE_NAME.flag, value_name = "NAME", help = settings::SERVICE_NAME.help_text())]
    pub service_name: Option<String>,

    /// See [`settings::NODE_NAME`].
    #[arg(long = settings::NODE_NAME.flag, value_name = "NAME", help = settings::NODE_NAME.help_text())]
    pub node_name: Option<String>,

    /// See [`settings::LABEL`].
    #[arg(long = settings::LABEL.flag, value_name = "NAME=VALUE", value_parser = parse_label, help = settings::LABEL.help_text())]
    pub label: Vec<(String, String)>,

    /// See [`settings::SERIES_PER_PROCESS`].
    #[arg(long = settings::SERIES_PER_PROCESS.flag, help = settings::SERIES_PER_PROCESS.help_text())]
    pub series_per_process: bool,
}

/// Kubernetes metadata and filters.
#[derive(Debug, Args)]
#[command(next_help_heading = "Kubernetes")]
pub struct KubernetesArgs {
    /// See [`settings::KUBERNETES`].
    #[arg(long = settings::KUBERNETES.flag, help = settings::KUBERNETES.help_text())]
    pub kubernetes: bool,

    /// See [`settings::KUBERNETES_API_URL`].
    #[arg(long = settings::KUBERNETES_API_URL.flag, value_name = "URL", value_parser = parse_http_url, help = settings::KUBERNETES_API_URL.help_text())]
    pub kubernetes_api_url: Option<url::Url>,

    /// See [`settings::KUBERNETES_TOKEN_FILE`].
    #[arg(long = settings::KUBERNETES_TOKEN_FILE.flag, value_name = "FILE", help = settings::KUBERNETES_TOKEN_FILE.help_text())]
    pub kubernetes_token_file: Option<PathBuf>,

    /// See [`settings::KUBERNETES_CA_FILE`].
    #[arg(long = settings::KUBERNETES_CA_FILE.flag, value_name = "FILE", help = settings::KUBERNETES_CA_FILE.help_text())]
    pub kubernetes_ca_file: Option<PathBuf>,

    /// See [`settings::NAMESPACE`].
    #[arg(long = settings::NAMESPACE.flag, value_name = "NAMESPACE", help = settings::NAMESPACE.help_text())]
    pub namespace: Vec<String>,

    /// See [`settings::EXCLUDE_NAMESPACE`].
    #[arg(long = settings::EXCLUDE_NAMESPACE.flag, value_name = "NAMESPACE", help = settings::EXCLUDE_NAMESPACE.help_text())]
    pub exclude_namespace: Vec<String>,

    /// See [`settings::POD_SELECTOR`].
    #[arg(long = settings::POD_SELECTOR.flag, value_name = "SELECTOR", value_parser = parse_selector, help = settings::POD_SELECTOR.help_text())]
    pub pod_selector: Option<crate::kubernetes::LabelSelector>,

    /// See [`settings::CONTAINER_ID`].
    #[arg(long = settings::CONTAINER_ID.flag, value_name = "ID", help = settings::CONTAINER_ID.help_text())]
    pub container_id: Vec<String>,

    /// See [`settings::HOST_PROCESSES`].
    #[arg(long = settings::HOST_PROCESSES.flag, value_name = "KEEP|DROP", value_parser = parse_keep_drop, help = settings::HOST_PROCESSES.help_text())]
    pub host_processes: Option<bool>,

    /// See [`settings::SERVICE_NAME_LABEL`].
    #[arg(long = settings::SERVICE_NAME_LABEL.flag, value_name = "LABEL", help = settings::SERVICE_NAME_LABEL.help_text())]
    pub service_name_label: Option<String>,

    /// See [`settings::POD_LABEL`].
    #[arg(long = settings::POD_LABEL.flag, value_name = "LABEL", help = settings::POD_LABEL.help_text())]
    pub pod_label: Vec<String>,

    /// Where to read `PID/cgroup` files from, for tests. [default: /proc]
    #[arg(long, value_name = "DIR", hide = true)]
    pub cgroup_proc_root: Option<PathBuf>,
}

/// Metrics endpoint and logging.
#[derive(Debug, Args)]
#[command(next_help_heading = "Observability")]
pub struct ObservabilityArgs {
    /// See [`settings::METRICS_ADDRESS`].
    #[arg(long = settings::METRICS_ADDRESS.flag, value_name = "IP:PORT", value_parser = parse_socket_addr, help = settings::METRICS_ADDRESS.help_text())]
    pub metrics_address: Option<SocketAddr>,

    /// See [`settings::LOG_FORMAT`].
    #[arg(long = settings::LOG_FORMAT.flag, value_name = "FORMAT", value_parser = LogFormat::from_str, help = settings::LOG_FORMAT.help_text())]
    pub log_format: Option<LogFormat>,

    /// See [`settings::LOG_LEVEL`].
    #[arg(long = settings::LOG_LEVEL.flag, value_name = "FILTER", help = settings::LOG_LEVEL.help_text())]
    pub log_level: Option<String>,
}

/// A duration greater than zero, e.g. `30s`, `2m`, `1m30s`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_grace(text)?;
    if duration.is_zero() {
        return Err("the duration must be greater than zero, e.g. 30s".to_string());
    }
    Ok(duration)
}

/// Any duration, zero included.
pub(crate) fn parse_grace(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|err| format!("`{text}` is not a duration ({err}); use e.g. 30s, 2m or 1m30s"))
}

/// A profiling window: profiles shorter than a second are mostly noise at
/// the sampling frequencies taskprof allows, and cost an upload each.
pub(crate) fn parse_window(text: &str) -> Result<Duration, String> {
    let window = parse_grace(text)?;
    if window < Duration::from_secs(1) {
        return Err("the window is shorter than a second; use e.g. 10s".to_string());
    }
    Ok(window)
}

/// Samples per second on each CPU.
pub(crate) fn parse_frequency(text: &str) -> Result<u64, String> {
    parse_in_range(text, 1, 10_000)
}

pub(crate) fn parse_upload_concurrency(text: &str) -> Result<usize, String> {
    parse_in_range(text, 1, 64)
}

pub(crate) fn parse_queue_capacity(text: &str) -> Result<usize, String> {
    parse_in_range(text, 1, 1 << 20)
}

fn parse_in_range<T>(text: &str, low: T, high: T) -> Result<T, String>
where
    T: FromStr + PartialOrd + std::fmt::Display,
{
    let value: T = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number; use one from {low} to {high}"))?;
    if value < low || value > high {
        return Err(format!("{value} is out of range; use one from {low} to {high}"));
    }
    Ok(value)
}

/// A process id.
pub(crate) fn parse_pid(text: &str) -> Result<u32, String> {
    text.trim().parse().map_err(|_| format!("`{text}` is not a process id"))
}

/// A request body compression.
pub(crate) fn parse_compression(text: &str) -> Result<Compression, String> {
    match text {
        "gzip" => Ok(Compression::Gzip),
        "none" => Ok(Compression::None),
        _ => Err(format!("unknown compression `{text}`; use gzip or none")),
    }
}

/// A backend protocol.
pub(crate) fn parse_protocol(text: &str) -> Result<Protocol, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "pyroscope" => Ok(Protocol::Pyroscope),
        "parca" => Ok(Protocol::Parca),
        "file" => Ok(Protocol::File),
        "otlp" => Ok(Protocol::Otlp),
        "otlp-grpc" => Ok(Protocol::OtlpGrpc),
        _ => Err(format!(
            "unknown protocol `{text}`; use pyroscope, parca, otlp, otlp-grpc or file"
        )),
    }
}

/// A size in bytes: a plain number, or a number with a binary (`Ki`, `Mi`,
/// `Gi`, `Ti`) or decimal (`K`, `M`, `G`, `T`) suffix, optionally followed
/// by `B`.
pub(crate) fn parse_byte_size(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a size; use bytes or e.g. 256Mi, 1Gi");
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(split);
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let suffix = suffix.trim_start();
    let suffix = suffix
        .strip_suffix('B')
        .or_else(|| suffix.strip_suffix('b'))
        .unwrap_or(suffix);
    let unit: u64 = match suffix.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" => 1_000,
        "m" => 1_000_000,
        "g" => 1_000_000_000,
        "t" => 1_000_000_000_000,
        "ki" => 1 << 10,
        "mi" => 1 << 20,
        "gi" => 1 << 30,
        "ti" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = number
        .checked_mul(unit)
        .ok_or_else(|| format!("`{text}` is too large"))?;
    if bytes == 0 {
        return Err("the size must be greater than zero".to_string());
    }
    Ok(bytes)
}

/// A `name=value` label.
pub(crate) fn parse_label(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("label `{text}` has no `=`; write it as name=value"))?;
    check_label(name.trim(), value.trim())
}

/// Label names the agent sets itself, or that Prometheus-style backends
/// treat specially; a user label of the same name would clash with them.
const RESERVED_LABELS: [&str; 5] = ["service_name", "__name__", "pid", "node", "comm"];

/// Checks a label: a Prometheus-valid name (`[a-zA-Z_][a-zA-Z0-9_]*`) that
/// is not reserved, and a non-empty value.
pub(crate) fn check_label(name: &str, value: &str) -> Result<(String, String), String> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "label name `{name}` is not valid; use letters, digits and `_`, not starting with a digit"
        ));
    }
    if RESERVED_LABELS.contains(&name) || name.starts_with("__") {
        return Err(format!(
            "label name `{name}` is reserved (taskprof sets service_name, node, pid and comm itself, \
             and names starting with __ belong to the backend); choose another name"
        ));
    }
    if value.is_empty() {
        return Err(format!("label `{name}` has an empty value"));
    }
    Ok((name.to_string(), value.to_string()))
}

/// An `ip:port` socket address.
pub(crate) fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("`{text}` is not an ip:port address; use e.g. 127.0.0.1:7071 or [::]:7071"))
}

/// A boolean, as environment variables and YAML spell it (flags are
/// switches and need no text form).
pub(crate) fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("`{text}` is not a boolean; use true or false")),
    }
}

/// A Kubernetes label selector, e.g. `app=web,tier!=cache`.
pub(crate) fn parse_selector(text: &str) -> Result<crate::kubernetes::LabelSelector, String> {
    crate::kubernetes::LabelSelector::parse(text.trim()).map_err(|err| err.to_string())
}

/// An http(s) URL.
pub(crate) fn parse_http_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text.trim()).map_err(|err| format!("`{}` is not a URL ({err})", text.trim()))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!("the scheme must be http or https, not `{other}`")),
    }
}

/// `keep` or `drop`, as a bool meaning keep.
pub(crate) fn parse_keep_drop(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "keep" => Ok(true),
        "drop" => Ok(false),
        other => Err(format!("`{other}` is neither keep nor drop")),
    }
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
            Command::Agent(_) => unreachable!("parsed `profile` as `agent`"),
        })
    }

    fn parse_agent(args: &[&str]) -> Result<AgentArgs, clap::Error> {
        let mut argv = vec!["taskprof", "agent"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Agent(args) => args,
            Command::Profile(_) => unreachable!("parsed `agent` as `profile`"),
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

    #[test]
    fn agent_flags_left_out_stay_unset_so_env_and_yaml_can_fill_them() {
        let args = parse_agent(&[]).unwrap();
        assert!(args.frequency.is_none() && args.window.is_none() && args.config.is_none());
        assert!(args.upload.upload_url.is_none() && args.upload.upload_protocol.is_none());
        assert!(args.identity.label.is_empty() && args.upload.header.is_empty());
        assert!(!args.upload.tls_insecure_skip_verify && !args.verifier_log);
    }

    #[test]
    fn agent_flags_parse_into_typed_values() {
        let args = parse_agent(&[
            "--upload-url",
            "http://pyroscope:4040",
            "--upload-protocol",
            "parca",
            "--window",
            "1m",
            "-F",
            "49",
            "--label",
            "team=infra",
            "--label",
            "env = prod",
            "--header",
            "X-Scope-OrgID: t1",
            "--spool-max-bytes",
            "1Gi",
            "--metrics-address",
            "[::]:9000",
            "--log-format",
            "json",
            "--tls-insecure-skip-verify",
        ])
        .unwrap();
        assert_eq!(args.upload.upload_url.as_deref(), Some("http://pyroscope:4040"));
        assert_eq!(args.upload.upload_protocol, Some(Protocol::Parca));
        assert_eq!(args.window, Some(Duration::from_secs(60)));
        assert_eq!(args.frequency, Some(49));
        assert_eq!(
            args.identity.label,
            vec![("team".into(), "infra".into()), ("env".into(), "prod".into())]
        );
        assert_eq!(args.upload.header, vec!["X-Scope-OrgID: t1".to_string()]);
        assert_eq!(args.delivery.spool_max_bytes, Some(1 << 30));
        assert_eq!(args.observability.metrics_address, Some("[::]:9000".parse().unwrap()));
        assert_eq!(args.observability.log_format, Some(LogFormat::Json));
        assert!(args.upload.tls_insecure_skip_verify);
    }

    #[test]
    fn bad_agent_flags_are_usage_errors_naming_the_flag() {
        for (bad, flag) in [
            (&["--frequency", "0"][..], "--frequency"),
            (&["--window", "500ms"], "--window"),
            (&["--upload-protocol", "otlp-http"], "--upload-protocol"),
            (&["--upload-compression", "zstd"], "--upload-compression"),
            (&["--upload-concurrency", "65"], "--upload-concurrency"),
            (&["--label", "1x=y"], "--label"),
            (&["--label", "pid=7"], "--label"),
            (&["--metrics-address", "localhost"], "--metrics-address"),
            (&["--log-format", "xml"], "--log-format"),
            (&["--spool-max-bytes", "12Qi"], "--spool-max-bytes"),
        ] {
            let err = parse_agent(bad).expect_err(&format!("{bad:?} accepted"));
            assert_eq!(err.exit_code(), 2, "{bad:?}");
            assert!(err.to_string().contains(flag), "{bad:?}: {err}");
        }
        let err = parse_agent(&["--upload-protocol", "otlp-http"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("pyroscope, parca, otlp, otlp-grpc or file"), "{err}");
    }

    #[test]
    fn byte_sizes_take_plain_numbers_and_suffixes() {
        assert_eq!(parse_byte_size("1024"), Ok(1024));
        assert_eq!(parse_byte_size("256Mi"), Ok(256 << 20));
        assert_eq!(parse_byte_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_byte_size("2G"), Ok(2_000_000_000));
        assert_eq!(parse_byte_size(" 4 ki "), Ok(4096));
        for bad in ["", "0", "Mi", "-1", "1.5Gi", "99999999999Ti"] {
            assert!(parse_byte_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn label_names_follow_prometheus_and_avoid_reserved_ones() {
        assert_eq!(parse_label("_a1=x"), Ok(("_a1".into(), "x".into())));
        assert_eq!(parse_label("k=a=b"), Ok(("k".into(), "a=b".into())));
        for bad in [
            "novalue",
            "k=",
            "=v",
            "a-b=v",
            "9a=v",
            "node=x",
            "__name__=x",
            "__meta=x",
        ] {
            assert!(parse_label(bad).is_err(), "{bad:?} accepted");
        }
    }
}
