//! The `python` part: what walking Python frames costs, side by side with
//! `--python=off`, and how much of a Python chain it names per CPython
//! version.
//!
//! 1. BPF cost per sample of `taskprof profile --pid` on one busy CPython
//!    process running the integration tests' chain (99 Hz);
//! 2. the agent's time to close a window (drain, symbolize, encode) with 200
//!    CPython processes that each serve a request every half second, at 99
//!    Hz on their pids (the host's other work would add its own), read
//!    from its JSON log: each "window closed" line's timestamp minus the
//!    window's end (its `sequence`, in ms); and its CPU time per window;
//! 3. the agent's CPU (user + system, and BPF) and RSS at 19 Hz, whole
//!    host, while a new CPython process starts every 200 ms and runs the
//!    chain for a second;
//! 4. the share of a chain fixture's samples that name the whole chain, for
//!    /usr/bin/python3 and each pyenv build of 3.8–3.13.
//!
//! Lengths, by environment variable (default): each run of 1,
//! `TASKPROF_BENCH_PYTHON_BPF_SECS` (10); the windows measured in 2 after
//! the first, `TASKPROF_BENCH_PYTHON_WINDOWS` (3); each run of 3 after 10 s
//! of warm-up, `TASKPROF_BENCH_PYTHON_AGENT_SECS` (90); each profile of 4,
//! `TASKPROF_BENCH_PYTHON_NAMED_SECS` (3). About 6½ minutes in all.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::{accepting_sink, common, measure_usage, process_cpu_seconds, Host};

/// The integration tests' chain (tests/fixtures/python/chain.py):
/// serve() → handle_request() → leaf_hash(), for argv[1] seconds.
const CHAIN_SCRIPT: &str = include_str!("../../tests/fixtures/python/chain.py");

/// The same chain as a mostly idle service: one request (about 2 ms of
/// CPU) every argv[1] seconds, from a random phase, until killed.
const BURST_SCRIPT: &str = r#"import random, sys, time

def leaf_hash(n):
    total = 0
    for i in range(n):
        total = (total * 31 + i) % 1000003
    return total

def handle_request():
    return leaf_hash(20000)

def serve(pause):
    time.sleep(random.random() * pause)
    while True:
        handle_request()
        time.sleep(pause)

serve(float(sys.argv[1]))
"#;

const SYSTEM_PYTHON: &str = "/usr/bin/python3";
const MODES: [&str; 2] = ["on", "off"];
const BURST_PROCESSES: usize = 200;
const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Turns on `kernel.bpf_stats_enabled` until dropped.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> BpfStats {
        let before = std::fs::read_to_string(SYSCTL).unwrap_or_else(|_| "0".into());
        std::fs::write(SYSCTL, "1").expect("enable kernel.bpf_stats_enabled");
        BpfStats(before.trim().to_string())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.0);
    }
}

/// The Python scripts, written once into a scratch directory.
struct Scripts {
    _dir: tempfile::TempDir,
    chain: PathBuf,
    burst: PathBuf,
}

impl Scripts {
    fn write() -> Scripts {
        let dir = common::scratch_dir();
        let chain = dir.path().join("app.py");
        let burst = dir.path().join("burst.py");
        std::fs::write(&chain, CHAIN_SCRIPT).expect("write the chain fixture");
        std::fs::write(&burst, BURST_SCRIPT).expect("write the burst fixture");
        Scripts {
            _dir: dir,
            chain,
            burst,
        }
    }
}

fn spawn_python(python: &Path, script: &Path, arg: &str) -> Child {
    Command::new(python)
        .arg(script)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("failed to start {}: {err}", python.display()))
}

/// `python --version`, e.g. "3.11.2".
fn python_version(python: &Path) -> String {
    let output = Command::new(python).arg("--version").output();
    let text = output
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_default();
    text.trim().trim_start_matches("Python ").to_string()
}

