//! Series identity: what the agent names a series by, under process churn
//! and in Kubernetes. A backend keeps every label set it is sent, so the
//! agent must send label sets bounded by services, pods and executables,
//! never one per process, while each sample still says which process it
//! came from. `--series-per-process` opts back into one series per pid.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::agent_run::{assert_no_sample_lost, wait_until, AgentCommand, AgentExit, TEST_NODE};
use crate::common::fake_kube::{place_in_container, storefront_pod, FakeApi};
use crate::common::receivers::{Ingest, Receiver};
use crate::common::{scratch_dir, Fixture, FixtureProgram, ProfileView};

const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(60);
/// How long the churn goes on.
const CHURN: Duration = Duration::from_secs(6);
/// Processes started per second during the churn.
const CHURN_RATE: u32 = 20;

type LabelSet = BTreeMap<String, String>;

/// The `process_name` sample labels of a profile.
fn process_names(ingest: &Ingest) -> BTreeSet<String> {
    let view = ProfileView::new(&ingest.profile);
    ingest
        .profile
        .sample
        .iter()
        .filter_map(|s| view.label_str(s, "process_name"))
        .map(str::to_string)
        .collect()
}

/// Starts `CHURN_RATE` short-lived Chain processes a second (each burns
/// about 20 ms of CPU, so most are sampled) for `CHURN`, and returns their
/// pids once all have exited.
fn churn() -> BTreeSet<u32> {
    let chain = FixtureProgram::Chain.executable();
    let period = Duration::from_secs(1) / CHURN_RATE;
    let start = Instant::now();
    let mut children: Vec<Child> = Vec::new();
    let mut next = start;
    while start.elapsed() < CHURN {
        let child = Command::new(&chain)
            .arg("0.02")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("failed to start `{}`: {err}", chain.display()));
        children.push(child);
        next += period;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    children
        .into_iter()
        .map(|mut child| {
            let status = child.wait().expect("wait for a churned process");
            assert!(status.success(), "a churned process failed: {status}");
            child.id()
        })
        .collect()
}

/// A whole-host agent at 99 Hz with 1 s windows while the churn runs, then
/// one more window; returns what the receiver got and the churned pids.
fn churn_run(flags: &[&str]) -> (AgentExit, Vec<Ingest>, BTreeSet<u32>) {
    let receiver = Receiver::accepting();
    let spool = scratch_dir();
    let mut agent = AgentCommand::new("pyroscope", &receiver.url(), spool.path())
        .args(flags)
        .spawn();
    agent.wait_until_sampling();
    let churned = churn();
    let closed = agent.windows().len();
    agent.wait_for_windows(closed + 1, WAIT);
    let page = agent.scrape();
    assert!(
        page.value("taskprof_series_per_window") >= 1.0,
        "taskprof_series_per_window is not set:\n{}",
        page.text
    );
    let exit = agent.terminate(EXIT_TIMEOUT);
    exit.assert_success();
    receiver.assert_all_valid();
    (exit, receiver.ingests(), churned)
}

