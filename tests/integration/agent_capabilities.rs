//! The Kubernetes DaemonSet (`deploy/kubernetes/base/daemonset.yaml`) runs
//! the agent as uid 0 with every capability dropped but a few. These tests
//! show that those few are enough and that each one is needed.
//!
//! The agent runs confined the way the pod confines it: only the
//! DaemonSet's capabilities in its bounding, permitted and effective sets
//! (set with `setpriv`), no_new_privs, a read-only root and `/sys`, and no
//! `/sys/kernel/btf` (the sampler uses no CO-RE, so it needs no BTF). It
//! profiles four processes at once, each of which only one capability
//! makes readable:
//!
//! - a root process holding every capability: reading its `/proc/PID/maps`
//!   needs CAP_SYS_PTRACE, because the agent's own capabilities are not a
//!   superset of its target's (the same holds for any container's process,
//!   and for every process of another uid);
//! - a process of uid 65534 whose binary only its owner may read: opening
//!   that binary for symbols needs CAP_DAC_READ_SEARCH;
//! - a process whose binary was deleted after it started: that binary is
//!   only reachable through `/proc/PID/map_files/`, which needs
//!   CAP_CHECKPOINT_RESTORE;
//! - a process spending its time in the kernel: `/proc/kallsyms` shows
//!   kernel addresses only to CAP_SYSLOG once `kernel.perf_event_paranoid`
//!   is above 1 (the default of most distributions) or
//!   `kernel.kptr_restrict` is 1.
//!
//! With all capabilities every frame is named; without one of them, exactly
//! what it unlocks goes unnamed. Without CAP_BPF or CAP_PERFMON the agent
//! stops at start-up and names the capability. CAP_SYS_RESOURCE is not in
//! the set: since 5.11 BPF memory is charged to the cgroup instead of the
//! memlock limit, and taskprof needs 5.12 or newer anyway.

use crate::common::ChildGuard;
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::agent_run::{AgentCommand, TEST_NODE};
use crate::common::receivers::{Api, Receiver};
use crate::common::{path_arg, scratch_dir, Fixture, FixtureProgram, ProfileView, Stack};
use serde_yaml::Value;

/// The DaemonSet, whose `capabilities.add` these tests must match.
const DAEMONSET: &str = "deploy/kubernetes/base/daemonset.yaml";

/// The agent settings of the default (Pyroscope) deployment.
const CONFIGMAP: &str = "deploy/kubernetes/base/configmap.yaml";

/// The agent settings the Parca variant puts in their place.
const PARCA_CONFIGMAP: &str = "deploy/kubernetes/parca/configmap-parca.yaml";

/// The agent settings the OTLP variant puts in their place.
pub(crate) const OTLP_CONFIGMAP: &str = "deploy/kubernetes/otlp/configmap-otlp.yaml";

/// The unprivileged uid the private workload runs as (`nobody`).
const OTHER_UID: u32 = 65534;

/// How long the agent may take to write two windows for every workload.
const PROFILES_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the agent may take to exit after SIGTERM: its 2 s grace and
/// some slack.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the workloads burn CPU; far longer than the test, which kills
/// them when it is done.
const WORKLOAD_SECONDS: f64 = 120.0;

// ---------------------------------------------------------------------------
// Capabilities
// ---------------------------------------------------------------------------

/// A capability the DaemonSet grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Capability {
    Bpf,
    Perfmon,
    SysPtrace,
    DacReadSearch,
    CheckpointRestore,
    Syslog,
}

impl Capability {
    /// The DaemonSet's set, in its order.
    const DAEMONSET: [Capability; 6] = [
        Capability::Bpf,
        Capability::Perfmon,
        Capability::SysPtrace,
        Capability::DacReadSearch,
        Capability::CheckpointRestore,
        Capability::Syslog,
    ];

