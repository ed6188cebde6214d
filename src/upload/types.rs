//! Data shared by the agent, its configuration and the uploaders.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub use crate::util::secret::Secret;

/// The backend protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Grafana Pyroscope: `POST /ingest?format=pprof`, one profile per request.
    Pyroscope,
    /// Parca: `POST /api/profiles/writeraw`, many series per request.
    Parca,
    /// A directory on disk: one file per profile.
    File,
    /// OTLP/HTTP: `POST {base}/v1development/profiles`, a binary protobuf
    /// `ExportProfilesServiceRequest` per window.
    Otlp,
    /// OTLP/gRPC: `ProfilesService/Export`, the same request per window.
    OtlpGrpc,
}

impl Protocol {
    /// Whether windows for this protocol are built as OTLP (one shared
    /// dictionary per window) rather than as one pprof per series.
    pub fn is_otlp(self) -> bool {
        matches!(self, Protocol::Otlp | Protocol::OtlpGrpc)
    }
}

/// How request bodies are compressed, where a protocol lets us choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (`Content-Encoding: gzip`, or gRPC's `grpc-encoding: gzip`).
    Gzip,
    /// Sent as they are.
    None,
}

/// How requests authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// No credentials.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// `Authorization: Basic ...`.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: Secret,
    },
}

/// Where and how profiles are delivered.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    /// The protocol.
    pub protocol: Protocol,
    /// Base URL for HTTP protocols (e.g. `http://pyroscope:4040`); for
    /// `file`, a `file://` URL of the output directory.
    pub url: url::Url,
    /// Timeout of each request.
    pub timeout: Duration,
    /// Requests in flight at once, where a protocol sends several.
    pub concurrency: usize,
    /// Request body compression (OTLP; the pprof protocols always send
    /// gzipped profiles).
    pub compression: Compression,
    /// Credentials.
    pub auth: Auth,
    /// Extra headers on every request (e.g. `X-Scope-OrgID`). Values may be
    /// secret, so they are kept as such.
    pub headers: Vec<(String, Secret)>,
    /// PEM file with CA certificates to trust in addition to the system's.
    pub tls_ca_file: Option<PathBuf>,
    /// Accept any server certificate (loudly warned about at start-up).
    pub tls_insecure_skip_verify: bool,
}

/// Where undeliverable profiles are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// The directory (created if missing).
    pub dir: PathBuf,
    /// Bound on the spool's total size; the oldest windows are evicted first.
    pub max_bytes: u64,
}

/// One process's profile for one window, with its series labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesProfile {
    /// Series labels, including `service_name`. Names are unique.
    pub labels: Vec<(String, String)>,
    /// What the protocol sends for this profile: the gzipped pprof, or for
    /// OTLP one encoded `ResourceProfiles` whose indices point into the
    /// window's [`Batch::shared`] dictionary.
    pub payload: Vec<u8>,
    /// Samples in the profile (for accounting).
    pub samples: u64,
}

impl SeriesProfile {
    /// The value of a label.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Everything one window produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Window sequence number, increasing over the agent's life and across
    /// restarts (it starts from the wall clock), so order can be kept.
    pub sequence: u64,
    /// Window start.
    pub start: SystemTime,
    /// Window end.
    pub end: SystemTime,
    /// One profile per series (or, for OTLP, per process) that had samples.
    pub profiles: Vec<SeriesProfile>,
    /// Bytes every profile of the window refers to: for OTLP the encoded
    /// `ProfilesDictionary`; empty for the pprof protocols.
    pub shared: Vec<u8>,
}
