//! Interrupting a profile ends it early and still writes a usable file.

use std::thread;
use std::time::{Duration, Instant};

use crate::common::{
    path_arg, read_pprof, scratch_dir, spawn_taskprof, total_count, Fixture, FixtureProgram, ProfileView, RUN_TIMEOUT,
};

/// How long the profiler may take to write its profile once signalled.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(5);

fn signal_ends_profile_early_with_a_valid_profile(signal: libc::c_int) {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 60.0);
    let dir = scratch_dir();
    let output = dir.path().join("interrupted.pb.gz");
    let pid = fixture.pid().to_string();
    let mut taskprof = spawn_taskprof(
        ["profile", "--duration", "30s", "--pid", &pid, "-o", path_arg(&output)],
        dir.path(),
    );
    taskprof.wait_until_sampling(Duration::from_secs(30));
    thread::sleep(Duration::from_secs(2));

    let signalled = Instant::now();
    taskprof.signal(signal);
    let run = taskprof.wait(RUN_TIMEOUT);
    let shutdown = signalled.elapsed();
    run.assert_success();
    assert!(
        shutdown < SHUTDOWN_BUDGET,
        "taskprof took {shutdown:?} to exit after signal {signal}"
    );

    let profile = read_pprof(&output);
    let view = ProfileView::new(&profile);
    let samples = total_count(&view.stacks_for_pid(fixture.pid()));
    assert!(samples > 0, "interrupted profile has no samples of the fixture");
    let duration = Duration::from_nanos(u64::try_from(profile.duration_nanos).expect("duration_nanos is not negative"));
    assert!(
        duration > Duration::ZERO && duration < Duration::from_secs(15),
        "a profile interrupted after ~2s of 30s claims to last {duration:?}"
    );
}

#[test]
fn sigint_ends_profile_early_with_a_valid_profile() {
    signal_ends_profile_early_with_a_valid_profile(libc::SIGINT);
}

#[test]
fn sigterm_ends_profile_early_with_a_valid_profile() {
    signal_ends_profile_early_with_a_valid_profile(libc::SIGTERM);
}
