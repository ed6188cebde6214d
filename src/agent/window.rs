//! Turning one window of samples into one profile per series, and the
//! process bookkeeping that keeps a long-running agent bounded: processes
//! that exited are forgotten once their last samples are out, and the
//! files and caches only they used are released.
//!
//! A series is what a backend indexes: a label set. Backends keep every
//! label set they ever saw, so series labels must be bounded: service,
//! node, pod and container, the operator's labels, and outside Kubernetes
//! the executable's name. A window's processes that share those labels are
//! merged into one profile, and each sample says which process it came
//! from (`pid`, `process_name`, `thread_name` sample labels). With
//! `--series-per-process` every process keeps its own profile and a `pid`
//! series label instead, at the cost of one new series per process.
//!
//! For OTLP the window is one request instead: one `ResourceProfiles` per
//! process incarnation (OTel's resource is the entity that produced the
//! telemetry, and its semantic conventions put `process.pid` and the
//! executable on it), all pointing into one shared dictionary. The series
//! labels still decide `service.name` and the Kubernetes attributes, so a
//! service is named alike whichever protocol carries it; grouping by
//! service is left to the receiver.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use rustc_hash::FxHashMap as HashMap;

use crate::agent::containers::{ContainerLabeler, Verdict};
use crate::bpf::{Truncation, Window};
use crate::otlp::{build_window, AttributeValue, ResourceInput};
use crate::pprof::{build_profile, encode_gzip, ProfileMeta, SampleLabels};
use crate::process::{path_in_root, process_start_time, ProcessInfo, ProcessKey};
use crate::session::{ProcessFilter, Session};
use crate::symbolize::samples::Sample;
use crate::symbolize::Symbolizer;
use crate::upload::{Batch, SeriesProfile};

/// Labels every series of this agent carries, and what makes a series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesLabels {
    /// `service_name` for every process; `None` uses the pod's, else the
    /// process name.
    pub service_name: Option<String>,
    /// The node (host) name.
    pub node: String,
    /// Extra `k=v` labels.
    pub extra: Vec<(String, String)>,
    /// One series per process (labelled with its `pid`) rather than one
    /// per bounded label set.
    pub per_process: bool,
}

/// The name kernel threads (and the idle task) are grouped under: one
/// series for all of them, not one per `kworker/…`.
const KERNEL_SERIES: &str = "kernel";

/// `PF_KTHREAD` in the flags field of `/proc/PID/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// What tells a window's profiles apart: the process, when each process is
/// its own series, and the series labels.
type SeriesKey = (Option<ProcessKey>, Vec<(String, String)>);

/// Windows after which a process with no samples is checked for liveness,
/// and between two checks of one that stays idle.
const IDLE_WINDOWS_BEFORE_SWEEP: u64 = 6;

/// Whether a process last sampled in window `last_seen` (`None`: never
/// recorded) is checked for liveness in window `current`: once it has been
/// idle for [`IDLE_WINDOWS_BEFORE_SWEEP`] windows, then every
/// [`IDLE_WINDOWS_BEFORE_SWEEP`] windows, not every window. A host keeps
/// many idle processes (daemons sampled once); reading each one's
/// `/proc/PID/stat` every window was a steady cost, and each process's
/// checks fall in different windows, as its idleness began.
fn liveness_check_due(last_seen: Option<u64>, current: u64) -> bool {
    last_seen.is_none_or(|seen| {
        let idle_for = current.saturating_sub(seen);
        idle_for >= IDLE_WINDOWS_BEFORE_SWEEP && idle_for % IDLE_WINDOWS_BEFORE_SWEEP == 0
    })
}

/// State carried from window to window.
pub struct WindowProcessor {
    symbolizer: Symbolizer,
    frequency_hz: u64,
    labels: SeriesLabels,
    /// Processes whose incarnation ended, with the window it ended in.
    gone: HashMap<ProcessKey, u64>,
    /// The last window each process had samples in.
    last_seen: HashMap<ProcessKey, u64>,
    windows: u64,
    last_sequence: u64,
    containers: Option<ContainerLabeler>,
    /// Whether each process is a kernel thread, decided once.
    kernel_threads: HashMap<ProcessKey, bool>,
    /// Build OTLP windows rather than one pprof per series.
    otlp: bool,
    /// Each process's executable path, read when it is first seen (OTLP
    /// only: `process.executable.path`); `None` when it could not be read.
    executables: HashMap<ProcessKey, Option<String>>,
}

