//! `taskprof agent --upload-protocol otlp | otlp-grpc` against OTLP
//! receivers on 127.0.0.1: every request decodes with the
//! `opentelemetry-proto` types and keeps the dictionary invariants; the
//! fixture's stacks resolve to its function chain; each window's request
//! holds exactly the samples BPF counted for it; resources carry the OTel
//! semantic-convention attributes, Kubernetes ones included; and retries,
//! refusals, partial successes and an outage behave as the OTLP
//! specification says.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::common::agent_run::{wait_until, AgentCommand, AgentExit, RunningAgent, TEST_NODE};
use crate::common::fake_kube::{place_in_container, storefront_pod, FakeApi};
use crate::common::otlp::{contains_in_order, gap, resolve, OtlpReceiver, OtlpReply, ResolvedResource, Transport};
use crate::common::receivers::free_port;
use crate::common::{path_arg, scratch_dir, Fixture, FixtureProgram};

const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
const WINDOWS_TIMEOUT: Duration = Duration::from_secs(40);
const CHAIN: [&str; 4] = ["main", "outer", "middle", "hot"];

/// The fixture's resources in the accepted requests, one list per request
/// (so per window), in arrival order.
fn fixture_windows(receiver: &OtlpReceiver) -> Vec<Vec<ResolvedResource>> {
    receiver.accepted().iter().map(resolve).collect()
}

/// The account of an OTLP run: each accepted request holds exactly the
/// samples of one closed window (in order), `dropped` counts the samples of
/// requests the test made the receiver refuse, and with the idle CPUs'
/// samples (left out of profiles) and BPF's losses that is every sample
/// BPF took.
fn assert_exact_accounting(exit: &AgentExit, windows: &[Vec<ResolvedResource>], dropped: i64) {
    let closed: Vec<i64> = exit
        .windows()
        .iter()
        .filter(|w| w.profiles > 0)
        .map(|w| w.in_profiles as i64)
        .collect();
    let received: Vec<i64> = windows
        .iter()
        .map(|resources| resources.iter().map(ResolvedResource::count).sum())
        .collect();
    if dropped == 0 {
        assert_eq!(received, closed, "each request must hold exactly its window's samples");
    }
    let stopped = exit.stopped();
    assert!(stopped.samples > 0, "BPF took no samples:\n{}", exit.stderr());
    assert_eq!(
        received.iter().sum::<i64>() + dropped + stopped.idle as i64 + stopped.lost as i64,
        stopped.samples as i64,
        "received {received:?} + dropped {dropped} + idle {} + lost {} != taken {}",
        stopped.idle,
        stopped.lost,
        stopped.samples
    );
    for window in exit.windows() {
        assert_eq!(
            window.in_profiles + window.idle + window.lost,
            window.samples,
            "{window:?}"
        );
    }
    let starts: Vec<u64> = windows.iter().map(|w| w[0].time_unix_nano).collect();
    assert!(
        starts.windows(2).all(|pair| pair[0] < pair[1]),
        "windows arrived out of order or twice: {starts:?}"
    );
}

