//! `taskprof agent` against a backend that misbehaves: a burst of 5xx,
//! throttling with `Retry-After`, a profile refused for good, and a stop
//! signal in the middle of a long window.

use std::thread;
use std::time::Duration;

use crate::common::agent_run::{
    assert_each_window_delivered_once, assert_no_sample_lost, assert_windows_in_order, spool_files, start_on_pid,
    wait_until, AgentCommand, AgentExit, RunningAgent,
};
use crate::common::receivers::{replies, Ingest, Receiver, Reply};
use crate::common::{scratch_dir, Fixture, FixtureProgram};

/// How long an agent may take to exit after SIGTERM: the 5 s grace and
/// some slack.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts an agent on a fresh Chain fixture uploading to `receiver`.
fn start(receiver: &Receiver, flags: &[(&str, &str)]) -> (Fixture, tempfile::TempDir, RunningAgent) {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 90.0);
    let spool = scratch_dir();
    let agent = start_on_pid("pyroscope", &receiver.url(), spool.path(), fixture.pid(), flags);
    (fixture, spool, agent)
}

/// Stops the agent once the receiver has accepted at least `accepted`
/// profiles and `windows` windows closed.
fn stop_after(mut agent: RunningAgent, receiver: &Receiver, windows: usize, accepted: usize) -> AgentExit {
    agent.wait_for_windows(windows, Duration::from_secs(40));
    receiver.wait_for_ingests(
        &format!("{accepted} accepted profile(s)"),
        Duration::from_secs(40),
        |ingests| ingests.len() >= accepted,
    );
    let exit = agent.terminate(EXIT_TIMEOUT);
    exit.assert_success();
    exit
}

#[test]
fn a_burst_of_500s_then_recovery_delivers_everything_in_order() {
    let receiver = Receiver::start(replies(vec![
        Reply::status(500, "internal error 1"),
        Reply::status(500, "internal error 2"),
        Reply::status(500, "internal error 3"),
    ]));
    let (_fixture, _spool, agent) = start(&receiver, &[]);
    let exit = stop_after(agent, &receiver, 5, 3);

    receiver.assert_all_valid();
    let statuses: Vec<u16> = receiver.requests().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 500).count(),
        3,
        "statuses: {statuses:?}"
    );
    assert!(statuses.iter().skip(3).all(|s| *s == 200), "statuses: {statuses:?}");
    let ingests = receiver.ingests();
    assert_each_window_delivered_once(&exit, &ingests);
    assert_windows_in_order(&ingests);
    assert_no_sample_lost(&exit, &ingests, 0);
}

#[test]
fn retry_after_on_429_is_honoured() {
    let receiver = Receiver::start(replies(
        vec![Reply::status(429, "slow down").header("Retry-After", "2")],
    ));
    let (_fixture, _spool, agent) = start(&receiver, &[("--window", "2s")]);
    let exit = stop_after(agent, &receiver, 3, 2);

    receiver.assert_all_valid();
    let requests = receiver.requests();
    assert_eq!(requests[0].status, 429);
    let throttled = requests[0].windows();
    let next = requests
        .get(1)
        .unwrap_or_else(|| panic!("nothing was sent after the 429: {requests:?}"));
    let gap = next.at.duration_since(requests[0].at);
    assert!(
        gap >= Duration::from_millis(1800),
        "the next request came {gap:?} after a 429 asking for 2 s"
    );
    let retried = requests
        .iter()
        .skip(1)
        .find(|r| r.windows() == throttled)
        .unwrap_or_else(|| panic!("the throttled window {throttled:?} was never sent again"));
    assert_eq!(retried.status, 200);
    let ingests = receiver.ingests();
    assert_each_window_delivered_once(&exit, &ingests);
    assert_windows_in_order(&ingests);
    assert_no_sample_lost(&exit, &ingests, 0);
}

#[test]
fn a_400_is_not_retried_and_its_message_is_logged() {
    const MESSAGE: &str = "test receiver refuses this profile: unsupported sample type";
    let receiver = Receiver::start(replies(vec![Reply::status(400, MESSAGE)]));
    let (_fixture, _spool, mut agent) = start(&receiver, &[]);
    // Two more windows after the refused one: time enough for a retry.
    receiver.wait_for_ingests("two profiles after the refusal", Duration::from_secs(40), |i| {
        i.len() >= 2
    });
    let page = agent.scrape();
    assert_eq!(
        page.count("taskprof_profiles_failed_total"),
        1,
        "the refused profile is not counted as failed"
    );
    let exit = agent.terminate(EXIT_TIMEOUT);
    exit.assert_success();

    receiver.assert_all_valid();
    let requests = receiver.requests();
    assert_eq!(requests[0].status, 400);
    let refused = requests[0].windows();
    let attempts = requests.iter().filter(|r| r.windows() == refused).count();
    assert_eq!(attempts, 1, "the refused window was sent {attempts} times");
    assert!(
        exit.lines.iter().any(|l| l.raw.contains(MESSAGE)),
        "the backend's message is not in the log:\n{}",
        exit.stderr()
    );

    let ingests = receiver.ingests();
    let expected: u64 = exit.windows().iter().map(|w| w.profiles).sum();
    assert_eq!(ingests.len() as u64, expected - 1, "every other window arrives");
    assert_windows_in_order(&ingests);
    let dropped: i64 = requests[0].profiles.iter().map(Ingest::sample_count).sum();
    assert!(dropped > 0);
    assert_no_sample_lost(&exit, &ingests, dropped);
}

