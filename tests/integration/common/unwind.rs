//! Unwinding without frame pointers, from the test side: fixtures built
//! without frame pointers by GCC, Clang and rustc (`tests/fixtures/unwind/`),
//! Debian programs as real-world workloads, what it means for a stack to
//! reach its root, and `perf record --call-graph dwarf` as the reference
//! unwinder to compare with.
//!
//! Every tool these tests use is required: a missing one panics with a
//! message naming `scripts/install-deps.sh --test`, so a machine without it
//! fails the tests instead of skipping them.

use crate::common::ChildGuard;
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use super::{build_cached, find_in_path, scratch_dir, Stack};

/// Prefix of the synthetic outermost frame of a stack the unwinder gave up on.
pub const UNWIND_STOPPED_PREFIX: &str = "[unwind stopped: ";

/// Names of the outermost frame of a complete stack.
///
/// - `_start`: the program's entry point, root of its main thread.
/// - `clone3` (glibc 2.34+, what Debian 12 creates threads with) and
///   `clone`: root of every other thread. glibc marks the end of the stack
///   in both with `.cfi_undefined rip`. With Debian's `libc6-dbg`, perf and
///   blazesym name them `clone3` and `clone`; glibc's internal aliases
///   (`__clone3`, `__GI___clone3`, ...) are listed too. Without `libc6-dbg`,
///   `clone3` is not in `libc.so.6`'s dynamic symbols and cannot be named.
/// - `_dl_start_user`: the dynamic loader's entry, root of whatever runs
///   before the program's own `_start` (library initialisers).
pub const ROOT_FUNCTIONS: &[&str] = &[
    "_start",
    "clone3",
    "__clone3",
    "__GI___clone3",
    "clone",
    "__clone",
    "__GI___clone",
    "_dl_start_user",
];

/// Whether a stack, given as function names leaf first, reaches the root of
/// its thread: its outermost frame is one of [`ROOT_FUNCTIONS`], or the
/// unnamed entry point of a stripped executable.
///
/// A stripped executable (`/usr/bin/xz`) has no symbol for `_start`, so its
/// frame is unnamed: `[unknown]` in perf, `xz+0x3ac0` in taskprof. That
/// frame counts as the root when the frame it called is glibc's
/// `__libc_start_main` (`__libc_start_main_impl` with debug symbols), which
/// only `_start` calls. A stack that ends in an `[unwind stopped: …]` frame
/// never reaches the root.
pub fn reaches_root<S: AsRef<str>>(leaf_first: &[S]) -> bool {
    let Some(outermost) = leaf_first.last().map(|s| s.as_ref()) else {
        return false;
    };
    if outermost.starts_with(UNWIND_STOPPED_PREFIX) {
        return false;
    }
    if ROOT_FUNCTIONS.contains(&outermost) {
        return true;
    }
    let called = leaf_first.len().checked_sub(2).map(|i| leaf_first[i].as_ref());
    is_unnamed(outermost) && called.is_some_and(|name| name.starts_with("__libc_start_main"))
}

/// Whether a frame name is a placeholder for code without a symbol:
/// `[unknown]`, a raw address, or taskprof's `file+0x…`.
fn is_unnamed(name: &str) -> bool {
    name == "[unknown]" || name.starts_with("0x") || name.contains("+0x")
}

/// Whether `frame` is the function `wanted`: equal, or `wanted` followed by
/// a C++ parameter list (`hot_leaf(unsigned long, unsigned long)`, also with
/// ` [clone .cold]` after it).
pub fn function_is(frame: &str, wanted: &str) -> bool {
    frame
        .strip_prefix(wanted)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('('))
}

/// Whether `root_to_leaf` contains `chain` in order, not necessarily
/// adjacent. Each step of `chain` lists the names one function may have
/// (see [`function_is`]); the first that matches a frame takes that step.
pub fn contains_chain<S: AsRef<str>>(root_to_leaf: &[S], chain: &[&[&str]]) -> bool {
    let mut steps = chain.iter().peekable();
    for frame in root_to_leaf {
        if steps
            .peek()
            .is_some_and(|names| names.iter().any(|name| function_is(frame.as_ref(), name)))
        {
            steps.next();
        }
    }
    steps.peek().is_none()
}

