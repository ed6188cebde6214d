//! Compact unwind tables built from a file's `.eh_frame` and
//! `.debug_frame`: for each address range, how to find the caller's frame.
//!
//! Every FDE's CFI program is run (by gimli) into rows; each row is reduced
//! to the few rules a BPF program can follow on x86_64:
//!
//! * the canonical frame address (CFA) is rsp or rbp plus an offset, the
//!   PLT's rsp-based expression, or the word at rbp plus an offset (the
//!   stack-realigning prologue gcc emits for `main`);
//! * the return address is at CFA-8 (the only place x86_64 compilers put
//!   it), or undefined, which marks the outermost frame of a thread;
//! * rbp is unchanged, saved at CFA plus an offset, or saved at rbp plus an
//!   offset;
//! * a signal trampoline's CFI (glibc's `__restore_rt`) reads the
//!   interrupted registers from the kernel's `ucontext` on the stack.
//!
//! Anything else is an [`CfaRule::Unsupported`] row: unwinding stops there
//! with a counted reason rather than guessing. Address ranges no FDE
//! covers get a [`CfaRule::NoInfo`] row, where the BPF unwinder falls back
//! to frame pointers. Neighbouring rows with equal rules are merged.

use gimli::{
    BaseAddresses, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian, Reader, RegisterRule, UnwindContext,
    UnwindSection, X86_64,
};

use super::elf::{Elf, ElfError, Segment};

/// How to compute the canonical frame address (the caller's rsp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CfaRule {
    /// rsp + offset.
    RspOffset(i32),
    /// rbp + offset.
    RbpOffset(i32),
    /// The PLT's expression: rsp + 8, plus 8 more when `(rip & 15) >=
    /// threshold` (the second half of a PLT entry, after its push).
    Plt {
        /// The nibble from which the entry has pushed a word.
        threshold: u8,
    },
    /// The 64-bit word at rbp + offset.
    RbpDeref(i32),
    /// A signal trampoline: the interrupted rsp, rbp and rip are in the
    /// `ucontext` at rsp (x86_64 Linux layout).
    Signal,
    /// The return address is undefined: the outermost frame of a thread.
    Root,
    /// A rule the BPF unwinder cannot follow.
    Unsupported,
    /// No FDE covers the address.
    NoInfo,
}

/// Where the caller's rbp is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RbpRule {
    /// rbp was not changed (or not saved yet).
    Unchanged,
    /// Saved at CFA + offset.
    CfaOffset(i16),
    /// Saved at rbp + offset.
    RbpOffset(i16),
    /// A rule the BPF unwinder cannot follow.
    Unsupported,
}

/// One row: from `address` up to the next row's address, these rules hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Row {
    /// Virtual address in the file's own address space.
    pub address: u64,
    /// How to find the CFA.
    pub cfa: CfaRule,
    /// How to find the caller's rbp.
    pub rbp: RbpRule,
}

impl Row {
    fn same_rules(&self, other: &Row) -> bool {
        self.cfa == other.cfa && self.rbp == other.rbp
    }
}

/// An unwind table for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnwindTable {
    /// Rows sorted by address, neighbours always differing.
    pub rows: Vec<Row>,
    /// The file's loadable segments, to relate mappings to addresses.
    pub segments: Vec<Segment>,
    /// Bytes of `.eh_frame` plus `.debug_frame` parsed.
    pub cfi_bytes: usize,
    /// FDEs turned into rows.
    pub fdes: usize,
    /// Rows before neighbours with equal rules were merged.
    pub rows_before_merge: usize,
}

impl UnwindTable {
    /// The address the BPF rows are relative to.
    pub fn base(&self) -> u64 {
        self.rows.first().map(|r| r.address).unwrap_or(0)
    }

    /// The row in force at `address`.
    pub fn row_for(&self, address: u64) -> Option<&Row> {
        let index = self.rows.partition_point(|r| r.address <= address);
        self.rows.get(index.checked_sub(1)?)
    }
}

/// Why no table could be built for a file.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The file is not a usable ELF file.
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// The file is not for x86_64.
    #[error("ELF machine {0} is not x86_64")]
    Machine(u16),
    /// The file has neither `.eh_frame` nor `.debug_frame`.
    #[error("no .eh_frame or .debug_frame section")]
    NoUnwindInfo,
    /// The CFI could not be parsed.
    #[error("malformed call frame information")]
    Parse(#[from] gimli::Error),
    /// The rows span more than the 32-bit offsets the BPF table uses.
    #[error("unwind rows span more than 4 GiB")]
    TooLarge,
}

