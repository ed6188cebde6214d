//! Parca's WriteRaw through its JSON gateway: every profile of a window
//! becomes one series of one `POST {base}/api/profiles/writeraw`, with the
//! gzipped pprof base64-encoded as `rawProfile`. A window whose body would
//! pass about 16 MiB is split into several requests, each series whole.
//!
//! The profile is compressed, the request is not: the gateway does not undo
//! a `Content-Encoding: gzip` on the request.

use base64::Engine as _;
use serde::Serialize;
use tracing::Instrument as _;
use url::Url;

use super::client::{http_client, join_endpoint, post};
use super::{series_labels, Batch, SendFuture, SeriesProfile, SetupError, UploadConfig, UploadError, Uploader};
use crate::agent::metrics::Metrics;

/// The metric name Parca's agent uses for CPU profiles.
const PROFILE_NAME: &str = "parca_agent_cpu";

/// Largest request body the uploader builds on purpose. A single series
/// larger than this is still sent, alone.
const MAX_BODY_BYTES: usize = 16 << 20;

/// Uploads to Parca, all of a window's profiles per request.
pub struct ParcaUploader {
    client: reqwest::Client,
    endpoint: Url,
    metrics: Metrics,
}

impl ParcaUploader {
    /// Sets up the client and the WriteRaw endpoint below `config.url`.
    pub fn new(config: &UploadConfig, metrics: Metrics) -> Result<ParcaUploader, SetupError> {
        Ok(ParcaUploader {
            client: http_client(config)?,
            endpoint: join_endpoint(&config.url, &["api", "profiles", "writeraw"], "parca")?,
            metrics,
        })
    }
}

impl Uploader for ParcaUploader {
    fn send<'a>(&'a self, profiles: &'a [SeriesProfile], window: &'a Batch) -> SendFuture<'a> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(profiles.len());
            for request in write_raw_requests(profiles, MAX_BODY_BYTES) {
                let span = tracing::info_span!(
                    "upload",
                    protocol = "parca",
                    sequence = window.sequence,
                    series = request.series,
                );
                let result = match request.body {
                    Ok(body) => {
                        post(
                            &self.client,
                            self.endpoint.clone(),
                            "application/json",
                            body,
                            &self.metrics,
                        )
                        .instrument(span)
                        .await
                    }
                    Err(err) => Err(err),
                };
                results.extend(std::iter::repeat_n(result, request.series));
            }
            results
        })
    }

    fn name(&self) -> &'static str {
        "parca"
    }
}

#[derive(Serialize)]
struct RawSeries<'a> {
    labels: LabelSet<'a>,
    samples: [RawSample; 1],
}

#[derive(Serialize)]
struct LabelSet<'a> {
    labels: Vec<Label<'a>>,
}

#[derive(Serialize)]
struct Label<'a> {
    name: String,
    value: &'a str,
}

#[derive(Serialize)]
struct RawSample {
    #[serde(rename = "rawProfile")]
    raw_profile: String,
}

/// One WriteRaw request: the body for the next `series` profiles, in order.
struct WriteRawRequest {
    series: usize,
    body: Result<Vec<u8>, UploadError>,
}

/// Groups `profiles`, in order, into request bodies of at most `limit`
/// bytes (a series larger than that goes alone).
fn write_raw_requests(profiles: &[SeriesProfile], limit: usize) -> Vec<WriteRawRequest> {
    const HEAD: &[u8] = b"{\"series\":[";
    const TAIL: &[u8] = b"],\"normalized\":false}";
    let mut requests = Vec::new();
    let mut body = HEAD.to_vec();
    let mut series = 0;
    for profile in profiles {
        let encoded = match serde_json::to_vec(&raw_series(profile)) {
            Ok(encoded) => encoded,
            Err(err) => {
                // Cannot happen with string-only data; if it ever does, this
                // one profile is refused rather than the whole window.
                if series > 0 {
                    body.extend_from_slice(TAIL);
                    requests.push(WriteRawRequest { series, body: Ok(body) });
                    body = HEAD.to_vec();
                    series = 0;
                }
                let message = format!("failed to encode the WriteRaw request: {err}");
                requests.push(WriteRawRequest {
                    series: 1,
                    body: Err(UploadError::Rejected { status: 0, message }),
                });
                continue;
            }
        };
        if series > 0 && body.len() + 1 + encoded.len() + TAIL.len() > limit {
            body.extend_from_slice(TAIL);
            requests.push(WriteRawRequest { series, body: Ok(body) });
            body = HEAD.to_vec();
            series = 0;
        }
        if series > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&encoded);
        series += 1;
    }
    if series > 0 {
        body.extend_from_slice(TAIL);
        requests.push(WriteRawRequest { series, body: Ok(body) });
    }
    requests
}

