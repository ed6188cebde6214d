//! What the BPF Python walker needs from outside the profiled process: the
//! offset of the user fs base in the kernel's `task_struct` (from the
//! kernel's BTF), the offset of glibc's thread-specific values in its
//! `struct pthread` (measured on taskprof's own thread), and the
//! per-process entries of `python_processes`. The kernel's BTF also gives
//! the sampler `task_struct.stack` on kernels without `bpf_task_pt_regs`.

use std::ffi::OsStr;
use std::os::unix::fs::FileExt;

use libbpf_rs::btf::types::{Composite, MemberAttr};
use libbpf_rs::btf::{Btf, BtfType};
use libbpf_rs::{MapCore, MapFlags};

use super::{types, Sampler};

/// Where the kernel describes its types.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The byte offset of `thread.fsbase` in the kernel's `struct task_struct`:
/// where a task's user fs base, and so glibc's `struct pthread` of the
/// thread, is kept while the task is in the kernel.
pub fn task_fsbase_offset() -> Result<u32, String> {
    let btf =
        Btf::from_path(KERNEL_BTF).map_err(|err| format!("cannot read the kernel's BTF at {KERNEL_BTF}: {err}"))?;
    let thread = member_offset(&btf, "task_struct", "thread")?;
    let fsbase = member_offset(&btf, "thread_struct", "fsbase")?;
    Ok(thread + fsbase)
}

/// The byte offset of `stack` in the kernel's `struct task_struct`: where
/// the sampler finds a task's kernel stack, and on it the user registers,
/// on kernels without `bpf_task_pt_regs` (see src/bpf/features.rs).
pub fn task_stack_offset() -> Result<u32, String> {
    let btf =
        Btf::from_path(KERNEL_BTF).map_err(|err| format!("cannot read the kernel's BTF at {KERNEL_BTF}: {err}"))?;
    member_offset(&btf, "task_struct", "stack")
}

/// The byte offset of the member `member` of `struct name`, looking into
/// anonymous structs and unions.
fn member_offset(btf: &Btf<'_>, name: &str, member: &str) -> Result<u32, String> {
    let ty: BtfType<'_> = btf
        .type_by_name(name)
        .ok_or_else(|| format!("the kernel's BTF has no struct {name}"))?;
    find_member(btf, ty, member).ok_or_else(|| format!("the kernel's struct {name} has no member {member}"))
}

fn find_member(btf: &Btf<'_>, ty: BtfType<'_>, member: &str) -> Option<u32> {
    let composite = Composite::try_from(ty.skip_mods_and_typedefs()).ok()?;
    for field in composite.iter() {
        let bits = match field.attr {
            MemberAttr::Normal { offset } => offset,
            MemberAttr::BitField { .. } => continue,
        };
        match field.name {
            Some(name) if name == OsStr::new(member) => return Some(bits / 8),
            Some(name) if !name.is_empty() => {}
            _ => {
                let inner: BtfType<'_> = btf.type_by_id(field.ty)?;
                if let Some(offset) = find_member(btf, inner, member) {
                    return Some(bits / 8 + offset);
                }
            }
        }
    }
    None
}

