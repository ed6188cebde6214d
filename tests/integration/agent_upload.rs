//! `taskprof agent` against healthy backends: every window arrives once,
//! labelled, with the fixture's stacks in it; no sample goes missing
//! between BPF and the backend; credentials reach the backend and never
//! the logs; the file protocol writes sound profiles; and the metrics
//! endpoint tells the same story as the backend.

use crate::common::ChildGuard;
use std::collections::BTreeMap;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::common::agent_run::{
    assert_each_window_delivered_once, assert_no_sample_lost, assert_windows_in_order, http_get, start_on_pid,
    AgentCommand, AgentExit, MetricsPage, TEST_NODE,
};
use crate::common::receivers::{replies, Api, Ingest, Receiver, Reply};
use crate::common::{read_pprof, scratch_dir, Fixture, FixtureProgram, ProfileView};
use taskprof::pprof::check_profile;
use taskprof::pprof::proto::Profile;

/// How long an agent may take to exit after SIGTERM: the 5 s grace and
/// some slack.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a handful of 1 s windows may take on a busy machine.
const WINDOWS_TIMEOUT: Duration = Duration::from_secs(40);

/// Panics unless `profile` holds the fixture's `main -> outer -> middle ->
/// hot` stack.
fn assert_has_hot_stack(profile: &Profile, context: &str) {
    let view = ProfileView::new(profile);
    let stacks = view.stacks_where(|_| true);
    assert!(
        stacks
            .iter()
            .any(|s| s.contains_in_order(&["main", "outer", "middle", "hot"])),
        "{context}: no main -> outer -> middle -> hot stack in:\n{}",
        crate::common::describe_stacks(&stacks)
    );
}

/// Runs an agent on the Chain fixture with `protocol` until `windows`
/// windows closed, then stops it with SIGTERM.
fn run_on_fixture(protocol: &str, receiver: &Receiver, flags: &[(&str, &str)], windows: usize) -> (Fixture, AgentExit) {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 60.0);
    let spool = scratch_dir();
    let mut agent = start_on_pid(protocol, &receiver.url(), spool.path(), fixture.pid(), flags);
    agent.wait_for_windows(windows, WINDOWS_TIMEOUT);
    let exit = agent.terminate(EXIT_TIMEOUT);
    exit.assert_success();
    (fixture, exit)
}

/// The labels every profile of the fixture must carry, whatever the
/// protocol: bounded series labels, and the pid on the samples.
fn assert_fixture_labels(ingest: &Ingest, fixture: &Fixture) {
    for (name, expected) in [
        ("service_name", fixture.comm()),
        ("comm", fixture.comm()),
        ("node", TEST_NODE),
        ("team", "profiling"),
    ] {
        assert_eq!(ingest.label(name), expected, "label `{name}` of {:?}", ingest.labels);
    }
    assert!(
        !ingest.labels.contains_key("pid"),
        "a pid series label: {:?}",
        ingest.labels
    );
    assert_eq!(ingest.sample_pids(), [fixture.pid()].into());
}

/// Runs the fixture for four windows through `protocol` and checks what any
/// backend must see: only valid requests, each window once and in order, at
/// least four profiles, each from `api` with the fixture's labels and hot
/// stack, and no sample lost. Returns them for the protocol's own checks.
fn delivered_fixture_profiles(protocol: &str, api: Api) -> (Receiver, Vec<Ingest>) {
    let receiver = Receiver::accepting();
    let (fixture, exit) = run_on_fixture(protocol, &receiver, &[("--label", "team=profiling")], 4);
    receiver.assert_all_valid();
    let ingests = receiver.ingests();
    assert_each_window_delivered_once(&exit, &ingests);
    assert_windows_in_order(&ingests);
    assert!(ingests.len() >= 4, "only {} profiles arrived", ingests.len());
    for ingest in &ingests {
        assert_eq!(ingest.api, api);
        assert_fixture_labels(ingest, &fixture);
        assert_has_hot_stack(&ingest.profile, &format!("a {protocol} upload"));
    }
    assert_no_sample_lost(&exit, &ingests, 0);
    (receiver, ingests)
}

