//! Shared machinery for the integration tests: building and running the C
//! fixtures, running the `taskprof` binary, and reading the profiles it
//! writes.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub use taskprof::pprof::proto::{Profile, Sample};

pub mod agent_run;
pub mod fake_kube;
pub mod otlp;
pub mod receivers;
pub mod unwind;

/// Flags every fixture is built with: frame pointers for the unwinder,
/// no inlining so each C function is its own frame, and DWARF for names.
pub const FIXTURE_CFLAGS: &[&str] = &["-g", "-O1", "-fno-omit-frame-pointer", "-fno-inline"];

/// How long a profiling run may take before the test gives up on it. Far
/// longer than any profile the tests ask for, because BPF loading and
/// symbolizing a whole host can be slow on a busy CI machine.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// Mapping filename the profiler gives kernel frames.
pub const KERNEL_MAPPING: &str = "[kernel.kallsyms]";

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// A C program under `tests/fixtures/`. Each takes one argument, the number
/// of seconds to run, and exits 0 when that time is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FixtureProgram {
    /// Burns CPU in `main -> outer -> middle -> hot`.
    Chain,
    /// Burns CPU in `main -> early_main_loop -> early_outer -> early_hot`.
    ExitsEarly,
    /// Reads /dev/zero in large chunks, so kernel frames dominate.
    Syscalls,
    /// Runs a loop copied into anonymous executable memory and named only
    /// in `/tmp/perf-PID.map`, as JIT runtimes do.
    Jit,
}

impl FixtureProgram {
    /// The executable's file name, which is also its `comm`: every name is
    /// shorter than the kernel's 15-byte limit.
    pub fn name(self) -> &'static str {
        match self {
            FixtureProgram::Chain => "chain",
            FixtureProgram::ExitsEarly => "exits_early",
            FixtureProgram::Syscalls => "syscalls",
            FixtureProgram::Jit => "jit",
        }
    }

    fn source(self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(format!("{}.c", self.name()))
    }

    /// Path to the built executable, compiling it with clang on first use
    /// (see [`build_cached`]).
    pub fn executable(self) -> PathBuf {
        build_cached(self.name(), &self.source(), &clang(), FIXTURE_CFLAGS, "fixtures")
    }
}

/// Path to the executable `name` compiled from `source` by `compiler` with
/// `flags` (followed by `-o OUTPUT SOURCE`), compiling it on first use.
///
/// Builds are cached under `CARGO_TARGET_TMPDIR/subdir` in a directory named
/// after a hash of the source, the flags and the compiler (its path, size
/// and modification time, so one upgraded in place counts as new), so an
/// edited fixture is rebuilt and an unchanged one is built once per target
/// directory. Within one test binary a mutex serialises builds and remembers
/// their paths; across test binaries running at the same time, each compiles
/// to a private name and renames it into place, so nobody ever executes a
/// half-written file.
pub fn build_cached(name: &str, source: &Path, compiler: &Path, flags: &[&str], subdir: &str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<(String, String), PathBuf>> = Mutex::new(BTreeMap::new());

    let mut built = BUILT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let key = (subdir.to_owned(), name.to_owned());
    if let Some(path) = built.get(&key) {
        return path.clone();
    }
    let path = build_uncached(name, source, compiler, flags, subdir);
    built.insert(key, path.clone());
    path
}

