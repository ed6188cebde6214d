//! What the running kernel's BPF can do, probed at start-up, and the
//! variant of the sampler chosen from it.
//!
//! One BPF source serves every kernel from 5.10 up (bpf/profiler.bpf.c).
//! Helpers a kernel lacks sit behind `const volatile` flags that the
//! verifier treats as constants, so it never checks the branches they rule
//! out; the bpf_loop walk, whose callback address older kernels cannot even
//! decode, is a program of its own (`sample`), with a bounded-loop twin
//! (`sample_bounded`) that reaches the same 127 frames. Before 6.1 a
//! perf_event program may only use preallocated hash maps, so there the
//! maps are preallocated and capped.
//!
//! Tests and diagnosis can force the fallbacks on any kernel with
//! `TASKPROF_BPF_VARIANT` (see [`Forced::from_env`]).

use std::ffi::CString;
use std::fmt;

use libbpf_sys as sys;

/// The BPF features the sampler cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// `bpf_loop` (5.17).
    pub bpf_loop: bool,
    /// `bpf_task_pt_regs` (5.15).
    pub task_pt_regs: bool,
    /// `bpf_get_current_task_btf` (5.11).
    pub current_task_btf: bool,
    /// Atomics that return the old value (5.12). The sampler needs none,
    /// but they are reported with the rest.
    pub returning_atomics: bool,
    /// BPF ring buffers (5.8); the sampler cannot run without them.
    pub ring_buffer: bool,
    /// Hash maps that allocate on use, in perf_event programs (6.1).
    pub lazy_hash_maps: bool,
}

impl Features {
    /// Every feature, as on the kernels taskprof was written on.
    pub const ALL: Features = Features {
        bpf_loop: true,
        task_pt_regs: true,
        current_task_btf: true,
        returning_atomics: true,
        ring_buffer: true,
        lazy_hash_maps: true,
    };

    /// Asks the running kernel, by loading tiny programs and maps (as
    /// libbpf's probes do). Needs the privileges loading the sampler needs.
    pub fn probe() -> Features {
        Features {
            bpf_loop: probe_helper(sys::BPF_FUNC_loop),
            task_pt_regs: probe_helper(sys::BPF_FUNC_task_pt_regs),
            current_task_btf: probe_helper(sys::BPF_FUNC_get_current_task_btf),
            returning_atomics: probe_returning_atomics(),
            // SAFETY: a plain call; libbpf creates and closes a map.
            ring_buffer: unsafe { sys::libbpf_probe_bpf_map_type(sys::BPF_MAP_TYPE_RINGBUF, std::ptr::null()) } == 1,
            lazy_hash_maps: probe_lazy_hash_maps(),
        }
    }

    /// The features as `name=yes/no` words, for logs.
    pub fn describe(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        format!(
            "bpf_loop={} bpf_task_pt_regs={} bpf_get_current_task_btf={} returning_atomics={} ring_buffer={} \
             lazy_hash_maps={}",
            yes(self.bpf_loop),
            yes(self.task_pt_regs),
            yes(self.current_task_btf),
            yes(self.returning_atomics),
            yes(self.ring_buffer),
            yes(self.lazy_hash_maps)
        )
    }
}

/// How the sampler walks a stack frame by frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// `bpf_loop` calls the frame step (5.17).
    BpfLoop,
    /// A bounded loop calls it (5.3), to the same depth.
    BoundedLoop,
}

/// Where a sample taken in the kernel finds the task's user registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserRegs {
    /// `bpf_task_pt_regs(bpf_get_current_task_btf())` (5.15).
    TaskPtRegs,
    /// The top of the task's kernel stack, found through `task_struct.stack`
    /// in the kernel's BTF.
    TaskStack,
}

