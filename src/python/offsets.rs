//! Where CPython keeps what a profiler reads, per minor version (x86_64).
//!
//! Each entry was written from CPython's headers (`Include/cpython/*.h`
//! and `Include/internal/pycore_*.h`) as installed by the builds on the
//! test machine (3.8.18, 3.9.18, 3.10.13, 3.11.7, 3.12.1, 3.13.0, and
//! Debian's 3.11.2), and is checked there by `tests/integration/python_offsets.rs`,
//! which compiles a C program against each build's headers, compares
//! every `offsetof()` with this table, and walks each interpreter's own
//! frames with it. CPython keeps these layouts within a minor version;
//! other patch releases are not checked. The BPF walker takes the thread-state and
//! frame fields (bpf/profiler.h's `struct python_process`); the namer in
//! userspace takes the code-object, string and bytes fields.
//!
//! Layouts are those of the default (GIL) release build: a debug build
//! (`Py_TRACE_REFS` adds two pointers to every object) or the 3.13
//! free-threaded build (`libpython3.13t`) lays objects out differently and
//! is not described here.

/// How an interpreter links its frames; the values are bpf/profiler.h's
/// `enum python_frame_layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameLayout {
    /// 3.8–3.10: `PyFrameObject`s linked by `f_back`, found at
    /// `PyThreadState.frame`; each frame is its own
    /// `_PyEval_EvalFrameDefault` activation.
    FrameObject = 1,
    /// 3.11: `_PyInterpreterFrame`s linked by `previous`, found at
    /// `PyThreadState.cframe->current_frame`; `is_entry` marks the
    /// outermost frame of each activation.
    EntryFlag = 2,
    /// 3.12–3.13: `_PyInterpreterFrame`s; a frame whose `owner` is
    /// `FRAME_OWNED_BY_CSTACK` sits below the outermost frame of each
    /// activation.
    CStackOwner = 3,
}

/// What a frame's instruction field holds, and so how it becomes an
/// instruction offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstructionEncoding {
    /// 3.8–3.9: `int f_lasti`, the byte offset of the last instruction
    /// started, or -1 before the first.
    ByteOffset,
    /// 3.10: `int f_lasti`, counted in 2-byte code units, or -1 before the
    /// first.
    CodeUnitIndex,
    /// 3.11+: a `_Py_CODEUNIT *` into the code object's
    /// `co_code_adaptive`, which starts `code_adaptive` bytes into the
    /// code object. 3.11–3.12's `prev_instr` points at the code unit before
    /// the next instruction (one unit before the start in a frame that has
    /// not begun); 3.13's `instr_ptr` at the instruction being executed.
    CodeUnitPointer {
        /// `offsetof(PyCodeObject, co_code_adaptive)`.
        code_adaptive: u16,
    },
}

/// Which line-table format a code object's `co_lnotab` / `co_linetable`
/// holds; see [`crate::python::linetable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LineTableFormat {
    /// 3.8–3.9 `co_lnotab`: (byte offset delta, line delta) byte pairs.
    Lnotab,
    /// 3.10 `co_linetable`: (byte length, line delta) pairs of ranges.
    Ranges310,
    /// 3.11+ `co_linetable`: the location table of varint-coded entries,
    /// each covering a number of code units.
    Locations311,
}

/// `_PyRuntime` (`_PyRuntimeState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuntimeOffsets {
    /// The `pthread_key_t` under which each thread's `PyThreadState` is
    /// kept: `gilstate.autoTSSkey` (≤3.11) or `autoTSSkey` (3.12+), a
    /// `Py_tss_t { int _is_initialized; pthread_key_t _key; }`, plus 4.
    pub tss_key: u16,
}

/// `PyThreadState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ThreadStateOffsets {
    /// The field that leads to the current frame: `frame` (≤3.10),
    /// `cframe` (3.11–3.12) or `current_frame` (3.13).
    pub frame: u16,
    /// With `cframe` (3.11–3.12), `_PyCFrame.current_frame`; the frame is
    /// then `tstate->cframe->current_frame`.
    pub cframe_current_frame: Option<u16>,
}

