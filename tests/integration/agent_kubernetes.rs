//! `taskprof agent --kubernetes` against a fake API server: profiles of a
//! process whose cgroup names a pod's container carry that pod's labels;
//! without the API server, profiling goes on with the container id alone
//! and the metadata fills in when the server comes back; namespace filters
//! drop what they exclude, and account for it; watch events (added,
//! modified, deleted) and a 410 Gone relist reach the profiles' labels.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::agent_run::{wait_until, AgentCommand, TEST_NODE};
use crate::common::fake_kube::{event, pod, send_split, FakeApi};
use crate::common::receivers::{Ingest, Receiver};
use crate::common::{scratch_dir, Fixture, FixtureProgram};
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const CONTAINER_ID: &str = "3f1c2d9a8b7e6f5a4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a2918f7e6d5c";
const POD_UID: &str = "5f2a9b1c-3d4e-4f60-8a7b-9c0d1e2f3a4b";
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(40);

/// The fixture's pod, as the API server lists it.
fn pod_json() -> serde_json::Value {
    serde_json::json!({
        "metadata": {
            "name": "web-7d9f8c6b5d-x2k4q",
            "namespace": "shop",
            "uid": POD_UID,
            "resourceVersion": "101",
            "labels": {"app.kubernetes.io/name": "storefront", "pod-template-hash": "7d9f8c6b5d", "tier": "front"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c6b5d", "controller": true, "uid": "x"}]
        },
        "spec": {"nodeName": TEST_NODE, "containers": [{"name": "app"}]},
        "status": {"containerStatuses": [{"name": "app", "containerID": format!("containerd://{CONTAINER_ID}")}]}
    })
}

#[derive(Clone, Default)]
struct ApiState {
    requests: Arc<Mutex<Vec<String>>>,
}

#[derive(serde::Deserialize)]
struct PodQuery {
    watch: Option<String>,
    #[serde(rename = "fieldSelector")]
    field_selector: Option<String>,
}

async fn pods(State(state): State<ApiState>, Query(query): Query<PodQuery>) -> impl IntoResponse {
    let selector = query.field_selector.unwrap_or_default();
    state
        .requests
        .lock()
        .unwrap()
        .push(format!("watch={:?} fieldSelector={selector}", query.watch));
    if selector != format!("spec.nodeName={TEST_NODE}") {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            "expected the node's field selector".to_string(),
        );
    }
    if query.watch.is_some() {
        // Hold the watch open briefly with no events; the agent reconnects.
        tokio::time::sleep(Duration::from_secs(2)).await;
        return (axum::http::StatusCode::OK, String::new());
    }
    let list = serde_json::json!({"kind": "PodList", "metadata": {"resourceVersion": "101"}, "items": [pod_json()]});
    (axum::http::StatusCode::OK, list.to_string())
}