/// The sampler as loaded on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// The walk loop of the unwinder and the Python walker.
    pub walk: Walk,
    /// How kernel-mode samples find the user registers.
    pub user_regs: UserRegs,
    /// Hash maps preallocated (and capped), for kernels before 6.1.
    pub preallocated: bool,
    /// The unwinder could not load (or was forced off): user stacks are
    /// the kernel's frame-pointer walk.
    pub frame_pointers: bool,
}

impl Variant {
    /// The variant for a kernel with `features`, with the fallbacks
    /// `forced` on regardless. Errors name what the kernel lacks.
    pub fn choose(features: &Features, forced: &Forced) -> Result<Variant, String> {
        if !features.ring_buffer {
            return Err("this kernel has no BPF ring buffers (Linux 5.8); taskprof needs Linux 5.10 or newer".into());
        }
        Ok(Variant {
            walk: if features.bpf_loop && !forced.bounded_loop {
                Walk::BpfLoop
            } else {
                Walk::BoundedLoop
            },
            user_regs: if features.task_pt_regs && features.current_task_btf && !forced.task_stack {
                UserRegs::TaskPtRegs
            } else {
                UserRegs::TaskStack
            },
            preallocated: !features.lazy_hash_maps || forced.preallocated,
            frame_pointers: forced.frame_pointers,
        })
    }
}

impl fmt::Display for Variant {
    /// Words joined by `+`: `bpf_loop+task_pt_regs`,
    /// `bounded_loop+task_stack+preallocated`, `...+frame_pointers`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.walk {
            Walk::BpfLoop => "bpf_loop",
            Walk::BoundedLoop => "bounded_loop",
        })?;
        f.write_str(match self.user_regs {
            UserRegs::TaskPtRegs => "+task_pt_regs",
            UserRegs::TaskStack => "+task_stack",
        })?;
        if self.preallocated {
            f.write_str("+preallocated")?;
        }
        if self.frame_pointers {
            f.write_str("+frame_pointers")?;
        }
        Ok(())
    }
}

/// Fallbacks forced on whatever the kernel supports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forced {
    /// The bounded loop instead of `bpf_loop`.
    pub bounded_loop: bool,
    /// The kernel stack instead of `bpf_task_pt_regs`.
    pub task_stack: bool,
    /// Preallocated hash maps.
    pub preallocated: bool,
    /// The frame-pointer fallback, as if the unwinder could not load.
    pub frame_pointers: bool,
}

/// A `TASKPROF_BPF_VARIANT` that names no fallback: a usage error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct VariantError(String);

/// The environment variable that forces fallbacks: words of the variant's
/// name, separated by `+` or `,`.
pub const VARIANT_ENV: &str = "TASKPROF_BPF_VARIANT";

impl Forced {
    /// Parses words such as `bounded_loop+task_stack`. The default
    /// variant's own words (`bpf_loop`, `task_pt_regs`) force nothing.
    pub fn parse(text: &str) -> Result<Forced, VariantError> {
        let mut forced = Forced::default();
        for word in text.split(['+', ',']).map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "bpf_loop" | "task_pt_regs" => {}
                "bounded_loop" => forced.bounded_loop = true,
                "task_stack" => forced.task_stack = true,
                "preallocated" => forced.preallocated = true,
                "frame_pointers" => forced.frame_pointers = true,
                other => {
                    return Err(VariantError(format!(
                        "{VARIANT_ENV}: unknown word `{other}`; use bounded_loop, task_stack, preallocated or \
                         frame_pointers, joined by +"
                    )))
                }
            }
        }
        Ok(forced)
    }

    /// The fallbacks forced by `TASKPROF_BPF_VARIANT`, none when unset.
    pub fn from_env() -> Result<Forced, VariantError> {
        match std::env::var(VARIANT_ENV) {
            Ok(text) => Forced::parse(&text),
            Err(_) => Ok(Forced::default()),
        }
    }
}

