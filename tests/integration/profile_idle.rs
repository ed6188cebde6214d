//! Idle CPUs: the samples of the idle task (pid 0) are counted in the
//! summary line and left out of the profile, unless `--include-idle`
//! keeps them as perf does.

use std::time::{Duration, Instant};

use crate::common::{record_pprof_with, ProfileView, RecordedProfile};

/// Tries to catch idle time on a machine that may be busy (CI runs two
/// tests at once, and the other may keep a CPU busy): short whole-host
/// profiles at a high rate, so that even a gap of a fraction of a
/// millisecond is sampled, until one saw an idle CPU (judged by
/// `saw_idle`), for up to a minute.
fn whole_host_profile_with_idle(extra: &[&str], saw_idle: impl Fn(&RecordedProfile) -> bool) -> RecordedProfile {
    let mut args = vec!["--frequency", "4999"];
    args.extend_from_slice(extra);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempts = 0;
    loop {
        let recorded = record_pprof_with(&[], "1s", &args);
        attempts += 1;
        if saw_idle(&recorded) {
            return recorded;
        }
        assert!(
            Instant::now() < deadline,
            "{attempts} whole-host profiles of 1 s at 4999 Hz over a minute never sampled an idle CPU \
             (is every CPU kept busy?):\n{}",
            recorded.run.stderr
        );
    }
}

/// The `idle N` figure of the summary line.
fn summary_idle(recorded: &RecordedProfile) -> u64 {
    let line = recorded
        .run
        .stderr
        .lines()
        .find(|line| line.starts_with("taskprof: ") && line.contains(" samples from "))
        .unwrap_or_else(|| panic!("no summary line in:\n{}", recorded.run.stderr));
    let after = line
        .split("; idle ")
        .nth(1)
        .unwrap_or_else(|| panic!("no `; idle N` in the summary line `{line}`"));
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|err| panic!("bad idle count in `{line}`: {err}"))
}

fn idle_task_samples(recorded: &RecordedProfile) -> i64 {
    let view = ProfileView::new(&recorded.profile);
    recorded
        .profile
        .sample
        .iter()
        .filter(|s| view.pid(s) == 0)
        .map(|s| s.value[0])
        .sum()
}

#[test]
fn idle_samples_are_counted_and_left_out_by_default() {
    let recorded = whole_host_profile_with_idle(&[], |r| summary_idle(r) > 0);
    assert_eq!(
        idle_task_samples(&recorded),
        0,
        "the default profile holds samples of the idle task (pid 0)"
    );
    assert!(
        !recorded.profile.sample.is_empty(),
        "no samples of other tasks at all: taskprof itself runs"
    );
}

#[test]
fn include_idle_keeps_the_idle_task() {
    let recorded = whole_host_profile_with_idle(&["--include-idle"], |r| idle_task_samples(r) > 0);
    assert_eq!(
        summary_idle(&recorded),
        0,
        "with --include-idle no idle sample is left out:\n{}",
        recorded.run.stderr
    );
    let view = ProfileView::new(&recorded.profile);
    let idle = recorded
        .profile
        .sample
        .iter()
        .find(|s| view.pid(s) == 0)
        .expect("an idle-task sample");
    assert!(
        view.frames(idle).iter().all(|f| f.is_kernel()),
        "the idle task runs only kernel code: {:?}",
        view.frames(idle)
    );
}
