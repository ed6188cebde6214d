//! A bad `taskprof agent` configuration, wherever it is written (flag,
//! environment variable, YAML file), stops the agent before it samples:
//! exit code 2, quickly, with a message naming the setting.

use std::time::Duration;

use crate::common::agent_run::{AgentCommand, AgentExit};
use crate::common::scratch_dir;

/// Refusing a configuration needs no BPF and no network.
const REFUSAL_BUDGET: Duration = Duration::from_secs(5);

/// Kills an agent that wrongly starts instead of refusing.
const RUN_TIMEOUT: Duration = Duration::from_secs(15);

/// A configuration that works; each case breaks one thing in it.
fn valid(spool: &std::path::Path) -> AgentCommand {
    AgentCommand::new("pyroscope", "http://127.0.0.1:9", spool)
}

/// Runs `command`, expecting a refusal naming each of `names`.
fn assert_refused(case: &str, command: AgentCommand, names: &[&str]) -> AgentExit {
    let exit = command.run(RUN_TIMEOUT);
    assert_eq!(
        exit.status.code(),
        Some(2),
        "{case}: expected exit code 2, got {}:\n{}",
        exit.status,
        exit.stderr()
    );
    assert!(
        exit.elapsed < REFUSAL_BUDGET,
        "{case}: took {:?} to refuse the configuration",
        exit.elapsed
    );
    let stderr = exit.stderr();
    for name in names {
        assert!(
            stderr.contains(name),
            "{case}: the message does not name `{name}`:\n{stderr}"
        );
    }
    assert!(
        !exit.lines.iter().any(|l| l.is("sampling") || l.is("window closed")),
        "{case}: the agent started sampling before refusing:\n{stderr}"
    );
    exit
}

#[test]
fn a_bad_upload_url_is_refused() {
    let spool = scratch_dir();
    assert_refused(
        "bad URL",
        valid(spool.path()).set("--upload-url", "not a url"),
        &["--upload-url", "not a url"],
    );
}

#[test]
fn an_unknown_protocol_is_refused() {
    let spool = scratch_dir();
    assert_refused(
        "unknown protocol",
        valid(spool.path()).set("--upload-protocol", "otlp"),
        &["--upload-protocol", "otlp", "pyroscope"],
    );
}

#[test]
fn an_unreadable_bearer_token_file_is_refused() {
    let spool = scratch_dir();
    let missing = spool.path().join("no-such-token");
    assert_refused(
        "unreadable token file",
        valid(spool.path()).set("--bearer-token-file", crate::common::path_arg(&missing)),
        &["--bearer-token-file", crate::common::path_arg(&missing)],
    );
}

#[test]
fn a_window_under_a_second_is_refused() {
    let spool = scratch_dir();
    assert_refused(
        "--window 500ms",
        valid(spool.path()).set("--window", "500ms"),
        &["--window", "500ms"],
    );
}

#[test]
fn a_zero_frequency_is_refused() {
    let spool = scratch_dir();
    assert_refused(
        "--frequency 0",
        valid(spool.path()).set("--frequency", "0"),
        &["--frequency", "1 to 10000"],
    );
}

#[test]
fn a_bad_label_name_is_refused() {
    let spool = scratch_dir();
    assert_refused(
        "bad label name",
        valid(spool.path()).args(["--label", "bad-name=1"]),
        &["--label", "bad-name"],
    );
}

#[test]
fn a_bad_window_in_the_environment_is_refused() {
    let spool = scratch_dir();
    // The default command sets --window, which would win over the variable.
    let command = AgentCommand::bare()
        .set_all(&[
            ("--upload-url", "http://127.0.0.1:9"),
            ("--spool-dir", crate::common::path_arg(spool.path())),
            ("--metrics-address", "127.0.0.1:0"),
            ("--log-format", "json"),
        ])
        .env("TASKPROF_WINDOW", "500ms");
    assert_refused("TASKPROF_WINDOW=500ms", command, &["TASKPROF_WINDOW", "--window"]);
}

#[test]
fn an_unknown_key_in_the_config_file_is_refused() {
    let spool = scratch_dir();
    let config = spool.path().join("agent.yaml");
    std::fs::write(&config, "upload_url: http://127.0.0.1:9\nfrequncy: 99\n").expect("write the config file");
    let command = AgentCommand::bare().set_all(&[
        ("--config", crate::common::path_arg(&config)),
        ("--spool-dir", crate::common::path_arg(spool.path())),
        ("--metrics-address", "127.0.0.1:0"),
    ]);
    assert_refused(
        "unknown YAML key",
        command,
        &["frequncy", crate::common::path_arg(&config)],
    );
}

#[test]
fn a_basic_auth_user_without_a_password_file_is_refused() {
    let spool = scratch_dir();
    assert_refused(
        "--basic-auth-user alone",
        valid(spool.path()).set("--basic-auth-user", "alice"),
        &["--basic-auth-user", "--basic-auth-password-file"],
    );
}

#[test]
fn a_pid_that_is_not_running_is_refused() {
    let spool = scratch_dir();
    assert_refused(
        "--pid of no process",
        valid(spool.path()).args(["--pid", "4194304"]),
        &["4194304"],
    );
}