/// Leaf-first function names of a taskprof stack (whose frames are root
/// to leaf).
pub fn leaf_first(stack: &Stack) -> Vec<String> {
    let mut names = stack.function_names();
    names.reverse();
    names
}

/// Whether a taskprof stack reaches its thread's root (see [`reaches_root`]).
pub fn stack_reaches_root(stack: &Stack) -> bool {
    reaches_root(&leaf_first(stack))
}

// ---------------------------------------------------------------------------
// Shares and histograms
// ---------------------------------------------------------------------------

/// How many of some samples have a property.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub matching: i64,
    pub total: i64,
}

impl Share {
    /// The share of weighted `items` for which `predicate` holds.
    pub fn of<T>(items: &[T], weight: impl Fn(&T) -> i64, predicate: impl Fn(&T) -> bool) -> Share {
        let total = items.iter().map(&weight).sum();
        let matching = items.iter().filter(|item| predicate(item)).map(&weight).sum();
        Share { matching, total }
    }

    /// The share as a fraction, 0 for no samples at all.
    pub fn fraction(self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.matching as f64 / self.total as f64
        }
    }

    pub fn percent(self) -> f64 {
        self.fraction() * 100.0
    }
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1}% of {} samples", self.percent(), self.total)
    }
}

/// The share of taskprof samples (weighted by count) for which `predicate` holds.
pub fn stack_share(stacks: &[Stack], predicate: impl Fn(&Stack) -> bool) -> Share {
    Share::of(stacks, |s| s.count, predicate)
}

/// The heaviest distinct stacks among weighted `(root-to-leaf names, count)`
/// pairs, one `count name;name;…` line each, at most `limit`.
pub fn histogram<I>(stacks: I, limit: usize) -> String
where
    I: IntoIterator<Item = (Vec<String>, i64)>,
{
    let mut counts: HashMap<Vec<String>, i64> = HashMap::new();
    for (names, count) in stacks {
        *counts.entry(names).or_default() += count;
    }
    let mut sorted: Vec<(Vec<String>, i64)> = counts.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let distinct = sorted.len();
    let mut lines: Vec<String> = sorted
        .iter()
        .take(limit)
        .map(|(names, count)| format!("{count:>6} {}", names.join(";")))
        .collect();
    if distinct > limit {
        lines.push(format!("   ... and {} more distinct stacks", distinct - limit));
    }
    if lines.is_empty() {
        lines.push("   (none)".to_owned());
    }
    lines.join("\n")
}

/// Histogram (root to leaf) of the taskprof stacks for which `offending` holds.
pub fn taskprof_offenders(stacks: &[Stack], offending: impl Fn(&Stack) -> bool) -> String {
    histogram(
        stacks
            .iter()
            .filter(|s| offending(s))
            .map(|s| (s.function_names(), s.count)),
        15,
    )
}

/// Histogram (root to leaf) of the perf samples for which `offending` holds.
pub fn perf_offenders(samples: &[PerfSample], offending: impl Fn(&PerfSample) -> bool) -> String {
    histogram(
        samples.iter().filter(|s| offending(s)).map(|s| {
            let mut names = s.frames.clone();
            names.reverse();
            (names, 1)
        }),
        15,
    )
}

// ---------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------

/// The first of `names` found in PATH, else the first existing path of
/// `fallbacks`; panics naming `package` otherwise.
fn require_tool(names: &[&str], fallbacks: &[PathBuf], package: &str, purpose: &str) -> PathBuf {
    names
        .iter()
        .find_map(|name| find_in_path(name))
        .or_else(|| fallbacks.iter().find(|path| path.is_file()).cloned())
        .unwrap_or_else(|| {
            panic!(
                "{} not found in PATH; {purpose}. install {package}: \
                 scripts/install-deps.sh --test (or apt-get install {package})",
                names.join(" or ")
            )
        })
}