/// `PyFrameObject` (≤3.10) or `_PyInterpreterFrame` (3.11+).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameOffsets {
    /// How frames are linked.
    pub layout: FrameLayout,
    /// The caller's frame: `f_back` or `previous`.
    pub back: u16,
    /// The code object: `f_code`, or 3.13's `f_executable` (which may be
    /// another kind of object: check its type against `PyCode_Type`).
    pub code: u16,
    /// The instruction: `f_lasti`, `prev_instr` or `instr_ptr`.
    pub instr: u16,
    /// What [`FrameOffsets::instr`] holds.
    pub instr_encoding: InstructionEncoding,
    /// The one-byte `is_entry` (3.11) or `owner` (3.12+).
    pub entry: Option<u16>,
    /// The `owner` of an activation's entry shim, `FRAME_OWNED_BY_CSTACK`
    /// (3.12+).
    pub owned_by_cstack: Option<u8>,
}

/// `PyCodeObject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodeOffsets {
    /// `co_filename`, a str.
    pub filename: u16,
    /// `co_name`, a str.
    pub name: u16,
    /// `co_qualname`, a str (3.11+).
    pub qualname: Option<u16>,
    /// `co_firstlineno`, an int.
    pub firstlineno: u16,
    /// `co_lnotab` (3.8–3.9) or `co_linetable` (3.10+), a bytes object.
    pub linetable: u16,
    /// The format of [`CodeOffsets::linetable`].
    pub linetable_format: LineTableFormat,
    /// `co_code`, a bytes object (≤3.10; 3.11+ keeps the code inline at
    /// `co_code_adaptive`, see [`InstructionEncoding::CodeUnitPointer`]).
    pub code: Option<u16>,
}

/// `PyASCIIObject` / `PyCompactUnicodeObject`: enough to read a str that
/// CPython allocated in one block, as every code object's names are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UnicodeOffsets {
    /// `length`, the number of code points (`Py_ssize_t`).
    pub length: u16,
    /// `state`, the bit-field word (`u32`) described by
    /// [`UnicodeOffsets::layout`].
    pub state: u16,
    /// Where the characters of a compact ASCII string start:
    /// `sizeof(PyASCIIObject)`.
    pub ascii_data: u16,
    /// Where the characters of any other compact string start:
    /// `sizeof(PyCompactUnicodeObject)`.
    pub compact_data: u16,
}

/// Where a str's characters are and how wide each is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StrLayout {
    /// Offset of the first character from the object's address.
    pub data: u16,
    /// Bytes per code point: 1 (Latin-1, ASCII), 2 (UCS-2) or 4 (UCS-4).
    pub char_size: u8,
}

impl UnicodeOffsets {
    /// The `state.kind` bits (`PyUnicode_1BYTE_KIND` = 1, 2, 4).
    pub const KIND_SHIFT: u32 = 2;
    /// Mask of `state.kind` after the shift.
    pub const KIND_MASK: u32 = 0b111;
    /// `state.compact`: the characters follow the header.
    pub const COMPACT_BIT: u32 = 1 << 5;
    /// `state.ascii`: only ASCII, right after the (smaller) ASCII header.
    pub const ASCII_BIT: u32 = 1 << 6;

    /// Where the characters of a str with this `state` word are, or `None`
    /// for a legacy (non-compact) string, whose characters are elsewhere,
    /// or an impossible kind.
    pub fn layout(&self, state: u32) -> Option<StrLayout> {
        if state & Self::COMPACT_BIT == 0 {
            return None;
        }
        let char_size = match (state >> Self::KIND_SHIFT) & Self::KIND_MASK {
            kind @ (1 | 2 | 4) => kind as u8,
            _ => return None,
        };
        if state & Self::ASCII_BIT != 0 {
            return (char_size == 1).then_some(StrLayout {
                data: self.ascii_data,
                char_size,
            });
        }
        Some(StrLayout {
            data: self.compact_data,
            char_size,
        })
    }
}

