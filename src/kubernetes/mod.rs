//! Kubernetes metadata for profiles: which pod, namespace, workload and
//! container a sampled process belongs to, kept current by watching the
//! API server for the pods of this node.
//!
//! The pieces, in the order data flows:
//! - [`KubeConfig`] says where the API server is and how to authenticate,
//!   normally from the in-cluster service account;
//! - [`spawn_watcher`] lists the node's pods, then watches them, and keeps a
//!   [`PodCache`] filled; on a 410 Gone it relists, on a lost connection it
//!   keeps the last cache and reconnects with backoff;
//! - the agent maps a process to a container id with
//!   [`crate::process::cgroup`], asks [`PodCache::lookup_container`] (and,
//!   for an unknown id, [`PodCache::request_refresh_for`]), checks
//!   [`PodFilter::allows`], and labels the series with [`series_labels`].
//!
//! This is a small hand-written list+watch client over `reqwest` rather than
//! `kube-rs`: taskprof reads one resource (pods), with one field selector
//! (its node), and needs nothing of kube-rs's typed API, config-file
//! loading or controller runtime. Doing it directly keeps the dependency
//! tree and the binary small, and keeps every request, retry and log line
//! under taskprof's own control.

mod cache;
mod filter;
mod labels;
mod pod;
mod watch;

use std::path::{Path, PathBuf};

use url::Url;

pub use cache::{CacheStats, PodCache, DEFAULT_DELETED_GRACE, REFRESH_INTERVAL, UNKNOWN_CONTAINER_RETRY};
pub use filter::{LabelSelector, PodFilter, Requirement, SelectorError, MIN_CONTAINER_ID_PREFIX};
pub use labels::{series_labels, LabelOptions, DEFAULT_SERVICE_NAME_LABEL};
pub use pod::{strip_runtime_prefix, PodMetadata};
/// The list/watch decoders, for the fuzz targets ([`crate::fuzzing`]).
pub(crate) use watch::fuzzing as watch_fuzzing;
pub use watch::spawn_watcher;

/// Where the in-cluster service account is mounted.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How to reach the API server and who this agent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeConfig {
    /// The API server's base URL, e.g. `https://10.96.0.1:443`.
    pub api_url: Url,
    /// The bearer token file. It is read again on every (re)connection, so
    /// a rotated projected token is picked up; its content is never logged.
    pub token_path: PathBuf,
    /// A PEM bundle to trust for the API server, besides the system roots.
    pub ca_path: Option<PathBuf>,
    /// This node's name: only pods scheduled here are watched.
    pub node_name: String,
    /// Accept any server certificate. For tests and emergencies only.
    pub insecure_skip_verify: bool,
}

impl KubeConfig {
    /// The configuration of a pod's own service account: the API server from
    /// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT` (read through
    /// `env`), the token and
    /// CA from [`SERVICE_ACCOUNT_DIR`]. `node_name` normally comes from the
    /// downward API (`spec.nodeName`).
    pub fn in_cluster(env: &dyn Fn(&str) -> Option<String>, node_name: &str) -> Result<KubeConfig, KubeError> {
        let host = env("KUBERNETES_SERVICE_HOST");
        let port = env("KUBERNETES_SERVICE_PORT");
        KubeConfig::from_parts(
            host.as_deref(),
            port.as_deref(),
            Path::new(SERVICE_ACCOUNT_DIR),
            node_name,
        )
    }

    /// [`KubeConfig::in_cluster`] with its inputs given, so that it can be
    /// tested without the environment.
    fn from_parts(
        host: Option<&str>,
        port: Option<&str>,
        account_dir: &Path,
        node_name: &str,
    ) -> Result<KubeConfig, KubeError> {
        let missing = |what: String| KubeError::NotInCluster { what };
        let host = host
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .ok_or_else(|| missing("the KUBERNETES_SERVICE_HOST environment variable is not set".to_string()))?;
        let port = port
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| missing("the KUBERNETES_SERVICE_PORT environment variable is not set".to_string()))?;
        let port: u16 = port.parse().map_err(|_| KubeError::Config {
            reason: format!("KUBERNETES_SERVICE_PORT `{port}` is not a port number"),
        })?;
        // An IPv6 address needs brackets in a URL.
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let api_url = Url::parse(&format!("https://{host}:{port}")).map_err(|err| KubeError::Config {
            reason: format!("KUBERNETES_SERVICE_HOST `{host}` does not make a valid URL: {err}"),
        })?;
        let token_path = account_dir.join("token");
        if !token_path.is_file() {
            return Err(missing(format!(
                "the service account token `{}` does not exist",
                token_path.display()
            )));
        }
        let ca_path = account_dir.join("ca.crt");
        if !ca_path.is_file() {
            return Err(missing(format!(
                "the service account CA `{}` does not exist",
                ca_path.display()
            )));
        }
        let node_name = node_name.trim();
        if node_name.is_empty() {
            return Err(KubeError::Config {
                reason: "the node name is empty: pass it from the downward API (`spec.nodeName`)".to_string(),
            });
        }
        Ok(KubeConfig {
            api_url,
            token_path,
            ca_path: Some(ca_path),
            node_name: node_name.to_string(),
            insecure_skip_verify: false,
        })
    }
}

