//! Profiles must be readable by the reference reader, `go tool pprof`,
//! without it falling back to symbolizing on its own.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{go, path_arg, record_pprof, scratch_dir, Fixture, FixtureProgram};

/// Runs `go tool pprof <report> <profile>` with every Go directory in a
/// scratch location, so it works as root in CI and never touches the
/// network or the invoking user's caches.
fn go_tool_pprof(report: &str, profile: &Path) -> Output {
    let home = scratch_dir();
    let dir = |name: &str| {
        let path = home.path().join(name);
        std::fs::create_dir_all(&path).unwrap_or_else(|err| panic!("failed to create `{}`: {err}", path.display()));
        path
    };
    let output = Command::new(go())
        .args(["tool", "pprof", report, path_arg(profile)])
        .env("HOME", home.path())
        .env("GOPATH", dir("gopath"))
        .env("GOCACHE", dir("gocache"))
        .env("PPROF_TMPDIR", dir("pprof"))
        .env("GOFLAGS", "")
        .env("GOTOOLCHAIN", "local")
        .env("GOTELEMETRY", "off")
        .env("GOPROXY", "off")
        .output()
        .unwrap_or_else(|err| panic!("failed to run go tool pprof: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "go tool pprof {report} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let lowered = stderr.to_lowercase();
    for warning in ["symbolization", "symbolize", "unrecognized"] {
        assert!(
            !lowered.contains(warning),
            "go tool pprof {report} warned about `{warning}`; the profile should \
             carry its own symbols:\n{stderr}"
        );
    }
    output
}

/// Whether some report line ends with the function `name`, which is how
/// both `-top` and `-traces` print a frame.
fn names_function(report: &str, name: &str) -> bool {
    report.lines().any(|line| line.split_whitespace().last() == Some(name))
}

#[test]
fn go_tool_pprof_reads_top_and_traces_without_symbolizing() {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 30.0);
    let recorded = record_pprof(&[fixture.pid()], "3s");

    for report in ["-top", "-traces"] {
        let output = go_tool_pprof(report, &recorded.output);
        let stdout = String::from_utf8_lossy(&output.stdout);
        for function in ["hot", "middle", "outer"] {
            assert!(
                names_function(&stdout, function),
                "go tool pprof {report} does not name `{function}`:\n{stdout}"
            );
        }
    }
}
