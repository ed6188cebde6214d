//! taskprof's integration tests, in one binary with one module per
//! behaviour. They run the real `taskprof` binary (as root: they load BPF)
//! against fixtures the tests build themselves (`tests/fixtures/`), and
//! stand-in backends and API servers from [`common`].

mod common;

mod agent_backend_failures;
mod agent_capabilities;
mod agent_config_errors;
mod agent_crash_safety;
mod agent_kubernetes;
mod agent_memory;
mod agent_otlp;
mod agent_receivers;
mod agent_series;
mod agent_spool;
mod agent_unwind;
mod agent_upload;
mod hostile_processes;
mod kubernetes_metadata;
mod profile_cli_errors;
mod profile_idle;
mod profile_jit;
mod profile_output_formats;
mod profile_pprof_format;
mod profile_pprof_tool;
mod profile_python;
mod profile_signals;
mod profile_stacks;
mod profile_unwind;
mod profile_variants;
mod python_offsets;
mod sampler_events;
