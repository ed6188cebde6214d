//! Process tracking: what each sampled process had mapped, and open
//! handles on the files behind those mappings, captured while the process
//! is alive so that it can be symbolized after it exits.
//!
//! A process is captured the first time it is seen (the BPF program
//! announces new thread groups). Each distinct file (by device and inode)
//! is opened once, however many processes map it; the open handle keeps
//! the file readable even if the process exits or the file is deleted.

pub mod cgroup;
pub mod maps;

use rustc_hash::FxHashMap as HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use maps::{Backing, MapsEntry};

/// Identity of a mapped file: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    /// Device, `major << 32 | minor`.
    pub dev: u64,
    /// Inode.
    pub inode: u64,
}

/// An open handle on a mapped file, shared by every process mapping it.
#[derive(Debug)]
pub struct ObjectFile {
    /// Keeps the file readable after its process exits.
    file: File,
    /// The path the file had in the first process that mapped it.
    pub original_path: PathBuf,
    /// The GNU build id, if the file is ELF and has one.
    pub build_id: Option<Vec<u8>>,
}

impl ObjectFile {
    /// A path that opens this very file for as long as the handle lives.
    pub fn handle_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// The file's size in bytes, or 0 if it cannot be read.
    pub fn size(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }
}

/// What kind of memory an executable mapping is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingKind {
    /// A file we hold a handle on.
    Object(FileKey),
    /// A file that could not be opened (gone, or no permission).
    UnreadableFile,
    /// The vDSO.
    Vdso,
    /// Anonymous executable memory, typically JIT code.
    Anonymous,
    /// Another kernel-provided region.
    Special,
}

/// One executable mapping of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// Display name: the file path, `[vdso]`, `[anon]`, ...
    pub name: String,
    /// What backs it.
    pub kind: MappingKind,
}

impl Mapping {
    /// The file offset of `address`, which should lie in the mapping; one
    /// below it (the call before a return address at the mapping's very
    /// start) counts as its start.
    pub fn file_offset(&self, address: u64) -> u64 {
        address.saturating_sub(self.start) + self.offset
    }
}

/// A process: its thread group id and the incarnation the BPF program gave
/// it. A pid that is reused, or a process that execs, gets a new
/// incarnation, so samples never meet another process's mappings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    /// Thread group id.
    pub tgid: u32,
    /// Incarnation number from the BPF program.
    pub incarnation: u32,
}

impl ProcessKey {
    /// The process `tgid` in its `incarnation`.
    pub const fn new(tgid: u32, incarnation: u32) -> ProcessKey {
        ProcessKey { tgid, incarnation }
    }
}

/// A captured process.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    /// Thread group id.
    pub tgid: u32,
    /// The process's own name (the comm of its main thread).
    pub name: String,
    /// Start time in clock ticks since boot; with the tgid it identifies
    /// the process across PID reuse.
    pub start_time: u64,
    /// Executable mappings, sorted by address.
    pub mappings: Vec<Mapping>,
    /// Whether the process was found alive at the last capture.
    pub captured: bool,
}

/// Reads a process's start time, to tell it apart from a later process
/// with the same pid.
pub fn process_start_time(proc_root: &Path, tgid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(tgid.to_string()).join("stat")).ok()?;
    parse_start_time(&stat)
}

impl ProcessInfo {
    /// The mapping containing `address`.
    pub fn mapping_for(&self, address: u64) -> Option<&Mapping> {
        let index = self.mappings.partition_point(|m| m.start <= address);
        let mapping = self.mappings.get(index.checked_sub(1)?)?;
        (address < mapping.end).then_some(mapping)
    }
}

/// Processes and the files they map.
#[derive(Debug)]
pub struct ProcessTable {
    proc_root: PathBuf,
    processes: HashMap<ProcessKey, ProcessInfo>,
    objects: HashMap<FileKey, ObjectFile>,
    unopenable: HashMap<FileKey, ()>,
}

impl Default for ProcessTable {
    fn default() -> Self {
        ProcessTable::new()
    }
}

impl ProcessTable {
    /// A table reading the host's `/proc`.
    pub fn new() -> ProcessTable {
        ProcessTable::with_proc_root("/proc")
    }

    /// A table reading another proc mount (for tests).
    pub fn with_proc_root(root: impl Into<PathBuf>) -> ProcessTable {
        raise_fd_limit();
        ProcessTable {
            proc_root: root.into(),
            processes: HashMap::default(),
            objects: HashMap::default(),
            unopenable: HashMap::default(),
        }
    }

    /// Captures a process unless it is already known. A process that is
    /// already gone is remembered as such, with no mappings.
    pub fn observe(&mut self, key: ProcessKey) {
        if !self.processes.contains_key(&key) {
            let info = self.capture(key.tgid);
            self.processes.insert(key, info);
        }
    }