/// A versioned name list: `name`, then `name-21` down to `name-14`.
fn with_versions(name: &str) -> Vec<String> {
    std::iter::once(name.to_owned())
        .chain((14..=21).rev().map(|v| format!("{name}-{v}")))
        .collect()
}

fn require_versioned(name: &str, package: &str, purpose: &str) -> PathBuf {
    let names = with_versions(name);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    require_tool(&names, &[], package, purpose)
}

/// `perf`, from Debian's linux-perf.
pub fn perf() -> PathBuf {
    require_tool(
        &["perf"],
        &[PathBuf::from("/usr/bin/perf")],
        "linux-perf",
        "`perf record --call-graph dwarf` is the reference unwinder the tests compare with",
    )
}

/// `objdump`, from binutils (which gcc depends on).
pub fn objdump() -> PathBuf {
    require_tool(
        &["objdump"],
        &[],
        "binutils",
        "it checks that the unwinding fixtures have no frame pointers",
    )
}

/// `xz`, from xz-utils.
pub fn xz() -> PathBuf {
    require_tool(&["xz"], &[], "xz-utils", "it is a real-world workload to unwind")
}

/// `sqlite3`, the command-line shell.
pub fn sqlite3() -> PathBuf {
    require_tool(&["sqlite3"], &[], "sqlite3", "it is a real-world workload to unwind")
}

/// The `rustc` on PATH, else rustup's in `~/.cargo/bin`.
pub fn rustc() -> PathBuf {
    find_in_path("rustc")
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            Some(PathBuf::from(home).join(".cargo/bin/rustc")).filter(|path| path.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "rustc not found in PATH or ~/.cargo/bin; it builds the Rust unwinding fixture. \
                 install a Rust toolchain with rustup (https://rustup.rs)"
            )
        })
}

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// A program under `tests/fixtures/unwind/`, built without frame pointers,
/// that burns CPU on one thread in a known call chain for the number of
/// seconds given as its one argument, then exits 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UnwindFixture {
    /// `qsort_chain.c` built by GCC: main → sort_loop → qsort → compare_slow.
    QsortGcc,
    /// `qsort_chain.c` built by Clang.
    QsortClang,
    /// `exceptions.cpp` built by g++: main → level_one → level_two →
    /// hot_leaf, throwing and catching std::runtime_error.
    CxxGcc,
    /// `exceptions.cpp` built by clang++.
    CxxClang,
    /// `rust_chain.rs` built by rustc: main → outer → middle → hot.
    Rust,
}

/// C and C++ flags: no frame pointers, optimised, DWARF for names.
const C_FLAGS: &[&str] = &["-O2", "-fomit-frame-pointer", "-g"];
/// GCC only (Clang ignores it with a warning): keep functions called once
/// as frames of their own.
const GCC_ONLY_FLAGS: &[&str] = &["-fno-inline-functions-called-once"];
/// rustc flags: release, no frame pointers, line tables and function names
/// (with inlined frames), unwinding panics.
const RUSTC_FLAGS: &[&str] = &[
    "--edition",
    "2021",
    "-C",
    "opt-level=3",
    "-C",
    "force-frame-pointers=no",
    "-C",
    "debuginfo=1",
    "-C",
    "panic=unwind",
];

/// Names glibc's qsort has in a stack: `qsort` is a tail call to
/// `qsort_r`, which blazesym names `__GI___qsort_r` from Debian's libc6-dbg
/// (perf too) and `qsort_r` from the dynamic symbols alone. A sample on
/// that jump itself is in `qsort` (`__GI_qsort` with libc6-dbg).
const QSORT: &[&str] = &["qsort", "__GI_qsort", "qsort_r", "__qsort_r", "__GI___qsort_r"];

impl UnwindFixture {
    pub const ALL: [UnwindFixture; 5] = [
        UnwindFixture::QsortGcc,
        UnwindFixture::QsortClang,
        UnwindFixture::CxxGcc,
        UnwindFixture::CxxClang,
        UnwindFixture::Rust,
    ];

