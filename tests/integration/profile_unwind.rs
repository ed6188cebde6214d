//! Unwinding code built without frame pointers: programs from GCC, Clang
//! and rustc (with glibc's qsort and C++ exceptions in their call chains)
//! and Debian's xz and sqlite3 must have complete stacks, from the sampled
//! function back to the root of the thread (`_start`), as often as
//! `perf record --call-graph dwarf` gets there. `--unwind=fp`, the
//! frame-pointer walk, documents what happens without CFI: stacks stop
//! after a frame or two.
//!
//! Every tool used here is required; a missing one fails the test with a
//! message naming `scripts/install-deps.sh --test`.

use std::process::Command;
use std::time::Duration;

use crate::common::unwind::{
    contains_chain, function_is, objdump, parse_perf_script, perf_offenders, perf_record_pids, perf_samples_for_pid,
    perf_share, reaches_root, stack_reaches_root, stack_share, taskprof_offenders, DebianWorkload, PerfSample, Share,
    UnwindFixture, Workload,
};
use crate::common::{record_pprof_with, total_count, ProfileView, Stack};

/// How long each profile samples.
const PROFILE_DURATION: &str = "4s";
const PROFILE_SECONDS: Duration = Duration::from_secs(4);

/// How long the fixtures would run. They are killed once profiled; this only
/// has to outlast taskprof's start-up and the profile.
const FIXTURE_SECONDS: f64 = 90.0;

/// Fewer samples than this from a CPU-bound process profiled for 4 s at
/// 99 Hz (about 400 on an idle core) means something else went wrong.
const MIN_SAMPLES: i64 = 50;

/// Sampling frequency for the fixtures. Each fixture's loop around its
/// call chain is a few instructions per call, yet on this kind of VM it
/// draws a few tenths of a percent of the samples (perf sees the same); at
/// 99 Hz and the ~200 samples a busy 2-core machine gives a fixture, three
/// such samples would already fail the 99% check. A thousand and more
/// samples make that noise negligible.
const FIXTURE_FREQUENCY: &str = "499";

/// Runs `fixture` and profiles it at [`FIXTURE_FREQUENCY`] with
/// `taskprof profile --pid` and `extra_args`; returns its stacks.
fn profile_fixture(fixture: UnwindFixture, extra_args: &[&str]) -> Vec<Stack> {
    let mut workload = fixture.spawn(FIXTURE_SECONDS);
    let mut args = vec!["--frequency", FIXTURE_FREQUENCY];
    args.extend_from_slice(extra_args);
    profile_workload(&mut workload, &args)
}

/// Profiles the running `workload` for [`PROFILE_DURATION`]; returns its stacks.
fn profile_workload(workload: &mut Workload, extra_args: &[&str]) -> Vec<Stack> {
    let recorded = record_pprof_with(&[workload.pid()], PROFILE_DURATION, extra_args);
    workload.assert_running();
    let view = ProfileView::new(&recorded.profile);
    let stacks = view.stacks_for_pid(workload.pid());
    let total = total_count(&stacks);
    assert!(
        total >= MIN_SAMPLES,
        "expected hundreds of samples of {} (CPU-bound) over {PROFILE_DURATION}, got {total}:\n{}",
        workload.name(),
        taskprof_offenders(&stacks, |_| true)
    );
    stacks
}

/// Renders a chain (root to leaf, alternatives joined with `|`).
fn chain_to_string(chain: &[&[&str]]) -> String {
    chain
        .iter()
        .map(|names| names.join("|"))
        .collect::<Vec<_>>()
        .join(" → ")
}

