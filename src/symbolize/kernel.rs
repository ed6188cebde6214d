//! Kernel symbols from `/proc/kallsyms`, in a compact sorted table read
//! once: about 12 bytes plus the name per text symbol, instead of a parsed
//! copy per lookup. Module symbols are included (they are in kallsyms).
//! A single pass that knows all its addresses up front (the one-shot)
//! names them while reading instead, and keeps no table
//! ([`name_addresses`]).

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

    /// The symbols' addresses, in order.
    pub fn addresses(&self) -> impl Iterator<Item = u64> + '_ {
        self.addresses.iter().copied()
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

/// Names sorted, distinct `addresses` exactly as [`KernelSymbols::lookup`]
/// would, in one read of `path` (`/proc/kallsyms`), holding one name per
/// address instead of the table: 3 MiB less memory on a kernel with
/// 120,000 symbols, for a run that needs a few hundred of them.
pub fn name_addresses(path: &Path, addresses: &[u64]) -> Vec<Option<String>> {
    let Ok(file) = std::fs::File::open(path) else {
        return vec![None; addresses.len()];
    };
    name_addresses_in(
        std::io::BufRead::lines(std::io::BufReader::new(file)).map_while(Result::ok),
        addresses,
    )
}

fn name_addresses_in<S: AsRef<str>>(lines: impl Iterator<Item = S>, addresses: &[u64]) -> Vec<Option<String>> {
    debug_assert!(
        addresses.windows(2).all(|w| w[0] < w[1]),
        "addresses must be sorted and distinct"
    );
    // A symbol can name every address from its own up to the next
    // symbol's. Each is kept only in the slot of the first address at or
    // above it (the highest such symbol; the last line of equal ones, as
    // the table's stable sort does); an address's name is then the
    // highest symbol among its slot and the slots below it.
    let mut slots: Vec<Option<(u64, String)>> = vec![None; addresses.len()];
    for line in lines {
        let Some((symbol, name)) = kallsyms_line(line.as_ref()) else {
            continue;
        };
        let slot = addresses.partition_point(|&a| a < symbol);
        let Some(best) = slots.get_mut(slot) else {
            continue;
        };
        if best.as_ref().is_none_or(|(kept, _)| symbol >= *kept) {
            match best {
                Some((kept, kept_name)) => {
                    *kept = symbol;
                    kept_name.clear();
                    kept_name.push_str(name);
                }
                None => *best = Some((symbol, name.to_string())),
            }
        }
    }
    let mut highest: Option<usize> = None;
    (0..addresses.len())
        .map(|slot| {
            if let Some((symbol, _)) = &slots[slot] {
                if highest.is_none_or(|h| slots[h].as_ref().is_some_and(|(kept, _)| kept < symbol)) {
                    highest = Some(slot);
                }
            }
            highest.and_then(|h| slots[h].as_ref().map(|(_, name)| name.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::KernelSymbols;

    /// Streaming names every address as the table does, on the running
    /// kernel's own kallsyms (unsorted at its end, with modules and
    /// aliases at equal addresses), including addresses below, between,
    /// on and above its symbols.
    #[test]
    fn naming_while_reading_agrees_with_the_table() {
        let text = std::fs::read_to_string("/proc/kallsyms").expect("/proc/kallsyms");
        let table = KernelSymbols::parse(&text);
        assert!(table.len() > 1000, "kallsyms unreadable or hidden (run as root)");
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut addresses: Vec<u64> = table
            .addresses
            .iter()
            .step_by(37)
            .flat_map(|&a| [a, a + 1, a - 1])
            .collect();
        for _ in 0..5000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let lowest = table.addresses[0] - 4096;
            addresses.push(lowest + rng % (u64::MAX - lowest));
        }
        addresses.extend([0, 1, u64::MAX]);
        addresses.sort_unstable();
        addresses.dedup();
        let streamed = super::name_addresses_in(text.lines(), &addresses);
        for (address, name) in addresses.iter().zip(&streamed) {
            assert_eq!(name.as_deref(), table.lookup(*address), "at {address:#x}");
        }
        assert!(streamed.iter().filter(|n| n.is_some()).count() > 5000);
        let synthetic = "ffffffff81000000 T _stext\nffffffff81000100 t do_thing\nffffffff81000100 t alias\n\
                         ffffffff81000080 D some_data\nffffffffc0000000 t mod_fn\t[mymod]\nffffffff81000040 t early\n";
        let table = KernelSymbols::parse(synthetic);
        let addresses = [
            0xffffffff80000000,
            0xffffffff81000050,
            0xffffffff81000100,
            0xffffffffc0000010,
        ];
        let streamed = super::name_addresses_in(synthetic.lines(), &addresses);
        let expected: Vec<Option<String>> = addresses.iter().map(|&a| table.lookup(a).map(str::to_string)).collect();
        assert_eq!(streamed, expected);
        assert_eq!(expected[2].as_deref(), Some("alias"));
    }

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
