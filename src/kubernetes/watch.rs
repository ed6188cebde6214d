//! The list+watch loop that keeps a [`PodCache`] current.
//!
//! It lists the node's pods, remembers the list's `resourceVersion`, then
//! watches from there, reading the streamed newline-delimited JSON events
//! one line at a time (a line may arrive split over several chunks, or
//! several lines in one). A watch the server ends normally is resumed from
//! the last version seen. A 410 Gone (as the HTTP status, or as an ERROR
//! event) means that version is too old, so the pods are listed again; so
//! does a refresh asked for by the agent.
//!
//! When the API server cannot be reached, the cache keeps what it had, so
//! profiling goes on with slightly stale labels, and the loop retries with
//! exponential backoff and jitter. An outage is logged once when it starts
//! and once when it ends, never per retry.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION};
use serde::Deserialize;
use url::Url;

use super::pod::{decode_pod, ObjectMeta, PodMetadata};
use super::{KubeConfig, KubeError, PodCache};
use crate::util::backoff::Backoff;
use crate::util::secret::{authorization, read_secret_file};
use crate::util::{error_chain, redacted};

/// The `User-Agent` of every request.
const USER_AGENT: &str = concat!("taskprof/", env!("CARGO_PKG_VERSION"));

/// How long the server keeps one watch open. It ends the watch then, and
/// the loop resumes it from the last version seen.
const WATCH_TIMEOUT_SECONDS: u64 = 300;

/// How long a watch may stay silent before the connection is presumed dead.
/// Longer than the server's own timeout, and bookmarks come more often.
const WATCH_IDLE_TIMEOUT: Duration = Duration::from_secs(WATCH_TIMEOUT_SECONDS + 60);

/// How long a list may take, body included.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long to wait for the answer's headers.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait for a TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest watch event line accepted; a pod is a few kilobytes.
const MAX_EVENT_LINE: usize = 16 << 20;

/// The first retry delay, doubled at every failure up to the cap.
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);

/// The longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A watch the server ends normally sooner than this is treated as a
/// reason to back off, so that a misbehaving server is not hammered.
const MIN_WATCH_LIFETIME: Duration = Duration::from_secs(1);

/// Starts keeping `cache` filled with the pods of `config.node_name` on
/// `runtime`. The HTTP client (CA, TLS settings) is built first, so a bad
/// CA file is an error here; everything after that (the API server down,
/// RBAC refusing, a token not mounted yet) is retried forever in the task.
/// Abort the returned handle to stop watching.
pub fn spawn_watcher(
    config: KubeConfig,
    cache: PodCache,
    runtime: &tokio::runtime::Handle,
) -> Result<tokio::task::JoinHandle<()>, KubeError> {
    let client = build_client(&config)?;
    let mut pods_url = config.api_url.clone();
    pods_url.set_query(None);
    pods_url.set_fragment(None);
    pods_url
        .path_segments_mut()
        .map_err(|()| KubeError::Config {
            reason: format!("the API server URL `{}` cannot have a path", config.api_url),
        })?
        .pop_if_empty()
        .extend(["api", "v1", "pods"]);
    let watcher = Watcher {
        client,
        pods_url,
        config,
        cache,
        backoff: Backoff::equal_jitter(BACKOFF_INITIAL, BACKOFF_MAX),
        outage: None,
    };
    Ok(runtime.spawn(watcher.run()))
}

fn build_client(config: &KubeConfig) -> Result<reqwest::Client, KubeError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .user_agent(USER_AGENT)
        .connect_timeout(CONNECT_TIMEOUT)
        // Watches are long-lived requests: no overall timeout here; lists
        // and the wait for headers get their own below.
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &config.ca_path {
        let ca_error = |reason: String| KubeError::CaFile {
            path: path.clone(),
            reason,
        };
        for certificate in crate::upload::read_ca_certificates(path).map_err(ca_error)? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    if config.insecure_skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder.build().map_err(|err| KubeError::Client {
        reason: error_chain(&err),
    })
}

/// The `Authorization` header from the token file, read now so that a
/// rotated token is used from the next request on. The value is marked
/// sensitive and appears in no error.
fn bearer_header(path: &Path) -> Result<HeaderValue, KubeError> {
    let token_error = |reason: String| KubeError::Token {
        path: path.to_path_buf(),
        reason,
    };
    let token = read_secret_file(path).map_err(|err| token_error(err.to_string()))?;
    authorization("Bearer", token.expose())
        .ok_or_else(|| token_error("the token holds characters a header cannot carry".to_string()))
}