/// Profiles `fixture` with the default unwinder and checks that at least
/// 99% of its samples reach the root through the fixture's whole call
/// chain, and that at least 95% end in its hot leaf.
///
/// The remaining 1% leaves room for samples that are not under the chain at
/// all (the fixture's own loop around it); the 5% for samples inside the
/// library the leaf is called from (qsort's merge step, the C++ unwinder
/// during a throw), whose stacks are as complete but end elsewhere. Kernel
/// frames above the leaf (an interrupt, a page fault) do not matter.
fn assert_fixture_unwinds_to_the_root(fixture: UnwindFixture) {
    let stacks = profile_fixture(fixture, &[]);
    let required = fixture.required_chain();
    let full = fixture.full_chain();

    let rooted = stack_share(&stacks, stack_reaches_root);
    let complete = stack_share(&stacks, |s| {
        stack_reaches_root(s) && contains_chain(&s.function_names(), required)
    });
    let hot = stack_share(&stacks, |s| {
        stack_reaches_root(s) && contains_chain(&s.function_names(), &full)
    });
    println!(
        "{}: {rooted} reach the root; {:.1}% reach it through {}; {:.1}% end in {}",
        fixture.name(),
        complete.percent(),
        chain_to_string(required),
        hot.percent(),
        fixture.hot_function()
    );
    let incomplete = |s: &Stack| !(stack_reaches_root(s) && contains_chain(&s.function_names(), required));
    if complete.matching < complete.total {
        println!("{}", taskprof_offenders(&stacks, incomplete));
    }

    assert!(
        complete.fraction() >= 0.99,
        "{}: expected >= 99% of samples to reach the root (_start) through {}, got {:.1}% \
         ({:.1}% reach the root at all).\nmost common offending stacks, root to leaf:\n{}",
        fixture.name(),
        chain_to_string(required),
        complete.percent(),
        rooted.percent(),
        taskprof_offenders(&stacks, incomplete)
    );
    assert!(
        hot.fraction() >= 0.95,
        "{}: expected >= 95% of samples to reach the root and end in {} ({}), got {:.1}%.\n\
         most common offending stacks, root to leaf:\n{}",
        fixture.name(),
        fixture.hot_function(),
        chain_to_string(&full),
        hot.percent(),
        taskprof_offenders(&stacks, |s| !(stack_reaches_root(s)
            && contains_chain(&s.function_names(), &full)))
    );
}

#[test]
fn qsort_gcc_stacks_reach_the_root_through_glibc_qsort() {
    assert_fixture_unwinds_to_the_root(UnwindFixture::QsortGcc);
}

#[test]
fn qsort_clang_stacks_reach_the_root_through_glibc_qsort() {
    assert_fixture_unwinds_to_the_root(UnwindFixture::QsortClang);
}

#[test]
fn cxx_gcc_stacks_reach_the_root_through_functions_that_catch_exceptions() {
    assert_fixture_unwinds_to_the_root(UnwindFixture::CxxGcc);
}

#[test]
fn cxx_clang_stacks_reach_the_root_through_functions_that_catch_exceptions() {
    assert_fixture_unwinds_to_the_root(UnwindFixture::CxxClang);
}

#[test]
fn rust_stacks_reach_the_root_through_the_standard_library() {
    assert_fixture_unwinds_to_the_root(UnwindFixture::Rust);
}

/// The old behaviour, kept behind `--unwind=fp`: walking frame pointers
/// through code built without them stops after the leaf or so. The leaf is
/// still sampled and named; the stack is just cut short.
#[test]
fn frame_pointer_mode_stops_short_of_the_root_without_frame_pointers() {
    let fixture = UnwindFixture::QsortGcc;
    let stacks = profile_fixture(fixture, &["--unwind=fp"]);
    let rooted = stack_share(&stacks, stack_reaches_root);
    let leaf = stack_share(&stacks, |s| s.contains(fixture.hot_function()));
    println!(
        "{} --unwind=fp: {rooted} reach the root; {:.1}% contain {}",
        fixture.name(),
        leaf.percent(),
        fixture.hot_function()
    );
    assert!(
        rooted.fraction() < 0.5,
        "expected most frame-pointer stacks of a program without frame pointers to stop short \
         of the root, but {rooted} reach it.\nmost common stacks reaching the root:\n{}",
        taskprof_offenders(&stacks, stack_reaches_root)
    );
    assert!(
        leaf.fraction() >= 0.9,
        "expected >= 90% of samples to contain the hot leaf {} even with --unwind=fp, got {:.1}%:\n{}",
        fixture.hot_function(),
        leaf.percent(),
        taskprof_offenders(&stacks, |s| !s.contains(fixture.hot_function()))
    );
}