/// A fake API server on `port` (0 for any), serving `/api/v1/pods` until dropped.
struct FakeApiServer {
    addr: SocketAddr,
    state: ApiState,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeApiServer {
    fn start(port: u16) -> FakeApiServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = ApiState::default();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .unwrap_or_else(|err| panic!("failed to bind the fake API server to port {port}: {err}"));
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/api/v1/pods", get(pods)).with_state(state.clone());
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeApiServer {
            addr,
            state,
            runtime: Some(runtime),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn list_requests(&self) -> usize {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with("watch=None"))
            .count()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A proc-like directory whose `PID/cgroup` puts `pid` in the pod's container
/// (systemd driver, containerd), as a kubelet would.
fn fake_cgroup_root(dir: &Path, pid: u32) {
    let uid = POD_UID.replace('-', "_");
    let line = format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{CONTAINER_ID}.scope\n"
    );
    std::fs::create_dir_all(dir.join(pid.to_string())).unwrap();
    std::fs::write(dir.join(pid.to_string()).join("cgroup"), line).unwrap();
}

fn kubernetes_agent(receiver: &Receiver, api_url: &str, fixture: &Fixture, dir: &Path) -> AgentCommand {
    let token = dir.join("token");
    std::fs::write(&token, "test-token\n").unwrap();
    let cgroups = dir.join("proc");
    fake_cgroup_root(&cgroups, fixture.pid());
    AgentCommand::new("pyroscope", &receiver.url(), &dir.join("spool"))
        .pid(fixture.pid())
        .args([
            "--kubernetes".to_string(),
            "--kubernetes-api-url".to_string(),
            api_url.to_string(),
            "--kubernetes-token-file".to_string(),
            token.display().to_string(),
            "--cgroup-proc-root".to_string(),
            cgroups.display().to_string(),
        ])
}

fn has_pod_labels(ingest: &Ingest) -> bool {
    ingest.labels.get("namespace").map(String::as_str) == Some("shop")
}

#[test]
fn profiles_carry_their_pods_labels() {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 60.0);
    let dir = scratch_dir();
    let api = FakeApiServer::start(0);
    let receiver = Receiver::accepting();
    let mut agent = kubernetes_agent(&receiver, &api.url(), &fixture, dir.path()).spawn();
    agent.wait_until_sampling();
    wait_until(
        "a profile with pod labels",
        WAIT,
        || receiver.ingests().iter().any(has_pod_labels),
        || {
            format!(
                "received: {:?}",
                receiver.ingests().iter().map(|i| &i.labels).collect::<Vec<_>>()
            )
        },
    );
    agent.terminate(EXIT_TIMEOUT).assert_success();
    receiver.assert_all_valid();
    let ingest = receiver.ingests().into_iter().find(has_pod_labels).unwrap();
    for (name, expected) in [
        ("service_name", "storefront"),
        ("namespace", "shop"),
        ("pod", "web-7d9f8c6b5d-x2k4q"),
        ("container", "app"),
        ("container_id", CONTAINER_ID),
        ("node", TEST_NODE),
        ("workload_kind", "Deployment"),
        ("workload", "web"),
    ] {
        assert_eq!(ingest.label(name), expected, "label `{name}` of {:?}", ingest.labels);
    }
    assert!(api.list_requests() >= 1, "the agent never listed pods");
}

#[test]
fn metadata_fills_in_when_the_api_server_comes_back() {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 60.0);
    let dir = scratch_dir();
    // Reserve a port, then leave it closed: the API server is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let receiver = Receiver::accepting();
    let mut agent = kubernetes_agent(&receiver, &format!("http://127.0.0.1:{port}"), &fixture, dir.path()).spawn();
    agent.wait_until_sampling();
    wait_until(
        "a profile while the API server is down",
        WAIT,
        || !receiver.ingests().is_empty(),
        || "nothing uploaded".to_string(),
    );
    let early = receiver.ingests();
    assert!(
        early
            .iter()
            .all(|i| !has_pod_labels(i) && i.label("container_id") == CONTAINER_ID),
        "without the API server, profiles keep their container id only: {:?}",
        early.iter().map(|i| &i.labels).collect::<Vec<_>>()
    );
    let page = agent.scrape();
    assert!(
        page.count("taskprof_kubernetes_metadata_missing_total") > 0,
        "missing metadata is not counted"
    );

    let _api = FakeApiServer::start(port);
    wait_until(
        "pod labels after the API server came back",
        Duration::from_secs(60),
        || receiver.ingests().iter().any(has_pod_labels),
        || format!("received {} profiles, none with pod labels", receiver.ingests().len()),
    );
    agent.terminate(EXIT_TIMEOUT).assert_success();
}

