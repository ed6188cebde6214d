//! The validated configuration of `taskprof agent`.
//!
//! Each setting comes from the first of these that sets it: the flag, the
//! environment variable (`TASKPROF_` and the flag's name in upper snake
//! case), the YAML file named by `--config` (the flag's name in snake case),
//! and finally a default. Repeatable settings (labels, headers, pids) are
//! taken whole from one layer, so a flag can replace what the file says
//! rather than only add to it.
//!
//! Every value is checked here, before anything starts, and a bad one is
//! reported as an [`AgentConfigError`] naming where it was written: a flag,
//! an environment variable or a key in the file. Secrets (tokens, passwords,
//! header values) are read once, wrapped in [`Secret`], and never appear in
//! `Debug` output or in errors.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::kubernetes::{KubeConfig, LabelSelector};
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use url::Url;

use super::settings::*;
use crate::agent::logging::{self, LogFormat, LoggingError};
use crate::cli::{self, AgentArgs};
use crate::oneshot::config::{check_process, ConfigError};
use crate::session::SamplingSettings;
use crate::upload::{Auth, Protocol, Secret, SpoolConfig, UploadConfig};
use crate::util::secret::{read_secret_file, SecretFileError};

const DEFAULT_LOG_LEVEL: &str = "info";

/// A validated `taskprof agent`, grouped the way the agent's parts take
/// it.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// What is sampled, and how often a window closes.
    pub sampling: AgentSampling,
    /// Where profiles go, and what happens when they cannot.
    pub delivery: DeliveryConfig,
    /// What every profile is labelled with.
    pub identity: Identity,
    /// Kubernetes metadata and filters.
    pub kubernetes: KubernetesSettings,
    /// The agent's own metrics and logs.
    pub observability: Observability,
}

/// Sampling and symbolization settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSampling {
    /// Samples per second on each CPU.
    pub frequency_hz: u64,
    /// Time covered by each profile; at least a second.
    pub window: Duration,
    /// Processes to sample, sorted and live at start-up; empty for all.
    pub pids: Vec<u32>,
    /// Show the verifier log on load failures.
    pub verifier_log: bool,
    /// Read DWARF for file names, lines and inlined frames.
    pub debug_info: bool,
    /// Memory budget for unwind tables, or `None` to walk frame pointers
    /// only.
    pub unwind_table_memory: Option<u64>,
    /// Walk and name Python frames.
    pub python: bool,
    /// Keep the idle task's samples in the profiles.
    pub include_idle: bool,
    /// Bytes of the symbol caches.
    pub symbol_cache_memory: u64,
}

/// Upload, spool and shutdown settings.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Where profiles go, and how.
    pub upload: UploadConfig,
    /// Where profiles wait while the backend is unreachable.
    pub spool: SpoolConfig,
    /// Windows queued for upload before new ones are spooled.
    pub queue_capacity: usize,
    /// How long uploads may go on after a stop signal.
    pub shutdown_grace: Duration,
}

/// The labels every profile carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `service_name` of every profile; `None` for the pod's, else each
    /// process's name (`kernel` for kernel threads).
    pub service_name: Option<String>,
    /// The `node` label.
    pub node_name: String,
    /// Extra labels on every profile: valid, unreserved, unique names.
    pub labels: Vec<(String, String)>,
    /// One profile per process (with a `pid` series label) rather than
    /// one per series.
    pub series_per_process: bool,
}

/// The metrics endpoint and logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observability {
    /// Address of the metrics endpoint.
    pub metrics_address: SocketAddr,
    /// Log line format.
    pub log_format: LogFormat,
    /// Log filter directive, already checked to parse.
    pub log_level: String,
}

/// Validated `--kubernetes` settings and the pod filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSettings {
    /// Whether to watch the API server for pod metadata.
    pub enabled: bool,
    /// API server URL; `None` for the in-cluster default.
    pub api_url: Option<url::Url>,
    /// Token file; `None` for the in-cluster default.
    pub token_file: Option<PathBuf>,
    /// CA file; `None` for the in-cluster default.
    pub ca_file: Option<PathBuf>,
    /// Namespaces to keep (empty: all).
    pub namespaces: Vec<String>,
    /// Namespaces to drop.
    pub exclude_namespaces: Vec<String>,
    /// Pod label selector (empty: every pod).
    pub pod_selector: LabelSelector,
    /// Container ids (or prefixes) to keep (empty: all).
    pub container_ids: Vec<String>,
    /// Keep processes that are in no container.
    pub keep_host_processes: bool,
    /// Pod label overriding `service_name`.
    pub service_name_label: String,
    /// Pod labels copied onto profiles.
    pub pod_labels: Vec<String>,
    /// Where `PID/cgroup` files are read from.
    pub cgroup_proc_root: PathBuf,
    /// How to reach the API server (in-cluster defaults, each overridable),
    /// when `enabled`.
    pub connection: Option<KubeConfig>,
}

/// A usage error in the agent's configuration (exit code 2). Each message
/// names the setting as it was written (flag, environment variable or YAML
/// key, always with the flag's name) and says what to do; none holds a
/// secret.
#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    /// A value is malformed or out of range.
    #[error("{field}: {reason}")]
    Invalid {
        /// The setting, as written.
        field: String,
        /// What is wrong, and what would be right.
        reason: String,
    },
    /// A required setting is missing.
    #[error("{field} is required; {hint}")]
    Missing {
        /// The setting.
        field: String,
        /// How to set it.
        hint: String,
    },
    /// A file named by a setting cannot be read.
    #[error("{field}: cannot read `{shown}`: {reason}; check that it exists and is readable", shown = .path.display())]
    Unreadable {
        /// The setting, as written.
        field: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// Settings that contradict each other, or one that needs another.
    #[error("{0}")]
    Conflict(String),
    /// The `--config` file is not valid YAML or has unknown keys.
    #[error("failed to read the config file `{shown}`: {reason}", shown = .path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// The parser's complaint, with the key and line.
        reason: String,
    },
    /// A pid is not a running process.
    #[error(transparent)]
    Process(#[from] ConfigError),
}

/// Whether `err` is a usage error of either mode (bad flags, environment or
/// config file), for which the binary exits with code 2 rather than 1.
pub fn is_usage_error(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.is::<ConfigError>()
            || cause.is::<AgentConfigError>()
            || cause.is::<crate::bpf::VariantError>()
            || matches!(cause.downcast_ref::<LoggingError>(), Some(LoggingError::BadLevel(_)))
    })
}

impl AgentConfig {
    /// What the session samples.
    pub fn session_settings(&self) -> SamplingSettings {
        let sampling = &self.sampling;
        SamplingSettings {
            frequency_hz: sampling.frequency_hz,
            span: sampling.window,
            pids: sampling.pids.clone(),
            verifier_log: sampling.verifier_log,
            unwind_table_memory: sampling.unwind_table_memory,
            python: sampling.python,
            include_idle: sampling.include_idle,
        }
    }

