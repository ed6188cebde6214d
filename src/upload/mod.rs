//! Delivery of profiles to a backend: one file per protocol behind the
//! [`Uploader`] trait, with retries, a bounded queue and an on-disk spool
//! in between, so that a slow or dead backend never blocks sampling and
//! nothing collected is lost.
//!
//! The pieces, in the order a window's [`Batch`] meets them:
//! - [`delivery::DeliveryHandle::submit`] queues it without ever blocking; when the
//!   queue is full it goes to the [`Spool`] instead;
//! - the worker started by [`Delivery::start`] sends batches strictly in
//!   sequence order, retries what failed with backoff, and spools what it
//!   cannot deliver within the retry budget;
//! - an [`Uploader`] speaks one protocol: Pyroscope, Parca, OTLP over HTTP
//!   or gRPC, or a directory.
//!   [`build_uploader`] picks it from the [`UploadConfig`]. A new protocol is
//!   one new file implementing the trait, plus one arm in [`build_uploader`].

mod client;
mod delivery;
mod file;
mod otlp;
mod otlp_grpc;
mod otlp_http;
mod parca;
mod pyroscope;
mod spool;
mod types;

#[cfg(test)]
pub(crate) mod test_support {
    //! Values the uploaders' tests build again and again.

    use std::time::Duration;

    use super::{Auth, Compression, Protocol, SeriesProfile, UploadConfig};

    /// An upload configuration for `protocol` at `url`, with no credentials,
    /// headers or TLS settings, a 5 s timeout and two requests in flight.
    pub(crate) fn upload_config(protocol: Protocol, url: &str) -> UploadConfig {
        UploadConfig {
            protocol,
            url: url::Url::parse(url).expect("test URL"),
            timeout: Duration::from_secs(5),
            concurrency: 2,
            compression: Compression::Gzip,
            auth: Auth::None,
            headers: Vec::new(),
            tls_ca_file: None,
            tls_insecure_skip_verify: false,
        }
    }

    /// A profile with `labels` whose pprof bytes are `body`.
    pub(crate) fn series_profile(labels: &[(&str, &str)], body: &[u8]) -> SeriesProfile {
        SeriesProfile {
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            payload: body.to_vec(),
            samples: 1,
        }
    }
}

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use client::read_ca_certificates;
pub use delivery::{Delivery, DeliveryOptions};
pub use file::FileUploader;
pub use otlp_grpc::OtlpGrpcUploader;
pub use otlp_http::OtlpHttpUploader;
pub use parca::ParcaUploader;
pub use pyroscope::PyroscopeUploader;
pub use spool::Spool;
pub use types::*;

use crate::agent::metrics::Metrics;

/// Longest server message kept in a [`UploadError::Rejected`].
const MAX_MESSAGE_BYTES: usize = 1024;

/// Why one profile was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    /// A failure that may pass: a timeout, a refused connection, a 5xx, 408
    /// or 429. The profile should be sent again later.
    #[error("{reason}")]
    Retryable {
        /// What went wrong, without secrets.
        reason: String,
        /// How long the server asked us to wait (`Retry-After` on 429/503).
        retry_after: Option<Duration>,
    },
    /// The server refused the profile for good (a 4xx other than 408/429),
    /// or the request could not even be built (`status` 0). Sending the same
    /// bytes again would fail again.
    #[error("rejected with status {status}: {message}")]
    Rejected {
        /// The HTTP status, or 0 when no request was sent.
        status: u16,
        /// The server's explanation, cut to about 1 KiB.
        message: String,
    },
}

impl UploadError {
    /// A retryable error without a server-requested delay.
    pub fn retryable(reason: impl Into<String>) -> UploadError {
        UploadError::Retryable {
            reason: reason.into(),
            retry_after: None,
        }
    }

    #[cfg(test)]
    /// Whether sending again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, UploadError::Retryable { .. })
    }

    #[cfg(test)]
    /// The delay the server asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            UploadError::Retryable { retry_after, .. } => *retry_after,
            UploadError::Rejected { .. } => None,
        }
    }
}

/// Why an uploader could not be set up. Raised at start-up, before any
/// profile is taken.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The CA file could not be read or holds no usable certificate.
    #[error("failed to load the CA certificates from `{path}`: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A header name or value cannot be sent. The value is never shown.
    #[error("the header `{name}` cannot be sent: {reason}")]
    Header {
        /// The header's name, as given.
        name: String,
        /// Why.
        reason: String,
    },
    /// The URL does not suit the protocol.
    #[error("the {protocol} URL `{url}` cannot be used: {reason}")]
    Url {
        /// The protocol's name.
        protocol: &'static str,
        /// The URL, without credentials or query.
        url: String,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("failed to set up the HTTP client: {reason}")]
    Client {
        /// Why.
        reason: String,
    },
    /// The output directory of the `file` protocol could not be created.
    #[error("failed to create the output directory `{path}`: {error}")]
    OutputDir {
        /// The directory.
        path: PathBuf,
        /// The operating system's reason.
        error: std::io::Error,
    },
}

