//! The CPython offset table (src/python/offsets.rs) against the
//! interpreters on this machine: for each, a C program compiled with gcc
//! against that build's own headers (internal ones included, with
//! `Py_BUILD_CORE`) prints `offsetof()` of every field the table has, and
//! each must match. Then, as a check of what the offsets mean and not only
//! where they are, each interpreter runs a script that follows them
//! through its own memory from `_PyRuntime`, as the BPF walker does, and
//! the names, files and lines read there (decoded by taskprof's line-table
//! and str readers) must be those CPython reports for the same frames.
//!
//! Debian's `/usr/bin/python3` always runs: its headers come from
//! `python3-dev` (`scripts/install-deps.sh --test`). Every pyenv build of
//! 3.8 to 3.13 under `~/.pyenv/versions/` runs; a minor version with no
//! build fails the test with what to do, unless `TASKPROF_PYTHON_MATRIX=skip`
//! leaves the matrix out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{pyenv_builds, required_pyenv_python};
use taskprof::python::offsets::{offsets_for, FrameLayout, InstructionEncoding, PythonOffsets, UnicodeOffsets};

/// Prints `name value` lines: the offsets of one build, from its headers.
const PROBE: &str = r#"
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#if PY_VERSION_HEX >= 0x03090000
#include "internal/pycore_runtime.h"
#else
#include "internal/pycore_pystate.h"
#endif
#if PY_VERSION_HEX >= 0x030b0000
#include "internal/pycore_frame.h"
#else
#include "frameobject.h"
#endif
#define P(name, value) printf("%s %ld\n", name, (long)(value))
int main(void) {
	P("version.major", PY_MAJOR_VERSION);
	P("version.minor", PY_MINOR_VERSION);
#if PY_VERSION_HEX >= 0x030c0000
	P("runtime.tss_key", offsetof(_PyRuntimeState, autoTSSkey) + offsetof(Py_tss_t, _key));
#else
	P("runtime.tss_key", offsetof(_PyRuntimeState, gilstate.autoTSSkey) + offsetof(Py_tss_t, _key));
#endif
#if PY_VERSION_HEX >= 0x030d0000
	P("thread_state.frame", offsetof(PyThreadState, current_frame));
#elif PY_VERSION_HEX >= 0x030b0000
	P("thread_state.frame", offsetof(PyThreadState, cframe));
	P("thread_state.cframe_current_frame", offsetof(_PyCFrame, current_frame));
#else
	P("thread_state.frame", offsetof(PyThreadState, frame));
#endif
#if PY_VERSION_HEX >= 0x030b0000
	P("frame.back", offsetof(_PyInterpreterFrame, previous));
#if PY_VERSION_HEX >= 0x030d0000
	P("frame.code", offsetof(_PyInterpreterFrame, f_executable));
	P("frame.instr", offsetof(_PyInterpreterFrame, instr_ptr));
#else
	P("frame.code", offsetof(_PyInterpreterFrame, f_code));
	P("frame.instr", offsetof(_PyInterpreterFrame, prev_instr));
#endif
#if PY_VERSION_HEX >= 0x030c0000
	P("frame.entry", offsetof(_PyInterpreterFrame, owner));
	P("frame.owned_by_cstack", FRAME_OWNED_BY_CSTACK);
#else
	P("frame.entry", offsetof(_PyInterpreterFrame, is_entry));
#endif
	P("code.code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
	P("code.qualname", offsetof(PyCodeObject, co_qualname));
#else
	P("frame.back", offsetof(PyFrameObject, f_back));
	P("frame.code", offsetof(PyFrameObject, f_code));
	P("frame.instr", offsetof(PyFrameObject, f_lasti));
	P("code.code", offsetof(PyCodeObject, co_code));
#endif
	P("object.ob_type", offsetof(PyObject, ob_type));
	P("code.filename", offsetof(PyCodeObject, co_filename));
	P("code.name", offsetof(PyCodeObject, co_name));
	P("code.firstlineno", offsetof(PyCodeObject, co_firstlineno));
#if PY_VERSION_HEX >= 0x030a0000
	P("code.linetable", offsetof(PyCodeObject, co_linetable));
#else
	P("code.linetable", offsetof(PyCodeObject, co_lnotab));
#endif
	P("unicode.length", offsetof(PyASCIIObject, length));
	P("unicode.state", offsetof(PyASCIIObject, state));
	P("unicode.ascii_data", sizeof(PyASCIIObject));
	P("unicode.compact_data", sizeof(PyCompactUnicodeObject));
	{
		/* Where the compiler put each state bit-field: set it alone and
		 * look at the word. */
		PyASCIIObject o;
		unsigned int word;
		memset(&o, 0, sizeof(o)); o.state.kind = 7;
		memcpy(&word, &o.state, sizeof(word)); P("unicode.kind_bits", word);
		memset(&o, 0, sizeof(o)); o.state.compact = 1;
		memcpy(&word, &o.state, sizeof(word)); P("unicode.compact_bit", word);
		memset(&o, 0, sizeof(o)); o.state.ascii = 1;
		memcpy(&word, &o.state, sizeof(word)); P("unicode.ascii_bit", word);
	}
	P("bytes.size", offsetof(PyVarObject, ob_size));
	P("bytes.data", offsetof(PyBytesObject, ob_sval));
	return 0;
}
"#;

/// What the table says, under the probe's names.
fn table_values(o: &PythonOffsets) -> BTreeMap<String, i64> {
    let mut values = BTreeMap::new();
    let mut put = |name: &str, value: Option<u16>| {
        if let Some(value) = value {
            values.insert(name.to_string(), i64::from(value));
        }
    };
    put("version.major", Some(o.version.0.into()));
    put("version.minor", Some(o.version.1.into()));
    put("runtime.tss_key", Some(o.runtime.tss_key));
    put("thread_state.frame", Some(o.thread_state.frame));
    put("thread_state.cframe_current_frame", o.thread_state.cframe_current_frame);
    put("frame.back", Some(o.frame.back));
    put("frame.code", Some(o.frame.code));
    put("frame.instr", Some(o.frame.instr));
    put("frame.entry", o.frame.entry);
    put("frame.owned_by_cstack", o.frame.owned_by_cstack.map(u16::from));
    if let InstructionEncoding::CodeUnitPointer { code_adaptive } = o.frame.instr_encoding {
        put("code.code_adaptive", Some(code_adaptive));
    }
    put("object.ob_type", Some(o.object_type));
    put("code.filename", Some(o.code.filename));
    put("code.name", Some(o.code.name));
    put("code.qualname", o.code.qualname);
    put("code.firstlineno", Some(o.code.firstlineno));
    put("code.linetable", Some(o.code.linetable));
    put("code.code", o.code.code);
    put("unicode.length", Some(o.unicode.length));
    put("unicode.state", Some(o.unicode.state));
    put("unicode.ascii_data", Some(o.unicode.ascii_data));
    put("unicode.compact_data", Some(o.unicode.compact_data));
    let bits = |b: u32| Some(b as u16);
    put(
        "unicode.kind_bits",
        bits(UnicodeOffsets::KIND_MASK << UnicodeOffsets::KIND_SHIFT),
    );
    put("unicode.compact_bit", bits(UnicodeOffsets::COMPACT_BIT));
    put("unicode.ascii_bit", bits(UnicodeOffsets::ASCII_BIT));
    put("bytes.size", Some(o.bytes.size));
    put("bytes.data", Some(o.bytes.data));
    values
}

/// Where `python`'s headers are (`sysconfig`'s include path).
fn include_dir(python: &Path) -> PathBuf {
    let output = Command::new(python)
        .args(["-c", "import sysconfig; print(sysconfig.get_path('include'))"])
        .output()
        .unwrap_or_else(|e| panic!("failed to run `{}`: {e}", python.display()));
    assert!(output.status.success(), "`{}` failed: {output:?}", python.display());
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// Compiles and runs the probe against `python`'s headers.
fn probe(python: &Path, work: &Path) -> BTreeMap<String, i64> {
    let include = include_dir(python);
    assert!(
        include.join("Python.h").exists() && include.join("internal").is_dir(),
        "no headers for `{}` in {} (with internal/): install python3-dev, see scripts/install-deps.sh --test",
        python.display(),
        include.display()
    );
    let source = work.join("probe.c");
    let binary = work.join("probe");
    std::fs::write(&source, PROBE).unwrap();
    let compiled = Command::new("gcc")
        .arg("-w")
        .arg("-I")
        .arg(&include)
        .arg("-I")
        .arg(include.join("internal"))
        .arg(&source)
        .arg("-o")
        .arg(&binary)
        .output()
        .unwrap_or_else(|e| panic!("failed to run gcc (scripts/install-deps.sh --test): {e}"));
    assert!(
        compiled.status.success(),
        "the probe does not compile against {}:\n{}",
        include.display(),
        String::from_utf8_lossy(&compiled.stderr)
    );
    let output = Command::new(&binary).output().unwrap();
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Checks the table's entry for `python` against its headers.
fn check(python: &Path) {
    let work = tempfile::tempdir().unwrap();
    let from_headers = probe(python, work.path());
    let version = (from_headers["version.major"], from_headers["version.minor"]);
    let offsets = offsets_for(version.0 as u8, version.1 as u8).unwrap_or_else(|| {
        panic!(
            "`{}` is {}.{}, which the table lacks",
            python.display(),
            version.0,
            version.1
        )
    });
    let from_table = table_values(offsets);
    assert_eq!(
        from_table,
        from_headers,
        "the table's {}.{} (left) against `{}`'s headers (right)",
        version.0,
        version.1,
        python.display()
    );
    println!(
        "{}: {}.{}, {} fields match",
        python.display(),
        version.0,
        version.1,
        from_table.len()
    );
    check_walk(python);
}

#[test]
fn the_system_python_matches_the_table() {
    check(Path::new("/usr/bin/python3"));
}

#[test]
fn each_pyenv_build_matches_the_table() {
    for minor in 8..=13 {
        if required_pyenv_python(minor).is_none() {
            continue;
        }
        for (_, python) in pyenv_builds(minor) {
            check(&python);
        }
    }
}

/// Walks its own thread's frames from `_PyRuntime` as the BPF walker
/// does, with only the offsets given in argv[1], and prints for each frame
/// what the namer would read: the code object's address, the raw
/// instruction field, the entry flag or owner, and the raw bytes of its
/// name, qualified name, file name and line table; with each, the line
/// CPython itself gives the frame. Every read is of memory, through
/// ctypes; the objects are used only to know how many bytes to dump.
const WALKER: &str = r#"
import ctypes, sys, types

off = dict((k, None if v == "-" else int(v)) for k, v in (a.split("=") for a in sys.argv[1].split(",")))
api = ctypes.pythonapi
api.PyThreadState_Get.restype = ctypes.c_void_p
libc = ctypes.CDLL(None)
libc.pthread_getspecific.restype = ctypes.c_void_p
libc.pthread_getspecific.argtypes = [ctypes.c_uint]

def ptr(a): return ctypes.c_void_p.from_address(a).value or 0
def dump(address, obj): return ctypes.string_at(address, sys.getsizeof(obj)).hex() if address else "-"

def walk():
    known = {}
    f = sys._getframe()
    while f is not None:
        known[id(f.f_code)] = (f.f_code, f.f_lineno)
        f = f.f_back
    runtime = ctypes.addressof(ctypes.c_char.in_dll(api, "_PyRuntime"))
    key = ctypes.c_uint.from_address(runtime + off["tss_key"]).value
    tstate = libc.pthread_getspecific(key)
    print("tstate %d" % (tstate == api.PyThreadState_Get()))
    # Read here, not in ptr(), whose own frame would be the current one.
    frame = ctypes.c_void_p.from_address(tstate + off["tstate_frame"]).value
    if off["cframe_current_frame"] is not None:
        frame = ctypes.c_void_p.from_address(frame + off["cframe_current_frame"]).value
    while frame:
        entry = -1 if off["entry"] is None else ctypes.c_uint8.from_address(frame + off["entry"]).value
        if off["owned_by_cstack"] is not None and entry == off["owned_by_cstack"]:
            print("shim")
            frame = ptr(frame + off["back"])
            continue
        code_address = ptr(frame + off["code"])
        if off["pointer_instr"]:
            instr = ptr(frame + off["instr"])
        else:
            instr = ctypes.c_uint32.from_address(frame + off["instr"]).value
        code, line = known[code_address]
        is_code = ptr(code_address + off["ob_type"]) == id(types.CodeType)
        table = code.co_linetable if off["lnotab"] == 0 else code.co_lnotab
        qualname = getattr(code, "co_qualname", None)
        firstlineno = ctypes.c_int.from_address(code_address + off["firstlineno"]).value
        print("frame %d %d %d %d %d %s %s %s %s %d" % (
            code_address, instr, entry, line, is_code,
            dump(ptr(code_address + off["name"]), code.co_name),
            "-" if off["qualname"] is None else dump(ptr(code_address + off["qualname"]), qualname),
            dump(ptr(code_address + off["filename"]), code.co_filename),
            dump(ptr(code_address + off["linetable"]), table), firstlineno))
        frame = ptr(frame + off["back"])

def leaf():
    walk()

def middle():
    leaf()

def outer():
    middle()

outer()
"#;

/// Each frame of [`WALKER`]'s chain, outermost last, with the line at
/// which it calls the next.
fn walker_call_lines() -> Vec<(&'static str, u32)> {
    let line_of = |text: &str| WALKER.lines().position(|l| l == text).unwrap() as u32 + 1;
    vec![
        ("leaf", line_of("    walk()")),
        ("middle", line_of("    leaf()")),
        ("outer", line_of("    middle()")),
        ("<module>", line_of("outer()")),
    ]
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// A str object's characters, read as the namer reads them.
fn read_str(o: &PythonOffsets, object: &[u8]) -> String {
    let word = |at: u16, n: usize| {
        let mut bytes = [0u8; 8];
        bytes[..n].copy_from_slice(&object[at as usize..at as usize + n]);
        u64::from_le_bytes(bytes)
    };
    let length = word(o.unicode.length, 8) as usize;
    let layout = o
        .unicode
        .layout(word(o.unicode.state, 4) as u32)
        .expect("a compact str");
    let data = &object[layout.data as usize..layout.data as usize + length * layout.char_size as usize];
    taskprof::python::offsets::decode_str(layout.char_size, data).unwrap()
}

/// A bytes object's contents.
fn read_bytes(o: &PythonOffsets, object: &[u8]) -> Vec<u8> {
    let size = u64::from_le_bytes(object[o.bytes.size as usize..][..8].try_into().unwrap()) as usize;
    object[o.bytes.data as usize..][..size].to_vec()
}

/// Runs [`WALKER`] under `python` with the table's offsets, and checks
/// that the walk finds the thread state, the chain of frames in order
/// (with the entry markers where the layout puts them), and that the
/// names, file and line read from memory are those CPython reports.
fn check_walk(python: &Path) {
    let work = tempfile::tempdir().unwrap();
    let script = work.path().join("walker.py");
    std::fs::write(&script, WALKER).unwrap();
    let version = Command::new(python)
        .args(["-c", "import sys; print('%d %d' % sys.version_info[:2])"])
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    let (major, minor) = version.trim().split_once(' ').unwrap();
    let o = offsets_for(major.parse().unwrap(), minor.parse().unwrap()).unwrap();
    let opt = |v: Option<u16>| v.map_or("-".to_string(), |v| v.to_string());
    let args = [
        ("tss_key", o.runtime.tss_key.to_string()),
        ("tstate_frame", o.thread_state.frame.to_string()),
        ("cframe_current_frame", opt(o.thread_state.cframe_current_frame)),
        ("back", o.frame.back.to_string()),
        ("code", o.frame.code.to_string()),
        ("instr", o.frame.instr.to_string()),
        ("entry", opt(o.frame.entry)),
        ("owned_by_cstack", opt(o.frame.owned_by_cstack.map(u16::from))),
        (
            "pointer_instr",
            u8::from(matches!(
                o.frame.instr_encoding,
                InstructionEncoding::CodeUnitPointer { .. }
            ))
            .to_string(),
        ),
        ("ob_type", o.object_type.to_string()),
        ("name", o.code.name.to_string()),
        ("qualname", opt(o.code.qualname)),
        ("filename", o.code.filename.to_string()),
        ("linetable", o.code.linetable.to_string()),
        ("firstlineno", o.code.firstlineno.to_string()),
        (
            "lnotab",
            u8::from(o.code.linetable_format == taskprof::python::offsets::LineTableFormat::Lnotab).to_string(),
        ),
    ]
    .map(|(k, v)| format!("{k}={v}"))
    .join(",");
    let output = Command::new(python).arg(&script).arg(&args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}: the walker failed:\n{stdout}\n{}",
        python.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some("tstate 1"),
        "{}: the TSS key's thread state",
        python.display()
    );

    // (name, line from the table, line from CPython, entry flag) per frame;
    // "shim" for a C-stack frame.
    let mut walked = Vec::new();
    for line in lines {
        if line == "shim" {
            walked.push(("shim".to_string(), 0, 0, -1));
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        let (code, instr, entry, expected_line) = (
            f[1].parse::<u64>().unwrap(),
            f[2].parse::<u64>().unwrap(),
            f[3].parse::<i64>().unwrap(),
            f[4].parse::<u32>().unwrap(),
        );
        assert_eq!(f[5], "1", "{}: ob_type is PyCode_Type", python.display());
        let name = match f[7] {
            "-" => read_str(o, &hex(f[6])),
            qualname => read_str(o, &hex(qualname)),
        };
        assert_eq!(read_str(o, &hex(f[8])), script.display().to_string());
        let table = read_bytes(o, &hex(f[9]));
        let firstlineno: u32 = f[10].parse().unwrap();
        let offset = o.instruction_offset(code, instr);
        let line =
            taskprof::python::linetable::line_for(o.code.linetable_format, firstlineno, &table, offset).unwrap_or(0);
        walked.push((name, line, expected_line, entry));
    }
    let names: Vec<&str> = walked.iter().map(|w| w.0.as_str()).collect();
    let expected_names: &[&str] = match o.frame.layout {
        FrameLayout::CStackOwner => &["walk", "leaf", "middle", "outer", "<module>", "shim"],
        _ => &["walk", "leaf", "middle", "outer", "<module>"],
    };
    assert_eq!(names, expected_names, "{}", python.display());
    for ((name, line, expected, _), (call_name, call_line)) in walked[1..].iter().zip(walker_call_lines()) {
        assert_eq!(name, call_name);
        assert_eq!(
            (*line, *expected),
            (call_line, call_line),
            "{}: {name}'s line",
            python.display()
        );
    }
    if o.frame.layout == FrameLayout::EntryFlag {
        let entries: Vec<i64> = walked.iter().map(|w| w.3).collect();
        assert_eq!(entries, [0, 0, 0, 0, 1], "{}: is_entry", python.display());
    }
    println!("{}: walked {names:?}", python.display());
}