/// What a window produced besides its batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowReport {
    /// Samples in the emitted profiles.
    pub samples: u64,
    /// Samples of processes the filters left out.
    pub filtered: u64,
    /// Processes whose samples the profiles hold.
    pub processes: usize,
    /// Processes forgotten after this window.
    pub forgotten: usize,
}

impl WindowProcessor {
    /// A processor for windows sampled at `frequency_hz`; `debug_info`
    /// turns on DWARF for files, lines and inlined frames.
    pub fn new(frequency_hz: u64, labels: SeriesLabels, debug_info: bool) -> WindowProcessor {
        WindowProcessor {
            symbolizer: Symbolizer::with_debug_info(debug_info),
            frequency_hz,
            labels,
            gone: HashMap::default(),
            last_seen: HashMap::default(),
            windows: 0,
            last_sequence: 0,
            containers: None,
            kernel_threads: HashMap::default(),
            otlp: false,
            executables: HashMap::default(),
        }
    }

    /// Builds each window as one OTLP request (see the module doc) rather
    /// than one pprof per series.
    pub fn with_otlp(mut self) -> WindowProcessor {
        self.otlp = true;
        self
    }

    /// Adds container and pod labels, and the operator's filters.
    pub fn with_containers(mut self, labeler: ContainerLabeler) -> WindowProcessor {
        self.containers = Some(labeler);
        self
    }

    /// Processes in containers whose pod metadata was missing, so far.
    pub fn missing_metadata(&self) -> u64 {
        self.containers.as_ref().map_or(0, ContainerLabeler::missing_metadata)
    }

    fn verdict(&mut self, key: ProcessKey) -> Verdict {
        match &mut self.containers {
            Some(labeler) => labeler.verdict(key),
            None => Verdict::Keep(Vec::new()),
        }
    }

    /// Addresses cached by the symbolizer.
    pub fn cached_addresses(&self) -> usize {
        self.symbolizer.cached_addresses()
    }

    /// Bounds the symbol caches to `bytes` (`--symbol-cache-memory`).
    pub fn with_symbol_cache_memory(mut self, bytes: u64) -> WindowProcessor {
        self.symbolizer.set_budget(crate::symbolize::CacheBudget::within(bytes));
        self
    }

    /// What the symbol caches hold, and the files kept parsed.
    pub fn symbol_cache(&self) -> (crate::symbolize::SymbolCacheBytes, usize) {
        (self.symbolizer.cache_bytes(), self.symbolizer.parsed_files())
    }

    /// Addresses that could not be symbolized so far.
    pub fn symbolization_failures(&self) -> u64 {
        self.symbolizer.failures()
    }

    /// Perf maps refused or cut short so far, by problem.
    pub fn perf_map_problems(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.symbolizer.perf_map_problems()
    }

