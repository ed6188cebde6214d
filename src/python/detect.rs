//! Finding CPython in a process: which mapped file holds the interpreter,
//! which version it is, and where, at run time, the symbols the walker and
//! the namer need are.
//!
//! The interpreter is in a mapped `libpython3.X.so` (pyenv's
//! `--enable-shared` builds, and programs that embed Python), or else in
//! an executable that exports `_PyRuntime` (Debian's `/usr/bin/python3.11`
//! is linked statically). Symbols are read with blazesym's inspect API;
//! a symbol's run-time address is its value plus the file's load bias,
//! which comes from where the process maps the file offset of
//! `_PyEval_EvalFrameDefault`, so no program header is parsed here.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use blazesym::inspect::{self, Inspector, SymInfo};

use super::offsets::{offsets_for, PythonOffsets};
use crate::process::maps::{self, Backing, MapsEntry};

/// A CPython version; `micro` is known only when read from `Py_Version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PythonVersion {
    /// 3 (or 2).
    pub major: u8,
    /// The minor version, which decides the layouts.
    pub minor: u8,
    /// The micro (patch) version, from `Py_Version` (3.11+).
    pub micro: Option<u8>,
}

impl std::fmt::Display for PythonVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if let Some(micro) = self.micro {
            write!(f, ".{micro}")?;
        }
        Ok(())
    }
}

/// A CPython interpreter found in a process, with run-time addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    /// Its version.
    pub version: PythonVersion,
    /// The layouts of that version.
    pub offsets: &'static PythonOffsets,
    /// The file holding the interpreter, as the process's maps name it.
    pub path: PathBuf,
    /// Where `_PyRuntime` is.
    pub runtime_address: u64,
    /// Where `_PyEval_EvalFrameDefault` is: the function, and its
    /// compiler-split `.cold` part when the file's symbols name one.
    pub eval_frame: Vec<Range<u64>>,
    /// Where `PyCode_Type` is: an object is a code object when its
    /// `ob_type` is this address.
    pub code_type_address: u64,
}

impl Interpreter {
    /// Where the `pthread_key_t` holding each thread's `PyThreadState`
    /// is (bpf/profiler.h's `tss_key_address`).
    pub fn tss_key_address(&self) -> u64 {
        self.runtime_address + u64::from(self.offsets.runtime.tss_key)
    }

    /// Whether `address` is in `_PyEval_EvalFrameDefault`.
    pub fn in_eval_frame(&self, address: u64) -> bool {
        self.eval_frame.iter().any(|range| range.contains(&address))
    }
}

/// Why no interpreter taskprof can walk was found.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// No mapped file looks like CPython: the process runs no Python.
    #[error("no CPython interpreter is mapped")]
    NotPython,
    /// CPython of a version taskprof has no offsets for.
    #[error("CPython {version} in `{}` is not supported (3.8 to 3.13 are)", path.display())]
    Unsupported {
        /// The interpreter's file.
        path: PathBuf,
        /// Its version.
        version: PythonVersion,
    },
    /// A free-threaded (`--disable-gil`) build, whose objects are laid out
    /// differently.
    #[error("free-threaded CPython in `{}` is not supported", path.display())]
    FreeThreaded {
        /// The interpreter's file.
        path: PathBuf,
    },
    /// Neither `Py_Version`, the file name nor the symbols tell the version.
    #[error("failed to tell the version of CPython in `{}`", path.display())]
    UnknownVersion {
        /// The interpreter's file.
        path: PathBuf,
    },
    /// A symbol the profiler needs is not in the file's symbol tables.
    #[error("`{}` lacks the symbol `{symbol}`", path.display())]
    MissingSymbol {
        /// The interpreter's file.
        path: PathBuf,
        /// The symbol.
        symbol: &'static str,
    },
    /// The process does not map the part of the file holding `symbol`.
    #[error("`{}` is not mapped where its symbol `{symbol}` is", path.display())]
    NotMapped {
        /// The interpreter's file.
        path: PathBuf,
        /// The symbol.
        symbol: &'static str,
    },
    /// The process's maps or a file could not be read.
    #[error("failed to read `{}`", path.display())]
    Read {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The file's symbol tables could not be read.
    #[error("failed to read the symbols of `{}`", path.display())]
    Symbols {
        /// The interpreter's file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: blazesym::Error,
    },
}

