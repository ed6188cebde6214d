//! Running `taskprof agent` from tests: building its command line, reading
//! its JSON log lines while it runs, scraping its metrics endpoint, and
//! stopping it with a signal.
//!
//! Every agent is started with `--log-format json`, `--metrics-address
//! 127.0.0.1:0` and an explicit spool directory, so tests never touch the
//! host's defaults; and without any `TASKPROF_*` variable of the test's own
//! environment, so only what a test sets reaches it.

use crate::common::ChildGuard;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::path_arg;
use super::receivers::Ingest;

/// How long an agent may take to load BPF and start sampling.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `--node-name` every test agent gets unless a test overrides it.
pub const TEST_NODE: &str = "taskprof-test-node";

/// The command line of one agent run.
#[derive(Debug, Clone)]
pub struct AgentCommand {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl AgentCommand {
    /// `taskprof agent` uploading to `url` with `protocol`, spooling in
    /// `spool_dir`: 1 s windows at 99 Hz, a 5 s shutdown grace, JSON logs,
    /// metrics on a free port of 127.0.0.1 and node [`TEST_NODE`].
    pub fn new(protocol: &str, url: &str, spool_dir: &Path) -> AgentCommand {
        AgentCommand::bare().args([
            "--upload-protocol",
            protocol,
            "--upload-url",
            url,
            "--spool-dir",
            path_arg(spool_dir),
            "--window",
            "1s",
            "--frequency",
            "99",
            "--shutdown-grace",
            "5s",
            "--metrics-address",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--node-name",
            TEST_NODE,
        ])
    }

    /// `taskprof agent` with no flags at all, for configuration tests.
    pub fn bare() -> AgentCommand {
        AgentCommand {
            args: vec!["agent".to_string()],
            env: Vec::new(),
        }
    }

    /// Sets `flag` to `value`, replacing the value it had: clap refuses a
    /// single-valued flag given twice, so defaults are overridden this way.
    pub fn set(mut self, flag: &str, value: &str) -> AgentCommand {
        match self.args.iter().position(|a| a == flag) {
            Some(at) if at + 1 < self.args.len() => self.args[at + 1] = value.to_string(),
            _ => self.args.extend([flag.to_string(), value.to_string()]),
        }
        self
    }

    /// Sets each `(flag, value)` in turn, see [`AgentCommand::set`].
    pub fn set_all(self, flags: &[(&str, &str)]) -> AgentCommand {
        flags
            .iter()
            .fold(self, |command, (flag, value)| command.set(flag, value))
    }

    /// Appends arguments as they are, for repeatable flags and switches.
    pub fn args<I, S>(mut self, args: I) -> AgentCommand
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// Restricts sampling to `pid`.
    pub fn pid(self, pid: u32) -> AgentCommand {
        self.args(["--pid".to_string(), pid.to_string()])
    }

