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
    /// Of `rss`, anonymous memory (`RssAnon`: the heap, stacks).
    pub anon: u64,
    /// Of `rss`, pages of mapped files (`RssFile`: the binary itself, and
    /// the files blazesym maps to read their symbols and debug info).
    /// They count in the resident set, and so in the peak, like the heap.
    pub file: u64,
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
        anon: field("RssAnon:")?,
        file: field("RssFile:")?,
    })
}

/// CPU time this process has used so far, user plus system.
pub fn cpu_time() -> std::time::Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the rusage it is given; RUSAGE_SELF cannot fail.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    std::time::Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// With `TASKPROF_MEMORY_STAGES=1`, prints the resident and peak memory
/// after `stage` on stderr, the resident set split into heap and mapped
/// files, and the CPU time used so far: the tool that shows which stage
/// of a run makes its peak and spends its CPU.
pub fn report_stage(stage: &str) {
    static ON: OnceLock<bool> = OnceLock::new();
    if !*ON.get_or_init(|| std::env::var_os("TASKPROF_MEMORY_STAGES").is_some_and(|v| v == "1")) {
        return;
    }
    if let Some(r) = residency() {
        let mib = |bytes: u64| bytes as f64 / 1048576.0;
        eprintln!(
            "taskprof: memory after {stage}: rss {:.1} MiB (anon {:.1}, file {:.1}), peak {:.1} MiB; cpu {:.3} s",
            mib(r.rss),
            mib(r.anon),
            mib(r.file),
            mib(r.peak),
            cpu_time().as_secs_f64()
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

/// How often [`while_dropping_new_file_pages`] gives mapped file pages back.
const FILE_PAGES_PERIOD: std::time::Duration = std::time::Duration::from_millis(1);

/// A file mapping as `/proc/self/maps` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileMapping {
    start: usize,
    end: usize,
    inode: u64,
}

/// The mappings of files that are read-only and shared (`r--s`), which
/// is how blazesym (through memmap2) maps the files it reads. The
/// loader never maps code or data so, and the BPF ring buffer is not a
/// file (its path is not absolute).
fn shared_read_only_file_mappings() -> Vec<FileMapping> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?);
            let (_offset, _device, inode) = (fields.next()?, fields.next()?, fields.next()?);
            let path = fields.next()?;
            if perms != "r--s" || !path.starts_with('/') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(FileMapping {
                start: usize::from_str_radix(start, 16).ok()?,
                end: usize::from_str_radix(end, 16).ok()?,
                inode: inode.parse().ok().filter(|&inode| inode != 0)?,
            })
        })
        .collect()
}

/// Runs `work` while, every millisecond, the pages of the files it maps
/// read-only (new `r--s` mappings) are dropped from this process's page
/// tables. The data stays in the page cache and comes back on the next
/// access, unchanged, so this costs a page fault per page read again and
/// nothing else.
///
/// Why: blazesym maps a whole file to read its DWARF, and looking up a
/// few addresses walks the root entry of every compilation unit (their
/// ranges, when `.debug_aranges` does not list them, as rustc's does not),
/// touching pages of `.debug_info`, `.debug_str`, `.debug_line` and
/// `.debug_ranges` all over the file. Each page fault maps 64 KiB of
/// neighbours as well (the kernel's fault-around), and every mapped page
/// counts in the resident set: a 64 MB binary with 50 MB of DWARF made
/// 40 MiB of taskprof's peak from 58 addresses. Dropping them as the walk
/// goes bounds that to what one millisecond touches.
///
/// Safety of the drop: `MADV_DONTNEED` on a shared file mapping only
/// unmaps; were the range unmapped and reused for the heap between the
/// read of `/proc/self/maps` and the call, it would zero live memory.
/// blazesym keeps every file it maps for as long as the symbolizer lives
/// (its file cache holds them), so the caller must keep that symbolizer
/// alive until this returns, and no other thread may map and unmap files
/// meanwhile (the one-shot symbolizes on one thread, after sampling ended).
pub fn while_dropping_new_file_pages<T>(work: impl FnOnce() -> T) -> T {
    let before: rustc_hash::FxHashSet<FileMapping> = shared_read_only_file_mappings().into_iter().collect();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut new = Vec::new();
            for round in 0u64.. {
                // Files are mapped rarely, and reading the maps costs more
                // than dropping pages: once the first new file is found,
                // they are looked at every 8th round.
                if new.is_empty() || round % MAPS_EVERY_ROUNDS == 0 {
                    new = shared_read_only_file_mappings();
                    new.retain(|mapping| !before.contains(mapping));
                }
                drop_pages(&new);
                match finished.recv_timeout(FILE_PAGES_PERIOD) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                    _ => break,
                }
            }
        });
        let result = work();
        drop(done);
        result
    })
}

