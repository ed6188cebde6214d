//! Addresses to functions, files and lines.
//!
//! User addresses are symbolized per file with blazesym, by file offset,
//! through the handle the process tracker holds open; results are cached
//! by (file, offset), so a library mapped by a hundred processes is parsed
//! and symbolized once. Kernel addresses go through kallsyms, and JIT code
//! through `/tmp/perf-PID.map`. Nothing here fails a profile: an address
//! that cannot be named gets a synthetic frame saying where it was.
//!
//! For the agent, which runs for months, every cache has a byte bound
//! ([`CacheBudget`]): the names found are kept per address only while they
//! are used, and blazesym's parsed state of a file (its symbol tables,
//! looked up through the mapped file, and the index it sorts) only for a
//! few windows, least recently used first out when over the bound.

mod demangle;
mod kernel;
mod perf_map;
pub mod samples;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{Input, Symbolized};

pub use demangle::demangle;
pub(crate) use kernel::kallsyms_line;
pub use kernel::KernelSymbols;
pub use perf_map::{PerfMap, PerfMapRead, PerfMapRefusal, PerfMapStamp, MAX_PERF_MAP_BYTES};

use crate::process::{FileKey, ObjectFile};

/// A function as profiles name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FunctionInfo {
    /// Demangled name.
    pub name: String,
    /// Name as found in the binary (mangled).
    pub system_name: String,
    /// Source file, or empty.
    pub file: String,
    /// Line of the function's first instruction, or 0.
    pub start_line: u32,
}

/// One frame of a location: a function and a line in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LineInfo {
    /// The function.
    pub function: Arc<FunctionInfo>,
    /// Source line, or 0.
    pub line: u32,
}

/// The frames at one address, innermost (inlined) first, outermost last.
pub type Lines = Arc<[LineInfo]>;

/// A location with one synthetic function, for addresses that cannot be named.
pub fn synthetic_lines(name: impl Into<String>) -> Lines {
    let name = name.into();
    let function = FunctionInfo {
        name: name.clone(),
        system_name: name,
        file: String::new(),
        start_line: 0,
    };
    Arc::from(vec![LineInfo {
        function: Arc::new(function),
        line: 0,
    }])
}

/// A process's perf map as last read.
#[derive(Debug, Default)]
struct CachedPerfMap {
    map: Option<PerfMap>,
    /// The file it came from, to skip reading it again while unchanged.
    stamp: Option<PerfMapStamp>,
    /// Whether the file was looked at since [`Symbolizer::reload_perf_maps`].
    current: bool,
}

/// A file whose parsed state blazesym holds.
#[derive(Debug)]
struct ParsedFile {
    /// The path blazesym knows it by (the handle's).
    path: PathBuf,
    /// The window it was last used in.
    used: u64,
    /// What the parsed state takes, estimated ([`parsed_bytes_estimate`]).
    bytes: u64,
}

/// The frames found at an address, with the window they were last used in.
#[derive(Debug, Clone)]
struct CachedLines {
    lines: Lines,
    used: u64,
}

/// An address whose names are cached: a file offset or a kernel address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum NameKey {
    User(FileKey, u64),
    Kernel(u64),
}

/// Byte bounds of the symbol caches while files are kept parsed
/// ([`ParsedFiles::KeepForWindows`]), enforced at the end of each window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheBudget {
    /// blazesym's parsed state of the files kept, as estimated: over it,
    /// the least recently used files are released (a file larger than
    /// this alone is released after each window that used it).
    pub parsed_bytes: u64,
    /// The names found (per address frames and the functions they name):
    /// over it, the least recently used addresses are dropped.
    pub names_bytes: u64,
    /// Names not used for this many windows are dropped whatever the bytes.
    pub names_windows: u32,
}

impl CacheBudget {
    /// `bytes` in all, half for parsed files and half for names; names
    /// unused for 12 windows (two minutes at the agent's default 10 s
    /// windows) are dropped.
    pub fn within(bytes: u64) -> CacheBudget {
        CacheBudget {
            parsed_bytes: bytes / 2,
            names_bytes: bytes / 2,
            names_windows: 12,
        }
    }
}

impl Default for CacheBudget {
    /// 32 MiB (`--symbol-cache-memory`): 16 MiB of parsed files keeps a
    /// host's libraries and a service or two parsed, while node (19 MiB by
    /// the estimate), librustc_driver or libLLVM are parsed again in each
    /// window that has new addresses in them (tens of milliseconds each);
    /// 16 MiB of names is about 100,000 addresses.
    fn default() -> Self {
        CacheBudget::within(32 << 20)
    }
}