/// One series: `__name__` first, then the profile's labels made
/// Prometheus-valid and unique.
fn raw_series(profile: &SeriesProfile) -> RawSeries<'_> {
    let mut labels = vec![Label {
        name: "__name__".to_string(),
        value: PROFILE_NAME,
    }];
    labels.extend(
        series_labels(profile, &["__name__"])
            .into_iter()
            .map(|(name, value)| Label { name, value }),
    );
    RawSeries {
        labels: LabelSet { labels },
        samples: [RawSample {
            raw_profile: base64::engine::general_purpose::STANDARD.encode(&profile.payload),
        }],
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::Value;

    use super::*;
    use crate::upload::client::test_server::TestServer;
    use crate::upload::test_support::{series_profile as profile, upload_config};
    use crate::upload::Protocol;

    fn decode(value: &Value) -> Vec<u8> {
        let text = value.as_str().expect("rawProfile is a string");
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("valid base64")
    }

    #[test]
    fn bodies_have_the_writeraw_shape() {
        let bytes = [0x1f, 0x8b, 8, 0, 1, 2, 3, 255];
        let p = profile(
            &[
                ("__name__", "evil"),
                ("service_name", "api"),
                ("pod.name", "web"),
                ("pod_name", "dup"),
                ("0day", "x"),
            ],
            &bytes,
        );
        let requests = write_raw_requests(&[p], MAX_BODY_BYTES);
        assert_eq!(requests.len(), 1);
        let body = requests[0].body.as_ref().expect("encoded");
        let json: Value = serde_json::from_slice(body).expect("valid JSON");
        assert_eq!(json["normalized"], Value::Bool(false));
        let series = json["series"].as_array().expect("series array");
        assert_eq!(series.len(), 1);
        let labels: Vec<(String, String)> = series[0]["labels"]["labels"]
            .as_array()
            .expect("labels array")
            .iter()
            .map(|l| {
                (
                    l["name"].as_str().expect("name").to_string(),
                    l["value"].as_str().expect("value").to_string(),
                )
            })
            .collect();
        let expected = [
            ("__name__", "parca_agent_cpu"),
            ("service_name", "api"),
            ("pod_name", "web"),
            ("_0day", "x"),
        ];
        assert_eq!(labels, expected.map(|(k, v)| (k.to_string(), v.to_string())).to_vec());
        for (name, _) in &labels {
            let mut chars = name.chars();
            assert!(chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_'));
            assert!(chars.all(|c| c.is_ascii_alphanumeric() || c == '_'));
        }
        assert_eq!(decode(&series[0]["samples"][0]["rawProfile"]), bytes);
    }

    #[test]
    fn large_windows_are_split_in_order_without_cutting_a_series() {
        let profiles: Vec<_> = (0..10u8)
            .map(|i| profile(&[("pid", &i.to_string())], &[i; 3000]))
            .collect();
        let requests = write_raw_requests(&profiles, 10_000);
        assert!(requests.len() > 1);
        assert_eq!(requests.iter().map(|r| r.series).sum::<usize>(), 10);
        let mut next = 0u8;
        for request in &requests {
            let body = request.body.as_ref().expect("encoded");
            assert!(body.len() <= 10_000 || request.series == 1);
            let json: Value = serde_json::from_slice(body).expect("valid JSON");
            let series = json["series"].as_array().expect("series array");
            assert_eq!(series.len(), request.series);
            for s in series {
                assert_eq!(decode(&s["samples"][0]["rawProfile"]), vec![next; 3000]);
                next += 1;
            }
        }
        let huge = write_raw_requests(&[profile(&[], &[0; 20_000])], 10_000);
        assert_eq!(huge.len(), 1);
    }

    #[tokio::test]
    async fn one_request_carries_the_window_and_its_result_goes_to_every_profile() {
        let server = TestServer::start(vec![(500, Vec::new(), "boom".to_string())]).await;
        let config = UploadConfig {
            concurrency: 1,
            ..upload_config(Protocol::Parca, &format!("http://{}/", server.addr))
        };
        let uploader = ParcaUploader::new(&config, Metrics::new()).expect("uploader");
        let profiles = vec![profile(&[("pid", "1")], b"a"), profile(&[("pid", "2")], b"b")];
        let batch = Batch {
            sequence: 1,
            start: UNIX_EPOCH,
            end: UNIX_EPOCH + Duration::from_secs(10),
            profiles: profiles.clone(),
            shared: Vec::new(),
        };
        let failed = uploader.send(&profiles, &batch).await;
        assert_eq!(failed.len(), 2);
        assert!(failed.iter().all(|r| r.as_ref().is_err_and(UploadError::is_retryable)));
        assert_eq!(uploader.send(&profiles, &batch).await, vec![Ok(()), Ok(())]);

        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].uri.path(), "/api/profiles/writeraw");
        assert!(requests[1].headers.get("content-encoding").is_none());
        let json: Value = serde_json::from_slice(&requests[1].body).expect("valid JSON");
        assert_eq!(json["series"].as_array().map(Vec::len), Some(2));
    }
}