    /// The executable's file name, which is also its `comm` (under 16 bytes).
    pub fn name(self) -> &'static str {
        match self {
            UnwindFixture::QsortGcc => "qsort_gcc",
            UnwindFixture::QsortClang => "qsort_clang",
            UnwindFixture::CxxGcc => "cxx_gcc",
            UnwindFixture::CxxClang => "cxx_clang",
            UnwindFixture::Rust => "rust_chain",
        }
    }

    fn source(self) -> PathBuf {
        let file = match self {
            UnwindFixture::QsortGcc | UnwindFixture::QsortClang => "qsort_chain.c",
            UnwindFixture::CxxGcc | UnwindFixture::CxxClang => "exceptions.cpp",
            UnwindFixture::Rust => "rust_chain.rs",
        };
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/unwind")
            .join(file)
    }

    /// The compiler that builds this fixture; panics if it is missing.
    fn compiler(self) -> PathBuf {
        const PURPOSE: &str = "it builds the unwinding fixtures";
        match self {
            UnwindFixture::QsortGcc => require_tool(&["gcc"], &[], "gcc", PURPOSE),
            UnwindFixture::CxxGcc => require_tool(&["g++"], &[], "g++", PURPOSE),
            UnwindFixture::QsortClang => super::clang(),
            UnwindFixture::CxxClang => require_versioned("clang++", "clang", PURPOSE),
            UnwindFixture::Rust => rustc(),
        }
    }

    /// The compiler's arguments, without the output and source paths.
    fn flags(self) -> Vec<&'static str> {
        match self {
            UnwindFixture::QsortGcc | UnwindFixture::CxxGcc => [C_FLAGS, GCC_ONLY_FLAGS].concat(),
            UnwindFixture::QsortClang | UnwindFixture::CxxClang => C_FLAGS.to_vec(),
            UnwindFixture::Rust => RUSTC_FLAGS.to_vec(),
        }
    }

    /// The functions every sample is expected to pass through, root to
    /// leaf, each with the names it may have: everything up to the
    /// library or language runtime the hot leaf is called from.
    pub fn required_chain(self) -> &'static [&'static [&'static str]] {
        match self {
            UnwindFixture::QsortGcc | UnwindFixture::QsortClang => &[&["main"], &["sort_loop"], QSORT],
            UnwindFixture::CxxGcc | UnwindFixture::CxxClang => &[&["main"], &["level_one"], &["level_two"]],
            UnwindFixture::Rust => &[
                &["main"],
                &["rust_chain::main"],
                &["rust_chain::outer"],
                &["rust_chain::middle"],
            ],
        }
    }

    /// The hot leaf, where nearly every sample should be.
    pub fn hot_function(self) -> &'static str {
        match self {
            UnwindFixture::QsortGcc | UnwindFixture::QsortClang => "compare_slow",
            UnwindFixture::CxxGcc | UnwindFixture::CxxClang => "hot_leaf",
            UnwindFixture::Rust => "rust_chain::hot",
        }
    }

    /// [`UnwindFixture::required_chain`] followed by the hot leaf.
    pub fn full_chain(self) -> Vec<&'static [&'static str]> {
        let mut chain = self.required_chain().to_vec();
        chain.push(match self {
            UnwindFixture::QsortGcc | UnwindFixture::QsortClang => &["compare_slow"],
            UnwindFixture::CxxGcc | UnwindFixture::CxxClang => &["hot_leaf"],
            UnwindFixture::Rust => &["rust_chain::hot"],
        });
        chain
    }

    /// The functions the fixture itself defines, as `objdump -C` names
    /// them (C++ with a parameter list), which must not set up frame pointers.
    pub fn own_functions(self) -> &'static [&'static str] {
        match self {
            UnwindFixture::QsortGcc | UnwindFixture::QsortClang => &["main", "sort_loop", "compare_slow"],
            UnwindFixture::CxxGcc | UnwindFixture::CxxClang => &["main", "level_one", "level_two", "hot_leaf"],
            UnwindFixture::Rust => &[
                "rust_chain::main",
                "rust_chain::outer",
                "rust_chain::middle",
                "rust_chain::hot",
            ],
        }
    }

    /// Path to the built executable, compiling it on first use (see
    /// [`super::build_cached`]).
    pub fn executable(self) -> PathBuf {
        build_cached(
            self.name(),
            &self.source(),
            &self.compiler(),
            &self.flags(),
            "fixtures/unwind",
        )
    }

    /// Builds the fixture if needed and starts it for `seconds` seconds.
    pub fn spawn(self, seconds: f64) -> Workload {
        let mut command = Command::new(self.executable());
        command.arg(seconds.to_string());
        Workload::spawn(command, self.name())
    }
}

