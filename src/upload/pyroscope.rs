//! Grafana Pyroscope's HTTP ingest: each profile is its own
//! `POST {base}/ingest?name=APP{labels}&from=…&until=…&format=pprof` with
//! the gzipped pprof as the body. The server derives the series from the
//! `name` parameter, so that is where the labels go, cleaned to what its
//! parser accepts. Requests of one window run concurrently, up to
//! `UploadConfig::concurrency` at a time.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument as _;
use url::Url;

use super::client::{http_client, join_endpoint, post};
use super::{
    sanitize_name, series_labels, Batch, SendFuture, SeriesProfile, SetupError, UploadConfig, UploadError, Uploader,
};
use crate::agent::metrics::Metrics;

/// The label whose value becomes the application name.
const SERVICE_NAME: &str = "service_name";

/// Uploads to Pyroscope, one request per profile.
pub struct PyroscopeUploader {
    client: reqwest::Client,
    ingest: Url,
    concurrency: usize,
    metrics: Metrics,
}

impl PyroscopeUploader {
    /// Sets up the client and the ingest endpoint below `config.url`.
    pub fn new(config: &UploadConfig, metrics: Metrics) -> Result<PyroscopeUploader, SetupError> {
        Ok(PyroscopeUploader {
            client: http_client(config)?,
            ingest: join_endpoint(&config.url, &["ingest"], "pyroscope")?,
            concurrency: config.concurrency.max(1),
            metrics,
        })
    }
}

impl Uploader for PyroscopeUploader {
    fn send<'a>(&'a self, profiles: &'a [SeriesProfile], window: &'a Batch) -> SendFuture<'a> {
        Box::pin(async move {
            let unfinished = || UploadError::retryable("the upload task ended without a result");
            let mut results: Vec<Result<(), UploadError>> = vec![Err(unfinished()); profiles.len()];
            let permits = Arc::new(Semaphore::new(self.concurrency));
            let mut tasks = JoinSet::new();
            for (index, profile) in profiles.iter().enumerate() {
                // Taking the permit before copying the body bounds the memory
                // held by requests in flight, not just their number.
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let url = ingest_url(&self.ingest, profile, window);
                let span = tracing::info_span!(
                    "upload",
                    protocol = "pyroscope",
                    sequence = window.sequence,
                    service = %app_name(profile),
                );
                let client = self.client.clone();
                let metrics = self.metrics.clone();
                let body = profile.payload.clone();
                tasks.spawn(
                    async move {
                        let result = post(&client, url, "application/octet-stream", body, &metrics).await;
                        drop(permit);
                        (index, result)
                    }
                    .instrument(span),
                );
            }
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok((index, result)) => results[index] = result,
                    Err(err) => tracing::error!(error = %err, "a Pyroscope upload task failed"),
                }
            }
            results
        })
    }

    fn name(&self) -> &'static str {
        "pyroscope"
    }
}

/// The full ingest URL of one profile.
fn ingest_url(ingest: &Url, profile: &SeriesProfile, window: &Batch) -> Url {
    let mut url = ingest.clone();
    url.query_pairs_mut()
        .append_pair("name", &series_name(profile))
        .append_pair("from", &unix_seconds(window.start, false).to_string())
        .append_pair("until", &unix_seconds(window.end, true).to_string())
        .append_pair("format", "pprof")
        .append_pair("spyName", "taskprof");
    url
}

/// `APP{k=v,...}`: the application name, then every other label.
fn series_name(profile: &SeriesProfile) -> String {
    let mut name = app_name(profile);
    let labels = series_labels(profile, &[SERVICE_NAME]);
    if !labels.is_empty() {
        let pairs: Vec<String> = labels
            .iter()
            .map(|(key, value)| format!("{key}={}", label_value(value)))
            .collect();
        name.push('{');
        name.push_str(&pairs.join(","));
        name.push('}');
    }
    name
}