#[test]
fn pyroscope_receives_every_window_labelled_with_the_fixture_stacks() {
    let (_receiver, ingests) = delivered_fixture_profiles("pyroscope", Api::Pyroscope);
    for ingest in &ingests {
        // Pyroscope files the profile as process_cpu because of this.
        let view = ProfileView::new(&ingest.profile);
        assert!(
            ingest
                .profile
                .sample_type
                .iter()
                .any(|t| view.string(t.r#type).contains("cpu")),
            "no cpu sample type in {:?}",
            ingest.profile.sample_type
        );
        let (from, until) = (ingest.from.expect("from"), ingest.until.expect("until"));
        let start = u64::try_from(ingest.profile.time_nanos).expect("time_nanos") / 1_000_000_000;
        assert!(
            from <= start && start <= until && until - from <= 10,
            "from={from} until={until} do not cover a 1 s window starting at {start}"
        );
    }
}

#[test]
fn parca_receives_every_window_labelled_with_the_fixture_stacks() {
    let (receiver, ingests) = delivered_fixture_profiles("parca", Api::Parca);
    for ingest in &ingests {
        assert_eq!(ingest.label("__name__"), "parca_agent_cpu");
    }
    for request in receiver.requests() {
        assert_eq!(request.path, "/api/profiles/writeraw");
        assert!(
            !request.headers.contains_key("content-encoding"),
            "the JSON gateway cannot undo Content-Encoding"
        );
    }
}

/// The whole host: many processes, kernel threads with names such as
/// `kworker/0:1` among them, each a series Pyroscope must accept.
#[test]
fn whole_host_profiles_are_all_accepted_by_pyroscope() {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 60.0);
    let receiver = Receiver::accepting();
    let spool = scratch_dir();
    let mut agent = AgentCommand::new("pyroscope", &receiver.url(), spool.path())
        .set("--window", "2s")
        .spawn();
    agent.wait_until_sampling();
    agent.wait_for_windows(2, WINDOWS_TIMEOUT);
    let exit = agent.terminate(EXIT_TIMEOUT);
    exit.assert_success();
    receiver.assert_all_valid();
    let ingests = receiver.ingests();
    assert_each_window_delivered_once(&exit, &ingests);
    assert_windows_in_order(&ingests);
    let pids: std::collections::BTreeSet<u32> = ingests.iter().flat_map(Ingest::sample_pids).collect();
    assert!(pids.len() > 1, "a whole-host run saw only processes {pids:?}");
    let pid = fixture.pid();
    let of_fixture: Vec<&Ingest> = ingests.iter().filter(|i| i.sample_pids().contains(&pid)).collect();
    // Kernel threads are one series, not one per `kworker/…`.
    let services: std::collections::BTreeSet<&str> = ingests.iter().map(|i| i.label("service_name")).collect();
    assert!(
        !services.iter().any(|s| s.starts_with("kworker")),
        "kernel threads named their own series: {services:?}"
    );
    assert!(
        !of_fixture.is_empty(),
        "no profile of the fixture (pid {pid}) among {pids:?}"
    );
    for ingest in of_fixture {
        assert_eq!(ingest.label("service_name"), "chain");
        assert_has_hot_stack(&ingest.profile, "the fixture's whole-host profile");
    }
    assert_no_sample_lost(&exit, &ingests, 0);
}

#[test]
fn no_sample_is_lost_between_bpf_and_the_backend() {
    let receiver = Receiver::accepting();
    let (_fixture, exit) = run_on_fixture("pyroscope", &receiver, &[("--frequency", "499")], 5);
    receiver.assert_all_valid();
    let ingests = receiver.ingests();
    assert_each_window_delivered_once(&exit, &ingests);
    assert_no_sample_lost(&exit, &ingests, 0);
}

#[test]
fn credentials_and_headers_reach_pyroscope_and_never_the_logs() {
    const TOKEN: &str = "tok-3f9a-NEVER-LOG-ME-77";
    const TENANT: &str = "tenant1";
    let dir = scratch_dir();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write the token file");
    // One failure first, so the retry path's logging is exercised too.
    let receiver = Receiver::start(replies(vec![Reply::status(500, "backend hiccup")]));
    let token_arg = crate::common::path_arg(&token_file).to_string();
    let (_fixture, exit) = run_on_fixture(
        "pyroscope",
        &receiver,
        &[
            ("--bearer-token-file", &token_arg),
            ("--header", &format!("X-Scope-OrgID:{TENANT}")),
            ("--service-name", "checkout"),
            ("--log-level", "debug"),
        ],
        3,
    );
    receiver.assert_all_valid();
    let requests = receiver.requests();
    assert!(
        requests.len() >= 2,
        "expected a failed and a retried request: {requests:?}"
    );
    for request in &requests {
        assert_eq!(
            request.headers.get("authorization").map(String::as_str),
            Some(format!("Bearer {TOKEN}").as_str()),
            "request to {}",
            request.path
        );
        assert_eq!(request.headers.get("x-scope-orgid").map(String::as_str), Some(TENANT));
    }
    let ingests = receiver.ingests();
    assert!(ingests.iter().all(|i| i.label("service_name") == "checkout"));
    let stderr = exit.stderr();
    assert!(
        !stderr.contains(TOKEN),
        "the bearer token is in the agent's log:\n{stderr}"
    );
    assert!(
        !stderr.contains(TENANT),
        "the X-Scope-OrgID value (header values are secrets) is in the agent's log:\n{stderr}"
    );
}

#[test]
fn file_protocol_writes_sound_profiles_with_their_labels() {
    let out = scratch_dir();
    let spool = scratch_dir();
    let fixture = Fixture::spawn(FixtureProgram::Chain, 60.0);
    let mut agent = AgentCommand::new("file", crate::common::path_arg(out.path()), spool.path())
        .pid(fixture.pid())
        .spawn();
    agent.wait_until_sampling();
    agent.wait_for_windows(3, WINDOWS_TIMEOUT);
    let exit = agent.terminate(EXIT_TIMEOUT);
    exit.assert_success();

    let mut profiles: Vec<std::path::PathBuf> = std::fs::read_dir(out.path())
        .expect("list the output directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".pb.gz"))
        .collect();
    profiles.sort();
    let expected: u64 = exit.windows().iter().map(|w| w.profiles).sum();
    assert_eq!(profiles.len() as u64, expected, "files: {profiles:?}");
    let mut received = 0;
    for path in &profiles {
        let profile = read_pprof(path);
        let problems = check_profile(&profile);
        assert!(problems.is_empty(), "{}: {problems:?}", path.display());
        assert_has_hot_stack(&profile, &path.display().to_string());
        received += crate::common::receivers::sample_count(&profile);

        let labels_path = path.to_string_lossy().replace(".pb.gz", ".labels.json");
        let labels: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&labels_path).unwrap_or_else(|err| panic!("failed to read `{labels_path}`: {err}")),
        )
        .unwrap_or_else(|err| panic!("`{labels_path}` is not JSON: {err}"));
        assert_eq!(labels["labels"]["pid"], serde_json::Value::Null, "{labels}");
        assert_eq!(labels["labels"]["comm"], "chain", "{labels}");
        let view = ProfileView::new(&profile);
        assert!(
            profile.sample.iter().all(|s| view.pid(s) == i64::from(fixture.pid())),
            "{}: samples of other pids",
            path.display()
        );
    }
    let stopped = exit.stopped();
    assert_eq!(
        received + stopped.idle as i64 + stopped.lost as i64,
        stopped.samples as i64,
        "the files hold {received} samples, {} were idle, {} were lost, BPF took {}",
        stopped.idle,
        stopped.lost,
        stopped.samples
    );
    let leftovers: Vec<_> = std::fs::read_dir(out.path())
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
}

