//! OTLP/HTTP profiles: each window's undelivered profiles go in one
//! `POST {base}/v1development/profiles` as a binary protobuf
//! `ExportProfilesServiceRequest`, gzipped unless `--upload-compression
//! none`.
//!
//! What is retried follows the OTLP/HTTP specification, which is narrower
//! than for the other protocols: 429, 502, 503 and 504 (honouring
//! `Retry-After`) and failures to reach the server. Every other status,
//! 500 included, is final; its `google.rpc.Status` body is logged.

use prost::Message as _;
use url::Url;

use super::client::{http_client, join_endpoint, parse_retry_after, post_with, Answer, Request};
use super::otlp::{note_partial_success, request_body, send_as_one, RpcStatus};
use super::{
    truncate_message, Batch, Compression, SendFuture, SeriesProfile, SetupError, UploadConfig, UploadError, Uploader,
};
use crate::agent::metrics::Metrics;
use crate::otlp::proto::collector::profiles::v1development::ExportProfilesServiceResponse;

/// Uploads a window's profiles as one OTLP/HTTP request.
pub struct OtlpHttpUploader {
    client: reqwest::Client,
    endpoint: Url,
    compression: Compression,
    metrics: Metrics,
}

impl OtlpHttpUploader {
    /// Sets up the client and the `v1development/profiles` endpoint below
    /// `config.url`.
    pub fn new(config: &UploadConfig, metrics: Metrics) -> Result<OtlpHttpUploader, SetupError> {
        Ok(OtlpHttpUploader {
            client: http_client(config)?,
            endpoint: join_endpoint(&config.url, &["v1development", "profiles"], "otlp")?,
            compression: config.compression,
            metrics,
        })
    }
}

impl Uploader for OtlpHttpUploader {
    fn send<'a>(&'a self, profiles: &'a [SeriesProfile], window: &'a Batch) -> SendFuture<'a> {
        send_as_one("otlp", profiles, window, async move {
            let body = request_body(profiles, window);
            let request = match self.compression {
                Compression::Gzip => Request {
                    content_type: "application/x-protobuf",
                    content_encoding: Some("gzip"),
                    body: crate::util::gzip(&body).map_err(|err| UploadError::Rejected {
                        status: 0,
                        message: format!("failed to gzip the request: {err}"),
                    })?,
                },
                Compression::None => Request {
                    content_type: "application/x-protobuf",
                    content_encoding: None,
                    body,
                },
            };
            let response = post_with(&self.client, self.endpoint.clone(), request, &self.metrics, |answer| {
                classify(answer, std::time::SystemTime::now())
            })
            .await?;
            note_partial_success(&response, profiles.len(), &self.metrics);
            Ok(())
        })
    }

    fn name(&self) -> &'static str {
        "otlp"
    }
}

/// What an OTLP/HTTP answer means: 2xx delivered (with the response, for
/// its partial success); 429, 502, 503 and 504 retried after `Retry-After`;
/// anything else final.
fn classify(answer: Answer, now: std::time::SystemTime) -> Result<ExportProfilesServiceResponse, UploadError> {
    let message = || match RpcStatus::decode(answer.body.as_slice()) {
        Ok(status) if !status.message.is_empty() => truncate_message(&status.message),
        _ => truncate_message(&String::from_utf8_lossy(&answer.body)),
    };
    match answer.status {
        // An empty or unreadable body on success is still a success: the
        // request was taken, and sending it again would duplicate it.
        200..=299 => Ok(ExportProfilesServiceResponse::decode(answer.body.as_slice()).unwrap_or_default()),
        429 | 502 | 503 | 504 => {
            let mut reason = format!("the server answered {}", answer.status);
            let text = message();
            if !text.is_empty() {
                reason.push_str(": ");
                reason.push_str(&text);
            }
            Err(UploadError::Retryable {
                reason,
                retry_after: answer.retry_after.as_deref().and_then(|v| parse_retry_after(v, now)),
            })
        }
        status => {
            let mut text = message();
            if text.is_empty() {
                text = reqwest::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|code| code.canonical_reason())
                    .unwrap_or("no message")
                    .to_string();
            }
            Err(UploadError::Rejected { status, message: text })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::otlp::proto::collector::profiles::v1development::ExportProfilesPartialSuccess;
    use crate::upload::client::test_server::TestServer;
    use crate::upload::test_support::{series_profile, upload_config};
    use crate::upload::Protocol;

    fn answer(status: u16, retry_after: Option<&str>, body: Vec<u8>) -> Answer {
        Answer {
            status,
            retry_after: retry_after.map(str::to_string),
            body,
        }
    }

    #[test]
    fn only_the_statuses_otlp_names_are_retried() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        for status in [429, 502, 503, 504] {
            let err = classify(answer(status, Some("7"), Vec::new()), now).unwrap_err();
            assert_eq!(err.retry_after(), Some(Duration::from_secs(7)), "{status}");
        }
        for status in [400, 401, 404, 413, 500, 501] {
            let err = classify(answer(status, None, Vec::new()), now).unwrap_err();
            assert!(!err.is_retryable(), "{status} must not be retried");
        }
        let status = RpcStatus {
            code: 3,
            message: "bad dictionary".into(),
            details: Vec::new(),
        };
        let err = classify(answer(400, None, status.encode_to_vec()), now).unwrap_err();
        assert_eq!(
            err,
            UploadError::Rejected {
                status: 400,
                message: "bad dictionary".into()
            }
        );
        let partial = ExportProfilesServiceResponse {
            partial_success: Some(ExportProfilesPartialSuccess {
                rejected_profiles: 2,
                error_message: "x".into(),
            }),
        };
        let ok = classify(answer(200, None, partial.encode_to_vec()), now).expect("accepted");
        assert_eq!(ok, partial);
    }

    #[tokio::test]
    async fn the_window_goes_gzipped_to_the_profiles_endpoint() {
        let server = TestServer::start(vec![(503, vec![("Retry-After", "3".to_string())], String::new())]).await;
        let config = upload_config(Protocol::Otlp, &format!("http://{}/otel/", server.addr));
        let uploader = OtlpHttpUploader::new(&config, Metrics::new()).expect("uploader");
        let profiles = vec![series_profile(&[("pid", "1")], b"\x0a\x00"), series_profile(&[], b"")];
        let batch = Batch {
            sequence: 1,
            start: UNIX_EPOCH,
            end: UNIX_EPOCH + Duration::from_secs(10),
            profiles: profiles.clone(),
            shared: vec![0x2a, 0x00],
        };
        let first = uploader.send(&profiles, &batch).await;
        assert!(first
            .iter()
            .all(|r| r.as_ref().err().and_then(UploadError::retry_after) == Some(Duration::from_secs(3))));
        assert_eq!(uploader.send(&profiles, &batch).await, vec![Ok(()), Ok(())]);
        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        let request = &requests[1];
        assert_eq!(request.uri.path(), "/otel/v1development/profiles");
        assert_eq!(request.headers["content-type"], "application/x-protobuf");
        assert_eq!(request.headers["content-encoding"], "gzip");
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(request.body.as_slice()), &mut plain)
            .expect("gzip");
        assert_eq!(plain, request_body(&profiles, &batch));
    }
}