    /// Re-reads the mappings of a live process, keeping those it had: used
    /// when an address falls outside every known mapping (after dlopen or
    /// exec). Returns whether anything was added.
    pub fn refresh(&mut self, key: ProcessKey) -> bool {
        let fresh = self.capture(key.tgid);
        if !fresh.captured {
            return false;
        }
        let Some(known) = self.processes.get_mut(&key) else {
            self.processes.insert(key, fresh);
            return true;
        };
        if known.captured && known.start_time != fresh.start_time {
            // The pid now belongs to another process: keep what we had.
            return false;
        }
        let mut added = false;
        for mapping in fresh.mappings {
            if !known
                .mappings
                .iter()
                .any(|m| m.start == mapping.start && m.end == mapping.end)
            {
                known.mappings.push(mapping);
                added = true;
            }
        }
        known.mappings.sort_by_key(|m| m.start);
        if !known.captured {
            known.name = fresh.name;
            known.start_time = fresh.start_time;
            known.captured = true;
        }
        added
    }

    /// A captured process.
    pub fn get(&self, key: ProcessKey) -> Option<&ProcessInfo> {
        self.processes.get(&key)
    }

    /// Every captured process.
    pub fn processes(&self) -> impl Iterator<Item = (&ProcessKey, &ProcessInfo)> {
        self.processes.iter()
    }

    /// How many processes are tracked.
    pub fn len(&self) -> usize {
        self.processes.len()
    }

    /// Whether no process is tracked.
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }

    /// The open file behind an object mapping.
    pub fn object(&self, key: FileKey) -> Option<&ObjectFile> {
        self.objects.get(&key)
    }

    /// How many distinct files are held open.
    pub fn object_count(&self) -> usize {
        self.objects.len()
    }

    /// Forgets a process (its files stay open while other processes map them
    /// until [`ProcessTable::release_unused_objects`]).
    pub fn forget(&mut self, key: ProcessKey) {
        self.processes.remove(&key);
    }

    /// Closes files no remembered process maps any more, after `before_close`
    /// has seen each (to drop caches keyed by its handle path).
    pub fn release_unused_objects(&mut self, mut before_close: impl FnMut(FileKey, &ObjectFile)) {
        let mut used = rustc_hash::FxHashSet::default();
        for process in self.processes.values() {
            for mapping in &process.mappings {
                if let MappingKind::Object(key) = mapping.kind {
                    used.insert(key);
                }
            }
        }
        self.objects.retain(|key, object| {
            let keep = used.contains(key);
            if !keep {
                before_close(*key, object);
            }
            keep
        });
        self.unopenable.retain(|key, _| used.contains(key));
    }

    fn capture(&mut self, tgid: u32) -> ProcessInfo {
        let dir = self.proc_root.join(tgid.to_string());
        let name = std::fs::read_to_string(dir.join("comm"))
            .map(|s| s.trim_end_matches('\n').to_string())
            .unwrap_or_default();
        let start_time = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|stat| parse_start_time(&stat))
            .unwrap_or(0);
        let Ok(text) = std::fs::read_to_string(dir.join("maps")) else {
            return ProcessInfo {
                tgid,
                name,
                start_time,
                mappings: Vec::new(),
                captured: false,
            };
        };
        let mut mappings: Vec<Mapping> = maps::parse_maps(&text)
            .into_iter()
            .filter(|entry| entry.executable)
            .map(|entry| self.track_mapping(tgid, &entry))
            .collect();
        mappings.sort_by_key(|m| m.start);
        ProcessInfo {
            tgid,
            name,
            start_time,
            mappings,
            captured: true,
        }
    }

    fn track_mapping(&mut self, tgid: u32, entry: &MapsEntry) -> Mapping {
        let (name, kind) = match &entry.backing {
            Backing::File(path) | Backing::DeletedFile(path) => {
                let key = FileKey {
                    dev: entry.dev,
                    inode: entry.inode,
                };
                let kind = if self.objects.contains_key(&key) {
                    MappingKind::Object(key)
                } else if self.unopenable.contains_key(&key) {
                    MappingKind::UnreadableFile
                } else {
                    match self.open_object(tgid, entry, path) {
                        Some(object) => {
                            self.objects.insert(key, object);
                            MappingKind::Object(key)
                        }
                        None => {
                            self.unopenable.insert(key, ());
                            MappingKind::UnreadableFile
                        }
                    }
                };
                (path.display().to_string(), kind)
            }
            Backing::Special(name) if name == "[vdso]" => (name.clone(), MappingKind::Vdso),
            Backing::Special(name) => (name.clone(), MappingKind::Special),
            Backing::Anonymous => ("[anon]".to_string(), MappingKind::Anonymous),
        };
        Mapping {
            start: entry.start,
            end: entry.end,
            offset: entry.offset,
            name,
            kind,
        }
    }

    /// Opens the file behind a mapping: through map_files first (works for
    /// deleted files and other mount namespaces, but needs
    /// CAP_CHECKPOINT_RESTORE), else through the process's root.
    fn open_object(&self, tgid: u32, entry: &MapsEntry, path: &Path) -> Option<ObjectFile> {
        let dir = self.proc_root.join(tgid.to_string());
        let by_range = dir.join(format!("map_files/{:x}-{:x}", entry.start, entry.end));
        let file = File::open(&by_range)
            .or_else(|_| {
                let root_link = std::fs::read_link(dir.join("root")).unwrap_or_default();
                File::open(dir.join("root").join(path_in_root(&root_link, path)))
            })
            .ok()?;
        let handle = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let build_id = blazesym::helper::read_elf_build_id(&handle)
            .ok()
            .flatten()
            .map(|id| id.to_vec());
        Some(ObjectFile {
            file,
            original_path: path.to_path_buf(),
            build_id,
        })
    }
}

