//! Crash-safe file writes, for the spool, the `file` protocol and the
//! output of `taskprof profile`: a reader either sees the whole new file or
//! no file at all, never half of one, even if the process dies or the
//! machine loses power mid-write.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The ending of every temporary file; leftovers with it are stale.
pub(crate) const TEMP_SUFFIX: &str = ".tmp";

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// flushed to disk before it is renamed over `path`.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    PendingFile::create(path)?.commit(bytes)
}

/// A file being prepared: its temporary file exists from the start (which
/// proves the directory writable) and is moved into place only when
/// complete. Dropped uncommitted, it leaves nothing behind.
#[derive(Debug)]
pub(crate) struct PendingFile {
    path: PathBuf,
    temp: PathBuf,
    file: Option<File>,
}

impl PendingFile {
    /// Creates the temporary file beside `path`.
    pub(crate) fn create(path: &Path) -> io::Result<PendingFile> {
        let temp = temp_path(path);
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&temp)?;
        Ok(PendingFile {
            path: path.to_path_buf(),
            temp,
            file: Some(file),
        })
    }

    /// The destination.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes`, flushes them to disk, renames the file over the
    /// destination and persists the rename.
    pub(crate) fn commit(mut self, bytes: &[u8]) -> io::Result<()> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("the file is already committed"))?;
        let written = (|| {
            file.write_all(bytes)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&self.temp, &self.path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&self.temp);
            return written;
        }
        sync_parent(&self.path);
        Ok(())
    }
}

/// Deletes `path` and persists the deletion, so that once this returns a
/// crash cannot bring the file back. A file already gone is not an error.
pub(crate) fn remove_durably(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        removed => removed?,
    }
    sync_parent(path);
    Ok(())
}

/// Persists the entries of `path`'s directory (a rename, a new or deleted
/// name). Some file systems refuse to sync a directory; the change is made
/// either way.
fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// The temporary file for `path`: hidden, and named after this process so
/// that two processes sharing a directory never write the same one.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}{TEMP_SUFFIX}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_whole_files_and_leave_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.bin");
        write_atomically(&path, b"first").expect("write");
        write_atomically(&path, b"second").expect("overwrite");
        assert_eq!(fs::read(&path).expect("read"), b"second");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.bin")]);
    }

    #[test]
    fn durable_removal_deletes_and_accepts_a_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.bin");
        write_atomically(&path, b"x").expect("write");
        remove_durably(&path).expect("remove");
        assert!(!path.exists());
        remove_durably(&path).expect("removing a missing file is fine");
    }
}