pub fn run() {
    println!();
    println!("| Python | `--python=on` | `--python=off` |");
    println!("|---|---|---|");
    let scripts = Scripts::write();
    bpf_cost(&scripts);
    window_time(&scripts);
    agent_under_churn(&scripts);
    chain_named(&scripts);
    // The rows after this part go back to two columns.
    println!();
    println!("| measure | result |");
    println!("|---|---|");
}

fn row(measure: &str, on: &str, off: &str) {
    println!("| {measure} | {on} | {off} |");
}

// ---------------------------------------------------------------------------
// 1. BPF cost per sample
// ---------------------------------------------------------------------------

/// The run_time_ns of the perf_event programs `pid` holds, or None when
/// it holds none (not loaded yet, or gone).
fn sampler_run_ns(pid: u32) -> Option<u64> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?;
    let (mut ns, mut found) = (0u64, false);
    for entry in entries.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
        };
        // BPF_PROG_TYPE_PERF_EVENT; the exec and exit hooks are raw tracepoints.
        if field("prog_type:") != Some(7) {
            continue;
        }
        found = true;
        ns += field("run_time_ns:").unwrap_or(0);
    }
    found.then_some(ns)
}

struct BpfRun {
    per_sample_ns: u64,
    samples: u64,
    walked: u64,
}