// ---------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------

/// A running workload process. Dropping it kills and reaps the process, so
/// a failing test never leaves a CPU burner behind.
pub struct Workload {
    child: ChildGuard,
    name: String,
}

impl Workload {
    /// Starts `command` with no input, its output discarded (errors shown).
    /// Returns once the program has been exec'ed, so its pid names it.
    pub fn spawn(mut command: Command, name: &str) -> Workload {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| panic!("failed to start {name} ({command:?}): {err}"));
        Workload {
            child: ChildGuard(child),
            name: name.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Panics if the process has already exited: a workload that ended
    /// before its profile did was too short, or failed.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} (pid {}) exited ({status}) before profiling ended; it must outlast the profile",
                self.name,
                self.pid()
            );
        }
    }
}

/// A CPU-bound, single-threaded program from Debian, run on input the test
/// makes, for longer than a profile lasts (it is killed afterwards).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebianWorkload {
    /// `xz -6 -T1` compressing 24 MiB of generated text (about 1.5 MB/s).
    Xz,
    /// `sqlite3 :memory:` sorting and summing 3 million rows of a recursive
    /// CTE, six times over (about 2.5 s each).
    Sqlite3,
}

/// Input size for xz: at level 6, one thread, roughly 15 s of work.
const XZ_INPUT_BYTES: usize = 24 << 20;

/// One query of the sqlite3 workload: generate, sort and sum 3 million rows.
const SQLITE_QUERY: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) \
     SELECT sum(h * (x % 7)) FROM (SELECT (x * 2654435761) % 1000003 AS h, x FROM c ORDER BY h);";

impl DebianWorkload {
    /// The process name.
    pub fn name(self) -> &'static str {
        match self {
            DebianWorkload::Xz => "xz",
            DebianWorkload::Sqlite3 => "sqlite3",
        }
    }

    /// Starts a fresh run of the workload. Every call runs the same
    /// program on the same input.
    pub fn spawn(self) -> Workload {
        let command = match self {
            DebianWorkload::Xz => {
                let mut command = Command::new(xz());
                command.args(["-6", "-T1", "-c"]).arg(xz_input());
                command
            }
            DebianWorkload::Sqlite3 => {
                let mut command = Command::new(sqlite3());
                command.arg(":memory:");
                for _ in 0..6 {
                    command.arg(SQLITE_QUERY);
                }
                command
            }
        };
        Workload::spawn(command, self.name())
    }
}

/// A 64-bit xorshift generator: deterministic test data without a crate.
/// The seed must not be zero.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Pseudo-random but compressible text (about 7:1 with xz -6): lines of
/// words drawn with a heavy-tailed distribution from a vocabulary of
/// made-up words, and a number. Generated once per target directory.
pub fn xz_input() -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("unwind-data");
    let path = dir.join(format!("xz-input-v1-{XZ_INPUT_BYTES}.txt"));
    if path.is_file() {
        return path;
    }
    std::fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("failed to create `{}`: {err}", dir.display()));

    const SYLLABLES: &[&str] = &[
        "ka", "to", "ri", "men", "sa", "lo", "qu", "ex", "ban", "dor", "pi", "ne", "zu", "ta", "vel", "on",
    ];
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let vocabulary: Vec<String> = (0..5000)
        .map(|_| {
            let syllables = 1 + rng.next() % 4;
            (0..syllables)
                .map(|_| SYLLABLES[(rng.next() % SYLLABLES.len() as u64) as usize])
                .collect()
        })
        .collect();
    let mut text = String::with_capacity(XZ_INPUT_BYTES + 256);
    while text.len() < XZ_INPUT_BYTES {
        for i in 0..12 {
            if i > 0 {
                text.push(' ');
            }
            // Pareto-distributed rank (alpha 1.1): a few words are common,
            // most are rare, as in natural text.
            let rank = (1.0 - rng.unit()).powf(-1.0 / 1.1) as usize;
            text.push_str(&vocabulary[rank.clamp(1, vocabulary.len()) - 1]);
        }
        text.push_str(&format!(" {}\n", rng.next() % 100_000));
    }

    let partial = dir.join(format!(".xz-input.{}.partial", std::process::id()));
    let mut file =
        std::fs::File::create(&partial).unwrap_or_else(|err| panic!("failed to create `{}`: {err}", partial.display()));
    file.write_all(text.as_bytes())
        .unwrap_or_else(|err| panic!("failed to write `{}`: {err}", partial.display()));
    drop(file);
    std::fs::rename(&partial, &path)
        .unwrap_or_else(|err| panic!("failed to move `{}` to `{}`: {err}", partial.display(), path.display()));
    path
}

