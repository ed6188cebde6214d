//! taskprof: a CPU profiler for Linux built on BPF.
//!
//! Data flows sample → stack → symbol → profile:
//! - [`bpf`] loads the sampler and reads aggregated samples and stacks;
//! - [`process`] captures each process's mappings and files while it lives;
//! - [`symbolize`] turns addresses into functions, files and lines;
//! - [`pprof`] builds profiles, folded stacks and flame graphs;
//! - [`oneshot`] is `taskprof profile`, built from the modules above.

pub mod agent;
pub mod agent_config;
pub mod bpf;
pub mod cli;
pub mod config;
pub mod containers;
pub mod http;
pub mod kubernetes;
pub mod logging;
pub mod metrics;
pub mod oneshot;
pub mod pprof;
pub mod process;
pub mod profile;
pub mod python;
pub mod symbolize;
pub mod unwind;
pub mod upload;
pub mod window;
