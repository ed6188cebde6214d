//! taskprof's benchmark. Run as root: `cargo bench --bench taskprof`.
//!
//! It reports:
//! 1. BPF cost per sample, from the kernel's own accounting
//!    (`kernel.bpf_stats_enabled`, run_time_ns / run_cnt);
//! 2. end of sampling to file written (symbolize, build, encode, write)
//!    for a synthetic host of 200 processes and 5,000 distinct stacks, cold
//!    and warm symbol caches, and the map read of a real run;
//! 3. peak RSS of a real `taskprof profile` run and of this benchmark;
//! 4. time from start to the first sample (load, attach, first event).
//!
//! 5. the agent's steady state on a busy host with process churn, at 19 Hz
//!    and 99 Hz: CPU seconds per wall second (user + system + BPF run time)
//!    and RSS at start and end. `TASKPROF_BENCH_AGENT_SECS` sets each run's
//!    length (default 180).
//!
//! 6. the unwinder (`unwind`): BPF cost per sample walking .eh_frame
//!    tables against the kernel's frame-pointer walk, on a C program built
//!    without frame pointers; table build time per MB of `.eh_frame`; and
//!    the table memory every binary mapped on this host would take.
//!
//! 7. stack completeness (`completeness`): the share of samples whose stack
//!    reaches the thread's root, for taskprof, taskprof `--unwind=fp` and
//!    `perf record --call-graph dwarf`, on the unwinding fixtures (C, C++
//!    and Rust built without frame pointers) and on Debian's xz and
//!    sqlite3, with the integration tests' workloads and root rules.
//!
//! 8. Python frames (`python`): BPF cost per sample, the agent's time to
//!    close a window for 200 CPython processes, and its CPU and RSS under
//!    CPython churn, each with `--python=on` and `off`; and the share of
//!    samples naming a Python chain, per CPython version (see python/mod.rs).
//!
//! 9. OTLP (`otlp`): for the synthetic host of part 2, the bytes of one
//!    window as pprof (one gzipped profile per process, what the Pyroscope
//!    and Parca uploads carry) and as one OTLP request (raw and gzipped),
//!    and the time to build and encode each; then the agent's steady state
//!    of part 5 at 19 Hz with `--upload-protocol otlp`.
//!
//! `cargo bench --bench taskprof -- processing` runs one part (rss, bpf,
//! startup, processing, agent, unwind, completeness, python, otlp).

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use taskprof::bpf::{ProcessEvent, RawSample, Sampler, SamplerConfig, Stack};
use taskprof::pprof::{build_profile, encode_gzip, ProfileMeta, SampleLabels};
use taskprof::process::{ProcessKey, ProcessTable};
use taskprof::symbolize::samples::symbolize_samples;
use taskprof::symbolize::Symbolizer;
use taskprof::unwind::manager::{read_unwind_file, UnwindManager, ROW_BYTES};
use taskprof::unwind::table::build_table;

// The integration tests' fixtures, workloads and stack readers; the bench
// uses only a few of them.
#[path = "../tests/integration/common/mod.rs"]
#[allow(dead_code)]
mod common;
mod python;

const PROCESSES: usize = 200;
const STACKS: usize = 5_000;

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the benchmark loads BPF programs: run it as root (sudo cargo bench --bench taskprof)");
        std::process::exit(1);
    }
    // `cargo bench --bench taskprof -- NAME...` runs only the named parts.
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    println!("| measure | result |");
    println!("|---|---|");
    // First, while this process is small: a child's peak RSS includes the
    // parent's resident size at the moment it execs.
    if wanted("rss") {
        cli_peak_rss();
    }
    if wanted("bpf") {
        bpf_cost_per_sample();
    }
    if wanted("startup") {
        start_to_first_sample();
    }
    if wanted("processing") {
        processing_synthetic_host();
    }
    if wanted("agent") {
        for frequency in [19, 99] {
            agent_steady_state(frequency, "pyroscope");
        }
    }
    if wanted("unwind") {
        unwind_cost_per_sample();
        table_build_rate();
        host_table_memory();
    }
    if wanted("completeness") {
        stack_completeness();
    }
    if wanted("python") {
        python::run();
    }
    if wanted("otlp") {
        otlp_window_encoding();
        agent_steady_state(19, "otlp");
    }
    println!(
        "| benchmark process peak RSS | {:.1} MiB |",
        max_rss_kib(libc::RUSAGE_SELF) as f64 / 1024.0
    );
}