/// The byte offset of `specific_1stblock` in glibc's `struct pthread`, the
/// first 32 thread-specific values as {sequence, value} pairs, found by
/// setting two values on this thread and looking for them under its fs
/// base (which on x86_64 glibc points at the thread's `struct pthread`).
/// None when they are not found (a libc other than glibc).
pub fn pthread_specific_offset() -> Option<u32> {
    const MARKERS: [u64; 2] = [0x7461_736b_7072_6f66, 0x6f66_7072_6b73_6174];
    let mut keys = [0 as libc::pthread_key_t; 2];
    for key in &mut keys {
        // SAFETY: pthread_key_create writes a key into a valid location.
        if unsafe { libc::pthread_key_create(key, None) } != 0 {
            return None;
        }
    }
    let found = (|| {
        for (key, marker) in keys.iter().zip(MARKERS) {
            // The value is only compared, never dereferenced.
            // SAFETY: `key` was created above.
            if unsafe { libc::pthread_setspecific(*key, marker as *const libc::c_void) } != 0 {
                return None;
            }
        }
        let mut fsbase: u64 = 0;
        // SAFETY: ARCH_GET_FS writes the fs base into the u64 passed.
        if unsafe { libc::syscall(libc::SYS_arch_prctl, 0x1003, &mut fsbase as *mut u64) } != 0 {
            return None;
        }
        let mut bytes = vec![0u8; 4096];
        let mem = std::fs::File::open("/proc/self/mem").ok()?;
        mem.read_exact_at(&mut bytes, fsbase).ok()?;
        let word = |at: usize| -> Option<u64> { Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?)) };
        (0..2048usize).step_by(8).find_map(|offset| {
            let holds = |key: libc::pthread_key_t, marker: u64| {
                key < 32 && word(offset + key as usize * 16 + 8) == Some(marker)
            };
            (holds(keys[0], MARKERS[0]) && holds(keys[1], MARKERS[1])).then_some(offset as u32)
        })
    })();
    for key in keys {
        // SAFETY: `key` was created above and is deleted once.
        unsafe { libc::pthread_key_delete(key) };
    }
    found
}

/// How the walker finds one process's Python frames (bpf/profiler.h's
/// `struct python_process`, as offsets the Python side computes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PythonWalk {
    /// The incarnation the entry is for.
    pub incarnation: u32,
    /// `enum python_frame_layout`.
    pub layout: u8,
    /// Address of the `pthread_key_t` holding each thread's PyThreadState.
    pub tss_key_address: u64,
    /// `PyThreadState`'s field leading to the current frame.
    pub tstate_frame: u16,
    /// `_PyCFrame.current_frame`, when `tstate_frame` is `cframe`.
    pub cframe_current_frame: Option<u16>,
    /// `f_back` / `previous`.
    pub frame_back: u16,
    /// `f_code` / `f_executable`.
    pub frame_code: u16,
    /// `f_lasti` / `prev_instr` / `instr_ptr`.
    pub frame_instr: u16,
    /// `is_entry` (3.11) or `owner` (3.12+).
    pub frame_entry: Option<u16>,
}

impl Sampler {
    /// Tells the walker how to find `tgid`'s Python frames.
    pub fn set_python_process(&self, tgid: u32, walk: &PythonWalk) -> Result<(), libbpf_rs::Error> {
        let none = types::python_limit::PYTHON_NO_OFFSET.0 as u16;
        let entry = types::python_process {
            incarnation: walk.incarnation,
            layout: walk.layout,
            tss_key_address: walk.tss_key_address,
            tstate_frame: walk.tstate_frame,
            cframe_current_frame: walk.cframe_current_frame.unwrap_or(none),
            frame_back: walk.frame_back,
            frame_code: walk.frame_code,
            frame_instr: walk.frame_instr,
            frame_entry: walk.frame_entry.unwrap_or(none),
            ..Default::default()
        };
        self.python_processes_map()
            .update(&tgid.to_ne_bytes(), super::unwind_maps::as_bytes(&entry), MapFlags::ANY)?;
        // Samples look in python_processes only from now on (python_active
        // in bpf/python.bpf.h); it stays on, which costs a lookup at most.
        self.python_active_map()
            .update(&0u32.to_ne_bytes(), &1u32.to_ne_bytes(), MapFlags::ANY)
    }

    /// Forgets `tgid`'s Python entry.
    pub fn remove_python_process(&self, tgid: u32) {
        // Absent already (exit or exec removed it in BPF) is fine.
        let _ = self.python_processes_map().delete(&tgid.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_btf_gives_a_plausible_fsbase_offset() {
        let offset = task_fsbase_offset().expect("this machine has kernel BTF");
        // thread_struct sits at the end of a task_struct of a few KiB.
        assert!((1024..16384).contains(&offset), "offset {offset}");
    }

    #[test]
    fn glibc_keeps_thread_specific_values_where_it_did_since_2_x() {
        // 0x310 in every x86_64 glibc from 2.17 to 2.39.
        assert_eq!(pthread_specific_offset(), Some(0x310));
    }
}
