//! Secrets (tokens, passwords, header values): a type that never prints
//! its value, and the one way to read one from a file.

use std::fmt;
use std::path::Path;

use reqwest::header::HeaderValue;

/// A secret (token, password, header value). Never printed: its Debug and
/// Display forms are redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for putting on the wire and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a secret file could not be used; never the secret itself.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SecretFileError {
    /// The file could not be read.
    #[error("{0}")]
    Unreadable(std::io::Error),
    /// The file holds nothing but white space.
    #[error("the file is empty")]
    Empty,
}

/// Reads a secret from a file, without its trailing line ending; a file
/// read anew each time picks up a rotated secret.
pub(crate) fn read_secret_file(path: &Path) -> Result<Secret, SecretFileError> {
    let text = std::fs::read_to_string(path).map_err(SecretFileError::Unreadable)?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.trim().is_empty() {
        return Err(SecretFileError::Empty);
    }
    Ok(Secret::new(secret))
}

/// An `Authorization: <scheme> <secret>` value, marked sensitive so that
/// the HTTP stack never prints it. Fails, without saying why, if the secret
/// holds characters a header cannot carry.
pub(crate) fn authorization(scheme: &str, secret: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("{scheme} {secret}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}
