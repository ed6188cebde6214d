//! Byte views of the BPF structs, the one place their safety argument is
//! made. Rust never re-declares a BPF struct: the skeleton generates them
//! from `bpf/profiler.h`, and the constants Rust shares with the C are
//! checked against the skeleton's at compile time.

use super::types;
use crate::unwind::manager::{MAX_MAPPINGS, MAX_ROWS, MAX_TABLES, PRELOADED_INCARNATION, ROW_BYTES};
use crate::unwind::table::{SIGNAL_RBP_OFFSET, SIGNAL_RIP_OFFSET, SIGNAL_RSP_OFFSET};

const _: () = assert!(std::mem::size_of::<types::unwind_row>() as u64 == ROW_BYTES);
const _: () = assert!(types::unwind_limit::TASKPROF_MAX_UNWIND_MAPPINGS.0 as usize == MAX_MAPPINGS);
const _: () = assert!(types::unwind_limit::TASKPROF_MAX_UNWIND_TABLES.0 == MAX_TABLES);
const _: () = assert!(MAX_ROWS == (1 << types::unwind_limit::TASKPROF_ROW_SEARCH_STEPS.0) - 1);
const _: () = assert!(MAX_MAPPINGS < 1 << types::unwind_limit::TASKPROF_MAPPING_SEARCH_STEPS.0);
const _: () = assert!(types::unwind_limit::TASKPROF_PRELOADED_INCARNATION.0 == PRELOADED_INCARNATION);
const _: () = assert!(types::unwind_limit::TASKPROF_UCONTEXT_RBP.0 as i64 == SIGNAL_RBP_OFFSET);
const _: () = assert!(types::unwind_limit::TASKPROF_UCONTEXT_RSP.0 as i64 == SIGNAL_RSP_OFFSET);
const _: () = assert!(types::unwind_limit::TASKPROF_UCONTEXT_RIP.0 as i64 == SIGNAL_RIP_OFFSET);

/// A struct of `bpf/profiler.h` as the skeleton generates it.
///
/// # Safety
///
/// Implement it only for `repr(C)` structs made of integers and arrays of
/// integers, with every padding byte an explicit field (as profiler.h lays
/// them out): then every bit pattern is a valid value, and no byte of one
/// is uninitialised.
pub(super) unsafe trait Plain: Copy {}

// SAFETY: each is generated from profiler.h, integers only, padded explicitly.
unsafe impl Plain for types::process_event {}
// SAFETY: as above.
unsafe impl Plain for types::sample_key {}
// SAFETY: as above.
unsafe impl Plain for types::stack_trace {}
// SAFETY: as above.
unsafe impl Plain for types::unwind_process {}
// SAFETY: as above.
unsafe impl Plain for types::python_process {}

/// Reads a `T` from the start of `bytes` (a map value or ring record);
/// `None` if there are too few bytes.
pub(super) fn read<T: Plain>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: `bytes` holds at least `size_of::<T>()` bytes (checked
    // above), any bit pattern is a valid `T` (`Plain`), and read_unaligned
    // needs no alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// The bytes of `value`, to write into a map.
pub(super) fn bytes<T: Plain>(value: &T) -> &[u8] {
    // SAFETY: `value` is `size_of::<T>()` initialised bytes: `Plain` types
    // have no padding the kernel would read uninitialised.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}