/// What the symbol caches hold, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SymbolCacheBytes {
    /// The names found, counted: per address frames (user and kernel),
    /// the functions they name, and perf maps.
    pub names: u64,
    /// blazesym's parsed state of the files it holds, estimated from their
    /// symbol and string tables (and DWARF sections with debug info).
    pub parsed: u64,
    /// The kernel's symbol table, counted: read from kallsyms at the first
    /// kernel frame and kept (a few MiB, whatever runs).
    pub kernel: u64,
}

impl SymbolCacheBytes {
    /// All parts.
    pub fn total(&self) -> u64 {
        self.names + self.parsed + self.kernel
    }
}

/// How long blazesym's parsed state of a file (symbol tables, DWARF
/// indexes, the file's mapping) is kept once its addresses are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParsedFiles {
    /// Released as soon as the file's addresses are named: for one pass
    /// over all samples (`taskprof profile`), where the memory peak is
    /// then the largest single file rather than the sum of them all.
    ReleaseAfterUse,
    /// Kept while the file is used, and released once it has not been
    /// for this many windows ([`Symbolizer::end_window`]): for the agent,
    /// which names the same files window after window.
    KeepForWindows(u32),
}

/// Symbolizer with caches for user files and the kernel.
pub struct Symbolizer {
    blaze: blazesym::symbolize::Symbolizer,
    /// Files whose parsed state blazesym holds.
    parsed: HashMap<FileKey, ParsedFile>,
    parsed_files: ParsedFiles,
    budget: CacheBudget,
    window: u64,
    user: HashMap<(FileKey, u64), CachedLines>,
    /// One shared copy of each function named (its strings held once).
    functions: HashSet<Arc<FunctionInfo>>,
    kernel: HashMap<u64, CachedLines>,
    kernel_symbols: Option<KernelSymbols>,
    perf_maps: HashMap<u32, CachedPerfMap>,
    /// Perf maps not read or only partly read, by why.
    perf_map_problems: std::collections::BTreeMap<&'static str, u64>,
    /// Processes whose perf map problem was logged; the maps are read again
    /// each window and one line per process is enough.
    perf_map_warned: rustc_hash::FxHashSet<u32>,
    failures: u64,
    debug_info: bool,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Symbolizer::new()
    }
}

impl Symbolizer {
    /// A symbolizer using DWARF (with split debug files from
    /// `/usr/lib/debug`) where present, and symbol tables otherwise.
    pub fn new() -> Symbolizer {
        Symbolizer::with_debug_info(true)
    }

    /// A symbolizer that reads DWARF only if `debug_info` is set; otherwise
    /// it names functions from symbol tables alone, without files, lines or
    /// inlined frames, and its memory does not grow with debug info.
    pub fn with_debug_info(debug_info: bool) -> Symbolizer {
        Symbolizer {
            blaze: new_blaze(),
            parsed: HashMap::default(),
            parsed_files: ParsedFiles::KeepForWindows(3),
            budget: CacheBudget::default(),
            window: 0,
            user: HashMap::default(),
            functions: HashSet::default(),
            kernel: HashMap::default(),
            kernel_symbols: None,
            perf_maps: HashMap::default(),
            perf_map_problems: Default::default(),
            perf_map_warned: Default::default(),
            failures: 0,
            debug_info,
        }
    }

    /// Sets how long files stay parsed once used (by default, three
    /// windows).
    pub fn set_parsed_files(&mut self, policy: ParsedFiles) {
        self.parsed_files = policy;
    }

    /// Sets the caches' byte bounds (by default [`CacheBudget::default`]).
    pub fn set_budget(&mut self, budget: CacheBudget) {
        self.budget = budget;
    }

    /// Ends a window: releases blazesym's state of the files not used for
    /// the policy's number of windows, then of the least recently used
    /// files while over the budget; drops the names not used for the
    /// budget's windows, then the least recently used while over the
    /// budget; and gives the freed heap back to the system.
    pub fn end_window(&mut self) {
        self.window += 1;
        let ParsedFiles::KeepForWindows(windows) = self.parsed_files else {
            return;
        };
        let oldest = self.window.saturating_sub(u64::from(windows));
        // Least recently used first; among equals the largest, which frees
        // the most for one parse to come.
        let mut order: Vec<(u64, std::cmp::Reverse<u64>, FileKey)> = self
            .parsed
            .iter()
            .map(|(key, file)| (file.used, std::cmp::Reverse(file.bytes), *key))
            .collect();
        order.sort_unstable();
        let mut bytes: u64 = self.parsed.values().map(|file| file.bytes).sum();
        for (used, std::cmp::Reverse(size), key) in order {
            if used >= oldest && bytes <= self.budget.parsed_bytes {
                break;
            }
            self.release_parsed(key);
            bytes -= size;
        }
        self.drop_unused_names();
        // Each window's symbolizing and encoding is a burst: without this
        // glibc keeps the largest burst's pages for good.
        crate::util::memory::release_free_heap();
    }