/// Decodes `bytes`, a str's characters of `char_size` bytes each, or
/// returns `None` when a code point is not a valid char.
pub fn decode_str(char_size: u8, bytes: &[u8]) -> Option<String> {
    match char_size {
        1 => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        2 => bytes
            .chunks_exact(2)
            .map(|c| char::from_u32(u32::from(u16::from_le_bytes([c[0], c[1]]))))
            .collect(),
        4 => bytes
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => None,
    }
}

/// `PyBytesObject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BytesOffsets {
    /// `ob_size`, the length (`Py_ssize_t`).
    pub size: u16,
    /// `ob_sval`, the bytes.
    pub data: u16,
}

/// What a profiler needs to know of one CPython minor version's layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PythonOffsets {
    /// (major, minor).
    pub version: (u8, u8),
    /// `_PyRuntime`.
    pub runtime: RuntimeOffsets,
    /// `PyThreadState`.
    pub thread_state: ThreadStateOffsets,
    /// Frames.
    pub frame: FrameOffsets,
    /// `PyObject.ob_type`.
    pub object_type: u16,
    /// `PyCodeObject`.
    pub code: CodeOffsets,
    /// `PyASCIIObject` / `PyCompactUnicodeObject`.
    pub unicode: UnicodeOffsets,
    /// `PyBytesObject`.
    pub bytes: BytesOffsets,
}

impl PythonOffsets {
    /// The byte offset of the instruction a frame is at, from the raw
    /// value of its instruction field (`raw`, zero-extended from `int` for
    /// `f_lasti`) and the address of its code object. A negative offset
    /// means the frame has not started; CPython then reports
    /// `co_firstlineno`, as [`crate::python::linetable::line_for`] does.
    pub fn instruction_offset(&self, code_address: u64, raw: u64) -> i64 {
        match self.frame.instr_encoding {
            InstructionEncoding::ByteOffset => i64::from(raw as u32 as i32),
            InstructionEncoding::CodeUnitIndex => i64::from(raw as u32 as i32) * 2,
            InstructionEncoding::CodeUnitPointer { code_adaptive } => {
                let start = code_address.wrapping_add(u64::from(code_adaptive));
                let bytes = raw.wrapping_sub(start) as i64;
                // Code units are 2 bytes; a pointer is never odd, but a
                // torn read may be.
                bytes - bytes.rem_euclid(2)
            }
        }
    }
}

const UNICODE_3_8: UnicodeOffsets = UnicodeOffsets {
    length: 16,
    state: 32,
    ascii_data: 48,
    compact_data: 72,
};

// 3.12 dropped `wstr` (and `wstr_length`) from the headers.
const UNICODE_3_12: UnicodeOffsets = UnicodeOffsets {
    length: 16,
    state: 32,
    ascii_data: 40,
    compact_data: 56,
};

const BYTES: BytesOffsets = BytesOffsets { size: 16, data: 32 };

// ≤3.10's PyCodeObject has the same first fields in 3.8, 3.9 and 3.10.
const CODE_3_8: CodeOffsets = CodeOffsets {
    filename: 104,
    name: 112,
    qualname: None,
    firstlineno: 40,
    linetable: 120,
    linetable_format: LineTableFormat::Lnotab,
    code: Some(48),
};

const FRAME_OBJECT_3_8: FrameOffsets = FrameOffsets {
    layout: FrameLayout::FrameObject,
    back: 24,
    code: 32,
    instr: 104,
    instr_encoding: InstructionEncoding::ByteOffset,
    entry: None,
    owned_by_cstack: None,
};

