//! The agent's own Prometheus metrics: what it sampled, what it lost and
//! why, and how delivery to the backend is going. Everything lives in one
//! [`Metrics`] value that is cheap to clone and is handed to each part of
//! the agent; [`crate::agent::endpoint`] serves it as OpenMetrics text.
//!
//! BPF keeps its own running totals, so the counters fed from it are set
//! from absolute values ([`Metrics::set_samples_total`] and friends) rather
//! than incremented, and they never go backwards.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry, Unit};

/// The label of the loss counters: why samples or stacks were lost.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CauseLabels {
    /// A short, fixed reason such as `ringbuf_full` or `map_full`.
    pub cause: String,
}

/// The label of the symbol cache's bytes: which part of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PartLabels {
    /// `names`, `parsed` or `kernel`.
    pub part: String,
}

/// The agent's metrics. Clones share the same values.
///
/// Each field is a live handle: incrementing it is visible in the next
/// [`Metrics::encode`].
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// `taskprof_samples_total{kind}`: samples taken by BPF, `profiled`
    /// (meant for the profiles; the lost ones among them are also in
    /// `taskprof_samples_lost_total`) or `idle` (idle CPUs, left out).
    pub samples: Family<KindLabels, Counter>,
    /// `taskprof_samples_lost_total{cause}`: samples BPF could not record.
    pub samples_lost: Family<CauseLabels, Counter>,
    /// `taskprof_stacks_lost_total{cause}`: stacks that could not be read or stored.
    pub stacks_lost: Family<CauseLabels, Counter>,
    /// `taskprof_windows_total`: profiling windows closed (counted by the agent's window loop).
    pub windows: Counter,
    /// `taskprof_profiles_uploaded_total`: profiles the backend accepted.
    pub profiles_uploaded: Counter,
    /// `taskprof_profiles_retried_total`: profile sends that were attempts after the first.
    pub profiles_retried: Counter,
    /// `taskprof_profiles_failed_total`: profiles that will never be delivered,
    /// because the backend rejected them or the spool evicted them.
    pub profiles_failed: Counter,
    /// `taskprof_samples_dropped_total`: the samples in those profiles, so
    /// that samples taken = samples delivered + `samples_lost` + these.
    pub samples_dropped: Counter,
    /// `taskprof_profiles_spooled_total`: profiles written to the on-disk spool.
    pub profiles_spooled: Counter,
    /// `taskprof_otlp_profiles_rejected_total`: profiles an OTLP backend
    /// accepted the request of but refused (its `partial_success`).
    pub otlp_profiles_rejected: Counter,
    /// `taskprof_spool_evictions_total`: spooled windows evicted to respect the size bound.
    pub spool_evictions: Counter,
    /// `taskprof_windows_resent_after_restart_total`: spooled windows whose
    /// send was under way when the agent last stopped without finishing it
    /// (killed, or the machine lost power); they are sent again, so the
    /// backend may receive them twice.
    pub windows_resent_after_restart: Counter,
    /// `taskprof_spool_bytes`: current size of the spool.
    pub spool_bytes: Gauge,
    /// `taskprof_spool_windows`: windows currently waiting in the spool.
    pub spool_windows: Gauge,
    /// `taskprof_upload_duration_seconds`: duration of each upload request.
    pub upload_duration: Histogram,
    /// `taskprof_symbolization_failures_total`: addresses that could not be symbolized.
    pub symbolization_failures: Counter,
    /// `taskprof_perf_map_problems_total{problem}`: `/tmp/perf-PID.map`
    /// files not read (`symlink`, `not_regular`, `owner`, `unreadable`) or
    /// cut at their size bound (`truncated`).
    pub perf_map_problems: Family<ProblemLabels, Counter>,
    /// `taskprof_samples_filtered_total`: samples of processes the filters left out.
    pub samples_filtered: Counter,
    /// `taskprof_kubernetes_metadata_missing_total`: times a container's pod
    /// was not known (API server unreachable or behind).
    pub kubernetes_metadata_missing: Counter,
    /// `taskprof_kubernetes_api_errors_total`: failed pod lists and watches.
    pub kubernetes_api_errors: Counter,
    /// `taskprof_kubernetes_pods`: pods of this node in the metadata cache.
    pub kubernetes_pods: Gauge,
    /// `taskprof_tracked_processes`: processes whose mappings are being tracked.
    pub tracked_processes: Gauge,
    /// `taskprof_series_per_window`: series (distinct label sets, so
    /// profiles) the last window sent; the cardinality a backend indexes.
    pub series_per_window: Gauge,
    /// `taskprof_ready`: 1 once the agent samples and delivers, else 0.
    pub ready: Gauge,
    /// `taskprof_user_stacks_total{result}`: user stacks the unwinder
    /// walked, by how the walk ended (`complete` or the truncation reason).
    pub user_stacks: Family<ResultLabels, Counter>,
    /// `taskprof_unwind_tables`: unwind tables loaded into BPF.
    pub unwind_tables: Gauge,
    /// `taskprof_unwind_table_bytes`: kernel memory of the loaded tables' rows.
    pub unwind_table_bytes: Gauge,
    /// `taskprof_symbol_cache_bytes{part}`: the symbol caches' heap and
    /// mapped bytes after the last window, `names` (counted), `parsed`
    /// (blazesym's parsed files, estimated) and `kernel` (the kallsyms
    /// table, counted).
    pub symbol_cache_bytes: Family<PartLabels, Gauge>,
    /// `taskprof_symbol_parsed_files`: files whose parsed symbol tables
    /// are kept after the last window.
    pub symbol_parsed_files: Gauge,
    /// `process_resident_memory_bytes`: the agent's resident set (VmRSS)
    /// after the last window, heap and mapped files alike.
    pub resident_bytes: Gauge,
    /// `taskprof_unwind_tables_over_budget_total`: tables not loaded because
    /// `--unwind-table-memory` was used up.
    pub unwind_tables_over_budget: Counter,
    /// `taskprof_unwind_mappings_over_limit_total`: executable mappings left
    /// without unwinding because their process had more than the BPF
    /// program searches (256).
    pub unwind_mappings_over_limit: Counter,
    /// `taskprof_unwind_tables_failed_total`: files whose unwind table could
    /// not be built (no or malformed call frame information, or too large);
    /// their code is walked by frame pointers.
    pub unwind_tables_failed: Counter,
    /// `taskprof_python_processes{status}`: CPython processes found since
    /// start, by whether their frames are walked (`walked`) or why not
    /// (`unsupported`, `unreadable`).
    pub python_processes: Family<StatusLabels, Gauge>,
    /// `taskprof_python_stacks_total{result}`: samples whose Python frames
    /// were walked, `complete` or `incomplete` (depth limit, unreadable
    /// frame), and samples in the interpreter taken before the walker had
    /// the process (`not_loaded`).
    pub python_stacks: Family<ResultLabels, Counter>,
    /// `taskprof_bpf_variant{variant}`: 1 for the BPF sampler variant this
    /// kernel runs (`bpf_loop+task_pt_regs`, `bounded_loop+task_stack+...`;
    /// see the README's kernel table).
    pub bpf_variant: Family<VariantLabels, Gauge>,
}

