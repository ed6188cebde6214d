//! The shape of the pprof file itself: sample types, per-sample labels,
//! timing, and the structural invariants readers rely on.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{record_pprof, Fixture, FixtureProgram, ProfileView};
use taskprof::pprof::check_profile;

#[test]
fn sample_types_are_sample_count_then_cpu_nanoseconds() {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 30.0);
    let recorded = record_pprof(&[fixture.pid()], "2s");
    let view = ProfileView::new(&recorded.profile);

    let types: Vec<(&str, &str)> = recorded
        .profile
        .sample_type
        .iter()
        .map(|t| (view.string(t.r#type), view.string(t.unit)))
        .collect();
    assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);

    assert!(!recorded.profile.sample.is_empty(), "profile has no samples");
    for sample in &recorded.profile.sample {
        assert_eq!(sample.value.len(), 2, "one value per sample type");
        assert!(sample.value[0] > 0, "sample with no count: {sample:?}");
        assert!(sample.value[1] > 0, "sample with no CPU time: {sample:?}");
    }
}

#[test]
fn every_sample_is_labelled_with_its_process_and_thread() {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 30.0);
    let recorded = record_pprof(&[fixture.pid()], "2s");
    let view = ProfileView::new(&recorded.profile);

    assert!(!recorded.profile.sample.is_empty(), "profile has no samples");
    for sample in &recorded.profile.sample {
        assert_eq!(view.label_num(sample, "pid"), Some(i64::from(fixture.pid())));
        // The fixture is single-threaded, so its only thread is the leader.
        assert_eq!(view.label_num(sample, "tid"), Some(i64::from(fixture.pid())));
        assert_eq!(view.label_str(sample, "process_name"), Some(fixture.comm()));
        assert_eq!(view.label_str(sample, "thread_name"), Some(fixture.comm()));
    }
}

#[test]
fn profile_records_when_and_how_long_it_sampled() {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 30.0);
    let before = SystemTime::now();
    let recorded = record_pprof(&[fixture.pid()], "2s");
    let after = SystemTime::now();

    let nanos = |t: SystemTime| {
        let since_epoch = t.duration_since(UNIX_EPOCH).expect("clock after 1970");
        i64::try_from(since_epoch.as_nanos()).expect("time fits in i64")
    };
    let started = recorded.profile.time_nanos;
    assert!(
        (nanos(before)..=nanos(after)).contains(&started),
        "time_nanos {started} is not between the run's start and end"
    );
    let duration =
        Duration::from_nanos(u64::try_from(recorded.profile.duration_nanos).expect("duration_nanos is not negative"));
    assert!(
        (Duration::from_millis(1500)..Duration::from_secs(10)).contains(&duration),
        "a 2s profile claims to last {duration:?}"
    );
}

#[test]
fn real_profile_keeps_the_pprof_invariants() {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 30.0);
    let recorded = record_pprof(&[fixture.pid()], "2s");
    let profile = &recorded.profile;

    let problems = check_profile(profile);
    assert!(
        problems.is_empty(),
        "profile breaks pprof invariants:\n{}",
        problems.join("\n")
    );

    let view = ProfileView::new(profile);
    for sample in &profile.sample {
        assert!(!sample.location_id.is_empty(), "sample without a stack");
        let frames = view.frames(sample);
        if let Some(hot) = frames.iter().find(|f| f.function == "hot") {
            assert!(
                hot.mapping.ends_with(fixture.comm()),
                "`hot` is mapped from `{}`, not the fixture executable",
                hot.mapping
            );
        }
    }
}