const RUNTIME: &str = "_PyRuntime";
const VERSION: &str = "Py_Version";
const EVAL_FRAME: &str = "_PyEval_EvalFrameDefault";
const EVAL_FRAME_COLD: &str = "_PyEval_EvalFrameDefault.cold";
const CODE_TYPE: &str = "PyCode_Type";

/// Functions that first appeared in a version, newest first: without
/// `Py_Version` (before 3.11) or a versioned file name, the newest one
/// present tells the version.
const FIRST_IN: [(&str, u8); 3] = [
    ("PyModule_AddObjectRef", 10),
    ("PyFrame_GetCode", 9),
    ("PyCode_NewWithPosOnlyArgs", 8),
];

/// One mapped file: its path in the maps and every mapping of it.
struct MappedFile<'a> {
    path: &'a Path,
    entries: Vec<&'a MapsEntry>,
}

impl MappedFile<'_> {
    fn file_name(&self) -> &str {
        self.path.file_name().and_then(|n| n.to_str()).unwrap_or_default()
    }

    fn executable(&self) -> bool {
        self.entries.iter().any(|e| e.executable)
    }

    /// The run-time address of file offset `offset`, if mapped.
    fn address_of_offset(&self, offset: u64) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| e.offset <= offset && offset - e.offset < e.end - e.start)
            .map(|e| e.start + (offset - e.offset))
    }
}

/// The files of `maps`, in the order they are first mapped.
fn mapped_files(maps: &[MapsEntry]) -> Vec<MappedFile<'_>> {
    let mut files: Vec<MappedFile<'_>> = Vec::new();
    for entry in maps {
        let (Backing::File(path) | Backing::DeletedFile(path)) = &entry.backing else {
            continue;
        };
        match files
            .iter_mut()
            .find(|f| f.entries[0].dev == entry.dev && f.entries[0].inode == entry.inode)
        {
            Some(file) => file.entries.push(entry),
            None => files.push(MappedFile {
                path,
                entries: vec![entry],
            }),
        }
    }
    files
}

/// (major, minor, free-threaded) from a name such as `libpython3.11.so.1.0`,
/// `libpython3.6m.so`, `libpython3.13t.so` or `python3.9`.
fn version_from_name(name: &str) -> Option<(u8, u8, bool)> {
    let rest = name.strip_prefix("lib").unwrap_or(name).strip_prefix("python")?;
    let (major, rest) = rest.split_once('.')?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let minor = rest[..digits].parse().ok()?;
    let threaded = rest[digits..].starts_with('t');
    Some((major.parse().ok()?, minor, threaded))
}

/// `libpython3.X.so*`; not `libpython3.so`, the stable-ABI stub that
/// only forwards to the real library.
fn is_libpython(name: &str) -> bool {
    name.starts_with("libpython") && name.contains(".so") && version_from_name(name).is_some()
}

/// Finds the CPython interpreter in a process from its maps. `open` gives
/// a path that reads the file behind a mapping (the process's root or a
/// held handle; see [`crate::process::ObjectFile::handle_path`]).
pub fn find_interpreter(
    maps: &[MapsEntry],
    open: impl Fn(&MapsEntry) -> PathBuf,
    inspector: &Inspector,
) -> Result<Interpreter, DetectError> {
    let files = mapped_files(maps);
    let executable: Vec<&MappedFile<'_>> = files.iter().filter(|f| f.executable()).collect();
    // An embedded libpython is the interpreter even when the executable
    // is a Python too (a venv's python next to a shared build).
    if let Some(library) = executable.iter().find(|f| is_libpython(f.file_name())) {
        return read_interpreter(library, &open(library.entries[0]), inspector);
    }
    for file in executable.iter().filter(|f| !f.file_name().contains(".so")) {
        let read_path = open(file.entries[0]);
        let runtime = lookup(inspector, &read_path, file.path, RUNTIME)?;
        if !runtime.is_empty() {
            return read_interpreter(file, &read_path, inspector);
        }
        // Before 3.7 there is no _PyRuntime; a versioned name still tells
        // the user which Python was passed over.
        if let Some((major, minor, _)) = version_from_name(file.file_name()) {
            if offsets_for(major, minor).is_none() {
                return Err(DetectError::Unsupported {
                    path: file.path.to_path_buf(),
                    version: PythonVersion {
                        major,
                        minor,
                        micro: None,
                    },
                });
            }
        }
    }
    Err(DetectError::NotPython)
}

