//! The HTTP side shared by every HTTP protocol: building the client (TLS,
//! credentials, headers), joining endpoint paths onto the base URL, and
//! turning a response or a transport failure into an [`UploadError`] that
//! says whether sending again can help.
//!
//! Credentials travel only as default headers marked sensitive, and URLs
//! are shown without user info or query, so no secret reaches a log line,
//! an error or a metric.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use url::Url;

use super::{truncate_message, Auth, SetupError, UploadConfig, UploadError};
use crate::agent::metrics::Metrics;
use crate::util::{error_chain, redacted};

/// The `User-Agent` of every request.
pub(crate) const USER_AGENT: &str = concat!("taskprof/", env!("CARGO_PKG_VERSION"));

/// Longest `Retry-After` honoured; a server asking for more is probably
/// misconfigured, and the spool keeps the data meanwhile anyway.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// The certificates of a PEM bundle, or why there are none; shared by every
/// client that trusts an extra CA (uploads, the Kubernetes API).
pub fn read_ca_certificates(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|err| err.to_string())?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| format!("not valid PEM: {err}"))?;
    if certificates.is_empty() {
        return Err("no PEM certificate found in the file".to_string());
    }
    Ok(certificates)
}

/// Builds the client shared by the HTTP uploaders: `config.timeout` per
/// request, rustls with the system roots plus `config.tls_ca_file`, the
/// credentials and custom headers on every request (marked sensitive), and
/// no redirects (a redirected POST would silently become a GET).
pub fn http_client(config: &UploadConfig) -> Result<reqwest::Client, SetupError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(config.timeout)
        .user_agent(USER_AGENT)
        .default_headers(default_headers(config)?)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &config.tls_ca_file {
        let ca_error = |reason: String| SetupError::CaFile {
            path: path.clone(),
            reason,
        };
        for certificate in read_ca_certificates(path).map_err(ca_error)? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    if config.tls_insecure_skip_verify {
        // The agent warns about this loudly at start-up, once.
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder.build().map_err(|err| {
        let mut reason = error_chain(&err);
        if let Some(path) = &config.tls_ca_file {
            reason.push_str(&format!(" (is `{}` a valid CA certificate?)", path.display()));
        }
        SetupError::Client { reason }
    })
}

/// The credentials and custom headers, every value marked sensitive so that
/// the HTTP stack never prints it.
pub(crate) fn default_headers(config: &UploadConfig) -> Result<HeaderMap, SetupError> {
    let mut headers = HeaderMap::new();
    let authorization = match &config.auth {
        Auth::None => None,
        Auth::Bearer(token) => Some(format!("Bearer {}", token.expose())),
        Auth::Basic { user, password } => {
            let pair = format!("{user}:{}", password.expose());
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            ))
        }
    };
    if let Some(authorization) = authorization {
        headers.insert(AUTHORIZATION, sensitive_value("Authorization", &authorization)?);
    }
    for (name, value) in &config.headers {
        let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| SetupError::Header {
            name: name.clone(),
            reason: "not a valid header name".to_string(),
        })?;
        // A custom header replaces one of the same name set above, so that a
        // user can always say exactly what is sent.
        headers.insert(header_name, sensitive_value(name, value.expose())?);
    }
    Ok(headers)
}

fn sensitive_value(name: &str, value: &str) -> Result<HeaderValue, SetupError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| SetupError::Header {
        name: name.to_string(),
        // The value is secret: say what is wrong with it, never what it is.
        reason: "the value holds characters a header cannot carry (control characters or non-ASCII)".to_string(),
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// `base` with `segments` appended to its path, keeping any path prefix
/// (`http://gw/pyroscope` + `ingest` → `http://gw/pyroscope/ingest`).
pub(crate) fn join_endpoint(base: &Url, segments: &[&str], protocol: &'static str) -> Result<Url, SetupError> {
    let url_error = |reason: &str| SetupError::Url {
        protocol,
        url: redacted(base),
        reason: reason.to_string(),
    };
    if !matches!(base.scheme(), "http" | "https") {
        return Err(url_error("only http:// and https:// are supported"));
    }
    let mut endpoint = base.clone();
    endpoint.set_fragment(None);
    endpoint
        .path_segments_mut()
        .map_err(|()| url_error("the URL cannot have a path"))?
        .pop_if_empty()
        .extend(segments);
    Ok(endpoint)
}

/// POSTs `body` to `url` and classifies the outcome with
/// [`classify_status`].
pub(crate) async fn post(
    client: &reqwest::Client,
    url: Url,
    content_type: &'static str,
    body: Vec<u8>,
    metrics: &Metrics,
) -> Result<(), UploadError> {
    let request = Request {
        content_type,
        content_encoding: None,
        body,
    };
    post_with(client, url, request, metrics, |answer| {
        let message = String::from_utf8_lossy(&answer.body);
        classify_status(
            answer.status,
            answer.retry_after.as_deref(),
            &message,
            SystemTime::now(),
        )
    })
    .await
}

/// One request body and how it is encoded.
pub(crate) struct Request {
    /// `Content-Type`.
    pub content_type: &'static str,
    /// `Content-Encoding`, if the body is compressed.
    pub content_encoding: Option<&'static str>,
    /// The body.
    pub body: Vec<u8>,
}

/// What the server answered.
pub(crate) struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The `Retry-After` header, as sent.
    pub retry_after: Option<String>,
    /// The start of the body (a few KiB at most).
    pub body: Vec<u8>,
}

