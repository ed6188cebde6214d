//! Stack unwinding without frame pointers: unwind tables built from each
//! mapped file's `.eh_frame`/`.debug_frame` ([`table`]), loaded into BPF
//! maps for the processes being sampled ([`manager`]), where the BPF
//! program walks them.

pub mod elf;
pub mod manager;
pub mod table;

#[cfg(test)]
pub(crate) fn test_libc() -> &'static str {
    "/usr/lib/x86_64-linux-gnu/libc.so.6"
}