/// Keeps `n` threads spinning until dropped, so cpu-clock has work to sample.
struct Spinners(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>);

impl Spinners {
    fn start(n: usize) -> Spinners {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..n)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                })
            })
            .collect();
        Spinners(stop, handles)
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        for handle in self.1.drain(..) {
            let _ = handle.join();
        }
    }
}

fn bpf_cost_per_sample() {
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(sysctl).unwrap_or_else(|_| "0".into());
    std::fs::write(sysctl, "1").expect("enable kernel.bpf_stats_enabled");
    let _spin = Spinners::start(2);
    for frequency in [99, 999] {
        let mut sampler = Sampler::start(SamplerConfig::sized_for(frequency, 10, 2)).expect("start sampler");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            sampler.process_events(Duration::from_millis(100));
        }
        sampler.stop();
        let (run_ns, runs) = sampler.program_run_stats().expect("program run stats");
        let read_started = Instant::now();
        let raw = sampler.drain_window().expect("read samples").samples;
        let read = read_started.elapsed();
        println!(
            "| BPF cost per sample at {frequency} Hz (10 s, 2 busy CPUs) | {:.0} ns ({runs} runs) |",
            run_ns as f64 / runs.max(1) as f64
        );
        println!(
            "| map read at end of that run ({} buckets) | {:.2} ms |",
            raw.len(),
            read.as_secs_f64() * 1e3
        );
    }
    std::fs::write(sysctl, before.trim()).expect("restore kernel.bpf_stats_enabled");
}

fn start_to_first_sample() {
    let _spin = Spinners::start(1);
    let mut loads = Vec::new();
    let mut firsts = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        let sampler = Sampler::start(SamplerConfig::sized_for(99, 30, 2)).expect("start sampler");
        loads.push(started.elapsed());
        while sampler.live_stats().expect("stats").samples == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        firsts.push(started.elapsed());
    }
    loads.sort();
    firsts.sort();
    println!(
        "| load + attach (median of 7) | {:.1} ms |",
        loads[3].as_secs_f64() * 1e3
    );
    println!(
        "| start to first sample at 99 Hz (median of 7) | {:.1} ms |",
        firsts[3].as_secs_f64() * 1e3
    );
}

/// Child processes killed on drop.
struct Host(Vec<Child>);

impl Drop for Host {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_host() -> Host {
    let programs: [(&str, &[&str]); 4] = [
        ("sleep", &["300"]),
        ("cat", &[]),
        ("tail", &["-f", "/dev/null"]),
        ("bash", &[]),
    ];
    let children = (0..PROCESSES)
        .map(|i| {
            let (program, args) = programs[i % programs.len()];
            Command::new(program)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {program}: {e}"))
        })
        .collect();
    Host(children)
}

/// A small deterministic generator (xorshift), so every run draws the same stacks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn kernel_text_addresses() -> Vec<u64> {
    let text = std::fs::read_to_string("/proc/kallsyms").expect("read /proc/kallsyms");
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
            matches!(parts.next()?, "t" | "T").then_some(addr)
        })
        .filter(|&a| a != 0)
        .collect()
}

fn synthetic_samples(host: &Host, processes: &mut ProcessTable) -> Vec<RawSample> {
    let mut rng = Rng(0x5eed);
    let kernel = kernel_text_addresses();
    assert!(!kernel.is_empty(), "no kernel text symbols visible in /proc/kallsyms");
    let pids: Vec<u32> = host.0.iter().map(|c| c.id()).collect();
    for &pid in &pids {
        processes.observe(ProcessKey::new(pid, 1));
    }
    (0..STACKS)
        .map(|i| {
            let pid = pids[i % pids.len()];
            let mappings = &processes.get(ProcessKey::new(pid, 1)).expect("captured").mappings;
            let depth = 8 + (rng.next() % 17) as usize;
            let user: Vec<u64> = (0..depth)
                .map(|_| {
                    let m = &mappings[(rng.next() as usize) % mappings.len()];
                    m.start + rng.next() % (m.end - m.start)
                })
                .collect();
            let kernel = if i % 3 == 0 {
                Stack::Frames(
                    (0..6)
                        .map(|_| kernel[(rng.next() as usize) % kernel.len()] + 4)
                        .collect(),
                )
            } else {
                Stack::Empty
            };
            RawSample {
                tgid: pid,
                incarnation: 1,
                tid: pid,
                comm: "synthetic".into(),
                user: Stack::Frames(user),
                kernel,
                python: Default::default(),
                count: 1 + rng.next() % 20,
            }
        })
        .collect()
}

