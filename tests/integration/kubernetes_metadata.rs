//! The Kubernetes metadata client against a fake API server: the initial
//! list, watch events streamed in chunks that split lines, 410 Gone (as an
//! ERROR event and as an HTTP status) forcing a relist, refresh requests,
//! an API server that goes away and comes back, and token rotation.
//!
//! The fake server speaks HTTP/1.1 directly on a tokio socket rather than
//! through axum, because the test must decide exactly where each chunk of
//! the watch stream ends, and axum's streaming bodies need stream traits
//! from crates taskprof does not depend on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use url::Url;

use taskprof::kubernetes::{spawn_watcher, KubeConfig, PodCache};

use crate::common::fake_kube::{event, pod, send_split, FakeApi, Recorded, NODE};

/// How long any single expectation may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// How long a whole test may take.
const TEST_LIMIT: Duration = Duration::from_secs(90);

fn container_id(fill: char) -> String {
    std::iter::repeat_n(fill, 64).collect()
}

/// Polls `condition` until it holds or [`PATIENCE`] runs out.
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write_token(path: &Path, token: &str) {
    std::fs::write(path, format!("{token}\n")).expect("write token file");
}

fn config(api: &FakeApi, token_path: PathBuf) -> KubeConfig {
    KubeConfig {
        api_url: Url::parse(&format!("http://{}", api.addr)).expect("fake API URL"),
        token_path,
        ca_path: None,
        node_name: NODE.to_string(),
        insecure_skip_verify: false,
    }
}

struct Setup {
    api: FakeApi,
    cache: PodCache,
    watcher: tokio::task::JoinHandle<()>,
    token_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// A fake API listing `pods` at version 100, and a watcher on it.
async fn setup(pods: Vec<Value>) -> Setup {
    let api = FakeApi::start().await;
    api.set_list("100", pods);
    let dir = tempfile::tempdir().expect("tempdir");
    let token_path = dir.path().join("token");
    write_token(&token_path, "token-1");
    let cache = PodCache::with_deleted_grace(Duration::ZERO);
    let watcher = spawn_watcher(
        config(&api, token_path.clone()),
        cache.clone(),
        &tokio::runtime::Handle::current(),
    )
    .expect("watcher starts");
    Setup {
        api,
        cache,
        watcher,
        token_path,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_in_split_chunks_update_the_cache_and_410_relists() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (a, b, c) = (container_id('a'), container_id('b'), container_id('c'));
        let s = setup(vec![pod(
            "web",
            "uid-a",
            "90",
            &[(&a, "app")],
            json!({"tier": "front"}),
        )])
        .await;
        let feed = s.api.watch_stream();

        wait_for("the initial list", || s.cache.lookup_container(&a).is_some()).await;
        let (meta, name) = s.cache.lookup_container(&a).expect("pod A");
        assert_eq!((meta.pod.as_str(), name.as_str()), ("web", "app"));
        assert_eq!(meta.owner_kind.as_deref(), Some("Deployment"));
        assert_eq!(meta.owner_name.as_deref(), Some("web"));
        let first = &s.api.lists()[0];
        assert_eq!(
            first.target,
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&resourceVersion=0"
        );
        assert_eq!(first.authorization.as_deref(), Some("Bearer token-1"));

        wait_for("the first watch", || !s.api.watches().is_empty()).await;
        let watch = &s.api.watches()[0];
        assert_eq!(watch.query("fieldSelector").as_deref(), Some("spec.nodeName=node-a"));
        assert_eq!(watch.query("resourceVersion").as_deref(), Some("100"));
        assert_eq!(watch.query("allowWatchBookmarks").as_deref(), Some("true"));
        assert_eq!(watch.query("timeoutSeconds").as_deref(), Some("300"));
        assert_eq!(watch.authorization.as_deref(), Some("Bearer token-1"));

        // ADDED, in three pieces.
        let added = event("ADDED", pod("api", "uid-b", "101", &[(&b, "server")], json!({})));
        send_split(&feed, &added, &[5, 40]).await;
        wait_for("ADDED", || s.cache.lookup_container(&b).is_some()).await;

        // MODIFIED plus the first half of DELETED in one chunk: only the
        // complete line may be applied.
        let modified = event(
            "MODIFIED",
            pod("web", "uid-a", "102", &[(&a, "app")], json!({"tier": "back"})),
        );
        let deleted = event("DELETED", pod("api", "uid-b", "103", &[(&b, "server")], json!({})));
        let half = deleted.len() / 2;
        feed.send([modified.as_slice(), &deleted[..half]].concat())
            .expect("stream open");
        wait_for("MODIFIED", || {
            s.cache
                .lookup_pod_uid("uid-a")
                .is_some_and(|p| p.labels.get("tier").map(String::as_str) == Some("back"))
        })
        .await;
        assert!(s.cache.lookup_container(&b).is_some(), "half an event is not applied");
        feed.send(deleted[half..].to_vec()).expect("stream open");
        wait_for("DELETED", || s.cache.lookup_container(&b).is_none()).await;

        // A bookmark, then the server ends the watch normally: the watch is
        // resumed from the bookmark's version, without a list.
        let bookmark = event(
            "BOOKMARK",
            json!({"kind": "Pod", "metadata": {"resourceVersion": "110"}}),
        );
        send_split(&feed, &bookmark, &[bookmark.len() - 1]).await;
        let feed = {
            let next = s.api.watch_stream();
            drop(feed);
            next
        };
        wait_for("the resumed watch", || s.api.watches().len() >= 2).await;
        assert_eq!(s.api.watches()[1].query("resourceVersion").as_deref(), Some("110"));
        assert_eq!(s.api.lists().len(), 1);

        // An ERROR event with code 410: relist, consistently this time.
        s.api.set_list(
            "200",
            vec![
                pod("web", "uid-a", "150", &[(&a, "app")], json!({})),
                pod("db", "uid-c", "160", &[(&c, "postgres")], json!({})),
            ],
        );
        s.api.watch_gone();
        let expired = event(
            "ERROR",
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "message": "too old resource version: 100 (150)", "reason": "Expired", "code": 410}),
        );
        send_split(&feed, &expired, &[expired.len() / 3]).await;
        wait_for("the relist after the ERROR event", || {
            s.cache.lookup_container(&c).is_some() && s.api.lists().len() >= 2
        })
        .await;
        let lists = s.api.lists();
        assert_eq!(
            lists[1].query("resourceVersion"),
            None,
            "a relist reads the latest state"
        );
        assert_eq!(lists[1].query("fieldSelector").as_deref(), Some("spec.nodeName=node-a"));

