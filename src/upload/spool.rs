//! The on-disk spool: windows that could not be delivered yet, one file
//! each, kept across restarts and replayed oldest first.
//!
//! Files are named `{sequence:020}.batch`, so the directory's lexical order
//! is the windows' order. Each is written aside and renamed into place, so a
//! crash leaves either the old file or the new one. The size of the whole
//! spool is bounded: to make room, the oldest windows are evicted first,
//! since the newest data is the most useful once the backend is back.
//!
//! A file is a small binary record, little-endian throughout:
//!
//! ```text
//! magic "TPSPOOL\0" | version u32 (2) | sequence u64
//! start secs u64 | start nanos u32 | end secs u64 | end nanos u32
//! profile count u32, then per profile:
//!     label count u32, then per label: name len u32, name, value len u32, value
//!     samples u64 | payload len u64 | payload bytes
//! shared len u64 | shared bytes          (version 2 only)
//! CRC-32 of everything above, u32
//! ```
//!
//! Version 2 added the window's shared bytes (OTLP's dictionary, which
//! every profile of the window points into); version 1 files, which have
//! none, are still read.
//!
//! The header carries the profile count, so opening the spool reads only
//! the header and each profile's lengths and sample count (to account for
//! the samples of a window it evicts), skipping the pprof bytes; the
//! checksum is verified when a window is read back. Files that fail either
//! check are renamed to `*.corrupt` and skipped, never deleted, so that
//! someone can look at them.
//!
//! Sending a spooled window is bracketed on disk, so that a restart knows
//! what a crash interrupted. Before the first request goes out, an empty
//! marker `{sequence:020}.batch.sending` is written and synced. Once the
//! backend has accepted the whole window, its file is deleted and the
//! deletion synced first, then the marker: from then on no restart sends
//! it again. If only part of it was accepted, the file is replaced by the
//! rest before the marker goes. A restart that finds a marker beside its
//! window cannot know whether the backend got it (the kill came between the
//! request and the deletion), so it sends the window again, and counts and
//! logs that; a marker alone is a delivery that completed.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Batch, SeriesProfile, SpoolConfig};
use crate::agent::metrics::Metrics;
use crate::util::durable::{remove_durably, write_atomically, TEMP_SUFFIX};

const MAGIC: &[u8; 8] = b"TPSPOOL\0";
const VERSION: u32 = 2;
/// The first format, without shared bytes; still read.
const VERSION_WITHOUT_SHARED: u32 = 1;
/// Bytes before the first profile.
const HEADER_LEN: usize = 8 + 4 + 8 + 8 + 4 + 8 + 4 + 4;
const EXTENSION: &str = ".batch";
const QUARANTINE_SUFFIX: &str = ".corrupt";
/// Appended to a window's file name for the marker of a send under way.
const SENDING_SUFFIX: &str = ".sending";

/// A spool operation that failed on the file system.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The spool directory could not be created.
    #[error("failed to create the spool directory `{path}`: {error}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The operating system's reason.
        error: io::Error,
    },
    /// The spool directory could not be listed.
    #[error("failed to list the spool directory `{path}`: {error}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The operating system's reason.
        error: io::Error,
    },
    /// A spooled window could not be read.
    #[error("failed to read the spool file `{path}`: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        error: io::Error,
    },
    /// A window could not be written.
    #[error("failed to write the spool file `{path}`: {error}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        error: io::Error,
    },
    /// A delivered window could not be removed.
    #[error("failed to remove the spool file `{path}`: {error}")]
    Remove {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        error: io::Error,
    },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    bytes: u64,
    profiles: u64,
    /// Samples in its profiles, counted as dropped if it is evicted.
    samples: u64,
}

/// Windows waiting on disk for the backend, bounded in total size.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    entries: BTreeMap<u64, Entry>,
    total_bytes: u64,
    evictions: u64,
    metrics: Metrics,
}

