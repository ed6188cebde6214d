//! Every setting of `taskprof agent`, written once: its flag, its
//! `TASKPROF_*` environment variable (derived from the flag), its key in
//! the `--config` YAML file, its default and its help. The clap flags take
//! their names and help from here, the config reader takes the names it
//! reports and the defaults it applies, and the tests check that the flags
//! and the YAML keys agree with this table.
//!
//! The settings are grouped the way the agent's parts consume them:
//! sampling, delivery (upload and spool), identity (labels), Kubernetes
//! and observability.

/// One agent setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The long flag, without `--`.
    pub flag: &'static str,
    /// The key in the `--config` YAML file; empty for `--config` itself.
    pub yaml: &'static str,
    /// The default, written as on the command line; `None` when there is
    /// none or it is worked out at start-up (the help says how).
    pub default: Option<&'static str>,
    /// What the setting does, for `--help`.
    pub help: &'static str,
}

impl Setting {
    const fn new(flag: &'static str, yaml: &'static str, default: Option<&'static str>, help: &'static str) -> Setting {
        Setting {
            flag,
            yaml,
            default,
            help,
        }
    }

    /// The environment variable: `TASKPROF_` and the flag in upper snake case.
    pub fn env(&self) -> String {
        format!("TASKPROF_{}", self.flag.to_ascii_uppercase().replace('-', "_"))
    }

    /// The `--help` text: the help, the variable and the default.
    pub fn help_text(&self) -> String {
        let mut text = format!("{} [env: {}]", self.help, self.env());
        if let Some(default) = self.default {
            text.push_str(&format!(" [default: {default}]"));
        }
        text
    }
}

// Sampling.

/// `--config`.
pub const CONFIG: Setting = Setting::new(
    "config",
    "",
    None,
    "YAML file with settings; its keys are the flag names in snake case.",
);
/// `--frequency`.
pub const FREQUENCY: Setting = Setting::new(
    "frequency",
    "frequency",
    Some("19"),
    "Samples per second on each CPU, 1 to 10000.",
);
/// `--window`.
pub const WINDOW: Setting = Setting::new(
    "window",
    "window",
    Some("10s"),
    "How much time each uploaded profile covers, at least 1s.",
);
/// `--pid`.
pub const PID: Setting = Setting::new(
    "pid",
    "pids",
    None,
    "Only sample this process (repeatable). Default: every process.",
);
/// `--verifier-log`.
pub const VERIFIER_LOG: Setting = Setting::new(
    "verifier-log",
    "verifier_log",
    None,
    "Print libbpf's and the verifier's log when the BPF program fails to load.",
);
/// `--debug-info`.
pub const DEBUG_INFO: Setting = Setting::new(
    "debug-info",
    "debug_info",
    None,
    "Also read DWARF debug info, for file names, line numbers and inlined frames. Off by default: \
     function names come from symbol tables, and DWARF costs memory in proportion to the profiled \
     binaries' debug info.",
);
/// `--unwind`.
pub const UNWIND: Setting = Setting::new(
    "unwind",
    "unwind",
    Some("dwarf"),
    "How to walk user stacks: `dwarf` (.eh_frame unwind tables, for code built without frame \
     pointers) or `fp` (frame pointers only).",
);
/// `--unwind-table-memory`.
pub const UNWIND_TABLE_MEMORY: Setting = Setting::new(
    "unwind-table-memory",
    "unwind_table_memory",
    Some("64MiB"),
    "Kernel memory for unwind tables; tables that do not fit are counted and their code falls \
     back to frame pointers.",
);

/// `--symbol-cache-memory`.
pub const SYMBOL_CACHE_MEMORY: Setting = Setting::new(
    "symbol-cache-memory",
    "symbol_cache_memory",
    Some("32MiB"),
    "Memory for the symbol caches, half for the names found and half for the parsed symbol tables \
     of files; past it the least recently used go, and files are parsed again when needed \
     (`taskprof_symbol_cache_bytes`).",
);

/// `--include-idle`.
pub const INCLUDE_IDLE: Setting = Setting::new(
    "include-idle",
    "include_idle",
    None,
    "Keep the samples of idle CPUs (the idle task, pid 0) in the profiles, as perf does. By \
     default they are only counted, in `taskprof_samples_total{kind=\"idle\"}`.",
);

/// `--python`.
pub const PYTHON: Setting = Setting::new(
    "python",
    "python",
    Some("on"),
    "Name the Python functions of CPython 3.8-3.13 processes (`on`), or leave their stacks native \
     (`off`).",
);

// Delivery.

