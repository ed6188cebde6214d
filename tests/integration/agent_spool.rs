//! `taskprof agent` when the backend is unreachable: windows wait in the
//! on-disk spool, are delivered in order once the backend is back (in the
//! same run or the next one), and the spool never grows past its bound.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::agent_run::{
    assert_each_window_delivered_once, assert_no_sample_lost, assert_windows_in_order, spool_files, wait_until,
    AgentCommand,
};
use crate::common::receivers::{accept_all, free_port, Ingest, Receiver};
use crate::common::{scratch_dir, Fixture, FixtureProgram};

/// How long an agent may take to exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// After an outage the agent's backoff may have grown to tens of seconds
/// (full jitter, doubling from 1 s); it must get through within this.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);

fn dead_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

#[test]
fn windows_spooled_while_the_backend_is_down_arrive_in_order_once_it_is_up() {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 120.0);
    let spool = scratch_dir();
    let port = free_port();
    let mut agent = AgentCommand::new("pyroscope", &dead_url(port), spool.path())
        .pid(fixture.pid())
        .spawn();
    agent.wait_until_sampling();
    wait_until(
        "windows in the spool while nothing listens",
        Duration::from_secs(30),
        || !spool_files(spool.path()).is_empty(),
        || agent.stderr(),
    );
    let outage_windows = agent.wait_for_windows(4, Duration::from_secs(30)).len();

    let receiver = Receiver::start_on(port, accept_all());
    wait_until(
        "the spool to drain once the backend is up",
        RECOVERY_TIMEOUT,
        || {
            let closed: u64 = agent.windows().iter().map(|w| w.profiles).sum();
            spool_files(spool.path()).is_empty() && receiver.accepted() as u64 >= closed
        },
        || format!("spool: {:?}\n{}", spool_files(spool.path()), agent.stderr()),
    );
    let page = agent.scrape();
    assert!(
        page.count("taskprof_profiles_spooled_total") >= 1,
        "nothing was counted as spooled:\n{}",
        page.text
    );
    assert_eq!(page.count("taskprof_spool_windows"), 0);
    let exit = agent.terminate(EXIT_TIMEOUT);
    exit.assert_success();

    receiver.assert_all_valid();
    let ingests = receiver.ingests();
    assert!(
        ingests.len() >= outage_windows,
        "{} profiles arrived for {outage_windows} windows closed during the outage",
        ingests.len()
    );
    assert_each_window_delivered_once(&exit, &ingests);
    assert_windows_in_order(&ingests);
    assert_no_sample_lost(&exit, &ingests, 0);
    assert!(
        spool_files(spool.path()).is_empty(),
        "the spool kept {:?}",
        spool_files(spool.path())
    );
}

