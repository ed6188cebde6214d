//! Which unwind tables are loaded into BPF, and for which processes.
//!
//! A process is loaded when the BPF program first samples it (its
//! `PROCESS_NEW` event): each executable mapping gets the table of its file,
//! built once per file (keyed by build id, or device and inode) and shared
//! by every process that maps it. A table no live process maps any more is
//! unloaded after a grace period, or at once when its memory is needed, so
//! that short-lived processes running the same binaries do not rebuild it.
//! A memory budget bounds the rows loaded; a table that does not fit is
//! counted and its mapping falls back to frame pointers.
//!
//! Tables are built on a background thread. The thread that reads the BPF
//! events must not stall on a large `.eh_frame`: it captures new processes
//! while they are alive. Until its table is in, a mapping is marked pending
//! and stacks through it end as "tables not loaded yet".

use std::fs::File;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap as HashMap;

use super::elf::{read_headers, read_range, Elf, ElfError};
use super::table::{build_table, TableError, UnwindTable};
use crate::process::{FileKey, MappingKind, ProcessInfo, ProcessKey, ProcessTable};

/// Bytes one row takes in BPF (`struct unwind_row`).
pub const ROW_BYTES: u64 = 12;
/// Executable mappings per process the BPF program can search
/// (`TASKPROF_MAX_UNWIND_MAPPINGS`).
pub const MAX_MAPPINGS: usize = 256;
/// Tables loaded at once (`TASKPROF_MAX_UNWIND_TABLES`).
pub const MAX_TABLES: u32 = 8192;
/// Rows per table the BPF binary search reaches in its 24 steps.
pub const MAX_ROWS: usize = (1 << 24) - 1;
/// The incarnation the BPF program accepts for any process: tables loaded
/// before sampling starts (`--pid`), when the number the program will give
/// the process is not known yet.
pub const PRELOADED_INCARNATION: u32 = 0;

/// How long a table nobody maps stays loaded, for the next process that
/// runs the same file.
pub const UNLOAD_GRACE: Duration = Duration::from_secs(30);

/// One executable mapping as the BPF program sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnwindMapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `address - bias` is the offset into the table's rows.
    pub bias: u64,
    /// The mapping's table.
    pub table: TableRef,
}

/// Which table a mapping uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableRef {
    /// None: JIT code, or a file without usable unwind information.
    None,
    /// Being built: stacks through it are not complete yet.
    Pending,
    /// Table id and row count.
    Loaded(u32, u32),
}

/// The BPF maps the manager writes. The sampler implements it; tests use a
/// recording fake.
pub trait UnwindMaps {
    /// Loads `table`'s rows as table `id`.
    fn load_table(&mut self, id: u32, table: &UnwindTable) -> Result<(), String>;
    /// Unloads table `id`.
    fn unload_table(&mut self, id: u32);
    /// Sets the mappings of process `tgid`, sorted by start.
    fn set_process(&mut self, tgid: u32, incarnation: u32, mappings: &[UnwindMapping]) -> Result<(), String>;
    /// Forgets process `tgid`.
    fn remove_process(&mut self, tgid: u32);
}

/// What identifies a file's table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum TableKey {
    BuildId(Vec<u8>),
    File(FileKey),
    Vdso,
}

#[derive(Debug)]
struct LoadedTable {
    id: u32,
    rows: u32,
    base: u64,
    segments: Vec<super::elf::Segment>,
    users: u32,
    /// When the last user went away.
    unused_since: Option<Instant>,
}

#[derive(Debug)]
struct LoadedProcess {
    incarnation: u32,
    /// When a load last left mappings out for lack of room: samples in
    /// those keep asking for a reload that cannot help, so reloads wait.
    truncated_at: Option<Instant>,
    tables: Vec<TableKey>,
    /// Tables being built that this process maps.
    waiting: Vec<TableKey>,
}

/// What the builder thread reads a table from.
enum Source {
    File(File),
    Vdso,
}

type Built = (TableKey, Result<UnwindTable, TableError>, Duration);

/// The background thread that builds tables, one at a time.
#[derive(Debug)]
struct Builder {
    requests: Sender<(TableKey, Source)>,
    results: Receiver<Built>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(_) => f.write_str("File"),
            Source::Vdso => f.write_str("Vdso"),
        }
    }
}