/// `taskprof profile --pid` on one busy chain process for `seconds` at 99
/// Hz with `args`, reading the sampler's run time from fdinfo until it
/// closes.
fn profile_bpf_run(scripts: &Scripts, args: &[&str], seconds: u64) -> BpfRun {
    let fixture = Host(vec![spawn_python(
        Path::new(SYSTEM_PYTHON),
        &scripts.chain,
        &(seconds + 30).to_string(),
    )]);
    std::thread::sleep(Duration::from_millis(400));
    let pid = fixture.0[0].id().to_string();
    let dir = common::scratch_dir();
    let output = dir.path().join("profile.pb.gz");
    let duration = format!("{seconds}s");
    let mut command = vec![
        "profile",
        "--duration",
        &duration,
        "--pid",
        &pid,
        "-o",
        common::path_arg(&output),
    ];
    command.extend_from_slice(args);
    let running = common::spawn_taskprof(command, dir.path());
    let taskprof = running.pid();
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(seconds + 60);
    while Instant::now() < deadline {
        match sampler_run_ns(taskprof) {
            Some(stats) => last = Some(stats),
            None if last.is_some() => break,
            None => {}
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = running.wait(Duration::from_secs(120));
    run.assert_success();
    drop(fixture);
    let run_ns = last.expect("the sampler's run time was never read");
    let profile = common::read_pprof(&output);
    let samples: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
    let walked = run
        .stderr
        .split("python frames in ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    BpfRun {
        // Per kept sample: runs on other tasks, dropped by the pid filter,
        // cost next to nothing.
        per_sample_ns: run_ns / (samples.max(1) as u64),
        samples: samples as u64,
        walked,
    }
}

fn bpf_cost(scripts: &Scripts) {
    let seconds = env_u64("TASKPROF_BENCH_PYTHON_BPF_SECS", 10);
    let _stats = BpfStats::enable();
    let version = python_version(Path::new(SYSTEM_PYTHON));
    let cell = |r: &BpfRun| {
        format!(
            "{:.1} µs ({} samples, {} with Python frames)",
            r.per_sample_ns as f64 / 1e3,
            r.samples,
            r.walked,
        )
    };
    for (unwinder, extra) in [
        (".eh_frame unwinder (the default)", None),
        ("`--unwind=fp`", Some("--unwind=fp")),
    ] {
        // On and off one after the other, so both see the same host.
        let runs: Vec<BpfRun> = MODES
            .iter()
            .map(|mode| {
                let python = format!("--python={mode}");
                let mut args = vec![python.as_str()];
                args.extend(extra);
                profile_bpf_run(scripts, &args, seconds)
            })
            .collect();
        row(
            &format!(
                "BPF cost per sample, `taskprof profile --pid` on one busy CPython {version} running the chain, \
                 99 Hz, {seconds} s, {unwinder}"
            ),
            &cell(&runs[0]),
            &cell(&runs[1]),
        );
    }
}

// ---------------------------------------------------------------------------
// The agent, read through its JSON log
// ---------------------------------------------------------------------------

/// What the agent's log says.
enum AgentEvent {
    Metrics(SocketAddr),
    /// A window closed: how long after its end, its samples and profiles.
    Window {
        took: Duration,
        samples: u64,
        profiles: u64,
    },
}

/// A running `taskprof agent` uploading to a loopback receiver, killed on drop.
struct Agent {
    host: Host,
    events: mpsc::Receiver<AgentEvent>,
    metrics: Option<SocketAddr>,
    received: Arc<std::sync::atomic::AtomicU64>,
}

impl Agent {
    /// `pids`: only these processes (all when empty).
    fn start(frequency: u64, mode: &str, spool: &Path, pids: &[u32]) -> Agent {
        let (receiver, received) = accepting_sink();
        let mut command = Command::new(env!("CARGO_BIN_EXE_taskprof"));
        if !pids.is_empty() {
            let list: Vec<String> = pids.iter().map(u32::to_string).collect();
            command.env("TASKPROF_PID", list.join(","));
        }
        let mut child = command
            .args(["agent", "--upload-protocol", "pyroscope", "--window", "10s"])
            .args([
                "--metrics-address",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--log-level",
                "info",
            ])
            .args(["--frequency", &frequency.to_string(), "--python", mode])
            .args(["--upload-url", &format!("http://{receiver}")])
            .arg("--spool-dir")
            .arg(spool)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the agent");
        let stderr = child.stderr.take().expect("agent stderr");
        let (send, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(event) = parse_log_line(&line) {
                    if send.send(event).is_err() {
                        break;
                    }
                }
            }
        });
        Agent {
            host: Host(vec![child]),
            events,
            metrics: None,
            received,
        }
    }

    fn pid(&self) -> u32 {
        self.host.0[0].id()
    }

    /// The next window the agent closes.
    fn next_window(&mut self) -> (Duration, u64, u64) {
        loop {
            match self.events.recv_timeout(Duration::from_secs(60)) {
                Ok(AgentEvent::Metrics(address)) => self.metrics = Some(address),
                Ok(AgentEvent::Window {
                    took,
                    samples,
                    profiles,
                }) => return (took, samples, profiles),
                Err(err) => panic!("the agent closed no window: {err}"),
            }
        }
    }

    /// Drains the log events so far (for the metrics address).
    fn poll(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            if let AgentEvent::Metrics(address) = event {
                self.metrics = Some(address);
            }
        }
    }

    /// The sum of the samples of `metric` on the agent's /metrics whose
    /// labels contain `labels`.
    fn metric(&mut self, metric: &str, labels: &str) -> f64 {
        self.poll();
        let Some(address) = self.metrics else { return 0.0 };
        let Ok(mut stream) = std::net::TcpStream::connect(address) else {
            return 0.0;
        };
        let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n");
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text.lines()
            .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .fold(0.0, |sum, v| sum + v)
    }

    fn stop(mut self) {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        let status = self.host.0[0].wait().expect("wait for the agent");
        self.host.0.clear();
        assert!(status.success(), "the agent failed: {status}");
        assert!(self.received.load(Ordering::Relaxed) > 0, "the agent uploaded nothing");
    }
}