    /// Builds the window's batch: one gzipped pprof per process with
    /// samples, labelled for upload. Then forgets what is no longer needed.
    pub fn finish_window(
        &mut self,
        session: &mut Session,
        window: &Window,
        start: SystemTime,
        end: SystemTime,
    ) -> (Batch, WindowReport) {
        self.symbolizer.reload_perf_maps();
        // Filters first: what they drop is never symbolized.
        let mut verdicts: BTreeMap<ProcessKey, Verdict> = BTreeMap::new();
        let mut kept = Vec::with_capacity(window.samples.len());
        let mut filtered = 0;
        for raw in &window.samples {
            let key = ProcessKey::new(raw.tgid, raw.incarnation);
            if let std::collections::btree_map::Entry::Vacant(slot) = verdicts.entry(key) {
                slot.insert(self.verdict(key));
            }
            match verdicts[&key] {
                Verdict::Keep(_) => kept.push(raw.clone()),
                Verdict::Drop => filtered += raw.count,
            }
        }
        let samples = session.symbolize(&kept, &mut self.symbolizer);
        let mut processes: BTreeMap<ProcessKey, Vec<Sample>> = BTreeMap::new();
        for (raw, sample) in kept.iter().zip(samples) {
            let key = ProcessKey::new(raw.tgid, raw.incarnation);
            if raw.user.truncation() == Some(Truncation::NotLoaded) {
                session.load_tables_later(key);
            }
            self.last_seen.insert(key, self.windows);
            processes.entry(key).or_default().push(sample);
        }
        let process_count = processes.len();
        let meta = ProfileMeta {
            frequency_hz: self.frequency_hz,
            start,
            duration: end.duration_since(start).unwrap_or(Duration::ZERO),
            sample_labels: match self.labels.per_process {
                true => SampleLabels::ThreadName,
                false => SampleLabels::Process,
            },
        };
        let (profiles, shared, total) = match self.otlp {
            true => self.otlp_profiles(session, &verdicts, processes, &meta),
            false => {
                let (profiles, total) = self.pprof_profiles(session, &verdicts, processes, &meta);
                (profiles, Vec::new(), total)
            }
        };

        let forgotten = self.forget_finished(session);
        self.symbolizer.end_window();
        self.windows += 1;
        // Strictly increasing, even if two windows end in the same
        // millisecond: the spool keys windows by sequence.
        let sequence = sequence_of(end).max(self.last_sequence + 1);
        self.last_sequence = sequence;
        let batch = Batch {
            sequence,
            start,
            end,
            profiles,
            shared,
        };
        (
            batch,
            WindowReport {
                samples: total,
                filtered,
                processes: process_count,
                forgotten,
            },
        )
    }

    /// The series labels of the process `key`, from its first sample's
    /// process name and its container verdict.
    fn labels_of(
        &mut self,
        session: &Session,
        verdicts: &BTreeMap<ProcessKey, Verdict>,
        key: ProcessKey,
        process_name: &str,
    ) -> Vec<(String, String)> {
        let container_labels = match verdicts.get(&key) {
            Some(Verdict::Keep(labels)) => labels.as_slice(),
            _ => &[],
        };
        let kernel = self.is_kernel_thread(key, session.processes().get(key));
        self.series_labels(key.tgid, process_name, kernel, container_labels)
    }

    /// One gzipped pprof per series, and the samples they hold.
    fn pprof_profiles(
        &mut self,
        session: &Session,
        verdicts: &BTreeMap<ProcessKey, Verdict>,
        processes: BTreeMap<ProcessKey, Vec<Sample>>,
        meta: &ProfileMeta,
    ) -> (Vec<SeriesProfile>, u64) {
        // Series are keyed by their labels, and by the process too when
        // each process is its own series: an exec inside the window makes
        // a second incarnation, which keeps its own profile.
        let mut by_series: BTreeMap<SeriesKey, Vec<Sample>> = BTreeMap::new();
        for (key, samples) in processes {
            let labels = self.labels_of(session, verdicts, key, &samples[0].process_name);
            let process = self.labels.per_process.then_some(key);
            by_series.entry((process, labels)).or_default().extend(samples);
        }
        let mut profiles = Vec::with_capacity(by_series.len());
        let mut total = 0;
        for ((_, labels), samples) in by_series {
            let count: u64 = samples.iter().map(|s| s.count).sum();
            if count == 0 {
                continue;
            }
            let profile = build_profile(&samples, meta);
            let payload = match encode_gzip(&profile) {
                Ok(bytes) => bytes,
                Err(err) => {
                    // Encoding into memory does not fail in practice; if it
                    // ever does, say so loudly with the samples it drops.
                    tracing::error!(series = ?labels, samples = count, error = %err, "failed to encode a profile");
                    continue;
                }
            };
            total += count;
            profiles.push(SeriesProfile {
                labels,
                payload,
                samples: count,
            });
        }
        (profiles, total)
    }

