//! Naming Python frames: the BPF walker records each frame's code object
//! address and instruction; this reads the code object's qualified name,
//! file name, first line and line table from the process's memory, and
//! turns the instruction into a line.
//!
//! Code objects are read while their process lives (the session looks at
//! new Python stacks as they appear, not only when a window ends) and
//! cached by (process incarnation, address). An address seen again in a
//! new stack is checked against the code object's type and first line, so
//! a code object freed and another allocated at its address is read anew
//! rather than misnamed.

use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use super::linetable::line_for;
use super::offsets::{decode_str, PythonOffsets};
use crate::bpf::PythonFrame;
use crate::process::ProcessKey;
use crate::symbolize::{synthetic_lines, FunctionInfo, LineInfo, Lines};

/// The longest str read (characters) and bytes object (bytes).
const MAX_STR_CHARS: u64 = 4096;
const MAX_LINETABLE_BYTES: u64 = 1 << 20;

/// The frame shown for a code object that could not be read.
pub const UNREADABLE_FRAME: &str = "[python: code object unreadable]";

/// What a code object says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CodeObject {
    /// The identity checked when the address is seen again.
    type_address: u64,
    first_line: u32,
    linetable: Vec<u8>,
    function: Arc<FunctionInfo>,
}

/// A Python process as the namer needs it.
#[derive(Debug, Clone, Copy)]
pub struct PythonTarget {
    /// The process, for reading its memory.
    pub key: ProcessKey,
    /// Its interpreter's layouts.
    pub offsets: &'static PythonOffsets,
    /// The address of `PyCode_Type` in the process, or 0 when unknown.
    pub code_type: u64,
}

/// Reads and caches code objects, and names frames from them.
#[derive(Default)]
pub struct PythonNamer {
    codes: HashMap<(ProcessKey, u64), Option<Arc<CodeObject>>>,
    lines: HashMap<(ProcessKey, u64, i64), Lines>,
}

impl PythonNamer {
    /// Reads the code objects of `frames` that are not cached yet, and
    /// checks those that are. Call while the process is alive.
    pub fn learn(&mut self, target: &PythonTarget, frames: &[PythonFrame]) {
        for frame in frames {
            let slot = (target.key, frame.code);
            if let Some(Some(known)) = self.codes.get(&slot) {
                match still_the_same(target, frame.code, known) {
                    // Unreadable: the process has exited; what was read
                    // while it lived stays.
                    None | Some(true) => continue,
                    // Freed and reused: forget the lines computed from it.
                    Some(false) => self
                        .lines
                        .retain(|(key, code, _), _| !(*key == target.key && *code == frame.code)),
                }
            }
            let code = read_code_object(target, frame.code).map(Arc::new);
            if code.is_some() || !self.codes.contains_key(&slot) {
                self.codes.insert(slot, code);
            }
        }
    }

    /// The lines of one Python frame: its function and the line it is at,
    /// or a frame saying its code object could not be read.
    pub fn frame_lines(&mut self, target: &PythonTarget, frame: &PythonFrame) -> Lines {
        let offset = target.offsets.instruction_offset(frame.code, frame.instruction);
        if let Some(lines) = self.lines.get(&(target.key, frame.code, offset)) {
            return Arc::clone(lines);
        }
        let Some(Some(code)) = self.codes.get(&(target.key, frame.code)) else {
            return synthetic_lines(UNREADABLE_FRAME);
        };
        let line = line_for(
            target.offsets.code.linetable_format,
            code.first_line,
            &code.linetable,
            offset,
        )
        .unwrap_or(0);
        let lines: Lines = Arc::from(vec![LineInfo {
            function: Arc::clone(&code.function),
            line,
        }]);
        self.lines.insert((target.key, frame.code, offset), Arc::clone(&lines));
        lines
    }

    /// Forgets everything read from `key`'s process.
    pub fn forget(&mut self, key: ProcessKey) {
        self.codes.retain(|(k, _), _| *k != key);
        self.lines.retain(|(k, _, _), _| *k != key);
    }
}