/// [`find_interpreter`] for process `pid`, reading `proc_root/PID/maps`
/// and the files through `proc_root/PID/root`.
pub fn find_interpreter_in_process(
    proc_root: &Path,
    pid: u32,
    inspector: &Inspector,
) -> Result<Interpreter, DetectError> {
    let dir = proc_root.join(pid.to_string());
    let maps_path = dir.join("maps");
    let text = std::fs::read_to_string(&maps_path).map_err(|source| DetectError::Read {
        path: maps_path,
        source,
    })?;
    let entries = maps::parse_maps(&text);
    let root_link = std::fs::read_link(dir.join("root")).unwrap_or_default();
    let open = |entry: &MapsEntry| match &entry.backing {
        Backing::File(path) | Backing::DeletedFile(path) => {
            dir.join("root").join(crate::process::path_in_root(&root_link, path))
        }
        _ => PathBuf::new(),
    };
    find_interpreter(&entries, open, inspector)
}

/// The symbols called `name` in the file at `read_path`.
fn lookup(
    inspector: &Inspector,
    read_path: &Path,
    path: &Path,
    name: &str,
) -> Result<Vec<SymInfo<'static>>, DetectError> {
    let mut source = inspect::source::Elf::new(read_path);
    // The file's own .symtab and .dynsym; separate debug files would cost
    // a DWARF parse for what the symbol tables already have.
    source.debug_syms = false;
    let mut found = inspector
        .lookup(&source.into(), &[name])
        .map_err(|source| DetectError::Symbols {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(found.pop().unwrap_or_default().iter().map(SymInfo::to_owned).collect())
}

fn read_interpreter(
    file: &MappedFile<'_>,
    read_path: &Path,
    inspector: &Inspector,
) -> Result<Interpreter, DetectError> {
    let path = file.path.to_path_buf();
    let first = |name: &'static str| -> Result<Option<SymInfo<'static>>, DetectError> {
        Ok(lookup(inspector, read_path, &path, name)?.into_iter().next())
    };
    let required = |name: &'static str| -> Result<SymInfo<'static>, DetectError> {
        first(name)?.ok_or(DetectError::MissingSymbol {
            path: path.clone(),
            symbol: name,
        })
    };
    let from_name = version_from_name(file.file_name());
    if from_name.is_some_and(|(_, _, threaded)| threaded) {
        return Err(DetectError::FreeThreaded { path });
    }
    let version = match first(VERSION)? {
        Some(symbol) => read_py_version(read_path, &path, &symbol)?,
        None => match from_name {
            Some((major, minor, _)) => PythonVersion {
                major,
                minor,
                micro: None,
            },
            None => version_from_symbols(&first)?.ok_or_else(|| DetectError::UnknownVersion { path: path.clone() })?,
        },
    };
    let offsets = offsets_for(version.major, version.minor).ok_or_else(|| DetectError::Unsupported {
        path: path.clone(),
        version,
    })?;

    let eval_frame = required(EVAL_FRAME)?;
    let bias = eval_frame
        .file_offset
        .and_then(|offset| file.address_of_offset(offset))
        .map(|address| address.wrapping_sub(eval_frame.addr))
        .ok_or_else(|| DetectError::NotMapped {
            path: path.clone(),
            symbol: EVAL_FRAME,
        })?;
    let range = |symbol: &SymInfo<'_>| {
        let start = symbol.addr.wrapping_add(bias);
        start..start + symbol.size.unwrap_or(0).max(1) as u64
    };
    let mut eval_ranges = vec![range(&eval_frame)];
    if let Some(cold) = first(EVAL_FRAME_COLD)? {
        eval_ranges.push(range(&cold));
    }
    Ok(Interpreter {
        version,
        offsets,
        runtime_address: required(RUNTIME)?.addr.wrapping_add(bias),
        code_type_address: required(CODE_TYPE)?.addr.wrapping_add(bias),
        eval_frame: eval_ranges,
        path,
    })
}

