//! Loading, attaching and reading the sampler, with errors that say what
//! is missing: a privilege, a perf_event_paranoid setting, BTF, or a
//! program the verifier rejected.

use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, PrintLevel, RingBuffer, RingBufferBuilder};

use super::features::{Features, Forced, UserRegs, Variant, Walk};
use super::perf_events::{online_cpus, open_cpu_clock};
use super::skel::{ProfilerSkel, ProfilerSkelBuilder};
use super::stacks::StackReader;
use super::{types, PythonStack, RawSample, SampleStats};

/// What the sampler samples and how its maps are sized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplerConfig {
    /// Samples per second per CPU.
    pub frequency_hz: u64,
    /// Thread groups to sample; empty samples every task.
    pub tgids: Vec<u32>,
    /// Capacity of the stacks map (distinct stacks, user and kernel).
    pub stack_map_entries: u32,
    /// Capacity of the counts map (distinct thread/stack combinations).
    pub counts_map_entries: u32,
    /// Include the verifier's log in load errors.
    pub verifier_log: bool,
    /// Walk user stacks with unwind tables (else frame pointers only).
    pub table_unwind: bool,
    /// Keep samples of the idle task (pid 0); else they are only counted.
    pub include_idle: bool,
    /// Where the Python walker finds a thread's `struct pthread` and its
    /// thread-specific values: (offset of the fs base in `task_struct`,
    /// offset of glibc's first block of values). None turns it off.
    pub python: Option<PythonWalkOffsets>,
    /// Fallbacks to use whatever the kernel supports (tests, diagnosis).
    pub forced: Forced,
}

/// The kernel's and glibc's offsets the Python walker needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PythonWalkOffsets {
    /// `task_struct.thread.fsbase`.
    pub task_fsbase: u32,
    /// `struct pthread`'s `specific_1stblock`.
    pub pthread_specific: u32,
}

impl SamplerConfig {
    /// Sizes the maps for `frequency_hz` over `seconds` on `cpus` CPUs, so
    /// that even a profile where every sample is distinct fits. Both maps
    /// allocate on use, so a generous bound costs no memory up front.
    pub fn sized_for(frequency_hz: u64, seconds: u64, cpus: u64) -> SamplerConfig {
        let max_samples = frequency_hz.saturating_mul(seconds.max(1)).saturating_mul(cpus.max(1));
        // Each sample stores at most a user, a kernel and a Python stack.
        let stack_entries = max_samples.saturating_mul(3).clamp(8192, 1 << 20);
        let counts_entries = max_samples.clamp(4096, 1 << 20);
        SamplerConfig {
            frequency_hz,
            tgids: Vec::new(),
            stack_map_entries: stack_entries as u32,
            counts_map_entries: counts_entries as u32,
            verifier_log: false,
            table_unwind: true,
            include_idle: false,
            python: None,
            forced: Forced::default(),
        }
    }
}

