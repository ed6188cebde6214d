//! A fake Kubernetes API server serving `/api/v1/pods` lists and watches,
//! for the metadata client's tests and the agent's.
//!
//! It speaks HTTP/1.1 directly on a tokio socket rather than through axum,
//! because tests must decide exactly where each chunk of the watch stream
//! ends, and axum's streaming bodies need stream traits from crates
//! taskprof does not depend on.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use url::Url;

/// How long the server waits to rebind its port after a stop.
const PATIENCE: Duration = Duration::from_secs(20);

/// The node the fake pods are scheduled on.
pub const NODE: &str = "node-a";

/// One request as the fake server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Path and query.
    pub target: String,
    /// The Authorization header.
    pub authorization: Option<String>,
}

impl Recorded {
    pub fn is_watch(&self) -> bool {
        self.target.contains("watch=1")
    }

    pub fn query(&self, name: &str) -> Option<String> {
        let url = Url::parse(&format!("http://fake{}", self.target)).ok()?;
        url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    }
}

/// What the next watch request gets.
pub enum WatchPlan {
    /// A 200 streaming the chunks sent on the channel, ended when the
    /// sender is dropped.
    Stream(mpsc::UnboundedReceiver<Vec<u8>>),
    /// A 410 Gone status.
    Gone,
}

pub struct Shared {
    requests: Mutex<Vec<Recorded>>,
    /// The resource version and pods every list answers with.
    list: Mutex<(String, Vec<Value>)>,
    plans: tokio::sync::Mutex<mpsc::UnboundedReceiver<WatchPlan>>,
    /// Accept loop and connections, to make the server vanish at once.
    tasks: Mutex<Vec<AbortHandle>>,
}

/// A fake Kubernetes API server serving `/api/v1/pods` lists and watches.
pub struct FakeApi {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    plan_sender: mpsc::UnboundedSender<WatchPlan>,
}

impl FakeApi {
    /// For synchronous tests: a server on a runtime of its own, which must
    /// outlive the server (drop the runtime last).
    pub fn start_on_own_runtime() -> (tokio::runtime::Runtime, FakeApi) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the fake API server");
        let api = runtime.block_on(FakeApi::start());
        (runtime, api)
    }

    pub async fn start() -> FakeApi {
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

    pub fn serve(&self, listener: TcpListener) {
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
    pub async fn stop(&self) {
        for task in self.shared.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
        // Let the aborted tasks drop their sockets.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Listens again on the same address.
    pub async fn restart(&self) {
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

    pub fn set_list(&self, resource_version: &str, pods: Vec<Value>) {
        *self.shared.list.lock().expect("list lock") = (resource_version.to_string(), pods);
    }

    /// Queues a streaming answer for the next watch; returns its feed.
    pub fn watch_stream(&self) -> mpsc::UnboundedSender<Vec<u8>> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.plan_sender
            .send(WatchPlan::Stream(receiver))
            .expect("fake API is running");
        sender
    }

    /// Queues a 410 Gone for the next watch.
    pub fn watch_gone(&self) {
        self.plan_sender.send(WatchPlan::Gone).expect("fake API is running");
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().expect("requests lock").clone()
    }

    pub fn lists(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| !r.is_watch()).collect()
    }

    pub fn watches(&self) -> Vec<Recorded> {
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

pub async fn handle(mut socket: TcpStream, shared: Arc<Shared>) {
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

pub async fn read_head(socket: &mut TcpStream) -> Option<String> {
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

pub async fn respond(socket: &mut TcpStream, status: &str, body: &str) {
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(answer.as_bytes()).await;
    let _ = socket.shutdown().await;
}

pub fn pod(name: &str, uid: &str, version: &str, containers: &[(&str, &str)], labels: Value) -> Value {
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

/// A pod of the `web` Deployment (through ReplicaSet `web-5c7f9b8d6`)
/// named `name`, on the agent tests' node, its one container `app` with id
/// `container_id`, labelled as the `storefront` service.
pub fn storefront_pod(name: &str, uid: &str, container_id: &str) -> Value {
    let mut pod = pod(
        name,
        uid,
        "100",
        &[(container_id, "app")],
        json!({"app.kubernetes.io/name": "storefront"}),
    );
    pod["spec"]["nodeName"] = json!(super::agent_run::TEST_NODE);
    pod["metadata"]["ownerReferences"][0]["name"] = json!("web-5c7f9b8d6");
    pod
}

/// Puts `pid` in container `container_id` of pod `uid`, as a kubelet's
/// cgroup (systemd driver, containerd) would, under a proc-like `root`
/// (the agent's `--cgroup-proc-root`).
pub fn place_in_container(root: &std::path::Path, pid: u32, uid: &str, container_id: &str) {
    let uid = uid.replace('-', "_");
    let line = format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{container_id}.scope\n"
    );
    std::fs::create_dir_all(root.join(pid.to_string())).expect("create a fake proc directory");
    std::fs::write(root.join(pid.to_string()).join("cgroup"), line).expect("write a fake cgroup file");
}

pub fn event(kind: &str, object: Value) -> Vec<u8> {
    let mut line = json!({"type": kind, "object": object}).to_string().into_bytes();
    line.push(b'\n');
    line
}

/// Sends `bytes` as several chunks, cut at `cuts`, a moment apart.
pub async fn send_split(feed: &mpsc::UnboundedSender<Vec<u8>>, bytes: &[u8], cuts: &[usize]) {
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
