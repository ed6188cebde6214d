//! The agent's logs: `tracing` events written to stderr as text for people
//! or as JSON lines for log collectors, filtered by an `EnvFilter`
//! directive such as `info` or `taskprof=debug,warn`.

use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, coloured when stderr is a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<LogFormat, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("unknown log format `{text}`; use text or json")),
        }
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The filter directive does not parse.
    #[error("--log-level: {0}")]
    BadLevel(String),
    /// Another subscriber was installed first.
    #[error("failed to install the logger: {0}")]
    AlreadyInstalled(String),
}

/// Parses a filter directive such as `info` or `taskprof=debug,warn`; the
/// error says what is wrong. The configuration calls it too, so that a bad
/// level is reported before anything starts.
pub(crate) fn parse_level(text: &str) -> Result<EnvFilter, String> {
    let text = text.trim();
    EnvFilter::try_new(text)
        .map_err(|err| format!("`{text}` is not a valid filter ({err}); use e.g. info, debug or taskprof=debug,warn"))
}

/// Installs the process-wide subscriber writing to stderr. Fails on a bad
/// `level` or when a subscriber is already installed.
pub fn init(format: LogFormat, level: &str) -> Result<(), LoggingError> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(parse_level(level).map_err(LoggingError::BadLevel)?)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|err| LoggingError::AlreadyInstalled(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_case_insensitively_and_unknown_ones_list_the_valid() {
        assert_eq!("TEXT".parse(), Ok(LogFormat::Text));
        assert_eq!(" json".parse(), Ok(LogFormat::Json));
        let err = "xml".parse::<LogFormat>().unwrap_err();
        assert!(err.contains("text or json"), "{err}");
    }

    #[test]
    fn bad_level_names_the_flag_and_installs_nothing() {
        parse_level("taskprof=debug,warn").unwrap();
        let err = init(LogFormat::Json, "taskprof=loud").unwrap_err();
        assert!(matches!(err, LoggingError::BadLevel(_)));
        assert!(err.to_string().contains("--log-level"), "{err}");
    }

    #[test]
    fn only_one_logger_can_be_installed() {
        // The only test that installs one, so the first call must succeed.
        init(LogFormat::Text, "warn").unwrap();
        assert!(matches!(
            init(LogFormat::Json, "info"),
            Err(LoggingError::AlreadyInstalled(_))
        ));
    }
}