/// Why the sampler could not start or be read.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// The process lacks the capabilities BPF profiling needs.
    #[error(
        "taskprof needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load its BPF program; \
         missing: {missing}. Run it as root, or grant them: \
         `sudo setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_dac_read_search,cap_checkpoint_restore,cap_syslog+ep $(which taskprof)`"
    )]
    MissingCapabilities {
        /// The capabilities that are not effective.
        missing: String,
    },
    /// The online CPU list could not be read.
    #[error("failed to read the online CPUs from /sys/devices/system/cpu/online")]
    Cpus(#[source] std::io::Error),
    /// perf_event_open failed.
    // The kernel's error is part of the message, not a source: the hint
    // must come after it, and the chain would print it a second time.
    #[error("failed to open a cpu-clock perf event on CPU {cpu}: {error}. {hint}")]
    PerfEvent {
        /// The CPU.
        cpu: u32,
        /// The kernel's error.
        error: std::io::Error,
        /// What to do about it.
        hint: String,
    },
    /// Opening or loading the BPF object failed.
    // As for `PerfEvent`, libbpf's error is in the message, before the hint.
    #[error("failed to load the BPF sampler: {error}. {hint}{log}")]
    Load {
        /// libbpf's error.
        error: libbpf_rs::Error,
        /// What to do about it.
        hint: String,
        /// The verifier log, when asked for.
        log: String,
    },
    /// Attaching the program to a perf event failed.
    #[error("failed to attach the BPF sampler to the perf event of CPU {cpu}")]
    Attach {
        /// The CPU.
        cpu: u32,
        /// libbpf's error.
        #[source]
        source: libbpf_rs::Error,
    },
    /// Attaching a process-lifecycle tracepoint failed.
    #[error("failed to attach the BPF program `{name}` to its sched tracepoint")]
    AttachTracepoint {
        /// The program.
        name: String,
        /// libbpf's error.
        #[source]
        source: libbpf_rs::Error,
    },
    /// The kernel lacks something the sampler cannot do without.
    #[error("{0}")]
    Kernel(String),
    /// A map could not be configured or read.
    #[error("failed to access BPF map `{map}`")]
    Map {
        /// The map's name.
        map: &'static str,
        /// libbpf's error.
        #[source]
        source: libbpf_rs::Error,
    },
}

/// A loaded and attached sampler. Sampling stops when it is dropped or
/// [`Sampler::stop`] is called; the maps stay readable until drop.
pub struct Sampler {
    skel: ProfilerSkel<'static>,
    links: Vec<Link>,
    ring: RingBuffer<'static>,
    announced: Arc<Mutex<Vec<ProcessEvent>>>,
    generation: u32,
    config: SamplerConfig,
    cpus: Vec<u32>,
    loaded: Loaded,
}

/// How the sampler was loaded on this kernel.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// What the kernel's BPF can do.
    pub features: Features,
    /// The variant loaded.
    pub variant: Variant,
    /// Instructions the verifier processed, from the kernel (5.16+) or
    /// its log.
    pub verified_insns: Option<u64>,
    /// Time the kernel took to load (verify) the programs.
    pub load_time: Duration,
    /// The fallbacks taken because a variant did not load (or was forced),
    /// one line each, for a warning.
    pub fallbacks: Vec<String>,
}

impl Loaded {
    /// `BPF sampler <variant> (<n> instructions verified, loaded in <ms> ms)`,
    /// for summary lines and logs.
    pub fn describe(&self) -> String {
        let verified = self
            .verified_insns
            .map_or_else(|| "unknown".to_string(), |n| n.to_string());
        format!(
            "BPF sampler {} ({verified} instructions verified, loaded in {} ms)",
            self.variant,
            self.load_time.as_millis()
        )
    }
}

/// Hash map sizes when maps must be preallocated (kernels before 6.1,
/// where perf_event programs cannot use maps that allocate on use): every
/// entry takes memory from the start, so the big maps are capped.
const PREALLOCATED_STACKS: u32 = 32768;
const PREALLOCATED_COUNTS: u32 = 65536;
/// An unwind_process entry is 8 KiB.
const PREALLOCATED_UNWIND_PROCESSES: u32 = 2048;

/// libbpf's messages from the current load, kept for error reports.
static LIBBPF_LOG: Mutex<String> = Mutex::new(String::new());

fn collect_libbpf_log(_level: PrintLevel, msg: String) {
    if let Ok(mut log) = LIBBPF_LOG.lock() {
        // Bounded: a verifier log can run to megabytes.
        if log.len() < 1 << 20 {
            log.push_str(&msg);
        }
    }
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process.
fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

fn check_capabilities() -> Result<(), SamplerError> {
    let Some(caps) = effective_capabilities() else {
        return Ok(()); // cannot tell; let the kernel decide
    };
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(cap, _)| !has(*cap))
        .map(|(_, name)| name)
        .collect();
    Err(SamplerError::MissingCapabilities {
        missing: missing.join(", "),
    })
}

