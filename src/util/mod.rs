//! Small helpers that several stages need, each defined once here: retry
//! backoff, error chains, URLs fit for logs, crash-safe file writes and
//! secrets read from files.

pub(crate) mod backoff;
pub(crate) mod durable;
pub mod memory;
pub(crate) mod secret;

use url::Url;

/// An error and its sources, joined by `: `; a source whose text the
/// message already holds is not repeated. For errors that cross into a
/// `String` reason (reqwest's own message is often just "error sending
/// request"); errors that stay errors keep their chain for `main` to print.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `bytes` gzipped at the fast level: profiles are compressed once per
/// window on the sampling thread, where speed matters more than the last
/// few percent.
pub fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;

    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes)?;
    encoder.finish()
}

/// A URL fit for logs and errors: no user info, no query, no fragment.
pub(crate) fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    // Both fail only for URLs that cannot carry credentials anyway.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_urls_hide_credentials_and_query() {
        let url = Url::parse("https://user:pw@host/p?token=x#frag").expect("url");
        assert_eq!(redacted(&url), "https://host/p");
    }

    #[test]
    fn error_chains_repeat_no_source() {
        let inner = std::io::Error::other("disk full");
        let outer = std::io::Error::other(ChainTest(inner));
        assert_eq!(error_chain(&outer), "write failed: disk full");
    }

    #[derive(Debug)]
    struct ChainTest(std::io::Error);

    impl std::fmt::Display for ChainTest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("write failed")
        }
    }

    impl std::error::Error for ChainTest {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
