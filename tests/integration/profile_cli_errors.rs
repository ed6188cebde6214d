//! Bad command lines are rejected up front: exit code 2, a message that
//! names the offending value, and no waiting for the profile duration.

use std::path::Path;
use std::time::Duration;

use crate::common::{path_arg, run_taskprof, scratch_dir, Fixture, FixtureProgram};

/// Bad input must be reported before sampling, long before `--duration`.
const REJECTION_BUDGET: Duration = Duration::from_secs(5);

/// Runs `taskprof profile <args>` and checks it exits 2 quickly, names
/// `mention` on stderr, and writes nothing.
fn assert_rejected(args: &[&str], mention: &str) {
    let dir = scratch_dir();
    let mut full = vec!["profile"];
    full.extend_from_slice(args);
    let run = run_taskprof(&full, dir.path(), Duration::from_secs(60));
    run.assert_exit_code(2);
    assert!(
        run.stderr.contains(mention),
        "stderr for {args:?} does not mention `{mention}`:\n{}",
        run.stderr
    );
    assert!(
        run.elapsed < REJECTION_BUDGET,
        "rejecting {args:?} took {:?}; it must not wait for the profile",
        run.elapsed
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("scratch dir is readable")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "rejected run {args:?} wrote {leftovers:?}");
}

#[test]
fn zero_duration_is_rejected() {
    assert_rejected(&["--duration", "0s"], "--duration");
}

#[test]
fn unparsable_duration_is_rejected() {
    assert_rejected(&["--duration", "abc"], "--duration");
}

#[test]
fn zero_frequency_is_rejected() {
    assert_rejected(&["--duration", "30s", "--frequency", "0"], "--frequency");
}

#[test]
fn frequency_above_10000_is_rejected() {
    assert_rejected(&["--duration", "30s", "--frequency", "20000"], "--frequency");
}

#[test]
fn pid_beyond_pid_max_is_rejected() {
    // pid_max is at most 2^22, so this pid can never exist.
    assert_rejected(&["--duration", "30s", "--pid", "999999999"], "999999999");
}

#[test]
fn pid_of_an_exited_process_is_rejected() {
    let mut fixture = Fixture::spawn(FixtureProgram::ExitsEarly, 0.0);
    fixture.wait_for_exit(Duration::from_secs(10));
    let pid = fixture.pid().to_string();
    assert_rejected(&["--duration", "30s", "--pid", &pid], &pid);
}

#[test]
fn unknown_format_is_rejected() {
    assert_rejected(&["--duration", "30s", "--format", "nope"], "nope");
}

fn assert_output_rejected(output: &Path) {
    let output = path_arg(output);
    assert_rejected(&["--duration", "30s", "-o", output], output);
}

#[test]
fn output_in_missing_directory_is_rejected() {
    assert_output_rejected(Path::new("/nonexistent-dir/x.pb.gz"));
}

#[test]
fn output_under_a_regular_file_is_rejected() {
    let dir = scratch_dir();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"").expect("create a regular file");
    assert_output_rejected(&file.join("x.pb.gz"));
}

#[test]
fn output_in_read_only_directory_is_rejected() {
    // Tests run as root, which ignores permission bits, so a chmod'ed
    // directory would be writable; nobody can create files in /proc.
    assert_output_rejected(Path::new("/proc/taskprof-test.pb.gz"));
}