impl Spool {
    /// Opens the spool in `config.dir`, creating the directory if needed.
    ///
    /// Windows left by an earlier run are picked up; stale temporary files
    /// are deleted; files with a bad header are quarantined with a warning.
    /// If the windows found exceed `config.max_bytes`, the oldest are evicted.
    pub fn open(config: &SpoolConfig, metrics: Metrics) -> Result<Spool, SpoolError> {
        let dir = config.dir.clone();
        fs::create_dir_all(&dir).map_err(|error| SpoolError::CreateDir {
            path: dir.clone(),
            error,
        })?;
        let mut spool = Spool {
            dir,
            max_bytes: config.max_bytes,
            entries: BTreeMap::new(),
            total_bytes: 0,
            evictions: 0,
            metrics,
        };
        let sending = spool.scan()?;
        spool.settle_interrupted_sends(sending);
        while spool.total_bytes > spool.max_bytes {
            let Some(oldest) = spool.oldest_sequence() else { break };
            spool.evict(oldest, "the spool is larger than its size bound");
        }
        spool.update_gauges();
        if !spool.entries.is_empty() {
            tracing::info!(
                dir = %spool.dir.display(),
                windows = spool.entries.len(),
                bytes = spool.total_bytes,
                "the spool holds windows from an earlier run; they are delivered first"
            );
        }
        Ok(spool)
    }