impl Builder {
    fn start() -> Option<Builder> {
        let (requests, inbox) = channel::<(TableKey, Source)>();
        // No queue of finished tables: the builder waits until the last
        // one is taken before it starts the next, so at most one finished
        // table waits while the next is built (a large library's table is
        // tens of MiB until it is loaded).
        let (outbox, results) = sync_channel::<Built>(0);
        std::thread::Builder::new()
            .name("taskprof-unwind".into())
            .spawn(move || {
                // Ends when the manager, and so `requests`, is dropped.
                for (key, source) in inbox {
                    let started = Instant::now();
                    // A file that trips a bug in the parser loses its own
                    // table, not the builder.
                    let built = std::panic::catch_unwind(move || {
                        match source {
                            Source::File(file) => read_unwind_sections(&file),
                            Source::Vdso => read_own_vdso(),
                        }
                        .and_then(|bytes| build_table(&bytes))
                    })
                    .unwrap_or(Err(TableError::NoUnwindInfo));
                    // The file's bytes and the build's scratch are freed
                    // by now; give them back rather than keep the largest
                    // build's pages in this thread's arena.
                    crate::util::memory::release_free_heap();
                    if outbox.send((key, built, started.elapsed())).is_err() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(Builder { requests, results })
    }
}

/// Counters for logs, metrics and the benchmark.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnwindStats {
    /// Tables built from files.
    pub tables_built: u64,
    /// Files with no usable unwind information.
    pub tables_failed: u64,
    /// Tables that did not fit the memory budget.
    pub budget_exhausted: u64,
    /// Tables the kernel refused to load.
    pub load_errors: u64,
    /// Processes whose mappings were loaded.
    pub processes_loaded: u64,
    /// Mappings left out because a process had more than [`MAX_MAPPINGS`].
    pub mappings_dropped: u64,
    /// Reloads asked for by a process whose last load already left
    /// mappings out, and put off (see [`UnwindManager::mappings_changed`]).
    pub reloads_deferred: u64,
    /// Bytes of `.eh_frame`/`.debug_frame` parsed.
    pub cfi_bytes: u64,
    /// Time spent building tables.
    pub build_time: Duration,
}

/// Loads and unloads unwind tables as processes come and go.
#[derive(Debug)]
pub struct UnwindManager {
    budget_bytes: u64,
    used_bytes: u64,
    tables: HashMap<TableKey, LoadedTable>,
    /// Files that have no table, so they are not tried again.
    failed: HashMap<TableKey, ()>,
    /// Tables that did not fit the budget (or that the kernel refused),
    /// with their size; tried again once that much memory is free.
    over_budget: HashMap<TableKey, u64>,
    free_ids: Vec<u32>,
    next_id: u32,
    processes: HashMap<u32, LoadedProcess>,
    /// Tables being built.
    pending: HashMap<TableKey, ()>,
    builder: Option<Builder>,
    stats: UnwindStats,
}

impl UnwindManager {
    /// A manager whose loaded rows never exceed `budget_bytes`.
    pub fn new(budget_bytes: u64) -> UnwindManager {
        UnwindManager {
            budget_bytes,
            used_bytes: 0,
            tables: HashMap::default(),
            failed: HashMap::default(),
            over_budget: HashMap::default(),
            free_ids: Vec::new(),
            next_id: 0,
            processes: HashMap::default(),
            pending: HashMap::default(),
            builder: None,
            stats: UnwindStats::default(),
        }
    }

    /// Whether this incarnation's mappings were loaded.
    pub fn knows(&self, key: ProcessKey) -> bool {
        self.processes
            .get(&key.tgid)
            .is_some_and(|p| p.incarnation == key.incarnation)
    }

    /// Tables being built now.
    pub fn pending_tables(&self) -> usize {
        self.pending.len()
    }

    /// The counters so far.
    pub fn stats(&self) -> &UnwindStats {
        &self.stats
    }

    /// Bytes of rows loaded now.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// Tables loaded now.
    pub fn loaded_tables(&self) -> usize {
        self.tables.len()
    }

    /// Loads (or reloads, after its mappings changed) a process's tables.
    /// Tables not built yet are requested from the builder thread; the
    /// process's mappings are written again when they arrive (see
    /// [`UnwindManager::poll`]).
    pub fn load_process(&mut self, maps: &mut dyn UnwindMaps, key: ProcessKey, processes: &ProcessTable) {
        let Some(info) = processes.get(key) else {
            return;
        };
        if !info.captured {
            return;
        }
        self.unload_unused(maps, false);
        let mut entries = Vec::with_capacity(info.mappings.len().min(MAX_MAPPINGS));
        let mut used = Vec::new();
        let mut waiting = Vec::new();
        let mut dropped = 0u64;
        for mapping in mappings_in_order(info) {
            if entries.len() == MAX_MAPPINGS {
                dropped += 1;
                continue;
            }
            let table_key = match &mapping.kind {
                MappingKind::Object(file) => processes.object(*file).map(|object| match &object.build_id {
                    Some(id) if !id.is_empty() => TableKey::BuildId(id.clone()),
                    _ => TableKey::File(*file),
                }),
                MappingKind::Vdso => Some(TableKey::Vdso),
                _ => None,
            };
            let mut entry = UnwindMapping {
                start: mapping.start,
                end: mapping.end,
                bias: 0,
                table: TableRef::None,
            };
            if let Some(table_key) = table_key {
                if let Some(loaded) = self.tables.get(&table_key) {
                    if let Some(bias) = mapping_bias(loaded, mapping) {
                        entry.bias = bias;
                        entry.table = TableRef::Loaded(loaded.id, loaded.rows);
                        used.push(table_key);
                    }
                } else if !self.failed.contains_key(&table_key) && !self.over_budget.contains_key(&table_key) {
                    let source = match &mapping.kind {
                        MappingKind::Object(file) => processes
                            .object(*file)
                            .and_then(|object| File::open(object.handle_path()).ok())
                            .map(Source::File),
                        _ => Some(Source::Vdso),
                    };
                    if let Some(source) = source {
                        if self.request(table_key.clone(), source) {
                            entry.table = TableRef::Pending;
                            waiting.push(table_key);
                        }
                    }
                }
            }
            entries.push(entry);
        }
        if dropped > 0 {
            self.stats.mappings_dropped += dropped;
            tracing::info!(
                pid = key.tgid,
                mappings = dropped + MAX_MAPPINGS as u64,
                searched = MAX_MAPPINGS,
                "a process has more executable mappings than the unwinder searches; code in the others is walked by frame pointers"
            );
        }
        for table_key in &used {
            if let Some(table) = self.tables.get_mut(table_key) {
                table.users += 1;
                table.unused_since = None;
            }
        }
        if let Err(err) = maps.set_process(key.tgid, key.incarnation, &entries) {
            // No stale entry may outlive the tables it names.
            tracing::debug!(tgid = key.tgid, "failed to load the unwind mappings: {err}");
            maps.remove_process(key.tgid);
        }
        self.stats.processes_loaded += 1;
        let previous = self.processes.insert(
            key.tgid,
            LoadedProcess {
                incarnation: key.incarnation,
                truncated_at: (dropped > 0).then(Instant::now),
                tables: used,
                waiting,
            },
        );
        if let Some(previous) = previous {
            self.release(previous.tables);
        }
    }

    /// The process sampled code outside every mapping loaded for it (it
    /// mapped more since): reads its mappings again and reloads it.
    ///
    /// A process with more mappings than the BPF program searches samples
    /// code outside the loaded ones all the time; reading its mappings again
    /// cannot help unless they changed, so it is reloaded at most once per
    /// [`TRUNCATED_RELOAD_INTERVAL`] (re-reading 10,000 mappings on every
    /// such sample starved the agent's windows).
    pub fn mappings_changed(&mut self, maps: &mut dyn UnwindMaps, key: ProcessKey, processes: &mut ProcessTable) {
        if processes.get(key).is_none() {
            return;
        }
        let recently_truncated = self
            .processes
            .get(&key.tgid)
            .filter(|loaded| loaded.incarnation == key.incarnation)
            .and_then(|loaded| loaded.truncated_at)
            .is_some_and(|at| at.elapsed() < TRUNCATED_RELOAD_INTERVAL);
        if recently_truncated {
            self.stats.reloads_deferred += 1;
            return;
        }
        processes.refresh(key);
        self.load_process(maps, key, processes);
    }

    /// Captures `tgids` and loads their tables before sampling starts, under
    /// [`PRELOADED_INCARNATION`], waiting for every table. Returns the keys
    /// captured in `processes`.
    pub fn preload(
        &mut self,
        maps: &mut dyn UnwindMaps,
        tgids: &[u32],
        processes: &mut ProcessTable,
    ) -> Vec<ProcessKey> {
        let keys: Vec<ProcessKey> = tgids
            .iter()
            .map(|&tgid| ProcessKey::new(tgid, PRELOADED_INCARNATION))
            .collect();
        for &key in &keys {
            processes.observe(key);
            self.load_process(maps, key, processes);
        }
        self.wait_for_tables(maps, processes);
        keys
    }

    /// Asks the builder for a table, unless it is being built already.
    fn request(&mut self, key: TableKey, source: Source) -> bool {
        if self.pending.contains_key(&key) {
            return true;
        }
        if self.builder.is_none() {
            self.builder = Builder::start();
        }
        let Some(builder) = &self.builder else {
            return false;
        };
        if builder.requests.send((key.clone(), source)).is_err() {
            return false;
        }
        self.pending.insert(key, ());
        true
    }

    /// Loads the tables the builder has finished, and writes again the
    /// mappings of the processes that were waiting for them. Never blocks.
    pub fn poll(&mut self, maps: &mut dyn UnwindMaps, processes: &ProcessTable) {
        let mut finished = Vec::new();
        let mut gone = false;
        if let Some(builder) = &self.builder {
            loop {
                match builder.results.try_recv() {
                    Ok(built) => finished.push(built),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        gone = true;
                        break;
                    }
                }
            }
        }
        if gone {
            self.builder_lost();
        }
        self.finish(maps, processes, finished);
    }

    /// Waits for every table being built and loads them (before sampling
    /// starts, and in tests).
    pub fn wait_for_tables(&mut self, maps: &mut dyn UnwindMaps, processes: &ProcessTable) {
        while !self.pending.is_empty() {
            let Some(built) = self.builder.as_ref().and_then(|b| b.results.recv().ok()) else {
                self.builder_lost();
                break;
            };
            self.finish(maps, processes, vec![built]);
        }
    }

    /// The builder thread is gone: what it was building is forgotten, so
    /// that the next load asks a new builder.
    fn builder_lost(&mut self) {
        tracing::warn!("the unwind table builder stopped; starting another");
        self.builder = None;
        self.pending.clear();
    }

    fn finish(&mut self, maps: &mut dyn UnwindMaps, processes: &ProcessTable, finished: Vec<Built>) {
        if finished.is_empty() {
            return;
        }
        let mut done = Vec::with_capacity(finished.len());
        for (key, built, took) in finished {
            self.pending.remove(&key);
            self.stats.build_time += took;
            self.install(maps, &key, built);
            done.push(key);
        }
        let waiting: Vec<ProcessKey> = self
            .processes
            .iter()
            .filter(|(_, p)| p.waiting.iter().any(|k| done.contains(k)))
            .map(|(&tgid, p)| ProcessKey::new(tgid, p.incarnation))
            .collect();
        for key in waiting {
            self.load_process(maps, key, processes);
        }
    }

    /// An incarnation ended: its tables lose a user.
    pub fn process_gone(&mut self, maps: &mut dyn UnwindMaps, key: ProcessKey) {
        let ours = self
            .processes
            .get(&key.tgid)
            .is_some_and(|p| p.incarnation == key.incarnation);
        if !ours {
            return;
        }
        if let Some(process) = self.processes.remove(&key.tgid) {
            maps.remove_process(key.tgid);
            self.release(process.tables);
        }
    }

    /// Unloads tables nobody has mapped for [`UNLOAD_GRACE`] (or at all,
    /// with `now`).
    pub fn unload_unused(&mut self, maps: &mut dyn UnwindMaps, now: bool) {
        let expired: Vec<TableKey> = self
            .tables
            .iter()
            .filter(|(_, t)| {
                t.unused_since
                    .is_some_and(|since| now || since.elapsed() >= UNLOAD_GRACE)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.unload(maps, &key);
        }
    }

    fn unload(&mut self, maps: &mut dyn UnwindMaps, key: &TableKey) {
        if let Some(table) = self.tables.remove(key) {
            maps.unload_table(table.id);
            self.used_bytes -= u64::from(table.rows) * ROW_BYTES;
            self.free_ids.push(table.id);
            // Room was made: tables that now fit are tried again.
            let room = self.budget_bytes.saturating_sub(self.pinned_bytes());
            self.over_budget.retain(|_, bytes| *bytes > room);
        }
    }

    fn release(&mut self, tables: Vec<TableKey>) {
        for key in tables {
            if let Some(table) = self.tables.get_mut(&key) {
                table.users = table.users.saturating_sub(1);
                if table.users == 0 {
                    table.unused_since = Some(Instant::now());
                }
            }
        }
    }

    /// Loads a table the builder finished (or records that there is none).
    fn install(&mut self, maps: &mut dyn UnwindMaps, key: &TableKey, built: Result<UnwindTable, TableError>) {
        let table = match built {
            Ok(table) if !table.rows.is_empty() => table,
            Ok(_) | Err(_) => {
                let reason = match built {
                    Ok(_) => "no rows".to_string(),
                    Err(err) => err.to_string(),
                };
                tracing::info!(table = ?key, %reason, "no unwind table for a file: its code is walked by frame pointers");
                self.stats.tables_failed += 1;
                self.failed.insert(key.clone(), ());
                return;
            }
        };
        self.stats.tables_built += 1;
        self.stats.cfi_bytes += table.cfi_bytes as u64;
        if table.rows.len() > MAX_ROWS {
            // The BPF search takes 24 steps: 2^24 - 1 rows at most.
            self.stats.tables_failed += 1;
            self.failed.insert(key.clone(), ());
            return;
        }
        let bytes = table.rows.len() as u64 * ROW_BYTES;
        let id = if self.make_room(maps, bytes) {
            match self.free_ids.pop() {
                Some(id) => Some(id),
                None if self.next_id < MAX_TABLES => {
                    self.next_id += 1;
                    Some(self.next_id - 1)
                }
                None => None,
            }
        } else {
            None
        };
        let Some(id) = id else {
            self.stats.budget_exhausted += 1;
            self.over_budget.insert(key.clone(), bytes);
            return;
        };
        if let Err(err) = maps.load_table(id, &table) {
            // Most likely the memory cgroup's limit: tried again, like a
            // table over budget, once memory is freed.
            tracing::debug!("failed to load an unwind table: {err}");
            self.stats.load_errors += 1;
            self.free_ids.push(id);
            self.over_budget.insert(key.clone(), bytes);
            return;
        }
        self.used_bytes += bytes;
        self.tables.insert(
            key.clone(),
            LoadedTable {
                id,
                rows: table.rows.len() as u32,
                base: table.base(),
                segments: table.segments,
                users: 0,
                unused_since: Some(Instant::now()),
            },
        );
    }

    /// Bytes of tables some process maps: what unloading cannot free.
    fn pinned_bytes(&self) -> u64 {
        self.tables
            .values()
            .filter(|t| t.users > 0)
            .map(|t| u64::from(t.rows) * ROW_BYTES)
            .sum()
    }

    /// Frees unused tables, oldest first, until `bytes` more fit; frees
    /// nothing if they cannot fit.
    fn make_room(&mut self, maps: &mut dyn UnwindMaps, bytes: u64) -> bool {
        if self.pinned_bytes() + bytes > self.budget_bytes {
            return false;
        }
        while self.used_bytes + bytes > self.budget_bytes {
            let oldest = self
                .tables
                .iter()
                .filter_map(|(k, t)| t.unused_since.map(|since| (since, k.clone())))
                .min_by_key(|(since, _)| *since);
            match oldest {
                Some((_, key)) => self.unload(maps, &key),
                None => return false,
            }
        }
        true
    }
}

/// The process's mappings sorted by start, leaving out any that overlaps
/// the one before it (a refresh keeps old mappings for symbolization).
fn mappings_in_order(info: &ProcessInfo) -> Vec<&crate::process::Mapping> {
    let mut sorted: Vec<&crate::process::Mapping> = info.mappings.iter().collect();
    sorted.sort_by_key(|m| m.start);
    let mut out: Vec<&crate::process::Mapping> = Vec::with_capacity(sorted.len());
    for mapping in sorted {
        if out.last().is_none_or(|last| last.end <= mapping.start) {
            out.push(mapping);
        }
    }
    out
}

/// The bias that turns an address in `mapping` into an offset from the
/// table's base: the address's file offset, moved into the segment's
/// virtual addresses.
fn mapping_bias(table: &LoadedTable, mapping: &crate::process::Mapping) -> Option<u64> {
    // A segment's file offset need not be page aligned; its mapping's is.
    let segment = table.segments.iter().filter(|s| s.executable).find(|s| {
        s.offset & !0xfff <= mapping.offset && mapping.offset < s.offset.saturating_add(s.file_size.max(1))
    })?;
    // vaddr = address - start + offset - segment.offset + segment.vaddr
    let bias = mapping
        .start
        .wrapping_sub(mapping.offset)
        .wrapping_add(segment.offset)
        .wrapping_sub(segment.vaddr);
    Some(bias.wrapping_add(table.base))
}

/// Reads the parts of an ELF file the table builder needs: its headers and
/// unwind sections, at their file offsets in a zero-filled buffer. The
/// untouched pages of the buffer are never allocated, so even a large
/// library costs only what is read. Reading (not mapping) the file means a
/// file truncated meanwhile gives an error rather than SIGBUS.
pub fn read_unwind_file(path: &std::path::Path) -> Result<Vec<u8>, TableError> {
    let file = File::open(path).map_err(|_| TableError::NoUnwindInfo)?;
    read_unwind_sections(&file)
}

/// How often a process with more mappings than the BPF program searches
/// is reloaded, at most.
pub const TRUNCATED_RELOAD_INTERVAL: Duration = Duration::from_secs(30);

/// `.eh_frame` plus `.debug_frame` larger than this are not read: the
/// largest real ones are tens of MiB (all of /usr on the development
/// machine holds 41 MiB), and the rows built from them must fit in memory
/// before the table memory budget can refuse them.
const MAX_CFI_BYTES: u64 = 64 << 20;

/// [`read_unwind_file`] on an open file.
fn read_unwind_sections(file: &File) -> Result<Vec<u8>, TableError> {
    let len = file.metadata().map_err(|_| TableError::NoUnwindInfo)?.len();
    let mut buffer = read_headers(file, len)?;
    let wanted: Vec<std::ops::Range<usize>> = Elf::parse(&buffer)?
        .sections
        .iter()
        .filter(|s| matches!(s.name.as_str(), ".eh_frame" | ".debug_frame"))
        .map(|s| s.file_range.clone())
        .collect();
    // Section headers are whatever the file says: a sparse file can claim
    // gigabytes of call frame information, which would all be read.
    if wanted.iter().map(|range| range.len() as u64).sum::<u64>() > MAX_CFI_BYTES {
        return Err(ElfError::Malformed("unwind sections larger than taskprof reads").into());
    }
    for range in wanted {
        read_range(file, &mut buffer, range.start, range.end)?;
    }
    Ok(buffer)
}

/// A copy of this process's vDSO image. Every process on the host maps the
/// same one, so its table serves them all.
fn read_own_vdso() -> Result<Vec<u8>, TableError> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|_| TableError::NoUnwindInfo)?;
    let entry = crate::process::maps::parse_maps(&maps)
        .into_iter()
        .find(|e| matches!(&e.backing, crate::process::maps::Backing::Special(name) if name == "[vdso]"))
        .ok_or(TableError::NoUnwindInfo)?;
    // SAFETY: AT_SYSINFO_EHDR is the start of the vDSO mapping, which stays
    // mapped and readable for the life of the process; /proc/self/maps
    // gives its length.
    let start = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) } as usize;
    if start as u64 != entry.start {
        return Err(TableError::NoUnwindInfo);
    }
    let bytes = unsafe { std::slice::from_raw_parts(start as *const u8, (entry.end - entry.start) as usize) };
    Ok(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Records what the manager writes, as the BPF maps would hold it.
    #[derive(Default)]
    struct FakeMaps {
        tables: BTreeMap<u32, usize>,
        processes: BTreeMap<u32, (u32, Vec<UnwindMapping>)>,
        loads: usize,
        /// Refuse every table, as a full memory cgroup would.
        refuse_tables: bool,
    }

    impl UnwindMaps for FakeMaps {
        fn load_table(&mut self, id: u32, table: &UnwindTable) -> Result<(), String> {
            if self.refuse_tables {
                return Err("Cannot allocate memory".into());
            }
            assert!(
                self.tables.insert(id, table.rows.len()).is_none(),
                "table id {id} reused while loaded"
            );
            self.loads += 1;
            Ok(())
        }
        fn unload_table(&mut self, id: u32) {
            assert!(
                self.tables.remove(&id).is_some(),
                "unloading table {id} that is not loaded"
            );
        }
        fn set_process(&mut self, tgid: u32, incarnation: u32, mappings: &[UnwindMapping]) -> Result<(), String> {
            self.processes.insert(tgid, (incarnation, mappings.to_vec()));
            Ok(())
        }
        fn remove_process(&mut self, tgid: u32) {
            self.processes.remove(&tgid);
        }
    }

    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sleeper() -> Child {
        let child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        // Let it exec and map its libraries.
        for _ in 0..100 {
            let maps = std::fs::read_to_string(format!("/proc/{}/maps", child.id())).unwrap_or_default();
            if maps.contains("libc.so") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Child(child)
    }

    /// Loads a process and waits for its tables to be built.
    fn load(manager: &mut UnwindManager, maps: &mut FakeMaps, key: ProcessKey, processes: &ProcessTable) {
        manager.load_process(maps, key, processes);
        manager.wait_for_tables(maps, processes);
        assert_eq!(manager.pending_tables(), 0);
    }

    /// `n` running sleepers, captured as incarnation 1 in a process table;
    /// they are killed when the returned children drop.
    fn captured_sleepers(n: usize) -> (Vec<Child>, Vec<ProcessKey>, ProcessTable) {
        let children: Vec<Child> = (0..n).map(|_| sleeper()).collect();
        let keys: Vec<ProcessKey> = children.iter().map(|c| key(c.0.id(), 1)).collect();
        let mut processes = ProcessTable::new();
        for &key in &keys {
            processes.observe(key);
        }
        (children, keys, processes)
    }

    fn key(tgid: u32, incarnation: u32) -> ProcessKey {
        ProcessKey::new(tgid, incarnation)
    }

    fn table_ids(mappings: &[UnwindMapping]) -> Vec<u32> {
        mappings
            .iter()
            .filter_map(|m| match m.table {
                TableRef::Loaded(id, _) => Some(id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_process_gets_sorted_mappings_with_tables_for_its_files() {
        let (_sleepers, keys, processes) = captured_sleepers(1);
        let tgid = keys[0].tgid;
        let (mut maps, mut manager) = (FakeMaps::default(), UnwindManager::new(64 << 20));
        load(&mut manager, &mut maps, key(tgid, 1), &processes);

        let (incarnation, mappings) = &maps.processes[&tgid];
        assert_eq!(*incarnation, 1);
        assert!(mappings.windows(2).all(|w| w[0].end <= w[1].start), "sorted, disjoint");
        // sleep, libc, ld.so and the vDSO all have .eh_frame.
        assert!(table_ids(mappings).len() >= 4, "{mappings:?}");
        assert_eq!(manager.loaded_tables(), maps.tables.len());
        assert!(manager.used_bytes() > 0);
        // The first row of each table (its base) lies in the code the
        // mapping holds: `bias` is where the base was loaded.
        for mapping in mappings.iter().filter(|m| matches!(m.table, TableRef::Loaded(..))) {
            assert!(
                mapping.start <= mapping.bias && mapping.bias < mapping.end,
                "{mapping:?}"
            );
        }
    }

    #[test]
    fn mappings_are_pending_until_their_tables_are_built() {
        let (_sleepers, keys, processes) = captured_sleepers(1);
        let tgid = keys[0].tgid;
        let (mut maps, mut manager) = (FakeMaps::default(), UnwindManager::new(64 << 20));
        manager.load_process(&mut maps, key(tgid, 1), &processes);
        let first = maps.processes[&tgid].1.clone();
        assert!(
            first.iter().all(|m| !matches!(m.table, TableRef::Loaded(..))),
            "{first:?}"
        );
        assert!(first.iter().any(|m| m.table == TableRef::Pending));
        assert!(manager.pending_tables() > 0);

        manager.wait_for_tables(&mut maps, &processes);
        let now = &maps.processes[&tgid].1;
        assert_eq!(now.len(), first.len());
        for (before, after) in first.iter().zip(now) {
            if before.table == TableRef::Pending {
                assert!(matches!(after.table, TableRef::Loaded(..)), "{after:?}");
            }
        }
    }

    #[test]
    fn tables_are_shared_and_unloaded_only_when_unused() {
        let (_sleepers, keys, processes) = captured_sleepers(2);
        let (ka, kb) = (keys[0], keys[1]);
        let (mut maps, mut manager) = (FakeMaps::default(), UnwindManager::new(64 << 20));
        load(&mut manager, &mut maps, ka, &processes);
        let loaded = maps.loads;
        load(&mut manager, &mut maps, kb, &processes);
        assert_eq!(maps.loads, loaded, "the same binaries are not built or loaded twice");
        assert_eq!(manager.stats().tables_built as usize, loaded);
        assert_eq!(
            table_ids(&maps.processes[&ka.tgid].1),
            table_ids(&maps.processes[&kb.tgid].1)
        );

        assert!(manager.knows(ka) && manager.knows(kb));
        assert!(!manager.knows(key(ka.tgid, 7)));
        // A stale incarnation's end changes nothing.
        manager.process_gone(&mut maps, key(ka.tgid, 7));
        assert!(maps.processes.contains_key(&ka.tgid));

        manager.process_gone(&mut maps, ka);
        assert!(!maps.processes.contains_key(&ka.tgid));
        assert!(!manager.knows(ka));
        manager.unload_unused(&mut maps, true);
        assert_eq!(maps.tables.len(), loaded, "b still maps every table");

        manager.process_gone(&mut maps, kb);
        manager.unload_unused(&mut maps, false);
        assert_eq!(maps.tables.len(), loaded, "kept for the grace period");
        manager.unload_unused(&mut maps, true);
        assert!(maps.tables.is_empty());
        assert_eq!(manager.used_bytes(), 0);
        assert_eq!(manager.loaded_tables(), 0);
    }

    #[test]
    fn running_out_of_budget_is_counted_and_leaves_mappings_without_tables() {
        let (_sleepers, keys, processes) = captured_sleepers(1);
        let tgid = keys[0].tgid;
        // Room for the small tables (vDSO, sleep) but not libc's.
        let (mut maps, mut manager) = (FakeMaps::default(), UnwindManager::new(64 << 10));
        load(&mut manager, &mut maps, key(tgid, 1), &processes);
        assert!(manager.stats().budget_exhausted >= 1);
        assert!(manager.used_bytes() <= 64 << 10);
        let mappings = &maps.processes[&tgid].1;
        assert!(mappings.iter().any(|m| m.table == TableRef::None));
        assert!(mappings.iter().any(|m| matches!(m.table, TableRef::Loaded(..))));
    }

    #[test]
    fn tables_the_kernel_refuses_are_counted_and_not_rebuilt_in_a_loop() {
        let (_sleepers, keys, processes) = captured_sleepers(1);
        let tgid = keys[0].tgid;
        let mut maps = FakeMaps {
            refuse_tables: true,
            ..FakeMaps::default()
        };
        let mut manager = UnwindManager::new(64 << 20);
        // Returns: the refused tables are not requested again and again.
        load(&mut manager, &mut maps, key(tgid, 1), &processes);
        let built = manager.stats().tables_built;
        assert!(manager.stats().load_errors >= 4, "{:?}", manager.stats());
        assert!(maps.processes[&tgid].1.iter().all(|m| m.table == TableRef::None));
        load(&mut manager, &mut maps, key(tgid, 1), &processes);
        assert_eq!(
            manager.stats().tables_built,
            built,
            "not rebuilt while nothing was freed"
        );
    }

    #[test]
    fn unused_tables_make_room_for_new_ones() {
        let (_sleepers, keys, processes) = captured_sleepers(2);
        let (ka, kb) = (keys[0], keys[1]);
        let mut maps = FakeMaps::default();
        let mut probe = UnwindManager::new(64 << 20);
        load(&mut probe, &mut maps, ka, &processes);
        let needed = probe.used_bytes();

        let mut maps = FakeMaps::default();
        let mut manager = UnwindManager::new(needed);
        load(&mut manager, &mut maps, ka, &processes);
        manager.process_gone(&mut maps, ka);
        // b needs the same tables: they are still loaded and reused.
        load(&mut manager, &mut maps, kb, &processes);
        assert_eq!(manager.stats().budget_exhausted, 0);
        assert_eq!(maps.loads as u64, manager.stats().tables_built);
    }

    #[test]
    fn reads_only_the_headers_and_unwind_sections() {
        let bytes = read_unwind_file(std::path::Path::new(crate::unwind::test_libc())).unwrap();
        let full = std::fs::read(crate::unwind::test_libc()).unwrap();
        assert_eq!(bytes.len(), full.len());
        assert_eq!(
            build_table(&bytes).unwrap().rows,
            build_table(&full).unwrap().rows,
            "the partial read builds the same table"
        );
        let text = Elf::parse(&full).unwrap().section(".text").unwrap().file_range.clone();
        assert!(bytes[text].iter().all(|&b| b == 0), ".text is not read");
    }
}