    /// Drops the names not used for the budget's windows, then the least
    /// recently used while the names are over the budget, then the
    /// functions no name refers to any more.
    fn drop_unused_names(&mut self) {
        let oldest = self.window.saturating_sub(u64::from(self.budget.names_windows));
        self.user.retain(|_, cached| cached.used >= oldest);
        self.kernel.retain(|_, cached| cached.used >= oldest);
        let mut bytes = self.names_bytes();
        if bytes > self.budget.names_bytes {
            let mut order: Vec<(u64, NameKey)> = self
                .user
                .iter()
                .map(|(&(file, offset), cached)| (cached.used, NameKey::User(file, offset)))
                .chain(
                    self.kernel
                        .iter()
                        .map(|(&address, cached)| (cached.used, NameKey::Kernel(address))),
                )
                .collect();
            order.sort_unstable();
            for (_, key) in order {
                if bytes <= self.budget.names_bytes {
                    break;
                }
                let removed = match key {
                    NameKey::User(file, offset) => self.user.remove(&(file, offset)),
                    NameKey::Kernel(address) => self.kernel.remove(&address),
                };
                if let Some(cached) = removed {
                    // Functions shared with other addresses stay until the
                    // retain below: a slight overshoot of what is dropped.
                    bytes = bytes.saturating_sub(lines_bytes(&cached.lines) + ENTRY_BYTES);
                }
            }
        }
        self.functions.retain(|shared| Arc::strong_count(shared) > 1);
    }

    /// What the caches hold now.
    pub fn cache_bytes(&self) -> SymbolCacheBytes {
        SymbolCacheBytes {
            names: self.names_bytes(),
            parsed: self.parsed.values().map(|file| file.bytes).sum(),
            kernel: self.kernel_symbols.as_ref().map_or(0, KernelSymbols::heap_bytes),
        }
    }

    fn names_bytes(&self) -> u64 {
        let entries = self
            .user
            .values()
            .chain(self.kernel.values())
            .map(|cached| lines_bytes(&cached.lines) + ENTRY_BYTES)
            .sum::<u64>();
        let functions = self.functions.iter().map(|f| function_bytes(f) + 8).sum::<u64>();
        let perf_maps = self
            .perf_maps
            .values()
            .filter_map(|cached| cached.map.as_ref())
            .map(PerfMap::heap_bytes)
            .sum::<u64>();
        entries + functions + perf_maps
    }

    /// Files whose parsed state is held now.
    pub fn parsed_files(&self) -> usize {
        self.parsed.len()
    }

    fn release_parsed(&mut self, key: FileKey) {
        if let Some(file) = self.parsed.remove(&key) {
            let _ = self
                .blaze
                .evict(&blazesym::symbolize::evict::Elf::new(file.path).into());
        }
    }

