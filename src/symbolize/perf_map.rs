//! `/tmp/perf-PID.map`, written by JIT runtimes (V8/Node, the JVM with an
//! agent, .NET, LuaJIT...): one `START SIZE name` line per function, hex.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// How much of a perf map is read. A JIT runtime's map of hundreds of
/// thousands of functions is a few tens of MiB; a larger file is read this
/// far, so that a process cannot make the agent's memory balloon.
pub const MAX_PERF_MAP_BYTES: u64 = 64 << 20;

/// The identity and version of a perf map file: device, inode, size and
/// modification time. A file with the same stamp is not read again.
pub type PerfMapStamp = (u64, u64, u64, i64, i64);

/// What reading a process's perf map found.
#[derive(Debug)]
pub enum PerfMapRead {
    /// No perf map.
    Missing,
    /// The same file as `previous`, unchanged: not read again.
    Unchanged,
    /// A perf map, `truncated` if it was longer than [`MAX_PERF_MAP_BYTES`].
    Loaded {
        /// The parsed map.
        map: PerfMap,
        /// Whether only the first [`MAX_PERF_MAP_BYTES`] were read.
        truncated: bool,
        /// The file it was read from.
        stamp: PerfMapStamp,
    },
    /// A file that is not read (see [`PerfMapRefusal`]).
    Refused {
        /// The file.
        path: PathBuf,
        /// Why.
        refusal: PerfMapRefusal,
    },
}

/// Why a perf map file was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PerfMapRefusal {
    /// There is no such file.
    #[error("there is no such file")]
    Missing,
    /// The name is a symbolic link.
    #[error("it is a symbolic link, which is not followed")]
    Symlink,
    /// A FIFO, socket, device or directory.
    #[error("it is not a regular file")]
    NotRegular,
    /// Owned by neither root nor the process's user.
    #[error("it is owned by uid {0}, neither root nor the process's user")]
    Owner(u32),
    /// It could not be read.
    #[error("it could not be read: {0}")]
    Unreadable(String),
}

/// Opens a perf map file as [`PerfMap::load_for`] describes, returning it
/// with its stamp.
fn open_checked(path: &Path, owner: Option<u32>) -> Result<(File, PerfMapStamp), PerfMapRefusal> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
    // writer forever. O_NOFOLLOW: a symlink fails with ELOOP.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| match err.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => PerfMapRefusal::Missing,
            Some(libc::ELOOP) => PerfMapRefusal::Symlink,
            _ => PerfMapRefusal::Unreadable(err.to_string()),
        })?;
    let metadata = file
        .metadata()
        .map_err(|err| PerfMapRefusal::Unreadable(err.to_string()))?;
    if !metadata.file_type().is_file() {
        return Err(PerfMapRefusal::NotRegular);
    }
    if metadata.uid() != 0 && Some(metadata.uid()) != owner {
        return Err(PerfMapRefusal::Owner(metadata.uid()));
    }
    let stamp = (
        metadata.dev(),
        metadata.ino(),
        metadata.len(),
        metadata.mtime(),
        metadata.mtime_nsec(),
    );
    Ok((file, stamp))
}

/// Reads a perf map as [`PerfMap::load_for`] does, returning its text and
/// whether it was cut.
#[cfg(test)]
fn read_bounded(path: &Path, owner: Option<u32>) -> Result<(String, bool), PerfMapRefusal> {
    let (file, _) = open_checked(path, owner)?;
    read_prefix(file, MAX_PERF_MAP_BYTES)
}

/// The first `limit` bytes of `file` as text, cut at the last newline when
/// the file is longer, and whether it was.
fn read_prefix(file: File, limit: u64) -> Result<(String, bool), PerfMapRefusal> {
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|err| PerfMapRefusal::Unreadable(err.to_string()))?;
    let truncated = bytes.len() as u64 > limit;
    if truncated {
        let end = bytes.iter().rposition(|&b| b == b'\n').unwrap_or(0);
        bytes.truncate(end);
    }
    Ok((String::from_utf8_lossy(&bytes).into_owned(), truncated))
}

/// A parsed perf map, sorted by start address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerfMap {
    entries: Vec<(u64, u64, String)>,
}

impl PerfMap {
    /// Bytes the map holds on the heap.
    pub fn heap_bytes(&self) -> u64 {
        let entries = self.entries.capacity() * std::mem::size_of::<(u64, u64, String)>();
        (entries + self.entries.iter().map(|e| e.2.capacity()).sum::<usize>()) as u64
    }