/// The `variant` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct VariantLabels {
    /// The variant's name.
    pub variant: String,
}

/// The `kind` label of `taskprof_samples_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct KindLabels {
    /// `profiled` or `idle`.
    pub kind: String,
}

/// The `status` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct StatusLabels {
    /// The status.
    pub status: String,
}

/// The `problem` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ProblemLabels {
    /// What was wrong.
    pub problem: String,
}

/// The `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ResultLabels {
    /// How the unwind ended.
    pub result: String,
}

impl Metrics {
    /// Counts profiles that will never be delivered, and their samples.
    pub fn profiles_dropped(&self, profiles: u64, samples: u64) {
        self.profiles_failed.inc_by(profiles);
        self.samples_dropped.inc_by(samples);
    }

    /// Creates all metrics at zero and registers them.
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        // Counters are registered without `_total` and units without their
        // suffix: the encoder appends both.
        let metrics = Metrics {
            samples: register(
                &mut r,
                "taskprof_samples",
                "Samples taken by BPF, by kind: profiled (meant for the profiles; lost ones are also in \
                 taskprof_samples_lost_total) or idle (idle CPUs, left out of the profiles)",
                None,
                Family::default(),
            ),
            samples_lost: register(
                &mut r,
                "taskprof_samples_lost",
                "Samples BPF could not record, by cause",
                None,
                Family::default(),
            ),
            stacks_lost: register(
                &mut r,
                "taskprof_stacks_lost",
                "Stacks that could not be read or stored, by cause",
                None,
                Family::default(),
            ),
            windows: register(
                &mut r,
                "taskprof_windows",
                "Profiling windows closed",
                None,
                Counter::default(),
            ),
            profiles_uploaded: register(
                &mut r,
                "taskprof_profiles_uploaded",
                "Profiles the backend accepted",
                None,
                Counter::default(),
            ),
            profiles_retried: register(
                &mut r,
                "taskprof_profiles_retried",
                "Profile sends that repeated an earlier failed send",
                None,
                Counter::default(),
            ),
            profiles_failed: register(
                &mut r,
                "taskprof_profiles_failed",
                "Profiles that will never be delivered: rejected by the backend or evicted from the spool",
                None,
                Counter::default(),
            ),
            samples_dropped: register(
                &mut r,
                "taskprof_samples_dropped",
                "Samples in profiles that will never be delivered (see taskprof_profiles_failed)",
                None,
                Counter::default(),
            ),
            profiles_spooled: register(
                &mut r,
                "taskprof_profiles_spooled",
                "Profiles written to the on-disk spool",
                None,
                Counter::default(),
            ),
            otlp_profiles_rejected: register(
                &mut r,
                "taskprof_otlp_profiles_rejected",
                "Profiles an OTLP backend refused in a partial success (the request itself was accepted)",
                None,
                Counter::default(),
            ),
            spool_evictions: register(
                &mut r,
                "taskprof_spool_evictions",
                "Spooled windows evicted to keep the spool within its size bound",
                None,
                Counter::default(),
            ),
            windows_resent_after_restart: register(
                &mut r,
                "taskprof_windows_resent_after_restart",
                "Spooled windows sent again after a restart because their send was under way when the agent stopped",
                None,
                Counter::default(),
            ),
            spool_bytes: register(
                &mut r,
                "taskprof_spool",
                "Current size of the on-disk spool",
                Some(Unit::Bytes),
                Gauge::default(),
            ),
            spool_windows: register(
                &mut r,
                "taskprof_spool_windows",
                "Windows currently waiting in the on-disk spool",
                None,
                Gauge::default(),
            ),
            upload_duration: register(
                &mut r,
                "taskprof_upload_duration",
                "Duration of each upload request",
                Some(Unit::Seconds),
                // 5 ms to about 80 s: a local backend answers in milliseconds,
                // a congested one close to the request timeout.
                Histogram::new(exponential_buckets(0.005, 2.0, 15)),
            ),
            symbolization_failures: register(
                &mut r,
                "taskprof_symbolization_failures",
                "Addresses that could not be symbolized",
                None,
                Counter::default(),
            ),
            perf_map_problems: register(
                &mut r,
                "taskprof_perf_map_problems",
                "Perf maps (/tmp/perf-PID.map) not read or cut at their size bound, by problem",
                None,
                Family::default(),
            ),
            samples_filtered: register(
                &mut r,
                "taskprof_samples_filtered",
                "Samples of processes the namespace, pod or container filters left out",
                None,
                Counter::default(),
            ),
            kubernetes_metadata_missing: register(
                &mut r,
                "taskprof_kubernetes_metadata_missing",
                "Times a container's pod metadata was unknown (API server unreachable or behind)",
                None,
                Counter::default(),
            ),
            kubernetes_api_errors: register(
                &mut r,
                "taskprof_kubernetes_api_errors",
                "Pod lists and watches against the API server that failed",
                None,
                Counter::default(),
            ),
            kubernetes_pods: register(
                &mut r,
                "taskprof_kubernetes_pods",
                "Pods of this node in the metadata cache",
                None,
                Gauge::default(),
            ),
            tracked_processes: register(
                &mut r,
                "taskprof_tracked_processes",
                "Processes whose mappings are being tracked",
                None,
                Gauge::default(),
            ),
            series_per_window: register(
                &mut r,
                "taskprof_series_per_window",
                "Series (distinct label sets, one profile each) the last window sent",
                None,
                Gauge::default(),
            ),
            user_stacks: register(
                &mut r,
                "taskprof_user_stacks",
                "User stacks walked by the unwinder, by result: complete, or why the walk stopped",
                None,
                Family::default(),
            ),
            unwind_tables: register(
                &mut r,
                "taskprof_unwind_tables",
                "Unwind tables loaded into BPF",
                None,
                Gauge::default(),
            ),
            unwind_table_bytes: register(
                &mut r,
                "taskprof_unwind_table_bytes",
                "Kernel memory of the loaded unwind tables' rows",
                None,
                Gauge::default(),
            ),
            symbol_cache_bytes: register(
                &mut r,
                "taskprof_symbol_cache_bytes",
                "Bytes the symbol caches hold after the last window: names (counted), parsed files (estimated), the kernel's symbol table",
                None,
                Family::default(),
            ),
            symbol_parsed_files: register(
                &mut r,
                "taskprof_symbol_parsed_files",
                "Files whose parsed symbol tables are kept",
                None,
                Gauge::default(),
            ),
            resident_bytes: register(
                &mut r,
                "process_resident_memory_bytes",
                "The agent's resident memory after the last window",
                None,
                Gauge::default(),
            ),
            unwind_tables_over_budget: register(
                &mut r,
                "taskprof_unwind_tables_over_budget",
                "Unwind tables not loaded because --unwind-table-memory was used up",
                None,
                Counter::default(),
            ),
            unwind_tables_failed: register(
                &mut r,
                "taskprof_unwind_tables_failed",
                "Files whose unwind table could not be built; their code is walked by frame pointers",
                None,
                Counter::default(),
            ),
            unwind_mappings_over_limit: register(
                &mut r,
                "taskprof_unwind_mappings_over_limit",
                "Executable mappings left without unwinding because their process had more than 256",
                None,
                Counter::default(),
            ),
            python_processes: register(
                &mut r,
                "taskprof_python_processes",
                "CPython processes found since start, by status: walked, unsupported or unreadable",
                None,
                Family::default(),
            ),
            bpf_variant: register(
                &mut r,
                "taskprof_bpf_variant",
                "The BPF sampler variant this kernel runs (always 1)",
                None,
                Family::default(),
            ),
            python_stacks: register(
                &mut r,
                "taskprof_python_stacks",
                "Samples whose Python frames were walked, by result: complete or incomplete; not_loaded: \
                 samples in the interpreter before the walker had the process",
                None,
                Family::default(),
            ),
            ready: register(
                &mut r,
                "taskprof_ready",
                "1 once the agent samples and delivers, else 0",
                None,
                Gauge::default(),
            ),
            registry: Arc::new(r),
        };
        // Both kinds are exported from the start, so a sum over them is
        // the samples taken even before the first idle sample.
        metrics.set_samples_total("profiled", 0);
        metrics.set_samples_total("idle", 0);
        metrics
    }

    /// Raises `taskprof_samples_total{kind}` to an absolute total read
    /// from BPF. A total lower than the current value is ignored.
    pub fn set_samples_total(&self, kind: &str, total: u64) {
        let labels = KindLabels { kind: kind.to_string() };
        raise_to(&self.samples.get_or_create(&labels), total);
    }

    /// Raises `taskprof_samples_lost_total{cause}` to an absolute total.
    pub fn set_samples_lost_total(&self, cause: &str, total: u64) {
        raise_to(&self.samples_lost.get_or_create(&cause_labels(cause)), total);
    }

    /// Raises `taskprof_stacks_lost_total{cause}` to an absolute total.
    pub fn set_stacks_lost_total(&self, cause: &str, total: u64) {
        raise_to(&self.stacks_lost.get_or_create(&cause_labels(cause)), total);
    }

    /// Sets `taskprof_python_processes{status}`.
    pub fn set_python_processes(&self, status: &str, count: u64) {
        let labels = StatusLabels {
            status: status.to_string(),
        };
        self.python_processes.get_or_create(&labels).set(count as i64);
    }

    /// Raises `taskprof_python_stacks_total{result}` to an absolute total.
    pub fn set_python_stacks_total(&self, result: &str, total: u64) {
        let labels = ResultLabels {
            result: result.to_string(),
        };
        raise_to(&self.python_stacks.get_or_create(&labels), total);
    }

    /// Raises `taskprof_user_stacks_total{result}` to an absolute total.
    pub fn set_user_stacks_total(&self, result: &str, total: u64) {
        let labels = ResultLabels {
            result: result.to_string(),
        };
        raise_to(&self.user_stacks.get_or_create(&labels), total);
    }

    /// Raises `taskprof_perf_map_problems_total{problem}` to an absolute total.
    pub fn set_perf_map_problems_total(&self, problem: &str, total: u64) {
        let labels = ProblemLabels {
            problem: problem.to_string(),
        };
        raise_to(&self.perf_map_problems.get_or_create(&labels), total);
    }

    /// Raises `taskprof_symbolization_failures_total` to an absolute total.
    pub fn set_symbolization_failures_total(&self, total: u64) {
        raise_to(&self.symbolization_failures, total);
    }

    /// Sets `taskprof_symbol_cache_bytes` and `taskprof_symbol_parsed_files`.
    pub fn set_symbol_cache(&self, bytes: crate::symbolize::SymbolCacheBytes, parsed_files: usize) {
        for (part, value) in [
            ("names", bytes.names),
            ("parsed", bytes.parsed),
            ("kernel", bytes.kernel),
        ] {
            self.symbol_cache_bytes
                .get_or_create(&PartLabels { part: part.into() })
                .set(value as i64);
        }
        self.symbol_parsed_files.set(parsed_files as i64);
    }

    #[cfg(test)]
    /// Adds to `taskprof_stacks_lost_total{cause}`.
    pub fn add_stacks_lost(&self, cause: &str, count: u64) {
        self.stacks_lost.get_or_create(&cause_labels(cause)).inc_by(count);
    }

    /// Sets `taskprof_bpf_variant{variant}` to 1.
    pub fn set_bpf_variant(&self, variant: &str) {
        self.bpf_variant
            .get_or_create(&VariantLabels {
                variant: variant.to_string(),
            })
            .set(1);
    }

    /// Sets `taskprof_ready`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The complete exposition in OpenMetrics text format, `# EOF` included.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; an error here would be a bug in a
        // metric's encoder, and a partial page is better than none.
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %err, "failed to encode the metrics");
        }
        text
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Registers a metric and hands back a handle to it.
fn register<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>, metric: M) -> M {
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, metric.clone()),
        None => registry.register(name, help, metric.clone()),
    }
    metric
}