fn perf_event_hint(err: &std::io::Error) -> String {
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    match err.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => format!(
            "kernel.perf_event_paranoid is {paranoid}; grant CAP_PERFMON (or run as root), \
             or lower it with `sysctl kernel.perf_event_paranoid=1`"
        ),
        Some(libc::ENOENT) | Some(libc::EOPNOTSUPP) => {
            "this kernel does not provide the software cpu-clock event (CONFIG_PERF_EVENTS)".into()
        }
        Some(libc::EMFILE) => "too many open files; raise the limit with `ulimit -n`".into(),
        _ => format!("kernel.perf_event_paranoid is {paranoid}"),
    }
}

fn load_hint(err: &libbpf_rs::Error, log: &str, verifier_log: bool) -> String {
    let mut hint = String::new();
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        hint.push_str(
            "This kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing); \
             taskprof needs a kernel built with CONFIG_DEBUG_INFO_BTF=y. ",
        );
    }
    let verifier = log.contains("processed ") || log.contains("verifier") || log.contains("R1 ");
    match err.kind() {
        libbpf_rs::ErrorKind::PermissionDenied => hint.push_str(
            "The kernel refused the BPF program: run as root or grant CAP_BPF and CAP_PERFMON; \
             in a container also allow the bpf() syscall in its seccomp profile.",
        ),
        _ if verifier && !verifier_log => {
            hint.push_str("The verifier rejected the program; rerun with --verifier-log to see why.")
        }
        _ => hint.push_str("Rerun with --verifier-log for libbpf's full log."),
    }
    hint
}

impl Sampler {
    /// Loads the program, opens a perf event on every online CPU and
    /// attaches to each. Sampling has started when this returns.
    pub fn start(config: SamplerConfig) -> Result<Sampler, SamplerError> {
        let mut sampler = Sampler::load(config)?;
        sampler.attach()?;
        Ok(sampler)
    }

    /// Loads the program and sets up its maps without sampling yet, so
    /// that unwind tables can be loaded before the first sample. Probes
    /// the kernel first and loads the variant it supports; if the table
    /// unwinder cannot load at all, loads the frame-pointer walk instead
    /// (see [`Loaded::fallbacks`] and [`load_attempts`]).
    pub fn load(config: SamplerConfig) -> Result<Sampler, SamplerError> {
        check_capabilities()?;
        let features = Features::probe();
        let variant = Variant::choose(&features, &config.forced).map_err(SamplerError::Kernel)?;
        let mut fallbacks = Vec::new();
        if variant.frame_pointers {
            fallbacks.push(format!(
                "{} forces frame pointers: user stacks follow frame pointers only and Python frames are off",
                super::features::VARIANT_ENV
            ));
        }
        let mut first_error = None;
        for attempt in load_attempts(variant) {
            let attempt_config = if attempt.frame_pointers {
                SamplerConfig {
                    table_unwind: false,
                    python: None,
                    ..config.clone()
                }
            } else {
                config.clone()
            };
            if attempt != variant {
                // Only the first line: with --verifier-log the log follows.
                let why = first_error
                    .as_ref()
                    .map(|err: &SamplerError| err.to_string())
                    .unwrap_or_default();
                let why = why.lines().next().unwrap_or_default();
                fallbacks.push(if attempt.frame_pointers {
                    format!(
                        "the table unwinder could not load on this kernel, so user stacks follow frame pointers \
                         only and Python frames are off ({why})"
                    )
                } else {
                    format!("the bpf_loop sampler could not load on this kernel, so it walks in a bounded loop ({why})")
                });
            }
            match Sampler::load_variant(attempt_config, features, attempt, fallbacks.clone()) {
                Err(err @ SamplerError::Load { .. }) => {
                    tracing::debug!(variant = %attempt, error = %err, "BPF sampler variant did not load");
                    first_error.get_or_insert(err);
                }
                other => return other,
            }
        }
        Err(first_error.unwrap_or_else(|| SamplerError::Kernel("no BPF sampler variant to load".into())))
    }

