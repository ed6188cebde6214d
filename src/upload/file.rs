//! The `file` protocol: each profile becomes
//! `<dir>/<sequence>-<index>-<service>[-<pid>].pb.gz`, with its labels beside it in
//! `<same name>.labels.json`. Files appear whole (written aside, then
//! renamed), and the labels file comes first, so that a consumer watching
//! for `.pb.gz` files always finds the labels already there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::Instrument as _;

use super::{sanitize_name, Batch, SendFuture, SeriesProfile, SetupError, UploadConfig, UploadError, Uploader};
use crate::util::durable::write_atomically;

/// Writes profiles to a local directory.
pub struct FileUploader {
    dir: PathBuf,
}

impl FileUploader {
    /// Takes the directory from the `file://` URL and creates it.
    pub fn new(config: &UploadConfig) -> Result<FileUploader, SetupError> {
        let dir = config.url.to_file_path().map_err(|()| SetupError::Url {
            protocol: "file",
            url: crate::util::redacted(&config.url),
            reason: "expected a file:// URL with an absolute path, such as file:///var/lib/taskprof/profiles"
                .to_string(),
        })?;
        std::fs::create_dir_all(&dir).map_err(|error| SetupError::OutputDir {
            path: dir.clone(),
            error,
        })?;
        Ok(FileUploader { dir })
    }
}

impl Uploader for FileUploader {
    fn send<'a>(&'a self, profiles: &'a [SeriesProfile], window: &'a Batch) -> SendFuture<'a> {
        let span = tracing::info_span!("upload", protocol = "file", sequence = window.sequence);
        Box::pin(
            async move {
                let dir = self.dir.clone();
                let owned = profiles.to_vec();
                let (sequence, start, end) = (window.sequence, window.start, window.end);
                // File writes block; keep them off the async workers.
                let written = tokio::task::spawn_blocking(move || {
                    owned
                        .iter()
                        .enumerate()
                        .map(|(index, profile)| write_profile(&dir, sequence, start, end, index, profile))
                        .collect::<Vec<_>>()
                })
                .await;
                written.unwrap_or_else(|err| {
                    vec![Err(UploadError::retryable(format!("the file writer failed: {err}"))); profiles.len()]
                })
            }
            .instrument(span),
        )
    }

    fn name(&self) -> &'static str {
        "file"
    }
}

#[derive(Serialize)]
struct LabelsFile<'a> {
    sequence: u64,
    start_unix_ms: u128,
    end_unix_ms: u128,
    samples: u64,
    labels: BTreeMap<&'a str, &'a str>,
}

fn write_profile(
    dir: &Path,
    sequence: u64,
    start: SystemTime,
    end: SystemTime,
    index: usize,
    profile: &SeriesProfile,
) -> Result<(), UploadError> {
    let base = file_stem(sequence, index, profile);
    let labels = LabelsFile {
        sequence,
        start_unix_ms: unix_millis(start),
        end_unix_ms: unix_millis(end),
        samples: profile.samples,
        labels: profile.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
    };
    let json = serde_json::to_vec_pretty(&labels).map_err(|err| UploadError::Rejected {
        status: 0,
        message: format!("failed to encode the labels: {err}"),
    })?;
    for (path, bytes) in [
        (dir.join(format!("{base}.labels.json")), json.as_slice()),
        (dir.join(format!("{base}.pb.gz")), profile.payload.as_slice()),
    ] {
        // A full or read-only disk may be fixed while the agent runs.
        write_atomically(&path, bytes)
            .map_err(|err| UploadError::retryable(format!("failed to write `{}`: {err}", path.display())))?;
    }
    Ok(())
}

/// `<sequence>-<index>-<service>`, and `-<pid>` when the profile is one
/// process's (`--series-per-process`), with the service name reduced to
/// characters safe in a file name. The index (the profile's place in its
/// window) keeps names unique: one series can have two profiles in a
/// window, when a process execs and starts a new incarnation.
fn file_stem(sequence: u64, index: usize, profile: &SeriesProfile) -> String {
    let service = sanitize_name(profile.label("service_name").unwrap_or_default(), |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
    });
    match profile.label("pid") {
        Some(pid) if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{sequence}-{index:05}-{service}-{pid}")
        }
        _ => format!("{sequence}-{index:05}-{service}"),
    }
}

fn unix_millis(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::upload::test_support::{series_profile as profile, upload_config};
    use crate::upload::Protocol;

    #[tokio::test]
    async fn profiles_and_labels_land_in_the_directory() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("out/nested");
        let url = url::Url::from_directory_path(&dir).expect("file URL");
        let config = upload_config(Protocol::File, url.as_str());
        let uploader = FileUploader::new(&config).expect("creates the directory");
        let profiles = vec![
            profile(&[("service_name", "kworker/0:1"), ("pid", "12")], b"one"),
            profile(&[("service_name", "")], b"two"),
        ];
        let batch = Batch {
            sequence: 99,
            start: UNIX_EPOCH + Duration::from_secs(10),
            end: UNIX_EPOCH + Duration::from_secs(20),
            profiles: profiles.clone(),
            shared: Vec::new(),
        };
        assert_eq!(uploader.send(&profiles, &batch).await, vec![Ok(()), Ok(())]);

        assert_eq!(
            std::fs::read(dir.join("99-00000-kworker_0_1-12.pb.gz")).expect("profile"),
            b"one"
        );
        assert_eq!(
            std::fs::read(dir.join("99-00001-unknown.pb.gz")).expect("profile"),
            b"two"
        );
        let labels: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("99-00000-kworker_0_1-12.labels.json")).expect("labels"))
                .expect("JSON");
        assert_eq!(labels["labels"]["service_name"], "kworker/0:1");
        assert_eq!(labels["sequence"], 99);
        assert_eq!(labels["end_unix_ms"], 20_000);
        assert_eq!(std::fs::read_dir(&dir).expect("list").count(), 4);
    }

    #[test]
    fn non_file_urls_are_refused() {
        let config = upload_config(Protocol::File, "http://host/dir");
        assert!(FileUploader::new(&config).is_err());
    }
}
