//! The Pyroscope and Parca stand-ins the agent tests upload to refuse what
//! the real servers refuse. Without this, an agent test could pass against
//! a receiver that takes anything.

use std::time::Duration;

use crate::common::receivers::{replies, Api, Receiver, Reply};
use base64::Engine as _;
use taskprof::pprof::proto::{Profile, Sample, ValueType};

/// A small, sound profile: one sample of 3 counts.
fn profile_gz() -> Vec<u8> {
    let profile = Profile {
        sample_type: vec![ValueType { r#type: 1, unit: 2 }],
        sample: vec![Sample {
            location_id: Vec::new(),
            value: vec![3],
            label: Vec::new(),
        }],
        string_table: vec![String::new(), "samples".to_string(), "count".to_string()],
        time_nanos: 1_700_000_000_000_000_000,
        ..Profile::default()
    };
    taskprof::pprof::encode_gzip(&profile).expect("encode a test profile")
}

/// A profile that breaks pprof's invariants: string 0 is not "".
fn broken_profile_gz() -> Vec<u8> {
    let profile = Profile {
        string_table: vec!["oops".to_string()],
        ..Profile::default()
    };
    taskprof::pprof::encode_gzip(&profile).expect("encode a test profile")
}

/// POSTs `body` to `path?query` with `content_type`; returns the status and
/// the answer's body.
fn post(receiver: &Receiver, path_and_query: &str, content_type: &str, body: Vec<u8>) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(format!("{}{path_and_query}", receiver.url()))
            .header("content-type", content_type)
            .timeout(Duration::from_secs(10))
            .body(body)
            .send()
            .await
            .expect("a request to the receiver");
        let status = response.status().as_u16();
        (status, response.text().await.expect("the receiver's answer"))
    })
}

const GOOD_QUERY: &str =
    "name=api%7Bpid%3D7%2Cnode%3Dn1%7D&from=1700000000&until=1700000010&format=pprof&spyName=taskprof";

fn ingest(receiver: &Receiver, query: &str, body: Vec<u8>) -> (u16, String) {
    post(receiver, &format!("/ingest?{query}"), "application/octet-stream", body)
}

