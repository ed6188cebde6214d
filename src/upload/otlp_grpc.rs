//! OTLP/gRPC profiles: each window's undelivered profiles go in one call
//! of `opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export`,
//! over TLS for `https://` URLs (the bundled web PKI roots plus
//! `--tls-ca-file`) and plaintext HTTP/2 for `http://`, gzipped unless
//! `--upload-compression none`. Credentials and `--header`s travel as
//! request metadata.
//!
//! Retries follow the OTLP specification: CANCELLED, DEADLINE_EXCEEDED,
//! ABORTED, OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS are retried, and
//! RESOURCE_EXHAUSTED only when the server sent `RetryInfo` (otherwise the
//! limit is not one that passes); the `RetryInfo` delay is honoured. Every
//! other code is final.

use prost::Message as _;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataMap;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

use super::client::{default_headers, USER_AGENT};
use super::otlp::{note_partial_success, request_body, send_as_one, RpcStatus};
use super::{
    truncate_message, Batch, Compression, SendFuture, SeriesProfile, SetupError, UploadConfig, UploadError, Uploader,
};
use crate::agent::metrics::Metrics;
use crate::otlp::proto::collector::profiles::v1development::profiles_service_client::ProfilesServiceClient;
use crate::otlp::proto::collector::profiles::v1development::ExportProfilesServiceRequest;
use crate::util::{error_chain, redacted};

/// Uploads a window's profiles as one OTLP/gRPC `Export` call.
pub struct OtlpGrpcUploader {
    client: ProfilesServiceClient<Channel>,
    metadata: MetadataMap,
    target: String,
    metrics: Metrics,
}

impl OtlpGrpcUploader {
    /// Sets up a channel to `config.url` that connects on first use (and
    /// again whenever the connection drops). Must run inside a Tokio runtime.
    pub fn new(config: &UploadConfig, metrics: Metrics) -> Result<OtlpGrpcUploader, SetupError> {
        let target = redacted(&config.url);
        let url_error = |reason: String| SetupError::Url {
            protocol: "otlp-grpc",
            url: target.clone(),
            reason,
        };
        let mut endpoint = Endpoint::from_shared(config.url.to_string())
            .map_err(|err| url_error(error_chain(&err)))?
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(USER_AGENT)
            .map_err(|err| url_error(error_chain(&err)))?;
        if config.url.scheme() == "https" {
            let mut tls = ClientTlsConfig::new().with_webpki_roots();
            if let Some(path) = &config.tls_ca_file {
                let pem = std::fs::read(path).map_err(|err| SetupError::CaFile {
                    path: path.clone(),
                    reason: err.to_string(),
                })?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint.tls_config(tls).map_err(|err| SetupError::Client {
                reason: error_chain(&err),
            })?;
        }
        let mut client = ProfilesServiceClient::new(endpoint.connect_lazy());
        if config.compression == Compression::Gzip {
            client = client
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        Ok(OtlpGrpcUploader {
            client,
            metadata: MetadataMap::from_headers(default_headers(config)?),
            target,
            metrics,
        })
    }
}

impl Uploader for OtlpGrpcUploader {
    fn send<'a>(&'a self, profiles: &'a [SeriesProfile], window: &'a Batch) -> SendFuture<'a> {
        send_as_one("otlp-grpc", profiles, window, async move {
            let body = request_body(profiles, window);
            let message = ExportProfilesServiceRequest::decode(body.as_slice()).map_err(|err| {
                // The parts were encoded by this agent (or read back from
                // its checksummed spool), so this means a bug.
                UploadError::Rejected {
                    status: 0,
                    message: format!("failed to assemble the OTLP request: {err}"),
                }
            })?;
            let mut request = tonic::Request::new(message);
            *request.metadata_mut() = self.metadata.clone();
            let started = std::time::Instant::now();
            let outcome = self.client.clone().export(request).await;
            self.metrics.upload_duration.observe(started.elapsed().as_secs_f64());
            match outcome {
                Ok(response) => {
                    tracing::debug!(target = %self.target, "upload accepted");
                    note_partial_success(response.get_ref(), profiles.len(), &self.metrics);
                    Ok(())
                }
                Err(status) => {
                    let err = classify(&status);
                    tracing::debug!(target = %self.target, error = %err, "upload failed");
                    Err(err)
                }
            }
        })
    }

    fn name(&self) -> &'static str {
        "otlp-grpc"
    }
}

/// What a failed call means, by the OTLP specification's table.
fn classify(status: &tonic::Status) -> UploadError {
    let details = RpcStatus::decode(status.details()).ok();
    let retry_delay = details.as_ref().and_then(RpcStatus::retry_delay);
    let code = status.code();
    let mut message = truncate_message(status.message());
    if message.is_empty() {
        message = code.description().to_string();
    }
    let retryable = match code {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        Code::ResourceExhausted => retry_delay.is_some(),
        _ => false,
    };
    match retryable {
        true => UploadError::Retryable {
            reason: format!("the server answered {code:?}: {message}"),
            retry_after: retry_delay,
        },
        // gRPC codes are not HTTP statuses; the code's number is kept
        // where the status would be, and its name is in the message.
        false => UploadError::Rejected {
            status: code as u16,
            message: format!("{code:?}: {message}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::upload::otlp::tests::status_with_retry;

    fn status(code: Code, details: Option<RpcStatus>) -> tonic::Status {
        match details {
            Some(details) => tonic::Status::with_details(code, "msg", details.encode_to_vec().into()),
            None => tonic::Status::new(code, "msg"),
        }
    }

    #[test]
    fn codes_are_retried_as_otlp_says() {
        assert!(classify(&status(Code::Unavailable, None)).is_retryable());
        assert!(classify(&status(Code::DeadlineExceeded, None)).is_retryable());
        assert!(!classify(&status(Code::ResourceExhausted, None)).is_retryable());
        let with_info = classify(&status(
            Code::ResourceExhausted,
            Some(status_with_retry(Duration::from_secs(2))),
        ));
        assert_eq!(with_info.retry_after(), Some(Duration::from_secs(2)));
        for code in [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Internal,
        ] {
            let err = classify(&status(code, None));
            assert!(!err.is_retryable(), "{code:?}");
            assert!(err.to_string().contains("msg"), "{err}");
        }
    }
}
