//! Container and pod identity of profiled processes: which container a
//! process runs in (from its cgroup), which pod that is (from the API
//! server's pods on this node), the labels that follow, and whether the
//! operator's filters keep it. Decisions are made before a process is
//! captured or symbolized, so excluded processes cost almost nothing.

use std::path::PathBuf;

use rustc_hash::FxHashMap as HashMap;

use crate::kubernetes::{series_labels, LabelOptions, PodCache, PodFilter};
use crate::process::cgroup::{read_container_ref, ContainerRef};
use crate::process::ProcessKey;

/// What to do with a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Profile it, with these labels added to (and overriding) the defaults.
    Keep(Vec<(String, String)>),
    /// Leave it out.
    Drop,
}

/// Settings of [`ContainerLabeler`].
#[derive(Debug, Clone)]
pub struct LabelerSettings {
    /// Where `PID/cgroup` files are read from (normally `/proc`).
    pub cgroup_proc_root: PathBuf,
    /// Pods of this node, when `--kubernetes` is on.
    pub pods: Option<PodCache>,
    /// The operator's filters.
    pub filter: PodFilter,
    /// Keep processes in no container.
    pub keep_host_processes: bool,
    /// How pod labels become series labels.
    pub label_options: LabelOptions,
}

/// Resolves processes to containers and pods, with a per-process cache.
pub struct ContainerLabeler {
    settings: LabelerSettings,
    /// Each process's container, with the window it was last asked about.
    containers: HashMap<ProcessKey, (ContainerRef, u64)>,
    /// The window being cut, for the entries' ages.
    window: u64,
    missing_metadata: u64,
}

impl ContainerLabeler {
    /// A labeler with `settings`.
    pub fn new(settings: LabelerSettings) -> ContainerLabeler {
        ContainerLabeler {
            settings,
            containers: HashMap::default(),
            window: 0,
            missing_metadata: 0,
        }
    }

    /// Processes in containers whose pod was unknown when asked, so far.
    pub fn missing_metadata(&self) -> u64 {
        self.missing_metadata
    }

    /// The container a process runs in, read from its cgroup once.
    pub fn container(&mut self, key: ProcessKey) -> &ContainerRef {
        let root = &self.settings.cgroup_proc_root;
        let entry = self
            .containers
            .entry(key)
            .or_insert_with(|| (read_container_ref(root, key.tgid), 0));
        entry.1 = self.window;
        &entry.0
    }

    /// Whether to profile the process, and its container and pod labels.
    /// A container the pod cache does not know triggers a (rate-limited)
    /// refresh and is labelled with its id alone until the pod is known.
    pub fn verdict(&mut self, key: ProcessKey) -> Verdict {
        let container = self.container(key).clone();
        let Some(container_id) = container.container_id.as_deref() else {
            if !self.settings.keep_host_processes {
                return Verdict::Drop;
            }
            return match self.settings.filter.allows(None, None) {
                true => Verdict::Keep(Vec::new()),
                false => Verdict::Drop,
            };
        };
        let pod = match &self.settings.pods {
            Some(pods) => {
                let found = pods.lookup_container(container_id);
                if found.is_none() {
                    self.missing_metadata += 1;
                    pods.request_refresh_for(container_id);
                }
                found
            }
            None => None,
        };
        if !self
            .settings
            .filter
            .allows(pod.as_ref().map(|(meta, _)| meta.as_ref()), Some(container_id))
        {
            return Verdict::Drop;
        }
        match pod {
            Some((meta, name)) => {
                Verdict::Keep(series_labels(&meta, &name, container_id, &self.settings.label_options))
            }
            None => Verdict::Keep(vec![("container_id".to_string(), container_id.to_string())]),
        }
    }

    /// Forgets processes that are gone.
    pub fn forget(&mut self, keys: &[ProcessKey]) {
        for key in keys {
            self.containers.remove(key);
        }
    }

    /// Ends window `window`: forgets the processes not asked about for
    /// `idle_windows`. Kept processes are forgotten with their table entry,
    /// but a filtered one has none, and if its exit event was lost (the
    /// BPF ring buffer was full) nothing else would ever forget it. One
    /// sampled again is read again, a cgroup file.
    pub fn end_window(&mut self, window: u64, idle_windows: u64) {
        self.window = window;
        self.containers
            .retain(|_, (_, asked)| asked.saturating_add(idle_windows) > window);
    }

    /// Processes whose container is cached.
    #[cfg(test)]
    fn cached_processes(&self) -> usize {
        self.containers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3c1f0a9e7b5d4c2a8f6e0d1b9a7c5e3f2d4b6a8c0e1f3a5b7d9c2e4f6a8b0c1d";

    /// A proc-like directory where pid 10 runs in container `ID` and pid 20
    /// on the host.
    fn cgroups() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (pid, path) in [(10, format!("/taskprof-soak/{ID}")), (20, "/user.slice".to_string())] {
            let proc_dir = dir.path().join(pid.to_string());
            std::fs::create_dir_all(&proc_dir).expect("mkdir");
            std::fs::write(proc_dir.join("cgroup"), format!("0::{path}\n")).expect("cgroup");
        }
        dir
    }

    /// Filtered-out processes have no table entry to be forgotten with: a
    /// host process whose exit event was lost must not stay cached forever.
    #[test]
    fn processes_not_asked_about_for_a_while_are_forgotten() {
        let dir = cgroups();
        let mut labeler = ContainerLabeler::new(LabelerSettings {
            cgroup_proc_root: dir.path().to_path_buf(),
            pods: None,
            filter: PodFilter {
                container_ids: vec![ID.to_string()],
                ..PodFilter::default()
            },
            keep_host_processes: true,
            label_options: LabelOptions::default(),
        });
        let (container, host) = (ProcessKey::new(10, 1), ProcessKey::new(20, 1));
        assert_eq!(
            labeler.verdict(container),
            Verdict::Keep(vec![("container_id".to_string(), ID.to_string())])
        );
        assert_eq!(labeler.verdict(host), Verdict::Drop);
        assert_eq!(labeler.cached_processes(), 2);
        for window in 1..=5 {
            labeler.verdict(container);
            labeler.end_window(window, 3);
        }
        assert_eq!(labeler.cached_processes(), 1, "the host process was forgotten");
        assert_eq!(labeler.verdict(host), Verdict::Drop, "and is read again when sampled");
    }
}
