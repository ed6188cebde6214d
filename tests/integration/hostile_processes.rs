//! Processes that try, on purpose or by accident, to crash, hang or balloon
//! the agent: thousands of mappings, ELF files whose section headers lie or
//! claim gigabytes of `.eh_frame`, a binary replaced while it runs, thread
//! names with newlines and invalid UTF-8, perf maps that are FIFOs,
//! symlinks, garbage or a gigabyte long, exec storms and pid reuse.
//!
//! Each test runs the real agent on such processes and checks that it keeps
//! closing windows within a bounded time, that its peak RSS and its open
//! file descriptors stay under [`MAX_PEAK_RSS_KIB`] and [`MAX_FDS`], that
//! every sample is still accounted for, and that the hostile thing is
//! counted in the metrics or visible in the profiles. Each prints what it
//! observed, so a CI log shows the outcome.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::agent_run::{assert_no_sample_lost, AgentCommand, AgentExit, MetricsPage, RunningAgent};
use crate::common::receivers::{Ingest, Receiver};
use crate::common::unwind::XorShift;
use crate::common::{
    build_cached, clang, path_arg, run_taskprof, scratch_dir, ChildGuard, Fixture, FixtureProgram, ProfileView, Stack,
    FIXTURE_CFLAGS, RUN_TIMEOUT,
};

/// The agent's peak RSS (VmHWM) may not exceed this in any of these tests.
/// A debug build profiling a few processes needs well under half of it;
/// reading a hostile file whole would need gigabytes.
const MAX_PEAK_RSS_KIB: u64 = 400 * 1024;
/// Nor may its open file descriptors.
const MAX_FDS: usize = 256;
/// How long the windows a test waits for may take to arrive.
const WINDOWS_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// `tests/fixtures/hostile.c`, built without a build id so that each copy
/// of it is a table of its own (tables are shared by build id).
fn hostile_binary() -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile.c");
    let flags = [FIXTURE_CFLAGS, &["-pthread", "-Wl,--build-id=none"]].concat();
    build_cached("hostile", &source, &clang(), &flags, "fixtures")
}

fn spawn(program: &Path, args: &[&str]) -> ChildGuard {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|err| panic!("failed to start `{}`: {err}", program.display()));
    ChildGuard(child)
}

/// What the agent cost: its peak RSS and its open file descriptors now.
#[derive(Debug, Clone, Copy)]
struct Cost {
    peak_rss_kib: u64,
    fds: usize,
}

fn cost_of(pid: u32) -> Cost {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read the agent's status");
    let peak_rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmHWM in the agent's status");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the agent's fds")
        .count();
    Cost { peak_rss_kib, fds }
}

/// What one hostile run produced.
struct Outcome {
    exit: AgentExit,
    ingests: Vec<Ingest>,
    metrics: MetricsPage,
    cost: Cost,
    took: Duration,
}

impl Outcome {
    /// Every stack of `pid` that arrived.
    fn stacks_of(&self, pid: u32) -> Vec<Stack> {
        self.ingests
            .iter()
            .flat_map(|ingest| ProfileView::new(&ingest.profile).stacks_for_pid(pid))
            .collect()
    }

    /// The metric's value for one label set, 0 when absent.
    fn metric(&self, name: &str, labels: &str) -> f64 {
        self.metrics.samples(name).get(labels).copied().unwrap_or(0.0)
    }

    /// Log events whose message starts with `message`.
    fn logged(&self, message: &str) -> usize {
        self.exit
            .lines
            .iter()
            .filter(|line| line.message().is_some_and(|m| m.starts_with(message)))
            .count()
    }
}

/// Runs the agent (1 s windows) on `pids` until `windows` windows closed,
/// scrapes its metrics and cost, stops it, and checks the bounds and the
/// sample account.
fn run_agent(pids: &[u32], windows: usize, during: impl FnOnce(&mut RunningAgent)) -> Outcome {
    let receiver = Receiver::accepting();
    let spool = scratch_dir();
    let started = Instant::now();
    let mut command = AgentCommand::new("pyroscope", &receiver.url(), spool.path()).set("--log-level", "debug");
    for &pid in pids {
        command = command.pid(pid);
    }
    let mut agent = command.spawn();
    agent.wait_until_sampling();
    during(&mut agent);
    agent.wait_for_windows(windows, WINDOWS_TIMEOUT);
    let metrics = agent.scrape();
    let cost = cost_of(agent.pid());
    let exit = agent.terminate(EXIT_TIMEOUT);
    let took = started.elapsed();
    exit.assert_success();
    receiver.assert_all_valid();
    let ingests = receiver.ingests();
    assert_no_sample_lost(&exit, &ingests, 0);
    eprintln!(
        "hostile run: {} windows in {took:?}, peak RSS {} KiB, {} fds",
        exit.windows().len(),
        cost.peak_rss_kib,
        cost.fds
    );
    assert!(
        cost.peak_rss_kib <= MAX_PEAK_RSS_KIB,
        "the agent's peak RSS {} KiB exceeds {MAX_PEAK_RSS_KIB} KiB",
        cost.peak_rss_kib
    );
    assert!(cost.fds <= MAX_FDS, "the agent holds {} fds", cost.fds);
    Outcome {
        exit,
        ingests,
        metrics,
        cost,
        took,
    }
}

