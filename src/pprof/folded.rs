//! Folded stacks (`process;root;...;leaf count`, as Brendan Gregg's
//! stackcollapse scripts write them) and the SVG flame graph inferno draws
//! from them.

use std::collections::BTreeMap;
use std::io::Write;

use crate::symbolize::samples::Sample;

/// Folded lines, one per distinct stack, sorted. Kernel frames carry the
/// usual `_[k]` suffix, and inlined functions appear as frames of their own.
pub fn folded_lines(samples: &[Sample]) -> Vec<String> {
    let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
    for sample in samples {
        let mut stack = clean(&sample.process_name);
        for frame in sample.frames.iter().rev() {
            for line in frame.lines.iter().rev() {
                stack.push(';');
                // Python frames as `module.qualname`, as py-spy shows them.
                let name = if frame.python {
                    &line.function.system_name
                } else {
                    &line.function.name
                };
                stack.push_str(&clean(name));
                if frame.kernel {
                    stack.push_str("_[k]");
                }
            }
        }
        *stacks.entry(stack).or_default() += sample.count;
    }
    stacks
        .into_iter()
        .map(|(stack, count)| format!("{stack} {count}"))
        .collect()
}

/// Frame names may not contain the separators of the format.
fn clean(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| if c == ';' || c == '\n' || c == '\r' { ':' } else { c })
        .collect();
    if cleaned.is_empty() {
        "[unknown]".to_string()
    } else {
        cleaned
    }
}

/// Draws an SVG flame graph of `samples`.
pub fn write_flamegraph(samples: &[Sample], title: &str, out: impl Write) -> std::io::Result<()> {
    let lines = folded_lines(samples);
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    options.count_name = "samples".to_string();
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
        .map_err(|e| std::io::Error::other(e.to_string()))
}
