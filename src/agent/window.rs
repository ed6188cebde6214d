//! Turning one window of samples into one profile per process, and the
//! process bookkeeping that keeps a long-running agent bounded: processes
//! that exited are forgotten once their last samples are out, and the
//! files and caches only they used are released.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustc_hash::FxHashMap as HashMap;

use crate::agent::containers::{ContainerLabeler, Verdict};
use crate::bpf::{Truncation, Window};
use crate::pprof::{build_profile, encode_gzip, ProfileMeta, SampleLabels};
use crate::process::{process_start_time, ProcessKey};
use crate::session::{ProcessFilter, Session};
use crate::symbolize::samples::Sample;
use crate::symbolize::Symbolizer;
use crate::upload::{Batch, SeriesProfile};

/// Labels every series of this agent carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesLabels {
    /// `service_name` for every process; `None` uses the process name.
    pub service_name: Option<String>,
    /// The node (host) name.
    pub node: String,
    /// Extra `k=v` labels.
    pub extra: Vec<(String, String)>,
}

/// Windows after which a process with no samples is checked for liveness.
const IDLE_WINDOWS_BEFORE_SWEEP: u64 = 6;

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
}

/// What a window produced besides its batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowReport {
    /// Samples in the emitted profiles.
    pub samples: u64,
    /// Samples of processes the filters left out.
    pub filtered: u64,
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
        }
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

    /// Addresses that could not be symbolized so far.
    pub fn symbolization_failures(&self) -> u64 {
        self.symbolizer.failures()
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
        let mut by_process: BTreeMap<ProcessKey, Vec<Sample>> = BTreeMap::new();
        for (raw, sample) in kept.iter().zip(samples) {
            let key = ProcessKey::new(raw.tgid, raw.incarnation);
            if raw.user.truncation() == Some(Truncation::NotLoaded) {
                session.load_tables_later(key);
            }
            self.last_seen.insert(key, self.windows);
            by_process.entry(key).or_default().push(sample);
        }

        let meta = ProfileMeta {
            frequency_hz: self.frequency_hz,
            start,
            duration: end.duration_since(start).unwrap_or(Duration::ZERO),
            sample_labels: SampleLabels::ThreadName,
        };
        let mut profiles = Vec::with_capacity(by_process.len());
        let mut total = 0;
        for (key, samples) in &by_process {
            let count: u64 = samples.iter().map(|s| s.count).sum();
            if count == 0 {
                continue;
            }
            let profile = build_profile(samples, &meta);
            let pprof_gz = match encode_gzip(&profile) {
                Ok(bytes) => bytes,
                Err(err) => {
                    // Encoding into memory does not fail in practice; if it
                    // ever does, say so loudly with the samples it drops.
                    tracing::error!(pid = key.tgid, samples = count, error = %err, "failed to encode a profile");
                    continue;
                }
            };
            total += count;
            let process_name = samples[0].process_name.clone();
            let container_labels = match verdicts.get(key) {
                Some(Verdict::Keep(labels)) => labels.as_slice(),
                _ => &[],
            };
            profiles.push(SeriesProfile {
                labels: self.series_labels(key.tgid, &process_name, container_labels),
                pprof_gz,
                samples: count,
            });
        }

        let forgotten = self.forget_finished(session);
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
        };
        (
            batch,
            WindowReport {
                samples: total,
                filtered,
                forgotten,
            },
        )
    }

    /// Series labels: `service_name`, `pid`, `comm`, `node`, the container
    /// and pod labels, then the operator's `--label`s. `service_name` is
    /// `--service-name` if set, else the pod's (from a pod label or
    /// `namespace/container`), else the process name.
    fn series_labels(&self, pid: u32, process_name: &str, container: &[(String, String)]) -> Vec<(String, String)> {
        let pod_service = container
            .iter()
            .find(|(k, _)| k == "service_name")
            .map(|(_, v)| v.clone());
        let service = self
            .labels
            .service_name
            .clone()
            .or(pod_service)
            .unwrap_or_else(|| process_name.to_string());
        let mut labels = vec![
            ("service_name".to_string(), service),
            ("pid".to_string(), pid.to_string()),
            ("comm".to_string(), process_name.to_string()),
            ("node".to_string(), self.labels.node.clone()),
        ];
        for (k, v) in container.iter().chain(&self.labels.extra) {
            if !labels.iter().any(|(name, _)| name == k) {
                labels.push((k.clone(), v.clone()));
            }
        }
        labels
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
            let idle = self
                .last_seen
                .get(key)
                .is_none_or(|&seen| seen + IDLE_WINDOWS_BEFORE_SWEEP <= current);
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
        }
        for key in &forget {
            session.forget(*key);
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

/// A window's sequence number: its end in milliseconds since the epoch,
/// which orders windows across agent restarts too.
pub fn sequence_of(end: SystemTime) -> u64 {
    end.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