    fn load_variant(
        config: SamplerConfig,
        features: Features,
        variant: Variant,
        fallbacks: Vec<String>,
    ) -> Result<Sampler, SamplerError> {
        let cpus = online_cpus().map_err(SamplerError::Cpus)?;

        if let Ok(mut log) = LIBBPF_LOG.lock() {
            log.clear();
        }
        libbpf_rs::set_print(Some((PrintLevel::Debug, collect_libbpf_log)));

        let load_error = |source: libbpf_rs::Error| {
            let log = LIBBPF_LOG.lock().map(|l| l.clone()).unwrap_or_default();
            let hint = load_hint(&source, &log, config.verifier_log);
            let log = if config.verifier_log {
                format!("\nlibbpf and verifier log:\n{log}")
            } else {
                String::new()
            };
            SamplerError::Load {
                error: source,
                hint,
                log,
            }
        };

        // The skeleton borrows its object storage for as long as it lives;
        // one small allocation per sampler is leaked to give it 'static.
        let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = ProfilerSkelBuilder::default().open(storage).map_err(load_error)?;
        let map_error = |map: &'static str| move |source| SamplerError::Map { map, source };
        let (mut stack_entries, mut counts_entries) = (config.stack_map_entries, config.counts_map_entries);
        if variant.preallocated {
            stack_entries = stack_entries.min(PREALLOCATED_STACKS);
            counts_entries = counts_entries.min(PREALLOCATED_COUNTS);
            for (map, name) in [
                (&mut open.maps.stacks0, "stacks"),
                (&mut open.maps.stacks1, "stacks"),
                (&mut open.maps.counts0, "counts"),
                (&mut open.maps.counts1, "counts"),
                (&mut open.maps.python_processes, "python_processes"),
                (&mut open.maps.unwind_processes, "unwind_processes"),
            ] {
                map.set_map_flags(0).map_err(map_error(name))?;
            }
            open.maps
                .unwind_processes
                .set_max_entries(PREALLOCATED_UNWIND_PROCESSES)
                .map_err(map_error("unwind_processes"))?;
        }
        for map in [&mut open.maps.stacks0, &mut open.maps.stacks1] {
            map.set_max_entries(stack_entries).map_err(map_error("stacks"))?;
        }
        for map in [&mut open.maps.counts0, &mut open.maps.counts1] {
            map.set_max_entries(counts_entries).map_err(map_error("counts"))?;
        }
        let filter_len = (config.tgids.len() as u32).max(1);
        open.maps
            .tgid_filter
            .set_max_entries(filter_len)
            .map_err(map_error("tgid_filter"))?;
        if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
            rodata.filter_tgids = !config.tgids.is_empty();
            rodata.table_unwind = config.table_unwind;
            rodata.have_task_pt_regs = variant.user_regs == UserRegs::TaskPtRegs;
            if variant.user_regs == UserRegs::TaskStack {
                rodata.task_stack_offset = super::python::task_stack_offset().map_err(SamplerError::Kernel)?;
            }
            rodata.include_idle = config.include_idle;
            if let Some(python) = config.python {
                rodata.task_fsbase_offset = python.task_fsbase;
                rodata.pthread_specific_offset = python.pthread_specific;
            }
        }
        // One sampler program is loaded: the other's instructions would
        // be checked, and fail, even where nothing reaches them.
        let bounded = variant.walk == Walk::BoundedLoop;
        open.progs.sample.set_autoload(!bounded);
        open.progs.sample_bounded.set_autoload(bounded);
        // The verifier's statistics (BPF_LOG_STATS) give the instruction
        // count on kernels without fdinfo's verified_insns (before 5.16).
        let program = if bounded {
            &mut open.progs.sample_bounded
        } else {
            &mut open.progs.sample
        };
        // With --verifier-log, the instructions too (1), so a rejection
        // shows its path.
        program.set_log_level(if config.verifier_log { 1 | 4 } else { 4 });
        let load_started = std::time::Instant::now();
        let skel = open.load().map_err(load_error)?;
        let load_time = load_started.elapsed();
        let log = LIBBPF_LOG.lock().map(|l| l.clone()).unwrap_or_default();
        libbpf_rs::set_print(None);
        let loaded = Loaded {
            features,
            variant,
            verified_insns: program_info(sample_program(&skel, variant), "verified_insns:")
                .or_else(|| verified_from_log(&log)),
            load_time,
            fallbacks,
        };
        tracing::debug!(
            variant = %variant,
            features = %features.describe(),
            verified_insns = loaded.verified_insns,
            load_ms = load_time.as_millis() as u64,
            "BPF program loaded"
        );