const X86_64_MACHINE: u16 = 62;

/// The x86_64 `ucontext_t` offsets of the saved rbp, rsp and rip that
/// glibc's signal trampoline CFI names (uc_mcontext.gregs at 40).
pub const SIGNAL_RBP_OFFSET: i64 = 120;
/// Offset of the saved rsp.
pub const SIGNAL_RSP_OFFSET: i64 = 160;
/// Offset of the saved rip.
pub const SIGNAL_RIP_OFFSET: i64 = 168;

type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// One FDE's range, and where its rows (its end row included) lie in the
/// one vector all FDEs' rows are collected into: one allocation per file
/// instead of one per FDE.
struct FdeRows {
    start: u64,
    end: u64,
    first: usize,
    len: usize,
}

/// Builds the table of an ELF file from its bytes.
pub fn build_table(data: &[u8]) -> Result<UnwindTable, TableError> {
    let elf = Elf::parse(data)?;
    if elf.machine != X86_64_MACHINE {
        return Err(TableError::Machine(elf.machine));
    }
    let mut bases = BaseAddresses::default();
    if let Some(text) = elf.section(".text") {
        bases = bases.set_text(text.address);
    }
    if let Some(got) = elf.section(".got") {
        bases = bases.set_got(got.address);
    }
    let mut cfi_bytes = 0;
    let mut fdes: Vec<FdeRows> = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let eh = elf.section(".eh_frame").filter(|s| !s.file_range.is_empty());
    if let Some(section) = eh {
        let bytes = elf.bytes(section);
        cfi_bytes += bytes.len();
        let eh_bases = bases.clone().set_eh_frame(section.address);
        let eh_frame = EhFrame::new(bytes, LittleEndian);
        collect_fdes(&eh_frame, &eh_bases, &mut fdes, &mut rows)?;
    }
    let debug = elf
        .section(".debug_frame")
        .filter(|s| !s.file_range.is_empty() && !s.compressed);
    if let Some(section) = debug {
        let bytes = elf.bytes(section);
        cfi_bytes += bytes.len();
        let mut debug_frame = DebugFrame::new(bytes, LittleEndian);
        debug_frame.set_address_size(8);
        let mut from_debug = Vec::new();
        collect_fdes(&debug_frame, &bases, &mut from_debug, &mut rows)?;
        // .eh_frame wins where both describe an address.
        let mut covered: Vec<(u64, u64)> = fdes.iter().map(|f| (f.start, f.end)).collect();
        covered.sort_unstable();
        from_debug.retain(|fde| {
            let next = covered.partition_point(|&(start, _)| start < fde.end);
            !covered[..next].iter().rev().take(4).any(|&(_, end)| end > fde.start)
        });
        fdes.extend(from_debug);
    }
    if eh.is_none() && debug.is_none() {
        return Err(TableError::NoUnwindInfo);
    }

    let fde_count = fdes.len();
    // Most files list their FDEs in address order: then the rows are
    // already in order and are merged in place, so a large library
    // (librustc_driver: 1.4 M rows) needs one copy of its rows, not two.
    let mut next_first = 0;
    let in_place = fdes.iter().all(|f| {
        let follows = f.first == next_first;
        next_first = f.first + f.len;
        follows
    }) && next_first == rows.len()
        && fdes.windows(2).all(|w| w[0].start <= w[1].start);
    if in_place {
        let mut kept = 0;
        for index in 0..rows.len() {
            let row = rows[index];
            while kept > 0 && rows[kept - 1].address >= row.address {
                kept -= 1;
            }
            rows[kept] = row;
            kept += 1;
        }
        rows.truncate(kept);
    } else {
        fdes.sort_by_key(|f| f.start);
        let mut sorted = Vec::with_capacity(rows.len());
        for fde in &fdes {
            for row in &rows[fde.first..fde.first + fde.len] {
                push_row(&mut sorted, *row);
            }
        }
        rows = sorted;
    }
    drop(fdes);
    let rows_before_merge = rows.len();
    rows.dedup_by(|next, previous| next.same_rules(previous));
    rows.shrink_to_fit();
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        if last.address - first.address > u64::from(u32::MAX) {
            return Err(TableError::TooLarge);
        }
    }
    Ok(UnwindTable {
        rows,
        segments: elf.segments.clone(),
        cfi_bytes,
        fdes: fde_count,
        rows_before_merge,
    })
}