/// `--upload-url`.
pub const UPLOAD_URL: Setting = Setting::new(
    "upload-url",
    "upload_url",
    None,
    "Backend base URL, e.g. http://pyroscope:4040; for the file protocol, a directory or a \
     file:// URL. Required.",
);
/// `--upload-protocol`.
pub const UPLOAD_PROTOCOL: Setting = Setting::new(
    "upload-protocol",
    "upload_protocol",
    Some("pyroscope"),
    "Backend protocol: pyroscope, parca, otlp (OTLP/HTTP profiles), otlp-grpc or file.",
);
/// `--upload-compression`.
pub const UPLOAD_COMPRESSION: Setting = Setting::new(
    "upload-compression",
    "upload_compression",
    Some("gzip"),
    "Compression of OTLP request bodies: gzip or none. The pprof protocols always send gzipped \
     profiles.",
);
/// `--upload-timeout`.
pub const UPLOAD_TIMEOUT: Setting = Setting::new(
    "upload-timeout",
    "upload_timeout",
    Some("10s"),
    "Timeout of each upload request.",
);
/// `--upload-concurrency`.
pub const UPLOAD_CONCURRENCY: Setting = Setting::new(
    "upload-concurrency",
    "upload_concurrency",
    Some("4"),
    "Upload requests in flight at once, 1 to 64.",
);
/// `--bearer-token-file`.
pub const BEARER_TOKEN_FILE: Setting = Setting::new(
    "bearer-token-file",
    "bearer_token_file",
    None,
    "File holding a bearer token, sent as `Authorization: Bearer`. Read once at start-up.",
);
/// `--basic-auth-user`.
pub const BASIC_AUTH_USER: Setting = Setting::new(
    "basic-auth-user",
    "basic_auth_user",
    None,
    "User name for HTTP basic auth; needs --basic-auth-password-file.",
);
/// `--basic-auth-password-file`.
pub const BASIC_AUTH_PASSWORD_FILE: Setting = Setting::new(
    "basic-auth-password-file",
    "basic_auth_password_file",
    None,
    "File holding the password for HTTP basic auth. Read once at start-up.",
);
/// `--header`.
pub const HEADER: Setting = Setting::new(
    "header",
    "headers",
    None,
    "Extra header on every request, `Name: value` (repeatable), e.g. `X-Scope-OrgID: tenant1`. \
     Values are treated as secrets.",
);
/// `--tls-ca-file`.
pub const TLS_CA_FILE: Setting = Setting::new(
    "tls-ca-file",
    "tls_ca_file",
    None,
    "PEM file of CA certificates to trust besides the system's.",
);
/// `--tls-insecure-skip-verify`.
pub const TLS_INSECURE_SKIP_VERIFY: Setting = Setting::new(
    "tls-insecure-skip-verify",
    "tls_insecure_skip_verify",
    None,
    "Accept any server certificate. Insecure: for testing only.",
);
/// `--spool-dir`.
pub const SPOOL_DIR: Setting = Setting::new(
    "spool-dir",
    "spool_dir",
    Some("/var/lib/taskprof/spool"),
    "Directory keeping profiles the backend did not take yet.",
);
/// `--spool-max-bytes`.
pub const SPOOL_MAX_BYTES: Setting = Setting::new(
    "spool-max-bytes",
    "spool_max_bytes",
    Some("256Mi"),
    "Bound on the spool's size: bytes, or with a suffix such as 256Mi or 1Gi.",
);
/// `--queue-capacity`.
pub const QUEUE_CAPACITY: Setting = Setting::new(
    "queue-capacity",
    "queue_capacity",
    Some("16"),
    "Windows waiting for upload before new ones go to the spool.",
);
/// `--shutdown-grace`.
pub const SHUTDOWN_GRACE: Setting = Setting::new(
    "shutdown-grace",
    "shutdown_grace",
    Some("10s"),
    "How long to keep uploading after SIGTERM before spooling the rest.",
);

// Identity.

/// `--service-name`.
pub const SERVICE_NAME: Setting = Setting::new(
    "service-name",
    "service_name",
    None,
    "The `service_name` of every profile. Default: the pod's (with --kubernetes), else each \
     process's name, and `kernel` for kernel threads.",
);
/// `--node-name`.
pub const NODE_NAME: Setting = Setting::new(
    "node-name",
    "node_name",
    None,
    "The `node` label. Default: $NODE_NAME, else the host name.",
);
/// `--label`.
pub const LABEL: Setting = Setting::new(
    "label",
    "labels",
    None,
    "Extra label on every profile, `name=value` (repeatable).",
);
/// `--series-per-process`.
pub const SERIES_PER_PROCESS: Setting = Setting::new(
    "series-per-process",
    "series_per_process",
    None,
    "Send one profile per process, labelled with its `pid`, instead of one per series \
     (service, node, pod or executable). Every process then starts a new series in the \
     backend: costly where processes come and go.",
);

// Kubernetes.

