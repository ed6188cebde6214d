//! `taskprof agent`: sample all the time, cut the sampling into windows,
//! and hand each window's profiles to the delivery worker. Sampling and
//! symbolization run on this thread; uploads, the spool and the metrics
//! endpoint run on a small tokio runtime, so a slow backend never stalls
//! sampling.

pub mod config;
mod containers;
mod endpoint;
pub mod logging;
pub(crate) mod metrics;
pub mod settings;
mod window;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use crate::bpf::{SampleStats, Truncation};
use crate::kubernetes::{LabelOptions, PodCache, PodFilter};
use crate::session::Session;
use crate::upload::{build_uploader, Delivery, DeliveryOptions, Spool};
use config::AgentConfig;
use containers::{ContainerLabeler, LabelerSettings};
use metrics::{raise_to, Metrics};
use window::{SeriesLabels, WindowProcessor};

/// Runs the agent until `stop` is set (by SIGTERM or SIGINT), then closes
/// the current window early, delivers it and flushes the queue within the
/// shutdown grace; what is still undelivered then stays in the spool.
pub fn run(config: AgentConfig, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    // Before any other thread starts (the arena limit applies from here).
    crate::util::memory::return_freed_memory_promptly();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("taskprof-io")
        .enable_all()
        .build()
        .context("failed to start the I/O runtime")?;
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let (metrics_address, _server) = runtime.block_on(endpoint::serve(
        config.observability.metrics_address,
        metrics.clone(),
        Arc::clone(&ready),
    ))?;

    if config.delivery.upload.tls_insecure_skip_verify {
        tracing::warn!(
            "--tls-insecure-skip-verify is set: server certificates are NOT checked, \
             so anyone on the network path can read or alter profiles and credentials"
        );
    }
    // Inside the runtime: a gRPC channel's background task is spawned on it.
    let uploader = {
        let _guard = runtime.enter();
        build_uploader(&config.delivery.upload, metrics.clone())?
    };
    let spool = Spool::open(&config.delivery.spool, metrics.clone())?;
    let options = DeliveryOptions {
        queue_capacity: config.delivery.queue_capacity,
        ..DeliveryOptions::for_window(config.sampling.window)
    };
    let (delivery, worker) = {
        let _guard = runtime.enter();
        Delivery::start(uploader, spool, metrics.clone(), options)
    };

    let mut session = Session::load(&config.session_settings())?;

    let labels = SeriesLabels {
        service_name: config.identity.service_name.clone(),
        node: config.identity.node_name.clone(),
        extra: config.identity.labels.clone(),
        per_process: config.identity.series_per_process,
    };
    let mut processor = WindowProcessor::new(config.sampling.frequency_hz, labels, config.sampling.debug_info)
        .with_symbol_cache_memory(config.sampling.symbol_cache_memory);
    if config.delivery.upload.protocol.is_otlp() {
        processor = processor.with_otlp();
    }
    let kube = &config.kubernetes;
    let pods = if kube.enabled {
        let cache = PodCache::new();
        // Validated with the rest of the configuration, before anything bound.
        let kube_config = kube.connection.clone().context("--kubernetes has no API server")?;
        let _watcher = crate::kubernetes::spawn_watcher(kube_config, cache.clone(), runtime.handle())
            .context("failed to start watching pods")?;
        Some(cache)
    } else {
        None
    };
    let filtering = !kube.container_ids.is_empty() || !kube.keep_host_processes;
    let pod_stats = pods.clone();
    if pods.is_some() || filtering {
        processor = processor.with_containers(ContainerLabeler::new(LabelerSettings {
            cgroup_proc_root: kube.cgroup_proc_root.clone(),
            pods,
            filter: PodFilter {
                namespaces: kube.namespaces.clone(),
                exclude_namespaces: kube.exclude_namespaces.clone(),
                selector: kube.pod_selector.clone(),
                container_ids: kube.container_ids.clone(),
            },
            keep_host_processes: kube.keep_host_processes,
            label_options: LabelOptions {
                service_name_label: Some(kube.service_name_label.clone()),
                pod_labels: kube.pod_labels.clone(),
            },
        }));
    }
    session.attach()?;
    ready.store(true, Ordering::SeqCst);
    metrics.set_ready(true);
    let loaded = session.loaded();
    metrics.set_bpf_variant(&loaded.variant.to_string());
    tracing::info!(
        frequency_hz = config.sampling.frequency_hz,
        bpf = %loaded.describe(),
        window = %humantime::format_duration(config.sampling.window),
        protocol = ?config.delivery.upload.protocol,
        metrics = %metrics_address,
        "sampling"
    );

    let mut totals = SampleStats::default();
    let mut filtered_total = 0u64;
    // Windows tile time: each starts where the previous one ended (the
    // instant of its drain), and boundaries keep the configured cadence
    // however long processing a window takes.
    let mut start = SystemTime::now();
    let mut boundary = Instant::now() + config.sampling.window;
    loop {
        while Instant::now() < boundary && !stop.load(Ordering::Relaxed) {
            let wait = boundary
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            session.handle_events(wait, &mut processor);
            for note in session.take_notes() {
                tracing::warn!("{note}");
            }
        }
        let stopping = stop.load(Ordering::Relaxed);
        if stopping {
            // Nothing is sampled after the last drain.
            session.stop();
        }
        session.handle_events(Duration::ZERO, &mut processor);
        let end = SystemTime::now();
        let window = session.drain_window()?;
        let (batch, report) = processor.finish_window(&mut session, &window, start, end);
        let span = tracing::info_span!("window", sequence = batch.sequence);
        let _entered = span.enter();

        totals.add(&window.stats);
        filtered_total += report.filtered;
        record_window(&metrics, &totals, filtered_total, &processor, &session);
        metrics.series_per_window.set(batch.profiles.len() as i64);
        if let Some(pods) = &pod_stats {
            let stats = pods.stats();
            raise_to(&metrics.kubernetes_api_errors, stats.list_errors + stats.watch_errors);
            metrics.kubernetes_pods.set(stats.pods as i64);
        }
        tracing::info!(
            samples = window.stats.samples,
            in_profiles = report.samples,
            idle = window.stats.idle,
            lost = window.stats.lost(),
            filtered = report.filtered,
            profiles = batch.profiles.len(),
            processes = report.processes,
            forgotten_processes = report.forgotten,
            tracked_processes = session.processes().len(),
            open_files = session.processes().object_count(),
            cached_addresses = processor.cached_addresses(),
            symbol_cache_bytes = processor.symbol_cache().0.total(),
            "window closed"
        );
        delivery.submit(batch);
        if stopping {
            break;
        }
        start = end;
        boundary += config.sampling.window;
        if boundary <= Instant::now() {
            // Processing overran a whole window: start the next one now.
            tracing::warn!("processing a window took longer than the window itself");
            boundary = Instant::now() + config.sampling.window;
        }
    }

    ready.store(false, Ordering::SeqCst);
    metrics.set_ready(false);
    tracing::info!(grace = %humantime::format_duration(config.delivery.shutdown_grace), "stopping: flushing uploads");
    let summary = runtime.block_on(delivery.shutdown(config.delivery.shutdown_grace));
    let _ = runtime.block_on(worker);
    tracing::info!(
        samples = totals.samples,
        idle = totals.idle,
        lost = totals.lost(),
        filtered = filtered_total,
        summary = ?summary,
        "stopped"
    );
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Publishes the running totals: BPF counters are absolute, so the metrics
/// are set from them rather than incremented.
fn record_window(
    metrics: &Metrics,
    totals: &SampleStats,
    filtered: u64,
    processor: &WindowProcessor,
    session: &Session,
) {
    metrics.windows.inc();
    metrics.set_samples_total("profiled", totals.samples - totals.idle);
    metrics.set_samples_total("idle", totals.idle);
    metrics.set_samples_lost_total("counts_map_full", totals.lost_counts_full);
    metrics.set_samples_lost_total("other", totals.lost_other);
    metrics.set_stacks_lost_total("user_stacks_map_full", totals.user_stack_map_full);
    metrics.set_stacks_lost_total("user_capture_error", totals.user_stack_error);
    metrics.set_stacks_lost_total("kernel_stacks_map_full", totals.kernel_stack_map_full);
    metrics.set_stacks_lost_total("kernel_capture_error", totals.kernel_stack_error);
    metrics.set_symbolization_failures_total(processor.symbolization_failures());
    let (cache_bytes, parsed_files) = processor.symbol_cache();
    metrics.set_symbol_cache(cache_bytes, parsed_files);
    if let Some(residency) = crate::util::memory::residency() {
        metrics.resident_bytes.set(residency.rss as i64);
    }
    for (problem, total) in processor.perf_map_problems() {
        metrics.set_perf_map_problems_total(problem, total);
    }
    raise_to(&metrics.samples_filtered, filtered);
    raise_to(&metrics.kubernetes_metadata_missing, processor.missing_metadata());
    metrics.tracked_processes.set(session.processes().len() as i64);
    if let Some(unwind) = session.unwind() {
        metrics.set_user_stacks_total("complete", totals.unwind_complete);
        for reason in Truncation::ALL {
            metrics.set_user_stacks_total(reason.label(), totals.truncated(reason));
        }
        metrics.unwind_tables.set(unwind.loaded_tables() as i64);
        metrics.unwind_table_bytes.set(unwind.used_bytes() as i64);
        raise_to(&metrics.unwind_tables_over_budget, unwind.stats().budget_exhausted);
        raise_to(&metrics.unwind_mappings_over_limit, unwind.stats().mappings_dropped);
        raise_to(&metrics.unwind_tables_failed, unwind.stats().tables_failed);
    }
    if let Some(python) = session.python() {
        for (status, count) in python.statuses() {
            metrics.set_python_processes(status.label(), *count);
        }
        metrics.set_python_stacks_total("complete", totals.python_walked - totals.python_incomplete);
        metrics.set_python_stacks_total("incomplete", totals.python_incomplete);
        metrics.set_python_stacks_total("not_loaded", python.not_loaded_samples());
    }
}