fn multipart(fields: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "test-boundary-5b1f";
    let mut body = Vec::new();
    for (name, data) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.pprof\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[test]
fn pyroscope_ingest_records_the_series_and_profile() {
    let receiver = Receiver::accepting();
    assert_eq!(ingest(&receiver, GOOD_QUERY, profile_gz()).0, 200);
    let (status, _) = post(
        &receiver,
        &format!("/pyroscope/ingest?{GOOD_QUERY}"),
        "application/octet-stream",
        profile_gz(),
    );
    assert_eq!(status, 200);
    receiver.assert_all_valid();
    let ingests = receiver.ingests();
    assert_eq!(ingests.len(), 2);
    let first = &ingests[0];
    assert_eq!(first.api, Api::Pyroscope);
    assert_eq!(first.label("service_name"), "api");
    assert_eq!(first.label("pid"), "7");
    assert_eq!(first.label("node"), "n1");
    assert_eq!(first.label("pyroscope_spy"), "taskprof");
    assert_eq!((first.from, first.until), (Some(1_700_000_000), Some(1_700_000_010)));
    assert_eq!(first.sample_count(), 3);
}

#[test]
fn pyroscope_ingest_takes_multipart_without_format_and_refuses_prev_profile() {
    let receiver = Receiver::accepting();
    let query = "name=api&from=1700000000&until=1700000010";
    let gz = profile_gz();
    let (content_type, body) = multipart(&[("profile", &gz)]);
    let (status, answer) = post(&receiver, &format!("/ingest?{query}"), &content_type, body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(receiver.accepted(), 1);

    let (content_type, body) = multipart(&[("profile", &gz), ("prev_profile", &gz)]);
    let (status, answer) = post(&receiver, &format!("/ingest?{query}"), &content_type, body);
    assert_eq!(status, 400);
    assert!(answer.contains("prev_profile"), "{answer}");

    // With format=pprof the body is read as pprof, so multipart fails.
    let (content_type, body) = multipart(&[("profile", &gz)]);
    let (status, _) = post(&receiver, &format!("/ingest?{query}&format=pprof"), &content_type, body);
    assert_eq!(status, 400);
    assert_eq!(receiver.accepted(), 1);
}

#[test]
fn pyroscope_ingest_refuses_what_the_server_refuses() {
    let receiver = Receiver::accepting();
    let cases = [
        (
            "name=kworker%2F0%3A1&from=1700000000&until=1700000010&format=pprof",
            "invalid application name",
        ),
        (
            "name=api%7Bbad-name%3Dx%7D&from=1700000000&until=1700000010&format=pprof",
            "invalid label name",
        ),
        (
            "name=api%7Bpid%3D1%2Cpid%3D2%7D&from=1700000000&until=1700000010&format=pprof",
            "duplicate",
        ),
        ("name=api&from=1700000010&until=1700000000&format=pprof", "after until"),
        (
            "name=api&from=1700000000000&until=1700000010000&format=pprof",
            "Unix seconds",
        ),
        ("from=1700000000&until=1700000010&format=pprof", "`name`"),
    ];
    for (query, reason) in cases {
        let (status, answer) = ingest(&receiver, query, profile_gz());
        assert_eq!(status, 400, "{query}: {answer}");
        assert!(answer.contains(reason), "{query}: {answer}");
    }
    let (status, answer) = ingest(&receiver, GOOD_QUERY, broken_profile_gz());
    assert_eq!(status, 400);
    assert!(answer.contains("string_table[0]"), "{answer}");
    let (status, _) = ingest(&receiver, GOOD_QUERY, b"not a profile".to_vec());
    assert_eq!(status, 400);
    assert_eq!(receiver.accepted(), 0);
    assert_eq!(receiver.requests().iter().filter(|r| r.invalid.is_some()).count(), 8);
}

fn writeraw(labels: &[(&str, &str)], raw_key: &str, raw: &[u8]) -> Vec<u8> {
    let labels: Vec<serde_json::Value> = labels
        .iter()
        .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
        .collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
    serde_json::to_vec(&serde_json::json!({
        "series": [{"labels": {"labels": labels}, "samples": [{raw_key: encoded}]}],
        "normalized": false,
    }))
    .expect("JSON")
}

#[test]
fn parca_writeraw_records_series_and_refuses_bad_labels() {
    let receiver = Receiver::accepting();
    let path = "/api/profiles/writeraw";
    let good = [("__name__", "parca_agent_cpu"), ("node", "n1")];
    for key in ["rawProfile", "raw_profile"] {
        let (status, answer) = post(&receiver, path, "application/json", writeraw(&good, key, &profile_gz()));
        assert_eq!(status, 200, "{answer}");
    }
    let ingests = receiver.ingests();
    assert_eq!(ingests.len(), 2);
    assert_eq!(ingests[0].api, Api::Parca);
    assert_eq!(ingests[0].label("__name__"), "parca_agent_cpu");
    assert_eq!(ingests[1].sample_count(), 3);

    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("node", "n1")], "__name__"),
        (&[("__name__", "x"), ("pod.name", "a")], "invalid label name"),
        (&[("__name__", "x"), ("node", "a"), ("node", "b")], "duplicate"),
    ];
    for (labels, reason) in cases {
        let (status, answer) = post(
            &receiver,
            path,
            "application/json",
            writeraw(labels, "rawProfile", &profile_gz()),
        );
        assert_eq!(status, 400, "{labels:?}: {answer}");
        assert!(answer.contains(reason), "{labels:?}: {answer}");
    }
    let (status, _) = post(
        &receiver,
        path,
        "application/json",
        writeraw(&good, "rawProfile", &broken_profile_gz()),
    );
    assert_eq!(status, 400);
    // A gzipped request body is not undone by the gateway.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &writeraw(&good, "rawProfile", &profile_gz())).expect("gzip");
    let (status, _) = post(&receiver, path, "application/json", gz.finish().expect("gzip"));
    assert_eq!(status, 400);
    assert_eq!(receiver.accepted(), 2);
}

#[test]
fn scripted_answers_come_first_and_keep_profiles_out() {
    let receiver = Receiver::start(replies(vec![
        Reply::status(500, "boom"),
        Reply::status(429, "slow down").header("retry-after", "2"),
    ]));
    assert_eq!(ingest(&receiver, GOOD_QUERY, profile_gz()), (500, "boom".to_string()));
    assert_eq!(ingest(&receiver, GOOD_QUERY, profile_gz()).0, 429);
    assert_eq!(ingest(&receiver, GOOD_QUERY, profile_gz()).0, 200);
    let requests = receiver.requests();
    assert_eq!(
        requests.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![500, 429, 200]
    );
    assert!(requests
        .iter()
        .all(|r| r.invalid.is_none() && r.windows() == vec![1_700_000_000_000_000_000]));
    assert_eq!(receiver.accepted(), 1);
}

#[test]
fn a_receiver_can_come_up_later_on_a_chosen_port() {
    let port = crate::common::receivers::free_port();
    let receiver = Receiver::start_on(port, crate::common::receivers::accept_all());
    assert_eq!(receiver.addr().port(), port);
    assert_eq!(ingest(&receiver, GOOD_QUERY, profile_gz()).0, 200);
}