    /// Merges the flags, the environment (read through `env`, e.g.
    /// `|name| std::env::var(name).ok()`) and the YAML file named by
    /// `--config` or `TASKPROF_CONFIG`, applies defaults, and validates the
    /// result. Token and password files are read now.
    pub fn load(args: AgentArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<AgentConfig, AgentConfigError> {
        let mut sources = Sources { env, file: None };
        let mut file = sources.read_file(args.config)?;
        let AgentArgs {
            frequency,
            window,
            pid,
            verifier_log,
            debug_info,
            unwind,
            unwind_table_memory,
            symbol_cache_memory,
            python,
            include_idle,
            kubernetes: kube,
            upload: up,
            delivery,
            identity,
            observability: obs,
            config: _,
        } = args;
        let kubernetes = sources.kubernetes(kube, &mut file)?;

        // First, as it takes its keys from `file` before the rest move out.
        let upload = sources.upload(up, &mut file)?;
        let frequency_hz = sources.pick_or_default(FREQUENCY, frequency, file.frequency, cli::parse_frequency)?;
        let window = sources.pick_or_default(WINDOW, window, file.window, cli::parse_window)?;

        let spool = SpoolConfig {
            dir: sources.pick_or_default(SPOOL_DIR, delivery.spool_dir, file.spool_dir, parse_path)?,
            max_bytes: sources.pick_or_default(
                SPOOL_MAX_BYTES,
                delivery.spool_max_bytes,
                file.spool_max_bytes,
                cli::parse_byte_size,
            )?,
        };
        let queue_capacity = sources.pick_or_default(
            QUEUE_CAPACITY,
            delivery.queue_capacity,
            file.queue_capacity,
            cli::parse_queue_capacity,
        )?;
        let shutdown_grace = sources.pick_or_default(
            SHUTDOWN_GRACE,
            delivery.shutdown_grace,
            file.shutdown_grace,
            cli::parse_grace,
        )?;

        let service_name = sources
            .pick(
                SERVICE_NAME,
                identity.service_name,
                file.service_name,
                parse_service_name,
            )?
            .map(|s| s.value);
        let node_name = match sources.pick(NODE_NAME, identity.node_name, file.node_name, parse_text)? {
            Some(name) => name.value,
            // Kubernetes hands the node's name to a DaemonSet pod this way;
            // the pod's own host name would be the pod's name.
            None => match sources.env_var("NODE_NAME").or_else(hostname) {
                Some(name) => name,
                None => {
                    return Err(AgentConfigError::Missing {
                        field: "--node-name".into(),
                        hint: "the host name is unknown, so pass --node-name or set NODE_NAME".into(),
                    })
                }
            },
        };
        let labels = sources.labels(identity.label, file.labels)?;
        let series_per_process = sources
            .pick(
                SERIES_PER_PROCESS,
                identity.series_per_process.then_some(true),
                file.series_per_process,
                cli::parse_bool,
            )?
            .is_some_and(|s| s.value);
        let mut kubernetes = kubernetes;
        if kubernetes.enabled {
            kubernetes.connection = Some(sources.kube_connection(&kubernetes, &node_name)?);
        }

        let pids = match sources.list(PID, pid, file.pids, cli::parse_pid)? {
            Some(list) => {
                let mut pids = list.value;
                pids.sort_unstable();
                pids.dedup();
                for &pid in &pids {
                    check_process(Path::new("/proc"), pid)?;
                }
                pids
            }
            None => Vec::new(),
        };

        let metrics_address = sources.pick_or_default(
            METRICS_ADDRESS,
            obs.metrics_address,
            file.metrics_address,
            cli::parse_socket_addr,
        )?;
        let log_format = sources.pick_or_default(LOG_FORMAT, obs.log_format, file.log_format, str::parse)?;
        let log_level = sources.log_level(obs.log_level, file.log_level)?;
        let verifier_log = sources
            .pick(
                VERIFIER_LOG,
                verifier_log.then_some(true),
                file.verifier_log,
                cli::parse_bool,
            )?
            .is_some_and(|s| s.value);
        let debug_info = sources
            .pick(DEBUG_INFO, debug_info.then_some(true), file.debug_info, cli::parse_bool)?
            .is_some_and(|s| s.value);
        let unwind = sources.pick_or_default(UNWIND, unwind, file.unwind, cli::parse_unwind)?;
        let unwind_table_memory = sources.pick_or_default(
            UNWIND_TABLE_MEMORY,
            unwind_table_memory,
            file.unwind_table_memory,
            cli::parse_byte_size,
        )?;
        let unwind_table_memory = (unwind == cli::UnwindArg::Dwarf).then_some(unwind_table_memory);
        let symbol_cache_memory = sources.pick_or_default(
            SYMBOL_CACHE_MEMORY,
            symbol_cache_memory,
            file.symbol_cache_memory,
            cli::parse_byte_size,
        )?;
        let python = sources.pick_or_default(PYTHON, python, file.python, cli::parse_switch)? == cli::SwitchArg::On;
        let include_idle = sources
            .pick(
                INCLUDE_IDLE,
                include_idle.then_some(true),
                file.include_idle,
                cli::parse_bool,
            )?
            .is_some_and(|s| s.value);

        Ok(AgentConfig {
            sampling: AgentSampling {
                frequency_hz,
                window,
                pids,
                verifier_log,
                debug_info,
                unwind_table_memory,
                python,
                include_idle,
                symbol_cache_memory,
            },
            delivery: DeliveryConfig {
                upload,
                spool,
                queue_capacity,
                shutdown_grace,
            },
            identity: Identity {
                service_name,
                node_name,
                labels,
                series_per_process,
            },
            kubernetes,
            observability: Observability {
                metrics_address,
                log_format,
                log_level,
            },
        })
    }
}

impl Setting {
    /// The setting as the user wrote it, for error messages.
    fn name(self, origin: &Origin) -> String {
        match origin {
            Origin::Flag => format!("--{}", self.flag),
            Origin::Env(var) => format!("{var} (--{})", self.flag),
            Origin::File(path) => format!("`{}` in {} (--{})", self.yaml, path.display(), self.flag),
        }
    }

    fn invalid(self, origin: &Origin, reason: String) -> AgentConfigError {
        AgentConfigError::Invalid {
            field: self.name(origin),
            reason,
        }
    }
}

/// Where a value was written.
#[derive(Debug, Clone)]
enum Origin {
    Flag,
    Env(String),
    File(PathBuf),
}

/// A value and where it was written.
struct Sourced<T> {
    value: T,
    origin: Origin,
}

/// The layers under the flags: the environment and the config file.
struct Sources<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    /// The config file's path, once read.
    file: Option<PathBuf>,
}