/// Under churn, the Chain processes share one series however many come and
/// go; every series is an executable (or `kernel`), never a pid; the
/// samples say which process they came from; and nothing is lost.
#[test]
fn churning_processes_share_one_series_per_executable() {
    let (exit, ingests, churned) = churn_run(&[]);
    assert_no_sample_lost(&exit, &ingests, 0);

    for ingest in &ingests {
        assert!(
            !ingest.labels.contains_key("pid"),
            "a pid series label: {:?}",
            ingest.labels
        );
    }
    let series: BTreeSet<&LabelSet> = ingests.iter().map(|i| &i.labels).collect();
    let chain: Vec<&Ingest> = ingests.iter().filter(|i| i.label("service_name") == "chain").collect();
    let chain_series: BTreeSet<&LabelSet> = chain.iter().map(|i| &i.labels).collect();
    let chain_pids: BTreeSet<u32> = chain.iter().flat_map(|i| i.sample_pids()).collect();
    let sampled: BTreeSet<u32> = chain_pids.intersection(&churned).copied().collect();
    assert_eq!(
        chain_series.len(),
        1,
        "the Chain processes are one series: {chain_series:?}"
    );
    // Each churned process lives 20 ms: on a loaded machine most are
    // never sampled, but many must be, all in the one series.
    assert!(
        sampled.len() >= 10.min(churned.len()),
        "only {} of {} churned processes are in the Chain series' samples",
        sampled.len(),
        churned.len()
    );
    for ingest in &chain {
        assert_eq!(ingest.label("comm"), "chain");
        assert_eq!(ingest.label("node"), TEST_NODE);
        assert_eq!(process_names(ingest), ["chain".to_string()].into());
    }

    // Bounded by executables: one series per process name at most (kernel
    // threads all under `kernel`), far fewer than the processes sampled.
    let names: BTreeSet<String> = ingests.iter().flat_map(process_names).collect();
    let pids: BTreeSet<u32> = ingests.iter().flat_map(|i| i.sample_pids()).collect();
    assert!(
        series.len() <= names.len() + 1,
        "{} series for {} process names: {series:?}",
        series.len(),
        names.len()
    );
    assert!(
        series.len() < pids.len(),
        "{} series for {} processes",
        series.len(),
        pids.len()
    );
    let services: BTreeSet<&str> = ingests.iter().map(|i| i.label("service_name")).collect();
    assert!(
        !services
            .iter()
            .any(|s| s.starts_with("kworker") || s.starts_with("ksoftirqd")),
        "kernel threads named their own series: {services:?}"
    );
    let merged: u64 = exit.windows().iter().map(|w| w.processes - w.profiles).sum();
    assert!(
        merged > 0,
        "no window merged processes into a series: {:?}",
        exit.windows()
    );
    let windows = exit.windows();
    eprintln!(
        "series: {} label sets over {} windows for {} processes ({} churned)",
        series.len(),
        windows.len(),
        pids.len(),
        churned.len()
    );
}

/// `--series-per-process` keeps the old identity: a `pid` series label, so
/// every churned process that was sampled is a series of its own.
#[test]
fn series_per_process_gives_each_churned_process_its_own_series() {
    let (exit, ingests, churned) = churn_run(&["--series-per-process"]);
    assert_no_sample_lost(&exit, &ingests, 0);
    let chain: Vec<&Ingest> = ingests.iter().filter(|i| i.label("service_name") == "chain").collect();
    let chain_series: BTreeSet<&LabelSet> = chain.iter().map(|i| &i.labels).collect();
    let labelled: BTreeSet<u32> = chain
        .iter()
        .map(|i| i.label("pid").parse().expect("a numeric pid label"))
        .collect();
    assert_eq!(
        chain_series.len(),
        labelled.len(),
        "one Chain series per pid: {chain_series:?}"
    );
    assert!(
        labelled.intersection(&churned).count() >= churned.len() / 4,
        "only {} of {} churned processes have a series",
        labelled.intersection(&churned).count(),
        churned.len()
    );
}

const DEPLOYMENT_PODS: [(&str, &str, &str); 2] = [
    (
        "web-5c7f9b8d6-a1b2c",
        "0d1c2b3a-4f5e-4a7b-8c9d-0e1f2a3b4c5d",
        "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1",
    ),
    (
        "web-5c7f9b8d6-d4e5f",
        "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b",
        "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2",
    ),
];

