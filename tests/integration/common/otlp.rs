//! Stand-ins for an OTLP profiles receiver on 127.0.0.1: OTLP/HTTP
//! (`POST /v1development/profiles`, binary protobuf, optionally gzipped)
//! and OTLP/gRPC (`ProfilesService/Export`, a tonic server accepting gzip).
//!
//! Every request is decoded with the `opentelemetry-proto` crate's types
//! and held to the dictionary invariants ([`check_request`]); a request
//! that fails is answered as a real receiver would (400, or
//! INVALID_ARGUMENT) and recorded as invalid, so
//! [`OtlpReceiver::assert_all_valid`] catches encoding mistakes even when
//! the agent drops them quietly. Valid requests get the scripted replies in
//! turn, then success.
//!
//! [`Resolved`] turns a decoded request into what the tests compare:
//! resource attributes, and each sample's stack as function names, with
//! its thread and count.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use prost::Message;
use taskprof::otlp::check_request;
use taskprof::otlp::proto::collector::profiles::v1development::profiles_service_server::{
    ProfilesService, ProfilesServiceServer,
};
use taskprof::otlp::proto::collector::profiles::v1development::{
    ExportProfilesPartialSuccess, ExportProfilesServiceRequest, ExportProfilesServiceResponse,
};
use taskprof::otlp::proto::common::v1::any_value::Value;
use taskprof::otlp::proto::common::v1::AnyValue;
use tonic::codec::CompressionEncoding;

/// Which transport a receiver serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    Grpc,
}

/// How the receiver answers one valid request.
#[derive(Debug, Clone)]
pub enum OtlpReply {
    /// Success, with an empty response.
    Accept,
    /// Success with a `partial_success` refusing `rejected` profiles.
    Partial { rejected: i64, message: String },
    /// OTLP/HTTP: this status, `Retry-After` if given, and a
    /// `google.rpc.Status` body holding `message`.
    Http {
        status: u16,
        retry_after: Option<String>,
        message: String,
    },
    /// OTLP/gRPC: this code and message.
    Grpc { code: tonic::Code, message: String },
}

impl OtlpReply {
    fn accepted(&self) -> bool {
        matches!(self, OtlpReply::Accept | OtlpReply::Partial { .. })
    }
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct OtlpRequest {
    pub at: Instant,
    /// Headers (or gRPC metadata), names in lower case.
    pub headers: BTreeMap<String, String>,
    /// The decoded request; `None` if it could not be decoded.
    pub request: Option<ExportProfilesServiceRequest>,
    /// OTLP/HTTP: the request body as sent, uncompressed (empty for gRPC,
    /// which tonic decodes itself).
    pub body: Vec<u8>,
    /// Why it broke the protocol, when it did.
    pub invalid: Option<String>,
    /// Whether the receiver answered with success.
    pub accepted: bool,
}

struct Recorded {
    requests: Vec<OtlpRequest>,
    replies: VecDeque<OtlpReply>,
}

type Shared = Arc<Mutex<Recorded>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Recorded> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running receiver; dropping it stops the server.
pub struct OtlpReceiver {
    addr: SocketAddr,
    transport: Transport,
    shared: Shared,
    runtime: Option<tokio::runtime::Runtime>,
}

impl OtlpReceiver {
    /// Starts a receiver on a free port that answers `replies` in turn,
    /// then accepts.
    pub fn start(transport: Transport, replies: Vec<OtlpReply>) -> OtlpReceiver {
        OtlpReceiver::start_on(transport, 0, replies)
    }

    /// Starts a receiver on `port` (0 for any free one).
    pub fn start_on(transport: Transport, port: u16, replies: Vec<OtlpReply>) -> OtlpReceiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the OTLP receiver");
        let shared: Shared = Arc::new(Mutex::new(Recorded {
            requests: Vec::new(),
            replies: replies.into(),
        }));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .unwrap_or_else(|err| panic!("failed to bind the OTLP receiver to port {port}: {err}"));
        let addr = listener.local_addr().expect("receiver address");
        match transport {
            Transport::Http => {
                let app = Router::new()
                    .fallback(http_export)
                    .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
                    .with_state(shared.clone());
                runtime.spawn(async move {
                    let _ = axum::serve(listener, app).await;
                });
            }
            Transport::Grpc => {
                let service = ProfilesServiceServer::new(GrpcExport { shared: shared.clone() })
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(64 << 20);
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                runtime.spawn(async move {
                    let _ = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming(incoming)
                        .await;
                });
            }
        }
        OtlpReceiver {
            addr,
            transport,
            shared,
            runtime: Some(runtime),
        }
    }