/// Splits a byte stream into lines, however the stream was chunked.
#[derive(Debug, Default)]
struct LineBuffer {
    pending: Vec<u8>,
    /// How much of `pending` is known to hold no newline.
    scanned: usize,
}

impl LineBuffer {
    fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next complete line, without its `\n` (or `\r\n`).
    fn next_line(&mut self) -> Option<Vec<u8>> {
        let Some(offset) = self.pending[self.scanned..].iter().position(|&b| b == b'\n') else {
            self.scanned = self.pending.len();
            return None;
        };
        let end = self.scanned + offset;
        let mut line: Vec<u8> = self.pending.drain(..=end).collect();
        self.scanned = 0;
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Some(line)
    }

    /// Bytes of an incomplete line held.
    fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    items: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    object: serde_json::Value,
}

/// A `Status` object, as sent in error answers and ERROR events.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Status {
    code: Option<u16>,
    message: Option<String>,
    reason: Option<String>,
}

impl Status {
    fn describe(body: &[u8]) -> String {
        let status: Status = serde_json::from_slice(body).unwrap_or_default();
        let text = match (status.message, status.reason) {
            (Some(message), _) if !message.is_empty() => message,
            (_, Some(reason)) if !reason.is_empty() => reason,
            _ => String::from_utf8_lossy(body).trim().to_string(),
        };
        shorten(text)
    }
}

fn shorten(mut text: String) -> String {
    const MAX: usize = 300;
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

fn status_hint(status: u16) -> &'static str {
    match status {
        401 => " (is the service account token valid and mounted?)",
        403 => " (does the service account's role allow `get`, `list` and `watch` on pods?)",
        _ => "",
    }
}

/// How one watch ended.
enum WatchEnd {
    /// The server closed the stream normally (its timeout); resume.
    Closed { lasted: Duration },
    /// 410 Gone: relist.
    Gone { lasted: Duration },
    /// The agent asked for a refresh: relist.
    Refresh,
    /// The watch failed; `relist` says whether resuming is pointless.
    Failed { error: KubeError, relist: bool },
}

/// An ongoing outage: when it began and how many attempts failed since.
struct Outage {
    since: Instant,
    failures: u64,
}

struct Watcher {
    client: reqwest::Client,
    /// `{api}/api/v1/pods`, without query.
    pods_url: Url,
    config: KubeConfig,
    cache: PodCache,
    backoff: Backoff,
    outage: Option<Outage>,
}

impl Watcher {
    async fn run(mut self) {
        tracing::info!(
            node = %self.config.node_name,
            api = %redacted(&self.config.api_url),
            "watching the pods of this node for Kubernetes metadata"
        );
        let mut resource_version: Option<String> = None;
        let mut listed_once = false;
        loop {
            let mut version = match resource_version.take() {
                Some(version) => version,
                None => match self.list(!listed_once).await {
                    Ok(version) => {
                        listed_once = true;
                        self.reachable();
                        version
                    }
                    Err(error) => {
                        self.cache.note_list_error();
                        self.unreachable(&error).await;
                        continue;
                    }
                },
            };
            match self.watch(&mut version).await {
                WatchEnd::Closed { lasted } => {
                    if lasted < MIN_WATCH_LIFETIME {
                        tokio::time::sleep(self.backoff.next_delay()).await;
                    }
                    resource_version = Some(version);
                }
                WatchEnd::Gone { lasted } => {
                    tracing::debug!("the pod watch expired (410 Gone); relisting");
                    // A fresh list's version should not expire at once; if
                    // it does, slow down rather than spin.
                    if lasted < MIN_WATCH_LIFETIME {
                        tokio::time::sleep(self.backoff.next_delay()).await;
                    }
                }
                WatchEnd::Refresh => {
                    tracing::debug!("an unknown container was seen; relisting pods");
                }
                WatchEnd::Failed { error, relist } => {
                    self.cache.note_watch_error();
                    self.unreachable(&error).await;
                    if !relist {
                        resource_version = Some(version);
                    }
                }
            }
        }
    }

    /// Notes a success: ends an outage, resets the backoff.
    fn reachable(&mut self) {
        self.backoff.reset();
        self.cache.set_connected(true);
        if let Some(outage) = self.outage.take() {
            tracing::info!(
                down_for = ?outage.since.elapsed(),
                failed_attempts = outage.failures,
                "the Kubernetes API is reachable again; pod metadata is current"
            );
        }
    }

