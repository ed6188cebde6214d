//! Python frames: `taskprof profile` names the Python functions of
//! unmodified CPython processes, with their files and lines, in call order
//! and in their place among the native frames.
//!
//! Every test runs a Python fixture of its own (written into a scratch
//! directory), under Debian's `/usr/bin/python3` (always there: the test
//! set-up installs it) and, for the version matrix, under each pyenv build
//! in `~/.pyenv/versions/` (a version that is absent fails its test with
//! what to do, unless `TASKPROF_PYTHON_MATRIX=skip` leaves the matrix out).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    record_pprof_env, record_pprof_with, required_pyenv_python, scratch_dir, ChildGuard, ProfileView, Stack,
};

/// The chain every fixture runs: serve() → handle_request() → leaf_hash().
const CHAIN_SCRIPT: &str = include_str!("../fixtures/python/chain.py");

/// The share of a fixture's samples that must show the whole chain.
const CHAIN_SHARE: f64 = 0.95;

/// A Python fixture process, killed on drop (by its guard).
struct PythonFixture {
    child: ChildGuard,
    _dir: tempfile::TempDir,
    script: PathBuf,
    source: String,
}

impl PythonFixture {
    /// Runs `source` with `python` for `seconds` (passed as argv[1]) and
    /// waits until the interpreter has started running it.
    fn spawn(python: &Path, source: &str, seconds: f64) -> PythonFixture {
        let dir = scratch_dir();
        let script = dir.path().join("app.py");
        std::fs::write(&script, source).expect("failed to write the Python fixture");
        let child = Command::new(python)
            .arg(&script)
            .arg(seconds.to_string())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("failed to start {}: {err}", python.display()));
        // Let the interpreter start and enter the loop.
        std::thread::sleep(Duration::from_millis(400));
        PythonFixture {
            child: ChildGuard(child),
            _dir: dir,
            script,
            source: source.to_string(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The line of the fixture marked `# MARK`.
    fn line(&self, mark: &str) -> i64 {
        let tag = format!("# {mark}");
        self.source
            .lines()
            .position(|line| line.contains(&tag))
            .map(|index| index as i64 + 1)
            .unwrap_or_else(|| panic!("the fixture has no line marked {tag}"))
    }

    fn script(&self) -> String {
        self.script.to_string_lossy().into_owned()
    }
}

/// Python frames in a profile: functions whose file is a `.py` file.
fn python_frames(view: &ProfileView, sample: &crate::common::Sample) -> Vec<(String, String, i64)> {
    view.frames_with_lines(sample)
        .into_iter()
        .filter(|frame| frame.file.ends_with(".py"))
        .map(|frame| (frame.function, frame.file, frame.line))
        .collect()
}

/// Checks that at least CHAIN_SHARE of `fixture`'s samples show the chain
/// root→leaf with the fixture's file and the lines of the calls.
fn assert_chain_named(python: &Path) {
    assert_chain_named_env(python, &[]);
}

/// [`assert_chain_named`] with `env` in taskprof's environment.
fn assert_chain_named_env(python: &Path, env: &[(&str, &str)]) {
    let fixture = PythonFixture::spawn(python, CHAIN_SCRIPT, 20.0);
    let recorded = record_pprof_env(&[fixture.pid()], "3s", &[], env);
    let view = ProfileView::new(&recorded.profile);
    let script = fixture.script();
    let want = [
        ("<module>", fixture.line("MODULE")),
        ("serve", fixture.line("SERVE")),
        ("handle_request", fixture.line("HANDLE")),
    ];
    let mut total = 0;
    let mut named = 0;
    let mut others = Vec::new();
    for sample in &recorded.profile.sample {
        let count = sample.value[0];
        total += count;
        let frames = python_frames(&view, sample);
        // Root to leaf: the callers at their call lines, then leaf_hash in
        // its loop. A sample in serve's own loop (its clock call) shows a
        // shorter chain, in the same order, with serve at its loop lines.
        let callers_ok = (2..=4).contains(&frames.len())
            && frames[..frames.len() - 1]
                .iter()
                .zip(want)
                .all(|((function, file, line), (name, at))| function == name && *file == script && *line == at);
        let leaf_ok = match frames.len() {
            4 => {
                frames[3].0 == "leaf_hash"
                    && frames[3].1 == script
                    && (fixture.line("LEAF") - 2..=fixture.line("LEAF") + 1).contains(&frames[3].2)
            }
            // serve at its loop (the clock call or the loop test).
            2 => frames[1].0 == "serve" && (fixture.line("SERVE") - 1..=fixture.line("SERVE")).contains(&frames[1].2),
            // handle_request between its call and leaf_hash's first line.
            3 => frames[2].0 == "handle_request" && frames[2].2 == fixture.line("HANDLE"),
            _ => false,
        };
        if callers_ok && leaf_ok {
            named += count;
        } else {
            others.push(format!("{count} {frames:?}"));
        }
    }
    assert!(total >= 40, "only {total} samples of {}", python.display());
    let share = named as f64 / total as f64;
    others.sort();
    others.dedup();
    assert!(
        share >= CHAIN_SHARE,
        "{}: {named} of {total} samples name the chain; the others:\n{}",
        python.display(),
        others.iter().take(15).cloned().collect::<Vec<_>>().join("\n")
    );
}

fn with_pyenv(minor: u32, test: impl FnOnce(&Path)) {
    if let Some(python) = required_pyenv_python(minor) {
        test(&python);
    }
}

const SYSTEM_PYTHON: &str = "/usr/bin/python3";

#[test]
fn system_python_names_the_whole_chain() {
    assert_chain_named(Path::new(SYSTEM_PYTHON));
}

/// The walker of kernels without bpf_loop (before 5.17), a bounded loop,
/// names the same chain: forced here on this kernel, with the rest of the
/// Linux 5.10 variant.
#[test]
fn system_python_names_the_whole_chain_with_the_linux_5_10_variant() {
    assert_chain_named_env(
        Path::new(SYSTEM_PYTHON),
        &[("TASKPROF_BPF_VARIANT", "bounded_loop+task_stack+preallocated")],
    );
}

#[test]
fn cpython_3_8_names_the_whole_chain() {
    with_pyenv(8, assert_chain_named);
}

#[test]
fn cpython_3_9_names_the_whole_chain() {
    with_pyenv(9, assert_chain_named);
}

#[test]
fn cpython_3_10_names_the_whole_chain() {
    with_pyenv(10, assert_chain_named);
}

#[test]
fn cpython_3_11_names_the_whole_chain() {
    with_pyenv(11, assert_chain_named);
}

#[test]
fn cpython_3_12_names_the_whole_chain() {
    with_pyenv(12, assert_chain_named);
}

#[test]
fn cpython_3_13_names_the_whole_chain() {
    with_pyenv(13, assert_chain_named);
}

/// The share of `stacks` for which `test` holds, by sample count.
fn share(stacks: &[Stack], test: impl Fn(&Stack) -> bool) -> f64 {
    let total: i64 = stacks.iter().map(|s| s.count).sum();
    let hits: i64 = stacks.iter().filter(|s| test(s)).map(|s| s.count).sum();
    hits as f64 / total.max(1) as f64
}

#[test]
fn a_hashlib_leaf_sits_above_its_python_caller() {
    let source = r#"import sys, time, hashlib
data = b"x" * (1 << 20)

def digest_all():
    return hashlib.sha256(data).digest()  # LEAF

end = time.time() + float(sys.argv[1])
while time.time() < end:
    digest_all()
"#;
    let fixture = PythonFixture::spawn(Path::new(SYSTEM_PYTHON), source, 20.0);
    let recorded = record_pprof_with(&[fixture.pid()], "3s", &[]);
    let view = ProfileView::new(&recorded.profile);
    let stacks = view.stacks_for_pid(fixture.pid());
    // Root to leaf: the Python caller, then native hashing code from a
    // mapped library (OpenSSL's libcrypto or _hashlib), nothing Python after.
    let in_place = share(&stacks, |stack| {
        let Some(at) = stack.frames.iter().position(|f| f.function == "digest_all") else {
            return false;
        };
        let above = &stack.frames[at + 1..];
        !above.is_empty()
            && above
                .iter()
                .all(|f| !f.mapping.is_empty() && !f.is_kernel() || f.is_kernel())
    });
    assert!(
        in_place >= 0.9,
        "{:.0}% of samples have native hashing frames above digest_all:\n{}",
        in_place * 100.0,
        crate::common::describe_stacks(&stacks)
    );
}

#[test]
fn each_thread_gets_its_own_python_stack() {
    let source = r#"import sys, time, threading

def spin_a(end):
    x = 0
    while time.time() < end:
        x += 1  # A

def spin_b(end):
    x = 0
    while time.time() < end:
        x -= 1  # B

end = time.time() + float(sys.argv[1])
threading.current_thread().name = "main"
t = threading.Thread(target=spin_b, args=(end,))
t.start()
spin_a(end)
t.join()
"#;
    let fixture = PythonFixture::spawn(Path::new(SYSTEM_PYTHON), source, 20.0);
    let recorded = record_pprof_with(&[fixture.pid()], "3s", &[]);
    let view = ProfileView::new(&recorded.profile);
    let mut per_thread: std::collections::BTreeMap<i64, (i64, i64, i64)> = Default::default();
    for sample in &recorded.profile.sample {
        let tid = view.label_num(sample, "tid").expect("samples carry tid");
        let names: Vec<String> = python_frames(&view, sample).into_iter().map(|f| f.0).collect();
        let entry = per_thread.entry(tid).or_default();
        entry.0 += sample.value[0];
        if names.iter().any(|n| n == "spin_a") {
            entry.1 += sample.value[0];
        }
        if names.iter().any(|n| n == "spin_b") {
            entry.2 += sample.value[0];
        }
    }
    let busy: Vec<_> = per_thread.values().filter(|(total, _, _)| *total >= 20).collect();
    assert_eq!(busy.len(), 2, "two busy threads expected: {per_thread:?}");
    for (total, a, b) in busy {
        // Each thread shows only its own function, in nearly all samples.
        let own = (*a).max(*b);
        let other = (*a).min(*b);
        assert_eq!(other, 0, "a thread showed the other thread's function: {per_thread:?}");
        assert!(own as f64 >= 0.9 * *total as f64, "thread stacks: {per_thread:?}");
    }
}

#[test]
fn time_sleep_shows_the_kernel_above_its_python_frame() {
    let source = r#"import sys, time

def napper(end):
    while time.time() < end:
        time.sleep(0)  # NAP

napper(time.time() + float(sys.argv[1]))
"#;
    let fixture = PythonFixture::spawn(Path::new(SYSTEM_PYTHON), source, 20.0);
    let recorded = record_pprof_with(&[fixture.pid()], "3s", &[]);
    let view = ProfileView::new(&recorded.profile);
    let stacks = view.stacks_for_pid(fixture.pid());
    let kernel_above = stacks
        .iter()
        .filter(|stack| {
            stack
                .frames
                .iter()
                .position(|f| f.function == "napper")
                .is_some_and(|at| stack.frames[at + 1..].iter().any(|f| f.is_kernel()))
        })
        .map(|s| s.count)
        .sum::<i64>();
    let in_napper: i64 = stacks.iter().filter(|s| s.contains("napper")).map(|s| s.count).sum();
    assert!(
        kernel_above >= 3 && kernel_above * 20 >= in_napper,
        "only {kernel_above} of {in_napper} samples in napper show kernel frames above it:\n{}",
        crate::common::describe_stacks(&stacks)
    );
}

/// Profiles `pid` for 4 s with `taskprof profile --pid`, creating `go`
/// (the fixture's signal to start its measured phase) once sampling runs,
/// and returns the profile.
fn profile_after_go(pid: u32, go: &Path, dir: &Path) -> crate::common::Profile {
    let output = dir.join("profile.pb.gz");
    let pid = pid.to_string();
    let args = [
        "profile",
        "--duration",
        "4s",
        "--pid",
        pid.as_str(),
        "-o",
        crate::common::path_arg(&output),
    ];
    let mut taskprof = crate::common::spawn_taskprof(args, dir);
    taskprof.wait_until_sampling(Duration::from_secs(30));
    std::fs::write(go, b"").expect("failed to signal the fixture");
    taskprof.wait(Duration::from_secs(60)).assert_success();
    crate::common::read_pprof(&output)
}

#[test]
fn a_process_that_exits_mid_window_keeps_its_python_names() {
    // The chain runs for a second and a half once sampling runs, then the
    // process exits, two seconds before the profile ends.
    let dir = scratch_dir();
    let go = dir.path().join("go");
    let source = CHAIN_SCRIPT.replace(
        "serve(float(sys.argv[1]))  # MODULE",
        &format!(
            "import os\nwhile not os.path.exists({:?}):\n    time.sleep(0.01)\nserve(1.5)  # MODULE",
            go.to_string_lossy()
        ),
    );
    let fixture = PythonFixture::spawn(Path::new(SYSTEM_PYTHON), &source, 0.0);
    let pid = fixture.pid();
    let profile = profile_after_go(pid, &go, dir.path());
    let view = ProfileView::new(&profile);
    let stacks = view.stacks_for_pid(pid);
    // Every Python frame sampled while it lived is named, although the
    // process was gone when the profile was written.
    let unreadable: i64 = stacks
        .iter()
        .filter(|s| s.contains(taskprof::python::namer::UNREADABLE_FRAME))
        .map(|s| s.count)
        .sum();
    let named: i64 = stacks
        .iter()
        .filter(|s| s.contains_in_order(&["serve", "handle_request", "leaf_hash"]))
        .map(|s| s.count)
        .sum();
    assert!(
        unreadable == 0 && named >= 20,
        "{named} samples name the chain, {unreadable} have unreadable code objects:\n{}",
        crate::common::describe_stacks(&stacks)
    );
}

#[test]
fn a_pid_that_becomes_another_program_is_named_per_incarnation() {
    // The first program runs `first_phase` until told that sampling runs,
    // and a second and a half more, then execs the chain fixture under
    // the same pid: both programs run while sampled.
    let dir = scratch_dir();
    let chain = dir.path().join("chain.py");
    let go = dir.path().join("go");
    std::fs::write(&chain, CHAIN_SCRIPT).expect("failed to write the chain fixture");
    let source = format!(
        r#"import os, sys, time

def first_phase(go):
    x = 0
    while not os.path.exists(go):
        x += 1
    end = time.time() + 1.5
    while time.time() < end:
        x += 1

first_phase({go:?})
os.execv(sys.executable, [sys.executable, {chain:?}, "30"])
"#,
        go = go.to_string_lossy(),
        chain = chain.to_string_lossy()
    );
    let fixture = PythonFixture::spawn(Path::new(SYSTEM_PYTHON), &source, 0.0);
    let profile = profile_after_go(fixture.pid(), &go, dir.path());
    let view = ProfileView::new(&profile);
    let stacks = view.stacks_for_pid(fixture.pid());
    let first: i64 = stacks
        .iter()
        .filter(|s| s.contains("first_phase"))
        .map(|s| s.count)
        .sum();
    let second: i64 = stacks.iter().filter(|s| s.contains("leaf_hash")).map(|s| s.count).sum();
    let mixed: i64 = stacks
        .iter()
        .filter(|s| s.contains("first_phase") && s.contains("serve"))
        .map(|s| s.count)
        .sum();
    assert!(
        first >= 10 && second >= 10 && mixed == 0,
        "first {first}, second {second}, mixed {mixed}:\n{}",
        crate::common::describe_stacks(&stacks)
    );
}

#[test]
fn a_python_started_while_sampling_is_found_from_its_first_seconds() {
    let dir = scratch_dir();
    let output = dir.path().join("profile.pb.gz");
    let mut taskprof = crate::common::spawn_taskprof(
        ["profile", "--duration", "4s", "-o", crate::common::path_arg(&output)],
        dir.path(),
    );
    taskprof.wait_until_sampling(Duration::from_secs(30));
    let started = Instant::now();
    let fixture = PythonFixture::spawn(Path::new(SYSTEM_PYTHON), CHAIN_SCRIPT, 2.5);
    let pid = fixture.pid();
    assert!(started.elapsed() < Duration::from_secs(2), "the fixture started late");
    taskprof.wait(Duration::from_secs(60)).assert_success();
    let profile = crate::common::read_pprof(&output);
    let view = ProfileView::new(&profile);
    let stacks = view.stacks_for_pid(pid);
    // The interpreter's start-up (imports) runs before serve(); after it,
    // nearly every sample is inside the chain.
    let in_serve: Vec<Stack> = stacks
        .iter()
        .filter(|s| !s.contains("<module>") || s.contains("serve"))
        .cloned()
        .collect();
    let named = share(&in_serve, |s| {
        s.contains_in_order(&["serve", "handle_request", "leaf_hash"])
    });
    assert!(
        named >= 0.85,
        "{:.0}% of a newly started Python's samples name the chain:\n{}",
        named * 100.0,
        crate::common::describe_stacks(&stacks)
    );
}

#[test]
fn python_off_leaves_native_stacks_only() {
    let fixture = PythonFixture::spawn(Path::new(SYSTEM_PYTHON), CHAIN_SCRIPT, 20.0);
    let recorded = record_pprof_with(&[fixture.pid()], "2s", &["--python=off"]);
    let view = ProfileView::new(&recorded.profile);
    let stacks = view.stacks_for_pid(fixture.pid());
    assert!(crate::common::total_count(&stacks) >= 20);
    assert!(
        stacks.iter().all(|s| !s.contains("leaf_hash") && !s.contains("serve")),
        "Python frames with --python=off:\n{}",
        crate::common::describe_stacks(&stacks)
    );
    assert!(
        stacks.iter().any(|s| s.contains("_PyEval_EvalFrameDefault")),
        "the interpreter's native frames should stay:\n{}",
        crate::common::describe_stacks(&stacks)
    );
}

#[test]
fn an_unsupported_cpython_keeps_native_stacks_and_says_why_once() {
    let Some(python) = required_pyenv_python(7) else {
        return;
    };
    let fixture = PythonFixture::spawn(&python, CHAIN_SCRIPT, 20.0);
    let recorded = record_pprof_with(&[fixture.pid()], "2s", &[]);
    let view = ProfileView::new(&recorded.profile);
    let stacks = view.stacks_for_pid(fixture.pid());
    assert!(crate::common::total_count(&stacks) >= 20);
    assert!(stacks.iter().any(|s| s.contains("_PyEval_EvalFrameDefault")));
    let stderr = &recorded.run.stderr;
    let mentions = stderr.matches("CPython 3.7").count();
    assert_eq!(mentions, 1, "the unsupported version should be named once:\n{stderr}");
}

#[test]
fn the_summary_line_counts_python_samples() {
    let fixture = PythonFixture::spawn(Path::new(SYSTEM_PYTHON), CHAIN_SCRIPT, 20.0);
    let recorded = record_pprof_with(&[fixture.pid()], "2s", &[]);
    let stderr = &recorded.run.stderr;
    let line = stderr
        .lines()
        .find(|l| l.contains("python frames in"))
        .unwrap_or_else(|| panic!("no Python count in the summary:\n{stderr}"));
    let number_after = |prefix: &str| -> u64 {
        line.split(prefix)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number after {prefix:?}: {line}"))
    };
    let samples = number_after("taskprof: ");
    let walked = number_after("python frames in ");
    // All but the first sample or two (before the walker had the process).
    assert!(samples >= 30 && walked + 3 >= samples && walked <= samples, "{line}");
}

#[test]
fn go_tool_pprof_lists_python_source_lines() {
    let fixture = PythonFixture::spawn(Path::new(SYSTEM_PYTHON), CHAIN_SCRIPT, 20.0);
    let recorded = record_pprof_with(&[fixture.pid()], "2s", &[]);
    let output = Command::new(crate::common::go())
        .args(["tool", "pprof", "-list", "leaf_hash"])
        .arg(&recorded.output)
        .env("PPROF_TMPDIR", recorded.dir.path())
        .output()
        .expect("failed to run go tool pprof");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "go tool pprof failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("total = (total * 31 + i) % 1000003"),
        "pprof -list does not show the Python source:\n{text}"
    );
}

#[test]
fn the_agent_delivers_python_frames_and_counts_python_processes() {
    use crate::common::agent_run::{assert_no_sample_lost, start_on_pid};
    use crate::common::receivers::Receiver;

    let fixture = PythonFixture::spawn(Path::new(SYSTEM_PYTHON), CHAIN_SCRIPT, 60.0);
    let receiver = Receiver::accepting();
    let spool = scratch_dir();
    let mut agent = start_on_pid("pyroscope", &receiver.url(), spool.path(), fixture.pid(), &[]);
    agent.wait_for_windows(3, Duration::from_secs(60));
    let metrics = agent.scrape();
    let exit = agent.terminate(Duration::from_secs(20));
    exit.assert_success();
    receiver.assert_all_valid();
    let ingests = receiver.ingests();
    assert_no_sample_lost(&exit, &ingests, 0);
    let stacks: Vec<Stack> = ingests
        .iter()
        .flat_map(|ingest| ProfileView::new(&ingest.profile).stacks_for_pid(fixture.pid()))
        .collect();
    assert!(crate::common::total_count(&stacks) >= 30);
    let named = share(&stacks, |s| {
        s.contains_in_order(&["<module>", "serve", "handle_request", "leaf_hash"])
    });
    assert!(
        named >= 0.9,
        "{:.0}% of the uploaded samples name the chain:\n{}",
        named * 100.0,
        crate::common::describe_stacks(&stacks)
    );
    let walked = metrics
        .samples("taskprof_python_processes")
        .iter()
        .find(|(labels, _)| labels.contains("status=\"walked\""))
        .map(|(_, v)| *v)
        .unwrap_or(0.0);
    assert!(
        walked >= 1.0,
        "taskprof_python_processes: {:?}",
        metrics.samples("taskprof_python_processes")
    );
    let stacks_walked: f64 = metrics.samples("taskprof_python_stacks_total").values().sum();
    assert!(stacks_walked >= 30.0, "taskprof_python_stacks_total: {stacks_walked}");
}