    /// The base URL to give `--upload-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `--upload-protocol` that speaks to this receiver.
    pub fn protocol(&self) -> &'static str {
        match self.transport {
            Transport::Http => "otlp",
            Transport::Grpc => "otlp-grpc",
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<OtlpRequest> {
        lock(&self.shared).requests.clone()
    }

    /// The requests answered with success, decoded.
    pub fn accepted(&self) -> Vec<ExportProfilesServiceRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.accepted)
            .filter_map(|r| r.request)
            .collect()
    }

    /// Panics if any request broke the protocol.
    pub fn assert_all_valid(&self) {
        let invalid: Vec<String> = self.requests().into_iter().filter_map(|r| r.invalid).collect();
        assert!(invalid.is_empty(), "invalid OTLP requests: {invalid:#?}");
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Records a decoded (or broken) request and picks the answer.
fn record(
    shared: &Shared,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    decoded: Result<ExportProfilesServiceRequest, String>,
) -> Result<OtlpReply, String> {
    let (request, invalid) = match decoded {
        Ok(request) => {
            let problems = check_request(&request);
            let invalid = (!problems.is_empty()).then(|| problems.join("; "));
            (Some(request), invalid)
        }
        Err(reason) => (None, Some(reason)),
    };
    let mut recorded = lock(shared);
    let reply = match &invalid {
        Some(reason) => Err(reason.clone()),
        None => Ok(recorded.replies.pop_front().unwrap_or(OtlpReply::Accept)),
    };
    recorded.requests.push(OtlpRequest {
        at: Instant::now(),
        headers,
        request,
        body,
        invalid,
        accepted: reply.as_ref().is_ok_and(OtlpReply::accepted),
    });
    reply
}

fn partial(rejected: i64, message: &str) -> ExportProfilesServiceResponse {
    ExportProfilesServiceResponse {
        partial_success: Some(ExportProfilesPartialSuccess {
            rejected_profiles: rejected,
            error_message: message.to_string(),
        }),
    }
}

/// `google.rpc.Status { code, message }`, the OTLP/HTTP error body.
fn rpc_status(code: i32, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::int32::encode(1, &code, &mut out);
    prost::encoding::string::encode(2, &message.to_string(), &mut out);
    out
}

async fn http_export(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let lower: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut plain = Vec::new();
    let decoded = (|| {
        if method != Method::POST || uri.path() != "/v1development/profiles" {
            return Err(format!("{method} {uri} is not POST /v1development/profiles"));
        }
        if lower.get("content-type").map(String::as_str) != Some("application/x-protobuf") {
            return Err(format!(
                "content-type {:?} is not application/x-protobuf",
                lower.get("content-type")
            ));
        }
        plain = match lower.get("content-encoding").map(String::as_str) {
            Some("gzip") => {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&body[..])
                    .read_to_end(&mut out)
                    .map_err(|err| format!("the body is not gzip: {err}"))?;
                out
            }
            None => body.to_vec(),
            Some(other) => return Err(format!("unknown content-encoding {other}")),
        };
        ExportProfilesServiceRequest::decode(plain.as_slice()).map_err(|err| format!("undecodable request: {err}"))
    })();
    let protobuf = [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")];
    match record(&shared, lower, plain, decoded) {
        Err(reason) => (StatusCode::BAD_REQUEST, protobuf, rpc_status(3, &reason)).into_response(),
        Ok(OtlpReply::Accept) => (
            StatusCode::OK,
            protobuf,
            ExportProfilesServiceResponse::default().encode_to_vec(),
        )
            .into_response(),
        Ok(OtlpReply::Partial { rejected, message }) => {
            (StatusCode::OK, protobuf, partial(rejected, &message).encode_to_vec()).into_response()
        }
        Ok(OtlpReply::Http {
            status,
            retry_after,
            message,
        }) => {
            let mut response = (
                StatusCode::from_u16(status).expect("a valid status"),
                protobuf,
                rpc_status(14, &message),
            )
                .into_response();
            if let Some(value) = retry_after {
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, value.parse().expect("a header value"));
            }
            response
        }
        Ok(OtlpReply::Grpc { .. }) => panic!("a gRPC reply scripted for the HTTP receiver"),
    }
}

struct GrpcExport {
    shared: Shared,
}

#[tonic::async_trait]
impl ProfilesService for GrpcExport {
    async fn export(
        &self,
        request: tonic::Request<ExportProfilesServiceRequest>,
    ) -> Result<tonic::Response<ExportProfilesServiceResponse>, tonic::Status> {
        let headers: BTreeMap<String, String> = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        match record(&self.shared, headers, Vec::new(), Ok(request.into_inner())) {
            Err(reason) => Err(tonic::Status::invalid_argument(reason)),
            Ok(OtlpReply::Accept) => Ok(tonic::Response::new(ExportProfilesServiceResponse::default())),
            Ok(OtlpReply::Partial { rejected, message }) => Ok(tonic::Response::new(partial(rejected, &message))),
            Ok(OtlpReply::Grpc { code, message }) => Err(tonic::Status::new(code, message)),
            Ok(OtlpReply::Http { .. }) => panic!("an HTTP reply scripted for the gRPC receiver"),
        }
    }
}

