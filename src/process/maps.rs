//! Parsing of `/proc/PID/maps`.

use std::path::PathBuf;

/// What backs a mapping, from the maps line's pathname column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// A file, by its path inside the process's mount namespace.
    File(PathBuf),
    /// A file that was deleted after it was mapped (`... (deleted)`).
    DeletedFile(PathBuf),
    /// A kernel-provided region such as `[vdso]`, `[heap]` or `[stack]`.
    Special(String),
    /// Anonymous memory (JIT code lives here).
    Anonymous,
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsEntry {
    /// First address of the mapping.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `r` permission.
    pub readable: bool,
    /// `x` permission.
    pub executable: bool,
    /// Offset of `start` in the backing file.
    pub offset: u64,
    /// Device of the backing file, `major << 32 | minor`.
    pub dev: u64,
    /// Inode of the backing file; 0 for anonymous memory.
    pub inode: u64,
    /// What backs the mapping.
    pub backing: Backing,
}

/// Parses one maps line, or `None` when it is malformed.
pub fn parse_maps_line(line: &str) -> Option<MapsEntry> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start();

    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    // An empty range is no mapping: the kernel never shows one, and every
    // later step assumes start < end.
    if end <= start || perms.len() < 4 {
        return None;
    }
    let perms = perms.as_bytes();
    let (major, minor) = dev.split_once(':')?;
    let dev = (u64::from_str_radix(major, 16).ok()? << 32) | u64::from_str_radix(minor, 16).ok()?;
    let inode: u64 = inode.parse().ok()?;
    let backing = if path.is_empty() {
        Backing::Anonymous
    } else if path.starts_with('[') {
        Backing::Special(path.to_string())
    } else if let Some(deleted) = path.strip_suffix(" (deleted)") {
        Backing::DeletedFile(PathBuf::from(deleted))
    } else if path.starts_with('/') {
        Backing::File(PathBuf::from(path))
    } else {
        // e.g. "anon_inode:..." or "/memfd:..." variants without a real file
        Backing::Special(path.to_string())
    };
    Some(MapsEntry {
        start,
        end,
        readable: perms[0] == b'r',
        executable: perms[2] == b'x',
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev,
        inode,
        backing,
    })
}

/// Parses a whole maps file, skipping malformed lines.
pub fn parse_maps(text: &str) -> Vec<MapsEntry> {
    text.lines().filter_map(parse_maps_line).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c7a00000-55d0c7a02000 r--p 00000000 fd:01 1835016                    /usr/bin/cat
55d0c7a02000-55d0c7a07000 r-xp 00002000 fd:01 1835016                    /usr/bin/cat
55d0c8c5e000-55d0c8c7f000 rw-p 00000000 00:00 0                          [heap]
7f1e2a600000-7f1e2a628000 r--p 00000000 fd:01 1837343                    /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e2a628000-7f1e2a79d000 r-xp 00028000 fd:01 1837343                    /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e2a800000-7f1e2a900000 r-xp 00000000 00:00 0 
7f1e2b000000-7f1e2b010000 r-xp 00001000 08:02 42                         /tmp/my app (deleted)
7ffd5e9f0000-7ffd5e9f2000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn parses_files_specials_anonymous_and_deleted() {
        let entries = parse_maps(MAPS);
        assert_eq!(entries.len(), 9);
        let text = &entries[1];
        assert_eq!(
            (text.start, text.end, text.offset),
            (0x55d0c7a02000, 0x55d0c7a07000, 0x2000)
        );
        assert!(text.executable && text.readable);
        assert_eq!(text.dev, (0xfd << 32) | 1);
        assert_eq!(text.inode, 1835016);
        assert_eq!(text.backing, Backing::File("/usr/bin/cat".into()));
        assert_eq!(entries[2].backing, Backing::Special("[heap]".into()));
        assert!(!entries[2].executable);
        assert_eq!(entries[5].backing, Backing::Anonymous);
        assert_eq!(entries[6].backing, Backing::DeletedFile("/tmp/my app".into()));
        assert_eq!(entries[7].backing, Backing::Special("[vdso]".into()));
        assert!(!entries[8].readable && entries[8].executable);
    }

    /// Found by the `proc_maps` fuzz target: `start == end` was accepted.
    #[test]
    fn an_empty_maps_range_is_malformed() {
        assert_eq!(parse_maps_line("7f00-7f00 r-xp 00000000 00:00 0 [vdso]"), None);
        assert!(parse_maps_line("7f00-7f01 r-xp 00000000 00:00 0 [vdso]").is_some());
    }

    #[test]
    fn malformed_lines_are_skipped_not_fatal() {
        let text = "garbage\n1000-2000 r-xp zz 00:00 0 /x\n2000-1000 r-xp 0 00:00 0 /x\n1000-2000 r-xp 0 00:00 0 /ok\n";
        let entries = parse_maps(text);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].backing, Backing::File("/ok".into()));
    }
}