/// Appends a row; a row at or before the last one's address replaces what
/// it overlaps (a later FDE starting where an earlier one ended).
fn push_row(rows: &mut Vec<Row>, row: Row) {
    while rows.last().is_some_and(|last| last.address >= row.address) {
        rows.pop();
    }
    rows.push(row);
}

/// Appends each FDE's rows, then a row ending its range, to `rows`, and
/// where they lie to `out`.
fn collect_fdes<'a, S>(
    section: &S,
    bases: &BaseAddresses,
    out: &mut Vec<FdeRows>,
    rows: &mut Vec<Row>,
) -> Result<(), TableError>
where
    S: UnwindSection<Slice<'a>>,
{
    let mut context = Box::new(UnwindContext::new());
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next()? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        // A broken FDE loses its own range only.
        let Ok(fde) = partial.parse(S::cie_from_offset) else {
            continue;
        };
        let (start, end) = (fde.initial_address(), fde.end_address());
        if end <= start {
            continue;
        }
        let signal = fde.is_signal_trampoline();
        let Ok(mut table) = fde.rows(section, bases, &mut context) else {
            continue;
        };
        let first = rows.len();
        loop {
            match table.next_row() {
                Ok(Some(row)) => rows.push(convert_row(section, row, signal)),
                Ok(None) => break,
                Err(_) => {
                    // Keep the rows decoded so far; the rest of the range
                    // is not understood.
                    let address = match rows.len() > first {
                        true => rows[rows.len() - 1].address.saturating_add(1),
                        false => start,
                    };
                    rows.push(Row {
                        address,
                        cfa: CfaRule::Unsupported,
                        rbp: RbpRule::Unsupported,
                    });
                    break;
                }
            }
        }
        rows.push(Row {
            address: end,
            cfa: CfaRule::NoInfo,
            rbp: RbpRule::Unchanged,
        });
        out.push(FdeRows {
            start,
            end,
            first,
            len: rows.len() - first,
        });
    }
    Ok(())
}

fn expression_bytes<'a, S>(section: &S, expression: &gimli::UnwindExpression<usize>) -> Option<&'a [u8]>
where
    S: UnwindSection<Slice<'a>>,
{
    expression.get(section).ok().map(|e| e.0.slice())
}

/// Reads `DW_OP_breg<register> <sleb offset>` at the start of `bytes`,
/// returning the offset and the rest.
fn breg(bytes: &[u8], register: u16) -> Option<(i64, &[u8])> {
    let (&op, rest) = bytes.split_first()?;
    if u16::from(op) != 0x70 + register {
        return None;
    }
    let mut reader = Slice::new(rest, LittleEndian);
    let offset = reader.read_sleb128().ok()?;
    Some((offset, reader.slice()))
}

const DW_OP_DEREF: u8 = 0x06;
const RSP: u16 = X86_64::RSP.0;
const RBP: u16 = X86_64::RBP.0;
const RIP: u16 = X86_64::RA.0;

/// The PLT's CFA expression: `breg7 8; breg16 0; lit15; and; lit<N>; ge;
/// lit3; shl; plus`, returning N.
fn plt_threshold(bytes: &[u8]) -> Option<u8> {
    let (8, rest) = breg(bytes, RSP)? else {
        return None;
    };
    let (0, rest) = breg(rest, RIP)? else {
        return None;
    };
    match rest {
        [0x3f, 0x1a, lit, 0x2a, 0x33, 0x24, 0x22] if (0x30..=0x4f).contains(lit) => Some(lit - 0x30),
        _ => None,
    }
}

/// `breg<register> <offset>; deref` with nothing after it.
fn deref_of(bytes: &[u8], register: u16) -> Option<i64> {
    match breg(bytes, register)? {
        (offset, [DW_OP_DEREF]) => Some(offset),
        _ => None,
    }
}