fn process_once(raw: &[RawSample], processes: &mut ProcessTable, symbolizer: &mut Symbolizer) -> (Duration, usize) {
    let out = std::env::temp_dir().join("taskprof-bench.pb.gz");
    let started = Instant::now();
    let samples = symbolize_samples(raw, processes, symbolizer, None);
    let meta = ProfileMeta {
        frequency_hz: 99,
        start: SystemTime::now(),
        duration: Duration::from_secs(30),
        sample_labels: SampleLabels::All,
    };
    let bytes = encode_gzip(&build_profile(&samples, &meta)).expect("encode");
    let mut file = std::fs::File::create(&out).expect("create output");
    file.write_all(&bytes).expect("write output");
    file.sync_all().expect("sync output");
    let elapsed = started.elapsed();
    let _ = std::fs::remove_file(out);
    (elapsed, bytes.len())
}

fn processing_synthetic_host() {
    let host = spawn_host();
    std::thread::sleep(Duration::from_millis(300)); // let them reach their main loops
    let mut processes = ProcessTable::new();
    let raw = synthetic_samples(&host, &mut processes);
    let mut symbolizer = Symbolizer::new();
    let (cold, size) = process_once(&raw, &mut processes, &mut symbolizer);
    let (warm, _) = process_once(&raw, &mut processes, &mut symbolizer);
    println!(
        "| end of sampling to file, {PROCESSES} processes / {STACKS} stacks, cold cache | {:.0} ms ({} KiB file) |",
        cold.as_secs_f64() * 1e3,
        size / 1024
    );
    println!(
        "| end of sampling to file, {PROCESSES} processes / {STACKS} stacks, warm cache | {:.0} ms |",
        warm.as_secs_f64() * 1e3
    );
    drop(host);
}