impl Sources<'_> {
    /// An environment variable; set-but-empty counts as unset, as container
    /// manifests often template variables to empty strings.
    fn env_var(&self, name: &str) -> Option<String> {
        (self.env)(name)
            .map(|value| value.trim().to_string())
            .filter(|value| !value.is_empty())
    }

    fn file_origin(&self) -> Origin {
        Origin::File(self.file.clone().unwrap_or_default())
    }

    /// Reads the config file named by `--config` or `TASKPROF_CONFIG`, if
    /// any.
    fn read_file(&mut self, flag: Option<PathBuf>) -> Result<FileSettings, AgentConfigError> {
        let (path, origin) = match flag {
            Some(path) => (path, Origin::Flag),
            None => match self.env_var(&CONFIG.env()) {
                Some(path) => (PathBuf::from(path), Origin::Env(CONFIG.env())),
                None => return Ok(FileSettings::default()),
            },
        };
        let text = std::fs::read_to_string(&path).map_err(|err| AgentConfigError::Unreadable {
            field: CONFIG.name(&origin),
            path: path.clone(),
            reason: err.to_string(),
        })?;
        let settings = parse_file(&text).map_err(|err| {
            let mut reason = err.to_string();
            if reason.starts_with("unknown field") {
                reason.push_str("; the keys are the flags' names in snake case, see `taskprof agent --help`");
            }
            AgentConfigError::ConfigFile {
                path: path.clone(),
                reason,
            }
        })?;
        self.file = Some(path);
        Ok(settings)
    }

    /// [`Sources::pick`], else the setting's default from the table,
    /// parsed by the same `parse`.
    fn pick_or_default<T>(
        &self,
        key: Setting,
        flag: Option<T>,
        file: Option<Scalar>,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<T, AgentConfigError> {
        if let Some(value) = self.pick(key, flag, file, parse)? {
            return Ok(value.value);
        }
        // A default that does not parse is a bug in the table, which a
        // unit test catches; it is reported rather than panicking.
        let default = key.default.unwrap_or_default();
        parse(default).map_err(|reason| AgentConfigError::Invalid {
            field: format!("the default of --{}", key.flag),
            reason,
        })
    }

    /// The flag, else the environment variable, else the file's key; each
    /// text form is parsed by `parse`.
    fn pick<T>(
        &self,
        key: Setting,
        flag: Option<T>,
        file: Option<Scalar>,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<Option<Sourced<T>>, AgentConfigError> {
        match self.flag_or_env(key, flag, parse)? {
            Some(value) => Ok(Some(value)),
            None => self.file_value(key, file, parse),
        }
    }

    fn flag_or_env<T>(
        &self,
        key: Setting,
        flag: Option<T>,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<Option<Sourced<T>>, AgentConfigError> {
        if let Some(value) = flag {
            return Ok(Some(Sourced {
                value,
                origin: Origin::Flag,
            }));
        }
        let var = key.env();
        match self.env_var(&var) {
            Some(text) => parse_from(key, Origin::Env(var), &text, parse).map(Some),
            None => Ok(None),
        }
    }

    fn file_value<T>(
        &self,
        key: Setting,
        file: Option<Scalar>,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<Option<Sourced<T>>, AgentConfigError> {
        match file {
            Some(Scalar(text)) => parse_from(key, self.file_origin(), &text, parse).map(Some),
            None => Ok(None),
        }
    }

    /// A repeatable setting, taken whole from the first layer that has it.
    /// The environment variable holds a comma-separated list, each item
    /// parsed by `parse_item`.
    fn list<T>(
        &self,
        key: Setting,
        flag: Vec<T>,
        file: Option<Vec<T>>,
        parse_item: fn(&str) -> Result<T, String>,
    ) -> Result<Option<Sourced<Vec<T>>>, AgentConfigError> {
        if !flag.is_empty() {
            return Ok(Some(Sourced {
                value: flag,
                origin: Origin::Flag,
            }));
        }
        let var = key.env();
        if let Some(text) = self.env_var(&var) {
            let origin = Origin::Env(var);
            let value = text
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| parse_item(item).map_err(|reason| key.invalid(&origin, reason)))
                .collect::<Result<Vec<T>, _>>()?;
            return Ok(Some(Sourced { value, origin }));
        }
        Ok(file.map(|value| Sourced {
            value,
            origin: self.file_origin(),
        }))
    }

    fn kubernetes(
        &self,
        args: cli::KubernetesArgs,
        file: &mut FileSettings,
    ) -> Result<KubernetesSettings, AgentConfigError> {
        let enabled = self
            .pick(
                KUBERNETES,
                args.kubernetes.then_some(true),
                file.kubernetes.take(),
                cli::parse_bool,
            )?
            .is_some_and(|s| s.value);
        let api_url = self
            .pick(
                KUBERNETES_API_URL,
                args.kubernetes_api_url,
                file.kubernetes_api_url.take(),
                cli::parse_http_url,
            )?
            .map(|s| s.value);
        let token_file = self
            .pick(
                KUBERNETES_TOKEN_FILE,
                args.kubernetes_token_file,
                file.kubernetes_token_file.take(),
                parse_path,
            )?
            .map(|s| s.value);
        let ca_file = self
            .pick(
                KUBERNETES_CA_FILE,
                args.kubernetes_ca_file,
                file.kubernetes_ca_file.take(),
                parse_path,
            )?
            .map(|s| s.value);
        let namespaces = self
            .list(NAMESPACE, args.namespace, file.namespaces.take(), parse_text)?
            .map_or_else(Vec::new, |s| s.value);
        let exclude_namespaces = self
            .list(
                EXCLUDE_NAMESPACE,
                args.exclude_namespace,
                file.exclude_namespaces.take(),
                parse_text,
            )?
            .map_or_else(Vec::new, |s| s.value);
        let pod_selector = self
            .pick(
                POD_SELECTOR,
                args.pod_selector,
                file.pod_selector.take(),
                cli::parse_selector,
            )?
            .map_or_else(LabelSelector::default, |s| s.value);
        let container_ids = self
            .list(
                CONTAINER_ID,
                args.container_id,
                file.container_ids.take(),
                parse_container_id,
            )?
            .map_or_else(Vec::new, |s| s.value);
        let keep_host_processes = self.pick_or_default(
            HOST_PROCESSES,
            args.host_processes,
            file.host_processes.take(),
            cli::parse_keep_drop,
        )?;
        let service_name_label = self.pick_or_default(
            SERVICE_NAME_LABEL,
            args.service_name_label,
            file.service_name_label.take(),
            parse_text,
        )?;
        let pod_labels = self
            .list(POD_LABEL, args.pod_label, file.pod_labels.take(), parse_text)?
            .map_or_else(Vec::new, |s| s.value);
        let cgroup_proc_root = args.cgroup_proc_root.unwrap_or_else(|| PathBuf::from("/proc"));
        let uses_pods = !namespaces.is_empty() || !exclude_namespaces.is_empty() || !pod_selector.is_empty();
        if uses_pods && !enabled {
            return Err(AgentConfigError::Conflict(
                "--namespace, --exclude-namespace and --pod-selector need pod metadata: add --kubernetes".into(),
            ));
        }
        Ok(KubernetesSettings {
            enabled,
            api_url,
            token_file,
            ca_file,
            namespaces,
            exclude_namespaces,
            pod_selector,
            container_ids,
            keep_host_processes,
            service_name_label,
            pod_labels,
            cgroup_proc_root,
            connection: None,
        })
    }

    /// The API server connection of `--kubernetes`: the in-cluster
    /// defaults, each overridable. Checked now, like every other setting,
    /// so that a bad one stops the agent before anything binds or loads.
    fn kube_connection(&self, kube: &KubernetesSettings, node_name: &str) -> Result<KubeConfig, AgentConfigError> {
        let invalid = |field: &str, reason: String| AgentConfigError::Invalid {
            field: field.to_string(),
            reason,
        };
        let mut config = match &kube.api_url {
            Some(url) => KubeConfig {
                api_url: url.clone(),
                token_path: Path::new(crate::kubernetes::SERVICE_ACCOUNT_DIR).join("token"),
                ca_path: None,
                node_name: node_name.to_string(),
                insecure_skip_verify: false,
            },
            None => KubeConfig::in_cluster(&|name| self.env_var(name), node_name)
                .map_err(|err| invalid("--kubernetes", err.to_string()))?,
        };
        if let Some(token) = &kube.token_file {
            config.token_path = token.clone();
        }
        if let Some(ca) = &kube.ca_file {
            config.ca_path = Some(ca.clone());
        }
        if let Some(ca) = &config.ca_path {
            let field = if kube.ca_file.is_some() {
                "--kubernetes-ca-file"
            } else {
                "--kubernetes"
            };
            crate::upload::read_ca_certificates(ca).map_err(|reason| {
                invalid(
                    field,
                    format!("failed to load the CA certificates from `{}`: {reason}", ca.display()),
                )
            })?;
        }
        Ok(config)
    }

    fn upload(&self, up: cli::UploadArgs, file: &mut FileSettings) -> Result<UploadConfig, AgentConfigError> {
        let protocol = self.pick_or_default(
            UPLOAD_PROTOCOL,
            up.upload_protocol,
            file.upload_protocol.take(),
            cli::parse_protocol,
        )?;
        let url = self
            .pick(UPLOAD_URL, up.upload_url, file.upload_url.take(), parse_text)?
            .ok_or_else(|| AgentConfigError::Missing {
                field: "--upload-url".into(),
                hint: format!(
                    "pass it (e.g. --upload-url {}), set {} or `{}` in the --config file",
                    match protocol {
                        Protocol::Pyroscope => "http://pyroscope:4040",
                        Protocol::Parca => "http://parca:7070",
                        Protocol::File => "/var/lib/taskprof/profiles",
                        Protocol::Otlp => "http://otel-collector:4318",
                        Protocol::OtlpGrpc => "http://otel-collector:4317",
                    },
                    UPLOAD_URL.env(),
                    UPLOAD_URL.yaml
                ),
            })?;
        let url = match protocol {
            Protocol::File => file_url(&url.value),
            Protocol::Pyroscope | Protocol::Parca | Protocol::Otlp | Protocol::OtlpGrpc => http_url(&url.value),
        }
        .map_err(|reason| UPLOAD_URL.invalid(&url.origin, reason))?;

        // A flag holds `Name: value` text and the file a map; the
        // environment's items are split as the list is read.
        let from_flags = up
            .header
            .iter()
            .map(|text| split_header(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| HEADER.invalid(&Origin::Flag, reason))?;
        let from_file = file
            .headers
            .take()
            .map(|map| map.into_iter().map(|(name, value)| (name, value.0)).collect());
        let headers = match self.list(HEADER, from_flags, from_file, split_header)? {
            Some(headers) => check_headers(headers.value, &headers.origin)?,
            None => Vec::new(),
        };

        let tls_ca_file = match self.pick(TLS_CA_FILE, up.tls_ca_file, file.tls_ca_file.take(), parse_path)? {
            Some(path) => {
                check_readable_file(TLS_CA_FILE, &path)?;
                Some(path.value)
            }
            None => None,
        };

        let insecure = self.pick(
            TLS_INSECURE_SKIP_VERIFY,
            up.tls_insecure_skip_verify.then_some(true),
            file.tls_insecure_skip_verify.take(),
            cli::parse_bool,
        )?;
        let tls_insecure_skip_verify = match insecure {
            // tonic's TLS has no switch to skip verification, and a silent
            // fallback to verifying would surprise whoever asked.
            Some(flag) if flag.value && protocol == Protocol::OtlpGrpc => {
                return Err(TLS_INSECURE_SKIP_VERIFY.invalid(
                    &flag.origin,
                    "otlp-grpc cannot skip certificate checks; trust the server's CA with \
                     --tls-ca-file instead"
                        .to_string(),
                ))
            }
            Some(flag) => flag.value,
            None => false,
        };

        Ok(UploadConfig {
            protocol,
            url,
            timeout: self.pick_or_default(
                UPLOAD_TIMEOUT,
                up.upload_timeout,
                file.upload_timeout.take(),
                cli::parse_duration,
            )?,
            compression: self.pick_or_default(
                UPLOAD_COMPRESSION,
                up.upload_compression,
                file.upload_compression.take(),
                cli::parse_compression,
            )?,
            concurrency: self.pick_or_default(
                UPLOAD_CONCURRENCY,
                up.upload_concurrency,
                file.upload_concurrency.take(),
                cli::parse_upload_concurrency,
            )?,
            auth: self.auth(
                self.pick(
                    BEARER_TOKEN_FILE,
                    up.bearer_token_file,
                    file.bearer_token_file.take(),
                    parse_path,
                )?,
                self.pick(
                    BASIC_AUTH_USER,
                    up.basic_auth_user,
                    file.basic_auth_user.take(),
                    parse_text,
                )?,
                self.pick(
                    BASIC_AUTH_PASSWORD_FILE,
                    up.basic_auth_password_file,
                    file.basic_auth_password_file.take(),
                    parse_path,
                )?,
            )?,
            headers,
            tls_ca_file,
            tls_insecure_skip_verify,
        })
    }

    fn auth(
        &self,
        bearer: Option<Sourced<PathBuf>>,
        user: Option<Sourced<String>>,
        password: Option<Sourced<PathBuf>>,
    ) -> Result<Auth, AgentConfigError> {
        match (bearer, user, password) {
            (None, None, None) => Ok(Auth::None),
            (Some(token), None, None) => Ok(Auth::Bearer(read_secret(BEARER_TOKEN_FILE, &token)?)),
            (None, Some(user), Some(password)) => Ok(Auth::Basic {
                user: user.value,
                password: read_secret(BASIC_AUTH_PASSWORD_FILE, &password)?,
            }),
            (Some(token), user, password) => {
                let basic = match (user, password) {
                    (Some(user), _) => BASIC_AUTH_USER.name(&user.origin),
                    (None, Some(password)) => BASIC_AUTH_PASSWORD_FILE.name(&password.origin),
                    (None, None) => unreachable!("bearer-only auth is matched above"),
                };
                Err(AgentConfigError::Conflict(format!(
                    "{} and {basic} cannot be used together; authenticate with a bearer token or with basic \
                     auth, not both",
                    BEARER_TOKEN_FILE.name(&token.origin)
                )))
            }
            (None, Some(user), None) => Err(AgentConfigError::Conflict(format!(
                "{} needs a password: pass --basic-auth-password-file with a file holding it",
                BASIC_AUTH_USER.name(&user.origin)
            ))),
            (None, None, Some(password)) => Err(AgentConfigError::Conflict(format!(
                "{} needs a user: pass --basic-auth-user too",
                BASIC_AUTH_PASSWORD_FILE.name(&password.origin)
            ))),
        }
    }

    fn labels(
        &self,
        flag: Vec<(String, String)>,
        file: Option<BTreeMap<String, Scalar>>,
    ) -> Result<Vec<(String, String)>, AgentConfigError> {
        let file = file.map(|map| map.into_iter().map(|(name, value)| (name, value.0)).collect());
        let Some(labels) = self.list(LABEL, flag, file, cli::parse_label)? else {
            return Ok(Vec::new());
        };
        let mut checked: Vec<(String, String)> = Vec::with_capacity(labels.value.len());
        for (name, value) in labels.value {
            let (name, value) =
                cli::check_label(name.trim(), value.trim()).map_err(|reason| LABEL.invalid(&labels.origin, reason))?;
            if checked.iter().any(|(seen, _)| *seen == name) {
                return Err(LABEL.invalid(&labels.origin, format!("label `{name}` is given twice; keep one")));
            }
            checked.push((name, value));
        }
        Ok(checked)
    }

    /// `--log-level`, else `TASKPROF_LOG_LEVEL`, else `RUST_LOG` (the
    /// variable `tracing` users already know), else the file, else `info`.
    fn log_level(&self, flag: Option<String>, file: Option<Scalar>) -> Result<String, AgentConfigError> {
        let level = match self.flag_or_env(LOG_LEVEL, flag, parse_text)? {
            Some(level) => Some(level),
            None => match self.env_var("RUST_LOG") {
                Some(text) => Some(Sourced {
                    value: text,
                    origin: Origin::Env("RUST_LOG".into()),
                }),
                None => self.file_value(LOG_LEVEL, file, parse_text)?,
            },
        };
        match level {
            Some(level) => {
                logging::parse_level(&level.value).map_err(|reason| LOG_LEVEL.invalid(&level.origin, reason))?;
                Ok(level.value)
            }
            None => Ok(DEFAULT_LOG_LEVEL.to_string()),
        }
    }
}

fn parse_from<T>(
    key: Setting,
    origin: Origin,
    text: &str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Sourced<T>, AgentConfigError> {
    match parse(text) {
        Ok(value) => Ok(Sourced { value, origin }),
        Err(reason) => Err(key.invalid(&origin, reason)),
    }
}

fn parse_path(text: &str) -> Result<PathBuf, String> {
    parse_text(text).map(PathBuf::from)
}

fn parse_container_id(text: &str) -> Result<String, String> {
    let id = text.trim().to_ascii_lowercase();
    let id = id.rsplit("://").next().unwrap_or(&id).to_string();
    if id.len() < 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{}` is not a container id (12 to 64 hex digits)", text.trim()));
    }
    Ok(id)
}

fn parse_text(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the value is empty".to_string());
    }
    Ok(text.to_string())
}

/// Pyroscope answers 400 to application names with other characters, so a
/// bad name is refused now rather than on every upload.
fn parse_service_name(text: &str) -> Result<String, String> {
    let name = parse_text(text)?;
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
    {
        return Err(format!(
            "service name `{name}` has characters backends refuse; use letters, digits and _ . - /"
        ));
    }
    Ok(name)
}

/// A base URL for an HTTP protocol.
fn http_url(text: &str) -> Result<Url, String> {
    let url =
        Url::parse(text).map_err(|err| format!("`{text}` is not a URL ({err}); use e.g. http://pyroscope:4040"))?;
    // A password in the URL would be printed wherever the URL is (logs,
    // `Debug`), so credentials must come from files instead.
    if url.password().is_some() {
        return Err("the URL holds a password; remove it and pass --basic-auth-user and \
                    --basic-auth-password-file instead"
            .to_string());
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "`{text}` is not an http or https URL; use e.g. http://pyroscope:4040 (with the scheme)"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host; use e.g. http://pyroscope:4040"));
    }
    Ok(url)
}

/// The output directory of the file protocol, given as a path (relative
/// ones are taken from the working directory) or a `file://` URL, as a
/// `file://` URL ending in `/`.
fn file_url(text: &str) -> Result<Url, String> {
    let path = if text.starts_with("file:") {
        Url::parse(text)
            .ok()
            .and_then(|url| url.to_file_path().ok())
            .ok_or_else(|| {
                format!("`{text}` is not a file:// URL of a local directory, e.g. file:///var/lib/taskprof/profiles")
            })?
    } else if text.contains("://") {
        return Err(format!(
            "`{text}` is not a directory; the file protocol takes a path or a file:// URL"
        ));
    } else {
        PathBuf::from(text)
    };
    let path = if path.is_absolute() {
        path
    } else {
        std::env::current_dir()
            .map_err(|err| format!("cannot resolve the relative path `{text}` ({err}); give an absolute one"))?
            .join(path)
    };
    // Rebuilding from the components drops `.` segments (`./out`).
    let path: PathBuf = path.components().collect();
    Url::from_directory_path(&path).map_err(|()| format!("`{text}` cannot be made into a file:// URL"))
}

/// Splits `Name: value` at the first colon. The text is never echoed: it
/// may be a secret that lost its name.
fn split_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| "a header has no `:`; write it as `Name: value`".to_string())?;
    Ok((name.trim().to_string(), value.trim().to_string()))
}

/// Checks header names (HTTP tokens) and values (no control characters),
/// and wraps the values as secrets. Errors name a header by its position
/// only, since a malformed name may be a misplaced value.
fn check_headers(pairs: Vec<(String, String)>, origin: &Origin) -> Result<Vec<(String, Secret)>, AgentConfigError> {
    fn is_token_char(c: char) -> bool {
        c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
    }
    pairs
        .into_iter()
        .enumerate()
        .map(|(index, (name, value))| {
            let position = index + 1;
            if name.is_empty() || !name.chars().all(is_token_char) {
                return Err(HEADER.invalid(
                    origin,
                    format!(
                        "the name of header {position} is not a valid HTTP header name; use letters, digits \
                         and !#$%&'*+-.^_`|~, as in `X-Scope-OrgID: tenant`"
                    ),
                ));
            }
            if value.chars().any(|c| c.is_ascii_control() && c != '\t') {
                return Err(HEADER.invalid(
                    origin,
                    format!("the value of header {position} (`{name}`) holds control characters"),
                ));
            }
            Ok((name, Secret::new(value)))
        })
        .collect()
}

/// Reads a secret from a file, without its trailing newline.
fn read_secret(key: Setting, path: &Sourced<PathBuf>) -> Result<Secret, AgentConfigError> {
    read_secret_file(&path.value).map_err(|err| match err {
        SecretFileError::Unreadable(err) => AgentConfigError::Unreadable {
            field: key.name(&path.origin),
            path: path.value.clone(),
            reason: err.to_string(),
        },
        SecretFileError::Empty => key.invalid(
            &path.origin,
            format!("`{}` is empty; put the secret in it", path.value.display()),
        ),
    })
}

fn check_readable_file(key: Setting, path: &Sourced<PathBuf>) -> Result<(), AgentConfigError> {
    let unreadable = |reason: String| AgentConfigError::Unreadable {
        field: key.name(&path.origin),
        path: path.value.clone(),
        reason,
    };
    let file = std::fs::File::open(&path.value).map_err(|err| unreadable(err.to_string()))?;
    match file.metadata() {
        Ok(meta) if meta.is_dir() => Err(unreadable("it is a directory".into())),
        Ok(_) => Ok(()),
        Err(err) => Err(unreadable(err.to_string())),
    }
}

/// The host name, as `uname -n` reports it.
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes, the length
    // passed; gethostname writes no more than that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// The `--config` file. Keys are the flags' names in snake case; the
/// repeatable flags become the maps `labels` and `headers` and the list
/// `pids`. Scalars are kept as text and parsed by the same functions as
/// flags and environment variables.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    frequency: Option<Scalar>,
    window: Option<Scalar>,
    upload_url: Option<Scalar>,
    upload_protocol: Option<Scalar>,
    upload_compression: Option<Scalar>,
    upload_timeout: Option<Scalar>,
    upload_concurrency: Option<Scalar>,
    bearer_token_file: Option<Scalar>,
    basic_auth_user: Option<Scalar>,
    basic_auth_password_file: Option<Scalar>,
    headers: Option<BTreeMap<String, Scalar>>,
    tls_ca_file: Option<Scalar>,
    tls_insecure_skip_verify: Option<Scalar>,
    spool_dir: Option<Scalar>,
    spool_max_bytes: Option<Scalar>,
    queue_capacity: Option<Scalar>,
    shutdown_grace: Option<Scalar>,
    service_name: Option<Scalar>,
    node_name: Option<Scalar>,
    labels: Option<BTreeMap<String, Scalar>>,
    series_per_process: Option<Scalar>,
    pids: Option<Vec<u32>>,
    metrics_address: Option<Scalar>,
    log_format: Option<Scalar>,
    log_level: Option<Scalar>,
    verifier_log: Option<Scalar>,
    debug_info: Option<Scalar>,
    unwind: Option<Scalar>,
    unwind_table_memory: Option<Scalar>,
    symbol_cache_memory: Option<Scalar>,
    python: Option<Scalar>,
    include_idle: Option<Scalar>,
    kubernetes: Option<Scalar>,
    kubernetes_api_url: Option<Scalar>,
    kubernetes_token_file: Option<Scalar>,
    kubernetes_ca_file: Option<Scalar>,
    namespaces: Option<Vec<String>>,
    exclude_namespaces: Option<Vec<String>>,
    pod_selector: Option<Scalar>,
    container_ids: Option<Vec<String>>,
    host_processes: Option<Scalar>,
    service_name_label: Option<Scalar>,
    pod_labels: Option<Vec<String>>,
}

/// An empty file (or one holding only comments) sets nothing.
fn parse_file(text: &str) -> Result<FileSettings, serde_yaml::Error> {
    Ok(serde_yaml::from_str::<Option<FileSettings>>(text)?.unwrap_or_default())
}

/// A YAML scalar (string, number or boolean) as text. Parse errors it
/// raises never quote the value, which may be a header's secret.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Scalar, D::Error> {
        match serde_yaml::Value::deserialize(deserializer)? {
            serde_yaml::Value::String(text) => Ok(Scalar(text)),
            serde_yaml::Value::Number(number) => Ok(Scalar(number.to_string())),
            serde_yaml::Value::Bool(flag) => Ok(Scalar(flag.to_string())),
            _ => Err(D::Error::custom("expected a single value (text, number or boolean)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    const URL: [&str; 2] = ["--upload-url", "http://pyroscope:4040"];

    fn args(flags: &[&str]) -> AgentArgs {
        let argv = ["taskprof", "agent"].iter().chain(flags);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Agent(args) => args,
            Command::Profile(_) => unreachable!(),
        }
    }

    fn load(flags: &[&str], env: &[(&str, &str)]) -> Result<AgentConfig, AgentConfigError> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        AgentConfig::load(args(flags), &|name| env.get(name).cloned())
    }

    fn load_err(flags: &[&str], env: &[(&str, &str)]) -> String {
        load(flags, env).expect_err("bad config accepted").to_string()
    }

    fn file_with(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn yaml(text: &str) -> (tempfile::NamedTempFile, String) {
        let file = file_with(text);
        let path = file.path().to_str().unwrap().to_string();
        (file, path)
    }

    #[test]
    fn series_per_process_comes_from_the_flag_the_variable_or_the_file() {
        assert!(!load(&URL, &[]).unwrap().identity.series_per_process);
        let flag = [&URL[..], &["--series-per-process"]].concat();
        assert!(load(&flag, &[]).unwrap().identity.series_per_process);
        let env = [("TASKPROF_SERIES_PER_PROCESS", "true")];
        assert!(load(&URL, &env).unwrap().identity.series_per_process);
        let (_file, path) = yaml("series_per_process: true\n");
        let from_file = [&URL[..], &["--config", &path]].concat();
        assert!(load(&from_file, &[]).unwrap().identity.series_per_process);
        let err = load_err(&URL, &[("TASKPROF_SERIES_PER_PROCESS", "maybe")]);
        assert!(err.contains("TASKPROF_SERIES_PER_PROCESS"), "{err}");
    }

    #[test]
    fn include_idle_comes_from_the_flag_the_variable_or_the_file() {
        let config = load(&URL, &[]).unwrap();
        assert!(!config.sampling.include_idle);
        assert!(!config.session_settings().include_idle);
        let flag = [&URL[..], &["--include-idle"]].concat();
        assert!(load(&flag, &[]).unwrap().session_settings().include_idle);
        let env = [("TASKPROF_INCLUDE_IDLE", "true")];
        assert!(load(&URL, &env).unwrap().sampling.include_idle);
        let (_file, path) = yaml("include_idle: true\n");
        let from_file = [&URL[..], &["--config", &path]].concat();
        assert!(load(&from_file, &[]).unwrap().sampling.include_idle);
        let err = load_err(&URL, &[("TASKPROF_INCLUDE_IDLE", "maybe")]);
        assert!(err.contains("TASKPROF_INCLUDE_IDLE"), "{err}");
    }

    #[test]
    fn every_setting_in_the_table_is_a_flag_and_a_yaml_key() {
        use clap::CommandFactory;
        let command = crate::cli::Cli::command();
        let agent = command.find_subcommand("agent").expect("the agent subcommand");
        for setting in ALL {
            assert!(
                agent.get_arguments().any(|arg| arg.get_long() == Some(setting.flag)),
                "--{} is not a flag",
                setting.flag
            );
            if !setting.yaml.is_empty() {
                let err = parse_file(&format!("{}: ~\n", setting.yaml))
                    .err()
                    .map(|err| err.to_string())
                    .unwrap_or_default();
                assert!(!err.contains("unknown field"), "`{}`: {err}", setting.yaml);
            }
        }
        for arg in agent.get_arguments().filter(|arg| !arg.is_hide_set()) {
            let Some(long) = arg.get_long() else { continue };
            assert!(
                ALL.iter().any(|s| s.flag == long),
                "--{long} is not in the settings table"
            );
        }
    }

    #[test]
    fn the_unwind_table_memory_default_is_the_one_taskprof_profile_uses() {
        let default = UNWIND_TABLE_MEMORY.default.expect("a default");
        assert_eq!(cli::parse_byte_size(default), Ok(cli::DEFAULT_UNWIND_TABLE_MEMORY));
    }

    #[test]
    fn defaults() {
        let config = load(&URL, &[("NODE_NAME", "n1")]).unwrap();
        assert_eq!(config.sampling.frequency_hz, 19);
        assert_eq!(config.sampling.window, Duration::from_secs(10));
        assert_eq!(config.delivery.upload.protocol, Protocol::Pyroscope);
        assert_eq!(config.delivery.upload.url.as_str(), "http://pyroscope:4040/");
        assert_eq!(config.delivery.upload.timeout, Duration::from_secs(10));
        assert_eq!(config.delivery.upload.concurrency, 4);
        assert_eq!(config.delivery.upload.auth, Auth::None);
        assert!(config.delivery.upload.headers.is_empty() && config.delivery.upload.tls_ca_file.is_none());
        assert!(!config.delivery.upload.tls_insecure_skip_verify);
        assert_eq!(config.delivery.spool.dir, PathBuf::from("/var/lib/taskprof/spool"));
        assert_eq!(config.delivery.spool.max_bytes, 256 * 1024 * 1024);
        assert_eq!(config.delivery.queue_capacity, 16);
        assert_eq!(config.delivery.shutdown_grace, Duration::from_secs(10));
        assert_eq!(config.identity.service_name, None);
        assert_eq!(config.identity.node_name, "n1");
        assert!(config.identity.labels.is_empty() && config.sampling.pids.is_empty());
        assert_eq!(config.observability.metrics_address, "127.0.0.1:7071".parse().unwrap());
        assert_eq!(config.observability.log_format, LogFormat::Text);
        assert_eq!(config.observability.log_level, "info");
        assert!(!config.sampling.verifier_log);
    }

    #[test]
    fn flag_beats_env_beats_yaml_beats_default_for_a_scalar() {
        let (_file, path) = yaml("frequency: 7\nupload_url: http://from-yaml:4040\n");
        let config = |flags: &[&str], env: &[(&str, &str)]| load(flags, env).unwrap();
        assert_eq!(config(&URL, &[]).sampling.frequency_hz, 19);
        assert_eq!(config(&["--config", &path], &[]).sampling.frequency_hz, 7);
        assert_eq!(config(&[], &[("TASKPROF_CONFIG", &path)]).sampling.frequency_hz, 7);
        assert_eq!(
            config(&["--config", &path], &[("TASKPROF_FREQUENCY", "8")])
                .sampling
                .frequency_hz,
            8
        );
        assert_eq!(
            config(&["--config", &path, "-F", "9"], &[("TASKPROF_FREQUENCY", "8")])
                .sampling
                .frequency_hz,
            9
        );
        let from_env = config(&["--config", &path], &[("TASKPROF_UPLOAD_URL", "https://env:1")]);
        assert_eq!(from_env.delivery.upload.url.as_str(), "https://env:1/");
        let from_yaml = config(&["--config", &path], &[("TASKPROF_UPLOAD_URL", "")]);
        assert_eq!(
            from_yaml.delivery.upload.url.as_str(),
            "http://from-yaml:4040/",
            "empty env counts as unset"
        );
    }

    #[test]
    fn flag_beats_env_beats_yaml_beats_default_for_labels() {
        let (_file, path) = yaml("upload_url: http://p:4040\nlabels:\n  team: yaml\n  version: 2\n");
        let labels = |flags: &[&str], env: &[(&str, &str)]| load(flags, env).unwrap().identity.labels;
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert!(labels(&URL, &[]).is_empty());
        assert_eq!(
            labels(&["--config", &path], &[]),
            pairs(&[("team", "yaml"), ("version", "2")])
        );
        let env = [("TASKPROF_LABEL", "team=env, zone=a")];
        assert_eq!(
            labels(&["--config", &path], &env),
            pairs(&[("team", "env"), ("zone", "a")])
        );
        assert_eq!(
            labels(&["--config", &path, "--label", "team=flag"], &env),
            pairs(&[("team", "flag")])
        );
    }

    #[test]
    fn every_setting_can_come_from_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let ca = file_with("-----BEGIN CERTIFICATE-----\n");
        let token = file_with("tok\n");
        let (_file, path) = yaml(&format!(
            "frequency: 49\nwindow: 1m\nupload_url: http://parca:7070\nupload_protocol: parca\n\
             upload_timeout: 3s\nupload_concurrency: 8\nbearer_token_file: {token}\n\
             headers: {{X-Scope-OrgID: t1}}\ntls_ca_file: {ca}\ntls_insecure_skip_verify: true\n\
             spool_dir: {spool}\nspool_max_bytes: 1Gi\nqueue_capacity: 4\nshutdown_grace: 0s\n\
             service_name: api\nnode_name: n7\nlabels: {{team: infra}}\npids: [{pid}]\n\
             metrics_address: '[::1]:9100'\nlog_format: json\nlog_level: debug\nverifier_log: yes\n",
            token = token.path().display(),
            ca = ca.path().display(),
            spool = dir.path().display(),
            pid = std::process::id(),
        ));
        let config = load(&["--config", &path], &[]).unwrap();
        assert_eq!(config.sampling.frequency_hz, 49);
        assert_eq!(config.sampling.window, Duration::from_secs(60));
        assert_eq!(config.delivery.upload.protocol, Protocol::Parca);
        assert_eq!(config.delivery.upload.url.as_str(), "http://parca:7070/");
        assert_eq!(config.delivery.upload.timeout, Duration::from_secs(3));
        assert_eq!(config.delivery.upload.concurrency, 8);
        assert_eq!(config.delivery.upload.auth, Auth::Bearer(Secret::new("tok")));
        assert_eq!(
            config.delivery.upload.headers,
            vec![("X-Scope-OrgID".into(), Secret::new("t1"))]
        );
        assert_eq!(config.delivery.upload.tls_ca_file.as_deref(), Some(ca.path()));
        assert!(config.delivery.upload.tls_insecure_skip_verify);
        assert_eq!(config.delivery.spool.dir, dir.path());
        assert_eq!(config.delivery.spool.max_bytes, 1 << 30);
        assert_eq!(config.delivery.queue_capacity, 4);
        assert_eq!(config.delivery.shutdown_grace, Duration::ZERO);
        assert_eq!(config.identity.service_name.as_deref(), Some("api"));
        assert_eq!(config.identity.node_name, "n7");
        assert_eq!(config.identity.labels, vec![("team".into(), "infra".into())]);
        assert_eq!(config.sampling.pids, vec![std::process::id()]);
        assert_eq!(config.observability.metrics_address, "[::1]:9100".parse().unwrap());
        assert_eq!(config.observability.log_format, LogFormat::Json);
        assert_eq!(config.observability.log_level, "debug");
        assert!(config.sampling.verifier_log);
    }

    #[test]
    fn empty_yaml_file_sets_nothing() {
        let (_file, path) = yaml("# nothing yet\n");
        assert_eq!(
            load(&["--config", &path, URL[0], URL[1]], &[])
                .unwrap()
                .sampling
                .frequency_hz,
            19
        );
    }

    #[test]
    fn unknown_yaml_key_is_named() {
        let (_file, path) = yaml("upload_url: http://p:4040\nfrequncy: 5\n");
        let err = load_err(&["--config", &path], &[]);
        assert!(err.contains("frequncy") && err.contains(&path), "{err}");
        let (_file, path) = yaml("labels: [a, b]\n");
        let err = load_err(&["--config", &path], &[]);
        assert!(err.contains("labels"), "{err}");
    }

    #[test]
    fn missing_config_file_names_the_flag_and_path() {
        let err = load_err(&["--config", "/nonexistent/agent.yaml"], &[]);
        assert!(
            err.contains("--config") && err.contains("/nonexistent/agent.yaml"),
            "{err}"
        );
        let err = load_err(&[], &[("TASKPROF_CONFIG", "/nonexistent/agent.yaml")]);
        assert!(err.contains("TASKPROF_CONFIG"), "{err}");
    }

    #[test]
    fn upload_url_is_required() {
        let err = load_err(&[], &[]);
        assert!(err.contains("--upload-url is required"), "{err}");
    }

    #[test]
    fn bad_urls_name_the_field_and_value() {
        for bad in ["not a url", "ftp://pyroscope:4040", "pyroscope:4040", "http://"] {
            let err = load_err(&["--upload-url", bad], &[]);
            assert!(err.starts_with("--upload-url") && err.contains(bad), "{bad}: {err}");
        }
        let err = load_err(&[], &[("TASKPROF_UPLOAD_URL", "ftp://x")]);
        assert!(err.starts_with("TASKPROF_UPLOAD_URL (--upload-url)"), "{err}");
        let (_file, path) = yaml("upload_url: ftp://x\n");
        let err = load_err(&["--config", &path], &[]);
        assert!(
            err.starts_with(&format!("`upload_url` in {path} (--upload-url)")),
            "{err}"
        );
    }

    #[test]
    fn url_with_a_password_is_refused_without_echoing_it() {
        let err = load_err(&["--upload-url", "http://user:hunter2@pyroscope:4040"], &[]);
        assert!(err.contains("--basic-auth-password-file"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn unknown_protocol_lists_the_valid_ones() {
        let err = load_err(&URL, &[("TASKPROF_UPLOAD_PROTOCOL", "jaeger")]);
        assert!(err.contains("TASKPROF_UPLOAD_PROTOCOL (--upload-protocol)"), "{err}");
        assert!(
            err.contains("jaeger") && err.contains("pyroscope, parca, otlp, otlp-grpc or file"),
            "{err}"
        );
    }

    #[test]
    fn otlp_takes_its_compression_from_every_source() {
        let flags = [
            "--upload-url",
            "http://otel-collector:4318",
            "--upload-protocol",
            "otlp-grpc",
        ];
        let config = load(&flags, &[("TASKPROF_UPLOAD_COMPRESSION", "none")]).expect("valid");
        assert_eq!(config.delivery.upload.protocol, Protocol::OtlpGrpc);
        assert_eq!(config.delivery.upload.compression, crate::upload::Compression::None);
        let file = file_with("upload_protocol: otlp\nupload_compression: none\n");
        let path = file.path().to_str().unwrap();
        let config = load(&["--config", path, "--upload-url", "http://c:4318"], &[]).expect("valid");
        assert_eq!(config.delivery.upload.protocol, Protocol::Otlp);
        assert_eq!(config.delivery.upload.compression, crate::upload::Compression::None);
        let defaults = load(&["--upload-url", "http://c:4318", "--upload-protocol", "otlp"], &[]).expect("valid");
        assert_eq!(defaults.delivery.upload.compression, crate::upload::Compression::Gzip);
        let err = load_err(&flags, &[("TASKPROF_UPLOAD_COMPRESSION", "zstd")]);
        assert!(
            err.contains("TASKPROF_UPLOAD_COMPRESSION") && err.contains("gzip or none"),
            "{err}"
        );
        let err = load_err(&[&flags[..], &["--tls-insecure-skip-verify"]].concat(), &[]);
        assert!(
            err.contains("--tls-insecure-skip-verify") && err.contains("--tls-ca-file"),
            "{err}"
        );
    }

    #[test]
    fn file_protocol_takes_a_directory_or_a_file_url() {
        let dir = tempfile::tempdir().unwrap();
        let expected = Url::from_directory_path(dir.path()).unwrap();
        assert!(expected.as_str().starts_with("file:///") && expected.as_str().ends_with('/'));
        let from_path = dir.path().to_str().unwrap();
        let from_url = format!("file://{from_path}");
        for given in [from_path, &format!("{from_path}/"), &from_url] {
            let config = load(&["--upload-protocol", "file", "--upload-url", given], &[]).unwrap();
            assert_eq!(config.delivery.upload.url, expected, "{given}");
        }
        let relative = load(&["--upload-protocol", "file", "--upload-url", "./out"], &[]).unwrap();
        let cwd = std::env::current_dir().unwrap().join("out");
        assert_eq!(relative.delivery.upload.url, Url::from_directory_path(cwd).unwrap());
        let err = load_err(&["--upload-protocol", "file", "--upload-url", "http://p:4040"], &[]);
        assert!(err.starts_with("--upload-url"), "{err}");
    }

    #[test]
    fn unreadable_token_file_names_the_field_and_path() {
        let err = load_err(&[URL[0], URL[1], "--bearer-token-file", "/nonexistent/token"], &[]);
        assert!(
            err.starts_with("--bearer-token-file") && err.contains("/nonexistent/token"),
            "{err}"
        );
        let empty = file_with("\n");
        let path = empty.path().to_str().unwrap();
        let err = load_err(&[URL[0], URL[1], "--bearer-token-file", path], &[]);
        assert!(err.contains("is empty"), "{err}");
    }

    #[test]
    fn window_shorter_than_a_second_is_refused() {
        let (_file, path) = yaml("upload_url: http://p:4040\nwindow: 500ms\n");
        let err = load_err(&["--config", &path], &[]);
        assert!(err.contains("`window`") && err.contains("(--window)"), "{err}");
        assert!(err.contains("shorter than a second"), "{err}");
    }

    #[test]
    fn zero_frequency_is_refused() {
        let err = load_err(&URL, &[("TASKPROF_FREQUENCY", "0")]);
        assert!(
            err.starts_with("TASKPROF_FREQUENCY (--frequency)") && err.contains("1 to 10000"),
            "{err}"
        );
        let (_file, path) = yaml("upload_url: http://p:4040\nfrequency: 0\n");
        assert!(load_err(&["--config", &path], &[]).contains("out of range"));
    }

    #[test]
    fn bad_and_reserved_label_names_are_named() {
        let err = load_err(&URL, &[("TASKPROF_LABEL", "ok=1,bad-name=2")]);
        assert!(
            err.contains("TASKPROF_LABEL (--label)") && err.contains("`bad-name`"),
            "{err}"
        );
        let (_file, path) = yaml("upload_url: http://p:4040\nlabels: {service_name: x}\n");
        let err = load_err(&["--config", &path], &[]);
        assert!(
            err.contains("`labels`") && err.contains("`service_name` is reserved"),
            "{err}"
        );
        let err = load_err(&URL, &[("TASKPROF_LABEL", "a=1,a=2")]);
        assert!(err.contains("`a` is given twice"), "{err}");
    }

    #[test]
    fn header_without_colon_is_refused_without_echoing_it() {
        let err = load_err(&[URL[0], URL[1], "--header", "Authorization Bearer s3cret"], &[]);
        assert!(err.starts_with("--header") && err.contains("Name: value"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = load_err(&URL, &[("TASKPROF_HEADER", "A: 1,B s3cret")]);
        assert!(
            err.starts_with("TASKPROF_HEADER (--header)") && !err.contains("s3cret"),
            "{err}"
        );
        let err = load_err(&[URL[0], URL[1], "--header", "Bad Name s3cret: v"], &[]);
        assert!(err.contains("header 1") && !err.contains("s3cret"), "{err}");
    }

    #[test]
    fn headers_split_on_the_first_colon() {
        let config = load(
            &[
                URL[0],
                URL[1],
                "--header",
                "X-Scope-OrgID: t1",
                "--header",
                "X-Url:http://a:1",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            config.delivery.upload.headers,
            vec![
                ("X-Scope-OrgID".into(), Secret::new("t1")),
                ("X-Url".into(), Secret::new("http://a:1"))
            ]
        );
    }

    #[test]
    fn basic_auth_user_needs_a_password_file() {
        let err = load_err(&[URL[0], URL[1], "--basic-auth-user", "u"], &[]);
        assert!(
            err.contains("--basic-auth-user") && err.contains("--basic-auth-password-file"),
            "{err}"
        );
        let password = file_with("pw\n");
        let path = password.path().to_str().unwrap();
        let err = load_err(&[URL[0], URL[1], "--basic-auth-password-file", path], &[]);
        assert!(err.contains("--basic-auth-user"), "{err}");
        let config = load(
            &[URL[0], URL[1], "--basic-auth-password-file", path],
            &[("TASKPROF_BASIC_AUTH_USER", "u")],
        )
        .unwrap();
        assert_eq!(
            config.delivery.upload.auth,
            Auth::Basic {
                user: "u".into(),
                password: Secret::new("pw")
            }
        );
    }

    #[test]
    fn bearer_and_basic_auth_are_exclusive() {
        let token = file_with("tok");
        let path = token.path().to_str().unwrap();
        let err = load_err(
            &[URL[0], URL[1], "--bearer-token-file", path, "--basic-auth-user", "u"],
            &[],
        );
        assert!(
            err.contains("--bearer-token-file and --basic-auth-user cannot be used together"),
            "{err}"
        );
    }

    #[test]
    fn bad_metrics_address_is_named() {
        let err = load_err(&URL, &[("TASKPROF_METRICS_ADDRESS", "localhost:7071")]);
        assert!(err.starts_with("TASKPROF_METRICS_ADDRESS (--metrics-address)"), "{err}");
        assert!(err.contains("localhost:7071"), "{err}");
    }

    #[test]
    fn secrets_never_show_in_debug_or_errors() {
        let token = file_with("token-s3cret\n");
        let password = file_with("password-s3cret\r\n");
        let token_path = token.path().to_str().unwrap();
        let password_path = password.path().to_str().unwrap();

        let config = load(
            &[
                URL[0],
                URL[1],
                "--bearer-token-file",
                token_path,
                "--header",
                "X-Setting: header-s3cret",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(config.delivery.upload.auth, Auth::Bearer(Secret::new("token-s3cret")));
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");

        let config = load(
            &[
                URL[0],
                URL[1],
                "--basic-auth-user",
                "u",
                "--basic-auth-password-file",
                password_path,
            ],
            &[],
        )
        .unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret") && shown.contains("redacted"), "{shown}");

        let err = load_err(
            &[
                URL[0],
                URL[1],
                "--bearer-token-file",
                token_path,
                "--basic-auth-password-file",
                password_path,
            ],
            &[],
        );
        assert!(!err.contains("s3cret"), "{err}");
        let (_file, path) = yaml("upload_url: http://p:4040\nheaders: {X-Setting: [header-s3cret]}\n");
        let err = load_err(&["--config", &path], &[]);
        assert!(err.contains("headers") && !err.contains("s3cret"), "{err}");
    }

    #[test]
    fn node_name_defaults_to_node_name_env_then_hostname() {
        assert_eq!(
            load(&URL, &[("NODE_NAME", "k8s-node")]).unwrap().identity.node_name,
            "k8s-node"
        );
        assert_eq!(
            load(&URL, &[("NODE_NAME", "k8s-node"), ("TASKPROF_NODE_NAME", "mine")])
                .unwrap()
                .identity
                .node_name,
            "mine"
        );
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(load(&URL, &[]).unwrap().identity.node_name, hostname.trim());
    }

    #[test]
    fn rust_log_is_honoured_below_the_flag_and_its_variable() {
        assert_eq!(
            load(&URL, &[("RUST_LOG", "debug")]).unwrap().observability.log_level,
            "debug"
        );
        let env = [("RUST_LOG", "debug"), ("TASKPROF_LOG_LEVEL", "warn")];
        assert_eq!(load(&URL, &env).unwrap().observability.log_level, "warn");
        let err = load_err(&URL, &[("RUST_LOG", "taskprof=loud")]);
        assert!(err.starts_with("RUST_LOG (--log-level)"), "{err}");
    }

    #[test]
    fn pids_must_be_live_processes() {
        let own = std::process::id().to_string();
        let config = load(&[URL[0], URL[1], "--pid", &own, "--pid", &own], &[]).unwrap();
        assert_eq!(config.sampling.pids, vec![std::process::id()]);
        let err = load(&URL, &[("TASKPROF_PID", "4294967290")]).unwrap_err();
        assert!(
            matches!(err, AgentConfigError::Process(ConfigError::NoSuchProcess(_))),
            "{err}"
        );
        let err = load_err(&URL, &[("TASKPROF_PID", "abc")]);
        assert!(err.starts_with("TASKPROF_PID (--pid)"), "{err}");
    }

    #[test]
    fn usage_errors_of_both_modes_are_recognised() {
        let agent = anyhow::Error::new(load(&[], &[]).unwrap_err());
        assert!(is_usage_error(&agent));
        assert!(is_usage_error(&agent.context("failed to start the agent")));
        assert!(is_usage_error(&anyhow::Error::new(ConfigError::NoSuchProcess(1))));
        assert!(!is_usage_error(&anyhow::anyhow!("failed to load BPF")));
    }
}
