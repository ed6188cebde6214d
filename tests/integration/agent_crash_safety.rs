//! The spool survives SIGKILL: the agent is killed at random points, a
//! hundred times, while it writes windows to the spool (backend down) and
//! while it replays them (backend up), and sometimes a spooled file is
//! damaged between runs, as a failing disk would. After every restart no
//! damaged window is delivered (it is quarantined as `*.corrupt`), every
//! window that was intact in the spool is delivered, in order, and exactly
//! once unless a restart logged it as resent: a kill that caught its send
//! under way, after the request and before the delivery was recorded, may
//! have left the backend with a copy. Such a window is delivered at most
//! once more per logged resend.
//!
//! Windows still in memory when the agent is killed are lost by design:
//! the spool holds what could not be delivered, not every window.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::agent_run::{assert_windows_in_order, spool_files, wait_until, AgentCommand, LogLine};
use crate::common::receivers::{Ingest, Receiver, Reply};
use crate::common::unwind::XorShift;
use crate::common::{scratch_dir, Fixture, FixtureProgram};

const KILLS: usize = 100;
/// How long a run lives after it starts sampling, at most, before its
/// SIGKILL: long enough to close a window or two, spool them and replay.
const MAX_LIFE: Duration = Duration::from_millis(3000);
/// With the backend down a window reaches the spool after its 1 s window
/// and its 1 s retry budget: runs then live at least this long, so that
/// most of them spool something before they are killed.
const MIN_LIFE_DOWN: Duration = Duration::from_millis(1800);
/// One kill in four comes at a random point of the start instead, while
/// the spool is opened, scanned and its damaged files quarantined.
const MAX_START: Duration = Duration::from_millis(1000);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// The backend stores each profile on arrival and answers this much later,
/// so that some kills fall between the two: those sends are the ones a
/// restart must count as resent.
const ANSWER_DELAY: Duration = Duration::from_millis(300);

/// A spooled window, from its file's header.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Spooled {
    /// The window's start, which is its profile's `time_nanos`.
    start_nanos: i64,
    sequence: u64,
    path: PathBuf,
}

/// The windows in the spool directory whose header can be read.
fn spooled(dir: &Path) -> Vec<Spooled> {
    spool_files(dir)
        .into_iter()
        .filter_map(|(path, _)| {
            let bytes = std::fs::read(&path).ok()?;
            let (magic, rest) = bytes.split_at_checked(8)?;
            (magic == b"TPSPOOL\0").then_some(())?;
            let u64_at = |at: usize| Some(u64::from_le_bytes(rest.get(at..at + 8)?.try_into().ok()?));
            let sequence = u64_at(4)?;
            let secs = u64_at(12)?;
            let nanos = u32::from_le_bytes(rest.get(20..24)?.try_into().ok()?);
            Some(Spooled {
                start_nanos: (secs * 1_000_000_000 + u64::from(nanos)) as i64,
                sequence,
                path,
            })
        })
        .collect()
}

/// A number below `bound` from `random`.
fn below(random: &mut XorShift, bound: u64) -> u64 {
    random.next() % bound
}

/// The sequences a run's log says it sends again because a kill caught
/// their send under way, each as often as logged.
fn resent_sequences(lines: &[LogLine]) -> Vec<u64> {
    lines
        .iter()
        .filter(|line| {
            line.message()
                .is_some_and(|m| m.starts_with("the last run stopped while sending"))
        })
        .map(|line| line.u64_field("sequence"))
        .collect()
}

fn delivered_starts(ingests: &[Ingest]) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for ingest in ingests {
        *counts.entry(ingest.profile.time_nanos).or_insert(0) += 1;
    }
    counts
}