/// One window of the synthetic host, encoded as the pprof protocols send it
/// (a gzipped profile per process) and as one OTLP request (a resource per
/// process, one dictionary): bytes and build-and-encode time, median of 5
/// after a warm-up that also warms the symbol cache.
fn otlp_window_encoding() {
    use prost::Message as _;
    use taskprof::otlp::{build_window, export_request, AttributeValue, ResourceInput};

    let host = spawn_host();
    std::thread::sleep(Duration::from_millis(300)); // let them reach their main loops
    let mut processes = ProcessTable::new();
    let raw = synthetic_samples(&host, &mut processes);
    let mut symbolizer = Symbolizer::new();
    let samples = symbolize_samples(&raw, &mut processes, &mut symbolizer, None);
    drop(host);
    let mut by_process: std::collections::BTreeMap<u32, Vec<_>> = std::collections::BTreeMap::new();
    for sample in samples {
        by_process.entry(sample.pid).or_default().push(sample);
    }
    let meta = ProfileMeta {
        frequency_hz: 19,
        start: SystemTime::now(),
        duration: Duration::from_secs(10),
        sample_labels: SampleLabels::ThreadName,
    };
    let median = |mut runs: Vec<Duration>| {
        runs.sort();
        runs[runs.len() / 2]
    };
    let mut pprof_runs = Vec::new();
    let (mut pprof_raw, mut pprof_gz) = (0, 0);
    for _ in 0..6 {
        let started = Instant::now();
        let (mut raw_bytes, mut gz_bytes) = (0, 0);
        for samples in by_process.values() {
            let profile = build_profile(samples, &meta);
            raw_bytes += profile.encoded_len();
            gz_bytes += encode_gzip(&profile).expect("encode").len();
        }
        pprof_runs.push(started.elapsed());
        (pprof_raw, pprof_gz) = (raw_bytes, gz_bytes);
    }
    let mut otlp_runs = Vec::new();
    let (mut otlp_raw, mut otlp_gz) = (0, 0);
    for _ in 0..6 {
        let started = Instant::now();
        let inputs: Vec<ResourceInput> = by_process
            .iter()
            .map(|(pid, samples)| ResourceInput {
                attributes: vec![
                    (
                        "service.name".to_string(),
                        AttributeValue::Text(samples[0].process_name.clone()),
                    ),
                    ("process.pid".to_string(), AttributeValue::Int(i64::from(*pid))),
                ],
                samples,
            })
            .collect();
        let window = build_window(&inputs, &meta);
        let parts: Vec<Vec<u8>> = window.resources.iter().map(|r| r.encode_to_vec()).collect();
        let dictionary = window.dictionary.encode_to_vec();
        let request = export_request(parts.iter().map(Vec::as_slice), &dictionary);
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&request).expect("gzip");
        let gz = encoder.finish().expect("gzip");
        otlp_runs.push(started.elapsed());
        (otlp_raw, otlp_gz) = (request.len(), gz.len());
    }
    // The first run of each warmed caches and allocator; leave it out.
    let (pprof_time, otlp_time) = (median(pprof_runs[1..].to_vec()), median(otlp_runs[1..].to_vec()));
    let processes = by_process.len();
    println!(
        "| one window of {processes} processes / {STACKS} stacks as pprof, a profile per process: bytes raw / gzipped, build+encode+gzip (median of 5) | \
         {} KiB / {} KiB, {:.0} ms |",
        pprof_raw / 1024,
        pprof_gz / 1024,
        pprof_time.as_secs_f64() * 1e3
    );
    println!(
        "| the same window as one OTLP request, a resource per process: bytes raw / gzipped, build+encode+gzip (median of 5) | \
         {} KiB / {} KiB, {:.0} ms |",
        otlp_raw / 1024,
        otlp_gz / 1024,
        otlp_time.as_secs_f64() * 1e3
    );
}

fn max_rss_kib(who: libc::c_int) -> i64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage.ru_maxrss
    }
}

fn cli_peak_rss() {
    // Busy loops in separate small processes: in-process spinners would make
    // the profiler symbolize this large benchmark binary instead.
    let _spin = busy_shells(2);
    let out = std::env::temp_dir().join("taskprof-bench-cli.pb.gz");
    let own = max_rss_kib(libc::RUSAGE_SELF);
    // Reaped below with wait4, which also reports the child's own rusage.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_taskprof"))
        .args(["profile", "--duration", "10s", "--output"])
        .arg(&out)
        .stderr(Stdio::null())
        .spawn()
        .expect("run taskprof profile");
    let mut status = 0;
    // SAFETY: wait4 on our own child with valid out-pointers.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage);
        usage
    };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "taskprof profile failed: {status}"
    );
    let _ = std::fs::remove_file(out);
    println!(
        "| `taskprof profile --duration 10s` whole host, peak RSS | {:.1} MiB (bench was {:.1} MiB at spawn) |",
        usage.ru_maxrss as f64 / 1024.0,
        own as f64 / 1024.0
    );
}

/// CPU time of a process (user + system), in seconds.
fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read agent stat");
    let rest = &stat[stat.rfind(')').expect("stat has a comm") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the comm.
    let ticks: f64 = fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Total BPF run time of every program the process holds, in seconds.
fn process_bpf_seconds(pid: u32) -> f64 {
    let mut total = 0u64;
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0.0;
    };
    for entry in entries.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if !info.contains("prog_type:") {
            continue;
        }
        if let Some(ns) = info.lines().find_map(|l| l.strip_prefix("run_time_ns:")) {
            total += ns.trim().parse::<u64>().unwrap_or(0);
        }
    }
    total as f64 / 1e9
}

/// A process's CPU use over a stretch of wall time: user+sys and BPF
/// seconds per wall second, and its RSS in MiB before and after.
struct Usage {
    user: f64,
    bpf: f64,
    rss_before: f64,
    rss_after: f64,
}