    /// The name in a pod spec's `capabilities.add`; `setpriv` takes it in
    /// lower case, the kernel's documentation with `CAP_` before it.
    fn name(self) -> &'static str {
        match self {
            Capability::Bpf => "BPF",
            Capability::Perfmon => "PERFMON",
            Capability::SysPtrace => "SYS_PTRACE",
            Capability::DacReadSearch => "DAC_READ_SEARCH",
            Capability::CheckpointRestore => "CHECKPOINT_RESTORE",
            Capability::Syslog => "SYSLOG",
        }
    }

    /// The bit in the `Cap*` masks of `/proc/PID/status` (linux/capability.h).
    fn bit(self) -> u32 {
        match self {
            Capability::DacReadSearch => 2,
            Capability::SysPtrace => 19,
            Capability::Syslog => 34,
            Capability::Perfmon => 38,
            Capability::Bpf => 39,
            Capability::CheckpointRestore => 40,
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CAP_{}", self.name())
    }
}

/// The DaemonSet's set without `dropped`.
fn daemonset_without(dropped: Capability) -> Vec<Capability> {
    Capability::DAEMONSET
        .into_iter()
        .filter(|cap| *cap != dropped)
        .collect()
}

fn mask(caps: &[Capability]) -> u64 {
    caps.iter().fold(0, |mask, cap| mask | 1u64 << cap.bit())
}

// ---------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------

/// A process started by a test, killed and reaped on drop.
struct Process {
    child: ChildGuard,
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the process runs the executable named `comm`, panicking
    /// if it exits first (e.g. because the exec was refused).
    fn wait_for_comm(&mut self, comm: &str) {
        let path = format!("/proc/{}/comm", self.pid());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if fs::read_to_string(&path).is_ok_and(|c| c.trim_end() == comm) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{comm} exited ({status}) before it started");
            }
            assert!(Instant::now() < deadline, "{comm} did not start within 10 s");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The four processes every confined agent profiles; see the module doc.
struct Workloads {
    /// The Chain fixture as root, with every capability.
    root: Fixture,
    /// A copy of Chain owned by uid 65534, mode 0700, run as 65534.
    private: Process,
    /// A copy of Chain, run as root and deleted once it started.
    deleted: Process,
    /// The Syscalls fixture, whose samples are mostly kernel frames.
    kernel: Fixture,
    /// Holds the copies' directory.
    _dir: tempfile::TempDir,
}

impl Workloads {
    fn start() -> Workloads {
        let chain = FixtureProgram::Chain.executable();
        // In /tmp rather than the target directory, whose parents uid 65534
        // may not be allowed to search on every machine.
        let dir = tempfile::Builder::new()
            .prefix("taskprof-capabilities-")
            .tempdir()
            .unwrap_or_else(|err| panic!("failed to create a directory in /tmp: {err}"));
        set_mode(dir.path(), 0o755);

        let private_path = dir.path().join("private_chain");
        copy(&chain, &private_path);
        std::os::unix::fs::chown(&private_path, Some(OTHER_UID), Some(OTHER_UID))
            .unwrap_or_else(|err| panic!("failed to chown `{}`: {err}", private_path.display()));
        set_mode(&private_path, 0o700);
        let mut private = start_process(
            Command::new(setpriv())
                .arg(format!("--reuid={OTHER_UID}"))
                .arg(format!("--regid={OTHER_UID}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(&private_path)
                .arg(WORKLOAD_SECONDS.to_string()),
        );
        private.wait_for_comm("private_chain");

        let deleted_path = dir.path().join("deleted_chain");
        copy(&chain, &deleted_path);
        // std returns from spawn once the exec succeeded, so the process
        // has the file mapped before it goes.
        let deleted = start_process(Command::new(&deleted_path).arg(WORKLOAD_SECONDS.to_string()));
        fs::remove_file(&deleted_path)
            .unwrap_or_else(|err| panic!("failed to delete `{}`: {err}", deleted_path.display()));

        Workloads {
            root: Fixture::spawn(FixtureProgram::Chain, WORKLOAD_SECONDS),
            private,
            deleted,
            kernel: Fixture::spawn(FixtureProgram::Syscalls, WORKLOAD_SECONDS),
            _dir: dir,
        }
    }

    fn pids(&self) -> [u32; 4] {
        [
            self.root.pid(),
            self.private.pid(),
            self.deleted.pid(),
            self.kernel.pid(),
        ]
    }
}

fn start_process(command: &mut Command) -> Process {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|err| panic!("failed to start {command:?}: {err}"));
    Process {
        child: ChildGuard(child),
    }
}

fn copy(from: &Path, to: &Path) {
    fs::copy(from, to).unwrap_or_else(|err| panic!("failed to copy `{}` to `{}`: {err}", from.display(), to.display()));
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|err| panic!("failed to chmod `{}`: {err}", path.display()));
}

/// util-linux's `setpriv`, which sets the capability sets of the agent.
fn setpriv() -> PathBuf {
    ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("setpriv not found; it confines the agent. install util-linux (apt-get install util-linux)")
        })
}

