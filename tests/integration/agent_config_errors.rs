//! A bad `taskprof agent` configuration, wherever it is written (flag,
//! environment variable, YAML file), stops the agent before it samples:
//! exit code 2, quickly, with a message naming the setting.

use std::path::Path;
use std::time::Duration;

use crate::common::agent_run::{AgentCommand, AgentExit};
use crate::common::{path_arg, scratch_dir};

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

/// One test per refused configuration: its name, a label for messages,
/// the command (built in a scratch directory) and what the message must
/// name.
macro_rules! refusals {
    ($($name:ident: $case:literal, $command:expr, $names:expr;)*) => {
        $(
            #[test]
            fn $name() {
                let spool = scratch_dir();
                let command: fn(&Path) -> AgentCommand = $command;
                let names: fn(&Path) -> Vec<String> = $names;
                let names = names(spool.path());
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                assert_refused($case, command(spool.path()), &names);
            }
        )*
    };
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| (*name).to_string()).collect()
}

/// A bare command with the given flags and the defaults every case needs.
fn bare(spool: &Path, flags: &[(&str, &str)]) -> AgentCommand {
    AgentCommand::bare()
        .set_all(&[("--spool-dir", path_arg(spool)), ("--metrics-address", "127.0.0.1:0")])
        .set_all(flags)
}

/// A config file in `dir` holding `text`.
fn config_file(dir: &Path, text: &str) -> std::path::PathBuf {
    let config = dir.join("agent.yaml");
    std::fs::write(&config, text).expect("write the config file");
    config
}

refusals! {
    a_bad_upload_url_is_refused: "bad URL",
        |spool| valid(spool).set("--upload-url", "not a url"),
        |_| strings(&["--upload-url", "not a url"]);
    an_unknown_protocol_is_refused: "unknown protocol",
        |spool| valid(spool).set("--upload-protocol", "jaeger"),
        |_| strings(&["--upload-protocol", "jaeger", "pyroscope", "otlp-grpc"]);
    an_unknown_compression_is_refused: "unknown compression",
        |spool| valid(spool).set("--upload-protocol", "otlp").set("--upload-compression", "zstd"),
        |_| strings(&["--upload-compression", "zstd", "gzip or none"]);
    otlp_grpc_without_certificate_checks_is_refused: "otlp-grpc with --tls-insecure-skip-verify",
        |spool| valid(spool).set("--upload-protocol", "otlp-grpc").args(["--tls-insecure-skip-verify"]),
        |_| strings(&["--tls-insecure-skip-verify", "--tls-ca-file"]);
    an_unreadable_bearer_token_file_is_refused: "unreadable token file",
        |spool| valid(spool).set("--bearer-token-file", path_arg(&spool.join("no-such-token"))),
        |spool| strings(&["--bearer-token-file", path_arg(&spool.join("no-such-token"))]);
    a_window_under_a_second_is_refused: "--window 500ms",
        |spool| valid(spool).set("--window", "500ms"),
        |_| strings(&["--window", "500ms"]);
    a_zero_frequency_is_refused: "--frequency 0",
        |spool| valid(spool).set("--frequency", "0"),
        |_| strings(&["--frequency", "1 to 10000"]);
    a_bad_label_name_is_refused: "bad label name",
        |spool| valid(spool).args(["--label", "bad-name=1"]),
        |_| strings(&["--label", "bad-name"]);
    // The default command sets --window, which would win over the variable.
    a_bad_window_in_the_environment_is_refused: "TASKPROF_WINDOW=500ms",
        |spool| bare(spool, &[("--upload-url", "http://127.0.0.1:9"), ("--log-format", "json")])
            .env("TASKPROF_WINDOW", "500ms"),
        |_| strings(&["TASKPROF_WINDOW", "--window"]);
    an_unknown_key_in_the_config_file_is_refused: "unknown YAML key",
        |spool| {
            let config = config_file(spool, "upload_url: http://127.0.0.1:9\nfrequncy: 99\n");
            bare(spool, &[("--config", path_arg(&config))])
        },
        |spool| strings(&["frequncy", path_arg(&spool.join("agent.yaml"))]);
    a_basic_auth_user_without_a_password_file_is_refused: "--basic-auth-user alone",
        |spool| valid(spool).set("--basic-auth-user", "alice"),
        |_| strings(&["--basic-auth-user", "--basic-auth-password-file"]);
    a_pid_that_is_not_running_is_refused: "--pid of no process",
        |spool| valid(spool).args(["--pid", "4194304"]),
        |_| strings(&["4194304"]);
    // Regression: outside a cluster, --kubernetes used to fail with exit
    // code 1 after the metrics endpoint had bound.
    kubernetes_outside_a_cluster_is_refused_before_anything_binds: "--kubernetes outside a cluster",
        |spool| valid(spool).args(["--kubernetes"]).env("KUBERNETES_SERVICE_HOST", ""),
        |_| strings(&["--kubernetes", "KUBERNETES_SERVICE_HOST"]);
    an_unreadable_kubernetes_ca_file_is_refused: "unreadable --kubernetes-ca-file",
        |spool| valid(spool)
            .args(["--kubernetes"])
            .set("--kubernetes-api-url", "https://127.0.0.1:9")
            .set("--kubernetes-ca-file", path_arg(&spool.join("no-such-ca.crt"))),
        |spool| strings(&["--kubernetes-ca-file", path_arg(&spool.join("no-such-ca.crt"))]);
}
