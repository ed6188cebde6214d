//! The sampler's fallback variants, for kernels older than this machine's,
//! forced here with `TASKPROF_BPF_VARIANT` and checked against the default
//! variant on the same fixtures: the bounded-loop walk (before 5.17), the
//! user registers from the task's kernel stack (before 5.15), preallocated
//! maps (before 6.1), and the frame-pointer fallback for a kernel where the
//! unwinder does not load at all. scripts/kernel-matrix.sh runs the
//! variants on the real old kernels.

use std::time::Duration;

use crate::common::unwind::{contains_chain, stack_reaches_root, stack_share, taskprof_offenders, UnwindFixture};
use crate::common::{record_pprof_env, scratch_dir, total_count, Fixture, FixtureProgram, ProfileView, Stack};

/// The variant a Linux 5.10 kernel runs.
const LINUX_5_10: &str = "bounded_loop+task_stack+preallocated";

/// Profiles the running `pid` for 4 s at 499 Hz with `variant` forced
/// (empty: the default); returns its stacks and taskprof's stderr.
fn profile(pid: u32, variant: &str) -> (Vec<Stack>, String) {
    let env: &[(&str, &str)] = if variant.is_empty() {
        &[]
    } else {
        &[("TASKPROF_BPF_VARIANT", variant)]
    };
    let recorded = record_pprof_env(&[pid], "4s", &["--frequency", "499"], env);
    let view = ProfileView::new(&recorded.profile);
    let stacks = view.stacks_for_pid(pid);
    assert!(
        total_count(&stacks) >= 50,
        "variant `{variant}`: only {} samples of a CPU-bound fixture",
        total_count(&stacks)
    );
    (stacks, recorded.run.stderr)
}

/// The summary line's variant name.
fn variant_named(stderr: &str) -> String {
    stderr
        .split("BPF sampler ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no `BPF sampler` in the summary line:\n{stderr}"))
        .to_string()
}

/// The most common stack's function names, root to leaf.
fn dominant(stacks: &[Stack]) -> Vec<String> {
    stacks
        .iter()
        .max_by_key(|s| s.count)
        .map(|s| s.function_names())
        .unwrap_or_default()
}

#[test]
fn the_linux_5_10_variant_unwinds_the_fixtures_like_the_default() {
    for fixture in [UnwindFixture::QsortGcc, UnwindFixture::CxxClang] {
        let mut workload = fixture.spawn(60.0);
        let required = fixture.required_chain();
        let complete = |s: &Stack| stack_reaches_root(s) && contains_chain(&s.function_names(), required);
        let (default, default_err) = profile(workload.pid(), "");
        let (forced, forced_err) = profile(workload.pid(), LINUX_5_10);
        workload.assert_running();
        assert_eq!(variant_named(&default_err), "bpf_loop+task_pt_regs");
        assert_eq!(variant_named(&forced_err), LINUX_5_10);

        let default_share = stack_share(&default, complete);
        let forced_share = stack_share(&forced, complete);
        println!(
            "{}: complete {:.1}% by default, {:.1}% with {LINUX_5_10}",
            fixture.name(),
            default_share.percent(),
            forced_share.percent()
        );
        assert!(
            forced_share.fraction() >= 0.99 && default_share.fraction() >= 0.99,
            "{}: complete stacks {:.1}% with {LINUX_5_10}, {:.1}% by default (want >= 99% each).\n\
             offenders with {LINUX_5_10}:\n{}",
            fixture.name(),
            forced_share.percent(),
            default_share.percent(),
            taskprof_offenders(&forced, |s| !complete(s))
        );
        assert_eq!(
            dominant(&forced),
            dominant(&default),
            "{}: the most common stack differs between {LINUX_5_10} and the default",
            fixture.name()
        );
    }
}

/// Samples taken in the kernel find the user registers through the task's
/// kernel stack as bpf_task_pt_regs does: the user part below the syscall
/// reaches the root as often.
#[test]
fn kernel_samples_find_the_user_stack_through_the_task_stack_like_task_pt_regs() {
    let fixture = Fixture::spawn(FixtureProgram::Syscalls, 60.0);
    let in_kernel_complete = |s: &Stack| {
        s.frames.iter().any(|f| f.is_kernel())
            && stack_reaches_root(s)
            && contains_chain(&s.function_names(), &[&["main"], &["read_zeros"]])
    };
    let in_kernel = |s: &Stack| s.frames.iter().any(|f| f.is_kernel());
    let mut shares = Vec::new();
    for variant in ["", "task_stack", LINUX_5_10] {
        let (stacks, stderr) = profile(fixture.pid(), variant);
        if !variant.is_empty() {
            assert!(variant_named(&stderr).contains("task_stack"), "{stderr}");
        }
        let kernel: Vec<Stack> = stacks.into_iter().filter(|s| in_kernel(s)).collect();
        let share = stack_share(&kernel, in_kernel_complete);
        println!("variant `{variant}`: {share} kernel samples reach the root through main → read_zeros");
        assert!(
            share.total >= 50 && share.fraction() >= 0.95,
            "variant `{variant}`: {share} of the syscall fixture's kernel samples reach the root through \
             main → read_zeros (want >= 95% of >= 50).\noffenders:\n{}",
            taskprof_offenders(&kernel, |s| !in_kernel_complete(s))
        );
        shares.push(share.fraction());
    }
    let spread = shares.iter().cloned().fold(f64::MIN, f64::max) - shares.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        spread <= 0.05,
        "complete kernel samples differ by {spread:.3} between variants: {shares:?}"
    );
}

/// With the unwinder off (as on a kernel where it does not load), taskprof
/// warns once, names the fallback, and samples with frame pointers: the
/// same hot leaf as the default, without the frames below it that only
/// unwind tables reach.
#[test]
fn the_frame_pointer_fallback_warns_once_and_keeps_sampling() {
    let mut workload = UnwindFixture::QsortGcc.spawn(60.0);
    let (default, _) = profile(workload.pid(), "");
    let (fallback, stderr) = profile(workload.pid(), "frame_pointers");
    workload.assert_running();
    let warnings = stderr
        .lines()
        .filter(|l| l.contains("warning:") && l.contains("user stacks follow frame pointers only"))
        .count();
    assert_eq!(warnings, 1, "want the warning exactly once:\n{stderr}");
    assert!(variant_named(&stderr).ends_with("+frame_pointers"), "{stderr}");
    assert!(!stderr.contains("user stacks complete"), "the unwinder ran:\n{stderr}");
    let leaf = |stacks: &[Stack]| dominant(stacks).last().cloned().unwrap_or_default();
    assert_eq!(leaf(&fallback), leaf(&default), "the hot leaf differs");
    assert!(
        stack_share(&fallback, stack_reaches_root).fraction() < 0.5,
        "frame pointers reached the root without frame pointers in the fixture"
    );
}

#[test]
fn an_unknown_variant_word_is_refused_with_the_words_to_use() {
    let dir = scratch_dir();
    let run = crate::common::spawn_taskprof_env(
        ["profile", "--duration", "1s", "-o", "out.pb.gz"],
        dir.path(),
        &[("TASKPROF_BPF_VARIANT", "bounded_loop+fast")],
    )
    .wait(Duration::from_secs(60));
    run.assert_exit_code(2);
    assert!(
        run.stderr.contains("TASKPROF_BPF_VARIANT") && run.stderr.contains("`fast`"),
        "{}",
        run.stderr
    );
}