fn probe_helper(helper: sys::bpf_func_id) -> bool {
    // SAFETY: a plain call; libbpf loads and closes a small program.
    unsafe { sys::libbpf_probe_bpf_helper(sys::BPF_PROG_TYPE_PERF_EVENT, helper, std::ptr::null()) == 1 }
}

/// One BPF instruction.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> sys::bpf_insn {
    let mut insn = sys::bpf_insn {
        code,
        _bitfield_align_1: [],
        _bitfield_1: Default::default(),
        off,
        imm,
    };
    insn.set_dst_reg(dst);
    insn.set_src_reg(src);
    insn
}

// Opcodes (include/uapi/linux/bpf.h, bpf_common.h).
const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const MOV64_REG: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const ADD64_IMM: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
const STX_DW: u8 = 0x7b; // BPF_STX | BPF_MEM | BPF_DW
const STX_W: u8 = 0x63; // BPF_STX | BPF_MEM | BPF_W
const ATOMIC_DW: u8 = 0xdb; // BPF_STX | BPF_ATOMIC | BPF_DW
const LD_IMM64: u8 = 0x18; // BPF_LD | BPF_DW | BPF_IMM
const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
const ATOMIC_FETCH_ADD: i32 = 0x01; // BPF_ADD | BPF_FETCH
const PSEUDO_MAP_FD: u8 = 1;
const FUNC_MAP_LOOKUP_ELEM: i32 = 1;

/// Whether the kernel accepts `program` as a program of `prog_type`.
fn loads(prog_type: sys::bpf_prog_type, program: &[sys::bpf_insn]) -> bool {
    let (Ok(name), Ok(license)) = (CString::new("taskprof_probe"), CString::new("GPL")) else {
        return false;
    };
    // SAFETY: the instructions, name and license outlive the call; a
    // non-negative result is a program fd that this function owns and
    // closes.
    unsafe {
        let fd = sys::bpf_prog_load(
            prog_type,
            name.as_ptr(),
            license.as_ptr(),
            program.as_ptr(),
            program.len() as sys::size_t,
            std::ptr::null_mut(),
        );
        if fd < 0 {
            return false;
        }
        libc::close(fd);
    }
    true
}

/// An atomic fetch-and-add on the stack: BPF_FETCH (5.12).
fn probe_returning_atomics() -> bool {
    loads(
        sys::BPF_PROG_TYPE_SOCKET_FILTER,
        &[
            insn(MOV64_IMM, 1, 0, 0, 0),
            insn(STX_DW, 10, 1, -8, 0),
            insn(MOV64_IMM, 0, 0, 0, 1),
            insn(ATOMIC_DW, 10, 0, -8, ATOMIC_FETCH_ADD),
            insn(MOV64_IMM, 0, 0, 0, 0),
            insn(EXIT, 0, 0, 0, 0),
        ],
    )
}