// ---------------------------------------------------------------------------
// The confined agent
// ---------------------------------------------------------------------------

/// Sets up the pod's filesystem view in a private mount namespace, then
/// drops to the capabilities in `$2` and execs the agent. `$1` stays
/// writable: a bind mount of itself is a mount of its own, which the
/// read-only remount of `/` leaves alone.
const CONFINE: &str = r#"
set -e
writable=$1 bounding=$2
shift 2
mount --bind "$writable" "$writable"
if [ -d /sys/kernel/btf ]; then mount -t tmpfs -o ro,mode=0555 none /sys/kernel/btf; fi
mount -o remount,bind,ro /
mount -o remount,bind,ro /sys
exec setpriv --inh-caps=-all --ambient-caps=-all --bounding-set="$bounding" --no-new-privs -- "$@"
"#;

/// A `taskprof agent` run confined as in the pod, uploading with the file
/// protocol into its scratch directory. Killed on drop.
struct ConfinedAgent {
    process: Process,
    caps: Vec<Capability>,
    dir: tempfile::TempDir,
    started: Instant,
}

impl ConfinedAgent {
    /// Starts the agent with only `caps`, sampling `pids` in 1 s windows.
    fn start(caps: &[Capability], pids: &[u32]) -> ConfinedAgent {
        let dir = scratch_dir();
        let out = dir.path().join("out");
        let spool = dir.path().join("spool");
        let stderr = fs::File::create(dir.path().join("stderr"))
            .unwrap_or_else(|err| panic!("failed to create the agent's stderr file: {err}"));
        let bounding: String = std::iter::once("-all".to_string())
            .chain(caps.iter().map(|cap| format!("+{}", cap.name().to_lowercase())))
            .collect::<Vec<_>>()
            .join(",");

        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "--", "sh", "-c", CONFINE, "sh"])
            .arg(dir.path())
            .arg(&bounding)
            .arg(env!("CARGO_BIN_EXE_taskprof"))
            .args(["agent", "--upload-protocol", "file", "--upload-url", path_arg(&out)])
            // The checks below read each profile's pid from its labels.
            .arg("--series-per-process")
            .args(["--spool-dir", path_arg(&spool)])
            .args(["--window", "1s", "--frequency", "99", "--shutdown-grace", "2s"])
            .args(["--metrics-address", "127.0.0.1:0", "--log-format", "json"])
            .args(["--node-name", TEST_NODE]);
        for pid in pids {
            command.arg("--pid").arg(pid.to_string());
        }
        for (name, _) in std::env::vars() {
            if name.starts_with("TASKPROF_") || name == "NODE_NAME" || name == "RUST_LOG" {
                command.env_remove(name);
            }
        }
        let child = command
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|err| panic!("failed to start unshare (util-linux): {err}"));
        ConfinedAgent {
            process: Process {
                child: ChildGuard(child),
            },
            caps: caps.to_vec(),
            dir,
            started: Instant::now(),
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    fn out_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// Once the agent has replaced unshare, sh and setpriv, checks that it
    /// holds exactly its capabilities, in every set, under no_new_privs.
    /// Panics with its log if it exits first.
    fn assert_confined(&mut self) {
        let status_path = format!("/proc/{}/status", self.process.pid());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            let status = fs::read_to_string(&status_path).unwrap_or_default();
            if status.lines().any(|l| l == "Name:\ttaskprof") {
                break status;
            }
            if let Ok(Some(exit)) = self.process.child.try_wait() {
                panic!("the confined agent exited ({exit}) before it ran:\n{}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "the confined agent did not start:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(":\t"))
                .unwrap_or_else(|| panic!("no {name} in {status_path}"))
                .to_string()
        };
        let expected = format!("{:016x}", mask(&self.caps));
        for set in ["CapPrm", "CapEff", "CapBnd"] {
            assert_eq!(field(set), expected, "{set} of the agent with {:?}", self.caps);
        }
        for set in ["CapInh", "CapAmb"] {
            assert_eq!(
                field(set),
                "0000000000000000",
                "{set} of the agent with {:?}",
                self.caps
            );
        }
        assert_eq!(field("NoNewPrivs"), "1", "the agent may gain privileges");
    }

    /// Waits until the agent has written two profiles of each of `pids`,
    /// so that at least one whole window of each is in.
    fn wait_for_profiles(&mut self, pids: &[u32]) {
        let deadline = Instant::now() + PROFILES_TIMEOUT;
        loop {
            let counts = profile_counts(&self.out_dir());
            if pids.iter().all(|pid| counts.get(pid).copied().unwrap_or(0) >= 2) {
                return;
            }
            if let Ok(Some(exit)) = self.process.child.try_wait() {
                panic!("the agent with {:?} exited ({exit}):\n{}", self.caps, self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "the agent with {:?} wrote no two profiles of each of {pids:?} within {PROFILES_TIMEOUT:?} \
                 (profiles by pid: {counts:?}):\n{}",
                self.caps,
                self.stderr()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the agent to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.process.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent with {:?} did not exit within {timeout:?}:\n{}",
                self.caps,
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the agent with SIGTERM and checks that it exited cleanly.
    fn stop(&mut self) {
        let pid = libc::pid_t::try_from(self.process.pid()).expect("pid fits in pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our
        // own child, not reaped yet, so it cannot name another process.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "failed to signal the agent: {}", std::io::Error::last_os_error());
        let status = self.wait_exit(EXIT_TIMEOUT);
        assert!(
            status.success(),
            "the agent with {:?} failed ({status}):\n{}",
            self.caps,
            self.stderr()
        );
    }
}

/// The number of profiles in `out` by the pid they are labelled with.
fn profile_counts(out: &Path) -> BTreeMap<u32, usize> {
    let mut counts = BTreeMap::new();
    for (labels, _) in written_profiles(out) {
        *counts.entry(labels).or_insert(0) += 1;
    }
    counts
}

/// Every profile in `out` that the file protocol finished writing: its
/// pid label, from the `.labels.json` beside it, and its path.
fn written_profiles(out: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = fs::read_dir(out) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".labels.json")?;
            let profile = out.join(format!("{stem}.pb.gz"));
            let labels: serde_json::Value = serde_json::from_slice(&fs::read(entry.path()).ok()?).ok()?;
            let pid = labels["labels"]["pid"].as_str()?.parse().ok()?;
            profile.is_file().then_some((pid, profile))
        })
        .collect()
}

/// Every stack the agent's profiles hold for `pid`.
fn stacks_of(out: &Path, pid: u32) -> Vec<Stack> {
    written_profiles(out)
        .into_iter()
        .filter(|(labelled, _)| *labelled == pid)
        .flat_map(|(_, path)| {
            let bytes = fs::read(&path).unwrap_or_else(|err| panic!("failed to read `{}`: {err}", path.display()));
            let profile = taskprof::pprof::decode_gzip(&bytes)
                .unwrap_or_else(|err| panic!("failed to decode `{}`: {err}", path.display()));
            ProfileView::new(&profile).stacks_where(|_| true)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// What a run names
// ---------------------------------------------------------------------------

/// Which of the workloads' frames a run could name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Named {
    /// `hot` in the root process.
    root: bool,
    /// `hot` in the process of uid 65534 with the private binary.
    private: bool,
    /// `hot` in the process whose binary is deleted.
    deleted: bool,
    /// Kernel frames of the process reading /dev/zero.
    kernel: bool,
}

impl Named {
    /// What the kernel lets an agent with `caps` name on this host.
    fn expected(caps: &[Capability]) -> Named {
        let has = |cap| caps.contains(&cap);
        let maps = has(Capability::SysPtrace);
        Named {
            root: maps,
            private: maps && has(Capability::DacReadSearch),
            deleted: maps && has(Capability::CheckpointRestore),
            kernel: kallsyms_shows_addresses(has(Capability::Syslog)),
        }
    }

    /// What a finished run named.
    fn observed(out: &Path, workloads: &Workloads) -> Named {
        let chain_named = |pid: u32| {
            let stacks = stacks_of(out, pid);
            assert!(!stacks.is_empty(), "no samples of pid {pid} in `{}`", out.display());
            stacks.iter().any(|s| s.contains("hot"))
        };
        let kernel_stacks = stacks_of(out, workloads.kernel.pid());
        assert!(
            kernel_stacks.iter().any(|s| s.frames.iter().any(|f| f.is_kernel())),
            "no kernel frames in the samples of the process reading /dev/zero:\n{}",
            crate::common::describe_stacks(&kernel_stacks)
        );
        Named {
            root: chain_named(workloads.root.pid()),
            private: chain_named(workloads.private.pid()),
            deleted: chain_named(workloads.deleted.pid()),
            kernel: kernel_stacks
                .iter()
                .any(|s| s.frames.iter().any(|f| f.is_kernel() && is_symbol(&f.function))),
        }
    }
}

/// Whether a frame's function is a name rather than an address.
fn is_symbol(function: &str) -> bool {
    function
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
}

/// Whether `/proc/kallsyms` shows real addresses to its reader, as
/// kernel/ksyms_common.c decides: with kptr_restrict 0 to everyone when
/// perf_event_paranoid is at most 1, else (and with kptr_restrict 1) only
/// to CAP_SYSLOG; with kptr_restrict 2 to nobody.
fn kallsyms_shows_addresses(syslog: bool) -> bool {
    let sysctl = |name: &str| -> i64 {
        let path = format!("/proc/sys/kernel/{name}");
        fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("failed to read `{path}`: {err}"))
            .trim()
            .parse()
            .unwrap_or_else(|err| panic!("`{path}` is not a number: {err}"))
    };
    match sysctl("kptr_restrict") {
        0 => sysctl("perf_event_paranoid") <= 1 || syslog,
        1 => syslog,
        _ => false,
    }
}

/// Runs one confined agent over the workloads and reports what it named.
fn profile_with(caps: &[Capability], workloads: &Workloads) -> Named {
    let pids = workloads.pids();
    let mut agent = ConfinedAgent::start(caps, &pids);
    agent.assert_confined();
    agent.wait_for_profiles(&pids);
    agent.stop();
    Named::observed(&agent.out_dir(), workloads)
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn the_daemonset_capabilities_name_every_frame_and_each_one_is_needed() {
    let workloads = Workloads::start();

    let all = profile_with(&Capability::DAEMONSET, &workloads);
    assert_eq!(
        all,
        Named::expected(&Capability::DAEMONSET),
        "what the agent named with the DaemonSet's capabilities"
    );
    assert!(
        all.root && all.private && all.deleted,
        "the DaemonSet's capabilities leave user frames unnamed: {all:?}"
    );

    for dropped in [
        Capability::SysPtrace,
        Capability::DacReadSearch,
        Capability::CheckpointRestore,
        Capability::Syslog,
    ] {
        let caps = daemonset_without(dropped);
        let named = profile_with(&caps, &workloads);
        assert_eq!(named, Named::expected(&caps), "what the agent named without {dropped}");
        // With kptr_restrict 0 and perf_event_paranoid <= 1 kallsyms is open
        // to everyone, and with kptr_restrict 2 to no one: CAP_SYSLOG only
        // matters on hosts in between, which the usual defaults are.
        let syslog_matters = kallsyms_shows_addresses(true) && !kallsyms_shows_addresses(false);
        if dropped != Capability::Syslog || syslog_matters {
            assert_ne!(named, all, "dropping {dropped} changed nothing the agent names");
        } else {
            eprintln!("note: kallsyms shows the same addresses with and without CAP_SYSLOG on this host");
        }
    }
}

#[test]
fn without_cap_bpf_or_cap_perfmon_the_agent_stops_at_start_naming_it() {
    let fixture = Fixture::spawn(FixtureProgram::Chain, 30.0);
    for dropped in [Capability::Bpf, Capability::Perfmon] {
        let mut agent = ConfinedAgent::start(&daemonset_without(dropped), &[fixture.pid()]);
        let status = agent.wait_exit(Duration::from_secs(10));
        let stderr = agent.stderr();
        assert!(
            !status.success(),
            "the agent without {dropped} exited {status}:\n{stderr}"
        );
        assert!(
            agent.started.elapsed() < Duration::from_secs(5),
            "the agent without {dropped} took {:?} to fail",
            agent.started.elapsed()
        );
        assert!(
            stderr.contains(&dropped.to_string()),
            "the error without {dropped} does not name it:\n{stderr}"
        );
        assert!(
            written_profiles(&agent.out_dir()).is_empty(),
            "the agent without {dropped} wrote profiles"
        );
    }
}

/// The pod spec of the DaemonSet and its one container.
fn daemonset_pod() -> (Value, Value) {
    let pod = read_yaml(DAEMONSET)["spec"]["template"]["spec"].clone();
    let containers = pod["containers"].as_sequence().expect("the DaemonSet has containers");
    assert_eq!(containers.len(), 1, "the DaemonSet should run one container");
    let container = containers[0].clone();
    (pod, container)
}

#[test]
fn the_daemonset_grants_exactly_the_tested_capabilities_and_nothing_else() {
    let (pod, container) = daemonset_pod();
    let security = &container["securityContext"];

    let names = |value: &Value| -> Vec<String> {
        let mut names: Vec<String> = value
            .as_sequence()
            .unwrap_or_else(|| panic!("not a list: {value:?}"))
            .iter()
            .map(|v| v.as_str().expect("a capability name").to_string())
            .collect();
        names.sort();
        names
    };
    let mut tested: Vec<String> = Capability::DAEMONSET.iter().map(|c| c.name().to_string()).collect();
    tested.sort();
    assert_eq!(
        names(&security["capabilities"]["add"]),
        tested,
        "capabilities.add of {DAEMONSET}"
    );
    assert_eq!(
        names(&security["capabilities"]["drop"]),
        ["ALL"],
        "capabilities.drop of {DAEMONSET}"
    );
    for (field, expected) in [
        ("privileged", false),
        ("allowPrivilegeEscalation", false),
        ("readOnlyRootFilesystem", true),
    ] {
        assert_eq!(
            security[field].as_bool(),
            Some(expected),
            "securityContext.{field} of {DAEMONSET}"
        );
    }
    assert_eq!(pod["hostPID"].as_bool(), Some(true), "hostPID of {DAEMONSET}");

    // Every flag the container passes is one the agent knows.
    let help = Command::new(env!("CARGO_BIN_EXE_taskprof"))
        .args(["agent", "--help"])
        .output()
        .unwrap_or_else(|err| panic!("failed to run taskprof agent --help: {err}"));
    let help = String::from_utf8_lossy(&help.stdout);
    let args = container["args"].as_sequence().expect("the container has args");
    assert_eq!(
        args.first().and_then(Value::as_str),
        Some("agent"),
        "args of {DAEMONSET}"
    );
    for arg in args.iter().filter_map(Value::as_str).filter(|a| a.starts_with("--")) {
        let flag = arg.split('=').next().unwrap_or(arg);
        assert!(
            help.lines()
                .any(|l| l.split_whitespace().any(|word| word.trim_end_matches(',') == flag)),
            "{DAEMONSET} passes {flag}, which `taskprof agent --help` does not list"
        );
    }
}

/// `agent.yaml` of a ConfigMap manifest.
pub(crate) fn agent_settings(manifest: &str) -> String {
    read_yaml(manifest)["data"]["agent.yaml"]
        .as_str()
        .unwrap_or_else(|| panic!("{manifest} has no data.agent.yaml"))
        .to_string()
}

fn read_yaml(relative: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let text = fs::read_to_string(&path).unwrap_or_else(|err| panic!("failed to read `{}`: {err}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|err| panic!("`{}` is not YAML: {err}", path.display()))
}

/// Starts an agent on `fixture` with `manifest`'s `agent.yaml`, pointed at
/// `url` and a spool and metrics port of its own (the manifest's are the
/// cluster's), with 1 s windows to keep tests quick; returns once it samples.
pub(crate) fn start_with_shipped_settings(
    manifest: &str,
    url: &str,
    fixture: &Fixture,
    dir: &Path,
) -> crate::common::agent_run::RunningAgent {
    let config = dir.join("agent.yaml");
    fs::write(&config, agent_settings(manifest)).expect("write agent.yaml");
    let mut agent = AgentCommand::bare()
        .args(["--config", path_arg(&config)])
        .args(["--upload-url", url])
        .args(["--spool-dir", path_arg(&dir.join("spool"))])
        .args(["--metrics-address", "127.0.0.1:0", "--window", "1s"])
        .pid(fixture.pid())
        .spawn();
    agent.wait_until_sampling();
    agent
}

/// Runs the agent with `manifest`'s settings, pointed at a local receiver
/// and spool but otherwise as configured, and checks what arrives.
fn assert_settings_deliver(manifest: &str, api: Api) {
    let dir = scratch_dir();
    let fixture = Fixture::spawn(FixtureProgram::Chain, 30.0);
    let receiver = Receiver::accepting();
    let agent = start_with_shipped_settings(manifest, &receiver.url(), &fixture, dir.path());
    let ingests = receiver.wait_for_ingests("a profile", Duration::from_secs(30), |i| !i.is_empty());
    agent.terminate(EXIT_TIMEOUT).assert_success();
    receiver.assert_all_valid();
    assert_eq!(ingests[0].api, api, "the protocol {manifest} configures");
    let settings: Value = serde_yaml::from_str(&agent_settings(manifest)).expect("agent.yaml is YAML");
    let labels = settings["labels"].as_mapping().expect("agent.yaml sets labels");
    for (name, value) in labels {
        let name = name.as_str().expect("a label name");
        let value = value.as_str().expect("a label value");
        assert_eq!(
            ingests[0].label(name),
            value,
            "label `{name}` that {manifest} configures"
        );
    }
}

#[test]
fn the_shipped_agent_settings_start_the_agent_and_reach_their_backend() {
    assert_settings_deliver(CONFIGMAP, Api::Pyroscope);
    assert_settings_deliver(PARCA_CONFIGMAP, Api::Parca);

    // The Parca and OTLP variants replace agent.yaml whole; apart from
    // where and how they upload, they must say what the default says.
    let without_upload = |manifest: &str| {
        let mut settings: Value = serde_yaml::from_str(&agent_settings(manifest)).expect("agent.yaml is YAML");
        let map = settings.as_mapping_mut().expect("agent.yaml is a mapping");
        for key in ["upload_url", "upload_protocol"] {
            let url = map.remove(key).unwrap_or_else(|| panic!("{manifest} sets no {key}"));
            assert!(url.as_str().is_some_and(|u| !u.is_empty()), "{key} of {manifest}");
        }
        map.remove("upload_compression");
        settings
    };
    for variant in [PARCA_CONFIGMAP, OTLP_CONFIGMAP] {
        assert_eq!(
            without_upload(variant),
            without_upload(CONFIGMAP),
            "{variant} has drifted from {CONFIGMAP}"
        );
    }
}
