//! Just enough of ELF64 (little endian) to find the unwind sections and
//! the loadable segments of a file: the section and program headers, read
//! from a file without reading the rest of it.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

/// Why a file is not an ELF file the unwinder can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// Not ELF, not 64-bit, or not little endian.
    #[error("not a 64-bit little-endian ELF file")]
    NotElf64,
    /// A header points outside the file.
    #[error("truncated or malformed ELF file: {0}")]
    Malformed(&'static str),
}

/// A section: its name, address and bytes in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Name from the section-header string table.
    pub name: String,
    /// Virtual address when loaded.
    pub address: u64,
    /// Where its bytes are in the file; empty for SHT_NOBITS.
    pub file_range: Range<usize>,
    /// Whether the section is compressed (SHF_COMPRESSED).
    pub compressed: bool,
}

/// A PT_LOAD segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// File offset.
    pub offset: u64,
    /// Virtual address.
    pub vaddr: u64,
    /// Bytes in the file.
    pub file_size: u64,
    /// Whether it is executable.
    pub executable: bool,
}

/// The parsed headers of an ELF file.
#[derive(Debug, Clone)]
pub struct Elf<'a> {
    /// The whole file.
    pub data: &'a [u8],
    /// Every section with a name.
    pub sections: Vec<Section>,
    /// Loadable segments.
    pub segments: Vec<Segment>,
    /// The machine (e_machine), 62 for x86_64.
    pub machine: u16,
    /// The entry point (e_entry).
    pub entry: u64,
}

const SHF_COMPRESSED: u64 = 0x800;
const SHT_NOBITS: u32 = 8;
const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;

fn read<const N: usize>(data: &[u8], at: usize) -> Result<[u8; N], ElfError> {
    data.get(at..at.checked_add(N).ok_or(ElfError::Malformed("offset overflow"))?)
        .and_then(|b| b.try_into().ok())
        .ok_or(ElfError::Malformed("header beyond the end of the file"))
}

/// Files larger than this are not read (no real binary comes close; a
/// sparse file could claim terabytes).
const MAX_FILE_BYTES: u64 = 4 << 30;

/// Reads the headers of the ELF file `file`, `len` bytes long: the file
/// header, the program and section headers and the section names, at
/// their file offsets in a zero-filled buffer of the file's length, which
/// [`Elf::parse`] reads and [`read_range`] adds sections to. The untouched
/// pages of the buffer are never allocated, so even a large library costs
/// only what is read. Reading (not mapping) the file means a file
/// truncated meanwhile gives an error rather than SIGBUS.
pub fn read_headers(file: &File, len: u64) -> Result<Vec<u8>, ElfError> {
    if len < 64 {
        return Err(ElfError::NotElf64);
    }
    if len > MAX_FILE_BYTES {
        return Err(ElfError::Malformed("file too large"));
    }
    let mut buffer = vec![0u8; len as usize];
    read_range(file, &mut buffer, 0, 64)?;
    let word = |b: &[u8], at: usize, n: usize| -> Result<usize, ElfError> {
        let bytes = at
            .checked_add(n)
            .and_then(|end| b.get(at..end))
            .ok_or(ElfError::Malformed("header beyond the end of the file"))?;
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(bytes);
        Ok(u64::from_le_bytes(v) as usize)
    };
    if buffer[..4] != *b"\x7fELF" || buffer[4] != 2 || buffer[5] != 1 {
        return Err(ElfError::NotElf64);
    }
    let (phoff, phentsize, phnum) = (word(&buffer, 32, 8)?, word(&buffer, 54, 2)?, word(&buffer, 56, 2)?);
    let (shoff, shentsize, shnum) = (word(&buffer, 40, 8)?, word(&buffer, 58, 2)?, word(&buffer, 60, 2)?);
    read_range(file, &mut buffer, phoff, offset_of(phoff, phnum, phentsize)?)?;
    read_range(file, &mut buffer, shoff, offset_of(shoff, shnum, shentsize)?)?;
    let shstrndx = word(&buffer, 62, 2)?;
    if shentsize >= 64 && shstrndx < shnum {
        let at = offset_of(shoff, shstrndx, shentsize)?;
        let (offset, size) = (word(&buffer, at + 24, 8)?, word(&buffer, at + 32, 8)?);
        read_range(file, &mut buffer, offset, offset.saturating_add(size))?;
    }
    Ok(buffer)
}

/// Reads bytes `start..end` of `file` into the same place of `buffer`
/// (from [`read_headers`]); what lies beyond the buffer is left out.
pub fn read_range(file: &File, buffer: &mut [u8], start: usize, end: usize) -> Result<(), ElfError> {
    let end = end.min(buffer.len());
    if start < end {
        file.read_exact_at(&mut buffer[start..end], start as u64)
            .map_err(|_| ElfError::Malformed("file shorter than its headers say"))?;
    }
    Ok(())
}

/// `base + index * size`, the offset of a table entry, if it does not
/// overflow (and leaves room for the fields read from the entry).
pub(crate) fn offset_of(base: usize, index: usize, size: usize) -> Result<usize, ElfError> {
    index
        .checked_mul(size)
        .and_then(|o| o.checked_add(base))
        .filter(|o| o.checked_add(64).is_some())
        .ok_or(ElfError::Malformed("header offset overflows"))
}