/// What every resource of the fixture must say about itself.
fn assert_fixture_resource(resource: &ResolvedResource, fixture: &Fixture) {
    let executable = std::fs::canonicalize(FixtureProgram::Chain.executable()).expect("fixture path");
    let pid = fixture.pid().to_string();
    for (key, expected) in [
        ("service.name", fixture.comm()),
        ("process.pid", pid.as_str()),
        ("process.executable.name", fixture.comm()),
        ("process.executable.path", path_arg(&executable)),
        ("host.name", TEST_NODE),
        ("team", "profiling"),
    ] {
        assert_eq!(
            resource.attributes.get(key).map(String::as_str),
            Some(expected),
            "resource attribute `{key}` of {:?}",
            resource.attributes
        );
    }
    assert_eq!(
        resource.scope,
        ("taskprof".to_string(), env!("CARGO_PKG_VERSION").to_string())
    );
    let types = &resource.types;
    assert_eq!((types.0 .0.as_str(), types.0 .1.as_str()), ("samples", "count"));
    assert_eq!((types.1 .0.as_str(), types.1 .1.as_str()), ("cpu", "nanoseconds"));
    assert_eq!(types.2, 1_000_000_000 / 99, "the period at 99 Hz");
    // How long a window lasts depends on the machine's load (and the last
    // is cut short by SIGTERM); that windows tile time is checked in
    // `delivered_windows`.
    assert!(
        (1..60_000_000_000).contains(&resource.duration_nano),
        "a 1 s window lasted {} ns",
        resource.duration_nano
    );
    for sample in &resource.samples {
        assert!(sample.attributes.contains_key("thread.id"), "{:?}", sample.attributes);
        assert_eq!(
            sample.attributes.get("thread.name").map(String::as_str),
            Some(fixture.comm())
        );
        assert_eq!(
            sample.frame_types.len(),
            sample.functions.len().min(sample.frame_types.len())
        );
        assert!(
            sample.frame_types.iter().all(|t| t == "native" || t == "kernel"),
            "frame types {:?}",
            sample.frame_types
        );
    }
    let chains: Vec<_> = resource
        .samples
        .iter()
        .filter(|s| contains_in_order(&s.functions, &CHAIN))
        .collect();
    assert!(
        !chains.is_empty(),
        "no main -> outer -> middle -> hot stack in {:#?}",
        resource.samples.iter().map(|s| &s.functions).collect::<Vec<_>>()
    );
    // The fixture's own frames are native, in a mapping with a build id.
    let hot = chains[0];
    let at = hot.functions.iter().position(|f| f == "hot").expect("hot");
    assert_eq!(hot.frame_types[at.min(hot.frame_types.len() - 1)], "native");
    assert!(
        hot.build_ids
            .iter()
            .any(|id| id.len() >= 16 && id.chars().all(|c| c.is_ascii_hexdigit())),
        "no GNU build id on the fixture's mapping: {:?}",
        hot.build_ids
    );
}

/// Runs an agent on the Chain fixture through `receiver` until `windows`
/// windows closed, then stops it with SIGTERM.
fn run_on_fixture(receiver: &OtlpReceiver, flags: &[&str], windows: usize) -> (Fixture, AgentExit) {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 60.0);
    let spool = scratch_dir();
    let mut agent = AgentCommand::new(receiver.protocol(), &receiver.url(), spool.path())
        .pid(fixture.pid())
        .args(["--label", "team=profiling"])
        .args(flags)
        .spawn();
    agent.wait_for_windows(windows, WINDOWS_TIMEOUT);
    let exit = agent.terminate(EXIT_TIMEOUT);
    exit.assert_success();
    (fixture, exit)
}

fn delivered_windows(transport: Transport, flags: &[&str]) -> (OtlpReceiver, Fixture, AgentExit) {
    let receiver = OtlpReceiver::start(transport, Vec::new());
    let (fixture, exit) = run_on_fixture(&receiver, flags, 4);
    receiver.assert_all_valid();
    let windows = fixture_windows(&receiver);
    assert!(windows.len() >= 4, "only {} requests arrived", windows.len());
    for window in &windows {
        assert_eq!(
            window.len(),
            1,
            "one resource per process, and only the fixture was sampled"
        );
        assert_fixture_resource(&window[0], &fixture);
    }
    assert_exact_accounting(&exit, &windows, 0);
    // Nothing was dropped, so each window ends where the next begins.
    for pair in windows.windows(2) {
        let (this, next) = (&pair[0][0], &pair[1][0]);
        assert_eq!(
            this.time_unix_nano + this.duration_nano,
            next.time_unix_nano,
            "a gap or overlap between consecutive windows"
        );
    }
    (receiver, fixture, exit)
}