    /// The window as OTLP: one encoded `ResourceProfiles` per process, the
    /// encoded dictionary they share, and the samples they hold.
    fn otlp_profiles(
        &mut self,
        session: &Session,
        verdicts: &BTreeMap<ProcessKey, Verdict>,
        processes: BTreeMap<ProcessKey, Vec<Sample>>,
        meta: &ProfileMeta,
    ) -> (Vec<SeriesProfile>, Vec<u8>, u64) {
        let mut described = Vec::with_capacity(processes.len());
        for (key, samples) in &processes {
            let count: u64 = samples.iter().map(|s| s.count).sum();
            if count == 0 {
                continue;
            }
            let process_name = &samples[0].process_name;
            let mut labels = self.labels_of(session, verdicts, *key, process_name);
            let executable = self.executable(*key);
            let mut attribute_labels = labels.clone();
            // The pod's UID is in its cgroup path; it is no series label
            // (the pod name already tells pods apart), but OTel names it.
            let pod_uid = match (labels.iter().any(|(name, _)| name == "pod"), &mut self.containers) {
                (true, Some(labeler)) => labeler.container(*key).pod_uid.clone(),
                _ => None,
            };
            if let Some(uid) = pod_uid {
                attribute_labels.push(("pod_uid".to_string(), uid));
            }
            let attributes = otel_attributes(&attribute_labels, key.tgid, process_name, executable.as_deref());
            if !labels.iter().any(|(name, _)| name == "pid") {
                // For logs and the file protocol; OTLP sends `process.pid`.
                labels.push(("pid".to_string(), key.tgid.to_string()));
            }
            described.push((labels, attributes, count, samples.as_slice()));
        }
        let inputs: Vec<ResourceInput> = described
            .iter()
            .map(|(_, attributes, _, samples)| ResourceInput {
                attributes: attributes.clone(),
                samples,
            })
            .collect();
        let window = build_window(&inputs, meta);
        let mut total = 0;
        let profiles = described
            .iter()
            .zip(&window.resources)
            .map(|((labels, _, count, _), resource)| {
                total += count;
                SeriesProfile {
                    labels: labels.clone(),
                    payload: resource.encode_to_vec(),
                    samples: *count,
                }
            })
            .collect();
        (profiles, window.dictionary.encode_to_vec(), total)
    }

    /// The executable path of `key`, read once while it lives.
    fn executable(&mut self, key: ProcessKey) -> Option<String> {
        self.executables
            .entry(key)
            .or_insert_with(|| read_executable(Path::new("/proc"), key.tgid))
            .clone()
    }

    /// Series labels: `service_name`, `node`, then `pid` and `comm` with
    /// `--series-per-process`, else `comm` for a process in no container;
    /// then the container and pod labels and the operator's `--label`s.
    /// `service_name` is `--service-name` if set, else the pod's (from a pod
    /// label or `namespace/container`), else the process name. Kernel
    /// threads are named `kernel` in place of the process name, unless each
    /// process is its own series.
    fn series_labels(
        &self,
        pid: u32,
        process_name: &str,
        kernel: bool,
        container: &[(String, String)],
    ) -> Vec<(String, String)> {
        let per_process = self.labels.per_process;
        let executable = match kernel && !per_process {
            true => KERNEL_SERIES,
            false => process_name,
        };
        let pod_service = container
            .iter()
            .find(|(k, _)| k == "service_name")
            .map(|(_, v)| v.clone());
        let service = self
            .labels
            .service_name
            .clone()
            .or(pod_service)
            .unwrap_or_else(|| executable.to_string());
        let mut labels = vec![
            ("service_name".to_string(), service),
            ("node".to_string(), self.labels.node.clone()),
        ];
        if per_process {
            labels.push(("pid".to_string(), pid.to_string()));
        }
        // In a container the pod and container name the workload; on the
        // host the executable does.
        if per_process || container.is_empty() {
            labels.push(("comm".to_string(), executable.to_string()));
        }
        for (k, v) in container.iter().chain(&self.labels.extra) {
            if !labels.iter().any(|(name, _)| name == k) {
                labels.push((k.clone(), v.clone()));
            }
        }
        labels
    }