fn build_uncached(name: &str, source: &Path, compiler: &Path, flags: &[&str], subdir: &str) -> PathBuf {
    let code =
        std::fs::read(source).unwrap_or_else(|err| panic!("failed to read fixture `{}`: {err}", source.display()));
    let mut hasher = DefaultHasher::new();
    code.hash(&mut hasher);
    flags.hash(&mut hasher);
    compiler.hash(&mut hasher);
    // A compiler upgraded in place has a new size or modification time.
    if let Ok(metadata) = std::fs::metadata(compiler) {
        metadata.len().hash(&mut hasher);
        metadata.modified().ok().hash(&mut hasher);
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(subdir)
        .join(format!("{name}-{:016x}", hasher.finish()));
    let output = dir.join(name);
    if output.is_file() {
        return output;
    }

    std::fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("failed to create `{}`: {err}", dir.display()));
    let partial = dir.join(format!(".{name}.{}.partial", std::process::id()));
    let result = Command::new(compiler)
        .args(flags)
        .arg("-o")
        .arg(&partial)
        .arg(source)
        .output()
        .unwrap_or_else(|err| panic!("failed to run `{}`: {err}", compiler.display()));
    assert!(
        result.status.success(),
        "failed to compile `{}` with `{} {}` ({}):\n{}",
        source.display(),
        compiler.display(),
        flags.join(" "),
        result.status,
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::rename(&partial, &output).unwrap_or_else(|err| {
        panic!(
            "failed to move `{}` to `{}`: {err}",
            partial.display(),
            output.display()
        )
    });
    output
}

/// A child process that is killed and reaped when dropped, so that a
/// failing test never leaves a process behind. Every process a test starts
/// is held in one.
pub struct ChildGuard(pub Child);

impl std::ops::Deref for ChildGuard {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Either may fail because the process already exited and was
        // reaped; there is nothing left to clean up then.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running fixture process. Dropping it kills and reaps the process, so a
/// failing test never leaves a CPU burner behind.
pub struct Fixture {
    child: ChildGuard,
    program: FixtureProgram,
}

impl Fixture {
    /// Builds `program` if needed and starts it for `seconds` seconds.
    ///
    /// Returns once the fixture's executable has been exec'ed (std reports
    /// exec failures from `spawn`), so its pid already names the program.
    pub fn spawn(program: FixtureProgram, seconds: f64) -> Fixture {
        let executable = program.executable();
        let child = Command::new(&executable)
            .arg(seconds.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| panic!("failed to start `{}`: {err}", executable.display()));
        Fixture {
            child: ChildGuard(child),
            program,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process name the kernel reports for the fixture.
    pub fn comm(&self) -> &'static str {
        self.program.name()
    }

    /// Waits for the fixture to exit by itself and checks it succeeded.
    pub fn wait_for_exit(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    assert!(status.success(), "fixture {} failed: {status}", self.comm());
                    return;
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => panic!("fixture {} still running after {timeout:?}", self.comm()),
                Err(err) => panic!("failed to wait for fixture {}: {err}", self.comm()),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Running taskprof
// ---------------------------------------------------------------------------

/// The outcome of one `taskprof` run.
#[derive(Debug)]
pub struct TaskprofRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl TaskprofRun {
    /// Panics with the captured output unless the run exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "taskprof failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics with the captured output unless the run exited with `code`.
    pub fn assert_exit_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "expected exit code {code}, got {}:\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// A `taskprof` process in flight. Dropping it kills and reaps the process.
pub struct RunningTaskprof {
    child: ChildGuard,
    started: Instant,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

/// Starts `taskprof` with `args` in `cwd`, capturing its output.
pub fn spawn_taskprof<I>(args: I, cwd: &Path) -> RunningTaskprof
where
    I: IntoIterator,
    I::Item: AsRef<OsStr>,
{
    spawn_taskprof_env(args, cwd, &[])
}

/// [`spawn_taskprof`] with `env` added to its environment.
pub fn spawn_taskprof_env<I>(args: I, cwd: &Path, env: &[(&str, &str)]) -> RunningTaskprof
where
    I: IntoIterator,
    I::Item: AsRef<OsStr>,
{
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskprof"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("failed to start taskprof: {err}"));
    let started = Instant::now();
    // Drained on threads so a chatty run cannot fill a pipe and stall.
    let stdout = child.stdout.take().map(drain_to_string);
    let stderr = child.stderr.take().map(drain_to_string);
    RunningTaskprof {
        child: ChildGuard(child),
        started,
        stdout,
        stderr,
    }
}

/// Runs `taskprof` with `args` in `cwd` to completion.
pub fn run_taskprof<I>(args: I, cwd: &Path, timeout: Duration) -> TaskprofRun
where
    I: IntoIterator,
    I::Item: AsRef<OsStr>,
{
    spawn_taskprof(args, cwd).wait(timeout)
}

fn drain_to_string(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

impl RunningTaskprof {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `libc::SIGINT`) to the process.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits in pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our
        // own child, which has not been reaped yet, so it cannot be reused.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "failed to send signal {signal} to taskprof: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits until the profiler has opened its perf events, which is the
    /// earliest point at which it can be sampling. Panics with the process's
    /// output if it exits first or takes longer than `timeout`.
    pub fn wait_until_sampling(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let fd_dir = PathBuf::from(format!("/proc/{}/fd", self.pid()));
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                let run = self.collect();
                panic!(
                    "taskprof exited ({}) before it started sampling:\nstderr:\n{}",
                    run.status, run.stderr
                );
            }
            if has_perf_event_fd(&fd_dir) {
                // The events are opened just before the program is attached.
                thread::sleep(Duration::from_millis(200));
                return;
            }
            if Instant::now() >= deadline {
                panic!("taskprof opened no perf events within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit, killing it and panicking with its
    /// output if it takes longer than `timeout`.
    pub fn wait(mut self, timeout: Duration) -> TaskprofRun {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return self.collect(),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let run = self.collect();
                    panic!(
                        "taskprof did not exit within {timeout:?}; killed it.\nstdout:\n{}\nstderr:\n{}",
                        run.stdout, run.stderr
                    );
                }
                Err(err) => panic!("failed to wait for taskprof: {err}"),
            }
        }
    }

    fn collect(&mut self) -> TaskprofRun {
        let status = self
            .child
            .wait()
            .unwrap_or_else(|err| panic!("failed to wait for taskprof: {err}"));
        let elapsed = self.started.elapsed();
        let join =
            |handle: Option<JoinHandle<String>>| handle.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        TaskprofRun {
            status,
            stdout: join(self.stdout.take()),
            stderr: join(self.stderr.take()),
            elapsed,
        }
    }
}

fn has_perf_event_fd(fd_dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(fd_dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        std::fs::read_link(entry.path())
            .map(|target| target.to_string_lossy().contains("perf_event"))
            .unwrap_or(false)
    })
}

/// A fresh temporary directory for one test's outputs.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("taskprof-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap_or_else(|err| panic!("failed to create a scratch directory: {err}"))
}

/// A path as a command-line argument; test paths are always UTF-8.
pub fn path_arg(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("test path `{}` is not UTF-8", path.display()))
}

/// A finished `taskprof profile` run that wrote a pprof file.
pub struct RecordedProfile {
    /// Scratch directory holding the output; removed on drop.
    pub dir: tempfile::TempDir,
    pub output: PathBuf,
    pub profile: Profile,
    /// The run, with what it printed.
    pub run: TaskprofRun,
}

/// Profiles `pids` (the whole host if empty) for `duration` into a pprof
/// file, checks the run succeeded, and decodes the result.
pub fn record_pprof(pids: &[u32], duration: &str) -> RecordedProfile {
    record_pprof_with(pids, duration, &[])
}

/// [`record_pprof`] with `extra_args` added to `taskprof profile` (e.g.
/// `--unwind=fp`).
pub fn record_pprof_with(pids: &[u32], duration: &str, extra_args: &[&str]) -> RecordedProfile {
    record_pprof_env(pids, duration, extra_args, &[])
}

/// [`record_pprof_with`] with `env` added to taskprof's environment.
pub fn record_pprof_env(pids: &[u32], duration: &str, extra_args: &[&str], env: &[(&str, &str)]) -> RecordedProfile {
    let dir = scratch_dir();
    let output = dir.path().join("profile.pb.gz");
    let mut args: Vec<String> = vec![
        "profile".to_owned(),
        "--duration".to_owned(),
        duration.to_owned(),
        "-o".to_owned(),
        path_arg(&output).to_owned(),
    ];
    args.extend(extra_args.iter().map(|arg| (*arg).to_owned()));
    for pid in pids {
        args.push("--pid".to_owned());
        args.push(pid.to_string());
    }
    let run = spawn_taskprof_env(&args, dir.path(), env).wait(RUN_TIMEOUT);
    run.assert_success();
    let profile = read_pprof(&output);
    RecordedProfile {
        dir,
        output,
        profile,
        run,
    }
}

// ---------------------------------------------------------------------------
// Reading profiles
// ---------------------------------------------------------------------------

/// Reads a pprof file, gzipped or not, and decodes it.
pub fn read_pprof(path: &Path) -> Profile {
    let bytes = std::fs::read(path).unwrap_or_else(|err| panic!("failed to read profile `{}`: {err}", path.display()));
    let raw = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut raw)
            .unwrap_or_else(|err| panic!("failed to gunzip `{}`: {err}", path.display()));
        raw
    } else {
        bytes
    };
    <Profile as prost::Message>::decode(raw.as_slice())
        .unwrap_or_else(|err| panic!("failed to decode profile `{}`: {err}", path.display()))
}

/// One frame of a sample's stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Function name, or `0x…` for a location with no line information.
    pub function: String,
    /// Filename of the location's mapping (`[kernel.kallsyms]` for the
    /// kernel), empty if the location has no mapping.
    pub mapping: String,
}