/// The `service_name` label, reduced to the characters Pyroscope allows in
/// an application name (letters, digits, `_ . - /`); it answers 400 to
/// anything else, such as the `:` of `kworker/0:1`.
fn app_name(profile: &SeriesProfile) -> String {
    sanitize_name(profile.label(SERVICE_NAME).unwrap_or_default(), |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')
    })
}

/// A label value with the characters that delimit the `name` syntax replaced.
fn label_value(value: &str) -> String {
    value
        .chars()
        .map(|c| if matches!(c, ',' | '{' | '}' | '=') { '_' } else { c })
        .collect()
}

/// Whole seconds since the epoch, rounded down for a start and up for an
/// end, so that the reported range always covers the window.
fn unix_seconds(time: SystemTime, round_up: bool) -> u64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    since.as_secs() + u64::from(round_up && since.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::upload::client::test_server::TestServer;
    use crate::upload::test_support::{series_profile as profile, upload_config};
    use crate::upload::{Auth, Protocol, Secret};

    fn window(profiles: Vec<SeriesProfile>) -> Batch {
        Batch {
            sequence: 7,
            start: UNIX_EPOCH + Duration::from_millis(1_700_000_000_250),
            end: UNIX_EPOCH + Duration::from_millis(1_700_000_010_250),
            profiles,
            shared: Vec::new(),
        }
    }

    fn query(url: &Url) -> HashMap<String, String> {
        url.query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    #[test]
    fn names_hold_a_clean_app_and_the_other_labels() {
        let p = profile(
            &[
                ("service_name", "kworker/0:1"),
                ("pod.name", "web-1"),
                ("cmd", "a,b{c}=d"),
                ("service_name_x", ""),
            ],
            b"",
        );
        assert_eq!(series_name(&p), "kworker/0_1{pod_name=web-1,cmd=a_b_c__d}");
        assert_eq!(series_name(&profile(&[("node", "n1")], b"")), "unknown{node=n1}");
        assert_eq!(series_name(&profile(&[("service_name", "api")], b"")), "api");
    }

    #[test]
    fn urls_cover_the_window_under_the_base_path() {
        let ingest = join_endpoint(
            &Url::parse("http://gw:8080/pyroscope").expect("URL"),
            &["ingest"],
            "pyroscope",
        )
        .expect("endpoint");
        let p = profile(&[("service_name", "api"), ("pid", "42")], b"");
        let url = ingest_url(&ingest, &p, &window(Vec::new()));
        assert_eq!(url.path(), "/pyroscope/ingest");
        let q = query(&url);
        assert_eq!(q["name"], "api{pid=42}");
        assert_eq!(q["from"], "1700000000");
        assert_eq!(q["until"], "1700000011");
        assert_eq!(q["format"], "pprof");
        assert_eq!(q["spyName"], "taskprof");
    }

    #[tokio::test]
    async fn each_profile_is_posted_with_its_bytes_and_result() {
        let server = TestServer::start(Vec::new()).await;
        let config = UploadConfig {
            auth: Auth::Bearer(Secret::new("t0ken")),
            ..upload_config(Protocol::Pyroscope, &format!("http://{}/", server.addr))
        };
        let uploader = PyroscopeUploader::new(&config, Metrics::new()).expect("uploader");
        let profiles: Vec<_> = (0..5)
            .map(|i| profile(&[("service_name", "api"), ("pid", &i.to_string())], &[i as u8; 3]))
            .collect();
        let batch = window(profiles.clone());
        let results = uploader.send(&profiles, &batch).await;
        assert_eq!(results, vec![Ok(()); 5]);

        let requests = server.requests();
        assert_eq!(requests.len(), 5);
        for request in requests {
            assert_eq!(request.uri.path(), "/ingest");
            let url = Url::parse(&format!("http://x{}", request.uri)).expect("request URI");
            let pid: u8 = query(&url)["name"]
                .trim_start_matches("api{pid=")
                .trim_end_matches('}')
                .parse()
                .expect("pid label");
            assert_eq!(request.body, vec![pid; 3]);
            assert_eq!(
                request.headers.get("authorization").and_then(|v| v.to_str().ok()),
                Some("Bearer t0ken")
            );
        }
    }
}
