//! Stand-ins for the backends `taskprof agent` uploads to: one HTTP server
//! on 127.0.0.1 that speaks Pyroscope's ingest (`POST /ingest`, also
//! `/pyroscope/ingest`) and Parca's WriteRaw JSON gateway
//! (`POST /api/profiles/writeraw`).
//!
//! Each request is checked the way the real servers check it (Pyroscope's
//! `/ingest` handler and Parca's `WriteRaw` validation): a request a real server would refuse is
//! answered 400 with the reason and recorded as invalid, so a test that
//! asserts [`Receiver::assert_all_valid`] catches protocol mistakes even
//! when the agent retries or drops them quietly. A valid request is then
//! handed to the test's [`Script`], which decides the answer: that is how
//! tests make the backend fail, throttle or refuse.
//!
//! The server runs on its own Tokio runtime, so the tests stay plain
//! synchronous code; dropping the [`Receiver`] stops it.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use serde_json::Value;
use taskprof::pprof::check_profile;
use taskprof::pprof::proto::Profile;

/// Which backend API a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /ingest` or `POST /pyroscope/ingest`.
    Pyroscope,
    /// `POST /api/profiles/writeraw`.
    Parca,
}

/// One profile the receiver accepted, with the series it was filed under.
#[derive(Debug, Clone)]
pub struct Ingest {
    pub api: Api,
    /// Index of the request it came in, in [`Receiver::requests`].
    #[expect(dead_code, reason = "shown through Debug when an assertion fails")]
    pub request: usize,
    /// When its request arrived.
    pub at: Instant,
    /// When its request arrived, by the wall clock.
    pub wall: SystemTime,
    /// Series labels as the backend derives them: for Pyroscope the
    /// application name as `service_name` plus the pairs in braces (and
    /// `pyroscope_spy` from `spyName`); for Parca the series' labels,
    /// `__name__` included.
    pub labels: BTreeMap<String, String>,
    /// Pyroscope's `from` and `until` (Unix seconds); `None` for Parca.
    pub from: Option<u64>,
    pub until: Option<u64>,
    /// The decoded profile.
    pub profile: Profile,
    /// The request's headers, names in lower case.
    #[expect(dead_code, reason = "shown through Debug when an assertion fails")]
    pub headers: BTreeMap<String, String>,
}

impl Ingest {
    /// The value of a series label; panics if it is missing.
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .get(name)
            .unwrap_or_else(|| panic!("the profile has no `{name}` label: {:?}", self.labels))
    }

    /// Sum of `value[0]` (the sample count) over the profile's samples.
    pub fn sample_count(&self) -> i64 {
        sample_count(&self.profile)
    }

    /// The `pid` sample labels of the profile: the processes it holds.
    pub fn sample_pids(&self) -> std::collections::BTreeSet<u32> {
        let view = super::ProfileView::new(&self.profile);
        self.profile
            .sample
            .iter()
            .filter_map(|s| view.label_num(s, "pid"))
            .filter_map(|pid| u32::try_from(pid).ok())
            .collect()
    }

    /// The series the profile belongs to: its labels, rendered.
    pub fn series(&self) -> String {
        format!("{:?}", self.labels)
    }
}

/// Sum of `value[0]` over the samples of `profile`.
pub fn sample_count(profile: &Profile) -> i64 {
    profile
        .sample
        .iter()
        .map(|s| s.value.first().copied().unwrap_or(0))
        .sum()
}

/// One request as the receiver handled it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub query: String,
    /// Headers, names in lower case.
    pub headers: BTreeMap<String, String>,
    /// The status answered.
    pub status: u16,
    /// The body answered.
    #[expect(dead_code, reason = "shown through Debug when an assertion fails")]
    pub reply: String,
    /// Why the request broke the protocol, when it did (answered 400).
    pub invalid: Option<String>,
    /// The profiles it carried, accepted or not, in order; empty when the
    /// request was invalid.
    pub profiles: Vec<Ingest>,
}

impl SeenRequest {
    /// `time_nanos` of each profile it carried: which windows it was for.
    pub fn windows(&self) -> Vec<i64> {
        self.profiles.iter().map(|p| p.profile.time_nanos).collect()
    }
}