/// What [`Uploader::send`] returns: one result per profile, in order.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Vec<Result<(), UploadError>>> + Send + 'a>>;

/// Sends profiles to one kind of backend.
///
/// Implementations never retry by themselves: the delivery worker decides
/// what to send again, when, and what to keep on disk meanwhile.
pub trait Uploader: Send + Sync {
    /// Sends `profiles`, all of which belong to `window` (they may be only the
    /// part of its profiles not delivered yet, so send these, not
    /// `window.profiles`). The result holds exactly one entry per profile, in
    /// the same order; a protocol that sends several profiles in one request
    /// repeats that request's outcome for each of them.
    fn send<'a>(&'a self, profiles: &'a [SeriesProfile], window: &'a Batch) -> SendFuture<'a>;

    /// The protocol's name, for logs and spans (`pyroscope`, `parca`, `file`).
    fn name(&self) -> &'static str;
}

/// Builds the uploader that `config` asks for. HTTP protocols share one
/// client built by [`client::http_client`]; `file` creates its directory;
/// `otlp-grpc` sets up its channel, which needs a Tokio runtime entered.
pub fn build_uploader(config: &UploadConfig, metrics: Metrics) -> Result<Arc<dyn Uploader>, SetupError> {
    Ok(match config.protocol {
        Protocol::Pyroscope => Arc::new(PyroscopeUploader::new(config, metrics)?),
        Protocol::Parca => Arc::new(ParcaUploader::new(config, metrics)?),
        Protocol::File => Arc::new(FileUploader::new(config)?),
        Protocol::Otlp => Arc::new(OtlpHttpUploader::new(config, metrics)?),
        Protocol::OtlpGrpc => Arc::new(OtlpGrpcUploader::new(config, metrics)?),
    })
}

/// Replaces every character that `keep` refuses with `_`. An empty input
/// becomes `unknown`, so the result can always be used as a name.
pub(crate) fn sanitize_name(raw: &str, keep: impl Fn(char) -> bool) -> String {
    if raw.is_empty() {
        return "unknown".to_string();
    }
    raw.chars().map(|c| if keep(c) { c } else { '_' }).collect()
}

/// A valid Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`) made from `raw`,
/// or `None` when nothing is left to name.
pub(crate) fn prometheus_label_name(raw: &str) -> Option<String> {
    if raw.is_empty() {
        return None;
    }
    let mut name: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    Some(name)
}

/// A profile's labels as a backend can take them: names made
/// Prometheus-valid, labels with empty values left out (Prometheus treats
/// them as absent), names in `exclude` left out, and only the first of any
/// names that became equal after cleaning kept.
pub(crate) fn series_labels<'p>(profile: &'p SeriesProfile, exclude: &[&str]) -> Vec<(String, &'p str)> {
    let mut labels: Vec<(String, &str)> = Vec::with_capacity(profile.labels.len());
    for (raw_name, value) in &profile.labels {
        if value.is_empty() {
            continue;
        }
        let Some(name) = prometheus_label_name(raw_name) else {
            continue;
        };
        if exclude.contains(&name.as_str()) || labels.iter().any(|(seen, _)| *seen == name) {
            continue;
        }
        labels.push((name, value));
    }
    labels
}

/// Trims a server's message and cuts it to about 1 KiB on a character
/// boundary, so that a huge HTML error page does not flood the logs.
pub(crate) fn truncate_message(raw: &str) -> String {
    let trimmed = raw.trim();
    if trimmed.len() <= MAX_MESSAGE_BYTES {
        return trimmed.to_string();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !trimmed.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &trimmed[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(labels: &[(&str, &str)]) -> SeriesProfile {
        test_support::series_profile(labels, &[1, 2, 3])
    }

    #[test]
    fn label_names_become_prometheus_valid() {
        assert_eq!(prometheus_label_name("pod.name").as_deref(), Some("pod_name"));
        assert_eq!(prometheus_label_name("9lives").as_deref(), Some("_9lives"));
        assert_eq!(prometheus_label_name("k8s-app/é").as_deref(), Some("k8s_app__"));
        assert_eq!(prometheus_label_name(""), None);
    }

    #[test]
    fn series_labels_drop_empty_excluded_and_duplicate_names() {
        let p = profile(&[
            ("service_name", "api"),
            ("pod.name", "a"),
            ("pod_name", "b"),
            ("empty", ""),
            ("node", "n1"),
        ]);
        let labels = series_labels(&p, &["service_name"]);
        assert_eq!(labels, vec![("pod_name".to_string(), "a"), ("node".to_string(), "n1")]);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(2000);
        let cut = truncate_message(&long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES + "…".len());
        assert!(cut.ends_with('…'));
        assert_eq!(truncate_message("  short \n"), "short");
    }

    #[test]
    fn names_are_sanitized_and_never_empty() {
        let keep = |c: char| c.is_ascii_alphanumeric() || "_./-".contains(c);
        assert_eq!(sanitize_name("kworker/0:1", keep), "kworker/0_1");
        assert_eq!(sanitize_name("", keep), "unknown");
    }
}