static TABLE: [PythonOffsets; 6] = [
    PythonOffsets {
        version: (3, 8),
        // _PyRuntimeState still holds the ceval and GIL state before
        // gilstate in 3.8 (Include/internal/pycore_pystate.h).
        runtime: RuntimeOffsets { tss_key: 1396 },
        thread_state: ThreadStateOffsets {
            frame: 24,
            cframe_current_frame: None,
        },
        frame: FRAME_OBJECT_3_8,
        object_type: 8,
        code: CODE_3_8,
        unicode: UNICODE_3_8,
        bytes: BYTES,
    },
    PythonOffsets {
        version: (3, 9),
        runtime: RuntimeOffsets { tss_key: 588 },
        thread_state: ThreadStateOffsets {
            frame: 24,
            cframe_current_frame: None,
        },
        frame: FRAME_OBJECT_3_8,
        object_type: 8,
        code: CODE_3_8,
        unicode: UNICODE_3_8,
        bytes: BYTES,
    },
    PythonOffsets {
        version: (3, 10),
        runtime: RuntimeOffsets { tss_key: 588 },
        thread_state: ThreadStateOffsets {
            frame: 24,
            cframe_current_frame: None,
        },
        // f_lasti moved up (f_stacktop became f_stackdepth) and counts
        // code units.
        frame: FrameOffsets {
            instr: 96,
            instr_encoding: InstructionEncoding::CodeUnitIndex,
            ..FRAME_OBJECT_3_8
        },
        object_type: 8,
        code: CodeOffsets {
            linetable_format: LineTableFormat::Ranges310,
            ..CODE_3_8
        },
        unicode: UNICODE_3_8,
        bytes: BYTES,
    },
    PythonOffsets {
        version: (3, 11),
        runtime: RuntimeOffsets { tss_key: 596 },
        thread_state: ThreadStateOffsets {
            frame: 56,
            cframe_current_frame: Some(8),
        },
        frame: FrameOffsets {
            layout: FrameLayout::EntryFlag,
            back: 48,
            code: 32,
            instr: 56,
            instr_encoding: InstructionEncoding::CodeUnitPointer { code_adaptive: 184 },
            entry: Some(68),
            owned_by_cstack: None,
        },
        object_type: 8,
        code: CodeOffsets {
            filename: 112,
            name: 120,
            qualname: Some(128),
            firstlineno: 72,
            linetable: 136,
            linetable_format: LineTableFormat::Locations311,
            code: None,
        },
        unicode: UNICODE_3_8,
        bytes: BYTES,
    },
    PythonOffsets {
        version: (3, 12),
        runtime: RuntimeOffsets { tss_key: 1548 },
        // _PyCFrame is { current_frame, previous } now.
        thread_state: ThreadStateOffsets {
            frame: 56,
            cframe_current_frame: Some(0),
        },
        frame: FrameOffsets {
            layout: FrameLayout::CStackOwner,
            back: 8,
            code: 0,
            instr: 56,
            instr_encoding: InstructionEncoding::CodeUnitPointer { code_adaptive: 192 },
            entry: Some(70),
            owned_by_cstack: Some(3),
        },
        object_type: 8,
        code: CodeOffsets {
            filename: 112,
            name: 120,
            qualname: Some(128),
            firstlineno: 68,
            linetable: 136,
            linetable_format: LineTableFormat::Locations311,
            code: None,
        },
        unicode: UNICODE_3_12,
        bytes: BYTES,
    },
    PythonOffsets {
        version: (3, 13),
        runtime: RuntimeOffsets { tss_key: 2164 },
        // _PyCFrame is gone; the thread state points at the frame.
        thread_state: ThreadStateOffsets {
            frame: 72,
            cframe_current_frame: None,
        },
        frame: FrameOffsets {
            layout: FrameLayout::CStackOwner,
            back: 8,
            code: 0,
            instr: 56,
            instr_encoding: InstructionEncoding::CodeUnitPointer { code_adaptive: 200 },
            entry: Some(70),
            owned_by_cstack: Some(3),
        },
        object_type: 8,
        code: CodeOffsets {
            filename: 112,
            name: 120,
            qualname: Some(128),
            firstlineno: 68,
            linetable: 136,
            linetable_format: LineTableFormat::Locations311,
            code: None,
        },
        unicode: UNICODE_3_12,
        bytes: BYTES,
    },
];