    /// Sets an environment variable for the agent.
    pub fn env(mut self, name: &str, value: &str) -> AgentCommand {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Starts the agent.
    pub fn spawn(&self) -> RunningAgent {
        let mut command = Command::new(env!("CARGO_BIN_EXE_taskprof"));
        command
            .args(&self.args)
            .current_dir(env!("CARGO_TARGET_TMPDIR"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars() {
            if name.starts_with("TASKPROF_") || name == "NODE_NAME" || name == "RUST_LOG" {
                command.env_remove(name);
            }
        }
        for (name, value) in &self.env {
            command.env(name, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("failed to start taskprof agent: {err}"));
        let started = Instant::now();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let reader = {
            let lines = Arc::clone(&lines);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    lock(&lines).push(line);
                }
            })
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let stdout = thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        RunningAgent {
            child: ChildGuard(child),
            started,
            lines,
            reader: Some(reader),
            stdout: Some(stdout),
            metrics_address: None,
        }
    }

    /// Runs the agent until it exits by itself, killing it (and panicking)
    /// after `timeout`.
    pub fn run(&self, timeout: Duration) -> AgentExit {
        self.spawn().wait_exit(timeout)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts [`AgentCommand::new`] with `flags` on top, sampling only `pid`,
/// and returns it once it samples.
pub fn start_on_pid(protocol: &str, url: &str, spool: &Path, pid: u32, flags: &[(&str, &str)]) -> RunningAgent {
    let mut agent = AgentCommand::new(protocol, url, spool).pid(pid).set_all(flags).spawn();
    agent.wait_until_sampling();
    agent
}

/// An agent in flight. Dropping it kills and reaps the process.
pub struct RunningAgent {
    child: ChildGuard,
    started: Instant,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    stdout: Option<JoinHandle<String>>,
    metrics_address: Option<SocketAddr>,
}

impl RunningAgent {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The stderr lines so far.
    pub fn lines(&self) -> Vec<LogLine> {
        lock(&self.lines).iter().map(|l| LogLine::parse(l)).collect()
    }

    /// The stderr so far, for assertion messages.
    pub fn stderr(&self) -> String {
        lock(&self.lines).join("\n")
    }

    /// The `window closed` lines so far.
    pub fn windows(&self) -> Vec<WindowClosed> {
        windows_of(&self.lines())
    }

    /// Waits for a log line accepted by `matches` and returns it. Panics
    /// with the log if the agent exits first or `timeout` passes.
    pub fn wait_for_line(&mut self, what: &str, timeout: Duration, matches: impl Fn(&LogLine) -> bool) -> LogLine {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| matches(l)) {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader catch the last lines before reporting.
                thread::sleep(Duration::from_millis(100));
                if let Some(line) = self.lines().into_iter().find(|l| matches(l)) {
                    return line;
                }
                panic!("taskprof agent exited ({status}) before {what}:\n{}", self.stderr());
            }
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?} waiting for {what}:\n{}", self.stderr());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the agent logs that it samples (BPF loaded and
    /// attached); returns the metrics address it serves on.
    pub fn wait_until_sampling(&mut self) -> SocketAddr {
        self.wait_for_line("the agent to start sampling", START_TIMEOUT, |l| l.is("sampling"));
        self.metrics_address()
    }

    /// Waits until at least `count` windows have closed; returns them.
    pub fn wait_for_windows(&mut self, count: usize, timeout: Duration) -> Vec<WindowClosed> {
        let deadline = Instant::now() + timeout;
        loop {
            let windows = self.windows();
            if windows.len() >= count {
                return windows;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "taskprof agent exited ({status}) after {} of {count} windows:\n{}",
                    windows.len(),
                    self.stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} with {} of {count} windows closed:\n{}",
                    windows.len(),
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address of the metrics endpoint, from the agent's
    /// `serving /metrics` line.
    pub fn metrics_address(&mut self) -> SocketAddr {
        if let Some(addr) = self.metrics_address {
            return addr;
        }
        let line = self.wait_for_line("the metrics endpoint", START_TIMEOUT, |l| {
            l.message().is_some_and(|m| m.starts_with("serving /metrics"))
        });
        let addr = line
            .str_field("address")
            .unwrap_or_else(|| panic!("no address in {}", line.raw))
            .parse()
            .unwrap_or_else(|err| panic!("bad address in {}: {err}", line.raw));
        self.metrics_address = Some(addr);
        addr
    }

    /// Scrapes `/metrics`.
    pub fn scrape(&mut self) -> MetricsPage {
        let addr = self.metrics_address();
        let (status, body) = http_get(addr, "/metrics");
        assert_eq!(status, 200, "GET /metrics answered {status}: {body}");
        MetricsPage { text: body }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the agent.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits in pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our
        // own child, not reaped yet, so it cannot name another process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "failed to send signal {signal} to the agent: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Sends SIGTERM and waits for the agent to exit.
    pub fn terminate(self, timeout: Duration) -> AgentExit {
        self.stop_with(libc::SIGTERM, timeout)
    }

    /// Sends `signal` and waits for the agent to exit; the exit records how
    /// long that took.
    pub fn stop_with(self, signal: libc::c_int, timeout: Duration) -> AgentExit {
        let signalled = Instant::now();
        self.signal(signal);
        let mut exit = self.wait_exit(timeout);
        exit.after_signal = Some(exit.exited_at.duration_since(signalled));
        exit
    }

    /// Waits for the agent to exit by itself, killing it and panicking with
    /// its log after `timeout`.
    pub fn wait_exit(mut self, timeout: Duration) -> AgentExit {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return self.collect(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let status = self.child.wait().expect("reap the killed agent");
                    let exit = self.collect(status);
                    panic!(
                        "taskprof agent did not exit within {timeout:?}; killed it. stderr:\n{}",
                        exit.stderr()
                    );
                }
                Err(err) => panic!("failed to wait for the agent: {err}"),
            }
        }
    }

    fn collect(&mut self, status: ExitStatus) -> AgentExit {
        let exited_at = Instant::now();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let lines = lock(&self.lines).iter().map(|l| LogLine::parse(l)).collect();
        AgentExit {
            status,
            stdout,
            lines,
            elapsed: exited_at.duration_since(self.started),
            exited_at,
            after_signal: None,
        }
    }
}

/// A finished agent run.
#[derive(Debug)]
pub struct AgentExit {
    pub status: ExitStatus,
    #[expect(dead_code, reason = "shown through Debug when an assertion fails")]
    pub stdout: String,
    pub lines: Vec<LogLine>,
    /// From spawn to exit.
    pub elapsed: Duration,
    /// When the exit was seen.
    pub exited_at: Instant,
    /// From the stop signal to exit, when [`RunningAgent::terminate`] sent one.
    pub after_signal: Option<Duration>,
}

impl AgentExit {
    /// The whole stderr.
    pub fn stderr(&self) -> String {
        self.lines.iter().map(|l| l.raw.as_str()).collect::<Vec<_>>().join("\n")
    }

    /// Panics with the log unless the agent exited 0.
    pub fn assert_success(&self) -> &AgentExit {
        assert!(
            self.status.success(),
            "taskprof agent failed ({}):\n{}",
            self.status,
            self.stderr()
        );
        self
    }

    /// The `window closed` lines.
    pub fn windows(&self) -> Vec<WindowClosed> {
        windows_of(&self.lines)
    }

    /// The totals of the final `stopped` line.
    pub fn stopped(&self) -> Stopped {
        let line = self
            .lines
            .iter()
            .find(|l| l.is("stopped"))
            .unwrap_or_else(|| panic!("the agent logged no `stopped` line:\n{}", self.stderr()));
        Stopped {
            samples: line.u64_field("samples"),
            idle: line.u64_field("idle"),
            lost: line.u64_field("lost"),
        }
    }
}

/// The totals the agent logs when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Samples BPF took over the whole run.
    pub samples: u64,
    /// Samples of idle CPUs, left out of the profiles.
    pub idle: u64,
    /// Samples BPF could not record.
    pub lost: u64,
}

/// One `window closed` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowClosed {
    pub samples: u64,
    pub in_profiles: u64,
    pub idle: u64,
    pub lost: u64,
    pub profiles: u64,
    /// Processes whose samples the window's profiles hold.
    pub processes: u64,
}

fn windows_of(lines: &[LogLine]) -> Vec<WindowClosed> {
    lines
        .iter()
        .filter(|l| l.is("window closed"))
        .map(|l| WindowClosed {
            samples: l.u64_field("samples"),
            in_profiles: l.u64_field("in_profiles"),
            idle: l.u64_field("idle"),
            lost: l.u64_field("lost"),
            profiles: l.u64_field("profiles"),
            processes: l.u64_field("processes"),
        })
        .collect()
}

/// One line of the agent's stderr: a JSON log event, or plain text (such
/// as the `taskprof: error:` line of a failed start).
#[derive(Debug, Clone)]
pub struct LogLine {
    pub raw: String,
    json: Option<Value>,
}

impl LogLine {
    pub fn parse(raw: &str) -> LogLine {
        LogLine {
            raw: raw.to_string(),
            json: serde_json::from_str(raw).ok(),
        }
    }

    /// `fields.message` of a JSON event.
    pub fn message(&self) -> Option<&str> {
        self.field("message").and_then(Value::as_str)
    }

    /// Whether this is the event with exactly this message.
    pub fn is(&self, message: &str) -> bool {
        self.message() == Some(message)
    }

    /// `INFO`, `WARN`, ... of a JSON event.
    pub fn level(&self) -> Option<&str> {
        self.json.as_ref()?.get("level")?.as_str()
    }

    /// A field of a JSON event.
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.json.as_ref()?.get("fields")?.get(name)
    }

    /// A string field (numbers and other values rendered).
    pub fn str_field(&self, name: &str) -> Option<String> {
        self.field(name).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    /// A numeric field; panics if it is missing.
    pub fn u64_field(&self, name: &str) -> u64 {
        self.field(name)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("no numeric field `{name}` in log line {}", self.raw))
    }
}

/// A `/metrics` page in the OpenMetrics text format.
#[derive(Debug, Clone)]
pub struct MetricsPage {
    pub text: String,
}

impl MetricsPage {
    /// Every sample of metric `name` (exact name, `_total` included), by
    /// its label set as written (`""` when it has none).
    pub fn samples(&self, name: &str) -> BTreeMap<String, f64> {
        let mut found = BTreeMap::new();
        for line in self.text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (metric, labels) = match series.find('{') {
                Some(open) => (&series[..open], &series[open..]),
                None => (series, ""),
            };
            if metric == name {
                let value: f64 = value
                    .parse()
                    .unwrap_or_else(|err| panic!("bad value in metrics line `{line}`: {err}"));
                found.insert(labels.to_string(), value);
            }
        }
        found
    }