fn parse_log_line(line: &str) -> Option<AgentEvent> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields")?;
    let message = fields.get("message")?.as_str()?;
    if message.starts_with("serving /metrics") {
        return Some(AgentEvent::Metrics(fields.get("address")?.as_str()?.parse().ok()?));
    }
    if message != "window closed" {
        return None;
    }
    let logged = humantime::parse_rfc3339(value.get("timestamp")?.as_str()?).ok()?;
    // The window's sequence is the millisecond its samples were drained.
    let end = UNIX_EPOCH + Duration::from_millis(value.get("span")?.get("sequence")?.as_u64()?);
    Some(AgentEvent::Window {
        took: logged.duration_since(end).unwrap_or(Duration::ZERO),
        samples: fields.get("samples")?.as_u64()?,
        profiles: fields.get("profiles")?.as_u64()?,
    })
}

// ---------------------------------------------------------------------------
// 2. Time to close a window, 200 Python processes
// ---------------------------------------------------------------------------

struct WindowRun {
    first: Duration,
    later: Vec<Duration>,
    samples: u64,
    profiles: u64,
    cpu_per_window: f64,
}

fn agent_windows(mode: &str, windows: usize, pids: &[u32]) -> WindowRun {
    let spool = common::scratch_dir();
    let mut agent = Agent::start(99, mode, spool.path(), pids);
    let (first, _, _) = agent.next_window();
    let cpu0 = process_cpu_seconds(agent.pid());
    let (mut later, mut samples, mut profiles) = (Vec::new(), 0, 0);
    for _ in 0..windows {
        let (took, s, p) = agent.next_window();
        later.push(took);
        samples += s;
        profiles += p;
    }
    let cpu1 = process_cpu_seconds(agent.pid());
    agent.stop();
    later.sort();
    WindowRun {
        first,
        later,
        samples: samples / windows as u64,
        profiles: profiles / windows as u64,
        cpu_per_window: (cpu1 - cpu0) / windows as f64,
    }
}

fn window_time(scripts: &Scripts) {
    let windows = env_u64("TASKPROF_BENCH_PYTHON_WINDOWS", 3).max(1) as usize;
    let host = Host(
        (0..BURST_PROCESSES)
            .map(|_| spawn_python(Path::new(SYSTEM_PYTHON), &scripts.burst, "0.5"))
            .collect(),
    );
    // Let 200 interpreters start.
    std::thread::sleep(Duration::from_secs(5));
    // Only these processes: the host's other work would add its own
    // symbolization to every window.
    let pids: Vec<u32> = host.0.iter().map(Child::id).collect();
    let runs: Vec<WindowRun> = MODES.iter().map(|mode| agent_windows(mode, windows, &pids)).collect();
    drop(host);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let measure = format!(
        "{BURST_PROCESSES} CPython processes, each a request (about 2 ms) every 0.5 s; agent on their pids, 99 Hz, 10 s windows"
    );
    row(
        &format!("{measure}: first window, end to closed (drain, symbolize, encode)"),
        &format!("{:.0} ms", ms(runs[0].first)),
        &format!("{:.0} ms", ms(runs[1].first)),
    );
    let later = |r: &WindowRun| {
        format!(
            "{:.0} ms ({:.0}–{:.0}; {} samples, {} profiles per window)",
            ms(r.later[r.later.len() / 2]),
            ms(r.later[0]),
            ms(r.later[r.later.len() - 1]),
            r.samples,
            r.profiles
        )
    };
    row(
        &format!("{measure}: the next {windows} windows, median (min–max)"),
        &later(&runs[0]),
        &later(&runs[1]),
    );
    row(
        &format!("{measure}: agent CPU (user+sys) per window, those {windows} windows"),
        &format!("{:.0} ms", runs[0].cpu_per_window * 1e3),
        &format!("{:.0} ms", runs[1].cpu_per_window * 1e3),
    );
}

// ---------------------------------------------------------------------------
// 3. Agent CPU and RSS under Python churn
// ---------------------------------------------------------------------------