        for tgid in &config.tgids {
            skel.maps
                .tgid_filter
                .update(&tgid.to_ne_bytes(), &[1u8], MapFlags::ANY)
                .map_err(map_error("tgid_filter"))?;
        }

        let announced = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&announced);
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&skel.maps.process_events, move |bytes: &[u8]| {
                if let Some(event) = super::abi::read::<types::process_event>(bytes) {
                    let (tgid, incarnation) = (event.tgid, event.incarnation);
                    let event = match types::process_event_kind(event.kind) {
                        types::process_event_kind::PROCESS_NEW => ProcessEvent::New { tgid, incarnation },
                        types::process_event_kind::PROCESS_MAPPINGS_CHANGED => {
                            ProcessEvent::MappingsChanged { tgid, incarnation }
                        }
                        _ => ProcessEvent::Gone { tgid, incarnation },
                    };
                    if let Ok(mut list) = sink.lock() {
                        list.push(event);
                    }
                }
                0
            })
            .map_err(map_error("process_events"))?;
        let ring = builder.build().map_err(map_error("process_events"))?;

        // Exit and exec are tracked from now on, so that tables loaded
        // before sampling starts are dropped if their process changes.
        let mut links = Vec::with_capacity(2);
        for prog in [&skel.progs.process_exit, &skel.progs.process_exec] {
            links.push(prog.attach().map_err(|source| SamplerError::AttachTracepoint {
                name: prog.name().to_string_lossy().into_owned(),
                source,
            })?);
        }
        Ok(Sampler {
            skel,
            links,
            ring,
            announced,
            generation: 0,
            config,
            cpus,
            loaded,
        })
    }

    /// How the sampler was loaded: the variant, its features and cost.
    pub fn loaded(&self) -> &Loaded {
        &self.loaded
    }

    /// Attaches a cpu-clock perf event on every CPU: sampling starts.
    pub fn attach(&mut self) -> Result<(), SamplerError> {
        let skel = &self.skel;
        let config = &self.config;
        let cpus = self.cpus.clone();
        let mut links = Vec::with_capacity(cpus.len());
        for cpu in cpus {
            let fd = open_cpu_clock(cpu, config.frequency_hz).map_err(|source| {
                let hint = perf_event_hint(&source);
                SamplerError::PerfEvent {
                    cpu,
                    error: source,
                    hint,
                }
            })?;
            let link = sample_program(skel, self.loaded.variant)
                .attach_perf_event(fd.as_raw_fd())
                .map_err(|source| SamplerError::Attach { cpu, source })?;
            // The link now owns the perf event and closes it on detach.
            let _ = fd.into_raw_fd();
            links.push(link);
        }

        self.links.extend(links);
        Ok(())
    }

    pub(super) fn unwind_tables_map(&self) -> &libbpf_rs::Map<'static> {
        &self.skel.maps.unwind_tables
    }

    pub(super) fn python_processes_map(&self) -> &libbpf_rs::Map<'static> {
        &self.skel.maps.python_processes
    }

    pub(super) fn python_active_map(&self) -> &libbpf_rs::Map<'static> {
        &self.skel.maps.python_active
    }

    pub(super) fn unwind_processes_map(&self) -> &libbpf_rs::Map<'static> {
        &self.skel.maps.unwind_processes
    }

    /// The configuration the sampler was started with.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Process events since the last call: thread groups sampled for the
    /// first time, and incarnations that ended. Waits up to `timeout` for
    /// a new process; other events do not end the wait.
    pub fn process_events(&mut self, timeout: Duration) -> Vec<ProcessEvent> {
        // A poll error is EINTR from a signal; the events stay queued.
        let _ = self.ring.poll(timeout);
        // Events that do not wake the reader (exits, changed mappings; see
        // send_event in bpf/profiler.bpf.c) are read here, whether or not
        // the poll was woken.
        let _ = self.ring.consume();
        self.announced
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    /// Stops sampling: detaches the programs, which closes the perf events.
    /// The maps stay readable.
    pub fn stop(&mut self) {
        self.links.clear();
    }

    /// Counters of the generation being filled now (for progress reports).
    pub fn live_stats(&self) -> Result<SampleStats, SamplerError> {
        self.generation_stats(self.generation)
    }

    fn generation_stats(&self, generation: u32) -> Result<SampleStats, SamplerError> {
        let stat_max = types::stat_index::STAT_MAX.0;
        let mut counters = vec![0u64; stat_max as usize];
        for (index, slot) in counters.iter_mut().enumerate() {
            let key = (generation * stat_max + index as u32).to_ne_bytes();
            let per_cpu = self
                .skel
                .maps
                .stats
                .lookup_percpu(&key, MapFlags::ANY)
                .map_err(|source| SamplerError::Map { map: "stats", source })?
                .unwrap_or_default();
            *slot = per_cpu
                .iter()
                .filter_map(|bytes| bytes.get(..8))
                .map(|bytes| u64::from_ne_bytes(bytes.try_into().unwrap_or([0; 8])))
                .sum();
        }
        Ok(SampleStats::from_counters(&counters))
    }

    /// The kernel's run statistics for the BPF program: total run time in
    /// nanoseconds and run count. They stay zero unless the sysctl
    /// `kernel.bpf_stats_enabled` is 1.
    pub fn program_run_stats(&self) -> Option<(u64, u64)> {
        let program = sample_program(&self.skel, self.loaded.variant);
        Some((
            program_info(program, "run_time_ns:")?,
            program_info(program, "run_cnt:")?,
        ))
    }

    /// Ends the current window: switches the BPF program to the other
    /// generation of maps, waits until no program can still be writing to
    /// the old one, then reads and clears it. Every sample lands in exactly
    /// one window: the generation is read once per program run, and the
    /// old generation is only read after every run that saw it has ended.
    pub fn drain_window(&mut self) -> Result<Window, SamplerError> {
        let old = self.generation;
        let new = old ^ 1;
        {
            let bss = self
                .skel
                .maps
                .bss_data
                .as_deref_mut()
                .ok_or_else(|| SamplerError::Map {
                    map: ".bss",
                    source: libbpf_rs::Error::from_raw_os_error(libc::ENOENT),
                })?;
            // SAFETY: `generation` lives in the mmapped .bss shared with the
            // BPF program; a volatile store makes the write visible to it.
            unsafe { std::ptr::write_volatile(&mut bss.generation, new) };
        }
        self.generation = new;
        // A perf_event program runs for microseconds with preemption off;
        // after this pause none can still hold the old generation.
        std::thread::sleep(GENERATION_GRACE);

        let (counts, stacks) = match old {
            0 => (&self.skel.maps.counts0, &self.skel.maps.stacks0),
            _ => (&self.skel.maps.counts1, &self.skel.maps.stacks1),
        };
        let samples = read_samples(counts, stacks)?;
        let stats = self.generation_stats(old)?;

        clear_map(counts, "counts")?;
        clear_map(stacks, "stacks")?;
        let stat_max = types::stat_index::STAT_MAX.0;
        let zeros = vec![
            0u8.to_ne_bytes().repeat(8);
            libbpf_rs::num_possible_cpus().map_err(|source| SamplerError::Map { map: "stats", source })?
        ];
        for index in 0..stat_max {
            let key = (old * stat_max + index).to_ne_bytes();
            self.skel
                .maps
                .stats
                .update_percpu(&key, &zeros, MapFlags::ANY)
                .map_err(|source| SamplerError::Map { map: "stats", source })?;
        }
        Ok(Window { samples, stats })
    }
}