    /// Whether `key` is a kernel thread (or the idle task, tgid 0): the
    /// kernel flags it so in `/proc/PID/stat`. One gone before it was asked
    /// counts as a kernel thread when it was seen alive with no executable
    /// mapping; not from its samples, as a user process that is exiting
    /// has no user stack either.
    fn is_kernel_thread(&mut self, key: ProcessKey, info: Option<&ProcessInfo>) -> bool {
        if let Some(&kernel) = self.kernel_threads.get(&key) {
            return kernel;
        }
        let kernel = key.tgid == 0
            || match std::fs::read_to_string(format!("/proc/{}/stat", key.tgid)) {
                Ok(stat) => parse_flags(&stat).is_some_and(|flags| flags & PF_KTHREAD != 0),
                Err(_) => info.is_some_and(|info| info.captured && info.mappings.is_empty()),
            };
        self.kernel_threads.insert(key, kernel);
        kernel
    }

    /// Forgets processes whose incarnation ended before this window began
    /// (their last samples are in this window or earlier), and idle ones
    /// that are no longer alive as the same process; then releases the
    /// files and cache entries nobody needs.
    fn forget_finished(&mut self, session: &mut Session) -> usize {
        let current = self.windows;
        let mut forget: Vec<ProcessKey> = self
            .gone
            .iter()
            .filter(|(_, &window)| window < current)
            .map(|(key, _)| *key)
            .collect();
        for (key, info) in session.processes().processes() {
            let idle = liveness_check_due(self.last_seen.get(key).copied(), current);
            if idle && !forget.contains(key) {
                let alive = process_start_time(Path::new("/proc"), key.tgid)
                    .is_some_and(|start| info.captured && start == info.start_time);
                if !alive {
                    forget.push(*key);
                }
            }
        }
        // An ended incarnation never seen by the table needs no entry either.
        self.gone.retain(|_, &mut window| window >= current);
        if let Some(labeler) = &mut self.containers {
            labeler.forget(&forget);
            labeler.end_window(current, IDLE_WINDOWS_BEFORE_SWEEP);
        }
        for key in &forget {
            session.forget(*key);
            self.kernel_threads.remove(key);
            self.executables.remove(key);
            self.last_seen.remove(key);
            self.gone.remove(key);
        }
        if !forget.is_empty() {
            let mut released = Vec::new();
            session.processes_mut().release_unused_objects(|key, object| {
                tracing::debug!(file = %object.original_path.display(), "releasing a file no tracked process maps");
                released.push((key, object.handle_path()))
            });
            let tgids: Vec<u32> = forget.iter().map(|k| k.tgid).collect();
            self.symbolizer.forget(&released, &tgids);
        }
        forget.len()
    }
}

impl ProcessFilter for WindowProcessor {
    /// Excluded processes are never captured.
    fn admit(&mut self, key: ProcessKey) -> bool {
        if self.verdict(key) == Verdict::Drop {
            return false;
        }
        if self.otlp {
            // Now, while it surely lives: short-lived processes are gone by
            // the end of the window.
            self.executable(key);
        }
        self.last_seen.insert(key, self.windows);
        true
    }

    fn ended(&mut self, key: ProcessKey) {
        self.gone.insert(key, self.windows);
    }

    fn has_ended(&self, key: ProcessKey) -> bool {
        self.gone.contains_key(&key)
    }
}

/// The executable of `tgid` as the process itself sees it: `/proc/PID/exe`,
/// taken relative to the process's root (see [`path_in_root`]). `None` for
/// kernel threads and processes already gone.
fn read_executable(proc_root: &Path, tgid: u32) -> Option<String> {
    let dir = proc_root.join(tgid.to_string());
    let exe = std::fs::read_link(dir.join("exe")).ok()?;
    let root = std::fs::read_link(dir.join("root")).unwrap_or_else(|_| "/".into());
    Some(format!("/{}", path_in_root(&root, &exe).display()))
}