impl Frame {
    pub fn is_kernel(&self) -> bool {
        self.mapping == KERNEL_MAPPING
    }
}

/// A frame with its source position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFrame {
    pub function: String,
    pub file: String,
    pub line: i64,
}

/// One aggregated stack: root→leaf frames and their sample count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stack {
    pub frames: Vec<Frame>,
    pub count: i64,
}

impl Stack {
    pub fn function_names(&self) -> Vec<String> {
        self.frames.iter().map(|f| f.function.clone()).collect()
    }

    pub fn leaf(&self) -> Option<&str> {
        self.frames.last().map(|f| f.function.as_str())
    }

    /// Whether `names` appear in this stack in order (root→leaf), not
    /// necessarily adjacent.
    pub fn contains_in_order(&self, names: &[&str]) -> bool {
        let mut wanted = names.iter().peekable();
        for frame in &self.frames {
            if wanted.peek().is_some_and(|name| frame.function == **name) {
                wanted.next();
            }
        }
        wanted.peek().is_none()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.frames.iter().any(|f| f.function == name)
    }
}

/// Index over a decoded profile that resolves string, location and
/// function ids, panicking on dangling references.
pub struct ProfileView<'a> {
    pub profile: &'a Profile,
    locations: HashMap<u64, &'a taskprof::pprof::proto::Location>,
    functions: HashMap<u64, &'a taskprof::pprof::proto::Function>,
    mappings: HashMap<u64, &'a taskprof::pprof::proto::Mapping>,
}