// ---------------------------------------------------------------------------
// Profiling with perf
// ---------------------------------------------------------------------------

/// One sample from `perf script`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PerfSample {
    pub comm: String,
    pub pid: u32,
    pub tid: u32,
    /// Function names, leaf first; kernel frames (if any) before user ones.
    /// `[unknown]` for a frame perf could not name.
    pub frames: Vec<String>,
}

impl PerfSample {
    pub fn reaches_root(&self) -> bool {
        reaches_root(&self.frames)
    }

    /// The frames root to leaf.
    pub fn root_to_leaf(&self) -> Vec<String> {
        self.frames.iter().rev().cloned().collect()
    }
}

/// The samples of `samples` taken in process `pid`.
pub fn perf_samples_for_pid(samples: &[PerfSample], pid: u32) -> Vec<PerfSample> {
    samples.iter().filter(|s| s.pid == pid).cloned().collect()
}

/// The share of perf samples for which `predicate` holds.
pub fn perf_share(samples: &[PerfSample], predicate: impl Fn(&PerfSample) -> bool) -> Share {
    Share::of(samples, |_| 1, predicate)
}

/// Records the processes `pids` with `perf record -F frequency -g
/// --call-graph dwarf` for `duration` (attached with `-p`, timed by
/// `sleep`), and returns every sample `perf script` reads back.
pub fn perf_record_pids(pids: &[u32], duration: Duration, frequency: u32) -> Vec<PerfSample> {
    assert!(!pids.is_empty(), "perf_record_pids needs at least one pid");
    let dir = scratch_dir();
    let data = dir.path().join("perf.data");
    let pid_list = pids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let mut args = perf_record_args(frequency, &data);
    args.extend([
        "-p".into(),
        pid_list.into(),
        "--".into(),
        "sleep".into(),
        format!("{:.3}", duration.as_secs_f64()).into(),
    ]);
    run_perf(&args, duration + Duration::from_secs(60));
    perf_script(&data)
}

/// `perf record` arguments to sample at `frequency` Hz with DWARF call
/// graphs into `data`, quietly; the target (`-p`, or `--` and a command)
/// goes after them.
fn perf_record_args(frequency: u32, data: &Path) -> Vec<OsString> {
    vec![
        "record".into(),
        "-q".into(),
        "-F".into(),
        frequency.to_string().into(),
        "-g".into(),
        "--call-graph".into(),
        "dwarf".into(),
        "-o".into(),
        data.into(),
    ]
}