fn names(stacks: &[Stack]) -> Vec<String> {
    stacks.iter().flat_map(Stack::function_names).collect()
}

#[test]
fn a_process_with_ten_thousand_mappings_is_profiled_within_bounds() {
    let mut child = spawn(&hostile_binary(), &["maps", "10000", "30"]);
    let mut ready = String::new();
    BufReader::new(child.0.stdout.take().expect("piped stdout"))
        .read_line(&mut ready)
        .expect("read the fixture's stdout");
    assert_eq!(
        ready.trim(),
        "mapped 10000",
        "the fixture could not map its executable 10,000 times"
    );
    let pid = child.id();
    let outcome = run_agent(&[pid], 3, |_| {});
    let stacks = outcome.stacks_of(pid);
    assert!(
        names(&stacks).iter().any(|n| n == "hostile_hot"),
        "no sample of the process names hostile_hot"
    );
    let over = outcome.metric("taskprof_unwind_mappings_over_limit_total", "");
    eprintln!(
        "10,000 mappings: {over} left out of the unwinder's search, in {:?}",
        outcome.took
    );
    assert!(
        over >= 9_000.0,
        "mappings beyond the unwinder's 256 are counted: {over}"
    );
    // Samples outside the searched mappings ask for a reload, which cannot
    // help: reloads are put off (each re-read 10,000 mappings, and they
    // once made 1 s windows take 10 s).
    let loads = outcome.logged("a process has more executable mappings than the unwinder searches");
    assert!((1..=6).contains(&loads), "the process was loaded {loads} times");
}

/// Offsets of the ELF fields and section header fields these tests edit.
const E_SHOFF: usize = 0x28;
const E_SHNUM: usize = 0x3c;
const E_SHSTRNDX: usize = 0x3e;
const SH_OFFSET: usize = 24;
const SH_SIZE: usize = 32;