/// Scrapes `/metrics` at a moment when the agent is between windows and
/// the backend has everything closed so far, so the two can be compared.
fn settled_metrics(
    agent: &mut crate::common::agent_run::RunningAgent,
    receiver: &Receiver,
) -> (MetricsPage, Vec<crate::common::agent_run::WindowClosed>, Vec<Ingest>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let windows = agent.windows();
        let ingests = receiver.ingests();
        let expected: u64 = windows.iter().map(|w| w.profiles).sum();
        if ingests.len() as u64 == expected {
            let page = agent.scrape();
            let settled = agent.windows().len() == windows.len()
                && receiver.accepted() == ingests.len()
                && page.count("taskprof_profiles_uploaded_total") == expected;
            if settled {
                return (page, windows, ingests);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the metrics never matched the backend: windows {windows:?}, accepted {}, page:\n{}",
            ingests.len(),
            agent.scrape().text
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_endpoint_matches_what_happened() {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 60.0);
    let receiver = Receiver::accepting();
    let spool = scratch_dir();
    let mut agent = AgentCommand::new("pyroscope", &receiver.url(), spool.path())
        .pid(fixture.pid())
        .set("--window", "2s")
        .spawn();
    let addr = agent.wait_until_sampling();
    assert_eq!(http_get(addr, "/healthz").0, 200);
    assert_eq!(http_get(addr, "/readyz").0, 200, "not ready although sampling");

    agent.wait_for_windows(2, WINDOWS_TIMEOUT);
    let (page, windows, ingests) = settled_metrics(&mut agent, &receiver);
    let requests = receiver.requests();
    assert_eq!(page.count("taskprof_windows_total"), windows.len() as u64);
    assert_eq!(page.count("taskprof_profiles_uploaded_total"), ingests.len() as u64);
    let samples: u64 = windows.iter().map(|w| w.samples).sum();
    assert_eq!(page.count("taskprof_samples_total"), samples);
    let received: i64 = ingests.iter().map(Ingest::sample_count).sum();
    assert_eq!(
        page.count("taskprof_samples_total")
            - page.count("taskprof_samples_lost_total")
            - page.samples("taskprof_samples_total")["{kind=\"idle\"}"] as u64,
        received as u64,
        "samples taken minus lost and idle should be what the backend holds"
    );
    assert_eq!(page.count("taskprof_profiles_failed_total"), 0);
    assert_eq!(page.count("taskprof_profiles_retried_total"), 0);
    assert_eq!(page.count("taskprof_spool_windows"), 0);
    assert_eq!(page.count("taskprof_ready"), 1);
    assert_eq!(
        page.count("taskprof_upload_duration_seconds_count"),
        requests.len() as u64,
        "one upload duration per request"
    );
    let by_window: BTreeMap<i64, usize> = ingests.iter().fold(BTreeMap::new(), |mut m, i| {
        *m.entry(i.profile.time_nanos).or_default() += 1;
        m
    });
    assert_eq!(
        by_window.len(),
        windows.len(),
        "one profile per window of the one process"
    );
    assert!(
        ingests.iter().all(|i| i.profile.time_nanos > 0 && UNIX_EPOCH < i.wall),
        "profiles carry their window start"
    );

    let exit = agent.terminate(EXIT_TIMEOUT);
    exit.assert_success();
    assert_no_sample_lost(&exit, &receiver.ingests(), 0);
}

/// Windows must tile time: each begins where the previous one ended. The
/// samples taken while a window is being closed (drained, symbolized,
/// encoded) land in the next window's profile, so if that profile's
/// `time_nanos` starts after the close, its samples fall outside the time
/// it claims to cover, and CPU per second is overstated.
#[test]
fn consecutive_windows_leave_no_gap_in_time() {
    let receiver = Receiver::accepting();
    let (fixture, exit) = run_on_fixture("pyroscope", &receiver, &[], 4);
    receiver.assert_all_valid();
    let windows: Vec<(i64, i64)> = receiver
        .ingests()
        .iter()
        .filter(|i| i.sample_pids().contains(&fixture.pid()))
        .map(|i| (i.profile.time_nanos, i.profile.duration_nanos))
        .collect();
    assert!(
        windows.len() >= 4,
        "only {} windows of the fixture: {:?}",
        windows.len(),
        exit.windows()
    );
    let gaps: Vec<i64> = windows
        .windows(2)
        .map(|pair| pair[1].0 - (pair[0].0 + pair[0].1))
        .collect();
    assert!(
        gaps.iter().all(|gap| gap.abs() <= 1_000_000),
        "gaps between consecutive windows, in ns (a window should start where the last ended): {gaps:?}"
    );
}

/// A process that exits mid-run: its last window still arrives, with its
/// frames symbolized from the mappings captured while it was alive, and the
/// agent carries on.
#[test]
fn a_process_that_exits_mid_run_has_its_last_window_delivered_and_symbolized() {
    let mut fixture = Fixture::spawn(FixtureProgram::ExitsEarly, 2.5);
    let receiver = Receiver::accepting();
    let spool = scratch_dir();
    let mut agent = AgentCommand::new("pyroscope", &receiver.url(), spool.path())
        .pid(fixture.pid())
        .spawn();
    agent.wait_until_sampling();
    fixture.wait_for_exit(Duration::from_secs(30));
    let closed = agent.windows().len();
    agent.wait_for_windows(closed + 2, WINDOWS_TIMEOUT);
    let exit = agent.terminate(EXIT_TIMEOUT);
    exit.assert_success();

    receiver.assert_all_valid();
    let ingests = receiver.ingests();
    assert!(!ingests.is_empty(), "nothing of the exited process arrived");
    assert_each_window_delivered_once(&exit, &ingests);
    for ingest in &ingests {
        assert_eq!(ingest.sample_pids(), [fixture.pid()].into());
        let view = ProfileView::new(&ingest.profile);
        let stacks = view.stacks_where(|_| true);
        assert!(
            stacks
                .iter()
                .any(|s| s.contains_in_order(&["main", "early_main_loop", "early_outer", "early_hot"])),
            "window {} of the exited process lacks its symbolized stack:\n{}",
            ingest.profile.time_nanos,
            crate::common::describe_stacks(&stacks)
        );
    }
    assert_no_sample_lost(&exit, &ingests, 0);
}

/// A shell that burns CPU until told to, then execs the Chain fixture: one
/// pid, two incarnations. Killed on drop.
struct ExecingShell {
    child: ChildGuard,
    trigger: std::path::PathBuf,
}

impl ExecingShell {
    fn spawn(dir: &std::path::Path) -> ExecingShell {
        let trigger = dir.join("exec-now");
        let chain = FixtureProgram::Chain.executable();
        let script = format!(
            "while [ ! -e '{}' ]; do :; done; exec '{}' 60",
            trigger.display(),
            chain.display()
        );
        let child = std::process::Command::new("bash")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("failed to start bash: {err}"));
        ExecingShell {
            child: ChildGuard(child),
            trigger,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exec_now(&self) {
        std::fs::write(&self.trigger, b"").expect("create the trigger file");
    }
}

/// A process that execs mid-window yields two profiles with the same
/// `service_name` in that window (one per incarnation, each its own
/// executable). The file
/// protocol must keep both: naming files `<sequence>-<service>-<pid>` alone
/// makes the second overwrite the first, losing its samples.
#[test]
fn file_protocol_keeps_both_profiles_of_a_process_that_execs_mid_window() {
    let out = scratch_dir();
    let spool = scratch_dir();
    let shell = ExecingShell::spawn(out.path());
    let mut agent = AgentCommand::new("file", crate::common::path_arg(out.path()), spool.path())
        .pid(shell.pid())
        .set_all(&[("--window", "30s"), ("--service-name", "execing")])
        .spawn();
    agent.wait_until_sampling();
    std::thread::sleep(Duration::from_millis(1500));
    shell.exec_now();
    std::thread::sleep(Duration::from_millis(1500));
    let exit = agent.terminate(EXIT_TIMEOUT);
    exit.assert_success();

    let windows = exit.windows();
    assert_eq!(windows.len(), 1, "one partial 30 s window: {windows:?}");
    assert_eq!(
        windows[0].profiles, 2,
        "the shell and the program it exec'ed are two incarnations, two profiles: {windows:?}"
    );
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(out.path())
        .expect("list the output directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".pb.gz"))
        .collect();
    let received: i64 = files
        .iter()
        .map(|p| crate::common::receivers::sample_count(&read_pprof(p)))
        .sum();
    assert_eq!(
        files.len(),
        2,
        "both profiles of the window should be written, got {files:?} (in_profiles={})",
        windows[0].in_profiles
    );
    assert_eq!(
        received as u64, windows[0].in_profiles,
        "samples missing from the files"
    );
}