/// Measures process `pid`'s [`Usage`] over the next `seconds`.
fn measure_usage(pid: u32, seconds: u64) -> Usage {
    let (cpu0, bpf0, rss_before, started) = (
        process_cpu_seconds(pid),
        process_bpf_seconds(pid),
        process_rss_mib(pid),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(seconds));
    let wall = started.elapsed().as_secs_f64();
    Usage {
        user: (process_cpu_seconds(pid) - cpu0) / wall,
        bpf: (process_bpf_seconds(pid) - bpf0) / wall,
        rss_before,
        rss_after: process_rss_mib(pid),
    }
}

fn process_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read agent status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn agent_steady_state(frequency: u64, protocol: &str) {
    let seconds: u64 = std::env::var("TASKPROF_BENCH_AGENT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(sysctl).unwrap_or_else(|_| "0".into());
    std::fs::write(sysctl, "1").expect("enable kernel.bpf_stats_enabled");
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = dir.path().join("spool");
    let (receiver, received) = accepting_sink();
    let mut agent = Host(vec![Command::new(env!("CARGO_BIN_EXE_taskprof"))
        .args([
            "agent",
            "--upload-protocol",
            protocol,
            "--window",
            "10s",
            "--metrics-address",
            "127.0.0.1:0",
        ])
        .args(["--frequency", &frequency.to_string(), "--log-level", "warn"])
        .args(["--upload-url", &format!("http://{receiver}")])
        .arg("--spool-dir")
        .arg(&spool)
        .stderr(Stdio::null())
        .spawn()
        .expect("start the agent")]);
    let pid = agent.0[0].id();
    // Two shell loops keep both CPUs busy with a typical host process.
    let _spin = busy_shells(2);
    // Process churn: a short-lived process every 50 ms, each a new pid to
    // capture, symbolize and forget.
    let churn_stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = Arc::clone(&churn_stop);
        std::thread::spawn(move || {
            let mut spawned = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = Command::new("sh")
                    .args(["-c", "i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done"])
                    .status();
                spawned += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            spawned
        })
    };
    std::thread::sleep(Duration::from_secs(15));
    let usage = measure_usage(pid, seconds);
    churn_stop.store(true, Ordering::Relaxed);
    let spawned = churn.join().unwrap_or(0);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let status = agent.0[0].wait().expect("wait for the agent");
    agent.0.clear();
    std::fs::write(sysctl, before.trim()).expect("restore kernel.bpf_stats_enabled");
    assert!(status.success(), "the agent failed: {status}");
    assert!(received.load(Ordering::Relaxed) > 0, "the agent uploaded nothing");
    let (user_share, bpf_share, rss0, rss1) = (usage.user, usage.bpf, usage.rss_before, usage.rss_after);
    let cpus = taskprof::bpf::online_cpu_count().unwrap_or(1) as f64;
    println!(
        "| agent ({protocol}) at {frequency} Hz, {seconds} s, 2 busy CPUs, {spawned} processes churned: CPU s per wall s (user+sys / BPF) | \
         {:.5} ({:.5} / {:.5}) = {:.3}% of the host's CPU |",
        user_share + bpf_share,
        user_share,
        bpf_share,
        100.0 * (user_share + bpf_share) / cpus
    );
    println!(
        "| agent ({protocol}) at {frequency} Hz: RSS after 15 s / after {seconds} s more | {rss0:.1} MiB / {rss1:.1} MiB |"
    );
}

/// A loopback HTTP server that accepts every Pyroscope ingest, so the agent
/// is measured uploading as it would in production. Returns its address and
/// a count of requests.
fn accepting_sink() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
    let addr = listener.local_addr().expect("receiver address");
    listener.set_nonblocking(true).expect("nonblocking listener");
    let seen = Arc::clone(&count);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            // Pyroscope's `/ingest` and OTLP's `/v1development/profiles`
            // alike: both take any non-empty body with a 200.
            let app = axum::Router::new().fallback(axum::routing::post(move |body: axum::body::Bytes| {
                let seen = Arc::clone(&seen);
                async move {
                    if !body.is_empty() {
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                    ""
                }
            }));
            let _ = axum::serve(listener, app).await;
        });
    });
    (addr, count)
}