    /// Indexes the windows on disk and returns the sequences of the send
    /// markers found.
    fn scan(&mut self) -> Result<Vec<u64>, SpoolError> {
        let mut sending = Vec::new();
        let listing = fs::read_dir(&self.dir).map_err(|error| SpoolError::ReadDir {
            path: self.dir.clone(),
            error,
        })?;
        for item in listing {
            let item = item.map_err(|error| SpoolError::ReadDir {
                path: self.dir.clone(),
                error,
            })?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = item.path();
            if name.starts_with('.') && name.ends_with(TEMP_SUFFIX) {
                // A write interrupted by a crash; the window it belonged to
                // is either complete under its real name or was never kept.
                if let Err(err) = fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %err, "failed to delete a stale spool temporary file");
                }
                continue;
            }
            if let Some(sequence) = name.strip_suffix(SENDING_SUFFIX).and_then(sequence_of) {
                sending.push(sequence);
                continue;
            }
            let Some(sequence) = sequence_of(name) else { continue };
            match read_summary(&path) {
                Ok(summary) if summary.sequence == sequence => {
                    let bytes = item.metadata().map(|m| m.len()).unwrap_or(0);
                    let entry = Entry {
                        bytes,
                        profiles: summary.profiles,
                        samples: summary.samples,
                    };
                    self.entries.insert(sequence, entry);
                    self.total_bytes += bytes;
                }
                Ok(_) => quarantine(&path, "its sequence does not match its name"),
                Err(reason) => quarantine(&path, &reason),
            }
        }
        Ok(sending)
    }

    /// Sends that the last run began and did not finish: a window still
    /// here may have reached the backend before the crash, and is sent again
    /// (counted and logged); a marker without its window belongs to a
    /// delivery that completed. Either way the marker goes, so that a crash
    /// before the resend begins does not count it twice.
    fn settle_interrupted_sends(&mut self, sending: Vec<u64>) {
        for sequence in sending {
            if let Some(entry) = self.entries.get(&sequence) {
                self.metrics.windows_resent_after_restart.inc();
                tracing::warn!(
                    sequence,
                    profiles = entry.profiles,
                    "the last run stopped while sending this spooled window, so the backend may have it \
                     already; sending it again"
                );
            }
            let marker = self.marker_of(sequence);
            if let Err(err) = remove_durably(&marker) {
                tracing::warn!(path = %marker.display(), error = %err, "failed to delete a spool send marker");
            }
        }
    }

    /// Records, durably, that a send of the spooled window `sequence` is
    /// about to begin, so that a restart before [`Spool::remove`] or
    /// [`Spool::end_send`] knows the backend may have it.
    pub fn begin_send(&mut self, sequence: u64) -> Result<(), SpoolError> {
        let path = self.marker_of(sequence);
        write_atomically(&path, b"").map_err(|error| SpoolError::Write { path, error })
    }

    /// Records that the send of `sequence` is over without delivering all
    /// of it; what is left of it was kept with [`Spool::push`] first.
    pub fn end_send(&mut self, sequence: u64) -> Result<(), SpoolError> {
        let path = self.marker_of(sequence);
        remove_durably(&path).map_err(|error| SpoolError::Remove { path, error })
    }

    /// Keeps `batch` (or replaces the spooled window of the same sequence,
    /// such as a window now only partly undelivered).
    ///
    /// Returns whether the batch was kept: to stay within `max_bytes`, the
    /// oldest windows are evicted first, and when the batch itself is the
    /// oldest left it is the one not kept. A batch without profiles needs no
    /// keeping.
    pub fn push(&mut self, batch: &Batch) -> Result<bool, SpoolError> {
        let sequence = batch.sequence;
        let replaced = self.entries.get(&sequence).copied();
        if batch.profiles.is_empty() {
            if replaced.is_some() {
                self.remove(sequence)?;
            }
            return Ok(true);
        }
        let bytes = encode(batch);
        let size = bytes.len() as u64;
        // A window larger than the whole bound could never be kept, and must
        // not empty the spool trying.
        let mut keep = size <= self.max_bytes;
        let mut victims = Vec::new();
        if keep {
            let mut total = self.total_bytes - replaced.map_or(0, |e| e.bytes) + size;
            for (&candidate, entry) in &self.entries {
                if total <= self.max_bytes {
                    break;
                }
                if candidate > sequence {
                    // Everything older is gone and it still does not fit:
                    // the new window is now the oldest, so it goes.
                    keep = false;
                    break;
                }
                if candidate != sequence {
                    total -= entry.bytes;
                    victims.push(candidate);
                }
            }
        }
        for victim in victims {
            self.evict(victim, "the spool is full");
        }
        if !keep {
            if replaced.is_some() {
                // The older copy holds nothing undelivered beyond this batch.
                if let Err(err) = self.remove(sequence) {
                    tracing::warn!(error = %err, "failed to delete a superseded spool file");
                }
            }
            self.evictions += 1;
            self.metrics.spool_evictions.inc();
            self.metrics
                .profiles_dropped(batch.profiles.len() as u64, batch.samples());
            tracing::warn!(
                sequence,
                profiles = batch.profiles.len(),
                bytes = size,
                max_bytes = self.max_bytes,
                "the spool has no room for this window, the oldest it would hold: dropped it"
            );
            return Ok(false);
        }
        let path = self.path_of(sequence);
        write_atomically(&path, &bytes).map_err(|error| SpoolError::Write { path, error })?;
        let entry = Entry {
            bytes: size,
            profiles: batch.profiles.len() as u64,
            samples: batch.samples(),
        };
        if let Some(old) = self.entries.insert(sequence, entry) {
            self.total_bytes -= old.bytes;
        } else {
            self.metrics.profiles_spooled.inc_by(entry.profiles);
        }
        self.total_bytes += size;
        self.update_gauges();
        Ok(true)
    }

    /// Reads back the oldest window, or `None` when the spool is empty.
    /// Corrupt files met on the way are quarantined and skipped.
    pub fn oldest(&mut self) -> Result<Option<Batch>, SpoolError> {
        while let Some((&sequence, &entry)) = self.entries.first_key_value() {
            let path = self.path_of(sequence);
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    tracing::warn!(path = %path.display(), "a spooled window disappeared from disk");
                    self.forget(sequence);
                    self.metrics.profiles_dropped(entry.profiles, entry.samples);
                    continue;
                }
                Err(error) => return Err(SpoolError::Read { path, error }),
            };
            match decode(&bytes) {
                Ok(batch) if batch.sequence == sequence => return Ok(Some(batch)),
                Ok(_) => quarantine(&path, "its sequence does not match its name"),
                Err(reason) => quarantine(&path, &reason),
            }
            self.forget(sequence);
            self.metrics.profiles_dropped(entry.profiles, entry.samples);
        }
        Ok(None)
    }

    /// The sequence of the oldest window, without reading it.
    pub fn oldest_sequence(&self) -> Option<u64> {
        self.entries.keys().next().copied()
    }

    /// Deletes a window, once delivered, and then its send marker, each
    /// durably: once this returns, no restart sends it again. Removing one
    /// that is not there is not an error. The window leaves the spool's
    /// index even when its file cannot be deleted, so that it is not
    /// delivered again in this run.
    pub fn remove(&mut self, sequence: u64) -> Result<(), SpoolError> {
        let path = self.path_of(sequence);
        self.forget(sequence);
        remove_durably(&path).map_err(|error| SpoolError::Remove { path, error })?;
        self.end_send(sequence)
    }

    /// Bytes used by the spooled windows.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Number of spooled windows.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no window waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Windows evicted (or not kept) since the spool was opened.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    fn path_of(&self, sequence: u64) -> PathBuf {
        self.dir.join(format!("{sequence:020}{EXTENSION}"))
    }

    fn marker_of(&self, sequence: u64) -> PathBuf {
        self.dir.join(format!("{sequence:020}{EXTENSION}{SENDING_SUFFIX}"))
    }

    /// Drops a window to make room, counting its profiles as lost.
    fn evict(&mut self, sequence: u64, why: &str) {
        let Some(entry) = self.entries.get(&sequence).copied() else {
            return;
        };
        let path = self.path_of(sequence);
        if let Err(err) = fs::remove_file(&path) {
            if err.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %err, "failed to delete an evicted spool file");
            }
        }
        self.forget(sequence);
        self.evictions += 1;
        self.metrics.spool_evictions.inc();
        self.metrics.profiles_dropped(entry.profiles, entry.samples);
        tracing::warn!(
            sequence,
            profiles = entry.profiles,
            bytes = entry.bytes,
            max_bytes = self.max_bytes,
            "{why}: evicted the oldest spooled window"
        );
        self.update_gauges();
    }

    fn forget(&mut self, sequence: u64) {
        if let Some(entry) = self.entries.remove(&sequence) {
            self.total_bytes -= entry.bytes;
        }
        self.update_gauges();
    }

    fn update_gauges(&self) {
        self.metrics
            .spool_bytes
            .set(i64::try_from(self.total_bytes).unwrap_or(i64::MAX));
        self.metrics
            .spool_windows
            .set(i64::try_from(self.entries.len()).unwrap_or(i64::MAX));
    }
}

