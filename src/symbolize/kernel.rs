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
    /// Reads `/proc/kallsyms`. With `kernel.kptr_restrict` hiding addresses
    /// (all zero), the table is empty and every kernel frame stays unnamed.
    pub fn load() -> KernelSymbols {
        Self::load_from(Path::new("/proc/kallsyms"))
    }

    /// Reads a kallsyms-format file.
    pub fn load_from(path: &Path) -> KernelSymbols {
        std::fs::read_to_string(path)
            .map(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    /// Parses kallsyms text: `ADDRESS TYPE NAME [MODULE]` lines; only text
    /// symbols (types t, T, w, W) are kept.
    pub fn parse(text: &str) -> KernelSymbols {
        let mut entries: Vec<(u64, &str)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_ascii_whitespace();
                let address = u64::from_str_radix(parts.next()?, 16).ok()?;
                let kind = parts.next()?;
                let name = parts.next()?;
                (address != 0 && matches!(kind, "t" | "T" | "w" | "W")).then_some((address, name))
            })
            .collect();
        entries.sort_by_key(|e| e.0);
        let mut table = KernelSymbols {
            addresses: Vec::with_capacity(entries.len()),
            name_ends: Vec::with_capacity(entries.len()),
            names: String::with_capacity(entries.iter().map(|e| e.1.len()).sum()),
        };
        for (address, name) in entries {
            table.addresses.push(address);
            table.names.push_str(name);
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

#[cfg(test)]
mod tests {
    use super::KernelSymbols;

    #[test]
    fn lookup_picks_the_preceding_text_symbol() {
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