    /// The sum of metric `name` over its label sets; panics if the page
    /// does not have it.
    pub fn value(&self, name: &str) -> f64 {
        let samples = self.samples(name);
        assert!(!samples.is_empty(), "no metric `{name}` in:\n{}", self.text);
        samples.values().sum()
    }

    /// [`MetricsPage::value`] as a whole number.
    pub fn count(&self, name: &str) -> u64 {
        let value = self.value(name);
        assert!(
            value >= 0.0 && value.fract() == 0.0,
            "metric `{name}` is not a count: {value}"
        );
        value as u64
    }
}

/// `GET http://{addr}{path}` with reqwest; returns the status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for one request");
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client");
        let response = client
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET http://{addr}{path} failed: {err}"));
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .unwrap_or_else(|err| panic!("failed to read the body of GET {path}: {err}"));
        (status, body)
    })
}

/// The spool files (`*.batch`) in `dir`, oldest first, with their sizes.
pub fn spool_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(PathBuf, u64)> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".batch"))
        .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
        .collect();
    files.sort();
    files
}

/// Polls `condition` every 50 ms until it holds, panicking with `what` and
/// `context()` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}:\n{}", context());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// Delivery checks shared by the agent tests
// ---------------------------------------------------------------------------

/// Every profile of every closed window was accepted exactly once: as many
/// accepted profiles as the windows' `profiles=` add up to.
///
/// A series may legitimately get two profiles for one window (a process
/// that exec'ed mid-window is two incarnations of one pid, each with its own
/// profile under the same labels), so on a mismatch the message lists the
/// profiles that arrived more than once by content, the likely duplicates.
pub fn assert_each_window_delivered_once(exit: &AgentExit, delivered: &[Ingest]) {
    let expected: u64 = exit.windows().iter().map(|w| w.profiles).sum();
    if delivered.len() as u64 == expected {
        return;
    }
    let twins: Vec<String> = delivered
        .iter()
        .enumerate()
        .filter_map(|(index, ingest)| {
            let twin = delivered[..index]
                .iter()
                .position(|earlier| earlier.series() == ingest.series() && earlier.profile == ingest.profile)?;
            Some(format!(
                "#{twin} and #{index}: window {} of {}",
                ingest.profile.time_nanos,
                ingest.series()
            ))
        })
        .collect();
    panic!(
        "the windows held {expected} profiles but {} arrived; identical profiles: {twins:#?}; windows: {:?}",
        delivered.len(),
        exit.windows()
    );
}