struct ChurnRun {
    user: f64,
    bpf: f64,
    rss0: f64,
    rss1: f64,
    spawned: u64,
    /// taskprof_python_stacks_total: complete, incomplete, not_loaded.
    python_stacks: [f64; 3],
    /// taskprof_unwind_table_bytes at the end.
    table_bytes: f64,
}

/// Starts a chain process every 200 ms, each running for a second, until
/// `stop`; returns how many it started.
fn churn(python: PathBuf, script: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut running: Vec<Child> = Vec::new();
        let mut spawned = 0;
        while !stop.load(Ordering::Relaxed) {
            running.push(spawn_python(&python, &script, "1.0"));
            spawned += 1;
            std::thread::sleep(Duration::from_millis(200));
            running.retain_mut(|child| !matches!(child.try_wait(), Ok(Some(_))));
        }
        for mut child in running {
            let _ = child.wait();
        }
        spawned
    })
}

fn agent_churn_run(scripts: &Scripts, mode: &str, seconds: u64) -> ChurnRun {
    let spool = common::scratch_dir();
    let mut agent = Agent::start(19, mode, spool.path(), &[]);
    let pid = agent.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let churner = churn(PathBuf::from(SYSTEM_PYTHON), scripts.chain.clone(), Arc::clone(&stop));
    std::thread::sleep(Duration::from_secs(10));
    let usage = measure_usage(pid, seconds);
    let python_stacks = ["complete", "incomplete", "not_loaded"]
        .map(|result| agent.metric("taskprof_python_stacks_total", &format!("result=\"{result}\"")));
    let table_bytes = agent.metric("taskprof_unwind_table_bytes", "");
    stop.store(true, Ordering::Relaxed);
    let spawned = churner.join().unwrap_or(0);
    agent.stop();
    ChurnRun {
        user: usage.user,
        bpf: usage.bpf,
        rss0: usage.rss_before,
        rss1: usage.rss_after,
        spawned,
        python_stacks,
        table_bytes,
    }
}

fn agent_under_churn(scripts: &Scripts) {
    let seconds = env_u64("TASKPROF_BENCH_PYTHON_AGENT_SECS", 90);
    let _stats = BpfStats::enable();
    let runs: Vec<ChurnRun> = MODES
        .iter()
        .map(|mode| agent_churn_run(scripts, mode, seconds))
        .collect();
    let cpus = taskprof::bpf::online_cpu_count().unwrap_or(1) as f64;
    let cpu = |r: &ChurnRun| {
        format!(
            "{:.5} ({:.5} / {:.5}) = {:.3}% of the host's CPU",
            r.user + r.bpf,
            r.user,
            r.bpf,
            100.0 * (r.user + r.bpf) / cpus
        )
    };
    let measure = format!(
        "agent at 19 Hz, {seconds} s, a new CPython process every 200 ms running the chain for 1 s ({} / {} started)",
        runs[0].spawned, runs[1].spawned
    );
    row(
        &format!("{measure}: CPU s per wall s (user+sys / BPF)"),
        &cpu(&runs[0]),
        &cpu(&runs[1]),
    );
    let rss = |r: &ChurnRun| {
        format!(
            "{:.1} MiB / {:.1} MiB (unwind tables {:.1} MiB)",
            r.rss0,
            r.rss1,
            r.table_bytes / (1 << 20) as f64
        )
    };
    row(
        &format!("{measure}: RSS after 10 s / after {seconds} s more"),
        &rss(&runs[0]),
        &rss(&runs[1]),
    );
    let stacks = |r: &ChurnRun| {
        let [complete, incomplete, not_loaded] = r.python_stacks;
        format!("{complete:.0} / {incomplete:.0} / {not_loaded:.0}")
    };
    row(
        &format!(
            "{measure}: samples in CPython with Python frames complete / stopped early / taken before the walker had the process"
        ),
        &stacks(&runs[0]),
        &stacks(&runs[1]),
    );
}

// ---------------------------------------------------------------------------
// 4. The share of samples that name the whole chain
// ---------------------------------------------------------------------------