impl Sampler {
    /// The Python stacks of the window in progress that `seen` does not
    /// hold yet, as (tgid, incarnation, frames); each is added to `seen`.
    /// Python frames are named from the process's memory, so they are
    /// looked at while the window runs, before their process can exit.
    pub fn new_python_stacks(&self, seen: &mut rustc_hash::FxHashSet<(u32, u32, u64)>) -> Vec<(u32, u32, PythonStack)> {
        let (counts, stacks) = match self.generation {
            0 => (&self.skel.maps.counts0, &self.skel.maps.stacks0),
            _ => (&self.skel.maps.counts1, &self.skel.maps.stacks1),
        };
        let stacks = StackReader::new(stacks);
        let mut found = Vec::new();
        // In batches: one system call per thousand keys, where walking the
        // keys one by one took one per key, every look (5 a second), and
        // doubled the agent's CPU with Python on. A look is best effort: a
        // stack a failed batch misses is named when the window is drained.
        let Ok(entries) = counts.lookup_batch(LOOK_BATCH, MapFlags::ANY, MapFlags::ANY) else {
            return found;
        };
        for (key_bytes, _) in entries {
            let Some(key) = super::abi::read::<types::sample_key>(&key_bytes) else {
                continue;
            };
            if key.python_stack_id < types::stack_status::STACK_ID_MIN.0 as u64
                || !seen.insert((key.tgid, key.incarnation, key.python_stack_id))
            {
                continue;
            }
            found.push((key.tgid, key.incarnation, stacks.python(&key)));
        }
        found
    }
}