/// Profiles one run of `workload` with perf and an identical run with
/// taskprof, prints both shares of samples that reach the root, and checks
/// taskprof's is at least 90% and no more than 5 points below perf's.
fn assert_unwinds_like_perf(workload: DebianWorkload) {
    let name = workload.name();

    let perf_samples = {
        let mut run = workload.spawn();
        let samples = perf_record_pids(&[run.pid()], PROFILE_SECONDS, 99);
        run.assert_running();
        perf_samples_for_pid(&samples, run.pid())
    };
    let perf = perf_share(&perf_samples, PerfSample::reaches_root);
    println!("{name}: perf --call-graph dwarf {perf} reach root");
    assert!(
        perf.total >= MIN_SAMPLES,
        "{name}: perf recorded only {} samples over {PROFILE_DURATION}",
        perf.total
    );

    let stacks = {
        let mut run = workload.spawn();
        profile_workload(&mut run, &[])
    };
    let taskprof = stack_share(&stacks, stack_reaches_root);
    println!(
        "{name}: taskprof {taskprof} reach root, perf --call-graph dwarf {:.1}% of {}",
        perf.percent(),
        perf.total
    );

    let offenders = || {
        format!(
            "most common taskprof stacks that stop short of the root, root to leaf:\n{}\n\
             most common perf stacks that stop short of the root, root to leaf:\n{}",
            taskprof_offenders(&stacks, |s| !stack_reaches_root(s)),
            perf_offenders(&perf_samples, |s| !s.reaches_root())
        )
    };
    assert!(
        taskprof.fraction() >= 0.9,
        "{name}: expected >= 90% of taskprof's samples to reach the root, got {taskprof} \
         (perf: {perf}).\n{}",
        offenders()
    );
    assert!(
        taskprof.fraction() >= perf.fraction() - 0.05,
        "{name}: taskprof's share of samples reaching the root ({taskprof}) is more than 5 points \
         below perf --call-graph dwarf's ({perf}).\n{}",
        offenders()
    );
}

#[test]
fn xz_stacks_reach_the_root_as_often_as_with_perf_dwarf() {
    assert_unwinds_like_perf(DebianWorkload::Xz);
}

#[test]
fn sqlite3_stacks_reach_the_root_as_often_as_with_perf_dwarf() {
    assert_unwinds_like_perf(DebianWorkload::Sqlite3);
}