    /// Notes a failure, warning only when an outage begins, then waits
    /// before the next attempt.
    async fn unreachable(&mut self, error: &KubeError) {
        self.cache.set_connected(false);
        match &mut self.outage {
            Some(outage) => {
                outage.failures += 1;
                tracing::debug!(%error, failed_attempts = outage.failures, "the Kubernetes API is still unreachable");
            }
            None => {
                tracing::warn!(
                    %error,
                    "the Kubernetes API is unavailable; profiles keep the last known pod metadata while taskprof retries"
                );
                self.outage = Some(Outage {
                    since: Instant::now(),
                    failures: 1,
                });
            }
        }
        tokio::time::sleep(self.backoff.next_delay()).await;
    }

    fn query_url(&self, extra: &[(&str, &str)]) -> Url {
        let mut url = self.pods_url.clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("fieldSelector", &format!("spec.nodeName={}", self.config.node_name));
            for (name, value) in extra {
                query.append_pair(name, value);
            }
        }
        url
    }

    /// Sends a GET with a freshly read token and checks the status.
    async fn get(&self, url: Url, timeout: Option<Duration>) -> Result<reqwest::Response, KubeError> {
        let mut request = self
            .client
            .get(url.clone())
            .header(AUTHORIZATION, bearer_header(&self.config.token_path)?)
            .header(ACCEPT, "application/json");
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let transport = |reason: String| KubeError::Transport {
            url: redacted(&url),
            reason,
        };
        let response = tokio::time::timeout(RESPONSE_TIMEOUT, request.send())
            .await
            .map_err(|_| transport(format!("no answer within {RESPONSE_TIMEOUT:?}")))?
            .map_err(|err| transport(error_chain(&err)))?;
        let status = response.status().as_u16();
        if status == 410 {
            return Err(KubeError::Gone);
        }
        if !response.status().is_success() {
            let body = response.bytes().await.unwrap_or_default();
            return Err(KubeError::Status {
                status,
                url: redacted(&url),
                message: Status::describe(&body),
                hint: status_hint(status),
            });
        }
        Ok(response)
    }

    /// Lists the node's pods into the cache; returns the list's version.
    /// The first list may be served from the API server's cache
    /// (`resourceVersion=0`), which matters when every node of a large
    /// cluster starts at once; later ones read the latest state, since they
    /// are made because the cache is known to be behind.
    async fn list(&self, first: bool) -> Result<String, KubeError> {
        let url = if first {
            self.query_url(&[("resourceVersion", "0")])
        } else {
            self.query_url(&[])
        };
        let response = self.get(url.clone(), Some(LIST_TIMEOUT)).await?;
        let decode = |reason: String| KubeError::Decode {
            url: redacted(&url),
            reason,
        };
        let body = response.bytes().await.map_err(|err| KubeError::Transport {
            url: redacted(&url),
            reason: error_chain(&err),
        })?;
        let (version, pods, undecodable) = decode_list(&body).map_err(decode)?;
        if undecodable > 0 {
            tracing::debug!(undecodable, "skipped pods that could not be decoded");
        }
        tracing::debug!(pods = pods.len(), resource_version = %version, "listed the pods of this node");
        self.cache.replace_all(pods);
        Ok(version)
    }

    /// Watches from `version`, applying events to the cache and advancing
    /// `version` as they come.
    async fn watch(&mut self, version: &mut String) -> WatchEnd {
        let timeout = WATCH_TIMEOUT_SECONDS.to_string();
        let url = self.query_url(&[
            ("watch", "1"),
            ("resourceVersion", version.as_str()),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", &timeout),
        ]);
        let started = Instant::now();
        let mut response = match self.get(url.clone(), None).await {
            Ok(response) => response,
            Err(KubeError::Gone) => {
                return WatchEnd::Gone {
                    lasted: started.elapsed(),
                }
            }
            Err(error) => return WatchEnd::Failed { error, relist: false },
        };
        self.reachable();
        let failed = |reason: String, relist: bool| WatchEnd::Failed {
            error: KubeError::Transport {
                url: redacted(&url),
                reason,
            },
            relist,
        };
        let mut lines = LineBuffer::default();
        let refresh = self.cache.refresh_requested();
        tokio::pin!(refresh);
        loop {
            let chunk = tokio::select! {
                () = &mut refresh => return WatchEnd::Refresh,
                chunk = tokio::time::timeout(WATCH_IDLE_TIMEOUT, response.chunk()) => chunk,
            };
            let bytes = match chunk {
                Err(_) => return failed(format!("the watch was silent for {WATCH_IDLE_TIMEOUT:?}"), false),
                Ok(Err(err)) => return failed(error_chain(&err), false),
                // An incomplete last line is an event cut short: it was not
                // applied, so resuming from `version` gets it again.
                Ok(Ok(None)) => {
                    return WatchEnd::Closed {
                        lasted: started.elapsed(),
                    }
                }
                Ok(Ok(Some(bytes))) => bytes,
            };
            lines.push(&bytes);
            while let Some(line) = lines.next_line() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if let Err(error) = self.apply_event(&line, version) {
                    return match error {
                        KubeError::Gone => WatchEnd::Gone {
                            lasted: started.elapsed(),
                        },
                        error => WatchEnd::Failed { error, relist: true },
                    };
                }
            }
            if lines.pending_len() > MAX_EVENT_LINE {
                return failed(format!("a watch event is longer than {MAX_EVENT_LINE} bytes"), true);
            }
        }
    }

    /// Applies one watch event line to the cache.
    fn apply_event(&self, line: &[u8], version: &mut String) -> Result<(), KubeError> {
        let event = decode_event(line).map_err(|error| match error {
            EventError::NotJson(reason) => KubeError::Decode {
                url: redacted(&self.pods_url),
                reason: format!("a watch event is not valid JSON: {reason}"),
            },
            EventError::Gone => KubeError::Gone,
            EventError::Status { code, message } => KubeError::Status {
                status: code,
                url: redacted(&self.pods_url),
                message,
                hint: status_hint(code),
            },
        })?;
        match event.change {
            PodChange::Upsert(pod) => self.cache.upsert(pod),
            PodChange::Delete(uid) => self.cache.delete(&uid),
            PodChange::Nothing => {}
        }
        if let Some(event_version) = event.version {
            *version = event_version;
        }
        self.cache.note_sync();
        Ok(())
    }
}