/// The variants to try, in order, starting from the one the probes chose:
/// a verifier can still reject a variant its kernel's features allow, so
/// the bpf_loop walk falls back to the bounded loop, and both to the
/// kernel's frame-pointer walk without the unwinder and the Python walker
/// (in the bounded-loop program, whose unused paths hold no callback).
fn load_attempts(chosen: Variant) -> Vec<Variant> {
    let bounded = Variant {
        walk: Walk::BoundedLoop,
        ..chosen
    };
    let mut attempts = vec![chosen];
    if chosen.walk == Walk::BpfLoop {
        attempts.push(bounded);
    }
    if !chosen.frame_pointers {
        attempts.push(Variant {
            frame_pointers: true,
            ..bounded
        });
    }
    attempts
}

/// The sampling program `variant` loads.
fn sample_program<'a>(skel: &'a ProfilerSkel<'static>, variant: Variant) -> &'a libbpf_rs::ProgramMut<'static> {
    match variant.walk {
        Walk::BpfLoop => &skel.progs.sample,
        Walk::BoundedLoop => &skel.progs.sample_bounded,
    }
}

/// The verifier's `processed N insns` from a load's log.
fn verified_from_log(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|line| {
        let rest = line.split("processed ").nth(1)?;
        let (count, rest) = rest.split_once(' ')?;
        rest.starts_with("insns").then(|| count.parse().ok())?
    })
}

/// A numeric field (`name` with its colon) of the kernel's fdinfo for the
/// sampling program: run statistics, instructions verified.
fn program_info(program: &libbpf_rs::ProgramMut<'static>, name: &str) -> Option<u64> {
    use std::os::fd::AsFd;
    let fd = program.as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Keys read per system call when looking for new Python stacks.
const LOOK_BATCH: u32 = 1024;

/// How long to wait after switching generations before reading the old one.
const GENERATION_GRACE: Duration = Duration::from_millis(10);

/// What one window collected.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Aggregated samples.
    pub samples: Vec<RawSample>,
    /// The BPF program's counters for exactly these samples.
    pub stats: SampleStats,
}