        // The watch after it was answered 410 Gone: relist once more.
        let feed = s.api.watch_stream();
        wait_for("the relist after HTTP 410", || s.api.lists().len() >= 3).await;
        wait_for("the watch after the relists", || {
            s.api
                .watches()
                .last()
                .and_then(|w| w.query("resourceVersion"))
                .as_deref()
                == Some("200")
                && s.api.watches().len() >= 4
        })
        .await;
        assert!(s.cache.lookup_container(&b).is_none());
        let stats = s.cache.stats();
        assert_eq!(stats.pods, 2);
        assert!(stats.relists >= 2, "{stats:?}");
        assert!(stats.connected && stats.last_sync.is_some(), "{stats:?}");
        assert_eq!((stats.list_errors, stats.watch_errors), (0, 0), "{stats:?}");
        drop(feed);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_keeps_the_cache_and_reconnects_with_the_rotated_token() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (a, d) = (container_id('a'), container_id('d'));
        let s = setup(vec![pod("web", "uid-a", "90", &[(&a, "app")], json!({}))]).await;
        let feed = s.api.watch_stream();
        wait_for("the first watch", || !s.api.watches().is_empty()).await;
        assert!(s.cache.lookup_container(&a).is_some());

        // The server vanishes mid-watch.
        s.api.stop().await;
        drop(feed);
        wait_for("the watcher to notice", || !s.cache.stats().connected).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            s.cache.lookup_container(&a).is_some(),
            "the cache is kept while the API is away"
        );
        let stats = s.cache.stats();
        assert!(stats.watch_errors >= 1, "{stats:?}");

        // The token rotates meanwhile; the server comes back.
        write_token(&s.token_path, "token-2");
        let seen_before = s.api.requests().len();
        let feed = s.api.watch_stream();
        s.api.restart().await;
        wait_for("a watch after the restart", || s.api.watches().len() >= 2).await;
        let after: Vec<Recorded> = s.api.requests().split_off(seen_before);
        assert!(!after.is_empty());
        for request in &after {
            assert_eq!(request.authorization.as_deref(), Some("Bearer token-2"), "{request:?}");
        }
        // The watch resumes where it was: nothing was missed.
        assert_eq!(s.api.watches()[1].query("resourceVersion").as_deref(), Some("100"));

        send_split(
            &feed,
            &event("ADDED", pod("batch", "uid-d", "120", &[(&d, "worker")], json!({}))),
            &[17],
        )
        .await;
        wait_for("an event after the restart", || s.cache.lookup_container(&d).is_some()).await;
        assert!(s.cache.lookup_container(&a).is_some());
        wait_for("connected again", || s.cache.stats().connected).await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_container_triggers_one_relist() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (a, e) = (container_id('a'), container_id('e'));
        let s = setup(vec![pod("web", "uid-a", "90", &[(&a, "app")], json!({}))]).await;
        let _feed = s.api.watch_stream();
        wait_for("the first watch", || !s.api.watches().is_empty()).await;

        // A container started, and the watch has not told yet.
        s.api.set_list(
            "300",
            vec![
                pod("web", "uid-a", "90", &[(&a, "app")], json!({})),
                pod("job", "uid-e", "299", &[(&e, "task")], json!({})),
            ],
        );
        let _next = s.api.watch_stream();
        assert!(s.cache.lookup_container(&e).is_none());
        assert!(s.cache.request_refresh_for(&e));
        assert!(!s.cache.request_refresh_for(&e), "asked already");
        assert!(!s.cache.request_refresh(), "rate-limited");
        wait_for("the refresh", || s.cache.lookup_container(&e).is_some()).await;
        wait_for("the watch after the refresh", || s.api.watches().len() >= 2).await;
        assert_eq!(s.api.watches()[1].query("resourceVersion").as_deref(), Some("300"));
        assert_eq!(s.api.lists().len(), 2);
        assert_eq!(s.cache.stats().refresh_requests, 1);
    })
    .await
    .expect("test finished in time");
}
