//! Output formats: pprof (the generated `perftools.profiles` types plus a
//! builder that interns strings, mappings, locations and functions), and
//! folded stacks with the flame graph drawn from them.

mod builder;
mod folded;

/// The pprof schema, generated from `proto/profile.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/perftools.profiles.rs"));
}

pub use builder::{build_profile, decode_gzip, encode_gzip, ProfileMeta};
pub use folded::{folded_lines, write_flamegraph};