impl<'a> ProfileView<'a> {
    pub fn new(profile: &'a Profile) -> Self {
        ProfileView {
            profile,
            locations: profile.location.iter().map(|l| (l.id, l)).collect(),
            functions: profile.function.iter().map(|f| (f.id, f)).collect(),
            mappings: profile.mapping.iter().map(|m| (m.id, m)).collect(),
        }
    }

    /// The string at `index` in the string table.
    pub fn string(&self, index: i64) -> &'a str {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.profile.string_table.get(i))
            .unwrap_or_else(|| panic!("string index {index} is out of range"))
    }

    /// The numeric label `key` of `sample`, if present.
    pub fn label_num(&self, sample: &Sample, key: &str) -> Option<i64> {
        sample.label.iter().find(|l| self.string(l.key) == key).map(|l| l.num)
    }

    /// The string label `key` of `sample`, if present.
    pub fn label_str(&self, sample: &Sample, key: &str) -> Option<&'a str> {
        sample
            .label
            .iter()
            .find(|l| self.string(l.key) == key)
            .map(|l| self.string(l.str))
    }

    /// The `pid` label of `sample`; every sample must have one.
    pub fn pid(&self, sample: &Sample) -> i64 {
        self.label_num(sample, "pid")
            .unwrap_or_else(|| panic!("sample has no pid label: {sample:?}"))
    }

    /// The sample's frames, root→leaf. A location's lines are innermost
    /// first and `location_id[0]` is the leaf, so both are reversed.
    pub fn frames(&self, sample: &Sample) -> Vec<Frame> {
        let mut leaf_first = Vec::new();
        for id in &sample.location_id {
            let location = self.location(*id);
            let mapping = match location.mapping_id {
                0 => String::new(),
                id => {
                    let mapping = self
                        .mappings
                        .get(&id)
                        .unwrap_or_else(|| panic!("location refers to missing mapping {id}"));
                    self.string(mapping.filename).to_owned()
                }
            };
            if location.line.is_empty() {
                leaf_first.push(Frame {
                    function: format!("{:#x}", location.address),
                    mapping,
                });
                continue;
            }
            for line in &location.line {
                let function = self.function(line.function_id);
                leaf_first.push(Frame {
                    function: self.string(function.name).to_owned(),
                    mapping: mapping.clone(),
                });
            }
        }
        leaf_first.reverse();
        leaf_first
    }

    /// A sample's frames, root to leaf, with each line's function, source
    /// file and line number (one entry per line of a location).
    pub fn frames_with_lines(&self, sample: &Sample) -> Vec<SourceFrame> {
        let mut leaf_first = Vec::new();
        for id in &sample.location_id {
            for line in &self.location(*id).line {
                let function = self.function(line.function_id);
                leaf_first.push(SourceFrame {
                    function: self.string(function.name).to_owned(),
                    file: self.string(function.filename).to_owned(),
                    line: line.line,
                });
            }
        }
        leaf_first.reverse();
        leaf_first
    }

    fn location(&self, id: u64) -> &'a taskprof::pprof::proto::Location {
        self.locations
            .get(&id)
            .unwrap_or_else(|| panic!("sample refers to missing location {id}"))
    }

    fn function(&self, id: u64) -> &'a taskprof::pprof::proto::Function {
        self.functions
            .get(&id)
            .unwrap_or_else(|| panic!("line refers to missing function {id}"))
    }

    /// The stack and count (`value[0]`) of every sample accepted by `keep`.
    pub fn stacks_where(&self, keep: impl Fn(&Sample) -> bool) -> Vec<Stack> {
        self.profile
            .sample
            .iter()
            .filter(|s| keep(s))
            .map(|s| Stack {
                frames: self.frames(s),
                count: *s.value.first().expect("sample has no values"),
            })
            .collect()
    }

    /// Every stack sampled in process `pid`.
    pub fn stacks_for_pid(&self, pid: u32) -> Vec<Stack> {
        self.stacks_where(|s| self.pid(s) == i64::from(pid))
    }

    /// Every stack sampled in a process or thread named `comm`.
    pub fn stacks_for_comm(&self, comm: &str) -> Vec<Stack> {
        self.stacks_where(|s| {
            self.label_str(s, "process_name") == Some(comm) || self.label_str(s, "thread_name") == Some(comm)
        })
    }
}

