//! What OTLP/HTTP and OTLP/gRPC share: the request body of a window's
//! undelivered profiles, the server's `partial_success`, and the
//! `google.rpc.Status` an OTLP server explains a failure with.
//!
//! The OTLP specification decides what is retried: a request the server
//! accepted with a partial success is not (the rejected part would be
//! rejected again), and only the failures it names as transient are.

use std::future::Future;

use tracing::Instrument as _;

use super::{truncate_message, Batch, SendFuture, SeriesProfile, UploadError};
use crate::agent::metrics::Metrics;
use crate::otlp::export_request;
use crate::otlp::proto::collector::profiles::v1development::ExportProfilesServiceResponse;

/// The `ExportProfilesServiceRequest` bytes for `profiles`, all of the
/// window `window`, with its dictionary.
pub(crate) fn request_body(profiles: &[SeriesProfile], window: &Batch) -> Vec<u8> {
    export_request(profiles.iter().map(|p| p.payload.as_slice()), &window.shared)
}

/// Runs `send`, the one request that carries `profiles` of `window`, in an
/// `upload` span, and gives its outcome to each of them: an OTLP request
/// succeeds or fails whole.
pub(crate) fn send_as_one<'a>(
    protocol: &'static str,
    profiles: &'a [SeriesProfile],
    window: &'a Batch,
    send: impl Future<Output = Result<(), UploadError>> + Send + 'a,
) -> SendFuture<'a> {
    Box::pin(async move {
        let span = tracing::info_span!(
            "upload",
            protocol,
            sequence = window.sequence,
            profiles = profiles.len()
        );
        let result = send.instrument(span).await;
        vec![result; profiles.len()]
    })
}

/// Logs and counts what a successful answer's `partial_success` says the
/// server refused. The request is delivered either way.
pub(crate) fn note_partial_success(response: &ExportProfilesServiceResponse, sent: usize, metrics: &Metrics) {
    let Some(partial) = &response.partial_success else {
        return;
    };
    let rejected = u64::try_from(partial.rejected_profiles).unwrap_or(0);
    if rejected == 0 && partial.error_message.is_empty() {
        return;
    }
    metrics.otlp_profiles_rejected.inc_by(rejected);
    tracing::warn!(
        rejected,
        of = sent,
        message = %truncate_message(&partial.error_message),
        "the OTLP backend accepted the request but refused part of it; the refused profiles are dropped"
    );
}

/// `google.rpc.Status`, as OTLP servers send it in an HTTP error body and
/// gRPC in `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RpcStatus {
    /// The gRPC code.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// The server's explanation.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Typed details, such as `RetryInfo`.
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<AnyDetail>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct AnyDetail {
    /// `type.googleapis.com/<message name>`.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// The encoded message.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RetryInfo {
    /// How long to wait before sending again.
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ProtoDuration {
    /// Whole seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds on top.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

impl RpcStatus {
    /// The delay of the `RetryInfo` detail, if the server sent one.
    pub(crate) fn retry_delay(&self) -> Option<std::time::Duration> {
        use prost::Message as _;

        let detail = self.details.iter().find(|d| d.type_url == RETRY_INFO_TYPE)?;
        let delay = RetryInfo::decode(detail.value.as_slice()).ok()?.retry_delay?;
        let seconds = u64::try_from(delay.seconds).ok()?;
        let nanos = u32::try_from(delay.nanos).ok().filter(|&n| n < 1_000_000_000)?;
        Some(std::time::Duration::new(seconds, nanos))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use prost::Message as _;

    use super::*;
    use crate::otlp::proto::collector::profiles::v1development::ExportProfilesPartialSuccess;

    pub(crate) fn status_with_retry(delay: Duration) -> RpcStatus {
        let info = RetryInfo {
            retry_delay: Some(ProtoDuration {
                seconds: delay.as_secs() as i64,
                nanos: delay.subsec_nanos() as i32,
            }),
        };
        RpcStatus {
            code: 8,
            message: "slow down".into(),
            details: vec![AnyDetail {
                type_url: RETRY_INFO_TYPE.into(),
                value: info.encode_to_vec(),
            }],
        }
    }

    #[test]
    fn retry_info_is_read_from_the_status_details() {
        let status = status_with_retry(Duration::from_millis(1500));
        let decoded = RpcStatus::decode(status.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded.retry_delay(), Some(Duration::from_millis(1500)));
        let plain = RpcStatus {
            details: Vec::new(),
            ..decoded
        };
        assert_eq!(plain.retry_delay(), None);
    }

    #[test]
    fn partial_success_counts_the_rejected_profiles() {
        let metrics = Metrics::new();
        let response = ExportProfilesServiceResponse {
            partial_success: Some(ExportProfilesPartialSuccess {
                rejected_profiles: 3,
                error_message: "too old".into(),
            }),
        };
        note_partial_success(&response, 5, &metrics);
        note_partial_success(&ExportProfilesServiceResponse::default(), 5, &metrics);
        assert_eq!(metrics.otlp_profiles_rejected.get(), 3);
    }
}
