//! JIT code: frames in anonymous executable memory are named through the
//! process's `/tmp/perf-PID.map`, and the native caller stays in the chain.

use crate::common::{describe_stacks, record_pprof, total_count, Fixture, FixtureProgram, ProfileView};

#[test]
fn jitted_code_is_named_from_the_perf_map() {
    let fixture = Fixture::spawn(FixtureProgram::Jit, 30.0);
    // Give it a moment to write its perf map before sampling.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let recorded = record_pprof(&[fixture.pid()], "2s");
    let view = ProfileView::new(&recorded.profile);
    let stacks = view.stacks_for_pid(fixture.pid());
    let total = total_count(&stacks);
    assert!(
        total >= 20,
        "too few samples of the JIT fixture:\n{}",
        describe_stacks(&stacks)
    );
    let jitted: i64 = stacks
        .iter()
        .filter(|s| {
            s.leaf() == Some("jitted_hot_loop") && s.contains_in_order(&["main", "run_jitted", "jitted_hot_loop"])
        })
        .map(|s| s.count)
        .sum();
    assert!(
        jitted * 10 >= total * 8,
        "expected >= 80% of samples in main;run_jitted;jitted_hot_loop, got {jitted} of {total}:\n{}",
        describe_stacks(&stacks)
    );
}
