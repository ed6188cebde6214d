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
    containers: HashMap<ProcessKey, ContainerRef>,
    missing_metadata: u64,
}

impl ContainerLabeler {
    /// A labeler with `settings`.
    pub fn new(settings: LabelerSettings) -> ContainerLabeler {
        ContainerLabeler {
            settings,
            containers: HashMap::default(),
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
        self.containers
            .entry(key)
            .or_insert_with(|| read_container_ref(root, key.tgid))
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
}