#[test]
fn a_restarted_agent_replays_the_spool_of_the_previous_run_first() {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 120.0);
    let spool = scratch_dir();

    // Run A: nothing listens, so its windows end up in the spool.
    let mut first = AgentCommand::new("pyroscope", &dead_url(free_port()), spool.path())
        .pid(fixture.pid())
        .set("--shutdown-grace", "1s")
        .spawn();
    first.wait_until_sampling();
    wait_until(
        "two windows in the spool",
        Duration::from_secs(30),
        || spool_files(spool.path()).len() >= 2,
        || first.stderr(),
    );
    let first = first.terminate(EXIT_TIMEOUT);
    first.assert_success();
    let shutdown = first.after_signal.expect("signalled");
    assert!(
        shutdown < Duration::from_secs(4),
        "with the backend down and a 1 s grace, the agent took {shutdown:?} to exit"
    );
    let spooled = spool_files(spool.path());
    let first_profiles: u64 = first.windows().iter().map(|w| w.profiles).sum();
    assert_eq!(
        spooled.len() as u64,
        first_profiles,
        "every window of the first run should wait in the spool: {spooled:?}"
    );

    // Run B: the backend is up, and the spool is replayed before B's own windows.
    let restarted = SystemTime::now();
    let receiver = Receiver::accepting();
    let mut second = AgentCommand::new("pyroscope", &receiver.url(), spool.path())
        .pid(fixture.pid())
        .spawn();
    second.wait_until_sampling();
    second.wait_for_windows(2, Duration::from_secs(30));
    receiver.wait_for_ingests(
        "the replayed windows and one of the new run",
        RECOVERY_TIMEOUT,
        |ingests| ingests.len() as u64 > first_profiles,
    );
    wait_until(
        "the spool to empty",
        RECOVERY_TIMEOUT,
        || spool_files(spool.path()).is_empty(),
        || second.stderr(),
    );
    let second = second.terminate(EXIT_TIMEOUT);
    second.assert_success();
    assert!(
        second
            .lines
            .iter()
            .any(|l| l.message().is_some_and(|m| m.contains("from an earlier run"))),
        "the restarted agent did not report the spool it found:\n{}",
        second.stderr()
    );

    receiver.assert_all_valid();
    let ingests = receiver.ingests();
    let restarted_secs = restarted.duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let restarted_nanos = restarted.duration_since(UNIX_EPOCH).expect("clock").as_nanos() as i64;
    for (index, replayed) in ingests.iter().take(first_profiles as usize).enumerate() {
        assert!(
            replayed.from.expect("from") <= restarted_secs && replayed.profile.time_nanos < restarted_nanos,
            "profile #{index} should be a replayed window from before the restart: from={:?}",
            replayed.from
        );
    }
    for fresh in ingests.iter().skip(first_profiles as usize) {
        assert!(
            fresh.profile.time_nanos > restarted_nanos,
            "a window from the first run arrived after the second run's own windows"
        );
    }
    assert_windows_in_order(&ingests);
    // Across both runs, nothing taken by BPF went missing.
    let taken = first.stopped().samples + second.stopped().samples;
    let lost = first.stopped().lost + second.stopped().lost + first.stopped().idle + second.stopped().idle;
    let received: i64 = ingests.iter().map(Ingest::sample_count).sum();
    assert_eq!(
        received + lost as i64,
        taken as i64,
        "received {received} + lost {lost} != taken {taken} over two runs"
    );
    let expected = first_profiles + second.windows().iter().map(|w| w.profiles).sum::<u64>();
    assert_eq!(ingests.len() as u64, expected, "every window of both runs arrives once");
    assert!(spool_files(spool.path()).is_empty());
}

#[test]
fn a_full_spool_evicts_and_stays_within_its_bound() {
    // A window of the fixture spools as roughly 850 bytes: the bound holds two.
    const BOUND: u64 = 2000;
    let fixture = Fixture::spawn(FixtureProgram::Chain, 120.0);
    let spool = scratch_dir();
    let mut agent = AgentCommand::new("pyroscope", &dead_url(free_port()), spool.path())
        .pid(fixture.pid())
        .set_all(&[("--spool-max-bytes", &BOUND.to_string()), ("--shutdown-grace", "1s")])
        .spawn();
    agent.wait_until_sampling();
    let mut largest = 0;
    let mut most_files = 0;
    wait_until(
        "a spool eviction",
        Duration::from_secs(40),
        || {
            let files = spool_files(spool.path());
            largest = largest.max(files.iter().map(|(_, size)| size).sum::<u64>());
            most_files = most_files.max(files.len());
            agent.lines().iter().any(|l| {
                l.level() == Some("WARN")
                    && l.message()
                        .is_some_and(|m| m.contains("evicted") || m.contains("no room"))
            })
        },
        || format!("spool: {:?}\n{}", spool_files(spool.path()), agent.stderr()),
    );
    let page = agent.scrape();
    assert!(
        page.count("taskprof_spool_evictions_total") > 0,
        "an eviction was logged but not counted:\n{}",
        page.text
    );
    assert!(page.count("taskprof_spool_bytes") <= BOUND, "{}", page.text);
    assert!(
        page.count("taskprof_profiles_failed_total") > 0,
        "evicted profiles are failed ones"
    );
    let exit = agent.terminate(EXIT_TIMEOUT);
    exit.assert_success();

    let files = spool_files(spool.path());
    let total: u64 = files.iter().map(|(_, size)| size).sum();
    assert!(
        total <= BOUND,
        "the spool holds {total} bytes, over its {BOUND}-byte bound: {files:?}"
    );
    assert!(
        largest <= BOUND,
        "the spool reached {largest} bytes, over its {BOUND}-byte bound"
    );
    assert!(
        most_files >= 1 && !files.is_empty(),
        "the spool never kept a window, so nothing tested eviction of the oldest"
    );
}
