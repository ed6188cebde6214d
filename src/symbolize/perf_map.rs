//! `/tmp/perf-PID.map`, written by JIT runtimes (V8/Node, the JVM with an
//! agent, .NET, LuaJIT...): one `START SIZE name` line per function, hex.

use std::path::{Path, PathBuf};

/// A parsed perf map, sorted by start address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerfMap {
    entries: Vec<(u64, u64, String)>,
}

impl PerfMap {
    /// Parses perf map text, skipping malformed lines.
    pub fn parse(text: &str) -> PerfMap {
        let mut entries: Vec<(u64, u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, ' ');
                let start = u64::from_str_radix(parts.next()?.trim_start_matches("0x"), 16).ok()?;
                let size = u64::from_str_radix(parts.next()?.trim_start_matches("0x"), 16).ok()?;
                let name = parts.next()?.trim();
                (!name.is_empty()).then(|| (start, start.saturating_add(size), name.to_string()))
            })
            .collect();
        // Later lines win for a start address (code regenerated in place).
        entries.reverse();
        entries.sort_by_key(|e| e.0);
        entries.dedup_by_key(|e| e.0);
        PerfMap { entries }
    }

    /// The perf map of `tgid`: from its own /tmp when it is alive (it may
    /// live in another mount namespace), else from the host's /tmp.
    pub fn load_for(tgid: u32) -> Option<PerfMap> {
        let name = format!("perf-{tgid}.map");
        let candidates: [PathBuf; 2] = [
            Path::new("/proc").join(tgid.to_string()).join("root/tmp").join(&name),
            Path::new("/tmp").join(&name),
        ];
        candidates
            .iter()
            .find_map(|path| std::fs::read_to_string(path).ok())
            .map(|text| PerfMap::parse(&text))
    }

    /// The function containing `address`.
    pub fn lookup(&self, address: u64) -> Option<&str> {
        let index = self.entries.partition_point(|e| e.0 <= address).checked_sub(1)?;
        let (_, end, name) = &self.entries[index];
        (address < *end).then_some(name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::PerfMap;

    #[test]
    fn lookup_inside_outside_and_malformed() {
        let map = PerfMap::parse("1000 10 LazyCompile:~foo app.js:1\nzz 1 bad\n2000 0x20 Function:bar\n");
        assert_eq!(map.lookup(0x1008), Some("LazyCompile:~foo app.js:1"));
        assert_eq!(map.lookup(0x1010), None);
        assert_eq!(map.lookup(0x201f), Some("Function:bar"));
        assert_eq!(map.lookup(0xfff), None);
    }
}
