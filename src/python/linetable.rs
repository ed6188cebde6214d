//! The source line of an instruction, from a code object's line table, in
//! each of the three formats CPython 3.8–3.13 use. Each decoder follows
//! `PyCode_Addr2Line` of its versions (Objects/codeobject.c and, for 3.11+,
//! Objects/locations.md), and is tested against what each interpreter on
//! the test machine reports for its own code objects.
//!
//! Offsets are in bytes of bytecode, as `dis` shows them, in every format;
//! [`crate::python::offsets::PythonOffsets::instruction_offset`] turns a
//! frame's instruction field into one.

use std::ops::Range;

use super::offsets::LineTableFormat;

/// One stretch of bytecode and its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRange {
    /// Byte offsets of the instructions covered.
    pub offsets: Range<u32>,
    /// Their line, or `None` for instructions that have none (3.10+:
    /// compiler-made cleanup code).
    pub line: Option<u32>,
}

/// The line of the instruction at byte `offset`, in a code object whose
/// line table (`co_lnotab` or `co_linetable`) is `table` and first line
/// `firstlineno`, as CPython's `PyCode_Addr2Line` finds it.
///
/// A negative offset (a frame that has not started) gives `firstlineno`,
/// as in CPython. `None` means the instruction has no line, or the offset
/// is past the table's end.
pub fn line_for(format: LineTableFormat, firstlineno: u32, table: &[u8], offset: i64) -> Option<u32> {
    let Ok(offset) = u32::try_from(offset) else {
        return Some(firstlineno);
    };
    if format == LineTableFormat::Lnotab {
        return lnotab_line(firstlineno, table, offset);
    }
    ranges(format, firstlineno, table)
        .find(|r| r.offsets.contains(&offset))
        .and_then(|r| r.line)
}

/// 3.8–3.9: the line is `firstlineno` plus the line deltas of every pair
/// whose address increments stay at or below `offset`. `co_lnotab` has no
/// ranges (the last line runs to the end of the code), so this is not
/// expressed with [`ranges`].
fn lnotab_line(firstlineno: u32, table: &[u8], offset: u32) -> Option<u32> {
    let mut line = i64::from(firstlineno);
    let mut address = 0u32;
    for pair in table.chunks_exact(2) {
        address += u32::from(pair[0]);
        if address > offset {
            break;
        }
        line += i64::from(pair[1] as i8);
    }
    u32::try_from(line).ok()
}

/// The ranges of a 3.10 or 3.11+ line table, in order. For a 3.8–3.9
/// `co_lnotab`, which has no end, nothing.
pub fn ranges(format: LineTableFormat, firstlineno: u32, table: &[u8]) -> impl Iterator<Item = LineRange> + '_ {
    let mut line = i64::from(firstlineno);
    let mut start = 0u32;
    let mut at = 0usize;
    std::iter::from_fn(move || loop {
        let (length, delta, has_line) = match format {
            LineTableFormat::Lnotab => return None,
            LineTableFormat::Ranges310 => {
                let pair = table.get(at..at + 2)?;
                at += 2;
                let delta = pair[1] as i8;
                // -128 marks a range without a line; it moves nothing.
                let has_line = delta != -128;
                (
                    u32::from(pair[0]),
                    if has_line { i64::from(delta) } else { 0 },
                    has_line,
                )
            }
            LineTableFormat::Locations311 => {
                let entry = *table.get(at)?;
                let code = (entry >> 3) & 15;
                let length = (u32::from(entry & 7) + 1) * 2;
                let delta = match code {
                    NO_COLUMNS | LONG => signed_varint(table.get(at + 1..).unwrap_or_default()),
                    ONE_LINE0..=ONE_LINE2 => i64::from(code - ONE_LINE0),
                    _ => 0,
                };
                // Entries start with the high bit set; skip the rest.
                at += 1;
                while table.get(at).is_some_and(|b| b & 0x80 == 0) {
                    at += 1;
                }
                (length, delta, code != NONE)
            }
        };
        line += delta;
        let range = start..start.saturating_add(length);
        start = range.end;
        if range.is_empty() {
            continue;
        }
        return Some(LineRange {
            offsets: range,
            line: if has_line { u32::try_from(line).ok() } else { None },
        });
    })
}

// The location codes of the 3.11+ table (Include/cpython/code.h,
// `_PyCodeLocationInfoKind`); 0–9 are the short forms.
const ONE_LINE0: u8 = 10;
const ONE_LINE2: u8 = 12;
const NO_COLUMNS: u8 = 13;
const LONG: u8 = 14;
const NONE: u8 = 15;

/// A varint of the 3.11+ table: 6-bit chunks, least significant first,
/// with bit 6 set on every chunk but the last.
fn varint(bytes: &[u8]) -> u64 {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 63) << (6 * i);
        if b & 64 == 0 {
            break;
        }
    }
    value
}

/// A signed varint: the sign in the lowest bit.
fn signed_varint(bytes: &[u8]) -> i64 {
    let value = varint(bytes);
    let magnitude = (value >> 1) as i64;
    if value & 1 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

#[cfg(test)]
#[path = "testdata/linetables.rs"]
mod linetables;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::offsets::offsets_for;

    #[test]
    fn agrees_with_each_interpreter_at_every_offset() {
        assert!(!linetables::FIXTURES.is_empty());
        for fixture in linetables::FIXTURES {
            let (major, minor) = fixture.version;
            let format = offsets_for(major, minor).unwrap().code.linetable_format;
            for &(offset, expected) in fixture.lines {
                let line = line_for(format, fixture.firstlineno, fixture.table, i64::from(offset));
                assert_eq!(
                    line.map_or(-1, |l| l as i64),
                    i64::from(expected),
                    "{major}.{minor} {} at offset {offset}",
                    fixture.name
                );
            }
        }
    }

    #[test]
    fn a_frame_that_has_not_started_is_at_its_first_line() {
        for format in [
            LineTableFormat::Lnotab,
            LineTableFormat::Ranges310,
            LineTableFormat::Locations311,
        ] {
            assert_eq!(line_for(format, 7, &[], -1), Some(7));
            assert_eq!(line_for(format, 7, &[], -2), Some(7));
        }
    }

    #[test]
    fn past_the_end_has_no_line_and_truncated_tables_do_not_panic() {
        // One 3.11 entry: short form, 1 code unit, then a cut-off long form.
        let table = [0x80, 0x00, 0xf0 | 0x07, 0x41];
        assert_eq!(line_for(LineTableFormat::Locations311, 3, &table, 0), Some(3));
        assert_eq!(line_for(LineTableFormat::Locations311, 3, &table, 100), None);
        assert_eq!(line_for(LineTableFormat::Ranges310, 3, &[4, 1, 9], 10), None);
    }

    #[test]
    fn varints_are_six_bit_chunks() {
        assert_eq!(varint(&[0x05]), 5);
        assert_eq!(varint(&[0x41, 0x01]), 1 | (1 << 6));
        assert_eq!(signed_varint(&[0x03]), -1);
        assert_eq!(signed_varint(&[0x04]), 2);
    }
}