/// Total sample count of `stacks`.
pub fn total_count(stacks: &[Stack]) -> i64 {
    stacks.iter().map(|s| s.count).sum()
}

/// Renders stacks for assertion messages, heaviest first.
pub fn describe_stacks(stacks: &[Stack]) -> String {
    let mut sorted: Vec<&Stack> = stacks.iter().collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.count));
    sorted
        .iter()
        .take(20)
        .map(|s| format!("{:>6} {}", s.count, s.function_names().join(";")))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------
// External tools
// ---------------------------------------------------------------------------

/// The first file called `name` in a directory of PATH.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The clang used to build fixtures.
pub fn clang() -> PathBuf {
    if let Some(clang) = find_in_path("clang") {
        return clang;
    }
    (14..=21)
        .rev()
        .find_map(|version| find_in_path(&format!("clang-{version}")))
        .unwrap_or_else(|| {
            panic!(
                "clang not found in PATH; it builds the test fixtures. \
                 install clang: scripts/install-deps.sh --test (or apt-get install clang)"
            )
        })
}

/// The Go toolchain, whose `go tool pprof` checks the profiles.
pub fn go() -> PathBuf {
    find_in_path("go")
        .or_else(|| {
            ["/usr/lib/go/bin/go", "/usr/bin/go", "/usr/local/go/bin/go"]
                .into_iter()
                .map(PathBuf::from)
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "go not found (looked in PATH, /usr/lib/go/bin, /usr/bin, /usr/local/go/bin); \
                 `go tool pprof` checks the profiles. \
                 install golang-go: scripts/install-deps.sh --test (or apt-get install golang-go)"
            )
        })
}

// ---------------------------------------------------------------------------
// CPython builds for the version matrix
// ---------------------------------------------------------------------------

/// `TASKPROF_PYTHON_MATRIX=skip` lets a machine without pyenv builds run
/// the rest of the suite; without it, a missing build fails its test.
pub const PYTHON_MATRIX_ENV: &str = "TASKPROF_PYTHON_MATRIX";

/// `$PYENV_ROOT/versions`, or `~/.pyenv/versions`.
pub fn pyenv_versions_dir() -> PathBuf {
    std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".pyenv"))
        .join("versions")
}

/// Every pyenv build of CPython 3.`minor` on this machine, newest last,
/// as (version directory name, interpreter path).
pub fn pyenv_builds(minor: u32) -> Vec<(String, PathBuf)> {
    let prefix = format!("3.{minor}.");
    let versions = pyenv_versions_dir();
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(&versions)
        .map(|dir| dir.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&prefix))
        .map(|name| {
            let python = versions.join(&name).join(format!("bin/python3.{minor}"));
            (name, python)
        })
        .filter(|(_, python)| python.exists())
        .collect();
    found.sort();
    found
}

/// The newest pyenv build of CPython 3.`minor`, if this machine has one.
pub fn pyenv_python(minor: u32) -> Option<PathBuf> {
    pyenv_builds(minor).pop().map(|(_, python)| python)
}

/// The pyenv build of CPython 3.`minor` a test needs. A missing build fails
/// the test with what to do, unless `TASKPROF_PYTHON_MATRIX=skip` asks to
/// leave the version matrix out, in which case this says so and gives None.
pub fn required_pyenv_python(minor: u32) -> Option<PathBuf> {
    if let Some(python) = pyenv_python(minor) {
        return Some(python);
    }
    if std::env::var(PYTHON_MATRIX_ENV).as_deref() == Ok("skip") {
        println!(
            "not run: no CPython 3.{minor} build, and {PYTHON_MATRIX_ENV}=skip asks to leave the version matrix out"
        );
        return None;
    }
    panic!(
        "no pyenv build of CPython 3.{minor} under {}: the version matrix runs every supported CPython. \
         Install it (`pyenv install 3.{minor}`), or set {PYTHON_MATRIX_ENV}=skip to leave the matrix out knowingly",
        pyenv_versions_dir().display()
    );
}