/// A change in the set of sampled processes, reported by the BPF program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProcessEvent {
    /// A thread group was sampled for the first time in this incarnation.
    New {
        /// Thread group id.
        tgid: u32,
        /// Incarnation number.
        incarnation: u32,
    },
    /// The process sampled an address outside every mapping loaded for
    /// unwinding: it mapped more code since.
    MappingsChanged {
        /// Thread group id.
        tgid: u32,
        /// Incarnation number.
        incarnation: u32,
    },
    /// The incarnation ended: the process exited or exec'd.
    Gone {
        /// Thread group id.
        tgid: u32,
        /// Incarnation number.
        incarnation: u32,
    },
}

fn clear_map(map: &libbpf_rs::Map<'_>, name: &'static str) -> Result<(), SamplerError> {
    let keys: Vec<Vec<u8>> = map.keys().collect();
    for key in keys {
        match map.delete(&key) {
            Ok(()) => {}
            // Already gone is fine; anything else is an error.
            Err(err) if err.kind() == libbpf_rs::ErrorKind::NotFound => {}
            Err(source) => return Err(SamplerError::Map { map: name, source }),
        }
    }
    Ok(())
}

fn read_samples(counts: &libbpf_rs::Map<'_>, stacks: &libbpf_rs::Map<'_>) -> Result<Vec<RawSample>, SamplerError> {
    let stacks = StackReader::new(stacks);
    let mut samples = Vec::new();
    for key_bytes in counts.keys() {
        let Some(value) = counts
            .lookup(&key_bytes, MapFlags::ANY)
            .map_err(|source| SamplerError::Map { map: "counts", source })?
        else {
            continue;
        };
        let Some(key) = super::abi::read::<types::sample_key>(&key_bytes) else {
            continue;
        };
        if value.len() < 8 {
            continue;
        }
        let comm_bytes: Vec<u8> = key.comm.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
        samples.push(RawSample {
            tgid: key.tgid,
            tid: key.pid,
            incarnation: key.incarnation,
            comm: String::from_utf8_lossy(&comm_bytes).into_owned(),
            user: stacks.user(&key),
            kernel: stacks.kernel(&key),
            python: stacks.python(&key),
            count: u64::from_ne_bytes(value[..8].try_into().unwrap_or([0; 8])),
        });
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::{load_attempts, verified_from_log};
    use crate::bpf::{Features, Forced, Variant, Walk};

    #[test]
    fn a_rejected_variant_falls_back_to_the_bounded_loop_then_to_frame_pointers() {
        let chosen = Variant::choose(&Features::ALL, &Forced::default()).unwrap();
        let names: Vec<String> = load_attempts(chosen).iter().map(|v| v.to_string()).collect();
        assert_eq!(
            names,
            [
                "bpf_loop+task_pt_regs",
                "bounded_loop+task_pt_regs",
                "bounded_loop+task_pt_regs+frame_pointers"
            ]
        );
        let bounded = Variant {
            walk: Walk::BoundedLoop,
            ..chosen
        };
        let bounded_fp = Variant {
            frame_pointers: true,
            ..bounded
        };
        assert_eq!(load_attempts(bounded), [bounded, bounded_fp]);
        let forced_fp = Variant {
            frame_pointers: true,
            ..chosen
        };
        assert_eq!(load_attempts(forced_fp), [forced_fp, bounded_fp]);
    }

    #[test]
    fn the_verifier_instruction_count_is_read_from_its_statistics_line() {
        let log = "libbpf: prog 'sample_bounded': -- BEGIN PROG LOAD LOG --\n\
                   func#1 @94\n\
                   processed 9356 insns (limit 1000000) max_states_per_insn 4 total_states 512 peak_states 498 mark_read 41\n\
                   -- END PROG LOAD LOG --\n";
        assert_eq!(verified_from_log(log), Some(9356));
        assert_eq!(verified_from_log("processed all maps\n"), None);
        assert_eq!(verified_from_log(""), None);
    }
}
