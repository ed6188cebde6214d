//! Python frames: what taskprof knows of CPython 3.8–3.13 to find the
//! interpreter in a process ([`detect`]), walk its frames ([`offsets`],
//! whose thread-state and frame fields the BPF walker takes) and name
//! them in userspace ([`offsets`]' code-object and string fields, and
//! [`linetable`] for the line of an instruction).
//!
//! Nothing here touches BPF or keeps state: it is the per-version
//! knowledge and the per-process detection that the loader and the namer
//! build on.

pub mod detect;
pub mod linetable;
pub mod merge;
pub mod namer;
pub mod offsets;
pub mod processes;