#[test]
fn excluded_namespaces_are_not_profiled_and_are_accounted() {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 60.0);
    let dir = scratch_dir();
    let api = FakeApiServer::start(0);
    let receiver = Receiver::accepting();
    let mut agent = kubernetes_agent(&receiver, &api.url(), &fixture, dir.path())
        .args(["--exclude-namespace", "shop"])
        .spawn();
    agent.wait_until_sampling();
    // Wait for the pod list, then for a few windows after it.
    wait_until(
        "a pod list",
        WAIT,
        || api.list_requests() >= 1,
        || "no list request".to_string(),
    );
    agent.wait_for_windows(4, WAIT);
    let exit = agent.terminate(EXIT_TIMEOUT);
    exit.assert_success();
    let labelled: Vec<_> = receiver.ingests().into_iter().filter(has_pod_labels).collect();
    assert!(
        labelled.is_empty(),
        "profiles of an excluded namespace arrived: {:?}",
        labelled[0].labels
    );
    let stopped = exit
        .stderr()
        .lines()
        .filter(|l| l.contains("\"stopped\""))
        .map(crate::common::agent_run::LogLine::parse)
        .next()
        .expect("a `stopped` line");
    assert!(
        stopped.u64_field("filtered") > 0,
        "filtered samples are not accounted: {stopped:?}"
    );
}

#[test]
fn watch_events_and_a_410_relist_reach_the_profiles() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let version = |version: &str, name: &str| {
        let mut pod = pod(
            "web",
            POD_UID,
            version,
            &[(CONTAINER_ID, "app")],
            serde_json::json!({ "app.kubernetes.io/name": name }),
        );
        // Scheduled on the agent's node.
        pod["spec"]["nodeName"] = serde_json::json!(TEST_NODE);
        pod
    };
    let api = runtime.block_on(FakeApi::start());
    api.set_list("100", vec![version("100", "storefront-v1")]);
    // The first watch streams events; when it ends, the next watch gets
    // 410 Gone, and after the relist a second stream opens.
    let first_watch = api.watch_stream();
    api.watch_gone();
    let second_watch = api.watch_stream();

    let fixture = Fixture::spawn(FixtureProgram::Chain, 60.0);
    let dir = scratch_dir();
    let receiver = Receiver::accepting();
    let mut agent = kubernetes_agent(&receiver, &format!("http://{}", api.addr), &fixture, dir.path()).spawn();
    agent.wait_until_sampling();
    let service_is = |name: &'static str| {
        let receiver = &receiver;
        move || receiver.ingests().iter().any(|i| i.label("service_name") == name)
    };
    let labels_seen = || {
        let names: std::collections::BTreeSet<String> = receiver
            .ingests()
            .iter()
            .map(|i| i.label("service_name").to_string())
            .collect();
        format!("service names so far: {names:?}; API requests: {:?}", api.requests())
    };
    wait_until(
        "the listed pod's labels",
        WAIT,
        service_is("storefront-v1"),
        labels_seen,
    );
    let listed = receiver
        .ingests()
        .into_iter()
        .find(|i| i.label("service_name") == "storefront-v1")
        .unwrap();
    for (name, expected) in [
        ("namespace", "shop"),
        ("pod", "web"),
        ("container", "app"),
        ("workload", "web"),
    ] {
        assert_eq!(listed.label(name), expected, "label `{name}` of {:?}", listed.labels);
    }

    runtime.block_on(send_split(
        &first_watch,
        &event("MODIFIED", version("101", "storefront-v2")),
        &[33],
    ));
    wait_until(
        "the MODIFIED pod's labels",
        WAIT,
        service_is("storefront-v2"),
        labels_seen,
    );

    // The pod is deleted and created again: DELETED then ADDED.
    runtime.block_on(send_split(
        &first_watch,
        &event("DELETED", version("102", "storefront-v2")),
        &[9],
    ));
    runtime.block_on(send_split(
        &first_watch,
        &event("ADDED", version("103", "storefront-v3")),
        &[7, 60],
    ));
    wait_until("the ADDED pod's labels", WAIT, service_is("storefront-v3"), labels_seen);

    // The stream ends; the next watch answers 410 Gone; the agent relists
    // and finds the pod as the list now has it.
    api.set_list("200", vec![version("200", "storefront-v4")]);
    let lists_before = api.lists().len();
    drop(first_watch);
    wait_until(
        "a profile labelled after the relist",
        WAIT,
        service_is("storefront-v4"),
        labels_seen,
    );
    assert!(api.lists().len() > lists_before, "the 410 did not force a relist");

    agent.terminate(EXIT_TIMEOUT).assert_success();
    receiver.assert_all_valid();
    drop(second_watch);
}
