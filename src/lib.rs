//! taskprof: a CPU profiler for Linux built on BPF.
//!
//! The crate is laid out as its data flows, sample → stack → symbol →
//! profile → delivery. [`bpf`] loads the sampler and reads aggregated
//! samples with their user and kernel stacks; [`unwind`] builds the tables
//! that let BPF walk user stacks without frame pointers; [`process`]
//! captures each process's mappings and files while it lives; [`symbolize`]
//! turns addresses into functions, files and lines and joins them with the
//! samples; [`pprof`] builds profiles, folded stacks and flame graphs, and
//! [`otlp`] the same windows as OpenTelemetry profiles; and
//! `upload` delivers them (with retries and a spool), labelled by
//! [`kubernetes`] metadata where there is some. A `session` (one loaded
//! sampler, the processes it saw and their unwind tables) is what the two
//! modes share: [`oneshot`] is `taskprof profile`, one profile written to
//! a file, and [`agent`] is `taskprof agent`, which cuts sampling into
//! windows and delivers each. [`cli`] holds the flags of both; `util` the
//! small helpers several modules need.

pub mod agent;
pub mod bpf;
pub mod cli;
pub mod kubernetes;
pub mod oneshot;
pub mod otlp;
pub mod pprof;
pub mod process;
pub mod python;
mod session;
pub mod symbolize;
pub mod unwind;
mod upload;
mod util;
