//! The Kubernetes metadata client against a fake API server: the initial
//! list, watch events streamed in chunks that split lines, 410 Gone (as an
//! ERROR event and as an HTTP status) forcing a relist, refresh requests,
//! an API server that goes away and comes back, and token rotation.
//!
//! The fake server speaks HTTP/1.1 directly on a tokio socket rather than
//! through axum, because the test must decide exactly where each chunk of
//! the watch stream ends, and axum's streaming bodies need stream traits
//! from crates taskprof does not depend on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use url::Url;

use taskprof::kubernetes::{spawn_watcher, KubeConfig, PodCache};

/// How long any single expectation may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// How long a whole test may take.
const TEST_LIMIT: Duration = Duration::from_secs(90);

const NODE: &str = "node-a";

fn container_id(fill: char) -> String {
    std::iter::repeat_n(fill, 64).collect()
}

/// One request as the fake server saw it.
#[derive(Debug, Clone)]
struct Recorded {
    /// Path and query.
    target: String,
    authorization: Option<String>,
}

impl Recorded {
    fn is_watch(&self) -> bool {
        self.target.contains("watch=1")
    }

    fn query(&self, name: &str) -> Option<String> {
        let url = Url::parse(&format!("http://fake{}", self.target)).ok()?;
        url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    }
}

/// What the next watch request gets.
enum WatchPlan {
    /// A 200 streaming the chunks sent on the channel, ended when the
    /// sender is dropped.
    Stream(mpsc::UnboundedReceiver<Vec<u8>>),
    /// A 410 Gone status.
    Gone,
}

struct Shared {
    requests: Mutex<Vec<Recorded>>,
    /// The resource version and pods every list answers with.
    list: Mutex<(String, Vec<Value>)>,
    plans: tokio::sync::Mutex<mpsc::UnboundedReceiver<WatchPlan>>,
    /// Accept loop and connections, to make the server vanish at once.
    tasks: Mutex<Vec<AbortHandle>>,
}

/// A fake Kubernetes API server serving `/api/v1/pods` lists and watches.
struct FakeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    plan_sender: mpsc::UnboundedSender<WatchPlan>,
}

impl FakeApi {
    async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake API");
        let addr = listener.local_addr().expect("fake API address");
        let (plan_sender, plans) = mpsc::unbounded_channel();
        let api = FakeApi {
            addr,
            shared: Arc::new(Shared {
                requests: Mutex::default(),
                list: Mutex::new(("1".to_string(), Vec::new())),
                plans: tokio::sync::Mutex::new(plans),
                tasks: Mutex::default(),
            }),
            plan_sender,
        };
        api.serve(listener);
        api
    }

    fn serve(&self, listener: TcpListener) {
        let shared = Arc::clone(&self.shared);
        let accept = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let connection = tokio::spawn(handle(socket, Arc::clone(&shared)));
                shared.tasks.lock().expect("tasks lock").push(connection.abort_handle());
            }
        });
        self.shared
            .tasks
            .lock()
            .expect("tasks lock")
            .push(accept.abort_handle());
    }

    /// Closes the listener and every connection.
    async fn stop(&self) {
        for task in self.shared.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
        // Let the aborted tasks drop their sockets.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Listens again on the same address.
    async fn restart(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(err) if tokio::time::Instant::now() < deadline => {
                    eprintln!("rebinding {}: {err}", self.addr);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("failed to rebind {}: {err}", self.addr),
            }
        };
        self.serve(listener);
    }

    fn set_list(&self, resource_version: &str, pods: Vec<Value>) {
        *self.shared.list.lock().expect("list lock") = (resource_version.to_string(), pods);
    }

    /// Queues a streaming answer for the next watch; returns its feed.
    fn watch_stream(&self) -> mpsc::UnboundedSender<Vec<u8>> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.plan_sender
            .send(WatchPlan::Stream(receiver))
            .expect("fake API is running");
        sender
    }

    /// Queues a 410 Gone for the next watch.
    fn watch_gone(&self) {
        self.plan_sender.send(WatchPlan::Gone).expect("fake API is running");
    }

    fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().expect("requests lock").clone()
    }

    fn lists(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| !r.is_watch()).collect()
    }

    fn watches(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(Recorded::is_watch).collect()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        for task in self.shared.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
    }
}

async fn handle(mut socket: TcpStream, shared: Arc<Shared>) {
    let Some(head) = read_head(&mut socket).await else {
        return;
    };
    let target = head
        .lines()
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .unwrap_or_default()
        .to_string();
    let authorization = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("authorization")
            .then(|| value.trim().to_string())
    });
    let request = Recorded { target, authorization };
    shared.requests.lock().expect("requests lock").push(request.clone());

    if !request.target.starts_with("/api/v1/pods?") {
        respond(&mut socket, "404 Not Found", r#"{"kind":"Status","code":404}"#).await;
        return;
    }
    if !request.is_watch() {
        let (version, pods) = shared.list.lock().expect("list lock").clone();
        let body = json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": version},
            "items": pods,
        });
        respond(&mut socket, "200 OK", &body.to_string()).await;
        return;
    }
    let plan = shared.plans.lock().await.recv().await;
    match plan {
        None => {}
        Some(WatchPlan::Gone) => {
            let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old resource version","reason":"Expired","code":410}"#;
            respond(&mut socket, "410 Gone", body).await;
        }
        Some(WatchPlan::Stream(mut chunks)) => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                        Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            while let Some(chunk) = chunks.recv().await {
                let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
                frame.extend_from_slice(&chunk);
                frame.extend_from_slice(b"\r\n");
                if socket.write_all(&frame).await.is_err() || socket.flush().await.is_err() {
                    return;
                }
            }
            let _ = socket.write_all(b"0\r\n\r\n").await;
        }
    }
}

async fn read_head(socket: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = socket.read(&mut buffer).await.ok()?;
        if read == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8(head).ok()
}

async fn respond(socket: &mut TcpStream, status: &str, body: &str) {
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(answer.as_bytes()).await;
    let _ = socket.shutdown().await;
}

fn pod(name: &str, uid: &str, version: &str, containers: &[(&str, &str)], labels: Value) -> Value {
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(id, name)| json!({"name": name, "containerID": format!("containerd://{id}"), "ready": true}))
        .collect();
    json!({
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": uid,
            "resourceVersion": version,
            "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": format!("{name}-5c7f9b8d6"), "controller": true}],
        },
        "spec": {"nodeName": NODE},
        "status": {"phase": "Running", "containerStatuses": statuses},
    })
}

fn event(kind: &str, object: Value) -> Vec<u8> {
    let mut line = json!({"type": kind, "object": object}).to_string().into_bytes();
    line.push(b'\n');
    line
}

/// Sends `bytes` as several chunks, cut at `cuts`, a moment apart.
async fn send_split(feed: &mpsc::UnboundedSender<Vec<u8>>, bytes: &[u8], cuts: &[usize]) {
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let cut = cut.min(bytes.len());
        if cut > start {
            feed.send(bytes[start..cut].to_vec()).expect("watch stream is open");
            start = cut;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
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