/// The line of CHAIN_SCRIPT marked `# MARK`.
fn chain_line(mark: &str) -> i64 {
    let tag = format!("# {mark}");
    CHAIN_SCRIPT
        .lines()
        .position(|line| line.contains(&tag))
        .map(|index| index as i64 + 1)
        .unwrap_or_else(|| panic!("the chain has no line marked {tag}"))
}

/// Whether a sample's Python frames (root to leaf) name the chain as the
/// integration tests require: the callers at their call lines and
/// leaf_hash in its loop, or a shorter prefix where serve or
/// handle_request is itself the leaf.
fn names_the_chain(frames: &[common::SourceFrame], script: &str) -> bool {
    let want = [
        ("<module>", chain_line("MODULE")),
        ("serve", chain_line("SERVE")),
        ("handle_request", chain_line("HANDLE")),
    ];
    if !(2..=4).contains(&frames.len()) || frames.iter().any(|f| f.file != script) {
        return false;
    }
    let callers_ok = frames[..frames.len() - 1]
        .iter()
        .zip(want)
        .all(|(frame, (name, at))| frame.function == name && frame.line == at);
    let leaf = &frames[frames.len() - 1];
    let leaf_ok = match frames.len() {
        4 => leaf.function == "leaf_hash" && (chain_line("LEAF") - 2..=chain_line("LEAF") + 1).contains(&leaf.line),
        2 => leaf.function == "serve" && (chain_line("SERVE") - 1..=chain_line("SERVE")).contains(&leaf.line),
        _ => leaf.function == "handle_request" && leaf.line == chain_line("HANDLE"),
    };
    callers_ok && leaf_ok
}

/// (named, total) samples of a chain process under `python`.
fn chain_share(python: &Path, scripts: &Scripts, seconds: u64, extra: &[&str]) -> (i64, i64) {
    let mut fixture = common::ChildGuard(spawn_python(python, &scripts.chain, &(seconds + 30).to_string()));
    std::thread::sleep(Duration::from_millis(400));
    let recorded = common::record_pprof_with(&[fixture.id()], &format!("{seconds}s"), extra);
    assert!(
        matches!(fixture.try_wait(), Ok(None)),
        "{} exited during the profile",
        python.display()
    );
    let view = common::ProfileView::new(&recorded.profile);
    let script = scripts.chain.to_string_lossy();
    let (mut named, mut total) = (0, 0);
    for sample in &recorded.profile.sample {
        let frames: Vec<common::SourceFrame> = view
            .frames_with_lines(sample)
            .into_iter()
            .filter(|frame| frame.file.ends_with(".py"))
            .collect();
        total += sample.value[0];
        if names_the_chain(&frames, &script) {
            named += sample.value[0];
        }
    }
    (named, total)
}

fn chain_named(scripts: &Scripts) {
    let seconds = env_u64("TASKPROF_BENCH_PYTHON_NAMED_SECS", 3);
    let share =
        |(named, total): (i64, i64)| format!("{:.1}% of {total} samples", 100.0 * named as f64 / total.max(1) as f64);
    let system = Path::new(SYSTEM_PYTHON);
    row(
        &format!(
            "samples naming the whole chain, `taskprof profile --pid`, 99 Hz, {seconds} s: CPython {} ({SYSTEM_PYTHON})",
            python_version(system)
        ),
        &share(chain_share(system, scripts, seconds, &[])),
        &share(chain_share(system, scripts, seconds, &["--python=off"])),
    );
    for minor in 8..=13 {
        let Some(python) = common::pyenv_python(minor) else {
            row(&format!("the same, CPython 3.{minor}"), "skipped: no pyenv build", "");
            continue;
        };
        row(
            &format!("the same, CPython {} (pyenv)", python_version(&python)),
            &share(chain_share(&python, scripts, seconds, &[])),
            "",
        );
    }
}