/// The sequence in a spool file name, if it is one.
fn sequence_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(EXTENSION)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Moves a bad file out of the way, keeping it for inspection.
fn quarantine(path: &Path, reason: &str) {
    let mut target = path.as_os_str().to_owned();
    target.push(QUARANTINE_SUFFIX);
    match fs::rename(path, &target) {
        Ok(()) => tracing::warn!(
            path = %path.display(),
            reason,
            "a spool file is corrupt; it was renamed to *{QUARANTINE_SUFFIX} and skipped"
        ),
        Err(err) => tracing::warn!(
            path = %path.display(),
            reason,
            error = %err,
            "a spool file is corrupt and could not be renamed; it is skipped"
        ),
    }
}

/// What opening the spool needs of a file, without reading its profiles.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    sequence: u64,
    profiles: u64,
    samples: u64,
}

/// Reads a file's header and walks its profiles' lengths to count their
/// samples, skipping the pprof bytes. The checksum is left to [`decode`].
fn read_summary(path: &Path) -> Result<Summary, String> {
    let file = File::open(path).map_err(|err| format!("cannot open it: {err}"))?;
    let size = file.metadata().map_err(|err| format!("cannot stat it: {err}"))?.len();
    summarize(io::BufReader::new(file), size)
}

/// [`read_summary`] of `size` bytes from `input`.
fn summarize(mut input: impl io::BufRead + io::Seek, size: u64) -> Result<Summary, String> {
    let mut header = [0u8; HEADER_LEN];
    input
        .read_exact(&mut header)
        .map_err(|err| format!("cannot read its header: {err}"))?;
    let header = Reader::new(&header).header()?;
    let mut offset = HEADER_LEN as u64;
    let mut samples = 0u64;
    let truncated = |err: io::Error| format!("it is truncated or unreadable: {err}");
    // Every length is checked against the size first: one pointing past
    // the end is damage, and seeking there would succeed.
    let skip = |input: &mut dyn io::Seek, offset: &mut u64, len: u64| -> Result<(), String> {
        let end = offset.checked_add(len).filter(|&end| end <= size);
        *offset = end.ok_or_else(|| "a length points past its end".to_string())?;
        input.seek(io::SeekFrom::Start(*offset)).map_err(truncated)?;
        Ok(())
    };
    for _ in 0..header.profiles {
        let labels = u64::from(read_u32(&mut input).map_err(truncated)?);
        offset += 4;
        for _ in 0..labels.saturating_mul(2) {
            let len = u64::from(read_u32(&mut input).map_err(truncated)?);
            offset += 4;
            skip(&mut input, &mut offset, len)?;
        }
        samples = samples.saturating_add(read_u64(&mut input).map_err(truncated)?);
        let len = read_u64(&mut input).map_err(truncated)?;
        offset += 16;
        skip(&mut input, &mut offset, len)?;
    }
    if header.version == VERSION {
        let len = read_u64(&mut input).map_err(truncated)?;
        offset += 8;
        skip(&mut input, &mut offset, len)?;
    }
    // Only the checksum may follow: a file cut short anywhere is found here.
    if offset.checked_add(4) != Some(size) {
        return Err("its length does not match what its header and lengths describe".to_string());
    }
    Ok(Summary {
        sequence: header.sequence,
        profiles: header.profiles,
        samples,
    })
}

