//! What a profile says about where processes spent their CPU: user call
//! chains in order, processes that exit before the profile ends, kernel
//! frames, and which processes `--pid` keeps.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::{
    describe_stacks, path_arg, record_pprof, scratch_dir, spawn_taskprof, total_count, Fixture, FixtureProgram,
    ProfileView, Stack, RUN_TIMEOUT,
};

/// Share of `stacks`' samples for which `predicate` holds.
fn share(stacks: &[Stack], predicate: impl Fn(&Stack) -> bool) -> f64 {
    let total = total_count(stacks);
    assert!(total > 0, "no samples to take a share of");
    let matching: i64 = stacks.iter().filter(|s| predicate(s)).map(|s| s.count).sum();
    matching as f64 / total as f64
}

#[test]
fn chain_is_attributed_root_to_leaf_with_hot_as_the_leaf() {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 30.0);
    let recorded = record_pprof(&[fixture.pid()], "3s");
    let view = ProfileView::new(&recorded.profile);
    let stacks = view.stacks_for_pid(fixture.pid());

    let total = total_count(&stacks);
    assert!(
        total >= 30,
        "expected a few hundred samples of a CPU-bound process over 3s, got {total}:\n{}",
        describe_stacks(&stacks)
    );
    let hot_share = share(&stacks, |s| {
        s.leaf() == Some("hot") && s.contains_in_order(&["main", "outer", "middle", "hot"])
    });
    assert!(
        hot_share >= 0.8,
        "expected >= 80% of samples to end in main;outer;middle;hot, got {:.1}%:\n{}",
        hot_share * 100.0,
        describe_stacks(&stacks)
    );
}

#[test]
fn process_that_exits_mid_profile_is_still_symbolized() {
    let dir = scratch_dir();
    let output = dir.path().join("host.pb.gz");
    // No --pid: a short-lived process is only ever seen by a host profile.
    let mut taskprof = spawn_taskprof(["profile", "--duration", "4s", "-o", path_arg(&output)], dir.path());
    taskprof.wait_until_sampling(Duration::from_secs(30));
    let mut fixture = Fixture::spawn(FixtureProgram::ExitsEarly, 1.0);
    fixture.wait_for_exit(Duration::from_secs(20));
    taskprof.wait(RUN_TIMEOUT).assert_success();

    let profile = crate::common::read_pprof(&output);
    let view = ProfileView::new(&profile);
    let stacks = view.stacks_for_comm(fixture.comm());
    assert!(
        !stacks.is_empty(),
        "no samples with process_name or thread_name `{}` in a host profile",
        fixture.comm()
    );
    for sample in &profile.sample {
        if view.pid(sample) == i64::from(fixture.pid()) {
            assert_eq!(
                view.label_str(sample, "process_name"),
                Some(fixture.comm()),
                "a sample of the exited process has the wrong process_name"
            );
        }
    }

    let named = share(&stacks, |s| {
        s.contains_in_order(&["early_main_loop", "early_outer", "early_hot"])
    });
    assert!(
        named >= 0.5,
        "expected most samples of the exited process to be symbolized as \
         early_main_loop;early_outer;early_hot, got {:.1}%:\n{}",
        named * 100.0,
        describe_stacks(&stacks)
    );
}

/// Whether a kernel symbol name looks real: not a placeholder such as
/// `[unknown]` and not a raw address.
fn looks_like_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    starts_well
        && !name.starts_with("0x")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$'))
}

#[test]
fn syscall_heavy_process_has_named_kernel_frames_below_user_frames() {
    let fixture = Fixture::spawn(FixtureProgram::Syscalls, 30.0);
    let recorded = record_pprof(&[fixture.pid()], "3s");
    let view = ProfileView::new(&recorded.profile);
    let stacks = view.stacks_for_pid(fixture.pid());
    assert!(!stacks.is_empty(), "no samples for the syscalls fixture");

    let kernel_share = share(&stacks, |s| {
        s.frames
            .iter()
            .any(|f| f.is_kernel() && looks_like_identifier(&f.function))
    });
    assert!(
        kernel_share > 0.0,
        "no sample of a process reading /dev/zero has a named kernel frame:\n{}",
        describe_stacks(&stacks)
    );

    let kernel_names: BTreeSet<&str> = stacks
        .iter()
        .flat_map(|s| &s.frames)
        .filter(|f| f.is_kernel())
        .map(|f| f.function.as_str())
        .collect();
    assert!(
        kernel_names.iter().any(|name| name.contains("read")),
        "no kernel function containing `read` (vfs_read, ksys_read, read_zero, …); \
         kernel functions seen: {kernel_names:?}"
    );

    // The kernel stack sits on top of the user stack that made the
    // syscall, so once a stack enters the kernel it never leaves it.
    for stack in &stacks {
        let first_kernel = stack.frames.iter().position(|f| f.is_kernel());
        if let Some(first_kernel) = first_kernel {
            assert!(
                stack.frames[first_kernel..].iter().all(|f| f.is_kernel()),
                "user frame above a kernel frame (root→leaf): {}",
                stack.function_names().join(";")
            );
        }
    }
}

#[test]
fn pid_filter_keeps_only_that_process() {
    let target = Fixture::spawn(FixtureProgram::Chain, 30.0);
    let _bystander = Fixture::spawn(FixtureProgram::Syscalls, 30.0);
    let recorded = record_pprof(&[target.pid()], "3s");
    let view = ProfileView::new(&recorded.profile);

    assert!(
        !recorded.profile.sample.is_empty(),
        "no samples for pid {}",
        target.pid()
    );
    let pids: BTreeSet<i64> = recorded.profile.sample.iter().map(|s| view.pid(s)).collect();
    assert_eq!(
        pids,
        BTreeSet::from([i64::from(target.pid())]),
        "--pid {} let other processes through",
        target.pid()
    );
}

#[test]
fn repeated_pid_flags_keep_each_of_those_processes() {
    let first = Fixture::spawn(FixtureProgram::Chain, 30.0);
    let second = Fixture::spawn(FixtureProgram::Syscalls, 30.0);
    // Not exits_early: a host profile in a parallel test looks for that name.
    let _bystander = Fixture::spawn(FixtureProgram::Chain, 30.0);
    let recorded = record_pprof(&[first.pid(), second.pid()], "3s");
    let view = ProfileView::new(&recorded.profile);

    let pids: BTreeSet<i64> = recorded.profile.sample.iter().map(|s| view.pid(s)).collect();
    assert_eq!(
        pids,
        BTreeSet::from([i64::from(first.pid()), i64::from(second.pid())]),
        "expected samples from exactly the two requested processes"
    );
}
