//! Validated configuration. Everything a user can get wrong is checked
//! here, before any sampling starts, and reported as a [`ConfigError`]
//! (exit code 2).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{FormatArg, ProfileArgs};
use crate::session::SamplingSettings;
use crate::util::durable::PendingFile;

/// A usage error: bad flags or values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The output format cannot be inferred.
    #[error(
        "cannot tell the output format from `{0}`; name it .pb.gz, .folded, .txt or .svg, \
         or pass --format pprof|folded|flamegraph"
    )]
    UnknownExtension(PathBuf),
    /// The output path cannot be written.
    #[error("cannot write the output `{path}`: {reason}; choose another --output")]
    Unwritable {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A pid does not name a running process.
    #[error("--pid {0}: no such process; check the pid with `ps -p {0}`")]
    NoSuchProcess(u32),
    /// A pid names a thread, not a process.
    #[error("--pid {pid} is a thread of process {tgid}; pass --pid {tgid}")]
    NotAProcess {
        /// The thread id given.
        pid: u32,
        /// Its process.
        tgid: u32,
    },
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Gzipped pprof.
    Pprof,
    /// Folded stacks.
    Folded,
    /// SVG flame graph.
    FlameGraph,
}

impl OutputFormat {
    /// Infers the format from a file name.
    pub fn from_path(path: &Path) -> Option<OutputFormat> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".pb.gz") || name.ends_with(".pb") || name.ends_with(".pprof") {
            Some(OutputFormat::Pprof)
        } else if name.ends_with(".folded") || name.ends_with(".txt") {
            Some(OutputFormat::Folded)
        } else if name.ends_with(".svg") {
            Some(OutputFormat::FlameGraph)
        } else {
            None
        }
    }
}

/// A validated `taskprof profile`.
#[derive(Debug)]
pub struct ProfileConfig {
    /// Sampling time.
    pub duration: Duration,
    /// Hz per CPU.
    pub frequency_hz: u64,
    /// Processes to sample; empty for all.
    pub pids: Vec<u32>,
    /// Where the result goes.
    pub output: PendingOutput,
    /// In which format.
    pub format: OutputFormat,
    /// Show the verifier log on load failures.
    pub verifier_log: bool,
    /// Memory budget for unwind tables, or `None` to walk frame pointers
    /// only.
    pub unwind_table_memory: Option<u64>,
    /// Walk and name Python frames.
    pub python: bool,
    /// Keep the idle task's samples.
    pub include_idle: bool,
}

impl ProfileConfig {
    /// What the session samples.
    pub fn session_settings(&self) -> SamplingSettings {
        SamplingSettings {
            frequency_hz: self.frequency_hz,
            span: self.duration,
            pids: self.pids.clone(),
            verifier_log: self.verifier_log,
            unwind_table_memory: self.unwind_table_memory,
            python: self.python,
            include_idle: self.include_idle,
        }
    }

    /// Validates the flags: pids exist, the format is known, and the output
    /// can be written (a temporary file is created beside it now, so a bad
    /// path fails before sampling rather than after it).
    pub fn from_args(args: ProfileArgs) -> Result<ProfileConfig, ConfigError> {
        let format = match args.format {
            Some(FormatArg::Pprof) => OutputFormat::Pprof,
            Some(FormatArg::Folded) => OutputFormat::Folded,
            Some(FormatArg::Flamegraph) => OutputFormat::FlameGraph,
            None => OutputFormat::from_path(&args.output)
                .ok_or_else(|| ConfigError::UnknownExtension(args.output.clone()))?,
        };
        let mut pids = args.pid;
        pids.sort_unstable();
        pids.dedup();
        for &pid in &pids {
            check_process(Path::new("/proc"), pid)?;
        }
        let output = PendingOutput::create(&args.output)?;
        Ok(ProfileConfig {
            duration: args.duration,
            frequency_hz: args.frequency,
            pids,
            output,
            format,
            verifier_log: args.verifier_log,
            unwind_table_memory: (args.unwind == crate::cli::UnwindArg::Dwarf).then_some(args.unwind_table_memory),
            python: args.python == crate::cli::SwitchArg::On,
            include_idle: args.include_idle,
        })
    }
}

/// Checks that `pid` is a live process (a thread group leader).
pub fn check_process(proc_root: &Path, pid: u32) -> Result<(), ConfigError> {
    let status = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status"))
        .map_err(|_| ConfigError::NoSuchProcess(pid))?;
    let tgid = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse::<u32>().ok())
        .ok_or(ConfigError::NoSuchProcess(pid))?;
    if tgid != pid {
        return Err(ConfigError::NotAProcess { pid, tgid });
    }
    Ok(())
}

/// The output file being prepared: written to a temporary file beside the
/// destination and renamed over it when complete, so a failed run never
/// leaves a truncated profile behind.
#[derive(Debug)]
pub struct PendingOutput(PendingFile);

impl PendingOutput {
    /// Creates the temporary file, proving the destination is writable.
    pub fn create(path: &Path) -> Result<PendingOutput, ConfigError> {
        let unwritable = |reason: String| ConfigError::Unwritable {
            path: path.to_path_buf(),
            reason,
        };
        if path.is_dir() {
            return Err(unwritable("it is a directory".into()));
        }
        if path.file_name().is_none() {
            return Err(unwritable("it has no file name".into()));
        }
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(unwritable(format!("directory `{}` does not exist", dir.display())));
        }
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().readonly() && !is_root() {
                return Err(unwritable("it is read-only".into()));
            }
        }
        let file = PendingFile::create(path).map_err(|err| unwritable(err.to_string()))?;
        Ok(PendingOutput(file))
    }

    /// The destination.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Writes `bytes` and moves the file into place.
    pub fn commit(self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.commit(bytes)
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_from_extensions() {
        assert_eq!(
            OutputFormat::from_path(Path::new("a/profile.pb.gz")),
            Some(OutputFormat::Pprof)
        );
        assert_eq!(
            OutputFormat::from_path(Path::new("x.folded")),
            Some(OutputFormat::Folded)
        );
        assert_eq!(OutputFormat::from_path(Path::new("x.TXT")), Some(OutputFormat::Folded));
        assert_eq!(
            OutputFormat::from_path(Path::new("app.svg")),
            Some(OutputFormat::FlameGraph)
        );
        assert_eq!(OutputFormat::from_path(Path::new("app.bin")), None);
    }

    #[test]
    fn own_pid_is_a_process_and_missing_pids_are_not() {
        check_process(Path::new("/proc"), std::process::id()).unwrap();
        assert!(matches!(
            check_process(Path::new("/proc"), u32::MAX - 3),
            Err(ConfigError::NoSuchProcess(_))
        ));
    }

    #[test]
    fn unwritable_outputs_fail_before_sampling() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing/x.pb.gz");
        let err = PendingOutput::create(&missing).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let err = PendingOutput::create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
    }

    #[test]
    fn pending_output_appears_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pb.gz");
        let pending = PendingOutput::create(&path).unwrap();
        assert!(!path.exists());
        pending.commit(b"data").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left behind"
        );
        drop(PendingOutput::create(&dir.path().join("q.pb.gz")).unwrap());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "dropped output left a file"
        );
    }
}