fn cause_labels(cause: &str) -> CauseLabels {
    CauseLabels {
        cause: cause.to_string(),
    }
}

/// Moves a counter up to `total`. `fetch_max` keeps it monotonic and exact
/// even when two threads report totals at once.
pub fn raise_to(counter: &Counter, total: u64) {
    counter.inner().fetch_max(total, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_metric_with_its_openmetrics_name() {
        let metrics = Metrics::new();
        metrics.set_samples_total("profiled", 10);
        metrics.set_samples_total("idle", 7);
        metrics.set_samples_lost_total("ringbuf_full", 3);
        metrics.add_stacks_lost("map_full", 2);
        metrics.upload_duration.observe(0.01);
        metrics.spool_bytes.set(42);
        let text = metrics.encode();
        for expected in [
            "taskprof_samples_total{kind=\"profiled\"} 10",
            "taskprof_samples_total{kind=\"idle\"} 7",
            "taskprof_samples_lost_total{cause=\"ringbuf_full\"} 3",
            "taskprof_stacks_lost_total{cause=\"map_full\"} 2",
            "taskprof_windows_total 0",
            "taskprof_profiles_uploaded_total 0",
            "taskprof_profiles_retried_total 0",
            "taskprof_profiles_failed_total 0",
            "taskprof_samples_dropped_total 0",
            "taskprof_profiles_spooled_total 0",
            "taskprof_otlp_profiles_rejected_total 0",
            "taskprof_spool_evictions_total 0",
            "taskprof_windows_resent_after_restart_total 0",
            "taskprof_spool_bytes 42",
            "taskprof_spool_windows 0",
            "taskprof_upload_duration_seconds_count 1",
            "taskprof_symbolization_failures_total 0",
            "taskprof_tracked_processes 0",
            "taskprof_series_per_window 0",
            "taskprof_ready 0",
            "taskprof_unwind_tables 0",
            "taskprof_unwind_table_bytes 0",
            "taskprof_symbol_parsed_files 0",
            "process_resident_memory_bytes 0",
            "taskprof_unwind_tables_over_budget_total 0",
            "taskprof_unwind_mappings_over_limit_total 0",
            "taskprof_unwind_tables_failed_total 0",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn absolute_totals_never_move_a_counter_backwards() {
        let metrics = Metrics::new();
        let profiled = || {
            metrics
                .samples
                .get_or_create(&KindLabels {
                    kind: "profiled".into(),
                })
                .get()
        };
        metrics.set_samples_total("profiled", 100);
        metrics.set_samples_total("profiled", 40);
        assert_eq!(profiled(), 100);
        metrics.set_samples_total("profiled", 150);
        assert_eq!(profiled(), 150);
    }

    #[test]
    fn clones_share_values() {
        let metrics = Metrics::new();
        let clone = metrics.clone();
        clone.windows.inc();
        assert!(metrics.encode().contains("taskprof_windows_total 1"));
    }
}