/// A perf_event program that looks up a BPF_F_NO_PREALLOC hash map.
fn probe_lazy_hash_maps() -> bool {
    let opts = sys::bpf_map_create_opts {
        sz: std::mem::size_of::<sys::bpf_map_create_opts>() as sys::size_t,
        map_flags: sys::BPF_F_NO_PREALLOC,
        ..Default::default()
    };
    // SAFETY: `opts` outlives the call; a non-negative result is a map fd
    // owned and closed here.
    let map = unsafe { sys::bpf_map_create(sys::BPF_MAP_TYPE_HASH, std::ptr::null(), 4, 8, 1, &opts) };
    if map < 0 {
        return false;
    }
    let accepted = loads(
        sys::BPF_PROG_TYPE_PERF_EVENT,
        &[
            insn(MOV64_IMM, 1, 0, 0, 0),
            insn(STX_W, 10, 1, -4, 0),
            insn(MOV64_REG, 2, 10, 0, 0),
            insn(ADD64_IMM, 2, 0, 0, -4),
            insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, map),
            insn(0, 0, 0, 0, 0),
            insn(CALL, 0, 0, 0, FUNC_MAP_LOOKUP_ELEM),
            insn(MOV64_IMM, 0, 0, 0, 0),
            insn(EXIT, 0, 0, 0, 0),
        ],
    );
    // SAFETY: `map` is the fd created above, closed once.
    unsafe { libc::close(map) };
    accepted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_kernels_get_the_bpf_loop_variant() {
        let variant = Variant::choose(&Features::ALL, &Forced::default()).unwrap();
        assert_eq!(variant.walk, Walk::BpfLoop);
        assert_eq!(variant.user_regs, UserRegs::TaskPtRegs);
        assert!(!variant.preallocated && !variant.frame_pointers);
        assert_eq!(variant.to_string(), "bpf_loop+task_pt_regs");
    }

    #[test]
    fn each_missing_feature_picks_its_fallback() {
        // Linux 5.10: none of the newer features.
        let linux_5_10 = Features {
            bpf_loop: false,
            task_pt_regs: false,
            current_task_btf: false,
            returning_atomics: false,
            ring_buffer: true,
            lazy_hash_maps: false,
        };
        let variant = Variant::choose(&linux_5_10, &Forced::default()).unwrap();
        assert_eq!(variant.to_string(), "bounded_loop+task_stack+preallocated");

        // Linux 5.15: bpf_task_pt_regs, but no bpf_loop yet.
        let linux_5_15 = Features {
            bpf_loop: false,
            task_pt_regs: true,
            current_task_btf: true,
            returning_atomics: true,
            ..linux_5_10
        };
        assert_eq!(
            Variant::choose(&linux_5_15, &Forced::default()).unwrap().to_string(),
            "bounded_loop+task_pt_regs+preallocated"
        );

        // bpf_task_pt_regs needs a BTF task pointer to take.
        let no_btf_task = Features {
            current_task_btf: false,
            ..Features::ALL
        };
        assert_eq!(
            Variant::choose(&no_btf_task, &Forced::default()).unwrap().user_regs,
            UserRegs::TaskStack
        );

        // Linux 6.1 to 5.17 differ only in bpf_loop and lazy maps.
        let linux_6_0 = Features {
            lazy_hash_maps: false,
            ..Features::ALL
        };
        assert_eq!(
            Variant::choose(&linux_6_0, &Forced::default()).unwrap().to_string(),
            "bpf_loop+task_pt_regs+preallocated"
        );
    }

    #[test]
    fn a_kernel_without_ring_buffers_is_refused_with_the_version_needed() {
        let old = Features {
            ring_buffer: false,
            ..Features::ALL
        };
        let err = Variant::choose(&old, &Forced::default()).unwrap_err();
        assert!(err.contains("5.10"), "{err}");
    }

    #[test]
    fn forced_fallbacks_apply_on_any_kernel() {
        let forced = Forced::parse("bounded_loop+task_stack, preallocated").unwrap();
        let variant = Variant::choose(&Features::ALL, &forced).unwrap();
        assert_eq!(variant.to_string(), "bounded_loop+task_stack+preallocated");
        let fp = Variant::choose(&Features::ALL, &Forced::parse("frame_pointers").unwrap()).unwrap();
        assert_eq!(fp.to_string(), "bpf_loop+task_pt_regs+frame_pointers");
        // The default variant's own name forces nothing.
        assert_eq!(Forced::parse("bpf_loop+task_pt_regs").unwrap(), Forced::default());
        let err = Forced::parse("bounded+fast").unwrap_err().to_string();
        assert!(err.contains("`bounded`") && err.contains(VARIANT_ENV), "{err}");
    }

    #[test]
    fn probes_answer_on_this_kernel() {
        // This machine's kernel (6.18) has every feature; the probes must
        // say so, or the sampler would run a fallback here for nothing.
        // They need CAP_BPF, which the test suite runs with (as root).
        let features = Features::probe();
        assert_eq!(features, Features::ALL, "{}", features.describe());
    }
}
