//! Where the profile goes and in which format: the default path, formats
//! inferred from the extension or chosen with `--format`, and the summary
//! line that tells the user what was written.

use std::path::Path;

use crate::common::{
    path_arg, read_pprof, run_taskprof, scratch_dir, Fixture, FixtureProgram, ProfileView, TaskprofRun, RUN_TIMEOUT,
};

const DURATION: &str = "2s";

/// Profiles `fixture` with `extra` arguments into `output` (a name inside
/// a fresh scratch directory, which is also the working directory; `None`
/// leaves `-o` out), and returns that directory with the run.
fn profile_into(fixture: &Fixture, output: Option<&str>, extra: &[&str]) -> (tempfile::TempDir, TaskprofRun) {
    let dir = scratch_dir();
    let pid = fixture.pid().to_string();
    let mut args = vec!["profile", "--duration", DURATION, "--pid", &pid];
    let output_path = output.map(|o| dir.path().join(o));
    if let Some(path) = &output_path {
        args.extend(["-o", path_arg(path)]);
    }
    args.extend_from_slice(extra);
    let run = run_taskprof(&args, dir.path(), RUN_TIMEOUT);
    run.assert_success();
    (dir, run)
}

/// Checks that `path` holds folded stacks, `comm;root;…;leaf COUNT` per
/// line, and returns the lines' frames (comm first) and counts.
fn read_folded(path: &Path) -> Vec<(Vec<String>, u64)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("failed to read `{}`: {err}", path.display()));
    let lines: Vec<(Vec<String>, u64)> = text
        .lines()
        .map(|line| {
            let parsed = line.rsplit_once(' ').and_then(|(stack, count)| {
                let frames: Vec<String> = stack.split(';').map(str::to_owned).collect();
                if frames.iter().any(|f| f.is_empty()) || !count.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Some((frames, count.parse().ok()?))
            });
            parsed.unwrap_or_else(|| panic!("not a folded stack line: {line:?}"))
        })
        .collect();
    assert!(!lines.is_empty(), "`{}` is empty", path.display());
    lines
}

fn assert_folded_chain(path: &Path, comm: &str) {
    let lines = read_folded(path);
    let chain = ["main", "outer", "middle", "hot"];
    let found = lines.iter().any(|(frames, count)| {
        let mut wanted = chain.iter().peekable();
        for frame in &frames[1..] {
            if wanted.peek() == Some(&&frame.as_str()) {
                wanted.next();
            }
        }
        frames[0] == comm && frames.last().map(String::as_str) == Some("hot") && wanted.peek().is_none() && *count > 0
    });
    assert!(
        found,
        "no folded line `{comm};…main;…outer;…middle;…hot N` in `{}`",
        path.display()
    );
}

#[test]
fn default_output_is_pprof_named_profile_pb_gz_and_summarized() {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 30.0);
    let (dir, run) = profile_into(&fixture, None, &[]);

    let profile = read_pprof(&dir.path().join("profile.pb.gz"));
    assert!(!profile.sample.is_empty(), "default profile has no samples");
    let summary = run
        .stderr
        .lines()
        .find(|line| line.contains("samples") && line.contains("profile.pb.gz"));
    assert!(
        summary.is_some(),
        "no stderr line mentions `samples` and `profile.pb.gz`:\n{}",
        run.stderr
    );
}

#[test]
fn summary_names_the_chosen_output_path() {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 30.0);
    let (dir, run) = profile_into(&fixture, Some("named-output.pb.gz"), &[]);
    let output = dir.path().join("named-output.pb.gz");

    read_pprof(&output);
    assert!(
        run.stderr
            .lines()
            .any(|line| line.contains("samples") && line.contains("named-output.pb.gz")),
        "no stderr line mentions `samples` and the output path:\n{}",
        run.stderr
    );
}

#[test]
fn pprof_extensions_write_pprof() {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 30.0);
    for name in ["out.pb", "out.pprof"] {
        let (dir, _run) = profile_into(&fixture, Some(name), &[]);
        let profile = read_pprof(&dir.path().join(name));
        let view = ProfileView::new(&profile);
        let stacks = view.stacks_for_pid(fixture.pid());
        assert!(
            stacks.iter().any(|s| s.leaf() == Some("hot")),
            "`{name}` holds no stack ending in `hot`"
        );
    }
}

#[test]
fn folded_extensions_write_folded_stacks() {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 30.0);
    for name in ["out.folded", "out.txt"] {
        let (dir, _run) = profile_into(&fixture, Some(name), &[]);
        assert_folded_chain(&dir.path().join(name), fixture.comm());
    }
}

#[test]
fn format_flag_overrides_an_unknown_extension() {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 30.0);
    let (dir, _run) = profile_into(&fixture, Some("out.data"), &["--format", "folded"]);
    assert_folded_chain(&dir.path().join("out.data"), fixture.comm());
}

#[test]
fn folded_kernel_frames_are_suffixed_and_leafward() {
    let fixture = Fixture::spawn(FixtureProgram::Syscalls, 30.0);
    let (dir, _run) = profile_into(&fixture, Some("kernel.folded"), &[]);
    let lines = read_folded(&dir.path().join("kernel.folded"));

    assert!(
        lines
            .iter()
            .any(|(frames, _)| frames.iter().any(|f| f.ends_with("_[k]"))),
        "no `_[k]` kernel frame in the folded stacks of a process reading /dev/zero"
    );
    for (frames, _) in &lines {
        if let Some(first) = frames.iter().position(|f| f.ends_with("_[k]")) {
            assert!(
                frames[first..].iter().all(|f| f.ends_with("_[k]")),
                "user frame after a kernel frame: {}",
                frames.join(";")
            );
        }
    }
}

#[test]
fn svg_extension_writes_a_flame_graph() {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 30.0);
    let (dir, _run) = profile_into(&fixture, Some("flame.svg"), &[]);
    let path = dir.path().join("flame.svg");
    let svg = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("failed to read `{}`: {err}", path.display()));

    assert!(svg.contains("<svg"), "`flame.svg` is not an SVG:\n{svg:.500}");
    assert!(svg.trim_end().ends_with("</svg>"), "`flame.svg` is truncated");
    assert!(svg.contains("hot"), "the flame graph does not show `hot`");
}