#[test]
fn sigkill_at_random_points_never_corrupts_loses_or_reorders_the_spool() {
    let seed = std::env::var("TASKPROF_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 | 1)
                .unwrap_or(0x2545_f491_4f6c_dd1d)
        });
    eprintln!("crash safety: seed {seed} (TASKPROF_CRASH_SEED={seed} replays this run)");
    // The generator is what makes a run replayable from its seed.
    let mut random = XorShift(seed);
    let fixture = Fixture::spawn(FixtureProgram::Chain, 900.0);
    let up = Arc::new(AtomicBool::new(false));
    let receiver = {
        let up = Arc::clone(&up);
        Receiver::start(Box::new(move |_| {
            if up.load(Ordering::SeqCst) {
                Reply::accept().after(ANSWER_DELAY).stored_on_arrival()
            } else {
                Reply::status(503, "down for the test")
            }
        }))
    };
    let spool = scratch_dir();
    let command = AgentCommand::new("pyroscope", &receiver.url(), spool.path())
        .pid(fixture.pid())
        .set("--queue-capacity", "1");

    // Windows intact in the spool after some kill, and windows damaged.
    let mut intact: BTreeMap<i64, Spooled> = BTreeMap::new();
    let mut damaged: BTreeMap<i64, Spooled> = BTreeMap::new();
    // Every window seen in the spool, by sequence, and the resends the
    // runs logged, by sequence.
    let mut starts: BTreeMap<u64, i64> = BTreeMap::new();
    let mut resent: BTreeMap<u64, usize> = BTreeMap::new();
    let mut count_resends = |lines: &[LogLine]| {
        for sequence in resent_sequences(lines) {
            *resent.entry(sequence).or_insert(0) += 1;
        }
    };
    let started = Instant::now();
    for kill in 0..KILLS {
        // Down half the time (windows are spooled), up the other half
        // (the spool is replayed).
        up.store(kill % 2 == 1, Ordering::SeqCst);
        let mut agent = command.spawn();
        if below(&mut random, 4) == 0 {
            thread::sleep(Duration::from_millis(below(&mut random, MAX_START.as_millis() as u64)));
        } else {
            agent.wait_until_sampling();
            let min = if kill % 2 == 0 { MIN_LIFE_DOWN } else { Duration::ZERO };
            let spread = (MAX_LIFE - min).as_millis() as u64;
            thread::sleep(min + Duration::from_millis(below(&mut random, spread)));
        }
        let exit = agent.stop_with(libc::SIGKILL, Duration::from_secs(10));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&exit.status),
            Some(libc::SIGKILL),
            "run {kill} ended before its kill:\n{}",
            exit.stderr()
        );
        count_resends(&exit.lines);
        let delivered = delivered_starts(&receiver.ingests());
        for window in spooled(spool.path()) {
            starts.insert(window.sequence, window.start_nanos);
            if damaged.contains_key(&window.start_nanos) {
                continue;
            }
            // Now and then a window not yet delivered is damaged on disk:
            // cut short, or one byte of its profile flipped.
            if !delivered.contains_key(&window.start_nanos) && below(&mut random, 12) == 0 {
                let mut bytes = std::fs::read(&window.path).expect("read a spool file");
                if below(&mut random, 2) == 0 {
                    bytes.truncate(bytes.len() / 2);
                } else {
                    let at = 60 + below(&mut random, bytes.len() as u64 - 64) as usize;
                    bytes[at] ^= 0x5a;
                }
                std::fs::write(&window.path, bytes).expect("damage a spool file");
                intact.remove(&window.start_nanos);
                damaged.insert(window.start_nanos, window);
            } else {
                intact.insert(window.start_nanos, window);
            }
        }
    }
    let cycling = started.elapsed();

    // Last run: the backend is up until the spool is empty.
    up.store(true, Ordering::SeqCst);
    let mut agent = command.spawn();
    agent.wait_until_sampling();
    wait_until(
        "the spool to drain",
        DRAIN_TIMEOUT,
        || spool_files(spool.path()).is_empty(),
        || format!("spool: {:?}", spool_files(spool.path())),
    );
    let exit = agent.terminate(Duration::from_secs(30));
    exit.assert_success();
    count_resends(&exit.lines);
    receiver.assert_all_valid();
    let ingests = receiver.ingests();
    let delivered = delivered_starts(&ingests);

    // Resends by window start. A resent window was in the spool when the
    // run that resent it started, so a listing after a kill saw it.
    let mut resent_starts: BTreeMap<i64, usize> = BTreeMap::new();
    for (sequence, times) in &resent {
        let start = starts
            .get(sequence)
            .unwrap_or_else(|| panic!("window {sequence} was logged as resent but never seen in the spool"));
        *resent_starts.entry(*start).or_insert(0) += times;
    }
    let duplicates: usize = delivered.values().map(|n| n - 1).sum();
    let resends: usize = resent.values().sum();
    eprintln!(
        "crash safety: {KILLS} kills in {cycling:?}; {} windows seen intact in the spool, {} damaged; \
         {} profiles delivered, {} distinct windows; {resends} resends after a restart logged, \
         {duplicates} deliveries beyond the first",
        intact.len(),
        damaged.len(),
        ingests.len(),
        delivered.len()
    );
    assert!(
        intact.len() >= 10,
        "too few windows reached the spool to judge: {}",
        intact.len()
    );
    let missing: Vec<&Spooled> = intact
        .values()
        .filter(|w| !delivered.contains_key(&w.start_nanos))
        .collect();
    assert!(
        missing.is_empty(),
        "windows intact in the spool were never delivered: {missing:#?}"
    );
    for (start, window) in &damaged {
        assert!(
            !delivered.contains_key(start),
            "a damaged window was delivered: {window:?}"
        );
        let quarantined = PathBuf::from(format!("{}.corrupt", window.path.display()));
        assert!(
            quarantined.is_file(),
            "a damaged window was not quarantined: {window:?}"
        );
    }
    // A window is delivered again only after a restart that found its send
    // under way, counted it and logged it: never otherwise, and at most once
    // per such restart (the interrupted request may or may not have reached
    // the backend, so a logged resend may also be the first delivery).
    for (start, &times) in &delivered {
        let allowed = 1 + resent_starts.get(start).copied().unwrap_or(0);
        assert!(
            times <= allowed,
            "window {start} was delivered {times} times, with {} logged resends",
            allowed - 1
        );
    }
    assert!(
        duplicates <= resends,
        "{duplicates} repeated deliveries, {resends} logged resends"
    );
    assert_windows_in_order(&ingests);
    let leftovers: BTreeSet<String> = std::fs::read_dir(spool.path())
        .expect("list the spool")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.ends_with(".corrupt"))
        .collect();
    assert!(leftovers.is_empty(), "left in the spool: {leftovers:?}");
}