/// POSTs `request` to `url` and lets `classify` judge the answer; transport
/// failures are judged by [`transport_error`]. The request's duration goes
/// to `taskprof_upload_duration_seconds` whatever the outcome.
pub(crate) async fn post_with<T>(
    client: &reqwest::Client,
    url: Url,
    request: Request,
    metrics: &Metrics,
    classify: impl FnOnce(Answer) -> Result<T, UploadError>,
) -> Result<T, UploadError> {
    let shown = redacted(&url);
    let started = Instant::now();
    let outcome = async {
        let mut builder = client
            .post(url)
            .header(CONTENT_TYPE, request.content_type)
            .body(request.body);
        if let Some(encoding) = request.content_encoding {
            builder = builder.header(CONTENT_ENCODING, encoding);
        }
        let response = builder.send().await.map_err(|err| transport_error(err, &shown))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        // Reading the body lets the connection be reused; only its start
        // matters, as the message of an error or a partial success.
        let body = read_prefix(response, super::MAX_MESSAGE_BYTES * 4).await;
        classify(Answer {
            status,
            retry_after,
            body,
        })
    }
    .await;
    metrics.upload_duration.observe(started.elapsed().as_secs_f64());
    match &outcome {
        Ok(_) => tracing::debug!(url = %shown, "upload accepted"),
        Err(err) => tracing::debug!(url = %shown, error = %err, "upload failed"),
    }
    outcome
}

/// Up to `limit` bytes of the response body.
async fn read_prefix(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    while bytes.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    bytes.truncate(limit);
    bytes
}

/// Decides what an HTTP status means for the profile: 2xx delivered; 408,
/// 429 and 5xx worth retrying (with the server's `Retry-After` on 429 and
/// 503); anything else refused for good, with the server's message.
pub(crate) fn classify_status(
    status: u16,
    retry_after: Option<&str>,
    body: &str,
    now: SystemTime,
) -> Result<(), UploadError> {
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => {
            let retry_after = match status {
                429 | 503 => retry_after.and_then(|value| parse_retry_after(value, now)),
                _ => None,
            };
            let mut reason = format!("the server answered {status}");
            let message = truncate_message(body);
            if !message.is_empty() {
                reason.push_str(": ");
                reason.push_str(&message);
            }
            Err(UploadError::Retryable { reason, retry_after })
        }
        _ => {
            let mut message = truncate_message(body);
            if message.is_empty() {
                message = match status {
                    300..=399 => "the server redirected; point the URL at the final address".to_string(),
                    _ => reqwest::StatusCode::from_u16(status)
                        .ok()
                        .and_then(|code| code.canonical_reason())
                        .unwrap_or("no message")
                        .to_string(),
                };
            }
            Err(UploadError::Rejected { status, message })
        }
    }
}

/// A failure before any status arrived. All of them may pass, except a
/// request that could not even be built.
fn transport_error(err: reqwest::Error, shown_url: &str) -> UploadError {
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    let builder = err.is_builder();
    // The URL is shown redacted by us; reqwest's own copy may hold user info.
    let chain = error_chain(&err.without_url());
    let reason = format!("the request to {shown_url} {what}: {chain}");
    if builder {
        UploadError::Rejected {
            status: 0,
            message: reason,
        }
    } else {
        UploadError::retryable(reason)
    }
}

/// Parses a `Retry-After` value: delta-seconds, or an HTTP-date (IMF-fixdate,
/// the obsolete RFC 850 form, or asctime) turned into a delay from `now`. A
/// date in the past means no delay. Delays are capped at ten minutes.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits; only an absurd length can overflow.
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        let at_secs = at.duration_since(UNIX_EPOCH).ok()?.as_secs();
        let now_secs = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
        Duration::from_secs(at_secs.saturating_sub(now_secs))
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
pub(crate) mod test_server {
    //! A tiny HTTP server on 127.0.0.1 that records requests and answers
    //! with scripted responses, to test the real reqwest path.