/// `breg<register> <offset>` with nothing after it: an address.
fn address_of(bytes: &[u8], register: u16) -> Option<i64> {
    match breg(bytes, register)? {
        (offset, []) => Some(offset),
        _ => None,
    }
}

fn convert_row<'a, S>(section: &S, row: &gimli::UnwindTableRow<usize>, signal: bool) -> Row
where
    S: UnwindSection<Slice<'a>>,
{
    let address = row.start_address();
    let unsupported = Row {
        address,
        cfa: CfaRule::Unsupported,
        rbp: RbpRule::Unsupported,
    };
    let ra = row.register(X86_64::RA);
    let rbp = row.register(X86_64::RBP);

    if signal {
        let gimli::CfaRule::Expression(cfa) = row.cfa() else {
            return unsupported;
        };
        let cfa_ok = expression_bytes(section, cfa).and_then(|b| deref_of(b, RSP)) == Some(SIGNAL_RSP_OFFSET);
        let at = |rule: Option<RegisterRule<usize>>| match rule {
            Some(RegisterRule::Expression(e)) => expression_bytes(section, &e).and_then(|b| address_of(b, RSP)),
            _ => None,
        };
        if cfa_ok && at(ra) == Some(SIGNAL_RIP_OFFSET) && at(rbp) == Some(SIGNAL_RBP_OFFSET) {
            return Row {
                address,
                cfa: CfaRule::Signal,
                rbp: RbpRule::Unchanged,
            };
        }
        return unsupported;
    }

    match ra {
        Some(RegisterRule::Undefined) => {
            return Row {
                address,
                cfa: CfaRule::Root,
                rbp: RbpRule::Unchanged,
            }
        }
        Some(RegisterRule::Offset(-8)) => {}
        _ => return unsupported,
    }

    let cfa = match row.cfa() {
        gimli::CfaRule::RegisterAndOffset { register, offset } => match (register.0, i32::try_from(*offset)) {
            (RSP, Ok(offset)) => CfaRule::RspOffset(offset),
            (RBP, Ok(offset)) => CfaRule::RbpOffset(offset),
            _ => CfaRule::Unsupported,
        },
        gimli::CfaRule::Expression(expression) => match expression_bytes(section, expression) {
            Some(bytes) => {
                if let Some(threshold) = plt_threshold(bytes) {
                    CfaRule::Plt { threshold }
                } else if let Some(offset) = deref_of(bytes, RBP).and_then(|o| i32::try_from(o).ok()) {
                    CfaRule::RbpDeref(offset)
                } else {
                    CfaRule::Unsupported
                }
            }
            None => CfaRule::Unsupported,
        },
    };
    let rbp = match rbp {
        None | Some(RegisterRule::SameValue) | Some(RegisterRule::Undefined) => RbpRule::Unchanged,
        Some(RegisterRule::Offset(offset)) => i16::try_from(offset)
            .map(RbpRule::CfaOffset)
            .unwrap_or(RbpRule::Unsupported),
        Some(RegisterRule::Expression(e)) => match expression_bytes(section, &e)
            .and_then(|b| address_of(b, RBP))
            .and_then(|o| i16::try_from(o).ok())
        {
            Some(offset) => RbpRule::RbpOffset(offset),
            None => RbpRule::Unsupported,
        },
        Some(_) => RbpRule::Unsupported,
    };
    if cfa == CfaRule::Unsupported {
        return unsupported;
    }
    Row { address, cfa, rbp }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unwind::elf::Elf;

    fn table_of(path: &str) -> (Vec<u8>, UnwindTable) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("failed to read {path}: {e}"));
        let table = build_table(&data).unwrap_or_else(|e| panic!("no table for {path}: {e}"));
        (data, table)
    }

    #[test]
    fn rows_are_sorted_and_merged() {
        let (_, table) = table_of(crate::unwind::test_libc());
        assert!(table.fdes > 1000, "libc has thousands of FDEs, got {}", table.fdes);
        assert!(table.rows.windows(2).all(|w| w[0].address < w[1].address));
        assert!(
            table.rows.windows(2).all(|w| !w[0].same_rules(&w[1])),
            "equal neighbours must be merged"
        );
        assert!(
            table.rows.len() < table.rows_before_merge,
            "merging must remove rows: {} of {}",
            table.rows.len(),
            table.rows_before_merge
        );
    }

    #[test]
    fn function_entry_has_the_cfa_at_rsp_plus_8() {
        // Every x86_64 call leaves the CFA 8 bytes above rsp at the first
        // instruction; the executable's own code starts that way too.
        let (data, table) = table_of("/usr/bin/ls");
        let elf = Elf::parse(&data).unwrap();
        let text = elf.section(".text").unwrap();
        let covered: Vec<&Row> = table
            .rows
            .iter()
            .filter(|r| r.address >= text.address && r.cfa == CfaRule::RspOffset(8))
            .collect();
        assert!(covered.len() > 100, "only {} function entries found", covered.len());
        // After `push %rbp` gcc saves it at CFA-16.
        assert!(table
            .rows
            .iter()
            .any(|r| r.cfa == CfaRule::RspOffset(16) && r.rbp == RbpRule::CfaOffset(-16)));
    }

    #[test]
    fn the_entry_point_is_a_thread_root() {
        let (data, table) = table_of("/usr/bin/ls");
        let entry = Elf::parse(&data).unwrap().entry;
        assert_eq!(table.row_for(entry).map(|r| r.cfa), Some(CfaRule::Root));
    }

    #[test]
    fn plt_entries_use_the_plt_expression() {
        let (data, table) = table_of("/usr/bin/ls");
        let elf = Elf::parse(&data).unwrap();
        let plt = elf.section(".plt").expect("ls has a .plt");
        // The first instruction of PLT entry 1 (16 bytes in), and its
        // second half after the push, follow the same expression.
        let row = table.row_for(plt.address + 16).expect("the PLT has a row");
        assert!(matches!(row.cfa, CfaRule::Plt { threshold: 10 | 11 }), "{row:?}");
        assert_eq!(table.row_for(plt.address + 16 + 12).map(|r| r.cfa), Some(row.cfa));
    }

    #[test]
    fn glibc_signal_trampoline_is_a_signal_frame() {
        let (_, table) = table_of(crate::unwind::test_libc());
        assert!(table.rows.iter().any(|r| r.cfa == CfaRule::Signal));
    }

    #[test]
    fn glibc_thread_start_is_a_root() {
        // clone3 marks rip undefined in the child: threads end there.
        let (_, table) = table_of(crate::unwind::test_libc());
        assert!(table.rows.iter().any(|r| r.cfa == CfaRule::Root));
    }

    #[test]
    fn gaps_between_functions_have_no_info() {
        let (_, table) = table_of("/usr/bin/ls");
        assert!(table.rows.iter().any(|r| r.cfa == CfaRule::NoInfo));
        assert_eq!(table.row_for(table.base().saturating_sub(1)), None);
    }

    /// What `readelf --debug-dump=frames-interp` says holds at one address.
    struct ReadelfRow {
        address: u64,
        cfa: String,
        rbp: String,
        ra: String,
    }

    /// The FDE rows of `readelf --debug-dump=frames-interp` (binutils),
    /// an independent CFI interpreter.
    fn readelf_rows(path: &str) -> Vec<ReadelfRow> {
        let output = std::process::Command::new("readelf")
            .args(["--debug-dump=frames-interp", "-W", path])
            .output()
            .expect("readelf (binutils) is needed: run scripts/install-deps.sh --test");
        // readelf exits 1 after warnings about other sections (libc's
        // stripped .gnu_debuglink); its frame dump is still whole.
        assert!(!output.stdout.is_empty(), "readelf printed nothing for {path}");
        let text = String::from_utf8_lossy(&output.stdout);
        let mut rows = Vec::new();
        let (mut in_fde, mut columns) = (false, Vec::<String>::new());
        for line in text.lines() {
            if line.contains(" FDE ") {
                in_fde = true;
            } else if line.contains(" CIE") || line.trim().is_empty() {
                in_fde = in_fde && !line.contains(" CIE");
            } else if line.trim_start().starts_with("LOC") {
                columns = line.split_whitespace().map(str::to_string).collect();
            } else if in_fde {
                // A register appears as `r10 (r10)`: one field.
                let mut fields: Vec<String> = Vec::new();
                for token in line.split_whitespace() {
                    match fields.last_mut() {
                        Some(last) if token.starts_with('(') => {
                            last.push(' ');
                            last.push_str(token);
                        }
                        _ => fields.push(token.to_string()),
                    }
                }
                // Rows start with a 16-digit address; not the terminator.
                let Some(address) = fields
                    .first()
                    .filter(|f| f.len() == 16)
                    .and_then(|f| u64::from_str_radix(f, 16).ok())
                else {
                    continue;
                };
                let column = |name: &str| {
                    columns
                        .iter()
                        .position(|c| c == name)
                        .and_then(|i| fields.get(i))
                        .map_or("u".to_string(), |v| v.to_string())
                };
                rows.push(ReadelfRow {
                    address,
                    cfa: column("CFA"),
                    rbp: column("rbp"),
                    ra: column("ra"),
                });
            }
        }
        rows
    }

    /// Every row of the table agrees with binutils' reading of the same
    /// CFI: same CFA register and offset, same place for rbp, roots where
    /// the return address is undefined, and expressions only where readelf
    /// sees one.
    #[test]
    fn rows_agree_with_readelf() {
        for path in [crate::unwind::test_libc(), "/lib64/ld-linux-x86-64.so.2", "/usr/bin/ls"] {
            let (_, table) = table_of(path);
            let reference = readelf_rows(path);
            assert!(
                reference.len() > 500,
                "{path}: readelf printed only {} rows",
                reference.len()
            );
            let mut mismatches = Vec::new();
            for expected in &reference {
                let Some(row) = table.row_for(expected.address) else {
                    mismatches.push(format!("{:#x}: no row", expected.address));
                    continue;
                };
                let cfa_ok = match (expected.ra.as_str(), expected.cfa.as_str()) {
                    ("u", _) => row.cfa == CfaRule::Root,
                    // The return address in a register: not followed.
                    (ra, _) if ra != "c-8" && ra != "exp" => row.cfa == CfaRule::Unsupported,
                    (_, "exp") => matches!(
                        row.cfa,
                        CfaRule::Plt { .. } | CfaRule::RbpDeref(_) | CfaRule::Signal | CfaRule::Unsupported
                    ),
                    (_, cfa) => match cfa.split_once('+') {
                        Some(("rsp", n)) => row.cfa == CfaRule::RspOffset(n.parse().unwrap()),
                        Some(("rbp", n)) => row.cfa == CfaRule::RbpOffset(n.parse().unwrap()),
                        _ => row.cfa == CfaRule::Unsupported,
                    },
                };
                let rbp_ok = match row.cfa {
                    CfaRule::Root | CfaRule::Signal | CfaRule::Unsupported => true,
                    _ => match expected.rbp.as_str() {
                        "u" | "s" => row.rbp == RbpRule::Unchanged,
                        "exp" => matches!(row.rbp, RbpRule::RbpOffset(_) | RbpRule::Unsupported),
                        offset => match offset.strip_prefix('c') {
                            Some(n) => row.rbp == RbpRule::CfaOffset(n.parse().unwrap()),
                            None => row.rbp == RbpRule::Unsupported,
                        },
                    },
                };
                if !(cfa_ok && rbp_ok) {
                    mismatches.push(format!(
                        "{:#x}: readelf CFA {} rbp {} ra {}, table {:?}",
                        expected.address, expected.cfa, expected.rbp, expected.ra, row
                    ));
                }
            }
            assert!(
                mismatches.is_empty(),
                "{path}: {} of {} rows differ from readelf, first ones:\n{}",
                mismatches.len(),
                reference.len(),
                mismatches[..mismatches.len().min(15)].join("\n")
            );
        }
    }

    #[test]
    fn files_without_cfi_or_not_elf_are_errors() {
        assert!(matches!(build_table(b"not elf"), Err(TableError::Elf(_))));
    }

    #[test]
    fn plt_expression_is_recognised_and_others_are_not() {
        let plt = [0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22];
        assert_eq!(plt_threshold(&plt), Some(11));
        let mut other = plt;
        other[1] = 0x10;
        assert_eq!(plt_threshold(&other), None);
        assert_eq!(deref_of(&[0x76, 0x78, DW_OP_DEREF], RBP), Some(-8));
        assert_eq!(deref_of(&[0x76, 0x78], RBP), None);
        assert_eq!(address_of(&[0x76, 0x00], RBP), Some(0));
    }
}