/// Runs perf with `args`, killing it after `timeout`, and panics with its
/// output unless it succeeded.
fn run_perf(args: &[OsString], timeout: Duration) -> String {
    let perf = perf();
    let dir = scratch_dir();
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let create = |path: &Path| {
        std::fs::File::create(path).unwrap_or_else(|err| panic!("failed to create `{}`: {err}", path.display()))
    };
    let mut child = Command::new(&perf)
        .args(args)
        .stdin(Stdio::null())
        .stdout(create(&stdout_path))
        .stderr(create(&stderr_path))
        .spawn()
        .unwrap_or_else(|err| panic!("failed to start `{}`: {err}", perf.display()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("perf {args:?} did not finish within {timeout:?}; killed it");
            }
            Err(err) => panic!("failed to wait for perf: {err}"),
        }
    };
    let stdout = std::fs::read(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read(&stderr_path).unwrap_or_default();
    assert!(
        status.success(),
        "perf {args:?} failed ({status}); perf must run as root (or with kernel.perf_event_paranoid <= 1):\n{}",
        String::from_utf8_lossy(&stderr)
    );
    String::from_utf8_lossy(&stdout).into_owned()
}

/// Reads a perf.data file back with `perf script` and parses its samples.
///
/// `--no-inline` keeps perf from calling addr2line for every address (slow
/// on big binaries); the symbol of an address is enough here.
pub fn perf_script(data: &Path) -> Vec<PerfSample> {
    let args: Vec<OsString> = vec![
        "script".into(),
        "-i".into(),
        data.into(),
        "-F".into(),
        "comm,pid,tid,ip,sym,dso".into(),
        "--no-inline".into(),
    ];
    let text = run_perf(&args, Duration::from_secs(120));
    parse_perf_script(&text)
}

/// Parses `perf script -F comm,pid,tid,ip,sym,dso` output: one header line
/// `COMM PID/TID` per sample (the comm may contain spaces), then one
/// indented `ADDRESS SYMBOL (DSO)` line per frame, leaf first, then a blank
/// line.
///
/// Symbol names are normalised: a `+0x…` offset (from `symoff`) and a
/// symbol version (`__libc_start_main@@GLIBC_2.34`) are dropped. An
/// unnamed frame stays `[unknown]`.
pub fn parse_perf_script(text: &str) -> Vec<PerfSample> {
    let mut samples = Vec::new();
    let mut current: Option<PerfSample> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            samples.extend(current.take());
            continue;
        }
        if !line.starts_with([' ', '\t']) {
            samples.extend(current.take());
            current = Some(parse_perf_header(line));
            continue;
        }
        let sample = current
            .as_mut()
            .unwrap_or_else(|| panic!("perf script frame line before any sample header: {line:?}"));
        sample.frames.push(parse_perf_frame(line));
    }
    samples.extend(current);
    samples
}

fn parse_perf_header(line: &str) -> PerfSample {
    let trimmed = line.trim_end().trim_end_matches(':');
    let (comm, ids) = trimmed
        .rsplit_once(char::is_whitespace)
        .unwrap_or_else(|| panic!("perf script sample header is not `COMM PID/TID`: {line:?}"));
    let (pid, tid) = ids
        .split_once('/')
        .and_then(|(pid, tid)| Some((pid.parse().ok()?, tid.parse().ok()?)))
        .unwrap_or_else(|| panic!("perf script sample header is not `COMM PID/TID`: {line:?}"));
    PerfSample {
        comm: comm.trim().to_owned(),
        pid,
        tid,
        frames: Vec::new(),
    }
}

fn parse_perf_frame(line: &str) -> String {
    let trimmed = line.trim();
    // The address, then the symbol, then the DSO in parentheses.
    let rest = trimmed
        .split_once(char::is_whitespace)
        .map(|(_, rest)| rest.trim())
        .unwrap_or("");
    let symbol = match rest.rfind(" (") {
        Some(at) if rest.ends_with(')') => &rest[..at],
        _ => rest,
    };
    normalize_perf_symbol(symbol.trim())
}

fn normalize_perf_symbol(symbol: &str) -> String {
    if symbol.is_empty() {
        return "[unknown]".to_owned();
    }
    let mut name = symbol;
    if let Some((base, offset)) = name.rsplit_once("+0x") {
        if !base.is_empty() && offset.chars().all(|c| c.is_ascii_hexdigit()) {
            name = base;
        }
    }
    if !name.starts_with('[') {
        if let Some(at) = name.find('@') {
            if at > 0 {
                name = &name[..at];
            }
        }
    }
    name.to_owned()
}