/// A pod list's resource version, its pods, and how many items could not
/// be decoded (skipped).
fn decode_list(body: &[u8]) -> Result<(String, Vec<PodMetadata>, usize), String> {
    let list: PodList = serde_json::from_slice(body).map_err(|err| err.to_string())?;
    let version = list
        .metadata
        .resource_version
        .filter(|v| !v.is_empty())
        .ok_or_else(|| "the pod list has no metadata.resourceVersion".to_string())?;
    let mut pods = Vec::with_capacity(list.items.len());
    let mut undecodable = 0usize;
    for item in list.items {
        match decode_pod(item) {
            Ok(Some(pod)) => pods.push(pod),
            Ok(None) => {}
            Err(_) => undecodable += 1,
        }
    }
    Ok((version, pods, undecodable))
}

/// What a watch event asks of the pod cache.
enum PodChange {
    Upsert(PodMetadata),
    /// Forget the pod with this UID.
    Delete(String),
    Nothing,
}

/// One decoded watch event: the change, and the resource version to resume
/// from after it.
struct DecodedEvent {
    change: PodChange,
    version: Option<String>,
}

/// A watch event line that ends the watch.
enum EventError {
    NotJson(String),
    /// An ERROR event with code 410: relist.
    Gone,
    /// Another ERROR event.
    Status {
        code: u16,
        message: String,
    },
}

/// Decodes one watch event line. Pods that cannot be decoded and unknown
/// event types are skipped (logged at debug level), not errors.
fn decode_event(line: &[u8]) -> Result<DecodedEvent, EventError> {
    let event: WatchEvent = serde_json::from_slice(line).map_err(|err| EventError::NotJson(err.to_string()))?;
    if event.kind == "ERROR" {
        let status: Status = serde_json::from_value(event.object).unwrap_or_default();
        let code = status.code.unwrap_or(0);
        if code == 410 {
            return Err(EventError::Gone);
        }
        let message = shorten(status.message.or(status.reason).unwrap_or_default());
        return Err(EventError::Status { code, message });
    }
    let version = event
        .object
        .get("metadata")
        .and_then(|m| m.get("resourceVersion"))
        .and_then(serde_json::Value::as_str)
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let change = match event.kind.as_str() {
        "ADDED" | "MODIFIED" | "DELETED" => match decode_pod(event.object) {
            Ok(Some(pod)) if event.kind == "DELETED" => PodChange::Delete(pod.pod_uid),
            Ok(Some(pod)) => PodChange::Upsert(pod),
            Ok(None) => PodChange::Nothing,
            Err(err) => {
                tracing::debug!(%err, kind = %event.kind, "skipped a pod event that could not be decoded");
                PodChange::Nothing
            }
        },
        "BOOKMARK" => PodChange::Nothing,
        other => {
            tracing::debug!(kind = other, "ignored a watch event of an unknown type");
            PodChange::Nothing
        }
    };
    Ok(DecodedEvent { change, version })
}