/// The reference side: perf's DWARF unwinder gets every fixture to the root
/// through its call chain, which shows the fixtures' unwind tables are
/// complete and that the perf helpers parse what perf prints.
#[test]
fn perf_dwarf_unwinds_every_fixture_to_the_root() {
    let workloads: Vec<(UnwindFixture, Workload)> = UnwindFixture::ALL
        .iter()
        .map(|fixture| (*fixture, fixture.spawn(FIXTURE_SECONDS)))
        .collect();
    let pids: Vec<u32> = workloads.iter().map(|(_, w)| w.pid()).collect();
    // Five CPU burners share the machine's cores: a higher frequency keeps
    // the sample count of each well above the minimum.
    let samples = perf_record_pids(&pids, Duration::from_secs(3), 499);

    let mut failures = Vec::new();
    for (fixture, workload) in &workloads {
        let samples = perf_samples_for_pid(&samples, workload.pid());
        let required = fixture.required_chain();
        let complete = perf_share(&samples, |s| {
            s.reaches_root() && contains_chain(&s.root_to_leaf(), required)
        });
        let offending = |s: &PerfSample| !(s.reaches_root() && contains_chain(&s.root_to_leaf(), required));
        println!(
            "{}: perf --call-graph dwarf: {complete} reach the root through {}",
            fixture.name(),
            chain_to_string(required)
        );
        if complete.matching < complete.total {
            println!("{}", perf_offenders(&samples, offending));
        }
        if complete.total < MIN_SAMPLES || complete.fraction() < 0.95 {
            failures.push(format!(
                "{}: {complete} reach the root through {} (want >= 95% of >= {MIN_SAMPLES}).\n\
                 most common offending stacks, root to leaf:\n{}",
                fixture.name(),
                chain_to_string(required),
                perf_offenders(&samples, offending)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The fixtures really are built without frame pointers: none of their own
/// functions (nor GCC's `.cold` parts of them) sets up %rbp as a frame
/// pointer (`mov %rsp,%rbp`). Using %rbp as an ordinary callee-saved
/// register (`push %rbp` alone) is fine: that is what makes the
/// frame-pointer walk fail.
#[test]
fn fixtures_are_built_without_frame_pointers() {
    for fixture in UnwindFixture::ALL {
        let executable = fixture.executable();
        let output = Command::new(objdump())
            .args(["-d", "-C", "--no-show-raw-insn"])
            .arg(&executable)
            .output()
            .unwrap_or_else(|err| panic!("failed to run objdump: {err}"));
        assert!(
            output.status.success(),
            "objdump -d {} failed ({}):\n{}",
            executable.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let disassembly = String::from_utf8_lossy(&output.stdout);
        let functions = disassembled_functions(&disassembly);

        for own in fixture.own_functions() {
            let matching: Vec<&(String, Vec<String>)> =
                functions.iter().filter(|(name, _)| function_is(name, own)).collect();
            assert!(
                !matching.is_empty(),
                "{}: no function `{own}` in the disassembly of {}",
                fixture.name(),
                executable.display()
            );
            for (name, instructions) in matching {
                let frame_setup = instructions.iter().find(|insn| insn.contains("mov %rsp,%rbp"));
                assert!(
                    frame_setup.is_none(),
                    "{}: `{name}` sets up a frame pointer ({}); the fixture must be built without them",
                    fixture.name(),
                    frame_setup.map(String::as_str).unwrap_or_default()
                );
            }
        }
    }
}

/// Splits `objdump -d` output into functions and their instructions (with
/// whitespace collapsed, e.g. `mov %rsp,%rbp`).
fn disassembled_functions(disassembly: &str) -> Vec<(String, Vec<String>)> {
    let mut functions: Vec<(String, Vec<String>)> = Vec::new();
    for line in disassembly.lines() {
        let header = line
            .split_once(" <")
            .filter(|(address, rest)| address.chars().all(|c| c.is_ascii_hexdigit()) && rest.ends_with(">:"));
        if let Some((_, rest)) = header {
            functions.push((rest.trim_end_matches(">:").to_owned(), Vec::new()));
            continue;
        }
        // Instruction lines are `  ADDRESS:\tMNEMONIC OPERANDS`.
        if let (Some((_, instructions)), Some((_, insn))) = (functions.last_mut(), line.split_once(":\t")) {
            instructions.push(insn.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    functions
}

// ---------------------------------------------------------------------------
// The helpers themselves, on canned input
// ---------------------------------------------------------------------------

#[test]
fn perf_script_output_parses_into_leaf_first_stacks() {
    let text = "\
xz 23765/23765 
\t           15bdb [unknown] (/usr/lib/x86_64-linux-gnu/liblzma.so.5.4.1)
\t            4ca7 lzma_code+0x37 (/usr/lib/x86_64-linux-gnu/liblzma.so.5.4.1)
\t           27249 __libc_start_call_main (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t           27304 __libc_start_main@@GLIBC_2.34 (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t            3ac0 [unknown] (/usr/bin/xz)

Web Content 100/102 
\t            1238 hot_leaf(unsigned long, unsigned long) (/tmp/cxx_clang)
\t           27304 __libc_start_main_impl (inlined)

empty 7/7 

";
    let samples = parse_perf_script(text);
    assert_eq!(samples.len(), 3, "{samples:#?}");
    assert_eq!(
        samples[0],
        PerfSample {
            comm: "xz".to_owned(),
            pid: 23765,
            tid: 23765,
            frames: vec![
                "[unknown]".to_owned(),
                "lzma_code".to_owned(),
                "__libc_start_call_main".to_owned(),
                "__libc_start_main".to_owned(),
                "[unknown]".to_owned(),
            ],
        }
    );
    assert!(samples[0].reaches_root());
    assert_eq!(
        (samples[1].comm.as_str(), samples[1].pid, samples[1].tid),
        ("Web Content", 100, 102)
    );
    assert_eq!(
        samples[1].frames,
        ["hot_leaf(unsigned long, unsigned long)", "__libc_start_main_impl"]
    );
    assert!(!samples[1].reaches_root(), "the root itself is missing");
    assert!(samples[2].frames.is_empty());
    assert!(!samples[2].reaches_root());

    let half = perf_share(&samples, PerfSample::reaches_root);
    assert_eq!(half, Share { matching: 1, total: 3 });
}

#[test]
fn root_detection_accepts_thread_roots_and_a_stripped_start_only() {
    // Leaf first, as perf prints them.
    assert!(reaches_root(&[
        "compare_slow",
        "__GI___qsort_r",
        "sort_loop",
        "main",
        "__libc_start_call_main",
        "__libc_start_main_impl",
        "_start"
    ]));
    assert!(reaches_root(&["work", "start_thread", "clone3"]));
    assert!(reaches_root(&["work", "start_thread", "__GI___clone3"]));
    assert!(reaches_root(&["child", "__clone"]));
    // A stripped executable's unnamed _start, as taskprof and perf name it.
    assert!(reaches_root(&[
        "lzma_code",
        "main",
        "__libc_start_call_main",
        "__libc_start_main_impl",
        "xz+0x3ac0"
    ]));
    assert!(reaches_root(&["lzma_code", "__libc_start_main", "[unknown]"]));

    assert!(!reaches_root::<&str>(&[]));
    assert!(!reaches_root(&["compare_slow"]));
    assert!(!reaches_root(&["compare_slow", "__libc_start_call_main"]));
    assert!(!reaches_root(&["hot", "[unwind stopped: no unwind table]"]));
    assert!(!reaches_root(&["hot", "_start", "[unwind stopped: bad frame]"]));
    // An unnamed frame is only the root right above __libc_start_main.
    assert!(!reaches_root(&["lzma_code", "xz+0x55eb"]));
    assert!(!reaches_root(&["lzma_code", "[unknown]"]));
    assert!(!reaches_root(&["compare_slow", "__libc_start_main_impl", "main"]));
}

#[test]
fn chains_match_in_order_with_alternative_and_cxx_names() {
    let stack = [
        "_start",
        "main",
        "level_one(double)",
        "level_two(unsigned long, unsigned long) [clone .cold]",
        "__cxa_throw",
        "hot_leaf(unsigned long, unsigned long)",
    ];
    assert!(contains_chain(
        &stack,
        &[&["main"], &["level_one"], &["level_two"], &["hot_leaf"]]
    ));
    assert!(contains_chain(&stack, &[&["qsort", "main"], &["level_one"]]));
    assert!(!contains_chain(&stack, &[&["level_two"], &["level_one"]]));
    assert!(
        !contains_chain(&stack, &[&["level"]]),
        "a prefix alone is not the function"
    );
    assert!(!contains_chain(&stack, &[&["main"], &["sort_loop"]]));
    assert!(function_is("rust_chain::hot", "rust_chain::hot"));
    assert!(!function_is("rust_chain::hot_path", "rust_chain::hot"));
}
