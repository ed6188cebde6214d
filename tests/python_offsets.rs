//! The CPython offset table (src/python/offsets.rs) against the
//! interpreters on this machine: for each, a C program compiled with gcc
//! against that build's own headers (internal ones included, with
//! `Py_BUILD_CORE`) prints `offsetof()` of every field the table has, and
//! each must match.
//!
//! Debian's `/usr/bin/python3` always runs: its headers come from
//! `python3-dev` (`scripts/install-deps.sh --test`). The pyenv builds under
//! `~/.pyenv/versions/` (3.8 to 3.13) run when present, and each absent
//! one is named with the reason it was skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use taskprof::python::offsets::{offsets_for, InstructionEncoding, PythonOffsets, UnicodeOffsets};

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
}

#[test]
fn the_system_python_matches_the_table() {
    check(Path::new("/usr/bin/python3"));
}

#[test]
fn each_pyenv_build_matches_the_table() {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let versions = home.join(".pyenv/versions");
    let installed: Vec<String> = std::fs::read_dir(&versions)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for minor in 8..=13 {
        let prefix = format!("3.{minor}.");
        let builds: Vec<&String> = installed.iter().filter(|v| v.starts_with(&prefix)).collect();
        if builds.is_empty() {
            println!("skipped 3.{minor}: no {}/{prefix}*", versions.display());
            continue;
        }
        for build in builds {
            let python = versions.join(build).join("bin/python3");
            if !python.exists() {
                println!("skipped {build}: no {}", python.display());
                continue;
            }
            check(&python);
        }
    }
}