    use std::collections::VecDeque;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, Uri};
    use axum::response::IntoResponse;
    use axum::Router;

    /// One request as the server saw it.
    #[derive(Debug, Clone)]
    pub(crate) struct Recorded {
        pub uri: Uri,
        pub headers: HeaderMap,
        pub body: Vec<u8>,
    }

    /// A scripted answer: status, headers, body.
    pub(crate) type Answer = (u16, Vec<(&'static str, String)>, String);

    #[derive(Clone, Default)]
    struct Script {
        answers: Arc<Mutex<VecDeque<Answer>>>,
        requests: Arc<Mutex<Vec<Recorded>>>,
    }

    /// A running test server; it stops when dropped.
    pub(crate) struct TestServer {
        pub addr: SocketAddr,
        script: Script,
        task: tokio::task::JoinHandle<()>,
    }

    impl TestServer {
        /// Starts a server answering `answers` in turn, then 200.
        pub(crate) async fn start(answers: Vec<Answer>) -> TestServer {
            let script = Script {
                answers: Arc::new(Mutex::new(answers.into())),
                requests: Arc::default(),
            };
            let router = Router::new().fallback(answer).with_state(script.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind test server");
            let addr = listener.local_addr().expect("test server address");
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            });
            TestServer { addr, script, task }
        }

        /// Requests received so far.
        pub(crate) fn requests(&self) -> Vec<Recorded> {
            self.script.requests.lock().expect("requests lock").clone()
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn answer(State(script): State<Script>, uri: Uri, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
        script.requests.lock().expect("requests lock").push(Recorded {
            uri,
            headers,
            body: body.to_vec(),
        });
        let (status, headers, body) =
            script
                .answers
                .lock()
                .expect("answers lock")
                .pop_front()
                .unwrap_or((200, Vec::new(), String::new()));
        let mut response = (StatusCode::from_u16(status).expect("valid test status"), body).into_response();
        for (name, value) in headers {
            response
                .headers_mut()
                .insert(name, value.parse().expect("valid test header"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::{Protocol, Secret};

    fn config(url: &str) -> UploadConfig {
        crate::upload::test_support::upload_config(Protocol::Pyroscope, url)
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retry_after_reads_seconds_and_all_three_date_forms() {
        // 1994-11-06 08:49:37 UTC.
        let date = 784_111_777;
        let now = at(date - 30);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let thirty = Some(Duration::from_secs(30));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), thirty);
        assert_eq!(parse_retry_after("Sun Nov  6 08:49:37 1994", now), thirty);
        // A date in the past: retry now.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at(date + 5)),
            Some(Duration::ZERO)
        );
        // Absurd requests are capped.
        assert_eq!(parse_retry_after("99999999999999999999999", now), Some(MAX_RETRY_AFTER));
        for garbage in [
            "",
            "soon",
            "-5",
            "1.5",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 GMT",
        ] {
            assert_eq!(parse_retry_after(garbage, now), None, "{garbage:?}");
        }
    }

    #[test]
    fn two_digit_years_are_read_as_this_century() {
        // 2025-01-02 03:04:05 UTC.
        let date = 1_735_787_045;
        assert_eq!(
            parse_retry_after("Thursday, 02-Jan-25 03:04:05 GMT", at(date - 10)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Thu, 02 Jan 2025 03:04:05 GMT", at(date - 10)),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn statuses_are_classified() {
        let now = at(1_000_000);
        assert_eq!(classify_status(200, None, "", now), Ok(()));
        assert_eq!(classify_status(204, None, "", now), Ok(()));
        for status in [408, 429, 500, 502, 503, 504] {
            let err = classify_status(status, None, "busy", now).expect_err("not delivered");
            assert!(err.is_retryable(), "{status}");
            assert!(err.to_string().contains("busy"));
        }
        for status in [400, 401, 403, 404, 413, 422] {
            let err = classify_status(status, None, "bad profile", now).expect_err("not delivered");
            assert_eq!(
                err,
                UploadError::Rejected {
                    status,
                    message: "bad profile".to_string()
                }
            );
        }
        let err = classify_status(413, None, "", now).expect_err("not delivered");
        assert_eq!(
            err,
            UploadError::Rejected {
                status: 413,
                message: "Payload Too Large".to_string()
            }
        );
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503_only() {
        let now = at(1_000_000);
        let delay = Some(Duration::from_secs(7));
        assert_eq!(
            classify_status(429, Some("7"), "", now).expect_err("429").retry_after(),
            delay
        );
        assert_eq!(
            classify_status(503, Some("7"), "", now).expect_err("503").retry_after(),
            delay
        );
        assert_eq!(
            classify_status(500, Some("7"), "", now).expect_err("500").retry_after(),
            None
        );
    }

    #[test]
    fn endpoints_keep_the_base_path() {
        let join = |base: &str| {
            join_endpoint(
                &Url::parse(base).expect("test URL"),
                &["api", "profiles", "writeraw"],
                "parca",
            )
            .map(|u| u.to_string())
        };
        assert_eq!(
            join("http://h:7070").ok().as_deref(),
            Some("http://h:7070/api/profiles/writeraw")
        );
        assert_eq!(
            join("http://h/parca/").ok().as_deref(),
            Some("http://h/parca/api/profiles/writeraw")
        );
        assert_eq!(
            join("https://h/a/b").ok().as_deref(),
            Some("https://h/a/b/api/profiles/writeraw")
        );
        assert!(join("ftp://h/").is_err());
    }

    #[test]
    fn bad_ca_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let mut cfg = config("https://h/");
        cfg.tls_ca_file = Some(missing.clone());
        let err = http_client(&cfg).expect_err("missing CA file");
        assert!(err.to_string().contains(&missing.display().to_string()), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write test file");
        cfg.tls_ca_file = Some(empty.clone());
        let err = http_client(&cfg).expect_err("no certificate");
        assert!(err.to_string().contains(&empty.display().to_string()), "{err}");
    }

    #[test]
    fn header_errors_never_show_the_value() {
        let mut cfg = config("http://h/");
        cfg.headers = vec![("X-Scope-OrgID".to_string(), Secret::new("tenant\nsecret"))];
        let err = http_client(&cfg).expect_err("newline in a header value");
        let text = err.to_string();
        assert!(text.contains("X-Scope-OrgID") && !text.contains("secret"), "{text}");
    }

    #[tokio::test]
    async fn requests_carry_credentials_and_classify_answers() {
        use test_server::TestServer;
        let server = TestServer::start(vec![
            (200, Vec::new(), String::new()),
            (429, vec![("retry-after", "7".to_string())], "slow down".to_string()),
            (400, Vec::new(), "invalid profile: no samples".to_string()),
            (503, Vec::new(), String::new()),
        ])
        .await;
        let mut cfg = config(&format!("http://{}/", server.addr));
        cfg.auth = Auth::Basic {
            user: "u".to_string(),
            password: Secret::new("p4ss"),
        };
        cfg.headers = vec![("X-Scope-OrgID".to_string(), Secret::new("tenant-1"))];
        let client = http_client(&cfg).expect("client");
        let metrics = Metrics::new();
        let url = Url::parse(&format!("http://{}/x", server.addr)).expect("test URL");
        let send = || {
            post(
                &client,
                url.clone(),
                "application/octet-stream",
                b"body".to_vec(),
                &metrics,
            )
        };

        assert_eq!(send().await, Ok(()));
        let err = send().await.expect_err("429");
        assert!(err.is_retryable());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(
            send().await,
            Err(UploadError::Rejected {
                status: 400,
                message: "invalid profile: no samples".to_string()
            })
        );
        assert!(send().await.expect_err("503").is_retryable());

        let requests = server.requests();
        assert_eq!(requests.len(), 4);
        let first = &requests[0];
        assert_eq!(first.body, b"body");
        let header = |name: &str| {
            first
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        assert_eq!(header("authorization").as_deref(), Some("Basic dTpwNHNz"));
        assert_eq!(header("x-scope-orgid").as_deref(), Some("tenant-1"));
        assert_eq!(header("user-agent").as_deref(), Some(USER_AGENT));
        assert_eq!(header("content-type").as_deref(), Some("application/octet-stream"));
        assert!(metrics.encode().contains("taskprof_upload_duration_seconds_count 4"));
    }

    #[tokio::test]
    async fn a_closed_port_is_retryable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        drop(listener);
        let client = http_client(&config("http://127.0.0.1/")).expect("client");
        let url = Url::parse(&format!("http://user:hunter2@{addr}/x")).expect("test URL");
        let err = post(&client, url, "application/octet-stream", Vec::new(), &Metrics::new())
            .await
            .expect_err("nothing listens");
        assert!(err.is_retryable(), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