/// Within each series, windows arrived oldest first: neither `time_nanos`
/// nor Pyroscope's `from` ever goes back. (Equal is fine: two incarnations
/// of one pid share a series and a window.)
pub fn assert_windows_in_order(delivered: &[Ingest]) {
    let mut last: BTreeMap<String, &Ingest> = BTreeMap::new();
    for ingest in delivered {
        if let Some(previous) = last.get(&ingest.series()) {
            assert!(
                ingest.profile.time_nanos >= previous.profile.time_nanos,
                "series {} got window {} after window {}",
                ingest.series(),
                ingest.profile.time_nanos,
                previous.profile.time_nanos
            );
            assert!(
                ingest.from >= previous.from,
                "series {} got from={:?} after from={:?}",
                ingest.series(),
                ingest.from,
                previous.from
            );
        }
        last.insert(ingest.series(), ingest);
    }
}

/// The no-loss account: the samples in the accepted profiles, plus
/// `dropped` (samples of profiles a test made the backend refuse), plus
/// the idle CPUs' samples left out, plus what BPF reported lost, equal
/// what BPF took, exactly. Each window's own account must balance too.
pub fn assert_no_sample_lost(exit: &AgentExit, delivered: &[Ingest], dropped: i64) {
    let stopped = exit.stopped();
    let windows = exit.windows();
    let received: i64 = delivered.iter().map(Ingest::sample_count).sum();
    assert!(stopped.samples > 0, "BPF took no samples at all:\n{}", exit.stderr());
    assert_eq!(
        received + dropped + stopped.idle as i64 + stopped.lost as i64,
        stopped.samples as i64,
        "received {received} + dropped {dropped} + idle {} + lost {} != taken {} (windows: {windows:?})",
        stopped.idle,
        stopped.lost,
        stopped.samples
    );
    assert_eq!(
        windows.iter().map(|w| w.samples).sum::<u64>(),
        stopped.samples,
        "the windows' samples do not add up to the `stopped` total: {windows:?}"
    );
    for window in &windows {
        assert_eq!(
            window.in_profiles + window.idle + window.lost,
            window.samples,
            "a window's samples are neither in its profiles nor counted idle or lost: {window:?}"
        );
    }
}
