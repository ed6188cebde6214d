//! One stack out of two: the native user stack, leaf first, and the
//! thread's Python frames, newest first.
//!
//! Each `_PyEval_EvalFrameDefault` activation on the native stack runs one
//! group of Python frames: the frames from the newest down to the first
//! one the walker marked as its activation's outermost (`entry`). So the
//! groups are taken in order and each replaces the next evaluator frame
//! found from the leaf. A C extension called from Python therefore sits
//! above the Python frame that called it, and the kernel above that.
//! Python frames left over (the native walk stopped before reaching their
//! evaluator) go at the root end, in order, so nothing is dropped.

/// Interleaves `python` (newest first; `entry[i]` marks the outermost
/// frame of an activation) into `native` (leaf first), putting each group
/// of Python frames where the evaluator frame that runs it is.
pub fn interleave<T>(native: Vec<T>, python: Vec<T>, entry: &[bool], is_evaluator: impl Fn(&T) -> bool) -> Vec<T> {
    let mut merged = Vec::with_capacity(native.len() + python.len());
    let mut python = python
        .into_iter()
        .zip(entry.iter().copied().chain(std::iter::repeat(false)));
    let mut python_left = true;
    for frame in native {
        if python_left && is_evaluator(&frame) {
            let mut took = false;
            for (py, outermost) in python.by_ref() {
                merged.push(py);
                took = true;
                if outermost {
                    break;
                }
            }
            if took {
                continue;
            }
            python_left = false;
        }
        merged.push(frame);
    }
    merged.extend(python.map(|(py, _)| py));
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(native: &[&'static str], python: &[&'static str], entry: &[bool]) -> Vec<&'static str> {
        interleave(native.to_vec(), python.to_vec(), entry, |f| *f == "eval")
    }

    #[test]
    fn one_activation_with_three_frames_replaces_its_evaluator() {
        // 3.11+: Python-to-Python calls stay in one activation.
        let merged = run(
            &[
                "sha256_block",
                "hashlib_update",
                "eval",
                "PyEval_EvalCode",
                "main",
                "_start",
            ],
            &["leaf", "handle", "serve"],
            &[false, false, true],
        );
        assert_eq!(
            merged,
            [
                "sha256_block",
                "hashlib_update",
                "leaf",
                "handle",
                "serve",
                "PyEval_EvalCode",
                "main",
                "_start"
            ]
        );
    }

    #[test]
    fn each_activation_goes_to_its_own_evaluator() {
        // ≤3.10: one activation per frame, with C calls in between.
        let merged = run(
            &["eval", "call_function", "eval", "builtin_map", "eval", "main"],
            &["leaf", "mid", "root"],
            &[true, true, true],
        );
        assert_eq!(merged, ["leaf", "call_function", "mid", "builtin_map", "root", "main"]);
    }

    #[test]
    fn frames_without_an_evaluator_go_to_the_root_end() {
        let merged = run(&["eval", "truncated"], &["leaf", "mid", "root"], &[true, false, true]);
        assert_eq!(merged, ["leaf", "truncated", "mid", "root"]);
    }

    #[test]
    fn evaluators_without_python_frames_stay() {
        let merged = run(&["eval", "x", "eval", "main"], &["only"], &[true]);
        assert_eq!(merged, ["only", "x", "eval", "main"]);
    }

    #[test]
    fn a_thread_without_python_keeps_its_native_stack() {
        let merged = run(&["read", "eval", "main"], &[], &[]);
        assert_eq!(merged, ["read", "eval", "main"]);
    }
}
