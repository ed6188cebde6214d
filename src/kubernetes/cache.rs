//! The pods of this node as last seen from the API server, indexed by UID
//! and by container id, shared between the watcher (the only writer) and
//! the sampling thread (which looks containers up once per process and
//! window).
//!
//! A deleted pod is kept for a grace period before it is forgotten: its
//! processes' last samples are labelled when their window closes, which is
//! after the kubelet has already reported the pod gone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use super::PodMetadata;

/// How long a deleted pod stays known: longer than any profiling window.
pub const DEFAULT_DELETED_GRACE: Duration = Duration::from_secs(120);

/// The least time between two relists asked for by
/// [`PodCache::request_refresh`].
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// How long [`PodCache::request_refresh_for`] ignores a container id it
/// already asked about. A container the API never reports (one started
/// outside Kubernetes, a pod's sandbox) would otherwise cost a relist every
/// [`REFRESH_INTERVAL`] for as long as it runs.
pub const UNKNOWN_CONTAINER_RETRY: Duration = Duration::from_secs(300);

/// The most container ids [`PodCache::request_refresh_for`] remembers.
const MAX_REMEMBERED_UNKNOWN: usize = 4096;

/// A point-in-time view of the cache and of the watcher's health, for
/// metrics and the readiness check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Pods known and not deleted.
    pub pods: usize,
    /// Deleted pods still kept for their grace period.
    pub deleted_pods: usize,
    /// Failed list requests.
    pub list_errors: u64,
    /// Watches that failed (not counting normal ends and 410 Gone).
    pub watch_errors: u64,
    /// Successful lists after the first one (410 Gone, reconnections,
    /// refresh requests).
    pub relists: u64,
    /// Refresh requests accepted by [`PodCache::request_refresh`].
    pub refresh_requests: u64,
    /// When the cache last heard from the API server (a list or a watch
    /// event); `None` until the first list.
    pub last_sync: Option<SystemTime>,
    /// Whether a list or watch is currently succeeding.
    pub connected: bool,
}

/// Pod metadata by UID and by container id. Cloning gives another handle
/// on the same cache.
#[derive(Debug, Clone)]
pub struct PodCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: RwLock<State>,
    deleted_grace: Duration,
    lists: AtomicU64,
    list_errors: AtomicU64,
    watch_errors: AtomicU64,
    refresh_requests: AtomicU64,
    connected: AtomicBool,
    last_sync: Mutex<Option<SystemTime>>,
    refresh_limits: Mutex<RefreshLimits>,
    refresh: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct State {
    pods: HashMap<String, Entry>,
    /// Container id → (pod UID, container name).
    containers: HashMap<String, (String, String)>,
}

/// What [`PodCache::request_refresh`] and
/// [`PodCache::request_refresh_for`] remember to rate-limit relists.
#[derive(Debug, Default)]
struct RefreshLimits {
    last: Option<Instant>,
    /// Container ids already asked about, and when.
    asked: HashMap<String, Instant>,
}

#[derive(Debug)]
struct Entry {
    meta: Arc<PodMetadata>,
    deleted_at: Option<Instant>,
}

impl Default for PodCache {
    fn default() -> Self {
        PodCache::new()
    }
}

impl PodCache {
    /// An empty cache keeping deleted pods for [`DEFAULT_DELETED_GRACE`].
    pub fn new() -> PodCache {
        PodCache::with_deleted_grace(DEFAULT_DELETED_GRACE)
    }

