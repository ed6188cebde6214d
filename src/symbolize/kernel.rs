//! Kernel symbols from `/proc/kallsyms`, in a compact sorted table read
//! once: about 12 bytes plus the name per text symbol, instead of a parsed
//! copy per lookup. Module symbols are included (they are in kallsyms).

use std::path::Path;

/// Kernel text symbols sorted by address.
#[derive(Debug, Default)]
pub struct KernelSymbols {
    addresses: Vec<u64>,
    name_ends: Vec<u32>,
    names: String,
}

impl KernelSymbols {
    /// Bytes the table holds on the heap.
    pub fn heap_bytes(&self) -> u64 {
        (self.addresses.capacity() * 8 + self.name_ends.capacity() * 4 + self.names.capacity()) as u64
    }

    /// Reads `/proc/kallsyms`. With `kernel.kptr_restrict` hiding addresses
    /// (all zero), the table is empty and every kernel frame stays unnamed.
    pub fn load() -> KernelSymbols {
        Self::load_from(Path::new("/proc/kallsyms"))
    }

    /// Reads a kallsyms-format file line by line: the text (5 MiB and
    /// more) is never held whole.
    pub fn load_from(path: &Path) -> KernelSymbols {
        match std::fs::File::open(path) {
            Ok(file) => Self::parse_lines(std::io::BufRead::lines(std::io::BufReader::new(file)).map_while(Result::ok)),
            Err(_) => KernelSymbols::default(),
        }
    }

    /// Parses kallsyms text: `ADDRESS TYPE NAME [MODULE]` lines; only text
    /// symbols (types t, T, w, W) are kept.
    pub fn parse(text: &str) -> KernelSymbols {
        Self::parse_lines(text.lines())
    }

    fn parse_lines<S: AsRef<str>>(lines: impl Iterator<Item = S>) -> KernelSymbols {
        // Names in reading order, then sorted by address through an index
        // of (address, name start, name end).
        let mut read_names = String::new();
        let mut entries: Vec<(u64, u32, u32)> = Vec::new();
        for line in lines {
            let Some((address, name)) = kallsyms_line(line.as_ref()) else {
                continue;
            };
            let start = read_names.len() as u32;
            read_names.push_str(name);
            entries.push((address, start, read_names.len() as u32));
        }
        entries.sort_by_key(|e| e.0);
        let mut table = KernelSymbols {
            addresses: Vec::with_capacity(entries.len()),
            name_ends: Vec::with_capacity(entries.len()),
            names: String::with_capacity(read_names.len()),
        };
        for (address, start, end) in entries {
            table.addresses.push(address);
            table.names.push_str(&read_names[start as usize..end as usize]);
            table.name_ends.push(table.names.len() as u32);
        }
        table
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    /// Whether no symbol is known.
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }

    /// The symbol containing `address`: the last one starting at or below it.
    pub fn lookup(&self, address: u64) -> Option<&str> {
        let index = self.addresses.partition_point(|&a| a <= address).checked_sub(1)?;
        let start = if index == 0 {
            0
        } else {
            self.name_ends[index - 1] as usize
        };
        Some(&self.names[start..self.name_ends[index] as usize])
    }
}

/// The address and name of one kallsyms line (`ADDRESS TYPE NAME
/// [MODULE]`) if it is a text symbol (types t, T, w, W) at a non-zero
/// address; `None` for every other line.
pub(crate) fn kallsyms_line(line: &str) -> Option<(u64, &str)> {
    let mut parts = line.split_ascii_whitespace();
    let (Some(address), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let address = u64::from_str_radix(address, 16).ok()?;
    (address != 0 && matches!(kind, "t" | "T" | "w" | "W")).then_some((address, name))
}

#[cfg(test)]
mod tests {
    use super::KernelSymbols;

    #[test]
    fn lookup_picks_the_preceding_kallsyms_line() {
        let table = KernelSymbols::parse(
            "ffffffff81000000 T _stext\nffffffff81000100 t do_thing\nffffffff81000080 D some_data\n\
             0000000000000000 T hidden\nffffffffc0000000 t mod_fn\t[mymod]\ngarbage\n",
        );
        assert_eq!(table.len(), 3);
        assert_eq!(table.lookup(0xffffffff81000050), Some("_stext"));
        assert_eq!(table.lookup(0xffffffff81000100), Some("do_thing"));
        assert_eq!(table.lookup(0xffffffffc0000010), Some("mod_fn"));
        assert_eq!(table.lookup(0xffffffff80000000), None);
    }

    #[test]
    fn running_kernel_names_its_own_functions() {
        let table = KernelSymbols::load();
        assert!(table.len() > 1000, "kallsyms unreadable or hidden (run as root)");
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap();
        let (address, name) = text
            .lines()
            .find_map(|l| {
                let mut p = l.split_whitespace();
                let a = u64::from_str_radix(p.next()?, 16).ok()?;
                let name = p.nth(1)?;
                (name == "ksys_read").then_some((a, name))
            })
            .expect("ksys_read in kallsyms");
        assert_eq!(table.lookup(address + 1), Some(name));
    }
}