fn u16_at(data: &[u8], at: usize) -> Result<u16, ElfError> {
    read::<2>(data, at).map(u16::from_le_bytes)
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, ElfError> {
    read::<4>(data, at).map(u32::from_le_bytes)
}

fn u64_at(data: &[u8], at: usize) -> Result<u64, ElfError> {
    read::<8>(data, at).map(u64::from_le_bytes)
}

impl<'a> Elf<'a> {
    /// Parses the headers of `data`.
    pub fn parse(data: &'a [u8]) -> Result<Elf<'a>, ElfError> {
        // Magic, ELFCLASS64, ELFDATA2LSB.
        if data.len() < 64 || data[..4] != *b"\x7fELF" || data[4] != 2 || data[5] != 1 {
            return Err(ElfError::NotElf64);
        }
        let machine = u16_at(data, 18)?;
        let entry = u64_at(data, 24)?;
        let phoff = u64_at(data, 32)? as usize;
        let shoff = u64_at(data, 40)? as usize;
        let phentsize = u16_at(data, 54)? as usize;
        let phnum = u16_at(data, 56)? as usize;
        let shentsize = u16_at(data, 58)? as usize;
        let shnum = u16_at(data, 60)? as usize;
        let shstrndx = u16_at(data, 62)? as usize;

        let mut segments = Vec::new();
        if phentsize >= 56 {
            for i in 0..phnum {
                let at = offset_of(phoff, i, phentsize)?;
                if u32_at(data, at)? != PT_LOAD {
                    continue;
                }
                segments.push(Segment {
                    offset: u64_at(data, at + 8)?,
                    vaddr: u64_at(data, at + 16)?,
                    file_size: u64_at(data, at + 32)?,
                    executable: u32_at(data, at + 4)? & PF_X != 0,
                });
            }
        }

        let mut sections = Vec::new();
        if shentsize >= 64 && shnum > 0 && shstrndx < shnum {
            let header = |i: usize| offset_of(shoff, i, shentsize);
            let strtab_at = u64_at(data, header(shstrndx)? + 24)? as usize;
            let strtab_size = u64_at(data, header(shstrndx)? + 32)? as usize;
            let strtab = data
                .get(strtab_at..strtab_at.saturating_add(strtab_size))
                .ok_or(ElfError::Malformed("section name table beyond the end of the file"))?;
            for i in 0..shnum {
                let at = header(i)?;
                let name_at = u32_at(data, at)? as usize;
                let kind = u32_at(data, at + 4)?;
                let flags = u64_at(data, at + 8)?;
                let address = u64_at(data, at + 16)?;
                let offset = u64_at(data, at + 24)? as usize;
                let size = u64_at(data, at + 32)? as usize;
                let name = strtab
                    .get(name_at..)
                    .and_then(|s| s.split(|&b| b == 0).next())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .unwrap_or_default();
                if name.is_empty() {
                    continue;
                }
                let file_range = if kind == SHT_NOBITS {
                    0..0
                } else {
                    let end = offset
                        .checked_add(size)
                        .filter(|&end| end <= data.len())
                        .ok_or(ElfError::Malformed("section beyond the end of the file"))?;
                    offset..end
                };
                sections.push(Section {
                    name,
                    address,
                    file_range,
                    compressed: flags & SHF_COMPRESSED != 0,
                });
            }
        }
        Ok(Elf {
            data,
            sections,
            segments,
            machine,
            entry,
        })
    }

    /// The section called `name`.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The bytes of a section.
    pub fn bytes(&self, section: &Section) -> &'a [u8] {
        &self.data[section.file_range.clone()]
    }

    /// The loadable segment holding file offset `offset`.
    pub fn segment_at_offset(&self, offset: u64) -> Option<&Segment> {
        self.segments
            .iter()
            .find(|s| s.offset <= offset && offset < s.offset.saturating_add(s.file_size.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_is_not_elf64() {
        assert_eq!(Elf::parse(b"#!/bin/sh\n").unwrap_err(), ElfError::NotElf64);
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(b"\x7fELF");
        header[4] = 1; // 32-bit
        header[5] = 1;
        assert_eq!(Elf::parse(&header).unwrap_err(), ElfError::NotElf64);
    }

    #[test]
    fn reads_sections_and_segments_of_a_real_library() {
        let data = std::fs::read(crate::unwind::test_libc()).unwrap();
        let elf = Elf::parse(&data).unwrap();
        assert_eq!(elf.machine, 62);
        let eh_frame = elf.section(".eh_frame").expect("libc has .eh_frame");
        assert!(!elf.bytes(eh_frame).is_empty());
        let text = elf.section(".text").unwrap();
        let segment = elf
            .segments
            .iter()
            .find(|s| s.executable)
            .expect("an executable PT_LOAD segment");
        assert!(segment.vaddr <= text.address && text.address < segment.vaddr + segment.file_size);
    }

    #[test]
    fn offsets_that_overflow_are_errors_not_panics() {
        let mut data = std::fs::read(crate::unwind::test_libc()).unwrap();
        // e_shoff near the top of the address space.
        data[40..48].copy_from_slice(&(u64::MAX - 30).to_le_bytes());
        assert!(matches!(Elf::parse(&data), Err(ElfError::Malformed(_))));
        let mut data = std::fs::read(crate::unwind::test_libc()).unwrap();
        data[32..40].copy_from_slice(&(u64::MAX - 30).to_le_bytes());
        assert!(matches!(Elf::parse(&data), Err(ElfError::Malformed(_))));
    }

    #[test]
    fn a_header_pointing_past_the_end_is_an_error() {
        let data = std::fs::read(crate::unwind::test_libc()).unwrap();
        let cut = &data[..4096];
        assert!(matches!(Elf::parse(cut), Err(ElfError::Malformed(_))));
    }
}
