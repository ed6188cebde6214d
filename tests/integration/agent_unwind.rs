//! The agent walks user stacks with the .eh_frame unwinder just as the
//! one-shot mode does: a program built without frame pointers arrives at the
//! backend with stacks that reach the thread's root, every truncated stack
//! says why, and the metrics account for every user stack walked.

use std::time::Duration;

use crate::common::agent_run::{assert_no_sample_lost, start_on_pid, MetricsPage};
use crate::common::receivers::Receiver;
use crate::common::unwind::{stack_reaches_root, taskprof_offenders, UnwindFixture, UNWIND_STOPPED_PREFIX};
use crate::common::{scratch_dir, total_count, ProfileView, Stack};

const WINDOWS_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs an agent with `flags` on the qsort fixture (built without frame
/// pointers) for `windows` windows; checks that every sample is accounted
/// for and returns the delivered stacks and the metrics scraped at the end.
fn profile_qsort(flags: &[(&str, &str)], windows: usize) -> (Vec<Stack>, MetricsPage) {
    let fixture = UnwindFixture::QsortGcc.spawn(60.0);
    let receiver = Receiver::accepting();
    let spool = scratch_dir();
    let mut agent = start_on_pid("pyroscope", &receiver.url(), spool.path(), fixture.pid(), flags);
    agent.wait_for_windows(windows, WINDOWS_TIMEOUT);
    let metrics = agent.scrape();
    let exit = agent.terminate(EXIT_TIMEOUT);
    exit.assert_success();
    receiver.assert_all_valid();
    let ingests = receiver.ingests();
    assert_no_sample_lost(&exit, &ingests, 0);
    let stacks = ingests
        .iter()
        .flat_map(|ingest| ProfileView::new(&ingest.profile).stacks_where(|_| true))
        .collect();
    (stacks, metrics)
}

#[test]
fn agent_stacks_of_a_program_without_frame_pointers_reach_the_root() {
    let (stacks, metrics) = profile_qsort(&[], 5);
    let total = total_count(&stacks);
    assert!(total >= 100, "too few samples to judge: {total}");
    let complete: i64 = stacks.iter().filter(|s| stack_reaches_root(s)).map(|s| s.count).sum();
    let offenders = taskprof_offenders(&stacks, |s| !stack_reaches_root(s));
    // The tables of a --pid process are loaded before sampling starts; a
    // stack that still stops short (the process mapped new code) must say
    // why.
    assert!(
        complete as f64 >= 0.99 * total as f64,
        "{complete} of {total} stacks reach the root; the others:\n{offenders}"
    );
    for stack in stacks.iter().filter(|s| !stack_reaches_root(s)) {
        let outermost = stack.function_names().first().cloned().unwrap_or_default();
        assert_eq!(
            outermost, "[unwind stopped: tables not loaded yet]",
            "a truncated stack must end in the reason (prefix {UNWIND_STOPPED_PREFIX:?}):\n{offenders}"
        );
    }

    // Every user stack walked is counted by its result, and the counts
    // cover every sample taken (all of them user-space samples of one
    // process).
    let by_result = metrics.samples("taskprof_user_stacks_total");
    let walked: f64 = by_result.values().sum();
    let taken = metrics.value("taskprof_samples_total");
    assert!(taken > 0.0);
    assert_eq!(walked, taken, "user stacks by result {by_result:?} != samples {taken}");
    let complete_metric = by_result
        .iter()
        .find(|(labels, _)| labels.contains("result=\"complete\""))
        .map(|(_, v)| *v)
        .unwrap_or(0.0);
    assert!(
        complete_metric >= 0.99 * taken,
        "taskprof_user_stacks_total: {by_result:?}"
    );
    assert!(
        metrics.value("taskprof_unwind_tables") >= 3.0,
        "sleep's binary, libc, ld.so"
    );
    assert!(metrics.value("taskprof_unwind_table_bytes") > 0.0);
}

#[test]
fn agent_with_unwind_fp_walks_frame_pointers_only() {
    let (stacks, metrics) = profile_qsort(&[("--unwind", "fp")], 3);
    let total = total_count(&stacks);
    let complete: i64 = stacks.iter().filter(|s| stack_reaches_root(s)).map(|s| s.count).sum();
    assert!(total > 0);
    assert!(
        (complete as f64) < 0.5 * total as f64,
        "frame pointers alone cannot get through glibc's qsort, yet {complete} of {total} reached the root"
    );
    // No table was built or loaded, and no walk was counted.
    assert_eq!(metrics.samples("taskprof_unwind_tables").values().sum::<f64>(), 0.0);
    assert_eq!(metrics.samples("taskprof_user_stacks_total").values().sum::<f64>(), 0.0);
}