/// `--kubernetes`.
pub const KUBERNETES: Setting = Setting::new(
    "kubernetes",
    "kubernetes",
    None,
    "Label profiles with their pod's namespace, pod and container, from the API server \
     (in-cluster service account; pods on --node-name only).",
);
/// `--kubernetes-api-url`.
pub const KUBERNETES_API_URL: Setting = Setting::new(
    "kubernetes-api-url",
    "kubernetes_api_url",
    None,
    "API server URL. Default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT.",
);
/// `--kubernetes-token-file`.
pub const KUBERNETES_TOKEN_FILE: Setting = Setting::new(
    "kubernetes-token-file",
    "kubernetes_token_file",
    None,
    "Service account token, re-read on every connection. Default: the in-cluster token.",
);
/// `--kubernetes-ca-file`.
pub const KUBERNETES_CA_FILE: Setting = Setting::new(
    "kubernetes-ca-file",
    "kubernetes_ca_file",
    None,
    "CA bundle of the API server. Default: the in-cluster ca.crt.",
);
/// `--namespace`.
pub const NAMESPACE: Setting = Setting::new(
    "namespace",
    "namespaces",
    None,
    "Only profile pods in this namespace (repeatable).",
);
/// `--exclude-namespace`.
pub const EXCLUDE_NAMESPACE: Setting = Setting::new(
    "exclude-namespace",
    "exclude_namespaces",
    None,
    "Never profile pods in this namespace (repeatable).",
);
/// `--pod-selector`.
pub const POD_SELECTOR: Setting = Setting::new(
    "pod-selector",
    "pod_selector",
    None,
    "Only profile pods matching this label selector, e.g. `app=web,tier!=cache`.",
);
/// `--container-id`.
pub const CONTAINER_ID: Setting = Setting::new(
    "container-id",
    "container_ids",
    None,
    "Only profile this container (repeatable; a prefix of 12+ characters works).",
);
/// `--host-processes`.
pub const HOST_PROCESSES: Setting = Setting::new(
    "host-processes",
    "host_processes",
    Some("keep"),
    "What to do with processes outside any container: keep or drop.",
);
/// `--service-name-label`.
pub const SERVICE_NAME_LABEL: Setting = Setting::new(
    "service-name-label",
    "service_name_label",
    Some("app.kubernetes.io/name"),
    "Pod label whose value becomes `service_name`.",
);
/// `--pod-label`.
pub const POD_LABEL: Setting = Setting::new(
    "pod-label",
    "pod_labels",
    None,
    "Pod label to copy onto profiles as `pod_label_<name>` (repeatable).",
);

// Observability.

/// `--metrics-address`.
pub const METRICS_ADDRESS: Setting = Setting::new(
    "metrics-address",
    "metrics_address",
    Some("127.0.0.1:7071"),
    "Address of the Prometheus /metrics endpoint.",
);
/// `--log-format`.
pub const LOG_FORMAT: Setting = Setting::new(
    "log-format",
    "log_format",
    Some("text"),
    "Log format on stderr: text or json.",
);
/// `--log-level`.
pub const LOG_LEVEL: Setting = Setting::new(
    "log-level",
    "log_level",
    None,
    "Log filter, e.g. `info` or `taskprof=debug,warn`. Default: $RUST_LOG, else info.",
);

/// Every setting, in `--help` order.
pub const ALL: &[Setting] = &[
    CONFIG,
    FREQUENCY,
    WINDOW,
    PID,
    VERIFIER_LOG,
    DEBUG_INFO,
    UNWIND,
    UNWIND_TABLE_MEMORY,
    SYMBOL_CACHE_MEMORY,
    PYTHON,
    INCLUDE_IDLE,
    UPLOAD_URL,
    UPLOAD_PROTOCOL,
    UPLOAD_COMPRESSION,
    UPLOAD_TIMEOUT,
    UPLOAD_CONCURRENCY,
    BEARER_TOKEN_FILE,
    BASIC_AUTH_USER,
    BASIC_AUTH_PASSWORD_FILE,
    HEADER,
    TLS_CA_FILE,
    TLS_INSECURE_SKIP_VERIFY,
    SPOOL_DIR,
    SPOOL_MAX_BYTES,
    QUEUE_CAPACITY,
    SHUTDOWN_GRACE,
    SERVICE_NAME,
    NODE_NAME,
    LABEL,
    SERIES_PER_PROCESS,
    KUBERNETES,
    KUBERNETES_API_URL,
    KUBERNETES_TOKEN_FILE,
    KUBERNETES_CA_FILE,
    NAMESPACE,
    EXCLUDE_NAMESPACE,
    POD_SELECTOR,
    CONTAINER_ID,
    HOST_PROCESSES,
    SERVICE_NAME_LABEL,
    POD_LABEL,
    METRICS_ADDRESS,
    LOG_FORMAT,
    LOG_LEVEL,
];
