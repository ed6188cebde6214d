//! taskprof's own memory: its resident set as the kernel counts it, a
//! per-stage report for finding where the peak comes from
//! (`TASKPROF_MEMORY_STAGES=1`), and giving freed heap back to the system:
//! by trimming after a burst, and by allocator settings under which large
//! blocks go back to the system as soon as they are freed.

use std::sync::OnceLock;

/// Resident and peak resident bytes of this process (`VmRSS`, `VmHWM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Residency {
    /// Resident now.
    pub rss: u64,
    /// The most ever resident.
    pub peak: u64,
}

/// Reads [`Residency`] from `/proc/self/status`; `None` if it cannot.
pub fn residency() -> Option<Residency> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    };
    Some(Residency {
        rss: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

/// With `TASKPROF_MEMORY_STAGES=1`, prints the resident and peak memory
/// after `stage` on stderr: the tool that shows which stage of a run
/// makes its peak.
pub fn report_stage(stage: &str) {
    static ON: OnceLock<bool> = OnceLock::new();
    if !*ON.get_or_init(|| std::env::var_os("TASKPROF_MEMORY_STAGES").is_some_and(|v| v == "1")) {
        return;
    }
    if let Some(r) = residency() {
        eprintln!(
            "taskprof: memory after {stage}: rss {:.1} MiB, peak {:.1} MiB",
            r.rss as f64 / 1048576.0,
            r.peak as f64 / 1048576.0
        );
    }
}

/// Gives the heap's free pages back to the system. glibc keeps freed
/// memory in its arenas for reuse, so after a burst (symbolizing a
/// window, parsing a large file's debug info) the resident set would stay
/// at the burst's peak without this.
pub fn release_free_heap() {
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks;
    // it takes no pointer and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Blocks at least this large get their own mapping, unmapped on free.
const MMAP_THRESHOLD_BYTES: libc::c_int = 128 << 10;
/// Free memory at the top of a heap beyond this is given back on free.
const TRIM_THRESHOLD_BYTES: libc::c_int = 256 << 10;
/// Heaps (arenas) the threads share.
const ARENAS: libc::c_int = 2;

/// Sets glibc's allocator so that a long-running process's resident set
/// follows what it holds rather than the largest burst it ever had. Call
/// it first thing, before other threads start.
///
/// By default glibc raises its mmap threshold to the size of the largest
/// block ever freed (up to 32 MiB), so after one large table or file
/// buffer, every later block of that size is carved from a heap, and the
/// heap's free top is kept up to twice that. Threads other than the main
/// one get arenas whose free top `malloc_trim` does not return at all.
/// In the agent while node, a JVM and rustc builds ran, this held three
/// times as much anonymous memory as these settings do (README, "Agent
/// memory with large programs"). Fixed thresholds also turn off the
/// dynamic raising; fewer arenas keep fewer half-empty heaps.
pub fn return_freed_memory_promptly() {
    for (param, value) in [
        (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        (libc::M_ARENA_MAX, ARENAS),
    ] {
        // SAFETY: mallopt only changes glibc's allocator parameters under
        // its own lock; it takes no pointer, and a refused value (0) leaves
        // the default in place, which is only slower to give memory back.
        unsafe {
            libc::mallopt(param, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residency_reads_this_process() {
        let r = residency().expect("/proc/self/status");
        assert!(r.rss > 0 && r.peak >= r.rss, "{r:?}");
    }

    #[test]
    fn releasing_the_heap_lowers_the_resident_set_after_a_burst() {
        // Many small blocks, so glibc serves them from the heap (not
        // separate mmaps that free would unmap at once).
        let before = residency().expect("residency").rss;
        let mut blocks: Vec<Vec<u8>> = (0..200_000).map(|i| vec![i as u8; 512]).collect();
        let grown = residency().expect("residency").rss;
        // Keep the last block, so the heap's top is not free and only
        // trimming inside the heap can give pages back.
        let last = blocks.pop();
        drop(blocks);
        release_free_heap();
        let after = residency().expect("residency").rss;
        drop(last);
        assert!(
            grown > before + 64 * 1024 * 1024,
            "the burst did not grow the heap: {before} -> {grown}"
        );
        assert!(
            after < grown - 64 * 1024 * 1024,
            "trimming kept the burst resident: {grown} -> {after}"
        );
    }
}