/// The file format on bytes in memory, for the fuzz targets.
pub(crate) mod fuzzing {
    use super::{Batch, Summary};

    /// Reads a whole window.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Batch, String> {
        super::decode(bytes)
    }

    /// Writes a whole window.
    pub(crate) fn encode(batch: &Batch) -> Vec<u8> {
        super::encode(batch)
    }

    /// What opening the spool reads of a file: sequence, profiles, samples.
    pub(crate) fn summary_of(bytes: &[u8]) -> Result<(u64, u64, u64), String> {
        let Summary {
            sequence,
            profiles,
            samples,
        } = super::summarize(std::io::Cursor::new(bytes), bytes.len() as u64)?;
        Ok((sequence, profiles, samples))
    }
}

fn read_u32(input: &mut impl Read) -> io::Result<u32> {
    let mut bytes = [0u8; 4];
    input.read_exact(&mut bytes)?;
    Ok(u32::from_le_bytes(bytes))
}

fn read_u64(input: &mut impl Read) -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    input.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

fn encode(batch: &Batch) -> Vec<u8> {
    let payload: usize = batch
        .profiles
        .iter()
        .map(|p| 24 + p.payload.len() + p.labels.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>())
        .sum();
    let mut out = Vec::with_capacity(HEADER_LEN + payload + 8 + batch.shared.len() + 4);
    let (start_secs, start_nanos) = split_time(batch.start);
    let (end_secs, end_nanos) = split_time(batch.end);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&batch.sequence.to_le_bytes());
    out.extend_from_slice(&start_secs.to_le_bytes());
    out.extend_from_slice(&start_nanos.to_le_bytes());
    out.extend_from_slice(&end_secs.to_le_bytes());
    out.extend_from_slice(&end_nanos.to_le_bytes());
    out.extend_from_slice(&len_u32(batch.profiles.len()).to_le_bytes());
    for profile in &batch.profiles {
        out.extend_from_slice(&len_u32(profile.labels.len()).to_le_bytes());
        for (name, value) in &profile.labels {
            for text in [name, value] {
                out.extend_from_slice(&len_u32(text.len()).to_le_bytes());
                out.extend_from_slice(text.as_bytes());
            }
        }
        out.extend_from_slice(&profile.samples.to_le_bytes());
        out.extend_from_slice(&(profile.payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&profile.payload);
    }
    out.extend_from_slice(&(batch.shared.len() as u64).to_le_bytes());
    out.extend_from_slice(&batch.shared);
    let crc = checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A length as stored. Nothing taskprof makes comes near 4 GiB per label or
/// 4 G labels; saturating keeps the encoder total rather than panicking.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn decode(bytes: &[u8]) -> Result<Batch, String> {
    let Some(body_len) = bytes.len().checked_sub(4) else {
        return Err("it is too short".to_string());
    };
    let (body, stored_crc) = bytes.split_at(body_len);
    let stored_crc = u32::from_le_bytes(stored_crc.try_into().map_err(|_| "it is too short")?);
    if checksum(body) != stored_crc {
        return Err("its checksum does not match (truncated or damaged)".to_string());
    }
    let mut reader = Reader::new(body);
    let header = reader.header()?;
    let mut profiles = Vec::new();
    for _ in 0..header.profiles {
        let label_count = reader.u32()?;
        let mut labels = Vec::new();
        for _ in 0..label_count {
            let name = reader.text()?;
            let value = reader.text()?;
            labels.push((name, value));
        }
        let samples = reader.u64()?;
        let pprof_len = usize::try_from(reader.u64()?).map_err(|_| "a profile length is too large")?;
        let payload = reader.take(pprof_len)?.to_vec();
        profiles.push(SeriesProfile {
            labels,
            payload,
            samples,
        });
    }
    let shared = match header.version {
        VERSION_WITHOUT_SHARED => Vec::new(),
        _ => {
            let len = usize::try_from(reader.u64()?).map_err(|_| "the shared length is too large")?;
            reader.take(len)?.to_vec()
        }
    };
    if !reader.rest.is_empty() {
        return Err("it has trailing bytes".to_string());
    }
    Ok(Batch {
        sequence: header.sequence,
        start: header.start,
        end: header.end,
        profiles,
        shared,
    })
}