/// `Py_Version`: `PY_VERSION_HEX` as an `unsigned long`, read from the file.
fn read_py_version(read_path: &Path, path: &Path, symbol: &SymInfo<'_>) -> Result<PythonVersion, DetectError> {
    let unknown = || DetectError::UnknownVersion {
        path: path.to_path_buf(),
    };
    let offset = symbol.file_offset.ok_or_else(unknown)?;
    let mut word = [0u8; 4];
    File::open(read_path)
        .and_then(|file| file.read_exact_at(&mut word, offset))
        .map_err(|source| DetectError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let hex = u32::from_le_bytes(word);
    let [major, minor, micro, _] = hex.to_be_bytes();
    if major == 0 {
        return Err(unknown());
    }
    Ok(PythonVersion {
        major,
        minor,
        micro: Some(micro),
    })
}

/// The version from which functions the file has, for a CPython 3.7–3.10
/// with neither `Py_Version` nor a versioned name.
fn version_from_symbols(
    first: &impl Fn(&'static str) -> Result<Option<SymInfo<'static>>, DetectError>,
) -> Result<Option<PythonVersion>, DetectError> {
    for (name, minor) in FIRST_IN {
        if first(name)?.is_some() {
            return Ok(Some(PythonVersion {
                major: 3,
                minor,
                micro: None,
            }));
        }
    }
    // _PyRuntime is 3.7+, and nothing newer was found.
    Ok(first(RUNTIME)?.map(|_| PythonVersion {
        major: 3,
        minor: 7,
        micro: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead as _, BufReader};
    use std::process::{Child, Command, Stdio};

    /// Prints what the interpreter knows of itself, then sleeps. Valid
    /// Python 2 too, so that 2.7 can be found and turned down.
    const REPORT: &str = "\
import sys, time
try:
    import ctypes, types
    api = ctypes.pythonapi
    print('runtime %d' % ctypes.addressof(ctypes.c_char.in_dll(api, '_PyRuntime')))
    print('eval %d' % ctypes.cast(api._PyEval_EvalFrameDefault, ctypes.c_void_p).value)
    print('code_type %d' % id(types.CodeType))
except Exception:
    pass
print('version %d %d %d' % sys.version_info[:3])
print('ready')
sys.stdout.flush()
time.sleep(60)
";

    /// A Python child that is killed on drop, with what it reported.
    struct Reporter {
        child: Child,
        report: std::collections::HashMap<String, Vec<u64>>,
    }

    impl Reporter {
        fn spawn(python: &Path) -> Reporter {
            let mut child = Command::new(python)
                .args(["-c", REPORT])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("failed to run `{}`: {e}", python.display()));
            let mut report = std::collections::HashMap::new();
            let stdout = child.stdout.take().unwrap();
            for line in BufReader::new(stdout).lines() {
                let line = line.unwrap();
                if line == "ready" {
                    break;
                }
                let mut words = line.split(' ');
                let key = words.next().unwrap().to_string();
                report.insert(key, words.map(|w| w.parse().unwrap()).collect());
            }
            Reporter { child, report }
        }

        fn value(&self, key: &str) -> u64 {
            self.report[key][0]
        }

        fn find(&self) -> Result<Interpreter, DetectError> {
            find_interpreter_in_process(Path::new("/proc"), self.child.id(), &Inspector::new())
        }
    }

    impl Drop for Reporter {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn pyenv(prefix: &str) -> Option<PathBuf> {
        let versions = PathBuf::from(std::env::var_os("HOME")?).join(".pyenv/versions");
        let mut found: Vec<PathBuf> = std::fs::read_dir(versions)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.path().join("bin/python"))
            .filter(|p| p.exists())
            .collect();
        found.sort();
        found.pop()
    }

    /// Checks what was found against what the interpreter says of itself.
    fn assert_matches_report(found: &Interpreter, reporter: &Reporter) {
        let version = &reporter.report["version"];
        assert_eq!(
            (u64::from(found.version.major), u64::from(found.version.minor)),
            (version[0], version[1])
        );
        if let Some(micro) = found.version.micro {
            assert_eq!(u64::from(micro), version[2]);
        }
        assert_eq!(found.offsets.version, (found.version.major, found.version.minor));
        assert_eq!(found.runtime_address, reporter.value("runtime"), "_PyRuntime");
        assert_eq!(found.code_type_address, reporter.value("code_type"), "PyCode_Type");
        assert_eq!(
            found.eval_frame[0].start,
            reporter.value("eval"),
            "_PyEval_EvalFrameDefault"
        );
        assert!(found.eval_frame[0].end - found.eval_frame[0].start > 1000);
        assert!(found.in_eval_frame(reporter.value("eval") + 16));
        assert_eq!(
            found.tss_key_address(),
            found.runtime_address + u64::from(found.offsets.runtime.tss_key)
        );
    }

    #[test]
    fn finds_the_static_interpreter_of_the_system_python() {
        let reporter = Reporter::spawn(Path::new("/usr/bin/python3"));
        let found = reporter.find().unwrap();
        assert_eq!(found.version.micro.is_some(), found.version.minor >= 11, "Py_Version");
        assert!(
            found.path.file_name().unwrap().to_string_lossy().starts_with("python3"),
            "{}",
            found.path.display()
        );
        assert_matches_report(&found, &reporter);
    }

    #[test]
    fn finds_libpython_in_each_pyenv_build() {
        for minor in 8..=13 {
            let Some(python) = pyenv(&format!("3.{minor}.")) else {
                println!("skipped 3.{minor}: not in ~/.pyenv/versions");
                continue;
            };
            let reporter = Reporter::spawn(&python);
            let found = reporter.find().unwrap_or_else(|e| panic!("{}: {e}", python.display()));
            let name = found.path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(name.starts_with(&format!("libpython3.{minor}.so")), "{name}");
            assert_matches_report(&found, &reporter);
            // pyenv's builds keep .symtab, where GCC's split-off part of
            // the eval loop is named (3.12 and 3.13 on this machine).
            println!(
                "{}: {} eval-loop range(s), version {}",
                python.display(),
                found.eval_frame.len(),
                found.version
            );
        }
    }

    #[test]
    fn versions_before_3_8_are_named_and_turned_down() {
        for (prefix, major, minor) in [("2.7.", 2, 7), ("3.6.", 3, 6), ("3.7.", 3, 7)] {
            let Some(python) = pyenv(prefix) else {
                println!("skipped {prefix}: not in ~/.pyenv/versions");
                continue;
            };
            let reporter = Reporter::spawn(&python);
            match reporter.find() {
                Err(DetectError::Unsupported { version, .. }) => {
                    assert_eq!((version.major, version.minor), (major, minor));
                }
                other => panic!("{}: {other:?}", python.display()),
            }
        }
    }

    #[test]
    fn a_process_without_python_is_not_python() {
        let found = find_interpreter_in_process(Path::new("/proc"), std::process::id(), &Inspector::new());
        assert!(matches!(found, Err(DetectError::NotPython)), "{found:?}");
    }

    #[test]
    fn the_symbols_tell_the_version_when_nothing_else_does() {
        let inspector = Inspector::new();
        for minor in 8..=10 {
            let Some(python) = pyenv(&format!("3.{minor}.")) else {
                continue;
            };
            let library = python
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .join(format!("lib/libpython3.{minor}.so.1.0"));
            let first = |name: &'static str| Ok(lookup(&inspector, &library, &library, name)?.into_iter().next());
            let version = version_from_symbols(&first).unwrap().unwrap();
            assert_eq!((version.major, version.minor), (3, minor), "{}", library.display());
        }
    }

    #[test]
    fn names_tell_major_minor_and_free_threading() {
        assert_eq!(version_from_name("libpython3.11.so.1.0"), Some((3, 11, false)));
        assert_eq!(version_from_name("libpython3.6m.so"), Some((3, 6, false)));
        assert_eq!(version_from_name("libpython3.13t.so.1.0"), Some((3, 13, true)));
        assert_eq!(version_from_name("python3.9"), Some((3, 9, false)));
        assert_eq!(version_from_name("python3"), None);
        assert_eq!(version_from_name("libc.so.6"), None);
        assert!(is_libpython("libpython3.12.so.1.0") && !is_libpython("libpython3.so"));
    }

    #[test]
    fn missing_maps_are_a_read_error() {
        let found = find_interpreter_in_process(Path::new("/nonexistent"), 1, &Inspector::new());
        assert!(matches!(found, Err(DetectError::Read { .. })), "{found:?}");
    }
}