/// The OTel resource attributes of one process, from its series labels:
/// `service.name`, `process.*`, `host.name`, `container.id`, the `k8s.*`
/// attributes of its pod, and the operator's `--label`s as they are.
fn otel_attributes(
    labels: &[(String, String)],
    pid: u32,
    process_name: &str,
    executable: Option<&str>,
) -> Vec<(String, AttributeValue)> {
    let text = |value: &str| AttributeValue::Text(value.to_string());
    let mut attributes = Vec::with_capacity(labels.len() + 4);
    let executable_name = executable
        .and_then(|path| path.rsplit('/').next())
        .filter(|name| !name.is_empty())
        .unwrap_or(process_name);
    attributes.push(("process.pid".to_string(), AttributeValue::Int(i64::from(pid))));
    attributes.push(("process.executable.name".to_string(), text(executable_name)));
    if let Some(path) = executable {
        attributes.push(("process.executable.path".to_string(), text(path)));
    }
    let in_pod = labels.iter().any(|(name, _)| name == "pod");
    let workload_kind = labels.iter().find(|(name, _)| name == "workload_kind").map(|(_, v)| v);
    for (name, value) in labels {
        let key = match name.as_str() {
            "service_name" => "service.name".to_string(),
            "node" => {
                if in_pod {
                    attributes.push(("k8s.node.name".to_string(), text(value)));
                }
                "host.name".to_string()
            }
            "namespace" => "k8s.namespace.name".to_string(),
            "pod" => "k8s.pod.name".to_string(),
            "pod_uid" => "k8s.pod.uid".to_string(),
            "container" => "k8s.container.name".to_string(),
            "container_id" => "container.id".to_string(),
            // `k8s.deployment.name`, `k8s.statefulset.name`, ...
            "workload" => match workload_kind {
                Some(kind) => format!("k8s.{}.name", kind.to_ascii_lowercase()),
                None => continue,
            },
            "workload_kind" | "comm" | "pid" => continue,
            other => match other.strip_prefix("pod_label_") {
                Some(label) => format!("k8s.pod.label.{label}"),
                None => other.to_string(),
            },
        };
        if !attributes.iter().any(|(existing, _)| *existing == key) {
            attributes.push((key, text(value)));
        }
    }
    attributes
}

/// The flags field (9) of a `/proc/PID/stat` line.
fn parse_flags(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' come fields 3 (state) onwards.
    rest.split_whitespace().nth(6)?.parse().ok()
}