/// What can go wrong talking to Kubernetes. No variant ever holds the
/// token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeError {
    /// Not running in a pod with a service account.
    #[error(
        "failed to configure Kubernetes access: {what}; `--kubernetes` needs the in-cluster service account \
         (run taskprof as a pod whose service account may list and watch pods)"
    )]
    NotInCluster {
        /// What is missing.
        what: String,
    },
    /// A setting is present but unusable.
    #[error("failed to configure Kubernetes access: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The token file could not be used.
    #[error("failed to read the Kubernetes token `{path}`: {reason}")]
    Token {
        /// The token file.
        path: PathBuf,
        /// Why (never the content).
        reason: String,
    },
    /// The CA file could not be used.
    #[error("failed to load the Kubernetes CA `{path}`: {reason}")]
    CaFile {
        /// The CA file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("failed to build the Kubernetes HTTP client: {reason}")]
    Client {
        /// Why.
        reason: String,
    },
    /// The request did not get an answer (connection refused, reset, TLS,
    /// timeout).
    #[error("failed to reach the Kubernetes API at {url}: {reason}")]
    Transport {
        /// The URL, without query.
        url: String,
        /// Why.
        reason: String,
    },
    /// The API server answered with an error status.
    #[error("the Kubernetes API answered {status} to {url}: {message}{hint}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The URL, without query.
        url: String,
        /// The server's message, shortened.
        message: String,
        /// What to check, for statuses with a usual cause.
        hint: &'static str,
    },
    /// The resource version is too old to watch from (HTTP 410 or an ERROR
    /// event with code 410): the pods must be listed again.
    #[error("the Kubernetes watch expired (410 Gone); relisting")]
    Gone,
    /// The answer was not what the API promises.
    #[error("failed to decode the Kubernetes API's answer from {url}: {reason}")]
    Decode {
        /// The URL, without query.
        url: String,
        /// Why.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("token"), "secret-token").expect("write token");
        std::fs::write(dir.path().join("ca.crt"), "ca").expect("write ca");
        dir
    }

    #[test]
    fn in_cluster_config_from_the_service_environment() {
        let dir = account_dir();
        let config = KubeConfig::from_parts(Some("10.96.0.1"), Some("443"), dir.path(), "node-a").expect("config");
        assert_eq!(config.api_url.as_str(), "https://10.96.0.1/");
        assert_eq!(config.token_path, dir.path().join("token"));
        assert_eq!(config.ca_path, Some(dir.path().join("ca.crt")));
        assert_eq!(config.node_name, "node-a");
        assert!(!config.insecure_skip_verify);

        let config = KubeConfig::from_parts(Some("fd00:10:96::1"), Some("6443"), dir.path(), "n").expect("config");
        assert_eq!(config.api_url.as_str(), "https://[fd00:10:96::1]:6443/");
    }

    #[test]
    fn missing_pieces_are_named() {
        let dir = account_dir();
        let err = KubeConfig::from_parts(None, Some("443"), dir.path(), "n").expect_err("no host");
        let text = err.to_string();
        assert!(
            text.contains("KUBERNETES_SERVICE_HOST") && text.contains("--kubernetes"),
            "{text}"
        );
        let err = KubeConfig::from_parts(Some("h"), None, dir.path(), "n").expect_err("no port");
        assert!(err.to_string().contains("KUBERNETES_SERVICE_PORT"), "{err}");
        let err = KubeConfig::from_parts(Some("h"), Some("https"), dir.path(), "n").expect_err("bad port");
        assert!(err.to_string().contains("`https`"), "{err}");
        let err = KubeConfig::from_parts(Some("h"), Some("443"), dir.path(), " ").expect_err("no node");
        assert!(err.to_string().contains("node name"), "{err}");

        let empty = tempfile::tempdir().expect("tempdir");
        let err = KubeConfig::from_parts(Some("h"), Some("443"), empty.path(), "n").expect_err("no token");
        let text = err.to_string();
        assert!(text.contains("token") && text.contains("--kubernetes"), "{text}");
        std::fs::write(empty.path().join("token"), "t").expect("write token");
        let err = KubeConfig::from_parts(Some("h"), Some("443"), empty.path(), "n").expect_err("no CA");
        assert!(err.to_string().contains("ca.crt"), "{err}");
    }
}