fn checksum(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

fn split_time(time: SystemTime) -> (u64, u32) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    (since.as_secs(), since.subsec_nanos())
}

struct Header {
    version: u32,
    sequence: u64,
    start: SystemTime,
    end: SystemTime,
    profiles: u64,
}

/// Reads a spool file front to back; every read is bounds-checked, since a
/// damaged file may claim any length.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        if len > self.rest.len() {
            return Err("it ends early".to_string());
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let bytes = self.take(N)?;
        let mut array = [0; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    fn time(&mut self) -> Result<SystemTime, String> {
        let secs = self.u64()?;
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err("a time is out of range".to_string());
        }
        UNIX_EPOCH
            .checked_add(Duration::new(secs, nanos))
            .ok_or_else(|| "a time is out of range".to_string())
    }

    fn text(&mut self) -> Result<String, String> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a label is not UTF-8".to_string())
    }

    fn header(&mut self) -> Result<Header, String> {
        if self.array::<8>()? != *MAGIC {
            return Err("it is not a taskprof spool file".to_string());
        }
        let version = self.u32()?;
        if version != VERSION && version != VERSION_WITHOUT_SHARED {
            return Err(format!(
                "its format version {version} is not {VERSION_WITHOUT_SHARED} or {VERSION}"
            ));
        }
        Ok(Header {
            version,
            sequence: self.u64()?,
            start: self.time()?,
            end: self.time()?,
            profiles: u64::from(self.u32()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(sequence: u64, profiles: usize, bytes_each: usize) -> Batch {
        Batch {
            sequence,
            start: UNIX_EPOCH + Duration::new(1_700_000_000 + sequence, 123_456_789),
            end: UNIX_EPOCH + Duration::new(1_700_000_010 + sequence, 5),
            profiles: (0..profiles)
                .map(|i| SeriesProfile {
                    labels: vec![
                        ("service_name".to_string(), format!("svc-é-{i}")),
                        ("pid".to_string(), i.to_string()),
                    ],
                    payload: vec![i as u8; bytes_each],
                    samples: 10 + i as u64,
                })
                .collect(),
            shared: vec![0xAB; 5],
        }
    }

    /// A file in the first format, without shared bytes, as an earlier
    /// agent wrote it: those must still be replayed after an upgrade.
    #[test]
    fn version_1_files_are_still_read() {
        let mut old = batch(5, 2, 10);
        old.shared.clear();
        let mut bytes = encode(&old);
        bytes.truncate(bytes.len() - 4 - 8);
        bytes[8..12].copy_from_slice(&VERSION_WITHOUT_SHARED.to_le_bytes());
        let crc = checksum(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&bytes), Ok(old));
        assert_eq!(decode(&encode(&batch(6, 1, 3))), Ok(batch(6, 1, 3)));
    }

    fn open(dir: &Path, max_bytes: u64) -> (Spool, Metrics) {
        let metrics = Metrics::new();
        let config = SpoolConfig {
            dir: dir.to_path_buf(),
            max_bytes,
        };
        (Spool::open(&config, metrics.clone()).expect("open spool"), metrics)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn batches_round_trip_through_disk_and_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let original = batch(42, 3, 100);
        {
            let (mut spool, metrics) = open(dir.path(), 1 << 20);
            assert!(spool.push(&original).expect("push"));
            assert_eq!(metrics.profiles_spooled.get(), 3);
            assert_eq!(
                spool.total_bytes(),
                fs::metadata(spool.path_of(42)).expect("file").len()
            );
        }
        let (mut spool, metrics) = open(dir.path(), 1 << 20);
        assert_eq!(spool.len(), 1);
        assert!(metrics.encode().contains("taskprof_spool_windows 1"));
        assert_eq!(spool.oldest().expect("read"), Some(original));
        spool.remove(42).expect("remove");
        assert!(spool.is_empty());
        assert_eq!(spool.total_bytes(), 0);
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn lexical_order_is_sequence_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, _) = open(dir.path(), 1 << 20);
        for sequence in [100, 9, 1_000_000, 10] {
            spool.push(&batch(sequence, 1, 10)).expect("push");
        }
        assert_eq!(
            names(dir.path()),
            vec![
                "00000000000000000009.batch",
                "00000000000000000010.batch",
                "00000000000000000100.batch",
                "00000000000001000000.batch",
            ]
        );
        let mut seen = Vec::new();
        while let Some(b) = spool.oldest().expect("read") {
            seen.push(b.sequence);
            spool.remove(b.sequence).expect("remove");
        }
        assert_eq!(seen, vec![9, 10, 100, 1_000_000]);
    }

    #[test]
    fn only_a_send_a_restart_interrupted_is_counted_as_resent() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut spool, _) = open(dir.path(), 1 << 20);
            for sequence in [1, 2, 3] {
                assert!(spool.push(&batch(sequence, 2, 10)).expect("push"));
            }
            // 1: killed during its send. 2: delivered. 3: partly delivered,
            // the rest kept.
            spool.begin_send(1).expect("begin 1");
            spool.begin_send(2).expect("begin 2");
            spool.remove(2).expect("remove 2");
            spool.begin_send(3).expect("begin 3");
            assert!(spool.push(&batch(3, 1, 10)).expect("keep the rest of 3"));
            spool.end_send(3).expect("end 3");
        }
        // A delivery that completed but whose marker a crash left behind.
        fs::write(dir.path().join(format!("{:020}.batch.sending", 9)), b"").expect("stray marker");
        let (mut spool, metrics) = open(dir.path(), 1 << 20);
        assert_eq!(metrics.windows_resent_after_restart.get(), 1);
        assert_eq!(
            names(dir.path()),
            vec![format!("{:020}.batch", 1), format!("{:020}.batch", 3)]
        );
        assert_eq!(spool.oldest().expect("read").expect("window 1").sequence, 1);
        drop(spool);
        // Counted once: a second restart before the resend began does not
        // count it again.
        let (_, metrics) = open(dir.path(), 1 << 20);
        assert_eq!(metrics.windows_resent_after_restart.get(), 0);
    }

    #[test]
    fn the_oldest_windows_are_evicted_to_respect_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let size = encode(&batch(1, 1, 1000)).len() as u64;
        let (mut spool, metrics) = open(dir.path(), size * 3);
        for sequence in 1..=5 {
            assert!(spool.push(&batch(sequence, 1, 1000)).expect("push"));
            assert!(spool.total_bytes() <= size * 3);
        }
        assert_eq!(spool.len(), 3);
        assert_eq!(spool.oldest_sequence(), Some(3));
        assert_eq!(spool.evictions(), 2);
        assert_eq!(metrics.spool_evictions.get(), 2);
        assert_eq!(metrics.profiles_failed.get(), 2);
        assert_eq!(metrics.samples_dropped.get(), 20, "each evicted window held 10 samples");

        // An older window arriving at a full spool is the one not kept.
        assert!(!spool.push(&batch(2, 1, 1000)).expect("push"));
        assert_eq!(spool.oldest_sequence(), Some(3));
        // One larger than the whole bound is not kept either.
        assert!(!spool.push(&batch(9, 1, 5000)).expect("push"));
        assert_eq!(spool.len(), 3);
        assert_eq!(metrics.spool_evictions.get(), 4);
        assert_eq!(metrics.samples_dropped.get(), 40);
    }

    #[test]
    fn replacing_a_window_keeps_the_accounting_right() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, metrics) = open(dir.path(), 1 << 20);
        spool.push(&batch(5, 4, 100)).expect("push");
        let mut rest = batch(5, 4, 100);
        rest.profiles.drain(..3);
        spool.push(&rest).expect("replace");
        assert_eq!(spool.len(), 1);
        assert_eq!(spool.total_bytes(), encode(&rest).len() as u64);
        assert_eq!(metrics.profiles_spooled.get(), 4, "a replacement is not new data");
        assert_eq!(spool.oldest().expect("read"), Some(rest));
    }

    #[test]
    fn corrupt_files_are_quarantined_and_stale_temporaries_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut spool, _) = open(dir.path(), 1 << 20);
            for sequence in [1, 2, 3] {
                spool.push(&batch(sequence, 2, 50)).expect("push");
            }
        }
        // Garbage under a spool name, a truncated window, a stale temporary
        // and an unrelated file.
        fs::write(dir.path().join("00000000000000000000.batch"), b"garbage").expect("write");
        let second = dir.path().join("00000000000000000002.batch");
        let full = fs::read(&second).expect("read");
        fs::write(&second, &full[..full.len() - 10]).expect("truncate");
        fs::write(dir.path().join(".00000000000000000004.batch.77.tmp"), b"half").expect("write");
        fs::write(dir.path().join("README"), b"keep me").expect("write");

        let (mut spool, metrics) = open(dir.path(), 1 << 20);
        // The truncated window is found at open: its lengths do not add
        // up to the file's size.
        assert_eq!(spool.len(), 2);
        assert_eq!(spool.oldest().expect("read").map(|b| b.sequence), Some(1));
        spool.remove(1).expect("remove");
        assert_eq!(
            spool.oldest().expect("read").map(|b| b.sequence),
            Some(3),
            "2 is skipped"
        );
        // Windows of an earlier run found damaged were never counted as
        // taken by this one, so they are not counted as failed either.
        assert_eq!(metrics.profiles_failed.get(), 0);
        assert_eq!(
            names(dir.path()),
            vec![
                "00000000000000000000.batch.corrupt",
                "00000000000000000002.batch.corrupt",
                "00000000000000000003.batch",
                "README",
            ]
        );
    }

    #[test]
    fn a_smaller_bound_at_open_evicts_the_oldest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let size = encode(&batch(1, 1, 1000)).len() as u64;
        {
            let (mut spool, _) = open(dir.path(), 1 << 20);
            for sequence in 1..=4 {
                spool.push(&batch(sequence, 1, 1000)).expect("push");
            }
        }
        let (spool, metrics) = open(dir.path(), size * 2);
        assert_eq!(spool.len(), 2);
        assert_eq!(spool.oldest_sequence(), Some(3));
        assert_eq!(metrics.spool_evictions.get(), 2);
        // Their samples were counted from the files' profile headers.
        assert_eq!(metrics.samples_dropped.get(), 20);
    }

    /// Found by the `spool` fuzz target: summing the sample counts of a
    /// window read back overflowed (a panic in debug builds).
    #[test]
    fn window_sample_totals_saturate_instead_of_overflowing() {
        let mut window = batch(3, 2, 10);
        window.profiles[0].samples = u64::MAX;
        assert_eq!(window.samples(), u64::MAX);
        let bytes = encode(&window);
        assert_eq!(decode(&bytes).expect("decode").samples(), u64::MAX);
        assert_eq!(fuzzing::summary_of(&bytes).map(|(_, _, samples)| samples), Ok(u64::MAX));
    }

    #[test]
    fn summaries_count_samples_and_reject_lengths_past_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.batch");
        let bytes = encode(&batch(5, 3, 100));
        fs::write(&path, &bytes).expect("write");
        let summary = read_summary(&path).expect("summary");
        assert_eq!(
            summary,
            Summary {
                sequence: 5,
                profiles: 3,
                samples: 10 + 11 + 12
            }
        );
        fs::write(&path, &bytes[..bytes.len() - 120]).expect("write");
        assert!(read_summary(&path).is_err(), "a truncated pprof must not pass");
    }

    #[test]
    fn decoding_rejects_damage_anywhere() {
        let bytes = encode(&batch(7, 2, 30));
        assert!(decode(&bytes).is_ok());
        for cut in [0, 3, HEADER_LEN, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[HEADER_LEN + 10] ^= 0x40;
        assert!(decode(&flipped).is_err());
    }
}
