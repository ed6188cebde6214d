//! `taskprof profile`: sample for a while, then symbolize and write one
//! profile. Ctrl-C or SIGTERM ends sampling early; what was collected is
//! still written.

pub mod config;

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use crate::bpf::{SampleStats, Truncation, Window};
use crate::pprof::{build_profile, encode_gzip, folded_lines, write_flamegraph, ProfileMeta, SampleLabels};
use crate::session::{AllProcesses, Session};
use crate::symbolize::samples::symbolize_samples;
use crate::symbolize::{ParsedFiles, Symbolizer};
use crate::util::memory::report_stage;
use config::{OutputFormat, ProfileConfig};

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
    /// Samples in a Python interpreter taken before the walker had their
    /// process.
    pub python_not_loaded: u64,
    /// The BPF sampler's variant, verifier instructions and load time
    /// ([`crate::bpf::Loaded::describe`]).
    pub sampler: String,
}

/// Runs a one-shot profile. `stop` is set by the signal handlers.
pub fn run(config: ProfileConfig, stop: &AtomicBool) -> anyhow::Result<Summary> {
    let mut session = Session::load(&config.session_settings())?;
    let sampler = session.loaded().describe();
    session.attach()?;
    report_stage("load and attach");
    let started_at = SystemTime::now();
    let started = Instant::now();
    let progress = std::io::stderr().is_terminal();
    let mut last_progress = Instant::now() - Duration::from_secs(1);

    while started.elapsed() < config.duration && !stop.load(Ordering::Relaxed) {
        let wait = config
            .duration
            .saturating_sub(started.elapsed())
            .min(Duration::from_millis(100));
        session.handle_events(wait, &mut AllProcesses);
        for note in session.take_notes() {
            if progress {
                eprint!("\r\x1b[K");
            }
            eprintln!("taskprof: {note}");
        }
        if progress && last_progress.elapsed() >= Duration::from_millis(250) {
            last_progress = Instant::now();
            let samples = session.live_stats().map(|s| s.samples).unwrap_or(0);
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
    session.stop();
    let sampled_for = started.elapsed();
    if progress {
        eprint!("\r\x1b[K");
    }
    let processing_started = Instant::now();
    report_stage("sampling");

    session.handle_events(Duration::ZERO, &mut AllProcesses);
    let Window { samples: raw, stats } = session.drain_window()?;
    let (mut processes, mut python) = session.finish();
    report_stage("drain");

    let mut symbolizer = Symbolizer::new();
    symbolizer.set_parsed_files(ParsedFiles::ReleaseAfterUse);
    let samples = symbolize_samples(&raw, &mut processes, &mut symbolizer, python.as_mut());
    report_stage("symbolize");
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
    report_stage("encode");
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
        python_not_loaded: python.as_ref().map_or(0, |p| p.not_loaded_samples()),
        sampler,
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
        "taskprof: {} samples from {} processes in {:.1}s{}; idle {}; lost {} (counts map full {}, other {}); \
         stacks lost {} (user: map full {}, error {}; kernel: map full {}, error {}); {}{}{}; wrote {}; {}",
        summary.samples_written,
        summary.processes,
        summary.sampled_for.as_secs_f64(),
        if summary.interrupted { " (interrupted)" } else { "" },
        s.idle,
        s.lost(),
        s.lost_counts_full,
        s.lost_other,
        s.stacks_lost(),
        s.user_stack_map_full,
        s.user_stack_error,
        s.kernel_stack_map_full,
        s.kernel_stack_error,
        unwind_summary(s),
        python_summary(s, summary.python_not_loaded),
        summary.sampler,
        path.display(),
        open
    )
}

/// How many samples had their Python frames walked, when any had.
fn python_summary(stats: &SampleStats, not_loaded: u64) -> String {
    if stats.python_walked == 0 && not_loaded == 0 {
        return String::new();
    }
    format!(
        "python frames in {} samples ({} stopped early, {} before the process was set up); ",
        stats.python_walked, stats.python_incomplete, not_loaded
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
