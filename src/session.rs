//! One sampling session, the part both modes share: the loaded sampler,
//! the table of processes it has seen, and the unwind tables loaded for
//! them. `taskprof profile` drives one session for its whole run; the
//! agent drives one for its lifetime and cuts it into windows.
//!
//! Process events are handled here, once, for both modes: a new process
//! is captured at once (while it is alive), then its unwind tables are
//! requested; a process that mapped more code is read again; an ended
//! one releases its tables.

use std::time::Duration;

use anyhow::Context;

use crate::bpf::{
    online_cpu_count, pthread_specific_offset, task_fsbase_offset, Forced, Loaded, ProcessEvent, PythonWalkOffsets,
    RawSample, SampleStats, Sampler, SamplerConfig, Window,
};
use crate::process::{ProcessKey, ProcessTable};
use crate::python::processes::PythonProcesses;
use crate::symbolize::samples::{symbolize_samples, Sample};
use crate::symbolize::Symbolizer;
use crate::unwind::manager::UnwindManager;

/// What a session samples and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplingSettings {
    /// Hz per CPU.
    pub frequency_hz: u64,
    /// The longest time between two drains (the profile's duration, or
    /// the agent's window): the BPF maps are sized for it.
    pub span: Duration,
    /// Processes to sample; empty for all.
    pub pids: Vec<u32>,
    /// Show the verifier log on load failures.
    pub verifier_log: bool,
    /// Memory budget for unwind tables, or `None` to walk frame pointers
    /// only.
    pub unwind_table_memory: Option<u64>,
    /// Walk and name the Python frames of CPython processes.
    pub python: bool,
    /// Keep the idle task's samples in profiles; else they are only
    /// counted ([`crate::bpf::SampleStats::idle`]).
    pub include_idle: bool,
}

/// What a mode decides about the processes a session sees. The defaults
/// keep every process and remember nothing.
pub trait ProcessFilter {
    /// Whether a newly sampled process is captured; one that is not is
    /// never read from /proc.
    fn admit(&mut self, _key: ProcessKey) -> bool {
        true
    }

    /// The process's incarnation ended.
    fn ended(&mut self, _key: ProcessKey) {}

    /// Whether the process's incarnation is known to have ended.
    fn has_ended(&self, _key: ProcessKey) -> bool {
        false
    }
}

/// Keeps every process.
pub struct AllProcesses;

impl ProcessFilter for AllProcesses {}

/// A loaded sampler with its process table and unwind tables.
pub struct Session {
    sampler: Sampler,
    processes: ProcessTable,
    unwind: Option<UnwindManager>,
    /// Processes forgotten since the last events, whose unwind tables are
    /// released with the next events.
    unwind_forgotten: Vec<ProcessKey>,
    /// Processes sampled without their unwind tables (their announcement
    /// was dropped), loaded with the next events.
    unwind_missing: Vec<ProcessKey>,
    /// The Python processes, when Python frames are walked.
    python: Option<PythonProcesses>,
    /// What the user should know about this session (a feature that is
    /// off on this machine), said once.
    notes: Vec<String>,
}

impl Session {
    /// Loads the sampler (not attached yet) and, when unwinding by table,
    /// loads the tables of the processes named by `--pid`, so that none of
    /// their first stacks is cut short.
    pub fn load(settings: &SamplingSettings) -> anyhow::Result<Session> {
        let cpus = online_cpu_count().context("failed to count the online CPUs")?;
        let mut config = SamplerConfig::sized_for(settings.frequency_hz, settings.span.as_secs().max(1), cpus as u64);
        config.tgids = settings.pids.clone();
        config.verifier_log = settings.verifier_log;
        config.table_unwind = settings.unwind_table_memory.is_some();
        config.forced = Forced::from_env()?;
        config.include_idle = settings.include_idle;
        let mut notes = Vec::new();
        if settings.python {
            match (task_fsbase_offset(), pthread_specific_offset()) {
                (Ok(task_fsbase), Some(pthread_specific)) => {
                    config.python = Some(PythonWalkOffsets {
                        task_fsbase,
                        pthread_specific,
                    })
                }
                (Err(why), _) => notes.push(format!(
                    "Python frames are off: {why}; CPython processes keep their native stacks"
                )),
                (_, None) => notes.push(
                    "Python frames are off: this libc keeps thread-specific data where taskprof cannot find it; \
                     CPython processes keep their native stacks"
                        .to_string(),
                ),
            }
        }
        let sampler = Sampler::load(config)?;
        // A fallback variant may have turned the unwinder and the Python
        // walker off.
        let python = sampler.config().python.map(|_| PythonProcesses::default());
        let unwind_table_memory = settings.unwind_table_memory.filter(|_| sampler.config().table_unwind);
        notes.extend(sampler.loaded().fallbacks.iter().map(|why| format!("warning: {why}")));
        let mut session = Session {
            sampler,
            processes: ProcessTable::new(),
            unwind: unwind_table_memory.map(UnwindManager::new),
            unwind_forgotten: Vec::new(),
            unwind_missing: Vec::new(),
            python,
            notes,
        };
        if let Some(python) = &mut session.python {
            // As for unwind tables: the processes named by --pid are
            // walked from their first sample.
            for &tgid in &settings.pids {
                python.preload(&session.sampler, tgid, &mut session.processes);
            }
            session.notes.extend(python.take_notes());
        }
        if let Some(unwind) = &mut session.unwind {
            // Samples carry the BPF program's own incarnation numbers: the
            // process is captured again under its number when first sampled.
            for key in unwind.preload(&mut session.sampler, &settings.pids, &mut session.processes) {
                session.processes.forget(key);
            }
        }
        Ok(session)
    }