/// Where a mapped file's path, as `/proc/PID/maps` shows it, lies under the
/// process's root (`/proc/PID/root`).
///
/// The kernel prints both the mapped path and the `/proc/PID/root` link
/// relative to the *reader's* root. Where the reader can reach the target's
/// files from its own root (one mount namespace), the mapped path is already
/// relative to the target's root, or the root link is a prefix of it. Where
/// it cannot (the reader in another mount namespace, as the agent is in its
/// own container, or a reader confined by `unshare --mount` inside a
/// chroot), both are printed from the top of the target's mount tree: the
/// root link then reads e.g. `/srv/chroot`, the mapped path
/// `/srv/chroot/usr/bin/app`, and only `usr/bin/app` exists under
/// `/proc/PID/root`. So the root link's text is taken off the front of the
/// path, component by component, when it is there.
pub fn path_in_root(root_link: &Path, mapped: &Path) -> PathBuf {
    let under = match mapped.strip_prefix(root_link) {
        Ok(rest) if root_link != Path::new("/") && !root_link.as_os_str().is_empty() => rest,
        _ => mapped,
    };
    under.strip_prefix("/").unwrap_or(under).to_path_buf()
}

/// The start time (field 22) from `/proc/PID/stat`. The comm field may hold
/// spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' come fields 3 (state) onwards; start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Every distinct mapped file costs one descriptor; lift the soft limit to
/// the hard one so a busy host does not run out.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read a valid, initialised rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression test: a caller's return address at the very start of a
    /// mapping is looked up one byte lower, which overflowed (a panic in
    /// debug builds, a wild offset in release ones).
    #[test]
    fn the_byte_before_a_mapping_counts_as_its_start() {
        let mapping = Mapping {
            start: 0x1000,
            end: 0x2000,
            offset: 0x3000,
            name: "/usr/bin/app".into(),
            kind: MappingKind::Anonymous,
        };
        assert_eq!(mapping.file_offset(0x1010), 0x3010);
        assert_eq!(mapping.file_offset(0x0fff), 0x3000);
    }

    #[test]
    fn mapped_paths_are_taken_relative_to_the_process_root() {
        let cases = [
            ("/", "/usr/bin/app", "usr/bin/app"),
            ("", "/usr/bin/app", "usr/bin/app"),
            ("/srv/chroot", "/srv/chroot/usr/bin/app", "usr/bin/app"),
            // A root that is only a string prefix of a component is not stripped.
            ("/srv/ch", "/srv/chroot/usr/bin/app", "srv/chroot/usr/bin/app"),
            // A path outside the root's text stays whole.
            ("/srv/chroot", "/usr/lib/libc.so.6", "usr/lib/libc.so.6"),
        ];
        for (root, mapped, want) in cases {
            assert_eq!(
                path_in_root(Path::new(root), Path::new(mapped)),
                PathBuf::from(want),
                "root {root:?}, mapped {mapped:?}"
            );
        }
    }

    #[test]
    fn start_time_survives_comm_with_spaces_and_parens() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn own_process_is_captured_with_its_executable_and_handles() {
        let mut table = ProcessTable::new();
        let me = ProcessKey::new(std::process::id(), 1);
        table.observe(me);
        let info = table.get(me).expect("own process captured");
        assert!(info.captured);
        assert!(info.start_time > 0);
        let here = own_address();
        let mapping = info.mapping_for(here).expect("own code is mapped");
        let MappingKind::Object(key) = mapping.kind else {
            panic!("own binary not opened: {mapping:?}")
        };
        let object = table.object(key).expect("object held");
        assert!(std::fs::metadata(object.handle_path()).is_ok());
        assert!(object.build_id.is_some(), "rustc emits a build id");
    }

    #[test]
    fn a_pid_that_does_not_exist_is_remembered_as_not_captured() {
        let mut table = ProcessTable::new();
        let gone = ProcessKey::new(u32::MAX - 1, 1);
        table.observe(gone);
        let info = table.get(gone).expect("entry kept");
        assert!(!info.captured && info.mappings.is_empty());
        assert!(info.mapping_for(0x1000).is_none());
    }

    #[inline(never)]
    fn own_address() -> u64 {
        own_address as fn() -> u64 as usize as u64
    }
}