/// The offsets of CPython `major.minor`, or `None` for a version taskprof
/// does not know (anything but 3.8–3.13).
pub fn offsets_for(major: u8, minor: u8) -> Option<&'static PythonOffsets> {
    TABLE.iter().find(|o| o.version == (major, minor))
}

/// Every version in the table, oldest first.
pub fn supported_versions() -> impl Iterator<Item = (u8, u8)> {
    TABLE.iter().map(|o| o.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_3_8_to_3_13_and_nothing_else() {
        let known: Vec<_> = supported_versions().collect();
        assert_eq!(known, [(3, 8), (3, 9), (3, 10), (3, 11), (3, 12), (3, 13)]);
        for (major, minor) in [(2, 7), (3, 6), (3, 7), (3, 14), (4, 0)] {
            assert!(offsets_for(major, minor).is_none(), "{major}.{minor}");
        }
        assert_eq!(offsets_for(3, 12).map(|o| o.version), Some((3, 12)));
    }

    #[test]
    fn the_layout_and_its_fields_agree() {
        for o in &TABLE {
            let frame = o.frame;
            match frame.layout {
                FrameLayout::FrameObject => {
                    assert!(frame.entry.is_none() && o.thread_state.cframe_current_frame.is_none());
                    assert!(o.code.code.is_some() && o.code.qualname.is_none());
                }
                FrameLayout::EntryFlag => {
                    assert!(frame.entry.is_some() && frame.owned_by_cstack.is_none());
                }
                FrameLayout::CStackOwner => {
                    assert!(frame.entry.is_some() && frame.owned_by_cstack.is_some());
                }
            }
            // The BPF map keeps 0xffff for "absent".
            assert!(o.runtime.tss_key < 0xffff);
        }
    }

    #[test]
    fn instruction_offsets_are_bytes_in_every_encoding() {
        let o38 = offsets_for(3, 8).unwrap();
        assert_eq!(o38.instruction_offset(0x1000, 10), 10);
        assert_eq!(o38.instruction_offset(0x1000, u64::from(u32::MAX)), -1);
        let o310 = offsets_for(3, 10).unwrap();
        assert_eq!(o310.instruction_offset(0x1000, 5), 10);
        let o311 = offsets_for(3, 11).unwrap();
        assert_eq!(o311.instruction_offset(0x1000, 0x1000 + 184 + 10), 10);
        // A frame that has not started points one unit before the code.
        assert_eq!(o311.instruction_offset(0x1000, 0x1000 + 184 - 2), -2);
    }

    #[test]
    fn str_layouts_follow_the_state_bits() {
        let u = offsets_for(3, 11).unwrap().unicode;
        let state = |kind: u32, compact: bool, ascii: bool| {
            (kind << 2) | if compact { 1 << 5 } else { 0 } | if ascii { 1 << 6 } else { 0 }
        };
        let ascii = u.layout(state(1, true, true)).unwrap();
        assert_eq!((ascii.data, ascii.char_size), (48, 1));
        let latin1 = u.layout(state(1, true, false)).unwrap();
        assert_eq!((latin1.data, latin1.char_size), (72, 1));
        assert_eq!(u.layout(state(4, true, false)).unwrap().char_size, 4);
        assert_eq!(u.layout(state(1, false, false)), None, "legacy string");
        assert_eq!(u.layout(state(3, true, false)), None, "no such kind");
        assert_eq!(
            offsets_for(3, 12)
                .unwrap()
                .unicode
                .layout(state(1, true, true))
                .unwrap()
                .data,
            40
        );
    }

    #[test]
    fn strs_decode_from_each_width() {
        assert_eq!(decode_str(1, b"caf\xe9").as_deref(), Some("café"));
        assert_eq!(decode_str(2, &[0x3b, 0x04, 0x4f, 0x04]).as_deref(), Some("ля"));
        assert_eq!(decode_str(4, &0x1f40du32.to_le_bytes()).as_deref(), Some("🐍"));
        assert_eq!(decode_str(4, &0xd800u32.to_le_bytes()), None);
    }
}