    /// Parses perf map text, skipping malformed lines.
    pub fn parse(text: &str) -> PerfMap {
        let mut entries: Vec<(u64, u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, ' ');
                let start = u64::from_str_radix(parts.next()?.trim_start_matches("0x"), 16).ok()?;
                let size = u64::from_str_radix(parts.next()?.trim_start_matches("0x"), 16).ok()?;
                let name = parts.next()?.trim();
                (!name.is_empty()).then(|| (start, start.saturating_add(size), name.to_string()))
            })
            .collect();
        // Later lines win for a start address (code regenerated in place).
        entries.reverse();
        entries.sort_by_key(|e| e.0);
        entries.dedup_by_key(|e| e.0);
        PerfMap { entries }
    }

    /// The perf map of `tgid`: from its own /tmp when it is alive (it may
    /// live in another mount namespace), else from the host's /tmp.
    ///
    /// The profiled process writes this file, so it is read with care: a
    /// symlink is not followed (it could point at any file the agent can
    /// read), only a regular file owned by root or by the process's user is
    /// read (never a FIFO that would block or a device), and at most
    /// [`MAX_PERF_MAP_BYTES`] of it. Lines that are not UTF-8 are kept
    /// with replacement characters.
    ///
    /// A file whose stamp equals `previous` is not read again.
    pub fn load_for(tgid: u32, previous: Option<PerfMapStamp>) -> PerfMapRead {
        let name = format!("perf-{tgid}.map");
        let process = Path::new("/proc").join(tgid.to_string());
        let owner = std::fs::metadata(&process).ok().map(|m| m.uid());
        let candidates: [PathBuf; 2] = [process.join("root/tmp").join(&name), Path::new("/tmp").join(&name)];
        for path in candidates {
            match open_checked(&path, owner) {
                Err(PerfMapRefusal::Missing) => continue,
                Err(refusal) => return PerfMapRead::Refused { path, refusal },
                Ok((file, stamp)) if Some(stamp) == previous => {
                    drop(file);
                    return PerfMapRead::Unchanged;
                }
                Ok((file, stamp)) => {
                    return match read_prefix(file, MAX_PERF_MAP_BYTES) {
                        Ok((text, truncated)) => PerfMapRead::Loaded {
                            map: PerfMap::parse(&text),
                            truncated,
                            stamp,
                        },
                        Err(refusal) => PerfMapRead::Refused { path, refusal },
                    };
                }
            }
        }
        PerfMapRead::Missing
    }

    /// The function containing `address`.
    pub fn lookup(&self, address: u64) -> Option<&str> {
        let index = self.entries.partition_point(|e| e.0 <= address).checked_sub(1)?;
        let (_, end, name) = &self.entries[index];
        (address < *end).then_some(name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_inside_outside_and_malformed() {
        let map = PerfMap::parse("1000 10 LazyCompile:~foo app.js:1\nzz 1 bad\n2000 0x20 Function:bar\n");
        assert_eq!(map.lookup(0x1008), Some("LazyCompile:~foo app.js:1"));
        assert_eq!(map.lookup(0x1010), None);
        assert_eq!(map.lookup(0x201f), Some("Function:bar"));
        assert_eq!(map.lookup(0xfff), None);
    }

    #[test]
    fn fifos_symlinks_and_foreign_owners_are_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real.map");
        std::fs::write(&real, "1000 10 f\n").expect("write");
        let me = Some(std::fs::metadata(&real).expect("stat").uid());
        assert_eq!(read_bounded(&real, me).map(|(t, cut)| (t.len(), cut)), Ok((10, false)));

        let link = dir.path().join("link.map");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        assert_eq!(read_bounded(&link, me), Err(PerfMapRefusal::Symlink));

        let fifo = dir.path().join("fifo.map");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a node.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
        assert_eq!(read_bounded(&fifo, me), Err(PerfMapRefusal::NotRegular));

        assert_eq!(
            read_bounded(&dir.path().join("none.map"), me),
            Err(PerfMapRefusal::Missing)
        );
        if me != Some(0) {
            assert!(matches!(
                read_bounded(&real, Some(12345)),
                Err(PerfMapRefusal::Owner(_))
            ));
        }
    }

    #[test]
    fn long_maps_are_cut_at_a_whole_line_and_invalid_utf8_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big.map");
        std::fs::write(&path, b"1000 10 first\n2000 10 caf\xe9\n3000 10 third\n").expect("write");
        let (text, cut) = read_prefix(File::open(&path).expect("open"), 30).expect("read");
        assert!(cut);
        let map = PerfMap::parse(&text);
        assert_eq!(map.lookup(0x1000), Some("first"));
        assert_eq!(map.lookup(0x2000), Some("caf\u{fffd}"));
        assert_eq!(map.lookup(0x3000), None, "the cut line is not half-read");
    }
}