/// How many rounds of [`while_dropping_new_file_pages`] share one read of
/// `/proc/self/maps`.
const MAPS_EVERY_ROUNDS: u64 = 8;

/// Drops the pages of `mappings` (see [`while_dropping_new_file_pages`]).
fn drop_pages(mappings: &[FileMapping]) {
    for mapping in mappings {
        // SAFETY: the range is a read-only shared file mapping made
        // during `work`, which stays mapped until `work` returns
        // and this thread has ended (see above); dropping its pages
        // changes no data.
        unsafe {
            libc::madvise(
                mapping.start as *mut libc::c_void,
                mapping.end - mapping.start,
                libc::MADV_DONTNEED,
            );
        }
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
        // The test binary's own code is a mapped file; its heap is anonymous.
        assert!(r.file > 0 && r.anon > 0 && r.anon + r.file <= r.rss + 4096, "{r:?}");
    }

    #[test]
    fn cpu_time_counts_this_process_s_work() {
        let before = cpu_time();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        assert!(
            cpu_time() >= before + std::time::Duration::from_millis(20),
            "{before:?} -> {:?}",
            cpu_time()
        );
    }

    /// Pages of `[base, base + len)` mapped in this process now, from
    /// the present bits of `/proc/self/pagemap`: unlike `RssFile`, blind
    /// to what other tests map meanwhile.
    fn present_pages(base: usize, len: usize) -> usize {
        use std::io::{Read, Seek, SeekFrom};
        let mut pagemap = std::fs::File::open("/proc/self/pagemap").expect("pagemap");
        let mut entries = vec![0u8; len / 4096 * 8];
        pagemap.seek(SeekFrom::Start((base / 4096 * 8) as u64)).expect("seek");
        pagemap.read_exact(&mut entries).expect("read pagemap");
        entries
            .chunks(8)
            .filter(|e| u64::from_le_bytes((*e).try_into().expect("8 bytes")) >> 63 == 1)
            .count()
    }

    /// A 64 MiB file mapped read-only and shared, as blazesym maps files,
    /// and read through while dropping: its pages are given back, with the
    /// same bytes read. The control reads it through a private mapping
    /// under the drop too, and its pages stay mapped: the drop touches only
    /// shared mappings. (The control cannot be a shared mapping read
    /// without the drop: tests run as threads of one process, and another
    /// test symbolizing at the same time drops every new shared mapping.)
    #[test]
    fn pages_of_files_mapped_during_work_are_dropped_and_read_back_the_same() {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new_in("/var/tmp").expect("temporary file");
        let block: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        for _ in 0..64 {
            file.write_all(&block).expect("write");
        }
        file.flush().expect("flush");
        let len = 64usize << 20;
        let pages = len / 4096;
        // Reads the file through a new mapping, shared or private; with `wait`, gives the
        // drop up to 5 s (a loaded machine may keep its thread waiting)
        // after each 8 MiB to bring the mapped pages under an eighth.
        let read_all = |shared: bool, wait: bool| {
            // SAFETY: a fresh read-only mapping of a file this test owns,
            // unmapped below before the file closes.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    if shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE },
                    std::os::fd::AsRawFd::as_raw_fd(file.as_file()),
                    0,
                )
            };
            assert_ne!(base, libc::MAP_FAILED);
            // SAFETY: `base` maps `len` readable bytes.
            let bytes = unsafe { std::slice::from_raw_parts(base as *const u8, len) };
            let mut sum = 0u64;
            let mut most = 0;
            for (i, page) in bytes.chunks(4096).enumerate() {
                sum = sum.wrapping_add(page.iter().map(|&b| u64::from(b)).sum::<u64>());
                if i % 2048 == 2047 {
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                    let mut present = present_pages(base as usize, len);
                    while wait && present >= pages / 8 && std::time::Instant::now() < deadline {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        present = present_pages(base as usize, len);
                    }
                    most = most.max(present);
                }
            }
            // SAFETY: unmapping the mapping made above, no longer borrowed.
            unsafe { libc::munmap(base, len) };
            (sum, most)
        };
        let (sum_kept, most_kept) = while_dropping_new_file_pages(|| read_all(false, false));
        let (sum_dropped, most_dropped) = while_dropping_new_file_pages(|| read_all(true, true));
        assert_eq!(sum_kept, sum_dropped, "the bytes read changed");
        assert!(
            most_kept > pages * 9 / 10,
            "the private mapping's pages did not stay mapped: {most_kept} of {pages}"
        );
        assert!(
            most_dropped < pages / 4,
            "the file's pages stayed mapped: {most_dropped} of {pages} at most (without the drop: {most_kept})"
        );
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
