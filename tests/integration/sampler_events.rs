//! The BPF program's process events as the sampler reads them: a new
//! process wakes the reader at once, while exits wait quietly in the ring
//! for the next read and are never lost.

use std::process::Command;
use std::time::{Duration, Instant};

use taskprof::bpf::{ProcessEvent, Sampler, SamplerConfig};

use crate::common::ChildGuard;

fn busy_shell(script: &str) -> ChildGuard {
    ChildGuard(Command::new("sh").args(["-c", script]).spawn().expect("spawn a shell"))
}

fn is_new(event: &ProcessEvent, pid: u32) -> bool {
    matches!(*event, ProcessEvent::New { tgid, .. } if tgid == pid)
}

fn is_gone(event: &ProcessEvent, pid: u32) -> bool {
    matches!(*event, ProcessEvent::Gone { tgid, .. } if tgid == pid)
}

/// A sampler of `pids` alone, at 99 Hz, attached.
fn sampler_of(pids: &[u32]) -> Sampler {
    let mut config = SamplerConfig::sized_for(99, 30, 2);
    config.tgids = pids.to_vec();
    Sampler::start(config).expect("load and attach the sampler (run the tests as root)")
}

/// Reads events in short waits until `pid`'s first sample is announced;
/// returns every event read.
fn read_until_new(sampler: &mut Sampler, pid: u32) -> Vec<ProcessEvent> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !seen.iter().any(|e| is_new(e, pid)) {
        assert!(Instant::now() < deadline, "no new-process event for {pid}: {seen:?}");
        seen.extend(sampler.process_events(Duration::from_millis(100)));
    }
    seen
}

/// Regression test for exits that submit without a wake-up: the kernel's
/// default wakes the reader only when it has read everything before, so an
/// unread exit would hold back the next new process's wake-up until the
/// poll timed out, and short-lived processes would be gone before they
/// were read.
#[test]
fn a_new_process_wakes_the_reader_even_behind_an_unread_exit() {
    let mut first = busy_shell("while :; do :; done");
    // Starts burning CPU (and so is first sampled) seconds later.
    let second = busy_shell("sleep 4; while :; do :; done");
    let (first_pid, second_pid) = (first.id(), second.id());
    let mut sampler = sampler_of(&[first_pid, second_pid]);
    let mut seen = read_until_new(&mut sampler, first_pid);
    // One more read with the ring empty, so that the reader is no longer
    // marked readable from the wake-up it had.
    seen.extend(sampler.process_events(Duration::ZERO));
    // The exit goes into the ring without waking anyone, while the reader
    // below already sleeps: it is still unread when the second shell's
    // first sample comes.
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        first.kill().expect("kill the first shell");
        first.wait().expect("reap the first shell");
    });

    // Each read waits for a new process, up to a timeout far longer than
    // the second shell needs to be sampled: only a wake-up ends it early.
    let timeout = Duration::from_secs(30);
    let deadline = Instant::now() + Duration::from_secs(25);
    while !seen.iter().any(|e| is_new(e, second_pid)) {
        assert!(
            Instant::now() < deadline,
            "no new-process event for {second_pid}: {seen:?}"
        );
        let started = Instant::now();
        let events = sampler.process_events(timeout);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the read waited {:?} with events {events:?}: the new process did not wake it",
            started.elapsed()
        );
        seen.extend(events);
    }
    killer.join().expect("the thread that ends the first shell");
    assert!(
        seen.iter().any(|e| is_gone(e, first_pid)),
        "the first shell's exit was never read: {seen:?}"
    );
}

/// An exit that wakes nobody still arrives with the next read, even one
/// that times out.
#[test]
fn exits_are_read_by_reads_that_time_out() {
    let mut shell = busy_shell("while :; do :; done");
    let pid = shell.id();
    let mut sampler = sampler_of(&[pid]);
    let mut seen = read_until_new(&mut sampler, pid);
    // One more read with the ring empty, so that the reader is no longer
    // marked readable from the wake-up it had: only a wake-up, or reading
    // the ring regardless, can bring the exit now.
    seen.extend(sampler.process_events(Duration::ZERO));
    shell.kill().expect("kill the shell");
    shell.wait().expect("reap the shell");
    // Give the exit time to reach the ring, then read without waiting.
    std::thread::sleep(Duration::from_millis(200));
    let events = sampler.process_events(Duration::ZERO);
    assert!(
        events.iter().any(|e| is_gone(e, pid)),
        "a read that does not wait missed the exit: {events:?}"
    );
}

/// Each CPU remembers the incarnation of the thread it sampled last; an
/// exec must end that memory, or the new program's samples would carry the
/// old program's incarnation (and its mappings).
#[test]
fn a_process_that_execs_gets_a_new_incarnation_while_it_keeps_running() {
    // Busy as one program for a few seconds, then busy as another.
    let shell = busy_shell(
        "end=$(($(date +%s) + 3)); while [ $(date +%s) -lt $end ]; do :; done; \
         exec sh -c 'while :; do :; done'",
    );
    let pid = shell.id();
    let mut sampler = sampler_of(&[pid]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let news = |seen: &[ProcessEvent]| -> Vec<u32> {
        seen.iter()
            .filter_map(|e| match *e {
                ProcessEvent::New { tgid, incarnation } if tgid == pid => Some(incarnation),
                _ => None,
            })
            .collect()
    };
    while news(&seen).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "expected a new incarnation after the exec: {seen:?}"
        );
        seen.extend(sampler.process_events(Duration::from_millis(100)));
    }
    let incarnations = news(&seen);
    assert_ne!(incarnations[0], incarnations[1], "{seen:?}");
    assert!(
        seen.iter().any(|e| *e
            == ProcessEvent::Gone {
                tgid: pid,
                incarnation: incarnations[0]
            }),
        "the exec did not end the first incarnation: {seen:?}"
    );
    drop(shell);
}