/// Whether the code object at `address` is still the one read before, or
/// `None` when the process's memory cannot be read (it has exited).
fn still_the_same(target: &PythonTarget, address: u64, known: &CodeObject) -> Option<bool> {
    let memory = Memory(target.key.tgid);
    let type_address = memory.u64(address + u64::from(target.offsets.object_type))?;
    let first_line = memory.u32(address + u64::from(target.offsets.code.firstlineno))?;
    Some(type_address == known.type_address && first_line == known.first_line)
}

fn read_code_object(target: &PythonTarget, address: u64) -> Option<CodeObject> {
    let memory = Memory(target.key.tgid);
    let offsets = target.offsets;
    let type_address = memory.u64(address + u64::from(offsets.object_type))?;
    // 3.13's f_executable may be another object; anything not a code
    // object is not named from code-object offsets.
    if target.code_type != 0 && type_address != target.code_type {
        return None;
    }
    let field = |offset: u16| memory.u64(address + u64::from(offset));
    let name_field = offsets.code.qualname.unwrap_or(offsets.code.name);
    let qualname = read_str(&memory, offsets, field(name_field)?)?;
    let filename = read_str(&memory, offsets, field(offsets.code.filename)?)?;
    let first_line = memory.u32(address + u64::from(offsets.code.firstlineno))?;
    let linetable = read_bytes(&memory, offsets, field(offsets.code.linetable)?).unwrap_or_default();
    let function = Arc::new(FunctionInfo {
        system_name: format!("{}.{}", module_name(&filename), qualname),
        name: qualname,
        file: filename,
        start_line: first_line,
    });
    Some(CodeObject {
        type_address,
        first_line,
        linetable,
        function,
    })
}

/// The module a file defines, as Python names it in tracebacks and
/// profilers show it: `app` for `/srv/app.py`, `json` for
/// `.../json/__init__.py`, the whole name for `<string>` and the like.
pub fn module_name(filename: &str) -> String {
    if filename.starts_with('<') {
        return filename.to_string();
    }
    let path = std::path::Path::new(filename);
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or(filename);
    if stem == "__init__" {
        if let Some(package) = path.parent().and_then(|p| p.file_name()).and_then(|s| s.to_str()) {
            return package.to_string();
        }
    }
    stem.to_string()
}

fn read_str(memory: &Memory, offsets: &PythonOffsets, address: u64) -> Option<String> {
    let unicode = &offsets.unicode;
    let length = memory.u64(address + u64::from(unicode.length))?;
    let state = memory.u32(address + u64::from(unicode.state))?;
    let layout = unicode.layout(state)?;
    let chars = length.min(MAX_STR_CHARS);
    let bytes = memory.read(
        address + u64::from(layout.data),
        (chars * u64::from(layout.char_size)) as usize,
    )?;
    decode_str(layout.char_size, &bytes)
}

fn read_bytes(memory: &Memory, offsets: &PythonOffsets, address: u64) -> Option<Vec<u8>> {
    let size = memory.u64(address + u64::from(offsets.bytes.size))?;
    if size > MAX_LINETABLE_BYTES {
        return None;
    }
    memory.read(address + u64::from(offsets.bytes.data), size as usize)
}

/// Another process's memory, read with process_vm_readv.
struct Memory(u32);

impl Memory {
    fn read(&self, address: u64, len: usize) -> Option<Vec<u8>> {
        let mut buffer = vec![0u8; len];
        if len == 0 {
            return Some(buffer);
        }
        let local = libc::iovec {
            iov_base: buffer.as_mut_ptr().cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: address as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: `local` describes `buffer`, which is writable for `len`
        // bytes; the kernel checks the remote range and never writes it.
        let read = unsafe { libc::process_vm_readv(self.0 as libc::pid_t, &local, 1, &remote, 1, 0) };
        (read == len as isize).then_some(buffer)
    }

    fn u64(&self, address: u64) -> Option<u64> {
        Some(u64::from_ne_bytes(self.read(address, 8)?.try_into().ok()?))
    }

    fn u32(&self, address: u64) -> Option<u32> {
        Some(u32::from_ne_bytes(self.read(address, 4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_follow_python() {
        assert_eq!(module_name("/srv/app.py"), "app");
        assert_eq!(module_name("/usr/lib/python3.11/json/__init__.py"), "json");
        assert_eq!(module_name("<string>"), "<string>");
        assert_eq!(
            module_name("<frozen importlib._bootstrap>"),
            "<frozen importlib._bootstrap>"
        );
    }
}