    /// How the sampler was loaded: its variant, verifier instructions and
    /// load time.
    pub fn loaded(&self) -> &Loaded {
        self.sampler.loaded()
    }

    /// Starts sampling.
    pub fn attach(&mut self) -> anyhow::Result<()> {
        Ok(self.sampler.attach()?)
    }

    /// Stops sampling; what was sampled can still be drained.
    pub fn stop(&mut self) {
        self.sampler.stop();
    }

    /// Waits up to `wait` for process events and handles them: new
    /// processes that `filter` admits are captured first, while they are
    /// alive, then their unwind tables are requested and finished tables
    /// are loaded.
    pub fn handle_events(&mut self, wait: Duration, filter: &mut dyn ProcessFilter) {
        let events = self.sampler.process_events(wait);
        if let Some(unwind) = &mut self.unwind {
            for key in self.unwind_forgotten.drain(..) {
                unwind.process_gone(&mut self.sampler, key);
            }
            for key in self.unwind_missing.drain(..) {
                if !unwind.knows(key) && !filter.has_ended(key) {
                    unwind.load_process(&mut self.sampler, key, &self.processes);
                }
            }
            unwind.unload_unused(&mut self.sampler, false);
        }
        // Capture every new process first: that must happen while they live.
        let mut admitted = rustc_hash::FxHashSet::default();
        for event in &events {
            if let ProcessEvent::New { tgid, incarnation } = *event {
                let key = ProcessKey::new(tgid, incarnation);
                if filter.admit(key) {
                    self.processes.observe(key);
                    admitted.insert(key);
                }
            }
        }
        if let Some(python) = &mut self.python {
            for &key in &admitted {
                python.process_new(&self.sampler, key, &self.processes);
            }
            self.notes.extend(python.take_notes());
        }
        for event in events {
            match event {
                ProcessEvent::New { tgid, incarnation } => {
                    let key = ProcessKey::new(tgid, incarnation);
                    if let (Some(unwind), true) = (&mut self.unwind, admitted.contains(&key)) {
                        unwind.load_process(&mut self.sampler, key, &self.processes);
                    }
                }
                ProcessEvent::MappingsChanged { tgid, incarnation } => {
                    if let Some(unwind) = &mut self.unwind {
                        let key = ProcessKey::new(tgid, incarnation);
                        unwind.mappings_changed(&mut self.sampler, key, &mut self.processes);
                    }
                }
                ProcessEvent::Gone { tgid, incarnation } => {
                    let key = ProcessKey::new(tgid, incarnation);
                    filter.ended(key);
                    if let Some(unwind) = &mut self.unwind {
                        unwind.process_gone(&mut self.sampler, key);
                    }
                }
            }
        }
        if let Some(unwind) = &mut self.unwind {
            unwind.poll(&mut self.sampler, &self.processes);
        }
        if let Some(python) = &mut self.python {
            python.look(&self.sampler, false);
        }
    }

    /// The BPF counters so far, without draining.
    pub fn live_stats(&self) -> anyhow::Result<SampleStats> {
        Ok(self.sampler.live_stats()?)
    }

    /// Reads and clears the samples aggregated since the last drain.
    pub fn drain_window(&mut self) -> anyhow::Result<Window> {
        if let Some(python) = &mut self.python {
            // Names for the Python stacks sampled since the last look,
            // while their processes may still be alive.
            python.look(&self.sampler, true);
        }
        let window = self
            .sampler
            .drain_window()
            .context("failed to read the window's samples")?;
        if let Some(python) = &mut self.python {
            python.window_drained();
        }
        Ok(window)
    }

    /// Symbolizes a drained window's samples with what the session knows
    /// of their processes.
    pub fn symbolize(&mut self, raw: &[RawSample], symbolizer: &mut Symbolizer) -> Vec<Sample> {
        symbolize_samples(raw, &mut self.processes, symbolizer, self.python.as_mut())
    }

    /// The Python processes, when Python frames are walked.
    pub fn python(&self) -> Option<&PythonProcesses> {
        self.python.as_ref()
    }

    /// Takes what the user should be told about the session so far.
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// Ends the session: detaches the sampler and hands back what it saw.
    pub fn finish(self) -> (ProcessTable, Option<PythonProcesses>) {
        (self.processes, self.python)
    }

    /// The processes seen so far.
    pub fn processes(&self) -> &ProcessTable {
        &self.processes
    }

    /// The processes seen so far, to capture and refresh while symbolizing.
    pub fn processes_mut(&mut self) -> &mut ProcessTable {
        &mut self.processes
    }

    /// The unwind table manager, when table unwinding is on.
    pub fn unwind(&self) -> Option<&UnwindManager> {
        self.unwind.as_ref()
    }

    /// Forgets a process: its entry now, its unwind tables with the next
    /// events.
    pub fn forget(&mut self, key: ProcessKey) {
        self.processes.forget(key);
        self.unwind_forgotten.push(key);
        if let Some(python) = &mut self.python {
            python.forget(&self.sampler, key);
        }
    }

    /// A process was sampled before its unwind tables were loaded (its
    /// announcement was dropped): they are loaded with the next events.
    pub fn load_tables_later(&mut self, key: ProcessKey) {
        if self.unwind.as_ref().is_some_and(|u| !u.knows(key)) && !self.unwind_missing.contains(&key) {
            self.unwind_missing.push(key);
        }
    }
}