#[test]
fn otlp_http_receives_each_window_once_with_the_fixture_chain() {
    let (receiver, _fixture, _exit) = delivered_windows(Transport::Http, &[]);
    for request in receiver.requests() {
        assert_eq!(
            request.headers.get("content-encoding").map(String::as_str),
            Some("gzip")
        );
    }
}

/// Uncompressed requests, which the official Python classes (PyPI
/// `opentelemetry-proto`, a decoder independent of the Rust crate) read
/// alike: same resources, same counts, the fixture's chain.
#[test]
fn otlp_http_without_compression_reads_alike_in_the_reference_python_classes() {
    let (receiver, _fixture, _exit) = delivered_windows(Transport::Http, &["--upload-compression", "none"]);
    assert!(receiver
        .requests()
        .iter()
        .all(|r| !r.headers.contains_key("content-encoding")));
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/otlp-venv/bin/python3");
    assert!(
        python.exists(),
        "`{}` is missing: run scripts/install-deps.sh --test, which installs PyPI's opentelemetry-proto there",
        python.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/otlp_decode.py");
    let dir = scratch_dir();
    for (index, request) in receiver.requests().iter().enumerate() {
        let file = dir.path().join(format!("{index}.pb"));
        std::fs::write(&file, &request.body).expect("write the captured request");
        let output = std::process::Command::new(&python)
            .arg(&script)
            .arg(&file)
            .output()
            .expect("run the Python decoder");
        assert!(
            output.status.success(),
            "the Python decoder failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let decoded: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON from the decoder");
        assert_eq!(decoded["problems"], serde_json::json!([]), "request {index}");
        let ours = resolve(request.request.as_ref().expect("decoded"));
        let theirs = decoded["resources"].as_array().expect("resources");
        assert_eq!(theirs.len(), ours.len(), "request {index}");
        for (python_resource, rust_resource) in theirs.iter().zip(&ours) {
            let attributes: std::collections::BTreeMap<String, String> =
                serde_json::from_value(python_resource["attributes"].clone()).expect("attributes");
            assert_eq!(attributes, rust_resource.attributes);
            let samples = python_resource["samples"].as_array().expect("samples");
            let chains: Vec<(i64, Vec<String>)> = samples
                .iter()
                .map(|s| {
                    let functions = serde_json::from_value(s["functions"].clone()).expect("functions");
                    (s["count"].as_i64().expect("count"), functions)
                })
                .collect();
            let expected: Vec<(i64, Vec<String>)> = rust_resource
                .samples
                .iter()
                .map(|s| (s.count, s.functions.clone()))
                .collect();
            assert_eq!(chains, expected, "request {index}");
            assert!(chains.iter().any(|(_, f)| contains_in_order(f, &CHAIN)));
        }
    }
}

#[test]
fn otlp_grpc_receives_each_window_once_with_credentials_in_metadata() {
    const TOKEN: &str = "otlp-token-NEVER-LOG-9c1";
    let dir = scratch_dir();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write the token file");
    let (receiver, _fixture, exit) = delivered_windows(
        Transport::Grpc,
        &[
            "--bearer-token-file",
            path_arg(&token_file),
            "--header",
            "X-Scope-OrgID: tenant1",
        ],
    );
    for request in receiver.requests() {
        assert_eq!(
            request.headers.get("authorization").map(String::as_str),
            Some(&*format!("Bearer {TOKEN}"))
        );
        assert_eq!(
            request.headers.get("x-scope-orgid").map(String::as_str),
            Some("tenant1")
        );
        assert_eq!(request.headers.get("grpc-encoding").map(String::as_str), Some("gzip"));
    }
    assert!(!exit.stderr().contains(TOKEN), "the token reached the logs");
}

/// 503, then 429 with `Retry-After: 2`: both retried, the second only
/// after the server's delay; nothing lost, nothing twice.
#[test]
fn otlp_http_retries_503_and_429_after_retry_after() {
    let receiver = OtlpReceiver::start(
        Transport::Http,
        vec![
            OtlpReply::Http {
                status: 503,
                retry_after: None,
                message: "warming up".into(),
            },
            OtlpReply::Http {
                status: 429,
                retry_after: Some("2".into()),
                message: "slow down".into(),
            },
        ],
    );
    let (_fixture, exit) = run_on_fixture(&receiver, &[], 4);
    receiver.assert_all_valid();
    let requests = receiver.requests();
    assert!(!requests[0].accepted && !requests[1].accepted && requests[2].accepted);
    assert!(
        gap(&requests[1], &requests[2]) >= Duration::from_millis(1900),
        "the retry after a 429 with Retry-After: 2 came after {:?}",
        gap(&requests[1], &requests[2])
    );
    // The refused request and its retry are the same window.
    let first = resolve(requests[0].request.as_ref().expect("decoded"));
    let third = resolve(requests[2].request.as_ref().expect("decoded"));
    assert_eq!(first[0].time_unix_nano, third[0].time_unix_nano);
    assert_exact_accounting(&exit, &fixture_windows(&receiver), 0);
}

/// A 400 and a 500 are final under OTLP: logged with the server's message,
/// counted, and the window dropped, never sent again.
#[test]
fn otlp_http_drops_what_otlp_calls_final_and_says_why() {
    let receiver = OtlpReceiver::start(
        Transport::Http,
        vec![
            OtlpReply::Http {
                status: 400,
                retry_after: None,
                message: "dictionary index out of range".into(),
            },
            OtlpReply::Http {
                status: 500,
                retry_after: None,
                message: "internal trouble".into(),
            },
        ],
    );
    let fixture = Fixture::spawn(FixtureProgram::Chain, 60.0);
    let spool = scratch_dir();
    let mut agent = AgentCommand::new("otlp", &receiver.url(), spool.path())
        .pid(fixture.pid())
        .spawn();
    agent.wait_for_windows(4, WINDOWS_TIMEOUT);
    let failed = agent.scrape().count("taskprof_profiles_failed_total");
    let exit = agent.terminate(EXIT_TIMEOUT);
    exit.assert_success();
    receiver.assert_all_valid();
    let requests = receiver.requests();
    let refused: Vec<_> = requests.iter().filter(|r| !r.accepted).collect();
    assert_eq!(
        refused.len(),
        2,
        "a final refusal was sent again: {} requests",
        requests.len()
    );
    let dropped: i64 = refused
        .iter()
        .map(|r| {
            resolve(r.request.as_ref().expect("decoded"))
                .iter()
                .map(ResolvedResource::count)
                .sum::<i64>()
        })
        .sum();
    assert!(failed >= 2, "taskprof_profiles_failed_total is {failed}");
    let stderr = exit.stderr();
    for message in ["dictionary index out of range", "internal trouble"] {
        assert!(
            stderr.contains(message),
            "the server's `{message}` was not logged:\n{stderr}"
        );
    }
    let accepted = fixture_windows(&receiver);
    assert_exact_accounting(&exit, &accepted, dropped);
}

/// A partial success is delivered (not retried), and what it refused is
/// counted and logged with the server's message.
#[test]
fn otlp_partial_success_is_counted_and_logged_not_retried() {
    let receiver = OtlpReceiver::start(
        Transport::Grpc,
        vec![OtlpReply::Partial {
            rejected: 1,
            message: "profile too old".into(),
        }],
    );
    let fixture = Fixture::spawn(FixtureProgram::Chain, 60.0);
    let spool = scratch_dir();
    let mut agent = AgentCommand::new("otlp-grpc", &receiver.url(), spool.path())
        .pid(fixture.pid())
        .spawn();
    agent.wait_for_windows(3, WINDOWS_TIMEOUT);
    let metrics = agent.scrape();
    let exit = agent.terminate(EXIT_TIMEOUT);
    exit.assert_success();
    assert_eq!(metrics.count("taskprof_otlp_profiles_rejected_total"), 1);
    assert!(exit.stderr().contains("profile too old"), "{}", exit.stderr());
    assert!(receiver.requests().iter().all(|r| r.accepted));
    assert_exact_accounting(&exit, &fixture_windows(&receiver), 0);
}

/// UNAVAILABLE is retried; INVALID_ARGUMENT is final.
#[test]
fn otlp_grpc_retries_unavailable_and_drops_invalid_argument() {
    let receiver = OtlpReceiver::start(
        Transport::Grpc,
        vec![
            OtlpReply::Grpc {
                code: tonic::Code::Unavailable,
                message: "collector restarting".into(),
            },
            OtlpReply::Grpc {
                code: tonic::Code::InvalidArgument,
                message: "bad sample".into(),
            },
        ],
    );
    let (_fixture, exit) = run_on_fixture(&receiver, &[], 4);
    receiver.assert_all_valid();
    let requests = receiver.requests();
    let window_of = |i: usize| resolve(requests[i].request.as_ref().expect("decoded"))[0].time_unix_nano;
    assert_eq!(
        window_of(0),
        window_of(1),
        "UNAVAILABLE was not retried with the same window"
    );
    assert_ne!(window_of(1), window_of(2), "INVALID_ARGUMENT was sent again");
    let dropped: i64 = resolve(requests[1].request.as_ref().expect("decoded"))
        .iter()
        .map(ResolvedResource::count)
        .sum();
    assert!(exit.stderr().contains("bad sample"), "{}", exit.stderr());
    assert_exact_accounting(&exit, &fixture_windows(&receiver), dropped);
}

fn wait_for_spool(agent: &mut RunningAgent, windows: u64) {
    let last = std::cell::Cell::new(0);
    wait_until(
        "windows in the spool",
        WINDOWS_TIMEOUT,
        || {
            last.set(agent.scrape().count("taskprof_spool_windows"));
            last.get() >= windows
        },
        || format!("the spool holds {} windows", last.get()),
    );
}

/// No receiver for a while: windows go to the spool (with their
/// dictionaries), then all arrive, oldest first, once the receiver is up.
#[test]
fn an_otlp_outage_spools_and_replays_in_order() {
    let port = free_port();
    let fixture = Fixture::spawn(FixtureProgram::Chain, 90.0);
    let spool = scratch_dir();
    let mut agent = AgentCommand::new("otlp", &format!("http://127.0.0.1:{port}"), spool.path())
        .pid(fixture.pid())
        .args(["--label", "team=profiling"])
        .spawn();
    wait_for_spool(&mut agent, 2);
    let receiver = OtlpReceiver::start_on(Transport::Http, port, Vec::new());
    wait_until(
        "the spool to drain",
        Duration::from_secs(90),
        || receiver.accepted().len() >= 4 && agent.scrape().count("taskprof_spool_windows") == 0,
        || format!("{} requests accepted", receiver.accepted().len()),
    );
    let exit = agent.terminate(EXIT_TIMEOUT);
    exit.assert_success();
    receiver.assert_all_valid();
    let windows = fixture_windows(&receiver);
    for window in &windows {
        assert_fixture_resource(&window[0], &fixture);
    }
    assert_exact_accounting(&exit, &windows, 0);
}

/// The OTLP variant's `agent.yaml` starts the agent, which reaches an OTLP
/// receiver with the resource attributes it configures.
#[test]
fn the_shipped_otlp_settings_reach_an_otlp_receiver() {
    let manifest = crate::agent_capabilities::OTLP_CONFIGMAP;
    let text = crate::agent_capabilities::agent_settings(manifest);
    let dir = scratch_dir();
    let fixture = Fixture::spawn(FixtureProgram::Chain, 30.0);
    let receiver = OtlpReceiver::start(Transport::Http, Vec::new());
    let agent = crate::agent_capabilities::start_with_shipped_settings(manifest, &receiver.url(), &fixture, dir.path());
    wait_until(
        "an OTLP request",
        WINDOWS_TIMEOUT,
        || !receiver.accepted().is_empty(),
        || format!("{:?}", receiver.requests()),
    );
    agent.terminate(EXIT_TIMEOUT).assert_success();
    receiver.assert_all_valid();
    let settings: serde_yaml::Value = serde_yaml::from_str(&text).expect("agent.yaml is YAML");
    let resource = &resolve(&receiver.accepted()[0])[0];
    for (name, value) in settings["labels"].as_mapping().expect("agent.yaml sets labels") {
        let (name, value) = (name.as_str().expect("a name"), value.as_str().expect("a value"));
        assert_eq!(
            resource.attributes.get(name).map(String::as_str),
            Some(value),
            "{name} of {manifest}"
        );
    }
    assert!(
        receiver
            .requests()
            .iter()
            .all(|r| r.headers.get("content-encoding").map(String::as_str) == Some("gzip")),
        "{manifest} asks for gzip"
    );
}

/// A process in a pod's container: its resource names the pod, the
/// container, the node and the workload as OTel's Kubernetes conventions do.
#[test]
fn otlp_resources_carry_the_kubernetes_attributes() {
    const UID: &str = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    const CONTAINER: &str = "9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c";
    let (_runtime, api) = FakeApi::start_on_own_runtime();
    api.set_list("100", vec![storefront_pod("web-5c7f9b8d6-abcde", UID, CONTAINER)]);

    let fixture = Fixture::spawn(FixtureProgram::Chain, 60.0);
    let dir = scratch_dir();
    let cgroups = dir.path().join("proc");
    place_in_container(&cgroups, fixture.pid(), UID, CONTAINER);
    let token = dir.path().join("token");
    std::fs::write(&token, "test-token\n").expect("write the token");
    let receiver = OtlpReceiver::start(Transport::Http, Vec::new());
    let mut agent = AgentCommand::new("otlp", &receiver.url(), &dir.path().join("spool"))
        .pid(fixture.pid())
        .args(["--kubernetes", "--kubernetes-api-url", &format!("http://{}", api.addr)])
        .args(["--kubernetes-token-file", path_arg(&token)])
        .args(["--cgroup-proc-root", path_arg(&cgroups)])
        .spawn();
    agent.wait_until_sampling();
    let in_pod = |r: &ResolvedResource| r.attributes.contains_key("k8s.pod.name");
    wait_until(
        "a resource with pod attributes",
        WINDOWS_TIMEOUT,
        || fixture_windows(&receiver).iter().flatten().any(in_pod),
        || format!("{:#?}", fixture_windows(&receiver)),
    );
    agent.terminate(EXIT_TIMEOUT).assert_success();
    receiver.assert_all_valid();
    let windows = fixture_windows(&receiver);
    let resource = windows.iter().flatten().find(|r| in_pod(r)).expect("found above");
    let pid = fixture.pid().to_string();
    for (key, expected) in [
        ("service.name", "storefront"),
        ("process.pid", pid.as_str()),
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "web-5c7f9b8d6-abcde"),
        ("k8s.pod.uid", UID),
        ("k8s.container.name", "app"),
        ("container.id", CONTAINER),
        ("k8s.node.name", TEST_NODE),
        ("host.name", TEST_NODE),
        ("k8s.deployment.name", "web"),
    ] {
        assert_eq!(
            resource.attributes.get(key).map(String::as_str),
            Some(expected),
            "attribute `{key}` of {:?}",
            resource.attributes
        );
    }
    let keys: BTreeSet<&str> = resource.attributes.keys().map(String::as_str).collect();
    assert!(!keys.contains("comm") && !keys.contains("workload_kind"), "{keys:?}");
    assert!(resource.samples.iter().any(|s| contains_in_order(&s.functions, &CHAIN)));
}