    /// An empty cache keeping deleted pods for `grace`.
    pub fn with_deleted_grace(grace: Duration) -> PodCache {
        PodCache {
            inner: Arc::new(Inner {
                state: RwLock::default(),
                deleted_grace: grace,
                lists: AtomicU64::new(0),
                list_errors: AtomicU64::new(0),
                watch_errors: AtomicU64::new(0),
                refresh_requests: AtomicU64::new(0),
                connected: AtomicBool::new(false),
                last_sync: Mutex::new(None),
                refresh_limits: Mutex::default(),
                refresh: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The pod running the container with this id (64 lowercase hex
    /// digits, as [`crate::process::cgroup`] gives it), and the container's
    /// name.
    pub fn lookup_container(&self, container_id: &str) -> Option<(Arc<PodMetadata>, String)> {
        let state = self.read();
        let (uid, name) = state.containers.get(container_id)?;
        let entry = state.pods.get(uid)?;
        Some((Arc::clone(&entry.meta), name.clone()))
    }

    /// The pod with this UID (lowercase, dashed).
    pub fn lookup_pod_uid(&self, pod_uid: &str) -> Option<Arc<PodMetadata>> {
        self.read().pods.get(pod_uid).map(|entry| Arc::clone(&entry.meta))
    }

    /// Asks the watcher to list the pods again, because a container was seen
    /// that the cache does not know (it may have started a moment ago).
    /// At most one request per [`REFRESH_INTERVAL`] is passed on, and none
    /// before the first list (which is on its way anyway); returns whether
    /// this one was. Prefer [`PodCache::request_refresh_for`], which also
    /// stops asking about a container the API never reports.
    pub fn request_refresh(&self) -> bool {
        self.request_refresh_at(None, Instant::now())
    }

    /// [`PodCache::request_refresh`] for one unknown container: besides the
    /// global limit, a container id already asked about is not asked about
    /// again for [`UNKNOWN_CONTAINER_RETRY`].
    pub fn request_refresh_for(&self, container_id: &str) -> bool {
        self.request_refresh_at(Some(container_id), Instant::now())
    }

    fn request_refresh_at(&self, container_id: Option<&str>, now: Instant) -> bool {
        if self.inner.lists.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let mut limits = self.inner.refresh_limits.lock().unwrap_or_else(PoisonError::into_inner);
        let recent = |at: &Instant, interval: Duration| now.saturating_duration_since(*at) < interval;
        if let Some(id) = container_id {
            if limits
                .asked
                .get(id)
                .is_some_and(|at| recent(at, UNKNOWN_CONTAINER_RETRY))
            {
                return false;
            }
        }
        if limits.last.as_ref().is_some_and(|at| recent(at, REFRESH_INTERVAL)) {
            // Not remembered: this id is asked about again next time.
            return false;
        }
        limits.last = Some(now);
        if let Some(id) = container_id {
            if limits.asked.len() >= MAX_REMEMBERED_UNKNOWN {
                limits.asked.retain(|_, at| recent(at, UNKNOWN_CONTAINER_RETRY));
            }
            if limits.asked.len() < MAX_REMEMBERED_UNKNOWN {
                limits.asked.insert(id.to_string(), now);
            }
        }
        drop(limits);
        self.inner.refresh_requests.fetch_add(1, Ordering::Relaxed);
        // A stored permit: a request made while no watch is running is
        // served when the next one starts.
        self.inner.refresh.notify_one();
        true
    }

    /// The cache's size and the watcher's health.
    pub fn stats(&self) -> CacheStats {
        let (pods, deleted_pods) = {
            let state = self.read();
            let deleted = state.pods.values().filter(|e| e.deleted_at.is_some()).count();
            (state.pods.len() - deleted, deleted)
        };
        CacheStats {
            pods,
            deleted_pods,
            list_errors: self.inner.list_errors.load(Ordering::Relaxed),
            watch_errors: self.inner.watch_errors.load(Ordering::Relaxed),
            relists: self.inner.lists.load(Ordering::Relaxed).saturating_sub(1),
            refresh_requests: self.inner.refresh_requests.load(Ordering::Relaxed),
            last_sync: *self.inner.last_sync.lock().unwrap_or_else(PoisonError::into_inner),
            connected: self.inner.connected.load(Ordering::Relaxed),
        }
    }

    /// Replaces the cache with a full list. Pods missing from it are
    /// treated as deleted now.
    pub(crate) fn replace_all(&self, pods: Vec<PodMetadata>) {
        let now = Instant::now();
        let mut state = self.write();
        let listed: std::collections::HashSet<String> = pods.iter().map(|p| p.pod_uid.clone()).collect();
        for (uid, entry) in state.pods.iter_mut() {
            if !listed.contains(uid) && entry.deleted_at.is_none() {
                entry.deleted_at = Some(now);
            }
        }
        for pod in pods {
            state.upsert(pod);
        }
        state.sweep(now, self.inner.deleted_grace);
        drop(state);
        self.inner.lists.fetch_add(1, Ordering::Relaxed);
        self.note_sync();
    }

    /// Adds or updates one pod (a watch ADDED or MODIFIED event).
    pub(crate) fn upsert(&self, pod: PodMetadata) {
        let mut state = self.write();
        state.upsert(pod);
        state.sweep(Instant::now(), self.inner.deleted_grace);
    }

    /// Marks one pod deleted (a watch DELETED event).
    pub(crate) fn delete(&self, pod_uid: &str) {
        let now = Instant::now();
        let mut state = self.write();
        if let Some(entry) = state.pods.get_mut(pod_uid) {
            entry.deleted_at.get_or_insert(now);
        }
        state.sweep(now, self.inner.deleted_grace);
    }

    pub(crate) fn note_sync(&self) {
        *self.inner.last_sync.lock().unwrap_or_else(PoisonError::into_inner) = Some(SystemTime::now());
    }

    pub(crate) fn note_list_error(&self) {
        self.inner.list_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn note_watch_error(&self) {
        self.inner.watch_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.inner.connected.store(connected, Ordering::Relaxed);
    }

    /// Resolves when [`PodCache::request_refresh`] passed a request on.
    pub(crate) async fn refresh_requested(&self) {
        self.inner.refresh.notified().await;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // The state is consistent after every write, so a panic elsewhere
        // while holding the lock leaves nothing half-done to fear.
        self.inner.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn upsert(&mut self, pod: PodMetadata) {
        let uid = pod.pod_uid.clone();
        if let Some(old) = self.pods.get(&uid) {
            for (id, _) in &old.meta.containers {
                if self.containers.get(id).is_some_and(|(owner, _)| *owner == uid) {
                    self.containers.remove(id);
                }
            }
        }
        for (id, name) in &pod.containers {
            self.containers.insert(id.clone(), (uid.clone(), name.clone()));
        }
        self.pods.insert(
            uid,
            Entry {
                meta: Arc::new(pod),
                deleted_at: None,
            },
        );
    }

    fn sweep(&mut self, now: Instant, grace: Duration) {
        let expired: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, e)| {
                e.deleted_at
                    .is_some_and(|at| now.saturating_duration_since(at) >= grace)
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in expired {
            if let Some(entry) = self.pods.remove(&uid) {
                for (id, _) in &entry.meta.containers {
                    if self.containers.get(id).is_some_and(|(owner, _)| *owner == uid) {
                        self.containers.remove(id);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, containers: &[(&str, &str)]) -> PodMetadata {
        PodMetadata {
            namespace: "ns".to_string(),
            pod: format!("pod-{uid}"),
            pod_uid: uid.to_string(),
            containers: containers
                .iter()
                .map(|(id, name)| (id.to_string(), name.to_string()))
                .collect(),
            ..PodMetadata::default()
        }
    }

    #[test]
    fn lookups_follow_updates() {
        let cache = PodCache::with_deleted_grace(Duration::ZERO);
        cache.replace_all(vec![pod("u1", &[("aaa", "app")]), pod("u2", &[("bbb", "db")])]);
        let (meta, name) = cache.lookup_container("aaa").expect("known container");
        assert_eq!((meta.pod_uid.as_str(), name.as_str()), ("u1", "app"));
        assert_eq!(
            cache.lookup_pod_uid("u2").map(|p| p.pod.clone()).as_deref(),
            Some("pod-u2")
        );

        // A restart gives the container a new id; the old one is forgotten.
        cache.upsert(pod("u1", &[("ccc", "app")]));
        assert!(cache.lookup_container("aaa").is_none());
        assert_eq!(cache.lookup_container("ccc").map(|(_, n)| n).as_deref(), Some("app"));

        cache.delete("u2");
        assert!(cache.lookup_container("bbb").is_none());
        assert!(cache.lookup_pod_uid("u2").is_none());

        // A list without u1 removes it too.
        cache.replace_all(vec![pod("u3", &[])]);
        assert!(cache.lookup_pod_uid("u1").is_none() && cache.lookup_container("ccc").is_none());
        let stats = cache.stats();
        assert_eq!((stats.pods, stats.deleted_pods, stats.relists), (1, 0, 1));
        assert!(stats.last_sync.is_some());
    }

    #[test]
    fn deleted_pods_are_kept_for_the_grace_period() {
        let cache = PodCache::with_deleted_grace(Duration::from_secs(3600));
        cache.replace_all(vec![pod("u1", &[("aaa", "app")])]);
        cache.delete("u1");
        assert!(cache.lookup_container("aaa").is_some());
        let stats = cache.stats();
        assert_eq!((stats.pods, stats.deleted_pods), (0, 1));
        // Back again (a relist that still has it) revives it.
        cache.replace_all(vec![pod("u1", &[("aaa", "app")])]);
        assert_eq!(cache.stats().deleted_pods, 0);

        let mut state = State::default();
        state.upsert(pod("u1", &[("aaa", "app")]));
        let deleted = Instant::now();
        if let Some(entry) = state.pods.get_mut("u1") {
            entry.deleted_at = Some(deleted);
        }
        state.sweep(deleted + Duration::from_secs(1), Duration::from_secs(2));
        assert!(state.containers.contains_key("aaa"));
        state.sweep(deleted + Duration::from_secs(2), Duration::from_secs(2));
        assert!(state.pods.is_empty() && state.containers.is_empty());
    }

    #[test]
    fn refresh_requests_are_rate_limited() {
        let cache = PodCache::new();
        let start = Instant::now();
        assert!(
            !cache.request_refresh_at(None, start),
            "the first list is coming anyway"
        );
        cache.replace_all(Vec::new());
        assert!(cache.request_refresh_at(None, start));
        assert!(!cache.request_refresh_at(None, start + Duration::from_secs(1)));
        assert!(!cache.request_refresh_at(None, start + REFRESH_INTERVAL - Duration::from_millis(1)));
        assert!(cache.request_refresh_at(None, start + REFRESH_INTERVAL));
        assert_eq!(cache.stats().refresh_requests, 2);
    }

    #[test]
    fn a_container_the_api_never_reports_is_not_asked_about_again() {
        let cache = PodCache::new();
        cache.replace_all(Vec::new());
        let start = Instant::now();
        let later = |secs: u64| start + Duration::from_secs(secs);
        assert!(cache.request_refresh_at(Some("stray"), start));
        assert!(!cache.request_refresh_at(Some("stray"), later(10)));
        assert!(!cache.request_refresh_at(Some("stray"), later(299)));
        // Another id still gets its relist, once the global limit allows.
        assert!(!cache.request_refresh_at(Some("new"), later(1)));
        assert!(cache.request_refresh_at(Some("new"), later(20)));
        assert!(cache.request_refresh_at(Some("stray"), later(300)));
        assert_eq!(cache.stats().refresh_requests, 3);
    }

    #[tokio::test]
    async fn a_refresh_request_made_before_waiting_is_not_lost() {
        let cache = PodCache::new();
        cache.replace_all(Vec::new());
        assert!(cache.request_refresh());
        tokio::time::timeout(Duration::from_secs(5), cache.refresh_requested())
            .await
            .expect("the stored request is seen");
    }

    #[test]
    fn stats_count_errors_and_connection() {
        let cache = PodCache::new();
        assert_eq!(cache.stats(), CacheStats::default());
        cache.note_list_error();
        cache.note_watch_error();
        cache.note_watch_error();
        cache.set_connected(true);
        let stats = cache.stats();
        assert_eq!((stats.list_errors, stats.watch_errors, stats.connected), (1, 2, true));
        assert_eq!(stats.last_sync, None);
    }
}