/// What the [`Script`] sees of a valid request.
#[derive(Debug)]
pub struct Attempt<'a> {
    /// Index of the request in [`Receiver::requests`].
    #[expect(dead_code, reason = "shown through Debug when an assertion fails")]
    pub request: usize,
    #[expect(dead_code, reason = "shown through Debug when an assertion fails")]
    pub api: Api,
    /// The request's profiles, as they would be recorded if accepted.
    pub profiles: &'a [Ingest],
}

/// How the receiver answers one valid request. A 2xx records its profiles
/// as accepted; anything else does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// How long to wait before answering, like a backend that hangs.
    pub delay: Duration,
    /// Whether accepted profiles are stored on arrival, before a delayed
    /// answer (else once the answer is sent).
    pub stored_on_arrival: bool,
}

impl Reply {
    /// 200, what both servers answer to a good profile.
    pub fn accept() -> Reply {
        Reply::status(200, "")
    }

    /// Any status, with `body` as its message.
    pub fn status(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_string(),
            delay: Duration::ZERO,
            stored_on_arrival: false,
        }
    }

    /// Answers only after `delay`. The profiles count as accepted once the
    /// answer is sent, not before.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    /// Stores accepted profiles as soon as they arrive, then answers after
    /// the delay: a backend that keeps what it got even if the client is
    /// gone before the answer.
    pub fn stored_on_arrival(mut self) -> Reply {
        self.stored_on_arrival = true;
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Decides the answer to each valid request.
pub type Script = Box<dyn FnMut(&Attempt<'_>) -> Reply + Send>;

/// A script that answers `replies` in turn to the first valid requests,
/// then accepts everything.
pub fn replies(replies: Vec<Reply>) -> Script {
    let mut queue: VecDeque<Reply> = replies.into();
    Box::new(move |_| queue.pop_front().unwrap_or_else(Reply::accept))
}

/// A script that accepts everything.
pub fn accept_all() -> Script {
    Box::new(|_| Reply::accept())
}

struct Recorded {
    requests: Vec<SeenRequest>,
    ingests: Vec<Ingest>,
    script: Script,
}

type Shared = Arc<Mutex<Recorded>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Recorded> {
    // A panicking script must not hide what was recorded before it.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running receiver. Dropping it stops the server.
pub struct Receiver {
    addr: SocketAddr,
    shared: Shared,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    /// Starts a receiver on a free port of 127.0.0.1.
    pub fn start(script: Script) -> Receiver {
        Receiver::start_on(0, script)
    }

    /// Starts a receiver accepting everything.
    pub fn accepting() -> Receiver {
        Receiver::start(accept_all())
    }

    /// Starts a receiver on `port` of 127.0.0.1 (0 for any free port), for
    /// a backend that comes up after the agent started.
    pub fn start_on(port: u16, script: Script) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|err| panic!("failed to bind the test receiver to 127.0.0.1:{port}: {err}"));
        let addr = listener.local_addr().expect("the receiver's address");
        listener.set_nonblocking(true).expect("a non-blocking receiver socket");
        let shared: Shared = Arc::new(Mutex::new(Recorded {
            requests: Vec::new(),
            ingests: Vec::new(),
            script,
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-receiver")
            .enable_all()
            .build()
            .expect("the receiver's runtime");
        let router = Router::new()
            .fallback(handle)
            .with_state(shared.clone())
            // Real servers take bodies far larger than axum's default 2 MB.
            .layer(DefaultBodyLimit::disable());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a Tokio listener");
            let _ = axum::serve(listener, router).await;
        });
        Receiver {
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give `--upload-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        lock(&self.shared).requests.clone()
    }

    /// Every accepted profile so far, in arrival order.
    pub fn ingests(&self) -> Vec<Ingest> {
        lock(&self.shared).ingests.clone()
    }

    /// Number of accepted profiles so far.
    pub fn accepted(&self) -> usize {
        lock(&self.shared).ingests.len()
    }

    /// Panics, listing them, if any request broke the protocol.
    pub fn assert_all_valid(&self) {
        let invalid: Vec<String> = self
            .requests()
            .iter()
            .filter_map(|r| {
                r.invalid
                    .as_ref()
                    .map(|why| format!("{} {}?{}: {why}", r.method, r.path, r.query))
            })
            .collect();
        assert!(
            invalid.is_empty(),
            "{} request(s) would be refused by the real server:\n{}",
            invalid.len(),
            invalid.join("\n")
        );
    }

    /// Polls until `done` holds for the accepted profiles, panicking after
    /// `timeout` with `what` and what did arrive.
    pub fn wait_for_ingests(&self, what: &str, timeout: Duration, done: impl Fn(&[Ingest]) -> bool) -> Vec<Ingest> {
        let deadline = Instant::now() + timeout;
        loop {
            let ingests = self.ingests();
            if done(&ingests) {
                return ingests;
            }
            if Instant::now() >= deadline {
                let requests = self.requests();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; accepted {} profile(s) from {} request(s): {:#?}",
                    ingests.len(),
                    requests.len(),
                    requests
                        .iter()
                        .map(|r| (r.path.as_str(), r.status, r.invalid.as_deref()))
                        .collect::<Vec<_>>()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("the free port's address").port()
}

async fn handle(State(shared): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or_default().to_string();
    let header_map: BTreeMap<String, String> = headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();

    let (reply, late) = record(&shared, api_of(&path), method, path, query, header_map, body);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
        lock(&shared).ingests.extend(late);
    }

    let status = StatusCode::from_u16(reply.status).expect("a valid scripted status");
    let mut response = (status, reply.body).into_response();
    for (name, value) in reply.headers {
        let name = axum::http::HeaderName::from_bytes(name.as_bytes()).expect("a valid scripted header name");
        let value = axum::http::HeaderValue::from_str(&value).expect("a valid scripted header value");
        response.headers_mut().insert(name, value);
    }
    response
}

fn api_of(path: &str) -> Option<Api> {
    match path {
        "/ingest" | "/pyroscope/ingest" => Some(Api::Pyroscope),
        "/api/profiles/writeraw" => Some(Api::Parca),
        _ => None,
    }
}

/// Checks a request, asks the script for the answer and records both.
/// Returns the answer, and the profiles to record as accepted once a
/// delayed answer has been sent.
fn record(
    shared: &Shared,
    api: Option<Api>,
    method: Method,
    path: String,
    query: String,
    header_map: BTreeMap<String, String>,
    body: Bytes,
) -> (Reply, Vec<Ingest>) {
    let at = Instant::now();
    let wall = SystemTime::now();
    let mut recorded = lock(shared);
    let request = recorded.requests.len();
    let parsed = match (api, &method) {
        (None, _) => Err((404, format!("no route for {path}"))),
        (Some(_), m) if *m != Method::POST => Err((405, format!("{m} is not allowed on {path}"))),
        (Some(Api::Pyroscope), _) => parse_pyroscope(&query, &header_map, &body).map_err(|why| (400, why)),
        (Some(Api::Parca), _) => parse_parca(&header_map, &body).map_err(|why| (400, why)),
    };
    let (reply, invalid, profiles) = match parsed {
        Err((status, why)) => (Reply::status(status, &why), Some(why), Vec::new()),
        Ok(series) => {
            let api = api.expect("a parsed request has an API");
            let profiles: Vec<Ingest> = series
                .into_iter()
                .map(|s| Ingest {
                    api,
                    request,
                    at,
                    wall,
                    labels: s.labels,
                    from: s.from,
                    until: s.until,
                    profile: s.profile,
                    headers: header_map.clone(),
                })
                .collect();
            let attempt = Attempt {
                request,
                api,
                profiles: &profiles,
            };
            let reply = (recorded.script)(&attempt);
            (reply, None, profiles)
        }
    };
    recorded.requests.push(SeenRequest {
        at,
        method: method.to_string(),
        path,
        query,
        headers: header_map,
        status: reply.status,
        reply: reply.body.clone(),
        invalid,
        profiles: profiles.clone(),
    });
    match (reply.accepted(), reply.delay.is_zero() || reply.stored_on_arrival) {
        (false, _) => (reply, Vec::new()),
        (true, true) => {
            recorded.ingests.extend(profiles);
            (reply, Vec::new())
        }
        (true, false) => (reply, profiles),
    }
}

/// One profile read from a request, before the script decides on it.
struct ParsedSeries {
    labels: BTreeMap<String, String>,
    from: Option<u64>,
    until: Option<u64>,
    profile: Profile,
}

// ---------------------------------------------------------------------------
// Pyroscope
// ---------------------------------------------------------------------------

fn parse_pyroscope(query: &str, headers: &BTreeMap<String, String>, body: &[u8]) -> Result<Vec<ParsedSeries>, String> {
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if params.insert(key.to_string(), value.to_string()).is_some() {
            return Err(format!("query parameter `{key}` is given twice"));
        }
    }
    let name = params.get("name").ok_or("the `name` query parameter is required")?;
    let mut labels = parse_app_name(name)?;
    if let Some(spy) = params.get("spyName") {
        if labels.insert("pyroscope_spy".to_string(), spy.clone()).is_some() {
            return Err("duplicate label name `pyroscope_spy`".to_string());
        }
    }
    let from = unix_seconds(&params, "from")?;
    let until = unix_seconds(&params, "until")?;
    if from > until {
        return Err(format!("from ({from}) is after until ({until})"));
    }

    let pprof = match params.get("format").map(String::as_str) {
        // The server reads the whole body as pprof whenever format=pprof,
        // so a multipart body fails to decode here, as it does there.
        Some("pprof") => body.to_vec(),
        Some(other) => return Err(format!("format `{other}` is not supported by this receiver")),
        None => {
            let content_type = headers.get("content-type").map(String::as_str).unwrap_or_default();
            if !content_type.starts_with("multipart/form-data") {
                return Err(format!(
                    "without format=pprof the body must be multipart/form-data, not `{content_type}`"
                ));
            }
            let fields = multipart_fields(content_type, body)?;
            if fields.iter().any(|(name, _)| name == "prev_profile") {
                return Err("the `prev_profile` field is not supported".to_string());
            }
            fields
                .into_iter()
                .find(|(name, _)| name == "profile")
                .map(|(_, data)| data)
                .ok_or("the multipart body has no `profile` field")?
        }
    };
    let profile = decode_profile(&pprof)?;
    Ok(vec![ParsedSeries {
        labels,
        from: Some(from),
        until: Some(until),
        profile,
    }])
}

/// `APP` or `APP{k=v,k2=v2}`: the application becomes `service_name`.
fn parse_app_name(name: &str) -> Result<BTreeMap<String, String>, String> {
    let (app, pairs) = match name.find('{') {
        Some(open) => {
            let inner = name[open + 1..]
                .strip_suffix('}')
                .ok_or_else(|| format!("the name `{name}` opens a `{{` it does not close at its end"))?;
            (&name[..open], Some(inner))
        }
        None => (name, None),
    };
    let app = app.trim();
    if app.is_empty() {
        return Err(format!("the name `{name}` has no application name"));
    }
    if let Some(bad) = app
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')))
    {
        return Err(format!(
            "invalid application name `{app}`: the character {bad:?} is not allowed"
        ));
    }
    let mut labels = BTreeMap::new();
    labels.insert("service_name".to_string(), app.to_string());
    for pair in pairs.into_iter().flat_map(|p| p.split(',')) {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("the label `{pair}` in `{name}` has no `=`"))?;
        let key = key.trim();
        check_label_name(key)?;
        if labels.insert(key.to_string(), value.trim().to_string()).is_some() {
            return Err(format!("duplicate label name `{key}` in `{name}`"));
        }
    }
    Ok(labels)
}

fn unix_seconds(params: &BTreeMap<String, String>, key: &str) -> Result<u64, String> {
    let text = params
        .get(key)
        .ok_or_else(|| format!("the `{key}` query parameter is required"))?;
    let value: u64 = text
        .parse()
        .map_err(|_| format!("`{key}={text}` is not a whole number of seconds"))?;
    // 2001-09-09 to 2286-11-20: ten-digit seconds. Pyroscope guesses the
    // unit from the magnitude; taskprof promises seconds.
    if !(1_000_000_000..10_000_000_000).contains(&value) {
        return Err(format!("`{key}={value}` is not in Unix seconds"));
    }
    Ok(value)
}

/// The fields of a `multipart/form-data` body, by name.
fn multipart_fields(content_type: &str, body: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let boundary = content_type
        .split(';')
        .filter_map(|param| param.trim().strip_prefix("boundary="))
        .next()
        .map(|b| b.trim_matches('"'))
        .filter(|b| !b.is_empty())
        .ok_or("the multipart content type has no boundary")?;
    let delimiter = format!("--{boundary}").into_bytes();
    let mut rest = match find(body, &delimiter) {
        Some(at) => &body[at + delimiter.len()..],
        None => return Err("the multipart body has no boundary line".to_string()),
    };
    let mut fields = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Ok(fields);
        }
        rest = rest
            .strip_prefix(b"\r\n")
            .ok_or("a multipart boundary is not followed by CRLF")?;
        let head_end = find(rest, b"\r\n\r\n").ok_or("a multipart part has no end of headers")?;
        let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
        rest = &rest[head_end + 4..];
        let mut closing = b"\r\n".to_vec();
        closing.extend_from_slice(&delimiter);
        let data_end = find(rest, &closing).ok_or("a multipart part is not closed by the boundary")?;
        let name = head
            .lines()
            .filter(|line| line.to_ascii_lowercase().starts_with("content-disposition:"))
            .flat_map(|line| line.split(';'))
            .filter_map(|param| param.trim().strip_prefix("name="))
            .map(|n| n.trim_matches('"').to_string())
            .next()
            .ok_or("a multipart part has no name")?;
        fields.push((name, rest[..data_end].to_vec()));
        rest = &rest[data_end + closing.len()..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Parca
// ---------------------------------------------------------------------------

fn parse_parca(headers: &BTreeMap<String, String>, body: &[u8]) -> Result<Vec<ParsedSeries>, String> {
    let content_type = headers.get("content-type").map(String::as_str).unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return Err(format!("the JSON gateway needs application/json, not `{content_type}`"));
    }
    // The gateway does not undo Content-Encoding, so a compressed request
    // fails right here, as it does there.
    let request: Value = serde_json::from_slice(body).map_err(|err| format!("the body is not JSON: {err}"))?;
    let object = request.as_object().ok_or("the body is not a JSON object")?;
    if let Some(normalized) = object.get("normalized") {
        if !normalized.is_boolean() {
            return Err(format!("`normalized` is not a boolean: {normalized}"));
        }
    }
    let series = object
        .get("series")
        .and_then(Value::as_array)
        .ok_or("the body has no `series` array")?;
    let mut parsed = Vec::new();
    for (index, one) in series.iter().enumerate() {
        let labels = one
            .pointer("/labels/labels")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("series {index} has no `labels.labels` array"))?;
        let mut map = BTreeMap::new();
        for label in labels {
            let name = label
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("a label of series {index} has no string `name`"))?;
            let value = label
                .get("value")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("the label `{name}` of series {index} has no string `value`"))?;
            check_label_name(name)?;
            if map.insert(name.to_string(), value.to_string()).is_some() {
                return Err(format!("duplicate label name `{name}` in series {index}"));
            }
        }
        if !map.contains_key("__name__") {
            return Err(format!("series {index} has no `__name__` label"));
        }
        let samples = one
            .get("samples")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("series {index} has no `samples` array"))?;
        for sample in samples {
            let encoded = sample
                .get("rawProfile")
                .or_else(|| sample.get("raw_profile"))
                .and_then(Value::as_str)
                .ok_or_else(|| format!("a sample of series {index} has no `rawProfile`"))?;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(encoded))
                .map_err(|err| format!("a `rawProfile` of series {index} is not base64: {err}"))?;
            parsed.push(ParsedSeries {
                labels: map.clone(),
                from: None,
                until: None,
                profile: decode_profile(&raw)?,
            });
        }
    }
    Ok(parsed)
}

// ---------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!("invalid label name `{name}`"))
    }
}

/// Gunzips (if gzipped), decodes and checks a pprof profile.
fn decode_profile(bytes: &[u8]) -> Result<Profile, String> {
    let raw = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut raw)
            .map_err(|err| format!("failed to gunzip the profile: {err}"))?;
        raw
    } else {
        bytes.to_vec()
    };
    let profile = <Profile as prost::Message>::decode(raw.as_slice())
        .map_err(|err| format!("failed to parse the pprof profile: {err}"))?;
    let problems = check_profile(&profile);
    if !problems.is_empty() {
        return Err(format!("invalid profile: {}", problems.join("; ")));
    }
    Ok(profile)
}