    /// Addresses that could not be named so far.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Symbolizes file offsets of one object not already cached.
    pub fn symbolize_object(&mut self, key: FileKey, object: &ObjectFile, offsets: &[u64]) {
        let window = self.window;
        let mut todo = Vec::new();
        for &offset in offsets {
            match self.user.get_mut(&(key, offset)) {
                Some(cached) => cached.used = window,
                None => todo.push(offset),
            }
        }
        todo.sort_unstable();
        todo.dedup();
        if todo.is_empty() {
            return;
        }
        let path = object.handle_path();
        match self.parsed.get_mut(&key) {
            Some(file) => file.used = window,
            None => {
                let bytes = match self.parsed_files {
                    ParsedFiles::KeepForWindows(_) => parsed_bytes_estimate(&path, self.debug_info),
                    ParsedFiles::ReleaseAfterUse => 0,
                };
                let file = ParsedFile {
                    path: path.clone(),
                    used: window,
                    bytes,
                };
                self.parsed.insert(key, file);
            }
        }
        let mut elf = Elf::new(path);
        elf.debug_syms = self.debug_info;
        let src = Source::Elf(elf);
        let one_pass = self.parsed_files == ParsedFiles::ReleaseAfterUse;
        let blaze = &self.blaze;
        let look_up = || {
            let results = blaze.symbolize(&src, Input::FileOffset(&todo))?;
            // Function start lines: symbolize each function's first address.
            let mut starts: Vec<u64> = results
                .iter()
                .filter_map(|r| match r {
                    Symbolized::Sym(sym) => Some(sym.addr),
                    Symbolized::Unknown(_) => None,
                })
                .collect();
            starts.sort_unstable();
            starts.dedup();
            let start_lines: HashMap<u64, u32> = blaze
                .symbolize(&src, Input::VirtOffset(&starts))
                .map(|found| {
                    starts
                        .iter()
                        .zip(found)
                        .filter_map(|(addr, r)| match r {
                            Symbolized::Sym(sym) => Some((*addr, sym.code_info.as_ref()?.line?)),
                            Symbolized::Unknown(_) => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok::<_, blazesym::Error>((results, start_lines))
        };
        // In one pass this symbolizer is the only thread mapping files,
        // and blazesym keeps them mapped until it is replaced below, as
        // dropping pages requires.
        let found = if one_pass && object.size() >= DROP_FILE_PAGES_BYTES {
            crate::util::memory::while_dropping_new_file_pages(look_up)
        } else {
            look_up()
        };
        let (results, start_lines) = match found {
            Ok(found) => found,
            Err(_) => {
                // Not ELF, or unreadable: every offset gets the file+offset frame.
                for offset in &todo {
                    self.failures += 1;
                    let name = format!("{}+{:#x}", object.original_path.display(), offset);
                    let lines = synthetic_lines(name);
                    self.user.insert((key, *offset), CachedLines { lines, used: window });
                }
                return;
            }
        };

        let mut entries = Vec::with_capacity(todo.len());
        for (offset, result) in todo.iter().zip(results) {
            let lines = match result {
                Symbolized::Sym(sym) => {
                    let start_line = start_lines.get(&sym.addr).copied().unwrap_or(0);
                    // blazesym reports the outer function first with its
                    // code info, then inlined callees outer to inner.
                    let mut frames = Vec::with_capacity(1 + sym.inlined.len());
                    frames.push(LineInfo {
                        function: intern(
                            &mut self.functions,
                            &sym.name,
                            code_file(sym.code_info.as_deref()),
                            start_line,
                        ),
                        line: sym.code_info.as_ref().and_then(|c| c.line).unwrap_or(0),
                    });
                    for inlined in sym.inlined.iter() {
                        frames.push(LineInfo {
                            function: intern(
                                &mut self.functions,
                                &inlined.name,
                                code_file(inlined.code_info.as_ref()),
                                0,
                            ),
                            line: inlined.code_info.as_ref().and_then(|c| c.line).unwrap_or(0),
                        });
                    }
                    frames.reverse();
                    Arc::from(frames)
                }
                Symbolized::Unknown(_) => {
                    self.failures += 1;
                    let file = object.original_path.file_name().unwrap_or_default().to_string_lossy();
                    synthetic_lines(format!("{file}+{offset:#x}"))
                }
            };
            entries.push(((key, *offset), CachedLines { lines, used: window }));
        }
        self.user.extend(entries);
        if self
            .parsed
            .get(&key)
            .is_some_and(|file| file.bytes > self.budget.parsed_bytes)
        {
            // Over the bound alone: it would go at the end of the window
            // anyway, and held until then it would add to the next large
            // file's state, so the window's peak would be their sum.
            self.release_parsed(key);
        }
        if self.parsed_files == ParsedFiles::ReleaseAfterUse {
            // A fresh blazesym drops the debug files a file led to as
            // well, which evicting the file alone would keep cached.
            self.blaze = new_blaze();
            self.parsed.clear();
            // Trimming walks the whole heap: worth it after a large file
            // only, not after each of a host's hundred small libraries.
            if object.size() >= TRIM_AFTER_FILE_BYTES {
                crate::util::memory::release_free_heap();
            }
        }
    }

    /// Drops everything cached for files that are about to be closed and for
    /// processes that are gone, so a long-running agent stays bounded. Must
    /// run before the files' handles close: the handle path may be reused by
    /// the next file opened.
    pub fn forget(&mut self, objects: &[(FileKey, PathBuf)], tgids: &[u32]) {
        if !objects.is_empty() {
            let keys: rustc_hash::FxHashSet<FileKey> = objects.iter().map(|(key, _)| *key).collect();
            self.user.retain(|(key, _), _| !keys.contains(key));
            for (key, path) in objects {
                self.parsed.remove(key);
                let _ = self
                    .blaze
                    .evict(&blazesym::symbolize::evict::Elf::new(path.clone()).into());
            }
            // Functions only the intern table still holds.
            self.functions.retain(|shared| Arc::strong_count(shared) > 1);
        }
        for tgid in tgids {
            self.perf_maps.remove(tgid);
        }
    }

    /// Marks parsed perf maps as stale: JIT runtimes append to them, so a
    /// long-running agent looks at them again each window, and reads those
    /// that changed.
    pub fn reload_perf_maps(&mut self) {
        for cached in self.perf_maps.values_mut() {
            cached.current = false;
        }
    }

    /// Entries in the address caches (user and kernel), for bounds checks.
    pub fn cached_addresses(&self) -> usize {
        self.user.len() + self.kernel.len()
    }

    /// The cached frames for a file offset (after [`Symbolizer::symbolize_object`]).
    pub fn object_lines(&self, key: FileKey, offset: u64) -> Option<Lines> {
        self.user.get(&(key, offset)).map(|cached| cached.lines.clone())
    }

    /// Symbolizes kernel addresses not already cached.
    pub fn symbolize_kernel(&mut self, addresses: &[u64]) {
        let window = self.window;
        let mut todo = Vec::new();
        for &address in addresses {
            match self.kernel.get_mut(&address) {
                Some(cached) => cached.used = window,
                None => todo.push(address),
            }
        }
        todo.sort_unstable();
        todo.dedup();
        if todo.is_empty() {
            return;
        }
        // One pass names its addresses while reading kallsyms, without
        // keeping the table; a symbolizer that lives on keeps it.
        let names: Vec<Option<String>> =
            if self.parsed_files == ParsedFiles::ReleaseAfterUse && self.kernel_symbols.is_none() {
                kernel::name_addresses(std::path::Path::new("/proc/kallsyms"), &todo)
            } else {
                let symbols = self.kernel_symbols.get_or_insert_with(KernelSymbols::load);
                todo.iter()
                    .map(|&addr| symbols.lookup(addr).map(str::to_string))
                    .collect()
            };
        for (addr, name) in todo.into_iter().zip(names) {
            let lines = match name.as_deref() {
                Some(name) => {
                    let function = intern(&mut self.functions, name, String::new(), 0);
                    Arc::from(vec![LineInfo { function, line: 0 }])
                }
                None => {
                    self.failures += 1;
                    synthetic_lines(format!("[kernel] {addr:#x}"))
                }
            };
            self.kernel.insert(addr, CachedLines { lines, used: window });
        }
    }

    /// The cached frames for a kernel address.
    pub fn kernel_lines(&self, address: u64) -> Option<Lines> {
        self.kernel.get(&address).map(|cached| cached.lines.clone())
    }

    /// Names JIT code through the process's perf map, if it has one.
    pub fn perf_map_lines(&mut self, tgid: u32, address: u64) -> Option<Lines> {
        if !self.perf_maps.get(&tgid).is_some_and(|cached| cached.current) {
            let previous = self.perf_maps.remove(&tgid).unwrap_or_default();
            let cached = self.read_perf_map(tgid, previous);
            self.perf_maps.insert(tgid, cached);
        }
        let map = self.perf_maps.get(&tgid)?.map.as_ref()?;
        let name = map.lookup(address)?.to_string();
        Some(Arc::from(vec![LineInfo {
            function: intern(&mut self.functions, &name, String::new(), 0),
            line: 0,
        }]))
    }

    /// Reads a perf map, counting and logging (once per process) one that
    /// is refused or cut short.
    fn read_perf_map(&mut self, tgid: u32, previous: CachedPerfMap) -> CachedPerfMap {
        let fresh = |map, stamp| CachedPerfMap {
            map,
            stamp,
            current: true,
        };
        let (map, stamp, problem, why) = match PerfMap::load_for(tgid, previous.stamp) {
            PerfMapRead::Missing => return fresh(None, None),
            PerfMapRead::Unchanged => return fresh(previous.map, previous.stamp),
            PerfMapRead::Loaded {
                map,
                truncated: false,
                stamp,
            } => return fresh(Some(map), Some(stamp)),
            PerfMapRead::Loaded {
                map,
                truncated: true,
                stamp,
            } => (
                Some(map),
                Some(stamp),
                "truncated",
                format!("it is longer than {MAX_PERF_MAP_BYTES} bytes; only that much was read"),
            ),
            PerfMapRead::Refused { path, refusal } => {
                let problem = match refusal {
                    PerfMapRefusal::Missing => return fresh(None, None),
                    PerfMapRefusal::Symlink => "symlink",
                    PerfMapRefusal::NotRegular => "not_regular",
                    PerfMapRefusal::Owner(_) => "owner",
                    PerfMapRefusal::Unreadable(_) => "unreadable",
                };
                (None, None, problem, format!("ignored `{}`: {refusal}", path.display()))
            }
        };
        *self.perf_map_problems.entry(problem).or_default() += 1;
        if self.perf_map_warned.len() > 10_000 {
            self.perf_map_warned.clear();
        }
        if self.perf_map_warned.insert(tgid) {
            tracing::warn!(pid = tgid, problem, "a process's perf map: {why}");
        }
        fresh(map, stamp)
    }

    /// Perf maps not read (`symlink`, `not_regular`, `owner`,
    /// `unreadable`, counted each window they are looked at) or only partly
    /// read (`truncated`, counted each time such a file is read).
    pub fn perf_map_problems(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.perf_map_problems.iter().map(|(&problem, &count)| (problem, count))
    }
}

/// Files at least this large have their freed parse state given back to
/// the system at once (see [`ParsedFiles::ReleaseAfterUse`]).
const TRIM_AFTER_FILE_BYTES: u64 = 16 << 20;

/// Files at least this large (or whose debug files may be: a 2 MB libc
/// has a 6 MB one) have the pages blazesym maps dropped as it reads them
/// ([`crate::util::memory::while_dropping_new_file_pages`]) in one pass.
/// Smaller files are not worth the thread that does it.
const DROP_FILE_PAGES_BYTES: u64 = 1 << 20;

fn new_blaze() -> blazesym::symbolize::Symbolizer {
    blazesym::symbolize::Symbolizer::builder()
        // Files are opened through handles that never change under a
        // path, and some (of exited processes) cannot be stat'ed again.
        .enable_auto_reload(false)
        .enable_code_info(true)
        .enable_inlined_fns(true)
        // Both names are needed: demangled for display, raw for system_name.
        .enable_demangling(false)
        .set_debug_dirs(Some([PathBuf::from("/usr/lib/debug"), PathBuf::from("/lib/debug")]))
        .build()
}

/// One shared `FunctionInfo` per distinct function.
fn intern(functions: &mut HashSet<Arc<FunctionInfo>>, raw: &str, file: String, start_line: u32) -> Arc<FunctionInfo> {
    let info = FunctionInfo {
        name: demangle(raw),
        system_name: raw.to_string(),
        file,
        start_line,
    };
    if let Some(found) = functions.get(&info) {
        return Arc::clone(found);
    }
    let shared = Arc::new(info);
    functions.insert(Arc::clone(&shared));
    shared
}

/// Bytes of a cache entry besides its frames: the key, the stamp and the
/// hash table's slot and control byte, rounded up.
const ENTRY_BYTES: u64 = 64;

/// Bytes of an address's frames: the shared slice, and the functions only
/// it refers to (synthetic ones; interned ones are counted once, in the
/// intern table).
fn lines_bytes(lines: &Lines) -> u64 {
    let slice = 2 * std::mem::size_of::<usize>() + std::mem::size_of_val::<[LineInfo]>(lines);
    let own = lines
        .iter()
        .filter(|line| Arc::strong_count(&line.function) == 1)
        .map(|line| function_bytes(&line.function))
        .sum::<u64>();
    slice as u64 + own
}

/// Bytes of a shared function: the Arc's counts, the struct and its strings.
fn function_bytes(function: &FunctionInfo) -> u64 {
    (2 * std::mem::size_of::<usize>()
        + std::mem::size_of::<FunctionInfo>()
        + function.name.capacity()
        + function.system_name.capacity()
        + function.file.capacity()) as u64
}

/// An upper estimate of what blazesym's parsed state of a file takes: its
/// symbol tables (read through the mapping to sort them) with the sorted
/// index over them (8 bytes per 24-byte symbol), the string tables (read
/// through the mapping as names are looked up; the kernel maps them in
/// 64 KiB runs, so they end up mostly resident), and with debug info its
/// DWARF sections. 0 when the file's headers cannot be read.
fn parsed_bytes_estimate(path: &Path, debug_info: bool) -> u64 {
    let Ok(file) = std::fs::File::open(path) else {
        return 0;
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let Ok(headers) = crate::unwind::elf::read_headers(&file, len) else {
        return 0;
    };
    let Ok(elf) = crate::unwind::elf::Elf::parse(&headers) else {
        return 0;
    };
    elf.sections
        .iter()
        .map(|section| {
            let bytes = section.file_range.len() as u64;
            match section.name.as_str() {
                ".symtab" | ".dynsym" => bytes + bytes / 3,
                ".strtab" | ".dynstr" => bytes,
                name if debug_info && name.starts_with(".debug_") => bytes,
                _ => 0,
            }
        })
        .sum()
}

fn code_file(info: Option<&blazesym::symbolize::CodeInfo<'_>>) -> String {
    match info {
        Some(info) => match &info.dir {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(&*info.file).display().to_string(),
            _ => PathBuf::from(&*info.file).display().to_string(),
        },
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{MappingKind, ProcessKey, ProcessTable};

    #[inline(never)]
    fn marker() -> u64 {
        marker as fn() -> u64 as usize as u64
    }

    /// Symbolizes this test binary's `marker` through a fresh table;
    /// returns the table (which holds the file open) and the file's key.
    fn symbolize_own_marker(symbolizer: &mut Symbolizer) -> (ProcessTable, FileKey) {
        symbolize_own_code(symbolizer, 0)
    }

    /// As [`symbolize_own_marker`], and `spread` more addresses spread
    /// over the whole of this binary's code.
    fn symbolize_own_code(symbolizer: &mut Symbolizer, spread: u64) -> (ProcessTable, FileKey) {
        let mut table = ProcessTable::new();
        let me = ProcessKey::new(std::process::id(), 1);
        table.observe(me);
        let info = table.get(me).expect("own process captured");
        let address = marker();
        let mapping = info.mapping_for(address).expect("own code is mapped").clone();
        let MappingKind::Object(key) = mapping.kind else {
            panic!("own binary not opened: {mapping:?}")
        };
        let offset = address - mapping.start + mapping.offset;
        let step = (mapping.end - mapping.start) / spread.max(1);
        let mut offsets: Vec<u64> = (0..spread).map(|i| mapping.offset + i * step).collect();
        offsets.push(offset);
        symbolizer.symbolize_object(key, table.object(key).expect("object"), &offsets);
        let lines = symbolizer.object_lines(key, offset).expect("cached");
        assert!(lines.iter().any(|l| l.function.name.contains("marker")), "{lines:?}");
        (table, key)
    }

    #[test]
    fn parsed_files_are_released_after_windows_without_use_and_names_stay() {
        let mut symbolizer = Symbolizer::with_debug_info(false);
        let (_table, _) = symbolize_own_marker(&mut symbolizer);
        assert_eq!(symbolizer.parsed_files(), 1);
        for _ in 0..3 {
            symbolizer.end_window();
            assert_eq!(symbolizer.parsed_files(), 1, "released before three idle windows");
        }
        symbolizer.end_window();
        assert_eq!(symbolizer.parsed_files(), 0, "kept after three windows without use");
        assert!(symbolizer.cached_addresses() > 0, "the names found are kept");
    }

    #[test]
    fn cache_bytes_rise_with_a_file_and_fall_as_it_goes_unused() {
        let mut symbolizer = Symbolizer::with_debug_info(false);
        assert_eq!(symbolizer.cache_bytes(), SymbolCacheBytes::default());
        let (table, key) = symbolize_own_marker(&mut symbolizer);
        let held = symbolizer.cache_bytes();
        // This test binary keeps its symbol table: the estimate counts it.
        let symtab = std::fs::metadata(std::env::current_exe().unwrap()).unwrap().len();
        assert!(
            held.parsed > 0 && held.parsed < symtab,
            "{held:?} of a {symtab}-byte file"
        );
        assert!(held.names > 0, "{held:?}");
        for _ in 0..4 {
            symbolizer.end_window();
        }
        let after = symbolizer.cache_bytes();
        assert_eq!(after.parsed, 0, "released after three windows without use");
        assert_eq!(after.names, held.names, "names stay while within their windows");
        // Used again: the cached name is stamped, the file is not parsed.
        let offset = *symbolizer.user.keys().next().map(|(_, o)| o).unwrap();
        symbolizer.symbolize_object(key, table.object(key).unwrap(), &[offset]);
        assert_eq!(symbolizer.parsed_files(), 0);
        for _ in 0..CacheBudget::default().names_windows {
            symbolizer.end_window();
        }
        assert_eq!(symbolizer.cached_addresses(), 1, "used four windows later, kept");
        symbolizer.end_window();
        assert_eq!(symbolizer.cached_addresses(), 0, "unused for the budget's windows");
        assert_eq!(symbolizer.cache_bytes(), SymbolCacheBytes::default());
    }

    #[test]
    fn files_over_the_parsed_budget_are_released_once_their_addresses_are_named() {
        let mut symbolizer = Symbolizer::with_debug_info(false);
        symbolizer.set_budget(CacheBudget {
            parsed_bytes: 1,
            ..CacheBudget::default()
        });
        let (_table, _) = symbolize_own_marker(&mut symbolizer);
        assert_eq!(
            symbolizer.parsed_files(),
            0,
            "over the budget by itself: released at once"
        );
        assert!(symbolizer.cached_addresses() > 0, "the names found stay");
        let mut symbolizer = Symbolizer::with_debug_info(false);
        let (_table, _) = symbolize_own_marker(&mut symbolizer);
        assert_eq!(symbolizer.parsed_files(), 1, "within the budget: kept");
        symbolizer.set_budget(CacheBudget {
            parsed_bytes: 1,
            ..CacheBudget::default()
        });
        symbolizer.end_window();
        assert_eq!(symbolizer.parsed_files(), 0, "over the budget at the end of the window");
    }

    #[test]
    fn names_over_their_budget_are_dropped_least_recently_used_first() {
        let mut symbolizer = Symbolizer::with_debug_info(false);
        let (table, key) = symbolize_own_marker(&mut symbolizer);
        let marker_offset = *symbolizer.user.keys().next().map(|(_, o)| o).unwrap();
        symbolizer.end_window();
        // A second address, one window later.
        let other = marker_offset + 1;
        symbolizer.symbolize_object(key, table.object(key).unwrap(), &[other]);
        let one_entry = lines_bytes(&symbolizer.user[&(key, other)].lines) + ENTRY_BYTES;
        let functions = symbolizer.functions.iter().map(|f| function_bytes(f) + 8).sum::<u64>();
        symbolizer.set_budget(CacheBudget {
            names_bytes: functions + one_entry,
            ..CacheBudget::default()
        });
        symbolizer.end_window();
        assert!(symbolizer.object_lines(key, other).is_some(), "the newer one stays");
        assert!(
            symbolizer.object_lines(key, marker_offset).is_none(),
            "the older one goes"
        );
        assert!(symbolizer.cache_bytes().names <= functions + one_entry);
    }

    /// One pass also drops the pages blazesym maps while it reads this
    /// test binary (hundreds of MiB of DWARF), so this is the proof that
    /// dropping them changes no name, line or inlined frame.
    #[test]
    fn one_pass_symbolizing_releases_each_file_at_once_with_the_same_names() {
        // 400 addresses besides `marker`, so that the comparison covers
        // many units, lines and inlined frames.
        let mut kept = Symbolizer::new();
        let (_table, key) = symbolize_own_code(&mut kept, 400);
        let mut released = Symbolizer::new();
        released.set_parsed_files(ParsedFiles::ReleaseAfterUse);
        let (_table2, key2) = symbolize_own_code(&mut released, 400);
        assert_eq!(released.parsed_files(), 0);
        assert_eq!(key, key2);
        assert_eq!(kept.cached_addresses(), released.cached_addresses());
        assert!(
            released.user.values().filter(|c| c.lines.len() > 1).count() > 10
                && released.user.values().filter(|c| c.lines[0].line > 0).count() > 100,
            "too few inlined frames and lines to compare"
        );
        // Kernel frames: named while reading kallsyms in one pass, from
        // the kept table otherwise.
        let table = KernelSymbols::load();
        let kernel: Vec<u64> = table.addresses().step_by(101).flat_map(|a| [a, a + 7]).collect();
        kept.symbolize_kernel(&kernel);
        released.symbolize_kernel(&kernel);
        assert!(released.kernel_symbols.is_none(), "one pass kept the kallsyms table");
        for address in &kernel {
            assert_eq!(
                kept.kernel_lines(*address),
                released.kernel_lines(*address),
                "at {address:#x}"
            );
        }
        for (k, lines) in &kept.user {
            assert_eq!(
                released.user.get(k).map(|c| &c.lines),
                Some(&lines.lines),
                "names, lines and inlined frames must not change"
            );
        }
    }
}