/// `n` shell busy loops, killed on drop.
fn busy_shells(n: usize) -> Host {
    Host(
        (0..n)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .expect("spawn a busy loop")
            })
            .collect(),
    )
}

/// Builds `tests/fixtures/unwind/qsort_chain.c` without frame pointers.
fn build_qsort_fixture() -> std::path::PathBuf {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unwind/qsort_chain.c");
    let output = std::env::temp_dir().join(format!("taskprof-bench-qsort-{}", std::process::id()));
    let status = Command::new("gcc")
        .args(["-O2", "-fomit-frame-pointer", "-g", "-o"])
        .arg(&output)
        .arg(&source)
        .status()
        .expect("run gcc (scripts/install-deps.sh installs it)");
    assert!(status.success(), "gcc failed to build {}", source.display());
    output
}

/// Runs the sampler at 99 Hz for 10 s over two copies of the qsort
/// fixture, loading their unwind tables as the one-shot mode does.
fn unwind_run(table_unwind: bool, fixture: &std::path::Path) -> (u64, u64, f64, u64, u64) {
    let host = Host(
        (0..2)
            .map(|_| {
                Command::new(fixture)
                    .arg("30")
                    .spawn()
                    .expect("spawn the qsort fixture")
            })
            .collect(),
    );
    let mut config = SamplerConfig::sized_for(99, 10, 2);
    config.tgids = host.0.iter().map(|c| c.id()).collect();
    config.table_unwind = table_unwind;
    let mut sampler = Sampler::start(config).expect("start sampler");
    let mut processes = ProcessTable::new();
    let mut manager = UnwindManager::new(64 << 20);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for event in sampler.process_events(Duration::from_millis(100)) {
            if let ProcessEvent::New { tgid, incarnation } = event {
                let key = ProcessKey::new(tgid, incarnation);
                processes.observe(key);
                if table_unwind {
                    manager.load_process(&mut sampler, key, &processes);
                }
            }
        }
        manager.poll(&mut sampler, &processes);
    }
    sampler.stop();
    let (run_ns, runs) = sampler.program_run_stats().expect("program run stats");
    let window = sampler.drain_window().expect("read samples");
    let (mut frames, mut samples) = (0u64, 0u64);
    for sample in &window.samples {
        frames += sample.user.frames().len() as u64 * sample.count;
        samples += sample.count;
    }
    // Per accepted sample: runs of other tasks, dropped by the pid filter,
    // are counted in run_cnt but cost next to nothing.
    (
        run_ns / window.stats.samples.max(1),
        runs,
        frames as f64 / samples.max(1) as f64,
        window.stats.samples,
        window.stats.unwind_complete,
    )
}

fn unwind_cost_per_sample() {
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(sysctl).unwrap_or_else(|_| "0".into());
    std::fs::write(sysctl, "1").expect("enable kernel.bpf_stats_enabled");
    let fixture = build_qsort_fixture();
    for (name, table_unwind) in [("frame pointers (--unwind=fp)", false), (".eh_frame tables", true)] {
        let (ns, runs, frames, samples, complete) = unwind_run(table_unwind, &fixture);
        println!(
            "| BPF cost per sample, {name}, 2 × qsort without frame pointers, 99 Hz, 10 s | {ns} ns ({samples} samples of {runs} runs, {frames:.1} user frames per stack, {complete} walked to the root) |"
        );
    }
    let _ = std::fs::remove_file(&fixture);
    std::fs::write(sysctl, before.trim()).expect("restore kernel.bpf_stats_enabled");
}