/// A window's sequence number: its end in milliseconds since the epoch,
/// which orders windows across agent restarts too.
pub fn sequence_of(end: SystemTime) -> u64 {
    end.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn processor(per_process: bool, service_name: Option<&str>) -> WindowProcessor {
        let labels = SeriesLabels {
            service_name: service_name.map(str::to_string),
            node: "n1".into(),
            extra: vec![("team".into(), "infra".into())],
            per_process,
        };
        WindowProcessor::new(19, labels, false)
    }

    fn pairs(labels: &[(&str, &str)]) -> Vec<(String, String)> {
        labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn host_series_are_named_by_executable_and_never_by_pid() {
        let p = processor(false, None);
        let expected = pairs(&[
            ("service_name", "nginx"),
            ("node", "n1"),
            ("comm", "nginx"),
            ("team", "infra"),
        ]);
        assert_eq!(p.series_labels(10, "nginx", false, &[]), expected);
        assert_eq!(p.series_labels(11, "nginx", false, &[]), expected);
        let kernel = pairs(&[
            ("service_name", "kernel"),
            ("node", "n1"),
            ("comm", "kernel"),
            ("team", "infra"),
        ]);
        assert_eq!(p.series_labels(12, "kworker/0:1", true, &[]), kernel);
        let named = processor(false, Some("api"));
        assert_eq!(named.series_labels(12, "kworker/0:1", true, &[])[0].1, "api");
    }

    #[test]
    fn pod_series_leave_the_executable_out() {
        let p = processor(false, None);
        let pod = pairs(&[("service_name", "web"), ("namespace", "shop"), ("pod", "web-1")]);
        let expected = pairs(&[
            ("service_name", "web"),
            ("node", "n1"),
            ("namespace", "shop"),
            ("pod", "web-1"),
            ("team", "infra"),
        ]);
        assert_eq!(p.series_labels(10, "nginx", false, &pod), expected);
        assert_eq!(p.series_labels(11, "sh", false, &pod), expected);
    }

    #[test]
    fn series_per_process_keeps_the_pid_and_the_process_name() {
        let p = processor(true, None);
        let expected = pairs(&[
            ("service_name", "kworker/0:1"),
            ("node", "n1"),
            ("pid", "12"),
            ("comm", "kworker/0:1"),
            ("team", "infra"),
        ]);
        assert_eq!(p.series_labels(12, "kworker/0:1", true, &[]), expected);
    }

    #[test]
    fn otel_attributes_follow_the_semantic_conventions() {
        let labels = pairs(&[
            ("service_name", "web"),
            ("node", "n1"),
            ("namespace", "shop"),
            ("pod", "web-1"),
            ("container", "app"),
            ("container_id", "abc"),
            ("workload_kind", "Deployment"),
            ("workload", "web"),
            ("pod_label_tier", "front"),
            ("team", "infra"),
        ]);
        let attributes = otel_attributes(&labels, 42, "nginx: worker", Some("/usr/sbin/nginx"));
        let text = |v: &str| AttributeValue::Text(v.to_string());
        let expected = vec![
            ("process.pid".to_string(), AttributeValue::Int(42)),
            ("process.executable.name".to_string(), text("nginx")),
            ("process.executable.path".to_string(), text("/usr/sbin/nginx")),
            ("service.name".to_string(), text("web")),
            ("k8s.node.name".to_string(), text("n1")),
            ("host.name".to_string(), text("n1")),
            ("k8s.namespace.name".to_string(), text("shop")),
            ("k8s.pod.name".to_string(), text("web-1")),
            ("k8s.container.name".to_string(), text("app")),
            ("container.id".to_string(), text("abc")),
            ("k8s.deployment.name".to_string(), text("web")),
            ("k8s.pod.label.tier".to_string(), text("front")),
            ("team".to_string(), text("infra")),
        ];
        assert_eq!(attributes, expected);
        // On the host: no k8s attributes, the comm stands in for a missing
        // executable, and `comm` itself is not repeated.
        let host = otel_attributes(
            &pairs(&[("service_name", "kernel"), ("node", "n1"), ("comm", "kernel")]),
            2,
            "kthreadd",
            None,
        );
        let keys: Vec<&str> = host.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["process.pid", "process.executable.name", "service.name", "host.name"]
        );
        assert_eq!(host[1].1, text("kthreadd"));
    }

    #[test]
    fn the_executable_is_read_as_the_process_sees_it() {
        let own = read_executable(Path::new("/proc"), std::process::id()).expect("our own executable");
        let expected = std::fs::canonicalize(std::env::current_exe().expect("current exe")).expect("canonical");
        assert_eq!(Path::new(&own), expected);
        assert_eq!(read_executable(Path::new("/proc"), u32::MAX), None);
    }

    #[test]
    fn idle_processes_are_checked_for_liveness_every_few_windows_not_every_window() {
        let k = IDLE_WINDOWS_BEFORE_SWEEP;
        let due: Vec<u64> = (0..=4 * k).filter(|&w| liveness_check_due(Some(3), w)).collect();
        assert_eq!(due, vec![3 + k, 3 + 2 * k, 3 + 3 * k]);
        // Never recorded: nothing says when it was last seen, so every window.
        assert!((0..=k).all(|w| liveness_check_due(None, w)));
    }

    #[test]
    fn kernel_threads_are_told_by_their_stat_flags() {
        let kthread = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0";
        let user = "1 (sys temd) S 0 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0";
        assert!(parse_flags(kthread).is_some_and(|f| f & PF_KTHREAD != 0));
        assert!(parse_flags(user).is_some_and(|f| f & PF_KTHREAD == 0));
        assert_eq!(parse_flags("garbage"), None);
    }
}