/// The decoders on bytes, for the fuzz targets.
pub(crate) mod fuzzing {
    use super::{LineBuffer, PodChange, PodMetadata};

    /// The lines of a watch stream delivered in chunks of `chunk` bytes.
    pub(crate) fn split_lines(stream: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let mut buffer = LineBuffer::default();
        let mut lines = Vec::new();
        for piece in stream.chunks(chunk.max(1)) {
            buffer.push(piece);
            while let Some(line) = buffer.next_line() {
                lines.push(line);
            }
        }
        lines
    }

    /// The pod a watch event line adds, changes or deletes, if any.
    pub(crate) fn decode_event(line: &[u8]) -> Option<PodMetadata> {
        match super::decode_event(line).ok()?.change {
            PodChange::Upsert(pod) => Some(pod),
            PodChange::Delete(uid) => Some(PodMetadata {
                pod_uid: uid,
                ..PodMetadata::default()
            }),
            PodChange::Nothing => None,
        }
    }

    /// A pod list's resource version and pods.
    pub(crate) fn decode_list(body: &[u8]) -> Result<(String, Vec<PodMetadata>), String> {
        super::decode_list(body).map(|(version, pods, _)| (version, pods))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_reassembled_across_chunks() {
        let mut lines = LineBuffer::default();
        lines.push(b"{\"a\":");
        assert_eq!(lines.next_line(), None);
        lines.push(b"1}\n{\"b\"");
        assert_eq!(lines.next_line().as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(lines.next_line(), None);
        lines.push(b":2}\r\n\n{\"c\":3}\n{\"d\"");
        assert_eq!(lines.next_line().as_deref(), Some(&b"{\"b\":2}"[..]));
        assert_eq!(lines.next_line().as_deref(), Some(&b""[..]));
        assert_eq!(lines.next_line().as_deref(), Some(&b"{\"c\":3}"[..]));
        assert_eq!(lines.next_line(), None);
        assert_eq!(lines.pending_len(), 4);
    }

    #[test]
    fn byte_at_a_time_chunks_give_the_same_lines() {
        let text = b"first line\nsecond\n\nthird";
        let mut lines = LineBuffer::default();
        let mut seen = Vec::new();
        for byte in text {
            lines.push(&[*byte]);
            while let Some(line) = lines.next_line() {
                seen.push(String::from_utf8(line).expect("utf-8"));
            }
        }
        assert_eq!(seen, ["first line", "second", ""]);
        assert_eq!(lines.pending_len(), "third".len());
    }

    #[test]
    fn token_problems_are_named_without_the_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        let err = bearer_header(&path).expect_err("missing");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        std::fs::write(&path, "  \n").expect("write token");
        assert!(bearer_header(&path).expect_err("empty").to_string().contains("empty"));
        std::fs::write(&path, "s3cr3t\u{7f}x\n").expect("write token");
        let err = bearer_header(&path).expect_err("control character");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        std::fs::write(&path, "s3cr3t\n").expect("write token");
        let value = bearer_header(&path).expect("valid token");
        assert_eq!(value.to_str().ok(), Some("Bearer s3cr3t"));
        assert!(value.is_sensitive());
    }

    #[test]
    fn status_bodies_are_summarised() {
        let body = br#"{"kind":"Status","status":"Failure","message":"pods is forbidden: User \"x\" cannot list","reason":"Forbidden","code":403}"#;
        assert_eq!(Status::describe(body), "pods is forbidden: User \"x\" cannot list");
        assert_eq!(Status::describe(b"{\"reason\":\"Expired\"}"), "Expired");
        assert_eq!(Status::describe(b"plain text\n"), "plain text");
        assert!(Status::describe("é".repeat(400).as_bytes()).chars().count() <= 301);
        assert!(status_hint(403).contains("watch"));
    }

    #[test]
    fn bad_ca_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = KubeConfig {
            api_url: Url::parse("https://127.0.0.1:6443").expect("url"),
            token_path: dir.path().join("token"),
            ca_path: Some(dir.path().join("missing.crt")),
            node_name: "n".to_string(),
            insecure_skip_verify: false,
        };
        let err = build_client(&config).expect_err("missing CA");
        assert!(err.to_string().contains("missing.crt"), "{err}");
        let empty = dir.path().join("empty.crt");
        std::fs::write(&empty, "not a certificate").expect("write CA");
        config.ca_path = Some(empty);
        let err = build_client(&config).expect_err("no certificate");
        assert!(err.to_string().contains("empty.crt"), "{err}");
    }
}
