//! Demangling of Rust (legacy and v0) and C++ (Itanium) symbol names.

/// The human-readable name of `raw`, or `raw` itself if it is not mangled.
pub fn demangle(raw: &str) -> String {
    if let Ok(demangled) = rustc_demangle::try_demangle(raw) {
        // `{:#}` drops the hash suffix of legacy Rust names.
        return format!("{demangled:#}");
    }
    if raw.starts_with("_Z") {
        if let Ok(symbol) = cpp_demangle::Symbol::new(raw) {
            if let Ok(demangled) = symbol.demangle(&cpp_demangle::DemangleOptions::default()) {
                return demangled;
            }
        }
    }
    raw.to_string()
}

#[cfg(test)]
mod tests {
    use super::demangle;

    #[test]
    fn rust_cpp_and_plain_names() {
        assert_eq!(
            demangle("_ZN4core3ptr13drop_in_place17h0123456789abcdefE"),
            "core::ptr::drop_in_place"
        );
        assert_eq!(demangle("_ZN3foo3barEv"), "foo::bar()");
        assert_eq!(demangle("hot"), "hot");
        assert_eq!(demangle("_Zgarbage"), "_Zgarbage");
    }
}
