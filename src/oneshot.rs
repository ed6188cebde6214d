//! `taskprof profile`: sample for a while, then symbolize and write one
//! profile. Ctrl-C or SIGTERM ends sampling early; what was collected is
//! still written.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use crate::bpf::{ProcessEvent, SampleStats, Sampler, SamplerConfig, Truncation, Window};
use crate::config::{OutputFormat, ProfileConfig};
use crate::pprof::{build_profile, encode_gzip, folded_lines, write_flamegraph, ProfileMeta, SampleLabels};
use crate::process::{ProcessKey, ProcessTable};
use crate::profile::symbolize_samples;
use crate::symbolize::Symbolizer;
use crate::unwind::manager::{UnwindManager, UnwindMaps};

/// What a finished profile contains.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Counters from the BPF program.
    pub stats: SampleStats,
    /// Samples that made it into the output.
    pub samples_written: u64,
    /// Distinct processes in the output.
    pub processes: usize,
    /// How long sampling ran.
    pub sampled_for: Duration,
    /// Time from the end of sampling to the file written.
    pub processing: Duration,
    /// Whether a signal ended sampling early.
    pub interrupted: bool,
}

/// Runs a one-shot profile. `stop` is set by the signal handlers.
pub fn run(config: ProfileConfig, stop: &AtomicBool) -> anyhow::Result<Summary> {
    let cpus = crate::bpf::online_cpu_count().context("failed to count the online CPUs")?;
    let mut sampler_config =
        SamplerConfig::sized_for(config.frequency_hz, config.duration.as_secs().max(1), cpus as u64);
    sampler_config.tgids = config.pids.clone();
    sampler_config.verifier_log = config.verifier_log;
    sampler_config.table_unwind = config.unwind_table_memory.is_some();

    let mut processes = ProcessTable::new();
    let mut unwind = config.unwind_table_memory.map(UnwindManager::new);

    let mut sampler = Sampler::load(sampler_config)?;
    // The processes named by --pid get their unwind tables before the
    // first sample, so none of their stacks is cut short while loading.
    if let Some(unwind) = unwind.as_mut() {
        unwind.preload(&mut sampler, &config.pids, &mut processes);
    }
    sampler.attach()?;
    let started_at = SystemTime::now();
    let started = Instant::now();
    let progress = std::io::stderr().is_terminal();
    let mut last_progress = Instant::now() - Duration::from_secs(1);

    while started.elapsed() < config.duration && !stop.load(Ordering::Relaxed) {
        let wait = config
            .duration
            .saturating_sub(started.elapsed())
            .min(Duration::from_millis(100));
        let events = sampler.process_events(wait);
        observe(&mut processes, unwind.as_mut(), &mut sampler, events);
        if progress && last_progress.elapsed() >= Duration::from_millis(250) {
            last_progress = Instant::now();
            let samples = sampler.live_stats().map(|s| s.samples).unwrap_or(0);
            let elapsed = started.elapsed().min(config.duration);
            eprint!(
                "\r\x1b[Ktaskprof: {:>4.0}s elapsed, {:>4.0}s left, {samples} samples",
                elapsed.as_secs_f64(),
                (config.duration - elapsed).as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
    }
    let interrupted = stop.load(Ordering::Relaxed);
    sampler.stop();
    let sampled_for = started.elapsed();
    if progress {
        eprint!("\r\x1b[K");
    }
    let processing_started = Instant::now();

    let events = sampler.process_events(Duration::ZERO);
    observe(&mut processes, unwind.as_mut(), &mut sampler, events);
    let Window { samples: raw, stats } = sampler.drain_window()?;
    drop(sampler);

    let mut symbolizer = Symbolizer::new();
    let samples = symbolize_samples(&raw, &mut processes, &mut symbolizer);
    let meta = ProfileMeta {
        frequency_hz: config.frequency_hz,
        start: started_at,
        duration: sampled_for,
        sample_labels: SampleLabels::All,
    };
    let bytes = match config.format {
        OutputFormat::Pprof => encode_gzip(&build_profile(&samples, &meta)).context("failed to encode the profile")?,
        OutputFormat::Folded => {
            let mut text = folded_lines(&samples).join("\n");
            text.push('\n');
            text.into_bytes()
        }
        OutputFormat::FlameGraph => {
            let mut svg = Vec::new();
            write_flamegraph(&samples, "taskprof CPU flame graph", &mut svg)
                .context("failed to draw the flame graph")?;
            svg
        }
    };
    let path = config.output.path().to_path_buf();
    config
        .output
        .commit(&bytes)
        .with_context(|| format!("failed to write `{}`", path.display()))?;

    let processes: std::collections::HashSet<u32> = samples.iter().map(|s| s.pid).collect();
    Ok(Summary {
        stats,
        samples_written: samples.iter().map(|s| s.count).sum(),
        processes: processes.len(),
        sampled_for,
        processing: processing_started.elapsed(),
        interrupted,
    })
}

/// The one-line summary printed at the end of `taskprof profile`.
pub fn summary_line(summary: &Summary, path: &std::path::Path, format: OutputFormat) -> String {
    let s = &summary.stats;
    let open = match format {
        OutputFormat::Pprof => format!("open it with: go tool pprof -http=: {}", path.display()),
        OutputFormat::Folded => format!("draw it with: inferno-flamegraph < {}", path.display()),
        OutputFormat::FlameGraph => format!("open it in a browser: {}", path.display()),
    };
    format!(
        "taskprof: {} samples from {} processes in {:.1}s{}; lost {} (counts map full {}, other {}); \
         stacks lost {} (user: map full {}, error {}; kernel: map full {}, error {}); {}wrote {}; {}",
        summary.samples_written,
        summary.processes,
        summary.sampled_for.as_secs_f64(),
        if summary.interrupted { " (interrupted)" } else { "" },
        s.lost(),
        s.lost_counts_full,
        s.lost_other,
        s.stacks_lost(),
        s.user_stack_map_full,
        s.user_stack_error,
        s.kernel_stack_map_full,
        s.kernel_stack_error,
        unwind_summary(s),
        path.display(),
        open
    )
}

/// How the unwinder's walks ended, when it walked any.
fn unwind_summary(stats: &SampleStats) -> String {
    let walked = stats.unwind_complete + stats.truncated_total();
    if walked == 0 {
        return String::new();
    }
    let reasons: Vec<String> = Truncation::ALL
        .iter()
        .filter(|&&reason| stats.truncated(reason) > 0)
        .map(|&reason| format!("{} {}", reason.label().replace('_', " "), stats.truncated(reason)))
        .collect();
    format!(
        "user stacks complete {} of {}{}; ",
        stats.unwind_complete,
        walked,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" (stopped early: {})", reasons.join(", "))
        }
    )
}

/// Captures newly sampled processes while they are alive, and loads their
/// unwind tables. Ended incarnations are kept: their samples are
/// symbolized at the end.
fn observe(
    processes: &mut ProcessTable,
    unwind: Option<&mut UnwindManager>,
    maps: &mut dyn UnwindMaps,
    events: Vec<ProcessEvent>,
) {
    // Capture every new process first: that must happen while they live.
    for event in &events {
        if let ProcessEvent::New { tgid, incarnation } = *event {
            processes.observe(ProcessKey { tgid, incarnation });
        }
    }
    let Some(unwind) = unwind else {
        return;
    };
    for event in events {
        match event {
            ProcessEvent::New { tgid, incarnation } => {
                unwind.load_process(maps, ProcessKey { tgid, incarnation }, processes);
            }
            ProcessEvent::MappingsChanged { tgid, incarnation } => {
                unwind.mappings_changed(maps, ProcessKey { tgid, incarnation }, processes);
            }
            ProcessEvent::Gone { tgid, incarnation } => {
                unwind.process_gone(maps, ProcessKey { tgid, incarnation });
            }
        }
    }
    unwind.poll(maps, processes);
}