fn read_u16(bytes: &[u8], at: usize) -> usize {
    u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn write_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// The file offset of the section header named `name`.
fn section_header(bytes: &[u8], name: &str) -> usize {
    let shoff = read_u64(bytes, E_SHOFF) as usize;
    let header = |index: usize| shoff + index * 64;
    let strings = read_u64(bytes, header(read_u16(bytes, E_SHSTRNDX)) + SH_OFFSET) as usize;
    (0..read_u16(bytes, E_SHNUM))
        .map(header)
        .find(|&at| {
            let start = strings + u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
            bytes[start..].split(|&b| b == 0).next() == Some(name.as_bytes())
        })
        .unwrap_or_else(|| panic!("no {name} section in the fixture"))
}

/// Writes a copy of the hostile fixture, edited by `edit`, to `dir/name`,
/// executable, and returns its path.
fn edited_copy(dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(hostile_binary()).expect("read the fixture");
    edit(&mut bytes);
    let path = dir.join(name);
    std::fs::write(&path, &bytes).expect("write the edited copy");
    let executable = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
    std::fs::set_permissions(&path, executable).expect("chmod");
    path
}

#[test]
fn executables_with_a_huge_or_truncated_eh_frame_cost_bounded_memory() {
    let dir = scratch_dir();
    // A .eh_frame that claims 3 GiB, in a sparse file that really is that
    // long (all zeros past the code), and one that ends past the file.
    let huge_size: u64 = 3 << 30;
    let mut huge_end = 0;
    let huge = edited_copy(dir.path(), "huge_eh_frame", |bytes| {
        let header = section_header(bytes, ".eh_frame");
        write_u64(bytes, header + SH_SIZE, huge_size);
        huge_end = read_u64(bytes, header + SH_OFFSET) + huge_size;
    });
    std::fs::OpenOptions::new()
        .write(true)
        .open(&huge)
        .and_then(|file| file.set_len(huge_end))
        .expect("extend the file sparsely");
    let truncated = edited_copy(dir.path(), "cut_eh_frame", |bytes| {
        let header = section_header(bytes, ".eh_frame");
        let offset = read_u64(bytes, header + SH_OFFSET);
        let past_end = bytes.len() as u64 - offset + (1 << 20);
        write_u64(bytes, header + SH_SIZE, past_end);
    });
    let children = [spawn(&huge, &["burn", "30"]), spawn(&truncated, &["burn", "30"])];
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let outcome = run_agent(&pids, 3, |_| {});
    let failed = outcome.metric("taskprof_unwind_tables_failed_total", "");
    eprintln!(
        "huge and truncated .eh_frame: {failed} tables failed, peak RSS {} KiB",
        outcome.cost.peak_rss_kib
    );
    assert!(failed >= 2.0, "both files' tables fail and are counted: {failed}");
    assert!(outcome.logged("no unwind table for a file: its code is walked by frame pointers") >= 2);
    // Their code is still walked, by frame pointers.
    for pid in pids {
        let stacks = outcome.stacks_of(pid);
        assert!(
            names(&stacks).iter().any(|n| n == "hostile_hot"),
            "no sample of {pid} names hostile_hot"
        );
    }
}

#[test]
fn executables_whose_section_headers_lie_cannot_hurt_the_agent() {
    let dir = scratch_dir();
    let mut generator = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut random = move || generator.next();
    // The kernel runs an executable from its program headers alone, so
    // each of these still runs.
    let variants: Vec<(&str, PathBuf)> = vec![
        (
            "section headers past the end of the file",
            edited_copy(dir.path(), "past_end", |b| {
                let len = b.len() as u64;
                write_u64(b, E_SHOFF, len + 4096);
            }),
        ),
        (
            "65,535 section headers",
            edited_copy(dir.path(), "too_many", |b| {
                b[E_SHNUM..E_SHNUM + 2].copy_from_slice(&[0xff, 0xff])
            }),
        ),
        (
            "a section name table index out of range",
            edited_copy(dir.path(), "bad_strndx", |b| {
                b[E_SHSTRNDX..E_SHSTRNDX + 2].copy_from_slice(&[0xfe, 0xff])
            }),
        ),
        (
            "random offsets and sizes in every section header",
            edited_copy(dir.path(), "random", |b| {
                let shoff = read_u64(b, E_SHOFF) as usize;
                let len = b.len() as u64;
                for index in 0..read_u16(b, E_SHNUM) {
                    let at = shoff + index * 64;
                    if index != read_u16(b, E_SHSTRNDX) {
                        write_u64(b, at + SH_OFFSET, random() % (len * 2));
                        write_u64(b, at + SH_SIZE, random() >> (random() % 64));
                    }
                }
            }),
        ),
        (
            ".eh_frame pointing at the code",
            edited_copy(dir.path(), "eh_is_text", |b| {
                let text = section_header(b, ".text");
                let eh = section_header(b, ".eh_frame");
                let (offset, size) = (read_u64(b, text + SH_OFFSET), read_u64(b, text + SH_SIZE));
                write_u64(b, eh + SH_OFFSET, offset);
                write_u64(b, eh + SH_SIZE, size);
            }),
        ),
    ];
    let children: Vec<ChildGuard> = variants.iter().map(|(_, path)| spawn(path, &["burn", "30"])).collect();
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let outcome = run_agent(&pids, 3, |_| {});
    for ((what, _), pid) in variants.iter().zip(&pids) {
        let samples: i64 = outcome.stacks_of(*pid).iter().map(|s| s.count).sum();
        eprintln!("{what}: {samples} samples delivered");
        assert!(samples > 0, "{what}: no sample of the process arrived");
    }
    let failed = outcome.metric("taskprof_unwind_tables_failed_total", "");
    eprintln!("lying section headers: {failed} tables failed");
    assert!(
        failed >= 3.0,
        "the files whose headers cannot be read are counted: {failed}"
    );
}

#[test]
fn a_binary_deleted_and_replaced_while_mapped_keeps_its_own_symbols() {
    let dir = scratch_dir();
    let app = dir.path().join("app");
    std::fs::copy(hostile_binary(), &app).expect("copy the fixture");
    let child = spawn(&app, &["burn", "30"]);
    thread::sleep(Duration::from_millis(200));
    // Replaced the way package managers do it: unlinked, then a different
    // program written under the same name.
    std::fs::remove_file(&app).expect("delete the running binary");
    std::fs::copy(FixtureProgram::Chain.executable(), &app).expect("write another program in its place");
    let pid = child.id();
    let outcome = run_agent(&[pid], 3, |_| {});
    let stacks = outcome.stacks_of(pid);
    let names = names(&stacks);
    eprintln!(
        "deleted and replaced: {} samples",
        stacks.iter().map(|s| s.count).sum::<i64>()
    );
    assert!(
        stacks
            .iter()
            .any(|s| s.contains_in_order(&["main", "hostile_outer", "hostile_hot"])),
        "the running (deleted) binary's functions are named: {names:?}"
    );
    for chain_only in ["middle", "outer"] {
        assert!(
            !names.iter().any(|n| n == chain_only),
            "`{chain_only}` comes from the replacement, which the process never ran"
        );
    }
}

#[test]
fn thread_names_with_newlines_and_invalid_utf8_stay_data() {
    let child = spawn(&hostile_binary(), &["names", "30"]);
    thread::sleep(Duration::from_millis(200));
    let pid = child.id();
    let outcome = run_agent(&[pid], 3, |_| {});
    let mut thread_names = std::collections::BTreeSet::new();
    for ingest in &outcome.ingests {
        let view = ProfileView::new(&ingest.profile);
        for sample in &ingest.profile.sample {
            if let Some(name) = view.label_str(sample, "thread_name") {
                thread_names.insert(name.to_string());
            }
        }
    }
    eprintln!("thread names as delivered: {thread_names:?}");
    assert!(thread_names.contains("evil\nname;x"), "{thread_names:?}");
    assert!(
        thread_names.contains("\u{fffd}\u{fffd};bad\nname"),
        "invalid UTF-8 is replaced, the rest kept: {thread_names:?}"
    );

    // Folded stacks keep one stack per line whatever the names hold.
    let dir = scratch_dir();
    let output = dir.path().join("names.folded");
    let args = [
        "profile",
        "--duration",
        "1s",
        "--pid",
        &pid.to_string(),
        "-o",
        path_arg(&output),
    ];
    run_taskprof(args, dir.path(), RUN_TIMEOUT).assert_success();
    let folded = std::fs::read_to_string(&output).expect("read the folded output");
    assert!(!folded.is_empty());
    for line in folded.lines() {
        let (stack, count) = line.rsplit_once(' ').expect("`stack count` lines");
        assert!(count.parse::<u64>().is_ok(), "bad folded line {line:?}");
        assert!(
            stack.starts_with("evil:name:x;"),
            "the process name is cleaned: {line:?}"
        );
    }
}

#[test]
fn hostile_perf_maps_are_refused_or_bounded_and_counted() {
    let dir = scratch_dir();
    let jits: Vec<Fixture> = (0..4).map(|_| Fixture::spawn(FixtureProgram::Jit, 40.0)).collect();
    // Each writes its perf map as it starts.
    let maps: Vec<PathBuf> = jits
        .iter()
        .map(|j| PathBuf::from(format!("/tmp/perf-{}.map", j.pid())))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !maps.iter().all(|m| m.is_file()) {
        assert!(
            Instant::now() < deadline,
            "the JIT fixtures did not write their perf maps"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let good = std::fs::read_to_string(&maps[0]).expect("read a perf map");
    assert!(good.contains("jitted_hot_loop"));
    let good_of = |i: usize| std::fs::read_to_string(&maps[i]).expect("read a perf map");

    // 0: a FIFO nobody writes to (opening it for reading would block).
    std::fs::remove_file(&maps[0]).expect("remove");
    let fifo = std::ffi::CString::new(path_arg(&maps[0])).expect("path");
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a node.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
    // 1: the real map, then a sparse gigabyte.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&maps[1])
        .and_then(|file| file.set_len(1 << 30))
        .expect("extend the perf map to 1 GiB");
    // 2: garbage lines and invalid UTF-8 around the real line.
    let real = good_of(2);
    let mut garbage = b"\xff\xfe\x00 garbage\nzz 10 bad\n10\n\n1 2\n0x 0x nothing\n".to_vec();
    garbage.extend_from_slice(real.as_bytes());
    garbage.extend_from_slice(b"ffffffffffffffff ffffffffffffffff wraps\n\xc3\x28 bad utf8\n");
    std::fs::write(&maps[2], garbage).expect("write garbage");
    // 3: a symlink to the real map, moved aside.
    let aside = dir.path().join("real.map");
    std::fs::copy(&maps[3], &aside).expect("copy aside");
    std::fs::remove_file(&maps[3]).expect("remove");
    std::os::unix::fs::symlink(&aside, &maps[3]).expect("symlink");

    let pids: Vec<u32> = jits.iter().map(Fixture::pid).collect();
    let outcome = run_agent(&pids, 3, |_| {});
    for map in &maps {
        let _ = std::fs::remove_file(map);
    }
    let jitted = |pid: u32| names(&outcome.stacks_of(pid)).iter().any(|n| n == "jitted_hot_loop");
    let problems = outcome.metrics.samples("taskprof_perf_map_problems_total");
    eprintln!("hostile perf maps: {problems:?}");
    assert!(outcome.metric("taskprof_perf_map_problems_total", "{problem=\"not_regular\"}") >= 1.0);
    // The gigabyte is read (its first 64 MiB) once, not every window: it
    // does not change.
    assert_eq!(
        outcome.metric("taskprof_perf_map_problems_total", "{problem=\"truncated\"}"),
        1.0
    );
    assert!(outcome.metric("taskprof_perf_map_problems_total", "{problem=\"symlink\"}") >= 1.0);
    assert!(
        outcome.logged("a process's perf map: ") >= 3,
        "each refused or cut map is logged"
    );
    assert!(!jitted(pids[0]), "a FIFO is not read");
    assert!(jitted(pids[1]), "the first 64 MiB of a 1 GiB map are read");
    assert!(jitted(pids[2]), "the valid line among garbage is read");
    assert!(!jitted(pids[3]), "a symlink is not followed");
    for pid in &pids {
        assert!(
            outcome.stacks_of(*pid).iter().map(|s| s.count).sum::<i64>() > 0,
            "samples of {pid} still arrive"
        );
    }
}

#[test]
fn a_process_that_execs_a_thousand_times_a_second_costs_bounded_state() {
    // A shell that waits for the agent, then becomes the storm: one pid,
    // thousands of programs.
    let storm = format!("sleep 3; exec {} exec 6000", path_arg(&hostile_binary()));
    let child = spawn(Path::new("/bin/sh"), &["-c", &storm]);
    let pid = child.id();
    let started = Instant::now();
    let outcome = run_agent(&[pid], 8, |_| {});
    let incarnations: u64 = outcome.exit.windows().iter().map(|w| w.processes).sum();
    let tracked = outcome.metrics.value("taskprof_tracked_processes");
    eprintln!(
        "exec storm: {incarnations} process incarnations in profiles over {:?}, {tracked} tracked at the end",
        started.elapsed()
    );
    assert!(
        names(&outcome.stacks_of(pid)).iter().any(|n| n == "hostile_outer"),
        "the storm's code is sampled and named"
    );
    assert!(incarnations >= 2, "the storm's images are told apart: {incarnations}");
    assert!(tracked < 100.0, "ended incarnations are forgotten: {tracked} tracked");
}

#[test]
fn a_pid_reused_within_a_window_never_meets_the_old_mappings() {
    let hostile = hostile_binary();
    let first = spawn(&hostile, &["burn", "4"]);
    let pid = first.id();
    let mut first = Some(first);
    let chain = FixtureProgram::Chain.executable();
    let mut second = None;
    let outcome = run_agent(&[pid], 4, |_| {
        // The first program runs into the window, exits, and the pid is
        // handed to the chain fixture: the kernel gives out the pid after
        // ns_last_pid, so set it just below and spawn, until it lands.
        if let Some(mut child) = first.take() {
            child.0.wait().expect("wait for the first program");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while second.is_none() {
            assert!(
                Instant::now() < deadline,
                "could not get pid {pid} again: other processes took it first"
            );
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).expect("write ns_last_pid");
            let child = spawn(&chain, &["3"]);
            if child.id() == pid {
                second = Some(child);
            }
        }
    });
    let stacks = outcome.stacks_of(pid);
    let mut seen = [0i64; 2];
    for stack in &stacks {
        let names = stack.function_names();
        let hostile = names.iter().any(|n| n.starts_with("hostile_"));
        let chain = names.iter().any(|n| n == "middle" || n == "outer");
        assert!(!(hostile && chain), "one stack mixes both programs: {names:?}");
        seen[usize::from(chain)] += i64::from(hostile || chain) * stack.count;
    }
    eprintln!(
        "pid reuse: {} samples of the first program, {} of the second",
        seen[0], seen[1]
    );
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "both programs of pid {pid} are in the profiles: {seen:?}"
    );
}
