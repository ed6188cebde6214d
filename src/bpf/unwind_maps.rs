//! The sampler's side of the unwind tables: writing rows, tables and
//! process mappings into the BPF maps, in the layouts of `bpf/profiler.h`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use libbpf_rs::{MapCore, MapFlags};

use super::loader::Sampler;
use super::types;
use crate::unwind::manager::{TableRef, UnwindMapping, UnwindMaps, MAX_MAPPINGS, ROW_BYTES};
use crate::unwind::table::{CfaRule, RbpRule, UnwindTable};

pub(super) use super::abi::bytes as as_bytes;

/// A row in the BPF layout, its pc relative to the table's base.
fn bpf_row(row: &crate::unwind::table::Row, base: u64) -> types::unwind_row {
    use types::unwind_cfa_kind as c;
    use types::unwind_rbp_kind as r;
    let (cfa_kind, cfa_offset) = match row.cfa {
        CfaRule::RspOffset(offset) => (c::CFA_RSP, offset),
        CfaRule::RbpOffset(offset) => (c::CFA_RBP, offset),
        CfaRule::Plt { threshold } => (c::CFA_PLT, i32::from(threshold)),
        CfaRule::RbpDeref(offset) => (c::CFA_RBP_DEREF, offset),
        CfaRule::Signal => (c::CFA_SIGNAL, 0),
        CfaRule::Root => (c::CFA_ROOT, 0),
        CfaRule::Unsupported => (c::CFA_UNSUPPORTED, 0),
        CfaRule::NoInfo => (c::CFA_NO_INFO, 0),
    };
    let (rbp_kind, rbp_offset) = match row.rbp {
        RbpRule::Unchanged => (r::RBP_UNCHANGED, 0),
        RbpRule::CfaOffset(offset) => (r::RBP_CFA_OFFSET, offset),
        RbpRule::RbpOffset(offset) => (r::RBP_RBP_OFFSET, offset),
        RbpRule::Unsupported => (r::RBP_UNSUPPORTED, 0),
    };
    types::unwind_row {
        pc: (row.address - base) as u32,
        cfa_kind: cfa_kind.0 as u8,
        rbp_kind: rbp_kind.0 as u8,
        rbp_offset,
        cfa_offset,
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
/// Rows written to a table's map per `bpf_map_update_batch`.
const ROWS_PER_WRITE: usize = 16384;

fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

impl UnwindMaps for Sampler {
    fn load_table(&mut self, id: u32, table: &UnwindTable) -> Result<(), String> {
        let base = table.base();
        let count = u32::try_from(table.rows.len()).map_err(|_| "too many rows".to_string())?;
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            map_flags: libbpf_sys::BPF_F_INNER_MAP,
            ..Default::default()
        };
        let name = c"taskprof_rows";
        // SAFETY: plain bpf(BPF_MAP_CREATE) with valid pointers; a
        // non-negative result is a new file descriptor that we own.
        let fd = unsafe {
            libbpf_sys::bpf_map_create(
                libbpf_sys::BPF_MAP_TYPE_ARRAY,
                name.as_ptr(),
                4,
                ROW_BYTES as u32,
                count.max(1),
                &opts,
            )
        };
        if fd < 0 {
            return Err(format!(
                "creating a rows map: {}",
                std::io::Error::from_raw_os_error(-fd)
            ));
        }
        // SAFETY: `fd` was just returned by the kernel and is owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let batch = libbpf_sys::bpf_map_batch_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
            ..Default::default()
        };
        // Written a chunk at a time: a large library's rows in BPF form all
        // at once would be another 16 bytes per row of taskprof's memory
        // (18 MiB for librustc_driver) on top of the table itself.
        let mut keys: Vec<u32> = Vec::with_capacity(ROWS_PER_WRITE);
        let mut rows: Vec<types::unwind_row> = Vec::with_capacity(ROWS_PER_WRITE);
        for (chunk_index, chunk) in table.rows.chunks(ROWS_PER_WRITE).enumerate() {
            let first = (chunk_index * ROWS_PER_WRITE) as u32;
            keys.clear();
            keys.extend(first..first + chunk.len() as u32);
            rows.clear();
            rows.extend(chunk.iter().map(|row| bpf_row(row, base)));
            let mut written = chunk.len() as u32;
            // SAFETY: keys and rows both hold `written` elements of the
            // map's key and value sizes.
            let err = unsafe {
                libbpf_sys::bpf_map_update_batch(
                    fd.as_raw_fd(),
                    keys.as_ptr().cast(),
                    rows.as_ptr().cast(),
                    &mut written,
                    &batch,
                )
            };
            if err != 0 || written != chunk.len() as u32 {
                return Err(format!(
                    "writing {count} rows: {}",
                    std::io::Error::from_raw_os_error(-err)
                ));
            }
        }
        let value = fd.as_raw_fd().to_ne_bytes();
        self.unwind_tables_map()
            .update(&id.to_ne_bytes(), &value, MapFlags::ANY)
            .map_err(|err| format!("adding table {id}: {err}"))?;
        // The outer map holds its own reference; `fd` closes here.
        Ok(())
    }

    fn unload_table(&mut self, id: u32) {
        let _ = self.unwind_tables_map().delete(&id.to_ne_bytes());
    }

    fn set_process(&mut self, tgid: u32, incarnation: u32, mappings: &[UnwindMapping]) -> Result<(), String> {
        let mut value = Box::<types::unwind_process>::default();
        value.incarnation = incarnation;
        // As if the program had just asked: a pc that is still outside every
        // mapping (a bad frame) asks again only after a second, not at once.
        value.refresh_requested_ns = monotonic_ns();
        value.count = mappings.len().min(MAX_MAPPINGS) as u32;
        for (slot, mapping) in value.mappings.iter_mut().zip(mappings) {
            let (table_id, row_count) = match mapping.table {
                TableRef::Loaded(id, rows) => (id, rows),
                TableRef::Pending => (types::unwind_limit::TASKPROF_UNWIND_PENDING.0, 0),
                TableRef::None => (types::unwind_limit::TASKPROF_UNWIND_NO_TABLE.0, 0),
            };
            *slot = types::unwind_mapping {
                start: mapping.start,
                end: mapping.end,
                bias: mapping.bias,
                table_id,
                row_count,
            };
        }
        self.unwind_processes_map()
            .update(&tgid.to_ne_bytes(), as_bytes(&*value), MapFlags::ANY)
            .map_err(|err| err.to_string())
    }

    fn remove_process(&mut self, tgid: u32) {
        let _ = self.unwind_processes_map().delete(&tgid.to_ne_bytes());
    }
}