/// Two pods of one Deployment, three processes each (two executables):
/// one series per pod, whose samples hold that pod's processes.
#[test]
fn each_pod_of_a_deployment_is_one_series_whatever_its_processes() {
    let (_runtime, api) = FakeApi::start_on_own_runtime();
    let pods: Vec<serde_json::Value> = DEPLOYMENT_PODS
        .iter()
        .map(|(name, uid, container_id)| storefront_pod(name, uid, container_id))
        .collect();
    api.set_list("100", pods);

    let dir = scratch_dir();
    let cgroups = dir.path().join("proc");
    let token = dir.path().join("token");
    std::fs::write(&token, "test-token\n").expect("write the token");
    let mut fixtures: Vec<(usize, Fixture)> = Vec::new();
    for (index, (_, uid, container_id)) in DEPLOYMENT_PODS.iter().enumerate() {
        for program in [FixtureProgram::Chain, FixtureProgram::Chain, FixtureProgram::Syscalls] {
            let fixture = Fixture::spawn(program, 60.0);
            place_in_container(&cgroups, fixture.pid(), uid, container_id);
            fixtures.push((index, fixture));
        }
    }
    let receiver = Receiver::accepting();
    let mut command = AgentCommand::new("pyroscope", &receiver.url(), &dir.path().join("spool")).args([
        "--kubernetes".to_string(),
        "--kubernetes-api-url".to_string(),
        format!("http://{}", api.addr),
        "--kubernetes-token-file".to_string(),
        token.display().to_string(),
        "--cgroup-proc-root".to_string(),
        cgroups.display().to_string(),
    ]);
    for (_, fixture) in &fixtures {
        command = command.pid(fixture.pid());
    }
    let mut agent = command.spawn();
    agent.wait_until_sampling();
    let with_pod = |i: &Ingest| i.labels.contains_key("pod");
    wait_until(
        "profiles of both pods",
        WAIT,
        || {
            let pods: BTreeSet<String> = receiver
                .ingests()
                .iter()
                .filter(|i| with_pod(i))
                .map(|i| i.label("pod").to_string())
                .collect();
            pods.len() == 2
        },
        || {
            format!(
                "received: {:?}",
                receiver.ingests().iter().map(|i| &i.labels).collect::<Vec<_>>()
            )
        },
    );
    let closed = agent.windows().len();
    agent.wait_for_windows(closed + 3, WAIT);
    let exit = agent.terminate(EXIT_TIMEOUT);
    exit.assert_success();
    receiver.assert_all_valid();
    let ingests = receiver.ingests();
    assert_no_sample_lost(&exit, &ingests, 0);

    let labelled: Vec<&Ingest> = ingests.iter().filter(|i| with_pod(i)).collect();
    let series: BTreeSet<&LabelSet> = labelled.iter().map(|i| &i.labels).collect();
    assert_eq!(series.len(), 2, "one series per pod: {series:?}");
    for (index, (name, _, container_id)) in DEPLOYMENT_PODS.iter().enumerate() {
        let of_pod: Vec<&&Ingest> = labelled.iter().filter(|i| i.label("pod") == *name).collect();
        for ingest in &of_pod {
            for (label, expected) in [
                ("service_name", "storefront"),
                ("namespace", "shop"),
                ("container", "app"),
                ("container_id", container_id),
                ("workload", "web"),
                ("node", TEST_NODE),
            ] {
                assert_eq!(ingest.label(label), expected, "label `{label}` of {:?}", ingest.labels);
            }
            assert!(!ingest.labels.contains_key("comm"), "{:?}", ingest.labels);
            assert!(!ingest.labels.contains_key("pid"), "{:?}", ingest.labels);
        }
        let expected: BTreeSet<u32> = fixtures
            .iter()
            .filter(|(pod, _)| *pod == index)
            .map(|(_, f)| f.pid())
            .collect();
        let seen: BTreeSet<u32> = of_pod.iter().flat_map(|i| i.sample_pids()).collect();
        assert_eq!(seen, expected, "the processes in pod {name}'s samples");
        // A window holds each pod once, however many processes it ran.
        let mut per_window: BTreeMap<i64, usize> = BTreeMap::new();
        for ingest in &of_pod {
            *per_window.entry(ingest.profile.time_nanos).or_default() += 1;
        }
        assert!(
            per_window.values().all(|&n| n == 1),
            "pod {name} had several profiles in a window: {per_window:?}"
        );
        let names: BTreeSet<String> = of_pod.iter().flat_map(|i| process_names(i)).collect();
        assert_eq!(names, ["chain".to_string(), "syscalls".to_string()].into());
    }
}