/// An attribute value as text (integers in decimal).
pub fn value_text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::IntValue(number)) => number.to_string(),
        other => format!("{other:?}"),
    }
}

/// One sample, resolved through the dictionary.
#[derive(Debug, Clone)]
pub struct ResolvedSample {
    /// Function names, root first (inlined frames innermost last).
    pub functions: Vec<String>,
    /// `profile.frame.type` of each location, root first.
    pub frame_types: Vec<String>,
    /// The build id attribute of each location's mapping, root first
    /// (empty when none).
    pub build_ids: Vec<String>,
    /// The sample's attributes by key.
    pub attributes: BTreeMap<String, String>,
    pub count: i64,
}

/// One process of one request.
#[derive(Debug, Clone)]
pub struct ResolvedResource {
    pub attributes: BTreeMap<String, String>,
    pub scope: (String, String),
    pub time_unix_nano: u64,
    pub duration_nano: u64,
    /// (sample type, unit), (period type, unit), period.
    pub types: ((String, String), (String, String), i64),
    pub samples: Vec<ResolvedSample>,
}

impl ResolvedResource {
    pub fn count(&self) -> i64 {
        self.samples.iter().map(|s| s.count).sum()
    }
}

/// Every resource of `request` with its samples resolved. Panics on a
/// structure the checks above let through (they should not).
pub fn resolve(request: &ExportProfilesServiceRequest) -> Vec<ResolvedResource> {
    let dict = request.dictionary.as_ref().expect("a dictionary");
    let s = |i: i32| dict.string_table[i as usize].clone();
    let attrs = |indices: &[i32]| -> BTreeMap<String, String> {
        indices
            .iter()
            .map(|&i| {
                let a = &dict.attribute_table[i as usize];
                (s(a.key_strindex), value_text(a.value.as_ref()))
            })
            .collect()
    };
    let mut out = Vec::new();
    for resource in &request.resource_profiles {
        let attributes: BTreeMap<String, String> = resource
            .resource
            .as_ref()
            .map(|r| {
                r.attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), value_text(kv.value.as_ref())))
                    .collect()
            })
            .unwrap_or_default();
        for scope in &resource.scope_profiles {
            let scope_name = scope
                .scope
                .as_ref()
                .map(|s| (s.name.clone(), s.version.clone()))
                .unwrap_or_default();
            for profile in &scope.profiles {
                let value_type = |t: &Option<taskprof::otlp::proto::profiles::v1development::ValueType>| {
                    t.as_ref()
                        .map(|t| (s(t.type_strindex), s(t.unit_strindex)))
                        .unwrap_or_default()
                };
                let samples = profile
                    .samples
                    .iter()
                    .map(|sample| {
                        let stack = &dict.stack_table[sample.stack_index as usize];
                        let mut functions = Vec::new();
                        let mut frame_types = Vec::new();
                        let mut build_ids = Vec::new();
                        for &l in stack.location_indices.iter().rev() {
                            let location = &dict.location_table[l as usize];
                            for line in location.lines.iter().rev() {
                                functions.push(s(dict.function_table[line.function_index as usize].name_strindex));
                            }
                            let types = attrs(&location.attribute_indices);
                            frame_types.push(types.get("profile.frame.type").cloned().unwrap_or_default());
                            let mapping = &dict.mapping_table[location.mapping_index as usize];
                            let mapping_attrs = attrs(&mapping.attribute_indices);
                            build_ids.push(
                                mapping_attrs
                                    .get("process.executable.build_id.gnu")
                                    .cloned()
                                    .unwrap_or_default(),
                            );
                        }
                        ResolvedSample {
                            functions,
                            frame_types,
                            build_ids,
                            attributes: attrs(&sample.attribute_indices),
                            count: sample.values.first().copied().unwrap_or(0),
                        }
                    })
                    .collect();
                out.push(ResolvedResource {
                    attributes: attributes.clone(),
                    scope: scope_name.clone(),
                    time_unix_nano: profile.time_unix_nano,
                    duration_nano: profile.duration_nano,
                    types: (
                        value_type(&profile.sample_type),
                        value_type(&profile.period_type),
                        profile.period,
                    ),
                    samples,
                });
            }
        }
    }
    out
}

/// Whether `functions` (root first) holds `chain` in order.
pub fn contains_in_order(functions: &[String], chain: &[&str]) -> bool {
    let mut at = 0;
    for name in functions {
        if at < chain.len() && name == chain[at] {
            at += 1;
        }
    }
    at == chain.len()
}

/// How long after `earlier` the request `later` came.
pub fn gap(earlier: &OtlpRequest, later: &OtlpRequest) -> Duration {
    later.at.duration_since(earlier.at)
}