/// Every ELF file in the usual library and binary directories.
fn host_elf_files() -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for dir in ["/usr/lib/x86_64-linux-gnu", "/usr/bin", "/usr/sbin"] {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if is_file && (dir != "/usr/lib/x86_64-linux-gnu" || name.contains(".so")) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn table_build_rate() {
    let files = host_elf_files();
    let (mut cfi, mut rows, mut built, mut elapsed) = (0u64, 0u64, 0usize, Duration::ZERO);
    for path in &files {
        let started = Instant::now();
        let table = read_unwind_file(path).and_then(|bytes| build_table(&bytes));
        let took = started.elapsed();
        if let Ok(table) = table {
            elapsed += took;
            cfi += table.cfi_bytes as u64;
            rows += table.rows.len() as u64;
            built += 1;
        }
    }
    let mib = cfi as f64 / (1 << 20) as f64;
    println!(
        "| table build, {built} ELF files under /usr ({mib:.1} MiB of .eh_frame/.debug_frame, {rows} rows) | {:.2} s, {:.1} ms per MiB |",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e3 / mib.max(f64::EPSILON)
    );
}

fn host_table_memory() {
    let mut files = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        if !entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(maps) = std::fs::read_to_string(entry.path().join("maps")) else {
            continue;
        };
        for line in maps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() >= 6 && fields[1].contains('x') && fields[5].starts_with('/') {
                files.insert(fields[5].to_string());
            }
        }
    }
    let mut sizes: Vec<(u64, String)> = files
        .iter()
        .filter_map(|path| {
            let table = read_unwind_file(std::path::Path::new(path)).and_then(|bytes| build_table(&bytes));
            table.ok().map(|t| (t.rows.len() as u64 * ROW_BYTES, path.clone()))
        })
        .collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let total: u64 = sizes.iter().map(|(bytes, _)| bytes).sum();
    let largest: Vec<String> = sizes
        .iter()
        .take(3)
        .map(|(bytes, path)| {
            format!(
                "{} {:.0} KiB",
                path.rsplit('/').next().unwrap_or(path),
                *bytes as f64 / 1024.0
            )
        })
        .collect();
    println!(
        "| unwind table memory, all {} files mapped executable on this host | {:.1} MiB (largest: {}) |",
        sizes.len(),
        total as f64 / (1 << 20) as f64,
        largest.join(", ")
    );
}

/// The share of `workload`'s samples whose stack reaches the root in a 4 s
/// `taskprof profile --pid` with `args`.
fn taskprof_completeness(mut workload: common::unwind::Workload, args: &[&str]) -> common::unwind::Share {
    use common::unwind::{stack_reaches_root, stack_share};
    let recorded = common::record_pprof_with(&[workload.pid()], "4s", args);
    workload.assert_running();
    let stacks = common::ProfileView::new(&recorded.profile).stacks_for_pid(workload.pid());
    stack_share(&stacks, stack_reaches_root)
}

/// The same for `perf record --call-graph dwarf` at `frequency` Hz.
fn perf_completeness(mut workload: common::unwind::Workload, frequency: u32) -> common::unwind::Share {
    use common::unwind::{perf_record_pids, perf_samples_for_pid, perf_share, PerfSample};
    let samples = perf_record_pids(&[workload.pid()], Duration::from_secs(4), frequency);
    workload.assert_running();
    perf_share(
        &perf_samples_for_pid(&samples, workload.pid()),
        PerfSample::reaches_root,
    )
}

fn stack_completeness() {
    use common::unwind::{DebianWorkload, UnwindFixture};
    let row = |name: &str, dwarf: common::unwind::Share, fp: common::unwind::Share, perf: common::unwind::Share| {
        println!(
            "| stack completeness, {name}: taskprof / taskprof --unwind=fp / perf --call-graph dwarf | {:.1}% / {:.1}% / {:.1}% ({} / {} / {} samples) |",
            dwarf.percent(),
            fp.percent(),
            perf.percent(),
            dwarf.total,
            fp.total,
            perf.total
        );
    };
    for fixture in UnwindFixture::ALL {
        let dwarf = taskprof_completeness(fixture.spawn(12.0), &["--frequency", "499"]);
        let fp = taskprof_completeness(fixture.spawn(12.0), &["--frequency", "499", "--unwind", "fp"]);
        let perf = perf_completeness(fixture.spawn(12.0), 499);
        row(&format!("{} (499 Hz)", fixture.name()), dwarf, fp, perf);
    }
    for workload in [DebianWorkload::Xz, DebianWorkload::Sqlite3] {
        let dwarf = taskprof_completeness(workload.spawn(), &[]);
        let fp = taskprof_completeness(workload.spawn(), &["--unwind", "fp"]);
        let perf = perf_completeness(workload.spawn(), 99);
        row(&format!("Debian {} (99 Hz)", workload.name()), dwarf, fp, perf);
    }
}