fn stop_mid_window_delivers_the_partial_window_before_exit(signal: libc::c_int) {
    let receiver = Receiver::accepting();
    let (_fixture, _spool, agent) = start(&receiver, &[("--window", "30s"), ("--shutdown-grace", "5s")]);
    thread::sleep(Duration::from_secs(3));
    assert_eq!(receiver.requests().len(), 0, "a 30 s window was sent after 3 s");
    let exit = agent.stop_with(signal, EXIT_TIMEOUT);
    exit.assert_success();
    let after_signal = exit.after_signal.expect("signalled");
    assert!(
        after_signal < Duration::from_secs(7),
        "the agent took {after_signal:?} to exit with a 5 s grace"
    );

    receiver.assert_all_valid();
    let ingests = receiver.ingests();
    assert_eq!(ingests.len(), 1, "expected the one partial window");
    let partial = &ingests[0];
    let (from, until) = (partial.from.expect("from"), partial.until.expect("until"));
    assert!(until - from < 30, "the partial window claims from={from} until={until}");
    let duration = Duration::from_nanos(u64::try_from(partial.profile.duration_nanos).expect("duration"));
    assert!(
        duration > Duration::from_secs(1) && duration < Duration::from_secs(30),
        "the partial window's profile lasts {duration:?}"
    );
    assert!(
        partial.at < exit.exited_at,
        "the profile arrived after the agent exited"
    );
    assert_each_window_delivered_once(&exit, &ingests);
    assert_no_sample_lost(&exit, &ingests, 0);
}

#[test]
fn sigterm_mid_window_delivers_the_partial_window_before_exit() {
    stop_mid_window_delivers_the_partial_window_before_exit(libc::SIGTERM);
}

#[test]
fn sigint_mid_window_delivers_the_partial_window_before_exit() {
    stop_mid_window_delivers_the_partial_window_before_exit(libc::SIGINT);
}

#[test]
fn a_hanging_backend_does_not_hold_shutdown_past_the_grace() {
    // Every answer takes two minutes; the request timeout is longer than
    // the grace, so only the grace can end the wait.
    let receiver = Receiver::start(Box::new(|_| Reply::accept().after(Duration::from_secs(120))));
    let (_fixture, spool, mut agent) = start(&receiver, &[("--shutdown-grace", "2s"), ("--upload-timeout", "60s")]);
    agent.wait_for_windows(2, Duration::from_secs(30));
    wait_until(
        "the first request to hang",
        Duration::from_secs(10),
        || !receiver.requests().is_empty(),
        || agent.stderr(),
    );
    let exit = agent.terminate(EXIT_TIMEOUT);
    exit.assert_success();
    let after_signal = exit.after_signal.expect("signalled");
    assert!(
        after_signal < Duration::from_secs(4),
        "the agent took {after_signal:?} to exit with a 2 s grace and a hanging backend"
    );
    receiver.assert_all_valid();
    let spooled = spool_files(spool.path());
    let closed: u64 = exit.windows().iter().map(|w| w.profiles).sum();
    assert_eq!(
        spooled.len() as u64,
        closed,
        "every window the backend never confirmed should be spooled for the next run"
    );
}

#[test]
fn only_the_failed_profile_of_a_window_is_sent_again() {
    let failing = Fixture::spawn(FixtureProgram::Chain, 90.0);
    let healthy = Fixture::spawn(FixtureProgram::Chain, 90.0);
    let target = failing.pid().to_string();
    let mut failed = false;
    let receiver = Receiver::start(Box::new(move |attempt| {
        let for_target = attempt.profiles.iter().any(|p| p.labels.get("pid") == Some(&target));
        if for_target && !failed {
            failed = true;
            Reply::status(503, "this one failed")
        } else {
            Reply::accept()
        }
    }));
    let spool = scratch_dir();
    let mut agent = AgentCommand::new("pyroscope", &receiver.url(), spool.path())
        .pid(failing.pid())
        .pid(healthy.pid())
        // Two processes of one executable would be one series otherwise.
        .args(["--series-per-process"])
        .spawn();
    agent.wait_until_sampling();
    let exit = stop_after(agent, &receiver, 3, 4);

    receiver.assert_all_valid();
    let requests = receiver.requests();
    let refused = requests
        .iter()
        .find(|r| r.status == 503)
        .unwrap_or_else(|| panic!("no request failed: {requests:?}"));
    let window = refused.windows()[0];
    let sends = |pid: u32| {
        requests
            .iter()
            .filter(|r| {
                r.profiles
                    .iter()
                    .any(|p| p.profile.time_nanos == window && p.labels.get("pid") == Some(&pid.to_string()))
            })
            .count()
    };
    assert_eq!(sends(failing.pid()), 2, "the failed profile is sent once more");
    assert_eq!(
        sends(healthy.pid()),
        1,
        "the delivered profile of the same window is not sent again"
    );
    let ingests = receiver.ingests();
    assert_each_window_delivered_once(&exit, &ingests);
    assert_windows_in_order(&ingests);
    assert_no_sample_lost(&exit, &ingests, 0);
}
